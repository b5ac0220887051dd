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
//!   references: netns exit) that goes as flags. Otherwise it is a SYN's
//!   takeover, a received RST or a re-arm, and what follows on this CPU
//!   tells: a re-arm's timer_start for the same sock (inside the same
//!   mod_timer call), or, for a SYN, the timer of the connection request
//!   the listener queues for the same 4-tuple in the same softirq
//!   (`reqsk_timer_handler`), which `timer_start` reports as TW_TAKEOVER.
//!   When nothing follows, userspace decides by the substate
//!   (monitor/src/probe/enrich.rs). The kernel stack told these apart
//!   before, at ~2 us per cancel (kernel.bpf_stats_enabled), the costliest
//!   record of a server-first connection.
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
    TW_CANCEL, TW_DESCHEDULE, TW_EXPIRED, TW_OPEN, TW_SUBSTATE, TW_TAKEOVER,
};

use crate::kread::{field, off, zero_words, Direct, Head, Read};
use crate::sock::{self, AF_INET6};
use crate::{count_lost, EVENTS, RST_TW, SYN_TW};

/// A timewait sock whose cancel nothing explained, and its 4-tuple.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Unexplained {
    tw: u64,
    cookie: u64,
    ts_ns: u64,
    /// Compare IPv6 addresses (a pure IPv6 sock); IPv4 ones otherwise,
    /// also for an IPv6 sock talking to a v4-mapped peer, whose connection
    /// request (tcp_v4_init_req) fills only those.
    v6: u64,
    tuple: Tuple,
}

/// What identifies a connection in the sock_common of a timewait sock and
/// of a connection request alike.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tuple {
    net: u64,
    /// IPv4: daddr, rcv_saddr, 0, 0; IPv6: the halves of v6_daddr, then
    /// of v6_rcv_saddr.
    addrs: [u64; 4],
    /// skc_dport (network order) and skc_num, as one word.
    ports: u64,
}

#[inline(always)]
fn tuple_of(h: &Head, v6: bool) -> Tuple {
    let addrs = if v6 {
        let (d, s) = (
            off!(skc_v6_daddr).off as u64,
            off!(skc_v6_rcv_saddr).off as u64,
        );
        [
            h.raw(d, 64),
            h.raw(d + 8, 64),
            h.raw(s, 64),
            h.raw(s + 8, 64),
        ]
    } else {
        [
            h.u32(off!(skc_daddr)) as u64,
            h.u32(off!(skc_rcv_saddr)) as u64,
            0,
            0,
        ]
    };
    Tuple {
        net: h.u64(off!(skc_net)),
        addrs,
        ports: (h.u16(off!(skc_dport)) as u64) << 16 | h.u16(off!(skc_num)) as u64,
    }
}

/// Whether a timewait sock's addresses are compared as IPv6 ones: an IPv6
/// sock whose peer is not v4-mapped (::ffff:a.b.c.d).
#[inline(always)]
fn pure_v6(h: &Head) -> bool {
    if sock::family(h) != AF_INET6 {
        return false;
    }
    let d = off!(skc_v6_daddr).off as u64;
    // Bytes 8..12 of a v4-mapped address are 00 00 ff ff.
    !(h.raw(d, 64) == 0 && h.raw(d + 8, 32) == 0xffff_0000)
}

/// How long after an unexplained cancel a connection request still counts
/// as the SYN that caused it. The two happen in one softirq, microseconds
/// apart natively; 0.6-1.1 ms apart in the kernel matrix's emulated guests,
/// and a virtual CPU can be stolen for longer. Userspace waits longer than
/// this (HOLD_NS in monitor/src/probe/enrich.rs).
const TAKEOVER_WINDOW_NS: u64 = 10_000_000;

const TCP_TIME_WAIT: u64 = 6;

/// A timewait timer: the timewait sock behind it and the timer's expiry.
struct TwTimer {
    tw: u64,
    expires: u64,
}

/// What a timer is for, by its function: a timewait sock's, a queued
/// connection request's, or another (every TCP timer fires these
/// tracepoints; one load tells them apart).
enum Timer {
    Tw(TwTimer),
    Request(u64),
    Other,
}

#[inline(always)]
fn timer_of(ctx: &BtfTracePointContext) -> Timer {
    let timer = Direct(ctx.arg(0));
    let function = timer.u64(off!(timer_function));
    // SAFETY: reading fields of an initialised static.
    let (tw_handler, req_handler) = unsafe {
        (
            core::ptr::read_volatile(&crate::kread::OFFSETS.tw_timer_handler),
            core::ptr::read_volatile(&crate::kread::OFFSETS.reqsk_timer_handler),
        )
    };
    if function == 0 {
        Timer::Other
    } else if function == tw_handler {
        Timer::Tw(TwTimer {
            tw: timer.0 - off!(tw_timer).off as u64,
            expires: timer.u64(off!(timer_expires)),
        })
    } else if function == req_handler {
        Timer::Request(timer.0 - off!(rsk_timer).off as u64)
    } else {
        Timer::Other
    }
}

/// The timewait sock behind a timer, if the timer is a timewait timer.
#[inline(always)]
fn tw_of_timer(ctx: &BtfTracePointContext) -> Option<TwTimer> {
    match timer_of(ctx) {
        Timer::Tw(t) => Some(t),
        _ => None,
    }
}

/// The expiry of a timewait sock's timer, from the sock (precise mode's
/// hooks, which have no typed timer).
#[inline(always)]
fn expires(tw: u64) -> u64 {
    field(tw + off!(tw_timer).off as u64, off!(timer_expires))
}

pub fn on_timer_start(ctx: &BtfTracePointContext) -> Option<()> {
    match timer_of(ctx) {
        Timer::Tw(t) => emit(t.tw, t.expires, TW_OPEN, 0),
        Timer::Request(req) => takeover(req),
        Timer::Other => None,
    }
}

/// The timer of connection request `req` starting: when an unexplained
/// timewait cancel on this CPU just before was for the same 4-tuple, that
/// was the SYN taking the timewait sock over. (A re-arm leaves its sock in
/// the slot too; no request for its 4-tuple comes, and userspace drops a
/// TW_TAKEOVER of a sock it knows lives on.)
#[inline(always)]
fn takeover(req: u64) -> Option<()> {
    let slot = SYN_TW.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; only this CPU touches it.
    let u = unsafe { &mut *slot };
    if u.tw == 0 {
        return None;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(u.ts_ns) > TAKEOVER_WINDOW_NS {
        u.tw = 0;
        return None;
    }
    if tuple_of(&Head::copy(req), u.v6 != 0) != u.tuple {
        return None;
    }
    let (tw, cookie) = (u.tw, u.cookie);
    u.tw = 0;
    let Some(mut entry) = EVENTS.reserve::<TwEvent>(0) else {
        count_lost(LOST_EVENTS);
        return None;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is a reserved record of the right size, filled before submit.
    unsafe {
        zero_words(e);
        (*e).kind = KIND_TW;
        (*e).what = TW_TAKEOVER;
        (*e).ts_ns = now;
        (*e).tw = tw;
        (*e).cookie = cookie;
    }
    entry.submit(crate::events_wakeup(now));
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
        (*e).substate = h.u8(off!(tw_substate));
        (*e).saddr = sock::local_addr(&h, family);
        (*e).daddr = sock::remote_addr(&h, family);
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
            (*e).flags |= end_facts(&h);
            if (*e).flags & (F_RESET_SENT | F_TW_UNHASHED | F_NET_DYING) == 0 {
                if let Some(slot) = SYN_TW.get_ptr_mut(0) {
                    // Per-CPU slot; only this CPU touches it.
                    let v6 = pure_v6(&h);
                    *slot = Unexplained {
                        tw,
                        cookie,
                        ts_ns,
                        v6: v6 as u64,
                        tuple: tuple_of(&h, v6),
                    };
                }
            }
        }
    }
    entry.submit(crate::events_wakeup(ts_ns));
    Some(())
}

// `emit` zeroes the owner name word by word (`zero_words`).
const _: () = assert!(core::mem::offset_of!(TwEvent, owner_comm) % 8 == 0);
