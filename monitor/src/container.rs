//! Which container a process runs in, from its cgroup path.
//!
//! Container runtimes put each container's processes in a cgroup whose last
//! path components name the container id (64 hex digits):
//!
//! | runtime | cgroup path (v2, or a v1 controller line) |
//! |---|---|
//! | docker, cgroupfs driver | `/docker/<id>` |
//! | docker, systemd driver | `/system.slice/docker-<id>.scope` |
//! | containerd / CRI, systemd driver | `/kubepods.slice/.../cri-containerd-<id>.scope` |
//! | kubelet, cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O | `/kubepods.slice/.../crio-<id>.scope` |
//! | podman | `/machine.slice/libpod-<id>.scope`, `/libpod_parent/libpod-<id>` |
//!
//! The innermost match wins (docker in docker). `libpod-conmon-<id>` and
//! `crio-conmon-<id>` hold the runtime's monitor process, not the container,
//! and do not count. Nothing is found for host processes, for processes that
//! are gone, when twmon itself runs in a cgroup namespace (it then sees paths
//! relative to its own cgroup), and for runtimes laid out otherwise.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A 64-digit lowercase hex id.
fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Scope and directory prefixes a runtime puts before the id.
const PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// Parents under which a bare id directory is a container.
fn bare_id_parent(ancestors: &[&str]) -> bool {
    let parent = ancestors.last().copied().unwrap_or("");
    parent == "docker"
        || parent == "libpod_parent"
        || ancestors
            .iter()
            .any(|a| *a == "kubepods" || a.starts_with("kubepods.") || a.starts_with("kubepods-"))
}

/// The container id in one cgroup path, innermost first.
pub fn id_from_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for i in (0..parts.len()).rev() {
        let part = parts[i];
        let name = part.strip_suffix(".scope").unwrap_or(part);
        for prefix in PREFIXES {
            if let Some(rest) = name.strip_prefix(prefix) {
                // libpod-conmon-<id>, crio-conmon-<id>: the monitor, not the container.
                if is_id(rest) {
                    return Some(rest.to_string());
                }
            }
        }
        if is_id(name) && bare_id_parent(&parts[..i]) {
            return Some(name.to_string());
        }
    }
    None
}

/// The container id in the text of /proc/PID/cgroup ("ID:CONTROLLERS:PATH"
/// lines; cgroup v2 is the "0::" line). The v2 line is asked first, then the
/// v1 lines in order.
pub fn id_from_proc_cgroup(text: &str) -> Option<String> {
    let paths = text.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (hier, _ctrl, path) = (f.next()?, f.next()?, f.next()?);
        Some((hier == "0", path))
    });
    let (v2, v1): (Vec<_>, Vec<_>) = paths.partition(|(is_v2, _)| *is_v2);
    v2.into_iter()
        .chain(v1)
        .find_map(|(_, path)| id_from_path(path))
}

/// How long a looked-up pid is trusted (a pid is reused after its process
/// ends, and a process may be moved to another cgroup).
const TTL: Duration = Duration::from_secs(30);
/// At most this many pids are remembered.
const MAX_PIDS: usize = 4096;
/// At most this many cgroup directories are looked at to find a cgroup id
/// whose process is gone.
const MAX_WALK: usize = 20_000;

/// Container ids by pid, looked up in /proc and remembered for a while.
pub struct Containers {
    proc_root: String,
    cgroup_root: String,
    by_pid: HashMap<u32, (Option<String>, Instant)>,
    by_cgroup: HashMap<u64, Option<String>>,
}

impl Default for Containers {
    fn default() -> Self {
        let root = cgroup2_mount().unwrap_or_else(|| "/sys/fs/cgroup".into());
        Containers::new("/proc", &root)
    }
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on a hybrid v1/v2 host), from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        let fstype = fs.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| mount.split_whitespace().nth(4).map(String::from))?
    })
}

impl Containers {
    pub fn new(proc_root: &str, cgroup_root: &str) -> Containers {
        Containers {
            proc_root: proc_root.to_string(),
            cgroup_root: cgroup_root.to_string(),
            by_pid: HashMap::new(),
            by_cgroup: HashMap::new(),
        }
    }

    /// The container of process `pid`, or None (host process, gone, unknown
    /// layout).
    pub fn of_pid(&mut self, pid: u32) -> Option<String> {
        let now = Instant::now();
        if let Some((id, at)) = self.by_pid.get(&pid) {
            if now.duration_since(*at) < TTL {
                return id.clone();
            }
        }
        let text = std::fs::read_to_string(format!("{}/{pid}/cgroup", self.proc_root)).ok()?;
        let id = id_from_proc_cgroup(&text);
        if self.by_pid.len() >= MAX_PIDS {
            // Forget the stale ones; if all are fresh, start over.
            self.by_pid
                .retain(|_, (_, at)| now.duration_since(*at) < TTL);
            if self.by_pid.len() >= MAX_PIDS {
                self.by_pid.clear();
            }
        }
        self.by_pid.insert(pid, (id.clone(), now));
        id
    }

    /// The container of a process that called from cgroup v2 `cgroup_id`
    /// (the kernel's bpf_get_current_cgroup_id: the inode of the cgroup's
    /// directory), asking `pid` first; the cgroup still exists after a
    /// short-lived process has gone.
    pub fn of(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        if let Some((id, at)) = self.by_pid.get(&pid) {
            if at.elapsed() < TTL {
                return id.clone();
            }
        }
        let alive = Path::new(&format!("{}/{pid}", self.proc_root)).exists();
        if alive {
            return self.of_pid(pid);
        }
        if cgroup_id == 0 {
            return None;
        }
        if let Some(id) = self.by_cgroup.get(&cgroup_id) {
            return id.clone();
        }
        let id =
            find_cgroup(Path::new(&self.cgroup_root), cgroup_id).and_then(|rel| id_from_path(&rel));
        if self.by_cgroup.len() >= MAX_PIDS {
            self.by_cgroup.clear();
        }
        self.by_cgroup.insert(cgroup_id, id.clone());
        id
    }
}

/// The path (relative to `root`, "/"-rooted) of the cgroup directory whose
/// inode is `ino`, looking at no more than MAX_WALK directories.
fn find_cgroup(root: &Path, ino: u64) -> Option<String> {
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_WALK {
            return None;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == ino {
            let rel = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_from_the_runtimes_cgroup_layouts() {
        let cases: Vec<(String, Option<&str>)> = vec![
            // docker, systemd cgroup driver, cgroup v2
            (format!("0::/system.slice/docker-{ID}.scope"), Some(ID)),
            // docker, cgroupfs driver, cgroup v2 and v1
            (format!("0::/docker/{ID}"), Some(ID)),
            (
                format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n0::/"),
                Some(ID),
            ),
            // rootless docker
            (
                format!("0::/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"),
                Some(ID),
            ),
            // containerd / CRI under kubelet, systemd driver
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod1b2c3d4e_5f60_7182_9304_a5b6c7d8e9f0.slice/\
                     cri-containerd-{ID}.scope"
                ),
                Some(ID),
            ),
            // kubelet with the cgroupfs driver (v1 line)
            (
                format!(
                    "4:pids:/kubepods/besteffort/pod1b2c3d4e-5f60-7182-9304-a5b6c7d8e9f0/{ID}"
                ),
                Some(ID),
            ),
            // CRI-O
            (
                format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
                Some(ID),
            ),
            (
                format!("0::/kubepods.slice/kubepods-pod1.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // podman, root and rootless, and cgroupfs manager
            (format!("0::/machine.slice/libpod-{ID}.scope"), Some(ID)),
            (
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Some(ID),
            ),
            (format!("0::/libpod_parent/libpod-{ID}"), Some(ID)),
            // podman's conmon is not the container
            (format!("0::/machine.slice/libpod-conmon-{ID}.scope"), None),
            // docker in docker: the innermost
            (format!("0::/docker/{ID}/docker/{ID2}"), Some(ID2)),
            // host processes
            ("0::/init.scope".into(), None),
            (
                "0::/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service".into(),
                None,
            ),
            ("0::/user.slice/user-0.slice/session-3.scope".into(), None),
            // inside a cgroup namespace: nothing to see
            ("0::/".into(), None),
            // a 64-hex name where no runtime puts one
            (format!("0::/system.slice/{ID}"), None),
            // not quite an id
            (format!("0::/docker/{}", &ID[..63]), None),
            (format!("0::/docker/{}", ID.to_uppercase()), None),
            (String::new(), None),
        ];
        for (text, want) in cases {
            assert_eq!(
                id_from_proc_cgroup(&text).as_deref(),
                want,
                "cgroup file {text:?}"
            );
        }
    }

    #[test]
    fn lookups_read_proc_and_fall_back_to_the_cgroup_id() {
        let dir = std::env::temp_dir().join(format!("twmon-container-{}", std::process::id()));
        let proc_ = dir.join("proc");
        let cg = dir.join("cgroup");
        std::fs::create_dir_all(proc_.join("42")).unwrap();
        std::fs::write(
            proc_.join("42/cgroup"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
        )
        .unwrap();
        let scope = cg.join(format!("kubepods.slice/cri-containerd-{ID2}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        let ino = std::fs::metadata(&scope).unwrap().ino();
        let mut c = Containers::new(proc_.to_str().unwrap(), cg.to_str().unwrap());
        assert_eq!(c.of(42, 0).as_deref(), Some(ID));
        // Cached: the file may go, the answer stays for the TTL.
        std::fs::remove_file(proc_.join("42/cgroup")).unwrap();
        assert_eq!(c.of_pid(42).as_deref(), Some(ID));
        // Pid 7 is gone: its cgroup still names the container.
        assert_eq!(c.of(7, ino).as_deref(), Some(ID2));
        assert_eq!(c.of(7, 0), None);
        assert_eq!(c.of(7, ino + 1_000_000), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
