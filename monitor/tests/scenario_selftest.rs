//! Plays every field scenario for real (root, private network namespaces)
//! and checks that what the scenario library recorded is what the kernel
//! says on its own: the errnos, the sockets /proc/net and `ss` show at each
//! failure, the effect of SO_REUSEADDR/SO_REUSEPORT measured by retrying,
//! and that nothing is left behind (processes, descriptors, namespaces).
//!
//! Without the privileges to create a network namespace the test is skipped
//! with a loud message, except under CI=true, where it fails.

use std::time::{Duration, Instant};

use monitor::event::{DiagnosisCode as Code, Proto, Syscall, TcpState};
use monitor::scenario::{self, Netns, Options, Outcome, ProcessEvent, Recorder, Scenario, Step};

/// The tests of this file count descriptors and children: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn netns_or_skip() -> Option<Netns> {
    match Netns::new() {
        Ok(ns) => Some(ns),
        Err(e) => {
            let msg = format!(
                "cannot create a network namespace ({e}): the scenario selftest needs root (CAP_SYS_ADMIN)"
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: failing instead of skipping)");
            }
            // Straight to the descriptor: libtest would swallow eprintln!
            // of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n**********\n*** SKIPPED: {msg}\n**********\n"
            );
            None
        }
    }
}

/// The failures each scenario must produce, in order: (syscall, errno, code).
fn expected_failures(id: u8) -> Vec<(Syscall, i32, Code)> {
    use libc::{EADDRINUSE as INUSE, EADDRNOTAVAIL as NOTAVAIL};
    use Syscall::*;
    match id {
        1 => vec![(Bind, INUSE, Code::TimeWait), (Bind, INUSE, Code::TimeWait)],
        2 => vec![(Bind, INUSE, Code::TimeWait)],
        3 => vec![(Bind, INUSE, Code::Established)],
        4 => vec![(Bind, INUSE, Code::CloseWait)],
        5 => vec![(Bind, INUSE, Code::TimeWait)],
        6 => vec![(Listen, INUSE, Code::Listener), (Bind, INUSE, Code::Bound)],
        7 => vec![(Bind, INUSE, Code::ReuseportMismatch); 3],
        8 => vec![
            (Connect, NOTAVAIL, Code::EphemeralExhausted),
            (Bind, INUSE, Code::EphemeralExhausted),
            (Listen, INUSE, Code::EphemeralExhausted),
        ],
        9 => vec![],
        10 => vec![(Bind, INUSE, Code::Listener); 2],
        11 => vec![(Bind, INUSE, Code::Listener)],
        _ => unreachable!(),
    }
}

/// ss's name for a state.
fn ss_state(proto: Proto, s: TcpState) -> &'static str {
    match (proto, s) {
        (Proto::Udp, _) => "UNCONN",
        (_, TcpState::Established) => "ESTAB",
        (_, TcpState::CloseWait) => "CLOSE-WAIT",
        (_, TcpState::TimeWait) => "TIME-WAIT",
        (_, TcpState::Listen) => "LISTEN",
        (_, other) => panic!("no ss name for {other}"),
    }
}

fn dump(out: &Outcome) -> String {
    serde_json::to_string_pretty(out).unwrap()
}

/// Everything the kernel can confirm about one outcome.
fn check(sc: &Scenario, out: &Outcome) {
    let ctx = || format!("scenario {} ({})\n{}", sc.id, sc.name, dump(out));
    let me = std::process::id();

    let got: Vec<(Syscall, i32, Code)> = out
        .failures()
        .map(|a| (a.syscall, a.errno.unwrap(), a.expect.as_ref().unwrap().code))
        .collect();
    assert_eq!(got, expected_failures(sc.id), "{}", ctx());

    for a in out.attempts() {
        assert!(
            a.ts_before_ns <= a.ts_after_ns && a.ts_before_ns >= out.started_ns,
            "{}",
            ctx()
        );
        assert!(a.pid != 0 && !a.comm.is_empty(), "{}", ctx());
        assert_eq!(a.error.is_some(), a.errno.is_some());
        if a.errno.is_none() {
            assert!(
                a.local.is_some(),
                "a success without a local address: {a:?}"
            );
            continue;
        }
        // The kernel's own tables at the failure.
        assert!(
            !a.evidence.is_empty(),
            "no /proc/net evidence for {a:?}\n{}",
            ctx()
        );
        let Some(e) = &a.expect else {
            continue;
        };
        assert_eq!(a.errno, Some(e.errno));
        let missing = a.unconfirmed_holders();
        assert!(
            missing.is_empty(),
            "/proc/net does not show {missing:#?} at {} {}\n{}",
            a.syscall.as_str(),
            a.requested,
            ctx()
        );
        // ... and netlink sock_diag (ss) agrees.
        let ss = a.ss.as_deref().expect("ss output");
        for h in &e.holders {
            let state = ss_state(h.proto, h.state);
            let port = format!(":{} ", h.local.port());
            let line = ss
                .lines()
                .find(|l| {
                    l.contains(state)
                        && l.contains(&port)
                        && h.remote.is_none_or(|r| l.contains(&r.to_string()))
                        && h.pid.is_none_or(|p| l.contains(&format!("pid={p},")))
                })
                .unwrap_or_else(|| panic!("ss does not show {h:?}:\n{ss}\n{}", ctx()));
            if let Some(uid) = h.uid.filter(|&u| u != 0) {
                assert!(line.contains(&format!("uid:{uid} ")), "ss uid: {line}");
            }
            if h.state == TcpState::TimeWait {
                assert!(line.contains("timer:(timewait,"), "{line}");
            }
        }
        // What SO_REUSEADDR / SO_REUSEPORT would have changed, measured.
        if a.syscall != Syscall::Connect && a.requested.port() != 0 {
            let m = a.measured.expect("probes ran");
            assert_eq!(
                (m.reuseaddr_helps, m.reuseport_helps),
                (e.reuseaddr_would_help, e.reuseport_would_help),
                "would_help for {} {}\n{}",
                a.syscall.as_str(),
                a.requested,
                ctx()
            );
        }
        if e.code == Code::EphemeralExhausted {
            let n = e.time_wait_count.expect("a TIME_WAIT count");
            let tw = a
                .evidence
                .iter()
                .filter(|s| {
                    s.state == TcpState::TimeWait && (40000..=40001).contains(&s.local.port())
                })
                .count();
            assert_eq!(tw, n, "{}", ctx());
        }
    }

    // Every process started was reaped.
    for s in &out.steps {
        if let Step::Process { pid, .. } = s {
            let alive = unsafe { libc::kill(*pid as i32, 0) } == 0;
            assert!(!alive, "process {pid} still exists\n{}", ctx());
        }
    }

    let failures: Vec<_> = out.failures().collect();
    match sc.id {
        1 => {
            let tw: Vec<bool> = out
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::TimeWaitLeft {
                        reuseaddr,
                        left_by_pid,
                        ..
                    } => {
                        assert_eq!(*left_by_pid, me);
                        Some(*reuseaddr)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(tw, [false, true]);
            assert!(
                failures[1].reuseaddr,
                "the second restart sets SO_REUSEADDR"
            );
            let last: Vec<_> = out.attempts().rev().take(2).collect();
            assert!(last
                .iter()
                .all(|a| a.errno.is_none() && a.requested.port() == 7101));
        }
        2 => {
            let f = failures[0];
            assert_ne!(f.pid, me);
            assert_eq!(f.comm, "silent-server");
            let listen = out
                .attempts()
                .find(|a| a.syscall == Syscall::Listen && a.pid == f.pid)
                .unwrap();
            let port = listen.local.unwrap().port();
            assert!(
                listen.errno.is_none() && port != 0 && port != 7200,
                "{listen:?}"
            );
            let refused = out
                .attempts()
                .find(|a| a.syscall == Syscall::Connect && a.errno.is_some())
                .unwrap();
            assert_eq!(refused.errno, Some(libc::ECONNREFUSED));
            assert!(
                refused.expect.is_none(),
                "connection refused is no bind failure"
            );
        }
        3 => {
            let pids: Vec<(u32, String, ProcessEvent)> = out
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Process {
                        pid, role, event, ..
                    } => Some((*pid, role.clone(), *event)),
                    _ => None,
                })
                .collect();
            let listener = pids[0].0;
            let child = pids
                .iter()
                .find(|p| p.1.starts_with("forked child"))
                .unwrap()
                .0;
            let h = &failures[0].expect.as_ref().unwrap().holders[0];
            assert_eq!(h.pid, Some(child));
            assert!(child != listener && child != me);
            assert!(pids
                .iter()
                .any(|p| p.0 == listener && p.2 == ProcessEvent::Exited));
        }
        4 => {
            let h = &failures[0].expect.as_ref().unwrap().holders[0];
            assert_ne!(h.pid, Some(me));
            assert_eq!(h.state, TcpState::CloseWait);
        }
        5 => {
            let ok = out
                .attempts()
                .find(|a| a.requested.to_string() == "127.0.0.1:7500")
                .unwrap();
            assert!(ok.errno.is_none());
            assert_eq!(failures[0].requested.to_string(), "0.0.0.0:7500");
            assert_eq!(
                failures[0].expect.as_ref().unwrap().holders[0]
                    .local
                    .to_string(),
                "127.0.0.2:7500"
            );
        }
        6 => {
            assert_eq!(failures[1].proto, Proto::Udp);
            let udp_ok = out
                .attempts()
                .find(|a| a.proto == Proto::Udp && a.errno.is_none())
                .unwrap();
            assert_eq!(
                udp_ok.requested.port(),
                7600,
                "UDP shares the TCP listener's port"
            );
        }
        7 => {
            let uid = failures[2].expect.as_ref().unwrap().holders[0].uid;
            assert_eq!(uid, Some(65534));
            assert!(failures[2]
                .evidence
                .iter()
                .any(|s| s.uid == 65534 && s.state == TcpState::Listen));
        }
        8 => {
            let sysctls: Vec<(String, String)> = out
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Sysctl { name, value, .. } => Some((name.clone(), value.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(sysctls.len(), 4, "{sysctls:?}");
            let filled = out
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::PortsFilled { time_wait, .. } => Some(time_wait.len()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(filled, 2);
        }
        9 => {
            let (errno, left) = out
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::Reset {
                        peer_errno,
                        time_wait_left,
                        ..
                    } => Some((*peer_errno, *time_wait_left)),
                    _ => None,
                })
                .unwrap();
            assert_eq!(errno, Some(libc::ECONNRESET));
            assert_eq!(left, 0);
            let last = out.attempts().last().unwrap();
            assert!(last.errno.is_none() && last.requested.port() == 7900);
        }
        10 => {
            let ok: Vec<_> = out
                .successes()
                .filter(|a| a.requested.port() == 8001)
                .collect();
            assert_eq!(
                ok.len(),
                4,
                "[::] v6only=1 and 127.0.0.1 both bind and listen"
            );
        }
        11 => {
            let h = &failures[0].expect.as_ref().unwrap().holders[0];
            let server = out.attempts().next().unwrap().pid;
            assert_eq!(h.state, TcpState::Listen);
            assert_eq!(h.opened_by_pid, Some(server));
            assert!(h.pid.is_some_and(|p| p != server && p != me), "{h:?}");
            assert!(
                failures[0]
                    .evidence
                    .iter()
                    .any(|s| s.state == TcpState::Listen
                        && s.owned_by(h.pid.unwrap())
                        && !s.owned_by(server)),
                "the helper alone holds the listener"
            );
            let last = out.attempts().last().unwrap();
            assert!(last.errno.is_none() && last.requested.port() == 8100);
        }
        _ => {}
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Nothing of ours is left in namespace `inode`: no thread, no handle.
/// A thread that was joined can still be listed for a moment (the kernel
/// wakes its joiner before it removes the task; seen once in CI): a thread
/// left behind is still there after a second.
fn assert_nothing_in(inode: u32) {
    let net = format!("net:[{inode}]");
    let threads_inside = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_link(t.path().join("ns/net"))
                    .is_ok_and(|l| l.to_str() == Some(net.as_str()))
            })
            .map(|t| t.file_name())
            .collect()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut inside = threads_inside();
    while !inside.is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
        inside = threads_inside();
    }
    assert!(
        inside.is_empty(),
        "threads {inside:?} are still in the namespace after a second"
    );
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(l) = std::fs::read_link(fd.path()) {
            assert_ne!(
                l.to_str().unwrap(),
                net,
                "a descriptor still holds the namespace"
            );
        }
    }
}

fn no_children_left() {
    let mut st = 0;
    let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
    assert_eq!(r, -1, "a child process was left behind (waitpid said {r})");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ECHILD)
    );
}

#[test]
fn every_scenario_plays_and_the_kernel_agrees() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let Some(probe_ns) = netns_or_skip() else {
        return;
    };
    drop(probe_ns);
    let fds = fd_count();
    let opts = Options {
        probe: true,
        ss: true,
    };

    // Each scenario in a namespace of its own.
    for sc in scenario::all() {
        let t = Instant::now();
        let ns = Netns::new().unwrap();
        let inode = ns.inode();
        let out = sc
            .run(&ns, Recorder::new(&ns, opts))
            .unwrap_or_else(|e| panic!("{e}\n{}", dump(&e.partial)));
        assert_eq!(out.netns, inode);
        check(&sc, &out);
        // TWMON_SCENARIO_DUMP=DIR keeps each outcome as DIR/scenario-N.json.
        if let Some(dir) = std::env::var_os("TWMON_SCENARIO_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("scenario-{}.json", sc.id));
            std::fs::write(path, dump(&out)).unwrap();
        }
        eprintln!("scenario {} {} ({:?}):", sc.id, sc.name, t.elapsed());
        for s in &out.steps {
            eprintln!("    {}", s.describe());
        }
        drop(ns);
        assert_nothing_in(inode);
        no_children_left();
        assert_eq!(fd_count(), fds, "descriptors leaked by scenario {}", sc.id);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "scenario {} is slow",
            sc.id
        );
    }

    // All of them one after the other in one namespace, as a demo may: they
    // must not disturb each other and must leave the namespace as they found it.
    let ns = Netns::new().unwrap();
    let range = ns.sysctl("net.ipv4.ip_local_port_range").unwrap();
    let tw_reuse = ns.sysctl("net.ipv4.tcp_tw_reuse").unwrap();
    let mut seen = 0;
    for sc in scenario::all() {
        let out = sc
            .run(&ns, Recorder::new(&ns, Options::default()).on_step(|_| {}))
            .unwrap_or_else(|e| panic!("{e} (shared namespace)\n{}", dump(&e.partial)));
        let got: Vec<_> = out
            .failures()
            .map(|a| (a.syscall, a.errno.unwrap(), a.expect.as_ref().unwrap().code))
            .collect();
        assert_eq!(
            got,
            expected_failures(sc.id),
            "scenario {} in a shared namespace",
            sc.id
        );
        assert!(out
            .failures()
            .all(|a| a.measured.is_none() && a.ss.is_none()));
        seen += 1;
    }
    assert_eq!(seen, 11);
    assert_eq!(ns.sysctl("net.ipv4.ip_local_port_range").unwrap(), range);
    assert_eq!(ns.sysctl("net.ipv4.tcp_tw_reuse").unwrap(), tw_reuse);
    // Only timewait sockets remain, which the kernel keeps by itself.
    let left = ns.run(scenario::snapshot).unwrap().unwrap();
    assert!(
        left.iter()
            .all(|s| matches!(s.state, TcpState::TimeWait | TcpState::FinWait2)),
        "sockets left open: {left:#?}"
    );
    assert!(left.iter().any(|s| s.state == TcpState::TimeWait));
    let inode = ns.inode();
    drop(ns);
    assert_nothing_in(inode);
    no_children_left();
    assert_eq!(fd_count(), fds);

    // All of them at once, each in its namespace on its own thread: forks
    // and sockets of one must not leak into another (a forked child holding
    // a copy of another scenario's socket would delay its FIN and own it).
    std::thread::scope(|s| {
        let hs: Vec<_> = scenario::all()
            .into_iter()
            .map(|sc| {
                s.spawn(move || {
                    let out = sc
                        .run_fresh(Options::default())
                        .unwrap_or_else(|e| panic!("{e} (concurrent)\n{}", dump(&e.partial)));
                    let got: Vec<_> = out
                        .failures()
                        .map(|a| (a.syscall, a.errno.unwrap(), a.expect.as_ref().unwrap().code))
                        .collect();
                    assert_eq!(
                        got,
                        expected_failures(sc.id),
                        "scenario {} run concurrently",
                        sc.id
                    );
                    for a in out.failures() {
                        assert!(a.unconfirmed_holders().is_empty(), "{}", dump(&out));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    no_children_left();
    assert_eq!(fd_count(), fds);
    eprintln!("all scenarios: {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn netns_basics() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ns) = netns_or_skip() else {
        return;
    };
    let host = std::fs::metadata("/proc/thread-self/ns/net").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino() as u32
    });
    assert_ne!(Ok(ns.inode()), host.map_err(|_| ()));
    // A thread inside sees the namespace's inode.
    let inside = ns
        .run(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32
        })
        .unwrap();
    assert_eq!(inside, ns.inode());
    assert!(ns.has_ipv6());
    // Sysctls are the namespace's own: changing one inside leaves the host alone.
    let host_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let prev = ns
        .set_sysctl("net.ipv4.ip_local_port_range", "40000 40001")
        .unwrap();
    assert_eq!(
        ns.sysctl("net.ipv4.ip_local_port_range").unwrap(),
        "40000 40001"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap(),
        host_range
    );
    ns.set_sysctl("net.ipv4.ip_local_port_range", &prev)
        .unwrap();
    assert!(
        ns.set_sysctl("kernel.hostname", "x").is_err(),
        "only net.* sysctls"
    );
    // The path names the namespace for nsenter.
    let l = std::fs::read_link(ns.path()).unwrap();
    assert_eq!(l.to_str().unwrap(), format!("net:[{}]", ns.inode()));
}

/// `scenario::is_fin_wait2_orphan` (which tests use to replay a set-up the
/// kernel raced) tells a full FIN_WAIT2 orphan from a timewait sock: with
/// tcp_fin_timeout above 60 s close() keeps the full socket, with the
/// default it makes a FIN_WAIT2 timewait sock.
#[test]
fn a_full_fin_wait2_orphan_is_told_from_a_timewait_sock() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ns) = netns_or_skip() else {
        return;
    };
    for (fin_timeout, orphan) in [("120", true), ("60", false)] {
        ns.set_sysctl("net.ipv4.tcp_fin_timeout", fin_timeout)
            .unwrap();
        let port = if orphan { 9401 } else { 9402 };
        let seen = ns
            .run(|| -> std::io::Result<bool> {
                let addr = monitor::event::Endpoint::v4([127, 0, 0, 1], port);
                let (_l, _c, server, cli) =
                    scenario::server_closes_first(false, addr, scenario::SockOpts::PLAIN)?;
                // The client's ACK of the FIN, on loopback, is a matter of
                // microseconds.
                std::thread::sleep(Duration::from_millis(100));
                scenario::is_fin_wait2_orphan(server, cli)
            })
            .unwrap()
            .unwrap();
        assert_eq!(seen, orphan, "tcp_fin_timeout {fin_timeout}");
    }
}
