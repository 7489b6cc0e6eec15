#!/usr/bin/env bash
# test-df-caption.sh - df-caption against tests/servers/openai_server.py.
# Every assertion reads df-caption's output and the server's own request log:
# the right caption reaches the right record, every record ends with text or
# error, retries happen as configured and no more, the rate limit holds over
# every window, --resume and reruns send no request twice, --start/--end and
# --shard select the right records, a GNU parallel run gives clean lines,
# SIGTERM leaves every finished record written, the API key never leaks.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DF_BIN:=$PWD/bin}"
export PATH="$DF_BIN:$PATH"
PY=/usr/bin/python3
SERVER=$PWD/tests/servers/openai_server.py
T=$(mktemp -d /tmp/df-test-caption.XXXXXX)
SPIDS=()
cleanup() { for p in "${SPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

export DF_TEST_KEY=sk-test-ZX81-secret-9f3a
MODEL=test/vision-model

# 40 solid images with distinct colours and sizes (JPEG and PNG, some in a
# subdirectory), so the server can tell which file it was sent.
mkdir -p "$T/img/sub"
$PY - "$T/img" <<'EOF'
import sys
from PIL import Image
root = sys.argv[1]
for i in range(40):
    c = (30 + 60 * (i % 4), 30 + 60 * (i // 4 % 4), 40 + 60 * (i // 16))
    size = (40 + 4 * (i % 7), 30 + 3 * (i % 5))
    name = ("sub/%02d.jpg" if i % 3 == 0 else "%02d.png") % i
    Image.new("RGB", size, c).save("%s/%s" % (root, name), quality=95)
EOF
(cd "$T/img" && find . -type f | sed 's|^\./||' | sort) | awk '{printf "{\"file_name\":\"%s\",\"n\":%d}\n", $0, NR-1}' > "$T/all.jsonl"
# The records of images 00..11, in input order (sub/00.jpg, 01.png, ...).
grep -E '"file_name":"(sub/)?(0[0-9]|1[01])\.' "$T/all.jsonl" > "$T/twelve.jsonl"
[ "$(wc -l < "$T/twelve.jsonl")" -eq 12 ] || fail "test setup: twelve.jsonl"

# start_server LOG [server args...]: sets PORT and URL.
start_server() {
    local log=$1; shift
    : > "$log"
    $PY "$SERVER" --root "$T/img" --log "$log" "$@" > "$T/port" &
    SPIDS+=($!)
    for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.1; done
    PORT=$(cat "$T/port"); rm -f "$T/port"
    URL=http://127.0.0.1:$PORT/v1/chat/completions
}
stop_server() { kill "${SPIDS[-1]}"; wait "${SPIDS[-1]}" 2>/dev/null || true; }

cap() { df-caption --endpoint "$URL" --model "$MODEL" --api-key-env DF_TEST_KEY --root "$T/img" --quiet "$@"; }

# check.py OUT LOG MODE...: the checks shared by the cases below.
cat > "$T/check.py" <<'EOF'
import json, sys, hashlib
from PIL import Image, ImageStat
out_path, log_path, root = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]
def lines(p):
    with open(p) as f:
        return [l for l in f.read().split("\n") if l]
def expected(name, max_side=0):
    im = Image.open(root + "/" + name).convert("RGB")
    m = ImageStat.Stat(im).mean
    w, h = im.size
    if max_side and max(w, h) > max_side:   # df-caption's rounding
        w, h = (max_side, int(h * max_side / w + 0.5)) if w >= h else (int(w * max_side / h + 0.5), max_side)
    return "%s: mean color %d,%d,%d size %dx%d" % (name, round(m[0]), round(m[1]), round(m[2]), w, h)
recs = []
for i, l in enumerate(lines(out_path)):
    try:
        r = json.loads(l)
    except ValueError:
        sys.exit("output line %d is not JSON: %r" % (i + 1, l[:80]))
    if not isinstance(r, dict) or (("text" in r) == ("error" in r)):
        sys.exit("output line %d needs exactly one of text/error: %r" % (i + 1, l[:120]))
    recs.append(r)
log = [json.loads(l) for l in lines(log_path)]
opts = dict(a.split("=", 1) for a in args)
max_side = int(opts.get("max_side", 0))
model = opts.get("model")
for r in recs:
    if "text" in r:
        want = expected(r["file_name"], max_side)
        if r["text"] != want:
            sys.exit("%s: text %r, expected %r" % (r["file_name"], r["text"], want))
        if model and r.get("caption_model") != model:
            sys.exit("%s: caption_model %r" % (r["file_name"], r.get("caption_model")))
if "inputs" in opts:       # every input exactly once, fields passed through
    want = [json.loads(l) for l in lines(opts["inputs"])]
    got = sorted(r["file_name"] for r in recs)
    if got != sorted(w["file_name"] for w in want):
        sys.exit("output file_names differ from the input's: %s" % got)
    n = {w["file_name"]: w["n"] for w in want}
    if any(r.get("n") != n[r["file_name"]] for r in recs):
        sys.exit("a passed-through field changed")
if opts.get("all_text") == "1" and any("text" not in r for r in recs):
    sys.exit("records with error: %s" % [r for r in recs if "text" not in r][:3])
if opts.get("one_request_each") == "1":
    files = [e["file"] for e in log]
    if sorted(files) != sorted(set(files)) or None in files:
        sys.exit("requests per file are not exactly one: %s" % files)
    if sorted(files) != sorted(r["file_name"] for r in recs if "text" in r):
        sys.exit("requested files differ from captioned files")
if "auth" in opts and any(e.get("auth") != opts["auth"] for e in log):
    sys.exit("auth in server log: %s" % sorted(set(str(e.get("auth")) for e in log)))
if "max_tokens" in opts and any(str(e.get("max_tokens")) != opts["max_tokens"] for e in log):
    sys.exit("max_tokens in server log: %s" % [e.get("max_tokens") for e in log][:3])
if "temperature" in opts and any(str(e.get("temperature")) != opts["temperature"] for e in log):
    sys.exit("temperature in server log: %s" % [e.get("temperature") for e in log][:3])
if "prompt_file" in opts:
    sha = hashlib.sha256(open(opts["prompt_file"], "rb").read().rstrip(b"\n").decode().encode()).hexdigest()[:16]
    if any(e.get("prompt_sha") != sha for e in log):
        sys.exit("prompt differs from %s" % opts["prompt_file"])
if max_side and any(max(e["w"], e["h"]) > max_side or e["mime"] != "image/jpeg" for e in log):
    sys.exit("an image over --max-side reached the server")
print("ok: %d records, %d requests" % (len(recs), len(log)))
EOF
check() { $PY "$T/check.py" "$1" "$2" "$T/img" "${@:3}" || fail "check $*"; }

echo "--- usage"
df-caption --help | grep -q '^Usage: df-caption' || fail "--help"
df-caption --help | grep -q '%%' && fail "--help prints a literal %%"
df-caption --help | grep -q 'index % N == K-1' || fail "--help: the --shard line"
for bad in "--jobs 0" "--shard 0/3" "--shard 4/3" "--shard x" "--rpm -1" "--timeout abc" \
           "--end 2 --start 5" "--endpoint ftp://x" "--bogus" "extra-arg"; do
    set +e; df-caption $bad < /dev/null > /dev/null 2> "$T/err"; rc=$?; set -e
    [ $rc -eq 2 ] || fail "'$bad' exited $rc, expected 2"
done
grep -q "Try 'df-caption --help'" "$T/err" || fail "usage hint"

echo "--- missing key: exit 1, clear message, no request"
start_server "$T/log0" --model "$MODEL" --api-key "$DF_TEST_KEY"
set +e; env -u DF_TEST_KEY df-caption --endpoint "$URL" --api-key-env DF_TEST_KEY \
    < "$T/twelve.jsonl" > "$T/out0" 2> "$T/err0"; rc=$?; set -e
[ $rc -eq 1 ] || fail "missing key exited $rc"
grep -q "DF_TEST_KEY is not set" "$T/err0" || fail "missing key message: $(cat "$T/err0")"
[ ! -s "$T/out0" ] && [ ! -s "$T/log0" ] || fail "missing key still sent or wrote"

echo "--- basic run: right caption to the right record, defaults on the wire"
: > "$T/log0"
cap -j 3 --max-tokens 77 --temperature 0.25 < "$T/all.jsonl" > "$T/out1" 2> "$T/err1"
check "$T/out1" "$T/log0" inputs="$T/all.jsonl" all_text=1 one_request_each=1 auth=ok \
    model="$MODEL" max_tokens=77 temperature=0.25
# The default prompt is the original project's, word for word.
printf '%s' "Provide a detailed physical description of the person in this image. Include: approximate age, gender, ethnicity/race, facial expression and emotion, hair characteristics (color, length, style, hairline), facial features (eyes, nose, mouth, lips, chin, cheekbones), facial hair if present, accessories (eyeglasses, hats, jewelry), body type indicators, skin tone, makeup if visible, and any other distinctive physical characteristics." > "$T/default_prompt"
check "$T/out1" "$T/log0" prompt_file="$T/default_prompt"
grep -qF "$DF_TEST_KEY" "$T/out1" "$T/err1" "$T/log0" && fail "API key leaked"

echo "--- --prompt-file, --max-side, man page example shape (stdin file, stdout file)"
: > "$T/log0"
printf 'Describe the face.\n' > "$T/prompt.txt"
cap --prompt-file "$T/prompt.txt" --max-side 32 --max-tokens 0 < "$T/twelve.jsonl" > "$T/out2"
check "$T/out2" "$T/log0" inputs="$T/twelve.jsonl" all_text=1 max_side=32 max_tokens=None \
    prompt_file="$T/prompt.txt"
stop_server

echo "--- a wrong key: HTTP 401 in the record, not retried, key not echoed"
start_server "$T/log1" --model "$MODEL" --api-key other-key
DF_TEST_KEY=sk-wrong-key-123 cap --retries 3 < "$T/twelve.jsonl" > "$T/out3" || fail "401 run exit"
[ "$(grep -c '"error":"HTTP 401: invalid API key"' "$T/out3")" -eq 12 ] || fail "401 records"
[ "$(wc -l < "$T/log1")" -eq 12 ] || fail "401 was retried"
grep -q sk-wrong-key-123 "$T/out3" "$T/log1" && fail "key leaked"
stop_server

echo "--- --no-auth sends no Authorization header"
start_server "$T/log2" --model "$MODEL"
df-caption --endpoint "$URL" --model "$MODEL" --no-auth --root "$T/img" -q < "$T/twelve.jsonl" > "$T/out4"
check "$T/out4" "$T/log2" inputs="$T/twelve.jsonl" all_text=1 auth=missing
stop_server

echo "--- bad records: each gets an error, the run goes on, --strict exits 1"
printf 'garbage bytes' > "$T/img/broken.jpg"
head -c 300 "$T/img/sub/00.jpg" > "$T/img/truncated.jpg"
printf 'text' > "$T/img/notes.txt"
cat > "$T/bad.jsonl" <<'EOF'
{"file_name":"01.png","n":1}
{"file_name":"missing.jpg"}
{"file_name":"broken.jpg"}
{"file_name":"notes.txt"}
{"file_name":"../img/01.png"}
{"file_name":"/etc/passwd"}
{"other":"no file name"}
not json at all
{"file_name":"02.png","error":"failed upstream"}

{"file_name":"04.png","n":4}
EOF
start_server "$T/log3" --model "$MODEL" --api-key "$DF_TEST_KEY"
cap < "$T/bad.jsonl" > "$T/out5" 2> "$T/err5" || fail "bad records must not fail the run"
[ "$(wc -l < "$T/out5")" -eq 10 ] || fail "bad records: expected 10 lines, got $(wc -l < "$T/out5")"
[ "$(grep -c '"error"' "$T/out5")" -eq 8 ] || fail "bad records: expected 8 errors"
grep -q '"file_name":"02.png","error":"failed upstream"}' "$T/out5" || fail "upstream error not passed"
grep -q '8 of 10 records failed' "$T/err5" || fail "failure count on stderr: $(cat "$T/err5")"
check "$T/out5" "$T/log3" one_request_each=1
set +e; cap --strict < "$T/bad.jsonl" > /dev/null 2>&1; rc=$?; set -e
[ $rc -eq 1 ] || fail "--strict exited $rc"
rm -f "$T/img/broken.jpg" "$T/img/truncated.jpg" "$T/img/notes.txt"
stop_server

echo "--- faults: retries as configured and no more"
cat > "$T/faults.json" <<'EOF'
{"sub/00.jpg": ["429:1", "ok"], "01.png": ["500", "503", "ok"],
 "02.png": ["500", "500", "500", "500", "500"], "sub/03.jpg": ["drop", "ok"],
 "04.png": ["truncate", "ok"], "05.png": ["malformed", "ok"], "sub/06.jpg": ["empty_choices", "ok"],
 "07.png": ["slow:4", "ok"], "08.png": ["400"], "sub/09.jpg": ["short_length", "malformed", "short_length", "ok"],
 "10.png": ["null_content"]}
EOF
start_server "$T/log4" --model "$MODEL" --api-key "$DF_TEST_KEY" --faults "$T/faults.json"
# Faults can also be set at run time through the control endpoint.
curl -sf -X POST --data '{"11.png": ["503", "ok"]}' "http://127.0.0.1:$PORT/_control/faults" > /dev/null ||
    fail "control endpoint"
cap -j 4 --retries 2 --retry-wait 0.05 --timeout 1.5 < "$T/twelve.jsonl" > "$T/out6"
$PY - "$T/out6" "$T/log4" <<'EOF' || fail "faults"
import json, sys
out = {r["file_name"]: r for r in map(json.loads, open(sys.argv[1]))}
log = [json.loads(l) for l in open(sys.argv[2])]
n = {}
for e in log:
    n[e["file"]] = n.get(e["file"], 0) + 1
want = {  # file: (requests the server saw, "text" or the start of the error)
    "sub/00.jpg": (2, "text"), "01.png": (3, "text"), "02.png": (3, "HTTP 500: injected 500"),
    "sub/03.jpg": (2, "text"), "04.png": (2, "text"), "05.png": (2, "text"),
    "sub/06.jpg": (2, "text"), "07.png": (2, "text"), "08.png": (1, "HTTP 400: injected 400"),
    # a cut or malformed 200 body is retried like a 5xx, --retries 2 bounds it
    "sub/09.jpg": (3, "malformed JSON response"), "10.png": (1, "no message content"),
    "11.png": (2, "text")}
bad = []
for f, (count, what) in want.items():
    r = out.get(f)
    got = "text" if r and "text" in r else (r or {}).get("error", "missing")
    if n.get(f) != count or not got.startswith(what):
        bad.append("%s: %s requests, %r (want %d, %r)" % (f, n.get(f), got, count, what))
# Retry-After: 1 was honoured: the retry came at least a second later.
t = [e["t"] for e in log if e["file"] == "sub/00.jpg"]
if len(t) == 2 and t[1] - t[0] < 0.95:
    bad.append("Retry-After ignored: retry after %.2f s" % (t[1] - t[0]))
if len(out) != 12:
    bad.append("%d records written" % len(out))
if bad:
    sys.exit("\n".join(bad))
print("faults ok")
EOF
stop_server

echo "--- cut bodies and empty choices: retried, never more than --retries allows"
cat > "$T/faults_b.json" <<'EOF'
{"sub/00.jpg": ["empty_choices", "empty_choices", "empty_choices", "empty_choices", "empty_choices"],
 "01.png": ["short_length", "short_length", "short_length", "short_length", "short_length"],
 "02.png": ["malformed", "malformed", "ok"], "sub/03.jpg": ["malformed", "malformed"],
 "04.png": ["malformed", "500", "500", "500", "500", "500"]}
EOF
start_server "$T/log4b" --model "$MODEL" --api-key "$DF_TEST_KEY" --faults "$T/faults_b.json"
cap --retries 3 --retry-wait 0.05 < "$T/twelve.jsonl" > "$T/out6b"
grep -E '"(sub/00.jpg|01.png)"' "$T/twelve.jsonl" | cap --retries 0 --retry-wait 0.05 > "$T/out6c"
$PY - "$T/out6b" "$T/out6c" "$T/log4b" <<'EOF' || fail "cut bodies"
import json, sys
b = {r["file_name"]: r for r in map(json.loads, open(sys.argv[1]))}
c = {r["file_name"]: r for r in map(json.loads, open(sys.argv[2]))}
n = {}
for e in map(json.loads, open(sys.argv[3])):
    n[e["file"]] = n.get(e["file"], 0) + 1
bad = []
# run 1 (--retries 3): at most 4 requests a record; run 2 (--retries 0): one each
want = {"sub/00.jpg": (5, "empty choices", "empty choices"),
        "01.png": (5, "malformed JSON response", "malformed JSON response"),
        "02.png": (3, "text", None), "sub/03.jpg": (3, "text", None),
        # a resend that meets 5xx answers: the same budget of 1 + --retries
        "04.png": (4, "", None)}
for f, (count, w1, w2) in want.items():
    g1 = "text" if "text" in b[f] else b[f].get("error")
    g2 = "text" if "text" in c.get(f, {}) else c.get(f, {}).get("error")
    if n.get(f) != count or not g1.startswith(w1) or not (g2 == w2 or (g2 and g2.startswith(w2))):
        bad.append("%s: %s requests, %r then %r (want %d, %r, %r)" % (f, n.get(f), g1, g2, count, w1, w2))
if len(b) != 12 or len(c) != 2:
    bad.append("%d and %d records written" % (len(b), len(c)))
if bad:
    sys.exit("\n".join(bad))
print("cut bodies ok")
EOF
stop_server

echo "--- an image over the pixel limit is refused from its header, never sent"
$PY - "$T/img" <<'EOF'
import struct, sys, zlib
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
for name, side in (("huge.png", 100000), ("big.png", 20000)):
    with open(sys.argv[1] + "/" + name, "wb") as f:   # a header, and one row of 1-bit gray
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * (side // 8 + 1))) + chunk(b"IEND", b""))
EOF
printf '{"file_name":"huge.png"}\n{"file_name":"big.png"}\n{"file_name":"01.png"}\n' > "$T/big.jsonl"
start_server "$T/log4c" --model "$MODEL" --api-key "$DF_TEST_KEY"
cap < "$T/big.jsonl" > "$T/out6d" 2> /dev/null || fail "pixel limit: exit status"
grep -q '"file_name":"big.png","error":"image too large: 20000x20000 exceeds the limit of 100000000 pixels"' "$T/out6d" ||
    fail "pixel limit: big.png record: $(cat "$T/out6d")"
grep -q '"file_name":"huge.png","error":' "$T/out6d" || fail "pixel limit: huge.png record: $(cat "$T/out6d")"
[ "$(wc -l < "$T/log4c")" -eq 1 ] && grep -q '"file": "01.png"' "$T/log4c" || fail "pixel limit: sent $(cat "$T/log4c")"
cap --max-pixels 100 < "$T/big.jsonl" 2> /dev/null | grep -q '"file_name":"01.png","error":"image too large: 44x33' ||
    fail "--max-pixels 100"
rm -f "$T/img/huge.png" "$T/img/big.png"
stop_server

echo "--- --keep-order: records out in input order, whatever order they finish in"
printf '{"sub/00.jpg": ["slow:1.2"], "01.png": ["500", "ok"], "04.png": ["malformed", "ok"]}' > "$T/faults_o.json"
start_server "$T/log4d" --model "$MODEL" --api-key "$DF_TEST_KEY" --faults "$T/faults_o.json"
printf 'not json\n{"file_name":"missing.png"}\n' | cat "$T/twelve.jsonl" - > "$T/order.jsonl"
cap -j 4 --retry-wait 0.05 --keep-order < "$T/order.jsonl" > "$T/out6e" 2> /dev/null
$PY - "$T/order.jsonl" "$T/out6e" <<'EOF' || fail "--keep-order"
import json, sys
want = [json.loads(l).get("file_name") if l.startswith("{") else None for l in open(sys.argv[1])]
got = [json.loads(l).get("file_name") for l in open(sys.argv[2])]
if got != want:
    sys.exit("order %s, want %s" % (got, want))
print("keep-order ok")
EOF
stop_server

echo "--- --resume and reruns send no request twice"
cat > "$T/faults2.json" <<'EOF'
{"sub/00.jpg": ["500", "500", "ok"], "sub/03.jpg": ["503", "503", "503"]}
EOF
start_server "$T/log5" --model "$MODEL" --api-key "$DF_TEST_KEY" --faults "$T/faults2.json"
cap --retries 1 --retry-wait 0.05 < "$T/twelve.jsonl" > "$T/run1"
[ "$(grep -c '"error"' "$T/run1")" -eq 2 ] || fail "resume: run 1 should fail twice"
cp "$T/log5" "$T/log5a"
cap --retries 1 --retry-wait 0.05 --resume "$T/run1" < "$T/twelve.jsonl" >> "$T/run1"
$PY - "$T/run1" "$T/log5a" "$T/log5" <<'EOF' || fail "resume"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
first = [json.loads(l) for l in open(sys.argv[2])]
log = [json.loads(l) for l in open(sys.argv[3])]
second = log[len(first):]
done1 = {r["file_name"] for r in recs[:12] if "text" in r}
sent2 = [e["file"] for e in second]
if set(sent2) & done1:
    sys.exit("resume re-sent captioned files: %s" % (set(sent2) & done1))
if sorted(set(sent2)) != ["sub/00.jpg", "sub/03.jpg"]:
    sys.exit("resume sent %s" % sent2)
texts = sorted(r["file_name"] for r in recs if "text" in r)
if texts != sorted(set(texts)) or len(texts) != 12 or len(recs) != 14:
    sys.exit("after resume: %d records, %d texts" % (len(recs), len(texts)))
print("resume ok")
EOF
# A third run over the complete file sends nothing and writes nothing.
n_before=$(wc -l < "$T/log5")
cap --resume "$T/run1" < "$T/twelve.jsonl" > "$T/run3"
[ ! -s "$T/run3" ] && [ "$(wc -l < "$T/log5")" -eq "$n_before" ] || fail "rerun sent requests"
stop_server

echo "--- --start/--end and --shard select the right records"
start_server "$T/log6" --model "$MODEL" --api-key "$DF_TEST_KEY"
sel() { cap "$@" < "$T/all.jsonl" | $PY -c 'import json,sys; print(" ".join(str(json.loads(l)["n"]) for l in sys.stdin))' | tr ' ' '\n' | sort -n | tr '\n' ' '; }
[ "$(sel --start 3 --end 9)" = "3 4 5 6 7 8 " ] || fail "start/end: $(sel --start 3 --end 9)"
[ "$(sel --shard 2/3 --end 12)" = "1 4 7 10 " ] || fail "shard 2/3"
[ "$(sel --shard 3/4 --start 10 --end 20)" = "10 14 18 " ] || fail "shard with range"
all=$( (sel --shard 1/3; sel --shard 2/3; sel --shard 3/3) | tr ' ' '\n' | grep . | sort -n | tr '\n' ' ')
[ "$all" = "$(seq 0 39 | tr '\n' ' ')" ] || fail "shards do not partition the input"
h1=$(sel --shard 1/2 --shard-by name); h2=$(sel --shard 2/2 --shard-by name)
[ -n "$h1" ] && [ -n "$h2" ] || fail "name shards should both be non-empty"
[ "$(echo $h1 $h2 | tr ' ' '\n' | sort -n | tr '\n' ' ')" = "$(seq 0 39 | tr '\n' ' ')" ] || fail "name shards"
stop_server

echo "--- rate limit holds over every window"
start_server "$T/log7" --model "$MODEL" --api-key "$DF_TEST_KEY"
cap -j 4 --rpm 150 < "$T/twelve.jsonl" > "$T/out8"
$PY - "$T/log7" <<'EOF' || fail "rate limit"
import json, sys
t = sorted(json.loads(l)["t"] for l in open(sys.argv[1]))
rpm, slack = 150.0, 0.05    # slack: arrival jitter on a loaded machine
for i in range(len(t)):
    for j in range(i + 1, len(t)):
        # j - i + 1 requests in [t_i, t_j]: at most floor(W * rpm / 60) + 1
        if j - i > (t[j] - t[i] + slack) * rpm / 60:
            sys.exit("%d requests within %.3f s" % (j - i + 1, t[j] - t[i]))
print("rate limit ok: %d requests over %.2f s" % (len(t), t[-1] - t[0]))
EOF
check "$T/out8" "$T/log7" inputs="$T/twelve.jsonl" all_text=1
stop_server

echo "--- GNU parallel --pipe: whole lines, every input exactly once"
start_server "$T/log8" --model "$MODEL" --api-key "$DF_TEST_KEY"
parallel --pipe -N 5 -j 2 df-caption --endpoint "$URL" --model "$MODEL" \
    --api-key-env DF_TEST_KEY --root "$T/img" -q -j 2 < "$T/all.jsonl" > "$T/out9"
check "$T/out9" "$T/log8" inputs="$T/all.jsonl" all_text=1 one_request_each=1
stop_server

echo "--- SIGTERM: finished records written, the rest resumable"
start_server "$T/log9" --model "$MODEL" --api-key "$DF_TEST_KEY" --delay 0.4
df-caption --endpoint "$URL" --model "$MODEL" --api-key-env DF_TEST_KEY --root "$T/img" -q \
    -j 2 < "$T/all.jsonl" > "$T/out10" 2> "$T/err10" &
cpid=$!
sleep 2.5
t_kill=$($PY -c 'import time; print(time.time())')
kill -TERM $cpid
set +e; wait $cpid; rc=$?; set -e
[ $rc -eq 1 ] || fail "SIGTERM run exited $rc, expected 1"
grep -q 'interrupted' "$T/err10" || fail "SIGTERM: no message on stderr"
cp "$T/log9" "$T/log9a"
cap -j 4 --resume "$T/out10" < "$T/all.jsonl" > "$T/out11"
$PY - "$T/out10" "$T/out11" "$T/log9a" "$T/log9" "$t_kill" <<'EOF' || fail "SIGTERM"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
first = [json.loads(l) for l in open(sys.argv[3])]
log = [json.loads(l) for l in open(sys.argv[4])]
t_kill = float(sys.argv[5])
done = {r["file_name"] for r in a if "text" in r}
if not done or len(done) == 40:
    sys.exit("SIGTERM came too early or too late: %d captioned" % len(done))
if any(r.get("error") not in (None, "interrupted") for r in a):
    sys.exit("unexpected errors: %s" % [r for r in a if "error" in r][:2])
# Every answer the server finished well before the signal is in the output.
answered = {e["file"] for e in first if e["status"] == 200 and e["t_done"] < t_kill - 0.3}
if answered - done:
    sys.exit("answered before SIGTERM but not written: %s" % (answered - done))
# The resumed run sends only what was not captioned, and completes the set.
sent2 = [e["file"] for e in log[len(first):]]
if set(sent2) & done:
    sys.exit("resume re-sent %s" % (set(sent2) & done))
texts = sorted([r["file_name"] for r in a + b if "text" in r])
if len(texts) != 40 or len(set(texts)) != 40:
    sys.exit("after resume: %d captions, %d distinct" % (len(texts), len(set(texts))))
print("sigterm ok: %d done before the signal, %d after" % (len(done), len(b)))
EOF
check "$T/out10" "$T/log9"
stop_server
echo "--- pipelines/caption.sh: per-machine shards, then GNU parallel over --sshloginfile"
cp "$T/all.jsonl" "$T/img/metadata.jsonl"
printf '{"04.png": ["503", "503"]}' > "$T/faults3.json"
start_server "$T/log10" --model "$MODEL" --api-key "$DF_TEST_KEY" --faults "$T/faults3.json"
export API_KEY_ENV=DF_TEST_KEY CAPTION_FLAGS="--endpoint $URL --model $MODEL --retries 1 --retry-wait 0.05"
set +e; SHARD=1/2 bash pipelines/caption.sh "$T/img" 2> "$T/err12"; rc=$?; set -e
[ $rc -eq 1 ] && grep -q '1 records still without a caption' "$T/err12" || fail "shard 1/2 with a failure: rc $rc"
SHARD=1/2 bash pipelines/caption.sh "$T/img" 2> "$T/err12" || fail "shard 1/2 rerun"
SHARD=2/2 bash pipelines/caption.sh "$T/img" 2> "$T/err12" || fail "shard 2/2"
cat "$T/img/captions-1-of-2.jsonl" "$T/img/captions-2-of-2.jsonl" > "$T/shards.jsonl"
$PY - "$T/shards.jsonl" "$T/log10" <<'EOF' || fail "pipeline shards"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
log = [json.loads(l) for l in open(sys.argv[2])]
texts = [r["file_name"] for r in recs if "text" in r]
if len(texts) != 40 or len(set(texts)) != 40:
    sys.exit("%d captions, %d distinct" % (len(texts), len(set(texts))))
n = {}
for e in log:
    n[e["file"]] = n.get(e["file"], 0) + 1
if any(c != 1 for f, c in n.items() if f != "04.png") or n.get("04.png") != 3:
    sys.exit("requests per file: %s" % n)
print("pipeline shards ok")
EOF
: > "$T/log10"
printf ':\n:\n' > "$T/hosts.txt"
HOSTS=$T/hosts.txt CHUNK=7 OUT=$T/img/all-captions.jsonl bash pipelines/caption.sh "$T/img" 2> "$T/err13" ||
    fail "pipeline over hosts: $(cat "$T/err13")"
check "$T/img/all-captions.jsonl" "$T/log10" inputs="$T/all.jsonl" all_text=1 one_request_each=1
HOSTS=$T/hosts.txt OUT=$T/img/all-captions.jsonl bash pipelines/caption.sh "$T/img" 2> "$T/err13" || fail "rerun"
[ "$(wc -l < "$T/log10")" -eq 40 ] && [ "$(wc -l < "$T/img/all-captions.jsonl")" -eq 40 ] || fail "pipeline rerun sent or wrote again"
unset API_KEY_ENV CAPTION_FLAGS
stop_server
# Under SAN=1 a sanitizer report fails the exit status already; also look
# at the stderr files of runs whose status is not the point.
if grep -l 'Sanitizer' "$T"/err* 2>/dev/null; then fail "sanitizer report above"; fi
echo "all df-caption tests passed"
