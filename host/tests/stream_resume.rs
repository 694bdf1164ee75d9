//! A stream pipeline across crashes, as a user meets it: events published to a
//! real JetStream stream (`weir nats publish`), read by a stored pipeline
//! (JetStream → session → Redis and JSON lines, plus the raw events to JSON
//! lines) run by the real `weir` binary, killed with SIGKILL twice at points
//! that differ from run to run and resumed each time. After the stream is
//! drained: every message reached the raw sink at least once and none is
//! missing, the sessions equal an uninterrupted run's exactly (none lost, none
//! counted twice), and the Redis hashes equal the uninterrupted run's, entity
//! by entity and feature by feature.
//!
//! Needs `WEIR_TEST_NATS_URL` and `WEIR_TEST_REDIS_URL` (skipped, saying so,
//! when either is unset). The stream and the Redis keys are named at random and
//! deleted afterwards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

mod common;
use common::{kill_at, kill_points, sorted_lines, weir};
const EVENTS: u64 = 200_000;

/// Bursts of three users taking turns (about 13 events each, 10 ms apart), a
/// user returning long after the 2 s gap: many sessions, several open at once.
fn write_events(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..EVENTS {
        let user = ((i / 40) * 3 + i % 3) % 997;
        writeln!(
            f,
            "{{\"id\": {i}, \"u\": \"user{user}\", \"ts\": {}, \"v\": {}}}",
            i * 10,
            i % 101
        )
        .unwrap();
    }
}

fn pipeline(nats: &str, stream: &str, redis: &str, prefix: &str) -> String {
    format!(
        r#"name = "stream-sessions"
[settings]
checkpoint_interval = "50ms"
channel_batches = 2

[[source]]
name = "events"
[source.jetstream]
url = "{nats}"
stream = "{stream}"
subject = "{stream}.in"
durable = "{prefix}"
batch = 500
max_ack_pending = 1000000
stop_when_drained = true
schema = [
  {{ name = "id", type = "int64", required = true }},
  {{ name = "u", type = "utf8", required = true }},
  {{ name = "ts", type = "int64", required = true }},
  {{ name = "v", type = "int64" }},
]

[[stage]]
name = "windows"
input = "events"
[stage.session]
key = ["u"]
time = "ts"
gap = "2s"
aggregates = [
  {{ name = "n", op = "count" }},
  {{ name = "total", op = "sum", column = "v" }},
  {{ name = "first_id", op = "first", column = "id" }},
  {{ name = "last_id", op = "last", column = "id" }},
]

[[sink]]
name = "sessions"
input = "windows"
[sink.jsonl]
path = "sessions.jsonl"

[[sink]]
name = "online"
input = "windows"
[sink.redis]
url = "{redis}"
prefix = "{prefix}"
entity = "u"
event_time = "session_end"

[[sink]]
name = "raw"
input = "events"
[sink.jsonl]
path = "raw.jsonl"
"#
    )
}

/// The `id` of every line of the raw sink's file.
fn raw_ids(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The vectors stored under `prefix` for `users`, without their lineage (which
/// names the run that wrote them): entity → (event time, features).
fn vectors(url: &str, prefix: &str, users: &[String]) -> BTreeMap<String, Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt
        .block_on(weir::connectors::redis::read_vectors(url, prefix, users))
        .unwrap();
    users
        .iter()
        .zip(stored)
        .filter_map(|(u, v)| {
            v.map(|v| (u.clone(), serde_json::json!([v.event_time_ms, v.features])))
        })
        .collect()
}

/// Deletes the stream and the Redis keys when the test ends, passing or not.
struct Cleanup {
    nats: String,
    stream: String,
    redis: String,
    prefixes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(c) = async_nats::connect(&self.nats).await {
                let _ = async_nats::jetstream::new(c)
                    .delete_stream(&self.stream)
                    .await;
            }
        });
        if let Ok(mut c) = redis::Client::open(self.redis.as_str()).and_then(|c| c.get_connection())
        {
            for p in &self.prefixes {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{p}*"))
                    .query(&mut c)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(&keys[..]).query(&mut c);
                }
            }
        }
    }
}

#[test]
fn a_stream_pipeline_killed_twice_and_resumed_equals_an_uninterrupted_run() {
    let (Some(nats), Some(redis)) = (
        std::env::var("WEIR_TEST_NATS_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        std::env::var("WEIR_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty()),
    ) else {
        eprintln!("skipped: WEIR_TEST_NATS_URL or WEIR_TEST_REDIS_URL is not set");
        return;
    };
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let stream = format!("weir_test_resume_{tag}");
    let (reference_prefix, killed_prefix) = (
        format!("weir_test_ref_{tag}"),
        format!("weir_test_kill_{tag}"),
    );
    let _cleanup = Cleanup {
        nats: nats.clone(),
        stream: stream.clone(),
        redis: redis.clone(),
        prefixes: vec![reference_prefix.clone(), killed_prefix.clone()],
    };

    // Publish the events once; both runs read them with consumers of their own.
    let reference = tempfile::tempdir().unwrap();
    let r = reference.path();
    write_events(&r.join("events.jsonl"));
    let subject = format!("{stream}.in");
    let (ok, out, err) = weir(
        r,
        &[
            "nats",
            "publish",
            "events.jsonl",
            "--subject",
            &subject,
            "--url",
            &nats,
            "--create-stream",
            &stream,
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&EVENTS.to_string()), "{out}");

    // The uninterrupted run.
    std::fs::write(
        r.join("pipeline.toml"),
        pipeline(&nats, &stream, &redis, &reference_prefix),
    )
    .unwrap();
    // Session windows on a stream run stored, with checkpoints: a run from the
    // file is refused, saying so.
    let (ok, _, err) = weir(r, &["run", "--quiet", "pipeline.toml"]);
    assert!(!ok);
    assert!(err.contains("Store the pipeline"), "{err}");
    let (ok, _, err) = weir(r, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
    let (ok, _, err) = weir(r, &["run", "--quiet", "stream-sessions"]);
    assert!(ok, "{err}");
    let expected = sorted_lines(&r.join("sessions.jsonl"));
    let total = std::fs::metadata(r.join("sessions.jsonl")).unwrap().len();
    assert!(expected.len() > 3_000, "{} sessions", expected.len());
    let mut ids = raw_ids(&r.join("raw.jsonl"));
    ids.sort_unstable();
    assert_eq!(ids, (0..EVENTS).collect::<Vec<_>>());
    let users: Vec<String> = (0..997).map(|u| format!("user{u}")).collect();
    let expected_vectors = vectors(&redis, &reference_prefix, &users);
    assert_eq!(expected_vectors.len(), 997, "every user has a vector");

    // The run killed twice, at points that differ from run to run.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        pipeline(&nats, &stream, &redis, &killed_prefix),
    )
    .unwrap();
    let (ok, _, err) = weir(d, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
    for (i, at) in kill_points(total).into_iter().enumerate() {
        let c = kill_at(
            d,
            "stream-sessions",
            i > 0,
            "sessions.jsonl.weir-inprogress",
            at,
        );
        assert!(
            c.operators.contains_key("windows"),
            "the session state is checkpointed"
        );
        println!(
            "killed at {at} of {total} bytes of sessions; checkpoint at stream sequence {}",
            c.sources["events"]
        );
    }
    let started = Instant::now();
    let (ok, out, err) = weir(d, &["run", "stream-sessions", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed from the checkpoint of"), "{out}");
    // The killed runs' unacknowledged messages come at once, not after the
    // 30 s ack_wait.
    println!("the last run took {:?}", started.elapsed());

    // Every message reached the raw sink at least once; none is missing.
    let mut got_ids = raw_ids(&d.join("raw.jsonl"));
    got_ids.sort_unstable();
    let read = got_ids.len();
    got_ids.dedup();
    assert_eq!(got_ids, (0..EVENTS).collect::<Vec<_>>(), "none missing");
    println!("raw sink: {read} lines for {EVENTS} messages");
    // Every session exactly once.
    let got = sorted_lines(&d.join("sessions.jsonl"));
    let missing = expected
        .iter()
        .filter(|l| got.binary_search(l).is_err())
        .count();
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(missing, 0, "sessions missing");
    assert_eq!(got.len() - distinct.len(), 0, "sessions written twice");
    assert_eq!(got, expected);
    // The online store equals the uninterrupted run's: every entity, every
    // feature, the same (latest) event time.
    assert_eq!(vectors(&redis, &killed_prefix, &users), expected_vectors);
    // Everything is acknowledged on the server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let info = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
        js.get_stream(&stream)
            .await
            .unwrap()
            .consumer_info(&killed_prefix)
            .await
            .unwrap()
    });
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (EVENTS, 0)
    );
}
