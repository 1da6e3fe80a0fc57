//! `sbnet-testpmd`: a testpmd-like tool over the sbnet PMD, in host-process
//! mode (`--socket`: the process is its own vfio-user client of `host-pair`)
//! or inside a VM (`--pci`: the function is driven through kernel VFIO).
//!
//! Modes: `txonly` (generate), `rxonly` (sink and verify), `io` (echo every
//! frame back in place), `macswap` (echo with MAC addresses swapped) and
//! `pingpong` (one frame at a time, round-trip latency; the peer runs `io`
//! or `macswap`). Frames carry a sequence number and a checksum; any
//! integrity error makes the exit status non-zero.

mod frame;
mod report;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use frame::Payload;
use report::{Meter, Summary};
use sbnet_pmd::bus::vfio::{DmaPages, VfioBus, VfioOptions};
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::Bus;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "sbnet-testpmd",
    version,
    about = "Send, receive, echo or ping-pong test frames through an sbnet function (host-process mode, or in a VM through VFIO)."
)]
#[command(group(clap::ArgGroup::new("device").required(true).args(["socket", "pci"])))]
struct Args {
    /// vfio-user socket of the function to drive (one side of `host-pair serve`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Inside a VM: PCI address of the function (e.g. 0000:00:03.0), driven through kernel VFIO (bound to vfio-pci if needed; needs an IOMMU, and 2 MiB huge pages unless --small-pages).
    #[arg(long, value_name = "DDDD:BB:DD.F")]
    pci: Option<String>,
    /// With --pci: back DMA memory with ordinary 4 KiB pages instead of 2 MiB huge pages (no reserved huge pages needed; behind a vIOMMU each page reaches the device as its own DMA map).
    #[arg(long, requires = "pci")]
    small_pages: bool,
    /// What to do.
    #[arg(long, value_enum)]
    mode: TestMode,
    /// Ethernet frame size in bytes (without the 12-byte virtio header); at least 46.
    #[arg(long, default_value_t = 64)]
    frame_size: usize,
    /// Packets per burst.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Packets to send (txonly), receive (rxonly), echo (io, macswap) or round trips (pingpong); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0 = no limit).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    duration: f64,
    /// Do not negotiate shared buffers: drive the function as plain virtio-net.
    #[arg(long)]
    classic: bool,
    /// What the application writes and checks in each frame.
    #[arg(long, value_enum, default_value_t = PayloadArg::Full)]
    payload: PayloadArg,
    /// Print a stats line every SECS seconds (0 = only the summary).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    stats_interval: f64,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Fail when no packet moves for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    idle_timeout: f64,
    /// How long to wait for the peer to come up.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    peer_timeout: f64,
    /// After sending the last packet (txonly, io, macswap), wait up to SECS for the peer to leave, so it can receive everything.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    linger: f64,
    /// What an idle polling loop does: `yield` the CPU (default; fair on shared cores) or `spin`.
    #[arg(long, value_enum, default_value_t = Idle::Yield)]
    idle: Idle,
    /// Port queue sizes.
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TestMode {
    Txonly,
    Rxonly,
    Io,
    Macswap,
    Pingpong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PayloadArg {
    Full,
    Header,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Idle {
    Yield,
    Spin,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(s) if s.integrity_errors == 0 => {}
        Ok(s) => {
            eprintln!("sbnet-testpmd: {} integrity errors", s.integrity_errors);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("sbnet-testpmd: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Everything a mode loop needs.
struct Ctx<'a> {
    a: &'a Args,
    port: Port<Box<dyn Bus>>,
    payload: Payload,
    peer_mac: [u8; 6],
    meter: Meter,
    started: Instant,
    deadline: Option<Instant>,
    last_progress: Instant,
    rx: Vec<Option<Pkt>>,
    /// Frames received while waiting for the peer, in `rx[..backlog]`.
    backlog: usize,
    tx: Vec<Option<Pkt>>,
}

fn run(a: &Args) -> Result<Summary> {
    if a.frame_size < frame::MIN_FRAME {
        bail!(
            "--frame-size {} is below {} (Ethernet + test header)",
            a.frame_size,
            frame::MIN_FRAME
        );
    }
    if a.burst == 0 || a.burst > 512 {
        bail!("--burst must be between 1 and 512");
    }
    let bus: Box<dyn Bus> = match (&a.socket, &a.pci) {
        (Some(socket), _) => Box::new(VfioUserBus::connect(socket).with_context(|| {
            format!(
                "cannot reach the device at {} (is `host-pair serve --socket {}` running?)",
                socket.display(),
                socket.display()
            )
        })?),
        (None, Some(pci)) => Box::new(
            VfioBus::open_with(
                pci,
                VfioOptions {
                    dma_pages: if a.small_pages {
                        DmaPages::Small
                    } else {
                        DmaPages::Huge2M
                    },
                    ..VfioOptions::default()
                },
            )
            .with_context(|| format!("cannot open PCI function {pci} through VFIO"))?,
        ),
        (None, None) => bail!("give --socket or --pci"),
    };
    let cfg = PortConfig {
        classic_only: a.classic,
        rx_queue_size: a.queue_size,
        tx_queue_size: a.queue_size,
        ..PortConfig::default()
    };
    let port = Port::open(bus, cfg).context("cannot bring the port up")?;
    if let Some(cap) = port.slot_size().map(|s| s as usize - 12) {
        if a.frame_size > cap && !a.classic {
            bail!("--frame-size {} does not fit a {}-byte slot (largest frame {cap}); start host-pair with a larger --slot-size", a.frame_size, cap + 12);
        }
    }
    let mut side = port.side().unwrap_or(0);
    if side > 1 {
        side = 0;
    }
    let peer_mac = [0x52, 0x54, 0x00, 0x5b, 0x00, 1 - side];
    let mut c = Ctx {
        a,
        port,
        payload: match a.payload {
            PayloadArg::Full => Payload::Full,
            PayloadArg::Header => Payload::Header,
        },
        peer_mac,
        meter: Meter::new(a.frame_size),
        started: Instant::now(),
        deadline: None,
        last_progress: Instant::now(),
        rx: (0..a.burst).map(|_| None).collect(),
        backlog: 0,
        tx: (0..a.burst).map(|_| None).collect(),
    };
    wait_for_peer(&mut c)?;
    eprintln!(
        "sbnet-testpmd: {:?} on {} side {} mode {} epoch {}, {} B frames, burst {}",
        a.mode,
        a.device(),
        side,
        c.port.mode().name(),
        c.port.epoch(),
        a.frame_size,
        a.burst
    );
    c.started = Instant::now();
    c.last_progress = c.started;
    c.deadline = (a.duration > 0.0).then(|| c.started + Duration::from_secs_f64(a.duration));
    c.meter.start(a.stats_interval);
    let mut rtts = Vec::new();
    let res = match a.mode {
        TestMode::Txonly => txonly(&mut c),
        TestMode::Rxonly => rxonly(&mut c),
        TestMode::Io => echo(&mut c, false),
        TestMode::Macswap => echo(&mut c, true),
        TestMode::Pingpong => pingpong(&mut c, &mut rtts),
    };
    let elapsed = c.meter.active_seconds(c.started);
    let summary = Summary::new(
        &c.meter,
        elapsed,
        &mut rtts,
        c.port.stats(),
        c.port.slot_count(),
        format!("{:?}", a.mode).to_lowercase(),
    );
    summary.print();
    if let Some(path) = &a.json {
        std::fs::write(path, summary.to_json().to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    res?;
    if matches!(a.mode, TestMode::Txonly | TestMode::Io | TestMode::Macswap) && a.count > 0 {
        linger(&mut c)?;
    }
    Ok(summary)
}

impl Args {
    /// The device as given on the command line, for messages.
    fn device(&self) -> String {
        match (&self.socket, &self.pci) {
            (Some(s), _) => s.display().to_string(),
            (None, Some(p)) => p.clone(),
            (None, None) => String::new(),
        }
    }
}

impl Ctx<'_> {
    fn done(&self, n: u64) -> bool {
        (self.a.count > 0 && n >= self.a.count)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Called once per loop iteration; `moved` says whether packets moved.
    #[inline]
    fn tick(&mut self, moved: bool) -> Result<()> {
        let now = self.meter.tick(moved);
        if moved {
            self.last_progress = now;
            return Ok(());
        }
        if now.duration_since(self.last_progress) > Duration::from_secs_f64(self.a.idle_timeout) {
            bail!(
                "stalled: nothing moved for {} s (received {}, sent {}); port stats: {}",
                self.a.idle_timeout,
                self.meter.rx,
                self.meter.tx,
                self.port.stats().to_json()
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
    fn rx_burst(&mut self) -> Result<usize> {
        if self.backlog > 0 {
            return Ok(std::mem::take(&mut self.backlog));
        }
        Ok(self.port.rx_burst(&mut self.rx)?)
    }

    fn free_rx(&mut self, n: usize) {
        for p in self.rx[..n].iter_mut() {
            if let Some(p) = p.take() {
                self.port.free(p);
            }
        }
    }
}

fn wait_for_peer(c: &mut Ctx) -> Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(c.a.peer_timeout);
    loop {
        let n = c.port.rx_burst(&mut c.rx)?;
        if n > 0 {
            // The peer is up and already sending: these frames belong to
            // the run (the mode loop takes them first).
            c.backlog = n;
            return Ok(());
        }
        if c.port.link_up()? {
            c.port.poll_epoch()?;
            let ready = match c.port.mode() {
                Mode::Classic => true,
                Mode::ZeroCopy => true,
                // Copy mode with the peer present: it did not negotiate shared buffers.
                Mode::Copy => c.port.peer_status() & sbnet_abi::net::PEER_PRESENT != 0,
            };
            if ready {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!(
                "no peer on the other side of {} within {} s: start the other side",
                c.a.device(),
                c.a.peer_timeout
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn txonly(c: &mut Ctx) -> Result<()> {
    let mut seq = 0u64;
    let mac = c.port.mac();
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
            let Some(mut p) = c.port.alloc() else { break };
            if p.set_len(size).is_err() {
                c.port.free(p);
                bail!(
                    "--frame-size {size} does not fit a buffer of {} bytes",
                    c.port.slot_size().unwrap_or(0)
                );
            }
            frame::build(
                c.port.data_mut(&mut p),
                mac,
                c.peer_mac,
                seq,
                stamp,
                c.payload,
            );
            seq += 1;
            c.tx[i] = Some(p);
        }
        let sent = c.port.tx_burst(&mut c.tx[..want])?;
        c.meter.add_tx(sent as u64);
        c.tick(sent > 0 || n > 0)?;
    }
    // Whatever is still held (ring full at the end) goes back.
    for p in c.tx.iter_mut() {
        if let Some(p) = p.take() {
            c.port.free(p);
        }
    }
    Ok(())
}

fn rxonly(c: &mut Ctx) -> Result<()> {
    while !c.done(c.meter.rx) {
        let n = c.rx_burst()?;
        for i in 0..n {
            let Some(p) = c.rx[i].take() else { continue };
            let r = frame::check(c.port.data(&p), c.payload);
            c.meter.rx_frame(r);
            c.port.free(p);
        }
        c.tick(n > 0)?;
    }
    Ok(())
}

fn echo(c: &mut Ctx, swap: bool) -> Result<()> {
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
                    frame::macswap(c.port.data_mut(&mut p));
                }
                *slot = Some(p);
            }
        }
        let sent = c.port.tx_burst(&mut pending)?;
        c.meter.add_tx(sent as u64);
        c.tick(moved || sent > 0)?;
    }
    for p in pending.iter_mut() {
        if let Some(p) = p.take() {
            c.port.free(p);
        }
    }
    Ok(())
}

fn pingpong(c: &mut Ctx, rtts: &mut Vec<u32>) -> Result<()> {
    rtts.reserve(c.a.count.min(10_000_000) as usize);
    let mac = c.port.mac();
    let size = c.a.frame_size;
    let mut seq = 0u64;
    while !c.done(seq) {
        let mut p = loop {
            if let Some(p) = c.port.alloc() {
                break p;
            }
            let n = c.rx_burst()?;
            c.free_rx(n);
            c.tick(n > 0)?;
        };
        if p.set_len(size).is_err() {
            c.port.free(p);
            bail!("--frame-size {size} does not fit a buffer");
        }
        let t0 = Instant::now();
        frame::build(c.port.data_mut(&mut p), mac, c.peer_mac, seq, 0, c.payload);
        let mut one = [Some(p)];
        while c.port.tx_burst(&mut one)? == 0 {
            c.tick(false)?;
        }
        c.meter.add_tx(1);
        // Wait for the echo of `seq`.
        'wait: loop {
            let n = c.rx_burst()?;
            for i in 0..n {
                let Some(p) = c.rx[i].take() else { continue };
                let r = frame::check(c.port.data(&p), c.payload);
                c.port.free(p);
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

/// After the last packet: keep the port serviced until the peer leaves, so
/// the peer can take everything in before this side's exit changes the epoch.
fn linger(c: &mut Ctx) -> Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(c.a.linger);
    let mut last_check = Instant::now();
    while Instant::now() < end {
        let n = c.rx_burst()?;
        c.free_rx(n);
        c.port.tx_burst(&mut [])?;
        if last_check.elapsed() > Duration::from_millis(5) {
            last_check = Instant::now();
            if !c.port.link_up()? {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!(
        "sbnet-testpmd: the peer did not leave within {} s; exiting anyway",
        c.a.linger
    );
    Ok(())
}
