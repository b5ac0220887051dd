//! `cargo xtask dist`: a static twmon for any x86_64 Linux, and a .deb.
//!
//! The static binary is built for x86_64-unknown-linux-musl with the eBPF
//! object embedded (TWMON_REQUIRE_EBPF=1), so it runs on hosts and QEMU
//! guests whatever their libc. Its path comes from cargo's own JSON build
//! messages rather than from guessing the target directory layout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo, display};

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
}
