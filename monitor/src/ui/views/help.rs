//! `?`: every key.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};
use ratatui::Frame;

use crate::ui::app::App;
use crate::ui::keys::KEYS;
use crate::ui::theme::Theme;

pub(super) fn render(f: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let extra: &[(String, String)] = &app.source_keys;
    let mut lines: Vec<Line> = Vec::new();
    let kw = KEYS
        .iter()
        .map(|(k, _)| k.chars().count())
        .chain(extra.iter().map(|(k, _)| k.chars().count()))
        .max()
        .unwrap_or(8)
        + 2;
    for (k, what) in KEYS
        .iter()
        .map(|(k, w)| (k.to_string(), w.to_string()))
        .chain(extra.iter().cloned())
    {
        lines.push(Line::from(vec![
            Span::styled(format!(" {k:<kw$}"), theme.label()),
            Span::raw(what),
        ]));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        " Countdowns and rates follow the events' clock. Any key closes this.",
        theme.dim(),
    ));
    let width = lines
        .iter()
        .map(|l| l.width())
        .max()
        .unwrap_or(40)
        .saturating_add(3)
        .min(area.width as usize) as u16;
    let height = (lines.len() as u16 + 2).min(area.height);
    let r = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    f.render_widget(Clear, r);
    let block = super::block(Line::styled(" Keys ", theme.bold()), true, theme);
    f.render_widget(Paragraph::new(lines).block(block), r);
}
