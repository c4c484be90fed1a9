#!/usr/bin/env bash
# Builds the cuttle image (deploy/container/Containerfile) from a static musl binary, without
# pulling anything: the image is FROM scratch.
#
#   deploy/container/build-image.sh [IMAGE]        # default IMAGE: localhost/cuttle:<crate version>
#
# Environment:
#   CUTTLE_BINARY   use this static binary instead of running
#                   `cargo build --release --target x86_64-unknown-linux-musl`
#   CONTAINER_TOOL  buildah (default when installed), podman or docker
#   BUILDAH_OPTS    global buildah options, e.g. "--storage-driver vfs" (CI)
#   BUILD_OPTS      extra build options, e.g. "--isolation chroot" (CI)
#   CONTEXT_DIR     where to stage the build context (default: a temporary directory, removed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

log() { echo "build-image.sh: $*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image=${1:-localhost/cuttle:${version}}
target=x86_64-unknown-linux-musl

binary=${CUTTLE_BINARY:-}
if [[ -z $binary ]]; then
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target"
  fi
  cargo build --release --locked --target "$target"
  binary=target/$target/release/cuttle
fi
[[ -x $binary ]] || { log "no binary at $binary"; exit 1; }
# A FROM scratch image has no loader and no libc: the binary must not ask for an interpreter.
if readelf -lW "$binary" | grep -q 'program interpreter'; then
  log "$binary is dynamically linked; build it for $target"
  exit 1
fi

tool=${CONTAINER_TOOL:-}
if [[ -z $tool ]]; then
  for t in buildah podman docker; do
    if command -v "$t" >/dev/null 2>&1; then tool=$t; break; fi
  done
fi
[[ -n $tool ]] || { log "need buildah, podman or docker"; exit 1; }

cleanup_ctx=false
ctx=${CONTEXT_DIR:-}
if [[ -z $ctx ]]; then
  ctx=$(mktemp -d)
  cleanup_ctx=true
fi
trap '$cleanup_ctx && rm -rf "$ctx"' EXIT

# The context, with the modes the image gets (COPY keeps modes, sets owners).
rm -rf "$ctx/rootfs" "$ctx/cache-dir"
mkdir -p "$ctx/rootfs/var/cache" "$ctx/cache-dir/cuttle"
install -m 0755 "$binary" "$ctx/rootfs/cuttle"
strip "$ctx/rootfs/cuttle"
chmod 0755 "$ctx/rootfs" "$ctx/rootfs/var" "$ctx/rootfs/var/cache"
chmod 0770 "$ctx/cache-dir/cuttle"
cp deploy/container/Containerfile "$ctx/Containerfile"

log "building $image with $tool"
case $tool in
  buildah)
    # shellcheck disable=SC2086 # option lists are meant to split
    buildah ${BUILDAH_OPTS:-} bud ${BUILD_OPTS:-} --layers=false -f "$ctx/Containerfile" -t "$image" "$ctx"
    ;;
  podman | docker)
    # shellcheck disable=SC2086
    "$tool" build ${BUILD_OPTS:-} -f "$ctx/Containerfile" -t "$image" "$ctx"
    ;;
  *)
    log "unknown CONTAINER_TOOL $tool"
    exit 1
    ;;
esac
