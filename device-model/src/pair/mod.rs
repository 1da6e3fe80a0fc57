//! Two functions, the switch and the ledger behind one lock. The epoch
//! rules are in `epochs`; the data-plane loop and what its threads share
//! in `runner` ([`run_switch`], [`Shared`]); the vfio-user backend of one
//! side is [`crate::backend::SideHandle`] (re-exported here).

mod epochs;
mod runner;

pub use crate::backend::SideHandle;
pub use runner::{run_links, run_switch, sleep_unless_stopped, LinkSet, PollMode, Shared};

use crate::counters::QueueCounters;
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
    /// Queue pairs of the link (`max_virtqueue_pairs`): a power of two in
    /// `1..=16`, at most half the slots. 1 offers no multiqueue feature;
    /// above 1 the functions offer `VIRTIO_NET_F_MQ` and a control queue,
    /// and the slots are split into sub-pairs (`docs/abi.md` §8).
    pub queue_pairs: u16,
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
    #[error("largest queue size {queue_size} is too small for {slots} slots in {queue_pairs} queue pair(s): each side's receive queue must hold the slots its peer may own plus classic buffers (at least slots/queue_pairs/2 + 128 = {need})")]
    QueueTooSmall {
        /// The configured largest queue size.
        queue_size: u16,
        /// Slots in the region.
        slots: u32,
        /// Queue pairs of the link.
        queue_pairs: u16,
        /// The least queue size for this many slots and queue pairs.
        need: u32,
    },
    /// The queue pairs are not a power of two in `1..=16`, or more than
    /// half the slots (each sub-pair needs a slot on each side).
    #[error("{queue_pairs} queue pairs: must be a power of two between 1 and 16, and at most half the {slots} slots")]
    QueuePairs {
        /// The configured queue pairs.
        queue_pairs: u16,
        /// Slots in the region.
        slots: u32,
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

    /// The least largest-queue-size for `slots` slots and one queue pair:
    /// `slots / 2 + 128`.
    pub fn min_queue_size(slots: u32) -> u32 {
        Self::min_queue_size_mq(slots, 1)
    }

    /// The least largest-queue-size for `slots` slots in `queue_pairs`
    /// sub-pairs: each receive queue holds the peer's half of its
    /// sub-pair's slots plus classic buffers, `(slots / queue_pairs) / 2 + 128`.
    pub fn min_queue_size_mq(slots: u32, queue_pairs: u16) -> u32 {
        (slots / u32::from(queue_pairs.max(1))) / 2 + Self::QUEUE_SLACK
    }

    /// Checks the geometry rules [`Pair::new`] enforces.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let q = self.max_queue_size;
        if q < 2 || !q.is_power_of_two() {
            return Err(ConfigError::QueueSizeNotPowerOfTwo(q));
        }
        let slots = self.geometry.slot_count();
        let qp = self.queue_pairs;
        if !sbnet_abi::net::valid_queue_pairs(qp) || u32::from(qp) * 2 > slots {
            return Err(ConfigError::QueuePairs {
                queue_pairs: qp,
                slots,
            });
        }
        let need = Self::min_queue_size_mq(slots, qp);
        if u32::from(q) < need {
            return Err(ConfigError::QueueTooSmall {
                queue_size: q,
                slots,
                queue_pairs: qp,
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
    /// Rate limit of the epoch log lines (a reconnecting client makes many).
    epoch_log: epochs::LogLimit,
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
            fns: [0, 1].map(|k| {
                Function::with_queue_pairs(k, cfg.geometry, cfg.max_queue_size, cfg.queue_pairs)
            }),
            switch: Switch::with_queue_pairs(
                cfg.switch,
                cfg.geometry,
                cfg.max_queue_size,
                cfg.queue_pairs,
            ),
            shm,
            epoch: 1,
            shape: [(false, false); 2],
            epoch_log: epochs::LogLimit::default(),
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
        let work = if self.switch.queue_pairs() == 1 {
            let [f0, f1] = &mut self.fns;
            let mut views = [f0.view(), f1.view()];
            let work = self.switch.poll(&mut views, &self.shm);
            let broken = views.map(|v| v.broken());
            self.apply_broken(broken);
            work
        } else {
            self.poll_mq()
        };
        for k in 0..2 {
            if self.fns[k].has_events() {
                self.handle_events(k);
            }
        }
        work
    }

    /// Puts a side whose ring the switch found broken in `DEVICE_NEEDS_RESET`.
    #[inline]
    fn apply_broken(&mut self, broken: [Option<crate::queue::QueueError>; 2]) {
        for (f, why) in self.fns.iter_mut().zip(broken) {
            if let Some(why) = why {
                f.needs_reset(why);
            }
        }
    }

    /// One polling round of a multiqueue link: both sides' control queues,
    /// then every sub-pair in both directions. A classic frame from
    /// transmitq(q) goes to the peer's receiveq(`q % E_peer`); sub-pair q
    /// moves slots only while both sides use pair q (`docs/abi.md` §8).
    fn poll_mq(&mut self) -> usize {
        let mut work = self.fns[0].serve_ctrl() + self.fns[1].serve_ctrl();
        let active = [self.fns[0].active_pairs(), self.fns[1].active_pairs()];
        for q in 0..self.switch.queue_pairs() {
            let zc = self.switch.sub_pair_moves(q, active);
            for from in 0..2 {
                let j = Switch::rx_pair(q, active[1 - from]);
                let before = self
                    .fns
                    .each_ref()
                    .map(|f| QueueCounters::of_side(&f.counters));
                let [f0, f1] = &mut self.fns;
                let mut views = if from == 0 {
                    [f0.view_pair(q), f1.view_pair(j)]
                } else {
                    [f0.view_pair(j), f1.view_pair(q)]
                };
                work += self
                    .switch
                    .poll_direction(&mut views, &self.shm, from, q, j, zc);
                let broken = views.map(|v| v.broken());
                self.apply_broken(broken);
                // The sender's transmitq(q) and the receiver's receiveq(j).
                self.fns[from].count_pairs(&before[from], q, u16::MAX);
                self.fns[1 - from].count_pairs(&before[1 - from], u16::MAX, j);
            }
        }
        work
    }

    /// Sets `USED_F_NO_NOTIFY` on every enabled queue (the host is polling)
    /// or clears it (the host is about to sleep and wants kicks).
    pub fn set_polling(&mut self, on: bool) {
        let n = sbnet_abi::net::num_queues(self.switch.queue_pairs());
        for f in &mut self.fns {
            for q in 0..n {
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
            queue_pairs: 1,
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
                queue_pairs: 1,
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
