//! `twmon check ADDR:PORT`: would a bind() (and listen(), for TCP) of a socket
//! with these options succeed right now in this network namespace, and if
//! not, who holds the port, why, and what would fix it.
//!
//! It takes a [`snapshot`](crate::snapshot) of the calling thread's network
//! namespace and applies the kernel's [`rules`](crate::rules); nothing is
//! bound, except the short probes that learn a TIME_WAIT socket's flags (see
//! `snapshot/flags.rs`; set TWMON_NO_PROBE=1 to skip them). Exit codes: 0 would
//! succeed, 4 would fail, 2 bad usage.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::json;

use crate::cli::CheckArgs;
use crate::diagnose;
use crate::event::{errno_name, Diagnosis, Holder, Proto, Syscall};
use crate::rules::{self, NewSocket, Verdict};
use crate::snapshot::{self, Snapshot};

/// A bad ADDR:PORT or a bad flag combination: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUsage(pub String);

impl fmt::Display for BadUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadUsage {}

/// Everything `check` found.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub new: NewSocket,
    /// Whether listen() was predicted after bind().
    pub listen: bool,
    pub verdict: Verdict,
    pub holders: Vec<Holder>,
    /// Holders beyond [`BindFailed::HOLDERS_MAX`](crate::event::BindFailed::HOLDERS_MAX), counted, not listed.
    pub holders_omitted: usize,
    pub diagnosis: Option<Diagnosis>,
    /// Sockets on the port that do not conflict.
    pub others_on_port: usize,
    /// Limits of what could be seen, one sentence each.
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn would_fail(&self) -> bool {
        self.verdict.would_fail()
    }

    /// The contract's `{would_fail, errno, error, holders, diagnosis}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut j = json!({
            "would_fail": self.would_fail(),
            "errno": self.verdict.errno,
            "error": self.verdict.errno.map(errno_name),
            "holders": self.holders,
            "diagnosis": self.diagnosis,
        });
        if self.holders_omitted > 0 {
            j["holders_omitted"] = json!(self.holders_omitted);
        }
        j
    }

    /// The explanation for a person.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let n = &self.new;
        let mut opts = vec![n.proto.as_str().to_string()];
        if n.reuseaddr {
            opts.push("SO_REUSEADDR".into());
        }
        if n.reuseport {
            opts.push("SO_REUSEPORT".into());
        }
        if n.v6only {
            opts.push("IPV6_V6ONLY".into());
        }
        opts.push(format!("uid {}", n.uid));
        let calls = if self.listen {
            "bind() and listen()"
        } else {
            "bind()"
        };
        let what = format!(
            "{} ({})",
            fmt_requested(SocketAddr::new(n.addr, n.port)),
            opts.join(", ")
        );
        match self.verdict.errno {
            None => {
                out.push_str(&format!("{what}: {calls} would succeed"));
                if let Some(p) = self.verdict.ephemeral_port {
                    out.push_str(&format!(" (port {p} is free, for one)"));
                }
                out.push_str(".\n");
                if self.others_on_port > 0 {
                    out.push_str(&format!(
                        "{} other socket(s) use port {} without conflict.\n",
                        self.others_on_port, n.port
                    ));
                }
            }
            Some(e) => {
                out.push_str(&format!(
                    "{what}: {}() would fail with {} ({}).\n",
                    self.verdict.syscall.as_str(),
                    errno_name(e),
                    std::io::Error::from_raw_os_error(e)
                ));
                if !self.holders.is_empty() {
                    out.push_str("Holders:\n");
                    for h in &self.holders {
                        out.push_str(&format!("  {}\n", fmt_holder(h)));
                    }
                    if self.holders_omitted > 0 {
                        out.push_str(&format!("  ... and {} more\n", self.holders_omitted));
                    }
                }
                if let Some(d) = &self.diagnosis {
                    out.push_str(&format!("Diagnosis ({}): {}\n", d.code.as_str(), d.summary));
                    out.push_str(&format!("Fix: {}\n", d.fix));
                    if e == libc::EADDRINUSE {
                        out.push_str(&format!(
                            "SO_REUSEADDR on the new socket would help: {}; SO_REUSEPORT would help: {}.\n",
                            yes_no(d.reuseaddr_would_help),
                            yes_no(d.reuseport_would_help)
                        ));
                    }
                }
            }
        }
        for note in &self.notes {
            out.push_str(&format!("Note: {note}\n"));
        }
        out
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn fmt_requested(sa: SocketAddr) -> String {
    // Keep a v4-mapped address as the caller wrote it.
    match sa {
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        v4 => v4.to_string(),
    }
}

fn fmt_holder(h: &Holder) -> String {
    let mut s = format!(
        "{:<11} {}",
        h.state.as_str(),
        crate::output::holder_local(h)
    );
    if let Some(r) = h.remote {
        s.push_str(&format!(" <-> {r}"));
    }
    match (&h.comm, h.pid) {
        (Some(c), Some(p)) => s.push_str(&format!("  {c} (pid {p})")),
        _ if h.expires_in_ms.is_some() => {}
        _ => s.push_str("  (owner not visible)"),
    }
    if let Some(uid) = h.uid {
        s.push_str(&format!("  uid {uid}"));
    }
    if let Some(ms) = h.expires_in_ms {
        s.push_str(&format!("  expires in {} s", ms.div_ceil(1000)));
    }
    if let Some(p) = &h.left_by {
        s.push_str(&format!("  left by {} (pid {})", p.comm, p.pid));
    }
    s.push_str(&format!(
        "  SO_REUSEADDR={} SO_REUSEPORT={}  overlap {}",
        on_off(h.reuseaddr),
        on_off(h.reuseport),
        h.overlap.as_str()
    ));
    s
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Parse "ADDR:PORT", "[V6]:PORT", or a bare "PORT" / ":PORT" (= 0.0.0.0).
pub fn parse_addr(s: &str) -> Result<SocketAddr, BadUsage> {
    let t = s.trim();
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let port_only = t
        .strip_prefix(':')
        .or_else(|| t.strip_prefix("*:"))
        .unwrap_or(t);
    if let Ok(p) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p));
    }
    Err(BadUsage(format!(
        "'{s}' is not an address and port: write it as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:443."
    )))
}

/// The socket the arguments describe.
pub fn new_socket(args: &CheckArgs, addr: SocketAddr) -> Result<NewSocket, BadUsage> {
    if args.v6only && addr.is_ipv4() {
        return Err(BadUsage(
            "--v6only applies to IPv6 sockets only: give an IPv6 address such as [::]:443.".into(),
        ));
    }
    let my_uid = unsafe { libc::geteuid() };
    let uid = args.uid.unwrap_or(my_uid);
    // The capability is the binding process's; for another uid assume root
    // has it and everybody else does not.
    let cap = if uid == my_uid {
        snapshot::has_cap_net_bind_service()
    } else {
        uid == 0
    };
    let bound_dev_if = match &args.device {
        None => 0,
        Some(name) => snapshot::devices()
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| i)
            .ok_or_else(|| {
                BadUsage(format!(
                    "--device {name}: this network namespace has no such device (`ip link` lists them)."
                ))
            })?,
    };
    Ok(NewSocket {
        reuseaddr: args.reuseaddr,
        reuseport: args.reuseport,
        v6only: args.v6only,
        uid,
        cap_net_bind_service: cap,
        bound_dev_if,
        ..NewSocket::new(if args.udp { Proto::Udp } else { Proto::Tcp }, addr)
    })
}

/// Snapshot the calling thread's network namespace and predict.
pub fn check(args: &CheckArgs) -> anyhow::Result<CheckReport> {
    let addr = parse_addr(&args.addr)?;
    let new = new_socket(args, addr)?;
    let listen = !args.udp && !args.no_listen;
    let opts = snapshot::Options {
        ports: if addr.port() == 0 {
            Vec::new()
        } else {
            vec![addr.port()]
        },
        probe_timewait: std::env::var_os("TWMON_NO_PROBE").is_none_or(|v| v.is_empty() || v == "0"),
        ..snapshot::Options::default()
    };
    let snap = snapshot::take(&opts)?;
    Ok(check_against(&new, listen, &snap))
}

/// Predict `new` against a snapshot (for tests and the live model's use).
pub fn check_against(new: &NewSocket, listen: bool, snap: &Snapshot) -> CheckReport {
    let verdict = rules::predict(new, &snap.sockets, &snap.env, listen);
    let owner_of = |s: &rules::ExistingSocket| {
        let owner = snap.owner_of(s);
        let shared = snap.shared_with(s, owner.as_ref().map(|o| o.pid));
        (owner, shared)
    };
    let (mut holders, diagnosis) = diagnose::explain(
        new,
        &verdict,
        &snap.sockets,
        &snap.env,
        &owner_of,
        snap.owners.unreadable > 0,
    );
    let others_on_port = if new.port == 0 {
        0
    } else {
        snap.sockets
            .iter()
            .enumerate()
            .filter(|(i, s)| s.port == new.port && !verdict.blockers.iter().any(|b| b.index == *i))
            .count()
    };
    let mut notes = snap.notes.clone();
    if verdict.uncertain {
        notes.push(
            "the answer depends on SO_REUSEADDR/SO_REUSEPORT of sockets whose flags could not be read; they were assumed off (or inherited from their listener)"
                .into(),
        );
    }
    let holders_omitted = crate::event::cap_holders(&mut holders);
    CheckReport {
        new: new.clone(),
        listen,
        verdict,
        holders,
        holders_omitted,
        diagnosis,
        others_on_port,
        notes,
    }
}

/// `twmon check`: prints the answer, returns the exit code (0 would succeed,
/// 4 would fail, 2 bad usage).
pub fn run(args: &CheckArgs) -> anyhow::Result<i32> {
    let report = match check(args) {
        Ok(r) => r,
        Err(e) => {
            if let Some(bad) = e.downcast_ref::<BadUsage>() {
                eprintln!("twmon check: {bad}");
                return Ok(2);
            }
            return Err(e);
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.human());
    }
    Ok(if report.would_fail() { 4 } else { 0 })
}

/// Which syscall a report's failure belongs to (bind or listen).
pub fn failed_syscall(r: &CheckReport) -> Option<Syscall> {
    r.verdict.errno.map(|_| r.verdict.syscall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str) -> CheckArgs {
        CheckArgs {
            addr: addr.into(),
            udp: false,
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: None,
            device: None,
            no_listen: false,
            json: true,
        }
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(parse_addr("[::]:443").unwrap(), "[::]:443".parse().unwrap());
        assert_eq!(parse_addr("8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            parse_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        let mapped = parse_addr("[::ffff:127.0.0.1]:80").unwrap();
        assert!(mapped.is_ipv6(), "a v4-mapped address keeps AF_INET6");
        for bad in ["", "localhost:80", "1.2.3.4", "1.2.3.4:99999", "[::1]"] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.0.ends_with('.') && !e.0.contains('\n'), "{e}");
        }
        let mut a = args("127.0.0.1:80");
        a.v6only = true;
        assert!(new_socket(&a, parse_addr(&a.addr).unwrap()).is_err());
    }

    #[test]
    fn bad_usage_exits_2() {
        assert_eq!(run(&args("nonsense")).unwrap(), 2);
    }

    #[test]
    fn predicts_a_conflict_with_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let r = check(&args(&format!("0.0.0.0:{port}"))).unwrap();
        assert!(r.would_fail(), "{}", r.human());
        let j = r.to_json();
        assert_eq!(j["errno"], libc::EADDRINUSE);
        assert_eq!(j["error"], "EADDRINUSE");
        assert_eq!(j["holders"][0]["state"], "LISTEN");
        assert_eq!(j["holders"][0]["pid"], std::process::id());
        assert_eq!(j["holders"][0]["overlap"], "wildcard");
        assert_eq!(j["diagnosis"]["code"], "listener");
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5);
        drop(l);
        let r = check(&args(&format!("0.0.0.0:{port}"))).unwrap();
        assert!(!r.would_fail(), "{}", r.human());
        assert_eq!(r.to_json()["diagnosis"], serde_json::Value::Null);
    }
}
