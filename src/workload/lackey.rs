//! Valgrind lackey traces (`valgrind --tool=lackey --trace-mem=yes`).
//!
//! Lines look like `I  04016b90,3` (instruction fetch), ` L 1ffefffd40,8` (load),
//! ` S 1ffefffd38,8` (store) and ` M 0421fc58,4` (modify: one write access). Every other line
//! (valgrind's `==pid==` banner, the program's own output) is ignored. The whole trace is one
//! process whose every touched page is an anonymous read-write-execute mapping. Files are
//! opened (and decompressed) by `workload::open::open_trace`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::addr::Gva;
use crate::guest::Pid;
use crate::paging::AccessKind;
use crate::workload::chunks::Chunks;
use crate::workload::{Op, Workload, WorkloadError};

/// The largest access size accepted on a line, in bytes.
pub const MAX_ACCESS_BYTES: u32 = 1 << 16;

/// One parsed access of a lackey line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LackeyRecord {
    /// Fetch, read or write.
    pub kind: AccessKind,
    /// The first byte.
    pub address: u64,
    /// Bytes accessed.
    pub size: u32,
}

/// Parses one line (without its newline). `Ok(None)` for lines that are not accesses.
pub fn parse_line(line: &[u8]) -> Result<Option<LackeyRecord>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (kind, rest) = match line {
        [b'I', b' ', rest @ ..] => (AccessKind::Fetch, rest),
        [b' ', b'L', b' ', rest @ ..] => (AccessKind::Read, rest),
        [b' ', b'S' | b'M', b' ', rest @ ..] => (AccessKind::Write, rest),
        _ => return Ok(None),
    };
    let rest = trim_spaces(rest);
    let comma = memchr::memchr(b',', rest)
        .ok_or_else(|| format!("expected 'ADDRESS,SIZE' after the access letter, found '{}'", show(rest)))?;
    let address = parse_hex(&rest[..comma])
        .ok_or_else(|| format!("expected a hexadecimal address, found '{}'", show(&rest[..comma])))?;
    let size_text = trim_spaces(&rest[comma + 1..]);
    let size =
        parse_decimal(size_text).filter(|size| (1..=MAX_ACCESS_BYTES).contains(size)).ok_or_else(|| {
            format!("expected an access size from 1 to {MAX_ACCESS_BYTES} bytes, found '{}'", show(size_text))
        })?;
    Ok(Some(LackeyRecord { kind, address, size }))
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned()
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut value = 0u64;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(nibble);
    }
    Some(value)
}

fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let mut value = 0u32;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(digit - b'0');
    }
    Some(value)
}

/// A lackey trace read as a stream, in fixed-size chunks (memory use does not grow with the
/// trace).
pub struct LackeyTrace<R> {
    path: PathBuf,
    chunks: Chunks<R>,
    pid: Pid,
    line: u64,
    spawned: bool,
    accesses: u64,
}

const CHUNK: usize = 1 << 20;

impl<R: Read> LackeyTrace<R> {
    /// Reads a trace from any reader; `path` names it in errors.
    pub fn from_reader(path: &Path, reader: R, pid: Pid) -> Self {
        Self {
            path: path.to_path_buf(),
            chunks: Chunks::new(reader, CHUNK),
            pid,
            line: 0,
            spawned: false,
            accesses: 0,
        }
    }
}

impl<R: Read + Send> Workload for LackeyTrace<R> {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        if !self.spawned {
            self.spawned = true;
            return Ok(Some(Op::Spawn { pid: self.pid, anywhere: true }));
        }
        let path = &self.path;
        while let Some(line) =
            self.chunks.next_line().map_err(|source| WorkloadError::Io { path: path.clone(), source })?
        {
            self.line += 1;
            let number = self.line;
            let parsed = parse_line(line).map_err(|message| WorkloadError::Parse {
                path: path.clone(),
                line: number,
                message,
            })?;
            if let Some(record) = parsed {
                let va = Gva::try_new(record.address).map_err(|e| WorkloadError::Parse {
                    path: path.clone(),
                    line: number,
                    message: e.to_string(),
                })?;
                self.accesses += 1;
                return Ok(Some(Op::Access { pid: self.pid, va, kind: record.kind, size: record.size }));
            }
        }
        if self.accesses == 0 {
            return Err(WorkloadError::Empty { path: self.path.clone() });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_line_kind() {
        let rec = |kind, address, size| Ok(Some(LackeyRecord { kind, address, size }));
        assert_eq!(parse_line(b"I  04016b90,3"), rec(AccessKind::Fetch, 0x0401_6b90, 3));
        assert_eq!(parse_line(b" L 1ffefffd40,8"), rec(AccessKind::Read, 0x1f_feff_fd40, 8));
        assert_eq!(parse_line(b" S 1ffefffd38,8\r"), rec(AccessKind::Write, 0x1f_feff_fd38, 8));
        assert_eq!(parse_line(b" M 0421fc58,4"), rec(AccessKind::Write, 0x0421_fc58, 4));
        assert_eq!(parse_line(b"==1234== Lackey, an example Valgrind tool"), Ok(None));
        assert_eq!(parse_line(b""), Ok(None));
        assert!(parse_line(b" L zz,8").is_err());
        assert!(parse_line(b" L 1000").is_err());
        assert!(parse_line(b" L 1000,0").is_err());
        assert!(parse_line(b" L 11112222333344445,8").is_err());
    }

    #[test]
    fn streams_ops_and_reports_bad_lines_with_their_number() {
        let text = b"==1== banner\nI  1000,4\n L 2ffe,4\n";
        let mut trace = LackeyTrace::from_reader(Path::new("t.txt"), &text[..], 7);
        assert_eq!(trace.next_op().ok().flatten(), Some(Op::Spawn { pid: 7, anywhere: true }));
        let mut kinds = Vec::new();
        while let Some(op) = trace.next_op().expect("valid") {
            if let Op::Access { kind, .. } = op {
                kinds.push(kind);
            }
        }
        assert_eq!(kinds, vec![AccessKind::Fetch, AccessKind::Read]);

        let bad = b"I  1000,4\n S 12x4,8\n";
        let mut trace = LackeyTrace::from_reader(Path::new("bad.txt"), &bad[..], 1);
        let error = loop {
            match trace.next_op() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the bad line was accepted"),
                Err(e) => break e,
            }
        };
        assert!(error.to_string().starts_with("bad.txt:2: expected a hexadecimal address"), "{error}");

        let mut empty = LackeyTrace::from_reader(Path::new("e.txt"), &b"hello\n"[..], 1);
        assert!(empty.next_op().is_ok());
        assert!(matches!(empty.next_op(), Err(WorkloadError::Empty { .. })));
    }
}
