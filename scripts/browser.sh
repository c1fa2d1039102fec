#!/usr/bin/env bash
# Installs what the dashboard's browser test (e2e/tests/dashboard.rs, driving
# e2e/browser/dashboard.mjs) needs, idempotently, and prints the Chromium path:
#
#   * Debian's `chromium` package (apt-get, as root) when /usr/bin/chromium is missing;
#     no browser is downloaded by npm (playwright-core alone never fetches one);
#   * Node.js and npm from Debian when `node` is missing;
#   * `npm ci` in e2e/browser when node_modules is missing or older than package-lock.json.
#
# usage: scripts/browser.sh          # prints e.g. /usr/bin/chromium on the last line
# CHROMIUM=/path/to/chromium overrides the browser (then nothing is installed for it).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "browser.sh: $*" >&2; }

apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    say "need to install $* but not running as root: run 'sudo apt-get install -y $*' and try again"
    exit 1
  fi
  if [[ -z ${BROWSER_SH_APT_UPDATED:-} ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    BROWSER_SH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
  if [[ -n ${CHROMIUM:-} ]]; then
    say "CHROMIUM=$CHROMIUM is not an executable file"
    exit 1
  fi
  say "installing Debian's chromium"
  # The fonts make the screenshot's text readable.
  apt_install chromium fonts-dejavu-core
fi
if ! "$chromium" --version >/dev/null 2>&1; then
  say "$chromium does not run: $("$chromium" --version 2>&1 | tail -n 3)"
  exit 1
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "installing Node.js and npm"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 20 )); then
  say "Node.js $(node --version) is too old for playwright-core: 20 or newer is needed"
  exit 1
fi

browser_dir=e2e/browser
stamp=$browser_dir/node_modules/.package-lock.json
if [[ ! -f $stamp || $browser_dir/package-lock.json -nt $stamp \
      || ! -d $browser_dir/node_modules/playwright-core ]]; then
  say "npm ci in $browser_dir"
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

echo "$chromium"
