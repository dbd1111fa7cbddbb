//! memvirt's compact binary trace format (documented byte by byte in docs/trace-format.md).
//!
//! A 32-byte header — magic `MVTRACE\0`, version, record size, flags, record count — then
//! fixed 16-byte little-endian records: address (8 bytes), size (4), kind (1), three reserved
//! zero bytes. Fixed records read in large chunks with no per-record allocation.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::addr::Gva;
use crate::guest::Pid;
use crate::paging::AccessKind;
use crate::workload::chunks::Chunks;
use crate::workload::lackey::MAX_ACCESS_BYTES;
use crate::workload::{Op, Workload, WorkloadError};

/// The first eight bytes of a compact trace.
pub const MAGIC: [u8; 8] = *b"MVTRACE\0";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Bytes in the header.
pub const HEADER_BYTES: usize = 32;
/// Bytes in one record.
pub const RECORD_BYTES: usize = 16;

const CHUNK_RECORDS: usize = 1 << 16;

fn kind_code(kind: AccessKind) -> u8 {
    match kind {
        AccessKind::Fetch => 0,
        AccessKind::Read => 1,
        AccessKind::Write => 2,
    }
}

/// The header for `count` records (0 when not known).
pub fn header(count: u64) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
    bytes[10..12].copy_from_slice(&16u16.to_le_bytes());
    bytes[16..24].copy_from_slice(&count.to_le_bytes());
    bytes
}

/// One record's bytes.
pub fn record(kind: AccessKind, address: u64, size: u32) -> [u8; RECORD_BYTES] {
    let mut bytes = [0u8; RECORD_BYTES];
    bytes[..8].copy_from_slice(&address.to_le_bytes());
    bytes[8..12].copy_from_slice(&size.to_le_bytes());
    bytes[12] = kind_code(kind);
    bytes
}

/// Writes a compact trace; the record count is patched into the header by [`finish`].
///
/// [`finish`]: CompactWriter::finish
pub struct CompactWriter<W: Write + Seek> {
    out: std::io::BufWriter<W>,
    count: u64,
}

impl<W: Write + Seek> CompactWriter<W> {
    /// Starts a trace on `out`.
    pub fn new(out: W) -> std::io::Result<Self> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        out.write_all(&header(0))?;
        Ok(Self { out, count: 0 })
    }

    /// Appends one access.
    pub fn write(&mut self, kind: AccessKind, address: u64, size: u32) -> std::io::Result<()> {
        self.count += 1;
        self.out.write_all(&record(kind, address, size))
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Patches the record count into the header and flushes.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush()?;
        let mut inner = self.out.into_inner().map_err(|e| e.into_error())?;
        inner.seek(SeekFrom::Start(16))?;
        inner.write_all(&self.count.to_le_bytes())?;
        inner.flush()?;
        Ok(self.count)
    }
}

/// A compact trace read as a stream of operations for process `pid`.
pub struct CompactTrace<R> {
    path: PathBuf,
    chunks: Chunks<R>,
    pid: Pid,
    header_read: bool,
    spawned: bool,
    records: u64,
}

impl<R: Read> CompactTrace<R> {
    /// Reads a compact trace from `reader`; `path` names it in errors.
    pub fn from_reader(path: &Path, reader: R, pid: Pid) -> Self {
        Self {
            path: path.to_path_buf(),
            chunks: Chunks::new(reader, CHUNK_RECORDS * RECORD_BYTES),
            pid,
            header_read: false,
            spawned: false,
            records: 0,
        }
    }

    fn bad(&self, message: String) -> WorkloadError {
        WorkloadError::Record { path: self.path.clone(), record: self.records + 1, message }
    }

    /// Makes at least `want` bytes available, unless the input ends first.
    fn fill(&mut self, want: usize) -> Result<(), WorkloadError> {
        let path = &self.path;
        self.chunks.fill(want).map_err(|source| WorkloadError::Io { path: path.clone(), source })
    }

    fn read_header(&mut self) -> Result<(), WorkloadError> {
        self.fill(HEADER_BYTES)?;
        let available = self.chunks.available();
        let header = &available[..available.len().min(HEADER_BYTES)];
        let error = |message: &str| WorkloadError::Record {
            path: self.path.clone(),
            record: 0,
            message: message.into(),
        };
        if header.len() < HEADER_BYTES || header[..8] != MAGIC {
            return Err(error("not a memvirt compact trace (bad header)"));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        let record_bytes = u16::from_le_bytes([header[10], header[11]]);
        if version != VERSION || usize::from(record_bytes) != RECORD_BYTES {
            return Err(error(&format!(
                "compact trace version {version} with {record_bytes}-byte records; this memvirt reads version {VERSION} with {RECORD_BYTES}-byte records"
            )));
        }
        self.chunks.consume(HEADER_BYTES);
        self.header_read = true;
        Ok(())
    }

    fn next_record(&mut self) -> Result<Option<(AccessKind, u64, u32)>, WorkloadError> {
        if self.chunks.available().len() < RECORD_BYTES {
            self.fill(RECORD_BYTES)?;
            let left = self.chunks.available().len();
            if left == 0 {
                return Ok(None);
            }
            if left < RECORD_BYTES {
                return Err(self.bad(format!("truncated: {left} of {RECORD_BYTES} bytes")));
            }
        }
        let bytes = &self.chunks.available()[..RECORD_BYTES];
        let mut address = [0u8; 8];
        address.copy_from_slice(&bytes[..8]);
        let address = u64::from_le_bytes(address);
        let size = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let (code, reserved) = (bytes[12], [bytes[13], bytes[14], bytes[15]]);
        let kind = match code {
            0 => AccessKind::Fetch,
            1 => AccessKind::Read,
            2 => AccessKind::Write,
            other => {
                return Err(
                    self.bad(format!("unknown access kind {other} (expected 0 fetch, 1 read, 2 write)"))
                )
            }
        };
        if reserved != [0, 0, 0] {
            return Err(self.bad("reserved bytes 13-15 are not zero".into()));
        }
        if !(1..=MAX_ACCESS_BYTES).contains(&size) {
            return Err(self.bad(format!("access size {size}; expected 1 to {MAX_ACCESS_BYTES}")));
        }
        self.chunks.consume(RECORD_BYTES);
        self.records += 1;
        Ok(Some((kind, address, size)))
    }
}

impl<R: Read + Send> Workload for CompactTrace<R> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        if !self.header_read {
            self.read_header()?;
        }
        if !self.spawned {
            self.spawned = true;
            return Ok(Some(Op::Spawn { pid: self.pid, anywhere: true }));
        }
        match self.next_record()? {
            Some((kind, address, size)) => {
                let va = Gva::try_new(address).map_err(|e| WorkloadError::Record {
                    path: self.path.clone(),
                    record: self.records,
                    message: e.to_string(),
                })?;
                Ok(Some(Op::Access { pid: self.pid, va, kind, size }))
            }
            None if self.records == 0 => Err(WorkloadError::Empty { path: self.path.clone() }),
            None => Ok(None),
        }
    }
}
