//! The vfio-user front end of one side: [`SideHandle`] implements the
//! server's [`Backend`] over a running pair. This is the only place that
//! knows both vfio-user and the function: it describes the regions and
//! IRQs, decodes `DEVICE_SET_IRQS` into the function's neutral interrupt
//! methods, serves the Shared Buffers BAR from the region mapping and turns
//! refusals into errnos.

use crate::function::Function;
use crate::irq::IrqFd;
use crate::mem::{MemError, Prot, ShmRegion};
use crate::pair::{Pair, Shared};
use nix::errno::Errno;
use sbnet_abi::layout as l;
use sbnet_vfio_user::server::{Backend, IrqDesc, RegionDesc};
use sbnet_vfio_user::wire::{DmaMapFlags, DmaUnmapFlags, IrqInfoFlags, IrqSetFlags, RegionFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// The vfio-user backend of one side.
#[derive(Debug, Clone)]
pub struct SideHandle {
    shared: Arc<Shared>,
    side: usize,
    shm_fd: RawFd,
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

/// Region descriptions of a function: BARs 0-5 (the Shared Buffers BAR
/// mmap-able from `shm_fd`) and PCI config space.
pub fn regions(f: &Function, shm_fd: RawFd) -> Vec<RegionDesc> {
    let rw = RegionFlags::READ | RegionFlags::WRITE;
    (0..l::NUM_REGIONS)
        .map(|index| {
            let (size, mmap) = match index {
                0..=5 => (
                    f.pci.bar_size(index as u8),
                    (index == l::SHM_BAR as u32).then_some((shm_fd, 0)),
                ),
                l::CONFIG_REGION => (sbnet_abi::pci::cfg::SIZE as u64, None),
                _ => (0, None),
            };
            RegionDesc {
                index,
                size,
                flags: if size > 0 { rw } else { RegionFlags::empty() },
                mmap,
            }
        })
        .collect()
}

/// IRQ descriptions of a function: INTx (one) and MSI-X (its table size,
/// [`l::msix_vectors`] of the link's queue pairs), eventfd-based.
pub fn irqs(f: &Function) -> Vec<IrqDesc> {
    (0..l::NUM_IRQS)
        .map(|index| {
            let count = match index {
                l::IRQ_INTX => 1,
                l::IRQ_MSIX => f.msix_vectors() as u32,
                _ => 0,
            };
            IrqDesc {
                index,
                count,
                flags: if count > 0 {
                    IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE
                } else {
                    IrqInfoFlags::empty()
                },
            }
        })
        .collect()
}

/// Applies `DEVICE_SET_IRQS` to a function. Returns false for a request it
/// cannot honour.
pub fn set_irqs(
    f: &mut Function,
    index: u32,
    flags: IrqSetFlags,
    start: u32,
    count: u32,
    fds: Vec<OwnedFd>,
) -> bool {
    // Only eventfds, made non-blocking: a signal must never block the
    // switch (see `crate::irq`).
    let mut fds = match fds
        .into_iter()
        .map(IrqFd::new)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(fds) => fds,
        Err(e) => {
            // The server logs the failed request (once per client at WARN).
            tracing::debug!("refusing SET_IRQS index {index}: {e}");
            return false;
        }
    };
    let n = match index {
        l::IRQ_MSIX => f.msix_vectors() as u32,
        l::IRQ_INTX => 1,
        _ => return count == 0,
    };
    let Some(end) = start.checked_add(count).filter(|e| *e <= n) else {
        return false;
    };
    let action = flags.action();
    let data = flags.data();
    // end <= the function's vectors: every vector below fits a u16.
    let vectors = (start..end).map(|v| v as u16);
    match (index, action, data) {
        (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) if fds.is_empty() => {
            // QEMU enables MSI-X with eventfd data but no fds: "no
            // eventfd for these vectors yet" (the kernel's -1 entries).
            for v in vectors {
                f.set_msix_fd(v, None);
            }
        }
        (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) => {
            if fds.len() != count as usize {
                return false;
            }
            for (v, fd) in vectors.zip(fds.drain(..)) {
                f.set_msix_fd(v, Some(fd));
            }
        }
        (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) if count == 0 => {
            f.clear_msix_fds();
        }
        (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) => {
            for v in vectors {
                f.signal(v);
            }
        }
        (
            l::IRQ_MSIX,
            IrqSetFlags::ACTION_MASK | IrqSetFlags::ACTION_UNMASK,
            IrqSetFlags::DATA_NONE,
        ) => {
            let mask = action == IrqSetFlags::ACTION_MASK;
            for v in vectors {
                f.set_msix_masked(v, mask);
            }
        }
        (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) if fds.is_empty() => {
            f.set_intx_fd(None)
        }
        (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) => {
            if fds.len() != count as usize {
                return false;
            }
            f.set_intx_fd(fds.pop());
        }
        (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) if count == 0 => {
            f.set_intx_fd(None)
        }
        // INTx mask/unmask (and QEMU's resample eventfd on unmask): level
        // semantics are not emulated; edge eventfds need nothing more.
        (l::IRQ_INTX, IrqSetFlags::ACTION_MASK | IrqSetFlags::ACTION_UNMASK, _) => {}
        _ => return false,
    }
    true
}

fn shm_access(shm: &ShmRegion, offset: u64, len: usize) -> Result<*mut u8, Errno> {
    shm.ptr(offset, len as u64).ok_or(Errno::EINVAL)
}

impl Backend for SideHandle {
    fn regions(&self) -> Vec<RegionDesc> {
        self.with(|p, k| regions(&p.fns[k], self.shm_fd))
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        self.with(|p, k| irqs(&p.fns[k]))
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
        flags: DmaMapFlags,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno> {
        let mut prot = Prot::empty();
        prot.set(Prot::READ, flags.contains(DmaMapFlags::READ));
        prot.set(Prot::WRITE, flags.contains(DmaMapFlags::WRITE));
        self.with(|p, k| {
            let f = &mut p.fns[k];
            match f.map_dma(iova, size, fd.map(File::from), file_offset, prot) {
                Ok(()) => {
                    tracing::debug!(side = k, "DMA map {iova:#x}+{size:#x}");
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
                        // vfio-user: "EEXIST if the range overlaps an existing map".
                        MemError::Overlap { .. } => Errno::EEXIST,
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
                f.clear_dma();
            } else if let Err(e) = f.unmap_dma(iova, size) {
                tracing::debug!(side = k, "refusing DMA unmap: {e}");
                return Err(Errno::EINVAL);
            }
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
            if set_irqs(&mut p.fns[k], index, flags, start, count, fds) {
                Ok(())
            } else {
                tracing::debug!(
                    side = k,
                    "refusing SET_IRQS index {index} flags {flags:?} start {start} count {count}"
                );
                Err(Errno::EINVAL)
            }
        })
    }

    fn reset(&mut self) {
        self.with(|p, k| p.fns[k].reset());
    }

    fn max_dma_maps(&self) -> u32 {
        u32::try_from(crate::mem::MAX_MAPS).unwrap_or(u32::MAX)
    }

    fn connected(&mut self) {
        tracing::info!(side = self.side, "VMM connected");
    }

    fn disconnected(&mut self) {
        self.with(|p, k| {
            // The DMA refusals were logged once (at the first); say how many.
            let refused = p.fns[k].counters.dma_refused;
            tracing::info!(
                side = k,
                dma_maps_refused = refused,
                "VMM disconnected; side reset"
            );
            p.fns[k].disconnect()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::PairConfig;

    #[test]
    fn msix_enable_without_fds_clears_vectors() {
        let mut p = Pair::new(&PairConfig {
            geometry: sbnet_abi::shm::SlotGeometry::new(2048, 16).unwrap(),
            max_queue_size: 256,
            switch: Default::default(),
            huge_pages: false,
            queue_pairs: 1,
        })
        .unwrap();
        let f = IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER;
        assert!(set_irqs(&mut p.fns[0], l::IRQ_MSIX, f, 0, 1, vec![]));
        assert!(
            !set_irqs(&mut p.fns[0], l::IRQ_MSIX, f, 2, 5, vec![]),
            "out of range"
        );
    }
}
