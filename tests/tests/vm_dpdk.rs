//! The two-VM tests with DPDK's own virtio PMD (`net_virtio`, Debian
//! trixie's DPDK 24.11) in a guest (issue 10): a client nobody on this
//! project wrote.
//!
//! `tests/vm/run-dpdk-pair.sh SCENARIO` builds or checks the VM kit with its
//! DPDK archive (`build-kit.sh --dpdk`: `dpdk-testpmd` taken out of the
//! `dpdk-dev` package, with the `ldd` closure and the `net_virtio`,
//! `mempool_ring` and `bus_pci` drivers), starts `host-pair` and boots two
//! QEMU guests (TCG). A DPDK guest sits behind a virtual IOMMU and binds the
//! function to `vfio-pci`; guest A's `dpdk-testpmd` waits for a frame from
//! guest B, then runs `txonly` for a fixed time into B.
//!
//! - `dpdk`: B runs `dpdk-testpmd` in `rxonly`; both on 2 MiB huge pages.
//! - `stock`: B runs the stock Linux `virtio_net` driver and counts the frames
//!   its interface received.
//! - `nohuge`: as `dpdk`, both without huge pages (`--no-huge`, IOVA as VA):
//!   every 4 KiB page reaches host-pair as its own DMA map.
//!
//! Each passes when B counted at least 99% of the frames A's port sent,
//! host-pair copied them (`net_virtio` never negotiates Shared Buffers) and
//! refused nothing.
//!
//! Without root, when the kit cannot be built, or with `SBNET_SKIP_VM=1`
//! each is skipped with the reason on stderr; `SBNET_REQUIRE_VM=1` (set by
//! `scripts/test.sh`) makes that a failure (see `vm_common`). Knobs
//! (`SBNET_VM_SECONDS`, `SBNET_VM_HUGEPAGES`, `SBNET_VM_DPDK_MEM`, ...) pass
//! through to the harness; see the header of `tests/vm/run-dpdk-pair.sh`.

mod vm_common;

#[test]
fn two_vms_dpdk_net_virtio_to_dpdk() {
    vm_common::run_harness("vm_dpdk", "tests/vm/run-dpdk-pair.sh", &["dpdk"], false);
}

#[test]
fn two_vms_dpdk_net_virtio_to_stock_virtio_net() {
    vm_common::run_harness(
        "vm_dpdk_stock",
        "tests/vm/run-dpdk-pair.sh",
        &["stock"],
        false,
    );
}

#[test]
fn two_vms_dpdk_net_virtio_without_huge_pages() {
    vm_common::run_harness(
        "vm_dpdk_nohuge",
        "tests/vm/run-dpdk-pair.sh",
        &["nohuge"],
        false,
    );
}
