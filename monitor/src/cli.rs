//! Command line: the commands and flags of the contract (shared/design/contract.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "twmon",
    version,
    about = "Who holds the port, why, and what would fix it: a live monitor of failed binds, TCP states and TIME_WAIT sockets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The dashboard on live kernel events (the default on a terminal).
    Live(LiveArgs),
    /// Print events, one line each, until Ctrl-C, SIGTERM or --duration.
    Watch(WatchArgs),
    /// Headless agent: Prometheus metrics on --metrics-addr (and bind failures as JSON lines with --json) until SIGTERM.
    Serve(ServeArgs),
    /// Record events to a trace file.
    Record(RecordArgs),
    /// The dashboard over a recorded trace.
    Replay(ReplayArgs),
    /// A postmortem summary of a trace.
    Report(ReportArgs),
    /// Would a bind() on ADDR:PORT fail right now, why, and what would fix it?
    Check(CheckArgs),
    /// Play the field scenarios in a private network namespace, with the dashboard.
    Demo(DemoArgs),
    /// Print a shell completion script on stdout (e.g. `twmon completions bash
    /// > /etc/bash_completion.d/twmon`).
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout, or write all pages to a directory.
    #[command(hide = true)]
    Man(ManArgs),
}

/// Which events to keep.
#[derive(Args, Debug, Clone, Default)]
pub struct Filters {
    /// Only events on this port (local or remote); repeatable.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only events of this process id; repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only events whose process name is this; repeatable.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only events of this network namespace (its inode); repeatable. Default: all.
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ModeArg {
    /// The most precise mode the kernel allows.
    #[default]
    Auto,
    /// Tracepoints only (works wherever BTF and tracepoints exist).
    Tracepoint,
    /// Function hooks (fexit / kprobes) where the kernel allows them.
    Precise,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ProbeArgs {
    /// Which kernel hooks to use.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
}

#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Also record every event to this trace file (streams every
    /// transition, as --full).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stream every TCP transition and the timewait life from the kernel
    /// (the event log shows them, TIME_WAIT sockets name who closed first).
    /// Without it the kernel streams bind, listen and connect results only
    /// and the sockets are listed from sock_diag every second or more: far
    /// cheaper on a busy host.
    #[arg(long)]
    pub full: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Draw into memory instead of a terminal (benchmarks).
    #[arg(long, hide = true)]
    pub offscreen: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// JSON lines (the contract's format) instead of human lines.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Also print successful binds and listens (always in the JSON).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Where to serve /metrics (ADDR:PORT; [::]:9464 for every address).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Also print each bind failure as a JSON line (the contract's) on stdout, for log shippers.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// The trace file to write (zstd-compressed when it ends in .zst or with --compress).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Compress with zstd.
    #[arg(long)]
    pub compress: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Rotate to FILE.1, FILE.2 ... when the file reaches this many bytes (suffixes K, M, G).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Overwrite FILE (and FILE.N parts) if they exist.
    #[arg(long)]
    pub force: bool,
    /// zstd level when compressing (1 fastest .. 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Which namespaces' existing sockets to write at the start: auto (the
    /// --netns ones, else twmon's own), all, or none.
    #[arg(long, value_enum, default_value_t = crate::trace::SnapshotScope::Auto)]
    pub snapshot: crate::trace::SnapshotScope,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    pub file: PathBuf,
    /// Playback speed (1, 10, ... or 0 for as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    pub file: PathBuf,
    /// One JSON object instead of text.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Markdown, to paste into an incident document.
    #[arg(long)]
    pub markdown: bool,
    /// Also read the rotated parts FILE.1, FILE.2 ... of the same recording.
    #[arg(long)]
    pub all_parts: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The address and port you are about to bind, e.g. 0.0.0.0:8080 or [::]:443.
    pub addr: String,
    /// A UDP socket (default TCP).
    #[arg(long)]
    pub udp: bool,
    /// The new socket will set SO_REUSEADDR.
    #[arg(long)]
    pub reuseaddr: bool,
    /// The new socket will set SO_REUSEPORT.
    #[arg(long)]
    pub reuseport: bool,
    /// The new (IPv6) socket will set IPV6_V6ONLY.
    #[arg(long)]
    pub v6only: bool,
    /// The uid the new socket will belong to (default: yours).
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// The new socket will be bound to this device (SO_BINDTODEVICE, a VRF
    /// device too), in this network namespace.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Also predict listen() (default for TCP: yes, as a server would).
    #[arg(long)]
    pub no_listen: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Print the events as lines instead of opening the dashboard.
    #[arg(long)]
    pub headless: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write twmon.1 and a page per subcommand (twmon-check.1 ...) here instead.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}
