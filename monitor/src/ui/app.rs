//! The dashboard's state, apart from the [`Model`]: what the user chose
//! (focus, selection, filter, sort, pause) and what the views derive from
//! events over time. Pure: no terminal, no wall clock.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::cli::Filters;
use crate::event::{BindFailed, Endpoint, Event, Kind, Proto, TcpState};
use crate::model::{Model, MAX_FAILURES};

use super::filter::TextFilter;
use super::rows;
use super::source::{Banner, SourceStatus};

/// Lines the event log keeps.
pub const MAX_LOG: usize = 5_000;
/// Seconds of TIME_WAIT / CLOSE_WAIT history per port.
pub const HISTORY_SECS: usize = 180;
/// Connections refused this long after a failure count against it.
pub const REFUSED_WINDOW_NS: u64 = 60_000_000_000;
/// How long a new failure stands out.
pub const HIGHLIGHT_MS: u64 = 4_000;
/// Events kept while paused; more are skipped (and counted).
pub const PAUSE_QUEUE: usize = 200_000;
/// Ports with a history at most.
const MAX_SERIES: usize = 4096;
/// CLOSE_WAIT entry times kept at most.
const MAX_CW_SINCE: usize = 200_000;
/// How long a message stays in the status line.
const MESSAGE_MS: u64 = 4_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pane {
    Failures,
    Ports,
    CloseWait,
    Log,
}

impl Pane {
    pub const ALL: [Pane; 4] = [Pane::Failures, Pane::Ports, Pane::CloseWait, Pane::Log];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Failures => "Bind failures",
            Pane::Ports => "Ports",
            Pane::CloseWait => "CLOSE_WAIT by process",
            Pane::Log => "Event log",
        }
    }

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    pub fn next(self) -> Pane {
        Pane::ALL[(self.index() + 1) % Pane::ALL.len()]
    }

    pub fn prev(self) -> Pane {
        Pane::ALL[(self.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
    }
}

/// How the Ports view is sorted (`s` cycles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSort {
    TimeWait,
    CloseWait,
    Established,
    Listen,
    Failures,
    Port,
}

impl PortSort {
    pub fn next(self) -> PortSort {
        use PortSort::*;
        match self {
            TimeWait => CloseWait,
            CloseWait => Established,
            Established => Listen,
            Listen => Failures,
            Failures => Port,
            Port => TimeWait,
        }
    }

    pub fn label(self) -> &'static str {
        use PortSort::*;
        match self {
            TimeWait => "TIME_WAIT",
            CloseWait => "CLOSE_WAIT",
            Established => "ESTABLISHED",
            Listen => "LISTEN",
            Failures => "failures",
            Port => "port",
        }
    }
}

/// What the caller should do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// `p`: the new pause state.
    Pause(bool),
    /// `r`: start or stop recording.
    ToggleRecord,
    /// A key the dashboard does not use: the source may (replay keys).
    Source(KeyEvent),
}

/// One bind failure as the views show it.
#[derive(Clone, Debug)]
pub struct FailureRow {
    /// Order of arrival, from 1.
    pub seq: u64,
    pub event: Event,
    /// UI clock (ms) when it arrived: new failures stand out for a while.
    pub arrived_ms: u64,
    /// SYN_SENT -> CLOSE transitions towards the failed port within
    /// [`REFUSED_WINDOW_NS`] after it: clients that got "connection refused"
    /// (or gave up) because nothing listens where this failure wanted to.
    pub refused: u32,
}

impl FailureRow {
    pub fn bind(&self) -> &BindFailed {
        match &self.event.kind {
            Kind::BindFailed(b) => b,
            _ => unreachable!("a FailureRow holds a bind_failed event"),
        }
    }
}

/// TIME_WAIT and CLOSE_WAIT counts of one (netns, port), one sample per
/// second of event time, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub tw: VecDeque<u32>,
    pub cw: VecDeque<u32>,
    /// Samples since the last non-zero one.
    idle: usize,
}

/// The dashboard's state.
#[derive(Debug)]
pub struct App {
    pub focus: Pane,
    /// The focused pane fills the screen (for Failures: the detail).
    pub zoom: bool,
    pub help: bool,
    pub filter: TextFilter,
    /// The filter being typed after `/` (applied as it is typed), with the
    /// one to go back to on Esc.
    pub editing: Option<(String, TextFilter)>,
    pub paused: bool,
    pub sort: PortSort,
    /// Network namespaces shown (empty: all).
    pub scope: Vec<u32>,
    /// --port / --pid / --comm of the command line.
    pub cli: Filters,
    /// The colours to use (NO_COLOR: none).
    pub color: bool,
    pub source: SourceStatus,
    pub banner: Option<Banner>,
    /// The source's own keys, for the help screen.
    pub source_keys: Vec<(String, String)>,
    /// Events waiting while paused, and how many did not fit.
    pub queued: usize,
    pub skipped: u64,
    /// `lost` counts still in the pause queue (shown at once all the same).
    pub lost_queued: u64,
    message: Option<(String, u64)>,

    failures: VecDeque<FailureRow>,
    next_seq: u64,
    /// Selected failure by seq; None: follow the newest.
    selected_failure: Option<u64>,
    pub(crate) sel_ports: usize,
    pub(crate) sel_cw: usize,
    /// Log lines scrolled back from the newest (0: follow).
    pub(crate) log_back: usize,
    pub(crate) detail_scroll: u16,
    log: VecDeque<(u64, Event)>,
    log_seq: u64,

    series: HashMap<(u32, u16), Series>,
    last_sample_sec: Option<u64>,
    /// Events per second of event time: (second, count), the last few.
    rate: VecDeque<(u64, u64)>,
    /// When each CLOSE_WAIT socket entered CLOSE_WAIT: (netns, cookie) -> ns.
    cw_since: HashMap<(u32, u64), u64>,
    netns_seen: BTreeSet<u32>,
    clock_ns: u64,
    ui_ms: u64,
    events: u64,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl App {
    pub fn new() -> App {
        App {
            focus: Pane::Failures,
            zoom: false,
            help: false,
            filter: TextFilter::default(),
            editing: None,
            paused: false,
            sort: PortSort::TimeWait,
            scope: Vec::new(),
            cli: Filters::default(),
            color: !no_color_env(),
            source: SourceStatus::default(),
            banner: None,
            source_keys: Vec::new(),
            queued: 0,
            skipped: 0,
            lost_queued: 0,
            message: None,
            failures: VecDeque::new(),
            next_seq: 1,
            selected_failure: None,
            sel_ports: 0,
            sel_cw: 0,
            log_back: 0,
            detail_scroll: 0,
            log: VecDeque::new(),
            log_seq: 0,
            series: HashMap::new(),
            last_sample_sec: None,
            rate: VecDeque::new(),
            cw_since: HashMap::new(),
            netns_seen: BTreeSet::new(),
            clock_ns: 0,
            ui_ms: 0,
            events: 0,
        }
    }

    /// Forget every event (a replay seeking backwards), keep the user's
    /// choices.
    pub fn reset_data(&mut self) {
        let keep = App {
            focus: self.focus,
            zoom: self.zoom,
            help: self.help,
            filter: std::mem::take(&mut self.filter),
            editing: self.editing.take(),
            paused: self.paused,
            sort: self.sort,
            scope: std::mem::take(&mut self.scope),
            cli: std::mem::take(&mut self.cli),
            color: self.color,
            source: std::mem::take(&mut self.source),
            banner: self.banner.take(),
            source_keys: std::mem::take(&mut self.source_keys),
            ui_ms: self.ui_ms,
            ..App::new()
        };
        *self = keep;
    }

    // --- inputs -------------------------------------------------------

    /// An event that has just gone into `model` (call after `model.apply`).
    pub fn on_event(&mut self, ev: &Event, model: &Model) {
        self.events += 1;
        let c = &ev.common;
        if !matches!(ev.kind, Kind::Lost(_)) {
            self.netns_seen.insert(c.netns);
        }
        let sec = c.ts_ns / 1_000_000_000;
        match self.rate.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => {
                self.rate.push_back((sec, 1));
                while self.rate.len() > 8 {
                    self.rate.pop_front();
                }
            }
        }
        match &ev.kind {
            Kind::BindFailed(_) => {
                self.failures.push_back(FailureRow {
                    seq: self.next_seq,
                    event: ev.clone(),
                    arrived_ms: self.ui_ms,
                    refused: 0,
                });
                self.next_seq += 1;
                while self.failures.len() > MAX_FAILURES {
                    let gone = self.failures.pop_front();
                    if let (Some(g), Some(sel)) = (gone, self.selected_failure) {
                        if g.seq == sel {
                            self.selected_failure = None;
                        }
                    }
                }
            }
            Kind::State(s) => {
                if s.old == TcpState::SynSent && s.new == TcpState::Close {
                    self.count_refused(c.netns, c.ts_ns, s.remote);
                }
                let key = (c.netns, s.cookie);
                if s.new == TcpState::CloseWait {
                    if self.cw_since.len() < MAX_CW_SINCE {
                        self.cw_since.entry(key).or_insert(c.ts_ns);
                    }
                } else {
                    self.cw_since.remove(&key);
                }
            }
            _ => {}
        }
        self.log_seq += 1;
        self.log.push_back((self.log_seq, ev.clone()));
        while self.log.len() > MAX_LOG {
            self.log.pop_front();
        }
        self.set_clock(c.ts_ns, model);
    }

    /// A client's connect() towards `remote` ended SYN_SENT -> CLOSE at
    /// `ts`: it counts against the newest failure that wanted that port (and
    /// that address, unless it asked for a wildcard) in that namespace
    /// within the window before.
    fn count_refused(&mut self, netns: u32, ts: u64, remote: Endpoint) {
        for f in self.failures.iter_mut().rev() {
            let c = &f.event.common;
            if c.ts_ns > ts {
                continue;
            }
            if ts - c.ts_ns > REFUSED_WINDOW_NS {
                break;
            }
            let Kind::BindFailed(b) = &f.event.kind else {
                continue;
            };
            if c.netns != netns || c.proto != Proto::Tcp || b.requested.port() != remote.port() {
                continue;
            }
            if b.requested.is_unspecified() || b.requested.ip() == remote.ip() {
                f.refused += 1;
                return;
            }
        }
    }

    /// The clock moved on (boot-time ns): TIME_WAIT countdowns, and one
    /// history sample per second of event time.
    pub fn set_clock(&mut self, now_ns: u64, model: &Model) {
        self.clock_ns = self.clock_ns.max(now_ns);
        let sec = self.clock_ns / 1_000_000_000;
        match self.last_sample_sec {
            Some(last) if sec <= last => {}
            last => {
                let steps = last.map_or(1, |l| (sec - l).min(HISTORY_SECS as u64) as usize);
                self.sample(model, steps);
                self.last_sample_sec = Some(sec);
            }
        }
    }

    /// The UI clock (ms, monotonic): only for highlights and messages.
    pub fn set_ui_ms(&mut self, ms: u64) {
        self.ui_ms = self.ui_ms.max(ms);
        if self
            .message
            .as_ref()
            .is_some_and(|(_, until)| *until <= self.ui_ms)
        {
            self.message = None;
        }
    }

    /// Show `text` in the status line for a few seconds.
    pub fn say(&mut self, text: impl Into<String>) {
        self.message = Some((text.into(), self.ui_ms + MESSAGE_MS));
    }

    fn sample(&mut self, model: &Model, steps: usize) {
        let mut counts: HashMap<(u32, u16), (u32, u32)> = HashMap::new();
        for (&netns, ns) in model.namespaces() {
            if !self.in_scope(netns) {
                continue;
            }
            let counted = ns.counted_timewait();
            for (&port, &n) in counted.into_iter().flatten() {
                counts.entry((netns, port)).or_default().0 += n;
            }
            for t in ns.sockets() {
                if t.sock.proto != Proto::Tcp {
                    continue;
                }
                if t.sock.timewait && counted.is_some() {
                    continue;
                }
                if t.sock.timewait {
                    counts.entry((netns, t.sock.port)).or_default().0 += 1;
                } else if t.sock.state == TcpState::CloseWait {
                    counts.entry((netns, t.sock.port)).or_default().1 += 1;
                }
            }
        }
        let push = |s: &mut Series, (tw, cw): (u32, u32)| {
            for _ in 0..steps {
                s.tw.push_back(tw);
                s.cw.push_back(cw);
            }
            while s.tw.len() > HISTORY_SECS {
                s.tw.pop_front();
                s.cw.pop_front();
            }
            if tw == 0 && cw == 0 {
                s.idle += steps;
            } else {
                s.idle = 0;
            }
        };
        for (key, s) in self.series.iter_mut() {
            push(s, counts.remove(key).unwrap_or((0, 0)));
        }
        self.series.retain(|_, s| s.idle < HISTORY_SECS);
        for (key, c) in counts {
            if self.series.len() >= MAX_SERIES {
                break;
            }
            let mut s = Series::default();
            push(&mut s, c);
            self.series.insert(key, s);
        }
    }

    pub fn in_scope(&self, netns: u32) -> bool {
        self.scope.is_empty() || self.scope.contains(&netns)
    }

    /// A key. The model gives the lengths of the lists.
    pub fn on_key(&mut self, key: KeyEvent, model: &Model) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            return Action::Quit;
        }
        if let Some((text, before)) = &mut self.editing {
            match key.code {
                KeyCode::Enter => self.editing = None,
                KeyCode::Esc => {
                    self.filter = before.clone();
                    self.editing = None;
                }
                KeyCode::Backspace => {
                    text.pop();
                    self.filter = TextFilter::new(text);
                }
                KeyCode::Char('u') if ctrl => {
                    text.clear();
                    self.filter = TextFilter::default();
                }
                KeyCode::Char(ch) if !ctrl => {
                    text.push(ch);
                    self.filter = TextFilter::new(text);
                }
                _ => {}
            }
            self.clamp(model);
            return Action::None;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                _ => Action::None,
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Tab => {
                self.focus = self.focus.next();
                self.zoom = false;
            }
            KeyCode::BackTab => {
                self.focus = self.focus.prev();
                self.zoom = false;
            }
            KeyCode::Char(c @ '1'..='4') => {
                self.focus = Pane::ALL[(c as u8 - b'1') as usize];
                self.zoom = false;
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_by(model, -1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(model, 1),
            KeyCode::PageUp => self.move_by(model, -10),
            KeyCode::PageDown => self.move_by(model, 10),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(model, isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_by(model, isize::MAX / 2),
            KeyCode::Enter => {
                self.zoom = !self.zoom;
                self.detail_scroll = 0;
            }
            KeyCode::Esc => {
                if self.zoom {
                    self.zoom = false;
                } else if !self.filter.is_empty() {
                    self.filter = TextFilter::default();
                    self.clamp(model);
                }
            }
            KeyCode::Char('/') => {
                self.editing = Some((self.filter.text().to_string(), self.filter.clone()));
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                return Action::Pause(!self.paused);
            }
            KeyCode::Char('r') => return Action::ToggleRecord,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.sel_ports = 0;
                if self.focus != Pane::Ports {
                    self.say(format!("ports sorted by {}", self.sort.label()));
                }
            }
            KeyCode::Char('J') => self.detail_scroll = self.detail_scroll.saturating_add(1),
            KeyCode::Char('K') => self.detail_scroll = self.detail_scroll.saturating_sub(1),
            _ => return Action::Source(key),
        }
        Action::None
    }

    fn move_by(&mut self, model: &Model, delta: isize) {
        let step = |cur: usize, len: usize| -> usize {
            if len == 0 {
                return 0;
            }
            (cur as isize)
                .saturating_add(delta)
                .clamp(0, len as isize - 1) as usize
        };
        match self.focus {
            Pane::Failures => {
                let vis = rows::failures(self);
                if vis.is_empty() {
                    return;
                }
                let cur = self.selected_failure_index(&vis);
                let new = step(cur, vis.len());
                // Index 0 is the newest: staying there follows new ones.
                self.selected_failure = (new != 0).then(|| vis[new].seq);
                self.detail_scroll = 0;
            }
            Pane::Ports => {
                let n = rows::ports(self, model).len();
                self.sel_ports = step(self.sel_ports, n);
            }
            Pane::CloseWait => {
                let n = rows::close_wait(self, model).len();
                self.sel_cw = step(self.sel_cw, n);
            }
            Pane::Log => {
                // Up goes back in time.
                let n = rows::log(self).len();
                let back = (self.log_back as isize).saturating_sub(delta);
                self.log_back = back.clamp(0, n.saturating_sub(1) as isize) as usize;
            }
        }
    }

    /// Keep selections inside their lists after the filter changed.
    fn clamp(&mut self, model: &Model) {
        let n = rows::ports(self, model).len();
        self.sel_ports = self.sel_ports.min(n.saturating_sub(1));
        let n = rows::close_wait(self, model).len();
        self.sel_cw = self.sel_cw.min(n.saturating_sub(1));
        self.log_back = 0;
    }

    pub(crate) fn selected_failure_index(&self, visible: &[&FailureRow]) -> usize {
        match self.selected_failure {
            None => 0,
            Some(seq) => visible.iter().position(|f| f.seq == seq).unwrap_or(0),
        }
    }

    // --- what the views read --------------------------------------------

    /// Failures, oldest first (all of them; rows::failures filters).
    pub fn all_failures(&self) -> &VecDeque<FailureRow> {
        &self.failures
    }

    /// The failure the detail shows.
    pub fn selected_failure(&self) -> Option<&FailureRow> {
        let vis = rows::failures(self);
        vis.get(self.selected_failure_index(&vis)).copied()
    }

    /// Whether the selection follows the newest failure.
    pub fn follows_newest(&self) -> bool {
        self.selected_failure.is_none()
    }

    pub fn log_lines(&self) -> &VecDeque<(u64, Event)> {
        &self.log
    }

    pub fn series(&self, netns: u32, port: u16) -> Option<&Series> {
        self.series.get(&(netns, port))
    }

    pub(crate) fn series_keys(&self) -> impl Iterator<Item = &(u32, u16)> {
        self.series.keys()
    }

    pub fn cw_since(&self, netns: u32, cookie: u64) -> Option<u64> {
        self.cw_since.get(&(netns, cookie)).copied()
    }

    /// Boot-time ns: the later of the newest event and the source's clock.
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    pub fn ui_ms(&self) -> u64 {
        self.ui_ms
    }

    pub fn is_new(&self, f: &FailureRow) -> bool {
        self.ui_ms.saturating_sub(f.arrived_ms) < HIGHLIGHT_MS
    }

    /// Events in the last complete second of event time.
    pub fn events_per_sec(&self) -> u64 {
        let now = self.clock_ns / 1_000_000_000;
        self.rate
            .iter()
            .find(|(s, _)| *s + 1 == now)
            .map_or(0, |(_, n)| *n)
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn netns_seen(&self) -> &BTreeSet<u32> {
        &self.netns_seen
    }

    pub fn message(&self) -> Option<&str> {
        self.message.as_ref().map(|(m, _)| m.as_str())
    }
}

/// A [`Model`] and an [`App`] fed together: the dashboard's input is
/// [`Dashboard::feed`] (each event, in order, as a correlator emits it) and
/// [`Dashboard::tick`] (clocks). Pausing queues events (bounded) instead of
/// applying them, so the views hold still; resuming applies the queue in
/// batches ([`Dashboard::pump`]).
#[derive(Debug, Default)]
pub struct Dashboard {
    pub model: Model,
    pub app: App,
    queue: VecDeque<Event>,
    /// The source itself holds events back while paused (replay).
    source_pauses: bool,
}

impl Dashboard {
    pub fn new(app: App) -> Dashboard {
        Dashboard {
            model: Model::new(),
            app,
            queue: VecDeque::new(),
            source_pauses: false,
        }
    }

    /// One event in. Events of namespaces out of scope are dropped (`lost`
    /// never is).
    pub fn feed(&mut self, ev: Event) {
        let lost = match &ev.kind {
            Kind::Lost(l) => Some(l.count),
            _ => None,
        };
        if lost.is_none() && !self.app.in_scope(ev.common.netns) {
            return;
        }
        if (self.app.paused && !self.source_pauses) || !self.queue.is_empty() {
            if self.queue.len() >= PAUSE_QUEUE {
                self.app.skipped += 1;
                if let Some(n) = lost {
                    // Still never hidden.
                    self.model.lost += n;
                }
                return;
            }
            self.app.lost_queued += lost.unwrap_or(0);
            self.queue.push_back(ev);
            self.app.queued = self.queue.len();
            return;
        }
        self.apply(&ev);
    }

    fn apply(&mut self, ev: &Event) {
        self.model.apply(ev);
        self.app.on_event(ev, &self.model);
    }

    /// What a census (light mode) found changed: the model follows it, the
    /// event log does not (nothing happened that an event would tell).
    pub fn census(&mut self, u: &crate::census::CensusUpdate) {
        for ns in &u.namespaces {
            if !self.app.in_scope(ns.netns) {
                continue;
            }
            let netns = ns.netns;
            for &cookie in &ns.gone {
                self.model.forget(netns, cookie);
                self.app.cw_since.remove(&(netns, cookie));
            }
            for s in &ns.seen {
                self.model.census_seen(netns, Proto::Tcp, s, u.ts_ns);
                let key = (netns, s.cookie);
                if !s.timewait && s.state == TcpState::CloseWait {
                    // Entered CLOSE_WAIT since the last census (or was
                    // first seen in it).
                    if self.app.cw_since.len() < MAX_CW_SINCE {
                        self.app.cw_since.entry(key).or_insert(u.ts_ns);
                    }
                } else {
                    self.app.cw_since.remove(&key);
                }
            }
            self.model.set_counted_timewait(netns, &ns.timewait);
            self.model.shrink_namespace(netns);
            self.app.netns_seen.insert(netns);
        }
        self.app
            .set_clock(u.ts_ns.max(self.model.now_ns), &self.model);
    }

    /// Apply up to `max` queued events (after a pause); how many are left.
    pub fn pump(&mut self, max: usize) -> usize {
        if self.app.paused && !self.source_pauses {
            return self.queue.len();
        }
        for _ in 0..max {
            let Some(ev) = self.queue.pop_front() else {
                break;
            };
            if let Kind::Lost(l) = &ev.kind {
                self.app.lost_queued = self.app.lost_queued.saturating_sub(l.count);
            }
            self.apply(&ev);
        }
        self.app.queued = self.queue.len();
        self.queue.len()
    }

    /// Pause or resume; `source_pauses`: the source holds events back itself.
    pub fn set_paused(&mut self, paused: bool, source_pauses: bool) {
        self.app.paused = paused;
        self.source_pauses = source_pauses;
        if paused {
            self.app.say(if source_pauses {
                "paused".to_string()
            } else {
                "paused: the view holds still, new events wait in a queue".to_string()
            });
        } else {
            self.app.say("resumed");
        }
    }

    /// Clocks: the source's (boot-time ns, if it has one) and the UI's (ms).
    /// While paused the event clock holds still.
    pub fn tick(&mut self, source_clock_ns: Option<u64>, ui_ms: u64) {
        self.app.set_ui_ms(ui_ms);
        if self.app.paused {
            return;
        }
        let now = source_clock_ns.unwrap_or(0).max(self.model.now_ns);
        self.app.set_clock(now, &self.model);
    }

    /// Total `lost`, including what waits in the pause queue.
    pub fn lost(&self) -> u64 {
        self.model.lost + self.app.lost_queued
    }

    /// Start over (a replay seeking backwards), keeping the user's choices.
    pub fn reset(&mut self) {
        self.model = Model::new();
        self.queue.clear();
        self.app.reset_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::{CensusUpdate, NsChanges};
    use crate::event::SocketSeen;

    fn sock(port: u16, state: TcpState, timewait: bool, cookie: u64) -> SocketSeen {
        let ip = "127.0.0.1".parse().unwrap();
        SocketSeen {
            local: Endpoint::new(ip, port),
            remote: (state != TcpState::Listen).then(|| Endpoint::new(ip, 40_000 + cookie as u16)),
            state,
            timewait,
            uid: 0,
            inode: if timewait { 0 } else { cookie + 100 },
            cookie,
            reuseaddr: None,
            reuseport: None,
            v6only: false,
            bound_dev_if: 0,
            expires_in_ms: timewait.then_some(60_000),
            owner: None,
            gone: false,
            shared_with: Vec::new(),
        }
    }

    fn update(
        ts_s: u64,
        seen: Vec<SocketSeen>,
        gone: Vec<u64>,
        tw: Vec<(u16, u32)>,
    ) -> CensusUpdate {
        CensusUpdate {
            ts_ns: ts_s * 1_000_000_000,
            namespaces: vec![NsChanges {
                netns: 7,
                seen,
                gone,
                timewait: tw,
            }],
            ..CensusUpdate::default()
        }
    }

    /// (port, LISTEN, ESTAB, CLOSE_WAIT, TIME_WAIT) of every row.
    fn counts(d: &Dashboard) -> Vec<(u16, u32, u32, u32, u32)> {
        let mut v: Vec<_> = rows::ports(&d.app, &d.model)
            .into_iter()
            .map(|r| (r.port, r.listen, r.established, r.close_wait, r.time_wait))
            .collect();
        v.sort();
        v
    }

    /// Light mode: what a census says is what the views show; a socket
    /// that changed state (same cookie) is counted once, in its new state,
    /// one no longer listed is gone, timewait socks are the census's count
    /// (a failure's evidence of one is not counted again). The event log
    /// stays empty.
    #[test]
    fn census_changes_drive_the_port_counts() {
        let mut d = Dashboard::new(App::new());
        d.census(&update(
            10,
            vec![
                sock(80, TcpState::Listen, false, 1),
                sock(80, TcpState::Established, false, 2),
                sock(80, TcpState::Established, false, 3),
            ],
            vec![],
            vec![],
        ));
        assert_eq!(counts(&d), vec![(80, 1, 2, 0, 0)]);
        // 3 became a timewait sock; 2 is in CLOSE_WAIT.
        d.census(&update(
            11,
            vec![sock(80, TcpState::CloseWait, false, 2)],
            vec![3],
            vec![(80, 1), (40_003, 2)],
        ));
        assert_eq!(counts(&d), vec![(80, 1, 0, 1, 1), (40_003, 0, 0, 0, 2)]);
        assert_eq!(d.app.cw_since(7, 2), Some(11_000_000_000));
        // A failure's evidence names the timewait sock on 80.
        let mut tw = sock(80, TcpState::TimeWait, true, 3);
        tw.expires_in_ms = Some(50_000);
        d.feed(Event {
            common: crate::event::Common {
                ts: String::new(),
                ts_ns: 11_500_000_000,
                netns: 7,
                proto: Proto::Tcp,
                pid: None,
                comm: None,
                container: None,
            },
            kind: Kind::Socket(tw),
        });
        assert_eq!(counts(&d), vec![(80, 1, 0, 1, 1), (40_003, 0, 0, 0, 2)]);
        d.census(&update(12, vec![], vec![2, 3], vec![]));
        // 40003 stays listed for its TIME_WAIT history.
        assert_eq!(counts(&d), vec![(80, 1, 0, 0, 0), (40_003, 0, 0, 0, 0)]);
        assert_eq!(d.app.cw_since(7, 2), None);
        assert_eq!(d.app.log_lines().len(), 1, "only the evidence");
        assert_eq!(d.model.socket_count(), 1);
    }
}
