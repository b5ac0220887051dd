//! Trace files: what `twmon record` writes and `twmon replay` / `twmon
//! report` read (contract, "Trace files").
//!
//! A trace is a header line ([`Header`]) and then the contract's JSON lines,
//! one event per line, in the order the recorder passed them on: after the
//! correlator, so failures carry their holders and diagnosis and the
//! `socket` evidence a replay needs is in the file. A recording starts with
//! a `socket` event for each socket that already existed (a sock_diag
//! snapshot), so a replay knows sockets older than the recording.
//!
//! Optionally zstd-compressed (one frame per flush), told apart by its magic
//! bytes. Written with mode 0600 and flushed at least every second; a file
//! cut short or damaged reads up to the damage, which the reader reports
//! with its line and byte offset. See [`writer`] and [`reader`] for the
//! details, [`recording`] for the recorder every command shares.

pub mod header;
pub mod reader;
pub mod recording;
pub mod synth;
pub mod writer;

pub use header::{Header, SnapshotInfo, TraceFilters, TRACE_VERSION};
pub use reader::{load, part_paths, Damage, Loaded, TraceError, TraceReader};
pub use recording::{model_events, snapshot_events, RecordOptions, Recording, SnapshotScope};
pub use writer::{parse_size, TraceWriter, WriteError, WriterOptions, Written};

#[cfg(test)]
pub(crate) mod tests;
