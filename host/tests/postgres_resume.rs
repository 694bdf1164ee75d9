//! Crash safety of a stored pipeline that reads PostgreSQL incrementally and
//! enriches each row from a PostgreSQL lookup table: the real `weir` binary,
//! killed with SIGKILL three times while rows are still being added to the
//! table, resumed each time and at last run to the end. Every row inserted
//! reaches the sink exactly once, joined with its user's segment, and the
//! output equals what this test computes on its own from what it inserted.
//!
//! The kills are driven by the checkpoints taken (the source position that
//! `weir pipeline checkpoint` prints), not by the sink's output. Where they
//! fall comes from a seed the test prints; `WEIR_CRASH_SEED=<seed>` replays a
//! failure. Needs the local PostgreSQL (`WEIR_TEST_PG_URL`; see
//! `tests/src/services.rs` for the address and for skipping).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{crash_seed, kill_lines, weir};

#[path = "../../tests/src/services.rs"]
mod services;

/// Users with events; those at or past [`USERS_WITH_SEGMENTS`] have no row in
/// the lookup table.
const USERS: u64 = 600;
const USERS_WITH_SEGMENTS: u64 = 500;
/// Rows in the table when the first run starts, and added after each kill.
const FIRST_ROWS: u64 = 60_000;
const ROWS_PER_KILL: u64 = 10_000;

fn client(url: &str) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(conn);
        client
    });
    (rt, client)
}

/// Drops the test's tables when the test ends, passing or not.
struct Tables {
    url: String,
    names: [String; 2],
}

impl Drop for Tables {
    fn drop(&mut self) {
        let (rt, c) = client(&self.url);
        for t in &self.names {
            let _ = rt.block_on(c.batch_execute(&format!("DROP TABLE IF EXISTS {t}")));
        }
    }
}

/// Inserts events `from..to` (`id` = the row's number, from the sequence).
fn insert(
    rt: &tokio::runtime::Runtime,
    c: &tokio_postgres::Client,
    table: &str,
    from: u64,
    to: u64,
) {
    rt.block_on(c.batch_execute(&format!(
        "INSERT INTO {table} (user_id, amount) \
         SELECT 'u' || (g % {USERS}), ((g % 1000) / 10.0)::float8 \
         FROM generate_series({from}, {} ) g ORDER BY g",
        to - 1
    )))
    .unwrap();
}

/// What the source has delivered according to the stored checkpoint: the
/// largest id it covers (`p=P;d=ranges`: `P`, or the end of the last range).
fn delivered(dir: &Path, name: &str) -> Option<u64> {
    let (ok, out, _) = weir(dir, &["pipeline", "checkpoint", name]);
    if !ok {
        return None;
    }
    let c: Value = serde_json::from_str(&out).ok()?;
    let position = c["sources"]["events"].as_str()?;
    let (p, d) = position.strip_prefix("p=")?.split_once(";d=")?;
    let p = p.parse::<u64>().unwrap_or(0);
    let d = d
        .rsplit(',')
        .next()
        .and_then(|r| r.rsplit("..").next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Some(p.max(d))
}

/// Runs the stored pipeline `name` (resumed when `resume`) and kills it with
/// SIGKILL once its checkpoint covers id `at`. Returns what it covered.
fn kill_once_past(dir: &Path, name: &str, resume: bool, at: u64) -> u64 {
    let mut args = vec!["run", name, "--quiet"];
    if resume {
        args.push("--resume");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "`{name}` ended ({status}) before its checkpoint covered id {at} (last: {:?}); {err}",
                delivered(dir, name)
            );
        }
        if let Some(covered) = delivered(dir, name).filter(|&c| c >= at) {
            child.kill().unwrap();
            child.wait().unwrap();
            return covered;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint past id {at} in two minutes"
        );
    }
}

#[test]
fn an_incremental_postgres_source_with_a_lookup_survives_kills() {
    let Some(url) = services::url(services::Service::Postgres) else {
        return;
    };
    let seed = crash_seed("postgres");
    let suffix = format!("{}_{}", std::process::id(), seed % 1_000_000);
    let (events, segments) = (
        format!("weir_kill_events_{suffix}"),
        format!("weir_kill_segments_{suffix}"),
    );
    let _drop = Tables {
        url: url.clone(),
        names: [events.clone(), segments.clone()],
    };
    let (rt, c) = client(&url);
    rt.block_on(c.batch_execute(&format!(
        "CREATE TABLE {events} (id bigserial PRIMARY KEY, user_id text NOT NULL, amount float8 NOT NULL);
         CREATE TABLE {segments} (user_id text PRIMARY KEY, segment text NOT NULL, ltv float8 NOT NULL);
         INSERT INTO {segments} SELECT 'u' || u, 'seg' || (u % 7), u * 1.5
           FROM generate_series(0, {}) u;",
        USERS_WITH_SEGMENTS - 1
    )))
    .unwrap();
    insert(&rt, &c, &events, 1, FIRST_ROWS + 1);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = format!(
        r#"name = "pg_enrich"
[settings]
checkpoint_interval = "20ms"
channel_batches = 2

[[source]]
name = "events"
[source.postgres]
url = "{url}"
query = "SELECT id, user_id, amount FROM {events}"
batch_rows = 250
incremental = {{ column = "id", follow = false }}

[[stage]]
name = "segments"
input = "events"
[stage.lookup]
key = ["user_id"]
defaults = {{ segment = "unknown" }}
table.postgres = {{ url = "{url}", query = "SELECT user_id, segment, ltv FROM {segments}" }}

[[sink]]
name = "out"
input = "segments"
[sink.jsonl]
path = "out.jsonl"
"#
    );
    std::fs::write(d.join("pipeline.toml"), pipeline).unwrap();
    let (ok, _, err) = weir(d, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");

    let mut rows = FIRST_ROWS;
    for (i, at) in kill_lines(seed, FIRST_ROWS, 3).into_iter().enumerate() {
        let covered = kill_once_past(d, "pg_enrich", i > 0, at);
        println!("postgres: killed once the checkpoint covered id {at} (it covered {covered})");
        // Rows keep arriving while the pipeline is down.
        insert(&rt, &c, &events, rows + 1, rows + ROWS_PER_KILL + 1);
        rows += ROWS_PER_KILL;
    }
    let (ok, out, err) = weir(d, &["run", "pg_enrich", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed from the checkpoint of"), "{out}");

    // Each row once, by id, with what this test inserted and its user's segment.
    let mut got: BTreeMap<u64, Value> = BTreeMap::new();
    let text = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    let mut written = 0u64;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_u64().unwrap();
        assert!(
            got.insert(id, v).is_none(),
            "id {id} delivered twice (WEIR_CRASH_SEED={seed})"
        );
        written += 1;
    }
    assert_eq!(
        (
            written,
            got.keys().next().copied(),
            got.keys().last().copied()
        ),
        (rows, Some(1), Some(rows)),
        "rows written, first id, last id (WEIR_CRASH_SEED={seed})"
    );
    for (&id, v) in &got {
        let user = id % USERS;
        let (segment, ltv) = if user < USERS_WITH_SEGMENTS {
            (
                Value::from(format!("seg{}", user % 7)),
                Value::from(user as f64 * 1.5),
            )
        } else {
            (Value::from("unknown"), Value::Null)
        };
        assert_eq!(v["user_id"], Value::from(format!("u{user}")), "id {id}");
        assert_eq!(
            v["amount"].as_f64(),
            Some((id % 1000) as f64 / 10.0),
            "id {id}"
        );
        assert_eq!(v["segment"], segment, "id {id}");
        assert_eq!(v.get("ltv").cloned().unwrap_or(Value::Null), ltv, "id {id}");
    }
}
