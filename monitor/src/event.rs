//! The typed events of twmon: what the kernel programs report, decoded and
//! enriched, in the shape of the JSON lines contract (`shared/design/contract.md`).
//!
//! Every source of events (the kernel, a trace file, a test) produces these;
//! everything downstream (model, diagnosis, views, recorder) consumes them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An "ADDR:PORT" endpoint. IPv4-mapped IPv6 addresses are stored (and so shown)
/// as IPv4, as the contract asks; real IPv6 is shown as "[ADDR]:PORT".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(SocketAddr);

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        Endpoint(SocketAddr::new(ip, port))
    }
    pub fn v4(addr: [u8; 4], port: u16) -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::from(addr)), port)
    }
    pub fn v6(addr: [u8; 16], port: u16) -> Self {
        Self::new(IpAddr::V6(Ipv6Addr::from(addr)), port)
    }
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn port(&self) -> u16 {
        self.0.port()
    }
    pub fn is_unspecified(&self) -> bool {
        self.0.ip().is_unspecified()
    }
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
    /// Append the endpoint's text ("ADDR:PORT", "[ADDR]:PORT") to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self.0 {
            SocketAddr::V4(v4) => {
                let mut buf = [0u8; 21];
                let n = write_v4(&mut buf, v4.ip().octets(), v4.port());
                out.extend_from_slice(&buf[..n]);
            }
            SocketAddr::V6(v6) => {
                use std::io::Write as _;
                let _ = write!(out, "{v6}");
            }
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(sa: SocketAddr) -> Self {
        Endpoint::new(sa.ip(), sa.port())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Endpoint {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SocketAddr::from_str(s).map(Endpoint::from)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            // Two of these per transition: formatting them through
            // core::fmt was a tenth of the recorder's time under churn.
            SocketAddr::V4(v4) => {
                let mut buf = [0u8; 21];
                let n = write_v4(&mut buf, v4.ip().octets(), v4.port());
                // Digits, dots and a colon only.
                s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
            }
            SocketAddr::V6(_) => s.collect_str(self),
        }
    }
}

/// "A.B.C.D:PORT" into `buf`; returns its length.
fn write_v4(buf: &mut [u8; 21], ip: [u8; 4], port: u16) -> usize {
    let mut n = 0;
    for (i, octet) in ip.into_iter().enumerate() {
        n = write_decimal(buf, n, u32::from(octet));
        buf[n] = if i == 3 { b':' } else { b'.' };
        n += 1;
    }
    write_decimal(buf, n, u32::from(port))
}

/// `v` (at most five digits) in decimal at `buf[at..]`; returns the end.
fn write_decimal(buf: &mut [u8; 21], at: usize, mut v: u32) -> usize {
    let mut digits = [0u8; 5];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (k, d) in digits[..len].iter().rev().enumerate() {
        buf[at + k] = *d;
    }
    at + len
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn from_ipproto(p: u16) -> Option<Proto> {
        match p {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// TCP states with the names `ss` uses, plus the timewait substates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TcpState {
    #[serde(rename = "ESTABLISHED")]
    Established,
    #[serde(rename = "SYN_SENT")]
    SynSent,
    #[serde(rename = "SYN_RECV")]
    SynRecv,
    #[serde(rename = "FIN_WAIT1")]
    FinWait1,
    #[serde(rename = "FIN_WAIT2")]
    FinWait2,
    #[serde(rename = "TIME_WAIT")]
    TimeWait,
    #[serde(rename = "CLOSE")]
    Close,
    #[serde(rename = "CLOSE_WAIT")]
    CloseWait,
    #[serde(rename = "LAST_ACK")]
    LastAck,
    #[serde(rename = "LISTEN")]
    Listen,
    #[serde(rename = "CLOSING")]
    Closing,
    #[serde(rename = "NEW_SYN_RECV")]
    NewSynRecv,
    /// A UDP socket, or a TCP socket that is bound but neither listening nor
    /// connected (shown as "BOUND"; the kernel calls it CLOSE).
    #[serde(rename = "BOUND")]
    Bound,
}

impl TcpState {
    /// The kernel's numbering (include/net/tcp_states.h).
    pub fn from_kernel(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
            Bound => "BOUND",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syscall {
    Bind,
    Listen,
    Connect,
}

impl Syscall {
    pub fn as_str(self) -> &'static str {
        match self {
            Syscall::Bind => "bind",
            Syscall::Listen => "listen",
            Syscall::Connect => "connect",
        }
    }
}

/// A process, as far as the kernel context lets us trust it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    Exact,
    Wildcard,
    V4mapped,
}

impl Overlap {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Exact => "exact",
            Overlap::Wildcard => "wildcard",
            Overlap::V4mapped => "v4mapped",
        }
    }
}

/// A socket that holds the port a bind asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Option<Endpoint>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub expires_in_ms: Option<u64>,
    pub overlap: Overlap,
    /// For a timewait holder: the process that last owned the original socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_by: Option<Process>,
    /// For a listening or bound holder: the process that bound it, when that
    /// process no longer holds it and `pid` does (it was inherited across
    /// fork or exec, or passed on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<Process>,
    /// For a connection: true when connect() opened it (its local port may
    /// be one the kernel picked from ip_local_port_range), false when it
    /// was accepted; absent when no event showed how it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<bool>,
    /// Other processes holding the same socket (its file) beside `pid`:
    /// a server's workers, a child that inherited it. Stopping `pid` alone
    /// does not free the port while any of them lives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<Process>,
    /// The device the socket is bound to (SO_BINDTODEVICE), by name; absent
    /// when it is bound to none. Sockets bound to different devices do not
    /// conflict; one bound to none conflicts with all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisCode {
    Listener,
    CloseWait,
    Established,
    Bound,
    TimeWait,
    ReuseportMismatch,
    EphemeralExhausted,
    PrivilegedPort,
    AddressNotLocal,
    AlreadyBound,
    InvalidAddress,
    Unknown,
}

impl DiagnosisCode {
    pub fn as_str(self) -> &'static str {
        use DiagnosisCode::*;
        match self {
            Listener => "listener",
            CloseWait => "close_wait",
            Established => "established",
            Bound => "bound",
            TimeWait => "time_wait",
            ReuseportMismatch => "reuseport_mismatch",
            EphemeralExhausted => "ephemeral_exhausted",
            PrivilegedPort => "privileged_port",
            AddressNotLocal => "address_not_local",
            AlreadyBound => "already_bound",
            InvalidAddress => "invalid_address",
            Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub code: DiagnosisCode,
    pub summary: String,
    pub fix: String,
    pub reuseaddr_would_help: bool,
    pub reuseport_would_help: bool,
}

/// Fields every event carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Common {
    /// RFC 3339 UTC with nanoseconds.
    pub ts: String,
    /// CLOCK_BOOTTIME nanoseconds, as the kernel stamped it.
    pub ts_ns: u64,
    pub netns: u32,
    pub proto: Proto,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The container the process runs in (docker, containerd/CRI, podman),
    /// from its cgroup path (see `container.rs`); absent when it is not
    /// known, so events of host processes print as they always did. Extra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindFailed {
    pub syscall: Syscall,
    pub errno: i32,
    pub error: String,
    /// The endpoint the caller asked for (from its sockaddr argument; for
    /// listen(), the address the socket was bound to; for connect(), the
    /// destination).
    pub requested: Endpoint,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
    pub holders: Vec<Holder>,
    pub diagnosis: Option<Diagnosis>,
    // Extra fields beyond the contract.
    /// Holders beyond the first [`BindFailed::HOLDERS_MAX`] (most decisive
    /// first), counted and not listed: a busy port's 30,000 TIME_WAITs made
    /// one failure a 3 MB line. The diagnosis was made with all of them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holders_omitted: usize,
    #[serde(default)]
    pub freebind: bool,
    #[serde(default)]
    pub transparent: bool,
    #[serde(default)]
    pub bound_dev_if: u32,
    /// `bound_dev_if` by name in the failing namespace (SO_BINDTODEVICE),
    /// when the socket was bound to a device and the namespace was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub cgroup_id: u64,
    #[serde(default)]
    pub cookie: u64,
    /// Inode of the socket's file: tells the failing socket from its holders.
    #[serde(default)]
    pub inode: u64,
    /// The calling thread.
    #[serde(default)]
    pub tid: u32,
    /// The local endpoint the socket had when the call failed (connect, listen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Endpoint>,
    /// Precise mode: the sockets the kernel itself found blocking this call
    /// (`inet_bind_conflict` returned true for them). None when that hook is
    /// not live or does not apply (UDP, connect); empty when it was live and
    /// named none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_holders: Option<Vec<KernelHolder>>,
    /// Why the kernel's holders and the model's disagree, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_mismatch: Option<String>,
    /// Precise mode: what the kernel's port function (`inet_csk_get_port`,
    /// `udp_lib_get_port`, `__inet_hash_connect`) said during this call.
    /// None when that hook is not live. Boxed: most failures have none, and
    /// every event is as large as its largest kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_port: Option<Box<KernelPort>>,
    /// Why the kernel's port verdict and the diagnosis disagree, when they
    /// do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mismatch: Option<String>,
}

impl BindFailed {
    /// The most holders an event lists (see [`BindFailed::holders_omitted`]).
    pub const HOLDERS_MAX: usize = 32;

    /// Keep the first [`BindFailed::HOLDERS_MAX`] holders, counting the rest.
    pub fn cap_holders(&mut self) {
        self.holders_omitted += cap_holders(&mut self.holders);
    }
}

/// Keep the first [`BindFailed::HOLDERS_MAX`] of `holders` (sorted most
/// decisive first); how many were cut.
pub fn cap_holders(holders: &mut Vec<Holder>) -> usize {
    let cut = holders.len().saturating_sub(BindFailed::HOLDERS_MAX);
    holders.truncate(BindFailed::HOLDERS_MAX);
    cut
}

/// A port function's failure during a call, as the kernel returned it
/// (precise mode). Every field is null when the hook was live and no port
/// function failed: the call failed for another reason, before or after
/// the port was looked at.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelPort {
    /// "inet_csk_get_port", "udp_lib_get_port" or "__inet_hash_connect".
    pub function: Option<String>,
    /// The port it was asked for; 0 = a search of the ephemeral range.
    pub port: Option<u16>,
    /// Its return value as is (get_port returns 1 for a conflict on older
    /// kernels, -EADDRINUSE on newer ones).
    pub ret: Option<i32>,
    /// What that return value means: -ret, or EADDRINUSE for a positive
    /// "in use".
    pub errno: Option<i32>,
    pub error: Option<String>,
}

impl KernelPort {
    /// The kernel's own port search (port 0) found nothing free.
    pub fn range_exhausted(&self) -> bool {
        self.function.is_some() && self.port == Some(0)
    }
}

/// A blocking socket as the kernel named it (precise mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelHolder {
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Option<Endpoint>,
}

/// A successful bind() or listen(): the model needs them to know what holds a
/// port. Not in the contract's list; an extra type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub syscall: Syscall,
    pub local: Endpoint,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    pub uid: u32,
    pub cookie: u64,
    #[serde(default)]
    pub bound_dev_if: u32,
    #[serde(default)]
    pub inode: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub old: TcpState,
    pub new: TcpState,
    pub cookie: u64,
    #[serde(default)]
    pub reuseaddr: bool,
    #[serde(default)]
    pub reuseport: bool,
    #[serde(default)]
    pub uid: u32,
    /// Socket inode: the key to the owning process's file descriptor.
    #[serde(default)]
    pub inode: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimewaitOpen {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub substate: TcpState,
    pub expires_in_ms: u64,
    pub left_by: Option<Process>,
    #[serde(default)]
    pub cookie: u64,
    /// SO_REUSEADDR of the socket that left it: decides whether a new
    /// SO_REUSEADDR bind may share the port.
    #[serde(default)]
    pub reuseaddr: bool,
    #[serde(default)]
    pub reuseport: bool,
}

/// FIN_WAIT2 timewait became TIME_WAIT (the peer's FIN arrived): a fresh timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimewaitSubstate {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub substate: TcpState,
    pub expires_in_ms: u64,
    #[serde(default)]
    pub cookie: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimewaitEnd {
    Expired,
    ReusedByConnect,
    ReusedBySyn,
    Reset,
    NetnsExit,
    Unknown,
}

impl TimewaitEnd {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimewaitEnd::Expired => "expired",
            TimewaitEnd::ReusedByConnect => "reused_by_connect",
            TimewaitEnd::ReusedBySyn => "reused_by_syn",
            TimewaitEnd::Reset => "reset",
            TimewaitEnd::NetnsExit => "netns_exit",
            TimewaitEnd::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimewaitClose {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub reason: TimewaitEnd,
    #[serde(default)]
    pub cookie: u64,
    /// Precise mode: the process whose connect() took the timewait sock
    /// over (`reused_by_connect`), as `inet_twsk_deschedule_put` saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<Process>,
    /// Precise mode: why the kernel's early end (`inet_twsk_deschedule_put`)
    /// and the reason read off the timer cancel disagree, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_mismatch: Option<String>,
}

/// A socket that exists, as a sock_diag snapshot saw it (at start, or when a
/// bind failed): the model's starting picture, and in a trace the evidence a
/// replay needs. Not in the contract's list; an extra type. With `gone`, a
/// socket no event retires (UDP, bound-only TCP) that the kernel's tables no
/// longer show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketSeen {
    pub local: Endpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Endpoint>,
    /// ss's name; BOUND for a bound TCP socket and for UDP.
    pub state: TcpState,
    /// An inet_timewait_sock (TIME_WAIT, or FIN_WAIT2 substate).
    #[serde(default)]
    pub timewait: bool,
    pub uid: u32,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub cookie: u64,
    /// None when the snapshot could not tell.
    #[serde(default)]
    pub reuseaddr: Option<bool>,
    #[serde(default)]
    pub reuseport: Option<bool>,
    #[serde(default)]
    pub v6only: bool,
    #[serde(default)]
    pub bound_dev_if: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// The process holding its file (none for timewait socks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Process>,
    /// The kernel no longer has it (its state is the last one known).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
    /// Other processes holding its file beside `owner`, lowest pid first
    /// (at most [`SocketSeen::SHARED_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<Process>,
}

impl SocketSeen {
    /// Enough to name who else must let go; a thousand workers would make
    /// every look of the port a long line.
    pub const SHARED_MAX: usize = 16;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub count: u64,
    /// Which stream lost them: "binds" or "events" (the ring had no room),
    /// "skipped_runs" (hook runs the kernel skipped, probe/skipped.rs);
    /// extra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

impl Lost {
    /// The stream of hook runs the kernel skipped (probe/skipped.rs).
    pub const SKIPPED_RUNS: &'static str = "skipped_runs";

    /// The stream, as a person reads it after the count: " (events)".
    pub fn stream_note(&self) -> String {
        match self.stream.as_deref() {
            None => String::new(),
            Some(Self::SKIPPED_RUNS) => {
                " (hook runs the kernel skipped: the hook fired again on a CPU where it was running)"
                    .into()
            }
            Some(s) => format!(" ({s})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// Boxed: the largest kind by far (296 bytes), and the rarest; every
    /// event of the stream would otherwise be as large.
    BindFailed(Box<BindFailed>),
    Bound(Bound),
    State(StateChange),
    TimewaitOpen(TimewaitOpen),
    TimewaitSubstate(TimewaitSubstate),
    TimewaitClose(TimewaitClose),
    Socket(SocketSeen),
    Lost(Lost),
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::BindFailed(_) => "bind_failed",
            Kind::Bound(_) => "bound",
            Kind::State(_) => "state",
            Kind::TimewaitOpen(_) => "timewait_open",
            Kind::TimewaitSubstate(_) => "timewait_substate",
            Kind::TimewaitClose(_) => "timewait_close",
            Kind::Socket(_) => "socket",
            Kind::Lost(_) => "lost",
        }
    }
}

/// One event: the JSON object is the type tag, the common fields and the
/// type's own fields, side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub kind: Kind,
    #[serde(flatten)]
    pub common: Common,
}

impl Event {
    /// The local port this event is about (the requested one for failures).
    pub fn port(&self) -> Option<u16> {
        match &self.kind {
            Kind::BindFailed(b) => Some(b.requested.port()),
            Kind::Bound(b) => Some(b.local.port()),
            Kind::State(s) => Some(s.local.port()),
            Kind::TimewaitOpen(t) => Some(t.local.port()),
            Kind::TimewaitSubstate(t) => Some(t.local.port()),
            Kind::TimewaitClose(t) => Some(t.local.port()),
            Kind::Socket(s) => Some(s.local.port()),
            Kind::Lost(_) => None,
        }
    }

    /// Ports this event touches (local and remote), for `--port` filters.
    pub fn ports(&self) -> [Option<u16>; 2] {
        match &self.kind {
            Kind::BindFailed(b) => [Some(b.requested.port()), b.local.map(|l| l.port())],
            Kind::Bound(b) => [Some(b.local.port()), None],
            Kind::State(s) => [Some(s.local.port()), Some(s.remote.port())],
            Kind::TimewaitOpen(t) => [Some(t.local.port()), Some(t.remote.port())],
            Kind::TimewaitSubstate(t) => [Some(t.local.port()), Some(t.remote.port())],
            Kind::TimewaitClose(t) => [Some(t.local.port()), Some(t.remote.port())],
            Kind::Socket(s) => [Some(s.local.port()), s.remote.map(|r| r.port())],
            Kind::Lost(_) => [None, None],
        }
    }
}

/// The symbolic name of an errno, as the contract's `error` field shows it.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ENODEV => "ENODEV",
        libc::EAGAIN => "EAGAIN",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EISCONN => "EISCONN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EFAULT => "EFAULT",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_as_the_contract_says() {
        let cases: &[(Endpoint, &str)] = &[
            (Endpoint::v4([127, 0, 0, 1], 8080), "127.0.0.1:8080"),
            (Endpoint::v4([0, 0, 0, 0], 0), "0.0.0.0:0"),
            (Endpoint::v6(Ipv6Addr::LOCALHOST.octets(), 443), "[::1]:443"),
            (Endpoint::v6(Ipv6Addr::UNSPECIFIED.octets(), 80), "[::]:80"),
            // v4-mapped shown as IPv4
            (
                Endpoint::v6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets(), 9),
                "127.0.0.2:9",
            ),
        ];
        for (ep, want) in cases {
            assert_eq!(ep.to_string(), *want);
            assert_eq!(want.parse::<Endpoint>().unwrap(), *ep);
        }
    }

    #[test]
    fn an_endpoint_in_json_is_its_display_form() {
        // The v4 fast path against core::fmt, at every digit count.
        let octets = [0u8, 7, 10, 99, 100, 255];
        let ports = [0u16, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535];
        for a in octets {
            for b in octets {
                for port in ports {
                    let ep = Endpoint::v4([a, b, 255 - a, 1], port);
                    let json = serde_json::to_string(&ep).unwrap();
                    assert_eq!(json, format!("\"{ep}\""));
                }
            }
        }
        let v6 = Endpoint::v6(Ipv6Addr::LOCALHOST.octets(), 443);
        assert_eq!(serde_json::to_string(&v6).unwrap(), "\"[::1]:443\"");
    }

    #[test]
    fn a_lost_count_names_its_stream_for_a_person() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, ""),
            (Some("events"), " (events)"),
            (Some("binds"), " (binds)"),
            (
                Some(Lost::SKIPPED_RUNS),
                " (hook runs the kernel skipped: the hook fired again on a CPU where it was running)",
            ),
        ];
        for (stream, want) in cases {
            let l = Lost {
                count: 3,
                stream: stream.map(str::to_string),
            };
            assert_eq!(l.stream_note(), *want, "{stream:?}");
        }
    }

    #[test]
    fn an_event_round_trips_through_json_with_flat_fields() {
        let ev = Event {
            common: Common {
                ts: "2026-11-21T23:00:00.000000001Z".into(),
                ts_ns: 12,
                netns: 4026531840,
                proto: Proto::Tcp,
                pid: Some(42),
                comm: Some("server".into()),
                container: None,
            },
            kind: Kind::TimewaitClose(TimewaitClose {
                local: "127.0.0.1:80".parse().unwrap(),
                remote: "127.0.0.1:5555".parse().unwrap(),
                reason: TimewaitEnd::ReusedBySyn,
                cookie: 7,
                ended_by: None,
                end_mismatch: None,
            }),
        };
        let line = serde_json::to_string(&ev).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "timewait_close");
        assert_eq!(v["reason"], "reused_by_syn");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["local"], "127.0.0.1:80");
        assert_eq!(v["netns"], 4026531840u32);
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ev);
    }
}
