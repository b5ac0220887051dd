//! Thin sockets over libc, so that every option is exactly what the scenario
//! asked for (std's `TcpListener::bind` sets SO_REUSEADDR on its own, which
//! would spoil half of the scenarios).
//!
//! Every socket is created with SOCK_CLOEXEC: a program spawned by another
//! thread of the same process (a test running `twmon`, say) must never
//! inherit a scenario's socket and keep it alive. A socket is closed only
//! while no scenario child is between its fork and the closing of what it
//! inherited ([`super::child::closing`]).

use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::Serialize;

use crate::event::{Endpoint, Proto};

/// The options a scenario sets on a socket before bind().
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SockOpts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// IPV6_V6ONLY; set explicitly on every IPv6 socket, ignored on IPv4.
    pub v6only: bool,
}

impl SockOpts {
    pub const PLAIN: SockOpts = SockOpts {
        reuseaddr: false,
        reuseport: false,
        v6only: false,
    };
    pub const REUSEADDR: SockOpts = SockOpts {
        reuseaddr: true,
        reuseport: false,
        v6only: false,
    };
    pub const REUSEPORT: SockOpts = SockOpts {
        reuseaddr: false,
        reuseport: true,
        v6only: false,
    };
    pub fn v6only(mut self, on: bool) -> Self {
        self.v6only = on;
        self
    }
}

/// A TCP or UDP socket, IPv4 or IPv6, closed on drop.
#[derive(Debug)]
pub struct Sock {
    /// Closed by `Drop` (under [`super::child::closing`]).
    fd: ManuallyDrop<OwnedFd>,
    pub v6: bool,
    pub proto: Proto,
    pub opts: SockOpts,
    /// The owner uid the kernel gave it (`sk_uid`): the fsuid of the thread
    /// that called socket().
    pub uid: u32,
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The calling thread's fsuid (setfsuid with an invalid id changes nothing
/// and returns the current value).
pub fn current_fsuid() -> u32 {
    unsafe { libc::setfsuid(u32::MAX as libc::uid_t) as u32 }
}

impl Drop for Sock {
    fn drop(&mut self) {
        let _no_fork = super::child::closing();
        // SAFETY: dropped once, here; the field is never used again.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
    }
}

impl Sock {
    pub fn new(v6: bool, proto: Proto, opts: SockOpts) -> io::Result<Sock> {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let ty = match proto {
            Proto::Tcp => libc::SOCK_STREAM,
            Proto::Udp => libc::SOCK_DGRAM,
        } | libc::SOCK_CLOEXEC;
        let uid = current_fsuid();
        let fd = cvt(unsafe { libc::socket(domain, ty, 0) })?;
        let s = Sock {
            fd: ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            v6,
            proto,
            opts,
            uid,
        };
        if opts.reuseaddr {
            s.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if opts.reuseport {
            s.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        if v6 {
            s.set_int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, opts.v6only as i32)?;
        }
        // No scenario step may block for long: every read, accept and
        // connect gives up after a few seconds.
        s.set_timeouts(Duration::from_secs(5))?;
        Ok(s)
    }

    pub fn tcp4(opts: SockOpts) -> io::Result<Sock> {
        Sock::new(false, Proto::Tcp, opts)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn set_int(&self, level: i32, name: i32, v: i32) -> io::Result<()> {
        cvt(unsafe {
            libc::setsockopt(
                self.fd(),
                level,
                name,
                &v as *const i32 as *const libc::c_void,
                mem::size_of::<i32>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    pub fn get_int(&self, level: i32, name: i32) -> io::Result<i32> {
        let mut v: i32 = 0;
        let mut len = mem::size_of::<i32>() as libc::socklen_t;
        cvt(unsafe {
            libc::getsockopt(
                self.fd(),
                level,
                name,
                &mut v as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        })?;
        Ok(v)
    }

    /// The options as the kernel reports them now (getsockopt).
    pub fn actual_opts(&self) -> SockOpts {
        SockOpts {
            reuseaddr: self
                .get_int(libc::SOL_SOCKET, libc::SO_REUSEADDR)
                .map(|v| v != 0)
                .unwrap_or(self.opts.reuseaddr),
            reuseport: self
                .get_int(libc::SOL_SOCKET, libc::SO_REUSEPORT)
                .map(|v| v != 0)
                .unwrap_or(self.opts.reuseport),
            v6only: self.v6
                && self
                    .get_int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                    .map(|v| v != 0)
                    .unwrap_or(self.opts.v6only),
        }
    }

    fn set_timeouts(&self, d: Duration) -> io::Result<()> {
        // The field types, not libc's names for them: on musl those names
        // are deprecated (they are to become 64-bit).
        let tv = libc::timeval {
            tv_sec: d.as_secs() as _,
            tv_usec: d.subsec_micros() as _,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            cvt(unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &tv as *const libc::timeval as *const libc::c_void,
                    mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// SO_LINGER {on, 0}: close() then aborts the connection with a RST.
    pub fn set_linger_zero(&self) -> io::Result<()> {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        cvt(unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    pub fn bind(&self, ep: Endpoint) -> io::Result<()> {
        let (sa, len) = sockaddr(ep.socket_addr(), self.v6);
        cvt(unsafe { libc::bind(self.fd(), &sa as *const _ as *const libc::sockaddr, len) })
            .map(drop)
    }

    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        cvt(unsafe { libc::listen(self.fd(), backlog) }).map(drop)
    }

    pub fn connect(&self, ep: Endpoint) -> io::Result<()> {
        let (sa, len) = sockaddr(ep.socket_addr(), self.v6);
        loop {
            let r =
                unsafe { libc::connect(self.fd(), &sa as *const _ as *const libc::sockaddr, len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    pub fn accept(&self) -> io::Result<(Sock, Endpoint)> {
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let fd = cvt(unsafe {
            libc::accept4(
                self.fd(),
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        })?;
        let s = Sock {
            fd: ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            v6: self.v6,
            proto: self.proto,
            opts: self.opts,
            uid: self.uid,
        };
        s.set_timeouts(Duration::from_secs(5))?;
        Ok((s, from_sockaddr(&ss)))
    }

    pub fn local(&self) -> io::Result<Endpoint> {
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        cvt(unsafe {
            libc::getsockname(
                self.fd(),
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        Ok(from_sockaddr(&ss))
    }

    pub fn peer(&self) -> io::Result<Endpoint> {
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        cvt(unsafe {
            libc::getpeername(
                self.fd(),
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        Ok(from_sockaddr(&ss))
    }

    /// Read once (blocking up to the socket's 5 s timeout): Ok(0) is EOF.
    pub fn read_some(&self) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        loop {
            let r = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// A sockaddr for `sa`, in the family of the socket (an IPv4 address on an
/// IPv6 socket becomes v4-mapped). Allocation-free: forked children use it.
pub(crate) fn sockaddr(sa: SocketAddr, v6sock: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len;
    match (sa.ip(), v6sock) {
        (IpAddr::V4(ip), false) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = sa.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
            len = mem::size_of::<libc::sockaddr_in>();
        }
        (ip, _) => {
            let ip6 = match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = sa.port().to_be();
            sin6.sin6_addr.s6_addr = ip6.octets();
            len = mem::size_of::<libc::sockaddr_in6>();
        }
    }
    (ss, len as libc::socklen_t)
}

pub(crate) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Endpoint {
    match ss.ss_family as i32 {
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Endpoint::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            )
        }
        _ => {
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Endpoint::new(
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            )
        }
    }
}

/// A listener on `addr` (`opts`) accepts a connection from a plain client
/// and closes its side at once; the client has not read or closed yet, so
/// the server's side is on its way to a FIN_WAIT2 timewait sock (see
/// [`super::is_fin_wait2_orphan`] for when the kernel keeps a full socket
/// instead). Returns (listener, client, server endpoint, client endpoint).
pub fn server_closes_first(
    v6: bool,
    addr: Endpoint,
    opts: SockOpts,
) -> io::Result<(Sock, Sock, Endpoint, Endpoint)> {
    let l = Sock::new(v6, Proto::Tcp, opts)?;
    l.bind(addr)?;
    l.listen(16)?;
    let c = Sock::new(v6, Proto::Tcp, SockOpts::PLAIN)?;
    c.connect(addr)?;
    let cli = c.local()?;
    let (srv, _) = l.accept()?;
    let server = srv.local()?;
    drop(srv);
    Ok((l, c, server, cli))
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the events' `ts_ns`.
pub fn boottime_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn gettid() -> u32 {
    unsafe { libc::gettid() as u32 }
}

/// The calling thread's comm (what the kernel reports as `comm`).
pub(crate) fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}
