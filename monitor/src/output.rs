//! One event as one line: the contract's JSON, or a line for a person.

use std::fmt::Write as _;

use crate::event::{Event, Holder, Kind, Process, Syscall};

pub fn json_line(ev: &Event) -> String {
    let mut out = Vec::with_capacity(320);
    crate::json_line::write(&mut out, ev);
    // JSON written from &str and ASCII only.
    String::from_utf8(out).unwrap_or_default()
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// "HH:MM:SS.mmm" out of an RFC 3339 stamp.
fn clock(ts: &str) -> &str {
    ts.get(11..23).unwrap_or(ts)
}

/// A process in the short style of every view: "comm[pid]", "[pid]",
/// "comm", or `unknown` (each view has its own word for nobody known).
pub fn who_or(pid: Option<u32>, comm: Option<&str>, unknown: &str) -> String {
    match (pid, comm) {
        (Some(p), Some(c)) => format!("{c}[{p}]"),
        (Some(p), None) => format!("[{p}]"),
        (None, Some(c)) => c.to_string(),
        (None, None) => unknown.to_string(),
    }
}

fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    who_or(pid, comm, "-")
}

/// A holder's local end, with its device as `ss` writes one
/// (SO_BINDTODEVICE): "0.0.0.0%eth1:8080", "[::]%vrf-blue:443".
pub fn holder_local(h: &Holder) -> String {
    match (&h.device, h.local.ip()) {
        (None, _) => h.local.to_string(),
        (Some(d), std::net::IpAddr::V4(a)) => format!("{a}%{d}:{}", h.local.port()),
        (Some(d), std::net::IpAddr::V6(a)) => format!("[{a}]%{d}:{}", h.local.port()),
    }
}

/// Who a holder names, in the short "comm[pid]" style of the watch lines,
/// the report and the dashboard's detail: its owner, or who left a
/// timewait socket ("left by ..."), or `unknown`; then who opened a socket
/// it was handed and who else holds it.
pub fn holder_owner(h: &Holder, unknown: &str) -> String {
    let named = |p: &Process| who(Some(p.pid), Some(&p.comm));
    let mut s = match (h.pid, &h.left_by) {
        (Some(p), _) => who(Some(p), h.comm.as_deref()),
        (None, Some(l)) => format!("left by {}", named(l)),
        _ => unknown.to_string(),
    };
    if let Some(o) = &h.opened_by {
        let _ = write!(s, ", opened by {}", named(o));
    }
    if !h.shared_with.is_empty() {
        let others: Vec<String> = h.shared_with.iter().map(named).collect();
        let _ = write!(s, ", also held by {}", others.join(" "));
    }
    s
}

pub fn human_line(ev: &Event) -> String {
    let c = &ev.common;
    let mut s = format!("{} {:>9} ", clock(&c.ts), c.netns);
    let actor = who(c.pid, c.comm.as_deref());
    let _ = match &ev.kind {
        Kind::BindFailed(b) => {
            // A connect() from a port of its own failed for that port.
            let from = match (b.syscall, b.local) {
                (Syscall::Connect, Some(l)) => format!(" from {l}"),
                _ => String::new(),
            };
            let _ = write!(
                s,
                "BIND FAILED {} {} {} {}{from}: {} (reuseaddr={} reuseport={} v6only={} uid={}{})",
                actor,
                c.proto.as_str(),
                b.syscall.as_str(),
                b.requested,
                b.error,
                yn(b.reuseaddr),
                yn(b.reuseport),
                yn(b.v6only),
                b.uid,
                b.device
                    .as_ref()
                    .map(|d| format!(" device={d}"))
                    .unwrap_or_default()
            );
            for h in &b.holders {
                let owner = holder_owner(h, "-");
                let _ = write!(s, "\n    held by {} {}", h.state, holder_local(h));
                if let Some(r) = h.remote {
                    let _ = write!(s, " <-> {r}");
                }
                let _ = write!(s, " {owner} (overlap {})", h.overlap.as_str());
                if let Some(ms) = h.expires_in_ms {
                    let _ = write!(s, " expires in {:.1}s", ms as f64 / 1000.0);
                }
            }
            if b.holders_omitted > 0 {
                let _ = write!(s, "\n    and {} more holders", b.holders_omitted);
            }
            if let Some(d) = &b.diagnosis {
                let _ = write!(s, "\n    why: {}\n    fix: {}", d.summary, d.fix);
            }
            Ok(())
        }
        Kind::Bound(b) => write!(
            s,
            "{:<11} {} {} {} {} (reuseaddr={} reuseport={})",
            "bound",
            actor,
            c.proto.as_str(),
            b.syscall.as_str(),
            b.local,
            yn(b.reuseaddr),
            yn(b.reuseport)
        ),
        Kind::State(t) => write!(
            s,
            "{:<11} {} -> {} {} {} -> {}",
            "state", t.local, t.remote, actor, t.old, t.new
        ),
        Kind::TimewaitOpen(t) => write!(
            s,
            "{:<11} {} -> {} {} expires in {:.1}s, left by {}",
            "timewait+",
            t.local,
            t.remote,
            t.substate,
            t.expires_in_ms as f64 / 1000.0,
            t.left_by
                .as_ref()
                .map(|p| who(Some(p.pid), Some(&p.comm)))
                .unwrap_or_else(|| "unknown".into())
        ),
        Kind::TimewaitSubstate(t) => write!(
            s,
            "{:<11} {} -> {} now {} expires in {:.1}s",
            "timewait",
            t.local,
            t.remote,
            t.substate,
            t.expires_in_ms as f64 / 1000.0
        ),
        Kind::TimewaitClose(t) => write!(
            s,
            "{:<11} {} -> {} {:?}",
            "timewait-", t.local, t.remote, t.reason
        ),
        Kind::Socket(k) => write!(
            s,
            "{:<11} {} {} {} {}",
            // Like timewait+/-: "socket-" is one the kernel no longer has.
            if k.gone { "socket-" } else { "socket" },
            c.proto.as_str(),
            k.state,
            k.local,
            k.owner
                .as_ref()
                .map(|p| who(Some(p.pid), Some(&p.comm)))
                .unwrap_or_else(|| "-".into())
        ),
        Kind::Lost(l) => write!(
            s,
            "LOST        {} events the kernel could not hand over{}",
            l.count,
            l.stream_note()
        ),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::synth::Synth;

    /// The owner phrase the watch lines, the report and the detail share.
    #[test]
    fn a_holder_names_its_owner_or_who_left_it_then_the_others() {
        use crate::event::{Overlap, TcpState};
        let p = |comm: &str, pid| Process {
            pid,
            comm: comm.into(),
        };
        let listener = crate::rules::ExistingSocket::new(
            crate::event::Proto::Tcp,
            "0.0.0.0:80".parse().unwrap(),
            TcpState::Listen,
        );
        let base = crate::diagnose::holder(
            &listener,
            Overlap::Exact,
            None,
            None,
            &crate::rules::NetEnv::default(),
        );
        assert_eq!(holder_owner(&base, "owner ?"), "owner ?");
        let tw = Holder {
            left_by: Some(p("nginx", 7)),
            ..base.clone()
        };
        assert_eq!(holder_owner(&tw, "-"), "left by nginx[7]");
        let shared = Holder {
            pid: Some(201),
            comm: Some("log-helper".into()),
            opened_by: Some(p("nginx", 200)),
            shared_with: vec![p("a", 202), p("b", 203)],
            ..base
        };
        assert_eq!(
            holder_owner(&shared, "-"),
            "log-helper[201], opened by nginx[200], also held by a[202] b[203]"
        );
    }

    /// One human line per kind of event the synthetic trace makes (the
    /// first of each), as `twmon watch` prints them.
    #[test]
    fn human_lines_of_each_kind() {
        let mut kinds = Vec::new();
        let mut out = String::new();
        for ev in Synth::new(2_000, 7, 1_000_000) {
            let kind = json_line(&ev)
                .split('"')
                .nth(3)
                .unwrap_or_default()
                .to_string();
            if !kinds.contains(&kind) {
                out.push_str(&human_line(&ev));
                out.push('\n');
                kinds.push(kind);
            }
        }
        assert!(kinds.iter().any(|k| k == "bind_failed"), "{kinds:?}");
        insta::assert_snapshot!(out);
    }

    /// A listener its opener handed on names both processes.
    #[test]
    fn human_line_of_a_handed_on_listener() {
        use crate::diagnose::holder;
        use crate::event::{Overlap, Process, Proto, TcpState};
        use crate::rules::ExistingSocket;
        let mut ev = Synth::new(2_000, 7, 1_000_000)
            .find(|e| matches!(e.kind, Kind::BindFailed(_)))
            .unwrap();
        let Kind::BindFailed(b) = &mut ev.kind else {
            unreachable!()
        };
        let listener = ExistingSocket::new(
            Proto::Tcp,
            "0.0.0.0:8080".parse().unwrap(),
            TcpState::Listen,
        );
        let process = |pid, comm: &str| Process {
            pid,
            comm: comm.into(),
        };
        let mut h = holder(
            &listener,
            Overlap::Exact,
            Some(process(201, "log-helper")),
            None,
            &crate::rules::NetEnv::default(),
        );
        h.opened_by = Some(process(200, "nginx"));
        b.holders = vec![h];
        b.diagnosis = None;
        let line = human_line(&ev);
        assert!(
            line.contains(
                "held by LISTEN 0.0.0.0:8080 log-helper[201], opened by nginx[200] (overlap exact)"
            ),
            "{line}"
        );
    }

    /// A holder's device shows as `ss` writes it.
    #[test]
    fn a_holder_on_a_device_is_written_as_ss_does() {
        use crate::diagnose::holder;
        use crate::event::{Overlap, Proto, TcpState};
        use crate::rules::{ExistingSocket, NetEnv};
        let env = NetEnv {
            devices: vec![(1, "lo".into()), (4, "vrf-blue".into())],
            ..NetEnv::default()
        };
        let at = |addr: &str, dev| {
            let mut s = ExistingSocket::new(Proto::Tcp, addr.parse().unwrap(), TcpState::Listen);
            s.bound_dev_if = dev;
            holder_local(&holder(&s, Overlap::Exact, None, None, &env))
        };
        assert_eq!(at("0.0.0.0:8080", 0), "0.0.0.0:8080");
        assert_eq!(at("0.0.0.0:8080", 4), "0.0.0.0%vrf-blue:8080");
        assert_eq!(at("[::]:443", 1), "[::]%lo:443");
    }
}
