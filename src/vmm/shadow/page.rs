//! Shadow pages and their roles.

use crate::addr::{Gfn, Hpa, Level};

/// What a shadow page shadows, besides the guest frame: the pair (guest frame, role) is the
/// key of the VMM's hash of shadow pages, as in KVM's `kvm_mmu_page_role`.
///
/// Rights are copied into every shadow entry from the accumulated guest rights, and the
/// hardware walk of the shadow tables runs under the guest's own CR0.WP / CR4.SMEP / SMAP /
/// EFER.NXE, so neither access rights nor those bits need to be part of the role here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Role {
    /// The level of the shadow table.
    pub level: Level,
    /// `false`: shadows a guest page table (write-protected). `true`: one part of a guest
    /// large page split into smaller shadow mappings (nothing to write-protect).
    pub direct: bool,
}

/// One shadow page.
#[derive(Clone, Debug)]
pub struct ShadowPage {
    /// The host frame holding the shadow table.
    pub table: Hpa,
    /// The guest frame it shadows (for a direct page: the first guest frame it maps).
    pub gfn: Gfn,
    /// Its role.
    pub role: Role,
    /// Shadow entries that point at this page (validated before use: they may be stale).
    pub parents: Vec<Hpa>,
    /// Guest writes to the shadowed table since the page was last used by a fault.
    pub writes_since_use: u8,
    /// Out of sync: the guest frame is left writable and the page may lag the guest table
    /// until the guest's next TLB flush point.
    pub unsync: bool,
}
