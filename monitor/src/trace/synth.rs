//! Synthetic traces: a deterministic, plausible stream of events (a server
//! on 8080 whose connections end in TIME_WAIT or CLOSE_WAIT, clients that
//! close first, restarts that fail, lost events) for tests, the fuzz seeds
//! and the reading benchmark. No kernel, no randomness beyond a seeded
//! xorshift: the same arguments give the same events.

use std::collections::VecDeque;

use crate::diagnose::{diagnose, Context, Failure};
use crate::event::*;
use crate::probe::enrich::rfc3339;

use super::header::{Header, TRACE_VERSION};

/// Boot-time ns of the first event.
pub const BOOT_NS: u64 = 1_000_000_000_000;
/// Unix ns of boot (2026-11-21T23:00:00Z minus BOOT_NS).
pub const BOOT_UNIX_NS: i128 = 1_795_302_000_000_000_000 - BOOT_NS as i128;
pub const NETNS: u32 = 4026531840;

/// A header for a synthetic trace (fixed, so outputs are reproducible).
pub fn header() -> Header {
    let mut h: Header = serde_json::from_str(&format!("{{\"twmon_trace\":{TRACE_VERSION}}}"))
        .expect("minimal header");
    h.host = "synthetic".into();
    h.kernel = "6.18.0-synthetic".into();
    h.started = rfc3339(BOOT_UNIX_NS + BOOT_NS as i128);
    h.boot_ns_at_start = BOOT_NS;
    h.twmon_version = env!("CARGO_PKG_VERSION").into();
    h.recording = "synthetic".into();
    h
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Generates events; an iterator of exactly `n` events.
pub struct Synth {
    n: u64,
    made: u64,
    ts_ns: u64,
    /// Mean ns between events.
    step_ns: u64,
    rng: Rng,
    cookie: u64,
    next_port: u16,
    queue: VecDeque<Event>,
    /// (expires at, local, remote, cookie) of open timewait socks.
    tw: VecDeque<(u64, Endpoint, Endpoint, u64)>,
    server_pid: u32,
}

impl Synth {
    /// `n` events, about `step_ns` apart on average.
    pub fn new(n: u64, seed: u64, step_ns: u64) -> Synth {
        Synth {
            n,
            made: 0,
            ts_ns: BOOT_NS,
            step_ns: step_ns.max(1),
            rng: Rng(seed.max(1)),
            cookie: 1000,
            next_port: 40000,
            queue: VecDeque::new(),
            tw: VecDeque::new(),
            server_pid: 100,
        }
    }

    fn ev(&self, pid: Option<(u32, &str)>, kind: Kind) -> Event {
        Event {
            common: Common {
                ts: rfc3339(BOOT_UNIX_NS + self.ts_ns as i128),
                ts_ns: self.ts_ns,
                netns: NETNS,
                proto: Proto::Tcp,
                pid: pid.map(|p| p.0),
                comm: pid.map(|p| p.1.to_string()),
                container: None,
            },
            kind,
        }
    }

    fn state(
        &self,
        pid: Option<(u32, &str)>,
        local: Endpoint,
        remote: Endpoint,
        old: TcpState,
        new: TcpState,
        cookie: u64,
    ) -> Event {
        self.ev(
            pid,
            Kind::State(StateChange {
                local,
                remote,
                old,
                new,
                cookie,
                reuseaddr: false,
                reuseport: false,
                uid: 1000,
                inode: cookie + 1_000_000,
            }),
        )
    }

    fn tw_open(&mut self, local: Endpoint, remote: Endpoint, cookie: u64, by: (u32, &str)) {
        let e = self.ev(
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local,
                remote,
                substate: TcpState::TimeWait,
                expires_in_ms: 60_000,
                left_by: Some(Process {
                    pid: by.0,
                    comm: by.1.to_string(),
                }),
                cookie,
                reuseaddr: false,
                reuseport: false,
            }),
        );
        self.queue.push_back(e);
        self.tw
            .push_back((self.ts_ns + 60_000_000_000, local, remote, cookie));
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 60999 { 40000 } else { p + 1 };
        p
    }

    fn failure(&mut self) {
        self.server_pid += 1;
        let pid = self.server_pid;
        let holder = self.tw.front().map(|(at, l, r, _)| Holder {
            device: None,
            state: TcpState::TimeWait,
            local: *l,
            remote: Some(*r),
            pid: None,
            comm: None,
            uid: None,
            reuseaddr: false,
            reuseport: false,
            expires_in_ms: Some(at.saturating_sub(self.ts_ns) / 1_000_000),
            overlap: Overlap::Wildcard,
            left_by: Some(Process {
                pid: 100,
                comm: "nginx".into(),
            }),
            opened_by: None,
            outgoing: None,
            shared_with: Vec::new(),
        });
        // Explained by the product's own rules, so that what tests and
        // snapshots show of a synthetic trace is what twmon would say.
        let failure = Failure {
            syscall: Syscall::Bind,
            errno: libc::EADDRINUSE,
            proto: Proto::Tcp,
            requested: "0.0.0.0:8080".parse().unwrap(),
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 1000,
            bound_dev_if: 0,
            bound: None,
        };
        let context = Context {
            holders: holder.into_iter().collect(),
            ..Context::default()
        };
        let diagnosis = diagnose(&failure, &context);
        let e = self.ev(
            Some((pid, "nginx")),
            Kind::BindFailed(Box::new(BindFailed {
                holders_omitted: 0,
                device: None,
                syscall: failure.syscall,
                errno: failure.errno,
                error: "EADDRINUSE".into(),
                requested: failure.requested.into(),
                reuseaddr: failure.reuseaddr,
                reuseport: failure.reuseport,
                v6only: failure.v6only,
                uid: failure.uid,
                holders: context.holders,
                diagnosis: Some(diagnosis),
                freebind: false,
                transparent: false,
                bound_dev_if: 0,
                cgroup_id: 0,
                cookie: 0,
                inode: 0,
                tid: pid,
                local: None,
                kernel_holders: None,
                holder_mismatch: None,
                kernel_port: None,
                port_mismatch: None,
            })),
        );
        self.queue.push_back(e);
    }

    /// One connection's life (several events).
    fn connection(&mut self) {
        let srv: Endpoint = "127.0.0.1:8080".parse().unwrap();
        let leaky: Endpoint = "127.0.0.1:9090".parse().unwrap();
        let cport = self.port();
        let cli = Endpoint::v4([127, 0, 0, 1], cport);
        self.cookie += 2;
        let (sc, cc) = (self.cookie, self.cookie + 1);
        use TcpState::*;
        let nginx = Some((100, "nginx"));
        let curl = Some((300, "curl"));
        match self.rng.below(20) {
            // The server closes first: TIME_WAIT on 8080.
            0..=13 => {
                let q = [
                    self.state(curl, cli, srv, Close, SynSent, cc),
                    self.state(None, srv, cli, SynRecv, Established, sc),
                    self.state(None, cli, srv, SynSent, Established, cc),
                    self.state(nginx, srv, cli, Established, FinWait1, sc),
                    self.state(None, cli, srv, Established, CloseWait, cc),
                    self.state(None, srv, cli, FinWait1, FinWait2, sc),
                    self.state(curl, cli, srv, CloseWait, LastAck, cc),
                ];
                self.queue.extend(q);
                self.tw_open(srv, cli, sc, (100, "nginx"));
                let q = [
                    self.state(None, srv, cli, FinWait2, Close, sc),
                    self.state(None, cli, srv, LastAck, Close, cc),
                ];
                self.queue.extend(q);
            }
            // The client closes first: TIME_WAIT on its ephemeral port.
            14..=18 => {
                let q = [
                    self.state(curl, cli, srv, Close, SynSent, cc),
                    self.state(None, srv, cli, SynRecv, Established, sc),
                    self.state(None, cli, srv, SynSent, Established, cc),
                    self.state(curl, cli, srv, Established, FinWait1, cc),
                    self.state(None, srv, cli, Established, CloseWait, sc),
                    self.state(nginx, srv, cli, CloseWait, LastAck, sc),
                ];
                self.queue.extend(q);
                self.tw_open(cli, srv, cc, (300, "curl"));
                let q = [
                    self.state(None, cli, srv, FinWait2, Close, cc),
                    self.state(None, srv, cli, LastAck, Close, sc),
                ];
                self.queue.extend(q);
            }
            // A leaky server never closes: CLOSE_WAIT on 9090.
            _ => {
                let q = [
                    self.state(None, leaky, cli, SynRecv, Established, sc),
                    self.state(
                        Some((200, "leaky")),
                        leaky,
                        cli,
                        Established,
                        Established,
                        sc,
                    ),
                    self.state(None, leaky, cli, Established, CloseWait, sc),
                    self.state(curl, cli, leaky, Established, FinWait1, cc),
                    self.state(None, cli, leaky, FinWait1, FinWait2, cc),
                ];
                self.queue.extend(q);
            }
        }
    }

    fn refill(&mut self) {
        // Expired timewait socks close first, in time order.
        while let Some((at, l, r, c)) = self.tw.front().copied() {
            if at > self.ts_ns {
                break;
            }
            self.tw.pop_front();
            let e = self.ev(
                None,
                Kind::TimewaitClose(TimewaitClose {
                    local: l,
                    remote: r,
                    reason: TimewaitEnd::Expired,
                    cookie: c,
                    ended_by: None,
                    end_mismatch: None,
                }),
            );
            self.queue.push_back(e);
        }
        if !self.queue.is_empty() {
            return;
        }
        match self.rng.below(2000) {
            0 => self.failure(),
            1 => {
                let count = 1 + self.rng.below(50);
                let e = self.ev(
                    None,
                    Kind::Lost(Lost {
                        count,
                        stream: Some("events".into()),
                    }),
                );
                self.queue.push_back(e);
            }
            _ => self.connection(),
        }
    }
}

impl Iterator for Synth {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.made >= self.n {
            return None;
        }
        self.ts_ns += self.rng.below(2 * self.step_ns);
        if self.made == 0 {
            // Start with the listener, so failures have something to hit.
            self.made += 1;
            return Some(self.ev(
                Some((100, "nginx")),
                Kind::Bound(Bound {
                    syscall: Syscall::Listen,
                    local: "0.0.0.0:8080".parse().unwrap(),
                    reuseaddr: false,
                    reuseport: false,
                    v6only: false,
                    uid: 1000,
                    cookie: 1,
                    bound_dev_if: 0,
                    inode: 1,
                }),
            ));
        }
        if self.made == self.n / 2 {
            // Always at least one failure, mid-way.
            self.failure();
        }
        while self.queue.is_empty() {
            self.refill();
        }
        self.made += 1;
        let mut e = self.queue.pop_front()?;
        e.common.ts_ns = self.ts_ns;
        e.common.ts = rfc3339(BOOT_UNIX_NS + self.ts_ns as i128);
        Some(e)
    }
}

/// A whole synthetic trace file's bytes (plain).
pub fn trace_bytes(n: u64, seed: u64, step_ns: u64) -> Vec<u8> {
    let mut out = header().to_line().into_bytes();
    out.push(b'\n');
    for e in Synth::new(n, seed, step_ns) {
        out.extend_from_slice(crate::output::json_line(&e).as_bytes());
        out.push(b'\n');
    }
    out
}
