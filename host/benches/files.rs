//! Throughput of the file sinks on the same 1,000,000 rows (session-feature
//! shaped: a user id, two timestamps, three floats with nulls, two integers, a
//! flag, 8192 rows a batch): the JSON-lines sink against the Parquet sink (zstd
//! with its write-ahead log, the default; zstd and snappy without it) and the
//! CSV sink. The sinks alternate within each round, so a noisy stretch of the
//! machine hits all of them; prints each sink's median rows/s over the rounds
//! with its range, the median ratio to JSON-lines, and the output sizes.
//!
//! `cargo bench -p weir-host --bench files` (ROUNDS, default 5)

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use weir::connectors::parquet::{Codec, default_max_open_files, default_row_group_rows};
use weir::connectors::{
    CsvSink, CsvSinkSpec, JsonlSink, JsonlSinkSpec, ParquetSink, ParquetSinkSpec,
};
use weir::node::{Lineage, Sink};

const ROWS: usize = 1_000_000;
const BATCH: usize = 8192;

fn input() -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ROWS {
        let n = BATCH.min(ROWS - start);
        let r = start..start + n;
        let user: StringArray = r
            .clone()
            .map(|i| Some(format!("user-{:05}", i % 50_000)))
            .collect();
        let t0 = TimestampMillisecondArray::from_iter_values(
            r.clone().map(|i| 1_704_067_200_000 + i as i64 * 37),
        );
        let t1 = TimestampMillisecondArray::from_iter_values(
            r.clone()
                .map(|i| 1_704_067_200_000 + i as i64 * 37 + (i % 1800) as i64 * 1000),
        );
        let f = |k: usize| -> Float64Array {
            r.clone()
                .map(|i| (i % (7 + k) != 0).then_some((i % 1000) as f64 * 0.37 + k as f64))
                .collect()
        };
        let events = Int64Array::from_iter_values(r.clone().map(|i| (i % 97) as i64));
        let bucket = Int64Array::from_iter_values(r.clone().map(|i| (i % 10) as i64));
        let flag = BooleanArray::from_iter(r.clone().map(|i| Some(i % 3 == 0)));
        out.push(
            RecordBatch::try_from_iter([
                ("user_id", Arc::new(user) as ArrayRef),
                ("session_start", Arc::new(t0) as ArrayRef),
                ("session_end", Arc::new(t1) as ArrayRef),
                ("revenue", Arc::new(f(0)) as ArrayRef),
                ("mean_dwell", Arc::new(f(1)) as ArrayRef),
                ("max_price", Arc::new(f(2)) as ArrayRef),
                ("events", Arc::new(events) as ArrayRef),
                ("top_bucket", Arc::new(bucket) as ArrayRef),
                ("purchased", Arc::new(flag) as ArrayRef),
            ])
            .unwrap(),
        );
        start += n;
    }
    out
}

fn parquet(path: &std::path::Path, compression: Codec, resumable: bool) -> Box<dyn Sink> {
    let spec = ParquetSinkSpec {
        path: path.to_owned(),
        compression,
        compression_level: None,
        row_group_rows: default_row_group_rows(),
        partition_by: None,
        max_open_files: default_max_open_files(),
        resumable,
    };
    Box::new(ParquetSink::create(&spec, path.to_owned()).unwrap())
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let batches = input();
    type Make = Box<dyn Fn() -> Box<dyn Sink>>;
    let sinks: Vec<(&str, std::path::PathBuf, Make)> = vec![
        (
            "jsonl",
            d.join("out.jsonl"),
            Box::new({
                let p = d.join("out.jsonl");
                move || {
                    Box::new(
                        JsonlSink::create(
                            &JsonlSinkSpec {
                                path: p.clone(),
                                float_decimals: None,
                                columns: None,
                                lineage: false,
                            },
                            p.clone(),
                        )
                        .unwrap(),
                    ) as Box<dyn Sink>
                }
            }),
        ),
        (
            "parquet zstd+log",
            d.join("zl.parquet"),
            Box::new({
                let p = d.join("zl.parquet");
                move || parquet(&p, Codec::Zstd, true)
            }),
        ),
        (
            "parquet zstd",
            d.join("z.parquet"),
            Box::new({
                let p = d.join("z.parquet");
                move || parquet(&p, Codec::Zstd, false)
            }),
        ),
        (
            "parquet snappy",
            d.join("s.parquet"),
            Box::new({
                let p = d.join("s.parquet");
                move || parquet(&p, Codec::Snappy, false)
            }),
        ),
        (
            "csv",
            d.join("out.csv"),
            Box::new({
                let p = d.join("out.csv");
                move || {
                    Box::new(
                        CsvSink::create(
                            &CsvSinkSpec {
                                path: p.clone(),
                                header: true,
                                delimiter: ",".into(),
                                columns: None,
                            },
                            p.clone(),
                        )
                        .unwrap(),
                    ) as Box<dyn Sink>
                }
            }),
        ),
    ];
    let lineage = Lineage::default();
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); sinks.len()];
    for _ in 0..rounds {
        for (i, (_, _, make)) in sinks.iter().enumerate() {
            let started = Instant::now();
            let mut sink = make();
            for b in &batches {
                sink.write(b, &lineage).unwrap();
            }
            // As a run ends: a flush (the checkpoint), then the close.
            sink.flush().unwrap();
            sink.close(true).unwrap();
            secs[i].push(started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{ROWS} rows, {rounds} alternating rounds");
    for (i, (name, path, _)) in sinks.iter().enumerate() {
        let rate = |s: f64| ROWS as f64 / s;
        let ratios: Vec<f64> = secs[0].iter().zip(&secs[i]).map(|(j, s)| j / s).collect();
        let mut r = ratios.clone();
        r.sort_by(f64::total_cmp);
        let lo = secs[i].iter().copied().fold(f64::MAX, f64::min);
        let hi = secs[i].iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<18} {:>10.0} rows/s (range {:.0}-{:.0})  x{:.2} of jsonl (range {:.2}-{:.2})  {:>6.1} MB",
            rate(median(&secs[i])),
            rate(hi),
            rate(lo),
            median(&ratios),
            r[0],
            r[r.len() - 1],
            std::fs::metadata(path).unwrap().len() as f64 / 1e6
        );
    }
}
