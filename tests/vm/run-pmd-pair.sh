#!/bin/bash
# run-pmd-pair.sh: the two-VM tests with the sbnet PMD in a guest (issue 4,
# parts 3b and 3c). host-pair serves two sbnet functions on sockets inside the
# kit's root; two QEMU guests (TCG) attach with -device vfio-user-pci.
#
# Scenario `pmd` (default): both guests run sbnet-testpmd through kernel VFIO
#   (-device intel-iommu,caching-mode=on, intel_iommu=on, vfio-pci):
#     guest a (side 0): pingpong N, sleep 2, txonly M,  rxonly L (1500 B)
#     guest b (side 1): io N,       rxonly M, sleep 2,  txonly L (1500 B)
#   PASS when every step exits 0 with the expected counts and no integrity
#   error or loss (a frame the host had to defer may arrive late: gaps must
#   equal late arrivals), and host-pair's counters show zero copies
#   (copied_bytes == 0 and tx_copied == 0 on both sides), zero-copy packets
#   on both sides, and no refusal.
# Scenario `pmd-small`: `pmd` with the PMD's DMA memory on ordinary 4 KiB
#   pages (sbnet-testpmd --small-pages, sbnet.hugepages=0: no huge page is
#   reserved). Behind the vIOMMU every page of the PMD's rings and buffers
#   reaches host-pair as its own DMA map. Same steps and checks as `pmd`
#   (zero copy); the verdict reports dma_maps_peak per side.
# Scenario `mixed`: guest a runs the PMD (it negotiates Shared Buffers),
#   guest b the stock virtio_net driver (it does not), so host-pair copies:
#     guest b (stock): static ARP entry for a, K pings (ipv6.disable=1, so
#                      nothing else is sent), then waits for K + M frames
#     guest a (PMD):   macswap K (echoes b's pings back to b), txonly M
#   PASS when both guests pass, the PMD ran in copy mode, b's interface
#   received exactly K + M frames, host-pair's counters agree (side 0 sent
#   K + M frames, all copied; side 1 sent K, all copied; nothing dropped or
#   zero-copied) and nothing was refused.
#
# Usage (as root):  tests/vm/run-pmd-pair.sh [pmd|pmd-small|mixed]
# Environment (besides those of run-stock-pair.sh: SBNET_VM_DIR,
# SBNET_HOST_PAIR, SBNET_VM_ACCEL, SBNET_VM_TIMEOUT, SBNET_VM_QEMU_EXTRA,
# SBNET_VM_TRACE, SBNET_VM_KEEP, SBNET_LOG):
#   SBNET_VM_SCENARIO   pmd, pmd-small or mixed (the first argument wins)
#   SBNET_TESTPMD       sbnet-testpmd binary for the guests (default:
#                       <repo>/target/release/sbnet-testpmd, built with
#                       `cargo build --release -p sbnet-testpmd`
#                       when SBNET_TESTPMD is unset)
#   SBNET_VM_PINGS      N (pmd: pingpong round trips, default 500) or
#                       K (mixed: pings, default 20)
#   SBNET_VM_PACKETS    M, one-way frames (pmd: default 100000, mixed: 2000)
#   SBNET_VM_BACK       L, one-way frames of 1500 B from b to a (pmd; default 20000)
#   SBNET_VM_FRAME      frame size of the other PMD steps (default 64)
#   SBNET_VM_HP_ARGS    extra host-pair arguments (default for mixed:
#                       "--tx-wait-us 500000": a TCG guest on a loaded host
#                       can be descheduled for tens of milliseconds, and the
#                       test counts frames exactly; pmd: none)
#   SBNET_VM_TRACE_EVENTS  QEMU trace event patterns (space-separated) written
#                       to qemu-NAME.trace (SBNET_VM_TRACE=1: a default set)
#   SBNET_VM_MONITOR=1  an HMP monitor socket per guest: RUN/NAME.mon
# Exit status: 0 PASS, 1 FAIL (the reason is printed), 2 setup error, 3 the VMs
# cannot run here (not root, or no kit can be built: "SBNET-VM-TEST: SKIP reason").
# The verdict is the line "SBNET-VM-TEST: PASS ..." or "SBNET-VM-TEST: FAIL reason".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
# The virtual IOMMU's events too (SBNET_VM_TRACE=1).
VM_TRACE_DEFAULT="$VM_TRACE_DEFAULT vtd_*"
SCENARIO="${1:-${SBNET_VM_SCENARIO:-pmd}}"
FRAME="${SBNET_VM_FRAME:-64}"
BACK="${SBNET_VM_BACK:-20000}"
case "$SCENARIO" in
    pmd|pmd-small) PINGS="${SBNET_VM_PINGS:-1000}"; PACKETS="${SBNET_VM_PACKETS:-100000}" ;;
    mixed) PINGS="${SBNET_VM_PINGS:-20}";  PACKETS="${SBNET_VM_PACKETS:-2000}" ;;
esac

vm_preflight
case "$SCENARIO" in pmd|pmd-small|mixed) ;; *) setup_error "scenario must be pmd, pmd-small or mixed, got '$SCENARIO'";; esac
# pmd-small is pmd on 4 KiB pages: VARIANT names the run, SCENARIO the steps.
VARIANT=$SCENARIO SMALL=0
[ "$SCENARIO" = pmd-small ] && { SCENARIO=pmd SMALL=1; }
vm_check_numbers PINGS PACKETS FRAME BACK

# ------------------------------------------------------------ kit + binaries
vm_kit "scenario $VARIANT"

in_root() {
    unshare --mount --propagation private /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" || exit 1
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"' sh "$ROOT" "$@"
}

TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
vm_host_pair
TESTPMD="${SBNET_TESTPMD:-}"
if [ -z "$TESTPMD" ]; then
    TESTPMD="$TARGET/release/sbnet-testpmd"
    say "building sbnet-testpmd (cargo build --release -p sbnet-testpmd)"
    (cd "$REPO" && cargo build --release -p sbnet-testpmd) || setup_error "cargo build --release -p sbnet-testpmd failed"
fi
[ -x "$TESTPMD" ] || setup_error "sbnet-testpmd binary $TESTPMD not found or not executable"

vm_run_dir "$VARIANT"

fail() { vm_fail "$VARIANT" "$@"; }

# ------------------------------------------------------------ guest initramfs
# The kit's initramfs plus a second cpio archive with sbnet-testpmd and the
# C libraries it links (the kernel unpacks concatenated archives in order).
make_pmd_initrd() {
    local ov="$RUN/overlay" lib
    mkdir -p "$ov/sbnet/bin"
    if command -v strip >/dev/null; then
        strip -o "$ov/sbnet/bin/sbnet-testpmd" "$TESTPMD" || cp "$TESTPMD" "$ov/sbnet/bin/sbnet-testpmd"
    else
        cp "$TESTPMD" "$ov/sbnet/bin/sbnet-testpmd"
    fi
    chmod 755 "$ov/sbnet/bin/sbnet-testpmd"
    # Shared libraries as ldd resolves them on the build host, at the same paths.
    for lib in $(ldd "$TESTPMD" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}'); do
        mkdir -p "$ov$(dirname "$lib")"
        cp -L "$lib" "$ov$lib" || return 1
    done
    in_root /bin/sh -c "cd '$IN_RUN/overlay' && find . | cpio -o -H newc --quiet | gzip -1" >"$RUN/pmd.cpio.gz" || return 1
    cat "$ROOT/sbnet/kit/initrd.img" "$RUN/pmd.cpio.gz" >"$RUN/initrd-pmd.img" || return 1
    rm -rf "$ov"
}
make_pmd_initrd || setup_error "cannot build the PMD initramfs from $TESTPMD"
say "PMD initramfs: $(du -k "$RUN/initrd-pmd.img" | cut -f1) KiB (sbnet-testpmd from $TESTPMD, libs: $(ldd "$TESTPMD" | awk '/=> \//{printf "%s ", $1}'))"

# ------------------------------------------------------------ host-pair
# shellcheck disable=SC2206
if [ "$SCENARIO" = mixed ]; then
    HP_EXTRA=(${SBNET_VM_HP_ARGS---tx-wait-us 500000})
else
    HP_EXTRA=(${SBNET_VM_HP_ARGS:-})
fi
vm_start_host_pair "${HP_EXTRA[@]}"

# ------------------------------------------------------------ guests
# start_guest NAME DRIVER APPEND...: DRIVER pmd (IOMMU, PMD initramfs) or stock.
start_guest() {
    local name=$1 driver=$2 machine=q35,memory-backend=mem iommu=() initrd="$SBNET_VM_INITRD"
    shift 2
    local append="$*"
    if [ "$driver" = pmd ]; then
        # The virtual IOMMU comes before the device: QEMU attaches a device to
        # the IOMMU when it creates it (after it, the guest still sees a group
        # but QEMU sends host-pair identity maps).
        # caching-mode=on: the guest reports every new mapping, which QEMU
        # turns into vfio-user DMA_MAPs. Under KVM its interrupt remapping
        # needs the split irqchip; TCG has no kernel irqchip.
        # shellcheck disable=SC2054  # the comma is QEMU's
        iommu=(-device intel-iommu,caching-mode=on)
        [ "$ACCEL" = kvm ] && machine="$machine,kernel-irqchip=split"
        # no_timer_check: under TCG on a loaded host the kernel's check of
        # the timer through the remapped IO-APIC can time out and panic at
        # boot ("timer doesn't work through Interrupt-remapped IO-APIC").
        append="$append intel_iommu=on no_timer_check sbnet.driver=pmd${PMD_APPEND:-}"
        initrd="$IN_RUN/initrd-pmd.img"
    fi
    vm_qemu "$name" "$machine" "$initrd" "$append" "${iommu[@]}"
}

# PAGES: the pmd-small argument of every PMD step.
PAGES=''
if [ "$SMALL" = 1 ]; then
    PAGES=":--small-pages"
    PMD_APPEND=" sbnet.hugepages=0"
    say "pmd-small: the PMD's DMA memory on 4 KiB pages (--small-pages), no huge pages reserved"
fi
PMDARGS=":--frame-size=$FRAME$PAGES"
if [ "$SCENARIO" = pmd ]; then
    say "booting guest b (side 1, PMD: io $PINGS, rxonly $PACKETS, txonly $BACK) and guest a (side 0, PMD: pingpong $PINGS, txonly $PACKETS, rxonly $BACK), accel $ACCEL, QEMU $SBNET_VM_QEMU_VERSION, kernel $SBNET_VM_KERNEL_VERSION"
    start_guest b pmd "sbnet.pmd=io:$PINGS$PMDARGS,rxonly:$PACKETS$PMDARGS,sleep:2,txonly:$BACK:--frame-size=1500$PAGES"
    start_guest a pmd "sbnet.pmd=pingpong:$PINGS$PMDARGS,sleep:2,txonly:$PACKETS$PMDARGS,rxonly:$BACK:--frame-size=1500$PAGES"
else
    EXPECT=$((PINGS + PACKETS))
    say "booting guest b (side 1, stock virtio_net: $PINGS pings, expects $EXPECT frames) and guest a (side 0, PMD: macswap $PINGS, txonly $PACKETS), accel $ACCEL"
    start_guest b stock "ipv6.disable=1 sbnet.ip=169.254.0.2/16 sbnet.role=mixed-stock sbnet.peer=169.254.0.1 sbnet.peermac=52:54:00:5b:00:00 sbnet.count=$PINGS sbnet.expect=$EXPECT"
    start_guest a pmd "sbnet.pmd=macswap:$PINGS:--linger=1$PMDARGS,txonly:$PACKETS$PMDARGS"
fi

# ------------------------------------------------------------ wait
# Progress: each finished step once.
show_steps() { vm_show_new '^SBNET-STEP: .* rc=' 'SBNET-STEP: '; }
vm_wait_guests show_steps
vm_stop_host_pair

# ------------------------------------------------------------ verdict
vm_check_result a
vm_check_result b

# expect_step G N MODE FIELD=VALUE...: checks fields of guest G's JSON
# summary of step N (FIELD is a jq path below the summary: port.mode)
expect_step() {
    local g=$1 n=$2 mode=$3 kv k v got json
    shift 3
    json=$(grep -a "^SBNET-JSON: $n " "$RUN/$g.console" | tr -d '\r' | head -1 | cut -d' ' -f3-)
    [ -n "$json" ] && jq -e type >/dev/null 2>&1 <<<"$json" || fail "guest $g printed no summary for step $n ($mode)"
    # sj FIELD: a field of this step's summary
    sj() { jq -r ".$1 // empty" <<<"$json"; }
    [ "$(sj mode)" = "$mode" ] || fail "guest $g step $n: mode $(sj mode), expected $mode"
    for kv in "$@"; do
        k=${kv%%=*} v=${kv#*=}
        got=$(sj "$k")
        if [ "$k" = gaps ] && [ "$v" = reordered ]; then
            # Late frames are allowed (the host defers a zero-copy frame
            # whose RX post is late, docs/abi.md §6 "Wait"); lost ones are not.
            [ "$got" = "$(sj reordered)" ] || fail "guest $g step $n ($mode): $got sequence gaps but only $(sj reordered) late frames: frames were lost"
            continue
        fi
        [ "$got" = "$v" ] || fail "guest $g step $n ($mode): $k=$got, expected $v"
    done
    say "guest $g step $n: $(jq -r '"\(.mode) rx \(.rx_packets) tx \(.tx_packets) in \(.elapsed_s * 1000 | floor / 1000) s (\(.mpps * 1e6 | round) pps), frame \(.frame_size) B, gaps \(.gaps) late \(.reordered), port mode \(.port.mode), zero-copy tx \(.port.tx_zero_copy) rx \(.port.rx_zero_copy), copied tx \(.port.tx_copied) rx \(.port.rx_copied), gifts sent \(.gifts_sent) received \(.gifts_received)" + (if .rtt_p50_us > 0 then ", rtt p50 \(.rtt_p50_us) us p99 \(.rtt_p99_us)" else "" end)' <<<"$json")"
}

if [ "$SCENARIO" = pmd ]; then
    expect_step a 1 pingpong tx_packets="$PINGS" rx_packets="$PINGS" integrity_errors=0 port.mode=zero-copy
    expect_step b 1 io tx_packets="$PINGS" port.mode=zero-copy
    expect_step a 3 txonly tx_packets="$PACKETS" port.mode=zero-copy
    expect_step b 2 rxonly rx_packets="$PACKETS" integrity_errors=0 gaps=reordered port.mode=zero-copy
    expect_step b 4 txonly tx_packets="$BACK" frame_size=1500 port.mode=zero-copy
    expect_step a 4 rxonly rx_packets="$BACK" integrity_errors=0 gaps=reordered frame_size=1500 port.mode=zero-copy
else
    expect_step a 1 macswap tx_packets="$PINGS" port.mode=copy
    expect_step a 2 txonly tx_packets="$PACKETS" port.mode=copy
    rb=$(result_of b)
    [ "$(result_field "$rb" rx_frames)" = "$EXPECT" ] || fail "guest b (stock) received $(result_field "$rb" rx_frames) frames, expected exactly $EXPECT ($PINGS echoes + $PACKETS PMD frames)"
fi

vm_stats_check
c() { hp_counter "$@"; }
vm_show_counters tx_packets rx_packets tx_zero_copy tx_copied copied_bytes gifts_sent gifts_received tx_waits tx_deferred rx_no_buffer tx_no_peer flushed kicks interrupts dma_refused resets needs_reset
vm_check_no_refusals "must be 0"
if [ "$SCENARIO" = pmd ]; then
    for k in 0 1; do
        [ "$(c $k copied_bytes)" = 0 ] || fail "host-pair counters: side $k copied_bytes=$(c $k copied_bytes), expected 0 (zero copies)"
        [ "$(c $k tx_copied)" = 0 ] || fail "host-pair counters: side $k tx_copied=$(c $k tx_copied), expected 0"
        [ "${ZC:=$(c $k tx_zero_copy)}" -gt 0 ] 2>/dev/null || fail "host-pair counters: side $k tx_zero_copy=$(c $k tx_zero_copy), expected > 0"
        unset ZC
    done
    want=$((PINGS + PACKETS))
    [ "$(c 0 tx_zero_copy)" -ge "$want" ] || fail "host-pair counters: side 0 tx_zero_copy=$(c 0 tx_zero_copy), expected >= $want"
    [ "$(c 1 tx_zero_copy)" -ge $((PINGS + BACK)) ] || fail "host-pair counters: side 1 tx_zero_copy=$(c 1 tx_zero_copy), expected >= $((PINGS + BACK))"
    vm_show_counters dma_maps dma_unmaps dma_maps_peak
    say "PASS"
    echo "SBNET-VM-TEST: PASS $VARIANT dma_maps_peak=$(c 0 dma_maps_peak)/$(c 1 dma_maps_peak) pingpong=$PINGS a_to_b=$PACKETS b_to_a=$BACK side0_tx_zero_copy=$(c 0 tx_zero_copy) side1_tx_zero_copy=$(c 1 tx_zero_copy) copied_bytes=0 seconds=$(now)"
else
    [ "$(c 0 tx_packets)" = "$EXPECT" ] || fail "host-pair counters: side 0 (PMD) tx_packets=$(c 0 tx_packets), expected $EXPECT"
    [ "$(c 0 tx_copied)" = "$EXPECT" ] || fail "host-pair counters: side 0 (PMD) tx_copied=$(c 0 tx_copied), expected $EXPECT (the stock peer cannot take slots)"
    [ "$(c 1 rx_packets)" = "$EXPECT" ] || fail "host-pair counters: side 1 (stock) rx_packets=$(c 1 rx_packets), expected $EXPECT"
    [ "$(c 1 tx_packets)" = "$PINGS" ] || fail "host-pair counters: side 1 (stock) tx_packets=$(c 1 tx_packets), expected $PINGS (the pings)"
    [ "$(c 1 tx_copied)" = "$PINGS" ] || fail "host-pair counters: side 1 (stock) tx_copied=$(c 1 tx_copied), expected $PINGS"
    for k in 0 1; do
        [ "$(c $k tx_zero_copy)" = 0 ] || fail "host-pair counters: side $k tx_zero_copy=$(c $k tx_zero_copy) in a mixed pair"
        [ "$(c $k rx_no_buffer)" = 0 ] || fail "host-pair counters: side $k rx_no_buffer=$(c $k rx_no_buffer): frames were dropped"
    done
    say "PASS"
    echo "SBNET-VM-TEST: PASS mixed pings=$PINGS pmd_frames=$PACKETS side0_tx_copied=$(c 0 tx_copied) side1_tx_copied=$(c 1 tx_copied) stock_rx_frames=$EXPECT seconds=$(now)"
fi
exit 0
