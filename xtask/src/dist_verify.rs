//! `cargo xtask dist --verify`: the .deb on a fresh Debian.
//!
//! A minimal Debian 12 (`debootstrap --variant=minbase bookworm`, made once
//! and kept as a tarball in ~/.cache/twmon) is unpacked into a new
//! directory; inside it, as a chroot with /proc mounted, the .deb is
//! installed with dpkg, `twmon --version` and `twmon check` run, the man page,
//! completions and unit are where the package says, and `dpkg -r` removes
//! it again. Needs root (chroot, mount) and, the first time, the Debian
//! mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd::{is_root, run_checked};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Files the package must install.
const EXPECTED: &[&str] = &[
    "/usr/bin/twmon",
    "/usr/share/man/man1/twmon.1.gz",
    "/usr/share/man/man1/twmon-check.1.gz",
    "/usr/share/bash-completion/completions/twmon",
    "/usr/share/zsh/vendor-completions/_twmon",
    "/usr/share/fish/vendor_completions.d/twmon.fish",
    "/usr/lib/systemd/system/twmon.service",
    "/usr/share/doc/twmon/copyright",
];

pub fn run(deb: &Path) -> Result<()> {
    if !is_root() {
        bail!("--verify needs root (it unpacks a Debian system and chroots into it)");
    }
    let tarball = base_tarball()?;
    let root = deb
        .parent()
        .context("the .deb has no directory")?
        .join("verify-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    eprintln!(
        "xtask: verify: unpacking a fresh {SUITE} into {}",
        root.display()
    );
    run_checked(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&root),
    )?;
    let result = {
        let _proc = Mount::proc(&root)?;
        in_chroot(&root, deb)
    };
    // Keep the tree for a look when something failed.
    if result.is_ok() {
        fs::remove_dir_all(&root)?;
    } else {
        eprintln!("xtask: verify: left {} for inspection", root.display());
    }
    result
}

/// ~/.cache/twmon/debian-bookworm-minbase.tar, made by debootstrap once.
fn base_tarball() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let cache = PathBuf::from(home).join(".cache/twmon");
    let tarball = cache.join(format!("debian-{SUITE}-minbase.tar"));
    if tarball.is_file() {
        eprintln!("xtask: verify: using {}", tarball.display());
        return Ok(tarball);
    }
    fs::create_dir_all(&cache)?;
    let tree = cache.join(format!("debian-{SUITE}-minbase.tmp"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    eprintln!("xtask: verify: making a minimal {SUITE} with debootstrap (once; a minute or two)");
    run_checked(
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&tree)
            .arg(MIRROR),
    )
    .context("debootstrap failed (Debian package debootstrap; `cargo xtask setup` installs it)")?;
    let partial = cache.join(format!("debian-{SUITE}-minbase.tar.part"));
    run_checked(
        Command::new("tar")
            .arg("-cf")
            .arg(&partial)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    )?;
    fs::rename(&partial, &tarball)?;
    fs::remove_dir_all(&tree)?;
    Ok(tarball)
}

/// /proc mounted inside the tree for as long as this lives.
struct Mount(PathBuf);

impl Mount {
    fn proc(root: &Path) -> Result<Mount> {
        let at = root.join("proc");
        run_checked(Command::new("mount").args(["-t", "proc", "proc"]).arg(&at))?;
        Ok(Mount(at))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = run_checked(Command::new("umount").arg("--lazy").arg(&self.0));
    }
}

fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    c
}

/// Run in the chroot, print what it said, return (exit code, stdout).
fn chroot_output(root: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    eprintln!("xtask: verify: (chroot) $ {}", args.join(" "));
    let out = chroot(root, args)
        .output()
        .with_context(|| format!("could not run chroot {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code(), stdout))
}

fn in_chroot(root: &Path, deb: &Path) -> Result<()> {
    let name = deb.file_name().context("the .deb has no name")?;
    fs::copy(deb, root.join("tmp").join(name))?;
    let inside = format!("/tmp/{}", name.to_string_lossy());

    if chroot_output(root, &["test", "-e", "/usr/bin/twmon"])?.0 == Some(0) {
        bail!("the fresh system already has /usr/bin/twmon");
    }
    let (code, _) = chroot_output(root, &["dpkg", "-i", &inside])?;
    if code != Some(0) {
        bail!("dpkg -i {inside} failed in the fresh {SUITE} (exit {code:?})");
    }
    let (code, version) = chroot_output(root, &["twmon", "--version"])?;
    if code != Some(0) || !version.starts_with("twmon ") {
        bail!("twmon --version failed after install (exit {code:?})");
    }
    for f in EXPECTED {
        if chroot_output(root, &["test", "-s", f])?.0 != Some(0) {
            bail!("{f} is missing after installing the .deb");
        }
    }

    // The chroot shares this machine's network namespace: a port we listen
    // on is busy there too, with this process as its holder.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy = listener.local_addr()?.port();
    let addr = format!("127.0.0.1:{busy}");
    let (code, said) = chroot_output(root, &["twmon", "check", &addr])?;
    if code != Some(4) || !said.contains("listen") {
        bail!("twmon check {addr} (busy) exited {code:?}, expected 4 naming the listener");
    }
    drop(listener);
    let (code, _) = chroot_output(root, &["twmon", "check", &addr])?;
    if code != Some(0) {
        bail!("twmon check {addr} (free) exited {code:?}, expected 0");
    }

    let (code, _) = chroot_output(root, &["dpkg", "-r", "twmon"])?;
    if code != Some(0) {
        bail!("dpkg -r twmon failed (exit {code:?})");
    }
    if chroot_output(root, &["test", "-e", "/usr/bin/twmon"])?.0 == Some(0) {
        bail!("/usr/bin/twmon is still there after dpkg -r");
    }
    eprintln!(
        "xtask: verify: the .deb installs on a fresh {SUITE}, {}, check works, removes cleanly",
        version.trim()
    );
    Ok(())
}
