//! The status line (mode and hooks, events/s, lost, netns scope,
//! recording, pause) and the filter line.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::model::Model;
use crate::ui::app::App;
use crate::ui::format::fit;
use crate::ui::rows;
use crate::ui::source::Recording;
use crate::ui::theme::Theme;

pub(super) fn render(f: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let w = area.width as usize;
    let mode = format!(" {} ", app.source.mode.to_uppercase());
    let mode_w = mode.chars().count();
    // The full form when it fits, else a compact one; the hooks get what
    // is left (their short form, or nothing), counters are never dropped.
    let mut right = counters(app, model, theme, false);
    let width = |v: &[Span]| -> usize { v.iter().map(|s| s.width()).sum() };
    if width(&right) + mode_w + 12 > w {
        right = counters(app, model, theme, true);
    }
    let right_w = width(&right);
    let room = w.saturating_sub(right_w + mode_w + 1);
    let s = &app.source;
    let detail = match app.message() {
        Some(m) => fit(m, room),
        None if s.detail.chars().count() <= room => s.detail.clone(),
        None if short_detail(&s.detail).chars().count() <= room => short_detail(&s.detail),
        None => String::new(),
    };
    let detail = if detail.is_empty() {
        detail
    } else {
        format!(" {detail}")
    };
    let pad = w.saturating_sub(right_w + mode_w + detail.chars().count());
    let mut spans = vec![
        Span::styled(mode, theme.status_alert()),
        Span::styled(detail, theme.status()),
        Span::styled(" ".repeat(pad), theme.status()),
    ];
    spans.extend(right);
    f.render_widget(
        Paragraph::new(Line::from(spans)).style(theme.status()),
        area,
    );
}

/// events/s, lost, skipped, netns, recording, pause, help: full or compact.
fn counters<'a>(app: &App, model: &Model, theme: &Theme, compact: bool) -> Vec<Span<'a>> {
    let s = &app.source;
    let sep = || Span::styled(if compact { "│" } else { " │ " }, theme.status());
    let mut right: Vec<Span> = Vec::new();
    if let Some(pos) = &s.position {
        right.push(Span::styled(pos.clone(), theme.status()));
        right.push(sep());
    }
    if let Some(speed) = s.speed {
        right.push(Span::styled(
            if speed == 0.0 {
                "max speed".to_string()
            } else {
                format!("{speed}x")
            },
            theme.status(),
        ));
        right.push(sep());
    }
    right.push(Span::styled(
        format!("{} ev/s", app.events_per_sec()),
        theme.status(),
    ));
    right.push(sep());
    let lost = model.lost + app.lost_queued;
    right.push(Span::styled(
        format!("lost {lost}"),
        if lost > 0 {
            theme.status_alert()
        } else {
            theme.status()
        },
    ));
    if app.skipped > 0 {
        right.push(sep());
        right.push(Span::styled(
            if compact {
                format!("skipped {}", app.skipped)
            } else {
                format!("skipped {} while paused", app.skipped)
            },
            theme.status_alert(),
        ));
    }
    right.push(sep());
    let scope = match app.scope.as_slice() {
        [] => {
            let n = app.netns_seen().len();
            if n > 1 && !compact {
                format!("netns all ({n})")
            } else {
                "netns all".into()
            }
        }
        [one] => format!("netns {one}"),
        many => format!("{} netns", many.len()),
    };
    right.push(Span::styled(scope, theme.status()));
    right.push(sep());
    let rec = match &s.recording {
        Recording::Off => Span::styled("rec off", theme.status()),
        Recording::On(path) => Span::styled(
            if compact {
                "● REC".to_string()
            } else {
                format!("● REC {}", fit(path, 32))
            },
            theme.status_alert(),
        ),
        Recording::Unavailable(_) => Span::styled(
            if compact {
                "rec n/a"
            } else {
                "recording not available"
            },
            theme.status(),
        ),
    };
    right.push(rec);
    right.push(sep());
    if app.paused {
        let q = match (app.queued, compact) {
            (0, _) => String::new(),
            (n, true) => format!(" +{n}"),
            (n, false) => format!(" ({n} queued)"),
        };
        right.push(Span::styled(format!("⏸ PAUSED{q}"), theme.status_alert()));
    } else if s.ended {
        right.push(Span::styled(
            if compact { "■" } else { "■ ended" },
            theme.status(),
        ));
    } else {
        right.push(Span::styled(
            if compact { "▶" } else { "▶ running" },
            theme.status(),
        ));
    }
    right.push(Span::styled(
        if compact {
            "│? help "
        } else {
            " │ ? help  q quit "
        },
        theme.status(),
    ));
    right
}

/// "tracepoint: a, b, c" -> "tracepoint (3 hooks)"; what follows the
/// hooks after " · " (the light mode's remark) is left out, and not
/// counted. Hooks folded as "x_{a,b}" count one per name inside.
fn short_detail(d: &str) -> String {
    let Some((mode, rest)) = d.split_once(": ") else {
        return d.to_string();
    };
    let hooks = rest.split(" · ").next().unwrap_or(rest);
    if !hooks.contains(',') && hooks.len() == rest.len() {
        return d.to_string();
    }
    let n = hooks.split(',').count();
    format!("{mode} ({n} hook{})", if n == 1 { "" } else { "s" })
}

pub(super) fn filter_line(f: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let line = match &app.editing {
        Some((text, _)) => Line::from(vec![
            Span::styled(" / ", theme.label()),
            Span::raw(text.clone()),
            Span::styled("█", theme.normal()),
            Span::styled(
                "   port, pid, process, address or netns · Enter: keep · Esc: cancel",
                theme.dim(),
            ),
        ]),
        None => {
            let shown = rows::failures(app).len();
            let total = app.all_failures().len();
            Line::from(vec![
                Span::styled(" filter: ", theme.label()),
                Span::styled(app.filter.text().to_string(), theme.bold()),
                Span::styled(
                    format!("   {shown} of {total} failures · / edit · Esc clear"),
                    theme.dim(),
                ),
            ])
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

#[cfg(test)]
mod tests {
    use super::short_detail;

    #[test]
    fn the_short_detail_counts_hooks_not_remarks() {
        for (detail, short) in [
            (
                "tracepoint: sys_exit_{bind,listen,connect}, inet_sock_set_state, timer_{start,expire_entry,cancel}",
                "tracepoint (7 hooks)",
            ),
            (
                "tracepoint: sys_exit_{bind,listen,connect} · light: sockets listed every 1 s, no transitions (--full)",
                "tracepoint (3 hooks)",
            ),
            (
                "tracepoint: sys_exit · light: sockets listed every 1 s, no transitions (--full)",
                "tracepoint (1 hook)",
            ),
            ("replay of a.trace", "replay of a.trace"),
            ("trace: a.trace", "trace: a.trace"),
        ] {
            assert_eq!(short_detail(detail), short, "{detail}");
        }
    }
}
