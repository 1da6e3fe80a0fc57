//! The two-VM test with the stock Linux `virtio_net` driver in both guests
//! (issue 4, part 1). It runs `tests/vm/run-stock-pair.sh`, which builds or
//! checks the VM kit (`tests/vm/build-kit.sh`), starts `host-pair`, boots two
//! QEMU guests (TCG) on its vfio-user sockets, pings and sends a few MB from
//! guest A to guest B and compares checksums and host-pair's counters.
//!
//! `two_vms_stock_virtio_net_behind_viommu` runs the same with both guests
//! behind a virtual IOMMU (`run-stock-pair.sh viommu`, issue 10): every
//! ring and buffer then reaches host-pair as many 4 KiB DMA maps.
//!
//! Without root, when the kit cannot be built, or with `SBNET_SKIP_VM=1`
//! it is skipped with the reason on stderr; `SBNET_REQUIRE_VM=1` (set by
//! `scripts/test.sh`) makes that a failure (see `vm_common`).
//! Other knobs are passed through to the harness (`SBNET_VM_DIR`,
//! `SBNET_VM_TIMEOUT`, `SBNET_VM_BYTES`, `SBNET_HOST_PAIR`, ...); see the
//! header of `tests/vm/run-stock-pair.sh`.

mod vm_common;

#[test]
fn two_vms_stock_virtio_net() {
    vm_common::run_harness("vm_stock", "tests/vm/run-stock-pair.sh", &[], false);
}

#[test]
fn two_vms_stock_virtio_net_behind_viommu() {
    vm_common::run_harness(
        "vm_stock_viommu",
        "tests/vm/run-stock-pair.sh",
        &["viommu"],
        false,
    );
}
