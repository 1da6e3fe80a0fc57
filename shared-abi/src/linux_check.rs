//! Compile-time checks of the hand-written virtio constants against Linux's
//! headers as `virtio-bindings` carries them: ring flags, device status
//! bits, feature bits, header flags and the PCI device ID. A mismatch is a
//! build error, not a test failure. (That the sbnet feature bit is not taken
//! by Linux is a test in [`crate::net`]: it is a set, not one value.)

use crate::{common_cfg as cc, net, pci, ring};
use virtio_bindings::{
    virtio_config as vc, virtio_ids as ids, virtio_net as vn, virtio_ring as vr,
};

/// Asserts at compile time that each hand-written constant equals its
/// binding (compared as `u64`: the bindings are `u32`, ours fit the field).
macro_rules! same {
    ($($ours:expr => $linux:expr,)*) => {
        $(const _: () = assert!($ours as u64 == $linux as u64, stringify!($ours));)*
    };
}

same! {
    // Split ring flags (virtio 1.x §2.7).
    ring::DESC_F_NEXT => vr::VRING_DESC_F_NEXT,
    ring::DESC_F_WRITE => vr::VRING_DESC_F_WRITE,
    ring::DESC_F_INDIRECT => vr::VRING_DESC_F_INDIRECT,
    ring::AVAIL_F_NO_INTERRUPT => vr::VRING_AVAIL_F_NO_INTERRUPT,
    ring::USED_F_NO_NOTIFY => vr::VRING_USED_F_NO_NOTIFY,
    // Device status bits (§2.1).
    cc::STATUS_ACKNOWLEDGE => vc::VIRTIO_CONFIG_S_ACKNOWLEDGE,
    cc::STATUS_DRIVER => vc::VIRTIO_CONFIG_S_DRIVER,
    cc::STATUS_DRIVER_OK => vc::VIRTIO_CONFIG_S_DRIVER_OK,
    cc::STATUS_FEATURES_OK => vc::VIRTIO_CONFIG_S_FEATURES_OK,
    cc::STATUS_DEVICE_NEEDS_RESET => vc::VIRTIO_CONFIG_S_NEEDS_RESET,
    cc::STATUS_FAILED => vc::VIRTIO_CONFIG_S_FAILED,
    // Transport feature bits (§6).
    cc::VIRTIO_F_VERSION_1 => vc::VIRTIO_F_VERSION_1,
    cc::VIRTIO_F_ACCESS_PLATFORM => vc::VIRTIO_F_ACCESS_PLATFORM,
    cc::VIRTIO_F_RING_INDIRECT_DESC => vr::VIRTIO_RING_F_INDIRECT_DESC,
    cc::VIRTIO_F_RING_EVENT_IDX => vr::VIRTIO_RING_F_EVENT_IDX,
    // virtio-net config status and header flags (§5.1).
    net::VIRTIO_NET_S_LINK_UP => vn::VIRTIO_NET_S_LINK_UP,
    net::VIRTIO_NET_HDR_F_NEEDS_CSUM => vn::VIRTIO_NET_HDR_F_NEEDS_CSUM,
    net::VIRTIO_NET_HDR_F_DATA_VALID => vn::VIRTIO_NET_HDR_F_DATA_VALID,
    net::VIRTIO_NET_HDR_F_RSC_INFO => vn::VIRTIO_NET_HDR_F_RSC_INFO,
    net::VIRTIO_NET_HDR_GSO_NONE => vn::VIRTIO_NET_HDR_GSO_NONE,
    // Modern virtio PCI device ID: 0x1040 + the virtio device ID (§4.1.2.1).
    pci::DEVICE_ID_NET => 0x1040 + ids::VIRTIO_ID_NET,
}
