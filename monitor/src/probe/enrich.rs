//! Kernel records -> the typed events of the contract: endpoints, names,
//! wall-clock time, timewait identity and end reasons.
//!
//! Pure apart from the facts it is given (clock offset, HZ, kernel symbols),
//! so it is tested without a kernel.

/// foldhash: these maps are keyed by the kernel's cookies and addresses and
/// touched a few times per connection under churn (SipHash showed in perf).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use monitor_common::{
    ConflictsEvent, SockCallEvent, StateEvent, TwEvent, F_FREEBIND, F_HAVE_REQUEST, F_IN_PROCESS,
    F_NET_DYING, F_RESET_SENT, F_REUSEADDR, F_REUSEPORT, F_TRANSPARENT, F_TW_UNHASHED, F_V6ONLY,
    NR_BIND, NR_CONNECT, NR_LISTEN, PORT_FN_GET_PORT, PORT_FN_HASH_CONNECT, PORT_FN_UDP_GET_PORT,
    TW_CANCEL, TW_DESCHEDULE, TW_EXPIRED, TW_GONE, TW_OPEN, TW_REARM, TW_SUBSTATE,
};

use super::decode::{cstr, Raw};
use crate::event::{
    errno_name, BindFailed, Bound, Common, Endpoint, Event, KernelHolder, KernelPort, Kind,
    Process, Proto, StateChange, Syscall, TcpState, TimewaitClose, TimewaitEnd, TimewaitOpen,
    TimewaitSubstate,
};

const AF_INET6: u16 = 10;

/// At most this many live timewait socks are remembered (the kernel's own
/// default cap, tcp_max_tw_buckets, is 262144 per namespace).
const MAX_TW: usize = 1 << 20;

pub struct Enricher {
    boot_to_unix_ns: i128,
    hz: u32,
    /// Timewait socks we have announced, by kernel address: their cookie
    /// and substate. The cookie tells a new sock at a freed one's address,
    /// which can come before the old one's end is decided (see `held`).
    /// Keyed by address alone, a sock whose end was lost is replaced by
    /// the next one at its address: keyed by cookie too, such socks piled
    /// up under loss (the 600 s soak grew by 55 MiB).
    open_tw: HashMap<u64, (u64, TcpState)>,
    /// Container ids of failing processes, from their cgroups.
    containers: crate::container::Containers,
    /// Precise mode: the kernel's conflict hook is live, so TCP bind/listen
    /// failures carry the blocking sockets it named.
    kernel_conflicts: bool,
    /// Precise mode: the port functions with a live hook, by PORT_FN_*.
    port_hooks: Vec<u16>,
    /// Blocking sockets and port verdicts waiting for their call's record,
    /// by thread.
    pending_conflicts: HashMap<u32, ConflictsEvent>,
    /// Precise mode: `inet_twsk_deschedule_put` is hooked, so every early
    /// end is announced before its timer cancel.
    deschedule_live: bool,
    /// Timewait socks being descheduled, by address: the process current
    /// at that moment, until their cancel (or expiry) arrives.
    descheduled: HashMap<u64, Process>,
    /// Early timewait cancels their record does not explain, by address
    /// and cookie, until what follows them says why, or
    /// [`Enricher::settle`] decides.
    held: HashMap<(u64, u64), Held>,
    /// The latest timestamp of an EVENTS record read so far.
    newest_event_ns: u64,
    /// Who closed a socket first (its ESTABLISHED -> FIN_WAIT1, always in
    /// the closing process's own context), by cookie, until its timewait
    /// sock is announced: the timewait sock inherits the cookie. Kept here
    /// rather than in a kernel map: an LRU insert per connection was the
    /// costliest step of the state program under churn.
    closers: Closers,
}

/// Closing processes by socket cookie, bounded: two generations, the older
/// dropped whole when the newer fills, so a socket whose timewait sock never
/// comes (reset, lost event) is forgotten after at most 2 x CLOSERS_GEN
/// later closes.
#[derive(Default)]
struct Closers {
    new: HashMap<u64, Process>,
    old: HashMap<u64, Process>,
}

const CLOSERS_GEN: usize = 32_768;

impl Closers {
    fn insert(&mut self, cookie: u64, p: Process) {
        if self.new.len() >= CLOSERS_GEN {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(cookie, p);
    }

    fn take(&mut self, cookie: u64) -> Option<Process> {
        self.new
            .remove(&cookie)
            .or_else(|| self.old.remove(&cookie))
    }
}

/// At most this many descheduled timewait socks wait for their cancel (one
/// follows on the same CPU at once; only a lost record leaves one behind).
const MAX_DESCHEDULED: usize = 4096;

/// How long an unexplained timewait cancel waits for the kernel's second
/// look at its sock (TW_REARM: re-armed, or TW_GONE: ended; see
/// monitor-ebpf/src/timewait.rs) before the reader pokes every CPU for it.
/// The next program to run on the cancel's CPU sends it, within
/// microseconds on a busy host; an idle CPU may run none for a long time.
pub const HOLD_NS: u64 = 20_000_000;

/// How long an ended TIME_WAIT sock waits for the new connection on its
/// 4-tuple that tells a SYN took it over (its child's SYN_RECV or
/// ESTABLISHED, one round trip after the SYN), and how long a cancel waits
/// for its second look at most (lost, or never poked), before nothing
/// followed it.
pub const FOLLOW_NS: u64 = 1_000_000_000;

/// At most this many unexplained cancels wait at once (a flood of RSTs);
/// past it one is decided at once, as if nothing had followed.
const MAX_HELD: usize = 4096;

/// An early timewait cancel its record does not explain: a SYN's takeover,
/// a received RST or a re-arm. The kernel's second look tells a re-arm
/// (TW_REARM, or where timer_start is attached its TW_OPEN, of the same
/// sock and cookie: a new timewait sock at a freed one's address has
/// another cookie) from an end (TW_GONE); a new connection on the same
/// 4-tuple tells a SYN's takeover.
#[derive(Debug)]
struct Held {
    ts_ns: u64,
    netns: u32,
    cookie: u64,
    local: Endpoint,
    remote: Endpoint,
    substate: TcpState,
    /// The kernel's second look found it ended (TW_GONE).
    gone: bool,
    /// Why it ended, once known: handed over by the next `settle`.
    end: Option<TimewaitEnd>,
}

/// Why a held cancel ended when nothing followed it. A FIN_WAIT2 timewait
/// sock is neither taken over by a SYN (it answers one with a RST) nor
/// re-armed without turning TIME_WAIT first: a RST ended it, received or
/// sent. A TIME_WAIT one was ended by a received RST, or by a SYN whose
/// connection never came (SYN cookies, a full queue, a handshake that did
/// not finish), which look alike from here.
fn unfollowed(substate: TcpState) -> TimewaitEnd {
    match substate {
        TcpState::FinWait2 => TimewaitEnd::Reset,
        _ => TimewaitEnd::Unknown,
    }
}

/// Precise mode: does the kernel's early end (`inet_twsk_deschedule_put`
/// entered for this sock just before the cancel) agree with the reason?
/// The early ends of other files pass there (a SYN or a RST in tcp_v4_rcv,
/// a received RST in tcp_timewait_state_process, a connect() in
/// __inet_hash_connect); an expiry never does. A netns exit is not
/// compared: `inet_twsk_purge` sits in the same file as
/// `inet_twsk_deschedule_put`, and 6.1's build apparently inlined the call
/// (the QEMU matrix saw no deschedule for it on 6.1, one on 6.12). Says why
/// when they disagree.
pub fn deschedule_agrees(reason: TimewaitEnd, descheduled: bool) -> Option<String> {
    match reason {
        TimewaitEnd::Expired | TimewaitEnd::NetnsExit => None,
        _ if descheduled => None,
        _ => Some(format!(
            "the timer cancel reads as {}, but the kernel did not end the timewait sock through inet_twsk_deschedule_put",
            serde_json::to_string(&reason).unwrap_or_default()
        )),
    }
}

fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> Endpoint {
    if family == AF_INET6 {
        Endpoint::v6(*addr, port)
    } else {
        Endpoint::v4([addr[0], addr[1], addr[2], addr[3]], port)
    }
}

/// The kernel function a PORT_FN_* stands for.
fn port_fn_name(f: u16) -> &'static str {
    match f {
        PORT_FN_GET_PORT => "inet_csk_get_port",
        PORT_FN_UDP_GET_PORT => "udp_lib_get_port",
        PORT_FN_HASH_CONNECT => "__inet_hash_connect",
        _ => "?",
    }
}

fn proto_of(p: u16) -> Proto {
    Proto::from_ipproto(p).unwrap_or(Proto::Tcp)
}

impl Enricher {
    pub fn new(boot_to_unix_ns: i128, hz: u32) -> Enricher {
        Enricher {
            boot_to_unix_ns,
            hz: hz.max(1),
            open_tw: HashMap::default(),
            containers: crate::container::Containers::default(),
            kernel_conflicts: false,
            port_hooks: Vec::new(),
            pending_conflicts: HashMap::default(),
            deschedule_live: false,
            descheduled: HashMap::default(),
            held: HashMap::default(),
            newest_event_ns: 0,
            closers: Closers::default(),
        }
    }

    /// Say whether the hook on `inet_twsk_deschedule_put` is live.
    pub fn set_deschedule_live(&mut self, live: bool) {
        self.deschedule_live = live;
    }

    /// Say whether the kernel's conflict hook (`inet_bind_conflict`) is live.
    pub fn set_kernel_conflicts(&mut self, live: bool) {
        self.kernel_conflicts = live;
    }

    /// Say which port functions have a live hook (`inet_csk_get_port`,
    /// `udp_lib_get_port`, `__inet_hash_connect`, by name).
    pub fn set_port_hooks(&mut self, live: &[&str]) {
        self.port_hooks = [PORT_FN_GET_PORT, PORT_FN_UDP_GET_PORT, PORT_FN_HASH_CONNECT]
            .into_iter()
            .filter(|f| live.contains(&port_fn_name(*f)))
            .collect();
    }

    /// What the port function of this call said: None when its hook is not
    /// live or the call has none; all fields null when it did not fail.
    fn kernel_port(&self, r: &SockCallEvent, syscall: Syscall) -> Option<Box<KernelPort>> {
        let func = match (r.protocol, syscall) {
            (6, Syscall::Connect) => PORT_FN_HASH_CONNECT,
            (6, _) => PORT_FN_GET_PORT,
            (17, _) => PORT_FN_UDP_GET_PORT,
            _ => return None,
        };
        if !self.port_hooks.contains(&func) {
            return None;
        }
        let Some(c) = self
            .pending_conflicts
            .get(&r.tid)
            .filter(|c| c.inode == r.inode && c.port_fn != 0)
        else {
            return Some(Box::default());
        };
        let errno = if c.port_ret < 0 {
            -c.port_ret
        } else {
            libc::EADDRINUSE
        };
        Some(Box::new(KernelPort {
            function: Some(port_fn_name(c.port_fn).to_string()),
            port: Some(c.port),
            ret: Some(c.port_ret),
            errno: Some(errno),
            error: Some(errno_name(errno)),
        }))
    }

    /// The blocking sockets the kernel named for a failed call: None when
    /// the conflict hook is not live or cannot apply (UDP uses its own
    /// lookup; connect() never goes through inet_bind_conflict).
    fn kernel_holders(&self, r: &SockCallEvent, syscall: Syscall) -> Option<Vec<KernelHolder>> {
        if !self.kernel_conflicts || r.protocol != 6 || syscall == Syscall::Connect {
            return None;
        }
        let Some(c) = self
            .pending_conflicts
            .get(&r.tid)
            .filter(|c| c.inode == r.inode)
        else {
            return Some(Vec::new());
        };
        let n = (c.n as usize).min(c.socks.len());
        Some(
            c.socks[..n]
                .iter()
                .filter_map(|c| {
                    let remote = endpoint(c.family, &c.daddr, c.dport);
                    Some(KernelHolder {
                        state: TcpState::from_kernel(c.state)?,
                        local: endpoint(c.family, &c.saddr, c.sport),
                        remote: (remote.port() != 0 || !remote.is_unspecified()).then_some(remote),
                    })
                })
                .collect(),
        )
    }

    pub fn common(&self, ts_ns: u64, netns: u32, proto: Proto, proc_: Option<Process>) -> Common {
        let (pid, comm) = match proc_ {
            Some(p) => (Some(p.pid), Some(p.comm)),
            None => (None, None),
        };
        Common {
            ts: rfc3339(self.boot_to_unix_ns + ts_ns as i128),
            ts_ns,
            netns,
            proto,
            pid,
            comm,
            container: None,
        }
    }

    /// One record in, zero or one event out.
    pub fn enrich(&mut self, raw: &Raw) -> Option<Event> {
        match raw {
            Raw::Conflicts(c) => {
                self.pending_conflicts.insert(c.tid, *c);
                None
            }
            Raw::SockCall(r) => {
                // Probe binds of a twmon (snapshot/flags.rs), refused on
                // purpose: not the host's failures.
                if cstr(&r.comm) == crate::snapshot::flags::PROBE_COMM {
                    self.pending_conflicts.remove(&r.tid);
                    return None;
                }
                let mut ev = self.sock_call(r);
                // The conflicts record, if any, came just before this one.
                self.pending_conflicts.remove(&r.tid);
                // Failures only: a /proc read for every successful bind
                // would cost under churn.
                if matches!(ev.kind, Kind::BindFailed(_)) {
                    ev.common.container = self.containers.of(r.pid, r.cgroup_id);
                }
                Some(ev)
            }
            Raw::State(r) => {
                self.newest_event_ns = self.newest_event_ns.max(r.ts_ns);
                self.state(r)
            }
            Raw::Tw(r) => {
                self.newest_event_ns = self.newest_event_ns.max(r.ts_ns);
                self.timewait(r)
            }
        }
    }

    fn sock_call(&self, r: &SockCallEvent) -> Event {
        let syscall = match r.syscall {
            NR_BIND => Syscall::Bind,
            NR_LISTEN => Syscall::Listen,
            _ => Syscall::Connect,
        };
        debug_assert!(matches!(r.syscall, NR_BIND | NR_LISTEN | NR_CONNECT));
        let proto = proto_of(r.protocol);
        let local = endpoint(r.sk_family, &r.local_addr, r.local_port);
        let requested = if r.flags & F_HAVE_REQUEST != 0 && syscall != Syscall::Listen {
            // AF_UNSPEC on an IPv4 bind means INADDR_ANY; the address bytes
            // of the record are then zero.
            endpoint(r.req_family, &r.req_addr, r.req_port)
        } else {
            local
        };
        let common = self.common(
            r.ts_ns,
            r.netns,
            proto,
            Some(Process {
                pid: r.pid,
                comm: cstr(&r.comm),
            }),
        );
        let flag = |f: u32| r.flags & f != 0;
        let kind = if r.ret == 0 {
            Kind::Bound(Bound {
                syscall,
                local,
                reuseaddr: flag(F_REUSEADDR),
                reuseport: flag(F_REUSEPORT),
                v6only: flag(F_V6ONLY),
                uid: r.sk_uid,
                cookie: r.cookie,
                bound_dev_if: r.bound_dev_if,
                inode: r.inode,
            })
        } else {
            let errno = -r.ret;
            let has_local = local.port() != 0 || !local.is_unspecified();
            Kind::BindFailed(Box::new(BindFailed {
                holders_omitted: 0,
                device: None,
                syscall,
                errno,
                error: errno_name(errno),
                requested,
                reuseaddr: flag(F_REUSEADDR),
                reuseport: flag(F_REUSEPORT),
                v6only: flag(F_V6ONLY),
                uid: r.sk_uid,
                holders: Vec::new(),
                diagnosis: None,
                freebind: flag(F_FREEBIND),
                transparent: flag(F_TRANSPARENT),
                bound_dev_if: r.bound_dev_if,
                cgroup_id: r.cgroup_id,
                cookie: r.cookie,
                inode: r.inode,
                tid: r.tid,
                local: (syscall != Syscall::Bind && has_local).then_some(local),
                kernel_holders: self.kernel_holders(r, syscall),
                holder_mismatch: None,
                kernel_port: self.kernel_port(r, syscall),
                port_mismatch: None,
            }))
        };
        Event { kind, common }
    }

    fn state(&mut self, r: &StateEvent) -> Option<Event> {
        let old = TcpState::from_kernel(r.oldstate)?;
        let new = TcpState::from_kernel(r.newstate)?;
        let proc_ = (r.flags & F_IN_PROCESS != 0).then(|| Process {
            pid: r.pid,
            comm: cstr(&r.comm),
        });
        let (local, remote) = (
            endpoint(r.family, &r.saddr, r.sport),
            endpoint(r.family, &r.daddr, r.dport),
        );
        // A new connection's first transitions with its 4-tuple: 6.1's
        // SYN_RECV record still has the listener's addresses (the child's
        // are set after it), its SYN_RECV -> ESTABLISHED has them.
        if matches!(new, TcpState::SynRecv | TcpState::Established) && !self.held.is_empty() {
            self.taken_over_by(r.netns, local, remote);
        }
        match (new, &proc_) {
            // Who leaves a timewait sock behind: the process whose close()
            // or shutdown() sent the first FIN.
            (TcpState::FinWait1, Some(p)) => self.closers.insert(r.cookie, p.clone()),
            // Its timewait sock (announced just before) took it, or it
            // ended without one.
            (TcpState::Close, _) => {
                self.closers.take(r.cookie);
            }
            _ => {}
        }
        Some(Event {
            common: self.common(r.ts_ns, r.netns, Proto::Tcp, proc_),
            kind: Kind::State(StateChange {
                local,
                remote,
                old,
                new,
                cookie: r.cookie,
                reuseaddr: r.flags & F_REUSEADDR != 0,
                reuseport: r.flags & F_REUSEPORT != 0,
                uid: r.sk_uid,
                inode: r.inode,
            }),
        })
    }

    /// A timewait sock's new substate and expiry, from record `r`, between
    /// `local` and `remote` (a re-arm's record has no addresses of its own).
    fn substate_change(&self, r: &TwEvent, local: Endpoint, remote: Endpoint) -> Kind {
        Kind::TimewaitSubstate(TimewaitSubstate {
            local,
            remote,
            substate: TcpState::from_kernel(r.substate).unwrap_or(TcpState::TimeWait),
            expires_in_ms: self.expires_in_ms(r),
            cookie: r.cookie,
        })
    }

    fn expires_in_ms(&self, r: &TwEvent) -> u64 {
        r.expires.saturating_sub(r.jiffies) * 1000 / self.hz as u64
    }

    fn timewait(&mut self, r: &TwEvent) -> Option<Event> {
        let local = endpoint(r.family, &r.saddr, r.sport);
        let remote = endpoint(r.family, &r.daddr, r.dport);
        let substate = TcpState::from_kernel(r.substate).unwrap_or(TcpState::TimeWait);
        // The end of this record's sock, as close() takes it.
        let held = || Held {
            ts_ns: r.ts_ns,
            netns: r.netns,
            cookie: r.cookie,
            local,
            remote,
            substate,
            gone: false,
            end: None,
        };
        let kind = match r.what {
            TW_OPEN | TW_SUBSTATE => {
                // The re-arm of a cancel held just before: it lives on.
                self.held.remove(&(r.tw, r.cookie));
                let known = self
                    .open_tw
                    .get(&r.tw)
                    .filter(|(cookie, _)| *cookie == r.cookie)
                    .map(|(_, s)| *s);
                if self.open_tw.len() >= MAX_TW && !self.open_tw.contains_key(&r.tw) {
                    // Bounded memory: forget an arbitrary old one.
                    if let Some(k) = self.open_tw.keys().next().copied() {
                        self.open_tw.remove(&k);
                    }
                }
                self.open_tw.insert(r.tw, (r.cookie, substate));
                match known {
                    // Re-armed after a cancel we already saw: same socket.
                    Some(s) if s == substate => return None,
                    Some(_) => self.substate_change(r, local, remote),
                    None if r.what == TW_SUBSTATE => self.substate_change(r, local, remote),
                    None => Kind::TimewaitOpen(TimewaitOpen {
                        local,
                        remote,
                        substate,
                        expires_in_ms: self.expires_in_ms(r),
                        left_by: self.closers.take(r.cookie),
                        cookie: r.cookie,
                        reuseaddr: r.flags & F_REUSEADDR != 0,
                        reuseport: r.flags & F_REUSEPORT != 0,
                    }),
                }
            }
            TW_DESCHEDULE => {
                if self.descheduled.len() >= MAX_DESCHEDULED {
                    self.descheduled.clear();
                }
                self.descheduled.insert(
                    r.tw,
                    Process {
                        pid: r.owner_pid,
                        comm: cstr(&r.owner_comm),
                    },
                );
                return None;
            }
            TW_EXPIRED => {
                self.held.remove(&(r.tw, r.cookie));
                // Descheduled while its timer was already running: the
                // timer ends it (close() drops the deschedule, and never
                // compares an expiry with it).
                return Some(self.close(r.tw, held(), TimewaitEnd::Expired));
            }
            TW_CANCEL => {
                let held = held();
                // What the kernel's state told, where it did. A RST it sent
                // for the sock (TCP_TW_RST) is a reset whatever else holds.
                let told = if r.flags & F_RESET_SENT != 0 {
                    Some(TimewaitEnd::Reset)
                } else if r.flags & F_NET_DYING != 0 {
                    Some(TimewaitEnd::NetnsExit)
                } else if r.flags & F_TW_UNHASHED != 0 {
                    Some(TimewaitEnd::ReusedByConnect)
                } else {
                    None
                };
                let reason = match told {
                    Some(reason) => reason,
                    None if self.held.len() < MAX_HELD => {
                        self.held.insert((r.tw, r.cookie), held);
                        return None;
                    }
                    None => unfollowed(held.substate),
                };
                return Some(self.close(r.tw, held, reason));
            }
            TW_REARM => {
                // The kernel's second look: the timer is pending again, the
                // sock lives on. The record has no time and no addresses:
                // the cancel, which was the re-arm, had them.
                let h = self.held.remove(&(r.tw, r.cookie))?;
                let known = match self.open_tw.get_mut(&r.tw) {
                    Some((cookie, s)) if *cookie == r.cookie => {
                        Some(std::mem::replace(s, substate))
                    }
                    _ => None,
                };
                if known == Some(substate) {
                    return None;
                }
                return Some(Event {
                    common: self.common(h.ts_ns, h.netns, Proto::Tcp, None),
                    kind: self.substate_change(r, h.local, h.remote),
                });
            }
            TW_GONE => {
                let h = self.held.get_mut(&(r.tw, r.cookie))?;
                h.gone = true;
                // A FIN_WAIT2 sock is never taken over by a SYN: nothing
                // else can follow.
                if h.substate == TcpState::FinWait2 && h.end.is_none() {
                    let h = self.held.remove(&(r.tw, r.cookie))?;
                    return Some(self.close(r.tw, h, TimewaitEnd::Reset));
                }
                return None;
            }
            _ => return None,
        };
        Some(Event {
            common: self.common(r.ts_ns, r.netns, Proto::Tcp, None),
            kind,
        })
    }

    /// Forget an announced timewait sock, unless its address already holds
    /// a newer one.
    fn forget_tw(&mut self, tw: u64, cookie: u64) {
        if self.open_tw.get(&tw).is_some_and(|(c, _)| *c == cookie) {
            self.open_tw.remove(&tw);
        }
    }

    /// The end of timewait sock `tw`, at `h.ts_ns`.
    fn close(&mut self, tw: u64, h: Held, reason: TimewaitEnd) -> Event {
        self.forget_tw(tw, h.cookie);
        let descheduled = self.descheduled.remove(&tw);
        let end_mismatch = self
            .deschedule_live
            .then(|| deschedule_agrees(reason, descheduled.is_some()))
            .flatten();
        Event {
            common: self.common(h.ts_ns, h.netns, Proto::Tcp, None),
            kind: Kind::TimewaitClose(TimewaitClose {
                local: h.local,
                remote: h.remote,
                reason,
                cookie: h.cookie,
                // Only connect() ends a timewait sock in the context of
                // the process behind it.
                ended_by: descheduled.filter(|_| reason == TimewaitEnd::ReusedByConnect),
                end_mismatch,
            }),
        }
    }

    /// The latest timestamp of an EVENTS record read so far. The ring is in
    /// the order records were reserved, and a record's timestamp is taken
    /// right after its reservation: a record reserved before this moment,
    /// less a hair, was read before it.
    pub fn newest_event_ns(&self) -> u64 {
        self.newest_event_ns
    }

    /// Hand over the held cancels that are decided, and decide those that
    /// waited [`FOLLOW_NS`] for what follows them (see [`unfollowed`]).
    /// `read_up_to` (boot time) is the moment up to which the reader has
    /// read every EVENTS record; `u64::MAX` when it stops. Oldest first.
    pub fn settle(&mut self, read_up_to: u64) -> Vec<Event> {
        let waited = read_up_to.saturating_sub(FOLLOW_NS);
        let mut due: Vec<(u64, (u64, u64))> = self
            .held
            .iter()
            .filter(|(_, h)| h.end.is_some() || h.ts_ns < waited)
            .map(|(key, h)| (h.ts_ns, *key))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|(_, key)| {
                let h = self.held.remove(&key)?;
                let reason = h.end.unwrap_or_else(|| unfollowed(h.substate));
                Some(self.close(key.0, h, reason))
            })
            .collect()
    }

    /// Whether a held cancel made before `read_up_to` less [`HOLD_NS`]
    /// still waits for the kernel's second look at its sock: then the
    /// reader pokes every CPU, so that the one it was made on runs a
    /// program that looks.
    pub fn awaits_second_look(&self, read_up_to: u64) -> bool {
        let due = read_up_to.saturating_sub(HOLD_NS);
        self.held
            .values()
            .any(|h| !h.gone && h.end.is_none() && h.ts_ns < due)
    }

    /// A new connection on a held sock's 4-tuple (its SYN_RECV or
    /// ESTABLISHED, in its namespace): a SYN took the 4-tuple over, which
    /// only ends a TIME_WAIT sock. A FIN_WAIT2 one answers the SYN with a
    /// RST and dies; the client's next SYN then makes the same new
    /// connection, which may reach us before the second look does.
    fn taken_over_by(&mut self, netns: u32, local: Endpoint, remote: Endpoint) {
        for h in self.held.values_mut() {
            if h.netns == netns
                && h.local == local
                && h.remote == remote
                && h.substate == TcpState::TimeWait
                && h.end.is_none()
            {
                h.end = Some(TimewaitEnd::ReusedBySyn);
            }
        }
    }
}

/// RFC 3339 UTC with nanoseconds, e.g. 2026-11-21T23:00:00.000000001Z.
///
/// Every event carries one, and calendar formatting was a tenth of the
/// reader's time under churn: the text up to the seconds is kept per
/// thread and reused while the second does not change.
pub fn rfc3339(unix_ns: i128) -> String {
    thread_local! {
        /// (second, "YYYY-MM-DDTHH:MM:SS.") of the last call.
        static LAST: std::cell::RefCell<(i128, String)> =
            const { std::cell::RefCell::new((i128::MIN, String::new())) };
    }
    let (sec, nanos) = (
        unix_ns.div_euclid(1_000_000_000),
        unix_ns.rem_euclid(1_000_000_000),
    );
    LAST.with_borrow_mut(|(last_sec, prefix)| {
        if *last_sec != sec {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
            );
            let Some(full) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
                .ok()
                .and_then(|t| t.format(&fmt).ok())
            else {
                return "1970-01-01T00:00:00.000000000Z".into();
            };
            // Keep the '.', drop the nine digits and the 'Z'.
            full[..full.len() - 10].clone_into(prefix);
            *last_sec = sec;
        }
        let mut digits = [b'0'; 9];
        let mut n = nanos as u32;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let mut out = String::with_capacity(prefix.len() + 10);
        out.push_str(prefix);
        out.push_str(std::str::from_utf8(&digits).unwrap_or("000000000"));
        out.push('Z');
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::{KIND_SOCK_CALL, KIND_STATE, KIND_TW};

    fn zeroed<T>() -> T {
        // SAFETY: the ABI structs are plain integers and byte arrays.
        unsafe { std::mem::zeroed() }
    }

    /// A timewait record of an IPv4 TIME_WAIT sock (substate 6) known by
    /// `tw`, saying `what`.
    fn tw_record(tw: u64, what: u8) -> TwEvent {
        let mut r: TwEvent = zeroed();
        r.kind = KIND_TW;
        r.tw = tw;
        r.family = 2;
        r.substate = 6;
        r.what = what;
        r
    }

    /// The end of a timewait sock, from the event an enrich or a settle
    /// gave.
    fn close_of(ev: Option<Event>) -> TimewaitClose {
        match ev.map(|e| e.kind) {
            Some(Kind::TimewaitClose(c)) => c,
            other => panic!("not a timewait_close: {other:?}"),
        }
    }

    /// What may follow a cancel its record does not explain.
    #[derive(Clone, Copy, Debug)]
    enum Then {
        /// The kernel's second look: timer pending again (cookie, substate).
        Rearm(u64, u8),
        /// The kernel's second look: ended (cookie).
        Gone(u64),
        /// Ended, then a new connection's SYN_RECV on this remote port.
        GoneThenSynRecv(u16),
        /// The new connection's SYN_RECV (on this remote port) before the
        /// second look, which ran later on the cancel's CPU: ended.
        SynRecvThenGone,
        /// Ended, then a SYN_RECV with the listener's addresses (6.1) and
        /// the SYN_RECV -> ESTABLISHED of the connection.
        GoneThenEstablished,
    }

    /// A SYN_RECV transition from 127.0.0.1:80 to 127.0.0.1:`rport`.
    fn syn_recv(rport: u16, ts_ns: u64) -> StateEvent {
        let mut s: StateEvent = zeroed();
        s.kind = KIND_STATE;
        s.family = 2;
        s.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        s.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        s.sport = 80;
        s.dport = rport;
        s.oldstate = 10;
        s.newstate = 3;
        s.cookie = 99;
        s.ts_ns = ts_ns;
        s
    }

    /// A cancel its record does not explain waits for the kernel's second
    /// look at its sock (a re-arm, or an end), then for the new connection
    /// that tells a SYN took its 4-tuple over; what nothing explains is
    /// decided by the substate after FOLLOW_NS.
    #[test]
    fn unexplained_cancels_wait_for_what_follows() {
        use Then::*;
        use TimewaitEnd::*;
        const T0: u64 = 10_000_000_000;
        // (substate, what follows, the end, decided at once)
        let cases: &[(u8, &[Then], Option<TimewaitEnd>, bool)] = &[
            (6, &[Rearm(7, 6)], None, false),
            (6, &[Gone(7)], Some(Unknown), false),
            (5, &[Gone(7)], Some(Reset), true),
            (6, &[GoneThenSynRecv(5000)], Some(ReusedBySyn), true),
            (6, &[GoneThenEstablished], Some(ReusedBySyn), true),
            (6, &[SynRecvThenGone], Some(ReusedBySyn), true),
            // A SYN is answered with a RST by a FIN_WAIT2 sock, whose
            // client then connects again: not a takeover.
            (5, &[SynRecvThenGone], Some(Reset), true),
            // A new connection from another port: not this sock's.
            (6, &[GoneThenSynRecv(5001)], Some(Unknown), false),
            // Another sock at the same address (another cookie): not this
            // one's second look.
            (6, &[Rearm(8, 6)], Some(Unknown), false),
            (6, &[], Some(Unknown), false),
            (5, &[], Some(Reset), false),
        ];
        for &(substate, thens, want, at_once) in cases {
            let case = format!("substate {substate}, then {thens:?}");
            let mut e = Enricher::new(0, 250);
            let mut r = tw_record(9, TW_OPEN);
            r.substate = substate;
            r.cookie = 7;
            r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            r.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            r.sport = 80;
            r.dport = 5000;
            r.ts_ns = T0 - 1000;
            assert!(e.enrich(&Raw::Tw(r)).is_some(), "{case}: the open");
            r.what = TW_CANCEL;
            r.ts_ns = T0;
            assert_eq!(e.enrich(&Raw::Tw(r)), None, "{case}: the cancel waits");
            assert!(
                !e.awaits_second_look(T0 + HOLD_NS - 1),
                "{case}: poked too early"
            );
            assert!(e.awaits_second_look(T0 + HOLD_NS + 1), "{case}: poke");
            let mut got = Vec::new();
            for (i, then) in thens.iter().enumerate() {
                let ts = T0 + 1000 * (i as u64 + 1);
                let (what, cookie, sub) = match *then {
                    Rearm(c, s) => (TW_REARM, c, s),
                    Gone(c) => (TW_GONE, c, 0),
                    GoneThenSynRecv(_) | GoneThenEstablished | SynRecvThenGone => (TW_GONE, 7, 0),
                };
                if let SynRecvThenGone = *then {
                    let st = e.enrich(&Raw::State(syn_recv(5000, ts - 500)));
                    assert!(st.is_some(), "{case}: the transition itself");
                }
                let mut f: TwEvent = zeroed();
                (f.kind, f.what, f.tw, f.cookie, f.substate, f.ts_ns) =
                    (KIND_TW, what, 9, cookie, sub, ts);
                got.extend(e.enrich(&Raw::Tw(f)));
                if let GoneThenSynRecv(port) = *then {
                    let st = e.enrich(&Raw::State(syn_recv(port, ts + 500)));
                    assert!(st.is_some(), "{case}: the transition itself");
                }
                if let GoneThenEstablished = *then {
                    let mut first = syn_recv(0, ts + 500);
                    first.daddr = [0; 16];
                    assert!(e.enrich(&Raw::State(first)).is_some(), "{case}");
                    assert_eq!(e.settle(ts + 600), vec![], "{case}: not the listener's");
                    let mut est = syn_recv(5000, ts + 700);
                    (est.oldstate, est.newstate) = (3, 1);
                    assert!(e.enrich(&Raw::State(est)).is_some(), "{case}");
                }
            }
            let answered = thens.iter().any(|t| {
                matches!(
                    t,
                    Rearm(7, _)
                        | Gone(7)
                        | GoneThenSynRecv(_)
                        | GoneThenEstablished
                        | SynRecvThenGone
                )
            });
            assert_eq!(
                e.awaits_second_look(T0 + HOLD_NS + 1),
                !answered && !e.held.is_empty(),
                "{case}: poke after what followed"
            );
            // Decided at once: by enrich, or by the next settle.
            got.extend(e.settle(T0 + 10_000));
            let end = match (got.len(), at_once) {
                (1, true) => Some(close_of(got.pop())),
                (0, false) => {
                    let later = e.settle(T0 + FOLLOW_NS + 1);
                    match later.len() {
                        0 => None,
                        1 => Some(close_of(later.into_iter().next())),
                        n => panic!("{case}: {n} events"),
                    }
                }
                (n, _) => panic!("{case}: {n} events at once: {got:?}"),
            };
            assert_eq!(end.as_ref().map(|c| c.reason), want, "{case}");
            if let Some(c) = end {
                assert_eq!(c.cookie, 7, "{case}");
                assert_eq!(c.remote.port(), 5000, "{case}");
            }
            assert!(e.held.is_empty(), "{case}: still held");
        }
    }

    /// A re-arm that turned a FIN_WAIT2 sock TIME_WAIT is told with the
    /// cancel's addresses and the new expiry.
    #[test]
    fn a_rearm_that_changes_the_substate_is_told() {
        let mut e = Enricher::new(0, 250);
        let mut r = tw_record(9, TW_OPEN);
        r.substate = 5;
        r.cookie = 7;
        r.sport = 80;
        r.dport = 5000;
        assert!(e.enrich(&Raw::Tw(r)).is_some());
        r.what = TW_CANCEL;
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        let mut f: TwEvent = zeroed();
        (f.kind, f.what, f.tw, f.cookie, f.substate) = (KIND_TW, TW_REARM, 9, 7, 6);
        (f.expires, f.jiffies) = (1000 + 60 * 250, 1000);
        match e.enrich(&Raw::Tw(f)).map(|ev| ev.kind) {
            Some(Kind::TimewaitSubstate(t)) => {
                assert_eq!(t.substate, TcpState::TimeWait);
                assert_eq!(t.expires_in_ms, 60_000);
                assert_eq!((t.local.port(), t.remote.port()), (80, 5000));
            }
            other => panic!("not a timewait_substate: {other:?}"),
        }
        assert!(e.held.is_empty());
        assert_eq!(e.settle(u64::MAX), vec![]);
    }

    /// A new timewait sock may take the address of one whose end is still
    /// being decided: both are told, each once.
    #[test]
    fn a_freed_timewait_address_taken_again_is_a_new_sock() {
        let mut e = Enricher::new(0, 250);
        let mut r = tw_record(9, TW_OPEN);
        r.cookie = 1;
        assert!(e.enrich(&Raw::Tw(r)).is_some());
        r.what = TW_CANCEL;
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        let mut n = tw_record(9, TW_OPEN);
        n.cookie = 2;
        assert!(matches!(
            e.enrich(&Raw::Tw(n)).map(|e| e.kind),
            Some(Kind::TimewaitOpen(o)) if o.cookie == 2
        ));
        let old = e.settle(u64::MAX);
        assert_eq!(old.len(), 1);
        assert_eq!(close_of(old.into_iter().next()).cookie, 1);
        n.what = TW_EXPIRED;
        assert_eq!(close_of(e.enrich(&Raw::Tw(n))).cookie, 2);
        assert!(e.open_tw.is_empty());
        // Socks whose ends were lost do not pile up: the next sock at the
        // address takes the old one's place.
        for cookie in 10..1000 {
            n.what = TW_OPEN;
            n.cookie = cookie;
            assert!(e.enrich(&Raw::Tw(n)).is_some());
        }
        assert_eq!(e.open_tw.len(), 1);
    }

    /// Past MAX_HELD waiting cancels (a flood of RSTs), the next one is
    /// decided at once instead of growing the wait list.
    #[test]
    fn waiting_cancels_are_bounded() {
        let mut e = Enricher::new(0, 250);
        for tw in 0..MAX_HELD as u64 {
            assert_eq!(e.enrich(&Raw::Tw(tw_record(tw, TW_CANCEL))), None);
        }
        let c = close_of(e.enrich(&Raw::Tw(tw_record(u64::MAX, TW_CANCEL))));
        assert_eq!(c.reason, TimewaitEnd::Unknown);
        assert_eq!(e.held.len(), MAX_HELD);
        assert_eq!(e.settle(u64::MAX).len(), MAX_HELD);
    }

    /// A twmon's probe binds (snapshot/flags.rs) are refused on purpose:
    /// dropped, whichever twmon made them; the same bind by anyone else is
    /// a failure.
    #[test]
    fn probe_binds_are_not_failures() {
        let mut e = Enricher::new(0, 250);
        let mut r: SockCallEvent = zeroed();
        r.kind = KIND_SOCK_CALL;
        r.syscall = NR_BIND;
        r.ret = -98;
        r.protocol = 6;
        r.sk_family = 2;
        r.req_family = 2;
        r.req_port = 7100;
        r.flags = F_HAVE_REQUEST | F_REUSEADDR;
        let probe = crate::snapshot::flags::PROBE_COMM.as_bytes();
        r.comm[..probe.len()].copy_from_slice(probe);
        assert_eq!(e.enrich(&Raw::SockCall(r)), None);
        r.comm = [0; 16];
        r.comm[..6].copy_from_slice(b"server");
        assert!(matches!(
            e.enrich(&Raw::SockCall(r)).map(|ev| ev.kind),
            Some(Kind::BindFailed(_))
        ));
    }

    #[test]
    fn a_failed_bind_reports_the_requested_endpoint_not_the_reset_socket() {
        let e = Enricher::new(0, 250);
        let mut r: SockCallEvent = zeroed();
        r.kind = KIND_SOCK_CALL;
        r.syscall = NR_BIND;
        r.ret = -98;
        r.protocol = 6;
        r.sk_family = 2;
        r.req_family = 2;
        r.req_port = 8080;
        r.req_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r.flags = F_HAVE_REQUEST | F_REUSEADDR;
        r.pid = 77;
        r.comm[..6].copy_from_slice(b"server");
        let ev = e.sock_call(&r);
        let Kind::BindFailed(b) = &ev.kind else {
            panic!("{ev:?}")
        };
        assert_eq!(b.requested.to_string(), "127.0.0.2:8080");
        assert_eq!(b.error, "EADDRINUSE");
        assert!(b.reuseaddr && !b.reuseport);
        assert_eq!(b.local, None);
        assert_eq!(ev.common.pid, Some(77));
        assert_eq!(ev.common.comm.as_deref(), Some("server"));

        // listen(): the bound address is what was asked for.
        r.syscall = NR_LISTEN;
        r.flags = 0;
        r.local_port = 9000;
        r.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let ev = e.sock_call(&r);
        let Kind::BindFailed(b) = &ev.kind else {
            panic!()
        };
        assert_eq!(b.requested.to_string(), "127.0.0.1:9000");

        // A v4-mapped IPv6 request shows as IPv4.
        r.syscall = NR_BIND;
        r.flags = F_HAVE_REQUEST;
        r.req_family = AF_INET6;
        r.req_addr = std::net::Ipv4Addr::new(127, 0, 0, 1)
            .to_ipv6_mapped()
            .octets();
        let Kind::BindFailed(b) = e.sock_call(&r).kind else {
            panic!()
        };
        assert_eq!(b.requested.to_string(), "127.0.0.1:8080");

        r.ret = 0;
        assert!(matches!(e.sock_call(&r).kind, Kind::Bound(_)));
    }

    #[test]
    fn an_early_end_must_pass_the_kernels_deschedule() {
        use TimewaitEnd::*;
        for reason in [ReusedBySyn, ReusedByConnect, Reset, Unknown] {
            assert_eq!(deschedule_agrees(reason, true), None);
            let why = deschedule_agrees(reason, false);
            assert!(why.unwrap().contains("did not end the timewait sock"));
        }
        // Inlined into inet_twsk_purge on 6.1: not compared either way;
        // an expiry never passes there.
        for desched in [false, true] {
            assert_eq!(deschedule_agrees(NetnsExit, desched), None);
            assert_eq!(deschedule_agrees(Expired, desched), None);
        }

        // Through the enricher: the process of the deschedule names who
        // took the sock over by connect().
        let mut e = Enricher::new(0, 250);
        e.set_deschedule_live(true);
        let mut r = tw_record(9, TW_DESCHEDULE);
        r.owner_pid = 4242;
        r.owner_comm[..4].copy_from_slice(b"curl");
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        r.what = TW_CANCEL;
        r.flags = F_TW_UNHASHED;
        r.owner_pid = 0;
        r.owner_comm = [0; 16];
        let c = close_of(e.enrich(&Raw::Tw(r)));
        assert_eq!(c.reason, ReusedByConnect);
        assert_eq!(
            c.ended_by.map(|p| (p.pid, p.comm)),
            Some((4242, "curl".into()))
        );
        assert_eq!(c.end_mismatch, None);
        // A SYN's takeover runs in softirq: no process is named; and a
        // takeover the kernel did not deschedule is a finding.
        r.flags = 0;
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        assert_eq!(e.enrich(&Raw::Tw(tw_record(9, TW_GONE))), None);
        let mut child = syn_recv(0, 1);
        (child.saddr, child.daddr, child.sport) = ([0; 16], [0; 16], 0);
        assert!(e.enrich(&Raw::State(child)).is_some());
        let c = close_of(e.settle(2).into_iter().next());
        assert_eq!((c.reason, c.ended_by), (ReusedBySyn, None));
        assert!(c.end_mismatch.is_some());
    }

    /// The kernel's state says why at the cancel (the sock out of the hash
    /// before its cancel: a connect() took it over; its namespace without
    /// references: a netns exit; a RST it sent for it): decided at once.
    #[test]
    fn cancels_told_by_the_kernels_state_need_not_wait() {
        use TimewaitEnd::*;
        for (flags, want) in [
            (F_TW_UNHASHED, ReusedByConnect),
            (F_NET_DYING, NetnsExit),
            (F_NET_DYING | F_TW_UNHASHED, NetnsExit),
            (F_RESET_SENT, Reset),
            (F_RESET_SENT | F_TW_UNHASHED, Reset),
        ] {
            let mut e = Enricher::new(0, 250);
            let mut r = tw_record(9, TW_CANCEL);
            r.flags = flags;
            assert_eq!(
                close_of(e.enrich(&Raw::Tw(r))).reason,
                want,
                "flags {flags:#x}"
            );
            assert!(e.held.is_empty());
        }
    }

    #[test]
    fn a_port_functions_failure_rides_on_its_calls_record() {
        use monitor_common::KIND_CONFLICTS;
        let mut e = Enricher::new(0, 250);
        let mut r: SockCallEvent = zeroed();
        r.kind = KIND_SOCK_CALL;
        r.syscall = NR_CONNECT;
        r.ret = -99;
        r.protocol = 6;
        r.sk_family = 2;
        r.tid = 7;
        r.inode = 1234;
        let kernel_port = |ev: Event| match ev.kind {
            Kind::BindFailed(b) => b.kernel_port,
            other => panic!("{other:?}"),
        };
        // Hook not live: no field.
        assert_eq!(kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()), None);
        e.set_port_hooks(&["__inet_hash_connect", "inet_csk_get_port"]);
        // Live, and nothing failed in the kernel's port functions.
        assert_eq!(
            kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()),
            Some(Box::default())
        );
        // The search of the range failed.
        let mut c: ConflictsEvent = zeroed();
        c.kind = KIND_CONFLICTS;
        c.tid = 7;
        c.inode = 1234;
        c.port_fn = PORT_FN_HASH_CONNECT;
        c.port_ret = -99;
        assert_eq!(e.enrich(&Raw::Conflicts(c)), None);
        let k = kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()).unwrap();
        assert_eq!(k.function.as_deref(), Some("__inet_hash_connect"));
        assert_eq!((k.port, k.ret, k.errno), (Some(0), Some(-99), Some(99)));
        assert_eq!(k.error.as_deref(), Some("EADDRNOTAVAIL"));
        assert!(k.range_exhausted());
        // Used once: the next call of the thread starts clean.
        assert_eq!(
            kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()),
            Some(Box::default())
        );
        // 6.1's inet_csk_get_port says "in use" with 1.
        r.syscall = NR_BIND;
        r.ret = -98;
        c.port_fn = PORT_FN_GET_PORT;
        c.port = 8080;
        c.port_ret = 1;
        e.enrich(&Raw::Conflicts(c));
        let k = kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()).unwrap();
        assert_eq!(k.function.as_deref(), Some("inet_csk_get_port"));
        assert_eq!((k.port, k.errno), (Some(8080), Some(98)));
        assert!(!k.range_exhausted());
        // UDP's hook is not live here.
        r.protocol = 17;
        assert_eq!(kernel_port(e.enrich(&Raw::SockCall(r)).unwrap()), None);
    }

    #[test]
    fn timewait_life_is_told_once_per_socket() {
        let mut e = Enricher::new(0, 250);
        let mut r: TwEvent = zeroed();
        r.kind = KIND_TW;
        r.tw = 0xffff_8880_0000_1000;
        r.family = 2;
        r.sport = 8080;
        r.dport = 40000;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.substate = 5; // FIN_WAIT2
        r.what = TW_OPEN;
        r.jiffies = 1000;
        r.expires = 1000 + 15000; // 60 s at HZ=250
        r.cookie = 77;
        // The closing process is known from the socket's ESTABLISHED ->
        // FIN_WAIT1, in its own context; the timewait sock inherits the
        // cookie.
        let mut s: StateEvent = zeroed();
        s.kind = KIND_STATE;
        s.family = 2;
        s.cookie = 77;
        s.oldstate = 1;
        s.newstate = 4;
        s.flags = F_IN_PROCESS;
        s.pid = 42;
        s.comm[..3].copy_from_slice(b"srv");
        assert!(e.enrich(&Raw::State(s)).is_some());
        let ev = e.enrich(&Raw::Tw(r)).unwrap();
        let Kind::TimewaitOpen(o) = &ev.kind else {
            panic!("{ev:?}")
        };
        assert_eq!(o.substate, TcpState::FinWait2);
        assert_eq!(o.expires_in_ms, 60_000);
        assert_eq!(o.left_by.as_ref().map(|p| p.pid), Some(42));
        assert_eq!(ev.common.pid, None, "a timewait sock has no process");
        // Taken once: the full socket's FIN_WAIT2 -> CLOSE that follows
        // finds nothing left.
        assert_eq!(e.closers.take(77), None);

        // FIN_WAIT2 -> TIME_WAIT
        r.what = TW_SUBSTATE;
        r.substate = 6;
        assert!(matches!(
            e.enrich(&Raw::Tw(r)).unwrap().kind,
            Kind::TimewaitSubstate(_)
        ));
        // A later expiry of a socket we were not told of still reports.
        r.what = TW_EXPIRED;
        r.tw += 1;
        let Kind::TimewaitClose(c) = e.enrich(&Raw::Tw(r)).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.reason, TimewaitEnd::Expired);
    }

    #[test]
    fn closers_are_bounded_and_keep_the_recent_ones() {
        let mut c = Closers::default();
        let p = |pid| Process {
            pid,
            comm: "x".into(),
        };
        for cookie in 0..(3 * CLOSERS_GEN as u64) {
            c.insert(cookie, p(cookie as u32));
        }
        assert!(c.new.len() + c.old.len() <= 2 * CLOSERS_GEN);
        assert_eq!(c.take(0), None, "the oldest generation was dropped");
        let last = 3 * CLOSERS_GEN as u64 - 1;
        assert_eq!(c.take(last).map(|p| p.pid), Some(last as u32));
        let older = last - CLOSERS_GEN as u64;
        assert_eq!(c.take(older).map(|p| p.pid), Some(older as u32));
        assert_eq!(c.take(last), None, "taken once");
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00.000000001Z");
        // The same second again (the cached prefix), the next one, and back.
        let t = 1_795_000_000_000_000_000i128;
        assert_eq!(rfc3339(t + 5), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(t + 999_999_999), "2026-11-18T11:06:40.999999999Z");
        assert_eq!(rfc3339(t + 1_000_000_000), "2026-11-18T11:06:41.000000000Z");
        assert_eq!(rfc3339(t + 123_456_789), "2026-11-18T11:06:40.123456789Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            rfc3339(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456789Z"
        );
    }
}
