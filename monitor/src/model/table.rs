//! One namespace's socket table, with what explaining a failure needs kept
//! beside it so that a failure costs no walk of the table: the keys of the
//! sockets on each port, the timewait socks per local port and per remote
//! end, and the sockets per protocol. A crash-looping server fails many times a second;
//! each walk was the whole table (12 % of `record`'s perf samples beside
//! 100 failures/s and 30,000 timewait socks), and on a host with a million
//! sockets (10-20 ms a walk) 100 failures/s would have taken a core.
//!
//! Every change goes through here, so the indexes cannot drift from the
//! table: the fields they key on (protocol, port, timewait, remote) are
//! only ever set by [`Table::insert`], and a timewait sock's substate,
//! which the FIN_WAIT2 count keys on, by [`Table::set_timewait`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// foldhash instead of SipHash: the table is hashed a few times per
/// transition, a quarter of a million times a second under churn, and the
/// keys are the kernel's socket cookies and ports (randomly seeded, so
/// still no predictable collisions).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use super::{SockId, Tracked};
use crate::event::{Proto, TcpState};

#[derive(Default, Debug)]
pub(super) struct Table {
    /// Boxed: a `Tracked` is some 200 bytes, and a hash table holds its
    /// entries inline in a bucket array that doubles when it fills (also
    /// when tombstones fill it, which socket churn leaves behind), with the
    /// old array alive while the new one is built. Inline, 30-40 k sockets
    /// under churn flipped between 65,536 and 131,072 buckets of 224
    /// bytes: 44 MB at the moment of growth, peaks of +30 MB resident in the
    /// soak. Boxed, a bucket is 24 bytes and each socket one allocation.
    socks: HashMap<SockId, Box<Tracked>>,
    /// The keys of the sockets on each (protocol, local port).
    on_port: HashMap<(Proto, u16), HashSet<SockId>>,
    /// Timewait socks per local port: ordered, for a sum over the
    /// ephemeral range.
    timewait: BTreeMap<u16, u32>,
    /// Timewait socks per remote end: what keeps connect() toward one
    /// destination from a port (those toward others do not).
    timewait_to: HashMap<SocketAddr, u32>,
    /// Timewait socks in FIN_WAIT2 per local port: whether a failure's
    /// look must be fresh (see `Model::timewait_may_have_changed`), told
    /// without walking a busy port's sockets.
    fin_wait2: HashMap<u16, u32>,
    tcp: usize,
    udp: usize,
}

impl Table {
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.socks.capacity()
    }

    pub fn get(&self, id: &SockId) -> Option<&Tracked> {
        self.socks.get(id).map(|t| &**t)
    }

    pub fn contains_key(&self, id: &SockId) -> bool {
        self.socks.contains_key(id)
    }

    pub fn values(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values().map(|t| &**t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SockId, &Tracked)> {
        self.socks.iter().map(|(id, t)| (id, &**t))
    }

    /// Sockets of `proto`.
    pub fn count(&self, proto: Proto) -> usize {
        match proto {
            Proto::Tcp => self.tcp,
            Proto::Udp => self.udp,
        }
    }

    /// The sockets on `port` of `proto`, in no order.
    pub fn on_port(&self, proto: Proto, port: u16) -> impl Iterator<Item = (&SockId, &Tracked)> {
        self.on_port
            .get(&(proto, port))
            .into_iter()
            .flatten()
            .filter_map(|id| self.socks.get(id).map(|t| (id, &**t)))
    }

    /// Ports in `lo..=hi` that a timewait sock holds.
    pub fn timewait_ports_in(&self, lo: u16, hi: u16) -> usize {
        if lo > hi {
            return 0;
        }
        self.timewait.range(lo..=hi).count()
    }

    /// Is a timewait sock in FIN_WAIT2 on `port`?
    pub fn fin_wait2_on(&self, port: u16) -> bool {
        self.fin_wait2.contains_key(&port)
    }

    /// Timewait socks whose remote end is `remote`.
    pub fn timewait_toward(&self, remote: SocketAddr) -> usize {
        self.timewait_to.get(&remote).map_or(0, |n| *n as usize)
    }

    pub fn insert(&mut self, id: SockId, t: Tracked) -> Option<Tracked> {
        // The old entry's keys out before the new one's go in: both may
        // be the same (protocol, port).
        let keys = Keys::of(&t);
        let old = self.socks.insert(id, Box::new(t)).map(|o| *o);
        if let Some(o) = &old {
            self.unindex(id, Keys::of(o));
        }
        self.index(id, keys);
        old
    }

    /// Change the socket under `id` in place (false when there is none);
    /// the indexes follow what `change` did to the fields they key on.
    pub fn update(&mut self, id: &SockId, change: impl FnOnce(&mut Tracked)) -> bool {
        let Some(t) = self.socks.get_mut(id) else {
            return false;
        };
        let before = Keys::of(t);
        change(t);
        let after = Keys::of(t);
        if after != before {
            self.unindex(*id, before);
            self.index(*id, after);
        }
        true
    }

    fn index(&mut self, id: SockId, keys: Keys) {
        self.on_port
            .entry((keys.proto, keys.port))
            .or_default()
            .insert(id);
        if keys.timewait {
            *self.timewait.entry(keys.port).or_default() += 1;
            if let Some(r) = keys.remote {
                *self.timewait_to.entry(r).or_default() += 1;
            }
        }
        if keys.fin_wait2 {
            *self.fin_wait2.entry(keys.port).or_default() += 1;
        }
        *self.count_mut(keys.proto) += 1;
    }

    pub fn remove(&mut self, id: &SockId) -> Option<Tracked> {
        let t = *self.socks.remove(id)?;
        self.unindex(*id, Keys::of(&t));
        Some(t)
    }

    /// Keep the sockets `keep` says to keep.
    pub fn retain(&mut self, mut keep: impl FnMut(&SockId, &Tracked) -> bool) {
        let mut gone = Vec::new();
        self.socks.retain(|id, t| {
            let k = keep(id, t);
            if !k {
                gone.push((*id, Keys::of(t)));
            }
            k
        });
        for (id, keys) in gone {
            self.unindex(id, keys);
        }
    }

    /// A timewait sock's new substate and expiry; the FIN_WAIT2 count
    /// follows the substate.
    pub fn set_timewait(&mut self, id: &SockId, state: TcpState, expires_at_ns: u64) {
        let Some(t) = self.socks.get_mut(id) else {
            return;
        };
        let was = Keys::of(t).fin_wait2;
        t.sock.state = state;
        t.expires_at_ns = Some(expires_at_ns);
        let (now, port) = (Keys::of(t).fin_wait2, t.sock.port);
        match (was, now) {
            (false, true) => *self.fin_wait2.entry(port).or_default() += 1,
            (true, false) => count_down(&mut self.fin_wait2, &port),
            _ => {}
        }
    }

    /// Give back room a table left mostly empty would keep (hash tables
    /// keep their largest size).
    pub fn shrink(&mut self) {
        let len = self.socks.len();
        if self.socks.capacity() > 4 * len.max(1024) {
            self.socks.shrink_to(2 * len);
        }
        if self.on_port.capacity() > 4 * self.on_port.len().max(1024) {
            self.on_port.shrink_to(2 * self.on_port.len());
        }
        if self.fin_wait2.capacity() > 4 * self.fin_wait2.len().max(1024) {
            self.fin_wait2.shrink_to(2 * self.fin_wait2.len());
        }
        if self.timewait_to.capacity() > 4 * self.timewait_to.len().max(1024) {
            self.timewait_to.shrink_to(2 * self.timewait_to.len());
        }
        for ids in self.on_port.values_mut() {
            if ids.capacity() > 4 * ids.len().max(64) {
                ids.shrink_to(2 * ids.len());
            }
        }
    }

    fn unindex(&mut self, id: SockId, keys: Keys) {
        let Keys {
            proto,
            port,
            timewait,
            remote,
            fin_wait2,
        } = keys;
        if fin_wait2 {
            count_down(&mut self.fin_wait2, &port);
        }
        if let Some(ids) = self.on_port.get_mut(&(proto, port)) {
            ids.remove(&id);
            if ids.is_empty() {
                self.on_port.remove(&(proto, port));
            }
        }
        if timewait {
            if let Some(n) = self.timewait.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    self.timewait.remove(&port);
                }
            }
            if let Some(r) = remote {
                count_down(&mut self.timewait_to, &r);
            }
        }
        *self.count_mut(proto) -= 1;
    }

    fn count_mut(&mut self, proto: Proto) -> &mut usize {
        match proto {
            Proto::Tcp => &mut self.tcp,
            Proto::Udp => &mut self.udp,
        }
    }
}

/// One fewer under `key`; the entry goes at zero.
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The fields of a socket the indexes key on, as it was indexed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Keys {
    proto: Proto,
    port: u16,
    timewait: bool,
    remote: Option<SocketAddr>,
    /// A timewait sock in FIN_WAIT2 (the one key `set_timewait` changes).
    fin_wait2: bool,
}

impl Keys {
    fn of(t: &Tracked) -> Keys {
        Keys {
            proto: t.sock.proto,
            port: t.sock.port,
            timewait: t.sock.timewait,
            remote: t.sock.remote,
            fin_wait2: t.sock.timewait && t.sock.state == TcpState::FinWait2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ExistingSocket;

    fn tracked(proto: Proto, port: u16, timewait: bool, peer: u16) -> Tracked {
        let mut sock = ExistingSocket::new(
            proto,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            if timewait {
                TcpState::TimeWait
            } else {
                TcpState::Established
            },
        );
        sock.timewait = timewait;
        sock.remote = Some(std::net::SocketAddr::from(([127, 0, 0, 2], peer)));
        Tracked {
            sock,
            owner: None,
            left_by: None,
            since_ns: 0,
            expires_at_ns: None,
            unretired: false,
            opened_by: None,
            owner_looked: false,
            outgoing: None,
            shared_with: Box::default(),
            seq: 0,
        }
    }

    /// What the indexes must say, by walking the table: the keys on the
    /// port, the ports in `lo..=hi` with a timewait sock, the timewait
    /// socks toward the peer port `peer`, the sockets of `proto`.
    fn walked(
        t: &Table,
        proto: Proto,
        port: u16,
        (lo, hi): (u16, u16),
        peer: u16,
    ) -> (Vec<SockId>, usize, usize, usize) {
        let mut on: Vec<SockId> = t
            .iter()
            .filter(|(_, s)| s.sock.proto == proto && s.sock.port == port)
            .map(|(id, _)| *id)
            .collect();
        on.sort_by_key(|id| format!("{id:?}"));
        let tw_ports: std::collections::BTreeSet<u16> = t
            .values()
            .filter(|s| s.sock.timewait && (lo..=hi).contains(&s.sock.port))
            .map(|s| s.sock.port)
            .collect();
        let toward = t
            .values()
            .filter(|s| s.sock.timewait && s.sock.remote.map(|r| r.port()) == Some(peer))
            .count();
        let n = t.values().filter(|s| s.sock.proto == proto).count();
        (on, tw_ports.len(), toward, n)
    }

    /// Inserts (new keys and replacements that move a socket to another
    /// port or protocol, or make it a timewait sock), removals and retains,
    /// in a fixed pseudo-random order: after each, the indexes agree with a
    /// walk of the table.
    #[test]
    fn the_indexes_agree_with_a_walk_after_any_change() {
        let mut t = Table::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for step in 0..5000 {
            let id = match next(3) {
                0 => SockId::Cookie(next(40)),
                1 => SockId::Tw(next(40)),
                _ => SockId::Inode(next(40)),
            };
            match next(12) {
                10 | 11 => {
                    // A timewait sock's substate changes (or a live
                    // socket's: set_timewait must keep the index right
                    // whatever it is given).
                    let state = if next(2) == 0 {
                        TcpState::FinWait2
                    } else {
                        TcpState::TimeWait
                    };
                    t.set_timewait(&id, state, 1);
                }
                0..=3 => {
                    let proto = if next(4) == 0 { Proto::Udp } else { Proto::Tcp };
                    let port = 1000 + next(6) as u16;
                    let peer = 80 + next(3) as u16;
                    t.insert(id, tracked(proto, port, next(2) == 0, peer));
                }
                4 | 5 => {
                    // Changed in place: same keys, or moved to others.
                    let proto = if next(4) == 0 { Proto::Udp } else { Proto::Tcp };
                    let port = 1000 + next(6) as u16;
                    let peer = 80 + next(3) as u16;
                    let timewait = next(2) == 0;
                    let known = t.contains_key(&id);
                    let changed = t.update(&id, |s| {
                        if next(2) == 0 {
                            *s = tracked(proto, port, timewait, peer);
                        } else {
                            s.since_ns += 1;
                        }
                    });
                    assert_eq!(changed, known);
                }
                6..=8 => {
                    t.remove(&id);
                }
                _ => {
                    let cut = 1000 + next(6) as u16;
                    t.retain(|_, s| s.sock.port != cut);
                }
            }
            if step % 97 == 0 {
                t.shrink();
            }
            for proto in [Proto::Tcp, Proto::Udp] {
                for port in 1000..1006 {
                    let (lo, hi) = (1000 + next(6) as u16, 1000 + next(6) as u16);
                    let peer = 80 + next(3) as u16;
                    let (on, tw, toward, n) = walked(&t, proto, port, (lo, hi), peer);
                    let mut got: Vec<SockId> = t.on_port(proto, port).map(|(id, _)| *id).collect();
                    got.sort_by_key(|id| format!("{id:?}"));
                    assert_eq!(got, on, "step {step}: {proto:?} port {port}");
                    assert_eq!(t.timewait_ports_in(lo, hi), tw, "step {step}: {lo}..={hi}");
                    let to = std::net::SocketAddr::from(([127, 0, 0, 2], peer));
                    assert_eq!(t.timewait_toward(to), toward, "step {step}: toward {to}");
                    let fin_wait2 = t.values().any(|s| {
                        s.sock.timewait && s.sock.state == TcpState::FinWait2 && s.sock.port == port
                    });
                    assert_eq!(t.fin_wait2_on(port), fin_wait2, "step {step}: port {port}");
                    assert_eq!(t.count(proto), n, "step {step}: {proto:?}");
                }
            }
        }
        assert!(!t.is_empty(), "the sequence left sockets to check against");
    }
}
