//! Arbitrary traces and guest event streams through native, shadow, EPT and NPT with
//! verification on: no panic, and every run that completes agrees across the modes and with
//! the reference composition GVA -> GPA -> HVA -> HPA. Bounded per input: at most
//! `MAX_OPS` operations, guest RAM and host memory capped.
//!
//! The first byte picks the input's form: even, the rest is a trace (lackey text or the
//! compact format, as `--trace` reads it); odd, the rest is decoded into guest operations
//! (mmap, munmap, mprotect, fork, exec, exit, raw table writes, accesses), as the property
//! test in tests/random_guests.rs makes them.
#![no_main]

use std::path::Path;
use std::sync::atomic::AtomicU64;

use libfuzzer_sys::fuzz_target;
use memvirt::addr::{Gva, PageSize};
use memvirt::guest::{Prot, Region};
use memvirt::paging::{AccessKind, Pte};
use memvirt::sim::compare::compare;
use memvirt::sim::{ModeName, SimConfig, SimError};
use memvirt::workload::compact::{CompactTrace, MAGIC};
use memvirt::workload::lackey::LackeyTrace;
use memvirt::workload::{Op, Workload, WorkloadError};

/// The most operations one input runs, so each input finishes in milliseconds.
const MAX_OPS: usize = 256;
const SLOT_BYTES: u64 = 16 << 20;
const BASE: u64 = 0x1000_0000;

/// The operations of a trace, up to the bound (the trace's first error ends them).
fn trace_ops(bytes: &[u8]) -> Vec<Op> {
    let path = Path::new("fuzz");
    let mut trace: Box<dyn Workload> = if bytes.starts_with(&MAGIC) {
        Box::new(CompactTrace::from_reader(path, bytes, 1))
    } else {
        Box::new(LackeyTrace::from_reader(path, bytes, 1))
    };
    std::iter::from_fn(|| trace.next_op().ok().flatten()).take(MAX_OPS).collect()
}

fn prot(bits: u8) -> Prot {
    Prot { read: true, write: bits & 1 != 0, exec: bits & 2 != 0 }
}

fn va(slot: u8, page: u16) -> Gva {
    Gva::new_truncate(BASE + u64::from(slot % 4) * SLOT_BYTES + u64::from(page % 600) * 4096)
}

/// Guest operations decoded from bytes, eight per step: the kind, then its fields. A step
/// naming a process that does not exist starts one instead.
fn event_ops(bytes: &[u8]) -> Vec<Op> {
    let mut live: Vec<u32> = Vec::new();
    let mut next_pid = 1;
    let mut out = Vec::new();
    for step in bytes.chunks_exact(8) {
        if out.len() >= MAX_OPS {
            break;
        }
        let [kind, proc, slot, a, b, c, d, e] =
            [step[0], step[1], step[2], step[3], step[4], step[5], step[6], step[7]];
        let (page, pages) = (u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d]) % 600 + 1);
        let pid = match live.get(usize::from(proc % 4)) {
            Some(&pid) => pid,
            None => {
                let pid = next_pid;
                next_pid += 1;
                live.push(pid);
                out.push(Op::Spawn { pid, anywhere: false });
                pid
            }
        };
        match kind % 16 {
            0..=8 => {
                let kind = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][usize::from(e % 3)];
                out.push(Op::Access { pid, va: va(slot, page), kind, size: u32::from(d % 16) + 1 });
            }
            9 | 10 => {
                let page_size = if e & 4 != 0 { PageSize::Size2M } else { PageSize::Size4K };
                let region = Region {
                    start: va(slot, 0),
                    len: u64::from(pages) * 4096,
                    prot: prot(e),
                    user: true,
                    page_size,
                };
                out.push(Op::Map { pid, region });
            }
            11 => out.push(Op::Munmap { pid, start: va(slot, page), len: u64::from(pages) * 4096 }),
            12 => out.push(Op::Mprotect {
                pid,
                start: va(slot, page),
                len: u64::from(pages) * 4096,
                prot: prot(e),
            }),
            13 => {
                let child = next_pid;
                next_pid += 1;
                live.push(child);
                out.push(Op::Fork { parent: pid, child });
            }
            14 => {
                if e & 1 == 0 {
                    out.push(Op::Exec { pid });
                } else {
                    live.retain(|p| *p != pid);
                    out.push(Op::Exit { pid });
                }
            }
            _ => {
                // Plausible raw table writes, as in the property test: present user entries
                // inside guest RAM with random flag and reserved bits, never G (a global
                // translation stale in another address space is the guest's own doing).
                let value = u64::from_le_bytes([a, b, c, d, e, slot, proc, kind]);
                let value = (value & 0x8000_000f_ffff_f0ff & !(0xfff_ffff << 36)) | Pte::PRESENT | Pte::USER;
                out.push(Op::Poke { pid, va: va(slot, page), level: e % 4 + 1, value });
            }
        }
    }
    out
}

struct Replay(std::vec::IntoIter<Op>);

impl Workload for Replay {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        Ok(self.0.next())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let program = if form % 2 == 0 { trace_ops(rest) } else { event_ops(rest) };
    let modes = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
    let mut config =
        SimConfig { verify: true, guest_ram: 1 << 30, max_host_memory: 256 << 20, ..SimConfig::default() };
    config.shadow.unsync = form & 2 != 0;
    let factory = || Ok(Box::new(Replay(program.clone().into_iter())) as Box<dyn Workload>);
    let progress: Vec<AtomicU64> = modes.iter().map(|_| AtomicU64::new(0)).collect();
    match compare(&modes, &config, &factory, &progress) {
        Ok(comparison) => {
            assert!(comparison.mismatch.is_none(), "{:?}\n{program:?}", comparison.mismatch);
            for report in &comparison.reports {
                assert_eq!(
                    report.verified,
                    Some(true),
                    "{}: {:?}",
                    report.mode,
                    report.verification.first_mismatch
                );
            }
        }
        // A defect of the simulator (a mode's thread panicked) is a finding; a kernel error
        // (a region the bytes asked for that cannot be) is the same in every mode.
        Err(SimError::Internal(message)) => panic!("{message}"),
        Err(_) => {}
    }
});
