//! The hostile-chain table: descriptor chains a guest may link, what chain
//! parsing makes of each, and whether the switch refuses it as a TX. The
//! chain unit test and the tests crate's over-the-socket test share it.

use crate::chain::ChainError;
use sbnet_abi::ring::{Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

/// One case of the table.
#[derive(Debug, Clone)]
pub struct HostileChain {
    /// What the case is.
    pub name: &'static str,
    /// The chain, descriptor `i` at index `i`; the head is 0.
    pub descs: Vec<Desc>,
    /// Parsed as an RX chain (device-writable) rather than a TX chain.
    pub writable: bool,
    /// What [`crate::chain::Chain::parse`] returns: the number of buffers or the error.
    pub parse: Result<usize, ChainError>,
    /// Sent as a TX through the switch, it is completed with length 0 and
    /// counted as one refusal.
    pub refused_as_tx: bool,
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

/// The table for a queue of `qsize` entries; `buf` starts at least 4000
/// mapped bytes of the driver's memory and `unmapped` is outside it.
pub fn hostile_chains(buf: u64, unmapped: u64, qsize: u16) -> Vec<HostileChain> {
    let a = buf;
    let w = DESC_F_WRITE;
    let case = |name, descs, writable, parse, refused_as_tx| HostileChain {
        name,
        descs,
        writable,
        parse,
        refused_as_tx,
    };
    use ChainError as E;
    vec![
        case("one buffer", vec![d(a, 10, 0, 0)], false, Ok(1), true),
        case(
            "two buffers",
            vec![d(a, 10, DESC_F_NEXT, 1), d(a, 20, 0, 0)],
            false,
            Ok(2),
            false,
        ),
        case(
            "loop",
            vec![d(a, 12, DESC_F_NEXT, 0)],
            false,
            Err(E::Loop(0)),
            true,
        ),
        case(
            "loop of two",
            vec![d(a, 10, DESC_F_NEXT, 1), d(a, 10, DESC_F_NEXT, 0)],
            false,
            Err(E::Loop(0)),
            true,
        ),
        case(
            "loop back into the middle",
            vec![
                d(a, 10, DESC_F_NEXT, 1),
                d(a, 10, DESC_F_NEXT, 2),
                d(a, 10, DESC_F_NEXT, 1),
            ],
            false,
            Err(E::Loop(1)),
            true,
        ),
        case(
            "cyclic RX chain",
            vec![d(a, 100, w | DESC_F_NEXT, 1), d(a, 100, w | DESC_F_NEXT, 0)],
            true,
            Err(E::Loop(0)),
            true,
        ),
        case(
            "next out of range",
            vec![d(a, 12, DESC_F_NEXT, qsize)],
            false,
            Err(E::NextOutOfRange(qsize)),
            true,
        ),
        case(
            "unknown flag",
            vec![d(a, 32, 0x40, 0)],
            false,
            Err(E::UnknownFlags(0x40)),
            true,
        ),
        case(
            "unknown high flag",
            vec![d(a, 32, 0x100, 0)],
            false,
            Err(E::UnknownFlags(0x100)),
            true,
        ),
        case(
            "indirect",
            vec![d(a, 32, DESC_F_INDIRECT, 0)],
            false,
            Err(E::Indirect),
            true,
        ),
        case(
            "zero length",
            vec![d(a, 0, 0, 0)],
            false,
            Err(E::ZeroLength),
            true,
        ),
        case(
            "overflowing address",
            vec![d(u64::MAX - 4, 10, 0, 0)],
            false,
            Err(E::AddressOverflow(u64::MAX - 4)),
            true,
        ),
        case(
            "overflowing address, long",
            vec![d(u64::MAX - 10, 100, 0, 0)],
            false,
            Err(E::AddressOverflow(u64::MAX - 10)),
            true,
        ),
        case(
            "writable in TX",
            vec![d(a, 32, w, 0)],
            false,
            Err(E::WrongDirection),
            true,
        ),
        case(
            "unmapped address",
            vec![d(unmapped, 100, 0, 0)],
            false,
            Ok(1),
            true,
        ),
        case(
            "shorter than the header",
            vec![d(a, 4, 0, 0)],
            false,
            Ok(1),
            true,
        ),
        case(
            "frame too big for the peer",
            vec![d(a, 4000, 0, 0)],
            false,
            Ok(1),
            true,
        ),
        case(
            "readable in RX",
            vec![d(a, 10, 0, 0)],
            true,
            Err(E::WrongDirection),
            false,
        ),
        case(
            "readable after writable",
            vec![d(a, 10, w | DESC_F_NEXT, 1), d(a, 10, 0, 0)],
            true,
            Err(E::ReadAfterWrite),
            false,
        ),
        case(
            "two writable",
            vec![d(a, 10, w | DESC_F_NEXT, 1), d(a, 10, w, 0)],
            true,
            Ok(2),
            false,
        ),
    ]
}
