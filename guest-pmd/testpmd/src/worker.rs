//! One thread's work on one queue pair: the mode loops (`txonly`,
//! `rxonly`, `io`, `macswap`, `pingpong`), waiting for the peer and
//! lingering after the last packet.

use anyhow::{bail, Result};
use sbnet_pmd::bus::Bus;
use sbnet_pmd::{Mode, Pkt, PortQueue, Stats};
use std::time::{Duration, Instant};

use crate::frame::{self, Payload};
use crate::report::{Meter, FLOW_SHIFT};
use crate::{Args, Idle, PortInfo, TestMode};

/// The queue pair type every mode drives.
pub type Queue = PortQueue<Box<dyn Bus>>;

/// What a worker hands back: its counters, round trips and how it ended.
pub struct Outcome {
    pub meter: Meter,
    pub elapsed: f64,
    pub rtts: Vec<u32>,
    pub result: Result<()>,
    /// The queue pair's counters when its mode loop ended, before it
    /// lingered: the peer's exit during the linger changes the epoch and
    /// the mode, which the report must not show as the run's.
    pub stats: Option<Stats>,
}

/// Everything a mode loop needs, for one queue pair.
pub struct Worker<'a> {
    pub a: &'a Args,
    pub q: &'a mut Queue,
    pub info: PortInfo,
    pub payload: Payload,
    pub meter: Meter,
    pub started: Instant,
    pub deadline: Option<Instant>,
    last_progress: Instant,
    pub rx: Vec<Option<Pkt>>,
    /// Frames received while waiting for the peer, in `rx[..backlog]`.
    backlog: usize,
    pub tx: Vec<Option<Pkt>>,
}

impl<'a> Worker<'a> {
    pub fn new(a: &'a Args, q: &'a mut Queue, info: PortInfo) -> Self {
        Self {
            a,
            q,
            info,
            payload: match a.payload {
                crate::PayloadArg::Full => Payload::Full,
                crate::PayloadArg::Header => Payload::Header,
            },
            meter: Meter::new(a.frame_size),
            started: Instant::now(),
            deadline: None,
            last_progress: Instant::now(),
            rx: (0..a.burst).map(|_| None).collect(),
            backlog: 0,
            tx: (0..a.burst).map(|_| None).collect(),
        }
    }

    /// The run's clock starts now.
    pub fn start(&mut self) {
        self.started = Instant::now();
        self.last_progress = self.started;
        self.deadline = (self.a.duration > 0.0)
            .then(|| self.started + Duration::from_secs_f64(self.a.duration));
        // Only queue pair 0 prints the interval line.
        let interval = if self.q.index() == 0 {
            self.a.stats_interval
        } else {
            0.0
        };
        self.meter.start(interval);
    }

    pub fn done(&self, n: u64) -> bool {
        (self.a.count > 0 && n >= self.a.count)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Called once per loop iteration; `moved` says whether packets moved.
    #[inline]
    pub fn tick(&mut self, moved: bool) -> Result<()> {
        let now = self.meter.tick(moved);
        if moved {
            self.last_progress = now;
            return Ok(());
        }
        if now.duration_since(self.last_progress) > Duration::from_secs_f64(self.a.idle_timeout) {
            bail!(
                "stalled: nothing moved on queue pair {} for {} s (received {}, sent {}); queue stats: {}",
                self.q.index(),
                self.a.idle_timeout,
                self.meter.rx,
                self.meter.tx,
                self.q.stats().to_json()
            );
        }
        if self.a.idle == Idle::Yield {
            std::thread::yield_now();
        }
        Ok(())
    }

    /// A receive burst into `self.rx`; frames taken while waiting for the
    /// peer come first.
    #[inline]
    pub fn rx_burst(&mut self) -> Result<usize> {
        if self.backlog > 0 {
            return Ok(std::mem::take(&mut self.backlog));
        }
        Ok(self.q.rx_burst(&mut self.rx)?)
    }

    pub fn free_rx(&mut self, n: usize) {
        for p in self.rx[..n].iter_mut() {
            if let Some(p) = p.take() {
                self.q.free(p);
            }
        }
    }

    pub fn wait_for_peer(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(self.a.peer_timeout);
        loop {
            let n = self.q.rx_burst(&mut self.rx)?;
            if n > 0 {
                // The peer is up and already sending: these frames belong
                // to the run (the mode loop takes them first).
                self.backlog = n;
                return Ok(());
            }
            if self.q.link_up()? {
                self.q.poll_epoch()?;
                let ready = match self.q.mode() {
                    Mode::Classic | Mode::ZeroCopy => true,
                    // Copy mode with the peer present: it did not negotiate shared buffers.
                    Mode::Copy => self.q.peer_status() & sbnet_abi::net::PEER_PRESENT != 0,
                };
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                bail!(
                    "no peer on the other side of {} within {} s: start the other side",
                    self.info.device,
                    self.a.peer_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The first sequence number of this queue pair's flow.
    fn flow_base(&self) -> u64 {
        u64::from(self.q.index()) << FLOW_SHIFT
    }

    pub fn outcome(self, rtts: Vec<u32>, result: Result<()>, stats: Option<Stats>) -> Outcome {
        Outcome {
            elapsed: self.meter.active_seconds(self.started),
            meter: self.meter,
            rtts,
            result,
            stats,
        }
    }
}

/// One queue pair's whole run in `mode` (not `forward`).
pub fn run(a: &Args, q: &mut Queue, info: PortInfo) -> Outcome {
    let mut w = Worker::new(a, q, info);
    let mut rtts = Vec::new();
    let mut stats = None;
    let res = (|| {
        w.wait_for_peer()?;
        if w.q.index() == 0 {
            eprintln!(
                "sbnet-testpmd: {:?} on {} side {} mode {} epoch {}, {} B frames, burst {}, {} queue pair(s)",
                a.mode,
                w.info.device,
                w.info.side,
                w.q.mode().name(),
                w.q.epoch(),
                a.frame_size,
                a.burst,
                a.queues
            );
        }
        w.start();
        match a.mode {
            TestMode::Txonly => txonly(&mut w),
            TestMode::Rxonly => rxonly(&mut w),
            TestMode::Io => echo(&mut w, false),
            TestMode::Macswap => echo(&mut w, true),
            TestMode::Pingpong => pingpong(&mut w, &mut rtts),
            TestMode::Forward => bail!("forward runs over two ports"),
        }?;
        stats = Some(w.q.stats());
        if matches!(a.mode, TestMode::Txonly | TestMode::Io | TestMode::Macswap) && a.count > 0 {
            linger(&mut [&mut w])?;
        }
        Ok(())
    })();
    w.outcome(rtts, res, stats)
}

fn txonly(c: &mut Worker) -> Result<()> {
    let base = c.flow_base();
    let mut seq = 0u64;
    let (mac, peer_mac) = (c.info.mac, c.info.peer_mac);
    let size = c.a.frame_size;
    while !c.done(seq) {
        // Receive too: gifts come back through the receive queue.
        let n = c.rx_burst()?;
        c.free_rx(n);
        let mut want = c.a.burst;
        if c.a.count > 0 {
            want = want.min((c.a.count - seq) as usize);
        }
        // One clock read per burst for the timestamps.
        let stamp = c.started.elapsed().as_nanos() as u64;
        for i in 0..want {
            if c.tx[i].is_some() {
                continue;
            }
            let Some(mut p) = c.q.alloc() else { break };
            if p.set_len(size).is_err() {
                c.q.free(p);
                bail!(
                    "--frame-size {size} does not fit a buffer of {} bytes",
                    c.info.slot_size.unwrap_or(0)
                );
            }
            frame::build(
                c.q.data_mut(&mut p),
                mac,
                peer_mac,
                base | seq,
                stamp,
                c.payload,
            );
            seq += 1;
            c.tx[i] = Some(p);
        }
        let sent = c.q.tx_burst(&mut c.tx[..want])?;
        c.meter.add_tx(sent as u64);
        c.tick(sent > 0 || n > 0)?;
    }
    // Whatever is still held (ring full at the end) goes back.
    for p in c.tx.iter_mut() {
        if let Some(p) = p.take() {
            c.q.free(p);
        }
    }
    Ok(())
}

fn rxonly(c: &mut Worker) -> Result<()> {
    while !c.done(c.meter.rx) {
        let n = c.rx_burst()?;
        for i in 0..n {
            let Some(p) = c.rx[i].take() else { continue };
            let r = frame::check(c.q.data(&p), c.payload);
            c.meter.rx_frame(r);
            c.q.free(p);
        }
        c.tick(n > 0)?;
    }
    Ok(())
}

fn echo(c: &mut Worker, swap: bool) -> Result<()> {
    let mut pending: Vec<Option<Pkt>> = (0..c.a.burst).map(|_| None).collect();
    while !c.done(c.meter.tx) {
        let mut moved = false;
        if pending.iter().all(Option::is_none) {
            let n = c.rx_burst()?;
            moved |= n > 0;
            for (slot, rx) in pending.iter_mut().zip(c.rx[..n].iter_mut()) {
                let Some(mut p) = rx.take() else {
                    continue;
                };
                c.meter.rx += 1;
                if swap {
                    frame::macswap(c.q.data_mut(&mut p));
                }
                *slot = Some(p);
            }
        }
        let sent = c.q.tx_burst(&mut pending)?;
        c.meter.add_tx(sent as u64);
        c.tick(moved || sent > 0)?;
    }
    for p in pending.iter_mut() {
        if let Some(p) = p.take() {
            c.q.free(p);
        }
    }
    Ok(())
}

fn pingpong(c: &mut Worker, rtts: &mut Vec<u32>) -> Result<()> {
    rtts.reserve(c.a.count.min(10_000_000) as usize);
    let (mac, peer_mac) = (c.info.mac, c.info.peer_mac);
    let size = c.a.frame_size;
    let mut seq = 0u64;
    while !c.done(seq) {
        let mut p = loop {
            if let Some(p) = c.q.alloc() {
                break p;
            }
            let n = c.rx_burst()?;
            c.free_rx(n);
            c.tick(n > 0)?;
        };
        if p.set_len(size).is_err() {
            c.q.free(p);
            bail!("--frame-size {size} does not fit a buffer");
        }
        let t0 = Instant::now();
        frame::build(c.q.data_mut(&mut p), mac, peer_mac, seq, 0, c.payload);
        let mut one = [Some(p)];
        while c.q.tx_burst(&mut one)? == 0 {
            c.tick(false)?;
        }
        c.meter.add_tx(1);
        // Wait for the echo of `seq`.
        'wait: loop {
            let n = c.rx_burst()?;
            for i in 0..n {
                let Some(p) = c.rx[i].take() else { continue };
                let r = frame::check(c.q.data(&p), c.payload);
                c.q.free(p);
                let got = c.meter.rx_frame(r);
                if got == Some(seq) {
                    rtts.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                    c.free_rx(n);
                    break 'wait;
                }
            }
            c.tick(n > 0)?;
        }
        c.tick(true)?;
        seq += 1;
    }
    Ok(())
}

/// After the last packet: keep the queue pairs serviced until a peer
/// leaves, so it can take everything in before this side's exit changes
/// the epoch. (A forwarder lingers until either of its peers leaves: the
/// receiver leaves when it has everything, the sender only after the
/// forwarder.)
pub fn linger(ws: &mut [&mut Worker]) -> Result<()> {
    let a = ws[0].a;
    let end = Instant::now() + Duration::from_secs_f64(a.linger);
    let mut last_check = Instant::now();
    while Instant::now() < end {
        for w in ws.iter_mut() {
            let n = w.q.rx_burst(&mut w.rx)?;
            w.free_rx(n);
            w.q.tx_burst(&mut [])?;
        }
        if last_check.elapsed() > Duration::from_millis(5) {
            last_check = Instant::now();
            for w in ws.iter_mut() {
                if !w.q.link_up()? {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!(
        "sbnet-testpmd: the peer did not leave within {} s; exiting anyway",
        a.linger
    );
    Ok(())
}
