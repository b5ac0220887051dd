//! The report on fixed traces: snapshots of the three renderings (insta),
//! determinism, damage, and the counting of TIME_WAIT / CLOSE_WAIT.

use super::*;
use crate::event::*;
use crate::trace::synth;

fn small_trace() -> Vec<u8> {
    synth::trace_bytes(400, 3, 400_000_000)
}

fn report_of(bytes: Vec<u8>) -> Report {
    let r = TraceReader::from_bytes("fixed.trace", bytes).unwrap();
    let mut b = ReportBuilder::new();
    feed(&mut b, r, "fixed.trace");
    b.finish()
}

#[test]
fn snapshot_text() {
    insta::assert_snapshot!("text", render_text(&report_of(small_trace())));
}

#[test]
fn snapshot_markdown() {
    insta::assert_snapshot!("markdown", render_markdown(&report_of(small_trace())));
}

#[test]
fn snapshot_json() {
    let j = render_json(&report_of(small_trace()));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert!(
        j.ends_with("}\n") && j.matches('\n').count() == 1,
        "one object, one line"
    );
    insta::assert_snapshot!("json", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn the_same_trace_gives_the_same_bytes() {
    let bytes = synth::trace_bytes(20_000, 11, 5_000_000);
    let a = report_of(bytes.clone());
    let b = report_of(bytes);
    assert_eq!(render_text(&a), render_text(&b));
    assert_eq!(render_json(&a), render_json(&b));
    assert_eq!(render_markdown(&a), render_markdown(&b));
}

#[test]
fn a_damaged_trace_gives_a_partial_report_saying_where() {
    let mut bytes = small_trace();
    let at = bytes.len() / 2;
    bytes.truncate(at);
    let r = report_of(bytes);
    let s = r.stopped.clone().expect("stopped");
    assert!(
        s.contains("stops at line") && s.contains("cut short"),
        "{s}"
    );
    assert!(r.events.total > 100 && r.events.total < 400);
    let text = render_text(&r);
    assert!(
        text.contains("Stopped early: fixed.trace: the trace stops at line"),
        "{text}"
    );
    assert!(render_markdown(&r).contains("**Stopped early:**"));
    assert!(render_json(&r).contains("\"stopped\":"));
}

fn ev(ts_s: u64, pid: Option<(u32, &str)>, kind: Kind) -> Event {
    Event {
        common: Common {
            ts: crate::probe::enrich::rfc3339(
                1_795_302_000_000_000_000 + ts_s as i128 * 1_000_000_000,
            ),
            ts_ns: ts_s * 1_000_000_000,
            netns: 1,
            proto: Proto::Tcp,
            pid: pid.map(|p| p.0),
            comm: pid.map(|p| p.1.to_string()),
            container: None,
        },
        kind,
    }
}

fn tw(ts: u64, l: &str, r: &str, open: bool, by: Option<(u32, &str)>) -> Event {
    let (local, remote) = (l.parse().unwrap(), r.parse().unwrap());
    ev(
        ts,
        None,
        if open {
            Kind::TimewaitOpen(TimewaitOpen {
                local,
                remote,
                substate: TcpState::TimeWait,
                expires_in_ms: 60_000,
                left_by: by.map(|(pid, c)| Process {
                    pid,
                    comm: c.into(),
                }),
                cookie: 0,
                reuseaddr: false,
                reuseport: false,
            })
        } else {
            Kind::TimewaitClose(TimewaitClose {
                local,
                remote,
                reason: TimewaitEnd::Expired,
                cookie: 0,
                ended_by: None,
                end_mismatch: None,
            })
        },
    )
}

fn st(ts: u64, pid: Option<(u32, &str)>, l: &str, r: &str, new: TcpState, cookie: u64) -> Event {
    ev(
        ts,
        pid,
        Kind::State(StateChange {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            old: TcpState::Established,
            new,
            cookie,
            reuseaddr: false,
            reuseport: false,
            uid: 0,
            inode: 0,
        }),
    )
}

#[test]
fn peaks_are_the_most_at_once_and_owners_are_remembered() {
    use TcpState::*;
    let s = "10.0.0.1:80";
    let evs = vec![
        tw(0, s, "10.0.0.2:1000", true, Some((1, "web"))),
        tw(1, s, "10.0.0.2:1001", true, Some((1, "web"))),
        tw(2, s, "10.0.0.2:1000", false, None),
        tw(3, s, "10.0.0.2:1002", true, Some((2, "web"))),
        tw(4, s, "10.0.0.2:1003", true, None),
        // Duplicate open of a known sock: not counted twice.
        tw(4, s, "10.0.0.2:1003", true, None),
        tw(50, s, "10.0.0.2:1001", false, None),
        // A CLOSE_WAIT whose owner acted on it before the peer closed.
        st(
            10,
            Some((7, "app")),
            "10.0.0.1:90",
            "10.0.0.3:2000",
            Established,
            50,
        ),
        st(11, None, "10.0.0.1:90", "10.0.0.3:2000", CloseWait, 50),
        // One whose owner is only known from a failure's holder.
        st(12, None, "10.0.0.1:90", "10.0.0.3:2001", CloseWait, 51),
        st(13, None, "10.0.0.1:90", "10.0.0.3:2002", CloseWait, 52),
        st(
            20,
            Some((7, "app")),
            "10.0.0.1:90",
            "10.0.0.3:2002",
            LastAck,
            52,
        ),
    ];
    let mut b = ReportBuilder::new();
    for e in &evs {
        b.add(e);
    }
    let mut failed = ev(
        61,
        Some((9, "app")),
        Kind::BindFailed(Box::new(BindFailed {
            holders_omitted: 0,
            device: None,
            syscall: Syscall::Bind,
            errno: libc::EADDRINUSE,
            error: "EADDRINUSE".into(),
            requested: "0.0.0.0:90".parse().unwrap(),
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            uid: 0,
            holders: vec![Holder {
                device: None,
                state: CloseWait,
                local: "10.0.0.1:90".parse().unwrap(),
                remote: Some("10.0.0.3:2001".parse().unwrap()),
                pid: Some(8),
                comm: Some("worker".into()),
                uid: Some(0),
                reuseaddr: false,
                reuseport: false,
                expires_in_ms: None,
                overlap: Overlap::Wildcard,
                left_by: None,
                opened_by: None,
                outgoing: None,
                shared_with: Vec::new(),
            }],
            diagnosis: None,
            freebind: false,
            transparent: false,
            bound_dev_if: 0,
            cgroup_id: 0,
            cookie: 0,
            inode: 0,
            tid: 9,
            local: None,
            kernel_holders: None,
            holder_mismatch: None,
            kernel_port: None,
            port_mismatch: None,
        })),
    );
    b.add(&failed);
    if let Kind::BindFailed(f) = &mut failed.kind {
        f.holders.clear();
    }
    b.add(&failed); // same group
                    // The same call from a socket bound to a device: another attempt.
    if let Kind::BindFailed(f) = &mut failed.kind {
        f.bound_dev_if = 3;
        f.device = Some("eth1".into());
    }
    b.add(&failed);
    let r = b.finish();
    assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
    assert_eq!(r.failures[1].device.as_deref(), Some("eth1"));
    assert!(
        super::render::render_text(&r).contains("v6only no, device eth1"),
        "{}",
        super::render::render_text(&r)
    );
    assert_eq!(r.time_wait.peak, 3, "{:?}", r.time_wait);
    assert_eq!(r.time_wait.entered, 4);
    assert_eq!(r.time_wait.at_end, 2);
    let p80 = r.time_wait.ports.iter().find(|p| p.port == 80).unwrap();
    assert_eq!((p80.side, p80.peak, p80.entered), (Side::Local, 3, 4));
    assert_eq!(p80.peak_at, evs[4].common.ts);
    assert_eq!(r.timewait_left_by[0].comm.as_deref(), Some("web"));
    assert_eq!(
        (r.timewait_left_by[0].pid, r.timewait_left_by[0].count),
        (Some(1), 2)
    );
    assert_eq!(r.close_wait.peak, 3);
    assert_eq!(r.close_wait.at_end, 2);
    let who: Vec<(Option<&str>, u64, u64)> = r
        .close_wait_holders
        .iter()
        .map(|h| (h.comm.as_deref(), h.sockets, h.still_at_end))
        .collect();
    assert_eq!(who, vec![(Some("app"), 2, 1), (Some("worker"), 1, 1)]);
    assert_eq!(r.failures[0].count, 2);
    assert_eq!(
        r.failures[0].holders.len(),
        1,
        "the first failure's holders"
    );
    assert_eq!(r.failures_by_diagnosis.get("none"), Some(&3));
    assert_eq!(r.timeline.len(), 2);
    assert_eq!(r.timeline[0].minute, "2026-11-21T23:00");
    assert_eq!(r.timeline[0].timewait_closed, 2);
    assert_eq!(r.timeline[1].failures, 3);
}

#[test]
fn a_timewait_whose_close_was_lost_is_dropped_after_its_expiry() {
    let mut b = ReportBuilder::new();
    b.add(&tw(0, "1.1.1.1:80", "2.2.2.2:9", true, None));
    b.add(&ev(
        100,
        None,
        Kind::Lost(Lost {
            count: 3,
            stream: None,
        }),
    ));
    let r = b.finish();
    assert_eq!(r.time_wait.at_end, 0);
    assert_eq!(r.lost.total, 3);
    assert_eq!(r.lost.by_stream.get("events"), Some(&3));
}
