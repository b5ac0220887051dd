//! The event log: transitions, timewait life, binds and failures, newest at
//! the bottom; follows new events unless scrolled back.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::event::{Event, Kind, TimewaitEnd};
use crate::ui::app::App;
use crate::ui::format::{fit, hms, hms_ms, process, who};
use crate::ui::rows;
use crate::ui::theme::Theme;

pub(super) fn render(f: &mut Frame, area: Rect, app: &App, theme: &Theme, focused: bool) {
    let lines = rows::log(app);
    let h = area.height.saturating_sub(2) as usize;
    let back = app.log_back.min(lines.len().saturating_sub(1));
    let end = lines.len() - back.min(lines.len());
    let start = end.saturating_sub(h);
    let mut title = vec![
        Span::styled(" Event log ", theme.bold()),
        Span::raw(format!("{} ", lines.len())),
    ];
    title.push(Span::styled(
        if back == 0 {
            "· following ".to_string()
        } else {
            format!("· {back} newer below (End: follow) ")
        },
        theme.dim(),
    ));
    let block = super::block(Line::from(title), focused, theme);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if lines.is_empty() {
        super::empty(f, inner, "no event yet", theme);
        return;
    }
    let multi = app.netns_seen().len() > 1 && app.scope.len() != 1;
    let w = inner.width as usize;
    let out: Vec<Line> = lines[start..end]
        .iter()
        .map(|(_, ev)| line(ev, theme, multi && w >= 100, w))
        .collect();
    f.render_widget(Paragraph::new(out), inner);
}

fn line<'a>(ev: &Event, theme: &Theme, multi: bool, width: usize) -> Line<'a> {
    let c = &ev.common;
    let actor = who(c.pid, c.comm.as_deref());
    let (tag, style, text) = match &ev.kind {
        Kind::BindFailed(b) => (
            "FAILED",
            theme.error(),
            format!(
                "{} {} by {actor}: {}{}",
                b.syscall.as_str(),
                b.requested,
                b.error,
                b.diagnosis
                    .as_ref()
                    .map(|d| format!(" ({})", d.code.as_str()))
                    .unwrap_or_default()
            ),
        ),
        Kind::Bound(b) => (
            if b.syscall == crate::event::Syscall::Listen {
                "listen"
            } else {
                "bind"
            },
            theme.good(),
            format!("{} {} by {actor}", c.proto.as_str(), b.local),
        ),
        Kind::State(s) => (
            "state",
            theme.state(s.new),
            format!(
                "{}{}  {} → {}{}",
                s.local,
                if s.remote.port() == 0 {
                    String::new()
                } else {
                    format!(" → {}", s.remote)
                },
                s.old,
                s.new,
                if c.pid.is_some() {
                    format!("  {actor}")
                } else {
                    String::new()
                }
            ),
        ),
        Kind::TimewaitOpen(t) => (
            "tw open",
            theme.warn(),
            format!(
                "{} → {}  {} for {:.0}s, left by {}",
                t.local,
                t.remote,
                t.substate,
                t.expires_in_ms as f64 / 1000.0,
                process(t.left_by.as_ref())
            ),
        ),
        Kind::TimewaitSubstate(t) => (
            "tw",
            theme.warn(),
            format!(
                "{} → {}  now {} for {:.0}s",
                t.local,
                t.remote,
                t.substate,
                t.expires_in_ms as f64 / 1000.0
            ),
        ),
        Kind::TimewaitClose(t) => (
            "tw end",
            theme.dim(),
            format!(
                "{} → {}  {}",
                t.local,
                t.remote,
                match t.reason {
                    TimewaitEnd::Expired => "expired",
                    TimewaitEnd::ReusedByConnect => "reused by a connect()",
                    TimewaitEnd::ReusedBySyn => "reused by an incoming SYN",
                    TimewaitEnd::Reset => "reset",
                    TimewaitEnd::NetnsExit => "namespace gone",
                    TimewaitEnd::Unknown => "ended (reason unknown)",
                }
            ),
        ),
        Kind::Socket(s) => (
            if s.gone { "gone" } else { "seen" },
            theme.dim(),
            format!(
                "{} {} {}{}  {}",
                c.proto.as_str(),
                s.state,
                s.local,
                s.remote.map(|r| format!(" → {r}")).unwrap_or_default(),
                process(s.owner.as_ref())
            ),
        ),
        Kind::Lost(l) => (
            "LOST",
            theme.error(),
            format!(
                "{} events the kernel could not hand over{}",
                l.count,
                l.stream_note()
            ),
        ),
    };
    let mut spans = vec![Span::styled(
        format!(
            "{} ",
            if width >= 100 {
                hms_ms(&c.ts)
            } else {
                hms(&c.ts)
            }
        ),
        theme.dim(),
    )];
    if multi {
        spans.push(Span::styled(format!("{:>10} ", c.netns), theme.dim()));
    }
    spans.push(Span::styled(format!("{tag:<7} "), style));
    let used: usize = spans.iter().map(|s| s.width()).sum();
    spans.push(Span::raw(fit(&text, width.saturating_sub(used))));
    Line::from(spans)
}
