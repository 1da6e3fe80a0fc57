//! The agreement checks of the module above for a link of Q queue pairs
//! (`docs/abi.md` §8), where both ports opened all Q of them: slot `s`
//! belongs to sub-pair `s % Q` and is in nobody else's ledger; inside a
//! sub-pair the relation of the module documentation holds slot by slot,
//! what is in flight is counted per sub-pair, and the counters add up per
//! queue pair (PMD `queue_stats(q)` against the host's
//! `Function::queue_counters()[q]`) as well as in total.
//!
//! The host counts a pair's frames (`QueueCounters`) but not its gifts, so
//! a pair's gifts on the host are derived: slots the PMD's queue pair sent
//! minus its unmatched sends minus the host's frames of that pair. They
//! must lie between 0 and what the pair gifted, and add up to the side's
//! `gifts_sent` (likewise for received gifts). At a settled point nothing
//! is in flight and each pair's frames are exact.

use super::{check_slot, HostView, InFlight, P};
use sbnet_device::counters::{QueueCounters, SideCounters};
use sbnet_device::switch::Mode as HostMode;
use sbnet_pmd::{Mode, Stats};

/// The counters at a settled point, per side: host and port totals and
/// per queue pair.
#[derive(Debug, Clone, Default)]
pub struct Base {
    /// Host counters per side.
    pub host: [SideCounters; 2],
    /// Port stats per side.
    pub ports: [Stats; 2],
    /// Host counters per side and queue pair.
    pub host_q: [Vec<QueueCounters>; 2],
    /// Port stats per side and queue pair.
    pub ports_q: [Vec<Stats>; 2],
}

impl Base {
    /// The counters now.
    pub fn take(h: &HostView, ports: [&P; 2]) -> Self {
        Self {
            host: h.counters,
            ports: ports.map(|p| p.stats()),
            host_q: h.queue_counters.clone(),
            ports_q: ports.map(queue_stats),
        }
    }
}

/// Every queue pair's stats of port `p`.
pub fn queue_stats(p: &P) -> Vec<Stats> {
    (0..p.queue_pairs())
        .map(|q| p.queue_stats(q).expect("queue pair open"))
        .collect()
}

/// Adds up what is in flight in every sub-pair.
pub fn total(f: &[InFlight]) -> InFlight {
    let mut t = InFlight::default();
    for x in f {
        for k in 0..2 {
            t.unmatched_tx[k] += x.unmatched_tx[k];
            t.unreaped_tx[k] += x.unreaped_tx[k];
            t.unreaped_rx[k] += x.unreaped_rx[k];
            t.deferred[k] += x.deferred[k];
            t.early[k] += x.early[k];
        }
    }
    t
}

/// The agreement at a host-quiescent point, sub-pair by sub-pair. Returns
/// what is in flight in each.
pub fn check_agreement_mq(h: &HostView, ports: [&P; 2]) -> Result<Vec<InFlight>, String> {
    if h.mode != HostMode::ZeroCopy {
        return Err(format!("host in mode {:?}, not zero-copy", h.mode));
    }
    let qn = ports[0].link_pairs();
    let n = h.owners.len();
    for (k, p) in ports.iter().enumerate() {
        if p.link_pairs() != qn || p.queue_pairs() != qn || h.queue_counters[k].len() != qn as usize
        {
            return Err(format!(
                "side {k}: {} of {} link pairs open, host counts {} (side 0 sees {qn})",
                p.queue_pairs(),
                p.link_pairs(),
                h.queue_counters[k].len()
            ));
        }
        for q in 0..qn {
            let pq = p.queue(q);
            let ctx = format!("side {k} queue pair {q}");
            pq.check_ledger()
                .map_err(|e| format!("{ctx}: PMD ledger broken: {e}"))?;
            if pq.mode() != Mode::ZeroCopy || pq.epoch() != h.epoch {
                return Err(format!(
                    "{ctx}: {:?} at epoch {}, host at {}",
                    pq.mode(),
                    pq.epoch(),
                    h.epoch
                ));
            }
            if pq.slot_count() as usize * usize::from(qn) != n {
                return Err(format!(
                    "{ctx}: {} slots, not its share of {n}",
                    pq.slot_count()
                ));
            }
        }
    }
    let mut f = vec![InFlight::default(); usize::from(qn)];
    for s in 0..n {
        let q = s % usize::from(qn);
        for (k, p) in ports.iter().enumerate() {
            for other in (0..qn).filter(|&o| usize::from(o) != q) {
                if let Some(st) = p.queue(other).slot_state(s as u32) {
                    return Err(format!(
                        "slot {s} of sub-pair {q} is {st:?} in side {k}'s queue pair {other}"
                    ));
                }
            }
        }
        check_slot(h, ports, s, &mut f[q]).map_err(|e| format!("sub-pair {q}: {e}"))?;
    }
    Ok(f)
}

/// What queue pair `q` of side `k` moved since `base`: (host frames sent,
/// host frames received, port stats).
fn pair_deltas(
    h: &HostView,
    ports: [&P; 2],
    base: &Base,
    k: usize,
    q: usize,
) -> (QueueCounters, Stats) {
    let (c, b) = (h.queue_counters[k][q], base.host_q[k][q]);
    let host = QueueCounters {
        tx_packets: c.tx_packets - b.tx_packets,
        tx_bytes: c.tx_bytes - b.tx_bytes,
        rx_packets: c.rx_packets - b.rx_packets,
        rx_bytes: c.rx_bytes - b.rx_bytes,
    };
    let (s, b) = (
        ports[k].queue_stats(q as u16).expect("open"),
        &base.ports_q[k][q],
    );
    let port = Stats {
        tx_zero_copy: s.tx_zero_copy - b.tx_zero_copy,
        rx_zero_copy: s.rx_zero_copy - b.rx_zero_copy,
        gifts_sent: s.gifts_sent - b.gifts_sent,
        gifts_received: s.gifts_received - b.gifts_received,
        ..s
    };
    (host, port)
}

/// The counters per queue pair (see the module documentation); the
/// totals are [`super::check_counts`]'s.
pub fn check_counts_mq(
    h: &HostView,
    ports: [&P; 2],
    base: &Base,
    f: &[InFlight],
) -> Result<(), String> {
    for k in 0..2 {
        let mut sum = QueueCounters::default();
        let (mut gifts_tx, mut gifts_rx) = (0i64, 0i64);
        for (q, fq) in f.iter().enumerate() {
            let (host, port) = pair_deltas(h, ports, base, k, q);
            let ctx = || format!("side {k} queue pair {q}: host {host:?}, in flight {fq:?}");
            sum.tx_packets += host.tx_packets;
            sum.tx_bytes += host.tx_bytes;
            sum.rx_packets += host.rx_packets;
            sum.rx_bytes += host.rx_bytes;
            let sent = (port.tx_zero_copy + port.gifts_sent) as i64;
            let g = sent - i64::from(fq.unmatched_tx[k]) - host.tx_packets as i64;
            if !(0..=port.gifts_sent as i64).contains(&g) {
                return Err(format!(
                    "{}: the port's pair sent {} frames + {} gifts, so the host forwarded {g} of its gifts",
                    ctx(),
                    port.tx_zero_copy,
                    port.gifts_sent
                ));
            }
            gifts_tx += g;
            let got = (port.rx_zero_copy + port.gifts_received) as i64;
            let unreaped = i64::from(fq.unreaped_rx[k]);
            let g = got + unreaped - host.rx_packets as i64;
            if !(0..=port.gifts_received as i64 + unreaped).contains(&g) {
                return Err(format!(
                    "{}: the port's pair received {} frames + {} gifts, so the host delivered {g} gifts to it",
                    ctx(),
                    port.rx_zero_copy,
                    port.gifts_received
                ));
            }
            gifts_rx += g;
        }
        let (c, b) = (&h.counters[k], &base.host[k]);
        let want = QueueCounters {
            tx_packets: c.tx_packets - b.tx_packets,
            tx_bytes: c.tx_bytes - b.tx_bytes,
            rx_packets: c.rx_packets - b.rx_packets,
            rx_bytes: c.rx_bytes - b.rx_bytes,
        };
        if sum != want {
            return Err(format!(
                "side {k}: the queue pairs' host counters add up to {sum:?}, the side's are {want:?}"
            ));
        }
        let gifts = (
            (c.gifts_sent - b.gifts_sent) as i64,
            (c.gifts_received - b.gifts_received) as i64,
        );
        if (gifts_tx, gifts_rx) != gifts {
            return Err(format!(
                "side {k}: the queue pairs' gifts add up to {:?} (sent, received), the host counted {gifts:?}",
                (gifts_tx, gifts_rx)
            ));
        }
    }
    Ok(())
}

/// At a settled point: nothing in flight in any sub-pair, each sub-pair's
/// slots owned by one side or deferred, every peer slot posted as far as
/// its queue pair's RX queue has room, and each pair's frames exact.
pub fn check_settled_mq(
    h: &HostView,
    ports: [&P; 2],
    base: &Base,
) -> Result<Vec<InFlight>, String> {
    let f = check_agreement_mq(h, ports)?;
    let qn = f.len();
    for (q, fq) in f.iter().enumerate() {
        if fq.unmatched_tx != [0, 0] || fq.unreaped_tx != [0, 0] || fq.unreaped_rx != [0, 0] {
            return Err(format!("sub-pair {q}: settled, yet in flight: {fq:?}"));
        }
        let mut owned = [0u32; 2];
        for s in (q..h.owners.len()).step_by(qn) {
            for (k, o) in owned.iter_mut().enumerate() {
                *o += u32::from(ports[k].queue(q as u16).owns_slot(s as u32));
            }
        }
        let all = owned[0] + owned[1] + fq.deferred[0] + fq.deferred[1];
        if all as usize * qn != h.owners.len() {
            return Err(format!(
                "sub-pair {q}: owned {owned:?} + deferred {:?} = {all}, not its share",
                fq.deferred
            ));
        }
        for k in 0..2 {
            let pq = ports[k].queue(q as u16);
            let st = pq.stats();
            let rx_size = u32::from(pq.queue_sizes().0);
            if st.slots.peer_unposted > 0 && st.slots.peer_posted + st.classic.posted_rx < rx_size {
                return Err(format!(
                    "side {k} queue pair {q}: {} peer slots unposted with room on the RX queue",
                    st.slots.peer_unposted
                ));
            }
            let (host, port) = pair_deltas(h, ports, base, k, q);
            if (host.tx_packets, host.rx_packets) != (port.tx_zero_copy, port.rx_zero_copy) {
                return Err(format!(
                    "side {k} queue pair {q}: settled, the host moved {host:?}, the port sent {} and received {}",
                    port.tx_zero_copy, port.rx_zero_copy
                ));
            }
        }
    }
    Ok(f)
}
