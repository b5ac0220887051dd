//! twmon-load: the load generator of `cargo xtask bench` and of the kernel
//! lost-events test. Loopback only; meant to run inside a private network
//! namespace (`unshare -n`), and every run is bounded (`--secs`, `--conns`,
//! `--binds`).
//!
//! One single-threaded connect/accept/close churn (the server closes first:
//! TIME_WAIT on the server side; or the client first: TIME_WAIT on the client
//! side), optionally with failing binds beside it on a second thread (a
//! listener holds `--bind-port`; each bind() on it fails with EADDRINUSE).
//! `--syscalls` instead loops 1-byte reads of /dev/zero and writes to
//! /dev/null for `--secs`: what a monitor costs every other system call.
//! At the end one JSON line on stdout says what was done:
//! `{"conns":N,"secs":S,"binds_failed":M,"tw_at_end":T,...}`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

const USAGE: &str =
    "usage: twmon-load [--lo-up] [--churn server|client|rst|none] [--secs S] [--conns N] \
[--port P] [--binds N] [--bind-interval-us U] [--bind-port P] [--tw-buckets N] [--syscalls]";

/// Who closes first; `Rst`: the client aborts (SO_LINGER 0), no TIME_WAIT
/// anywhere, so every connection gives the same state transitions.
#[derive(Clone, Copy, PartialEq)]
enum Close {
    Server,
    Client,
    Rst,
}

struct Opts {
    lo_up: bool,
    churn: Option<Close>,
    secs: f64,
    conns: Option<u64>,
    port: u16,
    binds: u64,
    bind_interval_us: u64,
    bind_port: u16,
    tw_buckets: Option<u64>,
    syscalls: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        lo_up: false,
        churn: Some(Close::Server),
        secs: 3.0,
        conns: None,
        port: 9100,
        binds: 0,
        bind_interval_us: 10_000,
        bind_port: 9200,
        tw_buckets: None,
        syscalls: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--lo-up" => o.lo_up = true,
            "--syscalls" => o.syscalls = true,
            "--churn" => {
                o.churn = match val()?.as_str() {
                    "server" => Some(Close::Server),
                    "client" => Some(Close::Client),
                    "rst" => Some(Close::Rst),
                    "none" => None,
                    v => return Err(format!("--churn {v}: server, client, rst or none")),
                }
            }
            "--secs" => o.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--conns" => o.conns = Some(val()?.parse().map_err(|e| format!("--conns: {e}"))?),
            "--port" => o.port = val()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--binds" => o.binds = val()?.parse().map_err(|e| format!("--binds: {e}"))?,
            "--bind-interval-us" => {
                o.bind_interval_us = val()?.parse().map_err(|e| format!("{a}: {e}"))?
            }
            "--bind-port" => o.bind_port = val()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--tw-buckets" => o.tw_buckets = Some(val()?.parse().map_err(|e| format!("{a}: {e}"))?),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if !(o.secs > 0.0 && o.secs <= 3600.0) {
        return Err("--secs must be in (0, 3600]".into());
    }
    Ok(o)
}

/// Bring `lo` up (a fresh network namespace has it down).
fn lo_up() -> std::io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; the ioctls read/write it in place.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Per-namespace sysctls (only ever written inside the run's own namespace).
fn sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/net/ipv4/{name}");
    if let Err(e) = std::fs::write(&path, value) {
        eprintln!("twmon-load: {path}: {e}");
    }
}

/// TIME_WAIT sockets in this namespace (/proc/net/sockstat `tw`).
fn tw_count() -> u64 {
    let s = std::fs::read_to_string("/proc/self/net/sockstat").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "tw")
                .and_then(|i| w.get(i + 1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The inode of this process's network namespace.
fn netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// connect/accept/close until the deadline or `max` connections; returns
/// how many, and the connect errors.
fn churn(l: &TcpListener, close: Close, until: Instant, max: u64) -> std::io::Result<(u64, u64)> {
    let addr = l.local_addr()?;
    let mut n = 0u64;
    let mut errors = 0u64;
    while n < max && (!n.is_multiple_of(64) || Instant::now() < until) {
        let c = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                errors += 1;
                if errors > 1000 {
                    return Err(e);
                }
                continue;
            }
        };
        let (s, _) = l.accept()?;
        match close {
            Close::Server => {
                drop(s);
                drop(c);
            }
            Close::Client => {
                drop(c);
                drop(s);
            }
            Close::Rst => {
                socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
                drop(c);
                // Let the RST land before the server side closes, so the
                // server's transitions are always ESTABLISHED -> CLOSE.
                let mut b = [0u8; 1];
                let _ = std::io::Read::read(&mut &s, &mut b);
                drop(s);
            }
        }
        n += 1;
    }
    Ok((n, errors))
}

/// `count` binds on a port a listener holds, `interval_us` apart; the
/// listener is the storm's own unless `beside_churn` (the churn's listener
/// holds the port then). Returns (failed with EADDRINUSE, other outcomes,
/// first..last failing bind time).
fn bind_storm(
    port: u16,
    beside_churn: bool,
    count: u64,
    interval_us: u64,
    stop: &AtomicBool,
) -> (u64, u64, u64, u64) {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let _holder = match beside_churn {
        true => None,
        false => match TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("twmon-load: listener on {addr}: {e}");
                return (0, count, 0, 0);
            }
        },
    };
    let (mut failed, mut other, mut first, mut last) = (0, 0, 0, 0);
    let start = Instant::now();
    for i in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if interval_us > 0 {
            let due = start + Duration::from_micros(interval_us * i);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let s = match Socket::new(Domain::IPV4, Type::STREAM, None) {
            Ok(s) => s,
            Err(_) => {
                other += 1;
                continue;
            }
        };
        match s.bind(&addr.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                last = boottime_ns();
                if first == 0 {
                    first = last;
                }
                failed += 1;
            }
            _ => other += 1,
        }
    }
    (failed, other, first, last)
}

/// 1-byte reads of /dev/zero and writes to /dev/null until the deadline
/// (dd bs=1); returns how many system calls.
fn syscall_loop(until: Instant) -> std::io::Result<u64> {
    use std::io::Read;
    let mut zero = std::fs::File::open("/dev/zero")?;
    let mut null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let mut byte = [0u8; 1];
    let mut calls = 0;
    while Instant::now() < until {
        for _ in 0..4096 {
            zero.read_exact(&mut byte)?;
            null.write_all(&byte)?;
        }
        calls += 2 * 4096;
    }
    Ok(calls)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("twmon-load: {e}");
            std::process::exit(2);
        }
    };
    if o.lo_up {
        if let Err(e) = lo_up() {
            eprintln!("twmon-load: bringing lo up: {e}");
            std::process::exit(1);
        }
        // Inside our own namespace only: room for the churn.
        sysctl("ip_local_port_range", "1024 65535");
        if let Some(n) = o.tw_buckets {
            sysctl("tcp_max_tw_buckets", &n.to_string());
        }
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.secs);
    let stop = Arc::new(AtomicBool::new(false));
    // The churn's listener first: binds aimed at its port must find it there.
    let listener = match o.churn {
        Some(_) => match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, o.port)) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("twmon-load: churn listener on port {}: {e}", o.port);
                std::process::exit(1);
            }
        },
        None => None,
    };
    let storm = (o.binds > 0).then(|| {
        let stop = stop.clone();
        let (port, count, iv) = (o.bind_port, o.binds, o.bind_interval_us);
        let beside_churn = listener.is_some() && port == o.port;
        std::thread::spawn(move || bind_storm(port, beside_churn, count, iv, &stop))
    });
    let syscalls = if o.syscalls {
        match syscall_loop(until) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("twmon-load: system-call loop: {e}");
                stop.store(true, Ordering::Relaxed);
                std::process::exit(1);
            }
        }
    } else {
        0
    };
    let (conns, errors) = match (o.churn, &listener) {
        (Some(close), Some(l)) => match churn(l, close, until, o.conns.unwrap_or(u64::MAX)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("twmon-load: churn: {e}");
                stop.store(true, Ordering::Relaxed);
                std::process::exit(1);
            }
        },
        _ => (0, 0),
    };
    let churn_secs = started.elapsed().as_secs_f64();
    // The binds end with the churn unless the churn was none.
    if o.churn.is_some() {
        stop.store(true, Ordering::Relaxed);
    }
    let (bf, bo, bfirst, blast) = storm
        .map(|h| h.join().unwrap_or((0, 0, 0, 0)))
        .unwrap_or((0, 0, 0, 0));
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "{{\"conns\":{conns},\"connect_errors\":{errors},\"churn_secs\":{churn_secs:.4},\
\"secs\":{secs:.4},\"binds_failed\":{bf},\"binds_other\":{bo},\"bind_first_ns\":{bfirst},\
\"bind_last_ns\":{blast},\"syscalls\":{syscalls},\"tw_at_end\":{},\"netns\":{}}}",
        tw_count(),
        netns()
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
