//! twmon's kernel programs, tracepoint mode: failed and successful
//! bind/listen/connect (`sys_exit`), TCP state transitions
//! (`inet_sock_set_state`), and the timewait socket life (timer tracepoints).
//! One module per question; this file holds the maps and the entry points.
#![no_std]
#![no_main]

mod kread;
mod precise;
mod sock;
mod sockcall;
mod state;
mod task;
mod timewait;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};

/// bind/listen/connect results: a ring of their own, so that a flood of state
/// transitions can never crowd out a failed bind. 4 MiB (about 27,000
/// records): a storm of failures faster than userspace explains them (80,000
/// a second in the bench) filled 256 KiB within milliseconds and lost some.
#[map]
static BINDS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// State transitions and timewait events.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Records that could not be reserved, per CPU, per ring (LOST_BINDS,
/// LOST_EVENTS). Userspace turns increments into `lost` events.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The timewait sock the kernel just sent a RST for, per CPU (tcp_v4_rcv
/// sends it and then kills the timewait sock, on the same CPU).
#[map]
static RST_TW: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The last unexplained timewait cancel on this CPU, until the next program
/// to run there looks at its sock again (`timewait::resolve`).
#[map]
static PENDING_TW: PerCpuArray<timewait::Unexplained> = PerCpuArray::with_max_entries(1, 0);

/// Unread bytes in EVENTS at which a submit wakes the reader at once.
/// Below it nothing wakes the reader: it comes by itself every few
/// milliseconds (monitor/src/probe/mod.rs) and takes what piled up. A wakeup
/// per record, which the ring's default gives whenever the reader has caught
/// up, costs the producer an irq_work and the reader a context switch per
/// event: under churn that is most of the events.
const EVENTS_WAKE_AT: u64 = 512 * 1024;

/// About one EVENTS record in this many looks at the ring's fill.
const EVENTS_CHECK_EVERY: u64 = 64;

/// The submit flags for an EVENTS record drawn by `draw`, its nanosecond
/// timestamp (or, for a record without one, its cookie) (see
/// [`EVENTS_WAKE_AT`]): about one record in [`EVENTS_CHECK_EVERY`] (those
/// whose `draw` is a multiple of it: a sample that costs nothing to draw)
/// looks at the unread bytes and wakes the reader when
/// they passed the mark. Looking at every record cost 65 ns of the state
/// program's 480 (kernel.bpf_stats_enabled under churn: the query reads the
/// consumer position, a line the reader on the other CPU keeps writing).
/// Waking on every record past the mark made a reader that had fallen
/// behind cost the churn an irq_work per event (measured: `twmon_set_state`
/// 0.5 -> 2.9 us per run beside a slow `watch`); the sample bounds that to
/// about one wakeup per 64 records.
#[inline(always)]
fn events_wakeup(draw: u64) -> u64 {
    if draw % EVENTS_CHECK_EVERY == 0 && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= EVENTS_WAKE_AT {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The last time a BINDS record woke the reader, per CPU (boot-time ns).
#[map]
static BINDS_WOKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The least time between two BINDS wakeups on one CPU. The ring's default
/// wakes the reader whenever it has caught up, which in a storm of failing
/// binds is after every record: an irq_work, a self-IPI (an MSR write, a VM
/// exit on a virtual machine) and a context switch per failure, measured at
/// 15 % of a bind storm's time. One wakeup per millisecond takes that away;
/// a record that does not wake the reader waits at most for the next one
/// or for the reader's own period (monitor/src/probe/mod.rs).
const BINDS_WAKE_GAP_NS: u64 = 1_000_000;

/// The submit flags for a BINDS record made at `now_ns` (see
/// [`BINDS_WAKE_GAP_NS`]).
#[inline(always)]
fn binds_wakeup(now_ns: u64) -> u64 {
    match BINDS_WOKE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU touches it.
        Some(last) => unsafe {
            if now_ns.wrapping_sub(*last) >= BINDS_WAKE_GAP_NS {
                *last = now_ns;
                BPF_RB_FORCE_WAKEUP as u64
            } else {
                BPF_RB_NO_WAKEUP as u64
            }
        },
        None => 0,
    }
}

#[inline(always)]
fn count_lost(ring: u32) {
    if let Some(p) = LOST.get_ptr_mut(ring) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[btf_tracepoint(function = "sys_exit")]
pub fn twmon_sys_exit(ctx: BtfTracePointContext) -> i32 {
    timewait::resolve();
    let _ = sockcall::on_sys_exit(&ctx);
    0
}

/// Attached to `syscalls/sys_exit_bind`, `sys_exit_listen` and
/// `sys_exit_connect` (see `sockcall::on_syscall_tp_exit`).
#[tracepoint]
pub fn twmon_call_exit(ctx: TracePointContext) -> u32 {
    timewait::resolve();
    let _ = sockcall::on_syscall_tp_exit(&ctx);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn twmon_set_state(ctx: BtfTracePointContext) -> i32 {
    timewait::resolve();
    let _ = state::on_set_state(&ctx);
    0
}

#[btf_tracepoint(function = "timer_start")]
pub fn twmon_timer_start(ctx: BtfTracePointContext) -> i32 {
    let _ = timewait::on_timer_start(&ctx);
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn twmon_timer_expire(ctx: BtfTracePointContext) -> i32 {
    timewait::resolve();
    let _ = timewait::on_timer_expire(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn twmon_send_reset(ctx: BtfTracePointContext) -> i32 {
    let _ = timewait::on_send_reset(&ctx);
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn twmon_timer_cancel(ctx: BtfTracePointContext) -> i32 {
    timewait::resolve();
    let _ = timewait::on_timer_cancel(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
