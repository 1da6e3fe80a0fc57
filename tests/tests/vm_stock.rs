//! The two-VM test with the stock Linux `virtio_net` driver in both guests
//! (issue 4, part 1). It runs `tests/vm/run-stock-pair.sh`, which builds or
//! checks the VM kit (`tests/vm/build-kit.sh`), starts `host-pair`, boots two
//! QEMU guests (TCG) on its vfio-user sockets, pings and sends a few MB from
//! guest A to guest B and compares checksums and host-pair's counters.
//!
//! This test is never skipped silently: without root, or when the kit cannot
//! be built, it fails with the reason. Set `SBNET_SKIP_VM=1` to skip it.
//! Other knobs are passed through to the harness (`SBNET_VM_DIR`,
//! `SBNET_VM_TIMEOUT`, `SBNET_VM_BYTES`, `SBNET_HOST_PAIR`, ...); see the
//! header of `tests/vm/run-stock-pair.sh`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The whole test, kit build (cold: 40-90 s) and host-pair build included.
const WALL_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The harness's own bound for booting the guests and running the traffic.
const RUN_TIMEOUT_SECS: u32 = 300;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Waits for `child` at most until `deadline`; on timeout it sends SIGTERM
/// (the harness's trap then stops QEMU and host-pair), then SIGKILL.
fn wait_bounded(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(st) = child.try_wait().expect("waiting for the harness") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let grace = Instant::now() + Duration::from_secs(15);
            while Instant::now() < grace {
                if child.try_wait().expect("waiting for the harness").is_some() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_logged(cmd: &mut Command, log: &Path, deadline: Instant) -> (Option<ExitStatus>, String) {
    let out = File::create(log).expect("creating the harness log");
    let err = out.try_clone().expect("cloning the log handle");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let status = wait_bounded(&mut child, deadline);
    let mut text = String::new();
    File::open(log)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("reading the harness log");
    (status, text)
}

#[test]
fn two_vms_stock_virtio_net() {
    if std::env::var("SBNET_SKIP_VM").as_deref() == Ok("1") {
        eprintln!("vm_stock: skipped (SBNET_SKIP_VM=1)");
        println!("skipped (SBNET_SKIP_VM=1)");
        return;
    }
    let uid = effective_uid();
    assert_eq!(
        uid,
        Some(0),
        "the two-VM test needs root (debootstrap, chroot, unshare, QEMU); effective uid is {uid:?}. \
         Run the tests as root, or set SBNET_SKIP_VM=1 to skip this test explicitly."
    );

    let start = Instant::now();
    let deadline = start + WALL_LIMIT;
    let root = repo_root();
    let logdir = std::env::temp_dir().join(format!("sbnet-vm-stock-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).expect("creating a log directory");

    // host-pair, release build, unless the caller names a binary.
    let host_pair = match std::env::var_os("SBNET_HOST_PAIR") {
        Some(p) => PathBuf::from(p),
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let log = logdir.join("cargo-build.log");
            let (st, text) = run_logged(
                Command::new(cargo)
                    .args(["build", "--release", "-p", "host-pair"])
                    .current_dir(&root),
                &log,
                deadline,
            );
            assert!(
                st.is_some_and(|s| s.success()),
                "cargo build --release -p host-pair failed ({st:?}):\n{text}"
            );
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("release").join("host-pair")
        }
    };
    assert!(
        host_pair.is_file(),
        "host-pair binary {} does not exist",
        host_pair.display()
    );

    let script = root.join("tests/vm/run-stock-pair.sh");
    let log = logdir.join("run-stock-pair.log");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(&root)
        .env("SBNET_HOST_PAIR", &host_pair);
    if std::env::var_os("SBNET_VM_TIMEOUT").is_none() {
        cmd.env("SBNET_VM_TIMEOUT", RUN_TIMEOUT_SECS.to_string());
    }
    let (status, text) = run_logged(&mut cmd, &log, deadline);
    // Shown by libtest on failure, or always with --nocapture.
    println!("{text}");
    let elapsed = start.elapsed().as_secs_f64();
    let verdict = text
        .lines()
        .rev()
        .find(|l| l.starts_with("SBNET-VM-TEST:"))
        .unwrap_or("")
        .to_string();

    let Some(status) = status else {
        panic!(
            "the two-VM test did not finish within {} s and was stopped; harness log above (and in {})",
            WALL_LIMIT.as_secs(),
            log.display()
        );
    };
    match status.code() {
        Some(0) if verdict.starts_with("SBNET-VM-TEST: PASS") => {
            eprintln!("vm_stock: {verdict} (test wall time {elapsed:.1} s)");
            let _ = std::fs::remove_dir_all(&logdir);
        }
        Some(2) => panic!(
            "the VM kit or the harness could not be set up (this is a failure, not a skip; set SBNET_SKIP_VM=1 to skip): {}\nfull log: {}",
            verdict.trim_start_matches("SBNET-VM-TEST: FAIL "),
            log.display()
        ),
        _ => panic!(
            "two-VM stock virtio_net test failed ({status}): {}\nfull log: {}",
            if verdict.is_empty() { "no verdict line from the harness" } else { verdict.trim_start_matches("SBNET-VM-TEST: FAIL ") },
            log.display()
        ),
    }
}
