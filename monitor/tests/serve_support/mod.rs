//! Shared by the `twmon serve` tests: start it, wait for its readiness
//! line, read what it printed, stop it with a signal; a plain HTTP/1.0 GET
//! over a TcpStream (the server closes the connection after the answer, so
//! the body is everything after the headers).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const TWMON: &str = env!("CARGO_BIN_EXE_twmon");
pub const READY_PREFIX: &str = "twmon: serving metrics on http://";

/// A port nobody listens on right now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET `path` from `addr` with HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no HTTP answer: {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_string()))?;
    Ok((status, body.to_string()))
}

#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    ready: Option<String>,
    stderr_eof: bool,
}

/// A running `twmon serve`; dropping it kills it.
pub struct Serve {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The probe mode its readiness line names ("tracepoint", ...).
    pub mode: String,
    lines: Arc<(Mutex<Lines>, Condvar)>,
    readers: Vec<JoinHandle<()>>,
}

/// What a stopped twmon serve left.
pub struct Stopped {
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

fn reader(
    lines: Arc<(Mutex<Lines>, Condvar)>,
    stream: impl Read + Send + 'static,
    is_stderr: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let r = BufReader::new(stream);
        for line in r.lines() {
            let Ok(line) = line else { break };
            let mut l = lines.0.lock().unwrap();
            if is_stderr {
                if line.starts_with(READY_PREFIX) && l.ready.is_none() {
                    l.ready = Some(line.clone());
                }
                l.stderr.push(line);
            } else {
                l.stdout.push(line);
            }
            lines.1.notify_all();
        }
        if is_stderr {
            lines.0.lock().unwrap().stderr_eof = true;
            lines.1.notify_all();
        }
    })
}

impl Serve {
    /// `twmon serve --metrics-addr 127.0.0.1:PORT ARGS`, waiting (30 s at
    /// most) for its readiness line. Err: what it said instead.
    pub fn start(args: &[&str]) -> Result<Serve, String> {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(TWMON)
            .arg("serve")
            .args(["--metrics-addr", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {TWMON}: {e}"))?;
        let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let readers = vec![
            reader(lines.clone(), child.stdout.take().unwrap(), false),
            reader(lines.clone(), child.stderr.take().unwrap(), true),
        ];
        let end = Instant::now() + Duration::from_secs(30);
        let ready = {
            let mut l = lines.0.lock().unwrap();
            while l.ready.is_none() && !l.stderr_eof && Instant::now() < end {
                l = lines
                    .1
                    .wait_timeout(l, Duration::from_millis(100))
                    .unwrap()
                    .0;
            }
            l.ready.clone()
        };
        let mut serve = Serve {
            pid: child.id(),
            child: Some(child),
            addr,
            mode: String::new(),
            lines,
            readers,
        };
        match ready {
            Some(line) => {
                // "... (tracepoint mode: hook, hook)"
                serve.mode = line
                    .split_once('(')
                    .and_then(|(_, r)| r.split_once(" mode:"))
                    .map(|(m, _)| m.to_string())
                    .unwrap_or_default();
                Ok(serve)
            }
            None => {
                let st = serve.stop(libc::SIGKILL);
                Err(format!(
                    "twmon serve did not get ready ({:?}); stderr:\n{}",
                    st.status,
                    st.stderr.join("\n")
                ))
            }
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().stdout.clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().stderr.clone()
    }

    /// Wait (at most `timeout`) for a stdout line that satisfies `pred`.
    pub fn wait_stdout(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut l = self.lines.0.lock().unwrap();
        loop {
            if let Some(found) = l.stdout.iter().find(|s| pred(s)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if now >= end || l.stderr_eof {
                return None;
            }
            l = self.lines.1.wait_timeout(l, end - now).unwrap().0;
        }
    }

    /// GET /metrics.
    pub fn metrics(&self, timeout: Duration) -> std::io::Result<(u16, String)> {
        http_get(self.addr, "/metrics", timeout)
    }

    /// Send `signal`, wait 15 s for the exit (then SIGKILL).
    pub fn stop(mut self, signal: libc::c_int) -> Stopped {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let t = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t.elapsed() < Duration::from_secs(15) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break None,
            }
        };
        if status.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let l = self.lines.0.lock().unwrap();
        Stopped {
            status,
            stdout: l.stdout.clone(),
            stderr: l.stderr.clone(),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ids of the BPF programs process `pid` holds a descriptor to (programs
/// and links, from /proc/PID/fdinfo).
pub fn bpf_progs_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return ids;
    };
    for fd in dir.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        ids.extend(
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Those of `ids` that `bpftool prog list` still shows (None: no bpftool).
pub fn bpf_progs_left(ids: &[u64]) -> Option<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "list"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| ids.contains(id))
            .collect(),
    )
}
