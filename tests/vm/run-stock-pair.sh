#!/bin/bash
# run-stock-pair.sh: the two-VM test with the stock Linux virtio_net driver.
#
#   host-pair serves two sbnet functions on sockets inside the kit's root;
#   guest A (169.254.0.1, client) and guest B (169.254.0.2, server) boot under
#   QEMU (TCG) with `-device vfio-user-pci`; A pings B 5 times, then sends
#   SBNET_VM_BYTES random bytes to B with busybox nc. Both print SHA-256 sums.
#   PASS when both guests report PASS, the sums and sizes match, and
#   host-pair's counters show copied packets in both directions and no refusal.
#
# Usage (as root, from anywhere):  tests/vm/run-stock-pair.sh [viommu]
# Environment:
#   SBNET_VM_DIR        kit cache (default /var/cache/sbnet-vm), see build-kit.sh
#   SBNET_HOST_PAIR     host-pair binary (default: <repo>/target/release/host-pair,
#                       built with `cargo build --release -p host-pair` if missing)
#   SBNET_VM_ACCEL      tcg (default) or kvm
#   SBNET_VM_BYTES      bytes A sends to B (default 4194304)
#   SBNET_VM_TIMEOUT    seconds for the whole run, boot to verdict (default 300)
#   SBNET_VM_GUESTS     2 (default) or 1: boot only guest A with role idle
#                       (enumeration/driver-binding check, no traffic)
#   SBNET_VM_VIOMMU=1   (or the argument `viommu`) both guests behind a virtual
#                       IOMMU (-device intel-iommu,caching-mode=on,
#                       intel_iommu=on): QEMU then sends one DMA map per IOMMU
#                       mapping (issue 10). (Until the guest turns its IOMMU on,
#                       QEMU also offers fd-less ROM ranges: dma_refused counts
#                       those, as without an IOMMU.)
#   SBNET_VM_QEMU_EXTRA extra QEMU arguments, split on spaces (e.g. "-cpu host")
#   SBNET_VM_TRACE=1    QEMU traces of vfio register accesses and IRQ set-up
#   SBNET_VM_TRACE_EVENTS  QEMU trace event patterns (space-separated) written
#                       to qemu-NAME.trace (SBNET_VM_TRACE=1: a default set)
#   SBNET_VM_MONITOR=1  an HMP monitor socket per guest: RUN/NAME.mon
#   SBNET_VM_KEEP=1     keep the run directory even when the test passes
#   SBNET_LOG           host-pair's log filter (default info)
# Exit status: 0 PASS, 1 FAIL (the reason is printed), 2 setup error, 3 the VMs
# cannot run here (not root, or no kit can be built: "SBNET-VM-TEST: SKIP reason").
# The verdict is the line "SBNET-VM-TEST: PASS ..." or "SBNET-VM-TEST: FAIL reason"
# (only "run directory kept: ..." may follow it).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
BYTES="${SBNET_VM_BYTES:-4194304}"
GUESTS="${SBNET_VM_GUESTS:-2}"
VIOMMU="${SBNET_VM_VIOMMU:-0}"
[ "${1:-}" = viommu ] && VIOMMU=1

vm_preflight
case "$GUESTS" in 1|2) ;; *) setup_error "SBNET_VM_GUESTS must be 1 or 2";; esac
case "$VIOMMU" in 0|1) ;; *) setup_error "SBNET_VM_VIOMMU must be 0 or 1";; esac

# ------------------------------------------------------------ kit + host-pair
vm_kit ""
vm_host_pair
vm_run_dir stock

# The verdict on failure: reason, then the tails of every log.
fail() {
    KEEP_RUN=1
    echo
    say "FAIL: $*"
    local f
    for f in "$RUN"/a.console "$RUN"/b.console; do
        [ -f "$f" ] || continue
        echo "----- last 40 lines of ${f##*/} (serial console) -----"
        tail -n 40 "$f" | tr -d '\r'
    done
    vm_fail_tails
    echo "SBNET-VM-TEST: FAIL $*"
    exit 1
}

# ------------------------------------------------------------ host-pair
vm_start_host_pair

# ------------------------------------------------------------ guests
# start_guest NAME IP ROLE PEER
# With SBNET_VM_VIOMMU=1 the guest sits behind a virtual IOMMU: the device
# must come after it on QEMU's command line (vm_qemu puts ARGs first).
start_guest() {
    local iommu=() append="sbnet.ip=$2/16 sbnet.role=$3 sbnet.peer=$4 sbnet.bytes=$BYTES"
    if [ "$VIOMMU" = 1 ]; then
        # shellcheck disable=SC2054  # the comma is QEMU's
        iommu=(-device intel-iommu,caching-mode=on)
        # no_timer_check: under TCG the kernel's check of the timer through
        # the remapped IO-APIC can time out and panic at boot.
        append="$append intel_iommu=on no_timer_check"
    fi
    vm_qemu "$1" q35,memory-backend=mem "$SBNET_VM_INITRD" "$append" "${iommu[@]}"
}

if [ "$GUESTS" = 2 ]; then
    say "booting guest b (169.254.0.2, server) and guest a (169.254.0.1, client), accel $ACCEL, vIOMMU $VIOMMU, QEMU $SBNET_VM_QEMU_VERSION, kernel $SBNET_VM_KERNEL_VERSION"
    start_guest b 169.254.0.2 server 169.254.0.1
    start_guest a 169.254.0.1 client 169.254.0.2
else
    say "booting guest a alone (169.254.0.1, role idle), accel $ACCEL"
    start_guest a 169.254.0.1 idle ""
fi

# ------------------------------------------------------------ wait
seen_carrier=0
show_carrier() {
    if [ $seen_carrier = 0 ] && grep -aq 'SBNET-INFO: carrier up' "$RUN/a.console" 2>/dev/null; then
        seen_carrier=1
        say "guest a: $(grep -a -m1 'SBNET-INFO: carrier up' "$RUN/a.console" | tr -d '\r' | sed 's/^SBNET-INFO: //')"
    fi
}
vm_wait_guests show_carrier
vm_stop_host_pair

# ------------------------------------------------------------ verdict
for g in a $([ "$GUESTS" = 2 ] && echo b); do
    grep -a '^SBNET-INFO: sbnet NIC\|^SBNET-STATS' "$RUN/$g.console" 2>/dev/null | tr -d '\r' | sed "s/^/  guest $g: /"
done
vm_check_result a
ra=$RESULT
if [ "$GUESTS" = 2 ]; then
    vm_check_result b
    rb=$RESULT
    tx_sum=$(result_field "$ra" tx_sha256); rx_sum=$(result_field "$rb" rx_sha256)
    tx_n=$(result_field "$ra" tx_bytes); rx_n=$(result_field "$rb" rx_bytes)
    [ "$tx_n" = "$rx_n" ] || fail "size mismatch: a sent $tx_n bytes, b received $rx_n"
    [ -n "$tx_sum" ] && [ "$tx_sum" = "$rx_sum" ] || fail "checksum mismatch: a sent sha256 $tx_sum, b received sha256 $rx_sum"
    say "checksums match: $tx_n bytes, sha256 $tx_sum"
fi

vm_stats_check
vm_show_counters tx_packets rx_packets tx_copied tx_zero_copy rx_no_buffer tx_no_peer kicks interrupts dma_refused resets needs_reset
if [ "$GUESTS" = 2 ]; then
    for k in 0 1; do
        n=$(hp_counter $k tx_copied)
        [ "${n:-0}" -gt 0 ] || fail "host-pair counters: side $k copied no packet (tx_copied=${n:-missing})"
    done
fi
vm_check_no_refusals "the stock driver must cause no refusal"
vm_show_counters dma_maps dma_unmaps dma_maps_peak dma_refused
if [ "$VIOMMU" = 1 ]; then
    for k in 0 1; do
        [ "$(hp_counter $k dma_maps)" -gt 0 ] || fail "host-pair counters: side $k got no DMA map"
    done
fi

say "PASS"
if [ "$GUESTS" = 2 ]; then
    echo "SBNET-VM-TEST: PASS bytes=$tx_n sha256=$tx_sum viommu=$VIOMMU side0_tx_copied=$(hp_counter 0 tx_copied) side1_tx_copied=$(hp_counter 1 tx_copied) dma_maps_peak=$(hp_counter 0 dma_maps_peak)/$(hp_counter 1 dma_maps_peak) seconds=$(now)"
else
    echo "SBNET-VM-TEST: PASS single guest enumerated and bound virtio_net, seconds=$(now)"
fi
exit 0
