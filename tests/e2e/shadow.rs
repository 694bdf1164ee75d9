//! Shadow runs: a candidate stage beside the active one, compared and discarded;
//! the rule promotes a candidate without differences and drops a failing one.
//!
//! The pipeline: 500 numbered records in batches of 50 → the hostile fixture →
//! a JSON-lines sink with a lineage side file.

use weir_e2e::{component, run_toml, toml_path, toml_str};

const HOSTILE: &str = "tests/fixtures/hostile";

fn pipeline(params: &str, shadow: &str) -> String {
    format!(
        r#"
name = "shadowed"
[[source]]
name = "numbers"
[source.sequence]
count = 500
batch_rows = 50

[[stage]]
name = "f"
input = "numbers"
[stage.wasm]
component = {}
params = {params}
[stage.wasm.shadow]
{shadow}

[[sink]]
name = "out"
input = "f"
[sink.jsonl]
path = "out.jsonl"
lineage = true
"#,
        toml_path(&component(HOSTILE))
    )
}

fn counters(summary: &weir::exec::RunSummary) -> Vec<(String, u64)> {
    let mut c: Vec<(String, u64)> = summary
        .node("f")
        .unwrap()
        .counters
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    c.retain(|(k, _)| k.starts_with("shadow:") && !k.ends_with("_us"));
    c
}

fn c(name: &str, n: u64) -> (String, u64) {
    (name.to_owned(), n)
}

/// The stage digest of each lineage line (one per written batch).
fn digests(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("out.jsonl.lineage.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["lineage"]["stages"][0]["digest"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_with_another_tag_differs_in_every_row_and_changes_nothing_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(
        r#"{ mode = "tag", tag = 1 }"#,
        r#"params = { mode = "tag", tag = 2 }
promote_after = 2"#,
    );
    let summary = run_toml(&text, dir.path()).await.unwrap();
    assert_eq!(
        counters(&summary),
        [
            c("shadow:batches", 10),
            c("shadow:col:tag", 500),
            c("shadow:rows", 500),
            c("shadow:rows_differing", 500)
        ]
    );
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 500);
    assert!(
        out.lines().all(|l| l.ends_with(r#","tag":1}"#)),
        "the candidate's output is discarded"
    );
    let f = summary.node("f").unwrap();
    println!(
        "shadow time per batch: active {} µs, candidate {} µs",
        f.counters["shadow:active_us"] / 10,
        f.counters["shadow:candidate_us"] / 10
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_without_differences_is_promoted_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(component(HOSTILE)).unwrap();
    let candidate = dir.path().join("candidate.wasm");
    std::fs::write(&candidate, crate::swap::new_code(&original)).unwrap();
    let shadow = format!(
        "component = {}\npromote_after = 3",
        toml_str("candidate.wasm")
    );
    let summary = run_toml(
        &pipeline(r#"{ mode = "passthrough" }"#, &shadow),
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(
        counters(&summary),
        [
            c("shadow:batches", 3),
            c("shadow:promoted", 1),
            c("shadow:rows", 150),
            c("shadow:rows_differing", 0)
        ]
    );
    let old = weir::sandbox::digest(&original);
    let new = weir::sandbox::digest(&std::fs::read(&candidate).unwrap());
    let mut expected = vec![old; 3];
    expected.extend(vec![new; 7]);
    assert_eq!(
        digests(dir.path()),
        expected,
        "batches 4.. ran on the promoted candidate"
    );
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let want: String = (0..500).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    assert_eq!(out, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_candidate_is_dropped_after_its_error_budget() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(
        r#"{ mode = "passthrough" }"#,
        "params = { mode = \"panic\" }\ndrop_after_errors = 2\npromote_after = 1",
    );
    let summary = run_toml(&text, dir.path()).await.unwrap();
    assert_eq!(
        counters(&summary),
        [
            c("shadow:batches", 2),
            c("shadow:dropped", 1),
            c("shadow:errors", 2)
        ]
    );
    assert_eq!(
        summary.node("out").unwrap().rows_in,
        500,
        "the active version delivered everything"
    );
}
