//! The selected failure: what was asked, who holds the port (with a live
//! TIME_WAIT countdown on the model's clock), why, the fix, and how many
//! clients were refused since.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::event::{Holder, Overlap, Proto, Syscall, TcpState};
use crate::model::{Model, Tracked};
use crate::ui::app::{App, FailureRow, REFUSED_WINDOW_NS};
use crate::ui::format::{dur_ms, hms, who};
use crate::ui::theme::Theme;

use super::wrap;

pub(super) fn render(
    f: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    zoomed: bool,
) {
    let sel = app.selected_failure();
    let mut title = vec![Span::styled(" Failure detail ", theme.bold())];
    if zoomed {
        title.push(Span::styled("· Enter/Esc: back ", theme.dim()));
    }
    let block = super::block(Line::from(title), zoomed, theme);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(fr) = sel else {
        super::empty(
            f,
            inner,
            "select a failure to see who holds the port",
            theme,
        );
        return;
    };
    let lines = lines(
        fr,
        app,
        model,
        theme,
        inner.width as usize,
        inner.height as usize,
    );
    let scroll = app.detail_scroll.min(lines.len().saturating_sub(1) as u16);
    f.render_widget(Paragraph::new(lines).scroll((scroll, 0)), inner);
}

/// `label` then `text` word-wrapped with a hanging indent.
fn hanging<'a>(label: &str, text: &str, width: usize, ls: Style, ts: Style) -> Vec<Line<'a>> {
    let indent = label.chars().count();
    let chunks = wrap(text, width.saturating_sub(indent).max(10));
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let head = if i == 0 {
                label.to_string()
            } else {
                " ".repeat(indent)
            };
            Line::from(vec![Span::styled(head, ls), Span::styled(c, ts)])
        })
        .collect()
}

fn flags(reuseaddr: bool, reuseport: bool) -> String {
    match (reuseaddr, reuseport) {
        (false, false) => "no SO_REUSEADDR/PORT".into(),
        (true, false) => "SO_REUSEADDR".into(),
        (false, true) => "SO_REUSEPORT".into(),
        (true, true) => "SO_REUSEADDR+PORT".into(),
    }
}

/// The socket the model has for this holder now, if it still exists.
fn still_there<'m>(model: &'m Model, netns: u32, proto: Proto, h: &Holder) -> Option<&'m Tracked> {
    let ns = model.namespace(netns)?;
    let tw = matches!(h.state, TcpState::TimeWait | TcpState::FinWait2);
    ns.on_port(proto, h.local.port()).find(|t| {
        t.sock.local == h.local.ip()
            && t.sock.remote.map(crate::event::Endpoint::from) == h.remote
            && (t.sock.timewait == tw)
            && (tw || t.sock.state == h.state)
    })
}

fn lines<'a>(
    fr: &FailureRow,
    app: &App,
    model: &Model,
    theme: &Theme,
    width: usize,
    height: usize,
) -> Vec<Line<'a>> {
    let b = fr.bind();
    let c = &fr.event.common;
    let now = app.clock_ns();
    let mut out = Vec::new();
    let mut spacers: Vec<usize> = Vec::new();
    let mut helps_lines = Vec::new();
    let mut helps_at: Option<usize> = None;
    out.push(Line::from(vec![
        Span::styled(format!("{} ", b.error), theme.error()),
        Span::styled(
            format!(
                "{} {} {}",
                c.proto.as_str(),
                b.syscall.as_str(),
                b.requested
            ),
            theme.bold(),
        ),
        Span::raw(format!(" by {}", who(c.pid, c.comm.as_deref()))),
    ]));
    let mut asked = format!(
        "at {} · {} · uid {} · netns {}",
        hms(&c.ts),
        flags(b.reuseaddr, b.reuseport),
        b.uid,
        c.netns
    );
    if b.v6only {
        asked.push_str(" · IPV6_V6ONLY");
    }
    if let Some(d) = &b.device {
        asked.push_str(&format!(" · device {d}"));
    }
    if let Some(l) = b.local {
        if b.syscall != Syscall::Bind {
            asked.push_str(&format!(" · local {l}"));
        }
    }
    out.extend(hanging("", &asked, width, theme.dim(), theme.dim()));

    // Holders.
    let n = b.holders.len() + b.holders_omitted;
    if n == 0 {
        out.push(Line::styled(
            "No socket holds it.".to_string(),
            theme.label(),
        ));
    } else {
        out.push(Line::styled(
            format!("Held by {n} socket{}:", if n == 1 { "" } else { "s" }),
            theme.label(),
        ));
    }
    let show = if width >= 60 { 6 } else { 4 };
    let show = show.min(b.holders.len());
    for h in b.holders.iter().take(show) {
        let now_sock = still_there(model, c.netns, c.proto, h);
        let mut l1 = vec![
            Span::raw(" "),
            Span::styled(format!("{:<11} ", h.state.as_str()), theme.state(h.state)),
            Span::raw(crate::output::holder_local(h)),
        ];
        if let Some(r) = h.remote {
            l1.push(Span::raw(format!(" → {r}")));
        }
        let unknown = if h.state == TcpState::TimeWait {
            "left by ?"
        } else {
            "owner ?"
        };
        let owner = crate::output::holder_owner(h, unknown);
        let mut l2 = vec![Span::raw("   "), Span::styled(owner, theme.accent())];
        let tw = matches!(h.state, TcpState::TimeWait | TcpState::FinWait2);
        let (now_text, now_style) = match now_sock {
            Some(t) if tw => match t.expires_in_ms(now) {
                Some(ms) => (format!("expires in {}", dur_ms(ms)), theme.warn()),
                None => ("still there".to_string(), theme.warn()),
            },
            Some(_) => ("still there".to_string(), theme.warn()),
            None if tw => {
                let left = h.expires_in_ms.map(|ms| {
                    (ms * 1_000_000).saturating_sub(now.saturating_sub(c.ts_ns)) / 1_000_000
                });
                match left {
                    Some(ms) if ms > 0 => (format!("expires in ~{}", dur_ms(ms)), theme.warn()),
                    _ => ("gone now".to_string(), theme.good()),
                }
            }
            None => ("gone now".to_string(), theme.good()),
        };
        l2.push(Span::styled(" · ", theme.dim()));
        l2.push(Span::styled(now_text, now_style));
        let l3 = format!(
            "{} · {}",
            flags(h.reuseaddr, h.reuseport),
            overlap(h.overlap)
        );
        let w1: usize = l1.iter().map(|s| s.width()).sum();
        let w2: usize = l2.iter().map(|s| s.width()).sum();
        if w1 + w2 + l3.len() + 4 <= width {
            l1.push(Span::raw("  "));
            l1.extend(l2.into_iter().skip(1));
            l1.push(Span::styled(format!(" · {l3}"), theme.dim()));
            out.push(Line::from(l1));
        } else if w2 + l3.len() + 3 <= width {
            out.push(Line::from(l1));
            l2.push(Span::styled(format!(" · {l3}"), theme.dim()));
            out.push(Line::from(l2));
        } else {
            out.push(Line::from(l1));
            out.push(Line::from(l2));
            out.push(Line::styled(format!("   {l3}"), theme.dim()));
        }
    }
    if n > show {
        out.push(Line::styled(
            format!("   … and {} more", n - show),
            theme.dim(),
        ));
    }

    // Why and fix.
    if let Some(d) = &b.diagnosis {
        spacers.push(out.len());
        out.push(Line::from(""));
        out.extend(hanging(
            "Why  ",
            &d.summary,
            width,
            theme.label(),
            theme.normal(),
        ));
        out.extend(hanging("Fix  ", &d.fix, width, theme.label(), theme.good()));
        let yn = |b: bool| if b { "yes" } else { "no" };
        let helps = format!(
            "would help: SO_REUSEADDR {}, SO_REUSEPORT {} · code {}",
            yn(d.reuseaddr_would_help),
            yn(d.reuseport_would_help),
            d.code.as_str()
        );
        helps_at = Some(out.len());
        helps_lines = hanging("     ", &helps, width, theme.dim(), theme.dim());
    }

    // Clients refused since.
    if c.proto == Proto::Tcp && b.syscall != Syscall::Connect && b.requested.port() != 0 {
        let window = REFUSED_WINDOW_NS / 1_000_000_000;
        let port = b.requested.port();
        let text = match fr.refused {
            // Refused connects are transitions, which light mode does not
            // stream: "none" would be a claim it cannot make.
            0 if app.source.light => format!(
                "Clients refused on port {port} are not counted in light mode (twmon live --full counts them)."
            ),
            0 => format!("No client refused on port {port} since (watched {window} s)."),
            1 => format!("1 client refused on port {port} since: nothing listens there."),
            k => format!("{k} clients refused on port {port} since: nothing listens there."),
        };
        let style = if fr.refused > 0 {
            theme.error()
        } else {
            theme.dim()
        };
        spacers.push(out.len());
        out.push(Line::from(""));
        out.extend(hanging("", &text, width, style, style));
    }
    // The least needed last: the would-help line, then blank lines go
    // first when the pane is short.
    let mut extra = helps_lines;
    if out.len() + extra.len() > height {
        extra.clear();
    }
    let insert_at = helps_at.unwrap_or(out.len());
    let n_extra = extra.len();
    out.splice(insert_at..insert_at, extra);
    let mut over = out.len().saturating_sub(height);
    for &i in spacers.iter().rev() {
        if over == 0 {
            break;
        }
        let i = if i >= insert_at { i + n_extra } else { i };
        out.remove(i);
        over -= 1;
    }
    out
}

fn overlap(o: Overlap) -> &'static str {
    match o {
        Overlap::Exact => "same address",
        Overlap::Wildcard => "wildcard overlap",
        Overlap::V4mapped => "v4-mapped overlap",
    }
}
