use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeStringArray, ListArray,
    RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int64Type};

use super::*;
use crate::node::{Durability, Emitter, Lineage, Sink, Source};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

fn rows(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// One column of every type a batch can carry, each with nulls.
fn every_type() -> RecordBatch {
    let n = 7usize;
    let null = |i: usize| i % 3 == 1;
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>((0..n).map(|i| {
        (!null(i)).then(|| {
            (0..i as i64)
                .map(|v| (v != 2).then_some(v))
                .collect::<Vec<_>>()
        })
    }));
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int32, true)),
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (i != 4).then_some(i as i32)),
            )) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Utf8, true)),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (i != 5).then(|| format!("s{i}"))),
            )) as ArrayRef,
        ),
    ]);
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "bool",
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i % 2 == 0)),
            )),
        ),
        (
            "i8",
            Arc::new(Int8Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i as i8 - 3)),
            )),
        ),
        (
            "i16",
            Arc::new(Int16Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i16::MIN + i as i16)),
            )),
        ),
        (
            "i32",
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i32::MAX - i as i32)),
            )),
        ),
        (
            "i64",
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i64::MIN + i as i64)),
            )),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(250 + i as u8 % 5)),
            )),
        ),
        (
            "u16",
            Arc::new(UInt16Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i as u16 * 1000)),
            )),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(u32::MAX - i as u32)),
            )),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(u64::MAX - i as u64)),
            )),
        ),
        (
            "f32",
            Arc::new(Float32Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i as f32 * 0.5 - 1.25)),
            )),
        ),
        (
            "f64",
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(i as f64 / 3.0)),
            )),
        ),
        (
            "utf8",
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (!null(i)).then(|| format!("é{i}\"x,y\n"))),
            )),
        ),
        (
            "large_utf8",
            Arc::new(LargeStringArray::from_iter(
                (0..n).map(|i| (!null(i)).then(|| "z".repeat(i))),
            )),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from_iter(
                (0..n).map(|i| (!null(i)).then(|| vec![i as u8, 0, 255])),
            )),
        ),
        (
            "date",
            Arc::new(Date32Array::from_iter(
                (0..n).map(|i| (!null(i)).then_some(19_723 + i as i32)),
            )),
        ),
        (
            "ts_ms",
            Arc::new(TimestampMillisecondArray::from_iter((0..n).map(|i| {
                (!null(i)).then_some(1_704_067_200_000 + i as i64 * 1001)
            }))),
        ),
        (
            "ts_us_utc",
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    (0..n).map(|i| (!null(i)).then_some(1_704_067_200_000_000 + i as i64)),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "decimal",
            Arc::new(
                Decimal128Array::from_iter(
                    (0..n).map(|i| (!null(i)).then_some(i as i128 * 12345 - 99)),
                )
                .with_precision_and_scale(12, 3)
                .unwrap(),
            ),
        ),
        ("list", Arc::new(list)),
        ("struct", Arc::new(strukt)),
    ];
    RecordBatch::try_from_iter(cols).unwrap()
}

fn spec(path: &Path) -> ParquetSinkSpec {
    ParquetSinkSpec {
        path: path.to_owned(),
        compression: Codec::Zstd,
        compression_level: None,
        row_group_rows: default_row_group_rows(),
        partition_by: None,
        max_open_files: default_max_open_files(),
        resumable: true,
    }
}

fn write_all(spec: &ParquetSinkSpec, batches: &[RecordBatch]) {
    let mut sink = ParquetSink::create(spec, spec.path.clone()).unwrap();
    for b in batches {
        sink.write(b, &Lineage::default()).unwrap();
    }
    sink.close(true).unwrap();
}

fn source(path: &Path, batch_rows: usize) -> ParquetSource {
    let spec = ParquetSourceSpec {
        path: path.to_owned(),
        batch_rows: None,
        columns: None,
    };
    ParquetSource::open(&spec, path, rows(batch_rows)).unwrap()
}

/// Every batch a source gives, with its position.
fn read_all(src: &mut ParquetSource) -> Vec<(RecordBatch, Option<String>)> {
    let mut all = Vec::new();
    loop {
        let mut out = Emitter::default();
        let more = src.next_batch(&mut out).unwrap();
        all.extend(out.take_output().into_iter().map(|(b, _, p)| (b, p)));
        if !more {
            return all;
        }
    }
}

fn concat(batches: &[(RecordBatch, Option<String>)]) -> RecordBatch {
    let v: Vec<RecordBatch> = batches.iter().map(|(b, _)| b.clone()).collect();
    arrow::compute::concat_batches(&v[0].schema(), &v).unwrap()
}

/// Runs `script` with python3 and returns its stdout; `None` (the test skips)
/// when python3 or the module it needs is missing, unless
/// `WEIR_TEST_PYTHON` is set, as `.ci/run` sets it: then that is a failure.
fn python(module: &str, script: &str) -> Option<String> {
    let required = std::env::var_os("WEIR_TEST_PYTHON").is_some();
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(!required, "{python} cannot import {module}");
        eprintln!("skipping: {python} cannot import {module} (pip install {module})");
        return None;
    }
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn every_type_with_nulls_round_trips_through_the_sink_and_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.parquet");
    let input = every_type();
    for codec in [Codec::Zstd, Codec::Snappy, Codec::None] {
        let spec = ParquetSinkSpec {
            compression: codec,
            ..spec(&path)
        };
        write_all(&spec, &[input.slice(0, 3), input.slice(3, 4)]);
        let mut src = source(&path, 2);
        let back = concat(&read_all(&mut src));
        assert_eq!(back.schema().fields(), input.schema().fields(), "{codec:?}");
        assert_eq!(back.columns(), input.columns(), "{codec:?}");
        assert!(!path.with_extension("parquet.weir-log").exists());
    }
    // The codec is what was asked for.
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
            .unwrap(),
    )
    .row_group(0)
    .column(0)
    .compression();
    assert_eq!(meta, parquet::basic::Compression::UNCOMPRESSED);
}

#[test]
fn pyarrow_and_duckdb_read_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.parquet");
    let input = every_type();
    write_all(&spec(&path), std::slice::from_ref(&input));
    let script = format!(
        r#"
import json, pyarrow.parquet as pq
t = pq.read_table({path:?})
def plain(v):
    if isinstance(v, bytes): return list(v)
    if hasattr(v, "isoformat"): return v.isoformat()
    if type(v).__name__ == "Decimal": return str(v)
    if isinstance(v, list): return [plain(x) for x in v]
    if isinstance(v, dict): return {{k: plain(x) for k, x in v.items()}}
    return v
print(json.dumps({{c: [plain(v) for v in t.column(c).to_pylist()] for c in t.column_names}}))
print(json.dumps({{f.name: str(f.type) for f in t.schema}}))
"#,
        path = path.to_str().unwrap()
    );
    let Some(out) = python("pyarrow", &script) else {
        return;
    };
    let mut lines = out.lines();
    let values: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let types: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let col = |c: &str| values[c].clone();
    assert_eq!(
        col("bool"),
        serde_json::json!([true, null, true, false, null, false, true])
    );
    assert_eq!(col("i8"), serde_json::json!([-3, null, -1, 0, null, 2, 3]));
    assert_eq!(col("i64")[0], serde_json::json!(i64::MIN));
    assert_eq!(col("u64")[0], serde_json::json!(u64::MAX));
    assert_eq!(
        col("u8"),
        serde_json::json!([250, null, 252, 253, null, 250, 251])
    );
    assert_eq!(col("f32")[2], serde_json::json!(-0.25));
    assert_eq!(col("f64")[3], serde_json::json!(1.0));
    assert_eq!(col("utf8")[2], serde_json::json!("é2\"x,y\n"));
    assert_eq!(col("large_utf8")[3], serde_json::json!("zzz"));
    assert_eq!(col("binary")[0], serde_json::json!([0, 0, 255]));
    assert_eq!(col("date")[0], serde_json::json!("2024-01-01"));
    assert_eq!(
        col("ts_ms")[2],
        serde_json::json!("2024-01-01T00:00:02.002000")
    );
    assert_eq!(
        col("ts_us_utc")[3],
        serde_json::json!("2024-01-01T00:00:00.000003+00:00")
    );
    assert_eq!(col("decimal")[2], serde_json::json!("24.591"));
    assert_eq!(col("list")[3], serde_json::json!([0, 1, null]));
    assert_eq!(col("list")[1], serde_json::Value::Null);
    assert_eq!(col("struct")[4], serde_json::json!({"a": null, "b": "s4"}));
    assert_eq!(types["u32"], "uint32");
    assert_eq!(types["ts_ms"], "timestamp[ms]");
    assert_eq!(types["decimal"], "decimal128(12, 3)");
    assert_eq!(types["large_utf8"], "large_string");
    for c in ["bool", "i8", "u64", "utf8", "date", "list"] {
        assert_eq!(values[c][1], serde_json::Value::Null, "{c}");
    }

    // DuckDB, a reader with no Arrow schema of its own, agrees on counts and nulls.
    let script = format!(
        r#"
import duckdb
print(duckdb.sql("select count(*), count(i64), sum(i32), count(utf8), max(ts_ms) from read_parquet('{}')").fetchall())
"#,
        path.display()
    );
    if let Some(out) = python("duckdb", &script) {
        let sum: i64 = [0, 2, 3, 5, 6]
            .iter()
            .map(|i| i64::from(i32::MAX) - i)
            .sum();
        assert_eq!(
            out.trim(),
            format!("[(7, 5, {sum}, 5, datetime.datetime(2024, 1, 1, 0, 0, 6, 6000))]")
        );
    }
}

fn partition_input() -> RecordBatch {
    let date = StringArray::from(vec![
        Some("2024-01-02"),
        Some("2024-01-01"),
        None,
        Some("2024-01-02"),
        Some("a/b:c"),
        Some(""),
    ]);
    let user = StringArray::from(vec!["u1", "u2", "u3", "u4", "u5", "u6"]);
    let clicks = Int64Array::from(vec![1, 2, 3, 4, 5, 6]);
    RecordBatch::try_from_iter([
        ("user", Arc::new(user) as ArrayRef),
        ("date", Arc::new(date) as ArrayRef),
        ("clicks", Arc::new(clicks) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn a_partitioned_write_makes_hive_directories() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train");
    let spec = ParquetSinkSpec {
        partition_by: Some("date".into()),
        ..spec(&out)
    };
    let input = partition_input();
    write_all(&spec, &[input.slice(0, 4), input.slice(4, 2)]);
    let mut found: Vec<String> = super::super::files::resolve(&out, "parquet")
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "date=2024-01-01/part-0.parquet",
            "date=2024-01-02/part-0.parquet",
            "date=__HIVE_DEFAULT_PARTITION__/part-0.parquet",
            "date=a%2Fb%3Ac/part-0.parquet",
        ]
    );
    // The column lives in the path, not in the files; rows keep their order.
    let mut src = source(&out.join("date=2024-01-02"), 10);
    let back = concat(&read_all(&mut src));
    assert_eq!(back.schema().fields().len(), 2);
    assert_eq!(
        back.column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap(),
        &StringArray::from(vec!["u1", "u4"])
    );
    // null and "" share the default partition, as in Hive.
    let src = source(&out.join("date=__HIVE_DEFAULT_PARTITION__"), 10);
    assert_eq!(src.file_names(), ["part-0.parquet"]);
    assert_eq!(
        row_group_rows(&out.join("date=__HIVE_DEFAULT_PARTITION__/part-0.parquet")).unwrap(),
        [2]
    );
    assert!(!dir.path().join("train.weir-inprogress").exists());

    // DuckDB reads the tree back as partitions.
    let script = format!(
        r#"
import duckdb
print(duckdb.sql("select date, string_agg(user, ',' order by user) from read_parquet('{}/**/*.parquet', hive_partitioning=true) group by date order by date nulls last").fetchall())
"#,
        out.display()
    );
    if let Some(got) = python("duckdb", &script) {
        assert_eq!(
            got.trim(),
            "[('2024-01-01', 'u2'), ('2024-01-02', 'u1,u4'), ('a/b:c', 'u5'), (None, 'u3,u6')]"
        );
    }

    // A second run replaces the tree: the old partitions are gone.
    write_all(&spec, &[input.slice(1, 1)]);
    let names: Vec<String> = super::super::files::resolve(&out, "parquet")
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["date=2024-01-01/part-0.parquet"]);
}

#[test]
fn a_partition_beyond_max_open_files_starts_a_new_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let spec = ParquetSinkSpec {
        partition_by: Some("k".into()),
        max_open_files: rows(2),
        ..spec(&out)
    };
    let batch = |k: &str, v: i64| {
        RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(vec![k])) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vec![v])) as ArrayRef),
        ])
        .unwrap()
    };
    write_all(
        &spec,
        &[batch("a", 1), batch("b", 2), batch("c", 3), batch("a", 4)],
    );
    let names: Vec<String> = super::super::files::resolve(&out, "parquet")
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        names,
        [
            "k=a/part-0.parquet",
            "k=a/part-1.parquet",
            "k=b/part-0.parquet",
            "k=c/part-0.parquet"
        ]
    );
}

#[test]
fn a_directory_that_is_not_a_partition_tree_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), b"precious").unwrap();
    let spec = ParquetSinkSpec {
        partition_by: Some("date".into()),
        ..spec(dir.path())
    };
    let e = ParquetSink::create(&spec, dir.path().to_owned())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("refusing to replace") && e.contains("thesis.tex"),
        "{e}"
    );
    assert!(dir.path().join("thesis.tex").exists());
}

#[test]
fn a_resumed_read_starts_at_the_next_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let spec = ParquetSinkSpec {
        row_group_rows: rows(100),
        ..spec(&path)
    };
    let ids = Int64Array::from_iter_values(0..350);
    let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
    write_all(&spec, &[batch]);
    assert_eq!(row_group_rows(&path).unwrap(), [100, 100, 100, 50]);

    // Batches of 40: a row group is three batches; only the last has a position.
    let got = read_all(&mut source(&path, 40));
    let positions: Vec<Option<&str>> = got.iter().map(|(_, p)| p.as_deref()).collect();
    assert_eq!(
        positions,
        [
            None,
            None,
            Some("a.parquet:0"),
            None,
            None,
            Some("a.parquet:1"),
            None,
            None,
            Some("a.parquet:2"),
            None,
            Some("a.parquet:3"),
        ]
    );
    let first_id = |v: &[(RecordBatch, Option<String>)]| {
        v[0].0
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    let mut src = source(&path, 40);
    src.seek("a.parquet:1").unwrap();
    let rest = read_all(&mut src);
    assert_eq!(first_id(&rest), 200);
    assert_eq!(concat(&rest).num_rows(), 150);
    let mut src = source(&path, 40);
    src.seek("a.parquet:3").unwrap();
    assert!(read_all(&mut src).iter().all(|(b, _)| b.num_rows() == 0));
    let e = source(&path, 40)
        .seek("a.parquet:4")
        .unwrap_err()
        .to_string();
    assert!(e.contains("only 4 row groups"), "{e}");
    let e = source(&path, 40)
        .seek("b.parquet:0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no file `b.parquet`"), "{e}");
}

#[test]
fn a_corrupt_row_group_is_one_dead_letter_and_the_rest_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let spec = ParquetSinkSpec {
        row_group_rows: rows(100),
        ..spec(&path)
    };
    write_all(&spec, &[ids(0..300)]);
    // Overwrite the bytes of row group 1 (its pages, headers included).
    let meta = ArrowReaderMetadata::load(
        &std::fs::File::open(&path).unwrap(),
        ArrowReaderOptions::new(),
    )
    .unwrap();
    let (start, len) = meta.metadata().row_group(1).column(0).byte_range();
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[start as usize..(start + len) as usize] {
        *b = 0xAB;
    }
    std::fs::write(&path, bytes).unwrap();

    let mut src = source(&path, 40);
    let mut batches = Vec::new();
    let mut letters = Vec::new();
    loop {
        let mut out = Emitter::default();
        let more = src.next_batch(&mut out).unwrap();
        letters.append(&mut out.dead_letters);
        batches.extend(out.take_output().into_iter().map(|(b, _, p)| (b, p)));
        if !more {
            break;
        }
    }
    // Row groups 0 and 2 are delivered, each ending at its own position, and
    // the position moves past row group 1.
    let got = concat(&batches);
    let got: Vec<i64> = got
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(got, (0..100).chain(200..300).collect::<Vec<i64>>());
    let positions: Vec<&str> = batches.iter().filter_map(|(_, p)| p.as_deref()).collect();
    assert_eq!(positions, ["a.parquet:0", "a.parquet:1", "a.parquet:2"]);
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(
        (l.fault, l.reason.as_str()),
        (crate::node::Fault::Data, "corrupt_batch")
    );
    assert_eq!(
        l.position,
        format!(
            "a.parquet:1 rows 0..100, bytes {start}..{} of the file",
            start + len
        )
    );
    assert!(
        l.detail
            .starts_with("a.parquet: row group 1 cannot be decoded: "),
        "{}",
        l.detail
    );
}

#[test]
fn a_glob_reads_files_in_order_and_resumes_in_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in [("part-1.parquet", 10), ("part-0.parquet", 0)] {
        let ids = Int64Array::from_iter_values(from..from + 10);
        let b = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
        write_all(&spec(&dir.path().join(name)), &[b]);
    }
    let glob = dir.path().join("part-*.parquet");
    let mut src = source(&glob, 100);
    assert_eq!(src.file_names(), ["part-0.parquet", "part-1.parquet"]);
    let all = read_all(&mut src);
    let ids = concat(&all);
    assert_eq!(
        ids.column(0).as_any().downcast_ref::<Int64Array>().unwrap(),
        &Int64Array::from_iter_values(0..20)
    );
    let mut src = source(&glob, 100);
    src.seek("part-0.parquet:0").unwrap();
    assert_eq!(first(&read_all(&mut src)), 10);

    // A projection reads only the named columns, in the order named.
    let spec = ParquetSourceSpec {
        path: dir.path().join("part-0.parquet"),
        batch_rows: None,
        columns: Some(vec!["nope".into()]),
    };
    let e = ParquetSource::open(&spec, &spec.path, rows(10))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no column `nope`") && e.contains("it has id"),
        "{e}"
    );
}

fn first(v: &[(RecordBatch, Option<String>)]) -> i64 {
    v[0].0
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[test]
fn columns_pick_and_order_a_projection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write_all(&spec(&path), &[partition_input()]);
    let spec = ParquetSourceSpec {
        path: path.clone(),
        batch_rows: None,
        columns: Some(vec!["clicks".into(), "user".into()]),
    };
    let mut src = ParquetSource::open(&spec, &path, rows(10)).unwrap();
    let names: Vec<String> = src
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["clicks", "user"]);
    let b = concat(&read_all(&mut src));
    assert_eq!(b.column(0).len(), 6);
    assert_eq!(b.column(0).data_type(), &DataType::Int64);
}

#[test]
fn files_that_disagree_or_are_not_parquet_get_one_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
        .unwrap();
    let b =
        RecordBatch::try_from_iter([("id", Arc::new(StringArray::from(vec!["1"])) as ArrayRef)])
            .unwrap();
    write_all(&spec(&dir.path().join("a.parquet")), &[a]);
    write_all(&spec(&dir.path().join("b.parquet")), &[b]);
    let spec_of = |p: &Path| ParquetSourceSpec {
        path: p.to_owned(),
        batch_rows: None,
        columns: None,
    };
    let open = |p: &Path| {
        ParquetSource::open(&spec_of(p), p, rows(10))
            .err()
            .unwrap()
            .to_string()
    };
    let e = open(dir.path());
    assert!(
        e.contains("b.parquet: column `id` is Utf8 there but Int64 in a.parquet"),
        "{e}"
    );
    std::fs::write(dir.path().join("c.parquet"), b"id\n1\n").unwrap();
    let e = open(&dir.path().join("c.parquet"));
    assert!(
        e.starts_with("c.parquet: not a readable Parquet file"),
        "{e}"
    );

    // A codec this build does not decode, written by pyarrow.
    let brotli = dir.path().join("brotli.parquet");
    let script = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\npq.write_table(pa.table({{'x': [1, 2]}}), {:?}, compression='brotli')",
        brotli.to_str().unwrap()
    );
    if python("pyarrow", &script).is_some() {
        let e = open(&brotli);
        assert!(
            e.starts_with("brotli.parquet: column `x` is compressed with brotli, which this build"),
            "{e}"
        );
        assert!(e.contains("reads uncompressed, snappy and zstd"), "{e}");
    }
}

fn ids(range: std::ops::Range<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from_iter_values(range)) as ArrayRef,
    )])
    .unwrap()
}

fn all_ids(path: &Path) -> Vec<i64> {
    let b = concat(&read_all(&mut source(path, 1000)));
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec()
}

#[test]
fn a_crashed_run_leaves_the_previous_output_and_resumes_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.parquet");
    let spec = spec(&path);
    write_all(&spec, &[ids(0..3)]);

    let mut sink = ParquetSink::create(&spec, path.clone()).unwrap();
    assert_eq!(sink.durability(), Durability::OnFlush);
    sink.write(&ids(0..10), &Lineage::default()).unwrap();
    let state = sink.flush().unwrap().unwrap();
    sink.write(&ids(10..15), &Lineage::default()).unwrap();
    sink.flush().unwrap();
    sink.write(&ids(15..20), &Lineage::default()).unwrap();
    drop(sink); // the process dies: no close
    assert_eq!(all_ids(&path), [0, 1, 2], "the previous output stands");

    // Resumed at the first checkpoint: the source sends 10.. again.
    let mut sink = ParquetSink::create(&spec, path.clone()).unwrap();
    sink.restore(&state).unwrap();
    sink.write(&ids(10..25), &Lineage::default()).unwrap();
    sink.close(true).unwrap();
    assert_eq!(all_ids(&path), (0..25).collect::<Vec<_>>());
    assert!(!dir.path().join("out.parquet.weir-log").exists());
    assert!(!dir.path().join("out.parquet.weir-inprogress").exists());
}

#[test]
fn a_stopped_run_publishes_and_a_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train");
    let spec = ParquetSinkSpec {
        partition_by: Some("date".into()),
        ..spec(&out)
    };
    let input = partition_input();
    let mut sink = ParquetSink::create(&spec, out.clone()).unwrap();
    sink.write(&input.slice(0, 3), &Lineage::default()).unwrap();
    let state = sink.flush().unwrap().unwrap();
    sink.close(false).unwrap();
    assert!(out.join("date=2024-01-02/part-0.parquet").exists());
    assert!(
        dir.path().join("train.weir-log").exists(),
        "kept for the resume"
    );

    let mut sink = ParquetSink::create(&spec, out.clone()).unwrap();
    sink.restore(&state).unwrap();
    sink.write(&input.slice(3, 3), &Lineage::default()).unwrap();
    let state = sink.flush().unwrap().unwrap();
    sink.close(true).unwrap();
    let total: i64 = super::super::files::resolve(&out, "parquet")
        .unwrap()
        .iter()
        .map(|f| row_group_rows(&f.path).unwrap().iter().sum::<i64>())
        .sum();
    assert_eq!(total, 6);
    assert_eq!(
        row_group_rows(&out.join("date=2024-01-02/part-0.parquet")).unwrap(),
        [2]
    );

    // Resuming the completed run: nothing new arrives, the output stands.
    let mut sink = ParquetSink::create(&spec, out.clone()).unwrap();
    sink.restore(&state).unwrap();
    sink.close(true).unwrap();
    assert_eq!(
        row_group_rows(&out.join("date=2024-01-02/part-0.parquet")).unwrap(),
        [2]
    );
    let mut sink = ParquetSink::create(&spec, out.clone()).unwrap();
    sink.restore(&state).unwrap();
    let e = sink
        .write(&input, &Lineage::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot add rows to the output of a completed run"),
        "{e}"
    );
}

#[test]
fn without_a_log_a_stop_fails_and_leaves_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.parquet");
    let spec = ParquetSinkSpec {
        resumable: false,
        ..spec(&path)
    };
    write_all(&spec, &[ids(0..3)]);
    let mut sink = ParquetSink::create(&spec, path.clone()).unwrap();
    assert_eq!(sink.durability(), Durability::OnClose);
    sink.write(&ids(0..10), &Lineage::default()).unwrap();
    let e = sink.close(false).unwrap_err().to_string();
    assert!(e.contains("stopped before its input ended"), "{e}");
    assert_eq!(all_ids(&path), [0, 1, 2]);
}

#[test]
fn bad_settings_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&dir.path().join("x.parquet"));
    s.compression_level = Some(40);
    assert_eq!(
        s.check("sink[0].parquet").unwrap_err().to_string(),
        "`sink[0].parquet.compression_level`: 40 is not a zstd level (1 to 22)"
    );
    s.compression = Codec::Snappy;
    s.compression_level = Some(3);
    assert!(
        s.check("k")
            .unwrap_err()
            .to_string()
            .contains("only zstd has levels")
    );
    let e = toml::from_str::<ParquetSinkSpec>("path = \"x\"\nrow_groups = 3").unwrap_err();
    assert!(e.to_string().contains("unknown field `row_groups`"), "{e}");
    let e =
        toml::from_str::<ParquetSinkSpec>("path = \"x\"\ncompression = \"brotli\"").unwrap_err();
    assert!(e.to_string().contains("unknown variant `brotli`"), "{e}");
    assert_eq!(hive_escape("a/b:c=d%"), "a%2Fb%3Ac%3Dd%25");
}
