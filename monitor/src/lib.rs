//! twmon: who holds the port, why, and what would fix it.
//!
//! Data flows one way: kernel programs -> ring buffers -> [`probe`] decoder ->
//! typed [`event`]s -> (recorder) -> model -> diagnosis -> views or JSON lines.

pub mod batches;
pub mod census;
pub mod cli;
pub mod cmd_check;
pub mod cmd_demo;
pub mod cmd_gen;
pub mod cmd_live;
pub mod cmd_record;
pub mod cmd_replay;
pub mod cmd_report;
pub mod cmd_serve;
pub mod cmd_watch;
pub mod container;
pub mod correlate;
pub mod diagnose;
pub mod event;
pub mod filter;
pub mod json_line;
pub mod live;
pub mod metrics;
pub mod model;
pub mod output;
pub mod probe;
pub mod report;
pub mod rules;
pub mod scenario;
pub mod snapshot;
pub mod trace;
pub mod ui;
