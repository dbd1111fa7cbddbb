//! Host physical memory and the allocators that hand out its frames.

pub mod allocator;
pub mod phys;
pub mod sparse_words;

pub use allocator::{BigFrame, FrameAllocator, FrameNumber, OutOfFrames};
pub use phys::{PhysMemory, Touches};
pub mod slots;
pub use slots::{MemorySlot, MemorySlots};
