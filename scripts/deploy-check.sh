#!/usr/bin/env bash
# Deployment checks (README "Deploy"): the static binary, the FROM-scratch image, the
# arbitrary-UID proof on a read-only root, and the Kubernetes manifests, Helm chart and
# OpenShift template validated offline. One line per check; exits 1 if any fails. Nothing is
# skipped: a missing tool is a failure.
#
# Needs root (unshare, mount, setpriv for the arbitrary-UID proof; buildah's chroot
# isolation). Installs what is missing: apt packages buildah, skopeo, musl-tools, curl; the
# musl Rust target; a Python venv in target/deploy-check/venv with pinned kubernetes-validate
# and helm-python-sdk. CUTTLE_TEST_NO_INSTALL=1 installs nothing (as scripts/test.sh).
# kubectl (for `kubectl kustomize`) must be on PATH; it is on this project's machines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
WORK=$PWD/target/deploy-check
TARGET=x86_64-unknown-linux-musl
# The oldest Kubernetes the manifests support (the preStop sleep action is in its schema;
# OpenShift 4.16) and the newest schema kubernetes-validate ships.
KUBE_VERSIONS=(1.29.0 1.37.0)
PIP_PINS=(kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 PyYAML==6.0.3)
PROOF_UID=1000680000
IMAGE=localhost/cuttle:deploy-check

passed=0
failed=0
log() { echo "deploy-check: $*" >&2; }
pass() {
  passed=$((passed + 1))
  echo "deploy-check: PASS $*"
}
fail() {
  failed=$((failed + 1))
  echo "deploy-check: FAIL $*"
}
check() { # check NAME DETAIL -- command...: PASS if the command succeeds
  local name=$1 detail=$2
  shift 3
  if "$@"; then pass "$name${detail:+: $detail}"; else fail "$name${detail:+: $detail}"; fi
}
info() { echo "deploy-check: INFO $*"; }
# Runs a Python checker and relays its PASS/FAIL/INFO lines, counted; a checker that dies
# without saying FAIL is a failure too.
relay() {
  local line rc=0 out said_fail=false
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  while IFS= read -r line; do
    case $line in
      "PASS "*) pass "${line#PASS }" ;;
      "FAIL "*)
        fail "${line#FAIL }"
        said_fail=true
        ;;
      "INFO "*) info "${line#INFO }" ;;
      *) echo "deploy-check:   $line" ;;
    esac
  done <"$out"
  rm -f "$out"
  if [[ $rc -ne 0 ]] && ! $said_fail; then fail "$(basename "$2") ${3:-}: exited $rc"; fi
  return 0
}
finish() {
  local secs=$((SECONDS - started))
  info "run time ${secs}s"
  echo "deploy-check: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
}

if [[ $(id -u) -ne 0 ]]; then
  fail "root needed (unshare/mount/setpriv for the arbitrary-UID proof, buildah): run as root"
  finish
  exit 1
fi

# ---------------------------------------------------------------------------------------
# tools

install_tools() {
  local missing=() entry pkg probe
  for entry in "buildah buildah" "skopeo skopeo" "musl-tools musl-gcc" "curl curl" \
    "util-linux setpriv" "binutils readelf"; do
    read -r pkg probe <<<"$entry"
    command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ ${CUTTLE_TEST_NO_INSTALL:-0} == 1 ]]; then
      log "missing ${missing[*]} (CUTTLE_TEST_NO_INSTALL=1: not installing)"
    else
      log "installing ${missing[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    [[ ${CUTTLE_TEST_NO_INSTALL:-0} == 1 ]] || rustup target add "$TARGET" >&2
  fi
  local venv=$WORK/venv stamp
  stamp="${PIP_PINS[*]}"
  if [[ ! -x $venv/bin/python || $(cat "$venv/.pins" 2>/dev/null) != "$stamp" ]]; then
    if [[ ${CUTTLE_TEST_NO_INSTALL:-0} != 1 ]]; then
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}" >&2
      echo "$stamp" >"$venv/.pins"
    fi
  fi
}
install_tools
PY=$WORK/venv/bin/python
KV=$WORK/venv/bin/kubernetes-validate
CHECK=(deploy/check/deploy_check.py)

tools_ok=true
for t in buildah skopeo musl-gcc curl setpriv unshare readelf kubectl "$PY" "$KV"; do
  if ! command -v "$t" >/dev/null 2>&1; then
    fail "tool $t present"
    tools_ok=false
  fi
done
if rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then :; else
  fail "Rust target $TARGET installed"
  tools_ok=false
fi
if ! $tools_ok; then
  finish
  exit 1
fi
pass "tools: $(buildah --version | cut -d' ' -f1-3), $(skopeo --version), $(kubectl version --client 2>/dev/null | sed -n 's/Kustomize Version: /kustomize /p'), $("$KV" --version 2>&1 | tail -n1)"

rm -rf "$WORK/out" "$WORK/context" "$WORK/oci"
mkdir -p "$WORK/out"

# ---------------------------------------------------------------------------------------
# static binary

t0=$SECONDS
if cargo build --release --locked --target "$TARGET" >"$WORK/out/musl-build.log" 2>&1; then
  pass "static binary built (cargo build --release --target $TARGET, $((SECONDS - t0))s)"
else
  tail -n 30 "$WORK/out/musl-build.log" | sed 's/^/deploy-check:   /'
  fail "static binary built (cargo build --release --target $TARGET)"
  finish
  exit 1
fi
BIN=target/$TARGET/release/cuttle
check "binary is static: no program interpreter, no shared libraries" "$(file -b "$BIN" | grep -o 'static[-a-z]* linked'), $(du -h "$BIN" | cut -f1) unstripped" -- \
  bash -c "! readelf -lW '$BIN' | grep -q 'program interpreter' && ! readelf -dW '$BIN' | grep -q NEEDED"
check "binary runs" "$("$BIN" --version)" -- bash -c "'$BIN' --version >/dev/null"

# ---------------------------------------------------------------------------------------
# image: build, inspect, run

BUILDAH=(buildah --root "$WORK/containers/root" --runroot "$WORK/containers/run" --storage-driver vfs)
"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
"${BUILDAH[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
if CUTTLE_BINARY=$BIN CONTEXT_DIR=$WORK/context CONTAINER_TOOL=buildah \
  BUILDAH_OPTS="${BUILDAH[*]:1}" BUILD_OPTS="--isolation chroot" \
  deploy/container/build-image.sh "$IMAGE" >"$WORK/out/image-build.log" 2>&1; then
  pass "image built: buildah --storage-driver vfs bud --isolation chroot -f deploy/container/Containerfile"
else
  tail -n 20 "$WORK/out/image-build.log" | sed 's/^/deploy-check:   /'
  fail "image built"
  finish
  exit 1
fi
if ! "${BUILDAH[@]}" push -q "$IMAGE" "oci:$WORK/oci:cuttle" >/dev/null; then
  fail "image exported to an OCI layout (buildah push oci:)"
  finish
  exit 1
fi
check "skopeo reads the exported image" "" -- \
  bash -c "skopeo inspect --raw 'oci:$WORK/oci:cuttle' | grep -q application/vnd.oci.image.manifest.v1+json"
relay "$PY" "${CHECK[@]}" image "$WORK/oci" "$WORK/context/rootfs/cuttle" --extract "$WORK/out/cuttle-from-image"
relay "$PY" "${CHECK[@]}" containerfiles deploy/container/Containerfile deploy/container/Containerfile.multistage

# Polls until a command succeeds (bounded); no sleeps as synchronisation beyond the poll.
wait_for() { # wait_for SECONDS command...
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.02
  done
}
# The address cuttle printed for "cuttle listening addr=..." / "admin=...".
addr_from() { grep -o "$1=[0-9.]*:[0-9]*" "$2" 2>/dev/null | head -n1 | cut -d= -f2; }
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' "http://$1/readyz") == 200 ]]; }
descendants() {
  local p
  for p in $(pgrep -P "$1" 2>/dev/null); do
    echo "$p"
    descendants "$p"
  done
}

# A tiny origin on loopback serving a file with an old Last-Modified (heuristically fresh).
# cuttle refuses loopback destinations unless --allow-dest lists them (as below).
ORIGIN_DIR=$(mktemp -d /tmp/cuttle-origin.XXXXXX)
head -c 200000 /dev/urandom >"$ORIGIN_DIR/artifact.bin"
touch -d '2020-01-01 00:00:00' "$ORIGIN_DIR/artifact.bin"
ARTIFACT_SHA=$(sha256sum <"$ORIGIN_DIR/artifact.bin" | cut -d' ' -f1)
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$ORIGIN_DIR" >"$WORK/out/origin.log" 2>&1 &
ORIGIN_PID=$!
PROOF_DIR=""
cleanup() {
  kill "$ORIGIN_PID" 2>/dev/null || true
  [[ -n ${RUN_PID:-} ]] && kill "$RUN_PID" 2>/dev/null || true
  rm -rf "$ORIGIN_DIR"
  [[ -n $PROOF_DIR ]] && rm -rf "$PROOF_DIR"
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
}
trap cleanup EXIT
origin_port() { sed -n 's/.*port \([0-9]*\).*/\1/p' "$WORK/out/origin.log" | head -n1; }
wait_for 10 bash -c "[[ -n \$(sed -n 's/.*port \([0-9]*\).*/\1/p' '$WORK/out/origin.log') ]]" || true
OPORT=$(origin_port)
[[ -n $OPORT ]] || fail "origin (python3 -m http.server) started"
URL=http://127.0.0.1:$OPORT/artifact.bin

fetch() { # fetch PROXY_ADDR -> prints "status sha256"
  local body
  body=$(mktemp)
  local code
  code=$(curl -s --noproxy '' -x "http://$1" -o "$body" -w '%{http_code}' "$URL" || true)
  echo "$code $(sha256sum <"$body" | cut -d' ' -f1)"
  rm -f "$body"
}

# The image itself, run as a random UID in group 0 (buildah's chroot isolation: the image's
# own root filesystem, nothing from the host): it serves and its cache directory is writable.
image_run() {
  local ctr mnt out=$WORK/out/image-run
  if ! ctr=$("${BUILDAH[@]}" from "$IMAGE") || ! mnt=$("${BUILDAH[@]}" mount "$ctr"); then
    fail "buildah from/mount $IMAGE"
    return
  fi
  "${BUILDAH[@]}" run --isolation chroot --user "$PROOF_UID:0" "$ctr" -- \
    /cuttle --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8 >"$out.stdout" 2>"$out.stderr" &
  RUN_PID=$!
  if ! wait_for 15 bash -c "grep -q 'admin=' '$out.stderr'"; then
    fail "image runs as UID $PROOF_UID:0 (no listening line)"
    sed 's/^/deploy-check:   /' "$out.stderr"
    kill "$RUN_PID" 2>/dev/null || true
    return
  fi
  local paddr aaddr cpid="" p
  paddr=$(addr_from addr "$out.stderr")
  aaddr=$(addr_from admin "$out.stderr")
  for p in $(descendants "$RUN_PID"); do
    if [[ $(cat "/proc/$p/comm" 2>/dev/null) == cuttle ]]; then cpid=$p; fi
  done
  if [[ -z $cpid ]]; then
    fail "image: cuttle process found under buildah run"
    kill "$RUN_PID" 2>/dev/null || true
    return
  fi
  check "image runs as UID $PROOF_UID:0 and gets ready" "$(grep -E '^(Uid|Gid):' "/proc/$cpid/status" 2>/dev/null | awk '{print $1 $2}' | tr '\n' ' ')" -- \
    wait_for 10 ready "$aaddr"
  local r1
  r1=$(fetch "$paddr")
  check "image serves through the proxy" "$r1" -- [ "$r1" == "200 $ARTIFACT_SHA" ]
  check "image's /var/cache/cuttle is writable by the random UID" "$(find "$mnt/var/cache/cuttle" -type f | wc -l) file(s) under /var/cache/cuttle" -- \
    wait_for 10 bash -c "[[ -n \$(find '$mnt/var/cache/cuttle/v2/objects' -type f 2>/dev/null) ]] && ! grep -q 'disk cache unavailable' '$out.stderr'"
  kill -TERM "$cpid" 2>/dev/null || true
  local rc=0
  wait "$RUN_PID" || rc=$?
  RUN_PID=""
  check "image exits 0 on SIGTERM" "exit $rc" -- [ "$rc" -eq 0 ]
  "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
[[ -n $OPORT ]] && image_run

# ---------------------------------------------------------------------------------------
# arbitrary-UID proof: the static binary (the image's own bytes) as UID 1000680000, GID 0,
# no supplementary groups, no capabilities, no-new-privs, in a private mount namespace whose
# root is read-only; only the cache directory is writable.

PROOF_DIR=$(mktemp -d /tmp/cuttle-proof.XXXXXX)
chmod 0755 "$PROOF_DIR"
install -m 0755 "$WORK/out/cuttle-from-image" "$PROOF_DIR/cuttle"
mkdir -m 0770 "$PROOF_DIR/cache"
chgrp 0 "$PROOF_DIR/cache"
mkdir -m 0755 "$PROOF_DIR/ro-cache" # root's, on the read-only root: unwritable

SETPRIV=(setpriv --reuid "$PROOF_UID" --regid 0 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs --)

# proof_start NAME CACHE_DIR: starts cuttle as above; sets P_PID, P_OUT (stdout file), P_ERR.
proof_start() {
  local name=$1 cache=$2
  P_OUT=$WORK/out/proof-$name.stdout
  P_ERR=$WORK/out/proof-$name.stderr
  # The inner script: make the cache directory its own (writable) mount, make / read-only,
  # show that nothing else is writable for the UID, then become cuttle (same pid).
  local inner
  inner=$(
    cat <<EOF
set -e
mount --bind '$PROOF_DIR/cache' '$PROOF_DIR/cache'
mount -o remount,bind,ro /
# The cache directory is writable for the UID (so the refusals below mean something)...
${SETPRIV[*]} sh -c "echo x > '$PROOF_DIR/cache/.cuttle-write-probe' && rm '$PROOF_DIR/cache/.cuttle-write-probe'" || { echo "cache not writable" >&2; exit 4; }
# ...and nothing else is.
for d in / /tmp /var/tmp /etc '$PROOF_DIR' '$PROOF_DIR/ro-cache' /root; do
  if ${SETPRIV[*]} sh -c "echo x > '\$d/.cuttle-write-probe'" 2>/dev/null; then
    echo "writable: \$d" >&2
    exit 3
  fi
done
echo "write-probe: the cache directory and nothing else" >&2
exec ${SETPRIV[*]} '$PROOF_DIR/cuttle' --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --allow-dest 127.0.0.0/8 --cache-dir '$cache' --log-level info
EOF
  )
  P_T0=$(date +%s%N)
  unshare --mount --propagation private -- bash -c "$inner" >"$P_OUT" 2>"$P_ERR" &
  P_PID=$!
}
proof_stop() { # sends SIGTERM, returns the exit code in P_RC
  kill -TERM "$P_PID" 2>/dev/null || true
  P_RC=0
  wait "$P_PID" || P_RC=$?
}

proof_run() {
  proof_start writable "$PROOF_DIR/cache"
  if ! wait_for 15 bash -c "grep -q 'admin=' '$P_ERR' || ! kill -0 $P_PID 2>/dev/null"; then :; fi
  local aaddr paddr
  aaddr=$(addr_from admin "$P_ERR")
  paddr=$(addr_from addr "$P_ERR")
  if [[ -z $aaddr ]] || ! wait_for 10 ready "$aaddr"; then
    fail "proof: cuttle starts as UID $PROOF_UID on a read-only root"
    sed 's/^/deploy-check:   /' "$P_ERR"
    proof_stop
    return
  fi
  local t1 ms
  t1=$(date +%s%N)
  ms=$(((t1 - P_T0) / 1000000))
  local st
  st=$(grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs):' "/proc/$P_PID/status" | awk '{printf "%s%s ", $1, $2}')
  check "proof: cuttle ready as UID $PROOF_UID, GID 0, no groups, no capabilities, no-new-privs" "$st; ready in ${ms} ms (incl. unshare/mount/setpriv)" -- \
    bash -c "grep -q '^Uid:.$PROOF_UID' /proc/$P_PID/status && grep -q '^Gid:.0' /proc/$P_PID/status && grep -q '^CapEff:.0000000000000000' /proc/$P_PID/status && grep -q '^CapBnd:.0000000000000000' /proc/$P_PID/status && grep -q '^NoNewPrivs:.1' /proc/$P_PID/status && [[ -z \$(grep '^Groups:' /proc/$P_PID/status | cut -d: -f2 | tr -d ' \t') ]]"
  check "proof: for the UID only the cache directory is writable" "/, /tmp, /var/tmp, /etc, /root, the binary's directory refuse writes" -- \
    grep -q '^write-probe: the cache directory and nothing else' "$P_ERR"
  check "proof: root filesystem read-only in cuttle's mount namespace, cache directory read-write" "" -- \
    bash -c "awk '\$5 == \"/\" {print \$6}' /proc/$P_PID/mountinfo | grep -q '^ro' && awk -v d='$PROOF_DIR/cache' '\$5 == d {print \$6}' /proc/$P_PID/mountinfo | grep -q '^rw'"
  local r1 r2
  r1=$(fetch "$paddr")
  r2=$(fetch "$paddr")
  check "proof: proxies (two GETs, bodies intact)" "$r1 / $r2" -- [ "$r1" == "200 $ARTIFACT_SHA" -a "$r2" == "200 $ARTIFACT_SHA" ]
  # The access log is written in batches (every 20 ms): the lines may follow the responses.
  wait_for 5 grep -Eq 'TCP_(MEM_)?HIT/200' "$P_OUT" || true
  check "proof: second request is a cache hit (access log on stdout)" "$(grep -o 'TCP_[A-Z_]*/200' "$P_OUT" | tr '\n' ' ')" -- \
    bash -c "grep -q 'TCP_MISS/200' '$P_OUT' && grep -Eq 'TCP_(MEM_)?HIT/200' '$P_OUT'"
  check "proof: cache written to disk (only place written)" "" -- \
    wait_for 10 bash -c "[[ -n \$(find '$PROOF_DIR/cache/v2/objects' -type f -user $PROOF_UID 2>/dev/null) ]]"
  check "proof: diagnostics on stderr, access log on stdout only" "" -- \
    bash -c "grep -q 'cuttle listening' '$P_ERR' && ! grep -q 'cuttle listening' '$P_OUT' && ! grep -q 'TCP_' '$P_ERR'"
  proof_stop
  check "proof: exits 0 on SIGTERM" "exit $P_RC; $(tail -n1 "$P_ERR" | sed 's/^[^ ]* *//')" -- [ "$P_RC" -eq 0 ]

  # Restart on the same cache: the entry comes back from disk.
  proof_start restart "$PROOF_DIR/cache"
  wait_for 15 bash -c "grep -q 'admin=' '$P_ERR' || ! kill -0 $P_PID 2>/dev/null" || true
  aaddr=$(addr_from admin "$P_ERR")
  paddr=$(addr_from addr "$P_ERR")
  if [[ -n $aaddr ]] && wait_for 10 ready "$aaddr"; then
    r1=$(fetch "$paddr")
    # The access log is written in batches (every 20 ms): the line may follow the response.
    wait_for 5 grep -q 'TCP_HIT/200' "$P_OUT" || true
    check "proof: after a restart the object is served from the disk cache" "$r1 $(grep -o 'TCP_[A-Z_]*/200' "$P_OUT" | tr '\n' ' ')" -- \
      bash -c "[[ '$r1' == '200 $ARTIFACT_SHA' ]] && grep -q 'TCP_HIT/200' '$P_OUT'"
  else
    fail "proof: restart on the same cache"
    sed 's/^/deploy-check:   /' "$P_ERR"
  fi
  proof_stop
  check "proof: restarted instance exits 0 on SIGTERM" "exit $P_RC" -- [ "$P_RC" -eq 0 ]

  # Unwritable cache directory: still proxies, says why once.
  proof_start unwritable "$PROOF_DIR/ro-cache"
  wait_for 15 bash -c "grep -q 'admin=' '$P_ERR' || ! kill -0 $P_PID 2>/dev/null" || true
  aaddr=$(addr_from admin "$P_ERR")
  paddr=$(addr_from addr "$P_ERR")
  if [[ -n $aaddr ]] && wait_for 10 ready "$aaddr"; then
    r1=$(fetch "$paddr")
    r2=$(fetch "$paddr")
    check "proof: unwritable cache directory: still proxies" "$r1 / $r2" -- [ "$r1" == "200 $ARTIFACT_SHA" -a "$r2" == "200 $ARTIFACT_SHA" ]
    local why
    why=$(grep 'disk cache unavailable' "$P_ERR" | sed 's/^[^ ]* *//')
    check "proof: unwritable cache directory: one log line says why" "$why" -- \
      bash -c "[[ \$(grep -c 'disk cache unavailable' '$P_ERR') -eq 1 ]] && [[ -z \$(find '$PROOF_DIR/ro-cache' -mindepth 1) ]]"
  else
    fail "proof: starts with an unwritable cache directory"
    sed 's/^/deploy-check:   /' "$P_ERR"
  fi
  proof_stop
  check "proof: unwritable-cache instance exits 0 on SIGTERM" "exit $P_RC" -- [ "$P_RC" -eq 0 ]
}
[[ -n $OPORT ]] && proof_run

relay "$PY" "${CHECK[@]}" ready-time "$WORK/out/cuttle-from-image" --runs 5

# ---------------------------------------------------------------------------------------
# manifests: render, validate against the Kubernetes schemas, keep the rules

validate() { # validate LABEL FILE...: kubernetes-validate --strict for every pinned version
  local label=$1 v out
  shift
  for v in "${KUBE_VERSIONS[@]}"; do
    if out=$("$KV" --strict --quiet -k "$v" "$@" 2>&1); then
      pass "kubernetes-validate --strict -k $v $label ($(grep -c '^kind:' "$@" | awk -F: '{s+=$NF} END {print s}') objects)"
    else
      fail "kubernetes-validate --strict -k $v $label"
      echo "$out" | sed 's/^/deploy-check:   /'
    fi
  done
}
policy() { relay "$PY" "${CHECK[@]}" policy --cuttle "$BIN" "$@"; }

# Kubernetes: the resource files as written, then base and overlays as kustomize renders them.
K=deploy/kubernetes
mapfile -t resource_files < <("$PY" -c '
import sys, yaml, pathlib
for k in sys.argv[1:]:
    d = pathlib.Path(k).parent
    for r in yaml.safe_load(open(k)).get("resources", []):
        p = d / r
        if p.is_file():
            print(p)
' "$K/base/kustomization.yaml" "$K"/overlays/*/kustomization.yaml)
validate "deploy/kubernetes resource files" "${resource_files[@]}"
for dir in "$K/base" "$K"/overlays/*; do
  name=$(basename "$dir")
  if kubectl kustomize "$dir" >"$WORK/out/kustomize-$name.yaml" 2>"$WORK/out/kustomize-$name.err"; then
    pass "kubectl kustomize $dir"
    validate "kustomize $name" "$WORK/out/kustomize-$name.yaml"
  else
    fail "kubectl kustomize $dir: $(tail -n1 "$WORK/out/kustomize-$name.err")"
  fi
done
policy "$WORK/out/kustomize-base.yaml" --label "kustomize base"
policy "$WORK/out/kustomize-nodeport.yaml" --label "kustomize nodeport" --auth --node-port 31280 --placeholder-htpasswd
policy "$WORK/out/kustomize-large-cache.yaml" --label "kustomize large-cache"
policy "$WORK/out/kustomize-shared-cache.yaml" --label "kustomize shared-cache" --replicas 3
# The interception overlay, with Secret cuttle-ca made as its comments say (cuttle ca init).
INTERCEPT_HOSTS=$(sed -n '/CUTTLE_INTERCEPT/{n;s/ *value: *//p}' "$K/overlays/intercept/intercept.yaml")
if "$BIN" ca init --dir "$WORK/out/cuttle-ca" --intercept "$INTERCEPT_HOSTS" >/dev/null &&
  kubectl create secret generic cuttle-ca --from-file=ca.pem="$WORK/out/cuttle-ca/ca.pem" \
    --from-file=ca-key.pem="$WORK/out/cuttle-ca/ca-key.pem" --dry-run=client -o yaml >"$WORK/out/cuttle-ca.yaml"; then
  pass "interception CA made with cuttle ca init for $INTERCEPT_HOSTS"
  policy "$WORK/out/kustomize-intercept.yaml" --label "kustomize intercept" --with "$WORK/out/cuttle-ca.yaml" \
    --expect-intercept "${INTERCEPT_HOSTS%%,*}"
else
  fail "interception CA made with cuttle ca init for '$INTERCEPT_HOSTS'"
fi

# README's way to add the real secrets: an overlay of one's own that merges them in.
MINE=$WORK/out/my-overlay
mkdir -p "$MINE"
printf '%s' 'corp%5Cbuild:p%40ss:proxy.corp.example:8080' >"$MINE/cache-peer"
printf '%s\n' 'build:$2b$05$.PI.OYJJRRfse9b2Yxl/L.Fbw/kCd24/yKyg3P0SkNQueFfZzwo52' >"$MINE/htpasswd"
cat >"$MINE/kustomization.yaml" <<EOF
resources:
  - $(realpath --relative-to="$MINE" "$K/overlays/nodeport")
secretGenerator:
  - name: cuttle-secrets
    behavior: merge
    files:
      - cache-peer
      - htpasswd
images:
  - name: cuttle
    newName: registry.example/cuttle
    newTag: "0.1.0"
EOF
if kubectl kustomize "$MINE" >"$WORK/out/kustomize-my-overlay.yaml" 2>"$WORK/out/kustomize-my-overlay.err"; then
  pass "kubectl kustomize: an overlay of one's own merging CACHE_PEER and users into nodeport"
  validate "kustomize my-overlay" "$WORK/out/kustomize-my-overlay.yaml"
  policy "$WORK/out/kustomize-my-overlay.yaml" --label "kustomize my-overlay" --auth --node-port 31280 \
    --expect-peer proxy.corp.example:8080
else
  fail "kubectl kustomize my-overlay: $(tail -n1 "$WORK/out/kustomize-my-overlay.err")"
fi

# Helm: lint, schema, render several value sets with the real Helm engine (helm-python-sdk
# binds Helm's Go SDK; no helm binary, no network).
relay "$PY" "${CHECK[@]}" helm deploy/helm/cuttle "$WORK/out" --kube-version "${KUBE_VERSIONS[0]}" \
  --ca-dir "$WORK/out/cuttle-ca"
for f in "$WORK"/out/helm-*.yaml; do
  case $f in *.existing.yaml) continue ;; esac
  name=$(basename "$f" .yaml)
  validate "$name" "$f"
  args=()
  [[ -f $WORK/out/$name.existing.yaml ]] && args+=(--with "$WORK/out/$name.existing.yaml")
  case $name in
    helm-nodeport) args+=(--auth --node-port 31280) ;;
    helm-existing-secrets) args+=(--auth) ;;
    helm-large | helm-shared) args+=(--replicas 3) ;;
    helm-intercept) args+=(--expect-intercept registry.example.org) ;;
  esac
  policy "$f" --label "$name" "${args[@]}"
done

# OpenShift: the template processed as `oc process` does, its objects validated.
relay "$PY" "${CHECK[@]}" openshift deploy/openshift/template.yaml "$WORK/out"
validate "openshift template objects" "$WORK/out/openshift.yaml"
policy "$WORK/out/openshift.yaml" --label openshift --auth --node-port 31280

finish
