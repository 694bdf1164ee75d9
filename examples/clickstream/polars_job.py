"""The clickstream job (WORKLOAD.md) in Polars, for bench.sh."""
import json, sys
import polars as pl

src, dst = sys.argv[1], sys.argv[2]
# Polars' NDJSON reader stops at the first invalid line (even with
# `ignore_errors`), and `str.json_decode` cannot tell `"ts":"123"` or `"ts":123.0`
# from `"ts":123` (it decodes all three), so lines are read as text, truncated ones
# (not ending in `}`) screened out, the rest decoded as JSON, and the two rules
# JSON decoding loses are checked on the line's text, in Polars' own string
# kernels: `user_id` is a JSON string, `ts` a JSON integer (read from the text).
schema = pl.Struct({"user_id": pl.Utf8, "event": pl.Utf8, "item_id": pl.Utf8,
                    "price": pl.Float64, "dwell_ms": pl.Int64})
lf = (pl.scan_csv(src, has_header=False, separator="\x01", quote_char=None, new_columns=["line"])
      .filter(pl.col("line").str.ends_with("}"))
      .with_columns(ts=pl.col("line").str.extract(r'"ts":(-?[0-9]+)[,}]', 1).cast(pl.Int64),
                    user_ok=pl.col("line").str.contains('"user_id":"', literal=True))
      .with_columns(r=pl.col("line").str.json_decode(schema)).unnest("r"))
df = (
    lf.filter(pl.col("user_ok") & pl.col("user_id").is_not_null() & pl.col("ts").is_not_null()
              & (pl.col("price").is_null() | (pl.col("price") >= 0)))
    .with_columns(
        price_bucket=pl.when(pl.col("price").is_null()).then(-1)
            .when(pl.col("price") >= 500).then(4).when(pl.col("price") >= 100).then(3)
            .when(pl.col("price") >= 50).then(2).when(pl.col("price") >= 10).then(1).otherwise(0),
        dwell_log=pl.col("dwell_ms").log1p())
    .sort(["user_id", "ts"])
    .with_columns(sid=((pl.col("ts").diff().over("user_id").fill_null(0)) > 1_800_000).cum_sum().over("user_id"))
    .group_by(["user_id", "sid"])
    .agg(session_start=pl.col("ts").min(), session_end=pl.col("ts").max(), n_events=pl.len(),
         n_clicks=(pl.col("event") == "click").sum(), n_purchases=(pl.col("event") == "purchase").sum(),
         total_spend=pl.col("price").filter(pl.col("event") == "purchase").sum().round(6),
         mean_dwell_log=pl.col("dwell_log").mean().round(6), max_price_bucket=pl.col("price_bucket").max(),
         n_distinct_items=pl.col("item_id").n_unique())
    .sort(["user_id", "session_start"]).drop("sid")
    .collect()
)
df.write_ndjson(dst)
