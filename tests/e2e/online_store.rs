//! The clickstream example with its sessions written to Redis, the online
//! store, against a real server (`WEIR_TEST_REDIS_URL`, by default the local
//! one; see `weir_e2e::services` for skipping): every user's stored vector is that user's latest
//! session, and it traces to the featurizer's digest and to input positions.

use std::collections::BTreeMap;

use serde_json::Value;
use weir::connectors::RedisSinkSpec;
use weir::connectors::redis::read_vectors;
use weir::spec::{PipelineSpec, SinkKind};
use weir_e2e::clicks::{ClickConfig, generate};
use weir_e2e::services::{self, Service};
use weir_e2e::{component, repo_root, run_spec};

#[tokio::test(flavor = "multi_thread")]
async fn sessions_in_redis_are_each_users_latest_and_name_their_code_and_input() {
    let Some(url) = services::url(Service::Redis) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small.jsonl");
    generate(
        ClickConfig::small(),
        &mut std::fs::File::create(&data).unwrap(),
    )
    .unwrap();
    let example = repo_root().join("examples/clickstream");
    let mut spec = PipelineSpec::from_file(&example.join("pipeline.toml")).unwrap();
    let source = spec.sources[0].jsonl_mut().unwrap();
    source.path = data.clone();
    source.rejects = Some(dir.path().join("rejects.jsonl"));
    for stage in &mut spec.stages {
        if let Some(w) = stage.wasm_mut() {
            w.krate = None;
            w.component = Some(component("stages/clickstream-features"));
        }
    }
    let prefix = format!("weir-test:e2e:{}", std::process::id());
    let redis: RedisSinkSpec = toml::from_str(&format!(
        "url = {url:?}\nprefix = {prefix:?}\nentity = \"user_id\"\nevent_time = \"session_end\"\nfeatures = [\"session_start\", \"n_events\", \"n_clicks\", \"total_spend\", \"mean_dwell_log\", \"n_distinct_items\"]"
    ))
    .unwrap();
    spec.sinks[0].kind = SinkKind::Redis(redis);
    run_spec(spec, dir.path()).await.unwrap();

    // The latest session of each user, from the expected output.
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for line in std::fs::read_to_string(example.join("expected-small.jsonl"))
        .unwrap()
        .lines()
    {
        let s: Value = serde_json::from_str(line).unwrap();
        let user = s["user_id"].as_str().unwrap().to_owned();
        let newer = latest
            .get(&user)
            .is_none_or(|old| s["session_end"].as_i64() >= old["session_end"].as_i64());
        if newer {
            latest.insert(user, s);
        }
    }
    let users: Vec<String> = latest.keys().cloned().collect();
    let stored = read_vectors(&url, &prefix, &users).await.unwrap();

    // Clean up before asserting.
    {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut keys: Vec<String> = users.iter().map(|u| format!("{prefix}:{u}")).collect();
        keys.push(prefix.clone());
        let _: () = redis::cmd("DEL").arg(&keys[..]).query(&mut c).unwrap();
    }

    let digest =
        weir::sandbox::digest(&std::fs::read(component("stages/clickstream-features")).unwrap());
    let total_lines = std::fs::read_to_string(&data).unwrap().lines().count();
    for (user, v) in users.iter().zip(&stored) {
        let v = v.as_ref().unwrap_or_else(|| panic!("no vector for {user}"));
        let want = &latest[user];
        assert_eq!(v.event_time_ms, want["session_end"].as_i64(), "{user}");
        for f in ["session_start", "n_events", "n_clicks", "n_distinct_items"] {
            assert_eq!(v.features[f], want[f], "{user}.{f}");
        }
        // The expected file rounds floats to 6 decimals; the store keeps them whole.
        for f in ["total_spend", "mean_dwell_log"] {
            let (got, exp) = (v.features[f].as_f64().unwrap(), want[f].as_f64().unwrap());
            assert!((got - exp).abs() <= 5e-7, "{user}.{f}: {got} vs {exp}");
        }
        let l = v.lineage.as_ref().expect("lineage is stored");
        assert_eq!(l.pipeline, "clickstream");
        assert!(
            l.stages
                .iter()
                .any(|s| s.stage == "features" && s.digest == digest),
            "{user}: names the featurizer's digest"
        );
        assert!(!l.sources.is_empty(), "{user}: names input positions");
        for s in &l.sources {
            assert_eq!(s.source, "events");
            let line = |p: &Option<String>| {
                p.as_deref().map_or(0, |p| {
                    p.split_once(':').unwrap().0.parse::<usize>().unwrap()
                })
            };
            assert!(
                line(&s.from) < line(&s.to) && line(&s.to) <= total_lines,
                "{s:?}"
            );
        }
    }
}
