//! `twmon report` as a user runs it (no root needed): exit codes and one
//! sentence for what is no trace, a partial report for a damaged one, the
//! three formats, the same bytes twice, and the shipped example traces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor::trace::synth;

const TWMON: &str = env!("CARGO_BIN_EXE_twmon");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("twmon-report-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(path: &Path, extra: &[&str]) -> Output {
    Command::new(TWMON)
        .arg("report")
        .arg(path)
        .args(extra)
        .output()
        .expect("run twmon report")
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn what_is_no_trace_is_refused_with_exit_2_and_one_sentence() {
    let d = TempDir::new("refuse");
    let newer = d.file("newer", b"{\"twmon_trace\":99,\"host\":\"x\"}\n{}\n");
    let cases: Vec<(PathBuf, &str)> = vec![
        (d.file("empty", b""), "is empty"),
        (
            d.file("text", b"GET / HTTP/1.1\r\n\r\n"),
            "is not a twmon trace",
        ),
        (
            d.file(
                "random",
                &(0..4000u32)
                    .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
                    .collect::<Vec<_>>(),
            ),
            "is not a twmon trace",
        ),
        (newer, "version 99 trace"),
        (d.0.join("missing"), "cannot open"),
        (d.0.clone(), "is a directory"),
    ];
    for (path, want) in cases {
        for fmt in [&[][..], &["--json"][..], &["--markdown"][..]] {
            let o = report(&path, fmt);
            let err = s(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{}: {err}", path.display());
            assert!(o.stdout.is_empty(), "{}", path.display());
            assert_eq!(err.lines().count(), 1, "one sentence: {err}");
            assert!(
                err.starts_with("twmon: ") && err.contains(want),
                "{}: {err}",
                path.display()
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn a_damaged_trace_is_reported_up_to_the_damage() {
    let d = TempDir::new("damage");
    let mut bytes = synth::trace_bytes(500, 5, 100_000_000);
    // Garble a line in the middle.
    let mid = bytes.len() / 2;
    let start = bytes[..mid].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    bytes[start] = b'%';
    let p = d.file("garbled.trace", &bytes);
    let line = bytes[..start].iter().filter(|&&b| b == b'\n').count() + 1;
    let o = report(&p, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    let out = s(&o.stdout);
    let where_ = format!("stops at line {line} (byte {start})");
    assert!(out.contains(&where_), "{where_}\n{out}");
    assert!(s(&o.stderr).contains(&where_));
    let j: serde_json::Value = serde_json::from_slice(&report(&p, &["--json"]).stdout).unwrap();
    assert_eq!(j["events"]["total"], (line - 2) as u64);
    assert!(j["stopped"].as_str().unwrap().contains(&where_));
}

#[test]
fn the_formats_and_the_same_bytes_twice() {
    let d = TempDir::new("formats");
    let p = d.file("t.trace", &synth::trace_bytes(5000, 9, 20_000_000));
    let z = d.file(
        "t.trace.zst",
        &zstd::bulk::compress(&synth::trace_bytes(5000, 9, 20_000_000), 3).unwrap(),
    );
    for fmt in [&[][..], &["--json"][..], &["--markdown"][..]] {
        let a = report(&p, fmt);
        let b = report(&p, fmt);
        assert_eq!(a.status.code(), Some(0), "{}", s(&a.stderr));
        assert!(a.stderr.is_empty(), "{}", s(&a.stderr));
        assert_eq!(a.stdout, b.stdout, "{fmt:?}: twice, byte for byte");
        // Compression changes nothing but the name and the "zstd" mention.
        let c = report(&z, fmt);
        let plain = s(&a.stdout).replace("t.trace", "T");
        let packed = s(&c.stdout)
            .replace("t.trace.zst", "T")
            .replace("  files     1 part(s), zstd\n", "")
            .replace(",\"compressed\":true", ",\"compressed\":false");
        if fmt.is_empty() || fmt == ["--json"] {
            assert_eq!(plain, packed, "{fmt:?}");
        }
    }
    let j: serde_json::Value = serde_json::from_slice(&report(&p, &["--json"]).stdout).unwrap();
    for k in [
        "trace",
        "range",
        "events",
        "failures",
        "failures_by_diagnosis",
        "time_wait",
        "close_wait",
        "timewait_left_by",
        "close_wait_holders",
        "lost",
        "timeline",
    ] {
        assert!(j.get(k).is_some(), "--json lacks {k}");
    }
    let md = s(&report(&p, &["--markdown"]).stdout);
    assert!(md.starts_with("## twmon report: `"), "{md}");
    assert!(md.contains("| port | side | netns | peak | peak at | entered |"));
}

#[test]
fn the_shipped_example_traces_are_reported() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/traces");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("no {}", dir.display());
    };
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains(".trace") {
            continue;
        }
        n += 1;
        let o = report(&p, &[]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", s(&o.stderr));
        assert!(o.stderr.is_empty(), "{name}: {}", s(&o.stderr));
        let out = s(&o.stdout);
        let id: u8 = name[..2].parse().unwrap();
        let want = match id {
            1 => "diagnosis: time_wait:",
            3 => "diagnosis: established:",
            4 => "diagnosis: close_wait:",
            8 => "diagnosis: ephemeral_exhausted:",
            _ => "Bind failures",
        };
        assert!(out.contains(want), "{name}: {want}\n{out}");
    }
    assert!(n >= 4, "example traces in {}", dir.display());
}
