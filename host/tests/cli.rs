//! The `weir` binary as a user runs it.

use std::path::Path;
use std::process::Command;

#[path = "../../tests/src/services.rs"]
mod services;

fn weir(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn validate_prints_the_dag() {
    let (ok, out, err) = weir(&["validate", "examples/quickstart/pipeline.toml"], repo());
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "examples/quickstart/pipeline.toml is valid: 4 nodes\n\
         source events\n \
         stage price_bucket <- events\n \
         stage user_bucket <- price_bucket\n  \
         sink features <- user_bucket\n\
         output schemas:\n  \
         events: user_id: Utf8, ts: Timestamp(ms), event: Utf8, item_id: Utf8, price: Float64, dwell_ms: Int64\n  \
         price_bucket: learned from its first batch (declare `outputs` to fix it here)\n  \
         user_bucket: learned from its first batch (declare `outputs` to fix it here)\n"
    );
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_command_quietly() {
    // The read end is closed before the child writes: its first write fails
    // with EPIPE, which must not be a panic (Rust ignores SIGPIPE).
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["validate", "examples/quickstart/pipeline.toml"])
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

#[test]
fn validate_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, "name = \"x\"\n[[source]]\nname = \"s\"\n[source.jsonl]\npath = \"a\"\nschema = []\nbatch_rowz = 3\n").unwrap();
    let (ok, _, err) = weir(&["validate", file.to_str().unwrap()], dir.path());
    assert!(!ok);
    assert!(
        err.contains("line 7 column 1: `source[0].jsonl.batch_rowz`: unknown field `batch_rowz`"),
        "{err}"
    );
}

#[test]
fn a_new_stage_builds_and_runs_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = weir(&["stage", "new", "my-scaler"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("created stage `my-scaler`"), "{out}");

    let (ok, out, err) = weir(&["stage", "build", "my-scaler"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("world:   featurizer"), "{out}");
    assert!(out.contains("digest:  sha256:"), "{out}");

    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"price\": 2.5}\n{\"price\": null}\n{\"price\": 4}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"
name = "scale"
[[source]]
name = "in"
[source.jsonl]
path = "in.jsonl"
schema = [{ name = "price", type = "float64" }]
[[stage]]
name = "scale"
input = "in"
[stage.wasm]
crate = "my-scaler"
params = { input = "price", output = "cents", factor = 100.0 }
[[sink]]
name = "out"
input = "scale"
[sink.jsonl]
path = "out.jsonl"
"#,
    )
    .unwrap();
    let (ok, out, err) = weir(&["run", "--quiet", "p.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("3 records in, 0 corrupt"), "{out}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        written,
        "{\"price\":2.5,\"cents\":250.0}\n{\"price\":null,\"cents\":null}\n{\"price\":4.0,\"cents\":400.0}\n"
    );
}

#[test]
fn a_new_connector_builds_and_reads_its_granted_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = weir(&["stage", "new", "--connector", "my-lines"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("created connector `my-lines`"), "{out}");

    let (ok, out, err) = weir(&["stage", "build", "my-lines"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("world:   connector"), "{out}");

    std::fs::write(dir.path().join("in.txt"), "one\ntwo\r\nthree\n").unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"
name = "lines"
[[source]]
name = "in"
[source.plugin]
crate = "my-lines"
config = { path = "in.txt" }
grants = { read = ["."] }
max_rows = 2
schema = [{ name = "line", type = "utf8" }]
[[sink]]
name = "out"
input = "in"
[sink.jsonl]
path = "out.jsonl"
"#,
    )
    .unwrap();
    let (ok, out, err) = weir(&["run", "--quiet", "p.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("3 records in"), "{out}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        written,
        "{\"line\":\"one\"}\n{\"line\":\"two\"}\n{\"line\":\"three\"}\n"
    );
}

/// `weir features get` and `weir lineage --redis` on vectors a `[sink.redis]`
/// stored, against a real server (`WEIR_TEST_REDIS_URL`, by default the local
/// one; see `tests/src/services.rs`).
#[test]
fn features_get_and_lineage_read_stored_vectors() {
    use std::sync::Arc;

    use arrow::array::{
        Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use weir::connectors::RedisSink;
    use weir::node::{AsyncSink, Lineage, SourceSpan, StageLineage};

    let Some(url) = services::url(services::Service::Redis) else {
        return;
    };
    let prefix = format!("weir-test:cli:{}", std::process::id());
    let spec = toml::from_str(&format!(
        "url = \"{url}\"\nprefix = \"{prefix}\"\nentity = \"user\"\nevent_time = \"ts\""
    ))
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("clicks", DataType::Int64, true),
        Field::new("ctr", DataType::Float64, true),
        Field::new("country", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["u1", "u2"])),
            Arc::new(TimestampMillisecondArray::from(vec![
                1_704_067_200_000,
                1_704_067_260_000,
            ])),
            Arc::new(Int64Array::from(vec![Some(12), None])),
            Arc::new(Float64Array::from(vec![0.25, 0.5])),
            Arc::new(StringArray::from(vec![Some("DE"), Some("FR")])),
        ],
    )
    .unwrap();
    let digest = "3f".repeat(32);
    let lineage = Arc::new(Lineage {
        pipeline: "clicks".into(),
        version: Some(2),
        sources: vec![SourceSpan {
            source: "events".into(),
            from: Some("events.jsonl:0".into()),
            to: Some("events.jsonl:4096".into()),
        }],
        stages: vec![StageLineage {
            stage: "featurize".into(),
            digest: digest.clone(),
            params_hash: "0a".repeat(32),
        }],
    });
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sink.write(&batch, &lineage))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = weir(
        &[
            "features", "get", "--redis", &url, "--prefix", &prefix, "u1", "u2", "nobody",
        ],
        dir.path(),
    );
    let (lok, lout, lerr) = weir(
        &["lineage", "--redis", &url, "--prefix", &prefix, "u1"],
        dir.path(),
    );
    let (mok, _, merr) = weir(
        &["lineage", "--redis", &url, "--prefix", &prefix, "nobody"],
        dir.path(),
    );
    // Clean up before asserting.
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(
            &[
                prefix.clone(),
                format!("{prefix}:u1"),
                format!("{prefix}:u2"),
            ][..],
        )
        .query(&mut c)
        .unwrap();

    assert!(ok, "{err}");
    let lineage_json = serde_json::to_string(&*lineage).unwrap();
    assert_eq!(
        out,
        format!(
            "{{\"entity\":\"u1\",\"event_time_ms\":1704067200000,\"features\":{{\"clicks\":12,\"country\":\"DE\",\"ctr\":0.25}},\"lineage\":{lineage_json}}}\n\
             {{\"entity\":\"u2\",\"event_time_ms\":1704067260000,\"features\":{{\"country\":\"FR\",\"ctr\":0.5}},\"lineage\":{lineage_json}}}\n\
             {{\"entity\":\"nobody\",\"features\":null}}\n"
        )
    );
    assert!(lok, "{lerr}");
    assert_eq!(
        lout,
        format!(
            "{prefix}:u1: pipeline clicks version 2, event time 1704067200000 ms\n  \
             stage featurize sha256:{digest} params sha256:{}\n  \
             source events positions events.jsonl:0..events.jsonl:4096\n",
            "0a".repeat(32)
        )
    );
    assert!(!mok);
    assert!(
        merr.contains(&format!("no vector is stored under {prefix}:nobody")),
        "{merr}"
    );
}

/// A pipeline reading `user_id`, `ts`, `price` from `in.jsonl` into sessions,
/// then a group per user, then `sink`.
fn sessions_pipeline(session_key: &str, group_key: &str, sink: &str) -> String {
    format!(
        r#"name = "p"
[[source]]
name = "events"
[source.jsonl]
path = "in.jsonl"
schema = [{{ name = "user_id", type = "utf8" }}, {{ name = "ts", type = "int64" }}, {{ name = "price", type = "float64" }}]
[[stage]]
name = "sessions"
input = "events"
[stage.session]
key = ["{session_key}"]
time = "ts"
gap = "30m"
aggregates = [{{ name = "n", op = "count" }}, {{ name = "spend", op = "sum", column = "price" }}]
[[stage]]
name = "per_user"
input = "sessions"
[stage.group]
by = ["{group_key}"]
aggregates = [{{ name = "sessions", op = "count" }}, {{ name = "last_end", op = "max", column = "session_end" }}]
[[sink]]
name = "out"
input = "per_user"
{sink}
"#
    )
}

#[test]
fn validate_prints_every_schema_and_refuses_a_missing_column_naming_node_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let validate = |text: &str| {
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        weir(&["validate", "p.toml"], dir.path())
    };
    let (ok, out, err) = validate(&sessions_pipeline(
        "user_id",
        "user_id",
        "[sink.jsonl]\npath = \"out.jsonl\"",
    ));
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "p.toml is valid: 4 nodes\n\
         source events\n \
         stage sessions <- events\n \
         stage per_user <- sessions\n  \
         sink out <- per_user\n\
         output schemas:\n  \
         events: user_id: Utf8, ts: Int64, price: Float64\n  \
         sessions: user_id: Utf8, session_start: Int64, session_end: Int64, n: Int64, spend: Float64\n  \
         per_user: user_id: Utf8, sessions: Int64, last_end: Int64\n"
    );
    let refused = |text: &str| {
        let (ok, out, err) = validate(text);
        assert!(!ok, "{out}");
        err
    };
    assert_eq!(
        refused(&sessions_pipeline(
            "user_id",
            "user_id",
            "[sink.redis]\nurl = \"redis://127.0.0.1:1\"\nprefix = \"f\"\nentity = \"uid\"\nevent_time = \"last_end\""
        )),
        "error: `out`: `sink[0].redis.entity`: column `uid` is not in the input (columns: user_id, sessions, last_end)\n"
    );
    assert_eq!(
        refused(&sessions_pipeline(
            "user_id",
            "user_id",
            "[sink.parquet]\npath = \"lake\"\npartition_by = \"day\""
        )),
        "error: `out`: `sink[0].parquet.partition_by`: column `day` is not in the input (columns: user_id, sessions, last_end)\n"
    );
    assert_eq!(
        refused(&sessions_pipeline(
            "user_id",
            "user_id",
            "[sink.jetstream]\nsubject = \"users\"\nid = { key = [\"user\"] }"
        )),
        "error: `out`: `sink[0].jetstream.id.key`: column `user` is not in the input (columns: user_id, sessions, last_end)\n"
    );
    assert_eq!(
        refused(&sessions_pipeline(
            "user_id",
            "user",
            "[sink.jsonl]\npath = \"out.jsonl\""
        )),
        "error: `per_user`: key `user` is not a column of the input (it has: user_id, session_start, session_end, n, spend)\n"
    );
    assert_eq!(
        refused(&sessions_pipeline(
            "uid",
            "user_id",
            "[sink.jsonl]\npath = \"out.jsonl\""
        )),
        "error: `sessions`: key column `uid` is not a column of the input (it has: user_id, ts, price)\n"
    );
}
