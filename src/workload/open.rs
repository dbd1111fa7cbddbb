//! Opening any trace file: lackey text or the compact binary format, either of them plain,
//! gzip- or zstd-compressed, told apart by their first bytes; and converting lackey text to
//! the compact format.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::guest::Pid;
use crate::output_file::OutputFile;
use crate::workload::compact::{CompactTrace, CompactWriter, MAGIC};
use crate::workload::feed::Feed;
use crate::workload::lackey::LackeyTrace;
use crate::workload::{Op, Workload, WorkloadError};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A readable, sendable byte stream.
type Stream = Box<dyn Read + Send>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> WorkloadError + '_ {
    move |source| WorkloadError::Io { path: path.to_path_buf(), source }
}

/// The file's bytes with any compression removed.
fn decompressed(path: &Path) -> Result<BufReader<Stream>, WorkloadError> {
    let file = File::open(path).map_err(io(path))?;
    let mut raw = BufReader::with_capacity(1 << 20, Box::new(file) as Stream);
    let head = raw.fill_buf().map_err(io(path))?;
    let stream: Stream = if head.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if head.starts_with(&ZSTD_MAGIC) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(raw).map_err(|e| WorkloadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(plain_zstd_error(&e.to_string())),
        })?;
        Box::new(PlainZstdErrors(decoder))
    } else {
        return Ok(raw);
    };
    Ok(BufReader::with_capacity(1 << 20, stream))
}

/// A zstd decoder whose errors are plain sentences. ruzstd's messages nest Rust debug
/// structures (`BlockContentReadError(Error { kind: UnexpectedEof, ... })`), which are no
/// message for a user.
struct PlainZstdErrors<R>(R);

impl<R: Read> Read for PlainZstdErrors<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buffer).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::Other {
                std::io::ErrorKind::InvalidData
            } else {
                e.kind()
            };
            std::io::Error::new(kind, plain_zstd_error(&e.to_string()))
        })
    }
}

/// One plain sentence for a ruzstd error message: a stream cut short, or corrupt data with
/// ruzstd's own first words when they are plain text.
fn plain_zstd_error(message: &str) -> String {
    if message.contains("UnexpectedEof") || message.contains("failed to fill whole buffer") {
        return "the zstd data ends early: the file is cut short".to_string();
    }
    let first = message.split(':').next().unwrap_or_default().trim();
    if first.is_empty() || first.contains(['(', '{']) {
        "the zstd data is corrupt".to_string()
    } else {
        format!("the zstd data is corrupt ({})", first.to_lowercase())
    }
}

/// Opens a trace as process `pid`'s accesses, whatever its format.
pub fn open_trace(path: &Path, pid: Pid) -> Result<Box<dyn Workload>, WorkloadError> {
    let mut stream = decompressed(path)?;
    let head = stream.fill_buf().map_err(io(path))?;
    if head.starts_with(&MAGIC) {
        Ok(Box::new(CompactTrace::from_reader(path, stream, pid)))
    } else {
        Ok(Box::new(LackeyTrace::from_reader(path, stream, pid)))
    }
}

/// Converts a lackey trace (plain or compressed) at `input` into the compact format at
/// `output` (see [`OutputFile`]: opened before the input is read, so a path that cannot be
/// written fails first). `progress` hears the record count now and then. Returns the number
/// of records.
pub fn convert(input: &Path, output: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64, WorkloadError> {
    let file = OutputFile::create(output).map_err(io(output))?;
    let mut trace = Feed::new(open_trace(input, 1)?);
    write_compact(
        file,
        &mut |sink| {
            trace.for_each_batch(|ops| {
                for op in ops {
                    if let Op::Access { va, kind, size, .. } = *op {
                        sink(kind, va.as_u64(), size)?;
                    }
                }
                Ok(())
            })
        },
        progress,
    )
}

/// A function taking each record of a trace.
pub type RecordSink<'a> = dyn FnMut(crate::paging::AccessKind, u64, u32) -> Result<(), WorkloadError> + 'a;

/// Writes a compact trace to `output` from the records `produce` gives its sink, and
/// completes it; on any error the output is abandoned (a temporary file is removed).
pub fn write_compact(
    output: OutputFile,
    produce: &mut dyn FnMut(&mut RecordSink<'_>) -> Result<(), WorkloadError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, WorkloadError> {
    let path = output.path().to_path_buf();
    let mut writer = CompactWriter::new(output).map_err(io(&path))?;
    produce(&mut |kind, address, size| {
        writer.write(kind, address, size).map_err(io(&path))?;
        if writer.count() % (1 << 20) == 0 {
            progress(writer.count());
        }
        Ok(())
    })?;
    if writer.count() == 0 {
        return Err(WorkloadError::Empty { path });
    }
    let (count, output) = writer.finish().map_err(io(&path))?;
    output.finish().map_err(io(&path))?;
    Ok(count)
}
