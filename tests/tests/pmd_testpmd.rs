//! Flows with the real binaries over real vfio-user sockets.
//!
//! - A one-way flow of 1,000,000 packets (`host-pair serve` and two
//!   `sbnet-testpmd`, txonly → rxonly): side 1 only receives, so only
//!   gifts keep side 0 supplied with slots (rule 6). Exactly 1,000,000
//!   delivered, no integrity error, no copy, gifts > 0, no stall (each
//!   testpmd fails after 5 s without progress, the whole run after 120 s).
//! - Mixed and classic pairs with `sbnet-testpmd --classic`, and the
//!   largest frame of 64 KiB slots both ways. The host's counters show one
//!   copy per frame where the path copies, none where it does not.
//! - `sbnet-testpmd rxonly` counts every frame its port delivers, also
//!   those that arrive while it waits for its peer.
//!
//! The same flows with two in-process ports are in `pmd_flows`.

mod pmd_common;

use pmd_common::sockets::{pair_cfg, serial};
use sbnet_device::pair::PollMode;
use sbnet_tests::{bin, temp_dir, SocketPair};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------

/// A child process with its stderr in a file; killed if still running
/// when dropped (a failed assertion leaves nothing behind).
struct Proc {
    name: String,
    child: Child,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, program: &Path, args: &[String]) -> Self {
        let (child, stderr) = sbnet_tests::spawn_logged(name, dir, program, args);
        Self {
            name: name.into(),
            child,
            stderr,
            status: None,
        }
    }

    /// The last lines of its stderr.
    fn tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- {} stderr (tail) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until every process has exited, polling their exit status; past
/// `deadline` it fails with their stderr.
fn wait_all(procs: &mut [&mut Proc], deadline: Instant, what: &str) {
    loop {
        if procs.iter_mut().all(|p| p.poll().is_some()) {
            return;
        }
        if Instant::now() >= deadline {
            let tails: Vec<String> = procs.iter().map(|p| p.tail()).collect();
            panic!(
                "{what}: still running at the deadline\n{}",
                tails.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exists(p: &Path, deadline: Instant) {
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `host-pair serve` on two sockets in `dir`, with `extra` arguments.
struct HostPair {
    proc: Proc,
    sockets: [PathBuf; 2],
    stats: PathBuf,
}

impl HostPair {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let sockets = [dir.join("side0.sock"), dir.join("side1.sock")];
        let stats = dir.join("host-pair.json");
        let mut args: Vec<String> = vec!["serve".into()];
        for s in &sockets {
            args.push("--socket".into());
            args.push(s.display().to_string());
        }
        args.push("--stats-json".into());
        args.push(stats.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("host-pair", dir, &bin("host-pair"), &args);
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in &sockets {
            wait_exists(s, deadline);
        }
        Self {
            proc,
            sockets,
            stats,
        }
    }

    /// Waits until host-pair logs that side `k`'s driver is up (a pairing
    /// epoch change with side `k` active).
    fn wait_driver_ok(&self, k: usize, deadline: Instant) {
        let want = format!("side{k}=(true");
        loop {
            let log = std::fs::read_to_string(&self.proc.stderr).unwrap_or_default();
            if strip_ansi(&log)
                .lines()
                .any(|l| l.contains("pairing epoch changed") && l.contains(&want))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "side {k} never came up\n{}",
                self.proc.tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, wait, and the final counters.
    fn stop(mut self) -> Value {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        wait_all(&mut [&mut self.proc], deadline, "host-pair after SIGTERM");
        let st = self.proc.status.expect("exited");
        assert!(
            st.success(),
            "host-pair exit status {st}\n{}",
            self.proc.tail()
        );
        read_json(&self.stats)
    }
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_json(p: &Path) -> Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}: {s}", p.display()))
}

/// An `sbnet-testpmd` on `socket`.
fn testpmd(dir: &Path, name: &str, socket: &Path, args: &[&str]) -> (Proc, PathBuf) {
    let json = dir.join(format!("{name}.json"));
    let mut a: Vec<String> = vec![
        "--socket".into(),
        socket.display().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--stats-interval".into(),
        "0".into(),
        "--idle-timeout".into(),
        "5".into(),
        "--peer-timeout".into(),
        "20".into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    (Proc::spawn(name, dir, &bin("sbnet-testpmd"), &a), json)
}

fn n(v: &Value, path: &str) -> u64 {
    let mut x = v;
    for k in path.split('.') {
        x = match k.parse::<usize>() {
            Ok(i) => &x[i],
            Err(_) => &x[k],
        };
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// Every frame arrived once (the caller checked the count), so each
/// sequence number skipped was made up by one late arrival; only a
/// deferred delivery (DESIGN rule 5, `tx_deferred`) may arrive late.
fn in_order_but_for_deferrals(rx: &Value, host: &Value, from: usize, ctx: &str) {
    let (gaps, late) = (n(rx, "gaps"), n(rx, "reordered"));
    let deferred = n(host, &format!("sides.{from}.tx_deferred"));
    assert_eq!(
        gaps, late,
        "skipped sequence numbers that never came\n{ctx}"
    );
    assert!(
        late <= deferred,
        "{late} frames arrived late, only {deferred} deliveries were deferred\n{ctx}"
    );
}

/// Refusal counters of one side in host-pair's JSON.
fn refusals(host: &Value, side: usize) -> u64 {
    [
        "bad_chain",
        "bad_slot_ref",
        "tx_not_owner",
        "rx_post_not_peer_owned",
        "rx_post_duplicate",
        "frame_too_big",
        "bad_gift",
        "needs_reset",
    ]
    .iter()
    .map(|k| n(host, &format!("sides.{side}.{k}")))
    .sum()
}

/// A sender (txonly) on side `from` and a receiver (rxonly) on the other
/// side of one host-pair.
struct OneWay<'a> {
    tag: &'a str,
    host_args: &'a [&'a str],
    from: usize,
    count: u64,
    frame: usize,
    tx_extra: &'a [&'a str],
    rx_extra: &'a [&'a str],
    limit: Duration,
}

/// Runs it; returns (host counters, sender summary, receiver summary).
fn one_way_run(r: &OneWay) -> (Value, Value, Value) {
    let OneWay {
        tag,
        host_args,
        from,
        count,
        frame,
        tx_extra,
        rx_extra,
        limit,
    } = *r;
    let dir = temp_dir(tag);
    // Build both binaries before any clock starts.
    bin("host-pair");
    bin("sbnet-testpmd");
    let started = Instant::now();
    let host = HostPair::start(&dir, host_args);
    let count_s = count.to_string();
    let frame_s = frame.to_string();
    let common = [
        "--count",
        count_s.as_str(),
        "--frame-size",
        frame_s.as_str(),
    ];
    let mut rx_args = vec!["--mode", "rxonly"];
    rx_args.extend(common);
    rx_args.extend(rx_extra);
    let mut tx_args = vec!["--mode", "txonly", "--linger", "60"];
    tx_args.extend(common);
    tx_args.extend(tx_extra);
    let to = 1 - from;
    // The sender first: the receiver is in sync with the pair before any
    // frame can reach it. The deadline starts after the spawn: `testpmd`
    // may build the binary first. It is generous: a loaded CI machine can
    // take seconds to start a process, and a passing run never waits it out.
    let (mut tx, tx_json) = testpmd(&dir, "txonly", &host.sockets[from], &tx_args);
    let up = Instant::now() + Duration::from_secs(60);
    host.wait_driver_ok(from, up);
    let (mut rx, rx_json) = testpmd(&dir, "rxonly", &host.sockets[to], &rx_args);
    wait_all(
        &mut [&mut rx, &mut tx],
        started + limit,
        &format!("{tag}: {count} frames of {frame} B from side {from}"),
    );
    let h = host.stop();
    // The receiver writes its summary even when it fails: say first what
    // it counted against what its port delivered.
    if let Ok(text) = std::fs::read_to_string(&rx_json) {
        let v: Value = serde_json::from_str(&text).expect("rxonly JSON");
        let (got, port) = (n(&v, "rx_packets"), n(&v, "port.rx_packets"));
        assert!(
            got == count && port == count,
            "{tag}: rxonly counted {got} of {count} frames (gaps {}, integrity errors {}) and its port \
             delivered {port}{}\nhost-pair: {h}\n{}",
            n(&v, "gaps"),
            n(&v, "integrity_errors"),
            if port > got {
                ": the application lost frames the port had delivered"
            } else {
                ""
            },
            rx.tail()
        );
    }
    for p in [&mut rx, &mut tx] {
        let st = p.status.expect("exited");
        assert!(
            st.success(),
            "{tag}: {} failed ({st})\n{}",
            p.name,
            p.tail()
        );
    }
    (h, read_json(&tx_json), read_json(&rx_json))
}

// ---------------------------------------------------------------------
// (a) One million packets, one way, zero-copy
// ---------------------------------------------------------------------

#[test]
fn one_way_million_packets_zero_copy_kept_alive_by_gifts() {
    let _serial = serial();
    const COUNT: u64 = 1_000_000;
    bin("host-pair");
    bin("sbnet-testpmd");
    let started = Instant::now();
    let (h, tx, rx) = one_way_run(&OneWay {
        tag: "million",
        host_args: &[],
        from: 0,
        count: COUNT,
        frame: 64,
        tx_extra: &[],
        rx_extra: &[],
        limit: Duration::from_secs(120),
    });
    let took = started.elapsed();
    let ctx = format!("host {h}\ntxonly {tx}\nrxonly {rx}");
    assert_eq!(n(&rx, "rx_packets"), COUNT, "delivered\n{ctx}");
    assert_eq!(n(&rx, "integrity_errors"), 0, "{ctx}");
    in_order_but_for_deferrals(&rx, &h, 0, &ctx);
    assert_eq!(n(&tx, "tx_packets"), COUNT, "{ctx}");
    // The receiver never sent a packet: only gifts went back.
    assert_eq!(n(&rx, "port.tx_packets"), 0, "{ctx}");
    assert_eq!(n(&rx, "port.rx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(n(&tx, "port.tx_zero_copy"), COUNT, "{ctx}");
    for k in ["port.rx_copied", "port.tx_copied"] {
        assert_eq!(n(&rx, k) + n(&tx, k), 0, "{k}\n{ctx}");
    }
    assert!(n(&rx, "port.gifts_sent") > 0, "side 1 gifted\n{ctx}");
    assert!(n(&tx, "port.gifts_received") > 0, "side 0 got gifts\n{ctx}");
    // The host agrees: a million slots handed over, nothing copied.
    assert_eq!(n(&h, "sides.0.tx_packets"), COUNT, "{ctx}");
    assert_eq!(n(&h, "sides.0.tx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(n(&h, "sides.1.rx_packets"), COUNT, "{ctx}");
    for side in 0..2 {
        assert_eq!(n(&h, &format!("sides.{side}.tx_copied")), 0, "{ctx}");
        assert_eq!(n(&h, &format!("sides.{side}.copied_bytes")), 0, "{ctx}");
        assert_eq!(refusals(&h, side), 0, "side {side} refusals\n{ctx}");
    }
    assert!(n(&h, "sides.1.gifts_sent") > 0, "{ctx}");
    assert_eq!(
        n(&h, "sides.1.gifts_sent"),
        n(&h, "sides.0.gifts_received"),
        "{ctx}"
    );
    eprintln!(
        "1,000,000 frames one way in {took:.2?} (receiver: {:.3} Mpps, {} gifts)",
        rx["mpps"].as_f64().unwrap_or(0.0),
        n(&h, "sides.1.gifts_sent")
    );
}

// ---------------------------------------------------------------------
// The same with the binaries: --classic, and the largest 64 KiB-slot frame
// ---------------------------------------------------------------------

/// host-pair arguments of the testpmd runs below: a classic frame waits up
/// to 2 s (not 20 ms) for the receiver's buffer. A receiver announces
/// itself (`DRIVER_OK`) before it posts its receive buffers; a sender that
/// starts at once must not lose its first frames because a loaded machine
/// delayed the receiver by more than the default wait.
const WAIT: &[&str] = &["--tx-wait-us", "2000000"];

/// testpmd flows through host-pair, one direction per run: integrity at the
/// receiver, and the host's counters show what the path must (copies or
/// none).
fn testpmd_flow(
    tag: &str,
    host_args: &[&str],
    from: usize,
    frame: usize,
    tx_classic: bool,
    rx_classic: bool,
) {
    // About 30 MB (small frames) to 330 MB (64 KiB frames) each way.
    let count: u64 = if frame > 2048 { 5_000 } else { 20_000 };
    let tx_extra: &[&str] = if tx_classic { &["--classic"] } else { &[] };
    let rx_extra: &[&str] = if rx_classic { &["--classic"] } else { &[] };
    let (h, tx, rx) = one_way_run(&OneWay {
        tag,
        host_args,
        from,
        count,
        frame,
        tx_extra,
        rx_extra,
        limit: Duration::from_secs(60),
    });
    let to = 1 - from;
    let ctx = format!("{tag}: host {h}\ntxonly {tx}\nrxonly {rx}");
    assert_eq!(n(&rx, "rx_packets"), count, "{ctx}");
    assert_eq!(n(&rx, "integrity_errors"), 0, "{ctx}");
    in_order_but_for_deferrals(&rx, &h, from, &ctx);
    assert_eq!(n(&h, &format!("sides.{from}.tx_packets")), count, "{ctx}");
    assert_eq!(n(&h, &format!("sides.{to}.rx_packets")), count, "{ctx}");
    assert_eq!(
        n(&h, &format!("sides.{to}.rx_bytes")),
        count * frame as u64,
        "{ctx}"
    );
    let copied = tx_classic || rx_classic;
    let (zc, cp, bytes) = (
        n(&h, &format!("sides.{from}.tx_zero_copy")),
        n(&h, &format!("sides.{from}.tx_copied")),
        n(&h, &format!("sides.{from}.copied_bytes")),
    );
    if copied {
        assert_eq!((zc, cp), (0, count), "every frame copied once\n{ctx}");
        assert_eq!(bytes, count * (frame as u64 + 12), "{ctx}");
        assert_eq!(n(&rx, "port.rx_copied"), count, "{ctx}");
    } else {
        assert_eq!((zc, cp, bytes), (count, 0, 0), "no copy\n{ctx}");
        assert_eq!(n(&rx, "port.rx_zero_copy"), count, "{ctx}");
    }
    for side in 0..2 {
        assert_eq!(refusals(&h, side), 0, "side {side}\n{ctx}");
    }
}

#[test]
fn testpmd_mixed_classic_sender_to_zero_copy_capable_receiver() {
    let _serial = serial();
    testpmd_flow("tp-mixed-a", WAIT, 0, 1500, true, false);
}

#[test]
fn testpmd_mixed_zero_copy_capable_sender_to_classic_receiver() {
    let _serial = serial();
    testpmd_flow("tp-mixed-b", WAIT, 1, 1500, false, true);
}

#[test]
fn testpmd_classic_both_sides() {
    let _serial = serial();
    testpmd_flow("tp-classic", WAIT, 0, 1500, true, true);
}

#[test]
fn testpmd_largest_frame_of_64k_slots_both_ways() {
    let _serial = serial();
    let args = [
        "--slot-size",
        "65536",
        "--slots",
        "64",
        "--queue-size",
        "256",
        WAIT[0],
        WAIT[1],
    ];
    for from in 0..2 {
        testpmd_flow("tp-64k", &args, from, 65536 - 12, false, false);
    }
}

/// sbnet-testpmd's receiver must count every frame its port delivers,
/// including those that arrive while it still waits for its peer. The
/// receiver (rxonly, classic) is up with receive buffers posted and waits
/// for a peer; it is stopped (SIGSTOP) while it waits, a sender delivers
/// all its frames, and the receiver continues (SIGCONT).
#[test]
fn testpmd_rxonly_counts_frames_that_arrive_while_it_waits_for_its_peer() {
    let _serial = serial();
    const COUNT: u64 = 50;
    let dir = temp_dir("tp-waiting");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(2048, 256),
        PollMode::Adaptive { spin: 2000 },
    );
    let count = COUNT.to_string();
    let common = [
        "--classic",
        "--count",
        count.as_str(),
        "--frame-size",
        "100",
    ];
    let mut rx_args = vec!["--mode", "rxonly"];
    rx_args.extend(common);
    let (mut rx, rx_json) = testpmd(&dir, "rxonly", &p.sockets[1], &rx_args);
    // Up, with receive buffers posted (nobody takes them: no peer yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let mut g = p.shared.lock();
            let posted = g.fns[1]
                .queue_mut(sbnet_abi::net::RX_QUEUE)
                .and_then(|q| q.avail_pending().ok())
                .unwrap_or(0);
            if g.fns[1].is_active() && posted > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rxonly never came up\n{}",
            rx.tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rx.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut tx_args = vec!["--mode", "txonly", "--linger", "30"];
    tx_args.extend(common);
    let (mut tx, _) = testpmd(&dir, "txonly", &p.sockets[0], &tx_args);
    // Every frame delivered into the stopped receiver's buffers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.shared.lock().fns[1].counters.rx_packets < COUNT {
        assert!(
            Instant::now() < deadline,
            "frames not delivered: host {}\n{}",
            p.shared.lock().fns[1].counters,
            tx.tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rx.signal(nix::sys::signal::Signal::SIGCONT);
    wait_all(
        &mut [&mut rx, &mut tx],
        Instant::now() + Duration::from_secs(40),
        "tp-waiting",
    );
    let v = read_json(&rx_json);
    let (got, port) = (n(&v, "rx_packets"), n(&v, "port.rx_packets"));
    assert!(
        got == COUNT && rx.status.is_some_and(|s| s.success()),
        "rxonly counted {got} of the {COUNT} frames its port delivered ({port}): the frames taken \
         while it waited for its peer were freed uncounted and unchecked (gaps {}); exit status {:?}\n{}",
        n(&v, "gaps"),
        rx.status,
        rx.tail()
    );
}
