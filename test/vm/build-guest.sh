#!/usr/bin/env bash
# Builds the tiny Linux guest that the kernel-NBD tests boot under qemu
# (test/helpers/vm.ts, docs/testing-vm.md):
#
#   $PXD_VM_CACHE/vmlinuz             Debian 12's kernel (linux-image-6.1.0-NN-amd64)
#   $PXD_VM_CACHE/vmlinux             the same, uncompressed ELF: qemu boots it (PVH) 2x faster
#   $PXD_VM_CACHE/initramfs.cpio.gz   busybox-static, that kernel's nbd/virtio-net/ext4
#                                     modules, mkfs.ext4/e2fsck/resize2fs/blkid with their libs, /init
#   $PXD_VM_CACHE/guest.env           KERNEL_VERSION=, KERNEL_IMAGE= (the file to boot), ...
#
# Cached: a second run that finds the files built by this same script does
# nothing (it does not even ask apt). --refresh re-resolves linux-image-amd64 and
# rebuilds if the kernel package changed; --force rebuilds regardless.
# Nothing is installed: the kernel package is fetched with `apt-get download`
# and unpacked with `dpkg-deb -x` into the cache.
#
# Usage: test/vm/build-guest.sh [--force|--refresh]
# Exits non-zero with one line "build-guest: ..." when something it needs is missing.
set -euo pipefail

CACHE=${PXD_VM_CACHE:-/var/cache/pxd-vm}
here=$(cd "$(dirname "$0")" && pwd)
# The cache is keyed on this script and the guest's /init: edit either and it rebuilds.
self_sum=$(cat "$0" "$here/guest-init.sh" | sha256sum | cut -c1-16)
mode=${1:-}

die() { echo "build-guest: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2"; }

need qemu-system-x86_64 "qemu-system-x86 (--no-install-recommends is enough)"
need busybox busybox-static
need cpio cpio
need gzip gzip
need xz xz-utils
need flock util-linux
need ldd libc-bin
need mkfs.ext4 e2fsprogs
need e2fsck e2fsprogs
need resize2fs e2fsprogs
need blkid util-linux
need apt-get apt
need dpkg-deb dpkg
# The guest has no libc of its own: busybox must be the static build.
busybox_bin=$(command -v busybox)
if ldd "$busybox_bin" >/dev/null 2>&1; then die "$busybox_bin is dynamically linked: apt-get install busybox-static"; fi

mkdir -p "$CACHE" 2>/dev/null || die "cannot create $CACHE (set PXD_VM_CACHE to a writable dir)"
[ -w "$CACHE" ] || die "$CACHE is not writable (set PXD_VM_CACHE to a writable dir)"

exec 9>"$CACHE/.lock"
flock 9 # one build at a time; a second caller waits, then finds the cache built

fresh() {
  [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initramfs.cpio.gz" ] && [ -s "$CACHE/guest.env" ] &&
    grep -qx "BUILD_SCRIPT=$self_sum" "$CACHE/guest.env"
}

if [ "$mode" != --force ] && [ "$mode" != --refresh ] && fresh; then
  echo "build-guest: cached in $CACHE ($(grep '^KERNEL_PACKAGE=' "$CACHE/guest.env" | cut -d= -f2))"
  exit 0
fi

# The concrete kernel package behind linux-image-amd64 (its candidate).
resolve_kernel() {
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -1
}
kpkg=$(resolve_kernel)
if [ -z "$kpkg" ]; then
  echo "build-guest: apt knows no linux-image-amd64 yet, running apt-get update" >&2
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  kpkg=$(resolve_kernel)
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends linux-image-amd64)"
kver=${kpkg#linux-image-}

if [ "$mode" = --refresh ] && fresh && grep -qx "KERNEL_PACKAGE=$kpkg" "$CACHE/guest.env"; then
  echo "build-guest: cached in $CACHE ($kpkg, still the candidate)"
  exit 0
fi

echo "build-guest: building the guest from $kpkg into $CACHE" >&2
work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

# --- the kernel package: download (not install), unpack -----------------------
# The .deb stays in $CACHE/debs (one version), so a rebuild after an edit of
# this script or of guest-init.sh does not download it again.
kcand=$(apt-cache policy "$kpkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
mkdir -p "$CACHE/debs"
deb=$(ls "$CACHE/debs/${kpkg}_${kcand//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
  download() { (cd "$CACHE/debs" && apt-get download "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2); }
  if ! download; then
    echo "build-guest: apt-get download $kpkg failed, running apt-get update and trying again" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    download || die "apt-get download $kpkg failed"
  fi
  deb=$(ls -t "$CACHE/debs/${kpkg}_"*.deb 2>/dev/null | head -1 || true)
  [ -n "$deb" ] || die "apt-get download $kpkg left no .deb in $CACHE/debs"
  for old in "$CACHE"/debs/*.deb; do [ "$old" = "$deb" ] || rm -f "$old"; done
fi
kdeb_version=$(dpkg-deb -f "$deb" Version)
mkdir "$work/k"
dpkg-deb -x "$deb" "$work/k"
[ -s "$work/k/boot/vmlinuz-$kver" ] || die "$kpkg has no boot/vmlinuz-$kver"
moddir="$work/k/lib/modules/$kver"
[ -d "$moddir" ] || die "$kpkg has no lib/modules/$kver"
config="$work/k/boot/config-$kver"

# --- modules: the roots, their dependencies first -----------------------------
# nbd: the kernel NBD client. virtio_net + virtio_pci: the NIC (qemu's
# virtio-net-pci). ext4 (jbd2, mbcache, crc16): the filesystem the tests put
# on /dev/nbd0. crc32c_generic: ext4/jbd2 checksum with the crypto API's
# "crc32c", which is looked up by name, not linked, so no depends= names it.
roots=(virtio_pci virtio_net crc32c_generic ext4 nbd)

declare -A modpath=()
while IFS= read -r f; do
  n=$(basename "$f"); n=${n%%.ko*}; n=${n//-/_}
  modpath[$n]=$f
done < <(find "$moddir/kernel" -name '*.ko*')

# A module's own depends= list (.modinfo strings), decompressing if needed.
mod_deps() {
  local f=$1
  case "$f" in
    *.ko.xz) xz -dc "$f" ;;
    *.ko.zst) zstd -dcq "$f" ;;
    *.ko.gz) gzip -dc "$f" ;;
    *) cat "$f" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -1 | tr ',' ' '
}

# Built in? Then there is nothing to load. CONFIG names do not map 1:1 onto
# module names, so ask modules.builtin (which lists the built-in objects).
builtin_has() { grep -q "/$1\.ko\$" "$moddir/modules.builtin" 2>/dev/null || grep -q "/${1//_/-}\.ko\$" "$moddir/modules.builtin" 2>/dev/null; }

order=()
declare -A seen=()
visit() {
  local m=${1//-/_} d
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  if [ -z "${modpath[$m]:-}" ]; then
    builtin_has "$m" && return 0
    die "module $m is neither in $kpkg nor built in"
  fi
  for d in $(mod_deps "${modpath[$m]}"); do visit "$d"; done
  order+=("$m")
}
for r in "${roots[@]}"; do visit "$r"; done
for c in CONFIG_DEVTMPFS CONFIG_BLK_DEV_INITRD CONFIG_RD_GZIP CONFIG_SERIAL_8250_CONSOLE CONFIG_PACKET CONFIG_UNIX CONFIG_INET CONFIG_TMPFS; do
  grep -qx "$c=y" "$config" || die "$kpkg is not built with $c=y, the guest's /init needs it"
done

# --- the root filesystem ------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,run,mnt,root,lib/modules/"$kver"}
cp "$busybox_bin" "$root/bin/busybox"
# Relative applet links: an absolute /bin/busybox link inside $root would point
# at the host's busybox while this script writes into $root.
for a in $("$busybox_bin" --list-full); do
  up=$(dirname "$a" | sed 's|[^/][^/]*|..|g')
  [ -e "$root/$a" ] || [ -L "$root/$a" ] || ln -s "$up/bin/busybox" "$root/$a"
done

: >"$root/lib/modules/$kver/load-order"
for m in "${order[@]}"; do
  src=${modpath[$m]}
  case "$src" in
    *.ko.xz) xz -dc "$src" ;;
    *.ko.zst) zstd -dcq "$src" ;;
    *.ko.gz) gzip -dc "$src" ;;
    *) cat "$src" ;;
  esac >"$root/lib/modules/$kver/$m.ko"
  echo "$m" >>"$root/lib/modules/$kver/load-order"
done

# Host programs with their shared libraries and the dynamic loader, at the
# paths ldd names (the guest's /lib and /lib64 are plain directories).
copy_with_libs() {
  local bin=$1 dest=$2 lib
  mkdir -p "$root/$(dirname "$dest")"
  cp -L --remove-destination "$bin" "$root/$dest" # replaces a busybox applet link, never follows it
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    [ -f "$root/$lib" ] && [ ! -L "$root/$lib" ] && continue
    mkdir -p "$root/$(dirname "$lib")"
    cp -L --remove-destination "$lib" "$root/$lib"
  done
}
copy_with_libs "$(command -v mke2fs)" /sbin/mke2fs
for t in mkfs.ext4 mkfs.ext2 mkfs.ext3; do rm -f "$root/sbin/$t"; ln -s mke2fs "$root/sbin/$t"; done
copy_with_libs "$(command -v e2fsck)" /sbin/e2fsck
rm -f "$root/sbin/fsck.ext4"; ln -s e2fsck "$root/sbin/fsck.ext4"
copy_with_libs "$(command -v resize2fs)" /sbin/resize2fs # grows a mounted ext4 (test/e2e/vm-attach-resize.test.ts)
copy_with_libs "$(command -v blkid)" /sbin/blkid # the real one: busybox's applet link replaced
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "pxd-guest" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n10.0.2.2 host\n' >"$root/etc/hosts"
install -m 0755 "$here/guest-init.sh" "$root/init"
echo "$kver" >"$root/etc/pxd-guest-kernel"

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -6 >"$work/initramfs.cpio.gz"

# --- the kernel image -----------------------------------------------------------
# Under TCG, decompressing the bzImage takes ~4 s of a ~8 s boot. With
# CONFIG_PVH=y qemu can boot the uncompressed ELF vmlinux directly (PVH entry,
# no decompressor, no real-mode setup): ~3 s to the test script. Cut it out of
# the bzImage (as scripts/extract-vmlinux does); fall back to the bzImage.
cp "$work/k/boot/vmlinuz-$kver" "$work/vmlinuz"
image=vmlinuz
extract_vmlinux() {
  local magic cmd off
  case "$(grep -oE '^CONFIG_KERNEL_(XZ|ZSTD|GZIP)=y' "$config" | head -1)" in
    CONFIG_KERNEL_XZ=y) magic='\xfd7zXZ\x00'; cmd="xz -dc --single-stream" ;;
    CONFIG_KERNEL_ZSTD=y) magic='\x28\xb5\x2f\xfd'; cmd="zstd -dcq" ;;
    CONFIG_KERNEL_GZIP=y) magic='\x1f\x8b\x08'; cmd="gzip -dc" ;;
    *) return 1 ;;
  esac
  command -v "${cmd%% *}" >/dev/null || return 1
  for off in $(LC_ALL=C grep -obUaP "$magic" "$work/vmlinuz" | cut -d: -f1 | head -5); do
    tail -c +$((off + 1)) "$work/vmlinuz" | $cmd >"$work/vmlinux" 2>/dev/null || true
    [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
  done
  return 1
}
if grep -qx CONFIG_PVH=y "$config" && extract_vmlinux; then
  image=vmlinux
else
  echo "build-guest: booting the bzImage (no PVH ELF could be cut out of it): slower" >&2
  rm -f "$work/vmlinux"
fi

# --- install into the cache ---------------------------------------------------
{
  echo "KERNEL_PACKAGE=$kpkg"
  echo "KERNEL_PACKAGE_VERSION=$kdeb_version"
  echo "KERNEL_VERSION=$kver"
  echo "KERNEL_IMAGE=$image"
  echo "MODULES=${order[*]}"
  echo "BUSYBOX=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)"
  echo "BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "BUILD_SCRIPT=$self_sum"
} >"$work/guest.env"
mv -f "$work/vmlinuz" "$CACHE/vmlinuz"
if [ "$image" = vmlinux ]; then mv -f "$work/vmlinux" "$CACHE/vmlinux"; else rm -f "$CACHE/vmlinux"; fi
mv -f "$work/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"
mv -f "$work/guest.env" "$CACHE/guest.env" # last: it marks the cache complete
echo "build-guest: built $CACHE ($kpkg $kdeb_version; modules: ${order[*]}; initramfs $(du -h "$CACHE/initramfs.cpio.gz" | cut -f1))"
