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
//! Also: the entry of `__inet_twsk_schedule`, where every timewait timer is
//! (re)armed, to see FIN_WAIT2 -> TIME_WAIT re-arms that fire no timer
//! tracepoint (timewait.rs).
//!
//! `sk2` may be a timewait sock: only `sock_common` fields are read from it
//! (plus `tw_substate` when its state says it is one).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use monitor_common::{ConflictSock, ConflictsEvent, KIND_CONFLICTS, LOST_BINDS, MAX_CONFLICTS};

use crate::kread::{field, off, Probe};
use crate::sock;
use crate::{count_lost, BINDS};

const TCP_TIME_WAIT: u8 = 6;

/// Thread id -> blocking sockets seen during its current call.
#[map]
static CONFLICTS: LruHashMap<u32, ConflictsEvent> = LruHashMap::with_max_entries(4096, 0);

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
    let _ = crate::timewait::on_schedule(&ctx, tw, rearm & 0xff != 0);
    0
}

#[kprobe]
pub fn twmon_kprobe_twsk_schedule(ctx: ProbeContext) -> u32 {
    if let (Some(tw), Some(rearm)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        let _ = crate::timewait::on_schedule(&ctx, tw, rearm & 0xff != 0);
    }
    0
}

/// Remember `sk2` as blocking the current thread's call (once per socket,
/// at most MAX_CONFLICTS).
#[inline(always)]
fn note(sk2: u64) {
    if sk2 == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = match CONFLICTS.get_ptr_mut(tid) {
        Some(p) => p,
        None => {
            // SAFETY: all-zero is a valid ConflictsEvent (n = 0).
            let empty: ConflictsEvent = unsafe { core::mem::zeroed() };
            if CONFLICTS.insert(tid, empty, 0).is_err() {
                return;
            }
            match CONFLICTS.get_ptr_mut(tid) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: a value pointer the map returned; this thread is the only
    // writer of its own entry.
    let c = unsafe { &mut *p };
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
    let family = sock::family::<Probe>(sk);
    let mut state = field(sk, off!(skc_state)) as u8;
    if state == TCP_TIME_WAIT {
        // A timewait sock: FIN_WAIT2 or TIME_WAIT, as twmon names them.
        let sub = field(sk, off!(tw_substate)) as u8;
        if sub != 0 {
            state = sub;
        }
    }
    s.sk = sk;
    s.cookie = sock::cookie::<Probe>(sk);
    s.netns = sock::netns::<Probe>(sk);
    s.flags = sock::common_flags::<Probe>(sk);
    s.family = family;
    s.sport = sock::local_port::<Probe>(sk);
    s.dport = sock::remote_port::<Probe>(sk);
    s.state = state;
    s._pad = 0;
    s.saddr = sock::local_addr::<Probe>(sk, family);
    s.daddr = sock::remote_addr::<Probe>(sk, family);
}

/// The blocking sockets of one thread's call, taken by `sys_exit`: sent
/// before the call's record, and forgotten when this guard goes out of scope
/// (whichever way the program returns), so none leaks into the next call.
pub struct Taken {
    tid: u32,
}

impl Taken {
    #[inline(always)]
    pub fn new(tid: u32) -> Taken {
        Taken { tid }
    }

    /// Send the blocking sockets, if any, tagged with the calling socket's
    /// inode; sys_exit sends the call's own record right after.
    #[inline(always)]
    pub fn send(&self, inode: u64) {
        let Some(p) = CONFLICTS.get_ptr(self.tid) else {
            return;
        };
        // SAFETY: a value pointer the map returned.
        let c = unsafe { &*p };
        if c.n == 0 {
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
            (*e)._pad = 0;
            (*e).socks = c.socks;
        }
        entry.submit(0);
    }
}

impl Drop for Taken {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = CONFLICTS.remove(self.tid);
    }
}
