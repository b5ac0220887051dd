//! `twmon serve` under a real Prometheus: the server (Debian's `prometheus`,
//! installed by `cargo xtask setup`) is started on loopback with a config
//! that scrapes twmon every second; field scenarios play in a private network
//! namespace; Prometheus's HTTP API must then return the bind failures with
//! the diagnosis code and port each scenario expects, the CLOSE_WAIT held by
//! the scenario's server while it is held, and the probe mode twmon runs in.
//!
//! Needs root and eBPF, and the prometheus binary: skipped loudly otherwise,
//! failing under CI=true.

mod serve_support;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use monitor::event::{DiagnosisCode, Event, Kind};
use monitor::scenario::{self, Netns, Options, Recorder, Step};
use serde_json::Value;
use serve_support::{bpf_progs_left, bpf_progs_of, free_port, http_get, Serve};
use support::{kernel_or_skip, loud};

fn find_prometheus() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("prometheus"))
        .find(|p| p.is_file())
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of our own; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(bin: &PathBuf, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("twmon-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: twmon\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        Prometheus { child, addr, dir }
    }

    /// GET /api/v1/query?query=Q: the result vector.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (status, body) =
            http_get(self.addr, &path, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Poll `q` until `ok` holds for its result (at most `timeout`).
    fn wait_for(
        &self,
        q: &str,
        timeout: Duration,
        ok: impl Fn(&[Value]) -> bool,
    ) -> (bool, Vec<Value>) {
        wait_until(|q| self.query(q).unwrap_or_default(), q, timeout, ok)
    }
}

/// Poll `q` through `query` until `ok` holds for its result (at most
/// `timeout`); the last result either way.
fn wait_until(
    query: impl Fn(&str) -> Vec<Value>,
    q: &str,
    timeout: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> (bool, Vec<Value>) {
    let end = Instant::now() + timeout;
    loop {
        let r = query(q);
        if ok(&r) {
            return (true, r);
        }
        if Instant::now() >= end {
            return (false, r);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

type Ask = (String, mpsc::Sender<Vec<Value>>);

/// Prometheus's API asked from a thread of the test's own namespace: the
/// scenarios' step hooks run inside the private namespace, where 127.0.0.1
/// is another loopback.
fn asker(prom: Arc<Prometheus>) -> (mpsc::Sender<Ask>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Ask>();
    let t = std::thread::spawn(move || {
        for (q, reply) in rx {
            let _ = reply.send(prom.query(&q).unwrap_or_default());
        }
    });
    (tx, t)
}

fn ask(tx: &mpsc::Sender<Ask>, q: &str) -> Vec<Value> {
    let (rtx, rrx) = mpsc::channel();
    if tx.send((q.to_string(), rtx)).is_err() {
        return Vec::new();
    }
    rrx.recv().unwrap_or_default()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn value(r: &[Value]) -> Option<f64> {
    r.first()?["value"][1].as_str()?.parse().ok()
}

/// A bind_failed JSON line of serve's for attempt `a`.
fn is_failure_of(line: &str, pid: u32, requested: &str) -> bool {
    let Ok(ev) = serde_json::from_str::<Event>(line) else {
        return false;
    };
    matches!(&ev.kind, Kind::BindFailed(b) if b.requested.to_string() == requested)
        && ev.common.pid == Some(pid)
}

#[test]
fn prometheus_gets_the_bind_failures_of_the_field_scenarios() {
    const TEST: &str = "prometheus_gets_the_bind_failures_of_the_field_scenarios";
    if !kernel_or_skip(TEST) {
        return;
    }
    let Some(bin) = find_prometheus() else {
        support::skip(
            TEST,
            "the prometheus binary is not installed (Debian package `prometheus`; `cargo xtask setup` installs it)",
        );
        return;
    };
    let ns = Netns::new().expect("network namespace");
    let inode = ns.inode().to_string();
    let serve =
        Arc::new(Serve::start(&["--json", "--netns", &inode]).unwrap_or_else(|e| panic!("{e}")));
    let progs = bpf_progs_of(serve.pid);
    let prom = Arc::new(Prometheus::start(&bin, serve.addr));
    // Ready once it has scraped twmon.
    let (up, r) = prom.wait_for(r#"up{job="twmon"}"#, Duration::from_secs(30), |r| {
        value(r) == Some(1.0)
    });
    assert!(up, "Prometheus did not scrape twmon serve: up = {r:?}");

    let (asks, asker_thread) = asker(prom.clone());
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    // scenario 1: time_wait; 6: listener (and a UDP `bound`); 4: close_wait.
    let mut expected: BTreeMap<(String, u16), u32> = BTreeMap::new();
    for id in [1u8, 6, 4] {
        let sc = scenario::by_id(id).unwrap();
        let (s, bad, log2) = (serve.clone(), problems.clone(), log.clone());
        let asks = Mutex::new(asks.clone());
        let rec = Recorder::new(&ns, Options::default()).on_step(move |step| {
            let Step::Attempt(a) = step else { return };
            let Some(exp) = &a.expect else { return };
            // Hold each failure (and its holders) until twmon has reported it.
            let requested = a.requested.to_string();
            if s.wait_stdout(Duration::from_secs(5), |l| is_failure_of(l, a.pid, &requested))
                .is_none()
            {
                bad.lock().unwrap().push(format!(
                    "scenario {id}: no bind_failed line from twmon serve --json for {requested} (pid {})",
                    a.pid
                ));
            }
            if exp.code == DiagnosisCode::CloseWait {
                // The server still holds its CLOSE_WAIT socket: the gauges say so.
                let port = a.requested.port();
                let q = format!(r#"twmon_sockets{{state="CLOSE_WAIT",port="{port}"}}"#);
                let asks = asks.lock().unwrap();
                let query = |q: &str| ask(&asks, q);
                let (ok, r) = wait_until(query, &q, Duration::from_secs(15), |r| {
                    value(r).is_some_and(|v| v >= 1.0)
                });
                log2.lock().unwrap().push(format!("{q} -> {}", Value::from(r.clone())));
                if !ok {
                    bad.lock().unwrap().push(format!("{q} never reached 1: {r:?}"));
                }
                let holder = exp.holders.first().and_then(|h| h.pid);
                let q = r#"twmon_close_wait_sockets{comm="cw-server"}"#;
                let (ok, r) = wait_until(query, q, Duration::from_secs(15), |r| {
                    value(r).is_some_and(|v| v >= 1.0)
                        && r[0]["metric"]["pid"].as_str().map(|s| s.parse().ok())
                            == Some(holder)
                });
                log2.lock().unwrap().push(format!("{q} -> {}", Value::from(r.clone())));
                if !ok {
                    bad.lock().unwrap().push(format!(
                        "{q} never showed pid {holder:?} with a CLOSE_WAIT: {r:?}"
                    ));
                }
            }
        });
        let outcome = sc
            .run(&ns, rec)
            .unwrap_or_else(|e| panic!("scenario {id} failed to play: {e}"));
        for a in outcome.failures() {
            let code = a.expect.as_ref().unwrap().code.as_str().to_string();
            *expected.entry((code, a.requested.port())).or_default() += 1;
        }
    }
    assert!(
        expected.keys().any(|(c, _)| c == "time_wait")
            && expected.keys().any(|(c, _)| c == "listener")
            && expected.keys().any(|(c, _)| c == "close_wait"),
        "the scenarios did not produce the failures this test is about: {expected:?}"
    );

    // Every failure, by code and port, as Prometheus has it.
    for ((code, port), n) in &expected {
        let q = format!(r#"sum(twmon_bind_failures_total{{code="{code}",port="{port}"}})"#);
        let (ok, r) = prom.wait_for(&q, Duration::from_secs(20), |r| value(r) == Some(*n as f64));
        log.lock()
            .unwrap()
            .push(format!("{q} -> {}", Value::from(r.clone())));
        if !ok {
            problems
                .lock()
                .unwrap()
                .push(format!("{q}: want {n}, Prometheus says {:?}", value(&r)));
        }
    }
    let all = prom.query("twmon_bind_failures_total").unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("twmon_bind_failures_total -> {}", Value::from(all)));
    // The errno label of the time_wait failures.
    let q = r#"twmon_bind_failures_total{code="time_wait"}"#;
    let r = prom.query(q).unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("{q} -> {}", Value::from(r.clone())));
    if !r
        .iter()
        .all(|s| s["metric"]["errno"] == "EADDRINUSE" && s["metric"]["container"].is_null())
        || r.is_empty()
    {
        problems.lock().unwrap().push(format!(
            "{q}: want errno EADDRINUSE and no container (Prometheus drops empty labels): {r:?}"
        ));
    }
    // The probe mode twmon announced.
    let r = prom.query("twmon_probe_info").unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("twmon_probe_info -> {}", Value::from(r.clone())));
    if !(r.len() == 1
        && r[0]["metric"]["mode"].as_str() == Some(serve.mode.as_str())
        && value(&r) == Some(1.0)
        && !serve.mode.is_empty())
    {
        problems.lock().unwrap().push(format!(
            "twmon_probe_info: want mode {:?}, Prometheus says {r:?}",
            serve.mode
        ));
    }
    let q = r#"twmon_events_total{type="bind_failed"}"#;
    let total: u32 = expected.values().sum();
    let (ok, r) = prom.wait_for(q, Duration::from_secs(10), |r| {
        value(r).is_some_and(|v| v >= total as f64)
    });
    log.lock()
        .unwrap()
        .push(format!("{q} -> {}", Value::from(r.clone())));
    if !ok {
        problems
            .lock()
            .unwrap()
            .push(format!("{q}: want at least {total}: {r:?}"));
    }

    loud(&format!(
        "\n{TEST}: what Prometheus returned:\n  {}\n",
        log.lock().unwrap().join("\n  ")
    ));
    drop(asks);
    asker_thread.join().unwrap();
    drop(Arc::try_unwrap(prom).unwrap_or_else(|_| panic!("a step hook still holds Prometheus")));
    let serve = Arc::try_unwrap(serve).unwrap_or_else(|_| panic!("a step hook still holds twmon"));
    let stopped = serve.stop(libc::SIGTERM);
    assert_eq!(
        stopped.status.and_then(|s| s.code()),
        Some(0),
        "twmon serve did not exit 0 on SIGTERM: {:?}\n{}",
        stopped.status,
        stopped.stderr.join("\n")
    );
    // Only bind failures on stdout.
    for l in &stopped.stdout {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["type"], "bind_failed", "{l}");
    }
    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "\n{}\ntwmon serve printed:\n{}",
        problems.join("\n"),
        stopped.stdout.join("\n")
    );
    // Every program it had loaded is gone with it.
    assert!(!progs.is_empty(), "twmon serve held no BPF program");
    let t = Instant::now();
    let mut left = bpf_progs_left(&progs);
    while left.as_ref().is_some_and(|l| !l.is_empty()) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        left = bpf_progs_left(&progs);
    }
    match left {
        Some(left) => assert!(
            left.is_empty(),
            "programs {left:?} of twmon serve are still loaded"
        ),
        None => loud("bpftool is not there: not checked that the programs went"),
    }
}
