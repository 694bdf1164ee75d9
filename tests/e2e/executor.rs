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
    /// Told when the source starts waiting: the test stops it then.
    waiting: std::sync::Arc<tokio::sync::Notify>,
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
                self.waiting.notify_one();
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
    let waiting = std::sync::Arc::new(tokio::sync::Notify::new());
    plan.nodes[0] = weir::exec::NodeImpl::Source(weir::plan::SourceNode::Async(Box::new(Quiet {
        schema,
        sent: false,
        waiting: waiting.clone(),
    })));
    let control = weir::exec::RunControl::new();
    let run = tokio::spawn({
        let control = control.clone();
        async move {
            weir::exec::run_with(plan, &env, &weir::exec::RunOptions::default(), control).await
        }
    });
    control.started().await;
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting.notified())
        .await
        .expect("the source sends its batch and waits for more");
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

/// An async source that sends its script's batches, each after its wait on
/// tokio's clock, then waits for input that never comes. It records when it
/// sent its first batch.
struct Scripted {
    schema: arrow::datatypes::SchemaRef,
    script: std::collections::VecDeque<(std::time::Duration, Vec<i64>)>,
    started: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

impl weir::node::AsyncSource for Scripted {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut weir::exec::Emitter,
    ) -> weir::node::BoxFuture<'a, Result<bool, weir::exec::NodeError>> {
        Box::pin(async move {
            let Some((wait, rows)) = self.script.pop_front() else {
                return std::future::pending().await;
            };
            tokio::time::sleep(wait).await;
            let _ = self.started.set(tokio::time::Instant::now());
            let last = *rows.last().unwrap();
            let batch = arrow::array::RecordBatch::try_new(
                self.schema.clone(),
                vec![std::sync::Arc::new(arrow::array::Int64Array::from(rows))],
            )?;
            out.push_at(batch, Some(last.to_string()));
            Ok(true)
        })
    }
}

/// A sink that hands each batch's `n` values to the test.
struct Forward(tokio::sync::mpsc::UnboundedSender<Vec<i64>>);

impl weir::exec::Sink for Forward {
    fn write(
        &mut self,
        batch: &arrow::array::RecordBatch,
        _lineage: &weir::node::Lineage,
    ) -> Result<(), weir::exec::NodeError> {
        use arrow::array::AsArray;
        let n = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let _ = self.0.send(n.values().to_vec());
        Ok(())
    }
}

/// `batch` with `linger`, on a paused clock: a partial batch goes out when its
/// oldest row has waited `linger` (rows arriving meanwhile join it, they do not
/// restart the timer), a full batch goes out at once, and what is left of it
/// waits `linger` again.
#[tokio::test(start_paused = true)]
async fn a_partial_batch_goes_out_when_its_oldest_row_has_lingered() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "linger"
[[source]]
name = "numbers"
[source.sequence]
count = 1
[[stage]]
name = "rebatch"
input = "numbers"
[stage.batch]
max_rows = 10
linger = "50ms"
[[sink]]
name = "out"
input = "rebatch"
[sink.jsonl]
path = "unused.jsonl"
"#;
    let mut spec = weir::spec::PipelineSpec::from_toml(text, "test.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = weir_e2e::env(dir.path());
    let mut plan = weir::exec::Plan::build(spec, &env).unwrap();
    let schema = plan.schemas[0].clone().unwrap();
    let started = std::sync::Arc::new(std::sync::OnceLock::new());
    let ms = Duration::from_millis;
    plan.nodes[0] =
        weir::exec::NodeImpl::Source(weir::plan::SourceNode::Async(Box::new(Scripted {
            schema,
            script: [
                (ms(0), vec![1, 2, 3]),
                (ms(30), vec![4, 5]),
                (ms(100), (6..=17).collect()),
            ]
            .into(),
            started: started.clone(),
        })));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    *plan.nodes.last_mut().unwrap() =
        weir::exec::NodeImpl::Sink(weir::plan::SinkNode::Sync(Box::new(Forward(tx))));
    let control = weir::exec::RunControl::new();
    let run = tokio::spawn({
        let control = control.clone();
        async move {
            weir::exec::run_with(plan, &env, &weir::exec::RunOptions::default(), control).await
        }
    });
    let mut arrivals = Vec::new();
    for _ in 0..3 {
        let rows = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a batch within a minute of virtual time")
            .expect("the run goes on");
        let at = tokio::time::Instant::now() - *started.get().unwrap();
        arrivals.push((at, rows));
    }
    assert_eq!(
        arrivals,
        [
            (ms(50), vec![1, 2, 3, 4, 5]),
            (ms(130), (6..=15).collect()),
            (ms(180), vec![16, 17]),
        ]
    );
    control.stop();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the stop ends the run")
        .unwrap()
        .unwrap();
    assert_eq!(summary.node("out").unwrap().rows_out, 17);
}

/// A dead-letter store kept in memory, as a host would give one.
#[derive(Default)]
struct Kept(std::sync::Mutex<Vec<weir::node::DeadLetterRecord>>);

impl weir::node::DeadLetterStore for Kept {
    fn append(
        &self,
        records: Vec<weir::node::DeadLetterRecord>,
        _hold: Vec<weir::node::Meta>,
    ) -> Result<(), weir::node::DeadLetterError> {
        // Kept in memory: durable as soon as it is here, so the hold goes.
        self.0.lock().unwrap().extend(records);
        Ok(())
    }

    fn flush(&self) -> Result<(), weir::node::DeadLetterError> {
        Ok(())
    }

    fn location(&self, pipeline: &str, node: &str) -> String {
        format!("memory:{pipeline}/{node}")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_given_by_the_host_receives_typed_records_and_rejects_files_still_get_theirs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"k\":1}\nnot json\n{\"k\":-2}\n{\"k\":3}\n",
    )
    .unwrap();
    let mut spec = weir::spec::PipelineSpec::from_toml(
        r#"
name = "typed"
[[source]]
name = "in"
[source.jsonl]
path = "in.jsonl"
rejects = "rejects.jsonl"
schema = [{ name = "k", type = "int64", required = true }]
[[stage]]
name = "positive"
input = "in"
[stage.filter]
dead_letter = true
all = [{ range = { column = "k", min = 0 } }]
[[sink]]
name = "out"
input = "positive"
[sink.jsonl]
path = "out.jsonl"
"#,
        "typed.toml",
    )
    .unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = weir_e2e::env(dir.path());
    let plan = weir::plan::Plan::build(spec, &env).unwrap();
    let kept = std::sync::Arc::new(Kept::default());
    let options = weir::exec::RunOptions {
        dead_letters: Some(kept.clone()),
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let summary = weir::exec::run(plan, &env, &options).await.unwrap();
    let records = kept.0.lock().unwrap().clone();
    // Tenant, node, fault, reason, position, payload.
    type Seen<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a [u8]);
    let seen: Vec<Seen> = records
        .iter()
        .map(|r| {
            (
                r.tenant.as_str(),
                r.node.as_str(),
                r.fault.as_str(),
                r.reason.as_str(),
                r.position.as_str(),
                r.payload.bytes(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "acme",
                "in",
                "data",
                "invalid_json",
                "in.jsonl:2",
                &b"not json"[..]
            ),
            (
                "acme",
                "positive",
                "data",
                "filter:range(k)",
                "row 1",
                &b"{\"k\":-2}"[..]
            ),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.pipeline == "typed" && r.version.is_none() && r.component.is_none())
    );
    // The source's own file is kept as an export of its letters alone.
    let rejects = read_jsonl(&dir.path().join("rejects.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["tenant"], "acme");
    assert_eq!(rejects[0]["fault"], "data");
    assert_eq!(rejects[0]["record"], "not json");
    // Counted by fault in the summary; no run file, since the host keeps them.
    assert_eq!(
        summary.dead_letters_by_fault(),
        std::collections::BTreeMap::from([("data", 2)])
    );
    assert!(summary.dead_letter_file.is_none());
    assert!(
        summary
            .to_string()
            .contains("dead letters by fault: data 2"),
        "{summary}"
    );
}
