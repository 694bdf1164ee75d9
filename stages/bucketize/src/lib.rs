//! `bucketize`: the bucket index of a numeric column among fixed boundaries.
//!
//! Bucket `i` holds the values `v` with `boundaries[i] <= v < boundaries[i + 1]`; the
//! last bucket is open-ended. A null, a NaN, or a value below `boundaries[0]` gets the
//! `fallback` bucket. The output is an `int32` column without nulls, appended to the
//! batch (or replacing a column of the same name); the input column is kept.
//!
//! The column is read once through a typed view and bucketed a column at a time
//! ([`weir_guest::bucket::Boundaries::bucket_column`]): one vectorized pass per
//! boundary.

use serde::Deserialize;
use weir_guest::bucket::Boundaries;
use weir_guest::{Batch, Column, Featurizer, StageError};

/// The stage's parameters, as JSON in the pipeline spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The numeric column to bucketize: `int32`, `int64`, `float32` or `float64`.
    /// Required.
    input: String,
    /// The lower bound of each bucket, in the input's unit: non-empty, finite and
    /// strictly increasing. Required.
    boundaries: Vec<f64>,
    /// The `int32` column to write. Required.
    output: String,
    /// The bucket for a null, a NaN or a value below `boundaries[0]`. Default: -1.
    #[serde(default = "default_fallback")]
    fallback: i32,
}

fn default_fallback() -> i32 {
    -1
}

/// The running stage.
#[derive(Debug)]
struct Bucketize {
    input: String,
    output: String,
    boundaries: Boundaries,
    fallback: i32,
}

impl Featurizer for Bucketize {
    fn init(params: &str) -> Result<Self, String> {
        let p: Params = weir_guest::params::parse(params)?;
        Ok(Bucketize {
            input: p.input,
            output: p.output,
            boundaries: Boundaries::new(p.boundaries).map_err(|e| format!("`boundaries` {e}"))?,
            fallback: p.fallback,
        })
    }

    fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
        let values = input.f64s_lossy(&self.input)?;
        let buckets = self.boundaries.bucket_column(values, self.fallback).buckets;
        input.with_column(Column::i32(&self.output, buckets))
    }
}

weir_guest::export_featurizer!(Bucketize);

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &str =
        r#"{"input": "price", "boundaries": [0, 10, 50, 100, 500], "output": "price_bucket"}"#;

    fn run(params: &str, input: Column) -> Result<Vec<i32>, StageError> {
        let mut stage = Bucketize::init(params).unwrap();
        let out = stage.process(Batch::new(vec![input])?)?;
        Ok(out.i32s("price_bucket")?.values().to_vec())
    }

    #[test]
    fn buckets_are_half_open_and_the_last_is_open_ended() {
        let price = Column::f64_opt(
            "price",
            [
                Some(0.0),
                Some(9.99),
                Some(10.0),
                Some(99.0),
                Some(100.0),
                Some(500.0),
                Some(1e9),
                Some(f64::INFINITY),
            ],
        );
        assert_eq!(run(PARAMS, price).unwrap(), [0, 0, 1, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn null_nan_and_below_range_get_the_fallback() {
        let price = Column::f64_opt(
            "price",
            [
                None,
                Some(f64::NAN),
                Some(-0.01),
                Some(f64::NEG_INFINITY),
                Some(5.0),
            ],
        );
        assert_eq!(run(PARAMS, price.clone()).unwrap(), [-1, -1, -1, -1, 0]);
        let with_fallback = PARAMS.replace('}', r#", "fallback": 99}"#);
        assert_eq!(run(&with_fallback, price).unwrap(), [99, 99, 99, 99, 0]);
    }

    #[test]
    fn any_numeric_input_type() {
        assert_eq!(
            run(PARAMS, Column::i64("price", vec![-5, 10, 600])).unwrap(),
            [-1, 1, 4]
        );
        assert_eq!(
            run(PARAMS, Column::i32_opt("price", [None, Some(50)])).unwrap(),
            [-1, 2]
        );
        assert_eq!(run(PARAMS, Column::f32("price", vec![49.5])).unwrap(), [1]);
    }

    #[test]
    fn keeps_the_input_and_replaces_a_same_named_output() {
        let mut stage = Bucketize::init(PARAMS).unwrap();
        let batch = Batch::new(vec![
            Column::f64("price", vec![12.0]),
            Column::utf8("price_bucket", ["stale"]),
        ])
        .unwrap();
        let out = stage.process(batch).unwrap();
        assert_eq!(out.columns().len(), 2);
        assert_eq!(out.f64s("price").unwrap().get(0), Some(12.0));
        assert_eq!(out.i32s("price_bucket").unwrap().get(0), Some(1));
    }

    #[test]
    fn a_wrong_input_column_is_a_stage_error() {
        let err = run(PARAMS, Column::utf8("price", ["12"])).unwrap_err();
        assert_eq!(
            err.message,
            "column `price` is utf8, wanted a number (int32, int64, float32 or float64)"
        );
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (
                r#"{"input": "p", "boundaries": [], "output": "o"}"#,
                "`boundaries` must not be empty",
            ),
            (
                r#"{"input": "p", "boundaries": [1, 1], "output": "o"}"#,
                "`boundaries` must be strictly increasing",
            ),
            (
                r#"{"input": "p", "boundaries": [2, 1], "output": "o"}"#,
                "`boundaries` must be strictly increasing",
            ),
            (
                r#"{"input": "p", "boundaries": [1, "x"], "output": "o"}"#,
                "`boundaries[1]`",
            ),
            (
                r#"{"input": "p", "boundary": [1], "output": "o"}"#,
                "unknown field `boundary`",
            ),
            (
                r#"{"boundaries": [1], "output": "o"}"#,
                "missing field `input`",
            ),
            (
                r#"{"input": "p", "boundaries": [1], "output": "o", "fallback": "x"}"#,
                "`fallback`",
            ),
        ];
        for (params, want) in cases {
            let err = Bucketize::init(params).unwrap_err();
            assert!(err.contains(want), "{params}: {err} should contain {want}");
        }
    }
}
