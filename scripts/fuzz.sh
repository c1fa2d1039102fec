#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time; fails if any
# target crashes (a panic, a failed invariant, a sanitizer report, an input slower than
# FUZZ_INPUT_TIMEOUT or a process over FUZZ_RSS_MB). Each run first replays the target's
# corpus in git (fuzz/corpus/<target>/: the seeds and every input that once crashed it).
# Prints, per target, the executions, executions per second and coverage (cov: edges,
# ft: features) of libFuzzer's last line.
#
# usage: scripts/fuzz.sh [seconds per target, default 60]   # the long run (make fuzz)
#        scripts/fuzz.sh ci       # the test suite's step: FUZZ_CI_SECONDS (5) per target
#        scripts/fuzz.sh seeds    # rewrite the seed corpus fuzz/corpus/<target>/seed-*
#
# `ci` builds without a sanitizer in the dev profile (debug assertions and overflow checks
# on): about 5.5 CPU-minutes from scratch against 6.7 for the optimized AddressSanitizer
# build of the long run (the build is most of the step: the targets link the gateway, the
# stores and the event log); safe Rust needs no AddressSanitizer to report a panic or an
# overflow.
#
# Environment:
#   FUZZ_TARGETS         targets to run (default: all of `cargo fuzz list`)
#   FUZZ_CI_SECONDS      seconds per target in `ci` mode, 5
#   FUZZ_RSS_MB          libFuzzer's -rss_limit_mb (also the largest single allocation), 2048
#   FUZZ_INPUT_TIMEOUT   seconds one input may take (-timeout), 10
#   FUZZ_SANITIZER       address (default; `ci`: none) or none (faster, finds only panics)
#   FUZZ_CODEGEN_UNITS   16: builds much faster than cargo-fuzz's default of 1 on few cores
#   FUZZ_TOOLCHAIN       stable: use the default toolchain even when a nightly one exists
#
# Toolchain: `cargo +nightly fuzz` when rustup has a nightly toolchain; otherwise the
# default (stable) toolchain with RUSTC_BOOTSTRAP=1, which is all cargo-fuzz's flags need
# (-Zsanitizer is the only unstable one). cargo-fuzz itself is installed from crates.io
# when missing, at a pinned version. A C++ compiler builds libFuzzer (libfuzzer-sys).
# Whatever cannot be had fails the script with what to install: it never skips.
#
# Each target's corpus grows in fuzz/work/<target>/ (not in git) from the seeds in
# fuzz/corpus/<target>/; a crashing input lands in fuzz/artifacts/<target>/. Keep it as
# fuzz/corpus/<target>/regression-<what> once fixed, with a regression test in the crate.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
mode=run
seconds=60
sanitizer=${FUZZ_SANITIZER:-address}
profile=()  # cargo-fuzz's default: optimized, with debug assertions and overflow checks
case "${1:-}" in
  seeds) mode=seeds ;;
  ci)
    seconds=${FUZZ_CI_SECONDS:-5}
    sanitizer=${FUZZ_SANITIZER:-none}
    profile=(--dev)
    ;;
  "") ;;
  *[!0-9]* | 0)
    echo "usage: scripts/fuzz.sh [seconds per target > 0] | ci | seeds" >&2
    exit 2
    ;;
  *) seconds=$1 ;;
esac
rss_mb=${FUZZ_RSS_MB:-2048}
input_timeout=${FUZZ_INPUT_TIMEOUT:-10}
codegen_units=${FUZZ_CODEGEN_UNITS:-16}
started=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

# ---- toolchain (FUZZ_TOOLCHAIN=stable forces the second way)
if [[ ${FUZZ_TOOLCHAIN:-} != stable ]] && command -v rustup >/dev/null 2>&1 \
  && rustup toolchain list | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  toolchain="nightly ($(rustup run nightly rustc --version))"
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi
if ! command -v c++ >/dev/null 2>&1; then
  echo "no C++ compiler (c++) to build libFuzzer: apt-get install g++ (or clang)" >&2
  exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  step "Installing cargo-fuzz $CARGO_FUZZ_VERSION"
  if ! cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked; then
    echo "could not install cargo-fuzz $CARGO_FUZZ_VERSION from crates.io: the fuzz step fails" >&2
    exit 1
  fi
fi

# ---- build
step "Building the fuzz targets ($toolchain, sanitizer $sanitizer)"
build_started=$SECONDS
"${fuzz[@]}" build ${profile[@]+"${profile[@]}"} --sanitizer "$sanitizer" --codegen-units "$codegen_units"
echo "built in $((SECONDS - build_started)) s"
profile_name=$([[ ${profile[*]:-} == --dev ]] && echo debug || echo release)
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/$profile_name
targets=${FUZZ_TARGETS:-$("${fuzz[@]}" list)}

if [[ $mode == seeds ]]; then
  step "Writing the seed corpus to fuzz/corpus/"
  for t in $targets; do
    FLEET_FUZZ_WRITE_SEEDS=fuzz/corpus "$bin_dir/$t"
  done
  exit 0
fi

# ---- run
step "Running each target for ${seconds} s (rss limit ${rss_mb} MB, input timeout ${input_timeout} s)"
mkdir -p fuzz/work
failed=()
rows=()
for t in $targets; do
  work=fuzz/work/$t
  log=fuzz/work/$t.log
  mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  printf -- '--- %s\n' "$t"
  status=0
  "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$input_timeout" \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last status line: `#<execs> DONE cov: <n> ft: <n> corp: <n>/<size> ... exec/s: <n> ...`.
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log")
  rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log")
  rows+=("$(printf '%-15s %12s %8s %7s %7s %7s %8s %s' "$t" "${execs:--}" "${rate:--}" \
    "${cov:--}" "${ft:--}" "${corp:--}" "${rss:--}" "$([[ $status == 0 ]] && echo ok || echo FAILED)")")
  if [[ $status != 0 ]]; then
    failed+=("$t")
    echo "$t failed (exit $status); the end of $log:"
    tail -n 60 "$log"
    ls -l "fuzz/artifacts/$t/" || true
  fi
done

step "Fuzzing summary (${seconds} s per target, $toolchain, $profile_name build, sanitizer $sanitizer; $((SECONDS - started)) s in all)"
printf '%-15s %12s %8s %7s %7s %7s %8s %s\n' target execs exec/s cov ft corpus rss_mb result
printf '%s\n' "${rows[@]}"
if ((${#failed[@]})); then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with $bin_dir/<target> <input>)" >&2
  exit 1
fi
