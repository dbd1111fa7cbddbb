//! Plain-text tables for a terminal.

use std::fmt::Write;

use crate::addr::Level;
use crate::sim::explain::{Explanation, WalkRef};
use crate::sim::stats::ratio;
use crate::sim::RunReport;

/// Rows of one run: (label, value).
fn rows(report: &RunReport) -> Vec<(&'static str, String)> {
    let s = &report.stats;
    let e = &s.vm_exits;
    let pct = |a: u64, b: u64| if b == 0 { "-".to_string() } else { format!("{:.2}%", 100.0 * ratio(a, b)) };
    vec![
        ("mode", report.mode.to_string()),
        ("accesses", s.accesses.to_string()),
        ("translations", s.translations.to_string()),
        ("TLB hits (L1 / L2)", format!("{} ({} / {})", s.tlb_hits, s.tlb.l1_hits, s.tlb.l2_hits)),
        ("TLB misses", format!("{} ({} of translations)", s.tlb_misses, pct(s.tlb_misses, s.translations))),
        ("walks", s.walks.to_string()),
        ("walk references", s.walk_refs.to_string()),
        ("references per walk (mean / max)", format!("{:.2} / {}", s.refs_per_walk(), s.walk_refs_max)),
        ("A/D write-backs", s.ad_writes.to_string()),
        ("guest page faults", s.guest_page_faults.to_string()),
        ("segfaults (skipped accesses)", s.segfaults.to_string()),
        ("context switches", s.context_switches.to_string()),
        (
            "VM exits",
            format!(
                "{} (cr3 {}, invlpg {}, #PF {}, pt-write {}, ept-violation {}, ept-misconfig {}, mmio {})",
                e.total,
                e.cr3_write,
                e.invlpg,
                e.page_fault,
                e.pt_write,
                e.ept_violation,
                e.ept_misconfig,
                e.mmio
            ),
        ),
        (
            "page-table bytes (guest / shadow / EPT)",
            format!(
                "{} / {} / {}",
                s.page_table_bytes.guest, s.page_table_bytes.shadow, s.page_table_bytes.ept
            ),
        ),
        ("estimated cycles", report.cycles.to_string()),
    ]
}

/// The references of one explained translation, one per line, then the outcome.
pub fn explanation_table(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {:?} {:?} of GVA {} (every translation cache cold)",
        e.mode, e.access.privilege, e.access.kind, e.gva
    );
    let show = |refs: &[WalkRef], out: &mut String| {
        let _ = writeln!(
            out,
            "{:>3}  {:<6} {:<5} {:>18}  {:>18}  {:>18}",
            "#", "table", "level", "GPA", "HPA", "entry"
        );
        for (i, r) in refs.iter().enumerate() {
            let level = Level::ALL.get(usize::from(r.level).wrapping_sub(1)).map_or("?", |l| l.table_name());
            let gpa = r.gpa.map_or("-".to_string(), |g| g.to_string());
            let _ = writeln!(
                out,
                "{:>3}  {:<6} {:<5} {:>18}  {:>18}  {:#018x}",
                i + 1,
                r.table,
                level,
                gpa,
                r.hpa.to_string(),
                r.entry
            );
        }
    };
    if !e.vmm_refs.is_empty() {
        let _ = writeln!(
            out,
            "\nhidden fault: the VMM first walked the guest tables in software ({} references):",
            e.vmm_refs.len()
        );
        show(&e.vmm_refs, &mut out);
        let _ = writeln!(out, "\nthen the processor walked the filled shadow table:");
    }
    show(&e.refs, &mut out);
    let _ = writeln!(out, "\n{} memory references", e.refs.len());
    match (e.gpa, e.hpa, e.fault) {
        (_, _, Some(code)) => {
            let _ = writeln!(out, "page fault, error code {:#x} ({code})", code.bits());
        }
        (gpa, Some(hpa), None) => {
            let gpa = gpa.map_or("-".to_string(), |g| g.to_string());
            let _ = writeln!(out, "GVA {} -> GPA {gpa} -> HPA {hpa}", e.gva);
        }
        _ => {
            let _ = writeln!(out, "no translation (emulated or non-canonical)");
        }
    }
    out
}

/// A two-column table of one run.
pub fn run_table(report: &RunReport) -> String {
    let rows = rows(report);
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<width$}  {value}");
    }
    out
}
