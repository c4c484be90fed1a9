#!/usr/bin/env bash
# Registry mirror benchmark (issue 12): how long real package clients take to install a
# project, cold and warm, three ways, in one run:
#   direct     client -> registry
#   mirror     client -> cuttle's mirror route (/npm/, /pypi/) -> registry
#   intercept  client -> cuttle as forward proxy, HTTPS intercepted with cuttle's CA -> registry
# plus "floor": direct to the same tree served without delay or cap, the client's own time.
# The clients: `npm ci` of a project of BENCH_MIRROR_NPM_PACKAGES packages (tarballs and
# packuments made here, a lockfile whose `resolved` URLs name the path's registry URL) and
# `pip download -r` of BENCH_MIRROR_PIP_PACKAGES wheels (built here, a PEP 503 index). Every
# run starts with empty client caches (a new npm cache, pip --no-cache-dir, a new project or
# download directory); "cold" is the first run through a cuttle with an empty cache, "warm"
# the second, and "cut" a third through the mirror and interception with the registry cut off
# (bench_registry's /_down: every request is answered by closing the connection). Each
# round starts new cuttles; the table shows the median of the rounds.
#
# The registry is examples/bench_registry.rs on 127.0.0.1 (plain HTTP, and HTTPS for the
# intercept path) with a delay before every response head and a bandwidth cap per connection,
# so it stands for a registry across a network: on loopback it would answer in microseconds
# and any proxy would look slow. Its own counter gives the upstream requests of every run.
#
# It prints a table (seconds, upstream requests, warm / direct, cut / direct) and the issue 12
# goals: a warm run through the mirror sends nothing upstream and takes at most half the direct
# time, and so does one with the registry cut off.
# Nothing here asserts anything; a client that fails stops the script. Writes
# target/bench/mirror.md. Everything listens on 127.0.0.1 only. See bench/README.md.
#
# Environment (all optional):
#   BENCH_MIRROR_LATENCY_MS     delay before each registry response head (default 40)
#   BENCH_MIRROR_RATE_MBPS      registry bandwidth per connection, MB/s (default 20)
#   BENCH_MIRROR_NPM_PACKAGES   packages in the npm project (default 40)
#   BENCH_MIRROR_PIP_PACKAGES   wheels downloaded by pip (default 12)
#   BENCH_MIRROR_RUNS           rounds; the median is reported (default 3)
#   BENCH_NO_BUILD=1            use the existing release binaries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LATENCY_MS=${BENCH_MIRROR_LATENCY_MS:-40}
RATE_MBPS=${BENCH_MIRROR_RATE_MBPS:-20}
NPM_N=${BENCH_MIRROR_NPM_PACKAGES:-40}
PIP_N=${BENCH_MIRROR_PIP_PACKAGES:-12}
RUNS=${BENCH_MIRROR_RUNS:-3}
CUTTLE_BIN=target/release/cuttle
REGISTRY_BIN=target/release/examples/bench_registry
OUT=target/bench/mirror.md

for tool in curl npm python3; do
  command -v "$tool" >/dev/null || { echo "mirror.sh: $tool is required" >&2; exit 1; }
done
python3 -m pip --version >/dev/null || { echo "mirror.sh: pip is required" >&2; exit 1; }
if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  cargo build --release --bin cuttle --example bench_registry
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n ${BENCH_MIRROR_KEEP:-} ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

# The clients run without this machine's proxy, trust and client settings.
CLEAN=(env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY
  -u no_proxy -u NO_PROXY -u SSL_CERT_FILE -u SSL_CERT_DIR -u REQUESTS_CA_BUNDLE
  -u NODE_EXTRA_CA_CERTS -u CURL_CA_BUNDLE)
while IFS= read -r v; do CLEAN+=(-u "$v"); done < <(env | grep -ioE '^(npm_config_|PIP_)[^=]*' || true)

# --- the registry tree: npm packuments and tarballs, PyPI simple pages and wheels ---
python3 - "$TMP/registry" "$TMP/project" "$NPM_N" "$PIP_N" <<'EOF'
import base64, gzip, hashlib, io, json, os, random, sys, tarfile, zipfile
reg, project, n_npm, n_pip = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(12)
# Sizes of the packages' payloads, cycled: most small, a few large, as in a real project.
SIZES = [3_000, 8_000, 15_000, 30_000, 60_000, 120_000, 250_000, 600_000]
def put(path, data):
    p = os.path.join(reg, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
os.makedirs(project, exist_ok=True)
total = 0
deps, lock = {}, {}
for i in range(n_npm):
    name = "cuttle-bench-%02d" % i
    pkg = {"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT"}
    files = {"package/package.json": json.dumps(pkg).encode(),
             "package/index.js": b"module.exports = %d;\n" % i,
             "package/data.bin": rnd.randbytes(SIZES[i % len(SIZES)])}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for n, b in files.items():
            info = tarfile.TarInfo(n); info.size = len(b); info.mtime = 499162500; info.mode = 0o644
            t.addfile(info, io.BytesIO(b))
    tgz = gzip.compress(raw.getvalue(), mtime=0)
    total += len(tgz)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    tarball = "%s/-/%s-1.0.0.tgz" % (name, name)
    put(tarball, tgz)
    packument = {"name": name, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": dict(
        pkg, dist={"tarball": "{origin}/" + tarball, "integrity": integrity,
                   "shasum": hashlib.sha1(tgz).hexdigest()})}}
    put(name + "/index.json", json.dumps(packument).encode())
    deps[name] = "1.0.0"
    lock["node_modules/" + name] = {"version": "1.0.0", "resolved": "@REGISTRY@" + tarball,
                                    "integrity": integrity, "license": "MIT"}
root = {"name": "bench-project", "version": "1.0.0", "private": True, "dependencies": deps}
with open(os.path.join(project, "package.json"), "w") as f:
    json.dump(root, f)
lock[""] = {k: v for k, v in root.items() if k != "private"}
with open(os.path.join(project, "package-lock.json.in"), "w") as f:
    json.dump({"name": "bench-project", "version": "1.0.0", "lockfileVersion": 3,
               "requires": True, "packages": lock}, f)
npm_total = total

def digest(b):
    return base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
total, reqs = 0, []
for i in range(n_pip):
    name, mod = "cuttle-bench-%02d" % i, "cuttle_bench_%02d" % i
    dist = mod + "-1.0.0.dist-info"
    files = {mod + "/__init__.py": b"N = %d\n" % i,
             mod + "/data.bin": rnd.randbytes(SIZES[(i * 3) % len(SIZES)]),
             dist + "/METADATA": ("Metadata-Version: 2.1\nName: %s\nVersion: 1.0.0\n" % name).encode(),
             dist + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: cuttle-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join("%s,sha256=%s,%d\n" % (n, digest(b), len(b)) for n, b in files.items())
    record += dist + "/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in files.items():
            z.writestr(n, b)
        z.writestr(dist + "/RECORD", record)
    whl = buf.getvalue()
    total += len(whl)
    wheel = "%s-1.0.0-py3-none-any.whl" % mod
    put("packages/%02d/%s" % (i, wheel), whl)
    put("simple/%s/index.html" % name, (
        "<!DOCTYPE html><html><body><a href=\"{origin}/packages/%02d/%s#sha256=%s\">%s</a>"
        "</body></html>\n" % (i, wheel, hashlib.sha256(whl).hexdigest(), wheel)).encode())
    reqs.append("%s==1.0.0\n" % name)
with open(os.path.join(project, "requirements.txt"), "w") as f:
    f.writelines(reqs)
with open(os.path.join(project, "sizes"), "w") as f:
    f.write("%d %d\n" % (npm_total, total))
EOF
read -r NPM_BYTES PIP_BYTES <"$TMP/project/sizes"
: >"$TMP/user-npmrc"
: >"$TMP/global-npmrc"

wait_for() { # file pattern -> first match (polls up to 20 s)
  local i m
  for i in $(seq 200); do
    m=$(grep -oE "$2" "$1" 2>/dev/null | head -n1 || true)
    [[ -n $m ]] && { echo "$m"; return 0; }
    sleep 0.1
  done
  echo "mirror.sh: timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  return 1
}

"$REGISTRY_BIN" --dir "$TMP/registry" --latency-ms "$LATENCY_MS" --rate-mbps "$RATE_MBPS" \
  --tls "$TMP/registry-ca.pem" >"$TMP/registry.out" 2>&1 &
PIDS+=($!)
REG_PORT=$(wait_for "$TMP/registry.out" '^listening on 127\.0\.0\.1:[0-9]+' | cut -d: -f2)
REG_TLS_PORT=$(wait_for "$TMP/registry.out" 'tls listening on 127\.0\.0\.1:[0-9]+' | cut -d: -f2)
REG="http://127.0.0.1:$REG_PORT"
# The same tree without delay or cap: the "floor" rows, the client's own time.
"$REGISTRY_BIN" --dir "$TMP/registry" --latency-ms 0 --rate-mbps 1000000 >"$TMP/floor.out" 2>&1 &
PIDS+=($!)
FLOOR="http://127.0.0.1:$(wait_for "$TMP/floor.out" '^listening on 127\.0\.0\.1:[0-9]+' | cut -d: -f2)"
upstream() { # path -> requests the registry of that path has served
  local base=$REG
  [[ $1 == floor ]] && base=$FLOOR
  curl -sS --fail --noproxy '*' "$base/_stats" | awk '{print $2}'
}

start_cuttle() { # name round args...
  local name=$1 round=$2
  shift 2
  # The registry is on loopback, which cuttle refuses unless --allow-dest lists it.
  "$CUTTLE_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8,::1 \
    --cache-dir "$TMP/$name-cache-$round" "$@" >"$TMP/$name-$round.log" 2>"$TMP/$name-$round.err" &
  PIDS+=($!)
  eval "${name}_PID=$!"
  eval "${name}_ADDR=$(wait_for "$TMP/$name-$round.err" 'addr=127\.0\.0\.1:[0-9]+' | cut -d= -f2)"
  eval "${name}_ADMIN=$(wait_for "$TMP/$name-$round.err" 'admin=127\.0\.0\.1:[0-9]+' | cut -d= -f2)"
}
stop_cuttle() { # name
  local pid
  pid=$(eval "echo \$${1}_PID")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

RESULTS=$TMP/results
: >"$RESULTS"

# run client path round phase: one install with empty client caches; appends
# "client path phase seconds upstream_requests" to $RESULTS.
run() {
  local client=$1 path=$2 round=$3 phase=$4 dir="$TMP/runs/$1-$2-$3-$4" reg idx u0 u1 t0 t1 got want secs
  local -a args=()
  mkdir -p "$dir"
  case $client in
    npm)
      case $path in
        direct) reg="$REG/" ;;
        floor) reg="$FLOOR/" ;;
        mirror) reg="http://$mirror_ADDR/npm/" ;;
        intercept)
          reg="https://localhost:$REG_TLS_PORT/"
          args=(--proxy "http://$mitm_ADDR" --https-proxy "http://$mitm_ADDR" --cafile "$TMP/cuttle-ca.pem") ;;
      esac
      cp "$TMP/project/package.json" "$dir/"
      sed "s#@REGISTRY@#$reg#g" "$TMP/project/package-lock.json.in" >"$dir/package-lock.json"
      args=(ci --registry "$reg" --cache "$dir/npm-cache" --userconfig "$TMP/user-npmrc"
        --globalconfig "$TMP/global-npmrc" --no-audit --no-fund --no-update-notifier
        --ignore-scripts --loglevel warn "${args[@]}")
      ;;
    pip)
      case $path in
        direct) idx="$REG/simple/"; args=(--trusted-host 127.0.0.1) ;;
        floor) idx="$FLOOR/simple/"; args=(--trusted-host 127.0.0.1) ;;
        mirror) idx="http://$mirror_ADDR/pypi/simple/"; args=(--trusted-host 127.0.0.1) ;;
        intercept)
          idx="https://localhost:$REG_TLS_PORT/simple/"
          args=(--proxy "http://$mitm_ADDR" --cert "$TMP/cuttle-ca.pem") ;;
      esac
      args=(-m pip download --no-cache-dir --no-deps --disable-pip-version-check --no-input
        --retries 0 --timeout 60 --index-url "$idx" -r "$TMP/project/requirements.txt"
        --dest "$dir/dl" "${args[@]}")
      ;;
  esac
  u0=$(upstream "$path")
  t0=$EPOCHREALTIME
  if [[ $client == npm ]]; then
    (cd "$dir" && HOME=$dir "${CLEAN[@]}" npm "${args[@]}") >"$dir.log" 2>&1 || {
      echo "mirror.sh: npm ci ($path, round $round, $phase) failed:" >&2; tail -n 30 "$dir.log" >&2; exit 1; }
    got=$(find "$dir/node_modules" -maxdepth 2 -name index.js -path '*cuttle-bench-*' | wc -l)
    want=$NPM_N
  else
    (cd "$dir" && HOME=$dir PIP_CONFIG_FILE=/dev/null "${CLEAN[@]}" python3 "${args[@]}") >"$dir.log" 2>&1 || {
      echo "mirror.sh: pip download ($path, round $round, $phase) failed:" >&2; tail -n 30 "$dir.log" >&2; exit 1; }
    got=$(find "$dir/dl" -name '*.whl' | wc -l)
    want=$PIP_N
  fi
  t1=$EPOCHREALTIME
  u1=$(upstream "$path")
  if [[ $got -ne $want ]]; then
    echo "mirror.sh: $client ($path, round $round, $phase) installed $got of $want packages" >&2
    exit 1
  fi
  secs=$(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")
  echo "$client $path $phase $secs $((u1 - u0))" >>"$RESULTS"
  printf '  %-4s %-9s %-4s %6.2f s, %3d upstream requests\n' "$client" "$path" "$phase" \
    "$secs" "$((u1 - u0))"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS"
  start_cuttle mirror "$round" --mirror "npm=npm=$REG/,pypi=pypi=$REG/"
  start_cuttle mitm "$round" --intercept localhost --upstream-ca "$TMP/registry-ca.pem"
  curl -sS --fail --noproxy '*' -o "$TMP/cuttle-ca.pem" "http://$mitm_ADMIN/ca.pem"
  for client in npm pip; do
    for path in floor direct mirror intercept; do
      run "$client" "$path" "$round" cold
      run "$client" "$path" "$round" warm
    done
    curl -sS --fail --noproxy '*' -o /dev/null "$REG/_down"
    run "$client" mirror "$round" cut
    run "$client" intercept "$round" cut
    curl -sS --fail --noproxy '*' -o /dev/null "$REG/_up"
  done
  stop_cuttle mirror
  stop_cuttle mitm
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" <<EOF
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    c, p, ph, s, u = line.split()
    rows.setdefault((c, p, ph), []).append((float(s), int(u)))
def med(c, p, ph):
    r = rows[(c, p, ph)]
    return statistics.median(s for s, _ in r), max(u for _, u in r)
out = []
out.append("Registry: $LATENCY_MS ms before every response head, $RATE_MBPS MB/s per connection.")
out.append("npm ci: $NPM_N packages, $NPM_BYTES bytes of tarballs; pip download: $PIP_N wheels, "
           "$PIP_BYTES bytes. Empty client caches every run; median of $RUNS rounds "
           "(upstream requests: the most of any round).")
out.append("npm $(npm --version), $(python3 -m pip --version | cut -d' ' -f1-2), "
           "$(python3 --version), $("$CUTTLE_BIN" --version 2>/dev/null || echo cuttle) (release build).")
out.append("")
out.append("| client | path | cold s | warm s | cut s | upstream requests cold / warm / cut | warm / direct warm | cut / direct warm |")
out.append("|---|---|---|---|---|---|---|---|")
for c in ("npm", "pip"):
    direct = med(c, "direct", "warm")[0]
    for p in ("floor", "direct", "mirror", "intercept"):
        (cs, cu), (ws, wu) = med(c, p, "cold"), med(c, p, "warm")
        if (c, p, "cut") in rows:
            xs, xu = med(c, p, "cut")
            cut = ("%.2f" % xs, " / %d" % xu, "%.2f" % (xs / direct))
        else:
            cut = ("-", "", "-")
        out.append("| %s | %s | %.2f | %.2f | %s | %d / %d%s | %.2f | %s |" % (
            c, p, cs, ws, cut[0], cu, wu, cut[1], ws / direct, cut[2]))
out.append("")
out.append("floor: direct to the same registry without delay or cap (the client's own time). "
           "cut: the registry cut off (every request answered by closing the connection); "
           "its upstream requests are attempts.")
out.append("")
out.append("Issue 12 goals (a warm run through the mirror, and one with the registry cut off: "
           "0 upstream requests, at most 0.5 x direct):")
for c in ("npm", "pip"):
    for ph in ("warm", "cut"):
        ws, wu = med(c, "mirror", ph)
        ratio = ws / med(c, "direct", "warm")[0]
        out.append("- %s, %s: %d upstream requests (%s), %.2f x direct (%s)" % (
            c, ph, wu, "met" if wu == 0 else "NOT met", ratio, "met" if ratio <= 0.5 else "NOT met"))
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text, end="")
EOF
echo "written to $OUT"
