#!/usr/bin/env python3
"""Summarises a soak run's samples (scripts/chaos.sh --soak): per node and metric the first and
last value after warm-up, the range, and the least-squares slope per hour (flat is the goal).

    python3 scripts/chaos/soak.py target/chaos/soak.csv [warm-up seconds, default 180]
"""
import csv
import sys
from collections import defaultdict


def slope(points):
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in points) / var


def main():
    path = sys.argv[1]
    warm = int(sys.argv[2]) if len(sys.argv) > 2 else 180
    series = defaultdict(list)
    for row in csv.DictReader(open(path)):
        t = int(row["secs"])
        if t < warm:
            continue
        for metric in ("rss_kb", "fds", "tasks", "errors", "conns"):
            if metric in row:
                series[(metric, row["node"])].append((t, float(row[metric])))
        if "conns" in row:
            # What is not explained by the connections held at that moment (one task and one
            # descriptor each): a leak shows here even while users move between nodes.
            conns = float(row["conns"])
            series[("tasks - conns", row["node"])].append((t, float(row["tasks"]) - conns))
            series[("fds - conns", row["node"])].append((t, float(row["fds"]) - conns))
        if row["node"] == "n1":
            series[("redis_keys", "redis")].append((t, float(row["redis_keys"])))
    if not series:
        sys.exit("no samples after the warm-up")
    span = max(t for pts in series.values() for t, _ in pts) - warm
    print(f"Samples from {warm} s to {warm + span} s ({span / 60:.0f} min after warm-up).\n")
    print("| metric | where | first | last | min | max | slope per hour | per hour, % of mean |")
    print("|---|---|---|---|---|---|---|---|")
    for (metric, where), pts in sorted(series.items()):
        ys = [y for _, y in pts]
        mean = sum(ys) / len(ys)
        per_hour = slope(pts) * 3600
        pct = 100 * per_hour / mean if mean else 0.0
        print(f"| {metric} | {where} | {ys[0]:.0f} | {ys[-1]:.0f} | {min(ys):.0f} | {max(ys):.0f} "
              f"| {per_hour:+.1f} | {pct:+.2f} % |")


if __name__ == "__main__":
    main()
