//! Channels between nodes, bounded in batches **and** bytes.
//!
//! A batch count alone lets eight 500 MB batches pile up; a byte bound alone lets a
//! million tiny ones. Each message holds a permit for its Arrow memory (in KiB) from
//! a semaphore sized to the byte bound, released when the receiver has taken it, so
//! a slow reader makes the writer wait, and the writer's writer, up to the source:
//! that is backpressure. A batch larger than the whole bound is admitted alone
//! rather than deadlocking. Time spent waiting is measured for the run summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::units::ByteSize;

struct Message {
    batch: RecordBatch,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Depth {
    max_batches: AtomicUsize,
    max_kib: AtomicUsize,
}

/// The sending half; clone it for each upstream of a fan-in.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Message>,
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
            budget,
            capacity_kib,
            depth: depth.clone(),
        },
        Receiver { rx, depth },
    )
}

impl Sender {
    /// Sends a batch, waiting while the channel is full. Returns how long it waited.
    ///
    /// # Errors
    /// [`Closed`] when the receiver is gone.
    pub async fn send(&self, batch: RecordBatch) -> Result<Duration, Closed> {
        let started = Instant::now();
        let kib = u32::try_from(batch.get_array_memory_size().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity_kib);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Message {
                batch,
                _permit: permit,
            })
            .await
            .map_err(|_| Closed)?;
        // Depth from the channel's own accounting, which never exceeds its bounds.
        let batches = self.tx.max_capacity() - self.tx.capacity();
        let kib = (self.capacity_kib as usize).saturating_sub(self.budget.available_permits());
        self.depth.max_batches.fetch_max(batches, Ordering::Relaxed);
        self.depth.max_kib.fetch_max(kib, Ordering::Relaxed);
        Ok(started.elapsed())
    }
}

impl Receiver {
    /// The next batch, or `None` when every sender is gone and the channel is empty.
    pub async fn recv(&mut self) -> Option<RecordBatch> {
        let msg = self.rx.recv().await?;
        Some(msg.batch)
    }

    /// The deepest the queue has been: (batches, bytes).
    pub fn max_depth(&self) -> (usize, ByteSize) {
        (
            self.depth.max_batches.load(Ordering::Relaxed),
            ByteSize(self.depth.max_kib.load(Ordering::Relaxed) as u64 * 1024),
        )
    }
}
