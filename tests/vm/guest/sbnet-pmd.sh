#!/bin/busybox sh
# The PMD side of the VM tests, sourced by /init when sbnet.driver=pmd (with
# STEPS, HUGEPAGES, TIMEOUT set and result/fail/off defined). It
#   1. loads the VFIO modules (/lib/modules/load-order-vfio),
#   2. checks that the guest has an IOMMU and finds the sbnet function
#      (1af4:1041) and its IOMMU group,
#   3. reserves HUGEPAGES 2 MiB huge pages (the PMD's DMA memory),
#   4. runs sbnet-testpmd once per step of sbnet.pmd=STEP,STEP,... on the
#      function (`--pci`: sbnet-testpmd binds it to vfio-pci itself).
#
# A step is MODE:COUNT[:ARG...]: sbnet-testpmd --mode MODE --count COUNT ARG...
# (ARG in the --name=value form, no spaces), or sleep:SECS. Examples:
#   sbnet.pmd=pingpong:1000,sleep:2,txonly:20000
#   sbnet.pmd=io:1000,rxonly:20000
#   sbnet.pmd=macswap:20:--linger=1,txonly:2000
# Every step must exit 0. Output lines for the harness:
#   SBNET-PMD: <line of sbnet-testpmd's output>
#   SBNET-STEP: N MODE rc=RC seconds=S
#   SBNET-JSON: N {sbnet-testpmd's --json summary}
# then SBNET-RESULT from /init.
TESTPMD=/sbnet/bin/sbnet-testpmd
TESTPMD_ARGS="--stats-interval 0 --peer-timeout 150 --idle-timeout 60"
now() { cut -d' ' -f1 /proc/uptime; }

[ -n "$STEPS" ] || fail "sbnet.driver=pmd needs sbnet.pmd=STEP,... (see sbnet-pmd.sh)"

for m in $(cat /lib/modules/load-order-vfio); do
    insmod "/lib/modules/$m" || fail "insmod $m failed"
done
echo "SBNET-BOOT: modules loaded: $(tr '\n' ' ' </lib/modules/load-order-vfio)"

# The IOMMU: Debian kernels have no VFIO no-IOMMU mode.
iommus=$(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')
dmesg | grep -E 'DMAR:|intel-iommu|iommu' | grep -v 'Command line' | head -8 | sed 's/^\[[ 0-9.]*\] /SBNET-INFO: dmesg: /'
[ -n "$iommus" ] || fail "the guest has no IOMMU (/sys/class/iommu is empty): QEMU needs -device intel-iommu,caching-mode=on and the kernel intel_iommu=on"
echo "SBNET-INFO: IOMMUs: $iommus"

PCI=''
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] || continue
    [ "$(cat "$d/device" 2>/dev/null)" = 0x1041 ] || continue
    PCI=${d##*/}
done
echo "SBNET-INFO: pci devices:"
for d in /sys/bus/pci/devices/*; do
    drv=$(readlink "$d/driver" 2>/dev/null); drv=${drv##*/}
    grp=$(readlink "$d/iommu_group" 2>/dev/null); grp=${grp##*/}
    echo "SBNET-INFO:   ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") class $(cat "$d/class") driver ${drv:-none} iommu_group ${grp:-none}"
done
[ -n "$PCI" ] || fail "no PCI function 1af4:1041 found (is the vfio-user-pci device attached?)"
GROUP=$(readlink /sys/bus/pci/devices/$PCI/iommu_group); GROUP=${GROUP##*/}
[ -n "$GROUP" ] || fail "PCI function $PCI has no IOMMU group"
echo "SBNET-INFO: sbnet function $PCI, IOMMU group $GROUP ($(ls /sys/kernel/iommu_groups/$GROUP/devices | tr '\n' ' ')), reset methods: $(cat /sys/bus/pci/devices/$PCI/reset_method 2>/dev/null || echo none), bars: $(head -3 /sys/bus/pci/devices/$PCI/resource | tr '\n' ' ')"

echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages
got=$(cat /proc/sys/vm/nr_hugepages)
[ "$got" -ge 4 ] || fail "only $got of $HUGEPAGES 2 MiB huge pages could be reserved"
echo "SBNET-INFO: $got huge pages of 2 MiB reserved"

[ -x "$TESTPMD" ] || fail "no $TESTPMD in the initramfs (the harness appends it as a second cpio archive)"
"$TESTPMD" --version >/tmp/v 2>&1 || fail "$TESTPMD does not run: $(head -3 /tmp/v | tr '\n' ' ')"
echo "SBNET-INFO: $(cat /tmp/v)"

n=0
summary=''
for step in $(echo "$STEPS" | tr ',' ' '); do
    n=$((n + 1))
    mode=${step%%:*}
    rest=${step#"$mode"}; rest=${rest#:}
    count=${rest%%:*}
    extra=${rest#"$count"}; extra=$(echo "${extra#:}" | tr ':' ' ')
    case "$mode" in
        sleep)
            echo "SBNET-STEP: $n sleep $count"
            sleep "$count"
            continue ;;
    esac
    t0=$(now)
    echo " during step $n ($step)" >/tmp/doing
    echo "SBNET-STEP: $n $mode count=$count starting: sbnet-testpmd --pci $PCI --mode $mode --count $count $TESTPMD_ARGS $extra"
    rm -f /tmp/step.json /tmp/rc
    # shellcheck disable=SC2086
    { "$TESTPMD" --pci "$PCI" --mode "$mode" --count "$count" $TESTPMD_ARGS \
        --json /tmp/step.json $extra; echo $? >/tmp/rc; } 2>&1 | sed 's/^/SBNET-PMD: /'
    rc=$(cat /tmp/rc 2>/dev/null || echo '?')
    t1=$(now)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    echo "SBNET-STEP: $n $mode rc=$rc seconds=$secs"
    [ -f /tmp/step.json ] && echo "SBNET-JSON: $n $(cat /tmp/step.json)"
    [ "$rc" = 0 ] || fail "step $n ($step) failed: sbnet-testpmd exited $rc: $(dmesg | grep -iE 'vfio|DMAR|dmar' | tail -3 | tr '\n' ' ')"
    summary="$summary step$n=$mode/$count/${secs}s"
done
dmesg | grep -iE 'vfio|DMAR' | tail -5 | sed 's/^\[[ 0-9.]*\] /SBNET-INFO: dmesg: /'
result PASS "pci=$PCI group=$GROUP$summary"
