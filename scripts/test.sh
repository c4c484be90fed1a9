#!/usr/bin/env bash
# The project's test command (README): installs the outside programs the integration tests
# drive when they are missing, then runs every Cargo test target. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh --test it chaining:: -- --nocapture`.
#
# Set CUTTLE_TEST_NO_INSTALL=1 to never install anything (missing programs then make the
# tests that need them fail, loudly: they never skip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "test.sh: $*" >&2; }

# What the tests need from outside Cargo: "apt-package probe", the probe being a command name
# or an absolute path (squid lives in /usr/sbin, which is not on every user's PATH).
# chromium drives the admin status page (tests/it/status_page.rs); npm, pip, a JDK (java,
# keytool), openssl and sha1sum are the real clients of tests/it/intercept_clients.rs (the
# machine image has them already; Debian's packages are the fallback).
# Maven (mvn), apt-get with apt-ftparchive (apt-utils) and dpkg-deb, and the go command
# (golang-go) are the clients and repository tools of tests/it/mirror_clients.rs.
# The MIT KDC and Squid's NTLM and Kerberos helpers are the parents of
# tests/it/parent_auth.rs (faketime gives one KDC a skewed clock).
REQUIREMENTS=(
  "squid /usr/sbin/squid"
  "squid /usr/lib/squid/basic_ncsa_auth"
  "squid /usr/lib/squid/ntlm_fake_auth"
  "squid /usr/lib/squid/negotiate_kerberos_auth"
  "krb5-kdc /usr/sbin/krb5kdc"
  "krb5-kdc /usr/sbin/kdb5_util"
  "krb5-admin-server /usr/sbin/kadmin.local"
  "faketime /usr/bin/faketime"
  "curl curl"
  "chromium /usr/bin/chromium"
  "npm npm"
  "python3 python3"
  "python3-pip pip3"
  "openssl openssl"
  "default-jdk-headless javac"
  "default-jdk-headless keytool"
  "coreutils sha1sum"
  "maven mvn"
  "apt-utils apt-ftparchive"
  "dpkg dpkg-deb"
  "golang-go go"
)

present() {
  case $1 in
    /*) [[ -x $1 ]] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Runs a command as root: directly, through sudo, or not at all.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "need root to run: $*"
    return 1
  fi
}

installed_squid=false

install_missing() {
  local missing=() entry pkg probe
  for entry in "${REQUIREMENTS[@]}"; do
    read -r pkg probe <<<"$entry"
    if ! present "$probe" && [[ " ${missing[*]-} " != *" $pkg "* ]]; then
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0

  if [[ ${CUTTLE_TEST_NO_INSTALL:-0} == 1 ]]; then
    log "missing ${missing[*]} (CUTTLE_TEST_NO_INSTALL=1: not installing; tests needing them will fail)"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing[*]} and no apt-get here: install them with your package manager"
    exit 1
  fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
  [[ " ${missing[*]} " == *" squid "* ]] && installed_squid=true
  return 0
}

# A live process (a zombie is dead already, but `kill -0` still succeeds on it).
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# Debian's squid package starts a system squid on port 3128. The tests start their own
# (private config, service name `cuttletest*`, free ports); the system one only takes
# resources and port 3128, so stop it. If this script installed squid, also disable it.
stop_system_squid() {
  local pids=() pid
  for pid in $(pgrep -x squid 2>/dev/null || true); do
    running "$pid" || continue
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- '-n cuttletest'; then
      pids+=("$pid")
    fi
  done
  [[ ${#pids[@]} -eq 0 ]] && return 0

  log "stopping the system squid (pid ${pids[*]}); tests start their own"
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    as_root systemctl stop squid 2>/dev/null || true
    if $installed_squid; then as_root systemctl disable squid 2>/dev/null || true; fi
  fi
  if command -v service >/dev/null 2>&1; then
    as_root service squid stop >/dev/null 2>&1 || true
  fi
  if $installed_squid && command -v update-rc.d >/dev/null 2>&1; then
    as_root update-rc.d squid disable >/dev/null 2>&1 || true
  fi

  # Whatever the service manager left running: only the pids found above.
  local deadline=$((SECONDS + 15)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      if running "$pid"; then alive+=("$pid"); fi
    done
    [[ ${#alive[@]} -eq 0 ]] && return 0
    if ((SECONDS >= deadline)); then
      log "system squid still running (pid ${alive[*]}): killing it"
      as_root kill -KILL "${alive[@]}" 2>/dev/null || true
      return 0
    fi
    if ((SECONDS + 13 >= deadline)); then
      as_root kill -TERM "${alive[@]}" 2>/dev/null || true
    fi
    sleep 0.5
  done
}

# s3s-fs, an S3 server over a directory, is a shared cache store of tests/it/shared_cache.rs
# (a Cargo-installed binary; 0.14.1 builds with the rustc of rust-version 1.85 and later).
S3S_FS_VERSION=0.14.1
install_s3s_fs() {
  if command -v s3s-fs >/dev/null 2>&1 || [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs ]]; then
    return 0
  fi
  if [[ ${CUTTLE_TEST_NO_INSTALL:-0} == 1 ]]; then
    log "missing s3s-fs (CUTTLE_TEST_NO_INSTALL=1: not installing; tests/shared_cache.rs will fail)"
    return 0
  fi
  log "installing s3s-fs $S3S_FS_VERSION with cargo"
  cargo install --locked s3s-fs --version "$S3S_FS_VERSION" --features binary ||
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary
}

# moto in server mode (`moto_server`), the second S3 implementation of
# tests/it/shared_cache.rs, from PyPI into a venv of its own (Debian 12's Python refuses
# `pip install` outside one, PEP 668); the tests find it there or on PATH.
MOTO_VERSION=5.2.1
MOTO_VENV=${CUTTLE_TEST_TOOLS:-$HOME/.cache/cuttle-test}/moto
install_moto() {
  if command -v moto_server >/dev/null 2>&1 || [[ -x $MOTO_VENV/bin/moto_server ]]; then
    return 0
  fi
  if [[ ${CUTTLE_TEST_NO_INSTALL:-0} == 1 ]]; then
    log "missing moto_server (CUTTLE_TEST_NO_INSTALL=1: not installing; the moto tests will fail)"
    return 0
  fi
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    # Debian splits venv support out of python3.
    log "installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3-venv
  fi
  log "installing moto[server] $MOTO_VERSION into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

install_missing
install_s3s_fs
install_moto
stop_system_squid

cargo test --all-targets "$@"
if [[ $# -eq 0 ]]; then
  # A 2-minute soak (README "The soak"): disk, inode and memory bounds under churn, with
  # faults injected (the debug binaries `cargo test` just built; root mounts its tmpfs).
  # `du` of the cache directory <= 1.1 x --cache-size and RSS (each sample and the peak)
  # within the memory formula throughout. CUTTLE_TEST_SOAK=0 skips it.
  if [[ ${CUTTLE_TEST_SOAK:-1} != 0 ]]; then
    cargo build --bin cuttle --example soak
    target/debug/examples/soak --cuttle target/debug/cuttle --duration 2m --warmup 40s \
      --clients 32 --cache-size 64MiB --cache-mem 32MiB --max-connections 128 \
      --label "CI, debug build" --out target/soak-ci
  else
    log "soak NOT run (CUTTLE_TEST_SOAK=0)"
  fi
  # The full run also builds and checks the image and the deployment files (README "Deploy").
  scripts/deploy-check.sh
fi
