//! Who owns a socket: socket inode -> processes holding a file descriptor on
//! it, from `/proc/*/fd/*` links `socket:[INODE]` (what `ss -p` does). A
//! full scan costs one readlink per open file of every visible process
//! (tens of milliseconds on a busy host), so the owners found last time
//! are asked first: a failure storm against one listener then reads one
//! process's descriptors, not the whole host's.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Mutex;

use crate::event::Process;

/// A process holding the socket, and the descriptor number it holds it as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub fd: i32,
}

impl Owner {
    pub fn process(&self) -> Process {
        Process {
            pid: self.pid,
            comm: self.comm.clone(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct OwnerMap {
    pub by_inode: HashMap<u64, Vec<Owner>>,
    /// Processes whose descriptors could not be read (another user's, without
    /// root): their sockets show no owner.
    pub unreadable: usize,
}

/// Socket inode -> the pids seen holding it when it was last looked for.
/// Inodes are unique across namespaces, so one table serves every snapshot.
static LAST_OWNERS: Mutex<Option<HashMap<u64, Vec<u32>>>> = Mutex::new(None);
/// Beyond this many inodes the table starts over (it is only a hint).
const LAST_OWNERS_MAX: usize = 65_536;

impl OwnerMap {
    /// Scan /proc. Only inodes in `wanted` are kept when it is given.
    pub fn scan(wanted: Option<&HashSet<u64>>) -> OwnerMap {
        let Ok(dir) = fs::read_dir("/proc") else {
            return OwnerMap::default();
        };
        let pids = dir
            .flatten()
            .filter_map(|ent| ent.file_name().to_str()?.parse::<u32>().ok());
        Self::scan_pids(pids, wanted)
    }

    /// The owners of `wanted`: when every one of them had owners at the last
    /// look and those processes still hold them, only those processes are
    /// read; otherwise /proc is scanned. (A process that started to share
    /// such a socket since, by fork or descriptor passing, is then not
    /// listed; the owner named, the lowest pid, stays right unless it left.)
    pub fn scan_wanted(wanted: &HashSet<u64>) -> OwnerMap {
        if wanted.is_empty() {
            return OwnerMap::default();
        }
        let hinted: Option<Vec<u32>> = {
            let last = LAST_OWNERS.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref().and_then(|last| {
                let mut pids = Vec::new();
                for inode in wanted {
                    pids.extend(last.get(inode)?);
                }
                Some(pids)
            })
        };
        if let Some(mut pids) = hinted {
            pids.sort_unstable();
            pids.dedup();
            let map = Self::scan_pids(pids.into_iter(), Some(wanted));
            if wanted.iter().all(|i| !map.owners(*i).is_empty()) {
                return map;
            }
        }
        let map = Self::scan(Some(wanted));
        let mut last = LAST_OWNERS.lock().unwrap_or_else(|e| e.into_inner());
        let last = last.get_or_insert_with(HashMap::new);
        if last.len() + map.by_inode.len() > LAST_OWNERS_MAX {
            last.clear();
        }
        for (inode, owners) in &map.by_inode {
            last.insert(*inode, owners.iter().map(|o| o.pid).collect());
        }
        map
    }

    fn scan_pids(pids: impl Iterator<Item = u32>, wanted: Option<&HashSet<u64>>) -> OwnerMap {
        let mut map = OwnerMap::default();
        for pid in pids {
            let fd_dir = format!("/proc/{pid}/fd");
            let fds = match fs::read_dir(&fd_dir) {
                Ok(d) => d,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        map.unreadable += 1;
                    }
                    continue;
                }
            };
            let mut comm: Option<String> = None;
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = socket_inode(target.to_str().unwrap_or("")) else {
                    continue;
                };
                if wanted.is_some_and(|w| !w.contains(&inode)) {
                    continue;
                }
                let Some(fdnum) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                let comm = comm
                    .get_or_insert_with(|| {
                        fs::read_to_string(format!("/proc/{pid}/comm"))
                            .map(|s| s.trim_end_matches('\n').to_string())
                            .unwrap_or_default()
                    })
                    .clone();
                map.by_inode.entry(inode).or_default().push(Owner {
                    pid,
                    comm,
                    fd: fdnum,
                });
            }
        }
        for owners in map.by_inode.values_mut() {
            owners.sort_by_key(|o| (o.pid, o.fd));
        }
        map
    }

    /// Every process holding the socket, lowest pid first.
    pub fn owners(&self, inode: u64) -> &[Owner] {
        self.by_inode.get(&inode).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The process to name for a socket: the lowest pid holding it.
    pub fn first(&self, inode: u64) -> Option<Process> {
        self.owners(inode).first().map(Owner::process)
    }

    /// The processes beside `owner` (a pid) holding the socket, each once,
    /// lowest pid first, at most `SocketSeen::SHARED_MAX`.
    pub fn shared_with(&self, inode: u64, owner: Option<u32>) -> Vec<Process> {
        let mut out: Vec<Process> = Vec::new();
        if inode == 0 {
            return out;
        }
        for o in self.owners(inode) {
            // Lowest pid first: a process with several descriptors of the
            // socket comes in a run.
            if Some(o.pid) != owner && out.last().is_none_or(|p| p.pid != o.pid) {
                out.push(o.process());
            }
        }
        out.truncate(crate::event::SocketSeen::SHARED_MAX);
        out
    }
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    /// The second look reads only the remembered owner and says the same;
    /// a socket not seen before is found by a full scan.
    #[test]
    fn remembered_owners_are_asked_first() {
        let me = std::process::id();
        let inode_of = |l: &std::net::TcpListener| {
            fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(l)
            ))
            .unwrap()
            .ino()
        };
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let want_a: HashSet<u64> = [inode_of(&a)].into();
        let first = OwnerMap::scan_wanted(&want_a);
        assert!(first.owners(inode_of(&a)).iter().any(|o| o.pid == me));
        let again = OwnerMap::scan_wanted(&want_a);
        assert_eq!(again.by_inode, first.by_inode);
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let both: HashSet<u64> = [inode_of(&a), inode_of(&b)].into();
        let map = OwnerMap::scan_wanted(&both);
        assert!(map.owners(inode_of(&b)).iter().any(|o| o.pid == me));
        assert!(OwnerMap::scan_wanted(&HashSet::new()).by_inode.is_empty());
    }

    #[test]
    fn finds_this_process_as_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .unwrap()
        .ino();
        let map = OwnerMap::scan(None);
        let me = std::process::id();
        assert!(
            map.owners(ino).iter().any(|o| o.pid == me),
            "{:?}",
            map.owners(ino)
        );
    }
}
