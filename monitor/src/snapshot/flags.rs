//! SO_REUSEADDR and SO_REUSEPORT, which sock_diag does not report.
//!
//! 1. A socket some process holds: borrow a duplicate of its descriptor with
//!    `pidfd_getfd(2)` (Linux 5.6+; needs ptrace access to the process: root,
//!    or the same user where Yama allows it) and ask `getsockopt`. The
//!    duplicate is closed at once; the owner's socket is not touched, except
//!    that a close() by its owner in those microseconds completes only when
//!    the duplicate is closed (its FIN then leaves from twmon, and twmon's
//!    pid is the one a state change names). Our own process's sockets are
//!    simply dup()ed.
//! 2. A timewait socket belongs to nobody. Its flags (those of the socket that
//!    left it) are found by asking the kernel the question itself: a probe
//!    socket with only SO_REUSEADDR (then only SO_REUSEPORT) is bound to the
//!    timewait socket's own address and port, and closed without listen().
//!    When nothing but timewait sockets can refuse that probe, it binds if
//!    and only if every timewait socket on that address has the flag. The
//!    probe cannot disturb anyone: while it exists, any bind it could refuse
//!    would have been refused by those timewait sockets anyway. It is skipped
//!    when another socket could decide it, or when the port needs privileges
//!    we lack; the flags are then inherited from a listener on the same port
//!    when there is one (accepted sockets inherit the listener's flags), and
//!    marked as guesses.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use super::owners::Owner;

/// Options read from a live socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFlags {
    pub reuseaddr: bool,
    pub reuseport: bool,
}

/// Duplicate `owner`'s descriptor and read its flags. None when not allowed
/// or when the descriptor no longer refers to socket `inode`.
pub fn read_owned(owner: &Owner, inode: u64) -> Option<SockFlags> {
    let fd = borrow_fd(owner.pid, owner.fd)?;
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    if meta.ino() != inode {
        return None;
    }
    let s = SockRef::from(&fd);
    Some(SockFlags {
        reuseaddr: s.reuse_address().ok()?,
        reuseport: s.reuse_port().ok()?,
    })
}

fn borrow_fd(pid: u32, fd: RawFd) -> Option<OwnedFd> {
    if pid == std::process::id() {
        // SAFETY: dup of a descriptor number of our own process; the result is
        // a new descriptor we own (or -1).
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        return (d >= 0).then(|| unsafe { OwnedFd::from_raw_fd(d) });
    }
    // SAFETY: plain syscalls; every descriptor returned is owned and closed here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let d = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as i32;
        (d >= 0).then(|| OwnedFd::from_raw_fd(d))
    }
}

/// Which flag a probe asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFlag {
    ReuseAddr,
    ReusePort,
}

/// Bind a TCP probe socket with only `flag` set to `addr` and close it.
/// Some(true): it bound; Some(false): EADDRINUSE; None: anything else.
pub fn probe_tcp(addr: std::net::SocketAddr, v6only: bool, flag: ProbeFlag) -> Option<bool> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM.cloexec(), None).ok()?;
    match flag {
        ProbeFlag::ReuseAddr => s.set_reuse_address(true).ok()?,
        ProbeFlag::ReusePort => s.set_reuse_port(true).ok()?,
    }
    if addr.is_ipv6() {
        s.set_only_v6(v6only).ok()?;
    }
    let bound = {
        let _named = ProbeName::enter();
        s.bind(&SockAddr::from(addr))
    };
    match bound {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Some(false),
        Err(_) => None,
    }
}

/// The thread name a probe bind runs under: every twmon's kernel programs
/// see it, and their readers drop such binds (monitor's probe/enrich.rs),
/// since refusing some of them is what a probe is for; another twmon
/// watching the host would report them as failures otherwise.
pub const PROBE_COMM: &str = "twmon-probe";

/// The calling thread named [`PROBE_COMM`] while it lives; its own name
/// back after.
struct ProbeName([u8; 16]);

impl ProbeName {
    fn enter() -> ProbeName {
        let mut old = [0u8; 16];
        let mut probe = [0u8; 16];
        probe[..PROBE_COMM.len()].copy_from_slice(PROBE_COMM.as_bytes());
        // SAFETY: PR_GET_NAME writes at most 16 bytes into `old`;
        // PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe {
            libc::prctl(libc::PR_GET_NAME, old.as_mut_ptr());
            libc::prctl(libc::PR_SET_NAME, probe.as_ptr());
        }
        ProbeName(old)
    }
}

impl Drop for ProbeName {
    fn drop(&mut self) {
        // SAFETY: as above, `self.0` is NUL-terminated (16 bytes, the
        // kernel's at most 15 plus NUL).
        unsafe {
            libc::prctl(libc::PR_SET_NAME, self.0.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe bind runs under PROBE_COMM and gives the thread its name
    /// back.
    #[test]
    fn a_probe_keeps_the_thread_name() {
        let name = || std::fs::read_to_string("/proc/thread-self/comm").unwrap();
        let before = name();
        let inside = {
            let _n = ProbeName::enter();
            name()
        };
        assert_eq!(inside.trim_end(), PROBE_COMM);
        assert_eq!(name(), before);
        let addr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(probe_tcp(addr, false, ProbeFlag::ReuseAddr), Some(true));
        assert_eq!(name(), before);
    }

    #[test]
    fn reads_flags_of_our_own_sockets() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&SockAddr::from(
            "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        ))
        .unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
            .unwrap()
            .ino();
        let owner = Owner {
            pid: std::process::id(),
            comm: String::new(),
            fd: s.as_raw_fd(),
        };
        assert_eq!(
            read_owned(&owner, ino),
            Some(SockFlags {
                reuseaddr: false,
                reuseport: true
            })
        );
        // A wrong inode is refused rather than misread.
        assert_eq!(read_owned(&owner, ino + 1), None);
    }
}
