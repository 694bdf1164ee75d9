use super::*;

fn spec(name: &str) -> PipelineSpec {
    PipelineSpec::from_toml(
        &format!("name = \"{name}\"\n[[source]]\nname = \"s\"\n[source.sequence]\ncount = 3\n[[sink]]\nname = \"o\"\ninput = \"s\"\n[sink.jsonl]\npath = \"o.jsonl\"\n"),
        "t.toml",
    )
    .unwrap()
}

#[test]
fn components_are_content_addressed_and_versioned_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store
        .push_component("bucketize", b"one", World::Featurizer)
        .unwrap();
    let again = store
        .push_component("bucketize", b"one", World::Featurizer)
        .unwrap();
    let b = store
        .push_component("bucketize", b"two", World::Featurizer)
        .unwrap();
    assert_eq!((a.version, again.version, b.version), (1, 1, 2));
    assert_eq!(again.digest, a.digest);
    assert_eq!(store.resolve("bucketize@1").unwrap(), a.digest);
    assert_eq!(store.resolve("bucketize").unwrap(), b.digest);
    assert_eq!(
        store.resolve(&format!("sha256:{}", a.digest)).unwrap(),
        a.digest
    );
    assert_eq!(store.component_bytes(&b.digest).unwrap(), b"two");
    let err = store.resolve("bucketize@9").unwrap_err().to_string();
    assert_eq!(
        err,
        "no component `bucketize@9` in the store (it has bucketize@1, bucketize@2)"
    );
    let listed: Vec<String> = store
        .list_components()
        .unwrap()
        .iter()
        .map(ComponentRecord::reference)
        .collect();
    assert_eq!(listed, ["bucketize@1", "bucketize@2"]);
}

#[test]
fn versions_are_numbered_and_rollback_activates_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tags: BTreeMap<String, String> = [("model".to_owned(), "ctr@7".to_owned())].into();
    let v1 = store
        .add_version(spec("p"), vec![], tags, "ana", None)
        .unwrap();
    let v2 = store
        .add_version(
            spec("p"),
            vec![],
            BTreeMap::new(),
            "bo",
            Some("faster".into()),
        )
        .unwrap();
    store
        .add_version(spec("other"), vec![], BTreeMap::new(), "bo", None)
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(store.active("p").unwrap(), Some(2));
    store.activate("p", 1).unwrap();
    assert_eq!(store.active("p").unwrap(), Some(1));
    let history = store.history("p").unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(history[0].tags["model"], "ctr@7");
    assert_eq!(
        store.activate("p", 5).unwrap_err().to_string(),
        "pipeline `p` has no version 5 (it has 1, 2)"
    );
}

#[test]
fn file_paths_are_not_references() {
    assert!(is_reference("bucketize@3"));
    assert!(is_reference("sha256:ab"));
    assert!(!is_reference("bucketize.wasm"));
    assert!(!is_reference("out/x"));
}

#[cfg(feature = "http")]
#[test]
fn a_stored_version_reads_back_every_node_kind_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut spec = PipelineSpec::from_toml(
        r#"
name = "kinds"
[[source]]
name = "events"
[source.jsonl]
path = "e.jsonl"
schema = [{ name = "k", type = "utf8", required = true }, { name = "x", type = "float64" }]
rejects = "bad.jsonl"
[[stage]]
name = "clip"
input = "events"
[stage.map]
transforms = [{ clip = { column = "x", min = 0, max = 1 } }]
[[stage]]
name = "tag"
input = "clip"
[stage.wasm]
component = "sha256:00"
params = { mode = "tag" }
[[stage]]
name = "ordered"
inputs = ["tag"]
[stage.sort]
by = [{ column = "k" }]
[[sink]]
name = "out"
input = "ordered"
[sink.http]
url = "http://127.0.0.1:1/v1/models/m:predict"
protocol = "tf_serving"
"#,
        "k.toml",
    )
    .unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let v = store
        .add_version(spec.clone(), vec![], BTreeMap::new(), "ana", None)
        .unwrap();
    let back = store.version("kinds", v.version).unwrap().runnable_spec();
    assert_eq!(back, spec);
    assert_eq!(
        back.sources[0].rejects(),
        Some(std::path::Path::new("bad.jsonl"))
    );
    let kinds: Vec<&str> = back.stages.iter().map(|s| s.kind.table()).collect();
    assert_eq!(kinds, ["map", "wasm", "sort"]);
    assert_eq!(back.stages[1].wasm().unwrap().params["mode"], "tag");
}
