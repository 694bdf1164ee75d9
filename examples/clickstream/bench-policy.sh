#!/usr/bin/env bash
# What failure policies cost: the clickstream job on the large data set run three
# ways, alternating round after round (ROUNDS, default 5):
#   defaults    the pipeline as shipped (no `on_error` anywhere)
#   skip        `on_error = "skip"` on every node that takes it (the featurizer and
#               the sink; sort and session keep rows across batches and refuse it)
#   skip-1pct   as `skip`, with the featurizer refusing events whose dwell time is
#               above the 99th percentile (`max_dwell_ms`): 1 % of the rows fail,
#               each isolated by the guard and written to the dead-letter store
# Prints each run's wall time, the median ratio against `defaults` with its range
# over the rounds, checks that `skip` wrote the same file as `defaults`, and counts
# the dead letters of a `skip-1pct` run. Needs a release build (done here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
weir="$target/release/weir"
cd "$here"
. "$root/scripts/bench-lib.sh"
mkdir -p data out
cargo build --release -q -p weir-host --bin weir -p weir-e2e --bin weir-gen-clicks
[ -f data/large.jsonl ] || "$target/release/weir-gen-clicks" large > data/large.jsonl
lines=$(wc -l < data/large.jsonl)
echo "data/large.jsonl: $lines events"

# The dwell time above which 1 % of the events lie (of those with a valid
# one: the file also holds corrupt records, which the source refuses).
read -r p99 above <<<"$(python3 - <<'PY'
import json
def dwell(line):
    try:
        v = json.loads(line).get("dwell_ms")
    except Exception:
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None
d = sorted(v for v in map(dwell, open("data/large.jsonl")) if v is not None)
p99 = d[int(len(d) * 0.99)]
print(p99, sum(1 for v in d if v > p99))
PY
)"
echo "max_dwell_ms = $p99: $above events above it ($(echo "scale=2; 100 * $above / $lines" | bc) %)"

wasm=$("$weir" stage build ../../stages/clickstream-features | sed -n 's/^built //p')
make_toml() { # name, sed script for the nodes
  sed -e 's#data/small.jsonl#../data/large.jsonl#' -e "s#\"out/#\"#g" \
    -e "s#^crate = .*#component = \"$wasm\"#" -e "s#^name = \"clickstream\"#name = \"clickstream-$1\"#" \
    -e "s#sessions.jsonl#sessions-$1.jsonl#" -e "$2" pipeline.toml > "out/policy-$1.toml"
}
make_toml defaults ''
make_toml skip 's#^name = "\(features\|features_out\)"#&\non_error = "skip"#'
make_toml skip-1pct "s#^name = \"\(features\|features_out\)\"#&\non_error = \"skip\"#; s#fallback_bucket = -1 }#fallback_bucket = -1, max_dwell_ms = $p99 }#"

# Each variant keeps its data directory (the compiled component stays in its
# artifacts); its dead letters are purged between runs, outside the timing, so
# every run starts from the same store.
measure() { # name
  (cd out && WEIR_DATA_DIR="policy-data-$1" "$weir" dlq purge --all > /dev/null)
  bench_time "out/policy-walls-$1.txt" run_variant "$1"
  printf '%-10s %7.2f s %10.0f events/s\n' "$1" "$wall" "$(echo "$lines / $wall" | bc -l)"
}
run_variant() { # name
  (cd out && WEIR_DATA_DIR="policy-data-$1" "$weir" run "policy-$1.toml" > "policy-$1.stdout" 2>&1) \
    || { cat "out/policy-$1.stdout"; exit 1; }
}

rm -rf out/policy-data-*
for v in defaults skip skip-1pct; do # warm up: compile the component into each store
  (cd out && WEIR_DATA_DIR="policy-data-$v" "$weir" run "policy-$v.toml" > /dev/null 2>&1) || true
done
rm -f out/policy-walls-*.txt
for round in $(seq 1 "${ROUNDS:-5}"); do
  echo "round $round"
  for v in defaults skip skip-1pct; do measure "$v"; done
done
bench_ratios "out/policy-walls-{}.txt" skip/defaults skip-1pct/defaults
if cmp -s out/sessions-defaults.jsonl out/sessions-skip.jsonl; then
  echo "skip wrote the same sessions as defaults"
else
  echo "skip's sessions DIFFER from defaults'"; exit 1
fi
echo "skip-1pct, its last run: $(cd out && WEIR_DATA_DIR=policy-data-skip-1pct "$weir" dlq list --limit 0 | tail -1)"
echo "  of which the featurizer refused (its summary):"
grep -E 'rows_skipped|wasm:calls|records in,' out/policy-skip-1pct.stdout || true
