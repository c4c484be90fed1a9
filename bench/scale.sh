#!/usr/bin/env bash
# Scaling benchmark (issue 11, "a second table"): how cuttle's figures change
#   - with the number of concurrent connections (64 -> 512 -> 4096): 1 KiB cache hits (wrk)
#     and CONNECT tunnels carrying 1 KiB requests (examples/bench_tunnels.rs), each next to
#     the same load sent straight to the origin;
#   - with the number of small entries in the cache (10k -> 100k -> 1M): hit latency p99
#     over random keys, RSS per entry (after the fill, and after a restart, when only the
#     disk tier's index is in memory), and the disk tier's index rebuild time at startup.
# Each step is compared with the one before: the table says where a figure grows worse than
# linearly with the load. cuttle runs with its default settings (disk tier on). Loopback only;
# every run is bounded in time. Writes target/bench/scale.md (raw outputs in
# target/bench/scale-raw/). See bench/README.md, "Scaling".
#
# Environment (all optional):
#   SCALE_CONNS          connection counts (default "64 512 4096")
#   SCALE_ENTRIES        cache sizes in entries (default "10000 100000 1000000")
#   SCALE_ENTRY_BYTES    body size of each small entry (default 256)
#   SCALE_SECONDS        length of each measured run (default 10)
#   SCALE_WARMUP         unrecorded run before each measured connection run (default 2)
#   SCALE_FILL_SECONDS   longest time a cache fill may take; a fill cut short is reported
#                        with the entries it reached (default 600)
#   SCALE_FILL_CONNS     connections filling the cache (default 32)
#   SCALE_LOOKUP_CONNS   connections of the random-key lookup runs (default 8)
#   SCALE_ONLY           conns | entries: run only that part
#   SCALE_CUTTLE_BIN     the cuttle binary to measure (default target/release/cuttle)
#   BENCH_NO_BUILD=1     use the existing release binaries
#   BENCH_NO_INSTALL=1   never apt-get install a missing wrk
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r -a CONNS <<<"${SCALE_CONNS:-64 512 4096}"
read -r -a ENTRIES <<<"${SCALE_ENTRIES:-10000 100000 1000000}"
ENTRY_BYTES=${SCALE_ENTRY_BYTES:-256}
SECS=${SCALE_SECONDS:-10}
WARMUP=${SCALE_WARMUP:-2}
FILL_SECS=${SCALE_FILL_SECONDS:-600}
FILL_CONNS=${SCALE_FILL_CONNS:-32}
LOOKUP_CONNS=${SCALE_LOOKUP_CONNS:-8}
ONLY=${SCALE_ONLY:-}
OUT=target/bench
RAW=$OUT/scale-raw
STARTED=$(date +%s)

log() { echo "scale [$(($(date +%s) - STARTED))s]: $*" >&2; }
die() {
  log "$*"
  exit 1
}
case $ONLY in
  "" | conns | entries) ;;
  *) die "SCALE_ONLY must be conns or entries (or unset), not '$ONLY'" ;;
esac
want() { [[ -z $ONLY || $ONLY == "$1" ]]; }
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

if ! command -v wrk >/dev/null 2>&1; then
  [[ ${BENCH_NO_INSTALL:-} == 1 ]] && die "wrk not found (apt-get install wrk)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
  else
    sudo -n apt-get install -y -qq wrk >/dev/null
  fi || die "could not install wrk"
fi
command -v curl >/dev/null 2>&1 || die "curl not found"

# Every connection costs the client, cuttle (twice, for the upstream side) and the origin a
# file descriptor.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAXC=0
for c in "${CONNS[@]}"; do [[ $c -gt $MAXC ]] && MAXC=$c; done
if want conns && [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $((2 * MAXC + 512)) ]]; then
  die "ulimit -n is $(ulimit -n) (hard limit $(ulimit -Hn)); $MAXC connections need $((2 * MAXC + 512))"
fi

if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  log "building (release)"
  cargo build --release --quiet --bin cuttle --example bench_origin --example bench_tunnels
fi
CUTTLE_BIN=${SCALE_CUTTLE_BIN:-target/release/cuttle}
ORIGIN_BIN=target/release/examples/bench_origin
TUNNELS_BIN=target/release/examples/bench_tunnels
for b in "$CUTTLE_BIN" "$ORIGIN_BIN" "$TUNNELS_BIN"; do
  [[ -x $b ]] || die "$b missing (run without BENCH_NO_BUILD)"
done

rm -rf "$RAW"
mkdir -p "$RAW"
TMP=$(mktemp -d /tmp/cuttle-scale.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) until `file` has `<prefix>127.0.0.1:<port>` in it and prints the address.
wait_for_addr() {
  local file=$1 pid=$2 prefix=$3 addr
  for _ in $(seq 600); do
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

"$ORIGIN_BIN" 0 >"$TMP/origin.out" 2>&1 &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
ORIGIN=$(wait_for_addr "$TMP/origin.out" "$ORIGIN_PID" "listening on ")
log "origin on $ORIGIN"

# start_cuttle <name> <cache dir> [options...]: sets CPID, CADDR, CADMIN; stderr in
# $TMP/<name>.err, the access log in $TMP/<name>.log. The wall-clock start is kept in CSTART
# (ns). Every connection of the bench comes from 127.0.0.1, so the per-client connection
# limit (default 1000) is raised above the largest count: the runs measure the load, not
# that limit.
start_cuttle() {
  local name=$1 dir=$2
  shift 2
  local max_conns=0 c
  for c in "${CONNS[@]}"; do ((c > max_conns)) && max_conns=$c; done
  CSTART=$(date +%s%N)
  CUTTLE_CACHE_DIR=$dir "$CUTTLE_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8 \
    --max-connections-per-client $((max_conns + 512)) "$@" \
    >"$TMP/$name.log" 2>"$TMP/$name.err" &
  CPID=$!
  PIDS+=("$CPID")
  CADDR=$(wait_for_addr "$TMP/$name.err" "$CPID" "addr=")
  CADMIN=$(wait_for_addr "$TMP/$name.err" "$CPID" "admin=")
}

stop_cuttle() {
  kill "$CPID" 2>/dev/null || true
  wait "$CPID" 2>/dev/null || true
}

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
field() { sed -n "s/.*[[:space:]]$1=\\([^[:space:]]*\\).*/\\1/p" <<<" $2"; }
stats() { curl -sS -m 10 "http://$CADMIN/api/stats"; }
# stat_num <json> <tier> <field>: a number from the cache part of /api/stats.
stat_num() {
  awk -v t="\"$2\":" -v f="\"$3\":" '{
    i = index($0, t); if (!i) exit; s = substr($0, i); j = index(s, "}"); s = substr(s, 1, j);
    k = index(s, f); if (!k) exit; s = substr(s, k + length(f)); sub(/[^0-9].*/, "", s); print s }' <<<"$1"
}

# wrk's summary line, from a script that also sets the request.
WRK_DONE='
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end'

# wrk_line <raw file> -> "rps p50_ms p99_ms errors"
wrk_summary() {
  local line
  line=$(grep '^BENCH ' "$1" || true)
  [[ -n $line ]] || { echo "- - - -"; return; }
  awk -v r="$(field requests "$line")" -v d="$(field duration_us "$line")" \
    -v a="$(field p50_us "$line")" -v b="$(field p99_us "$line")" \
    -v e="$(field errors "$line")" -v n="$(field non2xx "$line")" \
    'BEGIN { printf "%.0f %.3f %.3f %d\n", r / (d / 1e6), a / 1000, b / 1000, e + n }'
}

declare -A R

# growth <previous value> <value> <previous load> <load>: how the figure grew against the
# load ("x2.1 for x8"), and "WORSE than linear" when it grew more than the load did (with a
# 10% margin for noise).
growth() {
  awk -v a="$1" -v b="$2" -v la="$3" -v lb="$4" 'BEGIN {
    if (a == "" || b == "" || a == "-" || b == "-" || a + 0 <= 0) { print "-"; exit }
    g = b / a; l = lb / la
    printf "x%.2f for x%g load%s", g, l, (g > 1.1 * l ? ": WORSE than linear" : "") }'
}

# ----- connections ---------------------------------------------------------------------
if want conns; then
  start_cuttle conns "$TMP/conns-cache"
  log "cuttle on $CADDR (pid $CPID)"
  HIT=/cached/1024
  for _ in 1 2 3; do curl -s -o /dev/null -x "http://$CADDR" "http://$ORIGIN$HIT"; done
  for path in direct cuttle; do
    if [[ $path == direct ]]; then
      printf 'wrk.path = "%s"\n%s\n' "$HIT" "$WRK_DONE" >"$TMP/hit-$path.lua"
      target=http://$ORIGIN
    else
      printf 'wrk.path = "http://%s%s"\nwrk.headers["Host"] = "%s"\n%s\n' "$ORIGIN" "$HIT" "$ORIGIN" "$WRK_DONE" >"$TMP/hit-$path.lua"
      target=http://$CADDR
    fi
    for c in "${CONNS[@]}"; do
      [[ $WARMUP != 0 ]] && wrk -t 2 -c "$c" -d "${WARMUP}s" --timeout 30s -s "$TMP/hit-$path.lua" "$target" >/dev/null 2>&1 || true
      [[ $path == cuttle ]] && cpu0=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$CPID/stat")
      log "1 KiB hits, $c connections: $path"
      wrk -t 2 -c "$c" -d "${SECS}s" --timeout 30s --latency -s "$TMP/hit-$path.lua" "$target" \
        >"$RAW/hit-$path-c$c.txt" 2>&1 || true
      read -r "R[hit.$path.$c.rps]" "R[hit.$path.$c.p50]" "R[hit.$path.$c.p99]" "R[hit.$path.$c.err]" \
        < <(wrk_summary "$RAW/hit-$path-c$c.txt")
      if [[ $path == cuttle ]]; then
        R[hit.cuttle.$c.rss]=$(awk -v k="$(rss_kb "$CPID")" 'BEGIN { printf "%.1f", k / 1024 }')
        cpu1=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$CPID/stat")
        R[hit.cuttle.$c.cores]=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$(getconf CLK_TCK)" -v s="$SECS" \
          'BEGIN { printf "%.2f", (b - a) / t / s }')
      fi
    done
  done
  for path in direct cuttle; do
    for c in "${CONNS[@]}"; do
      [[ $WARMUP != 0 ]] && if [[ $path == direct ]]; then
        "$TUNNELS_BIN" --direct --target "$ORIGIN" --conns "$c" --seconds "$WARMUP" >/dev/null 2>&1 || true
      else
        "$TUNNELS_BIN" --proxy "$CADDR" --target "$ORIGIN" --conns "$c" --seconds "$WARMUP" >/dev/null 2>&1 || true
      fi
      log "tunnels carrying 1 KiB requests, $c tunnels: $path"
      if [[ $path == direct ]]; then
        "$TUNNELS_BIN" --direct --target "$ORIGIN" --path /bytes/1024 --conns "$c" --seconds "$SECS" \
          >"$RAW/tunnel-$path-c$c.txt" 2>&1 || true
      else
        "$TUNNELS_BIN" --proxy "$CADDR" --target "$ORIGIN" --path /bytes/1024 --conns "$c" --seconds "$SECS" \
          >"$RAW/tunnel-$path-c$c.txt" 2>&1 || true
      fi
      line=$(grep '^BENCH ' "$RAW/tunnel-$path-c$c.txt" || true)
      if [[ -n $line ]]; then
        R[tun.$path.$c.rps]=$(awk -v r="$(field requests "$line")" -v d="$(field duration_us "$line")" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
        R[tun.$path.$c.p50]=$(awk -v v="$(field p50_us "$line")" 'BEGIN { printf "%.3f", v / 1000 }')
        R[tun.$path.$c.p99]=$(awk -v v="$(field p99_us "$line")" 'BEGIN { printf "%.3f", v / 1000 }')
        R[tun.$path.$c.err]=$(field errors "$line")
        R[tun.$path.$c.open]=$(field established "$line")
      fi
      if [[ $path == cuttle ]]; then
        R[tun.cuttle.$c.rss]=$(awk -v k="$(rss_kb "$CPID")" 'BEGIN { printf "%.1f", k / 1024 }')
      fi
    done
  done
  R[conns.hwm]=$(awk '$1 == "VmHWM:" { printf "%.1f", $2 / 1024 }' "/proc/$CPID/status")
  stop_cuttle
fi

# ----- entries -------------------------------------------------------------------------
# Each size gets a fresh cuttle and cache directory: the fill requests N distinct URLs
# /cached/<ENTRY_BYTES>?k=<i> once each (wrk threads share the key range and stop when it is
# done), then random keys are looked up, then cuttle restarts on the same directory.
FILL_LUA='
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  n, N, T, base = 0, tonumber(args[1]), tonumber(args[2]), args[3]
end
function request()
  local k = id + n * T
  n = n + 1
  if k >= N then
    -- Done: stop this thread; what is still sent meanwhile is a hit on an early key.
    wrk.thread:stop()
    k = k % N
  end
  return wrk.format("GET", base .. k)
end'
LOOKUP_LUA='
function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end
function init(args)
  N, base = tonumber(args[1]), args[2]
  math.randomseed(seed)
end
function request()
  return wrk.format("GET", base .. math.random(0, N - 1))
end'

if want entries; then
  for n in "${ENTRIES[@]}"; do
    dir=$TMP/entries-cache
    rm -rf "$dir"
    # The disk tier holds one entry per 32 KiB of --cache-size: at least the default 10 GiB,
    # more when the step has more entries than that allows (1M entries: 39 GiB of bound, about
    # 4 GB on disk for 256-byte bodies).
    size_gib=$(((n * 32 * 5 / 4 + 1048575) / 1048576))
    ((size_gib < 10)) && size_gib=10
    CACHE_SIZE_ARGS=(--cache-size "${size_gib}GiB")
    start_cuttle "entries-$n" "$dir" "${CACHE_SIZE_ARGS[@]}"
    # Readiness and a first request (so the idle RSS includes the first connection's state).
    for _ in $(seq 100); do
      curl -s -o /dev/null -m 2 -x "http://$CADDR" "http://$ORIGIN/bytes/1" && break
      sleep 0.05
    done
    rss0=$(rss_kb "$CPID")
    base="http://$ORIGIN/cached/$ENTRY_BYTES?k="
    printf '%s\n%s\n' "$FILL_LUA" "$WRK_DONE" >"$TMP/fill.lua"
    log "filling $n entries (at most ${FILL_SECS}s)"
    t0=$(date +%s%N)
    l0=$(wc -l <"$TMP/entries-$n.log")
    wrk -t 2 -c "$FILL_CONNS" -d "${FILL_SECS}s" --timeout 30s -s "$TMP/fill.lua" "http://$CADDR" \
      -H "Host: $ORIGIN" -- "$n" 2 "$base" >"$RAW/fill-$n.txt" 2>&1 &
    wrk_pid=$!
    # wrk waits out its -d even when every thread has stopped: once the access log has a line
    # per key and stops growing (the threads are done), SIGINT makes it finish at once.
    prev=-1
    t1=
    while kill -0 "$wrk_pid" 2>/dev/null; do
      sleep 0.2
      lines=$(($(wc -l <"$TMP/entries-$n.log") - l0))
      [[ $lines -ge $n && -z $t1 ]] && t1=$(date +%s%N)
      if [[ $lines -ge $n && $lines == "$prev" ]]; then
        kill -INT "$wrk_pid" 2>/dev/null || true
        break
      fi
      prev=$lines
    done
    wait "$wrk_pid" 2>/dev/null || true
    [[ -n $t1 ]] || t1=$(date +%s%N)
    sleep 1
    s=$(stats)
    echo "$s" >"$RAW/stats-after-fill-$n.json"
    mem_objects=$(stat_num "$s" memory objects)
    mem_bytes=$(stat_num "$s" memory bytes)
    disk_objects=$(stat_num "$s" disk objects)
    rss1=$(rss_kb "$CPID")
    R[ent.$n.fill_s]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    R[ent.$n.disk]=${disk_objects:-0}
    R[ent.$n.mem]=${mem_objects:-0}
    R[ent.$n.rss_mib]=$(awk -v k="$rss1" 'BEGIN { printf "%.1f", k / 1024 }')
    R[ent.$n.rss_per]=$(awk -v a="$rss0" -v b="$rss1" -v e="${disk_objects:-0}" \
      'BEGIN { if (e > 0) printf "%.0f", (b - a) * 1024 / e; else print "-" }')
    R[ent.$n.mem_per]=$(awk -v b="${mem_bytes:-0}" -v e="${mem_objects:-0}" \
      'BEGIN { if (e > 0) printf "%.0f", b / e; else print "-" }')
    if [[ ${disk_objects:-0} -lt $n ]]; then
      log "WARNING: the disk tier holds ${disk_objects:-0} of $n entries after the fill (see $RAW/fill-$n.txt)"
    fi

    # Lookups of random filled keys.
    printf '%s\n%s\n' "$LOOKUP_LUA" "$WRK_DONE" >"$TMP/lookup.lua"
    l0=$(wc -l <"$TMP/entries-$n.log")
    log "random-key hits among $n entries (${SECS}s)"
    wrk -t 2 -c "$LOOKUP_CONNS" -d "${SECS}s" --timeout 30s --latency -s "$TMP/lookup.lua" \
      "http://$CADDR" -H "Host: $ORIGIN" -- "$n" "$base" >"$RAW/lookup-$n.txt" 2>&1 || true
    sleep 0.5
    read -r "R[ent.$n.rps]" "R[ent.$n.p50]" "R[ent.$n.p99]" "R[ent.$n.err]" < <(wrk_summary "$RAW/lookup-$n.txt")
    R[ent.$n.hitpct]=$(tail -n +"$((l0 + 1))" "$TMP/entries-$n.log" | awk '
      { n++; split($4, c, "/"); if (c[1] ~ /^TCP_(MEM_)?HIT/) h++ }
      END { if (n) printf "%.1f", 100 * h / n; else print "-" }')
    R[ent.$n.codes]=$(tail -n +"$((l0 + 1))" "$TMP/entries-$n.log" |
      awk '{ split($4, c, "/"); m[c[1]]++ } END { for (k in m) printf "%s:%d ", k, m[k] }')

    # Restart on the same directory: time to the index-rebuilt line, and RSS once rebuilt.
    stop_cuttle
    start_cuttle "restart-$n" "$dir" "${CACHE_SIZE_ARGS[@]}"
    line=
    for _ in $(seq 6000); do # up to 10 minutes
      line=$(grep -m1 'disk cache index rebuilt' "$TMP/restart-$n.err" || true)
      [[ -n $line ]] && break
      kill -0 "$CPID" 2>/dev/null || break
      sleep 0.1
    done
    if [[ -n $line ]]; then
      # The line's own timestamp (RFC 3339, UTC) against the moment cuttle was started.
      ts=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z' <<<"$line" | head -n1 || true)
      tns=$( [[ -n $ts ]] && date -d "$ts" +%s%N 2>/dev/null || date +%s%N)
      R[ent.$n.rebuild_s]=$(awk -v a="$CSTART" -v b="$tns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
      # For scale: when the same start logged that it listens (the index is rebuilt in the
      # background, so this does not wait for it).
      lts=$(grep -m1 'cuttle listening' "$TMP/restart-$n.err" | grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z' || true)
      if [[ -n $lts ]]; then
        R[ent.$n.listen_s]=$(awk -v a="$CSTART" -v b="$(date -d "$lts" +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
      fi
      R[ent.$n.rebuilt]=$(grep -oE 'entries=[0-9]+' <<<"$line" | cut -d= -f2)
      sleep 0.5
      rss2=$(rss_kb "$CPID")
      R[ent.$n.idx_rss_mib]=$(awk -v k="$rss2" 'BEGIN { printf "%.1f", k / 1024 }')
      R[ent.$n.idx_per]=$(awk -v a="$rss0" -v b="$rss2" -v e="${R[ent.$n.rebuilt]:-0}" \
        'BEGIN { if (e > 0) printf "%.0f", (b - a) * 1024 / e; else print "-" }')
    else
      log "WARNING: no 'disk cache index rebuilt' line after restarting with $n entries"
    fi
    cp "$TMP/restart-$n.err" "$RAW/restart-$n.stderr.log"
    stop_cuttle
    log "removing the $n-entry cache directory"
    rm -rf "$dir"
  done
fi

# ----- report --------------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
{
  echo "# cuttle scaling results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); took $(($(date +%s) - STARTED))s;" \
    "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- cuttle: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), default settings (disk tier on);" \
    "machine: $(nproc) CPUs; ulimit -n $(ulimit -n)"
  echo "- growth: each figure against the step before (\"x2.10 for x8 load\"); \"WORSE than linear\"" \
    "when it grew more than 1.1 times the load did"
  if want conns; then
    echo
    echo "## Concurrent connections (${SECS}s runs after ${WARMUP}s warmups)"
    echo
    echo "1 KiB cache hits: wrk -t 2 --timeout 30s. Tunnels: bench_tunnels, one CONNECT per" \
      "connection, 1 KiB requests inside one at a time (direct: the same client without CONNECT)."
    echo
    echo "| load | connections | direct req/s | cuttle req/s | cuttle/direct | direct p99 ms | cuttle p99 ms | cuttle p99 growth | cuttle RSS MiB | RSS growth | errors (direct/cuttle) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|"
    for kind in hit tun; do
      prev=
      for c in "${CONNS[@]}"; do
        label=$([[ $kind == hit ]] && echo "1 KiB hits" || echo "tunnels")
        g=-
        rg=-
        if [[ -n $prev ]]; then
          g=$(growth "$(get "$kind.cuttle.$prev.p99")" "$(get "$kind.cuttle.$c.p99")" "$prev" "$c")
          rg=$(growth "$(get "$kind.cuttle.$prev.rss")" "$(get "$kind.cuttle.$c.rss")" "$prev" "$c")
        fi
        ratio=$(awk -v a="$(get "$kind.cuttle.$c.rps")" -v b="$(get "$kind.direct.$c.rps")" \
          'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }')
        extra=
        [[ $kind == tun ]] && extra=" (open: $(get "tun.direct.$c.open")/$(get "tun.cuttle.$c.open"))"
        echo "| $label | $c | $(get "$kind.direct.$c.rps") | $(get "$kind.cuttle.$c.rps") | $ratio |" \
          "$(get "$kind.direct.$c.p99") | $(get "$kind.cuttle.$c.p99") | $g | $(get "$kind.cuttle.$c.rss") | $rg |" \
          "$(get "$kind.direct.$c.err")/$(get "$kind.cuttle.$c.err")$extra |"
        prev=$c
      done
    done
    echo
    echo "cuttle's peak RSS over the connection runs: $(get conns.hwm) MiB. cuttle CPU cores used" \
      "during the hit runs: $(for c in "${CONNS[@]}"; do printf '%s: %s; ' "$c" "$(get "hit.cuttle.$c.cores")"; done)"
  fi
  if want entries; then
    echo
    echo "## Cache entries (${ENTRY_BYTES} B bodies)"
    echo
    echo "Fill: wrk -c $FILL_CONNS, each key once (bounded by ${FILL_SECS}s). Lookup: wrk -c" \
      "$LOOKUP_CONNS for ${SECS}s, random filled keys. RSS per entry: RSS growth over the fill" \
      "divided by the disk tier's entries (includes the memory tier's copies); after restart:" \
      "RSS once the index is rebuilt, over the idle RSS before the fill (the index alone)."
    echo
    echo "| entries | filled (disk / memory tier) | fill s | lookup req/s | p50 ms | p99 ms | p99 growth | hits % | RSS MiB after fill | B/entry | memory tier B/entry | index rebuild s (listening at) | rebuild growth | B/entry after restart | B/entry growth |"
    echo "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|"
    prev=
    for n in "${ENTRIES[@]}"; do
      g=-
      rg=-
      ig=-
      if [[ -n $prev ]]; then
        g=$(growth "$(get "ent.$prev.p99")" "$(get "ent.$n.p99")" "$prev" "$n")
        rg=$(growth "$(get "ent.$prev.rebuild_s")" "$(get "ent.$n.rebuild_s")" "$prev" "$n")
        # Per-entry memory should stay flat: compare totals (per entry x entries).
        ig=$(growth "$(awk -v a="$(get "ent.$prev.idx_per")" -v n="$prev" 'BEGIN { if (a == "-") print "-"; else print a * n }')" \
          "$(awk -v a="$(get "ent.$n.idx_per")" -v n="$n" 'BEGIN { if (a == "-") print "-"; else print a * n }')" "$prev" "$n")
      fi
      echo "| $n | $(get "ent.$n.disk") / $(get "ent.$n.mem") | $(get "ent.$n.fill_s") | $(get "ent.$n.rps") |" \
        "$(get "ent.$n.p50") | $(get "ent.$n.p99") | $g | $(get "ent.$n.hitpct") | $(get "ent.$n.rss_mib") |" \
        "$(get "ent.$n.rss_per") | $(get "ent.$n.mem_per") | $(get "ent.$n.rebuild_s") ($(get "ent.$n.listen_s")) | $rg |" \
        "$(get "ent.$n.idx_per") | $ig |"
      prev=$n
    done
    echo
    for n in "${ENTRIES[@]}"; do
      echo "- $n entries: lookup result codes: $(get "ent.$n.codes"); lookup errors: $(get "ent.$n.err");" \
        "index rebuilt with $(get "ent.$n.rebuilt") entries"
    done
  fi
} >"$OUT/scale.md"
cat "$OUT/scale.md"
log "wrote $OUT/scale.md (raw outputs in $RAW/)"
