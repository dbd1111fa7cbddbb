//! Presenting runs: readable text and JSON.

pub mod text;

pub use text::run_table;
