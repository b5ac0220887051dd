//! One event as its JSON line, written directly for the kinds of the flood.
//!
//! Under churn nearly every event is a `state`, `timewait_open` or
//! `timewait_close`, and serde_json's generic path (a map for the flattened
//! fields, every key escaped, endpoints through core::fmt) was a sixth of
//! `twmon record`'s CPU in perf beside a 70,000 connections/s churn. These
//! three kinds are written here field by field; every other kind, and any
//! field this path does not cover, goes through serde_json. The output is
//! byte for byte what serde_json writes (the tests compare them), so a
//! trace or a `watch --json` line does not depend on which path wrote it.

use crate::event::{Common, Endpoint, Event, Kind, Process};

/// Append `ev` as one JSON object (no newline) to `out`.
pub fn write(out: &mut Vec<u8>, ev: &Event) {
    let start = out.len();
    if !write_fast(out, ev) {
        out.truncate(start);
        // Events are plain data: serde_json cannot fail on them.
        let _ = serde_json::to_writer(&mut *out, ev);
    }
}

/// The fast path; false for what it does not cover (the caller then
/// writes the event with serde_json). Fields in serde's order: the tag,
/// the kind's fields as declared, then the common ones.
fn write_fast(out: &mut Vec<u8>, ev: &Event) -> bool {
    match &ev.kind {
        Kind::State(s) => {
            head(out, "state", &s.local, &s.remote);
            name(out, "old", s.old.as_str());
            name(out, "new", s.new.as_str());
            key(out, "cookie");
            number(out, s.cookie);
            key(out, "reuseaddr");
            boolean(out, s.reuseaddr);
            key(out, "reuseport");
            boolean(out, s.reuseport);
            key(out, "uid");
            number(out, s.uid);
            key(out, "inode");
            number(out, s.inode);
        }
        Kind::TimewaitOpen(t) => {
            head(out, "timewait_open", &t.local, &t.remote);
            name(out, "substate", t.substate.as_str());
            key(out, "expires_in_ms");
            number(out, t.expires_in_ms);
            key(out, "left_by");
            match &t.left_by {
                None => out.extend_from_slice(b"null"),
                Some(p) => process(out, p),
            }
            key(out, "cookie");
            number(out, t.cookie);
            key(out, "reuseaddr");
            boolean(out, t.reuseaddr);
            key(out, "reuseport");
            boolean(out, t.reuseport);
        }
        Kind::TimewaitClose(t) if t.ended_by.is_none() && t.end_mismatch.is_none() => {
            head(out, "timewait_close", &t.local, &t.remote);
            name(out, "reason", t.reason.as_str());
            key(out, "cookie");
            number(out, t.cookie);
        }
        _ => return false,
    }
    common(out, &ev.common);
    out.push(b'}');
    true
}

/// `{"type":KIND,"local":...,"remote":...`: how the three kinds begin.
fn head(out: &mut Vec<u8>, kind: &str, local: &Endpoint, remote: &Endpoint) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\"");
    key(out, "local");
    endpoint(out, local);
    key(out, "remote");
    endpoint(out, remote);
}

/// `,"KEY":` (keys are ours: nothing to escape).
fn key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A field whose value is one of our names (a state, a reason).
fn name(out: &mut Vec<u8>, k: &str, value: &str) {
    key(out, k);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// The fields every event carries, after the kind's own.
fn common(out: &mut Vec<u8>, c: &Common) {
    key(out, "ts");
    string(out, &c.ts);
    key(out, "ts_ns");
    number(out, c.ts_ns);
    key(out, "netns");
    number(out, c.netns);
    name(out, "proto", c.proto.as_str());
    key(out, "pid");
    match c.pid {
        Some(pid) => number(out, pid),
        None => out.extend_from_slice(b"null"),
    }
    key(out, "comm");
    match &c.comm {
        Some(comm) => string(out, comm),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(container) = &c.container {
        key(out, "container");
        string(out, container);
    }
}

fn process(out: &mut Vec<u8>, p: &Process) {
    out.extend_from_slice(b"{\"pid\":");
    number(out, p.pid);
    out.extend_from_slice(b",\"comm\":");
    string(out, &p.comm);
    out.push(b'}');
}

fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    // An endpoint's text is digits, dots, colons, brackets and hex: no
    // character JSON escapes.
    out.push(b'"');
    e.write_to(out);
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A JSON string: as it is when nothing in it needs escaping (a process
/// name, a time stamp: always so in practice), else serde_json's escaping.
fn string(out: &mut Vec<u8>, s: &str) {
    // A fold rather than all(): no early exit, so it vectorizes.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        Lost, Proto, StateChange, TcpState, TimewaitClose, TimewaitEnd, TimewaitOpen,
    };

    fn common(pid: Option<u32>, comm: Option<&str>, container: Option<&str>) -> Common {
        Common {
            ts: "2026-12-07T23:48:23.591035528Z".into(),
            ts_ns: 455_052_482_673,
            netns: 4_026_532_174,
            proto: Proto::Tcp,
            pid,
            comm: comm.map(str::to_string),
            container: container.map(str::to_string),
        }
    }

    fn kinds() -> Vec<Kind> {
        let v4 = |s: &str| s.parse::<Endpoint>().unwrap();
        let mut kinds = Vec::new();
        for (local, remote) in [
            (v4("127.0.0.1:19292"), v4("127.0.0.1:9100")),
            (v4("0.0.0.0:0"), v4("255.255.255.255:65535")),
            (v4("[::1]:443"), v4("[fe80::1:2]:80")),
            (v4("[2001:db8::ff00:42:8329]:8080"), v4("[::]:0")),
        ] {
            for (old, new) in [
                (TcpState::Close, TcpState::SynSent),
                (TcpState::CloseWait, TcpState::LastAck),
                (TcpState::FinWait2, TcpState::TimeWait),
            ] {
                kinds.push(Kind::State(StateChange {
                    local,
                    remote,
                    old,
                    new,
                    cookie: u64::MAX,
                    reuseaddr: true,
                    reuseport: false,
                    uid: 65534,
                    inode: 0,
                }));
            }
            for left_by in [
                None,
                Some(Process {
                    pid: 7,
                    comm: "nginx".into(),
                }),
                Some(Process {
                    pid: 8,
                    comm: "a \"quoted\"\\name\u{1}\n".into(),
                }),
            ] {
                kinds.push(Kind::TimewaitOpen(TimewaitOpen {
                    local,
                    remote,
                    substate: TcpState::FinWait2,
                    expires_in_ms: 59_999,
                    left_by,
                    cookie: 12,
                    reuseaddr: false,
                    reuseport: true,
                }));
            }
            for reason in [
                TimewaitEnd::Expired,
                TimewaitEnd::ReusedByConnect,
                TimewaitEnd::ReusedBySyn,
                TimewaitEnd::Reset,
                TimewaitEnd::NetnsExit,
                TimewaitEnd::Unknown,
            ] {
                kinds.push(Kind::TimewaitClose(TimewaitClose {
                    local,
                    remote,
                    reason,
                    cookie: 1,
                    ended_by: None,
                    end_mismatch: None,
                }));
            }
            // Covered by serde_json only.
            kinds.push(Kind::TimewaitClose(TimewaitClose {
                local,
                remote,
                reason: TimewaitEnd::ReusedByConnect,
                cookie: 1,
                ended_by: Some(Process {
                    pid: 1,
                    comm: "curl".into(),
                }),
                end_mismatch: Some("the kernel said \"reset\"".into()),
            }));
        }
        kinds.push(Kind::Lost(Lost {
            count: 3,
            stream: Some("events".into()),
        }));
        kinds
    }

    #[test]
    fn every_event_is_written_as_serde_json_writes_it() {
        let comms = [
            None,
            Some("twmon-load"),
            Some(""),
            Some("tab\there"),
            Some("quote\"back\\slash"),
            Some("\u{7f}del and ünïcode ✓"),
            Some("ctl\u{0}\u{1f}"),
        ];
        let mut n = 0;
        for kind in kinds() {
            for comm in comms {
                for pid in [None, Some(0), Some(u32::MAX)] {
                    for container in [None, Some("web-1"), Some("odd\"name")] {
                        let ev = Event {
                            kind: kind.clone(),
                            common: common(pid, comm, container),
                        };
                        let mut fast = Vec::new();
                        write(&mut fast, &ev);
                        let want = serde_json::to_vec(&ev).unwrap();
                        assert_eq!(
                            String::from_utf8_lossy(&fast),
                            String::from_utf8_lossy(&want),
                            "{ev:?}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn the_flood_kinds_take_the_fast_path() {
        let covered = kinds()
            .into_iter()
            .filter(|k| {
                let ev = Event {
                    kind: k.clone(),
                    common: common(Some(1), Some("x"), None),
                };
                write_fast(&mut Vec::new(), &ev)
            })
            .count();
        // All but the precise-mode close and the lost count, per endpoint pair.
        assert_eq!(covered, kinds().len() - 4 - 1);
    }
}
