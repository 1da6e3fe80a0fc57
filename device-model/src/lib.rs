//! # sbnet-device
//!
//! The host side of an sbnet virtio-net function.
#![deny(missing_docs)]

pub mod vfio_user;
