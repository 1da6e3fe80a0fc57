//! Two functions, the switch and the epoch rules (DESIGN §4 rule 9), behind
//! one lock; [`SideHandle`] serves one side to the vfio-user front end and
//! [`run_switch`] is the data-plane loop.
//!
//! Locking: the control plane (one thread per socket) takes the lock per
//! vfio-user message; the data plane takes it once per polling round (a
//! burst per direction), never per packet. A control thread announces
//! itself in `control_waiting` so that a busy data plane steps aside.

use crate::function::{Event, Function};
use crate::mem::{MemError, ShmRegion};
use crate::switch::{Switch, SwitchConfig};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use sbnet_abi::layout as l;
use sbnet_abi::net::{PEER_PRESENT, PEER_SHARED_BUFFERS, PEER_SYNCED};
use sbnet_abi::shm::SlotGeometry;
use sbnet_vfio_user::server::{Backend, IrqDesc, RegionDesc};
use sbnet_vfio_user::wire::{DmaMapFlags, DmaUnmapFlags, IrqSetFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a pair is built.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Slot geometry of the Shared Buffers region.
    pub geometry: SlotGeometry,
    /// Largest queue size a driver may use.
    pub max_queue_size: u16,
    /// Switch tunables.
    pub switch: SwitchConfig,
    /// Create the region in this directory (e.g. a hugetlbfs mount) instead of a memfd.
    pub shm_dir: Option<PathBuf>,
}

/// The pair's state.
#[derive(Debug)]
pub struct Pair {
    /// The two functions, side 0 and side 1.
    pub fns: [Function; 2],
    /// The switch and the host ledger.
    pub switch: Switch,
    shm: ShmRegion,
    epoch: u32,
    shape: [(bool, bool); 2],
}

impl Pair {
    /// Creates the region and both functions.
    pub fn new(cfg: &PairConfig) -> std::io::Result<Self> {
        let len = cfg.geometry.region_size();
        let shm = match &cfg.shm_dir {
            Some(dir) => ShmRegion::in_dir(dir, len)?,
            None => ShmRegion::memfd(len)?,
        };
        let mut p = Self {
            fns: [0, 1].map(|k| Function::new(k, cfg.geometry, cfg.max_queue_size)),
            switch: Switch::new(cfg.switch, cfg.geometry, cfg.max_queue_size),
            shm,
            epoch: 1,
            shape: [(false, false); 2],
        };
        p.publish_pairing();
        Ok(p)
    }

    /// The current pairing epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The host mapping of the Shared Buffers region.
    pub fn shm(&self) -> &ShmRegion {
        &self.shm
    }

    /// One polling round of the switch. A ring the switch found broken
    /// (`DEVICE_NEEDS_RESET`) changes the epoch right away, so the peer
    /// learns of it without waiting for the broken side's next message.
    #[inline]
    pub fn poll(&mut self) -> usize {
        let work = self.switch.poll(&mut self.fns, &self.shm);
        for k in 0..2 {
            if self.fns[k].has_events() {
                self.handle_events(k);
            }
        }
        work
    }

    /// Sets `USED_F_NO_NOTIFY` on every enabled queue (the host is polling)
    /// or clears it (the host is about to sleep and wants kicks).
    pub fn set_polling(&mut self, on: bool) {
        for f in &mut self.fns {
            for q in [sbnet_abi::net::RX_QUEUE, sbnet_abi::net::TX_QUEUE] {
                if let Some(q) = f.queue_mut(q) {
                    q.set_no_notify(on);
                }
            }
        }
    }

    /// Applies the events side `k`'s registers raised. Returns true when
    /// the driver kicked a queue.
    pub fn handle_events(&mut self, k: usize) -> bool {
        let mut kicked = false;
        let mut shape_may_change = false;
        let events: Vec<Event> = self.fns[k].take_events().collect();
        for e in events {
            match e {
                Event::StatusChanged => shape_may_change = true,
                Event::Kick(_) => kicked = true,
                Event::EpochAck(e) => {
                    if e == self.epoch && self.switch.resyncing(k) {
                        tracing::info!(side = k, epoch = e, "side synchronised to the epoch");
                        self.switch.acked(k);
                        // The peer may now take its share (PEER_SYNCED).
                        self.publish_pairing();
                        kicked = true;
                    }
                }
            }
        }
        if shape_may_change {
            self.update_shape();
            kicked = true;
        }
        kicked
    }

    fn update_shape(&mut self) {
        let shape = [0, 1].map(|k| (self.fns[k].is_active(), self.fns[k].is_shared_buffers()));
        if shape == self.shape {
            return;
        }
        self.shape = shape;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.switch.new_epoch(&mut self.fns);
        tracing::info!(
            epoch = self.epoch,
            mode = ?self.switch.mode(),
            side0 = ?shape[0],
            side1 = ?shape[1],
            "pairing epoch changed (active, shared buffers)"
        );
        self.publish_pairing();
    }

    fn publish_pairing(&mut self) {
        for k in 0..2 {
            let peer = &self.fns[1 - k];
            let mut st = 0;
            if peer.is_active() {
                st |= PEER_PRESENT;
            }
            if peer.is_shared_buffers() {
                st |= PEER_SHARED_BUFFERS;
            }
            if peer.is_active() && !self.switch.resyncing(1 - k) {
                st |= PEER_SYNCED;
            }
            self.fns[k].set_pairing(self.epoch, st);
        }
    }
}

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

/// The vfio-user backend of one side.
#[derive(Debug, Clone)]
pub struct SideHandle {
    shared: Arc<Shared>,
    side: usize,
    shm_fd: std::os::fd::RawFd,
}

impl SideHandle {
    /// Side `side` (0 or 1) of a running pair.
    pub fn new(shared: Arc<Shared>, side: usize) -> Self {
        let shm_fd = shared.lock().shm().file().as_raw_fd();
        Self {
            shared,
            side,
            shm_fd,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Pair, usize) -> R) -> R {
        let mut p = self.shared.lock();
        let r = f(&mut p, self.side);
        if p.handle_events(self.side) {
            drop(p);
            self.shared.wake();
        }
        r
    }
}

fn shm_access(shm: &ShmRegion, offset: u64, len: usize) -> Result<*mut u8, Errno> {
    shm.ptr(offset, len as u64).ok_or(Errno::EINVAL)
}

impl Backend for SideHandle {
    fn regions(&self) -> Vec<RegionDesc> {
        self.with(|p, k| p.fns[k].regions(self.shm_fd))
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        self.with(|p, k| p.fns[k].irqs())
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.with(|p, k| {
            if region == l::SHM_BAR as u32 {
                let src = shm_access(p.shm(), offset, data.len())?;
                // SAFETY: src..src+len is inside the live region mapping
                // (ShmRegion::ptr); the copy goes to a host buffer.
                unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), data.len()) };
                return Ok(());
            }
            p.fns[k]
                .read(region, offset, data)
                .map_err(|_| Errno::EINVAL)
        })
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.with(|p, k| {
            if region == l::SHM_BAR as u32 {
                let dst = shm_access(p.shm(), offset, data.len())?;
                // SAFETY: as in region_read, the other way round.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
                return Ok(());
            }
            p.fns[k]
                .write(region, offset, data)
                .map_err(|_| Errno::EINVAL)
        })
    }

    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        _flags: DmaMapFlags,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno> {
        self.with(|p, k| {
            let f = &mut p.fns[k];
            match f.mem.map(iova, size, fd.map(File::from), file_offset) {
                Ok(()) => {
                    tracing::debug!(side = k, "DMA map {iova:#x}+{size:#x}");
                    f.memory_changed();
                    Ok(())
                }
                Err(e) => {
                    // QEMU also offers fd-less ranges (ROM, MMIO windows) the
                    // device never needs: say it once per side, then quietly.
                    if f.counters.dma_refused == 0 {
                        tracing::warn!(
                            side = k,
                            "refusing DMA map (later refusals are logged at debug level): {e}"
                        );
                    } else {
                        tracing::debug!(side = k, "refusing DMA map: {e}");
                    }
                    f.counters.dma_refused += 1;
                    Err(match e {
                        MemError::Mmap(_) => Errno::EFAULT,
                        MemError::TooMany(_) => Errno::ENOSPC,
                        _ => Errno::EINVAL,
                    })
                }
            }
        })
    }

    fn dma_unmap(&mut self, iova: u64, size: u64, flags: DmaUnmapFlags) -> Result<(), Errno> {
        self.with(|p, k| {
            let f = &mut p.fns[k];
            if flags.contains(DmaUnmapFlags::ALL) {
                f.mem.clear();
            } else if let Err(e) = f.mem.unmap(iova, size) {
                tracing::warn!(side = k, "refusing DMA unmap: {e}");
                return Err(Errno::EINVAL);
            }
            f.memory_changed();
            Ok(())
        })
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        self.with(|p, k| {
            if p.fns[k].set_irqs(index, flags, start, count, fds) {
                Ok(())
            } else {
                tracing::warn!(
                    side = k,
                    "refusing SET_IRQS index {index} flags {flags:#x} start {start} count {count}"
                );
                Err(Errno::EINVAL)
            }
        })
    }

    fn reset(&mut self) {
        self.with(|p, k| p.fns[k].reset());
    }

    fn connected(&mut self) {
        tracing::info!(side = self.side, "VMM connected");
    }

    fn disconnected(&mut self) {
        tracing::info!(side = self.side, "VMM disconnected; side reset");
        self.with(|p, k| p.fns[k].disconnect());
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
