//! Stopping every mode of a comparison at the same access count when it is interrupted.
//!
//! Each mode runs on its own thread at its own speed, so when Ctrl-C comes they are at
//! different counts. Stopping each where it is would compare counters of different amounts
//! of work, and the verifier would find accesses one mode made and another did not. Instead,
//! at its first check after the stop flag, each mode reports its count and waits for the
//! others; they then all run on to the largest count reported and stop there. A mode that
//! ended (its workload finished) counts as having reported its final count; a mode that
//! failed releases the others at once.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The meeting point of the modes of one comparison.
#[derive(Debug)]
pub struct StopTogether {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    modes: usize,
    reported: usize,
    target: u64,
    /// A mode failed: nobody waits any more and every mode stops where it is.
    abandoned: bool,
}

impl StopTogether {
    /// A meeting point for `modes` modes.
    pub fn new(modes: usize) -> Self {
        Self {
            state: Mutex::new(State { modes, reported: 0, target: 0, abandoned: false }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A mode saw the stop flag after `count` accesses: waits until every mode has reported
    /// and returns the count to stop at (at least `count`, unless a mode failed: then 0, so
    /// it stops at once).
    pub fn report(&self, count: u64) -> u64 {
        let mut state = self.state();
        state.reported += 1;
        state.target = state.target.max(count);
        self.changed.notify_all();
        while state.reported < state.modes && !state.abandoned {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.abandoned {
            0
        } else {
            state.target
        }
    }

    /// A mode's workload ended after `count` accesses without it having reported: the
    /// others, if stopped, run on to at least this count too.
    pub fn ended(&self, count: u64) {
        let mut state = self.state();
        state.reported += 1;
        state.target = state.target.max(count);
        self.changed.notify_all();
    }

    /// A mode failed: the others stop without waiting for it.
    pub fn abandon(&self) {
        self.state().abandoned = true;
        self.changed.notify_all();
    }
}

/// One mode's part in a [`StopTogether`]: reports once, and abandons the group if dropped
/// before its run ended or reported (an error left the run early).
pub struct Member<'a> {
    group: Option<&'a StopTogether>,
    target: Option<u64>,
    done: bool,
}

impl<'a> Member<'a> {
    /// A member of `group`, or of nothing (a run of its own, which stops where it is).
    pub fn new(group: Option<&'a StopTogether>) -> Self {
        Self { group, target: None, done: false }
    }

    /// Called at a check after the stop flag was set with `count` accesses done: whether
    /// to stop now.
    pub fn stop_now(&mut self, count: u64) -> bool {
        let Some(group) = self.group else { return true };
        let target = *self.target.get_or_insert_with(|| group.report(count));
        self.done = true;
        count >= target
    }

    /// The run ended normally after `count` accesses.
    pub fn ended(&mut self, count: u64) {
        if let (Some(group), false) = (self.group, self.done) {
            group.ended(count);
        }
        self.done = true;
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        if let (Some(group), false) = (self.group, self.done) {
            group.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_stop_at_the_largest_count_reported() {
        let group = &StopTogether::new(3);
        let targets: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                [10, 30, 20].into_iter().map(|count| scope.spawn(move || group.report(count))).collect();
            handles.into_iter().map(|h| h.join().expect("joins")).collect()
        });
        assert_eq!(targets, vec![30, 30, 30]);
    }

    #[test]
    fn an_ended_mode_counts_and_a_failed_one_releases() {
        let group = StopTogether::new(2);
        group.ended(50);
        assert_eq!(group.report(10), 50);
        let group = StopTogether::new(2);
        drop(Member { group: Some(&group), target: None, done: false });
        assert_eq!(group.report(10), 0);
    }
}
