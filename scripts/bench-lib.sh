# Sourced by the benchmark scripts: how a run is timed and how rounds add up.
#
# The machine these run on is shared and noisy, so every script alternates its
# contenders round after round and reports, per pair, the median of the ratios
# taken within each round and their range: never the best round.

# bench_time WALLS CMD...: runs CMD, appends its wall time in seconds to the
# file WALLS, and leaves it in $wall. A failing CMD fails the script.
bench_time() {
  local walls=$1 start end
  shift
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc -l)
  echo "$wall" >> "$walls"
}

# bench_ratios PATTERN A/B...: for each pair, the median and range over the
# rounds of A's wall time divided by B's, reading the walls of job J from
# PATTERN with `{}` replaced by J (one line per round). With A a peer and B
# weir, that is weir's throughput over the peer's.
bench_ratios() {
  local pattern=$1
  shift
  python3 - "$pattern" "$@" <<'PY'
import statistics, sys
pattern, pairs = sys.argv[1], sys.argv[2:]
def walls(job):
    with open(pattern.replace("{}", job)) as f:
        return [float(x) for x in f if x.strip()]
for pair in pairs:
    a, b = pair.split("/")
    r = [x / y for x, y in zip(walls(a), walls(b))]
    print(f"{a} / {b} wall time: median {statistics.median(r):.3f}x "
          f"(range {min(r):.3f}-{max(r):.3f} over {len(r)} rounds)")
PY
}
