//! `twmon watch`: the live events, one line each, until Ctrl-C, SIGTERM or
//! --duration.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cli::WatchArgs;
use crate::correlate::{Correlator, Kernel};
use crate::event::Kind;
use crate::output::{human_line, json_line};
use crate::probe::Probe;

pub fn run(args: &WatchArgs) -> anyhow::Result<i32> {
    let probe = match Probe::load(args.probe.mode) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    eprintln!(
        "twmon: watching ({} mode: {})",
        probe.mode.mode,
        probe.mode.hooks.join(", ")
    );
    for note in &probe.mode.notes {
        eprintln!("twmon: {note}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(watch_loop(probe, args))
}

async fn watch_loop(probe: Probe, args: &WatchArgs) -> anyhow::Result<i32> {
    let (tx, mut rx) = mpsc::channel(65536);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = probe.spawn_reader(tx, stop.clone());

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut broken_pipe = false;
    let mut correlator = Correlator::new(Kernel::new());
    loop {
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                if !correlator.process(ev).iter().all(|e| emit(&mut out, e, args)) {
                    broken_pipe = true;
                    break;
                }
                // Flush when nothing else is waiting: prompt, yet batched.
                if rx.is_empty() && out.flush().is_err() {
                    broken_pipe = true;
                    break;
                }
            }
        }
    }
    // Stop the reader, then print what it still hands over.
    stop.store(true, Ordering::Relaxed);
    if !broken_pipe {
        while let Some(ev) = rx.recv().await {
            if !correlator
                .process(ev)
                .iter()
                .all(|e| emit(&mut out, e, args))
            {
                break;
            }
        }
        let _ = out.flush();
    }
    drop(rx);
    // Dropping the probe detaches every program.
    let probe = reader
        .join()
        .map_err(|_| anyhow::anyhow!("ring reader panicked"))?;
    drop(probe);
    Ok(0)
}

/// Returns false when stdout is gone.
fn emit(out: &mut impl Write, ev: &crate::event::Event, args: &WatchArgs) -> bool {
    if !args.filters.keep(ev) {
        return true;
    }
    // Snapshot evidence (`socket`) goes to traces; here only with -v.
    if matches!(ev.kind, Kind::Socket(_)) && !args.verbose {
        return true;
    }
    let line = if args.json {
        json_line(ev)
    } else {
        if matches!(ev.kind, Kind::Bound(_)) && !args.verbose {
            return true;
        }
        human_line(ev)
    };
    writeln!(out, "{line}").is_ok()
}
