//! Two functions, the switch and the ledger behind one lock. The epoch
//! rules are in `epochs`; the data-plane loop and what its threads share
//! in `runner` ([`run_switch`], [`Shared`]); the vfio-user backend of one
//! side is [`crate::backend::SideHandle`] (re-exported here).

mod epochs;
mod runner;

pub use crate::backend::SideHandle;
pub use runner::{run_links, run_switch, sleep_unless_stopped, LinkSet, PollMode, Shared};

use crate::function::Function;
use crate::mem::ShmRegion;
use crate::switch::{Switch, SwitchConfig};
use sbnet_abi::shm::SlotGeometry;

/// How a pair is built.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Slot geometry of the Shared Buffers region.
    pub geometry: SlotGeometry,
    /// Largest queue size a driver may use.
    pub max_queue_size: u16,
    /// Switch tunables.
    pub switch: SwitchConfig,
    /// Back the region with huge pages (a `MFD_HUGETLB` memfd) instead of
    /// normal pages; the region size must be a multiple of the huge page size.
    pub huge_pages: bool,
}

/// Why a [`PairConfig`] is refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The largest queue size is not a power of two of at least 2 (virtio
    /// 1.2 §2.7: split queue sizes are powers of two).
    #[error("largest queue size {0} is not a power of two between 2 and 32768")]
    QueueSizeNotPowerOfTwo(u16),
    /// The largest queue size cannot hold what a side's receive queue must
    /// post: half of the slots (those its peer may own), plus what the gift
    /// policy lets a side keep above half (up to 32 free, 64 in flight) and
    /// the PMD's classic buffers (32). Below that a one-way flow can stall
    /// (docs/benchmarks.md, problem 2).
    #[error("largest queue size {queue_size} is too small for {slots} slots: each side's receive queue must hold the slots its peer may own plus classic buffers (at least slots/2 + 128 = {need})")]
    QueueTooSmall {
        /// The configured largest queue size.
        queue_size: u16,
        /// Slots in the region.
        slots: u32,
        /// The least queue size for this many slots.
        need: u32,
    },
}

/// Why a pair could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The configuration breaks a rule ([`PairConfig::validate`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Shared Buffers region could not be created.
    #[error("cannot create the Shared Buffers region: {0}")]
    Region(#[from] std::io::Error),
}

impl PairConfig {
    /// Slack a receive queue needs beyond the peer's half of the slots.
    pub const QUEUE_SLACK: u32 = 128;

    /// The least largest-queue-size for `slots` slots: `slots / 2 + 128`.
    pub fn min_queue_size(slots: u32) -> u32 {
        slots / 2 + Self::QUEUE_SLACK
    }

    /// Checks the geometry rules [`Pair::new`] enforces.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let q = self.max_queue_size;
        if q < 2 || !q.is_power_of_two() {
            return Err(ConfigError::QueueSizeNotPowerOfTwo(q));
        }
        let slots = self.geometry.slot_count();
        let need = Self::min_queue_size(slots);
        if u32::from(q) < need {
            return Err(ConfigError::QueueTooSmall {
                queue_size: q,
                slots,
                need,
            });
        }
        Ok(())
    }
}

/// The pair's state.
#[derive(Debug)]
pub struct Pair {
    /// The two functions, side 0 and side 1.
    pub fns: [Function; 2],
    /// The switch and the host ledger.
    pub switch: Switch,
    shm: ShmRegion,
    epoch: u32,
    shape: [(bool, bool); 2],
}

impl Pair {
    /// Checks the configuration ([`PairConfig::validate`]), then creates
    /// the region and both functions.
    pub fn new(cfg: &PairConfig) -> Result<Self, PairError> {
        cfg.validate()?;
        let len = cfg.geometry.region_size();
        let shm = if cfg.huge_pages {
            ShmRegion::memfd_huge(len)?
        } else {
            ShmRegion::memfd(len)?
        };
        let mut p = Self {
            fns: [0, 1].map(|k| Function::new(k, cfg.geometry, cfg.max_queue_size)),
            switch: Switch::new(cfg.switch, cfg.geometry, cfg.max_queue_size),
            shm,
            epoch: 1,
            shape: [(false, false); 2],
        };
        p.publish_pairing();
        Ok(p)
    }

    /// The current pairing epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The host mapping of the Shared Buffers region.
    pub fn shm(&self) -> &ShmRegion {
        &self.shm
    }

    /// One polling round of the switch. A ring the switch found broken
    /// (`DEVICE_NEEDS_RESET`) changes the epoch right away, so the peer
    /// learns of it without waiting for the broken side's next message.
    #[inline]
    pub fn poll(&mut self) -> usize {
        let [f0, f1] = &mut self.fns;
        let mut views = [f0.view(), f1.view()];
        let work = self.switch.poll(&mut views, &self.shm);
        let broken = views.map(|v| v.broken());
        for (f, why) in self.fns.iter_mut().zip(broken) {
            if let Some(why) = why {
                f.needs_reset(why);
            }
        }
        for k in 0..2 {
            if self.fns[k].has_events() {
                self.handle_events(k);
            }
        }
        work
    }

    /// Sets `USED_F_NO_NOTIFY` on every enabled queue (the host is polling)
    /// or clears it (the host is about to sleep and wants kicks).
    pub fn set_polling(&mut self, on: bool) {
        for f in &mut self.fns {
            for q in [sbnet_abi::net::RX_QUEUE, sbnet_abi::net::TX_QUEUE] {
                if let Some(q) = f.queue_mut(q) {
                    q.set_no_notify(on);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(slots: u32, max_queue_size: u16) -> PairConfig {
        PairConfig {
            geometry: SlotGeometry::new(2048, slots).unwrap(),
            max_queue_size,
            switch: SwitchConfig::default(),
            huge_pages: false,
        }
    }

    #[test]
    fn geometry_rule_is_enforced_by_the_pair() {
        // slots/2 + 128: 512 slots need 384, so 512 is the least power of two.
        assert_eq!(PairConfig::min_queue_size(512), 384);
        assert_eq!(cfg(512, 512).validate(), Ok(()));
        assert_eq!(
            cfg(512, 256).validate(),
            Err(ConfigError::QueueTooSmall {
                queue_size: 256,
                slots: 512,
                need: 384
            })
        );
        assert_eq!(
            cfg(16, 100).validate(),
            Err(ConfigError::QueueSizeNotPowerOfTwo(100))
        );
        assert_eq!(
            cfg(16, 1).validate(),
            Err(ConfigError::QueueSizeNotPowerOfTwo(1))
        );
        // Pair::new cannot be talked past it.
        assert!(matches!(
            Pair::new(&cfg(512, 256)),
            Err(PairError::Config(ConfigError::QueueTooSmall { .. }))
        ));
        assert!(Pair::new(&cfg(16, 256)).is_ok());
    }
}
