//! The light mode's view of the sockets: every network namespace's TCP
//! sockets listed with sock_diag on a thread of its own, again and again,
//! and only what changed since the last listing handed on.
//!
//! Why: streaming every transition and the timewait life costs a churning
//! host some 25 program runs per connection (bench/NOTES.md), and the
//! dashboard's Ports and CLOSE_WAIT views only need what exists now. A
//! listing costs the kernel nothing between listings and a walk of its
//! socket tables during one; the period stretches with the walk (at most a
//! tenth of one core), so a host with a million sockets is not listed every
//! second.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::correlate;
use crate::event::{Proto, SocketSeen};
use crate::rules::ExistingSocket;
use crate::snapshot::{self, OwnerMap};
use crate::trace::recording::{all_netns, own_netns};

/// The shortest time between two listings.
pub const SOONEST: Duration = Duration::from_secs(1);
/// A listing takes at most 1/SHARE of the time between two.
const SHARE: u32 = 20;
/// The longest time between two listings.
const LATEST: Duration = Duration::from_secs(30);

/// What changed in one namespace since the last listing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NsChanges {
    pub netns: u32,
    /// New sockets, and those whose state changed (not timewait socks).
    pub seen: Vec<SocketSeen>,
    /// Cookies of the sockets the listing no longer shows.
    pub gone: Vec<u64>,
    /// Timewait socks per local port, all of them: counted, not handed on
    /// one by one. They are most of a busy host's sockets (262,144 here
    /// when clients close first) and nothing in the views needs them one
    /// by one; as sockets they made the dashboard's model hundreds of MiB.
    pub timewait: Vec<(u16, u32)>,
}

/// One listing's changes, every namespace.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CensusUpdate {
    /// Boot-time ns when the listing started.
    pub ts_ns: u64,
    pub namespaces: Vec<NsChanges>,
    /// How long the listing took.
    pub took: Duration,
    /// When the next one starts after this one did.
    pub every: Duration,
    /// Namespaces that could not be listed, one sentence each.
    pub notes: Vec<String>,
}

/// The time between listings for one that took `took`.
pub fn period_for(took: Duration) -> Duration {
    (took * SHARE).clamp(SOONEST, LATEST)
}

/// What the last listing showed of one socket: enough to tell a change.
#[derive(Clone, Copy)]
struct Known {
    state: u8,
    /// The listing that last showed it.
    round: u64,
}

/// One namespace's listing.
#[derive(Default)]
struct Walked {
    changed: Vec<ExistingSocket>,
    gone: Vec<u64>,
    timewait: HashMap<u16, u32>,
}

/// The listings' memory, per namespace: cookie -> what was shown.
#[derive(Default)]
pub struct Lister {
    known: HashMap<u32, HashMap<u64, Known>>,
    round: u64,
}

impl Lister {
    /// List every namespace once; what changed.
    pub fn list(&mut self) -> CensusUpdate {
        let start = Instant::now();
        let ts_ns = crate::scenario::boottime_ns();
        self.round += 1;
        let round = self.round;
        let own = own_netns();
        let mut found: Vec<(u32, Walked)> = Vec::new();
        let mut notes = Vec::new();
        let targets = all_netns();
        for (&netns, path) in &targets {
            let known = self.known.entry(netns).or_default();
            let mut walk = || Self::walk(known, round);
            let r = if Some(netns) == own {
                Some(walk())
            } else {
                correlate::in_netns(path, walk)
            };
            match r {
                Some(Ok(w)) => found.push((netns, w)),
                Some(Err(e)) => notes.push(format!("namespace {netns} could not be listed: {e}")),
                None => notes.push(format!("namespace {netns} could not be entered")),
            }
        }
        // Namespaces that went away: everything in them is gone.
        let vanished: Vec<u32> = self
            .known
            .keys()
            .filter(|n| !targets.contains_key(n))
            .copied()
            .collect();
        for netns in vanished {
            let gone = self.known.remove(&netns).unwrap_or_default();
            found.push((
                netns,
                Walked {
                    gone: gone.into_keys().collect(),
                    ..Walked::default()
                },
            ));
        }
        // One scan of /proc names the owners of every new socket.
        let wanted: HashSet<u64> = found
            .iter()
            .flat_map(|(_, w)| w.changed.iter())
            .filter(|s| s.inode != 0)
            .map(|s| s.inode)
            .collect();
        let owners = OwnerMap::scan_wanted(&wanted);
        let namespaces = found
            .into_iter()
            .map(|(netns, w)| NsChanges {
                netns,
                seen: w
                    .changed
                    .iter()
                    .map(|s| {
                        let owner = (s.inode != 0).then(|| owners.first(s.inode)).flatten();
                        let shared = owners.shared_with(s.inode, owner.as_ref().map(|o| o.pid));
                        let mut seen = correlate::socket_seen(s, owner);
                        seen.shared_with = shared;
                        seen
                    })
                    .collect(),
                gone: w.gone,
                timewait: w.timewait.into_iter().collect(),
            })
            .collect();
        let took = start.elapsed();
        CensusUpdate {
            ts_ns,
            namespaces,
            took,
            every: period_for(took),
            notes,
        }
    }

    /// The calling thread's namespace: its changed sockets, the cookies of
    /// those gone and the timewait tally, `known` brought up to date.
    fn walk(known: &mut HashMap<u64, Known>, round: u64) -> std::io::Result<Walked> {
        let mut w = Walked::default();
        // Every namespace shares the kernel's one table of connections
        // (unless tcp_child_ehash_entries gave it its own), so a listing
        // walks all of it, 262,144 buckets here, twice (v4, v6), whatever
        // the namespace holds: skip namespaces without TCP sockets. (A
        // socket that is only bound is not counted there and stays unseen
        // in an otherwise empty namespace; a failing bind still finds it.)
        if tcp_sockets_here() == Some(0) {
            w.gone = known.drain().map(|(cookie, _)| cookie).collect();
            return Ok(w);
        }
        snapshot::sockdiag::visit_ports(Proto::Tcp, &[], snapshot::sockdiag::ALL_STATES, |d| {
            if d.cookie == 0 {
                return;
            }
            let timewait = d.is_timewait();
            if timewait {
                *w.timewait.entry(d.local.port()).or_default() += 1;
            }
            let now = Known {
                state: d.state,
                round,
            };
            // Timewait socks are known by cookie too: the socket they came
            // from is gone then, and so is the failure evidence's copy of
            // one when it ends.
            match known.insert(d.cookie, now) {
                Some(k) if k.state == d.state => {}
                _ if timewait => {}
                _ => w.changed.extend(snapshot::to_existing(&d)),
            }
        })?;
        known.retain(|cookie, k| {
            let shown = k.round == round;
            if !shown {
                w.gone.push(*cookie);
            }
            shown
        });
        if known.capacity() > 4 * known.len().max(1024) {
            known.shrink_to(2 * known.len());
        }
        Ok(w)
    }
}

/// Hashed TCP sockets (v4 and v6, any state but bound) and timewait socks of
/// the calling thread's namespace, from /proc/net/sockstat{,6}.
fn tcp_sockets_here() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok();
    let v4 = read("sockstat")?;
    let v6 = read("sockstat6").unwrap_or_default();
    Some(sockstat_tcp(&v4) + sockstat_tcp(&v6))
}

/// "TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1" -> 7 (inuse + tw);
/// "TCP6: inuse 1" -> 1.
fn sockstat_tcp(text: &str) -> u64 {
    let Some(line) = text
        .lines()
        .find(|l| l.starts_with("TCP: ") || l.starts_with("TCP6: "))
    else {
        return 0;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| -> u64 {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    value("inuse") + value("tw")
}

/// Listings on a thread of their own, handed over one at a time.
pub struct Census {
    rx: Receiver<CensusUpdate>,
    stop: Arc<AtomicBool>,
    /// The period the last listing asked for.
    pub every: Duration,
}

impl Census {
    /// Start listing now; the first update holds every socket.
    pub fn start() -> Census {
        // One update waits at most: the thread blocks until it is taken
        // (the dashboard paused), and lists afresh only then.
        let (tx, rx) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("twmon-census".into())
            .spawn(move || run(tx, &flag));
        if let Err(e) = spawned {
            log::warn!("no census thread: {e}");
        }
        Census {
            rx,
            stop,
            every: SOONEST,
        }
    }

    /// The next listing's changes, if one is ready.
    pub fn try_recv(&mut self) -> Option<CensusUpdate> {
        let u = self.rx.try_recv().ok()?;
        self.every = u.every;
        Some(u)
    }
}

impl Drop for Census {
    fn drop(&mut self) {
        // The thread sees it within 50 ms, or after the listing it is in.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn run(tx: SyncSender<CensusUpdate>, stop: &AtomicBool) {
    let mut lister = Lister::default();
    let nap = Duration::from_millis(50);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut update = lister.list();
        let every = update.every;
        loop {
            match tx.try_send(update) {
                Ok(()) => break,
                Err(TrySendError::Full(u)) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    update = u;
                    std::thread::sleep(nap);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        while started.elapsed() < every {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(nap.min(every.saturating_sub(started.elapsed())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_counts_connections_and_timewait() {
        let v4 =
            "sockets: used 130\nTCP: inuse 5 orphan 1 tw 2 alloc 9 mem 3\nUDP: inuse 4 mem 2\n";
        let v6 = "TCP6: inuse 1\nUDP6: inuse 2\n";
        assert_eq!(sockstat_tcp(v4), 7);
        assert_eq!(sockstat_tcp(v6), 1);
        assert_eq!(
            sockstat_tcp("TCP: inuse 0 orphan 0 tw 0 alloc 0 mem 0\n"),
            0
        );
        assert_eq!(sockstat_tcp("garbled"), 0);
    }

    /// The kernel's own count, in a namespace of this test's: 0 when empty,
    /// then one listener.
    #[test]
    fn an_empty_namespace_counts_no_tcp_socket() {
        let Some(ns) = crate::scenario::Netns::for_test("an_empty_namespace_counts_no_tcp_socket")
        else {
            return;
        };
        let (empty, one) = ns
            .run(|| {
                let empty = tcp_sockets_here();
                let l = std::net::TcpListener::bind("127.0.0.1:0").ok();
                let one = tcp_sockets_here();
                drop(l);
                (empty, one)
            })
            .expect("ran in the namespace");
        assert_eq!(empty, Some(0));
        assert_eq!(one, Some(1));
    }

    #[test]
    fn the_period_stretches_with_the_listing() {
        for (took_ms, every_ms) in [
            (0, 1000),
            (50, 1000),
            (100, 2000),
            (250, 5000),
            (9000, 30000),
        ] {
            assert_eq!(
                period_for(Duration::from_millis(took_ms)),
                Duration::from_millis(every_ms),
                "a listing of {took_ms} ms"
            );
        }
    }
}
