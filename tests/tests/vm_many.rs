//! Many VMs and multiqueue with the stock Linux `virtio_net` driver
//! (issue 12).
//!
//! - `three_vms_in_a_chain_over_two_links`: `tests/vm/run-chain.sh`. One
//!   `host-pair --config` serves two links, A—B and B—C, on two switch
//!   threads. B has two sbnet NICs and forwards IPv4 between them; A pings
//!   C and sends 4 MiB to C, and the checksums must match. Both links show
//!   copied frames both ways and no refusal.
//! - `two_vms_multiqueue_ethtool_combined_2`: `tests/vm/run-mq-pair.sh`.
//!   One link with `--queue-pairs 2`; both guests (2 vCPUs) switch to two
//!   channels with `ethtool -L eth0 combined 2` (the control queue) and A
//!   sends four TCP streams to B from both CPUs. Every stream arrives
//!   intact, and host-pair's per-queue-pair counters show frames on both
//!   pairs of both sides.
//!
//! Skipping follows `vm_common` (root and a VM kit needed;
//! `SBNET_REQUIRE_VM=1` makes a skip a failure).

mod vm_common;

#[test]
fn three_vms_in_a_chain_over_two_links() {
    vm_common::run_harness("vm_chain", "tests/vm/run-chain.sh", &[], false);
}

#[test]
fn two_vms_multiqueue_ethtool_combined_2() {
    vm_common::run_harness("vm_mq", "tests/vm/run-mq-pair.sh", &[], false);
}
