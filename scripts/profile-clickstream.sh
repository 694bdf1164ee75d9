#!/usr/bin/env bash
# Where the clickstream job's CPU goes: `perf record -g` over one run of the
# WebAssembly variant on the large set (2,000,000 events), then the share of
# the run's samples per function, children included: the top-level README's
# "Where the time goes now" (parsing, `session`, `sort`, the sink) and the
# stage's share of the CPU. Needs: perf (linux-perf), a release build with line
# tables (the release profile keeps them; built here), and the large set, which
# `examples/clickstream/bench.sh` generates (or: weir-gen-clicks large).
# Writes out/perf.data and out/perf-report.txt under examples/clickstream/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cd "$root/examples/clickstream"
mkdir -p data out
cargo build --release -q -p weir-host --bin weir -p weir-e2e --bin weir-gen-clicks
[ -f data/large.jsonl ] || "$target/release/weir-gen-clicks" large > data/large.jsonl
sed 's#data/small.jsonl#data/large.jsonl#' pipeline.toml > out/large.toml
(cd out && sed -i 's#"out/#"#g; s#"\.\./\.\./stages#"../../../stages#; s#"data/large#"../data/large#' large.toml)
wasm=$("$target/release/weir" stage build ../../stages/clickstream-features | sed -n 's/^built //p')
sed -i "s#^crate = .*#component = \"$wasm\"#" out/large.toml
"$target/release/weir" run --quiet out/large.toml > /dev/null   # warm the component cache
perf record -g --call-graph dwarf,16384 -F 499 -o out/perf.data -- \
  "$target/release/weir" run --quiet out/large.toml > /dev/null
perf report -i out/perf.data --children --percent-limit 1 --stdio \
  > out/perf-report.txt 2> /dev/null
echo "out/perf-report.txt: the share of samples per function, children included;"
echo "the README's groups: jsonl_source (parsing), ops::session, ops::sort, jsonl_sink, sandbox"
grep -E '^ +[0-9.]+%' out/perf-report.txt | head -40
