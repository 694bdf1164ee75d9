//! The dead-letter store as a user meets it, through the real `weir` binary:
//! a stored pipeline rejects records at its source and at a filter; `weir dlq`
//! lists, shows and exports them; a dry replay through a fixed version counts
//! what would pass and changes nothing; the replay delivers them, empties the
//! store, and leaves the output equal to a run in which nothing failed; a
//! poison record is refused past the replay limit.

mod common;

use std::path::Path;

use common::weir;

/// 40 events: ids 0..40; every 7th has a price that is not a number (the
/// source rejects it as `price:type`); every 5th has a negative price (the
/// filter rejects it). One line is not JSON at all.
fn events() -> String {
    let mut text = String::new();
    for id in 0..40 {
        let price = if id % 7 == 3 {
            format!("\"{id}.5\"")
        } else if id % 5 == 4 {
            format!("-{id}")
        } else {
            format!("{id}.25")
        };
        text.push_str(&format!("{{\"id\":{id},\"price\":{price}}}\n"));
    }
    text.push_str("{not json\n");
    text
}

/// The pipeline: `price` typed by `price_type`, and a filter keeping
/// non-negative prices when `filtered` (else every row).
fn pipeline(price_type: &str, filtered: bool) -> String {
    let filter = if filtered {
        "[[stage]]\nname = \"priced\"\ninput = \"events\"\n[stage.filter]\ndead_letter = true\nall = [{ range = { column = \"price\", min = 0 } }]\n\n"
    } else {
        "[[stage]]\nname = \"priced\"\ninput = \"events\"\n[stage.filter]\nall = [{ not_null = [\"id\"] }]\n\n"
    };
    format!(
        r#"name = "prices"

[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
schema = [{{ name = "id", type = "int64", required = true }}, {{ name = "price", type = "{price_type}" }}]

{filter}[[sink]]
name = "out"
input = "priced"
[sink.jsonl]
path = "out.jsonl"
"#
    )
}

fn lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, out, err) = weir(dir, args);
    assert!(success, "weir {args:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn rejected_records_are_kept_listed_replayed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("events.jsonl"), events()).unwrap();

    // What a run in which nothing failed delivers: the fixed pipeline over the
    // events a fixed source can read (all but the quoted prices and the
    // broken line), as a file run.
    let readable: String = events()
        .lines()
        .filter(|l| !l.contains(".5\"") && l.starts_with("{\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.join("readable.jsonl"), readable).unwrap();
    std::fs::write(
        d.join("clean.toml"),
        pipeline("float64", false)
            .replace("name = \"prices\"", "name = \"clean\"")
            .replace("events.jsonl", "readable.jsonl")
            .replace("out.jsonl", "clean.jsonl"),
    )
    .unwrap();
    ok(d, &["run", "clean.toml", "--quiet"]);
    let clean = lines(&d.join("clean.jsonl"));
    assert_eq!(clean.len(), 34);

    // Version 1: strict. 6 quoted prices (ids 3, 10, 17, 24, 31, 38) and the
    // broken line are rejected by the source; 7 negative prices (4, 9, 14,
    // 19, 29, 34, 39 — 24 was already rejected) by the filter.
    std::fs::write(d.join("prices.toml"), pipeline("float64", true)).unwrap();
    ok(d, &["pipeline", "apply", "prices.toml"]);
    let run = ok(d, &["run", "prices", "--quiet"]);
    assert!(run.contains("weir dlq list --pipeline prices"), "{run}");
    assert_eq!(lines(&d.join("out.jsonl")).len(), 40 - 6 - 7);

    let list = ok(d, &["dlq", "list", "--pipeline", "prices"]);
    assert!(list.contains("holds 14 letters"), "{list}");
    let by_node = |node: &str| {
        ok(d, &["dlq", "list", "--pipeline", "prices", "--node", node])
            .lines()
            .filter(|l| l.starts_with("run-"))
            .count()
    };
    assert_eq!(by_node("events"), 7);
    assert_eq!(by_node("priced"), 7);
    let invalid = ok(d, &["dlq", "list", "--reason", "invalid_json"]);
    let id = invalid
        .lines()
        .find(|l| l.starts_with("run-"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let show = ok(d, &["dlq", "show", &id]);
    assert!(show.contains("reason     invalid_json"), "{show}");
    assert!(show.contains("{not json"), "the record, readably: {show}");
    assert!(show.contains("at         20"), "an RFC 3339 time: {show}");

    // Exports: JSON lines and Parquet, every letter.
    ok(
        d,
        &["dlq", "export", "--pipeline", "prices", "--out", "dl.jsonl"],
    );
    let exported = std::fs::read_to_string(d.join("dl.jsonl")).unwrap();
    assert_eq!(exported.lines().count(), 14);
    let first: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(first["pipeline"], "prices");
    assert_eq!(first["version"], 1);
    ok(d, &["dlq", "export", "--out", "dl.parquet"]);
    assert!(std::fs::metadata(d.join("dl.parquet")).unwrap().len() > 0);

    // Version 2 (fixed: no filter predicate; a quoted price still refused): a
    // dry run counts what would pass, and changes nothing.
    std::fs::write(d.join("prices.toml"), pipeline("float64", false)).unwrap();
    ok(d, &["pipeline", "apply", "prices.toml"]);
    let before = std::fs::read(d.join("out.jsonl")).unwrap();
    let dry = ok(d, &["dlq", "replay", "--pipeline", "prices", "--dry-run"]);
    assert!(
        dry.contains("14 letters through version 2 (dry run: nothing delivered, nothing changed): 7 would pass, 7 failed again"),
        "{dry}"
    );
    assert_eq!(std::fs::read(d.join("out.jsonl")).unwrap(), before);
    assert!(ok(d, &["dlq", "list"]).contains("holds 14 letters"));

    // The filter's letters replay through version 2 and are delivered.
    let replay = ok(d, &["dlq", "replay", "--pipeline", "prices"]);
    assert!(replay.contains("7 passed, 7 failed again"), "{replay}");
    assert!(replay.contains("7 letters removed"), "{replay}");
    let after = ok(d, &["dlq", "list", "--pipeline", "prices"]);
    assert!(after.contains("holds 7 letters"), "{after}");
    // Each source letter failed once: the count is kept.
    assert!(
        after
            .lines()
            .filter(|l| l.starts_with("run-"))
            .all(|l| l.split_whitespace().nth(7) == Some("1")),
        "{after}"
    );

    // Through a file that reads prices as text, the quoted prices would pass
    // (dry, so nothing of it reaches the output).
    std::fs::write(d.join("text.toml"), pipeline("utf8", false)).unwrap();
    let text = ok(
        d,
        &[
            "dlq",
            "replay",
            "--pipeline",
            "prices",
            "--file",
            "text.toml",
            "--dry-run",
            "--node",
            "events",
            "--reason",
            "price:type",
        ],
    );
    assert!(
        text.contains("6 letters through the pipeline file"),
        "{text}"
    );
    assert!(text.contains("6 would pass, 0 failed again"), "{text}");

    // The poison line fails every replay: past the limit it is left alone.
    for _ in 0..3 {
        ok(
            d,
            &[
                "dlq",
                "replay",
                "--pipeline",
                "prices",
                "--reason",
                "invalid_json",
            ],
        );
    }
    let refused = ok(
        d,
        &[
            "dlq",
            "replay",
            "--pipeline",
            "prices",
            "--reason",
            "invalid_json",
        ],
    );
    assert!(refused.contains("1 over the replay limit"), "{refused}");
    let forced = ok(
        d,
        &[
            "dlq",
            "replay",
            "--pipeline",
            "prices",
            "--reason",
            "invalid_json",
            "--force",
        ],
    );
    assert!(forced.contains("0 passed, 1 failed again"), "{forced}");

    // Purge needs a filter; with one, it removes what it names.
    let (purged, _, err) = weir(d, &["dlq", "purge"]);
    assert!(!purged && err.contains("give a filter"), "{err}");
    assert!(ok(d, &["dlq", "purge", "--pipeline", "prices"]).contains("removed 7 letters"));
    assert!(ok(d, &["dlq", "list"]).contains("holds 0 letters"));

    // The output: what a clean run gives, the replayed lines after the others.
    assert_eq!(lines(&d.join("out.jsonl")), clean);
}

#[test]
fn a_full_store_stops_a_run_that_says_so_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("events.jsonl"), events()).unwrap();
    let spec = pipeline("float64", true).replace(
        "name = \"prices\"\n",
        "name = \"prices\"\n[settings]\ndead_letters_when_full = \"stop\"\n",
    );
    std::fs::write(d.join("prices.toml"), spec).unwrap();
    ok(d, &["pipeline", "apply", "prices.toml"]);
    let (success, out, err) = weir(
        d,
        &["--dead-letter-limit", "600B", "run", "prices", "--quiet"],
    );
    assert!(!success, "{out}");
    assert!(
        err.contains("dead-letter store of tenant `default` is full"),
        "{err}"
    );
    assert!(err.contains("limit is 600 bytes"), "{err}");
}
