//! The size of a batch as it will cross into a stage, computed from its Arrow
//! buffers before anything is copied.
//!
//! The crossing cap exists to bound what one call moves; measuring the WIT copy
//! after making it would already have spent the memory and time the cap is there to
//! refuse. The count is the one [`crate::batch::wit_size`] makes of the converted
//! batch, byte for byte (a test holds them equal): per column its name, its values
//! as laid out for the boundary (bit-packed booleans, fixed-width numbers, string
//! offsets plus the bytes they span), and a validity bitmap when it has one.

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, TimeUnit};

/// Bytes `batch` (only the `projection` columns, when given) occupies once
/// converted for the boundary. A column the projection names but the batch lacks,
/// or of a type that cannot cross, counts nothing: the conversion reports it.
pub(super) fn size(batch: &RecordBatch, projection: Option<&[String]>) -> usize {
    let schema = batch.schema_ref();
    match projection {
        None => schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| column_size(f.name(), a))
            .sum(),
        Some(columns) => columns
            .iter()
            .filter_map(|c| {
                schema
                    .index_of(c)
                    .ok()
                    .map(|i| column_size(c, batch.column(i)))
            })
            .sum(),
    }
}

fn column_size(name: &str, array: &ArrayRef) -> usize {
    let rows = array.len();
    let values = match array.data_type() {
        DataType::Boolean => rows.div_ceil(8),
        DataType::Int32 | DataType::Float32 => rows * 4,
        DataType::Int64 | DataType::Float64 | DataType::Timestamp(TimeUnit::Millisecond, _) => {
            rows * 8
        }
        DataType::Utf8 => {
            let strings = array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("type checked");
            let offsets = strings.value_offsets();
            let spanned = offsets[offsets.len() - 1] - offsets[0];
            offsets.len() * 4 + spanned as usize
        }
        _ => return 0,
    };
    // For the types that cross, the logical nulls the conversion copies are the
    // physical ones; reading those needs no buffer clone.
    let validity = array.nulls().map_or(0, |_| rows.div_ceil(8));
    name.len() + values + validity
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, TimestampMillisecondArray,
    };

    use super::*;
    use crate::batch;

    fn batch() -> RecordBatch {
        let n = 37;
        RecordBatch::try_from_iter([
            (
                "flag",
                Arc::new(BooleanArray::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then_some(i % 2 == 0)),
                )) as ArrayRef,
            ),
            (
                "i32",
                Arc::new(Int32Array::from_iter_values(0..n)) as ArrayRef,
            ),
            (
                "i64",
                Arc::new(Int64Array::from_iter(
                    (0..n as i64).map(|i| (i % 5 != 0).then_some(i)),
                )) as ArrayRef,
            ),
            (
                "f32",
                Arc::new(Float32Array::from_iter_values((0..n).map(|i| i as f32))) as ArrayRef,
            ),
            (
                "f64",
                Arc::new(Float64Array::from_iter_values((0..n).map(f64::from))) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from_iter_values(0..n as i64)) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 4 != 1).then(|| "x".repeat(i as usize))),
                )) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn the_size_is_that_of_the_converted_batch() {
        let b = batch();
        let wit_size = |w: batch::WitInput<'_>| batch::wit_size(&w.to_owned_batch());
        assert_eq!(size(&b, None), wit_size(batch::to_wit(&b).unwrap()));
        // Slices: bitmaps realigned, string offsets rebased.
        for (offset, len) in [(0, 1), (3, 17), (9, 28), (36, 1), (5, 0)] {
            let s = b.slice(offset, len);
            assert_eq!(
                size(&s, None),
                wit_size(batch::to_wit(&s).unwrap()),
                "slice {offset}+{len}"
            );
        }
        let columns = ["name".to_owned(), "flag".to_owned()];
        let s = b.slice(3, 20);
        assert_eq!(
            size(&s, Some(&columns)),
            wit_size(batch::to_wit_projected(&s, &columns).unwrap())
        );
    }
}
