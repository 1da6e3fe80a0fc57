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
    /// host-pair `--poll`.
    pub poll: String,
    /// sbnet-testpmd `--idle`.
    pub idle: String,
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
    /// DPDK testpmd: net_memif client -> net_memif server.
    Memif,
    /// sbnet zero-copy ping-pong (latency).
    PingZc,
    /// sbnet classic ping-pong (latency).
    PingClassic,
}

impl System {
    pub const THROUGHPUT: [System; 5] = [
        System::SbnetZc,
        System::SbnetZcFull,
        System::SbnetClassic,
        System::Vhost,
        System::Memif,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::SbnetZc => "sbnet zero-copy",
            System::SbnetZcFull => "sbnet zero-copy, full payload",
            System::SbnetClassic => "sbnet classic",
            System::Vhost => "DPDK vhost path",
            System::Memif => "DPDK memif",
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
            System::PingZc => "sbnet_zc_pingpong",
            System::PingClassic => "sbnet_classic_pingpong",
        }
    }

    pub fn is_dpdk(self) -> bool {
        matches!(self, System::Vhost | System::Memif)
    }
}

/// One run's result.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Packets per second at the receiver (round trips per second for ping-pong).
    pub pps: f64,
    /// Packets counted.
    pub packets: u64,
    /// Seconds they were counted over.
    pub secs: f64,
    /// Data copies per packet, when a counter says so.
    pub copies: Option<f64>,
    /// Share of the machine busy with other programs just before the run.
    pub background: f64,
    /// Round trip p50 and p99 in microseconds (ping-pong).
    pub rtt: Option<(f64, f64)>,
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

impl Cell {
    pub fn rates(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.pps).collect()
    }

    /// Median packets per second.
    pub fn median(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| crate::util::median(&self.rates()))
    }

    /// (min, max) packets per second.
    pub fn range(&self) -> Option<(f64, f64)> {
        let r = self.rates();
        if r.is_empty() {
            return None;
        }
        Some((
            r.iter().cloned().fold(f64::INFINITY, f64::min),
            r.iter().cloned().fold(0.0, f64::max),
        ))
    }

    /// Coefficient of variation (standard deviation / mean).
    pub fn cv(&self) -> Option<f64> {
        let r = self.rates();
        if r.len() < 2 {
            return None;
        }
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64;
        Some(var.sqrt() / mean)
    }

    /// Payload Gbit/s at the median rate (frame bytes, no header).
    pub fn gbps(&self) -> Option<f64> {
        self.median().map(|p| p * self.frame as f64 * 8.0 / 1e9)
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let key = v.get("system")?.as_str()?;
        let system = [
            System::SbnetZc,
            System::SbnetZcFull,
            System::SbnetClassic,
            System::Vhost,
            System::Memif,
            System::PingZc,
            System::PingClassic,
        ]
        .into_iter()
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
                    copies: f(x, "copies"),
                    background: f(x, "background").unwrap_or(0.0),
                    rtt: f(x, "rtt_p50_us").zip(f(x, "rtt_p99_us")),
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
            "commands": self.commands,
            "samples": self.samples.iter().map(|s| json!({
                "pps": s.pps,
                "packets": s.packets,
                "secs": s.secs,
                "copies": s.copies,
                "background": s.background,
                "rtt_p50_us": s.rtt.map(|r| r.0),
                "rtt_p99_us": s.rtt.map(|r| r.1),
            })).collect::<Vec<_>>(),
        })
    }
}
