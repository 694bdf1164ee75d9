//! Services that go away mid-run, against the real local servers through a
//! TCP proxy each test owns and cuts (`weir_e2e::proxy`), so the shared
//! servers are never disturbed: afterwards the output is exactly what a run
//! without the fault writes, and the run summary counts the retries. And
//! permanent errors, which are not retried and say so in one line.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use weir_e2e::proxy::Proxy;
use weir_e2e::run_toml;
use weir_e2e::services::{self, Service};

/// Entities written by the Redis outage test.
const ENTITIES: usize = 60_000;

/// `n` rows `{"user": "u<i>", "ts": <ms>, "clicks": i, "score": i / 4}`.
fn write_rows(dir: &Path, n: usize) {
    let mut text = String::with_capacity(n * 64);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"user\":\"u{i}\",\"ts\":{},\"clicks\":{i},\"score\":{}}}\n",
            1_700_000_000_000u64 + i as u64,
            i as f64 / 4.0
        ));
    }
    std::fs::write(dir.join("rows.jsonl"), text).unwrap();
}

/// A pipeline writing `rows.jsonl` to Redis at `url` under `prefix`.
fn redis_pipeline(url: &str, prefix: &str) -> String {
    format!(
        r#"
name = "features"
settings = {{ batch_rows = 2000 }}
[[source]]
name = "rows"
[source.jsonl]
path = "rows.jsonl"
schema = [{{ name = "user", type = "utf8" }}, {{ name = "ts", type = "int64" }}, {{ name = "clicks", type = "int64" }}, {{ name = "score", type = "float64" }}]
[[sink]]
name = "store"
input = "rows"
[sink.redis]
url = "{url}"
prefix = "{prefix}"
entity = "user"
event_time = "ts"
lineage = false
timeout = "2s"
retry = {{ attempts = 40, backoff = "50ms", max_wait = "400ms", deadline = "30s" }}
"#
    )
}

/// Every hash under `prefix`, field → value, and then deletes them.
fn take_snapshot(url: &str, prefix: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut c)
        .unwrap();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("HGETALL").arg(k);
        }
        let hashes: Vec<BTreeMap<String, String>> = pipe.query(&mut c).unwrap();
        for (k, h) in chunk.iter().zip(hashes) {
            out.insert(k[prefix.len() + 1..].to_owned(), h);
        }
    }
    let mut all = keys;
    all.push(prefix.to_owned());
    for chunk in all.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query(&mut c).unwrap();
    }
    out
}

fn prefix(test: &str) -> String {
    format!("weir-test:faults:{test}:{}", std::process::id())
}

/// `redis://host:port` of the proxy.
fn via(proxy: &Proxy) -> String {
    format!("redis://{}", proxy.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_mid_run_leaves_every_feature_as_a_clean_run_does() {
    let Some(url) = services::url(Service::Redis) else {
        return;
    };
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
    let dir = tempfile::tempdir().unwrap();
    write_rows(dir.path(), ENTITIES);

    // The reference: the same input, no fault.
    let clean = prefix("clean");
    run_toml(&redis_pipeline(&url, &clean), dir.path())
        .await
        .unwrap();
    let expected = take_snapshot(&url, &clean);
    assert_eq!(expected.len(), ENTITIES);

    // Through a proxy cut for a second and a half once writes are flowing.
    let proxy = Proxy::start(upstream).await;
    let faulty = prefix("cut");
    let outage = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .outage_after(
                    512 * 1024,
                    Duration::from_millis(1500),
                    Duration::from_secs(60),
                )
                .await;
        })
    };
    let summary = run_toml(&redis_pipeline(&via(&proxy), &faulty), dir.path())
        .await
        .unwrap();
    outage.await.unwrap();
    let got = take_snapshot(&url, &faulty);
    assert_eq!(proxy.cuts(), 1, "the run ended before the cut");
    let store = summary.node("store").unwrap();
    let retries = store.counters.get("retries").copied().unwrap_or(0);
    assert!(retries >= 1, "no retries counted: {:?}", store.counters);
    assert_eq!(store.rows_out, ENTITIES as u64);
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "the stored features differ from a clean run's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_not_retried_and_says_so() {
    let Some(url) = services::url(Service::Redis) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_rows(dir.path(), 10);
    let host = url.trim_start_matches("redis://").trim_end_matches('/');
    let wrong = format!("redis://nobody:wrong@{host}");
    let started = Instant::now();
    let err = run_toml(&redis_pipeline(&wrong, &prefix("auth")), dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "retried: {err}");
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.starts_with(&format!("node `store` failed: connecting redis://{host}: ")),
        "{err}"
    );
    // Redis answers WRONGPASS; redis-rs reports it as a failed authentication.
    assert!(err.contains("Password authentication failed"), "{err}");
    assert!(err.ends_with(" (permanent: not retried)"), "{err}");
    assert!(!err.contains("wrong@"), "the password is not shown: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_redis_refuses_is_a_dead_letter_and_the_rest_are_written() {
    let Some(url) = services::url(Service::Redis) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = prefix("refused");
    // u1's key holds a string, u2 has no entity, u3 no event time.
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{p}:u1"))
        .arg("not a hash")
        .query(&mut c)
        .unwrap();
    std::fs::write(
        dir.path().join("rows.jsonl"),
        "{\"user\":\"u0\",\"ts\":1,\"clicks\":0,\"score\":0.5}\n\
         {\"user\":\"u1\",\"ts\":1,\"clicks\":1,\"score\":1.5}\n\
         {\"user\":null,\"ts\":1,\"clicks\":2,\"score\":2.5}\n\
         {\"user\":\"u3\",\"ts\":null,\"clicks\":3,\"score\":3.5}\n\
         {\"user\":\"u4\",\"ts\":1,\"clicks\":4,\"score\":4.5}\n",
    )
    .unwrap();
    let summary = run_toml(&redis_pipeline(&url, &p), dir.path())
        .await
        .unwrap();
    let store = summary.node("store").unwrap();
    assert_eq!((store.rows_in, store.rows_out), (5, 2));
    assert_eq!(store.dead_letters_by_fault.get("data"), Some(&3));
    for reason in ["entity_null", "event_time_null", "redis_refused"] {
        assert_eq!(
            store.counters.get(&format!("dead_letter:{reason}")),
            Some(&1),
            "{:?}",
            store.counters
        );
    }
    // u1's key is left as it was: its row is kept in the dead letters.
    let u1: String = redis::cmd("GET")
        .arg(format!("{p}:u1"))
        .query(&mut c)
        .unwrap();
    assert_eq!(u1, "not a hash");
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}:u1"))
        .query(&mut c)
        .unwrap();
    let got = take_snapshot(&url, &p);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["u0", "u4"]
    );
    assert_eq!(got["u4"]["clicks"], "4");
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}_{n}", std::process::id())
}

/// `nats://host:port` of the proxy.
fn nats_via(proxy: &Proxy) -> String {
    format!("nats://{}", proxy.addr())
}

/// Messages the NATS tests move through a cut connection.
const MESSAGES: usize = 30_000;

/// A stream `name` capturing `subject`, removed when dropped.
struct Stream {
    js: async_nats::jetstream::Context,
    name: String,
}

impl Stream {
    async fn create(url: &str, name: &str, subject: &str) -> Self {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
        Self {
            js,
            name: name.to_owned(),
        }
    }

    /// The `id` of every message in the stream, in stream order.
    async fn ids(&self) -> Vec<u64> {
        use futures_util::StreamExt as _;
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let total = stream.cached_info().state.messages as usize;
        let mut ids = Vec::with_capacity(total);
        let mut messages = consumer.messages().await.unwrap();
        while ids.len() < total {
            let m = messages.next().await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            ids.push(v["id"].as_u64().unwrap());
            m.ack().await.unwrap();
        }
        ids
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move { js.delete_stream(&name).await })
        })
        .join();
    }
}

/// Each of `0..n` exactly once, or what is missing and what is doubled.
fn each_once(mut ids: Vec<u64>, n: usize) -> Result<(), String> {
    ids.sort_unstable();
    let mut doubled = Vec::new();
    let mut missing = Vec::new();
    let mut next = 0u64;
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 && ids[i - 1] == id {
            doubled.push(id);
            continue;
        }
        while next < id {
            missing.push(next);
            next += 1;
        }
        next = id + 1;
    }
    missing.extend(next..n as u64);
    if missing.is_empty() && doubled.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} missing (first {:?}), {} doubled (first {:?})",
            missing.len(),
            missing.first(),
            doubled.len(),
            doubled.first()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_sink_cut_mid_run_stores_every_row_once() {
    let Some(url) = services::url(Service::Nats) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..MESSAGES)
        .map(|i| format!("{{\"id\":{i},\"x\":{}}}\n", i * 7))
        .collect();
    std::fs::write(dir.path().join("rows.jsonl"), lines).unwrap();
    let name = unique("WEIRFAULTS");
    let subject = format!("{name}.out");
    let stream = Stream::create(&url, &name, &subject).await;
    let proxy = Proxy::start(url.trim_start_matches("nats://")).await;
    let text = format!(
        r#"
name = "publish"
settings = {{ batch_rows = 1000 }}
[[source]]
name = "rows"
[source.jsonl]
path = "rows.jsonl"
schema = [{{ name = "id", type = "int64" }}, {{ name = "x", type = "int64" }}]
[[sink]]
name = "out"
input = "rows"
[sink.jetstream]
url = "{}"
subject = "{subject}"
stream = "{name}"
max_inflight = 512
retry = {{ attempts = 60, backoff = "50ms", max_wait = "500ms", deadline = "60s" }}
"#,
        nats_via(&proxy)
    );
    let outage = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .outage_after(
                    400 * 1024,
                    Duration::from_millis(1500),
                    Duration::from_secs(60),
                )
                .await;
        })
    };
    let summary = run_toml(&text, dir.path()).await.unwrap();
    outage.await.unwrap();
    assert_eq!(proxy.cuts(), 1, "the run ended before the cut");
    let out = summary.node("out").unwrap();
    assert_eq!(out.rows_out, MESSAGES as u64);
    // Whether a publish was in flight when the cut came depends on timing (the
    // client may reconnect with nothing to resend): retries are not asserted.
    // Republished messages carried their Nats-Msg-Id: the stream holds each
    // row once.
    each_once(stream.ids().await, MESSAGES).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_source_cut_mid_run_delivers_every_message_once() {
    let Some(url) = services::url(Service::Nats) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = unique("WEIRFAULTS");
    let subject = format!("{name}.in");
    let stream = Stream::create(&url, &name, &subject).await;
    let lines: String = (0..MESSAGES)
        .map(|i| format!("{{\"id\":{i},\"x\":{}}}\n", i * 7))
        .collect();
    let published = weir::connectors::jetstream::publish_lines(
        &url,
        &subject,
        None,
        None,
        std::num::NonZeroUsize::MIN,
        lines.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(published.stored, MESSAGES as u64);
    let proxy = Proxy::start(url.trim_start_matches("nats://")).await;
    let text = format!(
        r#"
name = "consume"
settings = {{ batch_rows = 500 }}
[[source]]
name = "events"
[source.jetstream]
url = "{}"
stream = "{name}"
stop_when_drained = true
schema = [{{ name = "id", type = "int64" }}, {{ name = "x", type = "int64" }}]
retry = {{ attempts = 60, backoff = "50ms", max_wait = "500ms", deadline = "60s" }}
[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "out.jsonl"
"#,
        nats_via(&proxy)
    );
    let outage = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .outage_after(
                    300 * 1024,
                    Duration::from_millis(1500),
                    Duration::from_secs(60),
                )
                .await;
        })
    };
    let summary = run_toml(&text, dir.path()).await.unwrap();
    outage.await.unwrap();
    assert_eq!(proxy.cuts(), 1, "the run ended before the cut");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let ids: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let events = summary.node("events").unwrap();
    eprintln!(
        "source after the cut: {} rows out, counters {:?}",
        events.rows_out, events.counters
    );
    each_once(ids, MESSAGES).unwrap();
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_not_retried_and_says_so() {
    let Some(url) = services::url(Service::Nats) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = unique("WEIRMISSING");
    let text = format!(
        r#"
name = "consume"
[[source]]
name = "events"
[source.jetstream]
url = "{url}"
stream = "{name}"
schema = [{{ name = "id", type = "int64" }}]
[[sink]]
name = "out"
input = "events"
[sink.jsonl]
path = "out.jsonl"
"#
    );
    let started = Instant::now();
    let err = run_toml(&text, dir.path()).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "retried: {err}");
    assert_eq!(
        err,
        format!(
            "node `events` failed: nats {url}: there is no stream `{name}` (create it, or set `create_stream = true`) (permanent: not retried)"
        )
    );
}
