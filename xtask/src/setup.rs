//! `cargo xtask setup`: check first, install only what is missing.
//!
//! Targets a fresh Debian 12 machine run as root. With everything present it
//! only runs a few quick probes (dpkg-query, rustup, bpf-linker --version).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo, is_root, probe, run_checked};

/// Debian packages, and why twmon needs each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "needed to build bpf-linker"),
    ("bpftool", "inspects loaded eBPF programs and maps"),
    ("iproute2", "ip/ss, used by the end-to-end tests"),
    ("tmux", "used by the end-to-end tests"),
    ("procps", "ps/pgrep, used by the end-to-end tests"),
    (
        "util-linux",
        "setpriv/unshare/nsenter, used by the end-to-end tests",
    ),
    (
        "prometheus",
        "a real Prometheus server scrapes `twmon serve` in its end-to-end test",
    ),
    (
        "musl-tools",
        "musl-gcc compiles the C dependencies (zstd-sys) of the static binary (xtask dist)",
    ),
    (
        "debootstrap",
        "a fresh Debian to install the .deb in (xtask dist --verify)",
    ),
];

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX_DEFAULT: &str = "/usr/lib/llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    let start = Instant::now();
    let root = is_root();

    debian_packages(root, DEBIAN_PACKAGES)?;
    nightly_rust_src()?;
    bpf_linker()?;
    musl_target()?;
    tracefs(root);

    eprintln!(
        "xtask: setup: done in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Install (as root, with apt-get) those of `packages` that are missing:
/// `(package, why twmon needs it)`. Also used by `vm-test` for its own.
pub fn debian_packages(root: bool, packages: &[(&str, &str)]) -> Result<()> {
    let wanted: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
    let Some(missing) = missing_debian_packages(&wanted) else {
        eprintln!(
            "xtask: setup: warning: dpkg-query not found (not Debian?); skipping the package \
             check: make sure these are installed: {}",
            wanted.join(" ")
        );
        return Ok(());
    };
    if missing.is_empty() {
        eprintln!(
            "xtask: setup: Debian packages present: {}",
            wanted.join(" ")
        );
        return Ok(());
    }
    if !root {
        bail!(
            "missing Debian packages {}: install them as root with `apt-get install -y \
             --no-install-recommends {}` (or run `cargo xtask setup` as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    for pkg in &missing {
        let why = packages
            .iter()
            .find(|(p, _)| p == pkg)
            .map_or("", |(_, w)| *w);
        eprintln!("xtask: setup: installing {pkg} with apt-get ({why})");
    }
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )
    .context("apt-get update failed")?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .context("installing Debian packages failed")?;
    let still = missing_debian_packages(&wanted).unwrap_or_default();
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still not installed: {}",
            still.join(", ")
        );
    }
    Ok(())
}

/// The packages of `wanted` that dpkg does not report as installed, or None
/// if dpkg-query cannot be run at all.
fn missing_debian_packages(wanted: &[&str]) -> Option<Vec<String>> {
    // dpkg-query exits 1 when some package is unknown but still prints the
    // others, so read stdout whatever the exit status.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\n")
        .args(wanted)
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Some(
        wanted
            .iter()
            .filter(|p| !dpkg_says_installed(&listing, p))
            .map(|p| p.to_string())
            .collect(),
    )
}

/// Whether `dpkg-query -W -f='${Package} ${Status}\n'` output lists `pkg`
/// as installed (status "install ok installed", "hold ok installed"; not
/// "unknown ok not-installed", "deinstall ok config-files").
fn dpkg_says_installed(listing: &str, pkg: &str) -> bool {
    listing.lines().any(|line| {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let name = name.split(':').next().unwrap_or(name); // foo:amd64
        name == pkg && words.last() == Some("installed")
    })
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = probe(Command::new("rustup").args(["toolchain", "list"])).context(
        "`rustup toolchain list` failed: is rustup (https://rustup.rs) installed and on PATH?",
    )?;
    if !has_toolchain(&toolchains, NIGHTLY) {
        eprintln!(
            "xtask: setup: installing the rust {NIGHTLY} toolchain with rust-src \
             (the eBPF crate is built with -Z build-std=core)"
        );
        return run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("installing the nightly toolchain failed");
    }
    let components = probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if has_component(&components, "rust-src") {
        eprintln!("xtask: setup: rust {NIGHTLY} toolchain with rust-src present");
        return Ok(());
    }
    eprintln!(
        "xtask: setup: adding rust-src to the {NIGHTLY} toolchain (the eBPF crate is built \
         with -Z build-std=core)"
    );
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("adding rust-src to the nightly toolchain failed")
}

/// Whether `rustup toolchain list` output has the channel `name` for the
/// host ("nightly-x86_64-unknown-linux-gnu (active)"), not a dated one
/// ("nightly-2025-01-01-x86_64-...").
fn has_toolchain(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| {
            t == name
                || t.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// Whether `rustup component list --installed` output has `component`
/// ("rust-src", or "rust-src (installed)" from older rustup).
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| t == component)
}

fn bpf_linker() -> Result<()> {
    let found = installed_bpf_linker();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        eprintln!("xtask: setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    let llvm_prefix = env::var_os("LLVM_PREFIX")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LLVM_PREFIX_DEFAULT));
    if !llvm_prefix.join("bin/llvm-config").is_file() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} is needed and building it needs LLVM 22 at {} \
             (Debian: apt-get install llvm-22-dev; or set LLVM_PREFIX)",
            llvm_prefix.display()
        );
    }
    match &found {
        None => eprintln!(
            "xtask: setup: installing bpf-linker {BPF_LINKER_VERSION} with cargo install \
             (links the eBPF object; takes about a minute)"
        ),
        Some(v) => eprintln!(
            "xtask: setup: bpf-linker on PATH is {v}, installing {BPF_LINKER_VERSION} with \
             cargo install (takes about a minute)"
        ),
    }
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.env("LLVM_PREFIX", &llvm_prefix)
            .arg("install")
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"));
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features", "llvm-22"]);
        run_checked(&mut cmd)
    };
    if let Err(err) = install(true) {
        eprintln!("xtask: setup: {err:#}; retrying without --locked");
        install(false).context("installing bpf-linker failed")?;
    }
    match installed_bpf_linker() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        other => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` on PATH now \
             reports {}: is another bpf-linker earlier on PATH than {}?",
            other.as_deref().unwrap_or("nothing"),
            cargo_bin_hint().display()
        ),
    }
}

/// The Rust standard library for the static binary's target (`cargo xtask
/// dist`), added to the toolchain cargo uses here.
fn musl_target() -> Result<()> {
    let target = crate::dist::MUSL_TARGET;
    let installed =
        probe(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == target) {
        eprintln!("xtask: setup: rust target {target} present");
        return Ok(());
    }
    eprintln!("xtask: setup: adding the rust target {target} (the static binary of xtask dist)");
    run_checked(Command::new("rustup").args(["target", "add", target]))
        .with_context(|| format!("adding the rust target {target} failed"))
}

fn cargo_bin_hint() -> PathBuf {
    env::var_os("PATH")
        .and_then(|p| env::split_paths(&p).next())
        .unwrap_or_else(|| PathBuf::from("~/.cargo/bin"))
}

fn installed_bpf_linker() -> Option<String> {
    let out = probe(Command::new("bpf-linker").arg("--version"))?;
    parse_bpf_linker_version(&out).map(str::to_owned)
}

/// "bpf-linker 0.13.0" -> "0.13.0".
fn parse_bpf_linker_version(out: &str) -> Option<&str> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == "bpf-linker").then(|| words.next())?
    })
}

fn tracefs(root: bool) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if tracefs_mounted(&mounts) {
        eprintln!("xtask: setup: tracefs mounted at {TRACEFS}");
        return;
    }
    if !root {
        eprintln!(
            "xtask: setup: tracefs is not mounted at {TRACEFS} (twmon mounts it itself when \
             run as root)"
        );
        return;
    }
    if !Path::new(TRACEFS).is_dir() {
        eprintln!("xtask: setup: warning: {TRACEFS} does not exist; not mounting tracefs");
        return;
    }
    eprintln!("xtask: setup: mounting tracefs at {TRACEFS} (tracepoint ids are read there)");
    if let Err(err) = run_checked(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS])) {
        eprintln!("xtask: setup: warning: {err:#} (twmon mounts it itself; continuing)");
    }
}

/// Whether /proc/self/mounts has a tracefs mounted at /sys/kernel/tracing.
fn tracefs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(TRACEFS) && fstype == Some("tracefs")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        let listing = "llvm-22-dev install ok installed\n\
                       tmux deinstall ok config-files\n\
                       procps unknown ok not-installed\n\
                       bpftool hold ok installed\n\
                       util-linux:amd64 install ok installed\n\
                       iproute2 install ok half-configured\n";
        assert!(dpkg_says_installed(listing, "llvm-22-dev"));
        assert!(dpkg_says_installed(listing, "bpftool"));
        assert!(dpkg_says_installed(listing, "util-linux"));
        assert!(!dpkg_says_installed(listing, "tmux"));
        assert!(!dpkg_says_installed(listing, "procps"));
        assert!(!dpkg_says_installed(listing, "iproute2"));
        assert!(!dpkg_says_installed(listing, "llvm-22"));
        assert!(!dpkg_says_installed("", "tmux"));
    }

    /// Runs the real dpkg-query with a package that cannot exist.
    #[test]
    fn dpkg_query_reports_fake_package_missing() {
        let Some(missing) =
            missing_debian_packages(&["dpkg", "twmon-xtask-no-such-package", "coreutils"])
        else {
            eprintln!("dpkg-query not available; skipping");
            return;
        };
        assert_eq!(missing, vec!["twmon-xtask-no-such-package".to_string()]);
    }

    #[test]
    fn toolchain_list_parsing() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_toolchain(list, "nightly"));
        assert!(has_toolchain(list, "stable"));
        assert!(!has_toolchain(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n",
            "nightly"
        ));
        assert!(!has_toolchain("no installed toolchains\n", "nightly"));
        assert!(has_toolchain("nightly (active)\n", "nightly"));
    }

    #[test]
    fn component_list_parsing() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component("rust-src (installed)\n", "rust-src"));
        assert!(!has_component(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }

    #[test]
    fn bpf_linker_version_parsing() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.9.14\n"),
            Some("0.9.14")
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker\n"), None);
        assert_eq!(parse_bpf_linker_version("something else 0.13.0\n"), None);
    }

    #[test]
    fn tracefs_mount_parsing() {
        let mounts = "proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n";
        assert!(tracefs_mounted(mounts));
        assert!(!tracefs_mounted(
            "debugfs /sys/kernel/debug debugfs rw 0 0\ntracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
        ));
    }
}
