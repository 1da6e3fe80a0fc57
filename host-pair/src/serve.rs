//! `host-pair serve`: the flags, the links they name, and the main loop
//! (signals, periodic counters, the metrics file, failed links).

use crate::config::{self, CtlParams, LinkSpec, Params};
use crate::ctl::Control;
use crate::metrics;
use crate::service::Service;
use crate::stats;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use sbnet_device::pair::PollMode;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name of the link `--socket A --socket B` serves.
pub const DEFAULT_LINK: &str = "default";

/// Metrics are written this often when `--stats-interval` is 0.
const METRICS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
pub struct ServeArgs {
    /// Serve every link of this TOML file (docs/many-links.md). Not with --socket.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["sockets", "hugetlbfs"])]
    config: Option<PathBuf>,
    /// vfio-user socket path of the one-link shorthand; give it twice (side 0, then side 1).
    #[arg(long = "socket", value_name = "PATH")]
    sockets: Vec<PathBuf>,
    /// The one link's parameters (with --socket; a config file sets its own).
    #[command(flatten)]
    params: CtlParams,
    /// Replaced by --huge-pages (a file in a directory could be truncated by a client).
    #[arg(long, value_name = "DIR", hide = true)]
    hugetlbfs: Option<PathBuf>,
    /// Switch threads; each link is polled by one, new links go to the one with the fewest.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// How the switch waits for work: `adaptive` spins then sleeps until a kick; `busy` never sleeps.
    #[arg(long, value_enum, default_value_t = Poll::Adaptive)]
    poll: Poll,
    /// Idle polling rounds before an adaptive switch thread sleeps.
    #[arg(long, default_value_t = 20_000)]
    spin: u32,
    /// Print the counters every SECS seconds (0 = only on SIGUSR1 and at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stats_interval: u64,
    /// Write the counters as JSON to this file at exit (and with every
    /// --stats-interval or SIGUSR1 report): {"links":[{"name":...}]}, and with
    /// one link its fields at the top level too.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
    /// Write the counters in Prometheus text format to this file (atomically)
    /// every --stats-interval (10 s when that is 0) and at exit.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Listen for `host-pair ctl` on this unix socket (mode 0600, removed at exit).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Poll {
    Adaptive,
    Busy,
}

/// Flags raised by SIGINT/SIGTERM and SIGUSR1.
struct Signals {
    term: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self> {
        let s = Self {
            term: Arc::new(AtomicBool::new(false)),
            usr1: Arc::new(AtomicBool::new(false)),
        };
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, s.term.clone())
                .context("cannot install signal handlers")?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, s.usr1.clone())
            .context("cannot install signal handlers")?;
        Ok(s)
    }
}

/// The links the flags name and the defaults a `ctl add` starts from.
fn links_of(a: &ServeArgs) -> Result<(Params, Vec<LinkSpec>)> {
    if let Some(dir) = &a.hugetlbfs {
        bail!(
            "--hugetlbfs {} is gone: use --huge-pages. The region is now a sealed hugetlb memfd, \
             which no client can truncate under host-pair (a file in a directory could be)",
            dir.display()
        );
    }
    if let Some(path) = &a.config {
        if a.params.apply(Params::default()) != Params::default() {
            bail!("link parameters go in the config file, not on the command line with --config");
        }
        let l = config::load(path)?;
        return Ok((l.defaults, l.links));
    }
    let params = a.params.apply(Params::default());
    if a.sockets.is_empty() && a.control.is_some() {
        // An empty service, filled through the control socket.
        return Ok((params, Vec::new()));
    }
    if a.sockets.len() != 2 {
        bail!(
            "give exactly two --socket paths (side 0 and side 1) or --config FILE, got {} --socket",
            a.sockets.len()
        );
    }
    let spec = LinkSpec::new(DEFAULT_LINK, &a.sockets, params).map_err(|e| anyhow!(e.cli()))?;
    spec.check().map_err(|e| anyhow!(e.cli()))?;
    Ok((params, vec![spec]))
}

/// Serves until SIGINT/SIGTERM (or, with the one-link shorthand, until
/// its server fails, as before links existed).
pub fn serve(a: ServeArgs) -> Result<()> {
    let (defaults, specs) = links_of(&a)?;
    // Before any socket exists: a signal that finds a socket finds the handlers.
    let sig = Signals::install()?;
    let shorthand = a.config.is_none() && !specs.is_empty();
    let mode = match a.poll {
        Poll::Busy => PollMode::Busy,
        Poll::Adaptive => PollMode::Adaptive { spin: a.spin },
    };
    let service = Arc::new(Service::new(a.threads, mode)?);
    let res = run(&a, &service, &sig, defaults, specs, shorthand);
    service.shutdown();
    // The last counters, unless the service never came up.
    res.and_then(|()| report(&a, &service, true))
}

fn run(
    a: &ServeArgs,
    service: &Arc<Service>,
    sig: &Signals,
    defaults: Params,
    specs: Vec<LinkSpec>,
    shorthand: bool,
) -> Result<()> {
    for spec in specs {
        service.add(spec)?;
    }
    let _control = a
        .control
        .as_ref()
        .map(|p| Control::start(p, service.clone(), defaults))
        .transpose()?;

    tracing::info!(
        links = service.len(),
        threads = a.threads,
        poll = ?a.poll,
        "host-pair serving"
    );

    let stats_every = (a.stats_interval > 0).then(|| Duration::from_secs(a.stats_interval));
    let metrics_every = stats_every.unwrap_or(METRICS_INTERVAL);
    let (mut last_stats, mut last_metrics) = (Instant::now(), Instant::now());
    while !sig.term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let failed = service.failed();
        if shorthand && !failed.is_empty() {
            break;
        }
        for name in failed {
            tracing::error!(link = %name, "a server of the link failed: removing the link");
            let _ = service.remove(&name);
        }
        if sig.usr1.swap(false, Ordering::Relaxed)
            || stats_every.is_some_and(|d| last_stats.elapsed() >= d)
        {
            last_stats = Instant::now();
            last_metrics = last_stats;
            warn_on(report(a, service, true));
        } else if a.metrics_file.is_some() && last_metrics.elapsed() >= metrics_every {
            last_metrics = Instant::now();
            warn_on(report(a, service, false));
        }
    }
    tracing::info!("shutting down");
    Ok(())
}

fn warn_on(r: Result<()>) {
    if let Err(e) = r {
        tracing::warn!("{e:#}");
    }
}

/// One report from one snapshot: counter lines to stderr (with `print`),
/// the JSON file (with `print`, as before links) and the metrics file.
fn report(a: &ServeArgs, service: &Service, print: bool) -> Result<()> {
    let links = service.stats(None, print)?;
    if let (Some(path), true) = (&a.stats_json, print) {
        std::fs::write(path, stats::document(links.clone()).to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &a.metrics_file {
        metrics::write_atomic(path, &metrics::render(&links))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
