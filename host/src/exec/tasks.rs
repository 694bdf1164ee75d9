//! The three node loops: a source's, an operator's and a sink's.
//!
//! Each loop owns its node and its channels. Node work runs on the blocking pool
//! through [`on_blocking`] (one place maps a panic to [`RunError::Panic`]); async
//! sources and sinks are polled here directly. A loop that fails calls
//! [`RunShared::fail`] while it still holds what it was working on, then returns;
//! its output channels close as it returns, after the run is marked failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::barrier::{Aligner, Input};
use super::channel::Item;
use super::control::SwapReceiver;
use super::{NodeCx, NodeStats, RunError, channel, panic_message};
use crate::node::{
    AsyncOperator, AsyncSink, AsyncSource, AtBarrier, CommitTracker, Durability, Emitter, Envelope,
    Lineage, LineageRecord, Meta, NodeError, Operator, Position, SourceSpan,
};
use crate::plan::{OperatorNode, SinkNode, SourceNode};

/// Runs `f(node)` on the blocking pool and gives the node back.
async fn on_blocking<T: Send + 'static, R: Send + 'static>(
    name: &str,
    node: T,
    f: impl FnOnce(T) -> (T, R) + Send + 'static,
) -> Result<(T, R), RunError> {
    tokio::task::spawn_blocking(move || f(node))
        .await
        .map_err(|e| RunError::Panic {
            node: name.to_owned(),
            message: if e.is_panic() {
                panic_message(e.into_panic())
            } else {
                "cancelled".to_owned()
            },
        })
}

impl NodeCx {
    /// Fails the run for `error` (see the module docs).
    fn fail(&self, error: NodeError) -> RunError {
        tracing::error!(node = %self.name, fault = %error.fault(), "node failed: {error}");
        self.shared.fail();
        RunError::Node {
            node: self.name.clone(),
            error,
        }
    }

    /// Checks the node's conservation ledger (see [`super::ledger`]), holding
    /// `held` rows now; a mismatch fails the run.
    fn check_ledger(&self, stats: &mut NodeStats, held: usize) -> Result<(), RunError> {
        stats.held_rows = held as u64;
        stats.ledger().check(&self.name).map_err(|e| self.fail(e))
    }

    fn fail_run(&self, error: RunError) -> RunError {
        self.shared.fail();
        error
    }

    /// Holds `batch` to the node's declared output schema, learning it from the
    /// first batch when the plan could not fix it.
    fn check_schema(&mut self, batch: &RecordBatch) -> Result<(), RunError> {
        match &self.output_schema {
            Some(expected) => crate::node::schema::check(expected, &batch.schema()).map_err(|e| {
                self.fail(NodeError::config(format!(
                    "output does not match its schema: {e}"
                )))
            }),
            None => {
                self.output_schema = Some(batch.schema());
                Ok(())
            }
        }
    }

    /// Stamps `letters` with where they happened, counts them by fault in
    /// `stats`, and appends them to the run's store, which keeps `hold` until
    /// they are durable.
    fn keep_letters(
        &self,
        letters: Vec<crate::node::DeadLetter>,
        hold: Vec<Meta>,
        stats: &mut NodeStats,
    ) -> Result<(), RunError> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let records = letters
            .into_iter()
            .map(|l| {
                *stats
                    .dead_letters_by_fault
                    .entry(l.fault.as_str())
                    .or_default() += 1;
                self.shared
                    .stamp
                    .record(&self.name, self.component.as_deref(), l, at_ms)
            })
            .collect();
        self.shared
            .letters
            .append(records, hold)
            .map_err(|e| self.fail_run(RunError::DeadLetters(e)))
    }
}

/// Sends each envelope to every output. Returns false when all outputs are gone.
async fn fan_out(
    envelopes: Vec<Envelope>,
    outs: &[channel::Sender],
    stats: &mut NodeStats,
) -> bool {
    let mut alive = !outs.is_empty();
    for env in envelopes {
        if env.batch.num_rows() == 0 {
            continue;
        }
        stats.batches_out += 1;
        stats.rows_out += env.batch.num_rows() as u64;
        alive = false;
        for out in outs {
            if let Ok(waited) = out.send(env.clone()).await {
                stats.blocked += waited;
                alive = true;
            }
        }
        if !alive {
            return false;
        }
    }
    alive
}

fn merge(into: &mut NodeStats, counters: std::collections::BTreeMap<String, u64>) {
    for (k, v) in counters {
        *into.counters.entry(k).or_default() += v;
    }
}

pub(super) async fn run_source(
    source: SourceNode,
    outs: Vec<channel::Sender>,
    stats: NodeStats,
    mut cx: NodeCx,
    tracker: Arc<CommitTracker>,
    resume_from: Option<Position>,
) -> Result<NodeStats, RunError> {
    let mut source: Box<dyn AsyncSource> = match source {
        SourceNode::Sync(s) => Box::new(crate::node::Blocking::source(s)),
        SourceNode::Async(s) => s,
    };
    let result = source_loop(&mut *source, &outs, stats, &mut cx, &tracker, resume_from).await;
    let (stats, mut committed, last) = result?;
    // Tell a fan-in downstream to stop waiting for this input's barriers; the
    // outputs close here.
    for out in &outs {
        let _ = out.mark(Item::End).await;
    }
    drop(outs);
    if let Some(b) = cx.shared.barriers.clone() {
        b.source_ended(&cx.name, last, tracker.issued());
        if cx.control.is_stopped() {
            // Aligned checkpoints: what may be committed is what the last
            // checkpoint saves, once it is saved: the run commits it then.
            cx.shared
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((cx.name.clone(), source, committed));
            return Ok(stats);
        }
    }
    // The letters of what was read must be kept before it can settle: a
    // store that cannot keep them fails the run here rather than leaving the
    // wait below to wait forever (a full store that pauses waits here, too).
    let letters = cx.shared.letters.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || letters.flush()).await {
        return Err(cx.fail_run(RunError::DeadLetters(e)));
    }
    // Wait until what was read is settled and commit the final frontier, so a
    // broker can release its last messages.
    while !cx.shared.has_failed() && tracker.unsettled() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let frontier = tracker.frontier().filter(|_| !cx.shared.has_failed());
    commit_to(&mut *source, &cx, &mut committed, frontier).await?;
    Ok(stats)
}

/// Commits `to` unless it is what was committed last.
async fn commit_to(
    source: &mut dyn AsyncSource,
    cx: &NodeCx,
    committed: &mut Option<Position>,
    to: Option<Position>,
) -> Result<(), RunError> {
    if let Some(p) = to
        && committed.as_ref() != Some(&p)
    {
        source.commit(&p).await.map_err(|e| cx.fail(e))?;
        *committed = Some(p);
    }
    Ok(())
}

/// Sends barrier `n` after everything emitted so far, noting `position` and
/// how many batches were issued before it (all must settle before the
/// checkpoint is saved).
async fn send_barrier(
    cx: &NodeCx,
    outs: &[channel::Sender],
    n: u64,
    position: &Option<Position>,
    tracker: &CommitTracker,
) {
    if let Some(b) = &cx.shared.barriers {
        b.source_at(n, &cx.name, position.clone(), tracker.issued());
    }
    for out in outs {
        let _ = out.mark(Item::Barrier(n)).await;
    }
}

/// What a source loop ends with: its stats, the position it committed last and
/// the position after its last batch.
type SourceEnd = (NodeStats, Option<Position>, Option<Position>);

async fn source_loop(
    source: &mut dyn AsyncSource,
    outs: &[channel::Sender],
    mut stats: NodeStats,
    cx: &mut NodeCx,
    tracker: &Arc<CommitTracker>,
    resume_from: Option<Position>,
) -> Result<SourceEnd, RunError> {
    let mut stop = cx.control.stop_signal();
    if let Some(p) = &resume_from {
        source.seek(p).await.map_err(|e| cx.fail(e))?;
    }
    let barriers = cx.shared.barriers.clone();
    // Aligned checkpoints: barriers requested, and checkpoints saved.
    let mut requested = barriers.as_ref().map(|b| b.request.subscribe());
    let mut saved = barriers.as_ref().map(|b| b.committed.subscribe());
    let mut sent = 0u64;
    let mut previous = resume_from.clone();
    let mut committed = resume_from;
    loop {
        if *stop.borrow() {
            if let Some(b) = &barriers {
                // The last barrier goes out before the source ends.
                let mut last = b.last.subscribe();
                let n = tokio::select! {
                    n = last.wait_for(Option::is_some) => n.ok().and_then(|n| *n),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => None,
                };
                if let Some(n) = n.filter(|&n| n > sent) {
                    send_barrier(cx, outs, n, &previous, tracker).await;
                }
            }
            return Ok((stats, committed, previous));
        }
        if let Some(r) = &requested {
            let n = *r.borrow();
            if n > sent {
                send_barrier(cx, outs, n, &previous, tracker).await;
                sent = n;
            }
        }
        if let Some(s) = &saved {
            let at = s.borrow().1.get(&cx.name).cloned();
            commit_to(source, cx, &mut committed, at).await?;
        }
        let paused = wait_for_memory(&cx.memory_watch).await;
        if !paused.is_zero() {
            *stats.counters.entry("memory_paused_ms".into()).or_default() +=
                (paused.as_millis() as u64).max(1);
        }
        let paused = wait_for_letters(&*cx.shared.letters, || {
            cx.shared.has_failed() || cx.control.is_stopped()
        })
        .await;
        if !paused.is_zero() {
            *stats
                .counters
                .entry("dead_letters_full_ms".into())
                .or_default() += (paused.as_millis() as u64).max(1);
        }
        let started = Instant::now();
        let mut out = Emitter::default();
        let result = if source.interruptible() {
            tokio::select! {
                r = source.next_batch(&mut out) => r,
                _ = stop.wait_for(|s| *s) => continue,
                // A barrier or a saved checkpoint while waiting for input.
                Some(_) = changed(&mut requested) => continue,
                Some(_) = changed(&mut saved) => continue,
            }
        } else {
            source.next_batch(&mut out).await
        };
        stats.busy += started.elapsed();
        let more = result.map_err(|e| cx.fail(e))?;
        let version = cx.control.version();
        let mut envelopes = Vec::new();
        for (batch, _, position) in out.take_output() {
            let span = SourceSpan {
                source: cx.name.clone(),
                from: previous.clone(),
                to: position.clone(),
            };
            if position.is_some() {
                previous = position.clone();
            }
            let lineage = Lineage {
                pipeline: cx.pipeline.clone(),
                version,
                sources: vec![span],
                stages: Vec::new(),
            };
            let meta = Meta::from_source(Arc::new(lineage), tracker.issue(position));
            if batch.num_rows() > 0 {
                cx.check_schema(&batch)?;
            }
            envelopes.push(Envelope { batch, meta });
        }
        let letters = std::mem::take(&mut out.dead_letters);
        if !letters.is_empty() {
            let hold = envelopes.iter().map(|e| e.meta.clone()).collect();
            cx.keep_letters(letters, hold, &mut stats)?;
        }
        merge(&mut stats, std::mem::take(&mut out.counters));
        let rows: usize = envelopes.iter().map(|e| e.batch.num_rows()).sum();
        cx.shared
            .records_read
            .fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
        let alive = fan_out(envelopes, outs, &mut stats).await;
        cx.publish(&stats);
        if barriers.is_none() {
            commit_to(source, cx, &mut committed, tracker.frontier()).await?;
        }
        if !alive || !more {
            return Ok((stats, committed, previous));
        }
    }
}

/// Waits until `rx` (if any) sees a new value; `None` when it never can.
async fn changed<T>(rx: &mut Option<tokio::sync::watch::Receiver<T>>) -> Option<()> {
    match rx {
        Some(r) => r.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Waits while the node's available memory is under the floor; returns how long.
async fn wait_for_memory(watch: &crate::node::memory::MemoryWatch) -> Duration {
    if !watch.is_low() {
        return Duration::ZERO;
    }
    let started = Instant::now();
    while watch.is_low() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Waits while the dead-letter store is full (it waits for letters to be
/// replayed or purged), until the run fails or is stopped; returns how long.
async fn wait_for_letters(
    letters: &dyn crate::node::DeadLetterStore,
    done: impl Fn() -> bool,
) -> Duration {
    if !letters.is_full() {
        return Duration::ZERO;
    }
    let started = Instant::now();
    while letters.is_full() && !done() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// How an operator takes part in aligned checkpoints.
pub(super) struct OperatorCheckpoints {
    /// What it does at a barrier: [`AtBarrier::Snapshot`] for an operator
    /// whose [`Operator::begin_checkpoints`] said so, else its
    /// [`Operator::at_barrier`]. Meaningful only in a run with barriers.
    pub(super) at_barrier: AtBarrier,
    /// The state to restore before the first batch (a resumed run).
    pub(super) restore: Option<std::path::PathBuf>,
    /// How many upstream nodes feed it.
    pub(super) inputs: usize,
}

pub(super) async fn run_operator(
    op: OperatorNode,
    rx: channel::Receiver,
    outs: Vec<channel::Sender>,
    stats: NodeStats,
    cx: NodeCx,
    swaps: SwapReceiver,
    checkpoints: OperatorCheckpoints,
) -> Result<NodeStats, RunError> {
    match op {
        OperatorNode::Sync(op) => {
            run_sync_operator(op, rx, outs, stats, cx, swaps, checkpoints).await
        }
        OperatorNode::Async(op) => {
            run_async_operator(op, rx, outs, stats, cx, swaps, checkpoints.inputs).await
        }
    }
}

/// An async operator's loop: each batch's call is awaited here, on the runtime,
/// holding no blocking thread while it waits (on a service, a timer). It holds no
/// rows between calls ([`AsyncOperator`]), so a barrier passes straight through.
async fn run_async_operator(
    mut op: Box<dyn AsyncOperator>,
    mut rx: channel::Receiver,
    outs: Vec<channel::Sender>,
    mut stats: NodeStats,
    mut cx: NodeCx,
    mut swaps: SwapReceiver,
    inputs: usize,
) -> Result<NodeStats, RunError> {
    let mut aligner = Aligner::new(inputs);
    loop {
        let input = aligner.next(&mut rx).await;
        if input.is_none() && cx.shared.has_failed() {
            return Ok(stats);
        }
        while let Ok(request) = swaps.try_recv() {
            request
                .reply
                .send(Err(crate::node::swap::SwapError::Refused(format!(
                    "stage `{}` cannot be swapped",
                    cx.name
                ))));
        }
        let (out, held) = match input {
            Some(Input::Barrier(n)) => {
                cx.check_ledger(&mut stats, 0)?;
                for out in &outs {
                    let _ = out.mark(Item::Barrier(n)).await;
                }
                continue;
            }
            Some(Input::Data(Envelope { batch, meta })) => {
                stats.batches_in += 1;
                stats.rows_in += batch.num_rows() as u64;
                let started = Instant::now();
                let mut out = Emitter::for_input(meta.clone());
                let result = op.process(batch, &mut out).await;
                stats.busy += started.elapsed();
                // `meta` is still held: a failure marks the run failed first.
                result.map_err(|e| cx.fail(e))?;
                (out, Some(meta))
            }
            None => {
                let started = Instant::now();
                let mut out = Emitter::default();
                let result = op.finish(&mut out).await;
                stats.busy += started.elapsed();
                result.map_err(|e| cx.fail(e))?;
                (out, None)
            }
        };
        let finishing = held.is_none();
        let alive = emit(&mut cx, out, held, &outs, &mut stats).await?;
        if finishing {
            // It holds no rows between calls.
            cx.check_ledger(&mut stats, 0)?;
        }
        if finishing || !alive {
            end_outputs(&outs).await;
            let (b, bytes) = rx.max_depth();
            stats.max_queue_batches = b;
            stats.max_queue_bytes = bytes;
            return Ok(stats);
        }
    }
}

/// A synchronous operator's loop: each call runs on the blocking pool.
async fn run_sync_operator(
    op: Box<dyn Operator>,
    mut rx: channel::Receiver,
    outs: Vec<channel::Sender>,
    mut stats: NodeStats,
    mut cx: NodeCx,
    mut swaps: SwapReceiver,
    checkpoints: OperatorCheckpoints,
) -> Result<NodeStats, RunError> {
    let mut op = Some(op);
    if let Some(file) = checkpoints.restore.clone() {
        let node = op
            .take()
            .ok_or_else(|| cx.fail(NodeError::Bug("operator missing".into())))?;
        let (back, r) = on_blocking(&cx.name, node, move |mut op| {
            let r = op.restore(&file);
            (op, r)
        })
        .await
        .map_err(|e| cx.fail_run(e))?;
        stats.restored_rows = back.held_rows() as u64;
        op = Some(back);
        r.map_err(|e| cx.fail(e))?;
    }
    if let Some(o) = &op {
        stats.absorbs = o.conservation() == crate::node::Conservation::Absorbs;
    }
    let mut aligner = Aligner::new(checkpoints.inputs);
    // When a lingering operator's oldest buffered row has waited long enough (see
    // `Operator::linger`): its `flush` is then called instead of waiting on.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let (input, flush) = match linger_until {
            Some(at) => match tokio::time::timeout_at(at, aligner.next(&mut rx)).await {
                Ok(input) => (input, false),
                Err(_) => (None, true),
            },
            None => (aligner.next(&mut rx).await, false),
        };
        if input.is_none() && !flush && cx.shared.has_failed() {
            return Ok(stats);
        }
        if let Some(Input::Barrier(n)) = input {
            match checkpoints.at_barrier {
                AtBarrier::Snapshot => snapshot(&mut op, n, &mut cx).await?,
                AtBarrier::Flush => {
                    // What it holds goes out ahead of the barrier.
                    let node = op
                        .take()
                        .ok_or_else(|| cx.fail(NodeError::Bug("operator missing".into())))?;
                    let started = Instant::now();
                    let (back, (result, emitted)) = on_blocking(&cx.name, node, |mut op| {
                        let mut out = Emitter::default();
                        let r = op.flush(&mut out);
                        (op, (r, out))
                    })
                    .await
                    .map_err(|e| cx.fail_run(e))?;
                    linger_until = None;
                    op = Some(back);
                    stats.busy += started.elapsed();
                    result.map_err(|e| cx.fail(e))?;
                    emit(&mut cx, emitted, None, &outs, &mut stats).await?;
                }
                AtBarrier::Hold => {}
            }
            let held = op.as_ref().map_or(0, |o| o.held_rows());
            cx.check_ledger(&mut stats, held)?;
            for out in &outs {
                let _ = out.mark(Item::Barrier(n)).await;
            }
            continue;
        }
        // Swaps queued while waiting apply now: between the last batch and this one.
        let pending: Vec<crate::node::swap::SwapRequest> =
            std::iter::from_fn(|| swaps.try_recv().ok()).collect();
        let finishing = input.is_none() && !flush;
        let snapshots =
            checkpoints.at_barrier == AtBarrier::Snapshot && cx.shared.barriers.is_some();
        if finishing && snapshots && cx.control.is_stopped() {
            // Stopped with aligned checkpoints: the state was saved at the last
            // barrier and continues in the resumed run; emitting it now would
            // close windows early.
            let held = op.as_ref().map_or(0, |o| o.held_rows());
            cx.check_ledger(&mut stats, held)?;
            end_outputs(&outs).await;
            return Ok(stats);
        }
        // The input's meta stays here while the operator works, so a failure
        // marks the run failed before the input's tokens can settle.
        let (batch, held) = match input {
            Some(Input::Data(Envelope { batch, meta })) => {
                stats.batches_in += 1;
                stats.rows_in += batch.num_rows() as u64;
                cx.publish(&stats);
                (Some(batch), Some(meta))
            }
            _ => (None, None),
        };
        let started = Instant::now();
        let meta = held.clone();
        let node = op
            .take()
            .ok_or_else(|| cx.fail(NodeError::Bug("operator missing".into())))?;
        let (back, (result, emitted)) = on_blocking(&cx.name, node, move |mut op| {
            let mut out = meta.map_or_else(Emitter::default, Emitter::for_input);
            for request in pending {
                op.swap(request);
            }
            let r = match batch {
                Some(batch) => op.process(batch, &mut out),
                None if flush => op.flush(&mut out),
                None => op.finish(&mut out),
            };
            (op, (r, out))
        })
        .await
        .map_err(|e| cx.fail_run(e))?;
        linger_until = match back.linger() {
            Some(wait) if back.buffered_rows() > 0 => {
                Some(linger_until.unwrap_or_else(|| tokio::time::Instant::now() + wait))
            }
            _ => None,
        };
        op = Some(back);
        stats.busy += started.elapsed();
        result.map_err(|e| cx.fail(e))?;
        let alive = emit(&mut cx, emitted, held, &outs, &mut stats).await?;
        if finishing && alive {
            let node = op
                .take()
                .ok_or_else(|| cx.fail(NodeError::Bug("operator missing".into())))?;
            op = Some(drain_operator(node, &outs, &mut stats, &mut cx).await?);
        }
        if finishing {
            let held = op.as_ref().map_or(0, |o| o.held_rows());
            cx.check_ledger(&mut stats, held)?;
        }
        if finishing || !alive {
            end_outputs(&outs).await;
            let (b, bytes) = rx.max_depth();
            stats.max_queue_batches = b;
            stats.max_queue_bytes = bytes;
            return Ok(stats);
        }
    }
}

/// Tells each output this input has ended (for a fan-in's barrier alignment).
async fn end_outputs(outs: &[channel::Sender]) {
    for out in outs {
        let _ = out.mark(Item::End).await;
    }
}

/// Saves the operator's state for barrier `n`.
async fn snapshot(
    op: &mut Option<Box<dyn Operator>>,
    n: u64,
    cx: &mut NodeCx,
) -> Result<(), RunError> {
    let Some(b) = cx.shared.barriers.clone() else {
        return Ok(());
    };
    let dir = b.dir.join(format!("ck-{n:06}"));
    let node = op
        .take()
        .ok_or_else(|| cx.fail(NodeError::Bug("operator missing".into())))?;
    let (back, r) = on_blocking(&cx.name, node, move |mut op| {
        let r = std::fs::create_dir_all(&dir)
            .map_err(|e| NodeError::io(dir.display(), e))
            .and_then(|()| op.snapshot(&dir));
        (op, r)
    })
    .await
    .map_err(|e| cx.fail_run(e))?;
    *op = Some(back);
    let file = r.map_err(|e| cx.fail(e))?;
    b.operator_at(n, &cx.name, file);
    Ok(())
}

/// Sends what an operator call emitted; its dead letters hold the input's meta.
async fn emit(
    cx: &mut NodeCx,
    mut emitted: Emitter,
    input: Option<Meta>,
    outs: &[channel::Sender],
    stats: &mut NodeStats,
) -> Result<bool, RunError> {
    let letters = std::mem::take(&mut emitted.dead_letters);
    if !letters.is_empty() {
        cx.keep_letters(letters, input.into_iter().collect(), stats)?;
    }
    merge(stats, std::mem::take(&mut emitted.counters));
    stats.states.extend(std::mem::take(&mut emitted.states));
    let mut envelopes = Vec::new();
    for (batch, meta, _) in emitted.take_output() {
        if batch.num_rows() == 0 {
            continue;
        }
        cx.check_schema(&batch)?;
        envelopes.push(Envelope {
            batch,
            meta: meta.unwrap_or_default(),
        });
    }
    Ok(fan_out(envelopes, outs, stats).await)
}

/// After `finish`: calls [`Operator::drain`] until it has no more, sending each
/// piece downstream (under backpressure) before asking for the next.
async fn drain_operator(
    mut op: Box<dyn Operator>,
    outs: &[channel::Sender],
    stats: &mut NodeStats,
    cx: &mut NodeCx,
) -> Result<Box<dyn Operator>, RunError> {
    loop {
        let started = Instant::now();
        let (back, (result, emitted)) = on_blocking(&cx.name, op, |mut op| {
            let mut out = Emitter::default();
            let r = op.drain(&mut out);
            (op, (r, out))
        })
        .await
        .map_err(|e| cx.fail_run(e))?;
        op = back;
        stats.busy += started.elapsed();
        let more = result.map_err(|e| cx.fail(e))?;
        if !emit(cx, emitted, None, outs, stats).await? || !more {
            return Ok(op);
        }
    }
}

pub(super) async fn run_sink(
    sink: SinkNode,
    mut rx: channel::Receiver,
    mut stats: NodeStats,
    cx: NodeCx,
    restore: Option<String>,
    inputs: usize,
) -> Result<NodeStats, RunError> {
    let mut sink: Box<dyn AsyncSink> = match sink {
        SinkNode::Sync(s) => Box::new(crate::node::Blocking::sink(s)),
        SinkNode::Async(s) => s,
    };
    if let Some(state) = &restore {
        sink.restore(state).await.map_err(|e| cx.fail(e))?;
    }
    let durability = sink.durability();
    // With aligned checkpoints, barriers decide when to flush.
    let on_timer = durability == Durability::OnFlush && cx.shared.barriers.is_none();
    let interval = cx.settings.checkpoint_interval.0;
    let mut pending: Vec<Meta> = Vec::new();
    let mut last_flush = tokio::time::Instant::now();
    let mut log = SinkLog::new(&cx.name);
    let mut aligner = Aligner::new(inputs);
    loop {
        let input = if on_timer && !pending.is_empty() {
            tokio::time::timeout_at(last_flush + interval, aligner.next(&mut rx))
                .await
                .ok()
        } else {
            Some(aligner.next(&mut rx).await)
        };
        match input {
            // The flush interval passed with nothing new.
            None => {}
            Some(None) => {
                if cx.shared.has_failed() {
                    // The input ended because a node failed: dropping the sink
                    // unpublished leaves the previous output as it was.
                    return Ok(stats);
                }
                // Before the output is published: a record unaccounted for
                // fails the run.
                cx.check_ledger(&mut stats, 0)?;
                let started = Instant::now();
                let complete = !cx.control.is_stopped();
                if durability == Durability::OnFlush {
                    let state = sink.flush().await.map_err(|e| cx.fail(e))?;
                    publish_state(&cx, state);
                }
                sink.close(complete).await.map_err(|e| cx.fail(e))?;
                stats.busy += started.elapsed();
                log.finish(&cx);
                drop(pending);
                let (b, bytes) = rx.max_depth();
                stats.max_queue_batches = b;
                stats.max_queue_bytes = bytes;
                return Ok(stats);
            }
            // Everything before the barrier is made durable, and the state that
            // holds it goes with the checkpoint. A sink durable only on close
            // cannot take part: the checkpoint is never complete.
            Some(Some(Input::Barrier(_))) if durability == Durability::OnClose => {}
            Some(Some(Input::Barrier(n))) => {
                cx.check_ledger(&mut stats, 0)?;
                let started = Instant::now();
                let state = sink.flush().await.map_err(|e| cx.fail(e))?;
                stats.busy += started.elapsed();
                log.cut(&cx);
                pending.clear();
                if let Some(b) = &cx.shared.barriers {
                    b.sink_at(n, &cx.name, state);
                }
            }
            Some(Some(Input::Data(Envelope { batch, meta }))) => {
                stats.batches_in += 1;
                stats.rows_in += batch.num_rows() as u64;
                let started = Instant::now();
                let written = write_guarded(&mut sink, batch, &meta, &cx, &mut stats).await;
                stats.busy += started.elapsed();
                // Retries are counted, and refused records kept, whether the
                // write then succeeded or not.
                let refused = sink_report(&mut *sink, &cx, &meta, &mut stats)?;
                // On failure `meta` is still held: the run is marked failed first.
                // Rows the sink reported refused are dead letters, not written.
                let written = (written? as u64).saturating_sub(refused);
                if written > 0 {
                    stats.batches_out += 1;
                    stats.rows_out += written;
                    log.written(&cx, written, &meta.lineage);
                }
                cx.publish(&stats);
                match durability {
                    Durability::OnWrite => drop(meta),
                    Durability::OnFlush | Durability::OnClose => pending.push(meta),
                }
            }
        }
        if on_timer && !pending.is_empty() && last_flush.elapsed() >= interval {
            let started = Instant::now();
            let state = sink.flush().await.map_err(|e| cx.fail(e))?;
            stats.busy += started.elapsed();
            // The state is published before the tokens it covers are let go.
            publish_state(&cx, state);
            pending.clear();
            log.cut(&cx);
            last_flush = tokio::time::Instant::now();
        }
    }
}

/// Takes what a sink's last write left ([`AsyncSink::report`]): its dead
/// letters go to the store holding the batch's `meta` until they are durable,
/// its counters to the node's. Returns how many records it refused.
fn sink_report(
    sink: &mut dyn AsyncSink,
    cx: &NodeCx,
    meta: &Meta,
    stats: &mut NodeStats,
) -> Result<u64, RunError> {
    let mut report = Emitter::default();
    sink.report(&mut report);
    let letters = std::mem::take(&mut report.dead_letters);
    let refused = letters.len() as u64;
    if !letters.is_empty() {
        cx.keep_letters(letters, vec![meta.clone()], stats)?;
    }
    merge(stats, std::mem::take(&mut report.counters));
    Ok(refused)
}

/// The most rows a sink's write may refuse one by one in a batch before the
/// rest of the batch goes whole to its policy: each refusal costs a write of
/// what is left, and sinks are idempotent by key, so the bound is on cost.
const SINK_ISOLATIONS: usize = 64;

/// Writes `batch` with the sink's error policy ([`crate::node::policy`]):
/// transient failures retried through the host's retry loop; under `skip`, a
/// row the sink refuses (an error naming it) becomes a dead letter and the
/// rest is written again, and a failure naming no row dead-letters what is
/// left of the batch. Returns the rows written.
async fn write_guarded(
    sink: &mut Box<dyn AsyncSink>,
    batch: RecordBatch,
    meta: &Meta,
    cx: &NodeCx,
    stats: &mut NodeStats,
) -> Result<usize, RunError> {
    use crate::node::policy::{Action, Decision};
    let mut pending = batch;
    // Each pending row's place in the batch received.
    let mut rows: Vec<u32> = (0..pending.num_rows() as u32).collect();
    let mut isolated = 0;
    loop {
        let error = match write_retrying(sink, &pending, meta, cx, stats).await {
            Ok(()) => return Ok(pending.num_rows()),
            Err(e) => e,
        };
        if cx.on_error.decide(error.fault(), false) != Decision::Rows(Action::Skip) {
            return Err(cx.fail(error));
        }
        let named = match &error {
            NodeError::Data { row, .. } => *row,
            NodeError::Stage { row, .. } => row.map(|r| r as usize),
            _ => None,
        }
        .filter(|&r| r < pending.num_rows() && isolated < SINK_ISOLATIONS);
        let (refused, rest): (Vec<u32>, Vec<u32>) = match named {
            Some(r) => (
                vec![r as u32],
                (0..pending.num_rows() as u32)
                    .filter(|&i| i as usize != r)
                    .collect(),
            ),
            None => ((0..pending.num_rows() as u32).collect(), Vec::new()),
        };
        let take = |idx: &[u32]| {
            arrow::compute::take_record_batch(
                &pending,
                &arrow::array::UInt32Array::from(idx.to_vec()),
            )
            .map_err(|e| cx.fail(e.into()))
        };
        let mut letters = Emitter::default();
        let reason = if named.is_some() {
            "refused"
        } else {
            "unwritten"
        };
        for &i in &refused {
            let row = take(&[i])?;
            crate::ops::guard::skip_rows(
                &row,
                rows[i as usize] as usize,
                &error,
                reason,
                &mut letters,
            )
            .map_err(|e| cx.fail(e))?;
        }
        stats
            .counters
            .entry("rows_skipped".into())
            .and_modify(|n| *n += refused.len() as u64)
            .or_insert(refused.len() as u64);
        let kept = std::mem::take(&mut letters.dead_letters);
        merge(stats, std::mem::take(&mut letters.counters));
        cx.keep_letters(kept, vec![meta.clone()], stats)?;
        if rest.is_empty() {
            return Ok(0);
        }
        isolated += 1;
        pending = take(&rest)?;
        rows = rest.iter().map(|&i| rows[i as usize]).collect();
    }
}

/// One write, retried while the sink's policy says its failure is worth another
/// try.
async fn write_retrying(
    sink: &mut Box<dyn AsyncSink>,
    batch: &RecordBatch,
    meta: &Meta,
    cx: &NodeCx,
    stats: &mut NodeStats,
) -> Result<(), NodeError> {
    let Some(retry) = cx.on_error.retry.clone() else {
        return sink.write(batch, &meta.lineage).await;
    };
    let policy = cx.on_error.clone();
    let classify = move |e: &NodeError| match policy.decide(e.fault(), true) {
        crate::node::policy::Decision::Retry => crate::node::retry::Transience::Transient,
        _ => crate::node::retry::Transience::Permanent,
    };
    let mut retries = 0u64;
    let (_, r) = retry
        .run_with(&cx.name, &classify, sink, |sink, attempt| {
            if attempt.get() > 1 {
                retries += 1;
            }
            let (b, l) = (batch.clone(), meta.lineage.clone());
            async move {
                let r = sink.write(&b, &l).await;
                (sink, r)
            }
        })
        .await;
    if retries > 0 {
        *stats.counters.entry("retries".into()).or_default() += retries;
    }
    r.map_err(|g| g.error)
}

fn publish_state(cx: &NodeCx, state: Option<String>) {
    if let Some(state) = state {
        cx.shared
            .sink_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cx.name.clone(), state);
    }
}

/// A sink's lineage log: consecutive written rows sharing one lineage, merged
/// while their source spans continue each other.
struct SinkLog {
    sink: String,
    rows: u64,
    current: Option<LineageRecord>,
}

impl SinkLog {
    fn new(sink: &str) -> Self {
        Self {
            sink: sink.to_owned(),
            rows: 0,
            current: None,
        }
    }

    fn written(&mut self, cx: &NodeCx, rows: u64, lineage: &Lineage) {
        let first_row = self.rows;
        self.rows += rows;
        if let Some(cur) = &mut self.current {
            let l = &mut cur.lineage;
            let continues = l.pipeline == lineage.pipeline
                && l.version == lineage.version
                && l.stages == lineage.stages
                && l.sources.len() == lineage.sources.len()
                && l.sources
                    .iter()
                    .zip(&lineage.sources)
                    .all(|(a, b)| a.source == b.source && a.to == b.from);
            if continues {
                for (a, b) in l.sources.iter_mut().zip(&lineage.sources) {
                    a.to = b.to.clone();
                }
                cur.rows += rows;
                cx.control.log_written(cur);
                return;
            }
        }
        let next = LineageRecord {
            sink: self.sink.clone(),
            first_row,
            rows,
            lineage: lineage.clone(),
        };
        cx.control.log_written(&next);
        if let Some(done) = self.current.replace(next) {
            push_lineage(cx, done);
        }
    }

    /// Ends the current record at a flush point, so the store gets it with the
    /// checkpoint that covers it.
    fn cut(&mut self, cx: &NodeCx) {
        if let Some(done) = self.current.take() {
            push_lineage(cx, done);
        }
    }

    fn finish(&mut self, cx: &NodeCx) {
        self.cut(cx);
    }
}

fn push_lineage(cx: &NodeCx, record: LineageRecord) {
    cx.shared
        .lineage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

    use crate::node::{AsyncOperator, BoxFuture, Emitter, NodeError};
    use crate::plan::{NodeImpl, OperatorNode, Plan, RunEnv};

    /// Appends `m = 2n`, after waiting a second per batch on the runtime's timer.
    struct SlowDouble;

    fn doubled(input: &SchemaRef) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("m", DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }

    impl AsyncOperator for SlowDouble {
        fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
            Ok(Some(doubled(input)))
        }

        fn process<'a>(
            &'a mut self,
            batch: RecordBatch,
            out: &'a mut Emitter,
        ) -> BoxFuture<'a, Result<(), NodeError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = batch.column(0).as_primitive::<Int64Type>();
                let m = Int64Array::from_iter_values(n.values().iter().map(|v| v * 2));
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(m));
                out.push(RecordBatch::try_new(doubled(&batch.schema()), columns)?);
                out.count("lookups", 1);
                Ok(())
            })
        }
    }

    /// A toy async operator between a sequence and a file runs in the pipeline:
    /// every record comes out once, in order, exactly doubled; each batch's wait
    /// is on the runtime's (paused) clock, not a thread's.
    #[tokio::test(start_paused = true)]
    async fn an_async_operator_runs_in_a_pipeline_on_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
name = "async"
settings = { batch_rows = 10 }
[[source]]
name = "numbers"
[source.sequence]
count = 95
[[stage]]
name = "double"
input = "numbers"
[stage.split]
key = "n"
splits = [{ name = "all", fraction = 1.0 }]
[[sink]]
name = "out"
input = "double"
[sink.jsonl]
path = "out.jsonl"
"#;
        let mut spec = crate::spec::PipelineSpec::from_toml(text, "async.toml").unwrap();
        spec.base_dir = dir.path().to_path_buf();
        let env = RunEnv::standalone(
            crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap(),
            dir.path().join("data"),
        );
        let mut plan = Plan::build(spec, &env).unwrap();
        // The stage's place in the DAG, and the schemas from there on, become the
        // toy operator's.
        let at = plan
            .dag
            .nodes
            .iter()
            .position(|n| n.name == "double")
            .unwrap();
        let input = plan.schemas[plan.dag.nodes[at].inputs[0]].clone().unwrap();
        plan.nodes[at] = NodeImpl::Operator(OperatorNode::Async(Box::new(SlowDouble)));
        plan.schemas[at] = Some(doubled(&input));

        let started = tokio::time::Instant::now();
        let summary = crate::exec::run(plan, &env, &crate::exec::RunOptions::default())
            .await
            .unwrap();
        // Ten batches, each waiting one second of the runtime's clock.
        assert!(started.elapsed() >= Duration::from_secs(10));
        let stage = summary.node("double").unwrap();
        assert_eq!((stage.rows_in, stage.rows_out), (95, 95));
        assert_eq!(stage.counters.get("lookups"), Some(&10));

        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let expected: Vec<String> = (0..95)
            .map(|n| format!(r#"{{"n":{n},"m":{}}}"#, n * 2))
            .collect();
        assert_eq!(lines, expected);
    }
}

#[cfg(test)]
mod ledger_tests {
    use arrow::array::RecordBatch;

    use crate::node::{Emitter, NodeError, Operator};
    use crate::plan::{NodeImpl, OperatorNode, Plan, RunEnv};

    /// Passes each batch on without its last row, and says nothing of it: a
    /// bug the conservation ledger must catch.
    struct LosesARow;

    impl Operator for LosesARow {
        fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
            out.push(batch.slice(0, batch.num_rows().saturating_sub(1)));
            Ok(())
        }
    }

    fn plan(dir: &std::path::Path, lossy: bool) -> (Plan, RunEnv) {
        let text = r#"
name = "ledger"
settings = { batch_rows = 10 }
[[source]]
name = "numbers"
[source.sequence]
count = 95
[[stage]]
name = "keep"
input = "numbers"
[stage.filter]
all = [{ range = { column = "n", min = 5 } }]
[[sink]]
name = "out"
input = "keep"
[sink.jsonl]
path = "out.jsonl"
"#;
        let mut spec = crate::spec::PipelineSpec::from_toml(text, "ledger.toml").unwrap();
        spec.base_dir = dir.to_path_buf();
        let env = RunEnv::standalone(
            crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap(),
            dir.join("data"),
        );
        let mut plan = Plan::build(spec, &env).unwrap();
        if lossy {
            let at = plan
                .dag
                .nodes
                .iter()
                .position(|n| n.name == "keep")
                .unwrap();
            plan.nodes[at] = NodeImpl::Operator(OperatorNode::Sync(Box::new(LosesARow)));
        }
        (plan, env)
    }

    /// The ledger balances on a healthy run (rows filtered by design counted),
    /// and the summary prints it.
    #[tokio::test]
    async fn the_ledger_balances_and_is_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, env) = plan(dir.path(), false);
        let summary = crate::exec::run(plan, &env, &crate::exec::RunOptions::default())
            .await
            .unwrap();
        let keep = summary.node("keep").unwrap();
        assert_eq!((keep.rows_in, keep.rows_out), (95, 90));
        assert!(keep.ledger().balanced());
        let text = summary.to_string();
        assert!(
            text.contains(
                "ledger: in 95 = out 90 (fallen back 0) + filtered 5 + dead-lettered 0 + held 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("ledger: in 90 = written 90 + dead-lettered 0"),
            "{text}"
        );
        assert!(
            text.contains("ledger: read 95 = out 95 + dead-lettered 0 + blank 0"),
            "{text}"
        );
    }

    /// An operator that loses a row fails the run, naming itself and the numbers;
    /// the sink publishes nothing.
    #[tokio::test]
    async fn an_operator_that_loses_a_row_fails_the_run_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, env) = plan(dir.path(), true);
        let err = crate::exec::run(plan, &env, &crate::exec::RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.fault(), crate::node::Fault::Bug);
        assert_eq!(
            err.to_string(),
            "node `keep` failed: the conservation ledger of `keep` does not balance: in 95 ≠ out \
             85 (fallen back 0) + filtered 0 + dead-lettered 0 + held 0 (this is a bug in weir)"
        );
        assert!(!dir.path().join("out.jsonl").exists());
    }
}
