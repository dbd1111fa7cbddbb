//! Host physical memory as 4 KiB frames.
//!
//! Only frames that something has written entries into (page tables, in practice) hold bytes;
//! every other frame reads as zeros and costs nothing, so memory grows with the frames written,
//! not with the address range. Entries are 8 bytes, naturally aligned, little-endian, as the
//! processor reads them.
//!
//! A `PhysMemory` is a handle: [`PhysMemory::share`] gives another handle on the same memory,
//! which is how two VMs (two VMM processes) run on one host.

use std::cell::RefCell;
use std::rc::Rc;

use crate::addr::{Hfn, Hpa, PAGE_BYTES};
use crate::memory::sparse_words::SparseWords;

/// Sparse host physical memory.
#[derive(Default)]
pub struct PhysMemory {
    /// One block per frame (a frame is 512 entries).
    frames: Rc<RefCell<SparseWords>>,
}

impl PhysMemory {
    /// Empty memory: every frame reads as zeros.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another handle on the same memory.
    pub fn share(&self) -> PhysMemory {
        PhysMemory { frames: Rc::clone(&self.frames) }
    }

    /// The 8-byte word containing `addr` (the low three address bits are ignored, as an
    /// aligned entry read would).
    // Always inlined: every walk reads through it, and whether the compiler inlined it on its
    // own flipped with unrelated changes elsewhere (2 % of a shadow run's instructions).
    #[inline(always)]
    pub fn read_u64(&self, addr: Hpa) -> u64 {
        self.frames.borrow().read(word_number(addr))
    }

    /// Stores an 8-byte word, giving the frame storage if it had none.
    #[inline]
    pub fn write_u64(&mut self, addr: Hpa, value: u64) {
        self.frames.borrow_mut().write(word_number(addr), value);
    }

    /// Reads the words `touches` names, for their effect on the host's caches alone: the
    /// reads do not depend on each other, so their cache misses overlap (see
    /// `Mode::prefetch`). Changes nothing.
    pub fn touch(&self, touches: &Touches) {
        let frames = self.frames.borrow();
        let mut seen = 0;
        for &addr in &touches.addrs[..touches.len] {
            seen ^= frames.read(word_number(addr));
        }
        std::hint::black_box(seen);
    }

    /// Zeroes a frame and drops its storage.
    pub fn zero_frame(&mut self, frame: Hfn) {
        self.frames.borrow_mut().remove_block(frame.number());
    }

    /// How many frames hold bytes.
    pub fn frames_with_storage(&self) -> usize {
        self.frames.borrow().blocks()
    }

    /// Bytes of frame storage held.
    pub fn stored_bytes(&self) -> u64 {
        u64::try_from(self.frames_with_storage()).unwrap_or(u64::MAX).saturating_mul(PAGE_BYTES)
    }
}

/// Addresses gathered for one [`PhysMemory::touch`]: a fixed number, so gathering them
/// allocates nothing; any beyond it are left out.
pub struct Touches {
    addrs: [Hpa; Touches::MOST],
    len: usize,
}

impl Touches {
    /// The most addresses kept.
    pub const MOST: usize = 64;

    /// None yet.
    pub fn new() -> Self {
        Self { addrs: [Hpa::new(0); Self::MOST], len: 0 }
    }

    /// Adds `addr`, if there is one and room for it.
    #[inline]
    pub fn push(&mut self, addr: Option<Hpa>) {
        if let (Some(addr), Some(slot)) = (addr, self.addrs.get_mut(self.len)) {
            *slot = addr;
            self.len += 1;
        }
    }
}

impl Default for Touches {
    fn default() -> Self {
        Self::new()
    }
}

/// The number of the 8-byte word holding `addr`: frames are blocks of 512 words.
#[inline]
fn word_number(addr: Hpa) -> u64 {
    addr.as_u64() >> 3
}

impl crate::paging::TableMemory<Hpa> for PhysMemory {
    type Error = std::convert::Infallible;

    #[inline]
    fn read_entry(&mut self, addr: Hpa, _level: crate::addr::Level) -> Result<u64, Self::Error> {
        Ok(self.read_u64(addr))
    }

    #[inline]
    fn write_entry(&mut self, addr: Hpa, _level: crate::addr::Level, value: u64) -> Result<(), Self::Error> {
        self.write_u64(addr, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_frames_use_the_map_and_count_alike() {
        let mut mem = PhysMemory::new();
        // Frame 2^28: beyond the frames found by index.
        let high = Hpa::new(1 << 40 | 0x10);
        mem.write_u64(high, 7);
        mem.write_u64(Hpa::new(0x3000), 9);
        mem.write_u64(Hpa::new(0x3008), 10);
        assert_eq!((mem.read_u64(high), mem.read_u64(Hpa::new(0x3000))), (7, 9));
        assert_eq!(mem.frames_with_storage(), 2);
        mem.zero_frame(high.frame());
        mem.zero_frame(Hfn::new(3));
        mem.zero_frame(Hfn::new(3));
        assert_eq!((mem.read_u64(high), mem.frames_with_storage()), (0, 0));
    }

    #[test]
    fn sparse_words_round_trip() {
        let mut mem = PhysMemory::new();
        assert_eq!(mem.read_u64(Hpa::new(0x7fff_f000)), 0);
        mem.write_u64(Hpa::new(0x1008), 0xdead_beef);
        assert_eq!(mem.read_u64(Hpa::new(0x1008)), 0xdead_beef);
        assert_eq!(mem.read_u64(Hpa::new(0x100c)), 0xdead_beef);
        assert_eq!(mem.read_u64(Hpa::new(0x1000)), 0);
        assert_eq!(mem.frames_with_storage(), 1);
        mem.zero_frame(Hfn::new(1));
        assert_eq!(mem.read_u64(Hpa::new(0x1008)), 0);
        assert_eq!(mem.stored_bytes(), 0);
    }
}
