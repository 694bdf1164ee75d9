#!/usr/bin/env bash
# What a lookup costs: the clickstream events of the large set (2,000,000, from
# examples/clickstream) enriched with segments, against the same pipeline
# without the lookup, alternating round after round (ROUNDS, default 5):
#   plain      events → sink
#   csv        events → lookup (segments.csv, full cache) → sink
#   postgres   events → lookup (PostgreSQL, full cache) → sink
# Each lookup variant runs once first, so the measured runs start warm (the
# table kept in the store), as a restarted pipeline would. Prints the median
# ratio of each lookup variant's wall time to `plain`, with its range.
# Needs a release build (done here), python3, and for `postgres` the local
# server (setup-postgres.sh fills the table).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
weir="$target/release/weir"
cd "$here"
. "$root/scripts/bench-lib.sh"
mkdir -p out
cargo build --release -q -p weir-host --bin weir -p weir-e2e --bin weir-gen-clicks
data=../clickstream/data/large.jsonl
[ -f "$data" ] || { mkdir -p ../clickstream/data; "$target/release/weir-gen-clicks" large > "$data"; }
[ -f segments.csv ] || python3 make_segments.py segments.csv
./setup-postgres.sh
lines=$(wc -l < "$data")

variant() { # name, pipeline file
  sed -e "s#../quickstart/events.jsonl#$data#" -e "s#out/enriched[a-z-]*.jsonl#out/bench-$1.jsonl#" \
    -e "0,/^name = \".*\"/s//name = \"enrich-bench-$1\"/" "$2"
}
variant csv pipeline.toml > out/bench-csv.toml
variant postgres pipeline-postgres.toml > out/bench-postgres.toml
# The plain variant: the same source and sink, no lookup stage.
variant plain pipeline.toml | python3 -c '
import sys
s = sys.stdin.read()
a = s.index("[[stage]]")
b = s.index("[[sink]]")
print((s[:a] + s[b:]).replace("input = \"segments\"", "input = \"events\""), end="")' > out/bench-plain.toml
for v in plain csv postgres; do sed -i "s#\"$data\"#\"../$data\"#; s#\"segments.csv\"#\"../segments.csv\"#; s#\"out/#\"#" "out/bench-$v.toml"; done

measure() { # name
  (cd out && WEIR_DATA_DIR=bench-data "$weir" dlq purge --all > /dev/null)
  bench_time "out/bench-walls-$1.txt" run_variant "$1"
  printf '%-9s %7.2f s %10.0f events/s\n' "$1" "$wall" "$(echo "$lines / $wall" | bc -l)"
}
run_variant() { # name
  (cd out && WEIR_DATA_DIR=bench-data "$weir" run "bench-$1.toml" > "bench-$1.stdout" 2>&1) \
    || { cat "out/bench-$1.stdout"; exit 1; }
}

rm -rf out/bench-data out/bench-walls-*.txt
for v in csv postgres; do (cd out && WEIR_DATA_DIR=bench-data "$weir" run "bench-$v.toml" > /dev/null 2>&1); done
for round in $(seq 1 "${ROUNDS:-5}"); do
  echo "round $round"
  for v in plain csv postgres; do measure "$v"; done
done
bench_ratios "out/bench-walls-{}.txt" csv/plain postgres/plain
grep -E "warm_starts|lookup_hits|lookup_misses" out/bench-postgres.stdout || true
