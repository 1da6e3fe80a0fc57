//! How far apart two CPUs are: the round trip of one cache line between
//! them.
//!
//! On a virtual machine the hypervisor decides where its virtual CPUs run,
//! and may move them while a benchmark runs. On the 2-CPU machines these
//! benchmarks were developed on, a cache line went from CPU 0 to CPU 1 and
//! back in about 60 ns at some moments and about 330 ns at others (two
//! virtual CPUs on one core complex, or on two): every system whose
//! parties talk across the two CPUs through shared rings slows down with
//! it. The benchmark probes before and after each run and reports both, so
//! a reader can tell a slow run from a far placement.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Round trips per probe: about 6 ms on near CPUs, 35 ms on far ones.
const ROUND_TRIPS: u64 = 100_000;
/// A probe that takes longer than this (a CPU given to other work) is
/// abandoned.
const LIMIT: Duration = Duration::from_millis(500);

/// A cache line of its own.
#[repr(align(128))]
struct Line(AtomicU64);

/// The mean round trip of one cache line between CPUs `a` and `b`, in
/// nanoseconds: a thread on `a` writes an odd number, a thread on `b`
/// answers with the next even one. None if either thread cannot be pinned
/// or the probe does not finish within half a second.
pub fn line_round_trip(a: usize, b: usize) -> Option<f64> {
    let line = Line(AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let answer = sc.spawn(|| {
            pin(b)?;
            for i in 0..ROUND_TRIPS {
                while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    std::hint::spin_loop();
                }
                line.0.store(2 * i + 2, Ordering::Release);
            }
            Some(())
        });
        let ask = sc.spawn(|| {
            let pinned = pin(a);
            let start = Instant::now();
            let mut done = pinned.is_some();
            let mut i = 0;
            while done && i < ROUND_TRIPS {
                line.0.store(2 * i + 1, Ordering::Release);
                let mut spins = 0u32;
                while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(4096) && start.elapsed() > LIMIT {
                        done = false;
                        break;
                    }
                    std::hint::spin_loop();
                }
                i += 1;
            }
            let t = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            done.then(|| t.as_nanos() as f64 / ROUND_TRIPS as f64)
        });
        let t = ask.join().ok().flatten();
        // The answering thread sees `stop` once the asking one gave up.
        answer.join().ok().flatten().and(t)
    })
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Option<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).ok()?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ok()
}

/// The first CPU of a taskset list such as `1` or `0,1` or `2-3`.
pub fn first_cpu(list: &str) -> Option<usize> {
    list.split([',', '-']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_on_one_cpu_or_two_gives_a_time() {
        // The machines this runs on have two CPUs or more.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            let t = line_round_trip(0, 1).expect("two CPUs answer");
            assert!(t > 0.0 && t < 5_000_000.0, "{t} ns");
        }
        assert_eq!(first_cpu("2-3"), Some(2));
        assert_eq!(first_cpu("1,0"), Some(1));
        assert_eq!(first_cpu("x"), None);
    }

    #[test]
    fn a_cpu_that_does_not_exist_gives_none() {
        assert_eq!(line_round_trip(0, 4096), None);
    }
}
