//! The PMD chain: A — link 1 — B — link 2 — C, with the real binaries.
//!
//! Two `host-pair serve` processes (one per link), `sbnet-testpmd` txonly
//! on A, `--mode forward` on B (one port on each link) and rxonly on C,
//! which checks every frame's integrity. Nothing may be dropped:
//! txonly sends exactly `COUNT` frames (a full transmit ring keeps them for
//! the next burst), the forwarder holds a frame until the far port has a
//! buffer for it (`dropped` must stay 0), so C receives exactly `COUNT`.
//! Each frame is copied once, at B (the two links' regions differ), and
//! never by the host: both links carry it zero-copy.

mod pmd_common;
mod procs;

use pmd_common::sockets::serial;
use procs::{expect_success, json, num, testpmd, Link};
use sbnet_tests::{bin, temp_dir};
use std::time::{Duration, Instant};

/// Frames A sends.
const COUNT: u64 = 100_000;

#[test]
fn a_forwards_through_b_to_c_copied_once_at_b_and_never_by_the_host() {
    let _serial = serial();
    let dir = temp_dir("pmd_chain");
    bin("host-pair");
    bin("sbnet-testpmd");
    let l1 = Link::serve(&dir, "link1", &[]);
    let l2 = Link::serve(&dir, "link2", &[]);
    // Receiver first, then the forwarder, then the sender: every port is
    // in its pair before the first frame exists.
    let (mut c, c_json) = testpmd(
        &dir,
        "c",
        COUNT,
        &["--socket", &l2.sockets[1], "--mode", "rxonly"],
    );
    let (mut b, b_json) = testpmd(
        &dir,
        "b",
        COUNT,
        &[
            "--socket",
            &l1.sockets[1],
            "--socket",
            &l2.sockets[0],
            "--mode",
            "forward",
        ],
    );
    let (mut a, a_json) = testpmd(
        &dir,
        "a",
        COUNT,
        &["--socket", &l1.sockets[0], "--mode", "txonly"],
    );
    expect_success(
        &mut [&mut c, &mut b, &mut a],
        Instant::now() + Duration::from_secs(240),
    );
    let (h1, h2) = (l1.finish(), l2.finish());
    let (a, b, c) = (json(&a_json), json(&b_json), json(&c_json));
    let ctx = format!("A {a}\nB {b}\nC {c}\nlink1 {h1}\nlink2 {h2}");

    // Everything arrived, intact, once.
    assert_eq!(num(&a, "tx_packets"), COUNT, "{ctx}");
    assert_eq!(num(&c, "rx_packets"), COUNT, "{ctx}");
    assert_eq!(num(&c, "integrity_errors"), 0, "{ctx}");
    assert_eq!(num(&b, "dropped"), 0, "{ctx}");
    // One copy per frame at B, none anywhere else.
    assert_eq!(num(&b, "copies"), COUNT, "{ctx}");
    assert_eq!(num(&b, "ports.0.port.rx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&b, "ports.1.port.tx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&a, "port.tx_zero_copy"), COUNT, "{ctx}");
    assert_eq!(num(&c, "port.rx_zero_copy"), COUNT, "{ctx}");
    for (name, h) in [("link1", &h1), ("link2", &h2)] {
        assert_eq!(num(h, "sides.0.tx_zero_copy"), COUNT, "{name}\n{ctx}");
        for side in 0..2 {
            for k in ["tx_copied", "copied_bytes", "refusals"] {
                let path = format!("sides.{side}.{k}");
                assert_eq!(num(h, &path), 0, "{name} {path}\n{ctx}");
            }
        }
        assert_eq!(h["ledger"]["whole"], true, "{name}\n{ctx}");
    }
    // No slot lost or doubled on any port.
    assert_eq!(a["ledger"]["whole"], true, "{ctx}");
    assert_eq!(c["ledger"]["whole"], true, "{ctx}");
    for k in 0..2 {
        assert_eq!(b["ports"][k]["ledger"]["whole"], true, "B port {k}\n{ctx}");
    }
    eprintln!(
        "chain: {COUNT} frames A -> B -> C at {:.3} Mpps (C), {:.2} copies per frame at B, 0 on the links",
        c["mpps"].as_f64().unwrap_or(0.0),
        num(&b, "copies") as f64 / num(&c, "rx_packets") as f64
    );
}
