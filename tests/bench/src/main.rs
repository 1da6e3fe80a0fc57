//! `sbnet-bench`: sbnet's end-to-end benchmark (issue 5), side by side with
//! DPDK's vhost-user path and memif, in one run on this machine; writes
//! `docs/benchmarks.md`, `docs/benchmarks.json` and two SVG charts.
//!
//! Normally started by `tests/bench/run.sh`, which installs DPDK, sets up
//! huge pages, builds everything and runs the criterion micro-benchmarks
//! first. See `docs/benchmarks.md` for the method.

mod chart;
mod dpdk;
mod links;
mod links_run;
mod model;
mod probe;
mod report;
mod sbnet;
mod util;
mod window;

use anyhow::{bail, Context, Result};
use clap::Parser;
use model::{Cell, Place, Sample, System, Timing};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "sbnet-bench",
    version,
    about = "End-to-end benchmark: sbnet zero-copy and classic vs DPDK vhost-user and memif; writes docs/benchmarks.md with a chart."
)]
struct Args {
    /// Short runs, frame sizes 64, 1500 and 65536, two repeats (development).
    #[arg(long)]
    quick: bool,
    /// Frame sizes (default 64,256,1500,4096,9000,65536).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Seconds of each run's measured window (default 8, quick 3).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of traffic discarded before the window opens (default 2, quick 1).
    #[arg(long)]
    warm_up: Option<f64>,
    /// Runs per system and size (default 5, quick 2).
    #[arg(long)]
    repeats: Option<usize>,
    /// Skip the DPDK peers.
    #[arg(long)]
    no_dpdk: bool,
    /// Only the many-links sections (issue 12: links × switch threads, idle links); same as `--systems links`.
    #[arg(long, conflicts_with = "no_links")]
    links_only: bool,
    /// Skip the many-links sections.
    #[arg(long)]
    no_links: bool,
    /// Seconds of each idle-links measurement (default 10, quick 5).
    #[arg(long)]
    idle_secs: Option<f64>,
    /// Only these systems (keys: links = the many-links sections, sbnet_zc, sbnet_zc_full, sbnet_classic, dpdk_vhost, dpdk_memif, dpdk_memif_1cpu, sbnet_zc_pingpong, sbnet_classic_pingpong).
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// The report (default docs/benchmarks.md; with --links-only docs/benchmarks-links.md, so the full report stays).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where host-pair and sbnet-testpmd are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Criterion's output directory, for the micro-benchmark table.
    #[arg(long, default_value = "target/criterion")]
    criterion_dir: PathBuf,
    /// Analysis appended to the report.
    #[arg(long, default_value = "tests/bench/notes.md")]
    notes: PathBuf,
    /// Work directory for sockets, logs and JSON (default: a fresh one in /tmp).
    #[arg(long)]
    work: Option<PathBuf>,
    /// CPU of the host's party (host-pair, the DPDK vhost switch).
    #[arg(long, default_value = "0")]
    host_cpu: String,
    /// CPU of both endpoints.
    #[arg(long, default_value = "1")]
    guest_cpu: String,
    /// host-pair --poll.
    #[arg(long, default_value = "adaptive")]
    poll: String,
    /// sbnet-testpmd --idle.
    #[arg(long, default_value = "yield")]
    idle: String,
    /// Before each run, wait (up to 20 s) until other programs use less than this share of the machine.
    #[arg(long, default_value_t = 0.15)]
    max_background: f64,
    /// Write the report again from a JSON file of an earlier run (no measuring).
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
    /// How this run was started, for the report.
    #[arg(long)]
    invocation: Option<String>,
    /// Only probe how far apart --host-cpu and --guest-cpu are, N times a quarter of a second apart: one cache line's round trip between them in ns per line (the Variance table's *line* column), then exit. Needs no root and runs nothing else.
    #[arg(long, value_name = "N")]
    line_probe: Option<u32>,
}

struct Job {
    system: System,
    frame: usize,
    repeat: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("sbnet-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn machine() -> String {
    let lscpu = util::capture("lscpu", &[]);
    let keep = [
        "Architecture",
        "Model name",
        "CPU(s):",
        "Thread(s) per core",
        "Core(s) per socket",
        "Hypervisor vendor",
        "L1d cache",
        "L2 cache",
        "L3 cache",
        "CPU max MHz",
        "BogoMIPS",
    ];
    let mut out: Vec<String> = lscpu
        .lines()
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    out.push(format!("nproc: {}", util::capture("nproc", &[])));
    out.push(format!("kernel: {}", util::capture("uname", &["-srvm"])));
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(l) = mem.lines().find(|l| l.starts_with("MemTotal")) {
        out.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if let Some(l) = os.lines().find(|l| l.starts_with("PRETTY_NAME=")) {
        out.push(format!(
            "os: {}",
            l.trim_start_matches("PRETTY_NAME=").trim_matches('"')
        ));
    }
    let dpdk = util::capture("dpkg-query", &["-W", "-f", "${Version}", "dpdk"]);
    if !dpdk.is_empty() {
        out.push(format!("dpdk (Debian package): {dpdk}"));
    }
    out.push(format!("rustc: {}", util::capture("rustc", &["--version"])));
    out.join("\n")
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

fn run(a: &Args) -> Result<()> {
    if let Some(j) = &a.render {
        return render(a, j);
    }
    if let Some(n) = a.line_probe {
        return line_probes(a, n);
    }
    let t0 = Instant::now();
    let started = util::capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let sizes = a.sizes.clone().unwrap_or_else(|| {
        if a.quick {
            vec![64, 1500, 65536]
        } else {
            vec![64, 256, 1500, 4096, 9000, 65536]
        }
    });
    if sizes.iter().any(|&f| !(60..=131060).contains(&f)) {
        bail!("--sizes: frames must be 60..=131060 bytes");
    }
    let secs = a.duration.unwrap_or(if a.quick { 3.0 } else { 8.0 });
    let warm = a.warm_up.unwrap_or(if a.quick { 1.0 } else { 2.0 });
    if !(secs >= 1.0 && (0.0..=60.0).contains(&warm)) {
        bail!("--duration must be at least 1 s and --warm-up 0..=60 s");
    }
    let timing = Timing { warm, secs };
    let repeats = a.repeats.unwrap_or(if a.quick { 2 } else { 5 }).max(1);
    let place = Place {
        host: a.host_cpu.clone(),
        tx: a.guest_cpu.clone(),
        rx: a.guest_cpu.clone(),
        memif_tx: a.host_cpu.clone(),
        memif_rx: a.guest_cpu.clone(),
        memif_shared: a.guest_cpu.clone(),
        poll: a.poll.clone(),
        idle: a.idle.clone(),
    };
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .to_path_buf(),
    };
    let bins = sbnet::Bins {
        host_pair: bin_dir.join("host-pair"),
        testpmd: bin_dir.join("sbnet-testpmd"),
    };
    for p in [&bins.host_pair, &bins.testpmd] {
        if !p.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p host-pair -p sbnet-testpmd)",
                p.display()
            );
        }
    }
    let (dpdk, dpdk_note) = if a.no_dpdk || a.links_only {
        (None, Some("skipped (--no-dpdk)".to_string()))
    } else {
        match dpdk::find() {
            Ok(d) => (Some(d), None),
            Err(e) => {
                eprintln!("sbnet-bench: DPDK peers skipped: {e:#}");
                (None, Some(format!("skipped: {e:#}")))
            }
        }
    };
    let work = a.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sbnet-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    // The plan: repeats outermost, so a slow phase of the machine spreads
    // over every system instead of falling on one; the order of the
    // systems turns by one place every repeat, so no system always runs
    // right after the same other one.
    let mut jobs = Vec::new();
    let mut cells: Vec<Cell> = Vec::new();
    fn cell(cells: &mut Vec<Cell>, s: System, f: usize) -> usize {
        if let Some(i) = cells.iter().position(|c| c.system == s && c.frame == f) {
            return i;
        }
        cells.push(Cell {
            system: s,
            frame: f,
            samples: Vec::new(),
            error: None,
            commands: Vec::new(),
        });
        cells.len() - 1
    }
    for rep in 0..repeats {
        let mut order = System::THROUGHPUT;
        order.rotate_left(rep % System::THROUGHPUT.len());
        for &f in &sizes {
            for s in order {
                let i = cell(&mut cells, s, f);
                let na = match s {
                    System::SbnetZcFull if rep > 0 => continue,
                    System::SbnetClassic if f > sbnet::CLASSIC_MAX_FRAME => Some(format!(
                        "n/a: sbnet-testpmd's classic buffers are 2048 B (frames up to {} B); no mergeable RX buffers",
                        sbnet::CLASSIC_MAX_FRAME
                    )),
                    _ if s.is_dpdk() && dpdk.is_none() => {
                        Some(format!("n/a: {}", dpdk_note.clone().unwrap_or_default()))
                    }
                    System::Vhost if dpdk::frame(f) > dpdk::VIRTIO_MAX_FRAME => Some(format!(
                        "n/a: DPDK 22.11's virtio PMD takes frames up to {} B",
                        dpdk::VIRTIO_MAX_FRAME
                    )),
                    _ => None,
                };
                if let Some(na) = na {
                    cells[i].error = Some(na);
                    continue;
                }
                jobs.push(Job {
                    system: s,
                    frame: f,
                    repeat: rep,
                });
            }
        }
    }
    for &f in &sizes {
        cell(&mut cells, System::PingZc, f);
        jobs.push(Job {
            system: System::PingZc,
            frame: f,
            repeat: 0,
        });
        if f <= sbnet::CLASSIC_MAX_FRAME {
            cell(&mut cells, System::PingClassic, f);
            jobs.push(Job {
                system: System::PingClassic,
                frame: f,
                repeat: 0,
            });
        }
    }
    let only = if a.links_only {
        Some(vec!["links".to_string()])
    } else {
        a.systems.clone()
    };
    if let Some(only) = &only {
        jobs.retain(|j| only.iter().any(|k| k == j.system.key()));
        cells.retain(|c| only.iter().any(|k| k == c.system.key()));
    }
    let with_links = !a.no_links && only.as_ref().is_none_or(|o| o.iter().any(|k| k == "links"));
    let links_repeats = if a.quick { 1 } else { repeats.min(3) };
    let idle_secs = a.idle_secs.unwrap_or(if a.quick { 5.0 } else { 10.0 });
    if !(1.0..=600.0).contains(&idle_secs) {
        bail!("--idle-secs must be 1..=600");
    }
    let est = |j: &Job| -> f64 {
        match j.system {
            // The echo side runs 3 s longer than the pinger.
            System::PingZc | System::PingClassic => secs + 4.5,
            s if s.is_dpdk() => warm.ceil() + secs + 9.0,
            _ => warm.ceil() + secs + 3.5,
        }
    };
    let links_est = if with_links {
        links_run::estimate(timing, links_repeats, idle_secs)
    } else {
        0.0
    };
    let total_est: f64 = jobs.iter().map(est).sum::<f64>() + links_est;
    eprintln!(
        "sbnet-bench: {} runs ({} s windows after {} s of warm-up, {} repeat(s), sizes {:?}), about {} of running; work directory {}",
        jobs.len(),
        secs,
        warm,
        repeats,
        sizes,
        fmt_secs(total_est),
        work.display()
    );

    // The CPUs whose distance the runs depend on: the host's party's and
    // the endpoints' (memif's two-CPU row uses the same two).
    let line_cpus = (
        probe::first_cpu(&place.host).unwrap_or(0),
        probe::first_cpu(&place.rx).unwrap_or(1),
    );
    let mut left = total_est;
    for (n, j) in jobs.iter().enumerate() {
        let bg = util::wait_quiet(a.max_background, Duration::from_secs(20));
        let dir = work.join(format!("{}-{}-{}", j.system.key(), j.frame, j.repeat));
        let before = probe::line_round_trip(line_cpus.0, line_cpus.1);
        let res = run_one(j, &bins, dpdk.as_ref(), &dir, &place, timing);
        // A DPDK start-up can fail on a busy machine (EAL, vhost-user
        // handshake); try once more before giving up.
        let res = match res {
            Err(e) if j.system.is_dpdk() && !e.to_string().starts_with("n/a") => {
                eprintln!(
                    "sbnet-bench: {} {} B failed, retrying once: {}",
                    j.system.name(),
                    j.frame,
                    e.to_string().lines().next().unwrap_or("")
                );
                run_one(j, &bins, dpdk.as_ref(), &dir, &place, timing)
            }
            r => r,
        };
        left -= est(j);
        let i = cells
            .iter()
            .position(|c| c.system == j.system && c.frame == j.frame)
            .expect("planned");
        let line = match res {
            Ok((mut s, cmds)) => {
                s.background = bg;
                s.line_rtt = [before, probe::line_round_trip(line_cpus.0, line_cpus.1)];
                let txt = match s.rtt {
                    Some((p50, p99)) => format!("rtt p50 {p50:.1} us p99 {p99:.1} us"),
                    None => format!(
                        "{:.3} Mpps {:.2} Gbit/s, {} Mpkt per CPU-s",
                        s.pps / 1e6,
                        s.pps * j.frame as f64 * 8.0 / 1e9,
                        s.per_cpu_s()
                            .map_or("?".into(), |v| format!("{:.3}", v / 1e6))
                    ),
                };
                let c = &mut cells[i];
                if c.commands.is_empty() {
                    c.commands = cmds;
                }
                c.samples.push(s);
                txt
            }
            Err(e) => util::failed(&e, &mut cells[i].error),
        };
        eprintln!(
            "[{:>3}/{}] {} elapsed, ~{} left | {} {} B run {} | bg {:.0}% | {}",
            n + 1,
            jobs.len(),
            fmt_secs(t0.elapsed().as_secs_f64()),
            fmt_secs(left),
            j.system.name(),
            j.frame,
            j.repeat + 1,
            bg * 100.0,
            line
        );
    }

    let links = with_links.then(|| {
        links_run::run_all(
            &bins,
            &work,
            &place,
            timing,
            links_repeats,
            idle_secs,
            a.max_background,
        )
    });
    let meta = Meta {
        links,
        started,
        quick: a.quick,
        secs,
        warm,
        repeats,
        sizes,
        place,
        machine: machine(),
        wall_secs: t0.elapsed().as_secs_f64(),
        invocation: a.invocation.clone().unwrap_or_else(|| {
            std::env::args()
                .map(|w| util::shell_word(&w))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        dpdk_note,
        max_background: a.max_background,
        micro: report::read_criterion(&a.criterion_dir),
    };
    write_outputs(a, &cells, &meta, true)?;
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

fn run_one(
    j: &Job,
    bins: &sbnet::Bins,
    dpdk: Option<&dpdk::Dpdk>,
    dir: &Path,
    place: &Place,
    t: Timing,
) -> Result<(Sample, Vec<String>)> {
    use sbnet::Flow;
    let f = j.frame;
    let sb = |flow, payload, classic| sbnet::run(bins, dir, place, flow, f, t, payload, classic);
    match j.system {
        System::SbnetZc => sb(Flow::OneWay, "header", false),
        System::SbnetZcFull => sb(Flow::OneWay, "full", false),
        System::SbnetClassic => sb(Flow::OneWay, "header", true),
        System::PingZc => sb(Flow::PingPong, "header", false),
        System::PingClassic => sb(Flow::PingPong, "header", true),
        System::Vhost => dpdk::vhost(dpdk.context("no DPDK")?, dir, place, dpdk::frame(f), t),
        System::Memif => dpdk::memif(
            dpdk.context("no DPDK")?,
            dir,
            (&place.memif_tx, &place.memif_rx),
            dpdk::frame(f),
            t,
        ),
        System::MemifShared => dpdk::memif(
            dpdk.context("no DPDK")?,
            dir,
            (&place.memif_shared, &place.memif_shared),
            dpdk::frame(f),
            t,
        ),
    }
}

/// What a report needs besides the cells.
struct Meta {
    started: String,
    quick: bool,
    secs: f64,
    warm: f64,
    repeats: usize,
    sizes: Vec<usize>,
    place: Place,
    machine: String,
    wall_secs: f64,
    invocation: String,
    dpdk_note: Option<String>,
    max_background: f64,
    micro: Vec<report::Micro>,
    links: Option<links::Links>,
}

fn write_outputs(a: &Args, cells: &[Cell], m: &Meta, write_json: bool) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.links_only {
            "docs/benchmarks-links.md"
        } else {
            "docs/benchmarks.md"
        })
    });
    let out_dir = out.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&out_dir)?;
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "benchmarks".into());
    let charts = [
        (
            out_dir.join(format!("{stem}-rate.svg")),
            false,
            "Packet rate vs frame size (one-way, at the receiver)",
        ),
        (
            out_dir.join(format!("{stem}-gbps.svg")),
            true,
            "Payload throughput vs frame size (one-way, at the receiver)",
        ),
    ];
    let mut chart_paths = Vec::new();
    for (p, g, t) in charts.iter().filter(|_| !cells.is_empty()) {
        chart::chart(p, cells, &m.sizes, *g, t)?;
        if p.exists() {
            chart_paths.push(p.clone());
        }
    }
    let json_path = out_dir.join(format!("{stem}.json"));
    if write_json {
        let p = &m.place;
        let json = serde_json::json!({
            "started": m.started,
            "quick": m.quick,
            "duration_s": m.secs,
            "warm_up_s": m.warm,
            "repeats": m.repeats,
            "sizes": m.sizes,
            "placement": {
                "host": p.host, "tx": p.tx, "rx": p.rx, "memif_tx": p.memif_tx,
                "memif_rx": p.memif_rx, "memif_shared": p.memif_shared,
                "poll": p.poll, "idle": p.idle,
            },
            "machine": m.machine,
            "wall_s": m.wall_secs,
            "invocation": m.invocation,
            "dpdk_note": m.dpdk_note,
            "max_background": m.max_background,
            "micro": m.micro.iter().map(report::Micro::to_json).collect::<Vec<_>>(),
            "cells": cells.iter().map(Cell::to_json).collect::<Vec<_>>(),
            "links": m.links.as_ref().map(links::Links::to_json),
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    }
    let rep = report::Report {
        cells,
        sizes: &m.sizes,
        place: &m.place,
        machine: m.machine.clone(),
        quick: m.quick,
        secs: m.secs,
        warm: m.warm,
        repeats: m.repeats,
        started: m.started.clone(),
        wall_secs: m.wall_secs,
        invocation: m.invocation.clone(),
        micro: &m.micro,
        notes: std::fs::read_to_string(&a.notes).ok(),
        charts: chart_paths,
        dpdk_note: m.dpdk_note.clone(),
        max_background: m.max_background,
        links: m.links.as_ref(),
    };
    std::fs::write(&out, rep.markdown())
        .with_context(|| format!("cannot write {}", out.display()))?;
    if write_json {
        eprintln!(
            "sbnet-bench: wrote {}, {} and the charts",
            out.display(),
            json_path.display()
        );
    } else {
        eprintln!("sbnet-bench: wrote {} and the charts", out.display());
    }
    Ok(())
}

/// `--line-probe N`: the CPUs' distance, N times.
fn line_probes(a: &Args, n: u32) -> Result<()> {
    let (host, guest) = (
        probe::first_cpu(&a.host_cpu)
            .with_context(|| format!("--host-cpu {:?} is not a CPU number", a.host_cpu))?,
        probe::first_cpu(&a.guest_cpu)
            .with_context(|| format!("--guest-cpu {:?} is not a CPU number", a.guest_cpu))?,
    );
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(250));
        }
        match probe::line_round_trip(host, guest) {
            Some(ns) => println!("CPU {host} <-> CPU {guest}: {ns:.0} ns per cache-line round trip"),
            None => bail!(
                "CPU {host} and CPU {guest} did not answer within half a second: do both exist and are they online (nproc, /sys/devices/system/cpu/online)?"
            ),
        }
    }
    Ok(())
}

/// `--render`: the report of an earlier run, from its JSON.
fn render(a: &Args, path: &Path) -> Result<()> {
    let j = util::json(path)?;
    let st = |k: &str| j.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let pl = &j["placement"];
    let ps = |k: &str| {
        pl.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let cells: Vec<Cell> = j["cells"]
        .as_array()
        .context("no cells")?
        .iter()
        .filter_map(Cell::from_json)
        .collect();
    let meta = Meta {
        links: j.get("links").and_then(links::Links::from_json),
        started: st("started"),
        quick: j["quick"].as_bool().unwrap_or(false),
        secs: util::num(&j, "duration_s"),
        warm: util::num(&j, "warm_up_s"),
        repeats: j["repeats"].as_u64().unwrap_or(1) as usize,
        sizes: j["sizes"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default(),
        place: Place {
            host: ps("host"),
            tx: ps("tx"),
            rx: ps("rx"),
            memif_tx: ps("memif_tx"),
            memif_rx: ps("memif_rx"),
            memif_shared: ps("memif_shared"),
            poll: ps("poll"),
            idle: ps("idle"),
        },
        machine: st("machine"),
        wall_secs: util::num(&j, "wall_s"),
        invocation: st("invocation"),
        dpdk_note: j
            .get("dpdk_note")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        max_background: util::num(&j, "max_background"),
        micro: j["micro"]
            .as_array()
            .map(|v| v.iter().filter_map(report::Micro::from_json).collect())
            .unwrap_or_default(),
    };
    write_outputs(a, &cells, &meta, false)
}
