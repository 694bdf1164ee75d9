//! `[stage.filter]`: keep the rows that match; count the others per predicate and,
//! on request, keep them as dead letters.
//!
//! ```toml
//! [stage.filter]
//! dead_letter = true          # dropped rows go to the dead-letter store (default: false, discarded)
//! all = [                     # or `any = [...]`
//!   { not_null = ["label"] },
//!   { range = { column = "price", min = 0, max = 1000, max_inclusive = false } },
//!   { in = { column = "country", values = ["us", "fr", "de"] } },
//!   { equals = { column = "kind", value = "click" } },
//!   { any = [{ equals = { column = "a", value = 1 } }, { equals = { column = "b", value = 1 } }] },
//! ]
//! ```
//!
//! Each predicate is evaluated with Arrow kernels (`is_not_null`, `cmp::gt_eq`,
//! `cmp::eq`, `and`/`or`) into a mask; the kept rows are taken with the `filter`
//! kernel. A null compares as *no match*: a null price fails `range`, a null
//! country fails `in` (use `not_null` to say so explicitly, or `any` with it).
//!
//! Every dropped row is counted once, under the first top-level predicate of `all`
//! it fails (`filter:not_null(label)`, `filter:range(price)`), so the counters add
//! up to the rows dropped; with `any`, a dropped row failed them all and is counted
//! as `filter:any`. With `dead_letter = true` each dropped row is also written as a
//! dead letter whose reason is that counter name and whose record is the row as
//! JSON: this is how "missing label" rows are kept for inspection while "corrupt"
//! ones are told apart by their reason.

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, Scalar};
use arrow::compute::kernels::{boolean, cmp};
use arrow::compute::{cast, filter_record_batch, is_not_null};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::{ScalarValue, nulls_false};
use crate::batch::json::{JsonOptions, rows_as_objects};
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::{DeadLetter, Emitter, NodeError, Operator};

/// A filter stage's configuration: exactly one of `all` and `any`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Keep rows matching every predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Predicate>>,
    /// Keep rows matching at least one predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Predicate>>,
    /// Send dropped rows to the dead-letter store instead of discarding them.
    /// Default: false.
    #[serde(default)]
    pub dead_letter: bool,
}

/// One condition on a row (a table with exactly one key, the predicate's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predicate {
    /// Every listed column is non-null.
    NotNull(Vec<String>),
    /// A numeric column within bounds.
    Range(Range),
    /// A column equal to one of a set of values.
    In(InSet),
    /// A column equal to a value.
    Equals(Equals),
    /// Every nested predicate holds.
    All(Vec<Predicate>),
    /// At least one nested predicate holds.
    Any(Vec<Predicate>),
}

/// `range`: at least one of `min` and `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// The numeric column (cast to Float64 for the comparison).
    pub column: String,
    /// Lower bound. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Upper bound. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Whether `min` itself passes. Default: true ([`default_inclusive`]).
    #[serde(default = "default_inclusive")]
    pub min_inclusive: bool,
    /// Whether `max` itself passes. Default: true ([`default_inclusive`]).
    #[serde(default = "default_inclusive")]
    pub max_inclusive: bool,
}

/// Bounds are inclusive unless said otherwise, as in most query languages' BETWEEN.
pub fn default_inclusive() -> bool {
    true
}

/// `in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InSet {
    /// The column.
    pub column: String,
    /// The accepted values, cast to the column's type; not empty.
    pub values: Vec<ScalarValue>,
}

/// `equals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Equals {
    /// The column.
    pub column: String,
    /// The value, cast to the column's type.
    pub value: ScalarValue,
}

impl Predicate {
    /// The predicate's name in counters and dead letters: `range(price)`.
    pub fn label(&self) -> String {
        match self {
            Self::NotNull(c) => format!("not_null({})", c.join(",")),
            Self::Range(r) => format!("range({})", r.column),
            Self::In(i) => format!("in({})", i.column),
            Self::Equals(e) => format!("equals({})", e.column),
            Self::All(_) => "all".to_owned(),
            Self::Any(_) => "any".to_owned(),
        }
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        match self {
            Self::NotNull(c) if c.is_empty() => Err(SpecError::invalid(
                format!("{key}.not_null"),
                "is empty; list at least one column",
            )),
            Self::Range(r) => match (r.min, r.max) {
                (None, None) => Err(SpecError::invalid(
                    format!("{key}.range"),
                    "needs `min`, `max` or both",
                )),
                (Some(lo), Some(hi)) if lo > hi => Err(SpecError::invalid(
                    format!("{key}.range.min"),
                    format!("{lo} is greater than max {hi}"),
                )),
                _ => Ok(()),
            },
            Self::In(i) if i.values.is_empty() => Err(SpecError::invalid(
                format!("{key}.in.values"),
                "is empty; no row could pass",
            )),
            Self::All(p) | Self::Any(p) => check_list(&format!("{key}.{}", self.label()), p),
            _ => Ok(()),
        }
    }

    /// The rows of `batch` that match, as a mask without nulls.
    ///
    /// # Errors
    /// [`NodeError::Config`] for a missing column or a value of the wrong type.
    pub fn eval(&self, batch: &RecordBatch) -> Result<BooleanArray, NodeError> {
        self.bind(batch.schema_ref())?.eval(batch)
    }

    /// The predicate with its columns resolved against `schema`: each column
    /// found and of a type the predicate can compare, each value cast to its
    /// column's type once.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the predicate and the column: missing, not
    /// numeric for `range`, or a value that cannot be read as the column's type.
    pub fn bind(&self, schema: &Schema) -> Result<Bound, NodeError> {
        let what = format!("filter {}", self.label());
        let find = |name: &str| {
            schema.index_of(name).map_err(|_| {
                let have: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| format!("`{}`", f.name()))
                    .collect();
                NodeError::Config(format!(
                    "{what}: the input has no column `{name}` (it has {})",
                    have.join(", ")
                ))
            })
        };
        let scalar = |col: usize, v: &ScalarValue| {
            v.to_array(schema.field(col).data_type())
                .map(Scalar::new)
                .map_err(|e| NodeError::Config(format!("{what}: {e}")))
        };
        Ok(match self {
            Self::NotNull(cols) => {
                Bound::NotNull(cols.iter().map(|c| find(c)).collect::<Result<_, _>>()?)
            }
            Self::Range(r) => {
                let col = find(&r.column)?;
                let t = schema.field(col).data_type();
                if !t.is_numeric() && !t.is_temporal() {
                    return Err(NodeError::Config(format!(
                        "{what}: column `{}` is {t}, not numeric",
                        r.column
                    )));
                }
                Bound::Range {
                    col,
                    min: r.min.map(|v| (v, r.min_inclusive)),
                    max: r.max.map(|v| (v, r.max_inclusive)),
                }
            }
            Self::In(i) => {
                let col = find(&i.column)?;
                Bound::In {
                    col,
                    values: i
                        .values
                        .iter()
                        .map(|v| scalar(col, v))
                        .collect::<Result<_, _>>()?,
                }
            }
            Self::Equals(e) => {
                let col = find(&e.column)?;
                Bound::Equals {
                    col,
                    value: scalar(col, &e.value)?,
                }
            }
            Self::All(ps) => Bound::All(
                ps.iter()
                    .map(|p| p.bind(schema))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Any(ps) => Bound::Any(
                ps.iter()
                    .map(|p| p.bind(schema))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// A [`Predicate`] bound to an input schema ([`Predicate::bind`]): columns by
/// position, values already of their column's type.
#[derive(Debug)]
pub enum Bound {
    /// Every listed column is non-null.
    NotNull(Vec<usize>),
    /// A numeric column within bounds (value, inclusive).
    Range {
        /// The column.
        col: usize,
        /// Lower bound and whether it passes.
        min: Option<(f64, bool)>,
        /// Upper bound and whether it passes.
        max: Option<(f64, bool)>,
    },
    /// A column equal to one of the values.
    In {
        /// The column.
        col: usize,
        /// The values, of the column's type.
        values: Vec<Scalar<ArrayRef>>,
    },
    /// A column equal to the value.
    Equals {
        /// The column.
        col: usize,
        /// The value, of the column's type.
        value: Scalar<ArrayRef>,
    },
    /// Every nested predicate holds.
    All(Vec<Bound>),
    /// At least one nested predicate holds.
    Any(Vec<Bound>),
}

impl Bound {
    /// The rows of `batch` (of the schema it was bound to) that match, as a
    /// mask without nulls.
    ///
    /// # Errors
    /// A kernel refusing a value ([`NodeError::kernel`]).
    pub fn eval(&self, batch: &RecordBatch) -> Result<BooleanArray, NodeError> {
        let k = NodeError::kernel;
        let n = batch.num_rows();
        let mask = match self {
            Self::NotNull(cols) => {
                let mut m = BooleanArray::from(vec![true; n]);
                for &c in cols {
                    m = boolean::and(&m, &is_not_null(batch.column(c)).map_err(k)?).map_err(k)?;
                }
                m
            }
            Self::Range { col, min, max } => {
                let x = cast(batch.column(*col), &DataType::Float64).map_err(k)?;
                let mut m = BooleanArray::from(vec![true; n]);
                if let Some((lo, inclusive)) = *min {
                    let s = Scalar::new(arrow::array::Float64Array::from(vec![lo]));
                    let c = if inclusive {
                        cmp::gt_eq(&x, &s)
                    } else {
                        cmp::gt(&x, &s)
                    }
                    .map_err(k)?;
                    m = boolean::and(&m, &nulls_false(&c)).map_err(k)?;
                }
                if let Some((hi, inclusive)) = *max {
                    let s = Scalar::new(arrow::array::Float64Array::from(vec![hi]));
                    let c = if inclusive {
                        cmp::lt_eq(&x, &s)
                    } else {
                        cmp::lt(&x, &s)
                    }
                    .map_err(k)?;
                    m = boolean::and(&m, &nulls_false(&c)).map_err(k)?;
                }
                m
            }
            Self::In { col, values } => {
                let mut m = BooleanArray::from(vec![false; n]);
                for v in values {
                    let c = cmp::eq(batch.column(*col), v).map_err(k)?;
                    m = boolean::or(&m, &nulls_false(&c)).map_err(k)?;
                }
                m
            }
            Self::Equals { col, value } => {
                nulls_false(&cmp::eq(batch.column(*col), value).map_err(k)?)
            }
            Self::All(ps) => {
                let mut m = BooleanArray::from(vec![true; n]);
                for p in ps {
                    m = boolean::and(&m, &p.eval(batch)?).map_err(k)?;
                }
                m
            }
            Self::Any(ps) => {
                let mut m = BooleanArray::from(vec![false; n]);
                for p in ps {
                    m = boolean::or(&m, &p.eval(batch)?).map_err(k)?;
                }
                m
            }
        };
        Ok(nulls_false(&mask))
    }
}

fn check_list(key: &str, list: &[Predicate]) -> Result<(), SpecError> {
    if list.is_empty() {
        return Err(SpecError::invalid(
            key,
            "is empty; list at least one predicate",
        ));
    }
    for (i, p) in list.iter().enumerate() {
        p.check(&format!("{key}[{i}]"))?;
    }
    Ok(())
}

/// The running filter.
pub struct FilterOp {
    predicates: Vec<Predicate>,
    any: bool,
    labels: Vec<String>,
    dead_letter: bool,
    /// Rows seen so far, for dead letters' positions.
    seen: u64,
    /// The predicates bound to the input: by the plan when it knows the
    /// input's schema, else to the first batch.
    bound: Option<(SchemaRef, Vec<Bound>)>,
}

impl FilterOp {
    /// Checks the configuration (`key` is its key path, e.g. `stage[1].filter`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key.
    pub fn new(key: &str, spec: &FilterSpec) -> Result<Self, SpecError> {
        let (predicates, any) = match (&spec.all, &spec.any) {
            (Some(p), None) => (p.clone(), false),
            (None, Some(p)) => (p.clone(), true),
            _ => {
                return Err(SpecError::invalid(
                    key,
                    "set exactly one of `all` and `any`",
                ));
            }
        };
        check_list(
            &format!("{key}.{}", if any { "any" } else { "all" }),
            &predicates,
        )?;
        let labels = predicates
            .iter()
            .map(|p| format!("filter:{}", p.label()))
            .collect();
        Ok(Self {
            predicates,
            any,
            labels,
            dead_letter: spec.dead_letter,
            seen: 0,
            bound: None,
        })
    }
}

impl FilterOp {
    /// Binds every predicate to `schema`, unless it is bound to it already.
    fn bind(&mut self, schema: &SchemaRef) -> Result<&[Bound], NodeError> {
        let fresh = match &self.bound {
            Some((s, _)) => !crate::node::schema::matches(s, schema),
            None => true,
        };
        if fresh {
            let bound = self
                .predicates
                .iter()
                .map(|p| p.bind(schema))
                .collect::<Result<Vec<_>, _>>()?;
            self.bound = Some((schema.clone(), bound));
        }
        Ok(self.bound.as_ref().map_or(&[], |(_, b)| b.as_slice()))
    }
}

impl Operator for FilterOp {
    /// The input's schema, once every predicate's columns are found in it.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        self.bind(input)?;
        Ok(Some(input.clone()))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        let n = batch.num_rows();
        let first = self.seen;
        self.seen += n as u64;
        let masks = self
            .bind(batch.schema_ref())?
            .iter()
            .map(|p| p.eval(&batch))
            .collect::<Result<Vec<_>, _>>()?;
        let keep = if self.any {
            masks
                .iter()
                .try_fold(BooleanArray::from(vec![false; n]), |m, p| {
                    boolean::or(&m, p)
                })?
        } else {
            masks
                .iter()
                .try_fold(BooleanArray::from(vec![true; n]), |m, p| {
                    boolean::and(&m, p)
                })?
        };
        let kept = keep.true_count();
        if kept == n {
            out.push(batch);
            return Ok(());
        }
        if !self.dead_letter {
            // Dropped by design: the conservation ledger's `filtered`.
            out.count("filtered", (n - kept) as u64);
        }
        // Attribute each dropped row to one reason: the first failing predicate of
        // `all`, or `any` as a whole. Masks are combined with kernels; only the
        // dead letters themselves need the rows one by one.
        let mut undecided = boolean::not(&keep)?;
        let mut reasons: Vec<(String, BooleanArray)> = Vec::new();
        if self.any {
            out.count("filter:any", (n - kept) as u64);
            reasons.push(("filter:any".to_owned(), undecided));
        } else {
            for (mask, label) in masks.iter().zip(&self.labels) {
                let failed = boolean::and_not(&undecided, mask)?;
                let c = failed.true_count();
                if c > 0 {
                    out.count(label, c as u64);
                    undecided = boolean::and_not(&undecided, &failed)?;
                    reasons.push((label.clone(), failed));
                }
            }
        }
        if self.dead_letter {
            let objects = rows_as_objects(&batch, None, JsonOptions::default())
                .map_err(|e| NodeError::Config(format!("filter: dead letters: {e}")))?;
            let mut letters: Vec<(usize, DeadLetter)> = Vec::with_capacity(n - kept);
            for (reason, failed) in &reasons {
                for i in (0..n).filter(|&i| failed.value(i)) {
                    letters.push((
                        i,
                        DeadLetter {
                            fault: crate::node::Fault::Data,
                            reason: reason.clone(),
                            detail: format!("row failed `{}`", &reason["filter:".len()..]),
                            position: format!("row {}", first + i as u64),
                            payload: crate::node::Payload::text_of(
                                serde_json::Value::Object(objects[i].clone()).to_string(),
                            ),
                        },
                    ));
                }
            }
            letters.sort_by_key(|(i, _)| *i);
            for (_, l) in letters {
                out.dead_letter(l);
            }
        }
        out.push(filter_record_batch(&batch, &keep)?);
        Ok(())
    }
}

/// Checked by building: [`FilterOp::new`] refuses a bad configuration, naming the key.
impl OperatorConfig for FilterSpec {
    /// Each batch is processed on its own: a failed call can be made again on
    /// part of it.
    fn row_local(&self) -> bool {
        true
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        FilterOp::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(FilterOp::new(cx.key, self)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use serde_json::json;

    use super::*;
    use crate::ops::testutil::{arc, batch, rows, run};

    fn op(toml: &str) -> FilterOp {
        let spec: FilterSpec = toml::from_str(toml).expect("parses");
        FilterOp::new("stage[0].filter", &spec).expect("valid")
    }

    fn input() -> RecordBatch {
        batch(vec![
            (
                "label",
                arc(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(0),
                    Some(1),
                    Some(0),
                    None,
                ])),
            ),
            (
                "price",
                arc(Float64Array::from(vec![
                    Some(5.0),
                    Some(1.0),
                    Some(100.0),
                    None,
                    Some(0.0),
                    Some(3.0),
                ])),
            ),
            (
                "country",
                arc(StringArray::from(vec![
                    Some("us"),
                    Some("fr"),
                    Some("de"),
                    Some("us"),
                    None,
                    Some("it"),
                ])),
            ),
        ])
    }

    #[test]
    fn all_keeps_matching_rows_and_counts_drops_by_first_failing_predicate() {
        let mut f = op(
            r#"all = [{ not_null = ["label"] }, { range = { column = "price", min = 0, max = 100, max_inclusive = false } }, { in = { column = "country", values = ["us", "de", "fr"] } }]"#,
        );
        let out = run(&mut f, vec![input(), input().slice(0, 0)]);
        assert_eq!(
            rows(&out.batches),
            json!([{"label": 1, "price": 5.0, "country": "us"}])
        );
        let counters: Vec<(&str, u64)> =
            out.counters.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            counters,
            [
                ("filter:in(country)", 1),
                ("filter:not_null(label)", 2),
                ("filter:range(price)", 2),
                // Dropped by design, for the conservation ledger: the sum.
                ("filtered", 5)
            ]
        );
        assert!(out.dead_letters.is_empty());
    }

    #[test]
    fn any_and_equals_and_nested() {
        let mut f = op(
            r#"any = [{ equals = { column = "country", value = "it" } }, { all = [{ equals = { column = "label", value = 0 } }, { range = { column = "price", min = 50 } }] }]"#,
        );
        let out = run(&mut f, vec![input()]);
        assert_eq!(
            rows(&out.batches),
            json!([{"label": 0, "price": 100.0, "country": "de"}, {"label": null, "price": 3.0, "country": "it"}])
        );
        assert_eq!(out.counters.get("filter:any"), Some(&4));
    }

    #[test]
    fn dropped_rows_become_dead_letters_on_request() {
        let mut f = op(
            "dead_letter = true\nall = [{ not_null = [\"label\"] }, { range = { column = \"price\", min = 1, min_inclusive = false } }]",
        );
        let out = run(&mut f, vec![input().slice(0, 3), input().slice(3, 3)]);
        assert_eq!(
            rows(&out.batches),
            json!([{"label": 1, "price": 5.0, "country": "us"}, {"label": 0, "price": 100.0, "country": "de"}])
        );
        let letters: Vec<(&str, &str, &str)> = out
            .dead_letters
            .iter()
            .map(|l| {
                (
                    l.reason.as_str(),
                    l.position.as_str(),
                    l.text().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            letters,
            [
                (
                    "filter:not_null(label)",
                    "row 1",
                    r#"{"label":null,"price":1.0,"country":"fr"}"#
                ),
                (
                    "filter:range(price)",
                    "row 3",
                    r#"{"label":1,"price":null,"country":"us"}"#
                ),
                (
                    "filter:range(price)",
                    "row 4",
                    r#"{"label":0,"price":0.0,"country":null}"#
                ),
                (
                    "filter:not_null(label)",
                    "row 5",
                    r#"{"label":null,"price":3.0,"country":"it"}"#
                ),
            ]
        );
        assert_eq!(out.dead_letters[0].detail, "row failed `not_null(label)`");
        assert_eq!(
            out.counters.get("dead_letter:filter:range(price)"),
            Some(&2)
        );
    }

    #[test]
    fn data_errors_name_the_predicate() {
        let mut f = op(r#"all = [{ equals = { column = "label", value = "x" } }]"#);
        let e = f
            .process(input(), &mut Emitter::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "filter equals(label): the value \"x\" cannot be read as Int64"
        );
        let mut f = op(r#"all = [{ range = { column = "country", min = 1 } }]"#);
        let e = f
            .process(input(), &mut Emitter::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "filter range(country): column `country` is Utf8, not numeric"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |t: &str| match toml::from_str::<FilterSpec>(t) {
            Ok(s) => FilterOp::new("stage[0].filter", &s)
                .err()
                .unwrap()
                .to_string(),
            Err(e) => e.message().to_owned(),
        };
        assert_eq!(
            bad("dead_letter = true"),
            "`stage[0].filter`: set exactly one of `all` and `any`"
        );
        assert_eq!(
            bad(
                r#"all = [{ not_null = ["a"] }, { any = [{ range = { column = "p", min = 2, max = 1 } }] }]"#
            ),
            "`stage[0].filter.all[1].any[0].range.min`: 2 is greater than max 1"
        );
        assert_eq!(
            bad(r#"all = [{ in = { column = "p", values = [] } }]"#),
            "`stage[0].filter.all[0].in.values`: is empty; no row could pass"
        );
        assert_eq!(
            bad(r#"all = [{ range = { column = "p", mni = 1 } }]"#),
            "unknown field `mni`, expected one of `column`, `min`, `max`, `min_inclusive`, `max_inclusive`"
        );
    }
}
