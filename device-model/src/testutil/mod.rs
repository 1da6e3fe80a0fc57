//! A register-level stand-in driver for the device model's own tests: it
//! programs a [`Function`](crate::function::Function) through the same register writes a VMM forwards,
//! keeps its rings in a memfd it DMA-maps, and plays both classic and
//! shared-buffers roles. Only built for tests and with the `test-utils`
//! feature (benchmarks); never part of a release build of host-pair.

mod chains;
mod ledger;
mod ring;

pub use chains::{hostile_chains, HostileChain};
pub use ledger::check_ledger;
pub use ring::{DriverRing, RingLayout};

use crate::pair::Pair;
use sbnet_abi::common_cfg::{self as cc, bit, off};
use sbnet_abi::layout as l;
use sbnet_abi::net::{self, NetHdr, NET_HDR_LEN};
use sbnet_abi::pci::cfg;
use sbnet_abi::ring::{Desc, DESC_F_NEXT, DESC_F_WRITE};
use std::fs::File;

pub const IOVA: u64 = 0x1000_0000;
pub const MEM: u64 = 0x20_0000;
pub const WINDOW: u64 = 0x40_0000_0000;
pub const QSIZE: u16 = 64;
const RING: [u64; 2] = [0x0, 0x8000];
/// Classic buffers: 64 per queue, 4 KiB each, after the rings.
pub const BUF: u64 = 0x1_0000;
pub const BUF_SIZE: u64 = 4096;

pub struct Drv {
    pub side: usize,
    base: *mut u8,
    /// The driver's mapping of its memory; unmapped when the driver is
    /// dropped (the rings, which point into it, go with it).
    _map: memmap2::MmapRaw,
    file: File,
    /// Bytes of driver memory mapped at [`IOVA`].
    mem: u64,
    /// Queue pairs the driver uses (1 unless brought up by [`Self::up_mq`]).
    pairs: u16,
    rings: Vec<DriverRing>,
    free_desc: Vec<Vec<u16>>,
    /// Per (queue, head): the other descriptors of a chain, freed with it.
    chained: std::collections::HashMap<(u16, u16), Vec<u16>>,
}

/// Where queue `q`'s ring lies in driver memory of a driver with `nq`
/// queues: the first two where they always were, the others after every
/// queue's classic buffers.
fn ring_offset(q: u16, nq: u16) -> u64 {
    match RING.get(q as usize) {
        Some(&r) => r,
        None => BUF + nq as u64 * QSIZE as u64 * BUF_SIZE + (q as u64 - 2) * 0x8000,
    }
}

impl Drv {
    /// Maps memory and brings the function up with `features`.
    pub fn up(p: &mut Pair, side: usize, shared_buffers: bool) -> Self {
        Self::up_paged(p, side, shared_buffers, MEM)
    }

    /// As [`Self::up`], with the memory DMA-mapped as `page`-sized maps
    /// (at their own file offsets, inserted out of order), as a guest
    /// behind a virtual IOMMU maps it: rings and buffers reach the device
    /// as many maps.
    pub fn up_paged(p: &mut Pair, side: usize, shared_buffers: bool, page: u64) -> Self {
        Self::up_with(p, side, shared_buffers, page, 1)
    }

    /// As [`Self::up`], as a multiqueue driver using `pairs` queue pairs:
    /// with `pairs` > 1 it negotiates `VIRTIO_NET_F_MQ` and
    /// `VIRTIO_NET_F_CTRL_VQ`, enables every data queue of those pairs and
    /// the control queue, and sends `VQ_PAIRS_SET pairs` (which must be
    /// acked OK). The link must have at least `pairs` queue pairs.
    pub fn up_mq(p: &mut Pair, side: usize, shared_buffers: bool, pairs: u16) -> Self {
        let mut d = Self::up_with(p, side, shared_buffers, MEM, pairs);
        if pairs > 1 {
            let st = d.ctrl(
                p,
                net::VIRTIO_NET_CTRL_MQ,
                net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                &pairs.to_le_bytes(),
            );
            assert_eq!(st, Some(net::VIRTIO_NET_OK), "VQ_PAIRS_SET {pairs} refused");
        }
        d
    }

    fn up_with(p: &mut Pair, side: usize, shared_buffers: bool, page: u64, pairs: u16) -> Self {
        let q_pairs = p.fns[side].queue_pairs();
        assert!(pairs <= q_pairs, "the link has {q_pairs} queue pairs");
        // The driver's queues: its pairs, then the control queue (at 2Q).
        let nq = if pairs > 1 {
            net::num_queues(q_pairs)
        } else {
            2
        };
        let mem = if nq > 2 {
            (ring_offset(nq - 1, nq) + 0x8000).next_multiple_of(MEM)
        } else {
            MEM
        };
        let page = page.min(mem);
        let file = crate::mem::sealed_memfd(c"drv", mem).unwrap();
        let map = memmap2::MmapOptions::new()
            .len(mem as usize)
            .map_raw(&file)
            .unwrap();
        let base = map.as_mut_ptr();
        // A fresh driver instance: whatever an earlier one mapped is gone.
        p.fns[side].clear_dma();
        let n = mem / page;
        for i in (0..n).map(|i| (i * 7919) % n) {
            p.fns[side]
                .map_dma(
                    IOVA + i * page,
                    page,
                    Some(file.try_clone().unwrap()),
                    i * page,
                    crate::mem::Prot::READ | crate::mem::Prot::WRITE,
                )
                .unwrap();
        }
        let rings = (0..nq)
            .map(|q| {
                let r = ring_offset(q, nq);
                let layout = RingLayout {
                    desc: IOVA + r,
                    avail: IOVA + r + 0x2000,
                    used: IOVA + r + 0x4000,
                    size: QSIZE,
                };
                // SAFETY: `base` maps `mem` bytes at IOVA; the mapping is
                // kept in `_map` and unmapped only when the driver (and with
                // it the ring) is dropped; the rings lie inside it, aligned.
                unsafe { DriverRing::new(base, IOVA, mem, layout) }
            })
            .collect();
        let mut d = Self {
            side,
            base,
            _map: map,
            file,
            mem,
            pairs,
            rings,
            free_desc: (0..nq).map(|_| (0..QSIZE).rev().collect()).collect(),
            chained: Default::default(),
        };
        d.status(p, cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER);
        let mut feats = bit(cc::VIRTIO_F_VERSION_1) | bit(net::VIRTIO_NET_F_MAC);
        if shared_buffers {
            feats |= bit(net::VIRTIO_NET_F_SHARED_BUFFERS);
        }
        if pairs > 1 {
            feats |= bit(net::VIRTIO_NET_F_MQ) | bit(net::VIRTIO_NET_F_CTRL_VQ);
        }
        d.common_w(p, off::DRIVER_FEATURE_SELECT, 4, 0);
        d.common_w(p, off::DRIVER_FEATURE, 4, feats & 0xffff_ffff);
        d.common_w(p, off::DRIVER_FEATURE_SELECT, 4, 1);
        d.common_w(p, off::DRIVER_FEATURE, 4, feats >> 32);
        d.status(
            p,
            cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER | cc::STATUS_FEATURES_OK,
        );
        assert_ne!(p.fns[side].status() & cc::STATUS_FEATURES_OK, 0);
        for q in 0..nq {
            d.common_w(p, off::QUEUE_SELECT, 2, q as u64);
            d.common_w(p, off::QUEUE_SIZE, 2, QSIZE as u64);
            d.common_w(p, off::QUEUE_MSIX_VECTOR, 2, q as u64 + 1);
            let r = d.rings[q as usize].layout();
            d.common_w(p, off::QUEUE_DESC, 8, r.desc);
            d.common_w(p, off::QUEUE_DRIVER, 8, r.avail);
            d.common_w(p, off::QUEUE_DEVICE, 8, r.used);
            d.common_w(p, off::QUEUE_ENABLE, 2, 1);
        }
        d.status(
            p,
            cc::STATUS_ACKNOWLEDGE
                | cc::STATUS_DRIVER
                | cc::STATUS_FEATURES_OK
                | cc::STATUS_DRIVER_OK,
        );
        if shared_buffers {
            d.ack(p);
        }
        d
    }

    pub fn program_bar(&self, p: &mut Pair) {
        p.fns[self.side]
            .write(
                l::CONFIG_REGION,
                cfg::BAR0 as u64 + 8,
                &(WINDOW as u32).to_le_bytes(),
            )
            .unwrap();
        p.fns[self.side]
            .write(
                l::CONFIG_REGION,
                cfg::BAR0 as u64 + 12,
                &((WINDOW >> 32) as u32).to_le_bytes(),
            )
            .unwrap();
    }

    pub fn status(&mut self, p: &mut Pair, s: u8) {
        if s & cc::STATUS_ACKNOWLEDGE != 0 && p.fns[self.side].shm_window() == 0 {
            self.program_bar(p);
        }
        self.common_w(p, off::DEVICE_STATUS, 1, s as u64);
    }

    pub fn common_w(&self, p: &mut Pair, o: usize, len: usize, v: u64) {
        p.fns[self.side]
            .write(0, o as u64, &v.to_le_bytes()[..len])
            .unwrap();
        p.handle_events(self.side);
    }

    pub fn device_cfg_u32(&self, p: &mut Pair, o: usize) -> u32 {
        let mut b = [0; 4];
        p.fns[self.side]
            .read(0, l::DEVICE_OFFSET as u64 + o as u64, &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }

    /// Acknowledges the current epoch.
    pub fn ack(&self, p: &mut Pair) {
        let e = self.device_cfg_u32(p, net::cfg_off::PAIRING_EPOCH);
        p.fns[self.side]
            .write(
                0,
                l::DEVICE_OFFSET as u64 + net::cfg_off::EPOCH_ACK as u64,
                &e.to_le_bytes(),
            )
            .unwrap();
        p.handle_events(self.side);
    }

    pub fn at(&self, iova: u64) -> *mut u8 {
        assert!((IOVA..IOVA + self.mem).contains(&iova));
        // SAFETY: checked to be inside the driver's own mapping.
        unsafe { self.base.add((iova - IOVA) as usize) }
    }

    pub fn buf_iova(&self, q: u16, i: u16) -> u64 {
        IOVA + BUF + (q as u64 * QSIZE as u64 + i as u64) * BUF_SIZE
    }

    pub fn set_desc(&self, q: u16, i: u16, d: Desc) {
        self.rings[q as usize].set_desc(i, d);
    }

    /// Makes `head` available on queue `q` (one publish).
    pub fn avail(&mut self, q: u16, head: u16) {
        self.rings[q as usize].make_avail(head);
    }

    pub fn set_avail_idx(&mut self, q: u16, idx: u16) {
        self.rings[q as usize].set_avail_idx(idx);
    }

    pub fn set_avail_flags(&self, q: u16, flags: u16) {
        self.rings[q as usize].set_avail_flags(flags);
    }

    /// Reaps used entries of queue `q`, freeing their descriptors.
    pub fn used(&mut self, q: u16) -> Vec<(u16, u32)> {
        let out = self.rings[q as usize].used();
        for &(id, _) in &out {
            self.free_desc[q as usize].push(id);
            if let Some(rest) = self.chained.remove(&(q, id)) {
                self.free_desc[q as usize].extend(rest);
            }
        }
        out
    }

    /// Queue pairs this driver uses.
    pub fn pairs(&self) -> u16 {
        self.pairs
    }

    /// Descriptors of queue `q` the driver still has free (the `post_*` and
    /// `send_*` helpers panic when they run out; `send_classic` takes two).
    pub fn room(&self, q: u16) -> usize {
        self.free_desc[q as usize].len()
    }

    fn take_desc(&mut self, q: u16) -> u16 {
        self.free_desc[q as usize]
            .pop()
            .expect("test driver ran out of descriptors")
    }

    /// Posts a classic RX buffer of `len` bytes; returns its head.
    pub fn post_classic(&mut self, len: u32) -> u16 {
        self.post_classic_on(0, len)
    }

    /// Posts a classic RX buffer of `len` bytes on receiveq(`pair`).
    pub fn post_classic_on(&mut self, pair: u16, len: u32) -> u16 {
        let q = net::rx_queue(pair);
        let h = self.take_desc(q);
        self.set_desc(
            q,
            h,
            Desc {
                addr: self.buf_iova(q, h),
                len,
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        self.avail(q, h);
        h
    }

    /// Posts slot `s` on RX.
    pub fn post_slot(&mut self, p: &Pair, s: u32) -> u16 {
        self.post_slot_on(p, 0, s)
    }

    /// Posts slot `s` on receiveq(`pair`).
    pub fn post_slot_on(&mut self, p: &Pair, pair: u16, s: u32) -> u16 {
        let q = net::rx_queue(pair);
        let h = self.take_desc(q);
        let g = p.fns[0].net_geometry();
        self.set_desc(
            q,
            h,
            Desc {
                addr: WINDOW + g.slot_offset(s),
                len: g.slot_size(),
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        self.avail(q, h);
        h
    }

    /// Sends `frame` from classic memory, header and frame in two descriptors.
    pub fn send_classic(&mut self, frame: &[u8]) -> u16 {
        self.send_classic_on(0, frame)
    }

    /// As [`Self::send_classic`], on transmitq(`pair`).
    pub fn send_classic_on(&mut self, pair: u16, frame: &[u8]) -> u16 {
        let q = net::tx_queue(pair);
        let h = self.take_desc(q);
        let h2 = self.take_desc(q);
        let (a, b) = (self.buf_iova(q, h), self.buf_iova(q, h2));
        // The second descriptor is reaped with the head.
        self.chained.insert((q, h), vec![h2]);
        self.rings[q as usize].send_hdr_and_frame((h, a), (h2, b), frame);
        h
    }

    /// Sends slot `s` carrying `frame` (written into the region), or a gift.
    pub fn send_slot(&mut self, p: &Pair, s: u32, frame: &[u8], gift: bool) -> u16 {
        self.send_slot_on(p, 0, s, frame, gift)
    }

    /// As [`Self::send_slot`], on transmitq(`pair`).
    pub fn send_slot_on(&mut self, p: &Pair, pair: u16, s: u32, frame: &[u8], gift: bool) -> u16 {
        let g = p.fns[0].net_geometry();
        let hdr = NetHdr {
            flags: if gift {
                net::VIRTIO_NET_HDR_F_GIFT_BUFFER
            } else {
                0
            },
            ..Default::default()
        };
        let dst = p
            .shm()
            .ptr(g.slot_offset(s), (NET_HDR_LEN + frame.len()) as u64)
            .unwrap();
        // SAFETY: dst has room for header and frame (checked by ptr()).
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.to_bytes().as_ptr(), dst, NET_HDR_LEN);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), dst.add(NET_HDR_LEN), frame.len());
        }
        let q = net::tx_queue(pair);
        let h = self.take_desc(q);
        self.set_desc(
            q,
            h,
            Desc {
                addr: WINDOW + g.slot_offset(s),
                len: (NET_HDR_LEN + frame.len()) as u32,
                flags: 0,
                next: 0,
            },
        );
        self.avail(q, h);
        h
    }

    /// Index of the control queue of this driver (it must have one).
    pub fn ctrl_queue(&self) -> u16 {
        assert!(self.rings.len() > 2, "no control queue");
        self.rings.len() as u16 - 1
    }

    /// Sends a control command (header, `data`, a status byte: three
    /// descriptors), polls the pair and returns the ack byte, or None when
    /// the command was not completed with length 1.
    pub fn ctrl(&mut self, p: &mut Pair, class: u8, cmd: u8, data: &[u8]) -> Option<u8> {
        let q = self.ctrl_queue();
        let (h, hd, hs) = (self.take_desc(q), self.take_desc(q), self.take_desc(q));
        let (a, b, c) = (
            self.buf_iova(q, h),
            self.buf_iova(q, hd),
            self.buf_iova(q, hs),
        );
        self.write(a, &[class, cmd]);
        self.write(b, data);
        self.write(c, &[0xff]);
        let desc = |addr, len, flags, next| Desc {
            addr,
            len,
            flags,
            next,
        };
        self.set_desc(q, h, desc(a, 2, DESC_F_NEXT, hd));
        self.set_desc(q, hd, desc(b, data.len() as u32, DESC_F_NEXT, hs));
        self.set_desc(q, hs, desc(c, 1, DESC_F_WRITE, 0));
        self.chained.insert((q, h), vec![hd, hs]);
        self.avail(q, h);
        p.poll();
        let used = self.used(q);
        assert_eq!(used.len(), 1, "the control command was not completed");
        (used[0].1 == 1).then(|| self.read(c, 1)[0])
    }

    /// Sends an arbitrary chain on the control queue, polls the pair and
    /// returns the used entries (for malformed-input tests).
    pub fn ctrl_raw(&mut self, p: &mut Pair, descs: &[(u16, Desc)], head: u16) -> Vec<(u16, u32)> {
        let q = self.ctrl_queue();
        for (i, d) in descs {
            self.set_desc(q, *i, *d);
        }
        self.avail(q, head);
        p.poll();
        self.rings[q as usize].used()
    }

    /// Sends slot `s` as it is (no payload written), `len` bytes with the header.
    pub fn send_slot_len(&mut self, p: &Pair, s: u32, len: u32) -> u16 {
        let g = p.fns[0].net_geometry();
        let h = self.take_desc(1);
        self.set_desc(
            1,
            h,
            Desc {
                addr: WINDOW + g.slot_offset(s),
                len,
                flags: 0,
                next: 0,
            },
        );
        self.avail(1, h);
        h
    }

    /// Sends an arbitrary descriptor chain on TX (for malformed-input tests).
    pub fn send_raw(&mut self, descs: &[(u16, Desc)], head: u16) {
        for (i, d) in descs {
            self.set_desc(1, *i, *d);
            self.free_desc[1].retain(|x| x != i);
        }
        self.avail(1, head);
    }

    /// The memfd behind the driver's memory.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copies `bytes` to bus address `iova` of the driver's own memory.
    pub fn write(&self, iova: u64, bytes: &[u8]) {
        self.rings[0].write(iova, bytes)
    }

    /// Copies `len` bytes out of bus address `iova` of the driver's memory.
    pub fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        self.rings[0].read(iova, len)
    }

    /// Posts one RX descriptor `d` (for tests of odd buffers).
    pub fn post_raw(&mut self, d: Desc) -> u16 {
        let h = self.take_desc(0);
        self.set_desc(0, h, d);
        self.avail(0, h);
        h
    }

    /// Reads `len` bytes of RX buffer `head` (classic).
    pub fn rx_bytes(&self, head: u16, len: usize) -> Vec<u8> {
        self.rings[0].read(self.buf_iova(0, head), len)
    }
}

/// Reads slot `s`'s frame of `len` bytes (header excluded).
pub fn slot_frame(p: &Pair, s: u32, len: usize) -> Vec<u8> {
    let g = p.fns[0].net_geometry();
    let src = p
        .shm()
        .ptr(g.slot_offset(s) + NET_HDR_LEN as u64, len as u64)
        .unwrap();
    let mut v = vec![0; len];
    // SAFETY: src..src+len is in the region (checked by ptr()).
    unsafe { std::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), len) };
    v
}
