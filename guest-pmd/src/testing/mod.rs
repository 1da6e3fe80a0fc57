//! Test doubles of the PMD's unit tests (`cfg(test)` only).
//!
//! - [`DmaArena`] and [`DeviceRing`]: heap memory standing in for DMA
//!   memory, and the device's side of a virtqueue over it, for tests that
//!   play the device by hand.
//! - [`FakeDevice`]: one sbnet function behind an in-memory register file,
//!   driven through a [`FakeBus`], with no host behind it. It exists for
//!   tests that need a device the real host would never be: one that
//!   writes broken used entries (the PMD's `VqError` checks), completes
//!   buffers with lengths the host never uses, or refuses the driver's
//!   features. Every scenario that needs a working host runs against the
//!   real one (the tests crate's `pmd_port*` tests).
//! - [`config_space::sbnet_config_space`]: the ABI's config space.

pub mod config_space;
mod device;
mod fake_bus;
mod mem;
mod ring;

pub use device::{FakeDevice, FakeOptions};
pub use fake_bus::FakeBus;
pub use mem::DmaArena;
pub use ring::DeviceRing;
