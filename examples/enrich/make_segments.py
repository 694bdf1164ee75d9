"""Writes segments.csv: one row per user u0 … u49999 (the users of the
clickstream data sets), with a segment and a lifetime value derived from the
user's number, so every run of the example makes the same file."""
import csv
import sys

SEGMENTS = ["new", "casual", "regular", "loyal", "vip"]
out = sys.argv[1] if len(sys.argv) > 1 else "segments.csv"
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user_id", "segment", "ltv"])
    for n in range(50_000):
        # Every seventh user has no row: those events get the defaults.
        if n % 7 == 3:
            continue
        w.writerow([f"u{n}", SEGMENTS[(n * 2654435761) % 5], round((n % 997) * 1.25, 2)])
