//! Hand-written SVG pictures of one explained translation, after the seed article's figures:
//! the 1D walk without virtualization, the guest tables beside the shadow tables the processor
//! walks, and the 2D grid of a nested (EPT/NPT) walk.
//!
//! Every picture is built from a real [`Explanation`]: each box or cell is one memory reference
//! the walk made, labelled with its level, its address and the entry read, and numbered in walk
//! order. Text goes through [`escape`]; nothing here panics on an empty or odd explanation —
//! it draws a note instead.

use std::fmt::Write;

use crate::addr::Level;
use crate::sim::explain::{Explanation, WalkRef};

/// Escapes text for XML and HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One translation as a standalone SVG document: the 1D walk for native and shadow paging
/// (with the guest tables the VMM walked in software beside the shadow tables, when a hidden
/// fault made it walk them), the 2D grid for EPT and NPT.
pub fn explanation_svg(e: &Explanation) -> String {
    let body = match e.mode {
        "ept" | "npt" => nested_picture(e, "mv"),
        "shadow" => shadow_picture(e, None, "mv"),
        _ => native_picture(e, "mv"),
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}")
}

/// Guest tables to draw in the shadow picture when the explanation has none of its own
/// (the shadow entry was already present, so the VMM did not walk them): the guest's
/// references from another mode's explanation of the same access.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BorrowedGuestWalk<'a> {
    /// The guest-table references (only their levels, GPAs and entries are shown).
    pub refs: &'a [WalkRef],
    /// The mode they were taken from.
    pub mode: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Drawing primitives

const SANS: &str = "DejaVu Sans, Verdana, Arial, sans-serif";
const MONO: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";

/// Fill and stroke of one kind of box.
#[derive(Clone, Copy)]
struct Palette {
    fill: &'static str,
    stroke: &'static str,
    ink: &'static str,
}

const GUEST: Palette = Palette { fill: "#e3eefc", stroke: "#2f6fc0", ink: "#1d4f8f" };
const SHADOW: Palette = Palette { fill: "#fdebd6", stroke: "#d9822b", ink: "#8a4b0c" };
const NESTED: Palette = Palette { fill: "#dcf3e0", stroke: "#2e8b47", ink: "#1c5e2e" };
const REGISTER: Palette = Palette { fill: "#f2f2f2", stroke: "#666666", ink: "#333333" };
const PAGE: Palette = Palette { fill: "#fff7c2", stroke: "#a08a00", ink: "#5c4f00" };
const FAULT: Palette = Palette { fill: "#fde2e2", stroke: "#c0392b", ink: "#8e1f14" };
const PROTECT: &str = "#c0392b";

/// Text weight and family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Font {
    Title,
    Bold,
    Sans,
    Small,
    Mono,
    MonoSmall,
}

impl Font {
    fn attributes(self) -> (&'static str, u32, &'static str) {
        match self {
            Font::Title => (SANS, 17, "bold"),
            Font::Bold => (SANS, 13, "bold"),
            Font::Sans => (SANS, 13, "normal"),
            Font::Small => (SANS, 11, "normal"),
            Font::Mono => (MONO, 12, "normal"),
            Font::MonoSmall => (MONO, 11, "normal"),
        }
    }
}

/// An SVG picture being drawn.
struct Canvas {
    body: String,
    prefix: String,
}

impl Canvas {
    fn new(prefix: &str) -> Self {
        Self { body: String::new(), prefix: prefix.to_string() }
    }

    fn rect(&mut self, x: i32, y: i32, w: i32, h: i32, palette: Palette, extra: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{}" stroke="{}" stroke-width="1.5"{extra}/>"#,
            palette.fill, palette.stroke
        );
    }

    /// A picture's title and the line that explains it.
    fn heading(&mut self, title: &str, subtitle: &str) {
        self.text(MARGIN, 28, Font::Title, "#222", "start", title);
        self.text(MARGIN, 50, Font::Sans, "#444", "start", subtitle);
    }

    fn text(&mut self, x: i32, y: i32, font: Font, fill: &str, anchor: &str, content: &str) {
        let (family, size, weight) = font.attributes();
        let _ = writeln!(
            self.body,
            r#"<text x="{x}" y="{y}" font-family="{family}" font-size="{size}" font-weight="{weight}" fill="{fill}" text-anchor="{anchor}">{}</text>"#,
            escape(content)
        );
    }

    /// A straight arrow from (x1, y1) to (x2, y2).
    fn arrow(&mut self, x1: i32, y1: i32, x2: i32, y2: i32, color: &str, dashed: bool) {
        let dash = if dashed { r#" stroke-dasharray="5 4""# } else { "" };
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6"{dash} marker-end="url(#{}-arrow)"/>"#,
            self.prefix
        );
    }

    /// An arrow along a path.
    fn path_arrow(&mut self, d: &str, color: &str) {
        let _ = writeln!(
            self.body,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.4" marker-end="url(#{}-arrow)"/>"#,
            self.prefix
        );
    }

    /// A numbered disc: the position of a reference in walk order.
    fn badge(&mut self, cx: i32, cy: i32, label: &str, color: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{cx}" cy="{cy}" r="11" fill="{color}" stroke="white" stroke-width="1.5"/>"#
        );
        let (family, _, _) = Font::Bold.attributes();
        let _ = writeln!(
            self.body,
            r#"<text x="{cx}" y="{}" font-family="{family}" font-size="11" font-weight="bold" fill="white" text-anchor="middle">{}</text>"#,
            cy + 4,
            escape(label)
        );
    }

    /// The finished `<svg>` element.
    fn finish(self, width: i32, height: i32, title: &str) -> String {
        format!(
            concat!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#,
                "\n<title>{title}</title>\n<defs><marker id=\"{p}-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" ",
                "markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">",
                "<path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n",
                "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n{body}</svg>\n"
            ),
            w = width,
            h = height,
            title = escape(title),
            p = escape(&self.prefix),
            body = self.body
        )
    }
}

/// A picture that could not be drawn: its title and why.
fn note_picture(title: &str, note: &str, prefix: &str) -> String {
    let mut c = Canvas::new(prefix);
    c.text(20, 30, Font::Title, "#222", "start", title);
    c.text(20, 60, Font::Sans, FAULT.ink, "start", note);
    let width = text_width(note, Font::Sans).max(text_width(title, Font::Title)) + 40;
    c.finish(width.max(400), 80, title)
}

/// A rough width of `text` in pixels (for sizing pictures, never for clipping).
fn text_width(text: &str, font: Font) -> i32 {
    let (_, size, _) = font.attributes();
    let size = i32::try_from(size).unwrap_or(12);
    let chars = i32::try_from(text.chars().count()).unwrap_or(i32::MAX / 16);
    let per_char = match font {
        Font::Mono | Font::MonoSmall => size * 62 / 100,
        Font::Title | Font::Bold => size * 66 / 100,
        _ => size * 60 / 100,
    };
    chars.saturating_mul(per_char.max(1))
}

/// Converts a count to a coordinate (counts here are tiny).
fn coord(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX / 4)
}

fn level_name(level: u8) -> &'static str {
    level_of(level).map_or("?", Level::table_name)
}

fn level_of(level: u8) -> Option<Level> {
    Level::ALL.get(usize::from(level).wrapping_sub(1)).copied()
}

/// The page size a leaf at `level` maps, in bytes, and its name.
fn leaf_page(level: u8) -> (u64, &'static str) {
    match level {
        2 => (1 << 21, "2 MiB page"),
        3 => (1 << 30, "1 GiB page"),
        _ => (1 << 12, "4 KiB page"),
    }
}

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

fn entry_text(entry: u64) -> String {
    format!("= {entry:#018x}")
}

/// "4 memory references" / "1 memory reference".
pub(crate) fn references(count: usize) -> String {
    if count == 1 {
        "1 memory reference".to_string()
    } else {
        format!("{count} memory references")
    }
}

// ---------------------------------------------------------------------------------------------
// The 1D walk

const BOX_W: i32 = 184;
const BOX_H: i32 = 104;
const GAP: i32 = 40;
const MARGIN: i32 = 20;

/// One box of a 1D chain.
struct ChainBox {
    /// The column it stands in (0 = CR3).
    column: i32,
    badge: Option<String>,
    title: String,
    subtitle: String,
    lines: Vec<(Font, String)>,
    palette: Palette,
    protected: bool,
    level: Option<u8>,
}

fn column_x(column: i32) -> i32 {
    MARGIN + column * (BOX_W + GAP)
}

/// Draws a row of boxes at height `y`, arrows between neighbours.
fn draw_chain(c: &mut Canvas, y: i32, boxes: &[ChainBox], badge_color: &str) {
    for (i, b) in boxes.iter().enumerate() {
        let x = column_x(b.column);
        let extra = if b.protected {
            format!(r#" stroke-dasharray="7 3" style="stroke:{PROTECT}""#)
        } else {
            String::new()
        };
        c.rect(x, y, BOX_W, BOX_H, b.palette, &extra);
        c.text(x + 12, y + 22, Font::Bold, b.palette.ink, "start", &b.title);
        let subtitle_right = if b.protected { x + BOX_W - 30 } else { x + BOX_W - 10 };
        if !b.subtitle.is_empty() {
            c.text(subtitle_right, y + 22, Font::Small, b.palette.ink, "end", &b.subtitle);
        }
        let mut line_y = y + 42;
        for (font, line) in &b.lines {
            c.text(x + 12, line_y, *font, "#222", "start", line);
            line_y += 18;
        }
        if b.protected {
            // A padlock in the corner: the guest's own tables are read-only to it under
            // shadow paging.
            let (lx, ly) = (x + BOX_W - 22, y + 12);
            let _ = writeln!(
                c.body,
                r#"<g><title>write-protected</title><path d="M{} {} v-4 a5 5 0 0 1 10 0 v4" fill="none" stroke="{PROTECT}" stroke-width="2"/><rect x="{lx}" y="{}" width="14" height="10" rx="2" fill="{PROTECT}"/></g>"#,
                lx + 2,
                ly + 3,
                ly + 3
            );
        }
        if let Some(badge) = &b.badge {
            c.badge(x, y, badge, badge_color);
        }
        if let Some(next) = boxes.get(i + 1) {
            let x2 = column_x(next.column);
            c.arrow(x + BOX_W + 2, y + BOX_H / 2, x2 - 3, y + BOX_H / 2, "#555", false);
        }
    }
}

/// Which address of a reference a box shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The host-physical address (native, shadow).
    Hpa,
    /// The guest-physical address and where it lives in host memory.
    GpaAndHpa,
    /// Only the guest-physical address (guest tables borrowed from another mode's walk).
    Gpa,
}

/// The boxes of one walk: a CR3 box, one box per reference, and the page or the fault.
fn chain_boxes(
    e: &Explanation,
    refs: &[WalkRef],
    palette: Palette,
    shown: Shown,
    names: (&str, &str),
    badges: Option<&str>,
    end: Option<ChainBox>,
) -> Vec<ChainBox> {
    let (cr3_name, table_prefix) = names;
    let top = refs.first().map_or(4, |r| r.level);
    let column = |level: u8| 1 + i32::from(top.saturating_sub(level));
    let mut boxes = Vec::new();
    if let Some(first) = refs.first() {
        let (address, space) = match shown {
            Shown::Hpa => (first.hpa.as_u64(), "HPA"),
            Shown::GpaAndHpa | Shown::Gpa => (first.gpa.map_or(first.hpa.as_u64(), |g| g.as_u64()), "GPA"),
        };
        boxes.push(ChainBox {
            column: 0,
            badge: None,
            title: cr3_name.to_string(),
            subtitle: "register".to_string(),
            lines: vec![
                (Font::Sans, format!("{} table at", level_name(top))),
                (Font::Mono, format!("{space} {}", hex(address & !0xfff))),
            ],
            palette: REGISTER,
            protected: false,
            level: None,
        });
    }
    for (i, r) in refs.iter().enumerate() {
        let mut lines = Vec::new();
        if let Some(level) = level_of(r.level) {
            let shift = level.shift();
            let index = (e.gva.as_u64() >> shift) & 0x1ff;
            lines.push((Font::Small, format!("index {index} (GVA bits {}:{shift})", shift + 8)));
        }
        let gpa = r.gpa.map_or_else(|| "-".to_string(), |g| hex(g.as_u64()));
        match shown {
            Shown::Hpa => lines.push((Font::Mono, format!("entry @ HPA {}", hex(r.hpa.as_u64())))),
            Shown::Gpa => lines.push((Font::Mono, format!("entry @ GPA {gpa}"))),
            Shown::GpaAndHpa => {
                lines.push((Font::MonoSmall, format!("entry @ GPA {gpa}")));
                lines.push((Font::MonoSmall, format!("     in HPA {}", hex(r.hpa.as_u64()))));
            }
        }
        lines.push((Font::MonoSmall, entry_text(r.entry)));
        boxes.push(ChainBox {
            column: column(r.level),
            badge: badges.map(|prefix| format!("{prefix}{}", i + 1)),
            title: format!("{table_prefix}{}", level_name(r.level)),
            subtitle: format!("level {}", r.level),
            lines,
            palette,
            protected: false,
            level: Some(r.level),
        });
    }
    if let Some(mut end) = end {
        end.column = boxes.last().map_or(0, |b| b.column + 1);
        boxes.push(end);
    }
    boxes
}

/// The box a walk ends in: the page it reached, or the fault.
fn end_box(e: &Explanation, refs: &[WalkRef], address: Option<u64>, space: &str) -> ChainBox {
    if let Some(code) = e.fault {
        return ChainBox {
            column: 0,
            badge: None,
            title: "page fault".to_string(),
            subtitle: "#PF".to_string(),
            lines: vec![
                (Font::Mono, format!("error code {:#x}", code.bits())),
                (Font::Small, format!("({code})")),
                (Font::Small, "delivered to the guest".to_string()),
            ],
            palette: FAULT,
            protected: false,
            level: None,
        };
    }
    match address {
        Some(address) => {
            let leaf = refs.last().map_or(1, |r| r.level);
            let (size, name) = leaf_page(leaf);
            ChainBox {
                column: 0,
                badge: None,
                title: name.to_string(),
                subtitle: "data".to_string(),
                lines: vec![
                    (Font::Mono, format!("{space} {}", hex(address & !(size - 1)))),
                    (Font::Mono, format!("+ offset {}", hex(address & (size - 1)))),
                    (Font::Mono, format!("= {space} {}", hex(address))),
                ],
                palette: PAGE,
                protected: false,
                level: None,
            }
        }
        None => ChainBox {
            column: 0,
            badge: None,
            title: "no translation".to_string(),
            subtitle: String::new(),
            lines: vec![
                (Font::Small, "emulated, non-canonical or".to_string()),
                (Font::Small, "unmapped".to_string()),
            ],
            palette: FAULT,
            protected: false,
            level: None,
        },
    }
}

fn chain_width(boxes: &[ChainBox]) -> i32 {
    boxes.iter().map(|b| column_x(b.column) + BOX_W).max().unwrap_or(0) + MARGIN
}

/// The outcome line under a picture.
fn outcome_line(e: &Explanation) -> String {
    let gva = format!("GVA {}", e.gva);
    match (e.gpa, e.hpa, e.fault) {
        (_, _, Some(code)) => format!("{gva}: page fault, error code {:#x} ({code})", code.bits()),
        (Some(_), Some(hpa), None) if e.mode == "native" => format!("{gva} → physical address {hpa}"),
        (Some(gpa), Some(hpa), None) => format!("{gva} → GPA {gpa} → HPA {hpa}"),
        (None, Some(hpa), None) => format!("{gva} → HPA {hpa}"),
        _ => format!("{gva}: no translation (emulated or non-canonical)"),
    }
}

fn access_text(e: &Explanation) -> String {
    format!("{:?} {:?}", e.access.privilege, e.access.kind).to_lowercase()
}

/// No virtualization: CR3 -> PML4 -> PDPT -> PD -> PT -> page, one reference per level.
pub(crate) fn native_picture(e: &Explanation, prefix: &str) -> String {
    let title = format!("No virtualization: a 1D walk of the page tables, {}", references(e.refs.len()));
    if e.refs.is_empty() {
        return note_picture(&title, "The walk made no memory reference (nothing to draw).", prefix);
    }
    let mut c = Canvas::new(prefix);
    c.heading(&title, &format!(
            "The {} of GVA {} with every translation cache cold: each level's entry is read from memory; numbers give the order.",
            access_text(e),
            e.gva
        ));
    let end = end_box(e, &e.refs, e.hpa.map(|h| h.as_u64()), "PA");
    let boxes = chain_boxes(e, &e.refs, GUEST, Shown::Hpa, ("CR3", ""), Some(""), Some(end));
    draw_chain(&mut c, 76, &boxes, GUEST.stroke);
    let width = chain_width(&boxes).max(text_width(&title, Font::Title) + 2 * MARGIN);
    let y = 76 + BOX_H + 34;
    c.text(MARGIN, y, Font::Bold, "#222", "start", &outcome_line(e));
    c.finish(width, y + 20, &title)
}

/// Shadow paging: the guest's tables (write-protected) above the shadow tables the processor
/// walks. `borrowed` stands in for the guest tables when the VMM did not walk them.
pub(crate) fn shadow_picture(
    e: &Explanation,
    borrowed: Option<BorrowedGuestWalk<'_>>,
    prefix: &str,
) -> String {
    let title = format!("Shadow paging: the processor walks the shadow tables, {}", references(e.refs.len()));
    if e.refs.is_empty() {
        return note_picture(&title, "The shadow walk made no memory reference (nothing to draw).", prefix);
    }
    let mut c = Canvas::new(prefix);
    c.heading(&title, &format!(
            "The {} of GVA {}: the VMM merges GVA → GPA (guest tables) with GPA → HPA into shadow tables that map GVA → HPA.",
            access_text(e),
            e.gva
        ));
    // The guest tables: the VMM's own software walk if it made one, else borrowed ones.
    let (guest_refs, shown, guest_note, badges): (&[WalkRef], Shown, String, Option<&str>) = if !e
        .vmm_refs
        .is_empty()
    {
        (
                &e.vmm_refs,
                Shown::GpaAndHpa,
                format!(
                    "Hidden page fault: the VM exited and the VMM walked the guest tables in software first ({}, v1..v{}).",
                    references(e.vmm_refs.len()),
                    e.vmm_refs.len()
                ),
                Some("v"),
            )
    } else if let Some(b) = borrowed.filter(|b| !b.refs.is_empty()) {
        (
                b.refs,
                Shown::Gpa,
                format!(
                    "The shadow entry was already present: no VM exit and no guest-table reference for this access (guest tables shown from the {} walk of the same guest).",
                    b.mode
                ),
                None,
            )
    } else {
        (
                &[],
                Shown::Gpa,
                "The shadow entry was already present: no VM exit, so the VMM read no guest table for this access."
                    .to_string(),
                None,
            )
    };
    let mut y = 80;
    let mut guest_boxes = Vec::new();
    if !guest_refs.is_empty() {
        c.text(
            MARGIN,
            y,
            Font::Bold,
            GUEST.ink,
            "start",
            "Guest page tables (GVA → GPA), write-protected by the VMM: a guest write to them exits",
        );
        y += 20;
    }
    c.text(MARGIN, y, Font::Sans, if badges.is_some() { "#7a5db0" } else { "#444" }, "start", &guest_note);
    y += 20;
    if !guest_refs.is_empty() {
        let end = end_box(e, guest_refs, e.gpa.map(|g| g.as_u64()), "GPA");
        guest_boxes = chain_boxes(e, guest_refs, GUEST, shown, ("guest CR3", "guest "), badges, Some(end));
        for b in guest_boxes.iter_mut().filter(|b| b.level.is_some()) {
            b.protected = true;
        }
        draw_chain(&mut c, y, &guest_boxes, "#7a5db0");
        y += BOX_H;
    }
    let guest_bottom = y;
    y += if guest_boxes.is_empty() { 16 } else { 60 };
    let end = end_box(e, &e.refs, e.hpa.map(|h| h.as_u64()), "HPA");
    let shadow_boxes =
        chain_boxes(e, &e.refs, SHADOW, Shown::Hpa, ("CR3 (shadow)", "shadow "), Some(""), Some(end));
    // The VMM keeps each shadow table in step with the guest table of the same level.
    let mut labelled = false;
    for g in guest_boxes.iter().filter(|b| b.level.is_some()) {
        if let Some(s) = shadow_boxes.iter().find(|s| s.level == g.level) {
            let x = column_x(s.column) + BOX_W / 2;
            let gx = column_x(g.column) + BOX_W / 2;
            c.arrow(gx, guest_bottom + 3, x, y - 4, PROTECT, true);
            if !labelled {
                c.text(x + 8, guest_bottom + 34, Font::Small, PROTECT, "start", "kept in sync by the VMM");
                labelled = true;
            }
        }
    }
    draw_chain(&mut c, y, &shadow_boxes, SHADOW.stroke);
    y += BOX_H + 22;
    c.text(
        MARGIN,
        y,
        Font::Bold,
        SHADOW.ink,
        "start",
        "Shadow page tables (GVA → HPA), built by the VMM: CR3 points here and the processor walks them",
    );
    let width = chain_width(&shadow_boxes)
        .max(chain_width(&guest_boxes))
        .max(text_width(&guest_note, Font::Sans) + 2 * MARGIN);
    y += 30;
    c.text(MARGIN, y, Font::Bold, "#222", "start", &outcome_line(e));
    c.finish(width, y + 20, &title)
}

// ---------------------------------------------------------------------------------------------
// The 2D walk

const CELL_W: i32 = 168;
const CELL_H: i32 = 66;
const CELL_GAP_X: i32 = 30;
const CELL_GAP_Y: i32 = 26;
const HEADER_W: i32 = 200;

/// One reference placed in the grid.
struct Cell<'a> {
    order: usize,
    column: usize,
    r: &'a WalkRef,
}

/// One row of the grid: a guest-physical address, its nested walk and (but for the last row)
/// the guest entry read there.
struct GridRow<'a> {
    guest: Option<&'a WalkRef>,
    cells: Vec<Cell<'a>>,
}

/// Groups a nested walk's references into rows: every guest reference closes a row.
fn grid_rows(refs: &[WalkRef], nested_levels: u8) -> Vec<GridRow<'_>> {
    let mut rows = Vec::new();
    let mut current = GridRow { guest: None, cells: Vec::new() };
    for (i, r) in refs.iter().enumerate() {
        if r.table == "guest" {
            let column = usize::from(nested_levels);
            current.cells.push(Cell { order: i + 1, column, r });
            current.guest = Some(r);
            rows.push(std::mem::replace(&mut current, GridRow { guest: None, cells: Vec::new() }));
        } else {
            let column = usize::from(nested_levels.saturating_sub(r.level));
            current.cells.push(Cell { order: i + 1, column, r });
        }
    }
    if !current.cells.is_empty() {
        rows.push(current);
    }
    rows
}

/// Nested paging: rows are the guest levels plus the final GPA, columns the nested levels plus
/// the guest entry read; each cell one reference in walk order.
pub(crate) fn nested_picture(e: &Explanation, prefix: &str) -> String {
    let nested_name = if e.mode == "npt" { "NPT" } else { "EPT" };
    let title = format!("Nested paging ({nested_name}): the 2D walk, {}", references(e.refs.len()));
    if e.refs.is_empty() {
        return note_picture(&title, "The walk made no memory reference (nothing to draw).", prefix);
    }
    let nested_levels =
        e.refs.iter().filter(|r| r.table != "guest").map(|r| r.level).max().unwrap_or(4).max(1);
    let mut rows = grid_rows(&e.refs, nested_levels);
    let guest_levels = rows.iter().filter(|r| r.guest.is_some()).count();
    let has_final = e.gpa.is_some() && e.fault.is_none();
    if has_final && rows.last().is_none_or(|r| r.guest.is_some()) {
        // The final GPA's nested walk was served without references (e.g. cached): an empty row.
        rows.push(GridRow { guest: None, cells: Vec::new() });
    }
    let columns = usize::from(nested_levels) + 1;
    let mut c = Canvas::new(prefix);
    c.heading(&title, &format!(
            "The {} of GVA {}: every guest-physical address the guest walk needs (rows) is translated through the {nested_name} tables (columns) first.",
            access_text(e),
            e.gva
        ));
    let grid_x = MARGIN + HEADER_W + 16;
    let cell_x = |column: usize| grid_x + coord(column) * (CELL_W + CELL_GAP_X);
    let header_y = 74;
    let grid_y = header_y + 30;
    let row_y = |row: usize| grid_y + coord(row) * (CELL_H + CELL_GAP_Y);
    // Column headers.
    for column in 0..columns {
        let label = if column + 1 == columns {
            "guest entry read".to_string()
        } else {
            let level = nested_levels.saturating_sub(u8::try_from(column).unwrap_or(u8::MAX));
            format!("{nested_name} {} (level {level})", level_name(level))
        };
        let palette = if column + 1 == columns { GUEST } else { NESTED };
        c.text(cell_x(column) + CELL_W / 2, header_y + 16, Font::Bold, palette.ink, "middle", &label);
    }
    c.text(MARGIN, header_y + 16, Font::Bold, "#222", "start", "GPA translated");
    // The walk order as a path behind the cells: along each row, then down to the next.
    let mut previous: Option<(usize, usize)> = None;
    for (row_index, row) in rows.iter().enumerate() {
        for cell in &row.cells {
            if let Some((prev_row, prev_column)) = previous {
                let y = row_y(row_index) + CELL_H / 2;
                if prev_row == row_index {
                    c.arrow(cell_x(prev_column) + CELL_W + 2, y, cell_x(cell.column) - 3, y, "#555", false);
                } else {
                    let from_x = cell_x(prev_column) + CELL_W / 2;
                    let from_y = row_y(prev_row) + CELL_H;
                    let mid_y = row_y(row_index) - CELL_GAP_Y / 2;
                    let to_x = cell_x(cell.column) + CELL_W / 2 - 30;
                    let d = format!("M{from_x} {from_y} V{mid_y} H{to_x} V{}", row_y(row_index) - 3);
                    c.path_arrow(&d, "#999");
                }
            }
            previous = Some((row_index, cell.column));
        }
    }
    // Row headers and cells.
    for (row_index, row) in rows.iter().enumerate() {
        let y = row_y(row_index);
        let translated = row.cells.iter().find(|cell| cell.r.table != "guest").and_then(|cell| cell.r.gpa);
        let translated =
            translated.or(row.guest.and_then(|g| g.gpa)).or(if row.guest.is_none() { e.gpa } else { None });
        let (heading, note) = match row.guest {
            Some(g) if row_index == 0 => {
                (format!("guest {} entry", level_name(g.level)), "from guest CR3".to_string())
            }
            Some(g) => (format!("guest {} entry", level_name(g.level)), "from the entry above".to_string()),
            None => ("the data".to_string(), "the final GPA".to_string()),
        };
        c.rect(MARGIN, y, HEADER_W, CELL_H, if row.guest.is_some() { GUEST } else { PAGE }, "");
        c.text(MARGIN + 10, y + 20, Font::Bold, "#222", "start", &heading);
        c.text(
            MARGIN + 10,
            y + 38,
            Font::Mono,
            "#222",
            "start",
            &translated.map_or_else(|| "GPA -".to_string(), |g| format!("GPA {g}")),
        );
        c.text(MARGIN + 10, y + 56, Font::Small, "#555", "start", &note);
        for column in 0..columns {
            let present = row.cells.iter().any(|cell| cell.column == column);
            let last_column = column + 1 == columns;
            // The data row's last column holds the page, drawn below.
            let data_page = last_column && row.guest.is_none();
            if !present && !data_page {
                let _ = writeln!(
                    c.body,
                    r##"<rect x="{}" y="{y}" width="{CELL_W}" height="{CELL_H}" rx="6" fill="none" stroke="#bbb" stroke-dasharray="3 3"/>"##,
                    cell_x(column)
                );
                c.text(cell_x(column) + CELL_W / 2, y + 20, Font::Small, "#999", "middle", "not walked");
            }
        }
        for cell in &row.cells {
            let x = cell_x(cell.column);
            if cell.r.table == "guest" {
                c.rect(x, y, CELL_W, CELL_H, GUEST, "");
                let gpa = cell.r.gpa.map_or_else(|| "-".to_string(), |g| g.to_string());
                c.text(x + 16, y + 20, Font::Mono, "#222", "start", &format!("GPA {gpa}"));
                c.text(x + 16, y + 38, Font::Mono, "#222", "start", &format!("HPA {}", cell.r.hpa));
                c.text(x + 16, y + 56, Font::MonoSmall, "#444", "start", &entry_text(cell.r.entry));
                c.badge(x, y, &cell.order.to_string(), GUEST.stroke);
            } else {
                c.rect(x, y, CELL_W, CELL_H, NESTED, "");
                c.text(
                    x + 16,
                    y + 20,
                    Font::Small,
                    NESTED.ink,
                    "start",
                    &format!("{nested_name} {}", level_name(cell.r.level)),
                );
                c.text(x + 16, y + 38, Font::Mono, "#222", "start", &format!("HPA {}", cell.r.hpa));
                c.text(x + 16, y + 56, Font::MonoSmall, "#444", "start", &entry_text(cell.r.entry));
                c.badge(x, y, &cell.order.to_string(), NESTED.stroke);
            }
        }
        if row.guest.is_none() && row_index + 1 == rows.len() {
            // Where the data lives: the result, not a reference.
            let x = cell_x(columns - 1);
            let palette = if e.hpa.is_some() { PAGE } else { FAULT };
            c.rect(x, y, CELL_W, CELL_H, palette, "");
            c.text(x + 12, y + 20, Font::Bold, palette.ink, "start", "data (not a table)");
            let hpa = e.hpa.map_or_else(|| "no translation".to_string(), |h| format!("HPA {h}"));
            c.text(x + 12, y + 40, Font::Mono, "#222", "start", &hpa);
            if let Some(last) = row.cells.last() {
                let cy = y + CELL_H / 2;
                c.arrow(cell_x(last.column) + CELL_W + 2, cy, x - 3, cy, "#555", false);
            }
        }
    }
    let mut y = row_y(rows.len()) + 4;
    let n = guest_levels;
    let m = usize::from(nested_levels);
    let formula = if e.refs.len() == (n + 1) * (m + 1) - 1 {
        format!(
            "{} = ({n} + 1) x ({m} + 1) - 1: {n} guest levels, each entry's GPA and the final GPA through {m} {nested_name} levels.",
            references(e.refs.len())
        )
    } else {
        format!(
            "{} ({n} guest levels over {m} {nested_name} levels; some walks ended early at a large page or were cached).",
            references(e.refs.len())
        )
    };
    c.text(MARGIN, y, Font::Sans, "#222", "start", &formula);
    y += 24;
    c.text(MARGIN, y, Font::Bold, "#222", "start", &outcome_line(e));
    let width = (cell_x(columns - 1) + CELL_W + MARGIN).max(text_width(&title, Font::Title) + 2 * MARGIN);
    c.finish(width, y + 20, &title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }
}
