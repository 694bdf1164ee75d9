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
    let entries = run(GROUP, false).await;
    check(&entries, &["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_names_every_span_and_the_featurizer() {
    let entries = run(SESSION, false).await;
    check(&entries, &["a"]);
}

const GROUP: &str =
    "[stage.group]\nby = [\"user\"]\naggregates = [{ name = \"n\", op = \"count\" }]";
const SESSION: &str = "[stage.session]\nkey = [\"user\"]\ntime = \"ts\"\ngap = \"30m\"\naggregates = [{ name = \"n\", op = \"count\" }]";

/// Five phases of 100 lines, ten hours apart; in each, the seven users' events
/// are seven minutes apart: one 30-minute session per user and phase, closed
/// when the next phase's first line arrives.
fn phased_events() -> String {
    (0..ROWS)
        .map(|i| {
            let ts = (i / 100) * 36_000_000 + (i % 100) * 60_000;
            format!("{{\"user\": \"u{}\", \"ts\": {ts}, \"x\": {i}}}\n", i % 7)
        })
        .collect()
}

/// Five users of 100 consecutive lines each.
fn contiguous_users() -> String {
    (0..ROWS)
        .map(|i| format!("{{\"user\": \"u{}\", \"ts\": {i}, \"x\": {i}}}\n", i / 100))
        .collect()
}

/// Runs `a → w → op → out` on `events` (as `a.jsonl`, read in batches of 7
/// lines) and returns the side file's entries and the output's rows.
async fn run_events(op: &str, events: &str) -> (Vec<LineageLine>, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.jsonl"), events).unwrap();
    let text = format!(
        "name = \"lin\"\n{}[[stage]]\nname = \"w\"\ninput = \"a\"\n[stage.wasm]\ncomponent = {}\nparams = {{ mode = \"passthrough\" }}\n\
         [[stage]]\nname = \"op\"\ninput = \"w\"\n{op}\n\
         [[sink]]\nname = \"out\"\ninput = \"op\"\n[sink.jsonl]\npath = \"out.jsonl\"\nlineage = true\n",
        source("a"),
        toml_path(&component(HOSTILE))
    );
    run_toml(&text, d).await.unwrap();
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let entries = read("out.jsonl.lineage.jsonl")
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    (entries, read("out.jsonl"))
}

/// Each entry as (first output line, lines, the input lines it names, as
/// 1-based inclusive ranges of source `a`).
fn named(entries: &[LineageLine]) -> Vec<(u64, u64, Vec<std::ops::RangeInclusive<u64>>)> {
    entries
        .iter()
        .map(|e| {
            let spans = e
                .lineage
                .sources
                .iter()
                .map(|s| {
                    assert_eq!(s.source, "a");
                    lines(&s.from, &s.to)
                })
                .collect();
            (e.first_line, e.lines, spans)
        })
        .collect()
}

/// A session's rows are emitted when a later batch closes it, and name exactly
/// the input read until then: the sessions of phase k name lines 1 to the end
/// of the 7-line batch holding phase k+1's first line, never a line read later
/// (lineage naming the whole input would fail here).
#[tokio::test(flavor = "multi_thread")]
async fn session_rows_name_the_input_read_until_they_closed() {
    let (entries, rows) = run_events(SESSION, &phased_events()).await;
    assert_eq!(rows.len(), 35, "one session per user and phase");
    let batch_end = |line: u64| line.div_ceil(7) * 7;
    let want: Vec<_> = (0..5u64)
        .map(|k| {
            let to = if k < 4 {
                batch_end(100 * (k + 1) + 1)
            } else {
                ROWS
            };
            (7 * k + 1, 7, vec![1..=to])
        })
        .collect();
    assert_eq!(named(&entries), want);
    // Each entry's rows are the sessions of its phase, by user.
    for (i, row) in rows.iter().enumerate() {
        let (phase, user) = (i as u64 / 7, i as u64 % 7);
        let events = (100 * phase..100 * (phase + 1))
            .filter(|l| l % 7 == user)
            .count();
        assert_eq!(row["user"], format!("u{user}"), "{row}");
        assert_eq!(row["n"], events, "{row}");
    }
}

/// `group` emits when its input ends: every row names the whole input, one
/// span from the start to line 500, on one entry for the five groups.
#[tokio::test(flavor = "multi_thread")]
async fn group_rows_name_the_input_they_were_grouped_from() {
    let (entries, rows) = run_events(GROUP, &contiguous_users()).await;
    let users: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["n"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        users,
        [
            ("u0", 100),
            ("u1", 100),
            ("u2", 100),
            ("u3", 100),
            ("u4", 100)
        ]
    );
    assert_eq!(named(&entries), [(1, 5, vec![1..=ROWS])]);
}

/// The lineage a row should carry: exactly the input lines of its own group or
/// session. Today `group` and `session` name every input consumed until they
/// emit (the two tests above pin that down exactly), so this fails: each row
/// is one line of the output, and the entry covering it names more than its
/// own rows.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "group and session carry the union of all input consumed, not each group's own"]
async fn each_group_and_session_row_names_exactly_its_own_input_lines() {
    let (entries, rows) = run_events(GROUP, &contiguous_users()).await;
    for (i, row) in rows.iter().enumerate() {
        let line = i as u64 + 1;
        let e = entries
            .iter()
            .find(|e| (e.first_line..e.first_line + e.lines).contains(&line))
            .unwrap();
        let user: u64 = row["user"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(
            named(std::slice::from_ref(e))[0].2,
            [100 * user + 1..=100 * (user + 1)],
            "{row}"
        );
    }
    let (entries, _) = run_events(SESSION, &phased_events()).await;
    for (k, (_, _, spans)) in named(&entries).into_iter().enumerate() {
        let k = k as u64;
        assert_eq!(spans, [100 * k + 1..=100 * (k + 1)]);
    }
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
