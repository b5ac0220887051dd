//! Who owns a socket: socket inode -> processes holding a file descriptor on
//! it, from `/proc/*/fd/*` links `socket:[INODE]` (what `ss -p` does). Built
//! once per snapshot; one readlink per open file of every visible process.

use std::collections::HashMap;
use std::fs;

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

impl OwnerMap {
    /// Scan /proc. Only inodes in `wanted` are kept when it is given.
    pub fn scan(wanted: Option<&std::collections::HashSet<u64>>) -> OwnerMap {
        let mut map = OwnerMap::default();
        let Ok(dir) = fs::read_dir("/proc") else {
            return map;
        };
        for ent in dir.flatten() {
            let name = ent.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
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
