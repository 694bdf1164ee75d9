#!/usr/bin/env python3
"""The clickstream job (WORKLOAD.md), written independently of weir with only the
standard library, to compute the expected output the tests compare weir against.

    python3 expected.py events.jsonl > expected-small.jsonl

Prints one JSON object per session, sorted by (user_id, session_start), floats
rounded to 6 decimal places the way weir's JSON sink rounds them (half away from
zero on value * 1e6); corrupt-line counts by reason go to stderr.
"""

import json
import math
import sys
from collections import Counter, defaultdict

BOUNDARIES = [0, 10, 50, 100, 500]
GAP_MS = 1_800_000


def reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def round6(v):
    x = v * 1e6
    a = abs(x)
    f = math.floor(a)
    r = f + (1.0 if a - f >= 0.5 else 0.0)
    return math.copysign(r, x) / 1e6


def bucket(price):
    if price is None:
        return -1
    b = -1
    for i, lo in enumerate(BOUNDARIES):
        if price >= lo:
            b = i
    return b


def main(path):
    corrupt = Counter()
    by_user = defaultdict(list)
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            line = raw.strip()
            if not line:
                continue
            try:
                rec = json.loads(line, parse_constant=reject_constant)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                corrupt["invalid_json"] += 1
                continue
            user = rec.get("user_id")
            if not isinstance(user, str):
                corrupt["user_id"] += 1
                continue
            ts = rec.get("ts")
            if type(ts) is not int:
                corrupt["ts"] += 1
                continue
            price = rec.get("price")
            if price is not None and price < 0:
                corrupt["price"] += 1
                continue
            dwell = rec["dwell_ms"]
            by_user[user].append((ts, n, rec["event"], rec["item_id"], price, bucket(price), math.log1p(dwell)))

    out = []
    for user, events in by_user.items():
        events.sort(key=lambda e: (e[0], e[1]))
        session = []
        for e in events:
            if session and e[0] - session[-1][0] > GAP_MS:
                out.append(features(user, session))
                session = []
            session.append(e)
        out.append(features(user, session))
    out.sort(key=lambda r: (r["user_id"], r["session_start"]))
    for r in out:
        sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
    print(dict(sorted(corrupt.items())), file=sys.stderr)


def features(user, session):
    spend = 0.0
    dwell_sum = 0.0
    for e in session:
        if e[2] == "purchase" and e[4] is not None:
            spend += e[4]
        dwell_sum += e[6]
    return {
        "user_id": user,
        "session_start": session[0][0],
        "session_end": session[-1][0],
        "n_events": len(session),
        "n_clicks": sum(1 for e in session if e[2] == "click"),
        "n_purchases": sum(1 for e in session if e[2] == "purchase"),
        "total_spend": round6(spend),
        "mean_dwell_log": round6(dwell_sum / len(session)),
        "max_price_bucket": max(e[5] for e in session),
        "n_distinct_items": len({e[3] for e in session}),
    }


if __name__ == "__main__":
    main(sys.argv[1])
