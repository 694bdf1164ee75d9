#!/usr/bin/env bash
# Creates and fills the example's table, weir_enrich_segments, in PostgreSQL
# from segments.csv (made first if missing). PG* variables pick the server;
# the default is the local one the tests use.
set -euo pipefail
cd "$(dirname "$0")"
[ -f segments.csv ] || python3 make_segments.py segments.csv
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGDATABASE="${PGDATABASE:-test}"
PGOPTIONS="-c client_min_messages=warning" psql -q -v ON_ERROR_STOP=1 <<'SQL'
DROP TABLE IF EXISTS weir_enrich_segments;
CREATE TABLE weir_enrich_segments (user_id text PRIMARY KEY, segment text NOT NULL, ltv numeric(10, 2));
\copy weir_enrich_segments FROM 'segments.csv' WITH (FORMAT csv, HEADER true)
ANALYZE weir_enrich_segments;
SQL
echo "weir_enrich_segments: $(psql -tAc 'SELECT count(*) FROM weir_enrich_segments') rows"
