//! The PostgreSQL source against the real server (`WEIR_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): each test works in a table of
//! its own and drops it.

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array,
    Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Int64Type, TimeUnit};

use super::source::PostgresSourceSpec;
use crate::node::config::{SourceConfig, SourceNode};
use crate::node::services::Services;
use crate::node::{AsyncSource, Emitter, NodeError};

// The one test-support file, also included by the other service tests here.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../tests/src/services.rs"]
mod services;

pub(crate) fn url() -> Option<String> {
    services::url(services::Service::Postgres)
}

/// A table name no other test uses; the table is dropped with this.
pub(crate) struct Table {
    url: String,
    pub(crate) name: String,
}

impl Table {
    pub(crate) async fn new(
        url: &str,
        test: &str,
        columns: &str,
    ) -> (Self, tokio_postgres::Client) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("weir_{test}_{}_{nanos}", std::process::id());
        let c = client(url).await;
        c.batch_execute(&format!("CREATE TABLE {name} ({columns})"))
            .await
            .unwrap();
        (
            Self {
                url: url.to_owned(),
                name,
            },
            c,
        )
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        super::conn::block_on(async move {
            let c = client(&url).await;
            let _ = c
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await;
        });
    }
}

pub(crate) async fn client(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// Builds the source of `toml` (the `[source.postgres]` table's body) as a
/// plan would.
fn build(toml_body: &str, batch_rows: usize) -> Result<Box<dyn AsyncSource>, NodeError> {
    let spec: PostgresSourceSpec = toml::from_str(toml_body).unwrap();
    spec.check("source[0].postgres")
        .map_err(|e| NodeError::config(e.to_string()))?;
    let dir = tempfile::tempdir().unwrap();
    let built = crate::connectors::testcx::with_cx(
        "source[0].postgres",
        dir.path(),
        batch_rows,
        &Services::new(),
        |cx| spec.build(cx),
    )?;
    match built {
        SourceNode::Async(s) => Ok(s),
        SourceNode::Sync(_) => panic!("the PostgreSQL source is async"),
    }
}

/// What one read emitted: batches, the last position, counters, letters.
async fn read(src: &mut dyn AsyncSource) -> (bool, Emitter) {
    let mut out = Emitter::default();
    let more = tokio::time::timeout(std::time::Duration::from_secs(30), src.next_batch(&mut out))
        .await
        .expect("a read within 30 s")
        .unwrap();
    (more, out)
}

/// Reads until the source ends, returning every batch and the last position.
async fn read_all(src: &mut dyn AsyncSource) -> (Vec<RecordBatch>, Option<String>) {
    let mut batches = Vec::new();
    let mut last = None;
    loop {
        let (more, mut out) = read(src).await;
        for (b, _, p) in out.take_output() {
            batches.push(b);
            last = p.or(last);
        }
        if !more {
            return (batches, last);
        }
    }
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_reads_back_as_stored_with_nulls() {
    let Some(url) = url() else { return };
    let (t, c) = Table::new(
        &url,
        "types",
        "id int8, b bool, i2 int2, i4 int4, f4 float4, f8 float8, n numeric, t text, \
         v varchar(8), ch char(3), j json, jb jsonb, u uuid, by bytea, d date, ts timestamp, \
         tz timestamptz",
    )
    .await;
    c.batch_execute(&format!(
        "INSERT INTO {} VALUES \
         (1, true, -2, 40000, 1.5, -2.25, 12345.678, 'héllo', 'var', 'ab', '{{\"a\": 1}}', \
          '{{\"b\": [2]}}', '00112233-4455-6677-8899-aabbccddeeff', '\\x00ff', '2024-02-29', \
          '2024-01-01 12:34:56.789012', '2024-01-01 00:00:00+02'), \
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          'infinity', '-infinity', NULL), \
         (3, false, 7, -1, 'NaN', 1e300, -0.5, '', '', '', 'null', 'null', NULL, '\\x', \
          '1970-01-01', '1999-12-31 23:59:59', '2000-01-01 00:00:00+00')",
        t.name
    ))
    .await
    .unwrap();
    let mut src = build(
        &format!(
            "url = \"{url}\"\nquery = \"SELECT * FROM {} ORDER BY id\"",
            t.name
        ),
        2,
    )
    .unwrap();
    let (batches, last) = read_all(src.as_mut()).await;
    assert_eq!(last.as_deref(), Some("rows=3"));
    assert_eq!(
        batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        [2, 1]
    );
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let col = |n: &str| b.column_by_name(n).unwrap().clone();
    assert_eq!(ids(std::slice::from_ref(&b)), [1, 2, 3]);
    assert_eq!(
        col("b").as_any().downcast_ref::<BooleanArray>().unwrap(),
        &BooleanArray::from(vec![Some(true), None, Some(false)])
    );
    assert_eq!(
        col("i2").as_any().downcast_ref::<Int16Array>().unwrap(),
        &Int16Array::from(vec![Some(-2), None, Some(7)])
    );
    assert_eq!(
        col("i4").as_any().downcast_ref::<Int32Array>().unwrap(),
        &Int32Array::from(vec![Some(40000), None, Some(-1)])
    );
    let f4 = col("f4");
    let f4 = f4.as_any().downcast_ref::<Float32Array>().unwrap();
    assert_eq!(
        (f4.value(0), f4.is_null(1), f4.value(2).is_nan()),
        (1.5, true, true)
    );
    assert_eq!(
        col("f8").as_any().downcast_ref::<Float64Array>().unwrap(),
        &Float64Array::from(vec![Some(-2.25), None, Some(1e300)])
    );
    assert_eq!(
        col("n").as_any().downcast_ref::<Float64Array>().unwrap(),
        &Float64Array::from(vec![Some(12345.678), None, Some(-0.5)])
    );
    let text = |n: &str| -> Vec<Option<String>> {
        col(n)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    };
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(text("t"), [s("héllo"), None, s("")]);
    assert_eq!(text("v"), [s("var"), None, s("")]);
    assert_eq!(text("ch"), [s("ab "), None, s("   ")]);
    assert_eq!(text("j"), [s("{\"a\": 1}"), None, s("null")]);
    assert_eq!(text("jb"), [s("{\"b\": [2]}"), None, s("null")]);
    assert_eq!(
        text("u"),
        [s("00112233-4455-6677-8899-aabbccddeeff"), None, None]
    );
    assert_eq!(
        col("by").as_any().downcast_ref::<BinaryArray>().unwrap(),
        &BinaryArray::from(vec![Some(&[0u8, 255][..]), None, Some(&[][..])])
    );
    // 2024-02-29 is day 19782; infinity is null.
    assert_eq!(
        col("d").as_any().downcast_ref::<Date32Array>().unwrap(),
        &Date32Array::from(vec![Some(19_782), None, Some(0)])
    );
    assert_eq!(
        col("ts")
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap(),
        &TimestampMicrosecondArray::from(vec![
            Some(1_704_112_496_789_012),
            None,
            Some(946_684_799_000_000)
        ])
    );
    let tz = col("tz");
    assert_eq!(
        tz.data_type(),
        &arrow::datatypes::DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let tz = tz.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(
        tz.iter().collect::<Vec<_>>(),
        [Some(1_704_060_000_000_000), None, Some(946_684_800_000_000)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_column_is_refused_when_the_plan_is_built() {
    let Some(url) = url() else { return };
    let (t, _c) = Table::new(&url, "unsupported", "id int8, tags text[], at time").await;
    let err = build(&format!("url = \"{url}\"\ntable = \"{}\"", t.name), 10)
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "`source[0].postgres`: column `tags` has type `_text`, which weir cannot read: cast it \
         in the query (`tags::text`, `tags::float8`) or leave it out"
    );
    let err = build(
        &format!(
            "url = \"{url}\"\nquery = \"SELECT id FROM {}\"\nincremental = {{ column = \"idd\" }}",
            t.name
        ),
        10,
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains("the query has no column `idd`"),
        "{err}"
    );
    let err = build(
        &format!("url = \"{url}\"\ntable = \"no_such_table_weir\""),
        10,
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains(
            "cannot prepare the query: relation \"no_such_table_weir\" does not exist (42P01)"
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("password"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_many_batches_long_reads_whole_and_resumes_after_its_rows() {
    let Some(url) = url() else { return };
    let (t, c) = Table::new(&url, "long", "id int8 PRIMARY KEY, x float8").await;
    c.batch_execute(&format!(
        "INSERT INTO {} SELECT g, g / 2.0 FROM generate_series(1, 25000) g",
        t.name
    ))
    .await
    .unwrap();
    let body = format!(
        "url = \"{url}\"\nquery = \"SELECT * FROM {} ORDER BY id\"",
        t.name
    );
    let mut src = build(&body, 4096).unwrap();
    let (batches, last) = read_all(src.as_mut()).await;
    assert_eq!(ids(&batches), (1..=25_000).collect::<Vec<_>>());
    assert!(batches.iter().all(|b| b.num_rows() <= 4096));
    assert_eq!(last.as_deref(), Some("rows=25000"));
    // A resumed run continues after the rows it delivered.
    let mut src = build(&body, 4096).unwrap();
    src.seek("rows=24990").await.unwrap();
    let (batches, _) = read_all(src.as_mut()).await;
    assert_eq!(ids(&batches), (24_991..=25_000).collect::<Vec<_>>());
}

/// Polls until `want` rows arrived (or 20 s pass), returning the ids and the
/// last position.
async fn poll_ids(src: &mut dyn AsyncSource, want: usize) -> (Vec<i64>, Option<String>) {
    let mut got = Vec::new();
    let mut last = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.len() < want && std::time::Instant::now() < deadline {
        let (_, mut out) = read(src).await;
        for (b, _, p) in out.take_output() {
            got.extend(ids(&[b]));
            last = p.or(last);
        }
    }
    (got, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_is_still_delivered_exactly_once() {
    let Some(url) = url() else { return };
    let (t, c) = Table::new(&url, "late", "id bigserial PRIMARY KEY, v text").await;
    let body = format!(
        "url = \"{url}\"\ntable = \"{}\"\nincremental = {{ column = \"id\", poll = \"50ms\" }}",
        t.name
    );
    let mut src = build(&body, 100).unwrap();
    // The late transaction takes id 1 and stays open.
    let mut late = client(&url).await;
    let late_tx = late.transaction().await.unwrap();
    late_tx
        .execute(&format!("INSERT INTO {} (v) VALUES ('late')", t.name), &[])
        .await
        .unwrap();
    // A later one takes id 2 and commits; the source reads it.
    c.execute(&format!("INSERT INTO {} (v) VALUES ('early')", t.name), &[])
        .await
        .unwrap();
    let (got, _) = poll_ids(src.as_mut(), 1).await;
    assert_eq!(got, [2]);
    // More polls while the late transaction is open: nothing new, nothing again.
    for _ in 0..4 {
        let (_, mut out) = read(src.as_mut()).await;
        assert_eq!(
            ids(&out
                .take_output()
                .into_iter()
                .map(|(b, ..)| b)
                .collect::<Vec<_>>()),
            Vec::<i64>::new()
        );
    }
    late_tx.commit().await.unwrap();
    c.execute(&format!("INSERT INTO {} (v) VALUES ('after')", t.name), &[])
        .await
        .unwrap();
    let (got, position) = poll_ids(src.as_mut(), 2).await;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [1, 3],
        "the late row and the next, once each: {got:?}"
    );
    // A few more polls settle the position past all three; nothing repeats.
    let (more, position) = {
        let mut extra = Vec::new();
        let mut position = position;
        for _ in 0..5 {
            let (_, mut out) = read(src.as_mut()).await;
            for (b, _, p) in out.take_output() {
                extra.extend(ids(&[b]));
                position = p.or(position);
            }
        }
        (extra, position)
    };
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(position.as_deref(), Some("p=3;d="));
    // Resumed from that position, a new source reads only new rows.
    drop(src);
    c.execute(&format!("INSERT INTO {} (v) VALUES ('new')", t.name), &[])
        .await
        .unwrap();
    let mut src = build(&body, 100).unwrap();
    src.seek("p=3;d=").await.unwrap();
    let (got, _) = poll_ids(src.as_mut(), 1).await;
    assert_eq!(got, [4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_run_reads_what_is_new_and_ends() {
    let Some(url) = url() else { return };
    let (t, c) = Table::new(&url, "catchup", "id int8 PRIMARY KEY").await;
    c.batch_execute(&format!(
        "INSERT INTO {} SELECT generate_series(1, 10)",
        t.name
    ))
    .await
    .unwrap();
    let body = format!(
        "url = \"{url}\"\ntable = \"{}\"\nincremental = {{ column = \"id\", follow = false }}",
        t.name
    );
    let mut src = build(&body, 4).unwrap();
    let (batches, last) = read_all(src.as_mut()).await;
    assert_eq!(ids(&batches), (1..=10).collect::<Vec<_>>());
    let last = last.unwrap();
    assert_eq!(last, "p=10;d=");
    c.batch_execute(&format!(
        "INSERT INTO {} SELECT generate_series(11, 12)",
        t.name
    ))
    .await
    .unwrap();
    let mut src = build(&body, 4).unwrap();
    src.seek(&last).await.unwrap();
    let (batches, _) = read_all(src.as_mut()).await;
    assert_eq!(ids(&batches), [11, 12]);
}
