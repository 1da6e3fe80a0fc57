//! A [`Bus`] over a [`super::FakeDevice`]: config space and BAR 0 hit an
//! in-memory register file, BAR 2 is a heap "Shared Buffers region", DMA
//! memory comes from the device's [`super::DmaArena`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::bus::{Bus, BusError, DmaRegion, MappedBar};

use super::device::DeviceState;

/// The device's bus. Obtain it with [`super::FakeDevice::bus`].
pub struct FakeBus {
    pub(super) dev: Arc<Mutex<DeviceState>>,
}

impl FakeBus {
    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        // A test that panicked while holding the lock poisons it; the state
        // is still usable for the remaining assertions.
        self.dev.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Bus for FakeBus {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.lock().config_read(offset, data)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        self.lock().config_write(offset, data)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.lock().bar_read(bar, offset, data)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        self.lock().bar_write(bar, offset, data)
    }

    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        self.lock().map_bar(bar)
    }

    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError> {
        Ok(self.lock().dma_alloc(len))
    }

    fn reset(&mut self) -> Result<(), BusError> {
        self.lock().write_status(0);
        Ok(())
    }
}
