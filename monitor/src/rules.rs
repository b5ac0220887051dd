//! The kernel's bind rules (Linux 6.18), as a pure function: would this bind()
//! (and listen()) fail right now, with which errno, because of which sockets,
//! and would SO_REUSEADDR or SO_REUSEPORT on the new socket have helped?
//!
//! Read from `net/ipv4/inet_connection_sock.c` (`inet_bind_conflict`,
//! `inet_csk_bind_conflict`, `inet_bhash2_addr_any_conflict`,
//! `inet_csk_get_port`, `inet_csk_find_open_port`), `net/ipv4/udp.c`
//! (`udp_lib_lport_inuse`), `net/ipv4/af_inet.c` (`__inet_bind`) and
//! `net/ipv6/af_inet6.c` (`__inet6_bind`), and checked against the running
//! kernel by `tests/check_differential.rs`. What the code models:
//!
//! * Sockets compete only with sockets of the same protocol, network namespace
//!   and port. Two sockets bound to different devices (both non-zero) never
//!   conflict. (VRF / l3mdev buckets are not modelled.)
//! * Address overlap (`inet_rcv_saddr_equal` with wildcards on): equal
//!   addresses; 0.0.0.0 overlaps every IPv4 address; [::] overlaps every IPv6
//!   address and, unless that socket is IPV6_V6ONLY, every IPv4 address; an
//!   IPv4-mapped IPv6 address is IPv4; binding a specific, non-mapped IPv6
//!   address makes the socket v6only. The bhash2 path the kernel takes for
//!   specific addresses gives the same answer.
//! * TCP, per overlapping pair (`inet_bind_conflict`, relax and reuseport_ok
//!   both true on an explicit bind or listen): allowed when both have
//!   SO_REUSEADDR and the existing one is not LISTEN (a timewait socket
//!   carries the flag of the socket it came from), or when both have
//!   SO_REUSEPORT and the existing one is a timewait socket or has the same
//!   uid. Nothing else matters: the new socket's own state does not, so in a
//!   snapshot that does not move, listen() refuses exactly what bind() refused.
//!   It fails later only when another socket started listening in between
//!   (two SO_REUSEADDR sockets bind one port; the first to listen wins).
//! * TCP port 0 (and listen() without bind()): the search through
//!   ip_local_port_range runs with relax=false and reuseport_ok=false, so any
//!   overlapping socket makes a port unusable; with ip_autobind_reuse=1 a
//!   second pass allows SO_REUSEADDR sharing again.
//! * UDP (`udp_lib_lport_inuse`): sockets that both have SO_REUSEADDR ignore
//!   each other; otherwise the *first* overlapping socket in the hash chain
//!   decides: both SO_REUSEPORT with the same uid = allowed, anything else =
//!   EADDRINUSE. Pass UDP sockets in the kernel's chain order, which is the
//!   order sock_diag lists them (newest bound first).
//! * The errnos that are not conflicts, in the kernel's order. IPv4:
//!   EADDRNOTAVAIL, EACCES, EADDRINUSE. IPv6: EINVAL (multicast on a stream
//!   socket), EACCES, EINVAL (v4-mapped on a v6only socket), EADDRNOTAVAIL,
//!   EINVAL (link-local without an interface), EADDRINUSE.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::event::{Overlap, Proto, Syscall, TcpState};

/// Address family of a socket (AF_INET / AF_INET6). An AF_INET6 socket may be
/// bound to an IPv4-mapped address; it is still AF_INET6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family a socket bound to this address must have (IPv4 text gives
    /// AF_INET, IPv6 text, mapped or not, gives AF_INET6).
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// The socket the caller is about to bind.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSocket {
    pub proto: Proto,
    pub family: Family,
    /// The address as the caller passes it (for AF_INET6 possibly v4-mapped).
    pub addr: IpAddr,
    pub port: u16,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// IPV6_V6ONLY as set before bind (AF_INET6 only).
    pub v6only: bool,
    /// sk_uid: the fsuid of the thread that created the socket.
    pub uid: u32,
    /// SO_BINDTODEVICE ifindex (0: none).
    pub bound_dev_if: u32,
    /// IP_FREEBIND (also IPV6_FREEBIND).
    pub freebind: bool,
    /// IP_TRANSPARENT.
    pub transparent: bool,
    /// Whether the binding process has CAP_NET_BIND_SERVICE in the network
    /// namespace's user namespace.
    pub cap_net_bind_service: bool,
}

impl NewSocket {
    /// A plain socket of the family the address implies, uid 0 with the
    /// capability (root), no options.
    pub fn new(proto: Proto, addr: SocketAddr) -> NewSocket {
        NewSocket {
            proto,
            family: Family::of(addr.ip()),
            addr: addr.ip(),
            port: addr.port(),
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 0,
            bound_dev_if: 0,
            freebind: false,
            transparent: false,
            cap_net_bind_service: true,
        }
    }

    fn class(&self) -> AddrClass {
        AddrClass::of(self.family, self.addr)
    }

    /// IPV6_V6ONLY as the kernel will see it during the conflict check: a
    /// specific non-mapped IPv6 address forces it on.
    fn effective_v6only(&self) -> bool {
        effective_v6only(self.family, self.addr, self.v6only)
    }
}

/// A socket that already exists in the same network namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct ExistingSocket {
    pub proto: Proto,
    pub family: Family,
    /// Local address (for AF_INET6 possibly v4-mapped or [::]).
    pub local: IpAddr,
    pub port: u16,
    /// TCP state; `Bound` for a TCP socket bound but neither listening nor
    /// connected, and for every UDP socket.
    pub state: TcpState,
    pub remote: Option<SocketAddr>,
    /// An `inet_timewait_sock` (what sock_diag reports as TIME_WAIT, or as
    /// FIN_WAIT2 for an orphan whose timewait substate is still FIN_WAIT2).
    pub timewait: bool,
    /// SO_REUSEADDR; for a timewait socket the flag of the socket that left
    /// it; for an accepted socket the listener's.
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
    pub bound_dev_if: u32,
    /// False when `reuseaddr` / `reuseport` are guesses (sock_diag does not
    /// report them); the verdict then says whether the guess mattered.
    pub flags_known: bool,
    /// Identification, for holders (0 / None when unknown).
    pub inode: u64,
    pub cookie: u64,
    pub expires_in_ms: Option<u64>,
}

impl ExistingSocket {
    /// A socket with no options, uid 0, flags known.
    pub fn new(proto: Proto, local: SocketAddr, state: TcpState) -> ExistingSocket {
        ExistingSocket {
            proto,
            family: Family::of(local.ip()),
            local: local.ip(),
            port: local.port(),
            state,
            remote: None,
            timewait: state == TcpState::TimeWait,
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 0,
            bound_dev_if: 0,
            flags_known: true,
            inode: 0,
            cookie: 0,
            expires_in_ms: None,
        }
    }

    /// Is this a timewait socket (the kernel's `sk_state == TCP_TIME_WAIT`)?
    pub fn is_timewait(&self) -> bool {
        self.timewait || self.state == TcpState::TimeWait
    }

    fn class(&self) -> AddrClass {
        AddrClass::of(self.family, self.local)
    }

    fn effective_v6only(&self) -> bool {
        effective_v6only(self.family, self.local, self.v6only)
    }

    /// Does this socket hold its port in the bind tables? Request sockets
    /// (NEW_SYN_RECV) do not; port 0 means not bound.
    fn holds_port(&self) -> bool {
        self.port != 0 && self.state != TcpState::NewSynRecv
    }
}

/// An address of this host (one entry of getifaddrs).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// On a loopback device: IPv4 then makes the whole prefix local (the
    /// kernel adds a local route for the prefix, e.g. 127.0.0.0/8).
    pub loopback: bool,
    /// The interface's IPv4 broadcast address, if any.
    pub broadcast: Option<Ipv4Addr>,
    /// The interface's name.
    pub dev: String,
    /// IPv6 only: where duplicate address detection stands.
    pub dad: Dad,
}

/// Duplicate address detection of an IPv6 address (IFA_F_TENTATIVE,
/// IFA_F_OPTIMISTIC, IFA_F_DADFAILED). bind() takes an address only once it
/// passed (or while it is optimistic): `ipv6_chk_addr_and_flags()` with
/// IFA_F_TENTATIVE banned, which a failed address keeps too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dad {
    /// Passed, optimistic, or not an IPv6 address.
    Usable,
    /// Still tentative: detection has not finished (it cannot start while
    /// the link is down).
    Pending,
    /// Another node on the link has the address.
    Failed,
}

impl Dad {
    /// From the address flags /proc/net/if_inet6 shows.
    pub fn from_ifa_flags(flags: u32) -> Dad {
        const IFA_F_OPTIMISTIC: u32 = 0x04;
        const IFA_F_DADFAILED: u32 = 0x08;
        const IFA_F_TENTATIVE: u32 = 0x40;
        if flags & IFA_F_DADFAILED != 0 {
            Dad::Failed
        } else if flags & IFA_F_TENTATIVE != 0 && flags & IFA_F_OPTIMISTIC == 0 {
            Dad::Pending
        } else {
            Dad::Usable
        }
    }
}

/// What the rules need to know about the network namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct NetEnv {
    /// net.ipv4.ip_unprivileged_port_start (default 1024).
    pub unprivileged_port_start: u32,
    /// net.ipv4.ip_local_port_range, inclusive.
    pub local_port_range: (u16, u16),
    /// net.ipv4.ip_local_reserved_ports, inclusive ranges.
    pub reserved_ports: Vec<(u16, u16)>,
    /// net.ipv4.ip_autobind_reuse.
    pub autobind_reuse: bool,
    /// net.ipv4.ip_nonlocal_bind.
    pub ip_nonlocal_bind: bool,
    /// net.ipv6.ip_nonlocal_bind.
    pub ipv6_nonlocal_bind: bool,
    /// net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only (the default).
    /// Only connect() uses it; told in the fix of an exhausted range.
    pub tcp_tw_reuse: u8,
    pub local_addrs: Vec<LocalAddr>,
    /// The namespace's interfaces, (ifindex, name): a socket's
    /// SO_BINDTODEVICE is an ifindex, which means something only here.
    pub devices: Vec<(u32, String)>,
}

impl Default for NetEnv {
    /// A namespace with loopback up (127.0.0.1/8, ::1) and default sysctls.
    fn default() -> NetEnv {
        NetEnv {
            unprivileged_port_start: 1024,
            local_port_range: (32768, 60999),
            reserved_ports: Vec::new(),
            autobind_reuse: false,
            ip_nonlocal_bind: false,
            ipv6_nonlocal_bind: false,
            tcp_tw_reuse: 2,
            local_addrs: vec![
                LocalAddr {
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    prefix_len: 8,
                    loopback: true,
                    broadcast: None,
                    dev: "lo".into(),
                    dad: Dad::Usable,
                },
                LocalAddr {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix_len: 128,
                    loopback: true,
                    broadcast: None,
                    dev: "lo".into(),
                    dad: Dad::Usable,
                },
            ],
            devices: vec![(1, "lo".into())],
        }
    }
}

impl NetEnv {
    /// The name of the device a socket is bound to (SO_BINDTODEVICE), None
    /// when it is bound to none; "ifindex N" for one this namespace no
    /// longer has.
    pub fn device_name(&self, ifindex: u32) -> Option<String> {
        if ifindex == 0 {
            return None;
        }
        Some(
            self.devices
                .iter()
                .find(|(i, _)| *i == ifindex)
                .map_or_else(|| format!("ifindex {ifindex}"), |(_, n)| n.clone()),
        )
    }

    /// Is this IPv4 address one the kernel accepts for bind() without
    /// IP_FREEBIND (RTN_LOCAL, RTN_MULTICAST, RTN_BROADCAST, or 0.0.0.0)?
    pub fn ipv4_bindable(&self, a: Ipv4Addr) -> bool {
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
            return true;
        }
        self.local_addrs.iter().any(|l| match l.addr {
            IpAddr::V4(la) => {
                la == a
                    || l.broadcast == Some(a)
                    || (l.loopback && same_prefix_v4(la, a, l.prefix_len))
            }
            IpAddr::V6(_) => false,
        })
    }

    /// Is this (non-mapped) IPv6 address assigned here and past duplicate
    /// address detection (`ipv6_chk_addr_and_flags`)?
    pub fn ipv6_local(&self, a: Ipv6Addr) -> bool {
        self.local_addrs
            .iter()
            .any(|l| matches!(l.addr, IpAddr::V6(la) if la == a) && l.dad == Dad::Usable)
    }

    /// An IPv6 address assigned here that bind() refuses until duplicate
    /// address detection passes: its interface, and how detection stands.
    pub fn dad_refusal(&self, ip: IpAddr) -> Option<(String, Dad)> {
        if self.ipv6_local(match ip {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => return None,
        }) {
            return None;
        }
        self.local_addrs
            .iter()
            .find(|l| l.addr == ip && l.dad != Dad::Usable)
            .map(|l| (l.dev.clone(), l.dad))
    }

    fn reserved(&self, port: u16) -> bool {
        self.reserved_ports
            .iter()
            .any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Ports of ip_local_port_range that ip_local_reserved_ports keeps
    /// from the kernel's search (the list, as a person wrote it, may
    /// overlap: merged first).
    pub fn reserved_in_range(&self) -> usize {
        let (lo, hi) = self.local_port_range;
        let mut clipped: Vec<(u16, u16)> = self
            .reserved_ports
            .iter()
            .map(|&(a, b)| (a.max(lo), b.min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        clipped.sort_unstable();
        let (mut n, mut next) = (0usize, 0u32);
        for (a, b) in clipped {
            let start = (a as u32).max(next);
            if start <= b as u32 {
                n += (b as u32 - start + 1) as usize;
            }
            next = next.max(b as u32 + 1);
        }
        n
    }
}

fn same_prefix_v4(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    let len = len.min(32) as u32;
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - len);
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

/// One socket that blocks the bind: an index into the `existing` slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub index: usize,
    pub overlap: Overlap,
}

/// The answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// None: the operations succeed.
    pub errno: Option<i32>,
    /// The call that fails (or the last one that was predicted).
    pub syscall: Syscall,
    /// The sockets that refuse the port (EADDRINUSE with a port), most
    /// relevant first in `existing` order.
    pub blockers: Vec<Blocker>,
    /// For port 0: the first port the search would accept (None if none).
    pub ephemeral_port: Option<u16>,
    /// EADDRINUSE now, success with SO_REUSEADDR set on the new socket.
    pub reuseaddr_would_help: bool,
    /// EADDRINUSE now, success with SO_REUSEPORT set on the new socket.
    pub reuseport_would_help: bool,
    /// Some existing socket's SO_REUSEADDR / SO_REUSEPORT were guessed and
    /// the answer changes with the guess.
    pub uncertain: bool,
    /// Why the bind is refused when it is not a conflict (one phrase), e.g.
    /// "v4-mapped address on an IPV6_V6ONLY socket".
    pub reason: Option<&'static str>,
}

impl Verdict {
    pub fn would_fail(&self) -> bool {
        self.errno.is_some()
    }

    fn ok(syscall: Syscall) -> Verdict {
        Verdict {
            errno: None,
            syscall,
            blockers: Vec::new(),
            ephemeral_port: None,
            reuseaddr_would_help: false,
            reuseport_would_help: false,
            uncertain: false,
            reason: None,
        }
    }

    fn fail(syscall: Syscall, errno: i32, reason: &'static str) -> Verdict {
        Verdict {
            errno: Some(errno),
            reason: Some(reason),
            ..Verdict::ok(syscall)
        }
    }
}

/// Predict bind() of `new` (and then listen() when `listen` is true; for TCP
/// only) against the sockets that exist now.
pub fn predict(
    new: &NewSocket,
    existing: &[ExistingSocket],
    env: &NetEnv,
    listen: bool,
) -> Verdict {
    let mut v = evaluate(new, existing, env, listen);
    if v.errno == Some(libc::EADDRINUSE) {
        if !new.reuseaddr {
            let mut n = new.clone();
            n.reuseaddr = true;
            v.reuseaddr_would_help = !evaluate(&n, existing, env, listen).would_fail();
        }
        if !new.reuseport {
            let mut n = new.clone();
            n.reuseport = true;
            v.reuseport_would_help = !evaluate(&n, existing, env, listen).would_fail();
        }
    }
    if existing.iter().any(|e| !e.flags_known) {
        let guess = |val: bool| -> Vec<ExistingSocket> {
            existing
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if !e.flags_known {
                        e.reuseaddr = val;
                        e.reuseport = val;
                    }
                    e
                })
                .collect()
        };
        let all_off = evaluate(new, &guess(false), env, listen).errno;
        let all_on = evaluate(new, &guess(true), env, listen).errno;
        v.uncertain = all_off != v.errno || all_on != v.errno;
    }
    if v.errno == Some(libc::EADDRINUSE)
        && new.proto == Proto::Tcp
        && !v.blockers.is_empty()
        && v.blockers
            .iter()
            .all(|b| uid_only_refusal_by_connection(new, &existing[b.index]))
    {
        // inet_csk_get_port()'s fast path (sk_reuseport_match) lets a
        // SO_REUSEPORT socket in without looking at the bucket's sockets when
        // its uid is the bucket's `fastuid`: the uid of the socket that last
        // bound the port, normally the listener. Accepted sockets join the
        // bucket without updating it and carry the accepting process's uid
        // (a server that binds as root and accepts as www-data), so when the
        // listener is gone the kernel may accept what these sockets' uids
        // refuse. The bucket's fastuid is not visible from user space.
        v.uncertain = true;
    }
    v
}

/// A refusal only because the uids differ, by a connected socket that may
/// have been accepted (not LISTEN, not merely bound, not timewait).
fn uid_only_refusal_by_connection(new: &NewSocket, e: &ExistingSocket) -> bool {
    new.reuseport
        && e.reuseport
        && !e.is_timewait()
        && new.uid != e.uid
        && !matches!(e.state, TcpState::Listen | TcpState::Bound)
        && !(new.reuseaddr && e.reuseaddr)
}

/// The verdict without the "would it help" and "uncertain" questions.
pub fn evaluate(
    new: &NewSocket,
    existing: &[ExistingSocket],
    env: &NetEnv,
    listen: bool,
) -> Verdict {
    if let Some(v) = precheck(new, env) {
        return v;
    }
    let mut port = new.port;
    let mut ephemeral_port = None;
    if port == 0 {
        match find_free_port(new, existing, env) {
            Some(p) => {
                port = p;
                ephemeral_port = Some(p);
            }
            None => {
                return Verdict::fail(
                    Syscall::Bind,
                    libc::EADDRINUSE,
                    "no free port in ip_local_port_range",
                );
            }
        }
    } else {
        let blockers = conflicts(new, port, existing);
        if !blockers.is_empty() {
            return Verdict {
                blockers,
                ..Verdict::fail(Syscall::Bind, libc::EADDRINUSE, "the port is in use")
            };
        }
    }
    if !listen {
        return Verdict {
            ephemeral_port,
            ..Verdict::ok(Syscall::Bind)
        };
    }
    if new.proto == Proto::Udp {
        return Verdict::fail(
            Syscall::Listen,
            libc::EOPNOTSUPP,
            "UDP sockets cannot listen",
        );
    }
    // inet_csk_listen_start() -> inet_csk_get_port(sk, inet_num): the same
    // pairwise rules with the new socket now LISTEN, which changes nothing in
    // inet_bind_conflict(); kept as its own step for events that happen
    // between the two calls (the caller re-runs with a fresh snapshot).
    let blockers = conflicts(new, port, existing);
    if !blockers.is_empty() {
        return Verdict {
            blockers,
            ephemeral_port,
            ..Verdict::fail(Syscall::Listen, libc::EADDRINUSE, "the port is in use")
        };
    }
    Verdict {
        ephemeral_port,
        ..Verdict::ok(Syscall::Listen)
    }
}

/// The checks __inet_bind / __inet6_bind make before looking at other
/// sockets, in the kernel's order.
fn precheck(new: &NewSocket, env: &NetEnv) -> Option<Verdict> {
    let b = |errno, why| Some(Verdict::fail(Syscall::Bind, errno, why));
    let privileged = new.port != 0
        && (new.port as u32) < env.unprivileged_port_start
        && !new.cap_net_bind_service;
    let nonlocal_ok_v4 = env.ip_nonlocal_bind || new.freebind || new.transparent;
    match (new.family, new.addr) {
        (Family::V4, IpAddr::V6(_)) => {
            b(libc::EAFNOSUPPORT, "an IPv6 address on an AF_INET socket")
        }
        (Family::V4, IpAddr::V4(a)) => {
            if !nonlocal_ok_v4 && !env.ipv4_bindable(a) {
                return b(libc::EADDRNOTAVAIL, "the address is not local");
            }
            if privileged {
                return b(libc::EACCES, "privileged port");
            }
            None
        }
        (Family::V6, ip) => {
            let a = match ip {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            if a.is_multicast() && new.proto == Proto::Tcp {
                return b(libc::EINVAL, "a multicast address on a stream socket");
            }
            if privileged {
                return b(libc::EACCES, "privileged port");
            }
            if let Some(v4) = a.to_ipv4_mapped() {
                if new.v6only {
                    return b(libc::EINVAL, "a v4-mapped address on an IPV6_V6ONLY socket");
                }
                if !nonlocal_ok_v4 && !env.ipv4_bindable(v4) {
                    return b(libc::EADDRNOTAVAIL, "the address is not local");
                }
                return None;
            }
            if a.is_unspecified() {
                return None;
            }
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            let mc_link_local = a.is_multicast() && (a.segments()[0] & 0x000f) <= 2;
            if (link_local || mc_link_local) && new.bound_dev_if == 0 {
                return b(libc::EINVAL, "a link-local address without an interface");
            }
            let nonlocal_ok = env.ipv6_nonlocal_bind || new.freebind || new.transparent;
            if !a.is_multicast() && !nonlocal_ok && !env.ipv6_local(a) {
                if env.dad_refusal(IpAddr::V6(a)).is_some() {
                    return b(
                        libc::EADDRNOTAVAIL,
                        "the address has not passed duplicate address detection",
                    );
                }
                return b(libc::EADDRNOTAVAIL, "the address is not local");
            }
            None
        }
    }
}

/// Address of a socket, reduced to what overlap depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddrClass {
    /// AF_INET, or AF_INET6 bound to a v4-mapped address (0.0.0.0 = any).
    V4(Ipv4Addr),
    /// AF_INET6 bound to [::].
    V6Any,
    /// AF_INET6 bound to a specific, non-mapped address.
    V6(Ipv6Addr),
}

impl AddrClass {
    fn of(family: Family, ip: IpAddr) -> AddrClass {
        match (family, ip) {
            (_, IpAddr::V4(a)) => AddrClass::V4(a),
            (_, IpAddr::V6(a)) => {
                if let Some(v4) = a.to_ipv4_mapped() {
                    AddrClass::V4(v4)
                } else if a.is_unspecified() {
                    AddrClass::V6Any
                } else {
                    AddrClass::V6(a)
                }
            }
        }
    }

    fn is_wildcard(self) -> bool {
        match self {
            AddrClass::V4(a) => a.is_unspecified(),
            AddrClass::V6Any => true,
            AddrClass::V6(_) => false,
        }
    }
}

fn effective_v6only(family: Family, ip: IpAddr, v6only: bool) -> bool {
    match family {
        Family::V4 => false,
        Family::V6 => match AddrClass::of(family, ip) {
            AddrClass::V6(_) => true,
            AddrClass::V4(_) => false,
            AddrClass::V6Any => v6only,
        },
    }
}

/// Do two bound addresses overlap, and how? (`inet_rcv_saddr_equal` with
/// match_wildcard = true; symmetric.)
fn overlap(
    a_family: Family,
    a: AddrClass,
    a_v6only: bool,
    b_family: Family,
    b: AddrClass,
    b_v6only: bool,
) -> Option<Overlap> {
    use AddrClass::*;
    let hit = match (a, b) {
        (V4(x), V4(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        (V6Any, V6Any) => true,
        (V6Any, V4(_)) => !a_v6only,
        (V4(_), V6Any) => !b_v6only,
        (V6Any, V6(_)) | (V6(_), V6Any) => true,
        (V6(x), V6(y)) => x == y,
        (V6(_), V4(_)) | (V4(_), V6(_)) => false,
    };
    if !hit {
        return None;
    }
    Some(if a == b && a_family == b_family {
        Overlap::Exact
    } else if a.is_wildcard() || b.is_wildcard() {
        Overlap::Wildcard
    } else {
        Overlap::V4mapped
    })
}

fn devices_compatible(a: u32, b: u32) -> bool {
    a == 0 || b == 0 || a == b
}

fn pair_overlap(new: &NewSocket, e: &ExistingSocket) -> Option<Overlap> {
    if e.proto != new.proto
        || !e.holds_port()
        || !devices_compatible(new.bound_dev_if, e.bound_dev_if)
    {
        return None;
    }
    overlap(
        new.family,
        new.class(),
        new.effective_v6only(),
        e.family,
        e.class(),
        e.effective_v6only(),
    )
}

/// `inet_bind_conflict()`: would `e` refuse `new`, addresses aside?
fn tcp_pair_conflicts(
    new: &NewSocket,
    e: &ExistingSocket,
    relax: bool,
    reuseport_ok: bool,
) -> bool {
    let reuseport_pair = new.reuseport && e.reuseport && (e.is_timewait() || new.uid == e.uid);
    if new.reuseaddr && e.reuseaddr && e.state != TcpState::Listen {
        !relax || (!reuseport_ok && reuseport_pair)
    } else {
        !reuseport_ok || !reuseport_pair
    }
}

/// `udp_lib_lport_inuse()` for one overlapping pair that does not both have
/// SO_REUSEADDR: true = shares, false = conflicts.
fn udp_pair_shares(new: &NewSocket, e: &ExistingSocket) -> bool {
    new.reuseport && e.reuseport && new.uid == e.uid
}

/// The sockets that refuse `new` on `port` (explicit bind / listen).
fn conflicts(new: &NewSocket, port: u16, existing: &[ExistingSocket]) -> Vec<Blocker> {
    let candidates = existing.iter().enumerate().filter(|(_, e)| e.port == port);
    match new.proto {
        Proto::Tcp => candidates
            .filter_map(|(i, e)| {
                let ov = pair_overlap(new, e)?;
                tcp_pair_conflicts(new, e, true, true).then_some(Blocker {
                    index: i,
                    overlap: ov,
                })
            })
            .collect(),
        Proto::Udp => {
            let mut blockers = Vec::new();
            for (i, e) in candidates {
                if new.reuseaddr && e.reuseaddr {
                    continue;
                }
                let Some(ov) = pair_overlap(new, e) else {
                    continue;
                };
                if udp_pair_shares(new, e) {
                    if blockers.is_empty() {
                        // The kernel stops at the first overlapping socket.
                        return blockers;
                    }
                } else {
                    blockers.push(Blocker {
                        index: i,
                        overlap: ov,
                    });
                }
            }
            blockers
        }
    }
}

/// Port 0: the first port of ip_local_port_range the kernel's search would
/// accept (it starts at a random offset; any free port is as good here).
fn find_free_port(new: &NewSocket, existing: &[ExistingSocket], env: &NetEnv) -> Option<u16> {
    let (lo, hi) = env.local_port_range;
    let mut used: std::collections::HashMap<u16, Vec<&ExistingSocket>> =
        std::collections::HashMap::new();
    for e in existing
        .iter()
        .filter(|e| e.proto == new.proto && e.holds_port())
    {
        used.entry(e.port).or_default().push(e);
    }
    let free = |port: u16, relax: bool| -> bool {
        let Some(socks) = used.get(&port) else {
            return true;
        };
        socks.iter().all(|e| {
            if pair_overlap(new, e).is_none() {
                return true;
            }
            match new.proto {
                Proto::Tcp => !tcp_pair_conflicts(new, e, relax, false),
                Proto::Udp => (new.reuseaddr && e.reuseaddr) || udp_pair_shares(new, e),
            }
        })
    };
    let passes: &[bool] = if new.proto == Proto::Tcp && env.autobind_reuse {
        &[false, true]
    } else {
        &[false]
    };
    for &relax in passes {
        for port in lo..=hi {
            if port == 0 || env.reserved(port) {
                continue;
            }
            if free(port, relax) {
                return Some(port);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use libc::{EACCES, EADDRINUSE, EADDRNOTAVAIL, EINVAL};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Existing socket: "STATE ADDR:PORT" with options.
    fn ex(proto: Proto, local: &str, state: TcpState) -> ExistingSocket {
        ExistingSocket::new(proto, sa(local), state)
    }

    fn tcp(local: &str, state: TcpState) -> ExistingSocket {
        ex(Proto::Tcp, local, state)
    }

    fn udp(local: &str) -> ExistingSocket {
        ex(Proto::Udp, local, TcpState::Bound)
    }

    trait Opts: Sized {
        fn ra(self) -> Self;
        fn rp(self) -> Self;
        fn v6only(self) -> Self;
        fn uid(self, uid: u32) -> Self;
        fn dev(self, dev: u32) -> Self;
    }

    impl Opts for ExistingSocket {
        fn ra(mut self) -> Self {
            self.reuseaddr = true;
            self
        }
        fn rp(mut self) -> Self {
            self.reuseport = true;
            self
        }
        fn v6only(mut self) -> Self {
            self.v6only = true;
            self
        }
        fn uid(mut self, uid: u32) -> Self {
            self.uid = uid;
            self
        }
        fn dev(mut self, dev: u32) -> Self {
            self.bound_dev_if = dev;
            self
        }
    }

    impl Opts for NewSocket {
        fn ra(mut self) -> Self {
            self.reuseaddr = true;
            self
        }
        fn rp(mut self) -> Self {
            self.reuseport = true;
            self
        }
        fn v6only(mut self) -> Self {
            self.v6only = true;
            self
        }
        fn uid(mut self, uid: u32) -> Self {
            self.uid = uid;
            self
        }
        fn dev(mut self, dev: u32) -> Self {
            self.bound_dev_if = dev;
            self
        }
    }

    fn new_tcp(addr: &str) -> NewSocket {
        NewSocket::new(Proto::Tcp, sa(addr))
    }

    fn new_udp(addr: &str) -> NewSocket {
        NewSocket::new(Proto::Udp, sa(addr))
    }

    use TcpState::{Bound, CloseWait, Established, FinWait2, Listen, TimeWait};

    struct Row {
        name: &'static str,
        existing: Vec<ExistingSocket>,
        new: NewSocket,
        listen: bool,
        want: Option<i32>,
        overlap: Option<Overlap>,
    }

    fn row(
        name: &'static str,
        existing: Vec<ExistingSocket>,
        new: NewSocket,
        want: Option<i32>,
    ) -> Row {
        Row {
            name,
            existing,
            new,
            listen: false,
            want,
            overlap: None,
        }
    }

    fn run(rows: Vec<Row>) {
        let env = NetEnv::default();
        let mut failures = Vec::new();
        for r in &rows {
            let v = predict(&r.new, &r.existing, &env, r.listen);
            if v.errno != r.want {
                failures.push(format!(
                    "{}: want {:?}, got {:?} ({:?})",
                    r.name, r.want, v.errno, v
                ));
                continue;
            }
            if let Some(ov) = r.overlap {
                if v.blockers.first().map(|b| b.overlap) != Some(ov) {
                    failures.push(format!(
                        "{}: want overlap {:?}, got {:?}",
                        r.name, ov, v.blockers
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn with_overlap(mut r: Row, ov: Overlap) -> Row {
        r.overlap = Some(ov);
        r
    }

    fn listen(mut r: Row) -> Row {
        r.listen = true;
        r
    }

    /// The live table of kernel-notes.md, one row each.
    #[test]
    fn kernel_notes_live_table() {
        let l1 = || tcp("127.0.0.1:5000", Listen);
        run(vec![
            row(
                "LISTEN 127.0.0.1 vs plain",
                vec![l1()],
                new_tcp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "LISTEN 127.0.0.1 vs REUSEADDR",
                vec![l1()],
                new_tcp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            with_overlap(
                row(
                    "LISTEN 127.0.0.1 vs 0.0.0.0+REUSEADDR",
                    vec![l1()],
                    new_tcp("0.0.0.0:5000").ra(),
                    Some(EADDRINUSE),
                ),
                Overlap::Wildcard,
            ),
            row(
                "LISTEN 127.0.0.1 vs REUSEPORT only",
                vec![l1()],
                new_tcp("127.0.0.1:5000").rp(),
                Some(EADDRINUSE),
            ),
            row(
                "LISTEN 0.0.0.0 REUSEADDR vs 127.0.0.1 REUSEADDR",
                vec![tcp("0.0.0.0:5000", Listen).ra()],
                new_tcp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            row(
                "LISTEN REUSEPORT same uid vs REUSEPORT",
                vec![l1().rp()],
                new_tcp("127.0.0.1:5000").rp(),
                None,
            ),
            row(
                "TIME_WAIT left without REUSEADDR vs REUSEADDR",
                vec![tcp("127.0.0.1:5000", TimeWait)],
                new_tcp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            row(
                "TIME_WAIT left with REUSEADDR vs REUSEADDR",
                vec![tcp("127.0.0.1:5000", TimeWait).ra()],
                new_tcp("127.0.0.1:5000").ra(),
                None,
            ),
            row(
                "TIME_WAIT left with REUSEADDR vs plain",
                vec![tcp("127.0.0.1:5000", TimeWait).ra()],
                new_tcp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            with_overlap(
                row(
                    "[::] LISTEN v6only=0 vs AF_INET 127.0.0.1",
                    vec![tcp("[::]:5000", Listen)],
                    new_tcp("127.0.0.1:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::Wildcard,
            ),
            row(
                "[::] LISTEN v6only=1 vs AF_INET 127.0.0.1",
                vec![tcp("[::]:5000", Listen).v6only()],
                new_tcp("127.0.0.1:5000"),
                None,
            ),
            row(
                "UDP plain vs UDP REUSEADDR (new only)",
                vec![udp("127.0.0.1:5000")],
                new_udp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            row(
                "UDP REUSEADDR vs UDP REUSEADDR",
                vec![udp("127.0.0.1:5000").ra()],
                new_udp("127.0.0.1:5000").ra(),
                None,
            ),
            row(
                "port 80 as uid 65534",
                vec![],
                NewSocket {
                    cap_net_bind_service: false,
                    ..new_tcp("127.0.0.1:80").uid(65534)
                },
                Some(EACCES),
            ),
        ]);
    }

    #[test]
    fn address_overlap() {
        let v6l = || tcp("[::1]:5000", Listen);
        run(vec![
            row(
                "different specific IPv4",
                vec![tcp("127.0.0.2:5000", Listen)],
                new_tcp("127.0.0.1:5000"),
                None,
            ),
            with_overlap(
                row(
                    "same IPv4",
                    vec![tcp("127.0.0.1:5000", Listen)],
                    new_tcp("127.0.0.1:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::Exact,
            ),
            row(
                "other port",
                vec![tcp("127.0.0.1:5001", Listen)],
                new_tcp("127.0.0.1:5000"),
                None,
            ),
            with_overlap(
                row(
                    "0.0.0.0 holder vs specific",
                    vec![tcp("0.0.0.0:5000", Bound)],
                    new_tcp("127.0.0.2:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::Wildcard,
            ),
            with_overlap(
                row(
                    "0.0.0.0 vs 0.0.0.0",
                    vec![tcp("0.0.0.0:5000", Bound)],
                    new_tcp("0.0.0.0:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::Exact,
            ),
            with_overlap(
                row(
                    "[::] new v6only=0 vs IPv4 holder",
                    vec![tcp("127.0.0.1:5000", Listen)],
                    new_tcp("[::]:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::Wildcard,
            ),
            row(
                "[::] new v6only=1 vs IPv4 holder",
                vec![tcp("127.0.0.1:5000", Listen)],
                new_tcp("[::]:5000").v6only(),
                None,
            ),
            row(
                "[::] new v6only=1 vs 0.0.0.0 holder",
                vec![tcp("0.0.0.0:5000", Listen)],
                new_tcp("[::]:5000").v6only(),
                None,
            ),
            row(
                "[::] v6only=1 vs [::] v6only=0",
                vec![tcp("[::]:5000", Listen)],
                new_tcp("[::]:5000").v6only(),
                Some(EADDRINUSE),
            ),
            row(
                "[::] v6only=1 holder vs [::] v6only=1",
                vec![tcp("[::]:5000", Listen).v6only()],
                new_tcp("[::]:5000").v6only(),
                Some(EADDRINUSE),
            ),
            row(
                "[::] holder v6only=1 vs ::1",
                vec![tcp("[::]:5000", Listen).v6only()],
                new_tcp("[::1]:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "::1 holder vs [::]",
                vec![v6l()],
                new_tcp("[::]:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "::1 holder vs ::1",
                vec![v6l()],
                new_tcp("[::1]:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "::1 holder vs 0.0.0.0",
                vec![v6l()],
                new_tcp("0.0.0.0:5000"),
                None,
            ),
            row(
                "::1 holder vs 127.0.0.1",
                vec![v6l()],
                new_tcp("127.0.0.1:5000"),
                None,
            ),
            row(
                "0.0.0.0 holder vs ::1",
                vec![tcp("0.0.0.0:5000", Listen)],
                new_tcp("[::1]:5000"),
                None,
            ),
            with_overlap(
                row(
                    "v4-mapped new vs IPv4 holder",
                    vec![tcp("127.0.0.1:5000", Listen)],
                    new_tcp("[::ffff:127.0.0.1]:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::V4mapped,
            ),
            with_overlap(
                row(
                    "IPv4 new vs v4-mapped holder",
                    vec![tcp("[::ffff:127.0.0.1]:5000", Listen)],
                    new_tcp("127.0.0.1:5000"),
                    Some(EADDRINUSE),
                ),
                Overlap::V4mapped,
            ),
            row(
                "v4-mapped new vs other IPv4",
                vec![tcp("127.0.0.2:5000", Listen)],
                new_tcp("[::ffff:127.0.0.1]:5000"),
                None,
            ),
            row(
                "v4-mapped new vs [::] v6only=1",
                vec![tcp("[::]:5000", Listen).v6only()],
                new_tcp("[::ffff:127.0.0.1]:5000"),
                None,
            ),
            row(
                "v4-mapped new vs [::] v6only=0",
                vec![tcp("[::]:5000", Listen)],
                new_tcp("[::ffff:127.0.0.1]:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "v4-mapped any new vs IPv4 holder",
                vec![tcp("127.0.0.2:5000", Listen)],
                new_tcp("[::ffff:0.0.0.0]:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "v4-mapped any new vs ::1 holder",
                vec![v6l()],
                new_tcp("[::ffff:0.0.0.0]:5000"),
                None,
            ),
            row(
                "0.0.0.0 new vs [::] v6only=0 holder",
                vec![tcp("[::]:5000", Listen)],
                new_tcp("0.0.0.0:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "0.0.0.0 new vs [::] v6only=1 holder",
                vec![tcp("[::]:5000", Listen).v6only()],
                new_tcp("0.0.0.0:5000"),
                None,
            ),
        ]);
    }

    #[test]
    fn devices_uids_and_protocols() {
        run(vec![
            row(
                "both bound to different devices",
                vec![tcp("0.0.0.0:5000", Listen).dev(2)],
                new_tcp("0.0.0.0:5000").dev(3),
                None,
            ),
            row(
                "both bound to the same device",
                vec![tcp("0.0.0.0:5000", Listen).dev(2)],
                new_tcp("0.0.0.0:5000").dev(2),
                Some(EADDRINUSE),
            ),
            row(
                "only the holder bound to a device",
                vec![tcp("0.0.0.0:5000", Listen).dev(2)],
                new_tcp("0.0.0.0:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "only the new socket bound to a device",
                vec![tcp("0.0.0.0:5000", Listen)],
                new_tcp("0.0.0.0:5000").dev(2),
                Some(EADDRINUSE),
            ),
            row(
                "REUSEPORT LISTEN, other uid",
                vec![tcp("127.0.0.1:5000", Listen).rp().uid(1000)],
                new_tcp("127.0.0.1:5000").rp(),
                Some(EADDRINUSE),
            ),
            row(
                "REUSEPORT bound, other uid",
                vec![tcp("127.0.0.1:5000", Bound).rp().uid(1000)],
                new_tcp("127.0.0.1:5000").rp(),
                Some(EADDRINUSE),
            ),
            row(
                "REUSEPORT ESTABLISHED, same uid",
                vec![tcp("127.0.0.1:5000", Established).rp()],
                new_tcp("127.0.0.1:5000").rp(),
                None,
            ),
            row(
                "REUSEPORT TIME_WAIT, other uid",
                vec![tcp("127.0.0.1:5000", TimeWait).rp().uid(1000)],
                new_tcp("127.0.0.1:5000").rp(),
                None,
            ),
            row(
                "REUSEPORT holder, new without",
                vec![tcp("127.0.0.1:5000", Listen).rp()],
                new_tcp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "TCP vs UDP never conflict",
                vec![udp("0.0.0.0:5000")],
                new_tcp("0.0.0.0:5000"),
                None,
            ),
            row(
                "UDP vs TCP never conflict",
                vec![tcp("0.0.0.0:5000", Listen)],
                new_udp("0.0.0.0:5000"),
                None,
            ),
            row(
                "two plain UDP",
                vec![udp("127.0.0.1:5000")],
                new_udp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "UDP REUSEADDR holder only",
                vec![udp("127.0.0.1:5000").ra()],
                new_udp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "UDP REUSEPORT same uid",
                vec![udp("127.0.0.1:5000").rp()],
                new_udp("127.0.0.1:5000").rp(),
                None,
            ),
            row(
                "UDP REUSEPORT other uid",
                vec![udp("127.0.0.1:5000").rp().uid(1000)],
                new_udp("127.0.0.1:5000").rp(),
                Some(EADDRINUSE),
            ),
            row(
                "UDP REUSEADDR other uid",
                vec![udp("127.0.0.1:5000").ra().uid(1000)],
                new_udp("127.0.0.1:5000").ra(),
                None,
            ),
            row(
                "UDP wildcard vs specific",
                vec![udp("127.0.0.1:5000")],
                new_udp("0.0.0.0:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "UDP [::] v6only vs IPv4",
                vec![udp("127.0.0.1:5000")],
                new_udp("[::]:5000").v6only(),
                None,
            ),
            row(
                "UDP devices differ",
                vec![udp("0.0.0.0:5000").dev(2)],
                new_udp("0.0.0.0:5000").dev(3),
                None,
            ),
            row(
                "UDP: first overlapping socket in the chain decides (shares)",
                vec![udp("127.0.0.1:5000").rp(), udp("127.0.0.2:5000")],
                new_udp("0.0.0.0:5000").rp(),
                None,
            ),
            row(
                "UDP: first overlapping socket in the chain decides (refuses)",
                vec![udp("127.0.0.2:5000"), udp("127.0.0.1:5000").rp()],
                new_udp("0.0.0.0:5000").rp(),
                Some(EADDRINUSE),
            ),
        ]);
    }

    #[test]
    fn reuseaddr_and_states() {
        run(vec![
            row(
                "bound REUSEADDR both",
                vec![tcp("127.0.0.1:5000", Bound).ra()],
                new_tcp("127.0.0.1:5000").ra(),
                None,
            ),
            listen(row(
                "bound REUSEADDR both, then listen",
                vec![tcp("127.0.0.1:5000", Bound).ra()],
                new_tcp("127.0.0.1:5000").ra(),
                None,
            )),
            row(
                "bound plain vs REUSEADDR",
                vec![tcp("127.0.0.1:5000", Bound)],
                new_tcp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            row(
                "ESTABLISHED REUSEADDR (child of a REUSEADDR listener)",
                vec![tcp("127.0.0.1:5000", Established).ra()],
                new_tcp("127.0.0.1:5000").ra(),
                None,
            ),
            row(
                "ESTABLISHED plain vs REUSEADDR",
                vec![tcp("127.0.0.1:5000", Established)],
                new_tcp("127.0.0.1:5000").ra(),
                Some(EADDRINUSE),
            ),
            row(
                "CLOSE_WAIT REUSEADDR vs plain",
                vec![tcp("127.0.0.1:5000", CloseWait).ra()],
                new_tcp("127.0.0.1:5000"),
                Some(EADDRINUSE),
            ),
            row(
                "CLOSE_WAIT REUSEADDR vs REUSEADDR",
                vec![tcp("127.0.0.1:5000", CloseWait).ra()],
                new_tcp("0.0.0.0:5000").ra(),
                None,
            ),
            row(
                "timewait FIN_WAIT2 substate with REUSEPORT, other uid",
                vec![ExistingSocket {
                    timewait: true,
                    ..tcp("127.0.0.1:5000", FinWait2).rp().uid(7)
                }],
                new_tcp("127.0.0.1:5000").rp(),
                None,
            ),
            row(
                "full FIN_WAIT2 socket with REUSEPORT, other uid",
                vec![tcp("127.0.0.1:5000", FinWait2).rp().uid(7)],
                new_tcp("127.0.0.1:5000").rp(),
                Some(EADDRINUSE),
            ),
            row(
                "NEW_SYN_RECV request sockets do not hold the port",
                vec![tcp("127.0.0.1:5000", TcpState::NewSynRecv)],
                new_tcp("127.0.0.1:5000"),
                None,
            ),
            row(
                "REUSEADDR+REUSEPORT LISTEN vs REUSEADDR only",
                vec![tcp("0.0.0.0:5000", Listen).ra().rp()],
                new_tcp("0.0.0.0:5000").ra(),
                Some(EADDRINUSE),
            ),
        ]);
    }

    #[test]
    fn errnos_that_are_not_conflicts() {
        let unpriv = |n: NewSocket| NewSocket {
            cap_net_bind_service: false,
            ..n.uid(65534)
        };
        run(vec![
            row(
                "port 1023 without the capability",
                vec![],
                unpriv(new_tcp("0.0.0.0:1023")),
                Some(EACCES),
            ),
            row(
                "port 1024 without the capability",
                vec![],
                unpriv(new_tcp("0.0.0.0:1024")),
                None,
            ),
            row(
                "port 80 with the capability",
                vec![],
                new_tcp("0.0.0.0:80"),
                None,
            ),
            row(
                "port 0 is never privileged",
                vec![],
                unpriv(new_tcp("0.0.0.0:0")),
                None,
            ),
            row(
                "IPv6 port 80 without the capability",
                vec![],
                unpriv(new_tcp("[::]:80")),
                Some(EACCES),
            ),
            row(
                "non-local IPv4",
                vec![],
                new_tcp("192.0.2.1:5000"),
                Some(EADDRNOTAVAIL),
            ),
            row(
                "non-local IPv4 checked before EACCES",
                vec![],
                unpriv(new_tcp("192.0.2.1:80")),
                Some(EADDRNOTAVAIL),
            ),
            row(
                "non-local IPv4 with IP_FREEBIND",
                vec![],
                NewSocket {
                    freebind: true,
                    ..new_tcp("192.0.2.1:5000")
                },
                None,
            ),
            row(
                "non-local IPv4 with IP_TRANSPARENT",
                vec![],
                NewSocket {
                    transparent: true,
                    ..new_tcp("192.0.2.1:5000")
                },
                None,
            ),
            row(
                "127.0.0.2 is local through lo's /8",
                vec![],
                new_tcp("127.0.0.2:5000"),
                None,
            ),
            row(
                "IPv4 multicast is bindable",
                vec![],
                new_udp("224.0.0.1:5000"),
                None,
            ),
            row(
                "255.255.255.255 is bindable",
                vec![],
                new_udp("255.255.255.255:5000"),
                None,
            ),
            row(
                "non-local IPv6",
                vec![],
                new_tcp("[::2]:5000"),
                Some(EADDRNOTAVAIL),
            ),
            row(
                "IPv6 EACCES before EADDRNOTAVAIL",
                vec![],
                unpriv(new_tcp("[::2]:80")),
                Some(EACCES),
            ),
            row(
                "non-local v4-mapped",
                vec![],
                new_tcp("[::ffff:192.0.2.1]:5000"),
                Some(EADDRNOTAVAIL),
            ),
            row(
                "v4-mapped on a v6only socket",
                vec![],
                new_tcp("[::ffff:127.0.0.1]:5000").v6only(),
                Some(EINVAL),
            ),
            row(
                "IPv6 multicast on TCP",
                vec![],
                new_tcp("[ff02::1]:5000").dev(1),
                Some(EINVAL),
            ),
            row(
                "IPv6 multicast on UDP needs no local address",
                vec![],
                new_udp("[ff05::1]:5000"),
                None,
            ),
            row(
                "link-local without an interface",
                vec![],
                new_tcp("[fe80::1]:5000"),
                Some(EINVAL),
            ),
            row(
                "EADDRNOTAVAIL wins over a conflict",
                vec![tcp("0.0.0.0:5000", Listen)],
                new_tcp("192.0.2.1:5000"),
                Some(EADDRNOTAVAIL),
            ),
        ]);
        let mut env = NetEnv {
            ip_nonlocal_bind: true,
            ..NetEnv::default()
        };
        assert_eq!(
            predict(&new_tcp("192.0.2.1:5000"), &[], &env, false).errno,
            None
        );
        env.ipv6_nonlocal_bind = true;
        assert_eq!(
            predict(&new_tcp("[2001:db8::1]:5000"), &[], &env, false).errno,
            None
        );

        // IPv6 addresses that have not passed duplicate address detection
        // are refused like absent ones, unless another interface has the
        // same address for real.
        let on = |addr: &str, dev: &str, dad: Dad| LocalAddr {
            addr: addr.parse().unwrap(),
            prefix_len: 64,
            loopback: false,
            broadcast: None,
            dev: dev.into(),
            dad,
        };
        let mut env = NetEnv::default();
        env.local_addrs.extend([
            on("fd00::7", "eth1", Dad::Pending),
            on("fd00::8", "eth1", Dad::Failed),
            on("fd00::9", "eth1", Dad::Failed),
            on("fd00::9", "eth2", Dad::Usable),
        ]);
        for (addr, errno, refusal) in [
            (
                "fd00::7",
                Some(EADDRNOTAVAIL),
                Some(("eth1".to_string(), Dad::Pending)),
            ),
            (
                "fd00::8",
                Some(EADDRNOTAVAIL),
                Some(("eth1".to_string(), Dad::Failed)),
            ),
            ("fd00::9", None, None),
        ] {
            let v = predict(&new_tcp(&format!("[{addr}]:5000")), &[], &env, false);
            assert_eq!(v.errno, errno, "{addr}: {v:?}");
            assert_eq!(env.dad_refusal(addr.parse().unwrap()), refusal, "{addr}");
        }
        env.ipv6_nonlocal_bind = true;
        assert_eq!(
            predict(&new_tcp("[fd00::7]:5000"), &[], &env, false).errno,
            None
        );
    }

    #[test]
    fn reserved_ports_counted_inside_the_range_once() {
        let env = |reserved: Vec<(u16, u16)>| NetEnv {
            local_port_range: (40000, 40009),
            reserved_ports: reserved,
            ..NetEnv::default()
        };
        for (reserved, want) in [
            (vec![], 0),
            (vec![(40000, 40007)], 8),
            (vec![(39990, 40001), (40009, 50000)], 3),
            (vec![(40002, 40005), (40004, 40006), (40006, 40006)], 5),
            (vec![(8080, 8080)], 0),
            (vec![(0, 65535)], 10),
        ] {
            assert_eq!(
                env(reserved.clone()).reserved_in_range(),
                want,
                "{reserved:?}"
            );
        }
    }

    #[test]
    fn would_help_flags() {
        let env = NetEnv::default();
        let v = predict(
            &new_tcp("127.0.0.1:5000"),
            &[tcp("127.0.0.1:5000", TimeWait).ra()],
            &env,
            true,
        );
        assert_eq!(v.errno, Some(EADDRINUSE));
        assert!(v.reuseaddr_would_help && !v.reuseport_would_help);

        let v = predict(
            &new_tcp("127.0.0.1:5000"),
            &[tcp("127.0.0.1:5000", TimeWait)],
            &env,
            true,
        );
        assert!(!v.reuseaddr_would_help && !v.reuseport_would_help);

        let v = predict(
            &new_tcp("127.0.0.1:5000"),
            &[tcp("127.0.0.1:5000", Listen).rp()],
            &env,
            true,
        );
        assert!(!v.reuseaddr_would_help && v.reuseport_would_help);

        let v = predict(
            &new_tcp("127.0.0.1:5000"),
            &[tcp("127.0.0.1:5000", Listen)],
            &env,
            true,
        );
        assert!(!v.reuseaddr_would_help && !v.reuseport_would_help);
        assert_eq!(
            v.blockers,
            vec![Blocker {
                index: 0,
                overlap: Overlap::Exact
            }]
        );
    }

    #[test]
    fn unknown_flags_make_the_verdict_uncertain() {
        let env = NetEnv::default();
        let tw = ExistingSocket {
            flags_known: false,
            ..tcp("127.0.0.1:5000", TimeWait)
        };
        // Without SO_REUSEADDR the new socket fails whatever the old one had.
        let v = predict(
            &new_tcp("127.0.0.1:5000"),
            std::slice::from_ref(&tw),
            &env,
            true,
        );
        assert!(v.would_fail() && !v.uncertain);
        // With it, the answer depends on the flag nobody could see.
        let v = predict(
            &new_tcp("127.0.0.1:5000").ra(),
            std::slice::from_ref(&tw),
            &env,
            true,
        );
        assert!(v.would_fail() && v.uncertain);
    }

    #[test]
    fn uid_refusal_by_an_accepted_socket_is_uncertain() {
        // The bucket's fast path may let the listener's uid in (live: listener
        // uid 65534 gone, child accepted as uid 0, new socket uid 65534 binds).
        let env = NetEnv::default();
        let child = tcp("127.0.0.1:5000", Established).rp().uid(0);
        let v = predict(
            &new_tcp("127.0.0.1:5000").rp().uid(65534),
            std::slice::from_ref(&child),
            &env,
            true,
        );
        assert_eq!(v.errno, Some(EADDRINUSE));
        assert!(v.uncertain);
        // A listener's uid is what it is.
        let l = tcp("127.0.0.1:5000", Listen).rp().uid(0);
        let v = predict(
            &new_tcp("127.0.0.1:5000").rp().uid(65534),
            std::slice::from_ref(&l),
            &env,
            true,
        );
        assert!(v.would_fail() && !v.uncertain);
    }

    #[test]
    fn ephemeral_ports() {
        let mut env = NetEnv {
            local_port_range: (40000, 40001),
            ..NetEnv::default()
        };
        let full = vec![
            tcp("127.0.0.1:40000", TimeWait).ra(),
            tcp("127.0.0.1:40001", Established).ra(),
        ];
        // relax=false: SO_REUSEADDR does not share during the search.
        let v = predict(&new_tcp("127.0.0.1:0").ra(), &full, &env, false);
        assert_eq!(v.errno, Some(EADDRINUSE));
        assert_eq!(v.reason, Some("no free port in ip_local_port_range"));
        // ... unless ip_autobind_reuse=1.
        env.autobind_reuse = true;
        let v = predict(&new_tcp("127.0.0.1:0").ra(), &full, &env, false);
        assert_eq!(v.errno, None);
        assert!(v.ephemeral_port.is_some());
        env.autobind_reuse = false;
        // Another address does not overlap: the port is free for it.
        let v = predict(&new_tcp("127.0.0.2:0"), &full, &env, true);
        assert_eq!((v.errno, v.ephemeral_port), (None, Some(40000)));
        // Reserved ports are skipped.
        env.reserved_ports = vec![(40000, 40001)];
        assert_eq!(
            predict(&new_tcp("127.0.0.2:0"), &[], &env, false).errno,
            Some(EADDRINUSE)
        );
    }

    #[test]
    fn udp_cannot_listen() {
        let v = predict(&new_udp("127.0.0.1:5000"), &[], &NetEnv::default(), true);
        assert_eq!(
            (v.errno, v.syscall),
            (Some(libc::EOPNOTSUPP), Syscall::Listen)
        );
    }
}
