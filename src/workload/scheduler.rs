//! Running several workloads as concurrent processes: round-robin slices of a quantum of
//! accesses each, the way a scheduler time-slices processes.

use crate::guest::Pid;
use crate::workload::feed::Feed;
use crate::workload::{Op, Workload, WorkloadError};

/// Round-robin interleaving of workloads, switching after `quantum` accesses (other
/// operations — fork, mmap, exit — do not use up the quantum).
pub struct Interleave {
    /// Each stream, read a batch at a time.
    streams: Vec<Feed<Box<dyn Workload>>>,
    quantum: u64,
    current: usize,
    used: u64,
}

impl Interleave {
    /// Interleaves `streams`, which must use distinct process identifiers.
    pub fn new(streams: Vec<Box<dyn Workload>>, quantum: u64) -> Self {
        let streams = streams.into_iter().map(Feed::new).collect();
        Self { streams, quantum: quantum.max(1), current: 0, used: 0 }
    }
}

impl Workload for Interleave {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        while !self.streams.is_empty() {
            if self.current >= self.streams.len() {
                self.current = 0;
            }
            let stream = &mut self.streams[self.current];
            let next = stream.pending()?.first().copied();
            match next {
                Some(op) => {
                    stream.consume(1);
                    if matches!(op, Op::Access { .. }) {
                        self.used += 1;
                        if self.used >= self.quantum {
                            self.used = 0;
                            self.current += 1;
                        }
                    }
                    return Ok(Some(op));
                }
                None => {
                    self.streams.remove(self.current);
                    self.used = 0;
                }
            }
        }
        Ok(None)
    }
}

/// A workload with every process identifier moved up by `offset`, so it can run beside
/// another; optionally without its `StartMeasuring` mark.
pub struct Renumber {
    inner: Box<dyn Workload>,
    offset: Pid,
    drop_measure: bool,
}

impl Renumber {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Workload>, offset: Pid, drop_measure: bool) -> Self {
        Self { inner, offset, drop_measure }
    }

    /// `op` with its process identifiers moved; `None` for a dropped measuring mark.
    fn moved(&self, op: Op) -> Option<Op> {
        let o = self.offset;
        Some(match op {
            Op::Spawn { pid, anywhere } => Op::Spawn { pid: pid + o, anywhere },
            Op::Map { pid, region } => Op::Map { pid: pid + o, region },
            Op::Munmap { pid, start, len } => Op::Munmap { pid: pid + o, start, len },
            Op::Mprotect { pid, start, len, prot } => Op::Mprotect { pid: pid + o, start, len, prot },
            Op::Fork { parent, child } => Op::Fork { parent: parent + o, child: child + o },
            Op::Exec { pid } => Op::Exec { pid: pid + o },
            Op::Exit { pid } => Op::Exit { pid: pid + o },
            Op::Access { pid, va, kind, size } => Op::Access { pid: pid + o, va, kind, size },
            Op::KernelAccess { pid, va, kind, size } => Op::KernelAccess { pid: pid + o, va, kind, size },
            Op::Poke { pid, va, level, value } => Op::Poke { pid: pid + o, va, level, value },
            Op::SetRoot { pid, root } => Op::SetRoot { pid: pid + o, root },
            Op::StartMeasuring if self.drop_measure => return None,
            Op::StartMeasuring => Op::StartMeasuring,
        })
    }
}

impl Workload for Renumber {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        loop {
            let Some(op) = self.inner.next_op()? else { return Ok(None) };
            if let Some(moved) = self.moved(op) {
                return Ok(Some(moved));
            }
        }
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        loop {
            let result = self.inner.next_batch(out);
            let read = out.len();
            out.retain_mut(|op| match self.moved(*op) {
                Some(moved) => {
                    *op = moved;
                    true
                }
                None => false,
            });
            // A batch that held only a dropped mark is not the end.
            if result.is_err() || read == 0 || !out.is_empty() {
                return result;
            }
        }
    }
}
