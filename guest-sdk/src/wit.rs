//! Conversions between the hand-written types and the generated WIT types.
//!
//! Every vector is moved, never copied: the batch the host lowered into this
//! instance's memory is the batch the stage reads, and the batch the stage returns is
//! what the host lifts. What arrives is checked once here, so a malformed batch
//! becomes a `StageError` the host can report instead of a panic (a trap) later.

use crate::bindings::weir::stage::types as wit;
use crate::column::{Column, Values};
use crate::{Batch, StageError};

impl Batch {
    /// Takes over a batch the host sent, checking the layout invariants.
    // Only featurizers receive batches.
    #[cfg_attr(not(feature = "featurizer"), allow(dead_code))]
    pub(crate) fn from_wit(batch: wit::Batch) -> Result<Batch, StageError> {
        let num_rows = batch.num_rows as usize;
        let columns = batch
            .columns
            .into_iter()
            .map(|c| {
                let values = match c.values {
                    wit::ColumnValues::Boolean(v) => Values::Boolean(v),
                    wit::ColumnValues::Int32(v) => Values::Int32(v),
                    wit::ColumnValues::Int64(v) => Values::Int64(v),
                    wit::ColumnValues::Float32(v) => Values::Float32(v),
                    wit::ColumnValues::Float64(v) => Values::Float64(v),
                    wit::ColumnValues::Utf8(u) => Values::Utf8 {
                        offsets: u.offsets,
                        data: u.data,
                    },
                    wit::ColumnValues::TimestampMs(v) => Values::TimestampMs(v),
                };
                Column::from_parts(c.name, num_rows, values, c.validity)
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|columns| Batch::from_parts(num_rows, columns));
        columns
            .map_err(|e| StageError::new(format!("the host sent a malformed batch: {}", e.message)))
    }

    /// Hands the batch over for the host to lift. `Batch` keeps the row count within
    /// `u32`, so the cast is exact.
    pub(crate) fn into_wit(self) -> wit::Batch {
        let num_rows = self.num_rows() as u32;
        let columns = self
            .into_columns()
            .into_iter()
            .map(Column::into_wit)
            .collect();
        wit::Batch { num_rows, columns }
    }
}

impl Column {
    /// Hands the column over as the contract lays it out (vectors moved).
    pub(crate) fn into_wit(self) -> wit::Column {
        let (name, values, validity) = self.into_parts();
        let values = match values {
            Values::Boolean(v) => wit::ColumnValues::Boolean(v),
            Values::Int32(v) => wit::ColumnValues::Int32(v),
            Values::Int64(v) => wit::ColumnValues::Int64(v),
            Values::Float32(v) => wit::ColumnValues::Float32(v),
            Values::Float64(v) => wit::ColumnValues::Float64(v),
            Values::Utf8 { offsets, data } => {
                wit::ColumnValues::Utf8(wit::Utf8Values { offsets, data })
            }
            Values::TimestampMs(v) => wit::ColumnValues::TimestampMs(v),
        };
        wit::Column {
            name,
            values,
            validity,
        }
    }
}

impl From<StageError> for wit::StageError {
    fn from(e: StageError) -> Self {
        wit::StageError {
            row: e.row,
            message: e.message,
            transient: e.transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_moves_every_column() {
        let batch = Batch::new(vec![
            Column::f64_opt("price", [Some(1.5), None]),
            Column::utf8("user_id", ["u1", "ü2"]),
            Column::bool("flag", [true, false]),
            Column::timestamp_ms("ts", vec![1, 2]),
        ])
        .unwrap();
        let back = Batch::from_wit(batch.clone().into_wit()).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let wit_col = |name: &str, values| wit::Column {
            name: name.to_owned(),
            values,
            validity: None,
        };
        let cases = [
            (
                wit_col("x", wit::ColumnValues::Float64(vec![1.0])),
                "1 values for 2 rows",
            ),
            (
                wit_col(
                    "s",
                    wit::ColumnValues::Utf8(wit::Utf8Values {
                        offsets: vec![0, 3, 2],
                        data: b"abc".to_vec(),
                    }),
                ),
                "negative or decreasing",
            ),
            (
                wit_col(
                    "s",
                    wit::ColumnValues::Utf8(wit::Utf8Values {
                        offsets: vec![0, 1, 9],
                        data: b"abc".to_vec(),
                    }),
                ),
                "past the 3-byte buffer",
            ),
            (
                wit::Column {
                    validity: Some(vec![]),
                    ..wit_col("v", wit::ColumnValues::Int32(vec![1, 2]))
                },
                "0 validity bytes",
            ),
        ];
        for (column, want) in cases {
            let err = Batch::from_wit(wit::Batch {
                num_rows: 2,
                columns: vec![column],
            })
            .unwrap_err();
            assert!(err.message.contains("malformed"), "{err}");
            assert!(err.message.contains(want), "{err} should say {want}");
        }
    }
}
