//! Tests of the JSON-lines source: the newline scan, typed columns from good
//! lines, the first reason for each corrupt line, and a property test that the
//! chunked, threaded parse and the source reading in tiny reads equal one chunk
//! parsed at once.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use proptest::prelude::*;

use super::*;
use crate::node::config::FieldType;

#[test]
fn lines_of_splits_like_split_on_newline() {
    for text in [
        &b""[..],
        b"\n",
        b"a",
        b"a\n",
        b"a\nb",
        b"\n\na\n\nbc\n",
        b"x\r\ny",
    ] {
        let want: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let got: Vec<&[u8]> = lines_of(text).collect();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(text));
    }
}

fn fields() -> Vec<FieldSpec> {
    let f = |name: &str, t, required, min| FieldSpec {
        name: name.into(),
        data_type: t,
        required,
        min,
        max: None,
    };
    vec![
        f("user_id", FieldType::Utf8, true, None),
        f("ts", FieldType::Int64, true, None),
        f("price", FieldType::Float64, false, Some(0.0)),
    ]
}

fn parse(text: &str) -> (RecordBatch, Vec<DeadLetter>) {
    let fields = fields();
    parse_lines(text.as_bytes(), 1, "e.jsonl", &fields, &schema_of(&fields)).unwrap()
}

#[test]
fn good_lines_become_typed_columns() {
    let (b, letters) = parse(
        "{\"user_id\":\"u1\",\"ts\":5,\"price\":1.5,\"extra\":[1,{\"a\":2}]}\n\
         {\"ts\":6,\"user_id\":\"u\\\"2\",\"price\":null}\n\
         \n\
         {\"user_id\":\"u3\",\"ts\":7,\"price\":3}\n",
    );
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(b.num_rows(), 3);
    let users = b.column(0).as_string::<i32>();
    assert_eq!(
        users.iter().collect::<Vec<_>>(),
        [Some("u1"), Some("u\"2"), Some("u3")]
    );
    assert_eq!(
        b.column(1).as_primitive::<Int64Type>().values().to_vec(),
        [5, 6, 7]
    );
    let price = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!(
        price.iter().collect::<Vec<_>>(),
        [Some(1.5), None, Some(3.0)]
    );
}

#[test]
fn corrupt_lines_get_the_first_reason_in_schema_order() {
    let text = [
        r#"{"user_id":"u1","ts":1,"pri"#,         // truncated
        r#"{"ts":"12","price":-1}"#,              // missing user_id beats bad ts
        r#"{"user_id":7,"ts":1}"#,                // user_id not a string
        r#"{"user_id":"u","ts":"123"}"#,          // ts a string
        r#"{"user_id":"u","ts":123.0}"#,          // ts a float
        r#"{"user_id":"u","ts":1,"price":-0.5}"#, // negative price
        r#"{"user_id":"u","ts":1,"price":NaN}"#,  // not strict JSON
        r#"[1,2]"#,                               // not an object
        r#"{"user_id":null,"ts":1}"#,             // null required
        r#"{"user_id":"ok","ts":9,"price":0}"#,   // fine
    ]
    .join("\n");
    let (b, letters) = parse(&text);
    assert_eq!(b.num_rows(), 1);
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "invalid_json",
            "user_id:missing",
            "user_id:type",
            "ts:type",
            "ts:type",
            "price:range",
            "invalid_json",
            "not_an_object",
            "user_id:missing"
        ]
    );
    assert_eq!(letters[1].position, "e.jsonl:2");
    assert_eq!(letters[1].text().unwrap(), r#"{"ts":"12","price":-1}"#);
    assert_eq!(letters[4].detail, "`ts` must be an integer, found a float");
    assert_eq!(letters[5].detail, "`price` = -0.5 is below the minimum 0");
    assert_eq!(letters[8].detail, "required field `user_id` is null");
}

#[test]
fn whitespace_only_lines_are_counted_as_blank() {
    assert_eq!(blank_lines(b""), 0);
    assert_eq!(blank_lines(b"\n"), 1);
    assert_eq!(blank_lines(b"{}\n  \n\t\r\n{}"), 2);
    assert_eq!(blank_lines(b"{}\n   "), 1);
    assert_eq!(blank_lines(b"{}\n"), 0);
}

#[test]
fn an_empty_chunk_gives_an_empty_batch() {
    let (b, letters) = parse("");
    assert_eq!(b.num_rows(), 0);
    assert!(letters.is_empty());
    assert_eq!(b.column(0).len(), 0);
}

/// Lines of every kind the parser must tell apart, for the property test.
fn any_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u32..50, -5i64..1_000, proptest::option::of(0.0f64..600.0)).prop_map(|(u, ts, p)| {
            let price = p.map_or("null".to_owned(), |p| p.to_string());
            format!(r#"{{"user_id":"u{u}","ts":{ts},"price":{price}}}"#)
        }),
        1 => (0u32..50).prop_map(|u| format!(r#"{{"user_id":"u{u}","ts":"12"}}"#)),
        1 => Just(r#"{"ts":3,"price":1}"#.to_owned()),
        1 => Just(r#"{"user_id":"u","ts":1,"price":-2.5}"#.to_owned()),
        1 => (1usize..30).prop_map(|n| r#"{"user_id":"u1","ts":17,"price":2.5}"#[..n].to_owned()),
        1 => Just(String::new()),
        1 => Just("[1,2]".to_owned()),
        1 => Just("  ".to_owned()),
    ]
}

fn text_of(lines: &[String], crlf: bool, final_newline: bool) -> String {
    let mut text = lines.join(if crlf { "\r\n" } else { "\n" });
    if final_newline && !lines.is_empty() {
        text.push('\n');
    }
    text
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    let fields = fields();
    arrow::compute::concat_batches(&schema_of(&fields), batches).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Chunked parsing on several threads gives, concatenated, the batches and
    /// dead letters (same line numbers) of parsing the text in one chunk; the
    /// source reading the same file in tiny reads does too.
    #[test]
    fn parallel_chunks_equal_one_chunk(
        lines in proptest::collection::vec(any_line(), 0..120),
        piece_lines in 1usize..25,
        threads in 1usize..5,
        read_bytes in 1usize..300,
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let text = text_of(&lines, crlf, final_newline);
        let fields = fields();
        let schema = schema_of(&fields);
        let (whole, whole_letters) = parse_lines(text.as_bytes(), 1, "e.jsonl", &fields, &schema).unwrap();
        let threads = NonZeroUsize::new(threads).unwrap();

        let pieces = parse_pieces(text.as_bytes(), 1, piece_lines, threads, "e.jsonl", &fields, &schema).unwrap();
        let batches: Vec<RecordBatch> = pieces.iter().map(|(b, _)| b.clone()).collect();
        let letters: Vec<DeadLetter> = pieces.into_iter().flat_map(|(_, l)| l).collect();
        prop_assert_eq!(&concat(&batches), &whole);
        prop_assert_eq!(&letters, &whole_letters);

        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let mut source = JsonlSource::from_file(
            File::open(file.path()).unwrap(),
            file.path().to_path_buf(),
            "e.jsonl".into(),
            fields.clone().into(),
            NonZeroUsize::new(piece_lines).unwrap(),
        )
        .with_threads(threads);
        source.read_bytes = read_bytes;
        let mut out = Emitter::default();
        let mut calls = 0;
        while source.next_batch(&mut out).unwrap() {
            calls += 1;
            prop_assert!(calls <= text.len() + 1, "the source does not end");
        }
        prop_assert!(out.batches.iter().all(|b| b.num_rows() <= piece_lines));
        prop_assert_eq!(&concat(&out.batches), &whole);
        prop_assert_eq!(&out.dead_letters, &whole_letters);
        let total = text.split('\n').count() - usize::from(text.is_empty() || text.ends_with('\n'));
        // Each batch has the span of its own lines: `piece_lines` lines each
        // but the last, ending on a line boundary.
        let positions: Vec<(u64, usize)> = out
            .positions
            .iter()
            .map(|p| {
                let (l, o) = p.as_deref().unwrap().split_once(':').unwrap();
                (l.parse().unwrap(), o.parse().unwrap())
            })
            .collect();
        prop_assert_eq!(positions.len(), out.batches.len());
        let mut previous = 0u64;
        for (i, &(line, offset)) in positions.iter().enumerate() {
            let lines = line - previous;
            if i + 1 < positions.len() {
                prop_assert_eq!(lines, piece_lines as u64);
            } else {
                prop_assert!(lines >= 1 && lines <= piece_lines as u64);
            }
            let first = previous as usize;
            let expected_end: usize = text
                .split_inclusive('\n')
                .take(line as usize)
                .map(str::len)
                .sum();
            prop_assert_eq!(offset, expected_end, "batch {} (lines {}..={})", i, first + 1, line);
            previous = line;
        }
        if let Some(&(line, offset)) = positions.last() {
            prop_assert_eq!(line as usize, total);
            prop_assert_eq!(offset, text.len());
        }
        // Every line is a row, a dead letter or a blank line.
        let blank = out.counters().get("blank_lines").copied().unwrap_or(0);
        prop_assert_eq!(
            whole.num_rows() as u64 + whole_letters.len() as u64 + blank,
            total as u64
        );
    }
}
