//! `twmon report FILE [--json | --markdown]`: a postmortem summary of a
//! trace (see [`crate::report`]).
//!
//! Exit codes: 0 with a report (also a partial one: a trace cut short or
//! damaged is reported up to the damage, with a line saying where it
//! stopped, also on stderr); 2 with one sentence when FILE is no trace
//! (empty, not a trace, a newer version, unreadable).

use std::io::Write;

use crate::cli::ReportArgs;
use crate::report::{self, render_json, render_markdown, render_text};

pub fn run(args: &ReportArgs) -> anyhow::Result<i32> {
    let report = match report::build(&args.file, args.all_parts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    let text = if args.json {
        render_json(&report)
    } else if args.markdown {
        render_markdown(&report)
    } else {
        render_text(&report)
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return Ok(1);
    }
    if let Some(s) = &report.stopped {
        eprintln!("twmon: {s}");
    }
    Ok(0)
}
