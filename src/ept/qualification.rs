//! The exit qualification of an EPT violation (SDM Vol. 3C §28.2.1, "Exit Qualification for
//! EPT Violations").

use std::fmt;

/// The exit qualification bits of an EPT violation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct ExitQualification(pub u64);

impl ExitQualification {
    /// Bit 0: the access was a data read.
    pub const READ: u64 = 1 << 0;
    /// Bit 1: the access was a data write.
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 2;
    /// Bit 3: the GPA was readable (AND of bit 0 of the EPT entries walked).
    pub const READABLE: u64 = 1 << 3;
    /// Bit 4: the GPA was writable (AND of bit 1).
    pub const WRITABLE: u64 = 1 << 4;
    /// Bit 5: the GPA was executable (AND of bit 2).
    pub const EXECUTABLE: u64 = 1 << 5;
    /// Bit 7: the guest linear-address field is valid.
    pub const LINEAR_VALID: u64 = 1 << 7;
    /// Bit 8 (with bit 7): the access was to the translated linear address, not to a guest
    /// paging-structure entry.
    pub const FINAL_TRANSLATION: u64 = 1 << 8;
}

impl fmt::Debug for ExitQualification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExitQualification({:#x} {self})", self.0)
    }
}

impl fmt::Display for ExitQualification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::READ, "read"),
            (Self::WRITE, "write"),
            (Self::FETCH, "fetch"),
            (Self::READABLE, "readable"),
            (Self::WRITABLE, "writable"),
            (Self::EXECUTABLE, "executable"),
            (Self::LINEAR_VALID, "linear-valid"),
            (Self::FINAL_TRANSLATION, "final"),
        ];
        let set: Vec<&str> = names.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect();
        f.write_str(&set.join("|"))
    }
}
