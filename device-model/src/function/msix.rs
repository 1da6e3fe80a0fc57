//! MSI-X (PCI 3.0 §6.8.2) and INTx as the function raises them: the vector
//! table and PBA in BAR 1, one eventfd per vector (or one for INTx) that
//! the VMM handed over, and per-vector masking with a pending bit.

use super::AccessError;
use crate::irq::IrqFd;
use sbnet_abi::layout as l;

const N: usize = l::MAX_MSIX_VECTORS as usize;

/// Interrupt state of one function: the MSI-X table, the eventfds the VMM
/// gave for each vector or for INTx, and masking.
#[derive(Debug)]
pub struct Interrupts {
    table: [u8; N * 16],
    fds: [Option<IrqFd>; N],
    masked: [bool; N],
    pending: [bool; N],
    intx: Option<IrqFd>,
    /// Vectors the function has (the MSI-X table size).
    n: usize,
    /// Some vector has an eventfd (kept with `fds`, so that a signal does
    /// not scan the table).
    any_fd: bool,
}

impl Default for Interrupts {
    fn default() -> Self {
        Self::with_vectors(l::MSIX_VECTORS)
    }
}

impl Interrupts {
    /// Interrupt state with `n` MSI-X vectors (`1..=MAX_MSIX_VECTORS`).
    pub fn with_vectors(n: u16) -> Self {
        Self {
            n: (n as usize).clamp(1, N),
            any_fd: false,
            table: [0; N * 16],
            fds: std::array::from_fn(|_| None),
            masked: [false; N],
            pending: [false; N],
            intx: None,
        }
    }

    /// Number of MSI-X vectors.
    pub fn vectors(&self) -> u16 {
        self.n as u16
    }

    /// Signals MSI-X vector `v` (or INTx when the VMM set no MSI-X fds).
    /// Returns true when an eventfd was written.
    #[inline]
    pub fn signal(&mut self, v: u16) -> bool {
        if self.any_fd {
            let i = v as usize;
            if i >= self.n {
                return false;
            }
            if self.masked[i] {
                self.pending[i] = true;
                return false;
            }
            if let Some(fd) = &self.fds[i] {
                fd.signal();
                return true;
            }
            false
        } else if let Some(fd) = &self.intx {
            fd.signal();
            true
        } else {
            false
        }
    }

    /// Sets (or clears) the eventfd of vector `v`; false when out of range.
    pub fn set_vector_fd(&mut self, v: u16, fd: Option<IrqFd>) -> bool {
        match self.fds[..self.n].get_mut(v as usize) {
            Some(slot) => {
                *slot = fd;
                self.any_fd = self.fds.iter().any(Option::is_some);
                true
            }
            None => false,
        }
    }

    /// Clears every vector's eventfd.
    pub fn clear_vector_fds(&mut self) {
        self.fds = std::array::from_fn(|_| None);
        self.any_fd = false;
    }

    /// Masks or unmasks vector `v`. Unmasking returns true when an
    /// interrupt was pending (the caller then signals it).
    pub fn set_masked(&mut self, v: u16, masked: bool) -> bool {
        let i = v as usize;
        if i >= self.n {
            return false;
        }
        self.masked[i] = masked;
        !masked && std::mem::take(&mut self.pending[i])
    }

    /// Sets (or clears) the INTx eventfd.
    pub fn set_intx_fd(&mut self, fd: Option<IrqFd>) {
        self.intx = fd;
    }

    /// The VMM went away: its eventfds, masks and pending bits go too.
    pub fn disconnect(&mut self) {
        self.fds = std::array::from_fn(|_| None);
        self.any_fd = false;
        self.intx = None;
        self.masked = [false; N];
        self.pending = [false; N];
    }

    /// Reads BAR 1 (table and PBA).
    pub fn bar_read(&self, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let (off, end) = bar_range(offset, data.len())?;
        data.fill(0);
        let t = l::MSIX_TABLE_OFFSET as usize;
        let p = l::MSIX_PBA_OFFSET as usize;
        let table = &self.table[..self.n * 16];
        if let Some(src) = table.get(off.wrapping_sub(t)..end.wrapping_sub(t)) {
            data.copy_from_slice(src);
        } else if off >= p && end <= p + 8 {
            let bits: u64 = self
                .pending
                .iter()
                .enumerate()
                .map(|(i, b)| (*b as u64) << i)
                .sum();
            data.copy_from_slice(&bits.to_le_bytes()[off - p..end - p]);
        }
        Ok(())
    }

    /// Writes BAR 1. Returns false when the write was ignored (outside the table).
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<bool, AccessError> {
        let (off, end) = bar_range(offset, data.len())?;
        let t = l::MSIX_TABLE_OFFSET as usize;
        let table = &mut self.table[..self.n * 16];
        match table.get_mut(off.wrapping_sub(t)..end.wrapping_sub(t)) {
            Some(dst) => {
                dst.copy_from_slice(data);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn bar_range(offset: u64, len: usize) -> Result<(usize, usize), AccessError> {
    let off = usize::try_from(offset).map_err(|_| AccessError::Invalid)?;
    let end = off.checked_add(len).ok_or(AccessError::Invalid)?;
    if end as u64 > l::MSIX_BAR_SIZE {
        return Err(AccessError::Invalid);
    }
    Ok((off, end))
}
