//! What drives the guest: builtin scenarios and real programs' memory traces, both as a stream
//! of [`Op`]s.

pub mod chunks;
pub mod compact;
pub mod copy_to_user;
pub mod feed;
pub mod lackey;
pub mod open;
pub mod programs;
pub mod recorder;
pub mod rng;
pub mod scenario;
pub mod scheduler;

use std::fmt;
use std::path::PathBuf;

use crate::addr::Gva;
use crate::guest::{Pid, Prot, Region};
use crate::paging::AccessKind;

/// One step of a workload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Create a process. With `anywhere`, all of its user half is anonymous RWX memory.
    Spawn {
        /// The new process.
        pid: Pid,
        /// Whether any user address is mapped on first touch.
        anywhere: bool,
    },
    /// Add a region to a process.
    Map {
        /// The process.
        pid: Pid,
        /// The region.
        region: Region,
    },
    /// `munmap(start, len)` by `pid`.
    Munmap {
        /// The process.
        pid: Pid,
        /// First byte (4 KiB-aligned).
        start: Gva,
        /// Length in bytes (a multiple of 4 KiB).
        len: u64,
    },
    /// `mprotect(start, len, prot)` by `pid`.
    Mprotect {
        /// The process.
        pid: Pid,
        /// First byte (4 KiB-aligned).
        start: Gva,
        /// Length in bytes (a multiple of 4 KiB).
        len: u64,
        /// The new rights.
        prot: Prot,
    },
    /// `fork()` by `parent`, creating `child`.
    Fork {
        /// The forking process.
        parent: Pid,
        /// The new process.
        child: Pid,
    },
    /// `exec()` by `pid`: its address space is replaced by an empty one.
    Exec {
        /// The process.
        pid: Pid,
    },
    /// `exit()` by `pid`.
    Exit {
        /// The process.
        pid: Pid,
    },
    /// Everything before this point is set-up: the counters start from zero here.
    StartMeasuring,
    /// A hostile guest kernel writes `value` into `pid`'s paging-structure entry for `va` at
    /// `level` (5 = PML5 .. 1 = PT), creating missing upper tables, then flushes the TLB as
    /// the change requires.
    Poke {
        /// The process whose tables are written.
        pid: Pid,
        /// The address whose entry is written.
        va: Gva,
        /// The level of the entry.
        level: u8,
        /// The raw entry.
        value: u64,
    },
    /// A hostile guest kernel points `pid`'s CR3 at an arbitrary guest-physical address.
    SetRoot {
        /// The process.
        pid: Pid,
        /// The new root (its low 12 bits are ignored).
        root: u64,
    },
    /// The guest kernel accesses `pid`'s user memory on its behalf, at CPL 0 with EFLAGS.AC
    /// set as `copy_to_user` / `copy_from_user` set it (so SMAP allows it): a supervisor
    /// access of `size` bytes at `va`. It counts as an access of the run.
    KernelAccess {
        /// The process whose memory is accessed.
        pid: Pid,
        /// The first byte.
        va: Gva,
        /// Read or write.
        kind: AccessKind,
        /// Bytes accessed.
        size: u32,
    },
    /// A user-mode memory access of `size` bytes at `va` by `pid`.
    Access {
        /// The process.
        pid: Pid,
        /// The first byte.
        va: Gva,
        /// Read, write or fetch.
        kind: AccessKind,
        /// Bytes accessed (an access crossing a 4 KiB boundary touches two pages).
        size: u32,
    },
}

/// A source of operations. Workloads are `Send` so modes can run on their own threads.
pub trait Workload: Send {
    /// The next operation, `Ok(None)` at the end.
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError>;

    /// Replaces the contents of `out` with the next operations, at most
    /// [`feed::BATCH_OPS`]; empty at the end. On an error, `out` holds the operations that
    /// came before it. Readers that can decode many records at once override this.
    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        out.clear();
        while out.len() < feed::BATCH_OPS {
            match self.next_op()? {
                Some(op) => out.push(op),
                None => break,
            }
        }
        Ok(())
    }
}

/// A workload borrowed is a workload (so a [`feed::Feed`] can read one it does not own).
impl<W: Workload + ?Sized> Workload for &mut W {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        (**self).next_op()
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        (**self).next_batch(out)
    }
}

/// A boxed workload is a workload.
impl<W: Workload + ?Sized> Workload for Box<W> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        (**self).next_op()
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        (**self).next_batch(out)
    }
}

/// A workload that cannot be read or built.
#[derive(Debug)]
pub enum WorkloadError {
    /// The trace file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A trace line is malformed.
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What was expected.
        message: String,
    },
    /// A record of a compact binary trace is malformed (record 0 is the header).
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based record number; 0 for the header.
        record: u64,
        /// What is wrong.
        message: String,
    },
    /// The trace holds no memory accesses.
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Any other failure to build a workload, already described.
    Other(String),
    /// An unknown scenario name.
    UnknownScenario(String),
    /// A `--param` that the scenario does not take or cannot parse.
    BadParam {
        /// The scenario.
        scenario: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Parse { path, line, message } => write!(f, "{}:{line}: {message}", path.display()),
            Self::Record { path, record: 0, message } => write!(f, "{}: header: {message}", path.display()),
            Self::Record { path, record, message } => {
                write!(f, "{}: record {record}: {message}", path.display())
            }
            Self::Empty { path } => write!(f, "{}: the trace holds no memory accesses", path.display()),
            Self::Other(message) => f.write_str(message),
            Self::UnknownScenario(name) => {
                write!(f, "unknown workload '{name}'; `memvirt workloads` lists them")
            }
            Self::BadParam { scenario, message } => write!(f, "workload {scenario}: {message}"),
        }
    }
}

impl std::error::Error for WorkloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
