//! The deployment files under deploy/ are what they claim: the systemd unit
//! passes `systemd-analyze verify` and its capability set is the one twmon
//! needs (tried for real as an unprivileged user when root and eBPF are
//! there), the DaemonSet and every YAML parse and have the expected shape,
//! the Grafana dashboard and the alert rules only query metrics `twmon serve`
//! exports, with labels those metrics have, and the rules pass `promtool
//! check rules` and their own `promtool test rules` cases.
//!
//! A missing tool (systemd-analyze, promtool, setpriv) skips loudly; under
//! CI=true it fails instead.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use promql_parser::parser::{self, Expr, LabelModifier};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const TWMON: &str = env!("CARGO_BIN_EXE_twmon");

/// The metrics `twmon serve` exports and their labels (agreed with
/// monitor/src/metrics.rs). Prometheus adds `instance` and `job`.
const METRICS: &[(&str, &[&str])] = &[
    (
        "twmon_bind_failures_total",
        &["errno", "code", "port", "container"],
    ),
    ("twmon_sockets", &["state", "port"]),
    ("twmon_timewait_sockets", &[]),
    ("twmon_timewait_max_buckets", &[]),
    ("twmon_timewait_created_total", &[]),
    ("twmon_timewait_ended_total", &["reason"]),
    ("twmon_close_wait_sockets", &["pid", "comm", "container"]),
    ("twmon_ephemeral_ports_used", &["netns"]),
    ("twmon_ephemeral_ports_range", &["netns"]),
    ("twmon_events_lost_total", &[]),
    ("twmon_events_total", &["type"]),
    ("twmon_probe_info", &["mode", "hooks"]),
    ("twmon_build_info", &["version"]),
];
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether `tool` can be started (`tool --version`).
fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("twmon-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- systemd

/// `Key=value` settings of the unit, in order (a key may repeat).
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The unit's capabilities (CapabilityBoundingSet, which must equal
/// AmbientCapabilities).
fn unit_caps() -> Vec<String> {
    let s = unit_settings(&read("deploy/twmon.service"));
    let bounding = setting(&s, "CapabilityBoundingSet");
    let ambient = setting(&s, "AmbientCapabilities");
    assert_eq!(bounding.len(), 1, "one CapabilityBoundingSet line");
    assert_eq!(
        bounding, ambient,
        "the bounding set and the ambient set should be the same capabilities"
    );
    bounding[0].split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_unit_runs_serve_with_justified_capabilities() {
    let unit = read("deploy/twmon.service");
    let s = unit_settings(&unit);
    let exec = setting(&s, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].starts_with("/usr/bin/twmon serve"),
        "ExecStart: {}",
        exec[0]
    );
    let caps = unit_caps();
    for need in ["CAP_BPF", "CAP_PERFMON"] {
        assert!(caps.iter().any(|c| c == need), "{need} missing: {caps:?}");
    }
    // Every capability is explained in a comment line of its own.
    for cap in &caps {
        assert!(
            unit.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{cap} "))),
            "{cap} has no comment saying why"
        );
    }
    assert_eq!(setting(&s, "DynamicUser"), ["yes"], "not root");
    assert_eq!(setting(&s, "NoNewPrivileges"), ["yes"]);
    // These would silently take away what twmon needs (see the unit).
    for (key, why) in [
        ("ProtectKernelTunables", "makes /proc/kallsyms inaccessible"),
        ("ProtectKernelLogs", "drops CAP_SYSLOG"),
        ("ProtectProc", "hides the processes twmon looks for"),
        ("PrivateNetwork", "hides the host's sockets"),
        ("RestrictNamespaces", "forbids setns"),
    ] {
        let v = setting(&s, key);
        assert!(
            v.is_empty() || v == ["no"] || v == ["default"],
            "{key}={v:?} {why}"
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let test = "systemd_analyze_verify_accepts_the_unit";
    if !have("systemd-analyze") {
        return support::skip(test, "systemd-analyze not found (Debian package systemd)");
    }
    // Documentation=man:twmon(1): verify runs `man twmon`; give it the page
    // twmon itself generates.
    let dir = TempDir::new("verify");
    let man = dir.0.join("man");
    let out = Command::new(TWMON)
        .args(["man", "--out-dir"])
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "twmon man: {}", text(&out));

    let unit = repo().join("deploy/twmon.service");
    let verify = |path: &Path| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .env("MANPATH", &man)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .unwrap()
    };

    // 1. The file as shipped. /usr/bin/twmon exists once the .deb is
    //    installed; here it usually does not, and that must be the only
    //    complaint.
    let out = verify(&unit);
    let msgs = text(&out);
    if Path::new("/usr/bin/twmon").is_file() {
        assert!(out.status.success() && msgs.trim().is_empty(), "{msgs}");
    } else {
        let other: Vec<&str> = msgs
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("Command /usr/bin/twmon is not executable"))
            .collect();
        assert!(other.is_empty(), "systemd-analyze verify: {msgs}");
        assert!(
            msgs.contains("/usr/bin/twmon"),
            "expected only the missing /usr/bin/twmon, got: {msgs}"
        );
    }

    // 2. The same unit with ExecStart pointing at the twmon cargo built:
    //    no complaint at all.
    let copy = dir.0.join("twmon.service");
    let body = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("ExecStart=/usr/bin/twmon ", &format!("ExecStart={TWMON} "));
    std::fs::write(&copy, body).unwrap();
    let out = verify(&copy);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify (ExecStart={TWMON}): {}",
        text(&out)
    );
}

/// setpriv names: CAP_SYS_PTRACE -> sys_ptrace.
fn setpriv_caps(caps: &[&str]) -> String {
    caps.iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Run `twmon ARGS` as user nobody holding exactly `caps` (ambient, like
/// systemd's AmbientCapabilities=, with NoNewPrivileges).
fn as_nobody_with(caps: &[&str], args: &[&str]) -> Output {
    let list = setpriv_caps(caps);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
    ]);
    if caps.is_empty() {
        cmd.args(["--inh-caps=-all", "--bounding-set=-all"]);
    } else {
        cmd.arg(format!("--inh-caps=-all,{list}"))
            .arg(format!("--ambient-caps=-all,{list}"))
            .arg(format!("--bounding-set=-all,{list}"));
    }
    cmd.arg(TWMON).args(args).stdin(Stdio::null());
    cmd.output().unwrap()
}

/// The unit's capability set is enough for twmon to load and attach its
/// programs as an unprivileged user, so is the set without CAP_SYS_ADMIN (the
/// unit says how to drop it), and each capability makes a difference: from
/// the set without CAP_SYS_ADMIN (which alone also allows BPF), without
/// CAP_BPF or CAP_PERFMON twmon refuses (exit 3); without CAP_SYSLOG it
/// cannot read the timewait timer's address, without CAP_DAC_READ_SEARCH
/// it cannot read the kernel's HZ, and without CAP_SYS_PTRACE or
/// CAP_DAC_READ_SEARCH it cannot name the owner of a root process's socket.
/// CAP_SYS_ADMIN: see cap_sys_admin_gives_evidence_from_other_namespaces.
#[test]
fn unit_capabilities_suffice_and_each_is_needed() {
    let test = "unit_capabilities_suffice_and_each_is_needed";
    if !support::kernel_or_skip(test) {
        return;
    }
    if !have("setpriv") {
        return support::skip(test, "setpriv not found (Debian package util-linux)");
    }
    let caps = unit_caps();
    let all: Vec<&str> = caps.iter().map(String::as_str).collect();
    let without = |cap: &str| -> Vec<&str> { all.iter().copied().filter(|c| *c != cap).collect() };
    let watch = ["watch", "--json", "--port", "1", "--duration", "1"];

    let out = as_nobody_with(&all, &watch);
    let full = text(&out);
    assert!(
        out.status.success(),
        "twmon watch with the unit's capabilities: {full}"
    );
    assert!(full.contains("twmon: watching"), "{full}");
    assert!(!full.contains("timewait life unavailable"), "{full}");
    assert!(!full.contains("kernel HZ unknown"), "{full}");

    let no_admin = without("CAP_SYS_ADMIN");
    let out = as_nobody_with(&no_admin, &watch);
    assert!(
        out.status.success(),
        "without CAP_SYS_ADMIN: {}",
        text(&out)
    );
    for cap in ["CAP_BPF", "CAP_PERFMON"] {
        let less: Vec<&str> = no_admin.iter().copied().filter(|c| *c != cap).collect();
        let out = as_nobody_with(&less, &watch);
        assert_eq!(out.status.code(), Some(3), "without {cap}: {}", text(&out));
        assert!(text(&out).contains(cap), "without {cap}: {}", text(&out));
    }
    // With kptr_restrict=2 nobody sees addresses; the note then appears
    // with the full set too and proves nothing.
    let kptr = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default();
    let paranoid =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    if kptr.trim() != "2" && paranoid.trim().parse::<i32>().is_ok_and(|p| p > 1) {
        let out = as_nobody_with(&without("CAP_SYSLOG"), &watch);
        assert!(
            text(&out).contains("timewait life unavailable"),
            "without CAP_SYSLOG: {}",
            text(&out)
        );
    }
    let out = as_nobody_with(&without("CAP_DAC_READ_SEARCH"), &watch);
    assert!(
        text(&out).contains("kernel HZ unknown"),
        "without CAP_DAC_READ_SEARCH: {}",
        text(&out)
    );

    // Owner lookup: a socket this (root) test process listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let check = ["check", addr.as_str(), "--json"];
    let holder_pid = |out: &Output| -> Option<u64> {
        let v: Json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("check --json: {e}: {}", text(out)));
        assert_eq!(v["would_fail"], true, "{v}");
        v["holders"][0]["pid"].as_u64()
    };
    let me = u64::from(std::process::id());
    assert_eq!(holder_pid(&as_nobody_with(&all, &check)), Some(me));
    for cap in ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"] {
        assert_eq!(
            holder_pid(&as_nobody_with(&without(cap), &check)),
            None,
            "without {cap} the owner should be unknown"
        );
    }
    drop(listener);
}

// ---------------------------------------------------------------- YAML

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn every_yaml_file(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            every_yaml_file(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    every_yaml_file(&repo().join("deploy"), &mut files);
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let v: Yaml = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", f.display()));
        assert!(v.is_mapping(), "{}: not a mapping", f.display());
    }
}

fn strs(v: &Yaml) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn daemonset_has_the_expected_shape() {
    let d = yaml("deploy/kubernetes/daemonset.yaml");
    assert_eq!(d["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(d["kind"].as_str(), Some("DaemonSet"));
    let tpl = &d["spec"]["template"];
    assert_eq!(
        d["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"],
        "the selector must match the pod labels"
    );
    let ann = &tpl["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    let port = ann["prometheus.io/port"].as_str().unwrap();
    let pod = &tpl["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let args = strs(&c["args"]);
    assert_eq!(args.first(), Some(&"serve"), "{args:?}");
    let addr = args
        .iter()
        .position(|a| *a == "--metrics-addr")
        .map(|i| args[i + 1])
        .expect("--metrics-addr");
    assert!(addr.ends_with(&format!(":{port}")), "{addr} vs port {port}");
    assert_eq!(
        c["ports"][0]["containerPort"]
            .as_u64()
            .map(|p| p.to_string()),
        Some(port.to_string())
    );
    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"].as_bool(),
        Some(false),
        "no blanket privileges"
    );
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    // The same capabilities as the systemd unit (Kubernetes drops CAP_).
    let added: BTreeSet<String> = strs(&sc["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let unit: BTreeSet<String> = unit_caps().into_iter().collect();
    assert_eq!(
        added, unit,
        "DaemonSet and systemd unit capabilities differ"
    );
    for key in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                c["resources"][key][what].as_str().is_some(),
                "resources.{key}.{what} missing"
            );
        }
    }
    // Each mount names a volume that exists, and the host paths twmon reads.
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    for m in mounts {
        let name = m["name"].as_str().unwrap();
        assert!(volumes.contains_key(name), "mount of unknown volume {name}");
        assert_eq!(
            m["readOnly"].as_bool(),
            Some(true),
            "{name} should be read-only"
        );
    }
    for path in ["/sys/kernel/btf", "/sys/fs/bpf"] {
        assert!(volumes.values().any(|p| *p == path), "{path} not mounted");
    }
}

// ---------------------------------------------------------------- PromQL

/// Metric names, label names used in selectors and in by/without/on/
/// ignoring clauses, of one PromQL expression.
#[derive(Default, Debug)]
struct Used {
    metrics: BTreeSet<String>,
    /// (metric, label) from selectors.
    matchers: Vec<(String, String)>,
    /// Labels named in grouping clauses.
    grouping: BTreeSet<String>,
}

impl ExprVisitor for Used {
    type Error = String;

    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        match e {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Aggregate(a) => {
                if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &a.modifier {
                    self.grouping.extend(l.labels.iter().cloned());
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &m.matching
                    {
                        self.grouping.extend(l.labels.iter().cloned());
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

impl Used {
    fn selector(&mut self, vs: &promql_parser::parser::VectorSelector) {
        let name = vs.name.clone().unwrap_or_default();
        self.metrics.insert(name.clone());
        for m in vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten())
        {
            self.matchers.push((name.clone(), m.name.clone()));
        }
    }
}

fn labels_of(metric: &str) -> Option<BTreeSet<&'static str>> {
    METRICS
        .iter()
        .find(|(m, _)| *m == metric)
        .map(|(_, l)| l.iter().chain(TARGET_LABELS).copied().collect())
}

/// Parse `expr` (after replacing the dashboard's variables) and check that it
/// only uses the metrics of [`METRICS`] with their own labels. Returns the
/// metrics used.
fn check_query(where_: &str, expr: &str) -> BTreeSet<String> {
    let mut e = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$instance", ".*"),
    ] {
        e = e.replace(var, value);
    }
    assert!(!e.contains('$'), "{where_}: unknown variable in {expr}");
    let ast = parser::parse(&e).unwrap_or_else(|err| panic!("{where_}: {expr}: {err}"));
    let mut used = Used::default();
    walk_expr(&mut used, &ast).unwrap();
    assert!(!used.metrics.is_empty(), "{where_}: no metric in {expr}");
    let mut all_labels = BTreeSet::new();
    for m in &used.metrics {
        let labels = labels_of(m).unwrap_or_else(|| {
            panic!("{where_}: {m} is not a metric twmon serve exports ({expr})")
        });
        all_labels.extend(labels);
    }
    for (m, l) in &used.matchers {
        assert!(
            labels_of(m).unwrap().contains(l.as_str()),
            "{where_}: {m} has no label {l} ({expr})"
        );
    }
    for l in &used.grouping {
        assert!(
            all_labels.contains(l.as_str()),
            "{where_}: no metric of {expr} has label {l}"
        );
    }
    used.metrics
}

/// Every "expr" string anywhere in the dashboard, with its panel's title.
fn dashboard_exprs(v: &Json, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(map) => {
            let title = map
                .get("title")
                .and_then(Json::as_str)
                .unwrap_or(title)
                .to_string();
            for (k, x) in map {
                if k == "expr" {
                    out.push((title.clone(), x.as_str().unwrap().to_string()));
                } else {
                    dashboard_exprs(x, &title, out);
                }
            }
        }
        Json::Array(xs) => xs.iter().for_each(|x| dashboard_exprs(x, title, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_only_twmon_metrics() {
    let text = read("deploy/grafana/twmon-dashboard.json");
    let d: Json = serde_json::from_str(&text).expect("the dashboard is not valid JSON");
    assert!(d["title"].as_str().is_some() && d["uid"].as_str().is_some());
    let panels = d["panels"].as_array().unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&d["panels"], "", &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Every non-row panel has a query, on the dashboard's data source.
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        used.extend(check_query(&format!("panel {title:?}"), expr));
    }
    // The instance variable: a Grafana label_values(), not PromQL.
    for var in d["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["definition"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            let (metric, label) = inner.split_once(',').unwrap();
            let labels = labels_of(metric.trim()).unwrap_or_else(|| panic!("{q}"));
            assert!(labels.contains(label.trim()), "{q}");
        }
    }
    // The panels: each metric shows up somewhere.
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| !used.contains(*m))
        .collect();
    assert!(missing.is_empty(), "metrics on no panel: {missing:?}");
}

#[test]
fn alert_rules_use_only_twmon_metrics() {
    let rules = yaml("deploy/prometheus/twmon-alerts.yaml");
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("only alerting rules");
            let expr = rule["expr"].as_str().unwrap();
            check_query(&format!("alert {name}"), expr);
            let sev = rule["labels"]["severity"].as_str().unwrap_or("");
            assert!(
                ["info", "warning", "critical"].contains(&sev),
                "{name}: severity {sev:?}"
            );
            for a in ["summary", "description"] {
                assert!(rule["annotations"][a].as_str().is_some(), "{name}: no {a}");
            }
            names.push(name.to_string());
        }
    }
    // The alerts.
    for want in [
        "TwmonBindFailureOnListeningPort",
        "TwmonCloseWaitGrowing",
        "TwmonTimewaitNearMax",
        "TwmonEphemeralPortsNearExhaustion",
        "TwmonEventsLost",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no alert {want}: {names:?}"
        );
    }
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let test = "promtool_checks_and_tests_the_alert_rules";
    if !have("promtool") {
        return support::skip(test, "promtool not found (Debian package prometheus)");
    }
    let dir = repo().join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(["check", "rules", "twmon-alerts.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
    // The rules fire (and stay quiet) on the series of the test file.
    let out = Command::new("promtool")
        .args(["test", "rules", "twmon-alerts.test.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool test rules: {}", text(&out));
}

/// A bind failure in another network namespace, caused by a listener that
/// existed before twmon started: twmon (as nobody with the unit's
/// capabilities) learns about that listener only by entering the namespace
/// with setns(2) and asking sock_diag there, which takes CAP_SYS_ADMIN.
/// With it the failure is diagnosed `listener`; without it, not.
#[test]
fn cap_sys_admin_gives_evidence_from_other_namespaces() {
    use std::io::{BufRead, BufReader};
    let test = "cap_sys_admin_gives_evidence_from_other_namespaces";
    if !support::kernel_or_skip(test) {
        return;
    }
    if !have("setpriv") {
        return support::skip(test, "setpriv not found (Debian package util-linux)");
    }
    let caps = unit_caps();
    let all: Vec<&str> = caps.iter().map(String::as_str).collect();
    let no_admin: Vec<&str> = all
        .iter()
        .copied()
        .filter(|c| *c != "CAP_SYS_ADMIN")
        .collect();

    let ns = monitor::scenario::Netns::new().expect("a network namespace");
    let inode = ns.inode().to_string();
    let listener = ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();

    let code_with = |caps: &[&str]| -> String {
        let list = setpriv_caps(caps);
        let mut child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--no-new-privs",
            ])
            .arg(format!("--inh-caps=-all,{list}"))
            .arg(format!("--ambient-caps=-all,{list}"))
            .arg(format!("--bounding-set=-all,{list}"))
            .arg(TWMON)
            .args(["watch", "--json", "--netns", &inode, "--duration", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Attached once it says "watching".
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("twmon watch ended before attaching: {said}");
            }
            said.push_str(&line);
            if line.contains("twmon: watching") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        // A plain socket (std's TcpListener would set SO_REUSEADDR).
        ns.run(|| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            let e = s.bind(&addr.into()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        })
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "twmon watch: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let failure = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .find(|v| {
                v["type"] == "bind_failed"
                    && v["requested"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(&format!(":{port}")))
            })
            .unwrap_or_else(|| panic!("no bind_failed for port {port}: {stdout}"));
        failure["diagnosis"]["code"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    assert_eq!(code_with(&all), "listener", "with the unit's capabilities");
    let without = code_with(&no_admin);
    support::loud(&format!(
        "{test}: without CAP_SYS_ADMIN the failure was diagnosed {without:?}"
    ));
    assert_ne!(without, "listener", "without CAP_SYS_ADMIN");
    drop(listener);
}

/// `twmon serve` as the unit runs it (user nobody, the unit's capabilities
/// and nothing else) serves every metric family the dashboard and the alert
/// rules are written against, and stops cleanly on SIGTERM. Labelled
/// families appear once they have a sample, so the test makes some: a bind
/// failure and a CLOSE_WAIT socket in one private namespace, a TIME_WAIT
/// socket in another that then goes away with its namespace.
#[test]
fn serve_with_the_unit_capabilities_exports_every_metric() {
    use std::io::{BufRead, BufReader, Read, Write};
    let test = "serve_with_the_unit_capabilities_exports_every_metric";
    if !support::kernel_or_skip(test) {
        return;
    }
    if !have("setpriv") {
        return support::skip(test, "setpriv not found (Debian package util-linux)");
    }
    let caps = unit_caps();
    let list = setpriv_caps(&caps.iter().map(String::as_str).collect::<Vec<_>>());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps=-all,{list}"))
        .arg(format!("--ambient-caps=-all,{list}"))
        .arg(format!("--bounding-set=-all,{list}"))
        .arg(TWMON)
        .args(["serve", "--metrics-addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("twmon serve ended before serving: {said}");
        }
        said.push_str(&line);
        if line.contains("serving metrics") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    let ns = monitor::scenario::Netns::new().expect("a network namespace");
    let held = ns
        .run(|| {
            use std::net::{TcpListener, TcpStream};
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            // A plain socket (std's TcpListener would set SO_REUSEADDR).
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            assert!(s.bind(&a.into()).is_err());
            // The peer closes, we never do: CLOSE_WAIT held by this process.
            let c = TcpStream::connect(a).unwrap();
            let (cw, _) = l.accept().unwrap();
            drop(c);
            (l, cw)
        })
        .unwrap();
    let ns2 = monitor::scenario::Netns::new().expect("a network namespace");
    ns2.run(|| {
        use std::io::Read;
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (srv, _) = l.accept().unwrap();
        drop(srv); // the server closes first: TIME_WAIT on its side
        let _ = c.read(&mut [0u8; 1]);
    })
    .unwrap();
    drop(ns2); // its TIME_WAIT socket ends with the namespace

    let scrape = || -> String {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    };
    // `# TYPE twmon_events_lost counter`: counters' samples end in _total.
    let families = |body: &str| -> BTreeSet<String> {
        body.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (name, kind) = (w.next()?, w.next()?);
                Some(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_string()
                })
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (body, missing) = loop {
        let body = scrape();
        let served = families(&body);
        let missing: Vec<&str> = METRICS
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| !served.contains(*m))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (body, missing);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(missing.is_empty(), "not served: {missing:?}\n{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("twmon_probe_info{mode=\"") && l.ends_with(" 1")),
        "{body}"
    );

    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "twmon serve after SIGTERM: {status}");
    drop(held);
}
