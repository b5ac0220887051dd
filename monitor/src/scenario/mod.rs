//! The contract's ten field scenarios (shared/design/contract.md,
//! "Scenarios every part is tested against") and one of twmon's own (11: a
//! listener a helper process inherited), played for real with real
//! sockets, each in a private network namespace on loopback only.
//!
//! Playing a scenario returns an [`Outcome`]: every bind(), listen() and
//! connect() it made (who, with which options, what the kernel answered,
//! when), the diagnosis twmon is expected to give for each failure, and
//! what /proc/net (and optionally `ss`) showed at that moment. Kernel
//! end-to-end tests run `twmon watch --json --netns INODE` while a scenario
//! plays and compare; `twmon demo` plays them one after the other.
//!
//! ```no_run
//! use monitor::scenario::{self, Netns, Options, Recorder};
//! let ns = Netns::new()?;
//! // ... start twmon on ns.inode() ...
//! for sc in scenario::all() {
//!     let out = sc.run(&ns, Recorder::new(&ns, Options::default()))?;
//!     for a in out.failures() {
//!         println!("{} {:?} -> {:?}", a.requested, a.errno, a.expect.as_ref().map(|e| e.code));
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Scenarios use distinct ports (7000 + 100 × id + k), restore the sysctls
//! they change, close their sockets and reap their processes before they
//! return, so several can play in one namespace one after the other. What
//! stays behind is what the kernel keeps by itself: TIME_WAIT sockets (60 s,
//! or until the namespace goes).

mod child;
mod netns;
mod plays;
mod procnet;
mod record;
mod sock;
mod wait;

use std::fmt;
use std::io;

use serde::Serialize;

pub use child::spawn_clean;
pub use netns::{set_sysctl, sysctl, Netns};
pub use procnet::{is_fin_wait2_orphan, snapshot, ss_text, ObservedSocket};
pub use sock::{boottime_ns, current_fsuid, server_closes_first, Sock, SockOpts};
pub use wait::wait_for_socket;

use crate::event::{errno_name, DiagnosisCode, Endpoint, Overlap, Proto, Syscall, TcpState};

/// One scenario of the contract.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// 1..=10, the contract's numbering; 11 and on, twmon's own.
    pub id: u8,
    /// A short name ("server-restart-time-wait").
    pub name: &'static str,
    /// One or two sentences for a person (`twmon demo` shows it).
    pub caption: &'static str,
    /// Plays it in `ns`, recording into the recorder. Self-cleaning.
    pub play: fn(&Netns, &mut Recorder) -> io::Result<()>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scenario {} ({})", self.id, self.name)
    }
}

/// The scenarios, in the contract's order, then twmon's own.
pub fn all() -> Vec<Scenario> {
    plays::ALL.to_vec()
}

/// The scenario with this number.
pub fn by_id(id: u8) -> Option<Scenario> {
    plays::ALL.iter().copied().find(|s| s.id == id)
}

impl Scenario {
    /// Play it in `ns` with this recorder.
    pub fn run(&self, ns: &Netns, mut rec: Recorder) -> Result<Outcome, ScenarioError> {
        let started_ns = boottime_ns();
        let r = (self.play)(ns, &mut rec);
        let outcome = Outcome {
            scenario: self.id,
            name: self.name.to_string(),
            netns: ns.inode(),
            pid: std::process::id(),
            started_ns,
            ended_ns: boottime_ns(),
            steps: rec.steps,
        };
        match r {
            Ok(()) => Ok(outcome),
            Err(error) => Err(ScenarioError {
                scenario: self.id,
                error,
                partial: outcome,
            }),
        }
    }

    /// Play it in a namespace of its own, destroyed afterwards.
    pub fn run_fresh(&self, opts: Options) -> Result<Outcome, ScenarioError> {
        let ns = Netns::new().map_err(|error| ScenarioError {
            scenario: self.id,
            error,
            partial: Outcome::default(),
        })?;
        self.run(&ns, Recorder::new(&ns, opts))
    }
}

/// What a scenario could not do, with what it had recorded until then.
#[derive(Debug)]
pub struct ScenarioError {
    pub scenario: u8,
    pub error: io::Error,
    pub partial: Outcome,
}

impl ScenarioError {
    /// Why playing the scenario once more may go through: a set-up step
    /// waited in vain for a socket while the namespace's loopback
    /// retransmitted, which happens only on a machine too slow for the
    /// kernel's timers ([`wait::TimedOut`]). The scenario's own steps were
    /// disturbed, not what a test checks about them; any other failure is
    /// `None`.
    pub fn disturbed(&self) -> Option<&'static str> {
        let t = self.error.get_ref()?.downcast_ref::<wait::TimedOut>()?;
        t.loopback_retransmitted.then_some(
            "a set-up step waited in vain while loopback retransmitted (a machine too slow \
             for the kernel's TCP timers)",
        )
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario {}: {}", self.scenario, self.error)
    }
}

impl std::error::Error for ScenarioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// How much to record besides the scenario's own system calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// After each failure, retry with SO_REUSEADDR and with SO_REUSEPORT
    /// forced on, to measure whether they would have helped
    /// ([`Attempt::measured`]). The retries are real bind()/listen() calls
    /// in the namespace: leave this off while twmon watches.
    pub probe: bool,
    /// After each failure, keep the text of `ss -tuanpoeH` ([`Attempt::ss`]).
    pub ss: bool,
}

type StepHook = Box<dyn FnMut(&Step) + Send>;

/// Collects the steps of a scenario as it plays.
pub struct Recorder {
    opts: Options,
    steps: Vec<Step>,
    on_step: Option<StepHook>,
}

impl Recorder {
    pub fn new(_ns: &Netns, opts: Options) -> Recorder {
        Recorder {
            opts,
            steps: Vec::new(),
            on_step: None,
        }
    }

    /// Call `f` on each step as it is recorded (on the scenario's thread),
    /// e.g. to show it live. `f` may sleep to pace a demo: no scenario
    /// depends on timing (scenario 8 turns tcp_tw_reuse off), though forked
    /// helpers give up after 10 minutes.
    pub fn on_step(mut self, f: impl FnMut(&Step) + Send + 'static) -> Recorder {
        self.on_step = Some(Box::new(f));
        self
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub(crate) fn push(&mut self, step: Step) {
        if let Some(f) = &mut self.on_step {
            f(&step);
        }
        self.steps.push(step);
    }
}

/// Everything a scenario did, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub scenario: u8,
    pub name: String,
    /// Inode of the namespace it played in.
    pub netns: u32,
    /// The test process (scenarios also fork children; see the steps).
    pub pid: u32,
    /// CLOCK_BOOTTIME ns (the clock of the events' `ts_ns`).
    pub started_ns: u64,
    pub ended_ns: u64,
    pub steps: Vec<Step>,
}

impl Outcome {
    pub fn attempts(&self) -> impl DoubleEndedIterator<Item = &Attempt> {
        self.steps.iter().filter_map(|s| match s {
            Step::Attempt(a) => Some(a),
            _ => None,
        })
    }

    /// The attempts twmon must report as `bind_failed` (those with an
    /// [`Expect`]).
    pub fn failures(&self) -> impl DoubleEndedIterator<Item = &Attempt> {
        self.attempts().filter(|a| a.expect.is_some())
    }

    /// The attempts that succeeded: twmon must report no failure for them.
    pub fn successes(&self) -> impl DoubleEndedIterator<Item = &Attempt> {
        self.attempts().filter(|a| a.errno.is_none())
    }

    /// Ports the scenario used (requested, or local after success).
    pub fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .attempts()
            .flat_map(|a| [Some(a.requested.port()), a.local.map(|l| l.port())])
            .flatten()
            .filter(|&p| p != 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// One thing a scenario did or saw.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A bind(), listen() or connect() and the kernel's answer.
    Attempt(Attempt),
    /// A helper process started or ended.
    Process {
        pid: u32,
        comm: String,
        role: String,
        event: ProcessEvent,
    },
    /// A timewait socket now holds `local`, seen in /proc/net.
    TimeWaitLeft {
        local: Endpoint,
        remote: Endpoint,
        /// TIME_WAIT (the scenarios wait for the peer's FIN).
        substate: TcpState,
        /// The process that owned (and closed) the original socket.
        left_by_pid: u32,
        left_by_comm: String,
        /// Options of the socket that left it: decide who may share the port.
        reuseaddr: bool,
        reuseport: bool,
        expires_in_ms: Option<u64>,
    },
    /// A socket reached a state worth knowing, seen in /proc/net (with its
    /// owners).
    Observed { socket: ObservedSocket, why: String },
    /// close() with SO_LINGER {1, 0}: a RST instead of a FIN, and afterwards
    /// no TIME_WAIT anywhere on the 4-tuple (checked).
    Reset {
        local: Endpoint,
        remote: Endpoint,
        by_pid: u32,
        by_comm: String,
        /// What the peer's read() then returned (ECONNRESET).
        peer_errno: Option<i32>,
        /// TIME_WAIT / FIN_WAIT2 sockets on the 4-tuple after the reset
        /// (expected 0).
        time_wait_left: usize,
    },
    /// A sysctl of the namespace changed (restored at the end: a second step).
    Sysctl {
        name: String,
        value: String,
        previous: String,
    },
    /// The ephemeral range is full: the timewait sockets filling it.
    PortsFilled {
        range: (u16, u16),
        time_wait: Vec<(Endpoint, Endpoint)>,
    },
    /// Free text for people.
    Note { text: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessEvent {
    Started,
    Exited,
    Killed,
}

/// One bind(), listen() or connect().
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub syscall: Syscall,
    pub proto: Proto,
    /// bind: the address asked for; listen: the socket's address before the
    /// call (0.0.0.0:0 when unbound); connect: the destination.
    pub requested: Endpoint,
    /// The socket's local address after a successful call.
    pub local: Option<Endpoint>,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    /// The socket's owner uid (sk_uid).
    pub uid: u32,
    /// Who made the call: process id (tgid), thread id, and the calling
    /// thread's comm (what the kernel's `current->comm` says at the call;
    /// scenarios name their threads, e.g. "web-server"). Note that `ss` and
    /// /proc/PID/comm name a process by its main thread instead, so a
    /// holder owned by the test process shows the test binary's name.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// None: success.
    pub errno: Option<i32>,
    pub error: Option<String>,
    /// CLOCK_BOOTTIME ns just before and just after the call.
    pub ts_before_ns: u64,
    pub ts_after_ns: u64,
    /// Some for failures twmon must report as `bind_failed`, with the
    /// diagnosis it should give. None for successes and for failures that
    /// are not about addresses (a connect() refused by the peer).
    pub expect: Option<Expect>,
    /// At a failure: every socket of the namespace in /proc/net, with its
    /// owners, read right after the call.
    pub evidence: Vec<ObservedSocket>,
    /// At a failure, with [`Options::ss`]: `ss -tuanpoeH` in the namespace.
    pub ss: Option<String>,
    /// At a failure, with [`Options::probe`]: the retries.
    pub measured: Option<Measured>,
}

impl Attempt {
    pub fn failed(&self) -> bool {
        self.errno.is_some()
    }

    /// Expected holders that /proc/net did not show at the failure (state,
    /// local, remote, owner pid and uid where given): empty when the kernel
    /// confirms them all.
    pub fn unconfirmed_holders(&self) -> Vec<&ExpectedHolder> {
        match &self.expect {
            None => Vec::new(),
            Some(e) => e
                .holders
                .iter()
                .filter(|h| !self.evidence.iter().any(|s| h.matches(s)))
                .collect(),
        }
    }
}

/// Whether the same call with SO_REUSEADDR (or SO_REUSEPORT) forced on
/// succeeded, measured by retrying on a fresh socket right after the
/// failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Measured {
    pub reuseaddr_helps: bool,
    pub reuseport_helps: bool,
}

/// What twmon should say about a failure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expect {
    pub errno: i32,
    pub code: DiagnosisCode,
    /// Sockets that must be among twmon's holders (it may name more).
    pub holders: Vec<ExpectedHolder>,
    /// The kernel's rules applied to this case: would the same call with
    /// SO_REUSEADDR (SO_REUSEPORT) on the new socket have succeeded?
    pub reuseaddr_would_help: bool,
    pub reuseport_would_help: bool,
    /// For `ephemeral_exhausted`: how many TIME_WAIT sockets fill the range.
    pub time_wait_count: Option<usize>,
}

impl Expect {
    pub(crate) fn new(errno: i32, code: DiagnosisCode) -> Expect {
        Expect {
            errno,
            code,
            holders: Vec::new(),
            reuseaddr_would_help: false,
            reuseport_would_help: false,
            time_wait_count: None,
        }
    }
    pub(crate) fn holder(mut self, h: ExpectedHolder) -> Expect {
        self.holders.push(h);
        self
    }
    pub(crate) fn helps(mut self, reuseaddr: bool, reuseport: bool) -> Expect {
        self.reuseaddr_would_help = reuseaddr;
        self.reuseport_would_help = reuseport;
        self
    }
}

/// A socket that blocks a call, as twmon should name it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExpectedHolder {
    pub proto: Proto,
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Option<Endpoint>,
    /// The process holding it (None for TIME_WAIT: see `left_by_pid`).
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub overlap: Overlap,
    /// For timewait holders: who owned the socket that left it.
    pub left_by_pid: Option<u32>,
    /// For a listening or bound holder whose opener no longer holds it:
    /// the process that bound it (None: twmon must not claim one).
    pub opened_by_pid: Option<u32>,
}

impl ExpectedHolder {
    /// Does /proc/net's view of a socket agree with this expectation?
    pub fn matches(&self, s: &ObservedSocket) -> bool {
        s.proto == self.proto
            && s.state == self.state
            && s.local == self.local
            && self.remote.is_none_or(|r| r == s.remote)
            && self.pid.is_none_or(|p| s.owned_by(p))
            && (self.state == TcpState::TimeWait || self.uid.is_none_or(|u| u == s.uid))
    }
}

/// What a scenario expects of a call.
pub(crate) enum Want {
    Ok,
    /// Fails, and twmon must report it.
    Fail(Expect),
    /// Fails with this errno, and it is no bind failure (ECONNREFUSED).
    Unreported(i32),
}

impl Step {
    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Step::Attempt(a) => {
                let opts = [
                    (a.reuseaddr, "SO_REUSEADDR"),
                    (a.reuseport, "SO_REUSEPORT"),
                    (a.v6only, "IPV6_V6ONLY"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join("+");
                let opts = if opts.is_empty() { "no options".to_string() } else { opts };
                let result = match (&a.error, a.local) {
                    (Some(e), _) => e.clone(),
                    (None, Some(l)) if l != a.requested => format!("ok, local {l}"),
                    (None, _) => "ok".to_string(),
                };
                let why = a
                    .expect
                    .as_ref()
                    .map(|e| format!(" ({})", e.code.as_str()))
                    .unwrap_or_default();
                format!(
                    "{} {}({}) {} [{}] by {} {}: {}{}",
                    a.proto.as_str(),
                    a.syscall.as_str(),
                    a.requested,
                    if a.uid != 0 { format!("uid {}", a.uid) } else { String::new() },
                    opts,
                    a.comm,
                    a.pid,
                    result,
                    why
                )
                .replace("  ", " ")
            }
            Step::Process {
                pid,
                comm,
                role,
                event,
            } => format!("process {comm} {pid} ({role}) {event:?}").to_lowercase(),
            Step::TimeWaitLeft {
                local,
                remote,
                left_by_comm,
                left_by_pid,
                reuseaddr,
                ..
            } => format!(
                "TIME_WAIT {local} -> {remote} left by {left_by_comm} {left_by_pid}{}",
                if *reuseaddr { " (socket had SO_REUSEADDR)" } else { " (socket had no SO_REUSEADDR)" }
            ),
            Step::Observed { socket, why } => format!(
                "{} {} -> {} held by {}: {why}",
                socket.state,
                socket.local,
                socket.remote,
                socket
                    .owners
                    .iter()
                    .map(|p| format!("{} {}", p.comm, p.pid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::Reset {
                local,
                remote,
                by_comm,
                time_wait_left,
                ..
            } => format!(
                "{by_comm} closed {local} -> {remote} with SO_LINGER 0: RST sent, {time_wait_left} TIME_WAIT left"
            ),
            Step::Sysctl {
                name,
                value,
                previous,
            } => format!("sysctl {name} = {value} (was {previous})"),
            Step::PortsFilled { range, time_wait } => format!(
                "ephemeral ports {}-{} all taken by {} TIME_WAIT sockets",
                range.0,
                range.1,
                time_wait.len()
            ),
            Step::Note { text } => text.clone(),
        }
    }
}

pub(crate) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

pub(crate) fn describe_errno(e: Option<i32>) -> String {
    e.map(errno_name).unwrap_or_else(|| "success".into())
}
