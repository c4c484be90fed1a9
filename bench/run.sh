#!/usr/bin/env bash
# Loopback benchmark: the same load, in one run, against
#   direct  client -> origin
#   cuttle  client -> cuttle -> origin
#   squid   client -> Squid  -> origin   (Debian package)
# in two parts:
#   forward  forwarding only (origin answers no-store; Squid runs with `cache deny all`),
#            plus CONNECT throughput and memory;
#   hit      cache hits (origin answers max-age=3600; both proxies warmed first, every
#            measured request checked against the access logs).
# It prints tables with the ratios cuttle/squid and cuttle/direct. Nothing here asserts
# anything: it writes target/bench/results.md plus the raw outputs in target/bench/raw/.
# Everything listens on 127.0.0.1 only. See bench/README.md.
#
# Environment (all optional):
#   BENCH_SECONDS        length of each measured wrk run (default 10)
#   BENCH_WARMUP         length of the unrecorded wrk run before each measured one (default 2)
#   BENCH_THREADS        wrk threads (default 2)
#   BENCH_ONLY           forward | hit: run only that part (default: both)
#   BENCH_CONNECT_BYTES  body size fetched through a CONNECT tunnel (default 1 GiB)
#   BENCH_CONNECT_RUNS   CONNECT downloads per path; the median is reported (default 3)
#   BENCH_HIT_SIZES      cache-hit object sizes in bytes (default "1024 65536 1048576 16777216")
#   BENCH_HIT_CONNS      wrk connections for the cache-hit runs (default 64)
#   BENCH_HIT_DISK_SIZE  object size also measured as a cuttle disk-tier hit, with cuttle's
#                        default settings (default 16777216; empty: skip)
#   BENCH_SQUID          squid binary (default /usr/sbin/squid)
#   BENCH_SQUID_EXTRA    extra squid.conf lines for both Squids (e.g. "read_ahead_gap 1 MB")
#   BENCH_NO_INSTALL=1   never apt-get install a missing wrk
#   BENCH_NO_BUILD=1     use the existing release binaries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
THREADS=${BENCH_THREADS:-2}
ONLY=${BENCH_ONLY:-}
CONNECT_BYTES=${BENCH_CONNECT_BYTES:-1073741824}
CONNECT_RUNS=${BENCH_CONNECT_RUNS:-3}
read -r -a HIT_SIZES <<<"${BENCH_HIT_SIZES:-1024 65536 1048576 16777216}"
HIT_CONNS=${BENCH_HIT_CONNS:-64}
HIT_DISK_SIZE=${BENCH_HIT_DISK_SIZE-16777216}
# A 16 MiB hit at 64 connections can take longer than wrk's default 2 s timeout on a busy
# 2-core machine; a timed-out request would be an error, not a latency sample.
HIT_TIMEOUT=30s
SQUID=${BENCH_SQUID:-/usr/sbin/squid}
OUT=target/bench
RAW=$OUT/raw
STARTED=$(date +%s)

# name | body bytes | wrk connections
SCENARIOS=(
  "small 1024 50"
  "large 1048576 8"
)
PATHS=(direct cuttle squid)

# cuttle's cache-hit instance: every object fits its memory tier.
CUTTLE_MEM_ARGS=(--max-mem-object-size 32MiB --cache-mem 512MiB)
# Squid's cache-hit instance: memory cache only (no cache_dir), large enough for every object.
SQUID_HIT_CONF="cache_mem 512 MB
maximum_object_size_in_memory 32 MB
maximum_object_size 64 MB
memory_cache_mode always
memory_cache_shared off"

log() { echo "bench [$(($(date +%s) - STARTED))s]: $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_BEFORE=$(loadavg)
die() {
  log "$*"
  exit 1
}

case $ONLY in
  "" | forward | hit) ;;
  *) die "BENCH_ONLY must be forward or hit (or unset), not '$ONLY'" ;;
esac
want_part() { [[ -z $ONLY || $ONLY == "$1" ]]; }

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
# Processes: the origin and the proxy instances (all killed on exit)
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/cuttle-bench.XXXXXX)
# Squid started as root drops privileges to `proxy` and must still write its logs here.
chmod 0777 "$TMP"
PIDS=()
SQUID_SERVICES=()
declare -A PID ADDR # per proxy instance: cuttle, squid, cuttle-mem, cuttle-disk, squid-mem

cleanup() {
  local pid svc
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for svc in "${SQUID_SERVICES[@]}"; do
    rm -f /dev/shm/"$svc"-* 2>/dev/null || true
  done
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

# start_cuttle <instance> [cuttle options...]: cuttle on a free port, its access log
# (stdout) in $TMP/<instance>-access.log like Squid's access.log, diagnostics in
# $TMP/<instance>.err, its disk cache in $TMP/<instance>-cache. No admin port (its default
# is a fixed one, and several instances run at once).
start_cuttle() {
  local inst=$1
  shift
  # The origin is on loopback, which cuttle refuses unless --allow-dest lists it.
  CUTTLE_CACHE_DIR=$TMP/$inst-cache "$CUTTLE_BIN" --listen 127.0.0.1:0 --admin-listen off \
    --allow-dest 127.0.0.0/8 "$@" \
    >"$TMP/$inst-access.log" 2>"$TMP/$inst.err" &
  PID[$inst]=$!
  PIDS+=("${PID[$inst]}")
  ADDR[$inst]=$(wait_for_addr "$TMP/$inst.err" "${PID[$inst]}" "$inst")
  wait_ready "$ORIGIN" "${ADDR[$inst]}" "$inst"
  echo "cuttle --listen 127.0.0.1:0 --admin-listen off --allow-dest 127.0.0.0/8${*:+ $*}" >"$RAW/$inst.cmdline"
  log "$inst on ${ADDR[$inst]} (pid ${PID[$inst]})"
}

# write_squid_conf <instance> <port> <forward|hit>
write_squid_conf() {
  local inst=$1 port=$2 mode=$3 cache
  if [[ $mode == hit ]]; then
    cache=$SQUID_HIT_CONF
  else
    cache="cache deny all"
  fi
  cat >"$TMP/$inst.conf" <<EOF
# Written by bench/run.sh ($mode): loopback clients only.
http_port 127.0.0.1:$port
visible_hostname cuttle-bench-squid
workers 1
pid_filename none
coredump_dir none
cache_log $TMP/$inst-cache.log
access_log stdio:$TMP/$inst-access.log
cache_store_log none
logfile_rotate 0
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
$cache
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
${BENCH_SQUID_EXTRA:-}
EOF
  chmod 0644 "$TMP/$inst.conf"
}

# start_squid <instance> <forward|hit>: Squid on a free port (retried if it loses the port).
start_squid() {
  local inst=$1 mode=$2 svc port pid addr code ok attempt
  svc="cuttlebench$$${inst//[^a-z]/}"
  SQUID_SERVICES+=("$svc")
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    write_squid_conf "$inst" "$port" "$mode"
    : >"$TMP/$inst-cache.log"
    : >"$TMP/$inst-access.log"
    chmod 0666 "$TMP/$inst-cache.log" "$TMP/$inst-access.log"
    "$SQUID" -N -n "$svc" -f "$TMP/$inst.conf" </dev/null >"$TMP/$inst.out" 2>&1 &
    pid=$!
    addr=127.0.0.1:$port
    ok=
    for _ in $(seq 200); do
      kill -0 "$pid" 2>/dev/null || break
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -x "http://$addr" "http://$ORIGIN/bytes/1" || true)
      if [[ $code == 200 ]]; then
        ok=1
        break
      fi
      sleep 0.05
    done
    if [[ -n $ok ]]; then
      PIDS+=("$pid")
      PID[$inst]=$pid
      ADDR[$inst]=$addr
      cp "$TMP/$inst.conf" "$RAW/$inst.conf"
      log "$inst on $addr (pid $pid)"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "$inst did not start on $addr (attempt $attempt):"
    cat "$TMP/$inst.out" "$TMP/$inst-cache.log" >&2 || true
  done
  die "$inst could not be started"
}

if want_part forward; then
  # Forwarding: cuttle with default settings (responses are no-store anyway), Squid with
  # `cache deny all`.
  start_cuttle cuttle
  start_squid squid forward
fi
if want_part hit; then
  start_cuttle cuttle-mem "${CUTTLE_MEM_ARGS[@]}"
  if [[ -n $HIT_DISK_SIZE ]]; then
    # Default settings: objects above 8 MiB (max-mem-object-size) are disk-tier hits.
    start_cuttle cuttle-disk
  fi
  start_squid squid-mem hit
fi

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

mib() { awk -v k="$(mem_kb "$1" "$2")" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Lines in an access log once it has stopped growing (both proxies write each line when the
# transaction ends, a little after the client saw it; bounded to about 5 s).
settled_lines() {
  local f=$1 a b
  a=$(wc -l <"$f")
  for _ in $(seq 50); do
    sleep 0.1
    b=$(wc -l <"$f")
    [[ $a == "$b" ]] && break
    a=$b
  done
  echo "$a"
}

# Result codes (TCP_MEM_HIT, ...) of access-log lines from..to (1-based, inclusive), counted:
# "TCP_MEM_HIT:123 TCP_MEM_HIT_ABORTED:2".
log_codes() {
  sed -n "$2,$3p" "$1" | awk '{ split($4, c, "/"); n[c[1]]++ }
    END { for (k in n) printf "%s:%d\n", k, n[k] }' | sort | paste -sd' ' -
}

# wrk script: the request target for `inst` (absolute form through a proxy, origin-form for
# direct), plus a machine-readable summary line at the end.
wrk_script() {
  local inst=$1 upath=$2 file
  file=$TMP/wrk-$inst-${upath//\//_}.lua
  {
    if [[ $inst == direct ]]; then
      echo "wrk.path = \"$upath\""
    else
      echo "wrk.path = \"http://$ORIGIN$upath\""
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
    *) echo "http://${ADDR[$1]}" ;;
  esac
}

field() { sed -n "s/.*[[:space:]]$1=\\([^[:space:]]*\\).*/\\1/p" <<<"$2"; }

# run_wrk <scenario> <url path> <connections> <column> <instance> [wrk options...]
# Results go to R[<scenario>.<column>.*]. For a proxy, the access-log lines written during
# the measured run are tallied by result code (R[...codes]) and the share of cache hits
# (TCP_MEM_HIT / TCP_HIT, aborted ones included) is kept in R[...hitpct].
run_wrk() {
  local name=$1 upath=$2 conns=$3 col=$4 inst=$5
  shift 5
  local script target pid= cpu0 cpu1 line raw=$RAW/wrk-$name-$col.txt alog= l0 l1
  script=$(wrk_script "$inst" "$upath")
  target=$(wrk_target "$inst")
  if [[ $WARMUP != 0 ]]; then
    wrk -t "$THREADS" -c "$conns" -d "${WARMUP}s" "$@" -s "$script" "$target" >/dev/null 2>&1 || true
  fi
  if [[ $inst != direct ]]; then
    pid=${PID[$inst]}
    alog=$TMP/$inst-access.log
    l0=$(settled_lines "$alog")
    cpu0=$(cpu_seconds "$pid")
  fi
  log "$name ($upath, $conns connections, ${SECONDS_PER_RUN}s): $inst"
  wrk -t "$THREADS" -c "$conns" -d "${SECONDS_PER_RUN}s" "$@" --latency -s "$script" "$target" >"$raw" 2>&1 ||
    log "wrk exited with an error for $name/$inst (see $raw)"
  if [[ -n $pid ]]; then
    cpu1=$(cpu_seconds "$pid")
    l1=$(settled_lines "$alog")
    R[$name.$col.lines]=$((l1 - l0))
    R[$name.$col.codes]=$(log_codes "$alog" $((l0 + 1)) "$l1")
    # Hit share among the lines for the measured URL (Squid also logs a NONE_NONE/000 line,
    # URL error:..., for a connection closed before a request, e.g. by the warmup's end).
    local hn
    hn=$(sed -n "$((l0 + 1)),${l1}p" "$alog" | awk -v u="http://$ORIGIN$upath" '
      $7 == u { n++; split($4, c, "/"); if (c[1] ~ /^TCP_(MEM_)?HIT(_ABORTED)?$/) h++ }
      END { printf "%d %d", h, n }')
    R[$name.$col.nonhits]=$(awk '{ print $2 - $1 }' <<<"$hn")
    R[$name.$col.hitpct]=$(awk '{ if ($2) printf "%.1f", 100 * $1 / $2; else print "-" }' <<<"$hn")
    if [[ $name != small && $name != large ]]; then
      # For inspection: the lines that are not hits (at most 50), and the last 70 lines
      # (the requests wrk cut off when it stopped).
      sed -n "$((l0 + 1)),${l1}p" "$alog" | awk '$4 !~ /^TCP_(MEM_)?HIT/' | head -n 50 \
        >"$RAW/log-$name-$col.nonhits.log"
      sed -n "$((l0 + 1)),${l1}p" "$alog" | tail -n 70 >"$RAW/log-$name-$col.tail.log"
    fi
  fi
  line=$(grep '^BENCH ' "$raw" || true)
  if [[ -z $line ]]; then
    log "no result from wrk for $name/$inst"
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
  R[$name.$col.rps]=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  R[$name.$col.mbps]=$(awk -v b="$b" -v d="$dur" 'BEGIN { printf "%.1f", b / (d / 1e6) / 1e6 }')
  R[$name.$col.p50]=$(awk -v v="$p50" 'BEGIN { printf "%.3f", v / 1000 }')
  R[$name.$col.p99]=$(awk -v v="$p99" 'BEGIN { printf "%.3f", v / 1000 }')
  R[$name.$col.errors]=$((errs + non2xx))
  R[$name.$col.requests]=$reqs
  if [[ -n $pid ]]; then
    # Proxy CPU time per 1000 requests (milliseconds): cost independent of the machine's load.
    R[$name.$col.cpu]=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
    R[$name.$col.cpu_per_kreq]=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$reqs" \
      'BEGIN { if (r > 0) printf "%.1f", (b - a) * 1e6 / r; else print "-" }')
  fi
  if [[ $((errs + non2xx)) -gt 0 ]]; then
    log "WARNING: $name/$inst had $errs socket errors and $non2xx non-2xx responses"
  fi
}

# ----- forwarding ----------------------------------------------------------------------
if want_part forward; then
  # Memory before any load (after one readiness request each).
  for inst in cuttle squid; do
    R[mem.$inst.idle]=$(mib "${PID[$inst]}" VmRSS)
  done

  for s in "${SCENARIOS[@]}"; do
    read -r name bytes conns <<<"$s"
    for path in "${PATHS[@]}"; do
      run_wrk "$name" "/bytes/$bytes" "$conns" "$path" "$path"
    done
  done

  # CONNECT tunnel: one curl download of CONNECT_BYTES through `curl -p` (HTTP inside the
  # tunnel), CONNECT_RUNS times; the median speed is kept. Direct is the same download
  # without a proxy.
  median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
  for path in "${PATHS[@]}"; do
    raw=$RAW/connect-$path.txt
    : >"$raw"
    pid=${PID[$path]:-}
    if [[ -n $pid ]]; then cpu0=$(cpu_seconds "$pid"); fi
    log "connect tunnel ($CONNECT_BYTES B x $CONNECT_RUNS): $path"
    for _ in $(seq "$CONNECT_RUNS"); do
      if [[ $path == direct ]]; then
        curl -sS --noproxy '*' -o /dev/null -w '%{http_code} %{size_download} %{speed_download}\n' \
          "http://$ORIGIN/bytes/$CONNECT_BYTES" >>"$raw" 2>&1 || echo "000 0 0" >>"$raw"
      else
        curl -sS -p -x "http://${ADDR[$path]}" -o /dev/null \
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
  for inst in cuttle squid; do
    R[mem.$inst.hwm]=$(mib "${PID[$inst]}" VmHWM)
    R[mem.$inst.rss]=$(mib "${PID[$inst]}" VmRSS)
    R[mem.$inst.threads]=$(awk '$1 == "Threads:" { print $2 }' "/proc/${PID[$inst]}/status")
  done
fi

# ----- cache hits ----------------------------------------------------------------------
# warm <instance> <url path> <expected result-code regex>: one request stores the object,
# then a check request must be logged with an expected code (retried a few times: cuttle
# may answer the first request after a fill from the disk tier while it is still adding the
# object to memory). Records the outcome in R[warm.<instance>.<bytes>].
warm() {
  local inst=$1 upath=$2 want=$3 alog=$TMP/$1-access.log n code= first
  curl -s -o /dev/null -m 60 -x "http://${ADDR[$inst]}" "http://$ORIGIN$upath" || true
  first=$(settled_lines "$alog")
  first=$(sed -n "${first}p" "$alog" | awk '{ print $4 }')
  for _ in $(seq 10); do
    n=$(wc -l <"$alog")
    curl -s -o /dev/null -m 60 -x "http://${ADDR[$inst]}" "http://$ORIGIN$upath" || true
    for _ in $(seq 100); do
      [[ $(wc -l <"$alog") -gt $n ]] && break
      sleep 0.02
    done
    code=$(tail -n 1 "$alog" | awk '{ print $4 }')
    [[ ${code%%/*} =~ ^($want)$ ]] && break
  done
  echo "$inst $upath fill=$first check=$code" >>"$RAW/warm.txt"
  R[warm.$inst.${upath##*/}]="${first%%/*} then ${code%%/*}"
  if [[ ${code%%/*} =~ ^($want)$ ]]; then
    log "warm $inst $upath: ${first%%/*}, then ${code%%/*}"
  else
    log "WARNING: $inst does not serve $upath as a hit ($want) after warming: last $code"
  fi
}

if want_part hit; then
  : >"$RAW/warm.txt"
  for bytes in "${HIT_SIZES[@]}"; do
    warm cuttle-mem "/cached/$bytes" TCP_MEM_HIT
    warm squid-mem "/cached/$bytes" "TCP_MEM_HIT|TCP_HIT"
  done
  if [[ -n $HIT_DISK_SIZE ]]; then
    warm cuttle-disk "/cached/$HIT_DISK_SIZE" TCP_HIT
  fi
  for inst in cuttle-mem squid-mem; do
    R[mem.$inst.idle]=$(mib "${PID[$inst]}" VmRSS)
  done

  for bytes in "${HIT_SIZES[@]}"; do
    run_wrk "hit-$bytes" "/cached/$bytes" "$HIT_CONNS" direct direct --timeout "$HIT_TIMEOUT"
    run_wrk "hit-$bytes" "/cached/$bytes" "$HIT_CONNS" cuttle cuttle-mem --timeout "$HIT_TIMEOUT"
    run_wrk "hit-$bytes" "/cached/$bytes" "$HIT_CONNS" squid squid-mem --timeout "$HIT_TIMEOUT"
  done
  if [[ -n $HIT_DISK_SIZE ]]; then
    run_wrk "disk-$HIT_DISK_SIZE" "/cached/$HIT_DISK_SIZE" "$HIT_CONNS" cuttle cuttle-disk \
      --timeout "$HIT_TIMEOUT"
  fi

  for inst in cuttle-mem squid-mem cuttle-disk; do
    [[ -n ${PID[$inst]:-} ]] || continue
    R[mem.$inst.hwm]=$(mib "${PID[$inst]}" VmHWM)
    R[mem.$inst.rss]=$(mib "${PID[$inst]}" VmRSS)
  done
  # Every measured request should have been a hit (no origin traffic after warming).
  for name in "${!R[@]}"; do
    [[ $name == hit-*.nonhits || $name == disk-*.nonhits ]] || continue
    if [[ ${R[$name]} != 0 || ${R[${name%.nonhits}.hitpct]} == - ]]; then
      log "WARNING: ${name%.nonhits}: ${R[$name]} requests were not hits during the measured" \
        "run: ${R[${name%.nonhits}.codes]:-}"
    fi
  done
fi

# Sanity: every measured request should be in the proxy's access log (lines, incl. warmups
# and readiness probes, so at least the wrk count).
for inst in "${!PID[@]}"; do
  R[log.$inst.lines]=$(wc -l <"$TMP/$inst-access.log")
  # A sample of each access log: the first lines and the last.
  { head -n 3 "$TMP/$inst-access.log" && echo ... && tail -n 3 "$TMP/$inst-access.log"; } \
    >"$RAW/$inst-access.sample.log" || true
  if [[ -f $TMP/$inst.err ]]; then cp "$TMP/$inst.err" "$RAW/$inst.stderr.log" 2>/dev/null || true; fi
  if [[ -f $TMP/$inst-cache.log ]]; then cp "$TMP/$inst-cache.log" "$RAW/$inst-cache.log" 2>/dev/null || true; fi
done

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

ROWS=()
HROWS=()
row() { # label, direct value, cuttle value, squid value, better-when
  ROWS+=("$1|$2|$3|$4|$(ratio "$3" "$4")|$(ratio "$3" "$2")|$5")
}
hrow() { # the same, for the cache-hit table
  HROWS+=("$1|$2|$3|$4|$(ratio "$3" "$4")|$(ratio "$3" "$2")|$5")
}
# wrk rows of one scenario: <row function> <label> <key of direct> <key of cuttle> <key of squid>
wrk_rows() {
  local f=$1 label=$2 d=$3 c=$4 s=$5
  $f "$label req/s" "$(get "$d.rps")" "$(get "$c.rps")" "$(get "$s.rps")" higher
  $f "$label MB/s" "$(get "$d.mbps")" "$(get "$c.mbps")" "$(get "$s.mbps")" higher
  $f "$label p50 ms" "$(get "$d.p50")" "$(get "$c.p50")" "$(get "$s.p50")" lower
  $f "$label p99 ms" "$(get "$d.p99")" "$(get "$c.p99")" "$(get "$s.p99")" lower
  $f "$label proxy CPU ms/1k req" "-" "$(get "$c.cpu_per_kreq")" "$(get "$s.cpu_per_kreq")" lower
  $f "$label errors" "$(get "$d.errors")" "$(get "$c.errors")" "$(get "$s.errors")" lower
}
if want_part forward; then
  for s in "${SCENARIOS[@]}"; do
    read -r name bytes conns <<<"$s"
    wrk_rows row "$name ($bytes B, c=$conns)" "$name.direct" "$name.cuttle" "$name.squid"
  done
  row "CONNECT tunnel ($CONNECT_BYTES B, 1 stream) MB/s" "$(get connect.direct.mbps)" "$(get connect.cuttle.mbps)" "$(get connect.squid.mbps)" higher
  row "CONNECT tunnel proxy CPU s (all runs)" "-" "$(get connect.cuttle.cpu)" "$(get connect.squid.cpu)" lower
  row "memory VmRSS MiB (idle, before load)" "-" "$(get mem.cuttle.idle)" "$(get mem.squid.idle)" lower
  row "memory VmHWM MiB (peak, after load)" "-" "$(get mem.cuttle.hwm)" "$(get mem.squid.hwm)" lower
  row "memory VmRSS MiB (after load)" "-" "$(get mem.cuttle.rss)" "$(get mem.squid.rss)" lower
fi
if want_part hit; then
  for bytes in "${HIT_SIZES[@]}"; do
    n=hit-$bytes
    label="hit $bytes B (c=$HIT_CONNS)"
    wrk_rows hrow "$label" "$n.direct" "$n.cuttle" "$n.squid"
    hrow "$label hits % of logged" "-" "$(get "$n.cuttle.hitpct")" "$(get "$n.squid.hitpct")" higher
  done
  if [[ -n $HIT_DISK_SIZE ]]; then
    # cuttle's disk-tier hit against the same direct and Squid (memory hit) runs.
    n=disk-$HIT_DISK_SIZE
    m=hit-$HIT_DISK_SIZE
    label="hit $HIT_DISK_SIZE B (c=$HIT_CONNS), cuttle disk tier"
    wrk_rows hrow "$label" "$m.direct" "$n.cuttle" "$m.squid"
    hrow "$label hits % of logged" "-" "$(get "$n.cuttle.hitpct")" "$(get "$m.squid.hitpct")" higher
  fi
  hrow "hit proxies VmRSS MiB (warm, before load)" "-" "$(get mem.cuttle-mem.idle)" "$(get mem.squid-mem.idle)" lower
  hrow "hit proxies VmHWM MiB (peak, after load)" "-" "$(get mem.cuttle-mem.hwm)" "$(get mem.squid-mem.hwm)" lower
  if [[ -n $HIT_DISK_SIZE ]]; then
    hrow "cuttle disk-tier instance VmHWM MiB (peak; squid: memory-hit instance)" "-" "$(get mem.cuttle-disk.hwm)" "$(get mem.squid-mem.hwm)" lower
  fi
fi

HEADER="scenario|direct|cuttle|squid|cuttle/squid|cuttle/direct|better"

# Plain-text tables on stdout.
if [[ ${#ROWS[@]} -gt 0 ]]; then
  {
    echo "$HEADER"
    printf '%s\n' "${ROWS[@]}"
  } | column -t -s '|'
fi
if [[ ${#HROWS[@]} -gt 0 ]]; then
  [[ ${#ROWS[@]} -gt 0 ]] && echo
  {
    echo "${HEADER/scenario/cache hit}"
    printf '%s\n' "${HROWS[@]}"
  } | column -t -s '|'
fi

SQUID_VERSION=$("$SQUID" -v | head -n1)
WRK_VERSION=$(wrk -v 2>&1 | head -n1 || true)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
ELAPSED=$(($(date +%s) - STARTED))

md_table() { # rows...
  echo "| ${HEADER//|/ | } |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  local r
  for r in "$@"; do
    echo "| ${r//|/ | } |"
  done
}

{
  echo "# cuttle benchmark results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); the run took ${ELAPSED}s"
  echo "- load average (1, 5, 15 min) before the run: $LOAD_BEFORE; after: $(loadavg)" \
    "(anything well above the bench's own load means other work shared the CPUs)"
  if [[ ${BENCH_NO_BUILD:-} == 1 ]]; then
    echo "- cuttle: release binary from $(date -u -r "$CUTTLE_BIN" '+%Y-%m-%d %H:%M UTC')" \
      "(not rebuilt, BENCH_NO_BUILD=1; checkout now at $REV$DIRTY)"
  else
    echo "- cuttle: $REV$DIRTY, release build"
  fi
  echo "- machine: $(nproc) CPUs ($CPU_MODEL), $(uname -sr)"
  echo "- $SQUID_VERSION (workers 1, access log to a file); $WRK_VERSION"
  echo "- wrk: ${THREADS} threads, ${SECONDS_PER_RUN}s per run after a ${WARMUP}s warmup"
  echo
  echo "Ratios are cuttle divided by the other column; \`better\` says which direction is good."
  echo "MB/s is 10^6 bytes per second of response data (headers included for wrk)."
  echo "Client, origin and proxy share the same CPUs: numbers are machine-dependent."
  if want_part forward; then
    echo
    echo "## Forwarding"
    echo
    echo "- origin: \`/bytes/<n>\`, \`Cache-Control: no-store\`; Squid with \`cache deny all\`;" \
      "cuttle with default settings"
    echo "- CONNECT: curl -p, $CONNECT_RUNS downloads of $CONNECT_BYTES B per path, median"
    echo "- access log lines: cuttle ${R[log.cuttle.lines]}, squid ${R[log.squid.lines]}" \
      "(wrk requests: cuttle $((${R[small.cuttle.requests]:-0} + ${R[large.cuttle.requests]:-0}))," \
      "squid $((${R[small.squid.requests]:-0} + ${R[large.squid.requests]:-0})), plus warmups)"
    echo "- proxy threads after load: cuttle ${R[mem.cuttle.threads]}, squid ${R[mem.squid.threads]}"
    echo
    md_table "${ROWS[@]}"
  fi
  if want_part hit; then
    echo
    echo "## Cache hits"
    echo
    echo "- origin: \`/cached/<n>\`, \`Cache-Control: max-age=3600\` and an ETag; wrk with" \
      "$HIT_CONNS connections and \`--timeout $HIT_TIMEOUT\`"
    echo "- cuttle: \`$(cat "$RAW/cuttle-mem.cmdline")\` (memory-tier hits)"
    if [[ -n $HIT_DISK_SIZE ]]; then
      echo "- cuttle disk tier: \`$(cat "$RAW/cuttle-disk.cmdline")\` (default settings:" \
        "max-mem-object-size 8 MiB, so the $HIT_DISK_SIZE B object is a disk-tier hit);" \
        "its direct and squid columns repeat the memory-hit runs"
    fi
    echo "- Squid: memory cache only, no cache_dir: $(paste -sd';' <<<"$SQUID_HIT_CONF" | sed 's/;/; /g')"
    warmed=()
    for bytes in "${HIT_SIZES[@]}"; do
      warmed+=("cuttle $bytes: $(get "warm.cuttle-mem.$bytes"), squid $bytes: $(get "warm.squid-mem.$bytes")")
    done
    if [[ -n $HIT_DISK_SIZE ]]; then
      warmed+=("cuttle disk tier $HIT_DISK_SIZE: $(get "warm.cuttle-disk.$HIT_DISK_SIZE")")
    fi
    echo "- warming, result code of the filling request then of the check request:" \
      "$(printf '%s; ' "${warmed[@]}" | sed 's/; $//')"
    echo "- hits % of logged: among the access-log lines for the measured URL written during" \
      "the measured run, the share whose result code is TCP_MEM_HIT or TCP_HIT (with or" \
      "without _ABORTED); the lines also count the responses wrk cut off when it stopped"
    echo
    md_table "${HROWS[@]}"
    echo
    echo "Access-log result codes during each measured run (lines logged; wrk requests):"
    echo
    for bytes in "${HIT_SIZES[@]}"; do
      for col in cuttle squid; do
        echo "- hit $bytes B, $col: $(get "hit-$bytes.$col.codes")" \
          "($(get "hit-$bytes.$col.lines") lines; $(get "hit-$bytes.$col.requests") requests)"
      done
    done
    if [[ -n $HIT_DISK_SIZE ]]; then
      echo "- hit $HIT_DISK_SIZE B, cuttle disk tier: $(get "disk-$HIT_DISK_SIZE.cuttle.codes")" \
        "($(get "disk-$HIT_DISK_SIZE.cuttle.lines") lines; $(get "disk-$HIT_DISK_SIZE.cuttle.requests") requests)"
    fi
  fi
} >"$OUT/results.md"

log "wrote $OUT/results.md (raw outputs in $RAW/); ${ELAPSED}s"
