//! Shadow pages and their roles.

use crate::addr::{Gfn, Hpa, Level};
use crate::paging::{CpuState, Rights};

/// What a shadow page shadows, besides the guest frame: the pair (guest frame, role) is the
/// key of the VMM's hash of shadow pages, as in KVM's `union kvm_mmu_page_role`. Two walks
/// that reach one guest table with anything here different get different shadow pages,
/// because the shadow entries they need differ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Role {
    /// The level of the shadow table.
    pub level: Level,
    /// `false`: shadows a guest page table (its frame is write-protected). `true`: one part
    /// of a guest large page split into smaller shadow mappings (nothing to write-protect).
    pub direct: bool,
    /// The rights the guest's entries above this table grant together (KVM's `role.access`):
    /// each leaf shadow entry below gets them combined with its own guest entry's. For a
    /// direct page, the rights of the guest's large page, write access only while the large
    /// entry is dirty.
    pub access: Rights,
    /// The guest's CR0.WP (KVM's `role.cr0_wp`): with it clear, the VMM maps a supervisor
    /// write to a read-only user page kernel-writable and user-inaccessible.
    pub cr0_wp: bool,
    /// CR4.SMEP and not CR0.WP: such kernel-writable conversions also lose execute rights.
    pub smep_andnot_wp: bool,
    /// CR4.SMAP and not CR0.WP: a page converted for a CR0.WP=0 kernel write must not be
    /// reused where SMAP would have refused it.
    pub smap_andnot_wp: bool,
    /// The guest's EFER.NXE (the hardware always runs with NXE under shadow paging).
    pub efer_nx: bool,
}

/// The bits of a role that come from the guest's control registers rather than its tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RoleBits {
    /// CR0.WP.
    pub cr0_wp: bool,
    /// CR4.SMEP && !CR0.WP.
    pub smep_andnot_wp: bool,
    /// CR4.SMAP && !CR0.WP.
    pub smap_andnot_wp: bool,
    /// EFER.NXE.
    pub efer_nx: bool,
}

impl RoleBits {
    /// The bits for a guest running with `cpu` (KVM's `kvm_calc_cpu_role` and
    /// `kvm_calc_shadow_mmu_root_page_role`).
    pub fn of(cpu: &CpuState) -> Self {
        Self {
            cr0_wp: cpu.wp,
            smep_andnot_wp: cpu.smep && !cpu.wp,
            smap_andnot_wp: cpu.smap && !cpu.wp,
            efer_nx: cpu.nxe,
        }
    }

    /// The role of a shadow table at `level` with `access`.
    pub fn role(self, level: Level, direct: bool, access: Rights) -> Role {
        Role {
            level,
            direct,
            access,
            cr0_wp: self.cr0_wp,
            smep_andnot_wp: self.smep_andnot_wp,
            smap_andnot_wp: self.smap_andnot_wp,
            efer_nx: self.efer_nx,
        }
    }
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
    /// Shadow entries that point at this page (KVM's `parent_ptes`; checked before use: they
    /// may have been rewritten since).
    pub parents: Vec<Hpa>,
    /// Guest writes to the shadowed table since the page was last used by a fault (KVM's
    /// `write_flooding_count`).
    pub writes_since_use: u8,
    /// Out of sync: the guest frame is writable and the page may lag the guest table until
    /// the guest's next TLB flush point.
    pub unsync: bool,
    /// Entries that lead to out-of-sync pages below (KVM's `unsync_child_bitmap`), so a flush
    /// point finds the pages it must resynchronise without scanning every table.
    pub unsync_child_bitmap: [u64; 8],
    /// How many bits of the bitmap are set (KVM's `unsync_children`).
    pub unsync_children: u16,
}

impl ShadowPage {
    /// A page with no parents, in sync.
    pub fn new(table: Hpa, gfn: Gfn, role: Role) -> Self {
        Self {
            table,
            gfn,
            role,
            parents: Vec::new(),
            writes_since_use: 0,
            unsync: false,
            unsync_child_bitmap: [0; 8],
            unsync_children: 0,
        }
    }

    /// Marks entry `index` as leading to out-of-sync pages; returns whether it was the first.
    pub fn set_unsync_child(&mut self, index: u64) -> bool {
        let (word, bit) = bitmap_position(index);
        if self.unsync_child_bitmap[word] & bit != 0 {
            return false;
        }
        self.unsync_child_bitmap[word] |= bit;
        self.unsync_children += 1;
        self.unsync_children == 1
    }

    /// Clears entry `index`'s mark; returns whether none is left.
    pub fn clear_unsync_child(&mut self, index: u64) -> bool {
        let (word, bit) = bitmap_position(index);
        if self.unsync_child_bitmap[word] & bit != 0 {
            self.unsync_child_bitmap[word] &= !bit;
            self.unsync_children -= 1;
        }
        self.unsync_children == 0
    }

    /// The entries marked as leading to out-of-sync pages.
    pub fn unsync_child_indices(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(usize::from(self.unsync_children));
        for (word, &bits) in (0u64..).zip(&self.unsync_child_bitmap) {
            let mut rest = bits;
            while rest != 0 {
                out.push(word * 64 + u64::from(rest.trailing_zeros()));
                rest &= rest - 1;
            }
        }
        out
    }
}

/// Word and bit of entry `index` (0..512) in an unsync-child bitmap.
fn bitmap_position(index: u64) -> (usize, u64) {
    let index = index & 511;
    (usize::try_from(index / 64).unwrap_or(0), 1u64 << (index % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unsync_child_bitmap_counts_each_entry_once() {
        let role = RoleBits::of(&CpuState::default()).role(Level::Pd, false, Rights::ALL);
        let mut page = ShadowPage::new(Hpa::new(0x1000), Gfn::new(1), role);
        assert!(page.set_unsync_child(3));
        assert!(!page.set_unsync_child(3));
        assert!(!page.set_unsync_child(511));
        assert_eq!(page.unsync_children, 2);
        assert_eq!(page.unsync_child_indices(), vec![3, 511]);
        assert!(!page.clear_unsync_child(3));
        assert!(!page.clear_unsync_child(3));
        assert!(page.clear_unsync_child(511));
        assert!(page.unsync_child_indices().is_empty());
    }
}
