#!/usr/bin/env bash
# Loopback benchmark: the same load, in one run, against
#   direct  client -> origin
#   squid   client -> Squid           -> origin   (Debian package `squid`)
#   ats     client -> Traffic Server  -> origin   (Debian package `trafficserver`)
#   cuttle  client -> cuttle          -> origin
# in three parts:
#   forward    forwarding (origin answers no-store), CONNECT throughput (plain HTTP inside,
#              and TLS 1.3 end to end with the client verifying the origin, x1 and x8
#              tunnels), and the time to first byte of a 1 MiB cache miss;
#   hit        cache hits (origin answers max-age=3600; every proxy warmed first, every
#              measured request checked against the access logs);
#   intercept  bench/tls.sh: cuttle's intercepted HTTPS cache hits against a CONNECT tunnel
#              to the same HTTPS origin.
# Each proxy is one process for the forward and hit parts (cuttle with its default settings,
# disk tier on), so its peak RSS covers the whole run. It prints tables with the ratios
# cuttle/squid, cuttle/ats and cuttle/direct, then the issue-11 summary (each figure with
# its goal). Nothing here asserts anything: it writes target/bench/results.md plus the raw
# outputs in target/bench/raw/. Everything listens on 127.0.0.1 only. See bench/README.md.
#
# Environment (all optional):
#   BENCH_SECONDS        length of each measured wrk run (default 10)
#   BENCH_WARMUP         length of the unrecorded wrk run before each measured one (default 2)
#   BENCH_THREADS        wrk threads (default 2)
#   BENCH_ONLY           parts to run, comma-separated: forward, hit, intercept (default: all)
#   BENCH_CONNECT_BYTES  body size fetched through a plain CONNECT tunnel (default 1 GiB)
#   BENCH_CONNECT_RUNS   rounds per path of each CONNECT scenario; the median is reported (3)
#   BENCH_TUNNEL_BYTES   bytes per round of the TLS tunnel scenarios, split evenly over the
#                        tunnels (default 1 GiB)
#   BENCH_TUNNEL_PARALLEL  concurrent tunnels of the second TLS tunnel scenario (default 8)
#   BENCH_TTFB_RUNS      1 MiB misses per path for the time to first byte (default 100: single
#                        misses scatter by several ms on 2 shared cores; a median of 20 moved)
#   BENCH_HIT_SIZES      cache-hit object sizes in bytes (default "1024 65536 1048576 16777216")
#   BENCH_HIT_CONNS      wrk connections for the cache-hit runs (default 64)
#   BENCH_HIT_MEM_SIZES  sizes above cuttle's default max-mem-object-size (8 MiB) also measured
#                        as memory-tier hits of a second cuttle (default 16777216; empty: skip)
#   BENCH_SQUID          squid binary (default /usr/sbin/squid)
#   BENCH_SQUID_EXTRA    extra squid.conf lines (e.g. "read_ahead_gap 1 MB")
#   BENCH_ATS            traffic_server binary (default /usr/bin/traffic_server; off: no ATS)
#   BENCH_ATS_EXTRA      extra records.config lines for Traffic Server
#   BENCH_NO_INSTALL=1   never apt-get install a missing wrk or trafficserver
#   BENCH_NO_BUILD=1     use the existing release binaries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
THREADS=${BENCH_THREADS:-2}
ONLY=${BENCH_ONLY:-forward,hit,intercept}
CONNECT_BYTES=${BENCH_CONNECT_BYTES:-1073741824}
CONNECT_RUNS=${BENCH_CONNECT_RUNS:-3}
TUNNEL_BYTES=${BENCH_TUNNEL_BYTES:-1073741824}
TUNNEL_PARALLEL=${BENCH_TUNNEL_PARALLEL:-8}
TTFB_RUNS=${BENCH_TTFB_RUNS:-100}
read -r -a HIT_SIZES <<<"${BENCH_HIT_SIZES:-1024 65536 1048576 16777216}"
HIT_CONNS=${BENCH_HIT_CONNS:-64}
read -r -a HIT_MEM_SIZES <<<"${BENCH_HIT_MEM_SIZES-16777216}"
# A 16 MiB hit at 64 connections can take longer than wrk's default 2 s timeout on a busy
# 2-core machine; a timed-out request would be an error, not a latency sample.
HIT_TIMEOUT=30s
SQUID=${BENCH_SQUID:-/usr/sbin/squid}
ATS=${BENCH_ATS:-/usr/bin/traffic_server}
# cuttle's default max-mem-object-size: larger objects are served from the disk tier.
CUTTLE_MEM_OBJECT_MAX=$((8 << 20))
OUT=target/bench
RAW=$OUT/raw
STARTED=$(date +%s)

# name | body bytes | wrk connections
SCENARIOS=(
  "small 1024 50"
  "large 1048576 8"
)
PATHS=(direct squid ats cuttle)
[[ $ATS == off ]] && PATHS=(direct squid cuttle)

# The second cuttle, for memory-tier hits of objects above the default max-mem-object-size.
CUTTLE_MEM_ARGS=(--max-mem-object-size 32MiB --cache-mem 512MiB)
# Squid: memory cache only (no cache_dir), large enough for every object.
SQUID_CACHE_CONF="cache_mem 512 MB
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

declare -A PART=()
for p in ${ONLY//,/ }; do
  case $p in
    forward | hit | intercept) PART[$p]=1 ;;
    *) die "BENCH_ONLY lists parts among forward, hit, intercept, not '$p'" ;;
  esac
done
want_part() { [[ -n ${PART[$1]:-} ]]; }
want_proxies() { want_part forward || want_part hit; }

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

# apt_install <package>: installs a Debian package (as root or through sudo -n).
apt_install() {
  [[ ${BENCH_NO_INSTALL:-} == 1 ]] && die "$1 not installed (apt-get install $1)"
  log "installing $1"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { as_root apt-get update -qq >/dev/null &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } ||
    die "could not install $1; install it (apt-get install $1) and rerun"
}

command -v wrk >/dev/null 2>&1 || apt_install wrk
if want_proxies && [[ $ATS != off && ! -x $ATS ]]; then
  [[ $ATS == /usr/bin/traffic_server ]] || die "traffic_server not found at $ATS"
  # The package's own service (port 8080) is not used: the bench starts its own instance.
  apt_install trafficserver
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
# Squid and Traffic Server started as root drop privileges and must still write their logs here.
chmod 0777 "$TMP"
PIDS=()
SQUID_SERVICES=()
declare -A PID ADDR ADMIN # per proxy instance: cuttle, cuttle-mem, squid, ats

cleanup() {
  local pid svc kids=()
  # Traffic Server forks a crash logger that outlives it for a moment: end it by its pid too.
  for pid in "${PIDS[@]}"; do
    kids+=($(pgrep -P "$pid" 2>/dev/null || true))
  done
  for pid in "${PIDS[@]}" "${kids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for pid in "${kids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  for svc in "${SQUID_SERVICES[@]}"; do
    rm -f /dev/shm/"$svc"-* 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) until `file` has `<prefix>127.0.0.1:<port>` in it and prints the address.
wait_for_addr() {
  local file=$1 pid=$2 what=$3 prefix=${4:-} addr
  for _ in $(seq 200); do
    addr=$(grep -oE "${prefix}127\\.0\\.0\\.1:[0-9]+" "$file" 2>/dev/null | head -n1 || true)
    if [[ -n $addr ]]; then
      echo "${addr#"$prefix"}"
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

# A port on 127.0.0.1 nobody listens on right now (Squid and Traffic Server cannot take
# port 0; they may still lose a race, and are then retried).
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

# The origin, plain HTTP and TLS 1.3 (its CA certificate in $ORIGIN_CA for the clients).
ORIGIN_CA=$TMP/origin-ca.pem
"$ORIGIN_BIN" 0 --tls "$ORIGIN_CA" >"$TMP/origin.out" 2>&1 &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
ORIGIN=$(wait_for_addr "$TMP/origin.out" "$ORIGIN_PID" "bench_origin" "listening on ")
TLS_ORIGIN=$(wait_for_addr "$TMP/origin.out" "$ORIGIN_PID" "bench_origin (TLS)" "tls listening on ")
wait_ready "$ORIGIN" "" "bench_origin"
log "origin on $ORIGIN, TLS on $TLS_ORIGIN"

# start_cuttle <instance> [cuttle options...]: cuttle on a free port with its admin port on
# another (for the memory tier's size), its access log (stdout) in
# $TMP/<instance>-access.log like Squid's access.log, diagnostics in $TMP/<instance>.err,
# its disk cache in $TMP/<instance>-cache.
start_cuttle() {
  local inst=$1
  shift
  # The origin is on loopback, which cuttle refuses unless --allow-dest lists it.
  CUTTLE_CACHE_DIR=$TMP/$inst-cache "$CUTTLE_BIN" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8 "$@" \
    >"$TMP/$inst-access.log" 2>"$TMP/$inst.err" &
  PID[$inst]=$!
  PIDS+=("${PID[$inst]}")
  ADDR[$inst]=$(wait_for_addr "$TMP/$inst.err" "${PID[$inst]}" "$inst" "addr=")
  ADMIN[$inst]=$(wait_for_addr "$TMP/$inst.err" "${PID[$inst]}" "$inst (admin)" "admin=")
  wait_ready "$ORIGIN" "${ADDR[$inst]}" "$inst"
  echo "cuttle --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8${*:+ $*}" >"$RAW/$inst.cmdline"
  log "$inst on ${ADDR[$inst]} (pid ${PID[$inst]})"
}

# write_squid_conf <instance> <port>
write_squid_conf() {
  local inst=$1 port=$2
  cat >"$TMP/$inst.conf" <<EOF
# Written by bench/run.sh: loopback clients only, memory cache only.
http_port 127.0.0.1:$port
visible_hostname cuttle-bench-squid
workers 1
pid_filename none
coredump_dir none
cache_log $TMP/$inst-cache.log
access_log stdio:$TMP/$inst-access.log
cache_store_log none
# Log query strings too (the TTFB check finds its fresh URLs by them).
strip_query_terms off
logfile_rotate 0
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
$SQUID_CACHE_CONF
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
${BENCH_SQUID_EXTRA:-}
EOF
  chmod 0644 "$TMP/$inst.conf"
}

# start_squid <instance>: Squid on a free port (retried if it loses the port).
start_squid() {
  local inst=$1 svc port pid addr code ok attempt
  svc="cuttlebench$$${inst//[^a-z]/}"
  SQUID_SERVICES+=("$svc")
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    write_squid_conf "$inst" "$port"
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

# Traffic Server: the packaged records.config (Debian's defaults) followed by these lines; a
# later line for the same record wins.
ats_records() {
  local port=$1
  cat <<EOF

# --- appended by bench/run.sh ---
# Loopback only, on a port chosen by the bench (no fixed port).
CONFIG proxy.config.http.server_ports STRING $port:ipv4:ip-in=127.0.0.1
# A forward proxy: absolute-form requests go to the host they name, no remap rules.
CONFIG proxy.config.url_remap.remap_required INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 0
# CONNECT to the bench origin's ports (the default allows 443 only).
CONFIG proxy.config.http.connect_ports STRING 1-65535
# A RAM cache large enough for every test object (the default cutoff is 4 MiB per object).
CONFIG proxy.config.cache.ram_cache.size INT 536870912
CONFIG proxy.config.cache.ram_cache_cutoff INT 33554432
# Flush access-log lines within about a second (default 5 s), for the hit checks.
CONFIG proxy.config.log.max_secs_per_buffer INT 1
CONFIG proxy.config.log.periodic_tasks_interval INT 1
${BENCH_ATS_EXTRA:-}
EOF
}

# start_ats <instance>: Traffic Server run straight from traffic_server (no traffic_manager,
# no systemd) in a private runroot under $TMP/<instance>/: its own config (etc/), runtime
# (run/), log (log/) and cache (cache/, a 256 MiB cache file, as in the packaged
# storage.config) directories. Retried on another port if it cannot listen.
start_ats() {
  local inst=$1 dir=$TMP/$1 port pid addr code ok attempt f
  mkdir -p "$dir"/{etc,run,log,cache,var,share}
  for f in /etc/trafficserver/*.config /etc/trafficserver/*.yaml; do
    [[ -f $f ]] && cp "$f" "$dir/etc/"
  done
  [[ -f /etc/trafficserver/records.config ]] ||
    log "WARNING: no packaged records.config; Traffic Server runs with its built-in defaults"
  ln -sfn /etc/trafficserver/body_factory "$dir/etc/body_factory"
  cp "$dir/etc/records.config" "$dir/records.packaged" 2>/dev/null || : >"$dir/records.packaged"
  echo "$dir/cache 256M" >"$dir/etc/storage.config"
  cat >"$dir/etc/ip_allow.yaml" <<'EOF'
ip_allow:
  - apply: in
    ip_addrs: 127.0.0.1
    action: allow
    methods: ALL
  - apply: in
    ip_addrs: 0/0
    action: deny
EOF
  # The same line format as Squid's native access log (the hit checks read field 4 and 7).
  cat >"$dir/etc/logging.yaml" <<'EOF'
logging:
  formats:
    - name: squid
      format: '%<cqtq> %<ttms> %<chi> %<crc>/%<pssc> %<psql> %<cqhm> %<cquc> %<caun> %<phr>/%<shn> %<psct>'
  logs:
    - filename: access
      format: squid
      mode: ascii
EOF
  cat >"$dir/runroot.yaml" <<EOF
prefix: $dir
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/sbin
sysconfdir: $dir/etc
datadir: $dir/share
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: /usr/lib/trafficserver/modules
localstatedir: $dir/var
runtimedir: $dir/run
logdir: $dir/log
cachedir: $dir/cache
EOF
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    { cat "$dir/records.packaged" && ats_records "$port"; } >"$dir/etc/records.config"
    rm -f "$dir/log/"* "$dir/run/"*
    # As root, Traffic Server switches to its own user (proxy.config.admin.user_id).
    if [[ $(id -u) -eq 0 ]] && id trafficserver >/dev/null 2>&1; then
      chown -R trafficserver: "$dir"
    fi
    "$ATS" --run-root="$dir/runroot.yaml" </dev/null >"$TMP/$inst.out" 2>&1 &
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
      ln -sfn "$dir/log/access.log" "$TMP/$inst-access.log"
      cp "$dir/etc/records.config" "$RAW/$inst.records.config"
      cp "$dir/etc/logging.yaml" "$dir/etc/storage.config" "$dir/etc/ip_allow.yaml" "$RAW/" 2>/dev/null || true
      log "$inst on $addr (pid $pid)"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "$inst did not start on $addr (attempt $attempt):"
    cat "$TMP/$inst.out" "$dir/log/diags.log" >&2 2>/dev/null || true
  done
  die "$inst could not be started"
}

# Hit sizes that cuttle's default settings serve from the disk tier, to be measured again
# as memory-tier hits of cuttle-mem.
MEM_ROWS=()
for bytes in "${HIT_MEM_SIZES[@]}"; do
  for h in "${HIT_SIZES[@]}"; do
    [[ $h == "$bytes" && $bytes -gt $CUTTLE_MEM_OBJECT_MAX ]] && MEM_ROWS+=("$bytes")
  done
done

if want_proxies; then
  # One process per proxy for both parts: cuttle with its default settings (disk tier on),
  # Squid with a memory cache, Traffic Server with a RAM cache over its disk cache.
  start_cuttle cuttle
  start_squid squid
  [[ $ATS != off ]] && start_ats ats
  if want_part hit && [[ ${#MEM_ROWS[@]} -gt 0 ]]; then
    start_cuttle cuttle-mem "${CUTTLE_MEM_ARGS[@]}"
  fi
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

# How long an access log must stay unchanged to count as complete: cuttle and Squid write
# each line when the transaction ends; Traffic Server flushes its log buffers about once a
# second.
log_quiet() {
  case $1 in
    ats*) echo 30 ;; # tenths of a second
    *) echo 1 ;;
  esac
}

# Lines in an instance's access log once it has stopped growing (bounded to about 10 s).
settled_lines() {
  local inst=$1 f=$TMP/$1-access.log quiet a b same=0
  quiet=$(log_quiet "$inst")
  a=$(wc -l <"$f")
  for _ in $(seq 100); do
    sleep 0.1
    b=$(wc -l <"$f")
    if [[ $a == "$b" ]]; then
      same=$((same + 1))
      [[ $same -ge $quiet ]] && break
    else
      same=0
      a=$b
    fi
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
    l0=$(settled_lines "$inst")
    cpu0=$(cpu_seconds "$pid")
  fi
  log "$name ($upath, $conns connections, ${SECONDS_PER_RUN}s): $inst"
  wrk -t "$THREADS" -c "$conns" -d "${SECONDS_PER_RUN}s" "$@" --latency -s "$script" "$target" >"$raw" 2>&1 ||
    log "wrk exited with an error for $name/$inst (see $raw)"
  if [[ -n $pid ]]; then
    cpu1=$(cpu_seconds "$pid")
    l1=$(settled_lines "$inst")
    R[$name.$col.lines]=$((l1 - l0))
    R[$name.$col.codes]=$(log_codes "$alog" $((l0 + 1)) "$l1")
    # Hit share among the lines for the measured URL (Squid also logs a NONE_NONE/000 line,
    # URL error:..., for a connection closed before a request, e.g. by the warmup's end).
    # Traffic Server logs a response the client stopped reading (wrk cuts off the ones in
    # flight when it stops) as ERR_CLIENT_READ_ERROR or ERR_CLIENT_ABORT, without saying
    # whether it was a hit: those lines are left out of the share.
    local hn
    hn=$(sed -n "$((l0 + 1)),${l1}p" "$alog" | awk -v u="http://$ORIGIN$upath" '
      $7 == u && $4 !~ /^ERR_CLIENT_/ { n++; split($4, c, "/"); if (c[1] ~ /^TCP_(MEM_)?HIT(_ABORTED)?$/) h++ }
      END { printf "%d %d", h, n }')
    R[$name.$col.nonhits]=$(awk '{ print $2 - $1 }' <<<"$hn")
    R[$name.$col.hitpct]=$(awk '{ if ($2) printf "%.1f", 100 * $1 / $2; else print "-" }' <<<"$hn")
    if [[ $name != small && $name != large ]]; then
      # For inspection: the lines that are not hits (at most 50), and the last 70 lines
      # (the requests wrk cut off when it stopped).
      sed -n "$((l0 + 1)),${l1}p" "$alog" | awk '$4 !~ /^(TCP_(MEM_)?HIT|ERR_CLIENT_)/' | head -n 50 \
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
    # Proxy CPU time per 1000 requests (milliseconds): cost independent of the machine's
    # load; and its inverse, requests per CPU second (= req/s per core the proxy kept busy).
    R[$name.$col.cpu]=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
    R[$name.$col.cpu_per_kreq]=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$reqs" \
      'BEGIN { if (r > 0) printf "%.1f", (b - a) * 1e6 / r; else print "-" }')
    R[$name.$col.req_per_core]=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$reqs" \
      'BEGIN { if (b > a) printf "%.0f", r / (b - a); else print "-" }')
    R[$name.$col.cores]=$(awk -v a="$cpu0" -v b="$cpu1" -v d="$dur" \
      'BEGIN { printf "%.2f", (b - a) / (d / 1e6) }')
  fi
  if [[ $((errs + non2xx)) -gt 0 ]]; then
    log "WARNING: $name/$inst had $errs socket errors and $non2xx non-2xx responses"
  fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }
now_ns() { date +%s%N; }

# Sets ROUTE to the curl options that send a request through `path` (a proxy instance) or
# directly.
route_opts() {
  if [[ $1 == direct ]]; then
    ROUTE=(--noproxy '*')
  else
    ROUTE=(-x "http://${ADDR[$1]}")
  fi
}

# tls_tunnels <path> <tunnels>: CONNECT_RUNS rounds; in each, <tunnels> concurrent curls
# download TUNNEL_BYTES/<tunnels> bytes each from the origin's TLS port, TLS 1.3 only, the
# client verifying the origin's certificate against the bench CA (through a proxy, curl
# opens a CONNECT tunnel for an https URL). A round's MB/s is all bytes over its wall time;
# the median round is kept. Direct is the same downloads without a proxy.
tls_tunnels() {
  local path=$1 n=$2 each raw=$RAW/tunnel-tls-x$2-$1.txt pid cpu0 t0 t1 i r p ok bytes bad=0
  local pids rates=() key=tunnel$2.$1
  each=$((TUNNEL_BYTES / n))
  route_opts "$path"
  : >"$raw"
  pid=${PID[$path]:-}
  [[ -n $pid ]] && cpu0=$(cpu_seconds "$pid")
  log "TLS tunnels (x$n, $each B each, $CONNECT_RUNS rounds): $path"
  for r in $(seq "$CONNECT_RUNS"); do
    pids=()
    t0=$(now_ns)
    for i in $(seq "$n"); do
      curl -sS --tlsv1.3 --tls-max 1.3 --cacert "$ORIGIN_CA" "${ROUTE[@]}" -o /dev/null \
        -w '%{http_code} %{size_download} %{ssl_verify_result} %{speed_download}\n' \
        "https://$TLS_ORIGIN/bytes/$each" >"$TMP/tunnel.$i" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    t1=$(now_ns)
    for i in $(seq "$n"); do
      { echo -n "round $r: " && cat "$TMP/tunnel.$i"; } >>"$raw"
    done
    # A good download: status 200, every byte, certificate verified (ssl_verify_result 0).
    read -r ok bytes < <(cat "$TMP"/tunnel.* | awk -v e="$each" \
      '$1 == 200 && $2 == e && $3 == 0 { ok++; b += $2 } END { printf "%d %d\n", ok, b }')
    rm -f "$TMP"/tunnel.*
    bad=$((bad + n - ok))
    if [[ $ok == "$n" ]]; then
      rates+=("$(awk -v b="$bytes" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f", b / ((t1 - t0) / 1e9) / 1e6 }')")
    fi
  done
  [[ -n $pid ]] && R[$key.cpu]=$(awk -v a="$cpu0" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.2f", b - a }')
  R[$key.errors]=$bad
  R[$key.mbps]=$(printf '%s\n' "${rates[@]}" | grep . | median)
  if [[ $bad -gt 0 ]]; then
    log "WARNING: $bad TLS tunnel downloads via $path failed, were short or unverified (see $raw)"
  fi
}

# ttfb <path>: TTFB_RUNS sequential GETs, over one kept-alive client connection, for 1 MiB
# objects nobody asked for before (a fresh query string each), so each is a cache miss that
# the proxy fetches and stores. The first request of the connection is not counted (it also
# opens the connection). Median of curl's time_starttransfer, in ms.
ttfb() {
  local path=$1 cfg=$TMP/ttfb-$1.cfg raw=$RAW/ttfb-$1.txt i l0 l1 tag=ttfb-$1-$$
  for i in $(seq 0 "$TTFB_RUNS"); do
    printf 'url = "http://%s/cached/1048576?%s-%d"\noutput = "/dev/null"\n' "$ORIGIN" "$tag" "$i"
  done >"$cfg"
  [[ $path != direct ]] && l0=$(settled_lines "$path")
  log "TTFB of 1 MiB misses (x$TTFB_RUNS): $path"
  route_opts "$path"
  curl -sS "${ROUTE[@]}" -K "$cfg" \
    -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' >"$raw" 2>&1 || true
  R[ttfb.$path.ms]=$(tail -n +2 "$raw" | awk '$1 == 200 && $2 == 1048576 { printf "%.3f\n", $3 * 1000 }' | median)
  R[ttfb.$path.errors]=$(tail -n +2 "$raw" | awk '$1 != 200 || $2 != 1048576 { c++ } END { print c + 0 }')
  if [[ $path != direct ]]; then
    l1=$(settled_lines "$path")
    # The measured requests (not the first) whose log line says miss.
    R[ttfb.$path.misses]=$(sed -n "$((l0 + 1)),${l1}p" "$TMP/$path-access.log" |
      awk -v t="?$tag-" 'i = index($7, t) { k = substr($7, i + length(t)) + 0; if (k >= 1 && $4 ~ /MISS/) c++ }
        END { print c + 0 }')
  fi
}

# Memory-tier bytes of a cuttle instance, from its admin API (MiB).
cuttle_mem_tier_mib() {
  curl -sS -m 5 "http://${ADMIN[$1]}/api/stats" 2>/dev/null |
    awk 'match($0, /"memory":\{[^}]*\}/) { m = substr($0, RSTART, RLENGTH);
      if (match(m, /"bytes":[0-9]+/)) printf "%.1f", substr(m, RSTART + 8, RLENGTH - 8) / 1048576 }'
}

PROXIES=()
for p in "${PATHS[@]}"; do [[ $p != direct ]] && PROXIES+=("$p"); done

if want_proxies; then
  # Memory before any load (after one readiness request each).
  for inst in "${PROXIES[@]}"; do
    R[mem.$inst.idle]=$(mib "${PID[$inst]}" VmRSS)
  done
fi

# ----- forwarding ----------------------------------------------------------------------
if want_part forward; then
  for s in "${SCENARIOS[@]}"; do
    read -r name bytes conns <<<"$s"
    for path in "${PATHS[@]}"; do
      run_wrk "$name" "/bytes/$bytes" "$conns" "$path" "$path"
    done
  done

  # Plain CONNECT tunnel: one curl download of CONNECT_BYTES through `curl -p` (HTTP inside
  # the tunnel), CONNECT_RUNS times; the median speed is kept. Direct is the same download
  # without a proxy.
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

  # TLS 1.3 end to end through the tunnel, one tunnel and TUNNEL_PARALLEL at once.
  for n in 1 "$TUNNEL_PARALLEL"; do
    for path in "${PATHS[@]}"; do
      tls_tunnels "$path" "$n"
    done
  done

  for path in "${PATHS[@]}"; do
    ttfb "$path"
  done
fi

# ----- cache hits ----------------------------------------------------------------------
# The result code cuttle (default settings) logs for a hit of an object of `bytes`: from
# the disk tier above the memory tier's object limit, or from memory once promoted as hot.
cuttle_hit_code() {
  if [[ $1 -gt $CUTTLE_MEM_OBJECT_MAX ]]; then echo "TCP_HIT|TCP_MEM_HIT"; else echo TCP_MEM_HIT; fi
}

# warm <instance> <url path> <expected result-code regex>: one request stores the object,
# then a check request must be logged with an expected code (retried a few times: cuttle
# may answer the first request after a fill from the disk tier while it is still adding the
# object to memory, and Traffic Server's RAM cache admits an object on its second hit).
# Records the outcome in R[warm.<instance>.<bytes>].
warm() {
  local inst=$1 upath=$2 want=$3 alog=$TMP/$1-access.log n code= first
  curl -s -o /dev/null -m 60 -x "http://${ADDR[$inst]}" "http://$ORIGIN$upath" || true
  first=$(settled_lines "$inst")
  first=$(sed -n "${first}p" "$alog" | awk '{ print $4 }')
  for _ in $(seq 10); do
    n=$(wc -l <"$alog")
    curl -s -o /dev/null -m 60 -x "http://${ADDR[$inst]}" "http://$ORIGIN$upath" || true
    for _ in $(seq 300); do
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
    warm cuttle "/cached/$bytes" "$(cuttle_hit_code "$bytes")"
    warm squid "/cached/$bytes" "TCP_MEM_HIT|TCP_HIT"
    [[ $ATS != off ]] && warm ats "/cached/$bytes" "TCP_MEM_HIT"
  done
  for bytes in "${MEM_ROWS[@]}"; do
    warm cuttle-mem "/cached/$bytes" TCP_MEM_HIT
  done
  for inst in "${PROXIES[@]}"; do
    R[mem.$inst.warm]=$(mib "${PID[$inst]}" VmRSS)
  done

  for bytes in "${HIT_SIZES[@]}"; do
    for path in "${PATHS[@]}"; do
      run_wrk "hit-$bytes" "/cached/$bytes" "$HIT_CONNS" "$path" "$path" --timeout "$HIT_TIMEOUT"
    done
  done
  for bytes in "${MEM_ROWS[@]}"; do
    run_wrk "mem-$bytes" "/cached/$bytes" "$HIT_CONNS" cuttle cuttle-mem --timeout "$HIT_TIMEOUT"
  done

  # Every measured request should have been a hit (no origin traffic after warming).
  for name in "${!R[@]}"; do
    [[ $name == hit-*.nonhits || $name == mem-*.nonhits ]] || continue
    if [[ ${R[$name]} != 0 || ${R[${name%.nonhits}.hitpct]} == - ]]; then
      log "WARNING: ${name%.nonhits}: ${R[$name]} requests were not hits during the measured" \
        "run: ${R[${name%.nonhits}.codes]:-}"
    fi
  done
fi

if want_proxies; then
  # Memory after all the load: VmHWM is the peak over the whole run (one process per proxy).
  for inst in "${PROXIES[@]}" cuttle-mem; do
    [[ -n ${PID[$inst]:-} ]] || continue
    R[mem.$inst.hwm]=$(mib "${PID[$inst]}" VmHWM)
    R[mem.$inst.rss]=$(mib "${PID[$inst]}" VmRSS)
    R[mem.$inst.threads]=$(awk '$1 == "Threads:" { print $2 }' "/proc/${PID[$inst]}/status")
  done
  # cuttle's peak without what its memory tier holds at the end (the tier only grows during
  # the run: nothing is evicted at these sizes).
  R[mem.cuttle.tier]=$(cuttle_mem_tier_mib cuttle)
  R[mem.cuttle.hwm_net]=$(awk -v h="${R[mem.cuttle.hwm]}" -v t="${R[mem.cuttle.tier]:-}" \
    'BEGIN { if (t == "") print "-"; else printf "%.1f", h - t }')
fi

# ----- interception (bench/tls.sh) -----------------------------------------------------
if want_part intercept; then
  log "interception: bench/tls.sh"
  if BENCH_NO_BUILD=1 bench/tls.sh >"$RAW/tls.txt" 2>"$RAW/tls.stderr.txt"; then
    while read -r line; do
      size=$(field size " $line")
      for k in tunnel_rps mitm_rps tunnel_mbps mitm_mbps tunnel_cpu mitm_cpu; do
        R[tls.$size.$k]=$(field "$k" " $line")
      done
    done < <(sed -n 's/^TLSBENCH //p' "$RAW/tls.txt")
    sed -n '/^| object/,/^$/p' "$RAW/tls.txt" >"$TMP/tls-table.md"
  else
    log "WARNING: bench/tls.sh failed (see $RAW/tls.stderr.txt)"
  fi
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
  if [[ -f $TMP/$inst/log/diags.log ]]; then cp "$TMP/$inst/log/diags.log" "$RAW/$inst-diags.log" 2>/dev/null || true; fi
done

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "-" || b == "-" || a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

ROWS=()
HROWS=()
MROWS=()
SROWS=()
# A table row: label, then direct, squid, ats, cuttle values, then which way is better.
mkrow() {
  echo "$1|$2|$3|$4|$5|$(ratio "$5" "$3")|$(ratio "$5" "$4")|$(ratio "$5" "$2")|$6"
}
row() { ROWS+=("$(mkrow "$@")"); }
hrow() { HROWS+=("$(mkrow "$@")"); }
# wrk rows of one scenario: <row function> <label> <scenario key> [cuttle column key]
wrk_rows() {
  local f=$1 label=$2 n=$3 c=${4:-$3.cuttle}
  $f "$label req/s" "$(get "$n.direct.rps")" "$(get "$n.squid.rps")" "$(get "$n.ats.rps")" "$(get "$c.rps")" higher
  $f "$label MB/s" "$(get "$n.direct.mbps")" "$(get "$n.squid.mbps")" "$(get "$n.ats.mbps")" "$(get "$c.mbps")" higher
  $f "$label p50 ms" "$(get "$n.direct.p50")" "$(get "$n.squid.p50")" "$(get "$n.ats.p50")" "$(get "$c.p50")" lower
  $f "$label p99 ms" "$(get "$n.direct.p99")" "$(get "$n.squid.p99")" "$(get "$n.ats.p99")" "$(get "$c.p99")" lower
  $f "$label proxy CPU ms/1k req" "-" "$(get "$n.squid.cpu_per_kreq")" "$(get "$n.ats.cpu_per_kreq")" "$(get "$c.cpu_per_kreq")" lower
  $f "$label proxy cores used" "-" "$(get "$n.squid.cores")" "$(get "$n.ats.cores")" "$(get "$c.cores")" lower
  $f "$label errors" "$(get "$n.direct.errors")" "$(get "$n.squid.errors")" "$(get "$n.ats.errors")" "$(get "$c.errors")" lower
}
# A row of per-path results of one key: <row function> <label> <key prefix> <suffix> <better>
path_row() {
  $1 "$2" "$(get "$3.direct.$4")" "$(get "$3.squid.$4")" "$(get "$3.ats.$4")" "$(get "$3.cuttle.$4")" "$5"
}
if want_part forward; then
  for s in "${SCENARIOS[@]}"; do
    read -r name bytes conns <<<"$s"
    wrk_rows row "$name ($bytes B, c=$conns)" "$name"
  done
  path_row row "CONNECT tunnel, plain HTTP inside ($CONNECT_BYTES B, 1 stream) MB/s" connect mbps higher
  path_row row "CONNECT tunnel, plain HTTP inside, proxy CPU s (all runs)" connect cpu lower
  path_row row "CONNECT tunnel, plain HTTP inside, errors" connect errors lower
  for n in 1 "$TUNNEL_PARALLEL"; do
    path_row row "CONNECT tunnel, TLS 1.3 end to end, x$n ($((TUNNEL_BYTES / n)) B each) MB/s" "tunnel$n" mbps higher
    path_row row "CONNECT tunnel, TLS 1.3 end to end, x$n, proxy CPU s (all rounds)" "tunnel$n" cpu lower
    path_row row "CONNECT tunnel, TLS 1.3 end to end, x$n, errors" "tunnel$n" errors lower
  done
  path_row row "TTFB of a 1 MiB miss, median ms" ttfb ms lower
  path_row row "TTFB of a 1 MiB miss, measured requests logged as misses (of $TTFB_RUNS)" ttfb misses higher
  path_row row "TTFB of a 1 MiB miss, errors" ttfb errors lower
fi
if want_part hit; then
  for bytes in "${HIT_SIZES[@]}"; do
    n=hit-$bytes
    tier=""
    [[ $bytes -gt $CUTTLE_MEM_OBJECT_MAX ]] && tier=", cuttle: disk, then memory when hot"
    label="hit $bytes B (c=$HIT_CONNS$tier)"
    wrk_rows hrow "$label" "$n"
    path_row hrow "$label hits % of logged" "$n" hitpct higher
  done
  for bytes in "${MEM_ROWS[@]}"; do
    # cuttle-mem's memory-tier hit against the same direct, Squid and ATS runs.
    label="hit $bytes B (c=$HIT_CONNS), cuttle-mem from memory"
    wrk_rows hrow "$label" "hit-$bytes" "mem-$bytes.cuttle"
    hrow "$label hits % of logged" "-" "$(get "hit-$bytes.squid.hitpct")" "$(get "hit-$bytes.ats.hitpct")" "$(get "mem-$bytes.cuttle.hitpct")" higher
  done
fi
if want_proxies; then
  mrow() { MROWS+=("$(mkrow "$@")"); }
  mrow "VmRSS MiB (idle, before load)" "-" "$(get mem.squid.idle)" "$(get mem.ats.idle)" "$(get mem.cuttle.idle)" lower
  want_part hit && mrow "VmRSS MiB (warm: every hit object cached)" "-" "$(get mem.squid.warm)" "$(get mem.ats.warm)" "$(get mem.cuttle.warm)" lower
  mrow "VmHWM MiB (peak over the whole run)" "-" "$(get mem.squid.hwm)" "$(get mem.ats.hwm)" "$(get mem.cuttle.hwm)" lower
  mrow "VmRSS MiB (after all load)" "-" "$(get mem.squid.rss)" "$(get mem.ats.rss)" "$(get mem.cuttle.rss)" lower
  mrow "threads after load" "-" "$(get mem.squid.threads)" "$(get mem.ats.threads)" "$(get mem.cuttle.threads)" lower
  if [[ -n ${PID[cuttle-mem]:-} ]]; then
    mrow "cuttle-mem VmHWM MiB (memory-tier instance; other columns: the main instances)" "-" "$(get mem.squid.hwm)" "$(get mem.ats.hwm)" "$(get mem.cuttle-mem.hwm)" lower
  fi
fi

# The issue-11 summary: each figure, the ratio the goal is stated in, the goal, and whether
# this run met it ("-" when a figure is missing).
# srow <figure> <direct> <squid> <ats> <cuttle> <shown ratio> <goal text> <met: yes/no/->
srow() { SROWS+=("$1|$2|$3|$4|$5|$6|$7|$8"); }
met() { # <value> <op> <threshold>
  awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    if (v == "-" || v == "") { print "-"; exit }
    ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0); print ok ? "yes" : "no" }'
}
# times <ratio> <what>: "1.23× ATS", or "-" without a ratio.
times() { if [[ $1 == - ]]; then echo -; else echo "$1× $2"; fi; }
has_size() { local h; for h in "${HIT_SIZES[@]}"; do [[ $h == "$1" ]] && return 0; done; return 1; }
if want_part hit; then
  for spec in "1024 rps 1.4 hit 1 KiB, req/s" "65536 mbps 1.2 hit 64 KiB, MB/s" \
    "1048576 mbps 1.1 hit 1 MiB, MB/s" "16777216 mbps 1.0 hit 16 MiB, MB/s (default tiers: disk, promoted when hot)"; do
    read -r size k goal label <<<"$spec"
    has_size "$size" || continue
    n=hit-$size
    x=$(ratio "$(get "$n.cuttle.$k")" "$(get "$n.ats.$k")")
    srow "$label" "$(get "$n.direct.$k")" "$(get "$n.squid.$k")" "$(get "$n.ats.$k")" "$(get "$n.cuttle.$k")" \
      "$(times "$x" ATS)" "≥ ${goal}× ATS" "$(met "$x" '>=' "$goal")"
  done
fi
if want_part forward; then
  for n in 1 "$TUNNEL_PARALLEL"; do
    x=$(ratio "$(get "tunnel$n.cuttle.mbps")" "$(get "tunnel$n.direct.mbps")")
    srow "CONNECT tunnel ×$n (TLS 1.3), MB/s" "$(get "tunnel$n.direct.mbps")" "$(get "tunnel$n.squid.mbps")" \
      "$(get "tunnel$n.ats.mbps")" "$(get "tunnel$n.cuttle.mbps")" "$(times "$x" direct)" "≥ 0.95× direct" "$(met "$x" '>=' 0.95)"
  done
  d=$(awk -v c="$(get ttfb.cuttle.ms)" -v d="$(get ttfb.direct.ms)" \
    'BEGIN { if (c == "-" || d == "-") print "-"; else printf "%+.3f", c - d }')
  srow "TTFB of a 1 MiB miss, ms" "$(get ttfb.direct.ms)" "$(get ttfb.squid.ms)" "$(get ttfb.ats.ms)" \
    "$(get ttfb.cuttle.ms)" "$([[ $d == - ]] && echo - || echo "$d ms vs direct")" "≤ direct + 0.15 ms" "$(met "$d" '<=' 0.15)"
fi
if want_proxies; then
  srow "peak RSS over the whole run, MiB" "-" "$(get mem.squid.hwm)" "$(get mem.ats.hwm)" \
    "$(get mem.cuttle.hwm) ($(get mem.cuttle.hwm_net) without the $(get mem.cuttle.tier) MiB memory tier)" \
    "$(times "$(ratio "$(get mem.cuttle.hwm)" "$(get mem.ats.hwm)")" ATS)" "≤ 40 (memory tier contents excluded)" \
    "$(met "$(get mem.cuttle.hwm_net)" '<=' 40)"
fi
if want_part hit && has_size 1024; then
  x=$(ratio "$(get hit-1024.cuttle.req_per_core)" "$(get hit-1024.ats.req_per_core)")
  srow "proxy CPU per 1 KiB hit: req/s per core used" "-" "$(get hit-1024.squid.req_per_core)" \
    "$(get hit-1024.ats.req_per_core)" "$(get hit-1024.cuttle.req_per_core)" "$(times "$x" ATS)" "≥ 2× ATS" "$(met "$x" '>=' 2)"
fi
if want_part intercept; then
  for spec in "65536 rps intercepted HTTPS hit 64 KiB, req/s" "16777216 mbps intercepted HTTPS hit 16 MiB, MB/s"; do
    read -r size k label <<<"$spec"
    t=$(get "tls.$size.tunnel_$k")
    m=$(get "tls.$size.mitm_$k")
    srow "$label (cuttle column; CONNECT tunnel through cuttle to the same origin: $t)" "-" "-" "-" "$m" \
      "$(times "$(ratio "$m" "$t")" tunnel)" "-" "-"
  done
fi

HEADER="scenario|direct|squid|ats|cuttle|cuttle/squid|cuttle/ats|cuttle/direct|better"
SHEADER="figure|direct|squid|ats|cuttle|cuttle's ratio|goal|met"

print_table() { # header rows...
  local h=$1
  shift
  { echo "$h" && printf '%s\n' "$@"; } | column -t -s '|'
}
# Plain-text tables on stdout.
first=1
for t in ROWS HROWS MROWS SROWS; do
  declare -n arr=$t
  [[ ${#arr[@]} -gt 0 ]] || continue
  [[ -z $first ]] && echo
  first=
  case $t in
    ROWS) print_table "$HEADER" "${arr[@]}" ;;
    HROWS) print_table "${HEADER/scenario/cache hit}" "${arr[@]}" ;;
    MROWS) print_table "${HEADER/scenario/memory}" "${arr[@]}" ;;
    SROWS) print_table "$SHEADER" "${arr[@]}" ;;
  esac
  unset -n arr
done
if [[ -f $TMP/tls-table.md ]]; then
  echo
  cat "$TMP/tls-table.md"
fi

SQUID_VERSION=$("$SQUID" -v | head -n1)
ATS_VERSION=-
if [[ $ATS != off ]]; then
  ATS_VERSION="$("$ATS" -V 2>&1 | grep -m1 -o 'Traffic Server [0-9.]*' || echo 'Traffic Server ?')"
  ATS_VERSION+=" (package $(dpkg-query -W -f '${Version}' trafficserver 2>/dev/null || echo '?'))"
fi
WRK_VERSION=$(wrk -v 2>&1 | head -n1 || true)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
ELAPSED=$(($(date +%s) - STARTED))

md_table() { # header, rows...
  local h=$1 r cols
  shift
  echo "| ${h//|/ | } |"
  cols=$(awk -F'|' '{ s = "|---|"; for (i = 2; i < NF; i++) s = s "---:|"; print s "---|" }' <<<"$h")
  echo "$cols"
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
  echo "- $SQUID_VERSION (workers 1, memory cache, access log to a file); $ATS_VERSION" \
    "(traffic_server alone, packaged records.config plus the bench's lines, RAM cache 512 MiB," \
    "objects up to 32 MiB); $WRK_VERSION"
  echo "- wrk: ${THREADS} threads, ${SECONDS_PER_RUN}s per run after a ${WARMUP}s warmup;" \
    "absolute-form requests through the proxies"
  echo "- parts: ${ONLY}"
  echo
  echo "Ratios are cuttle divided by the other column; \`better\` says which direction is good."
  echo "MB/s is 10^6 bytes per second of response data (headers included for wrk)."
  echo "Client, origin and proxy share the same CPUs: numbers are machine-dependent."
  if [[ ${#SROWS[@]} -gt 0 ]]; then
    echo
    echo "## Issue 11 figures"
    echo
    echo "cuttle with its default settings (disk tier on); hits against Traffic Server, tunnels" \
      "and TTFB against direct. \`met\` compares this run's figure with the goal."
    echo
    md_table "$SHEADER" "${SROWS[@]}"
  fi
  if want_part forward; then
    echo
    echo "## Forwarding"
    echo
    echo "- origin: \`/bytes/<n>\`, \`Cache-Control: no-store\`; every proxy as configured for" \
      "the whole run (cuttle: \`$(cat "$RAW/cuttle.cmdline")\`)"
    echo "- CONNECT, plain: curl -p, $CONNECT_RUNS downloads of $CONNECT_BYTES B per path, median"
    echo "- CONNECT, TLS: curl --tlsv1.3 --tls-max 1.3 --cacert <bench CA>, https URL through the" \
      "proxy; $CONNECT_RUNS rounds of 1 and $TUNNEL_PARALLEL concurrent downloads totalling" \
      "$TUNNEL_BYTES B; all bytes over the round's wall time, median round"
    echo "- TTFB: $TTFB_RUNS sequential GETs of fresh 1 MiB \`/cached/\` URLs over one" \
      "kept-alive connection (curl time_starttransfer, median)"
    echo
    md_table "$HEADER" "${ROWS[@]}"
  fi
  if want_part hit; then
    echo
    echo "## Cache hits"
    echo
    echo "- origin: \`/cached/<n>\`, \`Cache-Control: max-age=3600\` and an ETag; wrk with" \
      "$HIT_CONNS connections and \`--timeout $HIT_TIMEOUT\`"
    echo "- cuttle: default settings; objects above 8 MiB (max-mem-object-size) are disk-tier hits until promoted to memory as hot (found on disk a second time; up to 4× max-mem-object-size)"
    if [[ -n ${PID[cuttle-mem]:-} ]]; then
      echo "- cuttle-mem: \`$(cat "$RAW/cuttle-mem.cmdline")\` (memory-tier hits);" \
        "its direct, squid and ats columns repeat the main runs"
    fi
    echo "- Squid: memory cache only, no cache_dir: $(paste -sd';' <<<"$SQUID_CACHE_CONF" | sed 's/;/; /g')"
    echo "- Traffic Server: RAM cache 512 MiB with a 32 MiB object cutoff over a 256 MiB cache file"
    warmed=()
    for bytes in "${HIT_SIZES[@]}"; do
      for inst in "${PROXIES[@]}"; do
        warmed+=("$inst $bytes: $(get "warm.$inst.$bytes")")
      done
    done
    for bytes in "${MEM_ROWS[@]}"; do
      warmed+=("cuttle-mem $bytes: $(get "warm.cuttle-mem.$bytes")")
    done
    echo "- warming, result code of the filling request then of the check request:" \
      "$(printf '%s; ' "${warmed[@]}" | sed 's/; $//')"
    echo "- hits % of logged: among the access-log lines for the measured URL written during" \
      "the measured run, the share whose result code is TCP_MEM_HIT or TCP_HIT (with or" \
      "without _ABORTED); the lines also count the responses wrk cut off when it stopped," \
      "except Traffic Server's ERR_CLIENT_* lines for them, which do not say whether it was a hit"
    echo
    md_table "${HEADER/scenario/cache hit}" "${HROWS[@]}"
    echo
    echo "Access-log result codes during each measured run (lines logged; wrk requests):"
    echo
    for bytes in "${HIT_SIZES[@]}"; do
      for col in "${PROXIES[@]}"; do
        echo "- hit $bytes B, $col: $(get "hit-$bytes.$col.codes")" \
          "($(get "hit-$bytes.$col.lines") lines; $(get "hit-$bytes.$col.requests") requests)"
      done
    done
    for bytes in "${MEM_ROWS[@]}"; do
      echo "- hit $bytes B, cuttle-mem: $(get "mem-$bytes.cuttle.codes")" \
        "($(get "mem-$bytes.cuttle.lines") lines; $(get "mem-$bytes.cuttle.requests") requests)"
    done
  fi
  if want_proxies; then
    echo
    echo "## Memory"
    echo
    echo "One process per proxy served every forward and hit run, so VmHWM is its peak over the" \
      "whole run. cuttle's memory tier held $(get mem.cuttle.tier) MiB at the end (admin API)."
    echo
    md_table "${HEADER/scenario/memory}" "${MROWS[@]}"
  fi
  if [[ -f $TMP/tls-table.md ]]; then
    echo
    echo "## TLS interception (bench/tls.sh)"
    echo
    cat "$TMP/tls-table.md"
  fi
} >"$OUT/results.md"

log "wrote $OUT/results.md (raw outputs in $RAW/); ${ELAPSED}s"
