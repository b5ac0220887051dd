//! End to end, as a user sees it: `twmon` (no subcommand) in a detached
//! tmux session of 160x45, scenario 1 (restart into TIME_WAIT) played in a
//! private network namespace, the screen read with `tmux capture-pane`.
//! Then `q`: the shell is back, twmon exited 0 and left no program loaded.
//!
//! Needs root, eBPF (twmon built with TWMON_REQUIRE_EBPF=1) and tmux:
//! otherwise it prints a loud SKIPPED and passes, except under CI=true,
//! where it fails.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use monitor::scenario::{self, Netns, Options, Recorder};

const TWMON: &str = env!("CARGO_BIN_EXE_twmon");

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skip loudly (straight to the stderr descriptor: libtest hides a passing
/// test's output), or fail under CI=true.
fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true: failing instead of skipping)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n**********\n*** SKIPPED {test}: {why}\n**********\n"
    );
}

/// Root, eBPF and tmux, or why not.
fn support() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (eBPF and network namespaces)".into());
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        return Err("needs tmux".into());
    }
    let out = Command::new(TWMON)
        .args(["watch", "--port", "1", "--duration", "0.5"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {TWMON}: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(format!(
            "twmon cannot load its eBPF programs here ({}); build with TWMON_REQUIRE_EBPF=1 and run as root",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        _ => panic!(
            "twmon watch failed: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn start(w: u16, h: u16) -> Tmux {
        let t = Tmux {
            socket: format!("twmon-ui-test-{}", std::process::id()),
            session: "ui".into(),
        };
        let out = t.cmd(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            "env",
            "PS1=$ ",
            "TERM=xterm-256color",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t
    }

    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend(keys);
        let out = self.cmd(&args);
        assert!(out.status.success(), "tmux send-keys: {out:?}");
    }

    /// Literal text.
    fn type_text(&self, text: &str) {
        let out = self.cmd(&["send-keys", "-t", &self.session, "-l", text]);
        assert!(out.status.success(), "tmux send-keys -l: {out:?}");
    }

    fn capture(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", &self.session]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Capture until `pred` holds, at most `timeout`; the last capture.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let end = Instant::now() + timeout;
        loop {
            let s = self.capture();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() >= end {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Every program `bpftool -j prog list` shows: (id, name, owner pids; empty
/// when this bpftool cannot tell owners).
fn bpftool_progs() -> Vec<(u64, String, Vec<u64>)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "list"])
        .output()
        .expect("bpftool runs (apt-get install bpftool)");
    assert!(out.status.success(), "bpftool prog list: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["id"].as_u64().unwrap_or(0),
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["pids"]
                            .as_array()
                            .map(|ps| ps.iter().filter_map(|x| x["pid"].as_u64()).collect())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the programs process `pid` holds open (/proc/PID/fdinfo).
fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(id) = l.strip_prefix("prog_id:") {
                    if let Ok(id) = id.trim().parse() {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// twmon_* programs owned by `pid`: by the owners bpftool reports, or by
/// the program ids the process held.
fn twmon_programs(pid: u32, ids: &[u64]) -> Vec<String> {
    bpftool_progs()
        .into_iter()
        .filter(|(id, name, pids)| {
            name.starts_with("twmon_") && (pids.contains(&(pid as u64)) || ids.contains(id))
        })
        .map(|(id, name, _)| format!("{name} (id {id})"))
        .collect()
}

/// Pids and clock times vary from run to run: masked for printing.
fn mask(screen: &str) -> String {
    let mut out = String::with_capacity(screen.len());
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '[' {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            if !digits.is_empty() {
                out.push_str(&"N".repeat(digits.len()));
            }
        }
    }
    out
}

#[test]
fn dashboard_in_tmux_shows_scenario_1_and_quits_cleanly() {
    let test = "dashboard_in_tmux_shows_scenario_1_and_quits_cleanly";
    if let Err(why) = support() {
        skip(test, &why);
        return;
    }
    let pidfile = std::env::temp_dir().join(format!("twmon-ui-test-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pidfile);
    let tmux = Tmux::start(160, 45);
    tmux.wait_for(Duration::from_secs(5), |s| s.contains('$'))
        .expect("a shell prompt");
    // `exec` keeps the pid: the pid file names twmon itself.
    tmux.type_text(&format!(
        "sh -c 'echo $$ > {}; exec {TWMON}'; echo \"twmon-\"\"exited $?\"",
        pidfile.display()
    ));
    tmux.send(&["Enter"]);
    let screen = tmux
        .wait_for(Duration::from_secs(30), |s| {
            s.contains("Bind failures") && s.contains(" LIVE ")
        })
        .unwrap_or_else(|s| panic!("the dashboard did not come up:\n{s}"));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let _ = std::fs::remove_file(&pidfile);
    assert!(
        screen.contains("tracepoint"),
        "the status line names the mode:\n{screen}"
    );
    assert!(
        screen.contains("lost 0"),
        "the status line counts lost events:\n{screen}"
    );
    let ids = prog_ids_of(pid);
    let loaded = twmon_programs(pid, &ids);
    assert!(
        !loaded.is_empty(),
        "bpftool shows no twmon_ program of pid {pid} (it holds programs {ids:?})"
    );

    // Only this test's namespace: other tests may play scenarios meanwhile.
    let ns = Netns::new().expect("a network namespace");
    tmux.type_text(&format!("/{}", ns.inode()));
    tmux.send(&["Enter"]);
    tmux.wait_for(Duration::from_secs(2), |s| {
        s.contains(&format!("filter: {}", ns.inode()))
    })
    .unwrap_or_else(|s| panic!("the filter did not apply:\n{s}"));

    let sc = scenario::by_id(1).unwrap();
    let outcome = sc
        .run(&ns, Recorder::new(&ns, Options::default()))
        .unwrap_or_else(|e| panic!("scenario 1 did not play: {e}"));
    assert_eq!(outcome.failures().count(), 2);
    let played = Instant::now();
    let want = |s: &str| -> bool {
        let fix_ok = s.lines().enumerate().any(|(i, l)| {
            l.contains("Fix  ")
                && s.lines()
                    .skip(i)
                    .take(3)
                    .any(|l| l.contains("SO_REUSEADDR"))
        });
        s.contains("EADDRINUSE")
            && s.contains("127.0.0.1:7100")
            && s.lines()
                .any(|l| l.contains(" TIME_WAIT ") && l.contains("127.0.0.1:7100 → "))
            && fix_ok
    };
    let screen = tmux
        .wait_for(Duration::from_secs(2), want)
        .unwrap_or_else(|s| {
            panic!(
                "within 2 s of scenario 1 the dashboard did not show the failure, the port, the TIME_WAIT holder and a fix with SO_REUSEADDR:\n{}",
                mask(&s)
            )
        });
    let _ = writeln!(
        std::io::stderr(),
        "dashboard {:?} after scenario 1:\n{}",
        played.elapsed(),
        mask(&screen)
    );
    drop(ns);

    // q: the terminal comes back, twmon exits 0, nothing stays loaded.
    tmux.send(&["q"]);
    let screen = tmux
        .wait_for(Duration::from_secs(15), |s| s.contains("twmon-exited"))
        .unwrap_or_else(|s| panic!("twmon did not exit on q:\n{}", mask(&s)));
    assert!(
        screen.contains("twmon-exited 0"),
        "exit status:\n{}",
        mask(&screen)
    );
    assert!(
        !screen.contains("Bind failures") && !screen.contains(" LIVE "),
        "the dashboard is still on the screen:\n{}",
        mask(&screen)
    );
    // The shell draws its prompt just after the exit line: wait for it
    // rather than read the screen of that same instant (a run once caught
    // the moment in between).
    let last_line = |s: &str| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    };
    tmux.wait_for(Duration::from_secs(5), |s| last_line(s).starts_with('$'))
        .unwrap_or_else(|s| panic!("no shell prompt after exit:\n{}", mask(&s)));
    // SAFETY: kill with signal 0 only checks whether the pid exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "twmon {pid} is still running");
    // The kernel frees programs after a grace period: give it a moment.
    let end = Instant::now() + Duration::from_secs(10);
    let mut left = twmon_programs(pid, &ids);
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        left = twmon_programs(pid, &ids);
    }
    assert!(
        left.is_empty(),
        "programs left behind by pid {pid}: {left:?}"
    );
}

#[test]
fn demo_headless_plays_every_scenario_and_explains_every_failure() {
    let test = "demo_headless_plays_every_scenario_and_explains_every_failure";
    if let Err(why) = support() {
        skip(test, &why);
        return;
    }
    let t = Instant::now();
    let out = Command::new(TWMON)
        .args(["demo", "--headless"])
        .stdin(Stdio::null())
        .output()
        .expect("twmon demo --headless runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "twmon demo --headless: {:?}\n{err}\n{text}",
        out.status
    );
    let _ = writeln!(std::io::stderr(), "demo --headless took {:?}", t.elapsed());
    let total = scenario::all().len();
    let mut expected = 0;
    for n in 1..=total {
        assert!(
            text.contains(&format!("== Scenario {n}/{total}: ")),
            "no caption for scenario {n}:\n{text}"
        );
        let played = text
            .lines()
            .find(|l| l.starts_with(&format!("== scenario {n} ")))
            .unwrap_or_else(|| panic!("scenario {n} did not end:\n{text}"));
        if let Some(k) = played
            .split_once(" played (")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|k| k.parse::<usize>().ok())
        {
            expected += k;
        } else {
            assert!(played.contains(" skipped: "), "{played}");
        }
    }
    let failed = text.lines().filter(|l| l.contains("BIND FAILED")).count();
    assert_eq!(
        failed, expected,
        "every expected failure is printed:\n{text}"
    );
    let why = text
        .lines()
        .filter(|l| l.trim_start().starts_with("why: "))
        .count();
    assert_eq!(why, expected, "every failure is explained:\n{text}");
    assert!(
        text.contains(&format!(
            "== demo over: {expected} bind failures seen in netns"
        )),
        "{text}"
    );
}
