//! The gift policy (`docs/abi.md` §6 "Zero-copy mode": Gift).
//!
//! In zero-copy mode a side keeps about half of the slots. When its free
//! pool grows past `slot_count / 2 + hysteresis` it gifts the excess, down
//! to `slot_count / 2`, as transmits with `GIFT_BUFFER` set, up to a burst
//! limit per call. The hysteresis keeps a side that hovers around half from
//! gifting one slot at a time; the burst limit keeps one call short.
//!
//! A one-way flow (A sends, B only receives and frees) then runs at full
//! rate: B's pool fills with A's slots, and every time it passes the
//! trigger B sends the surplus back, so A cycles through about
//! `slot_count / 2 - hysteresis` slots without waiting.

/// The numbers of the policy for one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiftPolicy {
    keep: u32,
    trigger: u32,
    burst: u32,
}

impl GiftPolicy {
    /// The policy for `slot_count` slots. `hysteresis: None` picks
    /// `slot_count / 16` clamped to `1..=32`.
    pub fn new(slot_count: u32, hysteresis: Option<u32>, burst: u32) -> Self {
        let keep = slot_count / 2;
        let h = hysteresis.unwrap_or((slot_count / 16).clamp(1, 32));
        Self {
            keep,
            trigger: keep.saturating_add(h),
            burst: burst.max(1),
        }
    }

    /// Free slots a side keeps after gifting.
    pub fn keep(&self) -> u32 {
        self.keep
    }

    /// Free slots above which a side gifts.
    pub fn trigger(&self) -> u32 {
        self.trigger
    }

    /// How many slots to gift now, with `free` slots in the pool and
    /// `tx_room` free transmit descriptors.
    #[inline]
    pub fn due(&self, free: u32, tx_room: u32) -> u32 {
        if free <= self.trigger {
            return 0;
        }
        (free - self.keep).min(self.burst).min(tx_room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hysteresis() {
        assert_eq!(GiftPolicy::new(1024, None, 64).trigger(), 512 + 32);
        assert_eq!(GiftPolicy::new(256, None, 64).trigger(), 128 + 16);
        assert_eq!(GiftPolicy::new(8, None, 64).trigger(), 4 + 1);
        assert_eq!(GiftPolicy::new(2, None, 64).trigger(), 1 + 1);
    }

    #[test]
    fn thresholds() {
        let p = GiftPolicy::new(1024, Some(32), 64);
        assert_eq!(p.keep(), 512);
        // At or below the trigger: nothing.
        assert_eq!(p.due(0, 1024), 0);
        assert_eq!(p.due(512, 1024), 0);
        assert_eq!(p.due(544, 1024), 0);
        // Past it: everything above half, in bursts.
        assert_eq!(p.due(545, 1024), 33);
        assert_eq!(p.due(600, 1024), 64);
        assert_eq!(p.due(1024, 1024), 64);
        // Never more than the transmit queue takes.
        assert_eq!(p.due(600, 10), 10);
        assert_eq!(p.due(600, 0), 0);
    }

    #[test]
    fn drains_to_half_in_bursts() {
        let p = GiftPolicy::new(1024, Some(32), 64);
        let mut free = 1000;
        let mut bursts = 0;
        loop {
            let n = p.due(free, 1024);
            if n == 0 {
                break;
            }
            free -= n;
            bursts += 1;
        }
        assert_eq!(free, 512);
        assert_eq!(bursts, 8); // 488 = 7 × 64 + 40
    }

    #[test]
    fn zero_hysteresis_gifts_single_slots() {
        let p = GiftPolicy::new(16, Some(0), 4);
        assert_eq!(p.due(8, 16), 0);
        assert_eq!(p.due(9, 16), 1);
    }
}
