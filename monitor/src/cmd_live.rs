//! `twmon live` (and `twmon` alone on a terminal): the dashboard on live
//! kernel events.
//!
//! The source is the probe ([`Live`]) through a `Correlator<Kernel>`: the
//! dashboard gets what the correlator emits (snapshot evidence, then each
//! event, failures with holders and diagnosis), exactly what a recording
//! writes, so a replay of that recording shows the same.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;

use crate::census::{Census, CensusUpdate};
use crate::cli::{Filters, LiveArgs, ModeArg};
use crate::correlate::{Correlator, Kernel};
use crate::event::Event;
use crate::live::Live;
use crate::probe::{ModeInfo, Streams};
use crate::ui::app::{App, Dashboard};
use crate::ui::run::{run as run_ui, CrosstermInput, RunOptions, RunStats};
use crate::ui::source::{EventSource, Poll, Recording, SourceStatus};
use crate::ui::terminal::TerminalGuard;

/// "tracepoint: sys_exit_{bind,listen,connect}, inet_sock_set_state, ..."
/// (hook names without their program type; neighbours that share words
/// are folded).
pub fn hooks_label(mode: &ModeInfo) -> String {
    let hooks: Vec<&str> = mode
        .hooks
        .iter()
        .map(|h| h.rsplit('/').next().unwrap_or(h))
        .collect();
    let first_word = |h: &str| h.split_once('_').map(|(w, _)| w.to_string());
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < hooks.len() {
        let word = first_word(hooks[i]);
        let mut j = i + 1;
        while word.is_some() && j < hooks.len() && first_word(hooks[j]) == word {
            j += 1;
        }
        if j - i > 1 {
            // The words all of them start with: timer_start, timer_cancel
            // -> "timer_"; sys_exit_bind, sys_exit_listen -> "sys_exit_".
            let mut prefix = hooks[i];
            for h in &hooks[i + 1..j] {
                while !h.starts_with(prefix) || !prefix.ends_with('_') {
                    prefix = &prefix[..prefix.len() - 1];
                }
            }
            let rest: Vec<&str> = hooks[i..j].iter().map(|h| &h[prefix.len()..]).collect();
            out.push(format!("{prefix}{{{}}}", rest.join(",")));
        } else {
            out.push(hooks[i].to_string());
        }
        i = j;
    }
    format!("{}: {}", mode.mode, out.join(", "))
}

/// Live kernel events through the correlator, optionally recorded.
pub struct LiveSource {
    pub live: Live,
    pub correlator: Correlator<Kernel>,
    /// Correlated events not handed over yet.
    pending: VecDeque<Event>,
    ended: bool,
    /// "live" or "demo".
    pub label: String,
    /// Which events a recording keeps (the command line's filters).
    pub record_filters: Filters,
    recording: Option<rec::Rec>,
    /// Why recording stopped by itself (a write error).
    record_error: Option<String>,
    /// Light mode: the sockets come from sock_diag listings, the kernel
    /// streams bind results only.
    census: Option<Census>,
}

impl LiveSource {
    pub fn new(live: Live, label: &str) -> LiveSource {
        let mut src = LiveSource {
            live,
            correlator: Correlator::new(Kernel::new()),
            pending: VecDeque::new(),
            ended: false,
            label: label.to_string(),
            record_filters: Filters::default(),
            recording: None,
            record_error: None,
            census: None,
        };
        // The sockets that exist already, in every namespace: the views
        // know the ports before the first event.
        let (seed, info) = crate::trace::recording::snapshot_events(
            crate::trace::recording::SnapshotScope::All,
            &[],
        );
        for ev in seed {
            src.step(ev);
        }
        src.correlator
            .follow_timewait(info.as_ref().map_or(&[][..], |i| &i.netns));
        src
    }

    /// The light mode's source: `live` streams bind results only (see
    /// [`crate::probe::Streams::BindsOnly`]); the sockets come from a census
    /// thread, its first listing right away. The correlator's model holds
    /// only what failures brought as evidence.
    pub fn light(live: Live, label: &str) -> LiveSource {
        // No kernel program tells the flags of a timewait sock here: the
        // evidence asks the kernel with probe binds (which every twmon's
        // reader drops, snapshot/flags.rs).
        let mut kernel = Kernel::new();
        kernel.probe_timewait = true;
        LiveSource {
            live,
            correlator: Correlator::new(kernel),
            pending: VecDeque::new(),
            ended: false,
            label: label.to_string(),
            record_filters: Filters::default(),
            recording: None,
            record_error: None,
            census: Some(Census::start()),
        }
    }

    /// Start recording to `path`.
    pub fn start_recording(&mut self, path: PathBuf) -> Result<String, String> {
        let r = rec::Rec::start(
            path,
            &self.record_filters,
            &self.live.mode,
            &mut self.correlator.model,
        )?;
        let msg = format!("recording to {}", r.path());
        self.recording = Some(r);
        self.record_error = None;
        Ok(msg)
    }

    /// Stop recording; what was written.
    pub fn stop_recording(&mut self) -> Option<Result<String, String>> {
        Some(self.recording.take()?.finish())
    }

    /// Stop the probe, pass what the kernel still held through the
    /// correlator (into the recording), and close the recording; what to
    /// tell the user about it.
    pub fn finish(&mut self) -> Option<String> {
        self.live.request_stop();
        let end = std::time::Instant::now() + Duration::from_secs(3);
        let mut sink = Vec::new();
        while std::time::Instant::now() < end {
            sink.clear();
            match self.poll(&mut sink, 4096, Duration::ZERO) {
                Poll::Ended => break,
                Poll::Idle => std::thread::sleep(Duration::from_millis(5)),
                Poll::Ready => {}
            }
        }
        self.stop_recording().map(|r| match r {
            Ok(m) | Err(m) => m,
        })
    }

    /// One kernel event through the correlator (and into the recording).
    fn step(&mut self, ev: Event) {
        let out = self.correlator.process(ev);
        self.pass_on(out);
    }

    /// The correlator's events into the recording and on to the views.
    fn pass_on(&mut self, out: Vec<Event>) {
        if let Some(rec) = &mut self.recording {
            for e in &out {
                if let Err(err) = rec.record(e, &self.correlator.model) {
                    self.record_error = Some(err);
                    self.recording = None;
                    break;
                }
            }
        }
        self.pending.extend(out);
    }
}

impl EventSource for LiveSource {
    fn poll(&mut self, out: &mut Vec<Event>, max: usize, _wait: Duration) -> Poll {
        let gone = self.correlator.tick();
        if !gone.is_empty() {
            self.pass_on(gone);
        }
        while out.len() < max {
            if let Some(e) = self.pending.pop_front() {
                out.push(e);
                continue;
            }
            match self.live.try_recv() {
                Ok(ev) => self.step(ev),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.ended = true;
                    break;
                }
            }
        }
        if let Some(rec) = &mut self.recording {
            if let Err(err) = rec.tick() {
                self.record_error = Some(err);
                self.recording = None;
            }
        }
        if !out.is_empty() {
            Poll::Ready
        } else if self.ended {
            Poll::Ended
        } else {
            Poll::Idle
        }
    }

    fn clock_ns(&self) -> Option<u64> {
        // The clock the kernel stamps events with.
        Some(crate::scenario::boottime_ns())
    }

    fn status(&self) -> SourceStatus {
        let mut detail = hooks_label(&self.live.mode);
        if let Some(c) = &self.census {
            // Says what the views lack and how to get it.
            detail.push_str(&format!(
                " · light: sockets listed every {} s, no transitions (--full)",
                c.every.as_secs().max(1)
            ));
        }
        SourceStatus {
            mode: self.label.clone(),
            detail,
            recording: match (&self.recording, &self.record_error) {
                (Some(r), _) => Recording::On(r.path()),
                (None, Some(e)) => Recording::Unavailable(e.clone()),
                (None, None) => Recording::Off,
            },
            speed: None,
            position: None,
            ended: self.ended,
            light: self.census.is_some(),
        }
    }

    fn census(&mut self) -> Option<CensusUpdate> {
        self.census.as_mut()?.try_recv()
    }

    fn toggle_recording(&mut self) -> Result<String, String> {
        if let Some(r) = self.stop_recording() {
            return r;
        }
        if self.census.is_some() {
            return Err("light mode streams no transitions to record: restart with --full, or twmon live --record FILE".into());
        }
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .unwrap_or_else(|_| "now".into());
        self.start_recording(PathBuf::from(format!("twmon-{stamp}.trace.zst")))
    }
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.stop_recording() {
            log::warn!("{e}");
        }
    }
}

/// Recording for the dashboard (`r`, `--record`), through the trace
/// module's recorder.
mod rec {
    use std::path::PathBuf;

    use crate::cli::Filters;
    use crate::event::Event;
    use crate::model::Model;
    use crate::probe::ModeInfo;
    use crate::trace::{RecordOptions, Recording};

    pub struct Rec(Recording);

    impl Rec {
        pub fn start(
            path: PathBuf,
            filters: &Filters,
            mode: &ModeInfo,
            model: &mut Model,
        ) -> Result<Rec, String> {
            let mut opts = RecordOptions::new(path);
            opts.filters = filters.clone();
            Recording::start(&opts, Some(mode.clone()), Some(model))
                .map(Rec)
                .map_err(|e| format!("cannot record: {e}"))
        }

        pub fn record(&mut self, ev: &Event, model: &Model) -> Result<(), String> {
            self.0
                .record(ev, model)
                .map_err(|e| format!("recording stopped: {e}"))
        }

        pub fn tick(&mut self) -> Result<(), String> {
            self.0.tick().map_err(|e| format!("recording stopped: {e}"))
        }

        pub fn path(&self) -> String {
            self.0.path().display().to_string()
        }

        pub fn finish(self) -> Result<String, String> {
            match self.0.finish() {
                Ok(w) => Ok(format!(
                    "recording stopped: {} events in {}",
                    w.events,
                    w.parts
                        .last()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )),
                Err(e) => Err(format!("recording failed: {e}")),
            }
        }
    }
}

/// Is stdin and stdout a terminal?
pub fn on_a_terminal() -> bool {
    // SAFETY: isatty only looks at the descriptors.
    unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 }
}

/// Open the dashboard over `source` until the user quits; the terminal is
/// restored before this returns (also on error and on panic).
pub fn dashboard<S: EventSource + ?Sized>(
    source: &mut S,
    app: App,
    opts: &RunOptions,
) -> anyhow::Result<RunStats> {
    let mut dash = Dashboard::new(app);
    let (guard, mut term) = TerminalGuard::enter()?;
    let r = run_ui(&mut term, source, &mut dash, &mut CrosstermInput, opts);
    drop(guard);
    Ok(r?)
}

/// Print what the loop measured when TWMON_UI_STATS is set.
pub fn report_stats(stats: &RunStats) {
    if std::env::var_os("TWMON_UI_STATS").is_some() {
        eprintln!(
            "twmon: {} frames in {:.1} s ({:.1} fps), {} events, longest frame {:?}, {} keys: key to frame mean {:?} max {:?}",
            stats.frames,
            stats.elapsed.as_secs_f64(),
            stats.fps(),
            stats.events,
            stats.max_draw,
            stats.keys,
            stats.mean_key_to_frame(),
            stats.max_key_to_frame
        );
    }
}

/// Does this dashboard stream everything from the kernel? Light (the
/// default) unless asked, or a recording or precise mode's function hooks
/// need the full stream.
pub fn full_stream(args: &LiveArgs) -> bool {
    args.full || args.record.is_some() || args.probe.mode == ModeArg::Precise
}

pub fn run(args: &LiveArgs) -> anyhow::Result<i32> {
    if !args.offscreen && !on_a_terminal() {
        eprintln!("twmon live: the dashboard needs a terminal; for lines use `twmon watch` (or `twmon record -o FILE`)");
        return Ok(2);
    }
    let full = full_stream(args);
    let stream = if full {
        Streams::All
    } else {
        Streams::BindsOnly
    };
    let live = match Live::start_streaming(args.probe.mode, stream) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    let mut source = if full {
        LiveSource::new(live, "live")
    } else {
        LiveSource::light(live, "live")
    };
    source.record_filters = args.filters.clone();
    if let Some(path) = &args.record {
        if let Err(e) = source.start_recording(path.clone()) {
            eprintln!("twmon: {e}");
            source.live.request_stop();
            return Ok(1);
        }
    }
    let mut app = App::new();
    app.scope = args.filters.netns.clone();
    app.cli = Filters {
        netns: Vec::new(),
        ..args.filters.clone()
    };
    let opts = RunOptions {
        duration: args.duration.map(Duration::from_secs_f64),
        ..RunOptions::default()
    };
    let stats = if args.offscreen {
        offscreen(&mut source, app, &opts)
    } else {
        dashboard(&mut source, app, &opts)
    };
    if let Some(msg) = source.finish() {
        eprintln!("twmon: {msg}");
    }
    drop(source); // detaches every program
    let stats = stats?;
    if args.offscreen {
        eprintln!(
            "twmon: dashboard off-screen: {} frames, {} events, lost {}",
            stats.frames, stats.events, stats.lost
        );
    }
    report_stats(&stats);
    Ok(0)
}

/// The dashboard drawn into memory instead of a terminal, every frame as
/// on screen, until SIGINT/SIGTERM or the duration: what it costs a busy
/// host, measured by `cargo xtask bench` without a terminal.
pub fn offscreen<S: EventSource + ?Sized>(
    source: &mut S,
    app: App,
    opts: &RunOptions,
) -> anyhow::Result<RunStats> {
    crate::ui::terminal::catch_signals();
    let mut dash = Dashboard::new(app);
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 48))?;
    eprintln!(
        "twmon: dashboard drawn off-screen ({})",
        source.status().detail
    );
    let mut stats = run_ui(&mut term, source, &mut dash, &mut NoKeys, opts)?;
    stats.lost = dash.lost();
    Ok(stats)
}

/// No keyboard: waits out the time asked.
struct NoKeys;

impl crate::ui::run::Input for NoKeys {
    fn next(&mut self, wait: Duration) -> std::io::Result<Option<crossterm::event::Event>> {
        std::thread::sleep(wait);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::hooks_label;
    use crate::probe::ModeInfo;

    #[test]
    fn hooks_that_share_words_are_folded() {
        let label = |hooks: &[&str]| {
            hooks_label(&ModeInfo {
                mode: "tracepoint".into(),
                hooks: hooks.iter().map(|h| h.to_string()).collect(),
                notes: Vec::new(),
            })
        };
        assert_eq!(
            label(&[
                "tp/sys_exit_bind",
                "tp/sys_exit_listen",
                "tp/sys_exit_connect",
                "tp_btf/inet_sock_set_state",
                "tp_btf/timer_start",
                "tp_btf/timer_expire_entry",
                "tp_btf/timer_cancel",
                "tp_btf/tcp_send_reset",
            ]),
            "tracepoint: sys_exit_{bind,listen,connect}, inet_sock_set_state, \
             timer_{start,expire_entry,cancel}, tcp_send_reset"
        );
        assert_eq!(
            label(&["tp_btf/sys_exit", "kprobe/sys_exit_x", "fexit/inet_bind"]),
            "tracepoint: sys_{exit,exit_x}, inet_bind"
        );
        assert_eq!(label(&["tp_btf/sys_exit"]), "tracepoint: sys_exit");
    }
}
