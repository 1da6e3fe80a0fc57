//! # sbnet-abi
//!
//! Every layout and constant that the host device model and a guest driver
//! must agree on. No I/O and no allocation happen here: each module is a set of
//! `#[repr(C)]` structs, offsets and bit numbers, with layout tests.
//!
//! | module | what it fixes |
//! |---|---|
//! | [`pci`] | PCI identity, config-space offsets, virtio vendor capabilities, MSI-X |
//! | [`common_cfg`] | virtio 1.x common configuration, device status, transport feature bits |
//! | [`net`] | `virtio_net_config` plus the sbnet fields, `virtio_net_hdr` plus `GIFT_BUFFER`, feature bits |
//! | [`ring`] | split virtqueue descriptors, avail and used rings |
//! | [`shm`] | Shared Buffers slot geometry and the initial ownership rule |
//! | [`layout`] | where the sbnet function puts each structure in its BARs |
//!
//! The hand-written virtio constants are checked against Linux's headers
//! (`virtio-bindings`) at compile time.
//!
//! All multi-byte fields are little-endian, as virtio 1.x and vfio-user
//! require; sbnet builds only for little-endian targets, so the structs use
//! native integers. `docs/abi.md` is the prose version of this crate.
#![deny(missing_docs)]
#![no_std]

#[cfg(not(target_endian = "little"))]
compile_error!("sbnet's ABI structs use native integers and need a little-endian target");

pub mod common_cfg;
pub mod layout;
mod linux_check;
pub mod net;
pub mod pci;
pub mod ring;
pub mod shm;
