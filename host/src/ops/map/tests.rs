//! Tests of the map stage on literal batches: each transform's values and nulls,
//! an empty batch, data errors naming the transform and column, and config errors
//! naming the key. Kept apart so `mod.rs` holds the operator alone.

use arrow::array::{Float64Array, Int64Array, StringArray};
use serde_json::json;

use super::*;
use crate::ops::testutil::{arc, batch, rows};
use crate::spec::PipelineSpec;

fn op(toml_transforms: &str) -> MapOp {
    let spec: MapSpec =
        toml::from_str(&format!("transforms = [{toml_transforms}]")).expect("parses");
    MapOp::new("stage[0].map", &spec).expect("valid")
}

fn input() -> RecordBatch {
    batch(vec![
        (
            "price",
            arc(Float64Array::from(vec![
                Some(-1.0),
                Some(0.0),
                Some(9.99),
                Some(10.0),
                None,
                Some(120.0),
            ])),
        ),
        (
            "user",
            arc(StringArray::from(vec![
                Some("a"),
                Some("u42"),
                None,
                Some(""),
                Some("foobar"),
                Some("a"),
            ])),
        ),
        (
            "n",
            arc(Int64Array::from(vec![
                Some(0),
                None,
                Some(3),
                Some(-2),
                Some(7),
                Some(1),
            ])),
        ),
    ])
}

#[test]
fn bucketize_counts_boundaries_at_or_below_and_fills_nulls() {
    let m = op(
        r#"{ bucketize = { column = "price", boundaries = [0, 10, 50], output = "b", null_bucket = -1 } },
                  { bucketize = { column = "price", boundaries = [10] } }"#,
    );
    let out = m.apply(input()).unwrap();
    let v = rows(&[out.project(&[0, 3]).unwrap()]);
    assert_eq!(
        v,
        json!([
            {"price": 0, "b": 0}, {"price": 0, "b": 1}, {"price": 0, "b": 1},
            {"price": 1, "b": 2}, {"price": null, "b": -1}, {"price": 1, "b": 3},
        ])
    );
    assert_eq!(out.schema().field(0).data_type(), &DataType::Int32);
}

#[test]
fn numeric_transforms_are_exact_and_keep_nulls() {
    let m = op(r#"{ log1p = { column = "n", output = "l" } },
                  { clip = { column = "price", min = 0, max = 10, output = "c" } },
                  { standardize = { column = "n", mean = 1, std = 2 } }"#);
    let out = m.apply(input()).unwrap();
    let v = rows(&[out.project(&[2, 3, 4]).unwrap()]);
    assert_eq!(
        v,
        json!([
            {"n": -0.5, "l": 0.0, "c": 0.0},
            {"n": null, "l": null, "c": 0.0},
            {"n": 1.0, "l": 3f64.ln_1p(), "c": 9.99},
            {"n": -1.5, "l": null, "c": 10.0},   // ln(1 + -2) is NaN, rendered null
            {"n": 3.0, "l": 7f64.ln_1p(), "c": null},
            {"n": 0.0, "l": 1f64.ln_1p(), "c": 10.0},
        ])
    );
}

#[test]
fn hash_bucket_is_fnv1a_mod_n() {
    let m = op(r#"{ hash_bucket = { column = "user", buckets = 1000, output = "h" } }"#);
    let out = m.apply(input()).unwrap();
    let h = out.column_by_name("h").unwrap().as_primitive::<Int32Type>();
    // FNV reference vectors: "a" = 0xaf63dc4c8601ec8c, "" = 0xcbf29ce484222325,
    // "foobar" = 0x85944171f73967e8.
    let expect = |h: u64| Some((h % 1000) as i32);
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        vec![
            expect(0xaf63dc4c8601ec8c),
            expect(fnv1a(FNV_OFFSET, b"u42")),
            None,
            expect(0xcbf29ce484222325),
            expect(0x85944171f73967e8),
            expect(0xaf63dc4c8601ec8c),
        ]
    );
}

#[test]
fn one_hot_sets_one_slot_unknown_goes_to_the_declared_slot_null_to_none() {
    let m = op(
        r#"{ one_hot = { column = "user", vocabulary = ["a", "u42"], unknown_slot = "other", drop_input = true } },
                  { select = ["user_a", "user_u42", "user_other"] }"#,
    );
    let v = rows(&[m.apply(input()).unwrap()]);
    assert_eq!(
        v,
        json!([
            {"user_a": 1, "user_u42": 0, "user_other": 0},
            {"user_a": 0, "user_u42": 1, "user_other": 0},
            {"user_a": 0, "user_u42": 0, "user_other": 0},
            {"user_a": 0, "user_u42": 0, "user_other": 1},
            {"user_a": 0, "user_u42": 0, "user_other": 1},
            {"user_a": 1, "user_u42": 0, "user_other": 0},
        ])
    );
}

#[test]
fn fill_null_cast_rename_drop() {
    let m = op(r#"{ fill_null = { column = "n", value = 0 } },
                  { fill_null = { column = "user", value = "?" } },
                  { cast = { column = "n", to = "float64", output = "nf" } },
                  { rename = { from = "user", to = "who" } },
                  { drop = ["price", "n"] }"#);
    let v = rows(&[m.apply(input()).unwrap()]);
    assert_eq!(
        v,
        json!([
            {"who": "a", "nf": 0.0}, {"who": "u42", "nf": 0.0}, {"who": "?", "nf": 3.0},
            {"who": "", "nf": -2.0}, {"who": "foobar", "nf": 7.0}, {"who": "a", "nf": 1.0},
        ])
    );
}

#[test]
fn an_empty_batch_stays_empty_with_the_new_schema() {
    let m = op(
        r#"{ bucketize = { column = "price", boundaries = [1], output = "b" } }, { select = ["b"] }"#,
    );
    let out = m.apply(input().slice(0, 0)).unwrap();
    assert_eq!(out.num_rows(), 0);
    assert_eq!(out.schema().field(0).name(), "b");
}

#[test]
fn data_errors_name_the_transform_and_column() {
    let m = op(r#"{ log1p = { column = "n" } }, { clip = { column = "nope", max = 1 } }"#);
    let e = m.apply(input()).unwrap_err().to_string();
    assert_eq!(
        e,
        "transforms[1] (clip): the batch has no column `nope` (it has `price`, `user`, `n`)"
    );
    let m = op(r#"{ log1p = { column = "user" } }"#);
    assert_eq!(
        m.apply(input()).unwrap_err().to_string(),
        "transforms[0] (log1p): column `user` is Utf8, not numeric"
    );
    let m = op(r#"{ cast = { column = "user", to = "int64" } }"#);
    let e = m.apply(input()).unwrap_err();
    assert_eq!(
        e.fault(),
        crate::node::Fault::Data,
        "a value that does not convert"
    );
    let e = e.to_string();
    assert!(
        e.starts_with("transforms[0] (cast): Cast error: Cannot cast string 'a'"),
        "{e}"
    );
    let m = op(r#"{ cast = { column = "user", to = "int64", strict = false } }"#);
    assert_eq!(m.apply(input()).unwrap().column(1).null_count(), 6);
    let m = op(r#"{ fill_null = { column = "n", value = "x" } }"#);
    assert_eq!(
        m.apply(input()).unwrap_err().to_string(),
        "transforms[0] (fill_null): the value \"x\" cannot be read as Int64"
    );
}

fn spec_err(stage: &str) -> String {
    let text = format!(
        "name = \"p\"\n[[source]]\nname = \"s\"\n[source.jsonl]\npath = \"x\"\nschema = [{{ name = \"a\", type = \"int64\" }}]\n\
         [[stage]]\nname = \"m\"\ninput = \"s\"\n{stage}\n[[sink]]\nname = \"o\"\ninput = \"m\"\n[sink.jsonl]\npath = \"o\"\n"
    );
    match PipelineSpec::from_toml(&text, "p.toml") {
        Ok(spec) => spec.validate().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_key() {
    assert_eq!(
        spec_err("[stage.map]\ntransforms = [{ clip = { column = \"a\", min = \"zero\" } }]"),
        "p.toml: line 11 column 46: `stage[0].map.transforms[0].clip.min`: invalid type: string \"zero\", expected f64"
    );
    assert_eq!(
        spec_err(
            "[stage.map]\ntransforms = [{ bucketize = { column = \"a\", boundaries = [0, 5, 5] } }]"
        ),
        "`stage[0].map.transforms[0].bucketize.boundaries[2]`: 5 is not greater than 5; boundaries must be strictly increasing"
    );
    assert_eq!(
        spec_err(
            "[stage.map]\ntransforms = [{ standardize = { column = \"a\", mean = 0, std = 0 } }]"
        ),
        "`stage[0].map.transforms[0].standardize.std`: is 0; must be finite and greater than 0"
    );
    assert_eq!(
        spec_err("[stage.map]\ntransforms = [{ hash_bucket = { column = \"a\", buckets = 0 } }]"),
        "p.toml: line 11 column 57: `stage[0].map.transforms[0].hash_bucket.buckets`: invalid value: integer `0`, expected a nonzero u32"
    );
    assert_eq!(
        spec_err("[stage.map]\ntransforms = [{ clip = { column = \"a\", mn = 0 } }]"),
        "p.toml: line 11 column 40: `stage[0].map.transforms[0].clip.mn`: unknown field `mn`, expected one of `column`, `min`, `max`, `output`"
    );
    assert_eq!(
        spec_err("[stage.map]\ntransforms = []"),
        "`stage[0].map.transforms`: is empty; list at least one transform"
    );
}
