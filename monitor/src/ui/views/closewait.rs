//! CLOSE_WAIT by process: who holds how many, and since when. The longest
//! held first: those are the leak suspects.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::model::Model;
use crate::ui::app::App;
use crate::ui::format::{dur_ns, fit, who_fit};
use crate::ui::rows;
use crate::ui::theme::Theme;

pub(super) fn render(
    f: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    focused: bool,
) {
    let rs = rows::close_wait(app, model);
    let total: u32 = rs.iter().map(|r| r.count).sum();
    let title = Line::from(vec![
        Span::styled(" CLOSE_WAIT by process ", theme.bold()),
        Span::raw(if total > 0 {
            format!("{total} ")
        } else {
            String::new()
        }),
        Span::styled("· oldest first ", theme.dim()),
    ]);
    let block = super::block(title, focused, theme);
    let inner = block.inner(area);
    if rs.is_empty() {
        f.render_widget(block, area);
        super::empty(
            f,
            inner,
            "no CLOSE_WAIT socket: nobody leaks connections",
            theme,
        );
        return;
    }
    let w = inner.width.saturating_sub(2) as usize;
    let multi = app.netns_seen().len() > 1 && app.scope.len() != 1;
    let pw = if w >= 60 { 22 } else { 16 };
    let now = app.clock_ns();
    let fixed = pw + 7 + 8 + 3 + if multi { 11 } else { 0 };
    let ports_w = w.saturating_sub(fixed).max(5);
    let any_unknown = rs.iter().any(|r| r.owner.is_none());
    let body: Vec<Row> = rs
        .iter()
        .map(|r| {
            let mut cells = vec![Cell::from(Span::styled(
                who_fit(
                    r.owner.as_ref().map(|o| o.pid),
                    r.owner.as_ref().map(|o| o.comm.as_str()),
                    pw,
                ),
                theme.accent(),
            ))];
            if multi {
                cells.push(Cell::from(Span::styled(r.netns.to_string(), theme.dim())));
            }
            let ports = r
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            cells.push(Cell::from(Span::styled(r.count.to_string(), theme.bad())));
            cells.push(Cell::from(dur_ns(now.saturating_sub(r.oldest_ns))));
            cells.push(Cell::from(fit(&ports, ports_w)));
            Row::new(cells)
        })
        .collect();
    let mut header = vec!["process"];
    let mut widths = vec![Constraint::Length(pw as u16)];
    if multi {
        header.push("netns");
        widths.push(Constraint::Length(10));
    }
    header.extend(["socks", "oldest", "ports"]);
    widths.extend([
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Min(5),
    ]);
    let sel = app.sel_cw.min(rs.len() - 1);
    let mut block = block;
    if any_unknown {
        block = block.title_bottom(Line::styled(
            " ? = owner never seen acting on its socket ",
            theme.dim(),
        ));
    }
    super::selectable_table(
        f,
        area,
        Table::new(body, widths),
        Row::new(header).style(theme.header()),
        block,
        if focused {
            theme.selected()
        } else {
            theme.normal()
        },
        sel,
    );
}
