//! Common configuration (virtio 1.2 §4.1.4.3): feature negotiation, device
//! status and per-queue setup, up to enabling a queue against the
//! function's guest memory.

use super::{Event, Function};
use crate::function::AccessError;
use crate::queue::{Queue, QueueRegs};
use sbnet_abi::common_cfg::{self as cc, bit, off, DeviceStatus as Status};
use sbnet_abi::net;

/// The per-queue part of common config before the queue is enabled.
#[derive(Debug, Default)]
pub(super) struct QueueSlot {
    pub(super) regs: QueueRegs,
    pub(super) queue: Option<Queue>,
}

impl Function {
    fn selected(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(self.queue_select as usize)
    }

    pub(super) fn common_read(&mut self, off: usize, len: usize) -> Result<u64, AccessError> {
        let sel_regs = self.selected().map(|q| (q.regs, q.queue.is_some()));
        let v: u64 = match (off, len) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select as u64,
            (off::DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select as u64,
            (off::DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (off::CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector as u64,
            (off::NUM_QUEUES, 2) => net::num_queues(self.q_pairs) as u64,
            (off::DEVICE_STATUS, 1) => self.status.bits() as u64,
            (off::CONFIG_GENERATION, 1) => self.config_generation as u64,
            (off::QUEUE_SELECT, 2) => self.queue_select as u64,
            (off::QUEUE_SIZE, 2) => sel_regs.map_or(0, |(r, _)| r.size as u64),
            (off::QUEUE_MSIX_VECTOR, 2) => {
                sel_regs.map_or(cc::NO_VECTOR as u64, |(r, _)| r.msix_vector as u64)
            }
            (off::QUEUE_ENABLE, 2) => sel_regs.map_or(0, |(_, e)| e as u64),
            (off::QUEUE_NOTIFY_OFF, 2) => self.queue_select as u64,
            (o, 4 | 8) if (off::QUEUE_DESC..off::QUEUE_DEVICE + 8).contains(&o) => {
                let Some((r, _)) = sel_regs else { return Ok(0) };
                let (base, full) = queue_addr_field(o, &r).ok_or(AccessError::Invalid)?;
                let shift = 8 * (o - base) as u32;
                if len == 8 && o != base {
                    return Err(AccessError::Invalid);
                }
                full >> shift
            }
            (o, _) if o >= sbnet_abi::common_cfg::COMMON_CFG_LEN => 0,
            _ => return Err(AccessError::Invalid),
        };
        Ok(v)
    }

    pub(super) fn common_write(
        &mut self,
        off: usize,
        len: usize,
        v: u64,
    ) -> Result<(), AccessError> {
        let driver_ok = self.status.contains(Status::FEATURES_OK);
        match (off, len) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (off::DRIVER_FEATURE, 4) if !driver_ok => {
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => self.counters.ignored_writes += 1,
                }
            }
            (off::CONFIG_MSIX_VECTOR, 2) => {
                self.config_msix_vector = msix_vector(v as u16, self.irqs.vectors())
            }
            (off::DEVICE_STATUS, 1) => self.write_status(v as u8),
            (off::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (off::QUEUE_SIZE, 2) | (off::QUEUE_MSIX_VECTOR, 2) | (off::QUEUE_ENABLE, 2) => {
                self.queue_reg_write(off, v as u16);
            }
            (o, 4 | 8) if (off::QUEUE_DESC..off::QUEUE_DEVICE + 8).contains(&o) => {
                let Some(q) = self.selected() else {
                    return Ok(());
                };
                if q.queue.is_some() {
                    self.counters.ignored_writes += 1;
                    return Ok(());
                }
                let (base, _) = queue_addr_field(o, &q.regs).ok_or(AccessError::Invalid)?;
                if len == 8 && o != base {
                    return Err(AccessError::Invalid);
                }
                let field = match base {
                    off::QUEUE_DESC => &mut q.regs.desc,
                    off::QUEUE_DRIVER => &mut q.regs.driver,
                    _ => &mut q.regs.device,
                };
                if len == 8 {
                    *field = v;
                } else if o == base {
                    *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
                } else {
                    *field = (*field & 0xffff_ffff) | (v << 32);
                }
            }
            (o, _) if o >= sbnet_abi::common_cfg::COMMON_CFG_LEN => {
                self.counters.ignored_writes += 1
            }
            (
                off::DEVICE_FEATURE
                | off::DRIVER_FEATURE
                | off::NUM_QUEUES
                | off::CONFIG_GENERATION
                | off::QUEUE_NOTIFY_OFF,
                _,
            ) => self.counters.ignored_writes += 1,
            _ => return Err(AccessError::Invalid),
        }
        Ok(())
    }

    fn queue_reg_write(&mut self, off: usize, v: u16) {
        let max = self.max_queue_size;
        let vectors = self.irqs.vectors();
        if off == off::QUEUE_ENABLE && v == 1 && !self.queue_usable(self.queue_select) {
            // A queue the negotiated features do not give the driver
            // (a second pair without MQ, the control queue without CTRL_VQ).
            self.counters.ignored_writes += 1;
            return;
        }
        let Some(slot) = self.queues.get_mut(self.queue_select as usize) else {
            self.counters.ignored_writes += 1;
            return;
        };
        match off {
            off::QUEUE_MSIX_VECTOR => {
                slot.regs.msix_vector = msix_vector(v, vectors);
            }
            _ if slot.queue.is_some() => self.counters.ignored_writes += 1,
            off::QUEUE_SIZE => slot.regs.size = v,
            _ if v == 1 => {
                // Rings across maps that are not host-contiguous (a vIOMMU
                // guest) get a stitched view first.
                let views = self.mem.views();
                for (addr, len, write) in slot.regs.rings() {
                    self.mem.stitch(addr, len, write);
                }
                if self.mem.views() > views {
                    tracing::info!(
                        "queue rings across DMA maps not contiguous in the host: {} stitched views",
                        self.mem.views()
                    );
                }
                // SAFETY: `mem` is private to the function and changes only
                // through map_dma/unmap_dma/clear_dma, which re-validate
                // every enabled queue (or drop it) before they return; the
                // maps and stitched views the queue points into live in
                // `mem` as long as the queue does (views go only with an
                // unmap, or at a reset that drops every queue).
                match unsafe { Queue::enable(slot.regs, max, &self.mem) } {
                    Ok(q) => slot.queue = Some(q),
                    Err(e) => self.needs_reset(e),
                }
            }
            _ => self.counters.ignored_writes += 1,
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver may only add bits (unknown ones are dropped);
        // NEEDS_RESET is the device's own.
        let asked = Status::from_bits_truncate(v) - Status::DEVICE_NEEDS_RESET;
        let mut new = old | asked;
        if new.contains(Status::FEATURES_OK) && !old.contains(Status::FEATURES_OK) {
            let f = self.driver_features;
            // virtio 1.2 §5.1.3.1: MQ depends on CTRL_VQ.
            let mq_alone =
                f & bit(net::VIRTIO_NET_F_MQ) != 0 && f & bit(net::VIRTIO_NET_F_CTRL_VQ) == 0;
            let ok = f & !self.device_features() == 0
                && f & bit(cc::VIRTIO_F_VERSION_1) != 0
                && !mq_alone;
            if !ok {
                tracing::warn!(
                    side = self.side,
                    "driver features {:#x} refused (offered {:#x}, VERSION_1 required, MQ needs CTRL_VQ)",
                    f,
                    self.device_features()
                );
                new.remove(Status::FEATURES_OK);
            }
        }
        if new.contains(Status::DRIVER_OK) && !new.contains(Status::FEATURES_OK) {
            // DRIVER_OK without FEATURES_OK: the driver skipped negotiation.
            new.remove(Status::DRIVER_OK);
            new.insert(Status::DEVICE_NEEDS_RESET);
            self.counters.needs_reset += 1;
        }
        self.status = new;
        let active_bits = Status::DRIVER_OK | Status::FAILED | Status::DEVICE_NEEDS_RESET;
        if (old ^ new).intersects(active_bits) {
            self.events.push(Event::StatusChanged);
        }
    }
}

pub(super) fn fresh_queues(max: u16, n: u16) -> Vec<QueueSlot> {
    (0..n)
        .map(|_| QueueSlot {
            regs: QueueRegs {
                size: max,
                msix_vector: cc::NO_VECTOR,
                ..Default::default()
            },
            queue: None,
        })
        .collect()
}

fn queue_addr_field(o: usize, r: &QueueRegs) -> Option<(usize, u64)> {
    [
        (off::QUEUE_DESC, r.desc),
        (off::QUEUE_DRIVER, r.driver),
        (off::QUEUE_DEVICE, r.device),
    ]
    .into_iter()
    .find(|(base, _)| (*base..*base + 8).contains(&o) && (o - base).is_multiple_of(4))
}

/// A vector as written to `config_msix_vector` or `queue_msix_vector`, as it
/// reads back: virtio 1.2 §4.1.5.1.2, NO_VECTOR when the device cannot use
/// it (past the MSI-X table of `vectors` entries).
fn msix_vector(v: u16, vectors: u16) -> u16 {
    if v < vectors {
        v
    } else {
        cc::NO_VECTOR
    }
}
