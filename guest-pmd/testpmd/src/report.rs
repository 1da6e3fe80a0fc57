//! Counting, the per-interval stats line and the summary.

use crate::frame::Bad;
use sbnet_pmd::Stats;
use std::time::{Duration, Instant};

/// Sequence numbers carry their flow (the sender's queue pair) above this
/// bit: each flow counts its gaps and reordering on its own.
pub const FLOW_SHIFT: u32 = 48;
/// Flows told apart (queue pairs of a link, at most 16).
const FLOWS: usize = sbnet_abi::net::MAX_QUEUE_PAIRS as usize;

/// Counters of a run.
pub struct Meter {
    frame: usize,
    /// Frames received (good or bad).
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames that failed the check.
    pub integrity_errors: u64,
    /// Frames whose sequence number was below one already seen.
    pub reordered: u64,
    /// Sequence numbers skipped.
    pub gaps: u64,
    next_seq: [u64; FLOWS],
    interval: Option<Duration>,
    last_print: Instant,
    last_counts: (u64, u64),
    last_activity: Option<Instant>,
}

impl Meter {
    pub fn new(frame: usize) -> Self {
        Self {
            frame,
            rx: 0,
            tx: 0,
            integrity_errors: 0,
            reordered: 0,
            gaps: 0,
            next_seq: [0; FLOWS],
            interval: None,
            last_print: Instant::now(),
            last_counts: (0, 0),
            last_activity: None,
        }
    }

    pub fn start(&mut self, interval_s: f64) {
        self.interval = (interval_s > 0.0).then(|| Duration::from_secs_f64(interval_s));
        self.last_print = Instant::now();
    }

    #[inline]
    pub fn add_tx(&mut self, n: u64) {
        self.tx += n;
    }

    /// Counts a received frame; returns its sequence number when it is good.
    #[inline]
    pub fn rx_frame(&mut self, r: Result<(u64, u64), Bad>) -> Option<u64> {
        self.rx += 1;
        match r {
            Ok((seq, _)) => {
                let next = &mut self.next_seq[(seq >> FLOW_SHIFT) as usize % FLOWS];
                let k = seq & ((1 << FLOW_SHIFT) - 1);
                if k < *next {
                    self.reordered += 1;
                } else {
                    self.gaps += k - *next;
                    *next = k + 1;
                }
                Some(seq)
            }
            Err(b) => {
                self.integrity_errors += 1;
                if self.integrity_errors <= 5 {
                    eprintln!("sbnet-testpmd: bad frame #{}: {b:?}", self.rx);
                }
                None
            }
        }
    }

    /// The time now (one clock read per loop iteration, never per packet);
    /// notes it as the last activity when packets `moved`, and prints the
    /// interval line when due.
    #[inline]
    pub fn tick(&mut self, moved: bool) -> Instant {
        let now = Instant::now();
        if moved {
            self.last_activity = Some(now);
        }
        if let Some(iv) = self.interval {
            let dt = now.duration_since(self.last_print);
            if dt >= iv {
                let s = dt.as_secs_f64();
                let (rx, tx) = (self.rx - self.last_counts.0, self.tx - self.last_counts.1);
                eprintln!(
                    "rx {:>10.0} pps {:>8.3} Gbit/s | tx {:>10.0} pps {:>8.3} Gbit/s | total rx {} tx {} errors {}",
                    rx as f64 / s,
                    rx as f64 * self.frame as f64 * 8.0 / s / 1e9,
                    tx as f64 / s,
                    tx as f64 * self.frame as f64 * 8.0 / s / 1e9,
                    self.rx,
                    self.tx,
                    self.integrity_errors
                );
                self.last_print = now;
                self.last_counts = (self.rx, self.tx);
            }
        }
        now
    }

    /// Adds another thread's counts (for the summary).
    pub fn merge(&mut self, o: &Self) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.integrity_errors += o.integrity_errors;
        self.reordered += o.reordered;
        self.gaps += o.gaps;
        self.last_activity = self.last_activity.max(o.last_activity);
    }

    /// Seconds from `started` to the last packet.
    pub fn active_seconds(&self, started: Instant) -> f64 {
        self.last_activity
            .map_or(0.0, |t| t.duration_since(started).as_secs_f64())
    }
}

/// The result of a run.
pub struct Summary {
    mode: String,
    frame: usize,
    rx: u64,
    tx: u64,
    /// Frames that failed the check.
    pub integrity_errors: u64,
    reordered: u64,
    gaps: u64,
    elapsed: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    port: Stats,
    /// Slots in the region (0: no shared buffers).
    slot_total: u32,
    /// Per queue pair (and, in forward mode, per port) details, and the
    /// forwarding counters.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A port's slot ledger at the end: `free + held + in_flight_tx +
/// peer_owned` (posted on RX or not) must equal `total`, the region's slot
/// count.
pub fn ledger_json(port: &Stats, total: u32) -> serde_json::Value {
    let s = &port.slots;
    let peer_owned = s.peer_posted + s.peer_unposted;
    let sum = s.free + s.held + s.in_flight_tx + peer_owned;
    serde_json::json!({
        "total": total,
        "free": s.free,
        "held": s.held,
        "in_flight_tx": s.in_flight_tx,
        "peer_owned": peer_owned,
        "sum": sum,
        "whole": sum == total,
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

impl Summary {
    pub fn new(
        m: &Meter,
        elapsed: f64,
        rtts: &mut [u32],
        port: Stats,
        slot_total: u32,
        mode: String,
    ) -> Self {
        rtts.sort_unstable();
        Self {
            mode,
            frame: m.frame,
            rx: m.rx,
            tx: m.tx,
            integrity_errors: m.integrity_errors,
            reordered: m.reordered,
            gaps: m.gaps,
            elapsed,
            rtt_p50_us: percentile(rtts, 0.5),
            rtt_p99_us: percentile(rtts, 0.99),
            port,
            slot_total,
            extra: serde_json::Map::new(),
        }
    }

    /// The port's slot ledger at the end: `free + held + in_flight_tx +
    /// peer_owned` (posted on RX or not) must equal `total`, the region's
    /// slot count.
    pub fn ledger_json(&self) -> serde_json::Value {
        ledger_json(&self.port, self.slot_total)
    }

    fn rate(&self) -> f64 {
        let n = self.rx.max(self.tx);
        if self.elapsed > 0.0 {
            n as f64 / self.elapsed
        } else {
            0.0
        }
    }

    pub fn print(&self) {
        let pps = self.rate();
        eprintln!(
            "summary: {} rx {} tx {} in {:.3} s: {:.3} Mpps {:.3} Gbit/s | integrity errors {} reordered {} gaps {} | zero-copy tx {} rx {} copied tx {} rx {} | gifts sent {} received {}{}",
            self.mode,
            self.rx,
            self.tx,
            self.elapsed,
            pps / 1e6,
            pps * self.frame as f64 * 8.0 / 1e9,
            self.integrity_errors,
            self.reordered,
            self.gaps,
            self.port.tx_zero_copy,
            self.port.rx_zero_copy,
            self.port.tx_copied,
            self.port.rx_copied,
            self.port.gifts_sent,
            self.port.gifts_received,
            if self.rtt_p50_us > 0.0 { format!(" | rtt p50 {:.1} us p99 {:.1} us", self.rtt_p50_us, self.rtt_p99_us) } else { String::new() }
        );
    }

    pub fn to_json(&self) -> serde_json::Value {
        let pps = self.rate();
        let mut v = serde_json::json!({
            "mode": self.mode,
            "frame_size": self.frame,
            "rx_packets": self.rx,
            "tx_packets": self.tx,
            "integrity_errors": self.integrity_errors,
            "reordered": self.reordered,
            "gaps": self.gaps,
            "elapsed_s": self.elapsed,
            "mpps": pps / 1e6,
            "gbps": pps * self.frame as f64 * 8.0 / 1e9,
            "rtt_p50_us": self.rtt_p50_us,
            "rtt_p99_us": self.rtt_p99_us,
            "gifts_sent": self.port.gifts_sent,
            "gifts_received": self.port.gifts_received,
            "port": self.port.to_json(),
            "ledger": self.ledger_json(),
        });
        if let Some(o) = v.as_object_mut() {
            o.extend(self.extra.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbnet_pmd::SlotCounts;

    fn summary(slots: SlotCounts, total: u32) -> Summary {
        let port = Stats {
            slots,
            ..Stats::default()
        };
        Summary::new(&Meter::new(64), 1.0, &mut [], port, total, "txonly".into())
    }

    #[test]
    fn the_ledger_sums_every_state_against_the_slot_count() {
        let slots = SlotCounts {
            free: 100,
            held: 3,
            in_flight_tx: 25,
            peer_posted: 120,
            peer_unposted: 8,
        };
        let j = summary(slots, 256).to_json();
        assert_eq!(j["ledger"]["peer_owned"], 128);
        assert_eq!(j["ledger"]["sum"], 256);
        assert_eq!(j["ledger"]["whole"], true);
        // One slot lost: not whole.
        let j = summary(SlotCounts { free: 99, ..slots }, 256).to_json();
        assert_eq!(j["ledger"]["sum"], 255);
        assert_eq!(j["ledger"]["whole"], false);
    }
}
