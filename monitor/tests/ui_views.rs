//! Rendering snapshots of every view at 80x24 and 160x48, fed from the
//! fixed event sequence of ui_fixture (no volatile values: times, pids and
//! namespaces are fixed there). Also: no line is wider than the screen, and
//! what must stand out (new failures, lost events) does.

#[path = "ui_fixture/mod.rs"]
mod fixture;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fixture::{dashboard, screen};
use monitor::ui::app::{Dashboard, Pane};
use monitor::ui::source::{Banner, Recording};
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};
use ratatui::Terminal;

/// 12 s into the sequence: the TIME_WAIT on 7100 has 49 s left.
const END: u64 = 12_000;

fn key(d: &mut Dashboard, c: KeyCode) {
    let k = KeyEvent::new(c, KeyModifiers::NONE);
    d.app.on_key(k, &d.model);
}

fn both(name: &str, d: &Dashboard) {
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let s = screen(d, w, h);
        for (i, l) in s.lines().enumerate() {
            assert!(
                l.chars().count() <= w as usize,
                "{name} {w}x{h}: line {i} is wider than the screen"
            );
        }
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), s);
    }
}

#[test]
fn failures_and_detail() {
    let d = dashboard(END);
    both("failures", &d);
}

#[test]
fn older_failure_selected_with_refused_clients() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Down);
    both("failure_refused", &d);
}

#[test]
fn detail_zoomed() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Down);
    key(&mut d, KeyCode::Enter);
    both("detail_zoom", &d);
}

#[test]
fn ports() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Char('2'));
    both("ports", &d);
    key(&mut d, KeyCode::Char('s'));
    key(&mut d, KeyCode::Char('s'));
    both("ports_by_established", &d);
}

#[test]
fn close_wait_by_process() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Char('3'));
    both("close_wait", &d);
}

#[test]
fn event_log_filtered() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Char('4'));
    both("log", &d);
    key(&mut d, KeyCode::Char('/'));
    for c in "7100".chars() {
        key(&mut d, KeyCode::Char(c));
    }
    both("log_filter_typing", &d);
    key(&mut d, KeyCode::Enter);
    both("log_filtered", &d);
}

#[test]
fn help_lists_every_key() {
    let mut d = dashboard(END);
    key(&mut d, KeyCode::Char('?'));
    both("help", &d);
    let s = screen(&d, 80, 24);
    for (k, _) in monitor::ui::keys::KEYS {
        assert!(s.contains(k), "help at 80x24 misses {k:?}");
    }
}

/// Light mode (the live default): the status line says what is not
/// streamed, and the detail does not claim that no client was refused.
#[test]
fn light_mode_status_and_detail() {
    let mut d = dashboard(END);
    d.app.source.mode = "live".into();
    d.app.source.detail =
        "tracepoint: sys_exit · light: sockets listed every 1 s, no transitions (--full)".into();
    d.app.source.light = true;
    let s = screen(&d, 160, 48);
    assert!(s.contains("not counted in light mode"), "{s}");
    assert!(!s.contains("No client refused"), "{s}");
    insta::assert_snapshot!("light_mode_160x48", s);
}

#[test]
fn demo_banner_pause_and_recording() {
    let mut d = dashboard(END);
    d.app.source.mode = "demo".into();
    d.app.scope = vec![fixture::NETNS];
    d.app.source.recording = Recording::On("twmon-20261122-100000.trace.zst".into());
    d.app.banner = Some(Banner {
        title: "Scenario 4/10: close-wait".into(),
        caption: "The client hangs up but the server never closes its end: the connection sits in CLOSE_WAIT, owned by the old process, and blocks the port.".into(),
        step: Some("tcp bind(0.0.0.0:7400) [no options] by cw-server 4207: EADDRINUSE (close_wait)".into()),
    });
    d.set_paused(true, false);
    d.feed(fixture::ev(
        12_500,
        None,
        fixture::state(
            "127.0.0.1:7400",
            "127.0.0.1:41001",
            monitor::event::TcpState::CloseWait,
            monitor::event::TcpState::LastAck,
            43,
        ),
    ));
    d.app.set_ui_ms(END + 10_000); // the "paused" message is gone
    both("demo_paused", &d);
}

#[test]
fn empty_dashboard() {
    let mut d = Dashboard::default();
    d.app.color = false;
    d.app.source.mode = "live".into();
    d.app.source.detail =
        "tracepoint: sys_exit, inet_sock_set_state, timer_{start,expire_entry,cancel}".into();
    both("empty", &d);
}

/// Cells of the row of the screen that contains `text`.
fn row_with<'a>(b: &'a ratatui::buffer::Buffer, text: &str) -> Vec<&'a ratatui::buffer::Cell> {
    let w = b.area.width;
    for y in 0..b.area.height {
        let line: String = (0..w).map(|x| b[(x, y)].symbol()).collect();
        if line.contains(text) {
            return (0..w).map(|x| &b[(x, y)]).collect();
        }
    }
    panic!("no row contains {text:?}");
}

#[test]
fn a_new_failure_stands_out_for_a_few_seconds_and_lost_is_red() {
    let mut d = dashboard(END);
    d.app.color = true;
    d.feed(fixture::ev(
        12_100,
        Some((4300, "api")),
        fixture::failed(
            "0.0.0.0:8080",
            vec![],
            monitor::event::Diagnosis {
                code: monitor::event::DiagnosisCode::Listener,
                summary: "0.0.0.0:8080 is taken: api (pid 4300) is listening on 0.0.0.0:8080."
                    .into(),
                fix: "Stop api (pid 4300) (another instance of this server?) or use another port."
                    .into(),
                reuseaddr_would_help: false,
                reuseport_would_help: false,
            },
        ),
    ));
    d.tick(None, END + 500);
    let draw = |d: &Dashboard| {
        let mut t = Terminal::new(TestBackend::new(160, 48)).unwrap();
        t.draw(|f| monitor::ui::views::draw(f, &d.app, &d.model))
            .unwrap();
        t.backend().buffer().clone()
    };
    let b = draw(&d);
    // Not the selected row: the 7400 failure (one below the newest).
    let fresh = row_with(&b, "0.0.0.0:7400");
    assert!(
        fresh.iter().all(|c| c.bg != Color::Red),
        "an old failure does not stand out"
    );
    let new = row_with(&b, "0.0.0.0:8080        ");
    assert!(
        new.iter()
            .any(|c| c.bg == Color::Red || c.modifier.contains(Modifier::REVERSED)),
        "the new failure stands out"
    );
    let status = row_with(&b, "lost 3");
    assert!(status.iter().any(|c| c.bg == Color::Red), "lost > 0 is red");
    // Select the older one so the new one is not hidden by the selection.
    key(&mut d, KeyCode::Down);
    let b = draw(&d);
    let new = row_with(&b, "0.0.0.0:8080        ");
    assert!(
        new.iter().any(|c| c.bg == Color::Red),
        "the new failure is highlighted"
    );
    d.tick(None, END + 500 + monitor::ui::app::HIGHLIGHT_MS);
    let b = draw(&d);
    let new = row_with(&b, "0.0.0.0:8080        ");
    assert!(
        new.iter().all(|c| c.bg != Color::Red),
        "the highlight fades"
    );
    assert_eq!(d.app.focus, Pane::Failures);
}

#[test]
fn no_color_uses_no_colour() {
    let d = dashboard(END);
    assert!(!d.app.color);
    let mut t = Terminal::new(TestBackend::new(160, 48)).unwrap();
    t.draw(|f| monitor::ui::views::draw(f, &d.app, &d.model))
        .unwrap();
    let b = t.backend().buffer();
    for c in b.content() {
        assert!(
            matches!(c.fg, Color::Reset) && matches!(c.bg, Color::Reset),
            "a coloured cell with colour off: {c:?}"
        );
    }
}

#[test]
fn every_size_from_tiny_to_huge_draws_without_panic() {
    let d = dashboard(END);
    for (w, h) in [
        (1, 1),
        (20, 5),
        (40, 10),
        (80, 24),
        (100, 30),
        (119, 31),
        (120, 32),
        (250, 80),
    ] {
        let _ = screen(&d, w, h);
    }
}

/// Thousands of ports (a client-first churn's timewait socks, counted by a
/// light-mode census): only the visible rows are built, and the selection
/// at the end is on screen, marked, with the rows just before it.
#[test]
fn many_ports_scroll_to_the_selection() {
    use monitor::census::{CensusUpdate, NsChanges};
    let mut d = Dashboard::new(monitor::ui::app::App::new());
    let tally: Vec<(u16, u32)> = (0..5000u16)
        .map(|i| (30_000 + i, 1 + u32::from(i % 3)))
        .collect();
    d.census(&CensusUpdate {
        ts_ns: 1_000_000_000,
        namespaces: vec![NsChanges {
            netns: fixture::NETNS,
            timewait: tally,
            ..NsChanges::default()
        }],
        ..CensusUpdate::default()
    });
    key(&mut d, KeyCode::Char('2'));
    key(&mut d, KeyCode::End);
    let s = screen(&d, 160, 48);
    let marked: Vec<&str> = s.lines().filter(|l| l.contains("▶")).collect();
    // Sorted by TIME_WAIT, then port: the last row is the highest port
    // with one timewait sock.
    assert!(
        marked.iter().any(|l| l.contains("34998")),
        "the last port is selected and shown:\n{s}"
    );
    assert!(s.contains("34995"), "the rows before it are shown:\n{s}");
    assert!(s.contains("Ports 5000"), "{s}");
}
