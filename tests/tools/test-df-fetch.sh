#!/usr/bin/env bash
# test-df-fetch.sh - df-fetch and lib/io/http against tests/servers/file_server.py
# on 127.0.0.1. Every assertion is made from the records, the files on disk
# and the server's own request log: retries as configured and no more,
# Retry-After honored (request gap), the rate limit over a window, Range
# resume, checksum rejection, reruns that send nothing, SIGTERM, GNU
# parallel, the man page examples and pipelines/fetch-sd21.sh.
set -u
cd "$(dirname "$0")/../.."
: "${DF_BIN:=$PWD/bin}"
FETCH=$DF_BIN/df-fetch
PY=/usr/bin/python3
T=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }
TOKEN=tok-$RANDOM-secret

# ---- fixtures: files with known hashes, and the server -------------------
mkdir -p "$T/srv/d"
$PY - "$T/srv" <<'EOF'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
for i in range(20):
    open(f"{root}/d/f{i:02d}.bin", "wb").write(bytes(rnd.getrandbits(8) for _ in range(1000 + 37 * i)))
open(f"{root}/big.bin", "wb").write(bytes(rnd.getrandbits(8) for _ in range(300000)))
open(f"{root}/small.txt", "wb").write(b"hello\n")
open(f"{root}/huge.bin", "wb").write(bytes(500000))
open(f"{root}/d/sp ace.bin", "wb").write(b"space\n")
EOF
sha() { sha256sum "$1" | cut -c1-64; }
BIG_SHA=$(sha "$T/srv/big.bin")

$PY tests/servers/file_server.py --root "$T/srv" --log "$T/log" --token "$TOKEN" > "$T/port" &
SERVER_PID=$!
for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.1; done
P=$(head -n1 "$T/port")
[ -n "$P" ] || { echo "server did not start"; exit 1; }
U=http://127.0.0.1:$P

# How many requests the server saw for path (+ exact query, if given).
reqs() {
    $PY - "$T/log" "$1" "${2-}" <<'EOF'
import json, sys
log, path, query = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
for l in open(log):
    r = json.loads(l)
    if r["path"] == path and (not query or r["query"] == query):
        n += 1
print(n)
EOF
}
expect_reqs() {   # want path query what
    local n; n=$(reqs "$2" "$3")
    [ "$n" = "$1" ] && ok "$4: $n requests" || fail "$4: $n requests, want $1"
}
# Value of field in the output record whose url ends with suffix.
field() {
    $PY - "$1" "$2" "$3" <<'EOF'
import json, sys
out, suffix, key = sys.argv[1:]
for l in open(out):
    r = json.loads(l)
    if r.get("url", "").endswith(suffix):
        print(r.get(key, ""))
        break
EOF
}

# ---- usage -----------------------------------------------------------------
"$FETCH" --help > "$T/help" 2>&1 && grep -q '^Usage: df-fetch --out DIR' "$T/help" && ok "--help" || fail "--help"
"$FETCH" < /dev/null > /dev/null 2>&1; [ $? = 2 ] && ok "no --out: exit 2" || fail "no --out must exit 2"
"$FETCH" --out "$T/x" -j zero < /dev/null > /dev/null 2>&1; [ $? = 2 ] && ok "bad -j: exit 2" || fail "bad -j must exit 2"
"$FETCH" --out "$T/x" -H "no-colon-$TOKEN" < /dev/null > /dev/null 2> "$T/err0"; rc=$?
[ $rc = 2 ] && ! grep -q "$TOKEN" "$T/err0" && ok "bad header: exit 2, value not echoed" || fail "bad header (rc $rc)"

# ---- one run with every fault ----------------------------------------------
S5=$(sha "$T/srv/d/f05.bin")
cat > "$T/in1.jsonl" <<EOF
{"url":"$U/d/f00.bin","id":0}
{"url":"$U/d/f01.bin","sha256":"$(sha "$T/srv/d/f01.bin")","bytes":$(stat -c %s "$T/srv/d/f01.bin")}
{"url":"$U/small.txt?status=503&times=2","file_name":"s503.txt"}
{"url":"$U/small.txt?status=500&times=0","file_name":"s500.txt"}
{"url":"$U/small.txt?status=404","file_name":"s404.txt"}
{"url":"$U/small.txt?drop=1","file_name":"drop.txt"}
{"url":"$U/small.txt?slow=4","file_name":"slow.txt"}
{"url":"$U/big.bin?truncate=1000","file_name":"trunc.bin","sha256":"$BIG_SHA"}
{"url":"$U/big.bin?badlen=100","file_name":"longcl.bin"}
{"url":"$U/d/f05.bin?badlen=-100","file_name":"shortcl.bin","sha256":"$S5"}
{"url":"$U/d/f02.bin","file_name":"wrongsha.bin","sha256":"$(printf '%064d' 0)"}
{"url":"$U/big.bin?redirect=3","file_name":"sub/dir/redir.bin"}
{"url":"$U/huge.bin?x=maxbytes","file_name":"toobig.bin"}
{"url":"$U/small.txt?status=429&retry_after=1","file_name":"ra1.txt"}
{"url":"$U/small.txt?status=503&retry_after=date:2","file_name":"ra2.txt"}
{"url":"$U/d/f03.bin","file_name":"../escape.bin"}
{"url":"$U/d/"}
{"url":"$U/d/sp%20ace.bin?q=1#frag"}
{"url":"$U/d/a%2Fb.bin"}
{"url":"ftp://127.0.0.1/x","file_name":"ftp.bin"}
this line is not json
EOF
"$FETCH" --out "$T/o1" -j 4 --retries 2 --backoff 0.05 --timeout 2 --max-bytes 400K \
    -H "Authorization: Bearer $TOKEN" "$T/in1.jsonl" > "$T/out1" 2> "$T/err1"
rc=$?
[ $rc = 0 ] && ok "fault run exits 0 (failures are data)" || fail "fault run rc $rc"
tail -n1 "$T/err1" | grep -Eq '^df-fetch: [0-9]+ records: [0-9]+ downloaded, 0 already present, [1-9][0-9]* failed$' && ok "failures counted on stderr" || fail "no failure count on stderr"
! grep -q "$TOKEN" "$T/out1" "$T/err1" && ok "token never printed" || fail "token leaked"

# Every input line comes out once, with file_name+bytes+sha256 matching the
# file on disk, or with an error and no file under that name.
$PY - "$T/in1.jsonl" "$T/out1" "$T/o1" <<'EOF' || fails=$((fails + 1))
import hashlib, json, os, sys
inp, out, root = sys.argv[1:]
lines = [l for l in open(out)]
recs = [json.loads(l) for l in lines]
n_in = sum(1 for l in open(inp) if l.strip())
bad = []
if len(recs) != n_in:
    bad.append(f"{len(recs)} records for {n_in} input lines")
urls = [r.get("url") for r in recs if "url" in r]
if len(urls) != len(set(urls)):
    bad.append("a url came out twice")
for r in recs:
    if "error" in r:
        fn = r.get("file_name")
        if fn and not fn.startswith("..") and os.path.exists(os.path.join(root, fn)):
            bad.append(f"failed record left a final file: {fn}")
        continue
    for k in ("file_name", "bytes", "sha256"):
        if k not in r:
            bad.append(f"record without {k}: {r}")
    p = os.path.join(root, r["file_name"])
    data = open(p, "rb").read()
    if hashlib.sha256(data).hexdigest() != r["sha256"] or len(data) != r["bytes"]:
        bad.append(f"{r['file_name']}: record does not match the file")
parts = [f for _, _, fs in os.walk(root) for f in fs if f.endswith(".part")]
if parts:
    bad.append(f"leftover .part files: {parts}")
for b in bad:
    print("FAIL:", b)
print("ok: records complete and matching the files" if not bad else "")
sys.exit(1 if bad else 0)
EOF

err_of() { field "$T/out1" "$1" error; }
[ -z "$(err_of '/d/f00.bin')" ] && [ "$(field "$T/out1" /d/f00.bin file_name)" = f00.bin ] && ok "file_name from url" || fail "f00: $(err_of /d/f00.bin)"
[ "$(field "$T/out1" /d/f00.bin id)" = 0 ] && ok "extra fields passed through" || fail "id field lost"
expect_reqs 3 /small.txt "status=503&times=2" "503 twice then OK"
[ -z "$(err_of 'status=503&times=2')" ] && ok "503x2 recovered" || fail "503x2: $(err_of 'status=503&times=2')"
expect_reqs 3 /small.txt "status=500&times=0" "500 forever, --retries 2"
[ "$(err_of 'status=500&times=0')" = "HTTP 500" ] && ok "500 error text" || fail "500 error: $(err_of 'status=500&times=0')"
expect_reqs 1 /small.txt "status=404" "404 not retried"
expect_reqs 2 /small.txt "drop=1" "dropped connection retried once"
[ -z "$(err_of 'drop=1')" ] && ok "drop recovered" || fail "drop: $(err_of 'drop=1')"
expect_reqs 2 /small.txt "slow=4" "slow past --timeout retried"
[ -z "$(err_of 'slow=4')" ] && ok "slow recovered" || fail "slow: $(err_of 'slow=4')"
expect_reqs 2 /big.bin "truncate=1000" "truncated body resumed"
$PY - "$T/log" <<'EOF' && ok "resume asked for Range bytes=1000- and got 206" || fail "truncate resume had no Range"
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
rs = [r for r in rs if r["query"] == "truncate=1000"]
sys.exit(0 if any(r["range"] == "bytes=1000-" and r["status"] == 206 for r in rs) else 1)
EOF
[ -z "$(err_of truncate=1000)" ] && [ "$(sha "$T/o1/trunc.bin")" = "$BIG_SHA" ] && ok "resumed file intact" || fail "resumed file wrong"
[ "$(field "$T/out1" badlen=100 sha256)" = "$BIG_SHA" ] && ok "too long Content-Length recovered" || fail "badlen+: $(err_of badlen=100)"
case "$(err_of 'badlen=-100')" in *sha256\ mismatch*) ok "short Content-Length caught by sha256";; *) fail "badlen-: $(err_of 'badlen=-100')";; esac
case "$(err_of /d/f02.bin)" in *sha256\ mismatch*) ok "wrong sha256 rejected";; *) fail "wrongsha: $(err_of /d/f02.bin)";; esac
[ ! -e "$T/o1/wrongsha.bin" ] && [ ! -e "$T/o1/wrongsha.bin.part" ] && ok "nothing left of the rejected file" || fail "rejected file left"
expect_reqs 1 /big.bin "redirect=1&times=0" "redirect chain: last hop"
expect_reqs 1 /big.bin "times=0" "redirect chain: the file itself"
[ "$(field "$T/out1" redirect=3 sha256)" = "$BIG_SHA" ] && [ -f "$T/o1/sub/dir/redir.bin" ] && ok "redirects followed into a subdirectory" || fail "redirect: $(err_of redirect=3)"
case "$(err_of x=maxbytes)" in *too\ large*) ok "--max-bytes refuses";; *) fail "maxbytes: $(err_of x=maxbytes)";; esac
[ ! -e "$T/o1/toobig.bin" ] && ok "no file over --max-bytes" || fail "toobig.bin exists"
case "$(field "$T/out1" /d/f03.bin error)" in *unsafe*) ok "../ file_name refused";; *) fail "escape accepted";; esac
expect_reqs 0 /d/f03.bin "" "refused record sent nothing"
case "$(field "$T/out1" /d/ error)" in *file\ name*) ok "url without a file name refused";; *) fail "dir url: $(field "$T/out1" /d/ error)";; esac
[ "$(field "$T/out1" '?q=1#frag' file_name)" = "sp ace.bin" ] && [ "$(cat "$T/o1/sp ace.bin")" = space ] && ok "percent-decoded name" || fail "sp%20ace"
case "$(field "$T/out1" a%2Fb.bin error)" in *file\ name*) ok "name decoding to a/b refused";; *) fail "a%2Fb accepted";; esac
case "$(field "$T/out1" /x error)" in *http*) ok "ftp:// refused";; *) fail "ftp: $(field "$T/out1" /x error)";; esac
grep -q '"input_line":21' "$T/out1" && ok "malformed line passed on with error" || fail "malformed line lost"
# Retry-After: exactly one retry, no sooner than the server asked.
$PY - "$T/log" <<'EOF' && ok "Retry-After (seconds and HTTP-date) honored" || fail "Retry-After not honored"
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
good = True
for q, least in (("status=429&retry_after=1", 1.0), ("status=503&retry_after=date:2", 1.0)):
    t = sorted(r["t"] for r in rs if r["query"] == q)
    if len(t) != 2 or t[1] - t[0] < least - 0.02:
        print("  ", q, t)
        good = False
sys.exit(0 if good else 1)
EOF
$PY - "$T/log" <<'EOF' && ok "every request carried the right Authorization" || fail "Authorization missing or wrong"
import json, sys
sys.exit(0 if all(json.loads(l)["auth"] == "ok" for l in open(sys.argv[1])) else 1)
EOF

# ---- rerun: verified files are not requested again -----------------------
n_before=$(wc -l < "$T/log")
grep -v '"error"' "$T/out1" > "$T/done1"
"$FETCH" --out "$T/o1" -j 4 "$T/done1" > "$T/out2" 2> "$T/err2"
n_after=$(wc -l < "$T/log")
[ "$n_before" = "$n_after" ] && ok "rerun of $(wc -l < "$T/done1") done records sent no request" || fail "rerun sent $((n_after - n_before)) requests"
cmp <(cut -d, -f1 "$T/done1" | sort) <(cut -d, -f1 "$T/out2" | sort) >/dev/null && ! grep -q '"error"' "$T/out2" \
    && ok "rerun records complete" || fail "rerun records differ"
# a file changed on disk with a known sha256 is fetched again
echo tampered > "$T/o1/f01.bin"
"$FETCH" --out "$T/o1" "$T/done1" > "$T/out3" 2>/dev/null
[ "$(sha "$T/o1/f01.bin")" = "$(sha "$T/srv/d/f01.bin")" ] && [ "$(reqs /d/f01.bin)" = 2 ] \
    && ok "tampered file re-downloaded" || fail "tampered file not repaired"

# ---- resume a .part left by an earlier run -------------------------------
mkdir -p "$T/o4"
head -c 123456 "$T/srv/big.bin" > "$T/o4/big.bin.part"
echo "{\"url\":\"$U/big.bin?r=part\",\"file_name\":\"big.bin\",\"bytes\":300000}" | "$FETCH" --out "$T/o4" > "$T/out4" 2>/dev/null
[ "$(sha "$T/o4/big.bin")" = "$BIG_SHA" ] && grep -q "\"sha256\":\"$BIG_SHA\"" "$T/out4" && [ ! -e "$T/o4/big.bin.part" ] \
    && ok ".part resumed to the right file" || fail ".part resume"
grep '"query":"r=part"' "$T/log" | grep -q '"range":"bytes=123456-","auth":"absent","status":206' \
    && ok "resume sent Range bytes=123456- and got 206" || fail "no Range for the .part"
# a server that ignores Range: the .part is started over, not corrupted
head -c 5000 "$T/srv/big.bin" > "$T/o4/nr.bin.part"
echo "{\"url\":\"$U/big.bin?norange=1\",\"file_name\":\"nr.bin\"}" | "$FETCH" --out "$T/o4" > /dev/null 2>&1
[ "$(sha "$T/o4/nr.bin")" = "$BIG_SHA" ] && ok "200 answer to Range restarts the file" || fail "norange resume corrupted"
# a 206 that does not start where asked is not appended: the file starts over
head -c 1000 "$T/srv/big.bin" > "$T/o4/br.bin.part"
echo "{\"url\":\"$U/big.bin?badrange=1\",\"file_name\":\"br.bin\"}" | "$FETCH" --out "$T/o4" --backoff 0.01 > /dev/null 2>&1
[ "$(sha "$T/o4/br.bin")" = "$BIG_SHA" ] && [ "$(reqs /big.bin badrange=1)" = 2 ] \
    && grep '"query":"badrange=1"' "$T/log" | tail -n1 | grep -q '"range":null' \
    && ok "206 at the wrong offset: restarted from byte 0" || fail "badrange"
# a .part whose bytes are wrong fails the sha256 and is removed; the next run succeeds
head -c 2000 /dev/zero > "$T/o4/z.bin.part"
line="{\"url\":\"$U/big.bin?r=z\",\"file_name\":\"z.bin\",\"sha256\":\"$BIG_SHA\"}"
echo "$line" | "$FETCH" --out "$T/o4" > "$T/out5" 2>/dev/null
grep -q 'sha256 mismatch' "$T/out5" && [ ! -e "$T/o4/z.bin" ] && [ ! -e "$T/o4/z.bin.part" ] && ok "bad .part rejected and removed" || fail "bad .part"
echo "$line" | "$FETCH" --out "$T/o4" > /dev/null 2>&1
[ "$(sha "$T/o4/z.bin")" = "$BIG_SHA" ] && ok "next run fetched it whole" || fail "z.bin after rerun"

# ---- SIGTERM: finished records written, .part kept, resumed next time -----
cat > "$T/in6.jsonl" <<EOF
{"url":"$U/d/f10.bin","file_name":"f10.bin"}
{"url":"$U/big.bin?stall=50000:30","file_name":"stalled.bin"}
EOF
"$FETCH" --out "$T/o6" --timeout 60 "$T/in6.jsonl" > "$T/out6" 2> "$T/err6" &
fpid=$!
for _ in $(seq 100); do grep -q 'stall=50000' "$T/log" && [ -s "$T/out6" ] && break; sleep 0.1; done
sleep 0.3
kill -TERM $fpid
wait $fpid; rc=$?
[ $rc = 1 ] && ok "SIGTERM: exit 1" || fail "SIGTERM rc $rc"
[ "$(wc -l < "$T/out6")" = 1 ] && grep -q '"f10.bin"' "$T/out6" && ok "finished record written" || fail "SIGTERM output: $(cat "$T/out6")"
[ "$(stat -c %s "$T/o6/stalled.bin.part" 2>/dev/null)" = 50000 ] && [ ! -e "$T/o6/stalled.bin" ] && ok ".part of 50000 bytes kept" || fail "no .part after SIGTERM"
echo "{\"url\":\"$U/big.bin?stall=50000:30\",\"file_name\":\"stalled.bin\"}" | "$FETCH" --out "$T/o6" > /dev/null 2>&1
[ "$(sha "$T/o6/stalled.bin")" = "$BIG_SHA" ] && grep '"query":"stall=50000:30"' "$T/log" | grep -q '"range":"bytes=50000-"' \
    && ok "interrupted download resumed with Range" || fail "interrupted download not resumed"

# ---- rate limit: starts spaced over any window ----------------------------
for i in $(seq 0 11); do echo "{\"url\":\"$U/d/f$(printf %02d $i).bin?rl=1\"}"; done > "$T/in7.jsonl"
"$FETCH" --out "$T/o7" -j 8 --rpm 300 "$T/in7.jsonl" > "$T/out7" 2>/dev/null
$PY - "$T/log" <<'EOF' && ok "--rpm 300: at most 6 requests in any 1 s window" || fail "rate limit broken"
import json, sys
t = sorted(json.loads(l)["t"] for l in open(sys.argv[1]) if json.loads(l)["query"] == "rl=1")
worst = max(sum(1 for u in t if s <= u <= s + 1.0) for s in t)
print("   12 requests over %.2f s, max %d in 1 s" % (t[-1] - t[0], worst))
sys.exit(0 if len(t) == 12 and worst <= 6 and t[-1] - t[0] >= 11 * 0.2 - 0.05 else 1)
EOF

# ---- GNU parallel: whole lines, every record once ------------------------
for i in $(seq 0 19); do echo "{\"url\":\"$U/d/f$(printf %02d $i).bin?p=1\",\"n\":$i}"; done > "$T/in8.jsonl"
parallel --pipe -N 5 -j 2 "$FETCH" --out "$T/o8" -j 3 < "$T/in8.jsonl" > "$T/out8" 2>/dev/null
$PY - "$T/out8" "$T/o8" "$T/srv/d" <<'EOF' && ok "parallel --pipe: 20 whole records, files right" || fail "parallel output"
import hashlib, json, sys
out, root, src = sys.argv[1:]
ns = []
for l in open(out):
    r = json.loads(l)                      # each line whole JSON
    ns.append(r["n"])
    want = hashlib.sha256(open(f"{src}/{r['file_name']}", "rb").read()).hexdigest()
    assert r["sha256"] == want == hashlib.sha256(open(f"{root}/{r['file_name']}", "rb").read()).hexdigest()
sys.exit(0 if sorted(ns) == list(range(20)) else 1)
EOF

# ---- the summary line ends every run, stderr a terminal or not -----------
printf '{"url":"%s/d/f06.bin?sum=1"}\n{"url":"%s/nope?sum=1"}\n' "$U" "$U" > "$T/in12.jsonl"
"$FETCH" --out "$T/o12" "$T/in12.jsonl" > /dev/null 2> "$T/err12"
[ "$(tail -n1 "$T/err12")" = "df-fetch: 2 records: 1 downloaded, 0 already present, 1 failed" ] \
    && ok "summary line on a non-terminal stderr" || fail "summary: $(cat "$T/err12")"
"$FETCH" --out "$T/o12" --quiet "$T/in12.jsonl" > /dev/null 2> "$T/err12"
[ "$(tail -n1 "$T/err12")" = "df-fetch: 2 records: 0 downloaded, 1 already present, 1 failed" ] \
    && ok "summary line of a rerun" || fail "rerun summary: $(cat "$T/err12")"

# ---- records naming the same file: the later ones wait for the first -----
# dup1: the first download fails (404), the second record fetches it itself;
# dup2: the first succeeds (slowly), the second takes its result, no request.
S7=$(sha "$T/srv/d/f07.bin")
cat > "$T/in13.jsonl" <<EOF
{"url":"$U/d/f07.bin?status=404&dup=1","file_name":"dup1.bin","n":0}
{"url":"$U/d/f07.bin?dup=2","file_name":"dup1.bin","n":1}
{"url":"$U/d/f07.bin?slow=0.5&dup=3","file_name":"dup2.bin","n":2}
{"url":"$U/d/f07.bin?dup=4","file_name":"dup2.bin","n":3,"sha256":"$S7"}
{"url":"$U/d/f07.bin?dup=5","file_name":"dup2.bin","n":4,"sha256":"$(printf '%064d' 0)"}
EOF
"$FETCH" --out "$T/o13" -j 4 "$T/in13.jsonl" > "$T/out13" 2> /dev/null
$PY - "$T/out13" <<EOF && ok "same file_name: wait for the first, take its result" || fail "same file_name: $(cat "$T/out13")"
import json, sys
recs = {r["n"]: r for r in map(json.loads, open(sys.argv[1]))}
assert sorted(recs) == [0, 1, 2, 3, 4], recs
assert recs[0]["error"].startswith("HTTP 404"), recs[0]
for n in (1, 2, 3):
    assert "error" not in recs[n] and recs[n]["sha256"] == "$S7", recs[n]
# the fifth asks for another sha256: the file there does not match, so it
# downloads (the same bytes) and fails verification
assert recs[4]["error"].startswith("sha256 mismatch"), recs[4]
EOF
[ "$(reqs /d/f07.bin dup=2)$(reqs /d/f07.bin "slow=0.5&dup=3")$(reqs /d/f07.bin dup=4)$(reqs /d/f07.bin dup=5)" = 1101 ] \
    && ok "same file_name: one request each where needed" || fail "same file_name requests"
[ "$(sha "$T/o13/dup2.bin")" = "$S7" ] && [ "$(sha "$T/o13/dup1.bin")" = "$S7" ] \
    && ok "same file_name: files intact" || fail "same file_name files"

# ---- --strict ---------------------------------------------------------------
echo "{\"url\":\"$U/nope\"}" | "$FETCH" --out "$T/o9" --strict > /dev/null 2>&1; rc=$?
[ $rc = 1 ] && ok "--strict: failed record -> exit 1" || fail "--strict rc $rc"

# ---- a .part locked by another process is left alone ---------------------
mkdir -p "$T/o11" && echo keep > "$T/o11/lk.bin.part"
exec 9>>"$T/o11/lk.bin.part"
flock 9
echo "{\"url\":\"$U/d/f04.bin?lk=1\",\"file_name\":\"lk.bin\"}" | "$FETCH" --out "$T/o11" > "$T/out11" 2>/dev/null
exec 9>&-
grep -q 'another process' "$T/out11" && [ "$(cat "$T/o11/lk.bin.part")" = keep ] && [ "$(reqs /d/f04.bin lk=1)" = 0 ] \
    && ok "locked .part: error, untouched, no request" || fail "locked .part: $(cat "$T/out11")"

# ---- output that cannot be written is a failed run ------------------------
echo "{\"url\":\"$U/small.txt?full=1\",\"file_name\":\"full.txt\"}" | "$FETCH" --out "$T/o9" > /dev/full 2> "$T/err9"; rc=$?
[ $rc = 1 ] && grep -q "cannot write output" "$T/err9" && ok "/dev/full: exit 1 with a message" || fail "/dev/full rc $rc"

# ---- man page examples (same commands as in man/df-fetch.1) --------------
mkdir -p "$T/ex" && cd "$T/ex"
printf '{"url":"%s/d/f11.bin?ex=1"}\n{"url":"%s/d/f12.bin?ex=1","sha256":"%s"}\n' "$U" "$U" "$(sha "$T/srv/d/f12.bin")" > urls.jsonl
df_fetch() { "$FETCH" "$@"; }
df_fetch --out data -j 16 < urls.jsonl > fetched.jsonl 2>/dev/null
export HF_TOKEN=$TOKEN
df_fetch --out data --header "Authorization: Bearer $HF_TOKEN" --retries 5 --rpm 600 < urls.jsonl > again.jsonl 2>/dev/null
parallel --pipe -N 1 -j 2 "$FETCH" --out data2 < urls.jsonl > par.jsonl 2>/dev/null
[ "$(grep -c sha256 fetched.jsonl)" = 2 ] && [ "$(grep -c sha256 again.jsonl)" = 2 ] && [ "$(grep -c sha256 par.jsonl)" = 2 ] \
    && [ "$(reqs /d/f11.bin ex=1)" = 2 ] && ok "man page examples" || fail "man page examples"
cd - > /dev/null

# ---- pipelines/fetch-sd21.sh against a fake hub tree ----------------------
[ "$(VARIANT=fp16 pipelines/fetch-sd21.sh --list | grep -c '\.fp16\.safetensors"')" = 3 ] \
    && ok "fetch-sd21.sh VARIANT=fp16 lists the fp16 weights" || fail "VARIANT=fp16 list"
HF_TOKEN=$TOKEN pipelines/fetch-sd21.sh --list > "$T/sd.list"
$PY - "$T/sd.list" "$T/srv" <<'EOF'
import json, os, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    path = r["url"].split("://", 1)[1].split("/", 1)[1]
    os.makedirs(os.path.dirname(os.path.join(sys.argv[2], path)), exist_ok=True)
    open(os.path.join(sys.argv[2], path), "w").write("content of " + path)
EOF
HF_BASE=$U HF_TOKEN=$TOKEN DF_FETCH=$FETCH pipelines/fetch-sd21.sh "$T/models" 2> "$T/err10"; rc=$?
$PY - "$T/models" <<'EOF' && [ $rc = 0 ] && ok "fetch-sd21.sh: diffusers layout + LoRA fetched" || fail "fetch-sd21.sh rc $rc"
import json, os, sys
root = sys.argv[1]
want = ["stable-diffusion-2-1/model_index.json", "stable-diffusion-2-1/unet/diffusion_pytorch_model.safetensors",
        "stable-diffusion-2-1/vae/diffusion_pytorch_model.safetensors", "stable-diffusion-2-1/text_encoder/model.safetensors",
        "stable-diffusion-2-1/tokenizer/vocab.json", "stable-diffusion-2-1/scheduler/scheduler_config.json",
        "diffyface-lora/pytorch_lora_weights.safetensors"]
recs = [json.loads(l) for l in open(os.path.join(root, "fetch.jsonl"))]
assert len(recs) == 14 and all("sha256" in r for r in recs), recs
for w in want:
    assert open(os.path.join(root, w)).read().startswith("content of "), w
EOF
grep '/resolve/' "$T/log" | grep -v '"auth":"ok"' | grep -q . && fail "hub requests without the token" || ok "hub requests carried the token"
! grep -q "$TOKEN" "$T/err10" "$T/models/fetch.jsonl" && ok "token not in the pipeline's output" || fail "token leaked by the pipeline"

echo "$fails failed"
[ "$fails" = 0 ]
