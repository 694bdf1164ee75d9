//! Parquet and CSV through pipeline files: CSV in (with a corrupt row kept as a
//! dead letter), Parquet out partitioned by a column, Parquet read back (a
//! directory of partitions) and written as JSON lines: the values survive.

use weir_e2e::run_toml;

const CSV: &str = "user,day,price,clicks\n\
u1,2024-01-01,9.5,3\n\
u2,2024-01-01,12.25,\n\
u3,2024-01-02,not-a-price,1\n\
u4,2024-01-02,0.5,7\n";

#[tokio::test]
async fn csv_to_partitioned_parquet_and_back_keeps_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.csv"), CSV).unwrap();
    let summary = run_toml(
        r#"name = "to-parquet"
[[source]]
name = "rows"
[source.csv]
path = "in.csv"
rejects = "rejects.jsonl"
schema = [
  { name = "user", type = "utf8", required = true },
  { name = "day", type = "utf8" },
  { name = "price", type = "float64" },
  { name = "clicks", type = "int64" },
]
[[sink]]
name = "out"
input = "rows"
[sink.parquet]
path = "by_day"
partition_by = "day"
"#,
        d,
    )
    .await
    .unwrap();
    assert_eq!(summary.nodes[0].rows_out, 3, "one row of four is corrupt");
    let rejects = std::fs::read_to_string(d.join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1);
    assert!(rejects.contains("price"), "{rejects}");
    assert!(d.join("by_day/day=2024-01-01/part-0.parquet").is_file());
    assert!(d.join("by_day/day=2024-01-02/part-0.parquet").is_file());

    run_toml(
        r#"name = "from-parquet"
[[source]]
name = "back"
[source.parquet]
path = "by_day"
[[sink]]
name = "out"
input = "back"
[sink.jsonl]
path = "back.jsonl"
"#,
        d,
    )
    .await
    .unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(d.join("back.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    // The partition column lives in the directory names, not in the files.
    assert_eq!(
        lines,
        [
            r#"{"user":"u1","price":9.5,"clicks":3}"#,
            r#"{"user":"u2","price":12.25,"clicks":null}"#,
            r#"{"user":"u4","price":0.5,"clicks":7}"#,
        ]
    );
}
