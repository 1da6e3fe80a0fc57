//! Issue 12's sections: many links on one `host-pair serve --config`.
//!
//! *Links × threads*: 1 and 2 links × `--threads` 1 and 2, each link a
//! txonly → rxonly pair of sbnet-testpmd processes (64 B, zero-copy,
//! `--payload header`), measured over a window like the one-way rows
//! (crate::links_run). *Idle links*: 16 links, none connected, and 16 with
//! one idle connected pair: host-pair's CPU time over a few seconds.
//! This module holds the results, their JSON, the config file and the
//! report's section; crate::links_run starts the processes.

use crate::util::num;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// The (links, threads) configurations of the busy section, in report order.
pub const CONFIGS: [(usize, usize); 4] = [(1, 1), (1, 2), (2, 1), (2, 2)];

/// Frame size of the busy section.
pub const FRAME: usize = 64;

/// Links of the idle section.
pub const IDLE_LINKS: usize = 16;

/// Slots per link in the idle section (as in docs/many-links.md).
pub const IDLE_SLOTS: u32 = 256;

/// A `host-pair serve --config` file: `n` links named `l0`, `l1`, ...,
/// sockets `DIR/l<i>.<side>.sock`, every link with the same geometry.
pub fn config_toml(dir: &Path, n: usize, slots: u32, slot_size: u32) -> String {
    let mut s = format!("[defaults]\nslots = {slots}\nslot_size = {slot_size}\n");
    for i in 0..n {
        let _ = write!(
            s,
            "\n[[link]]\nname = \"{}\"\nsockets = [\"{}\", \"{}\"]\n",
            link_name(i),
            sock(dir, i, 0).display(),
            sock(dir, i, 1).display()
        );
    }
    s
}

/// The name of link `i` in [`config_toml`]'s file.
pub fn link_name(i: usize) -> String {
    format!("l{i}")
}

/// The socket of `side` of link `i` in [`config_toml`]'s file.
pub fn sock(dir: &Path, i: usize, side: usize) -> std::path::PathBuf {
    dir.join(format!("l{i}.{side}.sock"))
}

/// One link's counters in host-pair's `--stats-json` (`links[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkCounts {
    /// Frames host-pair delivered to side 1 (`sides[1].rx_packets`).
    pub delivered: u64,
    /// Data copies per packet sent (`tx_copied` / `tx_packets`, both sides).
    pub copies: Option<f64>,
    /// Frames sent zero-copy (`tx_zero_copy`, both sides). The link's
    /// `mode` is no evidence: at exit, with its clients gone, it is `Copy`.
    pub zero_copy: u64,
}

/// The counters of link `name` in a `--stats-json` document.
pub fn link_counts(stats: &Value, name: &str) -> Option<LinkCounts> {
    let l = stats
        .get("links")?
        .as_array()?
        .iter()
        .find(|l| l.get("name").and_then(Value::as_str) == Some(name))?;
    let sides = l.get("sides")?.as_array()?;
    let sum = |k: &str| sides.iter().map(|v| num(v, k)).sum::<f64>();
    let packets = sum("tx_packets");
    Some(LinkCounts {
        delivered: num(sides.get(1)?, "rx_packets") as u64,
        copies: (packets > 0.0).then(|| sum("tx_copied") / packets),
        zero_copy: sum("tx_zero_copy") as u64,
    })
}

/// CPU ticks over `secs` seconds as a percentage of one core.
pub fn cpu_percent(ticks: u64, secs: f64, tck: f64) -> f64 {
    if secs <= 0.0 || tck <= 0.0 {
        return 0.0;
    }
    ticks as f64 / tck / secs * 100.0
}

/// One measured window of a busy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BusyRun {
    /// Packets per second at each link's receiver, over its own window.
    pub per_link: Vec<f64>,
    /// Wall seconds between the two CPU samples (the windows' union).
    pub wall_secs: f64,
    /// CPU seconds of host-pair and every testpmd between the samples.
    pub cpu_secs: Option<f64>,
    /// Data copies per packet, all links (host-pair's counters).
    pub copies: Option<f64>,
    /// Share of the machine other programs used between the samples.
    pub others: Option<f64>,
}

impl BusyRun {
    /// Sum of the links' rates.
    pub fn aggregate(&self) -> f64 {
        self.per_link.iter().sum()
    }

    /// Packets per CPU-second: the aggregate rate over the CPUs the
    /// processes kept busy (CPU seconds per wall second).
    pub fn per_cpu_s(&self) -> Option<f64> {
        let c = self.cpu_secs.filter(|c| *c > 0.0)?;
        (self.wall_secs > 0.0).then(|| self.aggregate() * self.wall_secs / c)
    }

    /// CPUs kept busy on average.
    pub fn cpus(&self) -> Option<f64> {
        let c = self.cpu_secs?;
        (self.wall_secs > 0.0).then(|| c / self.wall_secs)
    }

    /// (largest - smallest) / largest of the per-link rates (0 with one link).
    pub fn spread(&self) -> f64 {
        let hi = self.per_link.iter().copied().fold(0.0, f64::max);
        let lo = self.per_link.iter().copied().fold(f64::INFINITY, f64::min);
        if hi > 0.0 {
            (hi - lo) / hi
        } else {
            0.0
        }
    }

    fn to_json(&self) -> Value {
        json!({"per_link_pps": self.per_link, "wall_s": self.wall_secs, "cpu_s": self.cpu_secs,
               "copies": self.copies, "others": self.others})
    }

    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            per_link: v
                .get("per_link_pps")?
                .as_array()?
                .iter()
                .filter_map(Value::as_f64)
                .collect(),
            wall_secs: v.get("wall_s")?.as_f64()?,
            cpu_secs: v.get("cpu_s").and_then(Value::as_f64),
            copies: v.get("copies").and_then(Value::as_f64),
            others: v.get("others").and_then(Value::as_f64),
        })
    }
}

/// Every run of one (links, threads) configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Busy {
    pub links: usize,
    pub threads: usize,
    pub runs: Vec<BusyRun>,
    pub error: Option<String>,
    /// The commands of the first run.
    pub commands: Vec<String>,
}

impl Busy {
    /// The run with the median aggregate (the lower one of two middles).
    pub fn median_run(&self) -> Option<&BusyRun> {
        let mut v: Vec<&BusyRun> = self.runs.iter().collect();
        v.sort_by(|a, b| a.aggregate().total_cmp(&b.aggregate()));
        v.get(v.len().checked_sub(1)? / 2).copied()
    }
}

/// One idle measurement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Idle {
    /// Links served.
    pub links: usize,
    /// One link has a connected idle pair of sbnet-testpmd processes.
    pub connected: bool,
    /// Seconds measured.
    pub secs: f64,
    /// host-pair's CPU ticks (utime + stime) over them.
    pub host_ticks: Option<u64>,
    /// The two idle testpmds' ticks over them (connected variant).
    pub pmd_ticks: Option<u64>,
    /// Clock ticks per second of the counts.
    pub tck: f64,
    pub error: Option<String>,
    pub commands: Vec<String>,
}

impl Idle {
    /// host-pair's share of one core, in percent.
    pub fn host_percent(&self) -> Option<f64> {
        Some(cpu_percent(self.host_ticks?, self.secs, self.tck))
    }
}

/// Both sections' results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Links {
    pub busy: Vec<Busy>,
    pub idle: Vec<Idle>,
    /// Window and warm-up of the busy runs, seconds.
    pub secs: f64,
    pub warm: f64,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Links {
    pub fn to_json(&self) -> Value {
        json!({
            "duration_s": self.secs,
            "warm_up_s": self.warm,
            "busy": self.busy.iter().map(|b| json!({
                "links": b.links, "threads": b.threads, "error": b.error, "commands": b.commands,
                "runs": b.runs.iter().map(BusyRun::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(|i| json!({
                "links": i.links, "connected": i.connected, "secs": i.secs, "host_ticks": i.host_ticks,
                "pmd_ticks": i.pmd_ticks, "tck": i.tck, "error": i.error, "commands": i.commands,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        let busy = v
            .get("busy")?
            .as_array()?
            .iter()
            .map(|b| Busy {
                links: num(b, "links") as usize,
                threads: num(b, "threads") as usize,
                runs: b["runs"]
                    .as_array()
                    .map(|r| r.iter().filter_map(BusyRun::from_json).collect())
                    .unwrap_or_default(),
                error: b["error"].as_str().map(str::to_string),
                commands: strings(&b["commands"]),
            })
            .collect();
        let idle = v
            .get("idle")?
            .as_array()?
            .iter()
            .map(|i| Idle {
                links: num(i, "links") as usize,
                connected: i["connected"].as_bool().unwrap_or(false),
                secs: num(i, "secs"),
                host_ticks: i["host_ticks"].as_u64(),
                pmd_ticks: i["pmd_ticks"].as_u64(),
                tck: num(i, "tck"),
                error: i["error"].as_str().map(str::to_string),
                commands: strings(&i["commands"]),
            })
            .collect();
        Some(Self {
            busy,
            idle,
            secs: num(v, "duration_s"),
            warm: num(v, "warm_up_s"),
        })
    }

    fn busy(&self, links: usize, threads: usize) -> Option<&Busy> {
        self.busy
            .iter()
            .find(|b| b.links == links && b.threads == threads)
    }

    /// The report's section.
    pub fn markdown(&self, w: &mut String) {
        let _ = writeln!(w, "## Many links (issue 12)\n");
        let _ = writeln!(
            w,
            "One `host-pair serve --config` with 1 or 2 links and `--threads` 1 or 2; each link carries a \
             {FRAME} B zero-copy flow (`sbnet-testpmd --mode txonly --payload header` on side 0 into `rxonly` \
             on side 1). host-pair on the host CPU, every testpmd on the endpoints' CPU, as in the one-way rows. \
             Each receiver's rate is measured over its own window of {} s after {} s of traffic (its stats \
             lines, as in the one-way rows); the CPU time of host-pair and every testpmd is sampled once all \
             windows have opened and again once all have closed. Per link and aggregate: the run with the \
             median aggregate of {} run(s); *spread* = (fastest link − slowest) / fastest; *× 1×1* = the \
             aggregate over the 1 link / 1 thread aggregate of this same run; *others* = the share of the \
             whole machine other programs used between the CPU samples.\n",
            self.secs,
            self.warm,
            self.busy.iter().map(|b| b.runs.len()).max().unwrap_or(0)
        );
        let _ = writeln!(
            w,
            "| links × threads | per link | aggregate | spread | × 1×1 | packets per CPU-second (CPUs) | copies/packet | others | runs (aggregate) |\n|---|---|---|---|---|---|---|---|---|"
        );
        let base = self
            .busy(1, 1)
            .and_then(Busy::median_run)
            .map(BusyRun::aggregate);
        for b in &self.busy {
            let Some(r) = b.median_run() else {
                let e = b.error.as_deref().unwrap_or("not run");
                let e = e.lines().next().unwrap_or("");
                let _ = writeln!(
                    w,
                    "| {} × {} | failed: {e} | | | | | | | |",
                    b.links, b.threads
                );
                continue;
            };
            let mpps = |p: f64| format!("{:.2}", p / 1e6);
            let _ = writeln!(
                w,
                "| {} × {} | {} Mpps | **{} Mpps** | {} | {} | {} | {} | {} | {} |",
                b.links,
                b.threads,
                r.per_link
                    .iter()
                    .map(|&p| mpps(p))
                    .collect::<Vec<_>>()
                    .join(" + "),
                mpps(r.aggregate()),
                if b.links > 1 {
                    format!("{:.0}%", r.spread() * 100.0)
                } else {
                    "—".into()
                },
                base.filter(|&x| x > 0.0)
                    .map_or("—".into(), |x| format!("{:.2}×", r.aggregate() / x)),
                r.per_cpu_s()
                    .zip(r.cpus())
                    .map_or("—".into(), |(p, c)| format!(
                        "{:.2} M/CPU-s ({c:.2})",
                        p / 1e6
                    )),
                r.copies.map_or("—".into(), |c| format!("{c:.3}")),
                r.others
                    .map_or("—".into(), |o| format!("{:.0}%", o * 100.0)),
                b.runs
                    .iter()
                    .map(|r| mpps(r.aggregate()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "**Idle links.** `host-pair serve --config` with {IDLE_LINKS} links of {IDLE_SLOTS} slots, `--poll \
             adaptive`, one switch thread: host-pair's CPU time (utime + stime of all its threads, \
             `/proc/PID/stat`) over the measured seconds, as a share of one core. The connected variant has \
             two `sbnet-testpmd --mode rxonly` connected to one link and sending nothing; their own CPU time \
             is listed apart (an idle testpmd polls and yields, so it is busy whenever its CPU is otherwise \
             free).\n"
        );
        let _ = writeln!(
            w,
            "| links | seconds | host-pair CPU | share of one core | the idle testpmds |\n|---|---|---|---|---|"
        );
        for i in &self.idle {
            let what = if i.connected {
                format!("{}, one idle connected pair", i.links)
            } else {
                format!("{}, none connected", i.links)
            };
            match (i.host_ticks, i.host_percent()) {
                (Some(t), Some(p)) => {
                    let _ = writeln!(
                        w,
                        "| {what} | {:.0} | {:.0} ms ({t} ticks) | {p:.2}% | {} |",
                        i.secs,
                        t as f64 / i.tck.max(1.0) * 1e3,
                        i.pmd_ticks.map_or("—".into(), |p| format!(
                            "{:.0}% of one core",
                            cpu_percent(p, i.secs, i.tck)
                        ))
                    );
                }
                _ => {
                    let e = i.error.as_deref().unwrap_or("not measured");
                    let _ = writeln!(
                        w,
                        "| {what} | | failed: {} | | |",
                        e.lines().next().unwrap_or("")
                    );
                }
            }
        }
        let _ = writeln!(w);
        let cmds: Vec<&String> = self
            .busy
            .iter()
            .flat_map(|b| &b.commands)
            .chain(self.idle.iter().flat_map(|i| &i.commands))
            .collect();
        if !cmds.is_empty() {
            let _ = writeln!(
                w,
                "<details><summary>Commands of the many-links runs</summary>\n\n```sh"
            );
            for c in cmds {
                let _ = writeln!(w, "{}", crate::report::tidy(c));
            }
            let _ = writeln!(w, "```\n\n</details>\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_every_link_with_unique_sockets() {
        let t = config_toml(Path::new("/w"), 2, 1024, 2048);
        assert_eq!(
            t,
            "[defaults]\nslots = 1024\nslot_size = 2048\n\n\
             [[link]]\nname = \"l0\"\nsockets = [\"/w/l0.0.sock\", \"/w/l0.1.sock\"]\n\n\
             [[link]]\nname = \"l1\"\nsockets = [\"/w/l1.0.sock\", \"/w/l1.1.sock\"]\n"
        );
        let t16 = config_toml(Path::new("/w"), 16, 256, 2048);
        assert_eq!(t16.matches("[[link]]").count(), 16);
        assert!(t16.contains("\"/w/l15.1.sock\""));
    }

    #[test]
    fn per_link_counters_come_from_the_named_link() {
        let j = json!({"links": [
            {"name": "l0", "mode": "Copy", "sides": [
                {"tx_packets": 100, "rx_packets": 0, "tx_copied": 0, "tx_zero_copy": 100},
                {"tx_packets": 0, "rx_packets": 98, "tx_copied": 0}]},
            {"name": "l1", "mode": "Copy", "sides": [
                {"tx_packets": 10, "rx_packets": 0, "tx_copied": 10},
                {"tx_packets": 0, "rx_packets": 7, "tx_copied": 0}]}]});
        assert_eq!(
            link_counts(&j, "l0"),
            Some(LinkCounts {
                delivered: 98,
                copies: Some(0.0),
                zero_copy: 100
            })
        );
        let l1 = link_counts(&j, "l1").unwrap();
        assert_eq!((l1.delivered, l1.copies, l1.zero_copy), (7, Some(1.0), 0));
        assert_eq!(link_counts(&j, "l2"), None);
        assert_eq!(link_counts(&json!({"sides": []}), "l0"), None);
    }

    #[test]
    fn cpu_share_of_one_core() {
        assert!((cpu_percent(7, 10.0, 100.0) - 0.7).abs() < 1e-9);
        assert!((cpu_percent(1000, 10.0, 100.0) - 100.0).abs() < 1e-9);
        assert_eq!(cpu_percent(5, 0.0, 100.0), 0.0);
    }

    fn run(per_link: &[f64], cpu: f64) -> BusyRun {
        BusyRun {
            per_link: per_link.to_vec(),
            wall_secs: 2.0,
            cpu_secs: Some(cpu),
            copies: Some(0.0),
            others: None,
        }
    }

    #[test]
    fn aggregate_spread_per_cpu_and_median() {
        let r = run(&[1e6, 0.8e6], 4.0);
        assert!((r.aggregate() - 1.8e6).abs() < 1e-6);
        assert!((r.spread() - 0.2).abs() < 1e-9);
        // 1.8 Mpps on 2 CPUs busy.
        assert!((r.per_cpu_s().unwrap() - 0.9e6).abs() < 1e-6);
        assert!((r.cpus().unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(run(&[1e6], 1.0).spread(), 0.0);
        let b = Busy {
            links: 2,
            threads: 1,
            runs: vec![run(&[3.0], 1.0), run(&[1.0], 1.0), run(&[2.0], 1.0)],
            ..Busy::default()
        };
        assert_eq!(b.median_run().unwrap().aggregate(), 2.0);
        assert!(Busy::default().median_run().is_none());
    }

    #[test]
    fn json_round_trip_and_report() {
        let l = Links {
            busy: vec![
                Busy {
                    links: 1,
                    threads: 1,
                    runs: vec![run(&[2e6], 4.0)],
                    commands: vec!["host-pair serve".into()],
                    ..Busy::default()
                },
                Busy {
                    links: 2,
                    threads: 2,
                    runs: vec![run(&[1e6, 0.5e6], 4.0)],
                    ..Busy::default()
                },
                Busy {
                    links: 2,
                    threads: 1,
                    error: Some("boom\nmore".into()),
                    ..Busy::default()
                },
            ],
            idle: vec![Idle {
                links: 16,
                secs: 10.0,
                host_ticks: Some(7),
                tck: 100.0,
                ..Idle::default()
            }],
            secs: 2.0,
            warm: 1.0,
        };
        let back = Links::from_json(&l.to_json()).unwrap();
        assert_eq!(back, l);
        let mut md = String::new();
        l.markdown(&mut md);
        assert!(
            md.contains("| 2 × 2 | 1.00 + 0.50 Mpps | **1.50 Mpps** | 50% | 0.75× |"),
            "{md}"
        );
        assert!(md.contains("| 2 × 1 | failed: boom |"), "{md}");
        assert!(
            md.contains("| 16, none connected | 10 | 70 ms (7 ticks) | 0.70% |"),
            "{md}"
        );
    }
}
