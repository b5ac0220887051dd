//! The life of timewait sockets, which `inet_sock_set_state` never shows.
//!
//! - Birth: the socket's own FIN_WAIT2/CLOSING -> CLOSE, where
//!   tcp_time_wait() has just put the timewait sock in its place in the
//!   connection hash (`on_close`, called by the state program): TW_OPEN,
//!   before the transition's record. Kernels without the fields for that
//!   (before 6.1) announce it from `timer_start` instead, filtered on
//!   `tw_timer_handler`. `timer_start` fires for every timer the host
//!   starts (7 runs per connection of a loopback churn, most of them for
//!   timers that are not a timewait sock's): each is a program call, which
//!   on a VM with retpolines and SRSO's safe RET costs even when it does
//!   nothing (bench/NOTES.md, section (7)).
//! - `timer_expire_entry`: normal expiry.
//! - `timer_cancel`: fires on expiry and on re-arm too. Expiry is recognised
//!   by jiffies having reached the timer; what is left is an early kill or a
//!   re-arm. Where the kernel's state says why (a RST just sent for it, the
//!   sock already out of the hash: reused by connect, its namespace without
//!   references: netns exit) that goes as flags. Otherwise the sock is kept
//!   in a per-CPU slot, and the next program to run on that CPU (`resolve`),
//!   once the code that cancelled the timer has returned, looks at it again:
//!   its timer pending again (mod_timer re-queues it in the same call) is a
//!   re-arm, sent as TW_REARM with its new expiry and substate; shut down
//!   (timer_shutdown clears the function; before 6.2 del_timer_sync leaves
//!   it not pending) or holding another sock (another cookie) is an end,
//!   TW_GONE. Userspace tells a SYN's takeover from a
//!   RST by the new connection on the same 4-tuple that follows (its
//!   SYN_RECV or ESTABLISHED), and pokes every CPU (a listen(-1), which the
//!   bind/listen/connect hook sees) when a cancel waits too long for its
//!   second look. The kernel stack told these apart once, at ~2 us per
//!   cancel (kernel.bpf_stats_enabled); the timer of the connection request
//!   a SYN queues, seen by `timer_start`, after that.
//!
//! A re-arm whose new expiry falls in the same timer-wheel bucket only
//! rewrites `expires` and fires no tracepoint at all: a FIN_WAIT2 -> TIME_WAIT
//! change can go unseen. The substate is read again at every later event.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_boot_ns,
    },
    programs::BtfTracePointContext,
};
use monitor_common::{
    TwEvent, F_HAVE_OWNER, F_NET_DYING, F_RESET_SENT, F_TW_UNHASHED, KIND_TW, LOST_EVENTS,
    TW_CANCEL, TW_DESCHEDULE, TW_EXPIRED, TW_GONE, TW_OPEN, TW_REARM, TW_SUBSTATE,
};

use crate::kread::{field, off, zero_words, Direct, Head, Probe, Read};
use crate::sock;
use crate::{count_lost, EVENTS, PENDING_TW, RST_TW};

/// A timewait sock whose cancel nothing explained, until the next program
/// on its CPU looks at it again ([`resolve`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Unexplained {
    tw: u64,
    cookie: u64,
}

const TCP_TIME_WAIT: u64 = 6;

/// A timewait timer: the timewait sock behind it and the timer's expiry.
struct TwTimer {
    tw: u64,
    expires: u64,
}

/// `tw_timer_handler`'s address: what a timewait sock's timer runs.
#[inline(always)]
fn tw_handler() -> u64 {
    // SAFETY: reading a field of an initialised static.
    unsafe { core::ptr::read_volatile(&crate::kread::OFFSETS.tw_timer_handler) }
}

/// The timewait sock behind a timer, if the timer is a timewait timer
/// (every TCP timer fires these tracepoints; one load tells them apart).
#[inline(always)]
fn tw_of_timer(ctx: &BtfTracePointContext) -> Option<TwTimer> {
    let timer = Direct(ctx.arg(0));
    let function = timer.u64(off!(timer_function));
    if function == 0 || function != tw_handler() {
        return None;
    }
    Some(TwTimer {
        tw: timer.0 - off!(tw_timer).off as u64,
        expires: timer.u64(off!(timer_expires)),
    })
}

/// The expiry of a timewait sock's timer, from the sock (precise mode's
/// hooks, which have no typed timer).
#[inline(always)]
fn expires(tw: u64) -> u64 {
    field(tw + off!(tw_timer).off as u64, off!(timer_expires))
}

/// Kernels where `on_close` cannot find a new timewait sock: its timer
/// starting announces it (and a re-arm, which [`resolve`] would send too:
/// the slot is cleared so that it is sent once).
pub fn on_timer_start(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tw_of_timer(ctx)?;
    if let Some(slot) = PENDING_TW.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU touches it.
        unsafe {
            if (*slot).tw == t.tw {
                (*slot).tw = 0;
            }
        }
    }
    emit(t.tw, t.expires, TW_OPEN, 0)
}

/// How many socks of a connection-hash chain `on_close` looks at: the
/// chain holds the socks whose 4-tuples hash alike, one or two on a table
/// the kernel sizes to the host's memory.
const CHAIN_LOOK: usize = 4;

/// `sk` (whose cookie was `cookie` before this transition; 0 when nobody
/// had asked for one) goes from FIN_WAIT2 or CLOSING to CLOSE:
/// tcp_time_wait() may have just put a timewait sock, which inherits the
/// cookie, in its place in the connection hash. Announce it (TW_OPEN). A
/// socket without a cookie leaves a timewait sock without one: then the
/// ports tell it from the others of its chain.
pub fn on_close(sk: &Direct, cookie: u64) -> Option<()> {
    let (hashinfo, next) = (off!(net_tw_hashinfo), off!(skc_nulls_next));
    if !hashinfo.present() || !next.present() || tw_handler() == 0 {
        return None;
    }
    let table = Direct(sock::net(sk).u64(hashinfo));
    let (ehash, mask) = (
        table.u64(off!(hashinfo_ehash)),
        table.u32(off!(hashinfo_ehash_mask)),
    );
    if ehash == 0 {
        return None;
    }
    let bucket = ehash + (sk.u32(off!(skc_hash)) & mask) as u64 * 8;
    // At ->CLOSE the port is already released; the timewait sock keeps it.
    let ports = (sk.u16(off!(skc_dport)), sock::socket_local_port(sk));
    let mut node = Probe(bucket).raw(0, 64);
    for _ in 0..CHAIN_LOOK {
        // An odd pointer is the chain's end marker (hlist_nulls).
        if node == 0 || node & 1 != 0 {
            return None;
        }
        let cand = node - next.off as u64;
        // One copy serves the test and the record.
        let h = Head::copy(cand);
        let found = sock::cookie(&h) == cookie
            && (cookie != 0
                || (h.u8(off!(skc_state)) as u64 == TCP_TIME_WAIT
                    && (h.u16(off!(skc_dport)), sock::local_port(&h)) == ports));
        if found {
            return emit_with(&h, cand, expires(cand), TW_OPEN, 0);
        }
        node = h.raw(next.off as u64, 64);
    }
    None
}

/// The sock of the last unexplained cancel on this CPU, looked at again now
/// that the code that cancelled its timer has returned (see the module's
/// comment). Called first by every program that may run after such a
/// cancel.
#[inline(always)]
pub fn resolve() {
    let Some(slot) = PENDING_TW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, read once.
    if unsafe { (*slot).tw } != 0 {
        let _ = look_again(slot);
    }
}

/// [`resolve`] for a slot that holds a sock: TW_REARM or TW_GONE.
#[inline(always)]
fn look_again(slot: *mut Unexplained) -> Option<()> {
    // SAFETY: per-CPU slot; a program that interrupts this one on the CPU
    // finds it emptied first.
    let Unexplained { tw, cookie } = unsafe {
        let u = *slot;
        (*slot).tw = 0;
        u
    };
    // A few fields, and a record without the sock's addresses (userspace
    // has them from the cancel): a copy of the sock's head would not fit
    // on the stack of the programs that call this, beside theirs. A timer
    // shut down has no function; the cookie tells a new timewait sock at
    // a freed one's address.
    let (sk, timer) = (Probe(tw), Probe(tw + off!(tw_timer).off as u64));
    let alive = timer.u64(off!(timer_function)) == tw_handler()
        && timer.u64(off!(timer_pprev)) != 0
        && sock::cookie(&sk) == cookie;
    let Some(mut entry) = EVENTS.reserve::<TwEvent>(0) else {
        count_lost(LOST_EVENTS);
        return None;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is a reserved record of the right size, filled before submit.
    unsafe {
        // No clock (~45 ns): the cancel's time is the re-arm's or the end's.
        zero_words(e);
        (*e).kind = KIND_TW;
        (*e).tw = tw;
        (*e).cookie = cookie;
        if alive {
            (*e).what = TW_REARM;
            (*e).substate = sk.u8(off!(tw_substate));
            (*e).expires = timer.u64(off!(timer_expires));
            (*e).jiffies = bpf_jiffies64();
        } else {
            (*e).what = TW_GONE;
        }
    }
    // The cookie, not a time, draws the wakeup sample (see events_wakeup).
    entry.submit(crate::events_wakeup(cookie));
    Some(())
}

pub fn on_timer_expire(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tw_of_timer(ctx)?;
    emit(t.tw, t.expires, TW_EXPIRED, 0)
}

/// `tcp_send_reset(sk, skb, reason)`: remember a RST sent on behalf of a
/// timewait sock, which tcp_v4_rcv kills right after (TCP_TW_RST).
pub fn on_send_reset(ctx: &BtfTracePointContext) -> Option<()> {
    mark_reset(ctx.arg(0))
}

/// A RST is being sent on behalf of `sk`: when it is a timewait sock, mark
/// it for the cancel that follows. Also called by precise mode's hooks on
/// `tcp_v4_send_reset` / `tcp_v6_send_reset`, which see timewait socks on
/// kernels whose tracepoint skips them (before 6.10).
pub fn mark_reset(sk: u64) -> Option<()> {
    if sk == 0 || field(sk, off!(skc_state)) != TCP_TIME_WAIT {
        return None;
    }
    let slot = RST_TW.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; only this CPU writes it.
    unsafe { *slot = sk };
    Some(())
}

/// Was the last RST on this CPU sent for `tw`? Clears the mark.
#[inline(always)]
fn reset_sent_for(tw: u64) -> bool {
    match RST_TW.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU touches it.
        Some(slot) => unsafe {
            let hit = *slot == tw;
            if hit {
                *slot = 0;
            }
            hit
        },
        None => false,
    }
}

pub fn on_timer_cancel(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tw_of_timer(ctx)?;
    // Expiry: timer_expire_entry follows and reports it.
    // SAFETY: plain helper call.
    if unsafe { bpf_jiffies64() } >= t.expires {
        return None;
    }
    // A kill or a re-arm (mod_timer detaches first). What the kernel's own
    // state says is sent as flags; when it says nothing, what follows tells
    // (see the module's comment).
    let extra = if reset_sent_for(t.tw) {
        F_RESET_SENT
    } else {
        0
    };
    emit(t.tw, t.expires, TW_CANCEL, extra)
}

/// The flags of a cancel that tell at once why it ended
/// ([`F_TW_UNHASHED`], [`F_NET_DYING`]); 0 when the kernel's state does not
/// tell, or this kernel lacks the field.
#[inline(always)]
fn end_facts(h: &Head) -> u32 {
    let mut f = 0;
    let pprev = off!(skc_nulls_pprev);
    if pprev.present() && h.get(pprev) == 0 {
        f |= F_TW_UNHASHED;
    }
    let ns_ref = off!(net_ns_ref);
    if ns_ref.present() && sock::net(h).get(ns_ref) == 0 {
        f |= F_NET_DYING;
    }
    f
}

/// Precise mode, at the entry of `__inet_twsk_schedule(tw, timeo, rearm)`,
/// which every timewait timer (re)arm goes through: a re-arm is sent as
/// TW_SUBSTATE (userspace drops it when the substate did not change), also
/// when it lands in the same timer-wheel bucket and fires no timer
/// tracepoint. New socks (`rearm` false) are left to `timer_start`, which
/// announces them with their owner.
pub fn on_schedule(tw: u64, rearm: bool) -> Option<()> {
    if !rearm {
        return None;
    }
    emit(tw, expires(tw), TW_SUBSTATE, 0)
}

/// Precise mode, at the entry of `inet_twsk_deschedule_put(tw)`: an early
/// end is under way, sent with the current process (userspace keeps it for
/// the TW_CANCEL that follows).
pub fn on_deschedule(tw: u64) -> Option<()> {
    emit(tw, expires(tw), TW_DESCHEDULE, 0)
}

#[inline(always)]
fn emit(tw: u64, expires: u64, what: u8, extra: u32) -> Option<()> {
    // One helper call for the sock_common and the substate: a call per
    // field made these records cost ~15 helper calls each.
    emit_with(&Head::copy(tw), tw, expires, what, extra)
}

/// [`emit`] with the head of `tw` already copied into `h`.
#[inline(always)]
fn emit_with(h: &Head, tw: u64, expires: u64, what: u8, extra: u32) -> Option<()> {
    let Some(mut entry) = EVENTS.reserve::<TwEvent>(0) else {
        count_lost(LOST_EVENTS);
        return None;
    };
    let e = entry.as_mut_ptr();
    let family = sock::family(h);
    let cookie = sock::cookie(h);
    // SAFETY: plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `e` is a reserved record of the right size, filled before submit.
    unsafe {
        (*e).kind = KIND_TW;
        (*e).flags = sock::common_flags(h) | extra;
        (*e).ts_ns = ts_ns;
        (*e).cookie = cookie;
        (*e).tw = tw;
        (*e).expires = expires;
        (*e).jiffies = bpf_jiffies64();
        (*e).netns = sock::netns(h);
        (*e).family = family;
        (*e).sport = sock::local_port(h);
        (*e).dport = sock::remote_port(h);
        (*e).what = what;
        (*e).substate = h.u8(off!(tw_substate));
        (*e).saddr = sock::local_addr(h, family);
        (*e).daddr = sock::remote_addr(h, family);
        (*e).owner_pid = 0;
        // 8-byte aligned (checked below the function).
        zero_words(core::ptr::addr_of_mut!((*e).owner_comm));
        // A new sock's owner is joined in userspace by cookie (see
        // state.rs).
        if what == TW_DESCHEDULE {
            (*e).owner_pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*e).owner_comm = bpf_get_current_comm().unwrap_or([0; 16]);
            (*e).flags |= F_HAVE_OWNER;
        }
        if what == TW_CANCEL {
            (*e).flags |= end_facts(h);
            if (*e).flags & (F_RESET_SENT | F_TW_UNHASHED | F_NET_DYING) == 0 {
                if let Some(slot) = PENDING_TW.get_ptr_mut(0) {
                    // Per-CPU slot; only this CPU touches it.
                    *slot = Unexplained { tw, cookie };
                }
            }
        }
    }
    entry.submit(crate::events_wakeup(ts_ns));
    Some(())
}

// `emit` zeroes the owner name word by word (`zero_words`).
const _: () = assert!(core::mem::offset_of!(TwEvent, owner_comm) % 8 == 0);
