//! What the switch sees of one side: its two queues, its guest memory, its
//! counters, the Shared Buffers window its driver programmed, the
//! negotiated flags and an interrupt hook, and nothing else (as
//! cloud-hypervisor's `net_util::NetQueuePair` sees a device). A view is
//! built once per polling round ([`crate::function::Function::view`]),
//! never per packet.
//!
//! A ring the switch finds broken is recorded in the view, which drops the
//! side's queues and marks it inactive at once (so the rest of the round
//! treats it as the function will); the owner applies `DEVICE_NEEDS_RESET`
//! to the function when the round is over ([`SideView::broken`]).

use crate::counters::SideCounters;
use crate::function::Interrupts;
use crate::mem::GuestMemory;
use crate::queue::{Queue, QueueError};
use sbnet_abi::common_cfg as cc;
use sbnet_abi::net::{RX_QUEUE, TX_QUEUE};

/// Raises one side's queue interrupts: sets the ISR queue bit and signals
/// the queue's MSI-X vector (or INTx).
#[derive(Debug)]
pub struct IrqHook<'a> {
    isr: &'a mut u8,
    vectors: [u16; 2],
    irqs: &'a mut Interrupts,
}

impl<'a> IrqHook<'a> {
    /// A hook over a function's ISR byte, its queues' vectors (RX, TX) and
    /// its interrupt state.
    pub fn new(isr: &'a mut u8, vectors: [u16; 2], irqs: &'a mut Interrupts) -> Self {
        Self { isr, vectors, irqs }
    }

    /// Signals queue `q`; true when an eventfd was written.
    #[inline]
    fn signal_queue(&mut self, q: u16) -> bool {
        *self.isr |= cc::ISR_QUEUE;
        self.irqs.signal(self.vectors[q as usize & 1])
    }
}

/// One side as the switch sees it for one polling round.
#[derive(Debug)]
pub struct SideView<'a> {
    /// The RX queue, when enabled (and the side not broken).
    pub rx: Option<&'a mut Queue>,
    /// The TX queue, when enabled (and the side not broken).
    pub tx: Option<&'a mut Queue>,
    /// The side's DMA maps.
    pub mem: &'a GuestMemory,
    /// The side's counters.
    pub counters: &'a mut SideCounters,
    /// The Shared Buffers window (BAR address) its driver programmed; 0
    /// (inert: no address is a slot reference) when the driver did not
    /// negotiate shared buffers or has not programmed BAR 2/3.
    pub window: u64,
    /// DRIVER_OK and neither FAILED nor DEVICE_NEEDS_RESET.
    pub active: bool,
    /// Active and negotiated shared buffers.
    pub shared_buffers: bool,
    irq: IrqHook<'a>,
    broken: Option<QueueError>,
}

impl<'a> SideView<'a> {
    /// A view over these parts of one side.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rx: Option<&'a mut Queue>,
        tx: Option<&'a mut Queue>,
        mem: &'a GuestMemory,
        counters: &'a mut SideCounters,
        window: u64,
        active: bool,
        shared_buffers: bool,
        irq: IrqHook<'a>,
    ) -> Self {
        Self {
            rx,
            tx,
            mem,
            counters,
            window,
            active,
            shared_buffers,
            irq,
            broken: None,
        }
    }

    /// Queue `q` (RX or TX), when enabled.
    #[inline]
    pub fn queue(&mut self, q: u16) -> Option<&mut Queue> {
        match q {
            RX_QUEUE => self.rx.as_deref_mut(),
            TX_QUEUE => self.tx.as_deref_mut(),
            _ => None,
        }
    }

    /// Publishes queue `q`'s used entries and signals it when the driver
    /// wants it.
    #[inline(always)]
    pub fn publish(&mut self, q: u16) {
        let Some(queue) = self.queue(q) else { return };
        if queue.publish() {
            self.signal(q);
        }
    }

    /// Signals queue `q` (just published) when its driver wants an interrupt.
    #[inline(always)]
    fn signal(&mut self, q: u16) {
        if self.irq.signal_queue(q) {
            self.counters.interrupts += 1;
        }
    }

    /// Publishes queue `qa` of side `a` and queue `qb` of side `b` behind
    /// one barrier, and signals each whose driver wants it: what
    /// [`Self::publish`] of both does, with one barrier instead of two.
    #[inline(always)]
    pub fn publish_two(a: &mut Self, qa: u16, b: &mut Self, qb: u16) {
        let pa = a.queue(qa).is_some_and(|q| q.publish_idx());
        let pb = b.queue(qb).is_some_and(|q| q.publish_idx());
        if !(pa || pb) {
            return;
        }
        crate::queue::full_barrier();
        for (f, q, p) in [(a, qa, pa), (b, qb, pb)] {
            if p && f.queue(q).is_some_and(|q| q.wants_interrupt()) {
                f.signal(q);
            }
        }
    }

    /// A ring could not be trusted: the side stops here for this round and
    /// goes to `DEVICE_NEEDS_RESET` when the round is over.
    #[cold]
    pub fn needs_reset(&mut self, why: QueueError) {
        if self.broken.is_none() {
            self.broken = Some(why);
        }
        self.rx = None;
        self.tx = None;
        self.active = false;
        self.shared_buffers = false;
    }

    /// Why the side broke during the round, if it did.
    pub fn broken(&self) -> Option<QueueError> {
        self.broken
    }
}
