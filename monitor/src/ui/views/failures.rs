//! Bind failures, newest first.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::event::{BindFailed, DiagnosisCode};
use crate::ui::app::App;
use crate::ui::format::{fit, hms, who_fit};
use crate::ui::rows;
use crate::ui::theme::Theme;

/// A few words for a failure's diagnosis, for narrow columns.
pub(crate) fn short_why(b: &BindFailed, code: DiagnosisCode) -> &'static str {
    use DiagnosisCode::*;
    // A connect() from its own port: whatever the holder's state, the
    // connection exists already (not "old connections" of a server).
    let own_port =
        crate::diagnose::own_port_connect(b.syscall, b.errno, b.local.map(|l| l.socket_addr()));
    if own_port.is_some() && code != Unknown {
        return "connection in use";
    }
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
                Some(d) if why_w < 28 => short_why(b, d.code).to_string(),
                Some(d) => format!("{}: {}", short_why(b, d.code), d.summary),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(syscall: &str, errno: i32, local: Option<&str>) -> BindFailed {
        let mut v = serde_json::json!({
            "syscall": syscall, "errno": errno, "error": "E", "requested": "127.0.0.1:9000",
            "reuseaddr": true, "reuseport": false, "v6only": false, "uid": 0,
            "holders": [], "diagnosis": null,
        });
        if let Some(l) = local {
            v["local"] = l.into();
        }
        serde_json::from_value(v).unwrap()
    }

    /// A connect() from a port its socket bound is told as the connection
    /// in use, whatever state held it; other failures by their code.
    #[test]
    fn a_connect_from_its_own_port_reads_as_a_connection_in_use() {
        use DiagnosisCode::*;
        let own = failure("connect", libc::EADDRNOTAVAIL, Some("127.0.0.1:40000"));
        assert_eq!(short_why(&own, Established), "connection in use");
        assert_eq!(short_why(&own, TimeWait), "connection in use");
        assert_eq!(short_why(&own, Unknown), "unexplained");
        let search = failure("connect", libc::EADDRNOTAVAIL, None);
        assert_eq!(short_why(&search, EphemeralExhausted), "ports exhausted");
        let bind = failure("bind", libc::EADDRINUSE, None);
        assert_eq!(short_why(&bind, Established), "old connections");
    }
}
