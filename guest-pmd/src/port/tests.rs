//! A port against a device that misbehaves: the fake device
//! ([`crate::testing::FakeDevice`]) with no host behind it, whose used
//! rings the test writes by hand. The PMD must distrust every used entry.
//! Scenarios against a working host (flows, epochs, gifts, classic and
//! mixed pairs, counters) run against the real one in the tests crate
//! (`pmd_port`, `pmd_port_random`).

use sbnet_abi::net::NET_HDR_LEN;

use super::*;
use crate::testing::{DeviceRing, FakeBus, FakeDevice, FakeOptions};
use crate::vq::VqError;

type P = Port<FakeBus>;

fn opts() -> FakeOptions {
    FakeOptions {
        slot_count: 64,
        queue_size: 256,
        ..FakeOptions::default()
    }
}

fn cfg() -> PortConfig {
    PortConfig {
        rx_queue_size: 256,
        tx_queue_size: 256,
        classic_rx_buffers: 8,
        ..PortConfig::default()
    }
}

fn burst() -> [Option<Pkt>; 64] {
    [const { None }; 64]
}

/// A port alone on a fresh fake device (copy mode: its receive queue holds
/// classic buffers).
fn open() -> (FakeDevice, P) {
    let dev = FakeDevice::new(opts());
    let port = Port::open(dev.bus(), cfg()).unwrap();
    (dev, port)
}

/// One receive burst; frees what it got and returns how many.
fn recv(port: &mut P) -> usize {
    let mut out = burst();
    let n = port.rx_burst(&mut out).unwrap();
    for o in &mut out[..n] {
        port.free(o.take().unwrap());
    }
    n
}

/// The device writes to the RX used ring what `f` says and publishes it.
fn device_rx(dev: &FakeDevice, f: impl FnOnce(&mut DeviceRing)) {
    dev.with_rings(|r| {
        f(&mut r[0]);
        r[0].publish_used();
    })
    .expect("DRIVER_OK");
}

fn misbehave(f: impl FnOnce(&mut DeviceRing)) -> (PmdError, Stats) {
    let (dev, mut a) = open();
    device_rx(&dev, f);
    let mut out = burst();
    let err = a.rx_burst(&mut out).unwrap_err();
    // Sticky.
    assert!(a.rx_burst(&mut out).is_err());
    assert!(a.tx_burst(&mut out).is_err());
    (err, a.stats())
}

#[test]
fn port_is_send() {
    fn is_send<T: Send>() {}
    is_send::<P>();
}

#[test]
fn used_id_out_of_range_stops_the_port() {
    let (err, st) = misbehave(|r| r.push_used(9999, 0));
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                queue: 0,
                error: VqError::IdOutOfRange { id: 9999, .. }
            }
        ),
        "{err}"
    );
    assert_eq!(st.device_misbehaved, 1);
}

#[test]
fn used_len_beyond_the_buffer_stops_the_port() {
    let (err, _) = misbehave(|r| {
        let (id, d) = r.next_avail().unwrap();
        r.push_used(u32::from(id), d.len + 1);
    });
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                error: VqError::LenTooBig { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn used_idx_racing_ahead_stops_the_port() {
    let (err, _) = misbehave(|r| r.set_used_idx(1000));
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                error: VqError::UsedIdxTooFar { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn good_packets_come_before_the_error() {
    let (dev, mut a) = open();
    device_rx(&dev, |r| {
        let (id, _) = r.next_avail().unwrap();
        r.push_used(u32::from(id), NET_HDR_LEN as u32 + 60);
        r.push_used(9999, 0);
    });
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 1);
    assert_eq!(out[0].as_ref().unwrap().len(), 60);
    assert!(matches!(
        a.rx_burst(&mut out[1..]),
        Err(PmdError::DeviceMisbehaved { .. })
    ));
}

#[test]
fn a_refused_post_is_counted_not_a_resync() {
    let (dev, mut a) = open();
    device_rx(&dev, |r| {
        let (id, _) = r.next_avail().unwrap();
        r.push_used(u32::from(id), 0);
    });
    assert_eq!(recv(&mut a), 0);
    let st = a.stats();
    assert_eq!(st.refused_completions, 1);
    assert_eq!(st.resyncs, 0);
    // The buffer is posted again by the next burst.
    assert_eq!(recv(&mut a), 0);
    assert_eq!(a.stats().classic.posted_rx, 256);
}

#[test]
fn a_runt_is_dropped() {
    let (dev, mut a) = open();
    device_rx(&dev, |r| {
        let (id, _) = r.next_avail().unwrap();
        r.push_used(u32::from(id), 5);
    });
    assert_eq!(recv(&mut a), 0);
    assert_eq!(a.stats().rx_runts, 1);
    assert!(a.failure().is_none());
}
