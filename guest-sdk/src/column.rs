//! One named column: its values laid out as Arrow lays them out, plus a validity bitmap.
//!
//! A `Column` owns exactly the vectors that crossed the boundary (or will cross it), so
//! converting from and to the WIT types moves them and copies nothing. Its invariants are
//! checked once, when it is built or received, so the typed views never need to check
//! lengths again and never panic on a well-formed index:
//!
//! - a typed value list has exactly `len` entries; a boolean bitmap at least `len` bits;
//! - a validity bitmap, when present, has at least `len` bits (set = valid);
//! - utf8 offsets have `len + 1` entries, are non-negative, never decrease, and end
//!   within the byte buffer.

use std::fmt;

use crate::StageError;
use crate::bitmap;
use crate::view::{BoolView, NumericView, PrimitiveView, StrView};

/// The type of a column's values: one per case of the WIT `column-values` variant.
///
/// Marked non-exhaustive because a later version of the contract may carry more Arrow
/// types; a stage that matches on it keeps compiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// Booleans, bit-packed (Arrow `Boolean`).
    Boolean,
    /// 32-bit signed integers (Arrow `Int32`).
    Int32,
    /// 64-bit signed integers (Arrow `Int64`).
    Int64,
    /// 32-bit floats (Arrow `Float32`).
    Float32,
    /// 64-bit floats (Arrow `Float64`).
    Float64,
    /// UTF-8 strings with 32-bit offsets (Arrow `Utf8`).
    Utf8,
    /// Milliseconds since the Unix epoch (Arrow `Timestamp(Millisecond, None)`).
    TimestampMs,
}

impl DataType {
    /// The name the WIT contract uses for this type, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Boolean => "boolean",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::Utf8 => "utf8",
            DataType::TimestampMs => "timestamp-ms",
        }
    }

    /// True for the types [`Batch::f64s_lossy`](crate::Batch::f64s_lossy) accepts.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            DataType::Int32 | DataType::Int64 | DataType::Float32 | DataType::Float64
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A column's values, one case per WIT `column-values` case.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Values {
    Boolean(Vec<u8>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Utf8 { offsets: Vec<i32>, data: Vec<u8> },
    TimestampMs(Vec<i64>),
}

impl Values {
    fn data_type(&self) -> DataType {
        match self {
            Values::Boolean(_) => DataType::Boolean,
            Values::Int32(_) => DataType::Int32,
            Values::Int64(_) => DataType::Int64,
            Values::Float32(_) => DataType::Float32,
            Values::Float64(_) => DataType::Float64,
            Values::Utf8 { .. } => DataType::Utf8,
            Values::TimestampMs(_) => DataType::TimestampMs,
        }
    }
}

/// One named column of a [`Batch`](crate::Batch).
///
/// Build one with the typed constructors ([`Column::f64`], [`Column::utf8_opt`], …) and
/// add it with [`Batch::with_column`](crate::Batch::with_column); read one through the
/// typed views ([`Column::f64s`], [`Column::strs`], …), usually reached through the
/// batch ([`Batch::f64s`](crate::Batch::f64s)).
///
/// # Examples
///
/// ```
/// use weir_guest::{Column, DataType};
///
/// let price = Column::f64_opt("price", [Some(9.5), None, Some(120.0)]);
/// assert_eq!(price.name(), "price");
/// assert_eq!(price.data_type(), DataType::Float64);
/// assert_eq!(price.len(), 3);
/// assert_eq!(price.null_count(), 1);
///
/// let view = price.f64s()?;
/// assert_eq!(view.get(0), Some(9.5));
/// assert_eq!(view.get(1), None);
/// # Ok::<(), weir_guest::StageError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    name: String,
    len: usize,
    values: Values,
    validity: Option<Vec<u8>>,
}

macro_rules! primitive_builders {
    ($($ty:ty, $variant:ident, $plain:ident, $opt:ident, $what:literal;)*) => {$(
        #[doc = concat!("A column of ", $what, " without nulls, taking ownership of `values`")]
        #[doc = "(no copy)."]
        pub fn $plain(name: impl Into<String>, values: Vec<$ty>) -> Column {
            Column {
                name: name.into(),
                len: values.len(),
                values: Values::$variant(values),
                validity: None,
            }
        }

        #[doc = concat!("A column of ", $what, " with nulls: `None` rows are null.")]
        #[doc = ""]
        #[doc = "When no row is `None` the column carries no validity bitmap at all."]
        pub fn $opt(
            name: impl Into<String>,
            values: impl IntoIterator<Item = Option<$ty>>,
        ) -> Column {
            let (values, validity) = collect_opt(values);
            Column {
                name: name.into(),
                len: values.len(),
                values: Values::$variant(values),
                validity,
            }
        }
    )*};
}

impl Column {
    primitive_builders! {
        f64, Float64, f64, f64_opt, "64-bit floats (`float64`)";
        f32, Float32, f32, f32_opt, "32-bit floats (`float32`)";
        i64, Int64, i64, i64_opt, "64-bit integers (`int64`)";
        i32, Int32, i32, i32_opt, "32-bit integers (`int32`)";
        i64, TimestampMs, timestamp_ms, timestamp_ms_opt,
            "timestamps in milliseconds since the Unix epoch (`timestamp-ms`)";
    }

    /// A boolean column without nulls; the values are bit-packed as Arrow packs them.
    pub fn bool(name: impl Into<String>, values: impl IntoIterator<Item = bool>) -> Column {
        let values = values.into_iter();
        let mut bits = bitmap::Builder::with_capacity(values.size_hint().0);
        let mut len = 0;
        for v in values {
            bits.push(v);
            len += 1;
        }
        Column {
            name: name.into(),
            len,
            values: Values::Boolean(bits.finish()),
            validity: None,
        }
    }

    /// A boolean column with nulls: `None` rows are null.
    pub fn bool_opt(
        name: impl Into<String>,
        values: impl IntoIterator<Item = Option<bool>>,
    ) -> Column {
        let values = values.into_iter();
        let hint = values.size_hint().0;
        let mut bits = bitmap::Builder::with_capacity(hint);
        let mut valid = bitmap::Builder::with_capacity(hint);
        let mut len = 0;
        for v in values {
            bits.push(v.unwrap_or(false));
            valid.push(v.is_some());
            len += 1;
        }
        Column {
            name: name.into(),
            len,
            values: Values::Boolean(bits.finish()),
            validity: valid.finish_validity(),
        }
    }

    /// A utf8 column without nulls. The strings are copied into one byte buffer plus
    /// offsets, the layout that crosses the boundary in one copy.
    ///
    /// # Panics
    ///
    /// If the strings add up to more than `i32::MAX` bytes, which 32-bit offsets cannot
    /// address (the host's per-call byte cap refuses far less than that anyway).
    pub fn utf8<S: AsRef<str>>(
        name: impl Into<String>,
        values: impl IntoIterator<Item = S>,
    ) -> Column {
        Column::utf8_opt(name, values.into_iter().map(Some))
    }

    /// A utf8 column with nulls: `None` rows are null.
    ///
    /// # Panics
    ///
    /// If the strings add up to more than `i32::MAX` bytes, as for [`Column::utf8`].
    pub fn utf8_opt<S: AsRef<str>>(
        name: impl Into<String>,
        values: impl IntoIterator<Item = Option<S>>,
    ) -> Column {
        let values = values.into_iter();
        let hint = values.size_hint().0;
        let mut offsets = Vec::with_capacity(hint + 1);
        offsets.push(0i32);
        let mut data = Vec::new();
        let mut valid = bitmap::Builder::with_capacity(hint);
        for v in values {
            if let Some(s) = &v {
                data.extend_from_slice(s.as_ref().as_bytes());
            }
            valid.push(v.is_some());
            let end = i32::try_from(data.len())
                .expect("a utf8 column holds at most i32::MAX bytes (32-bit offsets)");
            offsets.push(end);
        }
        Column {
            name: name.into(),
            len: offsets.len() - 1,
            values: Values::Utf8 { offsets, data },
            validity: valid.finish_validity(),
        }
    }

    /// Builds a column from received parts, checking the invariants the views rely on.
    #[cfg_attr(not(feature = "featurizer"), allow(dead_code))]
    pub(crate) fn from_parts(
        name: String,
        len: usize,
        values: Values,
        validity: Option<Vec<u8>>,
    ) -> Result<Column, StageError> {
        let bad = |why: String| Err(StageError::new(format!("column `{name}`: {why}")));
        let found = match &values {
            Values::Int32(v) => v.len(),
            Values::Int64(v) | Values::TimestampMs(v) => v.len(),
            Values::Float32(v) => v.len(),
            Values::Float64(v) => v.len(),
            Values::Boolean(bits) => {
                if bits.len() < bitmap::bytes_for(len) {
                    return bad(format!(
                        "{} bitmap bytes cannot hold {len} booleans",
                        bits.len()
                    ));
                }
                len
            }
            Values::Utf8 { offsets, data } => {
                if offsets.len() != len + 1 {
                    return bad(format!(
                        "{} utf8 offsets for {len} rows (wanted {})",
                        offsets.len(),
                        len + 1
                    ));
                }
                if offsets[0] < 0 || decreasing(offsets) {
                    return bad("utf8 offsets are negative or decreasing".to_owned());
                }
                let last = offsets[len] as usize;
                if last > data.len() {
                    return bad(format!(
                        "utf8 offsets end at {last}, past the {}-byte buffer",
                        data.len()
                    ));
                }
                len
            }
        };
        if found != len {
            return bad(format!("{found} values for {len} rows"));
        }
        if let Some(v) = &validity
            && v.len() < bitmap::bytes_for(len)
        {
            return bad(format!("{} validity bytes cannot hold {len} rows", v.len()));
        }
        Ok(Column {
            name,
            len,
            values,
            validity,
        })
    }

    pub(crate) fn into_parts(self) -> (String, Values, Option<Vec<u8>>) {
        (self.name, self.values, self.validity)
    }

    /// The column's name, unique within its batch.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The type of the column's values.
    pub fn data_type(&self) -> DataType {
        self.values.data_type()
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of null rows (a popcount over the validity bitmap; zero without one).
    pub fn null_count(&self) -> usize {
        self.validity
            .as_deref()
            .map_or(0, |v| bitmap::count_zeros(v, self.len))
    }

    /// True when row `i` is null; false when it is valid or out of range.
    pub fn is_null(&self, i: usize) -> bool {
        i < self.len && is_null(self.validity.as_deref(), i)
    }

    fn mismatch(&self, wanted: &str) -> StageError {
        StageError::new(format!(
            "column `{}` is {}, wanted {wanted}",
            self.name,
            self.data_type()
        ))
    }

    /// The values as `float64`.
    ///
    /// # Errors
    ///
    /// If the column is of another type; the message names the column and both types.
    /// [`Column::f64s_lossy`] accepts any numeric type.
    pub fn f64s(&self) -> Result<PrimitiveView<'_, f64>, StageError> {
        match &self.values {
            Values::Float64(v) => Ok(self.primitive(v)),
            _ => Err(self.mismatch("float64")),
        }
    }

    /// The values as `float32`.
    ///
    /// # Errors
    ///
    /// If the column is of another type.
    pub fn f32s(&self) -> Result<PrimitiveView<'_, f32>, StageError> {
        match &self.values {
            Values::Float32(v) => Ok(self.primitive(v)),
            _ => Err(self.mismatch("float32")),
        }
    }

    /// The values as `int64`.
    ///
    /// # Errors
    ///
    /// If the column is of another type (a `timestamp-ms` column included: read it
    /// with [`Column::timestamps_ms`]).
    pub fn i64s(&self) -> Result<PrimitiveView<'_, i64>, StageError> {
        match &self.values {
            Values::Int64(v) => Ok(self.primitive(v)),
            _ => Err(self.mismatch("int64")),
        }
    }

    /// The values as `int32`.
    ///
    /// # Errors
    ///
    /// If the column is of another type.
    pub fn i32s(&self) -> Result<PrimitiveView<'_, i32>, StageError> {
        match &self.values {
            Values::Int32(v) => Ok(self.primitive(v)),
            _ => Err(self.mismatch("int32")),
        }
    }

    /// The values as `timestamp-ms`: milliseconds since the Unix epoch.
    ///
    /// # Errors
    ///
    /// If the column is of another type.
    pub fn timestamps_ms(&self) -> Result<PrimitiveView<'_, i64>, StageError> {
        match &self.values {
            Values::TimestampMs(v) => Ok(self.primitive(v)),
            _ => Err(self.mismatch("timestamp-ms")),
        }
    }

    /// The values as booleans.
    ///
    /// # Errors
    ///
    /// If the column is of another type.
    pub fn bools(&self) -> Result<BoolView<'_>, StageError> {
        match &self.values {
            Values::Boolean(bits) => Ok(BoolView::new(bits, self.len, self.validity.as_deref())),
            _ => Err(self.mismatch("boolean")),
        }
    }

    /// The values as strings. The byte buffer is checked to be UTF-8 here, once, so
    /// reading a row afterwards costs no validation.
    ///
    /// # Errors
    ///
    /// If the column is of another type, or its bytes are not valid UTF-8 (or an
    /// offset splits a character).
    pub fn strs(&self) -> Result<StrView<'_>, StageError> {
        match &self.values {
            Values::Utf8 { offsets, data } => StrView::new(offsets, data, self.validity.as_deref())
                .map_err(|why| StageError::new(format!("column `{}`: {why}", self.name))),
            _ => Err(self.mismatch("utf8")),
        }
    }

    /// The values of any numeric column (`int32`, `int64`, `float32`, `float64`) read as
    /// `f64`, for featurizers that do not care how a number was stored. Integers beyond
    /// ±2^53 lose precision, hence "lossy".
    ///
    /// # Errors
    ///
    /// If the column is not numeric.
    pub fn f64s_lossy(&self) -> Result<NumericView<'_>, StageError> {
        Ok(match &self.values {
            Values::Int32(v) => NumericView::Int32(self.primitive(v)),
            Values::Int64(v) => NumericView::Int64(self.primitive(v)),
            Values::Float32(v) => NumericView::Float32(self.primitive(v)),
            Values::Float64(v) => NumericView::Float64(self.primitive(v)),
            _ => return Err(self.mismatch("a number (int32, int64, float32 or float64)")),
        })
    }

    fn primitive<'a, T>(&'a self, values: &'a [T]) -> PrimitiveView<'a, T> {
        PrimitiveView::new(values, self.validity.as_deref())
    }

    // Single-row reads for the row view. They skip building a whole view: a `strs()`
    // per row would validate the whole buffer once per row.

    pub(crate) fn f64_at(&self, i: usize) -> Result<Option<f64>, StageError> {
        if !self.data_type().is_numeric() {
            return Err(self.mismatch("a number (int32, int64, float32 or float64)"));
        }
        if is_null(self.validity.as_deref(), i) {
            return Ok(None);
        }
        Ok(Some(match &self.values {
            Values::Int32(v) => f64::from(v[i]),
            Values::Int64(v) => v[i] as f64,
            Values::Float32(v) => f64::from(v[i]),
            Values::Float64(v) => v[i],
            _ => unreachable!("checked numeric above"),
        }))
    }

    pub(crate) fn i64_at(&self, i: usize) -> Result<Option<i64>, StageError> {
        let v = match &self.values {
            Values::Int32(v) => i64::from(v[i]),
            Values::Int64(v) => v[i],
            _ => return Err(self.mismatch("an integer (int32 or int64)")),
        };
        Ok((!is_null(self.validity.as_deref(), i)).then_some(v))
    }

    pub(crate) fn timestamp_ms_at(&self, i: usize) -> Result<Option<i64>, StageError> {
        let v = match &self.values {
            Values::TimestampMs(v) | Values::Int64(v) => v[i],
            _ => return Err(self.mismatch("timestamp-ms (or int64 milliseconds)")),
        };
        Ok((!is_null(self.validity.as_deref(), i)).then_some(v))
    }

    pub(crate) fn bool_at(&self, i: usize) -> Result<Option<bool>, StageError> {
        let v = match &self.values {
            Values::Boolean(bits) => bitmap::get(bits, i),
            _ => return Err(self.mismatch("boolean")),
        };
        Ok((!is_null(self.validity.as_deref(), i)).then_some(v))
    }

    pub(crate) fn str_at(&self, i: usize) -> Result<Option<&str>, StageError> {
        let Values::Utf8 { offsets, data } = &self.values else {
            return Err(self.mismatch("utf8"));
        };
        if is_null(self.validity.as_deref(), i) {
            return Ok(None);
        }
        let bytes = &data[offsets[i] as usize..offsets[i + 1] as usize];
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|e| StageError::new(format!("column `{}`: not valid UTF-8: {e}", self.name)))
    }
}

/// True when the validity bitmap marks row `i` null.
#[inline]
pub(crate) fn is_null(validity: Option<&[u8]>, i: usize) -> bool {
    validity.is_some_and(|v| !bitmap::get(v, i))
}

/// Splits optional values into a dense value vector (nulls as `T::default()`) and a
/// validity bitmap (`None` when nothing is null).
fn collect_opt<T: Copy + Default>(
    values: impl IntoIterator<Item = Option<T>>,
) -> (Vec<T>, Option<Vec<u8>>) {
    let values = values.into_iter();
    let hint = values.size_hint().0;
    let mut out = Vec::with_capacity(hint);
    let mut valid = bitmap::Builder::with_capacity(hint);
    for v in values {
        out.push(v.unwrap_or_default());
        valid.push(v.is_some());
    }
    (out, valid.finish_validity())
}

/// Whether any offset is below the one before it.
///
/// Branch-free and in blocks of 32 pairs: fuel and epoch checks sit on every loop
/// back edge, and a plain scan paid them once per offset, which made this check
/// the largest part of what a no-op stage cost per string column.
fn decreasing(offsets: &[i32]) -> bool {
    let Some(pairs) = offsets.len().checked_sub(1) else {
        return false;
    };
    let (prev, next) = (&offsets[..pairs], &offsets[1..]);
    let (prev_blocks, prev_rest) = prev.as_chunks::<32>();
    let (next_blocks, next_rest) = next.as_chunks::<32>();
    let mut bad = false;
    for (p, n) in prev_blocks.iter().zip(next_blocks) {
        let mut block = false;
        for i in 0..32 {
            block |= n[i] < p[i];
        }
        bad |= block;
    }
    for (p, n) in prev_rest.iter().zip(next_rest) {
        bad |= n < p;
    }
    bad
}

#[cfg(test)]
mod decreasing_tests {
    use super::decreasing;

    /// Every length around the block size, with the one decrease at every
    /// position (inside a block, across two, in the rest), is found; sorted
    /// offsets are not flagged.
    #[test]
    fn finds_a_decrease_anywhere() {
        for len in 0..100usize {
            let sorted: Vec<i32> = (0..len as i32).map(|i| i * 2).collect();
            assert!(!decreasing(&sorted), "len {len}");
            for at in 1..len {
                let mut v = sorted.clone();
                v[at] = v[at - 1] - 1;
                assert!(decreasing(&v), "len {len}, decrease at {at}");
            }
        }
    }
}
