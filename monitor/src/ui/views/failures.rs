//! Bind failures, newest first.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::event::DiagnosisCode;
use crate::ui::app::App;
use crate::ui::format::{fit, hms, who_fit};
use crate::ui::rows;
use crate::ui::theme::Theme;

/// A few words for a diagnosis code, for narrow columns.
pub(crate) fn short_why(code: DiagnosisCode) -> &'static str {
    use DiagnosisCode::*;
    match code {
        Listener => "LISTEN holder",
        CloseWait => "CLOSE_WAIT leak",
        Established => "old connections",
        Bound => "bound socket",
        TimeWait => "TIME_WAIT",
        ReuseportMismatch => "REUSEPORT rules",
        EphemeralExhausted => "ports exhausted",
        PrivilegedPort => "privileged port",
        AddressNotLocal => "not local addr",
        AlreadyBound => "already bound",
        InvalidAddress => "invalid address",
        Unknown => "unexplained",
    }
}

pub(super) fn render(f: &mut Frame, area: Rect, app: &App, theme: &Theme, focused: bool) {
    let vis = rows::failures(app);
    let total = app.all_failures().len();
    let sel = app.selected_failure_index(&vis);
    let mut title = vec![Span::styled(" Bind failures ", theme.bold())];
    if total > 0 {
        let count = if vis.len() == total {
            format!("{total} ")
        } else {
            format!("{} of {total} ", vis.len())
        };
        title.push(Span::raw(count));
        if !vis.is_empty() {
            let pos = if app.follows_newest() {
                "· newest first ".to_string()
            } else {
                format!("· {}/{} ", sel + 1, vis.len())
            };
            title.push(Span::styled(pos, theme.dim()));
        }
    }
    let block = super::block(Line::from(title), focused, theme);
    let inner = block.inner(area);
    if vis.is_empty() {
        f.render_widget(block, area);
        let text = if total == 0 {
            "no failed bind(), listen() or connect() yet"
        } else {
            "no failure matches the filter"
        };
        super::empty(f, inner, text, theme);
        return;
    }
    let w = inner.width.saturating_sub(2) as usize; // highlight symbol
    let wide = w >= 100;
    // time, process, [call], requested, error, why
    let (pw, rw, ew) = if wide { (20, 24, 13) } else { (17, 21, 10) };
    let cw = if wide { 11 } else { 0 };
    let fixed = 8 + pw + rw + ew + cw + if wide { 5 } else { 4 };
    let why_w = w.saturating_sub(fixed).max(8);
    let rows_: Vec<Row> = vis
        .iter()
        .map(|fr| {
            let b = fr.bind();
            let c = &fr.event.common;
            let why = match &b.diagnosis {
                Some(d) if wide => d.summary.clone(),
                // Too narrow for the sentence: the detail has it.
                Some(d) if why_w < 28 => short_why(d.code).to_string(),
                Some(d) => format!("{}: {}", short_why(d.code), d.summary),
                None => "-".into(),
            };
            let mut cells = vec![
                Cell::from(hms(&c.ts).to_string()),
                Cell::from(who_fit(c.pid, c.comm.as_deref(), pw)),
            ];
            if wide {
                cells.push(Cell::from(format!(
                    "{} {}",
                    c.proto.as_str(),
                    b.syscall.as_str()
                )));
            }
            cells.push(Cell::from(fit(&b.requested.to_string(), rw)));
            cells.push(Cell::from(Span::styled(fit(&b.error, ew), theme.bad())));
            cells.push(Cell::from(fit(&why, why_w)));
            let row = Row::new(cells);
            if app.is_new(fr) {
                row.style(theme.fresh())
            } else {
                row
            }
        })
        .collect();
    let mut widths = vec![Constraint::Length(8), Constraint::Length(pw as u16)];
    if wide {
        widths.push(Constraint::Length(cw as u16));
    }
    widths.extend([
        Constraint::Length(rw as u16),
        Constraint::Length(ew as u16),
        Constraint::Min(8),
    ]);
    let mut header = vec!["time", "process"];
    if wide {
        header.push("call");
    }
    header.extend(["requested", "error", "why"]);
    super::selectable_table(
        f,
        area,
        Table::new(rows_, widths),
        Row::new(header).style(theme.header()),
        block,
        theme.selected(),
        sel,
    );
}
