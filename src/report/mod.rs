//! Presenting runs: readable text and JSON.

pub mod table;
pub mod text;

pub use table::{comparison_csv, comparison_table};
pub use text::{explanation_table, run_table};
