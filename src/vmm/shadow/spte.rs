//! The bits of shadow entries, as KVM's `make_spte` and `make_nonleaf_spte` (spte.c) build
//! them, and the rights a guest entry contributes (`FNAME(gpte_access)`, paging_tmpl.h).

use crate::addr::{Hpa, Level};
use crate::paging::{CpuState, Pte, Rights};

/// A shadow entry that links a lower shadow table. It grants everything: the guest's rights
/// are enforced in the leaf entries alone, which carry the rights of every level above them
/// (KVM's `make_nonleaf_spte`), so one lower table serves every path with the same role.
pub fn link(child: Hpa) -> u64 {
    (child.as_u64() & Pte::ADDRESS_MASK) | Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED
}

/// Whether `value`, an entry of a shadow table at `level`, links a lower shadow table.
pub fn is_link(value: u64, level: Level) -> bool {
    value & Pte::PRESENT != 0 && level > Level::Pt && value & Pte::PAGE_SIZE == 0
}

/// A leaf shadow entry for `page` with `access`. Write access comes with D set, so the
/// processor never writes a shadow entry's D bit back. The guest's G bit is never copied:
/// KVM's `make_spte` does not set G, since a guest's global pages are the guest's own idea.
/// A prefetched entry (`accessed` false) is left with A clear, as KVM leaves it until the
/// processor first uses it.
pub fn leaf(page: Hpa, access: Rights, large: bool, accessed: bool) -> u64 {
    let mut value = (page.as_u64() & Pte::ADDRESS_MASK) | Pte::PRESENT;
    if accessed {
        value |= Pte::ACCESSED;
    }
    if access.writable {
        value |= Pte::WRITABLE | Pte::DIRTY;
    }
    if access.user {
        value |= Pte::USER;
    }
    if access.no_execute {
        value |= Pte::NO_EXECUTE;
    }
    if large {
        value |= Pte::PAGE_SIZE;
    }
    value
}

/// Whether replacing the leaf shadow entry `old` by `new` takes something away a TLB may
/// hold: the mapping (not present, another frame) or a right (W, U, or execute). Only then
/// must the VMM flush (KVM's `mmu_spte_update`, `spte_has_volatile_bits`).
pub fn fewer_rights(old: u64, new: u64) -> bool {
    if old & Pte::PRESENT == 0 {
        return false;
    }
    new & Pte::PRESENT == 0
        || new & Pte::ADDRESS_MASK != old & Pte::ADDRESS_MASK
        || old & !new & (Pte::WRITABLE | Pte::USER) != 0
        || new & !old & Pte::NO_EXECUTE != 0
}

/// The rights of a guest leaf entry `gpte` below tables that grant `above`, with write access
/// kept only if the entry is dirty, so the first write faults and the VMM sets D (KVM's
/// `FNAME(gpte_access)` and `FNAME(protect_clean_gpte)`).
pub fn guest_leaf_access(above: Rights, gpte: u64, nxe: bool) -> Rights {
    let pte = Pte(gpte);
    Rights {
        writable: above.writable && pte.has(Pte::WRITABLE) && pte.has(Pte::DIRTY),
        user: above.user && pte.has(Pte::USER),
        no_execute: above.no_execute || (nxe && pte.has(Pte::NO_EXECUTE)),
    }
}

/// Whether a guest entry of a page table (level 1) may be used to fill a shadow entry ahead
/// of a fault or when resynchronising: present, no reserved bit set, and accessed (KVM's
/// `FNAME(prefetch_invalid_gpte)`, which leaves entries the guest has not used yet alone).
pub fn usable_guest_pte(gpte: u64, cpu: &CpuState) -> bool {
    let pte = Pte(gpte);
    pte.has(Pte::PRESENT) && pte.has(Pte::ACCESSED) && gpte & pte.reserved_mask(Level::Pt, cpu) == 0
}

/// What a CR0.WP=0 guest's supervisor write to a page whose guest rights are `access` (not
/// writable) is mapped with: writable for the kernel, inaccessible to user mode, and, with
/// SMEP on, not executable either (Documentation/virt/kvm/x86/mmu.rst, "Emulating cr0.wp";
/// `FNAME(page_fault)` in paging_tmpl.h).
pub fn kernel_writable(access: Rights, smep: bool) -> Rights {
    Rights { writable: true, user: false, no_execute: access.no_execute || smep }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_entries_never_carry_the_global_bit() {
        for access in [Rights::ALL, Rights { writable: false, user: false, no_execute: true }] {
            for large in [false, true] {
                let value = leaf(Hpa::new(0x20_0000), access, large, true);
                assert_eq!(value & Pte::GLOBAL, 0);
                assert_eq!(value & Pte::PAGE_SIZE != 0, large);
            }
        }
    }

    #[test]
    fn a_clean_guest_entry_gives_no_write_access() {
        let clean = Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED;
        assert!(!guest_leaf_access(Rights::ALL, clean, true).writable);
        assert!(guest_leaf_access(Rights::ALL, clean | Pte::DIRTY, true).writable);
        let above = Rights { writable: false, user: true, no_execute: false };
        assert!(!guest_leaf_access(above, clean | Pte::DIRTY, true).writable);
    }

    #[test]
    fn only_taking_something_away_needs_a_flush() {
        let page = Hpa::new(0x7000);
        let read_only = leaf(page, Rights { writable: false, user: true, no_execute: false }, false, true);
        let writable = leaf(page, Rights::ALL, false, true);
        assert!(!fewer_rights(read_only, writable));
        assert!(fewer_rights(writable, read_only));
        assert!(fewer_rights(writable, 0));
        assert!(fewer_rights(writable, leaf(Hpa::new(0x8000), Rights::ALL, false, true)));
        let no_exec = leaf(page, Rights { no_execute: true, ..Rights::ALL }, false, true);
        assert!(fewer_rights(writable, no_exec));
        assert!(!fewer_rights(0, writable));
        assert!(!fewer_rights(leaf(page, Rights::ALL, false, false), writable), "gaining A");
    }

    #[test]
    fn links_grant_every_right() {
        let value = link(Hpa::new(0x5000));
        assert_eq!(value & (Pte::WRITABLE | Pte::USER), Pte::WRITABLE | Pte::USER);
        assert_eq!(value & Pte::NO_EXECUTE, 0);
        assert!(is_link(value, Level::Pd));
        assert!(!is_link(value | Pte::PAGE_SIZE, Level::Pd));
        assert!(!is_link(value, Level::Pt));
    }

    #[test]
    fn kernel_writable_conversion_drops_user_and_with_smep_execute() {
        let read_only_user = Rights { writable: false, user: true, no_execute: false };
        let plain = kernel_writable(read_only_user, false);
        assert!(plain.writable && !plain.user && !plain.no_execute);
        assert!(kernel_writable(read_only_user, true).no_execute);
    }
}
