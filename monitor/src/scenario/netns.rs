//! A private network namespace, kept alive by an open file descriptor, that
//! threads enter on demand.

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::sock::{cvt, Sock, SockOpts};
use crate::event::{Endpoint, Proto};

/// A private network namespace with `lo` up (127.0.0.1/8, so every 127.x.y.z
/// such as 127.0.0.2 is local, and ::1 when IPv6 is on).
///
/// It lives as long as this value and whatever sockets or processes are still
/// in it; dropping it closes the last handle the library keeps, so once the
/// scenario's sockets are closed and its children reaped the kernel destroys
/// it (and purges the TIME_WAIT sockets left in it).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    inode: u32,
    ipv6: bool,
}

impl Netns {
    /// Create the namespace (needs CAP_SYS_ADMIN). A short-lived thread calls
    /// unshare(CLONE_NEWNET), brings `lo` up and hands back a handle.
    pub fn new() -> io::Result<Netns> {
        let t = std::thread::Builder::new()
            .name("twmon-netns".into())
            .spawn(|| -> io::Result<Netns> {
                cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
                let f = File::open("/proc/thread-self/ns/net")?;
                let inode = f.metadata()?.ino() as u32;
                set_up("lo")?;
                // 127.0.0.2 is local through lo's 127.0.0.0/8 route; no
                // address to add. Check it rather than assume it.
                Sock::new(false, Proto::Udp, SockOpts::PLAIN)?
                    .bind("127.0.0.2:0".parse::<Endpoint>().unwrap())?;
                let ipv6 = Sock::new(true, Proto::Udp, SockOpts::PLAIN.v6only(true))
                    .and_then(|s| s.bind("[::1]:0".parse::<Endpoint>().unwrap()))
                    .is_ok();
                Ok(Netns {
                    fd: f.into(),
                    inode,
                    ipv6,
                })
            })?;
        t.join()
            .map_err(|_| io::Error::other("the thread creating the network namespace panicked"))?
    }

    /// For a unit test: the namespace, or None after saying loudly that
    /// `test` was skipped (no root); under CI=true it must not be skipped.
    #[cfg(test)]
    pub fn for_test(test: &str) -> Option<Netns> {
        match Netns::new() {
            Ok(ns) => Some(ns),
            Err(e) => {
                eprintln!("{test}: SKIPPED, no network namespace (needs root): {e}");
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must run {test}"
                );
                None
            }
        }
    }

    /// The namespace's inode: the `netns` of twmon's events and `--netns`.
    pub fn inode(&self) -> u32 {
        self.inode
    }

    /// Whether ::1 is usable (scenario 10 needs it).
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// A path that names this namespace while it lives, for
    /// `nsenter --net=PATH` or `ip netns exec`-like tools:
    /// `/proc/PID/fd/N` of this process.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Run `f` on a new thread that has entered the namespace, and wait for
    /// it. Sockets it creates belong to the namespace; processes it forks or
    /// spawns start inside it. A panic in `f` is passed on.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        self.run_named("twmon-scenario", f)
    }

    /// [`Netns::run`] on a thread named `name` (at most 15 bytes are kept): the
    /// comm the kernel reports for what `f` does.
    pub fn run_named<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(name.to_string())
                .spawn_scoped(s, move || -> io::Result<T> {
                    cvt(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })?;
                    Ok(f())
                })?;
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Set a per-namespace sysctl ("net.ipv4.ip_local_port_range") inside
    /// the namespace; returns the previous value.
    pub fn set_sysctl(&self, name: &str, value: &str) -> io::Result<String> {
        self.run(|| set_sysctl(name, value))?
    }

    /// Read a per-namespace sysctl inside the namespace.
    pub fn sysctl(&self, name: &str) -> io::Result<String> {
        self.run(|| sysctl(name))?
    }
}

fn sysctl_path(name: &str) -> io::Result<String> {
    if !name.starts_with("net.") || name.contains("..") || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: only net.* sysctls are per network namespace"),
        ));
    }
    Ok(format!("/proc/sys/{}", name.replace('.', "/")))
}

/// Read a net.* sysctl of the calling thread's network namespace
/// (/proc/sys/net resolves by the netns of the thread that opens it).
pub fn sysctl(name: &str) -> io::Result<String> {
    let v = std::fs::read_to_string(sysctl_path(name)?)?;
    Ok(v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Set a net.* sysctl of the calling thread's network namespace; returns the
/// previous value (normalised to single spaces).
pub fn set_sysctl(name: &str, value: &str) -> io::Result<String> {
    let prev = sysctl(name)?;
    std::fs::write(sysctl_path(name)?, value)?;
    Ok(prev)
}

/// `ip link set NAME up`, with the classic ioctl.
fn set_up(ifname: &str) -> io::Result<()> {
    #[repr(C)]
    struct IfreqFlags {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 24 - mem::size_of::<libc::c_short>()],
    }
    let s = Sock::new(false, Proto::Udp, SockOpts::PLAIN)?;
    let mut req: IfreqFlags = unsafe { mem::zeroed() };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    cvt(unsafe { libc::ioctl(s.fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    req.flags |= libc::IFF_UP as libc::c_short;
    cvt(unsafe { libc::ioctl(s.fd(), libc::SIOCSIFFLAGS as _, &mut req) })?;
    Ok(())
}
