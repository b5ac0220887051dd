//! Helpers for tests/check_differential.rs: a private network namespace on a
//! dedicated thread, per-thread identities (fsuid, CAP_NET_BIND_SERVICE),
//! sockets set up in every state, and a small seeded RNG.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monitor::event::Proto;
use monitor::snapshot::sockdiag;
use socket2::{Domain, SockAddr, Socket, Type};

/// Run `f` on a new thread inside a new network namespace with lo up. Err
/// with the reason when the namespace cannot be made.
pub fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || -> Result<T, String> {
        // SAFETY: unshare affects only this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        set_link_up("lo").map_err(|e| format!("bringing lo up: {e}"))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Are we asked to treat "cannot test" as a failure?
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn set_link_up(name: &str) -> std::io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; the ioctls read and write it.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Write a sysctl of the calling thread's network namespace.
pub fn sysctl(path: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{path}"), value)
        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// setfsuid for this thread; returns the previous one. A socket's sk_uid is
/// the fsuid of the thread that creates it.
pub fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: per-thread syscall (glibc's wrapper does not broadcast it).
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_NET_BIND_SERVICE: u32 = 10;

/// Raise or drop CAP_NET_BIND_SERVICE in this thread's effective set (it
/// stays permitted, so it can come back).
pub fn set_bind_service_cap(on: bool) {
    let mut hdr = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with the v3 header and two data words.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
            0,
            "capget"
        );
        if on {
            data[0].effective |= 1 << CAP_NET_BIND_SERVICE;
        } else {
            data[0].effective &= !(1 << CAP_NET_BIND_SERVICE);
        }
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()),
            0,
            "capset: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Socket options for a test socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
}

/// A socket of `proto` for `addr`'s family, created as `opts.uid`.
pub fn socket(proto: Proto, addr: SocketAddr, opts: Opts) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let ty = match proto {
        Proto::Tcp => Type::STREAM,
        Proto::Udp => Type::DGRAM,
    };
    let old = set_fsuid(opts.uid);
    let s = Socket::new(domain, ty.cloexec(), None);
    set_fsuid(old);
    let s = s?;
    s.set_reuse_address(opts.reuseaddr)?;
    s.set_reuse_port(opts.reuseport)?;
    if addr.is_ipv6() {
        s.set_only_v6(opts.v6only)?;
    }
    Ok(s)
}

pub fn bind(s: &Socket, addr: SocketAddr) -> Result<(), i32> {
    s.bind(&SockAddr::from(addr))
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn listen(s: &Socket) -> Result<(), i32> {
    s.listen(16).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Wait until sock_diag shows a TCP socket with local port `port` in kernel
/// state `state` (for timewait sockets: their substate) for which `pred`
/// holds.
pub fn wait_for_state(port: u16, state: u8, timewait: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let all = sockdiag::dump(Proto::Tcp).map_err(|e| e.to_string())?;
        if all
            .iter()
            .any(|s| s.local.port() == port && s.state == state && s.is_timewait() == timewait)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no socket on port {port} reached state {state} (timewait={timewait})"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// splitmix64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The seed: TWMON_SEED, or the clock.
pub fn seed() -> u64 {
    std::env::var("TWMON_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
