//! The data-plane runner: what every thread of a running pair shares
//! ([`Shared`]: the pair behind one lock, the wake-up eventfd, the stop
//! flag) and the polling loop ([`run_switch`]).
//!
//! Locking: the control plane (one thread per socket) takes the lock per
//! vfio-user message; the data plane takes it once per polling round (a
//! burst per direction), never per packet. A control thread announces
//! itself in `control_waiting` so that a busy data plane steps aside.

use super::Pair;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What every thread of a running pair shares.
#[derive(Debug)]
pub struct Shared {
    pair: Mutex<Pair>,
    wake: EventFd,
    control_waiting: AtomicUsize,
    /// Set to stop the data plane and the servers.
    pub stop: AtomicBool,
}

impl Shared {
    /// Wraps a pair for the threads.
    pub fn new(pair: Pair) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            pair: Mutex::new(pair),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            control_waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }))
    }

    /// Locks the pair for a control operation (not the data plane).
    pub fn lock(&self) -> MutexGuard<'_, Pair> {
        // Relaxed is enough: the counter is a hint for the data plane to yield.
        self.control_waiting.fetch_add(1, Ordering::Relaxed);
        let g = self.pair.lock().unwrap_or_else(|p| p.into_inner());
        self.control_waiting.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// Wakes the data plane.
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }
}

/// How the data plane waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep (lowest latency; burns a core).
    Busy,
    /// Spin for `spin` idle rounds, then ask for kicks and sleep until one arrives.
    Adaptive {
        /// Idle rounds before sleeping.
        spin: u32,
    },
}

/// The data-plane loop: polls the pair until `shared.stop` is set.
pub fn run_switch(shared: &Shared, mode: PollMode) {
    let mut idle: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.control_waiting.load(Ordering::Relaxed) > 0 {
            std::thread::yield_now();
        }
        let (work, waiting) = {
            let mut p = shared.pair.lock().unwrap_or_else(|p| p.into_inner());
            // Every round: a queue enabled since the last one gets the flag
            // too (a load per queue; the store only when it changes).
            p.set_polling(true);
            (p.poll(), p.switch.has_waiting())
        };
        if work > 0 {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        let spin = match mode {
            PollMode::Busy => u32::MAX,
            PollMode::Adaptive { spin } => spin,
        };
        if idle < spin {
            if idle.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        // About to sleep: ask for kicks, then look once more so a packet
        // made available before the flag was cleared is not missed.
        {
            let mut p = shared.pair.lock().unwrap_or_else(|p| p.into_inner());
            p.set_polling(false);
            if p.poll() > 0 {
                idle = 0;
                continue;
            }
        }
        let timeout = if waiting { 1u16 } else { 100 };
        let mut fds = [nix::poll::PollFd::new(
            shared.wake.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout));
        let _ = shared.wake.read();
        idle = 0;
    }
}

/// Sleeps up to `d` or until `stop` is set, in short steps.
pub fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}
