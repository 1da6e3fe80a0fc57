//! The Shared Buffers region: slot geometry and the ownership rules'
//! fixed parts (`docs/abi.md` §5, and §6 "Ownership").
//!
//! The region holds `slot_count` slots of `slot_size` bytes, slot `s` at
//! byte offset `s * slot_size`. A slot holds a [`crate::net::NetHdr`] and
//! then the frame. A descriptor refers to slot `s` when its address is
//! `bar_base + s * slot_size` exactly, where `bar_base` is the address the
//! driver programmed into the Shared Buffers BAR.

/// Which side of the pair.
pub type Side = u8;

/// Smallest slot: a 1514-byte frame plus the header, rounded to a power of two.
pub const MIN_SLOT_SIZE: u32 = 2048;
/// Largest slot: a 64 KiB frame plus the header fits, rounded to a power of two.
pub const MAX_SLOT_SIZE: u32 = 128 * 1024;
/// Fewest slots: each side owns at least one.
pub const MIN_SLOT_COUNT: u32 = 2;
/// Most slots: a slot index must fit a queue-sized table (virtio's max queue size).
pub const MAX_SLOT_COUNT: u32 = 32768;

/// Why a slot geometry is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// `slot_size` must be a power of two in `MIN_SLOT_SIZE..=MAX_SLOT_SIZE`.
    SlotSize(u32),
    /// `slot_count` must be a power of two in `MIN_SLOT_COUNT..=MAX_SLOT_COUNT`.
    SlotCount(u32),
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SlotSize(v) => write!(
                f,
                "slot size {v} is not a power of two between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE} bytes"
            ),
            Self::SlotCount(v) => write!(
                f,
                "slot count {v} is not a power of two between {MIN_SLOT_COUNT} and {MAX_SLOT_COUNT}"
            ),
        }
    }
}

/// Slot size and count of a Shared Buffers region, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotGeometry {
    slot_size: u32,
    slot_count: u32,
}

impl SlotGeometry {
    /// Validates and builds a geometry. Both numbers must be powers of two so
    /// the region size (their product) is a power of two, as a BAR requires.
    pub const fn new(slot_size: u32, slot_count: u32) -> Result<Self, GeometryError> {
        if !slot_size.is_power_of_two() || slot_size < MIN_SLOT_SIZE || slot_size > MAX_SLOT_SIZE {
            return Err(GeometryError::SlotSize(slot_size));
        }
        if !slot_count.is_power_of_two()
            || slot_count < MIN_SLOT_COUNT
            || slot_count > MAX_SLOT_COUNT
        {
            return Err(GeometryError::SlotCount(slot_count));
        }
        Ok(Self {
            slot_size,
            slot_count,
        })
    }

    /// Bytes per slot.
    pub const fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Number of slots.
    pub const fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Region (and BAR) size in bytes: a power of two.
    pub const fn region_size(&self) -> u64 {
        self.slot_size as u64 * self.slot_count as u64
    }

    /// Largest frame a slot can carry after its [`crate::net::NetHdr`].
    pub const fn max_frame(&self) -> u32 {
        self.slot_size - crate::net::NET_HDR_LEN as u32
    }

    /// Byte offset of slot `s` in the region.
    pub const fn slot_offset(&self, s: u32) -> u64 {
        s as u64 * self.slot_size as u64
    }

    /// The slot that starts exactly at `offset` into the region, if any.
    #[inline]
    pub const fn slot_at(&self, offset: u64) -> Option<u32> {
        // Powers of two: a mask and a shift, no division on the packet path.
        let mask = self.slot_size as u64 - 1;
        if offset >= self.region_size() || offset & mask != 0 {
            return None;
        }
        Some((offset >> self.slot_size.trailing_zeros()) as u32)
    }
}

/// Rule 2: the side that owns slot `s` at the start of an epoch in which
/// both sides negotiated shared buffers. Side `k` starts with the slots
/// `s % 2 == k`: an even split that interleaves, so neither side's share is
/// one contiguous half of the region.
pub const fn initial_owner(s: u32) -> Side {
    (s % 2) as Side
}

/// The queue pair (sub-pair) slot `s` belongs to on a link with `q_pairs`
/// queue pairs: `s % q_pairs` (`docs/abi.md` §8). `q_pairs` is a power of two.
#[inline]
pub const fn slot_pair(s: u32, q_pairs: u16) -> u16 {
    (s & (q_pairs as u32 - 1)) as u16
}

/// Rule 2 on a link with `q_pairs` queue pairs: side `(s / q_pairs) % 2`
/// owns slot `s` at the start of a zero-copy epoch, so that each sub-pair's
/// slots are split evenly between the sides. `initial_owner_mq(s, 1)` is
/// [`initial_owner`]`(s)`. `q_pairs` is a power of two.
pub const fn initial_owner_mq(s: u32, q_pairs: u16) -> Side {
    ((s >> (q_pairs as u32).trailing_zeros()) % 2) as Side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rules() {
        assert!(SlotGeometry::new(2048, 512).is_ok());
        assert_eq!(
            SlotGeometry::new(3000, 512),
            Err(GeometryError::SlotSize(3000))
        );
        assert_eq!(
            SlotGeometry::new(1024, 512),
            Err(GeometryError::SlotSize(1024))
        );
        assert_eq!(SlotGeometry::new(2048, 1), Err(GeometryError::SlotCount(1)));
        assert_eq!(
            SlotGeometry::new(2048, 65536),
            Err(GeometryError::SlotCount(65536))
        );
        let g = SlotGeometry::new(4096, 8).unwrap();
        assert_eq!(g.region_size(), 32768);
        assert_eq!(g.slot_at(4096), Some(1));
        assert_eq!(g.slot_at(4097), None);
        assert_eq!(g.slot_at(32768), None);
        assert_eq!(g.max_frame(), 4084);
        assert_eq!(initial_owner(3), 1);
        assert_eq!(initial_owner(4), 0);
    }

    #[test]
    fn sub_pairs_split_evenly() {
        for s in 0..64 {
            assert_eq!(initial_owner_mq(s, 1), initial_owner(s));
        }
        // Q = 4: slots 0-3 to side 0, 4-7 to side 1, ...; each sub-pair
        // has as many slots on each side.
        for q in [2u16, 4, 8, 16] {
            let mut n = [[0u32; 2]; 16];
            for s in 0..256u32 {
                n[slot_pair(s, q) as usize][initial_owner_mq(s, q) as usize] += 1;
            }
            for (p, counts) in n.iter().take(q as usize).enumerate() {
                assert_eq!(*counts, [256 / q as u32 / 2; 2], "q {q} pair {p}");
            }
        }
        assert_eq!(initial_owner_mq(5, 4), 1);
        assert_eq!(slot_pair(5, 4), 1);
    }
}
