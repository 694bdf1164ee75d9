//! Typed, borrowed views of one column, for vectorized code.
//!
//! A view is checked once, when it is made (the column's type, and for strings the
//! UTF-8), and is then a pair of slices: reading it costs what reading a slice costs.
//! `values()` hands out the raw slice so a hot loop can run over it without looking at
//! nulls at all, and patch the null rows afterwards if it must.

use crate::bitmap;
use crate::column::{DataType, is_null};

/// A view of a primitive column (`int32`, `int64`, `float32`, `float64`,
/// `timestamp-ms`): its values as a slice plus its validity.
///
/// # Examples
///
/// ```
/// use weir_guest::{Batch, Column};
///
/// let batch = Batch::new(vec![Column::i64_opt("dwell_ms", [Some(10), None, Some(0)])])?;
/// let dwell = batch.i64s("dwell_ms")?;
/// assert_eq!(dwell.len(), 3);
/// assert!(dwell.is_null(1));
/// assert_eq!(dwell.iter().collect::<Vec<_>>(), [Some(10), None, Some(0)]);
///
/// // Vectorized: run over every slot, nulls included, then respect the validity.
/// let doubled: Vec<i64> = dwell.values().iter().map(|v| v * 2).collect();
/// assert_eq!(doubled[2], 0);
/// # Ok::<(), weir_guest::StageError>(())
/// ```
#[derive(Debug)]
pub struct PrimitiveView<'a, T> {
    values: &'a [T],
    validity: Option<&'a [u8]>,
}

// Manual impls: a derive would demand `T: Clone`/`T: Copy` needlessly.
impl<T> Clone for PrimitiveView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PrimitiveView<'_, T> {}

impl<'a, T> PrimitiveView<'a, T> {
    pub(crate) fn new(values: &'a [T], validity: Option<&'a [u8]>) -> Self {
        PrimitiveView { values, validity }
    }
}

impl<'a, T: Copy> PrimitiveView<'a, T> {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Row `i`'s value: `None` when the row is null (or `i` is out of range).
    #[inline]
    pub fn get(&self, i: usize) -> Option<T> {
        let v = *self.values.get(i)?;
        (!is_null(self.validity, i)).then_some(v)
    }

    /// True when row `i` is null; false when it is valid or out of range.
    #[inline]
    pub fn is_null(&self, i: usize) -> bool {
        i < self.values.len() && is_null(self.validity, i)
    }

    /// The number of null rows.
    pub fn null_count(&self) -> usize {
        self.validity
            .map_or(0, |v| bitmap::count_zeros(v, self.values.len()))
    }

    /// The validity bitmap (least significant bit first; a clear bit is a null row),
    /// or `None` when no row is null.
    pub fn validity(&self) -> Option<&'a [u8]> {
        self.validity
    }

    /// Every row's slot, nulls included: a null row's slot holds an unspecified value
    /// (usually zero). The fast path for arithmetic that is harmless on garbage.
    pub fn values(&self) -> &'a [T] {
        self.values
    }

    /// Each row's value, `None` for a null row.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<T>> + DoubleEndedIterator + 'a {
        let validity = self.validity;
        self.values
            .iter()
            .enumerate()
            .map(move |(i, v)| (!is_null(validity, i)).then_some(*v))
    }

    /// Applies `f` to every row's value (`None` for a null row) and collects the
    /// results, in row order. `f` may keep state (count, remember); it is called
    /// exactly once per row.
    ///
    /// A column without nulls runs as a plain loop over the slice; with nulls, the
    /// validity is read a byte (eight rows) at a time.
    pub fn map<U>(&self, f: impl FnMut(Option<T>) -> U) -> Vec<U> {
        map_with_validity(self.values, self.validity, |x| x, f)
    }

    /// Applies `f` to every valid row's value and puts `null` in the null rows: the
    /// vectorizable form of [`map`](Self::map).
    ///
    /// `f` runs over the whole slice, null slots included (their results are then
    /// overwritten), so the loop has no branch on validity and the compiler can turn
    /// it into SIMD. That is why `f` is a `Fn`: it must be cheap and harmless on any
    /// value, because a null row's slot holds an unspecified one.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_guest::{Batch, Column};
    ///
    /// let batch = Batch::new(vec![Column::i64_opt("dwell_ms", [Some(10), None, Some(0)])])?;
    /// let capped = batch.i64s("dwell_ms")?.map_or(-1, |v| v.min(5));
    /// assert_eq!(capped, [5, -1, 0]);
    /// # Ok::<(), weir_guest::StageError>(())
    /// ```
    pub fn map_or<U: Copy>(&self, null: U, f: impl Fn(T) -> U) -> Vec<U> {
        map_or_with_validity(self.values, self.validity, null, |x| x, f)
    }
}

/// `map` over a slice and its validity, with `cast` applied to each value first.
#[inline]
fn map_with_validity<T: Copy, V, U>(
    values: &[T],
    validity: Option<&[u8]>,
    cast: impl Fn(T) -> V,
    mut f: impl FnMut(Option<V>) -> U,
) -> Vec<U> {
    let Some(bits) = validity else {
        return values.iter().map(|&x| f(Some(cast(x)))).collect();
    };
    let mut out = Vec::with_capacity(values.len());
    for (chunk, &byte) in values.chunks(8).zip(bits) {
        if byte == u8::MAX {
            out.extend(chunk.iter().map(|&x| f(Some(cast(x)))));
        } else {
            for (j, &x) in chunk.iter().enumerate() {
                out.push(f((byte >> j & 1 != 0).then(|| cast(x))));
            }
        }
    }
    out
}

/// `map_or` over a slice and its validity, with `cast` applied to each value first.
#[inline]
fn map_or_with_validity<T: Copy, V, U: Copy>(
    values: &[T],
    validity: Option<&[u8]>,
    null: U,
    cast: impl Fn(T) -> V,
    f: impl Fn(V) -> U,
) -> Vec<U> {
    let mut out: Vec<U> = values.iter().map(|&x| f(cast(x))).collect();
    if let Some(bits) = validity {
        bitmap::for_each_zero(bits, out.len(), |i| out[i] = null);
    }
    out
}

/// A view of a boolean column. The values are bit-packed, so there is no slice of
/// `bool` to hand out; read them with [`get`](Self::get) or [`iter`](Self::iter).
#[derive(Clone, Copy, Debug)]
pub struct BoolView<'a> {
    bits: &'a [u8],
    len: usize,
    validity: Option<&'a [u8]>,
}

impl<'a> BoolView<'a> {
    pub(crate) fn new(bits: &'a [u8], len: usize, validity: Option<&'a [u8]>) -> Self {
        BoolView {
            bits,
            len,
            validity,
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `i`'s value: `None` when the row is null (or `i` is out of range).
    #[inline]
    pub fn get(&self, i: usize) -> Option<bool> {
        (i < self.len && !is_null(self.validity, i)).then(|| bitmap::get(self.bits, i))
    }

    /// True when row `i` is null; false when it is valid or out of range.
    pub fn is_null(&self, i: usize) -> bool {
        i < self.len && is_null(self.validity, i)
    }

    /// The number of null rows.
    pub fn null_count(&self) -> usize {
        self.validity
            .map_or(0, |v| bitmap::count_zeros(v, self.len))
    }

    /// Each row's value, `None` for a null row.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<bool>> + DoubleEndedIterator + 'a {
        let view = *self;
        (0..self.len).map(move |i| view.get(i))
    }
}

/// A view of a utf8 column. Its bytes were checked to be UTF-8 when the view was made,
/// so reading a row is two offset loads and a slice.
///
/// # Examples
///
/// ```
/// use weir_guest::{Batch, Column};
///
/// let batch = Batch::new(vec![Column::utf8_opt("user_id", [Some("u1"), None, Some("u3")])])?;
/// let users = batch.strs("user_id")?;
/// assert_eq!(users.get(0), Some("u1"));
/// assert_eq!(users.get(1), None);
/// assert_eq!(users.iter().flatten().collect::<String>(), "u1u3");
/// # Ok::<(), weir_guest::StageError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct StrView<'a> {
    offsets: &'a [i32],
    /// The used part of the byte buffer, `data[offsets[0]..offsets[len]]`.
    text: &'a str,
    /// `offsets[0]`: row offsets are relative to the buffer, `text` starts here.
    base: usize,
    validity: Option<&'a [u8]>,
}

impl<'a> StrView<'a> {
    /// Checks the used bytes once: valid UTF-8, and no offset inside a character.
    /// The column's invariants (monotonic offsets within the buffer) hold already.
    pub(crate) fn new(
        offsets: &'a [i32],
        data: &'a [u8],
        validity: Option<&'a [u8]>,
    ) -> Result<Self, String> {
        let base = offsets[0] as usize;
        let end = offsets[offsets.len() - 1] as usize;
        let text =
            std::str::from_utf8(&data[base..end]).map_err(|e| format!("not valid UTF-8: {e}"))?;
        if let Some(i) = offsets
            .iter()
            .position(|&o| !text.is_char_boundary(o as usize - base))
        {
            return Err(format!(
                "offset {} of row {i} splits a UTF-8 character",
                offsets[i]
            ));
        }
        Ok(StrView {
            offsets,
            text,
            base,
            validity,
        })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`'s string: `None` when the row is null (or `i` is out of range).
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'a str> {
        if i >= self.len() || is_null(self.validity, i) {
            return None;
        }
        let start = self.offsets[i] as usize - self.base;
        let end = self.offsets[i + 1] as usize - self.base;
        // Checked in `new`: both ends are character boundaries within `text`.
        self.text.get(start..end)
    }

    /// True when row `i` is null; false when it is valid or out of range.
    pub fn is_null(&self, i: usize) -> bool {
        i < self.len() && is_null(self.validity, i)
    }

    /// The number of null rows.
    pub fn null_count(&self) -> usize {
        self.validity
            .map_or(0, |v| bitmap::count_zeros(v, self.len()))
    }

    /// Each row's string, `None` for a null row.
    pub fn iter(
        &self,
    ) -> impl ExactSizeIterator<Item = Option<&'a str>> + DoubleEndedIterator + 'a {
        let view = *self;
        (0..self.len()).map(move |i| view.get(i))
    }
}

/// A view of any numeric column read as `f64`, from
/// [`Batch::f64s_lossy`](crate::Batch::f64s_lossy).
///
/// The variants are public so a hot loop can match once and run over the native slice;
/// [`map`](Self::map) does exactly that for you.
///
/// # Examples
///
/// ```
/// use weir_guest::{Batch, Column};
///
/// let batch = Batch::new(vec![Column::i32_opt("qty", [Some(1), None, Some(3)])])?;
/// let qty = batch.f64s_lossy("qty")?;
/// assert_eq!(qty.get(2), Some(3.0));
/// let halves = qty.map(|v| v.map(|x| x / 2.0));
/// assert_eq!(halves, [Some(0.5), None, Some(1.5)]);
/// # Ok::<(), weir_guest::StageError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub enum NumericView<'a> {
    /// An `int32` column.
    Int32(PrimitiveView<'a, i32>),
    /// An `int64` column; values beyond ±2^53 round when read as `f64`.
    Int64(PrimitiveView<'a, i64>),
    /// A `float32` column.
    Float32(PrimitiveView<'a, f32>),
    /// A `float64` column.
    Float64(PrimitiveView<'a, f64>),
}

/// Runs `$body` with `$v` bound to the inner view and `$cast` to its `as f64` conversion.
macro_rules! each_numeric {
    ($view:expr, $v:ident, $cast:ident => $body:expr) => {
        match $view {
            NumericView::Int32($v) => {
                let $cast = |x: i32| f64::from(x);
                $body
            }
            NumericView::Int64($v) => {
                let $cast = |x: i64| x as f64;
                $body
            }
            NumericView::Float32($v) => {
                let $cast = |x: f32| f64::from(x);
                $body
            }
            NumericView::Float64($v) => {
                let $cast = |x: f64| x;
                $body
            }
        }
    };
}

impl<'a> NumericView<'a> {
    /// The column's stored type.
    pub fn data_type(&self) -> DataType {
        match self {
            NumericView::Int32(_) => DataType::Int32,
            NumericView::Int64(_) => DataType::Int64,
            NumericView::Float32(_) => DataType::Float32,
            NumericView::Float64(_) => DataType::Float64,
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        each_numeric!(self, v, _c => v.len())
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`'s value as `f64`: `None` when the row is null (or `i` is out of range).
    #[inline]
    pub fn get(&self, i: usize) -> Option<f64> {
        each_numeric!(self, v, cast => v.get(i).map(cast))
    }

    /// True when row `i` is null; false when it is valid or out of range.
    pub fn is_null(&self, i: usize) -> bool {
        each_numeric!(self, v, _c => v.is_null(i))
    }

    /// The number of null rows.
    pub fn null_count(&self) -> usize {
        each_numeric!(self, v, _c => v.null_count())
    }

    /// Each row's value as `f64`, `None` for a null row.
    ///
    /// The stored type is matched on every step; for a hot loop prefer
    /// [`map`](Self::map), which matches once.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<f64>> + DoubleEndedIterator + 'a {
        let view = *self;
        (0..self.len()).map(move |i| view.get(i))
    }

    /// Applies `f` to every row's value (`None` for a null row) and collects the
    /// results, matching on the stored type once so each arm is a tight loop over the
    /// native slice. `f` is called exactly once per row, in row order.
    pub fn map<T>(&self, f: impl FnMut(Option<f64>) -> T) -> Vec<T> {
        each_numeric!(self, v, cast => map_with_validity(v.values, v.validity, cast, f))
    }

    /// Applies `f` to every valid row's value and puts `null` in the null rows: the
    /// vectorizable form of [`map`](Self::map), matching on the stored type once.
    ///
    /// As with [`PrimitiveView::map_or`], `f` also runs on null slots (their results
    /// are overwritten), so it must be cheap and harmless on any value.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_guest::{Batch, Column};
    ///
    /// let batch = Batch::new(vec![Column::i32_opt("qty", [Some(1), None, Some(3)])])?;
    /// let halves = batch.f64s_lossy("qty")?.map_or(f64::NAN, |x| x / 2.0);
    /// assert_eq!(halves[0], 0.5);
    /// assert!(halves[1].is_nan());
    /// # Ok::<(), weir_guest::StageError>(())
    /// ```
    pub fn map_or<T: Copy>(&self, null: T, f: impl Fn(f64) -> T) -> Vec<T> {
        each_numeric!(self, v, cast => map_or_with_validity(v.values, v.validity, null, cast, &f))
    }
}
