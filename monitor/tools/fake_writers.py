# Keeps 100 WAL directories "running": rewrites each stats.json every 250 ms (fresh
# time, this pid, counters going up,
# appending 48 records/s and consumers committing 30-50 records behind, as live
# writers do).
import json, os, sys, time, glob
root = sys.argv[1]
dirs = sorted(os.path.dirname(p) for p in glob.glob(root + "/**/stats.json", recursive=True))
docs = {d: json.load(open(d + "/stats.json")) for d in dirs}
tick = 0
while True:
    tick += 1
    now = int(time.time() * 1000)
    for d, doc in docs.items():
        m = doc["metrics"]
        doc["pid"] = os.getpid(); doc["closed"] = False; doc["written_at_ms"] = now
        doc["interval_ms"] = 250
        m["appended_records_total"] += 12
        m["last_seq"] += 12
        last = m["last_seq"]
        for i, c in enumerate(m["consumers"]):
            c["committed_seq"] = last - 30 - (tick + i * 7) % 20
            c["backlog_records"] = last - c["committed_seq"]
        m["backlog_records"] = max((c["backlog_records"] for c in m["consumers"]), default=0)
        tmp = d + "/stats.json.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, d + "/stats.json")
    time.sleep(max(0, 0.25 - (time.time() * 1000 - now) / 1000))
