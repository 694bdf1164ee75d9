//! Arrow ⇄ WIT batch conversion.
//!
//! Inside the host every batch is an Arrow [`RecordBatch`]; across the WebAssembly
//! boundary it is the WIT `batch` record of `weir:stage/types`, which mirrors Arrow's
//! layout column for column:
//!
//! ```text
//!  Arrow Float64Array          WIT column-values::float64
//!  ┌──────────────────┐        ┌──────────────────┐
//!  │ values: [f64]    │ ─copy→ │ list<f64>        │   one memcpy-like copy
//!  │ nulls: bitmap    │ ─copy→ │ option<bitmap>   │   LSB-first, as Arrow packs it
//!  └──────────────────┘        └──────────────────┘
//!  Arrow StringArray           WIT column-values::utf8
//!  │ offsets: [i32]   │ ─copy→ │ offsets (rebased to 0)
//!  │ values: [u8]     │ ─copy→ │ data: list<u8>   │   no per-string cost
//! ```
//!
//! No conversion loops over rows for primitive columns, and no host-side copy on
//! the way in: [`to_wit`] gives a [`WitInput`] that *borrows* the Arrow buffers
//! (names, values, bitmaps, string bytes and offsets), and the call lowers them
//! into the guest's memory straight from there. Only what Arrow lays out
//! differently is copied first: a bitmap that starts mid-byte (a sliced array)
//! and string offsets that do not start at 0. On the way back the stage's vectors
//! become Arrow buffers without a copy (`Vec` → `ScalarBuffer`). Strings cross as
//! one byte buffer plus offsets, because `list<string>` costs ~137 ns per string
//! at the boundary.
//!
//! Invariants checked on the way in (a guest is untrusted): every column has
//! `num-rows` values, offsets are monotonic and in bounds, string data is UTF-8,
//! bitmaps are long enough, column names are unique.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringArray, TimestampMillisecondArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};

use crate::wit::{
    BatchRef, ColumnRef, ColumnValues, ColumnValuesRef, Utf8Values, Utf8ValuesRef, WitBatch,
    WitColumn,
};

pub mod json;
pub mod records;
#[cfg(test)]
mod tests;

/// Why a batch could not cross the boundary.
///
/// On the way out (Arrow → WIT) only an unsupported type can fail, which is the
/// pipeline's fault; on the way in (WIT → Arrow) every variant means the stage
/// returned a malformed batch, which is the stage's fault.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The column's Arrow type has no WIT counterpart.
    #[error(
        "column `{column}` has type {data_type}, which cannot cross into a stage (supported: Boolean, Int32, Int64, Float32, Float64, Utf8, Timestamp(ms))"
    )]
    UnsupportedType {
        /// The column's name.
        column: String,
        /// Its Arrow type.
        data_type: DataType,
    },
    /// A column's length disagrees with the batch's row count.
    #[error("column `{column}` has {found} values but the batch has {expected} rows")]
    Length {
        /// The column's name.
        column: String,
        /// The batch's row count.
        expected: usize,
        /// The column's length.
        found: usize,
    },
    /// A bitmap is shorter than the rows it must cover.
    #[error("column `{column}`: {what} bitmap has {found} bytes, {needed} needed for {rows} rows")]
    Bitmap {
        /// The column's name.
        column: String,
        /// Which bitmap: `validity` or `boolean values`.
        what: &'static str,
        /// Bytes present.
        found: usize,
        /// Bytes needed.
        needed: usize,
        /// The rows covered.
        rows: usize,
    },
    /// String offsets or data are malformed.
    #[error("column `{column}`: {reason}")]
    Utf8 {
        /// The column's name.
        column: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A column that was asked for is not in the batch.
    #[error("the batch has no column `{0}`")]
    MissingColumn(String),
    /// A stage working on a projection changed the row count.
    #[error(
        "the stage returned {found} rows for {expected}; a stage given `columns` must keep every row"
    )]
    RowCount {
        /// Rows sent.
        expected: usize,
        /// Rows returned.
        found: usize,
    },
    /// Two columns share a name.
    #[error("column `{0}` appears twice")]
    DuplicateColumn(String),
    /// A float is NaN or infinite and the JSON rule says to fail.
    #[error(
        "column `{column}` row {row} is {value}, which JSON cannot represent (non_finite = \"error\")"
    )]
    NonFinite {
        /// The column's name.
        column: String,
        /// The row within the batch.
        row: usize,
        /// The value.
        value: f64,
    },
    /// Arrow refused to assemble the batch.
    #[error("could not assemble the batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// A batch laid out for the boundary, borrowing the Arrow batch it was made from:
/// what [`to_wit`] gives. [`WitInput::with_param`] hands it to a call as the
/// contract's `batch`.
#[derive(Debug)]
pub struct WitInput<'a> {
    num_rows: u32,
    columns: Vec<InputColumn<'a>>,
}

#[derive(Debug)]
struct InputColumn<'a> {
    name: &'a str,
    values: InputValues<'a>,
    validity: Option<Cow<'a, [u8]>>,
}

#[derive(Debug)]
enum InputValues<'a> {
    Boolean(Cow<'a, [u8]>),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Float32(&'a [f32]),
    Float64(&'a [f64]),
    Utf8 {
        offsets: Cow<'a, [i32]>,
        data: &'a [u8],
    },
    TimestampMs(&'a [i64]),
}

impl<'a> WitInput<'a> {
    /// Calls `f` with the batch as the contract's `batch` parameter, borrowing
    /// this input (the parameter's column list lives only for the call).
    pub fn with_param<R>(&self, f: impl FnOnce(BatchRef<'_>) -> R) -> R {
        let columns: Vec<ColumnRef<'_>> = self
            .columns
            .iter()
            .map(|c| ColumnRef {
                name: c.name,
                values: match &c.values {
                    InputValues::Boolean(b) => ColumnValuesRef::Boolean(b),
                    InputValues::Int32(v) => ColumnValuesRef::Int32(v),
                    InputValues::Int64(v) => ColumnValuesRef::Int64(v),
                    InputValues::Float32(v) => ColumnValuesRef::Float32(v),
                    InputValues::Float64(v) => ColumnValuesRef::Float64(v),
                    InputValues::Utf8 { offsets, data } => {
                        ColumnValuesRef::Utf8(Utf8ValuesRef { offsets, data })
                    }
                    InputValues::TimestampMs(v) => ColumnValuesRef::TimestampMs(v),
                },
                validity: c.validity.as_deref(),
            })
            .collect();
        f(BatchRef {
            num_rows: self.num_rows,
            columns: &columns,
        })
    }

    /// The batch as the stage would receive it, owned: what a guest lifts from
    /// its memory, for tests and for code that keeps it past the call.
    pub fn to_owned_batch(&self) -> WitBatch {
        WitBatch {
            num_rows: self.num_rows,
            columns: self
                .columns
                .iter()
                .map(|c| WitColumn {
                    name: c.name.to_owned(),
                    values: match &c.values {
                        InputValues::Boolean(b) => ColumnValues::Boolean(b.to_vec()),
                        InputValues::Int32(v) => ColumnValues::Int32(v.to_vec()),
                        InputValues::Int64(v) => ColumnValues::Int64(v.to_vec()),
                        InputValues::Float32(v) => ColumnValues::Float32(v.to_vec()),
                        InputValues::Float64(v) => ColumnValues::Float64(v.to_vec()),
                        InputValues::Utf8 { offsets, data } => ColumnValues::Utf8(Utf8Values {
                            offsets: offsets.to_vec(),
                            data: data.to_vec(),
                        }),
                        InputValues::TimestampMs(v) => ColumnValues::TimestampMs(v.to_vec()),
                    },
                    validity: c.validity.as_deref().map(<[u8]>::to_vec),
                })
                .collect(),
        }
    }
}

/// Lays an Arrow batch out as the WIT batch a stage receives, borrowing its
/// buffers (see the module docs).
///
/// # Errors
/// [`BatchError::UnsupportedType`] for a column of a type the contract lacks.
pub fn to_wit(batch: &RecordBatch) -> Result<WitInput<'_>, BatchError> {
    let columns = batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| column_to_wit(field.name(), array))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WitInput {
        num_rows: u32::try_from(batch.num_rows()).expect("batches hold fewer than 2^32 rows"),
        columns,
    })
}

/// Lays out only the columns of `batch` named in `columns`, in that order: what a
/// stage with a projection receives, without assembling a projected batch first.
///
/// # Errors
/// [`BatchError::MissingColumn`] naming the first column the batch lacks;
/// [`BatchError::UnsupportedType`] as for [`to_wit`].
pub fn to_wit_projected<'a>(
    batch: &'a RecordBatch,
    columns: &'a [String],
) -> Result<WitInput<'a>, BatchError> {
    let schema = batch.schema_ref();
    let columns = columns
        .iter()
        .map(|c| {
            let i = schema
                .index_of(c)
                .map_err(|_| BatchError::MissingColumn(c.clone()))?;
            column_to_wit(c, batch.column(i))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WitInput {
        num_rows: u32::try_from(batch.num_rows()).expect("batches hold fewer than 2^32 rows"),
        columns,
    })
}

fn column_to_wit<'a>(name: &'a str, array: &'a ArrayRef) -> Result<InputColumn<'a>, BatchError> {
    let values = match array.data_type() {
        DataType::Boolean => {
            let a = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("type checked");
            InputValues::Boolean(bitmap_bytes(a.values()))
        }
        DataType::Int32 => InputValues::Int32(primitive::<Int32Array>(array).values()),
        DataType::Int64 => InputValues::Int64(primitive::<Int64Array>(array).values()),
        DataType::Float32 => InputValues::Float32(primitive::<Float32Array>(array).values()),
        DataType::Float64 => InputValues::Float64(primitive::<Float64Array>(array).values()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            InputValues::TimestampMs(primitive::<TimestampMillisecondArray>(array).values())
        }
        DataType::Utf8 => {
            let a = array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("type checked");
            let offsets = a.value_offsets();
            let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
            let offsets = if first == 0 {
                Cow::Borrowed(offsets)
            } else {
                Cow::Owned(offsets.iter().map(|o| o - first).collect())
            };
            let data = &a.value_data()[first as usize..last as usize];
            InputValues::Utf8 { offsets, data }
        }
        other => {
            return Err(BatchError::UnsupportedType {
                column: name.to_owned(),
                data_type: other.clone(),
            });
        }
    };
    // For the types that cross, the logical nulls are the physical ones, which
    // can be borrowed.
    let validity = array.nulls().map(|n| bitmap_bytes(n.inner()));
    Ok(InputColumn {
        name,
        values,
        validity,
    })
}

fn primitive<A: 'static>(array: &ArrayRef) -> &A {
    array.as_any().downcast_ref::<A>().expect("type checked")
}

/// The bytes of a bit-packed buffer, realigned to start at bit 0: borrowed when
/// it already does, copied when it starts mid-byte.
fn bitmap_bytes(bits: &BooleanBuffer) -> Cow<'_, [u8]> {
    if bits.offset() == 0 {
        let len = bits.len().div_ceil(8);
        Cow::Borrowed(&bits.inner().as_slice()[..len])
    } else if bits.offset().is_multiple_of(8) {
        let start = bits.offset() / 8;
        Cow::Borrowed(&bits.inner().as_slice()[start..start + bits.len().div_ceil(8)])
    } else {
        Cow::Owned(bits.sliced().as_slice().to_vec())
    }
}

/// Converts a stage's WIT batch back into an Arrow batch, checking every invariant.
///
/// Primitive value vectors become Arrow buffers without a copy.
///
/// # Errors
/// Any [`BatchError`] other than `UnsupportedType`: the stage returned a malformed batch.
pub fn from_wit(batch: WitBatch) -> Result<RecordBatch, BatchError> {
    let rows = batch.num_rows as usize;
    let mut fields = Vec::with_capacity(batch.columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(batch.columns.len());
    for column in batch.columns {
        if fields.iter().any(|f: &Field| f.name() == &column.name) {
            return Err(BatchError::DuplicateColumn(column.name));
        }
        let array = column_from_wit(&column.name, rows, column.values, column.validity)?;
        fields.push(Field::new(column.name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

fn column_from_wit(
    name: &str,
    rows: usize,
    values: ColumnValues,
    validity: Option<Vec<u8>>,
) -> Result<ArrayRef, BatchError> {
    let nulls = validity
        .map(|bytes| bitmap_from_wit(name, "validity", bytes, rows).map(NullBuffer::new))
        .transpose()?;
    let check_len = |found: usize| {
        if found == rows {
            Ok(())
        } else {
            Err(BatchError::Length {
                column: name.to_owned(),
                expected: rows,
                found,
            })
        }
    };
    let array: ArrayRef = match values {
        ColumnValues::Boolean(bytes) => {
            let values = bitmap_from_wit(name, "boolean values", bytes, rows)?;
            Arc::new(BooleanArray::new(values, nulls))
        }
        ColumnValues::Int32(v) => {
            check_len(v.len())?;
            Arc::new(Int32Array::new(ScalarBuffer::from(v), nulls))
        }
        ColumnValues::Int64(v) => {
            check_len(v.len())?;
            Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls))
        }
        ColumnValues::Float32(v) => {
            check_len(v.len())?;
            Arc::new(Float32Array::new(ScalarBuffer::from(v), nulls))
        }
        ColumnValues::Float64(v) => {
            check_len(v.len())?;
            Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
        }
        ColumnValues::TimestampMs(v) => {
            check_len(v.len())?;
            Arc::new(TimestampMillisecondArray::new(ScalarBuffer::from(v), nulls))
        }
        ColumnValues::Utf8(Utf8Values { offsets, data }) => {
            check_len(offsets.len().saturating_sub(1))?;
            strings_from_wit(name, rows, offsets, data, nulls)?
        }
    };
    Ok(array)
}

/// A string column from a stage's offsets and bytes, every invariant checked
/// here, in passes that vectorize: offsets start at 0 or later, never decrease
/// and end within the bytes; the bytes they span are UTF-8 and every offset
/// falls on a character boundary (for ASCII bytes, all of them do, so the
/// per-offset check is skipped). Arrow's own checks (`OffsetBuffer::new` panics
/// on bad offsets) would then only repeat these, a branch per offset.
fn strings_from_wit(
    name: &str,
    rows: usize,
    offsets: Vec<i32>,
    data: Vec<u8>,
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef, BatchError> {
    let bad = |reason: String| BatchError::Utf8 {
        column: name.to_owned(),
        reason,
    };
    if offsets.len() != rows + 1 {
        return Err(bad(format!(
            "{} offsets for {rows} rows (need rows + 1)",
            offsets.len()
        )));
    }
    let decreasing = offsets[1..]
        .iter()
        .zip(&offsets[..rows])
        .fold(false, |bad, (next, prev)| bad | (next < prev));
    let (first, last) = (offsets[0], offsets[rows]);
    if first < 0 || decreasing {
        return Err(bad("offsets are negative or decreasing".to_owned()));
    }
    let (first, last) = (first as usize, last as usize);
    if last > data.len() {
        return Err(bad(format!(
            "offsets end at {last}, past the {}-byte buffer",
            data.len()
        )));
    }
    let spanned = &data[first..last];
    if !spanned.is_ascii() {
        let text = std::str::from_utf8(spanned)
            .map_err(|e| bad(format!("the bytes are not UTF-8: {e}")))?;
        if let Some(o) = offsets
            .iter()
            .find(|&&o| !text.is_char_boundary(o as usize - first))
        {
            return Err(bad(format!("offset {o} splits a UTF-8 character")));
        }
    }
    // SAFETY: checked above: the offsets are non-negative, never decrease and end
    // within `data`; the bytes they span are UTF-8 and every offset is on a
    // character boundary; `nulls` covers `rows` rows (`bitmap_from_wit`).
    let array = unsafe {
        let offsets = OffsetBuffer::<i32>::new_unchecked(ScalarBuffer::from(offsets));
        StringArray::new_unchecked(offsets, Buffer::from_vec(data), nulls)
    };
    Ok(Arc::new(array))
}

fn bitmap_from_wit(
    column: &str,
    what: &'static str,
    bytes: Vec<u8>,
    rows: usize,
) -> Result<BooleanBuffer, BatchError> {
    let needed = rows.div_ceil(8);
    if bytes.len() < needed {
        return Err(BatchError::Bitmap {
            column: column.to_owned(),
            what,
            found: bytes.len(),
            needed,
            rows,
        });
    }
    Ok(BooleanBuffer::new(Buffer::from_vec(bytes), 0, rows))
}

/// The columns of `batch` named in `columns`, in that order.
///
/// # Errors
/// [`BatchError::MissingColumn`] naming the first column the batch lacks.
pub fn project(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch, BatchError> {
    let schema = batch.schema();
    let indices = columns
        .iter()
        .map(|c| {
            schema
                .index_of(c)
                .map_err(|_| BatchError::MissingColumn(c.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(batch.project(&indices)?)
}

/// `base` with the columns of `update` merged in: a column of `update` replaces the
/// same-named column of `base` in place, or is appended.
///
/// # Errors
/// [`BatchError::RowCount`] when the two batches differ in rows.
pub fn merge_columns(base: &RecordBatch, update: RecordBatch) -> Result<RecordBatch, BatchError> {
    if update.num_rows() != base.num_rows() {
        return Err(BatchError::RowCount {
            expected: base.num_rows(),
            found: update.num_rows(),
        });
    }
    // Fields are shared (`Arc`), not cloned: a deep copy allocates a name and a
    // metadata map per column on every batch.
    let base_schema = base.schema();
    let mut fields: Vec<FieldRef> = base_schema.fields().iter().cloned().collect();
    let mut arrays: Vec<ArrayRef> = base.columns().to_vec();
    let update_schema = update.schema();
    for (field, array) in update_schema.fields().iter().zip(update.columns()) {
        match fields.iter().position(|f| f.name() == field.name()) {
            Some(i) => {
                fields[i] = field.clone();
                arrays[i] = array.clone();
            }
            None => {
                fields.push(field.clone());
                arrays.push(array.clone());
            }
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        base_schema.metadata().clone(),
    ));
    let options = RecordBatchOptions::new().with_row_count(Some(base.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

/// Bytes a WIT batch occupies when it crosses: what the per-call crossing cap counts.
pub fn wit_size(batch: &WitBatch) -> usize {
    batch
        .columns
        .iter()
        .map(|c| {
            let values = match &c.values {
                ColumnValues::Boolean(b) => b.len(),
                ColumnValues::Int32(v) => v.len() * 4,
                ColumnValues::Int64(v) | ColumnValues::TimestampMs(v) => v.len() * 8,
                ColumnValues::Float32(v) => v.len() * 4,
                ColumnValues::Float64(v) => v.len() * 8,
                ColumnValues::Utf8(u) => u.offsets.len() * 4 + u.data.len(),
            };
            c.name.len() + values + c.validity.as_ref().map_or(0, Vec::len)
        })
        .sum()
}
