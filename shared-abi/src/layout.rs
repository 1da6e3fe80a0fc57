//! Where the sbnet function puts each structure. A driver should find them
//! through the PCI capabilities; these constants are what the device model
//! advertises and what tests check against.
//!
//! | BAR | kind | contents |
//! |---|---|---|
//! | 0 | 32-bit memory, 16 KiB | common cfg @0x0000, ISR @0x1000, device cfg @0x2000, notify @0x3000 |
//! | 1 | 32-bit memory, 4 KiB | MSI-X table @0x000, PBA @0x800 |
//! | 2-3 | 64-bit prefetchable memory | Shared Buffers region (mmap-able), size = slot_size × slot_count |

/// BAR holding the virtio structures.
pub const VIRTIO_BAR: u8 = 0;
/// Size of [`VIRTIO_BAR`].
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// Offset of the common configuration in [`VIRTIO_BAR`].
pub const COMMON_OFFSET: u32 = 0x0000;
/// Window length advertised for the common configuration.
pub const COMMON_LEN: u32 = 0x1000;
/// Offset of the ISR byte in [`VIRTIO_BAR`].
pub const ISR_OFFSET: u32 = 0x1000;
/// Window length advertised for the ISR.
pub const ISR_LEN: u32 = 0x1000;
/// Offset of the device configuration in [`VIRTIO_BAR`].
pub const DEVICE_OFFSET: u32 = 0x2000;
/// Window length advertised for the device configuration.
pub const DEVICE_LEN: u32 = 0x1000;
/// Offset of the notification area in [`VIRTIO_BAR`].
pub const NOTIFY_OFFSET: u32 = 0x3000;
/// Window length advertised for the notification area.
pub const NOTIFY_LEN: u32 = 0x1000;
/// `notify_off_multiplier`: queue `q` is notified at `NOTIFY_OFFSET + 4 * q`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 1;
/// Size of [`MSIX_BAR`].
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table in [`MSIX_BAR`].
pub const MSIX_TABLE_OFFSET: u32 = 0x000;
/// Offset of the MSI-X pending-bit array in [`MSIX_BAR`].
pub const MSIX_PBA_OFFSET: u32 = 0x800;
/// MSI-X vectors of a link with one queue pair: one for config changes
/// and one per queue.
pub const MSIX_VECTORS: u16 = 3;
/// Most MSI-X vectors a function has ([`msix_vectors`] of
/// [`crate::net::MAX_QUEUE_PAIRS`]); the table (16 bytes a vector) ends
/// below the PBA.
pub const MAX_MSIX_VECTORS: u16 = msix_vectors(crate::net::MAX_QUEUE_PAIRS);

/// MSI-X vectors of a link with `q_pairs` queue pairs: config plus one per
/// queue ([`crate::net::num_queues`]); [`MSIX_VECTORS`] for one pair.
pub const fn msix_vectors(q_pairs: u16) -> u16 {
    crate::net::num_queues(q_pairs) + 1
}

const _: () = assert!(msix_vectors(1) == MSIX_VECTORS);
const _: () = assert!(MSIX_TABLE_OFFSET + 16 * MAX_MSIX_VECTORS as u32 <= MSIX_PBA_OFFSET);
const _: () = assert!(MAX_MSIX_VECTORS <= 64, "the PBA is one 64-bit word");

/// First BAR register of the Shared Buffers BAR (64-bit: uses 2 and 3).
pub const SHM_BAR: u8 = 2;
/// `id` of the shared-memory capability that describes the Shared Buffers region.
pub const SHM_ID: u8 = 0;

/// Config-space offset of the first capability.
pub const CAP_COMMON: u8 = 0x40;
/// Config-space offset of the notify capability.
pub const CAP_NOTIFY: u8 = 0x50;
/// Config-space offset of the ISR capability.
pub const CAP_ISR: u8 = 0x68;
/// Config-space offset of the device-config capability.
pub const CAP_DEVICE: u8 = 0x78;
/// Config-space offset of the shared-memory capability.
pub const CAP_SHM: u8 = 0x88;
/// Config-space offset of the MSI-X capability.
pub const CAP_MSIX: u8 = 0xa0;

/// vfio-user region index of the PCI config space (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = 7;
/// Number of vfio-user regions the function reports (BAR0-5, ROM, config).
pub const NUM_REGIONS: u32 = 8;
/// vfio-user IRQ index of INTx.
pub const IRQ_INTX: u32 = 0;
/// vfio-user IRQ index of MSI.
pub const IRQ_MSI: u32 = 1;
/// vfio-user IRQ index of MSI-X.
pub const IRQ_MSIX: u32 = 2;
/// Number of vfio-user IRQ indices the function reports (INTx, MSI, MSI-X, ERR, REQ).
pub const NUM_IRQS: u32 = 5;
