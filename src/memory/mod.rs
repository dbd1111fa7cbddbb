//! Host physical memory and the allocators that hand out its frames.

pub mod allocator;
pub mod phys;

pub use allocator::{FrameAllocator, FrameNumber, OutOfFrames};
pub use phys::PhysMemory;
