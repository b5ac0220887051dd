//! What the kernel itself says about the sockets of a namespace, read
//! independently of twmon: /proc/thread-self/net/{tcp,tcp6,udp,udp6} and the
//! file descriptors in /proc/*/fd (the same sources as `netstat`), and
//! optionally the text of `ss` (netlink sock_diag).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::event::{Endpoint, Process, Proto, TcpState};

/// One socket as /proc/net lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObservedSocket {
    pub proto: Proto,
    /// TCP: the kernel's state (a timewait sock shows its substate,
    /// FIN_WAIT2 or TIME_WAIT). UDP: always `Bound`.
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// Owner uid (`sk_uid`; 0 for timewait socks).
    pub uid: u32,
    /// Socket inode (0 for timewait socks).
    pub inode: u64,
    /// Remaining time of the socket's timer when one runs (the TIME_WAIT
    /// timer for timewait socks), in ms, at USER_HZ precision (10 ms).
    pub timer_ms: Option<u64>,
    /// Processes holding a file descriptor to it.
    pub owners: Vec<Process>,
}

impl ObservedSocket {
    pub fn owned_by(&self, pid: u32) -> bool {
        self.owners.iter().any(|p| p.pid == pid)
    }
}

/// All TCP and UDP sockets of the calling thread's network namespace, with
/// the processes that hold them. /proc/net lists listening, connected and
/// timewait sockets, not TCP sockets that are only bound.
pub fn snapshot() -> io::Result<Vec<ObservedSocket>> {
    sockets(true)
}

/// Is `local -> remote` a full (not timewait) orphaned TCP socket in
/// FIN_WAIT2, on its keepalive timer? close() leaves one when the peer's
/// ACK of its FIN reaches the socket's backlog while close() still owns the
/// socket (the peer's softirq on the other CPU): the kernel then keeps the
/// full socket for tcp_fin_timeout instead of making it a timewait sock.
/// Tests that need a timewait sock retry their set-up then.
pub fn is_fin_wait2_orphan(local: Endpoint, remote: Endpoint) -> io::Result<bool> {
    Ok(sockets_in_detail(false)?.iter().any(|(s, d)| {
        s.proto == Proto::Tcp
            && s.state == TcpState::FinWait2
            && s.local == local
            && s.remote == remote
            && d.timer == 2
    }))
}

/// [`snapshot`], optionally without the (slower) search for owners.
pub(crate) fn sockets(with_owners: bool) -> io::Result<Vec<ObservedSocket>> {
    Ok(sockets_in_detail(with_owners)?
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

/// What /proc/net says of a socket beyond [`ObservedSocket`]: for the
/// scenarios' own error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Detail {
    /// /proc/net/tcp's `tr`: 0 none, 1 retransmit (or loss probe, RACK
    /// reordering), 2 sk_timer (keepalive; FIN_WAIT2 of an orphan), 3 the
    /// timer of a timewait sock, 4 zero-window probe.
    pub timer: u8,
    /// Unrecovered retransmissions (`icsk_retransmits`; 0 for timewait
    /// socks).
    pub retransmits: u32,
}

impl Detail {
    fn timer_name(self) -> &'static str {
        match self.timer {
            0 => "none",
            1 => "retransmit",
            2 => "keepalive/fin-wait2",
            3 => "timewait",
            4 => "zero-window probe",
            _ => "?",
        }
    }
}

/// One line about a TCP socket for an error message: endpoints, state (a
/// timewait sock shows its substate, as the kernel does), which kind of
/// sock, timer, retransmissions.
pub(crate) fn describe(s: &ObservedSocket, d: Detail) -> String {
    let kind = if d.timer == 3 || (s.inode == 0 && s.state == TcpState::TimeWait) {
        "timewait sock".to_string()
    } else if s.inode == 0 {
        "orphan".to_string()
    } else {
        format!("inode {}", s.inode)
    };
    let mut out = format!(
        "{} -> {} {} ({kind}, timer {}",
        s.local,
        s.remote,
        s.state.as_str(),
        d.timer_name()
    );
    if let Some(ms) = s.timer_ms {
        out += &format!(" in {ms} ms");
    }
    if d.retransmits > 0 {
        out += &format!(", {} retransmits", d.retransmits);
    }
    out.push(')');
    out
}

/// The namespace's TCP counters that are not zero (/proc/net/snmp "Tcp:",
/// /proc/net/netstat "TcpExt:"), as "Name=value" words: after a failed
/// wait they tell of drops, PAWS rejects, resets, timewait overflows.
pub(crate) fn tcp_counters() -> String {
    let mut out = Vec::new();
    for (file, prefix) in [("snmp", "Tcp:"), ("netstat", "TcpExt:")] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        // A line of names, then a line of values.
        for pair in rows.chunks(2) {
            let [names, values] = pair else { continue };
            for (n, v) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                // The Rto* and MaxConn constants say nothing.
                if v != "0" && !n.starts_with("Rto") && n != "MaxConn" {
                    out.push(format!("{n}={v}"));
                }
            }
        }
    }
    if out.is_empty() {
        "all zero".into()
    } else {
        out.join(" ")
    }
}

/// [`sockets`] with each socket's [`Detail`].
pub(crate) fn sockets_in_detail(with_owners: bool) -> io::Result<Vec<(ObservedSocket, Detail)>> {
    let mut out = Vec::new();
    for (file, proto) in [
        ("tcp", Proto::Tcp),
        ("tcp6", Proto::Tcp),
        ("udp", Proto::Udp),
        ("udp6", Proto::Udp),
    ] {
        let text = match std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
            Ok(t) => t,
            // tcp6/udp6 are absent when IPv6 is off.
            Err(e) if e.kind() == io::ErrorKind::NotFound && file.ends_with('6') => continue,
            Err(e) => return Err(e),
        };
        out.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| parse_line_in_detail(l, proto)),
        );
    }
    let wanted: Vec<u64> = out
        .iter()
        .map(|(s, _)| s.inode)
        .filter(|&i| i != 0)
        .collect();
    if with_owners && !wanted.is_empty() {
        let owners = owners_of(&wanted);
        for (s, _) in &mut out {
            if let Some(o) = owners.get(&s.inode) {
                s.owners = o.clone();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
fn parse_line(line: &str, proto: Proto) -> Option<ObservedSocket> {
    parse_line_in_detail(line, proto).map(|(s, _)| s)
}

fn parse_line_in_detail(line: &str, proto: Proto) -> Option<(ObservedSocket, Detail)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let local = parse_endpoint(f[1])?;
    let remote = parse_endpoint(f[2])?;
    let st = u8::from_str_radix(f[3], 16).ok()?;
    let state = match proto {
        Proto::Udp => TcpState::Bound,
        Proto::Tcp => match TcpState::from_kernel(st)? {
            TcpState::Close => TcpState::Bound,
            s => s,
        },
    };
    let (tr, when) = f[5].split_once(':')?;
    let timer_ms = if tr != "00" {
        // jiffies_delta_to_clock_t: USER_HZ (100) ticks.
        u64::from_str_radix(when, 16).ok().map(|t| t * 10)
    } else {
        None
    };
    let detail = Detail {
        timer: u8::from_str_radix(tr, 16).ok()?,
        retransmits: u32::from_str_radix(f[6], 16).unwrap_or(0),
    };
    Some((
        ObservedSocket {
            proto,
            state,
            local,
            remote,
            uid: f[7].parse().ok()?,
            inode: f[9].parse().ok()?,
            timer_ms,
            owners: Vec::new(),
        },
        detail,
    ))
}

/// "0100007F:1F90" (IPv4) or 32 hex digits (IPv6), each 32-bit word printed
/// in host order.
fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(a, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(Endpoint::new(ip, port))
}

/// Which processes hold these socket inodes, from /proc/*/fd.
fn owners_of(inodes: &[u64]) -> HashMap<u64, Vec<Process>> {
    let mut out: HashMap<u64, Vec<Process>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            if !inodes.contains(&ino) {
                continue;
            }
            let comm = comm
                .get_or_insert_with(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_default()
                })
                .clone();
            let v = out.entry(ino).or_default();
            if !v.iter().any(|p| p.pid == pid) {
                v.push(Process { pid, comm });
            }
        }
    }
    out
}

/// `ss -tuanpoeH` run inside the calling thread's namespace (the private
/// namespace holds only the scenario's sockets), or None without `ss`.
pub fn ss_text() -> Option<String> {
    let out = super::child::spawn_clean(
        std::process::Command::new("ss")
            .args(["-tuanpoeH"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    )
    .ok()?
    .wait_with_output()
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_parse() {
        let l = "   1: 0100007F:1BBC 0100007F:9C40 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000";
        let s = parse_line(l, Proto::Tcp).unwrap();
        assert_eq!(s.local.to_string(), "127.0.0.1:7100");
        assert_eq!(s.remote.to_string(), "127.0.0.1:40000");
        assert_eq!(s.state, TcpState::TimeWait);
        assert_eq!(s.timer_ms, Some(0x1770 * 10));
        let (s, d) = parse_line_in_detail(l, Proto::Tcp).unwrap();
        assert_eq!(
            describe(&s, d),
            "127.0.0.1:7100 -> 127.0.0.1:40000 TIME_WAIT (timewait sock, timer timewait in 60000 ms)"
        );
        // An orphan in FIN_WAIT1 retransmitting its FIN.
        let l = "   2: 0100007F:1C20 0100007F:9C41 04 00000001:00000000 01:00000014 00000002     0        0 0 1 0000000000000000";
        let (s, d) = parse_line_in_detail(l, Proto::Tcp).unwrap();
        assert_eq!(
            d,
            Detail {
                timer: 1,
                retransmits: 2
            }
        );
        assert_eq!(
            describe(&s, d),
            "127.0.0.1:7200 -> 127.0.0.1:40001 FIN_WAIT1 (orphan, timer retransmit in 200 ms, 2 retransmits)"
        );
        let l6 = "   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 4242 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(l6, Proto::Tcp).unwrap();
        assert_eq!(s.local.to_string(), "[::]:8000");
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.uid, 65534);
        assert_eq!(s.inode, 4242);
        assert_eq!(s.timer_ms, None);
        let l6 = "   0: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 77 2 0000000000000000 0";
        let s = parse_line(l6, Proto::Udp).unwrap();
        assert_eq!(s.local.to_string(), "[::1]:8000");
        assert_eq!(s.state, TcpState::Bound);
    }
}
