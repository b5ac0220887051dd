//! Waiting for a socket to show up in /proc/net, with an error that says
//! what was there instead.

use std::fmt;
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
            let counters = tcp_counters();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                TimedOut {
                    loopback_retransmitted: retransmitted(&counters),
                    text: format!(
                        "waited {within:?} for {what}; TCP sockets on port {port} as the wait \
                         saw them:\n{}\n  held by: {}\n  TCP counters of the namespace: {counters}",
                        seen.text(),
                        holders_on(port),
                    ),
                },
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A wait for a socket that never came.
#[derive(Debug)]
pub struct TimedOut {
    text: String,
    /// The namespace's loopback retransmitted or sent a loss probe. On
    /// loopback a segment is never lost: a retransmission means a timer
    /// fired before the other end processed the segment, which a machine
    /// too slow for the kernel's 200 ms RTO does (an emulated guest). A
    /// FIN_WAIT2 sock that then meets the retransmitted FIN can answer with
    /// a RST, and the TIME_WAIT the scenario waits for never comes.
    pub loopback_retransmitted: bool,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for TimedOut {}

/// Whether [`tcp_counters`]' words say a segment was sent again.
fn retransmitted(counters: &str) -> bool {
    counters.split_whitespace().any(
        |w| matches!(w.split_once('='), Some(("RetransSegs" | "TCPLossProbes", v)) if v != "0"),
    )
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::{retransmitted, TimedOut};
    use crate::scenario::{Outcome, ScenarioError};

    /// Only a wait that timed out while loopback retransmitted makes a
    /// scenario worth playing again; the payload survives `?` as io::Error.
    #[test]
    fn only_a_wait_beside_retransmissions_disturbs_a_scenario() {
        let failed = |error| ScenarioError {
            scenario: 5,
            error,
            partial: Outcome::default(),
        };
        let waited = |loopback_retransmitted| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                TimedOut {
                    text: "waited 30s for the server's TIME_WAIT".into(),
                    loopback_retransmitted,
                },
            )
        };
        let disturbed = failed(waited(true));
        assert!(disturbed.disturbed().is_some());
        assert!(disturbed
            .to_string()
            .contains("waited 30s for the server's TIME_WAIT"));
        assert!(failed(waited(false)).disturbed().is_none());
        let other = io::Error::new(io::ErrorKind::TimedOut, "waited 30s for the listener to go");
        assert!(failed(other).disturbed().is_none());
        assert!(failed(io::Error::other("the client expected EOF"))
            .disturbed()
            .is_none());
    }

    #[test]
    fn a_retransmission_or_a_loss_probe_is_seen_in_the_counters() {
        for (counters, want) in [
            ("all zero", false),
            (
                "ActiveOpens=1 PassiveOpens=1 InSegs=11 OutSegs=9 TW=1",
                false,
            ),
            ("ActiveOpens=1 RetransSegs=2 OutRsts=1 TW=1", true),
            ("ActiveOpens=2 TCPLossProbes=1", true),
            // A reset alone is what scenario 9 (SO_LINGER 0) does on purpose.
            ("ActiveOpens=1 OutRsts=1", false),
            ("RetransSegsX=3", false),
        ] {
            assert_eq!(retransmitted(counters), want, "{counters}");
        }
    }
}
