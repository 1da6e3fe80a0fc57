//! What an application asks of a port.

use std::time::Duration;

use crate::error::PmdError;

/// Options for [`crate::Port::open`]. `PortConfig::default()` is a
/// zero-copy port with 1024-entry queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Do not negotiate `VIRTIO_NET_F_SHARED_BUFFERS`: drive the function as
    /// a plain virtio-net device (every packet copied once by the host).
    /// Default false.
    pub classic_only: bool,
    /// Receive queue size wanted; the device's maximum wins if smaller, and
    /// it is rounded down to a power of two. Default 1024.
    pub rx_queue_size: u16,
    /// Transmit queue size wanted, as for `rx_queue_size`. Default 1024.
    pub tx_queue_size: u16,
    /// Classic (non-slot) receive buffers kept posted in zero-copy mode, so
    /// classic frames and resync completions reach the port. In copy and
    /// classic modes the whole receive queue holds classic buffers.
    /// Default 32.
    pub classic_rx_buffers: u16,
    /// Bytes per classic buffer, header included. Must hold the largest
    /// classic frame the peer sends plus 12 (`frame_too_big` otherwise).
    /// Default 2048 (a 1514-byte frame fits).
    pub classic_buf_size: u32,
    /// Gift policy: free slots beyond `slot_count / 2 + gift_hysteresis`
    /// trigger a gift down to `slot_count / 2`. `None`: `slot_count / 16`
    /// clamped to 1..=32.
    pub gift_hysteresis: Option<u32>,
    /// Most slots gifted in one burst. Default 64.
    pub gift_burst: u32,
    /// While the port is idle (receive bursts that complete nothing), read
    /// `pairing_epoch` over the bus at most this often, to notice an epoch
    /// change or `DEVICE_NEEDS_RESET` that no completion announced. Each
    /// read is a bus round trip (a socket message on vfio-user), so it is
    /// time-based, not per burst. Default 5 ms.
    pub epoch_poll_interval: Duration,
    /// How long a resync waits for the device to return every outstanding
    /// descriptor before reporting [`PmdError::ResyncTimeout`]. Default
    /// 200 ms.
    pub drain_timeout: Duration,
    /// Post a slot on the receive queue in the same burst that sends or
    /// gifts it, when the host allows it (`SB_F_EARLY_POST`, `docs/abi.md`
    /// §6), instead of after the send completes: the peer can send the slot
    /// back at once, which halves a zero-copy round trip. Queue pair 0
    /// only (the one whose slots always move in zero-copy mode). Default
    /// true.
    pub early_post: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            classic_only: false,
            rx_queue_size: 1024,
            tx_queue_size: 1024,
            classic_rx_buffers: 32,
            classic_buf_size: 2048,
            gift_hysteresis: None,
            gift_burst: 64,
            epoch_poll_interval: Duration::from_millis(5),
            drain_timeout: Duration::from_millis(200),
            early_post: true,
        }
    }
}

impl PortConfig {
    /// A classic-only port (`classic_only = true`, other fields default).
    pub fn classic() -> Self {
        Self {
            classic_only: true,
            ..Self::default()
        }
    }

    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<(), PmdError> {
        if self.rx_queue_size < 2 || self.tx_queue_size < 2 {
            return Err(PmdError::Config("queue sizes must be at least 2"));
        }
        if self.classic_rx_buffers == 0 {
            return Err(PmdError::Config(
                "at least one classic receive buffer must stay posted",
            ));
        }
        if !(64..=(1 << 20)).contains(&self.classic_buf_size) {
            return Err(PmdError::Config(
                "classic_buf_size must be between 64 bytes and 1 MiB",
            ));
        }
        if self.gift_burst == 0 {
            return Err(PmdError::Config("gift_burst must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        PortConfig::default().validate().unwrap();
        PortConfig::classic().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_refused() {
        let c = PortConfig {
            classic_buf_size: 12,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(PmdError::Config(_))));
        let c = PortConfig {
            rx_queue_size: 1,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
