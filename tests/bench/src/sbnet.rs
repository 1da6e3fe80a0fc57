//! sbnet runs: `host-pair` plus two `sbnet-testpmd` processes in
//! host-process mode (each its own vfio-user client).

use crate::model::{Place, Sample};
use crate::util::{self, num, Proc};
use anyhow::{bail, Context, Result};
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
    hp: Option<Proc>,
    cmds: Vec<String>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl<'a> Run<'a> {
    fn start(b: &'a Bins, dir: &Path, frame: usize, place: &Place, poll: &str) -> Result<Self> {
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
            "--poll".into(),
            poll.into(),
            "--stats-json".into(),
            s(&dir.join("host-pair.json")),
        ];
        let mut hp = util::spawn(
            "host-pair",
            &place.host,
            &b.host_pair,
            &args,
            &dir.join("host-pair.log"),
        )?;
        for p in &socks {
            util::wait_for(p, Duration::from_secs(10), &mut hp)?;
        }
        let cmds = vec![hp.cmdline.clone()];
        Ok(Self {
            b,
            dir: dir.to_path_buf(),
            hp: Some(hp),
            cmds,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn pmd(
        &mut self,
        side: usize,
        mode: &str,
        cpus: &str,
        frame: usize,
        secs: f64,
        payload: &str,
        classic: bool,
        idle: &str,
    ) -> Result<Proc> {
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
            "0".into(),
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
        hp.signal(nix::sys::signal::Signal::SIGTERM);
        if !hp.wait_timeout(Duration::from_secs(10))? {
            bail!("host-pair did not stop within 10 s of SIGTERM");
        }
        util::json(&self.dir.join("host-pair.json"))
    }
}

/// Data copies per delivered packet, from host-pair's counters.
fn copies(hp: &serde_json::Value) -> Option<f64> {
    let sides = hp.get("sides")?.as_array()?;
    let sum = |k: &str| sides.iter().map(|v| num(v, k)).sum::<f64>();
    let packets = sum("tx_packets");
    (packets > 0.0).then(|| sum("tx_copied") / packets)
}

/// One run of `flow` at `frame` bytes for `secs` seconds.
#[allow(clippy::too_many_arguments)]
pub fn run(
    b: &Bins,
    dir: &Path,
    place: &Place,
    flow: Flow,
    frame: usize,
    secs: f64,
    payload: &str,
    classic: bool,
) -> Result<(Sample, Vec<String>)> {
    let mut r = Run::start(b, dir, frame, place, &place.poll)?;
    let limit = Duration::from_secs_f64(secs + 45.0);
    let (rj, pj) = match flow {
        Flow::OneWay => {
            let mut rx = r.pmd(
                1,
                "rxonly",
                &place.rx,
                frame,
                secs,
                payload,
                classic,
                &place.idle,
            )?;
            let mut tx = r.pmd(
                0,
                "txonly",
                &place.tx,
                frame,
                secs,
                payload,
                classic,
                &place.idle,
            )?;
            tx.finish(limit)?;
            rx.finish(limit)?;
            (r.dir.join("rxonly.json"), r.dir.join("txonly.json"))
        }
        Flow::PingPong => {
            // The echo side outlives the pinger, so the last round trip completes.
            let mut echo = r.pmd(
                1,
                "io",
                &place.rx,
                frame,
                secs + 3.0,
                payload,
                classic,
                &place.idle,
            )?;
            let mut ping = r.pmd(
                0,
                "pingpong",
                &place.tx,
                frame,
                secs,
                payload,
                classic,
                &place.idle,
            )?;
            ping.finish(limit)?;
            echo.finish(limit)?;
            (r.dir.join("pingpong.json"), r.dir.join("io.json"))
        }
    };
    let hp = r.host_counters()?;
    let m = util::json(&rj)?;
    let _peer = util::json(&pj)?;
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
    let rtt = (flow == Flow::PingPong).then(|| (num(&m, "rtt_p50_us"), num(&m, "rtt_p99_us")));
    Ok((
        Sample {
            pps: packets as f64 / secs,
            packets,
            secs,
            copies: copies(&hp),
            background: 0.0,
            rtt,
        },
        r.cmds,
    ))
}
