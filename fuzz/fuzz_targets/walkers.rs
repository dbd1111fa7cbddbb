//! The x86-64 and EPT walkers over arbitrary table bytes, addresses and CPU state: a result,
//! never a panic, and never a read outside the table memory given.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;

use libfuzzer_sys::fuzz_target;
use memvirt::addr::{Gpa, Gva, Hpa, Level, PagingLevels};
use memvirt::ept::{ept_walk, Eptp, NestedAccess};
use memvirt::paging::{walk, Access, AccessKind, AdPolicy, CpuState, Privilege, TableMemory};

/// Entries from the fuzzer's bytes, addressed by the low 15 bits (4 pages), zero elsewhere.
struct Tables(HashMap<u64, u64>);

impl TableMemory<Hpa> for Tables {
    type Error = Infallible;
    fn read_entry(&mut self, addr: Hpa, _: Level) -> Result<u64, Infallible> {
        Ok(self.0.get(&(addr.as_u64() & 0x7ff8)).copied().unwrap_or(0))
    }
    fn write_entry(&mut self, addr: Hpa, _: Level, value: u64) -> Result<(), Infallible> {
        self.0.insert(addr.as_u64() & 0x7ff8, value);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
    let (va, root, flags) = (word(0), word(8), word(16));
    let mut tables = Tables(
        data[24..]
            .chunks_exact(8)
            .enumerate()
            .map(|(i, c)| ((i as u64 * 8) & 0x7ff8, u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
    );
    let bit = |n: u32| flags >> n & 1 == 1;
    let cpu = CpuState {
        levels: if bit(0) { PagingLevels::Five } else { PagingLevels::Four },
        wp: bit(1),
        smep: bit(2),
        smap: bit(3),
        ac: bit(4),
        nxe: bit(5),
        pge: bit(6),
        pcide: bit(7),
        phys_bits: 32 + (flags >> 8 & 0x1f) as u8,
    };
    let kind = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][(flags >> 16 & 3) as usize % 3];
    let privilege = if bit(18) { Privilege::User } else { Privilege::Supervisor };
    let ad = if bit(19) { AdPolicy::Update } else { AdPolicy::Leave };
    let _ = walk(&mut tables, Hpa::new(root), Gva::new_truncate(va), Access::new(kind, privilege), &cpu, ad);
    let eptp = Eptp(root);
    let access = NestedAccess { kind, final_translation: bit(20) };
    let _ = ept_walk(&mut tables, eptp, Gpa::new(va), access, cpu.phys_bits);
});
