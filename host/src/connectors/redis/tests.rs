//! The Redis sink against a real server (`WEIR_TEST_REDIS_URL`, by default
//! the local one; see `tests/src/services.rs` for the address and for
//! skipping). Each test writes under a prefix of its own and deletes its keys
//! afterwards, even when it fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::*;
use crate::node::{SourceSpan, StageLineage};

// The one test-support file, also included by the other service tests here.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../tests/src/services.rs"]
mod services;

/// The server's address, or `None` when the run skips Redis tests.
fn url() -> Option<String> {
    services::url(services::Service::Redis)
}

/// A prefix no other test uses; its keys are deleted when this is dropped.
struct Namespace {
    url: String,
    prefix: String,
}

impl Namespace {
    fn new(url: &str, test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            url: url.to_owned(),
            prefix: format!("weir-test:{test}:{}:{nanos}", std::process::id()),
        }
    }

    fn sync(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn keys(&self) -> Vec<String> {
        let mut c = self.sync();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut c)
            .unwrap();
        keys.sort();
        keys
    }

    fn hash(&self, entity: &str) -> BTreeMap<String, Vec<u8>> {
        let mut c = self.sync();
        redis::cmd("HGETALL")
            .arg(format!("{}:{entity}", self.prefix))
            .query(&mut c)
            .unwrap()
    }

    /// Every vector, as text, without lineage.
    fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.keys()
            .into_iter()
            .map(|k| {
                let entity = k[self.prefix.len() + 1..].to_owned();
                let h = self
                    .hash(&entity)
                    .into_iter()
                    .filter(|(f, _)| f != LINEAGE_FIELD)
                    .map(|(f, v)| (f, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                (entity, h)
            })
            .collect()
    }

    fn spec(&self) -> RedisSinkSpec {
        toml::from_str(&format!(
            "url = \"{}\"\nprefix = \"{}\"\nentity = \"user\"\nevent_time = \"ts\"",
            self.url, self.prefix
        ))
        .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let mut c = self.sync();
        let mut keys = self.keys();
        keys.push(self.prefix.clone());
        let _: () = redis::cmd("DEL").arg(keys).query(&mut c).unwrap();
    }
}

fn lineage(stage_digest: &str, from: Option<&str>, to: &str) -> Arc<Lineage> {
    Arc::new(Lineage {
        pipeline: "clicks".into(),
        version: Some(3),
        sources: vec![SourceSpan {
            source: "events".into(),
            from: from.map(Into::into),
            to: Some(to.into()),
        }],
        stages: vec![StageLineage {
            stage: "featurize".into(),
            digest: stage_digest.into(),
            params_hash: "ab".repeat(32),
        }],
    })
}

/// `user`, `ts` (ms) and an Int64 `clicks` and Float64 `score`.
fn simple(rows: &[(&str, i64, Option<i64>, f64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("clicks", DataType::Int64, true),
        Field::new("score", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.1),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap()
}

async fn write(sink: &mut RedisSink, batch: &RecordBatch, l: &Arc<Lineage>) {
    AsyncSink::write(sink, batch, l).await.unwrap();
}

#[test]
fn config_errors_name_the_key() {
    let bad = |extra: &str| {
        let text = format!(
            "url = \"redis://127.0.0.1:6379\"\nprefix = \"p\"\nentity = \"user\"\nevent_time = \"ts\"\n{extra}"
        );
        match toml::from_str::<RedisSinkSpec>(&text) {
            Ok(s) => RedisSink::new("sink[0].redis", &s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            Err(e) => e.message().to_owned(),
        }
    };
    assert_eq!(bad(""), "");
    assert_eq!(
        bad("ttl = \"0s\""),
        "`sink[0].redis.ttl`: must be greater than 0 (leave it out for no expiry)"
    );
    assert_eq!(
        bad("ttl_from = \"event_time\""),
        "`sink[0].redis.ttl_from`: applies only with `ttl`"
    );
    assert_eq!(
        bad("features = [\"a\", \"_lineage\"]"),
        "`sink[0].redis.features`: `_lineage` is reserved for the sink's own field"
    );
    assert_eq!(
        bad("features = [\"user\"]"),
        "`sink[0].redis.features`: `user` is the entity column; it is the key, not a feature"
    );
    assert_eq!(
        bad("features = [\"a\", \"a\"]"),
        "`sink[0].redis.features`: `a` is listed twice"
    );
    assert_eq!(
        bad("pipeline_rows = 0"),
        "invalid value: integer `0`, expected a nonzero usize"
    );
    assert_eq!(
        bad("ttl = \"7 weeks\""),
        "`7 weeks`: unknown duration unit `weeks` (use ms, s, m, h or d)"
    );
    assert!(bad("ttl_form = \"write\"").starts_with("unknown field `ttl_form`"));
    let s: RedisSinkSpec = toml::from_str(
        "url = \"http://x\"\nprefix = \"p\"\nentity = \"user\"\nevent_time = \"ts\"",
    )
    .unwrap();
    let e = RedisSink::new("sink[1].redis", &s)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("`sink[1].redis.url`: `http://x` is not a Redis URL"),
        "{e}"
    );
    assert_eq!(redact("redis://u:secret@h:1/2"), "redis://h:1/2");
}

#[tokio::test]
async fn columns_are_checked_against_the_input() {
    // Columns are resolved before anything is sent: no server is needed.
    let mut spec: RedisSinkSpec = toml::from_str(
        "url = \"redis://127.0.0.1:1\"\nprefix = \"p\"\nentity = \"user\"\nevent_time = \"ts\"",
    )
    .unwrap();
    spec.features = Some(vec!["clicks".into(), "nope".into()]);
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    let batch = simple(&[("a", 1, Some(1), 1.0)]);
    let e = AsyncSink::write(&mut sink, &batch, &lineage("d", None, "1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`sink[0].redis.features`: column `nope` is not in the input (columns: user, ts, clicks, score)"
    );
    spec.features = None;
    spec.event_time = "clicks".into();
    spec.entity = "score".into();
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    let e = AsyncSink::write(&mut sink, &batch, &lineage("d", None, "1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`sink[0].redis.entity`: column `score` is Float64; it must be a string or integer column"
    );
}

/// A batch with a column of every type the sink stores, two rows, nulls in the
/// second.
fn every_type() -> RecordBatch {
    let list = ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![
        Some(vec![Some(1), None, Some(3)]),
        None,
    ]);
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int32, true)),
            Arc::new(Int32Array::from(vec![Some(7), None])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("x\"y"), Some("z")])) as ArrayRef,
        ),
    ]);
    let dict: DictionaryArray<arrow::datatypes::Int8Type> =
        vec![Some("red"), None].into_iter().collect();
    let decimal = Decimal128Array::from(vec![Some(1230), Some(-5)])
        .with_precision_and_scale(10, 2)
        .unwrap();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("user", Arc::new(Int64Array::from(vec![42, -7]))),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(vec![
                1_704_067_200_123_456,
                1_704_067_200_000_999,
            ])),
        ),
        ("i8", Arc::new(Int8Array::from(vec![Some(-128), None]))),
        ("i16", Arc::new(Int16Array::from(vec![Some(-32768), None]))),
        (
            "i32",
            Arc::new(Int32Array::from(vec![Some(i32::MIN), Some(0)])),
        ),
        (
            "i64",
            Arc::new(Int64Array::from(vec![Some(i64::MAX), None])),
        ),
        ("u8", Arc::new(UInt8Array::from(vec![Some(255), None]))),
        ("u16", Arc::new(UInt16Array::from(vec![Some(65535), None]))),
        (
            "u32",
            Arc::new(UInt32Array::from(vec![Some(u32::MAX), None])),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from(vec![Some(u64::MAX), None])),
        ),
        (
            "f32",
            Arc::new(Float32Array::from(vec![Some(0.1), Some(f32::NAN)])),
        ),
        (
            "f64",
            Arc::new(Float64Array::from(vec![
                Some(0.1 + 0.2),
                Some(f64::INFINITY),
            ])),
        ),
        (
            "f64_big",
            Arc::new(Float64Array::from(vec![Some(-1.5e300), Some(2.0)])),
        ),
        (
            "bool",
            Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
        ),
        (
            "utf8",
            Arc::new(StringArray::from(vec![Some("héllo, wörld"), Some("")])),
        ),
        (
            "large_utf8",
            Arc::new(LargeStringArray::from(vec![Some("big"), None])),
        ),
        (
            "utf8_view",
            Arc::new(StringViewArray::from(vec![Some("a view"), None])),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from(vec![Some(&b"\x00\xff\r\n"[..]), None])),
        ),
        (
            "ts_s",
            Arc::new(TimestampSecondArray::from(vec![Some(0), None]).with_timezone("+02:00")),
        ),
        (
            "ts_ms",
            Arc::new(TimestampMillisecondArray::from(vec![Some(-1), None])),
        ),
        (
            "ts_ns",
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(1_704_067_200_000_000_001),
                None,
            ])),
        ),
        (
            "date",
            Arc::new(Date32Array::from(vec![Some(19_723), Some(-1)])),
        ),
        ("decimal", Arc::new(decimal)),
        ("list", Arc::new(list)),
        ("struct", Arc::new(strukt)),
        ("dict", Arc::new(dict)),
    ];
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

fn text_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reads_back_exactly() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "types");
    let mut sink = RedisSink::new("sink[0].redis", &ns.spec()).unwrap();
    let l = lineage(&"d1".repeat(32), Some("0"), "2");
    write(&mut sink, &every_type(), &l).await;
    assert_eq!(sink.stats().written, 2);

    let mut snap = ns.snapshot();
    assert_eq!(snap.keys().collect::<Vec<_>>(), ["-7", "42"]);
    // Binary bytes are stored as they are.
    assert_eq!(ns.hash("42")["binary"], b"\x00\xff\r\n");
    snap.get_mut("42").unwrap().remove("binary");
    assert_eq!(
        snap["42"],
        text_map(&[
            ("_event_time_ms", "1704067200123"),
            ("i8", "-128"),
            ("i16", "-32768"),
            ("i32", "-2147483648"),
            ("i64", "9223372036854775807"),
            ("u8", "255"),
            ("u16", "65535"),
            ("u32", "4294967295"),
            ("u64", "18446744073709551615"),
            ("f32", "0.1"),
            ("f64", "0.30000000000000004"),
            ("f64_big", "-1.5e300"),
            ("bool", "true"),
            ("utf8", "héllo, wörld"),
            ("large_utf8", "big"),
            ("utf8_view", "a view"),
            ("ts_s", "1970-01-01T00:00:00Z"),
            ("ts_ms", "1969-12-31T23:59:59.999Z"),
            ("ts_ns", "2024-01-01T00:00:00.000000001Z"),
            ("date", "2024-01-01"),
            ("decimal", "12.30"),
            ("list", "[1,null,3]"),
            ("struct", "{\"a\":7,\"b\":\"x\\\"y\"}"),
            ("dict", "red"),
        ])
    );
    // Nulls are not stored.
    assert_eq!(
        snap["-7"],
        text_map(&[
            ("_event_time_ms", "1704067200000"),
            ("i32", "0"),
            ("f32", "NaN"),
            ("f64", "Infinity"),
            ("f64_big", "2.0"),
            ("bool", "false"),
            ("utf8", ""),
            ("date", "1969-12-31"),
            ("decimal", "-0.05"),
            ("struct", "{\"a\":null,\"b\":\"z\"}"),
        ])
    );
    // The lineage is the batch's, as JSON.
    let stored: Lineage = serde_json::from_slice(&ns.hash("42")["_lineage"]).unwrap();
    assert_eq!(stored, *l);

    // Read back, typed by the schema hash.
    let got = read_vectors(
        &url,
        &ns.prefix,
        &["42".into(), "-7".into(), "nobody".into()],
    )
    .await
    .unwrap();
    assert!(got[2].is_none());
    let v = got[0].as_ref().unwrap();
    assert_eq!(v.event_time_ms, Some(1_704_067_200_123));
    assert_eq!(v.lineage.as_ref(), Some(&*l));
    let f = &v.features;
    assert_eq!(f["i64"], serde_json::json!(i64::MAX));
    assert_eq!(f["u64"], serde_json::json!(u64::MAX));
    assert_eq!(f["f32"], serde_json::json!(0.1));
    assert_eq!(f["f64"], serde_json::json!(0.1 + 0.2));
    assert_eq!(f["bool"], serde_json::json!(true));
    assert_eq!(f["binary"], serde_json::json!("00ff0d0a"));
    assert_eq!(f["list"], serde_json::json!([1, null, 3]));
    assert_eq!(f["struct"], serde_json::json!({"a": 7, "b": "x\"y"}));
    assert_eq!(
        f["ts_ns"],
        serde_json::json!("2024-01-01T00:00:00.000000001Z")
    );
    assert_eq!(f["decimal"], serde_json::json!("12.30"));
    let v = got[1].as_ref().unwrap();
    assert_eq!(v.features["f64"], serde_json::json!("Infinity"));

    // A newer vector with a null removes the stale value.
    let mut newer = simple(&[("ignored", 0, None, 0.0)]);
    let user: ArrayRef = Arc::new(Int64Array::from(vec![42]));
    let mut cols = newer.columns().to_vec();
    cols[0] = user;
    cols[1] = Arc::new(TimestampMillisecondArray::from(vec![1_704_067_300_000]));
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("i64", DataType::Int64, true),
        Field::new("f64", DataType::Float64, true),
    ]));
    newer = RecordBatch::try_new(schema, cols).unwrap();
    write(&mut sink, &newer, &l).await;
    let h = ns.snapshot().remove("42").unwrap();
    assert!(!h.contains_key("i64"), "{h:?}");
    assert_eq!(h["f64"], "0.0");
    assert_eq!(h["_event_time_ms"], "1704067300000");
    // Features the newer batch does not have stay.
    assert_eq!(h["u8"], "255");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_set_from_the_write_or_the_event_time() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "ttl");
    let mut spec = ns.spec();
    spec.ttl = Some("1h".parse().unwrap());
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    let l = lineage("d", None, "1");
    write(&mut sink, &simple(&[("a", 1000, Some(1), 0.5)]), &l).await;
    let mut c = ns.sync();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:a", ns.prefix))
        .query(&mut c)
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "{pttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}:a", ns.prefix))
        .query(&mut c)
        .unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");

    spec.ttl_from = TtlFrom::EventTime;
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let event = now + 86_400_000;
    write(
        &mut sink,
        &simple(&[("b", event, Some(1), 0.5), ("old", 1000, Some(2), 0.5)]),
        &l,
    )
    .await;
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("{}:b", ns.prefix))
        .query(&mut c)
        .unwrap();
    assert_eq!(at, event + 3_600_000);
    // A vector older than its TTL is gone as it is written.
    assert!(ns.hash("old").is_empty());
    // Replaying leaves the expiry exactly where it was.
    write(&mut sink, &simple(&[("b", event, Some(1), 0.5)]), &l).await;
    let again: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("{}:b", ns.prefix))
        .query(&mut c)
        .unwrap();
    assert_eq!(again, at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_vector_never_overwrites_a_newer_one() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "order");
    let mut sink = RedisSink::new("sink[0].redis", &ns.spec()).unwrap();
    let l = lineage("d", None, "1");
    write(
        &mut sink,
        &simple(&[("a", 2000, Some(2), 2.0), ("b", 2000, Some(2), 2.0)]),
        &l,
    )
    .await;
    // Older for `a`, equal for `b` (rewritten), newer then older within a batch.
    write(
        &mut sink,
        &simple(&[
            ("a", 1999, Some(1), 1.0),
            ("b", 2000, Some(3), 3.0),
            ("c", 5, Some(5), 5.0),
            ("c", 4, Some(4), 4.0),
        ]),
        &l,
    )
    .await;
    let snap = ns.snapshot();
    assert_eq!(
        snap["a"],
        text_map(&[
            ("_event_time_ms", "2000"),
            ("clicks", "2"),
            ("score", "2.0")
        ])
    );
    assert_eq!(
        snap["b"],
        text_map(&[
            ("_event_time_ms", "2000"),
            ("clicks", "3"),
            ("score", "3.0")
        ])
    );
    assert_eq!(
        snap["c"],
        text_map(&[("_event_time_ms", "5"), ("clicks", "5"), ("score", "5.0")])
    );
    assert_eq!(sink.stats().written, 4);
    assert_eq!(sink.stats().stale, 2);
}

/// xorshift64*: deterministic shuffles without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_leave_the_newest_vector_per_entity() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "race");
    const ENTITIES: usize = 500;
    const VERSIONS: usize = 8;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Every entity gets VERSIONS vectors with distinct times; each writer gets
    // half of them, and writes its share in shuffled order.
    let mut shares: [Vec<(String, i64)>; 2] = [Vec::new(), Vec::new()];
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for e in 0..ENTITIES {
        let mut times: Vec<i64> = (0..VERSIONS as i64).map(|v| 1_000 + v * 7).collect();
        rng.shuffle(&mut times);
        for (k, t) in times.into_iter().enumerate() {
            let name = format!("u{e}");
            let best = newest.entry(name.clone()).or_insert(t);
            *best = (*best).max(t);
            shares[k % 2].push((name, t));
        }
    }
    for s in &mut shares {
        rng.shuffle(s);
    }
    let l = lineage("d", None, "1");
    let mut tasks = Vec::new();
    for share in shares {
        let mut spec = ns.spec();
        // Small pipelines interleave the writers' commands finely.
        spec.pipeline_rows = NonZeroUsize::new(100).unwrap();
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
            for part in share.chunks(250) {
                let rows: Vec<(&str, i64, Option<i64>, f64)> = part
                    .iter()
                    .map(|(e, t)| (e.as_str(), *t, Some(*t * 10), *t as f64 / 4.0))
                    .collect();
                write(&mut sink, &simple(&rows), &l).await;
                tokio::task::yield_now().await;
            }
            sink.stats()
        }));
    }
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await.unwrap());
    }
    let total: u64 = stats.iter().map(|s| s.written + s.stale).sum();
    assert_eq!(total, (ENTITIES * VERSIONS) as u64);
    let snap = ns.snapshot();
    assert_eq!(snap.len(), ENTITIES);
    for (entity, t) in newest {
        let want = text_map(&[
            ("_event_time_ms", &t.to_string()),
            ("clicks", &(t * 10).to_string()),
            ("score", &format!("{:?}", t as f64 / 4.0)),
        ]);
        assert_eq!(snap[&entity], want, "{entity}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_run_changes_nothing() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "replay");
    let mut spec = ns.spec();
    spec.ttl = Some("30d".parse().unwrap());
    spec.ttl_from = TtlFrom::EventTime;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batches: Vec<RecordBatch> = (0..5)
        .map(|b| {
            let rows: Vec<(String, i64, Option<i64>, f64)> = (0..300)
                .map(|r| {
                    let e = (r * 7 + b * 13) % 200;
                    (
                        format!("e{e}"),
                        now + (b * 300 + r),
                        (r % 3 != 0).then_some(r),
                        b as f64,
                    )
                })
                .collect();
            let rows: Vec<(&str, i64, Option<i64>, f64)> =
                rows.iter().map(|r| (r.0.as_str(), r.1, r.2, r.3)).collect();
            simple(&rows)
        })
        .collect();
    let run = |spec: RedisSinkSpec| {
        let batches = batches.clone();
        async move {
            let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
            for (i, b) in batches.iter().enumerate() {
                let l = lineage(
                    "d",
                    Some(&(i * 300).to_string()),
                    &((i + 1) * 300).to_string(),
                );
                write(&mut sink, b, &l).await;
            }
        }
    };
    let expiries = || {
        let mut c = ns.sync();
        ns.keys()
            .into_iter()
            .map(|k| {
                let at: i64 = redis::cmd("PEXPIRETIME").arg(&k).query(&mut c).unwrap();
                (k, at)
            })
            .collect::<Vec<_>>()
    };
    run(spec.clone()).await;
    let first = ns.snapshot();
    let first_lineage = ns.hash("e0")["_lineage"].clone();
    let first_expiry = expiries();
    assert_eq!(first.len(), 200);
    // The replay, and then the last batch again alone (a retried batch).
    run(spec.clone()).await;
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    write(&mut sink, &batches[4], &lineage("d", Some("1200"), "1500")).await;
    assert_eq!(ns.snapshot(), first);
    assert_eq!(ns.hash("e0")["_lineage"], first_lineage);
    assert_eq!(expiries(), first_expiry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_script_cache_is_reloaded() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "noscript");
    let mut sink = RedisSink::new("sink[0].redis", &ns.spec()).unwrap();
    let l = lineage("d", None, "1");
    write(&mut sink, &simple(&[("a", 1, Some(1), 1.0)]), &l).await;
    // What a restart does to the script cache.
    let mut c = ns.sync();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    write(&mut sink, &simple(&[("a", 2, Some(2), 2.0)]), &l).await;
    assert_eq!(ns.snapshot()["a"]["clicks"], "2");
    assert_eq!(sink.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_it_cannot_store_are_dead_letters_and_the_rest_are_written() {
    let Some(url) = url() else { return };
    let ns = Namespace::new(&url, "bad");
    let mut sink = RedisSink::new("sink[0].redis", &ns.spec()).unwrap();
    let l = lineage("d", Some("10"), "20");
    // Row 1 has no event time, row 2 no entity; `s`'s key holds a string.
    let mut c = ns.sync();
    let _: () = redis::cmd("SET")
        .arg(format!("{}:s", ns.prefix))
        .arg("x")
        .query(&mut c)
        .unwrap();
    let mut batch = simple(&[
        ("a", 1, Some(1), 1.0),
        ("b", 1, Some(2), 2.0),
        ("c", 1, Some(3), 3.0),
        ("s", 1, Some(4), 4.0),
        ("d", 1, Some(5), 5.0),
    ]);
    let mut cols = batch.columns().to_vec();
    cols[0] = Arc::new(StringArray::from(vec![
        Some("a"),
        Some("b"),
        None,
        Some("s"),
        Some("d"),
    ]));
    cols[1] = Arc::new(TimestampMillisecondArray::from(vec![
        Some(1),
        None,
        Some(1),
        Some(1),
        Some(1),
    ]));
    batch = RecordBatch::try_new(batch.schema(), cols).unwrap();
    write(&mut sink, &batch, &l).await;
    let mut out = Emitter::default();
    AsyncSink::report(&mut sink, &mut out);
    let letters: Vec<(&str, &str, &str)> = out
        .dead_letters
        .iter()
        .map(|d| {
            (
                d.reason.as_str(),
                d.position.as_str(),
                d.text().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        letters,
        [
            (
                "event_time_null",
                "events@10..20 row 1",
                r#"{"user":"b","ts":null,"clicks":2,"score":2.0}"#
            ),
            (
                "entity_null",
                "events@10..20 row 2",
                r#"{"user":null,"ts":1,"clicks":3,"score":3.0}"#
            ),
            (
                "redis_refused",
                "events@10..20 row 3",
                r#"{"user":"s","ts":1,"clicks":4,"score":4.0}"#
            ),
        ]
    );
    assert!(out.dead_letters.iter().all(|d| d.fault == Fault::Data));
    assert_eq!(
        out.dead_letters[0].detail,
        "event-time column `ts` is null: the newer-wins guard needs it"
    );
    let refused = &out.dead_letters[2].detail;
    assert!(
        refused.starts_with("Redis refused the vector: "),
        "{refused}"
    );
    assert!(refused.contains("WRONGTYPE"), "{refused}");
    assert!(refused.contains(&format!("{}:s", ns.prefix)), "{refused}");
    // The others are written; `s` keeps what it held.
    let held: String = redis::cmd("GET")
        .arg(format!("{}:s", ns.prefix))
        .query(&mut c)
        .unwrap();
    assert_eq!(held, "x");
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:s", ns.prefix))
        .query(&mut c)
        .unwrap();
    let snap = ns.snapshot();
    assert_eq!(snap.keys().collect::<Vec<_>>(), ["a", "d"]);
    assert_eq!(snap["d"]["clicks"], "5");
    assert_eq!(sink.stats().written, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_transient_service_failure() {
    let mut spec: RedisSinkSpec = toml::from_str(
        "url = \"redis://:pw@127.0.0.1:1\"\nprefix = \"p\"\nentity = \"user\"\nevent_time = \"ts\"",
    )
    .unwrap();
    spec.retry.attempts = std::num::NonZeroU32::new(2).unwrap();
    spec.retry.backoff = "10ms".parse().unwrap();
    let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
    let e = AsyncSink::write(
        &mut sink,
        &simple(&[("a", 1, Some(1), 1.0)]),
        &lineage("d", None, "1"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.fault(), crate::node::Fault::Service { transient: true });
    let text = e.to_string();
    assert!(
        text.starts_with("connecting redis://127.0.0.1:1: "),
        "{text}"
    );
    assert!(text.ends_with("(after 2 attempts) (transient)"), "{text}");
    assert!(!text.contains("pw"));
}

/// The sink's rate against `redis-benchmark`'s pipelined `HSET` of the same
/// fields on the same server, in alternating rounds. Run it with
/// `cargo test -p weir-host --lib connectors::redis::tests::throughput -- --ignored --nocapture`
/// (`WEIR_REDIS_BENCH_ROWS` and `WEIR_REDIS_BENCH_ROUNDS` change its size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it on purpose"]
async fn throughput_against_redis_benchmark() {
    let Some(url) = url() else { return };
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rows = env("WEIR_REDIS_BENCH_ROWS", 400_000);
    let rounds = env("WEIR_REDIS_BENCH_ROUNDS", 5);
    const ENTITIES: usize = 100_000;
    const BATCH: usize = 8192;
    let ns = Namespace::new(&url, "bench");
    let l = lineage(
        &"7f".repeat(32),
        Some("events.jsonl:1048576"),
        "events.jsonl:2097152",
    );
    let lineage_json = serde_json::to_string(&*l).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("clicks", DataType::Int64, true),
        Field::new("views", DataType::Int64, true),
        Field::new("ctr", DataType::Float64, true),
        Field::new("user_bucket", DataType::Int32, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("active", DataType::Boolean, true),
        Field::new(
            "last_seen",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    // Batches for a round; `base` makes each round's vectors newer than the last.
    let batches = |base: i64| -> Vec<RecordBatch> {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        (0..rows)
            .step_by(BATCH)
            .map(|start| {
                let n = BATCH.min(rows - start);
                let users: Vec<String> = (0..n)
                    .map(|_| format!("{:012}", rng.below(ENTITIES)))
                    .collect();
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(users)),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|i| base + (start + i) as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        (0..n).map(|i| (i % 50) as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        (0..n).map(|i| (i % 900) as i64),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| (i % 50) as f64 / 901.0),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        (0..n).map(|i| (i % 32) as i32),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| ["DE", "FR", "US"][i % 3]),
                    )),
                    Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 2 == 0)))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|i| 1_704_067_200_000 + i as i64),
                    )),
                ];
                RecordBatch::try_new(schema.clone(), cols).unwrap()
            })
            .collect()
    };
    let benchmark = |with_lineage: bool| -> f64 {
        let mut args: Vec<String> = [
            "-u",
            &url,
            "-P",
            "64",
            "-q",
            "-n",
            &rows.to_string(),
            "-r",
            &ENTITIES.to_string(),
            "HSET",
            &format!("{}:__rand_int__", ns.prefix),
            "_event_time_ms",
            "1704067200000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if with_lineage {
            args.extend(["_lineage".to_owned(), lineage_json.clone()]);
        }
        for (f, v) in [
            ("clicks", "12"),
            ("views", "340"),
            ("ctr", "0.013318534961154272"),
            ("user_bucket", "17"),
            ("country", "DE"),
            ("active", "true"),
            ("last_seen", "2024-01-01T00:00:00.017Z"),
        ] {
            args.extend([f.to_owned(), v.to_owned()]);
        }
        let out = std::process::Command::new("redis-benchmark")
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.rsplit('\r').next().unwrap_or_default();
        let rate = last
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<f64>().ok());
        rate.unwrap_or_else(|| panic!("redis-benchmark said: {text}"))
    };
    let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (k, (name, lineage_on, keys_per_call)) in [
            ("sink", true, KEYS_PER_CALL),
            ("sink without lineage", false, KEYS_PER_CALL),
            ("sink, one script call per entity", true, 1),
        ]
        .into_iter()
        .enumerate()
        {
            // Newer than anything written before, the benchmark's vectors included.
            let data = batches(1_800_000_000_000 + 1_000_000 * (3 * round + k) as i64);
            let mut spec = ns.spec();
            spec.lineage = lineage_on;
            let mut sink = RedisSink::new("sink[0].redis", &spec).unwrap();
            sink.keys_per_call = keys_per_call;
            let started = std::time::Instant::now();
            for b in &data {
                write(&mut sink, b, &l).await;
            }
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(
                sink.stats().written,
                rows as u64,
                "every vector is newer than the last round's"
            );
            results.entry(name).or_default().push(rows as f64 / secs);
        }
        results
            .entry("redis-benchmark HSET")
            .or_default()
            .push(benchmark(true));
        results
            .entry("redis-benchmark HSET without lineage")
            .or_default()
            .push(benchmark(false));
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{rows} rows over {ENTITIES} entities, 7 features + _event_time_ms + _lineage ({} bytes), {rounds} alternating rounds",
        lineage_json.len()
    );
    for (name, v) in &results {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        println!(
            "  {name:<38} median {:>9.0} rows/s  (min {lo:.0}, max {hi:.0})",
            median(v)
        );
    }
    let ratio = median(&results["redis-benchmark HSET"]) / median(&results["sink"]);
    let ratio_plain = median(&results["redis-benchmark HSET without lineage"])
        / median(&results["sink without lineage"]);
    println!("  redis-benchmark / sink: {ratio:.2}x with lineage, {ratio_plain:.2}x without");
    let per_entity =
        median(&results["sink"]) / median(&results["sink, one script call per entity"]);
    println!("  64 entities per script call / one per entity: {per_entity:.2}x");
}
