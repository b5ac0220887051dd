//! How fast `twmon report` reads a large trace, and how much memory it needs.
//! Not part of `cargo test`; run it with the release build:
//!
//!     cargo build --release -p monitor
//!     cargo run --release -p monitor --example report_bench [-- EVENTS]
//!
//! It writes a synthetic trace of EVENTS events (default 1,000,000; see
//! `monitor::trace::synth`) plain and zstd-compressed to a temporary
//! directory, runs the twmon next to this example (`--twmon PATH` to choose)
//! as `twmon report FILE` and `--json` on each, and prints wall time,
//! events per second and the child's peak RSS (getrusage). It also times the
//! reader alone in this process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use monitor::trace::{synth, TraceReader, TraceWriter, WriterOptions};

fn main() {
    let mut n: u64 = 1_000_000;
    let mut twmon = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("twmon")))
        .unwrap_or_else(|| PathBuf::from("twmon"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--twmon" => twmon = PathBuf::from(args.next().expect("--twmon PATH")),
            x => n = x.replace('_', "").parse().expect("EVENTS"),
        }
    }
    let dir = std::env::temp_dir().join(format!("twmon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "twmon report benchmark: {n} synthetic events, {}",
        twmon.display()
    );
    for compress in [false, true] {
        let path = dir.join(if compress {
            "bench.trace.zst"
        } else {
            "bench.trace"
        });
        let t = Instant::now();
        let mut w = TraceWriter::create(
            &path,
            synth::header(),
            WriterOptions {
                compress,
                overwrite: true,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        for e in synth::Synth::new(n, 42, 1_000_000) {
            w.write(&e).unwrap();
        }
        let written = w.finish().unwrap();
        let write_s = t.elapsed().as_secs_f64();
        println!(
            "\n{}: {:.1} MB on disk, written in {:.2} s ({:.0} events/s)",
            path.file_name().unwrap().to_string_lossy(),
            written.bytes as f64 / 1e6,
            write_s,
            n as f64 / write_s
        );
        // The reader alone (parse every line into an event).
        let t = Instant::now();
        let r = TraceReader::open(&path).unwrap();
        let count = r.filter(|e| e.is_ok()).count();
        let s = t.elapsed().as_secs_f64();
        println!(
            "  reader only (in process): {count} events in {s:.2} s = {:.0} events/s",
            count as f64 / s
        );
        for fmt in [&[][..], &["--json"][..]] {
            run(&twmon, &path, fmt, n);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// Reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(twmon: &Path, path: &Path, fmt: &[&str], n: u64) {
    let t = Instant::now();
    let child = Command::new(twmon)
        .arg("report")
        .arg(path)
        .args(fmt)
        .stdout(Stdio::null())
        .spawn()
        .expect("run twmon report");
    // wait4: this child's own rusage (peak RSS).
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our own child's pid, valid pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let s = t.elapsed().as_secs_f64();
    assert!(
        r > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "twmon report failed"
    );
    println!(
        "  twmon report {}: {s:.2} s = {:.0} events/s, peak RSS {:.1} MB",
        if fmt.is_empty() { "(text)" } else { fmt[0] },
        n as f64 / s,
        ru.ru_maxrss as f64 / 1024.0,
    );
}
