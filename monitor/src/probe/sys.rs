//! Facts about the running system the probe needs: privileges, clocks, the
//! kernel's HZ, and symbols from /proc/kallsyms.

use std::fs;

/// Capability numbers (linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_capeff(&s))
        .unwrap_or(0)
}

pub fn parse_capeff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What is missing to load and attach the programs: None when enough.
pub fn missing_caps(caps: u64) -> Option<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        None
    } else if has(CAP_BPF) {
        Some("CAP_PERFMON")
    } else if has(CAP_PERFMON) {
        Some("CAP_BPF")
    } else {
        Some("CAP_BPF and CAP_PERFMON")
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec on our stack.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Nanoseconds to add to a CLOCK_BOOTTIME stamp to get Unix time.
pub fn boot_to_unix_offset_ns() -> i128 {
    let boot1 = clock_ns(libc::CLOCK_BOOTTIME);
    let real = clock_ns(libc::CLOCK_REALTIME);
    let boot2 = clock_ns(libc::CLOCK_BOOTTIME);
    real - (boot1 + boot2) / 2
}

pub fn boottime_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// The kernel's HZ, which converts timewait timers (jiffies) into ms.
/// /proc/timer_list shows jiffies and monotonic time together; jiffies start
/// at INITIAL_JIFFIES = 2^32 - 300*HZ, so only the right HZ fits both.
pub fn kernel_hz() -> Option<u32> {
    let text = fs::read_to_string("/proc/timer_list").ok()?;
    hz_from_timer_list(&text)
}

pub fn hz_from_timer_list(text: &str) -> Option<u32> {
    let now_ns: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("now at "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let jiffies: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: "))?
        .trim()
        .parse()
        .ok()?;
    let secs = now_ns as f64 / 1e9;
    [100u32, 250, 300, 1000]
        .into_iter()
        .map(|hz| {
            let initial = (1u64 << 32) - 300 * hz as u64;
            let expect = initial as f64 + secs * hz as f64;
            (hz, ((jiffies as f64 - expect) / hz as f64).abs())
        })
        .filter(|(_, err_secs)| *err_secs < 2.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(hz, _)| hz)
}

/// Make every CPU this thread may run on run the bind/listen/connect hook
/// once: a listen() on fd -1 (EBADF, which the hook ignores) from this
/// thread, moved to each CPU in turn. The first thing every program does is
/// to look again at a timewait sock whose cancel on its CPU waits for that
/// (monitor-ebpf/src/timewait.rs). A CPU outside this thread's affinity
/// (a cpuset) is not reached: its cancel is decided after
/// enrich::FOLLOW_NS as if nothing had followed it.
pub fn poke_cpus() {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: plain system calls on this thread's own affinity mask, with
    // masks of the size passed.
    unsafe {
        let mut was: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut was) != 0 {
            return;
        }
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if !libc::CPU_ISSET(cpu, &was) {
                continue;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) == 0 {
                libc::listen(-1, 0);
            }
        }
        libc::sched_setaffinity(0, size, &was);
    }
}

/// The kernel function whose address the programs compare timers with: a
/// timewait sock's timer's.
pub const TIMER_HANDLERS: &[&str] = &["tw_timer_handler"];

/// Addresses of [`TIMER_HANDLERS`], from /proc/kallsyms.
pub struct Kallsyms {
    found: Vec<(&'static str, u64)>,
}

/// The functions of /proc/kallsyms' `text` ("ADDR KIND NAME [module]"
/// lines whose kind is t or T), as (address in hex, name).
pub fn text_symbols(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(addr), Some("t" | "T"), Some(name)) => Some((addr, name)),
            _ => None,
        }
    })
}

impl Kallsyms {
    pub fn parse(text: &str) -> Kallsyms {
        let mut found = Vec::new();
        for (addr, name) in text_symbols(text) {
            let Some(known) = TIMER_HANDLERS.iter().find(|f| **f == name) else {
                continue;
            };
            // Zero when kptr_restrict hides addresses: as good as absent.
            match u64::from_str_radix(addr, 16) {
                Ok(a) if a != 0 => found.push((*known, a)),
                _ => {}
            }
        }
        Kallsyms { found }
    }

    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.found.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_decide_what_is_missing() {
        let bit = |c: u32| 1u64 << c;
        let cases = [
            (0, Some("CAP_BPF and CAP_PERFMON")),
            (bit(CAP_SYS_ADMIN), None),
            (bit(CAP_BPF) | bit(CAP_PERFMON), None),
            (bit(CAP_BPF), Some("CAP_PERFMON")),
            (bit(CAP_PERFMON), Some("CAP_BPF")),
            (0x1ff_ffff_ffff, None),
        ];
        for (caps, want) in cases {
            assert_eq!(missing_caps(caps), want, "caps {caps:#x}");
        }
        assert_eq!(
            parse_capeff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(parse_capeff("CapEff:\t0000000000000000"), Some(0));
    }

    #[test]
    fn hz_is_recovered_from_timer_list() {
        // Seen on this project's 6.18 machine (HZ=250).
        let text = "Timer List Version: v0.10\nnow at 541557217328 nsecs\n\ncpu: 0\n jiffies: 4295027649\n";
        assert_eq!(hz_from_timer_list(text), Some(250));
        for hz in [100u64, 300, 1000] {
            let secs = 1234u64;
            let j = (1u64 << 32) - 300 * hz + secs * hz;
            let text = format!("now at {} nsecs\n jiffies: {j}\n", secs * 1_000_000_000);
            assert_eq!(hz_from_timer_list(&text), Some(hz as u32));
        }
        assert_eq!(hz_from_timer_list("garbage"), None);
    }

    #[test]
    fn timer_handlers_are_found_by_name() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81000100 t reqsk_timer_handler\n\
                    ffffffff81000200 d tw_timer_handler_data\n\
                    ffffffff82006070 t tw_timer_handler\n";
        let k = Kallsyms::parse(text);
        assert_eq!(k.address_of("tw_timer_handler"), Some(0xffffffff82006070));
        // Only the names asked for are kept.
        assert_eq!(k.address_of("reqsk_timer_handler"), None);
        // kptr_restrict: every address reads 0.
        let hidden = Kallsyms::parse("0000000000000000 t tw_timer_handler\n");
        assert!(hidden.is_empty());
        assert_eq!(hidden.address_of("tw_timer_handler"), None);
    }
}
