//! The dashboard: ratatui views over a stream of [`Event`]s.
//!
//! The pieces, from the inside out:
//!
//! - [`App`] (app.rs): UI state (focus, selection, filter, pause, sort) and
//!   what the views derive from events over time (failures with their
//!   refused-connection counts, the event log, per-port TIME_WAIT and
//!   CLOSE_WAIT history, events per second). Pure: fed with
//!   [`App::on_event`] after the event went into the [`Model`], with
//!   [`App::set_clock`] (boot-time ns; the model's or the source's clock,
//!   never the wall clock) and [`App::set_ui_ms`] (a monotonic UI clock for
//!   highlights only), and [`App::on_key`]. Tested without a terminal.
//! - [`Dashboard`] (app.rs): a [`Model`] and an [`App`] fed together, with
//!   the pause queue and the netns scope: `feed(event)`, `tick(clock)`.
//! - [`views::draw`]: `draw(frame, &app, &model)`, one frame, no state.
//! - [`EventSource`] (source.rs): where events come from (live kernel, demo,
//!   a trace file), with its status for the status line and its own keys.
//! - [`run`] (run.rs): the loop. Draws at most 10 frames a second, drains
//!   events in batches with a time budget so keys never wait behind a flood.
//! - [`terminal`]: raw mode + alternate screen behind a guard that restores
//!   the terminal on exit, on SIGTERM/SIGINT/SIGHUP and on panic; stderr is
//!   sent away while the dashboard owns the screen.

pub mod app;
pub mod filter;
pub mod format;
pub mod keys;
pub mod rows;
pub mod run;
pub mod source;
pub mod terminal;
pub mod theme;
pub mod views;

pub use app::{Action, App, Dashboard, FailureRow, Pane, PortSort};
pub use run::{run, RunOptions};
pub use source::{Banner, EventSource, Poll, Recording, SourceStatus};

#[allow(unused_imports)]
use crate::{event::Event, model::Model};
