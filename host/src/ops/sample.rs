//! `[stage.sample]`: stratified, seeded sampling for offline evaluation sets.
//!
//! ```toml
//! [stage.sample]
//! by = "label"                      # stratum column (default: one stratum for all rows)
//! key = "event_id"                  # row identity to hash (default: the row's position in the input)
//! seed = 7                          # default 0
//! default = { fraction = 0.01 }     # strata not listed (default: dropped)
//! strata = { "1" = { count = 5000 }, "0" = { fraction = 0.02 } }
//! ```
//!
//! Every decision is a function of `(seed, stratum, key)` only, never of the
//! batching, so the same seed and the same input give the same rows whatever the
//! batch sizes and however the input was split into batches or files (with `key`
//! set, even in whatever order the rows arrive). The row's hash is FNV-1a 64 over
//! the seed, the stratum and the key, finished with splitmix64's mixer so it reads
//! as a uniform fraction `u` in `[0, 1)`:
//!
//! - `fraction = p` keeps a row when `u < p`; kept rows stream out with their batch.
//! - `count = k` keeps the `k` rows of the stratum with the smallest hashes (ties
//!   broken by input position): exactly `min(k, rows in the stratum)`, a uniform
//!   sample without replacement. This is a bottom-k sketch and cannot be decided
//!   before the input ends, so candidates are held until `finish` and emitted then,
//!   in input order. Memory is `O(sum of k)` rows: candidates are copied out of
//!   their batch (`take`) so the batch itself is freed, and the held copies are
//!   compacted whenever evicted rows make up more than half of them.
//!
//! In a run with aligned checkpoints the candidates, their hashes and the
//! count of rows seen go with each checkpoint (`Operator::snapshot`), so a
//! resumed run decides exactly as an uninterrupted one.
//!
//! Strata are the `by` column's values as strings (Arrow's `cast` to Utf8: `1`,
//! `true`, `fr`); a null value is the stratum `"null"`.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::compute::{cast, filter_record_batch, interleave_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};

use super::state_file;
use super::{FNV_OFFSET, column, fnv1a, mix, unit};
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::{AtBarrier, Emitter, NodeError, Operator};

/// A sample stage's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    /// The stratum column. Default: none (all rows are one stratum, `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// A column identifying a row, hashed for the decision. Default: none (the row's
    /// position in the stage's input, counted from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The seed: another seed gives another, independent sample. Default: 0.
    #[serde(default)]
    pub seed: u64,
    /// The rule for strata not listed in `strata`. Default: none (their rows are
    /// dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Rule>,
    /// Rules per stratum value. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strata: BTreeMap<String, Rule>,
}

/// How much of a stratum to keep: exactly one of `fraction` and `count`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Keep each row with this probability, in `[0, 1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Keep exactly this many rows (all of them if the stratum is smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decide {
    Fraction(f64),
    Count(usize),
}

impl Rule {
    fn decide(&self, key: &str) -> Result<Decide, SpecError> {
        match (self.fraction, self.count) {
            (Some(p), None) if (0.0..=1.0).contains(&p) => Ok(Decide::Fraction(p)),
            (Some(p), None) => Err(SpecError::invalid(
                format!("{key}.fraction"),
                format!("is {p}; must be within [0, 1]"),
            )),
            (None, Some(k)) => usize::try_from(k).map(Decide::Count).map_err(|_| {
                SpecError::invalid(format!("{key}.count"), "is too large for this machine")
            }),
            _ => Err(SpecError::invalid(
                key,
                "set exactly one of `fraction` and `count`",
            )),
        }
    }
}

/// A bottom-k candidate: ordered by hash, then input position.
type Candidate = (u64, u64);

/// The running sampler.
pub struct SampleOp {
    /// Its key path (`stage[1].sample`), naming its state file.
    name: String,
    /// The lineage and tokens of every input consumed: what held rows carry.
    consumed: crate::node::MetaSet,
    by: Option<String>,
    key: Option<String>,
    seed_state: u64,
    default: Option<Decide>,
    strata: HashMap<String, Decide>,
    /// Rows seen so far (the default key).
    seen: u64,
    /// Per count-stratum, a max-heap of its best `k` candidates.
    heaps: HashMap<String, (usize, BinaryHeap<Candidate>)>,
    /// Where each candidate's row is held: (chunk, row).
    held_at: HashMap<u64, (usize, usize)>,
    held: Vec<RecordBatch>,
    held_rows: usize,
}

impl SampleOp {
    /// Checks the configuration (`key` is its key path, e.g. `stage[1].sample`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    pub fn new(key: &str, spec: &SampleSpec) -> Result<Self, SpecError> {
        if spec.default.is_none() && spec.strata.is_empty() {
            return Err(SpecError::invalid(
                key,
                "needs `default`, `strata` or both; as written it keeps nothing",
            ));
        }
        if spec.by.is_none() && !spec.strata.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.strata"),
                "needs `by`, the column whose values name the strata",
            ));
        }
        let default = spec
            .default
            .map(|r| r.decide(&format!("{key}.default")))
            .transpose()?;
        let strata = spec
            .strata
            .iter()
            .map(|(s, r)| Ok((s.clone(), r.decide(&format!("{key}.strata.{s}"))?)))
            .collect::<Result<_, SpecError>>()?;
        Ok(Self {
            name: key.to_owned(),
            consumed: crate::node::MetaSet::new(),
            by: spec.by.clone(),
            key: spec.key.clone(),
            seed_state: fnv1a(FNV_OFFSET, &spec.seed.to_le_bytes()),
            default,
            strata,
            seen: 0,
            heaps: HashMap::new(),
            held_at: HashMap::new(),
            held: Vec::new(),
            held_rows: 0,
        })
    }

    fn rule(&self, stratum: &str) -> Option<Decide> {
        self.strata.get(stratum).copied().or(self.default)
    }

    /// Moves the surviving candidates into one chunk.
    fn compact(&mut self) -> Result<(), NodeError> {
        let mut live: Vec<(u64, (usize, usize))> =
            self.held_at.iter().map(|(&i, &at)| (i, at)).collect();
        live.sort_unstable_by_key(|(i, _)| *i);
        let chunk = if live.is_empty() {
            None
        } else {
            let refs: Vec<&RecordBatch> = self.held.iter().collect();
            let idx: Vec<(usize, usize)> = live.iter().map(|(_, at)| *at).collect();
            Some(interleave_record_batch(&refs, &idx)?)
        };
        self.held = chunk.into_iter().collect();
        self.held_rows = live.len();
        self.held_at = live
            .iter()
            .enumerate()
            .map(|(row, (i, _))| (*i, (0, row)))
            .collect();
        Ok(())
    }
}

/// The strata and the hash of every row of `batch`.
fn strata_and_hashes(
    batch: &RecordBatch,
    by: Option<&str>,
    key: Option<&str>,
    seed_state: u64,
    first: u64,
    what: &str,
) -> Result<(Vec<String>, Vec<u64>), NodeError> {
    let n = batch.num_rows();
    let strata: Vec<String> = match by {
        None => vec![String::new(); n],
        Some(c) => {
            let s = cast(column(batch, c, what)?, &DataType::Utf8)?;
            s.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("null").to_owned())
                .collect()
        }
    };
    let keys = match key {
        None => None,
        Some(c) => Some(cast(column(batch, c, what)?, &DataType::Utf8)?),
    };
    // Hashing has no Arrow kernel: one pass over the rows.
    let hashes = (0..n)
        .map(|i| {
            let h = fnv1a(fnv1a(seed_state, strata[i].as_bytes()), &[0xff]);
            let h = match &keys {
                None => fnv1a(h, &(first + i as u64).to_le_bytes()),
                Some(k) => {
                    let k = k.as_string::<i32>();
                    if k.is_null(i) {
                        fnv1a(h, &[0xfe])
                    } else {
                        fnv1a(fnv1a(h, &[0]), k.value(i).as_bytes())
                    }
                }
            };
            mix(h)
        })
        .collect();
    Ok((strata, hashes))
}

impl Operator for SampleOp {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        let n = batch.num_rows();
        let first = self.seen;
        self.seen += n as u64;
        if n == 0 {
            return Ok(());
        }
        let (strata, hashes) = strata_and_hashes(
            &batch,
            self.by.as_deref(),
            self.key.as_deref(),
            self.seed_state,
            first,
            "sample",
        )?;
        let mut keep = vec![false; n];
        let mut entered = false;
        // Rows not kept, and candidates pushed out: the ledger's `filtered`.
        let mut dropped = 0u64;
        for i in 0..n {
            match self.rule(&strata[i]) {
                None => dropped += 1,
                Some(Decide::Fraction(p)) => {
                    keep[i] = unit(hashes[i]) < p;
                    dropped += u64::from(!keep[i]);
                }
                Some(Decide::Count(k)) => {
                    if k == 0 {
                        dropped += 1;
                        continue;
                    }
                    let (_, heap) = self
                        .heaps
                        .entry(strata[i].clone())
                        .or_insert_with(|| (k, BinaryHeap::new()));
                    let cand = (hashes[i], first + i as u64);
                    if heap.len() < k {
                        heap.push(cand);
                        entered = true;
                    } else if cand < *heap.peek().expect("k > 0") {
                        let (_, gone) = heap.pop().expect("k > 0");
                        self.held_at.remove(&gone);
                        heap.push(cand);
                        entered = true;
                        dropped += 1;
                    } else {
                        dropped += 1;
                    }
                }
            }
        }
        if entered {
            // Held rows carry the metas of the batches they came from; batches
            // with no candidate are let go as they pass.
            self.consumed.push_input(out);
            // Copy this batch's surviving candidates out, so the batch can be freed.
            let mut rows: Vec<u32> = Vec::new();
            for (_, heap) in self.heaps.values() {
                rows.extend(
                    heap.iter()
                        .filter(|(_, idx)| *idx >= first)
                        .map(|(_, idx)| (idx - first) as u32),
                );
            }
            rows.sort_unstable();
            if !rows.is_empty() {
                let chunk = take_record_batch(&batch, &UInt32Array::from(rows.clone()))?;
                if let Some(h) = self.held.first()
                    && h.schema_ref().fields() != chunk.schema_ref().fields()
                {
                    return Err(NodeError::Config(
                        "sample: the input's columns changed between batches".to_owned(),
                    ));
                }
                let c = self.held.len();
                for (r, row) in rows.iter().enumerate() {
                    self.held_at.insert(first + u64::from(*row), (c, r));
                }
                self.held_rows += rows.len();
                self.held.push(chunk);
            }
            if self.held_rows > 2 * self.held_at.len() + 1024 {
                self.compact()?;
            }
        }
        if dropped > 0 {
            out.count("filtered", dropped);
        }
        if keep.iter().any(|&k| k) {
            out.push(filter_record_batch(&batch, &BooleanArray::from(keep))?);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        self.compact()?;
        if let Some(b) = self.held.pop() {
            out.push_with(b, self.consumed.union());
        }
        self.heaps.clear();
        self.held_at.clear();
        Ok(())
    }

    /// Candidates are held until the input ends, and the default key is the
    /// row's position in the input: both go with the checkpoint (even with
    /// only `fraction` rules, for the position).
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Snapshot
    }

    /// Writes `<dir>/<operator>.arrow`: the held candidates in input order,
    /// each with its hash, position and stratum in three added columns
    /// (`STATE_COLUMNS`); the rows seen and the lineage so far in its
    /// metadata. Restoring rebuilds every stratum's heap from them exactly.
    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        self.compact()?;
        let file = dir.join(format!("{}.arrow", state_file::stem(&self.name)));
        let state = serde_json::json!({
            "seen": self.seen,
            "lineage": state_file::lineage_json(&self.consumed),
        });
        let mut of: HashMap<u64, (u64, &str)> = HashMap::new();
        for (stratum, (_, heap)) in &self.heaps {
            for &(hash, idx) in heap {
                of.insert(idx, (hash, stratum.as_str()));
            }
        }
        let mut live: Vec<(u64, usize)> = self.held_at.iter().map(|(&i, &(_, r))| (i, r)).collect();
        live.sort_unstable();
        let (fields, batch) = match self.held.first() {
            None => (arrow::datatypes::Schema::empty(), None),
            Some(chunk) => {
                let mut fields: Vec<arrow::datatypes::FieldRef> =
                    chunk.schema().fields().iter().cloned().collect();
                fields.push(Arc::new(Field::new(
                    STATE_COLUMNS[0],
                    DataType::UInt64,
                    false,
                )));
                fields.push(Arc::new(Field::new(
                    STATE_COLUMNS[1],
                    DataType::UInt64,
                    false,
                )));
                fields.push(Arc::new(Field::new(
                    STATE_COLUMNS[2],
                    DataType::Utf8,
                    false,
                )));
                let schema = arrow::datatypes::Schema::new(fields);
                let mut columns = chunk.columns().to_vec();
                columns.push(Arc::new(UInt64Array::from_iter_values(
                    live.iter().map(|(i, _)| of.get(i).map_or(0, |o| o.0)),
                )));
                columns.push(Arc::new(UInt64Array::from_iter_values(
                    live.iter().map(|(i, _)| *i),
                )));
                columns.push(Arc::new(StringArray::from_iter_values(
                    live.iter().map(|(i, _)| of.get(i).map_or("", |o| o.1)),
                )));
                let batch = RecordBatch::try_new(Arc::new(schema.clone()), columns)?;
                (schema, Some(batch))
            }
        };
        state_file::write(&file, &fields, STATE_KEY, &state, batch.into_iter().map(Ok))?;
        state_file::release_tokens(&mut self.consumed);
        Ok(file)
    }

    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        let saved = state_file::read(file, STATE_KEY, &self.name)?;
        state_file::restore_lineage(&mut self.consumed, &saved.state["lineage"]);
        self.seen = saved.state["seen"].as_u64().unwrap_or(0);
        let base = saved
            .schema
            .fields()
            .len()
            .saturating_sub(STATE_COLUMNS.len());
        for b in saved.batches {
            let b = b?;
            let hash = b
                .column(base)
                .as_primitive::<arrow::datatypes::UInt64Type>();
            let idx = b
                .column(base + 1)
                .as_primitive::<arrow::datatypes::UInt64Type>();
            let stratum = b.column(base + 2).as_string::<i32>();
            let c = self.held.len();
            for r in 0..b.num_rows() {
                let stratum = stratum.value(r);
                let Some(Decide::Count(k)) = self.rule(stratum) else {
                    return Err(NodeError::config(format!(
                        "sample: the state in {} holds stratum `{stratum}`, which has no `count` rule",
                        file.display()
                    )));
                };
                self.heaps
                    .entry(stratum.to_owned())
                    .or_insert_with(|| (k, BinaryHeap::new()))
                    .1
                    .push((hash.value(r), idx.value(r)));
                self.held_at.insert(idx.value(r), (c, r));
            }
            self.held_rows += b.num_rows();
            self.held.push(b.project(&(0..base).collect::<Vec<_>>())?);
        }
        Ok(())
    }

    /// The candidates still in the running.
    fn held_rows(&self) -> usize {
        self.held_at.len()
    }

    fn buffered_rows(&self) -> usize {
        // Held candidates are not "waiting for more input" in the linger sense:
        // they cannot be decided before the end, so no timer should flush them.
        0
    }
}

/// The schema-metadata key of a sample's state file.
const STATE_KEY: &str = "weir.sample.state";

/// The columns a state file adds to each held candidate: its hash, its
/// position in the input and its stratum.
const STATE_COLUMNS: [&str; 3] = [
    "weir.sample.hash",
    "weir.sample.index",
    "weir.sample.stratum",
];

/// Checked by building: [`SampleOp::new`] refuses a bad configuration, naming the key.
impl OperatorConfig for SampleSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        SampleOp::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(SampleOp::new(cx.key, self)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::ops::testutil::{arc, batch, rows, run};

    fn op(toml: &str) -> SampleOp {
        SampleOp::new("stage[0].sample", &toml::from_str(toml).unwrap()).unwrap()
    }

    /// `n` rows: id 0..n, label id % 3 (as a string, every 7th null).
    fn input(n: i64) -> RecordBatch {
        let label: StringArray = (0..n)
            .map(|i| {
                if i % 7 == 6 {
                    None
                } else {
                    Some(["a", "b", "c"][(i % 3) as usize])
                }
            })
            .collect();
        batch(vec![
            ("id", arc(Int64Array::from_iter_values(0..n))),
            ("label", arc(label)),
        ])
    }

    fn ids(out: &Emitter) -> Vec<i64> {
        let mut v: Vec<i64> = out
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        v.sort_unstable();
        v
    }

    fn split_into(b: &RecordBatch, cuts: &[usize]) -> Vec<RecordBatch> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (b.num_rows() + 1)).collect();
        cuts.extend([0, b.num_rows()]);
        cuts.sort_unstable();
        cuts.windows(2)
            .map(|w| b.slice(w[0], w[1] - w[0]))
            .collect()
    }

    const CONFIG: &str = r#"by = "label"
seed = 11
default = { fraction = 0.3 }
strata = { a = { count = 5 }, null = { count = 2 }, c = { fraction = 0.5 } }"#;

    #[test]
    fn counts_are_exact_and_fractions_close_and_rows_come_out_in_order() {
        let mut s = op(CONFIG);
        let out = run(&mut s, vec![input(1000)]);
        let kept = rows(&out.batches);
        let count = |l: serde_json::Value| {
            kept.as_array()
                .unwrap()
                .iter()
                .filter(|r| r["label"] == l)
                .count()
        };
        assert_eq!(count(json!("a")), 5);
        assert_eq!(count(json!(null)), 2);
        let b = count(json!("b"));
        let c = count(json!("c"));
        // 286 rows of b (p = 0.3), 286 of c (p = 0.5).
        assert!((60..110).contains(&b), "{b}");
        assert!((115..170).contains(&c), "{c}");
        // The count strata come last (at finish), in input order.
        let last = out.batches.last().unwrap();
        let held: Vec<i64> = last
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        let mut sorted = held.clone();
        sorted.sort_unstable();
        assert_eq!(held, sorted);
        assert_eq!(held.len(), 7);
    }

    #[test]
    fn a_stratum_smaller_than_its_count_is_kept_whole_and_unlisted_strata_dropped() {
        let mut s = op("by = \"label\"\nstrata = { null = { count = 1000 } }");
        let out = run(&mut s, vec![input(30), input(0)]);
        assert_eq!(ids(&out), [6, 13, 20, 27]);
    }

    #[test]
    fn the_same_seed_and_key_give_the_same_rows_in_any_order() {
        let a = ids(&run(
            &mut op("key = \"id\"\nseed = 3\ndefault = { count = 10 }"),
            vec![input(200)],
        ));
        let reversed = {
            let b = input(200);
            let idx = UInt32Array::from_iter_values((0..200).rev());
            take_record_batch(&b, &idx).unwrap()
        };
        let b = ids(&run(
            &mut op("key = \"id\"\nseed = 3\ndefault = { count = 10 }"),
            vec![reversed],
        ));
        assert_eq!(a, b);
        let c = ids(&run(
            &mut op("key = \"id\"\nseed = 4\ndefault = { count = 10 }"),
            vec![input(200)],
        ));
        assert_ne!(a, c);
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |t: &str| match toml::from_str::<SampleSpec>(t) {
            Ok(s) => SampleOp::new("stage[0].sample", &s)
                .err()
                .unwrap()
                .to_string(),
            Err(e) => e.message().to_owned(),
        };
        assert_eq!(
            bad("seed = 1"),
            "`stage[0].sample`: needs `default`, `strata` or both; as written it keeps nothing"
        );
        assert_eq!(
            bad("by = \"l\"\nstrata = { x = { fraction = 1.5 } }"),
            "`stage[0].sample.strata.x.fraction`: is 1.5; must be within [0, 1]"
        );
        assert_eq!(
            bad("default = { fraction = 0.1, count = 3 }"),
            "`stage[0].sample.default`: set exactly one of `fraction` and `count`"
        );
        assert_eq!(
            bad("strata = { x = { count = 1 } }"),
            "`stage[0].sample.strata`: needs `by`, the column whose values name the strata"
        );
        assert_eq!(
            bad("seed = -1\ndefault = { count = 1 }"),
            "invalid value: integer `-1`, expected u64"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_batching_gives_the_same_rows(n in 0i64..600, cuts_a in proptest::collection::vec(0usize..600, 0..12),
                                           cuts_b in proptest::collection::vec(0usize..600, 0..12), seed in 0u64..1000) {
            let config = CONFIG.replace("seed = 11", &format!("seed = {seed}"));
            let b = input(n);
            let a = ids(&run(&mut op(&config), split_into(&b, &cuts_a)));
            let c = ids(&run(&mut op(&config), split_into(&b, &cuts_b)));
            prop_assert_eq!(&a, &c);
            let whole = ids(&run(&mut op(&config), vec![b]));
            prop_assert_eq!(a, whole);
        }

        #[test]
        fn fixed_counts_per_stratum_are_exact(n in 0i64..3000, k in 0u64..40, cuts in proptest::collection::vec(0usize..3000, 0..20)) {
            let config = format!("by = \"label\"\ndefault = {{ count = {k} }}");
            let b = input(n);
            let out = run(&mut op(&config), split_into(&b, &cuts));
            let kept = rows(&out.batches);
            for label in [json!("a"), json!("b"), json!("c"), json!(null)] {
                let have = (0..n).filter(|i| {
                    let l = if i % 7 == 6 { json!(null) } else { json!(["a", "b", "c"][(i % 3) as usize]) };
                    l == label
                }).count() as u64;
                let got = kept.as_array().unwrap().iter().filter(|r| r["label"] == label).count() as u64;
                prop_assert_eq!(got, k.min(have));
            }
        }
    }
}
