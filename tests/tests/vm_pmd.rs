//! The two-VM test with the sbnet PMD in both guests (issue 4, part 3b).
//!
//! `tests/vm/run-pmd-pair.sh pmd` builds or checks the VM kit, starts
//! `host-pair`, and boots two QEMU guests (TCG) with a virtual IOMMU
//! (`-device intel-iommu,caching-mode=on`, `intel_iommu=on`). In each guest
//! `sbnet-testpmd --pci` binds the function to `vfio-pci` and drives it
//! through kernel VFIO: guest A ping-pongs with guest B (which echoes), then
//! A sends a one-way stream of 64-byte frames to B and B one of 1500-byte
//! frames to A, every frame checked. The test passes when every step has
//! the expected counts without integrity errors or loss and host-pair's
//! counters show zero copies (`copied_bytes == 0`), zero-copy packets on
//! both sides and no refusal.
//!
//! `two_vms_pmd_zero_copy_on_small_pages` runs the same steps and checks
//! with the PMD's DMA memory on ordinary 4 KiB pages and no huge page
//! reserved (`run-pmd-pair.sh pmd-small`, `sbnet-testpmd --small-pages`,
//! issue 10): behind the vIOMMU each page of its rings and buffers reaches
//! host-pair as its own DMA map.
//!
//! Without root, when the kit cannot be built, or with `SBNET_SKIP_VM=1`
//! it is skipped with the reason on stderr; `SBNET_REQUIRE_VM=1` (set by
//! `scripts/test.sh`) makes that a failure (see `vm_common`). Knobs
//! (`SBNET_VM_PINGS`, `SBNET_VM_PACKETS`, `SBNET_VM_BACK`, `SBNET_VM_TIMEOUT`,
//! `SBNET_HOST_PAIR`, `SBNET_TESTPMD`, ...) pass through to the harness; see
//! the header of `tests/vm/run-pmd-pair.sh`.

mod vm_common;

#[test]
fn two_vms_pmd_zero_copy() {
    vm_common::run_harness("vm_pmd", "tests/vm/run-pmd-pair.sh", &["pmd"], true);
}

#[test]
fn two_vms_pmd_zero_copy_on_small_pages() {
    vm_common::run_harness(
        "vm_pmd_small",
        "tests/vm/run-pmd-pair.sh",
        &["pmd-small"],
        true,
    );
}
