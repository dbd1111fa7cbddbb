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

/// Frames below this number are found by index, the rest through a hash map. Page-table
/// frames come from the low end of every frame pool, so walks mostly index; the limit keeps
/// the index (8 bytes per frame number up to the highest one used) small.
const DENSE_FRAMES: u64 = 1 << 24;

/// The frames holding bytes.
#[derive(Default)]
struct Frames {
    /// Frames below [`DENSE_FRAMES`], by number; grown as higher ones are written.
    dense: Vec<Option<FrameWords>>,
    /// Frames from [`DENSE_FRAMES`] up.
    sparse: FxHashMap<Hfn, FrameWords>,
    /// Frames holding bytes.
    count: usize,
}

impl Frames {
    #[inline]
    fn get(&self, frame: Hfn) -> Option<&FrameWords> {
        let number = frame.number();
        if number < DENSE_FRAMES {
            usize::try_from(number).ok().and_then(|i| self.dense.get(i)).and_then(Option::as_ref)
        } else {
            self.sparse.get(&frame)
        }
    }

    fn get_or_create(&mut self, frame: Hfn) -> &mut FrameWords {
        let number = frame.number();
        let index = usize::try_from(number).ok().filter(|_| number < DENSE_FRAMES);
        match index {
            Some(i) => {
                if i >= self.dense.len() {
                    self.dense.resize_with(i + 1, || None);
                }
                let slot = &mut self.dense[i];
                if slot.is_none() {
                    self.count += 1;
                }
                slot.get_or_insert_with(|| Box::new([0; 512]))
            }
            None => {
                let count = &mut self.count;
                self.sparse.entry(frame).or_insert_with(|| {
                    *count += 1;
                    Box::new([0; 512])
                })
            }
        }
    }

    fn remove(&mut self, frame: Hfn) {
        let number = frame.number();
        let removed = if number < DENSE_FRAMES {
            usize::try_from(number).ok().and_then(|i| self.dense.get_mut(i)).and_then(Option::take).is_some()
        } else {
            self.sparse.remove(&frame).is_some()
        };
        if removed {
            self.count -= 1;
        }
    }
}

/// Sparse host physical memory.
#[derive(Default)]
pub struct PhysMemory {
    frames: Rc<RefCell<Frames>>,
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
        match self.frames.borrow().get(addr.frame()) {
            Some(words) => words[word_index(addr)],
            None => 0,
        }
    }

    /// Stores an 8-byte word, giving the frame storage if it had none.
    #[inline]
    pub fn write_u64(&mut self, addr: Hpa, value: u64) {
        self.frames.borrow_mut().get_or_create(addr.frame())[word_index(addr)] = value;
    }

    /// Reads the words `touches` names, for their effect on the host's caches alone: the
    /// reads do not depend on each other, so their cache misses overlap (see
    /// `Mode::prefetch`). Changes nothing.
    pub fn touch(&self, touches: &Touches) {
        let frames = self.frames.borrow();
        let mut seen = 0;
        for &addr in &touches.addrs[..touches.len] {
            if let Some(words) = frames.get(addr.frame()) {
                seen ^= words[word_index(addr)];
            }
        }
        std::hint::black_box(seen);
    }

    /// Zeroes a frame and drops its storage.
    pub fn zero_frame(&mut self, frame: Hfn) {
        self.frames.borrow_mut().remove(frame);
    }

    /// How many frames hold bytes.
    pub fn frames_with_storage(&self) -> usize {
        self.frames.borrow().count
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
    fn high_frames_use_the_map_and_count_alike() {
        let mut mem = PhysMemory::new();
        let high = Hpa::new(DENSE_FRAMES << 12 | 0x10);
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
