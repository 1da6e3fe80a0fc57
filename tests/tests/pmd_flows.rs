//! Flows over real vfio-user sockets.
//!
//! - A one-way flow of 1,000,000 packets with the real binaries
//!   (`host-pair serve` and two `sbnet-testpmd`, txonly → rxonly): side 1
//!   only receives, so only gifts keep side 0 supplied with slots (rule 6).
//!   Exactly 1,000,000 delivered, no integrity error, no copy, gifts > 0,
//!   no stall (each testpmd fails after 5 s without progress, the whole run
//!   after 120 s).
//! - Byte-exact delivery at 64 B, 1500 B and the largest frame a slot holds
//!   (slot size − 12), both directions, for 2 KiB and 64 KiB slots: two
//!   [`Port`]s over [`VfioUserBus`] against [`SocketPair`] (servers and
//!   switch thread in-process, `PollMode::Adaptive`), every frame compared
//!   byte for byte, host counters checked per flow.
//! - A mixed pair (one side classic, the other zero-copy capable, so copy
//!   mode), both ways, in-process and with `sbnet-testpmd --classic`; and a
//!   classic-only pair. The host's counters show one copy per frame.
//! - `sbnet-testpmd rxonly` counts every frame its port delivers, also
//!   those that arrive while it waits for its peer.

mod pmd_common;

use pmd_common::{fill_frame, Flows};
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::counters::SideCounters;
use sbnet_device::pair::{PairConfig, PollMode};
use sbnet_device::switch::{Mode as HostMode, SwitchConfig, NOBODY};
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig};
use sbnet_tests::{bin, temp_dir, SocketPair};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

type VP = Port<VfioUserBus>;

/// The tests of this file run one at a time: each one keeps both cores
/// busy (polling switch and drivers), and the stall detectors of the
/// binaries must not fire because a neighbour test took the CPU.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

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
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(program)
            .args(args)
            .env("SBNET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
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
    let up = Instant::now() + Duration::from_secs(20);
    // The sender first: the receiver is in sync with the pair before any
    // frame can reach it.
    let (mut tx, tx_json) = testpmd(&dir, "txonly", &host.sockets[from], &tx_args);
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
// In-process flows over the sockets, byte for byte
// ---------------------------------------------------------------------

fn pair_cfg(slot_size: u32, slots: u32) -> PairConfig {
    PairConfig {
        geometry: SlotGeometry::new(slot_size, slots).expect("geometry"),
        max_queue_size: 256,
        switch: SwitchConfig::default(),
        shm_dir: None,
    }
}

fn port_cfg(classic: bool) -> PortConfig {
    PortConfig {
        classic_only: classic,
        rx_queue_size: 256,
        tx_queue_size: 256,
        ..PortConfig::default()
    }
}

/// Two ports over the sockets of a running [`SocketPair`], both up and in
/// the mode their negotiation gives.
fn open_pair(p: &SocketPair, classic: [bool; 2]) -> [VP; 2] {
    let open = |k: usize| {
        let bus = VfioUserBus::connect(&p.sockets[k]).expect("connect");
        Port::open(bus, port_cfg(classic[k])).unwrap_or_else(|e| panic!("side {k}: open: {e}"))
    };
    let mut ports = [open(0), open(1)];
    // Side 0 learns about side 1 from a flushed receive buffer or an
    // epoch read; run both until their modes match the pair.
    let want = match classic {
        [false, false] => [Mode::ZeroCopy, Mode::ZeroCopy],
        [true, false] => [Mode::Classic, Mode::Copy],
        [false, true] => [Mode::Copy, Mode::Classic],
        [true, true] => [Mode::Classic, Mode::Classic],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    loop {
        for (k, port) in ports.iter_mut().enumerate() {
            port.poll_epoch()
                .unwrap_or_else(|e| panic!("side {k}: poll_epoch: {e}"));
            let got = port.rx_burst(&mut out).expect("rx_burst");
            assert_eq!(got, 0, "side {k}: a packet before anything was sent");
        }
        let epoch = p.shared.lock().epoch();
        if [0, 1].iter().all(|&k| ports[k].mode() == want[k])
            && ports
                .iter()
                .all(|q| q.mode() == Mode::Classic || q.epoch() == epoch)
        {
            return ports;
        }
        assert!(
            Instant::now() < deadline,
            "modes {:?} {:?}, wanted {want:?}",
            ports[0].mode(),
            ports[1].mode()
        );
        std::thread::yield_now();
    }
}

/// Sends `lens.len()` frames from side `x` to the other side and checks
/// every one byte for byte; the receiver frees them. `slots`: whether they
/// must arrive in slots (zero-copy) or classic buffers.
fn flow(ports: &mut [VP; 2], x: usize, lens: &[usize], flows: &mut Flows, slots: bool) {
    let y = 1 - x;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0;
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    while next < lens.len() || !flows.in_flight[x].is_empty() {
        assert!(
            Instant::now() < deadline,
            "side {x} → {y}: {next} of {} frames sent, {} not delivered after 60 s; side {x} {} side {y} {}",
            lens.len(),
            flows.in_flight[x].len(),
            ports[x].stats().to_json(),
            ports[y].stats().to_json()
        );
        let mut moved = false;
        let mut burst = Vec::new();
        let mut expect = Vec::new();
        while next + burst.len() < lens.len() && burst.len() < 32 {
            let Some(mut p) = ports[x].alloc() else { break };
            let len = lens[next + burst.len()];
            p.set_len(len)
                .unwrap_or_else(|e| panic!("side {x}: set_len({len}): {e}"));
            let seq = flows.next_seq[x] + burst.len() as u32;
            fill_frame(ports[x].data_mut(&mut p), x as u8, seq);
            expect.push((seq, ports[x].data(&p).to_vec()));
            burst.push(Some(p));
        }
        let sent = ports[x]
            .tx_burst(&mut burst)
            .unwrap_or_else(|e| panic!("side {x}: tx_burst: {e}"));
        for (i, (seq, bytes)) in expect.into_iter().enumerate() {
            if i < sent {
                flows.in_flight[x].insert(seq, bytes);
            } else {
                let p = burst[i].take().expect("unsent packet stays");
                ports[x].free(p);
            }
        }
        next += sent;
        flows.next_seq[x] += sent as u32;
        flows.sent[x] += sent as u64;
        moved |= sent > 0;
        // The sender receives too (gifts, transmit completions); no packet.
        let got = ports[x]
            .rx_burst(&mut out)
            .unwrap_or_else(|e| panic!("side {x}: rx_burst: {e}"));
        assert_eq!(got, 0, "side {x} received a packet in a one-way flow");
        let got = ports[y]
            .rx_burst(&mut out)
            .unwrap_or_else(|e| panic!("side {y}: rx_burst: {e}"));
        for p in out[..got].iter_mut().filter_map(Option::take) {
            assert_eq!(p.is_slot(), slots, "side {y}: slot packet {}", p.is_slot());
            flows
                .received(y, &p, &ports[y])
                .unwrap_or_else(|e| panic!("{e}"));
            ports[y].free(p);
        }
        moved |= got > 0;
        if !moved {
            std::thread::yield_now();
        }
    }
}

fn counters(p: &SocketPair) -> [SideCounters; 2] {
    let g = p.shared.lock();
    [g.fns[0].counters, g.fns[1].counters]
}

/// What the host must have counted for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ZeroCopy,
    Copied,
}

/// Runs `frames` frames of `len` bytes from `x`, checks them byte for
/// byte and the host's counters for exactly this flow.
fn checked_flow(
    p: &SocketPair,
    ports: &mut [VP; 2],
    flows: &mut Flows,
    x: usize,
    len: usize,
    frames: usize,
    path: Via,
) {
    let y = 1 - x;
    let before = counters(p);
    let lens = vec![len; frames];
    flow(ports, x, &lens, flows, path == Via::ZeroCopy);
    let after = counters(p);
    let d = |k: usize, f: fn(&SideCounters) -> u64| f(&after[k]) - f(&before[k]);
    let what = format!(
        "{frames} × {len} B from side {x} ({path:?}): host side {x} {} / side {y} {}",
        after[x], after[y]
    );
    let count = frames as u64;
    assert_eq!(d(x, |c| c.tx_packets), count, "{what}");
    assert_eq!(d(y, |c| c.rx_packets), count, "{what}");
    assert_eq!(d(y, |c| c.rx_bytes), count * len as u64, "{what}");
    match path {
        Via::ZeroCopy => {
            assert_eq!(d(x, |c| c.tx_zero_copy), count, "{what}");
            assert_eq!(d(x, |c| c.tx_copied), 0, "{what}");
            assert_eq!(d(x, |c| c.copied_bytes), 0, "{what}");
        }
        Via::Copied => {
            assert_eq!(d(x, |c| c.tx_copied), count, "{what}");
            assert_eq!(d(x, |c| c.tx_zero_copy), 0, "{what}");
            assert_eq!(
                d(x, |c| c.copied_bytes),
                count * (len as u64 + 12),
                "{what}"
            );
        }
    }
    for (k, c) in after.iter().enumerate() {
        assert_eq!(c.refusals(), 0, "side {k}: {c}");
        assert_eq!(d(k, |c| c.rx_no_buffer + c.tx_no_peer), 0, "side {k}: {c}");
    }
    assert!(
        flows.reordered[x] <= after[x].tx_deferred,
        "{what}: {} frames reordered with {} deferred deliveries",
        flows.reordered[x],
        after[x].tx_deferred
    );
}

/// Frame sizes of (b): 64 B, 1500 B and the largest a slot holds.
fn sizes(slot_size: u32) -> [usize; 3] {
    [64, 1500, slot_size as usize - 12]
}

fn zero_copy_sizes(slot_size: u32, slots: u32, frames: usize) {
    let dir = temp_dir("flows-zc");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(slot_size, slots),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut ports = open_pair(&p, [false, false]);
    assert_eq!(p.shared.lock().switch.mode(), HostMode::ZeroCopy);
    let mut flows = Flows::default();
    for len in sizes(slot_size) {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, frames, Via::ZeroCopy);
        }
    }
    // Once nothing moves any more, every slot is owned by exactly one
    // port, the one the host says.
    settle_sockets(&p, &mut ports);
    let g = p.shared.lock();
    let owners = g.switch.owners().to_vec();
    let deferred: Vec<u32> = (0..2).flat_map(|k| g.switch.deferred(k)).collect();
    drop(g);
    assert!(deferred.is_empty(), "deferred after settling: {deferred:?}");
    for s in 0..slots {
        let own = [ports[0].owns_slot(s), ports[1].owns_slot(s)];
        let host = owners[s as usize];
        assert!(
            own[0] != own[1] && own[host as usize],
            "slot {s}: side 0 owns {}, side 1 owns {}, host says side {host}",
            own[0],
            own[1]
        );
    }
    for (k, port) in ports.iter().enumerate() {
        port.check_ledger()
            .unwrap_or_else(|e| panic!("side {k}: {e}"));
    }
}

/// Runs both ports until neither does anything for a good while (the
/// switch thread polls on its own; a port's burst reaps, gifts and posts).
fn settle_sockets(p: &SocketPair, ports: &mut [VP; 2]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    let mut quiet = 0;
    let activity = |port: &VP| sbnet_pmd::Stats {
        epoch_polls: 0,
        ..port.stats()
    };
    while quiet < 2000 {
        assert!(
            Instant::now() < deadline,
            "the pair never settled: host {:?}",
            counters(p)
        );
        let before = [activity(&ports[0]), activity(&ports[1])];
        for (k, port) in ports.iter_mut().enumerate() {
            let got = port.rx_burst(&mut out).expect("rx_burst");
            assert_eq!(got, 0, "side {k}: a packet nobody sent");
        }
        if [activity(&ports[0]), activity(&ports[1])] == before {
            quiet += 1;
            std::thread::yield_now();
        } else {
            quiet = 0;
        }
    }
}

#[test]
fn byte_exact_zero_copy_both_ways_2k_slots() {
    let _serial = serial();
    // 64, 1500 and 2036 B.
    zero_copy_sizes(2048, 256, 3000);
}

#[test]
fn byte_exact_zero_copy_both_ways_64k_slots() {
    let _serial = serial();
    // 64, 1500 and 65524 B.
    zero_copy_sizes(65536, 64, 500);
}

/// One side classic (no shared buffers), the other zero-copy capable: the
/// latter runs in copy mode; every frame is copied once, both ways.
fn mixed(classic_side: usize) {
    let dir = temp_dir("flows-mixed");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(2048, 256),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut classic = [false, false];
    classic[classic_side] = true;
    let mut ports = open_pair(&p, classic);
    let sb = 1 - classic_side;
    {
        let g = p.shared.lock();
        assert_eq!(g.switch.mode(), HostMode::Copy);
        assert!(
            g.switch.owners().iter().all(|&o| o as usize == sb),
            "copy mode: the shared-buffers side owns every slot"
        );
    }
    let mut flows = Flows::default();
    // The classic side's receive buffers hold 2048 bytes: 2036-byte frames.
    for len in [64, 1500, 2036] {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, 300, Via::Copied);
        }
    }
    let port = &ports[sb];
    assert_eq!(port.mode(), Mode::Copy);
    assert!(
        (0..256).all(|s| port.owns_slot(s)),
        "copy mode: every sent slot came back: {:?}",
        port.stats().slots
    );
    assert_eq!(port.stats().tx_zero_copy + port.stats().rx_zero_copy, 0);
}

#[test]
fn mixed_pair_side_0_classic() {
    let _serial = serial();
    mixed(0);
}

#[test]
fn mixed_pair_side_1_classic() {
    let _serial = serial();
    mixed(1);
}

#[test]
fn classic_only_pair() {
    let _serial = serial();
    let dir = temp_dir("flows-classic");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(2048, 256),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut ports = open_pair(&p, [true, true]);
    {
        let g = p.shared.lock();
        assert_eq!(g.switch.mode(), HostMode::Copy);
        assert!(
            g.switch.owners().iter().all(|&o| o == NOBODY),
            "no slot has an owner"
        );
    }
    let mut flows = Flows::default();
    for len in [64, 1500, 2036] {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, 300, Via::Copied);
        }
    }
    for port in &ports {
        assert_eq!(port.mode(), Mode::Classic);
        assert_eq!(port.slot_count(), 0);
    }
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
