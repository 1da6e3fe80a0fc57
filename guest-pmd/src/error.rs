//! The PMD's error type.

use sbnet_abi::shm::GeometryError;
use thiserror::Error;

use crate::bus::BusError;
use crate::caps::CapError;
use crate::vq::VqError;

/// Everything that can go wrong opening or running a [`crate::Port`].
#[derive(Debug, Error)]
pub enum PmdError {
    /// The bus (VFIO or vfio-user transport) failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The PCI function is not a modern virtio-net device.
    #[error("not a modern virtio-net function: {vendor:04x}:{device:04x} (expected 1af4:1041)")]
    NotVirtioNet {
        /// Vendor ID found.
        vendor: u16,
        /// Device ID found.
        device: u16,
    },
    /// The capability list is unusable (virtio 1.2 §4.1.4).
    #[error("capability walk failed: {0}")]
    Caps(#[from] CapError),
    /// The [`crate::PortConfig`] is inconsistent.
    #[error("invalid port configuration: {0}")]
    Config(&'static str),
    /// After writing 0 to `device_status` the device never read back 0
    /// (virtio 1.2 §4.1.4.3.2).
    #[error("device did not complete its reset (status stays {status:#04x})")]
    ResetTimeout {
        /// The last status read.
        status: u8,
    },
    /// The device does not offer `VIRTIO_F_VERSION_1`: not a modern device.
    #[error("device does not offer VIRTIO_F_VERSION_1 (features {offered:#x})")]
    NoVersion1 {
        /// The device's feature bits.
        offered: u64,
    },
    /// The device cleared `FEATURES_OK` after the driver set it: it does
    /// not support the accepted subset (virtio 1.2 §3.1.1 step 6).
    #[error("device refused FEATURES_OK for features {accepted:#x} (it offered {offered:#x})")]
    FeaturesRefused {
        /// The device's feature bits.
        offered: u64,
        /// The bits the driver accepted.
        accepted: u64,
    },
    /// Multiqueue cannot be set up as asked: the device does not offer
    /// it, has fewer queue pairs, or its control queue refused or broke
    /// the `VQ_PAIRS_SET` command.
    #[error("multiqueue: {0}")]
    MultiQueue(String),
    /// A queue cannot be set up.
    #[error("queue {queue}: {reason}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The device config reports a slot geometry outside `docs/abi.md` §3.
    #[error("device reports an invalid slot geometry: {0}")]
    Geometry(GeometryError),
    /// The Shared Buffers BAR cannot hold the slots the device config
    /// announces, or is not where the capability says.
    #[error("Shared Buffers region: {0}")]
    SharedRegion(String),
    /// The bus handed out DMA memory the rings cannot use.
    #[error("unusable DMA memory: {0}")]
    BadDma(&'static str),
    /// The device set `DEVICE_NEEDS_RESET`: its rings can no longer be
    /// trusted. Drop the port and open a new one.
    #[error("device needs a reset (status {status:#04x}); reopen the port")]
    DeviceNeedsReset {
        /// `device_status` as read.
        status: u8,
    },
    /// The device wrote something into a used ring that breaks the ring
    /// protocol; the queue is no longer used. Drop the port and open a new
    /// one.
    #[error("device misbehaved on queue {queue}: {error}; reopen the port")]
    DeviceMisbehaved {
        /// Queue index.
        queue: u16,
        /// What it did.
        error: VqError,
    },
    /// Resync (docs/abi.md §6): the device did not return every outstanding
    /// descriptor in time. The next burst retries.
    #[error("resync: {outstanding} descriptors still outstanding after the drain timeout")]
    ResyncTimeout {
        /// Descriptors not returned.
        outstanding: u32,
    },
    /// Resync: `pairing_epoch` kept moving while acknowledging it.
    #[error("resync: pairing epoch still moving after {tries} acknowledgements")]
    EpochUnstable {
        /// Acknowledgements tried.
        tries: u32,
    },
    /// A frame length does not fit the buffer.
    #[error("frame of {len} bytes does not fit a buffer of {max}")]
    FrameTooBig {
        /// Requested length.
        len: usize,
        /// Largest frame the buffer takes.
        max: u32,
    },
}

/// A failure that ends a port's usefulness; kept so that every later call
/// reports it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    NeedsReset(u8),
    Misbehaved(u16, VqError),
    /// A queue notification failed (the transport is gone; logged).
    Notify,
}

impl From<Failure> for PmdError {
    #[cold]
    fn from(f: Failure) -> Self {
        match f {
            Failure::NeedsReset(status) => Self::DeviceNeedsReset { status },
            Failure::Misbehaved(queue, error) => Self::DeviceMisbehaved { queue, error },
            Failure::Notify => Self::Bus(BusError::Transport(
                "a queue notification failed earlier (see the log)".into(),
            )),
        }
    }
}
