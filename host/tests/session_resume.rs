//! Session windows across crashes, as a user meets them: a stored pipeline
//! (JSON lines → session → JSON lines) run by the real `weir` binary, killed
//! with SIGKILL twice at points that differ from run to run, resumed each time,
//! and compared with an uninterrupted run of the same file: every session
//! exactly once, none lost, none counted twice. The session state travels in
//! the aligned checkpoints (`exec::barrier`), not in held acknowledgements.

use std::io::Write;
use std::path::Path;

mod common;
use common::{kill_at, kill_points, sorted_lines, start_and_wait, weir};
const EVENTS: u64 = 1_000_000;

/// Bursts of three users taking turns (about 13 events each, 10 ms apart), a
/// user returning long after the 2 s gap: many sessions, several open at once.
fn write_events(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..EVENTS {
        let user = ((i / 40) * 3 + i % 3) % 997;
        writeln!(
            f,
            "{{\"u\": \"user{user}\", \"ts\": {}, \"v\": {}}}",
            i * 10,
            i % 101
        )
        .unwrap();
    }
}

const PIPELINE: &str = r#"name = "sessions"
[settings]
checkpoint_interval = "25ms"
channel_batches = 2

[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
batch_rows = 500
threads = 1
schema = [
  { name = "u", type = "utf8", required = true },
  { name = "ts", type = "int64", required = true },
  { name = "v", type = "int64" },
]

[[stage]]
name = "windows"
input = "events"
[stage.session]
key = ["u"]
time = "ts"
gap = "2s"
aggregates = [
  { name = "n", op = "count" },
  { name = "total", op = "sum", column = "v" },
  { name = "first_v", op = "first", column = "v" },
  { name = "last_v", op = "last", column = "v" },
]

[[sink]]
name = "out"
input = "windows"
[sink.jsonl]
path = "out.jsonl"
"#;

/// An uninterrupted run of the pipeline file over the events, and a second
/// directory with the same events and the pipeline stored: the reference's
/// sorted sessions, the byte size of its output, and both directories.
fn reference_and_stored() -> (tempfile::TempDir, tempfile::TempDir, Vec<String>, u64) {
    let reference = tempfile::tempdir().unwrap();
    let r = reference.path();
    write_events(&r.join("events.jsonl"));
    std::fs::write(r.join("pipeline.toml"), PIPELINE).unwrap();
    let (ok, _, err) = weir(r, &["run", "--quiet", "pipeline.toml"]);
    assert!(ok, "{err}");
    let expected = sorted_lines(&r.join("out.jsonl"));
    let total = std::fs::metadata(r.join("out.jsonl")).unwrap().len();
    assert!(expected.len() > 10_000, "{} sessions", expected.len());

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(r.join("events.jsonl"), d.join("events.jsonl")).unwrap();
    std::fs::write(d.join("pipeline.toml"), PIPELINE).unwrap();
    let (ok, _, err) = weir(d, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
    (reference, dir, expected, total)
}

#[test]
fn sessions_killed_twice_and_resumed_equal_an_uninterrupted_run() {
    let (_reference, dir, expected, total) = reference_and_stored();
    let d = dir.path();
    // Two kill points that differ from run to run, the second further on.
    let mut operator_states = Vec::new();
    for (i, at) in kill_points(total).into_iter().enumerate() {
        let c = kill_at(d, "sessions", i > 0, "out.jsonl.weir-inprogress", at);
        let state = c
            .operators
            .get("windows")
            .expect("the session state is checkpointed");
        assert!(state.is_file(), "{state:?} exists");
        operator_states.push(state.clone());
        println!(
            "killed at {at} of {total} bytes; checkpoint at {}",
            c.sources["events"]
        );
    }
    let (ok, out, err) = weir(d, &["run", "sessions", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed from the checkpoint of"), "{out}");
    let got = sorted_lines(&d.join("out.jsonl"));
    let missing = expected
        .iter()
        .filter(|l| got.binary_search(l).is_err())
        .count();
    let mut twice = got.clone();
    twice.dedup();
    assert_eq!(missing, 0, "sessions missing");
    assert_eq!(got.len() - twice.len(), 0, "sessions written twice");
    assert_eq!(got, expected);
    // The states of superseded checkpoints are removed.
    assert!(
        !operator_states[0].exists(),
        "{:?} is removed",
        operator_states[0]
    );
}

#[test]
fn sessions_stopped_cleanly_and_resumed_equal_an_uninterrupted_run() {
    let (_reference, dir, expected, total) = reference_and_stored();
    let d = dir.path();
    let child = start_and_wait(
        d,
        &["run", "sessions", "--quiet"],
        "out.jsonl.weir-inprogress",
        total / 3,
    );
    let (ok, _, err) = weir(d, &["pipeline", "stop", "sessions"]);
    assert!(ok, "{err}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let c = weir::store::Store::open(&d.join("data"))
        .unwrap()
        .checkpoint("sessions")
        .unwrap()
        .unwrap();
    assert!(c.operators.contains_key("windows"), "{c:?}");
    let (ok, _, err) = weir(d, &["run", "sessions", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert_eq!(sorted_lines(&d.join("out.jsonl")), expected);
}
