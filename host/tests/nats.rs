//! `weir nats publish` and a `[source.jetstream]` pipeline, through the `weir`
//! binary, against a real JetStream server (`WEIR_TEST_NATS_URL`, by default
//! the local one; see `tests/src/services.rs` for the address and for skipping). The test's stream is named at random and
//! deleted afterwards.

use std::path::Path;
use std::process::Command;

#[path = "../../tests/src/services.rs"]
mod services;

fn weir(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deletes the stream when the test ends, passing or not.
struct Stream(String, String);

impl Drop for Stream {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(c) = async_nats::connect(&self.0).await {
                let _ = async_nats::jetstream::new(c).delete_stream(&self.1).await;
            }
        });
    }
}

#[test]
fn publish_a_file_then_read_it_back_through_a_pipeline() {
    let Some(url) = services::url(services::Service::Nats) else {
        return;
    };
    let name = format!(
        "weir_test_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let _cleanup = Stream(url.clone(), name.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 1..=1000 {
        text.push_str(&format!("{{\"n\": {i}, \"s\": \"event {i}\"}}\n"));
        if i == 500 {
            text.push('\n');
        }
    }
    std::fs::write(dir.path().join("events.jsonl"), &text).unwrap();
    let subject = format!("{name}.events");
    let publish = [
        "nats",
        "publish",
        "events.jsonl",
        "--url",
        &url,
        "--subject",
        &subject,
        "--create-stream",
        &name,
        "--msg-id-prefix",
        "events.jsonl",
    ];
    let (ok, out, err) = weir(&publish, dir.path());
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("published 1000 messages to {subject} in ")),
        "{out}"
    );
    assert!(
        out.ends_with("; 0 already in the stream, 1 blank lines skipped\n"),
        "{out}"
    );
    // Again: the message ids make it a no-op.
    let (ok, out, err) = weir(&publish, dir.path());
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("published 0 messages to {subject}")),
        "{out}"
    );
    assert!(out.contains("; 1000 already in the stream"), "{out}");

    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"name = "from-nats"
[[source]]
name = "events"
[source.jetstream]
url = "{url}"
stream = "{name}"
stop_when_drained = true
schema = [{{ name = "n", type = "int64", required = true }}, {{ name = "s", type = "utf8" }}]

[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "out.jsonl"
"#
        ),
    )
    .unwrap();
    let (ok, _, err) = weir(
        &["run", "--quiet", "pipeline.toml", "--data-dir", "data"],
        dir.path(),
    );
    assert!(ok, "{err}");
    let got = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let want: String = (1..=1000)
        .map(|i| format!("{{\"n\":{i},\"s\":\"event {i}\"}}\n"))
        .collect();
    assert_eq!(got, want);

    // The same file in messages of 64 lines, read with payload = "lines".
    let batched = format!("{name}_lines");
    let _cleanup_batched = Stream(url.clone(), batched.clone());
    let subject = format!("{batched}.events");
    let (ok, out, err) = weir(
        &[
            "nats",
            "publish",
            "events.jsonl",
            "--url",
            &url,
            "--subject",
            &subject,
            "--create-stream",
            &batched,
            "--lines-per-message",
            "64",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    // 1000 lines: 15 messages of 64 and one of 40.
    assert!(
        out.starts_with(&format!("published 16 messages to {subject} in ")),
        "{out}"
    );
    assert!(out.ends_with("; 1000 lines in them\n"), "{out}");
    let text = std::fs::read_to_string(dir.path().join("pipeline.toml")).unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        text.replace(
            &format!("stream = \"{name}\""),
            &format!("stream = \"{batched}\"\npayload = \"lines\""),
        )
        .replace("out.jsonl", "out-lines.jsonl"),
    )
    .unwrap();
    let (ok, _, err) = weir(
        &["run", "--quiet", "pipeline.toml", "--data-dir", "data"],
        dir.path(),
    );
    assert!(ok, "{err}");
    let got = std::fs::read_to_string(dir.path().join("out-lines.jsonl")).unwrap();
    assert_eq!(got, want);

    let (ok, _, err) = weir(
        &["nats", "publish", "missing.jsonl", "--subject", "x.y"],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("reading missing.jsonl"), "{err}");
}
