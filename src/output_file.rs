//! An output file (`--csv`, `--html`, `--svg`, the trace `record` and `convert` write),
//! opened before the work that fills it, so a path that cannot be written fails at once, and
//! completed so that a failed or interrupted run never leaves a truncated file.
//!
//! A regular file, or a path that does not exist yet, is written to a new temporary file
//! beside it and renamed over it when complete (POSIX `rename` replaces the name atomically).
//! Anything else is written where it is: a device (`/dev/null`), a FIFO, a terminal, or a
//! symbolic link (`/dev/stdout`, or a link to a file kept elsewhere), whose target is written
//! and the link kept. Renaming over those would replace the device node, the FIFO or the link
//! itself with a regular file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Temporary files being written now, for [`remove_unfinished`].
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Numbers the temporary files of this process, so no two have the same name.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// An output file being written; see the module documentation.
pub struct OutputFile {
    path: PathBuf,
    file: File,
    /// The temporary file renamed over `path` at [`OutputFile::finish`]; `None` when `path`
    /// itself is written.
    temporary: Option<PathBuf>,
    /// Writing `path` itself: a regular file it leads to is emptied before the first byte is
    /// written, not when it is opened, so a run that fails first leaves it as it was.
    empty_first: bool,
}

impl OutputFile {
    /// Opens `path` for writing, as the module documentation describes. Errors are the
    /// system's, for `path` (a missing directory, no permission, a directory).
    pub fn create(path: &Path) -> io::Result<OutputFile> {
        let replace = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.file_type().is_file().then_some(Some(meta.permissions())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(None),
            Err(e) => return Err(e),
        };
        let Some(permissions) = replace else {
            // Emptied at the first write instead (`empty_first`).
            let file = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
            let empty_first = file.metadata()?.file_type().is_file();
            return Ok(OutputFile { path: path.to_path_buf(), file, temporary: None, empty_first });
        };
        let (temporary, file) = create_temporary(path)?;
        let output =
            OutputFile { path: path.to_path_buf(), file, temporary: Some(temporary), empty_first: false };
        if let Some(permissions) = permissions {
            // The replacement keeps the mode of the file it replaces.
            output.file.set_permissions(permissions)?;
        }
        Ok(output)
    }

    /// The path the user named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `bytes` and completes the file.
    pub fn write_all_and_finish(mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.finish()
    }

    /// Completes the file: flushes it and renames the temporary file into place. Dropping an
    /// `OutputFile` without finishing it removes the temporary file.
    pub fn finish(mut self) -> io::Result<()> {
        self.empty_if_first()?;
        self.file.flush()?;
        if let Some(temporary) = &self.temporary {
            std::fs::rename(temporary, &self.path)?;
            forget(temporary);
            self.temporary = None;
        }
        Ok(())
    }

    fn empty_if_first(&mut self) -> io::Result<()> {
        if self.empty_first {
            self.file.set_len(0)?;
            self.empty_first = false;
        }
        Ok(())
    }
}

impl Write for OutputFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.empty_if_first()?;
        self.file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for OutputFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.file.seek(to)
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(temporary) = self.temporary.take() {
            let _ = std::fs::remove_file(&temporary);
            forget(&temporary);
        }
    }
}

/// Creates a temporary file beside `path` that did not exist before (`O_EXCL`), named
/// `.NAME.PID-N.partial`, so no file of the user's is ever overwritten or removed in its place.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    let name = path.file_name().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        let mut temporary_name = OsString::from(".");
        temporary_name.push(name);
        let number = NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed);
        temporary_name.push(format!(".{}-{number}.partial", std::process::id()));
        let temporary = path.with_file_name(temporary_name);
        // Listed before it exists: an interrupt in between removes nothing that is not there.
        unfinished().push(temporary.clone());
        match OpenOptions::new().write(true).create_new(true).open(&temporary) {
            Ok(file) => return Ok((temporary, file)),
            Err(e) => {
                forget(&temporary);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
}

fn unfinished() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    UNFINISHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn forget(temporary: &Path) {
    unfinished().retain(|listed| listed != temporary);
}

/// Removes every temporary file still being written, for a process about to end without
/// unwinding (a second Ctrl-C, SIGTERM during `convert`).
pub fn remove_unfinished() {
    for temporary in unfinished().drain(..) {
        let _ = std::fs::remove_file(temporary);
    }
}
