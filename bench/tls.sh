#!/usr/bin/env bash
# TLS cache-hit throughput: cuttle's interception (hits served from its cache over cuttle's
# own TLS) against a blind CONNECT tunnel to an HTTPS origin, for 64 KiB and 16 MiB objects,
# in one run. Loopback only. See bench/README.md, "TLS interception".
#
#   bench/tls.sh                      # release build, then about 35 s of load
#   BENCH_NO_BUILD=1 bench/tls.sh     # use the existing target/release/cuttle
#
# Optional: TLS_BENCH_N_SMALL (requests per 64 KiB batch, 8000), TLS_BENCH_N_LARGE (per
# 16 MiB batch, 128), TLS_BENCH_PARALLEL (curl --parallel-max, 16), TLS_BENCH_RUNS (batches
# per path and size; the median is reported, 3).
set -euo pipefail
cd "$(dirname "$0")/.."
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

N_SMALL=${TLS_BENCH_N_SMALL:-8000}
N_LARGE=${TLS_BENCH_N_LARGE:-128}
PAR=${TLS_BENCH_PARALLEL:-16}
RUNS=${TLS_BENCH_RUNS:-3}
CUTTLE_BIN=target/release/cuttle

for tool in curl bc; do
  command -v "$tool" >/dev/null || { echo "tls.sh: $tool is required" >&2; exit 1; }
done
if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  cargo build --release --bin cuttle --example bench_origin  # the same build as bench/run.sh
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n ${TLS_BENCH_KEEP:-} ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- HTTPS origin: bench_origin's TLS 1.3 listener, its CA certificate in origin-ca.pem ---
target/release/examples/bench_origin 0 --tls "$TMP/origin-ca.pem" >"$TMP/origin.out" 2>&1 &
PIDS+=($!)

wait_for() { # file pattern -> first match (polls up to 10 s)
  local i m
  for i in $(seq 100); do
    m=$(grep -oE "$2" "$1" 2>/dev/null | head -n1 || true)
    [[ -n $m ]] && { echo "$m"; return 0; }
    sleep 0.1
  done
  echo "tls.sh: timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  return 1
}
ORIGIN_PORT=$(wait_for "$TMP/origin.out" 'tls listening on 127\.0\.0\.1:[0-9]+' | cut -d: -f2)

# --- two cuttles: one intercepting localhost, one plain (blind CONNECT tunnel) ---
start_cuttle() { # name args...
  local name=$1; shift
  # The origin is on loopback, which cuttle refuses unless --allow-dest lists it.
  "$CUTTLE_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8,::1 \
    --cache-dir "$TMP/$name-cache" "$@" >"$TMP/$name.log" 2>"$TMP/$name.err" &
  PIDS+=($!)
  eval "${name}_PID=$!"
  eval "${name}_ADDR=$(wait_for "$TMP/$name.err" 'addr=127\.0\.0\.1:[0-9]+' | cut -d= -f2)"
  eval "${name}_ADMIN=$(wait_for "$TMP/$name.err" 'admin=127\.0\.0\.1:[0-9]+' | cut -d= -f2)"
}
CACHE_OPTS=(--max-mem-object-size 32MiB --cache-mem 512MiB)
start_cuttle mitm --intercept localhost --upstream-ca "$TMP/origin-ca.pem" "${CACHE_OPTS[@]}"
start_cuttle tunnel "${CACHE_OPTS[@]}"
curl -sS --fail -o "$TMP/cuttle-ca.pem" "http://$mitm_ADMIN/ca.pem"

# path -> curl options
path_opts() {
  case $1 in
    mitm) echo "--proxy http://$mitm_ADDR --cacert $TMP/cuttle-ca.pem" ;;
    tunnel) echo "--proxy http://$tunnel_ADDR --cacert $TMP/origin-ca.pem" ;;
  esac
}
url() { echo "https://localhost:$ORIGIN_PORT/cached/$1"; }

# --- warm: the intercepting cuttle must log a memory hit for each object ---
for size in 65536 16777216; do
  for p in mitm tunnel; do
    # shellcheck disable=SC2046
    curl -sS --fail --http1.1 $(path_opts $p) -o /dev/null "$(url "$size")"
  done
  ok=
  for _ in $(seq 10); do
    l0=$(wc -l <"$TMP/mitm.log")
    # shellcheck disable=SC2046
    curl -sS --fail --http1.1 $(path_opts mitm) -o /dev/null "$(url "$size")"
    if tail -n +"$((l0 + 1))" "$TMP/mitm.log" | grep ' GET ' | grep -q "TCP_MEM_HIT/"; then ok=1; break; fi
  done
  if [[ -z $ok ]]; then
    echo "tls.sh: no TCP_MEM_HIT for $size after 10 tries; last log lines:" >&2
    tail -n4 "$TMP/mitm.log" >&2
    exit 1
  fi
  echo "warm: $(url "$size") is a TCP_MEM_HIT through interception"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
TIMEFORMAT="%U %S"

# batch path size n -> "seconds ok cpu_s log_hits"
batch() {
  local p=$1 size=$2 n=$3 cfg="$TMP/batch-$2-$3.cfg" pid t0 t1 c0 c1 l0 l1 ok hits
  if [[ ! -f $cfg ]]; then
    for _ in $(seq "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$(url "$size")"; done >"$cfg"
  fi
  pid=$(eval "echo \$${p}_PID")
  l0=$(wc -l <"$TMP/$p.log")
  c0=$(cpu_ticks "$pid")
  s0=$(head -n1 /proc/stat)
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  { time curl -sS -Z --parallel-max "$PAR" --http1.1 $(path_opts "$p") -K "$cfg" \
    -w '%{http_code}\n' >"$TMP/codes" 2>"$TMP/curl.err"; } 2>"$TMP/curl.time" || true
  t1=$(date +%s.%N)
  c1=$(cpu_ticks "$pid")
  s1=$(head -n1 /proc/stat)
  ok=$(grep -c '^200$' "$TMP/codes" || true)
  hits=$(tail -n +"$((l0 + 1))" "$TMP/$p.log" | grep -c 'TCP_MEM_HIT/' || true)
  # client CPU (curl user+sys, s) and the machine's busy share over the batch (all CPUs)
  ccpu=$(awk '{s += $2} END {print s}' "$TMP/curl.time")
  busy=$(printf '%s\n%s\n' "$s0" "$s1" | awk '{t = 0; for (i = 2; i <= NF; i++) t += $i; idle = $5 + $6;
    if (NR == 1) {t0 = t; i0 = idle} else printf "%.0f", 100 * (1 - (idle - i0) / (t - t0))}')
  echo "$(echo "$t1 - $t0" | bc -l) $ok $(echo "($c1 - $c0) / $TCK" | bc -l) $hits $ccpu $busy"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RPS MBS CPU
RAW="$TMP/raw.txt"
: >"$RAW"
for size in 65536 16777216; do
  if [[ $size == 65536 ]]; then n=$N_SMALL; else n=$N_LARGE; fi
  for r in $(seq "$RUNS"); do
    for p in tunnel mitm; do
      read -r secs ok cpu hits ccpu busy < <(batch "$p" "$size" "$n")
      rps=$(echo "$ok / $secs" | bc -l)
      mbs=$(echo "$ok * $size / $secs / 1000000" | bc -l)
      cpk=$(echo "$cpu * 1000 / $n" | bc -l)
      printf '%-6s %8d B run %d: %5d/%d ok in %6.3f s  %8.1f req/s  %7.1f MB/s  proxy CPU %6.3f s (%.2f s/1k req)  curl CPU %6.3f s  machine busy %s%%  hits logged %d\n' \
        "$p" "$size" "$r" "$ok" "$n" "$secs" "$rps" "$mbs" "$cpu" "$cpk" "$ccpu" "$busy" "$hits" | tee -a "$RAW"
      if [[ $ok != "$n" ]]; then
        echo "WARNING: $((n - ok)) transfers failed:" >&2
        head -n5 "$TMP/curl.err" >&2
      fi
      if [[ $p == mitm && $hits -lt $n ]]; then
        echo "WARNING: only $hits of $n intercepted requests logged as TCP_MEM_HIT" >&2
      fi
      RPS[$p-$size]+="$rps "
      MBS[$p-$size]+="$mbs "
      CPU[$p-$size]+="$cpk "
    done
  done
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
echo
echo "Medians of $RUNS runs; curl -Z --parallel-max $PAR --http1.1; $N_SMALL x 64 KiB, $N_LARGE x 16 MiB per batch."
echo "MB/s = 10^6 body bytes per second. proxy CPU = user+system of the cuttle process, s per 1000 requests."
echo
echo "| object | tunnel req/s | intercept-hit req/s | ratio | tunnel MB/s | intercept-hit MB/s | ratio | tunnel proxy CPU s/1k | intercept proxy CPU s/1k |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for size in 65536 16777216; do
  tr=$(med "${RPS[tunnel-$size]}"); mr=$(med "${RPS[mitm-$size]}")
  tm=$(med "${MBS[tunnel-$size]}"); mm=$(med "${MBS[mitm-$size]}")
  tc=$(med "${CPU[tunnel-$size]}"); mc=$(med "${CPU[mitm-$size]}")
  label=$([[ $size == 65536 ]] && echo "64 KiB" || echo "16 MiB")
  printf '| %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.2f | %.2f | %.2f |\n' "$label" "$tr" "$mr" \
    "$(echo "$mr / $tr" | bc -l)" "$tm" "$mm" "$(echo "$mm / $tm" | bc -l)" "$tc" "$mc"
  # For bench/run.sh, which puts these figures in its summary.
  printf 'TLSBENCH size=%s tunnel_rps=%.0f mitm_rps=%.0f tunnel_mbps=%.1f mitm_mbps=%.1f tunnel_cpu=%.2f mitm_cpu=%.2f\n' \
    "$size" "$tr" "$mr" "$tm" "$mm" "$tc" "$mc" >>"$TMP/machine.txt"
done
echo
cat "$TMP/machine.txt"
echo
for p in tunnel mitm; do
  echo "$p cuttle access log: $(grep -c ' CONNECT ' "$TMP/$p.log" || true) CONNECT lines (TLS connections), $(grep -c ' GET ' "$TMP/$p.log" || true) GET lines"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
