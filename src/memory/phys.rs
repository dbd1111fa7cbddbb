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

use rustc_hash::FxHashMap;

use crate::addr::{Hfn, Hpa, PAGE_BYTES};

/// The entries of one frame.
type FrameWords = Box<[u64; 512]>;

/// Sparse host physical memory.
#[derive(Default)]
pub struct PhysMemory {
    frames: Rc<RefCell<FxHashMap<Hfn, FrameWords>>>,
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
    #[inline]
    pub fn read_u64(&self, addr: Hpa) -> u64 {
        match self.frames.borrow().get(&addr.frame()) {
            Some(words) => words[word_index(addr)],
            None => 0,
        }
    }

    /// Stores an 8-byte word, giving the frame storage if it had none.
    #[inline]
    pub fn write_u64(&mut self, addr: Hpa, value: u64) {
        let mut frames = self.frames.borrow_mut();
        let words = frames.entry(addr.frame()).or_insert_with(|| Box::new([0; 512]));
        words[word_index(addr)] = value;
    }

    /// Zeroes a frame and drops its storage.
    pub fn zero_frame(&mut self, frame: Hfn) {
        self.frames.borrow_mut().remove(&frame);
    }

    /// How many frames hold bytes.
    pub fn frames_with_storage(&self) -> usize {
        self.frames.borrow().len()
    }

    /// Bytes of frame storage held.
    pub fn stored_bytes(&self) -> u64 {
        u64::try_from(self.frames_with_storage()).unwrap_or(u64::MAX).saturating_mul(PAGE_BYTES)
    }
}

#[inline]
fn word_index(addr: Hpa) -> usize {
    // 0..512 by the mask.
    ((addr.as_u64() & (PAGE_BYTES - 1)) >> 3) as usize
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
