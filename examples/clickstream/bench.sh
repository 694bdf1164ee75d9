#!/usr/bin/env bash
# The clickstream job on the large data set (2,000,000 events, 50,000 users, 7
# days), run side by side by weir (both variants), DuckDB and Polars on the same
# file; then a sort and a group of the same file with a 16 MiB budget (about a
# tenth of the data), showing spill and peak memory. Prints records/s and peak RSS
# (`/usr/bin/time -v`). Needs: a release build (done here), python3 with
# `pip install duckdb polars`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cd "$here"
. "$root/scripts/bench-lib.sh"
mkdir -p data out
cargo build --release -q -p weir-host --bin weir -p weir-e2e --bin weir-gen-clicks
[ -f data/large.jsonl ] || "$target/release/weir-gen-clicks" large > data/large.jsonl
lines=$(wc -l < data/large.jsonl)
echo "data/large.jsonl: $lines lines, $(du -h data/large.jsonl | cut -f1)"

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" > "out/$name.stdout" 2> "out/$name.time" || { cat "out/$name.time"; exit 1; }
  local rss
  wall=$(grep 'Elapsed (wall clock)' "out/$name.time" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep 'Maximum resident set size' "out/$name.time" | awk '{print $NF}')
  printf '%-22s %8.2f s %12.0f records/s %8.0f MiB peak RSS\n' "$name" "$wall" "$(echo "$lines / $wall" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  echo "$wall" >> "out/walls-$name.txt"
}

sed 's#data/small.jsonl#data/large.jsonl#' pipeline.toml > out/large.toml
sed 's#data/small.jsonl#data/large.jsonl#' pipeline-native.toml > out/large-native.toml
(cd out && sed -i 's#"out/#"#g; s#"\.\./\.\./stages#"../../../stages#; s#"data/large#"../data/large#' large.toml large-native.toml)
# Build the WebAssembly stage once, outside the measurement, and run the built
# component as a deployment would: `crate = ...` would start cargo (to check the
# build is current) inside every measured run.
wasm=$("$target/release/weir" stage build ../../stages/clickstream-features | sed -n 's/^built //p')
sed -i "s#^crate = .*#component = \"$wasm\"#" out/large.toml
"$target/release/weir" run out/large.toml > /dev/null 2>&1 || true

# The four jobs alternate, round after round (ROUNDS, default 5), so a noisy
# stretch of the machine hits all of them; ratios are taken within a round and
# the median and the spread over the rounds are reported.
rm -f out/walls-*.txt
# The file's corrupt records go to the dead-letter store on every run; they are
# purged before each weir run, outside the timing, so each run starts from the
# same store rather than one that grew with every earlier run's letters.
purge() { "$target/release/weir" dlq purge --all > /dev/null; }
for round in $(seq 1 "${ROUNDS:-5}"); do
  echo "round $round"
  purge
  measure weir-wasm "$target/release/weir" run out/large.toml
  purge
  measure weir-native "$target/release/weir" run out/large-native.toml
  measure duckdb python3 duckdb_job.py data/large.jsonl out/duckdb.jsonl
  measure polars python3 polars_job.py data/large.jsonl out/polars.jsonl
done
# A peer's wall time over weir's: weir's throughput over the peer's.
bench_ratios "out/walls-{}.txt" duckdb/weir-wasm polars/weir-wasm duckdb/weir-native polars/weir-native

# The four outputs must be the same file, byte for byte.
for f in sessions-native.jsonl duckdb.jsonl polars.jsonl; do
  if cmp -s out/sessions.jsonl "out/$f"; then echo "out/$f: identical to weir's out/sessions.jsonl"
  else echo "out/$f: DIFFERS from weir's out/sessions.jsonl"; fi
done

# Spill: sort, then group, the whole file (~170 MiB of Arrow) under a 16 MiB
# budget, each in its own run.
header() { # name
  cat <<TOML
name = "$1"
[settings]
memory = "16MiB"
[[source]]
name = "events"
[source.jsonl]
path = "../data/large.jsonl"
rejects = "$1-rejects.jsonl"
schema = [
  { name = "user_id", type = "utf8", required = true },
  { name = "ts", type = "int64", required = true },
  { name = "price", type = "float64", min = 0 },
  { name = "event", type = "utf8" },
  { name = "item_id", type = "utf8" },
  { name = "dwell_ms", type = "int64" },
]
TOML
}
{ header spill-sort; cat <<'TOML'
[[stage]]
name = "by_user_ts"
input = "events"
[stage.sort]
by = [{ column = "user_id" }, { column = "ts", descending = true }]
[[sink]]
name = "sorted"
input = "by_user_ts"
[sink.jsonl]
path = "sorted.jsonl"
TOML
} > out/spill-sort.toml
{ header spill-group; cat <<'TOML'
[[stage]]
name = "per_user"
input = "events"
[stage.group]
by = ["user_id"]
aggregates = [
  { name = "n", op = "count" },
  { name = "items", op = "count_distinct", column = "item_id" },
  { name = "spend", op = "sum", column = "price" },
]
[[sink]]
name = "users"
input = "per_user"
[sink.jsonl]
path = "users.jsonl"
TOML
} > out/spill-group.toml
# A sort feeding a group in one run under the same budget: the group's
# partitions compete with the sort for the pool. Its groups must be the group
# alone's (sums up to floating-point summation order).
{ header spill-sort-group; cat <<'TOML'
[[stage]]
name = "by_user_ts"
input = "events"
[stage.sort]
by = [{ column = "user_id" }, { column = "ts", descending = true }]
[[stage]]
name = "per_user"
input = "by_user_ts"
[stage.group]
by = ["user_id"]
aggregates = [
  { name = "n", op = "count" },
  { name = "items", op = "count_distinct", column = "item_id" },
  { name = "spend", op = "sum", column = "price" },
]
[[sink]]
name = "users"
input = "per_user"
[sink.jsonl]
path = "users-after-sort.jsonl"
TOML
} > out/spill-sort-group.toml
measure weir-sort-16MiB "$target/release/weir" run out/spill-sort.toml
measure weir-group-16MiB "$target/release/weir" run out/spill-group.toml
measure weir-sort-group-16MiB "$target/release/weir" run out/spill-sort-group.toml
python3 - <<'PY'
import json, math
def groups(path):
    return {r["user_id"]: r for r in map(json.loads, open(path))}
a, b = groups("out/users.jsonl"), groups("out/users-after-sort.jsonl")
same = a.keys() == b.keys() and all(
    a[u]["n"] == b[u]["n"] and a[u]["items"] == b[u]["items"]
    and math.isclose(a[u]["spend"] or 0, b[u]["spend"] or 0, rel_tol=1e-9, abs_tol=1e-9)
    for u in a)
print(f"sort -> group: {len(b)} groups, {'the same as' if same else 'DIFFERENT from'} the group alone")
PY
echo "spill files left: $(find "${WEIR_DATA_DIR:-.weir}/spill" -type f 2>/dev/null | wc -l)"
