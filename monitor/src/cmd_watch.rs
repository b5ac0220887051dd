//! `twmon watch`: the live events, one line each, until Ctrl-C, SIGTERM or
//! --duration.

use std::io::Write;

use crate::cli::WatchArgs;
use crate::correlate::{Correlator, Kernel};
use crate::event::{Event, Kind};
use crate::json_line;
use crate::live::{Live, Shutdown};
use crate::output::human_line;
use crate::trace::recording::{snapshot_events, SnapshotScope};

pub fn run(args: &WatchArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(watch(args))
}

async fn watch(args: &WatchArgs) -> anyhow::Result<i32> {
    // Signals are handled from here on: a stop request always drains.
    let mut shutdown = Shutdown::new(args.duration)?;
    let live = match Live::start(args.probe.mode) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("twmon: {e}");
            return Ok(e.exit_code());
        }
    };
    eprintln!("twmon: watching ({})", live.describe());
    for note in &live.mode.notes {
        eprintln!("twmon: {note}");
    }
    watch_loop(live, args, &mut shutdown).await
}

async fn watch_loop(
    mut live: Live,
    args: &WatchArgs,
    shutdown: &mut Shutdown,
) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = Vec::new();
    let mut correlator = Correlator::new(Kernel::new());
    correlator.findings_to_stderr = true;
    // The sockets that exist already, in every namespace, seed the model
    // (printed with -v only, as `socket` lines).
    let started = std::time::Instant::now();
    let (seed, info) = snapshot_events(SnapshotScope::All, &args.filters.netns);
    for ev in seed {
        if !correlator
            .process(ev)
            .iter()
            .all(|e| emit(&mut out, &mut line, e, args))
        {
            return Ok(0);
        }
    }
    correlator.follow_timewait(info.as_ref().map_or(&[][..], |i| &i.netns));
    if let Some(info) = &info {
        // What the model starts from, once it holds it, and what could not
        // be seen: a holder older than twmon is named only if this found it.
        let s = |n: u64| if n == 1 { "" } else { "s" };
        let (socks, nets) = (info.sockets, info.netns.len() as u64);
        eprintln!(
            "twmon: {socks} existing socket{} in {nets} namespace{} known ({} ms after attaching)",
            s(socks),
            s(nets),
            started.elapsed().as_millis()
        );
        for note in &info.notes {
            eprintln!("twmon: {note}");
        }
    }
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    // The correlator's own look at the kernel between events.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outs = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop, if !stopping => {
                // Let the reader hand over what the kernel still holds.
                live.request_stop();
                stopping = true;
            }
            _ = tick.tick() => {
                if !correlator.tick().iter().all(|e| emit(&mut out, &mut line, e, args)) || out.flush().is_err() {
                    break; // stdout is gone
                }
            }
            ev = live.recv() => {
                let Some(ev) = ev else { break };
                let mut gone = false;
                for ev in live.burst(ev) {
                    correlator.process_into(ev, &mut outs);
                    if !outs.drain(..).all(|e| emit(&mut out, &mut line, &e, args)) {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break; // stdout is gone
                }
                // Flush when nothing else is waiting: prompt, yet batched.
                if live.is_empty() && out.flush().is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.flush();
    // Joining the reader drops the probe: every program is detached.
    live.finish();
    Ok(0)
}

/// Returns false when stdout is gone.
/// `line` is scratch space, kept by the caller for its allocation.
fn emit(out: &mut impl Write, line: &mut Vec<u8>, ev: &Event, args: &WatchArgs) -> bool {
    if !args.filters.keep(ev) {
        return true;
    }
    // Snapshot evidence (`socket`) goes to traces; here only with -v.
    if matches!(ev.kind, Kind::Socket(_)) && !args.verbose {
        return true;
    }
    if args.json {
        line.clear();
        json_line::write(line, ev);
        line.push(b'\n');
        out.write_all(line).is_ok()
    } else {
        if matches!(ev.kind, Kind::Bound(_)) && !args.verbose {
            return true;
        }
        writeln!(out, "{}", human_line(ev)).is_ok()
    }
}
