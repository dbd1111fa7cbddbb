//! The guest's memory as the VMM reads it in software: guest-physical addresses through the
//! memory slot and the host page tables. Used by the VMM's own walks of the guest tables and
//! by the reference composition GVA -> GPA -> HVA -> HPA that verification checks against.

use crate::addr::{Gpa, Level};
use crate::host::{BackingError, Host};
use crate::paging::TableMemory;

/// The VMM's software view of guest memory; counts the entries it reads.
pub struct GuestMemory<'a> {
    /// The host.
    pub host: &'a mut Host,
    /// Back untouched guest pages on the way (the VMM does); a pure observer does not, and
    /// treats an untouched page as unreadable.
    pub populate: bool,
    /// Guest entries read.
    pub reads: u64,
    /// Guest entries written (A/D emulation).
    pub writes: u64,
}

impl<'a> GuestMemory<'a> {
    /// The VMM's view: backs pages as needed.
    pub fn new(host: &'a mut Host) -> Self {
        Self { host, populate: true, reads: 0, writes: 0 }
    }

    /// An observer's view: changes nothing in the host.
    pub fn observer(host: &'a mut Host) -> Self {
        Self { host, populate: false, reads: 0, writes: 0 }
    }

    /// Where `addr` lives, or `None` where guest memory reads as zeros: outside every memory
    /// slot (no device answers a page walk, on bare metal as in a VM), or, for an observer, a
    /// guest page never touched (it would be zero-filled).
    fn locate(&mut self, addr: Gpa) -> Result<Option<crate::addr::Hpa>, BackingError> {
        if self.populate {
            match self.host.back(addr) {
                Ok((hpa, _)) => Ok(Some(hpa)),
                Err(BackingError::Unbacked(_)) => Ok(None),
                Err(e) => Err(e),
            }
        } else {
            Ok(self.host.backing_of(addr).map(|(hpa, _)| hpa))
        }
    }
}

impl TableMemory<Gpa> for GuestMemory<'_> {
    type Error = BackingError;

    fn read_entry(&mut self, addr: Gpa, _level: Level) -> Result<u64, BackingError> {
        self.reads += 1;
        Ok(self.locate(addr)?.map_or(0, |hpa| self.host.memory.read_u64(hpa)))
    }

    fn write_entry(&mut self, addr: Gpa, _level: Level, value: u64) -> Result<(), BackingError> {
        self.writes += 1;
        if let Some(hpa) = self.locate(addr)? {
            self.host.memory.write_u64(hpa, value);
        }
        Ok(())
    }
}
