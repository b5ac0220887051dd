//! The first line of every trace file (contract, "Trace files"):
//! `{"twmon_trace": 1, "host", "kernel", "started", "boot_ns_at_start", ...}`.
//!
//! Only `twmon_trace` is required to read a trace; every other field has a
//! default, and fields this version does not know are kept (`extra`), so a
//! newer twmon of the same trace version can add fields freely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probe::ModeInfo;

/// The trace format this twmon writes and the newest it reads.
pub const TRACE_VERSION: u64 = 1;

/// The header's tag: a line is a header when it is a JSON object with it.
pub const TAG: &str = "twmon_trace";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The format version ([`TRACE_VERSION`]).
    pub twmon_trace: u64,
    #[serde(default)]
    pub host: String,
    /// `uname -r` of the recording machine.
    #[serde(default)]
    pub kernel: String,
    /// When the recording (this part of it) started, RFC 3339 UTC.
    #[serde(default)]
    pub started: String,
    /// CLOCK_BOOTTIME ns at that moment (the clock of the events' `ts_ns`).
    #[serde(default)]
    pub boot_ns_at_start: u64,
    /// The kernel hooks that were live (None when the events did not come
    /// from the probe, e.g. a synthetic trace).
    #[serde(default)]
    pub mode: Option<ModeInfo>,
    #[serde(default)]
    pub twmon_version: String,
    // Extras beyond the contract's list.
    /// Names one recording across its rotated parts.
    #[serde(default)]
    pub recording: String,
    /// 0 for FILE, n for FILE.n (rotation).
    #[serde(default)]
    pub part: u32,
    /// The file name of the part before this one (rotation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// What the recorder kept (empty lists: everything).
    #[serde(default)]
    pub filters: TraceFilters,
    /// The sockets that existed when this part started: where they come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// Fields of a newer twmon (same trace version), kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The recorder's `--port/--pid/--comm/--netns`, as written into the header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceFilters {
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub pids: Vec<u32>,
    #[serde(default)]
    pub comms: Vec<String>,
    #[serde(default)]
    pub netns: Vec<u32>,
}

impl TraceFilters {
    pub fn from_cli(f: &crate::cli::Filters) -> TraceFilters {
        TraceFilters {
            ports: f.ports.clone(),
            pids: f.pids.clone(),
            comms: f.comms.clone(),
            netns: f.netns.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.pids.is_empty()
            && self.comms.is_empty()
            && self.netns.is_empty()
    }
}

/// Where the `socket` events at the start of a part come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// "sock_diag" (a snapshot of the namespaces below, taken at start) or
    /// "carried_over" (the recorder's model, at a rotation).
    pub source: String,
    /// The namespaces it covers (inodes).
    #[serde(default)]
    pub netns: Vec<u32>,
    /// How many `socket` events follow the header for it.
    #[serde(default)]
    pub sockets: u64,
    /// What could not be seen, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Header {
    /// A header for a recording starting now on this machine.
    pub fn now(mode: Option<ModeInfo>) -> Header {
        let boot = crate::probe::sys::boottime_ns();
        let unix = crate::probe::sys::boot_to_unix_offset_ns() + boot as i128;
        let host = hostname();
        Header {
            twmon_trace: TRACE_VERSION,
            recording: format!("{host}-{}-{boot}", std::process::id()),
            host,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            started: crate::probe::enrich::rfc3339(unix),
            boot_ns_at_start: boot,
            mode,
            twmon_version: env!("CARGO_PKG_VERSION").to_string(),
            part: 0,
            previous: None,
            filters: TraceFilters::default(),
            snapshot: None,
            extra: BTreeMap::new(),
        }
    }

    /// The header line, without its newline.
    pub fn to_line(&self) -> String {
        // A struct of strings, numbers and maps of JSON values: cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"{TAG}\":{TRACE_VERSION}}}"))
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname NUL-terminates
    // when the name fits.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let s = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !s.is_empty() {
            return s;
        }
    }
    read_trimmed("/proc/sys/kernel/hostname")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_keeps_unknown_fields() {
        let line = r#"{"twmon_trace":1,"host":"h","kernel":"6.18.0","started":"2026-01-01T00:00:00.000000000Z","boot_ns_at_start":5,"twmon_version":"9.9.9","shiny_new_field":{"a":1}}"#;
        let h: Header = serde_json::from_str(line).unwrap();
        assert_eq!(h.twmon_trace, 1);
        assert_eq!(h.host, "h");
        assert_eq!(h.extra["shiny_new_field"]["a"], 1);
        let back: Header = serde_json::from_str(&h.to_line()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn only_the_version_is_required() {
        let h: Header = serde_json::from_str(r#"{"twmon_trace":1}"#).unwrap();
        assert_eq!(h.part, 0);
        assert!(h.mode.is_none());
    }

    #[test]
    fn now_fills_the_contract_fields() {
        let h = Header::now(None);
        let v: serde_json::Value = serde_json::from_str(&h.to_line()).unwrap();
        for k in [
            "twmon_trace",
            "host",
            "kernel",
            "started",
            "boot_ns_at_start",
            "mode",
            "twmon_version",
        ] {
            assert!(v.get(k).is_some(), "header lacks {k}: {v}");
        }
        assert!(
            h.started.ends_with('Z') && h.started.len() == 30,
            "{}",
            h.started
        );
    }
}
