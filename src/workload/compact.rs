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
use crate::workload::feed::{one_op, BATCH_OPS};
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

/// Records read at once: 1 MiB, as large as the buffer of the file underneath, which then
/// reads straight into ours instead of copying twice.
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

    /// Patches the record count into the header and flushes; returns the count and the
    /// output. On an output that cannot seek (a pipe, a terminal) the count stays 0, "not
    /// known", as for any stream.
    pub fn finish(mut self) -> std::io::Result<(u64, W)> {
        self.out.flush()?;
        let mut inner = self.out.into_inner().map_err(|e| e.into_error())?;
        match inner.seek(SeekFrom::Start(16)) {
            Ok(_) => inner.write_all(&self.count.to_le_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotSeekable => {}
            Err(e) => return Err(e),
        }
        inner.flush()?;
        Ok((self.count, inner))
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
    /// The record count the header gives; 0 when not known (a stream).
    promised: u64,
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
            promised: 0,
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
        if header[12..16] != [0; 4] {
            return Err(error("unknown flags (bytes 12-15 must be zero)"));
        }
        if header[24..32] != [0; 8] {
            return Err(error("reserved bytes 24-31 are not zero"));
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&header[16..24]);
        self.promised = u64::from_le_bytes(count);
        self.chunks.consume(HEADER_BYTES);
        self.header_read = true;
        Ok(())
    }

    /// Makes at least one record's bytes available; `false` at the end of the input.
    fn ensure_record(&mut self) -> Result<bool, WorkloadError> {
        if self.chunks.available().len() >= RECORD_BYTES {
            return Ok(true);
        }
        self.fill(RECORD_BYTES)?;
        match self.chunks.available().len() {
            0 => Ok(false),
            left if left < RECORD_BYTES => {
                Err(self.bad(format!("truncated: {left} of {RECORD_BYTES} bytes")))
            }
            _ => Ok(true),
        }
    }

    /// The end of the trace: an error if it held no record, or fewer than its header gives (a
    /// file cut short on a record boundary).
    fn end(&self) -> Result<(), WorkloadError> {
        if self.records == 0 {
            Err(WorkloadError::Empty { path: self.path.clone() })
        } else if self.promised != 0 && self.records != self.promised {
            Err(self.bad(format!(
                "the file ends after {} records, but its header gives {}: it was cut short",
                self.records, self.promised
            )))
        } else {
            Ok(())
        }
    }

    /// Decodes the whole records available, at most `room` of them, into `out`; stops at the
    /// first malformed one with its error.
    fn decode_available(&mut self, out: &mut Vec<Op>, room: usize) -> Result<(), WorkloadError> {
        let pid = self.pid;
        let available = self.chunks.available();
        let whole = (available.len() / RECORD_BYTES).min(room);
        let records = &available[..whole * RECORD_BYTES];
        // One pass: decode records while they are well formed (room is reserved up front).
        out.reserve(whole);
        let before = out.len();
        out.extend(records.chunks_exact(RECORD_BYTES).map_while(|bytes| {
            // Always a whole record (the conversion costs nothing once it is known).
            let bytes: &[u8; RECORD_BYTES] = bytes.try_into().ok()?;
            let fields @ (address, size, code) = fields(bytes);
            let kind = *KINDS.get(code)?;
            is_valid(fields).then(|| Op::Access { pid, va: Gva::new_truncate(address), kind, size })
        }));
        let valid = out.len() - before;
        let failure = (valid < whole).then(|| {
            let bytes = &records[valid * RECORD_BYTES..(valid + 1) * RECORD_BYTES];
            // A whole record by the slice's bounds: the fallback is never taken.
            let (address, size, _) = fields(bytes.try_into().unwrap_or(&[0; RECORD_BYTES]));
            explain_bad(bytes, address, size)
        });
        self.chunks.consume(valid * RECORD_BYTES);
        self.records += valid as u64;
        match failure {
            Some(message) => Err(self.bad(message)),
            None => Ok(()),
        }
    }
}

/// The access kinds by their record code.
const KINDS: [AccessKind; 3] = [AccessKind::Fetch, AccessKind::Read, AccessKind::Write];

/// A record's address, size and kind code (with the reserved bytes above it, so any of them
/// set makes the code invalid).
#[inline]
fn fields(bytes: &[u8; RECORD_BYTES]) -> (u64, u32, usize) {
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    // The second word holds size (bits 31:0), kind (39:32) and the reserved bytes (63:40).
    let (address, rest) = (word(0), word(8));
    #[allow(clippy::cast_possible_truncation)]
    (address, rest as u32, (rest >> 32) as usize)
}

/// Whether a record is well formed, one test per field: a known kind with zero reserved
/// bytes, a size in range, a canonical address.
#[inline]
fn is_valid((address, size, code): (u64, u32, usize)) -> bool {
    code < KINDS.len() && size.wrapping_sub(1) < MAX_ACCESS_BYTES && Gva::try_new(address).is_ok()
}

/// What is wrong with a record [`is_valid`] refused.
#[cold]
fn explain_bad(bytes: &[u8], address: u64, size: u32) -> String {
    if bytes[12] > 2 {
        format!("unknown access kind {} (expected 0 fetch, 1 read, 2 write)", bytes[12])
    } else if bytes[13..16] != [0, 0, 0] {
        "reserved bytes 13-15 are not zero".into()
    } else if !(1..=MAX_ACCESS_BYTES).contains(&size) {
        format!("access size {size}; expected 1 to {MAX_ACCESS_BYTES}")
    } else {
        crate::addr::NonCanonical(address).to_string()
    }
}

impl<R: Read + Send> Workload for CompactTrace<R> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        one_op(|out| self.fill_batch(out, 1))
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        self.fill_batch(out, BATCH_OPS)
    }
}

impl<R: Read> CompactTrace<R> {
    /// Replaces `out` with up to `most` operations: the process's creation first, then one
    /// access per record.
    fn fill_batch(&mut self, out: &mut Vec<Op>, most: usize) -> Result<(), WorkloadError> {
        out.clear();
        if !self.header_read {
            self.read_header()?;
        }
        if !self.spawned {
            self.spawned = true;
            out.push(Op::Spawn { pid: self.pid, anywhere: true });
        }
        while out.len() < most {
            if !self.ensure_record()? {
                return self.end();
            }
            self.decode_available(out, most - out.len())?;
            if self.promised != 0 && self.records > self.promised {
                return Err(WorkloadError::Record {
                    path: self.path.clone(),
                    record: self.promised + 1,
                    message: format!("more records than the {} its header gives", self.promised),
                });
            }
        }
        Ok(())
    }
}
