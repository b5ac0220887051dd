//! Precise mode: function hooks that see a bind conflict where the kernel
//! decides it. `inet_bind_conflict(sk, sk2, uid, relax, reuseport_cb_ok,
//! reuseport_ok)` returns true when `sk2` blocks `sk`: that `sk2` is the
//! holder as the kernel sees it, with no model in between.
//!
//! Hooked with fexit where the kernel allows tracing programs, else with a
//! kprobe (remembers `sk2` per thread) and a kretprobe (reads the verdict).
//! Either way the blocking sockets are kept per thread in `CONFLICTS` until
//! the bind()/listen() returns; `sys_exit` (sockcall.rs) then sends them as
//! a record of their own just before the call's record, and forgets them.
//!
//! The port functions, at their exit: `inet_csk_get_port(sk, snum)` (TCP
//! bind and listen), `udp_lib_get_port(sk, snum, ...)` (UDP bind) and
//! `__inet_hash_connect(death_row, sk, ...)` (TCP connect's search of the
//! ephemeral range). A failure is kept in the same per-thread entry, with
//! the port asked for and the return value: it says the call failed on the
//! port itself (a conflict, an exhausted range), not for another reason.
//! Only failures are looked at, so a successful bind or connect pays the
//! hook's call and one comparison.
//!
//! Also: the entry of `__inet_twsk_schedule`, where every timewait timer is
//! (re)armed, to see FIN_WAIT2 -> TIME_WAIT re-arms that fire no timer
//! tracepoint (timewait.rs); and the entry of `tcp_v4_send_reset` /
//! `tcp_v6_send_reset`, which marks a timewait sock that answers with a RST
//! on kernels whose `tcp_send_reset` tracepoint skips timewait socks.
//!
//! `sk2` may be a timewait sock: only `sock_common` fields are read from it
//! (plus `tw_substate` when its state says it is one).

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, LruHashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use monitor_common::{
    ConflictSock, ConflictsEvent, KIND_CONFLICTS, LOST_BINDS, MAX_CONFLICTS, PORT_FN_GET_PORT,
    PORT_FN_HASH_CONNECT, PORT_FN_UDP_GET_PORT,
};

use crate::kread::{field, off, Probe, Read};
use crate::sock;
use crate::{count_lost, BINDS};

const TCP_TIME_WAIT: u8 = 6;

/// Thread id -> blocking sockets seen during its current call.
#[map]
static CONFLICTS: LruHashMap<u32, ConflictsEvent> = LruHashMap::with_max_entries(4096, 0);

/// Entry 0 is 1 while this mode's function hooks may be attached (they
/// alone fill CONFLICTS): userspace sets it before attaching them and
/// clears it when none attached. Without them the exit of every bind,
/// listen and connect leaves CONFLICTS alone: its pid helper and the hash
/// lookup were ~50 ns of a connect's ~225 (kernel.bpf_stats_enabled).
#[map]
static FUNCTION_HOOKS: Array<u32> = Array::with_max_entries(1, 0);

/// kprobe path only: pid_tgid -> `sk2` of the inet_bind_conflict call in
/// progress, for the kretprobe that sees the verdict.
#[map]
static CONFLICT_ARG: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// fexit: arguments and return value in one place. The six arguments come
/// first in the context, the return value (a bool) after them; the loader
/// checked this prototype in the kernel's BTF before loading.
#[fexit(function = "inet_bind_conflict")]
pub fn twmon_fexit_bind_conflict(ctx: FExitContext) -> i32 {
    let sk2: u64 = ctx.arg(1);
    let ret: u64 = ctx.arg(6);
    // A bool in a 64-bit slot: only the low byte is defined.
    if ret & 0xff != 0 {
        note(sk2);
    }
    0
}

#[kprobe]
pub fn twmon_kprobe_bind_conflict(ctx: ProbeContext) -> u32 {
    if let Some(sk2) = ctx.arg::<u64>(1) {
        let _ = CONFLICT_ARG.insert(bpf_get_current_pid_tgid(), sk2, 0);
    }
    0
}

#[kretprobe]
pub fn twmon_kretprobe_bind_conflict(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let ret: u64 = ctx.ret();
    if let Some(p) = CONFLICT_ARG.get_ptr(key) {
        // SAFETY: a value pointer the map just returned.
        let sk2 = unsafe { *p };
        let _ = CONFLICT_ARG.remove(key);
        if ret & 0xff != 0 {
            note(sk2);
        }
    }
    0
}

/// Every timewait timer (re)arm: see timewait::on_schedule.
#[fentry(function = "__inet_twsk_schedule")]
pub fn twmon_fentry_twsk_schedule(ctx: FEntryContext) -> i32 {
    let tw: u64 = ctx.arg(0);
    let rearm: u64 = ctx.arg(2);
    let _ = crate::timewait::on_schedule(tw, rearm & 0xff != 0);
    0
}

#[kprobe]
pub fn twmon_kprobe_twsk_schedule(ctx: ProbeContext) -> u32 {
    if let (Some(tw), Some(rearm)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        let _ = crate::timewait::on_schedule(tw, rearm & 0xff != 0);
    }
    0
}

/// kprobe path only: pid_tgid -> (PORT_FN_* << 32 | port) of the port
/// function call in progress, for the kretprobe that sees its result.
#[map]
static PORT_ARG: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// `inet_csk_get_port(sk, snum)`: 0 = the port is the socket's; anything
/// else a conflict (1 before 6.5-ish kernels, -EADDRINUSE after).
#[fexit(function = "inet_csk_get_port")]
pub fn twmon_fexit_get_port(ctx: FExitContext) -> i32 {
    let snum: u64 = ctx.arg(1);
    let ret: u64 = ctx.arg(2);
    port_verdict(PORT_FN_GET_PORT, snum as u16, ret as i32);
    0
}

#[kprobe]
pub fn twmon_kprobe_get_port(ctx: ProbeContext) -> u32 {
    if let Some(snum) = ctx.arg::<u64>(1) {
        port_call(PORT_FN_GET_PORT, snum as u16);
    }
    0
}

#[kretprobe]
pub fn twmon_kretprobe_get_port(ctx: RetProbeContext) -> u32 {
    port_return(PORT_FN_GET_PORT, ctx.ret());
    0
}

/// `udp_lib_get_port(sk, snum, hash2_nulladdr)`: 0 or 1 (in use).
#[fexit(function = "udp_lib_get_port")]
pub fn twmon_fexit_udp_get_port(ctx: FExitContext) -> i32 {
    let snum: u64 = ctx.arg(1);
    let ret: u64 = ctx.arg(3);
    port_verdict(PORT_FN_UDP_GET_PORT, snum as u16, ret as i32);
    0
}

#[kprobe]
pub fn twmon_kprobe_udp_get_port(ctx: ProbeContext) -> u32 {
    if let Some(snum) = ctx.arg::<u64>(1) {
        port_call(PORT_FN_UDP_GET_PORT, snum as u16);
    }
    0
}

#[kretprobe]
pub fn twmon_kretprobe_udp_get_port(ctx: RetProbeContext) -> u32 {
    port_return(PORT_FN_UDP_GET_PORT, ctx.ret());
    0
}

/// `__inet_hash_connect(death_row, sk, port_offset, check_established)`:
/// 0, or -EADDRNOTAVAIL when no local port is left (or, for a socket bound
/// to a port before connect(), when that 4-tuple is taken). The port is
/// the socket's own (0 when it had none: the range was searched).
#[fexit(function = "__inet_hash_connect")]
pub fn twmon_fexit_hash_connect(ctx: FExitContext) -> i32 {
    let ret: u64 = ctx.arg(4);
    if ret as i32 != 0 {
        let sk: u64 = ctx.arg(1);
        let port = field(sk, off!(skc_num)) as u16;
        port_verdict(PORT_FN_HASH_CONNECT, port, ret as i32);
    }
    0
}

#[kprobe]
pub fn twmon_kprobe_hash_connect(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(1) {
        port_call(PORT_FN_HASH_CONNECT, field(sk, off!(skc_num)) as u16);
    }
    0
}

#[kretprobe]
pub fn twmon_kretprobe_hash_connect(ctx: RetProbeContext) -> u32 {
    port_return(PORT_FN_HASH_CONNECT, ctx.ret());
    0
}

/// An early timewait end (reused by a SYN or a connect, reset, netns
/// exit): see timewait::on_deschedule.
#[fentry(function = "inet_twsk_deschedule_put")]
pub fn twmon_fentry_twsk_deschedule(ctx: FEntryContext) -> i32 {
    let _ = crate::timewait::on_deschedule(ctx.arg(0));
    0
}

#[kprobe]
pub fn twmon_kprobe_twsk_deschedule(ctx: ProbeContext) -> u32 {
    if let Some(tw) = ctx.arg::<u64>(0) {
        let _ = crate::timewait::on_deschedule(tw);
    }
    0
}

/// A RST sent for a socket: marks it when it is a timewait sock (see
/// timewait::mark_reset). The first argument is the socket on every kernel
/// (6.10 added a third, the reason).
#[fentry(function = "tcp_v4_send_reset")]
pub fn twmon_fentry_v4_send_reset(ctx: FEntryContext) -> i32 {
    let _ = crate::timewait::mark_reset(ctx.arg(0));
    0
}

#[kprobe]
pub fn twmon_kprobe_v4_send_reset(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = crate::timewait::mark_reset(sk);
    }
    0
}

#[fentry(function = "tcp_v6_send_reset")]
pub fn twmon_fentry_v6_send_reset(ctx: FEntryContext) -> i32 {
    let _ = crate::timewait::mark_reset(ctx.arg(0));
    0
}

#[kprobe]
pub fn twmon_kprobe_v6_send_reset(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = crate::timewait::mark_reset(sk);
    }
    0
}

/// kprobe path: remember which port function this thread entered, and for
/// which port.
#[inline(always)]
fn port_call(func: u16, port: u16) {
    let _ = PORT_ARG.insert(
        bpf_get_current_pid_tgid(),
        ((func as u64) << 32) | port as u64,
        0,
    );
}

/// kretprobe path: the result of the call `port_call` saw begin.
#[inline(always)]
fn port_return(func: u16, ret: u64) {
    let key = bpf_get_current_pid_tgid();
    let Some(p) = PORT_ARG.get_ptr(key) else {
        return;
    };
    // SAFETY: a value pointer the map just returned.
    let v = unsafe { *p };
    let _ = PORT_ARG.remove(key);
    if (v >> 32) as u16 == func {
        port_verdict(func, v as u16, ret as i32);
    }
}

/// A port function returned: keep its failure (the last one wins) for the
/// current thread's call.
#[inline(always)]
fn port_verdict(func: u16, port: u16, ret: i32) {
    if ret == 0 {
        return;
    }
    if let Some(c) = entry() {
        c.port_fn = func;
        c.port = port;
        c.port_ret = ret;
    }
}

/// The current thread's entry, created empty when missing.
#[inline(always)]
fn entry() -> Option<&'static mut ConflictsEvent> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = match CONFLICTS.get_ptr_mut(tid) {
        Some(p) => p,
        None => {
            // SAFETY: all-zero is a valid ConflictsEvent (n = 0, no port
            // verdict).
            let empty: ConflictsEvent = unsafe { core::mem::zeroed() };
            CONFLICTS.insert(tid, empty, 0).ok()?;
            CONFLICTS.get_ptr_mut(tid)?
        }
    };
    // SAFETY: a value pointer the map returned; this thread is the only
    // writer of its own entry.
    Some(unsafe { &mut *p })
}

/// Remember `sk2` as blocking the current thread's call (once per socket,
/// at most MAX_CONFLICTS).
#[inline(always)]
fn note(sk2: u64) {
    if sk2 == 0 {
        return;
    }
    let Some(c) = entry() else {
        return;
    };
    let n = c.n as usize;
    for i in 0..MAX_CONFLICTS {
        if i < n && c.socks[i].sk == sk2 {
            return;
        }
    }
    if n >= MAX_CONFLICTS {
        return;
    }
    fill(&mut c.socks[n], sk2);
    c.n = n as u32 + 1;
}

#[inline(always)]
fn fill(s: &mut ConflictSock, sk: u64) {
    // A helper call per field: a [`crate::kread::Head`] copy here took the
    // inet_bind_conflict program past the verifier's 512-byte stack (6.1),
    // and a failing bind is not hot.
    let h = Probe(sk);
    let family = sock::family(&h);
    let mut state = h.u8(off!(skc_state));
    if state == TCP_TIME_WAIT {
        // A timewait sock: FIN_WAIT2 or TIME_WAIT, as twmon names them.
        let sub = h.u8(off!(tw_substate));
        if sub != 0 {
            state = sub;
        }
    }
    s.sk = sk;
    s.cookie = sock::cookie(&h);
    s.netns = sock::netns(&h);
    s.flags = sock::common_flags(&h);
    s.family = family;
    s.sport = sock::local_port(&h);
    s.dport = sock::remote_port(&h);
    s.state = state;
    s._pad = 0;
    s.saddr = sock::local_addr(&h, family);
    s.daddr = sock::remote_addr(&h, family);
}

/// The blocking sockets of one thread's call, taken by `sys_exit`: sent
/// before the call's record, and forgotten when this guard goes out of scope
/// (whichever way the program returns), so none leaks into the next call.
pub struct Taken {
    tid: u32,
}

impl Taken {
    /// The current thread's, or none (tid 0, the idle task's, which never
    /// binds) while no function hook can have filled CONFLICTS.
    #[inline(always)]
    pub fn new() -> Taken {
        let on = FUNCTION_HOOKS.get(0).is_some_and(|v| *v != 0);
        Taken {
            tid: if on {
                bpf_get_current_pid_tgid() as u32
            } else {
                0
            },
        }
    }

    /// Send the blocking sockets and the port verdict, if any, tagged with
    /// the calling socket's inode; sys_exit sends the call's own record
    /// right after.
    #[inline(always)]
    pub fn send(&self, inode: u64) {
        if self.tid == 0 {
            return;
        }
        let Some(p) = CONFLICTS.get_ptr(self.tid) else {
            return;
        };
        // SAFETY: a value pointer the map returned.
        let c = unsafe { &*p };
        if c.n == 0 && c.port_fn == 0 {
            return;
        }
        let Some(mut entry) = BINDS.reserve::<ConflictsEvent>(0) else {
            count_lost(LOST_BINDS);
            return;
        };
        let e = entry.as_mut_ptr();
        // SAFETY: a reserved record of the right size, fully written.
        unsafe {
            (*e).kind = KIND_CONFLICTS;
            (*e).tid = self.tid;
            (*e).inode = inode;
            (*e).n = if (c.n as usize) < MAX_CONFLICTS {
                c.n
            } else {
                MAX_CONFLICTS as u32
            };
            (*e).port_ret = c.port_ret;
            (*e).port_fn = c.port_fn;
            (*e).port = c.port;
            (*e)._pad = 0;
            (*e).socks = c.socks;
        }
        // The bind result that follows at once decides the wakeup.
        entry.submit(BPF_RB_NO_WAKEUP as u64);
    }
}

impl Drop for Taken {
    #[inline(always)]
    fn drop(&mut self) {
        // Most calls have no entry (only precise mode's hooks make one, for
        // a call that met a blocking socket): a lookup, which the verifier
        // inlines, spares them the delete's bucket lock. This runs at the
        // exit of every bind, listen and connect of the host.
        if self.tid != 0 && CONFLICTS.get_ptr(self.tid).is_some() {
            let _ = CONFLICTS.remove(self.tid);
        }
    }
}
