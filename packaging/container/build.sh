#!/bin/sh
# Builds the agent's container image from scratch with buildah (no registry, no base image):
#
#   packaging/container/build.sh BINARY TAG
#
# e.g. `packaging/container/build.sh target/release/sluice localhost/sluice:0.1.0`
# (`cargo xtask image` does exactly that after a release build).
#
# The image holds the binary (debug info stripped), the shared libraries it is linked
# against as `ldd` names them (glibc's loader, libc, libm, libgcc_s: the binary is
# dynamically linked to glibc, and glibc is also what resolves hostname targets), the
# default configuration, the shipped policy packs and an nsswitch.conf. Nothing else: no
# shell, no package manager. The eBPF programs are inside the binary.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 BINARY TAG" >&2
    exit 2
fi
bin=$1
tag=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

ctx=$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/etc/sluice" "$root/usr/share/sluice" "$root/run/sluice" "$root/tmp"
chmod 1777 "$root/tmp"

objcopy --strip-debug "$bin" "$root/usr/bin/sluice"
chmod 0755 "$root/usr/bin/sluice"

# Every library the loader would map, at the path it would map it from.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [ -z "$libs" ]; then
    echo "$0: ldd names no library for $bin" >&2
    exit 1
fi
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cp "$repo/packaging/sluice.yaml" "$root/etc/sluice/sluice.yaml"
cp -R "$repo/policies" "$root/usr/share/sluice/policies"
# /etc/hosts before DNS for hostname targets, as on a host (glibc's default asks DNS first).
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"

version=$("$root/usr/bin/sluice" --version | awk '{ print $2 }')
cp "$here/Containerfile" "$ctx/Containerfile"
buildah bud --quiet --layers=false --build-arg "VERSION=$version" -t "$tag" -f "$ctx/Containerfile" "$ctx"
