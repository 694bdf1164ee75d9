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

mod letters {
    use std::sync::Arc;

    use super::super::letters::{LetterFilter, StoreLetters, StoredLetter, WhenFull};
    use super::*;
    use crate::node::{
        CommitTracker, DeadLetter, DeadLetterStore, Fault, LetterStamp, Meta, Payload,
    };

    fn record(run: &str, node: &str, reason: &str, at_ms: u64) -> crate::node::DeadLetterRecord {
        LetterStamp {
            tenant: "default".into(),
            pipeline: "p".into(),
            version: Some(1),
            run: run.into(),
        }
        .record(
            node,
            None,
            DeadLetter {
                fault: Fault::Data,
                reason: reason.into(),
                detail: format!("{reason} in words"),
                position: "f:1".into(),
                // Not UTF-8: kept byte for byte.
                payload: Payload::Raw(vec![0xff, b'{', 0xfe]),
            },
            at_ms,
        )
    }

    #[test]
    fn letters_are_kept_once_filtered_counted_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let letters: Vec<StoredLetter> = (0..5)
            .map(|i| {
                let reason = if i % 2 == 0 { "invalid_json" } else { "late" };
                StoredLetter::new(record("run-1", "src", reason, 1000 + i), i)
            })
            .collect();
        store.append_letters(letters.clone(), None).unwrap();
        // A client resending the same append (the owner went away) keeps them once.
        store.append_letters(letters.clone(), None).unwrap();
        let usage = store.letter_usage().unwrap();
        assert_eq!(usage.entries, 5);
        let all = store.letters(&LetterFilter::default(), 100).unwrap();
        assert_eq!(all, letters);
        assert_eq!(all[0].id, "run-1/0");
        assert_eq!(all[0].record.payload, Payload::Raw(vec![0xff, b'{', 0xfe]));
        let late = LetterFilter {
            reason: Some("late".into()),
            ..LetterFilter::default()
        };
        assert_eq!(store.letters(&late, 100).unwrap().len(), 2);
        let window = LetterFilter {
            pipeline: Some("p".into()),
            since_ms: Some(1001),
            until_ms: Some(1003),
            ..LetterFilter::default()
        };
        let ids: Vec<String> = store
            .letters(&window, 100)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, ["run-1/1", "run-1/2"]);
        // Other tenants see none of them.
        let other = store.for_tenant("acme").unwrap();
        assert!(
            other
                .letters(&LetterFilter::default(), 100)
                .unwrap()
                .is_empty()
        );
        // A replay count is kept without counting the letter twice.
        let mut bumped = all[0].clone();
        bumped.replays = 2;
        store.update_letters(vec![bumped]).unwrap();
        assert_eq!(
            store.letters(&LetterFilter::default(), 1).unwrap()[0].replays,
            2
        );
        assert_eq!(store.letter_usage().unwrap().entries, 5);
        assert_eq!(store.remove_letters(&late).unwrap(), 2);
        assert_eq!(store.remove_letters(&late).unwrap(), 0);
        let usage = store.letter_usage().unwrap();
        assert_eq!(usage.entries, 3);
        let left: u64 = store
            .letters(&LetterFilter::default(), 100)
            .unwrap()
            .iter()
            .map(|l| (l.key().len() + l.encode().len()) as u64)
            .sum();
        assert_eq!(usage.bytes, left, "the usage is what the entries take");
        assert_eq!(store.remove_letters(&LetterFilter::default()).unwrap(), 3);
        assert_eq!(store.letter_usage().unwrap(), Default::default());
    }

    #[test]
    fn an_append_overlapping_kept_letters_counts_only_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let letter = |i: u64| StoredLetter::new(record("run-1", "src", "x", 1000 + i), i);
        store
            .append_letters((0..5).map(letter).collect(), None)
            .unwrap();
        store
            .append_letters((3..8).map(letter).collect(), None)
            .unwrap();
        assert_eq!(store.letter_usage().unwrap().entries, 8);
        let ids: Vec<String> = store
            .letters(&LetterFilter::default(), 100)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(
            ids,
            (0..8).map(|i| format!("run-1/{i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn letters_read_back_from_both_layouts() {
        let mut letter = StoredLetter::new(record("run-1", "op", "late", 7), 3);
        letter.record.component = Some("ab12".into());
        letter.record.version = Some(4);
        letter.replays = 1;
        letter.last_replay = Some(crate::store::letters::ReplayFailure {
            at_ms: 9,
            version: Some(5),
            node: "op".into(),
            reason: "late".into(),
            message: "still late".into(),
        });
        let binary = letter.encode();
        assert_eq!(binary[0], 1);
        assert_eq!(StoredLetter::decode(&binary).unwrap(), letter);
        // The payload is kept as its bytes, not as hex inside JSON.
        assert!(binary.ends_with(&[0xff, b'{', 0xfe]));
        // What an earlier weir wrote: the whole letter as JSON.
        let json = serde_json::to_vec(&letter).unwrap();
        assert_eq!(StoredLetter::decode(&json).unwrap(), letter);
        let cut = &binary[..binary.len().min(10)];
        assert!(StoredLetter::decode(cut).is_err());
        assert!(StoredLetter::decode(b"").is_err());
    }

    #[test]
    fn a_full_store_refuses_a_batch_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = StoredLetter::new(record("run-1", "src", "x", 1), 0);
        store
            .append_letters(vec![one.clone()], Some(10_000))
            .unwrap();
        let used = store.letter_usage().unwrap().bytes;
        let two: Vec<StoredLetter> = (1..3)
            .map(|i| StoredLetter::new(record("run-1", "src", "x", 1), i))
            .collect();
        let err = store.append_letters(two, Some(used + 10)).unwrap_err();
        assert!(
            matches!(err, StoreError::DeadLettersFull { used: u, limit, .. } if u == used && limit == used + 10),
            "{err}"
        );
        assert_eq!(
            store.letter_usage().unwrap().entries,
            1,
            "nothing of it kept"
        );
        // Appending what is already kept needs no room.
        store.append_letters(vec![one], Some(used)).unwrap();
    }

    /// A delivery token of a batch, and the tracker that says when it settled.
    fn token(tracker: &Arc<CommitTracker>, position: &str) -> Meta {
        Meta::from_source(
            Arc::new(Default::default()),
            tracker.issue(Some(position.into())),
        )
    }

    #[test]
    fn a_writer_holds_positions_until_its_letters_are_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = StoreLetters::new(store.clone(), None, WhenFull::Backpressure);
        let tracker = CommitTracker::new("src", None);
        let letters = (0..3).map(|i| record("run-9", "src", "x", i)).collect();
        writer.append(letters, vec![token(&tracker, "7")]).unwrap();
        writer.flush().unwrap();
        assert_eq!(tracker.frontier().as_deref(), Some("7"));
        let kept = store.letters(&LetterFilter::default(), 10).unwrap();
        let ids: Vec<&str> = kept.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["run-9/0", "run-9/1", "run-9/2"]);
        assert!(
            writer
                .location("p", "src")
                .contains("weir dlq list --pipeline p --node src")
        );
    }

    #[test]
    fn a_full_store_pauses_the_writer_until_room_is_made_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Room for about two letters.
        let size = {
            let l = StoredLetter::new(record("run-1", "src", "x", 0), 0);
            (l.key().len() + serde_json::to_vec(&l).unwrap().len()) as u64
        };
        let writer = StoreLetters::new(
            store.clone(),
            Some(size * 2 + size / 2),
            WhenFull::Backpressure,
        );
        let tracker = CommitTracker::new("src", None);
        for (i, p) in ["1", "2", "3", "4"].into_iter().enumerate() {
            writer
                .append(
                    vec![record("run-1", "src", "x", i as u64)],
                    vec![token(&tracker, p)],
                )
                .unwrap();
        }
        let started = std::time::Instant::now();
        while !writer.is_full() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Two are kept, two wait, and their positions are not committed.
        assert_eq!(store.letter_usage().unwrap().entries, 2);
        assert_eq!(tracker.frontier().as_deref(), Some("2"));
        // An operator purges: the writer goes on by itself.
        store.remove_letters(&LetterFilter::default()).unwrap();
        writer.flush().unwrap();
        assert!(!writer.is_full());
        assert_eq!(tracker.frontier().as_deref(), Some("4"));
        let ids: Vec<String> = store
            .letters(&LetterFilter::default(), 10)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, ["run-1/2", "run-1/3"], "every letter kept, in order");
    }

    #[test]
    fn a_full_store_stops_a_writer_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = StoreLetters::new(store.clone(), Some(10), WhenFull::Stop);
        let tracker = CommitTracker::new("src", None);
        writer
            .append(
                vec![record("run-1", "src", "x", 0)],
                vec![token(&tracker, "1")],
            )
            .unwrap();
        let err = writer.flush().unwrap_err();
        assert!(err.message.contains("is full"), "{err}");
        assert_eq!(tracker.frontier(), None, "the position is not committed");
        assert!(
            writer
                .append(vec![record("run-1", "src", "x", 1)], Vec::new())
                .is_err()
        );
    }
}
