//! Checking every translation of a run as it happens.
//!
//! For each translated access the verifier asks the mode for the reference composition
//! GVA -> GPA (guest tables) -> HVA (memory slot) -> HPA (host tables), computed without side
//! effects, and checks the HPA the hardware path produced against it. It also folds what the
//! guest saw — the GPA, or the fault and its error code — into digests, one per chunk of
//! translations, so runs of the same workload in different modes can be compared cheaply and
//! the first differing chunk found.

use serde::Serialize;

use crate::addr::{Gpa, Gva, Hpa};
use crate::guest::Pid;
use crate::paging::{Access, PfErrorCode};
use crate::vcpu::Vcpu;
use crate::vmm::Mode;

/// Translations per digest chunk.
pub const CHUNK: u64 = 1 << 16;

/// What the guest saw of one translation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// The access reached this guest-physical address.
    Gpa(Gpa),
    /// A page fault with this error code.
    Fault(PfErrorCode),
    /// #GP for a non-canonical address.
    GeneralProtection,
    /// Emulated by the VMM (MMIO).
    Emulated,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gpa(gpa) => write!(f, "GPA {gpa}"),
            Self::Fault(code) => write!(f, "page fault, error code {:#x} ({code})", code.bits()),
            Self::GeneralProtection => f.write_str("#GP (non-canonical address)"),
            Self::Emulated => f.write_str("emulated by the VMM (MMIO)"),
        }
    }
}

/// One translation the verifier looked at, for reports of a mismatch.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Observed {
    /// Index of the translation in the run (0-based, after warm-up too).
    pub translation: u64,
    /// The process.
    pub pid: Pid,
    /// The address.
    pub gva: Gva,
    /// The access.
    pub access: Access,
    /// What the guest saw.
    pub seen: Seen,
    /// The host-physical address used, if translated.
    pub hpa: Option<Hpa>,
    /// The reference composition's host-physical address, if translated.
    pub expected_hpa: Option<Hpa>,
    /// A write completed to a guest frame the VMM keeps write-protected (a shadowed guest
    /// table): the write protection leaked.
    pub unprotected_write: bool,
    /// The access reached a frame backing another VM's memory.
    pub foreign_frame: bool,
}

/// The verifier's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    /// Translations checked against the reference composition.
    pub checked: u64,
    /// How many disagreed.
    pub mismatches: u64,
    /// The first that disagreed.
    pub first_mismatch: Option<Observed>,
    /// One digest per chunk of [`CHUNK`] translations of what the guest saw.
    #[serde(skip)]
    pub digests: Vec<u64>,
    /// When set, every translation with index in this range is kept in `recorded`.
    #[serde(skip)]
    pub record: Option<std::ops::Range<u64>>,
    /// Translations kept for a detailed comparison.
    #[serde(skip)]
    pub recorded: Vec<Observed>,
}

/// The per-run verifier.
#[derive(Debug, Default)]
pub struct Verifier {
    enabled: bool,
    translations: u64,
    digest: u64,
    result: Verification,
}

impl Verifier {
    /// A verifier; a disabled one does nothing.
    pub fn new(enabled: bool, record: Option<std::ops::Range<u64>>) -> Self {
        Self { enabled, result: Verification { record, ..Verification::default() }, ..Self::default() }
    }

    /// Whether it checks anything.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records one translation's outcome; for a translated access, checks the HPA.
    pub fn observe<M: Mode>(
        &mut self,
        mode: &mut M,
        vcpu: &Vcpu,
        pid: Pid,
        va: Gva,
        access: Access,
        seen: SeenRaw,
    ) {
        if !self.enabled {
            return;
        }
        let mut unprotected_write = false;
        let mut foreign_frame = false;
        let (seen, hpa, expected_hpa) = match seen {
            SeenRaw::Translated(hpa) => {
                let gpa = mode.reference_gpa(va, access, vcpu);
                let expected = gpa.and_then(|gpa| mode.reference_hpa(gpa));
                unprotected_write = access.is_write() && gpa.is_some_and(|gpa| mode.write_protected(gpa));
                foreign_frame = mode.foreign_frame(hpa);
                self.result.checked += 1;
                if expected != Some(hpa) || gpa.is_none() || unprotected_write || foreign_frame {
                    self.result.mismatches += 1;
                }
                (gpa.map_or(Seen::Emulated, Seen::Gpa), Some(hpa), expected)
            }
            SeenRaw::Fault(code) => (Seen::Fault(code), None, None),
            SeenRaw::GeneralProtection => (Seen::GeneralProtection, None, None),
            // The VMM completed the access (MMIO): what the guest saw is still the GPA its
            // tables gave.
            SeenRaw::Emulated => {
                (mode.reference_gpa(va, access, vcpu).map_or(Seen::Emulated, Seen::Gpa), None, None)
            }
        };
        let observed = Observed {
            translation: self.translations,
            pid,
            gva: va,
            access,
            seen,
            hpa,
            expected_hpa,
            unprotected_write,
            foreign_frame,
        };
        let wrong = (hpa.is_some() && hpa != expected_hpa) || unprotected_write || foreign_frame;
        if wrong && self.result.first_mismatch.is_none() {
            self.result.first_mismatch = Some(observed);
        }
        if self.result.record.as_ref().is_some_and(|range| range.contains(&self.translations)) {
            self.result.recorded.push(observed);
        }
        let word = match seen {
            Seen::Gpa(gpa) => gpa.as_u64(),
            Seen::Fault(code) => (1 << 62) | u64::from(code.bits()),
            Seen::GeneralProtection => 2 << 62,
            Seen::Emulated => 3 << 62,
        };
        let word = word ^ u64::from(pid).rotate_left(40) ^ va.as_u64().rotate_left(17);
        self.digest = (self.digest.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
        self.translations += 1;
        if self.translations % CHUNK == 0 {
            self.result.digests.push(self.digest);
            self.digest = 0;
        }
    }

    /// The result.
    pub fn finish(mut self) -> Verification {
        if self.enabled && self.translations % CHUNK != 0 {
            self.result.digests.push(self.digest);
        }
        self.result
    }
}

/// A translation's outcome as the run loop sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SeenRaw {
    /// Translated to this HPA.
    Translated(Hpa),
    /// A guest page fault.
    Fault(PfErrorCode),
    /// #GP.
    GeneralProtection,
    /// Emulated.
    Emulated,
}
