//! A source plugin across crashes, as a user meets it: a stored pipeline whose
//! source is the access-log connector (`[source.plugin]`), run by the real `weir`
//! binary over a generated log, killed with SIGKILL twice once its committed
//! checkpoint (the plugin's byte offset) has passed points chosen by a seed,
//! resumed each time with `--resume`, and compared with an uninterrupted run of
//! the same file. Delivery is at-least-once, so the comparison is of sets: every
//! event of the uninterrupted run is there, and nothing else (a batch read after
//! the last checkpoint may be written twice; the test prints how many were).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{crash_seed, next_random, weir};

const LINES: u64 = 200_000;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `LINES` combined-format lines, each unique (its path holds its number),
/// every 5000th malformed.
fn write_log(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..LINES {
        if i % 5000 == 4999 {
            writeln!(f, "malformed line {i}").unwrap();
            continue;
        }
        let (min, sec) = ((i / 60) % 60, i % 60);
        let bytes = if i % 7 == 0 {
            "-".to_owned()
        } else {
            (i * 13 % 9000).to_string()
        };
        writeln!(
            f,
            "10.0.{}.{} - - [01/Mar/2024:12:{min:02}:{sec:02} +0000] \"GET /item/{i} HTTP/1.1\" {} {bytes} \"-\" \"agent \\\"{}\\\"\"",
            i % 200,
            i % 250,
            if i % 11 == 0 { 404 } else { 200 },
            i % 3
        )
        .unwrap();
    }
}

const PIPELINE: &str = r#"name = "logs"
[settings]
checkpoint_interval = "20ms"
channel_batches = 2

[[source]]
name = "requests"
[source.plugin]
component = "access_log.wasm"
config = { path = "big.log" }
grants = { read = ["."] }
max_rows = 100
schema = [
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
]

[[sink]]
name = "out"
input = "requests"
[sink.jsonl]
path = "out.jsonl"
"#;

/// A directory with the log, the built plugin and the pipeline file.
fn setup(component: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_log(&dir.path().join("big.log"));
    std::fs::copy(component, dir.path().join("access_log.wasm")).unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
    dir
}

/// How often each output line appears.
fn counts(path: &Path) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        *seen.entry(line.to_owned()).or_insert(0) += 1;
    }
    seen
}

/// The byte offset the stored pipeline's checkpoint continues after, as
/// `weir pipeline checkpoint` prints it; `None` before the first one.
fn checkpoint_offset(dir: &Path) -> Option<u64> {
    let (ok, out, _) = weir(dir, &["pipeline", "checkpoint", "logs"]);
    if !ok {
        return None;
    }
    let c: serde_json::Value = serde_json::from_str(&out).ok()?;
    c["sources"]["requests"].as_str()?.parse().ok()
}

/// Runs the stored pipeline (resumed when `resume`) and kills it with SIGKILL
/// as soon as its committed checkpoint has passed byte `at`: driven by the
/// source's progress, not the sink's output. Returns the offset seen.
fn kill_after(dir: &Path, resume: bool, at: u64) -> u64 {
    let mut args = vec!["run", "logs", "--quiet"];
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
                "the run ended ({status}) before its checkpoint passed byte {at} (last: {:?}); {err}",
                checkpoint_offset(dir)
            );
        }
        if let Some(offset) = checkpoint_offset(dir).filter(|&o| o >= at) {
            child.kill().unwrap();
            child.wait().unwrap();
            return offset;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint past byte {at} in two minutes"
        );
    }
}

#[test]
fn a_plugin_source_killed_twice_and_resumed_delivers_every_event() {
    let component = weir::sandbox::build_stage(&repo().join("stages/access-log")).unwrap();

    // The uninterrupted run.
    let reference = setup(&component);
    let (ok, out, err) = weir(reference.path(), &["run", "--quiet", "pipeline.toml"]);
    assert!(ok, "{err}");
    assert!(out.contains("plugin:malformed_lines"), "{out}");
    let expected = counts(&reference.path().join("out.jsonl"));
    assert_eq!(expected.len() as u64, LINES - LINES / 5000);
    assert!(expected.values().all(|&c| c == 1));

    let stored = setup(&component);
    let d = stored.path();
    let (ok, _, err) = weir(d, &["pipeline", "apply", "pipeline.toml"]);
    assert!(ok, "{err}");
    let size = std::fs::metadata(d.join("big.log")).unwrap().len();
    let seed = crash_seed("a_plugin_source_killed_twice_and_resumed_delivers_every_event");
    let mut state = seed;
    // One kill point in 10–40% of the log, one in 45–75%.
    let first = size * (10 + next_random(&mut state) % 30) / 100;
    let second = size * (45 + next_random(&mut state) % 30) / 100;

    let at = kill_after(d, false, first);
    assert!(at < size, "killed mid-file: {at} of {size}");
    let again = kill_after(d, true, second.max(at + 1));
    assert!(again > at && again < size, "{at} then {again} of {size}");

    let (ok, out, err) = weir(d, &["run", "logs", "--quiet", "--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("resumed from the checkpoint of"), "{out}");
    let got = counts(&d.join("out.jsonl"));
    let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} events missing, first {:?}",
        missing.len(),
        missing.first()
    );
    let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "seed {seed}: events not in the input: {extra:?}"
    );
    let twice = got.values().filter(|&&c| c > 1).count();
    println!("killed after bytes {at} and {again} of {size}: {twice} events written twice");

    let store = weir::store::Store::open(&d.join("data")).unwrap();
    let last = store.checkpoint("logs").unwrap().unwrap();
    assert!(last.complete, "{last:?}");
    assert_eq!(last.sources["requests"], size.to_string());
}
