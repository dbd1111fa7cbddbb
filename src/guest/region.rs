//! A region of a process's address space and the rights it grants.

use crate::addr::{Gva, PageSize};
use crate::paging::{Access, AccessKind, Pte};

/// Protection of a region, as `mmap`'s `prot` gives it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Prot {
    /// PROT_READ.
    pub read: bool,
    /// PROT_WRITE.
    pub write: bool,
    /// PROT_EXEC.
    pub exec: bool,
}

impl Prot {
    /// Read, write and execute: what a trace's pages get.
    pub const RWX: Prot = Prot { read: true, write: true, exec: true };
    /// Read and write.
    pub const RW: Prot = Prot { read: true, write: true, exec: false };
    /// Read and execute.
    pub const RX: Prot = Prot { read: true, write: false, exec: true };
}

/// A mapped range `[start, start + len)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Region {
    /// First byte (page-aligned).
    pub start: Gva,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Rights.
    pub prot: Prot,
    /// A user-mode mapping (U/S = 1) rather than a kernel one.
    pub user: bool,
    /// The page size the kernel maps it with where alignment allows.
    pub page_size: PageSize,
}

impl Region {
    /// Whether `va` falls inside the region.
    pub fn contains(&self, va: Gva) -> bool {
        va.as_u64().checked_sub(self.start.as_u64()).is_some_and(|offset| offset < self.len)
    }

    /// Whether the region's rights allow `access`.
    pub fn permits(&self, access: Access) -> bool {
        if access.is_user() && !self.user {
            return false;
        }
        match access.kind {
            AccessKind::Read => self.prot.read || self.prot.write || self.prot.exec,
            AccessKind::Write => self.prot.write,
            AccessKind::Fetch => self.prot.exec,
        }
    }

    /// The leaf-entry flags the kernel maps the region's pages with (without A/D).
    pub fn leaf_flags(&self, nxe: bool) -> u64 {
        let mut flags = Pte::PRESENT;
        if self.prot.write {
            flags |= Pte::WRITABLE;
        }
        if self.user {
            flags |= Pte::USER;
        } else {
            flags |= Pte::GLOBAL;
        }
        if nxe && !self.prot.exec {
            flags |= Pte::NO_EXECUTE;
        }
        flags
    }
}
