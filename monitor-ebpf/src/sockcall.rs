//! bind(), listen() and connect() as they return (their `sys_exit_*`
//! tracepoints, else `raw_syscalls/sys_exit`): the endpoint
//! the caller asked for comes from its sockaddr argument (after a failed bind
//! the kernel has already reset the socket's own address and port to 0), the
//! options and owner from the socket behind the file descriptor.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use monitor_common::{
    SockCallEvent, F_HAVE_REQUEST, KIND_SOCK_CALL, LOST_BINDS, NR_BIND, NR_CONNECT, NR_LISTEN,
};

use crate::kread::{field, off, ptr, words16, Probe, Read};
use crate::sock::{self, AF_INET, AF_INET6};
use crate::{count_lost, BINDS};

const EBADF: i64 = 9;
const EAGAIN: i64 = 11;
const EFAULT: i64 = 14;
const ENOTSOCK: i64 = 88;
const EOPNOTSUPP: i64 = 95;
const EADDRINUSE: i64 = 98;
const EADDRNOTAVAIL: i64 = 99;

// x86_64 `struct pt_regs` slots (the syscall ABI; fixed).
const REG_DX: u64 = 12 * 8;
const REG_SI: u64 = 13 * 8;
const REG_DI: u64 = 14 * 8;
const REG_ORIG_AX: u64 = 15 * 8;

/// A register of the syscall's `struct pt_regs`. A plain load: `regs` is
/// the tracepoint's typed pointer, which the verifier lets a program read
/// inside its struct. This program runs at the exit of every system call
/// of the host: with helper calls it took 181-215 ns per run under the
/// bench's churn (kernel.bpf_stats_enabled), with plain loads 147.
#[inline(always)]
fn reg(regs: u64, slot: u64) -> Option<u64> {
    // SAFETY: checked by the verifier against struct pt_regs, made
    // fault-tolerant by it.
    Some(unsafe { core::ptr::read_volatile((regs + slot) as *const u64) })
}

/// `raw_syscalls/sys_exit` (tp_btf): the exit of every system call of the
/// host, filtered here on bind, listen and connect. Used only where the
/// per-call tracepoints below cannot be attached (no tracefs).
pub fn on_sys_exit(ctx: &BtfTracePointContext) -> Option<()> {
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let nr = reg(regs, REG_ORIG_AX)?;
    if nr != NR_BIND as u64 && nr != NR_LISTEN as u64 && nr != NR_CONNECT as u64 {
        return None;
    }
    on_call_exit(nr, ret, || Some(regs))
}

/// Offsets in the record of `syscalls/sys_exit_*` (its tracefs `format`,
/// the same on every kernel since these events exist; userspace checks
/// them before attaching): `int __syscall_nr` after the 8-byte common
/// header, then `long ret`.
const TP_NR: usize = 8;
const TP_RET: usize = 16;

/// `syscalls/sys_exit_bind`, `sys_exit_listen`, `sys_exit_connect`: only
/// these three calls run a program. `raw_syscalls/sys_exit` ran one at the
/// exit of every system call of the host, ~55 ns each even for the calls it
/// let go (measured: a 1-byte `dd` loop 43 % slower with it attached, 18 %
/// with a per-call tracepoint).
pub fn on_syscall_tp_exit(ctx: &TracePointContext) -> Option<()> {
    let rec = ctx.as_ptr() as usize;
    // SAFETY: plain loads inside the tracepoint's record (the verifier
    // checks them against its size), at the offsets userspace checked
    // against tracefs (TP_NR, TP_RET). aya's `read_at` would be a helper
    // call each.
    let (nr, ret) = unsafe {
        (
            core::ptr::read_volatile((rec + TP_NR) as *const i32) as u64,
            core::ptr::read_volatile((rec + TP_RET) as *const i64),
        )
    };
    // The record has no registers: the caller's arguments are in the task's
    // saved user registers, which the call does not change. Fetched only
    // for a call that is reported.
    on_call_exit(nr, ret, || {
        // SAFETY: plain helper calls; the first returns the running task
        // with its BTF type, which the second takes.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf() as *mut _) as u64 };
        (regs != 0).then_some(regs)
    })
}

/// A bind, listen or connect (`nr`) returning `ret`; `regs` gives its
/// caller's saved registers (a typed `struct pt_regs *`).
#[inline(always)]
fn on_call_exit(nr: u64, ret: i64, regs: impl Fn() -> Option<u64>) -> Option<()> {
    // Precise mode's blocking sockets of this call: sent just before the
    // call's record, forgotten on every way out.
    let conflicts = crate::precise::Taken::new();
    // No socket behind the fd, or a plain programming error: not ours.
    if ret == -EBADF || ret == -ENOTSOCK || ret == -EFAULT {
        return None;
    }
    if nr == NR_LISTEN as u64 && ret == -EOPNOTSUPP {
        return None;
    }
    // connect(): only failures about the local port (exhaustion, 4-tuple in
    // use, UDP autobind); refused or timed-out connections show up as state
    // transitions instead.
    if nr == NR_CONNECT as u64 && ret != -EADDRNOTAVAIL && ret != -EADDRINUSE && ret != -EAGAIN {
        return None;
    }
    let regs = regs()?;
    let fd = reg(regs, REG_DI)? as u32;
    let socket = socket_of_fd(fd)?;
    let sk = Probe(ptr(socket, off!(socket_sk)));
    if sk.is_null() {
        return None;
    }
    let family = sock::family(&sk);
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let protocol = sk.u16(off!(sk_protocol));
    if protocol != 6 && protocol != 17 {
        return None;
    }
    if nr == NR_CONNECT as u64 && protocol == 6 && ret == -EAGAIN {
        return None;
    }

    let inode = sock::socket_inode(&Probe(socket));
    conflicts.send(inode);
    let Some(mut entry) = BINDS.reserve::<SockCallEvent>(0) else {
        count_lost(LOST_BINDS);
        return None;
    };
    let e = entry.as_mut_ptr();
    let (pid, tid, comm) = crate::task::current();
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `e` points at a reserved record of the right size, written
    // field by field before submit.
    unsafe {
        (*e).kind = KIND_SOCK_CALL;
        (*e).ret = ret as i32;
        (*e).ts_ns = now;
        (*e).cookie = sock::cookie(&sk);
        (*e).cgroup_id = bpf_get_current_cgroup_id();
        (*e).inode = inode;
        (*e).pid = pid;
        (*e).tid = tid;
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).sk_uid = sk.u32(off!(sk_uid));
        (*e).netns = sock::netns(&sk);
        (*e).bound_dev_if = sk.u32(off!(skc_bound_dev_if));
        (*e).flags = sock::common_flags(&sk) | sock::inet_flags(&sk);
        (*e).syscall = nr as u16;
        (*e).sk_family = family;
        (*e).protocol = protocol;
        (*e).local_port = sock::local_port(&sk);
        (*e).local_addr = sock::local_addr(&sk, family);
        (*e).remote_port = sock::remote_port(&sk);
        (*e).remote_addr = sock::remote_addr(&sk, family);
        (*e).comm = comm;
        (*e).req_family = 0;
        (*e).req_port = 0;
        (*e).req_addr = words16(0, 0);
        (*e)._pad = 0;
        if nr != NR_LISTEN as u64 {
            let uaddr = reg(regs, REG_SI).unwrap_or(0);
            let ulen = reg(regs, REG_DX).unwrap_or(0);
            if read_sockaddr(uaddr, ulen, &mut *e) {
                (*e).flags |= F_HAVE_REQUEST;
            }
        }
    }
    entry.submit(crate::binds_wakeup(now));
    Some(())
}

/// current->files->fdt->fd[fd]->private_data: the `struct socket`.
#[inline(always)]
fn socket_of_fd(fd: u32) -> Option<u64> {
    // SAFETY: returns the current task pointer; only read through helpers.
    let task = unsafe { bpf_get_current_task() };
    let files = ptr(task, off!(task_files));
    let fdt = ptr(files, off!(files_fdt));
    let max_fds = field(fdt, off!(fdt_max_fds)) as u32;
    if fdt == 0 || fd >= max_fds {
        return None;
    }
    let fd_array = ptr(fdt, off!(fdt_fd));
    if fd_array == 0 {
        return None;
    }
    // SAFETY: bounded by max_fds above; the helper checks the address.
    let file: u64 =
        unsafe { bpf_probe_read_kernel((fd_array + fd as u64 * 8) as *const u64) }.ok()?;
    let socket = ptr(file, off!(file_private_data));
    if socket == 0 {
        None
    } else {
        Some(socket)
    }
}

/// Copy the caller's sockaddr (family, port, address) into the record.
#[inline(always)]
fn read_sockaddr(uaddr: u64, ulen: u64, e: &mut SockCallEvent) -> bool {
    if uaddr == 0 || ulen < 2 {
        return false;
    }
    // SAFETY: user memory read through the helper, which checks it.
    let Ok(head) = (unsafe { bpf_probe_read_user(uaddr as *const [u8; 8]) }) else {
        return false;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    e.req_family = family;
    e.req_port = u16::from_be_bytes([head[2], head[3]]);
    if family == AF_INET6 {
        if ulen < 24 {
            return false;
        }
        // SAFETY: as above.
        match unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) } {
            Ok(a) => e.req_addr = a,
            Err(_) => return false,
        }
    } else {
        // AF_INET, or AF_UNSPEC (which bind() on an IPv4 socket takes as
        // INADDR_ANY).
        if ulen >= 8 {
            e.req_addr[0] = head[4];
            e.req_addr[1] = head[5];
            e.req_addr[2] = head[6];
            e.req_addr[3] = head[7];
        }
    }
    true
}
