//! The ABI between twmon's kernel programs and its userspace: the records the
//! programs put in the ring buffers, and the field offsets userspace reads from
//! the running kernel's BTF and hands to the programs at load time.
//!
//! Rules for everything here: `#[repr(C)]`, only integers and byte arrays,
//! explicit padding, sizes asserted below. Userspace never transmutes these
//! into enums; it decodes them field by field (monitor/src/probe/decode.rs).
#![no_std]

/// Record kinds: the first `u32` of every ring buffer record.
pub const KIND_SOCK_CALL: u32 = 1;
pub const KIND_STATE: u32 = 2;
pub const KIND_TW: u32 = 3;
/// Precise mode: what the function hooks saw during a call (the sockets the
/// kernel found blocking it, the port function that refused it), sent just
/// before that call's `SockCallEvent` (same thread, same socket inode).
pub const KIND_CONFLICTS: u32 = 4;

/// Precise mode: the kernel function whose failure `ConflictsEvent::port_fn`
/// reports (0: none failed during the call).
pub const PORT_FN_GET_PORT: u16 = 1;
pub const PORT_FN_HASH_CONNECT: u16 = 2;
pub const PORT_FN_UDP_GET_PORT: u16 = 3;

/// x86_64 syscall numbers the programs watch.
pub const NR_CONNECT: u16 = 42;
pub const NR_BIND: u16 = 49;
pub const NR_LISTEN: u16 = 50;

/// Socket option bits in `flags` of the records.
pub const F_REUSEADDR: u32 = 1 << 0;
pub const F_REUSEPORT: u32 = 1 << 1;
pub const F_V6ONLY: u32 = 1 << 2;
pub const F_FREEBIND: u32 = 1 << 3;
pub const F_TRANSPARENT: u32 = 1 << 4;
pub const F_BIND_NO_PORT: u32 = 1 << 5;
/// The transition ran in the owning process's context (the socket lock was
/// owned), so pid and comm are that process; otherwise they are not sent.
pub const F_IN_PROCESS: u32 = 1 << 6;
/// The requested sockaddr could be read from the caller's memory.
pub const F_HAVE_REQUEST: u32 = 1 << 7;
/// `left_by` (owner pid/comm) of a timewait record is known.
pub const F_HAVE_OWNER: u32 = 1 << 8;
/// The kernel answered with a RST from this timewait sock just before it was
/// cancelled: a TCP_TW_RST kill, not a SYN taking the 4-tuple over.
pub const F_RESET_SENT: u32 = 1 << 9;
/// The timewait sock was already out of the connection hash when its timer
/// was cancelled: only `__inet_hash_connect` / `__inet_check_established`
/// take it out before ending it (a connect() took its 4-tuple over); every
/// other early end (a SYN, a RST, a netns exit) unhashes it after the
/// cancel, and a re-arm leaves it hashed.
pub const F_TW_UNHASHED: u32 = 1 << 10;
/// The timewait sock's network namespace had no references left when its
/// timer was cancelled: the namespace is being dismantled
/// (`inet_twsk_purge` ends only such socks).
pub const F_NET_DYING: u32 = 1 << 11;

/// Most blocking sockets kept per failing call (precise mode): the kernel
/// stops at the first conflict of each bucket, so a handful is plenty.
pub const MAX_CONFLICTS: usize = 4;

/// Timewait record subkinds (`TwEvent::what`).
pub const TW_OPEN: u8 = 1;
pub const TW_SUBSTATE: u8 = 2;
pub const TW_EXPIRED: u8 = 3;
/// The timer was cancelled early (not expiring): a kill, or a re-arm
/// (mod_timer detaches first). The flags say why where the kernel's state
/// tells (F_RESET_SENT, F_TW_UNHASHED, F_NET_DYING); otherwise the next
/// program to run on the same CPU looks at the sock again and sends a
/// TW_REARM (it lives on) or a TW_GONE, and userspace waits for it.
pub const TW_CANCEL: u8 = 4;
/// Precise mode: `inet_twsk_deschedule_put` was entered for this timewait
/// sock (an early end; the TW_CANCEL of its timer follows on the same CPU).
/// `owner_pid`/`owner_comm` are the current process (F_HAVE_OWNER), which
/// is the one that ended it only where the end runs in process context.
pub const TW_DESCHEDULE: u8 = 5;
/// The sock of an unexplained TW_CANCEL, looked at again once the code that
/// cancelled its timer returned (by the next program to run on that CPU):
/// its timer was shut down, or it left the connection hash, or its memory
/// holds another sock: it ended. Why (a SYN that took its 4-tuple over, or a
/// RST) userspace tells by what follows. Only `tw` and `cookie` are set:
/// the time is the cancel's.
pub const TW_GONE: u8 = 6;
/// The sock of an unexplained TW_CANCEL, looked at again as for TW_GONE:
/// its timer is pending again, it was re-armed and lives on. `tw`,
/// `cookie`, `substate`, `expires` and `jiffies` are set; the time and the
/// addresses are the cancel's.
pub const TW_REARM: u8 = 7;

/// Ring buffer indexes of the per-CPU `LOST` counters.
pub const LOST_BINDS: u32 = 0;
pub const LOST_EVENTS: u32 = 1;

/// A bind(), listen() or connect() that returned, from `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockCallEvent {
    pub kind: u32,
    /// The syscall's return value (0 or -errno).
    pub ret: i32,
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// Inode of the socket's file: the key to the process holding it.
    pub inode: u64,
    pub pid: u32,
    pub tid: u32,
    /// The caller's uid.
    pub uid: u32,
    /// The socket's owner uid (sk_uid): what SO_REUSEPORT compares.
    pub sk_uid: u32,
    pub netns: u32,
    pub bound_dev_if: u32,
    pub flags: u32,
    pub syscall: u16,
    /// Address family of the sockaddr the caller passed (bind, connect).
    pub req_family: u16,
    pub sk_family: u16,
    pub protocol: u16,
    /// Host byte order.
    pub req_port: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub req_addr: [u8; 16],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub comm: [u8; 16],
}

/// A socket the kernel itself found in the way of a bind (precise mode,
/// fexit/kretprobe on `inet_bind_conflict`): only `sock_common` fields,
/// since it may be a timewait sock.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConflictSock {
    /// Kernel address: tells repeated reports of one socket apart.
    pub sk: u64,
    pub cookie: u64,
    pub netns: u32,
    /// F_REUSEADDR / F_REUSEPORT / F_V6ONLY of the blocking socket.
    pub flags: u32,
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// skc_state (TCP_TIME_WAIT for a timewait sock).
    pub state: u8,
    pub _pad: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// What the function hooks saw in one thread's call: the blocking sockets,
/// and the last failure of a port function (`inet_csk_get_port`,
/// `__inet_hash_connect`, `udp_lib_get_port`). Kept per thread while the
/// call runs, then sent as a record of its own (only when there is
/// something to say, so that the common bind record stays small).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConflictsEvent {
    pub kind: u32,
    pub tid: u32,
    /// The calling socket's file inode: ties the record to its call.
    pub inode: u64,
    pub n: u32,
    /// The failing port function's return value as it returned it (1 on
    /// kernels whose get_port says "conflict" that way, else -errno).
    pub port_ret: i32,
    /// PORT_FN_*, 0 when no port function failed during the call.
    pub port_fn: u16,
    /// The port it was asked for, host order (0: search the range).
    pub port: u16,
    pub _pad: u32,
    pub socks: [ConflictSock; MAX_CONFLICTS],
}

/// A TCP state transition, from the `inet_sock_set_state` tracepoint.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateEvent {
    pub kind: u32,
    pub flags: u32,
    pub ts_ns: u64,
    pub cookie: u64,
    pub inode: u64,
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    pub sk_uid: u32,
    pub family: u16,
    pub protocol: u16,
    pub sport: u16,
    pub dport: u16,
    pub oldstate: u8,
    pub newstate: u8,
    // Two scalars, not `[u8; 6]`: zeroing a byte array compiled to a call
    // of a memset subprogram in every transition (a call and a return,
    // both costly on this kernel's mitigations).
    pub _pad: u16,
    pub _pad2: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}

/// A moment in the life of a timewait socket, from the timer tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TwEvent {
    pub kind: u32,
    pub flags: u32,
    pub ts_ns: u64,
    pub cookie: u64,
    /// The timewait socket's address: its identity while it lives.
    pub tw: u64,
    /// Timer expiry and the time now, in jiffies.
    pub expires: u64,
    pub jiffies: u64,
    pub netns: u32,
    pub owner_pid: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub what: u8,
    pub substate: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub owner_comm: [u8; 16],
}

/// Where a field lives inside a kernel struct: a byte offset, and for
/// bitfields (or fields narrower than their load) the bit shift and width.
/// `width == 0` means "not present on this kernel".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    pub off: u16,
    pub shift: u8,
    pub width: u8,
}

impl Field {
    pub const fn bytes(off: u16, size: u8) -> Field {
        Field {
            off,
            shift: 0,
            width: size * 8,
        }
    }
    pub const fn present(&self) -> bool {
        self.width != 0
    }
}

/// Field offsets of the running kernel, computed by userspace from
/// /sys/kernel/btf/vmlinux and written into the programs' read-only data
/// before load. Nothing here is frozen to the kernel twmon was built on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    // fd -> struct sock
    pub task_files: Field,
    // struct task_struct: who is acting, read by plain loads from the
    // typed `current` (cheaper than the pid and comm helpers)
    pub task_pid: Field,
    pub task_tgid: Field,
    pub task_comm: Field,
    pub files_fdt: Field,
    pub fdt_max_fds: Field,
    pub fdt_fd: Field,
    pub file_private_data: Field,
    pub socket_sk: Field,
    pub socket_file: Field,
    pub file_inode: Field,
    pub inode_ino: Field,
    // struct sock_common / sock
    pub skc_family: Field,
    pub skc_state: Field,
    pub skc_reuse: Field,
    pub skc_reuseport: Field,
    pub skc_ipv6only: Field,
    pub skc_bound_dev_if: Field,
    pub skc_net: Field,
    pub skc_rcv_saddr: Field,
    pub skc_daddr: Field,
    pub skc_num: Field,
    pub skc_dport: Field,
    pub skc_v6_rcv_saddr: Field,
    pub skc_v6_daddr: Field,
    pub skc_cookie: Field,
    /// `skc_nulls_node.pprev`: null once the sock left the connection hash.
    pub skc_nulls_pprev: Field,
    pub sk_protocol: Field,
    pub sk_type: Field,
    pub sk_uid: Field,
    pub sk_lock_owned: Field,
    pub sk_socket: Field,
    // struct inet_sock
    pub inet_sport: Field,
    pub inet_freebind: Field,
    pub inet_transparent: Field,
    pub inet_bind_no_port: Field,
    // struct net
    pub net_inum: Field,
    /// The namespace's reference count (`ns.__ns_ref`, `ns.count` before
    /// 6.18): 0 while it is dismantled.
    pub net_ns_ref: Field,
    // timewait
    pub tw_substate: Field,
    pub tw_timer: Field,
    pub timer_function: Field,
    pub timer_expires: Field,
    /// `timer_list.entry.pprev`: non-null while the timer is pending.
    pub timer_pprev: Field,
    // Where tcp_time_wait() puts a timewait sock: the connection hash of
    // the socket's namespace (`net.ipv4.tcp_death_row.hashinfo`, 6.1 and
    // later), bucket `skc_hash & ehash_mask` of `ehash`, a chain linked
    // through `skc_nulls_node.next`. Absent on older kernels: `timer_start`
    // announces timewait socks there instead.
    pub net_tw_hashinfo: Field,
    pub hashinfo_ehash: Field,
    pub hashinfo_ehash_mask: Field,
    pub skc_hash: Field,
    pub skc_nulls_next: Field,
    /// Address of `tw_timer_handler` (from /proc/kallsyms).
    pub tw_timer_handler: u64,
}

// No implicit padding (the struct is copied as bytes into the programs'
// read-only data): the Fields fill a multiple of 8 (add a pad Field when
// their count turns odd).
const _: () = assert!(
    core::mem::size_of::<Offsets>() == core::mem::offset_of!(Offsets, tw_timer_handler) + 8
        && core::mem::offset_of!(Offsets, tw_timer_handler)
            == core::mem::offset_of!(Offsets, skc_nulls_next) + 4
);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` structs of integers and byte arrays with
    // explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::SockCallEvent {}
    unsafe impl aya::Pod for super::StateEvent {}
    unsafe impl aya::Pod for super::TwEvent {}
    unsafe impl aya::Pod for super::ConflictsEvent {}
}

// The layout is the ABI: a change here must be deliberate.
const _: () = assert!(core::mem::size_of::<SockCallEvent>() == 152);
const _: () = assert!(core::mem::size_of::<ConflictsEvent>() == 32 + MAX_CONFLICTS * 64);
const _: () = assert!(core::mem::size_of::<ConflictSock>() == 64);
const _: () = assert!(core::mem::size_of::<StateEvent>() == 112);
const _: () = assert!(core::mem::size_of::<TwEvent>() == 112);
const _: () = assert!(core::mem::size_of::<Field>() == 4);
const _: () = assert!(core::mem::size_of::<Offsets>() == 48 * 4 + 8);
