//! `twmon replay FILE [--speed S]`: the dashboard over a recorded trace, no
//! root needed.
//!
//! The whole trace is read into memory ([`crate::trace::load`]); its events
//! went through a correlator when they were recorded (failures carry their
//! holders and diagnosis), so they go to the dashboard as they are, in
//! order: the same model and views as live.
//!
//! [`ReplaySource`] keeps a position (the next event to hand over) and a
//! playback clock in the trace's boot-time ns. Playing at speed S, the
//! clock runs S times faster than real time and every event stamped at or
//! before it is handed over; speed 0 hands events over as fast as the
//! dashboard takes them. Keys: space/p pause (the dashboard's), `.` one
//! event, `+`/`-` speed (1, 10, 100, max), `n` up to the next bind failure,
//! `]`/`[` 10 s forward/back (back: the dashboard starts over and the
//! trace is replayed up to there at once), `0` from the start.
//!
//! Exit codes: 2 with one sentence when FILE is no trace or there is no
//! terminal; 0 when the user quits.

use std::path::Path;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};

use crate::cli::ReplayArgs;
use crate::cmd_live::{dashboard, on_a_terminal, report_stats};
use crate::event::{Event, Kind};
use crate::ui::app::App;
use crate::ui::run::RunOptions;
use crate::ui::source::{EventSource, Poll, Recording, SourceStatus};

/// The speeds `+` and `-` step through (0: as fast as possible, last).
pub const SPEEDS: [f64; 4] = [1.0, 10.0, 100.0, 0.0];

/// How far `[` and `]` seek.
pub const SEEK_NS: u64 = 10_000_000_000;

/// A trace played back as an [`EventSource`].
pub struct ReplaySource {
    events: Vec<Event>,
    /// The next event to hand over.
    pos: usize,
    /// Events before this index are handed over at once, whatever the
    /// clock (step, jumps, seeks).
    catch_up: usize,
    /// The playback clock at `anchor_at` (trace boot-time ns).
    anchor_ns: u64,
    anchor_at: Instant,
    /// The clock as of the last poll (what `clock_ns` reports).
    clock: u64,
    start_ns: u64,
    end_ns: u64,
    speed: f64,
    paused: bool,
    reset: bool,
    /// What the status line says about the file ("f.trace", with where a
    /// damaged trace stops).
    detail: String,
    /// A short note for a while (e.g. "no bind failure after 00:12.0").
    note: Option<(String, Instant)>,
    /// (ns of the UTC day, boot ns) at the same instant: the trace's wall
    /// clock, from its header.
    wall: Option<(u64, u64)>,
    now: Box<dyn Fn() -> Instant>,
}

impl ReplaySource {
    /// `detail`: the file name, and where the trace stops if damaged.
    pub fn new(events: Vec<Event>, detail: impl Into<String>, speed: f64) -> ReplaySource {
        Self::with_clock(events, detail, speed, Box::new(Instant::now))
    }

    /// With a clock of its own (tests).
    pub fn with_clock(
        events: Vec<Event>,
        detail: impl Into<String>,
        speed: f64,
        now: Box<dyn Fn() -> Instant>,
    ) -> ReplaySource {
        let start_ns = events.first().map_or(0, |e| e.common.ts_ns);
        let end_ns = events
            .iter()
            .map(|e| e.common.ts_ns)
            .max()
            .unwrap_or(start_ns);
        let at = now();
        ReplaySource {
            events,
            pos: 0,
            catch_up: 0,
            anchor_ns: start_ns,
            anchor_at: at,
            clock: start_ns,
            start_ns,
            end_ns,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                0.0
            },
            paused: false,
            reset: false,
            detail: detail.into(),
            note: None,
            wall: None,
            now,
        }
    }

    /// The trace's wall clock: `started` (RFC 3339 UTC, as in the header)
    /// was boot time `boot_ns`.
    pub fn set_wall_clock(&mut self, started: &str, boot_ns: u64) {
        self.wall = day_ns(started).map(|d| (d, boot_ns));
    }

    /// "00:38:56": the trace's time of day (UTC) at the playback clock.
    fn wall_at(&self, ns: u64) -> Option<String> {
        let (day, boot) = self.wall?;
        let t = (day as i128 + ns as i128 - boot as i128).rem_euclid(86_400_000_000_000) as u64;
        let s = t / 1_000_000_000;
        Some(format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60))
    }

    /// The next event to hand over (tests, status).
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The playback clock now.
    fn clock_at(&self, now: Instant) -> u64 {
        if self.paused || self.speed == 0.0 {
            return self.anchor_ns;
        }
        let run = now.saturating_duration_since(self.anchor_at).as_nanos() as f64 * self.speed;
        let c = self
            .anchor_ns
            .saturating_add(run.min(u64::MAX as f64 / 2.0) as u64);
        c.min(self.end_ns.max(self.anchor_ns))
    }

    /// Move the clock to `ns` (from now on it runs from there).
    fn set_clock(&mut self, ns: u64) {
        self.anchor_ns = ns;
        self.anchor_at = (self.now)();
        self.clock = ns;
    }

    /// The first index whose event is stamped after `ns`.
    fn index_after(&self, ns: u64) -> usize {
        self.events
            .iter()
            .position(|e| e.common.ts_ns > ns)
            .unwrap_or(self.events.len())
    }

    /// Hand over everything up to index `to` at once and put the clock at
    /// `ns`; backwards: the dashboard starts over.
    fn jump(&mut self, to: usize, ns: u64) {
        if to < self.pos {
            self.reset = true;
            self.pos = 0;
        }
        self.catch_up = to;
        self.set_clock(ns);
    }

    fn say(&mut self, s: impl Into<String>) {
        self.note = Some((s.into(), (self.now)()));
    }

    /// "00:12.3" from the start of the trace.
    fn rel(&self, ns: u64) -> String {
        let d = ns.saturating_sub(self.start_ns);
        let tenths = d / 100_000_000;
        let (m, rest) = (tenths / 600, tenths % 600);
        format!("{:02}:{:02}.{}", m, rest / 10, rest % 10)
    }

    /// `.`: the next event alone.
    pub fn step(&mut self) {
        if let Some(e) = self.events.get(self.pos.max(self.catch_up)) {
            let ts = e.common.ts_ns.max(self.clock);
            let to = self.pos.max(self.catch_up) + 1;
            self.catch_up = to;
            self.set_clock(ts);
        } else {
            self.say("end of the trace");
        }
    }

    /// `n`: everything up to and with the next bind failure.
    pub fn next_failure(&mut self) {
        let from = self.pos.max(self.catch_up);
        match self.events[from..]
            .iter()
            .position(|e| matches!(e.kind, Kind::BindFailed(_)))
        {
            Some(i) => {
                let ts = self.events[from + i].common.ts_ns.max(self.clock);
                self.jump(from + i + 1, ts);
            }
            None => {
                let at = self.rel(self.clock);
                self.say(format!("no bind failure after {at}"));
            }
        }
    }

    /// `]` / `[`: seek by `delta` ns.
    pub fn seek(&mut self, forward: bool) {
        let target = if forward {
            self.clock.saturating_add(SEEK_NS).min(self.end_ns)
        } else {
            self.clock.saturating_sub(SEEK_NS).max(self.start_ns)
        };
        if forward {
            let to = self.index_after(target).max(self.pos);
            self.jump(to, target);
        } else {
            self.reset = true;
            self.pos = 0;
            self.catch_up = self.index_after(target);
            self.set_clock(target);
        }
    }

    /// `0`: from the start.
    pub fn restart(&mut self) {
        self.reset = true;
        self.pos = 0;
        self.catch_up = 0;
        self.set_clock(self.start_ns);
    }

    /// `+` / `-`.
    pub fn change_speed(&mut self, faster: bool) {
        let rank = |s: f64| if s == 0.0 { f64::INFINITY } else { s };
        let cur = rank(self.speed);
        let next = if faster {
            SPEEDS.iter().copied().find(|&s| rank(s) > cur)
        } else {
            SPEEDS.iter().rev().copied().find(|&s| rank(s) < cur)
        };
        if let Some(s) = next {
            let now = (self.now)();
            let c = self.clock_at(now).max(self.clock);
            self.speed = s;
            self.set_clock(c);
        }
    }
}

impl EventSource for ReplaySource {
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, _wait: Duration) -> Poll {
        let now = (self.now)();
        let clock = self.clock_at(now);
        let start = out.len();
        while self.pos < self.events.len() && out.len() - start < max {
            let e = &self.events[self.pos];
            let go = self.pos < self.catch_up
                || (!self.paused && (self.speed == 0.0 || e.common.ts_ns <= clock));
            if !go {
                break;
            }
            out.push(e.clone());
            self.pos += 1;
        }
        if self.speed == 0.0 && !self.paused && self.pos > 0 {
            // As fast as possible: the clock is the last event's.
            let ts = self.events[self.pos - 1].common.ts_ns.max(self.anchor_ns);
            self.anchor_ns = ts;
        }
        self.clock = if self.speed == 0.0 || self.paused {
            self.anchor_ns
        } else {
            clock
        };
        if out.len() > start {
            Poll::Ready
        } else if self.pos >= self.events.len() {
            Poll::Ended
        } else {
            Poll::Idle
        }
    }

    fn clock_ns(&self) -> Option<u64> {
        Some(self.clock)
    }

    fn status(&self) -> SourceStatus {
        let mut detail = self.detail.clone();
        if let Some((n, at)) = &self.note {
            if (self.now)().saturating_duration_since(*at) < Duration::from_secs(4) {
                detail = n.clone();
            }
        }
        SourceStatus {
            mode: "replay".into(),
            detail,
            speed: Some(self.speed),
            position: Some(format!(
                "{}{}/{}",
                self.wall_at(self.clock)
                    .map(|w| format!("{w} UTC  "))
                    .unwrap_or_default(),
                self.rel(self.clock),
                self.rel(self.end_ns)
            )),
            ended: self.pos >= self.events.len(),
            light: false,
            // (Not "unavailable": that takes the room of the file name.)
            recording: Recording::Off,
        }
    }

    fn toggle_recording(&mut self) -> Result<String, String> {
        Err("a replay does not record".into())
    }

    fn set_paused(&mut self, p: bool) -> bool {
        let now = (self.now)();
        let c = self.clock_at(now).max(self.clock);
        self.paused = p;
        self.set_clock(c);
        true
    }

    fn on_key(&mut self, k: KeyEvent) -> bool {
        if k.kind == KeyEventKind::Release {
            return false;
        }
        match k.code {
            KeyCode::Char('.') => self.step(),
            KeyCode::Char('+') | KeyCode::Char('=') => self.change_speed(true),
            KeyCode::Char('-') => self.change_speed(false),
            KeyCode::Char('n') => self.next_failure(),
            KeyCode::Char(']') | KeyCode::Right => self.seek(true),
            KeyCode::Char('[') | KeyCode::Left => self.seek(false),
            KeyCode::Char('0') => self.restart(),
            _ => return false,
        }
        true
    }

    fn help(&self) -> Vec<(String, String)> {
        [
            (".", "replay: the next event (while paused)"),
            ("+ -", "replay speed: 1x, 10x, 100x, max"),
            ("n", "replay up to the next bind failure"),
            (
                "] [",
                "seek 10 s forward / back (back replays from the start)",
            ),
            ("0", "replay from the start"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .chain(std::iter::once(("file".to_string(), self.detail.clone())))
        .collect()
    }

    fn take_reset(&mut self) -> bool {
        std::mem::take(&mut self.reset)
    }
}

/// "2026-11-22T00:38:36.313663319Z" -> ns since that day's midnight.
fn day_ns(rfc3339: &str) -> Option<u64> {
    let t = rfc3339.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut it = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
    let digits: String = frac
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .take(9)
        .collect();
    let frac_ns = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32)
    };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + frac_ns)
}

/// The file name for the status line, with where a damaged trace stops.
fn detail(path: &Path, stopped: Option<&crate::trace::TraceError>) -> String {
    // The path as given; its file name alone when that is long.
    let mut name = path.display().to_string();
    if name.chars().count() > 48 {
        if let Some(f) = path.file_name() {
            name = f.to_string_lossy().into_owned();
        }
    }
    match stopped.and_then(|e| e.position()) {
        Some((line, _)) => format!("{name} (damaged: stops at line {line})"),
        None => name,
    }
}

/// Load `path` into a source; the error is one sentence (exit 2).
pub fn open(path: &Path, speed: f64) -> Result<ReplaySource, crate::trace::TraceError> {
    let loaded = crate::trace::load(path)?;
    let d = detail(path, loaded.stopped.as_ref());
    let mut src = ReplaySource::new(loaded.events, d, speed);
    src.set_wall_clock(&loaded.header.started, loaded.header.boot_ns_at_start);
    Ok(src)
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<i32> {
    let loaded = match crate::trace::load(&args.file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    if !on_a_terminal() {
        eprintln!(
            "twmon replay: the dashboard needs a terminal; for a summary use `twmon report {}`",
            args.file.display()
        );
        return Ok(2);
    }
    let d = detail(&args.file, loaded.stopped.as_ref());
    let mut source = ReplaySource::new(loaded.events, d, args.speed);
    source.set_wall_clock(&loaded.header.started, loaded.header.boot_ns_at_start);
    let stats = dashboard(&mut source, App::new(), &RunOptions::default())?;
    if let Some(s) = &loaded.stopped {
        eprintln!("twmon: {s}");
    }
    report_stats(&stats);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use crossterm::event::KeyModifiers;

    const S: u64 = 1_000_000_000;

    /// A bound or bind_failed event from an example trace, restamped.
    fn ev(ts_s: f64, failed: bool) -> Event {
        let text = include_str!("../../examples/traces/01-server-restart-time-wait.trace");
        let want = if failed {
            "{\"type\":\"bind_failed\""
        } else {
            "{\"type\":\"bound\""
        };
        let line = text.lines().find(|l| l.starts_with(want)).unwrap();
        let mut e: Event = serde_json::from_str(line).unwrap();
        e.common.ts_ns = (ts_s * 1e9) as u64;
        e
    }

    /// Events at 0, 1, 2, 5 (failure), 5, 20, 30 (failure), 40 s.
    fn source(speed: f64) -> (ReplaySource, Rc<Cell<Instant>>) {
        let t = Rc::new(Cell::new(Instant::now()));
        let t2 = t.clone();
        let events = vec![
            ev(0.0, false),
            ev(1.0, false),
            ev(2.0, false),
            ev(5.0, true),
            ev(5.0, false),
            ev(20.0, false),
            ev(30.0, true),
            ev(40.0, false),
        ];
        let src = ReplaySource::with_clock(events, "t", speed, Box::new(move || t2.get()));
        (src, t)
    }

    fn adv(t: &Rc<Cell<Instant>>, secs: f64) {
        t.set(t.get() + Duration::from_secs_f64(secs));
    }

    fn drain(s: &mut ReplaySource) -> usize {
        let mut out = Vec::new();
        while s.poll(&mut out, 2, Duration::ZERO) == Poll::Ready {}
        out.len()
    }

    fn key(s: &mut ReplaySource, c: char) {
        assert!(s.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)));
    }

    #[test]
    fn real_time_and_ten_times() {
        let (mut s, t) = source(1.0);
        assert_eq!(drain(&mut s), 1);
        adv(&t, 1.5);
        assert_eq!(drain(&mut s), 1);
        assert_eq!(s.clock_ns(), Some(S * 3 / 2));
        assert_eq!(s.status().position.unwrap(), "00:01.5/00:40.0");
        s.set_wall_clock("2026-11-22T23:59:59.5Z", 0);
        assert_eq!(
            s.status().position.unwrap(),
            "00:00:01 UTC  00:01.5/00:40.0"
        );
        assert_eq!(day_ns("2026-11-22T00:38:36.3136Z"), Some(2_316_313_600_000));
        key(&mut s, '+');
        assert_eq!(s.speed(), 10.0);
        adv(&t, 0.4); // 1.5 + 4 = 5.5 s
        assert_eq!(drain(&mut s), 3);
        assert_eq!(s.position(), 5);
        assert!(!s.status().ended);
        adv(&t, 10.0);
        assert_eq!(drain(&mut s), 3);
        let mut out = Vec::new();
        assert_eq!(s.poll(&mut out, 10, Duration::ZERO), Poll::Ended);
        assert!(s.status().ended);
        // The clock stops at the end.
        assert_eq!(s.clock_ns(), Some(40 * S));
    }

    #[test]
    fn max_speed_and_speed_steps() {
        let (mut s, _t) = source(0.0);
        assert_eq!(s.status().speed, Some(0.0));
        assert_eq!(drain(&mut s), 8);
        assert_eq!(s.clock_ns(), Some(40 * S));
        key(&mut s, '-');
        assert_eq!(s.speed(), 100.0);
        key(&mut s, '-');
        key(&mut s, '-');
        assert_eq!(s.speed(), 1.0);
        key(&mut s, '-');
        assert_eq!(s.speed(), 1.0);
        let (mut s, _t) = source(3.0);
        key(&mut s, '-');
        assert_eq!(s.speed(), 1.0);
    }

    #[test]
    fn pause_holds_and_step_gives_one() {
        let (mut s, t) = source(1.0);
        assert_eq!(drain(&mut s), 1);
        assert!(s.set_paused(true));
        adv(&t, 30.0);
        assert_eq!(drain(&mut s), 0);
        assert_eq!(s.clock_ns(), Some(0));
        key(&mut s, '.');
        assert_eq!(drain(&mut s), 1);
        assert_eq!(s.clock_ns(), Some(S));
        key(&mut s, '.');
        key(&mut s, '.');
        key(&mut s, '.');
        assert_eq!(drain(&mut s), 3);
        assert_eq!(s.position(), 5);
        // Two events at 5 s: a step still gives one.
        assert_eq!(s.clock_ns(), Some(5 * S));
        s.set_paused(false);
        adv(&t, 1.0);
        assert_eq!(drain(&mut s), 0);
        assert_eq!(s.clock_ns(), Some(6 * S));
    }

    #[test]
    fn next_failure_releases_up_to_it() {
        let (mut s, _t) = source(1.0);
        s.set_paused(true);
        key(&mut s, 'n');
        assert_eq!(drain(&mut s), 4);
        assert_eq!(s.clock_ns(), Some(5 * S));
        key(&mut s, 'n');
        assert_eq!(drain(&mut s), 3);
        assert_eq!(s.clock_ns(), Some(30 * S));
        key(&mut s, 'n');
        assert_eq!(drain(&mut s), 0);
        assert!(s.status().detail.contains("no bind failure after 00:30.0"));
    }

    #[test]
    fn seek_forward_and_back() {
        let (mut s, _t) = source(1.0);
        s.set_paused(true);
        key(&mut s, ']');
        assert!(!s.take_reset());
        assert_eq!(drain(&mut s), 5);
        assert_eq!(s.clock_ns(), Some(10 * S));
        key(&mut s, ']');
        key(&mut s, ']');
        assert_eq!(drain(&mut s), 2);
        assert_eq!(s.clock_ns(), Some(30 * S));
        key(&mut s, '[');
        assert!(s.take_reset());
        assert!(!s.take_reset());
        // From the start up to 20 s, at once.
        assert_eq!(drain(&mut s), 6);
        assert_eq!(s.clock_ns(), Some(20 * S));
        key(&mut s, '[');
        key(&mut s, '[');
        key(&mut s, '[');
        assert!(s.take_reset());
        assert_eq!(drain(&mut s), 1);
        assert_eq!(s.clock_ns(), Some(0));
        key(&mut s, 'n');
        drain(&mut s);
        key(&mut s, '0');
        assert!(s.take_reset());
        assert_eq!(s.position(), 0);
        assert_eq!(s.clock_ns(), Some(0));
        assert!(!s.on_key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
