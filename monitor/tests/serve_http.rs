//! `twmon serve`'s HTTP side: a bad --metrics-addr and a taken port are one
//! sentence and exit 2 / 1 (no privileges needed: the address is bound
//! before the probe loads); a scraper that connects and sends nothing, a
//! flood of connections and an oversized request do not keep /metrics from
//! answering within a few seconds, and the events go on meanwhile.
//!
//! The last needs root and eBPF: skipped loudly otherwise, failing under
//! CI=true.

mod serve_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monitor::scenario::Netns;
use serve_support::{Serve, TWMON};
use support::{kernel_or_skip, loud};

fn serve_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(TWMON)
        .arg("serve")
        .args(args)
        .output()
        .expect("run twmon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_metrics_addr_is_one_sentence_and_exit_2() {
    for addr in ["nonsense", "127.0.0.1", "127.0.0.1:99999", "localhost:9464"] {
        let (code, err) = serve_exit(&["--metrics-addr", addr]);
        assert_eq!(code, Some(2), "--metrics-addr {addr}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "--metrics-addr {addr}: {err}"
        );
        assert!(err.contains("--metrics-addr"), "{err}");
    }
    // An address this host does not have (TEST-NET-1).
    let (code, err) = serve_exit(&["--metrics-addr", "192.0.2.1:9464"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_taken_port_is_one_sentence_and_exit_1() {
    // A plain socket without SO_REUSEADDR, listening.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (code, err) = serve_exit(&["--metrics-addr", &addr]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
}

/// Fetch /metrics, retrying refused or cut connections, until it answers
/// 200 or `within` passes; how long it took.
fn metrics_within(addr: SocketAddr, within: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < within {
        match serve_support::http_get(addr, "/metrics", Duration::from_secs(3)) {
            Ok((200, body)) if body.contains("twmon_build_info") => return Ok(t.elapsed()),
            Ok((st, body)) => last = format!("HTTP {st}: {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("/metrics did not answer within {within:?}: {last}"))
}

#[test]
fn hanging_and_flooding_scrapers_do_not_stop_metrics() {
    const TEST: &str = "hanging_and_flooding_scrapers_do_not_stop_metrics";
    if !kernel_or_skip(TEST) {
        return;
    }
    let ns = Netns::new().expect("network namespace");
    let inode = ns.inode().to_string();
    let serve = Serve::start(&["--json", "--netns", &inode]).unwrap_or_else(|e| panic!("{e}"));
    let addr = serve.addr;
    metrics_within(addr, Duration::from_secs(3)).unwrap();

    // 1. Hanging scrapers: more connections than twmon serves at once,
    // each sending nothing.
    let hanging: Vec<TcpStream> = (0..24)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // The events go on meanwhile: a failed bind is reported at once.
    let port = 7990u16;
    ns.run(|| {
        let held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let a: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(s.bind(&a.into()).is_err());
        drop(held);
    })
    .unwrap();
    let want = format!("\"requested\":\"127.0.0.1:{port}\"");
    let t = Instant::now();
    let line = serve.wait_stdout(Duration::from_secs(5), |l| l.contains(&want));
    let json_took = t.elapsed();
    assert!(line.is_some(), "no bind_failed line while scrapers hang");
    let took_hanging = metrics_within(addr, Duration::from_secs(6)).unwrap();
    // twmon closes the idle connections by itself.
    let mut closed = 0;
    for mut c in hanging {
        c.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(c.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 24, "idle connections left open");

    // 2. A flood: threads connecting as fast as they can (at most 3000
    // connections, aborted with RST so that no TIME_WAIT is left on the
    // host's ports), half sending half a request, for 4 s.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..6)
        .map(|i| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && opened.load(Ordering::Relaxed) < 3000 {
                    if let Ok(mut c) = TcpStream::connect(addr) {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                        if i % 2 == 0 {
                            let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                        }
                    }
                }
            })
        })
        .collect();
    let mut during = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        during.push(metrics_within(addr, Duration::from_secs(5)));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.join().unwrap();
    }
    let worst = during
        .iter()
        .map(|r| {
            r.clone()
                .unwrap_or_else(|e| panic!("during the flood: {e}"))
        })
        .max()
        .unwrap();

    // 3. A request larger than twmon reads is refused; /metrics goes on.
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        big,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a 64 KiB header was served: {answer:.80}"
    );
    metrics_within(addr, Duration::from_secs(3)).unwrap();

    loud(&format!(
        "\n{TEST}: bind_failed line {json_took:?} after the bind with 24 idle connections open; \
         /metrics answered {took_hanging:?} after them; {} connections in the 4 s flood, \
         {} scrapes meanwhile, the slowest {worst:?}; a 64 KiB request got {:?}\n",
        opened.load(Ordering::Relaxed),
        during.len(),
        answer.lines().next().unwrap_or("(closed)")
    ));
    let stopped = serve.stop(libc::SIGTERM);
    assert_eq!(stopped.status.and_then(|s| s.code()), Some(0));
}
