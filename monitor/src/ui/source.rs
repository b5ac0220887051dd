//! Where the dashboard's events come from.
//!
//! Live runs wrap the probe and a `Correlator<Kernel>` (cmd_live.rs), the
//! demo adds its scenario captions (cmd_demo.rs), a replay reads a trace
//! (through a `Correlator<EventsOnly>` if it re-explains failures). The
//! dashboard only sees events that went through a correlator (failures with
//! holders and diagnosis, snapshot `socket` events before them), in order.

use std::time::Duration;

use crossterm::event::KeyEvent;

use crate::event::Event;

/// What [`EventSource::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// It moved events into the buffer (maybe more are ready).
    Ready,
    /// Nothing ready now.
    Idle,
    /// The source has ended (a replay at its end, a kernel reader that
    /// stopped); the dashboard stays open until the user quits.
    Ended,
}

/// Recording state for the status line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Recording {
    #[default]
    Off,
    /// Writing to this file.
    On(String),
    /// This source cannot record (the reason, short).
    Unavailable(String),
}

/// What the status line says about the source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceStatus {
    /// "live", "demo", "replay".
    pub mode: String,
    /// Which hooks (live: "tracepoint: sys_exit, inet_sock_set_state, ..."),
    /// or the file being replayed.
    pub detail: String,
    pub recording: Recording,
    /// Replay speed (None: real time source).
    pub speed: Option<f64>,
    /// Replay position, e.g. "12:00:03 45%".
    pub position: Option<String>,
    /// The source has ended.
    pub ended: bool,
    /// Live light mode: no transitions are streamed (no refused connects,
    /// no timewait owners).
    pub light: bool,
}

/// A caption above the views (the demo's scenarios).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Banner {
    /// "Scenario 3/10: forked-child".
    pub title: String,
    /// One or two sentences.
    pub caption: String,
    /// The step playing now, if any.
    pub step: Option<String>,
}

/// A source of events for [`crate::ui::run`].
pub trait EventSource {
    /// Move up to `max` ready events into `out`, waiting at most `wait` for
    /// the first one. Must not block longer than `wait`.
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, wait: Duration) -> Poll;

    /// The source's clock in boot-time ns, the clock of `ts_ns`: live, the
    /// kernel's now; a replay, its playback position. None: the clock
    /// follows the events alone. Drives TIME_WAIT countdowns and the
    /// one-sample-per-second history when no event comes.
    fn clock_ns(&self) -> Option<u64> {
        None
    }

    /// What a census of the kernel's sockets found changed since the last
    /// one (live light mode); None for sources of events only.
    fn census(&mut self) -> Option<crate::census::CensusUpdate> {
        None
    }

    fn status(&self) -> SourceStatus;

    /// The user paused or resumed. Return true when the source holds back
    /// its events itself while paused (a replay stops reading); false and
    /// the dashboard queues what keeps coming (bounded) instead.
    fn set_paused(&mut self, _paused: bool) -> bool {
        false
    }

    /// `r`: start or stop recording. Ok: what to tell the user.
    fn toggle_recording(&mut self) -> Result<String, String> {
        Err("recording not available".into())
    }

    /// A key the dashboard does not use (replay: speed, step, seek).
    /// True when the source used it.
    fn on_key(&mut self, _key: KeyEvent) -> bool {
        false
    }

    /// The source's own keys for the help screen: (keys, what they do).
    fn help(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A caption to show above the views.
    fn banner(&self) -> Option<Banner> {
        None
    }

    /// Events that the source replaced since the last call and that the
    /// dashboard must rebuild from scratch (a replay that seeks backwards):
    /// true makes the dashboard reset its model and views (keeping the
    /// user's focus, filter and sort) before the next events.
    fn take_reset(&mut self) -> bool {
        false
    }
}

/// A source over a fixed list of events (tests, small tools): everything is
/// ready at once; then it ends.
pub struct VecSource {
    events: std::collections::VecDeque<Event>,
    pub status: SourceStatus,
}

impl VecSource {
    pub fn new(events: Vec<Event>) -> VecSource {
        VecSource {
            events: events.into(),
            status: SourceStatus {
                mode: "events".into(),
                ..SourceStatus::default()
            },
        }
    }
}

impl EventSource for VecSource {
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, _wait: Duration) -> Poll {
        if self.events.is_empty() {
            return Poll::Ended;
        }
        let n = max.min(self.events.len());
        out.extend(self.events.drain(..n));
        Poll::Ready
    }
    fn status(&self) -> SourceStatus {
        SourceStatus {
            ended: self.events.is_empty(),
            ..self.status.clone()
        }
    }
}
