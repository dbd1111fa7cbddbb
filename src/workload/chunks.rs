//! Reading a stream in large chunks: the buffering every trace reader shares, so memory use
//! does not grow with the trace and no record costs an allocation.

use std::io::Read;

/// The longest line a text trace may have. Lackey's lines are tens of bytes; valgrind's own
/// messages and a program's stderr lines are short too.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A reader's bytes, buffered in chunks. Unconsumed bytes stay at the front when more are read.
pub struct Chunks<R> {
    reader: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunks<R> {
    /// Buffers `reader` in chunks of `capacity` bytes (grown if one line needs more). The
    /// buffer holds a chunk and a little more, so the part of a line or record carried over
    /// from the last chunk still leaves a whole chunk to read into: a buffered reader of the
    /// same capacity underneath then reads straight into this buffer instead of through its
    /// own (a second copy of every byte).
    pub fn new(reader: R, capacity: usize) -> Self {
        // A sixteenth more: 64 KiB for the readers' 1 MiB chunks, far longer than any line of
        // a trace (and nothing for a test's tiny chunks, which then cross every boundary).
        let capacity = capacity.max(1);
        Self { reader, buffer: vec![0; capacity + capacity / 16], start: 0, end: 0, eof: false }
    }

    /// The bytes read and not yet consumed.
    #[inline]
    pub fn available(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Marks `bytes` of the available bytes as used.
    #[inline]
    pub fn consume(&mut self, bytes: usize) {
        self.start = (self.start + bytes).min(self.end);
    }

    /// Reads until at least `want` bytes are available or the input ends.
    pub fn fill(&mut self, want: usize) -> std::io::Result<()> {
        while self.end - self.start < want && !self.eof {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buffer.len() {
                // More than a chunk is wanted at once (a pathological line, not a trace).
                let grown = self.buffer.len() * 2;
                self.buffer.resize(grown, 0);
            }
            match self.reader.read(&mut self.buffer[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(read) => self.end += read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next line without its newline (the last may lack one), or `None` at the end. A
    /// line longer than [`MAX_LINE_BYTES`] is an error (`InvalidData`): the input is not a
    /// text trace (`/dev/zero`, a binary file), and reading on would grow without bound.
    pub fn next_line(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            if let Some(newline) = memchr::memchr(b'\n', self.available()) {
                let from = self.start;
                self.start += newline + 1;
                return Ok(Some(&self.buffer[from..from + newline]));
            }
            if self.available().len() > MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE_BYTES} bytes: this is not a text trace"),
                ));
            }
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let from = self.start;
                self.start = self.end;
                return Ok(Some(&self.buffer[from..self.end]));
            }
            let want = self.end - self.start + 1;
            self.fill(want)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_chunk_boundaries_and_long_lines() {
        let text = b"ab\ncdefghij\n\nlast";
        let mut chunks = Chunks::new(&text[..], 3);
        let mut lines = Vec::new();
        while let Some(line) = chunks.next_line().expect("in memory") {
            lines.push(line.to_vec());
        }
        assert_eq!(lines, vec![b"ab".to_vec(), b"cdefghij".to_vec(), Vec::new(), b"last".to_vec()]);
    }

    /// Gives at most a chunk per read and notes how many bytes each read asked for.
    struct Asking {
        left: usize,
        asks: Vec<usize>,
    }

    impl Read for Asking {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.asks.push(buf.len());
            let given = buf.len().min(self.left).min(160);
            buf[..given].fill(b'x');
            self.left -= given;
            Ok(given)
        }
    }

    #[test]
    fn a_carried_over_tail_still_leaves_a_whole_chunk_to_read() {
        let mut chunks = Chunks::new(Asking { left: 1000, asks: Vec::new() }, 160);
        for _ in 0..4 {
            chunks.fill(160).expect("in memory");
            // All but a few bytes used: the rest is carried to the front.
            let used = chunks.available().len() - 7;
            chunks.consume(used);
            chunks.fill(8).expect("in memory");
        }
        assert!(chunks.reader.asks.iter().all(|&ask| ask >= 160), "{:?}", chunks.reader.asks);
    }

    #[test]
    fn fill_and_consume() {
        let bytes = [1u8, 2, 3, 4, 5];
        let mut chunks = Chunks::new(&bytes[..], 2);
        chunks.fill(4).expect("in memory");
        assert_eq!(&chunks.available()[..4], &[1, 2, 3, 4]);
        chunks.consume(3);
        chunks.fill(8).expect("in memory");
        assert_eq!(chunks.available(), &[4, 5]);
    }
}
