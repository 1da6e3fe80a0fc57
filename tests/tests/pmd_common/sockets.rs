//! What the flow tests over real vfio-user sockets (`pmd_flows`,
//! `pmd_testpmd`) share.

use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::PairConfig;
use sbnet_device::switch::SwitchConfig;

/// The tests of a file run one at a time: each one keeps both cores
/// busy (polling switch and drivers), and the stall detectors of the
/// binaries must not fire because a neighbour test took the CPU.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pair of `slots` slots of `slot_size` bytes, queues up to 256, the
/// switch's default tunables.
pub fn pair_cfg(slot_size: u32, slots: u32) -> PairConfig {
    PairConfig {
        geometry: SlotGeometry::new(slot_size, slots).expect("geometry"),
        max_queue_size: 256,
        switch: SwitchConfig::default(),
        huge_pages: false,
        queue_pairs: 1,
    }
}
