//! The kernel side as userspace sees it: load the programs with the running
//! kernel's offsets, attach them, and turn ring buffer records into events.
//!
//! Modes: `tracepoint` (the bind, listen and connect exit tracepoints, else
//! tp_btf on sys_exit; tp_btf on inet_sock_set_state and the timer
//! tracepoints) works wherever BTF exists. `precise` adds function hooks
//! (fexit, else kprobe/kretprobe; `precise.rs`) on top of it where the kernel
//! allows them (`mode.rs` finds out), feeding the same records; `auto` takes
//! each function hook that works and says in one line why the others did not.

pub mod call_exits;
pub mod decode;
pub mod enrich;
pub mod mode;
pub mod offsets;
pub mod precise;
pub mod skipped;
pub mod sys;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::sync::mpsc;

use crate::batches::{BatchSender, Unsent};
use crate::cli::ModeArg;
use crate::event::{Event, Kind, Lost, Proto};
use enrich::Enricher;
use sys::Kallsyms;

/// The eBPF object built by build.rs (empty when built without the BPF
/// toolchain).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Why the probe cannot run: each says what is missing and how to get it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the kernel programs needs {0} (or root): run twmon with sudo, or grant the capabilities (e.g. setcap cap_bpf,cap_perfmon,cap_net_admin,cap_sys_ptrace,cap_syslog+ep twmon)")]
    Privileges(&'static str),
    #[error("this kernel has no BTF at {0} (CONFIG_DEBUG_INFO_BTF=y is needed): twmon reads struct layouts from it")]
    NoBtf(String),
    #[error("this twmon was built without its eBPF programs (bpf-linker was missing at build time): build it with `cargo xtask build`")]
    NoObject,
    #[error("the kernel refused hook {hook}: {reason}")]
    Hook { hook: String, reason: String },
    #[error("precise mode needs function hooks and none works on this kernel: {0} (use --mode auto or --mode tracepoint)")]
    PreciseUnavailable(String),
    #[error("{0}")]
    Other(String),
}

impl ProbeError {
    /// Exit code: 3 for missing privileges or kernel support, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProbeError::Other(_) => 1,
            _ => 3,
        }
    }
}

/// Which hooks are live, for status lines and trace headers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModeInfo {
    pub mode: String,
    pub hooks: Vec<String>,
    /// One line each: why this mode, what is degraded.
    pub notes: Vec<String>,
}

pub struct Probe {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    binds: RingBuf<MapData>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    enricher: Enricher,
    pub mode: ModeInfo,
}

const PROGRAMS: &[(&str, &str)] = &[
    ("twmon_sys_exit", "sys_exit"),
    ("twmon_set_state", "inet_sock_set_state"),
    ("twmon_timer_start", "timer_start"),
    ("twmon_timer_expire", "timer_expire_entry"),
    ("twmon_timer_cancel", "timer_cancel"),
    ("twmon_send_reset", "tcp_send_reset"),
];

/// Hooks whose absence only degrades one answer (named in the notes).
const OPTIONAL: &[&str] = &["tcp_send_reset"];

/// Tell the bind/listen/connect program whether precise mode's function
/// hooks may be attached: only then does it look for the blocking sockets
/// they keep per call.
fn set_function_hooks(ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut("FUNCTION_HOOKS")
        .ok_or_else(|| ProbeError::Other("map FUNCTION_HOOKS missing from the object".into()))?;
    let mut flag: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)
        .map_err(|e| ProbeError::Other(format!("FUNCTION_HOOKS: {e}")))?;
    flag.set(0, u32::from(on), 0)
        .map_err(|e| ProbeError::Other(format!("FUNCTION_HOOKS: {e}")))
}

/// `TWMON_RAW_SYS_EXIT=1`: take `tp_btf/sys_exit` even where the per-call
/// tracepoints work (`call_exits.rs`), so that tests cover the fallback.
fn force_raw_sys_exit() -> bool {
    std::env::var_os("TWMON_RAW_SYS_EXIT").is_some_and(|v| v == "1")
}

/// What the kernel streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streams {
    /// Every hook: bind results, every TCP transition, the timewait life.
    All,
    /// Only bind/listen/connect results: the light mode of the dashboard,
    /// which counts sockets from sock_diag instead. The state and timer
    /// tracepoints fire some 25 times per connection on a busy host; these
    /// once per bind, listen or connect (`call_exits.rs`; the fallback,
    /// tp_btf/sys_exit, once per system call).
    BindsOnly,
}

impl Probe {
    pub fn load(mode: ModeArg, stream: Streams) -> Result<Probe, ProbeError> {
        if let Some(missing) = sys::missing_caps(sys::effective_caps()) {
            return Err(ProbeError::Privileges(missing));
        }
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        // The kernel's BTF (btf-rs) and /proc/kallsyms are read once here,
        // for the offsets and the timer handler, and asked again below for
        // precise mode's facts: reading each twice was about a third of
        // start-up (bench/NOTES.md, section (8)).
        let kbtf = offsets::read_btf(std::path::Path::new(offsets::VMLINUX_BTF))
            .map_err(|_| ProbeError::NoBtf(offsets::VMLINUX_BTF.to_string()))?;
        let (mut offsets, kbtf) = offsets::from_btf(kbtf).map_err(|e| {
            ProbeError::Other(format!("reading kernel struct layouts from BTF: {e}"))
        })?;
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").ok();
        let mut notes = Vec::new();
        let syms = kallsyms
            .as_deref()
            .map(Kallsyms::parse)
            .filter(|k| !k.is_empty());
        match syms.as_ref().and_then(|k| k.address_of("tw_timer_handler")) {
            Some(a) => offsets.tw_timer_handler = a,
            None => notes.push(
                "timewait life unavailable: /proc/kallsyms does not show tw_timer_handler (needs CAP_SYSLOG, or kernel.kptr_restrict=0)".into(),
            ),
        }
        let hz = sys::kernel_hz().unwrap_or_else(|| {
            notes.push("kernel HZ unknown (/proc/timer_list unreadable): assuming 250 for timewait countdowns".into());
            250
        });

        // What the kernel allows for precise mode, found before aya parses
        // the BTF too: each parse holds tens of MB while it lives, and
        // doing them one after the other keeps the start-up peak lower.
        let light = stream == Streams::BindsOnly;
        let kernel_facts = (mode != ModeArg::Tracepoint && !light).then(|| {
            mode::KernelFacts::probe(&precise::targets(), Some(&kbtf), kallsyms.as_deref())
        });
        drop((kbtf, kallsyms));
        // aya's own parse, once: the loader would parse the BTF for itself
        // when given none, and the program loads need it again.
        let btf =
            Btf::from_sys_fs().map_err(|_| ProbeError::NoBtf(offsets::VMLINUX_BTF.to_string()))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", &offsets, true)
            .load(OBJECT)
            .map_err(|e| ProbeError::Other(format!("loading the eBPF object: {e}")))?;
        let mut hooks = Vec::new();
        let tw_found_at_close =
            offsets.net_tw_hashinfo.present() && offsets.skc_nulls_next.present();
        if !tw_found_at_close && offsets.tw_timer_handler != 0 && !light {
            notes.push("this kernel's connection hash is not per namespace (before 6.1): new timewait sockets are found through timer_start, which runs at every timer start of the host".into());
        }
        for (prog, tp) in PROGRAMS {
            if tp.starts_with("timer_") && offsets.tw_timer_handler == 0 {
                continue;
            }
            if light && *tp != "sys_exit" {
                continue;
            }
            // New timewait socks are announced at their socket's ->CLOSE
            // where the kernel has the fields to find them
            // (monitor-ebpf/src/timewait.rs); timer_start, which runs for
            // every timer of the host, only where it has not.
            if *tp == "timer_start" && tw_found_at_close {
                continue;
            }
            if *tp == "sys_exit" && !force_raw_sys_exit() {
                match call_exits::attach(&mut ebpf) {
                    Ok(a) => {
                        hooks.extend(a.hooks);
                        notes.extend(a.note);
                        continue;
                    }
                    Err(e) => notes.push(format!(
                        "bind, listen and connect tracepoints unavailable ({e}): tp_btf/sys_exit instead, which runs at the exit of every system call"
                    )),
                }
            }
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| {
                    ProbeError::Other(format!("program {prog} missing from the object"))
                })?
                .try_into()
                .map_err(|e| ProbeError::Other(format!("{prog}: {e}")))?;
            let attached = p.load(tp, &btf).and_then(|()| p.attach().map(|_| ()));
            match attached {
                Ok(()) => hooks.push(format!("tp_btf/{tp}")),
                Err(e) if OPTIONAL.contains(tp) => notes.push(format!(
                    "tp_btf/{tp} unavailable ({}): timewait kills by RST may be reported as reused_by_syn",
                    error_chain(&e)
                )),
                Err(e) => {
                    return Err(ProbeError::Hook {
                        hook: format!("tp_btf/{tp}"),
                        reason: error_chain(&e),
                    })
                }
            }
        }
        let mut enricher = Enricher::new(sys::boot_to_unix_offset_ns(), hz);
        let mut live: Vec<&str> = Vec::new();
        let (mode_name, why) = match mode {
            _ if light => (
                "tracepoint",
                "light mode: the kernel streams bind, listen and connect results only; sockets are counted from sock_diag".to_string(),
            ),
            ModeArg::Tracepoint => ("tracepoint", "tracepoint mode, as asked".to_string()),
            ModeArg::Auto | ModeArg::Precise => {
                let facts = kernel_facts.expect("probed above unless tracepoint mode");
                // Before attaching, so that no entry a hook makes is left
                // behind by a call that did not look (precise.rs in the
                // eBPF crate); cleared again when none attached.
                set_function_hooks(&mut ebpf, true)?;
                let out = precise::attach(&mut ebpf, &btf, &facts);
                if out.live.is_empty() {
                    set_function_hooks(&mut ebpf, false)?;
                    if mode == ModeArg::Precise {
                        return Err(ProbeError::PreciseUnavailable(out.why_none()));
                    }
                    (
                        "tracepoint",
                        format!("auto: tracepoint mode: {}", out.why_none()),
                    )
                } else {
                    live.clone_from(&out.live);
                    let name = if out.live.len() == precise::HOOKS.len() {
                        "precise"
                    } else {
                        "mixed"
                    };
                    let detail =
                        format!("{} function hooks on top of the tracepoints", out.kinds());
                    let why = match (mode, name) {
                        (ModeArg::Auto, _) => format!("auto: {name} mode: {detail}"),
                        (_, "precise") => format!("precise mode, as asked: {detail}"),
                        _ => format!("precise mode asked, {name} here: {detail}"),
                    };
                    hooks.extend(out.hooks);
                    notes.extend(out.notes);
                    (name, why)
                }
            }
        };
        notes.insert(0, why);
        enricher.set_kernel_conflicts(live.contains(&"inet_bind_conflict"));
        enricher.set_port_hooks(&live);
        enricher.set_deschedule_live(live.contains(&"inet_twsk_deschedule_put"));
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| ProbeError::Other(format!("map {name} missing from the object")))
        };
        let binds = RingBuf::try_from(take(&mut ebpf, "BINDS")?)
            .map_err(|e| ProbeError::Other(format!("BINDS: {e}")))?;
        let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)
            .map_err(|e| ProbeError::Other(format!("EVENTS: {e}")))?;
        let lost = PerCpuArray::try_from(take(&mut ebpf, "LOST")?)
            .map_err(|e| ProbeError::Other(format!("LOST: {e}")))?;
        let (_, unreadable) = skipped::read(&ebpf);
        if unreadable > 0 {
            notes.push(format!(
                "runs the kernel skips cannot be counted for {unreadable} hook(s) (no recursion_misses in their fdinfo; Linux 5.12 and later have it): a transition lost that way is not reported"
            ));
        }
        Ok(Probe {
            ebpf,
            binds,
            events,
            lost,
            enricher,
            mode: ModeInfo {
                mode: mode_name.into(),
                hooks,
                notes,
            },
        })
    }

    /// Read the rings on a thread of their own until `stop` is set, sending
    /// bind results and lost counts to `binds` and everything else to
    /// `events`. Returns when stopped, after a last drain, so nothing the
    /// kernel delivered is left behind.
    pub fn spawn_reader(
        self,
        binds: mpsc::Sender<Event>,
        events: BatchSender,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<Probe> {
        std::thread::Builder::new()
            .name("twmon-rings".into())
            .spawn(move || {
                let mut probe = self;
                probe.read_loop(&mut Outlets { binds, events }, &stop);
                probe
            })
            .expect("spawn ring reader thread")
    }

    fn read_loop(&mut self, out: &mut Outlets, stop: &AtomicBool) {
        // BINDS wakes the reader at once, at most once a millisecond per
        // CPU (monitor-ebpf's binds_wakeup): a failure should be explained
        // at once, and a storm of them must not cost a wakeup each. EVENTS wakes it only when 512 KiB are waiting
        // (monitor-ebpf's events_wakeup): otherwise the reader comes every
        // EVENTS_PERIOD_MS and takes what piled up. The ring's poll reports
        // readable whenever data is waiting, so EVENTS is watched edge-
        // triggered: only a real wakeup ends the wait early.
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).and_then(|ep| {
            // SAFETY: both descriptors belong to maps self owns, and outlive
            // the epoll instance (dropped at the end of this function).
            let binds = unsafe { BorrowedFd::borrow_raw(self.binds.as_raw_fd()) };
            let events = unsafe { BorrowedFd::borrow_raw(self.events.as_raw_fd()) };
            ep.add(binds, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
            ep.add(
                events,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 1),
            )?;
            Ok(ep)
        }) {
            Ok(ep) => ep,
            Err(e) => {
                log::error!("cannot wait on the ring buffers (epoll): {e}");
                return;
            }
        };
        let mut ready = [EpollEvent::empty(); 2];
        let mut lost_seen = [0u64; 3];
        let mut last_lost_check = Instant::now();
        let mut last_poke = Instant::now();
        let stall_until = test_stall_events_until();
        let mut events_left = false;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let stalled = !stopping && stall_until.is_some_and(|t| Instant::now() < t);
            // Records left over from the last round: come straight back.
            let timeout = if events_left && !stalled {
                EpollTimeout::ZERO
            } else {
                EpollTimeout::from(EVENTS_PERIOD_MS)
            };
            if let Err(e) = epoll.wait(&mut ready, timeout) {
                if e != nix::errno::Errno::EINTR {
                    log::error!("waiting on the ring buffers failed: {e}");
                    return;
                }
            }
            // Transitions first, then bind results: a transition the
            // kernel recorded before a failed bind then reaches its channel
            // first, and Live puts it ahead of the failure (the model must
            // know a listener closed before it explains the failure). In a
            // flood drain() hands over waiting bind results every 64
            // transitions, so they never wait long.
            if !stalled {
                let started = sys::boottime_ns();
                let read_up_to = match self.drain(Which::Events, 4096, out) {
                    Drained::ReceiverGone => return,
                    Drained::Empty => {
                        events_left = false;
                        started.max(self.enricher.newest_event_ns())
                    }
                    Drained::BudgetSpent => {
                        events_left = true;
                        self.enricher.newest_event_ns()
                    }
                };
                let due = self.enricher.settle(read_up_to);
                if !self.hand_over(due, out) || !self.flush_events(out) {
                    return;
                }
                // A timewait cancel whose CPU ran no program since: make
                // every CPU run one (see Enricher::awaits_second_look).
                if self.enricher.awaits_second_look(read_up_to)
                    && last_poke.elapsed() >= Duration::from_nanos(enrich::HOLD_NS)
                {
                    last_poke = Instant::now();
                    sys::poke_cpus();
                }
            }
            if !self.drain(Which::Binds, usize::MAX, out).ok() {
                return;
            }
            if stopping || last_lost_check.elapsed() >= Duration::from_secs(1) {
                last_lost_check = Instant::now();
                // Records the rings had no room for, and hook runs the
                // kernel skipped (skipped.rs), which never reached a ring.
                let totals = [
                    (self.lost_total(0), "binds"),
                    (self.lost_total(1), "events"),
                    (skipped::read(&self.ebpf).0, Lost::SKIPPED_RUNS),
                ];
                for ((total, stream), seen) in totals.into_iter().zip(&mut lost_seen) {
                    if total > *seen {
                        let ev = self.lost_event(total - *seen, stream);
                        *seen = total;
                        if out.binds.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                }
            }
            if stopping {
                let _ = self.drain(Which::Binds, usize::MAX, out).ok()
                    && self.drain(Which::Events, usize::MAX, out).ok()
                    && {
                        let held = self.enricher.settle(u64::MAX);
                        self.hand_over(held, out)
                    }
                    && self.flush_events(out);
                return;
            }
        }
    }

    /// Hand over up to `budget` records of one ring.
    fn drain(&mut self, which: Which, budget: usize, out: &mut Outlets) -> Drained {
        for n in 0..budget {
            let ring = match which {
                Which::Binds => &mut self.binds,
                Which::Events => &mut self.events,
            };
            let Some(record) = next_record(ring) else {
                return Drained::Empty;
            };
            let ev = match record {
                Ok(raw) => self.enricher.enrich(&raw),
                Err(e) => {
                    log::warn!("dropping a kernel record: {e}");
                    None
                }
            };
            if let Some(ev) = ev {
                let sent = match which {
                    Which::Binds => out.binds.blocking_send(ev).is_ok(),
                    Which::Events => self.send_event(ev, out),
                };
                if !sent {
                    return Drained::ReceiverGone;
                }
            }
            // Keep bind results prompt during a flood of transitions: the
            // transitions read so far go first (batches::BATCH is 64).
            if matches!(which, Which::Events)
                && n % 64 == 63
                && !(self.flush_events(out) && self.drain(Which::Binds, usize::MAX, out).ok())
            {
                return Drained::ReceiverGone;
            }
        }
        Drained::BudgetSpent
    }

    /// Queue one event of the EVENTS ring; false when the receiver is gone.
    fn send_event(&mut self, ev: Event, out: &mut Outlets) -> bool {
        !out.events.push(ev) || self.flush_events(out)
    }

    /// Send the queued batch of EVENTS; false when the receiver is gone.
    fn flush_events(&mut self, out: &mut Outlets) -> bool {
        loop {
            match out.events.try_flush() {
                Ok(()) => return true,
                Err(Unsent::Closed) => return false,
                // The event queue full: bind results must not wait behind
                // it, so hand them over, then give the consumer a moment.
                // Not a blocking send: that woke this thread for every
                // batch taken, a context switch each on a busy core.
                Err(Unsent::Full) => {
                    if !self.drain(Which::Binds, usize::MAX, out).ok() {
                        return false;
                    }
                    std::thread::sleep(FULL_QUEUE_PAUSE);
                }
            }
        }
    }

    /// Send events decided outside a drain (held timewait cancels, see
    /// `Enricher::settle`) the way EVENTS records go.
    fn hand_over(&mut self, evs: Vec<Event>, out: &mut Outlets) -> bool {
        evs.into_iter().all(|ev| self.send_event(ev, out))
    }

    fn lost_total(&self, index: u32) -> u64 {
        self.lost
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    fn lost_event(&self, count: u64, stream: &str) -> Event {
        Event {
            common: self
                .enricher
                .common(sys::boottime_ns(), 0, Proto::Tcp, None),
            kind: Kind::Lost(Lost {
                count,
                stream: Some(stream.to_string()),
            }),
        }
    }
}

/// TEST HOOK, for monitor/tests/kernel_lost.rs only: with
/// `TWMON_TEST_STALL_EVENTS_MS=N` in the environment the reader leaves the
/// EVENTS ring unread for the first N ms (the bind ring is read as usual),
/// so that a test can overflow EVENTS on purpose and check that every lost
/// record is counted and that failed binds still arrive. Unset (always, in
/// normal use) it changes nothing.
fn test_stall_events_until() -> Option<Instant> {
    let ms: u64 = std::env::var("TWMON_TEST_STALL_EVENTS_MS")
        .ok()?
        .parse()
        .ok()?;
    log::warn!("test hook: the EVENTS ring is not read for the first {ms} ms");
    Some(Instant::now() + Duration::from_millis(ms))
}

/// Where the reader sends what it read.
struct Outlets {
    binds: mpsc::Sender<Event>,
    events: BatchSender,
}

/// How long the reader leaves EVENTS alone when nothing wakes it: the
/// delay a transition may wait before it reaches the model, and the batch
/// the reader takes at once.
const EVENTS_PERIOD_MS: u16 = 10;

/// How long the reader waits before it tries a full event queue again
/// (65,536 events: the consumer takes a few hundred in this time).
const FULL_QUEUE_PAUSE: Duration = Duration::from_millis(1);

/// What [`Probe::drain`] left behind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// The ring is empty.
    Empty,
    /// The budget ran out with records still in the ring.
    BudgetSpent,
    /// The channel's receiver is gone: stop reading.
    ReceiverGone,
}

impl Drained {
    fn ok(self) -> bool {
        self != Drained::ReceiverGone
    }
}

#[derive(Clone, Copy)]
enum Which {
    Binds,
    Events,
}

/// The next record of a ring, decoded (and the ring slot released).
fn next_record(ring: &mut RingBuf<MapData>) -> Option<Result<decode::Raw, decode::DecodeError>> {
    let item = ring.next()?;
    Some(decode::decode(&item))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
