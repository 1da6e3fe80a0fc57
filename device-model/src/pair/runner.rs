//! The data-plane runner: what every thread of a running pair shares
//! ([`Shared`]: the pair behind one lock, the wake-up eventfd, the stop
//! flag), the polling loop of one pair ([`run_switch`]) and of a switch
//! thread that owns several links ([`run_links`] over a [`LinkSet`]).
//!
//! Locking: the control plane (one thread per socket) takes the lock per
//! vfio-user message; the data plane takes it once per polling round (a
//! burst per direction), never per packet. A control thread announces
//! itself in `control_waiting` so that a busy data plane steps aside.

use super::Pair;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// The data-plane loop of one pair: polls it until `shared.stop` is set.
pub fn run_switch(shared: &Shared, mode: PollMode) {
    drive(&mut One(shared), mode);
}

/// The links one switch thread polls. The control plane adds and removes
/// links at runtime; the thread notices through a generation counter it
/// loads once per round, and takes the lock only when it changed.
#[derive(Debug)]
pub struct LinkSet {
    links: Mutex<Vec<Arc<Shared>>>,
    generation: AtomicU64,
    wake: EventFd,
    stop: AtomicBool,
}

impl LinkSet {
    /// An empty set.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            links: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
        }))
    }

    fn change(&self, f: impl FnOnce(&mut Vec<Arc<Shared>>) -> bool) -> bool {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let changed = f(&mut links);
        if changed {
            // Release, under the lock: pairs with the Acquire load in
            // `Owned::refresh`; a thread that sees the new generation then
            // locks and reads at least this list.
            self.generation.fetch_add(1, Ordering::Release);
        }
        drop(links);
        let _ = self.wake.write(1);
        changed
    }

    /// Adds a link; the thread polls it from its next round.
    pub fn add(&self, link: Arc<Shared>) {
        self.change(|l| {
            l.push(link);
            true
        });
    }

    /// Removes a link (the same `Arc`); whether it was in the set. The
    /// thread drops its reference at its next round.
    pub fn remove(&self, link: &Arc<Shared>) -> bool {
        self.change(|l| {
            let before = l.len();
            l.retain(|x| !Arc::ptr_eq(x, link));
            l.len() != before
        })
    }

    /// How many links the set holds.
    pub fn len(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the set holds no link.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the thread running [`run_links`] on this set.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
    }
}

/// The data-plane loop of a switch thread that owns several links: one
/// burst-limited `Pair::poll` per link and round, so a busy link cannot
/// starve another. In adaptive mode the thread sleeps only when every link
/// is idle, in one poll(2) over all their wake-up eventfds and the set's.
/// Runs until [`LinkSet::stop`].
pub fn run_links(set: &LinkSet, mode: PollMode) {
    drive(
        &mut Owned {
            set,
            seen: u64::MAX,
            links: Vec::new(),
        },
        mode,
    );
}

/// Where a loop finds its links.
trait Links {
    type L: std::ops::Deref<Target = Shared>;
    /// Whether the loop goes on.
    fn running(&self) -> bool;
    /// Picks up a changed link set (cheap when nothing changed).
    fn refresh(&mut self);
    /// The links to poll.
    fn links(&self) -> &[Self::L];
    /// Another eventfd that ends a sleep (the set changed or stops).
    fn wake(&self) -> Option<BorrowedFd<'_>>;
}

/// One pair, for [`run_switch`].
struct One<'a>(&'a Shared);

impl<'a> Links for One<'a> {
    type L = &'a Shared;
    fn running(&self) -> bool {
        !self.0.stop.load(Ordering::Relaxed)
    }
    fn refresh(&mut self) {}
    fn links(&self) -> &[&'a Shared] {
        std::slice::from_ref(&self.0)
    }
    fn wake(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A thread's copy of its [`LinkSet`].
struct Owned<'a> {
    set: &'a LinkSet,
    seen: u64,
    links: Vec<Arc<Shared>>,
}

impl Links for Owned<'_> {
    type L = Arc<Shared>;
    fn running(&self) -> bool {
        !self.set.stop.load(Ordering::Relaxed)
    }
    fn refresh(&mut self) {
        // Acquire: pairs with the Release increment in `LinkSet::change`.
        let g = self.set.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            let l = self.set.links.lock().unwrap_or_else(|p| p.into_inner());
            self.links.clone_from(&l);
        }
    }
    fn links(&self) -> &[Arc<Shared>] {
        &self.links
    }
    fn wake(&self) -> Option<BorrowedFd<'_>> {
        Some(self.set.wake.as_fd())
    }
}

/// One polling round over every live link: (work done, some TX waits for
/// its peer's buffer).
fn round<L: std::ops::Deref<Target = Shared>>(links: &[L], polling: bool) -> (usize, bool) {
    let (mut work, mut waiting) = (0, false);
    for l in links {
        if l.stop.load(Ordering::Relaxed) {
            continue;
        }
        if l.control_waiting.load(Ordering::Relaxed) > 0 {
            std::thread::yield_now();
        }
        let mut p = l.pair.lock().unwrap_or_else(|p| p.into_inner());
        // Every round: a queue enabled since the last one gets the flag
        // too (a load per queue; the store only when it changes).
        p.set_polling(polling);
        work += p.poll();
        waiting |= p.switch.has_waiting();
    }
    (work, waiting)
}

fn drive<S: Links>(src: &mut S, mode: PollMode) {
    // Busy never sleeps, however long it idles.
    let spin = match mode {
        PollMode::Busy => None,
        PollMode::Adaptive { spin } => Some(spin),
    };
    let mut idle: u32 = 0;
    while src.running() {
        src.refresh();
        if src.links().is_empty() {
            // Nothing to poll, whatever the mode: wait for a link.
            sleep(src, 100);
            continue;
        }
        let (work, waiting) = round(src.links(), true);
        if work > 0 {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if spin.is_none_or(|spin| idle < spin) {
            if idle.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        // About to sleep: ask every link for kicks, then look once more so
        // a packet made available before a flag was cleared is not missed.
        if round(src.links(), false).0 > 0 {
            idle = 0;
            continue;
        }
        if sleep(src, if waiting { 1 } else { 100 }) {
            // A kick: traffic is likely to follow, spin again.
            idle = 0;
        }
        // A timeout alone (no kick) goes back to sleep after one round:
        // an idle link costs a few loads every 100 ms, not a spin.
    }
}

/// Sleeps in one poll(2) over the live links' wake-up eventfds and the
/// loop's own; drains those that fired. Whether any fired.
fn sleep<S: Links>(src: &S, timeout_ms: u16) -> bool {
    let live: Vec<&Shared> = src
        .links()
        .iter()
        .map(|l| &**l)
        .filter(|l| !l.stop.load(Ordering::Relaxed))
        .collect();
    let mut fds: Vec<PollFd<'_>> = live
        .iter()
        .map(|l| PollFd::new(l.wake.as_fd(), PollFlags::POLLIN))
        .chain(src.wake().map(|fd| PollFd::new(fd, PollFlags::POLLIN)))
        .collect();
    if nix::poll::poll(&mut fds, PollTimeout::from(timeout_ms)).unwrap_or(0) <= 0 {
        return false;
    }
    let fired: Vec<bool> = fds
        .iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
        .collect();
    drop(fds);
    for (l, _) in live.iter().zip(&fired).filter(|(_, f)| **f) {
        let _ = l.wake.read();
    }
    if fired.get(live.len()) == Some(&true) {
        if let Some(fd) = src.wake() {
            let mut b = [0u8; 8];
            let _ = nix::unistd::read(fd.as_raw_fd(), &mut b);
        }
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::PairConfig;
    use crate::switch::SwitchConfig;
    use crate::testutil::Drv;
    use sbnet_abi::shm::SlotGeometry;
    use std::time::Instant;

    /// A small link's configuration, with switch bursts of `burst`.
    fn cfg(burst: usize) -> PairConfig {
        PairConfig {
            geometry: SlotGeometry::new(2048, 16).unwrap(),
            max_queue_size: 256,
            switch: SwitchConfig {
                burst,
                ..SwitchConfig::default()
            },
            huge_pages: false,
            queue_pairs: 1,
        }
    }

    fn link() -> Arc<Shared> {
        Shared::new(Pair::new(&cfg(SwitchConfig::default().burst)).unwrap()).unwrap()
    }

    /// The thread's copy of the set after one refresh.
    fn seen(set: &LinkSet, o: &mut Owned<'_>) -> usize {
        assert!(std::ptr::eq(o.set, set));
        o.refresh();
        o.links().len()
    }

    #[test]
    fn a_thread_sees_links_come_and_go() {
        let set = LinkSet::new().unwrap();
        let (a, b) = (link(), link());
        let mut o = Owned {
            set: &set,
            seen: u64::MAX,
            links: Vec::new(),
        };
        assert_eq!(seen(&set, &mut o), 0);
        set.add(a.clone());
        set.add(b.clone());
        assert_eq!((seen(&set, &mut o), set.len()), (2, 2));
        assert!(set.remove(&a));
        assert!(!set.remove(&a), "removed once");
        assert_eq!(seen(&set, &mut o), 1);
        assert!(Arc::ptr_eq(&o.links()[0], &b));
        // The thread's copy holds the last reference it needs: none of a.
        assert_eq!(Arc::strong_count(&a), 1);
    }

    /// A busy link cannot starve another on the same thread: every round
    /// moves one burst of each, however much either has queued.
    #[test]
    fn a_round_moves_one_burst_of_every_busy_link() {
        const BURST: usize = 4;
        let cfg = cfg(BURST);
        // Link 0 has eight bursts queued, link 1 two.
        let mut links = Vec::new();
        let mut drivers = Vec::new();
        for queued in [8 * BURST, 2 * BURST] {
            let mut p = Pair::new(&cfg).unwrap();
            let mut d = [Drv::up(&mut p, 0, false), Drv::up(&mut p, 1, false)];
            for i in 0..queued {
                d[1].post_classic(2048);
                d[0].send_classic(&[i as u8; 60]);
            }
            links.push(Shared::new(p).unwrap());
            drivers.push(d);
        }
        let delivered = |l: &Shared| l.lock().fns[1].counters.rx_packets as usize;
        for r in 1..=2 {
            let (work, _) = round(&links, true);
            assert!(work > 0);
            assert_eq!(delivered(&links[0]), r * BURST, "round {r}");
            assert_eq!(delivered(&links[1]), r * BURST, "round {r}");
        }
        // Link 1 is done; link 0 goes on alone.
        round(&links, true);
        assert_eq!(delivered(&links[0]), 3 * BURST);
        assert_eq!(delivered(&links[1]), 2 * BURST);
        assert_eq!(drivers[1][1].used(0).len(), 2 * BURST);
    }

    #[test]
    fn run_links_stops_promptly_asleep_or_busy() {
        for mode in [PollMode::Adaptive { spin: 4 }, PollMode::Busy] {
            let set = LinkSet::new().unwrap();
            set.add(link());
            let s = set.clone();
            let t = std::thread::spawn(move || run_links(&s, mode));
            std::thread::sleep(Duration::from_millis(50));
            let l = link();
            set.add(l.clone());
            std::thread::sleep(Duration::from_millis(20));
            // A stopped link is skipped, then dropped by the thread.
            l.stop.store(true, Ordering::Relaxed);
            assert!(set.remove(&l));
            let t0 = Instant::now();
            set.stop();
            t.join().unwrap();
            assert!(t0.elapsed() < Duration::from_secs(5), "{mode:?}");
            assert_eq!(Arc::strong_count(&l), 1, "{mode:?}");
        }
    }
}
