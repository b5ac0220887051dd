//! A recording in progress: what `twmon record`, `twmon live --record FILE`
//! and the dashboard's `r` key share.
//!
//! ```no_run
//! # use monitor::trace::{Recording, RecordOptions, SnapshotScope};
//! # use monitor::correlate::{Correlator, Kernel};
//! # fn events() -> Vec<monitor::event::Event> { vec![] }
//! let mut correlator = Correlator::new(Kernel::new());
//! let opts = RecordOptions::new("incident.trace.zst".into());
//! // Header, then the sockets that exist now (sock_diag), also fed to the model.
//! let mut rec = Recording::start(&opts, None, Some(&mut correlator.model))?;
//! for ev in events() {
//!     for out in correlator.process(ev) {
//!         rec.record(&out, &correlator.model)?; // filtered, rotated
//!     }
//!     rec.tick()?; // also from a timer: at least every 100 ms
//! }
//! let written = rec.finish()?;
//! # Ok::<(), monitor::trace::WriteError>(())
//! ```
//!
//! Record what comes *out* of the [`Correlator`](crate::correlate::Correlator)
//! (failures with holders and diagnosis, and the `socket` evidence events):
//! a replay then rebuilds the same model and the same explanations without a
//! kernel.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::header::{Header, SnapshotInfo, TraceFilters};
use super::writer::{TraceWriter, WriteError, WriterOptions, Written};
use crate::cli::Filters;
use crate::correlate;
use crate::event::{Common, Endpoint, Event, Kind, Lost, Proto, SocketSeen};
use crate::model::Model;
use crate::probe::ModeInfo;
use crate::snapshot;

/// Which namespaces the starting snapshot covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotScope {
    /// The namespaces of --netns, or else the recorder's own.
    #[default]
    Auto,
    /// Every network namespace a process is in (or /run/netns names).
    All,
    /// No starting snapshot.
    None,
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub path: PathBuf,
    pub writer: WriterOptions,
    pub filters: Filters,
    pub snapshot: SnapshotScope,
}

impl RecordOptions {
    /// Defaults: compressed when the name ends in .zst, no rotation, keep
    /// every event, snapshot of the own namespace.
    pub fn new(path: PathBuf) -> RecordOptions {
        let writer = WriterOptions {
            compress: WriterOptions::compress_for(&path, false),
            ..WriterOptions::default()
        };
        RecordOptions {
            path,
            writer,
            filters: Filters::default(),
            snapshot: SnapshotScope::Auto,
        }
    }
}

pub struct Recording {
    writer: TraceWriter,
    filters: Filters,
    /// Events offered and events kept by the filters.
    pub offered: u64,
    pub kept: u64,
    /// Events the kernel could not hand over, as the `lost` events kept
    /// say: the recorder tells them at the end, not only the trace.
    pub lost: u64,
}

impl Recording {
    /// Create the trace: header, then a `socket` event for every socket of
    /// the snapshot's namespaces (applied to `model` too, when given), all
    /// flushed at once.
    pub fn start(
        opts: &RecordOptions,
        mode: Option<ModeInfo>,
        model: Option<&mut Model>,
    ) -> Result<Recording, WriteError> {
        let (sockets, info) = snapshot_events(opts.snapshot, &opts.filters.netns);
        let sockets: Vec<Event> = sockets
            .into_iter()
            .filter(|e| opts.filters.keep(e))
            .collect();
        let mut header = Header::now(mode);
        header.filters = TraceFilters::from_cli(&opts.filters);
        header.snapshot = info.map(|mut i| {
            i.sockets = sockets.len() as u64;
            i
        });
        let mut writer = TraceWriter::create(&opts.path, header, opts.writer.clone())?;
        if let Some(m) = model {
            for e in &sockets {
                m.apply(e);
            }
        }
        for e in &sockets {
            writer.write(e)?;
        }
        writer.flush()?;
        Ok(Recording {
            writer,
            filters: opts.filters.clone(),
            offered: 0,
            kept: 0,
            lost: 0,
        })
    }

    /// Write one event (after the correlator) if the filters keep it;
    /// rotate when the part is full, carrying `model`'s sockets over.
    pub fn record(&mut self, ev: &Event, model: &Model) -> Result<(), WriteError> {
        self.offered += 1;
        if !self.filters.keep(ev) {
            return Ok(());
        }
        self.kept += 1;
        if let crate::event::Kind::Lost(l) = &ev.kind {
            self.lost += l.count;
        }
        self.writer.write(ev)?;
        if self.writer.wants_rotation() {
            let carry: Vec<Event> = model_events(model)
                .into_iter()
                .filter(|e| self.filters.keep(e))
                .collect();
            self.writer.rotate(&carry)?;
        }
        Ok(())
    }

    /// Flush what is due; call at least every 100 ms.
    pub fn tick(&mut self) -> Result<(), WriteError> {
        self.writer.tick()
    }

    /// Flush now.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.writer.flush()
    }

    /// The file being written now.
    pub fn path(&self) -> &std::path::Path {
        self.writer.path()
    }

    pub fn header(&self) -> &Header {
        self.writer.header()
    }

    /// What is safely in the files so far.
    pub fn written(&self) -> &Written {
        self.writer.written()
    }

    /// Flush, fsync, close.
    pub fn finish(self) -> Result<Written, WriteError> {
        self.writer.finish()
    }
}

/// Boot-time ns now and its RFC 3339 stamp.
fn now_stamp() -> (u64, String) {
    let boot = crate::probe::sys::boottime_ns();
    let unix = crate::probe::sys::boot_to_unix_offset_ns() + boot as i128;
    (boot, crate::probe::enrich::rfc3339(unix))
}

/// An event that carries only the time now and `netns`: what the common
/// fields of events twmon makes itself (not the kernel) are copied from.
pub(crate) fn stamp_event(netns: u32) -> Event {
    let (ts_ns, ts) = now_stamp();
    Event {
        common: Common {
            ts,
            ts_ns,
            netns,
            proto: Proto::Tcp,
            pid: None,
            comm: None,
            container: None,
        },
        kind: Kind::Lost(Lost {
            count: 0,
            stream: None,
        }),
    }
}

/// The inode of the calling thread's network namespace.
pub fn own_netns() -> Option<u32> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// Every network namespace some process is in, or that /run/netns names,
/// with a path that opens it.
pub fn all_netns() -> BTreeMap<u32, String> {
    let mut found = BTreeMap::new();
    let mut add = |path: String| {
        if let Ok(m) = std::fs::metadata(&path) {
            found.entry(m.ino() as u32).or_insert(path);
        }
    };
    for pid in pids() {
        add(format!("/proc/{pid}/ns/net"));
    }
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            add(e.path().display().to_string());
        }
    }
    found
}

fn pids() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// A path to namespace `netns` that `all_netns` misses: a thread that
/// entered it, or a descriptor that holds it open (a namespace kept alive by
/// a handle, like the scenario library's).
fn find_netns_deep(netns: u32) -> Option<String> {
    let want = format!("net:[{netns}]");
    let is = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == netns);
    for pid in pids() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let p = format!("{}/ns/net", t.path().display());
                if is(&p) {
                    return Some(p);
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for f in fds.flatten() {
                if std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                    return Some(f.path().display().to_string());
                }
            }
        }
    }
    None
}

/// The sockets that exist now, as `socket` events, and what the snapshot
/// covered. `netns` are the namespaces of `--netns` (for `Auto`).
pub fn snapshot_events(scope: SnapshotScope, netns: &[u32]) -> (Vec<Event>, Option<SnapshotInfo>) {
    let own = own_netns();
    let targets: Vec<(u32, Option<String>)> = match scope {
        SnapshotScope::None => return (Vec::new(), None),
        SnapshotScope::Auto if !netns.is_empty() => {
            let all = all_netns();
            netns
                .iter()
                .map(|n| {
                    let path = all.get(n).cloned().or_else(|| find_netns_deep(*n));
                    (*n, path)
                })
                .collect()
        }
        SnapshotScope::Auto => own.map(|n| vec![(n, None)]).unwrap_or_default(),
        SnapshotScope::All => all_netns().into_iter().map(|(n, p)| (n, Some(p))).collect(),
    };
    let opts = snapshot::Options {
        ports: Vec::new(),
        read_flags: true,
        // The kernel programs report timewait flags; no probe binds.
        probe_timewait: false,
        without_time_wait: false,
    };
    let mut events = Vec::new();
    let mut info = SnapshotInfo {
        source: "sock_diag".into(),
        ..SnapshotInfo::default()
    };
    for (ns, path) in targets {
        let snap = if Some(ns) == own {
            Some(snapshot::take(&opts))
        } else {
            match &path {
                Some(p) => correlate::in_netns(p, || snapshot::take(&opts)),
                None => None,
            }
        };
        let snap = match snap {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                info.notes
                    .push(format!("namespace {ns} could not be listed: {e:#}"));
                continue;
            }
            None => {
                info.notes.push(format!(
                    "namespace {ns} could not be entered (nothing found that holds it, or no privileges)"
                ));
                continue;
            }
        };
        info.netns.push(ns);
        for n in &snap.notes {
            info.notes.push(format!("namespace {ns}: {n}"));
        }
        let stamp = stamp_event(ns);
        for s in &snap.sockets {
            events.push(correlate::socket_event(&stamp, s, snap.owner_of(s)));
        }
    }
    info.sockets = events.len() as u64;
    (events, Some(info))
}

/// Every socket `model` knows, as `socket` events stamped now: what a new
/// part of a rotated trace starts with. Sorted, so the order is stable.
pub fn model_events(model: &Model) -> Vec<Event> {
    let (ts_ns, ts) = now_stamp();
    let mut out = Vec::new();
    for (netns, ns) in model.namespaces() {
        for t in ns.sockets() {
            let s = &t.sock;
            out.push(Event {
                common: Common {
                    ts: ts.clone(),
                    ts_ns,
                    netns: *netns,
                    proto: s.proto,
                    pid: None,
                    comm: None,
                    container: None,
                },
                kind: Kind::Socket(SocketSeen {
                    // The model's clock is the newest event's, close to now.
                    expires_in_ms: t.expires_in_ms(model.now_ns),
                    ..correlate::socket_seen(s, t.owner.clone())
                }),
            });
        }
    }
    out.sort_by(|a, b| {
        let key = |e: &Event| match &e.kind {
            Kind::Socket(s) => (e.common.netns, e.common.proto, s.local, s.remote, s.cookie),
            _ => (
                e.common.netns,
                e.common.proto,
                Endpoint::v4([0; 4], 0),
                None,
                0,
            ),
        };
        key(a).cmp(&key(b))
    });
    out
}
