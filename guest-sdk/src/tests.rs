//! Behaviour of the hand-written types on small literal batches. Nothing here calls a
//! host import: off wasm those are unreachable stubs.

use crate::{Batch, Column, DataType, StageError};

fn clicks() -> Batch {
    Batch::new(vec![
        Column::utf8_opt("user_id", [Some("u1"), None, Some("ü3"), Some("")]),
        Column::f64_opt("price", [Some(9.5), None, Some(120.0), Some(0.0)]),
        Column::i64("dwell_ms", vec![10, 0, 250, 7]),
        Column::i32_opt("qty", [Some(1), Some(2), None, Some(4)]),
        Column::f32("score", vec![0.5, 1.5, 2.5, 3.5]),
        Column::timestamp_ms("ts", vec![1_000, 2_000, 3_000, 4_000]),
        Column::bool_opt("clicked", [Some(true), Some(false), None, Some(true)]),
    ])
    .unwrap()
}

#[test]
fn primitive_views_read_values_and_nulls() {
    let b = clicks();
    let price = b.f64s("price").unwrap();
    assert_eq!(price.len(), 4);
    assert_eq!(price.get(0), Some(9.5));
    assert_eq!(price.get(1), None);
    assert!(price.is_null(1));
    assert!(!price.is_null(0));
    assert!(!price.is_null(99), "out of range is not null");
    assert_eq!(price.get(99), None);
    assert_eq!(price.null_count(), 1);
    assert_eq!(price.values().len(), 4);
    assert_eq!(
        price.iter().collect::<Vec<_>>(),
        [Some(9.5), None, Some(120.0), Some(0.0)]
    );

    let dwell = b.i64s("dwell_ms").unwrap();
    assert_eq!(dwell.values(), &[10, 0, 250, 7]);
    assert_eq!(dwell.null_count(), 0);

    assert_eq!(b.i32s("qty").unwrap().get(2), None);
    assert_eq!(b.f32s("score").unwrap().get(3), Some(3.5));
    assert_eq!(b.timestamps_ms("ts").unwrap().get(1), Some(2_000));
}

#[test]
fn bool_and_str_views() {
    let b = clicks();
    let clicked = b.bools("clicked").unwrap();
    assert_eq!(
        clicked.iter().collect::<Vec<_>>(),
        [Some(true), Some(false), None, Some(true)]
    );
    assert_eq!(clicked.null_count(), 1);

    let users = b.strs("user_id").unwrap();
    assert_eq!(
        users.iter().collect::<Vec<_>>(),
        [Some("u1"), None, Some("ü3"), Some("")]
    );
    assert!(users.is_null(1));
    assert_eq!(users.get(4), None);
}

#[test]
fn views_name_the_column_and_both_types() {
    let b = clicks();
    let err = b.f64s("dwell_ms").unwrap_err();
    assert_eq!(err.message, "column `dwell_ms` is int64, wanted float64");
    assert_eq!(err.row, None);

    let err = b.strs("price").unwrap_err();
    assert_eq!(err.message, "column `price` is float64, wanted utf8");

    let err = b.f64s_lossy("user_id").unwrap_err();
    assert!(err.message.contains("`user_id` is utf8"), "{err}");

    let err = b.i64s("nope").unwrap_err();
    assert!(err.message.contains("no column named `nope`"), "{err}");
    assert!(
        err.message.contains("user_id, price"),
        "lists the columns: {err}"
    );
}

#[test]
fn lossy_view_accepts_every_numeric_type() {
    let b = clicks();
    for (name, want) in [
        ("price", DataType::Float64),
        ("dwell_ms", DataType::Int64),
        ("qty", DataType::Int32),
        ("score", DataType::Float32),
    ] {
        let v = b.f64s_lossy(name).unwrap();
        assert_eq!(v.data_type(), want);
        assert_eq!(v.len(), 4);
        assert_eq!(v.iter().collect::<Vec<_>>(), v.map(|x| x));
    }
    let qty = b.f64s_lossy("qty").unwrap();
    assert_eq!(qty.map(|x| x), [Some(1.0), Some(2.0), None, Some(4.0)]);
    assert!(qty.is_null(2));
    assert_eq!(qty.null_count(), 1);
    assert_eq!(b.f64s_lossy("dwell_ms").unwrap().get(2), Some(250.0));
    assert!(b.f64s_lossy("ts").is_err(), "timestamps are not numbers");
}

#[test]
fn invalid_utf8_is_refused_when_the_view_is_made() {
    let c = Column::from_parts(
        "s".into(),
        2,
        crate::column::Values::Utf8 {
            offsets: vec![0, 1, 3],
            data: vec![b'a', 0xff, 0xfe],
        },
        None,
    )
    .unwrap();
    let err = c.strs().unwrap_err();
    assert!(err.message.contains("`s`: not valid UTF-8"), "{err}");

    // Valid bytes, but an offset in the middle of "é".
    let c = Column::from_parts(
        "s".into(),
        2,
        crate::column::Values::Utf8 {
            offsets: vec![0, 1, 2],
            data: "é".as_bytes().to_vec(),
        },
        None,
    )
    .unwrap();
    let err = c.strs().unwrap_err();
    assert!(err.message.contains("splits a UTF-8 character"), "{err}");
}

#[test]
fn opt_builders_pack_validity_lsb_first_and_drop_it_without_nulls() {
    let c = Column::i64_opt("x", (0..10).map(|i| (i != 1 && i != 9).then_some(i)));
    let (_, _, validity) = c.clone().into_parts();
    assert_eq!(validity, Some(vec![0b1111_1101, 0b0000_0001]));
    assert_eq!(c.null_count(), 2);

    let c = Column::f64_opt("x", [Some(1.0), Some(2.0)]);
    assert_eq!(c.into_parts().2, None, "no nulls means no bitmap");

    let c = Column::bool("b", [true, false, true]);
    let (_, values, validity) = c.into_parts();
    assert_eq!(values, crate::column::Values::Boolean(vec![0b101]));
    assert_eq!(validity, None);
}

#[test]
fn utf8_builders_lay_out_one_buffer_with_offsets() {
    let c = Column::utf8_opt("s", [Some("ab"), None, Some("c")]);
    assert_eq!(c.data_type(), DataType::Utf8);
    let (_, values, validity) = c.into_parts();
    assert_eq!(
        values,
        crate::column::Values::Utf8 {
            offsets: vec![0, 2, 2, 3],
            data: b"abc".to_vec()
        }
    );
    assert_eq!(validity, Some(vec![0b101]));

    let owned = vec![String::from("x"), String::from("yz")];
    let c = Column::utf8("s", &owned);
    assert_eq!(c.len(), 2);
    assert_eq!(c.strs().unwrap().get(1), Some("yz"));
}

#[test]
fn every_builder_reports_its_type() {
    let cases = [
        (Column::f64("a", vec![1.0]), DataType::Float64),
        (Column::f32_opt("a", [None]), DataType::Float32),
        (Column::i64("a", vec![1]), DataType::Int64),
        (Column::i32("a", vec![1]), DataType::Int32),
        (
            Column::timestamp_ms_opt("a", [Some(1)]),
            DataType::TimestampMs,
        ),
        (Column::bool_opt("a", [None]), DataType::Boolean),
        (Column::utf8("a", ["x"]), DataType::Utf8),
    ];
    for (c, t) in cases {
        assert_eq!(c.data_type(), t);
        assert_eq!(c.len(), 1);
    }
}

#[test]
fn new_refuses_ragged_and_duplicate_columns() {
    let err = Batch::new(vec![
        Column::i32("a", vec![1, 2]),
        Column::i32("b", vec![1]),
    ])
    .unwrap_err();
    assert_eq!(err.message, "column `b` has 1 rows, the batch has 2");

    let err = Batch::new(vec![Column::i32("a", vec![1]), Column::f64("a", vec![1.0])]).unwrap_err();
    assert_eq!(err.message, "two columns are named `a`");

    let empty = Batch::new(vec![]).unwrap();
    assert_eq!(empty, Batch::empty());
    assert_eq!(empty.num_rows(), 0);
}

#[test]
fn with_column_checks_length_then_replaces_or_appends() {
    let b = clicks();
    let err = b
        .clone()
        .with_column(Column::f64("short", vec![1.0]))
        .unwrap_err();
    assert_eq!(err.message, "column `short` has 1 rows, the batch has 4");

    let b = b
        .with_column(Column::i32("bucket", vec![0, 1, 2, 3]))
        .unwrap();
    assert_eq!(b.columns().last().unwrap().name(), "bucket");
    let n = b.columns().len();

    // Same name: replaced in place, type may change.
    let b = b
        .with_column(Column::utf8("price", ["a", "b", "c", "d"]))
        .unwrap();
    assert_eq!(b.columns().len(), n);
    assert_eq!(b.columns()[1].data_type(), DataType::Utf8);

    let b = b.without_column("price").without_column("absent");
    assert_eq!(b.columns().len(), n - 1);
    assert!(b.column("price").is_none());
    assert_eq!(b.num_rows(), 4);
}

#[test]
fn column_by_column_from_empty() {
    let b = Batch::empty()
        .with_column(Column::i64("a", vec![1, 2, 3]))
        .unwrap()
        .with_column(Column::bool("b", [true, true, false]))
        .unwrap();
    assert_eq!(b.num_rows(), 3);
    assert!(b.with_column(Column::i64("c", vec![1])).is_err());
}

#[test]
fn rows_read_by_name_and_any_numeric_type() {
    let b = clicks();
    let rows: Vec<_> = b.rows().collect();
    assert_eq!(rows.len(), 4);
    let r = rows[2];
    assert_eq!(r.index(), 2);
    assert_eq!(r.str("user_id").unwrap(), Some("ü3"));
    assert_eq!(r.f64("price").unwrap(), Some(120.0));
    assert_eq!(r.f64("dwell_ms").unwrap(), Some(250.0));
    assert_eq!(r.f64("qty").unwrap(), None);
    assert_eq!(r.f64("score").unwrap(), Some(2.5));
    assert_eq!(r.i64("dwell_ms").unwrap(), Some(250));
    assert_eq!(rows[1].i64("qty").unwrap(), Some(2));
    assert_eq!(r.bool("clicked").unwrap(), None);
    assert_eq!(rows[0].bool("clicked").unwrap(), Some(true));
    assert_eq!(r.timestamp_ms("ts").unwrap(), Some(3_000));
    assert_eq!(r.timestamp_ms("dwell_ms").unwrap(), Some(250));
    assert_eq!(rows[1].str("user_id").unwrap(), None);
}

#[test]
fn row_errors_carry_the_row() {
    let b = clicks();
    let r = b.rows().nth(3).unwrap();
    for err in [
        r.f64("user_id").unwrap_err(),
        r.i64("price").unwrap_err(),
        r.str("price").unwrap_err(),
        r.bool("qty").unwrap_err(),
        r.timestamp_ms("price").unwrap_err(),
        r.f64("missing").unwrap_err(),
    ] {
        assert_eq!(err.row, Some(3), "{err}");
    }
    assert_eq!(
        r.str("price").unwrap_err().to_string(),
        "row 3: column `price` is float64, wanted utf8"
    );
}

#[test]
fn map_rows_stamps_the_row_only_when_missing() {
    let b = clicks();
    let ok = b
        .map_rows(|row| Ok(row.f64("price")?.unwrap_or(-1.0)))
        .unwrap();
    assert_eq!(ok, [9.5, -1.0, 120.0, 0.0]);

    let err = b
        .map_rows(|row| match row.index() {
            2 => Err(StageError::new("bad record").transient()),
            _ => Ok(()),
        })
        .unwrap_err();
    assert_eq!(err.row, Some(2));
    assert!(err.transient);

    let err = b
        .map_rows(|_| Err::<(), _>(StageError::new("blame row 0").at_row(0)))
        .unwrap_err();
    assert_eq!(err.row, Some(0), "an explicit row is kept");
}

#[test]
fn stage_error_display() {
    assert_eq!(StageError::new("x").to_string(), "x");
    assert_eq!(
        StageError::new("x").at_row(7).transient().to_string(),
        "row 7: x (transient)"
    );
}

#[test]
fn map_and_map_or_agree_with_iter_for_every_null_pattern() {
    // Lengths around the 8-row bitmap bytes, and null patterns from none to all.
    for len in [0usize, 1, 7, 8, 9, 16, 17, 100] {
        for every in [0usize, 1, 2, 3, 8] {
            let values: Vec<Option<i64>> = (0..len)
                .map(|i| {
                    let null = every == 1 || (every > 1 && i % every == 0);
                    (!null).then_some(i as i64 * 3 - 7)
                })
                .collect();
            let column = Column::i64_opt("n", values.iter().copied());
            let view = column.i64s().unwrap();
            let want: Vec<Option<i64>> = view.iter().map(|v| v.map(|x| x + 1)).collect();
            let mut calls = 0;
            let got = view.map(|v| {
                calls += 1;
                v.map(|x| x + 1)
            });
            assert_eq!(got, want, "len {len}, every {every}");
            assert_eq!(calls, len, "map calls f once per row");
            let or = view.map_or(i64::MIN, |x| x + 1);
            let want_or: Vec<i64> = want.iter().map(|v| v.unwrap_or(i64::MIN)).collect();
            assert_eq!(or, want_or, "len {len}, every {every}");
            let lossy = column.f64s_lossy().unwrap();
            let got: Vec<Option<f64>> = lossy.map(|v| v);
            assert_eq!(
                got,
                values
                    .iter()
                    .map(|v| v.map(|x| x as f64))
                    .collect::<Vec<_>>()
            );
            let or = lossy.map_or(0.5, |x| x * 2.0);
            let want: Vec<f64> = values
                .iter()
                .map(|v| v.map_or(0.5, |x| x as f64 * 2.0))
                .collect();
            assert_eq!(or, want);
        }
    }
}
