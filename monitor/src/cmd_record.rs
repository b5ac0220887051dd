//! `twmon record -o FILE`: the live events, after the correlator, into a
//! trace file until Ctrl-C, SIGTERM or --duration.
//!
//! Order at start: the probe is attached first (events start queueing),
//! then the sockets that already exist are listed (sock_diag) and written as
//! `socket` events, then the queued events follow. A socket that changes in
//! between shows up in both, in the right order for the model.

use std::time::Duration;

use crate::cli::RecordArgs;
use crate::correlate::{Correlator, Kernel};
use crate::event::{Event, Kind};
use crate::live::{shutdown_signal, Live};
use crate::trace::{parse_size, RecordOptions, Recording, WriteError, WriterOptions, Written};

/// A failure whose evidence takes longer than this is logged.
const SLOW_EVIDENCE: Duration = Duration::from_millis(300);

/// The recorder's readiness line on stderr (tests wait for it).
pub const READY_PREFIX: &str = "twmon: recording to ";

pub fn run(args: &RecordArgs) -> anyhow::Result<i32> {
    let max_size = match args.max_size.as_deref().map(parse_size) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("twmon: --max-size {e}");
            return Ok(2);
        }
    };
    let opts = RecordOptions {
        path: args.output.clone(),
        writer: WriterOptions {
            compress: WriterOptions::compress_for(&args.output, args.compress),
            level: args.level,
            max_size,
            overwrite: args.force,
        },
        filters: args.filters.clone(),
        snapshot: args.snapshot,
    };
    if let Some(m) = max_size {
        if m < crate::trace::writer::MIN_MAX_SIZE {
            eprintln!(
                "twmon: --max-size {m} is too small (at least {} bytes)",
                crate::trace::writer::MIN_MAX_SIZE
            );
            return Ok(2);
        }
    }
    if !args.force && args.output.exists() {
        eprintln!(
            "twmon: {}",
            WriteError::Exists {
                path: args.output.clone()
            }
        );
        return Ok(2);
    }
    let live = match Live::start(args.probe.mode) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    let mut correlator = Correlator::new(Kernel::new());
    let rec = match Recording::start(&opts, Some(live.mode.clone()), Some(&mut correlator.model)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twmon: {e}");
            live.finish();
            return Ok(e.exit_code());
        }
    };
    correlator.follow_timewait(rec.header().snapshot.as_ref().map_or(&[][..], |s| &s.netns));
    let mut ready = vec![format!(
        "{READY_PREFIX}{} ({}; {} sockets at start)",
        rec.path().display(),
        live.describe(),
        rec.header().snapshot.as_ref().map_or(0, |s| s.sockets)
    )];
    ready.extend(live.mode.notes.iter().map(|n| format!("twmon: {n}")));
    if let Some(s) = &rec.header().snapshot {
        ready.extend(
            s.notes
                .iter()
                .map(|n| format!("twmon: starting snapshot: {n}")),
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(record_loop(
        live,
        correlator,
        rec,
        args.duration,
        args.filters.netns.clone(),
        ready,
    ))
}

async fn record_loop(
    mut live: Live,
    mut correlator: Correlator<Kernel>,
    mut rec: Recording,
    duration: Option<f64>,
    netns: Vec<u32>,
    ready: Vec<String>,
) -> anyhow::Result<i32> {
    let stop = shutdown_signal(duration);
    tokio::pin!(stop);
    let mut stopping = false;
    // Poll the stop future once so that the Ctrl-C and SIGTERM handlers are
    // in place before anyone is told that the recording runs.
    tokio::select! {
        biased;
        _ = &mut stop => {
            live.request_stop();
            stopping = true;
        }
        _ = std::future::ready(()) => {}
    }
    for line in ready {
        eprintln!("{line}");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed: Option<WriteError> = None;
    let mut outs = Vec::new();
    'run: loop {
        tokio::select! {
            biased;
            _ = &mut stop, if !stopping => {
                // Let the reader hand over what the kernel still holds.
                live.request_stop();
                stopping = true;
            }
            _ = tick.tick() => {
                for out in correlator.tick() {
                    if let Err(e) = rec.record(&out, &correlator.model) {
                        failed = Some(e);
                        break 'run;
                    }
                }
                if let Err(e) = rec.tick() {
                    failed = Some(e);
                    break 'run;
                }
            }
            ev = live.recv() => {
                let Some(ev) = ev else { break };
                for ev in live.burst(ev) {
                    if let Err(e) = handle(ev, &netns, &mut correlator, &mut rec, &mut outs) {
                        failed = Some(e);
                        break 'run;
                    }
                }
                if let Err(e) = rec.tick() {
                    failed = Some(e);
                    break 'run;
                }
            }
        }
    }
    if let Some(e) = failed {
        let written = rec.written().clone();
        drop(rec);
        live.finish();
        eprintln!("twmon: {e}; {}", kept(&written));
        return Ok(e.exit_code());
    }
    let lost = rec.lost;
    let result = rec.finish();
    // Joining the reader drops the probe: every program is detached.
    live.finish();
    match result {
        Ok(w) => {
            eprintln!(
                "twmon: recorded {} events ({} bytes) to {}; {}",
                w.events,
                w.bytes,
                parts(&w),
                match lost {
                    0 => "nothing lost".to_string(),
                    n => format!(
                        "{n} more were lost before they reached twmon (`twmon report` says where)"
                    ),
                }
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("twmon: {e}");
            Ok(e.exit_code())
        }
    }
}

/// One event through the correlator into the trace.
fn handle(
    ev: Event,
    netns: &[u32],
    correlator: &mut Correlator<Kernel>,
    rec: &mut Recording,
    outs: &mut Vec<Event>,
) -> Result<(), WriteError> {
    // Other namespaces cannot change what is explained in the recorded ones
    // (the model is per namespace): drop them before the correlator, so a
    // flood elsewhere does not hold up this recording. (--port/--pid/--comm
    // apply after it: other processes' sockets are evidence.)
    if !netns.is_empty() && !netns.contains(&ev.common.netns) && !matches!(ev.kind, Kind::Lost(_)) {
        return Ok(());
    }
    let failure = matches!(ev.kind, Kind::BindFailed(_));
    if failure {
        // The evidence for a failure (a sock_diag snapshot) may take a
        // moment: what came before it goes to disk first.
        rec.flush()?;
    }
    let started = failure.then(std::time::Instant::now);
    correlator.process_into(ev, outs);
    if let Some(took) = started.map(|t| t.elapsed()).filter(|t| *t > SLOW_EVIDENCE) {
        log::warn!("the evidence for a failed bind took {took:?}");
        if std::env::var_os("TWMON_DEBUG_TIMING").is_some() {
            eprintln!("twmon: the evidence for a failed bind took {took:?}");
        }
    }
    for out in outs.drain(..) {
        rec.record(&out, &correlator.model)?;
    }
    Ok(())
}

fn parts(w: &Written) -> String {
    let names: Vec<String> = w.parts.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// "the 1234 events written before it are in FILE and stay readable".
fn kept(w: &Written) -> String {
    format!(
        "the {} events written before it are in {} and stay readable",
        w.events,
        parts(w)
    )
}
