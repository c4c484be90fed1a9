#!/usr/bin/env bash
# Profiles cuttle (release build, default settings) under one bench scenario with
#   perf record -e cpu-clock --call-graph <dwarf|fp>
# and writes, in target/bench/profile/<scenario>/: perf.data, the folded stacks
# (stacks.folded, inferno-collapse-perf), a flame graph (flamegraph.svg, inferno-flamegraph)
# and top.txt, the frames with the most samples (self and total). It prints top.txt.
# Loopback only; the load and the recording are bounded in time. See bench/README.md,
# "Profiling".
#
#   bench/profile.sh [scenario]          # default: hit-1k
#
# Scenarios (the load runs against cuttle only):
#   hit-1k        wrk, 64 connections, 1 KiB memory-tier hits
#   hit-64k       wrk, 64 connections, 64 KiB memory-tier hits
#   hit-16m-disk  wrk, 64 connections, 16 MiB disk-tier hits (default tiers)
#   forward-small wrk, 50 connections, 1 KiB no-store responses (forwarding, no cache)
#   forward-large wrk, 8 connections, 1 MiB no-store responses
#   tunnel-tls    8 concurrent curl downloads over TLS 1.3 through CONNECT tunnels
#   miss-1m       sequential 1 MiB misses (fresh URLs), 8 connections
#
# Environment (all optional):
#   PROFILE_SECONDS    recording length (default 10); the load runs 2 s longer
#   PROFILE_FREQ       samples per second (default 499)
#   PROFILE_CALLGRAPH  dwarf (default) or fp. The release build has no frame pointers, so
#                      `fp` (perf's plain -g) loses most callers; dwarf unwinds from copies
#                      of the stack (larger perf.data, slower perf script).
#   PROFILE_DWARF_STACK  bytes of stack copied per sample with dwarf (default 16384; deeper
#                      tokio stacks than that end in an [unknown] frame)
#   PROFILE_TOP        frames listed in top.txt (default 30)
#   BENCH_NO_BUILD=1   use the existing release binaries
#   BENCH_NO_INSTALL=1 never install perf (apt) or inferno (cargo install)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCENARIO=${1:-hit-1k}
SECS=${PROFILE_SECONDS:-10}
FREQ=${PROFILE_FREQ:-499}
CALLGRAPH=${PROFILE_CALLGRAPH:-dwarf}
TOP=${PROFILE_TOP:-30}
OUT=target/bench/profile/$SCENARIO
STARTED=$(date +%s)

log() { echo "profile [$(($(date +%s) - STARTED))s]: $*" >&2; }
die() {
  log "$*"
  exit 1
}
case $CALLGRAPH in
  dwarf) CG=(--call-graph "dwarf,${PROFILE_DWARF_STACK:-16384}") ;;
  fp) CG=(-g) ;;
  *) die "PROFILE_CALLGRAPH must be dwarf or fp" ;;
esac
case $SCENARIO in
  hit-1k | hit-64k | hit-16m-disk | forward-small | forward-large | tunnel-tls | miss-1m) ;;
  *) die "unknown scenario '$SCENARIO' (see the list at the top of bench/profile.sh)" ;;
esac
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}
if ! command -v perf >/dev/null 2>&1; then
  [[ ${BENCH_NO_INSTALL:-} == 1 ]] && die "perf not found (apt-get install linux-perf)"
  log "installing perf (linux-perf)"
  as_root apt-get install -y -qq linux-perf >/dev/null 2>&1 ||
    { as_root apt-get update -qq >/dev/null && as_root apt-get install -y -qq linux-perf >/dev/null; } ||
    die "could not install linux-perf"
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1 && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/inferno-flamegraph ]]; then
  [[ ${BENCH_NO_INSTALL:-} == 1 ]] && die "inferno not found (cargo install inferno)"
  log "installing inferno (cargo install inferno)"
  nice -n 5 cargo install --quiet --locked inferno || die "cargo install inferno failed"
fi
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
command -v wrk >/dev/null 2>&1 || die "wrk not found (bench/run.sh installs it)"

if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  log "building (release)"
  cargo build --release --quiet --bin cuttle --example bench_origin
fi
CUTTLE_BIN=target/release/cuttle
ORIGIN_BIN=target/release/examples/bench_origin
[[ -x $CUTTLE_BIN && -x $ORIGIN_BIN ]] || die "release binaries missing (run without BENCH_NO_BUILD)"

rm -rf "$OUT"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/cuttle-profile.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_addr() {
  local file=$1 pid=$2 prefix=$3 addr
  for _ in $(seq 200); do
    addr=$(grep -oE "${prefix}127\\.0\\.0\\.1:[0-9]+" "$file" 2>/dev/null | head -n1 || true)
    if [[ -n $addr ]]; then
      echo "${addr#"$prefix"}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  die "no address in $file:"$'\n'"$(cat "$file")"
}

"$ORIGIN_BIN" 0 --tls "$TMP/origin-ca.pem" >"$TMP/origin.out" 2>&1 &
PIDS+=($!)
ORIGIN=$(wait_for_addr "$TMP/origin.out" "${PIDS[0]}" "listening on ")
TLS_ORIGIN=$(wait_for_addr "$TMP/origin.out" "${PIDS[0]}" "tls listening on ")

CUTTLE_CACHE_DIR=$TMP/cache "$CUTTLE_BIN" --listen 127.0.0.1:0 --admin-listen off --allow-dest 127.0.0.0/8 \
  >"$TMP/access.log" 2>"$TMP/cuttle.err" &
CPID=$!
PIDS+=("$CPID")
CADDR=$(wait_for_addr "$TMP/cuttle.err" "$CPID" "addr=")
log "origin $ORIGIN (TLS $TLS_ORIGIN), cuttle $CADDR (pid $CPID)"

# wrk_load <url path> <connections>: wrk through cuttle for SECS + 2 seconds, in the background.
wrk_load() {
  local upath=$1 conns=$2
  printf 'wrk.path = "http://%s%s"\nwrk.headers["Host"] = "%s"\n' "$ORIGIN" "$upath" "$ORIGIN" >"$TMP/load.lua"
  # A cached object is stored (and a disk hit becomes one) before the recording starts.
  for _ in 1 2 3; do curl -s -o /dev/null -m 60 -x "http://$CADDR" "http://$ORIGIN$upath"; done
  wrk -t 2 -c "$conns" -d "$((SECS + 2))s" --timeout 30s -s "$TMP/load.lua" "http://$CADDR" \
    >"$OUT/load.txt" 2>&1 &
  PIDS+=($!)
}

case $SCENARIO in
  hit-1k) wrk_load /cached/1024 64 ;;
  hit-64k) wrk_load /cached/65536 64 ;;
  hit-16m-disk) wrk_load /cached/16777216 64 ;;
  forward-small) wrk_load /bytes/1024 50 ;;
  forward-large) wrk_load /bytes/1048576 8 ;;
  tunnel-tls)
    # Eight curls in a loop, each downloading 64 MiB at a time through its own tunnel,
    # until the recording is over.
    end=$(($(date +%s) + SECS + 2))
    for i in $(seq 8); do
      (while [[ $(date +%s) -lt $end ]]; do
        curl -sS --tlsv1.3 --cacert "$TMP/origin-ca.pem" -x "http://$CADDR" -o /dev/null \
          -m $((SECS + 5)) "https://$TLS_ORIGIN/bytes/67108864" || true
      done) >>"$OUT/load.txt" 2>&1 &
      PIDS+=($!)
    done
    ;;
  miss-1m)
    end=$(($(date +%s) + SECS + 2))
    for i in $(seq 8); do
      (k=0
        while [[ $(date +%s) -lt $end ]]; do
          for _ in $(seq 20); do
            k=$((k + 1))
            printf 'url = "http://%s/cached/1048576?profile-%d-%d"\noutput = "/dev/null"\n' "$ORIGIN" "$i" "$k"
          done >"$TMP/miss-$i.cfg"
          curl -sS -x "http://$CADDR" -K "$TMP/miss-$i.cfg" -m $((SECS + 5)) || true
        done) >>"$OUT/load.txt" 2>&1 &
      PIDS+=($!)
    done
    ;;
esac

sleep 1
log "recording $SCENARIO for ${SECS}s (cpu-clock, ${FREQ} Hz, call graph: $CALLGRAPH)"
perf record -e cpu-clock -F "$FREQ" "${CG[@]}" -p "$CPID" -o "$OUT/perf.data" -- sleep "$SECS" \
  >"$OUT/perf-record.txt" 2>&1 || die "perf record failed: $(cat "$OUT/perf-record.txt")"
log "folding stacks"
perf script -i "$OUT/perf.data" 2>"$OUT/perf-script.err" | inferno-collapse-perf >"$OUT/stacks.folded"
inferno-flamegraph --title "cuttle: $SCENARIO (cpu-clock, ${SECS}s)" <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"

# Top frames: self = samples where the frame is the leaf; total = samples whose stack
# contains it (counted once per stack).
awk -v top="$TOP" '
  {
    n = $NF; line = substr($0, 1, length($0) - length($NF) - 1)
    k = split(line, f, ";"); all += n; self[f[k]] += n
    delete seen
    for (i = 1; i <= k; i++) if (!(f[i] in seen)) { seen[f[i]] = 1; total[f[i]] += n }
  }
  END {
    # inferno weighs each stack by the event period: for cpu-clock, nanoseconds of CPU.
    printf "%.3f s of cuttle CPU time sampled\n\nself%%   frame (leaf)\n", all / 1e9
    for (s in self) printf "%6.2f  %s\n", 100 * self[s] / all, s | "sort -rn | head -n " top
    close("sort -rn | head -n " top)
    printf "\ntotal%%  frame (anywhere in the stack)\n"
    for (s in total) printf "%6.2f  %s\n", 100 * total[s] / all, s | "sort -rn | head -n " top
  }' "$OUT/stacks.folded" >"$OUT/top.txt"
cat "$OUT/top.txt"
log "wrote $OUT/{perf.data,stacks.folded,flamegraph.svg,top.txt}"
