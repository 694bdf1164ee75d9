//! The guard on a toy operator that fails on chosen values: exact isolation,
//! order kept, nothing partial emitted, the bound, the breaker, retries.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use proptest::prelude::*;

use super::{Bound, GuardedOperator};
use crate::node::policy::{Action, BreakerSpec, FallbackSpec, OnError};
use crate::node::retry::RetryPolicy;
use crate::node::services::Clock;
use crate::node::swap::{StageChange, SwapRequest};
use crate::node::{Emitter, Fault, NodeError, Operator};
use crate::units::Millis;

/// Appends `y = 2x`; a row whose `x` is in `errors` makes the call return the
/// stage's error naming it, a row in `traps` makes it trap (naming no row).
/// Before failing it pushes what it has, which the guard must discard.
struct Poison {
    errors: BTreeSet<i64>,
    traps: BTreeSet<i64>,
    transient_left: u32,
    calls: Arc<AtomicU64>,
}

fn out_schema(input: &SchemaRef) -> SchemaRef {
    let mut f: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    f.push(Field::new("y", DataType::Float64, false));
    Arc::new(Schema::new(f))
}

impl Operator for Poison {
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        Ok(Some(out_schema(input)))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        out.count("wasm:calls", 1);
        let x = batch.column(0).as_primitive::<Int64Type>();
        let y = Float64Array::from_iter_values(x.values().iter().map(|v| *v as f64 * 2.0));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(y));
        let result = RecordBatch::try_new(out_schema(&batch.schema()), columns)?;
        // Partial output first: a failed call's pushes must never leave.
        out.push(result.clone());
        out.count("filtered", 1);
        if self.transient_left > 0 {
            self.transient_left -= 1;
            return Err(NodeError::Stage {
                row: None,
                transient: true,
                trap: false,
                error: "busy".into(),
            });
        }
        if x.values().iter().any(|v| self.traps.contains(v)) {
            return Err(NodeError::Stage {
                row: None,
                transient: false,
                trap: true,
                error: "trapped".into(),
            });
        }
        if let Some(i) = x.values().iter().position(|v| self.errors.contains(v)) {
            return Err(NodeError::Stage {
                row: Some(i as u32),
                transient: false,
                trap: false,
                error: format!("x = {} is rotten", x.value(i)).into(),
            });
        }
        out.batches.clear();
        out.metas.clear();
        out.positions.clear();
        out.counters.remove("filtered");
        out.push(result);
        Ok(())
    }
}

/// A clock the test moves.
#[derive(Default)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn input(n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
}

fn poison(errors: &[i64], traps: &[i64]) -> (Poison, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    (
        Poison {
            errors: errors.iter().copied().collect(),
            traps: traps.iter().copied().collect(),
            transient_left: 0,
            calls: calls.clone(),
        },
        calls,
    )
}

fn guard(op: Poison, policy: OnError, fallback: Option<FallbackSpec>) -> GuardedOperator {
    guard_on(
        op,
        policy,
        fallback,
        Arc::new(TestClock::default()),
        BreakerSpec::default(),
    )
}

fn guard_on(
    op: Poison,
    policy: OnError,
    fallback: Option<FallbackSpec>,
    clock: Arc<TestClock>,
    breaker: BreakerSpec,
) -> GuardedOperator {
    let mut g = GuardedOperator::new(Box::new(op), "stage[1]", policy, fallback, breaker, clock);
    g.output_schema(&input(0).schema()).unwrap();
    g
}

fn xs(out: &Emitter) -> Vec<i64> {
    out.batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

fn letter_rows(out: &Emitter) -> Vec<(String, String)> {
    out.dead_letters
        .iter()
        .map(|l| (l.position.clone(), l.reason.clone()))
        .collect()
}

#[test]
fn skip_isolates_exactly_the_failing_rows_and_keeps_order() {
    let (op, _) = poison(&[3, 17], &[9, 30]);
    let mut g = guard(op, OnError::action(Action::Skip), None);
    let mut out = Emitter::default();
    g.process(input(32), &mut out).unwrap();
    let expected: Vec<i64> = (0..32).filter(|x| ![3, 9, 17, 30].contains(x)).collect();
    assert_eq!(xs(&out), expected);
    // The pieces the search processed apart leave as one batch.
    assert_eq!(out.batches.len(), 1);
    assert_eq!(
        letter_rows(&out),
        [
            ("row 3".to_owned(), "stage_error".to_owned()),
            ("row 9".to_owned(), "trap".to_owned()),
            ("row 17".to_owned(), "stage_error".to_owned()),
            ("row 30".to_owned(), "trap".to_owned()),
        ]
    );
    assert_eq!(out.dead_letters[0].text().unwrap(), r#"{"x":3}"#);
    assert_eq!(out.dead_letters[0].detail, "x = 3 is rotten");
    assert_eq!(
        out.dead_letters[1].fault,
        Fault::Stage {
            transient: false,
            trap: true
        }
    );
    assert_eq!(out.counters.get("rows_skipped"), Some(&4));
    assert!(out.counters["bisections"] > 0);
    // Nothing a failed call pushed or counted leaked through.
    assert_eq!(out.counters.get("filtered"), None);
    assert_eq!(out.counters.get("dead_letter:trap"), Some(&2));
}

#[test]
fn fallback_rows_carry_the_defaults_and_the_mark() {
    let (op, _) = poison(&[2], &[5]);
    let fallback = FallbackSpec {
        defaults: [("y".to_owned(), serde_json::json!(-1.0))].into(),
        mark: "_fb".to_owned(),
    };
    let mut g = guard(op, OnError::action(Action::Fallback), Some(fallback));
    let schema = g.output_schema(&input(0).schema()).unwrap().unwrap();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["x", "y", "_fb"]
    );
    let mut out = Emitter::default();
    g.process(input(8), &mut out).unwrap();
    assert_eq!(xs(&out), (0..8).collect::<Vec<_>>());
    let mut ys: Vec<f64> = Vec::new();
    let mut marks: Vec<bool> = Vec::new();
    for b in &out.batches {
        assert_eq!(b.schema(), schema);
        ys.extend(b.column(1).as_primitive::<Float64Type>().values().iter());
        marks.extend(b.column(2).as_boolean().iter().map(Option::unwrap));
    }
    assert_eq!(ys, [0.0, 2.0, -1.0, 6.0, 8.0, -1.0, 12.0, 14.0]);
    assert_eq!(
        marks,
        [false, false, true, false, false, true, false, false]
    );
    assert!(out.dead_letters.is_empty());
    assert_eq!(out.counters.get("rows_fallen_back"), Some(&2));
}

#[test]
fn a_fallback_without_a_default_for_an_output_column_is_refused_naming_it() {
    let (op, _) = poison(&[], &[]);
    let mut g = GuardedOperator::new(
        Box::new(op),
        "stage[1]",
        OnError::action(Action::Fallback),
        Some(FallbackSpec {
            defaults: Default::default(),
            mark: "_fallback".into(),
        }),
        BreakerSpec::default(),
        Arc::new(TestClock::default()),
    );
    let e = g.output_schema(&input(0).schema()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`stage[1].fallback`: no default for output column `y` (Float64), which the input does \
         not have: add `defaults.y`"
    );
    let (op, _) = poison(&[], &[]);
    let mut g = GuardedOperator::new(
        Box::new(op),
        "stage[1]",
        OnError::action(Action::Fallback),
        Some(FallbackSpec {
            defaults: [("y".to_owned(), serde_json::json!("high"))].into(),
            mark: "_fallback".into(),
        }),
        BreakerSpec::default(),
        Arc::new(TestClock::default()),
    );
    let e = g.output_schema(&input(0).schema()).unwrap_err().to_string();
    assert!(
        e.starts_with("`stage[1].fallback`: `defaults.y`: \"high\" cannot be `y` (Float64)"),
        "{e}"
    );
}

#[test]
fn the_default_policy_fails_on_a_stage_error() {
    let (op, _) = poison(&[1], &[]);
    let mut g = guard(op, OnError::default_for(true), None);
    let mut out = Emitter::default();
    let e = g.process(input(4), &mut out).unwrap_err();
    assert_eq!(e.to_string(), "x = 1 is rotten");
    assert!(out.batches.is_empty());
}

#[test]
fn segments_left_when_the_bound_is_hit_go_whole_to_the_policy() {
    let (op, calls) = poison(&[], &[40]);
    let mut g = guard(op, OnError::action(Action::Skip), None).with_bound(Bound {
        calls: 3,
        time: Duration::from_secs(60),
    });
    let mut out = Emitter::default();
    g.process(input(64), &mut out).unwrap();
    // Call 1: all 64 (trap); 2: [0, 32) ok; 3: [32, 64) trap; then spent.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(xs(&out), (0..32).collect::<Vec<_>>());
    assert_eq!(out.dead_letters.len(), 32);
    assert!(out.dead_letters.iter().all(|l| l.reason == "unresolved"));
    assert_eq!(out.dead_letters[0].position, "row 32");
}

#[test]
fn a_transient_failure_is_retried_through_the_retry_loop() {
    let (mut op, calls) = poison(&[], &[]);
    op.transient_left = 2;
    let retry = RetryPolicy {
        backoff: Millis(Duration::from_millis(1)),
        max_wait: Millis(Duration::from_millis(1)),
        ..RetryPolicy::default()
    };
    let policy = OnError {
        retry: Some(retry),
        then: Action::Skip,
        data_only: false,
    };
    let mut g = guard(op, policy, None);
    let mut out = Emitter::default();
    g.process(input(4), &mut out).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(xs(&out), [0, 1, 2, 3]);
    assert_eq!(out.counters.get("retries"), Some(&2));
    assert_eq!(out.counters.get("wasm:calls"), Some(&3));
}

#[test]
fn the_breaker_opens_half_opens_and_closes_on_a_swap() {
    let clock = Arc::new(TestClock::default());
    let (op, calls) = poison(&[], &(0..1000).collect::<Vec<_>>());
    let spec = BreakerSpec {
        traps: std::num::NonZeroU32::new(2).unwrap(),
        window: Millis(Duration::from_secs(10)),
        open: Millis(Duration::from_secs(5)),
        max_open: Millis(Duration::from_secs(60)),
    };
    let mut g = guard_on(op, OnError::action(Action::Skip), None, clock.clone(), spec);
    let mut out = Emitter::default();
    // First trapping batch: bisected (4 rows: 1 + 2 + 4 calls).
    g.process(input(4), &mut out).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(out.states.get("breaker"), None);
    // Second: opens; the batch goes whole to the policy, not bisected.
    g.process(input(4), &mut out).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert_eq!(out.states["breaker"], "open");
    // Open: not called at all.
    g.process(input(4), &mut out).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert_eq!(out.counters["dead_letter:breaker_open"], 4);
    // After the back-off it half-opens; the trial traps, so it reopens for 10 s.
    clock.0.store(5_000, Ordering::SeqCst);
    g.process(input(4), &mut out).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 9);
    assert_eq!(out.counters["breaker:half_opened"], 1);
    assert_eq!(out.counters["breaker:opened"], 2);
    clock.0.store(14_000, Ordering::SeqCst);
    g.process(input(4), &mut out).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        9,
        "still open: the back-off doubled"
    );
    // A swap closes it.
    let (reply, _rx) = crate::node::swap::SwapReply::channel();
    g.swap(SwapRequest {
        change: StageChange::Params("{}".into()),
        reply,
    });
    g.process(input(4), &mut Emitter::default()).unwrap();
    assert!(
        calls.load(Ordering::SeqCst) > 9,
        "closed: the stage is called again"
    );
    assert_eq!(out.dead_letters.len(), 20);
}

proptest! {
    /// Whatever rows fail, and however (an error naming the row, a trap naming
    /// none), exactly those rows are isolated and every other row comes out
    /// once, in order.
    #[test]
    fn bisection_isolates_exactly_the_failing_set(
        n in 1i64..80,
        errors in proptest::collection::btree_set(0i64..80, 0..6),
        traps in proptest::collection::btree_set(0i64..80, 0..6),
    ) {
        let (op, _) = poison(&errors.iter().copied().collect::<Vec<_>>(), &traps.iter().copied().collect::<Vec<_>>());
        let mut g = guard(op, OnError::action(Action::Skip), None);
        let mut out = Emitter::default();
        g.process(input(n), &mut out).unwrap();
        let failing: BTreeSet<i64> = errors.union(&traps).copied().filter(|x| *x < n).collect();
        let kept: Vec<i64> = (0..n).filter(|x| !failing.contains(x)).collect();
        prop_assert_eq!(xs(&out), kept);
        let letters: Vec<String> = out.dead_letters.iter().map(|l| l.position.clone()).collect();
        let expected: Vec<String> = failing.iter().map(|x| format!("row {x}")).collect();
        prop_assert_eq!(letters, expected);
    }
}
