//! How a scenario records its system calls.

use std::io;

use super::procnet::{snapshot, ss_text, ObservedSocket};
use super::sock::{boottime_ns, gettid, thread_comm, Sock, SockOpts};
use super::{describe_errno, errno_of, Attempt, Measured, Recorder, Step, Want};
use crate::event::{errno_name, Endpoint, Proto, Syscall};

/// Enough to open another socket like the one that failed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Like {
    pub v6: bool,
    pub proto: Proto,
    pub opts: SockOpts,
}

impl Like {
    pub fn of(s: &Sock) -> Like {
        Like {
            v6: s.v6,
            proto: s.proto,
            opts: s.opts,
        }
    }

    /// Retry the failed call on fresh sockets with SO_REUSEADDR, then
    /// SO_REUSEPORT, forced on.
    fn measure(&self, syscall: Syscall, requested: Endpoint) -> Measured {
        let retry = |opts: SockOpts| -> bool {
            let Ok(s) = Sock::new(self.v6, self.proto, opts) else {
                return false;
            };
            s.bind(requested).is_ok()
                && (syscall != Syscall::Listen || self.proto != Proto::Tcp || s.listen(8).is_ok())
        };
        Measured {
            reuseaddr_helps: retry(SockOpts {
                reuseaddr: true,
                ..self.opts
            }),
            reuseport_helps: retry(SockOpts {
                reuseport: true,
                ..self.opts
            }),
        }
    }
}

impl Recorder {
    pub(crate) fn bind(&mut self, s: &Sock, ep: Endpoint, want: Want) -> io::Result<()> {
        self.call(s, Syscall::Bind, ep, want)
    }

    pub(crate) fn listen(&mut self, s: &Sock, want: Want) -> io::Result<()> {
        let requested = s.local()?;
        self.call(s, Syscall::Listen, requested, want)
    }

    pub(crate) fn connect(&mut self, s: &Sock, ep: Endpoint, want: Want) -> io::Result<()> {
        self.call(s, Syscall::Connect, ep, want)
    }

    fn call(
        &mut self,
        s: &Sock,
        syscall: Syscall,
        requested: Endpoint,
        want: Want,
    ) -> io::Result<()> {
        let t0 = boottime_ns();
        let r = match syscall {
            Syscall::Bind => s.bind(requested),
            Syscall::Listen => s.listen(64),
            Syscall::Connect => s.connect(requested),
        };
        let t1 = boottime_ns();
        let o = s.actual_opts();
        let a = Attempt {
            syscall,
            proto: s.proto,
            requested,
            local: if r.is_ok() { s.local().ok() } else { None },
            reuseaddr: o.reuseaddr,
            reuseport: o.reuseport,
            v6only: o.v6only,
            uid: s.uid,
            pid: std::process::id(),
            tid: gettid(),
            comm: thread_comm(),
            errno: r.as_ref().err().map(errno_of),
            error: None,
            ts_before_ns: t0,
            ts_after_ns: t1,
            expect: None,
            evidence: Vec::new(),
            ss: None,
            measured: None,
        };
        self.finish(a, want, Some(Like::of(s)))
    }

    /// Record a call another process made (a forked child reports it).
    pub(crate) fn foreign(&mut self, a: Attempt, want: Want, like: Option<Like>) -> io::Result<()> {
        self.finish(a, want, like)
    }

    fn finish(&mut self, mut a: Attempt, want: Want, like: Option<Like>) -> io::Result<()> {
        let expected = match &want {
            Want::Ok => None,
            Want::Fail(e) => Some(e.errno),
            Want::Unreported(e) => Some(*e),
        };
        if a.errno.is_some() {
            a.evidence = snapshot().unwrap_or_default();
            if self.opts.ss {
                a.ss = ss_text();
            }
        }
        if let Want::Fail(e) = want {
            if self.opts.probe
                && a.errno.is_some()
                && a.syscall != Syscall::Connect
                && a.requested.port() != 0
            {
                a.measured = like.map(|l| l.measure(a.syscall, a.requested));
            }
            a.expect = Some(e);
        }
        a.error = a.errno.map(errno_name);
        let mismatch = (a.errno != expected).then(|| {
            let mut m = format!(
                "{} {}({}) by {} {}: expected {}, the kernel said {}",
                a.proto.as_str(),
                a.syscall.as_str(),
                a.requested,
                a.comm,
                a.pid,
                describe_errno(expected),
                describe_errno(a.errno)
            );
            if a.errno.is_some() {
                m += &format!("; {}", on_port(&a.evidence, a.requested.port()));
            }
            m
        });
        self.push(Step::Attempt(a));
        match mismatch {
            Some(m) => Err(io::Error::other(m)),
            None => Ok(()),
        }
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.push(Step::Note { text: text.into() });
    }
}

/// The sockets of `snap` on `port` (either end), with the processes that
/// hold them: what an unexpected failure ran into.
fn on_port(snap: &[ObservedSocket], port: u16) -> String {
    let v: Vec<String> = snap
        .iter()
        .filter(|s| s.local.port() == port || s.remote.port() == port)
        .map(|s| {
            let owners: Vec<String> = s
                .owners
                .iter()
                .map(|p| format!("{} {}", p.comm, p.pid))
                .collect();
            format!(
                "{} {} {} -> {} held by {}",
                s.proto.as_str(),
                s.state.as_str(),
                s.local,
                s.remote,
                if owners.is_empty() {
                    "no process".to_string()
                } else {
                    owners.join(", ")
                }
            )
        })
        .collect();
    if v.is_empty() {
        format!(
            "/proc/net lists no socket on port {port} (it does not list TCP sockets that are \
             only bound)"
        )
    } else {
        format!("on port {port} then: {}", v.join("; "))
    }
}
