//! Container labels for real: a cgroup v2 directory laid out as docker's
//! systemd driver does (`.../docker-<64 hex>.scope`), a process moved into
//! it that fails binds in a private network namespace, and `twmon serve
//! --json` must name that id in the bind_failed lines and in the
//! `container` label of twmon_bind_failures_total.
//!
//! Needs root, eBPF and a writable cgroup v2 hierarchy: skipped loudly
//! otherwise, failing under CI=true.

mod serve_support;
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitor::scenario::Netns;
use serve_support::Serve;
use support::{kernel_or_skip, loud, skip};

const ID: &str = "5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f0a1c3e5b7d9f1a3c5e7b9d0f";

/// The test's cgroup tree, removed when dropped (after its process left).
struct Cgroup {
    top: PathBuf,
    scope: PathBuf,
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let t = Instant::now();
        // rmdir fails while the (exiting) process is still counted.
        while std::fs::remove_dir(&self.scope).is_err()
            && self.scope.exists()
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.top);
    }
}

#[test]
fn a_failing_process_in_a_docker_cgroup_carries_its_container_id() {
    const TEST: &str = "a_failing_process_in_a_docker_cgroup_carries_its_container_id";
    if !kernel_or_skip(TEST) {
        return;
    }
    let Some(root) = monitor::container::cgroup2_mount() else {
        skip(TEST, "no cgroup v2 hierarchy is mounted");
        return;
    };
    let top = PathBuf::from(&root).join(format!("twmon-test-{}", std::process::id()));
    let scope = top.join(format!("docker-{ID}.scope"));
    if let Err(e) = std::fs::create_dir_all(&scope) {
        skip(
            TEST,
            &format!("cannot create a cgroup under {root} ({e}): cgroup v2 is not writable"),
        );
        return;
    }
    let cg = Cgroup { top, scope };
    let ns = Netns::new().expect("network namespace");
    let inode = ns.inode().to_string();
    let serve = Serve::start(&["--json", "--netns", &inode]).unwrap_or_else(|e| panic!("{e}"));

    // The child joins the cgroup, then becomes twmon-load: a listener on
    // 7950 and three binds on it that fail.
    let procs = cg.scope.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec {} --churn none --binds 3 --bind-interval-us 100000 --bind-port 7950",
        procs.display(),
        env!("CARGO_BIN_EXE_twmon-load")
    );
    let out = ns
        .run(move || {
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .output()
        })
        .unwrap()
        .expect("run twmon-load");
    assert!(
        out.status.success(),
        "twmon-load in the cgroup: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let line = serve.wait_stdout(Duration::from_secs(5), |l| {
        l.contains("\"requested\":\"127.0.0.1:7950\"")
    });
    let line = line.unwrap_or_else(|| {
        panic!(
            "no bind_failed for 127.0.0.1:7950; twmon-load said {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["container"], ID, "{line}");
    assert_eq!(v["comm"], "twmon-load", "{line}");

    // The metric carries it too (rendered once a second). Only the first
    // failure's line was waited for: a render can come while the others
    // are still being explained, so wait for the count to reach 3 (it
    // failed once in CI reading 2).
    let want = format!(r#"port="7950",container="{ID}"}}"#);
    let sample_in = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("twmon_bind_failures_total") && l.contains(&want))
            .map(str::to_string)
    };
    let t = Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(5) {
        text = serve
            .metrics(Duration::from_secs(3))
            .map(|r| r.1)
            .unwrap_or_default();
        if sample_in(&text).is_some_and(|s| s.ends_with(" 3")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sample = sample_in(&text)
        .unwrap_or_else(|| panic!("no twmon_bind_failures_total with {want} in\n{text}"));
    assert!(sample.ends_with(" 3"), "three failed binds: {sample}");
    loud(&format!("\n{TEST}:\n  {sample}\n"));

    // This test process is in no container's cgroup: its failure has no
    // container field.
    ns.run(|| {
        let held = std::net::TcpListener::bind("127.0.0.1:7951").unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let a: std::net::SocketAddr = ([127, 0, 0, 1], 7951).into();
        assert!(s.bind(&a.into()).is_err());
        drop(held);
    })
    .unwrap();
    let host = serve
        .wait_stdout(Duration::from_secs(5), |l| {
            l.contains("\"requested\":\"127.0.0.1:7951\"")
        })
        .expect("a bind_failed for 127.0.0.1:7951");
    let v: serde_json::Value = serde_json::from_str(&host).unwrap();
    assert!(v.get("container").is_none(), "{host}");

    let stopped = serve.stop(libc::SIGTERM);
    assert_eq!(stopped.status.and_then(|s| s.code()), Some(0));
    drop(cg);
}
