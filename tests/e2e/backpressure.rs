//! Backpressure: a fast source in front of a deliberately slow native stage. The
//! queue in front of the stage never holds more than its bound, the source spends
//! most of the run blocked, and the source's rate falls to the stage's rate.

use std::time::Duration;

use arrow::array::RecordBatch;
use weir::exec::{Emitter, NodeError, NodeImpl, Operator, Plan, RunOptions};
use weir::spec::PipelineSpec;
use weir_e2e::env;

/// Passes batches through, sleeping first: a stage slower than its source.
struct Slow(Duration);

impl Operator for Slow {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        std::thread::sleep(self.0);
        out.push(batch);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_stage_slows_the_source_to_its_rate_with_bounded_queues() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"k":{i},"s":"some text to make rows wider"}}"#))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).unwrap();
    let text = r#"
name = "backpressure"
[settings]
channel_batches = 2
channel_bytes = "1MiB"
batch_rows = 100
[[source]]
name = "fast"
[source.jsonl]
path = "in.jsonl"
schema = [{ name = "k", type = "int64" }, { name = "s", type = "utf8" }]
[[stage]]
name = "slow"
input = "fast"
[stage.sort]
by = [{ column = "k" }]
[[sink]]
name = "out"
input = "slow"
[sink.jsonl]
path = "out.jsonl"
"#;
    let mut spec = PipelineSpec::from_toml(text, "test.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = env(dir.path());
    let mut plan = Plan::build(spec, &env).unwrap();
    let slow = plan
        .dag
        .nodes
        .iter()
        .position(|n| n.name == "slow")
        .unwrap();
    plan.nodes[slow] = NodeImpl::Operator(weir::plan::OperatorNode::Sync(Box::new(Slow(
        Duration::from_millis(5),
    ))));
    let summary = weir::exec::run(plan, &env, &RunOptions::default())
        .await
        .unwrap();

    let source = summary.node("fast").unwrap();
    let stage = summary.node("slow").unwrap();
    assert_eq!(stage.rows_out, 20_000);
    // Memory stays bounded: the queue never held more than its bound.
    assert!(stage.max_queue_batches <= 2, "{}", stage.max_queue_batches);
    assert!(stage.max_queue_bytes.0 <= 1 << 20);
    // The source spent most of the run waiting for room …
    let wall = summary.wall.as_secs_f64();
    assert!(
        source.blocked.as_secs_f64() > 0.6 * wall,
        "blocked {:?} of {wall}s",
        source.blocked
    );
    // … so it read at the stage's pace, not its own.
    let stage_rate = stage.rows_in as f64 / stage.busy.as_secs_f64();
    let source_rate = source.rows_out as f64 / wall;
    let source_alone = source.rows_out as f64 / source.busy.as_secs_f64();
    assert!(
        source_rate <= 1.1 * stage_rate,
        "source {source_rate:.0}/s, stage {stage_rate:.0}/s"
    );
    assert!(
        source_alone > 3.0 * stage_rate,
        "the source alone is much faster: {source_alone:.0}/s"
    );
    println!(
        "source alone {source_alone:.0} rows/s; stage {stage_rate:.0} rows/s; source in the run {source_rate:.0} rows/s"
    );
}
