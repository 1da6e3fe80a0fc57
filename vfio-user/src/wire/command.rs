//! The command numbers, in one place, with what the framing needs to know
//! about each.

use super::layout::{
    DeviceInfo, DmaMap, DmaUnmap, IrqInfo, RegionAccess, SetIrqs, Version, REGION_INFO_LEN,
};
use core::mem::size_of;

/// A vfio-user command (`Header::command`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Negotiate version and capabilities.
    Version = 1,
    /// Map a range of the client's memory for DMA.
    DmaMap = 2,
    /// Unmap a DMA range.
    DmaUnmap = 3,
    /// Device info.
    DeviceGetInfo = 4,
    /// Region info.
    DeviceGetRegionInfo = 5,
    /// Region I/O fds (not supported by sbnet).
    DeviceGetRegionIoFds = 6,
    /// IRQ info.
    DeviceGetIrqInfo = 7,
    /// Set IRQ eventfds / actions.
    DeviceSetIrqs = 8,
    /// Read from a region.
    RegionRead = 9,
    /// Write to a region.
    RegionWrite = 10,
    /// Server reads client memory (not used by sbnet).
    DmaRead = 11,
    /// Server writes client memory (not used by sbnet).
    DmaWrite = 12,
    /// Reset the device.
    DeviceReset = 13,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 13] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
    ];

    /// The command with wire number `number`, if there is one.
    pub fn from_u16(number: u16) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u16 == number)
    }

    /// The protocol's name of the command, for errors and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DmaRead => "DMA_READ",
            Command::DmaWrite => "DMA_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
        }
    }

    /// Size of the command's fixed body, or `None` when sbnet does not
    /// support the command (its server refuses it with `ENOTSUP`).
    pub const fn fixed_body_len(self) -> Option<usize> {
        Some(match self {
            Command::Version => size_of::<Version>(),
            Command::DmaMap => size_of::<DmaMap>(),
            Command::DmaUnmap => size_of::<DmaUnmap>(),
            Command::DeviceGetInfo => size_of::<DeviceInfo>(),
            Command::DeviceGetRegionInfo => REGION_INFO_LEN,
            Command::DeviceGetIrqInfo => size_of::<IrqInfo>(),
            Command::DeviceSetIrqs => size_of::<SetIrqs>(),
            Command::RegionRead | Command::RegionWrite => size_of::<RegionAccess>(),
            Command::DeviceReset => 0,
            Command::DeviceGetRegionIoFds | Command::DmaRead | Command::DmaWrite => return None,
        })
    }

    /// Whether `FLAG_NO_REPLY` is meaningful: commands whose reply carries
    /// data are refused (and not executed) when the client wants no reply.
    pub const fn allows_no_reply(self) -> bool {
        matches!(
            self,
            Command::DmaMap
                | Command::DmaUnmap
                | Command::DeviceSetIrqs
                | Command::RegionWrite
                | Command::DeviceReset
        )
    }

    /// Whether file descriptors may come with the command.
    pub const fn takes_fds(self) -> bool {
        matches!(self, Command::DmaMap | Command::DeviceSetIrqs)
    }
}

impl From<Command> for u16 {
    fn from(command: Command) -> u16 {
        command as u16
    }
}

impl core::fmt::Display for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_none() {
        for (i, c) in Command::ALL.into_iter().enumerate() {
            assert_eq!(c as u16, i as u16 + 1);
            assert_eq!(Command::from_u16(c.into()), Some(c));
        }
        for n in [0, 14, 999, u16::MAX] {
            assert_eq!(Command::from_u16(n), None);
        }
    }
}
