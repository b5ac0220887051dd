//! Each failed bind gets its holders and a diagnosis here.
//!
//! Events go through in order: every event updates the [`Model`]; a
//! `bind_failed` is first explained from it. In a live run the model is
//! checked against the kernel before that: a sock_diag snapshot of the
//! failing namespace for that port (taken from a thread that entered the
//! namespace) is turned into `socket` events, which go into the model and out
//! with the rest, so a recorded trace carries the same evidence and a replay
//! explains the failure the same way without any kernel.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::diagnose::{self, Context, Failure};
use crate::event::{BindFailed, Endpoint, Event, Kind, Process, Proto, SocketSeen, Syscall};
use crate::model::Model;
use crate::rules::{self, ExistingSocket, NetEnv, NewSocket};
use crate::snapshot::{self, Snapshot};

/// Where the evidence for a failure comes from.
pub trait Evidence {
    /// A snapshot of namespace `netns` for `ports` (all ports when empty),
    /// or None when it cannot be seen (gone, no privileges).
    fn snapshot(&mut self, netns: u32, hint_pid: Option<u32>, ports: &[u16]) -> Option<Snapshot>;
}

/// No evidence beyond the events (replay, tests).
pub struct EventsOnly;

impl Evidence for EventsOnly {
    fn snapshot(&mut self, _: u32, _: Option<u32>, _: &[u16]) -> Option<Snapshot> {
        None
    }
}

pub struct Correlator<E: Evidence> {
    pub model: Model,
    evidence: E,
    /// The last network environment seen per namespace (port range, ...).
    env: HashMap<u32, NetEnv>,
}

impl<E: Evidence> Correlator<E> {
    pub fn new(evidence: E) -> Self {
        Correlator {
            model: Model::new(),
            evidence,
            env: HashMap::new(),
        }
    }

    /// One event in; the events to pass on out (snapshot evidence first,
    /// then the event itself, with holders and diagnosis when it is a
    /// failure).
    pub fn process(&mut self, mut ev: Event) -> Vec<Event> {
        let mut out = Vec::new();
        if let Kind::BindFailed(b) = &ev.kind {
            // Exhaustion (connect, port 0): the whole range matters.
            let ports = match (b.syscall, b.requested.port()) {
                (Syscall::Connect, _) | (_, 0) => Vec::new(),
                (_, p) => vec![p],
            };
            if let Some(snap) = self
                .evidence
                .snapshot(ev.common.netns, ev.common.pid, &ports)
            {
                let seen: Vec<(u64, u64)> =
                    snap.sockets.iter().map(|s| (s.inode, s.cookie)).collect();
                self.model.reconcile(ev.common.netns, &ports, &seen);
                for s in &snap.sockets {
                    let seen = socket_event(&ev, s, snap.owner_of(s));
                    self.model.apply(&seen);
                    out.push(seen);
                }
                self.env.insert(ev.common.netns, snap.env.clone());
            }
        }
        if let Kind::BindFailed(b) = &mut ev.kind {
            let proto = ev.common.proto;
            let (holders, diagnosis) = explain(
                &self.model,
                self.env.get(&ev.common.netns),
                ev.common.netns,
                proto,
                b,
            );
            b.holders = holders;
            b.diagnosis = Some(diagnosis);
        }
        self.model.apply(&ev);
        out.push(ev);
        out
    }
}

/// A sock_diag socket as a `socket` event, stamped with the common fields of
/// `failed` (any event: its time and namespace; pid/comm are cleared).
pub fn socket_event(failed: &Event, s: &ExistingSocket, owner: Option<Process>) -> Event {
    let mut common = failed.common.clone();
    common.proto = s.proto;
    common.pid = None;
    common.comm = None;
    Event {
        common,
        kind: Kind::Socket(socket_seen(s, owner)),
    }
}

/// What a `socket` event says about a socket the rules know; flags that were
/// only guessed are left out (None).
pub fn socket_seen(s: &ExistingSocket, owner: Option<Process>) -> SocketSeen {
    SocketSeen {
        local: Endpoint::new(s.local, s.port),
        remote: s.remote.map(Endpoint::from),
        state: s.state,
        timewait: s.is_timewait(),
        uid: s.uid,
        inode: s.inode,
        cookie: s.cookie,
        reuseaddr: s.flags_known.then_some(s.reuseaddr),
        reuseport: s.flags_known.then_some(s.reuseport),
        v6only: s.v6only,
        bound_dev_if: s.bound_dev_if,
        expires_in_ms: s.expires_in_ms,
        owner,
    }
}

/// The failing socket as the rules see a new socket.
fn new_socket(proto: Proto, b: &BindFailed) -> NewSocket {
    let mut n = NewSocket::new(proto, b.requested.socket_addr());
    n.reuseaddr = b.reuseaddr;
    n.reuseport = b.reuseport;
    n.v6only = b.v6only;
    n.uid = b.uid;
    n.bound_dev_if = b.bound_dev_if;
    n.freebind = b.freebind;
    n.transparent = b.transparent;
    n
}

/// Holders and diagnosis of a failure, from the model.
pub fn explain(
    model: &Model,
    env: Option<&NetEnv>,
    netns: u32,
    proto: Proto,
    b: &BindFailed,
) -> (Vec<crate::event::Holder>, crate::event::Diagnosis) {
    let tracked = model.existing(netns, proto);
    // The failing socket itself is in the model (a listen() on a bound
    // socket): it does not block itself.
    let (tracked, existing): (Vec<_>, Vec<ExistingSocket>) = tracked
        .into_iter()
        .filter(|(t, _)| {
            !((b.cookie != 0 && t.sock.cookie == b.cookie)
                || (b.inode != 0 && t.sock.inode == b.inode))
        })
        .unzip();
    let owner_of = |s: &ExistingSocket| {
        tracked
            .iter()
            .find(|t| t.sock.inode == s.inode && t.sock.cookie == s.cookie && t.sock.port == s.port)
            .and_then(|t| t.owner.clone())
    };
    let left_by_of = |s: &ExistingSocket| {
        tracked
            .iter()
            .find(|t| {
                t.sock.timewait
                    && t.sock.local == s.local
                    && t.sock.port == s.port
                    && t.sock.remote == s.remote
            })
            .and_then(|t| t.left_by.clone())
    };
    let default_env = NetEnv::default();
    let env = env.unwrap_or(&default_env);
    let new = new_socket(proto, b);
    let failure = Failure::from_new(&new, b.syscall, b.errno);
    let range = env.local_port_range;
    let timewait_in_range = model.timewait_in_range(netns, range);
    let base_ctx = Context {
        local_port_range: Some(range),
        unprivileged_port_start: Some(env.unprivileged_port_start),
        timewait_in_range: Some(timewait_in_range),
        sockets_seen: Some(existing.len()),
        ..Context::default()
    };
    if b.errno == libc::EADDRINUSE && b.requested.port() != 0 && b.syscall != Syscall::Connect {
        let listen = b.syscall == Syscall::Listen;
        let verdict = rules::predict(&new, &existing, env, listen);
        if verdict.would_fail() && !verdict.blockers.is_empty() {
            let mut holders = diagnose::holders_from_verdict(&verdict, &existing, &owner_of);
            // Timewait holders have no owner: say who left them.
            for h in holders.iter_mut().filter(|h| h.pid.is_none()) {
                if let Some(s) = existing.iter().find(|s| {
                    s.is_timewait()
                        && Endpoint::new(s.local, s.port) == h.local
                        && s.remote.map(Endpoint::from) == h.remote
                }) {
                    h.left_by = left_by_of(s);
                }
            }
            let ctx = Context {
                holders: holders.clone(),
                reuseaddr_would_help: verdict.reuseaddr_would_help,
                reuseport_would_help: verdict.reuseport_would_help,
                flags_uncertain: verdict.uncertain,
                reason: verdict.reason.map(str::to_string),
                ..base_ctx
            };
            return (holders, diagnose::diagnose(&failure, &ctx));
        }
    }
    (Vec::new(), diagnose::diagnose(&failure, &base_ctx))
}

/// Live evidence: sock_diag in the failing namespace.
pub struct Kernel {
    /// Namespace inode -> a path that opens it, found by scanning /proc.
    paths: HashMap<u32, String>,
    /// When each (netns, ports) was last looked at: a storm of failures
    /// does not become a storm of snapshots.
    cache: HashMap<(u32, Vec<u16>), Instant>,
}

const CACHE_FOR: Duration = Duration::from_millis(200);

impl Kernel {
    pub fn new() -> Kernel {
        Kernel {
            paths: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// A path to namespace `netns`: the failing process's threads first, then
    /// the named namespaces under /run/netns, any task in it, any descriptor
    /// that holds it.
    fn path_of(&mut self, netns: u32, hint_pid: Option<u32>) -> Option<String> {
        let matches = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.ino() == netns as u64);
        if let Some(p) = self.paths.get(&netns) {
            if matches(p) {
                return Some(p.clone());
            }
        }
        let mut candidates = Vec::new();
        if let Some(pid) = hint_pid {
            candidates.push(format!("/proc/{pid}/ns/net"));
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    candidates.push(format!("{}/ns/net", t.path().display()));
                }
            }
        }
        for p in candidates {
            if matches(&p) {
                self.paths.insert(netns, p.clone());
                return Some(p);
            }
        }
        let found = find_netns_path(netns)?;
        self.paths.insert(netns, found.clone());
        Some(found)
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel::new()
    }
}

fn find_netns_path(netns: u32) -> Option<String> {
    let matches = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.ino() == netns as u64);
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let p = e.path().display().to_string();
            if matches(&p) {
                return Some(p);
            }
        }
    }
    for proc_ in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_.file_name();
        if !name.to_string_lossy().bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let p = format!("/proc/{}/ns/net", name.to_string_lossy());
        if matches(&p) {
            return Some(p);
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", name.to_string_lossy())) {
            for t in tasks.flatten() {
                let p = format!("{}/ns/net", t.path().display());
                if matches(&p) {
                    return Some(p);
                }
            }
        }
    }
    // No task lives in it: a namespace kept by an open descriptor (a
    // container runtime, `ip netns` before its bind mount, a test).
    let want = format!("net:[{netns}]");
    for proc_ in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(fds) = std::fs::read_dir(proc_.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(fd.path().display().to_string());
            }
        }
    }
    None
}

/// Run `f` on a thread that has entered the network namespace at `path`.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> Option<T> {
    let file = File::open(path).ok()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid while `file` lives.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            Some(f())
        })
        .join()
        .ok()
        .flatten()
    })
}

impl Evidence for Kernel {
    fn snapshot(&mut self, netns: u32, hint_pid: Option<u32>, ports: &[u16]) -> Option<Snapshot> {
        let key = (netns, ports.to_vec());
        if let Some(at) = self.cache.get(&key) {
            if at.elapsed() < CACHE_FOR {
                // The model got this evidence a moment ago.
                return None;
            }
        }
        let path = self.path_of(netns, hint_pid)?;
        let opts = snapshot::Options {
            ports: ports.to_vec(),
            read_flags: true,
            // The kernel programs report timewait flags; no probe binds.
            probe_timewait: false,
        };
        let snap = match in_netns(&path, || snapshot::take(&opts)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::debug!("snapshot of netns {netns} failed: {e:#}");
                return None;
            }
            None => {
                log::debug!("cannot enter netns {netns} at {path}");
                return None;
            }
        };
        self.cache.retain(|_, at| at.elapsed() < CACHE_FOR);
        self.cache.insert(key, Instant::now());
        Some(snap)
    }
}
