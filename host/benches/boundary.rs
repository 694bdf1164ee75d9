//! What crossing the WebAssembly boundary costs, and what a featurizer pays for the
//! sandbox compared with the same logic in native Rust.
//!
//! - `roundtrip/noop_1024`: a 1024-row batch of (f64, i64, utf8) into a stage that
//!   returns its input, and back: Arrow → WIT → guest → WIT → Arrow.
//! - `bucketize/{wasm,wasm_projected,native}_1024`: the `bucketize` stage (sent the
//!   whole batch, or only the `price` column it reads) against the same binary
//!   column-at-a-time count written natively over the Arrow column, side by side.
//!
//! Components are built from `stages/bucketize` and `tests/fixtures/noop` with
//! `cargo build --target wasm32-wasip2` on first use.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::sandbox::{FeaturizerStage, Sandbox, SandboxConfig, StageLimits, build_stage};

const ROWS: usize = 1024;
const BOUNDARIES: [f64; 5] = [0.0, 10.0, 50.0, 100.0, 500.0];

fn batch() -> RecordBatch {
    let price: Float64Array = (0..ROWS)
        .map(|i| {
            if i % 17 == 0 {
                None
            } else {
                Some((i * 37 % 1000) as f64 * 0.7)
            }
        })
        .collect();
    let dwell: Int64Array = (0..ROWS).map(|i| Some((i * 131 % 60_000) as i64)).collect();
    let user: StringArray = (0..ROWS)
        .map(|i| Some(format!("u{}", i * 7919 % 50_000)))
        .collect();
    let schema = Schema::new(vec![
        Field::new("price", DataType::Float64, true),
        Field::new("dwell_ms", DataType::Int64, true),
        Field::new("user_id", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(price), Arc::new(dwell), Arc::new(user)],
    )
    .unwrap()
}

fn stage(sandbox: &Sandbox, dir: &str, params: &str) -> FeaturizerStage {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = build_stage(&root.join(dir)).expect("stage builds");
    let loaded = sandbox.load_file(&wasm).expect("stage loads");
    FeaturizerStage::new(
        sandbox,
        &loaded,
        dir,
        params,
        StageLimits::default(),
        Default::default(),
    )
    .expect("stage starts")
}

/// The bucketize logic natively, as `weir_guest::bucket::Boundaries::bucket_column`
/// runs it in the stage: one compare-and-add pass over the values per boundary, then
/// counts to buckets, nulls to the fallback.
fn native_bucketize(batch: &RecordBatch) -> Int32Array {
    let price = batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let values = price.values();
    let mut counts = vec![0i32; values.len()];
    for &b in &BOUNDARIES {
        for (k, &v) in counts.iter_mut().zip(values.iter()) {
            *k += i32::from(b <= v);
        }
    }
    if let Some(nulls) = price.nulls() {
        // A word of the validity at a time, as the SDK reads it a byte at a time.
        for (w, word) in nulls.inner().bit_chunks().iter_padded().enumerate() {
            let mut zeros = !word;
            while zeros != 0 {
                let i = w * 64 + zeros.trailing_zeros() as usize;
                if i < counts.len() {
                    counts[i] = 0;
                }
                zeros &= zeros - 1;
            }
        }
    }
    for k in &mut counts {
        *k = if *k == 0 { -1 } else { *k - 1 };
    }
    Int32Array::from(counts)
}

fn benches(c: &mut Criterion) {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let input = batch();

    let mut noop = stage(&sandbox, "tests/fixtures/noop", "{}");
    let mut g = c.benchmark_group("roundtrip");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("noop_1024", |b| b.iter(|| noop.process(&input).unwrap()));
    // What crossing costs for the one column `bucketize` reads, for comparison with
    // `bucketize/wasm_projected_1024`: the rest of that figure is the guest's work.
    let mut noop_price = stage(&sandbox, "tests/fixtures/noop", "{}");
    noop_price.set_projection(Some(vec!["price".to_owned()]));
    g.bench_function("noop_price_only_1024", |b| {
        b.iter(|| noop_price.process(&input).unwrap())
    });
    g.finish();

    let params =
        r#"{"input":"price","boundaries":[0,10,50,100,500],"output":"price_bucket","fallback":-1}"#;
    let mut bucketize = stage(&sandbox, "stages/bucketize", params);
    let wasm_out = bucketize.process(&input).unwrap();
    let native_out = native_bucketize(&input);
    assert_eq!(
        wasm_out.column_by_name("price_bucket").unwrap().as_ref(),
        &native_out as &dyn Array
    );

    let mut projected = stage(&sandbox, "stages/bucketize", params);
    projected.set_projection(Some(vec!["price".to_owned()]));
    assert_eq!(projected.process(&input).unwrap(), wasm_out);

    let mut g = c.benchmark_group("bucketize");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("wasm_1024", |b| {
        b.iter(|| bucketize.process(&input).unwrap())
    });
    g.bench_function("wasm_projected_1024", |b| {
        b.iter(|| projected.process(&input).unwrap())
    });
    g.bench_function("native_1024", |b| b.iter(|| native_bucketize(&input)));
    g.finish();
}

criterion_group!(boundary, benches);
criterion_main!(boundary);
