//! Runs issue 12's sections (crate::links): one `host-pair serve --config`
//! with several links, and a testpmd pair per busy link.

use crate::links::{self, Busy, BusyRun, Idle, Links};
use crate::model::{Place, Timing};
use crate::sbnet::{self, Bins};
use crate::util::{self, Proc};
use crate::window;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Starts `host-pair serve --config` with `n` links and waits for every socket.
fn host_pair(
    b: &Bins,
    dir: &Path,
    place: &Place,
    n: usize,
    threads: usize,
    slots: u32,
) -> Result<Proc> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cfg = dir.join("links.toml");
    let slot_size = sbnet::slot_size(links::FRAME);
    std::fs::write(&cfg, links::config_toml(dir, n, slots, slot_size))?;
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        s(&cfg),
        "--threads".into(),
        threads.to_string(),
    ];
    let mut hp = sbnet::host_pair(b, dir, place, args)?;
    for i in 0..n {
        for side in 0..2 {
            util::wait_for(&links::sock(dir, i, side), Duration::from_secs(10), &mut hp)?;
        }
    }
    Ok(hp)
}

/// Where a run's testpmds go: the binaries, the run's directory, the placement.
#[derive(Clone, Copy)]
struct At<'a> {
    b: &'a Bins,
    dir: &'a Path,
    place: &'a Place,
}

/// Starts an sbnet-testpmd on `side` of link `i`; `stats`: a stats line
/// every second.
fn pmd(at: At<'_>, i: usize, side: usize, mode: &str, secs: f64, stats: bool) -> Result<Proc> {
    let (b, dir, place) = (at.b, at.dir, at.place);
    let args: Vec<String> = vec![
        "--socket".into(),
        s(&links::sock(dir, i, side)),
        "--mode".into(),
        mode.into(),
        "--frame-size".into(),
        links::FRAME.to_string(),
        "--duration".into(),
        format!("{secs}"),
        "--payload".into(),
        "header".into(),
        "--idle".into(),
        place.idle.clone(),
        "--idle-timeout".into(),
        format!("{}", secs + 30.0),
        "--stats-interval".into(),
        if stats { "1" } else { "0" }.into(),
    ];
    let cpus = if side == 0 { &place.tx } else { &place.rx };
    let name = format!("{}-{side}-{mode}", links::link_name(i));
    util::spawn(
        &format!("sbnet-testpmd ({name})"),
        cpus,
        &b.testpmd,
        &args,
        &dir.join(format!("{name}.log")),
    )
}

/// For every receiver: the count and moment of the first stats line that
/// appears after this call, at or after `not_before[i]`, with a count of
/// at least `min`. All logs are polled together every 2 ms, so each line's
/// moment is when it appeared, whatever the order.
fn fresh_lines(
    rxs: &mut [Proc],
    txs: &mut [Proc],
    not_before: &[Instant],
    min: u64,
    t: Duration,
) -> Result<Vec<(u64, Instant)>> {
    let mut seen: Vec<usize> = rxs
        .iter()
        .map(|r| window::sbnet_counts(&r.read_log()).len())
        .collect();
    let mut got: Vec<Option<(u64, Instant)>> = vec![None; rxs.len()];
    let end = Instant::now() + t;
    for round in 0u64.. {
        let now = Instant::now();
        for (i, r) in rxs.iter().enumerate() {
            if got[i].is_some() {
                continue;
            }
            let v = window::sbnet_counts(&r.read_log());
            if v.len() > seen[i] {
                seen[i] = v.len();
                let c = v[v.len() - 1];
                if now >= not_before[i] && c >= min {
                    got[i] = Some((c, now));
                }
            }
        }
        if got.iter().all(Option::is_some) {
            break;
        }
        if round % 50 == 0 {
            for p in rxs.iter_mut().chain(txs.iter_mut()) {
                p.check_alive()?;
            }
        }
        if now > end {
            let i = got.iter().position(Option::is_none).unwrap_or(0);
            bail!(
                "{} printed no fitting stats line within {t:?}; last lines of {}:\n{}",
                rxs[i].name,
                rxs[i].log.display(),
                rxs[i].tail(12)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(got.into_iter().flatten().collect())
}

/// One window of `links` busy links on `threads` switch threads.
fn busy_once(
    b: &Bins,
    dir: &Path,
    place: &Place,
    n: usize,
    threads: usize,
    t: Timing,
) -> Result<(BusyRun, Vec<String>)> {
    let mut hp = host_pair(b, dir, place, n, threads, sbnet::SLOTS)?;
    let at = At { b, dir, place };
    let mut cmds = vec![hp.cmdline.clone()];
    let run_secs = t.warm.ceil() + t.secs + 8.0 + n as f64;
    let mut rxs = Vec::new();
    let mut txs = Vec::new();
    for i in 0..n {
        rxs.push(pmd(at, i, 1, "rxonly", run_secs + 2.0, true)?);
    }
    for i in 0..n {
        txs.push(pmd(at, i, 0, "txonly", run_secs, false)?);
    }
    cmds.extend(rxs.iter().chain(&txs).map(|p| p.cmdline.clone()));
    let mut pids = vec![hp.child.id()];
    pids.extend(rxs.iter().chain(&txs).map(|p| p.child.id()));
    let now = |n| vec![Instant::now(); n];
    // Traffic on every link, then the warm-up.
    fresh_lines(&mut rxs, &mut txs, &now(n), 1, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs_f64(t.warm.max(0.0)));
    let open = fresh_lines(&mut rxs, &mut txs, &now(n), 0, Duration::from_secs(10))?;
    let (cpu0, all0, w0) = (
        util::cpu_ticks_all(&pids),
        util::cpu_jiffies(),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64((t.secs - 0.5).max(0.0)));
    let until: Vec<Instant> = open
        .iter()
        .map(|(_, t0)| *t0 + Duration::from_secs_f64(t.secs))
        .collect();
    let close = fresh_lines(
        &mut rxs,
        &mut txs,
        &until,
        0,
        Duration::from_secs_f64(t.secs + 10.0),
    )?;
    let (cpu1, all1, w1) = (
        util::cpu_ticks_all(&pids),
        util::cpu_jiffies(),
        Instant::now(),
    );
    for p in txs.iter_mut() {
        if p.child.try_wait()?.is_some() {
            bail!("{} stopped inside the measured window", p.name);
        }
    }
    let mut per_link = Vec::new();
    for (i, ((c0, t0), (c1, t1))) in open.iter().zip(&close).enumerate() {
        if c1 <= c0 {
            bail!("link {} counted nothing in the window", links::link_name(i));
        }
        per_link.push((c1 - c0) as f64 / t1.duration_since(*t0).as_secs_f64());
    }
    for p in txs.iter_mut().chain(rxs.iter_mut()) {
        p.stop(Signal::SIGTERM, Duration::from_secs(3));
    }
    for r in &rxs {
        let e = window::sbnet_errors(&r.read_log());
        if e > 0 {
            bail!("{e} integrity errors (see {})", r.log.display());
        }
    }
    hp.signal(Signal::SIGTERM);
    if !hp.wait_timeout(Duration::from_secs(10))? {
        bail!("host-pair did not stop within 10 s of SIGTERM");
    }
    let stats = util::json(&dir.join("host-pair.json"))?;
    let mut copies = Vec::new();
    for i in 0..n {
        let c = links::link_counts(&stats, &links::link_name(i)).with_context(|| {
            format!(
                "link {} missing from host-pair's stats",
                links::link_name(i)
            )
        })?;
        if c.zero_copy == 0 || c.delivered == 0 {
            bail!(
                "link {}: not zero-copy or nothing delivered: {c:?}",
                links::link_name(i)
            );
        }
        copies.extend(c.copies);
    }
    let ticks = match (cpu0, cpu1) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    let (busy, total) = (all1.0.saturating_sub(all0.0), all1.1.saturating_sub(all0.1));
    Ok((
        BusyRun {
            per_link,
            wall_secs: w1.duration_since(w0).as_secs_f64(),
            cpu_secs: ticks.map(|t| t as f64 / util::clk_tck()),
            copies: (!copies.is_empty()).then(|| copies.iter().sum::<f64>() / copies.len() as f64),
            others: ticks
                .filter(|_| total > 0)
                .map(|t| (busy.saturating_sub(t) as f64 / total as f64).min(1.0)),
        },
        cmds,
    ))
}

/// One idle measurement: 16 links, `connected` = an idle rxonly pair on link 0.
fn idle_once(b: &Bins, dir: &Path, place: &Place, connected: bool, secs: f64) -> Result<Idle> {
    let mut hp = host_pair(b, dir, place, links::IDLE_LINKS, 1, links::IDLE_SLOTS)?;
    let at = At { b, dir, place };
    let mut cmds = vec![hp.cmdline.clone()];
    let mut pmds = Vec::new();
    if connected {
        for side in 0..2 {
            pmds.push(pmd(at, 0, side, "rxonly", secs + 30.0, false)?);
        }
        cmds.extend(pmds.iter().map(|p| p.cmdline.clone()));
        for p in pmds.iter_mut() {
            p.wait_log(" side ", Duration::from_secs(20))?;
        }
    }
    // Settle: start-up and the pairing are outside the measurement.
    std::thread::sleep(Duration::from_secs(2));
    let pmd_pids: Vec<u32> = pmds.iter().map(|p| p.child.id()).collect();
    let (h0, p0, t0) = (
        util::cpu_ticks(hp.child.id()),
        util::cpu_ticks_all(&pmd_pids),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (h1, p1, t1) = (
        util::cpu_ticks(hp.child.id()),
        util::cpu_ticks_all(&pmd_pids),
        Instant::now(),
    );
    hp.check_alive()?;
    for p in pmds.iter_mut() {
        p.check_alive()?;
        p.stop(Signal::SIGTERM, Duration::from_secs(3));
    }
    hp.stop(Signal::SIGTERM, Duration::from_secs(10));
    let diff = |a: Option<u64>, b: Option<u64>| a.zip(b).and_then(|(a, b)| b.checked_sub(a));
    Ok(Idle {
        links: links::IDLE_LINKS,
        connected,
        secs: t1.duration_since(t0).as_secs_f64(),
        host_ticks: diff(h0, h1),
        pmd_ticks: if connected { diff(p0, p1) } else { None },
        tck: util::clk_tck(),
        error: None,
        commands: cmds,
    })
}

/// Seconds both sections take, roughly.
pub fn estimate(t: Timing, repeats: usize, idle_secs: f64) -> f64 {
    let busy = links::CONFIGS.len() as f64 * (t.warm.ceil() + t.secs + 5.0);
    busy * repeats as f64 + 2.0 * (idle_secs + 4.0)
}

/// Both sections: every configuration `repeats` times (the order turning
/// every repeat), then the two idle measurements of `idle_secs`; each
/// run first waits (up to 20 s) for other programs to use less than
/// `max_background` of the machine.
pub fn run_all(
    b: &Bins,
    work: &Path,
    place: &Place,
    t: Timing,
    repeats: usize,
    idle_secs: f64,
    max_background: f64,
) -> Links {
    let mut out = Links {
        busy: links::CONFIGS
            .iter()
            .map(|&(links, threads)| Busy {
                links,
                threads,
                ..Busy::default()
            })
            .collect(),
        secs: t.secs,
        warm: t.warm,
        ..Links::default()
    };
    let total = repeats * links::CONFIGS.len();
    let mut done = 0;
    for rep in 0..repeats {
        for k in 0..links::CONFIGS.len() {
            let k = (k + rep) % links::CONFIGS.len();
            let busy = &mut out.busy[k];
            util::wait_quiet(max_background, Duration::from_secs(20));
            let dir = work.join(format!("links-{}x{}-{rep}", busy.links, busy.threads));
            let line = match busy_once(b, &dir, place, busy.links, busy.threads, t) {
                Ok((r, cmds)) => {
                    let txt = format!(
                        "{:.3} Mpps ({}), {} Mpkt per CPU-s",
                        r.aggregate() / 1e6,
                        r.per_link
                            .iter()
                            .map(|p| format!("{:.3}", p / 1e6))
                            .collect::<Vec<_>>()
                            .join(" + "),
                        r.per_cpu_s()
                            .map_or("?".into(), |v| format!("{:.3}", v / 1e6))
                    );
                    if busy.commands.is_empty() {
                        busy.commands = cmds;
                    }
                    busy.runs.push(r);
                    txt
                }
                Err(e) => util::failed(&e, &mut busy.error),
            };
            done += 1;
            eprintln!(
                "[links {done}/{total}] {} link(s) x {} thread(s) run {} | {line}",
                busy.links,
                busy.threads,
                rep + 1
            );
        }
    }
    for connected in [false, true] {
        util::wait_quiet(max_background, Duration::from_secs(20));
        let dir = work.join(format!(
            "links-idle-{}",
            if connected { "connected" } else { "none" }
        ));
        let i = idle_once(b, &dir, place, connected, idle_secs).unwrap_or_else(|e| Idle {
            links: links::IDLE_LINKS,
            connected,
            secs: idle_secs,
            tck: util::clk_tck(),
            error: Some(format!("{e:#}")),
            ..Idle::default()
        });
        eprintln!(
            "[links idle] {} links, {} | {}",
            i.links,
            if connected {
                "one idle pair connected"
            } else {
                "none connected"
            },
            i.host_percent().map_or_else(
                || format!("FAILED: {}", i.error.as_deref().unwrap_or("")),
                |p| format!("host-pair {p:.2}% of one core")
            )
        );
        out.idle.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in receiver: prints a stats line with count `k` every
    /// `period` seconds, `k` = 1, 2, ...
    fn fake_rx(dir: &Path, name: &str, period: &str) -> Proc {
        let script = format!(
            "k=0; while true; do k=$((k+1)); echo \"rx 1 pps | total rx $k tx 0 errors 0\"; sleep {period}; done"
        );
        util::spawn(
            name,
            "0",
            Path::new("/bin/sh"),
            &["-c".into(), script],
            &dir.join(format!("{name}.log")),
        )
        .expect("sh")
    }

    #[test]
    fn fresh_lines_waits_for_new_lines_of_every_receiver() {
        let dir = std::env::temp_dir().join(format!("sbnet-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rxs = vec![fake_rx(&dir, "a", "0.05"), fake_rx(&dir, "b", "0.2")];
        let now = Instant::now();
        // Count at least 3 on both: b needs about 0.4 s.
        let got = fresh_lines(&mut rxs, &mut [], &[now, now], 3, Duration::from_secs(10)).unwrap();
        assert!(
            got.iter().all(|(c, _)| *c >= 3),
            "{:?}",
            got.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        assert!(got[1].1.duration_since(now) >= Duration::from_millis(300));
        // Not before a moment: a's line comes at or after it.
        let later = Instant::now() + Duration::from_millis(300);
        let got2 =
            fresh_lines(&mut rxs, &mut [], &[later, now], 0, Duration::from_secs(10)).unwrap();
        assert!(got2[0].1 >= later);
        assert!(got2[0].0 > got[0].0 && got2[1].0 > got[1].0);
        // A receiver that exits fails the wait instead of hanging it.
        rxs[1].stop(Signal::SIGKILL, Duration::from_secs(1));
        assert!(fresh_lines(
            &mut rxs,
            &mut [],
            &[now, now],
            u64::MAX,
            Duration::from_secs(10)
        )
        .is_err());
        drop(rxs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
