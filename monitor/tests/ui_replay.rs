//! `twmon replay` without a terminal and without root: the dashboard over an
//! example trace after `n` (jump to the first bind failure), rendered with
//! TestBackend; a file that is no trace exits 2 with one sentence.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use monitor::cmd_replay::open;
use monitor::ui::app::{App, Dashboard};
use monitor::ui::source::{EventSource, Poll};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const TWMON: &str = env!("CARGO_BIN_EXE_twmon");

fn trace(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/traces")
        .join(name)
}

fn screen(d: &Dashboard, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| monitor::ui::views::draw(f, &d.app, &d.model))
        .unwrap();
    let b = t.backend().buffer();
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn dashboard_after_jumping_to_the_first_failure() {
    let mut src = open(&trace("01-server-restart-time-wait.trace"), 1.0).unwrap();
    // Paused first: the replay holds still, whatever the real clock does.
    // (The dashboard plays on: it only sees what the source hands over.)
    assert!(src.set_paused(true));
    let mut d = Dashboard::new(App::new());
    d.app.source_keys = src.help();
    assert!(src.on_key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::NONE)));
    assert!(!src.take_reset());
    let mut buf = Vec::new();
    while src.poll(&mut buf, 64, Duration::ZERO) == Poll::Ready {
        for e in buf.drain(..) {
            d.feed(e);
        }
    }
    d.tick(src.clock_ns(), 0);
    d.app.source = src.status();
    let s = screen(&d, 160, 48);
    assert!(s.contains("REPLAY"), "{s}");
    assert!(s.contains("EADDRINUSE") || s.contains("7100"), "{s}");
    // The file's path depends on where the tests run: keep its name.
    let s = s.replace(
        &trace("01-server-restart-time-wait.trace")
            .display()
            .to_string(),
        "01-server-restart-time-wait.trace",
    );
    insta::assert_snapshot!("replay_first_failure_160x48", s);
}

#[test]
fn no_trace_exits_2_with_one_sentence() {
    let out = Command::new(TWMON)
        .arg("replay")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a twmon trace"), "{err}");

    let out = Command::new(TWMON)
        .arg("replay")
        .arg("/nonexistent/twmon.trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A good trace, but no terminal.
    let out = Command::new(TWMON)
        .arg("replay")
        .arg(trace("04-close-wait.trace"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
}
