//! `--port`, `--pid`, `--comm`, `--netns`: which events a command keeps.

use crate::cli::Filters;
use crate::event::{Event, Kind};

impl Filters {
    /// True when the event passes every filter that was given. `lost` events
    /// always pass: what was missed is never hidden.
    pub fn keep(&self, ev: &Event) -> bool {
        if matches!(ev.kind, Kind::Lost(_)) {
            return true;
        }
        if !self.netns.is_empty() && !self.netns.contains(&ev.common.netns) {
            return false;
        }
        if !self.ports.is_empty() && !ev.ports().iter().flatten().any(|p| self.ports.contains(p)) {
            return false;
        }
        let (pid, comm) = self.process_of(ev);
        if !self.pids.is_empty() && !pid.is_some_and(|p| self.pids.contains(&p)) {
            return false;
        }
        if !self.comms.is_empty() && !comm.is_some_and(|c| self.comms.iter().any(|w| w == c)) {
            return false;
        }
        true
    }

    /// The process an event is about: the actor, or for a timewait sock the
    /// process that left it.
    fn process_of<'a>(&self, ev: &'a Event) -> (Option<u32>, Option<&'a str>) {
        if let Kind::TimewaitOpen(t) = &ev.kind {
            if let Some(p) = &t.left_by {
                return (Some(p.pid), Some(p.comm.as_str()));
            }
        }
        (ev.common.pid, ev.common.comm.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn state(port: u16, netns: u32, pid: Option<u32>, comm: Option<&str>) -> Event {
        Event {
            common: Common {
                ts: String::new(),
                ts_ns: 0,
                netns,
                proto: Proto::Tcp,
                pid,
                comm: comm.map(String::from),
                container: None,
            },
            kind: Kind::State(StateChange {
                local: format!("127.0.0.1:{port}").parse().unwrap(),
                remote: "127.0.0.1:50000".parse().unwrap(),
                old: TcpState::SynSent,
                new: TcpState::Established,
                cookie: 1,
                reuseaddr: false,
                reuseport: false,
                uid: 0,
                inode: 0,
            }),
        }
    }

    #[test]
    fn filters_combine_with_and_and_each_is_a_set() {
        let ev = state(8080, 7, Some(10), Some("nginx"));
        let f = |ports: &[u16], pids: &[u32], comms: &[&str], netns: &[u32]| Filters {
            ports: ports.to_vec(),
            pids: pids.to_vec(),
            comms: comms.iter().map(|s| s.to_string()).collect(),
            netns: netns.to_vec(),
        };
        let cases = [
            (f(&[], &[], &[], &[]), true),
            (f(&[8080], &[], &[], &[]), true),
            (f(&[50000], &[], &[], &[]), true), // remote port counts too
            (f(&[9090], &[], &[], &[]), false),
            (f(&[9090, 8080], &[], &[], &[]), true),
            (f(&[], &[10], &[], &[]), true),
            (f(&[], &[11], &[], &[]), false),
            (f(&[], &[], &["nginx"], &[]), true),
            (f(&[], &[], &["ngin"], &[]), false),
            (f(&[], &[], &[], &[7]), true),
            (f(&[], &[], &[], &[8]), false),
            (f(&[8080], &[10], &["nginx"], &[7]), true),
            (f(&[8080], &[10], &["nginx"], &[8]), false),
        ];
        for (i, (filters, want)) in cases.iter().enumerate() {
            assert_eq!(filters.keep(&ev), *want, "case {i}: {filters:?}");
        }
        // An event without a trustworthy process never matches --pid.
        let softirq = state(8080, 7, None, None);
        assert!(!f(&[], &[10], &[], &[]).keep(&softirq));
    }
}
