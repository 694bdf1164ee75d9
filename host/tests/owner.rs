//! One owner per data directory, as users meet it: while `weir run` of a stored
//! pipeline writes checkpoints and lineage, other `weir` commands on the same
//! directory answer through the owner; two stored pipelines run at once on one
//! directory, are both killed with SIGKILL, and both resume with every record
//! delivered.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::weir;

/// A stored pipeline `name` copying `LINES` records of `<name>.jsonl` to `<name>-out.jsonl`.
fn setup(dir: &Path, name: &str, lines: u64) {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.jsonl"))).unwrap());
    for i in 0..lines {
        writeln!(f, "{{\"n\": {i}, \"s\": \"record number {i} of {name}\"}}").unwrap();
    }
    drop(f);
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            r#"name = "{name}"
[settings]
checkpoint_interval = "20ms"
channel_batches = 2

[[source]]
name = "events"
[source.jsonl]
path = "{name}.jsonl"
batch_rows = 200
threads = 1
schema = [{{ name = "n", type = "int64", required = true }}, {{ name = "s", type = "utf8" }}]

[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "{name}-out.jsonl"
"#
        ),
    )
    .unwrap();
    let (ok, _, err) = weir(dir, &["pipeline", "apply", &format!("{name}.toml")]);
    assert!(ok, "{err}");
}

fn spawn(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The checkpoint of `name` as `weir pipeline checkpoint` prints it, once it has one.
fn checkpoint(dir: &Path, name: &str) -> Option<serde_json::Value> {
    let (ok, out, _) = weir(dir, &["pipeline", "checkpoint", name]);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Waits until `name` has a checkpoint at line `at` or beyond, while its run is alive.
fn wait_for_progress(dir: &Path, name: &str, at: u64, child: &mut std::process::Child) {
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was interrupted; make the input larger"
        );
        if let Some(c) = checkpoint(dir, name)
            && let Some(line) = c["sources"]["events"]
                .as_str()
                .and_then(|p| p.split_once(':'))
                .and_then(|(l, _)| l.parse::<u64>().ok())
            && line >= at
        {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn numbers(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn commands_answer_through_the_owner_while_a_run_goes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, "copy", 400_000);
    let mut run = spawn(d, &["run", "copy", "--quiet"]);
    wait_for_progress(d, "copy", 1, &mut run);
    // The run owns the directory; each command below is another process.
    let (ok, out, err) = weir(d, &["pipeline", "history", "copy"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("* v1 "), "{out}");
    let (ok, out, err) = weir(d, &["component", "list"]);
    assert!(ok, "{err}");
    assert!(!out.contains("error"), "{out}");
    let c = checkpoint(d, "copy").expect("a checkpoint while running");
    assert_eq!(c["pipeline"], "copy");
    assert_eq!(c["complete"], false);
    let run_id = c["run"].as_str().unwrap().to_owned();
    let (ok, out, err) = weir(d, &["lineage", &run_id]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("out rows 0.."),
        "lineage of the running run: {out}"
    );
    assert!(
        out.lines()
            .all(|l| l.contains(": copy v1 ") && l.contains("events[")),
        "{out}"
    );
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        numbers(&d.join("copy-out.jsonl")),
        (0..400_000).collect::<Vec<_>>()
    );
    // After the run, the next command owns the directory: nothing stale is left.
    let (ok, out, err) = weir(d, &["pipeline", "checkpoint", "copy"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"complete\": true"), "{out}");
}

#[test]
fn two_runs_on_one_directory_are_killed_and_both_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const LINES: u64 = 300_000;
    setup(d, "one", LINES);
    setup(d, "two", LINES);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let seed = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    println!("WEIR_CRASH_SEED={seed}");
    let at = [
        LINES * (10 + seed % 30) / 100,
        LINES * (10 + (seed / 7) % 30) / 100,
    ];
    // The first to start owns the directory, the other is its client.
    let mut one = spawn(d, &["run", "one", "--quiet"]);
    let mut two = spawn(d, &["run", "two", "--quiet"]);
    wait_for_progress(d, "one", at[0], &mut one);
    wait_for_progress(d, "two", at[1], &mut two);
    // SIGKILL both, the owner first: the client must take over for nothing.
    one.kill().unwrap();
    two.kill().unwrap();
    one.wait().unwrap();
    two.wait().unwrap();
    // Both resume at once; every record reaches its sink.
    let one = spawn(d, &["run", "one", "--quiet", "--resume"]);
    let two = spawn(d, &["run", "two", "--quiet", "--resume"]);
    for (name, child) in [("one", one), ("two", two)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: BTreeSet<u64> = numbers(&d.join(format!("{name}-out.jsonl")))
            .into_iter()
            .collect();
        assert_eq!(
            seen.len() as u64,
            LINES,
            "{name}: every record, seed {seed}"
        );
        assert_eq!(seen.last(), Some(&(LINES - 1)));
    }
}
