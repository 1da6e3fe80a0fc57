//! Packet handles ([`Pkt`]) and the ring tokens that name buffers.

use std::num::NonZeroU32;

use crate::error::PmdError;

/// Bit of a buffer token that marks a classic buffer (slot indices are at
/// most 32768, classic indices at most 65536).
const CLASSIC: u32 = 1 << 31;

/// Bit of a transmit token: the slot was posted on the receive queue in
/// the same burst as its send (`SB_F_EARLY_POST`), so its ledger state
/// moved then and its completion moves nothing.
pub(crate) const EARLY: u32 = 1 << 30;

/// Bit of [`Pkt`]'s `cap` word that says the port wrote the buffer's
/// header itself when it handed the packet out ([`crate::Port::alloc`]),
/// so `tx_burst` need not write it again (buffers are far below 2 GiB).
const HDR_CLEAN: u32 = 1 << 31;

/// A buffer, as the rings' tokens encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buf {
    /// Slot `s` of the Shared Buffers region.
    Slot(u32),
    /// Classic buffer `i`.
    Classic(u32),
}

impl Buf {
    /// The ring token.
    #[inline]
    pub(crate) fn token(self) -> u32 {
        match self {
            Self::Slot(s) => s,
            Self::Classic(i) => CLASSIC | i,
        }
    }

    /// Decodes a ring token (tokens come from the port's own pushes, so
    /// every value is one of the two).
    #[inline]
    pub(crate) fn from_token(t: u32) -> Self {
        if t & CLASSIC == 0 {
            Self::Slot(t)
        } else {
            Self::Classic(t & !CLASSIC)
        }
    }
}

/// A packet buffer held by the application.
///
/// A [`Pkt`] names one buffer the application holds: a slot of the Shared
/// Buffers region or a classic buffer in the port's DMA memory. It is a
/// small plain value (port id, epoch generation, buffer, length) and holds
/// no reference to the port, so
///
/// - the application can hold many packets and still call `&mut self`
///   methods of the port (`rx_burst`, `tx_burst`, `alloc`);
/// - the packet path needs no reference count, lock or allocation.
///
/// The price: a `Pkt` is not a guard. It is returned to the port
/// explicitly, by [`crate::Port::free`] or by sending it with
/// [`crate::Port::tx_burst`]. It is neither `Copy` nor `Clone` (one handle
/// per buffer) and is `#[must_use]`. Dropping it leaks the buffer: a slot
/// until the next epoch change (the slot ledger is then reset to the
/// initial split and every slot handle of the old epoch becomes stale), a
/// classic buffer for the life of the port. [`crate::Stats::slots`] and
/// [`crate::Stats::classic`] show how many buffers the application holds.
///
/// The frame bytes are reached through the port ([`crate::Port::data`],
/// [`crate::Port::data_mut`]), which checks that the handle is its own and
/// of the current epoch before building a slice; a stale handle gets an
/// empty slice.
#[must_use = "a Pkt leaks its buffer until the next epoch unless given to Port::free or Port::tx_burst"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pkt {
    port: NonZeroU32,
    generation: u32,
    /// The buffer as a ring token ([`Buf::token`]).
    token: u32,
    len: u32,
    /// Capacity, with [`HDR_CLEAN`] on top.
    cap: u32,
}

impl Pkt {
    #[inline]
    pub(crate) fn new(port: NonZeroU32, generation: u32, buf: Buf, len: u32, cap: u32) -> Self {
        debug_assert!(len <= cap && cap & HDR_CLEAN == 0);
        Self {
            port,
            generation,
            token: buf.token(),
            len,
            cap,
        }
    }

    /// The same handle, marked as carrying the header the port wrote for
    /// it (a zeroed header, untouched since: the application reaches only
    /// the frame bytes).
    #[inline]
    pub(crate) fn with_clean_hdr(mut self) -> Self {
        self.cap |= HDR_CLEAN;
        self
    }

    /// Whether the buffer still has the zeroed header `alloc` wrote.
    #[inline]
    pub(crate) fn hdr_clean(&self) -> bool {
        self.cap & HDR_CLEAN != 0
    }

    #[inline]
    fn max_len(&self) -> u32 {
        self.cap & !HDR_CLEAN
    }

    #[inline]
    pub(crate) fn buf(&self) -> Buf {
        Buf::from_token(self.token)
    }

    #[inline]
    pub(crate) fn port(&self) -> NonZeroU32 {
        self.port
    }

    /// Frame length in bytes (the 12-byte header not included).
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a zero-length frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest frame the buffer holds (its size minus the header).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.max_len() as usize
    }

    /// Sets the frame length, e.g. before filling a freshly allocated
    /// packet with [`crate::Port::data_mut`].
    #[inline]
    pub fn set_len(&mut self, len: usize) -> Result<(), PmdError> {
        if len > self.max_len() as usize {
            return Err(Self::too_big(len, self.max_len()));
        }
        self.len = len as u32;
        Ok(())
    }

    #[cold]
    fn too_big(len: usize, max: u32) -> PmdError {
        PmdError::FrameTooBig { len, max }
    }

    /// True for a slot of the Shared Buffers region, false for a classic
    /// buffer.
    #[inline]
    pub fn is_slot(&self) -> bool {
        self.token & CLASSIC == 0
    }

    /// The port's epoch generation the handle belongs to (it increases by
    /// one at every resync). A slot handle is only valid in its generation.
    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for b in [
            Buf::Slot(0),
            Buf::Slot(32767),
            Buf::Classic(0),
            Buf::Classic(65535),
        ] {
            assert_eq!(Buf::from_token(b.token()), b);
        }
        assert_ne!(Buf::Classic(5).token(), Buf::Slot(5).token());
    }

    #[test]
    fn option_pkt_is_as_small_as_pkt() {
        assert_eq!(core::mem::size_of::<Pkt>(), 20);
        assert_eq!(
            core::mem::size_of::<Option<Pkt>>(),
            core::mem::size_of::<Pkt>()
        );
    }

    #[test]
    fn set_len_checks_capacity() {
        let mut p = Pkt::new(NonZeroU32::MIN, 1, Buf::Slot(3), 0, 100);
        p.set_len(100).unwrap();
        assert_eq!(p.len(), 100);
        assert!(matches!(
            p.set_len(101),
            Err(PmdError::FrameTooBig { len: 101, max: 100 })
        ));
        assert!(p.is_slot());
        assert!(!p.hdr_clean());
        let mut p = p.with_clean_hdr();
        assert!(p.hdr_clean());
        assert_eq!(p.capacity(), 100);
        assert!(p.set_len(101).is_err());
        p.set_len(100).unwrap();
    }
}
