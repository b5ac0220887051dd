//! Drawing: one frame from the [`App`] and the [`Model`], no state of its
//! own.
//!
//! Wide terminals (at least 120x32) show every pane at once: failures and
//! the selected failure's detail on top, ports and CLOSE_WAIT by process in
//! the middle, the event log below. Smaller ones show a tab bar and the
//! focused pane (failures with the detail under them). The status line is
//! always the last line; the demo's caption, when there is one, the first.

mod closewait;
mod detail;
mod failures;
mod help;
mod log;
mod ports;
mod status;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, HighlightSpacing, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use crate::model::Model;

use super::app::{App, Pane};
use super::rows;
use super::theme::Theme;

/// Where wide layout starts.
pub const WIDE_MIN: (u16, u16) = (120, 32);

/// One frame.
pub fn draw(f: &mut Frame, app: &App, model: &Model) {
    let area = f.area();
    let theme = Theme::new(app.color);
    let banner = banner_lines(app, area.width, &theme);
    let banner_h = (banner.len() as u16).min(area.height.saturating_sub(4));
    let filter_h = u16::from(app.editing.is_some() || !app.filter.is_empty());
    let [top, body, filter, status] = Layout::vertical([
        Constraint::Length(banner_h),
        Constraint::Min(1),
        Constraint::Length(filter_h),
        Constraint::Length(1),
    ])
    .areas(area);
    if banner_h > 0 {
        f.render_widget(Paragraph::new(banner).style(theme.banner()), top);
    }
    let wide = area.width >= WIDE_MIN.0 && area.height >= WIDE_MIN.1;
    if app.zoom {
        pane(f, body, app, model, &theme, app.focus, true);
    } else if wide {
        grid(f, body, app, model, &theme);
    } else {
        tabs(f, body, app, model, &theme);
    }
    if filter_h > 0 {
        status::filter_line(f, filter, app, &theme);
    }
    status::render(f, status, app, model, &theme);
    if app.help {
        help::render(f, area, app, &theme);
    }
}

fn grid(f: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let [top, mid, bottom] = Layout::vertical([
        Constraint::Percentage(42),
        Constraint::Percentage(28),
        Constraint::Min(5),
    ])
    .areas(area);
    let [fl, dl] =
        Layout::horizontal([Constraint::Percentage(52), Constraint::Percentage(48)]).areas(top);
    let [pl, cl] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(mid);
    failures::render(f, fl, app, theme, app.focus == Pane::Failures);
    detail::render(f, dl, app, model, theme, false);
    ports::render(f, pl, app, model, theme, app.focus == Pane::Ports);
    closewait::render(f, cl, app, model, theme, app.focus == Pane::CloseWait);
    log::render(f, bottom, app, theme, app.focus == Pane::Log);
}

fn tabs(f: &mut Frame, area: Rect, app: &App, model: &Model, theme: &Theme) {
    let [bar, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let counts = [
        rows::failures(app).len(),
        rows::ports(app, model).len(),
        rows::close_wait(app, model).len(),
        rows::log(app).len(),
    ];
    let short = ["Failures", "Ports", "CLOSE_WAIT", "Log"];
    let mut spans = Vec::new();
    for (i, p) in Pane::ALL.iter().enumerate() {
        let text = format!(" {} {} {} ", i + 1, short[i], counts[i]);
        let style = if *p == app.focus {
            theme
                .selected()
                .add_modifier(ratatui::style::Modifier::BOLD)
        } else {
            theme.normal()
        };
        spans.push(Span::styled(text, style));
        spans.push(Span::raw(" "));
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let hint = " Tab: next pane";
    if used + hint.len() <= bar.width as usize {
        spans.push(Span::raw(
            " ".repeat(bar.width as usize - used - hint.len()),
        ));
        spans.push(Span::styled(hint, theme.dim()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), bar);
    pane(f, body, app, model, theme, app.focus, false);
}

/// One pane filling `area` (the narrow layout, or zoomed).
fn pane(
    f: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    which: Pane,
    zoom: bool,
) {
    match which {
        Pane::Failures if zoom => detail::render(f, area, app, model, theme, true),
        Pane::Failures => {
            let n = rows::failures(app).len() as u16;
            // The list gets what it needs, up to 40% of the height.
            let list_h = (n + 3).clamp(5, (area.height * 2 / 5).max(5));
            let [l, d] =
                Layout::vertical([Constraint::Length(list_h), Constraint::Min(3)]).areas(area);
            failures::render(f, l, app, theme, true);
            detail::render(f, d, app, model, theme, false);
        }
        Pane::Ports => ports::render(f, area, app, model, theme, true),
        Pane::CloseWait => closewait::render(f, area, app, model, theme, true),
        Pane::Log => log::render(f, area, app, theme, true),
    }
}

/// A table with a header row, drawn with row `sel` marked "▶" and styled
/// `highlight`.
pub(crate) fn selectable_table<'a>(
    f: &mut Frame,
    area: Rect,
    table: Table<'a>,
    header: Row<'a>,
    block: Block<'a>,
    highlight: Style,
    sel: usize,
) {
    let table = table
        .header(header)
        .block(block)
        .row_highlight_style(highlight)
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(Some(sel));
    f.render_stateful_widget(table, area, &mut state);
}

/// A bordered block with a title, focused or not.
pub(crate) fn block<'a>(title: Line<'a>, focused: bool, theme: &Theme) -> Block<'a> {
    Block::bordered()
        .title(title)
        .border_style(theme.border(focused))
}

/// The demo's caption: title and caption wrapped, then the step.
fn banner_lines<'a>(app: &'a App, width: u16, theme: &Theme) -> Vec<Line<'a>> {
    let Some(b) = &app.banner else {
        return Vec::new();
    };
    let w = width as usize;
    let mut lines = Vec::new();
    let head = format!(" {} — ", b.title);
    let wrapped = wrap(
        &b.caption,
        w.saturating_sub(head.chars().count() + 1).max(10),
    );
    let mut first = true;
    let max_lines = if w < 120 { 3 } else { 2 };
    for chunk in wrapped.iter().take(max_lines) {
        if first {
            lines.push(Line::from(vec![
                Span::styled(
                    head.clone(),
                    theme.banner().add_modifier(ratatui::style::Modifier::BOLD),
                ),
                Span::raw(chunk.clone()),
            ]));
            first = false;
        } else {
            lines.push(Line::from(format!(
                "{}{}",
                " ".repeat(head.chars().count()),
                chunk
            )));
        }
    }
    if wrapped.len() > max_lines {
        if let Some(last) = lines.last_mut() {
            let text: String = last.spans.iter().map(|s| s.content.as_ref()).collect();
            *last = Line::from(super::format::fit(&format!("{text} …"), w));
        }
    }
    if first {
        lines.push(Line::styled(head, theme.bold()));
    }
    if let Some(step) = &b.step {
        lines.push(Line::from(super::format::fit(&format!("   ▸ {step}"), w)));
    }
    lines
}

/// Word-wrap `text` to `width` columns (words longer than a line are cut).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let wl = word.chars().count();
        if wl > width {
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            let mut rest: Vec<char> = word.chars().collect();
            while rest.len() > width {
                out.push(rest.drain(..width).collect());
            }
            line = rest.into_iter().collect();
            continue;
        }
        let ll = line.chars().count();
        if ll > 0 && ll + 1 + wl > width {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// A dim line centred vertically in `area` (empty lists).
pub(crate) fn empty(f: &mut Frame, area: Rect, text: &str, theme: &Theme) {
    if area.height == 0 {
        return;
    }
    let y = area.y + area.height.saturating_sub(1) / 2;
    let r = Rect::new(area.x, y, area.width, 1);
    f.render_widget(
        Paragraph::new(Line::styled(text.to_string(), theme.dim()))
            .alignment(ratatui::layout::Alignment::Center),
        r,
    );
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_words_and_cuts_long_ones() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert!(wrap("", 5).is_empty());
    }
}
