//! The ring reader's transitions handed to the consumer in batches.
//!
//! One event per channel message cost the pair of threads more than the
//! event itself under churn: perf of `twmon record` beside a 70,000
//! connections/s churn showed a fifth of its CPU in the hand-off (a
//! semaphore permit and a futex wake per event once the channel was full,
//! and a context switch between the two threads sharing one core). A batch
//! of up to [`BATCH`] events pays that once.
//!
//! The consumer still sees single events, and how many are queued in all
//! ([`BatchReceiver::queued`]): `live::Order` decides from it whether a bind
//! result waits for the transitions older than it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::Event;

/// Events per batch: the reader hands over bind results every 64
/// transitions (probe::Probe::drain), and a batch goes before them.
pub const BATCH: usize = 64;

/// A channel that holds at most about `events` events.
pub fn channel(events: usize) -> (BatchSender, BatchReceiver) {
    let (tx, rx) = mpsc::channel((events / BATCH).max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        BatchSender {
            tx,
            batch: Vec::with_capacity(BATCH),
            queued: queued.clone(),
        },
        BatchReceiver {
            rx,
            current: VecDeque::new(),
            queued,
        },
    )
}

/// Why a batch was not sent.
pub enum Unsent {
    /// The channel is full; the batch is kept for the next try.
    Full,
    /// The receiver is gone.
    Closed,
}

pub struct BatchSender {
    tx: mpsc::Sender<Vec<Event>>,
    batch: Vec<Event>,
    /// Events sent and not yet taken in by the receiver.
    queued: Arc<AtomicUsize>,
}

impl BatchSender {
    /// Add one event; true when the batch is full and should be sent.
    pub fn push(&mut self, ev: Event) -> bool {
        self.batch.push(ev);
        self.batch.len() >= BATCH
    }

    /// Send the batch without waiting (nothing to send is a success).
    pub fn try_flush(&mut self) -> Result<(), Unsent> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let n = self.batch.len();
        // Counted first: the receiver subtracts when it takes the batch in.
        self.queued.fetch_add(n, Ordering::Relaxed);
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                let why = match &e {
                    mpsc::error::TrySendError::Full(_) => Unsent::Full,
                    mpsc::error::TrySendError::Closed(_) => Unsent::Closed,
                };
                self.batch = e.into_inner();
                Err(why)
            }
        }
    }
}

pub struct BatchReceiver {
    rx: mpsc::Receiver<Vec<Event>>,
    /// The batch being handed out.
    current: VecDeque<Event>,
    queued: Arc<AtomicUsize>,
}

impl BatchReceiver {
    fn take_in(&mut self, batch: Vec<Event>) {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        self.current = VecDeque::from(batch);
    }

    /// The next event, waiting for one; None once the sender is gone and
    /// everything was taken. Cancel-safe (for `select!`).
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.current.pop_front() {
                return Some(ev);
            }
            let batch = self.rx.recv().await?;
            self.take_in(batch);
        }
    }

    /// The next event if one is there.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.current.pop_front() {
                return Some(ev);
            }
            let batch = self.rx.try_recv().ok()?;
            self.take_in(batch);
        }
    }

    /// Events waiting, in the batch at hand and in the channel.
    pub fn queued(&self) -> usize {
        self.current.len() + self.queued.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.rx.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    /// No more batches will be accepted (those queued can still be taken).
    pub fn close(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// An event told apart by its time.
    fn ev(n: u64) -> Event {
        crate::live::tests::ev(n, n)
    }

    #[test]
    fn events_come_out_one_by_one_in_order_and_are_counted() {
        let (mut tx, mut rx) = channel(BATCH * 4);
        let mut full = 0;
        for n in 0..150 {
            if tx.push(ev(n)) {
                full += 1;
                assert!(tx.try_flush().is_ok());
            }
        }
        assert_eq!(full, 2, "a batch is full at {BATCH} events");
        assert_eq!(rx.queued(), 128);
        assert!(tx.try_flush().is_ok());
        assert_eq!(rx.queued(), 150);
        let mut seen = Vec::new();
        while let Some(e) = rx.try_recv() {
            seen.push(e.common.ts_ns);
            assert_eq!(rx.queued(), 150 - seen.len());
        }
        assert_eq!(seen, (0..150).collect::<Vec<_>>());
        assert!(rx.is_empty());
    }

    #[test]
    fn a_full_channel_keeps_the_batch_and_a_closed_one_says_so() {
        let (mut tx, mut rx) = channel(BATCH); // room for one batch
        tx.push(ev(1));
        assert!(tx.try_flush().is_ok());
        tx.push(ev(2));
        assert!(matches!(tx.try_flush(), Err(Unsent::Full)));
        assert_eq!(rx.queued(), 1, "the unsent batch is not counted");
        assert_eq!(rx.try_recv().map(|e| e.common.ts_ns), Some(1));
        assert!(
            tx.try_flush().is_ok(),
            "the kept batch goes once there is room"
        );
        assert_eq!(rx.try_recv().map(|e| e.common.ts_ns), Some(2));
        rx.close();
        tx.push(ev(3));
        assert!(matches!(tx.try_flush(), Err(Unsent::Closed)));
        // Nothing to send always succeeds.
        let (mut tx, _rx) = channel(BATCH);
        assert!(tx.try_flush().is_ok());
    }
}
