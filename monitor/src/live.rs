//! A live source of events: the probe loaded and attached, its rings read on
//! a thread of their own into a channel. `watch`, `record` and the dashboard
//! all start here; a trace reader is the other kind of source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cli::ModeArg;
use crate::event::Event;
use crate::probe::{ModeInfo, Probe, ProbeError};

pub struct Live {
    pub events: mpsc::Receiver<Event>,
    pub mode: ModeInfo,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<Probe>>,
}

impl Live {
    /// Load and attach the programs; events start flowing at once.
    pub fn start(mode: ModeArg) -> Result<Live, ProbeError> {
        let probe = Probe::load(mode)?;
        let mode = probe.mode.clone();
        let (tx, events) = mpsc::channel(65536);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = probe.spawn_reader(tx, stop.clone());
        Ok(Live {
            events,
            mode,
            stop,
            reader: Some(reader),
        })
    }

    /// "tracepoint mode: tp_btf/sys_exit, ..." for status lines.
    pub fn describe(&self) -> String {
        format!("{} mode: {}", self.mode.mode, self.mode.hooks.join(", "))
    }

    /// Ask the reader to stop; it hands over what the kernel still holds and
    /// closes the channel (keep receiving until `None`).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Wait for the reader and detach every program.
    pub fn finish(mut self) {
        self.request_stop();
        // Unblock a reader waiting on a full channel.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(r) = self.reader.take() {
            drop(r.join());
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.events.close();
        if let Some(r) = self.reader.take() {
            drop(r.join());
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM, or after `duration` seconds.
pub async fn shutdown_signal(duration: Option<f64>) {
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => Some(s),
        Err(_) => None,
    };
    let term = async {
        match sigterm.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let deadline = async {
        match duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = deadline => {}
    }
}
