//! The contract's ten scenarios, and twmon's own after them.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use libc::{EADDRINUSE, EADDRNOTAVAIL, ECONNREFUSED};

use super::child::{self, fork_child, pipe, raw, recv, Child};
use super::netns;
use super::procnet::{sockets, ObservedSocket};
use super::record::Like;
use super::sock::{current_fsuid, thread_comm, Sock, SockOpts};
use super::wait;
use super::{
    errno_of, Attempt, Expect, ExpectedHolder, Netns, ProcessEvent, Recorder, Scenario, Step, Want,
};
use crate::event::{DiagnosisCode as Code, Endpoint, Overlap, Proto, Syscall, TcpState};

pub(super) const ALL: [Scenario; 11] = [
    Scenario {
        id: 1,
        name: "server-restart-time-wait",
        caption: "A server closes its connection first, then restarts: its old port is held by a TIME_WAIT socket. \
                  Without SO_REUSEADDR the bind fails; SO_REUSEADDR helps only if the old server had it too.",
        play: s1_restart_time_wait,
    },
    Scenario {
        id: 2,
        name: "silent-failure",
        caption: "The restarted server ignores bind()'s EADDRINUSE and calls listen() anyway, which quietly picks a \
                  random port: the server runs, its clients get 'connection refused'.",
        play: s2_silent_failure,
    },
    Scenario {
        id: 3,
        name: "forked-child",
        caption: "A server forks a child per connection and dies; the child keeps its connection ESTABLISHED on the \
                  server port, and the restart fails until it uses SO_REUSEADDR.",
        play: s3_forked_child,
    },
    Scenario {
        id: 4,
        name: "close-wait",
        caption: "The client hangs up but the server never closes its end: the connection sits in CLOSE_WAIT, \
                  owned by the old process, and blocks the port.",
        play: s4_close_wait,
    },
    Scenario {
        id: 5,
        name: "wildcard-vs-specific",
        caption: "A TIME_WAIT on 127.0.0.2:P does not stop a bind to 127.0.0.1:P, but it does stop 0.0.0.0:P, \
                  which overlaps every address.",
        play: s5_wildcard,
    },
    Scenario {
        id: 6,
        name: "reuseaddr-double-listen",
        caption: "Two SO_REUSEADDR sockets can bind one port, but only one may listen on it. TCP and UDP ports \
                  are separate; two plain UDP sockets on one port conflict.",
        play: s6_double_listen,
    },
    Scenario {
        id: 7,
        name: "reuseport-rules",
        caption: "SO_REUSEPORT shares a port only when every socket sets it and all belong to the same user.",
        play: s7_reuseport,
    },
    Scenario {
        id: 8,
        name: "ephemeral-exhaustion",
        caption: "With a tiny ephemeral port range, clients that close first fill it with TIME_WAIT sockets and \
                  the next connect() fails with EADDRNOTAVAIL.",
        play: s8_exhaustion,
    },
    Scenario {
        id: 9,
        name: "linger-zero-reset",
        caption: "close() with SO_LINGER 0 aborts the connection with a RST: no TIME_WAIT, and the port is free \
                  at once.",
        play: s9_linger_reset,
    },
    Scenario {
        id: 10,
        name: "ipv6-v6only",
        caption: "A listener on [::] with IPV6_V6ONLY off also takes the IPv4 port; with IPV6_V6ONLY on, IPv4 and \
                  IPv6 are separate.",
        play: s10_ipv6,
    },
    Scenario {
        id: 11,
        name: "inherited-listener",
        caption: "A server starts a helper process that inherits its listening socket and never closes it; the \
                  server dies, the helper keeps listening on the server's port, and the restart fails until the \
                  helper is gone.",
        play: s11_inherited_listener,
    },
];

/// How long any wait in a scenario may take. What is waited for takes
/// milliseconds natively; under QEMU's emulation with ten scenarios at once
/// it took over 5 s (the 6.1 guest's scenario 2 once), and a longer limit
/// costs nothing when the wait succeeds.
const T: Duration = Duration::from_secs(30);

/// Ports of scenario `id`: 7000 + 100 × id + k.
fn port(id: u16, k: u16) -> u16 {
    7000 + id * 100 + k
}

fn lo(port: u16) -> Endpoint {
    Endpoint::v4([127, 0, 0, 1], port)
}

fn lo2(port: u16) -> Endpoint {
    Endpoint::v4([127, 0, 0, 2], port)
}

fn any4(port: u16) -> Endpoint {
    Endpoint::v4([0, 0, 0, 0], port)
}

fn any6(port: u16) -> Endpoint {
    Endpoint::v6([0; 16], port)
}

fn me() -> u32 {
    std::process::id()
}

fn holder(state: TcpState, local: Endpoint) -> ExpectedHolder {
    ExpectedHolder {
        proto: Proto::Tcp,
        state,
        local,
        remote: None,
        pid: None,
        uid: None,
        reuseaddr: false,
        reuseport: false,
        overlap: Overlap::Exact,
        left_by_pid: None,
        opened_by_pid: None,
    }
}

/// A TIME_WAIT holder left by this process.
fn tw_holder(local: Endpoint, remote: Endpoint, reuseaddr: bool) -> ExpectedHolder {
    ExpectedHolder {
        remote: Some(remote),
        reuseaddr,
        left_by_pid: Some(me()),
        ..holder(TcpState::TimeWait, local)
    }
}

/// A holder owned by process `pid` (uid 0: the scenarios run as root).
fn owned(state: TcpState, local: Endpoint, pid: u32) -> ExpectedHolder {
    ExpectedHolder {
        pid: Some(pid),
        uid: Some(current_fsuid()),
        ..holder(state, local)
    }
}

fn fail(errno: i32, code: Code) -> Expect {
    Expect::new(errno, code)
}

/// Poll /proc/net (every 2 ms, at most [`T`]) until a socket satisfies
/// `pred`; that socket, with its owners. A timeout's error tells what the
/// wait saw on `port` ([`wait::wait_for_socket`]).
fn wait_for(
    what: &str,
    port: u16,
    pred: impl Fn(&ObservedSocket) -> bool,
) -> io::Result<ObservedSocket> {
    wait::wait_for_socket(what, port, T, pred)
}

/// Poll until no socket satisfies `pred`.
fn wait_gone(what: &str, pred: impl Fn(&ObservedSocket) -> bool) -> io::Result<()> {
    let end = Instant::now() + T;
    while sockets(false)?.iter().any(&pred) {
        if Instant::now() > end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waited {T:?} for {what} to go"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn is_tcp(s: &ObservedSocket, state: TcpState, local: Endpoint) -> bool {
    s.proto == Proto::Tcp && s.state == state && s.local == local
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::other(what.into())
}

/// A server on `addr` (socket options `opts`) accepts one connection and
/// closes it first; the client reads EOF and closes too; the listener
/// closes. The server's side of the connection goes FIN_WAIT2 -> TIME_WAIT
/// and keeps `addr`. Returns (server endpoint, client endpoint).
fn leave_time_wait(
    rec: &mut Recorder,
    addr: Endpoint,
    opts: SockOpts,
) -> io::Result<(Endpoint, Endpoint)> {
    let l = Sock::new(addr.ip().is_ipv6(), Proto::Tcp, opts)?;
    rec.bind(&l, addr, Want::Ok)?;
    rec.listen(&l, Want::Ok)?;
    let c = Sock::new(addr.ip().is_ipv6(), Proto::Tcp, SockOpts::PLAIN)?;
    rec.connect(&c, addr, Want::Ok)?;
    let (srv, client) = l.accept()?;
    let server = srv.local()?;
    drop(srv); // the server closes first
    if c.read_some()? != 0 {
        return Err(protocol_error("the client expected EOF"));
    }
    drop(c);
    drop(l);
    let tw = wait_for("the server's TIME_WAIT", server.port(), |s| {
        is_tcp(s, TcpState::TimeWait, server) && s.remote == client
    })?;
    rec.push(Step::TimeWaitLeft {
        local: server,
        remote: client,
        substate: TcpState::TimeWait,
        left_by_pid: me(),
        left_by_comm: thread_comm(),
        reuseaddr: opts.reuseaddr,
        reuseport: opts.reuseport,
        expires_in_ms: tw.timer_ms,
    });
    Ok((server, client))
}

fn process_step(rec: &mut Recorder, pid: u32, comm: &str, role: &str, event: ProcessEvent) {
    rec.push(Step::Process {
        pid,
        comm: comm.to_string(),
        role: role.to_string(),
        event,
    });
}

/// An attempt a forked child made and reported: `r` is [errno or 0, ns
/// before, ns after].
#[allow(clippy::too_many_arguments)]
fn child_attempt(
    syscall: Syscall,
    requested: Endpoint,
    local: Option<Endpoint>,
    opts: SockOpts,
    pid: u32,
    comm: &str,
    r: [i64; 3],
) -> Attempt {
    Attempt {
        syscall,
        proto: Proto::Tcp,
        requested,
        local: if r[0] == 0 { local } else { None },
        reuseaddr: opts.reuseaddr,
        reuseport: opts.reuseport,
        v6only: false,
        uid: current_fsuid(),
        pid,
        tid: pid,
        comm: comm.to_string(),
        errno: (r[0] != 0).then_some(r[0] as i32),
        error: None,
        ts_before_ns: r[1] as u64,
        ts_after_ns: r[2] as u64,
        expect: None,
        evidence: Vec::new(),
        ss: None,
        measured: None,
    }
}

/// A forked server's bind() and listen() on `a` with `opts`, both
/// succeeding, as it reported them in `m` ([tag, bind: errno, ns before,
/// ns after, listen: the same three, _]).
fn child_listened(
    rec: &mut Recorder,
    a: Endpoint,
    opts: SockOpts,
    pid: u32,
    comm: &str,
    m: &child::Msg,
) -> io::Result<()> {
    for (syscall, r) in [
        (Syscall::Bind, [m[1], m[2], m[3]]),
        (Syscall::Listen, [m[4], m[5], m[6]]),
    ] {
        rec.foreign(
            child_attempt(syscall, a, Some(a), opts, pid, comm, r),
            Want::Ok,
            None,
        )?;
    }
    Ok(())
}

/// The pid of the process a forked server forked (CLONE_PARENT), from the
/// two messages both send, in either order: [2, its pid, ...] from it and
/// [3, ...] from `server` once it forked.
fn forked_pid(report: &std::os::fd::OwnedFd, server: &str) -> io::Result<u32> {
    let mut pid = None;
    for _ in 0..2 {
        let m = recv(report, T)?;
        match m[0] {
            2 => pid = Some(m[1] as u32),
            3 => {}
            _ => return Err(protocol_error(format!("{server} said {m:?}"))),
        }
    }
    pid.ok_or_else(|| protocol_error(format!("no pid from the process {server} forked")))
}

fn like_tcp4(opts: SockOpts) -> Option<Like> {
    Some(Like {
        v6: false,
        proto: Proto::Tcp,
        opts,
    })
}

// 1 -------------------------------------------------------------------------

fn s1_restart_time_wait(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        // The old server had no SO_REUSEADDR.
        let a = lo(port(1, 0));
        let (srv, cli) = leave_time_wait(rec, a, SockOpts::PLAIN)?;
        let tw = tw_holder(srv, cli, false);
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&s, a, Want::Fail(fail(EADDRINUSE, Code::TimeWait).holder(tw.clone())))?;
        drop(s);
        let s = Sock::tcp4(SockOpts::REUSEADDR)?;
        rec.bind(&s, a, Want::Fail(fail(EADDRINUSE, Code::TimeWait).holder(tw)))?;
        drop(s);
        rec.note(
            "SO_REUSEADDR on the new socket alone does not help: the socket that left the TIME_WAIT lacked it",
        );

        // Old and new server both with SO_REUSEADDR.
        let b = lo(port(1, 1));
        leave_time_wait(rec, b, SockOpts::REUSEADDR)?;
        let s = Sock::tcp4(SockOpts::REUSEADDR)?;
        rec.bind(&s, b, Want::Ok)?;
        rec.listen(&s, Want::Ok)?;
        rec.note("with SO_REUSEADDR on both the old and the new server the restart succeeds");
        Ok(())
    })?
}

// 2 -------------------------------------------------------------------------

fn s2_silent_failure(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        let a = lo(port(2, 0));
        let (srv, cli) = leave_time_wait(rec, a, SockOpts::PLAIN)?;

        let report = pipe()?;
        let control = pipe()?;
        let (w, cr) = (report.w.as_raw_fd(), control.r.as_raw_fd());
        let sa = raw::v4(a.socket_addr());
        const COMM: &str = "silent-server";
        // SAFETY: the body makes raw system calls only.
        let mut child = unsafe {
            fork_child(c"silent-server", &[w, cr], move || {
                let fd = raw::tcp4(false);
                let b = raw::bind(fd, &sa); // EADDRINUSE, ignored
                let l = raw::listen(fd); // autobinds a random port
                raw::send(
                    w,
                    &[1, b[0], b[1], b[2], l[0], l[1], l[2], raw::local_port(fd)],
                );
                raw::block_on(cr);
                0
            })?
        };
        drop(report.w);
        drop(control.r);
        let pid = child.pid();
        process_step(
            rec,
            pid,
            COMM,
            "restarted server that ignores bind()'s result",
            ProcessEvent::Started,
        );
        let m = recv(&report.r, T)?;
        rec.foreign(
            child_attempt(
                Syscall::Bind,
                a,
                Some(a),
                SockOpts::PLAIN,
                pid,
                COMM,
                [m[1], m[2], m[3]],
            ),
            Want::Fail(fail(EADDRINUSE, Code::TimeWait).holder(tw_holder(srv, cli, false))),
            like_tcp4(SockOpts::PLAIN),
        )?;
        let random = any4(m[7] as u16);
        rec.foreign(
            child_attempt(
                Syscall::Listen,
                any4(0),
                Some(random),
                SockOpts::PLAIN,
                pid,
                COMM,
                [m[4], m[5], m[6]],
            ),
            Want::Ok,
            None,
        )?;
        let l = wait_for("the silent server's listener", random.port(), |s| {
            is_tcp(s, TcpState::Listen, random)
        })?;
        if !l.owned_by(pid) {
            return Err(protocol_error(format!(
                "{l:?} is not held by silent-server {pid}"
            )));
        }
        rec.push(Step::Observed {
            socket: l,
            why: "listen() after the failed bind() picked a random port".into(),
        });
        let c = Sock::tcp4(SockOpts::PLAIN)?;
        rec.connect(&c, a, Want::Unreported(ECONNREFUSED))?;
        drop(c);
        child.kill()?;
        process_step(
            rec,
            pid,
            COMM,
            "restarted server that ignores bind()'s result",
            ProcessEvent::Killed,
        );
        Ok(())
    })?
}

// 3 -------------------------------------------------------------------------

fn s3_forked_child(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        let a = lo(port(3, 0));
        let report = pipe()?;
        let control = pipe()?;
        let (w, cr) = (report.w.as_raw_fd(), control.r.as_raw_fd());
        let sa = raw::v4(a.socket_addr());
        const COMM: &str = "fork-server";
        // SAFETY: the bodies make raw system calls only.
        let mut p1 = unsafe {
            fork_child(c"fork-server", &[w, cr], move || {
                let fd = raw::tcp4(true);
                let b = raw::bind(fd, &sa);
                let l = raw::listen(fd);
                raw::send(w, &[1, b[0], b[1], b[2], l[0], l[1], l[2], 0]);
                if b[0] != 0 || l[0] != 0 {
                    return 1;
                }
                let c = raw::accept(fd);
                if c < 0 {
                    return 2;
                }
                // Fork a child to serve the connection.
                let p2 = raw::fork_sibling();
                if p2 == 0 {
                    let mut keep = [c, w, cr];
                    keep.sort_unstable();
                    child::child_setup(&keep, c"fork-server", false); // closes the listener
                    raw::send(w, &[2, libc::getpid() as i64, 0, 0, 0, 0, 0, 0]);
                    raw::block_on(cr);
                    libc::_exit(0);
                }
                if p2 < 0 {
                    return 3;
                }
                // The listener dies.
                libc::close(c);
                libc::close(fd);
                raw::send(w, &[3, p2, 0, 0, 0, 0, 0, 0]);
                0
            })?
        };
        drop(report.w);
        drop(control.r);
        let pid1 = p1.pid();
        process_step(
            rec,
            pid1,
            COMM,
            "server: listens, forks a child per connection",
            ProcessEvent::Started,
        );
        let m = recv(&report.r, T)?;
        child_listened(rec, a, SockOpts::REUSEADDR, pid1, COMM, &m)?;
        let c = Sock::tcp4(SockOpts::PLAIN)?;
        rec.connect(&c, a, Want::Ok)?;
        let cli = c.local()?;
        let pid2 = forked_pid(&report.r, COMM)?;
        let mut p2 = Child::adopt(pid2);
        process_step(
            rec,
            pid2,
            COMM,
            "forked child serving the connection",
            ProcessEvent::Started,
        );
        p1.wait(T)?;
        process_step(
            rec,
            pid1,
            COMM,
            "server: listens, forks a child per connection",
            ProcessEvent::Exited,
        );
        wait_gone("the old listener", |s| is_tcp(s, TcpState::Listen, a))?;
        let est = wait_for("the child's ESTABLISHED connection", a.port(), |s| {
            is_tcp(s, TcpState::Established, a) && s.remote == cli
        })?;
        if !est.owned_by(pid2) {
            return Err(protocol_error(format!(
                "{est:?} is not held by the child {pid2}"
            )));
        }
        rec.push(Step::Observed {
            socket: est,
            why: "the listener is gone, its forked child keeps the connection".into(),
        });
        let h = ExpectedHolder {
            remote: Some(cli),
            reuseaddr: true, // inherited from the listener
            ..owned(TcpState::Established, a, pid2)
        };
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(
            &s,
            a,
            Want::Fail(
                fail(EADDRINUSE, Code::Established)
                    .holder(h)
                    .helps(true, false),
            ),
        )?;
        drop(s);
        let s = Sock::tcp4(SockOpts::REUSEADDR)?;
        rec.bind(&s, a, Want::Ok)?;
        rec.listen(&s, Want::Ok)?;
        drop(s);
        drop(c);
        p2.kill()?;
        process_step(
            rec,
            pid2,
            COMM,
            "forked child serving the connection",
            ProcessEvent::Killed,
        );
        Ok(())
    })?
}

// 4 -------------------------------------------------------------------------

fn s4_close_wait(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        let a = lo(port(4, 0));
        let report = pipe()?;
        let control = pipe()?;
        let (w, cr) = (report.w.as_raw_fd(), control.r.as_raw_fd());
        let sa = raw::v4(a.socket_addr());
        const COMM: &str = "cw-server";
        // SAFETY: the body makes raw system calls only.
        let mut child = unsafe {
            fork_child(c"cw-server", &[w, cr], move || {
                let fd = raw::tcp4(false);
                let b = raw::bind(fd, &sa);
                let l = raw::listen(fd);
                raw::send(w, &[1, b[0], b[1], b[2], l[0], l[1], l[2], 0]);
                if b[0] != 0 || l[0] != 0 {
                    return 1;
                }
                let c = raw::accept(fd);
                libc::close(fd);
                raw::send(w, &[2, c as i64, 0, 0, 0, 0, 0, 0]);
                // Never closes `c`.
                raw::block_on(cr);
                0
            })?
        };
        drop(report.w);
        drop(control.r);
        let pid = child.pid();
        process_step(
            rec,
            pid,
            COMM,
            "server that never closes its connections",
            ProcessEvent::Started,
        );
        let m = recv(&report.r, T)?;
        child_listened(rec, a, SockOpts::PLAIN, pid, COMM, &m)?;
        let c = Sock::tcp4(SockOpts::PLAIN)?;
        rec.connect(&c, a, Want::Ok)?;
        let cli = c.local()?;
        let m = recv(&report.r, T)?;
        if m[0] != 2 || m[1] < 0 {
            return Err(protocol_error(format!("cw-server said {m:?}")));
        }
        wait_gone("cw-server's listener", |s| is_tcp(s, TcpState::Listen, a))?;
        drop(c); // the peer closes
        let cw = wait_for("CLOSE_WAIT", a.port(), |s| {
            is_tcp(s, TcpState::CloseWait, a) && s.remote == cli
        })?;
        if !cw.owned_by(pid) {
            return Err(protocol_error(format!(
                "{cw:?} is not held by cw-server {pid}"
            )));
        }
        rec.push(Step::Observed {
            socket: cw,
            why: "the client closed; the server never closes its end".into(),
        });
        let h = ExpectedHolder {
            remote: Some(cli),
            ..owned(TcpState::CloseWait, a, pid)
        };
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(
            &s,
            a,
            Want::Fail(fail(EADDRINUSE, Code::CloseWait).holder(h)),
        )?;
        drop(s);
        child.kill()?;
        process_step(
            rec,
            pid,
            COMM,
            "server that never closes its connections",
            ProcessEvent::Killed,
        );
        Ok(())
    })?
}

// 5 -------------------------------------------------------------------------

fn s5_wildcard(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        let p = port(5, 0);
        let (srv, cli) = leave_time_wait(rec, lo2(p), SockOpts::PLAIN)?;
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&s, lo(p), Want::Ok)?;
        drop(s);
        let h = ExpectedHolder {
            overlap: Overlap::Wildcard,
            ..tw_holder(srv, cli, false)
        };
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(
            &s,
            any4(p),
            Want::Fail(fail(EADDRINUSE, Code::TimeWait).holder(h)),
        )?;
        Ok(())
    })?
}

// 6 -------------------------------------------------------------------------

fn s6_double_listen(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("dual-listen", || {
        let a = lo(port(6, 0));
        let s1 = Sock::tcp4(SockOpts::REUSEADDR)?;
        let s2 = Sock::tcp4(SockOpts::REUSEADDR)?;
        rec.bind(&s1, a, Want::Ok)?;
        rec.bind(&s2, a, Want::Ok)?;
        rec.listen(&s1, Want::Ok)?;
        let h = ExpectedHolder {
            reuseaddr: true,
            ..owned(TcpState::Listen, a, me())
        };
        rec.listen(&s2, Want::Fail(fail(EADDRINUSE, Code::Listener).holder(h)))?;

        let u1 = Sock::new(false, Proto::Udp, SockOpts::PLAIN)?;
        rec.bind(&u1, a, Want::Ok)?;
        rec.note("a UDP socket binds the port a TCP socket listens on: separate port spaces");
        let u2 = Sock::new(false, Proto::Udp, SockOpts::PLAIN)?;
        let h = ExpectedHolder {
            proto: Proto::Udp,
            ..owned(TcpState::Bound, a, me())
        };
        rec.bind(&u2, a, Want::Fail(fail(EADDRINUSE, Code::Bound).holder(h)))?;
        Ok(())
    })?
}

// 7 -------------------------------------------------------------------------

fn s7_reuseport(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("reuseport-srv", || {
        // Both set, same uid.
        let a = lo(port(7, 0));
        let l1 = Sock::tcp4(SockOpts::REUSEPORT)?;
        rec.bind(&l1, a, Want::Ok)?;
        rec.listen(&l1, Want::Ok)?;
        let l2 = Sock::tcp4(SockOpts::REUSEPORT)?;
        rec.bind(&l2, a, Want::Ok)?;
        rec.listen(&l2, Want::Ok)?;
        rec.note("two SO_REUSEPORT listeners of one user share the port");

        // The holder has it, the newcomer not.
        let b = lo(port(7, 1));
        let l = Sock::tcp4(SockOpts::REUSEPORT)?;
        rec.bind(&l, b, Want::Ok)?;
        rec.listen(&l, Want::Ok)?;
        let h = ExpectedHolder {
            reuseport: true,
            ..owned(TcpState::Listen, b, me())
        };
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(
            &s,
            b,
            Want::Fail(
                fail(EADDRINUSE, Code::ReuseportMismatch)
                    .holder(h)
                    .helps(false, true),
            ),
        )?;

        // The newcomer has it, the holder not.
        let c = lo(port(7, 2));
        let l = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&l, c, Want::Ok)?;
        rec.listen(&l, Want::Ok)?;
        let s = Sock::tcp4(SockOpts::REUSEPORT)?;
        rec.bind(
            &s,
            c,
            Want::Fail(fail(EADDRINUSE, Code::ReuseportMismatch).holder(owned(
                TcpState::Listen,
                c,
                me(),
            ))),
        )?;

        // Both have it, different owners: the listener's socket is created
        // while this thread's fsuid is 65534 (sk_uid is the fsuid at socket()).
        let d = lo(port(7, 3));
        let before = current_fsuid();
        unsafe { libc::setfsuid(65534) };
        let l = Sock::tcp4(SockOpts::REUSEPORT);
        unsafe { libc::setfsuid(before) };
        let l = l?;
        if l.uid != 65534 || current_fsuid() != before {
            return Err(protocol_error("setfsuid did not take"));
        }
        rec.bind(&l, d, Want::Ok)?;
        rec.listen(&l, Want::Ok)?;
        let h = ExpectedHolder {
            reuseport: true,
            uid: Some(65534),
            ..owned(TcpState::Listen, d, me())
        };
        let s = Sock::tcp4(SockOpts::REUSEPORT)?;
        rec.bind(
            &s,
            d,
            Want::Fail(fail(EADDRINUSE, Code::ReuseportMismatch).holder(h)),
        )?;
        Ok(())
    })?
}

// 8 -------------------------------------------------------------------------

/// Restores a sysctl of the current thread's namespace when dropped.
struct Sysctl {
    name: &'static str,
    previous: String,
}

impl Sysctl {
    fn set(rec: &mut Recorder, name: &'static str, value: &str) -> io::Result<Sysctl> {
        let previous = netns::set_sysctl(name, value)?;
        rec.push(Step::Sysctl {
            name: name.into(),
            value: value.into(),
            previous: previous.clone(),
        });
        Ok(Sysctl { name, previous })
    }

    fn restore(self, rec: &mut Recorder) -> io::Result<()> {
        let now = netns::set_sysctl(self.name, &self.previous)?;
        rec.push(Step::Sysctl {
            name: self.name.into(),
            value: self.previous.clone(),
            previous: now,
        });
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = netns::set_sysctl(self.name, &self.previous);
    }
}

fn s8_exhaustion(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("load-client", || {
        const RANGE: (u16, u16) = (40000, 40001);
        let range = Sysctl::set(
            rec,
            "net.ipv4.ip_local_port_range",
            &format!("{} {}", RANGE.0, RANGE.1),
        )?;
        // With the default tcp_tw_reuse=2 a loopback connect() may take over
        // a TIME_WAIT older than 1 s: switch it off so that the failure does
        // not depend on timing.
        let reuse = Sysctl::set(rec, "net.ipv4.tcp_tw_reuse", "0")?;

        let a = lo(port(8, 0));
        let l = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&l, a, Want::Ok)?;
        rec.listen(&l, Want::Ok)?;
        let mut tws = Vec::new();
        for _ in RANGE.0..=RANGE.1 {
            let c = Sock::tcp4(SockOpts::PLAIN)?;
            rec.connect(&c, a, Want::Ok)?;
            let cl = c.local()?;
            let (srv, _) = l.accept()?;
            drop(c); // the client closes first
            if srv.read_some()? != 0 {
                return Err(protocol_error("the server expected EOF"));
            }
            drop(srv);
            tws.push((cl, a));
        }
        for &(cl, srv) in &tws {
            wait_for("the client's TIME_WAIT", cl.port(), |s| {
                is_tcp(s, TcpState::TimeWait, cl) && s.remote == srv
            })?;
        }
        rec.push(Step::PortsFilled {
            range: RANGE,
            time_wait: tws.clone(),
        });
        let exhausted = |errno| Expect {
            time_wait_count: Some(tws.len()),
            ..fail(errno, Code::EphemeralExhausted)
        };
        let c = Sock::tcp4(SockOpts::PLAIN)?;
        rec.connect(&c, a, Want::Fail(exhausted(EADDRNOTAVAIL)))?;
        drop(c);
        let b = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&b, lo(0), Want::Fail(exhausted(EADDRINUSE)))?;
        drop(b);
        let u = Sock::tcp4(SockOpts::PLAIN)?;
        rec.listen(&u, Want::Fail(exhausted(EADDRINUSE)))?;
        drop(u);
        drop(l);
        reuse.restore(rec)?;
        range.restore(rec)?;
        Ok(())
    })?
}

// 9 -------------------------------------------------------------------------

fn s9_linger_reset(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("linger-srv", || {
        let a = lo(port(9, 0));
        let l = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&l, a, Want::Ok)?;
        rec.listen(&l, Want::Ok)?;
        let c = Sock::tcp4(SockOpts::PLAIN)?;
        rec.connect(&c, a, Want::Ok)?;
        let (srv, cli) = l.accept()?;
        srv.set_linger_zero()?;
        drop(srv); // RST
        let peer_errno = c.read_some().err().map(|e| errno_of(&e));
        let left = sockets(false)?
            .iter()
            .filter(|s| {
                s.proto == Proto::Tcp
                    && ((s.local == a && s.remote == cli) || (s.local == cli && s.remote == a))
            })
            .count();
        rec.push(Step::Reset {
            local: a,
            remote: cli,
            by_pid: me(),
            by_comm: thread_comm(),
            peer_errno,
            time_wait_left: left,
        });
        if left != 0 {
            return Err(protocol_error(format!(
                "{left} sockets left on {a} -> {cli} after the RST"
            )));
        }
        drop(c);
        drop(l);
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&s, a, Want::Ok)?;
        rec.listen(&s, Want::Ok)?;
        rec.note("no TIME_WAIT: the restart without SO_REUSEADDR succeeds at once");
        Ok(())
    })?
}

// 10 ------------------------------------------------------------------------

fn s10_ipv6(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    if !ns.has_ipv6() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "IPv6 is off in this kernel (no ::1)",
        ));
    }
    ns.run_named("v6-server", || {
        // [::] with v6only=0 takes the IPv4 port too.
        let p = port(10, 0);
        let l6 = Sock::new(true, Proto::Tcp, SockOpts::PLAIN.v6only(false))?;
        rec.bind(&l6, any6(p), Want::Ok)?;
        rec.listen(&l6, Want::Ok)?;
        let h = ExpectedHolder {
            overlap: Overlap::Wildcard,
            ..owned(TcpState::Listen, any6(p), me())
        };
        let s4 = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(
            &s4,
            lo(p),
            Want::Fail(fail(EADDRINUSE, Code::Listener).holder(h)),
        )?;
        drop(s4);

        // [::] with v6only=1 leaves IPv4 alone.
        let p = port(10, 1);
        let l6 = Sock::new(true, Proto::Tcp, SockOpts::PLAIN.v6only(true))?;
        rec.bind(&l6, any6(p), Want::Ok)?;
        rec.listen(&l6, Want::Ok)?;
        let s4 = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&s4, lo(p), Want::Ok)?;
        rec.listen(&s4, Want::Ok)?;

        // The other way round: 127.0.0.1 first, then [::] with v6only=0.
        let p = port(10, 2);
        let l4 = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&l4, lo(p), Want::Ok)?;
        rec.listen(&l4, Want::Ok)?;
        let h = ExpectedHolder {
            overlap: Overlap::Wildcard,
            ..owned(TcpState::Listen, lo(p), me())
        };
        let s6 = Sock::new(true, Proto::Tcp, SockOpts::PLAIN.v6only(false))?;
        rec.bind(
            &s6,
            any6(p),
            Want::Fail(fail(EADDRINUSE, Code::Listener).holder(h)),
        )?;
        Ok(())
    })?
}

// 11 ------------------------------------------------------------------------

fn s11_inherited_listener(ns: &Netns, rec: &mut Recorder) -> io::Result<()> {
    ns.run_named("web-server", || {
        let a = lo(port(11, 0));
        let report = pipe()?;
        let control = pipe()?;
        let (w, cr) = (report.w.as_raw_fd(), control.r.as_raw_fd());
        let sa = raw::v4(a.socket_addr());
        const SERVER: &str = "old-server";
        const HELPER: &str = "log-helper";
        // SAFETY: the bodies make raw system calls only.
        let mut p1 = unsafe {
            fork_child(c"old-server", &[w, cr], move || {
                let fd = raw::tcp4(false);
                let b = raw::bind(fd, &sa);
                let l = raw::listen(fd);
                raw::send(w, &[1, b[0], b[1], b[2], l[0], l[1], l[2], 0]);
                if b[0] != 0 || l[0] != 0 {
                    return 1;
                }
                // A helper that keeps every descriptor it was born with,
                // the listener among them, as a helper started without
                // closing them (or exec'd without close-on-exec) does.
                let p2 = raw::fork_sibling();
                if p2 == 0 {
                    let mut keep = [fd, w, cr];
                    keep.sort_unstable();
                    child::child_setup(&keep, c"log-helper", true);
                    raw::send(w, &[2, libc::getpid() as i64, 0, 0, 0, 0, 0, 0]);
                    raw::block_on(cr);
                    libc::_exit(0);
                }
                if p2 < 0 {
                    return 3;
                }
                raw::send(w, &[3, p2, 0, 0, 0, 0, 0, 0]);
                0 // the server exits; its copy of the listener closes with it
            })?
        };
        drop(report.w);
        drop(control.r);
        let pid1 = p1.pid();
        let role1 = "server: listens, starts a helper, dies";
        process_step(rec, pid1, SERVER, role1, ProcessEvent::Started);
        let m = recv(&report.r, T)?;
        child_listened(rec, a, SockOpts::PLAIN, pid1, SERVER, &m)?;
        let pid2 = forked_pid(&report.r, SERVER)?;
        let mut p2 = Child::adopt(pid2);
        let role2 = "helper that inherited the listener";
        process_step(rec, pid2, HELPER, role2, ProcessEvent::Started);
        p1.wait(T)?;
        process_step(rec, pid1, SERVER, role1, ProcessEvent::Exited);
        // The server is reaped: its descriptors are closed.
        let l = wait_for("the listener", a.port(), |s| is_tcp(s, TcpState::Listen, a))?;
        if !l.owned_by(pid2) || l.owned_by(pid1) {
            return Err(protocol_error(format!(
                "{l:?} is not held by the helper {pid2} alone"
            )));
        }
        rec.push(Step::Observed {
            socket: l,
            why: "the server is gone, the helper it started still holds its listener".into(),
        });
        let h = ExpectedHolder {
            opened_by_pid: Some(pid1),
            ..owned(TcpState::Listen, a, pid2)
        };
        let s = Sock::tcp4(SockOpts::REUSEADDR)?;
        rec.bind(
            &s,
            a,
            Want::Fail(fail(EADDRINUSE, Code::Listener).holder(h)),
        )?;
        drop(s);
        p2.kill()?;
        process_step(rec, pid2, HELPER, role2, ProcessEvent::Killed);
        wait_gone("the helper's listener", |s| is_tcp(s, TcpState::Listen, a))?;
        let s = Sock::tcp4(SockOpts::PLAIN)?;
        rec.bind(&s, a, Want::Ok)?;
        rec.listen(&s, Want::Ok)?;
        Ok(())
    })?
}
