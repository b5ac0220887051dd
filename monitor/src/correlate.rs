//! Each failed bind gets its holders and a diagnosis here.
//!
//! Events go through in order: every event updates the [`Model`]; a
//! `bind_failed` is first explained from it. In a live run the model is
//! checked against the kernel before that: a sock_diag snapshot of the
//! failing namespace for that port (taken from a thread that entered the
//! namespace) is turned into `socket` events, which go into the model and out
//! with the rest, so a recorded trace carries the same evidence and a replay
//! explains the failure the same way without any kernel.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::diagnose::{self, Context, Failure};
use crate::event::{
    BindFailed, DiagnosisCode, Endpoint, Event, Holder, KernelHolder, Kind, Process, Proto,
    SocketSeen, Syscall,
};
use crate::model::Model;
use crate::rules::{self, ExistingSocket, NetEnv, NewSocket};
use crate::snapshot::{self, Snapshot};

/// Where the evidence for a failure comes from.
pub trait Evidence {
    /// A snapshot of namespace `netns` for `ports` (all ports when empty),
    /// or None when it cannot be seen (gone, no privileges) or was skipped
    /// because the same look was taken a moment ago. `fresh`: look even
    /// then, the model may be wrong about these ports in a way no event
    /// will correct. `time_wait`: list timewait socks in TIME_WAIT too
    /// (without it, only those still in FIN_WAIT2). By default nothing
    /// beyond the events.
    fn snapshot(
        &mut self,
        _netns: u32,
        _hint_pid: Option<u32>,
        _ports: &[u16],
        _fresh: bool,
        _time_wait: bool,
    ) -> Option<Snapshot> {
        None
    }

    /// Every socket of `protos` in `netns` on `ports` (all ports when
    /// empty) as (inode, cookie), without owners or flags; None when it
    /// cannot be seen.
    fn census(
        &mut self,
        _netns: u32,
        _protos: &[Proto],
        _ports: &[u16],
    ) -> Option<Vec<(u64, u64)>> {
        None
    }

    /// Which of these socket inodes some process still holds a descriptor
    /// of; None when that cannot be told (descriptors that could not be
    /// read).
    fn held(&mut self, _inodes: &HashSet<u64>) -> Option<HashSet<u64>> {
        None
    }

    /// Why the last [`Evidence::snapshot`] returned None, when the
    /// namespace could not be looked at (not when a snapshot was skipped
    /// on purpose).
    fn snapshot_failure(&mut self) -> Option<String> {
        None
    }
}

/// After events were lost, the model may keep sockets whose closing was
/// among them; it is checked against the kernel at most this often.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// ... or sooner, but not within this, once the model has grown by more
/// than [`RESYNC_GROWTH`] sockets since the last check: under heavy loss
/// the closings that never arrive leave tens of thousands of sockets a
/// second behind (measured: a churning `watch` losing 130,000 events a
/// second went past 229,000 model sockets between two 10 s checks, and its
/// table doubled to 118 MiB).
const RESYNC_SOONEST: Duration = Duration::from_secs(1);
const RESYNC_GROWTH: usize = 20_000;
/// At most this many namespaces per resync (the busiest first).
const RESYNC_NAMESPACES: usize = 64;
/// While the model holds sockets that no event retires (UDP, bound-only
/// TCP: no tracepoint fires when they close), their ports are looked at
/// in the kernel this often. Without it a UDP holder closed after its
/// failure stayed "still there" in the dashboard for good (seen in the
/// demo: its namespace was empty). A port-filtered dump per namespace,
/// only while such sockets exist.
const UNRETIRED_CHECK_EVERY: Duration = Duration::from_secs(5);
/// A namespace that could not be entered for that check is tried again
/// only after this: finding a namespace nothing names walks every task and
/// descriptor in /proc, and so does the look for who holds its sockets.
const UNSEEN_RETRY: Duration = Duration::from_secs(60);

/// No evidence beyond the events (replay, tests).
pub struct EventsOnly;

impl Evidence for EventsOnly {}

pub struct Correlator<E: Evidence> {
    pub model: Model,
    evidence: E,
    /// The last network environment seen per namespace (port range, ...).
    env: HashMap<u32, NetEnv>,
    /// Print "twmon: finding: ..." on stderr when the kernel's holders and
    /// the model's disagree (watch; not under the dashboard, which owns the
    /// terminal).
    pub findings_to_stderr: bool,
    /// Events were lost since the last resync.
    resync_due: bool,
    last_resync: Option<Instant>,
    /// Sockets in the model right after the last resync.
    sockets_at_resync: usize,
    last_unretired_check: Option<Instant>,
    /// Namespaces the last checks could not enter, and when.
    unseen: HashMap<u32, Instant>,
    /// The events stream every transition and timewait sock (not the
    /// dashboard's light mode): a failure's look may then leave out the
    /// socks in TIME_WAIT ([`Model::timewait_told`]).
    events_follow_timewait: bool,
}

impl<E: Evidence> Correlator<E> {
    pub fn new(evidence: E) -> Self {
        Correlator {
            model: Model::new(),
            evidence,
            env: HashMap::new(),
            findings_to_stderr: false,
            resync_due: false,
            last_resync: None,
            sockets_at_resync: 0,
            last_unretired_check: None,
            unseen: HashMap::new(),
            events_follow_timewait: false,
        }
    }

    /// The events stream every transition and timewait sock, and began
    /// before the starting snapshot, which listed the namespaces `seeded`
    /// whole (see [`Model::timewait_told`]).
    pub fn follow_timewait(&mut self, seeded: &[u32]) {
        self.events_follow_timewait = true;
        for &netns in seeded {
            self.model.seeded(netns);
        }
    }

    /// One event in; the events to pass on out (snapshot evidence first,
    /// then the event itself, with holders and diagnosis when it is a
    /// failure).
    pub fn process(&mut self, ev: Event) -> Vec<Event> {
        let mut out = Vec::new();
        self.process_into(ev, &mut out);
        out
    }

    /// [`Correlator::process`] into `out` (appended): a loop that reuses
    /// one vector makes no allocation per event.
    pub fn process_into(&mut self, mut ev: Event, out: &mut Vec<Event>) {
        let mut unseen = None;
        let mut retired = None;
        if let Kind::BindFailed(b) = &ev.kind {
            // Exhaustion (connect, port 0): the whole range matters; a
            // connect() from a port of its own: that port.
            let ports = match (own_port_connect(b), b.syscall, b.requested.port()) {
                (Some(own), _, _) => vec![own.port()],
                (None, Syscall::Connect, _) | (None, _, 0) => Vec::new(),
                (None, _, p) => vec![p],
            };
            // A FIN_WAIT2 timewait sock on the port may have become
            // TIME_WAIT without any tracepoint firing (kernel-notes.md):
            // only the kernel can say which it is now.
            let fresh =
                self.model
                    .timewait_may_have_changed(ev.common.netns, ev.common.proto, &ports);
            // When the events told every timewait sock, the look leaves
            // out those in TIME_WAIT: a busy port has tens of thousands,
            // the model has them all, and listing them made most of a
            // failure's cost there (a crash loop beside a server-first
            // churn: 20-35 ms of look and 15-25 ms more to go through it,
            // per failure). Those still in FIN_WAIT2 are listed, so the
            // ones the look no longer shows are in TIME_WAIT now.
            let time_wait = !self.events_follow_timewait
                || ports.is_empty()
                || !self
                    .model
                    .timewait_told(ev.common.netns, &ports, ev.common.ts_ns);
            if let Some(snap) =
                self.evidence
                    .snapshot(ev.common.netns, ev.common.pid, &ports, fresh, time_wait)
            {
                let seen: Vec<(u64, u64)> =
                    snap.sockets.iter().map(|s| (s.inode, s.cookie)).collect();
                let r = if time_wait {
                    self.model.listed(ev.common.netns, &ports);
                    self.model.reconcile(ev.common.netns, &ports, &seen)
                } else {
                    let (r, moved) =
                        self.model
                            .reconcile_without_time_wait(ev.common.netns, &ports, &seen);
                    for t in &moved {
                        out.push(moved_event(&ev, t));
                    }
                    r
                };
                for t in r.unretired() {
                    out.push(gone_event(&ev, t));
                }
                retired = Some(r);
                for s in &snap.sockets {
                    let opener = self.model.opener(ev.common.netns, s.cookie, s.inode);
                    let owner = snap.owner_preferring(s, opener);
                    let shared = snap.shared_with(s, owner.as_ref().map(|o| o.pid));
                    let mut seen = socket_event(&ev, s, owner);
                    if let Kind::Socket(seen) = &mut seen.kind {
                        seen.shared_with = shared;
                        // Only what the model did not know goes on.
                        if self
                            .model
                            .restates(ev.common.netns, s.proto, seen, ev.common.ts_ns)
                        {
                            continue;
                        }
                    }
                    self.model.apply(&seen);
                    out.push(seen);
                }
                self.env.insert(ev.common.netns, snap.env.clone());
            } else {
                unseen = self.evidence.snapshot_failure();
            }
        }
        if let Kind::BindFailed(b) = &mut ev.kind {
            let proto = ev.common.proto;
            let env = self.env.get(&ev.common.netns);
            let mut e = explain(&self.model, env, ev.common.netns, proto, b, unseen.clone());
            // Nothing the kernel still has explains it, but the look came
            // after the failure: what it no longer showed held the port at
            // the failure, as far as the events tell (the detail view says
            // they are gone now). Seen in the demo: a listener closed 9 ms
            // after a bind failed, before the look, and the failure read
            // "unknown".
            if let Some(r) = retired.filter(|r| !r.is_empty()) {
                if e.diagnosis.code == DiagnosisCode::Unknown {
                    let restored = self
                        .model
                        .with_restored(&r, |m| explain(m, env, ev.common.netns, proto, b, unseen));
                    if restored.diagnosis.code != DiagnosisCode::Unknown {
                        e = restored;
                    }
                }
            }
            b.holders = e.holders;
            b.holders_omitted = e.omitted;
            b.diagnosis = Some(e.diagnosis);
            b.device = env.and_then(|e| e.device_name(b.bound_dev_if));
            // Precise mode: the kernel named the blocking sockets itself;
            // a model that disagrees is a finding worth a line.
            b.holder_mismatch = kernel_disagreement(b);
            b.port_mismatch = kernel_port_disagreement(b);
            b.cap_holders();
            if self.findings_to_stderr {
                for m in [&b.holder_mismatch, &b.port_mismatch].into_iter().flatten() {
                    eprintln!("twmon: finding: {m}");
                }
            }
        }
        if let (Kind::TimewaitClose(c), true) = (&ev.kind, self.findings_to_stderr) {
            if let Some(m) = &c.end_mismatch {
                eprintln!(
                    "twmon: finding: timewait {} -> {} ended as {}: {m}",
                    c.local,
                    c.remote,
                    serde_json::to_string(&c.reason).unwrap_or_default()
                );
            }
        }
        if matches!(ev.kind, Kind::Lost(_)) {
            self.resync_due = true;
        }
        self.model.apply(&ev);
        out.push(ev);
        if self.resync_due {
            let since = self.last_resync.map(|t| t.elapsed());
            let due = match since {
                None => true,
                Some(d) if d >= RESYNC_EVERY => true,
                Some(d) if d >= RESYNC_SOONEST => {
                    self.model.socket_count() > self.sockets_at_resync + RESYNC_GROWTH
                }
                Some(_) => false,
            };
            if due {
                out.extend(self.resync());
            }
        }
    }

    /// What the run loops call between events (about once a second or
    /// more often): every [`UNRETIRED_CHECK_EVERY`], the sockets no event
    /// retires are looked for in the kernel, and those it no longer has
    /// come out as `socket` events with `gone` (into the model already),
    /// so that a trace tells a replay the same.
    pub fn tick(&mut self) -> Vec<Event> {
        if self
            .last_unretired_check
            .is_some_and(|at| at.elapsed() < UNRETIRED_CHECK_EVERY)
        {
            return Vec::new();
        }
        self.last_unretired_check = Some(Instant::now());
        let mut out = Vec::new();
        let namespaces = self.model.unretired_ports();
        self.unseen
            .retain(|n, _| namespaces.iter().any(|(netns, _, _)| netns == n));
        for (netns, protos, ports) in namespaces.into_iter().take(RESYNC_NAMESPACES) {
            if self
                .unseen
                .get(&netns)
                .is_some_and(|at| at.elapsed() < UNSEEN_RETRY)
            {
                continue;
            }
            let seen = match self.evidence.census(netns, &protos, &ports) {
                Some(seen) => {
                    self.unseen.remove(&netns);
                    seen
                }
                None => {
                    self.unseen.insert(netns, Instant::now());
                    // It cannot be entered: gone, and its sockets with it
                    // (a container that stopped), or kept only by a socket
                    // whose descriptor lives outside it. Either way a
                    // socket that no process holds a descriptor of is
                    // closed; one without an inode (a kernel socket) is
                    // taken as still there. When descriptors could not
                    // be read, nothing is concluded.
                    let ids = self.model.unretired_ids(netns);
                    let inodes: HashSet<u64> =
                        ids.iter().map(|(i, _)| *i).filter(|&i| i != 0).collect();
                    let Some(held) = self.evidence.held(&inodes) else {
                        continue;
                    };
                    ids.into_iter()
                        .filter(|(i, _)| *i == 0 || held.contains(i))
                        .collect()
                }
            };
            let stamp = crate::trace::recording::stamp_event(netns);
            for t in self.model.retire_unshown(netns, &ports, &seen).unretired() {
                out.push(gone_event(&stamp, t));
            }
        }
        out
    }

    /// Retire what the kernel no longer has, in every namespace the model
    /// knows: lost closing transitions would otherwise leave sockets in the
    /// model for good (memory that grows, holders that are not there).
    /// Returns `gone` events for what it retired that no event would have
    /// (see [`Correlator::tick`]).
    fn resync(&mut self) -> Vec<Event> {
        self.resync_due = false;
        self.last_resync = Some(Instant::now());
        let mut namespaces: Vec<(u32, usize)> = self
            .model
            .namespaces()
            .map(|(n, ns)| (*n, ns.sockets().count()))
            .collect();
        namespaces.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut out = Vec::new();
        for (netns, _) in namespaces.into_iter().take(RESYNC_NAMESPACES) {
            // Sockets whose closing was lost are not announced: under loss
            // that is tens of thousands, and the trace says the loss. Those
            // no event retires are, as by the periodic check, which will
            // not see them again.
            if let Some(seen) = self.evidence.census(netns, &[Proto::Tcp, Proto::Udp], &[]) {
                let stamp = crate::trace::recording::stamp_event(netns);
                for t in self.model.reconcile(netns, &[], &seen).unretired() {
                    out.push(gone_event(&stamp, t));
                }
            }
        }
        self.sockets_at_resync = self.model.socket_count();
        // What the census retired is freed, but glibc keeps the pages
        // unless asked: over a 600 s churn soak under loss the RSS crept
        // from 98 to 115 MiB without this, and stayed at 62-70 with it.
        crate::live::release_freed_memory();
        out
    }
}

/// Where the holders the kernel named (precise mode) and the model's
/// disagree: every socket the kernel found blocking must be one of the
/// model's holders, and the model must name holders exactly when the kernel
/// found some. The kernel stops at the first blocking socket of each bind
/// bucket, so it may name fewer than the model (several TIME_WAITs on one
/// port): that is no disagreement.
pub fn kernel_disagreement(b: &BindFailed) -> Option<String> {
    let kernel = b.kernel_holders.as_ref()?;
    // Port 0 (bind or listen without a port): the kernel tried port after
    // port and names what blocked each; no one of them is "the" holder, and
    // the model reports the exhausted range instead.
    if b.errno != libc::EADDRINUSE || b.requested.port() == 0 {
        return None;
    }
    // For a wildcard bind the kernel checks the address after
    // inet_bind_conflict: a socket it passed there whose address cannot
    // overlap the requested one did not block.
    let kernel: Vec<&KernelHolder> = kernel
        .iter()
        .filter(|k| may_overlap(&b.requested, b.v6only, &k.local))
        .collect();
    let same = |k: &KernelHolder, h: &Holder| {
        k.state == h.state && k.local == h.local && unset(k.remote) == unset(h.remote)
    };
    let show = |k: &KernelHolder| match k.remote {
        Some(r) => format!("{} {} -> {r}", k.state, k.local),
        None => format!("{} {}", k.state, k.local),
    };
    let what = format!("{} {}", b.syscall.as_str(), b.requested);
    // Timewait holders past those listed were counted, not named: one the
    // kernel names may be among them.
    let counted = |k: &KernelHolder| {
        b.holders_omitted > 0
            && matches!(
                k.state,
                crate::event::TcpState::TimeWait | crate::event::TcpState::FinWait2
            )
    };
    if let Some(k) = kernel
        .iter()
        .find(|k| !b.holders.iter().any(|h| same(k, h)) && !counted(k))
    {
        return Some(format!(
            "{what}: the kernel found {} blocking, which twmon's model does not name (it names {})",
            show(k),
            if b.holders.is_empty() {
                "none".to_string()
            } else {
                b.holders
                    .iter()
                    .map(|h| format!("{} {}", h.state, h.local))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    if kernel.is_empty() && !b.holders.is_empty() {
        return Some(format!(
            "{what}: twmon's model names {} holder(s) ({} {} first) but the kernel found no blocking socket",
            b.holders.len(),
            b.holders[0].state,
            b.holders[0].local
        ));
    }
    None
}

/// Where the kernel's port verdict (precise mode) and the diagnosis
/// disagree: `ephemeral_exhausted` must come with a failed search of the
/// range (a port function asked for port 0), and a failed search with
/// nothing else; a diagnosis that names holders needs a port function that
/// refused the port.
pub fn kernel_port_disagreement(b: &BindFailed) -> Option<String> {
    let k = b.kernel_port.as_ref()?;
    let code = b.diagnosis.as_ref()?.code;
    let what = format!("{} {}", b.syscall.as_str(), b.requested);
    let kernel = match (&k.function, k.port, &k.error) {
        (Some(f), Some(p), Some(e)) => format!("{f} failed for port {p} ({e})"),
        _ => "no port function failed".to_string(),
    };
    let exhausted = code == DiagnosisCode::EphemeralExhausted;
    if exhausted != k.range_exhausted() {
        let said = if exhausted {
            "the ephemeral range is exhausted".to_string()
        } else {
            code.as_str().to_string()
        };
        return Some(format!(
            "{what}: twmon says {said}, but in the kernel {kernel}"
        ));
    }
    if !b.holders.is_empty() && k.function.is_none() {
        return Some(format!(
            "{what}: twmon names {} holder(s) ({} {} first), but in the kernel {kernel}",
            b.holders.len(),
            b.holders[0].state,
            b.holders[0].local
        ));
    }
    None
}

/// A remote endpoint of 0.0.0.0:0 / [::]:0 means none.
fn unset(r: Option<Endpoint>) -> Option<Endpoint> {
    r.filter(|e| e.port() != 0 || !e.is_unspecified())
}

/// Could a socket bound at `held` overlap a bind of `asked` (address only;
/// `inet_rcv_saddr_equal` with wildcards)? Unknown flags count as yes.
fn may_overlap(asked: &Endpoint, asked_v6only: bool, held: &Endpoint) -> bool {
    use std::net::IpAddr;
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let (a, h) = (asked.ip(), held.ip());
    if a == h || asked.is_unspecified() && a.is_ipv4() == h.is_ipv4() {
        return true;
    }
    match (a, h) {
        (IpAddr::V6(x), _) if x.is_unspecified() => !asked_v6only || h.is_ipv6(),
        (_, IpAddr::V6(y)) if y.is_unspecified() => true,
        (_, IpAddr::V4(y)) if y.is_unspecified() => v4(a).is_some(),
        (IpAddr::V4(x), _) if x.is_unspecified() => v4(h).is_some(),
        _ => matches!((v4(a), v4(h)), (Some(x), Some(y)) if x == y),
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

/// A socket the model forgot because the kernel no longer has it, as a
/// `socket` event with `gone`, stamped with the time and namespace of `at`.
fn gone_event(at: &Event, t: &crate::model::Tracked) -> Event {
    let mut ev = socket_event(at, &t.sock, t.owner.clone());
    if let Kind::Socket(s) = &mut ev.kind {
        s.gone = true;
    }
    ev
}

/// A timewait sock the model moved to TIME_WAIT after a look (see
/// [`Model::reconcile_without_time_wait`]), as a `socket` event stamped
/// with the time and namespace of `at`: a trace and the views learn it too.
fn moved_event(at: &Event, t: &crate::model::Tracked) -> Event {
    let mut ev = socket_event(at, &t.sock, None);
    if let Kind::Socket(s) = &mut ev.kind {
        s.expires_in_ms = t.expires_in_ms(at.common.ts_ns);
    }
    ev
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
        gone: false,
        shared_with: Vec::new(),
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

/// A model socket as a holder, with what the events and looks told about
/// it: who left a timewait socket, who opened a listener that its opener
/// no longer holds, how a connection began, who else holds its file.
fn tracked_holder(
    t: &crate::model::Tracked,
    s: &ExistingSocket,
    overlap: crate::event::Overlap,
    env: &NetEnv,
) -> crate::event::Holder {
    let mut h = diagnose::holder(s, overlap, t.owner.clone(), t.left_by.clone(), env);
    if matches!(
        h.state,
        crate::event::TcpState::Listen | crate::event::TcpState::Bound
    ) {
        h.opened_by = t.handed_on_by().cloned();
    }
    if !s.is_timewait() {
        h.outgoing = t.outgoing;
        h.shared_with = t.shared_with.to_vec();
    }
    h
}

/// See [`diagnose::own_port_connect`].
fn own_port_connect(b: &BindFailed) -> Option<Endpoint> {
    diagnose::own_port_connect(b.syscall, b.errno, b.local.map(|l| l.socket_addr()))
        .map(Endpoint::from)
}

/// A failure's explanation: the holders listed, how many more timewait
/// holders were only counted, and the diagnosis.
pub struct Explained {
    pub holders: Vec<crate::event::Holder>,
    pub omitted: usize,
    pub diagnosis: crate::event::Diagnosis,
}

/// Holders and diagnosis of a failure, from the model.
pub fn explain(
    model: &Model,
    env: Option<&NetEnv>,
    netns: u32,
    proto: Proto,
    b: &BindFailed,
    unseen: Option<String>,
) -> Explained {
    let listed = |holders, diagnosis| Explained {
        holders,
        omitted: 0,
        diagnosis,
    };
    let default_env = NetEnv::default();
    let env = env.unwrap_or(&default_env);
    let range = env.local_port_range;
    // The failing socket itself may be in the model (a listen() on a bound
    // socket): it does not block itself.
    let own = own_port_connect(b);
    let port = own.map_or(b.requested.port(), |o| o.port());
    let look = model.look_at_port(netns, proto, port, range, (b.cookie, b.inode));
    let (tracked, existing): (Vec<_>, Vec<ExistingSocket>) = look.on_port.into_iter().unzip();
    let (sockets_seen, timewait_in_range) = (look.sockets, look.timewait_in_range);
    let new = new_socket(proto, b);
    let failure = Failure::from_new(&new, b.syscall, b.errno);
    let base_ctx = Context {
        local_port_range: Some(range),
        unprivileged_port_start: Some(env.unprivileged_port_start),
        tcp_tw_reuse: Some(env.tcp_tw_reuse),
        timewait_in_range: Some(timewait_in_range),
        timewait_toward: (b.syscall == Syscall::Connect)
            .then(|| model.timewait_toward(netns, b.requested.socket_addr())),
        sockets_seen: Some(sockets_seen),
        unseen,
        dad: env.dad_refusal(b.requested.ip()),
        reserved_in_range: env.reserved_in_range(),
        device: env.device_name(b.bound_dev_if),
        ..Context::default()
    };
    if let Some(own) = own {
        // The one pair of ends connect() tried: sockets with both.
        let mut holders: Vec<crate::event::Holder> = tracked
            .iter()
            .zip(&existing)
            .filter(|(_, s)| {
                s.remote.map(Endpoint::from) == Some(b.requested)
                    && (own.is_unspecified() || Endpoint::new(s.local, s.port) == own)
            })
            .map(|(t, s)| tracked_holder(t, s, crate::event::Overlap::Exact, env))
            .collect();
        diagnose::sort_holders(&mut holders);
        let failure = Failure {
            bound: Some(own.socket_addr()),
            ..failure
        };
        let ctx = Context {
            holders,
            ..base_ctx
        };
        let d = diagnose::diagnose(&failure, &ctx);
        return listed(ctx.holders, d);
    }
    if b.errno == libc::EADDRINUSE && b.requested.port() != 0 && b.syscall != Syscall::Connect {
        let listen = b.syscall == Syscall::Listen;
        let verdict = rules::predict(&new, &existing, env, listen);
        if verdict.would_fail() && !verdict.blockers.is_empty() {
            // Each blocker with what the events told about it (`tracked`
            // and `existing` are in step): who left a timewait socket, who
            // opened a listener that its opener no longer holds, how a
            // connection began.
            //
            // Timewait blockers past the first few are summed up instead:
            // the diagnosis needs only their count, substates, expiry and
            // flags, and a busy port has tens of thousands of them (as
            // holders, ~1 us each per failure, perf: tracked_holder).
            let mut holders: Vec<crate::event::Holder> = Vec::new();
            let (mut timewait_listed, mut beyond) = (0, diagnose::TimewaitSum::default());
            for blocker in &verdict.blockers {
                let (Some(t), Some(s)) = (tracked.get(blocker.index), existing.get(blocker.index))
                else {
                    continue;
                };
                if s.is_timewait() {
                    if timewait_listed == BindFailed::HOLDERS_MAX {
                        beyond.add(&failure, s);
                        continue;
                    }
                    timewait_listed += 1;
                }
                holders.push(tracked_holder(t, s, blocker.overlap, env));
            }
            diagnose::sort_holders(&mut holders);
            // Moved in and out rather than copied: a busy port has tens of
            // thousands of them.
            let ctx = Context {
                holders,
                timewait_beyond: beyond,
                reuseaddr_would_help: verdict.reuseaddr_would_help,
                reuseport_would_help: verdict.reuseport_would_help,
                flags_uncertain: verdict.uncertain,
                reason: verdict.reason.map(str::to_string),
                ..base_ctx
            };
            let diagnosis = diagnose::diagnose(&failure, &ctx);
            return Explained {
                holders: ctx.holders,
                omitted: ctx.timewait_beyond.count,
                diagnosis,
            };
        }
    }
    let d = diagnose::diagnose(&failure, &base_ctx);
    if d.code != DiagnosisCode::EphemeralExhausted {
        return listed(Vec::new(), d);
    }
    // Who took the range: the actionable part of an exhaustion.
    let toward = (b.syscall == Syscall::Connect).then(|| b.requested.socket_addr());
    let ctx = Context {
        range_users: model.range_users(netns, proto, range, toward),
        ..base_ctx
    };
    listed(Vec::new(), diagnose::diagnose(&failure, &ctx))
}

/// Live evidence: sock_diag in the failing namespace.
pub struct Kernel {
    /// Namespace inode -> a path that opens it, found by scanning /proc.
    paths: HashMap<u32, String>,
    /// When each (netns, ports, with TIME_WAIT) was last looked at: a
    /// storm of failures does not become a storm of snapshots.
    cache: HashMap<(u32, Vec<u16>, bool), Instant>,
    /// How long a snapshot stands for its (netns, ports): 20 times what the
    /// last one took, so that looking costs at most a twentieth of a core.
    /// A port-filtered sock_diag dump still walks the kernel's whole
    /// connection table: beside 30,000 timewait socks a crash-looping
    /// server failing 100 times a second made these snapshots half of the
    /// light dashboard's CPU (perf: tcp_diag_dump) at one per 200 ms.
    cache_for: Duration,
    /// Why the last snapshot could not be taken.
    failure: Option<String>,
    /// Namespaces that nothing named when last searched for, and when.
    /// Finding one walks every task and descriptor in /proc (milliseconds);
    /// failures queued behind a storm whose process has exited would each
    /// repeat that walk (measured: 285 failures/s instead of thousands).
    missing: HashMap<u32, Instant>,
    /// Learn timewait sockets' flags with probe binds (see
    /// snapshot/flags.rs): only when no kernel program reports them (the
    /// dashboard's light mode). The probes are binds of twmon's own, which
    /// its source then drops.
    pub probe_timewait: bool,
    /// Look time that looks asked to be fresh may still spend inside the
    /// cache's time, and when it was last refilled: a twentieth of the
    /// wall clock, as the cache allows, up to [`FRESH_BUDGET`]. A failure
    /// now and then always gets its fresh look; a crash loop beside many
    /// FIN_WAIT2 socks costs no more than the cache lets looks cost.
    fresh_budget: Duration,
    fresh_refilled: Instant,
}

/// The most look time saved up for fresh looks.
const FRESH_BUDGET: Duration = Duration::from_millis(100);

const CACHE_FOR: Duration = Duration::from_millis(200);
/// ... and at most this long, however slow the last one was: in light
/// mode no event tells the model that a port's holders changed, so a
/// failure inside this time is explained with what the model had (the
/// last snapshot, the census), at most this old, as the census's own
/// period at its shortest.
const CACHE_AT_MOST: Duration = Duration::from_secs(1);
/// How long a namespace nothing names is not searched for again.
const MISSING_FOR: Duration = Duration::from_secs(1);

impl Kernel {
    pub fn new() -> Kernel {
        Kernel {
            paths: HashMap::new(),
            cache: HashMap::new(),
            cache_for: CACHE_FOR,
            failure: None,
            missing: HashMap::new(),
            probe_timewait: false,
            fresh_budget: FRESH_BUDGET,
            fresh_refilled: Instant::now(),
        }
    }

    /// Refill the fresh looks' budget for the time since the last refill;
    /// does it still hold what a look is taken to cost (the cache's time
    /// is twenty of them)?
    fn fresh_budget_left(&mut self) -> bool {
        let now = Instant::now();
        let earned = (now - self.fresh_refilled) / 20;
        self.fresh_refilled = now;
        self.fresh_budget = (self.fresh_budget + earned).min(FRESH_BUDGET);
        self.fresh_budget >= self.cache_for / 20
    }

    /// Namespace `netns`, opened: the failing process's threads first, then
    /// the named namespaces under /run/netns, any task in it, any descriptor
    /// that holds it. The file is opened and then checked (fstat), never
    /// checked by path and opened later: the path of a thread may stop
    /// naming the namespace at any moment (the thread that failed to bind
    /// often exits right after), and an open file keeps naming it.
    fn open_netns(&mut self, netns: u32, hint_pid: Option<u32>) -> Option<File> {
        if let Some(p) = self.paths.get(&netns) {
            if let Some(f) = open_if(p, netns) {
                return Some(f);
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
            if let Some(f) = open_if(&p, netns) {
                self.paths.insert(netns, p);
                return Some(f);
            }
        }
        if self
            .missing
            .get(&netns)
            .is_some_and(|at| at.elapsed() < MISSING_FOR)
        {
            return None;
        }
        self.missing.retain(|_, at| at.elapsed() < MISSING_FOR);
        let Some((found, f)) = find_netns(netns) else {
            self.missing.insert(netns, Instant::now());
            return None;
        };
        self.paths.insert(netns, found);
        Some(f)
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel::new()
    }
}

/// `path` opened, if what it names now is namespace `netns`.
fn open_if(path: &str, netns: u32) -> Option<File> {
    let f = File::open(path).ok()?;
    (f.metadata().ok()?.ino() == netns as u64).then_some(f)
}

/// A path to namespace `netns` and the namespace opened through it.
fn find_netns(netns: u32) -> Option<(String, File)> {
    let found = |p: String| open_if(&p, netns).map(|f| (p, f));
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            if let Some(r) = found(e.path().display().to_string()) {
                return Some(r);
            }
        }
    }
    // A cheap test before each open: the inode behind the path.
    let names = |p: &str| std::fs::metadata(p).is_ok_and(|m| m.ino() == netns as u64);
    for proc_ in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_.file_name();
        if !name.to_string_lossy().bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let p = format!("/proc/{}/ns/net", name.to_string_lossy());
        if names(&p) {
            if let Some(r) = found(p) {
                return Some(r);
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", name.to_string_lossy())) {
            for t in tasks.flatten() {
                let p = format!("{}/ns/net", t.path().display());
                if names(&p) {
                    if let Some(r) = found(p) {
                        return Some(r);
                    }
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
                if let Some(r) = found(fd.path().display().to_string()) {
                    return Some(r);
                }
            }
        }
    }
    None
}

/// Run `f` on a thread that has entered the network namespace at `path`.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> Option<T> {
    in_netns_file(&File::open(path).ok()?, f)
}

/// Run `f` on a thread that has entered the network namespace `file` names.
pub fn in_netns_file<T: Send>(file: &File, f: impl FnOnce() -> T + Send) -> Option<T> {
    let fd = file.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid while `file` lives.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
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
    fn snapshot_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    fn held(&mut self, inodes: &HashSet<u64>) -> Option<HashSet<u64>> {
        let owners = snapshot::OwnerMap::scan_wanted(inodes);
        if owners.unreadable > 0 {
            return None;
        }
        Some(
            inodes
                .iter()
                .filter(|i| !owners.owners(**i).is_empty())
                .copied()
                .collect(),
        )
    }

    fn census(&mut self, netns: u32, protos: &[Proto], ports: &[u16]) -> Option<Vec<(u64, u64)>> {
        let file = self.open_netns(netns, None)?;
        in_netns_file(&file, || {
            let mut seen = Vec::new();
            for &proto in protos {
                snapshot::sockdiag::visit_ports(
                    proto,
                    ports,
                    snapshot::sockdiag::ALL_STATES,
                    |d| seen.push((d.inode as u64, d.cookie)),
                )
                .ok()?;
            }
            Some(seen)
        })
        .flatten()
    }

    fn snapshot(
        &mut self,
        netns: u32,
        hint_pid: Option<u32>,
        ports: &[u16],
        fresh: bool,
        time_wait: bool,
    ) -> Option<Snapshot> {
        self.failure = None;
        let key = (netns, ports.to_vec(), time_wait);
        let mut bypass = false;
        if let Some(at) = self.cache.get(&key) {
            if at.elapsed() < self.cache_for {
                if !(fresh && self.fresh_budget_left()) {
                    // The model got this evidence a moment ago.
                    return None;
                }
                bypass = true;
            }
        }
        let Some(file) = self.open_netns(netns, hint_pid) else {
            self.failure = Some(format!(
                "no process or descriptor names network namespace {netns} any more"
            ));
            return None;
        };
        let opts = snapshot::Options {
            ports: ports.to_vec(),
            read_flags: true,
            probe_timewait: self.probe_timewait,
            without_time_wait: !time_wait,
        };
        let started = Instant::now();
        let snap = match in_netns_file(&file, || snapshot::take(&opts)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.failure = Some(format!("{e:#}"));
                return None;
            }
            None => {
                self.failure = Some(format!("cannot enter network namespace {netns}"));
                return None;
            }
        };
        if bypass {
            self.fresh_budget = self.fresh_budget.saturating_sub(started.elapsed());
        }
        self.cache_for = (started.elapsed() * 20).clamp(CACHE_FOR, CACHE_AT_MOST);
        let keep = self.cache_for;
        self.cache.retain(|_, at| at.elapsed() < keep);
        self.cache.insert(key, Instant::now());
        Some(snap)
    }
}

#[cfg(test)]
mod kernel_holder_tests {
    use super::*;
    use crate::event::{KernelPort, Overlap, TcpState};

    pub(super) fn failed(
        requested: &str,
        holders: Vec<Holder>,
        kernel: Option<Vec<KernelHolder>>,
    ) -> BindFailed {
        BindFailed {
            holders_omitted: 0,
            device: None,
            syscall: Syscall::Bind,
            errno: libc::EADDRINUSE,
            error: "EADDRINUSE".into(),
            requested: requested.parse().unwrap(),
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 0,
            holders,
            diagnosis: None,
            freebind: false,
            transparent: false,
            bound_dev_if: 0,
            cgroup_id: 0,
            cookie: 0,
            inode: 0,
            tid: 0,
            local: None,
            kernel_holders: kernel,
            holder_mismatch: None,
            kernel_port: None,
            port_mismatch: None,
        }
    }

    fn holder(state: TcpState, local: &str, remote: Option<&str>) -> Holder {
        Holder {
            device: None,
            state,
            local: local.parse().unwrap(),
            remote: remote.map(|r| r.parse().unwrap()),
            pid: None,
            comm: None,
            uid: None,
            reuseaddr: false,
            reuseport: false,
            expires_in_ms: None,
            overlap: Overlap::Exact,
            left_by: None,
            opened_by: None,
            outgoing: None,
            shared_with: Vec::new(),
        }
    }

    fn kh(state: TcpState, local: &str, remote: Option<&str>) -> KernelHolder {
        KernelHolder {
            state,
            local: local.parse().unwrap(),
            remote: remote.map(|r| r.parse().unwrap()),
        }
    }

    fn diagnosed(mut b: BindFailed, code: DiagnosisCode, kernel: KernelPort) -> BindFailed {
        b.diagnosis = Some(crate::event::Diagnosis {
            code,
            summary: String::new(),
            fix: String::new(),
            reuseaddr_would_help: false,
            reuseport_would_help: false,
        });
        b.kernel_port = Some(Box::new(kernel));
        b
    }

    fn port_failed(function: &str, port: u16, ret: i32, errno: i32) -> KernelPort {
        KernelPort {
            function: Some(function.into()),
            port: Some(port),
            ret: Some(ret),
            errno: Some(errno),
            error: Some(crate::event::errno_name(errno)),
        }
    }

    #[test]
    fn the_kernels_port_verdict_must_agree_with_the_diagnosis() {
        use DiagnosisCode::*;
        let listen = || vec![holder(TcpState::Listen, "127.0.0.1:80", None)];
        // A conflict on the port asked for, named by the model: agreement
        // (ret 1 as 6.1's inet_csk_get_port returns it).
        let get_port = port_failed("inet_csk_get_port", 80, 1, libc::EADDRINUSE);
        let b = diagnosed(failed("127.0.0.1:80", listen(), None), Listener, get_port);
        assert_eq!(kernel_port_disagreement(&b), None);
        // Exhaustion, and the kernel's search of the range failed.
        let mut b = failed("127.0.0.1:7800", vec![], None);
        b.syscall = Syscall::Connect;
        b.errno = libc::EADDRNOTAVAIL;
        let search = port_failed("__inet_hash_connect", 0, -99, libc::EADDRNOTAVAIL);
        let ok = diagnosed(b.clone(), EphemeralExhausted, search);
        assert_eq!(kernel_port_disagreement(&ok), None);
        // Exhaustion, but the socket had a port of its own: its 4-tuple was
        // taken, the range was never searched.
        let own = port_failed("__inet_hash_connect", 40000, -99, libc::EADDRNOTAVAIL);
        let m = kernel_port_disagreement(&diagnosed(b.clone(), EphemeralExhausted, own.clone()))
            .unwrap();
        assert!(
            m.contains("__inet_hash_connect failed for port 40000"),
            "{m}"
        );
        // ... which twmon now tells as the connection holding that pair.
        let mut pair = b.clone();
        pair.holders = vec![holder(
            TcpState::Established,
            "127.0.0.1:40000",
            Some("127.0.0.1:7800"),
        )];
        assert_eq!(
            kernel_port_disagreement(&diagnosed(pair, Established, own)),
            None
        );
        // Exhaustion, and no port function failed at all.
        let m = kernel_port_disagreement(&diagnosed(b, EphemeralExhausted, KernelPort::default()))
            .unwrap();
        assert!(m.contains("no port function failed"), "{m}");
        // Holders named, no port function refused the port.
        let b = diagnosed(
            failed("127.0.0.1:80", listen(), None),
            Listener,
            KernelPort::default(),
        );
        let m = kernel_port_disagreement(&b).unwrap();
        assert!(m.contains("names 1 holder(s)"), "{m}");
        // Hook not live: nothing to compare.
        let mut b = failed("127.0.0.1:80", listen(), None);
        b.kernel_port = None;
        assert_eq!(kernel_port_disagreement(&b), None);
    }

    #[test]
    fn agreeing_holders_are_no_finding() {
        use TcpState::*;
        let model = vec![
            holder(TimeWait, "127.0.0.1:80", Some("127.0.0.1:5000")),
            holder(TimeWait, "127.0.0.1:80", Some("127.0.0.1:5001")),
        ];
        // The kernel stops at the first blocking socket: a subset agrees.
        let k = vec![kh(TimeWait, "127.0.0.1:80", Some("127.0.0.1:5001"))];
        assert_eq!(
            kernel_disagreement(&failed("127.0.0.1:80", model, Some(k))),
            None
        );
        // Hook not live: nothing to compare.
        assert_eq!(
            kernel_disagreement(&failed("127.0.0.1:80", vec![], None)),
            None
        );
    }

    #[test]
    fn a_socket_only_the_kernel_names_is_a_finding() {
        use TcpState::*;
        let model = vec![holder(Listen, "127.0.0.1:80", None)];
        let k = vec![kh(CloseWait, "127.0.0.1:80", Some("127.0.0.1:5000"))];
        let m = kernel_disagreement(&failed("127.0.0.1:80", model.clone(), Some(k))).unwrap();
        assert!(
            m.contains("kernel found CLOSE_WAIT 127.0.0.1:80 -> 127.0.0.1:5000"),
            "{m}"
        );
        let m = kernel_disagreement(&failed("127.0.0.1:80", model, Some(vec![]))).unwrap();
        assert!(m.contains("kernel found no blocking socket"), "{m}");
        let m = kernel_disagreement(&failed(
            "127.0.0.1:80",
            vec![],
            Some(vec![kh(Listen, "0.0.0.0:80", None)]),
        ))
        .unwrap();
        assert!(m.contains("does not name (it names none)"), "{m}");
        // An ephemeral port search: what blocked each port tried is no holder.
        let k = vec![kh(TimeWait, "127.0.0.1:40000", Some("127.0.0.1:7800"))];
        assert_eq!(
            kernel_disagreement(&failed("127.0.0.1:0", vec![], Some(k))),
            None
        );
    }

    #[test]
    fn sockets_whose_address_cannot_overlap_are_not_holders() {
        use TcpState::*;
        // A wildcard IPv4 bind: the kernel passes an IPv6 [::1] socket
        // through inet_bind_conflict, then its address check drops it.
        let k = vec![kh(Listen, "[::1]:80", None)];
        assert_eq!(
            kernel_disagreement(&failed("0.0.0.0:80", vec![], Some(k))),
            None
        );
        let a: Endpoint = "0.0.0.0:80".parse().unwrap();
        assert!(may_overlap(&a, false, &"127.0.0.1:80".parse().unwrap()));
        assert!(may_overlap(&a, false, &"[::]:80".parse().unwrap()));
        assert!(may_overlap(
            &a,
            false,
            &"[::ffff:127.0.0.1]:80".parse().unwrap()
        ));
        let v6any: Endpoint = "[::]:80".parse().unwrap();
        assert!(may_overlap(&v6any, false, &"127.0.0.1:80".parse().unwrap()));
        assert!(!may_overlap(&v6any, true, &"127.0.0.1:80".parse().unwrap()));
        let lo: Endpoint = "127.0.0.1:80".parse().unwrap();
        assert!(!may_overlap(&lo, false, &"127.0.0.2:80".parse().unwrap()));
    }
}

#[cfg(test)]
mod resync_tests {
    use super::*;
    use crate::event::{Common, Lost, StateChange, TcpState};

    /// The kernel as a list of (inode, cookie), counting the censuses.
    struct Census(Vec<(u64, u64)>, usize);

    impl Evidence for Census {
        fn census(&mut self, _: u32, _: &[Proto], _: &[u16]) -> Option<Vec<(u64, u64)>> {
            self.1 += 1;
            Some(self.0.clone())
        }
    }

    pub(super) fn ev(ts_ns: u64, kind: Kind) -> Event {
        Event {
            common: Common {
                ts: String::new(),
                ts_ns,
                netns: 1,
                proto: Proto::Tcp,
                pid: None,
                comm: None,
                container: None,
            },
            kind,
        }
    }

    pub(super) fn listen(port: u16, cookie: u64) -> Kind {
        Kind::State(StateChange {
            local: format!("127.0.0.1:{port}").parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            old: TcpState::Close,
            new: TcpState::Listen,
            cookie,
            reuseaddr: false,
            reuseport: false,
            uid: 0,
            inode: 0,
        })
    }

    pub(super) fn lost() -> Kind {
        Kind::Lost(Lost {
            count: 7,
            stream: None,
        })
    }

    fn ports(c: &Correlator<Census>) -> Vec<u16> {
        let mut v: Vec<u16> = c
            .model
            .namespace(1)
            .unwrap()
            .sockets()
            .map(|t| t.sock.port)
            .collect();
        v.sort();
        v
    }

    /// After a loss the model keeps only what the kernel still has, and
    /// asks the kernel at most once per RESYNC_EVERY.
    #[test]
    fn lost_events_make_the_model_check_the_kernel() {
        let mut c = Correlator::new(Census(vec![(0, 11)], 0));
        c.process(ev(1, listen(80, 11)));
        c.process(ev(2, listen(81, 12)));
        c.process(udp_bound(53, 5, 55));
        assert_eq!(ports(&c), vec![53, 80, 81], "no loss, no census");
        assert_eq!(c.evidence.1, 0);
        let out = c.process(ev(3, lost()));
        assert_eq!(ports(&c), vec![80], "81's closing was lost: retired");
        assert_eq!(c.evidence.1, 1);
        let announced: Vec<u16> = out
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Socket(s) if s.gone => Some(s.local.port()),
                _ => None,
            })
            .collect();
        assert_eq!(
            announced,
            vec![53],
            "the UDP socket is announced, not the listener whose closing was lost"
        );
        c.process(ev(4, listen(82, 13)));
        c.process(ev(5, lost()));
        assert_eq!(c.evidence.1, 1, "not again within RESYNC_EVERY");
        assert_eq!(ports(&c), vec![80, 82]);
    }

    /// Under heavy loss the model grows by the closings it never sees: past
    /// RESYNC_GROWTH sockets it checks again after RESYNC_SOONEST instead
    /// of waiting for RESYNC_EVERY, and gives the table's room back.
    #[test]
    fn a_model_grown_by_losses_checks_the_kernel_sooner() {
        let mut c = Correlator::new(Census(vec![(0, 11)], 0));
        c.process(ev(1, listen(80, 11)));
        c.process(ev(2, lost()));
        assert_eq!(c.evidence.1, 1);
        let n = RESYNC_GROWTH as u64 + 10;
        for i in 0..n {
            c.process(ev(3 + i, listen(1000 + (i % 60000) as u16, 100 + i)));
        }
        c.process(ev(3 + n, lost()));
        assert_eq!(c.evidence.1, 1, "not within RESYNC_SOONEST");
        std::thread::sleep(RESYNC_SOONEST);
        c.process(ev(4 + n, lost()));
        assert_eq!(c.evidence.1, 2, "grown past RESYNC_GROWTH: checked");
        assert_eq!(ports(&c), vec![80]);
        let ns = c.model.namespace(1).expect("namespace");
        assert!(
            ns.capacity() <= 4 * 1024,
            "table kept {} slots",
            ns.capacity()
        );
    }

    pub(super) fn udp_bound(port: u16, inode: u64, cookie: u64) -> Event {
        let mut e = ev(
            1,
            Kind::Bound(crate::event::Bound {
                syscall: Syscall::Bind,
                local: format!("127.0.0.1:{port}").parse().unwrap(),
                reuseaddr: false,
                reuseport: false,
                v6only: false,
                uid: 0,
                cookie,
                bound_dev_if: 0,
                inode,
            }),
        );
        e.common.proto = Proto::Udp;
        e
    }

    /// A UDP socket (no event tells when it closes) is looked for at each
    /// check while the model holds it; once the kernel no longer has it,
    /// it leaves the model as a `socket` event with `gone`, which a replay's
    /// model applies the same way. Sockets that events retire are left to
    /// them, and with nothing unretired the kernel is not asked at all.
    #[test]
    fn a_socket_no_event_retires_leaves_when_the_kernel_no_longer_has_it() {
        let mut c = Correlator::new(Census(vec![(0, 11), (5, 55)], 0));
        assert!(c.tick().is_empty());
        assert_eq!(
            c.evidence.1, 0,
            "nothing unretired: the kernel is not asked"
        );
        c.last_unretired_check = None;
        c.process(ev(1, listen(80, 11)));
        let bound = udp_bound(53, 5, 55);
        c.process(bound.clone());
        assert!(c.tick().is_empty(), "still there");
        assert_eq!(c.evidence.1, 1);
        assert_eq!(ports(&c), vec![53, 80]);
        // The UDP socket closes, and the listener is not listed either.
        c.evidence.0.clear();
        assert!(
            c.tick().is_empty(),
            "not again within UNRETIRED_CHECK_EVERY"
        );
        assert_eq!(c.evidence.1, 1);
        c.last_unretired_check = None;
        let gone = c.tick();
        assert_eq!(c.evidence.1, 2);
        assert_eq!(gone.len(), 1, "{gone:?}");
        let Kind::Socket(s) = &gone[0].kind else {
            panic!("{gone:?}")
        };
        assert!(s.gone);
        assert_eq!((s.local.port(), s.inode, s.cookie), (53, 5, 55));
        assert_eq!(
            (gone[0].common.proto, gone[0].common.netns),
            (Proto::Udp, 1)
        );
        assert_eq!(ports(&c), vec![80], "the listener waits for its event");
        // Nothing unretired is left: no more looks.
        c.last_unretired_check = None;
        assert!(c.tick().is_empty());
        assert_eq!(c.evidence.1, 2);
        // A replay applies the same two events to the same end.
        let mut replay = Model::new();
        replay.apply(&bound);
        assert_eq!(replay.socket_count(), 1);
        replay.apply(&gone[0]);
        assert_eq!(replay.socket_count(), 0);
    }
}

#[cfg(test)]
mod unseen_namespace_tests {
    use super::resync_tests::udp_bound;
    use super::*;

    /// A kernel whose namespace cannot be entered; `held` answers who still
    /// holds which socket.
    struct Hidden {
        held: Option<HashSet<u64>>,
        censuses: usize,
        helds: usize,
    }

    impl Evidence for Hidden {
        fn census(&mut self, _: u32, _: &[Proto], _: &[u16]) -> Option<Vec<(u64, u64)>> {
            self.censuses += 1;
            None
        }
        fn held(&mut self, _: &HashSet<u64>) -> Option<HashSet<u64>> {
            self.helds += 1;
            self.held.clone()
        }
    }

    fn gone_ports(out: &[Event]) -> Vec<u16> {
        out.iter()
            .map(|e| match &e.kind {
                Kind::Socket(s) if s.gone => s.local.port(),
                k => panic!("{k:?}"),
            })
            .collect()
    }

    /// A namespace that cannot be entered any more: its sockets that no
    /// process holds a descriptor of leave (announced), those still held
    /// stay, and the namespace is not looked for again before
    /// UNSEEN_RETRY.
    #[test]
    fn in_a_namespace_that_cannot_be_entered_only_held_sockets_stay() {
        let mut c = Correlator::new(Hidden {
            held: Some([6].into()),
            censuses: 0,
            helds: 0,
        });
        c.process(udp_bound(53, 5, 55));
        c.process(udp_bound(54, 6, 66));
        assert_eq!(gone_ports(&c.tick()), vec![53]);
        assert_eq!((c.evidence.censuses, c.evidence.helds), (1, 1));
        c.last_unretired_check = None;
        assert!(c.tick().is_empty());
        assert_eq!(
            (c.evidence.censuses, c.evidence.helds),
            (1, 1),
            "not looked for again within UNSEEN_RETRY"
        );
    }

    /// When the descriptors could not be read, nothing is concluded.
    #[test]
    fn without_the_descriptors_nothing_leaves() {
        let mut c = Correlator::new(Hidden {
            held: None,
            censuses: 0,
            helds: 0,
        });
        c.process(udp_bound(53, 5, 55));
        assert!(c.tick().is_empty());
        assert_eq!(c.model.socket_count(), 1);
    }
}

#[cfg(test)]
mod late_look_tests {
    use super::resync_tests::{ev, listen};
    use super::*;
    use crate::event::TcpState;

    /// The kernel's look at a failure's port, showing `sockets`, the
    /// ports each look asked for, with whether it had to be fresh, and
    /// whether each asked for the socks in TIME_WAIT.
    struct Look(Vec<ExistingSocket>, Vec<(Vec<u16>, bool)>, Vec<bool>);

    impl Evidence for Look {
        fn snapshot(
            &mut self,
            _: u32,
            _: Option<u32>,
            ports: &[u16],
            fresh: bool,
            time_wait: bool,
        ) -> Option<Snapshot> {
            self.1.push((ports.to_vec(), fresh));
            self.2.push(time_wait);
            // As the kernel answers: a timewait sock's substate decides.
            let listed = |s: &&ExistingSocket| {
                time_wait || !(s.is_timewait() && s.state == TcpState::TimeWait)
            };
            Some(Snapshot {
                sockets: self.0.iter().filter(listed).cloned().collect(),
                owners: Default::default(),
                env: NetEnv::default(),
                netns: None,
                notes: Vec::new(),
            })
        }
    }

    fn failure(requested: &str) -> Event {
        ev(
            2,
            Kind::BindFailed(Box::new(super::kernel_holder_tests::failed(
                requested,
                Vec::new(),
                None,
            ))),
        )
    }

    fn explained(out: &[Event]) -> (&[Holder], DiagnosisCode) {
        match out.last().map(|e| &e.kind) {
            Some(Kind::BindFailed(b)) => (&b.holders, b.diagnosis.as_ref().unwrap().code),
            _ => panic!("{out:?}"),
        }
    }

    /// A crash loop: every failure looks at the port again. Only what the
    /// model did not hold yet goes on as `socket` events (a busy port's
    /// look lists tens of thousands of sockets), and every failure is
    /// explained alike.
    #[test]
    fn a_look_passes_on_only_what_the_model_did_not_hold() {
        let tw = |port: u16, cookie: u64| {
            let mut s = ExistingSocket::new(
                Proto::Tcp,
                "127.0.0.1:8002".parse().unwrap(),
                TcpState::TimeWait,
            );
            s.remote = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            s.cookie = cookie;
            s.expires_in_ms = Some(30_000);
            s
        };
        let sockets = |out: &[Event]| {
            out.iter()
                .filter_map(|e| match &e.kind {
                    Kind::Socket(s) => Some(s.cookie),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let mut c = Correlator::new(Look(
            vec![tw(40000, 77), tw(40001, 78)],
            Vec::new(),
            Vec::new(),
        ));
        let first = c.process(failure("0.0.0.0:8002"));
        assert_eq!(sockets(&first), vec![77, 78]);
        let again = c.process(failure("0.0.0.0:8002"));
        assert_eq!(sockets(&again), Vec::<u64>::new(), "nothing new");
        c.evidence.0.push(tw(40002, 79));
        c.evidence.0[0].state = TcpState::FinWait2;
        let third = c.process(failure("0.0.0.0:8002"));
        assert_eq!(
            sockets(&third),
            vec![77, 79],
            "a substate changed, one more sock"
        );
        let (holders, code) = explained(&third);
        assert_eq!(code, DiagnosisCode::TimeWait);
        assert_eq!(holders.len(), 3, "{holders:?}");
        assert_eq!(explained(&again).1, DiagnosisCode::TimeWait);
    }

    /// A listener that closed after the failure and before the kernel was
    /// looked at: the look alone explains nothing, the events do.
    #[test]
    fn a_holder_that_closed_right_after_the_failure_still_explains_it() {
        let mut c = Correlator::new(Look(Vec::new(), Vec::new(), Vec::new()));
        c.process(ev(1, listen(8002, 11)));
        let out = c.process(failure("0.0.0.0:8002"));
        let (holders, code) = explained(&out);
        assert_eq!(code, DiagnosisCode::Listener);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].state, TcpState::Listen);
        assert_eq!(holders[0].local, "127.0.0.1:8002".parse().unwrap());
        assert_eq!(
            c.model.socket_count(),
            0,
            "the kernel no longer has it: it stays retired"
        );
    }

    /// A listener whose closing had not reached the model when the failure
    /// did (it closed before the failure), beside a TIME_WAIT the look
    /// shows: the look explains it, and the listener is not named.
    #[test]
    fn what_the_look_explains_is_not_second_guessed_by_the_events() {
        let mut tw = ExistingSocket::new(
            Proto::Tcp,
            "127.0.0.1:8002".parse().unwrap(),
            TcpState::TimeWait,
        );
        tw.remote = Some("127.0.0.1:40000".parse().unwrap());
        tw.cookie = 77;
        let mut c = Correlator::new(Look(vec![tw], Vec::new(), Vec::new()));
        c.process(ev(1, listen(8002, 11)));
        let out = c.process(failure("0.0.0.0:8002"));
        let (holders, code) = explained(&out);
        assert_eq!(code, DiagnosisCode::TimeWait);
        assert!(
            holders.iter().all(|h| h.state == TcpState::TimeWait),
            "{holders:?}"
        );
    }

    /// connect() to 127.0.0.1:9000 from 127.0.0.1:40000, which its socket
    /// had bound: the look is at port 40000, and the one connection with
    /// both ends is the holder; the same local port toward another peer,
    /// and the listener on the peer's port, are not.
    #[test]
    fn a_connect_from_its_own_port_is_held_by_that_connection() {
        let conn = |local: &str, remote: &str, cookie: u64| {
            let mut s =
                ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), TcpState::Established);
            s.remote = Some(remote.parse().unwrap());
            s.cookie = cookie;
            s
        };
        let mut listener = ExistingSocket::new(
            Proto::Tcp,
            "127.0.0.1:9000".parse().unwrap(),
            TcpState::Listen,
        );
        listener.cookie = 3;
        let look = Look(
            vec![
                conn("127.0.0.1:40000", "127.0.0.1:9000", 1),
                conn("127.0.0.1:40000", "127.0.0.1:9999", 2),
                listener,
            ],
            Vec::new(),
            Vec::new(),
        );
        let mut c = Correlator::new(look);
        let mut f = failure("127.0.0.1:9000");
        if let Kind::BindFailed(b) = &mut f.kind {
            b.syscall = Syscall::Connect;
            b.errno = libc::EADDRNOTAVAIL;
            b.local = Some("127.0.0.1:40000".parse().unwrap());
        }
        let out = c.process(f);
        let (holders, code) = explained(&out);
        assert_eq!(code, DiagnosisCode::Established);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].remote, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(holders[0].overlap, crate::event::Overlap::Exact);
        assert_eq!(c.evidence.1, vec![(vec![40000], false)]);
    }

    /// A port with more blocking sockets than an event lists: the first
    /// are listed, the rest counted, and the diagnosis counts them all.
    #[test]
    fn a_busy_port_lists_the_first_holders_and_counts_the_rest() {
        let tws: Vec<ExistingSocket> = (0..40u16)
            .map(|i| {
                let mut tw = ExistingSocket::new(
                    Proto::Tcp,
                    "127.0.0.1:8004".parse().unwrap(),
                    TcpState::TimeWait,
                );
                tw.remote = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 40000 + i)));
                tw.cookie = 100 + i as u64;
                tw
            })
            .collect();
        let mut c = Correlator::new(Look(tws, Vec::new(), Vec::new()));
        let out = c.process(failure("0.0.0.0:8004"));
        let Some(Kind::BindFailed(b)) = out.last().map(|e| &e.kind) else {
            panic!("{out:?}")
        };
        assert_eq!(b.holders.len(), BindFailed::HOLDERS_MAX);
        assert_eq!(b.holders_omitted, 40 - BindFailed::HOLDERS_MAX);
        let d = b.diagnosis.as_ref().unwrap();
        assert_eq!(d.code, DiagnosisCode::TimeWait);
        assert!(
            d.summary.starts_with("40 TIME_WAIT sockets"),
            "{}",
            d.summary
        );
    }

    /// A FIN_WAIT2 timewait sock in the model: its peer's FIN may have
    /// made it TIME_WAIT without a tracepoint, so the failure's look must
    /// be fresh, and what the kernel shows now is the holder's state.
    #[test]
    fn a_fin_wait2_timewait_makes_the_look_fresh() {
        let (local, remote) = ("127.0.0.1:8003", "127.0.0.1:40001");
        let mut now = ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), TcpState::TimeWait);
        now.remote = Some(remote.parse().unwrap());
        now.cookie = 5;
        let mut c = Correlator::new(Look(vec![now], Vec::new(), Vec::new()));
        let open = |substate| {
            Kind::TimewaitOpen(crate::event::TimewaitOpen {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                substate,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 5,
                reuseaddr: false,
                reuseport: false,
            })
        };
        c.process(ev(1, open(TcpState::FinWait2)));
        let out = c.process(failure("0.0.0.0:8003"));
        let (holders, code) = explained(&out);
        assert_eq!(code, DiagnosisCode::TimeWait);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].state, TcpState::TimeWait);
        assert_eq!(c.evidence.1, vec![(vec![8003], true)]);

        // Now TIME_WAIT in the model: the next look may come from the cache.
        c.process(failure("0.0.0.0:8003"));
        assert_eq!(c.evidence.1[1], (vec![8003], false));
    }

    /// When the events told every timewait sock, the look leaves out the
    /// kernel's TIME_WAIT socks: the model keeps its own, and one it held
    /// in FIN_WAIT2 that the look no longer lists is in TIME_WAIT now.
    /// Without that (light mode, a loss since the last listing, a
    /// namespace neither the start nor a look listed and a young stream)
    /// the look lists them all, as before.
    #[test]
    fn a_look_leaves_out_time_wait_when_the_events_told_every_timewait_sock() {
        let local = "127.0.0.1:8004";
        let remote = |cookie: u64| format!("127.0.0.1:{}", 40000 + cookie);
        let kernel = |cookie: u64, state| {
            let mut s = ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), state);
            s.timewait = true;
            s.remote = Some(remote(cookie).parse().unwrap());
            s.cookie = cookie;
            s.expires_in_ms = Some(60_000);
            s
        };
        let open = |cookie: u64, substate| {
            Kind::TimewaitOpen(crate::event::TimewaitOpen {
                local: local.parse().unwrap(),
                remote: remote(cookie).parse().unwrap(),
                substate,
                expires_in_ms: 60_000,
                left_by: None,
                cookie,
                reuseaddr: false,
                reuseport: false,
            })
        };
        use TcpState::{FinWait2, TimeWait};
        // The kernel now: 5 went on to TIME_WAIT unseen, 6 was there
        // already, 7 is still waiting for its peer.
        let look = || {
            Look(
                vec![
                    kernel(5, TimeWait),
                    kernel(6, TimeWait),
                    kernel(7, FinWait2),
                ],
                Vec::new(),
                Vec::new(),
            )
        };
        let told = |c: &mut Correlator<Look>, ts| {
            c.process(ev(ts, open(5, FinWait2)));
            c.process(ev(ts, open(6, TimeWait)));
            c.process(ev(ts, open(7, FinWait2)));
        };
        let states = |out: &[Event]| {
            let mut held: Vec<(u16, TcpState)> = explained(out)
                .0
                .iter()
                .map(|h| (h.remote.unwrap().port() - 40000, h.state))
                .collect();
            held.sort();
            held
        };
        let socket_events = |out: &[Event]| {
            out.iter()
                .filter_map(|e| match &e.kind {
                    Kind::Socket(s) => Some((s.cookie, s.state)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let want = vec![(5, TimeWait), (6, TimeWait), (7, FinWait2)];
        let at = |ts: u64| {
            let mut f = failure("0.0.0.0:8004");
            f.common.ts_ns = ts;
            f
        };

        let mut c = Correlator::new(look());
        c.follow_timewait(&[1]);
        told(&mut c, 1);
        let out = c.process(at(2));
        assert_eq!(states(&out), want);
        assert_eq!(
            socket_events(&out),
            vec![(5, TimeWait)],
            "only the move is news"
        );
        assert_eq!(
            c.model.socket_count(),
            3,
            "TIME_WAIT socks not asked, not retired"
        );
        assert_eq!(c.evidence.2, vec![false]);

        // Each reason to ask for them all: every sock listed, none moved
        // by absence.
        let full_look = |c: &mut Correlator<Look>, ts| {
            let out = c.process(at(ts));
            assert_eq!(states(&out), want);
            assert_eq!(c.evidence.2, vec![true]);
            socket_events(&out)
        };
        let mut light = Correlator::new(look());
        told(&mut light, 1);
        assert_eq!(full_look(&mut light, 2), vec![(5, TimeWait)], "light mode");
        let mut young = Correlator::new(look());
        young.follow_timewait(&[]);
        told(&mut young, 1);
        assert_eq!(
            full_look(&mut young, 2),
            vec![(5, TimeWait)],
            "not seeded, young"
        );
        // That look listed the port whole: the next leaves TIME_WAIT out.
        assert_eq!(states(&young.process(at(3))), want);
        assert_eq!(young.evidence.2, vec![true, false]);
        let mut lossy = Correlator::new(look());
        lossy.follow_timewait(&[1]);
        told(&mut lossy, 1);
        lossy.process(ev(2, super::resync_tests::lost()));
        // The kernel dropped 6 meanwhile, with its end among what was lost.
        lossy.evidence.0.remove(1);
        let out = lossy.process(at(3));
        assert_eq!(
            states(&out),
            vec![(5, TimeWait), (7, FinWait2)],
            "6 retired by the look"
        );
        assert_eq!(lossy.evidence.2, vec![true]);
        // A timewait lifetime after the loss, the events are trusted again.
        let out = lossy.process(at(3 + 61_000_000_000));
        assert_eq!(states(&out), vec![(5, TimeWait), (7, FinWait2)]);
        assert_eq!(lossy.evidence.2, vec![true, false]);
    }
}

#[cfg(test)]
mod kernel_evidence_tests {
    use super::*;

    /// The check of [`Correlator::tick`] against the real kernel: a UDP
    /// socket that held a failed bind's port is still there while it is
    /// open, and announced gone at the first check after it closed.
    #[test]
    fn a_udp_holder_closed_after_its_failure_is_announced_gone() {
        let Some(ns) = crate::scenario::Netns::for_test(
            "a_udp_holder_closed_after_its_failure_is_announced_gone",
        ) else {
            return;
        };
        let udp = udp_socket_in(&ns);
        let port = udp.local_addr().unwrap().port();
        let mut c = Correlator::new(Kernel::new());
        let out = c.process(udp_failure(ns.inode(), port));
        let Some(Kind::BindFailed(b)) = out.last().map(|e| &e.kind) else {
            panic!("{out:?}")
        };
        assert_eq!(b.holders.len(), 1, "{:?}", b.holders);
        assert_eq!(b.holders[0].state, crate::event::TcpState::Bound);
        assert!(c.tick().is_empty(), "the socket is open");
        assert_eq!(udp_on(&c, ns.inode(), port), 1);
        drop(udp);
        c.last_unretired_check = None;
        let gone = c.tick();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(matches!(&gone[0].kind, Kind::Socket(s) if s.gone && s.local.port() == port));
        assert_eq!(udp_on(&c, ns.inode(), port), 0);
    }

    /// A namespace that went away with its UDP socket (a container that
    /// stopped): nothing can enter it, no process holds the socket, and it
    /// is announced gone. Another one, kept alive only by a socket whose
    /// descriptor this process holds (nothing names the namespace itself):
    /// that socket stays.
    #[test]
    fn sockets_of_a_namespace_nothing_names_leave_unless_held() {
        let test = "sockets_of_a_namespace_nothing_names_leave_unless_held";
        let (Some(gone_ns), Some(hidden_ns)) = (
            crate::scenario::Netns::for_test(test),
            crate::scenario::Netns::for_test(test),
        ) else {
            return;
        };
        let (gone_sock, kept_sock) = (udp_socket_in(&gone_ns), udp_socket_in(&hidden_ns));
        let mut c = Correlator::new(Kernel::new());
        let mut watched = Vec::new();
        for (ns, sock) in [(&gone_ns, &gone_sock), (&hidden_ns, &kept_sock)] {
            let port = sock.local_addr().unwrap().port();
            let out = c.process(udp_failure(ns.inode(), port));
            assert!(
                matches!(out.last().map(|e| &e.kind), Some(Kind::BindFailed(b)) if b.holders.len() == 1),
                "{out:?}"
            );
            watched.push((ns.inode(), port));
        }
        drop(gone_sock);
        drop(gone_ns);
        drop(hidden_ns);
        c.last_unretired_check = None;
        let gone = c.tick();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(gone[0].common.netns, watched[0].0);
        assert!(
            matches!(&gone[0].kind, Kind::Socket(s) if s.gone && s.local.port() == watched[0].1)
        );
        let (ns, port) = watched[1];
        assert_eq!(
            udp_on(&c, ns, port),
            1,
            "still held by this process: it stays"
        );
        drop(kept_sock);
    }

    /// UDP sockets the model holds on `port` of `netns`.
    fn udp_on(c: &Correlator<Kernel>, netns: u32, port: u16) -> usize {
        c.model
            .namespace(netns)
            .map_or(0, |ns| ns.on_port(Proto::Udp, port).count())
    }

    /// A UDP socket bound to 127.0.0.1 and a free port in `ns`.
    fn udp_socket_in(ns: &crate::scenario::Netns) -> std::net::UdpSocket {
        ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0"))
            .expect("ran in the namespace")
            .expect("a UDP socket")
    }

    /// A failed UDP bind on 127.0.0.1:`port` in `netns`, now.
    fn udp_failure(netns: u32, port: u16) -> Event {
        Event {
            common: crate::event::Common {
                ts: String::new(),
                ts_ns: crate::scenario::boottime_ns(),
                netns,
                proto: Proto::Udp,
                pid: None,
                comm: None,
                container: None,
            },
            kind: Kind::BindFailed(Box::new(super::kernel_holder_tests::failed(
                &format!("127.0.0.1:{port}"),
                Vec::new(),
                None,
            ))),
        }
    }

    #[test]
    fn a_namespace_nothing_names_is_said_and_not_searched_again_at_once() {
        // Inode 1 is never a network namespace's.
        let mut k = Kernel::new();
        assert!(k.snapshot(1, None, &[80], false, true).is_none());
        let why = k.snapshot_failure().expect("a reason");
        assert!(why.contains("names network namespace 1"), "{why}");
        let searched_at = k.missing[&1];
        // Another failure in it, another port (so not the snapshot cache):
        // the same answer, from the memory of the search.
        assert!(k.snapshot(1, None, &[81], false, true).is_none());
        assert_eq!(k.snapshot_failure().as_deref(), Some(why.as_str()));
        assert_eq!(k.missing[&1], searched_at, "not searched again");
    }

    /// A port looked at a moment ago is not looked at again: the model got
    /// that evidence (a crash-looping server fails many times a second).
    #[test]
    fn a_snapshot_stands_for_a_while_after_it_was_taken() {
        let Some(ns) =
            crate::scenario::Netns::for_test("a_snapshot_stands_for_a_while_after_it_was_taken")
        else {
            return;
        };
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("ran in the namespace")
            .expect("a listener");
        let port = listener.local_addr().unwrap().port();
        let mut k = Kernel::new();
        let snap = k
            .snapshot(ns.inode(), None, &[port], false, true)
            .expect("a snapshot");
        assert!(
            snap.sockets
                .iter()
                .any(|s| s.port == port && s.state == crate::event::TcpState::Listen),
            "{:?}",
            snap.sockets
        );
        assert!((CACHE_FOR..=CACHE_AT_MOST).contains(&k.cache_for));
        assert!(k.snapshot(ns.inode(), None, &[port], false, true).is_none());
        assert_eq!(k.snapshot_failure(), None, "skipped, not failed");
        // ... unless the model may be wrong about the port, while the
        // fresh looks' budget lasts.
        assert!(k.snapshot(ns.inode(), None, &[port], true, true).is_some());
        k.fresh_budget = Duration::ZERO;
        k.fresh_refilled = Instant::now();
        assert!(k.snapshot(ns.inode(), None, &[port], true, true).is_none());
    }
}
