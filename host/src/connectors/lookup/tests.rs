//! The lookup stage on a file table and against the real PostgreSQL.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::LookupSpec;
use crate::node::config::{OperatorConfig, OperatorNode};
use crate::node::services::Services;
use crate::node::{AsyncOperator, Emitter, Meta, NodeError};

/// Builds the stage of `body` (the `[stage.lookup]` table) with files under `dir`.
fn build(body: &str, dir: &std::path::Path) -> Result<Box<dyn AsyncOperator>, NodeError> {
    let spec: LookupSpec = toml::from_str(body).unwrap();
    spec.check("stage[0].lookup")
        .map_err(|e| NodeError::config(e.to_string()))?;
    let node =
        crate::connectors::testcx::with_cx("stage[0].lookup", dir, 1024, &Services::new(), |cx| {
            spec.build_node(cx)
        })?;
    match node {
        OperatorNode::Async(op) => Ok(op),
        OperatorNode::Sync(_) => panic!("the lookup stage is async"),
    }
}

fn events(users: &[Option<&str>]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "user_id",
        DataType::Utf8,
        true,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(users.to_vec()))]).unwrap()
}

async fn process(op: &mut dyn AsyncOperator, batch: RecordBatch) -> Emitter {
    let mut out = Emitter::for_input(Meta::default());
    op.process(batch, &mut out).await.unwrap();
    out
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    b.column_by_name(name)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_table_adds_its_columns_and_defaults_for_misses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("segments.jsonl"),
        "{\"user_id\":\"u1\",\"segment\":\"gold\",\"ltv\":1.5}\n\
         {\"user_id\":\"u2\",\"segment\":\"silver\",\"ltv\":null}\n",
    )
    .unwrap();
    let body = r#"
key = ["user_id"]
defaults = { segment = "unknown" }
[table.jsonl]
path = "segments.jsonl"
schema = [
  { name = "user_id", type = "utf8", required = true },
  { name = "segment", type = "utf8" },
  { name = "ltv", type = "float64" },
]
"#;
    let mut op = build(body, dir.path()).unwrap();
    let input = events(&[Some("u2"), Some("u9"), None, Some("u1"), Some("u2")]);
    let schema = op.output_schema(&input.schema()).unwrap().unwrap();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["user_id", "segment", "ltv"]
    );
    let mut out = process(op.as_mut(), input).await;
    let (batches, ..): (Vec<RecordBatch>, Vec<_>) = {
        let v = out.take_output();
        let metas: Vec<_> = v.iter().map(|(_, m, _)| m.clone()).collect();
        let lineage = metas[0].as_ref().unwrap().lineage.clone();
        assert_eq!(lineage.stages.len(), 1);
        assert!(
            lineage.stages[0].digest.starts_with("table:"),
            "{:?}",
            lineage.stages
        );
        (v.into_iter().map(|(b, ..)| b).collect(), metas)
    };
    let b = &batches[0];
    assert_eq!(b.schema(), schema);
    assert_eq!(
        strings(b, "segment"),
        [
            s("silver"),
            s("unknown"),
            s("unknown"),
            s("gold"),
            s("silver")
        ]
    );
    // A table value that is null stays null; a miss without a default is null.
    assert_eq!(
        b.column_by_name("ltv")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap(),
        &Float64Array::from(vec![None, None, None, Some(1.5), None])
    );
    assert_eq!(out.counters.get("lookup_hits"), Some(&3));
    assert_eq!(out.counters.get("lookup_misses"), Some(&2));
    assert_eq!(out.counters.get("reloads"), Some(&1));
}

/// The table a WebAssembly stage is granted answers from the same cache: one
/// row per key, nulls for a miss and a null key, the same counters, the
/// generation's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_table_answers_the_import_from_the_same_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("segments.jsonl"),
        "{\"user_id\":7,\"segment\":\"gold\",\"ltv\":1.5}\n\
         {\"user_id\":8,\"segment\":\"silver\",\"ltv\":null}\n",
    )
    .unwrap();
    let grant: super::LookupGrant = toml::from_str(
        r#"
key = "user_id"
columns = ["segment"]
[table.jsonl]
path = "segments.jsonl"
schema = [
  { name = "user_id", type = "int64", required = true },
  { name = "segment", type = "utf8" },
  { name = "ltv", type = "float64" },
]
"#,
    )
    .unwrap();
    grant.check("stage[0].wasm.lookups.segments").unwrap();
    let table = crate::connectors::testcx::with_cx(
        "stage[0].wasm",
        dir.path(),
        1024,
        &Services::new(),
        |cx| grant.open("segments", cx),
    )
    .unwrap();
    // int32 keys are cast to the table's int64.
    let keys: arrow::array::ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![
        Some(8),
        Some(9),
        None,
        Some(7),
    ]));
    let looked = table.lookup(keys).await.unwrap();
    assert_eq!(
        looked
            .values
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["segment"]
    );
    assert_eq!(
        strings(&looked.values, "segment"),
        [s("silver"), None, None, s("gold")]
    );
    assert!(
        looked.generation.starts_with("table:"),
        "{}",
        looked.generation
    );
    assert_eq!(looked.counters.get("lookup_hits"), Some(&2));
    assert_eq!(looked.counters.get("lookup_misses"), Some(&2));
    assert_eq!(looked.counters.get("reloads"), Some(&1));
    // The second lookup is served from the loaded generation.
    let again = table
        .lookup(Arc::new(StringArray::from(vec!["7"])))
        .await
        .unwrap();
    assert_eq!(strings(&again.values, "segment"), [s("gold")]);
    assert_eq!(again.counters.get("reloads"), None);
    assert_eq!(again.generation, looked.generation);
    // A key that does not read as the table's type is a miss, as in the
    // lookup stage (Arrow's safe cast gives a null).
    let unreadable = table
        .lookup(Arc::new(StringArray::from(vec!["seven"])))
        .await
        .unwrap();
    assert_eq!(strings(&unreadable.values, "segment"), [None]);
    assert_eq!(unreadable.counters.get("lookup_misses"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.jsonl"), "").unwrap();
    let table = "[table.jsonl]\npath = \"t.jsonl\"\nschema = [{ name = \"user_id\", type = \"utf8\" }, { name = \"segment\", type = \"utf8\" }]\n";
    let err = build(
        &format!("key = [\"user_id\"]\ncolumns = [\"tier\"]\n{table}"),
        dir.path(),
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "`stage[0].lookup.columns`: the table has no column `tier` (it has `user_id`, `segment`)"
    );
    let err = build(
        &format!("key = [\"user_id\"]\ndefaults = {{ segment = 3 }}\n{table}"),
        dir.path(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().starts_with("`stage[0].lookup.defaults`:"),
        "{err}"
    );
    let err = build(
        &format!("key = [\"user_id\"]\ncache = {{ mode = \"lazy\" }}\n{table}"),
        dir.path(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("`stage[0].lookup.cache.mode`: `lazy` fetches keys from PostgreSQL"),
        "{err}"
    );
    let mut op = build(&format!("key = [\"uid\"]\n{table}"), dir.path());
    assert!(op.is_err(), "`uid` is not a table column either");
    op = build(&format!("key = [\"user_id\"]\n{table}"), dir.path());
    let mut op = op.unwrap();
    let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
    let err = op.output_schema(&other).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`stage[0].lookup.key`: the input has no column `user_id` (it has `id`)"
    );
}

/// Against the real PostgreSQL.
#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    /// Index scans of `table` that reached PostgreSQL, once its statistics show
    /// at least `at_least` (a backend flushes them within about ten seconds of
    /// going idle). PostgreSQL counts one per key of an `= ANY($1)` array.
    async fn scans(c: &tokio_postgres::Client, table: &str, at_least: i64) -> i64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            c.batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .unwrap();
            let row = c
                .query_one(
                    "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
                    &[&table],
                )
                .await
                .unwrap();
            let n: i64 = row.get(0);
            if n >= at_least || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lazy_cache_asks_once_per_batch_for_what_it_lacks() {
        let Some(url) = crate::connectors::postgres::tests::url() else {
            return;
        };
        let (t, c) = crate::connectors::postgres::tests::Table::new(
            &url,
            "lazy",
            "user_id text PRIMARY KEY, segment text",
        )
        .await;
        c.batch_execute(&format!(
            "INSERT INTO {} SELECT 'u' || g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END \
             FROM generate_series(1, 20000) g; ANALYZE {}",
            t.name, t.name
        ))
        .await
        .unwrap();
        let before = scans(&c, &t.name, 0).await;
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "key = [\"user_id\"]\ndefaults = {{ segment = \"none\" }}\n\
             cache = {{ mode = \"lazy\", negative_ttl = \"1h\" }}\n\
             [table.postgres]\nurl = \"{url}\"\ntable = \"{}\"\n",
            t.name
        );
        let mut op = build(&body, dir.path()).unwrap();
        // Batch 1: u1 four times, u2, and a key the table lacks twice: one query.
        let out = process(
            op.as_mut(),
            events(&[
                Some("u1"),
                Some("u1"),
                Some("u2"),
                Some("nope"),
                Some("u1"),
                Some("nope"),
                Some("u1"),
            ]),
        )
        .await;
        let mut out = out;
        let b = out.take_output().remove(0).0;
        assert_eq!(
            strings(&b, "segment"),
            [
                s("odd"),
                s("odd"),
                s("even"),
                s("none"),
                s("odd"),
                s("none"),
                s("odd")
            ]
        );
        assert_eq!(out.counters.get("lookup_queries"), Some(&1));
        assert_eq!(out.counters.get("lookup_hits"), Some(&0));
        // Batch 2: all cached (the missing key too, within its negative TTL): no query.
        let out = process(op.as_mut(), events(&[Some("u2"), Some("nope"), Some("u1")])).await;
        assert_eq!(out.counters.get("lookup_queries"), None);
        assert_eq!(out.counters.get("lookup_hits"), Some(&3));
        // Batch 3: two new keys and a cached one: one more query.
        let mut out = process(op.as_mut(), events(&[Some("u3"), Some("u1"), Some("u4")])).await;
        assert_eq!(out.counters.get("lookup_queries"), Some(&1));
        let b = out.take_output().remove(0).0;
        assert_eq!(strings(&b, "segment"), [s("odd"), s("odd"), s("even")]);
        // PostgreSQL was asked for each distinct key once: u1, u2, nope, then u3,
        // u4 (13 rows looked up; the describe scans nothing).
        assert_eq!(scans(&c, &t.name, before + 5).await, before + 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_table_refuses_a_truncated_reload_and_keeps_serving() {
        let Some(url) = crate::connectors::postgres::tests::url() else {
            return;
        };
        let (t, c) = crate::connectors::postgres::tests::Table::new(
            &url,
            "reload",
            "user_id text PRIMARY KEY, segment text",
        )
        .await;
        c.batch_execute(&format!(
            "INSERT INTO {} VALUES ('u1', 'gold'), ('u2', 'silver'), ('u3', 'bronze'), ('u4', 'tin')",
            t.name
        ))
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "key = [\"user_id\"]\ncache = {{ refresh = \"100ms\", max_shrink = 0.5 }}\n\
             [table.postgres]\nurl = \"{url}\"\ntable = \"{}\"\n",
            t.name
        );
        let mut op = build(&body, dir.path()).unwrap();
        let mut out = process(op.as_mut(), events(&[Some("u1")])).await;
        let first = out.take_output().remove(0);
        assert_eq!(strings(&first.0, "segment"), [s("gold")]);
        let gen1 = first.1.unwrap().lineage.stages[0].digest.clone();
        // A changed row is picked up by the next reload.
        c.batch_execute(&format!(
            "UPDATE {} SET segment = 'platinum' WHERE user_id = 'u1'",
            t.name
        ))
        .await
        .unwrap();
        let mut seen = None;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut out = process(op.as_mut(), events(&[Some("u1")])).await;
            let (b, m, _) = out.take_output().remove(0);
            if strings(&b, "segment") == [s("platinum")] {
                seen = Some(m.unwrap().lineage.stages[0].digest.clone());
                break;
            }
        }
        let gen2 = seen.expect("the reload picked up the change");
        assert_ne!(gen1, gen2, "a new generation names a new digest");
        // The table truncated to one row of four: refused, the old rows keep serving.
        c.batch_execute(&format!("DELETE FROM {} WHERE user_id <> 'u1'", t.name))
            .await
            .unwrap();
        let mut refused = 0;
        let mut stale = 0;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut out = process(op.as_mut(), events(&[Some("u3")])).await;
            refused += out.counters.get("reloads_refused").copied().unwrap_or(0);
            stale += out.counters.get("stale_served").copied().unwrap_or(0);
            let (b, m, _) = out.take_output().remove(0);
            assert_eq!(strings(&b, "segment"), [s("bronze")]);
            assert_eq!(m.unwrap().lineage.stages[0].digest, gen2);
        }
        assert!(refused > 0, "the truncated table was refused");
        assert!(stale > 0, "rows served meanwhile are counted stale");
    }
}
