//! A live source of events: the probe loaded and attached, its rings read on
//! a thread of their own into a channel. `watch`, `record` and the dashboard
//! all start here; a trace reader is the other kind of source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::batches::{self, BatchReceiver};
use crate::cli::ModeArg;
use crate::event::Event;
use crate::probe::{ModeInfo, Probe, ProbeError, Streams};

pub struct Live {
    /// Bind results and lost counts: few, and what the user waits for.
    binds: mpsc::Receiver<Event>,
    /// State transitions and the timewait life: the flood, in batches.
    events: BatchReceiver,
    order: Order,
    pub mode: ModeInfo,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<Probe>>,
}

/// Hand the memory freed after loading back to the system. Parsing the
/// kernel's BTF (twice: for the field offsets and by aya for the programs)
/// peaks at about 60 MB of heap that is all freed once the programs are
/// loaded, but glibc keeps it in its arenas: measured with massif and
/// /proc, an idle `twmon watch` held 82 MB resident for 23 MB of live heap.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Live {
    /// Load and attach the programs; events start flowing at once.
    pub fn start(mode: ModeArg) -> Result<Live, ProbeError> {
        Live::start_streaming(mode, Streams::All)
    }

    /// [`Live::start`] with only some of the kernel's streams.
    pub fn start_streaming(mode: ModeArg, stream: Streams) -> Result<Live, ProbeError> {
        let probe = Probe::load(mode, stream)?;
        release_freed_memory();
        let mode = probe.mode.clone();
        // Two channels so that a failed bind never waits behind a queue of
        // transitions: under churn the event queue stays full, and one FIFO
        // made a bind result wait for everything queued before it.
        let (tx_binds, binds) = mpsc::channel(4096);
        let (tx_events, events) = batches::channel(65536);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = probe.spawn_reader(tx_binds, tx_events, stop.clone());
        Ok(Live {
            binds,
            events,
            order: Order::default(),
            mode,
            stop,
            reader: Some(reader),
        })
    }

    /// "tracepoint mode: tp_btf/sys_exit, ..." for status lines.
    pub fn describe(&self) -> String {
        format!("{} mode: {}", self.mode.mode, self.mode.hooks.join(", "))
    }

    /// The next event. A bind result goes after the transitions queued
    /// before it that are older than it, when fewer than [`OLDER_FIRST`] are
    /// queued: the model then explains a failure with what happened before
    /// it (a listener that closed just before the failed bind is gone). In a
    /// flood (more queued) it goes first, and the correlator reconciles the
    /// model with the failure's evidence snapshot instead: waiting behind a
    /// full queue for every failure would fall further behind each time.
    /// None once the reader has stopped and everything is read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.order.next(&mut self.binds, &mut self.events) {
                return Some(ev);
            }
            tokio::select! {
                biased;
                Some(b) = self.binds.recv() => self.order.hold(b, self.events.queued()),
                // Nothing is held (next() would have returned it).
                Some(ev) = self.events.recv() => return Some(ev),
                else => return None,
            }
        }
    }

    /// [`Live::recv`] without waiting.
    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        use mpsc::error::TryRecvError::{Disconnected, Empty};
        if let Some(ev) = self.order.next(&mut self.binds, &mut self.events) {
            return Ok(ev);
        }
        if self.binds.is_closed() && self.events.is_closed() && self.is_empty() {
            Err(Disconnected)
        } else {
            Err(Empty)
        }
    }

    /// `first` (from [`Live::recv`]), then what else is waiting, up to
    /// [`BURST`] events in all: what a consumer handles before it goes back
    /// to its `select!`.
    pub fn burst(&mut self, first: Event) -> impl Iterator<Item = Event> + '_ {
        let mut next = Some(first);
        let mut taken = 0;
        std::iter::from_fn(move || {
            let ev = next.take()?;
            taken += 1;
            if taken < BURST {
                next = self.try_recv().ok();
            }
            Some(ev)
        })
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
        self.order.is_empty() && self.binds.is_empty() && self.events.is_empty()
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

/// Events a consumer takes per [`Live::burst`] before it goes back to its
/// `select!`: the select's signal and timer polls cost more than an event
/// under churn.
pub const BURST: usize = 256;

/// A bind result waits for the older transitions queued before it only when
/// fewer than this many are queued (10-20 ms of work for the consumers).
pub const OLDER_FIRST: usize = 1024;

/// The merge of the two streams: a held bind result, and the one event
/// taken from the event stream that turned out to be newer than it.
#[derive(Default)]
struct Order {
    bind: Option<Event>,
    ahead: Option<Event>,
    older_left: usize,
}

/// What [`Order`] takes events from (the two channels; vectors in tests).
trait Stream {
    fn take(&mut self) -> Option<Event>;
    fn queued(&self) -> usize;
}

impl Stream for mpsc::Receiver<Event> {
    fn take(&mut self) -> Option<Event> {
        self.try_recv().ok()
    }
    fn queued(&self) -> usize {
        self.len()
    }
}

impl Stream for BatchReceiver {
    fn take(&mut self) -> Option<Event> {
        self.try_recv()
    }
    fn queued(&self) -> usize {
        BatchReceiver::queued(self)
    }
}

impl Order {
    /// Hold a bind result, with `queued` transitions waiting.
    fn hold(&mut self, bind: Event, queued: usize) {
        debug_assert!(self.bind.is_none());
        self.bind = Some(bind);
        self.older_left = if queued < OLDER_FIRST { queued } else { 0 };
    }

    fn is_empty(&self) -> bool {
        self.bind.is_none() && self.ahead.is_none()
    }

    /// The next event that is ready, without waiting.
    fn next(&mut self, binds: &mut impl Stream, events: &mut impl Stream) -> Option<Event> {
        if self.bind.is_none() {
            if let Some(b) = binds.take() {
                self.hold(b, events.queued() + usize::from(self.ahead.is_some()));
            }
        }
        let Some(bind_ts) = self.bind.as_ref().map(|b| b.common.ts_ns) else {
            return self.ahead.take().or_else(|| events.take());
        };
        if self.older_left > 0 {
            if let Some(ev) = self.ahead.take().or_else(|| events.take()) {
                if ev.common.ts_ns <= bind_ts {
                    self.older_left -= 1;
                    return Some(ev);
                }
                self.ahead = Some(ev);
            }
        }
        self.bind.take()
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::event::{Common, Kind, Lost, Proto};

    impl Stream for VecDeque<Event> {
        fn take(&mut self) -> Option<Event> {
            self.pop_front()
        }
        fn queued(&self) -> usize {
            self.len()
        }
    }

    /// An event stamped `ts`; `count` tells them apart.
    pub(crate) fn ev(ts: u64, count: u64) -> Event {
        Event {
            common: Common {
                ts: String::new(),
                ts_ns: ts,
                netns: 1,
                proto: Proto::Tcp,
                pid: None,
                comm: None,
                container: None,
            },
            kind: Kind::Lost(Lost {
                count,
                stream: None,
            }),
        }
    }

    /// Bind results are told apart by this much added to their time.
    const BIND: u64 = 1_000_000;

    fn order_of(binds: &[u64], events: &[u64]) -> Vec<u64> {
        let mut b: VecDeque<Event> = binds.iter().map(|&t| ev(t, BIND + t)).collect();
        let mut e: VecDeque<Event> = events.iter().map(|&t| ev(t, t)).collect();
        let mut o = Order::default();
        let mut out = Vec::new();
        while let Some(x) = o.next(&mut b, &mut e) {
            let Kind::Lost(l) = x.kind else {
                unreachable!()
            };
            out.push(l.count);
        }
        assert!(o.is_empty());
        out
    }

    #[test]
    fn a_bind_result_waits_only_for_older_transitions() {
        // Transitions at 1, 2, 5, 6; a failed bind at 3: 1 and 2 go first,
        // then the failure, then the rest in order.
        assert_eq!(order_of(&[3], &[1, 2, 5, 6]), vec![1, 2, BIND + 3, 5, 6]);
        // Two failures between them.
        assert_eq!(
            order_of(&[3, 7], &[1, 5, 6, 8]),
            vec![1, BIND + 3, 5, 6, BIND + 7, 8]
        );
        // Nothing else: each stream alone, in order.
        assert_eq!(order_of(&[], &[1, 2]), vec![1, 2]);
        assert_eq!(order_of(&[4, 9], &[]), vec![BIND + 4, BIND + 9]);
    }

    #[test]
    fn in_a_flood_a_bind_result_goes_first() {
        // A full queue: the failure does not wait for it.
        let events: Vec<u64> = (1..=(OLDER_FIRST as u64 + 10)).collect();
        let out = order_of(&[5], &events);
        assert_eq!(out[0], BIND + 5);
        assert_eq!(&out[1..], &events[..], "transitions keep their order");
        // Just under the threshold: it waits for the older ones only.
        let events: Vec<u64> = (1..OLDER_FIRST as u64).collect();
        let out = order_of(&[5], &events);
        assert_eq!(out[..5], [1, 2, 3, 4, 5]);
        assert_eq!(out[5], BIND + 5);
        assert_eq!(out.len(), events.len() + 1);
    }
}
