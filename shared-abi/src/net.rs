//! virtio-net device configuration and packet header, with the sbnet
//! additions (`docs/abi.md` §2-§4).

use core::mem::size_of;

/// Standard virtio-net feature: device has a MAC address in config.
pub const VIRTIO_NET_F_MAC: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// Standard virtio-net feature: link status in config.
pub const VIRTIO_NET_F_STATUS: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
/// Standard virtio-net feature: MTU in config.
pub const VIRTIO_NET_F_MTU: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_MTU;
/// Standard virtio-net feature: a control virtqueue (offered only on a
/// link with more than one queue pair, `docs/abi.md` §8).
pub const VIRTIO_NET_F_CTRL_VQ: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ;
/// Standard virtio-net feature: several queue pairs (offered only on a link
/// with more than one queue pair, `docs/abi.md` §8).
pub const VIRTIO_NET_F_MQ: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;

/// sbnet feature: the Shared Buffers BAR and the zero-copy protocol.
///
/// Bit 58 lies in the device-specific range (50..=127) and is not defined by
/// Linux's `virtio_net.h` (checked against `virtio-bindings` 0.2, which bits
/// 50, 52-57 and 59-63 are taken in). A driver that does not accept it gets a
/// plain virtio-net device.
pub const VIRTIO_NET_F_SHARED_BUFFERS: u32 = 58;

/// `virtio_net_config.status`: link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `virtio_net_hdr.flags`: checksum needs computing (standard).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: checksum was validated (standard).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `virtio_net_hdr.flags`: RSC info in csum fields (standard).
pub const VIRTIO_NET_HDR_F_RSC_INFO: u8 = 4;
/// `virtio_net_hdr.flags` (sbnet): this TX carries no packet; it hands an
/// empty slot to the peer. Only valid on a slot descriptor when
/// [`VIRTIO_NET_F_SHARED_BUFFERS`] was negotiated.
pub const VIRTIO_NET_HDR_F_GIFT_BUFFER: u8 = 0x80;

/// `virtio_net_hdr.gso_type`: no segmentation offload.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// `struct virtio_net_hdr_v1` (12 bytes): with `VIRTIO_F_VERSION_1` the
/// header always includes `num_buffers`. Precedes every frame, in the same
/// buffer or in a separate descriptor of the same chain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy per segment.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where to start checksumming.
    pub csum_start: u16,
    /// Where to store the checksum, from `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers (1 without `MRG_RXBUF`).
    pub num_buffers: u16,
}

/// Size of [`NetHdr`].
pub const NET_HDR_LEN: usize = size_of::<NetHdr>();

impl NetHdr {
    /// Serialises the header to its 12 wire bytes.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Parses 12 wire bytes.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// Peer-status bit: a driver is bound on the other side and has set DRIVER_OK.
pub const PEER_PRESENT: u32 = 1 << 0;
/// Peer-status bit: the peer negotiated [`VIRTIO_NET_F_SHARED_BUFFERS`].
pub const PEER_SHARED_BUFFERS: u32 = 1 << 1;
/// Peer-status bit: the peer has acknowledged the current epoch (or needs
/// no resync: it did not negotiate shared buffers). In zero-copy mode a
/// driver owns no slot of an epoch before this bit is set: until then the
/// peer may still write slots it owned in the previous epoch.
pub const PEER_SYNCED: u32 = 1 << 2;

/// Used length of a slot TX completion when the host copied the frame and
/// the slot stays with its sender (`docs/abi.md` §6, copy mode, and §8: a
/// sub-pair not in use on both sides). A zero-copy hand-over, and a
/// refusal, complete with length 0. Drivers tell the two apart by this
/// length alone; they need not know which sub-pairs the peer uses.
pub const TX_USED_SLOT_KEPT: u32 = 1;

/// `sb_flags` bit: the host accepts an RX post of a slot the poster is
/// sending, so a driver may post a slot in the same publish as its TX
/// (*early post*, `docs/abi.md` §6) instead of after the TX completes.
pub const SB_F_EARLY_POST: u8 = 1 << 0;

/// `struct virtio_net_config` with the sbnet fields appended (48 bytes).
///
/// The standard part (offsets 0..24) follows virtio 1.2 §5.1.4; the sbnet
/// fields start at [`SBNET_CONFIG_OFFSET`] and are only meaningful when
/// [`VIRTIO_NET_F_SHARED_BUFFERS`] is offered. All fields are read-only to
/// the driver except `epoch_ack`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NetConfig {
    /// MAC address (`VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` (`VIRTIO_NET_F_STATUS`).
    pub status: u16,
    /// Maximum queue pairs (`VIRTIO_NET_F_MQ`): the link's `queue_pairs`.
    pub max_virtqueue_pairs: u16,
    /// MTU (`VIRTIO_NET_F_MTU`).
    pub mtu: u16,
    /// Link speed in Mbit/s (unused: 0).
    pub speed: u32,
    /// Duplex (unused: 0).
    pub duplex: u8,
    /// RSS key size (unused: 0).
    pub rss_max_key_size: u8,
    /// RSS table length (unused: 0).
    pub rss_max_indirection_table_length: u16,
    /// Supported hash types (unused: 0).
    pub supported_hash_types: u32,
    /// sbnet: this side's index in the pair, 0 or 1 (the original
    /// proposal's name). Decides the initial slot split ([`crate::shm`]).
    pub shared_buffers_offset: u8,
    /// sbnet: `SB_F_*` bits, what this host's protocol allows beyond the
    /// base rules (`docs/abi.md` §3). A host that predates a bit reads 0
    /// there.
    pub sb_flags: u8,
    /// Reserved, reads 0.
    pub reserved0: [u8; 2],
    /// sbnet: bytes per slot (a power of two, at least 2048).
    pub slot_size: u32,
    /// sbnet: number of slots in the Shared Buffers region.
    pub slot_count: u32,
    /// sbnet: pairing epoch; changes whenever a side joins, leaves or resets.
    pub pairing_epoch: u32,
    /// sbnet: `PEER_*` bits describing the other side in this epoch.
    pub peer_status: u32,
    /// sbnet (driver-writable): the epoch this driver has synchronised to.
    /// Writing the current `pairing_epoch` here ends the resync (`docs/abi.md`
    /// §6 "Ownership": resync).
    pub epoch_ack: u32,
}

/// Offset of the sbnet fields inside the device configuration.
pub const SBNET_CONFIG_OFFSET: usize = core::mem::offset_of!(NetConfig, shared_buffers_offset);
/// Size of [`NetConfig`].
pub const NET_CONFIG_LEN: usize = size_of::<NetConfig>();

/// Offsets of [`NetConfig`] fields.
pub mod cfg_off {
    use super::NetConfig;
    use core::mem::offset_of;
    /// `mac`.
    pub const MAC: usize = offset_of!(NetConfig, mac);
    /// `status`.
    pub const STATUS: usize = offset_of!(NetConfig, status);
    /// `mtu`.
    pub const MTU: usize = offset_of!(NetConfig, mtu);
    /// `shared_buffers_offset`.
    pub const SHARED_BUFFERS_OFFSET: usize = offset_of!(NetConfig, shared_buffers_offset);
    /// `sb_flags`.
    pub const SB_FLAGS: usize = offset_of!(NetConfig, sb_flags);
    /// `slot_size`.
    pub const SLOT_SIZE: usize = offset_of!(NetConfig, slot_size);
    /// `slot_count`.
    pub const SLOT_COUNT: usize = offset_of!(NetConfig, slot_count);
    /// `pairing_epoch`.
    pub const PAIRING_EPOCH: usize = offset_of!(NetConfig, pairing_epoch);
    /// `peer_status`.
    pub const PEER_STATUS: usize = offset_of!(NetConfig, peer_status);
    /// `epoch_ack`.
    pub const EPOCH_ACK: usize = offset_of!(NetConfig, epoch_ack);
}

/// Queue index of the (first) receive queue.
pub const RX_QUEUE: u16 = 0;
/// Queue index of the (first) transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Number of queues of a link with one queue pair (no control queue).
pub const NUM_QUEUES: u16 = 2;

/// Most queue pairs a link may have (`docs/abi.md` §8).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// True when `q` is a valid number of queue pairs for a link: a power of
/// two in `1..=MAX_QUEUE_PAIRS`.
pub const fn valid_queue_pairs(q: u16) -> bool {
    q.is_power_of_two() && q <= MAX_QUEUE_PAIRS
}

/// Queue index of receiveq(`pair`) (virtio 1.2 §5.1.2).
pub const fn rx_queue(pair: u16) -> u16 {
    2 * pair
}

/// Queue index of transmitq(`pair`) (virtio 1.2 §5.1.2).
pub const fn tx_queue(pair: u16) -> u16 {
    2 * pair + 1
}

/// Queue index of the control queue of a link with `q_pairs` > 1 pairs.
pub const fn ctrl_queue(q_pairs: u16) -> u16 {
    2 * q_pairs
}

/// `common_cfg.num_queues` of a link with `q_pairs` queue pairs: 2 for
/// one pair (no control queue), else `2 * q_pairs + 1`.
pub const fn num_queues(q_pairs: u16) -> u16 {
    if q_pairs > 1 {
        2 * q_pairs + 1
    } else {
        NUM_QUEUES
    }
}

/// Control command class: multiqueue (`VIRTIO_NET_CTRL_MQ`).
pub const VIRTIO_NET_CTRL_MQ: u8 = virtio_bindings::virtio_net::VIRTIO_NET_CTRL_MQ as u8;
/// `VIRTIO_NET_CTRL_MQ` command: set the number of queue pairs in use
/// (data: le16 `virtqueue_pairs`, in `1..=max_virtqueue_pairs`).
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 =
    virtio_bindings::virtio_net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
/// Control ack: the command was carried out.
pub const VIRTIO_NET_OK: u8 = virtio_bindings::virtio_net::VIRTIO_NET_OK as u8;
/// Control ack: the command was refused.
pub const VIRTIO_NET_ERR: u8 = virtio_bindings::virtio_net::VIRTIO_NET_ERR as u8;
/// Length of a control command's header (`class`, `command`).
pub const CTRL_HDR_LEN: usize = 2;
/// Length of `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`'s data.
pub const CTRL_MQ_PAIRS_LEN: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn hdr_layout_and_bytes() {
        assert_eq!(NET_HDR_LEN, 12);
        assert_eq!(offset_of!(NetHdr, hdr_len), 2);
        assert_eq!(offset_of!(NetHdr, gso_size), 4);
        assert_eq!(offset_of!(NetHdr, csum_start), 6);
        assert_eq!(offset_of!(NetHdr, csum_offset), 8);
        assert_eq!(offset_of!(NetHdr, num_buffers), 10);
        let h = NetHdr {
            flags: VIRTIO_NET_HDR_F_GIFT_BUFFER,
            gso_type: 0,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 1,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x80);
        assert_eq!(b[2..4], [0x02, 0x01]);
        assert_eq!(NetHdr::from_bytes(&b), h);
    }

    #[test]
    fn gift_flag_is_not_a_linux_flag() {
        let linux =
            VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO;
        assert_eq!(linux & VIRTIO_NET_HDR_F_GIFT_BUFFER, 0);
    }

    #[test]
    fn feature_bit_is_free_in_linux() {
        use virtio_bindings::virtio_net as l;
        let taken = [
            l::VIRTIO_NET_F_DEVICE_STATS,
            l::VIRTIO_NET_F_VQ_NOTF_COAL,
            l::VIRTIO_NET_F_NOTF_COAL,
            l::VIRTIO_NET_F_GUEST_USO4,
            l::VIRTIO_NET_F_GUEST_USO6,
            l::VIRTIO_NET_F_HOST_USO,
            l::VIRTIO_NET_F_HASH_REPORT,
            l::VIRTIO_NET_F_GUEST_HDRLEN,
            l::VIRTIO_NET_F_RSS,
            l::VIRTIO_NET_F_RSC_EXT,
            l::VIRTIO_NET_F_STANDBY,
            l::VIRTIO_NET_F_SPEED_DUPLEX,
        ];
        assert!(!taken.contains(&VIRTIO_NET_F_SHARED_BUFFERS));
        assert!((50..128).contains(&VIRTIO_NET_F_SHARED_BUFFERS));
    }

    #[test]
    fn queue_numbering() {
        assert_eq!((rx_queue(0), tx_queue(0)), (RX_QUEUE, TX_QUEUE));
        assert_eq!((rx_queue(3), tx_queue(3), ctrl_queue(4)), (6, 7, 8));
        assert_eq!(num_queues(1), 2);
        assert_eq!(num_queues(2), 5);
        assert_eq!(num_queues(MAX_QUEUE_PAIRS), 33);
        assert!(valid_queue_pairs(1) && valid_queue_pairs(16));
        assert!(!valid_queue_pairs(0) && !valid_queue_pairs(3) && !valid_queue_pairs(32));
        assert_eq!((VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ), (22, 17));
        assert_eq!(
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET),
            (4, 0)
        );
        assert_eq!((VIRTIO_NET_OK, VIRTIO_NET_ERR), (0, 1));
    }

    #[test]
    fn config_layout() {
        assert_eq!(cfg_off::MAC, 0);
        assert_eq!(cfg_off::STATUS, 6);
        assert_eq!(offset_of!(NetConfig, max_virtqueue_pairs), 8);
        assert_eq!(cfg_off::MTU, 10);
        assert_eq!(offset_of!(NetConfig, speed), 12);
        assert_eq!(offset_of!(NetConfig, duplex), 16);
        assert_eq!(offset_of!(NetConfig, supported_hash_types), 20);
        assert_eq!(SBNET_CONFIG_OFFSET, 24);
        assert_eq!(cfg_off::SLOT_SIZE, 28);
        assert_eq!(cfg_off::SLOT_COUNT, 32);
        assert_eq!(cfg_off::PAIRING_EPOCH, 36);
        assert_eq!(cfg_off::PEER_STATUS, 40);
        assert_eq!(cfg_off::EPOCH_ACK, 44);
        assert_eq!(NET_CONFIG_LEN, 48);
    }
}
