//! docs/benchmarks.md.

use crate::model::{Cell, Place, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the report needs.
pub struct Report<'a> {
    pub cells: &'a [Cell],
    pub sizes: &'a [usize],
    pub place: &'a Place,
    pub machine: String,
    pub quick: bool,
    pub secs: f64,
    pub warm: f64,
    pub repeats: usize,
    pub started: String,
    pub wall_secs: f64,
    pub invocation: String,
    pub micro: &'a [Micro],
    pub notes: Option<String>,
    pub charts: Vec<PathBuf>,
    pub dpdk_note: Option<String>,
    pub max_background: f64,
    /// Issue 12's many-links sections, when they ran.
    pub links: Option<&'a crate::links::Links>,
}

/// One criterion result.
pub struct Micro {
    pub id: String,
    /// Median nanoseconds per element (packet) or per iteration.
    pub ns: f64,
    /// Elements per iteration (packets), or bytes for a byte throughput.
    pub per: Per,
    pub lo: f64,
    pub hi: f64,
}

pub enum Per {
    Elements(u64),
    Bytes(u64),
    Iter,
}

impl Micro {
    pub fn to_json(&self) -> serde_json::Value {
        let (kind, n) = match self.per {
            Per::Elements(n) => ("elements", n),
            Per::Bytes(n) => ("bytes", n),
            Per::Iter => ("iter", 1),
        };
        serde_json::json!({"id": self.id, "ns": self.ns, "lo": self.lo, "hi": self.hi, "per": kind, "n": n})
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let n = v.get("n")?.as_u64()?;
        Some(Self {
            id: v.get("id")?.as_str()?.to_string(),
            ns: v.get("ns")?.as_f64()?,
            lo: v.get("lo")?.as_f64()?,
            hi: v.get("hi")?.as_f64()?,
            per: match v.get("per")?.as_str()? {
                "elements" => Per::Elements(n),
                "bytes" => Per::Bytes(n),
                _ => Per::Iter,
            },
        })
    }
}

/// Reads criterion's `*/*/new/{benchmark,estimates}.json` under `dir`.
pub fn read_criterion(dir: &Path) -> Vec<Micro> {
    let mut out = Vec::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return out;
    };
    for g in groups.flatten() {
        let Ok(ids) = std::fs::read_dir(g.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let new = id.path().join("new");
            let (Ok(b), Ok(e)) = (
                crate::util::json(&new.join("benchmark.json")),
                crate::util::json(&new.join("estimates.json")),
            ) else {
                continue;
            };
            let full = b
                .get("full_id")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string();
            let per = match b.get("throughput") {
                Some(t) if t.get("Elements").is_some() => {
                    Per::Elements(t["Elements"].as_u64().unwrap_or(1))
                }
                Some(t) if t.get("Bytes").is_some() => Per::Bytes(t["Bytes"].as_u64().unwrap_or(1)),
                _ => Per::Iter,
            };
            let med = &e["median"];
            let div = match per {
                Per::Elements(n) => n as f64,
                _ => 1.0,
            };
            let ci = &med["confidence_interval"];
            out.push(Micro {
                id: full,
                ns: med["point_estimate"].as_f64().unwrap_or(0.0) / div,
                lo: ci["lower_bound"].as_f64().unwrap_or(0.0) / div,
                hi: ci["upper_bound"].as_f64().unwrap_or(0.0) / div,
                per,
            });
        }
    }
    out.sort_by_key(|m| natural(&m.id));
    out
}

fn natural(s: &str) -> (String, u64) {
    match s.rsplit_once('/') {
        Some((g, n)) => (g.to_string(), n.trim_end_matches('B').parse().unwrap_or(0)),
        None => (s.to_string(), 0),
    }
}

fn mpps(p: f64) -> String {
    if p >= 1e6 {
        format!("{:.2} Mpps", p / 1e6)
    } else {
        format!("{:.0} kpps", p / 1e3)
    }
}

/// What a cell without a figure shows.
fn missing(c: Option<&Cell>) -> String {
    match c.and_then(|c| c.error.as_deref()) {
        Some(e) if e.starts_with("n/a") => "n/a".into(),
        Some(_) => "failed".into(),
        None => "—".into(),
    }
}

fn per_cpu(p: f64) -> String {
    if p >= 1e6 {
        format!("{:.2} M/CPU-s", p / 1e6)
    } else {
        format!("{:.0} k/CPU-s", p / 1e3)
    }
}

fn gbps(g: f64) -> String {
    format!("{g:.2} Gbit/s")
}

fn size(f: usize) -> String {
    if f >= 1024 && f.is_multiple_of(1024) {
        format!("{f} B ({} KiB)", f / 1024)
    } else {
        format!("{f} B")
    }
}

impl Report<'_> {
    fn cell(&self, s: System, f: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.system == s && c.frame == f)
    }

    fn median(&self, s: System, f: usize) -> Option<f64> {
        self.cell(s, f).and_then(Cell::median)
    }

    fn ratio(&self, a: System, b: System, f: usize) -> Option<f64> {
        Some(self.median(a, f)? / self.median(b, f)?)
    }

    fn short(&self, s: System, f: usize) -> String {
        match self.cell(s, f) {
            Some(c) if c.median().is_some() => {
                let m = c.median().unwrap();
                format!("{} · {}", mpps(m), gbps(c.gbps().unwrap_or(0.0)))
            }
            c => missing(c),
        }
    }

    fn micro(&self, id: &str) -> Option<&Micro> {
        self.micro.iter().find(|m| m.id == id)
    }

    /// Issue 11's rows of the targets table.
    fn targets_11(&self, w: &mut String) {
        let yes = |ok: bool| if ok { "yes" } else { "**no**" };
        let row = |w: &mut String, what: &str, v: Option<f64>, min: f64, unit: &str| {
            let _ = writeln!(
                w,
                "| {what} | {} | {} |",
                v.map_or("—".into(), |r| format!("{r:.2}{unit}")),
                v.map_or("?", |r| yes(r >= min))
            );
        };
        let (zc, cl, vh) = (System::SbnetZc, System::SbnetClassic, System::Vhost);
        if self.sizes.contains(&64) {
            row(
                w,
                "zero-copy ≥ 1.5× sbnet classic at 64 B",
                self.ratio(zc, cl, 64),
                1.5,
                "×",
            );
            row(
                w,
                "zero-copy ≥ 2× DPDK vhost path at 64 B",
                self.ratio(zc, vh, 64),
                2.0,
                "×",
            );
        }
        if self.sizes.contains(&1500) {
            let v = self.ratio(zc, System::MemifShared, 1500);
            row(w, "zero-copy ≥ DPDK memif, one CPU, at 1500 B", v, 1.0, "×");
        }
        let pmd = self.micro("pmd_zero_copy_round/32").map(|m| m.ns);
        let pmd_c = self.micro("pmd_classic_round/32").map(|m| m.ns);
        let _ = writeln!(
            w,
            "| `pmd_zero_copy_round/32` ≤ 40 ns and ≤ `pmd_classic_round/32` | {} | {} |",
            pmd.zip(pmd_c).map_or("not run".into(), |(a, b)| format!(
                "{a:.1} ns (classic {b:.1} ns)"
            )),
            pmd.zip(pmd_c)
                .map_or("?", |(a, b)| yes(a <= 40.0 && a <= b))
        );
        let sw = self.micro("switch_zero_copy/32").map(|m| m.ns);
        let _ = writeln!(
            w,
            "| `switch_zero_copy/32` ≤ 12 ns per packet | {} | {} |",
            sw.map_or("not run".into(), |v| format!("{v:.2} ns")),
            sw.map_or("?", |v| yes(v <= 12.0))
        );
        // Issue 11 target 4: the ping-pong round trip (one run per size).
        let rtt = |s: System| {
            self.cell(s, 64)
                .and_then(|c| c.samples.first())
                .and_then(|x| x.rtt)
                .map(|r| r.0)
        };
        let (zc, classic) = (rtt(System::PingZc), rtt(System::PingClassic));
        let _ = writeln!(
            w,
            "| ping-pong p50 at 64 B ≤ 5 µs, zero-copy | {} | {} |",
            zc.map_or("not run".into(), |v| format!(
                "{v:.1} µs (classic {})",
                classic.map_or("not run".into(), |c| format!("{c:.1} µs"))
            )),
            zc.map_or("?", |v| yes(v <= 5.0))
        );
        // The variance target: the largest CV of the rate at the headline points.
        let cvs: Vec<(System, usize, f64)> = [64, 1500, 9000]
            .into_iter()
            .filter(|f| self.sizes.contains(f))
            .flat_map(|f| {
                System::THROUGHPUT
                    .into_iter()
                    .filter_map(move |s| Some((s, f, self.cell(s, f)?.cv()?)))
            })
            .collect();
        let worst = cvs.iter().max_by(|a, b| a.2.total_cmp(&b.2));
        let _ = writeln!(
            w,
            "| CV of the rate < 10% at 64, 1500 and 9000 B (every system with ≥ 2 runs) | {} | {} |",
            worst.map_or("—".into(), |(s, f, v)| format!(
                "largest {:.1}% ({}, {}); {} of {} points under 10%",
                v * 100.0,
                s.name(),
                size(*f),
                cvs.iter().filter(|x| x.2 < 0.10).count(),
                cvs.len()
            )),
            worst.map_or("?", |x| yes(x.2 < 0.10))
        );
    }

    /// "Packets per CPU-second": frames down, systems across.
    fn per_cpu_table(&self, w: &mut String) {
        let _ = writeln!(w, "## Packets per CPU-second\n");
        let _ = writeln!(
            w,
            "Packets delivered in the measured window divided by the CPU time (user + system, from \
             `/proc/PID/stat`, in clock ticks of {tck}/s) that *all* of a system's processes used in that same \
             window, so systems that use different numbers of CPUs compare: sbnet = host-pair + both \
             sbnet-testpmds (three processes), DPDK vhost path = the vhost switch testpmd + both virtio-user \
             testpmds (three), memif = its two testpmds. Median over the runs; in brackets, the CPUs the system \
             kept busy (CPU-seconds per second, median). A busy-polling endpoint counts as busy while it polls \
             an empty ring: that is the cost it imposes on its host.\n",
            tck = crate::util::clk_tck()
        );
        let _ = writeln!(
            w,
            "| frame | {} |\n|---|{}",
            System::THROUGHPUT.map(System::name).join(" | "),
            "---|".repeat(System::THROUGHPUT.len())
        );
        for &f in self.sizes {
            let cols: Vec<String> = System::THROUGHPUT
                .iter()
                .map(|&s| {
                    let c = self.cell(s, f);
                    match c.and_then(|c| c.median_per_cpu().zip(c.median_cpus())) {
                        Some((p, n)) => format!("{} ({n:.2} CPUs)", per_cpu(p)),
                        None => missing(c),
                    }
                })
                .collect();
            let _ = writeln!(w, "| {} | {} |", size(f), cols.join(" | "));
        }
        let _ = writeln!(w);
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let w = &mut o;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Generated by `{}` (the `sbnet-bench` binary) on {}; its end-to-end runs took {:.0} s \
             (not counting the build and the micro-benchmarks before them). \
             Do not edit by hand: run it again. The analysis at the end comes from `tests/bench/notes.md`.\n",
            tidy(self.invocation.trim()),
            self.started,
            self.wall_secs
        );
        if self.cells.is_empty() {
            // Only the many-links sections ran (--links-only).
            let _ = writeln!(
                w,
                "Only the many-links sections: `{}`.\n",
                tidy(&self.invocation)
            );
            if let Some(l) = self.links {
                l.markdown(w);
            }
            let _ = writeln!(w, "## Machine\n\n```\n{}\n```\n", self.machine.trim());
            if let Some(n) = &self.notes {
                let _ = writeln!(w, "{}", n.trim_end());
            }
            return o;
        }
        if self.quick {
            let _ = writeln!(w, "> **Quick mode**: short runs, few sizes, one repeat. For development only; the figures are not the project's results.\n");
        }

        // Headline.
        let _ = writeln!(w, "## Targets (issues 5 and 11)\n");
        let _ = writeln!(w, "| target | measured | met? |\n|---|---|---|");
        let sw = self.micro("switch_zero_copy/32");
        let _ = writeln!(
            w,
            "| host switch ≤ 20 ns per packet at burst 32 (zero-copy) | {} | {} |",
            sw.map_or("not run".into(), |m| format!(
                "{:.2} ns (95% CI {:.2}–{:.2})",
                m.ns, m.lo, m.hi
            )),
            sw.map_or("?", |m| if m.ns <= 20.0 { "yes" } else { "**no**" })
        );
        let (small, big) = (self.sizes.first().copied(), self.sizes.last().copied());
        if let (Some(a), Some(b)) = (small, big) {
            let r = match (
                self.median(System::SbnetZc, b),
                self.median(System::SbnetZc, a),
            ) {
                (Some(x), Some(y)) => Some(x / y),
                _ => None,
            };
            let _ = writeln!(
                w,
                "| zero-copy rate at {} within 10% of its rate at {} | {} | {} |",
                size(b),
                size(a),
                r.map_or("—".into(), |r| format!("{:.0}% of it", r * 100.0)),
                r.map_or("?", |r| if r >= 0.9 { "yes" } else { "**no**" })
            );
            let v = self.ratio(System::SbnetZc, System::Vhost, a);
            let _ = writeln!(
                w,
                "| zero-copy ≥ DPDK vhost path at {} | {} | {} |",
                size(a),
                v.map_or("—".into(), |r| format!("{r:.2}×")),
                v.map_or("?", |r| if r >= 1.0 { "yes" } else { "**no**" })
            );
        }
        if self.sizes.contains(&9000) {
            let v = self.ratio(System::SbnetZc, System::Vhost, 9000);
            let _ = writeln!(
                w,
                "| zero-copy ≥ 10× DPDK vhost path at 9000 B | {} | {} |",
                v.map_or("—".into(), |r| format!("{r:.1}×")),
                v.map_or("?", |r| if r >= 10.0 { "yes" } else { "**no**" })
            );
        }
        self.targets_11(w);
        let _ = writeln!(w);

        // Throughput table.
        let _ = writeln!(w, "## One-way throughput\n");
        let _ = writeln!(
            w,
            "Packets per second counted at the receiver and payload Gbit/s (frame bytes × 8, no virtio header), \
             median of {} run(s), each measured over a {} s window after {} s of warm-up (see Method); ratios are to the DPDK vhost path measured in this same run. \
             *Zero-copy* uses `--payload header`: the application writes and checks the Ethernet + test header \
             only and never touches the rest of the frame, which is the zero-copy rate; *full payload* writes \
             and checks every byte (one run per size). For the zero-copy path, Gbit/s is the payload whose \
             *ownership* moved from sender to receiver: no byte of it was read, written or copied.\n",
            self.repeats, self.secs, self.warm
        );
        let _ = writeln!(
            w,
            "| frame | sbnet zero-copy | sbnet zero-copy, full payload | sbnet classic | DPDK vhost path | DPDK memif, two CPUs | DPDK memif, one CPU | zero-copy ÷ vhost | classic ÷ vhost | memif (two CPUs) ÷ vhost |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
        for &f in self.sizes {
            let r = |a| {
                self.ratio(a, System::Vhost, f)
                    .map_or("—".into(), |r| format!("{r:.2}×"))
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size(f),
                self.short(System::SbnetZc, f),
                self.short(System::SbnetZcFull, f),
                self.short(System::SbnetClassic, f),
                self.short(System::Vhost, f),
                self.short(System::Memif, f),
                self.short(System::MemifShared, f),
                r(System::SbnetZc),
                r(System::SbnetClassic),
                r(System::Memif)
            );
        }
        let _ = writeln!(w);
        self.per_cpu_table(w);
        for c in &self.charts {
            let name = c
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(w, "![{name}]({name})\n");
        }
        if let Some(l) = self.links {
            l.markdown(w);
        }

        // Copies.
        let _ = writeln!(w, "## Data copies per packet\n");
        let _ = writeln!(
            w,
            "sbnet's figures are host-pair's counters (`tx_copied` ÷ `tx_packets`, both sides, whole run); \
             the DPDK paths' are by construction (vhost: one copy out of the sender's ring into an mbuf, one \
             into the receiver's ring; memif without zero-copy: the sender copies into the shared ring, the \
             receiver out of it).\n"
        );
        let _ = writeln!(w, "| frame | sbnet zero-copy | sbnet classic | DPDK vhost path | DPDK memif (either placement) |\n|---|---|---|---|---|");
        for &f in self.sizes {
            let c = |s| {
                self.cell(s, f)
                    .and_then(|c| c.samples.first())
                    .and_then(|s| s.copies)
                    .map_or("—".into(), |v| format!("{v:.2}"))
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                size(f),
                c(System::SbnetZc),
                c(System::SbnetClassic),
                c(System::Vhost),
                c(System::Memif)
            );
        }
        let _ = writeln!(w);

        // Latency.
        let _ = writeln!(w, "## Ping-pong latency (sbnet)\n");
        let _ = writeln!(
            w,
            "`sbnet-testpmd --mode pingpong` on side 0 against `--mode io` (echo in place) on side 1, one frame \
             in flight, same placement as the throughput runs (both endpoints share one CPU, so each round \
             trip includes two hand-overs between them). DPDK testpmd has no ping-pong mode, so there is no \
             DPDK column.\n"
        );
        let _ = writeln!(w, "| frame | zero-copy p50 | zero-copy p99 | zero-copy round trips/s | classic p50 | classic p99 |\n|---|---|---|---|---|---|");
        for &f in self.sizes {
            let l = |s: System| -> (String, String, String) {
                match self
                    .cell(s, f)
                    .and_then(|c| c.samples.first().map(|x| (c, x)))
                {
                    Some((_, x)) => {
                        let (p50, p99) = x.rtt.unwrap_or((0.0, 0.0));
                        (
                            format!("{p50:.1} µs"),
                            format!("{p99:.1} µs"),
                            format!("{:.0}", x.pps),
                        )
                    }
                    None => ("—".into(), "—".into(), "—".into()),
                }
            };
            let (a, b, c) = l(System::PingZc);
            let (d, e, _) = l(System::PingClassic);
            let _ = writeln!(w, "| {} | {a} | {b} | {c} | {d} | {e} |", size(f));
        }
        let _ = writeln!(w);

        // Variance.
        let _ = writeln!(w, "## Variance\n");
        let _ = writeln!(
            w,
            "Every run, with the coefficient of variation (CV: sample standard deviation ÷ mean, computed \
             here from the runs listed) of the rate and of packets per CPU-second over the repeats. The \
             figures in the tables above are the medians of these runs. *bg* is the largest share of the \
             machine other programs used just before a run (each run waits up to 20 s for it to fall below \
             {:.0}%); *others* is the share of the machine (all CPUs) other programs used inside each run's \
             window (`/proc/stat` busy time minus the system's own). *line* is the round trip of one cache \
             line between the host's CPU and the endpoints' CPU just before / just after each run, in ns: \
             on a virtual machine it says how far apart the hypervisor placed the two CPUs at that moment \
             (see the notes' Variance item). The headline points are 64 B, 1500 B and 9000 B; the target \
             is a CV under 10% there.\n",
            self.max_background * 100.0
        );
        let _ = writeln!(
            w,
            "| system | frame | runs (Mpps) | median | CV | runs (M packets per CPU-s) | CV | bg | others | line (ns) |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let pct = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.1}%", v * 100.0));
        for s in System::THROUGHPUT {
            for &f in self.sizes {
                let Some(c) = self.cell(s, f) else { continue };
                if c.samples.is_empty() {
                    if let Some(e) = &c.error {
                        let first = e.lines().next().unwrap_or("");
                        let _ = writeln!(
                            w,
                            "| {} | {} | {} | | | | | | | |",
                            s.name(),
                            size(f),
                            first.replace('|', "/")
                        );
                    }
                    continue;
                }
                let list = |v: Vec<f64>| {
                    v.iter()
                        .map(|x| format!("{:.3}", x / 1e6))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let bg = c.samples.iter().map(|x| x.background).fold(0.0, f64::max);
                let others: Vec<String> = c
                    .samples
                    .iter()
                    .map(|x| {
                        x.others
                            .map_or("—".into(), |o| format!("{:.0}%", o * 100.0))
                    })
                    .collect();
                let ns = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
                let line: Vec<String> = c
                    .samples
                    .iter()
                    .map(|x| format!("{}/{}", ns(x.line_rtt[0]), ns(x.line_rtt[1])))
                    .collect();
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.3} | {} | {} | {} | {:.0}% | {} | {} |",
                    s.name(),
                    size(f),
                    list(c.rates()),
                    c.median().unwrap_or(0.0) / 1e6,
                    pct(c.cv()),
                    list(c.per_cpu()),
                    pct(c.cv_per_cpu()),
                    bg * 100.0,
                    others.join(", "),
                    line.join(", ")
                );
            }
        }
        let _ = writeln!(w);

        // Micro-benchmarks.
        let _ = writeln!(w, "## Micro-benchmarks (criterion, in-process)\n");
        if self.micro.is_empty() {
            let _ = writeln!(
                w,
                "Not run (`tests/bench/run.sh` runs them before the end-to-end runs).\n"
            );
        } else {
            let _ = writeln!(
                w,
                "Median per packet (per copy for `memcpy`), with criterion's 95% confidence interval. \
                 `switch_*`: one host polling round over bursts of 1, 8 or 32 TX chains \
                 (`device-model/benches/switch.rs`); `pmd_*`: the guest PMD's calls, two real ports on an \
                 in-process pair with the host switch run untimed between them (`tests/benches/pmd.rs`): \
                 `tx` = `alloc` + `tx_burst`, `rx` = `rx_burst` + `free` on the receiver (it also gifts the \
                 slots back), `round` = both plus the sender's own `rx_burst` (completions, gifts in, reposts).\n"
            );
            let _ = writeln!(w, "| benchmark | median | 95% CI |\n|---|---|---|");
            for m in self.micro {
                let (v, unit) = match m.per {
                    Per::Elements(_) => (format!("{:.1} ns/packet", m.ns), ""),
                    Per::Bytes(b) => (format!("{:.1} ns ({:.1} GB/s)", m.ns, b as f64 / m.ns), ""),
                    Per::Iter => (format!("{:.1} ns", m.ns), ""),
                };
                let _ = writeln!(w, "| `{}` | {v}{unit} | {:.1}–{:.1} |", m.id, m.lo, m.hi);
            }
            let _ = writeln!(w);
        }

        // Machine and method.
        let _ = writeln!(w, "## Machine\n\n```\n{}\n```\n", self.machine.trim());
        let _ = writeln!(w, "## Method\n");
        let p = self.place;
        let _ = writeln!(
            w,
            "- Everything runs on this machine only (Unix sockets, shared memory; no network).\n\
             - **Thread placement** (taskset): the host's party on CPU {host} (host-pair, all of its threads; \
             the DPDK vhost switch testpmd, main and forwarding lcore); both endpoints (the two guests) on \
             CPU {guest} (sender and receiver, sbnet-testpmd or DPDK testpmd). memif has no host party and \
             runs in two placements, each its own row: *two CPUs* (sender on CPU {mtx}, receiver on CPU {mrx}) \
             and *one CPU* (both endpoints on CPU {mshared}, the placement sbnet's endpoints get).\n\
             - **Polling**: host-pair `--poll {poll}`, sbnet-testpmd `--idle {idle}` (an idle loop yields the \
             CPU, so the two endpoints that share CPU {guest} hand it to each other when one has nothing to \
             do). DPDK testpmd has no such option: its endpoints busy-poll and alternate on the shared CPU in \
             scheduler slices (HZ=250 here), so their rings are made as large as virtio-user allows for the \
             frame size (up to 32768 descriptors) to bridge a slice.\n\
             - Slots: host-pair `--slots {slots}`, `--slot-size` the next power of two ≥ frame + 12 (2048 at \
             least).\n\
             - DPDK testpmd cannot generate frames above {tmax} B (a 16-bit length), so its 64 KiB point is \
             {tmax} B; its virtio PMD takes frames up to {vmax} B, so the vhost path has no 64 KiB point.\n\
             - **Measured window** (one-way runs, every system alike): the receiver prints its cumulative \
             packet count once a second (sbnet-testpmd `--stats-interval 1`, DPDK testpmd `--stats-period 1`, \
             port `RX-packets`). After the first line that shows traffic, {warm} s of warm-up are discarded; \
             the window opens at the next stats line and closes at the first line that appears {secs} s or more \
             later. Rate = the difference of the two lines' counts ÷ the time between the moments the two \
             lines appeared (watched every 2 ms). utime + stime of every process of the system are read from \
             `/proc/PID/stat` at those same two moments; packets per CPU-second = the window's packets ÷ \
             the CPU seconds. Start-up, warm-up and shutdown are outside the window; the run fails if the \
             sender stopped inside it. The endpoints are stopped once the window closes.\n\
             - **Repeats**: {rep} run(s) per system and size (full payload: one); the figure reported is the \
             median. Runs are interleaved: repeat 1 of every system and size, then repeat 2, …, and the order \
             of the systems turns by one place every repeat, so that a slow phase of the machine spreads over \
             every system and no system always follows the same one. Each run waits for the machine to be \
             quiet first (see Variance). Ping-pong runs last {secs} s each, one per size.\n",
            host = p.host,
            guest = p.tx,
            mtx = p.memif_tx,
            mrx = p.memif_rx,
            mshared = p.memif_shared,
            warm = self.warm,
            poll = p.poll,
            idle = p.idle,
            slots = crate::sbnet::SLOTS,
            tmax = crate::dpdk::TESTPMD_MAX_FRAME,
            vmax = crate::dpdk::VIRTIO_MAX_FRAME,
            secs = self.secs,
            rep = self.repeats,
        );
        if let Some(n) = &self.dpdk_note {
            let _ = writeln!(w, "- DPDK: {n}\n");
        }
        let _ = writeln!(w, "### Commands\n");
        let _ = writeln!(w, "The whole benchmark: `{}`.\n", self.invocation.trim());
        let _ = writeln!(w, "The commands of the first run of each system, at the smallest and the largest frame size (the others differ only in sizes, paths and ring sizes; `docs/benchmarks.json` has them all):\n");
        let mut shown = BTreeMap::new();
        for c in self.cells {
            if c.commands.is_empty() {
                continue;
            }
            if Some(c.frame) == small || Some(c.frame) == big {
                shown.entry((c.system, c.frame)).or_insert(&c.commands);
            }
        }
        let _ = writeln!(
            w,
            "`$WORK` is the run's work directory (sockets, logs, JSON); paths are relative to the repository.\n"
        );
        for ((s, f), cmds) in shown {
            let _ = writeln!(w, "{} at {}:\n\n```sh", s.name(), size(f));
            for c in cmds {
                let _ = writeln!(w, "{} &", tidy(c));
            }
            let _ = writeln!(w, "```\n");
        }
        let errors: Vec<&Cell> = self
            .cells
            .iter()
            .filter(|c| c.error.as_ref().is_some_and(|e| !e.starts_with("n/a")))
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(w, "### Failed runs\n");
            for c in errors {
                let _ = writeln!(
                    w,
                    "- {} at {}: ```{}```",
                    c.system.name(),
                    size(c.frame),
                    c.error
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
            }
            let _ = writeln!(w);
        }
        if let Some(n) = &self.notes {
            let _ = writeln!(w, "{}", n.trim_end());
        }
        o
    }
}

/// A command line with the repository prefix and the work directory shortened.
pub fn tidy(cmd: &str) -> String {
    let mut out = cmd.to_string();
    if let Ok(cwd) = std::env::current_dir() {
        out = out.replace(&format!("{}/", cwd.display()), "");
    }
    // /tmp/sbnet-bench-<pid>/<run> -> $WORK
    while let Some(i) = out.find("/tmp/sbnet-bench-") {
        let rest = &out[i + "/tmp/sbnet-bench-".len()..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        let after = &rest[digits..];
        let run_end = after
            .strip_prefix('/')
            .map(|r| 1 + r.find('/').unwrap_or(r.len()))
            .unwrap_or(0);
        out = format!("{}$WORK{}", &out[..i], &after[run_end..]);
    }
    out
}
