use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;

use super::*;

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

#[test]
fn every_supported_type_round_trips_with_nulls() {
    let b = batch(vec![
        (
            "b",
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        ),
        (
            "i32",
            Arc::new(Int32Array::from(vec![Some(1), Some(-2), None])),
        ),
        (
            "i64",
            Arc::new(Int64Array::from(vec![None, Some(i64::MAX), Some(i64::MIN)])),
        ),
        (
            "f32",
            Arc::new(Float32Array::from(vec![Some(1.5), None, Some(f32::NAN)])),
        ),
        (
            "f64",
            Arc::new(Float64Array::from(vec![Some(0.1), Some(-0.0), None])),
        ),
        (
            "s",
            Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])),
        ),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_700_000_000_000),
                None,
                Some(0),
            ])),
        ),
    ]);
    let back = from_wit(to_wit(&b).unwrap().to_owned_batch()).unwrap();
    assert_eq!(back.num_rows(), 3);
    for (a, z) in b.columns().iter().zip(back.columns()) {
        assert_eq!(a.to_data().data_type(), z.to_data().data_type());
        // NaN != NaN: compare the bit patterns through the debug rendering.
        assert_eq!(format!("{a:?}"), format!("{z:?}"));
    }
}

#[test]
fn sliced_arrays_cross_with_their_own_offsets() {
    let s: ArrayRef = Arc::new(StringArray::from(vec![
        Some("aa"),
        None,
        Some("bbb"),
        Some("c"),
    ]));
    let f: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(1.0),
        None,
        Some(3.0),
        Some(4.0),
    ]));
    let b = batch(vec![("s", s), ("f", f)]).slice(1, 3);
    let wit = to_wit(&b).unwrap().to_owned_batch();
    match &wit.columns[0].values {
        ColumnValues::Utf8(u) => {
            assert_eq!(u.offsets, vec![0, 0, 3, 4]);
            assert_eq!(u.data, b"bbbc");
        }
        other => panic!("expected utf8, got {other:?}"),
    }
    assert_eq!(wit.columns[0].validity, Some(vec![0b110]));
    let back = from_wit(wit).unwrap();
    assert_eq!(
        format!("{:?}", back.column(0)),
        format!("{:?}", b.column(0))
    );
    assert_eq!(
        format!("{:?}", back.column(1)),
        format!("{:?}", b.column(1))
    );
}

#[test]
fn unsupported_types_are_named() {
    let b = batch(vec![(
        "d",
        Arc::new(arrow::array::Date32Array::from(vec![1])) as ArrayRef,
    )]);
    let err = to_wit(&b).unwrap_err().to_string();
    assert!(err.contains("column `d` has type Date32"), "{err}");
}

#[test]
fn malformed_guest_batches_are_refused() {
    let col = |values| WitColumn {
        name: "x".into(),
        values,
        validity: None,
    };
    let short = WitBatch {
        num_rows: 3,
        columns: vec![col(ColumnValues::Float64(vec![1.0]))],
    };
    assert_eq!(
        from_wit(short).unwrap_err().to_string(),
        "column `x` has 1 values but the batch has 3 rows"
    );

    let bad_utf8 = WitBatch {
        num_rows: 1,
        columns: vec![col(ColumnValues::Utf8(Utf8Values {
            offsets: vec![0, 2],
            data: vec![0xff, 0xfe],
        }))],
    };
    assert!(
        from_wit(bad_utf8)
            .unwrap_err()
            .to_string()
            .contains("column `x`")
    );

    let bad_offsets = WitBatch {
        num_rows: 1,
        columns: vec![col(ColumnValues::Utf8(Utf8Values {
            offsets: vec![0, 9],
            data: vec![b'a'],
        }))],
    };
    assert!(from_wit(bad_offsets).is_err());

    // Offsets that decrease, or that split a character, are refused (not a panic).
    let strings = |offsets: Vec<i32>, data: &[u8]| WitBatch {
        num_rows: offsets.len() as u32 - 1,
        columns: vec![col(ColumnValues::Utf8(Utf8Values {
            offsets,
            data: data.to_vec(),
        }))],
    };
    assert_eq!(
        from_wit(strings(vec![0, 2, 1], b"ab"))
            .unwrap_err()
            .to_string(),
        "column `x`: offsets are negative or decreasing"
    );
    assert_eq!(
        from_wit(strings(vec![-1, 1], b"ab"))
            .unwrap_err()
            .to_string(),
        "column `x`: offsets are negative or decreasing"
    );
    assert_eq!(
        from_wit(strings(vec![0, 1, 3], "éa".as_bytes()))
            .unwrap_err()
            .to_string(),
        "column `x`: offset 1 splits a UTF-8 character"
    );
    let ok = from_wit(strings(vec![0, 2, 3], "éa".as_bytes())).unwrap();
    assert_eq!(
        format!("{:?}", ok.column(0)),
        format!("{:?}", StringArray::from(vec!["é", "a"]))
    );

    let short_bitmap = WitBatch {
        num_rows: 9,
        columns: vec![WitColumn {
            name: "x".into(),
            values: ColumnValues::Int32(vec![0; 9]),
            validity: Some(vec![0xff]),
        }],
    };
    assert!(
        from_wit(short_bitmap)
            .unwrap_err()
            .to_string()
            .contains("validity bitmap has 1 bytes, 2 needed")
    );

    let dup = WitBatch {
        num_rows: 1,
        columns: vec![
            col(ColumnValues::Int32(vec![1])),
            col(ColumnValues::Int32(vec![2])),
        ],
    };
    assert_eq!(
        from_wit(dup).unwrap_err().to_string(),
        "column `x` appears twice"
    );
}

fn arb_column(rows: usize) -> impl Strategy<Value = ArrayRef> {
    prop_oneof![
        prop::collection::vec(proptest::option::of(any::<bool>()), rows)
            .prop_map(|v| Arc::new(BooleanArray::from(v)) as ArrayRef),
        prop::collection::vec(proptest::option::of(any::<i32>()), rows)
            .prop_map(|v| Arc::new(Int32Array::from(v)) as ArrayRef),
        prop::collection::vec(proptest::option::of(any::<i64>()), rows)
            .prop_map(|v| Arc::new(Int64Array::from(v)) as ArrayRef),
        prop::collection::vec(proptest::option::of(-1e6f32..1e6), rows)
            .prop_map(|v| Arc::new(Float32Array::from(v)) as ArrayRef),
        prop::collection::vec(
            proptest::option::of(any::<f64>().prop_filter("no NaN", |f| !f.is_nan())),
            rows
        )
        .prop_map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        prop::collection::vec(proptest::option::of(".{0,12}"), rows)
            .prop_map(|v| Arc::new(StringArray::from(v)) as ArrayRef),
        prop::collection::vec(proptest::option::of(any::<i64>()), rows)
            .prop_map(|v| Arc::new(TimestampMillisecondArray::from(v)) as ArrayRef),
    ]
}

fn arb_batch() -> impl Strategy<Value = RecordBatch> {
    (0usize..70, 1usize..6)
        .prop_flat_map(|(rows, cols)| (prop::collection::vec(arb_column(rows), cols), 0..=rows))
        .prop_map(|(columns, cut)| {
            let named: Vec<(String, ArrayRef)> = columns
                .into_iter()
                .enumerate()
                .map(|(i, a)| (format!("c{i}"), a))
                .collect();
            let fields: Vec<Field> = named
                .iter()
                .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                .collect();
            let b = RecordBatch::try_new(
                Arc::new(Schema::new(fields)),
                named.into_iter().map(|(_, a)| a).collect(),
            )
            .unwrap();
            // Also exercise arrays that start mid-buffer.
            b.slice(cut / 2, b.num_rows() - cut / 2)
        })
}

proptest! {
    #[test]
    fn random_batches_round_trip(b in arb_batch()) {
        let back = from_wit(to_wit(&b).unwrap().to_owned_batch()).unwrap();
        prop_assert_eq!(back.num_rows(), b.num_rows());
        prop_assert_eq!(back.schema().fields().len(), b.schema().fields().len());
        for (a, z) in b.columns().iter().zip(back.columns()) {
            prop_assert_eq!(a.data_type(), z.data_type());
            prop_assert_eq!(a.as_ref(), z.as_ref());
        }
        prop_assert!(back.schema().fields().iter().all(|f| f.data_type() != &DataType::Null));
    }
}

#[test]
fn a_projection_converts_only_the_named_columns_in_their_order() {
    let b = RecordBatch::try_from_iter(vec![
        ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ("b", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        (
            "c",
            Arc::new(Float64Array::from(vec![0.5, 1.5])) as ArrayRef,
        ),
    ])
    .unwrap();
    let columns = ["c".to_owned(), "a".to_owned()];
    let wit = to_wit_projected(&b, &columns).unwrap().to_owned_batch();
    let back = from_wit(wit).unwrap();
    let schema = back.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["c", "a"]);
    assert_eq!(back.columns(), b.project(&[2, 0]).unwrap().columns());
    let err = to_wit_projected(&b, &["d".to_owned()]).unwrap_err();
    assert_eq!(err.to_string(), "the batch has no column `d`");
}
