//! `sbnet-testpmd`: a testpmd-like tool over the sbnet PMD, in host-process
//! mode (`--socket`: the process is its own vfio-user client of `host-pair`)
//! or inside a VM (`--pci`: the function is driven through kernel VFIO).
//!
//! Modes: `txonly` (generate), `rxonly` (sink and verify), `io` (echo every
//! frame back in place), `macswap` (echo with MAC addresses swapped),
//! `pingpong` (one frame at a time, round-trip latency; the peer runs `io`
//! or `macswap`) and `forward` (two ports, `--socket A --socket B`: every
//! frame received on one is copied to the other and sent there, both
//! ways; the chain demo's middle VM). Frames carry a sequence number and a
//! checksum; any integrity error makes the exit status non-zero.
//!
//! `--queues N` opens N queue pairs and runs one thread per queue pair
//! (in `forward`, queue pair q of both ports per thread); `--count` is per
//! queue pair then, and the JSON summary lists each queue pair's counters.

mod forward;
mod frame;
mod report;
mod worker;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use forward::FwdCounts;
use report::{ledger_json, Meter, Summary};
use sbnet_pmd::bus::vfio::{DmaPages, VfioBus, VfioOptions};
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::Bus;
use sbnet_pmd::{Port, PortConfig};
use std::path::PathBuf;
use worker::Outcome;

#[derive(Parser, Debug)]
#[command(
    name = "sbnet-testpmd",
    version,
    about = "Send, receive, echo or ping-pong test frames through an sbnet function (host-process mode, or in a VM through VFIO)."
)]
#[command(group(clap::ArgGroup::new("device").required(true).args(["socket", "pci"])))]
struct Args {
    /// vfio-user socket of the function to drive (one side of `host-pair serve`); twice for `--mode forward`.
    #[arg(long, value_name = "PATH")]
    socket: Vec<PathBuf>,
    /// Inside a VM: PCI address of the function (e.g. 0000:00:03.0), driven through kernel VFIO (bound to vfio-pci if needed; needs an IOMMU, and 2 MiB huge pages unless --small-pages); twice for `--mode forward`.
    #[arg(long, value_name = "DDDD:BB:DD.F")]
    pci: Vec<String>,
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
    /// Queue pairs to open (a power of two, at most the link's; above 1 the device must offer multiqueue), one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Packets to send (txonly), receive (rxonly), echo (io, macswap), forward (forward) or round trips (pingpong), per queue pair; 0 = no limit.
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
    /// Post a sent slot on the receive queue only after its send completes, even when host-pair allows posting it with the send (early post, the default; docs/abi.md §6). For comparisons.
    #[arg(long)]
    no_early_post: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TestMode {
    Txonly,
    Rxonly,
    Io,
    Macswap,
    Pingpong,
    Forward,
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

/// What every thread needs to know about its port.
#[derive(Clone)]
pub struct PortInfo {
    /// The device as given on the command line, for messages.
    pub device: String,
    pub mac: [u8; 6],
    pub peer_mac: [u8; 6],
    pub side: u8,
    pub slot_size: Option<u32>,
}

impl PortInfo {
    fn of(port: &Port<Box<dyn Bus>>, device: String) -> Self {
        let side = port.side().filter(|s| *s <= 1).unwrap_or(0);
        Self {
            device,
            mac: port.mac(),
            peer_mac: [0x52, 0x54, 0x00, 0x5b, 0x00, 1 - side],
            side,
            slot_size: port.slot_size(),
        }
    }
}

/// The devices named on the command line.
fn devices(a: &Args) -> Vec<String> {
    let mut d: Vec<String> = a.socket.iter().map(|s| s.display().to_string()).collect();
    d.extend(a.pci.iter().cloned());
    d
}

fn open_port(a: &Args, i: usize) -> Result<Port<Box<dyn Bus>>> {
    let bus: Box<dyn Bus> = if let Some(socket) = a.socket.get(i) {
        Box::new(VfioUserBus::connect(socket).with_context(|| {
            format!(
                "cannot reach the device at {} (is `host-pair serve --socket {}` running?)",
                socket.display(),
                socket.display()
            )
        })?)
    } else {
        let pci = &a.pci[i - a.socket.len()];
        let dma_pages = if a.small_pages {
            DmaPages::Small
        } else {
            DmaPages::Huge2M
        };
        let opts = VfioOptions {
            dma_pages,
            ..VfioOptions::default()
        };
        Box::new(
            VfioBus::open_with(pci, opts)
                .with_context(|| format!("cannot open PCI function {pci} through VFIO"))?,
        )
    };
    let cfg = PortConfig {
        classic_only: a.classic,
        rx_queue_size: a.queue_size,
        tx_queue_size: a.queue_size,
        early_post: !a.no_early_post,
        ..PortConfig::default()
    };
    let port = Port::open_queue_pairs(bus, cfg, a.queues).context("cannot bring the port up")?;
    if let Some(cap) = port.slot_size().map(|s| s as usize - 12) {
        if a.frame_size > cap && !a.classic {
            bail!("--frame-size {} does not fit a {}-byte slot (largest frame {cap}); start host-pair with a larger --slot-size", a.frame_size, cap + 12);
        }
    }
    Ok(port)
}

fn check_args(a: &Args) -> Result<()> {
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
    let want = if a.mode == TestMode::Forward { 2 } else { 1 };
    if devices(a).len() != want {
        bail!(
            "--mode {:?} drives {want} device(s): give --socket or --pci {want} time(s)",
            a.mode
        );
    }
    if a.mode == TestMode::Pingpong && a.queues != 1 {
        bail!("--mode pingpong runs on one queue pair");
    }
    Ok(())
}

fn run(a: &Args) -> Result<Summary> {
    check_args(a)?;
    let names = devices(a);
    let mut ports = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        ports.push(open_port(a, i)?);
    }
    let infos: Vec<PortInfo> = ports
        .iter()
        .zip(&names)
        .map(|(p, n)| PortInfo::of(p, n.clone()))
        .collect();
    let (outcomes, fwd) = run_threads(a, &mut ports, &infos);
    let mut meter = Meter::new(a.frame_size);
    let mut elapsed = 0.0f64;
    let mut rtts = Vec::new();
    let mut first_err = None;
    let mut queues = Vec::new();
    // The queue pairs' counters as their mode loops ended (not forward).
    let mut run_stats: Option<sbnet_pmd::Stats> = None;
    for (q, o) in outcomes.into_iter().enumerate() {
        meter.merge(&o.meter);
        elapsed = elapsed.max(o.elapsed);
        rtts.extend(o.rtts);
        let mut j = serde_json::json!({
            "queue": q,
            "rx_packets": o.meter.rx,
            "tx_packets": o.meter.tx,
            "integrity_errors": o.meter.integrity_errors,
            "port": match &o.stats {
                // The snapshot before the linger (one port).
                Some(st) => vec![Some(st.to_json())],
                None => ports.iter().map(|p| p.queue_stats(q as u16).map(|s| s.to_json())).collect::<Vec<_>>(),
            },
        });
        if let Some(st) = &o.stats {
            match &mut run_stats {
                None => run_stats = Some(*st),
                Some(sum) => sum.add(st),
            }
        }
        if let Some(c) = fwd.get(q) {
            j["copies"] = c.copies.into();
            j["dropped"] = c.dropped.into();
        }
        queues.push(j);
        if let Err(e) = o.result {
            first_err.get_or_insert(e.context(format!("queue pair {q}")));
        }
    }
    let port0 = &ports[0];
    let mut summary = Summary::new(
        &meter,
        elapsed,
        &mut rtts,
        run_stats.unwrap_or_else(|| port0.stats()),
        opened_slots(port0),
        format!("{:?}", a.mode).to_lowercase(),
    );
    summary.extra.insert("queues".into(), queues.into());
    if a.mode == TestMode::Forward {
        let mut total = FwdCounts::default();
        fwd.iter().for_each(|c| total.add(c));
        summary.extra.insert("copies".into(), total.copies.into());
        summary
            .extra
            .insert("copied_bytes".into(), total.copied_bytes.into());
        summary.extra.insert("dropped".into(), total.dropped.into());
        let per_port: Vec<_> = ports
            .iter()
            .map(|p| {
                serde_json::json!({
                    "port": p.stats().to_json(),
                    "ledger": ledger_json(&p.stats(), opened_slots(p)),
                })
            })
            .collect();
        summary.extra.insert("ports".into(), per_port.into());
        eprintln!(
            "forward: {} frames copied ({} bytes), {} dropped",
            total.copies, total.copied_bytes, total.dropped
        );
    }
    summary.print();
    if let Some(path) = &a.json {
        std::fs::write(path, summary.to_json().to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Slots of the queue pairs opened (the region's, with every queue pair
/// of the link open).
fn opened_slots(p: &Port<Box<dyn Bus>>) -> u32 {
    (0..p.queue_pairs()).map(|q| p.queue(q).slot_count()).sum()
}

/// One thread per queue pair; returns each one's outcome (and, in
/// forward mode, its forwarding counters), in queue pair order.
fn run_threads(
    a: &Args,
    ports: &mut [Port<Box<dyn Bus>>],
    infos: &[PortInfo],
) -> (Vec<Outcome>, Vec<FwdCounts>) {
    std::thread::scope(|s| {
        let (first, rest) = ports.split_at_mut(1);
        let mut handles = Vec::new();
        match rest.first_mut() {
            Some(second) => {
                for (qa, qb) in first[0].queues_mut().iter_mut().zip(second.queues_mut()) {
                    let (ia, ib) = (infos[0].clone(), infos[1].clone());
                    handles.push(s.spawn(move || forward::run(a, qa, qb, ia, ib)));
                }
            }
            None => {
                for q in first[0].queues_mut() {
                    let info = infos[0].clone();
                    handles.push(s.spawn(move || (worker::run(a, q, info), FwdCounts::default())));
                }
            }
        }
        let mut outs = Vec::new();
        let mut fwd = Vec::new();
        for h in handles {
            let (o, c) = h.join().unwrap_or_else(|_| {
                (
                    Outcome {
                        meter: Meter::new(a.frame_size),
                        elapsed: 0.0,
                        rtts: Vec::new(),
                        result: Err(anyhow::anyhow!("a queue pair's thread panicked")),
                        stats: None,
                    },
                    FwdCounts::default(),
                )
            });
            outs.push(o);
            fwd.push(c);
        }
        if a.mode != TestMode::Forward {
            fwd.clear();
        }
        (outs, fwd)
    })
}
