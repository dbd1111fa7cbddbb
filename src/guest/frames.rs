//! The guest kernel's physical memory: 4 KiB frames for page tables and small pages, 2 MiB
//! frames for large pages, each from its own half of guest RAM. When the 4 KiB half runs out,
//! 2 MiB frames are carved into 4 KiB pieces, as Linux's buddy allocator splits a higher-order
//! block: a guest that uses only 4 KiB pages can use all of its RAM, not half.
//!
//! A 2 MiB frame in pieces (carved here, or a large page the kernel split into 4 KiB
//! mappings) goes back to the 2 MiB pool when its last piece is freed.

use rustc_hash::FxHashMap;

use crate::addr::{Gfn, PAGE_BYTES};
use crate::memory::{BigFrame, FrameAllocator, FrameNumber, OutOfFrames};

/// A 2 MiB guest frame.
pub type LargeFrame = BigFrame<21>;

/// 4 KiB pieces in a 2 MiB frame.
const PIECES: u32 = 512;

/// The guest's frame pools; see the module documentation.
#[derive(Clone, Debug)]
pub struct GuestFrames {
    small: FrameAllocator<Gfn>,
    large: FrameAllocator<LargeFrame>,
    /// The 2 MiB frame being carved into 4 KiB frames, and its next piece.
    carving: Option<(u64, u32)>,
    /// Pieces not yet freed, per 2 MiB frame number in pieces.
    pieces: FxHashMap<u64, u32>,
    /// Every frame of RAM, for the out-of-memory message.
    total: u64,
}

impl GuestFrames {
    /// The pools for `ram_bytes` of guest RAM: half 4 KiB frames (frame 0 left unused, as on
    /// a PC), half 2 MiB frames.
    pub fn new(ram_bytes: u64) -> Self {
        let total = ram_bytes / PAGE_BYTES;
        let small_frames = total / 2;
        let large_first = small_frames.div_ceil(u64::from(PIECES));
        let large_count = (total / u64::from(PIECES)).saturating_sub(large_first);
        Self {
            small: FrameAllocator::new(1, small_frames.saturating_sub(1)),
            large: FrameAllocator::new(large_first, large_count),
            carving: None,
            pieces: FxHashMap::default(),
            total,
        }
    }

    fn out_of_frames(&self) -> OutOfFrames {
        OutOfFrames { capacity: self.total }
    }

    /// A 4 KiB frame: from the 4 KiB pool, or else a piece of a 2 MiB frame.
    pub fn allocate(&mut self) -> Result<Gfn, OutOfFrames> {
        if let Ok(frame) = self.small.allocate() {
            return Ok(frame);
        }
        let (large, next) = match self.carving {
            Some(carving) => carving,
            None => {
                let large = self.large.allocate().map_err(|_| self.out_of_frames())?.to_number();
                self.pieces.insert(large, PIECES);
                (large, 0)
            }
        };
        self.carving = (next + 1 < PIECES).then_some((large, next + 1));
        Ok(Gfn::new(large * u64::from(PIECES) + u64::from(next)))
    }

    /// Returns a 4 KiB frame: to its pool, or as a piece of its 2 MiB frame.
    pub fn free(&mut self, frame: Gfn) {
        if self.small.owns(frame) {
            self.small.free(frame);
        } else {
            self.free_piece(frame.number() / u64::from(PIECES));
        }
    }

    /// A 2 MiB frame.
    pub fn allocate_large(&mut self) -> Result<LargeFrame, OutOfFrames> {
        self.large.allocate().map_err(|_| self.out_of_frames())
    }

    /// Returns a whole 2 MiB frame.
    pub fn free_large(&mut self, frame: LargeFrame) {
        self.large.free(frame);
    }

    /// The 2 MiB frame `large` (its number) now serves as 512 separately freed pieces: a
    /// large page split into 4 KiB mappings.
    pub fn split(&mut self, large: u64) {
        self.pieces.insert(large, PIECES);
    }

    fn free_piece(&mut self, large: u64) {
        let left = self.pieces.entry(large).or_insert(PIECES);
        *left -= 1;
        if *left == 0 {
            self.pieces.remove(&large);
            self.large.free(LargeFrame::from_number(large));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frames_carve_large_ones_when_their_half_runs_out() {
        // 8 MiB: 1,024 small frames (frame 0 unused) and two 2 MiB frames.
        let mut frames = GuestFrames::new(8 << 20);
        let all: Vec<Gfn> = (0..1023 + 1024).map(|_| frames.allocate().expect("room")).collect();
        assert_eq!(frames.allocate(), Err(OutOfFrames { capacity: 2048 }));
        assert_eq!(frames.allocate_large(), Err(OutOfFrames { capacity: 2048 }));
        let mut numbers: Vec<u64> = all.iter().map(|f| f.number()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers, (1..2048).collect::<Vec<u64>>());
        // Every piece of the first carved frame back: the 2 MiB frame is whole again.
        for frame in all.iter().filter(|f| (1024..1536).contains(&f.number())) {
            frames.free(*frame);
        }
        assert_eq!(frames.allocate_large().map(|f| f.to_number()), Ok(2));
    }
}
