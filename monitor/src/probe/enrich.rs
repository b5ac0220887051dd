//! Kernel records -> the typed events of the contract: endpoints, names,
//! wall-clock time, timewait identity and end reasons.
//!
//! Pure apart from the facts it is given (clock offset, HZ, kernel symbols),
//! so it is tested without a kernel.

use std::collections::HashMap;

use monitor_common::{
    ConflictsEvent, SockCallEvent, StateEvent, TwEvent, F_FREEBIND, F_HAVE_REQUEST, F_IN_PROCESS,
    F_NET_DYING, F_RESET_SENT, F_REUSEADDR, F_REUSEPORT, F_TRANSPARENT, F_TW_UNHASHED, F_V6ONLY,
    NR_BIND, NR_CONNECT, NR_LISTEN, PORT_FN_GET_PORT, PORT_FN_HASH_CONNECT, PORT_FN_UDP_GET_PORT,
    TW_CANCEL, TW_DESCHEDULE, TW_EXPIRED, TW_OPEN, TW_SUBSTATE,
};

use super::decode::{cstr, Raw};
use super::sys::Kallsyms;
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
    syms: Option<Kallsyms>,
    /// Timewait socks we have announced, by kernel address.
    open_tw: HashMap<u64, TcpState>,
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
    /// See [`Enricher::set_resets_marked`].
    resets_marked: bool,
    /// Precise mode: `inet_twsk_deschedule_put` is hooked, so every early
    /// end is announced before its timer cancel.
    deschedule_live: bool,
    /// Timewait socks being descheduled, by address: the process current
    /// at that moment, until their cancel (or expiry) arrives.
    descheduled: HashMap<u64, Process>,
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

/// What a timer-cancel stack says about a timewait sock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMeaning {
    /// mod_timer: it lives on with a new timer.
    Rearm,
    Ended(TimewaitEnd),
}

/// Classify a cancel by the functions on the kernel stack, innermost first.
pub fn classify_cancel(funcs: &[&str]) -> CancelMeaning {
    let has = |f: &str| funcs.contains(&f);
    if has("__mod_timer") || has("mod_timer") || has("mod_timer_pending") {
        CancelMeaning::Rearm
    } else if has("__run_timers") || has("run_timer_softirq") {
        CancelMeaning::Ended(TimewaitEnd::Expired)
    } else if has("tcp_twsk_unique") || has("__inet_hash_connect") {
        CancelMeaning::Ended(TimewaitEnd::ReusedByConnect)
    } else if has("inet_twsk_purge") {
        CancelMeaning::Ended(TimewaitEnd::NetnsExit)
    } else if has("tcp_timewait_state_process") {
        // An RST (or a bad segment answered with one) in timewait.
        CancelMeaning::Ended(TimewaitEnd::Reset)
    } else if has("tcp_v4_rcv") || has("tcp_v6_rcv") {
        // tcp_v4_rcv kills the timewait sock itself only for TCP_TW_SYN: a
        // new SYN took over the 4-tuple.
        CancelMeaning::Ended(TimewaitEnd::ReusedBySyn)
    } else {
        CancelMeaning::Ended(TimewaitEnd::Unknown)
    }
}

/// Precise mode: does the kernel's early end (`inet_twsk_deschedule_put`
/// entered for this sock just before the cancel) agree with what the
/// cancel's stack says? The early ends of other files pass there (a SYN or
/// a RST in tcp_v4_rcv, a received RST in tcp_timewait_state_process, a
/// connect() in __inet_hash_connect); a re-arm and an expiry never do. A
/// netns exit is not compared: `inet_twsk_purge` sits in the same file as
/// `inet_twsk_deschedule_put`, and 6.1's build apparently inlined the call (the
/// QEMU matrix saw no deschedule for it on 6.1, one on 6.12). A
/// disagreement keeps the stack's reason (or `unknown` for a sock the
/// stack took for re-armed but the kernel ended) and says why.
pub fn deschedule_agrees(
    meaning: CancelMeaning,
    descheduled: bool,
) -> (CancelMeaning, Option<String>) {
    match (meaning, descheduled) {
        (CancelMeaning::Rearm, true) => (
            CancelMeaning::Ended(TimewaitEnd::Unknown),
            Some("the timer cancel's stack reads as a re-arm, but the kernel ended the timewait sock early (inet_twsk_deschedule_put)".into()),
        ),
        (CancelMeaning::Ended(TimewaitEnd::Expired | TimewaitEnd::NetnsExit), _)
        | (CancelMeaning::Rearm, false) => (meaning, None),
        (CancelMeaning::Ended(reason), false) => (
            meaning,
            Some(format!(
                "the timer cancel's stack reads as {}, but the kernel did not end the timewait sock through inet_twsk_deschedule_put",
                serde_json::to_string(&reason).unwrap_or_default()
            )),
        ),
        (CancelMeaning::Ended(_), true) => (meaning, None),
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
    pub fn new(boot_to_unix_ns: i128, hz: u32, syms: Option<Kallsyms>) -> Enricher {
        Enricher {
            boot_to_unix_ns,
            hz: hz.max(1),
            syms,
            open_tw: HashMap::new(),
            containers: crate::container::Containers::default(),
            kernel_conflicts: false,
            port_hooks: Vec::new(),
            pending_conflicts: HashMap::new(),
            resets_marked: true,
            deschedule_live: false,
            descheduled: HashMap::new(),
            closers: Closers::default(),
        }
    }

    /// Say whether the hook on `inet_twsk_deschedule_put` is live.
    pub fn set_deschedule_live(&mut self, live: bool) {
        self.deschedule_live = live;
    }

    /// Say whether a RST the kernel sends for a timewait sock marks it
    /// (`tcp_send_reset` attached and seeing timewait socks).
    pub fn set_resets_marked(&mut self, marked: bool) {
        self.resets_marked = marked;
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
            Raw::State(r) => self.state(r),
            Raw::Tw(r) => self.timewait(r),
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
                local: endpoint(r.family, &r.saddr, r.sport),
                remote: endpoint(r.family, &r.daddr, r.dport),
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

    fn expires_in_ms(&self, r: &TwEvent) -> u64 {
        r.expires.saturating_sub(r.jiffies) * 1000 / self.hz as u64
    }

    fn timewait(&mut self, r: &TwEvent) -> Option<Event> {
        let local = endpoint(r.family, &r.saddr, r.sport);
        let remote = endpoint(r.family, &r.daddr, r.dport);
        let substate = TcpState::from_kernel(r.substate).unwrap_or(TcpState::TimeWait);
        let kind = match r.what {
            TW_OPEN | TW_SUBSTATE => {
                let known = self.open_tw.get(&r.tw).copied();
                if self.open_tw.len() >= MAX_TW && known.is_none() {
                    // Bounded memory: forget an arbitrary old one.
                    if let Some(k) = self.open_tw.keys().next().copied() {
                        self.open_tw.remove(&k);
                    }
                }
                self.open_tw.insert(r.tw, substate);
                match known {
                    // Re-armed after a cancel we already saw: same socket.
                    Some(s) if s == substate => return None,
                    Some(_) => Kind::TimewaitSubstate(TimewaitSubstate {
                        local,
                        remote,
                        substate,
                        expires_in_ms: self.expires_in_ms(r),
                        cookie: r.cookie,
                    }),
                    None if r.what == TW_SUBSTATE => Kind::TimewaitSubstate(TimewaitSubstate {
                        local,
                        remote,
                        substate,
                        expires_in_ms: self.expires_in_ms(r),
                        cookie: r.cookie,
                    }),
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
                self.open_tw.remove(&r.tw);
                // Descheduled while its timer was already running: the
                // timer ends it.
                self.descheduled.remove(&r.tw);
                Kind::TimewaitClose(TimewaitClose {
                    local,
                    remote,
                    reason: TimewaitEnd::Expired,
                    cookie: r.cookie,
                    ended_by: None,
                    end_mismatch: None,
                })
            }
            TW_CANCEL => {
                let n = (r.stack_len as usize).min(r.stack.len());
                let funcs: Vec<&str> = match &self.syms {
                    Some(s) => r.stack[..n]
                        .iter()
                        .filter_map(|a| s.function_of(*a))
                        .collect(),
                    None => Vec::new(),
                };
                // What the kernel's state told, where it did (and no stack
                // was taken); the stack otherwise.
                let told = if r.flags & F_NET_DYING != 0 {
                    Some(CancelMeaning::Ended(TimewaitEnd::NetnsExit))
                } else if r.flags & F_TW_UNHASHED != 0 {
                    Some(CancelMeaning::Ended(TimewaitEnd::ReusedByConnect))
                } else {
                    None
                };
                let meaning = match told.unwrap_or_else(|| classify_cancel(&funcs)) {
                    // The kernel sent a RST for it just before: TCP_TW_RST,
                    // which tcp_v4_rcv also kills (no SYN involved).
                    CancelMeaning::Ended(_) if r.flags & F_RESET_SENT != 0 => {
                        CancelMeaning::Ended(TimewaitEnd::Reset)
                    }
                    // No mark, but on this kernel the mark could not be set:
                    // a SYN or a RST, twmon cannot tell.
                    CancelMeaning::Ended(TimewaitEnd::ReusedBySyn) if !self.resets_marked => {
                        CancelMeaning::Ended(TimewaitEnd::Unknown)
                    }
                    m => m,
                };
                let descheduled = self.descheduled.remove(&r.tw);
                let (meaning, end_mismatch) = match self.deschedule_live {
                    true => deschedule_agrees(meaning, descheduled.is_some()),
                    false => (meaning, None),
                };
                match meaning {
                    CancelMeaning::Rearm => return None,
                    CancelMeaning::Ended(reason) => {
                        self.open_tw.remove(&r.tw);
                        Kind::TimewaitClose(TimewaitClose {
                            local,
                            remote,
                            reason,
                            cookie: r.cookie,
                            // Only connect() ends a timewait sock in the
                            // context of the process behind it.
                            ended_by: descheduled
                                .filter(|_| reason == TimewaitEnd::ReusedByConnect),
                            end_mismatch,
                        })
                    }
                }
            }
            _ => return None,
        };
        Some(Event {
            common: self.common(r.ts_ns, r.netns, Proto::Tcp, None),
            kind,
        })
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

    #[test]
    fn cancel_stacks_tell_why_a_timewait_ended() {
        use CancelMeaning::*;
        use TimewaitEnd::*;
        let cases: &[(&[&str], CancelMeaning)] = &[
            (&["__mod_timer", "tcp_timewait_state_process"], Rearm),
            (&["__run_timers", "run_timer_softirq"], Ended(Expired)),
            (
                &["tcp_twsk_unique", "__inet_hash_connect"],
                Ended(ReusedByConnect),
            ),
            (&["inet_twsk_purge"], Ended(NetnsExit)),
            (&["tcp_timewait_state_process", "tcp_v4_rcv"], Ended(Reset)),
            (&["tcp_v4_rcv"], Ended(ReusedBySyn)),
            (&["tcp_v6_rcv"], Ended(ReusedBySyn)),
            (&[], Ended(Unknown)),
        ];
        for (funcs, want) in cases {
            assert_eq!(classify_cancel(funcs), *want, "{funcs:?}");
        }
    }

    /// A twmon's probe binds (snapshot/flags.rs) are refused on purpose:
    /// dropped, whichever twmon made them; the same bind by anyone else is
    /// a failure.
    #[test]
    fn probe_binds_are_not_failures() {
        let mut e = Enricher::new(0, 250, None);
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
        let e = Enricher::new(0, 250, None);
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
        use CancelMeaning::*;
        use TimewaitEnd::*;
        for reason in [ReusedBySyn, ReusedByConnect, Reset, Unknown] {
            assert_eq!(
                deschedule_agrees(Ended(reason), true),
                (Ended(reason), None)
            );
            let (m, why) = deschedule_agrees(Ended(reason), false);
            assert_eq!(m, Ended(reason));
            assert!(why.unwrap().contains("did not end the timewait sock"));
        }
        assert_eq!(deschedule_agrees(Rearm, false), (Rearm, None));
        assert_eq!(
            deschedule_agrees(Ended(Expired), false),
            (Ended(Expired), None)
        );
        // Inlined into inet_twsk_purge on 6.1: not compared either way.
        for desched in [false, true] {
            assert_eq!(
                deschedule_agrees(Ended(NetnsExit), desched),
                (Ended(NetnsExit), None)
            );
        }
        let (m, why) = deschedule_agrees(Rearm, true);
        assert_eq!(m, Ended(Unknown));
        assert!(why.unwrap().contains("reads as a re-arm"));

        // Through the enricher: the process of the deschedule names who
        // took the sock over by connect().
        let syms = Kallsyms::parse(
            "ffffffff81000100 T __inet_hash_connect\nffffffff81000200 T tcp_v4_rcv\nffffffff81000300 T x\n",
        );
        let mut e = Enricher::new(0, 250, Some(syms));
        e.set_deschedule_live(true);
        let mut r = tw_record(9, TW_DESCHEDULE);
        r.owner_pid = 4242;
        r.owner_comm[..4].copy_from_slice(b"curl");
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        r.what = TW_CANCEL;
        r.owner_pid = 0;
        r.owner_comm = [0; 16];
        r.stack[0] = 0xffffffff81000150;
        r.stack_len = 1;
        let Kind::TimewaitClose(c) = e.enrich(&Raw::Tw(r)).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.reason, ReusedByConnect);
        assert_eq!(
            c.ended_by.map(|p| (p.pid, p.comm)),
            Some((4242, "curl".into()))
        );
        assert_eq!(c.end_mismatch, None);
        // A SYN's takeover runs in softirq: no process is named; and a
        // cancel the kernel did not deschedule is a finding.
        r.stack[0] = 0xffffffff81000250;
        let Kind::TimewaitClose(c) = e.enrich(&Raw::Tw(r)).unwrap().kind else {
            panic!()
        };
        assert_eq!((c.reason, c.ended_by), (ReusedBySyn, None));
        assert!(c.end_mismatch.is_some());
    }

    /// A cancel without a stack: the kernel's state said why (the sock out
    /// of the hash before its cancel: a connect() took it over; its
    /// namespace without references: a netns exit), or a RST mark did, or
    /// nothing did.
    #[test]
    fn cancels_told_by_the_kernels_state_need_no_stack() {
        use TimewaitEnd::*;
        let syms = "ffffffff81000200 T tcp_v4_rcv\nffffffff81000300 T x\n";
        for (flags, want) in [
            (F_TW_UNHASHED, ReusedByConnect),
            (F_NET_DYING, NetnsExit),
            (F_NET_DYING | F_TW_UNHASHED, NetnsExit),
            (F_RESET_SENT, Reset),
            (0, Unknown),
        ] {
            let mut e = Enricher::new(0, 250, Some(Kallsyms::parse(syms)));
            let mut r = tw_record(9, TW_CANCEL);
            r.flags = flags;
            let Kind::TimewaitClose(c) = e.enrich(&Raw::Tw(r)).unwrap().kind else {
                panic!("flags {flags:#x}: not a close")
            };
            assert_eq!(c.reason, want, "flags {flags:#x}");
        }
    }

    #[test]
    fn a_port_functions_failure_rides_on_its_calls_record() {
        use monitor_common::KIND_CONFLICTS;
        let mut e = Enricher::new(0, 250, None);
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
        let mut e = Enricher::new(0, 250, None);
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
        // A cancel we cannot explain without symbols ends it as "unknown";
        // a later expiry of an unknown socket still reports.
        r.what = TW_CANCEL;
        let Kind::TimewaitClose(c) = e.enrich(&Raw::Tw(r)).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.reason, TimewaitEnd::Unknown);
        r.what = TW_EXPIRED;
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
    fn rearm_after_cancel_is_not_a_new_socket() {
        let syms = Kallsyms::parse("ffffffff81000100 T __mod_timer\nffffffff81000200 T x\n");
        let mut e = Enricher::new(0, 250, Some(syms));
        let mut r = tw_record(1, TW_OPEN);
        assert!(matches!(
            e.enrich(&Raw::Tw(r)).unwrap().kind,
            Kind::TimewaitOpen(_)
        ));
        r.what = TW_CANCEL;
        r.stack[0] = 0xffffffff81000150;
        r.stack_len = 1;
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
        r.what = TW_OPEN;
        assert_eq!(e.enrich(&Raw::Tw(r)), None);
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
