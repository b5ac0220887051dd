//! Writing a trace: the header line, then one JSON line per event.
//!
//! What it promises (contract, "Trace files"):
//! - the file is created with mode 0600 (and set to 0600 when an existing
//!   file is overwritten with `overwrite`);
//! - every event reaches the file within [`FLUSH_AFTER`] plus one
//!   [`TraceWriter::tick`] of being written here, so a killed recorder loses
//!   at most the last second. Plain traces get whole lines; compressed traces
//!   get one complete zstd frame (with checksum) per flush, so a reader
//!   decodes everything up to the last flush of a file cut short;
//! - a failed write (full disk, I/O error) cuts the file back to the end of
//!   the last complete flush, so what was written stays readable, and every
//!   later call fails at once with the same error.
//!
//! Rotation (`max_size`): FILE, then FILE.1, FILE.2, ... Each part starts
//! with its own header (`part`, `previous`) followed by the sockets the
//! recorder knew at that moment (`socket` events, passed to
//! [`TraceWriter::rotate`]), so every part can be read on its own. A part may
//! grow past the limit by one line (plain) or one flush (compressed), and
//! always takes at least half the limit, and at least as much as was
//! carried into it, of new events (so with very many sockets a part grows
//! to twice its carry-over). Parts are never deleted.
//!
//! Flushes are write(2)s; the file is fsync'ed when a part is closed. A
//! killed process loses nothing that was flushed; a crash of the whole
//! machine may lose what the kernel had not yet written back.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::header::{Header, SnapshotInfo};
use crate::event::Event;

/// Pending events are written once the oldest has waited this long (callers
/// call [`TraceWriter::tick`] at least every 100 ms).
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);
/// ... or once this many bytes are pending.
pub const FLUSH_BYTES: usize = 1 << 20;
/// Compressed: at most this much (uncompressed) per zstd frame, so that a
/// full disk loses at most one frame's worth of a large flush.
pub const FRAME_BYTES: usize = 128 << 10;
/// The smallest `max_size` accepted.
pub const MIN_MAX_SIZE: u64 = 1024;

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// zstd, one frame per flush.
    pub compress: bool,
    /// zstd level (1..=19; 3 is zstd's default).
    pub level: i32,
    /// Rotate when a part reaches this many bytes.
    pub max_size: Option<u64>,
    /// Replace an existing file instead of refusing.
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compress: false,
            level: 3,
            max_size: None,
            overwrite: false,
        }
    }
}

impl WriterOptions {
    /// Compression from the flag or the name: `--compress`, or a `.zst` suffix.
    pub fn compress_for(path: &Path, flag: bool) -> bool {
        flag || path.extension().is_some_and(|e| e == "zst")
    }
}

/// Why the trace cannot be written; one sentence.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{} already exists: twmon does not overwrite a trace (choose another name, or pass --force)", .path.display())]
    Exists { path: PathBuf },
    #[error("cannot {action} the trace {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// 2 when the file exists (bad usage), 1 otherwise (runtime failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            WriteError::Exists { .. } => 2,
            WriteError::Io { .. } => 1,
        }
    }

    fn io(action: &'static str, path: &Path, source: io::Error) -> WriteError {
        WriteError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The same error again (the writer refuses to go on after one).
    fn again(&self) -> WriteError {
        match self {
            WriteError::Exists { path } => WriteError::Exists { path: path.clone() },
            WriteError::Io {
                action,
                path,
                source,
            } => WriteError::Io {
                action,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

/// What a finished (or failed) recording left.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Written {
    /// Every part, in order.
    pub parts: Vec<PathBuf>,
    /// Events now safely in the files (the header not counted).
    pub events: u64,
    /// File bytes over all parts.
    pub bytes: u64,
}

pub struct TraceWriter {
    base: PathBuf,
    path: PathBuf,
    file: File,
    opts: WriterOptions,
    header: Header,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    pending: Vec<u8>,
    pending_events: u64,
    oldest_pending: Option<Instant>,
    /// Bytes of the current part that are complete on disk.
    committed: u64,
    /// Events in the current part, and how many of them were carried over.
    part_events: u64,
    carried: u64,
    /// Size of the part once its header and carried-over sockets were in.
    carried_bytes: u64,
    written: Written,
    failed: Option<WriteError>,
}

impl TraceWriter {
    /// Create `path` (mode 0600) and write `header` to it at once.
    pub fn create(
        path: &Path,
        header: Header,
        opts: WriterOptions,
    ) -> Result<TraceWriter, WriteError> {
        if let Some(m) = opts.max_size {
            if m < MIN_MAX_SIZE {
                return Err(WriteError::io(
                    "rotate",
                    path,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "a maximum size of {m} bytes is too small (at least {MIN_MAX_SIZE})"
                        ),
                    ),
                ));
            }
        }
        let file = open_new(path, opts.overwrite)?;
        let compressor = if opts.compress {
            let mut c = zstd::bulk::Compressor::new(opts.level)
                .map_err(|e| WriteError::io("compress", path, e))?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .map_err(|e| WriteError::io("compress", path, e))?;
            Some(c)
        } else {
            None
        };
        let mut w = TraceWriter {
            base: path.to_path_buf(),
            path: path.to_path_buf(),
            file,
            opts,
            header,
            compressor,
            pending: Vec::with_capacity(64 << 10),
            pending_events: 0,
            oldest_pending: None,
            committed: 0,
            part_events: 0,
            carried: 0,
            carried_bytes: 0,
            written: Written {
                parts: vec![path.to_path_buf()],
                ..Written::default()
            },
            failed: None,
        };
        if let Err(e) = w.start_part() {
            // Not even the header fit: leave no empty file behind.
            if w.committed == 0 {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        Ok(w)
    }

    /// The header line, flushed at once: even an empty recording is a trace.
    fn start_part(&mut self) -> Result<(), WriteError> {
        let line = self.header.to_line();
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.flush()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file being written now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue one event; it is in the file within [`FLUSH_AFTER`] (and one
    /// tick).
    pub fn write(&mut self, ev: &Event) -> Result<(), WriteError> {
        if let Some(e) = &self.failed {
            return Err(e.again());
        }
        crate::json_line::write(&mut self.pending, ev);
        self.pending.push(b'\n');
        self.pending_events += 1;
        self.part_events += 1;
        if self.oldest_pending.is_none() {
            self.oldest_pending = Some(Instant::now());
        }
        if self.pending.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Flush if the oldest pending event has waited [`FLUSH_AFTER`]. Call at
    /// least every 100 ms.
    pub fn tick(&mut self) -> Result<(), WriteError> {
        if self
            .oldest_pending
            .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Write everything pending: whole lines, or one whole zstd frame.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if let Some(e) = &self.failed {
            return Err(e.again());
        }
        if self.pending.is_empty() {
            self.oldest_pending = None;
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let r = self.write_out(&pending);
        self.pending = pending;
        self.pending.clear();
        self.pending_events = 0;
        self.oldest_pending = None;
        r
    }

    /// Write `data` (whole lines): plain as it is, compressed as frames of
    /// at most [`FRAME_BYTES`] of lines each. On a failure the file is cut
    /// back to the last whole line (plain) or frame (compressed) written.
    fn write_out(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let mut start = 0;
        while start < data.len() {
            let end = match self.compressor {
                Some(_) => chunk_end(data, start, FRAME_BYTES),
                None => data.len(),
            };
            let chunk = &data[start..end];
            start = end;
            let frame;
            let out: &[u8] = match &mut self.compressor {
                Some(c) => match c.compress(chunk) {
                    Ok(f) => {
                        frame = f;
                        &frame
                    }
                    Err(e) => return Err(self.fail(WriteError::io("compress", &self.path, e))),
                },
                None => chunk,
            };
            match write_counting(&mut self.file, out) {
                Ok(()) => self.commit(out.len() as u64, lines(chunk)),
                Err((done, e)) => {
                    // Keep what is whole: the lines of a plain write that
                    // made it, nothing of a cut frame.
                    if self.compressor.is_none() {
                        let keep = chunk[..done]
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |i| i + 1);
                        self.commit(keep as u64, lines(&chunk[..keep]));
                    }
                    let _ = self.file.set_len(self.committed);
                    let _ = self.file.seek(SeekFrom::Start(self.committed));
                    let _ = self.file.sync_all();
                    return Err(self.fail(WriteError::io("write", &self.path, e)));
                }
            }
        }
        Ok(())
    }

    /// `bytes` and `lines` more are safely in the file. Lines are events
    /// except a header, which is always flushed on its own.
    fn commit(&mut self, bytes: u64, lines: u64) {
        self.committed += bytes;
        self.written.bytes += bytes;
        let events = lines.min(self.pending_events);
        self.pending_events -= events;
        self.written.events += events;
    }

    fn fail(&mut self, e: WriteError) -> WriteError {
        let again = e.again();
        self.failed = Some(e);
        again
    }

    /// Bytes the current part has (or will have once flushed, for plain
    /// traces).
    pub fn part_size(&self) -> u64 {
        match self.compressor {
            Some(_) => self.committed,
            None => self.committed + self.pending.len() as u64,
        }
    }

    /// True when the current part has reached `max_size` (and holds more
    /// than what was carried into it): call [`TraceWriter::rotate`].
    ///
    /// A part always takes at least half of `max_size`, and at least as
    /// much as was carried into it, of new events: a carry-over near or over
    /// the limit (many sockets) cannot make most of the trace repeats.
    pub fn wants_rotation(&self) -> bool {
        self.opts.max_size.is_some_and(|m| {
            let size = self.part_size();
            let fresh = size - self.carried_bytes.min(size);
            size >= m && fresh >= (m / 2).max(self.carried_bytes) && self.part_events > self.carried
        })
    }

    /// Close this part and go on in the next (FILE.n), which starts with its
    /// header and `carry` (the sockets known now, as `socket` events).
    pub fn rotate(&mut self, carry: &[Event]) -> Result<(), WriteError> {
        self.flush()?;
        if let Err(e) = sync(&self.file) {
            return Err(self.fail(WriteError::io("sync", &self.path, e)));
        }
        let part = self.header.part + 1;
        let mut next = self.base.as_os_str().to_owned();
        next.push(format!(".{part}"));
        let next = PathBuf::from(next);
        let file = match open_new(&next, self.opts.overwrite) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(e)),
        };
        let boot = crate::probe::sys::boottime_ns();
        let unix = crate::probe::sys::boot_to_unix_offset_ns() + boot as i128;
        let mut header = self.header.clone();
        header.part = part;
        header.previous = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        header.started = crate::probe::enrich::rfc3339(unix);
        header.boot_ns_at_start = boot;
        let mut netns: Vec<u32> = carry.iter().map(|e| e.common.netns).collect();
        netns.sort_unstable();
        netns.dedup();
        header.snapshot = Some(SnapshotInfo {
            source: "carried_over".into(),
            netns,
            sockets: carry.len() as u64,
            notes: vec![],
        });
        self.header = header;
        self.file = file;
        self.path = next.clone();
        self.written.parts.push(next);
        self.committed = 0;
        self.part_events = 0;
        self.carried = 0;
        self.carried_bytes = 0;
        self.start_part()?;
        for ev in carry {
            self.write(ev)?;
        }
        self.carried = carry.len() as u64;
        self.flush()?;
        self.carried_bytes = self.committed;
        Ok(())
    }

    /// What is safely in the files so far.
    pub fn written(&self) -> &Written {
        &self.written
    }

    /// Flush, fsync and close.
    pub fn finish(mut self) -> Result<Written, WriteError> {
        self.flush()?;
        if let Err(e) = sync(&self.file) {
            return Err(self.fail(WriteError::io("sync", &self.path, e)));
        }
        Ok(std::mem::take(&mut self.written))
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        // Best effort (a panic unwinding, a caller that forgot finish()).
        if self.failed.is_none() && !self.pending.is_empty() {
            let _ = self.flush();
        }
    }
}

/// Where a chunk of at most `max` bytes of whole lines starting at `start`
/// ends (a single longer line is one chunk).
pub(crate) fn chunk_end(data: &[u8], start: usize, max: usize) -> usize {
    let limit = (start + max).min(data.len());
    if limit == data.len() {
        return limit;
    }
    match data[start..limit].iter().rposition(|&b| b == b'\n') {
        Some(i) => start + i + 1,
        None => data[limit..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| limit + i + 1),
    }
}

fn lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// fsync, where the file can be synced: a pipe or /dev/null (EINVAL) has
/// nothing to sync.
fn sync(f: &File) -> io::Result<()> {
    match f.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r,
    }
}

/// write_all that says how much was written before an error.
fn write_counting(f: &mut File, mut data: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while !data.is_empty() {
        match f.write(data) {
            Ok(0) => return Err((done, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => {
                done += n;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

fn open_new(path: &Path, overwrite: bool) -> Result<File, WriteError> {
    let mut o = OpenOptions::new();
    o.write(true).mode(0o600);
    if overwrite {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let file = o.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            WriteError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            WriteError::io("create", path, e)
        }
    })?;
    // An overwritten file keeps its old mode; a trace is always 0600. Only
    // a regular file: `-o /dev/null --force` must not take everyone's
    // /dev/null away (it did).
    let regular = file
        .metadata()
        .map_err(|e| WriteError::io("look at", path, e))?
        .is_file();
    if regular {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| WriteError::io("set the mode of", path, e))?;
    }
    Ok(file)
}

/// "64K", "10M", "1G", "4096": bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'B' => 1,
                _ => return Err(format!("{s:?}: unknown size suffix {c:?} (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64K, 10M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
