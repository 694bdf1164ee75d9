//! `hash-bucket`: a stable bucket of a string column, `stable_hash(utf8 bytes) % buckets`.
//!
//! The hash is [`weir_guest::hash::stable_hash`] (FNV-1a, 64-bit), the one the host's
//! native `hash_bucket` operator uses, so moving this work between a stage and the host
//! changes no output. A null input gives a null output.

use std::num::NonZeroU32;

use serde::Deserialize;
use weir_guest::hash;
use weir_guest::{Batch, Column, Featurizer, StageError};

/// The stage's parameters, as JSON in the pipeline spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The `utf8` column to hash. Required.
    input: String,
    /// The number of buckets, from 1 to `i32::MAX` (the output is `int32`). Required.
    buckets: NonZeroU32,
    /// The `int32` column to write, replaced if it exists. Required.
    output: String,
}

/// The running stage.
#[derive(Debug)]
struct HashBucket {
    input: String,
    buckets: NonZeroU32,
    output: String,
}

impl Featurizer for HashBucket {
    fn init(params: &str) -> Result<Self, String> {
        let p: Params = weir_guest::params::parse(params)?;
        if i32::try_from(p.buckets.get()).is_err() {
            return Err(format!(
                "`buckets` must be at most {} (the output is int32), got {}",
                i32::MAX,
                p.buckets
            ));
        }
        Ok(HashBucket {
            input: p.input,
            buckets: p.buckets,
            output: p.output,
        })
    }

    fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
        let keys = input.strs(&self.input)?;
        // A bucket is below `buckets`, which `init` keeps within i32.
        let buckets = keys
            .iter()
            .map(|k| k.map(|k| hash::bucket(k.as_bytes(), self.buckets) as i32));
        let column = Column::i32_opt(&self.output, buckets);
        input.with_column(column)
    }
}

weir_guest::export_featurizer!(HashBucket);

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &str = r#"{"input": "user_id", "buckets": 1024, "output": "user_bucket"}"#;

    #[test]
    fn buckets_are_fnv1a_mod_n_and_nulls_stay_null() {
        let mut stage = HashBucket::init(PARAMS).unwrap();
        let batch = Batch::new(vec![Column::utf8_opt(
            "user_id",
            [Some("u1"), None, Some("")],
        )])
        .unwrap();
        let out = stage.process(batch).unwrap();
        let buckets = out.i32s("user_bucket").unwrap();
        assert_eq!(
            buckets.get(0),
            Some((hash::stable_hash(b"u1") % 1024) as i32)
        );
        assert_eq!(buckets.get(1), None);
        // FNV-1a of "" is the offset basis.
        assert_eq!(buckets.get(2), Some((0xcbf29ce484222325u64 % 1024) as i32));
        assert_eq!(
            out.strs("user_id").unwrap().get(0),
            Some("u1"),
            "input kept"
        );
    }

    #[test]
    fn one_bucket_puts_everything_in_zero() {
        let mut stage = HashBucket::init(r#"{"input": "k", "buckets": 1, "output": "b"}"#).unwrap();
        let out = stage
            .process(Batch::new(vec![Column::utf8("k", ["a", "b", "c"])]).unwrap())
            .unwrap();
        assert_eq!(out.i32s("b").unwrap().values(), &[0, 0, 0]);
    }

    #[test]
    fn a_non_string_input_is_a_stage_error() {
        let mut stage = HashBucket::init(PARAMS).unwrap();
        let err = stage
            .process(Batch::new(vec![Column::i64("user_id", vec![1])]).unwrap())
            .unwrap_err();
        assert_eq!(err.message, "column `user_id` is int64, wanted utf8");
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (
                r#"{"input": "k", "buckets": 0, "output": "b"}"#,
                "`buckets`",
            ),
            (
                r#"{"input": "k", "buckets": -3, "output": "b"}"#,
                "`buckets`",
            ),
            (
                r#"{"input": "k", "buckets": 3000000000, "output": "b"}"#,
                "`buckets` must be at most",
            ),
            (
                r#"{"input": "k", "bucket": 4, "output": "b"}"#,
                "unknown field `bucket`",
            ),
            (
                r#"{"input": "k", "output": "b"}"#,
                "missing field `buckets`",
            ),
        ];
        for (params, want) in cases {
            let err = HashBucket::init(params).unwrap_err();
            assert!(err.contains(want), "{params}: {err} should contain {want}");
        }
    }
}
