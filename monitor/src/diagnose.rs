//! From a failed bind()/listen()/connect() and the sockets that hold the port
//! to an [`event::Diagnosis`]: a code, one sentence saying what happened, one
//! sentence saying what fixes it, and whether SO_REUSEADDR / SO_REUSEPORT on
//! the new socket would have helped (the kernel's rules, see `rules.rs`).
//!
//! Codes, most decisive first (contract.md): listener > close_wait >
//! established > bound > time_wait; reuseport_mismatch replaces the first four
//! when every holder refuses only because of SO_REUSEPORT (one side lacks it,
//! or the uids differ); then ephemeral_exhausted, privileged_port,
//! address_not_local, already_bound, invalid_address, unknown.
//!
//! Entry points: [`diagnose`] (the failure plus a [`Context`] of evidence),
//! [`holder`] / [`holders_from_verdict`] (model sockets to contract holders),
//! and [`explain`], which does both for a `rules::Verdict`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::event::{
    errno_name, Diagnosis, DiagnosisCode, Endpoint, Holder, Overlap, Process, Proto, Syscall,
    TcpState,
};
use crate::rules::{Dad, ExistingSocket, NetEnv, NewSocket, Verdict};

/// What failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub syscall: Syscall,
    pub errno: i32,
    pub proto: Proto,
    /// The endpoint as the caller passed it (AF_INET6 v4-mapped stays mapped).
    pub requested: SocketAddr,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
    pub bound_dev_if: u32,
    /// connect() only: the local end the socket had before the call, when
    /// it had a port of its own (bound first). connect() then needs that
    /// exact pair of ends free and never searches ip_local_port_range, so
    /// EADDRNOTAVAIL means the connection exists already.
    pub bound: Option<SocketAddr>,
}

impl Failure {
    /// The failure of `new` as the rules predicted it.
    pub fn from_new(new: &NewSocket, syscall: Syscall, errno: i32) -> Failure {
        Failure {
            syscall,
            errno,
            proto: new.proto,
            requested: SocketAddr::new(new.addr, new.port),
            reuseaddr: new.reuseaddr,
            reuseport: new.reuseport,
            v6only: new.v6only,
            uid: new.uid,
            bound_dev_if: new.bound_dev_if,
            bound: None,
        }
    }

    fn own_port_connect(&self) -> Option<SocketAddr> {
        own_port_connect(self.syscall, self.errno, self.bound)
    }
}

/// The local end of a connect() that failed with EADDRNOTAVAIL from a port
/// its socket had bound (`bound`, as the call left it): see
/// [`Failure::bound`].
pub fn own_port_connect(
    syscall: Syscall,
    errno: i32,
    bound: Option<SocketAddr>,
) -> Option<SocketAddr> {
    (syscall == Syscall::Connect && errno == libc::EADDRNOTAVAIL)
        .then_some(bound?)
        .filter(|b| b.port() != 0)
}

/// The evidence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    /// Sockets that refuse the port (any order; sorted here).
    pub holders: Vec<Holder>,
    /// From the rules: EADDRINUSE now, success with the flag on the new socket.
    pub reuseaddr_would_help: bool,
    pub reuseport_would_help: bool,
    /// Some holder's SO_REUSEADDR/SO_REUSEPORT was guessed, and it mattered.
    pub flags_uncertain: bool,
    pub local_port_range: Option<(u16, u16)>,
    pub unprivileged_port_start: Option<u32>,
    /// net.ipv4.tcp_tw_reuse (see [`NetEnv::tcp_tw_reuse`]).
    pub tcp_tw_reuse: Option<u8>,
    /// Ports of `local_port_range` that a timewait sock holds.
    pub timewait_in_range: Option<usize>,
    /// connect(): timewait sockets toward the destination, the only ones
    /// that keep it from a port (a port serves many destinations).
    pub timewait_toward: Option<usize>,
    /// An exhausted range: the processes with most sockets in it (for
    /// connect(), toward its destination), with how many.
    pub range_users: Vec<(Process, usize)>,
    /// Timewait holders beyond those in `holders`, summed up rather than
    /// made holders: a busy port's tens of thousands cost ~1 us each as
    /// holders, per failure. `holders` then keeps every live holder and
    /// the first timewait ones.
    pub timewait_beyond: TimewaitSum,
    /// Ports of `local_port_range` in net.ipv4.ip_local_reserved_ports.
    pub reserved_in_range: usize,
    /// Sockets in use in that range (any state).
    pub used_in_range: Option<usize>,
    /// How many sockets were looked at (for `unknown`).
    pub sockets_seen: Option<usize>,
    /// Some processes' descriptors could not be read (owners may be missing).
    pub owners_hidden: bool,
    /// The rules' reason for a refusal that is not a conflict.
    pub reason: Option<String>,
    /// Why the namespace's sockets could not be read for this failure (for
    /// `unknown`: nothing was found because nothing could be looked at).
    pub unseen: Option<String>,
    /// The address asked for is an IPv6 one of this host that bind()
    /// refuses until duplicate address detection passes: its interface and
    /// how detection stands (for `address_not_local`).
    pub dad: Option<(String, Dad)>,
    /// The device the failing socket is bound to (SO_BINDTODEVICE), by name.
    pub device: Option<String>,
}

/// What the diagnosis needs of timewait holders it was not given one by one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimewaitSum {
    pub count: usize,
    pub fin_wait2: usize,
    pub max_expires_in_ms: Option<u64>,
    /// Every one of them would refuse the new socket by SO_REUSEPORT alone
    /// (see `reuseport_refusal`); true when there are none.
    pub all_refuse_by_reuseport: bool,
}

impl TimewaitSum {
    /// Add one timewait socket `s` that `f`'s socket conflicts with.
    pub fn add(&mut self, f: &Failure, s: &ExistingSocket) {
        if self.count == 0 {
            self.all_refuse_by_reuseport = true;
        }
        self.count += 1;
        self.fin_wait2 += usize::from(s.state == TcpState::FinWait2);
        self.max_expires_in_ms = self.max_expires_in_ms.max(s.expires_in_ms);
        self.all_refuse_by_reuseport &= refuses_by_reuseport(f, s.reuseport, true, None);
    }
}

/// A model socket as a contract holder. `owner` names the process holding it
/// (ignored for timewait sockets, which have none); `left_by` is who left a
/// timewait socket.
pub fn holder(
    sock: &ExistingSocket,
    overlap: Overlap,
    owner: Option<Process>,
    left_by: Option<Process>,
    env: &NetEnv,
) -> Holder {
    let tw = sock.is_timewait();
    let owner = if tw { None } else { owner };
    Holder {
        state: sock.state,
        local: Endpoint::new(sock.local, sock.port),
        remote: sock.remote.map(Endpoint::from),
        pid: owner.as_ref().map(|p| p.pid),
        comm: owner.map(|p| p.comm),
        uid: (!tw).then_some(sock.uid),
        reuseaddr: sock.reuseaddr,
        reuseport: sock.reuseport,
        expires_in_ms: if tw { sock.expires_in_ms } else { None },
        overlap,
        left_by: if tw { left_by } else { None },
        opened_by: None,
        outgoing: None,
        shared_with: Vec::new(),
        device: env.device_name(sock.bound_dev_if),
    }
}

/// Who holds a socket's file: the process to name, and the others that
/// hold it too (see [`Holder::shared_with`]).
pub type HoldersOf<'a> = dyn Fn(&ExistingSocket) -> (Option<Process>, Vec<Process>) + 'a;

/// The holders behind a verdict, most decisive first.
pub fn holders_from_verdict(
    verdict: &Verdict,
    existing: &[ExistingSocket],
    env: &NetEnv,
    owner_of: &HoldersOf,
) -> Vec<Holder> {
    let mut hs: Vec<Holder> = verdict
        .blockers
        .iter()
        .filter_map(|b| {
            existing.get(b.index).map(|s| {
                let (owner, shared) = owner_of(s);
                let mut h = holder(s, b.overlap, owner, None, env);
                if !s.is_timewait() {
                    h.shared_with = shared;
                }
                h
            })
        })
        .collect();
    sort_holders(&mut hs);
    hs
}

/// Holders and diagnosis for a predicted verdict (None when it succeeds).
/// `owners_hidden`: some processes' descriptors could not be read.
pub fn explain(
    new: &NewSocket,
    verdict: &Verdict,
    existing: &[ExistingSocket],
    env: &NetEnv,
    owner_of: &HoldersOf,
    owners_hidden: bool,
) -> (Vec<Holder>, Option<Diagnosis>) {
    let Some(errno) = verdict.errno else {
        return (Vec::new(), None);
    };
    let holders = holders_from_verdict(verdict, existing, env, owner_of);
    let range = env.local_port_range;
    let in_range =
        |s: &&ExistingSocket| s.proto == new.proto && s.port >= range.0 && s.port <= range.1;
    let ctx = Context {
        holders: holders.clone(),
        reuseaddr_would_help: verdict.reuseaddr_would_help,
        reuseport_would_help: verdict.reuseport_would_help,
        flags_uncertain: verdict.uncertain,
        local_port_range: Some(range),
        unprivileged_port_start: Some(env.unprivileged_port_start),
        tcp_tw_reuse: Some(env.tcp_tw_reuse),
        timewait_in_range: Some(
            existing
                .iter()
                .filter(in_range)
                .filter(|s| s.is_timewait())
                .map(|s| s.port)
                .collect::<std::collections::HashSet<_>>()
                .len(),
        ),
        timewait_toward: None,
        range_users: most_sockets(
            existing
                .iter()
                .filter(in_range)
                .filter(|s| !s.is_timewait())
                .filter_map(|s| owner_of(s).0)
                .collect::<Vec<_>>()
                .iter(),
        ),
        timewait_beyond: TimewaitSum::default(),
        used_in_range: Some(
            existing
                .iter()
                .filter(in_range)
                .map(|s| s.port)
                .collect::<std::collections::HashSet<_>>()
                .len(),
        ),
        sockets_seen: Some(existing.len()),
        owners_hidden,
        reason: verdict.reason.map(str::to_string),
        unseen: None,
        dad: env.dad_refusal(new.addr),
        reserved_in_range: env.reserved_in_range(),
        device: env.device_name(new.bound_dev_if),
    };
    let f = Failure::from_new(new, verdict.syscall, errno);
    (holders, Some(diagnose(&f, &ctx)))
}

/// How many processes an exhausted range's sentence names.
const RANGE_USERS: usize = 3;

/// The processes behind `owners` (one per socket), most sockets first, at
/// most [`RANGE_USERS`]: who took an exhausted range
/// ([`Context::range_users`]).
pub fn most_sockets<'a>(owners: impl Iterator<Item = &'a Process>) -> Vec<(Process, usize)> {
    let mut by_pid: std::collections::HashMap<u32, (&Process, usize)> =
        std::collections::HashMap::new();
    for p in owners {
        by_pid.entry(p.pid).or_insert((p, 0)).1 += 1;
    }
    let mut users: Vec<(Process, usize)> =
        by_pid.into_values().map(|(p, n)| (p.clone(), n)).collect();
    users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
    users.truncate(RANGE_USERS);
    users
}

fn state_rank(h: &Holder) -> u8 {
    match state_code(h) {
        DiagnosisCode::Listener => 0,
        DiagnosisCode::CloseWait => 1,
        DiagnosisCode::Established => 2,
        DiagnosisCode::Bound => 3,
        _ => 4,
    }
}

/// Most decisive first, then by local endpoint.
pub fn sort_holders(hs: &mut [Holder]) {
    hs.sort_by(holder_order);
}

/// Most decisive first, then by local address.
fn holder_order(a: &Holder, b: &Holder) -> std::cmp::Ordering {
    state_rank(a)
        .cmp(&state_rank(b))
        .then(a.local.cmp(&b.local))
}

fn is_timewait_holder(h: &Holder) -> bool {
    h.state == TcpState::TimeWait
        || (h.state == TcpState::FinWait2 && h.pid.is_none() && h.expires_in_ms.is_some())
}

/// The code one holder stands for.
fn state_code(h: &Holder) -> DiagnosisCode {
    use TcpState::*;
    if is_timewait_holder(h) {
        return DiagnosisCode::TimeWait;
    }
    match h.state {
        Listen => DiagnosisCode::Listener,
        CloseWait => DiagnosisCode::CloseWait,
        Bound | Close => DiagnosisCode::Bound,
        TimeWait => DiagnosisCode::TimeWait,
        Established | SynSent | SynRecv | FinWait1 | FinWait2 | LastAck | Closing | NewSynRecv => {
            DiagnosisCode::Established
        }
    }
}

/// The holder refuses only because of SO_REUSEPORT: one side asked for it and
/// the pair fails the reuseport rule.
fn reuseport_refusal(f: &Failure, h: &Holder) -> bool {
    refuses_by_reuseport(f, h.reuseport, is_timewait_holder(h), h.uid)
}

/// [`reuseport_refusal`] for a socket given by the fields it reads: with
/// SO_REUSEPORT on one side only, or on both but another uid (which a
/// timewait socket's sharing does not depend on).
fn refuses_by_reuseport(f: &Failure, reuseport: bool, timewait: bool, uid: Option<u32>) -> bool {
    (f.reuseport || reuseport) && !(f.reuseport && reuseport && (timewait || uid == Some(f.uid)))
}

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
}

/// The code alone.
pub fn code(f: &Failure, ctx: &Context) -> DiagnosisCode {
    let ip = f.requested.ip();
    match (f.syscall, f.errno) {
        // Its own port: the holder of that connection's two ends decides.
        (Syscall::Connect, libc::EADDRNOTAVAIL) if f.own_port_connect().is_some() => ctx
            .holders
            .iter()
            .map(state_code)
            .min_by_key(|c| *c as u8)
            .unwrap_or(DiagnosisCode::Unknown),
        (Syscall::Connect, libc::EADDRNOTAVAIL) => DiagnosisCode::EphemeralExhausted,
        (_, libc::EADDRINUSE) => {
            if ctx.holders.is_empty() {
                // bind(port 0), or listen() without bind(): the port search.
                if f.requested.port() == 0 {
                    return DiagnosisCode::EphemeralExhausted;
                }
                return DiagnosisCode::Unknown;
            }
            let best = ctx
                .holders
                .iter()
                .map(state_code)
                .min_by_key(|c| *c as u8)
                .unwrap_or(DiagnosisCode::Unknown);
            let live = best != DiagnosisCode::TimeWait;
            let beyond = &ctx.timewait_beyond;
            if live
                && ctx.holders.iter().all(|h| reuseport_refusal(f, h))
                && (beyond.count == 0 || beyond.all_refuse_by_reuseport)
            {
                DiagnosisCode::ReuseportMismatch
            } else {
                best
            }
        }
        (Syscall::Bind, libc::EACCES) => match ctx.unprivileged_port_start {
            Some(start) if (f.requested.port() as u32) >= start || f.requested.port() == 0 => {
                DiagnosisCode::Unknown
            }
            _ => DiagnosisCode::PrivilegedPort,
        },
        (Syscall::Bind, libc::EADDRNOTAVAIL) => DiagnosisCode::AddressNotLocal,
        (Syscall::Listen, libc::EINVAL) => DiagnosisCode::AlreadyBound,
        (Syscall::Bind, libc::EINVAL) => {
            let invalid = match ip {
                IpAddr::V6(a) => {
                    (is_mapped(ip) && f.v6only)
                        || (a.is_multicast() && f.proto == Proto::Tcp)
                        || ((a.segments()[0] & 0xffc0) == 0xfe80 && f.bound_dev_if == 0)
                }
                IpAddr::V4(_) => false,
            };
            if invalid {
                DiagnosisCode::InvalidAddress
            } else {
                DiagnosisCode::AlreadyBound
            }
        }
        _ => DiagnosisCode::Unknown,
    }
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// "nginx (pid 1234)", or what is known instead.
fn who(h: &Holder, ctx: &Context) -> String {
    match (&h.comm, h.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p})"),
        (None, Some(p)) => format!("pid {p}"),
        _ if ctx.owners_hidden => "a process twmon could not see (run it as root)".to_string(),
        // Unknown is not "nobody": the owner may have exited, or was never
        // seen in its own context.
        _ => "an unidentified process (see `ss -tanpe`)".to_string(),
    }
}

/// "log-helper (pid 11)", "nginx (pids 101, 102, 103)": processes grouped
/// by name, in pid order; "and possibly more" when the list they come from
/// was cut at [`SocketSeen::SHARED_MAX`](crate::event::SocketSeen::SHARED_MAX).
fn processes(ps: &[Process], cut: bool) -> String {
    let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
    for p in ps {
        match groups.iter_mut().find(|(c, _)| *c == p.comm) {
            Some((_, pids)) => pids.push(p.pid),
            None => groups.push((&p.comm, vec![p.pid])),
        }
    }
    let named: Vec<String> = groups
        .iter()
        .map(|(comm, pids)| {
            let list = pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let s = if pids.len() == 1 { "" } else { "s" };
            format!("{comm} (pid{s} {list})")
        })
        .collect();
    let more = if cut { " and possibly more" } else { "" };
    match named.as_slice() {
        [] => String::new(),
        [one] => format!("{one}{more}"),
        [init @ .., last] => format!("{} and {last}{more}", init.join(", ")),
    }
}

/// "; log-helper (pid 11) holds the same socket", for a summary whose
/// holder's file other processes hold too (else "").
fn also_held(h: &Holder) -> String {
    match h.shared_with.len() {
        0 => String::new(),
        n => format!(
            "; {} {} the same socket",
            processes(&h.shared_with, cut(h)),
            if n == 1 { "holds" } else { "hold" }
        ),
    }
}

/// Everyone who must let go of the holder: "nginx (pid 100) and
/// log-helper (pid 11)"; with [`it_or_them`] for the pronoun after it.
fn who_all(h: &Holder, ctx: &Context) -> String {
    match (&h.comm, h.pid) {
        _ if h.shared_with.is_empty() => who(h, ctx),
        (Some(comm), Some(pid)) => {
            let mut all = vec![Process {
                pid,
                comm: comm.clone(),
            }];
            all.extend(h.shared_with.iter().cloned());
            processes(&all, cut(h))
        }
        _ => format!("{} and {}", who(h, ctx), processes(&h.shared_with, cut(h))),
    }
}

/// Was `h`'s list of other holders cut at its maximum?
fn cut(h: &Holder) -> bool {
    h.shared_with.len() >= crate::event::SocketSeen::SHARED_MAX
}

fn it_or_them(h: &Holder) -> &'static str {
    if h.shared_with.is_empty() {
        "it"
    } else {
        "them"
    }
}

/// A listener that its program holds for others, known by its comm: there
/// "stop it (another instance of this server?)" would be wrong advice, since
/// stopping systemd or docker-proxy is not what frees the port. What it is
/// held for (appended to "is listening on ADDR"), and the fix.
fn held_for_others(h: &Holder, port: u16) -> Option<(&'static str, String)> {
    let no_sharing = if h.state == TcpState::Listen {
        "; SO_REUSEADDR cannot share a port with a listening socket"
    } else {
        ""
    };
    match h.comm.as_deref()? {
        "systemd" => Some((
            " for socket activation",
            format!("Stop the socket unit that listens on port {port} (`systemctl list-sockets` names it, then `systemctl stop NAME.socket`), or let systemd start the service instead of starting it by hand{no_sharing}."),
        )),
        "docker-proxy" => Some((
            " for a container that publishes this port",
            format!("Stop the container that publishes port {port} (`docker ps --filter publish={port}` names it) or publish it on another host port{no_sharing}."),
        )),
        _ => None,
    }
}

/// A holder of the other address family than the failing socket: one of
/// the two is a [::] socket without IPV6_V6ONLY, which takes the IPv4 port
/// as well (the rules found them in conflict, and only that puts an IPv6
/// and an IPv4 socket in one). The clause for the summary, and the way
/// out for the fix (lowercase, to follow "or").
fn dual_stack(f: &Failure, h: &Holder) -> Option<(String, String)> {
    let v6 = |ip: IpAddr| ip.is_ipv6() && !is_mapped(ip);
    let port = f.requested.port();
    match (v6(f.requested.ip()), v6(h.local.ip())) {
        (false, true) => Some((
            format!(", which takes IPv4 port {port} too (IPV6_V6ONLY is off)"),
            format!(
                "set IPV6_V6ONLY on the socket on {} so that it leaves IPv4 to others",
                h.local
            ),
        )),
        (true, false) if !f.v6only => Some((
            format!(", and the new [::] socket, without IPV6_V6ONLY, wants IPv4 port {port} too"),
            "set IPV6_V6ONLY on the new socket if it is to serve IPv6 only".to_string(),
        )),
        _ => None,
    }
}

/// Devices (SO_BINDTODEVICE) where they play a part: sockets bound to
/// different devices never conflict, one bound to none conflicts with
/// every device's (inet_bind_conflict). The clause for the summary, and a
/// way out for the fix when binding the new socket to a device is one.
fn devices(h: &Holder, ctx: &Context) -> Option<(String, Option<String>)> {
    match (&h.device, &ctx.device) {
        (Some(d), None) => Some((
            format!(" on device {d} (SO_BINDTODEVICE), which a socket bound to no device conflicts with"),
            Some(format!("bind the new socket to another device than {d} with SO_BINDTODEVICE")),
        )),
        (Some(d), Some(_)) => Some((format!(" on device {d}, the new socket's device too"), None)),
        (None, Some(mine)) => Some((
            format!(" on every device (bound to none), {mine} included"),
            None,
        )),
        (None, None) => None,
    }
}

/// The clauses of [`dual_stack`] and [`devices`] for a summary.
fn placement(dual: &Option<(String, String)>, dev: &Option<(String, Option<String>)>) -> String {
    format!(
        "{}{}",
        dev.as_ref().map_or("", |(what, _)| what),
        dual.as_ref().map_or("", |(what, _)| what)
    )
}

/// `fix` with the ways out of [`dual_stack`] and [`devices`] first, when
/// there are any.
fn placement_fix(
    dual: &Option<(String, String)>,
    dev: &Option<(String, Option<String>)>,
    fix: String,
) -> String {
    let ways: Vec<&str> = [
        dev.as_ref().and_then(|(_, w)| w.as_deref()),
        dual.as_ref().map(|(_, w)| w.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect();
    match ways.as_slice() {
        [] => fix,
        _ => format!(
            "{}, or {}",
            upper_first(&ways.join(", or ")),
            lowercase_first(&fix)
        ),
    }
}

/// ", with a socket that nginx (pid 1234) opened and no longer holds (...)"
/// for a holder that did not open its socket, else "".
fn handed_on(h: &Holder) -> String {
    match &h.opened_by {
        Some(o) => format!(
            ", with a socket that {} (pid {}) opened and no longer holds (inherited across fork or exec, or passed on)",
            o.comm, o.pid
        ),
        None => String::new(),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn comm_or(h: &Holder, default: &str) -> String {
    h.comm.clone().unwrap_or_else(|| default.to_string())
}

/// connect() to `req` from a port the socket had bound (`own`) failed with
/// EADDRNOTAVAIL: __inet_hash_connect() tried that one pair of ends only and
/// found it in use (`holder`, when the look found it). The range plays no
/// part, and SO_REUSEADDR none: two sockets never share both ends. A
/// timewait socket is taken over (tcp_twsk_unique(), whatever tcp_tw_reuse
/// says) when its connection used TCP timestamps, so one that refused did not.
fn connection_taken(
    req: &Endpoint,
    own: Endpoint,
    holder: Option<&Holder>,
    ctx: &Context,
) -> (String, String) {
    let bound = if own.is_unspecified() {
        format!(
            "connect() to {req} had to use port {}, which its socket was bound to",
            own.port()
        )
    } else {
        format!("connect() to {req} had to use {own}, the local end its socket was bound to")
    };
    let choose = "let connect() choose the local port (bind no port, or bind port 0 with IP_BIND_ADDRESS_NO_PORT to keep only the address)";
    let Some(h) = holder else {
        let seen = ctx
            .sockets_seen
            .map(|n| format!(" among the {n} TCP/UDP sockets of this network namespace"))
            .unwrap_or_default();
        return (
            format!("{bound}, and that connection was taken, but no socket with those two ends was found{seen} (it may have closed before twmon looked)."),
            format!("If it keeps failing, {choose}."),
        );
    };
    let pair = format!("{} -> {}", h.local, req);
    if is_timewait_holder(h) {
        let wait = secs(h.expires_in_ms.unwrap_or(60_000));
        let left = h
            .left_by
            .as_ref()
            .map(|p| format!(", left by {} (pid {})", p.comm, p.pid))
            .unwrap_or_default();
        return (
            format!("{bound}, and that connection ({pair}) is still in {} for {wait} s{left}; connect() takes such a socket over only when its connection used TCP timestamps, and this one did not.", h.state),
            format!("{}, wait {wait} s for the {} to expire, or turn TCP timestamps on at both ends (net.ipv4.tcp_timestamps=1).", upper_first(choose), h.state),
        );
    }
    (
        format!("{bound}, and {} already holds that connection ({pair}, {}): two sockets cannot have the same two ends.", who(h, ctx), h.state),
        format!("{}, or close that connection first; SO_REUSEADDR cannot share one.", upper_first(choose)),
    )
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The diagnosis.
pub fn diagnose(f: &Failure, ctx: &Context) -> Diagnosis {
    // Sorted once; callers that sorted them already (the correlator, for
    // tens of thousands on a busy port) are not copied.
    let sorted;
    let holders: &[Holder] = if ctx.holders.is_sorted_by(|a, b| holder_order(a, b).is_le()) {
        &ctx.holders
    } else {
        let mut hs = ctx.holders.clone();
        sort_holders(&mut hs);
        sorted = hs;
        &sorted
    };
    let c = code(f, ctx);
    let req = Endpoint::from(f.requested);
    let port = f.requested.port();
    let error = errno_name(f.errno);
    let sys = f.syscall.as_str();
    let first = holders.first();
    if let Some(own) = f.own_port_connect() {
        let (summary, fix) = connection_taken(&req, Endpoint::from(own), first, ctx);
        return Diagnosis {
            code: c,
            summary,
            fix,
            reuseaddr_would_help: false,
            reuseport_would_help: false,
        };
    }
    let (summary, fix) = match c {
        DiagnosisCode::Listener => {
            let h = first.expect("listener has a holder");
            let n = holders
                .iter()
                .filter(|h| h.state == TcpState::Listen)
                .count();
            let more = if n > 1 {
                format!(" (and {} more)", plural(n - 1, "listener", "listeners"))
            } else {
                String::new()
            };
            let held_for = held_for_others(h, port);
            let (dual, dev) = (dual_stack(f, h), devices(h, ctx));
            let summary = format!(
                "{req} is taken: {} is listening on {}{}{}{more}{}{}.",
                who(h, ctx),
                h.local,
                placement(&dual, &dev),
                held_for.as_ref().map_or("", |(what, _)| what),
                handed_on(h),
                also_held(h)
            );
            let fix = if ctx.reuseport_would_help {
                format!("Set SO_REUSEPORT on the new socket to share the port with {} (it has SO_REUSEPORT and the same uid), or stop it.", who(h, ctx))
            } else if let Some((_, fix)) = held_for {
                fix
            } else if h.opened_by.is_some() {
                format!("Stop {} or have {} close the socket {} handed; open listening sockets with SOCK_CLOEXEC and close them in forked children, so that what a server starts does not keep its port.", who_all(h, ctx), it_or_them(h), if h.shared_with.is_empty() { "it was" } else { "they were" })
            } else {
                format!("Stop {} (another instance of this server?) or use another port; SO_REUSEADDR cannot share a port with a listening socket.", who_all(h, ctx))
            };
            (summary, placement_fix(&dual, &dev, fix))
        }
        DiagnosisCode::CloseWait => {
            let cw: Vec<&Holder> = holders
                .iter()
                .filter(|h| h.state == TcpState::CloseWait)
                .collect();
            let mut by_pid: BTreeMap<Option<u32>, usize> = BTreeMap::new();
            for h in &cw {
                *by_pid.entry(h.pid).or_default() += 1;
            }
            let (top_pid, n) = by_pid
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(p, n)| (*p, *n))
                .unwrap_or((None, cw.len()));
            let h = cw
                .iter()
                .find(|h| h.pid == top_pid)
                .copied()
                .unwrap_or(cw[0]);
            let name = comm_or(h, "its owner");
            // Others holding any of that process's CLOSE_WAIT sockets (a
            // forked child's copies) keep them open after it stops.
            let mut sharers: Vec<Process> = cw
                .iter()
                .filter(|c| c.pid == top_pid)
                .flat_map(|c| c.shared_with.iter().cloned())
                .collect();
            sharers.sort_by_key(|p| p.pid);
            sharers.dedup_by_key(|p| p.pid);
            let mine = || cw.iter().filter(|c| c.pid == top_pid);
            let every = mine().all(|c| {
                sharers
                    .iter()
                    .all(|p| c.shared_with.iter().any(|q| q.pid == p.pid))
            });
            let all = Holder {
                shared_with: sharers,
                ..(*h).clone()
            };
            let summary = format!(
                "{} holds {} on port {port}: the peers closed those connections but {name} never called close() on them{}.",
                who(h, ctx),
                plural(n, "CLOSE_WAIT socket", "CLOSE_WAIT sockets"),
                match all.shared_with.len() {
                    0 => String::new(),
                    k => format!(
                        "; {} {} {} too",
                        processes(&all.shared_with, cut(h)),
                        if k == 1 { "holds" } else { "hold" },
                        if every { "them" } else { "some of them" }
                    ),
                }
            );
            let fix = if ctx.reuseaddr_would_help {
                format!("Set SO_REUSEADDR on the new socket (the CLOSE_WAIT sockets have it too), and fix {name} to close connections its peers ended.")
            } else {
                let stop = match h.pid {
                    Some(p) if all.shared_with.is_empty() => format!(" or stop it (pid {p})"),
                    Some(_) => format!(" or stop {}", who_all(&all, ctx)),
                    None => String::new(),
                };
                format!("Make {name} close the connections its peers ended{stop}; SO_REUSEADDR on the new socket alone will not help because those sockets did not set it.")
            };
            (summary, fix)
        }
        DiagnosisCode::Established => {
            let est: Vec<&Holder> = holders
                .iter()
                .filter(|h| state_code(h) == DiagnosisCode::Established)
                .collect();
            let h = est[0];
            let n = est.len();
            let (them, has) = if n == 1 {
                ("that connection", "has")
            } else {
                ("those connections", "have")
            };
            // The port inside the ephemeral range: connect() may have been
            // given it (a service port in the range, the classic collision).
            let range = ctx
                .local_port_range
                .filter(|(lo, hi)| (*lo..=*hi).contains(&port));
            let reserve = |range: (u16, u16)| {
                format!(
                    "keep connections off it by adding {port} to net.ipv4.ip_local_reserved_ports (or move ip_local_port_range, now {}-{})",
                    range.0, range.1
                )
            };
            let (summary, mut fix) = if est.iter().all(|h| h.outgoing == Some(true)) {
                let conns = if n == 1 {
                    let to = h.remote.map(|r| format!(" to {r}")).unwrap_or_default();
                    format!(
                        "{} is the local end of an outgoing connection of {}{to}",
                        h.local,
                        who(h, ctx)
                    )
                } else {
                    format!(
                        "{n} outgoing connections of {} use {} as their local end",
                        who(h, ctx),
                        h.local
                    )
                };
                let why = match range {
                    Some((lo, hi)) => format!(": connect() was given port {port} because it lies in net.ipv4.ip_local_port_range ({lo}-{hi})"),
                    None => ": the program bound that port before connect()".to_string(),
                };
                let fix = match range {
                    Some(r) => format!(
                        "Let {} close {them} or stop {}, and {}",
                        who_all(h, ctx),
                        it_or_them(h),
                        reserve(r)
                    ),
                    None => format!(
                        "Let {} close {them} or stop {}",
                        who_all(h, ctx),
                        it_or_them(h)
                    ),
                };
                (format!("{conns}{why}."), fix)
            } else {
                let alive = format!(
                    "{} on {} {} still alive, held by {}",
                    plural(n, "connection", "connections"),
                    h.local,
                    if n == 1 { "is" } else { "are" },
                    who_all(h, ctx)
                );
                let summary = if est.iter().all(|h| h.outgoing == Some(false)) {
                    format!("{alive}: connections that outlived their listener.")
                } else {
                    // How they began is not known (seen by a look only):
                    // accepted ones that outlived their listener, or
                    // outgoing ones given the port.
                    format!("{alive}.")
                };
                let mut fix = format!(
                    "Let {} finish {them} or stop {}",
                    who_all(h, ctx),
                    it_or_them(h)
                );
                if let Some(r) = range.filter(|_| est.iter().any(|h| h.outgoing != Some(false))) {
                    fix.push_str(&format!(
                        "; if {} outgoing, {}",
                        if n == 1 { "it is" } else { "they are" },
                        reserve(r)
                    ));
                }
                (summary, fix)
            };
            if ctx.reuseaddr_would_help {
                fix = format!(
                    "Set SO_REUSEADDR on the new socket ({them} {has} it too), or {}",
                    lowercase_first(&fix)
                );
            } else {
                fix.push_str(&format!("; SO_REUSEADDR on the new socket alone will not help because {them} did not set it"));
            }
            fix.push('.');
            (summary, fix)
        }
        DiagnosisCode::Bound => {
            let bound: Vec<&Holder> = holders
                .iter()
                .filter(|h| state_code(h) == DiagnosisCode::Bound)
                .collect();
            let h = bound.first().copied().unwrap_or(&holders[0]);
            let n = bound.len().max(1);
            // Several sockets of one process on one address (UDP sockets
            // that share a port with SO_REUSEADDR) are told as one group.
            let one_group = bound.iter().all(|o| o.pid == h.pid && o.local == h.local);
            let kind = if f.proto == Proto::Udp { "UDP socket" } else { "socket" };
            let what = match (n, one_group) {
                (1, _) => format!("a {kind} bound to"),
                (n, true) => format!("{n} {kind}s bound to"),
                (_, false) => format!("a {kind} bound to"),
            };
            let more = if n > 1 && !one_group {
                format!(" (and {} more)", plural(n - 1, "bound socket", "bound sockets"))
            } else {
                String::new()
            };
            let (them, have) = if n == 1 {
                ("that socket", "the bound socket has")
            } else {
                ("those sockets", "the bound sockets have")
            };
            let tail = if f.proto == Proto::Udp {
                ""
            } else {
                " (neither listening nor connected)"
            };
            let held_for = held_for_others(h, port);
            let (dual, dev) = (dual_stack(f, h), devices(h, ctx));
            let summary = format!(
                "{} has {what} {}{tail}{more}{}{}{}{}.",
                who(h, ctx),
                h.local,
                placement(&dual, &dev),
                held_for.as_ref().map_or("", |(what, _)| what),
                handed_on(h),
                also_held(h)
            );
            let fix = if ctx.reuseaddr_would_help {
                format!("Set SO_REUSEADDR on the new socket ({have} it too), or have {} close {them}.", who(h, ctx))
            } else if ctx.reuseport_would_help {
                format!("Set SO_REUSEPORT on the new socket ({have} it and the same uid), or have {} close {them}.", who(h, ctx))
            } else if let Some((_, fix)) = held_for {
                fix
            } else {
                format!("Have {} close {them} or stop {}; SO_REUSEADDR on the new socket alone will not help because {} not set it.", who_all(h, ctx), it_or_them(h), if n == 1 { "the bound socket did" } else { "the bound sockets did" })
            };
            (summary, placement_fix(&dual, &dev, fix))
        }
        DiagnosisCode::TimeWait => {
            let tw: Vec<&Holder> = holders.iter().filter(|h| is_timewait_holder(h)).collect();
            let h = tw[0];
            let beyond = &ctx.timewait_beyond;
            let n = tw.len() + beyond.count;
            let wait = secs(
                tw.iter()
                    .filter_map(|h| h.expires_in_ms)
                    .chain(beyond.max_expires_in_ms)
                    .max()
                    .unwrap_or(60_000),
            );
            let left = tw
                .iter()
                .find_map(|h| h.left_by.as_ref())
                .map(|p| format!(" left by {} (pid {})", p.comm, p.pid))
                .unwrap_or_else(|| " left by earlier connections".to_string());
            let holds = if n == 1 { "holds" } else { "hold" };
            // A FIN_WAIT2 timewait socket (closed while its peer had not
            // closed yet) is not in TIME_WAIT: `ss` shows it as FIN-WAIT-2,
            // and its expiry is not final, since the peer's FIN turns it into
            // TIME_WAIT with a fresh TCP_TIMEWAIT_LEN (kernel-notes.md).
            let fw2 = tw.iter().filter(|h| h.state == TcpState::FinWait2).count() + beyond.fin_wait2;
            let (summary, what) = if fw2 == 0 {
                let summary = format!(
                    "{} on {}{left} still {holds} the port; the last one expires in {wait} s.",
                    plural(n, "TIME_WAIT socket", "TIME_WAIT sockets"),
                    h.local,
                );
                (summary, "the TIME_WAIT")
            } else if fw2 == n {
                let peer = match (n, &h.remote) {
                    (1, Some(r)) => format!("its peer {r}"),
                    (1, None) => "its peer".to_string(),
                    _ => "their peers".to_string(),
                };
                let summary = format!(
                    "{} on {}{left} still {holds} the port, waiting for {peer} to close; {} in {wait} s, or 60 s after {} closes if that comes first.",
                    plural(n, "FIN_WAIT2 socket", "FIN_WAIT2 sockets"),
                    h.local,
                    if n == 1 { "it expires" } else { "the last one expires" },
                    if n == 1 { "the peer" } else { "its peer" },
                );
                (summary, "the FIN_WAIT2")
            } else {
                let summary = format!(
                    "{} on {} ({} TIME_WAIT, {fw2} FIN_WAIT2 waiting for {} to close){left} still {holds} the port; the last one expires in {wait} s, unless a FIN_WAIT2 socket's peer closes first, which starts 60 s of TIME_WAIT.",
                    plural(n, "timewait socket", "timewait sockets"),
                    h.local,
                    n - fw2,
                    if fw2 == 1 { "its peer" } else { "their peers" },
                );
                (summary, "the timewait sockets")
            };
            let fix = if ctx.reuseaddr_would_help {
                format!("Restart with SO_REUSEADDR (the old socket had it too), or wait {wait} s.")
            } else if ctx.reuseport_would_help {
                format!("Restart with SO_REUSEPORT (the old socket had it too), or wait {wait} s.")
            } else if ctx.flags_uncertain {
                format!("Wait {wait} s for {what} to expire, or set SO_REUSEADDR on the new socket, which helps only if the old socket set it too (twmon could not see whether it did).")
            } else if f.reuseaddr {
                format!("Wait {wait} s for {what} to expire; SO_REUSEADDR on the new socket does not help because the old socket did not set it.")
            } else {
                format!("Wait {wait} s for {what} to expire; SO_REUSEADDR on the new socket alone will not help because the old socket did not set it.")
            };
            (summary, fix)
        }
        DiagnosisCode::ReuseportMismatch => {
            let h = first.expect("mismatch has a holder");
            let sock = format!("the {} socket of {} on {}", h.state, who(h, ctx), h.local);
            let reason = if !f.reuseport {
                format!("{sock} has SO_REUSEPORT but the new socket does not")
            } else if !h.reuseport {
                format!("the new socket has SO_REUSEPORT but {sock} does not")
            } else {
                format!(
                    "{sock} belongs to uid {}, the new socket to uid {}",
                    h.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
                    f.uid
                )
            };
            (
                format!("Port sharing with SO_REUSEPORT is refused: {reason}."),
                format!("Set SO_REUSEPORT on every socket that shares port {port} and run them all as the same uid, or stop {}.", who_all(h, ctx)),
            )
        }
        DiagnosisCode::EphemeralExhausted => {
            let what = match f.syscall {
                Syscall::Connect => format!("connect() to {req} found no free local port"),
                Syscall::Listen => "listen() without bind() found no free port".to_string(),
                Syscall::Bind => "bind() to port 0 found no free port".to_string(),
            };
            let reserved = ctx.reserved_in_range;
            let total = ctx
                .local_port_range
                .map_or(0, |(lo, hi)| (hi as usize).saturating_sub(lo as usize) + 1);
            // The TIME_WAIT evidence: for connect(), only the sockets
            // toward its destination keep it from a port (a port serves
            // any number of destinations); for a port of its own, any.
            let timewait = match f.syscall {
                Syscall::Connect => ctx.timewait_toward,
                _ => ctx.timewait_in_range,
            };
            let tw = timewait
                .map(|n| match (f.syscall, n) {
                    (Syscall::Connect, 0) => format!(", none of them in TIME_WAIT toward {req}"),
                    (Syscall::Connect, n) => format!(", {n} of them in TIME_WAIT toward {req}"),
                    (_, 0) => ", none of them held by a TIME_WAIT socket".to_string(),
                    (_, n) => format!(", {n} of them held by TIME_WAIT sockets"),
                })
                .unwrap_or_default();
            let range = match ctx.local_port_range {
                Some((lo, hi)) if reserved > 0 => {
                    format!(
                        " in ip_local_port_range {lo}-{hi}: of its {total} ports, {reserved} {} reserved by net.ipv4.ip_local_reserved_ports and the other {} in use{tw}",
                        if reserved == 1 { "is" } else { "are" },
                        total.saturating_sub(reserved)
                    )
                }
                Some((lo, hi)) => {
                    format!(" in ip_local_port_range {lo}-{hi} ({total} ports{tw})")
                }
                None => " in ip_local_port_range".to_string(),
            };
            // Who took the ports: for connect(), the processes that opened
            // the connections toward its destination (TIME_WAIT ones too).
            let users = match ctx.range_users.as_slice() {
                [] => String::new(),
                us => {
                    let named: Vec<String> = us
                        .iter()
                        .enumerate()
                        .map(|(i, (p, n))| match (i, f.syscall) {
                            (0, Syscall::Connect) => format!("{} (pid {}) opened {} toward it", p.comm, p.pid, plural(*n, "connection", "connections")),
                            (0, _) => format!("{} (pid {}) holds {} there", p.comm, p.pid, plural(*n, "socket", "sockets")),
                            _ => format!("{} (pid {}) {n}", p.comm, p.pid),
                        })
                        .collect();
                    format!("; {}", named.join(", "))
                }
            };
            // TIME_WAIT advice only where TIME_WAITs are a good share of
            // what took the range; otherwise the live sockets are the cause.
            let in_use = total.saturating_sub(reserved);
            let timewait_bound = timewait.is_none_or(|n| n * 2 >= in_use);
            // The ways out, the likeliest cause's first: reservations where
            // they take a good share of the range, the process that keeps
            // the ports where live sockets took them, TIME_WAIT advice only
            // where TIME_WAITs are a good share of what took the range.
            let mut ways = Vec::new();
            if reserved > 0 && reserved * 4 >= total {
                ways.push(format!("take ports out of net.ipv4.ip_local_reserved_ports ({reserved} of the range are reserved)"));
            }
            match ctx.range_users.first() {
                Some((p, n)) if !timewait_bound => ways.push(format!(
                    "find out why {} (pid {}) keeps {} there",
                    p.comm,
                    p.pid,
                    if f.syscall == Syscall::Connect {
                        plural(*n, "connection", "connections")
                    } else {
                        plural(*n, "socket", "sockets")
                    }
                )),
                _ => {}
            }
            ways.push("widen net.ipv4.ip_local_port_range".to_string());
            ways.push("reuse connections (keep-alive, pooling) instead of opening one per request".to_string());
            if timewait_bound {
                ways.push("let the server close first so the TIME_WAIT stays on its side".to_string());
            }
            let mut fix = match ways.split_last() {
                Some((last, [])) => upper_first(last),
                Some((last, init)) => upper_first(&format!("{}, or {last}", init.join(", "))),
                None => String::new(),
            };
            // connect() may take a TIME_WAIT port over when tcp_tw_reuse
            // allows it (1, or 2 toward loopback), once the port has been
            // idle for a second and both ends use TCP timestamps.
            if let (Syscall::Connect, Some(1..), Some(reuse)) =
                (f.syscall, timewait, ctx.tcp_tw_reuse)
            {
                let ip = Endpoint::from(f.requested).ip();
                if reuse == 1 || (reuse == 2 && ip.is_loopback()) {
                    fix.push_str("; tcp_tw_reuse is on here, but it lets connect() take over a TIME_WAIT port only once that has been idle for a second and both ends use TCP timestamps");
                } else {
                    let now = if reuse == 2 {
                        " (now 2: loopback only)"
                    } else {
                        ""
                    };
                    fix.push_str(&format!(", or set net.ipv4.tcp_tw_reuse=1{now} so that connect() may take over TIME_WAIT ports idle for a second (both ends need TCP timestamps)"));
                }
            }
            fix.push('.');
            (format!("{what}{range}{users}."), fix)
        }
        DiagnosisCode::PrivilegedPort => {
            let start = ctx.unprivileged_port_start.unwrap_or(1024);
            (
                format!("Port {port} is below net.ipv4.ip_unprivileged_port_start ({start}) and uid {} lacks CAP_NET_BIND_SERVICE.", f.uid),
                format!("Use a port of {start} or above, give the program CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep, or AmbientCapabilities= in its systemd unit), or lower net.ipv4.ip_unprivileged_port_start."),
            )
        }
        DiagnosisCode::AddressNotLocal => {
            let ip = Endpoint::from(f.requested).ip();
            let nonlocal = if ip.is_ipv4() {
                "net.ipv4.ip_nonlocal_bind=1"
            } else {
                "net.ipv6.ip_nonlocal_bind=1"
            };
            match &ctx.dad {
                Some((dev, Dad::Failed)) => (
                    format!("{ip} is on {dev} but failed duplicate address detection: another node on that link has it, and bind() refuses the address."),
                    format!("Find the node on {dev}'s link that uses {ip}, or give this host another address; once the clash is gone, remove {ip} from {dev} and add it again so that detection runs again."),
                ),
                Some((dev, _)) => (
                    format!("{ip} is on {dev} but still tentative: duplicate address detection has not finished (it cannot while the link is down), and bind() refuses the address until it has."),
                    format!("Retry once detection has passed (about a second after the link is up), set IP_FREEBIND (or {nonlocal}) to bind before it has, or, where no other node can have the address, add it with `nodad` (or set net.ipv6.conf.{dev}.accept_dad=0)."),
                ),
                None => (
                    format!("{ip} is not an address of this host (in this network namespace), so bind() cannot use it."),
                    format!("Bind to an address the host has (or to 0.0.0.0 / [::]), add {ip} to an interface first, or set IP_FREEBIND (or {nonlocal}) to bind before the address exists."),
                ),
            }
        }
        // listen() refuses EINVAL for a socket that is not in CLOSE or
        // LISTEN (inet_listen()): one that connect() bound and connected.
        DiagnosisCode::AlreadyBound if f.syscall == Syscall::Listen => (
            format!("listen() needs a socket that has no connection, and this one is already connected (or connecting, or closing a connection) from {req}."),
            "Listen on a socket of its own (socket(), bind() to the port, listen()); a socket that called connect() cannot become a listener.".to_string(),
        ),
        DiagnosisCode::AlreadyBound => (
            "The socket is already bound: bind() was called a second time on it, or after connect() or listen() had bound it."
                .to_string(),
            "Create a new socket for each bind(), or drop the second bind() call.".to_string(),
        ),
        DiagnosisCode::InvalidAddress => {
            let ip = f.requested.ip();
            match ip {
                IpAddr::V6(a) if is_mapped(ip) && f.v6only => (
                    format!("[{a}] is an IPv4-mapped IPv6 address but the socket has IPV6_V6ONLY set."),
                    "Clear IPV6_V6ONLY before bind(), or use an AF_INET socket for IPv4 addresses.".to_string(),
                ),
                IpAddr::V6(a) if a.is_multicast() && f.proto == Proto::Tcp => (
                    format!("[{a}] is a multicast address, which a TCP socket cannot bind."),
                    "Bind TCP to a unicast address (or to [::]), and use UDP for multicast.".to_string(),
                ),
                _ => (
                    format!("{ip} is a link-local address and the socket names no interface."),
                    "Give a scope id ([fe80::1%eth0]:PORT) or bind the socket to a device with SO_BINDTODEVICE first.".to_string(),
                ),
            }
        }
        DiagnosisCode::Unknown => {
            let seen = match (&ctx.unseen, ctx.sockets_seen) {
                (Some(why), _) => {
                    format!("the sockets of this network namespace could not be read ({why})")
                }
                (None, Some(n)) => format!(
                    "no overlapping socket among the {n} TCP/UDP sockets of this network namespace"
                ),
                (None, None) => "no overlapping socket was known".to_string(),
            };
            let hidden = if ctx.owners_hidden {
                ", and some processes could not be inspected"
            } else {
                ""
            };
            let why = ctx
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            (
                format!("{error} on {sys}() of {req}{why} but nothing found explains it: {seen}{hidden}."),
                "Run twmon as root to see every socket and owner, and check cgroup BPF bind hooks and security modules (SELinux, AppArmor), which can also refuse a bind.".to_string(),
            )
        }
    };
    Diagnosis {
        code: c,
        summary,
        fix,
        reuseaddr_would_help: ctx.reuseaddr_would_help,
        reuseport_would_help: ctx.reuseport_would_help,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DiagnosisCode as C;

    fn h(state: TcpState, local: &str) -> Holder {
        Holder {
            device: None,
            state,
            local: local.parse().unwrap(),
            remote: None,
            pid: Some(42),
            comm: Some("server".into()),
            uid: Some(0),
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

    fn tw(local: &str, ms: u64, reuseaddr: bool) -> Holder {
        Holder {
            pid: None,
            comm: None,
            uid: None,
            expires_in_ms: Some(ms),
            reuseaddr,
            ..h(TcpState::TimeWait, local)
        }
    }

    fn fail(syscall: Syscall, errno: i32, addr: &str) -> Failure {
        Failure {
            syscall,
            errno,
            proto: Proto::Tcp,
            requested: addr.parse().unwrap(),
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 0,
            bound_dev_if: 0,
            bound: None,
        }
    }

    /// connect() to 127.0.0.1:9000 from `own`, a port its socket bound, in
    /// a namespace whose range is full of TIME_WAIT.
    fn connect_from_own_port(own: &str) -> (Failure, Context) {
        (
            Failure {
                bound: Some(own.parse().unwrap()),
                ..fail(Syscall::Connect, libc::EADDRNOTAVAIL, "127.0.0.1:9000")
            },
            Context {
                local_port_range: Some((40000, 40001)),
                timewait_in_range: Some(2),
                sockets_seen: Some(7),
                ..Context::default()
            },
        )
    }

    /// connect() found no free port in 40000-40001, `timewait` TIME_WAIT
    /// sockets in it, under tcp_tw_reuse `reuse`.
    fn connect_exhausted(to: &str, timewait: usize, reuse: u8) -> (Failure, Context) {
        (
            fail(Syscall::Connect, libc::EADDRNOTAVAIL, to),
            Context {
                local_port_range: Some((40000, 40001)),
                timewait_toward: Some(timewait),
                tcp_tw_reuse: Some(reuse),
                ..Context::default()
            },
        )
    }

    fn proc_(comm: &str, pid: u32) -> Process {
        Process {
            pid,
            comm: comm.into(),
        }
    }

    #[test]
    fn processes_sharing_a_socket_are_named_by_program() {
        let many: Vec<Process> = (0..crate::event::SocketSeen::SHARED_MAX as u32)
            .map(|i| proc_("nginx", 100 + i))
            .collect();
        assert!(
            processes(&many, true).ends_with(", 115) and possibly more"),
            "{}",
            processes(&many, true)
        );
        assert_eq!(processes(&[], false), "");
        assert_eq!(
            processes(&[proc_("a", 1), proc_("b", 2), proc_("c", 3)], false),
            "a (pid 1), b (pid 2) and c (pid 3)"
        );
        // The owner and 15 others: 16 named, none left out.
        let fifteen = Holder {
            shared_with: many[1..].to_vec(),
            pid: Some(100),
            comm: Some("nginx".into()),
            ..h(TcpState::Listen, "0.0.0.0:80")
        };
        let all = who_all(&fifteen, &Context::default());
        assert!(all.ends_with(", 115)"), "{all}");
        let sixteen = Holder {
            shared_with: many.iter().map(|p| proc_("nginx", p.pid + 1)).collect(),
            pid: Some(100),
            comm: Some("nginx".into()),
            ..h(TcpState::Listen, "0.0.0.0:80")
        };
        let all = who_all(&sixteen, &Context::default());
        assert!(all.ends_with(", 116) and possibly more"), "{all}");
    }

    fn inuse(holders: Vec<Holder>) -> (Failure, Context) {
        (
            fail(Syscall::Bind, libc::EADDRINUSE, "0.0.0.0:8080"),
            Context {
                holders,
                ..Context::default()
            },
        )
    }

    fn one_sentence(s: &str) {
        assert!(s.ends_with('.'), "{s}");
        let body = &s[..s.len() - 1];
        assert!(!body.contains(". "), "more than one sentence: {s}");
        assert!(!s.contains('\n'));
    }

    type Row = (
        Failure,
        Context,
        C,
        &'static [&'static str],
        &'static [&'static str],
    );

    /// One row per code: (failure, context, code, words the summary must
    /// contain, words the fix must contain).
    #[test]
    fn every_code() {
        let cw = |pid| Holder {
            pid: Some(pid),
            comm: Some(format!("app{pid}")),
            ..h(TcpState::CloseWait, "127.0.0.1:8080")
        };
        let rows: Vec<Row> = vec![
            {
                let (f, c) = inuse(vec![
                    tw("127.0.0.1:8080", 1000, false),
                    h(TcpState::Listen, "0.0.0.0:8080"),
                ]);
                (
                    f,
                    c,
                    C::Listener,
                    &["server (pid 42)", "listening on 0.0.0.0:8080"],
                    &["Stop server (pid 42)", "SO_REUSEADDR cannot"],
                )
            },
            {
                let (f, c) = inuse(vec![
                    cw(7),
                    cw(7),
                    cw(9),
                    h(TcpState::Established, "127.0.0.1:8080"),
                ]);
                (
                    f,
                    c,
                    C::CloseWait,
                    &[
                        "app7 (pid 7) holds 2 CLOSE_WAIT sockets on port 8080",
                        "never called close()",
                    ],
                    &["Make app7 close", "pid 7", "alone will not help"],
                )
            },
            {
                let (f, c) = inuse(vec![
                    Holder {
                        outgoing: Some(false),
                        ..h(TcpState::Established, "127.0.0.1:8080")
                    },
                    h(TcpState::Bound, "127.0.0.2:8080"),
                ]);
                (
                    f,
                    c,
                    C::Established,
                    &[
                        "1 connection on 127.0.0.1:8080 is still alive",
                        "server (pid 42)",
                        "outlived their listener",
                    ],
                    &[
                        "Let server (pid 42) finish that connection",
                        "that connection did not set it",
                    ],
                )
            },
            {
                let (f, mut c) = inuse(vec![Holder {
                    outgoing: Some(false),
                    reuseaddr: true,
                    ..h(TcpState::Established, "127.0.0.1:8080")
                }]);
                c.reuseaddr_would_help = true;
                (
                    f,
                    c,
                    C::Established,
                    &["outlived their listener"],
                    &["Set SO_REUSEADDR on the new socket (that connection has it too), or let server (pid 42) finish that connection or stop it."],
                )
            },
            {
                // Not known how it began, on a port outside the range.
                let (f, c) = inuse(vec![
                    h(TcpState::Established, "127.0.0.1:8080"),
                    h(TcpState::Established, "127.0.0.1:8080"),
                ]);
                (
                    f,
                    c,
                    C::Established,
                    &["2 connections on 127.0.0.1:8080 are still alive, held by server (pid 42)."],
                    &["finish those connections or stop it; SO_REUSEADDR"],
                )
            },
            {
                // Not known how it began, on a port inside the range.
                let (f, mut c) = inuse(vec![h(TcpState::Established, "127.0.0.1:8080")]);
                c.local_port_range = Some((8000, 9000));
                (
                    f,
                    c,
                    C::Established,
                    &["1 connection on 127.0.0.1:8080 is still alive, held by server (pid 42)."],
                    &["if it is outgoing, keep connections off it by adding 8080 to net.ipv4.ip_local_reserved_ports (or move ip_local_port_range, now 8000-9000)"],
                )
            },
            {
                // connect() was given the service port.
                let (f, mut c) = inuse(vec![Holder {
                    outgoing: Some(true),
                    remote: Some("127.0.0.1:9999".parse().unwrap()),
                    ..h(TcpState::Established, "127.0.0.1:8080")
                }]);
                c.local_port_range = Some((8080, 8080));
                (
                    f,
                    c,
                    C::Established,
                    &["127.0.0.1:8080 is the local end of an outgoing connection of server (pid 42) to 127.0.0.1:9999: connect() was given port 8080 because it lies in net.ipv4.ip_local_port_range (8080-8080)."],
                    &["Let server (pid 42) close that connection or stop it, and keep connections off it by adding 8080 to net.ipv4.ip_local_reserved_ports"],
                )
            },
            {
                // Outgoing, from a port outside the range: bound on purpose.
                let (f, c) = inuse(vec![
                    Holder {
                        outgoing: Some(true),
                        ..h(TcpState::Established, "127.0.0.1:8080")
                    },
                    Holder {
                        outgoing: Some(true),
                        ..h(TcpState::SynSent, "127.0.0.1:8080")
                    },
                ]);
                (
                    f,
                    c,
                    C::Established,
                    &["2 outgoing connections of server (pid 42) use 127.0.0.1:8080 as their local end: the program bound that port before connect()."],
                    &["Let server (pid 42) close those connections or stop it; SO_REUSEADDR on the new socket alone will not help because those connections did not set it."],
                )
            },
            {
                let (f, c) = inuse(vec![
                    h(TcpState::Bound, "127.0.0.1:8080"),
                    tw("127.0.0.1:8080", 5, false),
                ]);
                (
                    f,
                    c,
                    C::Bound,
                    &["bound to 127.0.0.1:8080", "neither listening nor connected"],
                    &["close that socket"],
                )
            },
            {
                let (f, c) = inuse(vec![
                    tw("127.0.0.1:8080", 40_200, false),
                    tw("127.0.0.1:8080", 12_000, false),
                ]);
                (
                    f,
                    c,
                    C::TimeWait,
                    &["2 TIME_WAIT sockets on 127.0.0.1:8080", "expires in 41 s"],
                    &[
                        "Wait 41 s",
                        "alone will not help because the old socket did not set it",
                    ],
                )
            },
            {
                let (f, c) = inuse(vec![Holder {
                    opened_by: Some(Process {
                        pid: 7,
                        comm: "server".into(),
                    }),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Listener,
                    &[
                        "server (pid 42) is listening on 0.0.0.0:8080",
                        "a socket that server (pid 7) opened and no longer holds",
                    ],
                    &["Stop server (pid 42)", "SOCK_CLOEXEC"],
                )
            },
            {
                // Closed while the peer had not: a FIN_WAIT2 timewait
                // socket, named as such, with an expiry that is not final.
                let (f, c) = inuse(vec![Holder {
                    state: TcpState::FinWait2,
                    remote: Some("127.0.0.1:42778".parse().unwrap()),
                    ..tw("127.0.0.1:8080", 59_400, false)
                }]);
                (
                    f,
                    c,
                    C::TimeWait,
                    &[
                        "1 FIN_WAIT2 socket on 127.0.0.1:8080",
                        "waiting for its peer 127.0.0.1:42778 to close",
                        "it expires in 60 s, or 60 s after the peer closes",
                    ],
                    &["Wait 60 s for the FIN_WAIT2 to expire"],
                )
            },
            {
                let (f, c) = inuse(vec![
                    tw("127.0.0.1:8080", 12_000, false),
                    Holder {
                        state: TcpState::FinWait2,
                        ..tw("127.0.0.1:8080", 30_000, false)
                    },
                    tw("127.0.0.1:8080", 5_000, false),
                ]);
                (
                    f,
                    c,
                    C::TimeWait,
                    &[
                        "3 timewait sockets on 127.0.0.1:8080 (2 TIME_WAIT, 1 FIN_WAIT2",
                        "expires in 30 s, unless a FIN_WAIT2 socket's peer closes first",
                    ],
                    &["Wait 30 s for the timewait sockets to expire"],
                )
            },
            {
                let (mut f, c) = inuse(vec![Holder {
                    reuseport: true,
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                f.reuseaddr = true;
                (
                    f,
                    c,
                    C::ReuseportMismatch,
                    &["has SO_REUSEPORT but the new socket does not"],
                    &["SO_REUSEPORT on every socket"],
                )
            },
            {
                let (mut f, c) = inuse(vec![Holder {
                    reuseport: true,
                    uid: Some(1000),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                f.reuseport = true;
                (
                    f,
                    c,
                    C::ReuseportMismatch,
                    &["belongs to uid 1000, the new socket to uid 0"],
                    &["same uid"],
                )
            },
            (
                fail(Syscall::Connect, libc::EADDRNOTAVAIL, "127.0.0.1:80"),
                Context {
                    local_port_range: Some((40000, 40001)),
                    // Ports with a TIME_WAIT toward anywhere: not the
                    // evidence for a connect().
                    timewait_in_range: Some(2),
                    timewait_toward: Some(1),
                    ..Context::default()
                },
                C::EphemeralExhausted,
                &["connect() to 127.0.0.1:80 found no free local port in ip_local_port_range 40000-40001 (2 ports, 1 of them in TIME_WAIT toward 127.0.0.1:80)."],
                &["ip_local_port_range"],
            ),
            {
                let (f, c) = connect_exhausted("127.0.0.1:80", 2, 2);
                (
                    f,
                    c,
                    C::EphemeralExhausted,
                    &["connect() to 127.0.0.1:80"],
                    &["tcp_tw_reuse is on here, but it lets connect() take over a TIME_WAIT port only once"],
                )
            },
            {
                let (f, c) = connect_exhausted("10.0.0.1:80", 2, 2);
                (
                    f,
                    c,
                    C::EphemeralExhausted,
                    &["connect() to 10.0.0.1:80"],
                    &["or set net.ipv4.tcp_tw_reuse=1 (now 2: loopback only) so that connect() may take over"],
                )
            },
            {
                let (f, c) = connect_exhausted("10.0.0.1:80", 0, 0);
                (
                    f,
                    c,
                    C::EphemeralExhausted,
                    &["(2 ports, none of them in TIME_WAIT toward 10.0.0.1:80)."],
                    // No TIME_WAIT took the range: no TIME_WAIT advice.
                    &["Widen net.ipv4.ip_local_port_range, or reuse connections (keep-alive, pooling) instead of opening one per request."],
                )
            },
            // A listener whose file a child also holds: stopping the
            // server alone does not free the port.
            {
                let (f, c) = inuse(vec![Holder {
                    shared_with: vec![proc_("log-helper", 43)],
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Listener,
                    &["server (pid 42) is listening on 0.0.0.0:8080; log-helper (pid 43) holds the same socket."],
                    &["Stop server (pid 42) and log-helper (pid 43) (another instance of this server?)"],
                )
            },
            {
                let (f, c) = inuse(vec![Holder {
                    shared_with: vec![proc_("worker", 43), proc_("worker", 44)],
                    remote: Some("127.0.0.1:9999".parse().unwrap()),
                    outgoing: Some(false),
                    ..h(TcpState::Established, "127.0.0.1:8080")
                }]);
                (
                    f,
                    c,
                    C::Established,
                    &["held by server (pid 42) and worker (pids 43, 44): connections that outlived"],
                    &["Let server (pid 42) and worker (pids 43, 44) finish that connection or stop them;"],
                )
            },
            {
                let (f, c) = inuse(vec![Holder {
                    shared_with: vec![proc_("a", 43), proc_("b", 44), proc_("a", 45)],
                    ..h(TcpState::Bound, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Bound,
                    &["; a (pids 43, 45) and b (pid 44) hold the same socket."],
                    &["Have server (pid 42), a (pids 43, 45) and b (pid 44) close that socket or stop them;"],
                )
            },
            // CLOSE_WAIT sockets a forked child holds too.
            {
                let (f, c) = inuse(vec![
                    Holder {
                        shared_with: vec![proc_("app7", 70)],
                        ..cw(7)
                    },
                    cw(7),
                ]);
                (
                    f,
                    c,
                    C::CloseWait,
                    &["never called close() on them; app7 (pid 70) holds some of them too."],
                    &["or stop app7 (pids 7, 70);"],
                )
            },
            {
                let (f, c) = inuse(vec![Holder {
                    shared_with: vec![proc_("child", 71), proc_("child", 72)],
                    ..cw(7)
                }]);
                (
                    f,
                    c,
                    C::CloseWait,
                    &["; child (pids 71, 72) hold them too."],
                    &["or stop app7 (pid 7) and child (pids 71, 72);"],
                )
            },
            // Listeners held for others: not "another instance".
            {
                let (f, c) = inuse(vec![Holder {
                    pid: Some(1),
                    comm: Some("systemd".into()),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Listener,
                    &["systemd (pid 1) is listening on 0.0.0.0:8080 for socket activation."],
                    &["Stop the socket unit that listens on port 8080 (`systemctl list-sockets` names it"],
                )
            },
            {
                let (f, c) = inuse(vec![Holder {
                    comm: Some("docker-proxy".into()),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Listener,
                    &["docker-proxy (pid 42) is listening on 0.0.0.0:8080 for a container that publishes this port."],
                    &["`docker ps --filter publish=8080` names it"],
                )
            },
            {
                let (mut f, c) = inuse(vec![Holder {
                    pid: Some(1),
                    comm: Some("systemd".into()),
                    ..h(TcpState::Bound, "0.0.0.0:8080")
                }]);
                f.proto = Proto::Udp;
                (
                    f,
                    c,
                    C::Bound,
                    &["systemd (pid 1) has a UDP socket bound to 0.0.0.0:8080 for socket activation."],
                    &["let systemd start the service instead of starting it by hand."],
                )
            },
            // connect() from a port its socket bound: that connection's
            // holder, never the range (its TIME_WAIT count is beside the
            // point, so it is given here and must not be said).
            {
                let (f, mut c) = connect_from_own_port("127.0.0.1:40000");
                c.holders = vec![Holder {
                    remote: Some("127.0.0.1:9000".parse().unwrap()),
                    outgoing: Some(true),
                    ..h(TcpState::Established, "127.0.0.1:40000")
                }];
                (
                    f,
                    c,
                    C::Established,
                    &["connect() to 127.0.0.1:9000 had to use 127.0.0.1:40000, the local end its socket was bound to, and server (pid 42) already holds that connection (127.0.0.1:40000 -> 127.0.0.1:9000, ESTABLISHED)"],
                    &["Let connect() choose the local port", "IP_BIND_ADDRESS_NO_PORT", "close that connection first; SO_REUSEADDR cannot share one."],
                )
            },
            {
                let (f, mut c) = connect_from_own_port("0.0.0.0:40000");
                c.holders = vec![Holder {
                    remote: Some("127.0.0.1:9000".parse().unwrap()),
                    ..tw("127.0.0.1:40000", 41_500, true)
                }];
                (
                    f,
                    c,
                    C::TimeWait,
                    &["had to use port 40000, which its socket was bound to, and that connection (127.0.0.1:40000 -> 127.0.0.1:9000) is still in TIME_WAIT for 42 s", "only when its connection used TCP timestamps, and this one did not"],
                    &["wait 42 s for the TIME_WAIT to expire, or turn TCP timestamps on at both ends"],
                )
            },
            {
                let (f, c) = connect_from_own_port("127.0.0.1:40000");
                (
                    f,
                    c,
                    C::Unknown,
                    &["that connection was taken, but no socket with those two ends was found among the 7 TCP/UDP sockets"],
                    &["If it keeps failing, let connect() choose the local port"],
                )
            },
            (
                fail(Syscall::Connect, libc::EADDRNOTAVAIL, "127.0.0.1:9000"),
                Context {
                    local_port_range: Some((40000, 40009)),
                    timewait_toward: Some(0),
                    reserved_in_range: 8,
                    ..Context::default()
                },
                C::EphemeralExhausted,
                &["40000-40009: of its 10 ports, 8 are reserved by net.ipv4.ip_local_reserved_ports and the other 2 in use, none of them in TIME_WAIT toward 127.0.0.1:9000."],
                &["Take ports out of net.ipv4.ip_local_reserved_ports (8 of the range are reserved), widen net.ipv4.ip_local_port_range"],
            ),
            (
                fail(Syscall::Connect, libc::EADDRNOTAVAIL, "127.0.0.1:9000"),
                Context {
                    local_port_range: Some((40000, 40009)),
                    reserved_in_range: 2,
                    ..Context::default()
                },
                C::EphemeralExhausted,
                &["of its 10 ports, 2 are reserved by net.ipv4.ip_local_reserved_ports and the other 8 in use."],
                &["Widen net.ipv4.ip_local_port_range"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRINUSE, "0.0.0.0:0"),
                Context {
                    local_port_range: Some((40000, 40009)),
                    timewait_in_range: Some(3),
                    ..Context::default()
                },
                C::EphemeralExhausted,
                &["bind() to port 0", "(10 ports, 3 of them held by TIME_WAIT sockets)."],
                &["Widen"],
            ),
            (
                Failure {
                    uid: 65534,
                    ..fail(Syscall::Bind, libc::EACCES, "0.0.0.0:80")
                },
                Context {
                    unprivileged_port_start: Some(1024),
                    ..Context::default()
                },
                C::PrivilegedPort,
                &["Port 80 is below", "(1024)", "uid 65534"],
                &["CAP_NET_BIND_SERVICE", "1024 or above"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRNOTAVAIL, "192.0.2.1:80"),
                Context::default(),
                C::AddressNotLocal,
                &["192.0.2.1 is not an address of this host"],
                &["IP_FREEBIND (or net.ipv4.ip_nonlocal_bind=1)"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRNOTAVAIL, "[fd00::7]:80"),
                Context {
                    dad: Some(("eth1".into(), Dad::Pending)),
                    ..Context::default()
                },
                C::AddressNotLocal,
                &["fd00::7 is on eth1 but still tentative: duplicate address detection has not finished"],
                &["IP_FREEBIND (or net.ipv6.ip_nonlocal_bind=1)", "net.ipv6.conf.eth1.accept_dad=0"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRNOTAVAIL, "[fd00::7]:80"),
                Context {
                    dad: Some(("eth1".into(), Dad::Failed)),
                    ..Context::default()
                },
                C::AddressNotLocal,
                &["fd00::7 is on eth1 but failed duplicate address detection: another node on that link has it"],
                &["remove fd00::7 from eth1 and add it again"],
            ),
            (
                fail(Syscall::Listen, libc::EINVAL, "127.0.0.1:40008"),
                Context::default(),
                C::AlreadyBound,
                &["this one is already connected (or connecting, or closing a connection) from 127.0.0.1:40008."],
                &["a socket that called connect() cannot become a listener."],
            ),
            (
                fail(Syscall::Bind, libc::EINVAL, "127.0.0.1:80"),
                Context::default(),
                C::AlreadyBound,
                &["already bound"],
                &["new socket"],
            ),
            (
                Failure {
                    v6only: true,
                    ..fail(Syscall::Bind, libc::EINVAL, "[::ffff:127.0.0.1]:80")
                },
                Context::default(),
                C::InvalidAddress,
                &["IPv4-mapped", "IPV6_V6ONLY"],
                &["Clear IPV6_V6ONLY"],
            ),
            (
                fail(Syscall::Bind, libc::EINVAL, "[ff02::1]:80"),
                Context::default(),
                C::InvalidAddress,
                &["multicast"],
                &["UDP"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRINUSE, "127.0.0.1:8080"),
                Context {
                    sockets_seen: Some(17),
                    ..Context::default()
                },
                C::Unknown,
                &[
                    "EADDRINUSE on bind() of 127.0.0.1:8080",
                    "17 TCP/UDP sockets",
                ],
                &["root"],
            ),
            (
                fail(Syscall::Bind, libc::EADDRINUSE, "127.0.0.1:8080"),
                Context {
                    sockets_seen: Some(0),
                    unseen: Some("cannot enter network namespace 4026532288".into()),
                    ..Context::default()
                },
                C::Unknown,
                &["could not be read (cannot enter network namespace 4026532288)"],
                &["root"],
            ),
            (
                Failure {
                    uid: 1000,
                    ..fail(Syscall::Bind, libc::EACCES, "0.0.0.0:8080")
                },
                Context {
                    unprivileged_port_start: Some(1024),
                    ..Context::default()
                },
                C::Unknown,
                &["EACCES"],
                &["cgroup BPF"],
            ),
            // Two UDP sockets of one process sharing a port with
            // SO_REUSEADDR, a third without it.
            {
                let shared = Holder {
                    reuseaddr: true,
                    ..h(TcpState::Bound, "127.0.0.1:5354")
                };
                let (f, mut c) = inuse(vec![shared.clone(), shared]);
                c.reuseaddr_would_help = true;
                (
                    Failure {
                        proto: Proto::Udp,
                        ..f
                    },
                    c,
                    C::Bound,
                    &["server (pid 42) has 2 UDP sockets bound to 127.0.0.1:5354."],
                    &["Set SO_REUSEADDR on the new socket (the bound sockets have it too), or have server (pid 42) close those sockets."],
                )
            },
            // An exhausted range names who took it; the fix follows the
            // cause: live sockets, or TIME_WAITs.
            (
                fail(Syscall::Bind, libc::EADDRINUSE, "127.0.0.1:0"),
                Context {
                    local_port_range: Some((40000, 40003)),
                    timewait_in_range: Some(0),
                    range_users: vec![(proc_("python3", 14083), 4)],
                    ..Context::default()
                },
                C::EphemeralExhausted,
                &["(4 ports, none of them held by a TIME_WAIT socket); python3 (pid 14083) holds 4 sockets there."],
                &["Find out why python3 (pid 14083) keeps 4 sockets there, widen net.ipv4.ip_local_port_range, or reuse connections (keep-alive, pooling) instead of opening one per request."],
            ),
            {
                let (f, mut c) = connect_exhausted("10.0.0.1:80", 2, 0);
                c.range_users = vec![(proc_("client", 7), 2)];
                (
                    f,
                    c,
                    C::EphemeralExhausted,
                    &["(2 ports, 2 of them in TIME_WAIT toward 10.0.0.1:80); client (pid 7) opened 2 connections toward it."],
                    &["Widen net.ipv4.ip_local_port_range", "let the server close first"],
                )
            },
            {
                let (f, mut c) = connect_exhausted("10.0.0.1:80", 0, 0);
                c.range_users = vec![(proc_("a", 1), 1), (proc_("b", 2), 1)];
                (
                    f,
                    c,
                    C::EphemeralExhausted,
                    &["none of them in TIME_WAIT toward 10.0.0.1:80); a (pid 1) opened 1 connection toward it, b (pid 2) 1."],
                    &["Find out why a (pid 1) keeps 1 connection there"],
                )
            },
            // Dual stack: a [::] listener without IPV6_V6ONLY holds the
            // IPv4 port; a [::] bind without it wants an IPv4 listener's.
            {
                let (f, c) = inuse(vec![h(TcpState::Listen, "[::]:8080")]);
                (
                    f,
                    c,
                    C::Listener,
                    &[
                        "listening on [::]:8080, which takes IPv4 port 8080 too (IPV6_V6ONLY is off)",
                    ],
                    &[
                        "Set IPV6_V6ONLY on the socket on [::]:8080 so that it leaves IPv4 to others, or stop server (pid 42)",
                    ],
                )
            },
            (
                fail(Syscall::Bind, libc::EADDRINUSE, "[::]:8080"),
                Context {
                    holders: vec![h(TcpState::Listen, "127.0.0.1:8080")],
                    ..Context::default()
                },
                C::Listener,
                &["listening on 127.0.0.1:8080, and the new [::] socket, without IPV6_V6ONLY, wants IPv4 port 8080 too"],
                &["Set IPV6_V6ONLY on the new socket if it is to serve IPv6 only, or stop server"],
            ),
            {
                let (f, c) = inuse(vec![Holder {
                    pid: Some(7),
                    comm: Some("dns".into()),
                    ..h(TcpState::Bound, "[::]:8080")
                }]);
                (
                    Failure {
                        proto: Proto::Udp,
                        ..f
                    },
                    c,
                    C::Bound,
                    &["dns (pid 7) has a UDP socket bound to [::]:8080, which takes IPv4 port 8080 too"],
                    &["Set IPV6_V6ONLY on the socket on [::]:8080", "or have dns (pid 7) close"],
                )
            },
            // Devices: a listener on one, a new socket on none; on the
            // same one; a listener on none, a new socket on one.
            {
                let (f, c) = inuse(vec![Holder {
                    device: Some("vrf-blue".into()),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                (
                    f,
                    c,
                    C::Listener,
                    &["listening on 0.0.0.0:8080 on device vrf-blue (SO_BINDTODEVICE), which a socket bound to no device conflicts with"],
                    &["Bind the new socket to another device than vrf-blue with SO_BINDTODEVICE, or stop server (pid 42)"],
                )
            },
            {
                let (f, mut c) = inuse(vec![Holder {
                    device: Some("vrf-blue".into()),
                    ..h(TcpState::Listen, "0.0.0.0:8080")
                }]);
                c.device = Some("vrf-blue".into());
                (
                    f,
                    c,
                    C::Listener,
                    &["on device vrf-blue, the new socket's device too"],
                    &["Stop server (pid 42)"],
                )
            },
            {
                let (f, mut c) = inuse(vec![h(TcpState::Listen, "[::]:8080")]);
                c.device = Some("eth1".into());
                (
                    f,
                    c,
                    C::Listener,
                    &["listening on [::]:8080 on every device (bound to none), eth1 included, which takes IPv4 port 8080 too"],
                    &["Set IPV6_V6ONLY on the socket on [::]:8080 so that it leaves IPv4 to others, or stop"],
                )
            },
        ];
        let mut seen = std::collections::HashSet::new();
        for (f, ctx, want, in_summary, in_fix) in rows {
            let d = diagnose(&f, &ctx);
            assert_eq!(d.code, want, "{f:?} {ctx:?} -> {d:?}");
            for w in in_summary {
                assert!(
                    d.summary.contains(w),
                    "summary of {want:?} lacks {w:?}: {}",
                    d.summary
                );
            }
            for w in in_fix {
                assert!(d.fix.contains(w), "fix of {want:?} lacks {w:?}: {}", d.fix);
            }
            if f.bound.is_some() {
                assert!(!d.summary.contains("ip_local_port_range"), "{}", d.summary);
            }
            one_sentence(&d.summary);
            one_sentence(&d.fix);
            seen.insert(want);
        }
        let all = [
            C::Listener,
            C::CloseWait,
            C::Established,
            C::Bound,
            C::TimeWait,
            C::ReuseportMismatch,
            C::EphemeralExhausted,
            C::PrivilegedPort,
            C::AddressNotLocal,
            C::AlreadyBound,
            C::InvalidAddress,
            C::Unknown,
        ];
        for c in all {
            assert!(seen.contains(&c), "no row for {c:?}");
        }
    }

    #[test]
    fn time_wait_fix_depends_on_the_old_sockets_flag() {
        let (f, mut c) = inuse(vec![tw("127.0.0.1:8080", 41_000, true)]);
        c.reuseaddr_would_help = true;
        let d = diagnose(&f, &c);
        assert_eq!(
            d.fix,
            "Restart with SO_REUSEADDR (the old socket had it too), or wait 41 s."
        );
        assert!(d.reuseaddr_would_help);

        let (mut f, c) = inuse(vec![tw("127.0.0.1:8080", 41_000, false)]);
        f.reuseaddr = true;
        let d = diagnose(&f, &c);
        assert!(d.fix.starts_with("Wait 41 s for the TIME_WAIT to expire; SO_REUSEADDR on the new socket does not help"), "{}", d.fix);

        let (f, mut c) = inuse(vec![tw("127.0.0.1:8080", 41_000, false)]);
        c.flags_uncertain = true;
        assert!(diagnose(&f, &c).fix.contains("could not see"));

        let (f, mut c) = inuse(vec![Holder {
            left_by: Some(Process {
                pid: 77,
                comm: "web".into(),
            }),
            ..tw("127.0.0.1:8080", 500, false)
        }]);
        c.owners_hidden = true;
        assert!(diagnose(&f, &c).summary.contains("left by web (pid 77)"));
    }

    #[test]
    fn reuseport_mismatch_needs_every_live_holder_to_refuse_only_for_reuseport() {
        // One holder refuses for another reason: the state code stays.
        let (mut f, c) = inuse(vec![
            Holder {
                reuseport: true,
                ..h(TcpState::Listen, "0.0.0.0:8080")
            },
            h(TcpState::Listen, "127.0.0.1:8080"),
        ]);
        f.reuseport = false;
        assert_eq!(code(&f, &c), C::Listener);
        // Only timewait holders: time_wait, even if reuseport is involved.
        let (mut f, c) = inuse(vec![tw("127.0.0.1:8080", 1000, false)]);
        f.reuseport = true;
        assert_eq!(code(&f, &c), C::TimeWait);
    }

    #[test]
    fn listener_fix_with_reuseport_help() {
        let (mut f, mut c) = inuse(vec![Holder {
            reuseport: true,
            ..h(TcpState::Listen, "0.0.0.0:8080")
        }]);
        f.reuseport = false;
        c.reuseport_would_help = true;
        let d = diagnose(&f, &c);
        assert_eq!(d.code, C::ReuseportMismatch);
        assert!(d.reuseport_would_help);
    }

    #[test]
    fn holders_from_model_sockets() {
        let mut s = ExistingSocket::new(
            Proto::Tcp,
            "[::ffff:127.0.0.1]:8080".parse().unwrap(),
            TcpState::TimeWait,
        );
        s.expires_in_ms = Some(1234);
        s.uid = 0;
        let env = NetEnv::default();
        let hh = holder(
            &s,
            Overlap::V4mapped,
            Some(Process {
                pid: 1,
                comm: "x".into(),
            }),
            None,
            &env,
        );
        assert_eq!(hh.device, None);
        assert_eq!(hh.local.to_string(), "127.0.0.1:8080");
        assert_eq!((hh.pid, hh.uid, hh.expires_in_ms), (None, None, Some(1234)));
        let mut l = ExistingSocket::new(
            Proto::Tcp,
            "0.0.0.0:8080".parse().unwrap(),
            TcpState::Listen,
        );
        l.bound_dev_if = 1;
        let hh = holder(
            &l,
            Overlap::Wildcard,
            Some(Process {
                pid: 1,
                comm: "x".into(),
            }),
            None,
            &env,
        );
        assert_eq!(
            (hh.pid, hh.comm.as_deref(), hh.uid, hh.expires_in_ms),
            (Some(1), Some("x"), Some(0), None)
        );
        // The device by its name in the namespace; one it no longer has
        // by its index.
        assert_eq!(hh.device.as_deref(), Some("lo"));
        l.bound_dev_if = 9;
        let hh = holder(&l, Overlap::Wildcard, None, None, &env);
        assert_eq!(hh.device.as_deref(), Some("ifindex 9"));
    }

    #[test]
    fn explain_a_predicted_time_wait() {
        let env = NetEnv::default();
        let mut old = ExistingSocket::new(
            Proto::Tcp,
            "127.0.0.1:8080".parse().unwrap(),
            TcpState::TimeWait,
        );
        old.expires_in_ms = Some(30_500);
        let new = NewSocket::new(Proto::Tcp, "0.0.0.0:8080".parse().unwrap());
        let v = crate::rules::predict(&new, std::slice::from_ref(&old), &env, true);
        let (holders, d) = explain(
            &new,
            &v,
            std::slice::from_ref(&old),
            &env,
            &|_| (None, Vec::new()),
            false,
        );
        let d = d.unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].overlap, Overlap::Wildcard);
        assert_eq!(d.code, C::TimeWait);
        assert!(d.fix.starts_with("Wait 31 s"), "{}", d.fix);
        assert!(!d.reuseaddr_would_help);
    }
}
