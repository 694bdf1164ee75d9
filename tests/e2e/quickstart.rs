//! The quickstart example, run as the README runs it, checked against features
//! computed here independently of the stages.

use serde_json::{Value, json};
use weir::spec::PipelineSpec;
use weir_e2e::{repo_root, run_spec};

/// FNV-1a 64, written out here so the check does not trust the stage's copy.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn expected_features(events: &str) -> (Vec<Value>, usize) {
    let bounds = [0.0, 10.0, 50.0, 100.0, 500.0];
    let mut rows = Vec::new();
    let mut corrupt = 0;
    for line in events.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            corrupt += 1;
            continue;
        };
        let ok = v["user_id"].is_string()
            && v["ts"].is_i64()
            && v["price"].as_f64().is_none_or(|p| p >= 0.0);
        if !ok {
            corrupt += 1;
            continue;
        }
        let price = v["price"].as_f64();
        let bucket = match price {
            None => -1,
            Some(p) => bounds
                .iter()
                .rposition(|b| p >= *b)
                .map_or(-1, |i| i as i64),
        };
        let user = v["user_id"].as_str().unwrap();
        rows.push(json!({
            "user_id": user,
            "ts": v["ts"],
            "event": v["event"],
            "price": price,
            "price_bucket": bucket,
            "user_bucket": fnv1a(user.as_bytes()) % 16,
        }));
    }
    (rows, corrupt)
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_writes_exactly_the_expected_features() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/quickstart");
    let mut spec = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
    let out = dir.path().join("features.jsonl");
    spec.sinks[0].jsonl_mut().unwrap().path = out.clone();

    let summary = run_spec(spec, dir.path()).await.unwrap();

    let events = std::fs::read_to_string(example.join("events.jsonl")).unwrap();
    let (expected, corrupt) = expected_features(&events);
    assert_eq!(corrupt, 4);
    let written: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 240);
    assert_eq!(written, expected);
    // Column order is the sink's `columns` order.
    let first_line = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert!(first_line.starts_with(r#"{"user_id":"u12","ts":1700000042545,"event":"view","price":3.95,"price_bucket":0,"user_bucket":"#), "{first_line}");

    assert_eq!(summary.records_in(), 240);
    assert_eq!(summary.corrupt(), 4);
    let events_node = summary.node("events").unwrap();
    assert_eq!(events_node.counters["dead_letter:invalid_json"], 1);
    assert_eq!(events_node.counters["dead_letter:user_id:missing"], 1);
    assert_eq!(events_node.counters["dead_letter:ts:type"], 1);
    assert_eq!(events_node.counters["dead_letter:price:range"], 1);
    for stage in ["price_bucket", "user_bucket"] {
        let n = summary.node(stage).unwrap();
        assert_eq!((n.rows_in, n.rows_out), (240, 240), "{stage}");
    }
    assert_eq!(summary.node("features").unwrap().rows_out, 240);

    // The corrupt lines are kept, with their reasons, in the run's dead-letter file.
    let letters = std::fs::read_to_string(summary.dead_letter_file.as_ref().unwrap()).unwrap();
    let letters: Vec<Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["invalid_json", "user_id:missing", "ts:type", "price:range"]
    );
    assert_eq!(letters[0]["position"], "events.jsonl:18");
    assert_eq!(
        letters[0]["record"],
        r#"{"user_id":"u3","ts":1700000123456,"event":"vi"#
    );
    assert_eq!(letters[0]["node"], "events");
}

#[tokio::test(flavor = "multi_thread")]
async fn projected_stages_give_the_same_features() {
    let example = repo_root().join("examples/quickstart");
    let run = |columns: Option<[&'static str; 2]>| {
        let example = example.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut spec = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
            let out = dir.path().join("features.jsonl");
            spec.sinks[0].jsonl_mut().unwrap().path = out.clone();
            if let Some(cols) = columns {
                for (stage, col) in spec.stages.iter_mut().zip(cols) {
                    stage.wasm_mut().unwrap().columns = Some(vec![col.to_owned()]);
                }
            }
            run_spec(spec, dir.path()).await.unwrap();
            std::fs::read_to_string(out).unwrap()
        }
    };
    let whole = run(None).await;
    let projected = run(Some(["price", "user_id"])).await;
    assert_eq!(whole.lines().count(), 240);
    assert_eq!(projected, whole);

    // A projected column the batch lacks is named.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
    spec.sinks[0].jsonl_mut().unwrap().path = dir.path().join("f.jsonl");
    spec.stages[0].wasm_mut().unwrap().columns = Some(vec!["prize".to_owned()]);
    let err = run_spec(spec, dir.path()).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "node `price_bucket` failed: stage `price_bucket`: input batch: the batch has no column `prize`"
    );
}
