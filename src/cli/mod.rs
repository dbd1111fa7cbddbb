//! The command line's own plumbing, apart from its options: the console.

pub mod console;
