//! Waiting for a socket to show up in /proc/net, with an error that says
//! what was there instead.

use std::io;
use std::time::{Duration, Instant};

use super::procnet::{describe, snapshot, sockets_in_detail, tcp_counters, Detail, ObservedSocket};
use crate::event::Proto;

/// Poll /proc/net of the calling thread's namespace (every 2 ms, at most
/// `within`) until a socket satisfies `pred` (which sees no owners); that
/// socket, with its owners. On timeout the error tells what the wait saw of
/// the TCP sockets on `port` (either end): each change of their states,
/// timers and retransmissions, who holds them, and the namespace's TCP
/// counters, so that a log says why.
pub fn wait_for_socket(
    what: &str,
    port: u16,
    within: Duration,
    pred: impl Fn(&ObservedSocket) -> bool,
) -> io::Result<ObservedSocket> {
    let start = Instant::now();
    let mut seen = Seen::default();
    loop {
        let now = sockets_in_detail(false)?;
        if now.iter().any(|(s, _)| pred(s)) {
            if let Some(s) = snapshot()?.into_iter().find(|s| pred(s)) {
                return Ok(s);
            }
        }
        seen.note(start.elapsed(), port, &now);
        if start.elapsed() > within {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "waited {within:?} for {what}; TCP sockets on port {port} as the wait saw \
                     them:\n{}\n  held by: {}\n  TCP counters of the namespace: {}",
                    seen.text(),
                    holders_on(port),
                    tcp_counters()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Which processes hold the sockets on `port` (either end), for an error.
fn holders_on(port: u16) -> String {
    let Ok(all) = snapshot() else {
        return "?".into();
    };
    let v: Vec<String> = all
        .iter()
        .filter(|s| s.local.port() == port || s.remote.port() == port)
        .filter(|s| !s.owners.is_empty())
        .map(|s| {
            let o: Vec<String> = s
                .owners
                .iter()
                .map(|p| format!("{} {}", p.comm, p.pid))
                .collect();
            format!("{} -> {}: {}", s.local, s.remote, o.join(", "))
        })
        .collect();
    if v.is_empty() {
        "no process".into()
    } else {
        v.join("; ")
    }
}

/// What a wait saw of the sockets on one port: each distinct picture
/// (states, timer kinds, retransmissions; not the running timers) with the
/// time it was first seen, and the last picture as it was at the end.
#[derive(Default)]
struct Seen {
    changes: Vec<(Duration, Vec<String>)>,
    last_key: Option<Vec<(ObservedSocket, Detail)>>,
    last: Vec<String>,
}

impl Seen {
    /// At most this many changes are kept (the first ones).
    const MAX: usize = 40;

    fn note(&mut self, at: Duration, port: u16, all: &[(ObservedSocket, Detail)]) {
        let mine: Vec<&(ObservedSocket, Detail)> = all
            .iter()
            .filter(|(s, _)| {
                s.proto == Proto::Tcp && (s.local.port() == port || s.remote.port() == port)
            })
            .collect();
        self.last = mine.iter().map(|(s, d)| describe(s, *d)).collect();
        let key: Vec<(ObservedSocket, Detail)> = mine
            .iter()
            .map(|(s, d)| {
                (
                    ObservedSocket {
                        timer_ms: None,
                        ..s.clone()
                    },
                    *d,
                )
            })
            .collect();
        if self.last_key.as_ref() != Some(&key) {
            if self.changes.len() < Self::MAX {
                self.changes.push((at, self.last.clone()));
            }
            self.last_key = Some(key);
        }
    }

    fn text(&self) -> String {
        let mut out = Vec::new();
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join("; ")
            }
        };
        for (at, v) in &self.changes {
            out.push(format!("  at {:>6} ms: {}", at.as_millis(), list(v)));
        }
        if self.changes.len() == Self::MAX {
            out.push(format!("  (only the first {} changes)", Self::MAX));
        }
        out.push(format!("  at the end: {}", list(&self.last)));
        out.join("\n")
    }
}
