//! Intel EPT (SDM Vol. 3C ch. 29): the EPT pointer, the entry format, the EPT walk with its
//! violations and misconfigurations, and the exit qualification a violation reports.
//!
//! EPT entries have their own type, [`EptEntry`]; they never share the x86 [`crate::paging::Pte`].

pub mod entry;
pub mod eptp;
pub mod qualification;
pub mod walker;

pub use entry::EptEntry;
pub use eptp::Eptp;
pub use qualification::ExitQualification;
pub use walker::{ept_walk, ept_walk_from, EptOutcome, EptStart, NestedAccess};
