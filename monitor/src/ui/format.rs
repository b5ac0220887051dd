//! Small text helpers shared by the views.

use crate::event::Process;

/// "comm[pid]", "[pid]" or "?".
pub fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    crate::output::who_or(pid, comm, "?")
}

/// [`who`] cut to `width`, shortening the name rather than the pid:
/// "silent-serv…[15118]".
pub fn who_fit(pid: Option<u32>, comm: Option<&str>, width: usize) -> String {
    let full = who(pid, comm);
    if full.chars().count() <= width {
        return full;
    }
    match (pid, comm) {
        (Some(p), Some(c)) => {
            let tail = format!("[{p}]");
            let room = width.saturating_sub(tail.chars().count());
            if room >= 3 {
                format!("{}{tail}", fit(c, room))
            } else {
                fit(&full, width)
            }
        }
        _ => fit(&full, width),
    }
}

pub fn process(p: Option<&Process>) -> String {
    match p {
        Some(p) => who(Some(p.pid), Some(&p.comm)),
        None => "?".into(),
    }
}

/// "HH:MM:SS" out of an RFC 3339 stamp (UTC).
pub fn hms(ts: &str) -> &str {
    ts.get(11..19).unwrap_or("--:--:--")
}

/// "HH:MM:SS.mmm" out of an RFC 3339 stamp (UTC).
pub fn hms_ms(ts: &str) -> &str {
    ts.get(11..23).unwrap_or("--:--:--.---")
}

/// A duration for people: "0.4s", "57s", "3m05s", "2h07m".
pub fn dur_ns(ns: u64) -> String {
    let ms = ns / 1_000_000;
    dur_ms(ms)
}

pub fn dur_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 10_000 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s / 3600) % 24)
    }
}

/// Cut `s` to `width` characters, with "…" when cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A text sparkline of `values` squeezed (max per bucket) into `width`
/// characters, scaled to `max` (at least 1). Zero shows as a space, so an
/// idle port reads as blank, and any non-zero value shows at least ▁.
pub fn sparkline(values: &[u32], width: usize, max: u32) -> String {
    if width == 0 {
        return String::new();
    }
    let max = max.max(1) as u64;
    let n = values.len();
    if n == 0 {
        return " ".repeat(width);
    }
    let mut out = String::with_capacity(width * 3);
    // Right-align: the newest sample is the last character.
    let buckets = width.min(n);
    for _ in buckets..width {
        out.push(' ');
    }
    for b in 0..buckets {
        let lo = b * n / buckets;
        let hi = ((b + 1) * n / buckets).max(lo + 1);
        let v = values[lo..hi.min(n)].iter().copied().max().unwrap_or(0) as u64;
        if v == 0 {
            out.push(' ');
        } else {
            let i = ((v * 8).div_ceil(max)).clamp(1, 8) - 1;
            out.push(BARS[i as usize]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(dur_ms(420), "0.4s");
        assert_eq!(dur_ms(9_999), "9.9s");
        assert_eq!(dur_ms(57_300), "57s");
        assert_eq!(dur_ms(185_000), "3m05s");
        assert_eq!(dur_ms(7_620_000), "2h07m");
    }

    #[test]
    fn sparklines_squeeze_and_scale() {
        assert_eq!(sparkline(&[], 4, 1), "    ");
        assert_eq!(sparkline(&[0, 1, 2, 4], 4, 4), " ▂▄█");
        assert_eq!(sparkline(&[4, 0, 0, 0, 0, 0, 0, 8], 4, 8), "▄  █");
        // fewer samples than width: right-aligned
        assert_eq!(sparkline(&[8], 3, 8), "  █");
    }

    #[test]
    fn who_fit_keeps_the_pid() {
        assert_eq!(
            who_fit(Some(15118), Some("silent-server"), 17),
            "silent-se…[15118]"
        );
        assert_eq!(who_fit(Some(1), Some("nginx"), 17), "nginx[1]");
        assert_eq!(who_fit(None, None, 3), "?");
    }

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abcdef", 0), "");
    }
}
