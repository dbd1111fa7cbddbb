//! Translation lookaside buffers.
//!
//! [`TlbArray`] is one set-associative LRU array; [`Tlb`] arranges arrays into a hierarchy
//! like a modern core's (split L1 iTLB/dTLB, unified L2) or into the single exact level that
//! `--tlb-entries N --tlb-ways W` asks for.
//!
//! Invalidation contract: a TLB entry stays valid until one of [`Tlb::invlpg`],
//! [`Tlb::flush_pcid`], [`Tlb::flush_vpid`] removes it or it is evicted. Whoever changes a
//! translation that may be cached must call one of them, exactly as an OS must issue INVLPG or
//! reload CR3 after it edits a page table.

pub mod array;
pub mod hierarchy;

pub use array::{TlbArray, TlbEntry, TlbTag};
pub use hierarchy::{Tlb, TlbConfig, TlbHit, TlbLevelStats};
pub mod lru;
pub mod sets;
pub mod walk_cache;
pub use walk_cache::{
    NestedPagingStructureCache, NestedTlb, PagingStructureCache, PscSizes, WalkCacheSizes, WalkCacheStats,
};
