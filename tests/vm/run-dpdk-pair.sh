#!/bin/bash
# run-dpdk-pair.sh: the two-VM tests with DPDK's own virtio PMD (net_virtio,
# Debian trixie's DPDK 24.11) in a guest (issue 10). host-pair serves two
# sbnet functions; two QEMU guests (TCG) attach with -device vfio-user-pci.
# A DPDK guest sits behind a virtual IOMMU (-device intel-iommu,caching-mode=on,
# intel_iommu=on) and binds the function to vfio-pci (driver_override);
# dpdk-testpmd drives it (tests/vm/guest/sbnet-dpdk.sh). net_virtio never
# negotiates Shared Buffers, so host-pair copies every frame.
#
# Scenario `dpdk` (default): guest a (side 0) DPDK txonly for SBNET_VM_SECONDS
#   into guest b (side 1) DPDK rxonly; both on 2 MiB huge pages.
# Scenario `stock`: guest a DPDK txonly (huge pages) into guest b with the
#   stock virtio_net driver (no vIOMMU), which counts the frames its
#   interface received (/sys/class/net/IF/statistics/rx_packets).
# Scenario `nohuge`: as `dpdk`, both DPDK guests without huge pages
#   (--no-huge -m SBNET_VM_DPDK_MEM --iova-mode=va): every 4 KiB page is an
#   IOMMU mapping, so host-pair gets thousands of DMA maps per side.
# The sender first waits (rxonly) for a frame from the receiver, so it starts
# only once the receiver has posted its buffers; host-pair runs with
# --tx-wait-us 500000, so a receiver slower than txonly slows the sender
# down (its TX ring fills) instead of losing frames.
# PASS when both guests pass, the receiver counted at least 99% of the frames
# the sender's port sent (testpmd's TX-packets), host-pair copied frames
# (side 0 tx_copied > 0, no zero-copy) and refused nothing (refusals and
# needs_reset 0 on both sides). The verdict line reports dma_maps_peak per side.
#
# Usage (as root):  tests/vm/run-dpdk-pair.sh [dpdk|stock|nohuge]
# Environment (besides SBNET_VM_DIR, SBNET_HOST_PAIR, SBNET_VM_ACCEL,
# SBNET_VM_TIMEOUT, SBNET_VM_QEMU_EXTRA, SBNET_VM_TRACE, SBNET_VM_KEEP,
# SBNET_LOG of run-stock-pair.sh):
#   SBNET_VM_SCENARIO   dpdk, stock or nohuge (the first argument wins)
#   SBNET_VM_SECONDS    how long the sender runs txonly (default 10)
#   SBNET_VM_HUGEPAGES  2 MiB huge pages per DPDK guest (default 32)
#   SBNET_VM_DPDK_MEM   MiB of DPDK memory without huge pages (default 64)
#   SBNET_VM_HP_ARGS    host-pair arguments (default "--tx-wait-us 500000")
# Exit status: 0 PASS, 1 FAIL, 2 setup error, 3 the VMs cannot run here
# ("SBNET-VM-TEST: SKIP reason"). The verdict is the line
# "SBNET-VM-TEST: PASS ..." or "SBNET-VM-TEST: FAIL reason".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
VM_TRACE_DEFAULT="$VM_TRACE_DEFAULT vtd_*"
SCENARIO="${1:-${SBNET_VM_SCENARIO:-dpdk}}"
SECONDS_TX="${SBNET_VM_SECONDS:-10}"
HUGEPAGES="${SBNET_VM_HUGEPAGES:-32}"
DPDK_MEM="${SBNET_VM_DPDK_MEM:-64}"
# The MAC host-pair gives side 0 (the stock receiver's static ARP entry).
SIDE0_MAC=52:54:00:5b:00:00

vm_preflight
case "$SCENARIO" in dpdk|stock|nohuge) ;; *) setup_error "scenario must be dpdk, stock or nohuge, got '$SCENARIO'";; esac
vm_check_numbers SECONDS_TX HUGEPAGES DPDK_MEM

vm_kit "scenario $SCENARIO" --dpdk
[ -n "${SBNET_VM_DPDK_CPIO:-}" ] && [ -s "$ROOT$SBNET_VM_DPDK_CPIO" ] || setup_error "the kit has no DPDK archive (build-kit.sh --dpdk)"
vm_host_pair
vm_run_dir "dpdk-$SCENARIO"

fail() { vm_fail "$SCENARIO" "$@"; }

# The kit's initramfs plus the DPDK archive (the kernel unpacks both).
cat "$ROOT/sbnet/kit/initrd.img" "$ROOT$SBNET_VM_DPDK_CPIO" >"$RUN/initrd-dpdk.img" || setup_error "cannot build the DPDK initramfs"
say "DPDK initramfs: $(du -k "$RUN/initrd-dpdk.img" | cut -f1) KiB (DPDK $SBNET_VM_DPDK_VERSION)"

# shellcheck disable=SC2206
HP_EXTRA=(${SBNET_VM_HP_ARGS---tx-wait-us 500000})
vm_start_host_pair "${HP_EXTRA[@]}"

# start_dpdk NAME ROLE HUGEPAGES: a DPDK guest behind a virtual IOMMU (before
# the device, see run-pmd-pair.sh). -cpu max: Debian builds DPDK for
# x86-64-v2 (SSE4.2, POPCNT), which QEMU's default TCG CPU lacks (SIGILL).
start_dpdk() {
    local machine=q35,memory-backend=mem
    [ "$ACCEL" = kvm ] && machine="$machine,kernel-irqchip=split"
    # shellcheck disable=SC2054  # the comma is QEMU's
    vm_qemu "$1" "$machine" "$IN_RUN/initrd-dpdk.img" \
        "intel_iommu=on no_timer_check sbnet.driver=dpdk sbnet.dpdk=$2 sbnet.hugepages=$3 sbnet.seconds=$SECONDS_TX sbnet.dpdkmem=$DPDK_MEM" \
        -cpu max -device intel-iommu,caching-mode=on
}

PAGES=$HUGEPAGES
[ "$SCENARIO" = nohuge ] && PAGES=0
say "booting guest b (side 1, receiver: $([ "$SCENARIO" = stock ] && echo "stock virtio_net" || echo "DPDK rxonly")) and guest a (side 0, DPDK txonly ${SECONDS_TX} s), huge pages $PAGES, accel $ACCEL, QEMU $SBNET_VM_QEMU_VERSION, kernel $SBNET_VM_KERNEL_VERSION"
if [ "$SCENARIO" = stock ]; then
    vm_qemu b q35,memory-backend=mem "$SBNET_VM_INITRD" \
        "ipv6.disable=1 sbnet.ip=169.254.0.2/16 sbnet.role=count-rx sbnet.peer=169.254.0.1 sbnet.peermac=$SIDE0_MAC"
else
    start_dpdk b rx "$PAGES"
fi
start_dpdk a tx "$PAGES"

# Progress: the guests' main steps, each once.
show_info() { vm_show_new '^SBNET-INFO: \(dpdk-testpmd up\|handshake\|count-rx\|no huge\|[0-9]* huge\)' 'SBNET-INFO: '; }
vm_wait_guests show_info
vm_stop_host_pair

vm_check_result a
SENT=$(result_field "$RESULT" tx_packets)
vm_check_result b
GOT=$(result_field "$RESULT" rx_packets)
case "$SENT$GOT" in ''|*[!0-9]*) fail "no packet counts in the results (sent '$SENT', received '$GOT')" ;; esac
[ "$SENT" -ge 1000 ] || fail "the sender sent only $SENT frames in $SECONDS_TX s"
PCT=$(awk -v g="$GOT" -v s="$SENT" 'BEGIN{printf "%.2f", 100 * g / s}')
say "guest a sent $SENT frames, guest b received $GOT ($PCT%)"

vm_stats_check
c() { hp_counter "$@"; }
vm_show_counters tx_packets rx_packets tx_copied tx_zero_copy copied_bytes tx_waits rx_no_buffer tx_no_peer kicks interrupts dma_refused resets needs_reset
vm_show_counters dma_maps dma_unmaps dma_maps_peak
vm_check_no_refusals "must be 0"
[ $((GOT * 100)) -ge $((SENT * 99)) ] || fail "guest b received $GOT of the $SENT frames guest a sent ($PCT%, below 99%)"
[ "$(c 0 tx_copied)" -gt 0 ] || fail "host-pair counters: side 0 tx_copied=$(c 0 tx_copied), expected > 0 (net_virtio runs the classic path)"
for k in 0 1; do
    [ "$(c $k tx_zero_copy)" = 0 ] || fail "host-pair counters: side $k tx_zero_copy=$(c $k tx_zero_copy): net_virtio cannot zero-copy"
done
say "PASS"
echo "SBNET-VM-TEST: PASS $SCENARIO sent=$SENT received=$GOT ($PCT%) side0_tx_copied=$(c 0 tx_copied) side1_rx_packets=$(c 1 rx_packets) side0_rx_no_buffer=$(c 0 rx_no_buffer) side1_rx_no_buffer=$(c 1 rx_no_buffer) dma_maps_peak=$(c 0 dma_maps_peak)/$(c 1 dma_maps_peak) dma_maps=$(c 0 dma_maps)/$(c 1 dma_maps) seconds=$(now)"
exit 0
