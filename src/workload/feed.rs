//! Reading a workload in batches: one call into the workload per batch of operations instead
//! of one per operation, which is how the run loop and the benchmark's floor consume every
//! workload.

use crate::workload::{Op, Workload, WorkloadError};

/// The most operations one batch holds: enough to make the call per batch negligible, few
/// enough (32 KiB) to stay in the first-level cache beside the simulation's own data.
pub const BATCH_OPS: usize = 1024;

/// One operation from a reader that decodes batches: `fill` asked for a batch of at most one
/// (how the trace readers answer [`Workload::next_op`], which runs do not use).
pub fn one_op(
    fill: impl FnOnce(&mut Vec<Op>) -> Result<(), WorkloadError>,
) -> Result<Option<Op>, WorkloadError> {
    let mut one = Vec::with_capacity(1);
    fill(&mut one)?;
    Ok(one.pop())
}

/// A workload's operations, read from it a batch at a time. `W` is the workload itself, a
/// box of one, or a `&mut` borrow of one.
pub struct Feed<W> {
    workload: W,
    batch: Vec<Op>,
    next: usize,
    /// An error the workload reported after the operations still in `batch`.
    pending: Option<WorkloadError>,
    ended: bool,
}

impl<W: Workload> Feed<W> {
    /// Reads `workload` in batches.
    pub fn new(workload: W) -> Self {
        Self { workload, batch: Vec::with_capacity(BATCH_OPS), next: 0, pending: None, ended: false }
    }

    /// The operations read and not yet consumed, reading a new batch when none are left;
    /// empty at the end. An error comes after every operation that preceded it.
    #[inline]
    pub fn pending(&mut self) -> Result<&[Op], WorkloadError> {
        if self.next == self.batch.len() {
            self.refill()?;
        }
        Ok(&self.batch[self.next..])
    }

    /// Marks the first `count` pending operations as done.
    #[inline]
    pub fn consume(&mut self, count: usize) {
        self.next = (self.next + count).min(self.batch.len());
    }

    /// Hands every remaining operation to `each`, a batch at a time, to the end or the first
    /// error (of the workload or of `each`).
    pub fn for_each_batch<E: From<WorkloadError>>(
        &mut self,
        mut each: impl FnMut(&[Op]) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let ops = self.pending()?;
            if ops.is_empty() {
                return Ok(());
            }
            let count = ops.len();
            each(ops)?;
            self.consume(count);
        }
    }

    #[cold]
    fn refill(&mut self) -> Result<(), WorkloadError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        if self.ended {
            return Ok(());
        }
        self.next = 0;
        if let Err(error) = self.workload.next_batch(&mut self.batch) {
            if self.batch.is_empty() {
                return Err(error);
            }
            self.pending = Some(error);
        }
        self.ended = self.batch.is_empty();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `left` operations, then an error if `fail`.
    struct Counted {
        left: u32,
        fail: bool,
    }

    impl Workload for Counted {
        fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
            if self.left == 0 {
                return if std::mem::take(&mut self.fail) {
                    Err(WorkloadError::Other("bad".into()))
                } else {
                    Ok(None)
                };
            }
            self.left -= 1;
            Ok(Some(Op::Exit { pid: self.left }))
        }
    }

    /// Every operation, one at a time, and the error that ended them if any.
    fn drain(feed: &mut Feed<&mut Counted>) -> (Vec<Op>, Option<String>) {
        let mut ops = Vec::new();
        loop {
            match feed.pending() {
                Ok([]) => return (ops, None),
                Ok([op, ..]) => ops.push(*op),
                Err(e) => return (ops, Some(e.to_string())),
            }
            feed.consume(1);
        }
    }

    #[test]
    fn every_operation_in_order_across_batches() {
        let total = u32::try_from(BATCH_OPS * 2 + 3).expect("small");
        let mut workload = Counted { left: total, fail: false };
        let mut feed = Feed::new(&mut workload);
        let (ops, error) = drain(&mut feed);
        let expected: Vec<Op> = (0..total).rev().map(|pid| Op::Exit { pid }).collect();
        assert_eq!((ops, error), (expected, None));
        assert!(feed.pending().expect("still ended").is_empty());
    }

    #[test]
    fn an_error_comes_after_the_operations_before_it() {
        let mut workload = Counted { left: 5, fail: true };
        let mut feed = Feed::new(&mut workload);
        let (ops, error) = drain(&mut feed);
        assert_eq!((ops.len(), error), (5, Some("bad".into())));
    }
}
