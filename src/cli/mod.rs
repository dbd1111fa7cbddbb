//! The command line's own plumbing, apart from its options: the console and signals.

pub mod console;
pub mod signals;
