//! The operator's view of `host-pair`: argument errors that say what to do,
//! a socket in use, a missing directory, counters on SIGUSR1, and a clean
//! SIGTERM shutdown that removes the sockets and writes the counters.

use sbnet_tests::{bin, temp_dir};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    Command::new(bin("host-pair"))
        .args(args)
        .output()
        .expect("run host-pair")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_exists(p: &std::path::Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).expect("signal");
}

fn wait_exit(c: &mut Child) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < end, "host-pair did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_arguments_say_what_to_do() {
    let d = temp_dir("cli-args");
    let a = d.join("a.sock");
    let a = a.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--socket", a], "exactly two --socket"),
        (&["serve", "--socket", a, "--socket", a], "are the same"),
        (
            &[
                "serve",
                "--socket",
                a,
                "--socket",
                "/nonexistent-dir/b.sock",
            ],
            "does not exist",
        ),
        (
            &[
                "serve", "--socket", a, "--socket", "b.sock", "--slots", "100",
            ],
            "power of two",
        ),
        (
            &[
                "serve",
                "--socket",
                a,
                "--socket",
                "b.sock",
                "--slot-size",
                "1000",
            ],
            "slot size",
        ),
        (
            &[
                "serve",
                "--socket",
                a,
                "--socket",
                "b.sock",
                "--queue-size",
                "100",
            ],
            "--queue-size",
        ),
        (
            &[
                "serve",
                "--socket",
                a,
                "--socket",
                "b.sock",
                "--hugetlbfs",
                "/nonexistent",
            ],
            "use --huge-pages",
        ),
        (
            &[
                "serve", "--socket", a, "--socket", "b.sock", "--slots", "2048",
            ],
            "raise --queue-size",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            stderr(&o).contains(want),
            "{args:?}: {:?} does not mention {want:?}",
            stderr(&o)
        );
    }
    let o = run(&["serve", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for word in [
        "--socket",
        "--slots",
        "--slot-size",
        "--poll",
        "--stats-json",
        "vfio-user-pci",
        "SIGUSR1",
    ] {
        assert!(help.contains(word), "--help does not mention {word}");
    }
}

#[test]
fn serve_signals_and_clean_shutdown() {
    let d = temp_dir("cli-serve");
    let (a, b, j) = (d.join("a.sock"), d.join("b.sock"), d.join("stats.json"));
    let mut c = Command::new(bin("host-pair"))
        .args([
            "serve",
            "--socket",
            a.to_str().unwrap(),
            "--socket",
            b.to_str().unwrap(),
            "--stats-json",
            j.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_exists(&a);
    wait_exists(&b);
    // A second instance on the same socket is refused, and leaves it alone.
    let o = run(&[
        "serve",
        "--socket",
        a.to_str().unwrap(),
        "--socket",
        d.join("c.sock").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("another server is listening"),
        "{}",
        stderr(&o)
    );
    assert!(a.exists());
    signal(&c, nix::sys::signal::Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    // SIGUSR1 also writes the JSON, while host-pair runs.
    let live: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).expect("JSON on SIGUSR1")).unwrap();
    assert_eq!(live["ledger"]["whole"], true, "{live}");
    signal(&c, nix::sys::signal::Signal::SIGTERM);
    let st = wait_exit(&mut c);
    assert!(st.success(), "exit status {st}");
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.matches("side 0:").count() >= 2,
        "counters on SIGUSR1 and at exit: {err}"
    );
    assert!(!a.exists() && !b.exists(), "sockets removed");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(stats["sides"].as_array().map(|s| s.len()), Some(2));
    assert!(stats["sides"][0].get("tx_zero_copy").is_some());
    assert_eq!(stats["sides"][0]["refusals"].as_u64(), Some(0));
    // No driver: every slot is nobody's, and the ledger is whole.
    let l = &stats["ledger"];
    assert_eq!(l["slots"].as_u64(), Some(512), "{l}");
    assert_eq!(l["nobody"].as_u64(), Some(512), "{l}");
    assert_eq!(l["total"].as_u64(), Some(512), "{l}");
    assert_eq!(l["whole"], true, "{l}");
    assert!(
        err.contains("ledger: side 0 owns 0") && err.contains("total 512 of 512 slots: whole"),
        "ledger line: {err}"
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let d = temp_dir("cli-stale");
    let a = d.join("a.sock");
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&a).unwrap());
    assert!(a.exists());
    let mut c = Command::new(bin("host-pair"))
        .args([
            "serve",
            "--socket",
            a.to_str().unwrap(),
            "--socket",
            d.join("b.sock").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_exists(&d.join("b.sock"));
    assert!(
        std::os::unix::net::UnixStream::connect(&a).is_ok(),
        "serving on the replaced socket"
    );
    signal(&c, nix::sys::signal::Signal::SIGINT);
    assert!(wait_exit(&mut c).success());
}
