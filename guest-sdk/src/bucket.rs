//! Bucketing a number among fixed boundaries, the most common numeric feature.
//!
//! Bucket `i` holds the values `v` with `boundaries[i] <= v < boundaries[i + 1]`; the
//! last bucket is open-ended. A value below the first boundary, or NaN, has no
//! bucket: the stage decides what it gets (a fallback bucket, a null).
//!
//! A whole column at a time, [`Boundaries::bucket_column`] is the fast path: one
//! vectorized pass over the values per boundary.
//!
//! ```
//! use weir_guest::bucket::Boundaries;
//!
//! let b = Boundaries::new(vec![0.0, 10.0, 50.0])?;
//! assert_eq!(b.bucket(9.99), Some(0));
//! assert_eq!(b.bucket(10.0), Some(1));
//! assert_eq!(b.bucket(1e9), Some(2));
//! assert_eq!(b.bucket(-1.0), None);
//! assert_eq!(b.bucket_or(f64::NAN, -1), -1);
//! # Ok::<(), String>(())
//! ```

use crate::bitmap;
use crate::view::{NumericView, PrimitiveView};

/// Checked bucket boundaries: non-empty, finite, strictly increasing, and few enough
/// that a bucket index fits an `i32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundaries(Vec<f64>);

/// Up to this many boundaries, a branch-free count beats a binary search.
const LINEAR_MAX: usize = 32;

impl Boundaries {
    /// Checks `values`.
    ///
    /// # Errors
    /// A sentence saying what is wrong, without naming the parameter (the stage
    /// knows its name): "must not be empty", "must be finite, found inf", "must be
    /// strictly increasing, found 1 then 1", or too many entries.
    pub fn new(values: Vec<f64>) -> Result<Self, String> {
        if values.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("must be finite, found {v}"));
        }
        if let Some(w) = values.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "must be strictly increasing, found {} then {}",
                w[0], w[1]
            ));
        }
        if i32::try_from(values.len()).is_err() {
            return Err("has more entries than an int32 bucket can index".to_owned());
        }
        Ok(Boundaries(values))
    }

    /// The boundaries, in increasing order.
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    /// How many boundaries are at or below `v`: 0 means below them all (or NaN).
    ///
    /// With the handful of boundaries features use, comparing against every one
    /// costs less than a binary search's unpredictable branches, and a loop over rows
    /// calling it vectorizes. Past 32 boundaries the binary search wins again.
    #[inline]
    fn count_at_or_below(&self, v: f64) -> i32 {
        if self.0.len() <= LINEAR_MAX {
            self.0.iter().map(|&b| i32::from(b <= v)).sum()
        } else {
            // At most `self.0.len()`, which `new` keeps within i32.
            self.0.partition_point(|&b| b <= v) as i32
        }
    }

    /// The bucket of `v`; `None` when `v` is below the first boundary or NaN (NaN
    /// compares false with every boundary).
    #[inline]
    pub fn bucket(&self, v: f64) -> Option<i32> {
        match self.count_at_or_below(v) {
            0 => None,
            k => Some(k - 1),
        }
    }

    /// The bucket of `v`, or `fallback` where [`bucket`](Self::bucket) gives `None`.
    /// Branch-free, for use in [`NumericView::map_or`](crate::NumericView::map_or).
    #[inline]
    pub fn bucket_or(&self, v: f64, fallback: i32) -> i32 {
        let k = self.count_at_or_below(v);
        if k == 0 { fallback } else { k - 1 }
    }
}

/// A bucketed column, from [`Boundaries::bucket_column`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucketed {
    /// Each row's bucket, `fallback` where it has none.
    pub buckets: Vec<i32>,
    /// How many rows got the fallback: nulls, NaNs and values below the first
    /// boundary. Worth a metric: a rise means bad input upstream.
    pub fallbacks: usize,
}

impl Boundaries {
    /// Buckets every row of `column`; a null, a NaN or a value below the first
    /// boundary gets `fallback`.
    ///
    /// Column at a time: with up to 32 boundaries it makes one pass over the values
    /// per boundary, counting the boundaries at or below each value (a compare and an
    /// add per element, which the compiler turns into SIMD with `+simd128`), then one
    /// pass turning counts into buckets. More boundaries fall back to a binary search
    /// per row.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_guest::bucket::Boundaries;
    /// use weir_guest::{Batch, Column};
    ///
    /// let batch = Batch::new(vec![Column::f64_opt("price", [Some(5.0), None, Some(-1.0), Some(70.0)])])?;
    /// let b = Boundaries::new(vec![0.0, 10.0, 50.0]).map_err(weir_guest::StageError::new)?;
    /// let out = b.bucket_column(batch.f64s_lossy("price")?, -1);
    /// assert_eq!(out.buckets, [0, -1, -1, 2]);
    /// assert_eq!(out.fallbacks, 2);
    /// # Ok::<(), weir_guest::StageError>(())
    /// ```
    pub fn bucket_column(&self, column: NumericView<'_>, fallback: i32) -> Bucketed {
        let (mut counts, validity) = match column {
            NumericView::Int32(v) => (self.counts(v, f64::from), v.validity()),
            NumericView::Int64(v) => (self.counts(v, |x| x as f64), v.validity()),
            NumericView::Float32(v) => (self.counts(v, f64::from), v.validity()),
            NumericView::Float64(v) => (self.counts_f64(v.values()), v.validity()),
        };
        if let Some(bits) = validity {
            bitmap::for_each_zero(bits, counts.len(), |i| counts[i] = 0);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        let (done, mut fallbacks) = simd::counts_to_buckets(&mut counts, fallback);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        let (done, mut fallbacks) = (0, 0);
        fallbacks += counts_to_buckets(&mut counts[done..], fallback);
        Bucketed {
            buckets: counts,
            fallbacks,
        }
    }

    /// [`counts`](Self::counts) of a `float64` column, with SIMD where there is.
    fn counts_f64(&self, values: &[f64]) -> Vec<i32> {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if self.0.len() <= LINEAR_MAX {
            let mut counts = vec![0i32; values.len()];
            let done = simd::add_counts(&self.0, values, &mut counts);
            for &b in &self.0 {
                for (k, &v) in counts[done..].iter_mut().zip(&values[done..]) {
                    *k += i32::from(b <= v);
                }
            }
            return counts;
        }
        self.counts(PrimitiveView::new(values, None), |x| x)
    }

    /// Per value, how many boundaries are at or below it (null slots included).
    fn counts<T: Copy>(&self, column: PrimitiveView<'_, T>, cast: impl Fn(T) -> f64) -> Vec<i32> {
        let values = column.values();
        if self.0.len() > LINEAR_MAX {
            return values
                .iter()
                .map(|&v| self.count_at_or_below(cast(v)))
                .collect();
        }
        let mut counts = vec![0i32; values.len()];
        for &b in &self.0 {
            for (k, &v) in counts.iter_mut().zip(values) {
                *k += i32::from(b <= cast(v));
            }
        }
        counts
    }
}

/// Counts to buckets, `fallback` for a count of 0; returns how many got it.
fn counts_to_buckets(counts: &mut [i32], fallback: i32) -> usize {
    let mut fallbacks = 0;
    for k in counts {
        fallbacks += usize::from(*k == 0);
        *k = if *k == 0 { fallback } else { *k - 1 };
    }
    fallbacks
}

/// The column loops written with wasm's 128-bit SIMD, sixteen rows per iteration.
///
/// Inside the sandbox every loop back-edge carries the host's fuel and deadline
/// checks, and a value live across one is spilled around it. Left to itself the
/// compiler emits a loop of two rows per iteration, so the checks cost more than the
/// comparisons (about 3× the loop's time, measured); sixteen rows per iteration
/// makes them cheap. Other targets use the portable loops, which compilers vectorize
/// well where nothing interrupts them.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::{
        f64x2_le, f64x2_splat, i32x4_eq, i32x4_extract_lane, i32x4_shuffle, i32x4_splat, i32x4_sub,
        v128, v128_bitselect, v128_load, v128_store,
    };

    /// Rows per iteration.
    pub(super) const ROWS: usize = 16;

    /// `counts[i] += 1` for every boundary at or below `values[i]`, for the rows of
    /// whole chunks; returns how many rows that covered.
    pub(super) fn add_counts(boundaries: &[f64], values: &[f64], counts: &mut [i32]) -> usize {
        let rows = values.len().min(counts.len()) / ROWS * ROWS;
        // Two boundaries per pass: each value is loaded, and each count loaded and
        // stored, half as often. A missing second boundary is NaN, which no value
        // is at or above.
        for pair in boundaries.chunks(2) {
            let b0 = f64x2_splat(pair[0]);
            let b1 = f64x2_splat(pair.get(1).copied().unwrap_or(f64::NAN));
            for (v, k) in values[..rows]
                .chunks_exact(ROWS)
                .zip(counts[..rows].chunks_exact_mut(ROWS))
            {
                // SAFETY: `v` holds 16 f64 (eight v128) and `k` 16 i32 (four v128),
                // both in bounds; wasm loads and stores need no alignment.
                unsafe {
                    let v = v.as_ptr().cast::<v128>();
                    let k = k.as_mut_ptr().cast::<v128>();
                    for q in 0..4 {
                        let (lo, hi) = (v128_load(v.add(2 * q)), v128_load(v.add(2 * q + 1)));
                        // A comparison gives 0 or -1 per 64-bit lane; the low halves
                        // of two of them make four 32-bit lanes to subtract (+1).
                        let ones0 = i32x4_shuffle::<0, 2, 4, 6>(f64x2_le(b0, lo), f64x2_le(b0, hi));
                        let ones1 = i32x4_shuffle::<0, 2, 4, 6>(f64x2_le(b1, lo), f64x2_le(b1, hi));
                        let k_q = v128_load(k.add(q));
                        v128_store(k.add(q), i32x4_sub(i32x4_sub(k_q, ones0), ones1));
                    }
                }
            }
        }
        rows
    }

    /// [`super::counts_to_buckets`] for the rows of whole chunks; returns the rows
    /// covered and how many of them got the fallback.
    pub(super) fn counts_to_buckets(counts: &mut [i32], fallback: i32) -> (usize, usize) {
        let rows = counts.len() / ROWS * ROWS;
        let (zero, one, fallback) = (i32x4_splat(0), i32x4_splat(1), i32x4_splat(fallback));
        let mut none = i32x4_splat(0);
        for k in counts[..rows].chunks_exact_mut(ROWS) {
            // SAFETY: `k` holds 16 i32 (four v128), in bounds; no alignment needed.
            unsafe {
                let k = k.as_mut_ptr().cast::<v128>();
                for q in 0..4 {
                    let x = v128_load(k.add(q));
                    let is_zero = i32x4_eq(x, zero);
                    none = i32x4_sub(none, is_zero);
                    v128_store(
                        k.add(q),
                        v128_bitselect(fallback, i32x4_sub(x, one), is_zero),
                    );
                }
            }
        }
        let lanes = [
            i32x4_extract_lane::<0>(none),
            i32x4_extract_lane::<1>(none),
            i32x4_extract_lane::<2>(none),
            i32x4_extract_lane::<3>(none),
        ];
        (rows, lanes.iter().map(|&n| n as usize).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_half_open_and_the_last_is_open_ended() {
        let b = Boundaries::new(vec![0.0, 10.0, 50.0, 100.0, 500.0]).unwrap();
        let got: Vec<_> = [0.0, 9.99, 10.0, 99.0, 100.0, 500.0, 1e9, f64::INFINITY]
            .iter()
            .map(|&v| b.bucket(v))
            .collect();
        assert_eq!(got, [0, 0, 1, 2, 3, 4, 4, 4].map(Some));
        for v in [-0.01, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(b.bucket(v), None, "{v}");
            assert_eq!(b.bucket_or(v, 7), 7, "{v}");
        }
    }

    #[test]
    fn the_count_and_the_binary_search_agree() {
        // 40 boundaries takes the binary search; each prefix of up to 32 the count.
        let all: Vec<f64> = (0..40).map(|i| f64::from(i) * 2.5).collect();
        for n in [1, 2, 5, 32, 33, 40] {
            let b = Boundaries::new(all[..n].to_vec()).unwrap();
            for i in -2..110 {
                let v = f64::from(i);
                let want = all[..n].iter().filter(|&&x| x <= v).count() as i32 - 1;
                assert_eq!(b.bucket_or(v, -1), want, "{n} boundaries, v = {v}");
            }
        }
    }

    #[test]
    fn a_column_at_a_time_equals_row_at_a_time() {
        use crate::Column;
        let prices: Vec<Option<f64>> = (0..1000)
            .map(|i| match i % 13 {
                0 => None,
                1 => Some(f64::NAN),
                2 => Some(-3.0),
                _ => Some(f64::from(i) * 0.61),
            })
            .collect();
        for boundaries in [
            vec![0.0, 10.0, 50.0, 100.0, 500.0],
            (0..40).map(|i| f64::from(i) * 15.0).collect(),
        ] {
            let b = Boundaries::new(boundaries).unwrap();
            let column = Column::f64_opt("price", prices.iter().copied());
            let out = b.bucket_column(column.f64s_lossy().unwrap(), -9);
            let want: Vec<i32> = prices
                .iter()
                .map(|p| p.map_or(-9, |p| b.bucket_or(p, -9)))
                .collect();
            assert_eq!(out.buckets, want);
            assert_eq!(out.fallbacks, want.iter().filter(|&&k| k == -9).count());
            // Integer columns take the same path through the cast.
            let ints = Column::i64_opt(
                "n",
                prices
                    .iter()
                    .map(|p| p.filter(|p| !p.is_nan()).map(|p| p as i64)),
            );
            let out = b.bucket_column(ints.f64s_lossy().unwrap(), -9);
            let want: Vec<i32> = ints
                .i64s()
                .unwrap()
                .iter()
                .map(|p| p.map_or(-9, |p| b.bucket_or(p as f64, -9)))
                .collect();
            assert_eq!(out.buckets, want);
        }
    }

    #[test]
    fn bad_boundaries_say_why() {
        let err = |v: Vec<f64>| Boundaries::new(v).unwrap_err();
        assert_eq!(err(vec![]), "must not be empty");
        assert_eq!(err(vec![1.0, f64::INFINITY]), "must be finite, found inf");
        assert_eq!(
            err(vec![1.0, 1.0]),
            "must be strictly increasing, found 1 then 1"
        );
        assert_eq!(
            err(vec![2.0, 1.0]),
            "must be strictly increasing, found 2 then 1"
        );
    }
}
