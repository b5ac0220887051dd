//! `cargo xtask`: set up the machine, build, run, test and lint twmon.
//!
//! The alias lives in `.cargo/config.toml`. Every command this tool runs is
//! printed before it runs, and every exit status is checked.

mod bench;
mod cmd;
mod dist;
mod dist_verify;
mod setup;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run, test and lint twmon",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building twmon needs (Debian packages, nightly rust-src,
    /// bpf-linker 0.13.0) and mount tracefs; a quick no-op when all is there.
    Setup,
    /// Run setup, then build twmon with its eBPF object embedded.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build (release unless --debug) and run twmon as root with ARGS.
    Run {
        /// Build with the release profile (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Build with the dev profile instead.
        #[arg(long)]
        debug: bool,
        /// Arguments for twmon, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then `cargo test --workspace --release` with the eBPF
    /// object required (kernel end-to-end tests need root), then the QEMU
    /// kernel matrix (vm-test) unless tests are selected or TWMON_VM=0.
    Test {
        /// Extra arguments for `cargo test`, after `--` (e.g. `-- -p monitor
        /// --test e2e -- --nocapture`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` over default members.
    Lint,
    /// Measure what twmon costs under loopback churn and a bind storm, side
    /// by side with nothing attached (and tcpstates/bpftrace when installed);
    /// writes bench/results.md. Needs root.
    Bench(bench::BenchArgs),
    /// Boot Debian's 6.1 and 6.12 kernels in QEMU (software emulation) and
    /// run the kernel end-to-end tests inside, in tracepoint and precise
    /// mode, with one static twmon; prints a kernel x mode table. Needs root.
    VmTest(vm::VmArgs),
    /// Run setup, then build the release artifacts under target/dist/: a
    /// static x86_64 (musl) twmon with its eBPF object inside, its man pages
    /// and shell completions, and a .deb.
    Dist {
        /// Then install the .deb on a fresh Debian 12 (debootstrap, chroot)
        /// and run twmon there. Needs root.
        #[arg(long)]
        verify: bool,
    },
}

fn main() {
    cmd::prepend_cargo_bin_to_path();
    let cli = Cli::parse();
    if let Err(err) = dispatch(cli.command) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::run(),
        Command::Build { release } => {
            setup::run()?;
            let bin = cmd::build(release)?;
            // The only thing on stdout, for `$(cargo xtask build)`.
            println!("{}", bin.display());
            Ok(())
        }
        Command::Run {
            release: _,
            debug,
            args,
        } => cmd::run(!debug, &args),
        Command::Test { args } => cmd::test(&args),
        Command::Lint => cmd::lint(),
        Command::Bench(args) => bench::run(&args),
        Command::VmTest(args) => {
            setup::run()?;
            vm::run(&args)
        }
        Command::Dist { verify } => dist::run(verify),
    }
}
