//! The measured window of a one-way run, common to every system.
//!
//! The receiver prints a stats line with its cumulative packet count about
//! once a second (sbnet-testpmd `--stats-interval 1`, DPDK testpmd
//! `--stats-period 1`). The window opens at the first stats line after the
//! warm-up and closes at the first line that appears `secs` or more later:
//! the packets are the difference of the two lines' counts, the time is
//! the difference of the moments the two lines appeared, and the CPU time
//! of every process of the system (`/proc/PID/stat` utime + stime) is
//! sampled at those same two moments. Start-up and warm-up are outside.

use crate::util::{self, Proc};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// What a window measured.
pub struct Window {
    /// Packets counted by the receiver inside the window.
    pub packets: u64,
    /// Wall seconds of the window.
    pub secs: f64,
    /// CPU seconds (user + system) all the system's processes used inside
    /// the window; `None` when one of them could not be read.
    pub cpu_secs: Option<f64>,
    /// Share of the whole machine (0..=1) that other programs used inside
    /// the window: busy time of all CPUs (`/proc/stat`) minus the system's.
    pub others: Option<f64>,
}

impl Window {
    pub fn pps(&self) -> f64 {
        self.packets as f64 / self.secs
    }
}

/// Cumulative receive counts, one per complete stats line of a log.
pub type Parse = fn(&str) -> Vec<u64>;

/// sbnet-testpmd's stats lines: `... | total rx N tx M errors E`.
pub fn sbnet_counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            l.split_once("| total rx ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// sbnet-testpmd's integrity errors in its last stats line.
pub fn sbnet_errors(log: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once("| total rx ")
                .and_then(|(_, r)| r.rsplit_once("errors "))
                .and_then(|(_, e)| e.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// DPDK testpmd's port statistics (one port): the cumulative
/// `RX-packets:` of each block that is complete (its `Rx-pps:` printed).
pub fn dpdk_counts(log: &str) -> Vec<u64> {
    let field = |l: &str, k: &str| -> Option<u64> {
        l.trim()
            .strip_prefix(k)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let mut v: Vec<u64> = log
        .lines()
        .filter_map(|l| field(l, "RX-packets:"))
        .collect();
    let done = log
        .lines()
        .filter(|l| l.trim().starts_with("Rx-pps:"))
        .count();
    v.truncate(done);
    v
}

/// Waits until `rx`'s log has more than `k` stats lines; returns the
/// `k`-th count (0-based) and the moment the line was seen.
fn line(rx: &mut Proc, parse: Parse, k: usize, t: Duration) -> Result<(u64, Instant)> {
    let what = format!("stats line {}", k + 1);
    rx.wait_until(&what, Duration::from_millis(2), t, |log| {
        parse(log).get(k).map(|&c| (c, Instant::now()))
    })
}

/// Measures one window of `secs` seconds after `warm` seconds of traffic.
/// `rx` is the receiver (its log has the stats lines), `pids` every
/// process of the system, `sender` is checked to be still running when
/// the window closes.
pub fn measure(
    rx: &mut Proc,
    sender: &mut Proc,
    pids: &[u32],
    parse: Parse,
    warm: f64,
    secs: f64,
) -> Result<Window> {
    let start = Duration::from_secs(60);
    // Traffic: the first line with a non-zero count.
    let mut k = 0;
    loop {
        let (c, _) = line(rx, parse, k, start)?;
        if c > 0 {
            break;
        }
        sender.check_alive()?;
        k += 1;
    }
    // Warm-up: whole stats periods (about a second each).
    let warm_lines = warm.ceil().max(1.0) as usize;
    let k0 = parse(&rx.read_log()).len().max(k + warm_lines);
    let (c0, t0) = line(rx, parse, k0, start)?;
    let cpu0 = util::cpu_ticks_all(pids);
    let all0 = util::cpu_jiffies();
    std::thread::sleep(Duration::from_secs_f64((secs - 0.5).max(0.0)));
    // The first line that appears after t0 + secs.
    let mut k1 = parse(&rx.read_log()).len().max(k0 + 1);
    let (c1, t1) = loop {
        let (c, t) = line(rx, parse, k1, Duration::from_secs_f64(secs + 10.0))?;
        if t.duration_since(t0).as_secs_f64() >= secs {
            break (c, t);
        }
        k1 = parse(&rx.read_log()).len().max(k1 + 1);
    };
    let cpu1 = util::cpu_ticks_all(pids);
    let all1 = util::cpu_jiffies();
    if sender.child.try_wait()?.is_some() {
        bail!(
            "{} stopped inside the measured window (warm-up {warm} s + window {secs} s is longer than its run)",
            sender.name
        );
    }
    if c1 <= c0 {
        bail!(
            "the receiver counted nothing in the window; last lines of {}:\n{}",
            rx.log.display(),
            rx.tail(12)
        );
    }
    let ticks = match (cpu0, cpu1) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    let (busy, total) = (all1.0.saturating_sub(all0.0), all1.1.saturating_sub(all0.1));
    let others = ticks
        .filter(|_| total > 0)
        .map(|t| (busy.saturating_sub(t) as f64 / total as f64).min(1.0));
    Ok(Window {
        packets: c1 - c0,
        secs: t1.duration_since(t0).as_secs_f64(),
        cpu_secs: ticks.map(|t| t as f64 / util::clk_tck()),
        others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbnet_lines() {
        let log = "sbnet-testpmd: Rxonly on x side 1 mode shared-buffers epoch 1, 64 B frames, burst 32\n\
            rx    2000000 pps    1.024 Gbit/s | tx          0 pps    0.000 Gbit/s | total rx 2000000 tx 0 errors 0\n\
            rx    2100000 pps    1.075 Gbit/s | tx          0 pps    0.000 Gbit/s | total rx 4100000 tx 0 errors 3\n";
        assert_eq!(sbnet_counts(log), vec![2_000_000, 4_100_000]);
        assert_eq!(sbnet_errors(log), 3);
        assert_eq!(sbnet_errors("nothing"), 0);
    }

    #[test]
    fn dpdk_blocks_count_only_when_complete() {
        let block = |n: u64, pps: bool| {
            format!(
                "  ######################## NIC statistics for port 0  ########################\n\
                 \x20 RX-packets: {n}       RX-missed: 0          RX-bytes:  {b}\n\
                 \x20 RX-errors: 0\n  RX-nombuf:  0\n\
                 \x20 TX-packets: 0          TX-errors: 0          TX-bytes:  0\n\n\
                 \x20 Throughput (since last show)\n{}",
                if pps {
                    "  Rx-pps:      1000000          Rx-bps:    512000000\n  Tx-pps:            0          Tx-bps:            0\n"
                } else {
                    ""
                },
                b = n * 64
            )
        };
        let log = format!(
            "{}{}{}",
            block(0, true),
            block(1_000_000, true),
            block(2_000_000, false)
        );
        assert_eq!(dpdk_counts(&log), vec![0, 1_000_000]);
    }
}
