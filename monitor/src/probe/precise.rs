//! Precise mode's function hooks: attach each with the most precise kind
//! the kernel allows (fexit, else kprobe + kretprobe), or say in one line
//! why its question stays with the tracepoint programs.
//!
//! The tracepoint programs stay attached in every mode: they are the base
//! every question is answered from. A function hook adds what only the
//! function sees (the exact socket that blocked a bind, the port function
//! that refused it, a RST sent by a timewait sock before 6.10, the early
//! end of a timewait sock and the connect() behind it) to the same records,
//! so the events and their JSON are the same in both modes, with extra
//! fields where precise mode knows more.

use aya::programs::{FEntry, FExit, KProbe, Program};
use aya::{Btf, Ebpf};

use super::error_chain;
use super::mode::KernelFacts;

/// One question a function hook answers better than the tracepoints.
pub struct FunctionHook {
    /// What the hook adds, for notes ("the blocking socket of a failed bind").
    pub answers: &'static str,
    pub function: &'static str,
    /// How many parameters the function takes (fexit finds the return
    /// value after them; 0 for an entry hook that does not care) and the
    /// ones the programs read, by position and name; the BTF prototype must
    /// agree (names of the others vary: 6.18 calls sk_uid `uid`).
    pub nargs: usize,
    pub reads: &'static [(usize, &'static str)],
    /// The tracing program (fexit, or fentry when the entry is enough).
    pub tracing: Tracing,
    pub kprobe: &'static str,
    /// For an exit hook: the kretprobe that reads the verdict.
    pub kretprobe: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracing {
    Fexit(&'static str),
    Fentry(&'static str),
}

impl Tracing {
    fn kind(self) -> &'static str {
        match self {
            Tracing::Fexit(_) => "fexit",
            Tracing::Fentry(_) => "fentry",
        }
    }
}

pub const HOOKS: &[FunctionHook] = &[
    FunctionHook {
        answers: "the socket the kernel found blocking a failed bind (kernel_holders)",
        function: "inet_bind_conflict",
        nargs: 6,
        reads: &[(1, "sk2")],
        tracing: Tracing::Fexit("twmon_fexit_bind_conflict"),
        kprobe: "twmon_kprobe_bind_conflict",
        kretprobe: Some("twmon_kretprobe_bind_conflict"),
    },
    FunctionHook {
        answers: "FIN_WAIT2 -> TIME_WAIT re-arms that fire no timer tracepoint (timewait_substate)",
        function: "__inet_twsk_schedule",
        nargs: 3,
        reads: &[(0, "tw")],
        tracing: Tracing::Fentry("twmon_fentry_twsk_schedule"),
        kprobe: "twmon_kprobe_twsk_schedule",
        kretprobe: None,
    },
    FunctionHook {
        answers: "the port a failed TCP bind/listen was refused on (kernel_port)",
        function: "inet_csk_get_port",
        nargs: 2,
        reads: &[(1, "snum")],
        tracing: Tracing::Fexit("twmon_fexit_get_port"),
        kprobe: "twmon_kprobe_get_port",
        kretprobe: Some("twmon_kretprobe_get_port"),
    },
    FunctionHook {
        answers: "the port a failed UDP bind was refused on (kernel_port)",
        function: "udp_lib_get_port",
        nargs: 3,
        reads: &[(1, "snum")],
        tracing: Tracing::Fexit("twmon_fexit_udp_get_port"),
        kprobe: "twmon_kprobe_udp_get_port",
        kretprobe: Some("twmon_kretprobe_udp_get_port"),
    },
    FunctionHook {
        answers: "a TCP connect() that found no local port (kernel_port)",
        function: "__inet_hash_connect",
        nargs: 4,
        reads: &[(1, "sk")],
        tracing: Tracing::Fexit("twmon_fexit_hash_connect"),
        kprobe: "twmon_kprobe_hash_connect",
        kretprobe: Some("twmon_kretprobe_hash_connect"),
    },
    FunctionHook {
        answers: "which timewait ends the kernel descheduled early, and the process of a connect() that took one over (timewait_close.ended_by)",
        function: "inet_twsk_deschedule_put",
        nargs: 1,
        reads: &[(0, "tw")],
        tracing: Tracing::Fentry("twmon_fentry_twsk_deschedule"),
        kprobe: "twmon_kprobe_twsk_deschedule",
        kretprobe: None,
    },
    // The RST hooks only read the first argument at entry: 6.10 added a
    // third parameter (the reason), which fentry does not care about.
    FunctionHook {
        answers: "a timewait sock killed after it answered with a RST (reason reset, IPv4)",
        function: "tcp_v4_send_reset",
        nargs: 0,
        reads: &[(0, "sk")],
        tracing: Tracing::Fentry("twmon_fentry_v4_send_reset"),
        kprobe: "twmon_kprobe_v4_send_reset",
        kretprobe: None,
    },
    FunctionHook {
        answers: "a timewait sock killed after it answered with a RST (reason reset, IPv6)",
        function: "tcp_v6_send_reset",
        nargs: 0,
        reads: &[(0, "sk")],
        tracing: Tracing::Fentry("twmon_fentry_v6_send_reset"),
        kprobe: "twmon_kprobe_v6_send_reset",
        kretprobe: None,
    },
];

/// The target functions, for [`KernelFacts::probe`].
pub fn targets() -> Vec<&'static str> {
    HOOKS.iter().map(|h| h.function).collect()
}

/// How one function hook ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// fexit or fentry.
    Tracing,
    Kprobe,
    /// Not attached: the tracing program's and kprobe's reasons.
    No {
        fexit: String,
        kprobe: String,
    },
}

/// What attaching the function hooks gave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// "fexit/inet_bind_conflict", "kprobe/inet_bind_conflict", ...
    pub hooks: Vec<String>,
    pub notes: Vec<String>,
    /// Functions with a live hook.
    pub live: Vec<&'static str>,
    /// Per hook, in HOOKS order.
    pub results: Vec<(&'static str, Attached)>,
}

impl Outcome {
    /// The kinds of the live hooks: "fexit/fentry", "kprobe", ...
    pub fn kinds(&self) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        for h in &self.hooks {
            let k = h.split('/').next().unwrap_or(h);
            if k != "kretprobe" && !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        kinds.join("/")
    }

    /// One sentence on why no function hook works ("this kernel has no
    /// kprobes ... and refused fexit (...)"), from the first hook's reasons.
    pub fn why_none(&self) -> String {
        match self.results.first() {
            Some((_, Attached::No { fexit, kprobe })) => {
                match kprobe.strip_prefix("this kernel ") {
                    Some(rest) if fexit.starts_with("refused") => {
                        format!("this kernel {rest} and {fexit}")
                    }
                    _ => format!("{kprobe}; {fexit}"),
                }
            }
            _ => "no function hook is defined".into(),
        }
    }
}

/// Attach every function hook as precisely as the kernel allows. Never
/// fails: a hook that cannot attach is reported in the outcome.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf, facts: &KernelFacts) -> Outcome {
    let mut out = Outcome::default();
    // Set once the kernel refuses tracing programs for reasons that are not
    // the function's: then they are not tried again.
    let mut fexit_refused: Option<String> = test_kprobes_only();
    for h in HOOKS {
        let fexit = match (
            &fexit_refused,
            facts.fexit_obstacle(h.function, h.nargs, h.reads),
        ) {
            (Some(r), _) => Err(r.clone()),
            (None, Some(o)) => Err(format!("{} impossible ({o})", h.tracing.kind())),
            (None, None) => attach_tracing(ebpf, btf, h).map_err(|e| {
                let why = format!(
                    "refused {} on {} ({})",
                    h.tracing.kind(),
                    h.function,
                    short(&e)
                );
                if e.contains("Operation not permitted") {
                    fexit_refused = Some(why.clone());
                }
                why
            }),
        };
        let attached = match fexit {
            Ok(()) => Attached::Tracing,
            Err(fexit_why) => {
                let kprobe = match facts.kprobe_obstacle(h.function) {
                    Some(o) => Err(o),
                    None => attach_kprobes(ebpf, h)
                        .map_err(|e| format!("kprobe on {} failed ({})", h.function, short(&e))),
                };
                match kprobe {
                    Ok(()) => Attached::Kprobe,
                    Err(kprobe_why) => Attached::No {
                        fexit: fexit_why,
                        kprobe: kprobe_why,
                    },
                }
            }
        };
        match &attached {
            Attached::Tracing => {
                out.hooks
                    .push(format!("{}/{}", h.tracing.kind(), h.function));
                out.live.push(h.function);
            }
            Attached::Kprobe => {
                out.hooks.push(format!("kprobe/{}", h.function));
                if h.kretprobe.is_some() {
                    out.hooks.push(format!("kretprobe/{}", h.function));
                }
                out.live.push(h.function);
            }
            Attached::No { fexit, kprobe } => out
                .notes
                .push(format!("{} unavailable: {kprobe}; {fexit}", h.answers)),
        }
        out.results.push((h.function, attached));
    }
    out
}

/// TEST HOOK, for the QEMU kernel matrix: with `TWMON_TEST_KPROBES_ONLY=1`
/// fexit/fentry are not tried, so the kprobe/kretprobe fallback is what
/// loads, on kernels that would take fexit. Unset (always, in normal use)
/// it changes nothing.
fn test_kprobes_only() -> Option<String> {
    (std::env::var("TWMON_TEST_KPROBES_ONLY").as_deref() == Ok("1"))
        .then(|| "fexit/fentry not tried (TWMON_TEST_KPROBES_ONLY=1)".to_string())
}

/// An aya error chain in a few words: EPERM at load is the common refusal
/// (lockdown, or an environment that forbids tracing programs); otherwise
/// the first line of what the kernel said, cut short.
fn short(e: &str) -> String {
    if e.contains("BPF_PROG_LOAD") && e.contains("Operation not permitted") {
        return "EPERM at load".into();
    }
    let line = e.lines().next().unwrap_or(e);
    match line.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

fn attach_tracing(ebpf: &mut Ebpf, btf: &Btf, h: &FunctionHook) -> Result<(), String> {
    match h.tracing {
        Tracing::Fexit(name) => {
            let p: &mut FExit = program(ebpf, name)?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            p.load(h.function, btf).map_err(|e| error_chain(&e))?;
            p.attach().map(|_| ()).map_err(|e| error_chain(&e))
        }
        Tracing::Fentry(name) => {
            let p: &mut FEntry = program(ebpf, name)?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            p.load(h.function, btf).map_err(|e| error_chain(&e))?;
            p.attach().map(|_| ()).map_err(|e| error_chain(&e))
        }
    }
}

fn attach_kprobes(ebpf: &mut Ebpf, h: &FunctionHook) -> Result<(), String> {
    // The return probe first: an entry probe alone would fill its map with
    // arguments nobody reads.
    for name in h.kretprobe.into_iter().chain([h.kprobe]) {
        let p: &mut KProbe = program(ebpf, name)?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load().map_err(|e| error_chain(&e))?;
        p.attach(h.function, 0).map_err(|e| error_chain(&e))?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))
}
