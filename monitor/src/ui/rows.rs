//! The rows of each list, as the filters, the sort and the model make
//! them. Shared by the views (what to draw) and the keys (how far a
//! selection may move).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::event::{Event, Process, Proto, TcpState};
use crate::model::Model;

use super::app::{App, FailureRow, PortSort};
use super::filter::{event_hay, Hay};

/// Failures that pass the filters, newest first.
pub fn failures(app: &App) -> Vec<&FailureRow> {
    app.all_failures()
        .iter()
        .rev()
        .filter(|f| app.cli.keep(&f.event) && app.filter.matches_event(&f.event))
        .collect()
}

/// Log lines that pass the filters, oldest first.
pub fn log(app: &App) -> Vec<&(u64, Event)> {
    app.log_lines()
        .iter()
        .filter(|(_, e)| app.cli.keep(e) && app.filter.matches_event(e))
        .collect()
}

/// One (netns, port) in the Ports view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortRow {
    pub netns: u32,
    pub port: u16,
    pub listen: u32,
    pub established: u32,
    pub close_wait: u32,
    pub time_wait: u32,
    /// Other TCP states (SYN_SENT, FIN_WAIT1, LAST_ACK, BOUND, ...).
    pub other: u32,
    /// Bind failures on this port kept by the dashboard.
    pub failures: u32,
    /// Processes owning sockets on it.
    pub owners: BTreeSet<(u32, String)>,
    /// Local addresses, for the text filter only (left empty when no
    /// filter is set): the view is built every frame from every socket, and
    /// a string per socket was most of a churning dashboard's allocations
    /// (perf).
    pub addrs: BTreeSet<std::net::IpAddr>,
}

impl PortRow {
    fn hay(&self) -> Hay<'_> {
        let mut h = Hay::default();
        h.num(self.port as u32).num(self.netns);
        for (pid, comm) in &self.owners {
            h.num(*pid).text(comm.as_str());
        }
        for a in &self.addrs {
            h.text(a.to_string());
        }
        h
    }
}

/// TCP ports with sockets, failures or recent TIME_WAIT / CLOSE_WAIT
/// history, sorted as the user chose.
pub fn ports(app: &App, model: &Model) -> Vec<PortRow> {
    let mut rows: HashMap<(u32, u16), PortRow> = HashMap::new();
    let row = |rows: &mut HashMap<(u32, u16), PortRow>, netns: u32, port: u16| {
        let r = rows.entry((netns, port)).or_default();
        r.netns = netns;
        r.port = port;
    };
    let filtering = !app.filter.is_empty();
    for (&netns, ns) in model.namespaces() {
        if !app.in_scope(netns) {
            continue;
        }
        let counted = ns.counted_timewait();
        for (&port, &n) in counted.into_iter().flatten() {
            let r = rows.entry((netns, port)).or_insert_with(|| PortRow {
                netns,
                port,
                ..PortRow::default()
            });
            r.time_wait += n;
        }
        for t in ns.sockets() {
            if t.sock.proto != Proto::Tcp || t.sock.port == 0 {
                continue;
            }
            // Counted above (light mode): these are failures' evidence.
            if t.sock.timewait && counted.is_some() {
                continue;
            }
            let r = rows.entry((netns, t.sock.port)).or_insert_with(|| PortRow {
                netns,
                port: t.sock.port,
                ..PortRow::default()
            });
            if t.sock.timewait {
                r.time_wait += 1;
            } else {
                match t.sock.state {
                    TcpState::Listen => r.listen += 1,
                    TcpState::Established => r.established += 1,
                    TcpState::CloseWait => r.close_wait += 1,
                    _ => r.other += 1,
                }
            }
            // Built every frame from every socket: no copy of a name the
            // row has, and addresses only when a filter may ask for them.
            if let Some(o) = &t.owner {
                if !r.owners.iter().any(|(p, c)| *p == o.pid && *c == o.comm) {
                    r.owners.insert((o.pid, o.comm.clone()));
                }
            }
            if filtering {
                r.addrs.insert(t.sock.local);
            }
        }
    }
    for f in app.all_failures() {
        let c = &f.event.common;
        let port = f.bind().requested.port();
        if c.proto != Proto::Tcp || port == 0 || !app.in_scope(c.netns) {
            continue;
        }
        row(&mut rows, c.netns, port);
        rows.get_mut(&(c.netns, port)).expect("just made").failures += 1;
    }
    for &(netns, port) in app.series_keys() {
        if app.in_scope(netns) {
            row(&mut rows, netns, port);
        }
    }
    let cli = &app.cli;
    let mut v: Vec<PortRow> = rows
        .into_values()
        .filter(|r| {
            (cli.ports.is_empty() || cli.ports.contains(&r.port))
                && (cli.pids.is_empty() || r.owners.iter().any(|(p, _)| cli.pids.contains(p)))
                && (cli.comms.is_empty() || r.owners.iter().any(|(_, c)| cli.comms.contains(c)))
                && (cli.netns.is_empty() || cli.netns.contains(&r.netns))
                && (app.filter.is_empty() || app.filter.matches(&r.hay()))
        })
        .collect();
    let key = |r: &PortRow| -> u32 {
        match app.sort {
            PortSort::TimeWait => r.time_wait,
            PortSort::CloseWait => r.close_wait,
            PortSort::Established => r.established,
            PortSort::Listen => r.listen,
            PortSort::Failures => r.failures,
            PortSort::Port => 0,
        }
    };
    v.sort_by(|a, b| {
        key(b)
            .cmp(&key(a))
            .then(a.port.cmp(&b.port))
            .then(a.netns.cmp(&b.netns))
    });
    v
}

/// One process's CLOSE_WAIT sockets.
#[derive(Clone, Debug, PartialEq)]
pub struct CloseWaitRow {
    pub netns: u32,
    /// None: no event showed the owner acting on its socket.
    pub owner: Option<Process>,
    pub count: u32,
    /// Boot-time ns when its oldest CLOSE_WAIT socket entered CLOSE_WAIT (or
    /// was first seen).
    pub oldest_ns: u64,
    pub ports: BTreeSet<u16>,
}

/// CLOSE_WAIT sockets grouped by owner, the longest-held first: the leak
/// suspects at the top.
pub fn close_wait(app: &App, model: &Model) -> Vec<CloseWaitRow> {
    let mut by: BTreeMap<(u32, Option<(u32, String)>), CloseWaitRow> = BTreeMap::new();
    for (&netns, ns) in model.namespaces() {
        if !app.in_scope(netns) {
            continue;
        }
        for t in ns.sockets() {
            if t.sock.proto != Proto::Tcp || t.sock.timewait || t.sock.state != TcpState::CloseWait
            {
                continue;
            }
            let since = app.cw_since(netns, t.sock.cookie).unwrap_or(t.since_ns);
            let key = (netns, t.owner.as_ref().map(|o| (o.pid, o.comm.clone())));
            let r = by.entry(key).or_insert_with(|| CloseWaitRow {
                netns,
                owner: t.owner.clone(),
                count: 0,
                oldest_ns: since,
                ports: BTreeSet::new(),
            });
            r.count += 1;
            r.oldest_ns = r.oldest_ns.min(since);
            r.ports.insert(t.sock.port);
        }
    }
    let cli = &app.cli;
    let mut v: Vec<CloseWaitRow> = by
        .into_values()
        .filter(|r| {
            let pid = r.owner.as_ref().map(|o| o.pid);
            let comm = r.owner.as_ref().map(|o| o.comm.as_str());
            (cli.pids.is_empty() || pid.is_some_and(|p| cli.pids.contains(&p)))
                && (cli.comms.is_empty() || comm.is_some_and(|c| cli.comms.iter().any(|w| w == c)))
                && (cli.ports.is_empty() || r.ports.iter().any(|p| cli.ports.contains(p)))
                && (app.filter.is_empty() || {
                    let mut h = Hay::default();
                    h.num(r.netns);
                    if let Some(o) = &r.owner {
                        h.num(o.pid).text(o.comm.as_str());
                    }
                    for p in &r.ports {
                        h.num(*p as u32);
                    }
                    app.filter.matches(&h)
                })
        })
        .collect();
    v.sort_by(|a, b| {
        a.oldest_ns
            .cmp(&b.oldest_ns)
            .then(b.count.cmp(&a.count))
            .then(a.netns.cmp(&b.netns))
    });
    v
}

/// Does the event pass the text filter? (Re-exported for sources that
/// print lines.)
pub fn event_matches(app: &App, ev: &Event) -> bool {
    app.filter.is_empty() || app.filter.matches(&event_hay(ev))
}
