use super::*;

const GOOD: &str = r#"
name = "demo"

[[source]]
name = "events"
[source.jsonl]
path = "events.jsonl"
schema = [
  { name = "user_id", type = "utf8", required = true },
  { name = "price", type = "float64", min = 0 },
]

[[stage]]
name = "bucket"
input = "events"
[stage.wasm]
component = "bucketize.wasm"
params = { input = "price", boundaries = [0, 10], output = "b" }
limits = { fuel = 1000, memory = "16MiB", deadline = "250ms" }

[[sink]]
name = "out"
input = "bucket"
[sink.jsonl]
path = "out.jsonl"
"#;

fn err(text: &str) -> String {
    match PipelineSpec::from_toml(text, "p.toml") {
        Ok(spec) => spec.validate().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_file_parses_with_defaults_and_validates_in_order() {
    let spec = PipelineSpec::from_toml(GOOD, "p.toml").unwrap();
    let w = spec.stages[0].wasm().unwrap();
    assert_eq!(w.limits.fuel, 1000);
    assert_eq!(w.limits.memory, crate::units::ByteSize::mib(16));
    assert_eq!(
        w.limits.max_crossing,
        crate::sandbox::default_max_crossing()
    );
    assert_eq!(w.params["boundaries"], serde_json::json!([0, 10]));
    assert!(!w.grants.clock);
    let dag = spec.validate().unwrap();
    let names: Vec<&str> = dag.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["events", "bucket", "out"]);
    assert_eq!(
        dag.render(),
        "source events\n stage bucket <- events\n  sink out <- bucket\n"
    );
}

#[test]
fn a_misspelled_key_is_named_with_its_path_and_line() {
    let text = GOOD.replace("fuel = 1000", "fule = 1000");
    let e = err(&text);
    assert_eq!(
        e,
        "p.toml: line 19 column 12: `stage[0].wasm.limits.fule`: unknown field `fule`, \
         expected one of `fuel`, `deadline`, `memory`, `max_crossing`, `max_output`"
    );
}

#[test]
fn a_wrong_type_is_named() {
    let e = err(&GOOD.replace("fuel = 1000", "fuel = \"lots\""));
    assert!(e.contains("`stage[0].wasm.limits.fuel`"), "{e}");
    let e = err(&GOOD.replace("memory = \"16MiB\"", "memory = \"16 furlongs\""));
    assert!(e.contains("unknown size unit `furlongs`"), "{e}");
    let e = err(&GOOD.replace("type = \"utf8\"", "type = \"text\""));
    assert!(e.contains("`source[0].jsonl.schema[0].type`"), "{e}");
}

#[test]
fn a_dangling_input_suggests_the_closest_name() {
    let e = err(&GOOD.replace("input = \"events\"", "input = \"evnts\""));
    assert_eq!(
        e,
        "`stage[0].input`: no node is named `evnts` (did you mean `events`?)"
    );
}

#[test]
fn duplicate_names_and_kinds_are_refused() {
    let e = err(&GOOD
        .replace("name = \"bucket\"", "name = \"events\"")
        .replace("input = \"bucket\"", "input = \"events\""));
    assert_eq!(
        e,
        "`stage[0].name`: `events` is already the name of source[0]"
    );
    let e = err(&GOOD.replace(
        "component = \"bucketize.wasm\"",
        "component = \"a.wasm\"\ncrate = \"b\"",
    ));
    assert!(e.contains("set exactly one of `component`"), "{e}");
    let e = err(&GOOD.replace("[stage.wasm]", "[stage.other]"));
    assert!(e.contains("unknown field `other`"), "{e}");
}

#[test]
fn cycles_and_orphans_are_refused() {
    let cyc = r#"
name = "c"
[[source]]
name = "s"
[source.jsonl]
path = "x"
schema = [{ name = "a", type = "int64" }]
[[stage]]
name = "a"
inputs = ["s", "b"]
[stage.wasm]
component = "x.wasm"
[[stage]]
name = "b"
input = "a"
[stage.wasm]
component = "x.wasm"
[[sink]]
name = "o"
input = "b"
[sink.jsonl]
path = "o"
"#;
    assert_eq!(
        err(cyc),
        "`stage[0]`: the pipeline has a cycle through a → b"
    );
    let orphan = GOOD.replace("input = \"bucket\"", "input = \"events\"");
    assert_eq!(
        err(&orphan),
        "`stage[0]`: nothing reads from `bucket`; connect it to a stage or sink, or remove it"
    );
    let no_sink = GOOD.split("[[sink]]").next().unwrap().to_owned();
    assert_eq!(err(&no_sink), "`sink`: the pipeline has no [[sink]]");
}

#[test]
fn zero_limits_are_refused() {
    let e = err(&GOOD.replace("fuel = 1000", "fuel = 0"));
    assert_eq!(e, "`stage[0].wasm.limits.fuel`: must be greater than 0");
}

#[test]
fn json_specs_parse_like_toml() {
    let toml_spec = PipelineSpec::from_toml(GOOD, "p.toml").unwrap();
    let json = serde_json::to_string(&toml_spec).unwrap();
    let back = PipelineSpec::from_json(&json, "api").unwrap();
    assert_eq!(back, toml_spec);
    let e = PipelineSpec::from_json(r#"{"name": "x", "sorce": []}"#, "api")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `sorce`"), "{e}");
}

#[test]
fn source_threads_are_optional_and_zero_is_refused_by_key() {
    let spec = PipelineSpec::from_toml(GOOD, "p.toml").unwrap();
    assert_eq!(spec.sources[0].jsonl().unwrap().threads, None);
    let text = GOOD.replace(
        "path = \"events.jsonl\"",
        "path = \"events.jsonl\"\nthreads = 1",
    );
    let spec = PipelineSpec::from_toml(&text, "p.toml").unwrap();
    assert_eq!(
        spec.sources[0].jsonl().unwrap().threads,
        std::num::NonZeroUsize::new(1)
    );
    let e = err(&GOOD.replace(
        "path = \"events.jsonl\"",
        "path = \"events.jsonl\"\nthreads = 0",
    ));
    assert!(e.contains("`source[0].jsonl.threads`"), "{e}");
}

#[test]
fn a_node_needs_exactly_one_kind_table() {
    let e = err(&GOOD.replace("[sink.jsonl]\npath = \"out.jsonl\"\n", ""));
    assert_eq!(
        e,
        "p.toml: line 21 column 1: `sink[0]`: needs one kind table: one of `jsonl`, `vectors`, `http`, `parquet`, `csv`, `redis`, `jetstream`"
    );
    let e = err(&GOOD.replace(
        "[source.jsonl]",
        "[source.sequence]\ncount = 3\n[source.jsonl]",
    ));
    assert_eq!(
        e,
        "p.toml: line 4 column 1: `source[0]`: has 2 kind tables (`jsonl`, `sequence`); keep exactly one"
    );
}

#[test]
fn an_unknown_node_key_is_named_with_a_suggestion() {
    let e = err(&GOOD.replace("[stage.wasm]", "[stage.wasn]"));
    assert_eq!(
        e,
        "p.toml: line 16 column 8: `stage[0].wasn`: unknown field `wasn`, expected one of \
         `name`, `input`, `inputs`, `on_error`, `fallback`, `breaker`, `wasm`, `map`, `filter`, \
         `batch`, `sample`, `split`, `sort`, `group`, `session`, `lookup` (did you mean `wasm`?)"
    );
    let e = err(&GOOD.replace("input = \"events\"", "inpt = \"events\""));
    assert!(
        e.contains("`stage[0].inpt`: unknown field `inpt`")
            && e.ends_with("(did you mean `input`?)"),
        "{e}"
    );
    // A source has no inputs.
    let e = err(&GOOD.replace("name = \"events\"", "name = \"events\"\ninput = \"x\""));
    assert!(
        e.contains(
            "`source[0].input`: unknown field `input`, expected one of `name`, `jsonl`, `sequence`"
        ),
        "{e}"
    );
    let e = err(&GOOD.replace("name = \"out\"\n", ""));
    assert!(e.contains("`sink[0]`: missing field `name`"), "{e}");
}

#[test]
fn kinds_are_read_into_their_variants_and_written_back_in_the_same_shape() {
    let text = r#"
name = "k"
[[source]]
name = "n"
[source.sequence]
count = 10
rate = 5.0
[[stage]]
name = "s"
input = "n"
[stage.sort]
by = [{ column = "n", descending = true }]
[[stage]]
name = "b"
inputs = ["s"]
[stage.batch]
max_rows = 4
[[sink]]
name = "v"
input = "b"
[sink.vectors]
path = "v.jsonl"
"#;
    let spec = PipelineSpec::from_toml(text, "p.toml").unwrap();
    let SourceKind::Sequence(q) = &spec.sources[0].kind else {
        panic!("{:?}", spec.sources[0].kind)
    };
    assert_eq!((q.count, q.rate), (Some(10), Some(5.0)));
    assert_eq!(spec.stages[0].kind.table(), "sort");
    assert_eq!(
        spec.stages[1].inputs.as_deref(),
        Some(&["s".to_owned()][..])
    );
    assert!(matches!(spec.sinks[0].kind, SinkKind::Vectors(_)));
    spec.validate().unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["stage"][1],
        serde_json::json!({ "name": "b", "inputs": ["s"], "batch": { "max_rows": 4 } })
    );
    assert_eq!(json["source"][0]["name"], "n");
    assert_eq!(json["source"][0]["sequence"]["count"], 10);
    let back = PipelineSpec::from_json(&json.to_string(), "api").unwrap();
    assert_eq!(back, spec);
    let toml_text = toml::to_string(&spec).unwrap();
    assert_eq!(PipelineSpec::from_toml(&toml_text, "again").unwrap(), spec);
}

#[test]
fn each_kind_checks_its_own_table_under_its_key() {
    let e = err(&GOOD.replace(
        "schema = [",
        "schema = [\n  { name = \"price\", type = \"int64\" },",
    ));
    assert_eq!(
        e,
        "`source[0].jsonl.schema[2].name`: column `price` is listed twice"
    );
    let jsonl = &GOOD[GOOD.find("[source.jsonl]").unwrap()..GOOD.find("[[stage]]").unwrap()];
    let e = err(&GOOD.replace(jsonl, "[source.sequence]\nrate = 0.0\n\n"));
    assert_eq!(
        e,
        "`source[0].sequence.rate`: must be a positive number of records per second"
    );
    if cfg!(feature = "http") {
        let e = err(&GOOD.replace(
            "[sink.jsonl]\npath = \"out.jsonl\"",
            "[sink.http]\nurl = \"https://x\"\nprotocol = \"kserve\"",
        ));
        assert!(
            e.starts_with("`sink[0].http.url`: `https://x` is not an http:// URL"),
            "{e}"
        );
    }
    let e = err(&GOOD.replace(
        "[stage.wasm]\ncomponent = \"bucketize.wasm\"\nparams = { input = \"price\", boundaries = [0, 10], output = \"b\" }\nlimits = { fuel = 1000, memory = \"16MiB\", deadline = \"250ms\" }",
        "[stage.group]\nby = []\naggregates = [{ name = \"n\", op = \"count\" }]",
    ));
    assert_eq!(e, "`stage[0].group.by`: needs at least one key column");
}

/// A build without a connector family still knows its kinds' table names, and
/// a pipeline naming one is told which Cargo feature brings it back.
#[cfg(not(feature = "redis"))]
#[test]
fn a_kind_left_out_of_the_build_names_the_feature_to_enable() {
    let e = err(&GOOD.replace(
        "[sink.jsonl]\npath = \"out.jsonl\"",
        "[sink.redis]\nurl = \"redis://127.0.0.1:6379\"",
    ));
    assert!(
        e.ends_with(
            "kind `redis` is not in this build of weir: rebuild weir-host with the Cargo \
             feature `redis` (`cargo build --features redis`)"
        ),
        "{e}"
    );
}

#[test]
fn on_error_is_read_beside_the_name_and_a_malformed_one_names_its_key() {
    let text = GOOD.replace(
        "name = \"bucket\"\ninput = \"events\"",
        "name = \"bucket\"\ninput = \"events\"\non_error = { retry = { attempts = 2 }, then = \"skip\" }\nbreaker = { traps = 2 }",
    );
    let spec = PipelineSpec::from_toml(&text, "p.toml").unwrap();
    let p = spec.stages[0].policy.on_error.as_ref().unwrap();
    assert_eq!(p.then, crate::node::policy::Action::Skip);
    assert_eq!(p.retry.as_ref().unwrap().attempts.get(), 2);
    assert_eq!(spec.stages[0].policy.breaker.unwrap().traps.get(), 2);
    spec.validate().unwrap();
    // It survives a round trip through the stored form.
    let stored = toml::to_string(&spec).unwrap();
    let again = PipelineSpec::from_toml(&stored, "p.toml").unwrap();
    assert_eq!(again.stages[0].policy, spec.stages[0].policy);

    let text = GOOD.replace(
        "name = \"bucket\"\ninput = \"events\"",
        "name = \"bucket\"\ninput = \"events\"\non_error = \"ignore\"",
    );
    let e = err(&text);
    assert!(
        e.contains("`stage[0].on_error`: unknown policy `ignore`: expected \"fail\", \"skip\""),
        "{e}"
    );
    let text = GOOD.replace(
        "name = \"bucket\"\ninput = \"events\"",
        "name = \"bucket\"\ninput = \"events\"\non_eror = \"skip\"",
    );
    let e = err(&text);
    assert!(
        e.contains("`stage[0].on_eror`: unknown field `on_eror`"),
        "{e}"
    );
    assert!(e.contains("(did you mean `on_error`?)"), "{e}");
    // A source takes no policy: it dead-letters corrupt records itself.
    let text = GOOD.replace(
        "name = \"events\"\n[source.jsonl]",
        "name = \"events\"\non_error = \"skip\"\n[source.jsonl]",
    );
    assert!(err(&text).contains("unknown field `on_error`"));
}

#[test]
fn skip_on_a_stateful_operator_is_refused_at_check_time_naming_the_key() {
    let text = GOOD.replace(
        "[[sink]]\nname = \"out\"\ninput = \"bucket\"",
        "[[stage]]\nname = \"sorted\"\ninput = \"bucket\"\non_error = \"skip\"\n[stage.sort]\nby = [{ column = \"price\" }]\n\n[[sink]]\nname = \"out\"\ninput = \"sorted\"",
    );
    let e = err(&text);
    assert!(
        e.starts_with(
            "`stage[1].on_error`: `skip` needs a node that processes each batch on its own"
        ),
        "{e}"
    );
    assert!(e.contains("`sort` keeps rows across batches"), "{e}");
    // Fallback on a sink is refused too: it has nothing to mark.
    let text = GOOD.replace(
        "name = \"out\"\ninput = \"bucket\"",
        "name = \"out\"\ninput = \"bucket\"\non_error = \"fallback\"",
    );
    assert_eq!(
        err(&text),
        "`sink[0].on_error`: a sink has no output to fall back to: use \"skip\" or \"fail\""
    );
}

/// `GOOD` with the table `segments` granted to its wasm stage, `extra` being
/// more TOML lines of the grant. A JSON-lines table: the one file format every
/// build has (the files-only build has no CSV).
fn with_lookup(extra: &str) -> String {
    GOOD.replace(
        "\n[[sink]]",
        &format!(
            "[stage.wasm.lookups.segments]\nkey = \"user_id\"\n\
             table.jsonl = {{ path = \"segments.jsonl\", schema = [{{ name = \"user_id\", type = \"utf8\" }}] }}\n\
             {extra}\n[[sink]]"
        ),
    )
}

#[test]
fn a_granted_lookup_table_parses_with_the_lookup_stages_defaults() {
    let spec = PipelineSpec::from_toml(&with_lookup(""), "p.toml").unwrap();
    spec.validate().unwrap();
    let w = spec.stages[0].wasm().unwrap();
    let grant = &w.lookups["segments"];
    assert_eq!(grant.key, "user_id");
    assert_eq!(grant.columns, None);
    assert_eq!(grant.cache, crate::connectors::lookup::CacheSpec::default());
}

#[test]
fn a_misspelled_lookup_key_is_named_with_its_path() {
    let e = err(&with_lookup("chache = { mode = \"full\" }"));
    assert!(
        e.contains("`stage[0].wasm.lookups.segments.chache`: unknown field `chache`"),
        "{e}"
    );
    let e = err(&with_lookup("cache = { mode = \"full\", refesh = \"5m\" }"));
    assert!(
        e.contains("`stage[0].wasm.lookups.segments.cache.refesh`: unknown field `refesh`"),
        "{e}"
    );
}

#[test]
fn a_lazy_lookup_table_is_refused_for_a_wasm_stage() {
    let e = err(&with_lookup("cache = { mode = \"lazy\" }"));
    assert!(
        e.contains("`stage[0].wasm.lookups.segments.cache.mode`"),
        "{e}"
    );
    assert!(e.contains("loaded whole (`full`)"), "{e}");
}
