//! `host-pair`: the operator's pairing service. It creates the Shared
//! Buffers region, serves two sbnet virtio-net functions on vfio-user
//! sockets (QEMU's `vfio-user-pci` or the PMD in host-process mode), and
//! switches packets between them. See `docs/operator-guide.md`.

mod stats;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::{run_switch, ConfigError, Pair, PairConfig, PollMode, Shared, SideHandle};
use sbnet_device::switch::SwitchConfig;
use sbnet_vfio_user::server::Server;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "host-pair",
    version,
    about = "Pair two sbnet virtio-net functions over vfio-user: zero-copy between Shared Buffers slots, one copy otherwise."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve two functions and switch packets between them until SIGINT/SIGTERM.
    ///
    /// Side 0 is served on the first --socket, side 1 on the second. Connect
    /// QEMU (10.1 or later) with
    /// `-device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'`
    /// or a PMD with `sbnet-testpmd --socket PATH`. SIGUSR1 prints the
    /// counters. See docs/operator-guide.md.
    Serve(ServeArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// vfio-user socket path; give it twice (side 0, then side 1).
    #[arg(long = "socket", value_name = "PATH", required = true)]
    sockets: Vec<PathBuf>,
    /// Number of slots in the Shared Buffers region (power of two, 2..=32768).
    #[arg(long, default_value_t = 512)]
    slots: u32,
    /// Bytes per slot (power of two, 2048..=131072); the largest frame is this minus 12.
    #[arg(long, default_value_t = 2048)]
    slot_size: u32,
    /// Largest virtqueue size a driver may choose (power of two, 2..=32768, at least --slots/2 + 128).
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,
    /// Queue pairs per function (power of two, 1..=16; at most --slots/2). Above 1 the functions
    /// offer VIRTIO_NET_F_MQ with a control queue (`ethtool -L eth0 combined N`), and the slots
    /// are split into sub-pairs: --queue-size must then be at least --slots/N/2 + 128.
    #[arg(long, default_value_t = 1)]
    queue_pairs: u16,
    /// Back the Shared Buffers region with huge pages (a hugetlb memfd): the region size
    /// (--slots x --slot-size) must be a multiple of the huge page size, and enough pages
    /// must be reserved (vm.nr_hugepages).
    #[arg(long)]
    huge_pages: bool,
    /// Replaced by --huge-pages (a file in a directory could be truncated by a client).
    #[arg(long, value_name = "DIR", hide = true)]
    hugetlbfs: Option<PathBuf>,
    /// How the switch waits for work: `adaptive` spins then sleeps until a kick; `busy` never sleeps.
    #[arg(long, value_enum, default_value_t = Poll::Adaptive)]
    poll: Poll,
    /// Idle polling rounds before an adaptive switch sleeps.
    #[arg(long, default_value_t = 20_000)]
    spin: u32,
    /// How long a TX may wait for the peer's RX buffer, in microseconds (docs/abi.md §6, "Zero-copy mode": Wait).
    #[arg(long, default_value_t = 20_000)]
    tx_wait_us: u64,
    /// Most TX chains handled per side and polling round.
    #[arg(long, default_value_t = 64)]
    burst: usize,
    /// Print the counters every SECS seconds (0 = only on SIGUSR1 and at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stats_interval: u64,
    /// Write the counters as JSON to this file at exit (and with every
    /// --stats-interval or SIGUSR1 report).
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Poll {
    Adaptive,
    Busy,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(a) => serve(a),
    };
    if let Err(e) = res {
        eprintln!("host-pair: error: {e:#}");
        std::process::exit(1);
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    if a.sockets.len() != 2 {
        bail!(
            "give exactly two --socket paths (side 0 and side 1), got {}; N-way pairing is not supported yet",
            a.sockets.len()
        );
    }
    if a.sockets[0] == a.sockets[1] {
        bail!(
            "the two --socket paths are the same: {}",
            a.sockets[0].display()
        );
    }
    let geometry = SlotGeometry::new(a.slot_size, a.slots)
        .map_err(|e| anyhow::anyhow!("{e} (see --slots and --slot-size)"))?;
    let cfg = PairConfig {
        geometry,
        max_queue_size: a.queue_size,
        switch: SwitchConfig {
            burst: a.burst,
            tx_wait: Duration::from_micros(a.tx_wait_us),
        },
        huge_pages: a.huge_pages,
        queue_pairs: a.queue_pairs,
    };
    // The pair enforces the geometry rules; say them in the CLI's words.
    match cfg.validate() {
        Ok(()) => {}
        Err(ConfigError::QueueSizeNotPowerOfTwo(q)) => {
            bail!("--queue-size {q} is not a power of two between 2 and 32768")
        }
        Err(ConfigError::QueueTooSmall {
            queue_size,
            slots,
            queue_pairs,
            need,
        }) => bail!(
            "--queue-size {queue_size} is too small for --slots {slots} and --queue-pairs {queue_pairs}: each side's receive queue \
             must hold the slots its peer may own plus classic buffers (at least --slots/--queue-pairs/2 + 128 = {need}); \
             raise --queue-size or lower --slots"
        ),
        Err(ConfigError::QueuePairs { queue_pairs, slots }) => bail!(
            "--queue-pairs {queue_pairs} must be a power of two between 1 and 16, and at most --slots/2 ({})",
            slots / 2
        ),
    }
    if a.burst == 0 {
        bail!("--burst must be at least 1");
    }
    if let Some(dir) = &a.hugetlbfs {
        bail!(
            "--hugetlbfs {} is gone: use --huge-pages. The region is now a sealed hugetlb memfd, \
             which no client can truncate under host-pair (a file in a directory could be)",
            dir.display()
        );
    }
    let pair = Pair::new(&cfg).with_context(|| {
        if a.huge_pages {
            format!(
                "cannot create a {} byte hugetlb region (a multiple of the huge page size? \
                 enough free huge pages? see vm.nr_hugepages in /proc/meminfo)",
                geometry.region_size()
            )
        } else {
            format!(
                "cannot create a {} byte memfd region",
                geometry.region_size()
            )
        }
    })?;
    let shared = Shared::new(pair).context("cannot create the switch's wake-up eventfd")?;

    // Bind both sockets before serving either, so a bad path fails fast.
    let servers = a
        .sockets
        .iter()
        .map(|p| Server::bind(p).with_context(|| format!("cannot serve on {}", p.display())))
        .collect::<Result<Vec<_>>>()?;

    let term = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).context("cannot install signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, usr1.clone())
        .context("cannot install signal handlers")?;

    tracing::info!(
        slots = a.slots,
        slot_size = a.slot_size,
        region_bytes = geometry.region_size(),
        queue_size = a.queue_size,
        poll = ?a.poll,
        "host-pair serving side 0 on {} and side 1 on {}",
        a.sockets[0].display(),
        a.sockets[1].display()
    );

    let mut threads = Vec::new();
    for (side, server) in servers.into_iter().enumerate() {
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("vfio-user-{side}"))
                .spawn(move || {
                    let mut handle = SideHandle::new(shared.clone(), side);
                    if let Err(e) = server.serve(&mut handle, &shared.stop) {
                        tracing::error!(side, "vfio-user server stopped: {e}");
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                })
                .context("cannot start a server thread")?,
        );
    }
    let mode = match a.poll {
        Poll::Busy => PollMode::Busy,
        Poll::Adaptive => PollMode::Adaptive { spin: a.spin },
    };
    {
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("switch".into())
                .spawn(move || run_switch(&shared, mode))
                .context("cannot start the switch thread")?,
        );
    }

    let mut last = Instant::now();
    while !term.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let periodic =
            a.stats_interval > 0 && last.elapsed() >= Duration::from_secs(a.stats_interval);
        if usr1.swap(false, Ordering::Relaxed) || periodic {
            last = Instant::now();
            let snapshot = {
                let pair = shared.lock();
                stats::print(&pair);
                a.stats_json.as_ref().map(|_| stats::json(&pair))
            };
            // The JSON file follows the printed counters (written outside the lock).
            if let (Some(path), Some(v)) = (&a.stats_json, snapshot) {
                if let Err(e) = std::fs::write(path, v.to_string()) {
                    tracing::warn!("cannot write {}: {e}", path.display());
                }
            }
        }
    }
    tracing::info!("shutting down");
    shared.stop.store(true, Ordering::Relaxed);
    shared.wake();
    for t in threads {
        let _ = t.join();
    }
    let pair = shared.lock();
    stats::print(&pair);
    if let Some(path) = &a.stats_json {
        std::fs::write(path, stats::json(&pair).to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
