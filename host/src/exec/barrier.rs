//! Aligned checkpoints, for runs whose operators keep state across
//! checkpoints (a session window on a stream).
//!
//! ```text
//!   checkpointer ──request n──► sources: position Pₙ noted, Barrier(n) sent in the data's order
//!   operator: Barrier(n) from every live input (the others' data held back) ─► snapshot Sₙ ─► Barrier(n) on
//!   sink: Barrier(n) from every live input ─► flush ─► state Tₙ reported
//!   checkpointer: every sink reported n ─► dead letters synced ─► every token issued before
//!                 Barrier(n) settled? ─► {Pₙ, Sₙ, Tₙ} saved ─► sources commit Pₙ   (else: not saved)
//! ```
//!
//! Holding a window's input acknowledgements until the window closes would hold
//! a broker's messages for as long as a user stays active, past what JetStream
//! allows (`ack_wait`, `max_ack_pending`). So, as Flink's checkpoints do, the
//! state is saved instead: a barrier travels with the data, each stateful
//! operator writes its state when the barrier has arrived on all its inputs,
//! and each sink makes its output durable at the barrier and reports its state.
//! The three are consistent: the operator state holds exactly what the sources
//! read up to `Pₙ` and did not emit, the sink states exactly what was emitted
//! before the barrier. A resumed run restores all three and continues after
//! `Pₙ`: no row is lost and, for sinks that restore their state (files) or are
//! idempotent by key (Redis), none is counted twice.
//!
//! Other operators may hold rows across a barrier too (a sort, a group, a
//! `batch` stage waiting on `linger`). Each says what it does at a barrier
//! ([`crate::node::AtBarrier`]): it snapshots them with the state above, emits
//! them before passing the barrier on, or holds them with their delivery
//! tokens. The last is the default, and the checkpointer enforces it: each
//! source notes how many batches it had issued when it sent the barrier, and
//! a checkpoint is saved only if all of those had settled when its last sink
//! reported (every sink made them durable, the dead-letter store synced them,
//! or a snapshot took them over); counted later, tokens would also settle for
//! rows written after the barrier, which the sinks' states do not hold. Dead
//! letters are synced as a checkpoint is saved, so rows that became dead
//! letters since the previous one make a checkpoint wait for the next. A checkpoint that finds a token still held is dropped, not saved:
//! the next barrier tries again. So an operator that keeps rows and neither
//! snapshots nor emits them delays checkpoints; it cannot make one commit
//! positions whose rows exist only in its memory.
//!
//! A run without such operators keeps the per-batch acknowledgements of
//! [`crate::node::ack`], which commit continuously and need no barriers.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::{Notify, watch};

use super::channel::{Item, Receiver};
use crate::node::{Envelope, Position};

/// What a node with inputs reads next, barriers aligned across its inputs.
pub(crate) enum Input {
    /// A batch.
    Data(Envelope),
    /// Barrier `n` has arrived on every live input.
    Barrier(u64),
}

/// Aligns barriers across a node's inputs: once barrier `n` came on one input,
/// that input's later items wait until `n` came on all the others (or they
/// ended), so what the node has consumed at the barrier is exactly what came
/// before it on every input.
pub(crate) struct Aligner {
    ended: Vec<bool>,
    blocked: Vec<bool>,
    waiting_for: Option<u64>,
    held: VecDeque<(usize, Item)>,
    ready: VecDeque<(usize, Item)>,
}

impl Aligner {
    /// For a node with `inputs` upstreams.
    pub(crate) fn new(inputs: usize) -> Self {
        Self {
            ended: vec![false; inputs.max(1)],
            blocked: vec![false; inputs.max(1)],
            waiting_for: None,
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    fn aligned(&self) -> bool {
        self.blocked.iter().zip(&self.ended).all(|(b, e)| *b || *e)
    }

    /// The next input, or `None` when every input ended. Cancel-safe: an item
    /// taken from the channel is kept in `self` before anything awaits again.
    pub(crate) async fn next(&mut self, rx: &mut Receiver) -> Option<Input> {
        loop {
            let (origin, item) = match self.ready.pop_front() {
                Some(x) => x,
                None => rx.recv_item().await?,
            };
            let origin = origin.min(self.ended.len() - 1);
            if self.blocked[origin] {
                self.held.push_back((origin, item));
                continue;
            }
            match item {
                Item::Data(e) => return Some(Input::Data(e)),
                Item::End => {
                    self.ended[origin] = true;
                    if let Some(n) = self.waiting_for.filter(|_| self.aligned()) {
                        return Some(self.release(n));
                    }
                }
                Item::Barrier(n) => {
                    if self.ended.len() == 1 {
                        return Some(Input::Barrier(n));
                    }
                    self.blocked[origin] = true;
                    self.waiting_for = Some(n);
                    if self.aligned() {
                        return Some(self.release(n));
                    }
                }
            }
        }
    }

    fn release(&mut self, n: u64) -> Input {
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.waiting_for = None;
        // What was held back comes before anything still in the channel.
        let mut held = std::mem::take(&mut self.held);
        held.append(&mut self.ready);
        self.ready = held;
        Input::Barrier(n)
    }
}

/// One checkpoint being assembled.
#[derive(Default)]
struct Pending {
    sources: BTreeMap<String, Position>,
    /// Per source, the batches it had issued when it sent the barrier.
    issued: BTreeMap<String, u64>,
    /// Per source, the batches settled when the last sink reported.
    settled: BTreeMap<String, u64>,
    operators: BTreeMap<String, PathBuf>,
    sinks: BTreeMap<String, Option<String>>,
}

/// A checkpoint whose every sink has reported: ready to save.
pub(crate) struct Assembled {
    pub(crate) id: u64,
    pub(crate) sources: BTreeMap<String, Position>,
    /// Per source, the batches that must have settled before it is saved.
    pub(crate) issued: BTreeMap<String, u64>,
    /// Per source, the batches settled when its last sink reported.
    pub(crate) settled: BTreeMap<String, u64>,
    pub(crate) operators: BTreeMap<String, PathBuf>,
    pub(crate) sinks: BTreeMap<String, String>,
    /// The state files of older checkpoints it supersedes, never saved.
    pub(crate) superseded: Vec<PathBuf>,
}

/// The run's barrier coordination, shared by its tasks.
pub(crate) struct Barriers {
    /// The newest barrier requested (0: none yet).
    pub(crate) request: watch::Sender<u64>,
    /// Set when the run is stopping: the last barrier, which every source
    /// sends before it ends.
    pub(crate) last: watch::Sender<Option<u64>>,
    /// The positions of the newest saved checkpoint, for sources to commit.
    pub(crate) committed: watch::Sender<(u64, BTreeMap<String, Position>)>,
    /// Where snapshots are written: `<data dir>/state/<pipeline>/<run>`.
    pub(crate) dir: PathBuf,
    sinks: usize,
    pending: Mutex<BTreeMap<u64, Pending>>,
    /// Positions of sources that ended, which later checkpoints keep, and
    /// the batches they issued in all.
    ended: Mutex<BTreeMap<String, (Option<Position>, u64)>>,
    pub(crate) reported: Notify,
    /// The sources' commit trackers, read as the last sink reports.
    trackers: Vec<(String, std::sync::Arc<crate::node::CommitTracker>)>,
}

impl Barriers {
    /// For a run with `sinks` sinks, snapshots under `dir`.
    pub(crate) fn new(sinks: usize, dir: PathBuf) -> Self {
        Self {
            request: watch::Sender::new(0),
            last: watch::Sender::new(None),
            committed: watch::Sender::new((0, BTreeMap::new())),
            dir,
            sinks,
            pending: Mutex::default(),
            ended: Mutex::default(),
            reported: Notify::new(),
            trackers: Vec::new(),
        }
    }

    /// Counts settled batches of these sources' trackers as each checkpoint's
    /// last sink reports.
    pub(crate) fn with_trackers(
        mut self,
        trackers: Vec<(String, std::sync::Arc<crate::node::CommitTracker>)>,
    ) -> Self {
        self.trackers = trackers;
        self
    }

    fn with<R>(&self, n: u64, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(p.entry(n).or_default())
    }

    /// A source sent barrier `n` after `position`, having issued `issued`
    /// batches.
    pub(crate) fn source_at(&self, n: u64, source: &str, position: Option<Position>, issued: u64) {
        self.with(n, |c| {
            c.issued.insert(source.to_owned(), issued);
            if let Some(p) = position {
                c.sources.insert(source.to_owned(), p);
            }
        });
    }

    /// A source ended at `position` after issuing `issued` batches: every
    /// later checkpoint holds it.
    pub(crate) fn source_ended(&self, source: &str, position: Option<Position>, issued: u64) {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), (position, issued));
    }

    /// An operator wrote its state for barrier `n`.
    pub(crate) fn operator_at(&self, n: u64, operator: &str, file: PathBuf) {
        self.with(n, |c| c.operators.insert(operator.to_owned(), file));
    }

    /// A sink made everything before barrier `n` durable; `state` is what it
    /// restores.
    pub(crate) fn sink_at(&self, n: u64, sink: &str, state: Option<String>) {
        self.with(n, |c| {
            c.sinks.insert(sink.to_owned(), state);
            if c.sinks.len() >= self.sinks {
                // Now, before this sink goes on to what follows the barrier.
                c.settled = self
                    .trackers
                    .iter()
                    .map(|(name, t)| (name.clone(), t.settled()))
                    .collect();
            }
        });
        self.reported.notify_one();
    }

    /// The newest checkpoint every sink has reported, if any; older pending
    /// ones are dropped (the newer one supersedes them).
    pub(crate) fn take_assembled(&self) -> Option<Assembled> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let id = *pending
            .iter()
            .rev()
            .find(|(_, p)| p.sinks.len() >= self.sinks)?
            .0;
        let done = pending.remove(&id)?;
        let older: Vec<u64> = pending.range(..id).map(|(&n, _)| n).collect();
        let superseded = older
            .into_iter()
            .filter_map(|n| pending.remove(&n))
            .flat_map(|p| p.operators.into_values())
            .collect();
        let mut sources = BTreeMap::new();
        let mut issued = BTreeMap::new();
        for (name, (p, n)) in self.ended.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(p) = p {
                sources.insert(name.clone(), p.clone());
            }
            issued.insert(name.clone(), *n);
        }
        sources.extend(done.sources);
        issued.extend(done.issued);
        Some(Assembled {
            id,
            sources,
            issued,
            settled: done.settled,
            operators: done.operators,
            sinks: done
                .sinks
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
            superseded,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::exec::channel;
    use crate::node::Meta;

    fn env(v: i64) -> Envelope {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        Envelope {
            batch: RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap(),
            meta: Meta::default(),
        }
    }

    fn value(i: &Input) -> String {
        match i {
            Input::Data(e) => e
                .batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
                .to_string(),
            Input::Barrier(n) => format!("B{n}"),
        }
    }

    /// Input 0 sends its barrier early; its later data waits until input 1's
    /// barrier, then comes before anything else.
    #[tokio::test]
    async fn a_fan_in_holds_back_an_input_past_its_barrier() {
        let (tx, mut rx) = channel::bounded(
            std::num::NonZeroUsize::new(16).unwrap(),
            crate::units::ByteSize::mib(1),
        );
        let (a, b) = (tx.for_input(0), tx.for_input(1));
        drop(tx);
        a.send(env(1)).await.unwrap();
        a.mark(Item::Barrier(1)).await.unwrap();
        a.send(env(2)).await.unwrap();
        b.send(env(10)).await.unwrap();
        b.send(env(11)).await.unwrap();
        b.mark(Item::Barrier(1)).await.unwrap();
        b.send(env(12)).await.unwrap();
        a.mark(Item::End).await.unwrap();
        b.mark(Item::Barrier(2)).await.unwrap();
        drop((a, b));
        let mut al = Aligner::new(2);
        let mut seen = Vec::new();
        while let Some(i) = al.next(&mut rx).await {
            seen.push(value(&i));
        }
        // Barrier 2 needs only input 1: input 0 ended.
        assert_eq!(seen, ["1", "10", "11", "B1", "2", "12", "B2"]);
    }

    #[test]
    fn the_newest_fully_reported_checkpoint_supersedes_older_ones() {
        let b = Barriers::new(2, PathBuf::from("/tmp"));
        b.source_at(1, "s", Some("10".into()), 1);
        b.source_at(2, "s", Some("20".into()), 2);
        b.source_at(3, "s", Some("30".into()), 3);
        b.sink_at(1, "a", Some("a1".into()));
        assert!(b.take_assembled().is_none(), "one sink of two reported");
        b.sink_at(1, "b", None);
        b.sink_at(2, "a", Some("a2".into()));
        b.sink_at(2, "b", Some("b2".into()));
        b.source_ended("t", Some("7".into()), 4);
        let c = b.take_assembled().unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.sources.get("s").map(String::as_str), Some("20"));
        assert_eq!(c.sources.get("t").map(String::as_str), Some("7"));
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.issued.get("s"), Some(&2));
        assert_eq!(c.issued.get("t"), Some(&4));
        assert!(
            b.take_assembled().is_none(),
            "1 and 2 are gone, 3 incomplete"
        );
    }
}
