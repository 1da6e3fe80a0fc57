//! What the PMD port scenarios (`pmd_port`, `pmd_port_random`) share: one
//! [`InPair`] of the shape the PMD's own tests used (64 slots of 2 KiB,
//! queues of 256, a TX that waits for the peer's post never expires), a
//! port configuration, and the small steps the scenarios are written in:
//! send one frame, one receive burst, let everything settle, check that
//! both ports and the host agree on every slot's owner.

use super::{InPair, TxWait, P};
use sbnet_device::counters::SideCounters;
use sbnet_device::pair::SideHandle;
use sbnet_device::switch::NOBODY;
use sbnet_pmd::{Pkt, Port, PortConfig};
use sbnet_vfio_user::server::Backend;

/// Slots in the scenarios' region.
pub const SLOTS: u32 = 64;
/// Slot size.
pub const SLOT_SIZE: u32 = 2048;

/// The scenarios' pair: 64 slots of 2 KiB, queues up to 256, waits that
/// never expire (no deferred deliveries).
pub fn pair() -> InPair {
    InPair::new(SLOT_SIZE, SLOTS, 256, TxWait::Forever)
}

/// A pair with `slots` slots and queues of at most `queue`.
pub fn small_pair(slots: u32, queue: u16) -> InPair {
    InPair::new(SLOT_SIZE, slots, queue, TxWait::Forever)
}

/// The scenarios' port configuration.
pub fn cfg() -> PortConfig {
    PortConfig {
        rx_queue_size: 256,
        tx_queue_size: 256,
        classic_rx_buffers: 8,
        ..PortConfig::default()
    }
}

/// An empty burst.
pub fn burst() -> [Option<Pkt>; 64] {
    [const { None }; 64]
}

/// Allocates, fills and sends one frame. False when no buffer is free.
pub fn send(port: &mut P, payload: &[u8]) -> bool {
    let Some(mut p) = port.alloc() else {
        return false;
    };
    p.set_len(payload.len()).unwrap();
    port.data_mut(&mut p).copy_from_slice(payload);
    let mut b = [Some(p)];
    assert_eq!(port.tx_burst(&mut b).unwrap(), 1);
    true
}

/// One receive burst; returns (bytes, was a slot) of each packet and frees
/// them.
pub fn recv(port: &mut P) -> Vec<(Vec<u8>, bool)> {
    let mut out = burst();
    let n = port.rx_burst(&mut out).unwrap();
    let mut v = Vec::new();
    for o in &mut out[..n] {
        let p = o.take().unwrap();
        v.push((port.data(&p).to_vec(), p.is_slot()));
        port.free(p);
    }
    v
}

/// Polls the host and both ports until nothing moves; no packet may
/// arrive meanwhile.
pub fn settle(pair: &InPair, a: &mut P, b: &mut P) {
    for _ in 0..4 {
        pair.quiesce();
        assert!(recv(a).is_empty());
        assert!(recv(b).is_empty());
    }
    pair.quiesce();
}

/// Two zero-copy ports on a fresh pair, settled.
pub fn zc_pair() -> (InPair, P, P) {
    zc_pair_with(cfg())
}

/// As [`zc_pair`], both ports opened with `cfg`.
pub fn zc_pair_with(cfg: PortConfig) -> (InPair, P, P) {
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg.clone()).unwrap();
    let mut b = Port::open(pair.bus(1), cfg).unwrap();
    settle(&pair, &mut a, &mut b);
    (pair, a, b)
}

/// The host's owner of slot `s`: 0, 1, or None when nobody owns it.
pub fn owner(pair: &InPair, s: u32) -> Option<u8> {
    pair.host()
        .owners
        .get(s as usize)
        .copied()
        .filter(|o| *o != NOBODY)
}

/// The host's pairing epoch.
pub fn epoch(pair: &InPair) -> u32 {
    pair.host().epoch
}

/// A host counter summed over both sides.
pub fn total(pair: &InPair, f: impl Fn(&SideCounters) -> u64) -> u64 {
    pair.host().counters.iter().map(f).sum()
}

/// Every refusal of both sides.
pub fn refusals(pair: &InPair) -> u64 {
    total(pair, SideCounters::refusals)
}

/// Slots passed without a copy, both sides (packets and gifts).
pub fn zero_copy(pair: &InPair) -> u64 {
    total(pair, |c| c.tx_zero_copy + c.gifts_sent)
}

/// Frames the host copied, both sides.
pub fn copied(pair: &InPair) -> u64 {
    total(pair, |c| c.tx_copied)
}

/// Every slot is owned by exactly one side, and the host agrees.
pub fn assert_split_consistent(pair: &InPair, a: &P, b: &P) {
    let owners = pair.host().owners;
    for s in 0..a.slot_count() {
        let (ma, mb) = (a.owns_slot(s), b.owns_slot(s));
        assert!(ma != mb, "slot {s}: A owns {ma}, B owns {mb}");
        assert_eq!(owners[s as usize], if ma { 0 } else { 1 }, "slot {s}");
    }
    a.check_ledger().unwrap();
    b.check_ledger().unwrap();
}

/// Side `k`'s application goes away cleanly: its port resets the device
/// (the epoch changes), then its vfio-user connection closes (the host
/// drops its DMA maps), so a new port can open on the side.
pub fn close(pair: &InPair, k: usize, port: P) {
    drop(port);
    SideHandle::new(pair.shared.clone(), k).disconnected();
}
