//! Builds the eBPF programs (monitor-ebpf) and embeds them in twmon.
//!
//! aya-build reruns this whenever the eBPF crate changes, so the embedded
//! object is never stale. When the BPF toolchain (bpf-linker, nightly
//! rust-src) is missing, a plain `cargo build`/`cargo test` still works for the
//! pure logic: we embed an empty object and twmon says at run time how to get
//! the real one. `cargo xtask build` sets TWMON_REQUIRE_EBPF=1 to make a
//! missing toolchain a build error instead.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=TWMON_REQUIRE_EBPF");
    println!("cargo:rerun-if-changed=../monitor-common/src");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target = out.join("monitor");
    let require = env::var("TWMON_REQUIRE_EBPF").is_ok_and(|v| v == "1");

    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_linker {
        if require {
            panic!("bpf-linker is not on PATH: run `cargo xtask setup` (TWMON_REQUIRE_EBPF=1)");
        }
        println!("cargo:warning=bpf-linker not found: twmon is built WITHOUT its eBPF programs (run `cargo xtask build` for a complete binary)");
        fs::write(&target, b"").expect("write empty object");
        return;
    }
    let pkg = aya_build::Package {
        name: "monitor-ebpf",
        root_dir: "../monitor-ebpf",
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly) {
        if require {
            panic!("building the eBPF programs failed: {e:#}");
        }
        println!(
            "cargo:warning=building the eBPF programs failed ({e:#}); twmon is built WITHOUT them"
        );
        fs::write(&target, b"").expect("write empty object");
    }
}
