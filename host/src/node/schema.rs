//! Holding batches to the schemas the plan fixed.
//!
//! Every node states its output schema when the plan is built; the executor
//! checks each batch a node emits against it, so an operator downstream can bind
//! its columns by position once and never meets a batch with columns missing,
//! reordered or of another type. Nullability is not compared: a column declared
//! non-null that arrives nullable holds the same values.

use arrow::datatypes::{Schema, SchemaRef};

use super::NodeError;

/// Whether `batch_schema` has exactly the fields of `expected` (names and types,
/// in order).
pub fn matches(expected: &Schema, batch_schema: &Schema) -> bool {
    expected.fields().len() == batch_schema.fields().len()
        && expected
            .fields()
            .iter()
            .zip(batch_schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
}

/// Checks `found` against `expected`, naming the first column that differs.
///
/// # Errors
/// [`NodeError::Config`] naming the column: missing, unexpected, or of another
/// type.
pub fn check(expected: &SchemaRef, found: &SchemaRef) -> Result<(), NodeError> {
    if std::sync::Arc::ptr_eq(expected, found) || matches(expected, found) {
        return Ok(());
    }
    for (i, f) in expected.fields().iter().enumerate() {
        match found.field_with_name(f.name()) {
            Err(_) => {
                return Err(NodeError::config(format!(
                    "column `{}` ({}) is missing from the batch",
                    f.name(),
                    f.data_type()
                )));
            }
            Ok(g) if g.data_type() != f.data_type() => {
                return Err(NodeError::config(format!(
                    "column `{}` is {} where the plan expects {}",
                    f.name(),
                    g.data_type(),
                    f.data_type()
                )));
            }
            Ok(_) if found.index_of(f.name()).ok() != Some(i) => {
                return Err(NodeError::config(format!(
                    "column `{}` is at position {} where the plan expects {i}",
                    f.name(),
                    found.index_of(f.name()).unwrap_or_default()
                )));
            }
            Ok(_) => {}
        }
    }
    let extra = found
        .fields()
        .iter()
        .find(|g| expected.field_with_name(g.name()).is_err())
        .map_or_else(String::new, |g| g.name().clone());
    Err(NodeError::config(format!(
        "column `{extra}` is not in the plan's schema"
    )))
}

/// A one-line rendering for `weir validate`: `user_id: Utf8, ts: Timestamp(ms)`.
pub fn render(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field};

    use super::*;

    #[test]
    fn a_missing_or_retyped_column_is_named() {
        let expected = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("tag", DataType::Int64, true),
        ]));
        let missing = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let e = check(&expected, &missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `tag` (Int64) is missing from the batch"
        );
        let retyped = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("tag", DataType::Utf8, true),
        ]));
        let e = check(&expected, &retyped).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `tag` is Utf8 where the plan expects Int64"
        );
        let same_but_non_null = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("tag", DataType::Int64, false),
        ]));
        check(&expected, &same_but_non_null).unwrap();
    }
}
