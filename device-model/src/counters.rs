//! Per-side counters of the device model and the switch. Plain integers:
//! they are only touched under the pair's lock.

use std::fmt;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $f: u64,)*
        }

        impl $name {
            /// Every counter as (name, value), in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($f), self.$f),)*].into_iter()
            }
        }
    };
}

counters! {
    /// Counters of one side of a pair.
    SideCounters {
        /// Frames this side sent that reached the peer.
        tx_packets,
        /// Frame bytes (header excluded) this side sent that reached the peer.
        tx_bytes,
        /// Frames delivered to this side.
        rx_packets,
        /// Frame bytes delivered to this side.
        rx_bytes,
        /// Of `tx_packets`: handed over without a copy (slot to slot).
        tx_zero_copy,
        /// Of `tx_packets`: copied by the host.
        tx_copied,
        /// Bytes the host copied for this side's TX (header included).
        copied_bytes,
        /// Empty slots this side gifted to the peer.
        gifts_sent,
        /// Empty slots the peer gifted to this side.
        gifts_received,
        /// TX that had to wait for the peer to post a buffer.
        tx_waits,
        /// Zero-copy TX whose delivery was deferred until the peer posts the slot.
        tx_deferred,
        /// TX dropped: the peer had no RX buffer within the wait bound.
        rx_no_buffer,
        /// TX dropped: no driver on the peer side.
        tx_no_peer,
        /// Refused: malformed descriptor chain.
        bad_chain,
        /// Refused: slot reference not slot-aligned, crossing a slot, wrong length or mixed.
        bad_slot_ref,
        /// Refused: TX of a slot the sender does not own.
        tx_not_owner,
        /// Refused: RX post of a slot the poster owns.
        rx_post_not_peer_owned,
        /// Refused: RX post of a slot already posted.
        rx_post_duplicate,
        /// Refused: frame larger than the peer's RX buffer.
        frame_too_big,
        /// Refused: a gift outside zero-copy mode or on a classic buffer.
        bad_gift,
        /// Descriptors completed with length 0 by an epoch resync.
        flushed,
        /// Times this side entered DEVICE_NEEDS_RESET.
        needs_reset,
        /// Driver resets (status 0, vfio-user reset, disconnect).
        resets,
        /// Notify writes (kicks) received.
        kicks,
        /// Interrupts signalled.
        interrupts,
        /// Writes to read-only registers, ignored.
        ignored_writes,
        /// vfio-user DMA maps refused.
        dma_refused,
    }
}

impl fmt::Display for SideCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.fields().filter(|(_, v)| *v != 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        if first {
            f.write_str("(all zero)")?;
        }
        Ok(())
    }
}

impl SideCounters {
    /// Sum of every refusal counter.
    pub fn refusals(&self) -> u64 {
        self.bad_chain
            + self.bad_slot_ref
            + self.tx_not_owner
            + self.rx_post_not_peer_owned
            + self.rx_post_duplicate
            + self.frame_too_big
            + self.bad_gift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_nonzero() {
        let mut c = SideCounters::default();
        assert_eq!(c.to_string(), "(all zero)");
        c.tx_packets = 3;
        c.bad_chain = 1;
        assert_eq!(c.to_string(), "tx_packets=3 bad_chain=1");
        assert_eq!(c.refusals(), 1);
    }
}
