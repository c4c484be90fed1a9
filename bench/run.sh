#!/usr/bin/env bash
# Loopback benchmark: the same load, in one run, against
#   direct  client -> origin
#   cuttle  client -> cuttle -> origin
#   squid   client -> Squid  -> origin   (Debian package, forwarding only: `cache deny all`)
# and a table with the ratios cuttle/squid and cuttle/direct. Nothing here asserts anything:
# it prints the table and writes target/bench/results.md plus the raw outputs in
# target/bench/raw/. Everything listens on 127.0.0.1 only. See bench/README.md.
#
# Environment (all optional):
#   BENCH_SECONDS        length of each measured wrk run (default 10)
#   BENCH_WARMUP         length of the unrecorded wrk run before each measured one (default 2)
#   BENCH_THREADS        wrk threads (default 2)
#   BENCH_CONNECT_BYTES  body size fetched through a CONNECT tunnel (default 1 GiB)
#   BENCH_CONNECT_RUNS   CONNECT downloads per path; the median is reported (default 3)
#   BENCH_SQUID          squid binary (default /usr/sbin/squid)
#   BENCH_SQUID_EXTRA    extra squid.conf lines (e.g. "read_ahead_gap 1 MB"); default none
#   BENCH_NO_INSTALL=1   never apt-get install a missing wrk
#   BENCH_NO_BUILD=1     use the existing release binaries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
THREADS=${BENCH_THREADS:-2}
CONNECT_BYTES=${BENCH_CONNECT_BYTES:-1073741824}
CONNECT_RUNS=${BENCH_CONNECT_RUNS:-3}
SQUID=${BENCH_SQUID:-/usr/sbin/squid}
OUT=target/bench
RAW=$OUT/raw

# name | body bytes | wrk connections
SCENARIOS=(
  "small 1024 50"
  "large 1048576 8"
)
PATHS=(direct cuttle squid)

log() { echo "bench: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# Proxy variables from the caller's environment must not route the bench anywhere else.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# ---------------------------------------------------------------------------------------
# Prerequisites and build
# ---------------------------------------------------------------------------------------
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    return 1
  fi
}

if ! command -v wrk >/dev/null 2>&1; then
  [[ ${BENCH_NO_INSTALL:-} == 1 ]] && die "wrk not found (apt-get install wrk)"
  log "installing wrk"
  as_root apt-get install -y -qq wrk >/dev/null 2>&1 ||
    { as_root apt-get update -qq >/dev/null && as_root apt-get install -y -qq wrk >/dev/null; } ||
    die "could not install wrk; install it (apt-get install wrk) and rerun"
fi
[[ -x $SQUID ]] || die "squid not found at $SQUID (apt-get install squid, or set BENCH_SQUID)"
command -v curl >/dev/null 2>&1 || die "curl not found"

if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  log "building (release)"
  cargo build --release --quiet --bin cuttle --example bench_origin
fi
CUTTLE_BIN=target/release/cuttle
ORIGIN_BIN=target/release/examples/bench_origin
[[ -x $CUTTLE_BIN && -x $ORIGIN_BIN ]] || die "release binaries missing (run without BENCH_NO_BUILD)"

rm -rf "$RAW"
mkdir -p "$RAW"

# ---------------------------------------------------------------------------------------
# Processes: origin, cuttle, squid (all killed on exit)
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/cuttle-bench.XXXXXX)
# Squid started as root drops privileges to `proxy` and must still write its logs here.
chmod 0777 "$TMP"
PIDS=()
SQUID_SERVICE="cuttlebench$$"

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -f /dev/shm/"$SQUID_SERVICE"-* 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) until `file` has a 127.0.0.1:<port> in it and prints that address.
wait_for_addr() {
  local file=$1 pid=$2 what=$3 addr
  for _ in $(seq 200); do
    addr=$(grep -oE '127\.0\.0\.1:[0-9]+' "$file" 2>/dev/null | head -n1 || true)
    if [[ -n $addr ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  die "$what did not report its address; its output:"$'\n'"$(cat "$file")"
}

# Waits (bounded) until a GET for /bytes/1 through `proxy` (or directly if empty) answers 200.
wait_ready() {
  local origin=$1 proxy=$2 what=$3 code
  for _ in $(seq 200); do
    if [[ -n $proxy ]]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -x "http://$proxy" "http://$origin/bytes/1" || true)
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 --noproxy '*' "http://$origin/bytes/1" || true)
    fi
    [[ $code == 200 ]] && return 0
    sleep 0.05
  done
  die "$what is not answering 200 (last status: ${code:-none})"
}

# A port on 127.0.0.1 nobody listens on right now (squid may still lose a race; retried).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

"$ORIGIN_BIN" 0 >"$TMP/origin.out" 2>&1 &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
ORIGIN=$(wait_for_addr "$TMP/origin.out" "$ORIGIN_PID" "bench_origin")
wait_ready "$ORIGIN" "" "bench_origin"
log "origin on $ORIGIN"

# cuttle: access log (stdout) to a file, like Squid's access.log; diagnostics to stderr.
# Its disk cache (if the build has one) stays in the temp dir; responses are no-store anyway.
CUTTLE_CACHE_DIR=$TMP/cuttle-cache "$CUTTLE_BIN" --listen 127.0.0.1:0 >"$TMP/cuttle-access.log" 2>"$TMP/cuttle.err" &
CUTTLE_PID=$!
PIDS+=("$CUTTLE_PID")
CUTTLE=$(wait_for_addr "$TMP/cuttle.err" "$CUTTLE_PID" "cuttle")
wait_ready "$ORIGIN" "$CUTTLE" "cuttle"
log "cuttle on $CUTTLE (pid $CUTTLE_PID)"

write_squid_conf() {
  cat >"$TMP/squid.conf" <<EOF
# Written by bench/run.sh: Squid as a plain forwarder (no cache), loopback clients only.
http_port 127.0.0.1:$1
visible_hostname cuttle-bench-squid
workers 1
pid_filename none
coredump_dir none
cache_log $TMP/squid-cache.log
access_log stdio:$TMP/squid-access.log
cache_store_log none
logfile_rotate 0
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
cache deny all
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
${BENCH_SQUID_EXTRA:-}
EOF
  chmod 0644 "$TMP/squid.conf"
}

SQUID_PID=
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  write_squid_conf "$port"
  : >"$TMP/squid-cache.log"
  : >"$TMP/squid-access.log"
  chmod 0666 "$TMP/squid-cache.log" "$TMP/squid-access.log"
  "$SQUID" -N -n "$SQUID_SERVICE" -f "$TMP/squid.conf" </dev/null >"$TMP/squid.out" 2>&1 &
  SQUID_PID=$!
  SQUID_ADDR=127.0.0.1:$port
  ok=
  for _ in $(seq 200); do
    kill -0 "$SQUID_PID" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -x "http://$SQUID_ADDR" "http://$ORIGIN/bytes/1" || true)
    if [[ $code == 200 ]]; then
      ok=1
      break
    fi
    sleep 0.05
  done
  if [[ -n $ok ]]; then
    PIDS+=("$SQUID_PID")
    break
  fi
  kill "$SQUID_PID" 2>/dev/null || true
  wait "$SQUID_PID" 2>/dev/null || true
  log "squid did not start on $SQUID_ADDR (attempt $attempt):"
  cat "$TMP/squid.out" "$TMP/squid-cache.log" >&2 || true
  SQUID_PID=
done
[[ -n $SQUID_PID ]] || die "squid could not be started"
log "squid on $SQUID_ADDR (pid $SQUID_PID)"
cp "$TMP/squid.conf" "$RAW/squid.conf"

# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
declare -A R # results: R[key] = value

# CPU seconds (user+system) a process has used so far.
cpu_seconds() {
  awk -v tck="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / tck }' "/proc/$1/stat"
}

# kB value of a /proc/<pid>/status field (VmRSS, VmHWM).
mem_kb() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

proxy_pid() {
  case $1 in
    cuttle) echo "$CUTTLE_PID" ;;
    squid) echo "$SQUID_PID" ;;
    *) echo "" ;;
  esac
}

# wrk script: the absolute-form target for a proxy (or the origin path for direct), plus a
# machine-readable summary line at the end.
wrk_script() {
  local path=$1 bytes=$2 file=$TMP/wrk-$1-$2.lua
  {
    if [[ $path == direct ]]; then
      echo "wrk.path = \"/bytes/$bytes\""
    else
      echo "wrk.path = \"http://$ORIGIN/bytes/$bytes\""
      echo "wrk.headers[\"Host\"] = \"$ORIGIN\""
    fi
    cat <<'EOF'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d mean_us=%.0f errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
  } >"$file"
  echo "$file"
}

wrk_target() {
  case $1 in
    direct) echo "http://$ORIGIN" ;;
    cuttle) echo "http://$CUTTLE" ;;
    squid) echo "http://$SQUID_ADDR" ;;
  esac
}

field() { sed -n "s/.*[[:space:]]$1=\\([^[:space:]]*\\).*/\\1/p" <<<"$2"; }

run_wrk() {
  local name=$1 bytes=$2 conns=$3 path=$4
  local script target pid cpu0 cpu1 line raw=$RAW/wrk-$name-$path.txt
  script=$(wrk_script "$path" "$bytes")
  target=$(wrk_target "$path")
  if [[ $WARMUP != 0 ]]; then
    wrk -t "$THREADS" -c "$conns" -d "${WARMUP}s" -s "$script" "$target" >/dev/null 2>&1 || true
  fi
  pid=$(proxy_pid "$path")
  if [[ -n $pid ]]; then cpu0=$(cpu_seconds "$pid"); fi
  log "$name ($bytes B, $conns connections, ${SECONDS_PER_RUN}s): $path"
  wrk -t "$THREADS" -c "$conns" -d "${SECONDS_PER_RUN}s" --latency -s "$script" "$target" >"$raw" 2>&1 ||
    log "wrk exited with an error for $name/$path (see $raw)"
  if [[ -n $pid ]]; then cpu1=$(cpu_seconds "$pid"); fi
  line=$(grep '^BENCH ' "$raw" || true)
  if [[ -z $line ]]; then
    log "no result from wrk for $name/$path"
    return
  fi
  local reqs dur b p50 p99 errs non2xx
  reqs=$(field requests "$line")
  dur=$(field duration_us "$line")
  b=$(field bytes "$line")
  p50=$(field p50_us "$line")
  p99=$(field p99_us "$line")
  errs=$(field errors "$line")
  non2xx=$(field non2xx "$line")
  R[$name.$path.rps]=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  R[$name.$path.mbps]=$(awk -v b="$b" -v d="$dur" 'BEGIN { printf "%.1f", b / (d / 1e6) / 1e6 }')
  R[$name.$path.p50]=$(awk -v v="$p50" 'BEGIN { printf "%.3f", v / 1000 }')
  R[$name.$path.p99]=$(awk -v v="$p99" 'BEGIN { printf "%.3f", v / 1000 }')
  R[$name.$path.errors]=$((errs + non2xx))
  R[$name.$path.requests]=$reqs
  if [[ -n $pid ]]; then
    # Proxy CPU time per 1000 requests (milliseconds): cost independent of the machine's load.
    R[$name.$path.cpu]=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
    R[$name.$path.cpu_per_kreq]=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$reqs" \
      'BEGIN { if (r > 0) printf "%.1f", (b - a) * 1e6 / r; else print "-" }')
  fi
  if [[ $((errs + non2xx)) -gt 0 ]]; then
    log "WARNING: $name/$path had $errs socket errors and $non2xx non-2xx responses"
  fi
}

# Memory before any load (after one readiness request each).
for path in cuttle squid; do
  pid=$(proxy_pid "$path")
  R[mem.$path.idle]=$(awk -v k="$(mem_kb "$pid" VmRSS)" 'BEGIN { printf "%.1f", k / 1024 }')
done

for s in "${SCENARIOS[@]}"; do
  read -r name bytes conns <<<"$s"
  for path in "${PATHS[@]}"; do
    run_wrk "$name" "$bytes" "$conns" "$path"
  done
done

# CONNECT tunnel: one curl download of CONNECT_BYTES through `curl -p` (HTTP inside the
# tunnel), CONNECT_RUNS times; the median speed is kept. Direct is the same download without
# a proxy.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
for path in "${PATHS[@]}"; do
  raw=$RAW/connect-$path.txt
  : >"$raw"
  pid=$(proxy_pid "$path")
  if [[ -n $pid ]]; then cpu0=$(cpu_seconds "$pid"); fi
  log "connect tunnel ($CONNECT_BYTES B x $CONNECT_RUNS): $path"
  for _ in $(seq "$CONNECT_RUNS"); do
    if [[ $path == direct ]]; then
      curl -sS --noproxy '*' -o /dev/null -w '%{http_code} %{size_download} %{speed_download}\n' \
        "http://$ORIGIN/bytes/$CONNECT_BYTES" >>"$raw" 2>&1 || echo "000 0 0" >>"$raw"
    else
      curl -sS -p -x "http://$(wrk_target "$path" | sed 's|^http://||')" -o /dev/null \
        -w '%{http_code} %{size_download} %{speed_download}\n' \
        "http://$ORIGIN/bytes/$CONNECT_BYTES" >>"$raw" 2>&1 || echo "000 0 0" >>"$raw"
    fi
  done
  if [[ -n $pid ]]; then cpu1=$(cpu_seconds "$pid"); fi
  bad=$(awk -v n="$CONNECT_BYTES" '$1 != 200 || $2 != n { c++ } END { print c + 0 }' "$raw")
  R[connect.$path.errors]=$bad
  if [[ $bad -gt 0 ]]; then
    log "WARNING: $bad CONNECT downloads via $path failed or were short (see $raw)"
  fi
  R[connect.$path.mbps]=$(awk '$1 == 200 { printf "%.1f\n", $3 / 1e6 }' "$raw" | median)
  if [[ -n $pid ]]; then
    R[connect.$path.cpu]=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
  fi
done

# Memory after the load.
for path in cuttle squid; do
  pid=$(proxy_pid "$path")
  R[mem.$path.hwm]=$(awk -v k="$(mem_kb "$pid" VmHWM)" 'BEGIN { printf "%.1f", k / 1024 }')
  R[mem.$path.rss]=$(awk -v k="$(mem_kb "$pid" VmRSS)" 'BEGIN { printf "%.1f", k / 1024 }')
  R[mem.$path.threads]=$(awk '$1 == "Threads:" { print $2 }' "/proc/$pid/status")
done

# Sanity: every measured request should be in the proxy's access log (lines, incl. warmups
# and readiness probes, so at least the wrk count).
R[log.cuttle.lines]=$(wc -l <"$TMP/cuttle-access.log")
R[log.squid.lines]=$(wc -l <"$TMP/squid-access.log")
# A sample of each access log: the first lines (plain GETs) and the last (CONNECTs).
for path in cuttle squid; do
  { head -n 3 "$TMP/$path-access.log" && echo ... && tail -n 3 "$TMP/$path-access.log"; } \
    >"$RAW/$path-access.sample.log" || true
done
cp "$TMP/cuttle.err" "$RAW/cuttle.stderr.log" 2>/dev/null || true
cp "$TMP/squid-cache.log" "$RAW/squid-cache.log" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

ROWS=()
row() { # label, direct value, cuttle value, squid value, better-when
  ROWS+=("$1|$2|$3|$4|$(ratio "$3" "$4")|$(ratio "$3" "$2")|$5")
}
for s in "${SCENARIOS[@]}"; do
  read -r name bytes conns <<<"$s"
  label="$name ($bytes B, c=$conns)"
  row "$label req/s" "$(get "$name.direct.rps")" "$(get "$name.cuttle.rps")" "$(get "$name.squid.rps")" higher
  row "$label MB/s" "$(get "$name.direct.mbps")" "$(get "$name.cuttle.mbps")" "$(get "$name.squid.mbps")" higher
  row "$label p50 ms" "$(get "$name.direct.p50")" "$(get "$name.cuttle.p50")" "$(get "$name.squid.p50")" lower
  row "$label p99 ms" "$(get "$name.direct.p99")" "$(get "$name.cuttle.p99")" "$(get "$name.squid.p99")" lower
  row "$label proxy CPU ms/1k req" "-" "$(get "$name.cuttle.cpu_per_kreq")" "$(get "$name.squid.cpu_per_kreq")" lower
  row "$label errors" "$(get "$name.direct.errors")" "$(get "$name.cuttle.errors")" "$(get "$name.squid.errors")" lower
done
row "CONNECT tunnel ($CONNECT_BYTES B, 1 stream) MB/s" "$(get connect.direct.mbps)" "$(get connect.cuttle.mbps)" "$(get connect.squid.mbps)" higher
row "CONNECT tunnel proxy CPU s (all runs)" "-" "$(get connect.cuttle.cpu)" "$(get connect.squid.cpu)" lower
row "memory VmRSS MiB (idle, before load)" "-" "$(get mem.cuttle.idle)" "$(get mem.squid.idle)" lower
row "memory VmHWM MiB (peak, after load)" "-" "$(get mem.cuttle.hwm)" "$(get mem.squid.hwm)" lower
row "memory VmRSS MiB (after load)" "-" "$(get mem.cuttle.rss)" "$(get mem.squid.rss)" lower

HEADER="scenario|direct|cuttle|squid|cuttle/squid|cuttle/direct|better"

# Plain-text table on stdout.
{
  echo "$HEADER"
  printf '%s\n' "${ROWS[@]}"
} | column -t -s '|'

SQUID_VERSION=$("$SQUID" -v | head -n1)
WRK_VERSION=$(wrk -v 2>&1 | head -n1 || true)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)

{
  echo "# cuttle benchmark results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  if [[ ${BENCH_NO_BUILD:-} == 1 ]]; then
    echo "- cuttle: release binary from $(date -u -r "$CUTTLE_BIN" '+%Y-%m-%d %H:%M UTC')" \
      "(not rebuilt, BENCH_NO_BUILD=1; checkout now at $REV$DIRTY)"
  else
    echo "- cuttle: $REV$DIRTY, release build"
  fi
  echo "- machine: $(nproc) CPUs ($CPU_MODEL), $(uname -sr)"
  echo "- $SQUID_VERSION (cache deny all, workers 1, access log to a file); $WRK_VERSION"
  echo "- wrk: ${THREADS} threads, ${SECONDS_PER_RUN}s per run after a ${WARMUP}s warmup;" \
    "CONNECT: curl -p, $CONNECT_RUNS downloads of $CONNECT_BYTES B per path, median"
  echo "- access log lines: cuttle ${R[log.cuttle.lines]}, squid ${R[log.squid.lines]}" \
    "(wrk requests: cuttle $(( ${R[small.cuttle.requests]:-0} + ${R[large.cuttle.requests]:-0} ))," \
    "squid $(( ${R[small.squid.requests]:-0} + ${R[large.squid.requests]:-0} )), plus warmups)"
  echo "- proxy threads after load: cuttle ${R[mem.cuttle.threads]}, squid ${R[mem.squid.threads]}"
  echo
  echo "Ratios are cuttle divided by the other column; \`better\` says which direction is good."
  echo "MB/s is 10^6 bytes per second of response data (headers included for wrk)."
  echo "Client, origin and proxy share the same CPUs: numbers are machine-dependent."
  echo
  echo "| ${HEADER//|/ | } |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for r in "${ROWS[@]}"; do
    echo "| ${r//|/ | } |"
  done
} >"$OUT/results.md"

log "wrote $OUT/results.md (raw outputs in $RAW/)"
