//! Delivery across a crash, as a user meets it: a stored pipeline run by the
//! real `weir` binary, killed with SIGKILL mid-run, then run again with
//! `--resume`; and a run stopped cleanly, then resumed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

mod common;
use common::{kill_at, start_and_wait, weir};
const LINES: u64 = 600_000;

/// A pipeline `copy` over `events.jsonl` (`LINES` records `{"n": i, …}`, every
/// 1000th line corrupt), applied to the store.
fn setup(dir: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl")).unwrap());
    for i in 0..LINES {
        if i % 1000 == 999 {
            writeln!(f, "{{\"n\": {i}, truncated").unwrap();
        } else {
            writeln!(f, "{{\"n\": {i}, \"s\": \"record number {i}\"}}").unwrap();
        }
    }
    drop(f);
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"name = "copy"
[settings]
checkpoint_interval = "20ms"
channel_batches = 2

[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
batch_rows = 200
threads = 1
schema = [{ name = "n", type = "int64", required = true }, { name = "s", type = "utf8" }]

[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "out.jsonl"
"#,
    )
    .unwrap();
    let (ok, _, err) = weir(dir, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
}

/// How often each `n` appears in the output.
fn counts(dir: &Path) -> BTreeMap<u64, u32> {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *seen.entry(v["n"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

fn expected() -> impl Iterator<Item = u64> {
    (0..LINES).filter(|i| i % 1000 != 999)
}

#[test]
fn a_run_killed_mid_way_and_resumed_delivers_every_record_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let checkpoint = kill_at(d, "copy", false, "out.jsonl.weir-inprogress", 6 << 20);
    assert!(!d.join("out.jsonl").exists(), "nothing was published");
    let position = &checkpoint.sources["events"];
    let line: u64 = position.split_once(':').unwrap().0.parse().unwrap();
    assert!(line > 0 && line < LINES, "mid-run: {position}");
    assert!(checkpoint.sinks.contains_key("out"), "{checkpoint:?}");

    let (ok, out, err) = weir(d, &["run", "copy", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed from the checkpoint of"), "{out}");
    let seen = counts(d);
    let missing: Vec<u64> = expected().filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} records missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        seen.len() as u64,
        expected().count() as u64,
        "no record that was not in the input"
    );
    let twice = seen.values().filter(|&&c| c > 1).count();
    println!("resumed after line {line}: {twice} records written twice");
    let store = weir::store::Store::open(&d.join("data")).unwrap();
    let last = store.checkpoint("copy").unwrap().unwrap();
    assert!(last.complete);
    assert_eq!(
        last.sources["events"].split_once(':').unwrap().0,
        LINES.to_string()
    );
}

#[test]
fn a_run_stopped_cleanly_and_resumed_reads_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let child = start_and_wait(
        d,
        &["run", "copy", "--quiet"],
        "out.jsonl.weir-inprogress",
        6 << 20,
    );
    let (ok, _, err) = weir(d, &["pipeline", "stop", "copy"]);
    assert!(ok, "{err}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let first = counts(d);
    assert!(
        !first.is_empty() && (first.len() as u64) < expected().count() as u64,
        "stopped mid-run: {} records",
        first.len()
    );

    let (ok, _, err) = weir(d, &["run", "copy", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    let seen = counts(d);
    assert!(seen.values().all(|&c| c == 1), "a record was read twice");
    assert!(
        seen.keys().copied().eq(expected()),
        "every record exactly once"
    );
}

/// The CSV source across a crash: a stored pipeline over `LINES` CSV records,
/// killed with SIGKILL mid-input and resumed, delivers every record.
#[test]
fn a_csv_run_killed_mid_way_and_resumed_delivers_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("events.csv")).unwrap());
    writeln!(f, "n,s").unwrap();
    for i in 0..LINES {
        writeln!(f, "{i},record number {i}").unwrap();
    }
    drop(f);
    std::fs::write(
        d.join("pipeline.toml"),
        r#"name = "csvcopy"
[settings]
checkpoint_interval = "20ms"
channel_batches = 2

[[source]]
name = "events"
[source.csv]
path = "events.csv"
batch_rows = 200
schema = [{ name = "n", type = "int64", required = true }, { name = "s", type = "utf8" }]

[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "out.jsonl"
"#,
    )
    .unwrap();
    let (ok, _, err) = weir(d, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
    kill_at(d, "csvcopy", false, "out.jsonl.weir-inprogress", 6 << 20);
    let (ok, _, err) = weir(d, &["run", "csvcopy", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    let seen = counts(d);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..LINES).collect::<Vec<_>>(),
        "every record, none that was not in the input"
    );
}
