//! What the fuzz targets share: the pair they drive.

use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::{Pair, PairConfig};
use sbnet_device::switch::SwitchConfig;
use std::time::Duration;

/// The slot geometry of every fuzzed pair: 16 slots of 2 KiB.
pub fn geometry() -> SlotGeometry {
    SlotGeometry::new(2048, 16).expect("geometry")
}

/// A fresh pair with no TX wait (deferrals happen on the second poll).
pub fn pair() -> Pair {
    Pair::new(&PairConfig {
        geometry: geometry(),
        max_queue_size: 256,
        switch: SwitchConfig {
            burst: 16,
            tx_wait: Duration::ZERO,
        },
        huge_pages: false,
        queue_pairs: 1,
    })
    .expect("pair")
}
