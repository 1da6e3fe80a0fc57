//! One `host-pair` serving many links (docs/many-links.md), with the real
//! binaries over real sockets:
//!
//! - a bad `--config` file: the error names the line and the field;
//! - two links from one `--config` on two switch threads, an
//!   `sbnet-testpmd` pair on each, traffic on both at once: each link's
//!   own counters, and the Prometheus file agrees with the JSON;
//! - the control socket: list, stats, add, remove; `remove` closes a
//!   connected client's socket; hostile control clients are answered and
//!   dropped while the service keeps answering others;
//! - links added and removed under traffic on another link: that link
//!   loses nothing, its epoch does not move and its ledger stays whole.

use sbnet_tests::{bin, temp_dir};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child with its stderr in a file, killed if still running when dropped.
struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, program: &str, args: &[String]) -> Self {
        let (child, stderr) = sbnet_tests::spawn_logged(name, dir, &bin(program), args);
        Self { child, stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit (until `deadline`); whether it succeeded.
    fn wait(&mut self, deadline: Instant) -> bool {
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.success();
            }
            assert!(
                Instant::now() < deadline,
                "still running at the deadline\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn term(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
        self.wait(Instant::now() + Duration::from_secs(20))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for(what: &str, deadline: Instant, mut ok: impl FnMut() -> bool) {
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not by the deadline");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the peer closed `c` (EOF, or a reset of a connection it never
/// accepted) rather than leaving it open until the read timeout.
fn closed(c: &mut UnixStream) -> bool {
    match c.read(&mut [0u8; 16]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `host-pair serve --config FILE` with `links` (name, socket dir) and
/// `extra` flags; waits for every socket and the control socket.
fn serve(dir: &Path, links: &[&str], extra: &[&str]) -> (Proc, PathBuf) {
    let mut cfg = String::from("[defaults]\nslots = 256\nqueue_size = 512\ntx_wait_us = 2000000\n");
    for l in links {
        cfg += &format!(
            "\n[[link]]\nname = \"{l}\"\nsockets = [\"{}\", \"{}\"]\n",
            s(&sock(dir, l, 0)),
            s(&sock(dir, l, 1))
        );
    }
    let file = dir.join("links.toml");
    std::fs::write(&file, cfg).unwrap();
    let control = dir.join("ctl.sock");
    let mut args = vec![
        "serve".to_string(),
        "--config".into(),
        s(&file),
        "--control".into(),
        s(&control),
        "--stats-json".into(),
        s(&dir.join("stats.json")),
        "--metrics-file".into(),
        s(&dir.join("metrics.prom")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let p = Proc::spawn(dir, "host-pair", "host-pair", &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    for l in links {
        for k in 0..2 {
            wait_for("socket", deadline, || sock(dir, l, k).exists());
        }
    }
    wait_for("control socket", deadline, || control.exists());
    (p, control)
}

fn sock(dir: &Path, link: &str, side: usize) -> PathBuf {
    dir.join(format!("{link}.{side}.sock"))
}

/// One request line, one reply line.
fn ctl(control: &Path, req: &str) -> Value {
    let mut c = UnixStream::connect(control).expect("connect control");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    let mut b = [0u8; 1];
    while c.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0] as char);
    }
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// `host-pair ctl` itself, for the CLI; its stdout as JSON and success.
fn ctl_cli(control: &Path, args: &[&str]) -> (Value, bool) {
    let mut a = vec!["ctl", "--control", control.to_str().unwrap()];
    a.extend(args);
    let o = Command::new(bin("host-pair")).args(&a).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (v, o.status.success())
}

fn link_stats(control: &Path, link: &str) -> Value {
    let v = ctl(control, &format!(r#"{{"cmd":"stats","link":"{link}"}}"#));
    assert_eq!(v["ok"], true, "{v}");
    v["links"][0].clone()
}

/// The number at JSON pointer `at` (`/sides/0/tx_packets`).
fn n(v: &Value, at: &str) -> u64 {
    v.pointer(at)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {at} in {v}"))
}

/// A txonly → rxonly pair of testpmds on `link`, `count` frames.
fn flow(dir: &Path, link: &str, count: u64) -> [(Proc, PathBuf); 2] {
    let c = count.to_string();
    flow_args(dir, link, [&["--count", &c], &["--count", &c]])
}

/// A txonly → rxonly pair of testpmds on `link`: the sender sends for
/// `secs` seconds, the receiver stays 10 s longer to take the last frames.
fn flow_for(dir: &Path, link: &str, secs: u64) -> [(Proc, PathBuf); 2] {
    let (tx, rx) = (secs.to_string(), (secs + 10).to_string());
    flow_args(
        dir,
        link,
        [
            &["--count", "0", "--duration", &tx],
            &["--count", "0", "--duration", &rx],
        ],
    )
}

/// The two testpmds of a flow, with `extra` arguments for the sender and
/// the receiver.
fn flow_args(dir: &Path, link: &str, extra: [&[&str]; 2]) -> [(Proc, PathBuf); 2] {
    let mk = |side: usize, mode: &str| {
        let json = dir.join(format!("{link}.{mode}.json"));
        let mut args: Vec<String> = [
            "--socket",
            &s(&sock(dir, link, side)),
            "--mode",
            mode,
            "--json",
            &s(&json),
            "--stats-interval",
            "0",
            "--idle-timeout",
            "20",
            "--peer-timeout",
            "60",
        ]
        .iter()
        .chain(extra[side])
        .map(|a| a.to_string())
        .collect();
        if mode == "txonly" {
            args.extend(["--linger".into(), "60".into()]);
        }
        (
            Proc::spawn(dir, &format!("{link}.{mode}"), "sbnet-testpmd", &args),
            json,
        )
    };
    [mk(0, "txonly"), mk(1, "rxonly")]
}

/// Waits for a flow's two testpmds; the receiver got all `count` frames intact.
fn finish(flow: &mut [(Proc, PathBuf); 2], count: u64, deadline: Instant) {
    assert_eq!(finish_counted(flow, deadline), count);
}

/// Waits for a flow's two testpmds; the receiver got every frame the
/// sender sent, intact. Returns how many that was.
fn finish_counted(flow: &mut [(Proc, PathBuf); 2], deadline: Instant) -> u64 {
    for (p, _) in flow.iter_mut() {
        assert!(p.wait(deadline), "testpmd failed\n{}", p.log());
    }
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (tx, rx) = (read(&flow[0].1), read(&flow[1].1));
    let sent = n(&tx, "/tx_packets");
    assert_eq!(n(&rx, "/rx_packets"), sent, "{rx}\n{tx}");
    assert_eq!(n(&rx, "/integrity_errors"), 0, "{rx}");
    sent
}

/// Parses the Prometheus text format: every sample's family has a TYPE
/// (and HELP) line before it, counters end in `_total`, labels are
/// `name="value"` pairs, values are numbers. Returns (name{labels}, value).
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed: std::collections::HashMap<String, String> = Default::default();
    let mut helped = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert!(kind != "counter" || name.ends_with("_total"), "{line}");
            assert!(
                typed.insert(name.into(), kind.into()).is_none(),
                "two TYPEs: {line}"
            );
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("sbnet_"), "{line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(
                typed.contains_key(name) && helped.contains(name),
                "no TYPE/HELP before {line}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for pair in inner.expect("braces").split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
            }
            out.push((series.to_string(), value.parse().expect("number")));
        }
    }
    out
}

#[test]
fn config_errors_name_the_line_and_the_field() {
    let d = temp_dir("links-cfg");
    let cases = [
        (
            "[[link]]\nname = \"a\"\nsockets = [\"/x/a0\", \"/x/a1\"]\n\nslotz = 64\n",
            ["line 5", "slotz"],
        ),
        (
            "[defaults]\nslots = 100\n[[link]]\nname = \"a\"\nsockets = [\"/x/a0\", \"/x/a1\"]\n",
            ["line 2", "field `slots`"],
        ),
        (
            "[[link]]\nname = \"a\"\nsockets = [\"/x/a0\", \"/x/a1\"]\n[[link]]\nname = \"a\"\nsockets = [\"/x/b0\", \"/x/b1\"]\n",
            ["line 5", "field `name`"],
        ),
        (
            "[[link]]\nname = \"a\"\nsockets = [\"/x/a0\", \"/x/a1\"]\n[[link]]\nname = \"b\"\nsockets = [\"/x/b0\", \"/x/a1\"]\n",
            ["line 6", "field `sockets`"],
        ),
        ("[[link]]\nname = \"a\"\n", ["line 1", "sockets"]),
        (
            "[[link]]\nname = \"a\"\nsockets = [\"/x/a0\", \"/x/a1\"]\nqueue_size = \"big\"\n",
            ["line 4", "field `queue_size`"],
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = d.join(format!("bad{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let o = Command::new(bin("host-pair"))
            .args(["serve", "--config", f.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{text}");
        for w in want {
            assert!(err.contains(w), "{text}\n{err:?} does not say {w:?}");
        }
    }
    let o = Command::new(bin("host-pair"))
        .args([
            "serve", "--config", "x.toml", "--socket", "a", "--socket", "b",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "--config and --socket together");
}

#[test]
fn two_links_two_threads_traffic_on_both_counters_per_link() {
    two_busy_links(2);
}

/// One switch thread for two busy links: each round polls both, so
/// neither starves.
#[test]
fn two_busy_links_on_one_thread_both_progress() {
    two_busy_links(1);
}

fn two_busy_links(threads: u64) {
    const COUNT: u64 = 300_000;
    bin("host-pair");
    bin("sbnet-testpmd");
    let d = temp_dir("links-two");
    let (mut hp, control) = serve(&d, &["ab", "cd"], &["--threads", &threads.to_string()]);
    let list = ctl(&control, r#"{"cmd":"list"}"#);
    let owners: Vec<u64> = (0..2)
        .map(|i| n(&list, &format!("/links/{i}/thread")))
        .collect();
    let want = if threads == 2 { [0, 1] } else { [0, 0] };
    assert_eq!(owners, want, "links spread over the switch threads: {list}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut flows = [flow(&d, "ab", COUNT), flow(&d, "cd", 2 * COUNT)];
    // Both links move frames. That neither starves the other while both
    // are busy is a property of the switch thread's round (one burst of
    // every link per round), tested deterministically in
    // `sbnet_device::pair::runner` (a_round_moves_one_burst_of_every_busy_link):
    // here the two flows start at times the machine's load decides, so
    // one may finish before the other starts.
    wait_for("both links moving", deadline, || {
        n(&link_stats(&control, "ab"), "/sides/1/rx_packets") > 0
            && n(&link_stats(&control, "cd"), "/sides/1/rx_packets") > 0
    });
    finish(&mut flows[0], COUNT, deadline);
    finish(&mut flows[1], 2 * COUNT, deadline);
    assert!(hp.term(), "host-pair exit\n{}", hp.log());
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("stats.json")).unwrap()).unwrap();
    assert!(doc.get("epoch").is_none(), "two links: no top-level pair");
    for (i, (name, count)) in [("ab", COUNT), ("cd", 2 * COUNT)].iter().enumerate() {
        let l = &doc["links"][i];
        assert_eq!(l["name"], *name, "{doc}");
        assert_eq!(n(l, "/sides/0/tx_packets"), *count, "{l}");
        assert_eq!(n(l, "/sides/1/rx_packets"), *count, "{l}");
        assert_eq!(n(l, "/sides/0/tx_zero_copy"), *count, "{l}");
        assert_eq!(l["ledger"]["whole"], true, "{l}");
    }
    // The metrics file parses and says what the JSON says.
    let text = std::fs::read_to_string(d.join("metrics.prom")).unwrap();
    let samples: std::collections::HashMap<String, f64> =
        parse_prometheus(&text).into_iter().collect();
    for l in doc["links"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        for side in 0..2 {
            let c = &l["sides"][side];
            let ls = format!("link=\"{name}\",side=\"{side}\"");
            for (series, json) in [
                (
                    format!("sbnet_packets_total{{{ls},dir=\"tx\"}}"),
                    n(c, "/tx_packets"),
                ),
                (
                    format!("sbnet_packets_total{{{ls},dir=\"rx\"}}"),
                    n(c, "/rx_packets"),
                ),
                (
                    format!("sbnet_bytes_total{{{ls},dir=\"rx\"}}"),
                    n(c, "/rx_bytes"),
                ),
                (
                    format!("sbnet_tx_path_total{{{ls},path=\"zero_copy\"}}"),
                    n(c, "/tx_zero_copy"),
                ),
                (
                    format!("sbnet_gifts_sent_total{{{ls}}}"),
                    n(c, "/gifts_sent"),
                ),
                (format!("sbnet_kicks_total{{{ls}}}"), n(c, "/kicks")),
                (
                    format!("sbnet_ledger_owned{{{ls}}}"),
                    n(l, &format!("/ledger/sides/{side}/owned")),
                ),
            ] {
                let got = samples
                    .get(&series)
                    .unwrap_or_else(|| panic!("no {series}\n{text}"));
                assert_eq!(*got as u64, json, "{series}");
            }
        }
        assert_eq!(
            samples[&format!("sbnet_epoch{{link=\"{name}\"}}")] as u64,
            n(l, "/epoch")
        );
        assert_eq!(
            samples[&format!("sbnet_ledger_whole{{link=\"{name}\"}}")],
            1.0
        );
    }
}

#[test]
fn control_list_stats_add_remove_and_hostile_clients() {
    bin("host-pair");
    let d = temp_dir("links-ctl");
    let (mut hp, control) = serve(&d, &["a"], &[]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&control).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // add: validated like the file, then live.
    let bad = ctl(
        &control,
        &format!(
            r#"{{"cmd":"add","link":"b","sockets":["{}","{}"],"params":{{"slots":100}}}}"#,
            s(&sock(&d, "b", 0)),
            s(&sock(&d, "b", 1))
        ),
    );
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("slots"), "{bad}");
    let dup = ctl(
        &control,
        &format!(
            r#"{{"cmd":"add","link":"b","sockets":["{}","{}"]}}"#,
            s(&sock(&d, "a", 0)),
            s(&sock(&d, "b", 1))
        ),
    );
    assert!(
        dup["error"].as_str().unwrap().contains("already a socket"),
        "{dup}"
    );
    let (v, ok) = ctl_cli(
        &control,
        &[
            "add",
            "b",
            "--socket",
            &s(&sock(&d, "b", 0)),
            "--socket",
            &s(&sock(&d, "b", 1)),
            "--slots",
            "64",
            "--queue-size",
            "256",
            "--queue-pairs",
            "2",
        ],
    );
    assert!(ok, "{v}");
    assert!(sock(&d, "b", 0).exists() && sock(&d, "b", 1).exists());
    let (list, ok) = ctl_cli(&control, &["list"]);
    assert!(ok);
    assert_eq!(list["links"][1]["name"], "b", "{list}");
    assert_eq!(list["links"][1]["params"]["slots"], 64, "{list}");
    let (st, ok) = ctl_cli(&control, &["stats", "b"]);
    assert!(ok, "{st}");
    assert_eq!(n(&st, "/links/0/ledger/slots"), 64, "{st}");
    assert_eq!(list["links"][1]["params"]["queue_pairs"], 2, "{list}");
    assert_eq!(
        st.pointer("/links/0/sides/1/queues")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2),
        "a counter object per queue pair: {st}"
    );
    assert!(!ctl_cli(&control, &["stats", "nope"]).1);

    // remove behaves like an unplug: a connected client sees EOF.
    let mut client = UnixStream::connect(sock(&d, "b", 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (v, ok) = ctl_cli(&control, &["remove", "b"]);
    assert!(ok, "{v}");
    assert!(closed(&mut client), "the client's socket closed");
    assert!(!sock(&d, "b", 0).exists(), "socket file removed");
    assert!(!ctl_cli(&control, &["remove", "b"]).1, "removed twice");

    // Hostile clients: garbage, a huge line, half a line, silence. Each
    // gets a JSON error and its connection closed; meanwhile the service
    // answers others at once.
    let mut silent = UnixStream::connect(&control).unwrap();
    let mut half = UnixStream::connect(&control).unwrap();
    half.write_all(br#"{"cmd":"li"#).unwrap();
    let garbage = ctl(&control, "\u{1}\u{2}not json");
    assert_eq!(garbage["ok"], false, "{garbage}");
    let mut huge = UnixStream::connect(&control).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = huge.write_all(&vec![b'x'; 200_000]);
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.contains("longer than"), "{answer:?}");
    let t = Instant::now();
    let list = ctl(&control, r#"{"cmd":"list"}"#);
    assert_eq!(list["ok"], true);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered while others hang"
    );
    drop(half);
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(answer.contains("no complete request"), "{answer:?}");
    // At most 16 clients at once: the 17th is told so and closed; the
    // places come back when the clients leave.
    let idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&control).unwrap())
        .collect();
    let full_deadline = Instant::now() + Duration::from_secs(4);
    wait_for("the 17th client refused", full_deadline, || {
        let mut extra = UnixStream::connect(&control).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        answer.contains("too many control clients")
    });
    drop(idle);
    // The server frees a place when it sees its client gone, after the
    // client's close: the request that gets an answer again is the one
    // checked (another right after it may still find the places taken).
    let mut a = Value::Null;
    wait_for(
        "places back",
        Instant::now() + Duration::from_secs(20),
        || {
            a = ctl(&control, r#"{"cmd":"stats","link":"a"}"#);
            a["ok"] == true
        },
    );
    assert_eq!(a["links"][0]["ledger"]["whole"], true, "{a}");
    assert!(hp.term(), "{}", hp.log());
    assert!(!control.exists(), "control socket removed at exit");
}

#[test]
fn links_added_and_removed_under_traffic_on_another_link() {
    // Traffic for a fixed time, not a fixed count: how fast a count is
    // reached depends on the machine, and the cycles must happen while
    // main's traffic runs.
    const SECS: u64 = 8;
    bin("host-pair");
    bin("sbnet-testpmd");
    let d = temp_dir("links-churn");
    let (mut hp, control) = serve(&d, &["main"], &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut f = flow_for(&d, "main", SECS);
    wait_for("traffic on main", deadline, || {
        n(&link_stats(&control, "main"), "/sides/1/rx_packets") > 0
    });
    let before = link_stats(&control, "main");
    let mut cycles = 0;
    let mut during = before.clone();
    while cycles < 6 && f.iter_mut().all(|(p, _)| p.running()) {
        let name = format!("x{cycles}");
        let add = ctl(
            &control,
            &format!(
                r#"{{"cmd":"add","link":"{name}","sockets":["{}","{}"],"params":{{"slots":64,"queue_size":256}}}}"#,
                s(&sock(&d, &name, 0)),
                s(&sock(&d, &name, 1))
            ),
        );
        assert_eq!(add["ok"], true, "{add}");
        // A client on the new link, unplugged by the remove.
        let mut c = UnixStream::connect(sock(&d, &name, 1)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let rm = ctl(&control, &format!(r#"{{"cmd":"remove","link":"{name}"}}"#));
        assert_eq!(rm["ok"], true, "{rm}");
        assert!(closed(&mut c), "the client's socket closed");
        let now = link_stats(&control, "main");
        // Only counted while main's drivers are both still up.
        if f.iter_mut().all(|(p, _)| p.running()) {
            during = now;
            cycles += 1;
        }
    }
    assert!(
        cycles >= 2,
        "only {cycles} add/remove cycles while main's traffic ran"
    );
    assert_eq!(
        n(&during, "/epoch"),
        n(&before, "/epoch"),
        "main's epoch moved\n{before}\n{during}"
    );
    assert!(n(&during, "/sides/0/tx_packets") >= n(&before, "/sides/0/tx_packets"));
    let sent = finish_counted(&mut f, deadline);
    assert!(sent > 0);
    let end = link_stats(&control, "main");
    assert_eq!(n(&end, "/sides/0/tx_packets"), sent, "{end}");
    assert_eq!(n(&end, "/sides/1/rx_packets"), sent, "{end}");
    assert_eq!(end["ledger"]["whole"], true, "{end}");
    for side in 0..2 {
        assert_eq!(n(&end, &format!("/sides/{side}/refusals")), 0, "{end}");
    }
    assert!(hp.term(), "{}", hp.log());
    // One link left: the JSON file keeps the one-pair fields on top.
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("stats.json")).unwrap()).unwrap();
    assert_eq!(doc["links"].as_array().map(|l| l.len()), Some(1), "{doc}");
    assert_eq!(doc["sides"], doc["links"][0]["sides"], "{doc}");
}
