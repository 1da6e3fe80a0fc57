//! A minimal virtio-net driver over any [`Bus`], written from `docs/abi.md`
//! alone: it finds the capabilities, negotiates, sets up both queues in DMA
//! memory and moves classic frames or raw descriptors. The device tests use
//! it to drive the device model exactly as a guest would, over vfio-user;
//! unlike the PMD it can also send whatever malformed thing a test needs.

use sbnet_abi::common_cfg::{self as cc, bit, off};
use sbnet_abi::net;
use sbnet_abi::pci;
use sbnet_abi::ring::{Desc, DESC_F_WRITE};
use sbnet_device::testutil::{DriverRing, RingLayout};
use sbnet_pmd::bus::{Bus, BusError, DmaRegion};

/// Queue size the raw driver uses.
pub const QSIZE: u16 = 64;
/// Bytes per classic buffer.
pub const BUF: usize = 2048;

/// Where the virtio structures are, from the capability list.
#[derive(Debug, Default, Clone, Copy)]
pub struct Caps {
    /// (bar, offset) of common config.
    pub common: (u8, u64),
    /// (bar, offset, multiplier) of the notify area.
    pub notify: (u8, u64, u32),
    /// (bar, offset) of the device config.
    pub device: (u8, u64),
    /// (bar, offset, length) of the shared-memory region.
    pub shm: Option<(u8, u64, u64)>,
    /// MSI-X present.
    pub msix: bool,
}

/// Walks the capability list.
pub fn read_caps(bus: &mut dyn Bus) -> Result<Caps, BusError> {
    let mut c = Caps::default();
    let mut b = [0u8; 1];
    bus.config_read(pci::cfg::CAP_PTR as u16, &mut b)?;
    let mut p = b[0] as u16;
    let mut guard = 0;
    while p != 0 && guard < 48 {
        guard += 1;
        let mut cap = [0u8; 24];
        bus.config_read(p, &mut cap[..16])?;
        if cap[0] == pci::CAP_ID_MSIX {
            c.msix = true;
        } else if cap[0] == pci::CAP_ID_VENDOR {
            let bar = cap[4];
            let offset = u32::from_le_bytes(cap[8..12].try_into().unwrap()) as u64;
            match cap[3] {
                pci::VIRTIO_PCI_CAP_COMMON_CFG => c.common = (bar, offset),
                pci::VIRTIO_PCI_CAP_DEVICE_CFG => c.device = (bar, offset),
                pci::VIRTIO_PCI_CAP_NOTIFY_CFG => {
                    bus.config_read(p + 16, &mut cap[16..20])?;
                    c.notify = (
                        bar,
                        offset,
                        u32::from_le_bytes(cap[16..20].try_into().unwrap()),
                    );
                }
                pci::VIRTIO_PCI_CAP_SHARED_MEMORY_CFG => {
                    bus.config_read(p + 16, &mut cap[16..24])?;
                    let lo = u32::from_le_bytes(cap[12..16].try_into().unwrap()) as u64;
                    let hi = u32::from_le_bytes(cap[20..24].try_into().unwrap()) as u64;
                    c.shm = Some((bar, offset, lo | hi << 32));
                }
                _ => {}
            }
        }
        p = cap[1] as u16;
    }
    Ok(c)
}

/// The raw driver.
pub struct RawDriver<B: Bus> {
    /// The bus (public so tests can poke registers).
    pub bus: B,
    /// Capability locations.
    pub caps: Caps,
    mem: DmaRegion,
    q: [DriverRing; 2],
}

/// Ring memory layout inside the DMA region, per queue: desc @0, avail
/// @0x1000, used @0x2000; queue 1 at +0x4000; buffers from 0x8000.
const BUFS: u64 = 0x8000;

impl<B: Bus> RawDriver<B> {
    /// Brings the device up, accepting `features` (VERSION_1 is added).
    /// Returns the device status after FEATURES_OK for the caller to check
    /// through `status()`.
    pub fn up(mut bus: B, features: u64) -> Result<Self, BusError> {
        let caps = read_caps(&mut bus)?;
        let mem = bus.dma_alloc(BUFS as usize + 2 * QSIZE as usize * BUF)?;
        let q = [0u64, 0x4000].map(|base| {
            let layout = RingLayout {
                desc: mem.iova + base,
                avail: mem.iova + base + 0x1000,
                used: mem.iova + base + 0x2000,
                size: QSIZE,
            };
            // SAFETY: the DMA region maps `len` bytes at `ptr` for as long
            // as the bus lives, and the driver owns the bus; the rings lie
            // inside it, page-aligned.
            unsafe { DriverRing::new(mem.ptr, mem.iova, mem.len as u64, layout) }
        });
        let mut d = Self { bus, caps, mem, q };
        d.common_w(off::DEVICE_STATUS, &[0])?;
        d.common_w(
            off::DEVICE_STATUS,
            &[cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER],
        )?;
        let f = features | bit(cc::VIRTIO_F_VERSION_1);
        d.common_w(off::DRIVER_FEATURE_SELECT, &0u32.to_le_bytes())?;
        d.common_w(off::DRIVER_FEATURE, &(f as u32).to_le_bytes())?;
        d.common_w(off::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes())?;
        d.common_w(off::DRIVER_FEATURE, &((f >> 32) as u32).to_le_bytes())?;
        d.common_w(
            off::DEVICE_STATUS,
            &[cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER | cc::STATUS_FEATURES_OK],
        )?;
        if d.status()? & cc::STATUS_FEATURES_OK == 0 {
            return Err(BusError::Unexpected("device refused the features".into()));
        }
        for qi in 0..2u16 {
            d.common_w(off::QUEUE_SELECT, &qi.to_le_bytes())?;
            d.common_w(off::QUEUE_SIZE, &QSIZE.to_le_bytes())?;
            d.common_w(off::QUEUE_MSIX_VECTOR, &(qi + 1).to_le_bytes())?;
            let r = d.q[qi as usize].layout();
            d.common_w(off::QUEUE_DESC, &r.desc.to_le_bytes())?;
            d.common_w(off::QUEUE_DRIVER, &r.avail.to_le_bytes())?;
            d.common_w(off::QUEUE_DEVICE, &r.used.to_le_bytes())?;
            d.common_w(off::QUEUE_ENABLE, &1u16.to_le_bytes())?;
        }
        d.common_w(off::CONFIG_MSIX_VECTOR, &0u16.to_le_bytes())?;
        d.common_w(
            off::DEVICE_STATUS,
            &[cc::STATUS_ACKNOWLEDGE
                | cc::STATUS_DRIVER
                | cc::STATUS_FEATURES_OK
                | cc::STATUS_DRIVER_OK],
        )?;
        Ok(d)
    }

    /// Writes common config.
    pub fn common_w(&mut self, o: usize, v: &[u8]) -> Result<(), BusError> {
        let (bar, base) = self.caps.common;
        self.bus.bar_write(bar, base + o as u64, v)
    }

    /// Device status.
    pub fn status(&mut self) -> Result<u8, BusError> {
        let (bar, base) = self.caps.common;
        let mut b = [0u8];
        self.bus
            .bar_read(bar, base + off::DEVICE_STATUS as u64, &mut b)?;
        Ok(b[0])
    }

    /// Reads a device-config u32 at `o`.
    pub fn device_u32(&mut self, o: usize) -> Result<u32, BusError> {
        let (bar, base) = self.caps.device;
        let mut b = [0u8; 4];
        self.bus.bar_read(bar, base + o as u64, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a device-config u32 at `o`.
    pub fn device_w32(&mut self, o: usize, v: u32) -> Result<(), BusError> {
        let (bar, base) = self.caps.device;
        self.bus.bar_write(bar, base + o as u64, &v.to_le_bytes())
    }

    /// Acknowledges the current pairing epoch.
    pub fn ack_epoch(&mut self) -> Result<u32, BusError> {
        let e = self.device_u32(net::cfg_off::PAIRING_EPOCH)?;
        self.device_w32(net::cfg_off::EPOCH_ACK, e)?;
        Ok(e)
    }

    /// Device features (64 bits).
    pub fn device_features(&mut self) -> Result<u64, BusError> {
        let (bar, base) = self.caps.common;
        let mut f = 0u64;
        for sel in 0..2u32 {
            self.bus.bar_write(
                bar,
                base + off::DEVICE_FEATURE_SELECT as u64,
                &sel.to_le_bytes(),
            )?;
            let mut b = [0u8; 4];
            self.bus
                .bar_read(bar, base + off::DEVICE_FEATURE as u64, &mut b)?;
            f |= (u32::from_le_bytes(b) as u64) << (32 * sel);
        }
        Ok(f)
    }

    /// Kicks queue `q`.
    pub fn kick(&mut self, q: u16) -> Result<(), BusError> {
        let (bar, base, mult) = self.caps.notify;
        self.bus
            .bar_write(bar, base + q as u64 * mult as u64, &q.to_le_bytes())
    }

    /// The DMA address of buffer `i` of queue `q`.
    pub fn buf(&self, q: u16, i: u16) -> u64 {
        self.mem.iova + BUFS + (q as u64 * QSIZE as u64 + i as u64) * BUF as u64
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn set_desc(&mut self, q: u16, i: u16, d: Desc) {
        self.q[q as usize].set_desc(i, d);
    }

    /// Publishes `head` on queue `q`'s avail ring (Release on idx).
    pub fn avail(&mut self, q: u16, head: u16) {
        self.q[q as usize].make_avail(head);
    }

    /// Sets the avail index to anything (malformed-input tests).
    pub fn set_avail_idx(&mut self, q: u16, idx: u16) {
        self.q[q as usize].set_avail_idx(idx);
    }

    /// Sets the avail flags (e.g. `AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&mut self, q: u16, flags: u16) {
        self.q[q as usize].set_avail_flags(flags);
    }

    /// Reaps used entries of queue `q`.
    pub fn used(&mut self, q: u16) -> Vec<(u16, u32)> {
        self.q[q as usize].used()
    }

    /// Waits (bounded) until queue `q` has `n` used entries.
    pub fn wait_used(&mut self, q: u16, n: usize, timeout: std::time::Duration) -> Vec<(u16, u32)> {
        let end = std::time::Instant::now() + timeout;
        let mut got = vec![];
        while got.len() < n && std::time::Instant::now() < end {
            got.extend(self.used(q));
            if got.len() < n {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        got
    }

    /// Posts classic RX buffer `i` (descriptor `i` of queue 0).
    pub fn post_rx(&mut self, i: u16) {
        let a = self.buf(0, i);
        self.set_desc(
            0,
            i,
            Desc {
                addr: a,
                len: BUF as u32,
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        self.avail(0, i);
    }

    /// Sends `frame` using descriptors `2i` (header) and `2i+1` (frame) of queue 1.
    pub fn send(&mut self, i: u16, frame: &[u8]) {
        let (h, f) = (2 * i % QSIZE, (2 * i + 1) % QSIZE);
        let (ha, fa) = (self.buf(1, h), self.buf(1, f));
        self.q[1].send_hdr_and_frame((h, ha), (f, fa), frame);
    }

    /// Reads `len` bytes of RX buffer `i`.
    pub fn rx_bytes(&self, i: u16, len: usize) -> Vec<u8> {
        self.q[0].read(self.buf(0, i), len)
    }
}
