//! The PMD chain: A — link 1 — B — link 2 — C, with the real binaries.
//!
//! Two `host-pair serve` processes (one per link), `sbnet-testpmd` txonly
//! on A, `--mode forward` on B (one port on each link) and rxonly on C,
//! which checks every frame's integrity. Nothing may be dropped:
//! txonly sends exactly `COUNT` frames (a full transmit ring keeps them for
//! the next burst), the forwarder holds a frame until the far port has a
//! buffer for it (`dropped` must stay 0), so C receives exactly `COUNT`.
//! Each frame is copied once, at B (the two links' regions differ), and
//! never by the host: both links carry it zero-copy.

mod pmd_common;

use pmd_common::sockets::serial;
use sbnet_tests::{bin, temp_dir};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Frames A sends.
const COUNT: u64 = 100_000;

/// A process whose stderr goes to `<dir>/<name>.log`; killed when dropped.
struct Running {
    name: String,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Running {
    fn start(dir: &Path, name: &str, program: &str, args: &[String]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin(program))
            .args(args)
            .env("SBNET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {program}: {e}"));
        Self {
            name: name.into(),
            log,
            child,
            exit: None,
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        format!("== {} ==\n{}", self.name, tail.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for every process in `ps` to exit successfully by `deadline`.
fn expect_success(ps: &mut [&mut Running], deadline: Instant) {
    while !ps.iter_mut().all(|p| p.exited().is_some()) {
        if Instant::now() > deadline {
            let logs: Vec<String> = ps.iter().map(|p| p.log_tail()).collect();
            panic!("still running at the deadline\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in ps.iter() {
        let st = p.exit.expect("exited");
        assert!(st.success(), "{} failed: {st}\n{}", p.name, p.log_tail());
    }
}

/// One link: a `host-pair serve` with sockets `<name>-0.sock` and
/// `<name>-1.sock`, counters to `<name>.json` when it ends.
struct Link {
    proc: Running,
    sockets: [String; 2],
    stats: PathBuf,
}

impl Link {
    fn serve(dir: &Path, name: &str) -> Self {
        let sockets = [0, 1].map(|k| dir.join(format!("{name}-{k}.sock")));
        let stats = dir.join(format!("{name}.json"));
        let mut args = vec!["serve".to_string()];
        for s in &sockets {
            args.extend(["--socket".into(), s.display().to_string()]);
        }
        args.extend(["--stats-json".into(), stats.display().to_string()]);
        let proc = Running::start(dir, name, "host-pair", &args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sockets.iter().all(|s| s.exists()) {
            assert!(Instant::now() < deadline, "{name}: no sockets");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            proc,
            sockets: sockets.map(|s| s.display().to_string()),
            stats,
        }
    }

    /// SIGTERM; the counters it wrote on the way out.
    fn finish(mut self) -> Value {
        let pid = nix::unistd::Pid::from_raw(self.proc.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        expect_success(
            &mut [&mut self.proc],
            Instant::now() + Duration::from_secs(10),
        );
        json(&self.stats)
    }
}

fn json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The number at a dotted `path` of `v` (array indices as numbers).
fn num(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |x, k| match k.parse::<usize>() {
            Ok(i) => &x[i],
            Err(_) => &x[k],
        })
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// An `sbnet-testpmd` called `name` with `args`, its summary to
/// `<name>.json`.
fn testpmd(dir: &Path, name: &str, args: &[&str]) -> (Running, PathBuf) {
    let out = dir.join(format!("{name}.json"));
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(
        [
            "--json",
            &out.display().to_string(),
            "--count",
            &COUNT.to_string(),
            "--stats-interval",
            "0",
            "--idle-timeout",
            "10",
            "--peer-timeout",
            "30",
            "--linger",
            "60",
        ]
        .map(String::from),
    );
    (Running::start(dir, name, "sbnet-testpmd", &a), out)
}

#[test]
fn a_forwards_through_b_to_c_copied_once_at_b_and_never_by_the_host() {
    let _serial = serial();
    let dir = temp_dir("pmd_chain");
    bin("host-pair");
    bin("sbnet-testpmd");
    let l1 = Link::serve(&dir, "link1");
    let l2 = Link::serve(&dir, "link2");
    // Receiver first, then the forwarder, then the sender: every port is
    // in its pair before the first frame exists.
    let (mut c, c_json) = testpmd(&dir, "c", &["--socket", &l2.sockets[1], "--mode", "rxonly"]);
    let (mut b, b_json) = testpmd(
        &dir,
        "b",
        &[
            "--socket",
            &l1.sockets[1],
            "--socket",
            &l2.sockets[0],
            "--mode",
            "forward",
        ],
    );
    let (mut a, a_json) = testpmd(&dir, "a", &["--socket", &l1.sockets[0], "--mode", "txonly"]);
    expect_success(
        &mut [&mut c, &mut b, &mut a],
        Instant::now() + Duration::from_secs(240),
    );
    let (h1, h2) = (l1.finish(), l2.finish());
    let (a, b, c) = (json(&a_json), json(&b_json), json(&c_json));
    let ctx = format!("A {a}\nB {b}\nC {c}\nlink1 {h1}\nlink2 {h2}");

    // Everything arrived, intact, once.
    assert_eq!(num(&a, "tx_packets"), COUNT, "{ctx}");
    assert_eq!(num(&c, "rx_packets"), COUNT, "{ctx}");
    assert_eq!(num(&c, "integrity_errors"), 0, "{ctx}");
    assert_eq!(num(&b, "dropped"), 0, "{ctx}");
    // One copy per frame at B, none anywhere else.
    assert_eq!(num(&b, "copies"), COUNT, "{ctx}");
    assert_eq!(num(&b, "ports.0.port.rx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&b, "ports.1.port.tx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&a, "port.tx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&c, "port.rx_zero_copy"), COUNT, "{ctx}");
    for (name, h) in [("link1", &h1), ("link2", &h2)] {
        assert_eq!(num(h, "sides.0.tx_zero_copy"), COUNT, "{name}\n{ctx}");
        for side in 0..2 {
            for k in ["tx_copied", "copied_bytes", "refusals"] {
                let path = format!("sides.{side}.{k}");
                assert_eq!(num(h, &path), 0, "{name} {path}\n{ctx}");
            }
        }
        assert_eq!(h["ledger"]["whole"], true, "{name}\n{ctx}");
    }
    // No slot lost or doubled on any port.
    assert_eq!(a["ledger"]["whole"], true, "{ctx}");
    assert_eq!(c["ledger"]["whole"], true, "{ctx}");
    for k in 0..2 {
        assert_eq!(b["ports"][k]["ledger"]["whole"], true, "B port {k}\n{ctx}");
    }
    eprintln!(
        "chain: {COUNT} frames A -> B -> C at {:.3} Mpps (C), {:.2} copies per frame at B, 0 on the links",
        c["mpps"].as_f64().unwrap_or(0.0),
        num(&b, "copies") as f64 / num(&c, "rx_packets") as f64
    );
}
