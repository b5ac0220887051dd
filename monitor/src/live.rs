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
    /// Bind results and lost counts: few, and what the user waits for.
    binds: mpsc::Receiver<Event>,
    /// State transitions and the timewait life: the flood.
    events: mpsc::Receiver<Event>,
    pub mode: ModeInfo,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<Probe>>,
}

impl Live {
    /// Load and attach the programs; events start flowing at once.
    pub fn start(mode: ModeArg) -> Result<Live, ProbeError> {
        let probe = Probe::load(mode)?;
        let mode = probe.mode.clone();
        // Two channels so that a failed bind never waits behind a queue of
        // transitions: under churn the event queue stays full, and one FIFO
        // made a bind result wait for everything queued before it.
        let (tx_binds, binds) = mpsc::channel(4096);
        let (tx_events, events) = mpsc::channel(65536);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = probe.spawn_reader(tx_binds, tx_events, stop.clone());
        Ok(Live {
            binds,
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

    /// The next event, bind results (and lost counts) before transitions
    /// already queued; None once the reader has stopped and all is read.
    /// Events therefore leave here in kernel order within each stream, and
    /// a failed bind may overtake transitions older than it (`ts` tells).
    pub async fn recv(&mut self) -> Option<Event> {
        if let Ok(ev) = self.binds.try_recv() {
            return Some(ev);
        }
        tokio::select! {
            biased;
            Some(ev) = self.binds.recv() => Some(ev),
            Some(ev) = self.events.recv() => Some(ev),
            else => None,
        }
    }

    /// [`Live::recv`] without waiting.
    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        use mpsc::error::TryRecvError::{Disconnected, Empty};
        match self.binds.try_recv() {
            Ok(ev) => Ok(ev),
            Err(binds) => match (binds, self.events.try_recv()) {
                (_, Ok(ev)) => Ok(ev),
                (Disconnected, Err(Disconnected)) => Err(Disconnected),
                _ => Err(Empty),
            },
        }
    }

    /// [`Live::recv`] from a thread outside the runtime.
    pub fn blocking_recv(&mut self) -> Option<Event> {
        use mpsc::error::TryRecvError::{Disconnected, Empty};
        loop {
            match self.try_recv() {
                Ok(ev) => return Some(ev),
                Err(Disconnected) => return None,
                Err(Empty) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Nothing is waiting in either stream.
    pub fn is_empty(&self) -> bool {
        self.binds.is_empty() && self.events.is_empty()
    }

    /// Ask the reader to stop; it hands over what the kernel still holds and
    /// closes the channels (keep receiving until `None`).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Wait for the reader and detach every program (what dropping does;
    /// this names the moment).
    pub fn finish(self) {}

    /// Unblock a reader waiting on a full channel, then wait for it (its
    /// Probe, dropped with it, detaches every program).
    fn close_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.binds.close();
        self.events.close();
        while self.try_recv().is_ok() {}
        if let Some(r) = self.reader.take() {
            drop(r.join());
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Ctrl-C, SIGTERM or a deadline. The signal handlers are installed when
/// this is created (inside a tokio runtime), so create it before telling
/// anyone that twmon is ready: a signal in between would otherwise kill the
/// process before it drains.
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Shutdown {
    pub fn new(duration: Option<f64>) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            deadline: duration
                .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0))),
        })
    }

    /// Resolves at the first signal or at the deadline.
    pub async fn wait(&mut self) {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = deadline => {}
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM, or after `duration` seconds. The handlers
/// are installed at the first poll; prefer [`Shutdown`] where a readiness
/// message precedes it.
pub async fn shutdown_signal(duration: Option<f64>) {
    match Shutdown::new(duration) {
        Ok(mut s) => s.wait().await,
        Err(_) => std::future::pending().await,
    }
}
