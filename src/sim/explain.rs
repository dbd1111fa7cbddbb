//! Explaining one translation: every memory reference of the walk, in order, in both address
//! spaces.

use serde::Serialize;

use crate::addr::{Gpa, Gva, Hpa};
use crate::paging::{Access, PfErrorCode};

/// One reference of an explained walk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct WalkRef {
    /// Which table: "guest", "shadow", "ept", "npt" (natively the guest's own tables).
    pub table: &'static str,
    /// The level of the table read (5 = PML5 .. 1 = PT).
    pub level: u8,
    /// The guest-physical address involved: of the guest entry read, or the GPA a nested
    /// entry is translating. None for shadow entries, which live outside guest memory.
    pub gpa: Option<Gpa>,
    /// The host-physical address read.
    pub hpa: Hpa,
    /// The entry's value.
    pub entry: u64,
}

/// One translation explained.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The mode.
    pub mode: &'static str,
    /// The address translated.
    pub gva: Gva,
    /// The access.
    pub access: Access,
    /// The guest-physical address, when the guest tables map it.
    pub gpa: Option<Gpa>,
    /// The host-physical address, when the access translates.
    pub hpa: Option<Hpa>,
    /// The page fault the guest would see, if any.
    pub fault: Option<PfErrorCode>,
    /// The references the processor made, in order.
    pub refs: Vec<WalkRef>,
    /// Shadow paging: the VMM's software walk of the guest tables, when a hidden fault had to
    /// be filled first.
    pub vmm_refs: Vec<WalkRef>,
}

impl Explanation {
    /// An explanation of `access` to `gva` in `mode` with nothing found yet.
    pub fn new(mode: &'static str, gva: Gva, access: Access) -> Self {
        Self { mode, gva, access, gpa: None, hpa: None, fault: None, refs: Vec::new(), vmm_refs: Vec::new() }
    }
}
