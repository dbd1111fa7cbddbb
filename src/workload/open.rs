//! Opening any trace file: lackey text or the compact binary format, either of them plain,
//! gzip- or zstd-compressed, told apart by their first bytes; and converting lackey text to
//! the compact format.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::guest::Pid;
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
        let decoder = ruzstd::decoding::StreamingDecoder::new(raw).map_err(|e| WorkloadError::Record {
            path: path.to_path_buf(),
            record: 0,
            message: format!("bad zstd stream: {e}"),
        })?;
        Box::new(decoder)
    } else {
        return Ok(raw);
    };
    Ok(BufReader::with_capacity(1 << 20, stream))
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
/// `output`, written to `output.partial` and renamed when complete. `progress` hears the
/// record count now and then. Returns the number of records.
pub fn convert(input: &Path, output: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64, WorkloadError> {
    let mut trace = Feed::new(open_trace(input, 1)?);
    write_compact(
        output,
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

/// Writes a compact trace at `output` from the records `produce` gives its sink, atomically
/// (`output.partial`, then a rename; removed on error).
pub fn write_compact(
    output: &Path,
    produce: &mut dyn FnMut(&mut RecordSink<'_>) -> Result<(), WorkloadError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, WorkloadError> {
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let result = (|| {
        let file = File::create(&partial).map_err(io(output))?;
        let mut writer = CompactWriter::new(file).map_err(io(output))?;
        produce(&mut |kind, address, size| {
            writer.write(kind, address, size).map_err(io(output))?;
            if writer.count() % (1 << 20) == 0 {
                progress(writer.count());
            }
            Ok(())
        })?;
        let count = writer.finish().map_err(io(output))?;
        if count == 0 {
            return Err(WorkloadError::Empty { path: output.to_path_buf() });
        }
        std::fs::rename(&partial, output).map_err(io(output))?;
        Ok(count)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
