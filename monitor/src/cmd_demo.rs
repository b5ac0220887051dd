//! `twmon demo`: the contract's field scenarios played for real, one after
//! the other, in a private network namespace, while the dashboard (filtered
//! to that namespace) shows them live with a caption for each. `--headless`
//! prints the captions, steps and events as lines instead.
//!
//! Pacing: TWMON_DEMO_PACE scales the pauses (1 by default with the
//! dashboard, 0 headless; 0 plays as fast as the scenarios go).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;

use crate::cli::{DemoArgs, ModeArg};
use crate::cmd_live::{dashboard, hooks_label, on_a_terminal, report_stats, LiveSource};
use crate::correlate::{Correlator, Kernel};
use crate::event::{Event, Kind};
use crate::live::Live;
use crate::output::human_line;
use crate::scenario::{self, Netns, Options, Recorder};
use crate::ui::app::App;
use crate::ui::run::RunOptions;
use crate::ui::source::{Banner, EventSource, Poll, SourceStatus};

/// What the scenario player tells the dashboard.
#[derive(Clone, Debug)]
pub enum DemoMsg {
    /// Scenario `n` of `total` starts.
    Scenario {
        n: usize,
        total: usize,
        name: String,
        caption: String,
    },
    Step(String),
    /// Scenario `n` ended: Ok(failures it expected twmon to report), or why
    /// it could not play (`skipped`: the kernel lacks what it needs).
    Played {
        n: usize,
        result: Result<usize, String>,
        skipped: bool,
    },
    Done,
}

/// How long the player pauses.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// After a caption, before the scenario plays.
    pub caption: Duration,
    /// After each step.
    pub step: Duration,
    /// After a scenario.
    pub after: Duration,
}

impl Pace {
    pub fn scaled(f: f64) -> Pace {
        let f = f.max(0.0);
        Pace {
            caption: Duration::from_secs_f64(2.5 * f),
            step: Duration::from_secs_f64(0.45 * f),
            after: Duration::from_secs_f64(1.5 * f),
        }
    }
}

fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Play every scenario in `ns`, telling `tx` as it goes. Stops early (at
/// the end of the current scenario, without pauses) when `stop` is set.
pub fn play(ns: Arc<Netns>, tx: mpsc::Sender<DemoMsg>, stop: Arc<AtomicBool>, pace: Pace) {
    let all = scenario::all();
    let total = all.len();
    for (i, sc) in all.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = i + 1;
        let _ = tx.send(DemoMsg::Scenario {
            n,
            total,
            name: sc.name.to_string(),
            caption: sc.caption.split_whitespace().collect::<Vec<_>>().join(" "),
        });
        pause(pace.caption, &stop);
        let (tx2, stop2) = (tx.clone(), stop.clone());
        let rec = Recorder::new(&ns, Options::default()).on_step(move |step| {
            let _ = tx2.send(DemoMsg::Step(step.describe()));
            pause(pace.step, &stop2);
        });
        let (result, skipped) = match sc.run(&ns, rec) {
            Ok(o) => (Ok(o.failures().count()), false),
            Err(e) => (
                Err(e.error.to_string()),
                e.error.kind() == std::io::ErrorKind::Unsupported,
            ),
        };
        let _ = tx.send(DemoMsg::Played { n, result, skipped });
        pause(pace.after, &stop);
    }
    let _ = tx.send(DemoMsg::Done);
}

/// The demo as a source: live events plus the player's captions.
pub struct DemoSource {
    pub inner: LiveSource,
    rx: mpsc::Receiver<DemoMsg>,
    banner: Banner,
    netns: u32,
    total: usize,
    played: usize,
    problems: Vec<String>,
    pub done: bool,
}

impl DemoSource {
    pub fn new(inner: LiveSource, rx: mpsc::Receiver<DemoMsg>, netns: u32) -> DemoSource {
        DemoSource {
            inner,
            rx,
            banner: Banner {
                title: "twmon demo".into(),
                caption: format!(
                    "the field scenarios, played for real in a private network namespace (netns {netns}), start in a moment."
                ),
                step: None,
            },
            netns,
            total: 0,
            played: 0,
            problems: Vec::new(),
            done: false,
        }
    }

    /// Take in what the player said.
    pub fn on_msg(&mut self, m: DemoMsg) {
        match m {
            DemoMsg::Scenario {
                n,
                total,
                name,
                caption,
            } => {
                self.total = total;
                self.banner = Banner {
                    title: format!("Scenario {n}/{total}: {name}"),
                    caption,
                    step: None,
                };
            }
            DemoMsg::Step(s) => self.banner.step = Some(s),
            DemoMsg::Played { n, result, skipped } => {
                self.played += 1;
                if let Err(e) = result {
                    let what = if skipped { "skipped" } else { "failed" };
                    self.problems.push(format!("scenario {n} {what} ({e})"));
                    self.banner.step = Some(format!("scenario {n} {what}: {e}"));
                }
            }
            DemoMsg::Done => {
                self.done = true;
                let extra = if self.problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.problems.join("; "))
                };
                self.banner = Banner {
                    title: "Demo over".into(),
                    caption: format!(
                        "{} of {} scenarios played in netns {}{extra}. Pick a failure with ↑↓ (Enter: detail) to see who held the port and the fix; q quits. Most scenario programs are threads of this twmon (pid {}), so a socket one of them holds names twmon as owner.",
                        self.played - self.problems.len(),
                        self.total,
                        self.netns,
                        std::process::id()
                    ),
                    step: None,
                };
            }
        }
    }
}

impl EventSource for DemoSource {
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, wait: Duration) -> Poll {
        while let Ok(m) = self.rx.try_recv() {
            self.on_msg(m);
        }
        self.inner.poll(out, max, wait)
    }
    fn clock_ns(&self) -> Option<u64> {
        self.inner.clock_ns()
    }
    fn status(&self) -> SourceStatus {
        SourceStatus {
            mode: "demo".into(),
            ..self.inner.status()
        }
    }
    fn toggle_recording(&mut self) -> Result<String, String> {
        self.inner.toggle_recording()
    }
    fn banner(&self) -> Option<Banner> {
        Some(self.banner.clone())
    }
}

fn pace_factor(default: f64) -> f64 {
    std::env::var("TWMON_DEMO_PACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    if !args.headless && !on_a_terminal() {
        eprintln!("twmon demo: the dashboard needs a terminal; `twmon demo --headless` prints lines instead");
        return Ok(2);
    }
    let ns = match Netns::new() {
        Ok(ns) => Arc::new(ns),
        Err(e) => {
            eprintln!(
                "twmon demo: cannot create a private network namespace ({e}): run it as root (CAP_SYS_ADMIN and CAP_BPF)"
            );
            return Ok(3);
        }
    };
    let live = match Live::start(ModeArg::Auto) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    let netns = ns.inode();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let pace = Pace::scaled(pace_factor(if args.headless { 0.0 } else { 1.0 }));
    let player = {
        let (ns, stop) = (ns.clone(), stop.clone());
        std::thread::Builder::new()
            .name("twmon-demo".into())
            .spawn(move || play(ns, tx, stop, pace))?
    };
    let code = if args.headless {
        eprintln!("twmon: demo in netns {netns} ({})", hooks_label(&live.mode));
        headless(live, rx, netns)?
    } else {
        let mut source = DemoSource::new(LiveSource::new(live, "demo"), rx, netns);
        source.inner.record_filters.netns = vec![netns];
        let mut app = App::new();
        app.scope = vec![netns];
        let stats = dashboard(&mut source, app, &RunOptions::default());
        stop.store(true, Ordering::Relaxed);
        if let Some(m) = source.inner.finish() {
            eprintln!("twmon: {m}");
        }
        drop(source);
        report_stats(&stats?);
        0
    };
    stop.store(true, Ordering::Relaxed);
    if !player.is_finished() {
        eprintln!("twmon: waiting for the scenario that is playing to clean up");
    }
    let _ = player.join();
    Ok(code)
}

/// Captions, steps and the namespace's events as lines, until the player
/// is done and late events had time to arrive. 0: every scenario played
/// (or was skipped for want of kernel support), 1 otherwise.
fn headless(mut live: Live, rx: mpsc::Receiver<DemoMsg>, netns: u32) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut correlator = Correlator::new(Kernel::new());
    let mut done_at: Option<Instant> = None;
    let mut failed = 0;
    let emit = |out: &mut std::io::BufWriter<_>, e: &Event| -> std::io::Result<()> {
        let keep = match &e.kind {
            Kind::Lost(_) => true,
            Kind::Socket(_) | Kind::Bound(_) => false,
            _ => e.common.netns == netns,
        };
        if keep {
            writeln!(out, "{}", human_line(e))?;
        }
        Ok(())
    };
    loop {
        while let Ok(m) = rx.try_recv() {
            match m {
                DemoMsg::Scenario {
                    n,
                    total,
                    name,
                    caption,
                } => {
                    writeln!(out, "== Scenario {n}/{total}: {name}")?;
                    writeln!(out, "   {caption}")?;
                }
                DemoMsg::Step(s) => writeln!(out, "   > {s}")?,
                DemoMsg::Played { n, result, skipped } => match result {
                    Ok(k) => writeln!(
                        out,
                        "== scenario {n} played ({k} failure{} to explain)",
                        if k == 1 { "" } else { "s" }
                    )?,
                    Err(e) if skipped => writeln!(out, "== scenario {n} skipped: {e}")?,
                    Err(e) => {
                        failed += 1;
                        writeln!(out, "!! scenario {n} failed: {e}")?;
                    }
                },
                DemoMsg::Done => done_at = Some(Instant::now()),
            }
        }
        match live.try_recv() {
            Ok(ev) => {
                for e in correlator.process(ev) {
                    emit(&mut out, &e)?;
                }
            }
            Err(TryRecvError::Empty) => {
                for e in correlator.tick() {
                    emit(&mut out, &e)?;
                }
                out.flush()?;
                if done_at.is_some_and(|t| t.elapsed() > Duration::from_millis(700)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryRecvError::Disconnected) => break,
        }
    }
    live.request_stop();
    while let Some(ev) = live.blocking_recv() {
        for e in correlator.process(ev) {
            emit(&mut out, &e)?;
        }
    }
    writeln!(
        out,
        "== demo over: {} bind failures seen in netns {netns}",
        correlator
            .model
            .failures
            .iter()
            .filter(|f| f.common.netns == netns)
            .count()
    )?;
    out.flush()?;
    live.finish();
    Ok(if failed > 0 { 1 } else { 0 })
}
