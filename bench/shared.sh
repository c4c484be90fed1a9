#!/usr/bin/env bash
# The shared cache tier on loopback (docs/shared-cache.md): for 1 KiB, 1 MiB and 64 MiB
# objects, the time of
#   miss    replica A fetches from the origin (and uploads to the bucket off the request path)
#   shared  replica B, empty, gets the object from the bucket (TCP_SHARED_HIT)
#   local   replica B again, from its own tiers (TCP_MEM_HIT / TCP_HIT)
# sequential curl requests, mean and median in ms; then the peak RSS of A after its burst
# of uploads. Store: s3s-fs (an S3 server over a directory, as the tests use; installed by
# scripts/test.sh); origin: examples/bench_origin.rs. A benchmark, not a test: it asserts
# nothing.
#
#   bench/shared.sh                 # release build first
#   BENCH_NO_BUILD=1 bench/shared.sh
#   SHARED_N="200 50 4"             # requests per size (1 KiB, 1 MiB, 64 MiB)
#   CUTTLE_BIN=..., ORIGIN_BIN=...  # other binaries (with BENCH_NO_BUILD=1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r N1K N1M N64M <<<"${SHARED_N:-200 50 4}"
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  cargo build --release --bin cuttle --example bench_origin
fi
BIN=${CUTTLE_BIN:-target/release/cuttle}
ORIGIN=${ORIGIN_BIN:-target/release/examples/bench_origin}
S3S=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
[[ -x $S3S ]] || { echo "s3s-fs missing: scripts/test.sh installs it" >&2; exit 1; }

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

mkdir -p "$WORK/s3/bench"
S3PORT=$(free_port)
"$S3S" --host 127.0.0.1 --port "$S3PORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 &
pids+=($!)
wait_port "$S3PORT"

"$ORIGIN" >"$WORK/origin.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/origin.out" 2>/dev/null && break; sleep 0.05; done
OADDR=$(sed -n 's/^listening on //p' "$WORK/origin.out")

start_cuttle() { # name -> sets PORT_<name>, ADMIN_<name>
  local name=$1 port admin
  port=$(free_port)
  admin=$(free_port)
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret "$BIN" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --allow-dest 127.0.0.0/8 \
    --cache-dir "$WORK/cache-$name" --cache-size 2GiB --cache-mem 256MiB \
    --shared-cache s3://bench/cuttle --shared-cache-endpoint "http://127.0.0.1:$S3PORT" \
    --log-format squid >"$WORK/$name.log" 2>"$WORK/$name.err" &
  pids+=($!)
  eval "PORT_$name=$port ADMIN_$name=$admin PID_$name=$!"
  wait_port "$port"
}
start_cuttle A
start_cuttle B

# Times (ms) of sequential GETs of the URLs through a proxy port; prints "mean median".
timed() {
  local port=$1
  shift
  for u in "$@"; do
    curl -s -o /dev/null -x "http://127.0.0.1:$port" -w '%{time_total}\n' "$u"
  done | sort -g | awk '{t[NR]=$1*1000; s+=$1*1000} END {n=NR; printf "%.2f %.2f", s/n, (n%2 ? t[(n+1)/2] : (t[n/2]+t[n/2+1])/2)}'
}
uploads() {
  curl -s "http://127.0.0.1:$ADMIN_A/metrics" |
    awk '/cuttle_shared_cache_operations_total\{op="upload",outcome="done"\}/ {print $2}'
}

printf '%-8s %8s %16s %16s %16s\n' size requests "miss ms (mean/p50)" "shared ms" "local ms"
done_before=0
for spec in "1KiB 1024 $N1K" "1MiB 1048576 $N1M" "64MiB 67108864 $N64M"; do
  read -r label bytes n <<<"$spec"
  urls=()
  for i in $(seq "$n"); do urls+=("http://$OADDR/cached/$bytes?r=$RANDOM$i"); done
  miss=$(timed "$PORT_A" "${urls[@]}")
  want=$((done_before + n))
  for _ in $(seq 600); do
    [[ $(uploads || echo 0) -ge $want ]] && break
    sleep 0.1
  done
  done_before=$(uploads || echo 0)
  shared=$(timed "$PORT_B" "${urls[@]}")
  local_=$(timed "$PORT_B" "${urls[@]}")
  printf '%-8s %8s %16s %16s %16s\n' "$label" "$n" "${miss/ //}" "${shared/ //}" "${local_/ //}"
done
echo
echo "uploads done by A: $(uploads)"
echo "shared hits logged by B: $(grep -c TCP_SHARED_HIT "$WORK/B.log")"
echo "peak RSS of A after its uploads: $(awk '/VmHWM/ {printf "%d MiB", $2/1024}' "/proc/$PID_A/status")"
echo "peak RSS of B: $(awk '/VmHWM/ {printf "%d MiB", $2/1024}' "/proc/$PID_B/status")"
