//! Plain-text tables for a terminal.

use std::fmt::Write;

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
