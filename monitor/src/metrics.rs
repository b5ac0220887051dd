//! The Prometheus metrics of `twmon serve`: counters fed by the events as
//! they leave the correlator, gauges set from the model once a second, the
//! whole rendered by prometheus-client (OpenMetrics text).
//!
//! Cardinality is bounded everywhere a label comes from the outside world:
//! ports (the first [`MAX_PORTS`] ports that failed; the busiest
//! [`MAX_PORTS`] listening ports), processes (the [`TOP_CLOSE_WAIT`] with
//! most CLOSE_WAIT sockets) and namespaces ([`MAX_NETNS`]). What does not fit
//! is summed under `port="other"` or left out, as each metric says.
//!
//! Everything here runs on the event loop's thread; the HTTP side only ever
//! sees the rendered text.

use std::collections::{BTreeMap, HashMap, HashSet};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cli::Filters;
use crate::container::Containers;
use crate::event::{Event, Kind, Proto, TcpState, TimewaitEnd};
use crate::model::Model;
use crate::probe::ModeInfo;

/// Distinct port labels per metric; the rest are `port="other"`.
pub const MAX_PORTS: usize = 100;
/// Processes shown in `twmon_close_wait_sockets`.
pub const TOP_CLOSE_WAIT: usize = 20;
/// Namespaces shown in the ephemeral port gauges (those using most ports).
pub const MAX_NETNS: usize = 64;
/// The port label of everything beyond the cap.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    errno: String,
    code: String,
    port: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    state: String,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    comm: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetnsLabels {
    netns: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    mode: String,
    hooks: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// What the model holds, reduced to the gauges' values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelView {
    /// (state, port label) -> sockets.
    pub sockets: BTreeMap<(String, String), i64>,
    pub timewait: i64,
    /// Processes by CLOSE_WAIT sockets held, most first.
    pub close_wait: Vec<CloseWaitRow>,
    /// (netns, local ports in use in the ephemeral range, range size).
    pub ephemeral: Vec<(u32, i64, i64)>,
}

/// One process's CLOSE_WAIT sockets (pid None: no process is known).
#[derive(Clone, Debug, PartialEq)]
pub struct CloseWaitRow {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub container: Option<String>,
    pub sockets: i64,
}

/// Facts read outside the event loop (sysctls of each namespace).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sysctls {
    /// net.ipv4.ip_local_port_range per namespace, where it could be read.
    pub port_range: HashMap<u32, (u16, u16)>,
    /// net.ipv4.tcp_max_tw_buckets of the init namespace.
    pub max_tw_buckets: Option<i64>,
}

pub struct Metrics {
    registry: Registry,
    bind_failures: Family<FailureLabels, Counter>,
    sockets: Family<SocketLabels, Gauge>,
    timewait_sockets: Gauge,
    timewait_max_buckets: Gauge,
    timewait_created: Counter,
    timewait_ended: Family<ReasonLabels, Counter>,
    close_wait: Family<ProcessLabels, Gauge>,
    ephemeral_used: Family<NetnsLabels, Gauge>,
    ephemeral_range: Family<NetnsLabels, Gauge>,
    events_lost: Counter,
    events: Family<TypeLabels, Counter>,
    /// Ports that have their own `port` label in the failure counter.
    failure_ports: HashSet<u16>,
}

impl Metrics {
    pub fn new(version: &str, mode: &ModeInfo) -> Metrics {
        let mut registry = Registry::with_prefix("twmon");
        let bind_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "bind_failures",
            "Failed bind/listen/connect calls by errno, diagnosis code, requested port \
             (first 100 ports, then \"other\") and container id (\"\" when unknown)",
            bind_failures.clone(),
        );
        let sockets = Family::<SocketLabels, Gauge>::default();
        registry.register(
            "sockets",
            "TCP sockets per state on listening ports and ports that failed to bind \
             (busiest 100 ports, the rest summed as \"other\"), from twmon's model",
            sockets.clone(),
        );
        let timewait_sockets = Gauge::default();
        registry.register(
            "timewait_sockets",
            "Timewait sockets (TIME_WAIT and FIN_WAIT2 substate) in twmon's model, all namespaces",
            timewait_sockets.clone(),
        );
        let timewait_max_buckets = Gauge::default();
        registry.register(
            "timewait_max_buckets",
            "net.ipv4.tcp_max_tw_buckets of the init network namespace",
            timewait_max_buckets.clone(),
        );
        let timewait_created = Counter::default();
        registry.register(
            "timewait_created",
            "Timewait sockets the kernel created",
            timewait_created.clone(),
        );
        let timewait_ended = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "timewait_ended",
            "Timewait sockets that ended, by reason",
            timewait_ended.clone(),
        );
        let close_wait = Family::<ProcessLabels, Gauge>::default();
        registry.register(
            "close_wait_sockets",
            "CLOSE_WAIT sockets held per process (the 20 processes with most; pid \"\" when no \
             process is known)",
            close_wait.clone(),
        );
        let ephemeral_used = Family::<NetnsLabels, Gauge>::default();
        registry.register(
            "ephemeral_ports_used",
            "Local ports of net.ipv4.ip_local_port_range in use by TCP sockets (timewait \
             included), per network namespace (the 64 using most)",
            ephemeral_used.clone(),
        );
        let ephemeral_range = Family::<NetnsLabels, Gauge>::default();
        registry.register(
            "ephemeral_ports_range",
            "Size of net.ipv4.ip_local_port_range per network namespace",
            ephemeral_range.clone(),
        );
        let events_lost = Counter::default();
        registry.register(
            "events_lost",
            "Events the kernel could not hand over (ring buffer full)",
            events_lost.clone(),
        );
        let events = Family::<TypeLabels, Counter>::default();
        registry.register("events", "Kernel events by type", events.clone());
        let probe_info = Family::<ProbeLabels, Gauge>::default();
        probe_info
            .get_or_create(&ProbeLabels {
                mode: mode.mode.clone(),
                hooks: mode.hooks.join(","),
            })
            .set(1);
        registry.register(
            "probe_info",
            "The probe mode and its kernel hooks (value 1)",
            probe_info,
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: version.to_string(),
            })
            .set(1);
        registry.register("build_info", "twmon's version (value 1)", build_info);
        Metrics {
            registry,
            bind_failures,
            sockets,
            timewait_sockets,
            timewait_max_buckets,
            timewait_created,
            timewait_ended,
            close_wait,
            ephemeral_used,
            ephemeral_range,
            events_lost,
            events,
            failure_ports: HashSet::new(),
        }
    }

    /// The port label of a failure: its own for the first MAX_PORTS ports.
    fn failure_port(&mut self, port: u16) -> String {
        if self.failure_ports.contains(&port) || self.failure_ports.len() < MAX_PORTS {
            self.failure_ports.insert(port);
            port.to_string()
        } else {
            OTHER.to_string()
        }
    }

    /// Ports that failed and have their own label.
    pub fn failure_ports(&self) -> &HashSet<u16> {
        &self.failure_ports
    }

    /// Count one event as it leaves the correlator (failures carry their
    /// diagnosis by then). `socket` events are snapshot evidence, not kernel
    /// events, and are not counted.
    pub fn count(&mut self, ev: &Event) {
        if !matches!(ev.kind, Kind::Socket(_)) {
            self.events
                .get_or_create(&TypeLabels {
                    r#type: ev.kind.type_name().to_string(),
                })
                .inc();
        }
        match &ev.kind {
            Kind::BindFailed(b) => {
                let labels = FailureLabels {
                    errno: b.error.clone(),
                    code: b
                        .diagnosis
                        .as_ref()
                        .map_or("unknown", |d| d.code.as_str())
                        .to_string(),
                    port: self.failure_port(b.requested.port()),
                    container: ev.common.container.clone().unwrap_or_default(),
                };
                self.bind_failures.get_or_create(&labels).inc();
            }
            Kind::TimewaitOpen(_) => {
                self.timewait_created.inc();
            }
            Kind::TimewaitClose(t) => {
                self.timewait_ended
                    .get_or_create(&ReasonLabels {
                        reason: TimewaitEnd::as_str(t.reason).to_string(),
                    })
                    .inc();
            }
            Kind::Lost(l) => {
                self.events_lost.inc_by(l.count);
            }
            _ => {}
        }
    }

    /// Replace every model-derived gauge.
    pub fn set_model(&mut self, view: &ModelView, sysctls: &Sysctls) {
        self.sockets.clear();
        for ((state, port), n) in &view.sockets {
            self.sockets
                .get_or_create(&SocketLabels {
                    state: state.clone(),
                    port: port.clone(),
                })
                .set(*n);
        }
        self.timewait_sockets.set(view.timewait);
        if let Some(max) = sysctls.max_tw_buckets {
            self.timewait_max_buckets.set(max);
        }
        self.close_wait.clear();
        for row in &view.close_wait {
            self.close_wait
                .get_or_create(&ProcessLabels {
                    pid: row.pid.map(|p| p.to_string()).unwrap_or_default(),
                    comm: row.comm.clone().unwrap_or_default(),
                    container: row.container.clone().unwrap_or_default(),
                })
                .set(row.sockets);
        }
        self.ephemeral_used.clear();
        self.ephemeral_range.clear();
        for (netns, used, range) in &view.ephemeral {
            let l = NetnsLabels {
                netns: netns.to_string(),
            };
            self.ephemeral_used.get_or_create(&l).set(*used);
            self.ephemeral_range.get_or_create(&l).set(*range);
        }
    }

    /// The OpenMetrics text of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reduce the model to the gauges' values. `failed_ports` (ports with their
/// own failure label) are shown in `twmon_sockets` besides listening ports,
/// so a port that failed shows what holds it after its listener is gone.
pub fn model_view(
    model: &Model,
    sysctls: &Sysctls,
    filters: &Filters,
    failed_ports: &HashSet<u16>,
    containers: &mut Containers,
) -> ModelView {
    let mut view = ModelView::default();
    // (port) -> state -> count, summed over namespaces.
    let mut per_port: HashMap<u16, BTreeMap<TcpState, i64>> = HashMap::new();
    let mut close_wait: HashMap<(Option<u32>, Option<String>), i64> = HashMap::new();
    let mut ephemeral = Vec::new();
    for (&netns, ns) in model.namespaces() {
        if !filters.netns.is_empty() && !filters.netns.contains(&netns) {
            continue;
        }
        let listening: HashSet<u16> = ns
            .sockets()
            .filter(|t| t.sock.proto == Proto::Tcp && t.sock.state == TcpState::Listen)
            .map(|t| t.sock.port)
            .collect();
        let range = sysctls.port_range.get(&netns).copied();
        let mut in_range: HashSet<u16> = HashSet::new();
        for t in ns.sockets() {
            let s = &t.sock;
            if s.proto != Proto::Tcp {
                continue;
            }
            if s.is_timewait() {
                view.timewait += 1;
            }
            if let Some((lo, hi)) = range {
                if s.port >= lo && s.port <= hi {
                    in_range.insert(s.port);
                }
            }
            let port_ok = filters.ports.is_empty() || filters.ports.contains(&s.port);
            if port_ok && (listening.contains(&s.port) || failed_ports.contains(&s.port)) {
                *per_port
                    .entry(s.port)
                    .or_default()
                    .entry(s.state)
                    .or_default() += 1;
            }
            if s.state == TcpState::CloseWait {
                let (pid, comm) = match &t.owner {
                    Some(p) => (Some(p.pid), Some(p.comm.clone())),
                    None => (None, None),
                };
                let keep_pid =
                    filters.pids.is_empty() || pid.is_some_and(|p| filters.pids.contains(&p));
                let keep_comm = filters.comms.is_empty()
                    || comm.as_ref().is_some_and(|c| filters.comms.contains(c));
                if keep_pid && keep_comm {
                    *close_wait.entry((pid, comm)).or_default() += 1;
                }
            }
        }
        if let Some((lo, hi)) = range {
            ephemeral.push((netns, in_range.len() as i64, hi as i64 - lo as i64 + 1));
        }
    }
    // The busiest ports keep their label; the rest are summed as "other".
    let mut ports: Vec<(u16, i64)> = per_port
        .iter()
        .map(|(p, states)| (*p, states.values().sum()))
        .collect();
    ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let labelled: HashSet<u16> = ports.iter().take(MAX_PORTS).map(|(p, _)| *p).collect();
    for (port, states) in per_port {
        let label = if labelled.contains(&port) {
            port.to_string()
        } else {
            OTHER.to_string()
        };
        for (state, n) in states {
            *view
                .sockets
                .entry((state.as_str().to_string(), label.clone()))
                .or_default() += n;
        }
    }
    let mut cw: Vec<_> = close_wait.into_iter().collect();
    cw.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    view.close_wait = cw
        .into_iter()
        .take(TOP_CLOSE_WAIT)
        .map(|((pid, comm), sockets)| CloseWaitRow {
            container: pid.and_then(|p| containers.of_pid(p)),
            pid,
            comm,
            sockets,
        })
        .collect();
    ephemeral.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ephemeral.truncate(MAX_NETNS);
    view.ephemeral = ephemeral;
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn ev(netns: u32, pid: Option<u32>, kind: Kind) -> Event {
        Event {
            common: Common {
                ts: String::new(),
                ts_ns: 1,
                netns,
                proto: Proto::Tcp,
                pid,
                comm: pid.map(|p| format!("srv{p}")),
                container: None,
            },
            kind,
        }
    }

    fn failed(port: u16, code: DiagnosisCode, container: Option<&str>) -> Event {
        let mut e = ev(
            1,
            Some(7),
            Kind::BindFailed(Box::new(BindFailed {
                holders_omitted: 0,
                device: None,
                syscall: Syscall::Bind,
                errno: libc::EADDRINUSE,
                error: "EADDRINUSE".into(),
                requested: format!("0.0.0.0:{port}").parse().unwrap(),
                reuseaddr: false,
                reuseport: false,
                v6only: false,
                uid: 0,
                holders: vec![],
                diagnosis: Some(Diagnosis {
                    code,
                    summary: String::new(),
                    fix: String::new(),
                    reuseaddr_would_help: false,
                    reuseport_would_help: false,
                }),
                freebind: false,
                transparent: false,
                bound_dev_if: 0,
                cgroup_id: 0,
                cookie: 0,
                inode: 0,
                tid: 0,
                local: None,
                kernel_holders: None,
                holder_mismatch: None,
                kernel_port: None,
                port_mismatch: None,
            })),
        );
        e.common.container = container.map(String::from);
        e
    }

    fn state(
        netns: u32,
        pid: Option<u32>,
        local: &str,
        remote: &str,
        new: TcpState,
        cookie: u64,
    ) -> Event {
        ev(
            netns,
            pid,
            Kind::State(StateChange {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                old: TcpState::Close,
                new,
                cookie,
                reuseaddr: false,
                reuseport: false,
                uid: 0,
                inode: 0,
            }),
        )
    }

    fn mode() -> ModeInfo {
        ModeInfo {
            mode: "tracepoint".into(),
            hooks: vec![
                "tp_btf/inet_sock_set_state".into(),
                "tp/sys_exit_bind".into(),
            ],
            notes: vec![],
        }
    }

    /// The samples of an OpenMetrics text: "name{labels}" -> value, with
    /// the labels as they are printed (sorted by the encoder's field order).
    fn samples(text: &str) -> BTreeMap<String, f64> {
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad line {l:?}"));
                (
                    k.to_string(),
                    v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
                )
            })
            .collect()
    }

    #[test]
    fn events_become_counters_with_their_labels() {
        let mut m = Metrics::new("1.2.3", &mode());
        m.count(&failed(8080, DiagnosisCode::TimeWait, None));
        m.count(&failed(8080, DiagnosisCode::TimeWait, None));
        m.count(&failed(8080, DiagnosisCode::Listener, Some("abc")));
        m.count(&ev(
            1,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: "127.0.0.1:80".parse().unwrap(),
                remote: "127.0.0.1:5000".parse().unwrap(),
                substate: TcpState::TimeWait,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 1,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        for reason in [
            TimewaitEnd::Expired,
            TimewaitEnd::ReusedBySyn,
            TimewaitEnd::Expired,
        ] {
            m.count(&ev(
                1,
                None,
                Kind::TimewaitClose(TimewaitClose {
                    local: "127.0.0.1:80".parse().unwrap(),
                    remote: "127.0.0.1:5000".parse().unwrap(),
                    reason,
                    cookie: 1,
                    ended_by: None,
                    end_mismatch: None,
                }),
            ));
        }
        m.count(&ev(
            1,
            None,
            Kind::Lost(Lost {
                count: 12,
                stream: Some("events".into()),
            }),
        ));
        // Snapshot evidence is no kernel event.
        m.count(&ev(
            1,
            None,
            Kind::Socket(SocketSeen {
                local: "127.0.0.1:80".parse().unwrap(),
                remote: None,
                state: TcpState::Listen,
                timewait: false,
                uid: 0,
                inode: 0,
                cookie: 0,
                reuseaddr: None,
                reuseport: None,
                v6only: false,
                bound_dev_if: 0,
                expires_in_ms: None,
                owner: None,
                gone: false,
                shared_with: Vec::new(),
            }),
        ));
        let text = m.render();
        let s = samples(&text);
        let want: &[(&str, f64)] = &[
            (
                r#"twmon_bind_failures_total{errno="EADDRINUSE",code="time_wait",port="8080",container=""}"#,
                2.0,
            ),
            (
                r#"twmon_bind_failures_total{errno="EADDRINUSE",code="listener",port="8080",container="abc"}"#,
                1.0,
            ),
            ("twmon_timewait_created_total", 1.0),
            (r#"twmon_timewait_ended_total{reason="expired"}"#, 2.0),
            (r#"twmon_timewait_ended_total{reason="reused_by_syn"}"#, 1.0),
            ("twmon_events_lost_total", 12.0),
            (r#"twmon_events_total{type="bind_failed"}"#, 3.0),
            (r#"twmon_events_total{type="timewait_close"}"#, 3.0),
            (r#"twmon_events_total{type="lost"}"#, 1.0),
            (
                r#"twmon_probe_info{mode="tracepoint",hooks="tp_btf/inet_sock_set_state,tp/sys_exit_bind"}"#,
                1.0,
            ),
            (r#"twmon_build_info{version="1.2.3"}"#, 1.0),
        ];
        for (k, v) in want {
            assert_eq!(s.get(*k), Some(v), "{k} in\n{text}");
        }
        assert!(!s.keys().any(|k| k.contains(r#"type="socket""#)), "{text}");
        assert!(
            text.contains("# TYPE twmon_bind_failures counter"),
            "{text}"
        );
    }

    #[test]
    fn failure_ports_beyond_the_cap_are_other() {
        let mut m = Metrics::new("0", &mode());
        for port in 1000..(1000 + MAX_PORTS as u16 + 10) {
            m.count(&failed(port, DiagnosisCode::Listener, None));
        }
        // A port admitted early keeps its label.
        m.count(&failed(1000, DiagnosisCode::Listener, None));
        let s = samples(&m.render());
        let ports: HashSet<String> = s
            .keys()
            .filter(|k| k.starts_with("twmon_bind_failures_total"))
            .map(|k| {
                k.split("port=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ports.len(), MAX_PORTS + 1);
        assert!(ports.contains(OTHER));
        let other = r#"twmon_bind_failures_total{errno="EADDRINUSE",code="listener",port="other",container=""}"#;
        assert_eq!(s.get(other), Some(&10.0));
        let first = r#"twmon_bind_failures_total{errno="EADDRINUSE",code="listener",port="1000",container=""}"#;
        assert_eq!(s.get(first), Some(&2.0));
    }

    #[test]
    fn gauges_come_from_the_model_with_bounded_ports_and_processes() {
        let mut model = Model::new();
        // Namespace 1: a listener on 80 with two connections, one in
        // CLOSE_WAIT held by pid 9; a client socket on an ephemeral port.
        model.apply(&state(
            1,
            Some(9),
            "0.0.0.0:80",
            "0.0.0.0:0",
            TcpState::Listen,
            1,
        ));
        model.apply(&state(
            1,
            Some(9),
            "127.0.0.1:80",
            "127.0.0.1:40000",
            TcpState::Established,
            2,
        ));
        model.apply(&state(
            1,
            Some(9),
            "127.0.0.1:80",
            "127.0.0.1:40001",
            TcpState::CloseWait,
            3,
        ));
        model.apply(&state(
            1,
            Some(5),
            "127.0.0.1:40000",
            "127.0.0.1:80",
            TcpState::Established,
            4,
        ));
        model.apply(&ev(
            1,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: "127.0.0.1:40001".parse().unwrap(),
                remote: "127.0.0.1:80".parse().unwrap(),
                substate: TcpState::TimeWait,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 5,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        // A TIME_WAIT on 7000 whose listener is gone, on a port that failed.
        model.apply(&ev(
            1,
            None,
            Kind::TimewaitOpen(TimewaitOpen {
                local: "127.0.0.1:7000".parse().unwrap(),
                remote: "127.0.0.1:50000".parse().unwrap(),
                substate: TcpState::TimeWait,
                expires_in_ms: 60_000,
                left_by: None,
                cookie: 6,
                reuseaddr: false,
                reuseport: false,
            }),
        ));
        // Namespace 2: MAX_PORTS + 5 listeners, one busier than the others.
        for i in 0..(MAX_PORTS as u64 + 5) {
            let port = 8000 + i;
            model.apply(&state(
                2,
                Some(3),
                &format!("0.0.0.0:{port}"),
                "0.0.0.0:0",
                TcpState::Listen,
                100 + i,
            ));
        }
        model.apply(&state(
            2,
            Some(3),
            "127.0.0.1:8104",
            "127.0.0.1:45000",
            TcpState::CloseWait,
            99,
        ));
        let sysctls = Sysctls {
            port_range: [(1, (40000, 40009))].into_iter().collect(),
            max_tw_buckets: Some(262144),
        };
        let failed: HashSet<u16> = [7000].into_iter().collect();
        let mut containers = Containers::new("/nonexistent", "/nonexistent");
        let view = model_view(
            &model,
            &sysctls,
            &Filters::default(),
            &failed,
            &mut containers,
        );
        let mut m = Metrics::new("0", &mode());
        m.set_model(&view, &sysctls);
        let text = m.render();
        let s = samples(&text);
        let want: &[(&str, f64)] = &[
            (r#"twmon_sockets{state="LISTEN",port="80"}"#, 1.0),
            (r#"twmon_sockets{state="ESTABLISHED",port="80"}"#, 1.0),
            (r#"twmon_sockets{state="CLOSE_WAIT",port="80"}"#, 1.0),
            (r#"twmon_sockets{state="TIME_WAIT",port="7000"}"#, 1.0),
            (r#"twmon_sockets{state="LISTEN",port="8104"}"#, 1.0),
            (r#"twmon_sockets{state="CLOSE_WAIT",port="8104"}"#, 1.0),
            ("twmon_timewait_sockets", 2.0),
            ("twmon_timewait_max_buckets", 262144.0),
            (
                r#"twmon_close_wait_sockets{pid="9",comm="srv9",container=""}"#,
                1.0,
            ),
            (
                r#"twmon_close_wait_sockets{pid="3",comm="srv3",container=""}"#,
                1.0,
            ),
            (r#"twmon_ephemeral_ports_used{netns="1"}"#, 2.0),
            (r#"twmon_ephemeral_ports_range{netns="1"}"#, 10.0),
        ];
        for (k, v) in want {
            assert_eq!(s.get(*k), Some(v), "{k} in\n{text}");
        }
        // 80, 8104, then 7000 and 8000.. by number: 100 ports keep a label,
        // the other listeners are summed.
        let ports: HashSet<&str> = s
            .keys()
            .filter(|k| k.starts_with("twmon_sockets{"))
            .map(|k| {
                k.split("port=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(ports.len(), MAX_PORTS + 1, "{ports:?}");
        let other = s[r#"twmon_sockets{state="LISTEN",port="other"}"#];
        // 107 listening/failed ports, 100 labelled: 7 other, all LISTEN.
        assert_eq!(other, 7.0);
        // The client's own socket on 40000 is no listening port.
        assert!(!s.keys().any(|k| k.contains(r#"port="40000""#)));
        // No namespace without a known port range in the ephemeral gauges.
        assert!(!s.keys().any(|k| k.contains(r#"netns="2""#)));

        // Gauges follow the model: the CLOSE_WAIT goes, so does its series.
        model.apply(&state(
            1,
            Some(9),
            "127.0.0.1:80",
            "127.0.0.1:40001",
            TcpState::Close,
            3,
        ));
        let view = model_view(
            &model,
            &sysctls,
            &Filters::default(),
            &failed,
            &mut containers,
        );
        m.set_model(&view, &sysctls);
        let s = samples(&m.render());
        assert!(!s.contains_key(r#"twmon_sockets{state="CLOSE_WAIT",port="80"}"#));
        assert!(!s.contains_key(r#"twmon_close_wait_sockets{pid="9",comm="srv9",container=""}"#));
    }

    #[test]
    fn close_wait_shows_the_top_processes_only() {
        let mut model = Model::new();
        for pid in 1..=(TOP_CLOSE_WAIT as u32 + 5) {
            // pid N holds N CLOSE_WAIT sockets.
            for k in 0..pid {
                let cookie = (pid as u64) * 1000 + k as u64;
                model.apply(&state(
                    1,
                    Some(pid),
                    "127.0.0.1:80",
                    &format!("127.0.0.1:{}", 10000 + cookie),
                    TcpState::CloseWait,
                    cookie,
                ));
            }
        }
        let mut containers = Containers::new("/nonexistent", "/nonexistent");
        let view = model_view(
            &model,
            &Sysctls::default(),
            &Filters::default(),
            &HashSet::new(),
            &mut containers,
        );
        assert_eq!(view.close_wait.len(), TOP_CLOSE_WAIT);
        assert_eq!(view.close_wait[0].pid, Some(TOP_CLOSE_WAIT as u32 + 5));
        assert_eq!(view.close_wait[0].sockets, TOP_CLOSE_WAIT as i64 + 5);
        assert!(view.close_wait.iter().all(|c| c.pid.unwrap() > 5));
    }
}
