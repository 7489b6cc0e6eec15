#!/usr/bin/env bash
# bench-fetch.sh - df-fetch throughput on loopback next to curl run by GNU
# parallel over the same list: 10,000 files of 50 KB (files/s, MB/s) and one
# 1 GB file (MB/s). The server is tests/bench/static_httpd.c (compiled here;
# the Python test server would be the bottleneck). Prints figures, asserts
# nothing. Sizes can be lowered for a quick look: N_FILES=1000 BIG_MB=100.
# One curl process per file manages only tens of files/s on a small shared
# machine, so that baseline runs over the first CURL_FILES (default 2000)
# files of the list; its rate is what compares.
set -u
cd "$(dirname "$0")/../.."
: "${DF_BIN:=$PWD/bin}"
N_FILES=${N_FILES:-10000}
BIG_MB=${BIG_MB:-1024}
JOBS=${JOBS:-16}
CURL_FILES=${CURL_FILES:-2000}
[ "$CURL_FILES" -gt "$N_FILES" ] && CURL_FILES=$N_FILES
FETCH=$DF_BIN/df-fetch
for tool in parallel curl cc; do
    command -v $tool > /dev/null || { echo "bench-fetch: $tool not installed (make deps), skipped"; exit 0; }
done
[ -x "$FETCH" ] || { echo "bench-fetch: $FETCH not built, skipped"; exit 0; }
T=$(mktemp -d)
SRV=
trap '[ -n "$SRV" ] && kill $SRV 2>/dev/null; rm -rf "$T"' EXIT
cc -O2 -pthread -o "$T/httpd" tests/bench/static_httpd.c || { echo "bench-fetch: cannot build static_httpd"; exit 0; }

# Data: N_FILES files of 50 KB of random bytes, one sparse BIG_MB file.
mkdir -p "$T/srv/s"
/usr/bin/python3 - "$T/srv/s" "$N_FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
block = os.urandom(50 * 1024 + n * 8)
for i in range(n):     # distinct content per file, cheaply
    open(f"{d}/f{i:05d}.bin", "wb").write(block[i * 8:i * 8 + 50 * 1024])
EOF
truncate -s "${BIG_MB}M" "$T/srv/big.bin"
"$T/httpd" "$T/srv" > "$T/port" &
SRV=$!
for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.1; done
P=$(head -n1 "$T/port")
U=http://127.0.0.1:$P
seq 0 $((N_FILES - 1)) | awk -v u="$U" '{printf "{\"url\":\"%s/s/f%05d.bin\"}\n", u, $1}' > "$T/list.jsonl"
seq 0 $((N_FILES - 1)) | awk -v u="$U" '{printf "%s/s/f%05d.bin\n", u, $1}' > "$T/list.txt"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
report() {   # label seconds files bytes (files/s only for many files)
    awk -v l="$1" -v s="$2" -v n="$3" -v b="$4" 'BEGIN {
        f = n > 1 ? sprintf("%9.0f files/s", n / s) : sprintf("%17s", "")
        printf "%-44s %7.2f s %s %8.1f MB/s\n", l, s, f, b / s / 1e6 }'
}
sync
small_bytes=$((N_FILES * 50 * 1024))
echo "loopback, $N_FILES files of 50 KB, $JOBS in flight; $(nproc) cores, load $(cut -d" " -f1 /proc/loadavg)"

t0=$(now)
"$FETCH" --out "$T/o1" -j "$JOBS" --quiet < "$T/list.jsonl" > "$T/out1" 2> "$T/err1"
t1=$(now)
ok=$(grep -c '"sha256"' "$T/out1")
report "df-fetch -j $JOBS (sha256 verified)" "$(elapsed "$t0" "$t1")" "$N_FILES" "$small_bytes"
[ "$ok" = "$N_FILES" ] || echo "  (only $ok of $N_FILES fetched: $(head -c 300 "$T/err1"))"
rm -rf "$T/o1"

mkdir -p "$T/o2"
t0=$(now)
head -n "$CURL_FILES" "$T/list.txt" | parallel -j "$JOBS" curl -sf -o "$T/o2/{/}" {}
t1=$(now)
report "parallel -j $JOBS curl, one per file ($CURL_FILES)" "$(elapsed "$t0" "$t1")" "$CURL_FILES" "$((CURL_FILES * 50 * 1024))"
echo "  (curl fetched $(ls "$T/o2" | wc -l) files)"
rm -rf "$T/o2"

mkdir -p "$T/o3"
per=$(( (N_FILES + JOBS - 1) / JOBS ))
t0=$(now)
(cd "$T/o3" && parallel -j "$JOBS" -N "$per" curl -sf --remote-name-all {} < "$T/list.txt")
t1=$(now)
report "parallel -j $JOBS -N $per curl (keep-alive)" "$(elapsed "$t0" "$t1")" "$N_FILES" "$small_bytes"
rm -rf "$T/o3"

big_bytes=$((BIG_MB * 1024 * 1024))
echo "loopback, one file of $BIG_MB MiB"
t0=$(now)
echo "{\"url\":\"$U/big.bin\"}" | "$FETCH" --out "$T/o4" --quiet > "$T/out4" 2>&1
t1=$(now)
report "df-fetch (sha256 while streaming)" "$(elapsed "$t0" "$t1")" 1 "$big_bytes"
rm -rf "$T/o4"
mkdir -p "$T/o5"
t0=$(now)
echo "$U/big.bin" | parallel curl -sf -o "$T/o5/big.bin" {}
t1=$(now)
report "parallel curl" "$(elapsed "$t0" "$t1")" 1 "$big_bytes"
t0=$(now)
sha256sum "$T/o5/big.bin" > /dev/null
t1=$(now)
report "  (sha256sum of that file afterwards)" "$(elapsed "$t0" "$t1")" 1 "$big_bytes"
