//! Error policies on a real component: the hostile fixture in `poison` mode
//! refuses some rows and traps on others, keyed on the value of `n`, so the
//! same rows fail however a batch is split. Under `fallback` exactly those
//! rows carry the defaults and the mark; under `skip` exactly those rows are
//! dead letters; a stage that traps on every batch opens its breaker, which
//! half-opens after its back-off and closes after a swap.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir::exec::{Plan, RunControl, RunOptions, StageChange};
use weir::spec::PipelineSpec;
use weir_e2e::{component, env, run_toml, toml_path};

const HOSTILE: &str = "tests/fixtures/hostile";

/// Rows the stage refuses (an error naming the row) and rows it traps on.
const ERRORS: [i64; 2] = [3, 17];
const TRAPS: [i64; 2] = [9, 30];

fn write_events(dir: &Path, rows: i64) {
    let lines: Vec<String> = (0..rows).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    std::fs::write(dir.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// 40 rows in one batch through `poison`, with `policy` (TOML lines on the stage).
fn pipeline(policy: &str) -> String {
    format!(
        r#"
name = "poison"
[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
batch_rows = 40
schema = [{{ name = "n", type = "int64" }}]

[[stage]]
name = "score"
input = "events"
{policy}
[stage.wasm]
component = {}
params = {{ mode = "poison", error_rows = {ERRORS:?}, trap_rows = {TRAPS:?} }}
outputs = [{{ name = "score", type = "float64" }}, {{ name = "bucket", type = "utf8" }}]

[[sink]]
name = "out"
input = "score"
[sink.jsonl]
path = "out.jsonl"
"#,
        toml_path(&component(HOSTILE))
    )
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn under_fallback_exactly_the_failing_rows_carry_the_defaults_and_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 40);
    let text = pipeline(
        r#"on_error = "fallback"
fallback = { defaults = { score = 0.0, bucket = "unknown" } }"#,
    );
    let summary = run_toml(&text, dir.path()).await.expect("the run goes on");
    let rows = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(rows.len(), 40);
    for (n, row) in rows.iter().enumerate() {
        let n = n as i64;
        let failed = ERRORS.contains(&n) || TRAPS.contains(&n);
        let expected = if failed {
            serde_json::json!({ "n": n, "score": 0.0, "bucket": "unknown", "_fallback": true })
        } else {
            let bucket = if n % 2 == 0 { "even" } else { "odd" };
            serde_json::json!({ "n": n, "score": n as f64 / 2.0, "bucket": bucket, "_fallback": false })
        };
        assert_eq!(row, &expected, "row {n}");
    }
    let stage = summary.node("score").unwrap();
    assert_eq!(stage.counters["rows_fallen_back"], 4);
    assert!(stage.counters["bisections"] >= 2, "{summary}");
    assert_eq!(stage.dead_letters(), 0);
    assert!(summary.dead_letter_file.is_none());
    for node in &summary.nodes {
        assert!(node.ledger().balanced(), "{}: {}", node.name, node.ledger());
    }
    let text = summary.to_string();
    assert!(
        text.contains(
            "ledger: in 40 = out 40 (fallen back 4) + filtered 0 + dead-lettered 0 + held 0"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_skip_exactly_the_failing_rows_are_dead_letters_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 40);
    let summary = run_toml(&pipeline(r#"on_error = "skip""#), dir.path())
        .await
        .expect("the run goes on");
    let rows = read_lines(&dir.path().join("out.jsonl"));
    let ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (0..40)
        .filter(|n| !ERRORS.contains(n) && !TRAPS.contains(n))
        .collect();
    assert_eq!(ns, expected);
    // The rows delivered are untouched: the stage's own output, no mark.
    assert_eq!(
        rows[0],
        serde_json::json!({ "n": 0, "score": 0.0, "bucket": "even" })
    );

    let letters = read_lines(summary.dead_letter_file.as_ref().unwrap());
    let got: Vec<(String, String, String)> = letters
        .iter()
        .map(|l| {
            (
                l["node"].as_str().unwrap().to_owned(),
                l["reason"].as_str().unwrap().to_owned(),
                l["record"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let letter = |reason: &str, n: i64| {
        (
            "score".to_owned(),
            reason.to_owned(),
            format!(r#"{{"n":{n}}}"#),
        )
    };
    assert_eq!(
        got,
        [
            letter("stage_error", 3),
            letter("trap", 9),
            letter("stage_error", 17),
            letter("trap", 30),
        ]
    );
    assert_eq!(letters[0]["fault"], "stage");
    assert!(
        letters[0]["detail"]
            .as_str()
            .unwrap()
            .ends_with("n = 3 is poison"),
        "{}",
        letters[0]
    );
    assert_eq!(letters[1]["fault"], "stage");
    assert!(
        letters[1]["detail"]
            .as_str()
            .unwrap()
            .contains("n = 9 traps"),
        "{}",
        letters[1]
    );
    let stage = summary.node("score").unwrap();
    assert_eq!(stage.counters["rows_skipped"], 4);
    assert_eq!(stage.counters["dead_letter:trap"], 2);
    assert!(stage.counters["bisections"] >= 2);
    assert_eq!(stage.rows_out, 36);
    for node in &summary.nodes {
        assert!(node.ledger().balanced(), "{}: {}", node.name, node.ledger());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_a_stage_error_fails_the_run_as_before() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 40);
    let err = run_toml(&pipeline(""), dir.path()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("node `score` failed: stage `score` panicked"),
        "{text}"
    );
    assert!(text.contains("n = 9 traps"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_trapping_on_every_batch_opens_its_breaker_half_opens_and_closes_after_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
name = "breaker"
[[source]]
name = "numbers"
[source.sequence]
rate = 400
batch_rows = 10

[[stage]]
name = "flaky"
input = "numbers"
on_error = "skip"
breaker = {{ traps = 3, window = "60s", open = "300ms", max_open = "2s" }}
[stage.wasm]
component = {}
params = {{ mode = "panic" }}

[[sink]]
name = "out"
input = "flaky"
[sink.jsonl]
path = "out.jsonl"
"#,
        toml_path(&component(HOSTILE))
    );
    let mut spec = PipelineSpec::from_toml(&text, "breaker.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = env(dir.path());
    let plan = tokio::task::spawn_blocking({
        let env = env.clone();
        move || Plan::build(spec, &env)
    })
    .await
    .unwrap()
    .unwrap();
    let control = RunControl::new();
    let task = tokio::spawn({
        let control = control.clone();
        async move { weir::exec::run_with(plan, &env, &RunOptions::default(), control).await }
    });
    control.started().await;
    // Open after 3 trapping batches, half-open after 300 ms, trap again,
    // reopen for 600 ms, …
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let applied = control
        .swap(
            "flaky",
            StageChange::Params(r#"{"mode":"passthrough"}"#.to_owned()),
        )
        .await
        .expect("the swap applies");
    assert!(applied.first_batch.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.stop();
    let summary = task.await.unwrap().expect("the run goes on");
    let stage = summary.node("flaky").unwrap();
    let c = |k: &str| stage.counters.get(k).copied().unwrap_or(0);
    assert!(c("breaker:opened") >= 2, "{summary}");
    assert!(c("breaker:half_opened") >= 1, "{summary}");
    assert_eq!(c("breaker:closed"), 1, "{summary}");
    assert_eq!(stage.states["breaker"], "closed");
    assert!(c("dead_letter:breaker_open") > 0, "{summary}");
    // Only the first three batches and each half-open trial entered the
    // sandbox while it was broken.
    assert_eq!(
        c("trapped_batches"),
        3 + c("breaker:half_opened"),
        "{summary}"
    );
    // After the swap, rows are delivered.
    let delivered = summary.node("out").unwrap().rows_out;
    assert!(delivered > 0, "{summary}");
    assert_eq!(stage.rows_in, stage.rows_out + stage.dead_letters());
    for node in &summary.nodes {
        assert!(node.ledger().balanced(), "{}: {}", node.name, node.ledger());
    }
    let text = summary.to_string();
    assert!(text.contains("breaker: closed"), "{text}");
    assert!(text.contains("breaker:opened"), "{text}");
}
