//! Hook runs the kernel skipped.
//!
//! Since Linux 6.2 the kernel does not start a tracing program on a CPU
//! where the same program is already running: a softirq or hardirq that
//! fires the hook again in the middle of a run (a packet's transition
//! interrupting a close()'s, a timer cancelled from an interrupt) is
//! dropped and counted in the program's `recursion_misses`. A classic
//! tracepoint program is dropped while any kprobe or tracepoint program
//! runs on that CPU, and recent kernels count that there too. Such a run
//! never reaches a ring, so the rings' own loss counters (`LOST`) cannot
//! see it: a skipped run of the state program is a transition that
//! vanished without a trace. twmon reads the counters beside the rings'
//! and reports what they add as `lost` events of their own stream
//! (`Lost::SKIPPED_RUNS`), so that nothing the kernel missed is missed
//! silently. A skipped run of a hook that filters (the timer hooks, the
//! bind/listen/connect exits) may have concerned nothing twmon reports, so
//! that count is an upper bound.
//!
//! The counter is read from `/proc/self/fdinfo/<program fd>`, the kernel's
//! text form of the program's info, which aya does not expose.

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;

/// The sum of `recursion_misses` over every loaded program of `ebpf`, and
/// how many programs it could not be read for (a kernel before 5.12 has no
/// such counter: the sum is then low, and start-up says so).
pub fn read(ebpf: &Ebpf) -> (u64, usize) {
    let mut total = 0;
    let mut unreadable = 0;
    for (_, program) in ebpf.programs() {
        let Ok(fd) = program.fd() else {
            continue; // not loaded: never ran
        };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        match std::fs::read_to_string(path)
            .ok()
            .as_deref()
            .and_then(recursion_misses)
        {
            Some(n) => total += n,
            None => unreadable += 1,
        }
    }
    (total, unreadable)
}

/// The `recursion_misses` line of a BPF program's fdinfo.
pub fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as 6.18 prints a tp_btf program's (the count set to 17).
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t18\nprog_type:\t26\n\
prog_jited:\t1\nprog_tag:\t68b49296ee121dac\nmemlock:\t24576\nprog_id:\t8505\n\
run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t22484\n";

    #[test]
    fn the_counter_is_read_from_fdinfo() {
        assert_eq!(recursion_misses(FDINFO), Some(17));
        assert_eq!(
            recursion_misses("recursion_misses:\t0\n"),
            Some(0),
            "a last line"
        );
        // Before 5.12 there is no such line; a mangled one is not a count.
        assert_eq!(recursion_misses("run_cnt:\t5\nverified_insns:\t9\n"), None);
        assert_eq!(recursion_misses("recursion_misses:\tmany\n"), None);
        assert_eq!(recursion_misses(""), None);
    }
}
