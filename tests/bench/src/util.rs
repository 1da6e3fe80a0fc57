//! Processes, logs, files and the machine.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when dropped, so nothing outlives a
/// failed run.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// The command line, as a person would type it.
    pub cmdline: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Quotes one word for a shell, when it needs it.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `taskset -c CPUS PROGRAM ARGS...`, as a printable command line.
pub fn cmdline(cpus: &str, prog: &Path, args: &[String]) -> String {
    let mut v = vec![
        "taskset".to_string(),
        "-c".to_string(),
        cpus.to_string(),
        prog.display().to_string(),
    ];
    v.extend(args.iter().cloned());
    v.iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts `prog args` pinned to `cpus` with stdout and stderr in `log`.
pub fn spawn(name: &str, cpus: &str, prog: &Path, args: &[String], log: &Path) -> Result<Proc> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {} (is taskset installed?)", prog.display()))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log: log.to_path_buf(),
        cmdline: cmdline(cpus, prog, args),
    })
}

impl Proc {
    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited early ({st}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(12)
            );
        }
        Ok(())
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits up to `t` for the exit; true when it exited.
    pub fn wait_timeout(&mut self, t: Duration) -> Result<bool> {
        let end = Instant::now() + t;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            if Instant::now() > end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a successful exit within `t`.
    pub fn finish(&mut self, t: Duration) -> Result<()> {
        if !self.wait_timeout(t)? {
            bail!(
                "{} did not finish within {t:?}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(12)
            );
        }
        let st = self.child.wait()?;
        if !st.success() {
            bail!(
                "{} failed ({st}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(12)
            );
        }
        Ok(())
    }

    /// SIGINT (SIGKILL after `t`), whatever the exit status.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal, t: Duration) {
        self.signal(sig);
        if !self.wait_timeout(t).unwrap_or(false) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits until the log contains `needle` (fails if the process exits
    /// or `t` passes first).
    pub fn wait_log(&mut self, needle: &str, t: Duration) -> Result<()> {
        let what = format!("{needle:?}");
        self.wait_until(&what, Duration::from_millis(20), t, |l| {
            l.contains(needle).then_some(())
        })
    }

    /// The whole log.
    pub fn read_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Reads the log every `poll` until `found` returns something (fails
    /// if the process exits or `t` passes first); `what` names it.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        poll: Duration,
        t: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let end = Instant::now() + t;
        loop {
            if let Some(v) = found(&self.read_log()) {
                return Ok(v);
            }
            self.check_alive()?;
            if Instant::now() > end {
                bail!(
                    "{} did not print {what} within {t:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.tail(12)
                );
            }
            std::thread::sleep(poll);
        }
    }
}

/// Waits for a path to appear.
pub fn wait_for(path: &Path, t: Duration, who: &mut Proc) -> Result<()> {
    let end = Instant::now() + t;
    while !path.exists() {
        who.check_alive()?;
        if Instant::now() > end {
            bail!("{} did not appear within {t:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Reads a JSON file.
pub fn json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A number from a JSON object (0 when missing).
pub fn num(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0)
}

/// CPU time counters of the whole machine: (busy, total) jiffies.
pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return (0, 0);
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    (total - idle, total)
}

/// Share of both CPUs busy over `t` (0..=1): what other programs use
/// while none of the benchmark's processes run.
pub fn background_busy(t: Duration) -> f64 {
    let (b0, t0) = cpu_jiffies();
    std::thread::sleep(t);
    let (b1, t1) = cpu_jiffies();
    if t1 <= t0 {
        return 0.0;
    }
    (b1 - b0) as f64 / (t1 - t0) as f64
}

/// Waits (up to `max_wait`) until the machine is quieter than `limit`;
/// returns the last measured background load.
pub fn wait_quiet(limit: f64, max_wait: Duration) -> f64 {
    let end = Instant::now() + max_wait;
    loop {
        let b = background_busy(Duration::from_millis(400));
        if b <= limit || Instant::now() > end {
            return b;
        }
    }
}

/// Runs a command and returns its stdout (empty on failure).
pub fn capture(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A failed run: keeps the first error in `slot` and returns the
/// progress line's text (`FAILED: ` and the error's first line).
pub fn failed(e: &anyhow::Error, slot: &mut Option<String>) -> String {
    let msg = format!("{e:#}");
    let first = msg.lines().next().unwrap_or("").to_string();
    slot.get_or_insert(msg);
    format!("FAILED: {first}")
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s CPU times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a system constant; it has no memory
    // arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all of its threads), in clock ticks, from
/// `/proc/PID/stat`; `None` when the process is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

/// utime + stime from the text of a `/proc/PID/stat` (fields 14 and 15;
/// the command name in field 2 may hold spaces and parentheses).
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The summed CPU ticks of `pids`; `None` when one of them is gone.
pub fn cpu_ticks_all(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_with_spaces_and_parentheses() {
        let s = "4242 (a b) c)) R 1 4242 4242 0 -1 4194304 100 0 0 0 1234 567 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_stat_ticks(s), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("4242 (x) R 1 2"), None);
    }

    #[test]
    fn own_cpu_time_grows_while_spinning() {
        let me = std::process::id();
        let a = cpu_ticks(me).expect("own stat");
        let end = Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = cpu_ticks(me).expect("own stat");
        assert!(b > a, "{a} -> {b}");
        assert!(cpu_ticks_all(&[me, u32::MAX]).is_none());
    }
}
