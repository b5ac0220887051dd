//! Forked helper processes: a server whose pid and comm differ from the test
//! process, as in the field.
//!
//! The library runs inside multi-threaded programs (test harnesses), so a
//! forked child holds a copy of one thread only and of every lock as it was:
//! the code a child runs makes raw system calls through libc and nothing
//! else (no allocation, no locks, no printing, no panics), then `_exit`s.

use std::ffi::CStr;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::sock::{boottime_ns, cvt, sockaddr};

/// The longest a child may live (SIGALRM kills it), whatever happens to the
/// parent.
const CHILD_MAX_SECS: u32 = 600;

/// Forks and the closing of scenario sockets exclude each other.
///
/// A forked child holds a copy of every descriptor of the process until
/// [`child_setup`] has closed them. Scenarios play on several threads at
/// once (a test plays all ten together): a socket another scenario closed
/// in that window would stay open in the child and really close only there,
/// later and in another process (a FIN sent late by the wrong pid, a port
/// still in use by the next bind()). [`fork_child`] holds this for writing
/// from fork() until the child has closed what it inherited; [`Sock`]'s drop
/// holds it for reading while it closes.
///
/// [`Sock`]: super::sock::Sock
static FORK_WINDOW: RwLock<()> = RwLock::new(());

/// Held while a scenario socket is closed: no fork_child is in progress.
pub(crate) fn closing() -> RwLockReadGuard<'static, ()> {
    FORK_WINDOW.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held from a fork until the new process holds no copy of a scenario
/// socket: none is closed meanwhile.
pub(crate) fn forking() -> RwLockWriteGuard<'static, ()> {
    FORK_WINDOW.write().unwrap_or_else(PoisonError::into_inner)
}

/// Start `cmd` such that no scenario socket closes while the new process
/// holds copies of this process's descriptors: from the fork until its
/// exec has closed the close-on-exec ones (every scenario socket is). The
/// kernel renames a process after that closing, so the wait ends when the
/// child's comm is its program's name (or it is gone, or after 10 s).
///
/// Tests that start processes while scenarios play on other threads use
/// this instead of `Command::spawn`.
pub fn spawn_clean(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    let _no_close = forking();
    let child = cmd.spawn()?;
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_default();
    // TASK_COMM_LEN: 15 bytes and a NUL.
    let want = &program[..program.len().min(15)];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match std::fs::read(format!("/proc/{}/comm", child.id())) {
            Ok(c) if c.strip_suffix(b"\n").unwrap_or(&c) == want => break,
            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => break,
        }
    }
    Ok(child)
}

/// How long fork_child waits for its child to close what it inherited.
const CHILD_SETUP_WAIT_MS: libc::c_int = 30_000;

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    /// A process that is our child although another process created it
    /// (clone with CLONE_PARENT).
    pub fn adopt(pid: u32) -> Child {
        Child {
            pid: pid as libc::pid_t,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut st = 0;
        loop {
            let r = unsafe { libc::waitpid(self.pid, &mut st, 0) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(e);
            }
        }
        self.reaped = true;
        Ok(())
    }

    /// Wait for the child to exit by itself; its exit status. Kills it after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<i32> {
        let end = Instant::now() + timeout;
        loop {
            let mut st = 0;
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                return Ok(if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    128 + libc::WTERMSIG(st)
                });
            }
            if r < 0 {
                self.reaped = true;
                return Err(io::Error::last_os_error());
            }
            if Instant::now() > end {
                self.kill()?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("child {} did not exit in {timeout:?}", self.pid),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Fork a child that keeps only `keep` (and 0, 1, 2) of the parent's file
/// descriptors, is named `comm`, dies with the thread that forked it and
/// after [`CHILD_MAX_SECS`] at the latest, runs `body` and exits with its
/// return value.
///
/// # Safety
/// `body` runs in a forked copy of a multi-threaded process: it may only
/// make async-signal-safe calls (the `raw` helpers of this module, libc
/// system calls), must not allocate, lock, print or panic.
pub(crate) unsafe fn fork_child(
    comm: &CStr,
    keep: &[RawFd],
    body: impl FnOnce() -> i32,
) -> io::Result<Child> {
    let window = forking();
    // The child closes its end of `setup` once it has closed everything
    // else it inherited: EOF on the read end ends the fork window.
    let setup = pipe()?;
    let done = setup.w.as_raw_fd();
    let mut k = [0 as RawFd; 9];
    assert!(keep.len() < k.len());
    let n = keep.len() + 1;
    k[..n - 1].copy_from_slice(keep);
    k[n - 1] = done;
    k[..n].sort_unstable();
    let pid = libc::fork();
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child_setup(&k[..n], comm, true);
        libc::close(done);
        let rc = body();
        libc::_exit(rc);
    }
    drop(setup.w);
    wait_eof(&setup.r, CHILD_SETUP_WAIT_MS);
    drop(window);
    Ok(Child { pid, reaped: false })
}

/// Wait (at most `ms`) until every write end of the pipe is closed.
fn wait_eof(r: &OwnedFd, ms: libc::c_int) {
    let end = Instant::now() + Duration::from_millis(ms as u64);
    loop {
        let left = end.saturating_duration_since(Instant::now()).as_millis() as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let n = unsafe { libc::poll(&mut pfd, 1, left) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return; // timed out (the child is stuck; go on) or poll failed
        }
        let mut b = 0u8;
        let got = unsafe { libc::read(r.as_raw_fd(), &mut b as *mut u8 as *mut libc::c_void, 1) };
        if got == 0 || (got < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
        {
            return;
        }
    }
}

/// In a new child: drop inherited descriptors, name it, bound its life.
pub(crate) unsafe fn child_setup(keep_sorted: &[RawFd], comm: &CStr, rename: bool) {
    let mut next: RawFd = 3;
    for &fd in keep_sorted {
        if fd > next {
            libc::syscall(libc::SYS_close_range, next as u32, (fd - 1) as u32, 0u32);
        }
        if fd + 1 > next {
            next = fd + 1;
        }
    }
    libc::syscall(libc::SYS_close_range, next as u32, u32::MAX, 0u32);
    if rename {
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    libc::alarm(CHILD_MAX_SECS);
}

/// A pipe (both ends close-on-exec).
pub(crate) struct Pipe {
    pub r: OwnedFd,
    pub w: OwnedFd,
}

pub(crate) fn pipe() -> io::Result<Pipe> {
    let mut fds = [0 as RawFd; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe {
        Pipe {
            r: OwnedFd::from_raw_fd(fds[0]),
            w: OwnedFd::from_raw_fd(fds[1]),
        }
    })
}

/// A message from a child: a tag and seven numbers.
pub(crate) type Msg = [i64; 8];

/// Receive one message, waiting at most `timeout`.
pub(crate) fn recv(fd: &OwnedFd, timeout: Duration) -> io::Result<Msg> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let r = cvt(unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) })?;
    if r == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no word from the child process",
        ));
    }
    let mut m: Msg = [0; 8];
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            m.as_mut_ptr() as *mut libc::c_void,
            mem::size_of::<Msg>(),
        )
    };
    if n != mem::size_of::<Msg>() as isize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the child process died without a word",
        ));
    }
    Ok(m)
}

/// Async-signal-safe building blocks for children. They return 0 or an
/// errno, never allocate.
pub(crate) mod raw {
    use super::*;

    pub unsafe fn errno() -> i64 {
        *libc::__errno_location() as i64
    }

    /// A close-on-exec TCP/IPv4 socket, optionally with SO_REUSEADDR; -errno.
    pub unsafe fn tcp4(reuseaddr: bool) -> RawFd {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 && reuseaddr {
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const i32 as *const libc::c_void,
                4,
            );
        }
        fd
    }

    /// fork(), the new process being our parent's child (CLONE_PARENT):
    /// the test process can reap it after we are gone. Its pid, 0 in it,
    /// or -1.
    pub unsafe fn fork_sibling() -> i64 {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    }

    /// bind(): 0 or errno, and the CLOCK_BOOTTIME ns before and after.
    pub unsafe fn bind(fd: RawFd, sa: &(libc::sockaddr_storage, libc::socklen_t)) -> [i64; 3] {
        let t0 = boottime_ns() as i64;
        let r = libc::bind(fd, &sa.0 as *const _ as *const libc::sockaddr, sa.1);
        let e = if r < 0 { errno() } else { 0 };
        [e, t0, boottime_ns() as i64]
    }

    /// listen(): 0 or errno, and the ns before and after.
    pub unsafe fn listen(fd: RawFd) -> [i64; 3] {
        let t0 = boottime_ns() as i64;
        let r = libc::listen(fd, 16);
        let e = if r < 0 { errno() } else { 0 };
        [e, t0, boottime_ns() as i64]
    }

    /// The local port of an IPv4 socket.
    pub unsafe fn local_port(fd: RawFd) -> i64 {
        let mut sin: libc::sockaddr_in = mem::zeroed();
        let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        libc::getsockname(fd, &mut sin as *mut _ as *mut libc::sockaddr, &mut len);
        u16::from_be(sin.sin_port) as i64
    }

    pub unsafe fn send(fd: RawFd, m: &Msg) {
        libc::write(fd, m.as_ptr() as *const libc::c_void, mem::size_of::<Msg>());
    }

    /// Block until the parent closes its end of the pipe (or kills us).
    pub unsafe fn block_on(fd: RawFd) {
        let mut b = 0u8;
        loop {
            let r = libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1);
            if r == 0 || (r < 0 && errno() != libc::EINTR as i64) {
                return;
            }
        }
    }

    pub unsafe fn accept(fd: RawFd) -> RawFd {
        loop {
            let c = libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            if c >= 0 || errno() != libc::EINTR as i64 {
                return c;
            }
        }
    }

    pub fn v4(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        sockaddr(sa, false)
    }
}
