//! The `weir` binary as a user runs it.

use std::path::Path;
use std::process::Command;

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

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn validate_prints_the_dag() {
    let (ok, out, err) = weir(&["validate", "examples/quickstart/pipeline.toml"], repo());
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "examples/quickstart/pipeline.toml is valid: 4 nodes\n\
         source events\n \
         stage price_bucket <- events\n \
         stage user_bucket <- price_bucket\n  \
         sink features <- user_bucket\n\
         output schemas:\n  \
         events: user_id: Utf8, ts: Timestamp(ms), event: Utf8, item_id: Utf8, price: Float64, dwell_ms: Int64\n  \
         price_bucket: learned from its first batch (declare `outputs` to fix it here)\n  \
         user_bucket: learned from its first batch (declare `outputs` to fix it here)\n"
    );
}

#[test]
fn validate_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, "name = \"x\"\n[[source]]\nname = \"s\"\n[source.jsonl]\npath = \"a\"\nschema = []\nbatch_rowz = 3\n").unwrap();
    let (ok, _, err) = weir(&["validate", file.to_str().unwrap()], dir.path());
    assert!(!ok);
    assert!(
        err.contains("line 7 column 1: `source[0].jsonl.batch_rowz`: unknown field `batch_rowz`"),
        "{err}"
    );
}

#[test]
fn a_new_stage_builds_and_runs_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = weir(&["stage", "new", "my-scaler"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("created stage `my-scaler`"), "{out}");

    let (ok, out, err) = weir(&["stage", "build", "my-scaler"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("world:   featurizer"), "{out}");
    assert!(out.contains("digest:  sha256:"), "{out}");

    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"price\": 2.5}\n{\"price\": null}\n{\"price\": 4}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"
name = "scale"
[[source]]
name = "in"
[source.jsonl]
path = "in.jsonl"
schema = [{ name = "price", type = "float64" }]
[[stage]]
name = "scale"
input = "in"
[stage.wasm]
crate = "my-scaler"
params = { input = "price", output = "cents", factor = 100.0 }
[[sink]]
name = "out"
input = "scale"
[sink.jsonl]
path = "out.jsonl"
"#,
    )
    .unwrap();
    let (ok, out, err) = weir(&["run", "--quiet", "p.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("3 records in, 0 corrupt"), "{out}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        written,
        "{\"price\":2.5,\"cents\":250.0}\n{\"price\":null,\"cents\":null}\n{\"price\":4.0,\"cents\":400.0}\n"
    );
}
