#!/usr/bin/env bash
# bench-merge.sh - df-merge throughput: 4 shards of 50k records (25% of each
# shard repeats the previous one's names: duplicates and text conflicts), by
# name; then --dedupe content and --out (hard links) over 2000 small files.
# Prints records/s; asserts nothing.
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
T=$(mktemp -d /tmp/df-bench-merge-XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T"
/usr/bin/python3 - <<'PYEOF'
import json, os
for s in range(4):
    with open(f"shard{s}.jsonl", "w") as f:
        for i in range(50000):
            k = s * 37500 + i              # overlaps the previous shard by 12500 names
            text = f"a face {k}" if i % 2 else f"a face {k} (shard {s})"
            f.write(json.dumps({"file_name": f"img/{k:07d}.jpg", "text": text, "source": f"s{s}"}) + "\n")
os.makedirs("files/img", exist_ok=True)
with open("files/metadata.jsonl", "w") as f:
    for i in range(2000):
        with open(f"files/img/{i:05d}.jpg", "wb") as g:
            g.write(os.urandom(20000) if i % 10 else b"same bytes" * 2000)
        f.write(json.dumps({"file_name": f"img/{i:05d}.jpg", "text": f"t{i}"}) + "\n")
PYEOF
run() {   # label, records, command...
    local label=$1 n=$2; shift 2
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>err || echo "  ($label exited $?)"
    t1=$(date +%s.%N)
    awk -v l="$label" -v n="$n" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%-40s %7d records %7.2f s %9.0f records/s\n", l, n, b - a, n / (b - a) }'
    tail -n 1 err | sed 's/^/    /'
}
run "by name, 4 shards" 200000 "$DF_BIN/df-merge" -q shard0.jsonl shard1.jsonl shard2.jsonl shard3.jsonl
run "by name, rename conflicts" 200000 "$DF_BIN/df-merge" -q -c rename shard0.jsonl shard1.jsonl shard2.jsonl shard3.jsonl
run "--dedupe content (20 KB files)" 2000 "$DF_BIN/df-merge" -q --dedupe content files/metadata.jsonl
run "--dedupe content --out (hard links)" 2000 "$DF_BIN/df-merge" -q --dedupe content --out ds files/metadata.jsonl
