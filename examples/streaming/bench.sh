#!/usr/bin/env bash
# JetStream → sessions → Redis against the file variant (JSON lines → Parquet)
# on the clickstream large set (2,000,000 events): the top-level README's
# "Streams and stores" figure. Each round runs, in turn, the file variant
# (`pipeline-file.toml`), the stream variant with one event per message and
# with eight per message (`pipeline.toml`, `payload = "lines"`), each stream
# run stored and run by name as the README shows, under a new pipeline name
# (so a fresh durable consumer) and a new Redis prefix. Prints wall time,
# events/s and peak RSS per run (`/usr/bin/time -v`), the median and spread of
# each stream variant's rate against the file's (ratios taken within a round),
# and checks that the two stream variants left the same Redis vectors, field by
# field (`_lineage` aside: it names each variant's own positions).
#
# Needs: NATS with JetStream at NATS_URL (default nats://127.0.0.1:4222), Redis
# at REDIS_URL (default redis://127.0.0.1:6379), redis-cli, python3, a release
# build (done here; WEIR_BIN=path/to/weir uses that binary instead).
# ROUNDS (default 5); SET=small runs the 20,000-event set (a quick check).
# The two streams it publishes are left on the server (BENCH_*_<stamp>; remove
# them with `nats stream rm`); the Redis keys it wrote are deleted at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
nats="${NATS_URL:-nats://127.0.0.1:4222}"
redis="${REDIS_URL:-redis://127.0.0.1:6379}"
set_name="${SET:-large}"
cd "$here"
mkdir -p data out
if [ -n "${WEIR_BIN:-}" ]; then
  weir="$WEIR_BIN"
  gen="$(dirname "$WEIR_BIN")/weir-gen-clicks"
else
  cargo build --release -q -p weir-host --bin weir -p weir-e2e --bin weir-gen-clicks
  weir="$target/release/weir"
  gen="$target/release/weir-gen-clicks"
fi
data="data/$set_name.jsonl"
[ -f "$data" ] || "$gen" "$set_name" > "$data"
lines=$(wc -l < "$data")
echo "$data: $lines lines, $(du -h "$data" | cut -f1)"

stamp="$(date +%s)"
one="BENCH_ONE_$stamp"
eight="BENCH_EIGHT_$stamp"
"$weir" nats publish --url "$nats" --subject "bench.$stamp.one" --create-stream "$one" \
  --msg-id-prefix one "$data"
"$weir" nats publish --url "$nats" --subject "bench.$stamp.eight" --create-stream "$eight" \
  --msg-id-prefix eight --lines-per-message 8 "$data"
cleanup() {
  redis-cli -u "$redis" --scan --pattern "bench:$stamp:*" | xargs -r -n 1000 redis-cli -u "$redis" del > /dev/null
}
trap cleanup EXIT

# The file variant, reading $data from out/.
sed -e "s#\"data/events.jsonl\"#\"../$data\"#" -e 's#"out/#"#g' -e 's#"features.toml"#"../features.toml"#' \
  pipeline-file.toml > out/bench-file.toml
# A stream variant: stream, subject, payload, pipeline name and Redis prefix.
stream_toml() { # name, stream, subject, payload, prefix
  sed -e "s#^name = \"clickstream-stream\"#name = \"$1\"#" \
      -e "s#^url = \"nats://127.0.0.1:4222\"#url = \"$nats\"#" \
      -e "s#^stream = \"CLICKS\"#stream = \"$2\"#" \
      -e "s#^subject = \"clicks.events\"#subject = \"$3\"\npayload = \"$4\"#" \
      -e "s#^url = \"redis://127.0.0.1:6379\"#url = \"$redis\"#" \
      -e "s#^prefix = \"clickstream:user\"#prefix = \"$5\"#" \
      -e 's#"out/#"#g' -e 's#"features.toml"#"../features.toml"#' \
      pipeline.toml > "out/$1.toml"
  "$weir" --data-dir out/data pipeline apply "out/$1.toml" > /dev/null
}

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" > "out/$name.stdout" 2> "out/$name.time" || { cat "out/$name.time"; exit 1; }
  local rss
  wall=$(grep 'Elapsed (wall clock)' "out/$name.time" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep 'Maximum resident set size' "out/$name.time" | awk '{print $NF}')
  printf '%-18s %8.2f s %12.0f events/s %8.0f MiB peak RSS\n' "$name" "$wall" "$(echo "$lines / $wall" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  echo "$wall" >> "out/walls-$name.txt"
}

rm -f out/walls-*.txt
for round in $(seq 1 "${ROUNDS:-5}"); do
  echo "round $round"
  stream_toml "bench-one-$stamp-$round" "$one" "bench.$stamp.one" object "bench:$stamp:one:$round"
  stream_toml "bench-eight-$stamp-$round" "$eight" "bench.$stamp.eight" lines "bench:$stamp:eight:$round"
  measure file "$weir" run --quiet out/bench-file.toml
  measure stream-1 "$weir" --data-dir out/data run --quiet "bench-one-$stamp-$round"
  measure stream-8 "$weir" --data-dir out/data run --quiet "bench-eight-$stamp-$round"
done
LINES="$lines" python3 - <<'PY'
import os, statistics
lines = int(os.environ["LINES"])
w = {j: [float(x) for x in open(f"out/walls-{j}.txt")] for j in ("file", "stream-1", "stream-8")}
for j in ("file", "stream-1", "stream-8"):
    print(f"{j}: median {statistics.median(w[j]):.2f} s (range {min(w[j]):.2f}-{max(w[j]):.2f}), "
          f"{lines / statistics.median(w[j]):,.0f} events/s")
for j in ("stream-1", "stream-8"):
    r = [f / s for f, s in zip(w["file"], w[j])]
    print(f"{j} vs file: median {statistics.median(r):.2f}x the file's rate (range {min(r):.2f}-{max(r):.2f} over {len(r)} rounds)")
PY

# The last round's vectors of both stream variants, each as one line per entity
# (its fields but `_lineage`, values in hex), compared.
dump() { # prefix
  local script="local h=redis.call('HGETALL',KEYS[1]) local o={} for i=1,#h,2 do if h[i]~='_lineage' then o[#o+1]=h[i]..'='..(h[i+1]:gsub('.',function(c) return string.format('%02x',c:byte()) end)) end end table.sort(o) return string.sub(KEYS[1],#ARGV[1]+2)..' '..table.concat(o,',')"
  redis-cli -u "$redis" --scan --pattern "$1:*" \
    | awk -v s="$script" -v p="$1" '{ printf "EVAL \"%s\" 1 \"%s\" \"%s\"\n", s, $0, p }' \
    | redis-cli -u "$redis" | sort
}
last="${ROUNDS:-5}"
dump "bench:$stamp:one:$last" > out/vectors-one.txt
dump "bench:$stamp:eight:$last" > out/vectors-eight.txt
if cmp -s out/vectors-one.txt out/vectors-eight.txt; then
  echo "Redis vectors: $(wc -l < out/vectors-one.txt) per stream variant, equal field by field"
else
  echo "Redis vectors DIFFER between the stream variants (out/vectors-one.txt, out/vectors-eight.txt)"
  exit 1
fi
