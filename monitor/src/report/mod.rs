//! `twmon report`: a postmortem summary of a trace.
//!
//! The events are replayed in file order through a small socket tracker
//! that names sockets the way the [`Model`](crate::model::Model) does (full
//! sockets by cookie, or inode before they have one; timewait socks by their
//! 4-tuple) and keeps, per port, how many sockets are in TIME_WAIT and in
//! CLOSE_WAIT at each moment, so the peaks are exact and the whole replay is
//! linear in the events. Failures already carry their holders and diagnosis
//! (the recorder ran the correlator), so they are reported as recorded.
//!
//! Deterministic: only the trace goes in (never the wall clock), every map is
//! ordered, every list sorted with a full tie-break; the same trace gives
//! the same report byte for byte.

pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::{Diagnosis, Endpoint, Event, Holder, Kind, Process, Proto, Syscall, TcpState};
use crate::probe::ModeInfo;
use crate::trace::{Header, SnapshotInfo, TraceError, TraceFilters, TraceReader};

pub use render::{render_json, render_markdown, render_text};

/// Failure groups kept (the rest are counted).
pub const MAX_FAILURE_GROUPS: usize = 10_000;
/// Rows of the port and process tables.
pub const TOP: usize = 10;
/// A timewait sock this far past its expiry without a close event is gone
/// (as in the model).
const TW_GRACE_NS: u64 = 5_000_000_000;
/// A socket that stayed in CLOSE_WAIT this long (or to the end of the trace)
/// was held; shorter is a normal close.
pub const CW_HELD_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub trace: TraceInfo,
    /// None when the trace holds no event.
    pub range: Option<Range>,
    pub events: EventCounts,
    /// Every bind failure, identical ones (same process, call, endpoint,
    /// error and diagnosis) grouped, in the order they first happened.
    pub failures: Vec<FailureGroup>,
    /// Failures beyond [`MAX_FAILURE_GROUPS`] groups (counted, not listed).
    pub failures_not_listed: u64,
    /// Failures per diagnosis code.
    pub failures_by_diagnosis: BTreeMap<String, u64>,
    pub time_wait: StatePeaks,
    pub close_wait: StatePeaks,
    /// Processes that left the most TIME_WAIT (`timewait_open.left_by`).
    pub timewait_left_by: Vec<ProcessCount>,
    /// Processes that held sockets in CLOSE_WAIT for a second or more, to
    /// the end of the trace, or while a bind failed on them; most still held
    /// first.
    pub close_wait_holders: Vec<CloseWaitHolder>,
    pub lost: LostCounts,
    /// Per minute (UTC), minutes with events only.
    pub timeline: Vec<Minute>,
    /// Where and why the reading stopped early (damage), one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Other things worth knowing about the trace, one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TraceInfo {
    /// The file as given.
    pub file: String,
    pub version: u64,
    pub host: String,
    pub kernel: String,
    pub started: String,
    pub twmon_version: String,
    pub mode: Option<ModeInfo>,
    pub recording: String,
    /// Files read (rotated parts).
    pub parts: u32,
    pub compressed: bool,
    #[serde(skip_serializing_if = "TraceFilters::is_empty")]
    pub filters: TraceFilters,
    /// The starting snapshot of the first part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Range {
    pub first: String,
    pub last: String,
    pub first_ns: u64,
    pub last_ns: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventCounts {
    pub total: u64,
    pub by_type: BTreeMap<String, u64>,
    /// Lines skipped by the reader (unknown event types, later headers) and
    /// socket events carried over at a rotation.
    pub skipped: u64,
    pub namespaces: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureGroup {
    pub first: String,
    pub last: String,
    pub count: u64,
    pub netns: u32,
    pub proto: Proto,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub syscall: Syscall,
    pub requested: Endpoint,
    pub errno: i32,
    pub error: String,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
    /// The device the new socket was bound to (SO_BINDTODEVICE), by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// As recorded with the first failure of the group.
    pub diagnosis: Option<Diagnosis>,
    pub holders: Vec<Holder>,
    /// Holders the event counted and did not list.
    #[serde(skip_serializing_if = "crate::event::is_zero")]
    pub holders_omitted: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatePeaks {
    /// The most sockets in this state at once, over every namespace.
    pub peak: u64,
    pub peak_at: Option<String>,
    /// Sockets that entered this state.
    pub entered: u64,
    /// In this state when the trace ends.
    pub at_end: u64,
    /// The ports with the highest peaks, highest first.
    pub ports: Vec<PortPeak>,
}

/// Which end of the sockets the port is: "local" (sockets of a server on
/// this port) or "remote" (client sockets connected to this port). Each
/// socket is counted under one port: the end a listener in the trace has,
/// else the lower port number (ephemeral ports are the high ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortPeak {
    pub netns: u32,
    pub port: u16,
    pub side: Side,
    pub peak: u64,
    pub peak_at: String,
    pub entered: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessCount {
    /// None: the trace does not say.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloseWaitHolder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Sockets it held in CLOSE_WAIT.
    pub sockets: u64,
    /// Their local ports (at most 10).
    pub ports: Vec<u16>,
    /// The longest time one stayed in CLOSE_WAIT (to the end of the trace
    /// for those still there).
    pub longest_ms: u64,
    pub still_at_end: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LostCounts {
    pub total: u64,
    pub by_stream: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Minute {
    /// "2026-11-21T23:01" (UTC).
    pub minute: String,
    pub events: u64,
    pub failures: u64,
    pub timewait_opened: u64,
    pub timewait_closed: u64,
    pub lost: u64,
}

// --- the tracker -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Tw(u32, Proto, Endpoint, Endpoint),
    Cookie(u32, u64),
    Inode(u32, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    TimeWait,
    CloseWait,
    Other,
}

#[derive(Clone, Debug)]
struct Sock {
    class: Class,
    netns: u32,
    local: Endpoint,
    remote: Option<Endpoint>,
    owner: Option<Process>,
    expires_at: Option<u64>,
    /// Index into `cw_records` while in CLOSE_WAIT.
    cw: Option<usize>,
    /// The port counter it is counted in (TIME_WAIT, CLOSE_WAIT).
    counted: Option<CounterKey>,
}

type CounterKey = (Class, u32, u16, Side);

#[derive(Clone, Debug)]
struct CwRecord {
    owner: Option<Process>,
    /// A failure named it as a holder.
    blamed: bool,
    port: u16,
    since_ns: u64,
    until_ns: Option<u64>,
}

#[derive(Default)]
struct Peak {
    cur: u64,
    peak: u64,
    peak_at: String,
    entered: u64,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct GroupKey {
    netns: u32,
    proto: Proto,
    pid: Option<u32>,
    comm: Option<String>,
    syscall: Syscall,
    requested: Endpoint,
    errno: i32,
    code: Option<crate::event::DiagnosisCode>,
    /// The new socket's options: the same call with other options is
    /// another attempt, which its diagnosis may tell otherwise.
    options: (bool, bool, bool, u32),
}

/// Builds a [`Report`] from events in file order.
#[derive(Default)]
pub struct ReportBuilder {
    trace: TraceInfo,
    events: EventCounts,
    namespaces: BTreeSet<u32>,
    first: Option<(u64, String)>,
    last: Option<(u64, String)>,
    now_ns: u64,
    socks: HashMap<Key, Sock>,
    /// Open CLOSE_WAIT sockets by (netns, local, remote): holders name them
    /// by endpoints only.
    cw_by_tuple: HashMap<(u32, Endpoint, Option<Endpoint>), Key>,
    cw_records: Vec<CwRecord>,
    ports: HashMap<CounterKey, Peak>,
    /// (netns, port) of every listener the trace shows.
    listeners: std::collections::HashSet<(u32, u16)>,
    totals: HashMap<Class, Peak>,
    groups: Vec<FailureGroup>,
    group_index: HashMap<GroupKey, usize>,
    failures_not_listed: u64,
    by_diagnosis: BTreeMap<String, u64>,
    left_by: HashMap<Option<Process>, u64>,
    lost: LostCounts,
    minutes: BTreeMap<String, Minute>,
    stopped: Option<String>,
    notes: Vec<String>,
    /// Socket events still to skip at the start of a later part (carried
    /// over at a rotation: already known).
    skip_carried: u64,
}

impl ReportBuilder {
    pub fn new() -> ReportBuilder {
        ReportBuilder::default()
    }

    /// A file begins (call before its events). The first one names the trace.
    pub fn part(&mut self, name: &str, h: &Header, compressed: bool) {
        self.trace.parts += 1;
        self.trace.compressed |= compressed;
        if self.trace.parts == 1 {
            self.trace = TraceInfo {
                file: name.to_string(),
                version: h.twmon_trace,
                host: h.host.clone(),
                kernel: h.kernel.clone(),
                started: h.started.clone(),
                twmon_version: h.twmon_version.clone(),
                mode: h.mode.clone(),
                recording: h.recording.clone(),
                parts: 1,
                compressed,
                filters: h.filters.clone(),
                snapshot: h.snapshot.clone(),
            };
            if let Some(s) = &h.snapshot {
                // What the snapshot could not see (guessed socket options are
                // routine, and the failures say when they mattered).
                for n in s.notes.iter().filter(|n| !n.contains("were guessed")) {
                    self.notes.push(format!("starting snapshot: {n}"));
                }
            }
        } else if h
            .snapshot
            .as_ref()
            .is_some_and(|s| s.source == "carried_over")
        {
            self.skip_carried = h.snapshot.as_ref().map_or(0, |s| s.sockets);
        }
    }

    /// The reader stopped at damage.
    pub fn stopped(&mut self, e: &TraceError) {
        self.stopped = Some(e.to_string());
    }

    /// A note for the report (one sentence).
    pub fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    /// Lines the reader skipped.
    pub fn skipped(&mut self, n: u64) {
        self.events.skipped += n;
    }

    pub fn add(&mut self, ev: &Event) {
        if self.skip_carried > 0 {
            if matches!(ev.kind, Kind::Socket(_)) {
                self.skip_carried -= 1;
                self.events.skipped += 1;
                return;
            }
            self.skip_carried = 0;
        }
        let c = &ev.common;
        self.events.total += 1;
        *self
            .events
            .by_type
            .entry(ev.kind.type_name().to_string())
            .or_insert(0) += 1;
        self.namespaces.insert(c.netns);
        if self.first.as_ref().is_none_or(|(ns, _)| c.ts_ns < *ns) {
            self.first = Some((c.ts_ns, c.ts.clone()));
        }
        if self.last.as_ref().is_none_or(|(ns, _)| c.ts_ns > *ns) {
            self.last = Some((c.ts_ns, c.ts.clone()));
        }
        self.now_ns = self.now_ns.max(c.ts_ns);
        let minute = self.minutes.entry(minute_of(&c.ts)).or_default();
        minute.events += 1;
        let me = process_of(c.pid, &c.comm);
        match &ev.kind {
            Kind::BindFailed(b) => {
                minute.failures += 1;
                self.failure(ev, b);
            }
            Kind::Lost(l) => {
                minute.lost = minute.lost.saturating_add(l.count);
                self.lost.total = self.lost.total.saturating_add(l.count);
                let n = self
                    .lost
                    .by_stream
                    .entry(l.stream.clone().unwrap_or_else(|| "events".into()))
                    .or_insert(0);
                *n = n.saturating_add(l.count);
                self.sweep_overdue();
            }
            Kind::TimewaitOpen(t) => {
                minute.timewait_opened += 1;
                *self.left_by.entry(t.left_by.clone()).or_insert(0) += 1;
                let key = Key::Tw(c.netns, c.proto, t.local, t.remote);
                let exp = c
                    .ts_ns
                    .saturating_add(t.expires_in_ms.saturating_mul(1_000_000));
                self.set(
                    key,
                    c.netns,
                    Class::TimeWait,
                    t.local,
                    Some(t.remote),
                    None,
                    ev,
                );
                if let Some(s) = self.socks.get_mut(&key) {
                    s.expires_at = Some(exp);
                }
            }
            Kind::TimewaitSubstate(t) => {
                let key = Key::Tw(c.netns, c.proto, t.local, t.remote);
                let exp = c
                    .ts_ns
                    .saturating_add(t.expires_in_ms.saturating_mul(1_000_000));
                if let Some(s) = self.socks.get_mut(&key) {
                    s.expires_at = Some(exp);
                }
            }
            Kind::TimewaitClose(t) => {
                minute.timewait_closed += 1;
                self.remove(&Key::Tw(c.netns, c.proto, t.local, t.remote), ev);
            }
            Kind::State(s) => {
                let key = Key::Cookie(c.netns, s.cookie);
                if s.inode != 0 {
                    self.rekey(Key::Inode(c.netns, s.inode), key);
                }
                if s.new == TcpState::Listen {
                    self.listeners.insert((c.netns, s.local.port()));
                }
                if s.new == TcpState::Close {
                    self.remove(&key, ev);
                } else {
                    let class = if s.new == TcpState::CloseWait {
                        Class::CloseWait
                    } else {
                        Class::Other
                    };
                    let remote = (s.remote.port() != 0).then_some(s.remote);
                    self.set(key, c.netns, class, s.local, remote, me, ev);
                }
            }
            Kind::Bound(b) => {
                let key = if b.cookie != 0 {
                    Key::Cookie(c.netns, b.cookie)
                } else {
                    Key::Inode(c.netns, b.inode)
                };
                if b.cookie != 0 && b.inode != 0 {
                    self.rekey(Key::Inode(c.netns, b.inode), key);
                }
                if b.syscall == Syscall::Listen && c.proto == Proto::Tcp {
                    self.listeners.insert((c.netns, b.local.port()));
                }
                self.set(key, c.netns, Class::Other, b.local, None, me, ev);
            }
            Kind::Socket(s) if s.gone => {
                // Never a timewait sock (their end has events of its own).
                if s.cookie != 0 {
                    self.remove(&Key::Cookie(c.netns, s.cookie), ev);
                }
                if s.inode != 0 {
                    self.remove(&Key::Inode(c.netns, s.inode), ev);
                }
            }
            Kind::Socket(s) => {
                if s.state == TcpState::Listen && c.proto == Proto::Tcp {
                    self.listeners.insert((c.netns, s.local.port()));
                }
                let (key, class) = if s.timewait {
                    (
                        Key::Tw(c.netns, c.proto, s.local, s.remote.unwrap_or(s.local)),
                        Class::TimeWait,
                    )
                } else {
                    let key = if s.cookie != 0 {
                        Key::Cookie(c.netns, s.cookie)
                    } else {
                        Key::Inode(c.netns, s.inode)
                    };
                    if s.cookie != 0 && s.inode != 0 {
                        self.rekey(Key::Inode(c.netns, s.inode), key);
                    }
                    let class = if s.state == TcpState::CloseWait && c.proto == Proto::Tcp {
                        Class::CloseWait
                    } else {
                        Class::Other
                    };
                    (key, class)
                };
                self.set(key, c.netns, class, s.local, s.remote, s.owner.clone(), ev);
                if let Some(ms) = s.expires_in_ms {
                    if let Some(t) = self.socks.get_mut(&key) {
                        t.expires_at = Some(c.ts_ns.saturating_add(ms.saturating_mul(1_000_000)));
                    }
                }
            }
        }
        if self.events.total.is_multiple_of(4096) {
            self.sweep_overdue();
        }
    }

    fn failure(&mut self, ev: &Event, b: &crate::event::BindFailed) {
        let c = &ev.common;
        let code = b.diagnosis.as_ref().map(|d| d.code);
        *self
            .by_diagnosis
            .entry(code.map_or("none", |c| c.as_str()).to_string())
            .or_insert(0) += 1;
        // Holders in CLOSE_WAIT: held, and by whom.
        for h in b.holders.iter().filter(|h| h.state == TcpState::CloseWait) {
            let Some(key) = self.cw_by_tuple.get(&(c.netns, h.local, h.remote)).copied() else {
                continue;
            };
            if let Some(i) = self.socks.get(&key).and_then(|s| s.cw) {
                self.cw_records[i].blamed = true;
            }
            if let (Some(pid), Some(comm)) = (h.pid, &h.comm) {
                let owner = Process {
                    pid,
                    comm: comm.clone(),
                };
                self.learn_owner(&key, Some(owner));
            }
        }
        let key = GroupKey {
            netns: c.netns,
            proto: c.proto,
            pid: c.pid,
            comm: c.comm.clone(),
            syscall: b.syscall,
            requested: b.requested,
            errno: b.errno,
            code,
            options: (b.reuseaddr, b.reuseport, b.v6only, b.bound_dev_if),
        };
        if let Some(&i) = self.group_index.get(&key) {
            let g = &mut self.groups[i];
            g.count += 1;
            if c.ts.as_str() > g.last.as_str() {
                g.last = c.ts.clone();
            }
            return;
        }
        if self.groups.len() >= MAX_FAILURE_GROUPS {
            self.failures_not_listed += 1;
            return;
        }
        self.group_index.insert(key, self.groups.len());
        self.groups.push(FailureGroup {
            first: c.ts.clone(),
            last: c.ts.clone(),
            count: 1,
            netns: c.netns,
            proto: c.proto,
            pid: c.pid,
            comm: c.comm.clone(),
            syscall: b.syscall,
            requested: b.requested,
            errno: b.errno,
            error: b.error.clone(),
            reuseaddr: b.reuseaddr,
            reuseport: b.reuseport,
            v6only: b.v6only,
            uid: b.uid,
            device: b.device.clone(),
            diagnosis: b.diagnosis.clone(),
            holders: b.holders.clone(),
            holders_omitted: b.holders_omitted,
        });
    }

    /// Move a socket known by its inode to its cookie.
    fn rekey(&mut self, from: Key, to: Key) {
        if from == to || self.socks.contains_key(&to) {
            return;
        }
        if let Some(s) = self.socks.remove(&from) {
            if s.class == Class::CloseWait {
                self.cw_by_tuple.insert((s.netns, s.local, s.remote), to);
            }
            self.socks.insert(to, s);
        }
    }

    fn learn_owner(&mut self, key: &Key, owner: Option<Process>) {
        let Some(owner) = owner else { return };
        if let Some(s) = self.socks.get_mut(key) {
            s.owner = Some(owner.clone());
            if let Some(i) = s.cw {
                self.cw_records[i].owner = Some(owner);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        key: Key,
        netns: u32,
        class: Class,
        local: Endpoint,
        remote: Option<Endpoint>,
        owner: Option<Process>,
        ev: &Event,
    ) {
        // The process acting on it now (e.g. the close() that ends a
        // CLOSE_WAIT) owned it in its previous state too.
        if owner.is_some() && self.socks.contains_key(&key) {
            self.learn_owner(&key, owner.clone());
        }
        let old = self.socks.get(&key).map(|s| s.class);
        let mut counted = None;
        if old != Some(class) {
            if let Some(o) = old {
                self.leave(&key, o, ev.common.ts_ns);
            }
            counted = self.enter(netns, class, local, remote, ev);
        }
        let ts = ev.common.ts_ns;
        let s = self.socks.entry(key).or_insert_with(|| Sock {
            class,
            netns,
            local,
            remote,
            owner: None,
            expires_at: None,
            cw: None,
            counted: None,
        });
        if counted.is_some() {
            s.counted = counted;
        }
        s.class = class;
        s.local = local;
        s.remote = remote;
        if class == Class::CloseWait && s.cw.is_none() {
            s.cw = Some(self.cw_records.len());
            self.cw_records.push(CwRecord {
                // The owner known from before it entered CLOSE_WAIT.
                owner: s.owner.clone(),
                blamed: false,
                port: local.port(),
                since_ns: ts,
                until_ns: None,
            });
            self.cw_by_tuple.insert((netns, local, remote), key);
        }
        if owner.is_some() {
            self.learn_owner(&key, owner);
        }
    }

    fn remove(&mut self, key: &Key, ev: &Event) {
        if let Some(s) = self.socks.get(key).map(|s| s.class) {
            self.leave(key, s, ev.common.ts_ns);
            self.socks.remove(key);
        }
    }

    /// The port a socket is counted under: the end a listener of the trace
    /// has (a server's port, or the port a client connected to), else the
    /// lower of the two (ephemeral ports are the high ones).
    fn service(&self, netns: u32, local: Endpoint, remote: Option<Endpoint>) -> (u16, Side) {
        let l = local.port();
        let r = remote.map_or(0, |r| r.port());
        if self.listeners.contains(&(netns, l)) {
            (l, Side::Local)
        } else if r != 0 && self.listeners.contains(&(netns, r)) {
            (r, Side::Remote)
        } else if r == 0 || l <= r {
            (l, Side::Local)
        } else {
            (r, Side::Remote)
        }
    }

    fn enter(
        &mut self,
        netns: u32,
        class: Class,
        local: Endpoint,
        remote: Option<Endpoint>,
        ev: &Event,
    ) -> Option<CounterKey> {
        if class == Class::Other {
            return None;
        }
        let (port, side) = self.service(netns, local, remote);
        let k = (class, netns, port, side);
        bump(self.ports.entry(k).or_default(), &ev.common.ts);
        bump(self.totals.entry(class).or_default(), &ev.common.ts);
        Some(k)
    }

    fn leave(&mut self, key: &Key, class: Class, ts_ns: u64) {
        if class == Class::Other {
            return;
        }
        let Some(s) = self.socks.get_mut(key) else {
            return;
        };
        let (netns, local, remote) = (s.netns, s.local, s.remote);
        if let Some(i) = s.cw.take() {
            self.cw_records[i].until_ns = Some(ts_ns);
            self.cw_by_tuple.remove(&(netns, local, remote));
        }
        if let Some(k) = s.counted.take() {
            if let Some(p) = self.ports.get_mut(&k) {
                p.cur = p.cur.saturating_sub(1);
            }
        }
        if let Some(p) = self.totals.get_mut(&class) {
            p.cur = p.cur.saturating_sub(1);
        }
    }

    /// Timewait socks long past their expiry whose close event was lost.
    fn sweep_overdue(&mut self) {
        let now = self.now_ns;
        let overdue: Vec<Key> = self
            .socks
            .iter()
            .filter(|(_, s)| {
                s.class == Class::TimeWait
                    && s.expires_at
                        .is_some_and(|at| at.saturating_add(TW_GRACE_NS) < now)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in overdue {
            self.leave(&k, Class::TimeWait, now);
            self.socks.remove(&k);
        }
    }

    pub fn finish(mut self) -> Report {
        self.sweep_overdue();
        let range = match (&self.first, &self.last) {
            (Some((a, ats)), Some((b, bts))) => Some(Range {
                first: ats.clone(),
                last: bts.clone(),
                first_ns: *a,
                last_ns: *b,
                duration_ms: (b - a) / 1_000_000,
            }),
            _ => None,
        };
        let peaks = |class: Class, this: &ReportBuilder| {
            let total = this.totals.get(&class);
            let mut ports: Vec<PortPeak> = this
                .ports
                .iter()
                .filter(|((c, ..), p)| *c == class && p.peak > 0)
                .map(|((_, netns, port, side), p)| PortPeak {
                    netns: *netns,
                    port: *port,
                    side: *side,
                    peak: p.peak,
                    peak_at: p.peak_at.clone(),
                    entered: p.entered,
                })
                .collect();
            ports.sort_by(|a, b| {
                b.peak
                    .cmp(&a.peak)
                    .then(b.entered.cmp(&a.entered))
                    .then(a.netns.cmp(&b.netns))
                    .then(a.port.cmp(&b.port))
                    .then(a.side.cmp(&b.side))
            });
            ports.truncate(TOP);
            StatePeaks {
                peak: total.map_or(0, |t| t.peak),
                peak_at: total.filter(|t| t.peak > 0).map(|t| t.peak_at.clone()),
                entered: total.map_or(0, |t| t.entered),
                at_end: total.map_or(0, |t| t.cur),
                ports,
            }
        };
        let time_wait = peaks(Class::TimeWait, &self);
        let close_wait = peaks(Class::CloseWait, &self);

        let mut left_by: Vec<ProcessCount> = self
            .left_by
            .iter()
            .map(|(p, n)| ProcessCount {
                pid: p.as_ref().map(|p| p.pid),
                comm: p.as_ref().map(|p| p.comm.clone()),
                count: *n,
            })
            .collect();
        left_by.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.pid.is_none().cmp(&b.pid.is_none()))
                .then(a.comm.cmp(&b.comm))
                .then(a.pid.cmp(&b.pid))
        });
        left_by.truncate(TOP);

        let end = self.now_ns;
        let mut holders: BTreeMap<(Option<String>, Option<u32>), CloseWaitHolder> = BTreeMap::new();
        let mut ports_of: BTreeMap<(Option<String>, Option<u32>), BTreeSet<u16>> = BTreeMap::new();
        for r in &self.cw_records {
            let until = r.until_ns.unwrap_or(end);
            // A normal close passes through CLOSE_WAIT in moments: only
            // sockets that stayed (or still are) there, or that made a bind
            // fail, count as held.
            if !r.blamed && r.until_ns.is_some() && until.saturating_sub(r.since_ns) < CW_HELD_NS {
                continue;
            }
            let k = (
                r.owner.as_ref().map(|p| p.comm.clone()),
                r.owner.as_ref().map(|p| p.pid),
            );
            let h = holders.entry(k.clone()).or_insert_with(|| CloseWaitHolder {
                pid: k.1,
                comm: k.0.clone(),
                sockets: 0,
                ports: Vec::new(),
                longest_ms: 0,
                still_at_end: 0,
            });
            h.sockets += 1;
            h.longest_ms = h
                .longest_ms
                .max(until.saturating_sub(r.since_ns) / 1_000_000);
            if r.until_ns.is_none() {
                h.still_at_end += 1;
            }
            ports_of.entry(k).or_default().insert(r.port);
        }
        let mut close_wait_holders: Vec<CloseWaitHolder> = holders
            .into_iter()
            .map(|(k, mut h)| {
                h.ports = ports_of
                    .get(&k)
                    .map(|s| s.iter().copied().take(10).collect())
                    .unwrap_or_default();
                h
            })
            .collect();
        close_wait_holders.sort_by(|a, b| {
            b.still_at_end
                .cmp(&a.still_at_end)
                .then(b.sockets.cmp(&a.sockets))
                .then(a.pid.is_none().cmp(&b.pid.is_none()))
                .then(b.longest_ms.cmp(&a.longest_ms))
                .then(a.comm.cmp(&b.comm))
                .then(a.pid.cmp(&b.pid))
        });
        close_wait_holders.truncate(TOP);

        self.events.namespaces = self.namespaces.iter().copied().collect();
        Report {
            trace: self.trace,
            range,
            events: self.events,
            failures: self.groups,
            failures_not_listed: self.failures_not_listed,
            failures_by_diagnosis: self.by_diagnosis,
            time_wait,
            close_wait,
            timewait_left_by: left_by,
            close_wait_holders,
            lost: self.lost,
            timeline: self
                .minutes
                .into_iter()
                .map(|(k, mut m)| {
                    m.minute = k;
                    m
                })
                .collect(),
            stopped: self.stopped,
            notes: self.notes,
        }
    }
}

fn bump(p: &mut Peak, ts: &str) {
    p.cur += 1;
    p.entered += 1;
    if p.cur > p.peak {
        p.peak = p.cur;
        p.peak_at = ts.to_string();
    }
}

fn process_of(pid: Option<u32>, comm: &Option<String>) -> Option<Process> {
    match (pid, comm) {
        (Some(pid), Some(comm)) => Some(Process {
            pid,
            comm: comm.clone(),
        }),
        _ => None,
    }
}

/// "2026-11-21T23:01" out of an RFC 3339 stamp ("?" when it is none).
fn minute_of(ts: &str) -> String {
    match ts.get(..16) {
        Some(m) if m.as_bytes().get(13) == Some(&b':') => m.to_string(),
        _ => "?".to_string(),
    }
}

/// Read one trace, or every part of a rotated one (`all_parts`: FILE,
/// FILE.1, ...), into a report. Refusals of the first file are the error;
/// damage ends the reading and is in `stopped`.
pub fn build(path: &Path, all_parts: bool) -> Result<Report, TraceError> {
    let paths: Vec<PathBuf> = if all_parts {
        crate::trace::part_paths(path)
    } else {
        vec![path.to_path_buf()]
    };
    let mut b = ReportBuilder::new();
    let mut recording: Option<String> = None;
    for (i, p) in paths.iter().enumerate() {
        let r = match TraceReader::open(p) {
            Ok(r) => r,
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                b.note(format!("stopped before part {}: {e}", p.display()));
                break;
            }
        };
        if let Some(id) = &recording {
            if r.header().recording != *id {
                b.note(format!(
                    "{} belongs to another recording, so it was not read",
                    p.display()
                ));
                break;
            }
        }
        recording = Some(r.header().recording.clone());
        let damaged = feed(&mut b, r, &p.display().to_string());
        if damaged {
            break;
        }
    }
    if !all_parts {
        // Say so when the recording goes on in a rotated part.
        let mut next = path.as_os_str().to_owned();
        next.push(".1");
        let next = PathBuf::from(next);
        if let Ok(r) = TraceReader::open(&next) {
            if recording.as_deref() == Some(r.header().recording.as_str()) {
                b.note(format!(
                    "the recording goes on in {} (rotated parts): --all-parts reads them all",
                    next.display()
                ));
            }
        }
    }
    Ok(b.finish())
}

/// Feed one opened trace into the builder; true when it stopped at damage.
pub fn feed(b: &mut ReportBuilder, mut r: TraceReader, name: &str) -> bool {
    b.part(name, &r.header().clone(), r.is_compressed());
    let mut damaged = false;
    for ev in r.by_ref() {
        match ev {
            Ok(e) => b.add(&e),
            Err(e) => {
                b.stopped(&e);
                damaged = true;
            }
        }
    }
    b.skipped(r.skipped());
    damaged
}

#[cfg(test)]
mod tests;
