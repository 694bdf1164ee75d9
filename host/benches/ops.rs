//! Throughput of the built-in operators on 1M rows, reported in rows per second:
//! `map` with four transforms (bucketize, log1p, standardize, hash_bucket) and
//! `filter` with a null check, a range and a set membership.
//!
//! `cargo bench -p weir-host --bench ops`

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::exec::{Emitter, Operator};
use weir::ops::{FilterOp, FilterSpec, MapOp, MapSpec};

const ROWS: usize = 1_000_000;
const BATCH: usize = 8192;

fn input() -> Vec<RecordBatch> {
    let price: Float64Array = (0..ROWS)
        .map(|i| (i % 11 != 0).then_some((i % 1000) as f64 * 0.37))
        .collect();
    let clicks = Int64Array::from_iter_values((0..ROWS).map(|i| (i % 97) as i64));
    let user: StringArray = (0..ROWS)
        .map(|i| Some(format!("user-{}", i % 50_000)))
        .collect();
    let country: StringArray = (0..ROWS)
        .map(|i| Some(["us", "fr", "de", "it", "jp"][i % 5]))
        .collect();
    let all = RecordBatch::try_from_iter([
        ("price", Arc::new(price) as _),
        ("clicks", Arc::new(clicks) as _),
        ("user", Arc::new(user) as _),
        ("country", Arc::new(country) as _),
    ])
    .expect("batch");
    (0..ROWS)
        .step_by(BATCH)
        .map(|o| all.slice(o, BATCH.min(ROWS - o)))
        .collect()
}

fn drive(op: &mut dyn Operator, input: &[RecordBatch]) -> Emitter {
    let mut out = Emitter::default();
    for b in input {
        op.process(b.clone(), &mut out).expect("process");
    }
    op.finish(&mut out).expect("finish");
    out
}

fn bench(c: &mut Criterion) {
    let input = input();
    let mut group = c.benchmark_group("ops");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);

    let map: MapSpec = toml::from_str(
        r#"transforms = [
            { bucketize = { column = "price", boundaries = [1, 10, 50, 100, 200], output = "price_bucket", null_bucket = -1 } },
            { log1p = { column = "clicks", output = "log_clicks" } },
            { standardize = { column = "price", mean = 185.0, std = 107.0 } },
            { hash_bucket = { column = "user", buckets = 1024, output = "user_bucket" } },
        ]"#,
    )
    .expect("map spec");
    group.bench_function("map_4_transforms_1M_rows", |b| {
        b.iter(|| {
            let mut op = MapOp::new("bench.map", &map).expect("valid");
            black_box(drive(&mut op, &input))
        });
    });

    let filter: FilterSpec = toml::from_str(
        r#"all = [
            { not_null = ["price"] },
            { range = { column = "price", min = 10, max = 300 } },
            { in = { column = "country", values = ["us", "fr", "de"] } },
        ]"#,
    )
    .expect("filter spec");
    group.bench_function("filter_3_predicates_1M_rows", |b| {
        b.iter(|| {
            let mut op = FilterOp::new("bench.filter", &filter).expect("valid");
            black_box(drive(&mut op, &input))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
