"""Median and spread of scripts/bench/run.sh results: writes JSON, prints a markdown table."""
import collections, json, statistics, sys

raw, versions, out_json = sys.argv[1:4]
rows = [json.loads(l) for l in open(raw) if l.strip()]
by = collections.defaultdict(list)
for r in rows:
    if r["result"]:
        by[(r["size"], r["server"])].append(r["result"])

METRICS = [
    ("connections", "connections held", lambda v: v),
    ("rss_per_idle_connection_bytes", "RSS/idle conn (KB)", lambda v: v / 1000),
    ("fanout_ms_median", "fan-out to all (ms)", lambda v: v),
    ("sustained_deliveries_per_second", "sustained deliveries/s", lambda v: v),
    ("setup_per_second", "connects/s", lambda v: v),
    ("setup_server_cpu_us_per_connection", "server CPU µs/connect", lambda v: v),
]
summary = {}
for (size, server), results in sorted(by.items()):
    entry = {"runs": len(results)}
    for key, _, scale in METRICS:
        values = [scale(r[key]) for r in results if r.get(key) is not None]
        if values:
            entry[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    summary[f"{server}@{size}"] = entry
json.dump({"versions": open(versions).read().splitlines(), "results": summary}, open(out_json, "w"), indent=2)

def cell(entry, key, fmt):
    m = entry.get(key)
    return "—" if m is None else f"{fmt(m['median'])} ({fmt(m['min'])}–{fmt(m['max'])})"

print("| target | server | " + " | ".join(h for _, h, _ in METRICS) + " |")
print("|---|---|" + "---|" * len(METRICS))
for name, entry in summary.items():
    server, size = name.split("@")
    fmts = [lambda v: f"{v:.0f}", lambda v: f"{v:.1f}", lambda v: f"{v:.0f}", lambda v: f"{v/1000:.1f}k", lambda v: f"{v/1000:.1f}k", lambda v: f"{v:.0f}"]
    cells = [cell(entry, key, f) for (key, _, _), f in zip(METRICS, fmts)]
    print(f"| {size} | {server} | " + " | ".join(cells) + " |")
print()
print("Median (min–max) over", max((e["runs"] for e in summary.values()), default=0), "runs. Versions:")
for line in open(versions).read().splitlines():
    print(f"- {line}")
