//! Tests against a real JetStream server (`WEIR_TEST_NATS_URL`, by default the
//! local one; see `tests/src/services.rs` for the address and for skipping). Each test has its own streams, named at random and
//! deleted afterwards; the configuration tests need no server.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use async_nats::jetstream;

use super::*;
use crate::node::config::{FieldSpec, FieldType, SinkConfig, SourceConfig};
use crate::node::retry::RetryPolicy;
use crate::node::{AsyncSink, AsyncSource, DeadLetter, Emitter, Lineage, SourceSpan};
use crate::units::Millis;

// The one test-support file, also included by the other service tests here.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../tests/src/services.rs"]
mod services;

/// The server's address, or `None` when the run skips NATS tests.
fn nats_url() -> Option<String> {
    services::url(services::Service::Nats)
}

/// A name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Streams made for one test, deleted when it ends (passing or not).
struct Streams {
    url: String,
    names: Vec<String>,
}

impl Streams {
    /// A stream capturing `{name}.>`.
    async fn create(&mut self, js: &jetstream::Context) -> String {
        let name = unique("weir_test");
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .expect("creating a test stream");
        self.names.push(name.clone());
        name
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), std::mem::take(&mut self.names));
        // A runtime of its own: the test's may be gone or inside a panic.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(&url).await {
                    let js = jetstream::new(client);
                    for n in names {
                        let _ = js.delete_stream(&n).await;
                    }
                }
            });
        })
        .join()
        .ok();
    }
}

async fn setup(url: &str) -> (jetstream::Context, Streams) {
    let client = async_nats::connect(url)
        .await
        .expect("the server answered a moment ago, so it must be reachable");
    (
        jetstream::new(client),
        Streams {
            url: url.to_owned(),
            names: Vec::new(),
        },
    )
}

fn fields() -> Vec<FieldSpec> {
    let f = |name: &str, t, required| FieldSpec {
        name: name.into(),
        data_type: t,
        required,
        min: None,
        max: None,
    };
    vec![
        f("id", FieldType::Int64, true),
        f("user", FieldType::Utf8, false),
    ]
}

fn event(i: u64) -> String {
    format!(r#"{{"id":{i},"user":"u{}"}}"#, i % 7)
}

/// Publishes `payloads` on `subject`, waiting for every ack.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: impl IntoIterator<Item = String>,
) {
    // Awaited in windows: the client allows 5,000 unacknowledged publishes.
    let mut acks = Vec::new();
    for p in payloads {
        acks.push(js.publish(subject.to_owned(), p.into()).await.unwrap());
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

fn source_spec(url: &str, stream: &str) -> JetStreamSourceSpec {
    JetStreamSourceSpec {
        url: url.to_owned(),
        stream: stream.to_owned(),
        subject: Some(format!("{stream}.in")),
        durable: None,
        deliver: Deliver::All,
        batch: None,
        max_wait: Millis(Duration::from_millis(50)),
        max_ack_pending: None,
        max_deliver: NonZeroU32::new(5).unwrap(),
        ack_wait: Millis(Duration::from_secs(30)),
        payload: Payload::Object,
        schema: fields(),
        rejects: None,
        create_stream: false,
        stop_when_drained: true,
        retry: RetryPolicy::default(),
    }
}

fn source(spec: JetStreamSourceSpec, batch: usize) -> JetStreamSource {
    spec.check("source[0].jetstream").unwrap();
    JetStreamSource::new(
        spec,
        "weir_test_durable".into(),
        NonZeroUsize::new(batch).unwrap(),
    )
}

/// What one call of `next_batch` gave.
struct Call {
    more: bool,
    batches: Vec<(RecordBatch, Option<String>)>,
    letters: Vec<DeadLetter>,
    counters: std::collections::BTreeMap<String, u64>,
}

async fn call(src: &mut JetStreamSource) -> Call {
    let mut out = Emitter::default();
    let more = src.next_batch(&mut out).await.unwrap();
    let letters = std::mem::take(&mut out.dead_letters);
    let counters = out.counters().clone();
    let batches = out
        .take_output()
        .into_iter()
        .map(|(b, _, p)| (b, p))
        .collect();
    Call {
        more,
        batches,
        letters,
        counters,
    }
}

/// The ids `src` emits, committing each batch, until `n` came or 10 s passed.
async fn read_committing(src: &mut JetStreamSource, n: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    let started = Instant::now();
    while seen.len() < n && started.elapsed() < Duration::from_secs(10) {
        for (b, p) in call(src).await.batches {
            seen.extend(ids(&b));
            src.commit(&p.unwrap()).await.unwrap();
        }
    }
    seen
}

fn ids(b: &RecordBatch) -> Vec<i64> {
    b.column(0).as_primitive::<Int64Type>().values().to_vec()
}

async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> jetstream::consumer::Info {
    js.get_stream(stream)
        .await
        .unwrap()
        .consumer_info(durable)
        .await
        .unwrap()
}

/// The consumer's info once its ack floor reached `seq` (acks are sent without
/// waiting for the server, so it may take a moment).
async fn floor_reaches(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    seq: u64,
) -> jetstream::consumer::Info {
    let started = Instant::now();
    loop {
        let info = consumer_info(js, stream, durable).await;
        if info.ack_floor.stream_sequence >= seq || started.elapsed() > Duration::from_secs(5) {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lineage(source: &str, from: Option<String>, to: Option<String>) -> Arc<Lineage> {
    Arc::new(Lineage {
        pipeline: "p".into(),
        version: None,
        sources: vec![SourceSpan {
            source: source.into(),
            from,
            to,
        }],
        stages: Vec::new(),
    })
}

fn sink_spec(url: &str, stream: &str) -> JetStreamSinkSpec {
    JetStreamSinkSpec {
        url: url.to_owned(),
        subject: format!("{stream}.out"),
        stream: Some(stream.to_owned()),
        per: Per::Row,
        id: MsgId::Content,
        columns: None,
        float_decimals: None,
        max_inflight: NonZeroUsize::new(4096).unwrap(),
        retry: RetryPolicy::default(),
    }
}

/// Messages the stream holds on `subject`.
async fn count_on(js: &jetstream::Context, stream: &str, subject: &str) -> u64 {
    use futures_util::TryStreamExt as _;
    let s = js.get_stream(stream).await.unwrap();
    let mut subjects = s.info_with_subjects(subject).await.unwrap();
    let mut total = 0;
    while let Some((_, n)) = subjects.try_next().await.unwrap() {
        total += n as u64;
    }
    total
}

/// Reads from the source and writes into the sink until the source is drained,
/// committing each position once the sink has it, as the executor does.
async fn pump(src: &mut JetStreamSource, sink: &mut JetStreamSink) -> (Vec<i64>, Vec<DeadLetter>) {
    let (mut seen, mut letters) = (Vec::new(), Vec::new());
    let mut previous = None;
    loop {
        let c = call(src).await;
        letters.extend(c.letters);
        for (b, p) in c.batches {
            seen.extend(ids(&b));
            sink.write(&b, &lineage("in", previous.clone(), p.clone()))
                .await
                .unwrap();
            if let Some(p) = p {
                src.commit(&p).await.unwrap();
                previous = Some(p);
            }
        }
        if !c.more {
            return (seen, letters);
        }
    }
}

#[tokio::test]
async fn every_message_is_consumed_acknowledged_and_in_the_sink() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let n = 10_000u64;
    publish(&js, &format!("{s}.in"), (1..=n).map(event)).await;

    let mut src = source(source_spec(&url, &s), 1000);
    let mut sink = JetStreamSink::new(sink_spec(&url, &s), "p", "out");
    let (seen, letters) = pump(&mut src, &mut sink).await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(
        seen,
        (1..=n as i64).collect::<Vec<_>>(),
        "every message once, in order"
    );

    let info = floor_reaches(&js, &s, src.durable(), n).await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(
        info.ack_floor.stream_sequence, n,
        "the ack floor is the last sequence"
    );
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.config.ack_policy, jetstream::consumer::AckPolicy::All);

    assert_eq!(sink.published(), n);
    assert_eq!(count_on(&js, &s, &format!("{s}.out")).await, n);
    // The sink's messages are the rows as JSON, in order.
    let stream = js.get_stream(&s).await.unwrap();
    let first = stream.get_raw_message(n + 1).await.unwrap();
    assert_eq!(first.subject.as_str(), format!("{s}.out"));
    assert_eq!(std::str::from_utf8(&first.payload).unwrap(), event(1));
    let id = first
        .headers
        .get("Nats-Msg-Id")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(
        id.starts_with("p/out/") && id.len() == "p/out/".len() + 32,
        "{id}"
    );
    let last = stream.get_raw_message(2 * n).await.unwrap();
    assert_eq!(std::str::from_utf8(&last.payload).unwrap(), event(n));
}

#[tokio::test]
async fn corrupt_messages_become_dead_letters_with_reason_and_sequence() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let payloads = [
        event(1),
        r#"{"id":"2","user":"u"}"#.to_owned(),
        "not json".to_owned(),
        String::new(),
        "{\n  \"id\": 5,\n  \"user\": \"pretty\"\n}".to_owned(),
        r#"{"user":"nobody"}"#.to_owned(),
        event(7),
    ];
    publish(&js, &format!("{s}.in"), payloads).await;
    let mut src = source(source_spec(&url, &s), 100);
    let mut sink = JetStreamSink::new(sink_spec(&url, &s), "p", "out");
    let (seen, letters) = pump(&mut src, &mut sink).await;
    assert_eq!(
        seen,
        vec![1, 5, 7],
        "a payload across lines is still one JSON object"
    );
    let got: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l.reason.as_str(), l.position.as_str()))
        .collect();
    let at = |n: u64| format!("{s}:{n}");
    let (p2, p3, p4, p6) = (at(2), at(3), at(4), at(6));
    let mut got = got;
    got.sort_by_key(|(_, p)| p.to_owned());
    assert_eq!(
        got,
        vec![
            ("id:type", p2.as_str()),
            ("invalid_json", p3.as_str()),
            ("empty", p4.as_str()),
            ("id:missing", p6.as_str()),
        ]
    );
    assert_eq!(
        letters
            .iter()
            .find(|l| l.reason == "invalid_json")
            .unwrap()
            .text()
            .unwrap(),
        "not json"
    );
    // Dead letters are committed with their batch: nothing stays pending.
    let info = floor_reaches(&js, &s, src.durable(), 7).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (7, 0)
    );
}

#[tokio::test]
async fn a_lines_payload_is_one_record_per_line_and_a_bad_line_is_its_own_dead_letter() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let payloads = [
        // Three records, a trailing newline.
        format!("{}\n{}\n{}\n", event(1), event(2), event(3)),
        // A blank line between two records, and a bad third line.
        format!("{}\n\n{}\n{{\"id\":\"x\"}}", event(4), event(5)),
        // One record without a newline: as `object` would read it.
        event(6),
        String::new(),
    ];
    publish(&js, &format!("{s}.in"), payloads).await;
    let spec = JetStreamSourceSpec {
        payload: Payload::Lines,
        ..source_spec(&url, &s)
    };
    let mut src = source(spec, 100);
    let mut sink = JetStreamSink::new(sink_spec(&url, &s), "p", "out");
    let (seen, letters) = pump(&mut src, &mut sink).await;
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
    let mut got: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.reason.clone(), l.position.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("empty".to_owned(), format!("{s}:4")),
            ("id:type".to_owned(), format!("{s}:2:4")),
        ]
    );
    let bad = letters.iter().find(|l| l.reason == "id:type").unwrap();
    assert_eq!(
        bad.text().unwrap(),
        r#"{"id":"x"}"#,
        "the line, not the message"
    );
    let info = floor_reaches(&js, &s, src.durable(), 4).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (4, 0)
    );
}

#[tokio::test]
async fn a_message_never_committed_becomes_a_dead_letter_after_max_deliver() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=3).map(event)).await;
    let spec = JetStreamSourceSpec {
        max_deliver: NonZeroU32::new(3).unwrap(),
        ack_wait: Millis(Duration::from_secs(1)),
        max_wait: Millis(Duration::from_millis(200)),
        stop_when_drained: false,
        ..source_spec(&url, &s)
    };
    // A pipeline slower than `ack_wait`: nothing is committed, so the server
    // delivers the messages again; the first two deliveries are decoded, the
    // third is the last and makes dead letters.
    let mut src = source(spec, 10);
    let mut rows = Vec::new();
    let mut letters = Vec::new();
    let mut positions = Vec::new();
    let started = Instant::now();
    while letters.len() < 3 && started.elapsed() < Duration::from_secs(15) {
        let c = call(&mut src).await;
        letters.extend(c.letters);
        for (b, p) in c.batches {
            rows.extend(ids(&b));
            positions.extend(p);
        }
    }
    assert_eq!(rows, vec![1, 2, 3, 1, 2, 3], "two deliveries decoded");
    let reasons: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l.reason.as_str(), l.position.as_str()))
        .collect();
    let at: Vec<String> = (1..=3).map(|n| format!("{s}:{n}")).collect();
    assert_eq!(
        reasons,
        at.iter()
            .map(|p| ("max_deliver", p.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(
        letters[0].detail.contains("delivered 3 times"),
        "{}",
        letters[0].detail
    );
    assert_eq!(letters[0].text().unwrap(), event(1));
    // Redeliveries get positions of their own after the first batch's.
    assert_eq!(positions[0], "3");
    assert!(
        positions[1..].iter().all(|p| p.starts_with("3.")),
        "{positions:?}"
    );
    src.commit(positions.last().unwrap()).await.unwrap();
    let info = floor_reaches(&js, &s, src.durable(), 3).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (3, 0)
    );
}

#[tokio::test]
async fn a_batch_is_emitted_at_max_wait_even_when_calls_are_dropped_sooner() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=3).map(event)).await;
    // As the executor does at every checkpoint barrier: a call waiting for the
    // batch to fill is dropped after 40 ms, well before `max_wait`.
    let spec = JetStreamSourceSpec {
        max_wait: Millis(Duration::from_millis(300)),
        stop_when_drained: false,
        ..source_spec(&url, &s)
    };
    let mut src = source(spec, 100);
    let started = Instant::now();
    let mut got = Vec::new();
    let mut dropped = 0;
    while got.is_empty() && started.elapsed() < Duration::from_secs(5) {
        let mut out = Emitter::default();
        match tokio::time::timeout(Duration::from_millis(40), src.next_batch(&mut out)).await {
            Ok(r) => {
                r.unwrap();
                got.extend(out.take_output().into_iter().flat_map(|(b, _, _)| ids(&b)));
            }
            Err(_) => dropped += 1,
        }
    }
    assert_eq!(got, vec![1, 2, 3], "after {dropped} dropped calls");
    assert!(dropped >= 5, "{dropped} calls dropped before the batch");
}

#[tokio::test]
async fn a_killed_runs_unacknowledged_messages_come_again_at_once_in_order() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=20).map(event)).await;
    // The default ack_wait (30 s): waiting it out would fail the test's bound.
    let spec = JetStreamSourceSpec {
        stop_when_drained: false,
        ..source_spec(&url, &s)
    };
    // A run reads 1..=10, commits 1..=5 and is killed.
    let mut first = source(spec.clone(), 5);
    let c = call(&mut first).await;
    let (b, p) = &c.batches[0];
    assert_eq!(ids(b), (1..=5).collect::<Vec<_>>());
    first.commit(p.as_deref().unwrap()).await.unwrap();
    let c = call(&mut first).await;
    assert_eq!(ids(&c.batches[0].0), (6..=10).collect::<Vec<_>>());
    let durable = first.durable().to_owned();
    floor_reaches(&js, &s, &durable, 5).await;
    drop(first);
    let info = consumer_info(&js, &s, &durable).await;
    // 6..=10 were emitted, and the client had pulled ahead of them.
    assert!(
        info.num_ack_pending >= 5,
        "6..=10 are out, unacknowledged: {}",
        info.num_ack_pending
    );

    // The next run starts right after the ack floor: 6..=20, in order, now.
    let mut src = source(spec, 5);
    let seen = read_committing(&mut src, 15).await;
    assert_eq!(seen, (6..=20).collect::<Vec<_>>());
    let info = floor_reaches(&js, &s, src.durable(), 20).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (20, 0)
    );
}

#[tokio::test]
async fn a_resumed_run_starts_after_its_checkpoint_whatever_the_consumer_holds() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=20).map(event)).await;
    let spec = JetStreamSourceSpec {
        stop_when_drained: false,
        ..source_spec(&url, &s)
    };
    // A run reads 1..=12 and acknowledges nothing (its checkpoint, at 8, was
    // saved; the kill came before the commit reached the server).
    let mut first = source(spec.clone(), 4);
    for _ in 0..3 {
        call(&mut first).await;
    }
    drop(first);
    let mut src = source(spec, 4);
    src.seek("8").await.unwrap();
    let seen = read_committing(&mut src, 12).await;
    assert_eq!(seen, (9..=20).collect::<Vec<_>>());
    floor_reaches(&js, &s, src.durable(), 20).await;
}

#[tokio::test]
async fn the_sinks_message_ids_make_a_replay_a_no_op() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let fields = fields();
    let batch = crate::connectors::parse_lines(
        (1..=500)
            .map(event)
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
        1,
        "x",
        &fields,
        &crate::connectors::schema_of(&fields),
    )
    .unwrap()
    .0;
    let lin = lineage("in", Some("0".into()), Some("500".into()));
    for (id, subject) in [
        (MsgId::Content, "content"),
        (MsgId::Lineage, "lineage"),
        (MsgId::Key(vec!["id".into()]), "key"),
    ] {
        let spec = JetStreamSinkSpec {
            subject: format!("{s}.{subject}"),
            id,
            ..sink_spec(&url, &s)
        };
        let mut sink = JetStreamSink::new(spec.clone(), "p", "out");
        sink.write(&batch, &lin).await.unwrap();
        // A replay after a crash: a new process publishing the same rows.
        let mut replay = JetStreamSink::new(spec, "p", "out");
        replay.write(&batch, &lin).await.unwrap();
        assert_eq!(
            (sink.published(), replay.published(), replay.duplicates()),
            (500, 0, 500),
            "{subject}"
        );
        assert_eq!(
            count_on(&js, &s, &format!("{s}.{subject}")).await,
            500,
            "{subject}"
        );
    }
    // A replay whose batches are cut elsewhere: content ids still match.
    let spec = JetStreamSinkSpec {
        subject: format!("{s}.content"),
        ..sink_spec(&url, &s)
    };
    let mut replay = JetStreamSink::new(spec, "p", "out");
    replay.write(&batch.slice(0, 123), &lin).await.unwrap();
    replay.write(&batch.slice(123, 377), &lin).await.unwrap();
    assert_eq!((replay.published(), replay.duplicates()), (0, 500));
    // Per batch: one message, a JSON array of the rows, deduplicated too.
    let spec = JetStreamSinkSpec {
        subject: format!("{s}.batch"),
        per: Per::Batch,
        ..sink_spec(&url, &s)
    };
    let mut sink = JetStreamSink::new(spec.clone(), "p", "out");
    sink.write(&batch, &lin).await.unwrap();
    sink.write(&batch, &lin).await.unwrap();
    assert_eq!((sink.published(), sink.duplicates()), (1, 1));
    assert_eq!(count_on(&js, &s, &format!("{s}.batch")).await, 1);
    let stream = js.get_stream(&s).await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(&format!("{s}.batch"))
        .await
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(rows.len(), 500);
    assert_eq!(
        rows[499],
        serde_json::json!({"id": 500, "user": format!("u{}", 500 % 7)})
    );
}

#[tokio::test]
async fn a_sink_naming_a_stream_that_does_not_capture_its_subject_says_so() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let fields = fields();
    let batch = crate::connectors::parse_lines(
        event(1).as_bytes(),
        1,
        "x",
        &fields,
        &crate::connectors::schema_of(&fields),
    )
    .unwrap()
    .0;
    let spec = JetStreamSinkSpec {
        subject: "elsewhere.out".into(),
        ..sink_spec(&url, &s)
    };
    let err = JetStreamSink::new(spec, "p", "out")
        .write(&batch, &lineage("in", None, None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not capture `elsewhere.out`"), "{err}");
}

#[tokio::test]
async fn seek_resumes_after_a_sequence() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=100).map(event)).await;

    // No consumer yet: it is created to start after the checkpoint.
    let mut src = source(source_spec(&url, &s), 1000);
    src.seek("40").await.unwrap();
    let c = call(&mut src).await;
    let got: Vec<i64> = c.batches.iter().flat_map(|(b, _)| ids(b)).collect();
    assert_eq!(got, (41..=100).collect::<Vec<_>>());
    assert_eq!(c.batches.last().unwrap().1.as_deref(), Some("100"));

    // A consumer that would deliver from 31 while the checkpoint says 40, as
    // when a run crashed between its checkpoint and its ack: it is created
    // again to start at 41, so nothing comes twice.
    let stream = js.get_stream(&s).await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("behind".into()),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: 31,
            },
            ack_policy: jetstream::consumer::AckPolicy::All,
            filter_subject: format!("{s}.in"),
            ..Default::default()
        })
        .await
        .unwrap();
    let spec = JetStreamSourceSpec {
        durable: Some("behind".into()),
        ..source_spec(&url, &s)
    };
    let mut resumed = source(spec, 1000);
    resumed.seek("40").await.unwrap();
    let c = call(&mut resumed).await;
    let got: Vec<i64> = c.batches.iter().flat_map(|(b, _)| ids(b)).collect();
    assert_eq!(got, (41..=100).collect::<Vec<_>>());
    assert_eq!(c.counters.get("skipped_committed"), None);
    assert_eq!(
        consumer_info(&js, &s, "behind").await.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: 41 }
    );
    resumed.commit("100").await.unwrap();
    let info = floor_reaches(&js, &s, "behind", 100).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (100, 0)
    );
}

#[tokio::test]
async fn max_ack_pending_bounds_what_is_in_flight() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=500).map(event)).await;
    let spec = JetStreamSourceSpec {
        max_ack_pending: NonZeroUsize::new(50),
        stop_when_drained: false,
        ..source_spec(&url, &s)
    };
    let mut src = source(spec, 20);
    // Without commits the server stops at 50 messages.
    let mut read = 0;
    let mut positions = Vec::new();
    for _ in 0..10 {
        let c = call(&mut src).await;
        for (b, p) in c.batches {
            read += b.num_rows();
            positions.extend(p);
        }
        let info = consumer_info(&js, &s, src.durable()).await;
        assert!(
            info.num_ack_pending <= 50,
            "{} unacknowledged",
            info.num_ack_pending
        );
    }
    assert_eq!(read, 50, "the slow pipeline held the stream back");
    // Committing lets the rest through, never more than 50 out at once.
    for p in &positions {
        src.commit(p).await.unwrap();
    }
    let started = Instant::now();
    while read < 500 && started.elapsed() < Duration::from_secs(20) {
        let c = call(&mut src).await;
        let info = consumer_info(&js, &s, src.durable()).await;
        assert!(
            info.num_ack_pending <= 50,
            "{} unacknowledged",
            info.num_ack_pending
        );
        for (b, p) in c.batches {
            read += b.num_rows();
            if let Some(p) = p {
                src.commit(&p).await.unwrap();
            }
        }
    }
    assert_eq!(read, 500);
    let info = floor_reaches(&js, &s, src.durable(), 500).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (500, 0)
    );
}

#[tokio::test]
async fn deliver_policies_choose_where_a_new_consumer_starts() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    publish(&js, &format!("{s}.in"), (1..=10).map(event)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = time_now_rfc3339();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(&js, &format!("{s}.in"), (11..=15).map(event)).await;
    for (deliver, want) in [
        (Deliver::All, (1..=15).collect::<Vec<i64>>()),
        (Deliver::Sequence(8), (8..=15).collect()),
        (Deliver::Time(cut.clone()), (11..=15).collect()),
        (Deliver::New, vec![]),
    ] {
        let spec = JetStreamSourceSpec {
            durable: Some(unique("d")),
            deliver: deliver.clone(),
            ..source_spec(&url, &s)
        };
        let mut src = source(spec, 100);
        let c = call(&mut src).await;
        let got: Vec<i64> = c.batches.iter().flat_map(|(b, _)| ids(b)).collect();
        assert_eq!(got, want, "{deliver:?}");
    }
}

#[tokio::test]
async fn a_missing_stream_is_a_config_error_unless_created() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let name = unique("weir_test");
    let mut src = source(source_spec(&url, &name), 10);
    let err = call_err(&mut src).await;
    assert!(
        err.contains(&format!("there is no stream `{name}`")),
        "{err}"
    );
    streams.names.push(name.clone());
    let spec = JetStreamSourceSpec {
        create_stream: true,
        ..source_spec(&url, &name)
    };
    let mut src = source(spec, 10);
    let c = call(&mut src).await;
    assert!(
        !c.more && c.batches.is_empty(),
        "an empty stream is drained at once"
    );
    let info = js
        .get_stream(&name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.subjects, vec![format!("{name}.in")]);
}

async fn call_err(src: &mut JetStreamSource) -> String {
    let mut out = Emitter::default();
    src.next_batch(&mut out)
        .await
        .expect_err("an error")
        .to_string()
}

fn time_now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[test]
fn the_source_table_reads_every_deliver_form_and_names_bad_keys() {
    let parse = |text: &str| toml::from_str::<JetStreamSourceSpec>(text);
    let base = "stream = \"events\"\nschema = [{ name = \"id\", type = \"int64\" }]\n";
    let spec = parse(base).unwrap();
    assert_eq!(spec.url, "nats://127.0.0.1:4222");
    assert_eq!(spec.deliver, Deliver::All);
    assert_eq!(spec.max_wait.0, Duration::from_millis(100));
    assert_eq!(spec.ack_wait.0, Duration::from_secs(30));
    assert_eq!(spec.max_deliver.get(), 5);
    for (line, want) in [
        ("deliver = \"new\"", Deliver::New),
        ("deliver = { sequence = 42 }", Deliver::Sequence(42)),
        (
            "deliver = { time = \"2024-05-01T00:00:00Z\" }",
            Deliver::Time("2024-05-01T00:00:00Z".into()),
        ),
    ] {
        let spec = parse(&format!("{base}{line}\n")).unwrap();
        assert_eq!(spec.deliver, want);
        spec.check("source[0].jetstream").unwrap();
        let back: JetStreamSourceSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec, "round trip");
    }
    let err = parse(&format!("{base}deliver = \"last\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown deliver policy `last`"), "{err}");
    let err = parse(&format!("{base}deliver = {{ seq = 1 }}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key `seq`"), "{err}");
    let err = parse(&format!("{base}max_ack_pendng = 5\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `max_ack_pendng`"), "{err}");

    let bad = |line: &str| {
        parse(&format!("{base}{line}\n"))
            .unwrap()
            .check("source[0].jetstream")
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad("deliver = { time = \"yesterday\" }")
            .starts_with("`source[0].jetstream.deliver`: `yesterday` is not an RFC 3339 time")
    );
    assert!(bad("durable = \"a.b\"").starts_with("`source[0].jetstream.durable`"));
    assert!(bad("ack_wait = \"10ms\"").starts_with("`source[0].jetstream.ack_wait`"));
    assert!(bad("max_wait = 0").starts_with("`source[0].jetstream.max_wait`"));
    let err = parse("stream = \"a b\"\nschema = []\n")
        .unwrap()
        .check("source[0].jetstream")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("`source[0].jetstream.stream`"), "{err}");
}

#[test]
fn the_sink_table_reads_ids_and_names_bad_keys() {
    let parse = |text: &str| toml::from_str::<JetStreamSinkSpec>(text);
    let spec = parse("subject = \"features.out\"\n").unwrap();
    assert_eq!(
        (spec.per, &spec.id, spec.max_inflight.get()),
        (Per::Row, &MsgId::Content, 4096)
    );
    let spec = parse("subject = \"f.out\"\nid = { key = [\"user\", \"start\"] }\n").unwrap();
    assert_eq!(spec.id, MsgId::Key(vec!["user".into(), "start".into()]));
    let spec = parse("subject = \"f.out\"\nid = \"lineage\"\nper = \"batch\"\n").unwrap();
    assert_eq!((spec.per, spec.id.clone()), (Per::Batch, MsgId::Lineage));
    spec.check("sink[0].jetstream").unwrap();
    let bad = |text: &str| {
        parse(text)
            .unwrap()
            .check("sink[0].jetstream")
            .unwrap_err()
            .to_string()
    };
    assert!(bad("subject = \"f.*\"\n").starts_with("`sink[0].jetstream.subject`"));
    assert!(bad("subject = \"f..x\"\n").starts_with("`sink[0].jetstream.subject`"));
    assert!(bad("subject = \"f\"\nid = { key = [] }\n").starts_with("`sink[0].jetstream.id.key`"));
    assert!(
        bad("subject = \"f\"\nper = \"batch\"\nid = { key = [\"a\"] }\n")
            .starts_with("`sink[0].jetstream.id`")
    );
    let err = parse("subject = \"f\"\nper = \"rows\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `rows`"), "{err}");
}

#[test]
fn default_durable_names_are_valid_consumer_names() {
    assert_eq!(
        default_durable("click stream", "src.1"),
        "weir_click_stream_src_1"
    );
    assert!(valid_name(&default_durable("a>b*c", "d/e")));
}

/// Runs the pipeline `text` (in `dir`) to its end.
async fn run_pipeline(text: &str, dir: &std::path::Path) -> crate::exec::RunSummary {
    let mut spec = crate::spec::PipelineSpec::from_toml(text, "pipeline.toml").unwrap();
    spec.base_dir = dir.to_path_buf();
    let env = crate::plan::RunEnv::standalone(
        crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap(),
        dir.join("data"),
    );
    let plan = crate::plan::Plan::build(spec, &env).unwrap();
    crate::exec::run(plan, &env, &crate::exec::RunOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_file_moves_a_stream_into_another_acknowledging_everything() {
    let Some(url) = nats_url() else { return };
    let (js, mut streams) = setup(&url).await;
    let s = streams.create(&js).await;
    let n = 5_000u64;
    // Every 1000th message is corrupt.
    publish(
        &js,
        &format!("{s}.in"),
        (1..=n).map(|i| {
            if i % 1000 == 0 {
                format!("{{\"id\": {i}, oops")
            } else {
                event(i)
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!(
        r#"name = "relay"
[settings]
batch_rows = 512

[[source]]
name = "events"
[source.jetstream]
url = "{url}"
stream = "{s}"
subject = "{s}.in"
stop_when_drained = true
rejects = "rejects.jsonl"
schema = [{{ name = "id", type = "int64", required = true }}, {{ name = "user", type = "utf8" }}]

[[sink]]
name = "out"
input = "events"
[sink.jetstream]
url = "{url}"
subject = "{s}.out"
stream = "{s}"
"#
    );
    let summary = run_pipeline(&pipeline, dir.path()).await;
    assert_eq!(summary.records_in(), n - 5);
    assert_eq!(count_on(&js, &s, &format!("{s}.out")).await, n - 5);
    let info = floor_reaches(&js, &s, "weir_relay_events", n).await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (n, 0)
    );
    let rejects = std::fs::read_to_string(dir.path().join("rejects.jsonl")).unwrap();
    let positions: Vec<String> = rejects
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["position"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        positions,
        (1..=5)
            .map(|k| format!("{s}:{}", k * 1000))
            .collect::<Vec<_>>()
    );

    // Running it again finds nothing new, and publishes nothing twice.
    let summary = run_pipeline(&pipeline, dir.path()).await;
    assert_eq!(summary.records_in(), 0);
    assert_eq!(count_on(&js, &s, &format!("{s}.out")).await, n - 5);
}

/// The CPU time (user and system, seconds) a local `nats-server` process has
/// used, from `/proc`; `None` when there is none on this machine.
fn nats_server_cpu() -> Option<f64> {
    let ticks: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != "nats-server" {
            return None;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command: utime and stime are the
        // 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let (user, system): (f64, f64) =
            (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        Some((user + system) / ticks)
    })
}

/// Throughput, for docs/jetstream.md (with the local `nats-server`'s CPU time
/// per round, read from `/proc`): `WEIR_BENCH_EVENTS` small JSON events
/// (default 1,000,000) published once, then alternating rounds
/// (`WEIR_BENCH_ROUNDS`, default 5) of (a) a fresh durable consumer reading
/// them all through the source, committing every batch as the executor does,
/// into a counting sink, and (b) the sink publishing 200,000 rows of them.
/// Run optimized: see docs/jetstream.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored"]
async fn bench_ingest_and_publish() {
    let Some(url) = nats_url() else { return };
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, rounds) = (
        env("WEIR_BENCH_EVENTS", 1_000_000),
        env("WEIR_BENCH_ROUNDS", 5),
    );
    let (js, mut streams) = setup(&url).await;
    // WEIR_BENCH_STREAM: a stream of the bench's events kept from an earlier
    // run (published once, not deleted), to profile reading alone.
    let kept = std::env::var("WEIR_BENCH_STREAM").ok();
    let s = match &kept {
        Some(name) => name.clone(),
        None => streams.create(&js).await,
    };
    let sink_rounds = std::env::var("WEIR_BENCH_NO_SINK").is_err();
    let clicks = |i: u64| {
        format!(
            r#"{{"id":{i},"user":"u{}","event":"click","price":{}.5,"ts":{}}}"#,
            i % 5000,
            i % 200,
            1_700_000_000_000 + i * 10
        )
    };
    // WEIR_BENCH_LINES_PER_MESSAGE=k: k events per message, read with
    // payload = "lines" (a kept stream must have been published the same way).
    let per = env("WEIR_BENCH_LINES_PER_MESSAGE", 1).max(1);
    assert_eq!(n % per, 0, "WEIR_BENCH_EVENTS must be a multiple of it");
    let messages = n / per;
    let message = |m: u64| {
        (m * per - per + 1..=m * per)
            .map(clicks)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let payload_bytes = clicks(n).len();
    let have = js.get_stream(&s).await.ok();
    let held = match have {
        Some(mut st) => st.info().await.unwrap().state.messages,
        None => {
            js.create_stream(jetstream::stream::Config {
                name: s.clone(),
                subjects: vec![format!("{s}.>")],
                // WEIR_BENCH_STORAGE=memory: the server's memory store, to
                // tell its file store's cost apart.
                storage: match std::env::var("WEIR_BENCH_STORAGE").as_deref() {
                    Ok("memory") => jetstream::stream::StorageType::Memory,
                    _ => jetstream::stream::StorageType::File,
                },
                ..Default::default()
            })
            .await
            .unwrap();
            0
        }
    };
    let started = Instant::now();
    if held < messages {
        publish(&js, &format!("{s}.in"), (held + 1..=messages).map(message)).await;
    }
    eprintln!(
        "published {n} events of ~{payload_bytes} bytes, {per} to a message, with the plain client in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let mut schema = fields();
    schema.extend([
        FieldSpec {
            name: "event".into(),
            data_type: FieldType::Utf8,
            required: false,
            min: None,
            max: None,
        },
        FieldSpec {
            name: "price".into(),
            data_type: FieldType::Float64,
            required: false,
            min: None,
            max: None,
        },
        FieldSpec {
            name: "ts".into(),
            data_type: FieldType::Int64,
            required: false,
            min: None,
            max: None,
        },
    ]);
    let mut ingest = Vec::new();
    let mut publish_rates = Vec::new();
    let mut sample: Vec<RecordBatch> = Vec::new();
    for round in 0..rounds {
        let spec = JetStreamSourceSpec {
            durable: Some(unique("bench")),
            schema: schema.clone(),
            max_wait: Millis(Duration::from_millis(100)),
            payload: if per > 1 {
                Payload::Lines
            } else {
                Payload::Object
            },
            ..source_spec(&url, &s)
        };
        // About 4096 events per batch whatever their packing.
        let mut src = source(spec, (4096 / per as usize).max(1));
        let server_cpu = nats_server_cpu();
        let started = Instant::now();
        let mut rows = 0u64;
        loop {
            let mut out = Emitter::default();
            let more = src.next_batch(&mut out).await.unwrap();
            assert!(out.dead_letters.is_empty());
            for (b, _, p) in out.take_output() {
                rows += b.num_rows() as u64;
                if sample.iter().map(RecordBatch::num_rows).sum::<usize>() < 200_000 {
                    sample.push(b);
                }
                if let Some(p) = p {
                    src.commit(&p).await.unwrap();
                }
            }
            if !more {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(rows, n);
        ingest.push(n as f64 / secs);
        eprintln!(
            "round {round}: ingest {n} in {secs:.3}s = {:.0} events/s",
            n as f64 / secs
        );
        if let (Some(before), Some(after)) = (server_cpu, nats_server_cpu()) {
            eprintln!(
                "round {round}: nats-server CPU {:.2}s, {:.2}s per 1M events",
                after - before,
                (after - before) * 1e6 / n as f64
            );
        }
        if !sink_rounds {
            continue;
        }

        let spec = JetStreamSinkSpec {
            subject: format!("{s}.out{round}"),
            stream: None,
            ..sink_spec(&url, &s)
        };
        // A sink name per round: message ids are deduplicated per stream.
        let mut sink = JetStreamSink::new(spec, "bench", &format!("out{round}"));
        let lin = lineage("in", None, None);
        let started = Instant::now();
        for b in &sample {
            sink.write(b, &lin).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let published = sink.published() as f64;
        publish_rates.push(published / secs);
        eprintln!(
            "round {round}: sink published {published} in {secs:.3}s = {:.0} rows/s",
            published / secs
        );
    }
    let summary = |name: &str, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: median {:.0}/s, min {:.0}/s, max {:.0}/s over {} rounds",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            v.len()
        );
    };
    summary("ingest", ingest);
    if sink_rounds {
        summary("sink", publish_rates);
    }
}
