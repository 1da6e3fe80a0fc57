#!/bin/busybox sh
# The PMD side of the VM tests, sourced by /init when sbnet.driver=pmd (with
# STEPS, HUGEPAGES, TIMEOUT set and result/fail/off defined). It
#   1.-2. sbnet-vfio.sh: loads the VFIO modules, checks that the guest has
#      an IOMMU, finds the sbnet function (1af4:1041, PCI) and its IOMMU
#      group (GROUP),
#   3. reserves HUGEPAGES 2 MiB huge pages (the PMD's DMA memory; none with
#      sbnet.hugepages=0, for steps run with --small-pages),
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

. /sbnet/sbnet-vfio.sh

if [ "$HUGEPAGES" = 0 ]; then
    # sbnet.hugepages=0: the steps run sbnet-testpmd --small-pages.
    echo "SBNET-INFO: no huge pages reserved (4 KiB DMA pages)"
else
    echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages
    got=$(cat /proc/sys/vm/nr_hugepages)
    [ "$got" -ge 4 ] || fail "only $got of $HUGEPAGES 2 MiB huge pages could be reserved"
    echo "SBNET-INFO: $got huge pages of 2 MiB reserved"
fi

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
