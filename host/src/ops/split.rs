//! `[stage.split]`: a deterministic train/validation/test assignment by a hash of
//! a key column, appended as a column.
//!
//! ```toml
//! [stage.split]
//! key = "user_id"            # the column hashed
//! seed = 0                   # default 0
//! output = "split"           # default "split"
//! splits = [{ name = "train", fraction = 0.8 }, { name = "validation", fraction = 0.1 }, { name = "test", fraction = 0.1 }]
//! ```
//!
//! The assignment depends only on `(seed, key)`: FNV-1a 64 over the seed and the
//! key's UTF-8 bytes (non-string keys are cast to strings first), mixed with
//! splitmix64's finalizer and read as a fraction `u` in `[0, 1)`; the row goes to
//! the first split whose cumulative fraction exceeds `u`. So a key lands in the
//! same split on every run, on every machine, in every release, whatever else is
//! in the input — a user's events never straddle train and test. A null key gets a
//! null split. Pick one split downstream with
//! `[stage.filter] all = [{ equals = { column = "split", value = "train" } }]`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use super::{FNV_OFFSET, column, fnv1a, mix, unit};
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::{Emitter, NodeError, Operator};

/// A split stage's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// The key column hashed for the assignment.
    pub key: String,
    /// The seed: another seed gives another assignment. Default: 0.
    #[serde(default)]
    pub seed: u64,
    /// The column the split's name is written to. Default: `split` ([`default_output`]).
    #[serde(default = "default_output")]
    pub output: String,
    /// The splits, in order; fractions in `(0, 1]` summing to 1.
    pub splits: Vec<SplitPart>,
}

/// One split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPart {
    /// Its name, written to the output column.
    pub name: String,
    /// Its share of the keys.
    pub fraction: f64,
}

/// The default output column: `split`.
pub fn default_output() -> String {
    "split".to_owned()
}

/// The running splitter.
pub struct SplitOp {
    key: String,
    seed_state: u64,
    output: String,
    names: Vec<String>,
    /// Cumulative upper bounds; the last is 1 (so rounding never leaves a gap).
    bounds: Vec<f64>,
}

impl SplitOp {
    /// Checks the configuration (`key` is its key path, e.g. `stage[1].split`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    pub fn new(key: &str, spec: &SplitSpec) -> Result<Self, SpecError> {
        if spec.splits.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.splits"),
                "is empty; list at least one split",
            ));
        }
        let mut seen = HashSet::new();
        let mut bounds = Vec::with_capacity(spec.splits.len());
        let mut total = 0.0;
        for (i, s) in spec.splits.iter().enumerate() {
            if s.name.is_empty() || !seen.insert(s.name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{key}.splits[{i}].name"),
                    format!("`{}` is empty or listed twice", s.name),
                ));
            }
            if !(s.fraction > 0.0 && s.fraction <= 1.0) {
                return Err(SpecError::invalid(
                    format!("{key}.splits[{i}].fraction"),
                    format!("is {}; must be within (0, 1]", s.fraction),
                ));
            }
            total += s.fraction;
            bounds.push(total);
        }
        if (total - 1.0).abs() > 1e-9 {
            return Err(SpecError::invalid(
                format!("{key}.splits"),
                format!("fractions add up to {total}, not 1"),
            ));
        }
        *bounds.last_mut().expect("not empty") = 1.0;
        Ok(Self {
            key: spec.key.clone(),
            seed_state: fnv1a(FNV_OFFSET, &spec.seed.to_le_bytes()),
            output: spec.output.clone(),
            names: spec.splits.iter().map(|s| s.name.clone()).collect(),
            bounds,
        })
    }

    /// The split of one key: the same function the operator applies per row.
    pub fn assign(&self, key: &str) -> &str {
        let u = unit(mix(fnv1a(self.seed_state, key.as_bytes())));
        let i = self
            .bounds
            .iter()
            .position(|&b| u < b)
            .unwrap_or(self.bounds.len() - 1);
        &self.names[i]
    }
}

impl Operator for SplitOp {
    /// Learned from the first output batch (the split column is added there).
    fn output_schema(
        &mut self,
        _input: &arrow::datatypes::SchemaRef,
    ) -> Result<Option<arrow::datatypes::SchemaRef>, NodeError> {
        Ok(None)
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        let keys = cast(column(&batch, &self.key, "split")?, &DataType::Utf8)?;
        // Hashing has no Arrow kernel: one pass over the keys.
        let split: StringArray = keys
            .as_string::<i32>()
            .iter()
            .map(|k| k.map(|k| self.assign(k)))
            .collect();
        let schema = batch.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = batch.columns().to_vec();
        let field = Field::new(&self.output, DataType::Utf8, true);
        match schema.index_of(&self.output) {
            Ok(i) => {
                fields[i] = field;
                columns[i] = Arc::new(split);
            }
            Err(_) => {
                fields.push(field);
                columns.push(Arc::new(split));
            }
        }
        let schema = Schema::new(fields).with_metadata(schema.metadata().clone());
        out.push(RecordBatch::try_new(Arc::new(schema), columns)?);
        Ok(())
    }
}

/// Checked by building: [`SplitOp::new`] refuses a bad configuration, naming the key.
impl OperatorConfig for SplitSpec {
    /// Each batch is processed on its own: a failed call can be made again on
    /// part of it.
    fn row_local(&self) -> bool {
        true
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        SplitOp::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(SplitOp::new(cx.key, self)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::ops::testutil::{arc, batch, rows, run};

    fn op(toml: &str) -> SplitOp {
        SplitOp::new("stage[0].split", &toml::from_str(toml).unwrap()).unwrap()
    }

    const CONFIG: &str = r#"key = "user"
splits = [{ name = "train", fraction = 0.8 }, { name = "validation", fraction = 0.1 }, { name = "test", fraction = 0.1 }]"#;

    #[test]
    fn assigns_by_key_hash_and_nulls_to_null() {
        let mut s = op(CONFIG);
        let b = batch(vec![(
            "user",
            arc(StringArray::from(vec![
                Some("u1"),
                None,
                Some("u2"),
                Some("u1"),
            ])),
        )]);
        let out = run(&mut s, vec![b.clone(), b.slice(0, 0)]);
        let (u1, u2) = (s.assign("u1").to_owned(), s.assign("u2").to_owned());
        assert_eq!(
            rows(&out.batches),
            json!([{"user": "u1", "split": u1}, {"user": null, "split": null}, {"user": "u2", "split": u2}, {"user": "u1", "split": u1}])
        );
        // Integer keys hash as their decimal text.
        let mut s2 = op(&CONFIG.replace("user", "id"));
        let out = run(
            &mut s2,
            vec![batch(vec![("id", arc(Int64Array::from(vec![42])))])],
        );
        assert_eq!(
            rows(&out.batches),
            json!([{"id": 42, "split": s.assign("42")}])
        );
    }

    #[test]
    fn shares_follow_the_fractions() {
        let s = op(CONFIG);
        let mut counts = std::collections::HashMap::new();
        for i in 0..100_000 {
            *counts.entry(s.assign(&format!("user-{i}"))).or_insert(0) += 1;
        }
        assert!((79_000..81_000).contains(&counts["train"]), "{counts:?}");
        assert!(
            (9_500..10_500).contains(&counts["validation"]),
            "{counts:?}"
        );
        assert!((9_500..10_500).contains(&counts["test"]), "{counts:?}");
    }

    #[test]
    fn golden_assignments_never_change() {
        // These pin the function across releases and machines: changing them
        // reshuffles every user's training data.
        let s = op(CONFIG);
        let got: Vec<&str> = ["u1", "u11", "u15", "alice", "erin", ""]
            .iter()
            .map(|k| s.assign(k))
            .collect();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [&str; 6] = ["train", "validation", "test", "train", "test", "train"];

    #[test]
    fn config_errors_name_the_key() {
        let bad = |t: &str| match toml::from_str::<SplitSpec>(t) {
            Ok(s) => SplitOp::new("stage[0].split", &s)
                .err()
                .unwrap()
                .to_string(),
            Err(e) => e.message().to_owned(),
        };
        assert_eq!(
            bad(
                "key = \"k\"\nsplits = [{ name = \"a\", fraction = 0.5 }, { name = \"b\", fraction = 0.4 }]"
            ),
            "`stage[0].split.splits`: fractions add up to 0.9, not 1"
        );
        assert_eq!(
            bad(
                "key = \"k\"\nsplits = [{ name = \"a\", fraction = 0.5 }, { name = \"a\", fraction = 0.5 }]"
            ),
            "`stage[0].split.splits[1].name`: `a` is empty or listed twice"
        );
        assert_eq!(
            bad(
                "key = \"k\"\nsplits = [{ name = \"a\", fraction = 0 }, { name = \"b\", fraction = 1 }]"
            ),
            "`stage[0].split.splits[0].fraction`: is 0; must be within (0, 1]"
        );
        assert_eq!(
            bad("key = 3\nsplits = []"),
            "invalid type: integer `3`, expected a string"
        );
    }

    proptest! {
        #[test]
        fn a_key_gets_the_same_split_every_run_and_in_any_company(keys in proptest::collection::vec("[a-z0-9]{0,12}", 1..50), seed in 0u64..100) {
            let config = format!("seed = {seed}\n{CONFIG}");
            let first = op(&config);
            let b = batch(vec![("user", arc(StringArray::from(keys.clone())))]);
            // A fresh operator (another run) over the input in reverse order.
            let mut second = op(&config);
            let rev: Vec<String> = keys.iter().rev().cloned().collect();
            let out = run(&mut second, vec![batch(vec![("user", arc(StringArray::from(rev)))])]);
            let got = rows(&out.batches);
            for (i, k) in keys.iter().rev().enumerate() {
                prop_assert_eq!(got[i]["split"].as_str().unwrap(), first.assign(k));
            }
            let out = run(&mut op(&config), vec![b]);
            let got = rows(&out.batches);
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(got[i]["split"].as_str().unwrap(), first.assign(k));
            }
        }
    }
}
