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
use crate::workload::feed::{one_op, BATCH_OPS};
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

/// Each byte's value as a hexadecimal digit, or 16 for any other byte.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [16u8; 256];
    let mut value = 0u8;
    while value < 16 {
        let digit = if value < 10 { b'0' + value } else { b'a' + value - 10 };
        table[digit as usize] = value;
        table[digit.to_ascii_uppercase() as usize] = value;
        value += 1;
    }
    table
};

/// The common case of an access line exactly as valgrind writes it (`I  ADDR,SIZE` or
/// ` K ADDR,SIZE` followed by a newline, optionally `\r\n`) at the start of `bytes`: the
/// record and the line's length with its newline. `None` for anything else, which
/// [`parse_line`] then handles.
#[inline]
pub fn parse_common_line(bytes: &[u8]) -> Option<(LackeyRecord, usize)> {
    let kind = match bytes.get(..3)? {
        [b'I', b' ', b' '] => AccessKind::Fetch,
        [b' ', b'L', b' '] => AccessKind::Read,
        [b' ', b'S' | b'M', b' '] => AccessKind::Write,
        _ => return None,
    };
    let mut at = 3;
    let mut address = 0u64;
    while let Some(&digit) = bytes.get(at) {
        let nibble = HEX_DIGITS[usize::from(digit)];
        if nibble > 15 || at - 3 == 16 {
            break;
        }
        address = address << 4 | u64::from(nibble);
        at += 1;
    }
    if at == 3 || bytes.get(at) != Some(&b',') {
        return None;
    }
    at += 1;
    let digits = at;
    let mut size = 0u32;
    while let Some(&digit) = bytes.get(at) {
        if !digit.is_ascii_digit() || at - digits == 9 {
            break;
        }
        size = size * 10 + u32::from(digit - b'0');
        at += 1;
    }
    if at == digits || !(1..=MAX_ACCESS_BYTES).contains(&size) {
        return None;
    }
    let end = match bytes.get(at..)? {
        [b'\n', ..] => at + 1,
        [b'\r', b'\n', ..] => at + 2,
        _ => return None,
    };
    Some((LackeyRecord { kind, address, size }, end))
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
        one_op(|out| self.fill_batch(out, 1))
    }

    fn next_batch(&mut self, out: &mut Vec<Op>) -> Result<(), WorkloadError> {
        self.fill_batch(out, BATCH_OPS)
    }
}

impl<R: Read> LackeyTrace<R> {
    /// Replaces `out` with up to `most` operations: the process's creation first, then one
    /// access per access line. Lines are parsed where they lie in the buffer.
    fn fill_batch(&mut self, out: &mut Vec<Op>, most: usize) -> Result<(), WorkloadError> {
        out.clear();
        if !self.spawned {
            self.spawned = true;
            out.push(Op::Spawn { pid: self.pid, anywhere: true });
        }
        while out.len() < most {
            // Every whole line buffered, up to the batch's room.
            let available = self.chunks.available();
            let mut used = 0;
            let mut result = Ok(());
            while out.len() < most {
                let rest = &available[used..];
                let (record, length) = match parse_common_line(rest) {
                    Some((record, length)) => match Gva::try_new(record.address) {
                        // The common line with a canonical address goes straight into the batch.
                        Ok(va) => {
                            used += length;
                            self.line += 1;
                            self.accesses += 1;
                            out.push(Op::Access { pid: self.pid, va, kind: record.kind, size: record.size });
                            continue;
                        }
                        Err(_) => (Ok(Some(record)), length),
                    },
                    None => match memchr::memchr(b'\n', rest) {
                        Some(newline) => (parse_line(&rest[..newline]), newline + 1),
                        None => break,
                    },
                };
                used += length;
                self.line += 1;
                match access_of(record, self.pid, self.line, &self.path) {
                    Ok(Some(op)) => {
                        self.accesses += 1;
                        out.push(op);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        result = Err(error);
                        break;
                    }
                }
            }
            self.chunks.consume(used);
            result?;
            if used > 0 {
                continue;
            }
            // No whole line is buffered: read more, or take the last line if it lacks a newline.
            let path = &self.path;
            let line =
                self.chunks.next_line().map_err(|source| WorkloadError::Io { path: path.clone(), source })?;
            let Some(line) = line else {
                return if self.accesses == 0 {
                    Err(WorkloadError::Empty { path: self.path.clone() })
                } else {
                    Ok(())
                };
            };
            self.line += 1;
            if let Some(op) = access_of(parse_line(line), self.pid, self.line, &self.path)? {
                self.accesses += 1;
                out.push(op);
            }
        }
        Ok(())
    }
}

/// The access of line `number` from what parsing it gave, if it is an access line.
#[inline]
fn access_of(
    parsed: Result<Option<LackeyRecord>, String>,
    pid: Pid,
    number: u64,
    path: &Path,
) -> Result<Option<Op>, WorkloadError> {
    let bad = |message| WorkloadError::Parse { path: path.to_path_buf(), line: number, message };
    let Some(record) = parsed.map_err(bad)? else { return Ok(None) };
    let va = Gva::try_new(record.address).map_err(|e| bad(e.to_string()))?;
    Ok(Some(Op::Access { pid, va, kind: record.kind, size: record.size }))
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

    #[test]
    fn the_common_case_parser_takes_valgrinds_lines() {
        let rec = |kind, address, size| LackeyRecord { kind, address, size };
        assert_eq!(parse_common_line(b"I  04016b90,3\n"), Some((rec(AccessKind::Fetch, 0x0401_6b90, 3), 14)));
        assert_eq!(
            parse_common_line(b" S 1ffefffd38,8\r\nI"),
            Some((rec(AccessKind::Write, 0x1f_feff_fd38, 8), 17))
        );
        // Followed by more of the stream: the same answers.
        let next = b"I  0401b821,4\n";
        let stream = |line: &[u8]| [line, next].concat();
        assert_eq!(
            parse_common_line(&stream(b" L 1ffefffd40,8\n")),
            Some((rec(AccessKind::Read, 0x1f_feff_fd40, 8), 16))
        );
        assert_eq!(
            parse_common_line(&stream(b" M ffffffffffffffff,65536\n")),
            Some((rec(AccessKind::Write, u64::MAX, 65536), 26))
        );
        assert_eq!(parse_common_line(&stream(b" M 1ffffffffffffffff,8\n")), None);
        assert_eq!(parse_common_line(&stream(b" L ,8\n")), None);
        assert_eq!(parse_common_line(&stream(b" L 12g4,8\n")), None);
        // Without its newline a line is left to the careful parser (more may be coming).
        assert_eq!(parse_common_line(b" L 1000,8"), None);
        assert_eq!(parse_common_line(b" L 1000,8 \n"), None);
    }

    proptest::proptest! {
        /// Whatever the common-case parser accepts, the careful parser reads the same way.
        #[test]
        fn the_common_case_parser_agrees_with_the_careful_one(
            line in proptest::prop_oneof![
                "(I  | L | S | M )([0-9a-fA-F]{0,18}|[0-9a-f]{16}|0{17}),(0|00|65536|65537|[0-9]{0,11})\r?\n",
                "(I  | L | S | M |  L|I )[0-9a-fA-Fg ]{0,18}[,;]?[0-9 ]{0,11}\r?\n?",
            ]
        ) {
            let bytes = line.as_bytes();
            // Alone (at the end of a buffer) and followed by another line (as in a stream).
            let followed = [bytes, b"I  0401b821,4\n"].concat();
            for text in [bytes, &followed[..]] {
                if let Some((record, length)) = parse_common_line(text) {
                    proptest::prop_assert_eq!(length, bytes.len());
                    let without = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                    proptest::prop_assert_eq!(parse_line(without), Ok(Some(record)));
                }
            }
        }
    }
}
