//! `sbnet-demo`: sbnet's main job on its embedded default, no VM needed.
//!
//! Starts `host-pair` and, twice, two `sbnet-testpmd` processes (each its own
//! vfio-user client, host-process mode):
//!
//! 1. traffic both ways: side 0 plays ping-pong, side 1 echoes every frame
//!    back in place;
//! 2. a one-way flow of 1,000,000 frames from side 0 to side 1 that only
//!    gifts keep alive (side 1 never sends a packet).
//!
//! Then it prints what was delivered and how many data copies the host made.
//! The binaries are looked up next to this one (`cargo build --release`).

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "sbnet-demo",
    version,
    about = "Run two PMD processes paired through host-pair and show that the zero-copy path copies nothing."
)]
struct Args {
    /// Frames in the one-way flow.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Ping-pong round trips in the both-ways phase.
    #[arg(long, default_value_t = 20_000)]
    round_trips: u64,
    /// Frame size in bytes (Ethernet frame, without the virtio header).
    #[arg(long, default_value_t = 64)]
    frame_size: u32,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Keep the work directory (sockets, logs, JSON) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// Kills the child when dropped, so no process outlives a failed demo.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to {}: build the workspace first (cargo build --release)",
            name,
            me.display()
        );
    }
    Ok(p)
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > end {
            bail!("{} did not appear within {:?}", path.display(), timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(name: &'static str, bin: &Path, args: &[String], log: &Path) -> Result<Proc> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Proc { name, child })
}

/// Waits for every process of a phase; fails with the tail of the log of
/// the first one that failed or ran out of time.
fn finish(procs: &mut [(Proc, PathBuf)], timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let mut running = false;
        for (p, log) in procs.iter_mut() {
            match p.child.try_wait()? {
                Some(st) if !st.success() => {
                    let text = std::fs::read_to_string(&*log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    bail!(
                        "{} failed ({st}); last lines of {}:\n{}",
                        p.name,
                        log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                Some(_) => {}
                None => running = true,
            }
        }
        if !running {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("phase did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("sbnet-demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<()> {
    let host_pair = sibling("host-pair")?;
    let testpmd = sibling("sbnet-testpmd")?;
    let dir = std::env::temp_dir().join(format!("sbnet-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let res = demo(a, &dir, &host_pair, &testpmd);
    if a.keep || res.is_err() {
        eprintln!("sbnet-demo: logs and counters kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

fn demo(a: &Args, dir: &Path, host_pair: &Path, testpmd: &Path) -> Result<()> {
    let socks = [dir.join("side0.sock"), dir.join("side1.sock")];
    let stats = dir.join("host-pair.json");
    let s = |p: &Path| p.display().to_string();
    let timeout = Duration::from_secs(a.timeout);
    println!(
        "sbnet demo: host-pair pairs two PMD processes over vfio-user sockets in {}",
        dir.display()
    );
    let mut hp = spawn(
        "host-pair",
        host_pair,
        &[
            "serve".into(),
            "--socket".into(),
            s(&socks[0]),
            "--socket".into(),
            s(&socks[1]),
            "--stats-json".into(),
            s(&stats),
        ],
        &dir.join("host-pair.log"),
    )?;
    wait_for(&socks[0], Duration::from_secs(10))?;
    wait_for(&socks[1], Duration::from_secs(10))?;

    let pmd = |side: usize, mode: &str, count: u64, json: &Path| -> Vec<String> {
        vec![
            "--socket".into(),
            s(&socks[side]),
            "--mode".into(),
            mode.into(),
            "--count".into(),
            count.to_string(),
            "--frame-size".into(),
            a.frame_size.to_string(),
            "--stats-interval".into(),
            "0".into(),
            "--json".into(),
            s(json),
        ]
    };

    // Phase 1: both ways.
    let (j0, j1) = (dir.join("pingpong.json"), dir.join("echo.json"));
    println!(
        "phase 1: traffic both ways ({} ping-pong round trips, side 1 echoes in place)",
        a.round_trips
    );
    let echo = spawn(
        "sbnet-testpmd (echo)",
        testpmd,
        &pmd(1, "io", a.round_trips, &j1),
        &dir.join("echo.log"),
    )?;
    let ping = spawn(
        "sbnet-testpmd (ping-pong)",
        testpmd,
        &pmd(0, "pingpong", a.round_trips, &j0),
        &dir.join("pingpong.log"),
    )?;
    finish(
        &mut [
            (ping, dir.join("pingpong.log")),
            (echo, dir.join("echo.log")),
        ],
        timeout,
    )?;
    let (pp, ec) = (json(&j0)?, json(&j1)?);

    // Phase 2: one way.
    let (j2, j3) = (dir.join("txonly.json"), dir.join("rxonly.json"));
    println!(
        "phase 2: one-way flow of {} frames of {} B, side 1 only receives (gifts return the slots)",
        a.packets, a.frame_size
    );
    let rx = spawn(
        "sbnet-testpmd (rxonly)",
        testpmd,
        &pmd(1, "rxonly", a.packets, &j3),
        &dir.join("rxonly.log"),
    )?;
    let tx = spawn(
        "sbnet-testpmd (txonly)",
        testpmd,
        &pmd(0, "txonly", a.packets, &j2),
        &dir.join("txonly.log"),
    )?;
    finish(
        &mut [(rx, dir.join("rxonly.log")), (tx, dir.join("txonly.log"))],
        timeout,
    )?;
    let (tj, rj) = (json(&j2)?, json(&j3)?);

    // Stop host-pair cleanly: it writes its counters on SIGTERM.
    let pid = nix::unistd::Pid::from_raw(hp.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .context("cannot signal host-pair")?;
    let end = Instant::now() + Duration::from_secs(10);
    while hp.child.try_wait()?.is_none() {
        if Instant::now() > end {
            bail!("host-pair did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hj = json(&stats)?;
    let sides = hj
        .get("sides")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sum = |k: &str| sides.iter().map(|v| num(v, k)).sum::<f64>();

    println!();
    println!(
        "{:<34} {:>12} {:>10} {:>12}",
        "", "packets", "Mpps", "integrity"
    );
    println!(
        "{:<34} {:>12} {:>10.3} {:>12}",
        "ping-pong (side 0 -> 1 -> 0)",
        num(&pp, "rx_packets") as u64,
        num(&pp, "mpps"),
        if num(&pp, "integrity_errors") == 0.0 {
            "ok"
        } else {
            "ERRORS"
        }
    );
    println!(
        "{:<34} {:>12} {:>10.3} {:>12}",
        "echo in place (side 1)",
        num(&ec, "tx_packets") as u64,
        num(&ec, "mpps"),
        "-"
    );
    println!(
        "{:<34} {:>12} {:>10.3} {:>12}",
        "one-way received (side 1)",
        num(&rj, "rx_packets") as u64,
        num(&rj, "mpps"),
        if num(&rj, "integrity_errors") == 0.0 {
            "ok"
        } else {
            "ERRORS"
        }
    );
    println!(
        "round trip: p50 {:.1} us, p99 {:.1} us; gifts: side 1 sent {}, side 0 received {}",
        num(&pp, "rtt_p50_us"),
        num(&pp, "rtt_p99_us"),
        num(&rj, "gifts_sent") as u64,
        num(&tj, "gifts_received") as u64
    );
    let zc = sum("tx_zero_copy") as u64;
    let copied = sum("tx_copied") as u64;
    let copied_bytes = sum("copied_bytes") as u64;
    println!(
        "host-pair: {} frames switched, {} zero-copy, {} copied ({} bytes copied), {} refused",
        zc + copied,
        zc,
        copied,
        copied_bytes,
        sum("refusals") as u64
    );
    let delivered = num(&rj, "rx_packets") as u64;
    if delivered != a.packets
        || num(&rj, "integrity_errors") != 0.0
        || num(&pp, "integrity_errors") != 0.0
    {
        bail!(
            "the one-way flow delivered {delivered} of {} frames, or integrity checks failed",
            a.packets
        );
    }
    if copied != 0 {
        bail!("the host copied {copied} frames on a zero-copy pair");
    }
    println!(
        "sbnet demo: OK, {} frames delivered with zero data copies",
        zc
    );
    Ok(())
}
