//! The enrichment example, as its README runs it: the CSV table and the
//! PostgreSQL table (filled from the same CSV) give the same rows, each row the
//! event joined here, independently, with its user's segment or the defaults.

use std::collections::HashMap;

use serde_json::{Value, json};
use weir::spec::PipelineSpec;
use weir_e2e::{repo_root, run_spec, services};

/// Each valid event of the quickstart file with its user's segment and ltv
/// from `segments.csv`, or `unknown` and 0.
fn expected(events: &str, segments: &str) -> Vec<Value> {
    let table: HashMap<&str, (&str, f64)> = segments
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let (u, s, v) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (u, (s, v.parse().unwrap()))
        })
        .collect();
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["user_id"].is_string()
                && v["ts"].is_i64()
                && v["price"].as_f64().is_none_or(|p| p >= 0.0)
        })
        .map(|v| {
            let (segment, ltv) = table
                .get(v["user_id"].as_str().unwrap())
                .copied()
                .unwrap_or(("unknown", 0.0));
            json!({
                "user_id": v["user_id"], "ts": v["ts"], "event": v["event"],
                "item_id": v["item_id"], "price": v["price"].as_f64(), "dwell_ms": v["dwell_ms"],
                "segment": segment, "ltv": ltv,
            })
        })
        .collect()
}

fn rows(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_csv_and_postgres_tables_enrich_every_event_alike() {
    let example = repo_root().join("examples/enrich");
    let segments = std::fs::read_to_string(example.join("segments.csv")).unwrap();
    let events =
        std::fs::read_to_string(repo_root().join("examples/quickstart/events.jsonl")).unwrap();
    let want = expected(&events, &segments);
    assert_eq!(want.len(), 240);
    assert!(
        want.iter().any(|r| r["segment"] == "unknown"),
        "some users have no row"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut spec = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
    let out = dir.path().join("enriched.jsonl");
    spec.sinks[0].jsonl_mut().unwrap().path = out.clone();
    let summary = run_spec(spec, dir.path()).await.unwrap();
    assert_eq!(rows(&out), want);
    let lookup = summary.node("segments").unwrap();
    let hits = lookup.counters["lookup_hits"];
    assert_eq!(hits + lookup.counters["lookup_misses"], 240);
    assert_eq!(
        240 - hits,
        want.iter().filter(|r| r["segment"] == "unknown").count() as u64
    );

    let Some(url) = services::url(services::Service::Postgres) else {
        return;
    };
    // The example's setup, as the README runs it, against the test server.
    let (user, host, port, db) = parse(&url);
    let status = std::process::Command::new(example.join("setup-postgres.sh"))
        .env("PGUSER", user)
        .env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGDATABASE", db)
        .status()
        .unwrap();
    assert!(status.success());
    let mut spec = PipelineSpec::from_file(&example.join("pipeline-postgres.toml")).unwrap();
    let out = dir.path().join("enriched-postgres.jsonl");
    spec.sinks[0].jsonl_mut().unwrap().path = out.clone();
    let summary = run_spec(spec, dir.path()).await.unwrap();
    assert_eq!(rows(&out), want);
    assert_eq!(
        summary.node("segments").unwrap().counters["lookup_hits"],
        hits
    );
}

/// `postgres://user@host:port/db` in parts.
fn parse(url: &str) -> (String, String, String, String) {
    let rest = url.strip_prefix("postgres://").unwrap_or(url);
    let (user, rest) = rest.split_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap_or("postgres");
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, "test"));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    (user.into(), host.into(), port.into(), db.into())
}
