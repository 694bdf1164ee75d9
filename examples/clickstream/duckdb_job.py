"""The clickstream job (WORKLOAD.md) as one DuckDB SQL script, for bench.sh."""
import sys, time
import duckdb

src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"""
COPY (
WITH raw AS (
  SELECT * FROM read_json('{src}', format='newline_delimited', ignore_errors=true,
    columns={{user_id:'JSON', ts:'JSON', event:'VARCHAR', item_id:'VARCHAR', price:'JSON', dwell_ms:'BIGINT'}})
), ok AS (
  SELECT user_id->>'$' AS user_id, CAST(ts AS BIGINT) AS ts, event, item_id,
         CAST(price AS DOUBLE) AS price, dwell_ms
  FROM raw
  WHERE json_type(user_id) = 'VARCHAR' AND json_type(ts) IN ('BIGINT', 'UBIGINT')
    AND (price IS NULL OR json_type(price) = 'NULL' OR CAST(price AS DOUBLE) >= 0)
), feat AS (
  SELECT *, CASE WHEN price IS NULL THEN -1 WHEN price >= 500 THEN 4 WHEN price >= 100 THEN 3
              WHEN price >= 50 THEN 2 WHEN price >= 10 THEN 1 ELSE 0 END AS price_bucket,
         ln(1 + dwell_ms) AS dwell_log
  FROM ok
), marked AS (
  SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY user_id ORDER BY ts) > 1800000 THEN 1 ELSE 0 END AS new_s
  FROM feat
), sess AS (
  SELECT *, sum(new_s) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS sid FROM marked
)
SELECT user_id, min(ts) AS session_start, max(ts) AS session_end, count(*) AS n_events,
       count(*) FILTER (WHERE event = 'click') AS n_clicks,
       count(*) FILTER (WHERE event = 'purchase') AS n_purchases,
       round(coalesce(sum(price) FILTER (WHERE event = 'purchase'), 0), 6) AS total_spend,
       round(avg(dwell_log), 6) AS mean_dwell_log, max(price_bucket) AS max_price_bucket,
       count(DISTINCT item_id) AS n_distinct_items
FROM sess GROUP BY user_id, sid ORDER BY user_id, session_start
) TO '{dst}' (FORMAT json)
""")
