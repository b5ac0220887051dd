//! bind(), listen() and connect() results through their own tracepoints
//! (`syscalls/sys_exit_bind`, `sys_exit_listen`, `sys_exit_connect`), so
//! that no other system call runs a program. `raw_syscalls/sys_exit` (tp_btf,
//! no tracefs needed) ran one at the exit of every system call of the host:
//! a loop of 1-byte `dd` reads and writes ran 43 % slower with it attached,
//! 18 % with the per-call tracepoints (the rest is the kernel's slow path for
//! traced system calls, which any syscall tracepoint turns on). The tp_btf
//! program stays as the fallback where these cannot be attached.
//!
//! These tracepoints are found through tracefs: when it is not mounted, it
//! is mounted at its usual place for as long as attaching takes (perf and
//! trace-cmd mount it too), then unmounted: attached tracepoints do not need
//! it, and the host keeps its mounts as they were.

use std::path::{Path, PathBuf};

use aya::programs::TracePoint;
use aya::Ebpf;

/// The program, and the tracepoints it is attached to.
pub const PROGRAM: &str = "twmon_call_exit";
pub const EVENTS: [&str; 3] = ["sys_exit_bind", "sys_exit_listen", "sys_exit_connect"];

/// Where tracefs is looked for, in aya's order (it takes the first one that
/// has entries).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The two fields the program reads, as the `format` file must show them
/// (monitor-ebpf's sockcall.rs reads them at these offsets).
const FIELDS: [&str; 2] = [
    "field:int __syscall_nr;\toffset:8;\tsize:4;",
    "field:long ret;\toffset:16;\tsize:8;",
];

/// What attaching did: the hooks, and a note when tracefs had to be
/// mounted for it.
pub struct Attached {
    pub hooks: Vec<String>,
    pub note: Option<String>,
}

/// Attach [`PROGRAM`] to the three tracepoints, or to none: on an error
/// the program is unloaded (detaching what was attached) and the reason
/// returned, for the caller to fall back to `raw_syscalls/sys_exit`.
pub fn attach(ebpf: &mut Ebpf) -> Result<Attached, String> {
    let (tracefs, mounted) = tracefs()?;
    let attached = attach_through(ebpf, &tracefs);
    if mounted {
        unmount(&tracefs);
    }
    let note = mounted.then(|| {
        format!(
            "tracefs was not mounted: mounted it at {} to attach the bind, listen and connect tracepoints, then unmounted it",
            tracefs.display()
        )
    });
    Ok(Attached {
        hooks: attached?,
        note,
    })
}

fn attach_through(ebpf: &mut Ebpf, tracefs: &Path) -> Result<Vec<String>, String> {
    for event in EVENTS {
        check_format(tracefs, event)?;
    }
    let p: &mut TracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| format!("program {PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{PROGRAM}: {e}"))?;
    p.load().map_err(|e| format!("loading {PROGRAM}: {e}"))?;
    let mut hooks = Vec::new();
    for event in EVENTS {
        if let Err(e) = p.attach("syscalls", event) {
            let _ = p.unload();
            return Err(format!("attaching to syscalls/{event}: {e}"));
        }
        hooks.push(format!("tp/{event}"));
    }
    Ok(hooks)
}

/// A mounted tracefs, mounting it when none is; true when this mounted it.
fn tracefs() -> Result<(PathBuf, bool), String> {
    if let Some(p) = TRACEFS.iter().map(Path::new).find(|p| has_entries(p)) {
        return Ok((p.to_path_buf(), false));
    }
    let target = Path::new(TRACEFS[0]);
    mount_tracefs(target).map_err(|e| {
        format!(
            "tracefs is not mounted and mounting it at {} failed: {e}",
            target.display()
        )
    })?;
    Ok((target.to_path_buf(), true))
}

/// Take back the mount [`tracefs`] made. MNT_DETACH: the kernel lets go
/// of it once nothing uses it; attached tracepoints never did.
fn unmount(target: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(t) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } != 0 {
        log::warn!(
            "could not unmount the tracefs mounted at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn has_entries(p: &Path) -> bool {
    p.read_dir().is_ok_and(|mut d| d.next().is_some())
}

fn mount_tracefs(target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The event exists and its record has the layout the program reads.
fn check_format(tracefs: &Path, event: &str) -> Result<(), String> {
    let path = tracefs.join("events/syscalls").join(event).join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match FIELDS.iter().find(|f| !text.contains(*f)) {
        None => Ok(()),
        Some(f) => Err(format!(
            "{} does not have {:?}",
            path.display(),
            f.replace('\t', " ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_check_takes_the_kernels_layout_and_refuses_another() {
        let dir = std::env::temp_dir().join(format!("twmon-fmt-{}", std::process::id()));
        let ev = dir.join("events/syscalls/sys_exit_bind");
        std::fs::create_dir_all(&ev).unwrap();
        // As 6.18 writes it.
        let good = "name: sys_exit_bind\nID: 2237\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
            \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\n\
            print fmt: \"0x%lx\", REC->ret\n";
        std::fs::write(ev.join("format"), good).unwrap();
        assert_eq!(check_format(&dir, "sys_exit_bind"), Ok(()));
        std::fs::write(ev.join("format"), good.replace("offset:16;", "offset:12;")).unwrap();
        let err = check_format(&dir, "sys_exit_bind").unwrap_err();
        assert!(err.contains("long ret"), "{err}");
        assert!(check_format(&dir, "sys_exit_listen").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
