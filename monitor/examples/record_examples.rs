//! Regenerates the example traces under `examples/traces/` by recording
//! field scenarios with the real `twmon record` while the scenario library
//! plays them in a private network namespace (root, eBPF):
//!
//!     cargo build -p monitor && cargo run -p monitor --example record_examples
//!
//! Arguments: scenario numbers (default 1 3 4 8); `--out DIR` (default
//! examples/traces of the repository); `--twmon PATH` (default the twmon
//! next to this example's binary). Each trace is named
//! `NN-scenario-name.trace` (`.trace.zst` when larger than 64 KiB), and its
//! report is checked to name every failure the scenario made.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitor::scenario::{self, Netns, Options, Recorder};

fn main() {
    let mut ids: Vec<u8> = Vec::new();
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/traces");
    let mut twmon = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("twmon")))
        .unwrap_or_else(|| PathBuf::from("twmon"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--twmon" => twmon = PathBuf::from(args.next().expect("--twmon PATH")),
            n => ids.push(n.parse().expect("a scenario number")),
        }
    }
    if ids.is_empty() {
        ids = vec![1, 3, 4, 8];
    }
    std::fs::create_dir_all(&out).expect("create the output directory");
    for id in ids {
        match record(id, &out, &twmon) {
            Ok(p) => println!("wrote {}", p.display()),
            Err(e) => {
                eprintln!("scenario {id}: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn record(id: u8, out: &Path, twmon: &Path) -> Result<PathBuf, String> {
    let sc = scenario::by_id(id).ok_or("no such scenario")?;
    let ns = Netns::new().map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let tmp = out.join(format!(".{:02}-{}.trace", sc.id, sc.name));
    let _ = std::fs::remove_file(&tmp);
    let mut child = Command::new(twmon)
        .args(["record", "--force", "-o"])
        .arg(&tmp)
        .args(["--netns", &ns.inode().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", twmon.display()))?;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.wait();
            return Err("twmon record exited before it was ready".into());
        }
        if line.starts_with(monitor::cmd_record::READY_PREFIX) {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("twmon record did not get ready".into());
        }
    }
    std::thread::spawn(move || for _ in err.lines() {});
    let outcome = sc
        .run(&ns, Recorder::new(&ns, Options::default()))
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("twmon record: {st}"));
    }
    drop(ns);
    // Check: every failure of the scenario is in the report.
    let report = monitor::report::build(&tmp, false).map_err(|e| e.to_string())?;
    for a in outcome.failures() {
        if !report
            .failures
            .iter()
            .any(|g| g.requested == a.requested && g.syscall == a.syscall)
        {
            return Err(format!(
                "the trace lacks the failed {}({})",
                a.syscall.as_str(),
                a.requested
            ));
        }
    }
    let size = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    let name = format!("{:02}-{}.trace", sc.id, sc.name);
    let dest = if size > 64 << 10 {
        let z = out.join(format!("{name}.zst"));
        let bytes = std::fs::read(&tmp).map_err(|e| e.to_string())?;
        let packed = zstd::bulk::compress(&bytes, 19).map_err(|e| e.to_string())?;
        std::fs::write(&z, packed).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(out.join(&name));
        z
    } else {
        let p = out.join(&name);
        std::fs::rename(&tmp, &p).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(out.join(format!("{name}.zst")));
        p
    };
    Ok(dest)
}
