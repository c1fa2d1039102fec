#!/bin/sh
# Installs the Fleetstream agent on this machine: the binary, its configuration, the
# enrollment, and the systemd unit. Safe to run again (idempotent): what is already in
# place is left alone, an existing enrollment is kept (a token is single-use), and the
# service is restarted only when the binary, configuration or unit changed.
set -eu

PROG=$(basename "$0")
SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)

usage() {
    cat <<EOF
Usage: $PROG --server URL [--token TOKEN] [options]

Installs the Fleetstream agent as the systemd service fleetstream-agent:

  1. the binary           -> /usr/local/bin/fleetstream-agent (the agent-only binary)
  2. the configuration    -> /etc/fleetstream/agent.toml (server-url, state-dir)
  3. the enrollment       -> fleetstream-agent enroll (credential in
                             /var/lib/fleetstream-agent/credentials.json, mode 0600)
  4. the unit             -> /etc/systemd/system/fleetstream-agent.service,
                             enabled and started

Options:
  --server URL     Base URL of the ingest gateway, e.g. https://gw.example:8443.
                   Required on first install; later runs keep the configured one.
  --token TOKEN    One-time registration token. Required unless already enrolled.
                   Prefer the FLEET_AGENT_TOKEN environment variable: a command-line
                   argument is visible to other users in the process list.
  --binary PATH    The fleetstream-agent binary to install (a local file). Default:
                   ./fleetstream-agent beside this script, else the one already installed.
  --unit PATH      The unit file to install. Default: fleetstream-agent.service
                   beside this script.
  --reenroll       Enroll again even if this machine is already enrolled (needs a
                   new token; replaces the stored credential).
  --no-start       Install and enroll, but do not enable or start the service.
  --root DIR       Install under DIR instead of / (packaging and tests); implies
                   --no-start.
  -h, --help       Show this help.

Environment:
  FLEET_AGENT_TOKEN  The registration token (instead of --token).

Must run as root (except with --root).
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

say() {
    printf '%s: %s\n' "$PROG" "$*"
}

server=""
token="${FLEET_AGENT_TOKEN:-}"
binary=""
unit="$SCRIPT_DIR/fleetstream-agent.service"
reenroll=0
start=1
root=""

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --server | --token | --binary | --unit | --root)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)"
            case "$1" in
                --server) server=$2 ;;
                --token) token=$2 ;;
                --binary) binary=$2 ;;
                --unit) unit=$2 ;;
                --root) root=$2 ;;
            esac
            shift 2
            ;;
        --server=* | --token=* | --binary=* | --unit=* | --root=*)
            value=${1#*=}
            case "$1" in
                --server=*) server=$value ;;
                --token=*) token=$value ;;
                --binary=*) binary=$value ;;
                --unit=*) unit=$value ;;
                --root=*) root=$value ;;
            esac
            shift
            ;;
        --reenroll)
            reenroll=1
            shift
            ;;
        --no-start)
            start=0
            shift
            ;;
        *)
            die "unknown argument '$1' (see --help)"
            ;;
    esac
done

if [ -n "$root" ]; then
    start=0
    mkdir -p "$root" || die "cannot create $root"
    root=$(CDPATH='' cd -- "$root" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $PROG ...), or use --root DIR"
fi

BIN="$root/usr/local/bin/fleetstream-agent"
CONFIG_DIR="$root/etc/fleetstream"
CONFIG="$CONFIG_DIR/agent.toml"
STATE_DIR="$root/var/lib/fleetstream-agent"
CREDENTIALS="$STATE_DIR/credentials.json"
UNIT_DEST="$root/etc/systemd/system/fleetstream-agent.service"

# --- preflight: refuse bad input before changing anything ---------------------------
case "$server" in
    "" | http://* | https://*) ;;
    *) die "--server must be an http:// or https:// URL, got '$server'" ;;
esac
if [ ! -f "$CONFIG" ] && [ -z "$server" ]; then
    die "--server URL is required on first install"
fi
if { [ ! -f "$CREDENTIALS" ] || [ "$reenroll" -eq 1 ]; } && [ -z "$token" ]; then
    die "a registration token is required to enroll: --token or FLEET_AGENT_TOKEN"
fi
[ -f "$unit" ] || die "unit file $unit not found (pass --unit PATH)"

# Set when something the running service uses changed, to restart it.
changed=0

# --- 1. the binary -------------------------------------------------------------------
if [ -z "$binary" ] && [ -x "$SCRIPT_DIR/fleetstream-agent" ]; then
    binary="$SCRIPT_DIR/fleetstream-agent"
fi
if [ -n "$binary" ]; then
    [ -f "$binary" ] || die "binary $binary not found"
    if [ -f "$BIN" ] && cmp -s "$binary" "$BIN"; then
        say "binary $BIN is up to date"
    else
        mkdir -p "$(dirname "$BIN")"
        # Copy then rename, so a running agent is never executing a half-written file.
        cp "$binary" "$BIN.new"
        chmod 0755 "$BIN.new"
        mv -f "$BIN.new" "$BIN"
        say "installed $BIN"
        changed=1
    fi
elif [ -x "$BIN" ]; then
    say "keeping the installed binary $BIN"
else
    die "no binary to install: pass --binary PATH (or put fleetstream-agent beside this script)"
fi

# --- 2. the configuration ------------------------------------------------------------
# Only server-url and state-dir are written; other keys (see agent.example.toml) added
# by hand are kept on later runs.
toml_string() {
    # A TOML basic string: escape backslashes and double quotes.
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

mkdir -p "$CONFIG_DIR"
if [ ! -f "$CONFIG" ]; then
    tmp="$CONFIG.new"
    {
        echo "# Fleetstream agent configuration, written by $PROG."
        echo "# Every key is documented in agent.example.toml (fleetstream repository, agent/)."
        echo "server-url = $(toml_string "$server")"
        echo "state-dir = $(toml_string "$STATE_DIR")"
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONFIG"
    say "wrote $CONFIG"
    changed=1
else
    current=$(sed -n 's/^[[:space:]]*server-url[[:space:]]*=[[:space:]]*"\(.*\)"[[:space:]]*$/\1/p' "$CONFIG" | head -n 1)
    if [ -z "$server" ]; then
        server=$current
        [ -n "$server" ] || die "$CONFIG has no server-url: pass --server URL"
        say "keeping $CONFIG (server-url $server)"
    elif [ "$current" = "$server" ]; then
        say "$CONFIG is up to date"
    else
        tmp="$CONFIG.new"
        if grep -q '^[[:space:]]*server-url[[:space:]]*=' "$CONFIG"; then
            # Replace the line; other keys stay as they are.
            escaped=$(toml_string "$server" | sed 's/[&|\\]/\\&/g')
            sed "s|^[[:space:]]*server-url[[:space:]]*=.*\$|server-url = $escaped|" "$CONFIG" >"$tmp"
        else
            { echo "server-url = $(toml_string "$server")"; cat "$CONFIG"; } >"$tmp"
        fi
        chmod 0644 "$tmp"
        mv -f "$tmp" "$CONFIG"
        say "updated server-url in $CONFIG to $server"
        changed=1
    fi
fi

# --- 3. the enrollment ---------------------------------------------------------------
mkdir -p "$STATE_DIR"
chmod 0700 "$STATE_DIR"
if [ -f "$CREDENTIALS" ] && [ "$reenroll" -eq 0 ]; then
    say "already enrolled ($CREDENTIALS); use --reenroll with a new token to enroll again"
else
    say "enrolling with $server"
    # The token goes through the environment, not the command line.
    FLEET_AGENT_TOKEN=$token "$BIN" enroll --config "$CONFIG" --server "$server" ||
        die "enrollment failed (see the message above); the service was not started"
    [ -f "$CREDENTIALS" ] || die "enrollment reported success but $CREDENTIALS is missing"
    changed=1
fi

# --- 4. the unit ---------------------------------------------------------------------
mkdir -p "$(dirname "$UNIT_DEST")"
if [ -f "$UNIT_DEST" ] && cmp -s "$unit" "$UNIT_DEST"; then
    say "unit $UNIT_DEST is up to date"
else
    cp "$unit" "$UNIT_DEST.new"
    chmod 0644 "$UNIT_DEST.new"
    mv -f "$UNIT_DEST.new" "$UNIT_DEST"
    say "installed $UNIT_DEST"
    changed=1
    unit_changed=1
fi

if [ "$start" -eq 0 ]; then
    say "not starting the service (--no-start or --root); to start it:"
    say "  systemctl daemon-reload && systemctl enable --now fleetstream-agent"
    exit 0
fi
if ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: start the agent yourself with"
    say "  $BIN --config $CONFIG"
    exit 0
fi
if [ "${unit_changed:-0}" -eq 1 ]; then
    systemctl daemon-reload
fi
systemctl enable --quiet fleetstream-agent
if [ "$changed" -eq 1 ] || ! systemctl is-active --quiet fleetstream-agent; then
    systemctl restart fleetstream-agent
    say "fleetstream-agent (re)started"
else
    say "fleetstream-agent is running and unchanged"
fi
systemctl --no-pager --lines=0 status fleetstream-agent || true
