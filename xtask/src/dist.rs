//! `cargo xtask dist`: a static twmon for any x86_64 Linux, its man pages
//! and shell completions, and a .deb, under `<target>/dist/`.
//!
//! The static binary is built for x86_64-unknown-linux-musl with the eBPF
//! object embedded (TWMON_REQUIRE_EBPF=1), so it runs on hosts and QEMU
//! guests whatever their libc. Its path comes from cargo's own JSON build
//! messages rather than from guessing the target directory layout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo, display, run_checked};
use crate::setup;

/// The Rust target of the static binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Build twmon as a static x86_64 musl binary with its eBPF object inside and
/// return its path, after checking that it has no ELF interpreter (so no
/// dynamic loader or libc is needed) and that `twmon --version` runs.
/// Does not run setup: callers that may face a fresh machine run it first.
pub fn build_static(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    eprintln!("xtask: building a static twmon ({profile}, {MUSL_TARGET}) with its eBPF object");
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .env("TWMON_REQUIRE_EBPF", "1")
        .args(["build", "--package", "monitor", "--bin", "twmon"])
        .args(["--target", MUSL_TARGET])
        // Human diagnostics on stderr, one JSON message a line on stdout.
        .args(["--message-format", "json-render-diagnostics"]);
    if release {
        cmd.arg("--release");
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
    let bin = twmon_executable(&String::from_utf8_lossy(&out.stdout))
        .context("cargo build succeeded but reported no twmon executable")?;
    check_static(&bin)?;
    let version = run_version(&bin)?;
    eprintln!("xtask: built static {} ({version})", bin.display());
    Ok(bin)
}

/// The `executable` of the twmon compiler-artifact message in cargo's JSON
/// output.
fn twmon_executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "twmon")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Fail unless `bin` is a 64-bit little-endian ELF without a PT_INTERP
/// program header: that header names the dynamic loader a dynamically linked
/// program needs, and a static (or static-pie) program has none.
pub fn check_static(bin: &Path) -> Result<()> {
    let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    match elf_has_interp(&data) {
        Some(false) => Ok(()),
        Some(true) => bail!(
            "{} has an ELF interpreter (PT_INTERP): it is dynamically linked, not static",
            bin.display()
        ),
        None => bail!("{} is not a 64-bit little-endian ELF file", bin.display()),
    }
}

/// Whether a 64-bit little-endian ELF image has a PT_INTERP program header;
/// None if it is not one or its program header table is out of bounds.
fn elf_has_interp(data: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |off: usize| Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?));
    let u32_at = |off: usize| Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?));
    let u64_at = |off: usize| Some(u64::from_le_bytes(data.get(off..off + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut found = false;
    for i in 0..phnum {
        let p_type = u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)?;
        found |= p_type == PT_INTERP;
    }
    Some(found)
}

/// Run `bin --version` and return its first line.
pub fn run_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {} --version", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.starts_with("twmon ") {
        bail!(
            "`{} --version` did not work ({}): {}{}",
            bin.display(),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout.lines().next().unwrap_or_default().to_string())
}

/// What `cargo xtask dist` made.
pub struct Artifacts {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub version: String,
}

/// `cargo xtask dist [--verify]`: setup, the static binary, its man pages
/// and completions, the .deb; with `verify`, install the .deb on a fresh
/// Debian (see [`crate::dist_verify`]).
pub fn run(verify: bool) -> Result<()> {
    setup::run()?;
    let built = build_static(true)?;
    let art = package(&built)?;
    smoke_test_here(&art.binary)?;
    if verify {
        crate::dist_verify::run(&art.deb)?;
    }
    eprintln!(
        "xtask dist: twmon {}: {} ({}), {} ({})",
        art.version,
        art.binary.display(),
        human_size(&art.binary),
        art.deb.display(),
        human_size(&art.deb)
    );
    // The only thing on stdout: where the outputs are.
    println!("{}", art.dir.display());
    Ok(())
}

fn human_size(p: &Path) -> String {
    let n = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// The target directory of a binary cargo put at
/// `<target>/<triple>/<profile>/twmon`.
fn target_dir_of(bin: &Path) -> Result<PathBuf> {
    bin.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} is not under <target>/<triple>/<profile>/",
                bin.display()
            )
        })
}

/// Fill `<target>/dist/` from the static binary at `built`.
pub fn package(built: &Path) -> Result<Artifacts> {
    let dir = target_dir_of(built)?.join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;

    // Debug info is for local debugging; the shipped binary keeps only its
    // symbol table (panics still name functions).
    let binary = dir.join("twmon");
    run_checked(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(built)
            .arg(&binary),
    )
    .context("stripping debug info (objcopy, from binutils)")?;
    check_static(&binary)?;
    let version = crate_version(&run_version(&binary)?)?;

    // Generated by the binary itself from its clap definition.
    let man = dir.join("man");
    run_checked(Command::new(&binary).args(["man", "--out-dir"]).arg(&man))?;
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in COMPLETIONS {
        let out = Command::new(&binary)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("twmon completions {shell}"))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`twmon completions {shell}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(completions.join(file), &out.stdout)?;
    }

    let deb = build_deb(&dir, &binary, &man, &completions, &version)?;
    Ok(Artifacts {
        dir,
        binary,
        deb,
        version,
    })
}

/// Shells, and the file name each one's completion directory expects.
const COMPLETIONS: &[(&str, &str)] =
    &[("bash", "twmon"), ("zsh", "_twmon"), ("fish", "twmon.fish")];

/// Where the .deb puts each completion (Debian's vendor directories).
fn completion_dir(shell: &str) -> &'static str {
    match shell {
        "bash" => "usr/share/bash-completion/completions",
        "zsh" => "usr/share/zsh/vendor-completions",
        _ => "usr/share/fish/vendor_completions.d",
    }
}

/// "twmon 0.1.0" -> "0.1.0".
fn crate_version(version_line: &str) -> Result<String> {
    let v = version_line
        .strip_prefix("twmon ")
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c))
        })
        .with_context(|| format!("cannot read a version from `{version_line}`"))?;
    Ok(v.to_string())
}

/// The control file of the .deb. `installed_kib` is the size of the files.
fn control(version: &str, installed_kib: u64) -> String {
    format!(
        "Package: twmon\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: twmon developers <twmon@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/twmon/twmon\n\
         Description: who holds the port, why, and what would fix it\n \
         twmon watches the kernel with eBPF and explains failed bind(), listen()\n \
         and connect() calls (\"Address already in use\"): which socket holds the\n \
         port, in which TCP state, which process owns it, and what would fix it.\n \
         It shows TCP states and TIME_WAIT sockets live, records traces, and with\n \
         `twmon serve` exports Prometheus metrics (systemd unit: twmon.service).\n \
         .\n \
         The binary is static (musl) and needs a kernel with BTF (5.8 or newer).\n"
    )
}

fn copyright() -> &'static str {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: twmon\n\
     \n\
     Files: *\n\
     Copyright: the twmon developers\n\
     License: MIT or Apache-2.0\n \
     twmon is dual-licensed under the MIT license and the Apache License 2.0;\n \
     on Debian systems the Apache License 2.0 is in\n \
     /usr/share/common-licenses/Apache-2.0.\n"
}

fn install(src: &Path, root: &Path, dest: &str, mode: u32) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let to = root.join(dest);
    fs::create_dir_all(to.parent().unwrap())?;
    fs::copy(src, &to).with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    Ok(fs::metadata(&to)?.len())
}

fn write_file(root: &Path, dest: &str, body: &[u8], mode: u32) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let to = root.join(dest);
    fs::create_dir_all(to.parent().unwrap())?;
    fs::write(&to, body)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    Ok(body.len() as u64)
}

/// Gzip (`gzip -9n`: no name or time stamp, so the same input gives the
/// same bytes) as Debian wants for man pages.
fn gzip(src: &Path) -> Result<Vec<u8>> {
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(src)
        .output()
        .context("could not run gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", src.display());
    }
    Ok(out.stdout)
}

/// Stage the package tree and build it with dpkg-deb. No maintainer
/// scripts: installing twmon does not start an eBPF agent by itself
/// (`systemctl enable --now twmon` does).
fn build_deb(
    dir: &Path,
    binary: &Path,
    man: &Path,
    completions: &Path,
    version: &str,
) -> Result<PathBuf> {
    let root = dir.join("deb-root");
    let mut bytes = 0u64;
    bytes += install(binary, &root, "usr/bin/twmon", 0o755)?;
    let mut pages: Vec<PathBuf> = fs::read_dir(man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    if !pages
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "twmon.1"))
    {
        bail!(
            "`twmon man --out-dir` wrote no twmon.1 in {}",
            man.display()
        );
    }
    for page in &pages {
        let name = page.file_name().unwrap().to_string_lossy();
        bytes += write_file(
            &root,
            &format!("usr/share/man/man1/{name}.gz"),
            &gzip(page)?,
            0o644,
        )?;
    }
    for (shell, file) in COMPLETIONS {
        bytes += install(
            &completions.join(file),
            &root,
            &format!("{}/{file}", completion_dir(shell)),
            0o644,
        )?;
    }
    let unit = workspace_root().join("deploy/twmon.service");
    bytes += install(&unit, &root, "usr/lib/systemd/system/twmon.service", 0o644)?;
    bytes += write_file(
        &root,
        "usr/share/doc/twmon/copyright",
        copyright().as_bytes(),
        0o644,
    )?;

    let kib = bytes.div_ceil(1024);
    write_file(
        &root,
        "DEBIAN/control",
        control(version, kib).as_bytes(),
        0o644,
    )?;
    set_dir_modes(&root)?;

    let deb = dir.join(format!("twmon_{version}_amd64.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )
    .context("building the .deb")?;
    fs::remove_dir_all(&root)?;
    run_checked(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    run_checked(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    Ok(deb)
}

/// 0755 on every directory of the staging tree whatever the umask
/// (dpkg-deb refuses a DEBIAN directory with odd permissions).
fn set_dir_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            set_dir_modes(&p)?;
        }
    }
    Ok(())
}

/// The static binary runs on this machine: `--version`, and `check` on a
/// port a listener of ours holds (exit 4, would fail) and on a free one
/// (exit 0).
pub fn smoke_test_here(binary: &Path) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy = listener.local_addr()?.port();
    let out = Command::new(binary)
        .args(["check", &format!("127.0.0.1:{busy}")])
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "xtask: $ {} check 127.0.0.1:{busy}\n{}",
        binary.display(),
        said.trim_end()
    );
    if out.status.code() != Some(4) {
        bail!(
            "`twmon check 127.0.0.1:{busy}` (a port we listen on) exited {} instead of 4: {said}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(listener);
    let out = Command::new(binary)
        .args(["check", &format!("127.0.0.1:{busy}")])
        .output()?;
    if !out.status.success() {
        bail!(
            "`twmon check 127.0.0.1:{busy}` (now free) exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("xtask: the static binary runs here (check: busy port exit 4, free port exit 0)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_twmon_executable_in_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"libc"},"executable":null}
{"reason":"build-script-executed","package_id":"x"}
not json
{"reason":"compiler-artifact","target":{"name":"twmon","kind":["bin"]},"executable":"/t/x86_64-unknown-linux-musl/release/twmon"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            twmon_executable(msgs),
            Some(PathBuf::from("/t/x86_64-unknown-linux-musl/release/twmon"))
        );
        assert_eq!(twmon_executable("{\"reason\":\"build-finished\"}"), None);
    }

    /// A minimal ELF64 header plus `types` as program headers (56 bytes each).
    fn elf_with(types: &[u32]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56 * types.len()];
        d[..6].copy_from_slice(b"\x7fELF\x02\x01");
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            d[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        d
    }

    #[test]
    fn elf_interp_detection() {
        assert_eq!(elf_has_interp(&elf_with(&[6, 3, 1, 2])), Some(true));
        assert_eq!(elf_has_interp(&elf_with(&[1, 1, 2, 7])), Some(false));
        assert_eq!(elf_has_interp(b"#!/bin/sh\n"), None);
        let mut truncated = elf_with(&[1, 3]);
        truncated.truncate(80);
        assert_eq!(elf_has_interp(&truncated), None);
    }

    /// The real thing on this machine: /bin/sh is dynamically linked on
    /// Debian; the test's own executable too (glibc target).
    #[test]
    fn dynamic_binaries_are_refused() {
        let me = std::env::current_exe().unwrap();
        assert!(check_static(&me).is_err());
    }

    #[test]
    fn version_and_control_file() {
        assert_eq!(crate_version("twmon 0.1.0\n").unwrap(), "0.1.0");
        assert!(crate_version("twmon \n").is_err());
        assert!(crate_version("xtask 0.1.0").is_err());
        let c = control("0.1.0", 12345);
        assert!(c.contains("\nVersion: 0.1.0\n") && c.contains("\nInstalled-Size: 12345\n"));
        // Every line is a field or a continuation (leading space); the
        // paragraph ends with one newline.
        for line in c.lines() {
            assert!(line.starts_with(' ') || line.contains(": "), "{line:?}");
        }
        assert!(c.ends_with(".\n") || c.ends_with(")\n") || c.ends_with("newer).\n"));
    }

    #[test]
    fn target_dir_from_binary_path() {
        let t = target_dir_of(Path::new("/t/x86_64-unknown-linux-musl/release/twmon")).unwrap();
        assert_eq!(t, PathBuf::from("/t"));
    }
}
