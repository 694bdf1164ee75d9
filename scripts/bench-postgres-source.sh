#!/usr/bin/env bash
# The PostgreSQL source against the practical ceiling, `psql \copy (query) to
# file`, on the same table of ROWS rows (default 5,000,000): id, user, amount,
# time. Both read the same query and write text files of the rows (weir as JSON
# lines, psql as tab-separated text) to the same directory; they alternate
# round after round (ROUNDS, default 5) and the median ratio of their rates is
# reported with its range. Needs a release build (done here) and the local
# PostgreSQL (PG* variables pick another).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
weir="$target/release/weir"
rows="${ROWS:-5000000}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/weir-bench-postgres}"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGDATABASE="${PGDATABASE:-test}"
mkdir -p "$work"
cd "$root"
cargo build --release -q -p weir-host --bin weir
cd "$work"

table=weir_bench_source
if [ "$(psql -tAc "SELECT count(*) FROM pg_class WHERE relname = '$table'")" = 1 ] \
  && [ "$(psql -tAc "SELECT count(*) FROM $table")" = "$rows" ]; then
  echo "$table: $rows rows (kept from an earlier run)"
else
  PGOPTIONS="-c client_min_messages=warning" psql -q -v ON_ERROR_STOP=1 <<SQL
DROP TABLE IF EXISTS $table;
CREATE TABLE $table AS
  SELECT g::int8 AS id, 'u' || (g % 50000) AS user_id, (g % 1000) / 7.0::float8 AS amount,
         TIMESTAMPTZ '2024-01-01' + g * INTERVAL '1 second' AS at
    FROM generate_series(1, $rows) g;
ANALYZE $table;
SQL
  echo "$table: $rows rows"
fi
query="SELECT id, user_id, amount, at FROM $table"
cat > pipeline.toml <<TOML
name = "postgres-bench"
[settings]
batch_rows = 8192
[[source]]
name = "rows"
[source.postgres]
url = "postgres://$PGUSER@$PGHOST:${PGPORT:-5432}/$PGDATABASE"
query = "$query"
[[sink]]
name = "out"
input = "rows"
[sink.jsonl]
path = "weir-out.jsonl"
TOML

rm -f rates-*.txt
for round in $(seq 1 "${ROUNDS:-5}"); do
  start=$(date +%s.%N)
  WEIR_DATA_DIR=data "$weir" run --quiet pipeline.toml > /dev/null
  end=$(date +%s.%N)
  weir_rate=$(echo "$rows / ($end - $start)" | bc -l)
  start=$(date +%s.%N)
  psql -q -c "\\copy ($query) to 'psql-out.tsv'"
  end=$(date +%s.%N)
  psql_rate=$(echo "$rows / ($end - $start)" | bc -l)
  printf 'round %s: weir %9.0f rows/s (%s lines)   psql \\copy %9.0f rows/s\n' "$round" "$weir_rate" \
    "$(wc -l < weir-out.jsonl)" "$psql_rate"
  echo "$weir_rate" >> rates-weir.txt
  echo "$psql_rate" >> rates-psql.txt
done
python3 - <<'PY'
import statistics
w = [float(x) for x in open("rates-weir.txt")]
p = [float(x) for x in open("rates-psql.txt")]
r = [b / a for a, b in zip(w, p)]
print(f"weir: median {statistics.median(w):.0f} rows/s ({min(w):.0f}-{max(w):.0f})")
print(f"psql \\copy: median {statistics.median(p):.0f} rows/s ({min(p):.0f}-{max(p):.0f})")
print(f"psql / weir: median {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f} over {len(r)} rounds)")
PY
