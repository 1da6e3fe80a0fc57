//! DPDK peers, with Debian's `dpdk-testpmd` (DPDK 22.11):
//!
//! - the classic VM-to-VM path: a `net_virtio_user` txonly testpmd, an io
//!   forwarding testpmd with two `net_vhost` ports (the host's switch: one
//!   copy out of the sender's ring, one copy into the receiver's), and a
//!   `net_virtio_user` rxonly testpmd;
//! - `net_memif` between a txonly client and an rxonly server (no host
//!   party; the sender copies into the shared ring, the receiver out of it).
//!
//! Counted at the receiver from testpmd's `--stats-period 1` port
//! statistics (the cumulative `RX-packets`) over the measured window
//! (crate::window).

use crate::model::{Place, Sample, Timing};
use crate::util::{self, Proc};
use crate::window;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// mbuf data room (testpmd's default mbuf size, 2048 bytes of data).
const SEG: usize = 2048;
/// Largest frame DPDK 22.11's virtio PMD receives (`VIRTIO_MAX_RX_PKTLEN`):
/// no TSO/GSO on this path, so a 64 KiB frame cannot cross it.
pub const VIRTIO_MAX_FRAME: usize = 9728;
/// testpmd's txonly packet length is a 16-bit field.
pub const TESTPMD_MAX_FRAME: usize = 65535;
/// Prefix of every EAL `--file-prefix` this tool uses (hugepage files are
/// removed by it after each run).
const PREFIX: &str = "sbnet-bench-";

pub struct Dpdk {
    pub testpmd: PathBuf,
    pub hugedir: PathBuf,
}

/// `dpdk-testpmd` and a mounted hugetlbfs with free pages, or why not.
pub fn find() -> Result<Dpdk> {
    let testpmd = ["/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context(
            "dpdk-testpmd not found (apt-get install dpdk dpdk-dev; tests/bench/run.sh does it)",
        )?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let hugedir = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "hugetlbfs").then(|| PathBuf::from(f[1]))
        })
        .next()
        .context("no hugetlbfs mounted (mount -t hugetlbfs nodev /dev/hugepages; tests/bench/run.sh does it)")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if free < 1600 {
        bail!("only {free} free huge pages; the DPDK runs need 1600 of 2 MiB (sysctl vm.nr_hugepages=2048; tests/bench/run.sh does it)");
    }
    Ok(Dpdk { testpmd, hugedir })
}

/// The frame size DPDK is run at for an sbnet frame size.
pub fn frame(f: usize) -> usize {
    f.min(TESTPMD_MAX_FRAME)
}

/// `--txpkts`: the frame split into mbuf-sized segments.
fn txpkts(f: usize) -> (String, usize) {
    let mut v = Vec::new();
    let mut left = f;
    while left > 0 {
        let s = left.min(SEG);
        v.push(s.to_string());
        left -= s;
    }
    let n = v.len();
    (v.join(","), n)
}

/// virtio-user queue size: large rings absorb the scheduler slices during
/// which a busy-polling endpoint that shares a CPU is not running.
fn queue_size(segs: usize) -> usize {
    let q = (65536 / segs).clamp(1024, 32768);
    1usize << (usize::BITS - 1 - q.leading_zeros())
}

fn eal(cpus: &str, prefix: &str, mem: u32) -> Vec<String> {
    let cpu = cpus.split([',', '-']).next().unwrap_or("0");
    vec![
        // Main lcore and the forwarding lcore on the same CPU.
        "--lcores".into(),
        format!("0@{cpu},1@{cpu}"),
        "--no-pci".into(),
        // IOVA as VA: a 32768-entry virtio ring's memzones need not be
        // physically contiguous (with PA they fail now and then).
        "--iova-mode=va".into(),
        "--file-prefix".into(),
        format!("{PREFIX}{prefix}"),
        "-m".into(),
        mem.to_string(),
    ]
}

fn common(mode: &str) -> Vec<String> {
    vec![
        format!("--forward-mode={mode}"),
        "--auto-start".into(),
        "--stats-period".into(),
        "1".into(),
        "--nb-cores=1".into(),
    ]
}

/// Everything a DPDK run started; stops and cleans up when dropped.
struct Session {
    testpmd: PathBuf,
    hugedir: PathBuf,
    dir: PathBuf,
    procs: Vec<Proc>,
    cmds: Vec<String>,
    prefixes: Vec<String>,
}

impl Session {
    fn new(d: &Dpdk, dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            testpmd: d.testpmd.clone(),
            hugedir: d.hugedir.clone(),
            dir: dir.to_path_buf(),
            procs: Vec::new(),
            cmds: Vec::new(),
            prefixes: Vec::new(),
        })
    }

    fn start(&mut self, name: &str, cpus: &str, prefix: &str, args: Vec<String>) -> Result<usize> {
        self.prefixes.push(format!("{PREFIX}{prefix}"));
        let log = self.dir.join(format!("{prefix}.log"));
        let p = util::spawn(name, cpus, &self.testpmd, &args, &log)?;
        self.cmds.push(p.cmdline.clone());
        self.procs.push(p);
        Ok(self.procs.len() - 1)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Receivers and switches last, senders first: reverse start order.
        for p in self.procs.iter_mut().rev() {
            p.stop(Signal::SIGINT, Duration::from_secs(5));
        }
        // EAL leaves its hugepage files behind when it dies; free them.
        for pre in &self.prefixes {
            if let Ok(rd) = std::fs::read_dir(&self.hugedir) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(pre.as_str()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(pre));
        }
    }
}

const READY: &str = "start packet forwarding";

/// Measures the window once the sender `tx` is up (the
/// receiver's `--stats-period 1` blocks give its cumulative count), with
/// the CPU time of every process of the session.
fn measure(s: &mut Session, rx: usize, tx: usize, t: Timing) -> Result<Sample> {
    s.procs[tx].wait_log(READY, Duration::from_secs(60))?;
    let pids: Vec<u32> = s.procs.iter().map(|p| p.child.id()).collect();
    let (a, b) = if rx < tx {
        let (l, r) = s.procs.split_at_mut(tx);
        (&mut l[rx], &mut r[0])
    } else {
        bail!("the receiver starts before the sender");
    };
    let w = window::measure(a, b, &pids, window::dpdk_counts, t.warm, t.secs)?;
    s.procs[tx].stop(Signal::SIGINT, Duration::from_secs(5));
    Ok(Sample {
        pps: w.pps(),
        packets: w.packets,
        secs: w.secs,
        cpu_secs: w.cpu_secs,
        copies: Some(2.0),
        background: 0.0,
        others: w.others,
        rtt: None,
        line_rtt: [None; 2],
    })
}

/// The vhost path at `f` bytes.
pub fn vhost(
    d: &Dpdk,
    dir: &Path,
    place: &Place,
    f: usize,
    t: Timing,
) -> Result<(Sample, Vec<String>)> {
    if f > VIRTIO_MAX_FRAME {
        bail!("n/a: DPDK 22.11's virtio PMD takes frames up to {VIRTIO_MAX_FRAME} B (no TSO/GSO here)");
    }
    let (pkts, segs) = txpkts(f);
    let q = queue_size(segs);
    let mbufs = 2 * q * segs + 8192;
    let max_len = f.max(1518);
    let jumbo = |a: &mut Vec<String>, scatter: bool| {
        a.push(format!("--max-pkt-len={max_len}"));
        if scatter && f > SEG - 128 {
            a.push("--enable-scatter".into());
        }
    };
    let mut s = Session::new(d, dir)?;
    let socks = [dir.join("vhost0.sock"), dir.join("vhost1.sock")];

    // The host's switch: io forwarding between two vhost-user ports.
    let mut a = eal(&place.host, "vh", 1024);
    for (i, p) in socks.iter().enumerate() {
        a.push("--vdev".into());
        a.push(format!("net_vhost{i},iface={},queues=1", p.display()));
    }
    a.push("--".into());
    a.extend(common("io"));
    a.push("--total-num-mbufs=65536".into());
    jumbo(&mut a, false);
    let vh = s.start("testpmd (vhost switch)", &place.host, "vh", a)?;
    s.procs[vh].wait_log(READY, Duration::from_secs(60))?;
    for p in &socks {
        util::wait_for(p, Duration::from_secs(10), &mut s.procs[vh])?;
    }

    let guest = |prefix: &str, sock: &Path, mode: &str| {
        let mut a = eal(
            if mode == "rxonly" {
                &place.rx
            } else {
                &place.tx
            },
            prefix,
            1024,
        );
        a.push("--single-file-segments".into());
        a.push("--vdev".into());
        a.push(format!(
            "net_virtio_user0,path={},queues=1,queue_size={q}",
            sock.display()
        ));
        a.push("--".into());
        a.extend(common(mode));
        a.push(format!("--rxd={q}"));
        a.push(format!("--txd={q}"));
        a.push(format!("--total-num-mbufs={mbufs}"));
        jumbo(&mut a, true);
        if mode == "txonly" {
            // After --mbuf-size-like options: testpmd checks segment sizes as it parses.
            a.push(format!("--txpkts={pkts}"));
        }
        a
    };
    let rx = s.start(
        "testpmd (virtio-user rxonly)",
        &place.rx,
        "rx",
        guest("rx", &socks[1], "rxonly"),
    )?;
    s.procs[rx].wait_log(READY, Duration::from_secs(60))?;
    let tx = s.start(
        "testpmd (virtio-user txonly)",
        &place.tx,
        "tx",
        guest("tx", &socks[0], "txonly"),
    )?;
    let m = measure(&mut s, rx, tx, t)?;
    Ok((m, s.cmds.clone()))
}

/// memif at `f` bytes, the sender on `tx_cpus`, the receiver on `rx_cpus`.
pub fn memif(
    d: &Dpdk,
    dir: &Path,
    (tx_cpus, rx_cpus): (&str, &str),
    f: usize,
    t: Timing,
) -> Result<(Sample, Vec<String>)> {
    let (pkts, _segs) = txpkts(f);
    let mut s = Session::new(d, dir)?;
    let sock = dir.join("memif.sock");
    let end = |cpus: &str, prefix: &str, role: &str, mode: &str| {
        let mut a = eal(cpus, prefix, 1024);
        a.push("--vdev".into());
        // rsize: log2 of the ring size (16384 buffers of 2048 B, the most memif takes).
        a.push(format!(
            "net_memif0,role={role},socket={},id=0,rsize=14",
            sock.display()
        ));
        a.push("--".into());
        a.extend(common(mode));
        a.push("--total-num-mbufs=65536".into());
        if mode == "txonly" {
            a.push(format!("--txpkts={pkts}"));
        }
        a
    };
    let rx = s.start(
        "testpmd (memif server rxonly)",
        rx_cpus,
        "mrx",
        end(rx_cpus, "mrx", "server", "rxonly"),
    )?;
    // The socket is in the abstract namespace (memif's default): no file to wait for.
    s.procs[rx].wait_log(READY, Duration::from_secs(60))?;
    let tx = s.start(
        "testpmd (memif client txonly)",
        tx_cpus,
        "mtx",
        end(tx_cpus, "mtx", "client", "txonly"),
    )?;
    let m = measure(&mut s, rx, tx, t)?;
    Ok((m, s.cmds.clone()))
}
