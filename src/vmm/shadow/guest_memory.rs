//! The guest's memory as the VMM reads it in software: guest-physical addresses through the
//! memory slot and the host page tables. Used by the VMM's own walks of the guest tables.

use crate::addr::{Gpa, Level};
use crate::host::{BackingError, Host};
use crate::paging::TableMemory;

/// The VMM's software view of guest memory; counts the entries it reads.
pub struct GuestMemory<'a> {
    /// The host.
    pub host: &'a mut Host,
    /// Guest entries read.
    pub reads: u64,
    /// Guest entries written (A/D emulation).
    pub writes: u64,
}

impl<'a> GuestMemory<'a> {
    /// A view with zeroed counters.
    pub fn new(host: &'a mut Host) -> Self {
        Self { host, reads: 0, writes: 0 }
    }
}

impl TableMemory<Gpa> for GuestMemory<'_> {
    type Error = BackingError;

    fn read_entry(&mut self, addr: Gpa, _level: Level) -> Result<u64, BackingError> {
        self.reads += 1;
        let (hpa, _) = self.host.back(addr)?;
        Ok(self.host.memory.read_u64(hpa))
    }

    fn write_entry(&mut self, addr: Gpa, _level: Level, value: u64) -> Result<(), BackingError> {
        self.writes += 1;
        let (hpa, _) = self.host.back(addr)?;
        self.host.memory.write_u64(hpa, value);
        Ok(())
    }
}
