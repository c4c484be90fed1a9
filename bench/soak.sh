#!/usr/bin/env bash
# Soak: cuttle under mixed traffic with faults on a schedule, on loopback, for a set time
# (README "Bounds: disk and memory"; the harness is examples/soak.rs). It builds the release
# binary and the harness, then runs it; the harness mounts a tmpfs for the cache (root), and
# writes soak.md (table), soak.csv and soak.svg (chart) into --out (default target/soak).
# Exits non-zero when a bound was crossed, a series kept growing after the warm-up, or an
# error occurred that no injected fault explains.
#
#   bench/soak.sh --duration 1h --warmup 5m             # the long run
#   bench/soak.sh --duration 2m --clients 32            # what CI runs (scripts/test.sh, debug build)
#   bench/soak.sh measure                               # per-connection and per-tunnel memory
#   SOAK_NO_DEFAULT_FEATURES=1 SOAK_FEATURES=mimalloc bench/soak.sh --label mimalloc
#                                                       # another allocator than jemalloc (none: the
#                                                       # system malloc; README "Sizing memory")
#   bench/soak.sh --preload /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 --label mimalloc
#                                                       # another malloc, without rebuilding
#
# Environment (optional):
#   SOAK_FEATURES   cargo features for cuttle
#   SOAK_NO_DEFAULT_FEATURES=1  build cuttle without jemalloc (its default feature)
#   SOAK_PROFILE    release (default) or dev
#   SOAK_NO_BUILD=1 use the binaries already built
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROFILE=${SOAK_PROFILE:-release}
case $PROFILE in
  release) DIR=target/release ;;
  dev) DIR=target/debug ;;
  *) echo "soak.sh: SOAK_PROFILE must be release or dev" >&2; exit 2 ;;
esac
# Proxy variables from the caller's environment must not route the harness anywhere else.
unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY all_proxy NO_PROXY no_proxy

if [[ ${SOAK_NO_BUILD:-0} != 1 ]]; then
  features=()
  [[ -n ${SOAK_FEATURES:-} ]] && features=(--features "$SOAK_FEATURES")
  [[ ${SOAK_NO_DEFAULT_FEATURES:-0} == 1 ]] && features+=(--no-default-features)
  cargo build --profile "$PROFILE" --bin cuttle "${features[@]}"
  cargo build --profile "$PROFILE" --example soak
fi
exec "$DIR/examples/soak" --cuttle "$DIR/cuttle" "$@"
