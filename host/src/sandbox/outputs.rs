//! A featurizer's output contract, checked on every batch it returns.
//!
//! A featurizer maps rows one to one: the host refuses a batch with another row
//! count, because a stage that silently loses rows loses records nobody counts. A
//! stage that means to drop rows says so (`filter = true`): it returns every row
//! plus a boolean column `_keep`, and the host drops the rows where `_keep` is false
//! or null, counts them, and removes `_keep`. So what a stage drops is always
//! counted, and a filter's verdict is data the host can check.
//!
//! A stage may also declare the columns it returns (`outputs`). Its output schema is
//! then known before it runs ([`output_schema`]), and every batch is held to it:
//! a declared column missing or of another type, or a column outside the schema, is
//! a [`StageFailure`] naming the column — never a panic downstream, never a column
//! that is not what the plan said.
//!
//! ```text
//!  returned ─► rows out == rows in? ─► filter: take `_keep` ─► columns: merge into
//!   batch        else RowCount           (Boolean, else           the full input
//!                                         FilterColumn)                 │
//!                  drop rows where `_keep` is not true ◄─ outputs: exactly the
//!                  (counted as filtered)                  output schema, in its order
//! ```

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};

use super::StageFailure;

/// The column a filter stage returns its verdict in: `true` keeps the row, `false`
/// or null drops it. The host removes it before the batch moves on.
pub const FILTER_COLUMN: &str = "_keep";

/// One column a stage declares it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    /// The column's name.
    pub name: String,
    /// Its Arrow type.
    pub data_type: DataType,
}

/// A stage's declared output columns: no name twice, none named `_keep`.
///
/// Empty means undeclared: the stage's batches are then not checked against a
/// schema (the row count and a filter's `_keep` still are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclaredOutputs {
    columns: Vec<OutputColumn>,
}

/// A declaration of output columns that cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputSchemaError {
    /// Two declared outputs share a name.
    #[error("output column `{0}` is declared twice")]
    Duplicate(String),
    /// An output is named `_keep`, which the host removes from what a stage returns.
    #[error(
        "output column `{FILTER_COLUMN}` cannot be declared: it is the column a filter stage returns its verdict in, and the host removes it"
    )]
    Reserved,
    /// A column the stage is given (`columns`) is not in its input.
    #[error(
        "the stage is given column `{column}`, which its input does not have (it has: {available})"
    )]
    MissingInput {
        /// The column.
        column: String,
        /// The input's columns, comma-separated.
        available: String,
    },
    /// A filter stage's input already has a `_keep` column, which its verdict would
    /// replace and the host would then remove.
    #[error(
        "the input of a filter stage already has a column `{FILTER_COLUMN}`, which the stage's verdict would replace"
    )]
    FilterColumnInInput,
}

impl DeclaredOutputs {
    /// Checks a declaration.
    ///
    /// # Errors
    /// [`OutputSchemaError::Duplicate`] naming the first repeated column;
    /// [`OutputSchemaError::Reserved`] for a column named `_keep`.
    ///
    /// # Examples
    /// ```
    /// use arrow::datatypes::DataType;
    /// use weir::sandbox::{DeclaredOutputs, OutputColumn};
    ///
    /// let tag = OutputColumn { name: "tag".into(), data_type: DataType::Int64 };
    /// assert!(DeclaredOutputs::new(vec![tag.clone()]).is_ok());
    /// assert_eq!(
    ///     DeclaredOutputs::new(vec![tag.clone(), tag]).unwrap_err().to_string(),
    ///     "output column `tag` is declared twice"
    /// );
    /// ```
    pub fn new(columns: Vec<OutputColumn>) -> Result<Self, OutputSchemaError> {
        for (i, c) in columns.iter().enumerate() {
            if c.name == FILTER_COLUMN {
                return Err(OutputSchemaError::Reserved);
            }
            if columns[..i].iter().any(|d| d.name == c.name) {
                return Err(OutputSchemaError::Duplicate(c.name.clone()));
            }
        }
        Ok(Self { columns })
    }

    /// The declared columns, in declaration order.
    pub fn columns(&self) -> &[OutputColumn] {
        &self.columns
    }

    /// True when nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// The schema of what a stage emits for batches of schema `input`: the input's
/// columns, each declared output replacing the same-named one in place or appended,
/// in declaration order. A filter's `_keep` is not part of it.
///
/// With `outputs` declared this is exact: the host holds every batch to it. Without,
/// it is the input schema, which an undeclared stage may change at run time.
///
/// # Errors
/// [`OutputSchemaError::MissingInput`] when `projection` names a column `input`
/// lacks; [`OutputSchemaError::FilterColumnInInput`] when `filter` is set and the
/// input already has a `_keep`.
///
/// # Examples
/// ```
/// use arrow::datatypes::{DataType, Field, Schema};
/// use weir::sandbox::{DeclaredOutputs, OutputColumn, output_schema};
///
/// let input = Schema::new(vec![
///     Field::new("price", DataType::Float64, true),
///     Field::new("user", DataType::Utf8, false),
/// ]);
/// let outputs = DeclaredOutputs::new(vec![OutputColumn {
///     name: "price_bucket".into(),
///     data_type: DataType::Int32,
/// }])?;
/// let price = ["price".to_owned()];
/// let schema = output_schema(&input, Some(&price), &outputs, false)?;
/// let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
/// assert_eq!(names, ["price", "user", "price_bucket"]);
/// # Ok::<(), weir::sandbox::OutputSchemaError>(())
/// ```
pub fn output_schema(
    input: &Schema,
    projection: Option<&[String]>,
    outputs: &DeclaredOutputs,
    filter: bool,
) -> Result<SchemaRef, OutputSchemaError> {
    for column in projection.into_iter().flatten() {
        if input.index_of(column).is_err() {
            let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(OutputSchemaError::MissingInput {
                column: column.clone(),
                available: names.join(", "),
            });
        }
    }
    if filter && input.index_of(FILTER_COLUMN).is_ok() {
        return Err(OutputSchemaError::FilterColumnInInput);
    }
    Ok(expected_schema(input, outputs))
}

/// [`output_schema`] without the checks of the wiring, which a running stage has
/// passed or reports otherwise.
pub(super) fn expected_schema(input: &Schema, outputs: &DeclaredOutputs) -> SchemaRef {
    let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
    for c in &outputs.columns {
        let field = Arc::new(Field::new(&c.name, c.data_type.clone(), true));
        match fields.iter().position(|f| f.name() == &c.name) {
            Some(i) => fields[i] = field,
            None => fields.push(field),
        }
    }
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

/// Takes a filter stage's `_keep` column out of what it returned.
///
/// # Errors
/// [`StageFailure::FilterColumn`] when the column is missing or not Boolean.
pub(super) fn take_verdict(
    stage: &str,
    batch: RecordBatch,
) -> Result<(RecordBatch, BooleanArray), StageFailure> {
    let refuse = |found| StageFailure::FilterColumn {
        stage: stage.to_owned(),
        column: FILTER_COLUMN,
        found,
    };
    let schema = batch.schema();
    let Ok(i) = schema.index_of(FILTER_COLUMN) else {
        return Err(refuse(None));
    };
    let Some(keep) = batch.column(i).as_any().downcast_ref::<BooleanArray>() else {
        return Err(refuse(Some(batch.column(i).data_type().clone())));
    };
    let keep = keep.clone();
    let mut batch = batch;
    batch.remove_column(i);
    Ok((batch, keep))
}

/// The rows of `batch` whose verdict is true (false and null drop), and how many
/// were dropped.
///
/// # Errors
/// [`StageFailure::Batch`] if Arrow cannot filter the batch.
pub(super) fn apply_verdict(
    stage: &str,
    batch: &RecordBatch,
    keep: &BooleanArray,
) -> Result<(RecordBatch, u64), StageFailure> {
    let keep = if keep.null_count() > 0 {
        prep_null_mask_filter(keep)
    } else {
        keep.clone()
    };
    let kept = keep.true_count();
    let dropped = (batch.num_rows() - kept) as u64;
    if dropped == 0 {
        return Ok((batch.clone(), 0));
    }
    let out = filter_record_batch(batch, &keep).map_err(|e| StageFailure::Batch {
        stage: stage.to_owned(),
        direction: "output",
        error: e.into(),
    })?;
    Ok((out, dropped))
}

/// `batch` as a batch of exactly `expected`: every column there, with its type, in
/// its order, and no other.
///
/// # Errors
/// [`StageFailure::OutputMissing`], [`StageFailure::OutputType`] or
/// [`StageFailure::OutputUndeclared`] naming the column; [`StageFailure::Batch`] when
/// a column breaks the schema otherwise (nulls in a non-nullable input column).
pub(super) fn conform(
    stage: &str,
    batch: &RecordBatch,
    expected: &SchemaRef,
) -> Result<RecordBatch, StageFailure> {
    let schema = batch.schema();
    if let Some(extra) = schema
        .fields()
        .iter()
        .find(|f| expected.index_of(f.name()).is_err())
    {
        return Err(StageFailure::OutputUndeclared {
            stage: stage.to_owned(),
            column: extra.name().clone(),
        });
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(expected.fields().len());
    for field in expected.fields() {
        let Ok(i) = schema.index_of(field.name()) else {
            return Err(StageFailure::OutputMissing {
                stage: stage.to_owned(),
                column: field.name().clone(),
                expected: field.data_type().clone(),
            });
        };
        let column = batch.column(i);
        if column.data_type() != field.data_type() {
            return Err(StageFailure::OutputType {
                stage: stage.to_owned(),
                column: field.name().clone(),
                expected: field.data_type().clone(),
                found: column.data_type().clone(),
            });
        }
        columns.push(column.clone());
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(expected.clone(), columns, &options).map_err(|e| {
        StageFailure::Batch {
            stage: stage.to_owned(),
            direction: "output",
            error: e.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Int32Array, Int64Array, StringArray};

    use super::*;

    fn declared(columns: &[(&str, DataType)]) -> DeclaredOutputs {
        DeclaredOutputs::new(
            columns
                .iter()
                .map(|(n, t)| OutputColumn {
                    name: (*n).to_owned(),
                    data_type: t.clone(),
                })
                .collect(),
        )
        .unwrap()
    }

    fn input() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn names(schema: &Schema) -> Vec<&str> {
        schema.fields().iter().map(|f| f.name().as_str()).collect()
    }

    #[test]
    fn declarations_refuse_duplicates_and_the_filter_column() {
        let err = DeclaredOutputs::new(vec![
            OutputColumn {
                name: "a".into(),
                data_type: DataType::Int32,
            },
            OutputColumn {
                name: "a".into(),
                data_type: DataType::Int64,
            },
        ])
        .unwrap_err();
        assert_eq!(err, OutputSchemaError::Duplicate("a".into()));
        let err = DeclaredOutputs::new(vec![OutputColumn {
            name: "_keep".into(),
            data_type: DataType::Boolean,
        }])
        .unwrap_err();
        assert_eq!(err, OutputSchemaError::Reserved);
    }

    #[test]
    fn the_output_schema_replaces_in_place_and_appends_in_order() {
        let outputs = declared(&[("z", DataType::Int32), ("s", DataType::Int64)]);
        let schema = output_schema(&input().schema(), None, &outputs, false).unwrap();
        assert_eq!(names(&schema), ["n", "s", "z"]);
        assert_eq!(schema.field(1).data_type(), &DataType::Int64);
        assert_eq!(schema.field(2).data_type(), &DataType::Int32);
        // Undeclared: the input schema.
        let schema = output_schema(&input().schema(), None, &DeclaredOutputs::default(), true);
        assert_eq!(schema.unwrap().as_ref(), input().schema().as_ref());
    }

    #[test]
    fn the_output_schema_checks_the_wiring() {
        let none = DeclaredOutputs::default();
        let given = ["x".to_owned()];
        assert_eq!(
            output_schema(&input().schema(), Some(&given), &none, false)
                .unwrap_err()
                .to_string(),
            "the stage is given column `x`, which its input does not have (it has: n, s)"
        );
        let with_keep = Schema::new(vec![Field::new("_keep", DataType::Boolean, true)]);
        assert_eq!(
            output_schema(&with_keep, None, &none, true).unwrap_err(),
            OutputSchemaError::FilterColumnInInput
        );
        assert!(output_schema(&with_keep, None, &none, false).is_ok());
    }

    #[test]
    fn conform_orders_columns_and_names_what_is_wrong() {
        let outputs = declared(&[("tag", DataType::Int32)]);
        let expected = expected_schema(&input().schema(), &outputs);
        let returned = RecordBatch::try_from_iter([
            ("tag", Arc::new(Int32Array::from(vec![7; 4])) as ArrayRef),
            ("s", input().column(1).clone()),
            ("n", input().column(0).clone()),
        ])
        .unwrap();
        let out = conform("st", &returned, &expected).unwrap();
        assert_eq!(names(&out.schema()), ["n", "s", "tag"]);
        assert_eq!(out.column(0), input().column(0));

        let missing = returned.project(&[1, 2]).unwrap();
        assert_eq!(
            conform("st", &missing, &expected).unwrap_err().to_string(),
            "stage `st` did not return column `tag` (Int32) of its declared outputs"
        );
        let wrong = RecordBatch::try_from_iter([
            ("n", input().column(0).clone()),
            ("s", input().column(1).clone()),
            ("tag", Arc::new(Int64Array::from(vec![7; 4])) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(
            conform("st", &wrong, &expected).unwrap_err().to_string(),
            "stage `st` returned column `tag` as Int64, but it is declared Int32"
        );
        let extra = RecordBatch::try_from_iter([
            ("n", input().column(0).clone()),
            ("s", input().column(1).clone()),
            ("tag", Arc::new(Int32Array::from(vec![7; 4])) as ArrayRef),
            ("debug", input().column(0).clone()),
        ])
        .unwrap();
        assert_eq!(
            conform("st", &extra, &expected).unwrap_err().to_string(),
            "stage `st` returned column `debug`, which is neither an input column nor among its declared outputs"
        );
    }

    #[test]
    fn a_verdict_keeps_true_rows_and_drops_false_and_null() {
        let returned = RecordBatch::try_from_iter([
            ("n", input().column(0).clone()),
            (
                "_keep",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let (rest, keep) = take_verdict("st", returned).unwrap();
        assert_eq!(names(&rest.schema()), ["n"]);
        let (kept, dropped) = apply_verdict("st", &rest, &keep).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(
            kept.column(0).as_ref(),
            &Int64Array::from(vec![1, 4]) as &dyn Array
        );
    }

    #[test]
    fn a_verdict_must_be_a_boolean_keep_column() {
        assert_eq!(
            take_verdict("st", input()).unwrap_err().to_string(),
            "filter stage `st` returned no column `_keep`; a filter returns every row plus a boolean `_keep`"
        );
        let wrong = RecordBatch::try_from_iter([("_keep", input().column(0).clone())]).unwrap();
        let err = take_verdict("st", wrong).unwrap_err();
        assert!(
            matches!(
                &err,
                StageFailure::FilterColumn {
                    column: "_keep",
                    found: Some(DataType::Int64),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "filter stage `st` returned column `_keep` as Int64; a filter's `_keep` is Boolean"
        );
    }
}
