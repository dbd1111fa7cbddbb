//! A frame allocator over a range of frame numbers: bump allocation with a free list, so a
//! run's frame numbers depend only on its sequence of allocations and frees (reproducible).

use std::fmt;

use crate::addr::{Gfn, Hfn};

/// A 4 KiB frame number of some physical space.
pub trait FrameNumber: Copy + Eq + fmt::Debug {
    /// Wraps a number.
    fn from_number(number: u64) -> Self;
    /// The number.
    fn to_number(self) -> u64;
}

impl FrameNumber for Gfn {
    fn from_number(number: u64) -> Self {
        Gfn::new(number)
    }
    fn to_number(self) -> u64 {
        self.number()
    }
}

impl FrameNumber for Hfn {
    fn from_number(number: u64) -> Self {
        Hfn::new(number)
    }
    fn to_number(self) -> u64 {
        self.number()
    }
}

/// A frame of `2^SHIFT` bytes, numbered by address >> SHIFT (2 MiB frames: SHIFT = 21).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BigFrame<const SHIFT: u32>(u64);

impl<const SHIFT: u32> BigFrame<SHIFT> {
    /// The raw physical address of the frame's first byte.
    pub const fn start_raw(self) -> u64 {
        self.0 << SHIFT
    }
}

impl<const SHIFT: u32> FrameNumber for BigFrame<SHIFT> {
    fn from_number(number: u64) -> Self {
        Self(number)
    }
    fn to_number(self) -> u64 {
        self.0
    }
}

/// Every frame of the allocator's range is in use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OutOfFrames {
    /// How many frames the range holds.
    pub capacity: u64,
}

impl fmt::Display for OutOfFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "out of memory: all {} frames ({} MiB) are in use", self.capacity, self.capacity / 256)
    }
}

impl std::error::Error for OutOfFrames {}

/// Hands out frames `first .. first + capacity`.
#[derive(Clone, Debug)]
pub struct FrameAllocator<F> {
    first: u64,
    next: u64,
    end: u64,
    free: Vec<F>,
    in_use: u64,
}

impl<F: FrameNumber> FrameAllocator<F> {
    /// An allocator over `capacity` frames starting at frame `first`.
    pub fn new(first: u64, capacity: u64) -> Self {
        Self { first, next: first, end: first.saturating_add(capacity), free: Vec::new(), in_use: 0 }
    }

    /// A free frame, most recently freed first.
    pub fn allocate(&mut self) -> Result<F, OutOfFrames> {
        let frame = if let Some(frame) = self.free.pop() {
            frame
        } else if self.next < self.end {
            self.next += 1;
            F::from_number(self.next - 1)
        } else {
            return Err(OutOfFrames { capacity: self.end - self.first });
        };
        self.in_use += 1;
        Ok(frame)
    }

    /// Returns a frame to the pool. The caller guarantees it was allocated here.
    pub fn free(&mut self, frame: F) {
        debug_assert!((self.first..self.next).contains(&frame.to_number()));
        self.in_use = self.in_use.saturating_sub(1);
        self.free.push(frame);
    }

    /// Frames currently allocated.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Whether `frame` lies in this allocator's range.
    pub fn owns(&self, frame: F) -> bool {
        (self.first..self.end).contains(&frame.to_number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_in_order_reuses_freed_and_stops_at_capacity() {
        let mut frames = FrameAllocator::<Hfn>::new(10, 3);
        let a = frames.allocate().expect("room");
        let b = frames.allocate().expect("room");
        assert_eq!((a.number(), b.number()), (10, 11));
        frames.free(a);
        assert_eq!(frames.allocate().expect("reused"), a);
        assert_eq!(frames.allocate().expect("room").number(), 12);
        assert_eq!(frames.allocate(), Err(OutOfFrames { capacity: 3 }));
        assert_eq!(frames.in_use(), 3);
        assert!(frames.owns(Hfn::new(12)) && !frames.owns(Hfn::new(13)));
    }
}
