//! The life of timewait sockets, which `inet_sock_set_state` never shows:
//! the timer tracepoints filtered on `tw_timer_handler`.
//!
//! - `timer_start`: a new timewait sock, or a re-arm. Both are sent as
//!   TW_OPEN: userspace, which keeps the timewait socks it was told about,
//!   tells a new one from a re-arm and reports a changed substate
//!   (FIN_WAIT2 -> TIME_WAIT). Keeping them in a kernel map as well cost an
//!   LRU insert on every new timewait sock, in the churn's own softirq.
//! - `timer_expire_entry`: normal expiry.
//! - `timer_cancel`: fires on expiry and on re-arm too. Expiry is recognised
//!   by jiffies having reached the timer; what is left is an early kill or a
//!   re-arm. Where the kernel's state says why (a RST just sent for it, the
//!   sock already out of the hash: reused by connect, its namespace without
//!   references: netns exit) that goes as flags; otherwise (a SYN's
//!   takeover, a received RST, a re-arm) with the kernel stack, from which
//!   userspace tells which.
//!
//! A re-arm whose new expiry falls in the same timer-wheel bucket only
//! rewrites `expires` and fires no tracepoint at all: a FIN_WAIT2 -> TIME_WAIT
//! change can go unseen. The substate is read again at every later event.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_stack, bpf_jiffies64,
        bpf_ktime_get_boot_ns,
    },
    programs::BtfTracePointContext,
    EbpfContext,
};
use monitor_common::{
    TwEvent, F_HAVE_OWNER, F_NET_DYING, F_RESET_SENT, F_TW_UNHASHED, KIND_TW, LOST_EVENTS,
    STACK_DEPTH, TW_CANCEL, TW_DESCHEDULE, TW_EXPIRED, TW_OPEN, TW_SUBSTATE,
};

use crate::kread::{field, off, Direct, Head, Read};
use crate::sock;
use crate::{count_lost, EVENTS, RST_TW};

const TCP_TIME_WAIT: u64 = 6;

/// A timewait timer: the timewait sock behind it and the timer's expiry.
struct TwTimer {
    tw: u64,
    expires: u64,
}

/// The timewait sock behind a timer, if the timer is a timewait timer.
#[inline(always)]
fn tw_of_timer(ctx: &BtfTracePointContext) -> Option<TwTimer> {
    let timer = Direct(ctx.arg(0));
    let handler = unsafe { core::ptr::read_volatile(&crate::kread::OFFSETS.tw_timer_handler) };
    if handler == 0 || timer.get(off!(timer_function)) != handler {
        return None;
    }
    Some(TwTimer {
        tw: timer.0 - off!(tw_timer).off as u64,
        expires: timer.get(off!(timer_expires)),
    })
}

/// The expiry of a timewait sock's timer, from the sock (precise mode's
/// hooks, which have no typed timer).
#[inline(always)]
fn expires(tw: u64) -> u64 {
    field(tw + off!(tw_timer).off as u64, off!(timer_expires))
}

pub fn on_timer_start(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tw_of_timer(ctx)?;
    emit(ctx, t.tw, t.expires, TW_OPEN, 0)
}

pub fn on_timer_expire(ctx: &BtfTracePointContext) -> Option<()> {
    let t = tw_of_timer(ctx)?;
    emit(ctx, t.tw, t.expires, TW_EXPIRED, 0)
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
    // state says is sent as flags; when it says nothing, the stack tells,
    // in userspace (a re-arm's timer_start follows).
    let extra = if reset_sent_for(t.tw) {
        F_RESET_SENT
    } else {
        0
    };
    emit(ctx, t.tw, t.expires, TW_CANCEL, extra)
}

/// The flags of a cancel that tell why it ended without a stack
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
pub fn on_schedule<C: EbpfContext>(ctx: &C, tw: u64, rearm: bool) -> Option<()> {
    if !rearm {
        return None;
    }
    emit(ctx, tw, expires(tw), TW_SUBSTATE, 0)
}

/// Precise mode, at the entry of `inet_twsk_deschedule_put(tw)`: an early
/// end is under way, sent with the current process (userspace keeps it for
/// the TW_CANCEL that follows).
pub fn on_deschedule<C: EbpfContext>(ctx: &C, tw: u64) -> Option<()> {
    emit(ctx, tw, expires(tw), TW_DESCHEDULE, 0)
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, tw: u64, expires: u64, what: u8, extra: u32) -> Option<()> {
    let Some(mut entry) = EVENTS.reserve::<TwEvent>(0) else {
        count_lost(LOST_EVENTS);
        return None;
    };
    let e = entry.as_mut_ptr();
    // One helper call for the sock_common and the substate: a call per
    // field made these records cost ~15 helper calls each.
    let h = Head::copy(tw);
    let family = sock::family(&h);
    let cookie = sock::cookie(&h);
    // SAFETY: plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `e` is a reserved record of the right size, filled before submit.
    unsafe {
        (*e).kind = KIND_TW;
        (*e).flags = sock::common_flags(&h) | extra;
        (*e).ts_ns = ts_ns;
        (*e).cookie = cookie;
        (*e).tw = tw;
        (*e).expires = expires;
        (*e).jiffies = bpf_jiffies64();
        (*e).netns = sock::netns(&h);
        (*e).family = family;
        (*e).sport = sock::local_port(&h);
        (*e).dport = sock::remote_port(&h);
        (*e).what = what;
        (*e).substate = h.get(off!(tw_substate)) as u8;
        (*e)._pad = 0;
        (*e).saddr = sock::local_addr(&h, family);
        (*e).daddr = sock::remote_addr(&h, family);
        (*e).owner_pid = 0;
        (*e).owner_comm = [0; 16];
        // A new sock's owner is joined in userspace by cookie (see
        // state.rs).
        if what == TW_DESCHEDULE {
            (*e).owner_pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*e).owner_comm = bpf_get_current_comm().unwrap_or([0; 16]);
            (*e).flags |= F_HAVE_OWNER;
        }
        (*e).stack_len = 0;
        // Unwinding the stack costs ~2 us (kernel.bpf_stats_enabled, 8
        // frames), the most of any record: taken only when neither a RST
        // mark nor the kernel's state tells the end.
        if what == TW_CANCEL {
            (*e).flags |= end_facts(&h);
        }
        if what != TW_CANCEL || (*e).flags & (F_RESET_SENT | F_TW_UNHASHED | F_NET_DYING) != 0 {
            (*e).stack = [0; STACK_DEPTH];
        } else {
            // Zero-fills what it does not write.
            let n = bpf_get_stack(
                ctx.as_ptr(),
                (*e).stack.as_mut_ptr() as *mut core::ffi::c_void,
                (STACK_DEPTH * 8) as u32,
                0,
            );
            if n > 0 {
                (*e).stack_len = (n / 8) as u32;
            }
        }
    }
    entry.submit(crate::events_wakeup(ts_ns));
    Some(())
}
