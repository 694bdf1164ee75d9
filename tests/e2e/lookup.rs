//! Lookups from WebAssembly stages (`weir:stage/lookup`, contract 0.1.1): a
//! featurizer granted a table gets the values the `lookup` stage adds; one not
//! granted any is refused at load, naming the import; and a component built
//! against the 0.1.0 contract still runs.

use std::path::Path;

use weir::exec::RunError;
use weir_e2e::{component, run_toml, sandbox, toml_path};

const LOOKUP_USER: &str = "tests/fixtures/lookup-user";
const CONTRACT_0_1_0: &str = "tests/fixtures/contract-0.1.0";
const NOOP: &str = "tests/fixtures/noop";

const SEGMENTS: &str = "user_id,segment,ltv\nu1,casual,1.25\nu2,loyal,40.5\nu3,new,0\n";

/// Six events, in two batches of four and two: hits, a miss (`zz`) and a null
/// key.
const EVENTS: &str = r#"{"user_id":"u1","n":1}
{"user_id":"u2","n":2}
{"user_id":"zz","n":3}
{"n":4}
{"user_id":"u3","n":5}
{"user_id":"u1","n":6}
"#;

const TABLE: &str = r#"table.csv = { path = "segments.csv", schema = [
  { name = "user_id", type = "utf8", required = true },
  { name = "segment", type = "utf8" },
  { name = "ltv", type = "float64" },
] }"#;

fn write_inputs(dir: &Path) {
    std::fs::write(dir.join("segments.csv"), SEGMENTS).unwrap();
    std::fs::write(dir.join("events.jsonl"), EVENTS).unwrap();
}

/// The pipeline `events → enrich → out`, `enrich` being the TOML `stage`.
fn pipeline(stage: &str) -> String {
    format!(
        r#"
name = "lookups"
[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
batch_rows = 4
schema = [{{ name = "user_id", type = "utf8" }}, {{ name = "n", type = "int64" }}]

[[stage]]
name = "enrich"
input = "events"
{stage}

[[sink]]
name = "out"
input = "enrich"
[sink.jsonl]
path = "out.jsonl"
"#
    )
}

/// `[stage.wasm]` on the lookup-user fixture with `params`, granted `segments`
/// unless `grant` is false.
fn wasm_stage(params: &str, grant: bool) -> String {
    let mut stage = format!(
        "[stage.wasm]\ncomponent = {}\nparams = {params}\n",
        toml_path(&component(LOOKUP_USER))
    );
    if grant {
        stage.push_str(&format!(
            "[stage.wasm.lookups.segments]\nkey = \"user_id\"\n{TABLE}\n"
        ));
    }
    stage
}

const EXPECTED: &str = r#"{"user_id":"u1","n":1,"segment":"casual","ltv":1.25}
{"user_id":"u2","n":2,"segment":"loyal","ltv":40.5}
{"user_id":"zz","n":3,"segment":null,"ltv":null}
{"user_id":null,"n":4,"segment":null,"ltv":null}
{"user_id":"u3","n":5,"segment":"new","ltv":0.0}
{"user_id":"u1","n":6,"segment":"casual","ltv":1.25}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_featurizer_looks_up_the_values_the_lookup_stage_adds() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let out = dir.path().join("out.jsonl");

    let native = pipeline(&format!("[stage.lookup]\nkey = [\"user_id\"]\n{TABLE}\n"));
    let native_summary = run_toml(&native, dir.path()).await.unwrap();
    let by_stage = std::fs::read_to_string(&out).unwrap();
    assert_eq!(by_stage, EXPECTED);

    let wasm = pipeline(&wasm_stage(
        "{ table = \"segments\", key = \"user_id\" }",
        true,
    ));
    let wasm_summary = run_toml(&wasm, dir.path()).await.unwrap();
    let by_import = std::fs::read_to_string(&out).unwrap();
    assert_eq!(by_import, EXPECTED);

    let counters = |s: &weir::exec::RunSummary| {
        let c = &s.node("enrich").unwrap().counters;
        (c["lookup_hits"], c["lookup_misses"], c["reloads"])
    };
    // Four hits, two misses (`zz`, the null key); the table loaded once.
    assert_eq!(counters(&native_summary), (4, 2, 1));
    assert_eq!(counters(&wasm_summary), (4, 2, 1));
    assert_eq!(
        wasm_summary.node("enrich").unwrap().counters["wasm:calls"],
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_featurizer_without_the_grant_is_refused_at_load_naming_the_import() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let err = run_toml(&pipeline(&wasm_stage("{}", false)), dir.path())
        .await
        .expect_err("a stage granted no table cannot load a component importing lookup");
    let text = chain(&err);
    assert!(
        text.contains("imports `weir:stage/lookup@0.1.1`, which is not granted"),
        "{text}"
    );
    assert!(
        text.contains("[stage.wasm.lookups.<name>]"),
        "the message says how to grant it: {text}"
    );
    assert!(
        !dir.path().join("out.jsonl").exists(),
        "nothing ran: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_in_a_table_not_granted_fails_the_stage_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let err = run_toml(
        &pipeline(&wasm_stage("{ table = \"accounts\" }", true)),
        dir.path(),
    )
    .await
    .expect_err("the stage asks for a table it was not granted");
    let text = chain(&err);
    assert!(
        text.contains(
            "stage `enrich` failed: lookup failed: no table `accounts` is granted to stage `enrich` (granted: `segments`)"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_table_is_refused_for_a_featurizer_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let stage = wasm_stage("{}", true) + "cache = { mode = \"lazy\" }\n";
    let err = run_toml(&pipeline(&stage), dir.path())
        .await
        .expect_err("lazy is refused");
    let text = chain(&err);
    assert!(
        text.contains("stage[0].wasm.lookups.segments.cache.mode"),
        "{text}"
    );
    assert!(text.contains("loaded whole (`full`)"), "{text}");
}

#[test]
fn a_component_that_never_calls_lookup_does_not_import_it() {
    let noop = sandbox().load_file(&component(NOOP)).unwrap();
    assert!(!noop.imports_lookup(), "{:?}", noop.imports());
    assert!(
        noop.imports()
            .iter()
            .any(|i| i == "weir:stage/host@0.1.1" || i.starts_with("wasi:")),
        "{:?}",
        noop.imports()
    );
    let user = sandbox().load_file(&component(LOOKUP_USER)).unwrap();
    assert!(
        user.imports()
            .iter()
            .any(|i| i == "weir:stage/lookup@0.1.1"),
        "{:?}",
        user.imports()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_built_against_the_0_1_0_contract_still_runs() {
    let path = component(CONTRACT_0_1_0);
    let loaded = sandbox().load_file(&path).unwrap();
    assert!(
        loaded
            .imports()
            .iter()
            .any(|i| i == "weir:stage/host@0.1.0"),
        "built against 0.1.0: {:?}",
        loaded.imports()
    );
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let text = pipeline(&format!("[stage.wasm]\ncomponent = {}\n", toml_path(&path)));
    run_toml(&text, dir.path()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        r#"{"user_id":"u1","n":1,"n2":2}
{"user_id":"u2","n":2,"n2":4}
{"user_id":"zz","n":3,"n2":6}
{"user_id":null,"n":4,"n2":8}
{"user_id":"u3","n":5,"n2":10}
{"user_id":"u1","n":6,"n2":12}
"#
    );
}

/// The error and its causes, as `{e:#}` prints them.
fn chain(e: &RunError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}
