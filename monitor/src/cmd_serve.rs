//! `twmon serve`: the headless agent. The live probe feeds the correlator
//! and its model as in `watch`; the events update Prometheus counters, and
//! once a second the model's gauges are set and the whole is rendered to
//! text that an HTTP server on a thread of its own hands to scrapers.
//!
//! The two sides share nothing but that rendered text (a `watch` channel of
//! bytes), so a slow, hanging or flooding scraper never holds up the events,
//! and the model stays the event loop's alone.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::cli::ServeArgs;
use crate::container::Containers;
use crate::correlate::{self, Correlator, Kernel};
use crate::event::{Event, Kind};
use crate::live::{Live, Shutdown};
use crate::metrics::{self, Metrics, Sysctls};
use crate::output::json_line;
use crate::trace::recording::{all_netns, own_netns, snapshot_events, SnapshotScope};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A client must have sent its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection lives at most this long (a reader that never reads the
/// response is cut off here).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers larger than this are refused (hyper's smallest buffer).
pub const MAX_REQUEST: usize = 8192;
/// How often the model's gauges are set and the text rendered.
const RENDER_EVERY: Duration = Duration::from_secs(1);
/// How often the namespaces' sysctls are read again.
const SYSCTLS_EVERY: Duration = Duration::from_secs(10);
/// Namespaces whose sysctls are read (each read enters the namespace).
const MAX_SYSCTL_NETNS: usize = 256;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn run(args: &ServeArgs) -> anyhow::Result<i32> {
    let addr: SocketAddr = match args.metrics_addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!(
                "twmon: --metrics-addr {:?} is not an ADDR:PORT such as 127.0.0.1:9464 or [::]:9464.",
                args.metrics_addr
            );
            return Ok(2);
        }
    };
    // Bind before loading the probe: a taken port is reported at once.
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::AddrNotAvailable => 2,
                _ => 1,
            };
            eprintln!("twmon: cannot serve metrics on {addr}: {e}.");
            return Ok(code);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, listener))
}

async fn serve(args: &ServeArgs, listener: std::net::TcpListener) -> anyhow::Result<i32> {
    // Signals are handled from here on: a stop request always drains.
    let mut shutdown = Shutdown::new(args.duration)?;
    let mut live = match Live::start(args.probe.mode) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    let addr = listener.local_addr()?;
    let mut agent = Agent {
        metrics: Metrics::new(env!("CARGO_PKG_VERSION"), &live.mode),
        correlator: Correlator::new(Kernel::new()),
        containers: Containers::default(),
        sysctls: Arc::new(Mutex::new(read_sysctls())),
        args,
        json: args
            .json
            .then(|| std::io::BufWriter::new(std::io::stdout())),
    };
    // The sockets that exist already, in every namespace, seed the model.
    let (seed, info) = snapshot_events(SnapshotScope::All, &args.filters.netns);
    for ev in seed {
        agent.handle(ev);
    }
    agent
        .correlator
        .follow_timewait(info.as_ref().map_or(&[][..], |i| &i.netns));
    let (page_tx, page_rx) = watch::channel(agent.render());
    let server = Server::spawn(listener, page_rx)?;
    let sysctl_stop = Arc::new(AtomicBool::new(false));
    let sysctl_thread = spawn_sysctls(agent.sysctls.clone(), sysctl_stop.clone());
    eprintln!(
        "twmon: serving metrics on http://{addr}/metrics ({})",
        live.describe()
    );
    for note in &live.mode.notes {
        eprintln!("twmon: {note}");
    }

    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    let mut tick = tokio::time::interval(RENDER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop, if !stopping => {
                // Let the reader hand over what the kernel still holds.
                live.request_stop();
                stopping = true;
            }
            // Before the events: a flood must not starve the scrape page.
            _ = tick.tick() => {
                agent.tick();
                page_tx.send_replace(agent.render());
            }
            ev = live.recv() => {
                let Some(ev) = ev else { break };
                agent.handle(ev);
            }
        }
    }
    if let Some(out) = &mut agent.json {
        let _ = out.flush();
    }
    server.stop();
    sysctl_stop.store(true, Ordering::Relaxed);
    let _ = sysctl_thread.join();
    // Joining the reader drops the probe: every program is detached.
    live.finish();
    eprintln!("twmon: stopped");
    Ok(0)
}

/// The event loop's state.
struct Agent<'a> {
    metrics: Metrics,
    correlator: Correlator<Kernel>,
    containers: Containers,
    sysctls: Arc<Mutex<Sysctls>>,
    args: &'a ServeArgs,
    /// stdout for --json (None once it is gone).
    json: Option<std::io::BufWriter<std::io::Stdout>>,
}

impl Agent<'_> {
    fn handle(&mut self, ev: Event) {
        let out = self.correlator.process(ev);
        self.pass_on(out);
    }

    /// The correlator's own look at the kernel between events.
    fn tick(&mut self) {
        let out = self.correlator.tick();
        self.pass_on(out);
    }

    fn pass_on(&mut self, out: Vec<Event>) {
        for e in out {
            if !self.args.filters.keep(&e) {
                continue;
            }
            self.metrics.count(&e);
            if matches!(e.kind, Kind::BindFailed(_)) {
                self.print(&e);
            }
        }
    }

    fn print(&mut self, e: &Event) {
        let Some(out) = &mut self.json else { return };
        if writeln!(out, "{}", json_line(e))
            .and_then(|_| out.flush())
            .is_err()
        {
            // The log shipper went away; the metrics go on.
            eprintln!("twmon: stdout is closed; no more JSON lines, metrics go on");
            self.json = None;
        }
    }

    /// Set the model's gauges and render everything.
    fn render(&mut self) -> Bytes {
        let sysctls = self.sysctls.lock().map(|s| s.clone()).unwrap_or_default();
        let view = metrics::model_view(
            &self.correlator.model,
            &sysctls,
            &self.args.filters,
            self.metrics.failure_ports(),
            &mut self.containers,
        );
        self.metrics.set_model(&view, &sysctls);
        Bytes::from(self.metrics.render())
    }
}

// ---------------------------------------------------------------------------
// Sysctls, read on a thread of their own (entering namespaces takes time).

fn read_port_range() -> Option<(u16, u16)> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| crate::snapshot::parse_port_range(&s))
}

fn read_max_tw() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The port range of every namespace a process is in (at most
/// MAX_SYSCTL_NETNS), and tcp_max_tw_buckets of pid 1's namespace.
fn read_sysctls() -> Sysctls {
    let own = own_netns();
    let init = std::fs::metadata("/proc/1/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32);
    let mut port_range = HashMap::new();
    let mut max_tw_buckets = None;
    for (ns, path) in all_netns().into_iter().take(MAX_SYSCTL_NETNS) {
        let (range, max_tw) = if Some(ns) == own {
            (read_port_range(), read_max_tw())
        } else {
            correlate::in_netns(&path, || (read_port_range(), read_max_tw())).unwrap_or_default()
        };
        if let Some(r) = range {
            port_range.insert(ns, r);
        }
        if Some(ns) == init {
            max_tw_buckets = max_tw;
        }
    }
    if max_tw_buckets.is_none() && init.is_none() {
        // No view of pid 1 (a PID namespace): our own namespace's.
        max_tw_buckets = read_max_tw();
    }
    Sysctls {
        port_range,
        max_tw_buckets,
    }
}

fn spawn_sysctls(out: Arc<Mutex<Sysctls>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while waited < SYSCTLS_EVERY {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(step);
            waited += step;
        }
        let s = read_sysctls();
        if let Ok(mut g) = out.lock() {
            *g = s;
        }
    })
}

// ---------------------------------------------------------------------------
// The HTTP side: its own thread and runtime, bounded in connections, time
// and request size; it only reads the latest rendered page.

pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serve `page` on `listener` until [`Server::stop`].
    pub fn spawn(
        listener: std::net::TcpListener,
        page: watch::Receiver<Bytes>,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("twmon-http".into())
            .spawn(move || {
                rt.block_on(accept_loop(listener, page, stop_rx));
                // Dropping the runtime ends the connections still open.
            })?;
        Ok(Server {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    page: watch::Receiver<Bytes>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: the metrics server cannot start: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of descriptors, or the peer gave up: breathe.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                // Full: close it now rather than queue behind a slow peer.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let page = page.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = service_fn(move |req| {
                        let resp = respond(&req, &page);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_buf_size(MAX_REQUEST)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                });
            }
        }
    }
}

fn respond(req: &Request<Incoming>, page: &watch::Receiver<Bytes>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            reply(StatusCode::OK, OPENMETRICS, page.borrow().clone())
        }
        (&Method::GET | &Method::HEAD, "/") => reply(
            StatusCode::OK,
            text,
            Bytes::from_static(b"twmon serve: the metrics are at /metrics\n"),
        ),
        (_, "/metrics" | "/") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            Bytes::from_static(b"GET only\n"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            Bytes::from_static(b"not found; the metrics are at /metrics\n"),
        ),
    }
}
