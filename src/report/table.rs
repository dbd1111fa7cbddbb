//! The side-by-side table of a comparison, and its CSV form.

use std::fmt::Write;

use crate::sim::compare::Comparison;
use crate::sim::stats::ratio;
use crate::sim::RunReport;

/// One row: a label and how to get its value from a report (with native's cycles, if any).
struct Row {
    label: &'static str,
    key: &'static str,
    value: fn(&RunReport, Option<u64>) -> String,
}

fn rows() -> Vec<Row> {
    vec![
        Row { label: "accesses", key: "accesses", value: |r, _| r.stats.accesses.to_string() },
        Row { label: "TLB hits", key: "tlb_hits", value: |r, _| r.stats.tlb_hits.to_string() },
        Row { label: "TLB misses", key: "tlb_misses", value: |r, _| r.stats.tlb_misses.to_string() },
        Row { label: "walks", key: "walks", value: |r, _| r.stats.walks.to_string() },
        Row { label: "walk references", key: "walk_refs", value: |r, _| r.stats.walk_refs.to_string() },
        Row {
            label: "refs per walk (mean)",
            key: "refs_per_walk",
            value: |r, _| format!("{:.2}", r.stats.refs_per_walk()),
        },
        Row {
            label: "refs per walk (max)",
            key: "walk_refs_max",
            value: |r, _| r.stats.walk_refs_max.to_string(),
        },
        Row {
            label: "guest page faults",
            key: "guest_page_faults",
            value: |r, _| r.stats.guest_page_faults.to_string(),
        },
        Row { label: "VM exits", key: "vm_exits_total", value: |r, _| r.stats.vm_exits.total.to_string() },
        Row {
            label: "  cr3 write",
            key: "vm_exits_cr3_write",
            value: |r, _| r.stats.vm_exits.cr3_write.to_string(),
        },
        Row { label: "  invlpg", key: "vm_exits_invlpg", value: |r, _| r.stats.vm_exits.invlpg.to_string() },
        Row {
            label: "  page fault",
            key: "vm_exits_page_fault",
            value: |r, _| r.stats.vm_exits.page_fault.to_string(),
        },
        Row {
            label: "  pt write",
            key: "vm_exits_pt_write",
            value: |r, _| r.stats.vm_exits.pt_write.to_string(),
        },
        Row {
            label: "  EPT violation / NPF",
            key: "vm_exits_ept_violation",
            value: |r, _| r.stats.vm_exits.ept_violation.to_string(),
        },
        Row {
            label: "  EPT misconfig",
            key: "vm_exits_ept_misconfig",
            value: |r, _| r.stats.vm_exits.ept_misconfig.to_string(),
        },
        Row { label: "  MMIO", key: "vm_exits_mmio", value: |r, _| r.stats.vm_exits.mmio.to_string() },
        Row {
            label: "guest page tables (KiB)",
            key: "page_table_kib_guest",
            value: |r, _| (r.stats.page_table_bytes.guest / 1024).to_string(),
        },
        Row {
            label: "shadow tables (KiB)",
            key: "page_table_kib_shadow",
            value: |r, _| (r.stats.page_table_bytes.shadow / 1024).to_string(),
        },
        Row {
            label: "EPT/NPT tables (KiB)",
            key: "page_table_kib_ept",
            value: |r, _| (r.stats.page_table_bytes.ept / 1024).to_string(),
        },
        Row { label: "estimated cycles", key: "cycles", value: |r, _| r.cycles.to_string() },
        Row {
            label: "overhead vs native",
            key: "overhead_vs_native",
            value: |r, native| match native {
                Some(base) if base > 0 => format!("{:.2}x", ratio(r.cycles, base)),
                _ => "-".to_string(),
            },
        },
    ]
}

fn native_cycles(comparison: &Comparison) -> Option<u64> {
    comparison.reports.iter().find(|r| r.mode == crate::sim::ModeName::Native).map(|r| r.cycles)
}

/// The cells of the side-by-side table: first a header line (an empty corner, then each
/// mode's name), then one line per row (its label, indented by two spaces for the parts of a
/// total, then each mode's value). The text table and the HTML report both show these.
pub fn comparison_cells(comparison: &Comparison) -> Vec<Vec<String>> {
    let native = native_cycles(comparison);
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut header = vec![String::new()];
    header.extend(comparison.reports.iter().map(|r| r.mode.to_string()));
    cells.push(header);
    for row in &rows() {
        let mut line = vec![row.label.to_string()];
        line.extend(comparison.reports.iter().map(|r| (row.value)(r, native)));
        cells.push(line);
    }
    cells
}

/// The comparison as an aligned text table, one column per mode.
pub fn comparison_table(comparison: &Comparison) -> String {
    let cells = comparison_cells(comparison);
    let columns = cells[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|c| cells.iter().map(|line| line[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in &cells {
        for (c, cell) in line.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<width$}", width = widths[0]);
            } else {
                let _ = write!(out, "  {cell:>width$}", width = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

/// The comparison as CSV: a header line, then one row per mode.
pub fn comparison_csv(comparison: &Comparison) -> String {
    let native = native_cycles(comparison);
    let rows = rows();
    let mut out = String::from("mode");
    for row in &rows {
        out.push(',');
        out.push_str(row.key);
    }
    out.push_str(",verified,interrupted\n");
    for report in &comparison.reports {
        out.push_str(&report.mode.to_string());
        for row in &rows {
            out.push(',');
            out.push_str((row.value)(report, native).trim_end_matches('x'));
        }
        let verified = match report.verified {
            Some(true) => "true",
            Some(false) => "false",
            None => "",
        };
        let _ = writeln!(out, ",{verified},{}", report.stats.interrupted);
    }
    out
}
