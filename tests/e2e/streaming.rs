//! The streaming example, online against offline: the clickstream events
//! published to a JetStream stream, the session features computed on the
//! stream and written to Redis (`examples/streaming/pipeline.toml`), and the
//! same features from the JSON-lines file written to Parquet
//! (`pipeline-file.toml`). Every user's vector in Redis equals, feature by
//! feature, that user's latest session in the Parquet file. Needs NATS and
//! Redis (`WEIR_TEST_NATS_URL`, `WEIR_TEST_REDIS_URL`, by default the local
//! servers; see `weir_e2e::services` for skipping).

use std::collections::BTreeMap;

use serde_json::Value;
use weir::connectors::redis::read_vectors;
use weir::spec::{PipelineSpec, SinkKind, SourceKind};
use weir_e2e::clicks::{ClickConfig, generate};
use weir_e2e::services::{self, Service};
use weir_e2e::{repo_root, run_spec, run_spec_checkpointed};

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}_{n}", std::process::id())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_variants_vectors_equal_the_file_variants_latest_sessions() {
    let Some([nats, redis_url]) = services::urls([Service::Nats, Service::Redis]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("events.jsonl");
    generate(
        ClickConfig::small(),
        &mut std::fs::File::create(&data).unwrap(),
    )
    .unwrap();
    let example = repo_root().join("examples/streaming");

    // Offline: the file to Parquet.
    let mut file = PipelineSpec::from_file(&example.join("pipeline-file.toml")).unwrap();
    file.sources[0].jsonl_mut().unwrap().path = data.clone();
    file.sources[0].jsonl_mut().unwrap().rejects = Some(d.join("rejects-file.jsonl"));
    let parquet = d.join("sessions.parquet");
    match &mut file.sinks[0].kind {
        SinkKind::Parquet(p) => p.path = parquet.clone(),
        other => panic!("the file variant writes Parquet, not {other:?}"),
    }
    run_spec(file, d).await.unwrap();

    // Online: the same events published to a stream of their own, to Redis.
    let stream = unique("WEIRTEST");
    let subject = format!("{stream}.events");
    let published = weir::connectors::jetstream::publish_lines(
        &nats,
        &subject,
        Some(&stream),
        None,
        std::num::NonZeroUsize::MIN,
        std::io::BufReader::new(std::fs::File::open(&data).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(published.stored, 20_000);
    let prefix = unique("weirtest:streaming:");
    let mut online = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
    match &mut online.sources[0].kind {
        SourceKind::Jetstream(j) => {
            j.url = nats.clone();
            j.stream = stream.clone();
            j.subject = Some(subject.clone());
            j.rejects = Some(d.join("rejects-stream.jsonl"));
        }
        other => panic!("the stream variant reads JetStream, not {other:?}"),
    }
    match &mut online.sinks[0].kind {
        SinkKind::Redis(r) => {
            r.url = redis_url.clone();
            r.prefix = prefix.clone();
        }
        other => panic!("the stream variant writes Redis, not {other:?}"),
    }
    // Session windows on a stream run with checkpoints, as `weir run NAME`.
    let summary = run_spec_checkpointed(online, d).await.unwrap();
    assert_eq!(
        summary.nodes[0].rows_out, 19_815,
        "every good event read from the stream"
    );

    // Each user's latest session in the Parquet file.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let rows = batches.iter().flat_map(|b| {
        weir::batch::json::rows_as_objects(b, None, weir::batch::json::JsonOptions::default())
            .unwrap()
    });
    let mut latest: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for row in rows {
        let user = row["user_id"].as_str().unwrap().to_owned();
        let end = row["session_end"].as_i64().unwrap();
        if latest
            .get(&user)
            .is_none_or(|r| r["session_end"].as_i64().unwrap() <= end)
        {
            latest.insert(user, row);
        }
    }
    assert!(latest.len() > 100, "{} users", latest.len());

    let users: Vec<String> = latest.keys().cloned().collect();
    let stored = read_vectors(&redis_url, &prefix, &users).await.unwrap();
    let mut compared = 0;
    for (user, vector) in users.iter().zip(&stored) {
        let vector = vector
            .as_ref()
            .unwrap_or_else(|| panic!("no vector for {user}"));
        let offline = &latest[user];
        for (name, value) in offline {
            if name == "user_id" {
                continue;
            }
            if name == "session_end" {
                // The sink's event time: kept beside the features.
                assert_eq!(vector.event_time_ms, value.as_i64(), "{user}.session_end");
                compared += 1;
                continue;
            }
            let online = vector.features.get(name).unwrap_or(&Value::Null);
            let same = match (online.as_f64(), value.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => online == value,
            };
            assert!(same, "{user}.{name}: online {online}, offline {value}");
            compared += 1;
        }
    }
    println!(
        "{} users, {compared} features equal online and offline",
        users.len()
    );

    let mut c = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys[..]).query(&mut c).unwrap();
    }
    let nc = async_nats::connect(&nats).await.unwrap();
    let _ = async_nats::jetstream::new(nc).delete_stream(&stream).await;
}
