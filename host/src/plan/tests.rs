//! Plan-time schemas: every node states its output, and a column a node or a
//! sink needs and its input lacks fails the plan, naming the node and the column.

use super::*;

/// A pipeline reading `user_id`, `ts` and `price` from a JSON-lines file,
/// then `rest` (stages and sinks, the first reading `events`).
fn pipeline(rest: &str) -> String {
    format!(
        "name = \"p\"\n\
         [[source]]\nname = \"events\"\n[source.jsonl]\npath = \"in.jsonl\"\n\
         schema = [{{ name = \"user_id\", type = \"utf8\" }}, {{ name = \"ts\", type = \"int64\" }}, {{ name = \"price\", type = \"float64\" }}]\n\
         {rest}"
    )
}

fn build(text: &str) -> Result<Plan, PlanError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let mut spec = PipelineSpec::from_toml(text, "p.toml").unwrap();
    spec.base_dir = dir.path().to_path_buf();
    let env = RunEnv::standalone(
        Sandbox::new(crate::sandbox::SandboxConfig::default()).unwrap(),
        dir.path().join("data"),
    );
    Plan::build(spec, &env)
}

fn refusal(text: &str) -> (String, crate::node::Fault) {
    match build(text) {
        Ok(_) => panic!("the plan was built"),
        Err(e) => (e.to_string(), e.fault()),
    }
}

const SESSION: &str = "[[stage]]\nname = \"sessions\"\ninput = \"events\"\n[stage.session]\n\
     key = [\"user_id\"]\ntime = \"ts\"\ngap = \"30m\"\n\
     aggregates = [{ name = \"n\", op = \"count\" }, { name = \"spend\", op = \"sum\", column = \"price\" }]\n";

#[test]
fn group_and_session_state_their_schemas_at_plan_time() {
    let plan = build(&pipeline(&format!(
        "{SESSION}[[stage]]\nname = \"per_user\"\ninput = \"sessions\"\n[stage.group]\nby = [\"user_id\"]\n\
         aggregates = [{{ name = \"sessions\", op = \"count\" }}, {{ name = \"spend\", op = \"max\", column = \"spend\" }}]\n\
         [[sink]]\nname = \"out\"\ninput = \"per_user\"\n[sink.jsonl]\npath = \"out.jsonl\"\n"
    )))
    .unwrap();
    let rendered: Vec<String> = plan
        .dag
        .nodes
        .iter()
        .zip(&plan.schemas)
        .map(|(n, s)| {
            format!(
                "{}: {}",
                n.name,
                s.as_deref().map_or("-".into(), crate::node::schema::render)
            )
        })
        .collect();
    assert_eq!(
        rendered,
        [
            "events: user_id: Utf8, ts: Int64, price: Float64",
            "sessions: user_id: Utf8, session_start: Int64, session_end: Int64, n: Int64, spend: Float64",
            "per_user: user_id: Utf8, sessions: Int64, spend: Float64",
            "out: -",
        ]
    );
}

#[test]
fn a_group_keyed_on_a_missing_column_fails_the_plan() {
    let (e, fault) = refusal(&pipeline(
        "[[stage]]\nname = \"g\"\ninput = \"events\"\n[stage.group]\nby = [\"uid\"]\n\
         aggregates = [{ name = \"n\", op = \"count\" }]\n\
         [[sink]]\nname = \"out\"\ninput = \"g\"\n[sink.jsonl]\npath = \"out.jsonl\"\n",
    ));
    assert_eq!(
        e,
        "`g`: key `uid` is not a column of the input (it has: user_id, ts, price)"
    );
    assert_eq!(fault, crate::node::Fault::Config);
}

#[test]
fn a_session_keyed_on_a_missing_column_fails_the_plan() {
    let (e, _) = refusal(&pipeline(
        &format!("{SESSION}[[sink]]\nname = \"out\"\ninput = \"sessions\"\n[sink.jsonl]\npath = \"out.jsonl\"\n")
            .replace("key = [\"user_id\"]", "key = [\"uid\"]"),
    ));
    assert_eq!(
        e,
        "`sessions`: key column `uid` is not a column of the input (it has: user_id, ts, price)"
    );
    let (e, _) = refusal(&pipeline(
        &format!("{SESSION}[[sink]]\nname = \"out\"\ninput = \"sessions\"\n[sink.jsonl]\npath = \"out.jsonl\"\n")
            .replace("time = \"ts\"", "time = \"price\""),
    ));
    assert_eq!(
        e,
        "`sessions`: time column `price` must be int64 epoch milliseconds or timestamp_ms, not Float64"
    );
}

#[test]
fn the_filter_binds_its_columns_at_plan_time() {
    let (e, _) = refusal(&pipeline(
        "[[stage]]\nname = \"f\"\ninput = \"events\"\n[stage.filter]\n\
         all = [{ range = { column = \"cost\", min = 0 } }]\n\
         [[sink]]\nname = \"out\"\ninput = \"f\"\n[sink.jsonl]\npath = \"out.jsonl\"\n",
    ));
    assert_eq!(
        e,
        "`f`: filter range(cost): the input has no column `cost` (it has `user_id`, `ts`, `price`)"
    );
    let (e, _) = refusal(&pipeline(
        "[[stage]]\nname = \"f\"\ninput = \"events\"\n[stage.filter]\n\
         all = [{ equals = { column = \"ts\", value = \"x\" } }]\n\
         [[sink]]\nname = \"out\"\ninput = \"f\"\n[sink.jsonl]\npath = \"out.jsonl\"\n",
    ));
    assert_eq!(
        e,
        "`f`: filter equals(ts): the value \"x\" cannot be read as Int64"
    );
}

#[test]
fn a_redis_sink_without_its_entity_column_fails_the_plan() {
    let (e, fault) = refusal(&pipeline(
        "[[sink]]\nname = \"features\"\ninput = \"events\"\n[sink.redis]\n\
         url = \"redis://127.0.0.1:1\"\nprefix = \"f\"\nentity = \"uid\"\nevent_time = \"ts\"\n",
    ));
    assert_eq!(
        e,
        "`features`: `sink[0].redis.entity`: column `uid` is not in the input (columns: user_id, ts, price)"
    );
    assert_eq!(fault, crate::node::Fault::Config);
    let (e, _) = refusal(&pipeline(
        "[[sink]]\nname = \"features\"\ninput = \"events\"\n[sink.redis]\n\
         url = \"redis://127.0.0.1:1\"\nprefix = \"f\"\nentity = \"user_id\"\nevent_time = \"ts\"\n\
         features = [\"price\", \"dwell\"]\n",
    ));
    assert_eq!(
        e,
        "`features`: `sink[0].redis.features`: column `dwell` is not in the input (columns: user_id, ts, price)"
    );
}

#[test]
fn a_parquet_sink_partitioned_by_a_missing_column_fails_the_plan() {
    let (e, _) = refusal(&pipeline(
        "[[sink]]\nname = \"lake\"\ninput = \"events\"\n[sink.parquet]\n\
         path = \"lake\"\npartition_by = \"day\"\n",
    ));
    assert_eq!(
        e,
        "`lake`: `sink[0].parquet.partition_by`: column `day` is not in the input (columns: user_id, ts, price)"
    );
}

#[test]
fn a_jetstream_sink_keyed_by_a_missing_column_fails_the_plan() {
    let (e, _) = refusal(&pipeline(
        "[[sink]]\nname = \"bus\"\ninput = \"events\"\n[sink.jetstream]\n\
         subject = \"events.clean\"\nid = { key = [\"user_id\", \"event_id\"] }\n",
    ));
    assert_eq!(
        e,
        "`bus`: `sink[0].jetstream.id.key`: column `event_id` is not in the input (columns: user_id, ts, price)"
    );
}

#[test]
fn a_sink_whose_columns_are_there_is_accepted() {
    let plan = build(&pipeline(
        "[[sink]]\nname = \"lake\"\ninput = \"events\"\n[sink.parquet]\n\
         path = \"lake\"\npartition_by = \"user_id\"\n",
    ));
    assert!(plan.is_ok());
}
