//! Built-in operators and feature-vector sinks in real pipelines: the native
//! `hash_bucket` agrees with the `hash-bucket` stage, the HTTP sink's requests as
//! a real server receives them, and the shared-features example (two model
//! pipelines using one sub-pipeline).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weir::spec::PipelineSpec;
use weir_e2e::{component, repo_root, run_spec, run_toml, toml_path};

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const KEYS: &str = r#"{"k":"a"}
{"k":""}
{"k":null}
{"k":"u42"}
{"k":"foobar"}
{"k":"ünïcødé ✓"}
{"k":"a much longer key with spaces and digits 0123456789"}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn native_hash_bucket_equals_the_hash_bucket_stage() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.jsonl"), KEYS).unwrap();
    let wasm = component("stages/hash-bucket");
    let pipeline = |name: &str, stage: &str| {
        format!(
            r#"
name = "{name}"
[[source]]
name = "keys"
[source.jsonl]
path = "keys.jsonl"
batch_rows = 3
schema = [{{ name = "k", type = "utf8" }}]
[[stage]]
name = "bucket"
input = "keys"
{stage}
[[sink]]
name = "out"
input = "bucket"
[sink.jsonl]
path = "{name}.jsonl"
"#
        )
    };
    let stage = format!(
        "[stage.wasm]\ncomponent = {}\nparams = {{ input = \"k\", buckets = 1000, output = \"b\" }}",
        toml_path(&wasm)
    );
    run_toml(&pipeline("wasm", &stage), dir.path())
        .await
        .unwrap();
    let native = "[stage.map]\ntransforms = [{ hash_bucket = { column = \"k\", buckets = 1000, output = \"b\" } }]";
    run_toml(&pipeline("native", native), dir.path())
        .await
        .unwrap();
    let a = std::fs::read_to_string(dir.path().join("wasm.jsonl")).unwrap();
    let b = std::fs::read_to_string(dir.path().join("native.jsonl")).unwrap();
    assert_eq!(a, b);
    let rows = read_jsonl(&dir.path().join("native.jsonl"));
    // FNV-1a 64 reference values: "a" = 0xaf63dc4c8601ec8c, "" = 0xcbf29ce484222325.
    assert_eq!(
        rows[0],
        json!({"k": "a", "b": 0xaf63dc4c8601ec8cu64 % 1000})
    );
    assert_eq!(rows[1], json!({"k": "", "b": 0xcbf29ce484222325u64 % 1000}));
    assert_eq!(rows[2], json!({"k": null, "b": null}));
    assert_eq!(rows.len(), 7);
}

/// What [`serve`] received: each request's path and JSON body.
type Requests = Arc<Mutex<Vec<(String, Value)>>>;

/// A tiny HTTP/1.1 server: records each request's path and JSON body, answers
/// with the next status from `statuses` (then 200).
fn serve(statuses: Vec<u16>) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Requests = Arc::default();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (record, statuses) = (record.clone(), statuses.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line.split(' ').nth(1).unwrap().to_owned();
                    record
                        .lock()
                        .unwrap()
                        .push((path, serde_json::from_slice(&body).unwrap()));
                    let status = statuses.lock().unwrap().next().unwrap_or(200);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
                    );
                    stream.write_all(reply.as_bytes()).unwrap();
                }
            });
        }
    });
    (url, seen)
}

const ROWS: &str = r#"{"id":1,"x":0.5,"c":"a","t":0}
{"id":2,"x":null,"c":"b","t":1714564800123}
{"id":3,"x":-1.25,"c":null,"t":null}
"#;

fn http_pipeline(sink: &str) -> String {
    format!(
        r#"
name = "serve"
[[source]]
name = "rows"
[source.jsonl]
path = "rows.jsonl"
batch_rows = 2
schema = [{{ name = "id", type = "int64" }}, {{ name = "x", type = "float64" }}, {{ name = "c", type = "utf8" }}, {{ name = "t", type = "timestamp_ms" }}]
[[sink]]
name = "model"
input = "rows"
[sink.http]
{sink}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sink_posts_tf_serving_instances_and_retries_transient_failures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.jsonl"), ROWS).unwrap();
    // The first request gets a 503 and is retried.
    let (url, seen) = serve(vec![503]);
    let sink = format!(
        "url = \"{url}/v1/models/ctr:predict\"\nprotocol = \"tf_serving\"\ncolumns = [\"id\", \"x\", \"t\"]\nretry = {{ backoff = \"5ms\" }}\ntimestamps = \"rfc3339\""
    );
    let summary = run_toml(&http_pipeline(&sink), dir.path()).await.unwrap();
    assert_eq!(summary.node("model").unwrap().rows_out, 3);
    // The retry is counted in the run summary.
    assert_eq!(
        summary.node("model").unwrap().counters.get("retries"),
        Some(&1)
    );
    let seen = seen.lock().unwrap().clone();
    let first = json!({"instances": [{"id": 1, "x": 0.5, "t": "1970-01-01T00:00:00.000Z"}, {"id": 2, "x": null, "t": "2024-05-01T12:00:00.123Z"}]});
    let second = json!({"instances": [{"id": 3, "x": -1.25, "t": null}]});
    let path = "/v1/models/ctr:predict".to_owned();
    assert_eq!(
        seen,
        [
            (path.clone(), first.clone()),
            (path.clone(), first),
            (path, second)
        ]
    );

    // Vectors instead of objects.
    let (url, seen) = serve(vec![]);
    let sink = format!(
        "url = \"{url}/p\"\nprotocol = \"tf_serving\"\ninstance = \"vector\"\ncolumns = [\"x\", \"id\"]"
    );
    run_toml(&http_pipeline(&sink), dir.path()).await.unwrap();
    let bodies: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"instances": [[0.5, 1], [null, 2]]}),
            json!({"instances": [[-1.25, 3]]})
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sink_posts_kserve_v2_inputs_per_column_and_as_one_tensor() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.jsonl"), ROWS).unwrap();
    // A typed tensor holds no null: without defaults the write fails naming
    // the column and its row, and nothing is sent.
    let (url, seen) = serve(vec![]);
    let sink = format!("url = \"{url}/v2/models/ctr/infer\"\nprotocol = \"kserve\"");
    // `fail`: under the sinks' default policy the refused rows would be dead
    // letters and the rest sent.
    let failing = http_pipeline(&sink).replace("[sink.http]", "on_error = \"fail\"\n[sink.http]");
    let e = run_toml(&failing, dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "node `model` failed: column `x` is null, and a KServe tensor cannot hold a null: give `x` a value in the sink's `defaults` (row 1)"
    );
    assert!(seen.lock().unwrap().is_empty());

    // With defaults, nulls take them.
    let (url, seen) = serve(vec![]);
    let sink = format!(
        "url = \"{url}/v2/models/ctr/infer\"\nprotocol = \"kserve\"\ndefaults = {{ x = -1.0, c = \"\", t = 0 }}"
    );
    run_toml(&http_pipeline(&sink), dir.path()).await.unwrap();
    let bodies: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"inputs": [
                {"name": "id", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                {"name": "x", "shape": [2], "datatype": "FP64", "data": [0.5, -1.0]},
                {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                {"name": "t", "shape": [2], "datatype": "INT64", "data": [0, 1714564800123i64]},
            ]}),
            json!({"inputs": [
                {"name": "id", "shape": [1], "datatype": "INT64", "data": [3]},
                {"name": "x", "shape": [1], "datatype": "FP64", "data": [-1.25]},
                {"name": "c", "shape": [1], "datatype": "BYTES", "data": [""]},
                {"name": "t", "shape": [1], "datatype": "INT64", "data": [0]},
            ]}),
        ]
    );

    let (url, seen) = serve(vec![]);
    let sink = format!(
        "url = \"{url}/v2/models/ctr/infer\"\nprotocol = \"kserve\"\ntensor = \"features\"\ncolumns = [\"id\", \"x\"]\ndefaults = {{ x = 0.0 }}"
    );
    run_toml(&http_pipeline(&sink), dir.path()).await.unwrap();
    let bodies: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP64", "data": [1, 0.5, 2, 0.0]}]}),
            json!({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": [3, -1.25]}]}),
        ]
    );

    // A 400 is not retried: the run fails with the server's answer.
    let (url, seen) = serve(vec![400]);
    let sink = format!(
        "url = \"{url}/bad\"\nprotocol = \"kserve\"\ndefaults = {{ x = 0.0, c = \"\", t = 0 }}"
    );
    let e = run_toml(&http_pipeline(&sink), dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("node `model` failed: POST {url}/bad: HTTP 400: {{}} (permanent: not retried)")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Copies the shared-features example to `dir` so its outputs land there.
fn example_in(dir: &Path) {
    let src = repo_root().join("examples/shared-features");
    for f in ["events.jsonl", "common.toml", "ctr.toml", "churn.toml"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_features_example_runs_both_models_on_one_sub_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    example_in(dir.path());
    let events = read_jsonl(&dir.path().join("events.jsonl"));
    // What the shared `clean` filter keeps: a user and a price within [0, 800].
    let clean: Vec<&Value> = events
        .iter()
        .filter(|e| {
            !e["user_id"].is_null()
                && e["price"]
                    .as_f64()
                    .is_some_and(|p| (0.0..=800.0).contains(&p))
        })
        .collect();

    let ctr = PipelineSpec::from_file(&dir.path().join("ctr.toml")).unwrap();
    let names: Vec<&str> = ctr.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["features.clean", "features.encode", "labelled", "split"]
    );
    let summary = run_spec(ctr, dir.path()).await.unwrap();
    let labelled: Vec<&&Value> = clean.iter().filter(|e| !e["clicked"].is_null()).collect();
    assert_eq!(
        summary.node("features.clean").unwrap().rows_out,
        clean.len() as u64
    );
    assert_eq!(
        summary.node("labelled").unwrap().rows_out,
        labelled.len() as u64
    );
    assert_eq!(
        summary
            .node("labelled")
            .unwrap()
            .counters
            .get("filter:not_null(clicked)")
            .copied(),
        Some((clean.len() - labelled.len()) as u64)
    );
    let lines = read_jsonl(&dir.path().join("out/ctr.jsonl"));
    let rows: Vec<&Value> = lines
        .iter()
        .flat_map(|l| l["rows"].as_array().unwrap())
        .collect();
    assert_eq!(rows.len(), labelled.len());
    assert_eq!(lines[0]["names"][0], "split");
    for (row, event) in rows.iter().zip(&labelled) {
        assert_eq!(row[1], event["clicked"]);
        assert!(row[2].as_i64().unwrap() < 1024);
        assert!(row[0] == "train" || row[0] == "test", "{row}");
        let one_hot: i64 = (5..9).map(|i| row[i].as_i64().unwrap()).sum();
        assert_eq!(one_hot, i64::from(!event["country"].is_null()));
    }

    let churn = PipelineSpec::from_file(&dir.path().join("churn.toml")).unwrap();
    let summary = run_spec(churn, dir.path()).await.unwrap();
    let rows = read_jsonl(&dir.path().join("out/churn.jsonl"));
    let churned_in = clean.iter().filter(|e| e["churned"] == 1).count();
    let churned_out = rows.iter().filter(|r| r["churned"] == 1).count();
    assert_eq!(churned_out, churned_in.min(10));
    assert!(rows.iter().all(|r| r["user_bucket"].as_i64().unwrap() < 64));
    assert_eq!(
        summary.node("eval_sample").unwrap().rows_out,
        rows.len() as u64
    );
    // The same seed gives the same sample on a second run.
    let again = PipelineSpec::from_file(&dir.path().join("churn.toml")).unwrap();
    run_spec(again, dir.path()).await.unwrap();
    assert_eq!(read_jsonl(&dir.path().join("out/churn.jsonl")), rows);
}
