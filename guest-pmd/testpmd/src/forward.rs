//! `forward`: two ports, one thread per queue pair, each frame received on
//! queue pair `q` of one port is copied into a buffer of queue pair `q` of
//! the other port and sent there (both ways). The two ports' regions
//! differ (two links: no region is mapped by a third VM), so this copy is
//! the one a chain cannot avoid; it is counted.
//!
//! A frame that finds no free buffer on the output port waits (the input
//! buffer stays held, which slows the sender down) instead of being
//! dropped; only a direction stuck for [`STUCK_DROP`] drops what it holds
//! (counted in `dropped`), so that two saturated directions waiting for
//! each other's buffers cannot wedge the forwarder.

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::worker::{linger, Outcome, Queue, Worker};
use crate::{Args, PortInfo};

/// How long a direction may wait for an output buffer before it drops
/// the frames it holds.
const STUCK_DROP: Duration = Duration::from_secs(1);

/// Forwarding counters of one queue pair (both directions).
#[derive(Debug, Default, Clone, Copy)]
pub struct FwdCounts {
    /// Frames copied from one port to the other (one copy each).
    pub copies: u64,
    /// Bytes copied.
    pub copied_bytes: u64,
    /// Frames dropped after waiting [`STUCK_DROP`] for an output buffer.
    pub dropped: u64,
}

impl FwdCounts {
    pub fn add(&mut self, o: &Self) {
        self.copies += o.copies;
        self.copied_bytes += o.copied_bytes;
        self.dropped += o.dropped;
    }
}

/// One direction's frames received and not copied yet: `src.rx[next..n]`.
#[derive(Default)]
struct Held {
    next: usize,
    n: usize,
    stuck_since: Option<Instant>,
}

/// Copies what `src` holds into new buffers of `dst` and sends them.
/// Returns whether anything moved.
fn pass(src: &mut Worker, dst: &mut Worker, h: &mut Held, c: &mut FwdCounts) -> Result<bool> {
    let mut moved = false;
    // Sends the ring refused last time go first.
    if dst.tx.iter().any(Option::is_some) {
        let sent = dst.q.tx_burst(&mut dst.tx)?;
        dst.meter.add_tx(sent as u64);
        if dst.tx.iter().any(Option::is_some) {
            return Ok(sent > 0);
        }
        moved |= sent > 0;
    }
    if h.next == h.n {
        h.n = src.rx_burst()?;
        h.next = 0;
        src.meter.rx += h.n as u64;
        moved |= h.n > 0;
    }
    let mut k = 0;
    while h.next < h.n && k < dst.tx.len() {
        let Some(mut out) = dst.q.alloc() else { break };
        let Some(p) = src.rx[h.next].take() else {
            dst.q.free(out);
            h.next += 1;
            continue;
        };
        let len = p.len();
        if out.set_len(len).is_err() {
            // The output buffer is smaller than the frame: cannot forward it.
            dst.q.free(out);
            src.q.free(p);
            c.dropped += 1;
            h.next += 1;
            continue;
        }
        dst.q.data_mut(&mut out).copy_from_slice(src.q.data(&p));
        src.q.free(p);
        c.copies += 1;
        c.copied_bytes += len as u64;
        dst.tx[k] = Some(out);
        k += 1;
        h.next += 1;
    }
    if k > 0 {
        let sent = dst.q.tx_burst(&mut dst.tx[..k])?;
        dst.meter.add_tx(sent as u64);
        moved = true;
    }
    if h.next < h.n {
        let since = *h.stuck_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= STUCK_DROP {
            for p in src.rx[h.next..h.n].iter_mut() {
                if let Some(p) = p.take() {
                    src.q.free(p);
                    c.dropped += 1;
                }
            }
            h.next = h.n;
            h.stuck_since = None;
        }
    } else {
        h.stuck_since = None;
    }
    Ok(moved)
}

/// Queue pair `qa` of port A and `qb` of port B, forwarded both ways until
/// `--count` frames were forwarded (in all) or `--duration` is over.
pub fn run(
    a: &Args,
    qa: &mut Queue,
    qb: &mut Queue,
    ia: PortInfo,
    ib: PortInfo,
) -> (Outcome, FwdCounts) {
    let mut wa = Worker::new(a, qa, ia);
    let mut wb = Worker::new(a, qb, ib);
    let mut c = FwdCounts::default();
    let res = (|| {
        wa.wait_for_peer()?;
        wb.wait_for_peer()?;
        if wa.q.index() == 0 {
            eprintln!(
                "sbnet-testpmd: forward between {} (mode {}) and {} (mode {}), {} queue pair(s)",
                wa.info.device,
                wa.q.mode().name(),
                wb.info.device,
                wb.q.mode().name(),
                a.queues
            );
        }
        wa.start();
        wb.start();
        // One interval line per run (queue pair 0 of port A prints it).
        wb.meter.start(0.0);
        let (mut ha, mut hb) = (Held::default(), Held::default());
        while !wa.done(c.copies + c.dropped) {
            let ab = pass(&mut wa, &mut wb, &mut ha, &mut c)?;
            let ba = pass(&mut wb, &mut wa, &mut hb, &mut c)?;
            wb.meter.tick(ab || ba);
            wa.tick(ab || ba)?;
        }
        // What is still held goes back.
        for (w, h) in [(&mut wa, &mut ha), (&mut wb, &mut hb)] {
            for p in w.rx[h.next..h.n].iter_mut() {
                if let Some(p) = p.take() {
                    w.q.free(p);
                    c.dropped += 1;
                }
            }
        }
        flush(&mut wa, &mut c);
        flush(&mut wb, &mut c);
        if a.count > 0 {
            linger(&mut [&mut wa, &mut wb])?;
        }
        Ok(())
    })();
    let mut out = wa.outcome(Vec::new(), res, None);
    let b = wb.outcome(Vec::new(), Ok(()), None);
    out.meter.merge(&b.meter);
    out.elapsed = out.elapsed.max(b.elapsed);
    (out, c)
}

/// Sends what the transmit ring refused, for a while, then frees the rest.
fn flush(w: &mut Worker, c: &mut FwdCounts) {
    let end = Instant::now() + Duration::from_secs(1);
    while w.tx.iter().any(Option::is_some) && Instant::now() < end {
        match w.q.tx_burst(&mut w.tx) {
            Ok(n) => w.meter.add_tx(n as u64),
            Err(_) => break,
        }
    }
    for p in w.tx.iter_mut() {
        if let Some(p) = p.take() {
            w.q.free(p);
            c.dropped += 1;
        }
    }
}
