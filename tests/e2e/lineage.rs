//! Lineage through every operator: each output batch names the source spans its
//! rows came from (contiguous spans of a source merged into one) and the digest
//! and parameters hash of every stage upstream.

use std::path::Path;

use weir::connectors::LineageLine;
use weir::node::lineage::params_hash;
use weir_e2e::{component, run_toml, toml_path};

const HOSTILE: &str = "tests/fixtures/hostile";
const ROWS: u64 = 500;

fn write_events(path: &Path, offset: u64) {
    let mut text = String::new();
    for i in 0..ROWS {
        text.push_str(&format!(
            "{{\"user\": \"u{}\", \"ts\": {}, \"x\": {}}}\n",
            i % 7,
            (offset + i) * 60_000,
            i
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn source(name: &str) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\n[source.jsonl]\npath = \"{name}.jsonl\"\nbatch_rows = 7\nthreads = 2\n\
         schema = [{{ name = \"user\", type = \"utf8\", required = true }}, {{ name = \"ts\", type = \"timestamp_ms\", required = true }}, {{ name = \"x\", type = \"int64\" }}]\n"
    )
}

/// Runs `a (, b) → w (passthrough featurizer) → op → out` and returns the side
/// file's entries.
async fn run(op: &str, fan_in: bool) -> Vec<LineageLine> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_events(&d.join("a.jsonl"), 0);
    write_events(&d.join("b.jsonl"), ROWS);
    let mut text = format!("name = \"lin\"\n{}", source("a"));
    if fan_in {
        text.push_str(&source("b"));
    }
    let inputs = if fan_in {
        "inputs = [\"a\", \"b\"]"
    } else {
        "input = \"a\""
    };
    text.push_str(&format!(
        "[[stage]]\nname = \"w\"\n{inputs}\n[stage.wasm]\ncomponent = {}\nparams = {{ mode = \"passthrough\" }}\n\
         [[stage]]\nname = \"op\"\ninput = \"w\"\n{op}\n\
         [[sink]]\nname = \"out\"\ninput = \"op\"\n[sink.jsonl]\npath = \"out.jsonl\"\nlineage = true\n",
        toml_path(&component(HOSTILE))
    ));
    run_toml(&text, d).await.unwrap();
    let side = std::fs::read_to_string(d.join("out.jsonl.lineage.jsonl")).unwrap();
    side.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The 1-based lines a span covers.
fn lines(from: &Option<String>, to: &Option<String>) -> std::ops::RangeInclusive<u64> {
    let line = |p: &Option<String>| {
        p.as_deref()
            .map_or(0, |p| p.split_once(':').unwrap().0.parse::<u64>().unwrap())
    };
    line(from) + 1..=line(to)
}

/// Checks every entry names the featurizer, and that the entries together cover
/// every input line of each source in `sources`.
fn check(entries: &[LineageLine], sources: &[&str]) {
    assert!(!entries.is_empty());
    let digest = weir::sandbox::digest(&std::fs::read(component(HOSTILE)).unwrap());
    let params = params_hash(r#"{"mode":"passthrough"}"#);
    for e in entries {
        assert!(
            e.lineage
                .stages
                .iter()
                .any(|s| s.stage == "w" && s.digest == digest && s.params_hash == params),
            "{e:?}"
        );
        for s in &e.lineage.sources {
            assert!(sources.contains(&s.source.as_str()), "{s:?}");
        }
    }
    for src in sources {
        let mut covered = vec![false; ROWS as usize + 1];
        for e in entries {
            for s in e.lineage.sources.iter().filter(|s| s.source == *src) {
                for l in lines(&s.from, &s.to) {
                    covered[l as usize] = true;
                }
            }
        }
        let missing: Vec<usize> = (1..=ROWS as usize).filter(|&l| !covered[l]).collect();
        assert!(
            missing.is_empty(),
            "{src}: lines {missing:?} are named by no output"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sort_names_every_span_and_the_featurizer() {
    let entries = run(
        "[stage.sort]\nby = [{ column = \"x\", descending = true }]",
        false,
    )
    .await;
    check(&entries, &["a"]);
    // Sorted output draws from every input batch; the spans merge into one.
    assert!(
        entries.iter().all(|e| e.lineage.sources.len() == 1),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_names_every_span_and_the_featurizer() {
    let entries = run(
        "[stage.group]\nby = [\"user\"]\naggregates = [{ name = \"n\", op = \"count\" }]",
        false,
    )
    .await;
    check(&entries, &["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_names_every_span_and_the_featurizer() {
    let entries = run(
        "[stage.session]\nkey = [\"user\"]\ntime = \"ts\"\ngap = \"30m\"\naggregates = [{ name = \"n\", op = \"count\" }]",
        false,
    )
    .await;
    check(&entries, &["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_names_exactly_the_spans_it_merged() {
    let entries = run("[stage.batch]\nmax_rows = 50", false).await;
    check(&entries, &["a"]);
    // 50 rows of batches of 7 lines: each output names the lines of its rows only.
    for e in &entries {
        let span: u64 = e
            .lineage
            .sources
            .iter()
            .map(|s| lines(&s.from, &s.to).count() as u64)
            .sum();
        assert!(span >= e.lines && span < e.lines + 14, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_in_names_both_sources() {
    let entries = run("[stage.batch]\nmax_rows = 64", true).await;
    check(&entries, &["a", "b"]);
}
