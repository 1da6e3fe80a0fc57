//! The control virtqueue (virtio 1.2 §5.1.6.5), used once at start for
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: one two-descriptor chain (the
//! readable command, then the device-writable ack byte), published, then a
//! bounded wait for the device's answer. Everything the device writes is
//! checked: exactly one used entry, naming the chain's head, with the ack
//! byte written.

use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sbnet_abi::common_cfg::STATUS_DEVICE_NEEDS_RESET;
use sbnet_abi::net::{
    CTRL_HDR_LEN, CTRL_MQ_PAIRS_LEN, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use sbnet_abi::ring::{
    Desc, UsedElem, AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, DESC_F_WRITE, RING_ENTRIES, RING_FLAGS,
    RING_IDX,
};

use crate::bus::{Bus, DmaRegion};
use crate::device::Device;
use crate::error::PmdError;
use crate::vq::RingLayout;

/// How long the device may take to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The ack byte's place after the command in the data area.
const ACK_AT: usize = 16;

/// The driver side of the control queue: rings and a 32-byte data area
/// after them, in one DMA allocation.
pub struct CtrlQueue {
    index: u16,
    mem: DmaRegion,
    layout: RingLayout,
}

impl CtrlQueue {
    /// Bytes after the rings for the command and the ack byte.
    pub const EXTRA: usize = 32;

    /// The control queue `index` of `size` entries over `mem` (zeroed,
    /// 16-byte aligned, at least `RingLayout::new(size).total + EXTRA`
    /// bytes, as `Device::program_queue` hands it out).
    pub fn new(index: u16, size: u16, mem: DmaRegion) -> Self {
        let layout = RingLayout::new(size);
        debug_assert!(mem.len >= layout.total + Self::EXTRA);
        Self { index, mem, layout }
    }

    /// DMA addresses of the descriptor table, avail ring and used ring.
    pub fn iovas(&self) -> (u64, u64, u64) {
        let at = |o: usize| self.mem.iova + o as u64;
        (
            at(self.layout.desc),
            at(self.layout.avail),
            at(self.layout.used),
        )
    }

    /// `mem.ptr + o` for an offset inside the allocation.
    fn at(&self, o: usize) -> *mut u8 {
        debug_assert!(o < self.mem.len);
        self.mem.ptr.wrapping_add(o)
    }

    /// Writes the chain `[class, command, data…]` + ack byte and makes it
    /// available.
    fn post(&self, class: u8, command: u8, data: [u8; 2]) {
        let cmd = self.layout.total;
        let entries = [
            Desc {
                addr: self.mem.iova + cmd as u64,
                len: (CTRL_HDR_LEN + CTRL_MQ_PAIRS_LEN) as u32,
                flags: DESC_F_NEXT,
                next: 1,
            },
            Desc {
                addr: self.mem.iova + (cmd + ACK_AT) as u64,
                len: 1,
                flags: DESC_F_WRITE,
                next: 0,
            },
        ];
        // SAFETY: every offset written is inside `mem` (the data area is
        // `EXTRA` bytes after the rings, the descriptor table and avail
        // ring are inside `layout.total`), suitably aligned (the table is
        // 16-byte aligned, the avail ring 2-byte aligned) and only the
        // driver writes these parts; the device reads them after the
        // Release store of avail.idx below.
        unsafe {
            ptr::write_volatile(
                self.at(cmd).cast::<[u8; 4]>(),
                [class, command, data[0], data[1]],
            );
            ptr::write_volatile(self.at(cmd + ACK_AT), 0xff);
            for (i, d) in entries.iter().enumerate() {
                ptr::write_volatile(self.at(self.layout.desc).cast::<Desc>().add(i), *d);
            }
            let avail = self.at(self.layout.avail);
            ptr::write_volatile(
                avail.add(RING_FLAGS as usize).cast::<u16>(),
                AVAIL_F_NO_INTERRUPT,
            );
            ptr::write_volatile(avail.add(RING_ENTRIES as usize).cast::<u16>(), 0);
        }
        self.idx(self.layout.avail).store(1, Ordering::Release);
    }

    /// The `idx` field of the ring at offset `ring`.
    fn idx(&self, ring: usize) -> &AtomicU16 {
        // SAFETY: `ring + RING_IDX` is inside `mem` (a ring of the layout),
        // 2-byte aligned; this process accesses it only through this atomic
        // view while `self` lives.
        unsafe { AtomicU16::from_ptr(self.at(ring + RING_IDX as usize).cast::<u16>()) }
    }

    /// The device's answer once it has used the chain: `Ok(None)` while
    /// it has not, `Ok(Some(ack))`, or what it broke.
    fn answer(&self) -> Result<Option<u8>, String> {
        match self.idx(self.layout.used).load(Ordering::Acquire) {
            0 => return Ok(None),
            1 => {}
            n => return Err(format!("used.idx moved to {n} for one command")),
        }
        // SAFETY: the first used element is inside the used ring, 4-byte
        // aligned; read once by value after the Acquire load above.
        let e: UsedElem = unsafe {
            ptr::read_volatile(
                self.at(self.layout.used + RING_ENTRIES as usize)
                    .cast::<UsedElem>(),
            )
        };
        if e.id != 0 {
            return Err(format!("used entry names descriptor {}, not 0", e.id));
        }
        if e.len != 1 {
            return Err(format!("used entry reports {} bytes written, not 1", e.len));
        }
        // SAFETY: inside the data area; a plain byte read by value.
        Ok(Some(unsafe {
            ptr::read_volatile(self.at(self.layout.total + ACK_AT))
        }))
    }
}

/// Sends `VQ_PAIRS_SET pairs` on the control queue `c` (after
/// `DRIVER_OK`) and waits, bounded, for `VIRTIO_NET_OK`.
pub fn set_queue_pairs<B: Bus>(
    dev: &mut Device<B>,
    c: CtrlQueue,
    pairs: u16,
) -> Result<(), PmdError> {
    let fail = |m: String| PmdError::MultiQueue(format!("VQ_PAIRS_SET {pairs}: {m}"));
    c.post(
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        pairs.to_le_bytes(),
    );
    dev.notify(c.index)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match c
            .answer()
            .map_err(|m| fail(format!("the device broke the control queue: {m}")))?
        {
            Some(VIRTIO_NET_OK) => return Ok(()),
            Some(VIRTIO_NET_ERR) => return Err(fail("the device answered VIRTIO_NET_ERR".into())),
            Some(ack) => return Err(fail(format!("the device answered {ack:#04x}"))),
            None => {}
        }
        let status = dev.status()?;
        if status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(PmdError::DeviceNeedsReset { status });
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "no answer within {} ms",
                ANSWER_TIMEOUT.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use sbnet_abi::common_cfg::bit;

    use sbnet_abi::net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};

    use crate::config::PortConfig;
    use crate::ledger::SlotState;
    use crate::testing::{FakeDevice, FakeOptions};
    use crate::{Port, PortQueue, DRIVER_FEATURES};

    fn mq_link(max_pairs: u16) -> FakeOptions {
        let o = FakeOptions::default();
        FakeOptions {
            features: o.features | bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ),
            max_pairs,
            ..o
        }
    }

    fn open_err(opts: FakeOptions, queue_pairs: u16) -> String {
        let fake = FakeDevice::new(opts);
        match Port::open_queue_pairs(fake.bus(), PortConfig::default(), queue_pairs) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn two_pairs_negotiate_and_set_the_pairs() {
        let fake = FakeDevice::new(mq_link(2));
        let port = Port::open_queue_pairs(fake.bus(), PortConfig::default(), 2).unwrap();
        let mq = bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ);
        assert_eq!(port.features() & mq, mq);
        assert_eq!((port.queue_pairs(), port.link_pairs()), (2, 2));
        let regs = fake.regs();
        assert_eq!(regs.pairs_set, Some(2));
        assert_eq!(regs.queues.len(), 5);
        assert!(regs.queues.iter().all(|q| q.enable == 1));
        assert_eq!(regs.notifies[4], 1, "one command, one notification");
        // Queue pair q has the slots s % 2 == q, and only those.
        assert_eq!(port.queue(0).slot_count(), 32);
        assert_eq!(port.queue(1).slot_count(), 32);
        assert_eq!(port.queue(1).slot_state(3), Some(SlotState::Free));
        assert_eq!(port.queue(1).slot_state(2), None);
        assert_eq!(port.slot_state(3), Some(SlotState::Free));
        port.check_ledger().unwrap();
        fn is_send<T: Send>() {}
        is_send::<&mut PortQueue<crate::testing::FakeBus>>();
    }

    #[test]
    fn one_pair_on_a_multiqueue_link_uses_sub_pair_0() {
        let fake = FakeDevice::new(mq_link(4));
        let port = Port::open(fake.bus(), PortConfig::default()).unwrap();
        assert_eq!(port.features() & bit(VIRTIO_NET_F_MQ), 0);
        assert_eq!(
            port.features() & !bit(sbnet_abi::net::VIRTIO_NET_F_SHARED_BUFFERS),
            DRIVER_FEATURES
        );
        assert_eq!(fake.regs().pairs_set, None, "no control queue without MQ");
        assert_eq!((port.queue_pairs(), port.link_pairs()), (1, 4));
        assert_eq!(port.slot_count(), 64);
        assert_eq!(port.queue(0).slot_count(), 16);
        assert_eq!(port.slot_state(4), Some(SlotState::Free));
        assert_eq!(port.slot_state(1), None);
    }

    #[test]
    fn multiqueue_needs_the_device_to_offer_it() {
        let e = open_err(FakeOptions::default(), 2);
        assert!(e.contains("does not offer VIRTIO_NET_F_MQ"), "{e}");
    }

    #[test]
    fn more_pairs_than_the_link_has_are_refused() {
        let e = open_err(mq_link(2), 4);
        assert!(e.contains("4 queue pairs asked, the link has 2"), "{e}");
    }

    #[test]
    fn queue_pairs_must_be_a_power_of_two_up_to_16() {
        for n in [0, 3, 32] {
            let e = open_err(mq_link(16), n);
            assert!(e.contains("power of two between 1 and 16"), "{n}: {e}");
        }
    }

    #[test]
    fn a_bad_max_virtqueue_pairs_is_refused() {
        for max in [0, 3, 32] {
            let e = open_err(mq_link(max), 1);
            assert!(e.contains("max_virtqueue_pairs"), "{max}: {e}");
        }
    }

    #[test]
    fn the_device_s_answer_is_checked() {
        for (answer, want) in [
            (Some(1), "VIRTIO_NET_ERR"),
            (Some(7), "answered 0x07"),
            (None, "no answer within"),
        ] {
            let opts = FakeOptions {
                ctrl_answer: Some(answer),
                ..mq_link(2)
            };
            let e = open_err(opts, 2);
            assert!(e.contains(want), "{answer:?}: {e}");
        }
    }
}
