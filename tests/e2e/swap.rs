//! Hot swap in a running pipeline: new parameters, new code and a rollback take
//! effect between batches, with no record lost or repeated; broken swaps are
//! refused or rolled back while the pipeline keeps delivering.
//!
//! The pipeline: an unbounded `[source.sequence]` of numbered records at a steady
//! rate → the hostile fixture in `tag` mode (appends `tag` = its `tag` parameter,
//! so each output row shows which version processed it) → a recording sink.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use weir::exec::{
    NodeError, NodeImpl, Plan, RunControl, RunOptions, RunSummary, Sink, StageChange, SwapError,
};
use weir::node::Lineage;
use weir::ops::wasm::prepare_stage;
use weir::plan::SinkNode;
use weir::sandbox::{Grants, StageLimits};
use weir::spec::PipelineSpec;
use weir_e2e::{component, env, sandbox, toml_path};

const HOSTILE: &str = "tests/fixtures/hostile";
const NOOP: &str = "tests/fixtures/noop";
const BATCH: usize = 50;

/// What the sink saw: per batch, its arrival time and its `(n, tag)` rows.
type Seen = Arc<Mutex<Vec<(Instant, Vec<(i64, i64)>)>>>;

struct Recorder(Seen);

impl Sink for Recorder {
    fn write(&mut self, batch: &RecordBatch, _lineage: &Lineage) -> Result<(), NodeError> {
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        let tag = batch
            .column_by_name("tag")
            .unwrap()
            .as_primitive::<Int64Type>();
        let rows = n
            .values()
            .iter()
            .copied()
            .zip(tag.values().iter().copied())
            .collect();
        self.0.lock().unwrap().push((Instant::now(), rows));
        Ok(())
    }
}

fn tag_params(tag: i64) -> String {
    format!(r#"{{"mode":"tag","tag":{tag}}}"#)
}

/// The same component with a custom section appended: new bytes, a new digest,
/// the same behaviour; it stands for "new code" of the stage.
pub(crate) fn new_code(bytes: &[u8]) -> Vec<u8> {
    let name = b"weir-test-revision";
    let payload = b"2";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

struct Running {
    control: RunControl,
    seen: Seen,
    task: tokio::task::JoinHandle<Result<RunSummary, weir::exec::RunError>>,
    _dir: tempfile::TempDir,
}

async fn start(rate: u32) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
name = "swap"
[[source]]
name = "numbers"
[source.sequence]
rate = {rate}
batch_rows = {BATCH}

[[stage]]
name = "tag"
input = "numbers"
[stage.wasm]
component = {}
params = {{ mode = "tag", tag = 1 }}

[[sink]]
name = "out"
input = "tag"
[sink.jsonl]
path = "unused.jsonl"
"#,
        toml_path(&component(HOSTILE))
    );
    let mut spec = PipelineSpec::from_toml(&text, "swap.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = env(dir.path());
    let mut plan = tokio::task::spawn_blocking({
        let env = env.clone();
        move || Plan::build(spec, &env)
    })
    .await
    .unwrap()
    .unwrap();
    let seen: Seen = Arc::default();
    *plan.nodes.last_mut().unwrap() =
        NodeImpl::Sink(SinkNode::Sync(Box::new(Recorder(seen.clone()))));
    let control = RunControl::new();
    let task = tokio::spawn({
        let control = control.clone();
        async move { weir::exec::run_with(plan, &env, &RunOptions::default(), control).await }
    });
    control.started().await;
    Running {
        control,
        seen,
        task,
        _dir: dir,
    }
}

async fn stage(bytes: Vec<u8>, params: String) -> Result<StageChange, SwapError> {
    tokio::task::spawn_blocking(move || {
        prepare_stage(
            &sandbox(),
            &bytes,
            "tag",
            &params,
            StageLimits::default(),
            Grants::default(),
        )
        .map(|s| StageChange::Stage(Box::new(s)))
    })
    .await
    .unwrap()
}

async fn stop(r: Running) -> (RunSummary, Vec<(Instant, Vec<(i64, i64)>)>) {
    r.control.stop();
    let summary = r.task.await.unwrap().unwrap();
    let seen = std::mem::take(&mut *r.seen.lock().unwrap());
    (summary, seen)
}

/// Every record number from 0 appears exactly once, in order.
fn assert_exactly_once(seen: &[(Instant, Vec<(i64, i64)>)]) -> Vec<(i64, i64)> {
    let rows: Vec<(i64, i64)> = seen.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    let numbers: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        numbers,
        (0..rows.len() as i64).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    rows
}

/// Waits until the sink has received `more` batches beyond those it had, so
/// the version running now has written some; fails after a minute.
async fn batches_pass(r: &Running, more: usize) {
    let target = r.seen.lock().unwrap().len() + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.seen.lock().unwrap().len() < target {
        assert!(
            Instant::now() < deadline,
            "fewer than {more} batches in a minute"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort();
    xs.get(((xs.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn params_code_and_rollback_swaps_change_versions_only_between_batches() {
    let original = std::fs::read(component(HOSTILE)).unwrap();
    let r = start(4000).await;
    let mut swap_times = Vec::new();
    let mut first_batches = Vec::new();

    batches_pass(&r, 20).await;
    swap_times.push(Instant::now());
    let a = r
        .control
        .swap("tag", StageChange::Params(tag_params(2)))
        .await
        .expect("params swap");
    first_batches.push(a.first_batch.unwrap());

    batches_pass(&r, 20).await;
    let code = stage(new_code(&original), tag_params(3)).await.unwrap();
    swap_times.push(Instant::now());
    let b = r.control.swap("tag", code).await.expect("code swap");
    assert_ne!(b.digest, a.digest, "new code has a new digest");
    first_batches.push(b.first_batch.unwrap());

    batches_pass(&r, 20).await;
    let back = stage(original.clone(), tag_params(1)).await.unwrap();
    swap_times.push(Instant::now());
    let c = r.control.swap("tag", back).await.expect("rollback");
    assert_eq!(c.digest, a.digest);
    first_batches.push(c.first_batch.unwrap());

    batches_pass(&r, 20).await;
    let lineage = r.control.lineage_log();
    let (summary, seen) = stop(r).await;
    let rows = assert_exactly_once(&seen);

    // Versions change only at batch boundaries, in swap order, where the swap
    // replies said they did.
    let mut runs: Vec<(i64, usize)> = Vec::new(); // (tag, first row)
    for (i, &(_, tag)) in rows.iter().enumerate() {
        if runs.last().is_none_or(|l| l.0 != tag) {
            runs.push((tag, i));
        }
    }
    let tags: Vec<i64> = runs.iter().map(|r| r.0).collect();
    assert_eq!(tags, [1, 2, 3, 1]);
    let changes: Vec<usize> = runs[1..].iter().map(|r| r.1).collect();
    let expected: Vec<usize> = first_batches.iter().map(|&b| b as usize * BATCH).collect();
    assert_eq!(changes, expected);
    assert!(
        seen.iter().all(|(_, b)| b.iter().all(|r| r.1 == b[0].1)),
        "one version per batch"
    );
    assert_eq!(summary.node("tag").unwrap().rows_out, rows.len() as u64);

    // Lineage names the code and parameters of each span of output rows.
    let digests: Vec<&str> = lineage
        .iter()
        .map(|l| l.lineage.stages[0].digest.as_str())
        .collect();
    let mut distinct = digests.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [a.digest.as_str(), b.digest.as_str(), a.digest.as_str()]
    );
    assert_eq!(lineage[0].first_row, 0);
    assert_eq!(
        lineage[0].lineage.sources[0].from, None,
        "the first span starts at the beginning"
    );
    assert_eq!(lineage[1].first_row as usize, changes[0]);

    // Latency: the longest gap between output batches around a swap, versus the
    // steady state (printed, not asserted: timing on a shared machine is noisy).
    let arrivals: Vec<Instant> = seen.iter().map(|(t, _)| *t).collect();
    let gaps: Vec<(Instant, Duration)> = arrivals.windows(2).map(|w| (w[1], w[1] - w[0])).collect();
    let near_swap = |t: Instant| {
        swap_times
            .iter()
            .any(|&s| t >= s && t <= s + Duration::from_millis(60))
    };
    let (swap_gaps, steady): (Vec<Duration>, Vec<Duration>) = (
        gaps.iter()
            .filter(|(t, _)| near_swap(*t))
            .map(|g| g.1)
            .collect(),
        gaps.iter()
            .filter(|(t, _)| !near_swap(*t))
            .map(|g| g.1)
            .collect(),
    );
    println!(
        "swap latency: {} batches of {BATCH} rows at 4000 rows/s; steady gap p50 {:?} p99 {:?} max {:?}; \
         during swaps gap max {:?} p99 {:?}",
        arrivals.len(),
        percentile(steady.clone(), 0.5),
        percentile(steady.clone(), 0.99),
        steady.iter().max().unwrap(),
        swap_gaps.iter().max().copied().unwrap_or_default(),
        percentile(swap_gaps, 0.99),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_swaps_are_refused_or_rolled_back_and_delivery_goes_on() {
    let original = std::fs::read(component(HOSTILE)).unwrap();
    let r = start(4000).await;
    batches_pass(&r, 3).await;

    // Fails validation: not a component at all. Refused before reaching the run.
    let err = stage(b"\0asm not really".to_vec(), tag_params(9))
        .await
        .expect_err("invalid bytes are refused");
    assert!(matches!(err, SwapError::Load { .. }), "{err}");

    // Fails `init`, as new code: refused off the hot path.
    let err = stage(new_code(&original), r#"{"mode":"fail_init"}"#.to_owned())
        .await
        .expect_err("init fails");
    assert!(
        err.to_string()
            .contains("refusing to start: fail_init mode"),
        "{err}"
    );

    // Fails `init`, as new parameters: refused by the running stage, which keeps
    // its old instance.
    let err = r
        .control
        .swap(
            "tag",
            StageChange::Params(r#"{"mode":"fail_init"}"#.to_owned()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SwapError::Start { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("refusing to start: fail_init mode"),
        "{err}"
    );

    // Traps on its first batch: rolled back, and that batch is processed again on
    // the previous version.
    let err = r
        .control
        .swap("tag", StageChange::Params(r#"{"mode":"panic"}"#.to_owned()))
        .await
        .unwrap_err();
    assert!(matches!(err, SwapError::RolledBack { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("hostile stage panicked on purpose"),
        "{err}"
    );
    let panicking = stage(new_code(&original), r#"{"mode":"panic"}"#.to_owned())
        .await
        .unwrap();
    let err = r.control.swap("tag", panicking).await.unwrap_err();
    assert!(matches!(err, SwapError::RolledBack { .. }), "{err}");

    // An unknown stage is named.
    let err = r
        .control
        .swap("tga", StageChange::Params(tag_params(2)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no swappable stage `tga` in the running pipeline (stages: tag)"
    );

    batches_pass(&r, 3).await;
    let (summary, seen) = stop(r).await;
    let rows = assert_exactly_once(&seen);
    assert!(
        rows.len() > 2 * BATCH,
        "kept delivering: {} rows",
        rows.len()
    );
    assert!(rows.iter().all(|r| r.1 == 1), "every row by version 1");
    assert_eq!(summary.node("tag").unwrap().counters["swap:rolled_back"], 2);
}

/// Features from version 1, then 2, then rolled back to 1 are identical to the
/// first run's: a version pins its components by digest in the store. Both
/// versions name the same component file, which holds the `tag` fixture for
/// version 1 and is then overwritten with the `noop` fixture (no `tag` column)
/// for version 2: a rollback that read the file instead of the pinned digest
/// would write version 2's rows.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_reproduces_the_first_versions_features() {
    use weir::store::{Store, pin};
    const ROWS: i64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stage.wasm");
    let text = format!(
        "name = \"pinned\"\n[[source]]\nname = \"numbers\"\n[source.sequence]\ncount = {ROWS}\nbatch_rows = 64\n\
         [[stage]]\nname = \"tag\"\ninput = \"numbers\"\n[stage.wasm]\ncomponent = {}\nparams = {{ mode = \"tag\", tag = 1 }}\n\
         [[sink]]\nname = \"out\"\ninput = \"tag\"\n[sink.jsonl]\npath = \"out.jsonl\"\n",
        toml_path(&file)
    );
    let mut env = env(dir.path());
    let store = Store::open(&env.data_dir).unwrap();
    env.store = Some(store.clone());
    let run_active = |env: weir::exec::RunEnv, store: Store| async move {
        let version = store
            .version("pinned", store.active("pinned").unwrap().unwrap())
            .unwrap();
        let plan = tokio::task::spawn_blocking({
            let env = env.clone();
            move || Plan::build(version.runnable_spec(), &env)
        })
        .await
        .unwrap()
        .unwrap();
        weir::exec::run(plan, &env, &RunOptions::default())
            .await
            .unwrap();
        std::fs::read_to_string(env.data_dir.parent().unwrap().join("out.jsonl")).unwrap()
    };
    let mut outputs = Vec::new();
    let mut digests = Vec::new();
    for fixture in [HOSTILE, NOOP] {
        std::fs::copy(component(fixture), &file).unwrap();
        let mut spec = PipelineSpec::from_toml(&text, "p.toml").unwrap();
        spec.base_dir = dir.path().to_path_buf();
        let (pinned, stages) = pin(&spec, &store, &sandbox()).unwrap();
        let pinned_to = pinned.stages[0].wasm().unwrap().component.clone().unwrap();
        assert!(
            pinned_to.to_str().unwrap().starts_with("sha256:"),
            "{}",
            pinned_to.display()
        );
        digests.push(pinned_to);
        store
            .add_version(pinned, stages, Default::default(), "test", None)
            .unwrap();
        outputs.push(run_active(env.clone(), store.clone()).await);
    }
    assert_ne!(digests[0], digests[1], "two different components");
    let lines = |row: &dyn Fn(i64) -> String| (0..ROWS).map(|n| row(n) + "\n").collect::<String>();
    let version_1 = lines(&|n| format!(r#"{{"n":{n},"tag":1}}"#));
    assert_eq!(outputs[0], version_1, "version 1 tags every row");
    assert_eq!(
        outputs[1],
        lines(&|n| format!(r#"{{"n":{n}}}"#)),
        "version 2 passes rows through"
    );

    // The file still holds version 2's component.
    store.activate("pinned", 1).unwrap();
    let again = run_active(env.clone(), store.clone()).await;
    assert_eq!(
        again, version_1,
        "rollback reproduces version 1's features byte for byte"
    );
    let diff = weir::store::diff(
        &store.version("pinned", 1).unwrap(),
        &store.version("pinned", 2).unwrap(),
    );
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(
        diff[0].starts_with("~ stage tag: component sha256:"),
        "{diff:?}"
    );
}
