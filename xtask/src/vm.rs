//! `cargo xtask vm-test`: the kernel matrix. Boots Debian's 6.1 and 6.12
//! kernels under QEMU (software emulation, `-accel tcg`) and runs the kernel
//! end-to-end tests inside each guest, once per probe mode, with the one
//! static twmon built on this host.
//!
//! - Kernels: the newest `linux-image-6.1.*` / `linux-image-6.12.*` cloud
//!   images the apt mirror has, fetched with `apt-get download` and unpacked
//!   with `dpkg -x` into a cache (`$XDG_CACHE_HOME/twmon/vm`, else
//!   `~/.cache/twmon/vm`), never installed. Only the kernel image and the
//!   sock_diag modules are kept.
//! - Guest: a busybox initramfs whose /init is `xtask/vm/init.sh`; the
//!   static twmon and the static (musl) test binaries go in beside it, and
//!   the kernel's sock_diag modules in a second, gzipped cpio appended to
//!   the first (one per kernel).
//! - Result: the guest writes its status to QEMU's isa-debug-exit port
//!   (`xtask/vm/debug-exit.c`); QEMU then exits with status*2+1. Anything
//!   else (a panic, a poweroff, the timeout) is a failure. Each boot's
//!   serial console is saved to `<target>/vm/logs/`; a failing boot's tail is
//!   printed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo, display, is_root, run_checked};
use crate::{dist, setup};

/// Debian packages the matrix needs on the host, and why.
const VM_PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-x86",
        "boots the test kernels (cargo xtask vm-test)",
    ),
    (
        "busybox-static",
        "the shell and tools of the test guests' initramfs",
    ),
    ("cpio", "packs the test guests' initramfs"),
    ("kmod", "kernel module tools for the test guests"),
    ("xz-utils", "unpacks the 6.12 kernel's .ko.xz modules"),
    (
        "musl-tools",
        "builds the static debug-exit helper of the guests",
    ),
    (
        "binutils",
        "strips the debug info of the test binaries for the guests",
    ),
];

/// Kernel series of the matrix: `linux-image-<series>.*` packages.
const SERIES: &[&str] = &["6.1", "6.12"];

/// The probe modes, each tested in every kernel.
const MODES: &[&str] = &["tracepoint", "precise"];

/// The kernel tests run inside every guest, by test binary (monitor/tests).
/// Each binary runs with `--test-threads=1 --exact` these names.
const GUEST_TESTS: &[(&str, &[&str])] = &[
    (
        "kernel_watch",
        &[
            // Every field scenario: each expected failure with its errno,
            // requested endpoint, options, process; nothing else reported.
            "field_scenarios_report_every_failed_bind",
            // The same through tp_btf/sys_exit, the fallback where the
            // per-call syscall tracepoints cannot be attached.
            "field_scenarios_report_every_failed_bind_through_raw_sys_exit",
            "timewait_ends_with_the_right_reason",
            "timewait_killed_by_a_reset_ends_as_reset",
        ],
    ),
    (
        "kernel_diagnosis",
        &[
            // Every field scenario: diagnosis code, holders, verdicts.
            "field_scenarios_get_the_contracts_diagnosis_and_holders",
            "a_failure_is_explained_by_sockets_older_than_twmon",
            // connect() given the service port: an outgoing holder.
            "a_connection_given_the_service_port_is_told_as_outgoing",
            // connect() from a port of its own: its connection, not the range.
            "a_connect_from_its_own_port_is_held_by_its_connection",
            // An exhausted range mostly reserved: the reserved ports counted.
            "an_exhausted_range_counts_its_reserved_ports",
            "an_exhausted_range_counts_the_time_waits_toward_the_destination",
            // A listener a helper also holds: both named.
            "a_listener_a_helper_also_holds_names_both",
            // listen() on a connected socket: EINVAL told as such.
            "listen_on_a_connected_socket_is_told_as_connected",
            // Precise mode's port verdict: a conflict vs. other failures.
            "the_kernel_port_verdict_tells_a_conflict_from_other_failures",
        ],
    ),
];

/// Tests of those binaries left out of the guests on purpose, and why. A
/// test in neither list stops vm-test, so nothing is left out silently.
/// (Whole binaries not in GUEST_TESTS: kernel_lost drives 20000 RST
/// connections, minutes under TCG; trace_kernel needs zstd and mount
/// namespaces' tools; the ui_* and check_* tests need tmux, ss, bpftool.)
const NOT_IN_GUEST: &[(&str, &str, &str)] = &[
    (
        "kernel_watch",
        "unprivileged_watch_exits_3_with_one_sentence",
        "runs twmon through setpriv (util-linux), which the busybox guest lacks",
    ),
    (
        "kernel_watch",
        "no_program_stays_attached_after_exit",
        "lists BPF programs and links with bpftool, which the guest lacks",
    ),
    (
        "kernel_watch",
        "stops_cleanly_on_a_signal_right_after_ready",
        "lists BPF programs and links with bpftool, which the guest lacks",
    ),
    (
        "kernel_watch",
        "timewait_expires_after_sixty_seconds",
        "waits a real 60 s for the kernel's expiry: four minutes of the CI budget for a \
         timer conversion the host run covers (same HZ, 250, on every kernel here)",
    ),
];

#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// Only this kernel series (6.1, 6.12); repeatable. Default: all.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Only this mode (tracepoint, precise); repeatable. Default: all.
    #[arg(long = "mode", value_name = "MODE")]
    pub modes: Vec<String>,
    /// Give up on a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = BOOT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Run the guest's tests this many rounds in each boot, stopping at the
    /// first round that fails (to chase an intermittent failure; give
    /// --timeout room for it).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
}

/// The longest one boot may take, tests included.
const BOOT_TIMEOUT_SECS: u64 = 900;

impl Default for VmArgs {
    /// Every kernel and mode (what `cargo xtask test` runs).
    fn default() -> VmArgs {
        VmArgs {
            kernels: Vec::new(),
            modes: Vec::new(),
            timeout: BOOT_TIMEOUT_SECS,
            repeat: 1,
        }
    }
}

/// A kernel image ready to boot.
struct Kernel {
    series: &'static str,
    package: String,
    /// `uname -r` of the guest.
    release: String,
    vmlinuz: PathBuf,
    /// sock_diag modules (uncompressed .ko), in load order.
    modules: Vec<PathBuf>,
}

/// How one boot ended.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Passed,
    /// The guest said its tests failed (isa-debug-exit 1).
    TestsFailed,
    /// The guest's /init gave up (isa-debug-exit 2): see the log.
    GuestError(String),
    /// QEMU exited without the guest's status (kernel panic, poweroff,
    /// QEMU error): the code QEMU exited with.
    NoStatus(Option<i32>),
    TimedOut,
}

struct Cell {
    series: &'static str,
    release: String,
    mode: &'static str,
    verdict: Verdict,
    counts: Counts,
    /// twmon's own line about the mode and hooks it uses in this guest.
    twmon_says: Option<String>,
    /// Host wall time of the whole boot, and guest uptime when /init began.
    took: Duration,
    init_at: Option<f64>,
    log: PathBuf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    passed: u32,
    failed: u32,
    /// Tests whose result never appeared (a crash, the timeout).
    missing: u32,
}

pub fn run(args: &VmArgs) -> Result<()> {
    let start = Instant::now();
    let series = pick(SERIES, &args.kernels, "kernel series")?;
    let modes = pick(MODES, &args.modes, "mode")?;
    if !is_root() {
        eprintln!("xtask: vm-test: note: not root; installing packages may fail");
    }
    setup::debian_packages(is_root(), VM_PACKAGES)?;

    let cache = cache_dir()?;
    let mut kernels = Vec::new();
    for s in &series {
        kernels.push(kernel(s, &cache)?);
    }
    let prep = Instant::now();
    let twmon = dist::build_static(true)?;
    let tests = build_test_binaries()?;
    check_test_lists(&tests)?;
    let work = crate::cmd::target_dir().join("vm");
    let base = base_initramfs(&work, &twmon, &tests)?;
    eprintln!(
        "xtask: vm-test: kernels, binaries and initramfs ready in {:.0} s (of which builds and \
         packing {:.0} s)",
        start.elapsed().as_secs_f64(),
        prep.elapsed().as_secs_f64()
    );

    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let mut cells = Vec::new();
    for k in &kernels {
        let initrd = kernel_initramfs(&work, &base, k)?;
        for mode in &modes {
            cells.push(boot(
                k,
                mode,
                &initrd,
                &logs,
                Duration::from_secs(args.timeout),
                args.repeat,
            )?);
        }
    }
    print_table(&cells);
    eprintln!(
        "xtask: vm-test: {} boots in {:.0} s in all",
        cells.len(),
        start.elapsed().as_secs_f64()
    );
    let bad: Vec<String> = cells
        .iter()
        .filter(|c| c.verdict != Verdict::Passed)
        .map(|c| format!("{} {}", c.release, c.mode))
        .collect();
    if !bad.is_empty() {
        bail!("kernel matrix: failed in {}", bad.join(", "));
    }
    Ok(())
}

/// `all` filtered by `asked` (every one when nothing is asked).
fn pick(all: &[&'static str], asked: &[String], what: &str) -> Result<Vec<&'static str>> {
    if asked.is_empty() {
        return Ok(all.to_vec());
    }
    asked
        .iter()
        .map(|a| {
            all.iter().copied().find(|x| x == a).with_context(|| {
                format!("unknown {what} {a:?}: expected one of {}", all.join(", "))
            })
        })
        .collect()
}

fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    let dir = base.join("twmon").join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// Kernels --------------------------------------------------------------------

/// Whether `name` is a cloud kernel image package of `series`
/// (linux-image-6.1.0-56-cloud-amd64-unsigned,
/// linux-image-6.12.117+deb12-cloud-amd64-unsigned).
fn is_series_image(name: &str, series: &str, flavour: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
        .is_some_and(|r| r.starts_with('.'))
        && name.ends_with(&format!("-{flavour}-unsigned"))
        && !name.contains("-rt-")
}

/// Every run of digits of a package name, as numbers: within one series the
/// names differ only in those, so comparing them picks the newest.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// The newest image of `series` among `apt-cache search` output lines.
fn newest(search: &str, series: &str, flavour: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_series_image(n, series, flavour))
        .max_by_key(|n| version_key(n))
        .map(str::to_owned)
}

fn apt_search() -> Result<String> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\..*-amd64-unsigned$",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running apt-cache search (is this Debian?)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest kernel of `series` on the mirror, unpacked in the cache
/// (downloaded only when the cache lacks it).
fn kernel(series: &'static str, cache: &Path) -> Result<Kernel> {
    let mut search = apt_search()?;
    if newest(&search, series, "cloud-amd64").is_none()
        && newest(&search, series, "amd64").is_none()
    {
        // A fresh machine may have empty package lists.
        run_checked(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg("update"),
        )?;
        search = apt_search()?;
    }
    // The cloud flavour is a third of the size and has what the tests need.
    let package = newest(&search, series, "cloud-amd64")
        .or_else(|| newest(&search, series, "amd64"))
        .with_context(|| {
            format!("the apt mirror has no linux-image-{series}.*-amd64-unsigned package")
        })?;
    let dir = cache.join("kernels").join(&package);
    if !dir.join("ready").is_file() {
        fetch_kernel(&package, &dir)?;
    } else {
        eprintln!("xtask: vm-test: {package} cached in {}", dir.display());
    }
    // Older kernels of this series are of no more use.
    if let Ok(entries) = fs::read_dir(cache.join("kernels")) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != package && is_series_image(&n, series, "cloud-amd64") || n.ends_with(".tmp") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let release = fs::read_to_string(dir.join("release"))?.trim().to_string();
    let modules = SOCK_DIAG
        .iter()
        .map(|m| dir.join(format!("{m}.ko")))
        .filter(|p| p.is_file())
        .collect();
    Ok(Kernel {
        series,
        package,
        vmlinuz: dir.join("vmlinuz"),
        release,
        modules,
    })
}

/// sock_diag, a module in Debian's kernels, in load order.
const SOCK_DIAG: &[&str] = &["inet_diag", "tcp_diag", "udp_diag"];

/// `apt-get download` + `dpkg -x`, keeping only the kernel image, its
/// config and the sock_diag modules (uncompressed) in `dir`.
fn fetch_kernel(package: &str, dir: &Path) -> Result<()> {
    let t = Instant::now();
    let tmp = dir.with_file_name(format!("{package}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&tmp)?;
    eprintln!("xtask: vm-test: downloading {package} (not installed: unpacked into the cache)");
    run_checked(
        Command::new("apt-get")
            .current_dir(&tmp)
            // The download lands in a folder of root's; apt's sandbox user
            // could not write there.
            .args(["-o", "APT::Sandbox::User=root", "download", package]),
    )?;
    let deb = fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = tmp.join("root");
    run_checked(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    let keep = tmp.join("keep");
    fs::create_dir_all(&keep)?;
    fs::copy(&vmlinuz, keep.join("vmlinuz"))?;
    let _ = fs::copy(boot.join(format!("config-{release}")), keep.join("config"));
    let net = root
        .join("lib/modules")
        .join(&release)
        .join("kernel/net/ipv4");
    for m in SOCK_DIAG {
        let plain = net.join(format!("{m}.ko"));
        let xz = net.join(format!("{m}.ko.xz"));
        let out = keep.join(format!("{m}.ko"));
        if plain.is_file() {
            fs::copy(&plain, &out)?;
        } else if xz.is_file() {
            let data = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .context("running xz")?;
            if !data.status.success() {
                bail!("xz -dc {} failed", xz.display());
            }
            fs::write(&out, data.stdout)?;
        }
        // Neither: built into the kernel, nothing to load.
    }
    fs::write(keep.join("release"), format!("{release}\n"))?;
    fs::write(keep.join("ready"), format!("{package}\n"))?;
    fs::rename(&keep, dir)?;
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "xtask: vm-test: {package} ({release}) unpacked into {} in {:.1} s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

// Binaries ---------------------------------------------------------------------

/// The static (musl) kernel test binaries of GUEST_TESTS, by name.
fn build_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    eprintln!(
        "xtask: vm-test: building the kernel test binaries (static, {})",
        dist::MUSL_TARGET
    );
    let mut cmd = cargo();
    cmd.current_dir(crate::cmd::workspace_root())
        .env("TWMON_REQUIRE_EBPF", "1")
        .args(["test", "--release", "--package", "monitor", "--no-run"])
        .args(["--target", dist::MUSL_TARGET])
        .args(["--message-format", "json-render-diagnostics"]);
    for (bin, _) in GUEST_TESTS {
        cmd.args(["--test", bin]);
    }
    let shown = display(&cmd);
    eprintln!("xtask: $ {shown}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    let found = test_executables(&String::from_utf8_lossy(&out.stdout));
    let mut bins = Vec::new();
    for (name, _) in GUEST_TESTS {
        let path = found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("cargo built no test executable {name}"))?;
        dist::check_static(&path)?;
        bins.push((name.to_string(), path));
    }
    Ok(bins)
}

/// (target name, executable) of every test target in cargo's JSON messages.
fn test_executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_string(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// Every test of the guest binaries is either run in the guests or left
/// out by name with a reason (the binaries are static: they list their
/// tests on the host too).
fn check_test_lists(bins: &[(String, PathBuf)]) -> Result<()> {
    for (name, path) in bins {
        let out = Command::new(path)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("running {} --list", path.display()))?;
        let listed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned)
            .collect();
        let run: BTreeSet<String> = GUEST_TESTS
            .iter()
            .filter(|(b, _)| b == name)
            .flat_map(|(_, ts)| ts.iter().map(|t| t.to_string()))
            .collect();
        let out_: BTreeSet<String> = NOT_IN_GUEST
            .iter()
            .filter(|(b, _, _)| b == name)
            .map(|(_, t, _)| t.to_string())
            .collect();
        let unknown: Vec<&String> = run.union(&out_).filter(|t| !listed.contains(*t)).collect();
        if !unknown.is_empty() {
            bail!("xtask/src/vm.rs names tests that {name} does not have: {unknown:?}");
        }
        let unclassified: Vec<&String> = listed
            .iter()
            .filter(|t| !run.contains(*t) && !out_.contains(*t))
            .collect();
        if !unclassified.is_empty() {
            bail!(
                "{name} has tests that xtask/src/vm.rs neither runs in the guests nor leaves out \
                 with a reason: {unclassified:?} (add them to GUEST_TESTS or NOT_IN_GUEST)"
            );
        }
        for (_, t, why) in NOT_IN_GUEST.iter().filter(|(b, _, _)| b == name) {
            eprintln!("xtask: vm-test: not in the guests: {name}::{t}: {why}");
        }
    }
    Ok(())
}

// Initramfs -------------------------------------------------------------------

const INIT: &str = include_str!("../vm/init.sh");
const DEBUG_EXIT_C: &str = include_str!("../vm/debug-exit.c");
const BUSYBOX: &str = "/bin/busybox";

/// The part every guest shares: busybox, /init, twmon, the test binaries
/// and their list; an uncompressed cpio (nothing to inflate at boot).
fn base_initramfs(work: &Path, twmon: &Path, tests: &[(String, PathBuf)]) -> Result<PathBuf> {
    let t = Instant::now();
    let root = work.join("base");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin",
        "twmon/tests",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "run",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    dist::check_static(Path::new(BUSYBOX)).context(
        "the guests need a static busybox (Debian: busybox-static, installed by this command)",
    )?;
    copy_exec(Path::new(BUSYBOX), &root.join("bin/busybox"))?;
    fs::write(root.join("init"), INIT)?;
    set_exec(&root.join("init"))?;
    copy_exec(twmon, &root.join("twmon/twmon"))?;

    let src = work.join("debug-exit.c");
    fs::write(&src, DEBUG_EXIT_C)?;
    run_checked(
        Command::new("musl-gcc")
            .args(["-static", "-O2", "-o"])
            .arg(root.join("twmon/debug-exit"))
            .arg(&src),
    )
    .context("building the guest's debug-exit helper (musl-gcc: Debian musl-tools)")?;

    let mut list = String::from("# BINARY TEST... (run with --test-threads=1 --exact)\n");
    for (name, path) in tests {
        // Without their debug info (50 MB -> 2 MB each; symbols stay for
        // backtraces). twmon itself goes in as built, byte for byte.
        let dest = root.join("twmon/tests").join(name);
        run_checked(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&dest)
                .arg(path),
        )
        .context("stripping a test binary (strip: Debian binutils)")?;
        set_exec(&dest)?;
        let names = GUEST_TESTS
            .iter()
            .find(|(b, _)| b == name)
            .map(|(_, ts)| ts.join(" "))
            .unwrap_or_default();
        list += &format!("{name} {names}\n");
    }
    fs::write(root.join("twmon/tests.list"), list)?;
    let out = work.join("base.cpio");
    cpio(&root, &out, false)?;
    eprintln!(
        "xtask: vm-test: initramfs base {} ({} MB) in {:.1} s",
        out.display(),
        fs::metadata(&out)?.len() >> 20,
        t.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The base plus this kernel's modules, appended as a gzipped cpio (the
/// kernel reads concatenated archives; a plain one after a gzipped one would
/// be ignored, so the compressed part goes last).
fn kernel_initramfs(work: &Path, base: &Path, k: &Kernel) -> Result<PathBuf> {
    let root = work.join(format!("modules-{}", k.release));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("lib/modules"))?;
    for m in &k.modules {
        fs::copy(m, root.join("lib/modules").join(m.file_name().unwrap()))?;
    }
    let mods = work.join(format!("modules-{}.cpio.gz", k.release));
    cpio(&root, &mods, true)?;
    let initrd = work.join(format!("initrd-{}", k.release));
    let mut data = fs::read(base)?;
    data.extend(fs::read(&mods)?);
    fs::write(&initrd, data)?;
    Ok(initrd)
}

/// Pack `dir` as a newc cpio (owned by root), gzipped if asked.
fn cpio(dir: &Path, out: &Path, gzip: bool) -> Result<()> {
    use std::io::Write;
    let mut names = Vec::new();
    list_tree(dir, Path::new("."), &mut names)?;
    names.sort();
    let plain = if gzip {
        out.with_extension("")
    } else {
        out.to_path_buf()
    };
    let mut cmd = Command::new("cpio");
    cmd.current_dir(dir)
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&plain)?);
    let mut child = cmd
        .spawn()
        .context("running cpio (Debian: cpio, installed by this command)")?;
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    child.stdin.take().unwrap().write_all(list.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("cpio in {} failed ({st})", dir.display());
    }
    if gzip {
        // `out` is `X.gz` and gzip turns X into X.gz.
        run_checked(Command::new("gzip").args(["-6", "-f", "-n"]).arg(&plain))?;
    }
    Ok(())
}

/// Every path under `dir` (as `./a`, `./a/b`), parents first.
fn list_tree(dir: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in fs::read_dir(dir.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        out.push(r.to_string_lossy().into_owned());
        if e.file_type()?.is_dir() {
            list_tree(dir, &r, out)?;
        }
    }
    Ok(())
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_exec(to)
}

fn set_exec(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

// Boots -------------------------------------------------------------------------

fn boot(
    k: &Kernel,
    mode: &'static str,
    initrd: &Path,
    logs: &Path,
    timeout: Duration,
    repeat: u32,
) -> Result<Cell> {
    let tag = format!("{} {mode}", k.series);
    let log = logs.join(format!("{}-{mode}.log", k.release));
    let qemu_err = logs.join(format!("{}-{mode}.qemu-stderr", k.release));
    let _ = fs::remove_file(&log);
    let mut cmd = Command::new("qemu-system-x86_64");
    // thread=single: QEMU 7.2's multi-threaded TCG (one host thread per
    // vCPU) leaves the other vCPU running stale translations of kernel code
    // the kernel has just patched (jump labels, static calls of tracepoints
    // being attached or detached). Seen here on 6.12: sys_exit probes that
    // never fired for some processes, and "Oops: int3" in call_timer_fn
    // while a tracepoint was detached. One thread for both vCPUs is coherent
    // and, on a 2-core host, hardly slower.
    cmd.args(["-accel", "tcg,thread=single", "-m", "2G", "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 loglevel=4 TWMON_TEST_MODE={mode} TWMON_TEST_REPEAT={repeat}"
        ));
    eprintln!(
        "xtask: vm-test: [{tag}] booting {} ({})",
        k.release, k.package
    );
    eprintln!("xtask: $ {}", display(&cmd));
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&qemu_err)?)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian: qemu-system-x86)")?;
    let mut follow = Follow::default();
    let status = loop {
        follow.show(&log, &tag);
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    follow.show(&log, &tag);
    let took = t.elapsed();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let verdict = match status {
        None => Verdict::TimedOut,
        Some(st) => match st.code() {
            Some(1) => Verdict::Passed,
            Some(3) => Verdict::TestsFailed,
            Some(5) => Verdict::GuestError(
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix("TWMON-VM ERROR "))
                    .unwrap_or("see the log")
                    .to_string(),
            ),
            other => Verdict::NoStatus(other),
        },
    };
    let expected: u32 = GUEST_TESTS.iter().map(|(_, t)| t.len() as u32).sum::<u32>() * repeat;
    let counts = counts(&lines, expected);
    // A guest that says it passed must have run every test.
    let verdict = if verdict == Verdict::Passed && counts.passed != expected {
        Verdict::TestsFailed
    } else {
        verdict
    };
    let cell = Cell {
        series: k.series,
        release: k.release.clone(),
        mode,
        twmon_says: lines
            .iter()
            .find_map(|l| l.strip_prefix("TWMON-VM TWMON twmon: watching ("))
            .map(|s| s.trim_end_matches(')').to_string()),
        init_at: lines
            .iter()
            .find_map(|l| l.strip_prefix("TWMON-VM KERNEL "))
            .and_then(|l| l.split("UPTIME ").nth(1))
            .and_then(|u| u.split_whitespace().next()?.parse().ok()),
        verdict,
        counts,
        took,
        log: log.clone(),
    };
    eprintln!(
        "xtask: vm-test: [{tag}] {} in {:.1} s ({} passed, {} failed{}); log {}",
        describe(&cell.verdict),
        took.as_secs_f64(),
        counts.passed,
        counts.failed,
        if counts.missing > 0 {
            format!(", {} without a result", counts.missing)
        } else {
            String::new()
        },
        log.display()
    );
    if cell.verdict != Verdict::Passed {
        let tail = lines.len().saturating_sub(80);
        eprintln!("xtask: vm-test: [{tag}] last lines of the serial console:");
        for l in &lines[tail..] {
            eprintln!("    {l}");
        }
        if let Ok(e) = fs::read_to_string(&qemu_err) {
            for l in e.lines().filter(|l| !l.trim().is_empty()) {
                eprintln!("    qemu: {l}");
            }
        }
    }
    Ok(cell)
}

/// Echoes the progress lines of a growing serial log.
#[derive(Default)]
struct Follow {
    offset: u64,
    partial: String,
}

impl Follow {
    fn show(&mut self, log: &Path, tag: &str) {
        let Ok(mut f) = fs::File::open(log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let line = line.trim_end();
            if is_progress(line) {
                eprintln!("xtask: vm-test: [{tag}] {line}");
            }
        }
    }
}

fn is_progress(line: &str) -> bool {
    line.starts_with("TWMON-VM ")
        || line.starts_with("test result:")
        || (line.starts_with("test ") && (line.ends_with(" ok") || line.ends_with(" FAILED")))
        || line.starts_with("scenario ")
        || line.contains("Kernel panic")
}

/// Passed and failed tests from libtest's "test result:" lines.
fn counts(lines: &[&str], expected: u32) -> Counts {
    let mut c = Counts::default();
    for l in lines {
        let Some(rest) = l.strip_prefix("test result: ") else {
            continue;
        };
        let num = |word: &str| -> u32 {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(word))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        c.passed += num(" passed");
        c.failed += num(" failed");
    }
    c.missing = expected.saturating_sub(c.passed + c.failed);
    c
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Passed => "passed".into(),
        Verdict::TestsFailed => "FAILED".into(),
        Verdict::GuestError(e) => format!("FAILED (guest: {e})"),
        Verdict::NoStatus(code) => format!(
            "FAILED (no status from the guest; QEMU exit {})",
            code.map_or("by signal".into(), |c| c.to_string())
        ),
        Verdict::TimedOut => "FAILED (timed out)".into(),
    }
}

fn print_table(cells: &[Cell]) {
    let mut out = String::from("\nkernel matrix (QEMU -accel tcg,thread=single, -smp 2, -m 2G)\n");
    out += &format!(
        "{:<28} {:<11} {:<34} {:>9} {:>8}  {}\n",
        "kernel", "mode", "result", "to /init", "boot", "twmon says"
    );
    for c in cells {
        let result = format!(
            "{} ({}/{} passed{})",
            describe(&c.verdict),
            c.counts.passed,
            c.counts.passed + c.counts.failed + c.counts.missing,
            if c.counts.failed > 0 {
                format!(", {} failed", c.counts.failed)
            } else {
                String::new()
            }
        );
        out += &format!(
            "{:<28} {:<11} {:<34} {:>9} {:>8}  {}\n",
            format!("{} ({})", c.release, c.series),
            c.mode,
            result,
            c.init_at.map_or("?".into(), |s| format!("{s:.1} s")),
            format!("{:.0} s", c.took.as_secs_f64()),
            c.twmon_says.as_deref().unwrap_or("-")
        );
    }
    for c in cells.iter().filter(|c| c.verdict != Verdict::Passed) {
        out += &format!("log of {} {}: {}\n", c.release, c.mode, c.log.display());
    }
    eprintln!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_image_of_each_series() {
        let search = "linux-image-6.1.0-47-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
            linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
            linux-image-6.1.0-56-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT\n\
            linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
            linux-image-6.12.107+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud\n\
            linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud\n\
            linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
            linux-image-6.12.99+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud\n";
        assert_eq!(
            newest(search, "6.1", "cloud-amd64").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64-unsigned")
        );
        assert_eq!(
            newest(search, "6.12", "cloud-amd64").as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(
            newest(search, "6.12", "amd64").as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(newest(search, "6.6", "cloud-amd64"), None);
    }

    #[test]
    fn counts_come_from_libtest_summaries() {
        let lines = [
            "test field_scenarios_report_every_failed_bind ... ok",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 20.1s",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.0s",
        ];
        assert_eq!(
            counts(&lines, 6),
            Counts {
                passed: 4,
                failed: 1,
                missing: 1
            }
        );
    }

    #[test]
    fn test_targets_are_read_from_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"twmon"},"profile":{"test":false},"executable":"/t/twmon"}
{"reason":"compiler-artifact","target":{"name":"kernel_watch"},"profile":{"test":true},"executable":"/t/deps/kernel_watch-abc"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(msgs),
            vec![(
                "kernel_watch".to_string(),
                PathBuf::from("/t/deps/kernel_watch-abc")
            )]
        );
    }

    #[test]
    fn every_guest_test_list_is_disjoint_from_the_left_out_ones() {
        for (bin, tests) in GUEST_TESTS {
            for t in *tests {
                assert!(
                    !NOT_IN_GUEST.iter().any(|(b, n, _)| b == bin && n == t),
                    "{bin}::{t} is both run and left out"
                );
            }
        }
    }
}
