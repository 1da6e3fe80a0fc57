#!/bin/bash
# build-kit.sh: build (or check) the sbnet VM kit. Idempotent; fast when cached.
#
# The kit is a Debian trixie root (debootstrap --variant=minbase) holding
#   - QEMU >= 10.1 from trixie-backports (it has the vfio-user-pci client),
#   - a Debian cloud guest kernel (linux-image-*-cloud-amd64),
#   - a small busybox initramfs with virtio_net/virtio_pci, the VFIO modules
#     (vfio, vfio_iommu_type1, vfio_pci) and sbnet's /init. The PMD tests
#     append a second cpio archive with sbnet-testpmd to it at run time
#     (tests/vm/run-pmd-pair.sh), so a rebuilt PMD needs no kit rebuild.
# QEMU runs as `chroot ROOT qemu-system-x86_64 ...`; the kernel, the initramfs
# and every socket QEMU opens must therefore live inside ROOT.
#
# With --dpdk it also holds DPDK's own testpmd (Debian trixie's DPDK 24.11):
#   $KIT/dpdk/debs/       the downloaded .debs (dpdk-dev and the librte-*
#                         libraries it links, with their library dependencies
#                         that the root lacks; dpdk-dev itself cannot be
#                         installed: it conflicts with the backports QEMU's libelf)
#   $KIT/dpdk.cpio.gz     a cpio archive the DPDK harness appends to the
#                         initramfs: dpdk-testpmd, the ldd closure of it and
#                         of the drivers net_virtio, mempool_ring and bus_pci
#                         (resolved inside the root), libstdbuf.so and
#                         libgcc_s.so.1 (glibc loads it for pthread_cancel,
#                         which the EAL calls at exit outside --in-memory)
# It is rebuilt only when its recipe (DPDK_RECIPE) or the candidate dpdk-dev
# version changes; the other parts of the kit do not depend on it.
#
# Usage (as root):  tests/vm/build-kit.sh [--dpdk]            # build or verify
#                   tests/vm/build-kit.sh [--dpdk] --print-env # also print KEY=VALUE lines
# Environment:
#   SBNET_VM_DIR          cache directory (default /var/cache/sbnet-vm)
#   SBNET_DEBIAN_MIRROR   Debian mirror URI (default: read from /etc/apt/sources.list*)
#   SBNET_VM_REBUILD=1    throw the cache away and rebuild from scratch
#
# Layout of the cache:
#   $SBNET_VM_DIR/root/                the trixie root (chroot)
#   $SBNET_VM_DIR/root/sbnet/kit/      vmlinuz, initrd.img, kit.env
#   $SBNET_VM_DIR/root/sbnet/run/      per-run directories (sockets, consoles)
# Only the host packages `debootstrap` and `jq` are installed on the host; busybox-static,
# cpio, xz-utils and QEMU are installed inside the trixie root and used there.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VM_DIR="${SBNET_VM_DIR:-/var/cache/sbnet-vm}"
ROOT="$VM_DIR/root"
KIT="$ROOT/sbnet/kit"
SUITE=trixie
MIN_QEMU_MAJOR=10
MIN_QEMU_MINOR=1
# Modules the guest needs (their dependencies are added from modules.dep).
# GUEST_MODULES: the stock driver, loaded by every guest that uses it
# (/lib/modules/load-order). VFIO_MODULES: kernel VFIO for the PMD, loaded
# only by PMD guests (/lib/modules/load-order-vfio). The IOMMU driver
# (intel-iommu) is built into Debian's cloud kernel; it is checked at boot.
GUEST_MODULES="virtio_pci virtio_net"
VFIO_MODULES="vfio vfio_iommu_type1 vfio_pci"
PRINT_ENV=0
WANT_DPDK=0
for arg in "$@"; do
    case "$arg" in
        --print-env) PRINT_ENV=1 ;;
        --dpdk) WANT_DPDK=1 ;;
        *) printf 'build-kit: ERROR: unknown argument %s (--dpdk, --print-env)\n' "$arg" >&2; exit 2 ;;
    esac
done
# The DPDK drivers the guests load with -d (librte_<name>.so.*), and the
# version of the recipe below: change it to rebuild the DPDK part.
DPDK_DRIVERS="net_virtio mempool_ring bus_pci"
DPDK_RECIPE="2 $DPDK_DRIVERS"

T0=$(date +%s.%N)
log() { printf 'build-kit: %s\n' "$*" >&2; }
die() { printf 'build-kit: ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and QEMU need it); run: sudo $0"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported (uname -m: $(uname -m))"
case "$VM_DIR" in /*) ;; *) die "SBNET_VM_DIR must be an absolute path, got '$VM_DIR'";; esac

mkdir -p "$VM_DIR"
# One builder at a time (parallel cargo tests may call us concurrently).
exec 9>"$VM_DIR/.lock"
flock -w 1800 9 || die "timed out waiting for the lock $VM_DIR/.lock"

if [ "${SBNET_VM_REBUILD:-0}" = 1 ]; then
    log "SBNET_VM_REBUILD=1: removing $ROOT"
    rm -rf "$ROOT"
fi

# Run a command inside the root with /proc mounted in a private mount
# namespace, so no mount outlives the command.
in_root() {
    unshare --mount --propagation private /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" || exit 1
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root "$@"' sh "$ROOT" "$@"
}

# ---------------------------------------------------------------- mirror
debian_mirror() {
    if [ -n "${SBNET_DEBIAN_MIRROR:-}" ]; then echo "$SBNET_DEBIAN_MIRROR"; return; fi
    local f uri=""
    # deb822 .sources files: the first URI of a stanza whose Suites are not -security.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            function flush() { if (u != "" && s != "" && s !~ /-security/ && en != "no" && u ~ /debian/ && u !~ /security/) { print u; found=1; exit } u=""; s=""; en="" }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:"    { u=$2 }
            tolower($1) == "suites:"  { s=$0 }
            tolower($1) == "enabled:" { en=tolower($2) }
            END { if (!found) flush() }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    # One-line format: deb [opts] URI SUITE COMPONENTS...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" {
                i=2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) !~ /-security/ && $i ~ /debian/ && $i !~ /security/) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    return 1
}

# ---------------------------------------------------------------- host tools
need_host_pkgs=()
command -v debootstrap >/dev/null || need_host_pkgs+=(debootstrap)
# jq: the harnesses read host-pair's and sbnet-testpmd's JSON with it.
command -v jq >/dev/null || need_host_pkgs+=(jq)
if [ ${#need_host_pkgs[@]} -gt 0 ]; then
    log "installing host packages: ${need_host_pkgs[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_host_pkgs[@]}" >"$VM_DIR/apt-host.log" 2>&1; then
        apt-get update >>"$VM_DIR/apt-host.log" 2>&1 || { tail -20 "$VM_DIR/apt-host.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_host_pkgs[@]}" >>"$VM_DIR/apt-host.log" 2>&1 \
            || { tail -20 "$VM_DIR/apt-host.log" >&2; die "cannot install ${need_host_pkgs[*]} (log: $VM_DIR/apt-host.log)"; }
    fi
fi

# ---------------------------------------------------------------- 1. debootstrap
if [ ! -f "$ROOT/.sbnet-debootstrap-done" ]; then
    MIRROR=$(debian_mirror) || die "cannot find a Debian mirror in /etc/apt/sources.list(.d); set SBNET_DEBIAN_MIRROR"
    log "debootstrap --variant=minbase $SUITE $ROOT $MIRROR (log: $VM_DIR/debootstrap.log)"
    rm -rf "$ROOT"
    if ! debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$VM_DIR/debootstrap.log" 2>&1; then
        tail -30 "$VM_DIR/debootstrap.log" >&2
        [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -30 "$ROOT/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log: $VM_DIR/debootstrap.log)"
    fi
    echo "$MIRROR" >"$ROOT/.sbnet-mirror"
    touch "$ROOT/.sbnet-debootstrap-done"
    log "debootstrap done at $(elapsed) s"
fi
MIRROR=$(cat "$ROOT/.sbnet-mirror")

# ---------------------------------------------------------------- 2. packages in the root
ROOT_PKGS="busybox-static cpio kmod xz-utils zstd gzip ethtool"
if [ ! -f "$ROOT/.sbnet-packages-done" ] || [ "$(cat "$ROOT/.sbnet-packages-done")" != "$ROOT_PKGS" ]; then
    log "installing qemu-system-x86 (trixie-backports) and $ROOT_PKGS in the root (log: $VM_DIR/apt-root.log)"
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $MIRROR $SUITE-backports main
EOF
    # Never start services inside the root.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    {
        in_root apt-get update &&
        in_root apt-get install -y --no-install-recommends $ROOT_PKGS &&
        in_root apt-get install -y --no-install-recommends -t "$SUITE-backports" qemu-system-x86
    } >"$VM_DIR/apt-root.log" 2>&1 || { tail -30 "$VM_DIR/apt-root.log" >&2; die "package installation in the root failed (log: $VM_DIR/apt-root.log)"; }
    in_root apt-get clean >/dev/null 2>&1 || true
    echo "$ROOT_PKGS" >"$ROOT/.sbnet-packages-done"
    log "packages done at $(elapsed) s"
fi

QEMU_VERSION=$(in_root qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p')
[ -n "$QEMU_VERSION" ] || die "qemu-system-x86_64 in $ROOT does not run (try SBNET_VM_REBUILD=1)"
qmaj=${QEMU_VERSION%%.*}; qrest=${QEMU_VERSION#*.}; qmin=${qrest%%.*}
if [ "$qmaj" -lt "$MIN_QEMU_MAJOR" ] || { [ "$qmaj" -eq "$MIN_QEMU_MAJOR" ] && [ "$qmin" -lt "$MIN_QEMU_MINOR" ]; }; then
    die "QEMU $QEMU_VERSION in $ROOT is older than $MIN_QEMU_MAJOR.$MIN_QEMU_MINOR and has no vfio-user-pci; is $SUITE-backports on $MIRROR reachable? (SBNET_VM_REBUILD=1 to retry)"
fi
in_root qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' \
    || die "QEMU $QEMU_VERSION in $ROOT lists no vfio-user-pci device"

# ---------------------------------------------------------------- 3. guest kernel
mkdir -p "$KIT" "$ROOT/sbnet/run"
if [ ! -f "$ROOT/.sbnet-kernel-done" ]; then
    log "fetching the guest kernel (linux-image-cloud-amd64)"
    KPKG=$(in_root apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/^ *\|?Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
    rm -rf "$ROOT/sbnet/kpkg" && mkdir -p "$ROOT/sbnet/kpkg"
    # The package lists may be old (a point release replaced the kernel): update once and retry.
    in_root sh -c "cd /sbnet/kpkg && apt-get download '$KPKG'" >"$VM_DIR/kernel.log" 2>&1 \
        || { in_root apt-get update >>"$VM_DIR/kernel.log" 2>&1 &&
             KPKG=$(in_root apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/^ *\|?Depends: linux-image-[0-9]/ {print $2; exit}') &&
             in_root sh -c "cd /sbnet/kpkg && apt-get download '$KPKG'" >>"$VM_DIR/kernel.log" 2>&1; } \
        || { tail -20 "$VM_DIR/kernel.log" >&2; die "apt-get download $KPKG failed (log: $VM_DIR/kernel.log)"; }
    deb=$(ls "$ROOT"/sbnet/kpkg/*.deb | head -1)
    mkdir -p "$ROOT/sbnet/kpkg/x"
    in_root dpkg-deb -x "/sbnet/kpkg/$(basename "$deb")" /sbnet/kpkg/x
    KVER=''
    for m in "$ROOT"/sbnet/kpkg/x/usr/lib/modules/* "$ROOT"/sbnet/kpkg/x/lib/modules/*; do
        [ -d "$m" ] && { KVER=${m##*/}; break; }
    done
    [ -n "$KVER" ] || die "no modules directory in $KPKG"
    rm -rf "$KIT/kernel" && mkdir -p "$KIT/kernel/lib/modules" "$KIT/kernel/usr/lib"
    ln -s ../../lib/modules "$KIT/kernel/usr/lib/modules"
    cp "$ROOT/sbnet/kpkg/x/boot/vmlinuz-$KVER" "$KIT/vmlinuz"
    if [ -d "$ROOT/sbnet/kpkg/x/usr/lib/modules/$KVER" ]; then
        mv "$ROOT/sbnet/kpkg/x/usr/lib/modules/$KVER" "$KIT/kernel/lib/modules/$KVER"
    else
        mv "$ROOT/sbnet/kpkg/x/lib/modules/$KVER" "$KIT/kernel/lib/modules/$KVER"
    fi
    # The package has no modules.dep (its postinst runs depmod): make one.
    in_root depmod -b /sbnet/kit/kernel "$KVER" >>"$VM_DIR/kernel.log" 2>&1 || die "depmod failed (log: $VM_DIR/kernel.log)"
    [ -s "$KIT/kernel/lib/modules/$KVER/modules.dep" ] || die "depmod made no modules.dep under $KIT/kernel/lib/modules/$KVER"
    echo "$KVER" >"$KIT/kernel/version"
    echo "$KPKG" >"$KIT/kernel/package"
    rm -rf "$ROOT/sbnet/kpkg"
    touch "$ROOT/.sbnet-kernel-done"
    log "kernel $KVER done at $(elapsed) s"
fi
KVER=$(cat "$KIT/kernel/version")

# ---------------------------------------------------------------- 4. initramfs
# Rebuilt whenever the guest files or this script change (about 1 s).
INPUT_HASH=$(cat "$0" "$HERE"/guest/* | sha256sum | cut -c1-16)
if [ ! -f "$KIT/initrd.img" ] || [ "$(cat "$KIT/initrd.hash" 2>/dev/null)" != "$INPUT_HASH-$KVER" ]; then
    log "building the initramfs"
    STAGE="$ROOT/sbnet/stage"
    rm -rf "$STAGE"
    mkdir -p "$STAGE"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,lib/modules,usr/bin,usr/sbin,sbnet}
    cp "$ROOT/usr/bin/busybox" "$STAGE/bin/busybox"
    MODDIR="$KIT/kernel/lib/modules/$KVER"
    # Resolve the load order from modules.dep (dependencies first).
    declare -A seen=()
    order=()
    resolve() {
        local name="$1" line path deps d
        line=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" | head -1 || true)
        if [ -z "$line" ]; then
            if grep -qE "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?$" "$MODDIR/modules.builtin" 2>/dev/null; then
                return 0   # built into the kernel
            fi
            die "module $name is neither in modules.dep nor modules.builtin of $KVER"
        fi
        path="${line%%:*}"
        [ -n "${seen[$path]:-}" ] && return 0
        seen[$path]=1
        deps="${line#*:}"
        for d in $deps; do
            d=$(basename "$d"); d="${d%%.ko*}"
            resolve "$d"
        done
        order+=("$path")
    }
    # stage_modules LIST-FILE MODULE...: resolve, decompress into the stage,
    # write the load order (dependencies first).
    all_modules=()
    stage_modules() {
        local list="$1" m p base
        shift
        seen=()
        order=()
        for m in "$@"; do resolve "$m"; done
        : >"$STAGE/lib/modules/$list"
        for p in "${order[@]}"; do
            base=$(basename "$p")
            case "$base" in
                *.ko.xz)  xz -dc "$MODDIR/$p" >"$STAGE/lib/modules/${base%.xz}" ;;
                *.ko.zst) zstd -qdc "$MODDIR/$p" >"$STAGE/lib/modules/${base%.zst}" ;;
                *.ko.gz)  gzip -dc "$MODDIR/$p" >"$STAGE/lib/modules/${base%.gz}" ;;
                *.ko)     cp "$MODDIR/$p" "$STAGE/lib/modules/$base" ;;
                *) die "unknown module file $p" ;;
            esac
            echo "${base%%.ko*}.ko" >>"$STAGE/lib/modules/$list"
            all_modules+=("${base%%.ko*}")
        done
    }
    # shellcheck disable=SC2086
    stage_modules load-order $GUEST_MODULES
    # shellcheck disable=SC2086
    stage_modules load-order-vfio $VFIO_MODULES
    # ethtool (the multiqueue test's `ethtool -L`) with its ldd closure, at
    # the paths the guest's loader looks at (the guest has no usr-merge).
    for f in /usr/sbin/ethtool $(in_root ldd /usr/sbin/ethtool | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}'); do
        mkdir -p "$STAGE$(dirname "$f")"
        cp -L "$ROOT$f" "$STAGE$f" || die "cannot copy $f (ethtool's closure) into the initramfs"
    done
    [ -x "$STAGE/usr/sbin/ethtool" ] || die "ethtool is missing from the root (ROOT_PKGS)"
    install -m 0755 "$HERE/guest/init" "$STAGE/init"
    for f in "$HERE"/guest/sbnet-*.sh; do
        install -m 0755 "$f" "$STAGE/sbnet/${f##*/}"
    done
    echo "$KVER" >"$STAGE/etc/sbnet-kernel"
    in_root /bin/sh -c 'cd /sbnet/stage && find . | cpio -o -H newc --quiet | gzip -1' >"$KIT/initrd.img.tmp" \
        || die "cpio/gzip of the initramfs failed"
    mv "$KIT/initrd.img.tmp" "$KIT/initrd.img"
    echo "$INPUT_HASH-$KVER" >"$KIT/initrd.hash"
    rm -rf "$STAGE"
    log "initramfs done (modules: ${all_modules[*]}) at $(elapsed) s"
fi

# ---------------------------------------------------------------- 5. DPDK (--dpdk)
# dpdk_closure: the packages to download, dpdk-dev and every package it
# reaches through Depends of librte-*/lib* packages that the root lacks
# (non-library packages are taken but not followed: ibverbs-providers holds
# libmlx5, rdma-core's services are not wanted).
dpdk_closure() {
    in_root /bin/sh -c '
        have() { dpkg-query -W -f="\${Status}" "$1" 2>/dev/null | grep -q "install ok installed"; }
        seen=" dpdk-dev "; echo dpdk-dev
        front="$* "$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances dpdk-dev \
            | awk "\$1 ~ /Depends:\$/ && \$2 ~ /^librte-/ {print \$2}")
        while [ -n "$front" ]; do
            follow=""
            for p in $front; do
                case "$seen" in *" $p "*) continue ;; esac
                seen="$seen$p "
                have "$p" && continue
                echo "$p"
                case "$p" in lib*) follow="$follow $p" ;; esac
            done
            [ -n "$follow" ] || break
            front=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances $follow \
                | awk "\$1 ~ /Depends:\$/ && \$2 !~ /^</ {print \$2}" | sort -u)
        done' sh $(for d in $DPDK_DRIVERS; do printf 'librte-%s25 ' "${d//_/-}"; done)
}
DPDK_KEY=""
if [ "$WANT_DPDK" = 1 ]; then
    DPDK_VERSION=$(in_root apt-cache policy dpdk-dev 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$DPDK_VERSION" ] && [ "$DPDK_VERSION" != "(none)" ] || die "no dpdk-dev package in $SUITE (apt-cache policy dpdk-dev)"
    DPDK_KEY="$DPDK_RECIPE $DPDK_VERSION"
fi
if [ "$WANT_DPDK" = 1 ] && { [ ! -f "$KIT/dpdk.cpio.gz" ] || [ "$(cat "$KIT/dpdk.key" 2>/dev/null)" != "$DPDK_KEY" ]; }; then
    DD="$KIT/dpdk"
    if [ "$(cat "$DD/debs.version" 2>/dev/null)" != "$DPDK_VERSION" ]; then
        log "downloading DPDK $DPDK_VERSION (dpdk-dev and the libraries it links) (log: $VM_DIR/dpdk.log)"
        rm -rf "$DD" && mkdir -p "$DD/debs"
        chmod 777 "$DD/debs"   # apt-get download fetches as _apt
        pkgs=$(dpdk_closure) || die "cannot resolve dpdk-dev's dependencies"
        # shellcheck disable=SC2086
        in_root /bin/sh -c 'cd /sbnet/kit/dpdk/debs && apt-get download "$@"' sh $pkgs >"$VM_DIR/dpdk.log" 2>&1 \
            || { in_root apt-get update >>"$VM_DIR/dpdk.log" 2>&1 &&
                 in_root /bin/sh -c 'cd /sbnet/kit/dpdk/debs && apt-get download "$@"' sh $pkgs >>"$VM_DIR/dpdk.log" 2>&1; } \
            || { tail -20 "$VM_DIR/dpdk.log" >&2; die "apt-get download of DPDK failed (log: $VM_DIR/dpdk.log)"; }
        echo "$DPDK_VERSION" >"$DD/debs.version"
        log "DPDK: $(echo "$pkgs" | wc -w) packages, $(du -sh "$DD/debs" | cut -f1) downloaded at $(elapsed) s"
    fi
    rm -rf "$DD/x" "$DD/ov" && mkdir -p "$DD/x" "$DD/ov"
    for deb in "$DD"/debs/*.deb; do
        in_root dpkg-deb -x "/sbnet/kit/dpdk/debs/${deb##*/}" /sbnet/kit/dpdk/x || die "dpkg-deb -x ${deb##*/} failed"
    done
    [ -x "$DD/x/usr/bin/dpdk-testpmd" ] || die "dpdk-dev $DPDK_VERSION has no /usr/bin/dpdk-testpmd"
    # The closure as the root's loader resolves it, with the extracted
    # libraries first; every file lands in the archive at the path the
    # guest's loader looks at (the libraries' own directories).
    XL=/sbnet/kit/dpdk/x/usr/lib/x86_64-linux-gnu
    objs="/sbnet/kit/dpdk/x/usr/bin/dpdk-testpmd"
    for d in $DPDK_DRIVERS; do
        f=$(cd "$ROOT" && ls ".$XL"/librte_"$d".so.[0-9]* 2>/dev/null | head -1)
        [ -n "$f" ] || die "DPDK $DPDK_VERSION has no driver librte_$d.so"
        objs="$objs ${f#.}"
    done
    # shellcheck disable=SC2086
    closure=$(in_root /usr/bin/env LD_LIBRARY_PATH="$XL:$XL/dpdk/pmds-25.0" /bin/sh -c 'for o in "$@"; do ldd "$o"; done' sh $objs) \
        || die "ldd of dpdk-testpmd inside the root failed"
    missing=$(printf '%s\n' "$closure" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
    [ -z "$missing" ] || die "DPDK libraries not found inside the root: $missing"
    mkdir -p "$DD/ov/usr/bin" "$DD/ov/sbnet/dpdk"
    cp "$DD/x/usr/bin/dpdk-testpmd" "$DD/ov/usr/bin/"
    for f in $objs $(printf '%s\n' "$closure" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}' | sort -u) \
             /usr/libexec/coreutils/libstdbuf.so /usr/lib/x86_64-linux-gnu/libgcc_s.so.1; do
        case "$f" in
            /sbnet/kit/dpdk/x/*) dst=${f#/sbnet/kit/dpdk/x} ;;
            /sbnet/*) continue ;;
            *) dst=$f ;;
        esac
        # The guest has no usr-merge: keep /lib/... and /usr/lib/... apart, real files.
        mkdir -p "$DD/ov$(dirname "$dst")"
        cp -L "$ROOT$f" "$DD/ov$dst" || die "cannot copy $f into the DPDK archive"
    done
    # The drivers under fixed names for -d.
    for d in $DPDK_DRIVERS; do
        ln -sf "$(cd "$DD/ov" && ls usr/lib/x86_64-linux-gnu/librte_"$d".so.[0-9]* | head -1 | sed 's,^,/,')" "$DD/ov/sbnet/dpdk/librte_$d.so"
    done
    echo "$DPDK_VERSION" >"$DD/ov/sbnet/dpdk/version"
    in_root /bin/sh -c 'cd /sbnet/kit/dpdk/ov && find . | cpio -o -H newc --quiet | gzip -1' >"$KIT/dpdk.cpio.gz.tmp" \
        || die "cpio/gzip of the DPDK archive failed"
    mv "$KIT/dpdk.cpio.gz.tmp" "$KIT/dpdk.cpio.gz"
    echo "$DPDK_KEY" >"$KIT/dpdk.key"
    log "DPDK archive: $(find "$DD/ov" -type f | wc -l) files, $(du -sk "$DD/ov" | cut -f1) KiB, $(du -k "$KIT/dpdk.cpio.gz" | cut -f1) KiB packed, at $(elapsed) s"
    rm -rf "$DD/x" "$DD/ov"
fi

# The same kit.env whoever asks (with or without --dpdk), replaced at once:
# harnesses running in parallel read it after this script returns.
{
    cat <<EOF
SBNET_VM_ROOT=$ROOT
SBNET_VM_KERNEL=/sbnet/kit/vmlinuz
SBNET_VM_INITRD=/sbnet/kit/initrd.img
SBNET_VM_KERNEL_VERSION=$KVER
SBNET_VM_QEMU_VERSION=$QEMU_VERSION
EOF
    if [ -s "$KIT/dpdk.cpio.gz" ] && [ -s "$KIT/dpdk.key" ]; then
        echo "SBNET_VM_DPDK_CPIO=/sbnet/kit/dpdk.cpio.gz"
        echo "SBNET_VM_DPDK_VERSION=$(awk '{print $NF}' "$KIT/dpdk.key")"
    fi
} >"$KIT/kit.env.tmp"
mv "$KIT/kit.env.tmp" "$KIT/kit.env"
log "kit ready in $(elapsed) s: root $ROOT, QEMU $QEMU_VERSION, kernel $KVER"
[ "$PRINT_ENV" = 1 ] && cat "$KIT/kit.env"
exit 0
