//! Presenting runs: readable text, JSON, and an HTML page with SVG pictures.

pub mod html;
pub mod svg;
pub mod table;
pub mod text;

pub use html::comparison_html;
pub use svg::explanation_svg;
pub use table::{comparison_cells, comparison_csv, comparison_table};
pub use text::{explanation_table, run_table};
