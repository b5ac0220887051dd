//! Running commands, and the build / run / test / lint subcommands.

use std::env;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup;

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin` (`~/.cargo/bin`),
/// which a fresh root shell may not have on PATH: put it first, for us and
/// for every command we run (aya-build looks bpf-linker up on PATH).
pub fn prepend_cargo_bin_to_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let old = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&old).next().as_deref() == Some(bin.as_path()) {
        return;
    }
    let paths = std::iter::once(bin.clone()).chain(env::split_paths(&old).filter(|p| *p != bin));
    if let Ok(new) = env::join_paths(paths) {
        // Single-threaded at this point (called first thing in main).
        env::set_var("PATH", new);
    }
}

fn cargo_bin_dir() -> Option<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home).join("bin")),
        _ => env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin")),
    }
}

/// The cargo that runs us (set by `cargo run`), so that `cargo +toolchain
/// xtask` keeps its toolchain; plain `cargo` otherwise.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Shell-like rendering of a command with its explicit environment.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    let program = Path::new(cmd.get_program());
    // Show `cargo`, not ~/.rustup/toolchains/.../bin/cargo.
    let program = if program.file_name().is_some_and(|n| n == "cargo") {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    words.push(program.into_owned());
    words.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '$') {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a.into_owned()
        }
    }));
    words.join(" ")
}

/// Print and run `cmd`; fail, naming the command, unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd.status().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            anyhow::anyhow!(
                "`{shown}`: {} not found on PATH",
                cmd.get_program().to_string_lossy()
            )
        } else {
            anyhow::Error::new(e).context(format!("could not start `{shown}`"))
        }
    })?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Run `cmd` quietly and return its stdout, or None if it could not be
/// started or exited non-zero. For probes such as `bpf-linker --version`.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// Effective UID from /proc/self/status (`Uid: real effective saved fs`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Where cargo puts its output: `CARGO_TARGET_DIR` / `CARGO_BUILD_TARGET_DIR`
/// (relative to the current directory), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let from_env = ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .filter_map(env::var_os)
        .find(|v| !v.is_empty());
    match from_env {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// `cargo build -p monitor` with the eBPF object required; returns the path
/// of the twmon binary. Does not run setup.
pub fn build(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    eprintln!("xtask: building twmon ({profile}) with its eBPF object (TWMON_REQUIRE_EBPF=1)");
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .env("TWMON_REQUIRE_EBPF", "1")
        .args(["build", "--package", "monitor"]);
    if release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd).context("building twmon failed")?;
    let bin = target_dir().join(profile).join("twmon");
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    eprintln!("xtask: built {}", bin.display());
    Ok(bin)
}

/// Build, then replace this process with twmon (through `sudo -E` when not
/// root).
pub fn run(release: bool, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;

    setup::run()?;
    let bin = build(release)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if probe(Command::new("sudo").arg("--version")).is_some() {
        eprintln!("xtask: twmon needs root to load eBPF programs; running it through sudo -E");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    } else {
        bail!(
            "twmon needs root to load eBPF programs and sudo is not installed: run `{}` as root",
            bin.display()
        );
    };
    cmd.args(args);
    eprintln!("xtask: $ {}", display(&cmd));
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!("could not exec `{}`", display(&cmd))))
}

/// One step of `test` / `lint`, for the closing summary.
struct Steps(Vec<(&'static str, bool)>);

impl Steps {
    fn record(&mut self, name: &'static str, result: Result<()>) -> bool {
        if let Err(err) = &result {
            eprintln!("xtask: error: {err:#}");
        }
        self.0.push((name, result.is_ok()));
        result.is_ok()
    }

    fn finish(self, what: &str) -> Result<()> {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, ok)| format!("{name} {}", if *ok { "ok" } else { "FAILED" }))
            .collect();
        let all_ok = self.0.iter().all(|(_, ok)| *ok);
        let verdict = if all_ok { "all passed" } else { "FAILED" };
        eprintln!("xtask {what}: {verdict} ({})", parts.join(", "));
        if !all_ok {
            let failed: Vec<&str> = self
                .0
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| *n)
                .collect();
            bail!("{what}: failed step(s): {}", failed.join(", "));
        }
        Ok(())
    }
}

pub fn test(extra: &[String]) -> Result<()> {
    let mut steps = Steps(Vec::new());
    if steps.record("setup", setup::run()) {
        if !is_root() {
            eprintln!(
                "xtask: note: not root; the kernel end-to-end tests in monitor/tests load eBPF \
                 programs and need root"
            );
        }
        eprintln!("xtask: running the workspace tests (release, eBPF object required)");
        let mut cmd = cargo();
        cmd.current_dir(workspace_root())
            .env("TWMON_REQUIRE_EBPF", "1")
            .args(["test", "--release"]);
        // `--workspace` would override a `-p PKG` given by the caller.
        if !selects_packages(extra) {
            cmd.arg("--workspace");
        }
        cmd.args(extra);
        steps.record("cargo test", run_checked(&mut cmd));
        if let Some(why) = skip_vm_matrix(extra) {
            eprintln!("xtask: not running the kernel matrix (cargo xtask vm-test): {why}");
        } else {
            steps.record(
                "kernel matrix",
                crate::vm::run(&crate::vm::VmArgs::default()),
            );
        }
    }
    steps.finish("test")
}

/// Why `test` leaves out the QEMU kernel matrix, if it does: a selection of
/// tests was given, or TWMON_VM=0 asks for it (e.g. on a machine without
/// the time for it, about ten minutes; `cargo xtask vm-test` runs it alone).
fn skip_vm_matrix(extra: &[String]) -> Option<&'static str> {
    if !extra.is_empty() {
        return Some("a selection of tests was given");
    }
    if env::var("TWMON_VM").as_deref() == Ok("0") {
        return Some("TWMON_VM=0");
    }
    None
}

/// Whether cargo arguments (before any `--`) pick packages themselves.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2))
}

pub fn lint() -> Result<()> {
    let mut steps = Steps(Vec::new());
    eprintln!("xtask: checking formatting");
    let mut fmt = cargo();
    fmt.current_dir(workspace_root())
        .args(["fmt", "--all", "--", "--check"]);
    steps.record("cargo fmt --check", run_checked(&mut fmt));

    eprintln!("xtask: running clippy over the default members (warnings are errors)");
    let mut clippy = cargo();
    clippy
        .current_dir(workspace_root())
        .args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    steps.record("cargo clippy", run_checked(&mut clippy));
    steps.finish("lint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        let status = "Uid:\t0\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn package_selection() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!selects_packages(&v(&[])));
        assert!(!selects_packages(&v(&["--test", "e2e", "--", "-p", "x"])));
        assert!(selects_packages(&v(&["-p", "monitor"])));
        assert!(selects_packages(&v(&["-pmonitor"])));
        assert!(selects_packages(&v(&[
            "--package=monitor",
            "--",
            "--nocapture"
        ])));
    }

    #[test]
    fn display_shows_env_and_quotes() {
        let mut cmd = Command::new("/root/.rustup/toolchains/x/bin/cargo");
        cmd.env("A", "1").args(["build", "a b", ""]);
        assert_eq!(display(&cmd), "A=1 cargo build 'a b' ''");
    }
}
