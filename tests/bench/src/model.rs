//! What is measured and what a measurement holds.

use serde_json::json;

/// Thread placement and polling policy (taskset CPU lists).
#[derive(Clone, Debug)]
pub struct Place {
    /// The host's party: host-pair (all its threads) or the DPDK vhost switch.
    pub host: String,
    /// The sending endpoint.
    pub tx: String,
    /// The receiving (or echoing) endpoint.
    pub rx: String,
    /// memif's sender (memif has no host party).
    pub memif_tx: String,
    /// memif's receiver.
    pub memif_rx: String,
    /// Both memif endpoints in the one-CPU memif row (sbnet's endpoints'
    /// placement).
    pub memif_shared: String,
    /// host-pair `--poll`.
    pub poll: String,
    /// sbnet-testpmd `--idle`.
    pub idle: String,
}

/// How long a one-way run is measured.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Seconds of traffic before the window opens (discarded).
    pub warm: f64,
    /// Seconds of the measured window (ping-pong: of the run).
    pub secs: f64,
}

/// The systems compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    /// sbnet zero-copy, the application writes and checks headers only.
    SbnetZc,
    /// sbnet zero-copy, the application writes and checks every byte.
    SbnetZcFull,
    /// sbnet's classic path (both PMDs `--classic`): one host copy.
    SbnetClassic,
    /// DPDK testpmd: net_virtio_user -> net_vhost io switch -> net_virtio_user.
    Vhost,
    /// DPDK testpmd: net_memif client -> net_memif server, each on its own CPU.
    Memif,
    /// The same with both memif endpoints on one CPU, as sbnet's endpoints are.
    MemifShared,
    /// sbnet zero-copy ping-pong (latency).
    PingZc,
    /// sbnet classic ping-pong (latency).
    PingClassic,
}

impl System {
    pub const THROUGHPUT: [System; 6] = [
        System::SbnetZc,
        System::SbnetZcFull,
        System::SbnetClassic,
        System::Vhost,
        System::Memif,
        System::MemifShared,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::SbnetZc => "sbnet zero-copy",
            System::SbnetZcFull => "sbnet zero-copy, full payload",
            System::SbnetClassic => "sbnet classic",
            System::Vhost => "DPDK vhost path",
            System::Memif => "DPDK memif, two CPUs",
            System::MemifShared => "DPDK memif, one CPU",
            System::PingZc => "sbnet zero-copy ping-pong",
            System::PingClassic => "sbnet classic ping-pong",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            System::SbnetZc => "sbnet_zc",
            System::SbnetZcFull => "sbnet_zc_full",
            System::SbnetClassic => "sbnet_classic",
            System::Vhost => "dpdk_vhost",
            System::Memif => "dpdk_memif",
            System::MemifShared => "dpdk_memif_1cpu",
            System::PingZc => "sbnet_zc_pingpong",
            System::PingClassic => "sbnet_classic_pingpong",
        }
    }

    pub fn is_dpdk(self) -> bool {
        matches!(self, System::Vhost | System::Memif | System::MemifShared)
    }
}

/// One run's result.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Packets per second at the receiver (round trips per second for ping-pong).
    pub pps: f64,
    /// Packets counted.
    pub packets: u64,
    /// Seconds they were counted over (one-way: the measured window).
    pub secs: f64,
    /// CPU seconds (user + system) of all the system's processes over
    /// the same window (`/proc/PID/stat`); one-way runs only.
    pub cpu_secs: Option<f64>,
    /// Data copies per packet, when a counter says so.
    pub copies: Option<f64>,
    /// Share of the machine busy with other programs just before the run.
    pub background: f64,
    /// Share of the machine other programs used inside the measured window.
    pub others: Option<f64>,
    /// Round trip p50 and p99 in microseconds (ping-pong).
    pub rtt: Option<(f64, f64)>,
    /// A cache line's round trip between the host's CPU and the
    /// endpoints' CPU in nanoseconds, probed just before and just after
    /// the run ([`crate::probe`]).
    pub line_rtt: [Option<f64>; 2],
}

/// Every run of one system at one frame size.
#[derive(Clone, Debug)]
pub struct Cell {
    pub system: System,
    pub frame: usize,
    pub samples: Vec<Sample>,
    /// Why a run failed or the cell is not applicable.
    pub error: Option<String>,
    /// The commands of the first run.
    pub commands: Vec<String>,
}

impl Sample {
    /// Packets per CPU-second: the window's packets over the CPU time of
    /// all the system's processes in it.
    pub fn per_cpu_s(&self) -> Option<f64> {
        self.cpu_secs
            .filter(|c| *c > 0.0)
            .map(|c| self.packets as f64 / c)
    }

    /// CPUs busy on average over the window (CPU seconds per second).
    pub fn cpus(&self) -> Option<f64> {
        self.cpu_secs
            .filter(|_| self.secs > 0.0)
            .map(|c| c / self.secs)
    }
}

/// Coefficient of variation (sample standard deviation / mean).
pub fn cv(r: &[f64]) -> Option<f64> {
    if r.len() < 2 {
        return None;
    }
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64;
    (mean > 0.0).then(|| var.sqrt() / mean)
}

impl Cell {
    pub fn rates(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.pps).collect()
    }

    /// Median packets per second.
    pub fn median(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| crate::util::median(&self.rates()))
    }

    /// Packets per CPU-second of every run that has it.
    pub fn per_cpu(&self) -> Vec<f64> {
        self.samples.iter().filter_map(Sample::per_cpu_s).collect()
    }

    /// Median packets per CPU-second.
    pub fn median_per_cpu(&self) -> Option<f64> {
        let v = self.per_cpu();
        (!v.is_empty()).then(|| crate::util::median(&v))
    }

    /// Median CPUs busy.
    pub fn median_cpus(&self) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(Sample::cpus).collect();
        (!v.is_empty()).then(|| crate::util::median(&v))
    }

    /// Coefficient of variation of the rate over the runs.
    pub fn cv(&self) -> Option<f64> {
        cv(&self.rates())
    }

    /// Coefficient of variation of packets per CPU-second over the runs.
    pub fn cv_per_cpu(&self) -> Option<f64> {
        cv(&self.per_cpu())
    }

    /// Payload Gbit/s at the median rate (frame bytes, no header).
    pub fn gbps(&self) -> Option<f64> {
        self.median().map(|p| p * self.frame as f64 * 8.0 / 1e9)
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let key = v.get("system")?.as_str()?;
        let system = System::THROUGHPUT
            .into_iter()
            .chain([System::PingZc, System::PingClassic])
            .find(|s| s.key() == key)?;
        let f = |x: &serde_json::Value, k: &str| x.get(k).and_then(|v| v.as_f64());
        Some(Self {
            system,
            frame: v.get("frame")?.as_u64()? as usize,
            error: v.get("error").and_then(|e| e.as_str()).map(str::to_string),
            commands: v
                .get("commands")
                .and_then(|c| c.as_array())
                .map(|c| {
                    c.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            samples: v
                .get("samples")?
                .as_array()?
                .iter()
                .map(|x| Sample {
                    pps: f(x, "pps").unwrap_or(0.0),
                    packets: x.get("packets").and_then(|p| p.as_u64()).unwrap_or(0),
                    secs: f(x, "secs").unwrap_or(0.0),
                    cpu_secs: f(x, "cpu_s"),
                    copies: f(x, "copies"),
                    background: f(x, "background").unwrap_or(0.0),
                    others: f(x, "others_in_window"),
                    rtt: f(x, "rtt_p50_us").zip(f(x, "rtt_p99_us")),
                    line_rtt: [f(x, "line_rtt_ns_before"), f(x, "line_rtt_ns_after")],
                })
                .collect(),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "system": self.system.key(),
            "frame": self.frame,
            "error": self.error,
            "median_pps": self.median(),
            "cv": self.cv(),
            "median_pkts_per_cpu_s": self.median_per_cpu(),
            "cv_pkts_per_cpu_s": self.cv_per_cpu(),
            "median_cpus": self.median_cpus(),
            "commands": self.commands,
            "samples": self.samples.iter().map(|s| json!({
                "pps": s.pps,
                "packets": s.packets,
                "secs": s.secs,
                "cpu_s": s.cpu_secs,
                "pkts_per_cpu_s": s.per_cpu_s(),
                "copies": s.copies,
                "background": s.background,
                "others_in_window": s.others,
                "rtt_p50_us": s.rtt.map(|r| r.0),
                "rtt_p99_us": s.rtt.map(|r| r.1),
                "line_rtt_ns_before": s.line_rtt[0],
                "line_rtt_ns_after": s.line_rtt[1],
            })).collect::<Vec<_>>(),
        })
    }
}
