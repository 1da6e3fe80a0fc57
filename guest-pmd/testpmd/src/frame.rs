//! The test frame: an Ethernet header, a 32-byte test header (magic,
//! sequence number, length, checksum, timestamp) and a pattern derived from
//! the sequence number. Receivers check all of it.

/// Ethernet header length.
pub const ETH: usize = 14;
/// Test header length after the Ethernet header.
pub const TEST_HDR: usize = 32;
/// Smallest frame that holds both headers.
pub const MIN_FRAME: usize = ETH + TEST_HDR;
/// EtherType for local experiments (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;
const MAGIC: u32 = 0x5342_4e54; // "SBNT"

/// What the sender writes and the receiver verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Pattern in every byte, checksum over all of it.
    Full,
    /// Only the headers (benchmarks of large frames: the application does
    /// not touch the payload, as a forwarding application would not).
    Header,
}

/// Why a received frame failed its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Shorter than the headers.
    Short,
    /// Magic number wrong.
    Magic,
    /// Length field differs from the received length.
    Length,
    /// Checksum mismatch.
    Checksum,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// FNV-1a over `b`, 32 bits.
fn fnv(b: &[u8]) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for x in b {
        h = (h ^ *x as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// Writes a whole test frame of `f.len()` bytes.
pub fn build(f: &mut [u8], src: [u8; 6], dst: [u8; 6], seq: u64, stamp_ns: u64, payload: Payload) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let t = ETH;
    put32(f, t, MAGIC);
    put32(f, t + 4, f.len() as u32);
    f[t + 8..t + 16].copy_from_slice(&seq.to_le_bytes());
    f[t + 16..t + 24].copy_from_slice(&stamp_ns.to_le_bytes());
    if payload == Payload::Full {
        for (i, x) in f[MIN_FRAME..].iter_mut().enumerate() {
            *x = (seq as usize).wrapping_add(i) as u8;
        }
    }
    put32(f, t + 24, 0);
    let sum = checksum(f, payload);
    put32(f, t + 24, sum);
}

fn checksum(f: &[u8], payload: Payload) -> u32 {
    // The checksum field itself (t+24..t+28) is hashed as written (zero when building).
    let end = match payload {
        Payload::Full => f.len(),
        Payload::Header => MIN_FRAME,
    };
    fnv(&f[ETH..ETH + 24]) ^ fnv(&f[ETH + 28..end]).rotate_left(7)
}

/// Checks a received frame; returns (sequence number, timestamp).
pub fn check(f: &[u8], payload: Payload) -> Result<(u64, u64), Bad> {
    if f.len() < MIN_FRAME {
        return Err(Bad::Short);
    }
    let t = ETH;
    if get32(f, t) != MAGIC {
        return Err(Bad::Magic);
    }
    if get32(f, t + 4) as usize != f.len() {
        return Err(Bad::Length);
    }
    let want = get32(f, t + 24);
    if checksum(f, payload) != want {
        return Err(Bad::Checksum);
    }
    Ok((get64(f, t + 8), get64(f, t + 16)))
}

/// Swaps source and destination MAC addresses in place.
pub fn macswap(f: &mut [u8]) {
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        for payload in [Payload::Full, Payload::Header] {
            let mut f = vec![0u8; 200];
            build(&mut f, [1; 6], [2; 6], 77, 5, payload);
            assert_eq!(check(&f, payload), Ok((77, 5)));
            let mut g = f.clone();
            g[ETH + 9] ^= 1;
            assert_eq!(check(&g, payload), Err(Bad::Checksum));
            let mut g = f.clone();
            g[ETH] ^= 1;
            assert_eq!(check(&g, payload), Err(Bad::Magic));
            assert_eq!(check(&f[..150], payload), Err(Bad::Length));
            assert_eq!(check(&f[..20], payload), Err(Bad::Short));
            macswap(&mut f);
            assert_eq!(&f[0..6], &[1; 6]);
            assert_eq!(check(&f, payload), Ok((77, 5)), "macswap keeps the check");
        }
        let mut f = vec![0u8; 200];
        build(&mut f, [1; 6], [2; 6], 1, 0, Payload::Full);
        f[199] ^= 0x40;
        assert_eq!(
            check(&f, Payload::Full),
            Err(Bad::Checksum),
            "payload byte flipped"
        );
    }
}
