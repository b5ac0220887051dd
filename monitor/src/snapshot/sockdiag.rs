//! TCP and UDP sockets of the current network namespace through netlink
//! sock_diag (what `ss` uses), IPv4 and IPv6, every state.
//!
//! The requests (`inet_diag_req_v2` per family; for TCP the older
//! `inet_diag_req`, whose dump covers both families in one walk of the
//! kernel's connection hash) and the reply (`inet_diag_msg` followed by
//! attributes) are fixed kernel ABI and are encoded here by hand over a
//! `netlink-sys` socket: `netlink-packet-sock-diag` 0.5 (the current release)
//! drops `idiag_expires` for TIME_WAIT sockets (its `Timer::TimeWait` has no
//! duration) and has no name for the bound-inactive state, and both are
//! needed here.
//!
//! What the reply gives per socket: family, state (timewait sockets report
//! their substate, TIME_WAIT or FIN_WAIT2, with timer 3), local and remote
//! endpoints, bound device (`idiag_if`), cookie, uid, inode, remaining timer
//! (ms), and as attributes IPV6_V6ONLY (`INET_DIAG_SKV6ONLY`, full AF_INET6
//! sockets) and `INET_DIAG_SOCKOPT` (5.10+: freebind, transparent,
//! bind_address_no_port ...). It does NOT give SO_REUSEADDR or SO_REUSEPORT:
//! `struct inet_diag_sockopt` has no bit for them. See `flags.rs` for how they
//! are filled in.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

use crate::event::Proto;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The request type of the first inet_diag (`struct inet_diag_req`), still
/// served for TCP: its dump names no family (the kernel sets AF_UNSPEC), so
/// one walk of the connection table answers for IPv4 and IPv6 at once.
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_SKV6ONLY: u16 = 11;
const INET_DIAG_SOCKOPT: u16 = 22;
const NLA_HDRLEN: usize = 4;
/// Request attribute carrying a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Filter ops: always jump `no`; local port equals (Linux 4.17+).
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;

/// Every TCP state bit, including TCP_NEW_SYN_RECV (12) and
/// TCP_BOUND_INACTIVE (13, 6.8+: bound sockets neither listening nor
/// connected are dumped only when this bit is asked for).
pub const ALL_STATES: u32 = 0xffff_ffff;

/// Every state but TIME_WAIT (6). The kernel tests a timewait sock's
/// substate against the mask (`inet_diag_dump_icsk`), so timewait socks
/// still in FIN_WAIT2 are listed and those in TIME_WAIT are skipped before
/// any record of them is built.
pub const NOT_TIME_WAIT: u32 = ALL_STATES & !(1 << 6);

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagSocket {
    pub proto: Proto,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u8,
    /// Kernel state number (include/net/tcp_states.h); for a timewait socket
    /// its substate.
    pub state: u8,
    /// idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 probe.
    pub timer: u8,
    /// Remaining time of that timer.
    pub expires_ms: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bound_dev_if: u32,
    pub cookie: u64,
    pub uid: u32,
    pub inode: u32,
    pub v6only: Option<bool>,
    /// Bits of `struct inet_diag_sockopt` (byte 0, byte 1), when present.
    pub sockopt: Option<[u8; 2]>,
}

impl DiagSocket {
    /// An `inet_timewait_sock` (timer 3 is only ever set for those).
    pub fn is_timewait(&self) -> bool {
        self.proto == Proto::Tcp && self.timer == 3
    }
    pub fn freebind(&self) -> bool {
        self.sockopt.is_some_and(|b| b[0] & 0x04 != 0)
    }
    pub fn transparent(&self) -> bool {
        self.sockopt.is_some_and(|b| b[0] & 0x20 != 0)
    }
}

/// Dump every socket of `proto` in both families.
pub fn dump(proto: Proto) -> io::Result<Vec<DiagSocket>> {
    dump_ports(proto, &[], ALL_STATES)
}

/// Dump the sockets of `proto` whose local port is one of `ports` (every
/// socket when empty), in both families. The kernel filters: a namespace
/// with 30,000 TIME_WAIT sockets answers a one-port question with a few
/// records instead of all of them. Only sockets in `states` (a mask of
/// `1 << state`; [`ALL_STATES`], [`NOT_TIME_WAIT`]).
pub fn dump_ports(proto: Proto, ports: &[u16], states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    visit_ports(proto, ports, states, |s| out.push(s))?;
    Ok(out)
}

/// [`dump_ports`], handing each socket to `visit` as it is parsed instead
/// of collecting them: a census of a namespace with 260,000 timewait socks
/// keeps two numbers of each, not a 100-byte record (measured: collecting
/// them raised a churning `watch`'s resident memory by tens of MiB, which
/// the allocator kept).
///
/// TCP is asked once for both families (`TCPDIAG_GETSOCK`): the kernel
/// walks its whole connection hash (shared by every namespace and both
/// families: 262,144 buckets here) for any dump, and under churn with
/// 30,000 timewait socks each walk took 15-20 ms, during which a failed
/// bind waited for its evidence. A kernel that refuses that request type is
/// asked per family.
pub fn visit_ports(
    proto: Proto,
    ports: &[u16],
    states: u32,
    mut visit: impl FnMut(DiagSocket),
) -> io::Result<()> {
    if proto == Proto::Tcp {
        let mut visited = false;
        let req = request(Ask::TcpBothFamilies, SEQ, ports, states);
        match send_dump(&req, proto, &mut |s| {
            visited = true;
            visit(s)
        }) {
            Ok(()) => return Ok(()),
            // Refused before any socket came (no such request type): per
            // family.
            Err(e) if !visited && refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    dump_family(proto, libc::AF_INET as u8, ports, states, &mut visit)?;
    match dump_family(proto, libc::AF_INET6 as u8, ports, states, &mut visit) {
        Ok(()) => Ok(()),
        // No IPv6 in this kernel: nothing to list.
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT)
                || e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether a dump request was refused as a kind the kernel does not serve.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP | libc::EAFNOSUPPORT)
    )
}

/// The sequence number of every request (each dump has a netlink socket
/// of its own).
const SEQ: u32 = 0x7477_6d6e; // "twmn"

/// What a dump asks for.
#[derive(Clone, Copy)]
enum Ask {
    /// `SOCK_DIAG_BY_FAMILY` with `inet_diag_req_v2`: one protocol, one family.
    Family(Proto, u8),
    /// `TCPDIAG_GETSOCK` with `inet_diag_req`: TCP, both families.
    TcpBothFamilies,
}

fn request(ask: Ask, seq: u32, ports: &[u16], states: u32) -> Vec<u8> {
    let filter = port_filter(ports);
    let attr_len = if filter.is_empty() {
        0
    } else {
        NLA_HDRLEN + filter.len()
    };
    let (kind, req_len) = match ask {
        Ask::Family(..) => (SOCK_DIAG_BY_FAMILY, 56),
        Ask::TcpBothFamilies => (TCPDIAG_GETSOCK, 60),
    };
    let len = NLMSG_HDRLEN + req_len + attr_len;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_sockid: all zero, cookie INET_DIAG_NOCOOKIE
    let any_socket = |b: &mut Vec<u8>| {
        b.extend_from_slice(&[0u8; 40]);
        b.extend_from_slice(&u32::MAX.to_ne_bytes());
        b.extend_from_slice(&u32::MAX.to_ne_bytes());
    };
    match ask {
        Ask::Family(proto, family) => {
            // inet_diag_req_v2
            b.push(family);
            b.push(match proto {
                Proto::Tcp => libc::IPPROTO_TCP as u8,
                Proto::Udp => libc::IPPROTO_UDP as u8,
            });
            b.push(0); // idiag_ext: nothing extra; SKV6ONLY and SOCKOPT come anyway
            b.push(0);
            b.extend_from_slice(&states.to_ne_bytes());
            any_socket(&mut b);
        }
        Ask::TcpBothFamilies => {
            // inet_diag_req: family (ignored by a dump), the address
            // lengths and idiag_ext, the socket id, the states, idiag_dbs.
            b.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
            any_socket(&mut b);
            b.extend_from_slice(&states.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
        }
    }
    if !filter.is_empty() {
        b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        b.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        b.extend_from_slice(&filter);
    }
    debug_assert_eq!(b.len(), len);
    b
}

/// inet_diag bytecode accepting a socket whose local port is any of
/// `ports` (empty: no filter). The kernel runs it per socket: an op is
/// `{code, yes, no}` (a port test keeps its port in the `no` of a second
/// op); a true test moves on `yes` bytes, a false one `no` bytes; ending
/// exactly at the end accepts, 4 bytes past it rejects. The kernel also
/// insists that every `no` lands where the chain of `yes` jumps passes, so
/// the tests are laid out in a row: a match falls through to an
/// unconditional JMP whose `no` reaches the end; a miss skips that JMP to
/// the next test; the last miss goes past the end.
fn port_filter(ports: &[u16]) -> Vec<u8> {
    const TEST: usize = 8;
    const JMP: usize = 4;
    // The jumps are 16-bit; far more ports than any question asks for.
    if ports.is_empty() || ports.len() > 1024 {
        return Vec::new();
    }
    let total = ports.len() * (TEST + JMP) - JMP;
    let mut b = Vec::with_capacity(total);
    let op = |b: &mut Vec<u8>, code: u8, yes: usize, no: usize| {
        b.push(code);
        b.push(yes as u8);
        b.extend_from_slice(&(no as u16).to_ne_bytes());
    };
    for (i, port) in ports.iter().enumerate() {
        let last = i + 1 == ports.len();
        op(
            &mut b,
            INET_DIAG_BC_S_EQ,
            TEST,
            if last { TEST + 4 } else { TEST + JMP },
        );
        op(&mut b, 0, 0, *port as usize);
        if !last {
            let left = total - b.len();
            op(&mut b, INET_DIAG_BC_JMP, JMP, left);
        }
    }
    debug_assert_eq!(b.len(), total);
    b
}

fn dump_family(
    proto: Proto,
    family: u8,
    ports: &[u16],
    states: u32,
    visit: &mut impl FnMut(DiagSocket),
) -> io::Result<()> {
    send_dump(
        &request(Ask::Family(proto, family), SEQ, ports, states),
        proto,
        visit,
    )
}

/// Send one dump request, hand each socket of the reply to `visit`.
fn send_dump(req: &[u8], proto: Proto, visit: &mut impl FnMut(DiagSocket)) -> io::Result<()> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    let seq = SEQ;
    sock.send(req, 0)?;
    loop {
        let (buf, _) = sock.recv_from_full()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag: empty reply",
            ));
        }
        if parse_datagram(&buf, proto, seq, visit)? {
            return Ok(());
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Parse one netlink datagram; Ok(true) when the dump is complete.
fn parse_datagram(
    buf: &[u8],
    proto: Proto,
    seq: u32,
    visit: &mut impl FnMut(DiagSocket),
) -> io::Result<bool> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let kind = u16_at(buf, off + 4);
        let mseq = u32_at(buf, off + 8);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sock_diag: truncated message",
            ));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        if mseq == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let err = if payload.len() >= 4 {
                        u32_at(payload, 0) as i32
                    } else {
                        -libc::EIO
                    };
                    if err != 0 {
                        return Err(io::Error::from_raw_os_error(-err));
                    }
                }
                // A reply has the request's type.
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    if let Some(s) = parse_msg(payload, proto) {
                        visit(s);
                    }
                }
                _ => {}
            }
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

fn parse_msg(p: &[u8], proto: Proto) -> Option<DiagSocket> {
    if p.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = p[0];
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |at: usize| -> IpAddr {
        if family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    let (src, dst) = (addr(8), addr(24));
    let cookie = u32_at(p, 44) as u64 | ((u32_at(p, 48) as u64) << 32);
    let mut s = DiagSocket {
        proto,
        family,
        state: p[1],
        timer: p[2],
        expires_ms: u32_at(p, 52),
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        bound_dev_if: u32_at(p, 40),
        cookie,
        uid: u32_at(p, 64),
        inode: u32_at(p, 68),
        v6only: None,
        sockopt: None,
    };
    let mut off = INET_DIAG_MSG_LEN;
    while off + 4 <= p.len() {
        let alen = u16_at(p, off) as usize;
        let atype = u16_at(p, off + 2) & 0x3fff;
        if alen < 4 || off + alen > p.len() {
            break;
        }
        let data = &p[off + 4..off + alen];
        match atype {
            INET_DIAG_SKV6ONLY if !data.is_empty() => s.v6only = Some(data[0] != 0),
            INET_DIAG_SOCKOPT if data.len() >= 2 => s.sockopt = Some([data[0], data[1]]),
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-walk TCP request (`TCPDIAG_GETSOCK`) is served by this
    /// kernel and answers what the two per-family requests answer: both
    /// families, their states, inodes, cookies and IPV6_V6ONLY.
    #[test]
    fn one_tcp_dump_lists_both_families_as_the_per_family_dumps_do() {
        use crate::event::Endpoint;
        use crate::scenario::{Sock, SockOpts};
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = |v6only, ip: &str| {
            let s = Sock::new(
                true,
                Proto::Tcp,
                SockOpts {
                    v6only,
                    ..SockOpts::PLAIN
                },
            )
            .unwrap();
            s.bind(Endpoint::new(ip.parse().unwrap(), 0)).unwrap();
            s.listen(1).unwrap();
            s
        };
        let (only, dual) = (v6(true, "::1"), v6(false, "::"));
        let ports = [
            v4.local_addr().unwrap().port(),
            only.local().unwrap().port(),
            dual.local().unwrap().port(),
        ];
        let sorted = |mut v: Vec<DiagSocket>| {
            v.sort_by_key(|d| (d.local.port(), d.family));
            v
        };
        let mut one = Vec::new();
        send_dump(
            &request(Ask::TcpBothFamilies, SEQ, &ports, ALL_STATES),
            Proto::Tcp,
            &mut |d| one.push(d),
        )
        .expect("TCPDIAG_GETSOCK is served");
        let mut per_family = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            dump_family(Proto::Tcp, family, &ports, ALL_STATES, &mut |d| {
                per_family.push(d)
            })
            .unwrap();
        }
        let (one, per_family) = (sorted(one), sorted(per_family));
        assert_eq!(one, per_family);
        let got: Vec<(u16, u8, Option<bool>)> = one
            .iter()
            .map(|d| (d.local.port(), d.family, d.v6only))
            .collect();
        let (inet, inet6) = (libc::AF_INET as u8, libc::AF_INET6 as u8);
        let mut want = vec![
            (ports[0], inet, None),
            (ports[1], inet6, Some(true)),
            (ports[2], inet6, Some(false)),
        ];
        want.sort_by_key(|w| (w.0, w.1));
        assert_eq!(got, want);
        assert!(one
            .iter()
            .all(|d| d.state == 10 && d.inode != 0 && d.cookie != 0));
    }

    /// The kernel runs the port filter (sock_diag dumps need no privilege):
    /// asked for two of three listening ports it returns those two only.
    #[test]
    fn the_kernel_filters_the_dump_by_local_port() {
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let asked = [ports[0], ports[2]];
        let got = dump_ports(Proto::Tcp, &asked, ALL_STATES).unwrap();
        let mut seen: Vec<u16> = got.iter().map(|d| d.local.port()).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut want = asked.to_vec();
        want.sort_unstable();
        assert_eq!(seen, want, "only the asked ports, both of them");
        let all = dump(Proto::Tcp).unwrap();
        for p in &ports {
            assert!(
                all.iter().any(|d| d.local.port() == *p),
                "unfiltered dump has {p}"
            );
        }
        // One port; the asked one last among many.
        let one = dump_ports(Proto::Tcp, &ports[1..2], ALL_STATES).unwrap();
        assert!(!one.is_empty() && one.iter().all(|d| d.local.port() == ports[1]));
        let mut many: Vec<u16> = (1..=300).collect();
        many.push(ports[1]);
        let got = dump_ports(Proto::Tcp, &many, ALL_STATES).unwrap();
        assert!(got.iter().any(|d| d.local.port() == ports[1]));
        assert!(got.iter().all(|d| many.contains(&d.local.port())));
    }

    /// The state mask tests a timewait sock's substate: without TIME_WAIT
    /// the kernel lists a server's timewait sock still in FIN_WAIT2 (its
    /// peer has not closed) and leaves out one in TIME_WAIT, which the
    /// full mask lists.
    #[test]
    fn a_dump_without_time_wait_keeps_the_timewait_socks_in_fin_wait2() {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // The server closes first in both; only the second peer closes.
        let open = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(l.accept().unwrap().0);
        let closed = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(l.accept().unwrap().0);
        drop(closed);
        let peer = |c: &TcpStream| c.local_addr().unwrap();
        let want_open = peer(&open);
        let server_side = |states| {
            let mut got = Vec::new();
            for _ in 0..100 {
                got = dump_ports(Proto::Tcp, &[port], states)
                    .unwrap()
                    .into_iter()
                    .filter(|d| d.is_timewait())
                    .map(|d| (d.remote, d.state))
                    .collect::<Vec<_>>();
                got.sort();
                if got.len() == 2 || states != ALL_STATES {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            got
        };
        let all = server_side(ALL_STATES);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.contains(&(want_open, 5)), "FIN_WAIT2 (5): {all:?}");
        let without = server_side(NOT_TIME_WAIT);
        assert_eq!(without, vec![(want_open, 5)], "TIME_WAIT left out");
        drop(open);
    }

    #[test]
    fn parses_a_timewait_reply_with_its_timer() {
        // inet_diag_msg for 127.0.0.1:8080 -> 127.0.0.1:40000, TIME_WAIT,
        // timer 3, 41000 ms left, cookie 0x1_0000_0002.
        let mut m = vec![0u8; INET_DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = 6;
        m[2] = 3;
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[6..8].copy_from_slice(&40000u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[127, 0, 0, 1]);
        m[44..48].copy_from_slice(&2u32.to_ne_bytes());
        m[48..52].copy_from_slice(&1u32.to_ne_bytes());
        m[52..56].copy_from_slice(&41000u32.to_ne_bytes());
        // attribute SOCKOPT with freebind and transparent
        m.extend_from_slice(&6u16.to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_SOCKOPT.to_ne_bytes());
        m.extend_from_slice(&[0x24, 0x00, 0, 0]);
        let mut dgram = Vec::new();
        dgram.extend_from_slice(&((NLMSG_HDRLEN + m.len()) as u32).to_ne_bytes());
        dgram.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        dgram.extend_from_slice(&0u16.to_ne_bytes());
        dgram.extend_from_slice(&7u32.to_ne_bytes());
        dgram.extend_from_slice(&0u32.to_ne_bytes());
        dgram.extend_from_slice(&m);
        let mut out = Vec::new();
        assert!(!parse_datagram(&dgram, Proto::Tcp, 7, &mut |s| out.push(s)).unwrap());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert!(s.is_timewait());
        assert_eq!(s.expires_ms, 41000);
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(s.cookie, 0x1_0000_0002);
        assert!(s.freebind() && s.transparent());
    }

    #[test]
    fn lists_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = dump(Proto::Tcp).unwrap();
        let me = all
            .iter()
            .find(|s| s.local.port() == port && s.state == 10)
            .expect("the listener is listed");
        assert!(me.inode != 0);
        assert_eq!(me.uid, unsafe { libc::geteuid() });
    }
}
