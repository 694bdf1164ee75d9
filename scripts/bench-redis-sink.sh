#!/usr/bin/env bash
# The Redis feature-store sink against `redis-benchmark -P 64` HSET of the same
# vectors, as a new user would try it: 500,000 entities (ENTITIES) of 8 float
# features in a JSON-lines file, written by `weir run` (source, sink, retries,
# dead letters and the newer-wins script all on), and by redis-benchmark with the
# same fields, `_event_time_ms` and the `_lineage` text the sink stored. The two
# alternate round after round (ROUNDS, default 5) on database 9 (REDIS_DB),
# flushed before each; the figures are vectors written per second, with the
# median ratio and its range over the rounds. Needs a release build (done here),
# redis-server and redis-benchmark (Debian's `redis-server` and `redis-tools`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
weir="$target/release/weir"
entities="${ENTITIES:-500000}"
db="${REDIS_DB:-9}"
url="redis://127.0.0.1:6379/$db"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/weir-bench-redis}"
mkdir -p "$work"
cd "$root"
cargo build --release -q -p weir-host --bin weir
cd "$work"

python3 - "$entities" > vectors.jsonl <<'PY'
import json, random, sys
rng = random.Random(7)
for i in range(int(sys.argv[1])):
    row = {"entity": f"e{i:07d}", "ts": 1_704_067_200_000 + i}
    row.update({f"f{k}": round(rng.uniform(-10, 10), 6) for k in range(8)})
    print(json.dumps(row))
PY
cat > pipeline.toml <<TOML
name = "redis-bench"
[settings]
batch_rows = 8192
[[source]]
name = "vectors"
[source.jsonl]
path = "vectors.jsonl"
schema = [
  { name = "entity", type = "utf8", required = true },
  { name = "ts", type = "int64", required = true },
$(for k in 0 1 2 3 4 5 6 7; do echo "  { name = \"f$k\", type = \"float64\" },"; done)
]
[[sink]]
name = "online"
input = "vectors"
[sink.redis]
url = "$url"
prefix = "bench:weir"
entity = "entity"
event_time = "ts"
TOML

flush() { redis-cli -n "$db" FLUSHDB > /dev/null; }
# One run first, to read back the lineage text the sink keeps beside a vector.
flush
WEIR_DATA_DIR=data "$weir" run --quiet pipeline.toml > /dev/null
lineage=$(redis-cli -n "$db" HGET bench:weir:e0000000 _lineage)
stored=$(redis-cli -n "$db" DBSIZE)
[ "$stored" -ge "$entities" ] || { echo "the sink stored $stored keys, not $entities"; exit 1; }

fields=(_event_time_ms 1704067200000 _lineage "$lineage")
for k in 0 1 2 3 4 5 6 7; do fields+=("f$k" "-3.141593"); done

rm -f walls-*.txt
for round in $(seq 1 "${ROUNDS:-5}"); do
  flush
  rm -rf data
  start=$(date +%s.%N)
  WEIR_DATA_DIR=data "$weir" run --quiet pipeline.toml > weir.out
  end=$(date +%s.%N)
  weir_rate=$(echo "$entities / ($end - $start)" | bc -l)
  got=$(redis-cli -n "$db" DBSIZE)
  flush
  bench_rate=$(redis-benchmark -u "$url" -P 64 -q -n "$entities" -r "$entities" \
    HSET "bench:rb:__rand_int__" "${fields[@]}" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
  printf 'round %s: weir run %8.0f vectors/s (%s keys)   redis-benchmark HSET %8.0f/s\n' \
    "$round" "$weir_rate" "$got" "$bench_rate"
  echo "$weir_rate" >> walls-weir.txt
  echo "$bench_rate" >> walls-bench.txt
done
flush
python3 - <<'PY'
import statistics
w = [float(x) for x in open("walls-weir.txt")]
b = [float(x) for x in open("walls-bench.txt")]
r = [q / p for p, q in zip(w, b)]
print(f"weir run: median {statistics.median(w):.0f} vectors/s (range {min(w):.0f}-{max(w):.0f})")
print(f"redis-benchmark -P 64 HSET: median {statistics.median(b):.0f}/s (range {min(b):.0f}-{max(b):.0f})")
print(f"redis-benchmark / weir: median {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f} over {len(r)} rounds)")
PY
