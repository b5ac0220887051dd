//! A [`Report`] as text for a person, as Markdown for an incident document,
//! or as one JSON object. Pure functions of the report: deterministic.

use std::fmt::Write as _;

use super::{FailureGroup, PortPeak, Report, StatePeaks};
use crate::event::Holder;

/// Failure groups shown in text and Markdown (JSON has them all).
pub const SHOWN_FAILURES: usize = 100;
/// Timeline rows shown in text and Markdown.
pub const SHOWN_MINUTES: usize = 240;

/// One JSON object, one line.
pub fn render_json(r: &Report) -> String {
    let mut s = serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// "2026-11-21 23:00:01.123" out of an RFC 3339 stamp.
fn when(ts: &str) -> String {
    match ts.get(..23) {
        Some(t) if t.is_char_boundary(10) && t.as_bytes().get(10) == Some(&b'T') => {
            format!("{} {}", &t[..10], &t[11..])
        }
        _ => ts.to_string(),
    }
}

fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    crate::output::who_or(pid, comm, "unknown")
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{}.{:01} s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m {:02}s", s / 3600, (s / 60) % 60, s % 60),
    }
}

fn holder_line(h: &Holder) -> String {
    let owner = crate::output::holder_owner(h, "owner unknown");
    let mut s = format!("{} {}", h.state, crate::output::holder_local(h));
    if let Some(r) = h.remote {
        let _ = write!(s, " <-> {r}");
    }
    let _ = write!(s, ", {owner}, overlap {}", h.overlap.as_str());
    if let Some(ms) = h.expires_in_ms {
        let _ = write!(s, ", expiring in {}", duration(ms));
    }
    if h.reuseaddr || h.reuseport {
        let mut f = Vec::new();
        if h.reuseaddr {
            f.push("SO_REUSEADDR");
        }
        if h.reuseport {
            f.push("SO_REUSEPORT");
        }
        let _ = write!(s, ", {}", f.join("+"));
    }
    s
}

fn failure_title(g: &FailureGroup) -> String {
    let mut s = format!(
        "{} {} {} {}({}): {}",
        when(&g.first),
        who(g.pid, g.comm.as_deref()),
        g.proto.as_str(),
        g.syscall.as_str(),
        g.requested,
        g.error
    );
    if g.count > 1 {
        let _ = write!(s, ", {} times until {}", g.count, when(&g.last));
    }
    s
}

fn options(g: &FailureGroup) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!(
        "netns {}, uid {}, reuseaddr {}, reuseport {}, v6only {}",
        g.netns,
        g.uid,
        yn(g.reuseaddr),
        yn(g.reuseport),
        yn(g.v6only)
    );
    if let Some(d) = &g.device {
        let _ = write!(s, ", device {d}");
    }
    s
}

fn mode_line(r: &Report) -> String {
    match &r.trace.mode {
        Some(m) => format!("{} mode ({})", m.mode, m.hooks.join(", ")),
        None => "no probe information".into(),
    }
}

fn events_line(r: &Report) -> String {
    let mut s = format!("{}", r.events.total);
    if !r.events.by_type.is_empty() {
        let parts: Vec<String> = r
            .events
            .by_type
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = write!(s, " ({})", parts.join(", "));
    }
    if r.events.skipped > 0 {
        let _ = write!(
            s,
            "; {} lines skipped (sockets carried over into later parts, unknown types)",
            r.events.skipped
        );
    }
    s
}

fn lost_line(r: &Report) -> String {
    if r.lost.total == 0 {
        return "none".into();
    }
    let parts: Vec<String> = r
        .lost
        .by_stream
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "{} events the kernel could not hand over ({}): counts below may be low",
        r.lost.total,
        parts.join(", ")
    )
}

fn range_line(r: &Report) -> String {
    match &r.range {
        Some(g) => format!(
            "{} .. {} UTC ({})",
            when(&g.first),
            when(&g.last),
            duration(g.duration_ms)
        ),
        None => "no events".into(),
    }
}

fn peaks_summary(p: &StatePeaks, name: &str) -> String {
    if p.entered == 0 && p.peak == 0 {
        return format!("no {name}");
    }
    format!(
        "peak {} at once ({}), {} entered, {} at the end",
        p.peak,
        p.peak_at.as_deref().map(when).unwrap_or_default(),
        p.entered,
        p.at_end
    )
}

fn port_rows(ports: &[PortPeak]) -> Vec<[String; 6]> {
    ports
        .iter()
        .map(|p| {
            [
                p.port.to_string(),
                p.side.as_str().to_string(),
                p.netns.to_string(),
                p.peak.to_string(),
                when(&p.peak_at),
                p.entered.to_string(),
            ]
        })
        .collect()
}

const PORT_HEAD: [&str; 6] = ["port", "side", "netns", "peak", "peak at", "entered"];

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(out: &mut String, indent: &str, head: [&str; N], rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for (i, h) in head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = indent.to_string();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                let pad = w[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(head.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn md_table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let esc = |s: &str| s.replace('|', "\\|");
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(N));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| esc(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn left_by_rows(r: &Report) -> Vec<[String; 2]> {
    r.timewait_left_by
        .iter()
        .map(|p| [p.count.to_string(), who(p.pid, p.comm.as_deref())])
        .collect()
}

fn cw_rows(r: &Report) -> Vec<[String; 5]> {
    r.close_wait_holders
        .iter()
        .map(|h| {
            [
                who(h.pid, h.comm.as_deref()),
                h.sockets.to_string(),
                h.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                duration(h.longest_ms),
                h.still_at_end.to_string(),
            ]
        })
        .collect()
}

fn minute_rows(r: &Report) -> Vec<[String; 6]> {
    r.timeline
        .iter()
        .take(SHOWN_MINUTES)
        .map(|m| {
            [
                m.minute.replacen('T', " ", 1),
                m.events.to_string(),
                m.failures.to_string(),
                m.timewait_opened.to_string(),
                m.timewait_closed.to_string(),
                m.lost.to_string(),
            ]
        })
        .collect()
}

const MINUTE_HEAD: [&str; 6] = [
    "minute (UTC)",
    "events",
    "failures",
    "timewait opened",
    "timewait closed",
    "lost",
];

fn diag_line(r: &Report) -> String {
    r.failures_by_diagnosis
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn total_failures(r: &Report) -> u64 {
    r.failures_by_diagnosis.values().sum()
}

/// The report for a person.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.trace;
    let _ = writeln!(o, "twmon report of {}", t.file);
    let _ = writeln!(
        o,
        "  recorded on {} (kernel {}) by twmon {}, {}",
        or_unknown(&t.host),
        or_unknown(&t.kernel),
        or_unknown(&t.twmon_version),
        mode_line(r)
    );
    let _ = writeln!(o, "  started   {}", when(or_unknown(&t.started)));
    let _ = writeln!(o, "  events    {}", range_line(r));
    let _ = writeln!(o, "  count     {}", events_line(r));
    let _ = writeln!(o, "  lost      {}", lost_line(r));
    if t.parts > 1 || t.compressed {
        let _ = writeln!(
            o,
            "  files     {} part(s){}",
            t.parts,
            if t.compressed { ", zstd" } else { "" }
        );
    }
    if !t.filters.is_empty() {
        let _ = writeln!(o, "  filtered  {}", filters_line(r));
    }
    if let Some(s) = &t.snapshot {
        let _ = writeln!(o, "  at start  {}", snapshot_line(s));
    }
    o.push('\n');

    let n = total_failures(r);
    if n == 0 {
        let _ = writeln!(o, "Bind failures: none");
    } else {
        let _ = writeln!(o, "Bind failures: {n} ({})", diag_line(r));
        for g in r.failures.iter().take(SHOWN_FAILURES) {
            let _ = writeln!(o, "  {}", failure_title(g));
            let _ = writeln!(o, "      {}", options(g));
            match &g.diagnosis {
                Some(d) => {
                    let _ = writeln!(o, "      diagnosis: {}: {}", d.code.as_str(), d.summary);
                    let _ = writeln!(o, "      fix: {}", d.fix);
                }
                None => {
                    let _ = writeln!(o, "      diagnosis: none recorded");
                }
            }
            for h in &g.holders {
                let _ = writeln!(o, "      held by {}", holder_line(h));
            }
            if g.holders_omitted > 0 {
                let _ = writeln!(o, "      and {} more holders", g.holders_omitted);
            }
        }
        let hidden = r.failures.len().saturating_sub(SHOWN_FAILURES);
        if hidden > 0 || r.failures_not_listed > 0 {
            let _ = writeln!(
                o,
                "  ... {} more group(s){} (see --json)",
                hidden,
                if r.failures_not_listed > 0 {
                    format!(" and {} failures not grouped", r.failures_not_listed)
                } else {
                    String::new()
                }
            );
        }
    }
    o.push('\n');

    for (title, p) in [("TIME_WAIT", &r.time_wait), ("CLOSE_WAIT", &r.close_wait)] {
        let _ = writeln!(o, "{title}: {}", peaks_summary(p, title));
        if !p.ports.is_empty() {
            table(&mut o, "  ", PORT_HEAD, &port_rows(&p.ports));
        }
        o.push('\n');
    }

    if r.timewait_left_by.is_empty() {
        let _ = writeln!(o, "TIME_WAIT left by: none");
    } else {
        let _ = writeln!(o, "TIME_WAIT left by (who closed first):");
        table(&mut o, "  ", ["count", "process"], &left_by_rows(r));
    }
    o.push('\n');
    if r.close_wait_holders.is_empty() {
        let _ = writeln!(o, "CLOSE_WAIT held by: none");
    } else {
        let _ = writeln!(o, "CLOSE_WAIT held by (never closed what the peer ended):");
        table(
            &mut o,
            "  ",
            ["process", "sockets", "ports", "longest", "still at end"],
            &cw_rows(r),
        );
    }
    o.push('\n');

    if !r.timeline.is_empty() {
        let _ = writeln!(o, "Timeline:");
        table(&mut o, "  ", MINUTE_HEAD, &minute_rows(r));
        if r.timeline.len() > SHOWN_MINUTES {
            let _ = writeln!(
                o,
                "  ... {} more minutes (see --json)",
                r.timeline.len() - SHOWN_MINUTES
            );
        }
        o.push('\n');
    }
    for n in &r.notes {
        let _ = writeln!(o, "Note: {n}");
    }
    if let Some(s) = &r.stopped {
        let _ = writeln!(o, "Stopped early: {s}");
    }
    o
}

/// The report as Markdown, to paste into an incident document.
pub fn render_markdown(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.trace;
    let _ = writeln!(o, "## twmon report: `{}`\n", t.file);
    let rows = vec![
        ["host".to_string(), or_unknown(&t.host).to_string()],
        ["kernel".to_string(), or_unknown(&t.kernel).to_string()],
        [
            "recorded by".to_string(),
            format!("twmon {}, {}", or_unknown(&t.twmon_version), mode_line(r)),
        ],
        ["started".to_string(), when(or_unknown(&t.started))],
        ["events".to_string(), range_line(r)],
        ["count".to_string(), events_line(r)],
        ["lost".to_string(), lost_line(r)],
    ];
    let mut rows = rows;
    if !t.filters.is_empty() {
        rows.push(["filtered".to_string(), filters_line(r)]);
    }
    if let Some(s) = &t.snapshot {
        rows.push(["at start".to_string(), snapshot_line(s)]);
    }
    md_table(&mut o, ["", ""], &rows);

    let n = total_failures(r);
    let _ = writeln!(o, "### Bind failures\n");
    if n == 0 {
        let _ = writeln!(o, "None.\n");
    } else {
        let _ = writeln!(o, "{n} in total: {}.\n", diag_line(r));
        for g in r.failures.iter().take(SHOWN_FAILURES) {
            let _ = writeln!(o, "- **{}**  ", failure_title(g));
            let _ = writeln!(o, "  {}  ", options(g));
            match &g.diagnosis {
                Some(d) => {
                    let _ = writeln!(o, "  Diagnosis `{}`: {}  ", d.code.as_str(), d.summary);
                    let _ = writeln!(o, "  Fix: {}", d.fix);
                }
                None => {
                    let _ = writeln!(o, "  No diagnosis recorded.");
                }
            }
            for h in &g.holders {
                let _ = writeln!(o, "  - held by {}", holder_line(h));
            }
            if g.holders_omitted > 0 {
                let _ = writeln!(o, "  - and {} more holders", g.holders_omitted);
            }
        }
        let hidden = r.failures.len().saturating_sub(SHOWN_FAILURES);
        if hidden > 0 || r.failures_not_listed > 0 {
            let _ = writeln!(
                o,
                "- ... {} more group(s), {} failures not grouped (see `--json`)",
                hidden, r.failures_not_listed
            );
        }
        o.push('\n');
    }
    for (title, p) in [("TIME_WAIT", &r.time_wait), ("CLOSE_WAIT", &r.close_wait)] {
        let _ = writeln!(o, "### {title}\n");
        let _ = writeln!(o, "{}.\n", capitalise(&peaks_summary(p, title)));
        if !p.ports.is_empty() {
            md_table(&mut o, PORT_HEAD, &port_rows(&p.ports));
        }
    }
    let _ = writeln!(o, "### TIME_WAIT left by\n");
    if r.timewait_left_by.is_empty() {
        let _ = writeln!(o, "None.\n");
    } else {
        md_table(&mut o, ["count", "process"], &left_by_rows(r));
    }
    let _ = writeln!(o, "### CLOSE_WAIT held by\n");
    if r.close_wait_holders.is_empty() {
        let _ = writeln!(o, "None.\n");
    } else {
        md_table(
            &mut o,
            ["process", "sockets", "ports", "longest", "still at end"],
            &cw_rows(r),
        );
    }
    if !r.timeline.is_empty() {
        let _ = writeln!(o, "### Timeline\n");
        md_table(&mut o, MINUTE_HEAD, &minute_rows(r));
        if r.timeline.len() > SHOWN_MINUTES {
            let _ = writeln!(
                o,
                "... {} more minutes (see `--json`).\n",
                r.timeline.len() - SHOWN_MINUTES
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "> Note: {n}\n");
    }
    if let Some(s) = &r.stopped {
        let _ = writeln!(o, "> **Stopped early:** {s}\n");
    }
    while o.ends_with("\n\n") {
        o.pop();
    }
    o
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

fn filters_line(r: &Report) -> String {
    let f = &r.trace.filters;
    let mut v = Vec::new();
    let list = |xs: Vec<String>| xs.join(",");
    if !f.ports.is_empty() {
        v.push(format!(
            "port {}",
            list(f.ports.iter().map(|p| p.to_string()).collect())
        ));
    }
    if !f.pids.is_empty() {
        v.push(format!(
            "pid {}",
            list(f.pids.iter().map(|p| p.to_string()).collect())
        ));
    }
    if !f.comms.is_empty() {
        v.push(format!("comm {}", list(f.comms.clone())));
    }
    if !f.netns.is_empty() {
        v.push(format!(
            "netns {}",
            list(f.netns.iter().map(|p| p.to_string()).collect())
        ));
    }
    format!("only {} was recorded", v.join(" and "))
}

fn snapshot_line(s: &crate::trace::SnapshotInfo) -> String {
    let ns: Vec<String> = s.netns.iter().map(|n| n.to_string()).collect();
    let what = if s.source == "carried_over" {
        "carried over from the previous part"
    } else {
        "existed when recording started"
    };
    if ns.is_empty() {
        format!("{} sockets {what}", s.sockets)
    } else {
        format!("{} sockets {what} (netns {})", s.sockets, ns.join(", "))
    }
}
