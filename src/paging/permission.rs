//! The access-rights rules of SDM Vol. 3A §4.6, shared by the walker and by every cache that
//! keeps a translation's combined rights (a TLB hit is checked by the same function).

use crate::paging::access::{Access, AccessKind, Privilege};
use crate::paging::cpu::CpuState;

/// The rights a translation grants, combined over every level walked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, serde::Serialize)]
pub struct Rights {
    /// R/W = 1 at every level.
    pub writable: bool,
    /// U/S = 1 at every level: a user-mode address.
    pub user: bool,
    /// XD = 1 at some level while EFER.NXE = 1.
    pub no_execute: bool,
}

impl Rights {
    /// Rights before any entry is seen: everything allowed.
    pub const ALL: Rights = Rights { writable: true, user: true, no_execute: false };

    /// Whether `access` may use a translation with these rights (SDM §4.6.1).
    #[inline]
    pub const fn permit(self, access: Access, cpu: &CpuState) -> bool {
        match access.privilege {
            Privilege::User => {
                self.user
                    && match access.kind {
                        AccessKind::Read => true,
                        AccessKind::Write => self.writable,
                        AccessKind::Fetch => !self.no_execute,
                    }
            }
            Privilege::Supervisor => {
                // SMAP blocks explicit supervisor data accesses to user-mode addresses
                // unless EFLAGS.AC is set.
                let smap_blocks = self.user && cpu.smap && !cpu.ac;
                match access.kind {
                    AccessKind::Read => !smap_blocks,
                    AccessKind::Write => (self.writable || !cpu.wp) && !smap_blocks,
                    AccessKind::Fetch => !(self.no_execute || (self.user && cpu.smep)),
                }
            }
        }
    }
}
