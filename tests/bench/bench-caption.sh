#!/usr/bin/env bash
# bench-caption.sh - df-caption's client-side cost per request against an
# instant local responder (tests/bench/caption_responder.c, built here).
# Prints figures, asserts nothing. N requests (default 2000, DF_BENCH_N) over
# 20 distinct 768x768 JPEGs (as df-resize makes them), at -j 1 and -j 8;
# then with --max-side 512 (N/10 requests), which decodes, resamples and
# re-encodes each image in df-caption's reader thread.
#   wall/req        wall time of the whole run / N
#   server/req      the responder's own handling time / N
#   client/req      wall/req - server/req at -j 1: what df-caption adds to
#                   each request (file read, base64, JSON, HTTP, parse, write)
#   cpu/req         df-caption's user+sys CPU time / N
# Goal (issue #3): under 2 ms per request.
set -u
cd "$(dirname "$0")/../.."
: "${DF_BIN:=$PWD/bin}"
N=${DF_BENCH_N:-2000}
T=$(mktemp -d /tmp/df-bench-caption.XXXXXX)
RPID=
cleanup() { [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

${CC:-cc} -O2 -D_GNU_SOURCE -o "$T/responder" tests/bench/caption_responder.c || {
    echo "cannot build the responder"; exit 0; }
/usr/bin/python3 - "$T" "$N" <<'EOF' || { echo "needs /usr/bin/python3 with PIL"; exit 0; }
import sys, numpy as np
from PIL import Image
t, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(20):   # smooth random images: JPEG sizes like photos' (~50-100 KB)
    small = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(small).resize((768, 768), Image.BICUBIC).save("%s/%02d.jpg" % (t, i), quality=95)
with open(t + "/in.jsonl", "w") as f:
    for i in range(n):
        f.write('{"file_name":"%02d.jpg","i":%d}\n' % (i % 20, i))
EOF
kb=$(du -k "$T"/*.jpg | awk '{s += $1} END {printf "%.0f", s / NR}')
echo "df-caption overhead: $N requests, 768x768 JPEGs of ~${kb} KB, instant responder on loopback"
printf '%-22s %9s %9s %10s %10s %9s\n' run wall_s wall/req server/req client/req cpu/req

one_run() {   # label, df-caption args...
    local label=$1; shift
    "$T/responder" > "$T/port" 2> "$T/resp.err" &
    RPID=$!
    for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.05; done
    local url=http://127.0.0.1:$(cat "$T/port")/v1/chat/completions
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$T/cpu" "$DF_BIN/df-caption" --endpoint "$url" --no-auth \
        --model bench --root "$T" -q "$@" < "$T/in.jsonl" > "$T/out.jsonl"
    t1=$(date +%s.%N)
    kill -TERM "$RPID"; wait "$RPID" 2>/dev/null; RPID=
    local ok server
    ok=$(grep -c '"text"' "$T/out.jsonl")
    server=$(awk '/responder:/ {print $4}' "$T/resp.err")
    awk -v l="$label" -v t0="$t0" -v t1="$t1" -v n="$N" -v s="$server" -v ok="$ok" \
        -v cpu="$(cat "$T/cpu")" 'BEGIN {
        split(cpu, c, " "); w = t1 - t0;
        printf "%-22s %9.2f %7.3fms %8.4fms %8.3fms %7.3fms%s\n", l, w, 1000 * w / n,
            1000 * s / n, 1000 * (w - s) / n, 1000 * (c[1] + c[2]) / n,
            ok == n ? "" : sprintf("  (only %d of %d captioned)", ok, n) }'
}
one_run "-j 1" -j 1
one_run "-j 8" -j 8
# The re-encoding runs cost ~20 ms of CPU per image: a tenth of the records.
head -n $((N / 10)) "$T/in.jsonl" > "$T/in10.jsonl" && mv "$T/in10.jsonl" "$T/in.jsonl"
N=$((N / 10))
one_run "-j 1 --max-side 512" -j 1 --max-side 512
