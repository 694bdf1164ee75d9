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
    let w = spec.stages[0].wasm.as_ref().unwrap();
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
         expected one of `fuel`, `deadline`, `memory`, `max_crossing`"
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
    assert_eq!(spec.sources[0].jsonl.as_ref().unwrap().threads, None);
    let text = GOOD.replace(
        "path = \"events.jsonl\"",
        "path = \"events.jsonl\"\nthreads = 1",
    );
    let spec = PipelineSpec::from_toml(&text, "p.toml").unwrap();
    assert_eq!(
        spec.sources[0].jsonl.as_ref().unwrap().threads,
        std::num::NonZeroUsize::new(1)
    );
    let e = err(&GOOD.replace(
        "path = \"events.jsonl\"",
        "path = \"events.jsonl\"\nthreads = 0",
    ));
    assert!(e.contains("`source[0].jsonl.threads`"), "{e}");
}
