#!/bin/busybox sh
# The DPDK side of the VM tests, sourced by /init when sbnet.driver=dpdk
# (with DPDK_ROLE, TX_SECONDS, HUGEPAGES, DPDK_MEM, TIMEOUT set and
# result/fail defined). DPDK's own testpmd with its virtio PMD (net_virtio,
# a client nobody on this project wrote) drives the sbnet function:
#   1. sbnet-vfio.sh: VFIO modules, IOMMU check, PCI and GROUP;
#   2. binds PCI to vfio-pci through driver_override;
#   3. memory: HUGEPAGES 2 MiB huge pages on /dev/hugepages, or with
#      sbnet.hugepages=0 `--no-huge -m DPDK_MEM --iova-mode=va` (4 KiB pages,
#      one IOMMU mapping per page: the many-maps path of host-pair);
#   4. runs dpdk-testpmd -i, driven through a fifo, in one of two roles:
#   tx: rxonly until the peer's first frames arrive (the handshake: the
#       peer is up and has posted its receive buffers), then txonly for
#       TX_SECONDS, stop, 3 s for the host to drain the ring, read the port
#       counters: tx_packets is what net_virtio handed to the device.
#   rx: rxonly, sending one burst (`start tx_first`) a second until frames
#       arrive, then receives until nothing new came for 5 s:
#       rx_packets is what the port received.
# The drivers come from the DPDK archive the harness appends to the
# initramfs (/sbnet/dpdk, see build-kit.sh --dpdk). Output lines:
#   SBNET-DPDK: <testpmd output> (start-up and the last lines)
#   SBNET-INFO: ...
# then SBNET-RESULT from /init: PASS role=dpdk-tx tx_packets=N ... or
#                               PASS role=dpdk-rx rx_packets=N ...
TP=/usr/bin/dpdk-testpmd
OUT=/tmp/testpmd.out
now() { cut -d' ' -f1 /proc/uptime; }

case "$DPDK_ROLE" in tx|rx) ;; *) fail "sbnet.dpdk must be tx or rx, got '$DPDK_ROLE'" ;; esac
[ -x "$TP" ] || fail "no $TP in the initramfs (the harness appends the kit's dpdk.cpio.gz)"

. /sbnet/sbnet-vfio.sh

# 2. vfio-pci through driver_override (the kernel's virtio-pci, built in,
# has taken the function: unbind it first).
drv=$(readlink "/sys/bus/pci/devices/$PCI/driver"); drv=${drv##*/}
if [ -n "$drv" ] && [ "$drv" != vfio-pci ]; then
    echo "$PCI" >"/sys/bus/pci/devices/$PCI/driver/unbind" || fail "cannot unbind $PCI from $drv"
    echo "SBNET-INFO: $PCI unbound from $drv"
fi
echo vfio-pci >"/sys/bus/pci/devices/$PCI/driver_override" || fail "cannot set driver_override of $PCI"
echo "$PCI" >/sys/bus/pci/drivers_probe
drv=$(readlink "/sys/bus/pci/devices/$PCI/driver"); drv=${drv##*/}
[ "$drv" = vfio-pci ] || fail "$PCI did not bind to vfio-pci (driver: ${drv:-none})"
[ -e "/dev/vfio/$GROUP" ] || fail "no /dev/vfio/$GROUP after binding $PCI to vfio-pci"
echo "SBNET-INFO: $PCI bound to vfio-pci, /dev/vfio/$GROUP"

# 3. memory (/var/run: the EAL's runtime directory, which it wants even
# with --in-memory)
mkdir -p /var/run
if [ "$HUGEPAGES" -gt 0 ]; then
    echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages
    got=$(cat /proc/sys/vm/nr_hugepages)
    [ "$got" -ge "$HUGEPAGES" ] || fail "only $got of $HUGEPAGES 2 MiB huge pages could be reserved"
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages || fail "cannot mount hugetlbfs on /dev/hugepages"
    MEM="--in-memory"
    echo "SBNET-INFO: $got huge pages of 2 MiB reserved"
else
    # (--no-huge implies --legacy-mem, which --in-memory refuses: the EAL
    # keeps its runtime files in /var/run/dpdk.)
    MEM="--no-huge -m $DPDK_MEM --iova-mode=va"
    echo "SBNET-INFO: no huge pages: $DPDK_MEM MiB of 4 KiB pages, IOVA as VA"
fi

# 4. testpmd. One CPU: the main lcore (it reads the commands) and the
# forwarding lcore share CPU 0. libstdbuf makes its stdout line-buffered, so
# each answer is in $OUT as soon as it is printed.
D=/sbnet/dpdk
EAL="--lcores=0@0,1@0 -a $PCI $MEM -d $D/librte_bus_pci.so -d $D/librte_mempool_ring.so -d $D/librte_net_virtio.so"
APP="-i --total-num-mbufs=4096 --nb-cores=1 --rxq=1 --txq=1 --txpkts=64"
echo "SBNET-INFO: DPDK $(cat $D/version): dpdk-testpmd $EAL -- $APP"
rm -f /tmp/tp.in; mkfifo /tmp/tp.in
# shellcheck disable=SC2086
LD_PRELOAD=/usr/libexec/coreutils/libstdbuf.so _STDBUF_O=L \
    "$TP" $EAL -- $APP </tmp/tp.in >$OUT 2>&1 &
TP_PID=$!
exec 3>/tmp/tp.in
tp() { echo "$*" >&3; }
show_out() {  # the start-up and the last lines of testpmd's output
    grep -v '^ *$' $OUT | head -n 40 | sed 's/^/SBNET-DPDK: /'
    echo "SBNET-DPDK: ..."
    grep -v '^ *$' $OUT | tail -n 15 | sed 's/^/SBNET-DPDK: /'
}
tp_fail() { show_out; fail "$*"; }
# stats: RX and TX, the port's packet counters (show port stats 0).
stats() {
    n0=$(grep -c 'NIC statistics for port 0' $OUT)
    tp "show port stats 0"
    i=0
    while :; do
        kill -0 $TP_PID 2>/dev/null || tp_fail "dpdk-testpmd exited"
        if [ "$(grep -c 'NIC statistics for port 0' $OUT)" -gt "$n0" ]; then
            set -- $(awk '/NIC statistics for port 0/ {rx=""; tx=""} /RX-packets:/ {rx=$2} /TX-packets:/ {tx=$2} END {print rx, tx}' $OUT)
            [ $# = 2 ] && { RX=$1 TX=$2; return 0; }
        fi
        i=$((i + 1))
        [ $i -ge 300 ] && tp_fail "dpdk-testpmd did not answer 'show port stats 0' within 30 s"
        sleep 0.1
    done
}

echo " starting dpdk-testpmd" >/tmp/doing
t0=$(now)
stats
echo "SBNET-INFO: dpdk-testpmd up after $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s: $(grep -m1 -E 'Port 0: ' $OUT), $(grep -m1 'Link status' $OUT || grep -m1 -i 'link up\|link down' $OUT)"
grep -q 'Port 0: ' $OUT || tp_fail "dpdk-testpmd found no port 0 on $PCI"
tp "set fwd rxonly"
HS_LIMIT=$((TIMEOUT / 2))
hs=0
echo " waiting for the peer's first frames" >/tmp/doing
if [ "$DPDK_ROLE" = tx ]; then
    tp "start"
    while stats; [ "$RX" = 0 ]; do
        hs=$((hs + 1))
        [ $hs -ge "$HS_LIMIT" ] && tp_fail "no frame from the peer within $HS_LIMIT s (handshake)"
        sleep 1
    done
    tp "stop"
    HS_RX=$RX TX0=$TX
    echo "SBNET-INFO: handshake: $RX frames from the peer after $hs s; txonly for $TX_SECONDS s"
    echo " in txonly" >/tmp/doing
    tp "set fwd txonly"
    tp "start"
    sleep "$TX_SECONDS"
    tp "stop"
    sleep 3
    stats
    SENT=$((TX - TX0))
    tp "quit"
    wait $TP_PID; rc=$?
    show_out
    [ "$rc" = 0 ] || fail "dpdk-testpmd exited $rc"
    [ "$SENT" -gt 0 ] || fail "txonly sent nothing in $TX_SECONDS s"
    result PASS "tx_packets=$SENT seconds=$TX_SECONDS handshake_rx=$HS_RX hugepages=$HUGEPAGES"
else
    while tp "start tx_first"; sleep 1; stats; [ "$RX" = 0 ]; do
        tp "stop"
        hs=$((hs + 1))
        [ $hs -ge "$HS_LIMIT" ] && tp_fail "no frame from the peer within $HS_LIMIT s (handshake)"
    done
    echo "SBNET-INFO: handshake: first frames after $hs s; receiving until 5 s pass without one"
    echo " receiving" >/tmp/doing
    last=-1 quiet=0
    while [ $quiet -lt 5 ]; do
        sleep 1
        stats
        if [ "$RX" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$RX
    done
    tp "stop"
    tp "quit"
    wait $TP_PID; rc=$?
    show_out
    [ "$rc" = 0 ] || fail "dpdk-testpmd exited $rc"
    result PASS "rx_packets=$RX hugepages=$HUGEPAGES"
fi
