//! Shared runner of the two-VM tests that drive the PMD in a guest
//! (`vm_pmd.rs`, `vm_mixed.rs`): it builds `host-pair` and `sbnet-testpmd`
//! (release), runs `tests/vm/run-pmd-pair.sh SCENARIO` with a wall-clock
//! bound, shows the harness's log and turns its verdict line
//! (`SBNET-VM-TEST: PASS|FAIL ...`) and exit status into the test result.
//!
//! Skipped, with the reason on stderr, when the tests do not run as root,
//! when the VM kit cannot be built here (the harness exits with status 3),
//! or with `SBNET_SKIP_VM=1`. `SBNET_REQUIRE_VM=1` (set by
//! `scripts/test.sh`, which CI runs) turns every such skip into a failure,
//! so nothing is skipped silently where it matters.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The whole test: a cold kit build (40-90 s), the release builds and the run.
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

/// Waits for `child` at most until `deadline`; on timeout SIGTERM (the
/// harness's trap stops QEMU and host-pair), then SIGKILL.
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

/// `cargo build --release -p PACKAGE --bin BIN` unless `env_var` names a
/// binary; returns the binary's path.
fn release_binary(
    env_var: &str,
    package: &str,
    bin: &str,
    logdir: &Path,
    deadline: Instant,
) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} does not exist", p.display());
        return p;
    }
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let log = logdir.join(format!("cargo-build-{bin}.log"));
    let (st, text) = run_logged(
        Command::new(cargo)
            .args(["build", "--release", "-p", package, "--bin", bin])
            .current_dir(&root),
        &log,
        deadline,
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "cargo build --release -p {package} --bin {bin} failed ({st:?}):\n{text}"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("release").join(bin);
    assert!(
        path.is_file(),
        "{} does not exist after the build",
        path.display()
    );
    path
}

/// Whether `SBNET_REQUIRE_VM=1`: a VM test that cannot run fails.
fn vm_required() -> bool {
    std::env::var("SBNET_REQUIRE_VM").as_deref() == Ok("1")
}

/// The test cannot run here: with `SBNET_REQUIRE_VM=1` that is a failure,
/// otherwise the test is skipped with `why` on stderr (written past
/// libtest's capture, so it shows in a passing run).
fn skip(test: &str, why: &str) {
    if vm_required() {
        panic!("{test}: {why}; SBNET_REQUIRE_VM=1 forbids skipping the two-VM test");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED: {why} (SBNET_REQUIRE_VM=1 makes this a failure)"
    );
    println!("skipped: {why}");
}

/// Runs a VM harness script (relative to the repository) with `args`,
/// bounded by [`WALL_LIMIT`], and asserts its `SBNET-VM-TEST: PASS` verdict.
/// host-pair (and, with `testpmd`, sbnet-testpmd) are built in release
/// unless `SBNET_HOST_PAIR` / `SBNET_TESTPMD` name binaries. Skips (see
/// the module documentation) when the test cannot run here.
pub fn run_harness(test: &str, script: &str, args: &[&str], testpmd: bool) {
    if std::env::var("SBNET_SKIP_VM").as_deref() == Ok("1") {
        return skip(test, "SBNET_SKIP_VM=1");
    }
    let uid = effective_uid();
    if uid != Some(0) {
        return skip(
            test,
            &format!(
                "the two-VM test needs root (debootstrap, chroot, unshare, QEMU); effective uid is {}",
                uid.map_or("unknown".to_string(), |u| u.to_string())
            ),
        );
    }

    let start = Instant::now();
    let deadline = start + WALL_LIMIT;
    let root = repo_root();
    let logdir = std::env::temp_dir().join(format!("sbnet-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).expect("creating a log directory");

    let host_pair = release_binary(
        "SBNET_HOST_PAIR",
        "host-pair",
        "host-pair",
        &logdir,
        deadline,
    );
    let script = root.join(script);
    let log = logdir.join("harness.log");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(args)
        .current_dir(&root)
        .env("SBNET_HOST_PAIR", &host_pair);
    if testpmd {
        let testpmd = release_binary(
            "SBNET_TESTPMD",
            "sbnet-testpmd",
            "sbnet-testpmd",
            &logdir,
            deadline,
        );
        cmd.env("SBNET_TESTPMD", testpmd);
    }
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
            "{test}: the two-VM test did not finish within {} s and was stopped; harness log above (and in {})",
            WALL_LIMIT.as_secs(),
            log.display()
        );
    };
    match status.code() {
        Some(0) if verdict.starts_with("SBNET-VM-TEST: PASS") => {
            eprintln!("{test}: {verdict} (test wall time {elapsed:.1} s)");
            let _ = std::fs::remove_dir_all(&logdir);
        }
        Some(3) => {
            skip(
                test,
                &format!(
                    "no VM kit can be built here: {}; harness log: {}",
                    verdict.trim_start_matches("SBNET-VM-TEST: SKIP "),
                    log.display()
                ),
            );
        }
        Some(2) => panic!(
            "{test}: the harness could not be set up (this is a failure, not a skip): {}\nfull log: {}",
            verdict.trim_start_matches("SBNET-VM-TEST: FAIL "),
            log.display()
        ),
        _ => panic!(
            "{test}: two-VM test failed ({status}): {}\nfull log: {}",
            if verdict.is_empty() {
                "no verdict line from the harness"
            } else {
                verdict.trim_start_matches("SBNET-VM-TEST: FAIL ")
            },
            log.display()
        ),
    }
}
