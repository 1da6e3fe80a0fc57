//! The epoch rules (`docs/abi.md` §6 "Ownership": epochs): when the pair's
//! shape (which sides are active, which negotiated shared buffers) changes,
//! the epoch moves on, the switch restarts ownership from rule 2 and every
//! shared-buffers side resynchronises until it acknowledges; the peer-status
//! word each side reads tells it who is there and who is synchronised.

use super::Pair;
use crate::function::Event;
use sbnet_abi::net::{PEER_PRESENT, PEER_SHARED_BUFFERS, PEER_SYNCED};
use std::time::{Duration, Instant};

/// A rate limit for the epoch log lines of one link: at most
/// [`LogLimit::BURST`] lines per [`LogLimit::PERIOD`]; the lines past it
/// are counted, and the first line of the next period says how many were
/// left out. A client that reconnects in a loop (thousands of epochs a
/// second) then costs a few lines a second, while the epoch itself, in the
/// stats, still counts every change.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    period_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Lines let through per period.
    pub(crate) const BURST: u32 = 20;
    /// The period.
    pub(crate) const PERIOD: Duration = Duration::from_secs(1);

    /// Whether a line may be logged at `now`: `Some(n)` with the lines
    /// left out since the last one that got through, or `None`.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .period_start
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::PERIOD);
        if fresh {
            self.period_start = Some(now);
            self.used = 0;
        }
        if self.used < Self::BURST {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Logs the count of lines left out, if any, before the line `allow`
    /// let through.
    fn note(left_out: u64) {
        if left_out > 0 {
            tracing::info!(
                left_out,
                "epoch log lines left out (more than {} a second on this link)",
                Self::BURST
            );
        }
    }
}

impl Pair {
    /// Applies the events side `k`'s registers raised. Returns true when
    /// the driver kicked a queue.
    pub fn handle_events(&mut self, k: usize) -> bool {
        let mut kicked = false;
        let mut shape_may_change = false;
        let events: Vec<Event> = self.fns[k].take_events().collect();
        for e in events {
            match e {
                Event::StatusChanged => shape_may_change = true,
                Event::Kick(_) => kicked = true,
                Event::EpochAck(e) => {
                    if e == self.epoch && self.switch.resyncing(k) {
                        if let Some(n) = self.epoch_log.allow(Instant::now()) {
                            LogLimit::note(n);
                            tracing::info!(side = k, epoch = e, "side synchronised to the epoch");
                        }
                        self.switch.acked(k);
                        // The peer may now take its share (PEER_SYNCED).
                        self.publish_pairing();
                        kicked = true;
                    }
                }
            }
        }
        if shape_may_change {
            self.update_shape();
            kicked = true;
        }
        kicked
    }

    fn update_shape(&mut self) {
        let shape = [0, 1].map(|k| (self.fns[k].is_active(), self.fns[k].is_shared_buffers()));
        if shape == self.shape {
            return;
        }
        self.shape = shape;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.switch.begin_epoch([shape[0].1, shape[1].1]);
        for q in 0..self.switch.queue_pairs() {
            let [f0, f1] = &mut self.fns;
            self.switch
                .flush_pair(q, &mut [f0.view_pair(q), f1.view_pair(q)]);
        }
        if let Some(n) = self.epoch_log.allow(Instant::now()) {
            LogLimit::note(n);
            tracing::info!(
                epoch = self.epoch,
                mode = ?self.switch.mode(),
                side0 = ?shape[0],
                side1 = ?shape[1],
                "pairing epoch changed (active, shared buffers)"
            );
        }
        self.publish_pairing();
    }

    pub(super) fn publish_pairing(&mut self) {
        for k in 0..2 {
            let peer = &self.fns[1 - k];
            let mut st = 0;
            if peer.is_active() {
                st |= PEER_PRESENT;
            }
            if peer.is_shared_buffers() {
                st |= PEER_SHARED_BUFFERS;
            }
            if peer.is_active() && !self.switch.resyncing(1 - k) {
                st |= PEER_SYNCED;
            }
            self.fns[k].set_pairing(self.epoch, st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn log_limit_lets_a_burst_through_then_counts_what_it_left_out() {
        let mut l = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..LogLimit::BURST {
            assert_eq!(l.allow(t0), Some(0));
        }
        for _ in 0..37 {
            assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        }
        // The next period's first line reports the 37, then the count restarts.
        let t1 = t0 + LogLimit::PERIOD;
        assert_eq!(l.allow(t1), Some(37));
        assert_eq!(l.allow(t1), Some(0));
        // A clock that goes backwards does not open a period.
        for _ in 2..LogLimit::BURST {
            assert_eq!(l.allow(t1), Some(0));
        }
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t1 + LogLimit::PERIOD), Some(1));
    }
}
