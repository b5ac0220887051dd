//! TCP state transitions from `sock/inet_sock_set_state`.
//!
//! Transitions driven by incoming packets run in softirq, where `current` is
//! whoever happened to be on the CPU: pid and comm are sent only when the
//! socket lock is owned, i.e. the owning process itself is acting.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_get_socket_cookie},
    programs::BtfTracePointContext,
};
use monitor_common::{StateEvent, F_IN_PROCESS, KIND_STATE, LOST_EVENTS};

use crate::kread::{off, words16, Direct, Read};
use crate::sock::{self, AF_INET6};
use crate::task;
use crate::{count_lost, EVENTS};

pub fn on_set_state(ctx: &BtfTracePointContext) -> Option<()> {
    let skp: *mut core::ffi::c_void = ctx.arg(0);
    let sk = Direct(skp as u64);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    // MPTCP fires this tracepoint too; only plain TCP.
    if sk.u16(off!(sk_protocol)) != 6 {
        return None;
    }
    // The socket's cookie, assigned by the helper the first time (so that
    // the timewait sock born from the socket later carries the same one),
    // then a plain load: the helper call cost ~28 ns per transition
    // (kernel.bpf_stats_enabled), every function return being costly on
    // this kernel (SRSO "safe RET").
    let had_cookie = sock::cookie(&sk);
    let cookie = match had_cookie {
        // SAFETY: `skp` is the tracepoint's typed `struct sock *`, which
        // this helper accepts.
        0 => unsafe { bpf_get_socket_cookie(skp) },
        c => c,
    };
    // The timewait sock this socket may have just left behind, announced
    // before the transition (userspace gives it who closed the socket,
    // which it forgets at ->CLOSE).
    if newstate == TCP_CLOSE && (oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING) {
        let _ = crate::timewait::on_close(&sk, had_cookie);
    }
    let in_process = sk.u32(off!(sk_lock_owned)) != 0;
    // Only the owning process's own transitions name it (the module's
    // comment); nothing about `current` is read for the others.
    let (pid, tid, comm) = if in_process {
        task::current()
    } else {
        (0, 0, words16(0, 0))
    };
    // Who leaves a timewait sock behind is the process of the
    // ESTABLISHED -> FIN_WAIT1 record (in_process): userspace keeps it by
    // cookie for the timewait sock, which inherits the cookie. A kernel LRU
    // map did that before, at an insert per connection in the churn's own
    // context.

    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        count_lost(LOST_EVENTS);
        return None;
    };
    let e = entry.as_mut_ptr();
    let family = sock::family(&sk);
    // SAFETY: plain helper call.
    let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `e` is a reserved record of the right size, filled before submit.
    unsafe {
        (*e).kind = KIND_STATE;
        (*e).flags = sock::common_flags(&sk) | if in_process { F_IN_PROCESS } else { 0 };
        (*e).ts_ns = ts_ns;
        (*e).cookie = cookie;
        (*e).inode = sock::socket_inode(&Direct(sk.u64(off!(sk_socket))));
        (*e).pid = pid;
        (*e).tid = tid;
        (*e).netns = sock::netns(&sk);
        (*e).sk_uid = sk.u32(off!(sk_uid));
        (*e).family = family;
        (*e).protocol = 6;
        (*e).sport = sock::socket_local_port(&sk);
        (*e).dport = sock::remote_port(&sk);
        (*e).oldstate = oldstate as u8;
        (*e).newstate = newstate as u8;
        (*e)._pad = 0;
        (*e)._pad2 = 0;
        (*e).saddr = sock::local_addr(&sk, family);
        (*e).daddr = if family == AF_INET6 {
            sock::remote_addr(&sk, AF_INET6)
        } else {
            sock::remote_addr(&sk, family)
        };
        (*e).comm = comm;
    }
    entry.submit(crate::events_wakeup(ts_ns));
    Some(())
}

const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSING: i32 = 11;
