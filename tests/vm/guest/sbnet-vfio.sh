#!/bin/busybox sh
# Sourced by the guest scripts that drive the sbnet function through kernel
# VFIO (sbnet-pmd.sh, sbnet-dpdk.sh), with fail defined: loads the VFIO
# modules (/lib/modules/load-order-vfio), checks that the guest has an IOMMU,
# and sets PCI (the sbnet function, 1af4:1041) and GROUP (its IOMMU group).
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

