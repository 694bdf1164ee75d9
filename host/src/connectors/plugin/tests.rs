use super::*;

const SPEC: &str = r#"
component = "access_log.wasm"
config = { path = "access.log", nested = { n = 3 } }
grants = { read = ["."] }
limits = { fuel = 1000, deadline = "2s" }
max_rows = 500
schema = [{ name = "ip", type = "utf8" }, { name = "status", type = "int32" }]
"#;

#[test]
fn a_plugin_table_reads_every_key_and_hands_config_on_as_json() {
    let spec: PluginSourceSpec = toml::from_str(SPEC).unwrap();
    assert_eq!(
        spec.reference("source[0].plugin").unwrap(),
        ComponentRef::File("access_log.wasm".into())
    );
    // Keys in any order: JSON objects are unordered.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&spec.config.to_string()).unwrap(),
        serde_json::json!({ "path": "access.log", "nested": { "n": 3 } })
    );
    assert_eq!(spec.grants.read, [PathBuf::from(".")]);
    assert_eq!(spec.limits.fuel, 1000);
    assert_eq!(spec.limits.deadline.0, std::time::Duration::from_secs(2));
    assert_eq!(spec.limits.memory, crate::sandbox::default_memory());
    assert_eq!(spec.max_rows.map(NonZeroU32::get), Some(500));
    let columns = spec.columns("source[0].plugin").unwrap();
    let names: Vec<_> = columns.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ip", "status"]);
    spec.check("source[0].plugin").unwrap();
}

#[test]
fn defaults_grant_nothing_and_config_is_an_empty_object() {
    let spec: PluginSourceSpec =
        toml::from_str("crate = \"stages/x\"\nschema = [{ name = \"n\", type = \"int64\" }]")
            .unwrap();
    assert_eq!(spec.config.to_string(), "{}");
    assert!(spec.grants.read.is_empty());
    assert_eq!(spec.grants().read_dirs, Vec::<PathBuf>::new());
    assert!(!spec.grants().clock);
    assert_eq!(spec.limits, StageLimits::default());
    assert_eq!(spec.max_rows, None);
}

#[test]
fn a_misspelled_key_is_refused_with_its_name() {
    for (text, bad) in [
        (SPEC.replace("max_rows", "max_row"), "max_row"),
        (SPEC.replace("grants = { read", "grants = { reads"), "reads"),
        (SPEC.replace("fuel = 1000", "fule = 1000"), "fule"),
        (SPEC.replace("name = \"ip\"", "nmae = \"ip\""), "nmae"),
    ] {
        let err = toml::from_str::<PluginSourceSpec>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("unknown field `{bad}`")), "{err}");
    }
    let err = toml::from_str::<PluginSourceSpec>("component = \"a.wasm\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field `schema`"), "{err}");
}

#[test]
fn check_refuses_what_serde_cannot_naming_the_key() {
    let key = "source[0].plugin";
    let check = |text: &str| {
        toml::from_str::<PluginSourceSpec>(text)
            .unwrap()
            .check(key)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        check("schema = [{ name = \"n\", type = \"int64\" }]"),
        "`source[0].plugin`: set exactly one of `component` (a .wasm file or a stored component) and `crate` (a stage crate to build)"
    );
    assert!(
        check("component = \"a.wasm\"\nschema = []")
            .starts_with("`source[0].plugin.schema`: declare at least one column"),
    );
    assert_eq!(
        check(
            "component = \"a.wasm\"\nschema = [{ name = \"n\", type = \"int64\" }, { name = \"n\", type = \"utf8\" }]"
        ),
        "`source[0].plugin.schema`: output column `n` is declared twice"
    );
    assert_eq!(
        check(
            "component = \"a.wasm\"\nlimits = { fuel = 0 }\nschema = [{ name = \"n\", type = \"int64\" }]"
        ),
        "`source[0].plugin.limits.fuel`: must be greater than 0"
    );
}

#[test]
fn a_pipeline_names_the_kind_plugin() {
    let text = format!(
        "name = \"p\"\n[[source]]\nname = \"logs\"\n[source.plugin]\n{SPEC}\n\
         [[sink]]\nname = \"out\"\ninput = \"logs\"\n[sink.jsonl]\npath = \"out.jsonl\"\n"
    );
    let spec = crate::spec::PipelineSpec::from_toml(&text, "p.toml").unwrap();
    assert_eq!(spec.sources[0].kind.table(), "plugin");
    spec.validate().unwrap();
    let bad = text.replace("max_rows", "max_rowz");
    let err = crate::spec::PipelineSpec::from_toml(&bad, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("source[0].plugin"), "{err}");
    assert!(err.contains("unknown field `max_rowz`"), "{err}");
}
