use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};

use super::*;
use crate::node::{DeadLetter, Emitter, Lineage, Sink, Source};

fn field(name: &str, t: FieldType, required: bool) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        data_type: t,
        required,
        min: None,
        max: None,
    }
}

fn schema() -> Vec<FieldSpec> {
    vec![
        field("user", FieldType::Utf8, true),
        field("ts", FieldType::TimestampMs, true),
        FieldSpec {
            min: Some(0.0),
            ..field("price", FieldType::Float64, false)
        },
        field("qty", FieldType::Int32, false),
        field("member", FieldType::Boolean, false),
    ]
}

fn spec(path: &Path) -> CsvSourceSpec {
    CsvSourceSpec {
        path: path.to_owned(),
        schema: schema(),
        header: true,
        delimiter: ",".into(),
        batch_rows: None,
        rejects: None,
    }
}

fn open(spec: &CsvSourceSpec, batch_rows: usize) -> CsvSource {
    CsvSource::open(spec, &spec.path, NonZeroUsize::new(batch_rows).unwrap()).unwrap()
}

type Read = (Vec<(RecordBatch, Option<String>)>, Vec<DeadLetter>);

fn read_all(src: &mut CsvSource) -> Read {
    let (mut batches, mut letters) = (Vec::new(), Vec::new());
    loop {
        let mut out = Emitter::default();
        let more = src.next_batch(&mut out).unwrap();
        letters.append(&mut out.dead_letters);
        batches.extend(out.take_output().into_iter().map(|(b, _, p)| (b, p)));
        if !more {
            return (batches, letters);
        }
    }
}

fn concat(batches: &[(RecordBatch, Option<String>)]) -> RecordBatch {
    let v: Vec<RecordBatch> = batches.iter().map(|(b, _)| b.clone()).collect();
    arrow::compute::concat_batches(&v[0].schema(), &v).unwrap()
}

fn strings(b: &RecordBatch, i: usize) -> Vec<Option<String>> {
    let a = b.column(i).as_any().downcast_ref::<StringArray>().unwrap();
    a.iter().map(|v| v.map(str::to_owned)).collect()
}

const TEXT: &str = "\u{feff}member,user,qty,ts,price,ignored\n\
true,u1,3,1704067200000,9.5,x\n\
FALSE,\"u,2\",,2024-01-01T00:00:01.5Z,,y\n\
true,u3,4000000000,1704067200000,1,z\n\
true,u4,1,yesterday,1,z\n\
true,,1,1704067200000,1,z\n\
true,u6,1,1704067200000,-1,z\n\
maybe,u7,1,1704067200000,1,z\n\
true,u8,1\n\
,\"u9\nline two\",7,1704067200009,0.25,w\n";

#[test]
fn rows_parse_to_the_schema_and_the_rest_become_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.csv");
    std::fs::write(&path, TEXT).unwrap();
    let mut src = open(&spec(&path), 100);
    let (batches, letters) = read_all(&mut src);
    let b = concat(&batches);
    assert_eq!(b.num_rows(), 3);
    assert_eq!(
        strings(&b, 0),
        [
            Some("u1".into()),
            Some("u,2".into()),
            Some("u9\nline two".into())
        ]
    );
    let ts = b
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .unwrap();
    assert_eq!(
        ts.values(),
        &[1_704_067_200_000, 1_704_067_201_500, 1_704_067_200_009]
    );
    let price = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(
        price.iter().collect::<Vec<_>>(),
        [Some(9.5), None, Some(0.25)]
    );
    let qty = b.column(3).as_any().downcast_ref::<Int32Array>().unwrap();
    assert_eq!(qty.iter().collect::<Vec<_>>(), [Some(3), None, Some(7)]);
    let member = b.column(4).as_any().downcast_ref::<BooleanArray>().unwrap();
    assert_eq!(
        member.iter().collect::<Vec<_>>(),
        [Some(true), Some(false), None]
    );

    let got: Vec<(&str, &str, &str)> = letters
        .iter()
        .map(|l| (l.reason.as_str(), l.position.as_str(), l.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "qty:type",
                "events.csv:4",
                "`qty` must be a 32-bit integer, found an integer out of range"
            ),
            (
                "ts:type",
                "events.csv:5",
                "`ts` must be epoch milliseconds or an RFC 3339 time, found `yesterday`"
            ),
            (
                "user:missing",
                "events.csv:6",
                "required field `user` is null"
            ),
            (
                "price:range",
                "events.csv:7",
                "`price` = -1 is below the minimum 0"
            ),
            (
                "member:type",
                "events.csv:8",
                "`member` must be a boolean (true or false), found `maybe`"
            ),
            (
                "field_count",
                "events.csv:9",
                "the row has 3 fields, the header 6"
            ),
        ]
    );
    assert_eq!(letters[3].text().unwrap(), "true,u6,1,1704067200000,-1,z");
    // The last batch ends at the end of the file (line 11: a field spans two lines).
    assert_eq!(
        batches.last().unwrap().1.as_deref(),
        Some(format!("events.csv:11:{}", TEXT.len()).as_str())
    );
}

#[test]
fn a_resumed_read_continues_at_the_byte_after_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.csv");
    std::fs::write(&path, TEXT).unwrap();
    let (batches, _) = read_all(&mut open(&spec(&path), 2));
    let positions: Vec<String> = batches.iter().filter_map(|(_, p)| p.clone()).collect();
    assert_eq!(positions.len(), 5, "{positions:?}");
    // After the first batch (data lines 2 and 3): the rest is what a full read
    // gives after it, with the same dead letters and line numbers.
    let mut src = open(&spec(&path), 2);
    src.seek(&positions[0]).unwrap();
    assert!(
        positions[0].starts_with("events.csv:3:"),
        "{}",
        positions[0]
    );
    let (rest, letters) = read_all(&mut src);
    let rest = concat(&rest);
    assert_eq!(strings(&rest, 0), [Some("u9\nline two".into())]);
    assert_eq!(letters.len(), 6);
    assert_eq!(letters[0].position, "events.csv:4");

    let e = open(&spec(&path), 2)
        .seek("events.csv:3:5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not start a line"), "{e}");
    let e = open(&spec(&path), 2)
        .seek("other.csv:1:0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no file `other.csv`"), "{e}");
}

#[test]
fn a_directory_of_tab_separated_files_without_header_reads_by_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.csv"), "u3\t3\n").unwrap();
    std::fs::write(dir.path().join("a.csv"), "u1\t1\nu2\t2\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not csv").unwrap();
    let spec = CsvSourceSpec {
        path: dir.path().to_owned(),
        schema: vec![
            field("user", FieldType::Utf8, true),
            field("n", FieldType::Int64, true),
        ],
        header: false,
        delimiter: "\t".into(),
        batch_rows: None,
        rejects: None,
    };
    let mut src = open(&spec, 10);
    let (batches, letters) = read_all(&mut src);
    assert!(letters.is_empty());
    let positions: Vec<Option<String>> = batches.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        positions,
        [Some("a.csv:2:10".into()), Some("b.csv:1:5".into())]
    );
    let b = concat(&batches);
    let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(n.values(), &[1, 2, 3]);
    // Resuming after the whole of a.csv goes on with b.csv.
    let mut src = open(&spec, 10);
    src.seek("a.csv:2:10").unwrap();
    let (rest, _) = read_all(&mut src);
    let rest: Vec<RecordBatch> = rest
        .into_iter()
        .map(|(b, _)| b)
        .filter(|b| b.num_rows() > 0)
        .collect();
    assert_eq!(rest.len(), 1);
    assert_eq!(strings(&rest[0], 0), [Some("u3".into())]);
}

#[test]
fn a_header_without_a_schema_column_and_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.csv");
    std::fs::write(&path, "user,ts\nu1,1\n").unwrap();
    let mut src = open(&spec(&path), 10);
    let e = src
        .next_batch(&mut Emitter::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "x.csv: the header has no column `price` (it has user, ts)"
    );
    let mut s = spec(&path);
    s.delimiter = ";;".into();
    assert_eq!(
        s.check("source[0].csv").unwrap_err().to_string(),
        "`source[0].csv.delimiter`: `;;` is not one ASCII character other than a quote or a line end"
    );
    let e =
        toml::from_str::<CsvSourceSpec>("path = \"x\"\nschema = []\nheaders = true").unwrap_err();
    assert!(e.to_string().contains("unknown field `headers`"), "{e}");
    let e = CsvSource::open(
        &spec(&dir.path().join("*.tsv")),
        &dir.path().join("*.tsv"),
        NonZeroUsize::MIN,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.ends_with("matches no files"), "{e}");
}

fn batch() -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "user",
            Arc::new(StringArray::from(vec![Some("a,b"), Some("q\"uote"), None])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_704_067_200_123),
                Some(0),
                None,
            ])) as ArrayRef,
        ),
        (
            "price",
            Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])) as ArrayRef,
        ),
        (
            "qty",
            Arc::new(Int32Array::from(vec![Some(1), Some(-2), None])) as ArrayRef,
        ),
        (
            "member",
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn the_sink_writes_what_the_source_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.csv");
    let sink_spec = CsvSinkSpec {
        path: path.clone(),
        header: true,
        delimiter: ";".into(),
        columns: None,
    };
    let mut sink = CsvSink::create(&sink_spec, path.clone()).unwrap();
    sink.write(&batch(), &Lineage::default()).unwrap();
    sink.write(&batch().slice(0, 1), &Lineage::default())
        .unwrap();
    sink.close(true).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "user;ts;price;qty;member\n\
         a,b;2024-01-01T00:00:00.123;1.5;1;true\n\
         \"q\"\"uote\";1970-01-01T00:00:00;;-2;\n\
         ;;-0.0;;false\n\
         a,b;2024-01-01T00:00:00.123;1.5;1;true\n"
    );
    let mut schema = schema();
    schema[0].required = false;
    schema[1].required = false;
    schema[2].min = None;
    let source_spec = CsvSourceSpec {
        schema,
        delimiter: ";".into(),
        ..spec(&path)
    };
    let (batches, letters) = read_all(&mut open(&source_spec, 100));
    assert!(letters.is_empty(), "{letters:?}");
    let back = concat(&batches);
    let want =
        arrow::compute::concat_batches(&batch().schema(), &[batch(), batch().slice(0, 1)]).unwrap();
    assert_eq!(back.columns(), want.columns());
}

#[test]
fn the_sink_resumes_from_its_flushed_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.csv");
    let spec = CsvSinkSpec {
        path: path.clone(),
        header: true,
        delimiter: ",".into(),
        columns: Some(vec!["qty".into(), "user".into()]),
    };
    let mut sink = CsvSink::create(&spec, path.clone()).unwrap();
    sink.write(&batch().slice(0, 1), &Lineage::default())
        .unwrap();
    let state = sink.flush().unwrap().unwrap();
    sink.write(&batch().slice(1, 1), &Lineage::default())
        .unwrap();
    drop(sink);
    assert!(!path.exists(), "nothing is published before close");
    let mut sink = CsvSink::create(&spec, path.clone()).unwrap();
    sink.restore(&state).unwrap();
    sink.write(&batch().slice(1, 2), &Lineage::default())
        .unwrap();
    sink.close(true).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "qty,user\n1,\"a,b\"\n-2,\"q\"\"uote\"\n,\n"
    );
}
