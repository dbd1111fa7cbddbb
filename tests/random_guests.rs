//! Property test: random guest operation sequences — processes mapping, touching,
//! protecting, unmapping, forking, exec'ing, exiting, and now and then writing raw table
//! entries — give the same guest-visible results in every mode, and every translated access
//! matches the reference composition GVA -> GPA -> HVA -> HPA.

use std::sync::atomic::AtomicU64;

use memvirt::addr::{Gva, PageSize};
use memvirt::guest::{Prot, Region};
use memvirt::paging::{AccessKind, Pte};
use memvirt::sim::compare::compare;
use memvirt::sim::{ModeName, SimConfig};
use memvirt::workload::{Op, Workload, WorkloadError};
use proptest::prelude::*;

const SLOT_BYTES: u64 = 16 << 20;
const BASE: u64 = 0x1000_0000;

#[derive(Clone, Debug)]
enum Step {
    Access { proc: u8, slot: u8, page: u16, kind: u8 },
    Mmap { proc: u8, slot: u8, pages: u16, prot: u8, large: bool },
    Munmap { proc: u8, slot: u8, first: u16, pages: u16 },
    Mprotect { proc: u8, slot: u8, first: u16, pages: u16, prot: u8 },
    Fork { proc: u8 },
    Exec { proc: u8 },
    Exit { proc: u8 },
    Poke { proc: u8, slot: u8, page: u16, level: u8, value: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0..4u8, 0..4u8, 0..600u16, 0..3u8).prop_map(|(proc, slot, page, kind)| Step::Access { proc, slot, page, kind }),
        3 => (0..4u8, 0..4u8, 1..600u16, 0..8u8, any::<bool>()).prop_map(|(proc, slot, pages, prot, large)| Step::Mmap { proc, slot, pages, prot, large }),
        1 => (0..4u8, 0..4u8, 0..600u16, 1..600u16).prop_map(|(proc, slot, first, pages)| Step::Munmap { proc, slot, first, pages }),
        1 => (0..4u8, 0..4u8, 0..600u16, 1..600u16, 0..8u8).prop_map(|(proc, slot, first, pages, prot)| Step::Mprotect { proc, slot, first, pages, prot }),
        1 => (0..4u8).prop_map(|proc| Step::Fork { proc }),
        1 => (0..4u8).prop_map(|proc| Step::Exec { proc }),
        1 => (0..4u8).prop_map(|proc| Step::Exit { proc }),
        1 => (0..4u8, 0..4u8, 0..600u16, 1..5u8, any::<u64>()).prop_map(|(proc, slot, page, level, value)| Step::Poke { proc, slot, page, level, value }),
    ]
}

fn prot(bits: u8) -> Prot {
    Prot { read: true, write: bits & 1 != 0, exec: bits & 2 != 0 }
}

fn va(slot: u8, page: u16) -> Gva {
    Gva::new_truncate(BASE + u64::from(slot) * SLOT_BYTES + u64::from(page) * 4096)
}

/// The process a step names, started if it does not exist.
fn pick(proc: u8, live: &mut Vec<u32>, out: &mut Vec<Op>, next_pid: &mut u32) -> u32 {
    if live.is_empty() || usize::from(proc) >= live.len() {
        let pid = *next_pid;
        *next_pid += 1;
        live.push(pid);
        out.push(Op::Spawn { pid, anywhere: false });
        return pid;
    }
    live[usize::from(proc)]
}

/// Turns random steps into a valid operation sequence: steps naming a process that does not
/// exist start one instead.
fn ops(steps: &[Step]) -> Vec<Op> {
    let mut live: Vec<u32> = Vec::new();
    let mut next_pid = 1;
    let mut out = Vec::new();
    for s in steps {
        match *s {
            Step::Access { proc, slot, page, kind } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                let kind = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][usize::from(kind)];
                out.push(Op::Access { pid, va: va(slot, page), kind, size: 8 });
            }
            Step::Mmap { proc, slot, pages, prot: p, large } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                let page_size = if large { PageSize::Size2M } else { PageSize::Size4K };
                let region = Region {
                    start: va(slot, 0),
                    len: u64::from(pages) * 4096,
                    prot: prot(p),
                    user: true,
                    page_size,
                };
                out.push(Op::Map { pid, region });
            }
            Step::Munmap { proc, slot, first, pages } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                out.push(Op::Munmap { pid, start: va(slot, first), len: u64::from(pages) * 4096 });
            }
            Step::Mprotect { proc, slot, first, pages, prot: p } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                out.push(Op::Mprotect {
                    pid,
                    start: va(slot, first),
                    len: u64::from(pages) * 4096,
                    prot: prot(p),
                });
            }
            Step::Fork { proc } => {
                let parent = pick(proc, &mut live, &mut out, &mut next_pid);
                let child = next_pid;
                next_pid += 1;
                live.push(child);
                out.push(Op::Fork { parent, child });
            }
            Step::Exec { proc } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                out.push(Op::Exec { pid });
            }
            Step::Exit { proc } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                live.retain(|p| *p != pid);
                out.push(Op::Exit { pid });
            }
            Step::Poke { proc, slot, page, level, value } => {
                let pid = pick(proc, &mut live, &mut out, &mut next_pid);
                // Keep pokes plausible: present user entries pointing inside guest RAM, with
                // random flag and reserved bits — but never G: a global translation must be
                // the same in every address space, or stale hits are the guest's own doing.
                let value = (value & 0x8000_000f_ffff_f0ff & !(0xfff_ffff << 36)) | Pte::PRESENT | Pte::USER;
                out.push(Op::Poke { pid, va: va(slot, page), level, value });
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_guests_agree_in_every_mode(steps in proptest::collection::vec(step(), 1..120), unsync in any::<bool>()) {
        let program = ops(&steps);
        let modes = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
        let mut config = SimConfig { verify: true, guest_ram: 4 << 30, ..SimConfig::default() };
        config.shadow.unsync = unsync;
        let factory = || Ok(Box::new(Replay(program.clone().into_iter())) as Box<dyn Workload>);
        let progress: Vec<AtomicU64> = modes.iter().map(|_| AtomicU64::new(0)).collect();
        let comparison = compare(&modes, &config, &factory, &progress);
        // A kernel error (a bad region the random steps asked for) is the same in every mode.
        if let Ok(comparison) = comparison {
            prop_assert!(comparison.mismatch.is_none(), "{:?}\n{:?}", comparison.mismatch, program);
            for report in &comparison.reports {
                prop_assert_eq!(report.verified, Some(true), "{}: {:?}", report.mode, report.verification.first_mismatch);
            }
        }
    }
}
