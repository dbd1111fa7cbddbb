//! Memory slots: how the VMM backs guest-physical ranges with ranges of its own virtual
//! address space (KVM's user memory regions). GPA -> HVA is a plain offset inside a slot.

use crate::addr::{Gpa, Hva};

/// One guest-physical range backed at a host-virtual range of the same length.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct MemorySlot {
    /// First guest-physical byte.
    pub guest_start: Gpa,
    /// Length in bytes.
    pub len: u64,
    /// Where the VMM maps it.
    pub host_start: Hva,
}

/// A VM's memory slots, non-overlapping.
#[derive(Clone, Debug, Default)]
pub struct MemorySlots {
    slots: Vec<MemorySlot>,
}

impl MemorySlots {
    /// No slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a slot; refuses one overlapping an existing slot in either space.
    pub fn add(&mut self, slot: MemorySlot) -> Result<(), MemorySlot> {
        let overlaps = |a: u64, b: u64, len_a: u64, len_b: u64| {
            a < b.saturating_add(len_b) && b < a.saturating_add(len_a)
        };
        if let Some(clash) = self.slots.iter().find(|s| {
            overlaps(s.guest_start.as_u64(), slot.guest_start.as_u64(), s.len, slot.len)
                || overlaps(s.host_start.as_u64(), slot.host_start.as_u64(), s.len, slot.len)
        }) {
            return Err(*clash);
        }
        self.slots.push(slot);
        Ok(())
    }

    /// The host-virtual address backing `gpa`, or `None` outside every slot (MMIO).
    #[inline]
    pub fn hva_of(&self, gpa: Gpa) -> Option<Hva> {
        self.slots.iter().find_map(|slot| {
            let offset = gpa.offset_from(slot.guest_start)?;
            (offset < slot.len).then(|| slot.host_start.checked_add(offset)).flatten()
        })
    }

    /// Whether `hva` lies in some slot's host range.
    pub fn contains_hva(&self, hva: Hva) -> bool {
        self.slots.iter().any(|slot| hva.offset_from(slot.host_start).is_some_and(|offset| offset < slot.len))
    }

    /// The slots.
    pub fn iter(&self) -> impl Iterator<Item = &MemorySlot> {
        self.slots.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_inside_slots_and_nothing_outside() {
        let mut slots = MemorySlots::new();
        let low =
            MemorySlot { guest_start: Gpa::new(0), len: 0x1000_0000, host_start: Hva::new(0x7f00_0000_0000) };
        slots.add(low).expect("first slot");
        let high = MemorySlot {
            guest_start: Gpa::new(0x1_0000_0000),
            len: 0x1000,
            host_start: Hva::new(0x7e00_0000_0000),
        };
        slots.add(high).expect("second slot");
        assert_eq!(slots.hva_of(Gpa::new(0x1234)), Some(Hva::new(0x7f00_0000_1234)));
        assert_eq!(slots.hva_of(Gpa::new(0x1_0000_0010)), Some(Hva::new(0x7e00_0000_0010)));
        assert_eq!(slots.hva_of(Gpa::new(0x1000_0000)), None);
        assert!(slots.add(MemorySlot { guest_start: Gpa::new(0x800), ..low }).is_err());
    }
}
