//! The host through the library: tenants see only their own things; a directory
//! the layout before tenants wrote migrates and reads back unchanged; a newer
//! layout is refused.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::node::{Checkpoint, Lineage, LineageRecord};
use crate::sandbox::World;
use crate::store::{PipelineVersion, StoreError};

/// Component bytes (the store records what the sandbox validated; it does not
/// look inside): they differ per tag, so digests differ.
fn component(tag: &str) -> Vec<u8> {
    format!("\0asm component {tag}").into_bytes()
}

fn pipeline(dir: &Path, name: &str, count: u64) -> crate::spec::PipelineSpec {
    let text = format!(
        "name = \"{name}\"\n[[source]]\nname = \"s\"\n[source.sequence]\ncount = {count}\n\
         [[sink]]\nname = \"o\"\ninput = \"s\"\n[sink.jsonl]\npath = \"out-{count}.jsonl\"\n"
    );
    let mut spec = crate::spec::PipelineSpec::from_toml(&text, "p.toml").unwrap();
    spec.base_dir = dir.to_path_buf();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own() {
    let t = tempfile::tempdir().unwrap();
    let host = Host::open(&t.path().join("data"), HostOptions::default()).unwrap();
    let a = host.tenant("team-a").unwrap();
    let b = host.tenant("team-b").unwrap();
    let ca = a
        .store()
        .push_component("feat", &component("a"), World::Featurizer)
        .unwrap();
    let cb = b
        .store()
        .push_component("feat", &component("b"), World::Featurizer)
        .unwrap();
    assert_eq!((ca.version, cb.version), (1, 1));
    assert_ne!(ca.digest, cb.digest);
    // Each lists, resolves and reads only its own.
    assert_eq!(a.store().list_components().unwrap(), vec![ca.clone()]);
    assert_eq!(b.store().list_components().unwrap(), vec![cb.clone()]);
    assert_eq!(a.store().resolve("feat").unwrap(), ca.digest);
    let by_digest = format!("sha256:{}", cb.digest);
    assert!(matches!(
        a.store().resolve(&by_digest),
        Err(StoreError::UnknownComponent { .. })
    ));
    assert!(a.store().component_bytes(&cb.digest).is_err());

    // Both apply and run a pipeline of the same name, with different lengths.
    for (tenant, count) in [(&a, 3), (&b, 5)] {
        let dir = tenant.dir().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        tenant
            .store()
            .add_version(
                pipeline(&dir, "same", count),
                vec![],
                BTreeMap::new(),
                "t",
                None,
            )
            .unwrap();
        let summary = tenant
            .prepare(RunRequest::new(RunTarget::Stored("same".into())))
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(summary.records_in(), count);
    }
    for (tenant, other, count) in [(&a, &b, 3), (&b, &a, 5)] {
        let history = tenant.store().history("same").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].spec.sources.len(), 1);
        let checkpoint = tenant.store().checkpoint("same").unwrap().unwrap();
        assert!(checkpoint.complete);
        let run = checkpoint.run.clone();
        assert!(other.store().lineage(&run).unwrap().is_empty());
        assert_eq!(
            tenant
                .store()
                .lineage(&run)
                .unwrap()
                .iter()
                .map(|r| r.rows)
                .sum::<u64>(),
            count
        );
        // Files are the tenant's: its output, its state, nothing of the other's.
        assert!(tenant.dir().join(format!("out-{count}.jsonl")).exists());
        assert!(!other.dir().join(format!("out-{count}.jsonl")).exists());
        assert!(tenant.dir().starts_with(host.dir().join("tenants")));
    }
    // The registry shows each its own runs.
    assert_eq!(host.runs().list("team-a").len(), 1);
    assert_eq!(host.runs().list("team-a")[0].pipeline, "same");
    assert!(host.runs().list("team-c").is_empty());
    // Pools nest: each tenant's pool is charged to the host's.
    assert_eq!(a.pool().used().0, 0);
}

#[test]
fn a_bad_tenant_name_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let host = Host::open(t.path(), HostOptions::default()).unwrap();
    let err = host.tenant("../etc").unwrap_err().to_string();
    assert_eq!(
        err,
        "tenant `../etc` is not a tenant name: it starts with a lowercase letter or a digit"
    );
}

/// What today's main (format 1) wrote: unprefixed trees, files at the top of
/// the data directory. Built with sled directly, key by key, as that code did.
fn format_1_fixture(dir: &Path) -> (Vec<u8>, PipelineVersion, Checkpoint, Vec<LineageRecord>) {
    let db = sled::open(dir.join("store")).unwrap();
    let bytes = component("old");
    let digest = crate::sandbox::digest(&bytes);
    let record = crate::store::ComponentRecord {
        name: "bucketize".into(),
        version: 1,
        digest: digest.clone(),
        size: bytes.len() as u64,
        world: World::Featurizer,
        created_ms: 1_700_000_000_000,
    };
    db.open_tree("blobs")
        .unwrap()
        .insert(&digest, bytes.clone())
        .unwrap();
    db.open_tree("components")
        .unwrap()
        .insert(&digest, serde_json::to_vec(&record).unwrap())
        .unwrap();
    db.open_tree("names")
        .unwrap()
        .insert("bucketize@0000000001", digest.as_bytes())
        .unwrap();
    let version = PipelineVersion {
        pipeline: "ctr".into(),
        version: 1,
        spec: pipeline(dir, "ctr", 4),
        base_dir: dir.to_path_buf(),
        stages: vec![],
        tags: [("model".to_owned(), "ctr@7".to_owned())].into(),
        author: "ana".into(),
        comment: Some("first".into()),
        created_ms: 1_700_000_000_001,
    };
    let mut key = b"ctr\0".to_vec();
    key.extend_from_slice(&1u64.to_be_bytes());
    let stored = serde_json::to_vec(&version).unwrap();
    db.open_tree("versions")
        .unwrap()
        .insert(&key, stored.clone())
        .unwrap();
    // What the old store read back (a spec's base directory is not stored).
    let version: PipelineVersion = serde_json::from_slice(&stored).unwrap();
    db.open_tree("active")
        .unwrap()
        .insert("ctr", &1u64.to_be_bytes())
        .unwrap();
    let lineage = vec![LineageRecord {
        sink: "o".into(),
        first_row: 0,
        rows: 4,
        lineage: Lineage {
            pipeline: "ctr".into(),
            version: Some(1),
            ..Lineage::default()
        },
    }];
    let mut key = b"run-1\0".to_vec();
    key.extend_from_slice(&0u64.to_be_bytes());
    db.open_tree("lineage")
        .unwrap()
        .insert(&key, serde_json::to_vec(&lineage[0]).unwrap())
        .unwrap();
    let state = dir.join("state").join("ctr").join("run-1");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("session.arrow"), b"state").unwrap();
    let checkpoint = Checkpoint {
        pipeline: "ctr".into(),
        run: "run-1".into(),
        version: Some(1),
        sources: [("s".to_owned(), "2".to_owned())].into(),
        operators: [("w".to_owned(), state.join("session.arrow"))].into(),
        ..Checkpoint::default()
    };
    db.open_tree("checkpoints")
        .unwrap()
        .insert("ctr", serde_json::to_vec(&checkpoint).unwrap())
        .unwrap();
    db.flush().unwrap();
    std::fs::create_dir_all(dir.join("dead-letters").join("ctr")).unwrap();
    std::fs::write(dir.join("dead-letters/ctr/run-1.jsonl"), b"{}\n").unwrap();
    (bytes, version, checkpoint, lineage)
}

#[test]
fn a_directory_of_the_layout_before_tenants_migrates_to_default() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let (bytes, version, checkpoint, lineage) = format_1_fixture(&dir);
    let host = Host::open(&dir, HostOptions::default()).unwrap();
    let default = host.tenant("default").unwrap();
    let store = default.store().clone();
    let listed = store.list_components().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference(), "bucketize@1");
    assert_eq!(store.component_bytes(&listed[0].digest).unwrap(), bytes);
    assert_eq!(store.resolve("bucketize@1").unwrap(), listed[0].digest);
    assert_eq!(store.history("ctr").unwrap(), vec![version]);
    assert_eq!(store.active("ctr").unwrap(), Some(1));
    assert_eq!(store.lineage("run-1").unwrap(), lineage);
    // The checkpoint reads back, its state file moved with it to the tenant.
    let moved = default.dir().join("state/ctr/run-1/session.arrow");
    let expected = Checkpoint {
        operators: [("w".to_owned(), moved.clone())].into(),
        ..checkpoint
    };
    assert_eq!(store.checkpoint("ctr").unwrap(), Some(expected));
    assert_eq!(std::fs::read(&moved).unwrap(), b"state");
    assert!(default.dir().join("dead-letters/ctr/run-1.jsonl").exists());
    assert!(!dir.join("state").exists() && !dir.join("dead-letters").exists());
    // Another tenant sees none of it.
    assert!(
        host.tenant("other")
            .unwrap()
            .store()
            .list_components()
            .unwrap()
            .is_empty()
    );
    drop((store, default, host));
    // Opening again finds format 2 and changes nothing.
    let host = Host::open(&dir, HostOptions::default()).unwrap();
    assert_eq!(
        host.tenant("default")
            .unwrap()
            .store()
            .active("ctr")
            .unwrap(),
        Some(1)
    );
}

#[test]
fn a_newer_layout_is_refused_with_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    {
        let db = sled::open(t.path().join("store")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Host::open(t.path(), HostOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the data directory has store format 99, and this weir reads format 2 and older: \
         run a weir at least as new as the one that wrote it, or use another --data-dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_shows_each_nodes_counters_while_and_after_a_run() {
    let t = tempfile::tempdir().unwrap();
    let host = Host::open(&t.path().join("data"), HostOptions::default()).unwrap();
    let tenant = host.tenant("default").unwrap();
    std::fs::create_dir_all(tenant.dir()).unwrap();
    let path = t.path().join("p.toml");
    std::fs::write(
        &path,
        "name = \"live\"\n[settings]\nbatch_rows = 100\n[[source]]\nname = \"s\"\n[source.sequence]\ncount = 200000\n\
         [[sink]]\nname = \"o\"\ninput = \"s\"\n[sink.jsonl]\npath = \"out.jsonl\"\n",
    )
    .unwrap();
    let prepared = tenant
        .prepare(RunRequest::new(RunTarget::File(path)))
        .unwrap();
    let mut updates = prepared.control().subscribe();
    let task = tokio::spawn(prepared.run());
    // A publication arrives while the run goes (or as its nodes end).
    updates.changed().await.unwrap();
    let entry = host.runs().list("default").pop().unwrap();
    assert_eq!(entry.pipeline, "live");
    let summary = task.await.unwrap().unwrap();
    let entry = host.runs().get("default", entry.id).unwrap();
    assert_eq!(
        entry.state,
        RunState::Finished {
            run_id: summary.run_id.clone()
        }
    );
    // After the run, the live counters are the summary's, node by node.
    let mut live = entry.nodes();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ended = summary.nodes.clone();
    ended.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(live, ended);
    assert_eq!(
        live.iter().find(|n| n.name == "o").unwrap().rows_in,
        200_000
    );
}
