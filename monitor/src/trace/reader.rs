//! Reading a trace: the header, then one [`Event`] per line, plain or zstd
//! (told apart by the magic bytes, never by the name).
//!
//! A reader is an iterator of `Result<Event, TraceError>`. It never panics on
//! any input. What cannot be a trace at all (empty, first line not a header,
//! a newer version) is refused when opening ([`TraceReader::open`] returns
//! the error; exit code 2). Damage after a good header ends the iteration
//! with one `Err(TraceError::Damaged)` that says where (line and byte) and
//! why; every event before it has been handed out. A last line cut short
//! (the recorder was killed mid-write) and compressed data cut short (killed
//! mid-flush) are damage of this kind too: everything up to the last
//! complete line is read.
//!
//! Lines whose `type` this version does not know (a newer twmon of the same
//! trace version) are skipped and counted ([`TraceReader::skipped`]); a header
//! line further down (traces concatenated with `cat`) is skipped as well.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::header::{Header, TAG, TRACE_VERSION};
use crate::event::Event;

/// The first four bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A line longer than this is damage, not an event (events are < 64 KiB).
pub const MAX_LINE: usize = 16 << 20;

/// What kind of damage stopped the reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The last line has no newline and is not a whole event.
    CutLine,
    /// A line in the middle is not a twmon event.
    Garbled,
    /// The zstd data ends inside a block or frame (read up to the last
    /// complete one).
    CompressedCut,
    /// The zstd data is corrupt.
    CompressedCorrupt,
    /// A line longer than [`MAX_LINE`].
    LineTooLong,
    /// The file could not be read further.
    ReadError,
    /// A later header line of a newer trace version.
    NewerVersionInside,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("cannot open {name}: {why}")]
    Open { name: String, why: String },
    #[error("{name} is empty, so it is not a twmon trace")]
    Empty { name: String },
    #[error("{name} is not a twmon trace: {why}")]
    NotATrace { name: String, why: String },
    #[error("{name} is a version {version} trace and this twmon reads up to version {TRACE_VERSION}: read it with a newer twmon")]
    NewerVersion { name: String, version: u64 },
    #[error("{name}: the trace stops at line {line} (byte {offset}{}): {why}", if *.compressed { " of the decompressed data" } else { "" })]
    Damaged {
        name: String,
        /// 1-based; the header is line 1.
        line: u64,
        /// Where that line starts (in the decompressed data when compressed).
        offset: u64,
        compressed: bool,
        damage: Damage,
        why: String,
    },
}

impl TraceError {
    /// The exit code for a command that cannot go on: 2, bad input file.
    pub fn exit_code(&self) -> i32 {
        2
    }

    /// Damage after a good header: what came before it was read.
    pub fn is_damage(&self) -> bool {
        matches!(self, TraceError::Damaged { .. })
    }

    /// (line, byte offset) of the damage.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            TraceError::Damaged { line, offset, .. } => Some((*line, *offset)),
            _ => None,
        }
    }
}

/// Reads one trace file (one part of a rotated recording).
pub struct TraceReader {
    name: String,
    header: Header,
    src: Box<dyn BufRead + Send>,
    compressed: bool,
    /// Number of the last line read (the header is line 1).
    line: u64,
    /// Offset of the next line.
    offset: u64,
    buf: Vec<u8>,
    events: u64,
    skipped: u64,
    stopped: Option<TraceError>,
    done: bool,
}

impl fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceReader")
            .field("name", &self.name)
            .field("line", &self.line)
            .field("offset", &self.offset)
            .field("compressed", &self.compressed)
            .finish()
    }
}

impl TraceReader {
    /// Open a trace file and read its header.
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| TraceError::Open {
            name: name.clone(),
            why: io_why(&e),
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(TraceError::Open {
                name,
                why: "it is a directory".into(),
            });
        }
        Self::from_reader(name, file)
    }

    /// Read a trace from any byte stream; `name` is used in messages.
    pub fn from_reader(
        name: impl Into<String>,
        mut input: impl Read + Send + 'static,
    ) -> Result<TraceReader, TraceError> {
        let name = name.into();
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(TraceError::Open {
                        name,
                        why: io_why(&e),
                    })
                }
            }
        }
        if got == 0 {
            return Err(TraceError::Empty { name });
        }
        let head = magic[..got].to_vec();
        let chained = Cursor::new(head).chain(input);
        let compressed = got == 4 && magic == ZSTD_MAGIC;
        if got >= 2 && magic[..2] == GZIP_MAGIC {
            return Err(TraceError::NotATrace {
                name,
                why:
                    "it is gzip-compressed (twmon reads plain and zstd traces): decompress it first"
                        .into(),
            });
        }
        let src: Box<dyn BufRead + Send> = if compressed {
            match zstd::stream::read::Decoder::new(chained) {
                Ok(d) => Box::new(BufReader::with_capacity(256 << 10, d)),
                Err(e) => {
                    return Err(TraceError::NotATrace {
                        name,
                        why: format!("its zstd data cannot be decompressed ({})", io_why(&e)),
                    })
                }
            }
        } else {
            Box::new(BufReader::with_capacity(256 << 10, chained))
        };
        let mut r = TraceReader {
            name,
            header: Header {
                twmon_trace: 0,
                host: String::new(),
                kernel: String::new(),
                started: String::new(),
                boot_ns_at_start: 0,
                mode: None,
                twmon_version: String::new(),
                recording: String::new(),
                part: 0,
                previous: None,
                filters: Default::default(),
                snapshot: None,
                extra: Default::default(),
            },
            src,
            compressed,
            line: 0,
            offset: 0,
            buf: Vec::with_capacity(4096),
            events: 0,
            skipped: 0,
            stopped: None,
            done: false,
        };
        r.header = r.read_header()?;
        Ok(r)
    }

    /// Read trace bytes held in memory (tests, fuzzing).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<TraceReader, TraceError> {
        Self::from_reader(name, Cursor::new(bytes))
    }

    fn read_header(&mut self) -> Result<Header, TraceError> {
        let not_a_trace = |name: &str, why: String| TraceError::NotATrace {
            name: name.to_string(),
            why,
        };
        let (terminated, err) = self.read_line();
        if let Some(e) = err {
            let why = if self.compressed {
                format!("its zstd data cannot be decompressed ({})", io_why(&e))
            } else {
                format!("it cannot be read ({})", io_why(&e))
            };
            return Err(not_a_trace(&self.name, why));
        }
        if self.buf.is_empty() {
            return Err(TraceError::Empty {
                name: self.name.clone(),
            });
        }
        if self.buf.len() > MAX_LINE {
            return Err(not_a_trace(
                &self.name,
                "its first line is longer than 16 MiB, so it is no trace header".into(),
            ));
        }
        let line = trim_eol(&self.buf);
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) if !terminated && line.first() == Some(&b'{') => {
                return Err(not_a_trace(
                    &self.name,
                    "it ends inside its first line, so its header is incomplete".into(),
                ))
            }
            Err(_) => {
                return Err(not_a_trace(
                    &self.name,
                    format!(
                        "its first line is not a trace header (a JSON object with \"{TAG}\"); record traces with `twmon record`"
                    ),
                ))
            }
        };
        let Some(obj) = value.as_object() else {
            return Err(not_a_trace(
                &self.name,
                format!("its first line is JSON but not a trace header (an object with \"{TAG}\")"),
            ));
        };
        let Some(version) = obj.get(TAG) else {
            let why = if obj.contains_key("type") && obj.contains_key("ts_ns") {
                "its first line is a twmon event, not a trace header: this looks like `twmon watch --json` output; record traces with `twmon record`".to_string()
            } else {
                format!("its first line is JSON but has no \"{TAG}\" field")
            };
            return Err(not_a_trace(&self.name, why));
        };
        let version = match version.as_u64() {
            Some(v) if v >= 1 => v,
            _ => {
                return Err(not_a_trace(
                    &self.name,
                    format!("its \"{TAG}\" version is {version}, not a positive whole number"),
                ))
            }
        };
        if version > TRACE_VERSION {
            return Err(TraceError::NewerVersion {
                name: self.name.clone(),
                version,
            });
        }
        let h = serde_json::from_value::<Header>(value)
            .map_err(|e| not_a_trace(&self.name, format!("its header line is malformed ({e})")))?;
        self.offset = self.buf.len() as u64;
        Ok(h)
    }

    /// Read the next line into `buf` (newline kept). Returns whether it
    /// ended with a newline, and the read error that stopped it (the bytes
    /// before the error are in `buf`).
    fn read_line(&mut self) -> (bool, Option<io::Error>) {
        self.buf.clear();
        let mut limited = (&mut self.src).take(MAX_LINE as u64 + 1);
        let r = limited.read_until(b'\n', &mut self.buf);
        self.line += 1;
        let terminated = self.buf.last() == Some(&b'\n');
        match r {
            Ok(_) => (terminated, None),
            Err(e) => (terminated, Some(e)),
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The name used in messages (the path for files).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Events handed out so far.
    pub fn events_read(&self) -> u64 {
        self.events
    }

    /// Lines skipped: events of a type this version does not know, and
    /// header lines after the first.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// (lines read, bytes read) so far.
    pub fn position(&self) -> (u64, u64) {
        (self.line, self.offset)
    }

    /// The damage that ended the reading, once it has.
    pub fn stopped(&self) -> Option<&TraceError> {
        self.stopped.as_ref()
    }

    fn damage(&mut self, damage: Damage, why: String) -> TraceError {
        let e = TraceError::Damaged {
            name: self.name.clone(),
            line: self.line,
            offset: self.offset,
            compressed: self.compressed,
            damage,
            why,
        };
        self.done = true;
        self.stopped = Some(e.clone());
        e
    }

    /// What a line that is not an event is: Ok(()) to skip it, or the damage.
    fn classify(&self, line: &[u8], err: serde_json::Error) -> Result<(), (Damage, String)> {
        let n = self.line;
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => {
                return Err((
                    Damage::Garbled,
                    format!("line {n} is not JSON, so the rest of the trace was not read"),
                ))
            }
        };
        if let Some(obj) = v.as_object() {
            if let Some(ver) = obj.get(TAG) {
                return match ver.as_u64() {
                    Some(x) if x > TRACE_VERSION => Err((
                        Damage::NewerVersionInside,
                        format!(
                            "line {n} starts a version {x} trace, which this twmon cannot read"
                        ),
                    )),
                    _ => Ok(()), // another part's header (cat a b)
                };
            }
            if let Some(Value::String(t)) = obj.get("type") {
                if !KNOWN_TYPES.contains(&t.as_str()) {
                    return Ok(()); // a newer twmon's event type
                }
                return Err((
                    Damage::Garbled,
                    format!("line {n} is a {t} event with bad fields ({err}), so the rest of the trace was not read"),
                ));
            }
        }
        Err((
            Damage::Garbled,
            format!("line {n} is JSON but not a twmon event ({err}), so the rest of the trace was not read"),
        ))
    }
}

/// Event types this version reads (`Kind`'s tags).
const KNOWN_TYPES: &[&str] = &[
    "bind_failed",
    "bound",
    "state",
    "timewait_open",
    "timewait_substate",
    "timewait_close",
    "socket",
    "lost",
];

impl Iterator for TraceReader {
    type Item = Result<Event, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let (terminated, err) = self.read_line();
            if let Some(e) = err {
                let (damage, why) = if self.compressed {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        (Damage::CompressedCut, format!("the compressed data is cut short ({}): everything before line {} was read (a recorder killed mid-flush leaves this)", io_why(&e), self.line))
                    } else {
                        (Damage::CompressedCorrupt, format!("the compressed data is corrupt ({}): everything before line {} was read", io_why(&e), self.line))
                    }
                } else {
                    (
                        Damage::ReadError,
                        format!("reading failed ({})", io_why(&e)),
                    )
                };
                return Some(Err(self.damage(damage, why)));
            }
            if self.buf.is_empty() {
                self.done = true;
                self.line -= 1;
                return None;
            }
            if self.buf.len() > MAX_LINE {
                let why = format!("line {} is longer than 16 MiB", self.line);
                return Some(Err(self.damage(Damage::LineTooLong, why)));
            }
            let len = self.buf.len() as u64;
            let buf = std::mem::take(&mut self.buf);
            let line = trim_eol(&buf);
            if line.iter().all(|b| b.is_ascii_whitespace()) && terminated {
                self.offset += len;
                self.buf = buf;
                continue;
            }
            let parsed = serde_json::from_slice::<Event>(line);
            let out = match parsed {
                Ok(ev) => {
                    self.offset += len;
                    self.events += 1;
                    if !terminated {
                        // A whole event without its newline: the writer was
                        // stopped between the two.
                        self.done = true;
                    }
                    Some(Ok(ev))
                }
                Err(_) if !terminated => {
                    let why = format!(
                        "the last line ({}) is cut short: everything before it was read (a recorder killed mid-write leaves this)",
                        self.line
                    );
                    Some(Err(self.damage(Damage::CutLine, why)))
                }
                Err(e) => match self.classify(line, e) {
                    Ok(()) => {
                        self.offset += len;
                        self.skipped += 1;
                        None
                    }
                    Err((damage, why)) => Some(Err(self.damage(damage, why))),
                },
            };
            self.buf = buf;
            if out.is_some() {
                return out;
            }
        }
    }
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// An io::Error as a short phrase, without Rust's "(os error N)" noise kept
/// where it helps.
fn io_why(e: &io::Error) -> String {
    e.to_string()
}

/// The files of a recording: `path`, then `path.1`, `path.2` ... as long as
/// they exist (the recorder's rotation scheme).
pub fn part_paths(path: &Path) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    for n in 1.. {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        let p = PathBuf::from(p);
        if !p.exists() {
            break;
        }
        v.push(p);
    }
    v
}

/// Everything a trace holds, read at once: for views that seek (replay).
#[derive(Debug)]
pub struct Loaded {
    pub header: Header,
    pub events: Vec<Event>,
    /// The damage that ended the reading early, if any.
    pub stopped: Option<TraceError>,
    pub skipped: u64,
}

/// Read a whole trace into memory. Refusals (not a trace, newer version,
/// empty, unreadable) are the error; damage is `stopped`.
pub fn load(path: &Path) -> Result<Loaded, TraceError> {
    let mut r = TraceReader::open(path)?;
    let mut events = Vec::new();
    for ev in r.by_ref() {
        match ev {
            Ok(e) => events.push(e),
            Err(_) => break,
        }
    }
    Ok(Loaded {
        header: r.header.clone(),
        events,
        stopped: r.stopped.clone(),
        skipped: r.skipped,
    })
}
