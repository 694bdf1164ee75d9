//! The reference workload on the small data set: both variants of the example
//! (WebAssembly featurizer, built-in operators only) produce exactly the expected
//! features, computed independently by `examples/clickstream/expected.py`.

use std::path::Path;

use serde_json::Value;
use weir::spec::PipelineSpec;
use weir_e2e::clicks::{ClickConfig, generate};
use weir_e2e::{component, repo_root, run_spec};

fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn run_example(file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small.jsonl");
    generate(
        ClickConfig::small(),
        &mut std::fs::File::create(&data).unwrap(),
    )
    .unwrap();
    let example = repo_root().join("examples/clickstream");
    let mut spec = PipelineSpec::from_file(&example.join(file)).unwrap();
    let source = spec.sources[0].jsonl_mut().unwrap();
    source.path = data.clone();
    source.rejects = Some(dir.path().join("rejects.jsonl"));
    let out = dir.path().join("sessions.jsonl");
    let sink = spec.sinks[0].jsonl_mut().unwrap();
    sink.path = out.clone();
    sink.lineage = true;
    for stage in &mut spec.stages {
        if let Some(w) = stage.wasm_mut() {
            w.krate = None;
            w.component = Some(component("stages/clickstream-features"));
        }
    }
    let summary = run_spec(spec, dir.path()).await.unwrap();

    let expected = read(&example.join("expected-small.jsonl"));
    let got = read(&out);
    assert_eq!(got.len(), expected.len(), "{file}: sessions");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "{file}: line {}", i + 1);
    }
    // Corrupt lines are counted by reason and kept in the rejects file.
    let events = summary.node("events").unwrap();
    let counters: Vec<(&str, u64)> = events
        .counters
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        counters,
        vec![
            ("dead_letter:invalid_json", 47),
            ("dead_letter:price:range", 43),
            ("dead_letter:ts:type", 53),
            ("dead_letter:user_id:missing", 42),
        ],
        "{file}"
    );
    assert_eq!(read(&dir.path().join("rejects.jsonl")).len(), 185);
    assert_eq!(
        summary.node("sessions").unwrap().dead_letters(),
        0,
        "nothing is late"
    );

    // Lineage: every output line traces to the featurizer's code (WebAssembly
    // variant) and to input lines that, together, cover all of the input.
    let side = std::fs::read_to_string(weir::connectors::lineage_path(&out)).unwrap();
    let entries: Vec<weir::connectors::LineageLine> = side
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let covered_lines: u64 = entries.iter().map(|e| e.lines).sum();
    assert_eq!(
        covered_lines as usize,
        got.len(),
        "{file}: every output line has lineage"
    );
    let total = std::fs::read_to_string(&data).unwrap().lines().count();
    let mut covered = vec![false; total + 1];
    let line = |p: &Option<String>| {
        p.as_deref().map_or(0, |p| {
            p.split_once(':').unwrap().0.parse::<usize>().unwrap()
        })
    };
    for e in &entries {
        for s in &e.lineage.sources {
            covered[line(&s.from) + 1..=line(&s.to)].fill(true);
        }
    }
    assert!(
        covered[1..].iter().all(|&c| c),
        "{file}: input lines without an output naming them"
    );
    if file == "pipeline.toml" {
        let digest = weir::sandbox::digest(
            &std::fs::read(component("stages/clickstream-features")).unwrap(),
        );
        assert!(
            entries
                .iter()
                .all(|e| e.lineage.stages.iter().any(|s| s.digest == digest)),
            "every output names the featurizer's digest"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wasm_variant_gives_exactly_the_expected_features() {
    run_example("pipeline.toml").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_native_variant_gives_exactly_the_expected_features() {
    run_example("pipeline-native.toml").await;
}
