//! Hostile stages: each is stopped by the limit or the contract meant for it,
//! reported with the stage's name, and the host then runs the next pipeline
//! normally.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::datatypes::DataType;
use weir::exec::{PlanError, RunError};
use weir::sandbox::{FeaturizerStage, LoadError, StageFailure, StageLimits};
use weir::units::Millis;
use weir_e2e::{component, run_toml, sandbox, toml_path};

const HOSTILE: &str = "tests/fixtures/hostile";

fn write_events(dir: &Path, rows: usize) {
    let lines: Vec<String> = (0..rows)
        .map(|i| format!(r#"{{"n":{i},"s":"row-{i}","x":{}.5}}"#, i))
        .collect();
    std::fs::write(dir.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn pipeline(component: &Path, params: &str, limits: &str) -> String {
    pipeline_with(component, params, limits, "", 4)
}

/// [`pipeline`] with more keys for `[stage.wasm]` (`wasm`, TOML lines) and
/// `batch_rows` rows per source batch.
fn pipeline_with(
    component: &Path,
    params: &str,
    limits: &str,
    wasm: &str,
    batch_rows: usize,
) -> String {
    format!(
        r#"
name = "hostile"
[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
batch_rows = {batch_rows}
schema = [{{ name = "n", type = "int64" }}, {{ name = "s", type = "utf8" }}, {{ name = "x", type = "float64" }}]

[[stage]]
name = "hostile"
input = "events"
[stage.wasm]
component = {}
params = {params}
limits = {limits}
{wasm}

[[sink]]
name = "out"
input = "hostile"
[sink.jsonl]
path = "out.jsonl"
"#,
        toml_path(component)
    )
}

/// Runs the hostile fixture in `mode` with `limits`; returns the run's error.
async fn run_hostile(mode: &str, limits: &str) -> RunError {
    run_failing(&format!("{{ mode = \"{mode}\" }}"), limits, "", 4).await
}

/// Runs the hostile fixture on 10 rows with `params`, `limits`, more `[stage.wasm]`
/// keys and `batch_rows`; returns the run's error, after checking that the output
/// file written before the run is still there, untouched.
async fn run_failing(params: &str, limits: &str, wasm: &str, batch_rows: usize) -> RunError {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline_with(&component(HOSTILE), params, limits, wasm, batch_rows);
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, "a previous run's output\n").unwrap();
    let err = run_toml(&text, dir.path())
        .await
        .expect_err("the hostile stage must fail the run");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "a previous run's output\n",
        "a failed run must not publish output"
    );
    err
}

/// The message and its causes as `{e:#}` prints them: each cause once.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The host still runs a normal pipeline after whatever came before.
async fn host_still_works() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline(&component(HOSTILE), "{ mode = \"passthrough\" }", "{}");
    let summary = run_toml(&text, dir.path())
        .await
        .expect("a well-behaved stage runs");
    assert_eq!(summary.node("out").unwrap().rows_out, 10);
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 10);
    assert_eq!(
        out.lines().next().unwrap(),
        r#"{"n":0,"s":"row-0","x":0.5}"#
    );
}

fn stage_failure(err: &RunError) -> &StageFailure {
    match err {
        RunError::Node {
            node,
            error:
                weir::exec::NodeError::Stage { error, .. }
                | weir::exec::NodeError::Resource { error, .. },
        } => {
            assert_eq!(node, "hostile");
            error
                .downcast_ref::<StageFailure>()
                .expect("a stage's failure")
        }
        other => panic!("expected a stage failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_is_stopped_by_fuel() {
    let err = run_hostile("spin", "{ fuel = 5_000_000, deadline = \"60s\" }").await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::OutOfFuel {
                budget: 5_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` ran out of fuel (budget 5000000 per call)"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_is_stopped_by_the_deadline() {
    let started = Instant::now();
    let err = run_hostile(
        "spin",
        "{ fuel = 9_000_000_000_000_000_000, deadline = \"200ms\" }",
    )
    .await;
    assert!(
        matches!(stage_failure(&err), StageFailure::Deadline { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` exceeded its deadline of 200ms"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_is_stopped_at_the_cap() {
    let err = run_hostile("bomb", "{ memory = \"32MiB\" }").await;
    let StageFailure::Memory { cap, requested, .. } = stage_failure(&err) else {
        panic!("{err}")
    };
    assert_eq!(cap.0, 32 << 20);
    assert!(requested.0 > 32 << 20);
    assert!(
        err.to_string()
            .contains("stage `hostile` exceeded its memory cap of 32MiB"),
        "{err}"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_a_trap_with_the_stage_name_and_message() {
    let err = run_hostile("panic", "{}").await;
    let failure = stage_failure(&err);
    assert!(matches!(failure, StageFailure::Panic { .. }), "{err}");
    assert_eq!(failure.reason(), "panic");
    // One line: where the guest panicked and its message.
    let line = panic_line("hostile stage panicked on purpose");
    assert_eq!(
        err.to_string(),
        format!(
            "node `hostile` failed: stage `hostile` panicked at src/lib.rs:{line}: hostile stage panicked on purpose"
        )
    );
    host_still_works().await;
}

/// `line:column` of the `panic!` whose message is `message` in the hostile
/// fixture's source, as the guest's panic reports it.
fn panic_line(message: &str) -> String {
    let source =
        std::fs::read_to_string(weir_e2e::repo_root().join(HOSTILE).join("src/lib.rs")).unwrap();
    let (n, text) = source
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(&format!("panic!(\"{message}\")")))
        .expect("the fixture panics with that message");
    let column = text.find("panic!").unwrap() + 1;
    format!("{}:{column}", n + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_overflow_says_so_in_one_line() {
    let err = run_hostile("stack_overflow", "{}").await;
    let failure = stage_failure(&err);
    assert!(
        matches!(failure, StageFailure::StackOverflow { .. }),
        "{err}"
    );
    assert_eq!(failure.reason(), "stack_overflow");
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` overflowed its call stack (recursion too deep)"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_flooding_stdout_is_stopped_at_the_output_cap() {
    let started = Instant::now();
    let err = run_hostile(
        "flood_stdout",
        "{ max_output = \"64KiB\", deadline = \"60s\" }",
    )
    .await;
    let failure = stage_failure(&err);
    assert!(
        matches!(
            failure,
            StageFailure::OutputCap {
                stream: "stdout",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(failure.reason(), "output_cap");
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` printed more than 64KiB to stdout in one call (limits.max_output)"
    );
    // Stopped by the cap, not by the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_trap_has_a_stable_reason() {
    let fuel = run_hostile("spin", "{ fuel = 5_000_000, deadline = \"60s\" }").await;
    assert_eq!(stage_failure(&fuel).reason(), "out_of_fuel");
    let deadline = run_hostile(
        "spin",
        "{ fuel = 9_000_000_000_000_000_000, deadline = \"200ms\" }",
    )
    .await;
    assert_eq!(stage_failure(&deadline).reason(), "deadline");
    let memory = run_hostile("bomb", "{ memory = \"32MiB\" }").await;
    assert_eq!(stage_failure(&memory).reason(), "memory_cap");
    let error = run_hostile("error", "{}").await;
    assert_eq!(stage_failure(&error).reason(), "stage_error");
    // No trap message is a bare backtrace.
    for e in [&fuel, &deadline, &memory] {
        let text = e.to_string();
        assert!(
            !text.contains('\n') && !text.contains("backtrace"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_error_names_the_row() {
    let err = run_hostile("error", "{}").await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::Guest {
                row: Some(3),
                transient: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` failed at row 3: row 3 is rotten"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_over_the_crossing_cap_is_refused() {
    let err = run_hostile("huge_output", "{ max_crossing = \"1MiB\" }").await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::Crossing {
                direction: "output",
                ..
            }
        ),
        "{err}"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_parameters_fail_before_any_data_moves() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline(&component(HOSTILE), "{ mode = \"fail_init\" }", "{}");
    let err = run_toml(&text, dir.path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RunError::Plan(PlanError::Start(StageFailure::Init { .. }))
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "stage `hostile` refused its parameters: refusing to start: fail_init mode"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_that_was_not_granted_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let wat = dir.path().join("sneaky.wat");
    std::fs::write(
        &wat,
        r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#,
    )
    .unwrap();
    let err = run_toml(&pipeline(&wat, "{}", "{}"), dir.path())
        .await
        .unwrap_err();
    let RunError::Plan(PlanError::Load {
        node,
        source: LoadError::ImportNotGranted { import, .. },
    }) = &err
    else {
        panic!("expected an import refusal, got {err}");
    };
    assert_eq!(node, "hostile");
    assert_eq!(import, "wasi:sockets/tcp@0.2.0");
    assert!(
        err.to_string()
            .contains("imports `wasi:sockets/tcp@0.2.0`, which is not granted to stages"),
        "{err}"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_of_another_world_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("empty.wat");
    std::fs::write(&wat, "(component)").unwrap();
    let err = sandbox().load_file(&wat).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("a featurizer exports `init` and `process`"),
        "{err}"
    );

    std::fs::write(&wat, "not wasm at all").unwrap();
    assert!(matches!(
        sandbox().load_file(&wat).unwrap_err(),
        LoadError::Invalid { .. }
    ));
    host_still_works().await;
}

#[test]
fn a_trap_poisons_only_that_instance() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let sandbox = sandbox();
    let loaded = sandbox.load_file(&component(HOSTILE)).unwrap();
    let limits = StageLimits {
        fuel: 2_000_000,
        ..StageLimits::default()
    };
    let mut stage = FeaturizerStage::new(
        &sandbox,
        &loaded,
        "flaky",
        r#"{"mode":"spin"}"#,
        limits,
        Default::default(),
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();

    assert!(matches!(
        stage.process(&batch),
        Err(StageFailure::OutOfFuel { .. })
    ));
    assert!(matches!(
        stage.process(&batch),
        Err(StageFailure::OutOfFuel { .. })
    ));
    // Each call after a trap ran on a fresh instance.
    assert_eq!(stage.stats().instantiations, 2);
    assert_eq!(stage.stats().traps, 2);

    stage.reconfigure(r#"{"mode":"passthrough"}"#).unwrap();
    assert_eq!(stage.process(&batch).unwrap(), batch);
    // Refused parameters leave the stage as it was.
    assert!(matches!(
        stage.reconfigure(r#"{"mode":"fail_init"}"#),
        Err(StageFailure::Init { .. })
    ));
    assert_eq!(stage.params(), r#"{"mode":"passthrough"}"#);
    assert_eq!(stage.process(&batch).unwrap(), batch);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleep_inside_a_host_call_is_stopped_at_the_deadline() {
    // Compiled before the clock starts: the bound is on the stage, not on compiling.
    sandbox().load_file(&component(HOSTILE)).unwrap();
    let started = Instant::now();
    let err = run_failing(
        r#"{ mode = "sleep", secs = 30 }"#,
        r#"{ deadline = "2s" }"#,
        "",
        4,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::Deadline { deadline: Millis(d), .. } if *d == Duration::from_secs(2)
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` exceeded its deadline of 2s"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "the stage held its thread for {elapsed:?}"
    );
    host_still_works().await;
}

#[test]
fn a_deadline_in_a_host_call_discards_the_instance_like_any_trap() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};

    let sandbox = sandbox();
    let loaded = sandbox.load_file(&component(HOSTILE)).unwrap();
    let limits = StageLimits {
        deadline: Millis(Duration::from_millis(300)),
        ..StageLimits::default()
    };
    let mut stage = FeaturizerStage::new(
        &sandbox,
        &loaded,
        "sleepy",
        r#"{"mode":"sleep","secs":30}"#,
        limits,
        Default::default(),
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();

    let started = Instant::now();
    let err = stage.process(&batch).unwrap_err();
    assert!(matches!(err, StageFailure::Deadline { .. }), "{err}");
    assert!(err.is_trap());
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((stage.stats().traps, stage.stats().instantiations), (1, 1));
    // The next call runs on a fresh instance, with its own full deadline.
    stage.reconfigure(r#"{"mode":"passthrough"}"#).unwrap();
    assert_eq!(stage.process(&batch).unwrap(), batch);
    assert_eq!(stage.stats().instantiations, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_featurizer_that_drops_rows_is_refused_with_the_counts() {
    let err = run_failing(r#"{ mode = "drop_rows" }"#, "{}", "", 10).await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::RowCount {
                rows_in: 10,
                rows_out: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` returned 4 rows for 10: a featurizer returns one \
         row per input row (a stage that drops rows sets `filter = true` and returns a boolean \
         `_keep` column)"
    );
    host_still_works().await;
}

/// Runs the fixture as a filter on 10 rows in batches of 4; returns the output
/// lines and the stage's `filtered` counter.
async fn run_filter(params: &str, wasm: &str) -> (Vec<String>, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline_with(&component(HOSTILE), params, "{}", wasm, 4);
    let summary = run_toml(&text, dir.path()).await.expect("the filter runs");
    let stage = summary.node("hostile").unwrap();
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    (
        out.lines().map(str::to_owned).collect(),
        stage.counters["filtered"],
        stage.rows_out,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_stage_drops_the_rows_it_does_not_keep_and_counts_them() {
    let expected: Vec<String> = [0, 2, 4, 6, 8]
        .iter()
        .map(|i| format!(r#"{{"n":{i},"s":"row-{i}","x":{i}.5}}"#))
        .collect();
    let (lines, filtered, rows_out) =
        run_filter(r#"{ mode = "keep_even" }"#, "filter = true").await;
    assert_eq!(lines, expected);
    assert_eq!((filtered, rows_out), (5, 5));
    // Given one column, its verdict still filters the whole row.
    let (lines, filtered, _) = run_filter(
        r#"{ mode = "keep_even" }"#,
        "filter = true\ncolumns = [\"n\"]",
    )
    .await;
    assert_eq!(lines, expected);
    assert_eq!(filtered, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_stage_without_a_boolean_keep_column_is_refused() {
    let err = run_failing(r#"{ mode = "passthrough" }"#, "{}", "filter = true", 4).await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::FilterColumn {
                column: "_keep",
                found: None,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: filter stage `hostile` returned no column `_keep`; a filter \
         returns every row plus a boolean `_keep`"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_output_column_missing_from_one_batch_fails_the_run_and_publishes_nothing() {
    let err = run_failing(
        r#"{ mode = "drop_column_on", call = 3 }"#,
        "{}",
        r#"outputs = [{ name = "tag", type = "int64" }]"#,
        4,
    )
    .await;
    let StageFailure::OutputMissing {
        stage,
        column,
        expected,
    } = stage_failure(&err)
    else {
        panic!("expected a missing output column, got {err}");
    };
    assert_eq!(
        (stage.as_str(), column.as_str(), expected),
        ("hostile", "tag", &DataType::Int64)
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` did not return column `tag` (Int64) of its \
         declared outputs"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_outputs_are_checked_for_their_type_and_shape_the_output() {
    let err = run_failing(
        r#"{ mode = "drop_column_on", call = 99 }"#,
        "{}",
        r#"outputs = [{ name = "tag", type = "int32" }]"#,
        4,
    )
    .await;
    assert!(
        matches!(
            stage_failure(&err),
            StageFailure::OutputType {
                expected: DataType::Int32,
                found: DataType::Int64,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "node `hostile` failed: stage `hostile` returned column `tag` as Int64, but it is \
         declared Int32"
    );

    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline_with(
        &component(HOSTILE),
        r#"{ mode = "drop_column_on", call = 99 }"#,
        "{}",
        r#"outputs = [{ name = "tag", type = "int64" }]"#,
        4,
    );
    run_toml(&text, dir.path())
        .await
        .expect("the stage keeps its declaration");
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0], r#"{"n":0,"s":"row-0","x":0.5,"tag":1}"#);
    assert_eq!(lines[9], r#"{"n":9,"s":"row-9","x":9.5,"tag":3}"#);
}

#[test]
fn an_input_over_the_crossing_cap_is_refused_before_the_copy() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};

    let sandbox = sandbox();
    let loaded = sandbox.load_file(&component(HOSTILE)).unwrap();
    let limits = StageLimits {
        max_crossing: weir::units::ByteSize(1024),
        ..StageLimits::default()
    };
    let mut stage = FeaturizerStage::new(
        &sandbox,
        &loaded,
        "narrow",
        r#"{"mode":"passthrough"}"#,
        limits,
        Default::default(),
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    // 200 rows: the name's byte and 1600 bytes of values.
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..200))]).unwrap();
    let err = stage.process(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            StageFailure::Crossing {
                direction: "input",
                size: Some(weir::units::ByteSize(1601)),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "stage `narrow`: input batch exceeds the crossing cap of 1KiB (1.6KiB)"
    );
    assert!(!err.is_trap());
    assert_eq!(stage.stats().calls, 0, "nothing crossed");
    let small = batch.slice(0, 10);
    assert_eq!(stage.process(&small).unwrap(), small);
    assert_eq!(stage.stats().calls, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_that_are_not_whole_components_get_one_short_message() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(component(HOSTILE)).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "notes.txt",
            b"These are notes, not a component.\n".to_vec(),
            "is not a WebAssembly component: it does not begin with the bytes `\\0asm` (only \
             a file named *.wat is read as text)",
        ),
        (
            "zeros.wasm",
            vec![0; 1 << 20],
            "is not a WebAssembly component: it does not begin with the bytes `\\0asm` (only \
             a file named *.wat is read as text)",
        ),
        (
            "cut.wasm",
            real[..100].to_vec(),
            "is a truncated WebAssembly component: it ends after 100 bytes",
        ),
    ];
    for (name, bytes, what) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = sandbox().load_file(&path).unwrap_err();
        let expected = format!("{} {what}", path.display());
        assert_eq!(err.to_string(), expected);
        assert_eq!(chain(&err), expected, "each cause is printed once");

        // In a pipeline, the same message under the stage's name.
        write_events(dir.path(), 10);
        let err = run_toml(&pipeline(&path, "{}", "{}"), dir.path())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                RunError::Plan(PlanError::Load {
                    source: LoadError::NotWasm { .. } | LoadError::Truncated { .. },
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), format!("stage `hostile`: {expected}"));
    }
    // Bytes from the store are held to the same rule.
    let err = sandbox().load(b"(component)").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(
        err.to_string().starts_with("sha256:"),
        "names the digest: {err}"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_failures_print_each_cause_once() {
    let err = run_failing(r#"{ mode = "drop_rows" }"#, "{}", "", 10).await;
    let failure = stage_failure(&err);
    assert!(failure.source().is_none(), "{failure}");
    assert_eq!(chain(failure), failure.to_string());
    let err = sandbox()
        .load_file(Path::new("/nonexistent/stage.wasm"))
        .unwrap_err();
    assert_eq!(
        chain(&err),
        "cannot read component /nonexistent/stage.wasm: No such file or directory (os error 2)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_declarations_are_strict() {
    let text = pipeline_with(
        &component(HOSTILE),
        r#"{ mode = "passthrough" }"#,
        "{}",
        r#"outputs = [{ name = "tag", typ = "int64" }]"#,
        4,
    );
    let err = weir::spec::PipelineSpec::from_toml(&text, "test.toml").unwrap_err();
    assert!(err.to_string().contains("unknown field `typ`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10);
    let text = pipeline_with(
        &component(HOSTILE),
        r#"{ mode = "passthrough" }"#,
        "{}",
        r#"outputs = [{ name = "tag", type = "int64" }, { name = "tag", type = "utf8" }]"#,
        4,
    );
    let err = run_toml(&text, dir.path()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`hostile`: output column `tag` is declared twice"
    );
}
