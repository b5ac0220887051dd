//! Who is acting: the running task, read by plain loads from its typed
//! pointer. Transitions and bind/listen/connect results take it from here
//! (precise mode's rare deschedule record still uses the helpers).

use aya_ebpf::helpers::generated::bpf_get_current_task_btf;

use crate::kread::{off, Direct, Read};

/// The acting task's process id, thread id and command name, by plain loads
/// from the typed `current`: the pid and comm helpers (a string copy with
/// padding, behind function calls whose returns are costly here) took ~47 ns
/// per transition on average (kernel.bpf_stats_enabled); one helper call
/// and four loads take much less.
#[inline(always)]
pub fn current() -> (u32, u32, [u8; 16]) {
    // SAFETY: plain helper call; it returns the running task with its BTF
    // type, whose fields the verifier lets plain loads read.
    let task = Direct(unsafe { bpf_get_current_task_btf() } as u64);
    (
        task.u32(off!(task_tgid)),
        task.u32(off!(task_pid)),
        task.bytes16(off!(task_comm)),
    )
}
