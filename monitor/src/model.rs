//! The live picture: which sockets hold which ports, per network namespace,
//! kept from events alone.
//!
//! Pure: fed by [`Event`]s in order, it takes its time from them and never
//! from the wall clock, so a replayed trace builds the same model as the live
//! run did. Memory is bounded: closed sockets are dropped at once, timewait
//! socks when they end (or are long overdue), and the sockets no event can
//! retire (bound-only TCP, UDP: close() fires no tracepoint) are capped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use crate::event::{
    Bound, Endpoint, Event, Kind, Process, Proto, SocketSeen, StateChange, Syscall, TcpState,
    TimewaitOpen,
};
use crate::rules::{ExistingSocket, Family};

mod table;
use table::Table;

/// How many failures the model keeps for views and reports.
pub const MAX_FAILURES: usize = 1000;
/// Sockets that no event retires (bound-only TCP, UDP) are capped at this
/// many per namespace; the oldest go first.
pub const MAX_UNRETIRED: usize = 100_000;
/// A timewait sock this far past its expiry without a close event is dropped.
const TW_GRACE_NS: u64 = 5_000_000_000;
/// How often (event time) a namespace is swept for such overdue timewait
/// socks. Sweeping on every event cost half of twmon's CPU under churn.
const TW_SWEEP_EVERY_NS: u64 = 1_000_000_000;

/// How the model names a socket. Full sockets by cookie (inode until the
/// kernel assigns a cookie). Timewait socks by the cookie they inherit from
/// their full socket (a variant of its own: both exist for a moment), or,
/// when it had none, by a 64-bit hash of their 4-tuple. Small on purpose:
/// a timewait sock's key used to hold the 4-tuple itself, 72 bytes of the
/// hundreds of thousands of entries a churning host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SockId {
    Cookie(u64),
    Inode(u64),
    Tw(u64),
    TwTuple(u64),
}

impl SockId {
    /// The keys a timewait sock may be known by, most likely first: a sock
    /// announced before it had a cookie (only one that no event had shown
    /// before it closed) is given one later by a sock_diag dump.
    fn tw(proto: Proto, cookie: u64, local: Endpoint, remote: Endpoint) -> [SockId; 2] {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: an open and its close hash
        // alike.
        let mut h = std::hash::DefaultHasher::new();
        (proto, local, remote).hash(&mut h);
        let tuple = SockId::TwTuple(h.finish());
        if cookie != 0 {
            [SockId::Tw(cookie), tuple]
        } else {
            [tuple, tuple]
        }
    }
}

/// One socket the model knows, with what it knows about who owns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub sock: ExistingSocket,
    /// The process that last acted on it in its own context.
    pub owner: Option<Process>,
    /// For timewait socks: who owned the socket it came from.
    pub left_by: Option<Process>,
    /// Boot-time ns of the first event that showed it.
    pub since_ns: u64,
    /// Boot-time ns when a timewait sock's timer runs out.
    pub expires_at_ns: Option<u64>,
    /// No event will tell when it goes away (bound-only TCP, UDP, snapshot).
    pub unretired: bool,
    /// The process that bound it or made it listen, from that call's own
    /// event: kept when a look finds the socket held by others, so that a
    /// listener a child inherited can be told from one its server holds.
    /// Boxed: most sockets never have one.
    pub opened_by: Option<Box<Process>>,
    /// `owner` is what the last look at the process table found (the
    /// opener when it was among the holders), not the last process that
    /// acted on the socket.
    pub owner_looked: bool,
    /// A connection opened by connect() (Some(true)) or accepted
    /// (Some(false)), as its first transition told; None when no event
    /// showed how it began (seen first by a look).
    pub outgoing: Option<bool>,
    /// Other processes the last failure's look found holding it beside
    /// `owner` (see [`SocketSeen::shared_with`]). A boxed slice: empty for
    /// nearly every socket, and the model holds tens of thousands.
    pub shared_with: Box<[Process]>,
    seq: u64,
}

impl Tracked {
    /// The process that opened the socket, when the last look found it no
    /// longer among the holders and `owner` holding it instead.
    pub fn handed_on_by(&self) -> Option<&Process> {
        let opener = self.opened_by.as_deref()?;
        let owner = self.owner.as_ref()?;
        (self.owner_looked && owner.pid != opener.pid).then_some(opener)
    }

    /// Remaining timewait time at `now_ns`.
    pub fn expires_in_ms(&self, now_ns: u64) -> Option<u64> {
        self.expires_at_ns
            .map(|at| at.saturating_sub(now_ns) / 1_000_000)
    }
}

#[derive(Default, Debug)]
pub struct Namespace {
    socks: Table,
    /// Light mode: timewait socks per local port as the last census counted
    /// them (not tracked one by one); None when events track them.
    counted_tw: Option<HashMap<u16, u32>>,
    unretired: usize,
    /// Event time of the next sweep for overdue timewait socks.
    next_tw_sweep_ns: u64,
}

impl Namespace {
    /// Slots of the socket table (what it costs, beside what it holds).
    pub fn capacity(&self) -> usize {
        self.socks.capacity()
    }

    /// Give back a table left mostly empty (a census or a sweep retired
    /// most of it): a hash table keeps its largest size otherwise, and the
    /// model's is the bulk of twmon's memory.
    fn shrink(&mut self) {
        self.socks.shrink();
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values()
    }

    /// Light mode: timewait socks per local port, from the last census.
    /// The views then count these and skip tracked timewait socks (the
    /// evidence of failures, which the census counted too).
    pub fn counted_timewait(&self) -> Option<&HashMap<u16, u32>> {
        self.counted_tw.as_ref()
    }

    /// Sockets on `port` of `proto`.
    pub fn on_port(&self, proto: Proto, port: u16) -> impl Iterator<Item = &Tracked> {
        self.socks.on_port(proto, port).map(|(_, t)| t)
    }
}

/// The sockets a [`Model::reconcile`] forgot because the kernel's look no
/// longer showed them. The look comes after the failure it was taken for,
/// so some of them may have closed after the failure (a listener that
/// closes a moment after a new instance failed to bind its port): the
/// failure is then explained with them put back ([`Model::with_restored`])
/// when the kernel's look alone explains nothing.
#[derive(Debug, Default)]
pub struct Retired {
    netns: u32,
    socks: Vec<(SockId, Tracked)>,
}

impl Retired {
    /// Those that no event would have retired (UDP, bound-only TCP): the
    /// caller announces them (`socket` events with `gone`), so that a trace
    /// tells a replay what the kernel showed.
    pub fn unretired(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.iter().map(|(_, t)| t).filter(|t| t.unretired)
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }
}

#[derive(Default, Debug)]
pub struct Model {
    ns: HashMap<u32, Namespace>,
    /// Bind failures, oldest first, at most MAX_FAILURES.
    pub failures: VecDeque<Event>,
    /// Boot-time ns of the newest event.
    pub now_ns: u64,
    /// Events the kernel could not hand over, in total.
    pub lost: u64,
    pub events: u64,
    seq: u64,
    /// Boot-time ns of the first event and of the last loss.
    first_ns: Option<u64>,
    last_lost_ns: u64,
    /// Namespaces a starting snapshot listed whole, and (namespace, port)s
    /// a look listed whole, timewait socks too, since the last loss.
    seeded: HashSet<u32>,
    listed: HashSet<(u32, u16)>,
}

/// The longest a timewait sock lives (TCP_TIMEWAIT_LEN; a FIN_WAIT2 one
/// lives tcp_fin_timeout, at most that), and a second more.
const TIMEWAIT_LIFE_NS: u64 = 61_000_000_000;

/// The most (namespace, port)s remembered as listed whole.
const MAX_LISTED: usize = 4096;

/// The inodes and cookies a look at the kernel showed, as sets, not a scan
/// of `seen` per socket: a census of a busy namespace lists tens of
/// thousands of sockets, and the model may hold as many (measured: a
/// quadratic check held a watch under churn for tens of ms, and every bind
/// result behind it).
fn shown_sets(seen: &[(u64, u64)]) -> (HashSet<u64>, HashSet<u64>) {
    let inodes = seen.iter().map(|s| s.0).filter(|&i| i != 0).collect();
    let cookies = seen.iter().map(|s| s.1).filter(|&c| c != 0).collect();
    (inodes, cookies)
}

fn family_of(ep: &Endpoint) -> Family {
    Family::of(ep.ip())
}

/// The entry a look's `s` makes of a socket the model held as `prev`:
/// what the look saw, with what only the events told (who left a
/// timewait sock, since when, who opened it, how a connection began, the
/// options when the look could only guess them) carried over.
fn looked_at(
    proto: Proto,
    s: &SocketSeen,
    ts: u64,
    prev: Option<&Tracked>,
    opener: Option<Box<Process>>,
    owner_looked: bool,
) -> Tracked {
    let mut sock = existing(proto, s.local, s.state);
    sock.family = family_of(&s.local);
    sock.timewait = s.timewait;
    sock.remote = s.remote.map(|r| r.socket_addr());
    sock.uid = s.uid;
    sock.inode = s.inode;
    sock.cookie = s.cookie;
    sock.v6only = s.v6only;
    sock.bound_dev_if = s.bound_dev_if;
    // What the events told us about the options beats a guess.
    let known = prev.filter(|p| p.sock.flags_known);
    match (s.reuseaddr, s.reuseport, known) {
        (Some(a), Some(p), _) => {
            sock.reuseaddr = a;
            sock.reuseport = p;
        }
        (_, _, Some(p)) => {
            sock.reuseaddr = p.sock.reuseaddr;
            sock.reuseport = p.sock.reuseport;
        }
        _ => sock.flags_known = false,
    }
    let (left_by, since, opened_by, outgoing) = match prev {
        Some(p) => (
            p.left_by.clone(),
            p.since_ns,
            p.opened_by.clone(),
            p.outgoing,
        ),
        None => (None, ts, None, None),
    };
    let opened_by = if s.timewait {
        None
    } else {
        opened_by.or(opener)
    };
    let retired_by_events = s.timewait || (proto == Proto::Tcp && s.state != TcpState::Bound);
    // A look that names the holder names who shares it too.
    let shared_with = match (&s.owner, prev) {
        (Some(_), _) => s.shared_with.clone().into_boxed_slice(),
        (None, Some(p)) => p.shared_with.clone(),
        (None, None) => Box::default(),
    };
    Tracked {
        sock,
        owner: s
            .owner
            .clone()
            .or_else(|| prev.and_then(|p| p.owner.clone())),
        left_by,
        since_ns: since,
        expires_at_ns: s.expires_in_ms.map(|ms| ts + ms * 1_000_000),
        unretired: !retired_by_events,
        opened_by,
        owner_looked,
        outgoing,
        shared_with,
        seq: 0,
    }
}

/// How far a look's timewait expiry may be from the model's and still
/// restate it: the look's remaining time is taken when it runs and
/// stamped with the failure's time, up to a cached look's second later;
/// a re-arm the events missed moves it by more (kernel-notes.md).
const RESTATED_EXPIRY_NS: u64 = 1_000_000_000;

/// What the model knows of a TCP socket after transition `s`, from what it
/// knew before (`prev`, whose owner, opener and sharers are taken over).
fn after_transition(
    s: &StateChange,
    who: Option<(u32, &str)>,
    mut prev: Option<&mut Tracked>,
    ts: u64,
) -> Tracked {
    // The process this transition names, else the one known before.
    let owner = match (who, prev.as_mut().and_then(|p| p.owner.take())) {
        (Some((pid, comm)), Some(p)) if p.pid == pid && p.comm == comm => Some(p),
        (Some(_), _) => owned(who),
        (None, kept) => kept,
    };
    let mut sock = existing(Proto::Tcp, s.local, s.new);
    sock.family = family_of(&s.local);
    if s.remote.port() != 0 {
        sock.remote = Some(s.remote.socket_addr());
    }
    sock.reuseaddr = s.reuseaddr;
    sock.reuseport = s.reuseport;
    sock.uid = s.uid;
    sock.inode = if s.inode != 0 {
        s.inode
    } else {
        prev.as_ref().map(|p| p.sock.inode).unwrap_or(0)
    };
    sock.cookie = s.cookie;
    if let Some(p) = &prev {
        sock.v6only = p.sock.v6only;
        sock.bound_dev_if = p.sock.bound_dev_if;
    }
    let opened_by = match prev.as_mut().and_then(|p| p.opened_by.take()) {
        None if s.new == TcpState::Listen => owner.clone().map(Box::new),
        kept => kept,
    };
    let outgoing = prev
        .as_ref()
        .and_then(|p| p.outgoing)
        .or(match (s.old, s.new) {
            (TcpState::Close, TcpState::SynSent) => Some(true),
            (TcpState::SynRecv | TcpState::NewSynRecv, _) => Some(false),
            _ => None,
        });
    Tracked {
        sock,
        owner,
        left_by: None,
        since_ns: prev.as_ref().map(|p| p.since_ns).unwrap_or(ts),
        expires_at_ns: None,
        unretired: false,
        opened_by,
        owner_looked: false,
        outgoing,
        shared_with: prev
            .map(|p| std::mem::take(&mut p.shared_with))
            .unwrap_or_default(),
        seq: 0,
    }
}

/// An event's process as the model keeps it.
fn owned(who: Option<(u32, &str)>) -> Option<Process> {
    who.map(|(pid, comm)| Process {
        pid,
        comm: comm.to_owned(),
    })
}

fn existing(proto: Proto, local: Endpoint, state: TcpState) -> ExistingSocket {
    ExistingSocket::new(proto, local.socket_addr(), state)
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// `netns` was seeded from a snapshot that listed all its sockets.
    pub fn seeded(&mut self, netns: u32) {
        self.seeded.insert(netns);
    }

    /// A look listed every socket of `netns` on `ports`, timewait socks
    /// too.
    pub fn listed(&mut self, netns: u32, ports: &[u16]) {
        // Bounded: failing ports are few, but a scan of many is possible.
        if self.listed.len() > MAX_LISTED {
            self.listed.clear();
        }
        self.listed.extend(ports.iter().map(|&p| (netns, p)));
    }

    /// Whether the model holds every timewait sock `netns` has on `ports`
    /// now, given that the events tell every one born and ended while they
    /// stream: a listing of them all (the start's snapshot of the
    /// namespace, or a look at those ports) since the last loss, or no
    /// loss and no start for a timewait sock's lifetime. `now_ns`: the
    /// boot time of the question (a failure not applied yet).
    pub fn timewait_told(&self, netns: u32, ports: &[u16], now_ns: u64) -> bool {
        let Some(first) = self.first_ns else {
            return false;
        };
        let now_ns = now_ns.max(self.now_ns);
        let quiet_since = first.max(self.last_lost_ns);
        // No ports is every port, which no look at ports listed.
        let listed = !ports.is_empty() && ports.iter().all(|&p| self.listed.contains(&(netns, p)));
        self.seeded.contains(&netns)
            || listed
            || now_ns >= quiet_since.saturating_add(TIMEWAIT_LIFE_NS)
    }

    /// Sockets in the model, every namespace.
    pub fn socket_count(&self) -> usize {
        self.ns.values().map(|n| n.socks.len()).sum()
    }

    pub fn namespace(&self, netns: u32) -> Option<&Namespace> {
        self.ns.get(&netns)
    }

    /// The pid that bound or listened on the socket with this cookie or
    /// inode, as its own event told.
    pub fn opener(&self, netns: u32, cookie: u64, inode: u64) -> Option<u32> {
        let socks = &self.ns.get(&netns)?.socks;
        [SockId::Cookie(cookie), SockId::Inode(inode)]
            .iter()
            .filter(|id| !matches!(id, SockId::Cookie(0) | SockId::Inode(0)))
            .find_map(|id| socks.get(id))
            .and_then(|t| t.opened_by.as_ref())
            .map(|p| p.pid)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&u32, &Namespace)> {
        self.ns.iter()
    }

    pub fn apply(&mut self, ev: &Event) {
        self.events += 1;
        self.now_ns = self.now_ns.max(ev.common.ts_ns);
        let ts = ev.common.ts_ns;
        // Borrowed: most events' process is the one the model already
        // keeps for their socket, and a copy per transition showed in perf.
        let who = match (ev.common.pid, &ev.common.comm) {
            (Some(pid), Some(comm)) => Some((pid, comm.as_str())),
            _ => None,
        };
        let proto = ev.common.proto;
        let netns = ev.common.netns;
        self.first_ns.get_or_insert(ts);
        match &ev.kind {
            Kind::Lost(l) => {
                self.lost += l.count;
                self.last_lost_ns = ts;
                // What was lost may have been a timewait sock's birth.
                self.seeded.clear();
                self.listed.clear();
            }
            Kind::BindFailed(_) => {
                if self.failures.len() == MAX_FAILURES {
                    self.failures.pop_front();
                }
                self.failures.push_back(ev.clone());
            }
            Kind::Bound(b) => self.bound(netns, proto, b, owned(who), ts),
            Kind::State(s) => self.state(netns, s, who, ts),
            Kind::TimewaitOpen(t) => self.tw_open(netns, t, ts),
            Kind::TimewaitSubstate(t) => {
                let expires_at = ts + t.expires_in_ms * 1_000_000;
                let ns = self.ns.entry(netns).or_default();
                let ids = SockId::tw(Proto::Tcp, t.cookie, t.local, t.remote);
                if let Some(id) = ids.iter().find(|id| ns.socks.contains_key(id)) {
                    ns.socks.set_timewait(id, t.substate, expires_at);
                }
            }
            Kind::TimewaitClose(t) => {
                for id in SockId::tw(Proto::Tcp, t.cookie, t.local, t.remote) {
                    if self.remove(netns, &id).is_some() {
                        break;
                    }
                }
            }
            Kind::Socket(s) => self.seen(netns, proto, s, ts),
        }
        self.expire_overdue_tw(netns);
    }

    /// A census (light mode) showed `s` new or in a new state: the entry
    /// under its cookie is replaced, whatever it was (an established
    /// socket's timewait sock has the same cookie but another key).
    /// Who opened the socket is kept: no census knows it.
    pub fn census_seen(&mut self, netns: u32, proto: Proto, s: &SocketSeen, ts: u64) {
        let opened_by = self
            .ns
            .get(&netns)
            .and_then(|n| n.socks.get(&SockId::Cookie(s.cookie)))
            .and_then(|t| t.opened_by.clone());
        self.forget(netns, s.cookie);
        // Its owner is the lowest pid holding it, which does not tell
        // whether the opener is among the holders.
        self.seen_carrying(netns, proto, s, ts, opened_by, false);
    }

    /// A census counted these timewait socks per local port (all of them).
    pub fn set_counted_timewait(&mut self, netns: u32, tally: &[(u16, u32)]) {
        let ns = self.ns.entry(netns).or_default();
        let counted = ns.counted_tw.get_or_insert_with(HashMap::new);
        counted.clear();
        counted.extend(tally.iter().copied());
        if counted.capacity() > 4 * counted.len().max(1024) {
            counted.shrink_to(2 * counted.len());
        }
    }

    /// A census no longer shows the socket with this cookie.
    pub fn forget(&mut self, netns: u32, cookie: u64) {
        for id in [SockId::Cookie(cookie), SockId::Tw(cookie)] {
            self.remove(netns, &id);
        }
    }

    /// Forget a namespace whose sockets all went (a census found it empty).
    pub fn shrink_namespace(&mut self, netns: u32) {
        if let Some(ns) = self.ns.get_mut(&netns) {
            if ns.socks.is_empty() && ns.counted_tw.as_ref().is_none_or(|c| c.is_empty()) {
                self.ns.remove(&netns);
            } else {
                ns.shrink();
            }
        }
    }

    fn insert(&mut self, netns: u32, id: SockId, mut t: Tracked) {
        self.seq += 1;
        t.seq = self.seq;
        let ns = self.ns.entry(netns).or_default();
        let was_unretired = ns.socks.get(&id).map(|o| o.unretired);
        match (was_unretired, t.unretired) {
            (Some(true), false) => ns.unretired -= 1,
            (Some(false) | None, true) => ns.unretired += 1,
            _ => {}
        }
        ns.socks.insert(id, t);
        if ns.unretired > MAX_UNRETIRED {
            // Bounded memory: forget the oldest socket nothing will retire.
            if let Some(old) = ns
                .socks
                .iter()
                .filter(|(_, t)| t.unretired)
                .min_by_key(|(_, t)| t.seq)
                .map(|(id, _)| *id)
            {
                ns.socks.remove(&old);
                ns.unretired -= 1;
            }
        }
    }

    fn remove(&mut self, netns: u32, id: &SockId) -> Option<Tracked> {
        let ns = self.ns.get_mut(&netns)?;
        let t = ns.socks.remove(id)?;
        if t.unretired {
            ns.unretired -= 1;
        }
        Some(t)
    }

    fn bound(&mut self, netns: u32, proto: Proto, b: &Bound, owner: Option<Process>, ts: u64) {
        let state = match (proto, b.syscall) {
            (Proto::Tcp, Syscall::Listen) => TcpState::Listen,
            _ => TcpState::Bound,
        };
        let inode_id = SockId::Inode(b.inode);
        let id = if b.cookie != 0 {
            SockId::Cookie(b.cookie)
        } else {
            inode_id
        };
        let prev = self.remove(netns, &id).or_else(|| {
            if b.inode != 0 {
                self.remove(netns, &inode_id)
            } else {
                None
            }
        });
        let opened_by = prev
            .as_ref()
            .and_then(|p| p.opened_by.clone())
            .or_else(|| owner.clone().map(Box::new));
        let mut sock = existing(proto, b.local, state);
        sock.family = family_of(&b.local);
        sock.reuseaddr = b.reuseaddr;
        sock.reuseport = b.reuseport;
        sock.v6only = b.v6only;
        sock.uid = b.uid;
        sock.bound_dev_if = b.bound_dev_if;
        sock.inode = b.inode;
        sock.cookie = b.cookie;
        self.insert(
            netns,
            id,
            Tracked {
                sock,
                owner,
                left_by: None,
                since_ns: prev.as_ref().map(|p| p.since_ns).unwrap_or(ts),
                expires_at_ns: None,
                // A TCP listener retires through its LISTEN -> CLOSE event.
                unretired: state == TcpState::Bound,
                opened_by,
                owner_looked: false,
                shared_with: prev
                    .as_ref()
                    .map(|p| p.shared_with.clone())
                    .unwrap_or_default(),
                outgoing: prev.and_then(|p| p.outgoing),
                seq: 0,
            },
        );
    }

    fn state(&mut self, netns: u32, s: &StateChange, who: Option<(u32, &str)>, ts: u64) {
        let id = SockId::Cookie(s.cookie);
        if s.inode != 0 {
            // The socket may be known by its inode from a bind before the
            // kernel gave it a cookie.
            if let Some(prev) = self.remove(netns, &SockId::Inode(s.inode)) {
                if !self
                    .ns
                    .get(&netns)
                    .is_some_and(|n| n.socks.contains_key(&id))
                {
                    self.insert(netns, id, prev);
                }
            }
        }
        if s.new == TcpState::Close {
            self.remove(netns, &id);
            return;
        }
        // A socket the model knows changes where it is: its box and its
        // index entries stay (a remove and an insert per transition showed
        // in perf, and emptied and re-made the port's index set of every
        // client socket).
        self.seq += 1;
        let seq = self.seq;
        let ns = self.ns.entry(netns).or_default();
        let mut was_unretired = false;
        let known = ns.socks.update(&id, |t| {
            was_unretired = t.unretired;
            let next = after_transition(s, who, Some(t), ts);
            *t = Tracked { seq, ..next };
        });
        if known {
            if was_unretired {
                ns.unretired -= 1;
            }
            return;
        }
        self.insert(netns, id, after_transition(s, who, None, ts));
    }

    fn tw_open(&mut self, netns: u32, t: &TimewaitOpen, ts: u64) {
        let mut sock = existing(Proto::Tcp, t.local, t.substate);
        sock.family = family_of(&t.local);
        sock.timewait = true;
        sock.remote = Some(t.remote.socket_addr());
        sock.reuseaddr = t.reuseaddr;
        sock.reuseport = t.reuseport;
        sock.cookie = t.cookie;
        let [id, _] = SockId::tw(Proto::Tcp, t.cookie, t.local, t.remote);
        self.insert(
            netns,
            id,
            Tracked {
                sock,
                owner: None,
                left_by: t.left_by.clone(),
                since_ns: ts,
                expires_at_ns: Some(ts + t.expires_in_ms * 1_000_000),
                unretired: false,
                opened_by: None,
                owner_looked: false,
                outgoing: None,
                shared_with: Box::default(),
                seq: 0,
            },
        );
    }

    fn seen(&mut self, netns: u32, proto: Proto, s: &SocketSeen, ts: u64) {
        self.seen_carrying(netns, proto, s, ts, None, s.owner.is_some());
    }

    /// [`Model::seen`], with who opened the socket when the model no longer
    /// has it under any key, and whether `s.owner` names the opener while
    /// it holds the socket (see [`Tracked::owner_looked`]).
    fn seen_carrying(
        &mut self,
        netns: u32,
        proto: Proto,
        s: &SocketSeen,
        ts: u64,
        opener: Option<Box<Process>>,
        owner_looked: bool,
    ) {
        if s.gone {
            // Under whichever key it was known: its cookie, or its inode
            // from a bind before it had one.
            if s.cookie != 0 {
                self.remove(netns, &SockId::Cookie(s.cookie));
            }
            if s.inode != 0 {
                self.remove(netns, &SockId::Inode(s.inode));
            }
            return;
        }
        let (id, mut prev) = if s.timewait {
            let [id, other] = SockId::tw(proto, s.cookie, s.local, s.remote.unwrap_or(s.local));
            // Known by its 4-tuple if it was announced before it had a
            // cookie: one entry, under the cookie from now on.
            let prev = self.remove(netns, &id);
            (id, prev.or_else(|| self.remove(netns, &other)))
        } else if s.cookie != 0 {
            (
                SockId::Cookie(s.cookie),
                self.remove(netns, &SockId::Cookie(s.cookie)),
            )
        } else {
            (
                SockId::Inode(s.inode),
                self.remove(netns, &SockId::Inode(s.inode)),
            )
        };
        if s.inode != 0 && id != SockId::Inode(s.inode) {
            // Known by its inode from a bind before it had a cookie.
            let by_inode = self.remove(netns, &SockId::Inode(s.inode));
            prev = prev.or(by_inode);
        }
        let t = looked_at(proto, s, ts, prev.as_ref(), opener, owner_looked);
        self.insert(netns, id, t);
    }

    /// Whether a look's `s` restates what the model holds about that
    /// socket: applying it would change nothing (a timewait sock's expiry
    /// within [`RESTATED_EXPIRY_NS`]). A failure's look on a busy port
    /// lists tens of thousands of sockets the events already told; passed
    /// on, each was a `socket` event to apply, record and draw (a crash
    /// loop beside a server-first churn: a quarter of the trace).
    pub fn restates(&self, netns: u32, proto: Proto, s: &SocketSeen, ts: u64) -> bool {
        if s.gone {
            return false;
        }
        let Some(ns) = self.ns.get(&netns) else {
            return false;
        };
        // Under one key only, as `seen_carrying` would find it: an entry
        // it would merge with another is news.
        let (id, other) = if s.timewait {
            let [id, other] = SockId::tw(proto, s.cookie, s.local, s.remote.unwrap_or(s.local));
            (id, Some(other).filter(|o| *o != id))
        } else if s.cookie != 0 {
            (SockId::Cookie(s.cookie), None)
        } else {
            (SockId::Inode(s.inode), None)
        };
        let by_inode = (s.inode != 0)
            .then_some(SockId::Inode(s.inode))
            .filter(|i| *i != id);
        if [other, by_inode]
            .into_iter()
            .flatten()
            .any(|k| ns.socks.get(&k).is_some())
        {
            return false;
        }
        let Some(prev) = ns.socks.get(&id) else {
            return false;
        };
        let mut now = looked_at(proto, s, ts, Some(prev), None, s.owner.is_some());
        now.seq = prev.seq;
        if let (Some(a), Some(b)) = (now.expires_at_ns, prev.expires_at_ns) {
            if a.abs_diff(b) <= RESTATED_EXPIRY_NS {
                now.expires_at_ns = prev.expires_at_ns;
            }
        }
        now == *prev
    }

    /// A snapshot of `netns` saw exactly `seen` (inodes and cookies) on
    /// `ports` (every port when empty): forget the sockets there that it no
    /// longer shows; they were closed. That covers the sockets no event
    /// retires (bound-only TCP, UDP) and those whose closing transition has
    /// not reached the model yet (a failed bind can overtake it in a flood).
    /// Timewait socks too, by the cookie they inherited (sock_diag reports
    /// the same one): after lost events, those whose end was lost would
    /// otherwise stay until their expiry plus grace, and under heavy loss
    /// that is hundreds of thousands (measured: a churning `watch` whose
    /// socket table doubled to 118 MiB). A timewait sock announced without
    /// a cookie stays to its own events and expiry.
    ///
    /// Returns what it forgot (see [`Retired`]).
    pub fn reconcile(&mut self, netns: u32, ports: &[u16], seen: &[(u64, u64)]) -> Retired {
        self.retire(netns, ports, &shown_sets(seen), false, false)
    }

    /// [`Model::reconcile`] after a look that left out timewait socks in
    /// TIME_WAIT (listing those still in FIN_WAIT2), taken because the
    /// events told them all ([`Model::timewait_told`]): the model's
    /// TIME_WAIT socks stay as they are, and a FIN_WAIT2 one the look no
    /// longer lists is in TIME_WAIT now. Its end would have been an event;
    /// its peer's FIN, which moved it there, fires none when the timer's
    /// new expiry falls in the same wheel bucket (kernel-notes.md).
    /// Returns what it retired, and the timewait socks it moved, as they
    /// are now.
    pub fn reconcile_without_time_wait(
        &mut self,
        netns: u32,
        ports: &[u16],
        seen: &[(u64, u64)],
    ) -> (Retired, Vec<Tracked>) {
        let shown = shown_sets(seen);
        let mut moved = Vec::new();
        if let Some(ns) = self.ns.get_mut(&netns) {
            let unshown: Vec<(SockId, u64)> = ports
                .iter()
                .flat_map(|&port| ns.socks.on_port(Proto::Tcp, port))
                .filter(|(_, t)| {
                    t.sock.timewait
                        && t.sock.state == TcpState::FinWait2
                        && t.sock.cookie != 0
                        && !shown.1.contains(&t.sock.cookie)
                })
                .map(|(id, t)| (*id, t.expires_at_ns.unwrap_or(self.now_ns)))
                .collect();
            for (id, expires) in unshown {
                ns.socks.set_timewait(&id, TcpState::TimeWait, expires);
                moved.extend(ns.socks.get(&id).cloned());
            }
        }
        (self.retire(netns, ports, &shown, false, true), moved)
    }

    /// A look at `netns`'s `ports` (every port when empty) showed exactly
    /// `seen` (inodes and cookies): forget the sockets there that no event
    /// retires and that it no longer shows, and return them (see
    /// [`Model::reconcile`]). Sockets that events retire are left to their
    /// events.
    pub fn retire_unshown(&mut self, netns: u32, ports: &[u16], seen: &[(u64, u64)]) -> Retired {
        self.retire(netns, ports, &shown_sets(seen), true, false)
    }

    /// [`Model::reconcile`], or with `only_unretired`
    /// [`Model::retire_unshown`], the look's inodes and cookies as
    /// [`shown_sets`]; with `time_wait_unasked` the look left out timewait
    /// socks in TIME_WAIT, which therefore stay.
    fn retire(
        &mut self,
        netns: u32,
        ports: &[u16],
        (inodes, cookies): &(HashSet<u64>, HashSet<u64>),
        only_unretired: bool,
        time_wait_unasked: bool,
    ) -> Retired {
        let mut retired = Retired {
            netns,
            socks: Vec::new(),
        };
        let Some(ns) = self.ns.get_mut(&netns) else {
            return retired;
        };
        let gone = |t: &Tracked| {
            let shown = if t.sock.timewait {
                t.sock.cookie == 0
                    || cookies.contains(&t.sock.cookie)
                    || (time_wait_unasked && t.sock.state == TcpState::TimeWait)
            } else {
                inodes.contains(&t.sock.inode) || cookies.contains(&t.sock.cookie)
            };
            !shown && (t.unretired || !only_unretired)
        };
        let mut gone_unretired = 0;
        if ports.is_empty() {
            ns.socks.retain(|id, t| {
                let gone = gone(t);
                if gone && t.unretired {
                    gone_unretired += 1;
                    // A look at every port (a resync under loss) retires
                    // tens of thousands: only those no event retires are
                    // kept aside then.
                    retired.socks.push((*id, t.clone()));
                }
                !gone
            });
        } else {
            // The looked-at ports through the index, not a walk of the
            // namespace's whole table (tens of thousands under churn) at
            // every failure.
            let ids: Vec<SockId> = ports
                .iter()
                .flat_map(|&port| [Proto::Tcp, Proto::Udp].map(|proto| (proto, port)))
                .flat_map(|(proto, port)| ns.socks.on_port(proto, port))
                .filter(|(_, t)| gone(t))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(t) = ns.socks.remove(&id) {
                    if t.unretired {
                        gone_unretired += 1;
                    }
                    retired.socks.push((id, t));
                }
            }
        }
        ns.unretired -= gone_unretired;
        ns.shrink();
        retired
    }

    /// `f` on the model with the sockets `r` retired put back in, as they
    /// were before the look that retired them; they leave again after.
    pub fn with_restored<T>(&mut self, r: &Retired, f: impl FnOnce(&Model) -> T) -> T {
        let mut put = Vec::new();
        if let Some(ns) = self.ns.get_mut(&r.netns) {
            for (id, t) in &r.socks {
                if !ns.socks.contains_key(id) {
                    ns.socks.insert(*id, t.clone());
                    put.push(*id);
                }
            }
        }
        let out = f(self);
        if let Some(ns) = self.ns.get_mut(&r.netns) {
            for id in &put {
                ns.socks.remove(id);
            }
        }
        out
    }

    /// Every namespace holding sockets that no event retires (UDP,
    /// bound-only TCP), with their protocols and ports: what a check
    /// against the kernel has to look at. (Every host has some: the UDP
    /// sockets of its daemons, from the snapshot at start. A UDP dump is
    /// cheap; a TCP one walks the whole connection hash, 20 ms beside a
    /// churn, so TCP is listed only when a bound-only TCP socket is held.)
    pub fn unretired_ports(&self) -> Vec<(u32, Vec<Proto>, Vec<u16>)> {
        let mut out: Vec<(u32, Vec<Proto>, Vec<u16>)> = self
            .ns
            .iter()
            .filter(|(_, ns)| ns.unretired > 0)
            .map(|(netns, ns)| {
                let (mut protos, mut ports) = (Vec::new(), Vec::new());
                for t in ns.socks.values().filter(|t| t.unretired) {
                    protos.push(t.sock.proto);
                    ports.push(t.sock.port);
                }
                protos.sort_unstable();
                protos.dedup();
                ports.sort_unstable();
                ports.dedup();
                (*netns, protos, ports)
            })
            .collect();
        out.sort_unstable_by_key(|(netns, _, _)| *netns);
        out
    }

    /// The inodes and cookies of `netns`'s sockets that no event retires.
    pub fn unretired_ids(&self, netns: u32) -> Vec<(u64, u64)> {
        self.ns.get(&netns).map_or_else(Vec::new, |ns| {
            ns.socks
                .values()
                .filter(|t| t.unretired)
                .map(|t| (t.sock.inode, t.sock.cookie))
                .collect()
        })
    }

    fn expire_overdue_tw(&mut self, netns: u32) {
        let now = self.now_ns;
        if let Some(ns) = self.ns.get_mut(&netns) {
            // A full scan, so at most once a second of event time: being
            // overdue by the 5 s grace, a sock goes at most 1 s later.
            if now >= ns.next_tw_sweep_ns {
                ns.next_tw_sweep_ns = now.saturating_add(TW_SWEEP_EVERY_NS);
                ns.socks.retain(|_, t| {
                    !(t.sock.timewait && t.expires_at_ns.is_some_and(|at| at + TW_GRACE_NS < now))
                });
                ns.shrink();
            }
        }
    }

    /// Does the model hold, on one of `ports` (not the whole range: that
    /// look is the costly one, and its exhaustion counts do not depend on
    /// the substate), a timewait sock in FIN_WAIT2? The peer's FIN turns it
    /// into TIME_WAIT by re-arming its timer, and a re-arm that lands in
    /// the same timer-wheel bucket fires no tracepoint: only a look at the
    /// kernel tells which it is now.
    pub fn timewait_may_have_changed(&self, netns: u32, proto: Proto, ports: &[u16]) -> bool {
        let Some(ns) = self.ns.get(&netns) else {
            return false;
        };
        proto == Proto::Tcp && ports.iter().any(|&port| ns.socks.fin_wait2_on(port))
    }

    /// Who uses the ports of `range` in `netns` ([`diagnose::most_sockets`]):
    /// for connect() toward `toward`, the processes that opened the
    /// connections toward it (live ones by their owner, timewait ones by
    /// who left them); for a port search of bind() or listen(), the owners
    /// of the live sockets there. A walk of the range's ports through the
    /// index, for a failure whose kernel search walked them too.
    pub fn range_users(
        &self,
        netns: u32,
        proto: Proto,
        range: (u16, u16),
        toward: Option<SocketAddr>,
    ) -> Vec<(Process, usize)> {
        let Some(ns) = self.ns.get(&netns) else {
            return Vec::new();
        };
        let owners = (range.0..=range.1.max(range.0))
            .flat_map(|port| ns.socks.on_port(proto, port))
            .filter_map(|(_, t)| match toward {
                Some(to) if t.sock.remote != Some(to) => None,
                Some(_) if t.sock.timewait => t.left_by.as_ref(),
                _ if t.sock.timewait => None,
                _ => t.owner.as_ref(),
            });
        crate::diagnose::most_sockets(owners)
    }

    /// Timewait socks in `netns` whose remote end is `remote`: those that
    /// keep connect() toward it from their ports.
    pub fn timewait_toward(&self, netns: u32, remote: SocketAddr) -> usize {
        self.ns
            .get(&netns)
            .map_or(0, |ns| ns.socks.timewait_toward(remote))
    }

    /// What explaining a failure on `port` of `netns` needs, from the
    /// table's indexes (see `table.rs`): a crash-looping server fails many
    /// times a second, and walking the whole table per failure was a fifth
    /// of `record`'s CPU beside 100 failures/s with three walks, 12 % with
    /// one (perf). Only the
    /// sockets on that port are copied, as the rules see them with the
    /// remaining timewait time at the model's clock: a bind conflicts with
    /// nothing else, and a copy of every socket per failure cost a churning
    /// host's `watch` tens of MiB at its peak (heaptrack). The failing
    /// socket itself (by its cookie or inode, `me`) is left out.
    pub fn look_at_port(
        &self,
        netns: u32,
        proto: Proto,
        port: u16,
        range: (u16, u16),
        me: (u64, u64),
    ) -> PortLook<'_> {
        let mut look = PortLook::default();
        let Some(ns) = self.ns.get(&netns) else {
            return look;
        };
        let (cookie, inode) = me;
        let is_me = |t: &Tracked| {
            (cookie != 0 && t.sock.cookie == cookie) || (inode != 0 && t.sock.inode == inode)
        };
        look.timewait_in_range = ns.socks.timewait_ports_in(range.0, range.1);
        // The failing socket, wherever it sits, under any key it may have.
        let mine = [
            SockId::Cookie(cookie),
            SockId::Tw(cookie),
            SockId::Inode(inode),
        ]
        .into_iter()
        .filter(|id| {
            ns.socks
                .get(id)
                .is_some_and(|t| t.sock.proto == proto && is_me(t))
        })
        .count();
        look.sockets = ns.socks.count(proto) - mine;
        for (_, t) in ns.socks.on_port(proto, port) {
            if is_me(t) {
                continue;
            }
            let mut s = t.sock.clone();
            s.expires_in_ms = t.expires_in_ms(self.now_ns);
            look.on_port.push((t, s));
        }
        look
    }
}

/// See [`Model::look_at_port`].
#[derive(Default)]
pub struct PortLook<'a> {
    /// The sockets on the port, with their remaining timewait time.
    pub on_port: Vec<(&'a Tracked, ExistingSocket)>,
    /// Sockets of the protocol in the namespace.
    pub sockets: usize,
    /// Ports of the range that a timewait sock (TCP's, whatever `proto`
    /// asked) holds.
    pub timewait_in_range: usize,
}

/// A remote endpoint as an [`Endpoint`].
pub fn endpoint(sa: SocketAddr) -> Endpoint {
    Endpoint::from(sa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn ev(ts_ns: u64, pid: Option<u32>, kind: Kind) -> Event {
        Event {
            common: Common {
                ts: String::new(),
                ts_ns,
                netns: 1,
                proto: Proto::Tcp,
                pid,
                comm: pid.map(|_| "srv".to_string()),
                container: None,
            },
            kind,
        }
    }

    fn st(
        local: &str,
        remote: &str,
        old: TcpState,
        new: TcpState,
        cookie: u64,
        inode: u64,
    ) -> Kind {
        Kind::State(StateChange {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            old,
            new,
            cookie,
            reuseaddr: false,
            reuseport: false,
            uid: 0,
            inode,
        })
    }

    /// A look's `socket` event for the TCP socket (cookie, inode), held by
    /// `owner` (a process named "child").
    fn look(
        ts_ns: u64,
        local: &str,
        remote: Option<&str>,
        state: TcpState,
        (cookie, inode): (u64, u64),
        owner: Option<u32>,
    ) -> Event {
        let mut s = ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), state);
        s.remote = remote.map(|r| r.parse().unwrap());
        (s.cookie, s.inode) = (cookie, inode);
        let owner = owner.map(|pid| Process {
            pid,
            comm: "child".into(),
        });
        ev(
            ts_ns,
            None,
            Kind::Socket(crate::correlate::socket_seen(&s, owner)),
        )
    }

    fn states(m: &Model) -> Vec<(String, TcpState)> {
        let mut v: Vec<_> = m
            .namespace(1)
            .map(|ns| {
                ns.sockets()
                    .map(|t| (format!("{}:{}", t.sock.local, t.sock.port), t.sock.state))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_connection_life_ends_in_timewait_then_nothing() {
        use TcpState::*;
        let mut m = Model::new();
        let l = "127.0.0.1:80";
        let r = "127.0.0.1:5000";
        m.apply(&ev(
            1,
            Some(9),
            Kind::Bound(crate::event::Bound {
                syscall: Syscall::Bind,
                local: l.parse().unwrap(),
                reuseaddr: false,
                reuseport: false,
                v6only: false,
                uid: 0,
                cookie: 0,
                bound_dev_if: 0,
                inode: 77,
            }),
        ));
        assert_eq!(states(&m), vec![("127.0.0.1:80".into(), Bound)]);
        m.apply(&ev(2, Some(9), st(l, "0.0.0.0:0", Close, Listen, 5, 77)));
        assert_eq!(states(&m), vec![("127.0.0.1:80".into(), Listen)]);
        // accepted child, born in softirq
        m.apply(&ev(3, None, st(l, r, SynRecv, Established, 6, 0)));
        m.apply(&ev(4, Some(9), st(l, r, Established, FinWait1, 6, 78)));
        m.apply(&ev(
            5,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: l.parse().unwrap(),
                remote: r.parse().unwrap(),
                substate: TimeWait,
                expires_in_ms: 60_000,
                left_by: Some(Process {
                    pid: 9,
                    comm: "srv".into(),
                }),
                cookie: 6,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        m.apply(&ev(6, None, st(l, r, FinWait2, Close, 6, 0)));
        assert_eq!(
            states(&m),
            vec![
                ("127.0.0.1:80".into(), TimeWait),
                ("127.0.0.1:80".into(), Listen)
            ]
        );
        let tw = m
            .namespace(1)
            .unwrap()
            .sockets()
            .find(|t| t.sock.timewait)
            .unwrap();
        assert_eq!(tw.left_by.as_ref().unwrap().pid, 9);
        assert_eq!(tw.expires_in_ms(5 + 1_000_000_000), Some(59_000));
        m.apply(&ev(7, Some(9), st(l, "0.0.0.0:0", Listen, Close, 5, 77)));
        m.apply(&ev(
            8,
            None,
            Kind::TimewaitClose(TimewaitClose {
                local: l.parse().unwrap(),
                remote: r.parse().unwrap(),
                reason: TimewaitEnd::Expired,
                cookie: 6,
                ended_by: None,
                end_mismatch: None,
            }),
        ));
        assert_eq!(states(&m), vec![]);
    }

    /// A listener its opener no longer holds, as a look at the process
    /// table tells (the opener's pid not among the holders), names its
    /// opener; one the opener still holds, or that only events showed in
    /// another process's hands, does not.
    #[test]
    fn a_listener_handed_on_names_who_opened_it() {
        use TcpState::*;
        let l = "0.0.0.0:80";
        let looked = |owner| look(3, l, None, Listen, (5, 77), owner);
        let listener = |m: &Model| m.namespace(1).unwrap().sockets().next().unwrap().clone();
        let opened = || {
            let mut m = Model::new();
            m.apply(&ev(1, Some(9), st(l, "0.0.0.0:0", Close, Listen, 5, 77)));
            m
        };

        let mut m = opened();
        assert_eq!(m.opener(1, 5, 77), Some(9));
        assert_eq!(m.opener(1, 0, 77), None, "known by its cookie only");
        m.apply(&looked(Some(12)));
        let t = listener(&m);
        assert_eq!(t.owner.as_ref().unwrap().pid, 12);
        assert_eq!(t.handed_on_by().map(|p| p.pid), Some(9));
        // A census that replaces the entry keeps who opened it, but its
        // owner (the lowest pid) does not say that the opener let go.
        if let Kind::Socket(s) = &looked(Some(12)).kind {
            m.census_seen(1, Proto::Tcp, s, 4);
        }
        assert_eq!(listener(&m).opened_by.as_ref().map(|p| p.pid), Some(9));
        assert_eq!(listener(&m).handed_on_by(), None);
        m.apply(&looked(Some(12)));
        assert_eq!(listener(&m).handed_on_by().map(|p| p.pid), Some(9));

        for (owner, why) in [
            (Some(9), "the opener still holds it"),
            (None, "the look found no holder"),
        ] {
            let mut m = opened();
            m.apply(&looked(owner));
            assert_eq!(listener(&m).handed_on_by(), None, "{why}");
        }

        // Another process listening again on it: the events say who acted,
        // not who holds it.
        let mut m = opened();
        m.apply(&ev(2, Some(12), st(l, "0.0.0.0:0", Listen, Listen, 5, 77)));
        let t = listener(&m);
        assert_eq!(t.owner.as_ref().unwrap().pid, 12);
        assert_eq!(t.handed_on_by(), None);
    }

    /// A look restates a socket when applying it would change nothing:
    /// the same state, options, owner and (within a second) expiry. What
    /// is news (a substate the events missed, a holder named, a socket
    /// the model never saw) is not a restatement.
    #[test]
    fn a_look_restates_only_what_the_model_already_holds() {
        use TcpState::*;
        let (local, remote) = ("127.0.0.1:80", "127.0.0.1:5000");
        let s_ms = 1_000_000;
        // A timewait sock from the events: TIME_WAIT, 60 s left at 1 s.
        let opened = |substate| {
            let mut m = Model::new();
            m.apply(&ev(
                1000 * s_ms,
                None,
                Kind::TimewaitOpen(TimewaitOpen {
                    local: local.parse().unwrap(),
                    remote: remote.parse().unwrap(),
                    substate,
                    expires_in_ms: 60_000,
                    left_by: None,
                    cookie: 7,
                    reuseaddr: false,
                    reuseport: false,
                }),
            ));
            m
        };
        // The look at `at` ms: the sock in `state` with `left` ms to go.
        let tw_look = |state, left: u64, cookie| {
            let mut s = ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), state);
            s.timewait = true;
            s.remote = Some(remote.parse().unwrap());
            s.cookie = cookie;
            s.expires_in_ms = Some(left);
            s.flags_known = false;
            crate::correlate::socket_seen(&s, None)
        };
        let restates = |m: &Model, at: u64, s: &SocketSeen| m.restates(1, Proto::Tcp, s, at * s_ms);
        for (substate, at, state, left, cookie, want, why) in [
            (
                TimeWait,
                2000,
                TimeWait,
                59_000,
                7,
                true,
                "the same, a second on",
            ),
            (
                TimeWait,
                2000,
                TimeWait,
                58_200,
                7,
                true,
                "expiry 800 ms off",
            ),
            (
                TimeWait,
                2000,
                TimeWait,
                57_000,
                7,
                false,
                "expiry 2 s off: a re-arm",
            ),
            (
                FinWait2,
                2000,
                TimeWait,
                59_000,
                7,
                false,
                "FIN_WAIT2 became TIME_WAIT",
            ),
            (TimeWait, 2000, TimeWait, 59_000, 8, false, "another sock"),
        ] {
            let m = opened(substate);
            assert_eq!(
                restates(&m, at, &tw_look(state, left, cookie)),
                want,
                "{why}"
            );
        }
        // Applying a look that is news makes the same look a restatement.
        let mut m = opened(FinWait2);
        let news = tw_look(TimeWait, 59_000, 7);
        assert!(!restates(&m, 2000, &news));
        m.apply(&ev(2000 * s_ms, None, Kind::Socket(news.clone())));
        assert!(restates(&m, 2000, &news));
        let mut gone = news;
        gone.gone = true;
        assert!(!restates(&m, 2000, &gone), "a socket gone is news");

        // A listener the events told of: the look that names its holder
        // is news once, then a restatement; one naming another is news.
        let l = "0.0.0.0:80";
        let mut m = Model::new();
        m.apply(&ev(1, Some(9), st(l, "0.0.0.0:0", Close, Listen, 5, 77)));
        let looked = |owner| match look(3, l, None, Listen, (5, 77), owner).kind {
            Kind::Socket(s) => s,
            _ => unreachable!(),
        };
        assert!(
            !restates(&m, 0, &looked(Some(9))),
            "the events' owner, not a look's"
        );
        m.apply(&ev(3, None, Kind::Socket(looked(Some(9)))));
        assert!(restates(&m, 0, &looked(Some(9))));
        assert!(!restates(&m, 0, &looked(Some(12))), "another holder");
        assert!(!restates(&m, 0, &looked(None)), "no holder found now");
        // Known under its inode only (a bind before it had a cookie): the
        // look would merge two keys into one, which is news.
        let mut m = Model::new();
        let mut b = look(1, l, None, Bound, (0, 77), None);
        m.apply(&b);
        if let Kind::Socket(s) = &mut b.kind {
            s.cookie = 5;
            assert!(!restates(&m, 0, s));
        }
    }

    /// Who else holds a socket's file comes from a look that names its
    /// holder, stays through later transitions and looks that name none,
    /// and is replaced by the next look that does.
    #[test]
    fn who_shares_a_socket_is_what_the_last_look_said() {
        use TcpState::*;
        let l = "0.0.0.0:80";
        let shared = |m: &Model| -> Vec<u32> {
            let t = m.namespace(1).unwrap().sockets().next().unwrap();
            t.shared_with.iter().map(|p| p.pid).collect()
        };
        let looked = |sharers: &[u32]| {
            let mut e = look(3, l, None, Listen, (5, 77), Some(9));
            if let Kind::Socket(s) = &mut e.kind {
                s.shared_with = sharers
                    .iter()
                    .map(|&pid| Process {
                        pid,
                        comm: "helper".into(),
                    })
                    .collect();
            }
            e
        };
        let mut m = Model::new();
        m.apply(&ev(1, Some(9), st(l, "0.0.0.0:0", Close, Listen, 5, 77)));
        assert_eq!(shared(&m), Vec::<u32>::new());
        m.apply(&looked(&[12, 13]));
        assert_eq!(shared(&m), vec![12, 13]);
        m.apply(&ev(4, Some(9), st(l, "0.0.0.0:0", Listen, Listen, 5, 77)));
        assert_eq!(shared(&m), vec![12, 13], "a transition keeps it");
        let mut nobody = looked(&[]);
        if let Kind::Socket(s) = &mut nobody.kind {
            s.owner = None;
        }
        m.apply(&nobody);
        assert_eq!(shared(&m), vec![12, 13], "a look that named no holder");
        m.apply(&looked(&[13]));
        assert_eq!(shared(&m), vec![13]);
    }

    /// How a connection began is kept from its first transition through
    /// the later ones and the looks; a socket first seen by a look has none.
    #[test]
    fn a_connection_knows_whether_it_was_connected_or_accepted() {
        use TcpState::*;
        let (l, r) = ("127.0.0.1:8080", "127.0.0.1:9999");
        let outgoing = |m: &Model, cookie: u64| {
            m.namespace(1)
                .unwrap()
                .sockets()
                .find(|t| t.sock.cookie == cookie)
                .unwrap()
                .outgoing
        };
        let mut m = Model::new();
        m.apply(&ev(1, Some(9), st(l, r, Close, SynSent, 5, 70)));
        m.apply(&ev(2, None, st(l, r, SynSent, Established, 5, 70)));
        m.apply(&ev(3, None, st(r, l, SynRecv, Established, 6, 0)));
        m.apply(&ev(4, Some(9), st(r, l, Established, CloseWait, 6, 71)));
        assert_eq!(outgoing(&m, 5), Some(true));
        assert_eq!(outgoing(&m, 6), Some(false));
        let looked = |cookie, inode| look(5, l, Some(r), Established, (cookie, inode), None);
        m.apply(&looked(5, 70));
        assert_eq!(outgoing(&m, 5), Some(true));
        m.apply(&looked(7, 72));
        assert_eq!(outgoing(&m, 7), None);
    }

    #[test]
    fn the_model_forgets_overdue_timewait_and_caps_what_nothing_retires() {
        let mut m = Model::new();
        m.apply(&ev(
            0,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: "127.0.0.1:80".parse().unwrap(),
                remote: "127.0.0.1:5000".parse().unwrap(),
                substate: TcpState::TimeWait,
                expires_in_ms: 1000,
                left_by: None,
                cookie: 1,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        // A close event was lost: 1 s timer + 5 s grace later it is gone.
        m.apply(&ev(
            7_000_000_000,
            None,
            Kind::Lost(Lost {
                count: 1,
                stream: None,
            }),
        ));
        assert_eq!(states(&m), vec![]);
        assert_eq!(m.lost, 1);

        for i in 0..(MAX_UNRETIRED as u64 + 10) {
            let mut e = ev(
                i,
                Some(1),
                Kind::Bound(crate::event::Bound {
                    syscall: Syscall::Bind,
                    local: format!("127.0.0.1:{}", 1 + (i % 60000)).parse().unwrap(),
                    reuseaddr: false,
                    reuseport: false,
                    v6only: false,
                    uid: 0,
                    cookie: 0,
                    bound_dev_if: 0,
                    inode: i + 1,
                }),
            );
            e.common.proto = Proto::Udp;
            m.apply(&e);
        }
        assert_eq!(m.namespace(1).unwrap().sockets().count(), MAX_UNRETIRED);
    }

    /// A snapshot that no longer shows a listener (its closing transition
    /// is still on its way) removes it; timewait socks it shows and other
    /// ports stay; the late LISTEN -> CLOSE then changes nothing.
    #[test]
    fn a_snapshot_retires_what_it_no_longer_shows() {
        use TcpState::*;
        let mut m = Model::new();
        let l = "127.0.0.1:80";
        let r = "127.0.0.1:5000";
        m.apply(&ev(1, Some(9), st(l, "0.0.0.0:0", Close, Listen, 5, 77)));
        m.apply(&ev(
            2,
            Some(9),
            st("127.0.0.1:81", "0.0.0.0:0", Close, Listen, 7, 79),
        ));
        m.apply(&ev(
            3,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: l.parse().unwrap(),
                remote: r.parse().unwrap(),
                substate: TimeWait,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 6,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        // Port 80 seen with only the timewait sock (no inode, its cookie).
        m.reconcile(1, &[80], &[(0, 6)]);
        assert_eq!(
            states(&m),
            vec![
                ("127.0.0.1:80".into(), TimeWait),
                ("127.0.0.1:81".into(), Listen)
            ]
        );
        m.apply(&ev(4, Some(9), st(l, "0.0.0.0:0", Listen, Close, 5, 77)));
        assert_eq!(states(&m).len(), 2);
        // A socket the snapshot shows by inode stays.
        m.reconcile(1, &[81], &[(79, 0)]);
        assert_eq!(states(&m).len(), 2);
        // A timewait sock it no longer shows (its end was lost) goes; one
        // announced without a cookie cannot be checked and stays.
        m.apply(&ev(
            5,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: l.parse().unwrap(),
                remote: "127.0.0.1:5001".parse().unwrap(),
                substate: TimeWait,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 0,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        m.reconcile(1, &[80], &[]);
        assert_eq!(
            states(&m),
            vec![
                ("127.0.0.1:80".into(), TimeWait),
                ("127.0.0.1:81".into(), Listen)
            ]
        );
        let left: Vec<u64> = m
            .namespace(1)
            .unwrap()
            .on_port(Proto::Tcp, 80)
            .map(|t| t.sock.cookie)
            .collect();
        assert_eq!(left, vec![0], "the one with cookie 6 was retired");
    }

    #[test]
    fn failures_are_kept_newest_last_and_bounded() {
        let mut m = Model::new();
        for i in 0..(MAX_FAILURES + 5) {
            m.apply(&ev(
                i as u64,
                Some(1),
                Kind::BindFailed(Box::new(BindFailed {
                    holders_omitted: 0,
                    device: None,
                    syscall: Syscall::Bind,
                    errno: 98,
                    error: "EADDRINUSE".into(),
                    requested: "0.0.0.0:80".parse().unwrap(),
                    reuseaddr: false,
                    reuseport: false,
                    v6only: false,
                    uid: 0,
                    holders: vec![],
                    diagnosis: None,
                    freebind: false,
                    transparent: false,
                    bound_dev_if: 0,
                    cgroup_id: 0,
                    cookie: 0,
                    inode: 0,
                    tid: 0,
                    local: None,
                    kernel_holders: None,
                    holder_mismatch: None,
                    kernel_port: None,
                    port_mismatch: None,
                })),
            ));
        }
        assert_eq!(m.failures.len(), MAX_FAILURES);
        assert_eq!(
            m.failures.back().unwrap().common.ts_ns,
            (MAX_FAILURES + 4) as u64
        );
    }
}
