//! Ports: socket counts per (netns, port) and the TIME_WAIT / CLOSE_WAIT
//! history of the last minutes.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::model::Model;
use crate::ui::app::{App, HISTORY_SECS};
use crate::ui::format::sparkline;
use crate::ui::rows;
use crate::ui::theme::Theme;

/// A count right-aligned in `w` columns, "·" for none.
/// A count right-aligned in `w` columns; one too wide for them is shown in
/// thousands or millions (24952 in three columns is "25k"), never cut.
fn num(n: u32, w: usize) -> String {
    if n == 0 {
        return format!("{:>w$}", "·");
    }
    let round = |unit: u32| (n as u64 + unit as u64 / 2) / unit as u64;
    let tenths = round(100_000);
    let forms = [
        n.to_string(),
        format!("{}k", round(1_000)),
        // 262,144 in three columns.
        if tenths < 10 {
            format!(".{tenths}M")
        } else {
            format!("{}M", round(1_000_000))
        },
    ];
    let s = forms.iter().find(|s| s.len() <= w).unwrap_or(&forms[2]);
    format!("{s:>w$}")
}

pub(super) fn render(
    f: &mut Frame,
    area: Rect,
    app: &App,
    model: &Model,
    theme: &Theme,
    focused: bool,
) {
    let rs = rows::ports(app, model);
    let title = Line::from(vec![
        Span::styled(" Ports ", theme.bold()),
        Span::raw(format!("{} ", rs.len())),
        Span::styled(format!("· sort: {} (s) ", app.sort.label()), theme.dim()),
    ]);
    let block = super::block(title, focused, theme);
    let inner = block.inner(area);
    if rs.is_empty() {
        f.render_widget(block, area);
        super::empty(f, inner, "no TCP sockets seen yet", theme);
        return;
    }
    let w = inner.width.saturating_sub(2) as usize;
    let multi = app.netns_seen().len() > 1 && app.scope.len() != 1;
    let wide = w >= 90;
    let nsw = if multi { 11 } else { 0 };
    // port, LISTEN, ESTAB, CLOSE_WAIT, TIME_WAIT, failures
    let cols: [usize; 6] = if wide {
        [5, 6, 5, 10, 9, 4]
    } else {
        [5, 3, 3, 3, 3, 4]
    };
    let fixed: usize = cols.iter().sum::<usize>() + nsw + 6 + usize::from(multi);
    let spark_w = (w.saturating_sub(fixed + 1) / 2).clamp(4, HISTORY_SECS);
    let mins = HISTORY_SECS / 60;
    let mut header: Vec<Cell> = Vec::new();
    if multi {
        header.push("netns".into());
    }
    let names: [&str; 6] = if wide {
        ["port", "LISTEN", "ESTAB", "CLOSE_WAIT", "TIME_WAIT", "fail"]
    } else {
        ["port", "LSN", "EST", " CW", " TW", "fail"]
    };
    header.extend(names.iter().enumerate().map(|(i, s)| {
        Cell::from(if i == 0 {
            s.to_string()
        } else {
            format!("{s:>w$}", w = cols[i])
        })
    }));
    header.push(format!("TIME_WAIT, last {mins} min").into());
    header.push(format!("CLOSE_WAIT, last {mins} min").into());

    // Rows for the visible window only, placed as the table would place
    // them (the selection at the bottom once it is past the first screen):
    // a client-first churn leaves tens of thousands of ports, and cells for
    // all of them were most of a frame's time and allocations (heaptrack).
    let sel = app.sel_ports.min(rs.len() - 1);
    let visible = (inner.height as usize).saturating_sub(1).max(1);
    let first = (sel + 1).saturating_sub(visible);
    let shown = &rs[first..rs.len().min(first + visible)];
    let body: Vec<Row> = shown
        .iter()
        .map(|r| {
            let (tw, cw): (Vec<u32>, Vec<u32>) = match app.series(r.netns, r.port) {
                Some(s) => (
                    s.tw.iter().copied().collect(),
                    s.cw.iter().copied().collect(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            let twmax = tw.iter().copied().max().unwrap_or(0);
            let cwmax = cw.iter().copied().max().unwrap_or(0);
            let spark = |v: &[u32], max: u32| -> String {
                let label = if max > 0 {
                    format!(" {max}")
                } else {
                    String::new()
                };
                let sw = spark_w.saturating_sub(label.len()).max(1);
                format!("{}{label}", sparkline(v, sw, max))
            };
            let mut cells: Vec<Cell> = Vec::new();
            if multi {
                cells.push(Cell::from(Span::styled(r.netns.to_string(), theme.dim())));
            }
            cells.push(Cell::from(Span::styled(r.port.to_string(), theme.bold())));
            cells.push(Cell::from(Span::styled(
                num(r.listen, cols[1]),
                theme.good(),
            )));
            cells.push(Cell::from(num(r.established, cols[2])));
            cells.push(Cell::from(Span::styled(
                num(r.close_wait, cols[3]),
                theme.bad(),
            )));
            cells.push(Cell::from(Span::styled(
                num(r.time_wait, cols[4]),
                theme.warn(),
            )));
            cells.push(Cell::from(Span::styled(
                num(r.failures, cols[5]),
                theme.error(),
            )));
            cells.push(Cell::from(Span::styled(spark(&tw, twmax), theme.warn())));
            cells.push(Cell::from(Span::styled(spark(&cw, cwmax), theme.bad())));
            Row::new(cells)
        })
        .collect();
    let mut widths: Vec<Constraint> = Vec::new();
    if multi {
        widths.push(Constraint::Length(nsw as u16));
    }
    widths.extend(cols.iter().map(|c| Constraint::Length(*c as u16)));
    widths.push(Constraint::Length(spark_w as u16));
    widths.push(Constraint::Length(spark_w as u16));
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
        sel - first,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_fit_their_column() {
        for (n, w, shown) in [
            (0, 3, "  ·"),
            (7, 3, "  7"),
            (999, 3, "999"),
            (1_000, 3, " 1k"),
            (24_952, 3, "25k"),
            (24_952, 9, "    24952"),
            (262_144, 3, ".3M"),
            (262_144, 4, "262k"),
            (960_000, 3, " 1M"),
            (1_400_000, 3, " 1M"),
            (1_400_000, 9, "  1400000"),
        ] {
            assert_eq!(super::num(n, w), shown, "{n} in {w} columns");
        }
    }
}
