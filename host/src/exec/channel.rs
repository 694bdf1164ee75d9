//! Channels between nodes, bounded in batches **and** bytes.
//!
//! A batch count alone lets eight 500 MB batches pile up; a byte bound alone lets a
//! million tiny ones. Each message holds a permit for its Arrow memory (in KiB) from
//! a semaphore sized to the byte bound, released when the receiver has taken it, so
//! a slow reader makes the writer wait, and the writer's writer, up to the source:
//! that is backpressure. A batch larger than the whole bound is admitted alone
//! rather than deadlocking. Time spent waiting is measured for the run summary.
//!
//! What a channel carries is an [`Envelope`]: the batch with its lineage and
//! delivery tokens. The depth reported for the run summary is counted apart from
//! the semaphore and the queue that enforce the bound (an increment when a
//! message is queued, a decrement when it is taken), so a test that reads it
//! checks the bound rather than restating it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::node::Envelope;
use crate::units::ByteSize;

/// What a channel carries: data, or a checkpoint marker in the data's order.
#[derive(Debug)]
pub enum Item {
    /// A batch with its lineage and tokens.
    Data(Envelope),
    /// Checkpoint barrier `n`: everything the sender sent before it belongs to
    /// checkpoint `n`, everything after to the next ([`super::barrier`]).
    Barrier(u64),
    /// The sender has no more to send (its upstream ended); a fan-in stops
    /// waiting for its barriers.
    End,
}

struct Message {
    item: Item,
    origin: usize,
    kib: usize,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Depth {
    queued: AtomicUsize,
    queued_kib: AtomicUsize,
    max_batches: AtomicUsize,
    max_kib: AtomicUsize,
}

/// The sending half; clone it for each upstream of a fan-in.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Message>,
    /// Which of the receiver's inputs this sender is (see [`Sender::for_input`]).
    origin: usize,
    budget: Arc<Semaphore>,
    capacity_kib: u32,
    depth: Arc<Depth>,
}

/// The receiving half.
pub struct Receiver {
    rx: mpsc::Receiver<Message>,
    depth: Arc<Depth>,
}

/// The receiver is gone: the downstream node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A channel holding at most `batches` batches and about `bytes` of Arrow memory.
pub fn bounded(batches: std::num::NonZeroUsize, bytes: ByteSize) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::channel(batches.get());
    let capacity_kib = u32::try_from(bytes.0.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1);
    let depth = Arc::new(Depth::default());
    let budget = Arc::new(Semaphore::new(capacity_kib as usize));
    (
        Sender {
            tx,
            origin: 0,
            budget,
            capacity_kib,
            depth: depth.clone(),
        },
        Receiver { rx, depth },
    )
}

impl Sender {
    /// This sender as the receiver's input number `origin` (for a fan-in, one
    /// per upstream), so barriers can be aligned per input.
    pub fn for_input(&self, origin: usize) -> Self {
        Self {
            origin,
            ..self.clone()
        }
    }

    /// Sends a barrier or end marker. Markers hold no byte budget and wait only
    /// for a slot.
    ///
    /// # Errors
    /// [`Closed`] when the receiver is gone.
    pub async fn mark(&self, item: Item) -> Result<(), Closed> {
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(0)
            .await
            .map_err(|_| Closed)?;
        let slot = self.tx.reserve().await.map_err(|_| Closed)?;
        slot.send(Message {
            item,
            origin: self.origin,
            kib: 0,
            _permit: permit,
        });
        Ok(())
    }

    /// Sends an envelope, waiting while the channel is full. Returns how long it
    /// waited.
    ///
    /// # Errors
    /// [`Closed`] when the receiver is gone.
    pub async fn send(&self, envelope: Envelope) -> Result<Duration, Closed> {
        let started = Instant::now();
        let real_kib = envelope.batch.get_array_memory_size().div_ceil(1024);
        let kib = u32::try_from(real_kib)
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity_kib);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| Closed)?;
        let slot = self.tx.reserve().await.map_err(|_| Closed)?;
        // Counted once the message has its slot and before it is visible, so the
        // receiver's decrement never runs first.
        let batches = self.depth.queued.fetch_add(1, Ordering::SeqCst) + 1;
        let queued_kib = self.depth.queued_kib.fetch_add(real_kib, Ordering::SeqCst) + real_kib;
        self.depth.max_batches.fetch_max(batches, Ordering::Relaxed);
        self.depth.max_kib.fetch_max(queued_kib, Ordering::Relaxed);
        slot.send(Message {
            item: Item::Data(envelope),
            origin: self.origin,
            kib: real_kib,
            _permit: permit,
        });
        Ok(started.elapsed())
    }
}

impl Receiver {
    /// The next envelope, or `None` when every sender is gone and the channel is
    /// empty. Markers are skipped (for nodes that take no checkpoints).
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            if let (_, Item::Data(e)) = self.recv_item().await? {
                return Some(e);
            }
        }
    }

    /// The next item with the input it came from, or `None` when every sender
    /// is gone and the channel is empty.
    pub async fn recv_item(&mut self) -> Option<(usize, Item)> {
        let msg = self.rx.recv().await?;
        if matches!(msg.item, Item::Data(_)) {
            self.depth.queued.fetch_sub(1, Ordering::SeqCst);
            self.depth.queued_kib.fetch_sub(msg.kib, Ordering::SeqCst);
        }
        Some((msg.origin, msg.item))
    }

    /// The deepest the queue has been: (batches, bytes).
    pub fn max_depth(&self) -> (usize, ByteSize) {
        (
            self.depth.max_batches.load(Ordering::Relaxed),
            ByteSize(self.depth.max_kib.load(Ordering::Relaxed) as u64 * 1024),
        )
    }
}
