//! The node contract's default for rows held across a barrier
//! ([`crate::node::AtBarrier::Hold`]): an operator that keeps rows and neither
//! snapshots nor emits them cannot get a checkpoint committed over them.
//!
//! A real run of `source → mark → keep → sink`: `mark` snapshots (so the run
//! takes aligned checkpoints), `keep` is the operator under test. The source
//! reads one batch (position `p1`) and then waits; the test lets barriers pass
//! the sink, stops the run and reads what the checkpoint store was given.

use std::sync::{Arc, Mutex};

use arrow::array::{Int64Array, RecordBatch};
use tokio::sync::mpsc;

use crate::exec::{RunControl, RunOptions, RunSummary, run_with};
use crate::node::config::{SinkNode, SourceNode};
use crate::node::{
    AsyncSource, BoxError, BoxFuture, Checkpoint, CheckpointStore, Durability, Emitter, Lineage,
    LineageRecord, MetaSet, NodeError, Operator, Sink,
};
use crate::plan::{NodeImpl, Plan, RunEnv};

const PIPELINE: &str = r#"name = "held"
[settings]
checkpoint_interval = "5ms"

[[source]]
name = "events"
[source.jsonl]
path = "unused.jsonl"
schema = [{ name = "n", type = "int64", required = true }]

[[stage]]
name = "mark"
input = "events"
[stage.batch]

[[stage]]
name = "keep"
input = "mark"
[stage.batch]

[[sink]]
name = "out"
input = "keep"
[sink.jsonl]
path = "out.jsonl"
"#;

/// One batch of three rows at `p1`, then nothing until the run stops. It
/// says when its second read starts: the batch has been sent on by then.
struct OneBatch {
    batch: Option<RecordBatch>,
    sent: mpsc::UnboundedSender<()>,
}

impl AsyncSource for OneBatch {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.batch.as_ref().map_or_else(
            || Arc::new(arrow::datatypes::Schema::empty()),
            |b| b.schema(),
        )
    }

    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<bool, NodeError>> {
        Box::pin(async move {
            if let Some(b) = self.batch.take() {
                out.push_at(b, Some("p1".into()));
                return Ok(true);
            }
            let _ = self.sent.send(());
            std::future::pending().await
        })
    }
}

/// Passes batches through and snapshots an empty state: it makes the run
/// take aligned checkpoints.
struct Mark;

impl Operator for Mark {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        out.push(batch);
        Ok(())
    }

    fn begin_checkpoints(&mut self) -> bool {
        true
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        let file = dir.join("mark");
        std::fs::write(&file, b"").map_err(|e| NodeError::io(file.display(), e))?;
        Ok(file)
    }
}

/// Passes batches through; holds nothing.
struct Pass;

impl Operator for Pass {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        out.push(batch);
        Ok(())
    }
}

/// Keeps every row until its input ends, with their metas as [`Emitter`]
/// asks, and says nothing about barriers: the default.
#[derive(Default)]
struct Hoard {
    rows: Vec<RecordBatch>,
    metas: MetaSet,
}

impl Operator for Hoard {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.metas.push_input(out);
        self.rows.push(batch);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        for b in self.rows.drain(..) {
            out.push_with(b, self.metas.union());
        }
        Ok(())
    }

    /// What it hoards, for the conservation ledger at each barrier.
    fn held_rows(&self) -> usize {
        self.rows.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A sink durable at each flush, which reports each flush with the rows
/// written so far.
struct Flushes {
    rows: usize,
    flushed: mpsc::UnboundedSender<usize>,
}

impl Sink for Flushes {
    fn write(&mut self, batch: &RecordBatch, _: &Lineage) -> Result<(), NodeError> {
        self.rows += batch.num_rows();
        Ok(())
    }

    fn durability(&self) -> Durability {
        Durability::OnFlush
    }

    fn flush(&mut self) -> Result<Option<String>, NodeError> {
        let _ = self.flushed.send(self.rows);
        Ok(Some(self.rows.to_string()))
    }
}

/// Every checkpoint saved, in order.
#[derive(Default)]
struct Saved(Mutex<Vec<Checkpoint>>);

impl CheckpointStore for Saved {
    fn load(&self, _: &str) -> Result<Option<Checkpoint>, BoxError> {
        Ok(self.0.lock().unwrap().last().cloned())
    }

    fn save(&self, checkpoint: &Checkpoint, _: &[LineageRecord]) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(checkpoint.clone());
        Ok(())
    }

    fn clear(&self, _: &str) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Runs the pipeline with `keep`, lets three barriers pass the sink after the
/// source's batch went out, stops it; the checkpoints saved and the summary.
async fn run_with_keep(keep: Box<dyn Operator>) -> (Vec<Checkpoint>, RunSummary) {
    let mut keep = Some(keep);
    let dir = tempfile::tempdir().unwrap();
    // The file source the plan opens is replaced before the run.
    std::fs::write(dir.path().join("unused.jsonl"), "").unwrap();
    let mut spec = crate::spec::PipelineSpec::from_toml(PIPELINE, "pipeline.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = RunEnv::standalone(
        crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap(),
        dir.path().join("data"),
    );
    let mut plan = Plan::build(spec, &env).unwrap();
    let schema = plan.schemas[0].clone().unwrap();
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
    let (sent, mut batch_sent) = mpsc::unbounded_channel();
    let (flushed, mut flushes) = mpsc::unbounded_channel();
    let names: Vec<String> = plan.dag.nodes.iter().map(|n| n.name.clone()).collect();
    for (node, name) in plan.nodes.iter_mut().zip(&names) {
        *node = match name.as_str() {
            "events" => NodeImpl::Source(SourceNode::Async(Box::new(OneBatch {
                batch: Some(batch.clone()),
                sent: sent.clone(),
            }))),
            "mark" => NodeImpl::Operator(crate::node::config::OperatorNode::Sync(Box::new(Mark))),
            "keep" => NodeImpl::Operator(crate::node::config::OperatorNode::Sync(
                keep.take().unwrap(),
            )),
            _ => NodeImpl::Sink(SinkNode::Sync(Box::new(Flushes {
                rows: 0,
                flushed: flushed.clone(),
            }))),
        };
    }
    let store = Arc::new(Saved::default());
    let options = RunOptions {
        progress: false,
        checkpoints: Some(store.clone()),
        resume: false,
        ..RunOptions::default()
    };
    let control = RunControl::new();
    let run = tokio::spawn({
        let control = control.clone();
        async move { run_with(plan, &env, &options, control).await }
    });
    batch_sent.recv().await.unwrap();
    for _ in 0..3 {
        flushes.recv().await.unwrap();
    }
    control.stop();
    let summary = run.await.unwrap().unwrap();
    let saved = store.0.lock().unwrap().clone();
    (saved, summary)
}

fn positions(saved: &[Checkpoint]) -> Vec<Option<String>> {
    saved
        .iter()
        .map(|c| c.sources.get("events").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_holds_rows_without_a_snapshot_holds_the_checkpoint_back() {
    let (saved, summary) = run_with_keep(Box::new(Hoard::default())).await;
    assert!(
        positions(&saved).iter().all(|p| p.as_deref() != Some("p1")),
        "a checkpoint committed `p1` while `keep` held its rows: {saved:?}"
    );
    assert!(
        summary.checkpoints_held >= 2,
        "{}",
        summary.checkpoints_held
    );
    // The rows went out when the input ended, after the last barrier.
    assert_eq!(summary.node("out").unwrap().rows_in, 3);
}

/// The same run with an operator that passes rows on: the checkpoint after
/// the batch is saved (so the test above can see a commit when there is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_holds_nothing_lets_the_checkpoint_through() {
    let (saved, summary) = run_with_keep(Box::new(Pass)).await;
    assert!(
        positions(&saved).iter().any(|p| p.as_deref() == Some("p1")),
        "{saved:?}"
    );
    assert_eq!(summary.checkpoints_held, 0);
}
