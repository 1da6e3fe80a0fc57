//! sbnet runs: `host-pair` plus two `sbnet-testpmd` processes in
//! host-process mode (each its own vfio-user client).

use crate::model::{Place, Sample, Timing};
use crate::util::{self, num, Proc};
use crate::window;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the sbnet binaries are.
pub struct Bins {
    pub host_pair: PathBuf,
    pub testpmd: PathBuf,
}

/// Slots in the region. Half of them start on each side; a side must be
/// able to post all of its peer's slots on its receive queue (1024
/// entries), so host-pair refuses more than (queue size - 128) * 2 slots
/// (docs/benchmarks.md, "Problems found", 2).
pub const SLOTS: u32 = 1024;

/// The host-pair slot size for a frame: the next power of two that holds
/// the frame and the 12-byte header (at least 2048).
pub fn slot_size(frame: usize) -> u32 {
    ((frame + 12).next_power_of_two() as u32).max(2048)
}

/// Largest frame the classic path of `sbnet-testpmd` can send: its
/// classic buffers are 2048 bytes, header included.
pub const CLASSIC_MAX_FRAME: usize = 2048 - 12;

/// What one sbnet run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// txonly on side 0 into rxonly on side 1.
    OneWay,
    /// pingpong on side 0 against io (echo in place) on side 1.
    PingPong,
}

struct Run<'a> {
    b: &'a Bins,
    dir: PathBuf,
    frame: usize,
    payload: &'a str,
    classic: bool,
    idle: &'a str,
    hp: Option<Proc>,
    cmds: Vec<String>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl<'a> Run<'a> {
    fn start(
        b: &'a Bins,
        dir: &Path,
        frame: usize,
        place: &'a Place,
        payload: &'a str,
        classic: bool,
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let socks = [dir.join("side0.sock"), dir.join("side1.sock")];
        let args: Vec<String> = vec![
            "serve".into(),
            "--socket".into(),
            s(&socks[0]),
            "--socket".into(),
            s(&socks[1]),
            "--slots".into(),
            SLOTS.to_string(),
            "--slot-size".into(),
            slot_size(frame).to_string(),
        ];
        let mut hp = host_pair(b, dir, place, args)?;
        for p in &socks {
            util::wait_for(p, Duration::from_secs(10), &mut hp)?;
        }
        let cmds = vec![hp.cmdline.clone()];
        Ok(Self {
            b,
            dir: dir.to_path_buf(),
            frame,
            payload,
            classic,
            idle: &place.idle,
            hp: Some(hp),
            cmds,
        })
    }

    /// Starts an `sbnet-testpmd` on `side`; `stats`: print the stats line
    /// every second (the measured window reads it).
    fn pmd(&mut self, side: usize, mode: &str, cpus: &str, secs: f64, stats: bool) -> Result<Proc> {
        let (frame, payload, classic, idle) = (self.frame, self.payload, self.classic, self.idle);
        let mut args: Vec<String> = vec![
            "--socket".into(),
            s(&self.dir.join(format!("side{side}.sock"))),
            "--mode".into(),
            mode.into(),
            "--frame-size".into(),
            frame.to_string(),
            "--duration".into(),
            format!("{secs}"),
            "--payload".into(),
            payload.into(),
            "--idle".into(),
            idle.into(),
            "--stats-interval".into(),
            if stats { "1" } else { "0" }.into(),
            "--json".into(),
            s(&self.dir.join(format!("{mode}.json"))),
        ];
        if classic {
            args.push("--classic".into());
        }
        let p = util::spawn(
            &format!("sbnet-testpmd ({mode})"),
            cpus,
            &self.b.testpmd,
            &args,
            &self.dir.join(format!("{mode}.log")),
        )?;
        self.cmds.push(p.cmdline.clone());
        Ok(p)
    }

    /// Stops host-pair (SIGTERM: it writes its counters) and reads them.
    fn host_counters(&mut self) -> Result<serde_json::Value> {
        let mut hp = self.hp.take().expect("host-pair started");
        hp.signal(Signal::SIGTERM);
        if !hp.wait_timeout(Duration::from_secs(10))? {
            bail!("host-pair did not stop within 10 s of SIGTERM");
        }
        util::json(&self.dir.join("host-pair.json"))
    }
}

/// Starts `host-pair ARGS --poll P --stats-json DIR/host-pair.json` on
/// the host's CPUs, its output in `DIR/host-pair.log`.
pub fn host_pair(b: &Bins, dir: &Path, place: &Place, mut args: Vec<String>) -> Result<Proc> {
    args.extend([
        "--poll".into(),
        place.poll.clone(),
        "--stats-json".into(),
        s(&dir.join("host-pair.json")),
    ]);
    util::spawn(
        "host-pair",
        &place.host,
        &b.host_pair,
        &args,
        &dir.join("host-pair.log"),
    )
}

/// Data copies per delivered packet, from host-pair's counters.
fn copies(hp: &serde_json::Value) -> Option<f64> {
    let sides = hp.get("sides")?.as_array()?;
    let sum = |k: &str| sides.iter().map(|v| num(v, k)).sum::<f64>();
    let packets = sum("tx_packets");
    (packets > 0.0).then(|| sum("tx_copied") / packets)
}

/// One run of `flow` at `frame` bytes: a one-way flow is measured over a
/// window of `t.secs` after `t.warm` seconds of traffic (crate::window);
/// a ping-pong runs `t.secs` and reports its round trips.
#[allow(clippy::too_many_arguments)]
pub fn run(
    b: &Bins,
    dir: &Path,
    place: &Place,
    flow: Flow,
    frame: usize,
    t: Timing,
    payload: &str,
    classic: bool,
) -> Result<(Sample, Vec<String>)> {
    let mut r = Run::start(b, dir, frame, place, payload, classic)?;
    match flow {
        Flow::OneWay => one_way(r, place, t),
        Flow::PingPong => {
            let limit = Duration::from_secs_f64(t.secs + 45.0);
            // The echo side outlives the pinger, so the last round trip completes.
            let mut echo = r.pmd(1, "io", &place.rx, t.secs + 3.0, false)?;
            let mut ping = r.pmd(0, "pingpong", &place.tx, t.secs, false)?;
            ping.finish(limit)?;
            echo.finish(limit)?;
            let hp = r.host_counters()?;
            let rj = r.dir.join("pingpong.json");
            let m = util::json(&rj)?;
            let _peer = util::json(&r.dir.join("io.json"))?;
            if num(&m, "integrity_errors") > 0.0 {
                bail!(
                    "{} integrity errors (see {})",
                    num(&m, "integrity_errors"),
                    rj.display()
                );
            }
            let packets = num(&m, "rx_packets") as u64;
            let secs = num(&m, "elapsed_s");
            if packets == 0 || secs <= 0.0 {
                bail!("nothing received (see {})", r.dir.display());
            }
            Ok((
                Sample {
                    pps: packets as f64 / secs,
                    packets,
                    secs,
                    cpu_secs: None,
                    copies: copies(&hp),
                    background: 0.0,
                    others: None,
                    rtt: Some((num(&m, "rtt_p50_us"), num(&m, "rtt_p99_us"))),
                    line_rtt: [None; 2],
                },
                r.cmds,
            ))
        }
    }
}

/// txonly on side 0 into rxonly on side 1, measured over a window; both
/// endpoints are stopped once it closes.
fn one_way(mut r: Run<'_>, place: &Place, t: Timing) -> Result<(Sample, Vec<String>)> {
    // Long enough for the first stats line, the warm-up, the window and
    // the line that closes it (window::measure fails if the sender stops
    // inside the window).
    let run_secs = t.warm.ceil() + t.secs + 6.0;
    let mut rx = r.pmd(1, "rxonly", &place.rx, run_secs + 2.0, true)?;
    let mut tx = r.pmd(0, "txonly", &place.tx, run_secs, false)?;
    let hp_pid = r.hp.as_ref().expect("host-pair started").child.id();
    let pids = [hp_pid, rx.child.id(), tx.child.id()];
    let w = window::measure(
        &mut rx,
        &mut tx,
        &pids,
        window::sbnet_counts,
        t.warm,
        t.secs,
    )?;
    // Sender first, then the receiver. SIGTERM, not SIGINT: a shell that
    // starts the benchmark in the background makes its children ignore
    // SIGINT, and sbnet-testpmd installs no handler.
    tx.stop(Signal::SIGTERM, Duration::from_secs(3));
    rx.stop(Signal::SIGTERM, Duration::from_secs(3));
    let errors = window::sbnet_errors(&rx.read_log());
    if errors > 0 {
        bail!("{errors} integrity errors (see {})", rx.log.display());
    }
    let hp = r.host_counters()?;
    Ok((
        Sample {
            pps: w.pps(),
            packets: w.packets,
            secs: w.secs,
            cpu_secs: w.cpu_secs,
            copies: copies(&hp),
            background: 0.0,
            others: w.others,
            rtt: None,
            line_rtt: [None; 2],
        },
        r.cmds,
    ))
}
