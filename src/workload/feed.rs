//! Reading a workload in batches: one call into the workload per batch of operations instead
//! of one per operation, which is how the run loop and the benchmark's floor consume every
//! workload.

use crate::workload::{Op, Workload, WorkloadError};

/// The most operations one batch holds: enough to make the call per batch negligible, few
/// enough (48 KiB) to stay in the first-level cache beside the simulation's own data.
pub const BATCH_OPS: usize = 1024;

/// A workload's operations, one at a time, read from it a batch at a time.
pub struct Feed<'a> {
    workload: &'a mut dyn Workload,
    batch: Vec<Op>,
    next: usize,
    /// An error the workload reported after the operations still in `batch`.
    pending: Option<WorkloadError>,
    ended: bool,
}

impl<'a> Feed<'a> {
    /// Reads `workload` in batches.
    pub fn new(workload: &'a mut dyn Workload) -> Self {
        Self { workload, batch: Vec::with_capacity(BATCH_OPS), next: 0, pending: None, ended: false }
    }

    /// The next operation, `Ok(None)` at the end. An error comes after every operation that
    /// preceded it in the workload.
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Op>, WorkloadError> {
        if let Some(op) = self.batch.get(self.next) {
            self.next += 1;
            return Ok(Some(*op));
        }
        self.refill()
    }

    /// Puts back the operation [`Feed::next`] just returned, to be returned again.
    pub fn unread(&mut self) {
        self.next = self.next.saturating_sub(1);
    }

    #[cold]
    fn refill(&mut self) -> Result<Option<Op>, WorkloadError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        if self.ended {
            return Ok(None);
        }
        self.next = 0;
        if let Err(error) = self.workload.next_batch(&mut self.batch) {
            self.pending = Some(error);
        }
        match self.batch.first() {
            Some(op) => {
                self.next = 1;
                Ok(Some(*op))
            }
            None => match self.pending.take() {
                Some(error) => Err(error),
                None => {
                    self.ended = true;
                    Ok(None)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `ops` accesses, then an error if `fail`.
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

    fn drain(feed: &mut Feed<'_>) -> (u32, Option<String>) {
        let mut count = 0;
        loop {
            match feed.next() {
                Ok(Some(_)) => count += 1,
                Ok(None) => return (count, None),
                Err(e) => return (count, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn every_operation_in_order_across_batches() {
        let total = u32::try_from(BATCH_OPS * 2 + 3).expect("small");
        let mut workload = Counted { left: total, fail: false };
        let mut feed = Feed::new(&mut workload);
        let mut expected = total;
        while let Some(op) = feed.next().expect("no error") {
            expected -= 1;
            assert_eq!(op, Op::Exit { pid: expected });
        }
        assert_eq!(expected, 0);
        assert!(feed.next().expect("still ended").is_none());
    }

    #[test]
    fn an_error_comes_after_the_operations_before_it() {
        let mut workload = Counted { left: 5, fail: true };
        let mut feed = Feed::new(&mut workload);
        assert_eq!(drain(&mut feed), (5, Some("bad".into())));
    }
}
