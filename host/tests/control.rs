//! A running `weir run` changed from the outside: swaps through the control
//! socket (`weir pipeline swap|status|stop`), edits of the watched pipeline file,
//! a stored version run by name, and lineage answered from the output alone.
//!
//! The pipeline: an unbounded `[source.sequence]` at a steady rate → the hostile
//! fixture in `tag` mode (appends `tag` = its parameter, showing which version
//! processed each record) → a JSON-lines sink with a lineage side file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn hostile() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/hostile"
    ))
    .canonicalize()
    .unwrap()
}

/// `weir --data-dir <dir>/data <args>` in `dir`: (success, stdout, stderr).
fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = weir()
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pipeline(name: &str, source: &str, tag: i64, extra: &str) -> String {
    format!(
        r#"name = "{name}"
[[source]]
name = "numbers"
[source.sequence]
{source}
batch_rows = 50

[[stage]]
name = "tag"
input = "numbers"
[stage.wasm]
crate = {crate_}
params = {{ mode = "tag", tag = {tag} }}

[[sink]]
name = "out"
input = "tag"
[sink.jsonl]
path = "out.jsonl"
lineage = true
{extra}"#,
        crate_ = serde_json::to_string(&hostile().display().to_string()).unwrap()
    )
}

/// A `weir run` in the background, killed if the test ends without stopping it.
struct Running {
    child: std::process::Child,
    dir: PathBuf,
}

impl Running {
    fn start(dir: &Path, args: &[&str], socket: &Path) -> Self {
        let child = weir()
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .current_dir(dir)
            .stdout(std::fs::File::create(dir.join("run.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("run.stderr")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut running = Self {
            child,
            dir: dir.to_path_buf(),
        };
        // The first run may build the fixture crate.
        let deadline = Instant::now() + Duration::from_secs(240);
        while !socket.exists() {
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!("weir run exited with {status}: {}", running.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no control socket after 240 s: {}",
                running.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        running
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("run.stderr")).unwrap_or_default()
    }

    /// Waits (bounded) for the run to end after a stop; its stdout.
    fn wait(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "weir run failed: {}", self.stderr());
                return std::fs::read_to_string(self.dir.join("run.stdout")).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "weir run did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(n, tag)` per output line; asserts every record number from 0 exactly once,
/// in order.
fn output(dir: &Path) -> Vec<(i64, i64)> {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
    let rows: Vec<(i64, i64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["n"].as_i64().unwrap(), v["tag"].as_i64().unwrap())
        })
        .collect();
    let numbers: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        numbers,
        (0..rows.len() as i64).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    rows
}

/// The distinct tags in order of appearance, and the line (from 1) each starts at.
fn tag_runs(rows: &[(i64, i64)]) -> Vec<(i64, usize)> {
    let mut runs: Vec<(i64, usize)> = Vec::new();
    for (i, &(_, tag)) in rows.iter().enumerate() {
        if runs.last().is_none_or(|r| r.0 != tag) {
            runs.push((tag, i + 1));
        }
    }
    runs
}

/// Polls `done` (every 100 ms, up to a minute) until it holds; on timeout,
/// fails naming `what` with `context()`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited a minute for {what}: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn swaps_through_the_control_socket_take_effect_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.toml"), pipeline("sockdemo", "rate = 2000", 1, "")).unwrap();
    let socket = d.join("data/tenants/default/control/sockdemo.sock");
    let run = Running::start(d, &["run", "--quiet", "p.toml"], &socket);

    let (ok, out, err) = cli(d, &["pipeline", "status", "sockdemo"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("sockdemo running (from a file)\n  stage tag "),
        "{out}"
    );
    assert!(out.contains(r#"params {"mode":"tag","tag":1}"#), "{out}");

    let (ok, out, err) = cli(
        d,
        &[
            "pipeline",
            "swap",
            "sockdemo",
            "--stage",
            "tag",
            "--params",
            r#"{"mode":"tag","tag":2}"#,
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("stage tag: applied from batch "), "{out}");
    assert!(
        out.trim_end().ends_with(r#"params {"mode":"tag","tag":2}"#),
        "{out}"
    );

    // A broken swap is refused, the run keeps its version and goes on.
    let (ok, out, err) = cli(
        d,
        &[
            "pipeline",
            "swap",
            "sockdemo",
            "--stage",
            "tag",
            "--params",
            r#"{"mode":"fail_init"}"#,
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("stage tag: refused: swap of `tag` refused:"),
        "{out}"
    );
    assert!(out.contains("refusing to start: fail_init mode"), "{out}");
    assert!(
        out.contains(r#"(still running sha256:"#)
            && out.contains(r#"params {"mode":"tag","tag":2})"#),
        "{out}"
    );
    assert!(err.contains("not every change was applied"), "{err}");

    let (ok, _, err) = cli(
        d,
        &[
            "pipeline", "swap", "sockdemo", "--stage", "nope", "--params", "{}",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("no WebAssembly stage `nope` in pipeline `sockdemo` (stages: tag)"),
        "{err}"
    );

    // No wait before the stop: the swap's reply came once the stage had
    // processed a batch with tag 2, and a stop lets every batch already read
    // through to the sink.
    let (ok, out, err) = cli(d, &["pipeline", "stop", "sockdemo"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "sockdemo is stopping: the batches already read go through to the sinks\n"
    );
    let summary = run.wait();
    assert!(summary.contains("sockdemo"), "{summary}");
    assert!(
        !socket.exists(),
        "the socket file is removed when the run ends"
    );

    let rows = output(d);
    let runs = tag_runs(&rows);
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        (runs[1].1 - 1) % 50,
        0,
        "the version changes at a batch boundary"
    );

    // Lineage of single records, from the output's side file.
    let (ok, first, err) = cli(d, &["lineage", "out.jsonl:1"]);
    assert!(ok, "{err}");
    assert!(
        first.starts_with("out.jsonl:1: pipeline sockdemo run from a file\n  stage tag sha256:"),
        "{first}"
    );
    assert!(
        first.contains("  source numbers positions start..50\n  batch: output lines 1..50\n"),
        "{first}"
    );
    let line = runs[1].1.to_string();
    let (ok, second, err) = cli(d, &["lineage", &format!("out.jsonl:{line}")]);
    assert!(ok, "{err}");
    let params_hash = |text: &str| {
        text.lines()
            .nth(1)
            .unwrap()
            .split("params sha256:")
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_ne!(params_hash(&first), params_hash(&second), "{first}{second}");
    assert!(
        second.contains(&format!("batch: output lines {line}..")),
        "{second}"
    );

    // Nothing runs any more.
    let (ok, _, err) = cli(d, &["pipeline", "status", "sockdemo"]);
    assert!(!ok);
    assert!(err.contains("no running pipeline answers at"), "{err}");
}

#[test]
fn edits_of_the_watched_file_become_swaps_and_structural_edits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("p.toml");
    std::fs::write(&file, pipeline("watchdemo", "rate = 2000", 1, "")).unwrap();
    let socket = d.join("data/tenants/default/control/watchdemo.sock");
    let run = Running::start(d, &["run", "--quiet", "--watch", "p.toml"], &socket);

    let status = || cli(d, &["pipeline", "status", "watchdemo"]).1;
    // Version 1 has written a batch: the lineage side file (8 KiB buffered,
    // one line per batch) has its first bytes.
    wait_until(
        "a batch reaches the sink",
        || {
            std::fs::metadata(d.join("out.jsonl.lineage.jsonl.weir-inprogress"))
                .is_ok_and(|m| m.len() > 0)
        },
        || run.stderr(),
    );
    // The watcher reads the file's time and text when it starts; an edit made
    // before that would look like its starting text. Saved again (with a new
    // comment, so the text changes) until the status shows it.
    let (mut saves, mut saved) = (0, None::<Instant>);
    wait_until(
        "the edit is applied",
        || {
            if status().contains(r#""tag":3"#) {
                return true;
            }
            // Three watch intervals between saves.
            if saved.is_none_or(|t| t.elapsed() >= Duration::from_millis(1500)) {
                saves += 1;
                saved = Some(Instant::now());
                let text = pipeline("watchdemo", "rate = 2000", 3, "");
                std::fs::write(&file, format!("{text}# save {saves}\n")).unwrap();
            }
            false
        },
        status,
    );

    // A new node needs a restart: refused, logged, the run goes on with tag 3.
    let more =
        "\n[[sink]]\nname = \"more\"\ninput = \"tag\"\n[sink.jsonl]\npath = \"more.jsonl\"\n";
    std::fs::write(&file, pipeline("watchdemo", "rate = 2000", 4, more)).unwrap();
    wait_until(
        "the refusal is logged",
        || {
            run.stderr()
                .contains("not applied to the running pipeline: nodes added: more")
        },
        || run.stderr(),
    );
    // The status showed tag 3 once the swap had run a batch with it, so a
    // stop now still writes tag-3 rows.
    assert!(status().contains(r#""tag":3"#));

    let (ok, _, err) = cli(d, &["pipeline", "stop", "watchdemo"]);
    assert!(ok, "{err}");
    run.wait();
    let runs = tag_runs(&output(d));
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(
        (runs[1].1 - 1) % 50,
        0,
        "the version changes at a batch boundary"
    );
    assert!(!d.join("more.jsonl").exists());
}

#[test]
fn a_stored_pipeline_runs_by_name_and_its_output_names_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.toml"), pipeline("named", "count = 120", 5, "")).unwrap();
    let (ok, out, err) = cli(d, &["pipeline", "apply", "p.toml"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("named version 1 is active"), "{out}");
    std::fs::remove_file(d.join("p.toml")).unwrap();

    let (ok, out, err) = cli(d, &["run", "--quiet", "named"]);
    assert!(ok, "{err}");
    assert!(out.contains("named"), "{out}");
    let rows = output(d);
    assert_eq!(rows.len(), 120);
    assert!(rows.iter().all(|r| r.1 == 5));
    let (ok, out, err) = cli(d, &["lineage", "out.jsonl:120"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("out.jsonl:120: pipeline named version 1\n"),
        "{out}"
    );
    assert!(
        out.contains("  source numbers positions 100..120\n  batch: output lines 101..120\n"),
        "{out}"
    );

    let (ok, _, err) = cli(d, &["run", "unknown-name"]);
    assert!(!ok);
    assert!(
        err.contains("unknown-name is neither a pipeline file nor a pipeline applied to the store"),
        "{err}"
    );
}
