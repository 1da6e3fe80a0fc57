//! The mode of an epoch (`docs/abi.md` §6): who owns which slot at its
//! start and which receive/transmit path the port runs.

use sbnet_abi::net::{PEER_PRESENT, PEER_SHARED_BUFFERS};

/// How a port moves packets during one epoch. Chosen once per epoch, never
/// per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Both sides have `DRIVER_OK` with shared buffers: slots move between
    /// the sides without copies; side `k` starts with the slots `s % 2 == k`.
    ZeroCopy,
    /// This side negotiated shared buffers but the peer did not, or is
    /// absent: this side owns every slot, a sent slot is copied by the host
    /// and comes back on completion.
    Copy,
    /// This side did not negotiate shared buffers: a plain virtio-net port,
    /// classic buffers only.
    #[default]
    Classic,
}

impl Mode {
    /// The mode of an epoch, from this side's negotiation and the
    /// `peer_status` word of the device configuration.
    pub fn of_epoch(shared_buffers: bool, peer_status: u32) -> Self {
        let peer_zero_copy = PEER_PRESENT | PEER_SHARED_BUFFERS;
        match (
            shared_buffers,
            peer_status & peer_zero_copy == peer_zero_copy,
        ) {
            (false, _) => Self::Classic,
            (true, true) => Self::ZeroCopy,
            (true, false) => Self::Copy,
        }
    }

    /// Whether this side owns slot `s` at the start of the epoch (rule 2).
    pub fn initially_mine(self, side: u8, s: u32, q_pairs: u16) -> bool {
        match self {
            Self::ZeroCopy => sbnet_abi::shm::initial_owner_mq(s, q_pairs) == side,
            Self::Copy => true,
            Self::Classic => false,
        }
    }

    /// Short name, for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroCopy => "zero-copy",
            Self::Copy => "copy",
            Self::Classic => "classic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_the_table() {
        let both = PEER_PRESENT | PEER_SHARED_BUFFERS;
        assert_eq!(Mode::of_epoch(true, both), Mode::ZeroCopy);
        assert_eq!(Mode::of_epoch(true, PEER_PRESENT), Mode::Copy);
        assert_eq!(Mode::of_epoch(true, 0), Mode::Copy);
        // A peer that is gone cannot have shared buffers in this epoch.
        assert_eq!(Mode::of_epoch(true, PEER_SHARED_BUFFERS), Mode::Copy);
        assert_eq!(Mode::of_epoch(false, both), Mode::Classic);
        assert!(Mode::ZeroCopy.initially_mine(0, 4, 1));
        assert!(!Mode::ZeroCopy.initially_mine(0, 5, 1));
        assert!(Mode::ZeroCopy.initially_mine(1, 5, 1));
        // Two queue pairs: side (s / 2) % 2 starts with slot s.
        assert!(Mode::ZeroCopy.initially_mine(0, 1, 2));
        assert!(Mode::ZeroCopy.initially_mine(1, 3, 2));
        assert!(Mode::Copy.initially_mine(1, 4, 1));
        assert!(!Mode::Classic.initially_mine(0, 4, 1));
    }
}
