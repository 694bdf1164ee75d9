//! `clickstream-features`: the per-event features of the clickstream reference workload.
//!
//! Appends two columns to each batch of click events:
//!
//! - `price_bucket` (`int32`, no nulls): the index of `price` among `price_boundaries`
//!   (bucket `i` is `[b[i], b[i+1])`, the last open-ended); a null price, a NaN or a
//!   price below the first boundary gets `fallback_bucket`.
//! - `dwell_log` (`float64`): `ln(1 + dwell_ms)`, computed with `f64::ln_1p` for
//!   accuracy near zero; null where `dwell_ms` is null.
//!
//! Each batch adds the number of prices that got the fallback bucket to the stage's
//! counter `price_fallbacks`.
//!
//! With `max_dwell_ms` set, an event whose `dwell_ms` exceeds it is refused: the call
//! fails naming the first such row (`dwell_ms 93000 above max_dwell_ms 90000`), so the
//! node's `on_error` policy decides what becomes of it. Without it no row is refused.
//!
//! Both are computed column at a time: each input column is looked up once and read as
//! a slice.

use serde::Deserialize;
use weir_guest::bucket::Boundaries;
use weir_guest::{Batch, Column, Featurizer, StageError, metrics};

/// The input column with the event's price (any numeric type, nullable).
const PRICE: &str = "price";
/// The input column with the dwell time in milliseconds (any numeric type).
const DWELL_MS: &str = "dwell_ms";
/// The output column with the price's bucket.
const PRICE_BUCKET: &str = "price_bucket";
/// The output column with `ln(1 + dwell_ms)`.
const DWELL_LOG: &str = "dwell_log";
/// The counter of prices that got the fallback bucket (null, NaN or below range), so
/// a rise in bad prices shows on the stage's metrics.
const FALLBACK_COUNTER: &str = "price_fallbacks";

/// The stage's parameters, as JSON in the pipeline spec; `{}` takes every default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The lower bound of each price bucket, in the price's currency unit: non-empty,
    /// finite, strictly increasing. Default: `[0, 10, 50, 100, 500]`.
    #[serde(default = "default_price_boundaries")]
    price_boundaries: Vec<f64>,
    /// The bucket for a null, NaN or below-range price. Default: -1.
    #[serde(default = "default_fallback_bucket")]
    fallback_bucket: i32,
    /// The longest credible dwell time: a longer one is refused as a row error
    /// (a tab left open is not engagement). Default: none, every row is taken.
    #[serde(default)]
    max_dwell_ms: Option<f64>,
}

fn default_price_boundaries() -> Vec<f64> {
    vec![0.0, 10.0, 50.0, 100.0, 500.0]
}

fn default_fallback_bucket() -> i32 {
    -1
}

/// The running stage.
#[derive(Debug)]
struct ClickstreamFeatures {
    boundaries: Boundaries,
    fallback: i32,
    max_dwell_ms: Option<f64>,
}

impl Featurizer for ClickstreamFeatures {
    fn init(params: &str) -> Result<Self, String> {
        let p: Params = weir_guest::params::parse(params)?;
        Ok(ClickstreamFeatures {
            boundaries: Boundaries::new(p.price_boundaries)
                .map_err(|e| format!("`price_boundaries` {e}"))?,
            fallback: p.fallback_bucket,
            max_dwell_ms: p.max_dwell_ms,
        })
    }

    fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
        if let Some(max) = self.max_dwell_ms {
            let dwell = input.f64s_lossy(DWELL_MS)?;
            if let Some((row, ms)) = (0..dwell.len())
                .filter_map(|i| dwell.get(i).map(|d| (i, d)))
                .find(|(_, d)| *d > max)
            {
                return Err(
                    StageError::new(format!("dwell_ms {ms} above max_dwell_ms {max}")).at_row(row),
                );
            }
        }
        let price = input.f64s_lossy(PRICE)?;
        let bucketed = self.boundaries.bucket_column(price, self.fallback);
        if bucketed.fallbacks > 0 {
            metrics::counter_add(FALLBACK_COUNTER, bucketed.fallbacks as u64);
        }

        let dwell = input.f64s_lossy(DWELL_MS)?;
        // Without nulls (the usual case) skip building a validity bitmap.
        let dwell_log = if dwell.null_count() == 0 {
            Column::f64(DWELL_LOG, dwell.map_or(f64::NAN, f64::ln_1p))
        } else {
            Column::f64_opt(DWELL_LOG, dwell.map(|d| d.map(f64::ln_1p)))
        };

        input
            .with_column(Column::i32(PRICE_BUCKET, bucketed.buckets))?
            .with_column(dwell_log)
    }
}

weir_guest::export_featurizer!(ClickstreamFeatures);

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Batch {
        Batch::new(vec![
            Column::utf8("user_id", ["u1", "u1", "u2", "u3", "u4"]),
            Column::f64_opt(
                PRICE,
                [Some(5.0), None, Some(75.5), Some(500.0), Some(10.0)],
            ),
            Column::i64(DWELL_MS, vec![0, 1, 999, 12_000, 3]),
        ])
        .unwrap()
    }

    #[test]
    fn appends_price_bucket_and_dwell_log() {
        let mut stage = ClickstreamFeatures::init("{}").unwrap();
        let out = stage.process(events()).unwrap();
        let names: Vec<_> = out.columns().iter().map(Column::name).collect();
        assert_eq!(names, ["user_id", PRICE, DWELL_MS, PRICE_BUCKET, DWELL_LOG]);

        let buckets = out.i32s(PRICE_BUCKET).unwrap();
        assert_eq!(buckets.values(), &[0, -1, 2, 4, 1]);
        assert_eq!(buckets.null_count(), 0);

        let logs = out.f64s(DWELL_LOG).unwrap();
        assert_eq!(logs.null_count(), 0);
        for (got, ms) in logs
            .values()
            .iter()
            .zip([0.0f64, 1.0, 999.0, 12_000.0, 3.0])
        {
            assert_eq!(*got, ms.ln_1p());
            assert!(
                (got - (1.0 + ms).ln()).abs() < 1e-12,
                "{got} vs ln(1 + {ms})"
            );
        }
    }

    #[test]
    fn null_dwell_gives_null_dwell_log_and_params_apply() {
        let mut stage =
            ClickstreamFeatures::init(r#"{"price_boundaries": [100], "fallback_bucket": 7}"#)
                .unwrap();
        let batch = Batch::new(vec![
            Column::f64_opt(PRICE, [Some(99.0), Some(100.0)]),
            Column::i32_opt(DWELL_MS, [None, Some(0)]),
        ])
        .unwrap();
        let out = stage.process(batch).unwrap();
        assert_eq!(out.i32s(PRICE_BUCKET).unwrap().values(), &[7, 0]);
        let logs = out.f64s(DWELL_LOG).unwrap();
        assert_eq!(logs.iter().collect::<Vec<_>>(), [None, Some(0.0)]);
    }

    #[test]
    fn a_dwell_above_the_maximum_is_refused_naming_its_row() {
        let mut stage = ClickstreamFeatures::init(r#"{"max_dwell_ms": 1000}"#).unwrap();
        let err = stage.process(events()).unwrap_err();
        assert_eq!(err.row, Some(3), "{err}");
        assert!(err.message.contains("dwell_ms 12000 above max_dwell_ms 1000"), "{err}");
        let mut lenient = ClickstreamFeatures::init(r#"{"max_dwell_ms": 12000}"#).unwrap();
        assert_eq!(lenient.process(events()).unwrap().num_rows(), 5);
    }

    #[test]
    fn a_missing_input_column_is_named() {
        let mut stage = ClickstreamFeatures::init("{}").unwrap();
        let err = stage
            .process(Batch::new(vec![Column::f64(PRICE, vec![1.0])]).unwrap())
            .unwrap_err();
        assert!(err.message.contains("no column named `dwell_ms`"), "{err}");
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (
                r#"{"price_boundaries": []}"#,
                "`price_boundaries` must not be empty",
            ),
            (r#"{"price_boundaries": [0, 0]}"#, "strictly increasing"),
            (
                r#"{"price_boundary": [0]}"#,
                "unknown field `price_boundary`",
            ),
            (r#"{"fallback_bucket": 1.5}"#, "`fallback_bucket`"),
        ];
        for (params, want) in cases {
            let err = ClickstreamFeatures::init(params).unwrap_err();
            assert!(err.contains(want), "{params}: {err} should contain {want}");
        }
    }
}
