//! Tests of `sort`, `group` and `session` on literal batches, including runs ten
//! times over the memory budget compared with the in-memory result.

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use serde_json::{Value, json};

use super::testutil::{arc, batch, rows};
use crate::node::memory::{MemoryPool, MemoryWatch, RunMemory, SpillDir};
use crate::node::{Emitter, Operator};
use crate::spec::{AggregateSpec, GroupSpec, SessionSpec, SortSpec};
use crate::units::{ByteSize, Millis};

fn memory(limit: u64, dir: &std::path::Path) -> RunMemory {
    RunMemory {
        pool: MemoryPool::run(ByteSize(limit), None),
        spill: SpillDir::new(dir).unwrap(),
        watch: MemoryWatch::new(ByteSize(0), &crate::node::memory::MemorySource::System),
    }
}

/// process + finish + drain, as the executor calls them.
fn run_all(op: &mut dyn Operator, input: Vec<RecordBatch>) -> Emitter {
    let mut out = Emitter::default();
    for b in input {
        op.process(b, &mut out).expect("process");
    }
    op.finish(&mut out).expect("finish");
    while op.drain(&mut out).expect("drain") {}
    out
}

fn agg(v: Value) -> Vec<AggregateSpec> {
    serde_json::from_value(v).unwrap()
}

fn sort_spec(v: Value) -> SortSpec {
    serde_json::from_value(v).unwrap()
}

#[test]
fn sort_orders_by_several_keys_with_direction_and_nulls_and_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sort_spec(json!({"by": [
        {"column": "k", "nulls_first": true},
        {"column": "s", "descending": true}
    ]}));
    let mut op = super::sort::SortOperator::new("s", spec, memory(1 << 30, dir.path()), 3);
    let b1 = batch(vec![
        (
            "k",
            arc(Int64Array::from(vec![Some(2), None, Some(1), Some(2)])),
        ),
        ("s", arc(StringArray::from(vec!["a", "x", "b", "a"]))),
        ("i", arc(Int64Array::from(vec![0, 1, 2, 3]))),
    ]);
    let b2 = batch(vec![
        ("k", arc(Int64Array::from(vec![Some(1), Some(2), None]))),
        ("s", arc(StringArray::from(vec!["c", "b", "y"]))),
        ("i", arc(Int64Array::from(vec![4, 5, 6]))),
    ]);
    let out = run_all(&mut op, vec![b1, b2]);
    assert_eq!(
        out.batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    let got: Vec<i64> = rows(&out.batches)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["i"].as_i64().unwrap())
        .collect();
    // nulls first (y before x: descending s), then k=1 (c, b), then k=2 (b, then the
    // two equal `a`s in input order).
    assert_eq!(got, vec![6, 1, 4, 2, 5, 0, 3]);
}

/// Rows of about 100 bytes: a key with many ties, a string, a float.
fn wide_batches(n: usize, per_batch: usize, seed: u64) -> Vec<RecordBatch> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n.div_ceil(per_batch))
        .map(|b| {
            let m = per_batch.min(n - b * per_batch);
            let keys: Vec<Option<i64>> = (0..m)
                .map(|_| {
                    let v = next() % 1000;
                    (v != 7).then_some(v as i64)
                })
                .collect();
            let users: Vec<String> = (0..m)
                .map(|_| format!("user-{:05}-{}", next() % 3000, "x".repeat(40)))
                .collect();
            let vals: Vec<f64> = (0..m).map(|_| (next() % 10_000) as f64 / 100.0).collect();
            let idx: Vec<i64> = (0..m).map(|i| (b * per_batch + i) as i64).collect();
            RecordBatch::try_from_iter_with_nullable(vec![
                ("k", arc(Int64Array::from(keys)), true),
                ("user", arc(StringArray::from(users)), true),
                ("v", arc(Float64Array::from(vals)), true),
                ("i", arc(Int64Array::from(idx)), true),
            ])
            .unwrap()
        })
        .collect()
}

fn spill_files(dir: &std::path::Path) -> usize {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .count()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn sort_ten_times_over_the_budget_spills_and_equals_the_in_memory_sort() {
    let input = wide_batches(40_000, 1000, 7);
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let budget = (bytes / 10) as u64;
    let spec = sort_spec(json!({"by": [{"column": "k", "descending": true}, {"column": "user"}]}));

    let dir = tempfile::tempdir().unwrap();
    let mut in_memory =
        super::sort::SortOperator::new("s", spec.clone(), memory(1 << 32, dir.path()), 4096);
    let expected = run_all(&mut in_memory, input.clone());
    assert!(!expected.counters.contains_key("spills"));

    let mem = memory(budget, dir.path());
    let spill_dir = mem.spill.path().to_path_buf();
    let pool = mem.pool.clone();
    let mut spilling = super::sort::SortOperator::new("s", spec, mem, 4096);
    let got = run_all(&mut spilling, input);
    assert!(got.counters["spill_files"] >= 10, "{:?}", got.counters);
    assert!(pool.peak().0 <= budget);
    assert_eq!(rows(&got.batches), rows(&expected.batches));
    assert_eq!(
        got.batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        40_000
    );
    // Every run file was removed as the merge finished it; the directory goes with
    // the operator.
    assert_eq!(spill_files(&spill_dir), 0);
    drop(spilling);
    assert!(!spill_dir.exists());
}

#[test]
fn group_computes_every_aggregate_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GroupSpec {
        by: vec!["u".into()],
        aggregates: agg(json!([
            {"name": "n", "op": "count"},
            {"name": "n_price", "op": "count", "column": "p"},
            {"name": "sum_q", "op": "sum", "column": "q"},
            {"name": "sum_p", "op": "sum", "column": "p"},
            {"name": "mean_p", "op": "mean", "column": "p"},
            {"name": "min_q", "op": "min", "column": "q"},
            {"name": "max_s", "op": "max", "column": "s"},
            {"name": "distinct_s", "op": "count_distinct", "column": "s"},
            {"name": "first_p", "op": "first", "column": "p"},
            {"name": "last_s", "op": "last", "column": "s"},
            {"name": "n_b", "op": "count", "filter": {"column": "s", "equals": "b"}},
            {"name": "spend_b", "op": "sum", "column": "p", "filter": {"column": "s", "equals": "b"}, "default": 0}
        ])),
        partitions: crate::spec::default_partitions(),
    };
    let mut op = super::group::GroupOperator::new("g", spec, memory(1 << 30, dir.path()), 100);
    let b = batch(vec![
        (
            "u",
            arc(StringArray::from(vec![
                Some("y"),
                Some("x"),
                Some("y"),
                None,
                Some("x"),
            ])),
        ),
        (
            "p",
            arc(Float64Array::from(vec![
                None,
                Some(1.5),
                Some(2.0),
                Some(4.0),
                Some(3.0),
            ])),
        ),
        ("q", arc(Int32Array::from(vec![5, 1, 3, 9, 2]))),
        ("s", arc(StringArray::from(vec!["a", "b", "c", "b", "b"]))),
    ]);
    let out = run_all(&mut op, vec![b]);
    assert_eq!(
        rows(&out.batches),
        json!([
            {"u": null, "n": 1, "n_price": 1, "sum_q": 9, "sum_p": 4.0, "mean_p": 4.0, "min_q": 9, "max_s": "b",
             "distinct_s": 1, "first_p": 4.0, "last_s": "b", "n_b": 1, "spend_b": 4.0},
            {"u": "x", "n": 2, "n_price": 2, "sum_q": 3, "sum_p": 4.5, "mean_p": 2.25, "min_q": 1, "max_s": "b",
             "distinct_s": 1, "first_p": 1.5, "last_s": "b", "n_b": 2, "spend_b": 4.5},
            {"u": "y", "n": 2, "n_price": 1, "sum_q": 8, "sum_p": 2.0, "mean_p": 2.0, "min_q": 3, "max_s": "c",
             "distinct_s": 2, "first_p": null, "last_s": "c", "n_b": 0, "spend_b": 0.0}
        ])
    );
}

#[test]
fn group_collects_values_into_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GroupSpec {
        by: vec!["u".into()],
        aggregates: agg(json!([{"name": "qs", "op": "list", "column": "q"}])),
        partitions: crate::spec::default_partitions(),
    };
    let mut op = super::group::GroupOperator::new("g", spec, memory(1 << 30, dir.path()), 100);
    let b = batch(vec![
        ("u", arc(StringArray::from(vec!["y", "x", "y"]))),
        ("q", arc(Int32Array::from(vec![Some(5), Some(1), None]))),
    ]);
    let out = run_all(&mut op, vec![b]);
    let lists = out.batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::ListArray>()
        .unwrap();
    let y = lists.value(1);
    let y = y.as_any().downcast_ref::<Int32Array>().unwrap();
    assert_eq!(y.iter().collect::<Vec<_>>(), vec![Some(5), None]);
    assert_eq!(lists.value(0).len(), 1);
}

/// A group of `wide_batches` by user with every kind of aggregate.
fn wide_group(partitions: std::num::NonZeroUsize) -> GroupSpec {
    GroupSpec {
        by: vec!["user".into()],
        aggregates: agg(json!([
            {"name": "n", "op": "count"},
            {"name": "sum_v", "op": "sum", "column": "v"},
            {"name": "max_k", "op": "max", "column": "k"},
            {"name": "first_i", "op": "first", "column": "i"},
            {"name": "last_i", "op": "last", "column": "i"},
            {"name": "distinct_k", "op": "count_distinct", "column": "k"}
        ])),
        partitions,
    }
}

/// `spec` over `input` with memory to spare: the reference result.
fn group_in_memory(spec: &GroupSpec, input: &[RecordBatch], dir: &std::path::Path) -> Emitter {
    let mut op = super::group::GroupOperator::new("g", spec.clone(), memory(1 << 32, dir), 4096);
    run_all(&mut op, input.to_vec())
}

#[test]
fn group_ten_times_over_the_budget_spills_partitions_and_equals_the_in_memory_group() {
    let input = wide_batches(40_000, 1000, 11);
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let budget = (bytes / 10) as u64;
    let spec = wide_group(crate::spec::default_partitions());
    let dir = tempfile::tempdir().unwrap();
    let expected = group_in_memory(&spec, &input, dir.path());
    assert!(!expected.counters.contains_key("spill_files"));

    let mem = memory(budget, dir.path());
    let spill_dir = mem.spill.path().to_path_buf();
    let pool = mem.pool.clone();
    let mut spilling = super::group::GroupOperator::new("g", spec, mem, 4096);
    let got = run_all(&mut spilling, input);
    assert_eq!(got.counters["spill_files"], 16);
    assert!(pool.peak().0 <= budget);
    assert_eq!(rows(&expected.batches).as_array().unwrap().len(), 3000);
    assert_eq!(rows(&got.batches), rows(&expected.batches));
    assert_eq!(spill_files(&spill_dir), 0);
    drop(spilling);
    assert!(!spill_dir.exists());
}

#[test]
fn a_partition_over_the_budget_is_split_again_and_the_result_is_unchanged() {
    // Two partitions of a data set ten times the budget: each is five times too big
    // to aggregate, so each is re-split (by a differently seeded hash) until the
    // pieces fit, and other consumers holding part of the pool only add splits.
    let input = wide_batches(40_000, 1000, 12);
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let budget = (bytes / 10) as u64;
    let spec = wide_group(std::num::NonZeroUsize::new(2).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let expected = group_in_memory(&spec, &input, dir.path());

    let mem = memory(budget, dir.path());
    let spill_dir = mem.spill.path().to_path_buf();
    let pool = mem.pool.clone();
    let mut neighbour = pool.reservation("sort `upstream`");
    neighbour.try_grow(budget as usize / 3).unwrap();
    let mut spilling = super::group::GroupOperator::new("g", spec, mem, 4096);
    let got = run_all(&mut spilling, input);
    assert!(got.counters["partition_splits"] >= 2, "{:?}", got.counters);
    assert!(pool.peak().0 <= budget);
    assert_eq!(rows(&got.batches), rows(&expected.batches));
    assert_eq!(spill_files(&spill_dir), 0);
}

#[test]
fn a_single_key_over_the_budget_fails_naming_the_group() {
    // Every row has the same key: no split can make its partition smaller.
    let input: Vec<RecordBatch> = wide_batches(4_000, 1000, 13)
        .into_iter()
        .map(|b| {
            let user: ArrayRef = arc(StringArray::from(vec!["same"; b.num_rows()]));
            let mut cols = b.columns().to_vec();
            let i = b.schema().index_of("user").unwrap();
            cols[i] = user;
            RecordBatch::try_new(b.schema(), cols).unwrap()
        })
        .collect();
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let spec = GroupSpec {
        by: vec!["user".into()],
        aggregates: agg(json!([{"name": "n", "op": "count"}])),
        partitions: std::num::NonZeroUsize::new(2).unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mem = memory((bytes / 4) as u64, dir.path());
    let spill_dir = mem.spill.path().to_path_buf();
    let mut op = super::group::GroupOperator::new("per_user", spec, mem, 4096);
    let mut out = Emitter::default();
    for b in input {
        op.process(b, &mut out).unwrap();
    }
    let err = op.finish(&mut out).unwrap_err().to_string();
    assert!(err.contains("group `per_user`"), "{err}");
    assert!(err.contains("after 3 re-splits"), "{err}");
    assert_eq!(out.counters["partition_splits"], 3);
    drop(op);
    assert!(!spill_dir.exists());
}

#[test]
fn a_refusal_names_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sort_spec(json!({"by": [{"column": "k"}]}));
    let mut op = super::sort::SortOperator::new("by_ts", spec, memory(16, dir.path()), 10);
    let b = batch(vec![("k", arc(Int64Array::from(vec![1, 2, 3])))]);
    let err = op
        .process(b, &mut Emitter::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("memory budget exhausted: `sort `by_ts`` asked for"),
        "{err}"
    );
}

// ---- session windows ----

fn session(extra: Value) -> SessionSpec {
    let mut v = json!({
        "key": ["u"], "time": "ts", "gap": 1000,
        "aggregates": [
            {"name": "n", "op": "count"},
            {"name": "first_v", "op": "first", "column": "v"},
            {"name": "last_v", "op": "last", "column": "v"}
        ]
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn events(rows_: &[(&str, i64, i64)]) -> RecordBatch {
    batch(vec![
        (
            "u",
            arc(StringArray::from(
                rows_.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
        ),
        (
            "ts",
            arc(Int64Array::from(
                rows_.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ),
        (
            "v",
            arc(Int64Array::from(
                rows_.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ),
    ])
}

fn sessions(spec: SessionSpec, input: Vec<RecordBatch>) -> (Value, Emitter) {
    let dir = tempfile::tempdir().unwrap();
    let mut op = super::session::SessionOperator::new("w", spec, &memory(1 << 30, dir.path()));
    let out = run_all(&mut op, input);
    (rows(&out.batches), out)
}

fn row(u: &str, start: i64, end: i64, n: i64, first: i64, last: i64) -> Value {
    json!({"u": u, "session_start": start, "session_end": end, "n": n, "first_v": first, "last_v": last})
}

#[test]
fn a_gap_equal_to_the_threshold_stays_in_the_session_one_ms_more_starts_a_new_one() {
    let (got, _) = sessions(
        session(json!({})),
        vec![events(&[
            ("a", 0, 1),
            ("a", 1000, 2),
            ("a", 2001, 3),
            ("a", 3001, 4),
        ])],
    );
    assert_eq!(
        got,
        json!([row("a", 0, 1000, 2, 1, 2), row("a", 2001, 3001, 2, 3, 4)])
    );
}

#[test]
fn out_of_order_events_within_the_bound_give_the_in_order_result() {
    let ordered = vec![events(&[
        ("a", 0, 1),
        ("a", 500, 2),
        ("a", 1400, 3),
        ("a", 5000, 4),
        ("a", 5100, 5),
    ])];
    let shuffled = vec![
        events(&[("a", 500, 2), ("a", 1400, 3)]),
        events(&[("a", 0, 1), ("a", 5100, 5)]),
        events(&[("a", 5000, 4)]),
    ];
    let spec = session(json!({"out_of_orderness": 1500}));
    let (a, _) = sessions(spec.clone(), ordered);
    let (b, out) = sessions(spec, shuffled);
    assert_eq!(
        a,
        json!([row("a", 0, 1400, 3, 1, 3), row("a", 5000, 5100, 2, 4, 5)])
    );
    assert_eq!(a, b);
    assert!(out.dead_letters.is_empty());
}

#[test]
fn late_events_beyond_the_bound_become_dead_letters_and_allowed_lateness_admits_more() {
    let input = || {
        vec![events(&[
            ("a", 10_000, 1),
            ("b", 7_000, 2),
            ("a", 7_999, 3),
            ("a", 8_500, 4),
        ])]
    };
    // Watermark 10000 − 2000 = 8000: ts 7000 and 7999 are late, 8500 is not (and
    // is more than the 1 s gap before 10000: a session of its own).
    let (got, out) = sessions(session(json!({"out_of_orderness": 2000})), input());
    assert_eq!(
        got,
        json!([
            row("a", 8500, 8500, 1, 4, 4),
            row("a", 10_000, 10_000, 1, 1, 1)
        ])
    );
    let reasons: Vec<(&str, &str, &str)> = out
        .dead_letters
        .iter()
        .map(|d| {
            (
                d.reason.as_str(),
                d.position.as_str(),
                d.text().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("late", "row 1", r#"{"u":"b","ts":7000,"v":2}"#),
            ("late", "row 2", r#"{"u":"a","ts":7999,"v":3}"#)
        ]
    );
    assert_eq!(
        out.dead_letters[0].detail,
        "event time 7000 is more than the allowed lateness 0 ms behind the watermark 8000"
    );
    assert_eq!(out.counters["dead_letter:late"], 2);
    // With 0.5 s of allowed lateness, 7999 still counts and 7000 does not.
    let (got, out) = sessions(
        session(json!({"out_of_orderness": 2000, "allowed_lateness": 500})),
        input(),
    );
    assert_eq!(
        got,
        json!([
            row("a", 7999, 8500, 2, 3, 4),
            row("a", 10_000, 10_000, 1, 1, 1)
        ])
    );
    assert_eq!(out.dead_letters.len(), 1);
}

#[test]
fn max_length_splits_a_long_session() {
    let evs: Vec<(&str, i64, i64)> = (0..7).map(|i| ("a", i * 500, i)).collect();
    let (got, _) = sessions(session(json!({"max_length": 1000})), vec![events(&evs)]);
    assert_eq!(
        got,
        json!([
            row("a", 0, 1000, 3, 0, 2),
            row("a", 1500, 2500, 3, 3, 5),
            row("a", 3000, 3000, 1, 6, 6)
        ])
    );
}

#[test]
fn many_interleaved_keys_are_sessionised_independently_and_closed_by_the_watermark() {
    // 50 keys, events every 100 ms round-robin; each key pauses 5 s after its 10th event.
    let mut evs = Vec::new();
    let names: Vec<String> = (0..50).map(|k| format!("k{k:02}")).collect();
    for round in 0..20i64 {
        for (k, name) in names.iter().enumerate() {
            let pause = if round >= 10 { 5000 } else { 0 };
            evs.push((name.as_str(), round * 100 + k as i64 + pause, round));
        }
    }
    let batches: Vec<RecordBatch> = evs.chunks(37).map(events).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut op =
        super::session::SessionOperator::new("w", session(json!({})), &memory(1 << 30, dir.path()));
    let mut out = Emitter::default();
    for b in batches {
        op.process(b, &mut out).unwrap();
    }
    // The first sessions closed as soon as the watermark passed them, before the end.
    assert_eq!(out.counters["sessions"], 50);
    op.finish(&mut out).unwrap();
    let got = rows(&out.batches);
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 100);
    for (k, name) in names.iter().enumerate() {
        let mine: Vec<&Value> = got.iter().filter(|r| r["u"] == json!(name)).collect();
        let k = k as i64;
        assert_eq!(*mine[0], row(name, k, 900 + k, 10, 0, 9));
        assert_eq!(*mine[1], row(name, 6000 + k, 6900 + k, 10, 10, 19));
    }
}

#[test]
fn session_state_counts_against_the_budget_and_a_refusal_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut op =
        super::session::SessionOperator::new("w", session(json!({})), &memory(64, dir.path()));
    let err = op
        .process(events(&[("a", 0, 1), ("b", 0, 1)]), &mut Emitter::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("memory budget exhausted: `session `w`` asked for"),
        "{err}"
    );
}

#[test]
fn unknown_keys_in_a_session_table_are_refused() {
    let text = "key = [\"u\"]\ntime = \"ts\"\ngap = \"30m\"\nout_of_order = \"5s\"\n";
    let err = toml::from_str::<SessionSpec>(text).unwrap_err().to_string();
    assert!(err.contains("unknown field `out_of_order`"), "{err}");
    let ok: SessionSpec = toml::from_str("key = [\"u\"]\ntime = \"ts\"\ngap = \"30m\"\n").unwrap();
    assert_eq!(ok.gap, Millis(std::time::Duration::from_secs(1800)));
    assert_eq!(ok.start_column, "session_start");
}

/// Sessions of `input` run through one operator that is snapshotted after
/// batch `cut` (and then dropped) and a second one restored from the snapshot:
/// every session comes out exactly once, as in an uninterrupted run.
fn sessions_across_a_restore(spec: &SessionSpec, input: &[RecordBatch], cut: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory(1 << 30, dir.path());
    let mut first = super::session::SessionOperator::new("w", spec.clone(), &mem);
    assert!(first.begin_checkpoints());
    let mut out = Emitter::default();
    for b in &input[..cut] {
        first.process(b.clone(), &mut out).unwrap();
    }
    let state = first.snapshot(dir.path()).unwrap();
    drop(first);
    let mut second = super::session::SessionOperator::new("w", spec.clone(), &mem);
    assert!(second.begin_checkpoints());
    second.restore(&state).unwrap();
    for b in &input[cut..] {
        second.process(b.clone(), &mut out).unwrap();
    }
    second.finish(&mut out).unwrap();
    sorted_rows(&out.batches)
}

fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut v: Vec<String> = rows(batches)
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    v.sort();
    v
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn a_session_state_restored_from_a_snapshot_continues_exactly(
        evs in proptest::collection::vec((0u8..6, 0i64..400, 0i64..100), 1..160),
        per_batch in 1usize..17,
        cut_at in 0.0f64..1.0,
        out_of_orderness in 0i64..3,
        max_length in proptest::option::of(500i64..3000),
    ) {
        // Event times mostly increase, with some disorder inside the bound.
        let mut t = 0i64;
        let events_: Vec<(String, i64, i64)> = evs
            .iter()
            .map(|&(u, dt, v)| {
                t += dt;
                (format!("u{u}"), t - (v % 2) * out_of_orderness * 100, v)
            })
            .collect();
        let input: Vec<RecordBatch> = events_
            .chunks(per_batch)
            .map(|c| {
                let r: Vec<(&str, i64, i64)> = c.iter().map(|(u, t, v)| (u.as_str(), *t, *v)).collect();
                events(&r)
            })
            .collect();
        let mut extra = json!({"out_of_orderness": out_of_orderness * 100});
        if let Some(m) = max_length {
            extra["max_length"] = json!(m);
        }
        let spec = session(extra);
        let dir = tempfile::tempdir().unwrap();
        let mut whole = super::session::SessionOperator::new("w", spec.clone(), &memory(1 << 30, dir.path()));
        let expected = sorted_rows(&run_all(&mut whole, input.clone()).batches);
        let cut = ((input.len() as f64) * cut_at) as usize;
        proptest::prop_assert_eq!(sessions_across_a_restore(&spec, &input, cut), expected);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Pending rows are released from the batches they arrived in, several at a
    /// time, and a key's rows may interleave across them: whatever the batch
    /// boundaries, every session, its first and last value included, and every
    /// dead letter are those of the whole input in one batch.
    #[test]
    fn batch_boundaries_do_not_change_the_sessions(
        evs in proptest::collection::vec((0u8..4, 0i64..300, 0i64..100), 1..200),
        per_batch in 1usize..24,
        out_of_orderness in 0i64..4,
    ) {
        let mut t = 0i64;
        let rows_: Vec<(String, i64, i64)> = evs
            .iter()
            .map(|&(u, dt, v)| {
                t += dt;
                // Some events behind by up to twice the bound: a few are late.
                (format!("u{u}"), t - (v % 3) * out_of_orderness * 100, v)
            })
            .collect();
        let as_batch = |c: &[(String, i64, i64)]| {
            let r: Vec<(&str, i64, i64)> = c.iter().map(|(u, t, v)| (u.as_str(), *t, *v)).collect();
            events(&r)
        };
        let spec = session(json!({"out_of_orderness": out_of_orderness * 100}));
        let (_, whole) = sessions(spec.clone(), vec![as_batch(&rows_)]);
        let (_, split) = sessions(spec, rows_.chunks(per_batch).map(as_batch).collect());
        proptest::prop_assert_eq!(sorted_rows(&split.batches), sorted_rows(&whole.batches));
        let letters = |e: &Emitter| -> Vec<String> {
            e.dead_letters
                .iter()
                .map(|d| format!("{} {} {} {}", d.reason, d.detail, d.position, d.text().unwrap_or_default()))
                .collect()
        };
        proptest::prop_assert_eq!(letters(&split), letters(&whole));
    }
}

#[test]
fn a_snapshot_keeps_only_the_rows_of_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mut op =
        super::session::SessionOperator::new("w", session(json!({})), &memory(1 << 30, dir.path()));
    op.begin_checkpoints();
    let mut out = Emitter::default();
    // a's session 0..10 closes when b's event at 5000 moves the watermark.
    op.process(
        events(&[("a", 0, 1), ("a", 10, 2), ("b", 5000, 3), ("b", 5100, 4)]),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.counters()["sessions"], 1);
    let file = op.snapshot(dir.path()).unwrap();
    let reader =
        arrow::ipc::reader::FileReader::try_new(std::fs::File::open(&file).unwrap(), None).unwrap();
    let held: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    // b's two rows: one released into its open session, one still pending.
    assert_eq!(held, 2);
}

/// `input` through an operator `make` builds (with `budget` bytes), which is
/// snapshotted after batch `cut`, then again after batch `cut2` (the second
/// snapshot superseding the first), dropped, and restored into a fresh one
/// that reads the rest: what the resumed run emits.
fn across_two_snapshots(
    make: &dyn Fn(RunMemory) -> Box<dyn Operator>,
    budget: u64,
    input: &[RecordBatch],
    cut: usize,
    cut2: usize,
) -> Emitter {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ck-1"), dir.path().join("ck-2"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut first = make(memory(budget, &dir.path().join("one")));
    assert_eq!(first.at_barrier(), crate::node::AtBarrier::Snapshot);
    let mut ignored = Emitter::default();
    for x in &input[..cut] {
        first.process(x.clone(), &mut ignored).unwrap();
    }
    first.snapshot(&a).unwrap();
    for x in &input[cut..cut2] {
        first.process(x.clone(), &mut ignored).unwrap();
    }
    let state = first.snapshot(&b).unwrap();
    // The first run dies: its spill directory goes, and so does the older state.
    drop(first);
    std::fs::remove_dir_all(&a).unwrap();
    let mut second = make(memory(budget, &dir.path().join("two")));
    second.restore(&state).unwrap();
    run_all(second.as_mut(), input[cut2..].to_vec())
}

#[test]
fn a_sort_restored_from_its_snapshots_sorts_exactly_as_an_uninterrupted_one() {
    let input = wide_batches(20_000, 500, 5);
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let spec = sort_spec(json!({"by": [{"column": "k", "descending": true}]}));
    let dir = tempfile::tempdir().unwrap();
    let expected = run_all(
        &mut super::sort::SortOperator::new("s", spec.clone(), memory(1 << 32, dir.path()), 4096),
        input.clone(),
    );
    // In memory, and spilled (runs hard-linked into the snapshot), with ties
    // on `k` that must keep their input order across the restore.
    for budget in [1u64 << 32, (bytes / 8) as u64] {
        let make = |m: RunMemory| -> Box<dyn Operator> {
            Box::new(super::sort::SortOperator::new("s", spec.clone(), m, 4096))
        };
        let got = across_two_snapshots(&make, budget, &input, 13, 27);
        assert_eq!(
            rows(&got.batches),
            rows(&expected.batches),
            "budget {budget}"
        );
    }
}

#[test]
fn a_group_restored_from_its_snapshots_equals_an_uninterrupted_one() {
    let input = wide_batches(20_000, 500, 9);
    let bytes: usize = input.iter().map(RecordBatch::get_array_memory_size).sum();
    let spec = wide_group(crate::spec::default_partitions());
    let dir = tempfile::tempdir().unwrap();
    let expected = group_in_memory(&spec, &input, dir.path());
    // In memory, and partitioned (partition files read into the snapshot).
    for budget in [1u64 << 32, (bytes / 8) as u64] {
        let make = |m: RunMemory| -> Box<dyn Operator> {
            Box::new(super::group::GroupOperator::new("g", spec.clone(), m, 4096))
        };
        let got = across_two_snapshots(&make, budget, &input, 11, 30);
        assert_eq!(
            rows(&got.batches),
            rows(&expected.batches),
            "budget {budget}"
        );
    }
}

#[test]
fn a_count_sample_restored_from_its_snapshots_keeps_the_same_rows() {
    let input = wide_batches(20_000, 500, 3);
    // Keyed by position (no `key`): the rows seen so far go with the state.
    let spec: crate::ops::SampleSpec =
        toml::from_str("by = \"k\"\nseed = 5\ndefault = { count = 3 }\n").unwrap();
    let make = |_: RunMemory| -> Box<dyn Operator> {
        Box::new(crate::ops::SampleOp::new("stage[0].sample", &spec).unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = run_all(make(memory(1 << 32, dir.path())).as_mut(), input.clone());
    assert!(
        expected
            .batches
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>()
            > 2_000,
        "a stratum per key, three rows each"
    );
    let got = across_two_snapshots(&make, 1 << 32, &input, 7, 21);
    assert_eq!(rows(&got.batches), rows(&expected.batches));
}
