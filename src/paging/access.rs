//! What an access asks for, and the page-fault error code the processor reports when it is
//! refused (SDM Vol. 3A §4.7).

use std::fmt;

/// The kind of memory access.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// The privilege the access is made with: CPL 3 is user, CPL 0-2 supervisor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// CPL 3.
    User,
    /// CPL 0, 1 or 2 (explicit accesses only; implicit supervisor accesses are not modelled).
    Supervisor,
}

/// One access: its kind and the privilege it is made with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// User or supervisor.
    pub privilege: Privilege,
}

impl Access {
    /// A user-mode read.
    pub const USER_READ: Access = Access::new(AccessKind::Read, Privilege::User);
    /// A user-mode write.
    pub const USER_WRITE: Access = Access::new(AccessKind::Write, Privilege::User);
    /// A user-mode instruction fetch.
    pub const USER_FETCH: Access = Access::new(AccessKind::Fetch, Privilege::User);

    /// Builds an access.
    pub const fn new(kind: AccessKind, privilege: Privilege) -> Self {
        Self { kind, privilege }
    }
    /// Whether this is a write.
    pub const fn is_write(self) -> bool {
        matches!(self.kind, AccessKind::Write)
    }
    /// Whether this is an instruction fetch.
    pub const fn is_fetch(self) -> bool {
        matches!(self.kind, AccessKind::Fetch)
    }
    /// Whether the access is made at CPL 3.
    pub const fn is_user(self) -> bool {
        matches!(self.privilege, Privilege::User)
    }
}

/// The page-fault (#PF) error code pushed by the processor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PfErrorCode(u32);

impl PfErrorCode {
    /// Bit 0, P: 0 for a non-present page, 1 for a protection or reserved-bit violation.
    pub const PRESENT: u32 = 1 << 0;
    /// Bit 1, W/R: the access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// Bit 2, U/S: the access was made in user mode.
    pub const USER: u32 = 1 << 2;
    /// Bit 3, RSVD: a reserved bit was set in some paging-structure entry.
    pub const RESERVED: u32 = 1 << 3;
    /// Bit 4, I/D: the access was an instruction fetch (reported only with NXE or SMEP on).
    pub const FETCH: u32 = 1 << 4;

    /// Wraps raw bits.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// Whether all of `mask` is set.
    pub const fn contains(self, mask: u32) -> bool {
        self.0 & mask == mask
    }
}

impl fmt::Debug for PfErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PfErrorCode({:#x} {})", self.0, self)
    }
}

impl fmt::Display for PfErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::PRESENT, "P"),
            (Self::WRITE, "W"),
            (Self::USER, "U"),
            (Self::RESERVED, "RSVD"),
            (Self::FETCH, "I/D"),
        ];
        let set: Vec<&str> =
            names.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, name)| *name).collect();
        if set.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&set.join("|"))
        }
    }
}
