//! Source plugins (`[source.plugin]`): the access-log connector turns the sample
//! log into exactly the events an independent parser finds there; a plugin that
//! opens a path it was not granted, loops forever, bombs its memory, panics or
//! returns another schema than declared fails the run with a message naming the
//! plugin and the cause, and the host then runs the next pipeline normally.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::connectors::plugin::PluginFailure;
use weir::exec::RunError;
use weir_e2e::{component, repo_root, run_toml, toml_path, toml_str};

const ACCESS_LOG: &str = "stages/access-log";
const HOSTILE: &str = "tests/fixtures/hostile-connector";

const ACCESS_LOG_SCHEMA: &str = r#"[
  { name = "ip", type = "utf8" },
  { name = "user", type = "utf8" },
  { name = "ts", type = "timestamp_ms" },
  { name = "method", type = "utf8" },
  { name = "path", type = "utf8" },
  { name = "protocol", type = "utf8" },
  { name = "status", type = "int32" },
  { name = "bytes", type = "int64" },
  { name = "referer", type = "utf8" },
  { name = "user_agent", type = "utf8" },
]"#;

/// A pipeline reading the access log `path` with the plugin, granted `grants`.
fn access_log_pipeline(path: &str, grants: &str, max_rows: u32) -> String {
    format!(
        r#"
name = "access-log"
[[source]]
name = "requests"
[source.plugin]
component = {component}
config = {{ path = {path} }}
grants = {{ read = [{grants}] }}
max_rows = {max_rows}
schema = {ACCESS_LOG_SCHEMA}

[[sink]]
name = "out"
input = "requests"
[sink.jsonl]
path = "out.jsonl"
"#,
        component = toml_path(&component(ACCESS_LOG)),
        path = toml_str(path),
    )
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// An independent reading of the combined log format: one pass over the
// characters, splitting fields at spaces outside quotes and brackets, then
// converting each field. It shares no code with the plugin.

/// The fields of a line: bare words, `[...]` and `"..."` (unescaped), or `None`
/// when a quote or bracket is left open.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(first) = chars.next() else {
            return Some(out);
        };
        let mut field: Vec<u8> = Vec::new();
        match first {
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'x' => {
                            let hi = chars.next()?.to_digit(16)?;
                            let lo = chars.next()?.to_digit(16)?;
                            field.push((hi * 16 + lo) as u8);
                        }
                        c => field.extend(c.to_string().bytes()),
                    },
                    c => field.extend(c.to_string().bytes()),
                }
            },
            '[' => loop {
                match chars.next()? {
                    ']' => break,
                    c => field.extend(c.to_string().bytes()),
                }
            },
            c => {
                field.extend(c.to_string().bytes());
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    field.extend(c.to_string().bytes());
                    chars.next();
                }
            }
        }
        out.push(String::from_utf8(field).ok()?);
    }
}

/// Milliseconds since the epoch of `dd/Mon/yyyy:hh:mm:ss ±hhmm`, counting days
/// year by year and month by month.
fn epoch_ms(text: &str) -> Option<i64> {
    let (stamp, zone) = text.split_once(' ')?;
    let mut parts = stamp.splitn(3, '/');
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let rest = parts.next()?;
    let mut clock = rest.split(':');
    let year: i64 = clock.next()?.parse().ok()?;
    let h: i64 = clock.next()?.parse().ok()?;
    let m: i64 = clock.next()?.parse().ok()?;
    let s: i64 = clock.next()?.parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|&n| n == month_name)?;
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0i64;
    for y in 1970..year {
        days += if leap(y) { 366 } else { 365 };
    }
    let lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    for (i, len) in lengths.iter().enumerate().take(month) {
        days += len + i64::from(i == 1 && leap(year));
    }
    days += day - 1;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zh: i64 = zone.get(1..3)?.parse().ok()?;
    let zm: i64 = zone.get(3..5)?.parse().ok()?;
    let local = days * 86_400 + h * 3600 + m * 60 + s;
    Some((local - sign * (zh * 3600 + zm * 60)) * 1000)
}

/// The event a line holds, as the JSON-lines sink writes it, or `None` for a
/// malformed line.
fn expected_event(line: &str) -> Option<Value> {
    let f = fields(line)?;
    if f.len() != 9 {
        return None;
    }
    let or_null = |s: &str| if s == "-" { Value::Null } else { json!(s) };
    let request: Vec<&str> = f[4].split(' ').collect();
    let (method, path, protocol) = match request[..] {
        ["-"] => (Value::Null, Value::Null, Value::Null),
        [m, p, v] => (json!(m), json!(p), json!(v)),
        _ => return None,
    };
    let status: i64 = f[5].parse().ok()?;
    let bytes = if f[6] == "-" {
        Value::Null
    } else {
        json!(f[6].parse::<i64>().ok()?)
    };
    Some(json!({
        "ip": f[0],
        "user": or_null(&f[2]),
        "ts": epoch_ms(&f[3])?,
        "method": method,
        "path": path,
        "protocol": protocol,
        "status": status,
        "bytes": bytes,
        "referer": or_null(&f[7]),
        "user_agent": or_null(&f[8]),
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_plugin_gives_exactly_the_events_of_the_sample_log() {
    let sample = repo_root().join("examples/access-log/access.log");
    let text = std::fs::read_to_string(&sample).unwrap();
    let expected: Vec<Value> = text.lines().filter_map(expected_event).collect();
    let malformed = text.lines().count() - expected.len();
    assert_eq!(expected.len(), 300, "the sample holds 300 requests");
    assert_eq!(malformed, 2, "and 2 malformed lines");
    // The edge cases are there to be checked.
    assert!(expected.iter().any(|e| e["bytes"].is_null()));
    assert!(expected.iter().any(|e| e["method"].is_null()));
    assert!(
        expected
            .iter()
            .any(|e| e["user_agent"].as_str().is_some_and(|a| a.contains('"')))
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&sample, dir.path().join("access.log")).unwrap();
    // Small batches, so batches end mid-file and on malformed lines.
    let summary = run_toml(&access_log_pipeline("access.log", "\".\"", 7), dir.path())
        .await
        .expect("the access-log plugin runs");
    let got = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "event {i}");
    }
    let source = summary.node("requests").unwrap();
    assert_eq!(source.rows_out, 300);
    assert_eq!(
        source.counters.get("plugin:malformed_lines"),
        Some(&2),
        "{:?}",
        source.counters
    );
}

/// The node error's plugin failure, and the run's message.
fn plugin_failure(err: &RunError) -> &PluginFailure {
    let error = match err {
        RunError::Node {
            error: weir::exec::NodeError::Stage { error, .. },
            ..
        } => error,
        RunError::Plan(weir::exec::PlanError::Open {
            error: weir::exec::NodeError::Stage { error, .. },
            ..
        }) => error,
        other => panic!("expected a plugin's failure, got {other:?}"),
    };
    error
        .downcast_ref::<PluginFailure>()
        .unwrap_or_else(|| panic!("not a plugin failure: {error}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_opening_an_ungranted_path_fails_and_the_next_pipeline_runs() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    std::fs::copy(repo_root().join("examples/access-log/access.log"), &log).unwrap();
    let log = log.display().to_string();
    let dir = tempfile::tempdir().unwrap();

    // Nothing granted: the plugin cannot see the file.
    let err = run_toml(&access_log_pipeline(&log, "", 100), dir.path())
        .await
        .expect_err("an ungranted path must fail");
    let failure = plugin_failure(&err);
    assert_eq!(failure.reason, "open");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "`requests`: plugin `access_log`: connector `requests` could not open its source: cannot open {log}: "
        )),
        "{message}"
    );
    assert!(
        message.ends_with(
            "(the plugin was granted no directories; grant one with `grants = { read = [\"dir\"] }`)"
        ),
        "{message}"
    );
    assert!(!dir.path().join("out.jsonl").exists());

    // Another directory granted: still not this one, and the message says which.
    let other = tempfile::tempdir().unwrap();
    let grant = toml_str(&other.path().display().to_string());
    let err = run_toml(&access_log_pipeline(&log, &grant, 100), dir.path())
        .await
        .expect_err("a path outside the grant must fail");
    assert!(
        err.to_string().ends_with(&format!(
            "(the plugin may read only under {} (`grants.read`))",
            other.path().display()
        )),
        "{err}"
    );

    // The host then runs the next pipeline, granted the file's directory.
    let grant = toml_str(&logs.path().display().to_string());
    let summary = run_toml(&access_log_pipeline(&log, &grant, 100), dir.path())
        .await
        .expect("a granted path runs");
    assert_eq!(summary.node("requests").unwrap().rows_out, 300);
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 300);
}

/// A pipeline reading the hostile connector in `mode` with `limits`.
fn hostile_pipeline(config: &str, limits: &str, column_type: &str) -> String {
    format!(
        r#"
name = "hostile-source"
[[source]]
name = "gen"
[source.plugin]
component = {}
config = {config}
limits = {limits}
max_rows = 4
schema = [{{ name = "n", type = "{column_type}" }}]

[[sink]]
name = "out"
input = "gen"
[sink.jsonl]
path = "out.jsonl"
"#,
        toml_path(&component(HOSTILE))
    )
}

/// Runs the hostile connector in `mode` with `limits`; returns the run's error.
async fn run_hostile(mode: &str, limits: &str) -> RunError {
    let dir = tempfile::tempdir().unwrap();
    let text = hostile_pipeline(&format!("{{ mode = \"{mode}\" }}"), limits, "int64");
    let err = run_toml(&text, dir.path())
        .await
        .expect_err("the hostile plugin must fail the run");
    assert!(!dir.path().join("out.jsonl").exists(), "nothing published");
    err
}

/// The host still runs a well-behaved plugin after whatever came before.
async fn host_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let text = hostile_pipeline("{ mode = \"count\", rows = 10 }", "{}", "int64");
    let summary = run_toml(&text, dir.path())
        .await
        .expect("a well-behaved plugin runs");
    assert_eq!(summary.node("gen").unwrap().rows_out, 10);
    let out: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    assert_eq!(out, (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_looping_forever_is_stopped_by_fuel() {
    let err = run_hostile("spin", "{ fuel = 5_000_000, deadline = \"60s\" }").await;
    assert_eq!(plugin_failure(&err).reason, "out_of_fuel");
    assert_eq!(
        err.to_string(),
        "node `gen` failed: plugin `hostile_connector`: stage `gen` ran out of fuel (budget 5000000 per call)"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_looping_forever_is_stopped_by_the_deadline() {
    let started = Instant::now();
    let err = run_hostile(
        "spin",
        "{ fuel = 9_000_000_000_000_000_000, deadline = \"200ms\" }",
    )
    .await;
    assert_eq!(plugin_failure(&err).reason, "deadline");
    assert_eq!(
        err.to_string(),
        "node `gen` failed: plugin `hostile_connector`: stage `gen` exceeded its deadline of 200ms"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_over_its_memory_cap_or_panicking_is_stopped_naming_the_cause() {
    let err = run_hostile("bomb", "{ memory = \"32MiB\" }").await;
    assert_eq!(plugin_failure(&err).reason, "memory_cap");
    assert!(
        err.to_string()
            .contains("stage `gen` exceeded its memory cap of 32MiB"),
        "{err}"
    );
    let err = run_hostile("panic", "{}").await;
    assert_eq!(plugin_failure(&err).reason, "panic");
    assert!(
        err.to_string().contains("panicked at src/lib.rs:")
            && err
                .to_string()
                .ends_with(": hostile connector panicked on purpose"),
        "{err}"
    );
    host_still_works().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_not_of_the_declared_schema_is_a_stage_fault() {
    let dir = tempfile::tempdir().unwrap();
    let text = hostile_pipeline("{ mode = \"wrong_type\", rows = 10 }", "{}", "int64");
    let err = run_toml(&text, dir.path())
        .await
        .expect_err("a wrong type fails");
    assert_eq!(plugin_failure(&err).reason, "output_contract");
    assert_eq!(
        err.to_string(),
        "node `gen` failed: plugin `hostile_connector`: stage `gen` returned column `n` as Utf8, but it is declared Int64"
    );
    // The same plugin with the schema it does return runs.
    let text = hostile_pipeline("{ mode = \"wrong_type\", rows = 10 }", "{}", "utf8");
    let summary = run_toml(&text, dir.path()).await.expect("utf8 as declared");
    assert_eq!(summary.node("gen").unwrap().rows_out, 10);
}
