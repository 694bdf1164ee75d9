//! The executor's plumbing: fan-out, fan-in, clean shutdown, dead letters.

use serde_json::Value;
use weir_e2e::run_toml;

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_and_fan_in_deliver_every_row_once_per_reader() {
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<String> = (0..1000).map(|i| format!(r#"{{"k":{i}}}"#)).collect();
    let b: Vec<String> = (1000..1500).map(|i| format!(r#"{{"k":{i}}}"#)).collect();
    std::fs::write(dir.path().join("a.jsonl"), a.join("\n")).unwrap();
    std::fs::write(dir.path().join("b.jsonl"), b.join("\n") + "\nnot json\n").unwrap();
    let text = r#"
name = "fan"
[settings]
channel_batches = 1
channel_bytes = "4KiB"
[[source]]
name = "a"
[source.jsonl]
path = "a.jsonl"
batch_rows = 7
schema = [{ name = "k", type = "int64", required = true }]
[[source]]
name = "b"
[source.jsonl]
path = "b.jsonl"
batch_rows = 13
rejects = "rejects/b.jsonl"
schema = [{ name = "k", type = "int64", required = true }]
[[sink]]
name = "all"
inputs = ["a", "b"]
[sink.jsonl]
path = "all.jsonl"
[[sink]]
name = "only_a"
input = "a"
[sink.jsonl]
path = "only_a.jsonl"
"#;
    let summary = run_toml(text, dir.path()).await.unwrap();
    let mut all: Vec<i64> = read_jsonl(&dir.path().join("all.jsonl"))
        .iter()
        .map(|v| v["k"].as_i64().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..1500).collect::<Vec<_>>());
    // A single input keeps its order.
    let only_a: Vec<i64> = read_jsonl(&dir.path().join("only_a.jsonl"))
        .iter()
        .map(|v| v["k"].as_i64().unwrap())
        .collect();
    assert_eq!(only_a, (0..1000).collect::<Vec<_>>());

    assert_eq!(summary.node("a").unwrap().rows_out, 1000);
    assert_eq!(summary.node("a").unwrap().batches_out, 143);
    assert_eq!(summary.node("all").unwrap().rows_in, 1500);
    assert_eq!(summary.corrupt(), 1);
    // The source's own rejects file holds its corrupt line.
    let rejects = read_jsonl(&dir.path().join("rejects/b.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["reason"], "invalid_json");
    assert_eq!(rejects[0]["position"], "b.jsonl:501");
    assert_eq!(rejects[0]["record"], "not json");
    assert!(summary.dead_letter_file.is_none());
    let rendered = summary.to_string();
    assert!(
        rendered.contains("1500 records in, 1 corrupt"),
        "{rendered}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_input_file_fails_before_running_and_names_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "missing"
[[source]]
name = "gone"
[source.jsonl]
path = "nope.jsonl"
schema = [{ name = "k", type = "int64" }]
[[sink]]
name = "out"
input = "gone"
[sink.jsonl]
path = "out.jsonl"
"#;
    let err = run_toml(text, dir.path()).await.unwrap_err().to_string();
    assert!(err.starts_with("`gone`: "), "{err}");
    assert!(err.contains("nope.jsonl"), "{err}");
}

/// An async source that emits one batch and then waits for input that never
/// comes, as a broker consumer on a quiet stream does.
struct Quiet {
    schema: arrow::datatypes::SchemaRef,
    sent: bool,
}

impl weir::node::AsyncSource for Quiet {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut weir::exec::Emitter,
    ) -> weir::node::BoxFuture<'a, Result<bool, weir::exec::NodeError>> {
        Box::pin(async move {
            if self.sent {
                std::future::pending::<()>().await;
            }
            self.sent = true;
            let batch = arrow::array::RecordBatch::try_new(
                self.schema.clone(),
                vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![
                    1, 2, 3,
                ]))],
            )?;
            out.push_at(batch, Some("3".into()));
            Ok(true)
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_interrupts_a_source_waiting_for_input() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "quiet"
[[source]]
name = "numbers"
[source.sequence]
count = 3
[[sink]]
name = "out"
input = "numbers"
[sink.jsonl]
path = "out.jsonl"
"#;
    let mut spec = weir::spec::PipelineSpec::from_toml(text, "test.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = weir_e2e::env(dir.path());
    let mut plan = weir::exec::Plan::build(spec, &env).unwrap();
    let schema = plan.schemas[0].clone().unwrap();
    plan.nodes[0] = weir::exec::NodeImpl::Source(weir::plan::SourceNode::Async(Box::new(Quiet {
        schema,
        sent: false,
    })));
    let control = weir::exec::RunControl::new();
    let run = tokio::spawn({
        let control = control.clone();
        async move {
            weir::exec::run_with(plan, &env, &weir::exec::RunOptions::default(), control).await
        }
    });
    control.started().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let asked = std::time::Instant::now();
    control.stop();
    let summary = tokio::time::timeout(std::time::Duration::from_secs(5), run)
        .await
        .expect("the stop interrupts the waiting source")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(summary.node("out").unwrap().rows_out, 3);
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        out.lines().count(),
        3,
        "what was read before the stop is written"
    );
}
