//! A batch of rows in columnar form, as it crosses the boundary once per call.
//!
//! ```text
//!   host (Arrow RecordBatch) ──one copy per buffer──▶ Batch ──process──▶ Batch ──▶ host
//!                                                       │
//!                     columns: typed views ◀────────────┤
//!                     rows:    Row (loop in the guest) ◀┘
//! ```
//!
//! Two ways to read it. The column views ([`Batch::f64s`], [`Batch::strs`], …) look a
//! column up and check its type once, then hand out slices: the way to write fast
//! stages. The row view ([`Batch::rows`], [`Batch::map_rows`]) reads one value at a
//! time by name, which is simpler for per-record logic and still far cheaper than
//! crossing the boundary per record, since the loop runs inside the guest.

use crate::StageError;
use crate::column::Column;
use crate::view::{BoolView, NumericView, PrimitiveView, StrView};

/// A batch of rows: named columns of equal length.
///
/// A `Batch` can only be built valid: every column has [`num_rows`](Self::num_rows)
/// rows and no two columns share a name.
///
/// # Examples
///
/// ```
/// use weir_guest::{Batch, Column};
///
/// let batch = Batch::new(vec![
///     Column::utf8("user_id", ["u1", "u2"]),
///     Column::f64_opt("price", [Some(12.5), None]),
/// ])?;
/// assert_eq!(batch.num_rows(), 2);
///
/// let batch = batch.with_column(Column::bool("expensive", [true, false]))?;
/// assert_eq!(batch.bools("expensive")?.get(0), Some(true));
///
/// // A column of the wrong length is refused.
/// assert!(batch.clone().with_column(Column::i32("short", vec![1])).is_err());
/// # Ok::<(), weir_guest::StageError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    num_rows: usize,
    columns: Vec<Column>,
}

impl Batch {
    /// A batch of the given columns; its row count is theirs (zero without columns).
    ///
    /// # Errors
    ///
    /// If the columns differ in length, two share a name, or there are more than
    /// `u32::MAX` rows (the contract's row count is a `u32`).
    pub fn new(columns: Vec<Column>) -> Result<Batch, StageError> {
        let num_rows = columns.first().map_or(0, Column::len);
        Batch::from_parts(num_rows, columns)
    }

    /// A batch with no rows and no columns: the start of a batch built column by column
    /// with [`with_column`](Self::with_column), or an output that says "nothing here".
    pub fn empty() -> Batch {
        Batch {
            num_rows: 0,
            columns: Vec::new(),
        }
    }

    /// A batch of `num_rows` rows, checking the invariants.
    pub(crate) fn from_parts(num_rows: usize, columns: Vec<Column>) -> Result<Batch, StageError> {
        if u32::try_from(num_rows).is_err() {
            return Err(StageError::new(format!(
                "a batch holds at most {} rows, not {num_rows}",
                u32::MAX
            )));
        }
        if let Some(c) = columns.iter().find(|c| c.len() != num_rows) {
            return Err(StageError::new(format!(
                "column `{}` has {} rows, the batch has {num_rows}",
                c.name(),
                c.len()
            )));
        }
        // Sorting, not a `HashSet`: std's hasher is randomly seeded, which would make
        // every component import `wasi:random` for this alone.
        let mut names: Vec<&str> = columns.iter().map(Column::name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(StageError::new(format!("two columns are named `{}`", w[0])));
        }
        Ok(Batch { num_rows, columns })
    }

    /// The number of rows.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Takes the columns out, to reuse their buffers.
    pub fn into_columns(self) -> Vec<Column> {
        self.columns
    }

    /// The column named `name`, if there is one.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name() == name)
    }

    /// The column named `name`, or an error that names it and lists the columns there
    /// are, so a misspelled parameter is obvious from the pipeline's error log.
    fn require(&self, name: &str) -> Result<&Column, StageError> {
        self.column(name).ok_or_else(|| {
            let names: Vec<&str> = self.columns.iter().map(Column::name).collect();
            StageError::new(format!(
                "no column named `{name}` (the batch has: {})",
                if names.is_empty() {
                    "no columns".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    /// Column `name` as `float64` values; see [`Column::f64s`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `float64`; the message names the
    /// column and both types.
    pub fn f64s(&self, name: &str) -> Result<PrimitiveView<'_, f64>, StageError> {
        self.require(name)?.f64s()
    }

    /// Column `name` as `float32` values; see [`Column::f32s`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `float32`.
    pub fn f32s(&self, name: &str) -> Result<PrimitiveView<'_, f32>, StageError> {
        self.require(name)?.f32s()
    }

    /// Column `name` as `int64` values; see [`Column::i64s`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `int64`.
    pub fn i64s(&self, name: &str) -> Result<PrimitiveView<'_, i64>, StageError> {
        self.require(name)?.i64s()
    }

    /// Column `name` as `int32` values; see [`Column::i32s`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `int32`.
    pub fn i32s(&self, name: &str) -> Result<PrimitiveView<'_, i32>, StageError> {
        self.require(name)?.i32s()
    }

    /// Column `name` as `timestamp-ms` values; see [`Column::timestamps_ms`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `timestamp-ms`.
    pub fn timestamps_ms(&self, name: &str) -> Result<PrimitiveView<'_, i64>, StageError> {
        self.require(name)?.timestamps_ms()
    }

    /// Column `name` as booleans; see [`Column::bools`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `boolean`.
    pub fn bools(&self, name: &str) -> Result<BoolView<'_>, StageError> {
        self.require(name)?.bools()
    }

    /// Column `name` as strings, checked to be UTF-8 once; see [`Column::strs`].
    ///
    /// # Errors
    ///
    /// If there is no such column, it is not `utf8`, or its bytes are not UTF-8.
    pub fn strs(&self, name: &str) -> Result<StrView<'_>, StageError> {
        self.require(name)?.strs()
    }

    /// Column `name`, of any numeric type, read as `f64`; see [`Column::f64s_lossy`].
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not numeric.
    pub fn f64s_lossy(&self, name: &str) -> Result<NumericView<'_>, StageError> {
        self.require(name)?.f64s_lossy()
    }

    /// The batch with `column` added: it replaces the column of the same name in place,
    /// or is appended. A batch without columns takes the column's length as its row
    /// count.
    ///
    /// # Errors
    ///
    /// If the column's length is not the batch's row count; the message names it.
    pub fn with_column(mut self, column: Column) -> Result<Batch, StageError> {
        if self.columns.is_empty() {
            return Batch::new(vec![column]);
        }
        if column.len() != self.num_rows {
            return Err(StageError::new(format!(
                "column `{}` has {} rows, the batch has {}",
                column.name(),
                column.len(),
                self.num_rows
            )));
        }
        match self.columns.iter_mut().find(|c| c.name() == column.name()) {
            Some(slot) => *slot = column,
            None => self.columns.push(column),
        }
        Ok(self)
    }

    /// The batch without the column named `name`; unchanged when there is none. The
    /// row count stays, even when the last column goes.
    #[must_use]
    pub fn without_column(mut self, name: &str) -> Batch {
        self.columns.retain(|c| c.name() != name);
        self
    }

    /// The rows, each a [`Row`] that reads values by column name.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_guest::{Batch, Column};
    ///
    /// let batch = Batch::new(vec![
    ///     Column::utf8("event", ["view", "purchase"]),
    ///     Column::f64("price", vec![0.0, 42.0]),
    /// ])?;
    /// let mut spend = 0.0;
    /// for row in batch.rows() {
    ///     if row.str("event")? == Some("purchase") {
    ///         spend += row.f64("price")?.unwrap_or(0.0);
    ///     }
    /// }
    /// assert_eq!(spend, 42.0);
    /// # Ok::<(), weir_guest::StageError>(())
    /// ```
    pub fn rows(&self) -> impl ExactSizeIterator<Item = Row<'_>> + DoubleEndedIterator {
        (0..self.num_rows).map(move |index| Row { batch: self, index })
    }

    /// Runs `f` on every row and collects the results, stopping at the first error. An
    /// error that does not say which row failed is stamped with the row `f` was given,
    /// so the host can set that record aside.
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use weir_guest::{Batch, Column, StageError};
    ///
    /// let batch = Batch::new(vec![Column::f64("price", vec![5.0, -1.0])])?;
    /// let err = batch
    ///     .map_rows(|row| match row.f64("price")? {
    ///         Some(p) if p < 0.0 => Err(StageError::new("negative price")),
    ///         p => Ok(p),
    ///     })
    ///     .unwrap_err();
    /// assert_eq!(err.row, Some(1));
    /// # Ok::<(), weir_guest::StageError>(())
    /// ```
    pub fn map_rows<T, F>(&self, mut f: F) -> Result<Vec<T>, StageError>
    where
        F: FnMut(Row<'_>) -> Result<T, StageError>,
    {
        self.rows()
            .map(|row| {
                let index = row.index;
                f(row).map_err(|e| if e.row.is_none() { e.at_row(index) } else { e })
            })
            .collect()
    }
}

/// One row of a [`Batch`], reading values by column name.
///
/// Each read looks the column up by name and checks its type, so the row view suits
/// per-record logic on a few columns; for arithmetic over whole columns use the column
/// views. Every error a `Row` returns carries its row index.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    batch: &'a Batch,
    index: usize,
}

impl<'a> Row<'a> {
    /// This row's index in the batch.
    pub fn index(&self) -> usize {
        self.index
    }

    fn read<T>(
        &self,
        name: &str,
        get: impl FnOnce(&'a Column, usize) -> Result<Option<T>, StageError>,
    ) -> Result<Option<T>, StageError> {
        self.batch
            .require(name)
            .and_then(|c| get(c, self.index))
            .map_err(|e| e.at_row(self.index))
    }

    /// The value of numeric column `name` (`int32`, `int64`, `float32` or `float64`)
    /// as `f64`, `None` when null.
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not numeric.
    pub fn f64(&self, name: &str) -> Result<Option<f64>, StageError> {
        self.read(name, Column::f64_at)
    }

    /// The value of integer column `name` (`int32` or `int64`) as `i64`, `None` when
    /// null.
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not an integer column.
    pub fn i64(&self, name: &str) -> Result<Option<i64>, StageError> {
        self.read(name, Column::i64_at)
    }

    /// The value of utf8 column `name`, `None` when null. Only this row's bytes are
    /// checked to be UTF-8.
    ///
    /// # Errors
    ///
    /// If there is no such column, it is not `utf8`, or this row is not UTF-8.
    pub fn str(&self, name: &str) -> Result<Option<&'a str>, StageError> {
        self.read(name, Column::str_at)
    }

    /// The value of boolean column `name`, `None` when null.
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is not `boolean`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, StageError> {
        self.read(name, Column::bool_at)
    }

    /// The value of column `name` as milliseconds since the Unix epoch, `None` when
    /// null. Accepts `timestamp-ms` and `int64` columns, since event times often
    /// arrive as plain integers.
    ///
    /// # Errors
    ///
    /// If there is no such column, or it is neither `timestamp-ms` nor `int64`.
    pub fn timestamp_ms(&self, name: &str) -> Result<Option<i64>, StageError> {
        self.read(name, Column::timestamp_ms_at)
    }
}
