//! What exists now in the calling thread's network namespace: TCP and UDP
//! sockets (all states, TIME_WAIT with its remaining timer), who owns them,
//! their SO_REUSEADDR / SO_REUSEPORT where they can be learnt, and the
//! namespace's sysctls and local addresses. Everything is read from the
//! namespace of the *calling thread* (sock_diag and rtnetlink sockets are
//! created there, sysctls are read through /proc/sys and
//! /proc/thread-self), so a thread that entered another namespace sees that
//! one. No root needed for the own namespace; without root, other users'
//! processes show no owner and their sockets' flags are guesses.
//!
//! Limits: sock_diag has no SO_REUSEADDR / SO_REUSEPORT (see `flags.rs` for
//! how they are filled and when they stay guesses, `flags_known == false`);
//! a timewait socket's `left_by` is not known here (the live monitor knows
//! it from events).

pub mod flags;
pub mod owners;
pub mod sockdiag;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::event::{Proto, TcpState};
use crate::rules::{Dad, ExistingSocket, Family, LocalAddr, NetEnv, NewSocket};

pub use owners::{Owner, OwnerMap};
pub use sockdiag::DiagSocket;

/// How much work to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only keep sockets on these ports (empty: all). Owner scan and flag
    /// reading are limited to the kept sockets.
    pub ports: Vec<u16>,
    /// Read SO_REUSEADDR / SO_REUSEPORT of owned sockets via pidfd_getfd.
    pub read_flags: bool,
    /// Learn timewait sockets' flags with probe binds (see flags.rs).
    pub probe_timewait: bool,
    /// Leave out timewait socks in TIME_WAIT (those still in FIN_WAIT2
    /// are listed): for a look whose caller follows them through events.
    pub without_time_wait: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ports: Vec::new(),
            read_flags: true,
            probe_timewait: true,
            without_time_wait: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// UDP sockets in sock_diag order (the kernel's hash chain order).
    pub sockets: Vec<ExistingSocket>,
    pub owners: OwnerMap,
    pub env: NetEnv,
    /// Inode of the network namespace.
    pub netns: Option<u64>,
    /// Things that could not be seen, one sentence each.
    pub notes: Vec<String>,
}

impl Snapshot {
    /// The process to name for a socket (lowest pid holding it).
    pub fn owner_of(&self, s: &ExistingSocket) -> Option<crate::event::Process> {
        if s.inode == 0 {
            return None;
        }
        self.owners.first(s.inode)
    }

    /// The processes beside `owner` (a pid) that hold the socket's file,
    /// each once, lowest pid first, at most `SocketSeen::SHARED_MAX`.
    pub fn shared_with(
        &self,
        s: &ExistingSocket,
        owner: Option<u32>,
    ) -> Vec<crate::event::Process> {
        self.owners.shared_with(s.inode, owner)
    }

    /// The process to name for a socket: `opener` (the pid that bound it,
    /// as the events told) while it still holds it, otherwise the lowest
    /// pid. A server's workers share its listener: naming the server is what
    /// a reader expects, and naming another only when the server is no
    /// longer among the holders lets that stand for "it was inherited".
    pub fn owner_preferring(
        &self,
        s: &ExistingSocket,
        opener: Option<u32>,
    ) -> Option<crate::event::Process> {
        if s.inode == 0 {
            return None;
        }
        let owners = self.owners.owners(s.inode);
        owners
            .iter()
            .find(|o| Some(o.pid) == opener)
            .or(owners.first())
            .map(owners::Owner::process)
    }

    /// TIME_WAIT sockets (timewait sockets, either substate) whose local port
    /// is in `range`.
    pub fn timewait_in_range(&self, range: (u16, u16)) -> usize {
        self.sockets
            .iter()
            .filter(|s| {
                s.proto == Proto::Tcp && s.is_timewait() && s.port >= range.0 && s.port <= range.1
            })
            .count()
    }
}

/// Take a snapshot of the calling thread's network namespace.
pub fn take(opts: &Options) -> anyhow::Result<Snapshot> {
    let mut notes = Vec::new();
    let mut sockets = Vec::new();
    let states = match opts.without_time_wait {
        true => sockdiag::NOT_TIME_WAIT,
        false => sockdiag::ALL_STATES,
    };
    for proto in [Proto::Tcp, Proto::Udp] {
        let diag = sockdiag::dump_ports(proto, &opts.ports, states).map_err(|e| {
            anyhow::anyhow!("sock_diag dump of {} sockets failed: {e}", proto.as_str())
        })?;
        sockets.extend(
            diag.iter()
                .filter(|d| opts.ports.is_empty() || opts.ports.contains(&d.local.port()))
                .filter_map(to_existing),
        );
    }
    let wanted: HashSet<u64> = sockets
        .iter()
        .filter(|s| s.inode != 0)
        .map(|s| s.inode)
        .collect();
    let owners = OwnerMap::scan_wanted(&wanted);
    if owners.unreadable > 0 {
        notes.push(format!(
            "the descriptors of {} processes could not be read (run as root to name every owner)",
            owners.unreadable
        ));
    }
    let env = read_env(&mut notes);
    let mut snap = Snapshot {
        sockets,
        owners,
        env,
        netns: netns_inode(),
        notes,
    };
    if opts.read_flags {
        resolve_owned_flags(&mut snap);
    }
    resolve_timewait_flags(&mut snap, opts.probe_timewait);
    let guessed = snap.sockets.iter().filter(|s| !s.flags_known).count();
    if guessed > 0 {
        snap.notes.push(format!(
            "SO_REUSEADDR/SO_REUSEPORT of {guessed} socket(s) could not be read (sock_diag does not report them) and were guessed"
        ));
    }
    Ok(snap)
}

/// sock_diag's view -> the rules' model. Unknown flags start as "off, not
/// known".
pub fn to_existing(d: &DiagSocket) -> Option<ExistingSocket> {
    if d.local.port() == 0 {
        return None;
    }
    let family = if d.family == libc::AF_INET6 as u8 {
        Family::V6
    } else {
        Family::V4
    };
    let kstate = TcpState::from_kernel(d.state);
    let state = match d.proto {
        Proto::Udp => TcpState::Bound,
        Proto::Tcp => match d.state {
            // TCP_CLOSE with a port: bound, not listening nor connected;
            // 13 = TCP_BOUND_INACTIVE as some kernels report it.
            7 | 13 => TcpState::Bound,
            _ => kstate?,
        },
    };
    let connected = !d.remote.ip().is_unspecified() || d.remote.port() != 0;
    let timewait = d.is_timewait();
    Some(ExistingSocket {
        proto: d.proto,
        family,
        local: d.local.ip(),
        port: d.local.port(),
        state,
        remote: connected.then_some(d.remote),
        timewait,
        reuseaddr: false,
        reuseport: false,
        v6only: d.v6only.unwrap_or(false),
        uid: d.uid,
        bound_dev_if: d.bound_dev_if,
        flags_known: false,
        inode: d.inode as u64,
        cookie: d.cookie,
        expires_in_ms: timewait.then_some(d.expires_ms as u64),
    })
}

fn resolve_owned_flags(snap: &mut Snapshot) {
    for s in snap.sockets.iter_mut().filter(|s| s.inode != 0) {
        for owner in snap.owners.owners(s.inode) {
            if let Some(f) = flags::read_owned(owner, s.inode) {
                s.reuseaddr = f.reuseaddr;
                s.reuseport = f.reuseport;
                s.flags_known = true;
                break;
            }
        }
    }
}

/// Address class key: timewait sockets on one address share one answer.
fn addr_key(s: &ExistingSocket) -> (IpAddr, u16, u32) {
    let ip = match s.local {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
        v4 => v4,
    };
    (ip, s.port, s.bound_dev_if)
}

fn resolve_timewait_flags(snap: &mut Snapshot, probe: bool) {
    // Indexed once: client-side timewait sockets each have a port of their
    // own, so scanning every socket once per group was quadratic (about a
    // minute of start-up with 100,000 of them).
    let mut groups: HashMap<(IpAddr, u16, u32), Vec<usize>> = HashMap::new();
    let mut on_port: HashMap<u16, Vec<&ExistingSocket>> = HashMap::new();
    for (i, s) in snap.sockets.iter().enumerate() {
        if s.proto != Proto::Tcp {
            continue;
        }
        if !s.is_timewait() {
            on_port.entry(s.port).or_default().push(s);
        } else if !s.flags_known {
            groups.entry(addr_key(s)).or_default().push(i);
        }
    }
    let mut answers = Vec::with_capacity(groups.len());
    for ((ip, port, dev), members) in groups {
        let others = on_port.get(&port).map(Vec::as_slice).unwrap_or_default();
        let learnt = if probe && dev == 0 {
            probe_group(&snap.env, others, ip, port)
        } else {
            None
        };
        let answer = match learnt {
            Some(flags) => Some((flags, true)),
            None => inherit_from_listener(others, ip).map(|flags| (flags, false)),
        };
        if let Some(answer) = answer {
            answers.push((members, answer));
        }
    }
    for (members, ((ra, rp), known)) in answers {
        for i in members {
            let s = &mut snap.sockets[i];
            s.reuseaddr = ra;
            s.reuseport = rp;
            s.flags_known = known;
        }
    }
}

/// Probe `ip:port` with SO_REUSEADDR then SO_REUSEPORT, when only timewait
/// sockets can decide the outcome. `others`: the port's TCP sockets that
/// are not timewait.
fn probe_group(
    env: &NetEnv,
    others: &[&ExistingSocket],
    ip: IpAddr,
    port: u16,
) -> Option<(bool, bool)> {
    let addr = SocketAddr::new(ip, port);
    if (port as u32) < env.unprivileged_port_start && !has_cap_net_bind_service() {
        return None;
    }
    // Every one of them must be unable to refuse the probe whatever its own
    // flags are.
    let me = unsafe { libc::geteuid() };
    for flag in [true, false] {
        let probe = NewSocket {
            reuseaddr: flag,
            reuseport: !flag,
            uid: me,
            ..NewSocket::new(Proto::Tcp, addr)
        };
        for guess in [false, true] {
            let others: Vec<ExistingSocket> = others
                .iter()
                .map(|s| (*s).clone())
                .map(|mut s| {
                    if !s.flags_known {
                        s.reuseaddr = guess;
                        s.reuseport = guess;
                    }
                    s
                })
                .collect();
            if crate::rules::evaluate(&probe, &others, env, false).would_fail() {
                return None;
            }
        }
    }
    let ra = flags::probe_tcp(addr, false, flags::ProbeFlag::ReuseAddr)?;
    let rp = flags::probe_tcp(addr, false, flags::ProbeFlag::ReusePort)?;
    Some((ra, rp))
}

/// Accepted sockets inherit their listener's flags, and so do the timewait
/// sockets they leave: take them from a listener on the same port whose
/// address covers `ip`. `others`: the port's TCP sockets that are not
/// timewait.
fn inherit_from_listener(others: &[&ExistingSocket], ip: IpAddr) -> Option<(bool, bool)> {
    others
        .iter()
        .filter(|s| s.state == TcpState::Listen && s.flags_known)
        .find(|s| s.local == ip || s.local.is_unspecified() || matches!(s.local, IpAddr::V6(a) if a.to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED)))
        .map(|s| (s.reuseaddr, s.reuseport))
}

/// Does the calling thread have CAP_NET_BIND_SERVICE in its effective set?
pub fn has_cap_net_bind_service() -> bool {
    let status = fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0)
}

fn netns_inode() -> Option<u64> {
    let link = fs::read_link("/proc/thread-self/ns/net").ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn sysctl(path: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parse "32768\t60999".
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
        _ => None,
    }
}

/// Parse "8080,9000-9010" (ip_local_reserved_ports).
pub fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    s.split(',')
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            match part.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => {
                    let p = part.parse().ok()?;
                    Some((p, p))
                }
            }
        })
        .collect()
}

/// The namespace's sysctls and addresses.
pub fn read_env(notes: &mut Vec<String>) -> NetEnv {
    let d = NetEnv::default();
    let flag = |p: &str| sysctl(p).is_some_and(|v| v != "0");
    let local_port_range = sysctl("net/ipv4/ip_local_port_range")
        .and_then(|s| parse_port_range(&s))
        .unwrap_or_else(|| {
            notes.push(
                "net.ipv4.ip_local_port_range could not be read; assuming 32768-60999".into(),
            );
            d.local_port_range
        });
    let unprivileged_port_start = sysctl("net/ipv4/ip_unprivileged_port_start")
        .and_then(|s| s.parse().ok())
        .unwrap_or(d.unprivileged_port_start);
    let local_addrs = match local_addrs() {
        Ok(v) => v,
        Err(e) => {
            notes.push(format!(
                "the local addresses could not be listed ({e}); assuming loopback only"
            ));
            d.local_addrs.clone()
        }
    };
    NetEnv {
        unprivileged_port_start,
        local_port_range,
        reserved_ports: sysctl("net/ipv4/ip_local_reserved_ports")
            .map(|s| parse_port_list(&s))
            .unwrap_or_default(),
        autobind_reuse: flag("net/ipv4/ip_autobind_reuse"),
        ip_nonlocal_bind: flag("net/ipv4/ip_nonlocal_bind"),
        ipv6_nonlocal_bind: flag("net/ipv6/ip_nonlocal_bind"),
        tcp_tw_reuse: sysctl("net/ipv4/tcp_tw_reuse")
            .and_then(|s| s.parse().ok())
            .unwrap_or(d.tcp_tw_reuse),
        local_addrs,
        devices: devices(),
    }
}

/// The calling thread's namespace's interfaces as (ifindex, name):
/// if_nameindex asks rtnetlink through a socket of that namespace.
pub fn devices() -> Vec<(u32, String)> {
    nix::net::if_::if_nameindex()
        .map(|ifs| {
            ifs.iter()
                .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Addresses of the namespace's interfaces (getifaddrs, through rtnetlink in
/// the calling thread's namespace), with how duplicate address detection
/// stands for the IPv6 ones, which getifaddrs does not say
/// (/proc/thread-self/net/if_inet6: /proc/net would be the main thread's
/// namespace).
pub fn local_addrs() -> anyhow::Result<Vec<LocalAddr>> {
    use nix::net::if_::InterfaceFlags;
    let dad = fs::read_to_string("/proc/thread-self/net/if_inet6")
        .map(|s| parse_if_inet6(&s))
        .unwrap_or_default();
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let dev = ifa.interface_name.clone();
        let Some(addr) = ifa.address else { continue };
        let loopback = ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        if let Some(v4) = addr.as_sockaddr_in() {
            let prefix_len = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| u32::from(m.ip()).count_ones() as u8)
                .unwrap_or(32);
            let broadcast = ifa
                .broadcast
                .as_ref()
                .and_then(|b| b.as_sockaddr_in())
                .map(|b| b.ip());
            out.push(LocalAddr {
                addr: IpAddr::V4(v4.ip()),
                prefix_len,
                loopback,
                broadcast,
                dev,
                dad: Dad::Usable,
            });
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let prefix_len = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| u128::from(m.ip()).count_ones() as u8)
                .unwrap_or(128);
            out.push(LocalAddr {
                addr: IpAddr::V6(v6.ip()),
                prefix_len,
                loopback,
                broadcast: None,
                dad: dad
                    .iter()
                    .find(|(a, d, _)| *a == v6.ip() && *d == dev)
                    .map_or(Dad::Usable, |(_, _, flags)| Dad::from_ifa_flags(*flags)),
                dev,
            });
        }
    }
    Ok(out)
}

/// /proc/net/if_inet6: address (32 hex digits), ifindex, prefix length,
/// scope, flags (hex), interface name. Lines that do not read are skipped.
fn parse_if_inet6(s: &str) -> Vec<(std::net::Ipv6Addr, String, u32)> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, _, _, _, flags, dev] = f[..] else {
                return None;
            };
            let addr = u128::from_str_radix(addr, 16).ok()?;
            let flags = u32::from_str_radix(flags, 16).ok()?;
            Some((addr.into(), dev.to_string(), flags))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_how_duplicate_address_detection_stands() {
        let s = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 fd000000000000000000000000000001 03 40 00 40       v0\n\
                 fd000000000000000000000000000002 03 40 00 c8       v0\n\
                 fd000000000000000000000000000003 03 40 00 44       v0\n\
                 garbage\n";
        let got: Vec<(String, String, Dad)> = parse_if_inet6(s)
            .into_iter()
            .map(|(a, d, f)| (a.to_string(), d, Dad::from_ifa_flags(f)))
            .collect();
        let want = [
            ("::1", "lo", Dad::Usable),
            ("fd00::1", "v0", Dad::Pending),
            ("fd00::2", "v0", Dad::Failed),
            ("fd00::3", "v0", Dad::Usable),
        ];
        assert_eq!(
            got,
            want.map(|(a, d, s)| (a.to_string(), d.to_string(), s))
                .to_vec()
        );
    }

    #[test]
    fn parses_sysctl_values() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("garbage"), None);
        assert_eq!(
            parse_port_list("8080,9000-9010"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert_eq!(parse_port_list(""), vec![]);
    }

    /// The opener is named while it holds the socket, else the lowest pid.
    #[test]
    fn owner_prefers_the_opener_among_the_holders() {
        let mut s =
            ExistingSocket::new(Proto::Tcp, "0.0.0.0:80".parse().unwrap(), TcpState::Listen);
        s.inode = 77;
        let mut owners = OwnerMap::default();
        owners.by_inode.insert(
            77,
            [5, 10]
                .map(|pid| Owner {
                    pid,
                    comm: format!("p{pid}"),
                    fd: 3,
                })
                .to_vec(),
        );
        let snap = Snapshot {
            sockets: vec![s.clone()],
            owners,
            env: NetEnv::default(),
            netns: None,
            notes: Vec::new(),
        };
        let pid = |opener| snap.owner_preferring(&s, opener).map(|p| p.pid);
        assert_eq!(pid(Some(10)), Some(10));
        assert_eq!(pid(Some(99)), Some(5));
        assert_eq!(pid(None), Some(5));
        s.inode = 0;
        assert_eq!(snap.owner_preferring(&s, Some(10)), None);
    }

    /// Timewait sockets without flags of their own take them from a listener
    /// on their port whose address covers theirs, each group on its own.
    #[test]
    fn timewait_sockets_inherit_flags_from_the_covering_listener() {
        let sock = |local: &str, state, timewait, flags: Option<(bool, bool)>| {
            let mut s = ExistingSocket::new(Proto::Tcp, local.parse().unwrap(), state);
            s.timewait = timewait;
            s.flags_known = flags.is_some();
            (s.reuseaddr, s.reuseport) = flags.unwrap_or((false, false));
            s
        };
        let tw = |local: &str| sock(local, TcpState::TimeWait, true, None);
        let mut snap = Snapshot {
            sockets: vec![
                sock("0.0.0.0:80", TcpState::Listen, false, Some((true, false))),
                sock("10.0.0.1:81", TcpState::Listen, false, Some((false, true))),
                sock("127.0.0.1:82", TcpState::Listen, false, None),
                tw("127.0.0.1:80"),
                tw("127.0.0.2:80"),
                tw("127.0.0.1:81"),
                tw("10.0.0.1:81"),
                tw("127.0.0.1:82"),
                tw("127.0.0.1:83"),
            ],
            owners: OwnerMap::default(),
            env: NetEnv::default(),
            netns: None,
            notes: Vec::new(),
        };
        resolve_timewait_flags(&mut snap, false);
        let got: Vec<(String, bool, bool, bool)> = snap.sockets[3..]
            .iter()
            .map(|s| {
                (
                    format!("{}:{}", s.local, s.port),
                    s.reuseaddr,
                    s.reuseport,
                    s.flags_known,
                )
            })
            .collect();
        let want = [
            ("127.0.0.1:80", true, false), // 0.0.0.0:80 covers it
            ("127.0.0.2:80", true, false),
            ("127.0.0.1:81", false, false), // the listener is on another address
            ("10.0.0.1:81", false, true),
            ("127.0.0.1:82", false, false), // the listener's own flags are unknown
            ("127.0.0.1:83", false, false), // no listener
        ];
        let want: Vec<(String, bool, bool, bool)> = want
            .iter()
            .map(|(a, ra, rp)| (a.to_string(), *ra, *rp, false))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sees_its_own_listener_with_owner_and_flags() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(1).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        let snap = take(&Options {
            ports: vec![port],
            ..Options::default()
        })
        .unwrap();
        let l = snap
            .sockets
            .iter()
            .find(|x| x.state == TcpState::Listen)
            .expect("listener in the snapshot");
        assert!(l.flags_known && l.reuseaddr && !l.reuseport, "{l:?}");
        assert_eq!(snap.owner_of(l).map(|p| p.pid), Some(std::process::id()));
        assert!(snap.env.ipv4_bindable(Ipv4Addr::LOCALHOST));
    }
}
