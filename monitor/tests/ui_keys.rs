//! Keys injected into the dashboard, asserting on its state; and the loop
//! under a flood of events: frames stay at most 10 a second and keys are
//! seen within a frame or two.

#[path = "ui_fixture/mod.rs"]
mod fixture;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use fixture::{dashboard, ev, state};
use monitor::event::{Event, TcpState};
use monitor::ui::app::{Action, Dashboard, Pane, PortSort};
use monitor::ui::rows;
use monitor::ui::run::{run, Input, RunOptions};
use monitor::ui::source::{EventSource, Poll, SourceStatus};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn press(d: &mut Dashboard, c: KeyCode) -> Action {
    d.app.on_key(KeyEvent::new(c, KeyModifiers::NONE), &d.model)
}

fn selected_port(d: &Dashboard) -> Option<u16> {
    d.app.selected_failure().map(|f| f.bind().requested.port())
}

#[test]
fn tab_cycles_panes_and_numbers_jump() {
    let mut d = dashboard(12_000);
    assert_eq!(d.app.focus, Pane::Failures);
    let mut seen = vec![];
    for _ in 0..4 {
        press(&mut d, KeyCode::Tab);
        seen.push(d.app.focus);
    }
    assert_eq!(
        seen,
        [Pane::Ports, Pane::CloseWait, Pane::Log, Pane::Failures]
    );
    press(&mut d, KeyCode::BackTab);
    assert_eq!(d.app.focus, Pane::Log);
    press(&mut d, KeyCode::Char('3'));
    assert_eq!(d.app.focus, Pane::CloseWait);
}

#[test]
fn arrows_and_jk_move_the_selection_and_newest_is_followed() {
    let mut d = dashboard(12_000);
    // Newest first: 7400, then 7100.
    assert_eq!(selected_port(&d), Some(7400));
    assert!(d.app.follows_newest());
    press(&mut d, KeyCode::Char('j'));
    assert_eq!(selected_port(&d), Some(7100));
    press(&mut d, KeyCode::Down); // stays at the end
    assert_eq!(selected_port(&d), Some(7100));
    // A new failure does not steal a selection the user made...
    let mut newer = fixture::events()
        .into_iter()
        .find(|e| matches!(e.kind, monitor::event::Kind::BindFailed(_)))
        .unwrap();
    newer.common.ts_ns = fixture::at(12_500);
    d.feed(newer.clone());
    assert_eq!(selected_port(&d), Some(7100));
    // ...and going back to the top follows the newest again.
    press(&mut d, KeyCode::Char('g'));
    assert!(d.app.follows_newest());
    d.feed(newer);
    assert_eq!(d.app.selected_failure().unwrap().seq, 4);
    press(&mut d, KeyCode::Up);
    assert!(d.app.follows_newest());
}

#[test]
fn enter_zooms_and_esc_comes_back() {
    let mut d = dashboard(12_000);
    press(&mut d, KeyCode::Enter);
    assert!(d.app.zoom);
    press(&mut d, KeyCode::Esc);
    assert!(!d.app.zoom);
    press(&mut d, KeyCode::Enter);
    press(&mut d, KeyCode::Tab); // another pane: zoom off
    assert!(!d.app.zoom);
}

#[test]
fn slash_filters_as_typed_enter_keeps_esc_cancels() {
    let mut d = dashboard(12_000);
    assert_eq!(rows::failures(&d.app).len(), 2);
    press(&mut d, KeyCode::Char('/'));
    for c in "cw-serv".chars() {
        press(&mut d, KeyCode::Char(c));
    }
    // Keys typed into the filter do nothing else (no 'q' quit, no 's' sort).
    assert_eq!(rows::failures(&d.app).len(), 1);
    assert_eq!(press(&mut d, KeyCode::Char('q')), Action::None);
    press(&mut d, KeyCode::Backspace);
    assert_eq!(d.app.filter.text(), "cw-serv");
    press(&mut d, KeyCode::Esc);
    assert!(
        d.app.filter.is_empty(),
        "Esc while typing goes back to no filter"
    );
    assert_eq!(rows::failures(&d.app).len(), 2);

    press(&mut d, KeyCode::Char('/'));
    for c in "7100".chars() {
        press(&mut d, KeyCode::Char(c));
    }
    press(&mut d, KeyCode::Enter);
    assert!(d.app.editing.is_none());
    assert_eq!(selected_port(&d), Some(7100));
    // By pid, by address.
    for (f, n) in [("4207", 1), ("127.0.0.1", 2), ("0.0.0.0", 1), ("nobody", 0)] {
        press(&mut d, KeyCode::Char('/'));
        for _ in 0..10 {
            press(&mut d, KeyCode::Backspace);
        }
        for c in f.chars() {
            press(&mut d, KeyCode::Char(c));
        }
        press(&mut d, KeyCode::Enter);
        assert_eq!(rows::failures(&d.app).len(), n, "filter {f:?}");
    }
    press(&mut d, KeyCode::Esc);
    assert!(d.app.filter.is_empty(), "Esc clears the filter");
    // Ports and CLOSE_WAIT filter too.
    press(&mut d, KeyCode::Char('/'));
    press(&mut d, KeyCode::Char('8'));
    press(&mut d, KeyCode::Char('0'));
    press(&mut d, KeyCode::Char('8'));
    press(&mut d, KeyCode::Char('0'));
    press(&mut d, KeyCode::Enter);
    let ports: Vec<u16> = rows::ports(&d.app, &d.model)
        .iter()
        .map(|r| r.port)
        .collect();
    assert_eq!(ports, [8080]);
    assert!(rows::close_wait(&d.app, &d.model).is_empty());
}

#[test]
fn s_cycles_the_port_sort() {
    let mut d = dashboard(12_000);
    press(&mut d, KeyCode::Char('2'));
    let order = |d: &Dashboard| -> Vec<u16> {
        rows::ports(&d.app, &d.model)
            .iter()
            .map(|r| r.port)
            .collect()
    };
    assert_eq!(d.app.sort, PortSort::TimeWait);
    assert_eq!(order(&d)[..2], [7100, 45678]);
    press(&mut d, KeyCode::Char('s'));
    assert_eq!(d.app.sort, PortSort::CloseWait);
    assert_eq!(order(&d)[0], 7400);
    press(&mut d, KeyCode::Char('s'));
    assert_eq!(d.app.sort, PortSort::Established);
    assert_eq!(order(&d)[0], 8080);
    let mut seen = vec![d.app.sort];
    for _ in 0..4 {
        press(&mut d, KeyCode::Char('s'));
        seen.push(d.app.sort);
    }
    assert_eq!(
        seen,
        [
            PortSort::Established,
            PortSort::Listen,
            PortSort::Failures,
            PortSort::Port,
            PortSort::TimeWait
        ]
    );
}

#[test]
fn pause_holds_the_view_and_resume_catches_up() {
    let mut d = dashboard(12_000);
    let before = d.app.events();
    assert_eq!(press(&mut d, KeyCode::Char('p')), Action::Pause(true));
    d.set_paused(true, false);
    d.feed(ev(
        12_100,
        None,
        state(
            "127.0.0.1:7400",
            "127.0.0.1:41000",
            TcpState::CloseWait,
            TcpState::LastAck,
            42,
        ),
    ));
    d.feed(ev(
        12_200,
        None,
        monitor::event::Kind::Lost(monitor::event::Lost {
            count: 5,
            stream: None,
        }),
    ));
    assert_eq!(d.app.events(), before, "nothing applied while paused");
    assert_eq!(d.app.queued, 2);
    assert_eq!(d.lost(), 8, "lost is never hidden, even paused");
    assert_eq!(
        rows::close_wait(&d.app, &d.model)[0].count
            + rows::close_wait(&d.app, &d.model)
                .get(1)
                .map_or(0, |r| r.count),
        2
    );
    // The clock holds still too.
    let clock = d.app.clock_ns();
    d.tick(Some(fixture::at(20_000)), 20_000);
    assert_eq!(d.app.clock_ns(), clock);
    assert_eq!(press(&mut d, KeyCode::Char('p')), Action::Pause(false));
    d.set_paused(false, false);
    assert_eq!(d.pump(1000), 0);
    assert_eq!(d.app.events(), before + 2);
    assert_eq!(d.lost(), 8);
    let cw: u32 = rows::close_wait(&d.app, &d.model)
        .iter()
        .map(|r| r.count)
        .sum();
    assert_eq!(cw, 1);
}

#[test]
fn a_full_pause_queue_counts_what_it_skips() {
    let mut d = Dashboard::default();
    d.set_paused(true, false);
    let n = monitor::ui::app::PAUSE_QUEUE + 7;
    for i in 0..n {
        d.feed(ev(
            i as u64,
            None,
            state(
                "127.0.0.1:1",
                "127.0.0.1:2",
                TcpState::SynSent,
                TcpState::Close,
                i as u64,
            ),
        ));
    }
    assert_eq!(d.app.queued, monitor::ui::app::PAUSE_QUEUE);
    assert_eq!(d.app.skipped, 7);
}

#[test]
fn help_quit_record_and_source_keys() {
    let mut d = dashboard(12_000);
    press(&mut d, KeyCode::Char('?'));
    assert!(d.app.help);
    assert_eq!(press(&mut d, KeyCode::Char('j')), Action::None);
    assert!(!d.app.help, "any key closes the help");
    assert_eq!(press(&mut d, KeyCode::Char('r')), Action::ToggleRecord);
    assert_eq!(press(&mut d, KeyCode::Char('q')), Action::Quit);
    assert_eq!(
        d.app.on_key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            &d.model
        ),
        Action::Quit
    );
    let plus = KeyEvent::new(KeyCode::Char('+'), KeyModifiers::NONE);
    assert_eq!(d.app.on_key(plus, &d.model), Action::Source(plus));
    // q quits from the help too.
    press(&mut d, KeyCode::Char('?'));
    assert_eq!(press(&mut d, KeyCode::Char('q')), Action::Quit);
}

#[test]
fn refused_clients_count_against_the_newest_matching_failure_only() {
    let d = dashboard(12_000);
    let fs = d.app.all_failures();
    let by_port = |p: u16| fs.iter().find(|f| f.bind().requested.port() == p).unwrap();
    // Three SYN_SENT -> CLOSE towards 7100 within 60 s; the one towards
    // 9999 does not count.
    assert_eq!(by_port(7100).refused, 3);
    assert_eq!(by_port(7400).refused, 0);
    // Outside the window: not counted.
    let mut d = dashboard(12_000);
    d.feed(ev(
        2000 + 61_000,
        None,
        state(
            "127.0.0.1:50100",
            "127.0.0.1:7100",
            TcpState::SynSent,
            TcpState::Close,
            99,
        ),
    ));
    assert_eq!(d.app.all_failures()[0].refused, 3);
    // A wildcard failure counts any address of its port.
    d.feed(ev(
        63_500,
        None,
        state(
            "127.0.0.1:50101",
            "10.9.9.9:7400",
            TcpState::SynSent,
            TcpState::Close,
            98,
        ),
    ));
    assert_eq!(d.app.all_failures()[1].refused, 1);
    // A specific failure only its address.
    d.feed(ev(
        63_600,
        None,
        state(
            "127.0.0.1:50102",
            "127.0.0.9:7100",
            TcpState::SynSent,
            TcpState::Close,
            97,
        ),
    ));
    assert_eq!(d.app.all_failures()[0].refused, 3);
}

#[test]
fn history_is_sampled_once_per_second_of_event_time() {
    let d = dashboard(12_000);
    let s = d
        .app
        .series(fixture::NETNS, 7100)
        .expect("7100 has TIME_WAIT history");
    // The TIME_WAIT appeared at 0.9 s: samples from second 1 to 12.
    assert_eq!(s.tw.len(), 12);
    assert!(s.tw.iter().all(|&n| n == 1));
    let cw = d.app.series(fixture::NETNS, 7400).unwrap();
    assert_eq!(cw.cw.iter().copied().max(), Some(2));
    assert_eq!(cw.cw.front(), Some(&1));
}

// --- the loop -------------------------------------------------------------

/// An endless flood of state events.
struct Flood {
    n: u64,
}

impl EventSource for Flood {
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, _: Duration) -> Poll {
        for _ in 0..max {
            self.n += 1;
            let port = 1024 + (self.n % 30_000) as u16;
            out.push(ev(
                self.n / 1000,
                None,
                state(
                    &format!("127.0.0.1:{port}"),
                    "127.0.0.1:80",
                    TcpState::SynSent,
                    TcpState::Close,
                    self.n,
                ),
            ));
        }
        Poll::Ready
    }
    fn status(&self) -> SourceStatus {
        SourceStatus {
            mode: "flood".into(),
            ..SourceStatus::default()
        }
    }
}

/// Keys at given times after the start.
struct Script {
    start: Instant,
    keys: VecDeque<(Duration, KeyCode)>,
}

impl Input for Script {
    fn next(&mut self, wait: Duration) -> std::io::Result<Option<TermEvent>> {
        let due = self.keys.front().map(|(t, _)| self.start + *t);
        match due {
            Some(d) if Instant::now() >= d => {
                let (_, k) = self.keys.pop_front().unwrap();
                Ok(Some(TermEvent::Key(KeyEvent::new(k, KeyModifiers::NONE))))
            }
            Some(d) => {
                std::thread::sleep(wait.min(d - Instant::now()));
                Ok(None)
            }
            None => {
                std::thread::sleep(wait);
                Ok(None)
            }
        }
    }
}

#[test]
fn under_a_flood_frames_stay_bounded_and_keys_are_prompt() {
    let mut term = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let mut d = Dashboard::default();
    let mut src = Flood { n: 0 };
    let mut keys: VecDeque<(Duration, KeyCode)> = (1..=20)
        .map(|i| (Duration::from_millis(100 * i), KeyCode::Tab))
        .collect();
    keys.push_back((Duration::from_millis(2500), KeyCode::Char('q')));
    let mut input = Script {
        start: Instant::now(),
        keys,
    };
    let t = Instant::now();
    let stats = run(
        &mut term,
        &mut src,
        &mut d,
        &mut input,
        &RunOptions::default(),
    )
    .unwrap();
    let took = t.elapsed();
    eprintln!(
        "flood: {} events in {:?} ({:.0}/s), {} frames ({:.1} fps), longest frame {:?}, key to frame mean {:?} max {:?}",
        stats.events,
        took,
        stats.events as f64 / took.as_secs_f64(),
        stats.frames,
        stats.fps(),
        stats.max_draw,
        stats.mean_key_to_frame(),
        stats.max_key_to_frame
    );
    assert!(took < Duration::from_secs(4), "q was seen late: {took:?}");
    assert!(stats.events > 10_000, "events flowed: {}", stats.events);
    assert_eq!(stats.keys, 21);
    // 10 frames a second, plus at most one extra per key.
    let bound = 10.0 * stats.elapsed.as_secs_f64() + stats.keys as f64 + 2.0;
    assert!(
        (stats.frames as f64) <= bound,
        "{} frames in {:?}",
        stats.frames,
        stats.elapsed
    );
    assert!(
        stats.max_key_to_frame < Duration::from_millis(400),
        "a key waited {:?} for its frame",
        stats.max_key_to_frame
    );
}

#[test]
fn history_outlives_the_sockets_for_three_minutes() {
    let mut d = dashboard(12_000);
    // The TIME_WAIT on 7100 expires at 60.9 s; its history stays.
    d.feed(ev(
        61_000,
        None,
        monitor::event::Kind::TimewaitClose(monitor::event::TimewaitClose {
            local: fixture::ep("127.0.0.1:7100"),
            remote: fixture::ep("127.0.0.1:40000"),
            reason: monitor::event::TimewaitEnd::Expired,
            cookie: 2,
            ended_by: None,
            end_mismatch: None,
        }),
    ));
    for s in 62..150u64 {
        d.tick(Some(fixture::at(s * 1000)), s * 1000);
    }
    let s = d.app.series(fixture::NETNS, 7100).expect("history kept");
    assert_eq!(s.tw.iter().copied().max(), Some(1));
    assert_eq!(s.tw.back(), Some(&0));
    for s in 150..400u64 {
        d.tick(Some(fixture::at(s * 1000)), s * 1000);
    }
    assert!(
        d.app.series(fixture::NETNS, 7100).is_none(),
        "forgotten after 3 min idle"
    );
}
