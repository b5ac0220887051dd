//! What the running kernel lets twmon hook, found out at start.
//!
//! Two modes feed the same records: `tracepoint` (tp_btf programs, which
//! need only BTF) and `precise` (function hooks: fexit where the kernel
//! allows tracing programs, else kprobe/kretprobe). Function hooks need more
//! from the kernel than tracepoints: kprobes compiled in (CONFIG_KPROBES),
//! or tracing programs allowed (fexit refused here means the kernel or its
//! lockdown said no), and a target function that exists on its own (not
//! inlined into its callers) and is not excluded from tracing. These facts
//! are gathered here once; whether fexit really loads is only known by
//! trying (`precise.rs` does, and its refusal is the answer).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};

use super::offsets::VMLINUX_BTF;

/// Where tracefs may be mounted.
const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// The kprobe PMU: perf_event_open attaches kprobes through it (4.17+).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A target function as the kernel's BTF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncProto {
    pub params: Vec<String>,
}

/// The facts that decide which hooks can work.
#[derive(Debug, Clone, Default)]
pub struct KernelFacts {
    pub btf: bool,
    pub tracefs: Option<PathBuf>,
    /// The kprobe PMU or tracefs `kprobe_events` exists.
    pub kprobes: bool,
    /// Target functions with a symbol of their own in /proc/kallsyms (an
    /// inlined function has none; a `.isra`/`.constprop` clone has another
    /// name and changed arguments, so it does not count).
    pub in_kallsyms: HashSet<String>,
    /// Clones found instead of the function itself (name.isra.0 ...).
    pub clones: HashSet<String>,
    /// Targets listed in `available_filter_functions`; None when that file
    /// cannot be read (no tracefs mounted): then nothing is known either way.
    pub filterable: Option<HashSet<String>>,
    /// Prototypes from BTF, for the targets that have a FUNC entry.
    pub protos: std::collections::HashMap<String, FuncProto>,
}

impl KernelFacts {
    /// Look at this kernel for `targets`, given its BTF and /proc/kallsyms
    /// as the caller read them (None: not readable): start-up reads both
    /// for the struct offsets and the timer handler's address, and reading
    /// them again here was about a third of it.
    pub fn probe(targets: &[&str], btf: Option<&Btf>, kallsyms: Option<&str>) -> KernelFacts {
        let tracefs = TRACEFS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("available_events").exists() || p.join("trace").exists());
        let kprobes = Path::new(KPROBE_PMU).exists()
            || tracefs
                .as_ref()
                .is_some_and(|t| t.join("kprobe_events").exists());
        let (in_kallsyms, clones) = kallsyms
            .map(|text| kallsyms_hits(text, targets))
            .unwrap_or_default();
        let filterable = tracefs.as_ref().and_then(|t| {
            fs::read_to_string(t.join("available_filter_functions"))
                .ok()
                .map(|text| filter_hits(&text, targets))
        });
        let (btf, protos) = match btf {
            Some(b) => (true, btf_protos(b, targets)),
            None => (false, Default::default()),
        };
        KernelFacts {
            btf,
            tracefs,
            kprobes,
            in_kallsyms,
            clones,
            filterable,
            protos,
        }
    }

    /// Why `function` cannot take a kprobe here, if it cannot.
    pub fn kprobe_obstacle(&self, function: &str) -> Option<String> {
        if !self.kprobes {
            return Some(
                "this kernel has no kprobes (CONFIG_KPROBES is off: no kprobe PMU, no kprobe_events)"
                    .into(),
            );
        }
        self.function_obstacle(function)
    }

    /// Why `function` cannot be hooked at all, if that is known.
    pub fn function_obstacle(&self, function: &str) -> Option<String> {
        if !self.in_kallsyms.contains(function) {
            if self.clones.contains(function) {
                return Some(format!(
                    "{function} exists only as a compiler clone (.isra/.constprop) on this kernel"
                ));
            }
            if self.in_kallsyms.is_empty() && self.protos.contains_key(function) {
                // kallsyms unreadable (no CAP_SYSLOG): BTF says it exists.
                return None;
            }
            return Some(format!(
                "{function} is not a function of its own on this kernel (inlined or absent from /proc/kallsyms)"
            ));
        }
        if let Some(f) = &self.filterable {
            if !f.contains(function) {
                return Some(format!(
                    "{function} is not traceable on this kernel (not in available_filter_functions)"
                ));
            }
        }
        None
    }

    /// Why fexit on `function` cannot work, before trying to load it: the
    /// prototype must take `nargs` parameters (the return value follows
    /// them; 0: any number, for an entry hook) and have the named ones the
    /// program reads where it reads them.
    pub fn fexit_obstacle(
        &self,
        function: &str,
        nargs: usize,
        reads: &[(usize, &str)],
    ) -> Option<String> {
        if !self.btf {
            return Some(format!("no kernel BTF at {VMLINUX_BTF}"));
        }
        let Some(proto) = self.protos.get(function) else {
            return Some(format!("{function} has no BTF entry on this kernel"));
        };
        if let Some(o) = proto_mismatch(function, proto, nargs, reads) {
            return Some(o);
        }
        self.function_obstacle(function)
    }
}

/// Does the prototype take `nargs` parameters with the named ones in place?
pub fn proto_mismatch(
    function: &str,
    proto: &FuncProto,
    nargs: usize,
    reads: &[(usize, &str)],
) -> Option<String> {
    let misplaced = reads
        .iter()
        .any(|(i, name)| proto.params.get(*i).map(String::as_str) != Some(*name));
    if (nargs != 0 && proto.params.len() != nargs) || misplaced {
        let wanted: Vec<String> = reads.iter().map(|(i, n)| format!("{n} at {i}")).collect();
        let count = match nargs {
            0 => String::new(),
            n => format!("{n} parameters with "),
        };
        Some(format!(
            "{function} takes ({}) on this kernel, twmon needs {count}{}",
            proto.params.join(", "),
            wanted.join(", ")
        ))
    } else {
        None
    }
}

/// Which of `targets` have a text symbol of their own, and which only a
/// clone (`name.isra.0`, `name.constprop.0`, ...).
pub fn kallsyms_hits(text: &str, targets: &[&str]) -> (HashSet<String>, HashSet<String>) {
    let mut own = HashSet::new();
    let mut clones = HashSet::new();
    for (_, name) in super::sys::text_symbols(text) {
        let (stem, clone) = match name.split_once('.') {
            Some((s, _)) => (s, true),
            None => (name, false),
        };
        if let Some(t) = targets.iter().find(|t| **t == stem) {
            if clone {
                clones.insert(t.to_string());
            } else {
                own.insert(t.to_string());
            }
        }
    }
    (own, clones)
}

/// Which of `targets` `available_filter_functions` lists ("name" or
/// "name [module]" per line).
pub fn filter_hits(text: &str, targets: &[&str]) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| targets.contains(n))
        .map(str::to_string)
        .collect()
}

fn btf_protos(btf: &Btf, targets: &[&str]) -> std::collections::HashMap<String, FuncProto> {
    let mut out = std::collections::HashMap::new();
    for t in targets {
        let Ok(types) = btf.resolve_types_by_name(t) else {
            continue;
        };
        for ty in types {
            let Type::Func(f) = ty else { continue };
            let Ok(Type::FuncProto(p)) = btf.resolve_chained_type(&f) else {
                continue;
            };
            let params = p
                .parameters
                .iter()
                .map(|a| btf.resolve_name(a).unwrap_or_default())
                .collect();
            out.insert(t.to_string(), FuncProto { params });
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_tells_own_symbols_from_clones() {
        let text = "ffffffff81000000 t inet_bind_conflict\n\
                    ffffffff81000100 t tcp_twsk_unique.isra.0\n\
                    ffffffff81000200 T inet_csk_get_port\n\
                    ffffffff81000300 d inet_twsk_kill\n";
        let (own, clones) = kallsyms_hits(
            text,
            &[
                "inet_bind_conflict",
                "tcp_twsk_unique",
                "inet_csk_get_port",
                "inet_twsk_kill",
            ],
        );
        assert!(own.contains("inet_bind_conflict"));
        assert!(own.contains("inet_csk_get_port"));
        assert!(!own.contains("tcp_twsk_unique"));
        assert!(clones.contains("tcp_twsk_unique"));
        // A data symbol is not a function.
        assert!(!own.contains("inet_twsk_kill"));
    }

    #[test]
    fn obstacles_name_what_is_missing() {
        let mut f = KernelFacts {
            btf: true,
            ..Default::default()
        };
        f.in_kallsyms.insert("inet_bind_conflict".into());
        f.protos.insert(
            "inet_bind_conflict".into(),
            FuncProto {
                params: vec!["sk".into(), "sk2".into()],
            },
        );
        assert!(f
            .kprobe_obstacle("inet_bind_conflict")
            .unwrap()
            .contains("no kprobes"));
        f.kprobes = true;
        assert_eq!(f.kprobe_obstacle("inet_bind_conflict"), None);
        assert!(f
            .kprobe_obstacle("inet_bhash2_conflict")
            .unwrap()
            .contains("inlined"));
        assert_eq!(
            f.fexit_obstacle("inet_bind_conflict", 2, &[(1, "sk2")]),
            None
        );
        assert!(f
            .fexit_obstacle("inet_bind_conflict", 3, &[(1, "sk2")])
            .unwrap()
            .contains("takes (sk, sk2)"));
        assert!(f
            .fexit_obstacle("inet_bind_conflict", 2, &[(0, "sk2")])
            .unwrap()
            .contains("sk2 at 0"));
        // An entry hook (nargs 0) takes any count: 6.10 gave
        // tcp_v4_send_reset a third parameter.
        assert_eq!(
            f.fexit_obstacle("inet_bind_conflict", 0, &[(1, "sk2")]),
            None
        );
        assert!(f
            .fexit_obstacle("inet_bind_conflict", 0, &[(2, "sk2")])
            .unwrap()
            .ends_with("twmon needs sk2 at 2"));
        f.filterable = Some(HashSet::new());
        assert!(f
            .kprobe_obstacle("inet_bind_conflict")
            .unwrap()
            .contains("not traceable"));
    }

    /// On a kernel with BTF (this machine), the prototype the precise
    /// programs rely on is read from it.
    #[test]
    fn the_running_kernels_btf_gives_the_conflict_prototype() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: no {VMLINUX_BTF}");
            return;
        }
        let btf = crate::probe::offsets::read_btf(Path::new(VMLINUX_BTF)).ok();
        let f = KernelFacts::probe(&["inet_bind_conflict"], btf.as_ref(), None);
        assert!(f.btf);
        let p = f
            .protos
            .get("inet_bind_conflict")
            .expect("inet_bind_conflict in BTF");
        assert_eq!(p.params.get(1).map(String::as_str), Some("sk2"));
    }
}
