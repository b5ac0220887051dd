//! A fixed sequence of events for the dashboard tests, built in code: a
//! server restart into TIME_WAIT with refused clients afterwards, a
//! CLOSE_WAIT leak (one owner known, one not), a busy listener, an
//! ephemeral client port in TIME_WAIT, and a `lost` report. Every value is
//! fixed (times, pids, netns), so screens are reproducible.

#![allow(dead_code)]

use monitor::event::*;
use monitor::ui::app::{App, Dashboard};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

pub const NETNS: u32 = 4026532001;
/// Boot-time ns of the first event.
pub const T0: u64 = 1_000_000_000_000;

pub fn at(ms: u64) -> u64 {
    T0 + ms * 1_000_000
}

/// RFC 3339 for `ms` after 10:00:00.000.
fn stamp(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "2026-11-22T10:{:02}:{:02}.{:03}000000Z",
        s / 60,
        s % 60,
        ms % 1000
    )
}

pub fn ev(ms: u64, pid: Option<(u32, &str)>, kind: Kind) -> Event {
    Event {
        common: Common {
            ts: stamp(ms),
            ts_ns: at(ms),
            netns: NETNS,
            proto: Proto::Tcp,
            pid: pid.map(|p| p.0),
            comm: pid.map(|p| p.1.to_string()),
            container: None,
        },
        kind,
    }
}

pub fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}

pub fn state(local: &str, remote: &str, old: TcpState, new: TcpState, cookie: u64) -> Kind {
    state_i(local, remote, old, new, cookie, 0)
}

/// A transition of the socket with file inode `inode` (0: none, softirq).
pub fn state_i(
    local: &str,
    remote: &str,
    old: TcpState,
    new: TcpState,
    cookie: u64,
    inode: u64,
) -> Kind {
    Kind::State(StateChange {
        local: ep(local),
        remote: ep(remote),
        old,
        new,
        cookie,
        reuseaddr: false,
        reuseport: false,
        uid: 0,
        inode,
    })
}

pub fn bound(syscall: Syscall, local: &str, inode: u64) -> Kind {
    Kind::Bound(Bound {
        syscall,
        local: ep(local),
        reuseaddr: false,
        reuseport: false,
        v6only: false,
        uid: 0,
        cookie: 0,
        bound_dev_if: 0,
        inode,
    })
}

pub fn failed(requested: &str, holders: Vec<Holder>, d: Diagnosis) -> Kind {
    Kind::BindFailed(Box::new(BindFailed {
        holders_omitted: 0,
        device: None,
        syscall: Syscall::Bind,
        errno: 98,
        error: "EADDRINUSE".into(),
        requested: ep(requested),
        reuseaddr: false,
        reuseport: false,
        v6only: false,
        uid: 0,
        holders,
        diagnosis: Some(d),
        freebind: false,
        transparent: false,
        bound_dev_if: 0,
        cgroup_id: 0,
        cookie: 0,
        inode: 0,
        tid: 0,
        local: None,
        kernel_holders: None,
        holder_mismatch: None,
        kernel_port: None,
        port_mismatch: None,
    }))
}

const WEB: (u32, &str) = (4100, "web-server");
const WEB2: (u32, &str) = (4107, "web-server");
const CW: (u32, &str) = (4200, "cw-server");
const API: (u32, &str) = (4300, "api");

/// The whole sequence, in order (about 12 s of event time).
#[allow(clippy::vec_init_then_push)]
pub fn events() -> Vec<Event> {
    use TcpState::*;
    let mut v = Vec::new();
    // A server on 7100 serves one connection, closes it first and exits.
    v.push(ev(0, Some(WEB), bound(Syscall::Bind, "127.0.0.1:7100", 11)));
    v.push(ev(
        1,
        Some(WEB),
        state_i("127.0.0.1:7100", "0.0.0.0:0", Close, Listen, 1, 11),
    ));
    v.push(ev(
        300,
        None,
        state("127.0.0.1:7100", "127.0.0.1:40000", SynRecv, Established, 2),
    ));
    v.push(ev(
        900,
        Some(WEB),
        state(
            "127.0.0.1:7100",
            "127.0.0.1:40000",
            Established,
            FinWait1,
            2,
        ),
    ));
    v.push(ev(
        901,
        None,
        Kind::TimewaitOpen(TimewaitOpen {
            local: ep("127.0.0.1:7100"),
            remote: ep("127.0.0.1:40000"),
            substate: TimeWait,
            expires_in_ms: 60_000,
            left_by: Some(Process {
                pid: WEB.0,
                comm: WEB.1.into(),
            }),
            cookie: 2,
            reuseaddr: false,
            reuseport: false,
        }),
    ));
    v.push(ev(
        901,
        None,
        state("127.0.0.1:7100", "127.0.0.1:40000", FinWait2, Close, 2),
    ));
    v.push(ev(
        950,
        Some(WEB),
        state_i("127.0.0.1:7100", "0.0.0.0:0", Listen, Close, 1, 11),
    ));
    // It restarts without SO_REUSEADDR: EADDRINUSE, held by the TIME_WAIT.
    v.push(ev(
        2000,
        Some(WEB2),
        failed(
            "127.0.0.1:7100",
            vec![Holder {
                device: None,
                state: TimeWait,
                local: ep("127.0.0.1:7100"),
                remote: Some(ep("127.0.0.1:40000")),
                pid: None,
                comm: None,
                uid: None,
                reuseaddr: false,
                reuseport: false,
                expires_in_ms: Some(58_900),
                overlap: Overlap::Exact,
                left_by: Some(Process {
                    pid: WEB.0,
                    comm: WEB.1.into(),
                }),
                opened_by: None,
                outgoing: None,
                shared_with: Vec::new(),
            }],
            Diagnosis {
                code: DiagnosisCode::TimeWait,
                summary: "1 TIME_WAIT socket on 127.0.0.1:7100 left by web-server (pid 4100) still holds the port; the last one expires in 59 s.".into(),
                fix: "Wait 59 s for the TIME_WAIT to expire; SO_REUSEADDR on the new socket alone will not help because the old socket did not set it.".into(),
                reuseaddr_would_help: false,
                reuseport_would_help: false,
            },
        ),
    ));
    // Its clients keep coming: refused (SYN_SENT -> CLOSE towards 7100).
    for (i, ms) in [2500u64, 3000, 3500].iter().enumerate() {
        let local = format!("127.0.0.1:{}", 50000 + i);
        v.push(ev(
            *ms,
            None,
            state(&local, "127.0.0.1:7100", SynSent, Close, 20 + i as u64),
        ));
    }
    // A client towards another port is refused too: it does not count.
    v.push(ev(
        3600,
        None,
        state("127.0.0.1:50010", "127.0.0.1:9999", SynSent, Close, 30),
    ));

    // cw-server on 7400: two connections whose peers hung up; it never
    // closes them. One owner known from a snapshot, one never seen.
    v.push(ev(
        4000,
        Some(CW),
        bound(Syscall::Listen, "127.0.0.1:7400", 41),
    ));
    v.push(ev(
        4001,
        Some(CW),
        state_i("127.0.0.1:7400", "0.0.0.0:0", Close, Listen, 40, 41),
    ));
    for (i, port) in [41000u16, 41001].iter().enumerate() {
        let remote = format!("127.0.0.1:{port}");
        let cookie = 42 + i as u64;
        v.push(ev(
            4100 + i as u64,
            None,
            state("127.0.0.1:7400", &remote, SynRecv, Established, cookie),
        ));
        v.push(ev(
            5000 + i as u64 * 1500,
            None,
            state("127.0.0.1:7400", &remote, Established, CloseWait, cookie),
        ));
    }
    v.push(ev(
        7000,
        Some(CW),
        state_i("127.0.0.1:7400", "0.0.0.0:0", Listen, Close, 40, 41),
    ));
    let mut seen = ev(
        8000,
        None,
        Kind::Socket(SocketSeen {
            local: ep("127.0.0.1:7400"),
            remote: Some(ep("127.0.0.1:41000")),
            state: CloseWait,
            timewait: false,
            uid: 0,
            inode: 0,
            cookie: 42,
            reuseaddr: Some(false),
            reuseport: Some(false),
            v6only: false,
            bound_dev_if: 0,
            expires_in_ms: None,
            owner: Some(Process {
                pid: CW.0,
                comm: CW.1.into(),
            }),
            gone: false,
            shared_with: Vec::new(),
        }),
    );
    seen.common.pid = None;
    v.push(seen);
    v.push(ev(
        8000,
        Some((4207, "cw-server")),
        failed(
            "0.0.0.0:7400",
            vec![Holder {
                device: None,
                state: CloseWait,
                local: ep("127.0.0.1:7400"),
                remote: Some(ep("127.0.0.1:41000")),
                pid: Some(CW.0),
                comm: Some(CW.1.into()),
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
            Diagnosis {
                code: DiagnosisCode::CloseWait,
                summary: "cw-server (pid 4200) holds 2 CLOSE_WAIT sockets on port 7400: the peers closed those connections but cw-server never called close() on them.".into(),
                fix: "Make cw-server close the connections its peers ended or stop it (pid 4200); SO_REUSEADDR on the new socket alone will not help because those sockets did not set it.".into(),
                reuseaddr_would_help: false,
                reuseport_would_help: false,
            },
        ),
    ));

    // A busy API on 8080 with three live connections.
    v.push(ev(
        9000,
        Some(API),
        bound(Syscall::Listen, "0.0.0.0:8080", 81),
    ));
    v.push(ev(
        9001,
        Some(API),
        state_i("0.0.0.0:8080", "0.0.0.0:0", Close, Listen, 80, 81),
    ));
    for i in 0..3u64 {
        let remote = format!("10.0.0.{}:3{}000", i + 2, i);
        v.push(ev(
            9100 + i,
            None,
            state("10.0.0.1:8080", &remote, SynRecv, Established, 82 + i),
        ));
    }
    // A client whose ephemeral port is left in TIME_WAIT (it closed first).
    v.push(ev(
        9500,
        Some(API),
        state("10.0.0.1:45678", "10.0.0.9:5432", Established, FinWait1, 90),
    ));
    v.push(ev(
        9501,
        None,
        Kind::TimewaitOpen(TimewaitOpen {
            local: ep("10.0.0.1:45678"),
            remote: ep("10.0.0.9:5432"),
            substate: TimeWait,
            expires_in_ms: 60_000,
            left_by: Some(Process {
                pid: API.0,
                comm: API.1.into(),
            }),
            cookie: 90,
            reuseaddr: false,
            reuseport: false,
        }),
    ));
    v.push(ev(
        10_000,
        None,
        Kind::Lost(Lost {
            count: 3,
            stream: Some("events".into()),
        }),
    ));
    v
}

/// A dashboard fed with [`events`], the UI clock following the events
/// (1 ms of UI per 1 ms of events), then the clocks set to `end_ms`.
pub fn dashboard(end_ms: u64) -> Dashboard {
    let mut app = App::new();
    app.color = false;
    app.source.mode = "live".into();
    app.source.detail =
        "tracepoint: sys_exit, inet_sock_set_state, timer_{start,expire_entry,cancel}".into();
    let mut d = Dashboard::new(app);
    for e in events() {
        let ms = (e.common.ts_ns - T0) / 1_000_000;
        d.tick(None, ms);
        d.feed(e);
    }
    d.tick(Some(at(end_ms)), end_ms);
    d
}

/// The screen as text, one line per row, trailing blanks cut.
pub fn screen(d: &Dashboard, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| monitor::ui::views::draw(f, &d.app, &d.model))
        .unwrap();
    buffer_text(t.backend().buffer())
}

pub fn buffer_text(b: &ratatui::buffer::Buffer) -> String {
    let area = b.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
