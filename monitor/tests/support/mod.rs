//! Shared helpers for the kernel end-to-end tests: run `twmon watch`, wait
//! until its programs are attached, stop it with a signal, and read what it
//! printed as JSON values and typed events.
//!
//! Tests that need root and eBPF call [`kernel_or_skip`] first: without them
//! the test prints a loud SKIPPED banner (straight to the stderr descriptor,
//! which libtest does not capture) and returns, except under `CI=true`,
//! where it fails instead.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monitor::event::Event;
use serde_json::Value;

/// The twmon binary these tests run: the one cargo built for them, or
/// `$TWMON_BIN` when set (`cargo xtask vm-test` copies the test binaries and
/// a static twmon into a QEMU guest, where cargo's path does not exist).
/// A unit value that reads like a path, so `Command::new(TWMON)`,
/// `fs::copy(TWMON, ..)` and `format!("{TWMON}")` all work.
pub static TWMON: TwmonBin = TwmonBin;

#[derive(Clone, Copy, Debug)]
pub struct TwmonBin;

impl TwmonBin {
    pub fn path(&self) -> &'static str {
        static PATH: OnceLock<String> = OnceLock::new();
        PATH.get_or_init(|| match std::env::var("TWMON_BIN") {
            Ok(p) if !p.is_empty() => p,
            _ => env!("CARGO_BIN_EXE_twmon").to_string(),
        })
    }
}

impl AsRef<std::ffi::OsStr> for TwmonBin {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path().as_ref()
    }
}

impl AsRef<std::path::Path> for TwmonBin {
    fn as_ref(&self) -> &std::path::Path {
        self.path().as_ref()
    }
}

impl std::fmt::Display for TwmonBin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}

/// How much slower than native this machine runs: `$TWMON_TEST_TIME_SCALE`
/// (a whole number, default 1). `cargo xtask vm-test` sets it in its QEMU
/// guests, where software emulation makes everything, twmon's start above
/// all, several times slower; the waits of these tests are stretched by it
/// (readiness, stopping, [`Watch::wait_for`], and [`scaled`] bounds).
pub fn time_scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var("TWMON_TEST_TIME_SCALE") {
        Err(_) => 1,
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("TWMON_TEST_TIME_SCALE={v}: expected a whole number >= 1"),
        },
    })
}

/// `d` stretched by [`time_scale`].
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// The hook mode the kernel tests ask twmon for: `$TWMON_TEST_MODE`
/// (tracepoint, precise or auto), passed as `--mode` by [`Watch`]; None
/// (twmon's own default) when unset. The QEMU kernel matrix runs every test
/// once per mode.
pub fn test_mode() -> Option<&'static str> {
    static MODE: OnceLock<Option<String>> = OnceLock::new();
    MODE.get_or_init(|| {
        let m = std::env::var("TWMON_TEST_MODE").ok()?;
        match m.as_str() {
            "" => None,
            "tracepoint" | "precise" | "auto" => Some(m),
            other => panic!("TWMON_TEST_MODE={other}: expected tracepoint, precise or auto"),
        }
    })
    .as_deref()
}

/// `--mode MODE` when [`test_mode`] asks for one, for any twmon command that
/// loads the kernel programs.
pub fn mode_args() -> Vec<&'static str> {
    match test_mode() {
        Some(m) => vec!["--mode", m],
        None => Vec::new(),
    }
}

/// The stderr line twmon prints once its programs are attached.
pub const READY_PREFIX: &str = "twmon: watching (";

/// How long twmon may take to load and attach its programs.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long twmon may take to drain and exit after SIGTERM/SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Write to the stderr descriptor itself: libtest swallows `eprintln!` of a
/// passing test, and a skip must be seen.
pub fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// `play` a field scenario once, and once more (the closure makes a new
/// namespace and a new twmon) when `disturbed` names why its own set-up was
/// disturbed (`ScenarioError::disturbed`: a machine too slow for the
/// kernel's TCP timers), saying so loudly. The second result stands,
/// whatever it is; the flag tells whether there was one.
pub fn again_if_disturbed<T, E>(
    sc: &monitor::scenario::Scenario,
    disturbed: impl Fn(&E) -> Option<String>,
    mut play: impl FnMut() -> Result<T, E>,
) -> (Result<T, E>, bool) {
    match play() {
        Err(e) => match disturbed(&e) {
            Some(why) => {
                loud(&format!(
                    "scenario {} ({}) is played once more: its set-up was disturbed: {why}",
                    sc.id, sc.name
                ));
                (play(), true)
            }
            None => (Err(e), false),
        },
        played => (played, false),
    }
}

/// Skip `test` loudly because of `why`; under CI=true, fail instead.
pub fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true: failing instead of skipping)");
    }
    loud(&format!(
        "\n**********\n*** SKIPPED {test}: {why}\n**********\n"
    ));
}

/// Whether twmon can load its programs here (root and eBPF), found out once
/// per test binary by starting `twmon watch` and waiting for it to attach.
/// `Err` says why not.
fn kernel_support() -> &'static Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        if !is_root() {
            return Err("needs root (to load eBPF programs and create network namespaces)".into());
        }
        match Watch::start(&["--json", "--port", "1"]) {
            Ok(w) => {
                let fin = w.stop(libc::SIGTERM);
                // A failure to stop is a twmon bug, reported by the tests
                // themselves; support is there.
                let _ = fin;
                Ok(())
            }
            Err(NotReady {
                status: Some(st),
                stderr,
                ..
            }) if st.code() == Some(3) => Err(format!(
                "twmon cannot load its eBPF programs here (exit 3: {}); build with \
                 TWMON_REQUIRE_EBPF=1 and run as root",
                stderr.trim()
            )),
            Err(e) => panic!("twmon watch did not start: {e}"),
        }
    })
}

/// True when the test can use the kernel (root + eBPF). Otherwise skips
/// loudly (fails under CI=true) and returns false.
pub fn kernel_or_skip(test: &str) -> bool {
    match kernel_support() {
        Ok(()) => true,
        Err(why) => {
            skip(test, why);
            false
        }
    }
}

/// One line of twmon's stdout: the raw text, the JSON value, and the typed
/// event (every line must be both).
#[derive(Clone, Debug)]
pub struct Record {
    pub line: String,
    pub value: Value,
    pub event: Event,
}

/// Parse one JSON line into a value and an event.
pub fn parse_line(line: &str) -> Result<Record, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    let event: Event = serde_json::from_value(value.clone())
        .map_err(|e| format!("not a twmon event ({e}): {line}"))?;
    Ok(Record {
        line: line.to_string(),
        value,
        event,
    })
}

/// Parse every line; a line that is not an event is a failure.
pub fn parse_lines(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("twmon printed a bad line: {e}")))
        .collect()
}

#[derive(Default)]
struct State {
    stdout: Vec<String>,
    stderr: Vec<String>,
    ready: bool,
    stdout_eof: bool,
    stderr_eof: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running `twmon watch`. Dropping it kills twmon (SIGKILL) if it still
/// runs; [`Watch::stop`] is the orderly way.
pub struct Watch {
    child: Option<Child>,
    pub pid: u32,
    pub args: Vec<String>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    pub started: Instant,
}

/// twmon did not report readiness.
#[derive(Debug)]
pub struct NotReady {
    /// Its exit status when it exited (None: still running at the timeout,
    /// then killed).
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub stdout: String,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(st) => write!(f, "twmon exited ({st}) before attaching")?,
            None => write!(f, "twmon did not attach within {:?}", scaled(READY_TIMEOUT))?,
        }
        write!(f, "; stderr:\n{}", self.stderr)?;
        if !self.stdout.is_empty() {
            write!(f, "\nstdout:\n{}", self.stdout)?;
        }
        Ok(())
    }
}

/// What a stopped twmon left.
#[derive(Debug)]
pub struct Finished {
    /// None when it did not exit within [`STOP_TIMEOUT`] (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// From the signal to its exit.
    pub stop_took: Duration,
}

impl Finished {
    /// Every stdout line, parsed (panics on a line that is no event).
    pub fn records(&self) -> Vec<Record> {
        parse_lines(&self.stdout)
    }

    pub fn events(&self) -> Vec<Event> {
        self.records().into_iter().map(|r| r.event).collect()
    }

    /// It exited by itself with code 0 after the signal.
    pub fn exited_cleanly(&self) -> bool {
        self.status.is_some_and(|s| s.code() == Some(0))
    }

    pub fn describe_exit(&self) -> String {
        match self.status {
            None => format!(
                "did not exit within {:?} of the signal (killed)",
                scaled(STOP_TIMEOUT)
            ),
            Some(st) => format!("{st} after {:?}", self.stop_took),
        }
    }
}

fn reader(
    shared: Arc<Shared>,
    stream: impl Read + Send + 'static,
    is_stderr: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let mut st = shared.lock();
                    if is_stderr {
                        if line.starts_with(READY_PREFIX) {
                            st.ready = true;
                        }
                        st.stderr.push(line);
                    } else {
                        st.stdout.push(line);
                    }
                    drop(st);
                    shared.changed.notify_all();
                }
            }
        }
        let mut st = shared.lock();
        if is_stderr {
            st.stderr_eof = true;
        } else {
            st.stdout_eof = true;
        }
        drop(st);
        shared.changed.notify_all();
    })
}

impl Watch {
    /// Start `twmon watch ARGS` (no readiness wait).
    pub fn spawn(args: &[&str]) -> std::io::Result<Watch> {
        Watch::spawn_env(args, &[])
    }

    /// Start `twmon watch ARGS` with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Watch> {
        // Scenarios may be playing on other threads: the new process must
        // not hold copies of their sockets when they close them.
        let mut child = monitor::scenario::spawn_clean(
            Command::new(TWMON)
                .arg("watch")
                .args(mode_args())
                .args(args)
                .envs(env.iter().copied())
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let shared = Arc::new(Shared::default());
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let readers = vec![
            reader(shared.clone(), out, false),
            reader(shared.clone(), err, true),
        ];
        Ok(Watch {
            pid: child.id(),
            child: Some(child),
            args: args.iter().map(|s| s.to_string()).collect(),
            shared,
            readers,
            started: Instant::now(),
        })
    }

    /// Start `twmon watch ARGS` and wait until it says its programs are
    /// attached.
    pub fn start(args: &[&str]) -> Result<Watch, NotReady> {
        Watch::start_env(args, &[])
    }

    /// [`Watch::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Result<Watch, NotReady> {
        let mut w = Watch::spawn_env(args, env).map_err(|e| NotReady {
            status: None,
            stderr: format!("cannot run {TWMON}: {e}"),
            stdout: String::new(),
        })?;
        w.wait_ready(scaled(READY_TIMEOUT))?;
        Ok(w)
    }

    /// Start, or panic with what twmon said.
    pub fn start_or_panic(args: &[&str]) -> Watch {
        Watch::start(args).unwrap_or_else(|e| panic!("twmon watch {}: {e}", args.join(" ")))
    }

    /// Wait for the readiness line. On failure twmon is gone (killed if it
    /// was still running).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let end = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.ready {
                return Ok(());
            }
            let now = Instant::now();
            if st.stderr_eof || now >= end {
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        // Exited (stderr closed) or too slow.
        let child = self.child.as_mut().expect("child");
        let mut status = None;
        let wait_end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < wait_end {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let st = self.shared.lock();
        Err(NotReady {
            status,
            stderr: st.stderr.join("\n"),
            stdout: st.stdout.join("\n"),
        })
    }

    /// The stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.shared.lock().stdout.clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.shared.lock().stderr.clone()
    }

    /// Wait (at most `timeout`) until an event printed so far satisfies
    /// `pred`; returns it. Lines are parsed as they come (a bad line panics).
    /// The wait is stretched by [`time_scale`].
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let end = Instant::now() + scaled(timeout);
        let mut seen = 0;
        let mut st = self.shared.lock();
        loop {
            for l in &st.stdout[seen..] {
                if l.trim().is_empty() {
                    continue;
                }
                let r = parse_line(l).unwrap_or_else(|e| panic!("twmon printed a bad line: {e}"));
                if pred(&r.event) {
                    return Some(r.event);
                }
            }
            seen = st.stdout.len();
            let now = Instant::now();
            if st.stdout_eof || now >= end {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Send `signal`, wait for the exit (at most [`STOP_TIMEOUT`], then
    /// SIGKILL) and collect everything it printed.
    pub fn stop(mut self, signal: libc::c_int) -> Finished {
        let t = Instant::now();
        let mut child = self.child.take().expect("a running twmon");
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t.elapsed() < scaled(STOP_TIMEOUT) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break None,
            }
        };
        let stop_took = t.elapsed();
        if status.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let st = self.shared.lock();
        Finished {
            status,
            stdout: st.stdout.clone(),
            stderr: st.stderr.clone(),
            stop_took,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// CLOCK_BOOTTIME ns (the clock of the events' `ts_ns`).
pub fn boottime_ns() -> u64 {
    monitor::scenario::boottime_ns()
}

/// The kernel's HZ, from its config, else measured from /proc/timer_list
/// as twmon does (a QEMU guest has no /boot); 250 when unknown.
pub fn kernel_hz() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config =
        std::fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| monitor::probe::sys::kernel_hz().map(u64::from))
        .unwrap_or(250)
}

/// How late the timer wheel may fire a timer armed `delay_ms` ahead: one
/// bucket of the wheel level it lands in (timers are rounded up to the
/// level's granularity: 8^level jiffies, 64 buckets per level).
pub fn timer_wheel_slack_ms(delay_ms: u64) -> u64 {
    let hz = kernel_hz();
    let jiffies = delay_ms * hz / 1000;
    let mut level = 0u32;
    while level < 8 && jiffies >= 64u64 << (3 * level) {
        level += 1;
    }
    let gran_jiffies = 1u64 << (3 * level);
    gran_jiffies * 1000 / hz
}
