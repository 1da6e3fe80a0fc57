//! Processes for the tests that run the real binaries over several links
//! (`pmd_chain`, `pmd_mq`): `host-pair serve` per link, `sbnet-testpmd`
//! per port, their JSON summaries.

use sbnet_tests::bin;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A process whose stderr goes to `<dir>/<name>.log`; killed when dropped.
pub struct Running {
    name: String,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Running {
    pub fn start(dir: &Path, name: &str, program: &str, args: &[String]) -> Self {
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
pub fn expect_success(ps: &mut [&mut Running], deadline: Instant) {
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
pub struct Link {
    proc: Running,
    /// The two sockets, side 0 and side 1.
    pub sockets: [String; 2],
    stats: PathBuf,
}

impl Link {
    pub fn serve(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let sockets = [0, 1].map(|k| dir.join(format!("{name}-{k}.sock")));
        let stats = dir.join(format!("{name}.json"));
        let mut args = vec!["serve".to_string()];
        for s in &sockets {
            args.extend(["--socket".into(), s.display().to_string()]);
        }
        args.extend(["--stats-json".into(), stats.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
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
    pub fn finish(mut self) -> Value {
        let pid = nix::unistd::Pid::from_raw(self.proc.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        expect_success(
            &mut [&mut self.proc],
            Instant::now() + Duration::from_secs(10),
        );
        json(&self.stats)
    }
}

pub fn json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The number at a dotted `path` of `v` (array indices as numbers).
pub fn num(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |x, k| match k.parse::<usize>() {
            Ok(i) => &x[i],
            Err(_) => &x[k],
        })
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// An `sbnet-testpmd` called `name` with `args` and `--count count`, its
/// summary to `<name>.json`.
pub fn testpmd(dir: &Path, name: &str, count: u64, args: &[&str]) -> (Running, PathBuf) {
    let out = dir.join(format!("{name}.json"));
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(
        [
            "--json",
            &out.display().to_string(),
            "--count",
            &count.to_string(),
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
