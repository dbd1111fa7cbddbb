//! A [`TableMemory`] wrapper that records every reference, for explaining one walk.

use crate::addr::{Level, PhysAddr};
use crate::paging::walker::TableMemory;

/// One entry read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reference<P> {
    /// Where the entry is.
    pub addr: P,
    /// Its table's level.
    pub level: Level,
    /// Its value.
    pub value: u64,
}

/// Records the reads made through it, in order.
pub struct Traced<'a, M, P> {
    inner: &'a mut M,
    /// The reads so far.
    pub reads: Vec<Reference<P>>,
}

impl<'a, M, P> Traced<'a, M, P> {
    /// Wraps `inner` with an empty record.
    pub fn new(inner: &'a mut M) -> Self {
        Self { inner, reads: Vec::new() }
    }
}

impl<P: PhysAddr, M: TableMemory<P>> TableMemory<P> for Traced<'_, M, P> {
    type Error = M::Error;

    fn read_entry(&mut self, addr: P, level: Level) -> Result<u64, Self::Error> {
        let value = self.inner.read_entry(addr, level)?;
        self.reads.push(Reference { addr, level, value });
        Ok(value)
    }

    fn write_entry(&mut self, addr: P, level: Level, value: u64) -> Result<(), Self::Error> {
        self.inner.write_entry(addr, level, value)
    }

    fn table_host(&self, table: P) -> Option<u64> {
        self.inner.table_host(table)
    }

    fn enter_table(&mut self, table: P, host: u64) {
        self.inner.enter_table(table, host);
    }
}
