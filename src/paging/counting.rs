//! A [`TableMemory`] wrapper that counts references, so walks are measured without the walker
//! knowing.

use crate::addr::{Level, PhysAddr};
use crate::paging::walker::TableMemory;

/// Counts the reads (memory references) and A/D write-backs made through it.
pub struct Counted<'a, M> {
    inner: &'a mut M,
    /// Entries read.
    pub reads: u64,
    /// Entries written back.
    pub writes: u64,
}

impl<'a, M> Counted<'a, M> {
    /// Wraps `inner` with zeroed counters.
    pub fn new(inner: &'a mut M) -> Self {
        Self { inner, reads: 0, writes: 0 }
    }
}

impl<P: PhysAddr, M: TableMemory<P>> TableMemory<P> for Counted<'_, M> {
    type Error = M::Error;

    #[inline]
    fn read_entry(&mut self, addr: P, level: Level) -> Result<u64, Self::Error> {
        self.reads += 1;
        self.inner.read_entry(addr, level)
    }

    #[inline]
    fn write_entry(&mut self, addr: P, level: Level, value: u64) -> Result<(), Self::Error> {
        self.writes += 1;
        self.inner.write_entry(addr, level, value)
    }

    fn table_host(&self, table: P) -> Option<u64> {
        self.inner.table_host(table)
    }

    fn enter_table(&mut self, table: P, host: u64) {
        self.inner.enter_table(table, host);
    }
}
