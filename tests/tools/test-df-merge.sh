#!/usr/bin/env bash
# test-df-merge.sh - df-merge on shards it builds itself: overlaps, conflicts
# of each kind (text, image, both) under each policy, content duplicates under
# other names, missing and corrupt images, malformed lines, records without
# text or with an upstream error, --out with hard links (link counts) and
# copies, exit codes, and the man page's EXAMPLES. On stdout, file_name is
# rewritten to resolve from the output file's directory (here: the test
# directory, so "red.jpg" of a/metadata.jsonl becomes "a/red.jpg").
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
M="$DF_BIN/df-merge"
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-merge-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; "$@" || fail "$what"; }
# Field of the record whose file_name is $2, from JSONL file $1.
field() { $PY -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("file_name") == sys.argv[2]:
        print(r.get(sys.argv[3], "<absent>")); break
else:
    print("<no record>")' "$1" "$2" "$3"; }
count() { grep -c "$2" "$1" || true; }
# "key N" out of the summary line in stderr file $1.
summ() { grep -o "$2 [0-9]*" "$1" | head -1 | awk '{print $NF}'; }

cd "$T"
mkdir -p a/sub b c
$PY - <<'EOF'
from PIL import Image
def img(path, rgb, fmt=None):
    Image.new("RGB", (16, 12), rgb).save(path, fmt)
img("a/red.jpg", (250, 0, 0)); img("a/green.png", (0, 250, 0)); img("a/sub/blue.jpg", (0, 0, 250))
img("a/same.jpg", (9, 9, 9)); img("a/ctext.jpg", (50, 50, 50)); img("a/cimg.png", (1, 2, 3))
img("a/cboth.png", (4, 5, 6)); img("a/notext.jpg", (7, 7, 7))
img("b/cimg.png", (200, 100, 0)); img("b/cboth.png", (100, 200, 0)); img("b/other.jpg", (70, 80, 90))
data = open("a/red.jpg", "rb").read()
open("b/red-again.jpg", "wb").write(data)              # same bytes, another name
open("b/same.jpg", "wb").write(open("a/same.jpg", "rb").read())
open("b/ctext.jpg", "wb").write(open("a/ctext.jpg", "rb").read())
open("b/broken.jpg", "wb").write(data[: len(data) // 2])   # truncated JPEG
img("c/c1.jpg", (33, 66, 99))
EOF
cat > a/metadata.jsonl <<'EOF'
{"file_name": "red.jpg", "text": "a red face", "width": 16}
{"file_name": "green.png", "text": "a green face"}
{"file_name": "sub/blue.jpg", "text": "a blue face"}
{"file_name": "same.jpg", "text": "same"}
{"file_name": "ctext.jpg", "text": "caption from a"}
{"file_name": "cimg.png", "text": "same caption"}
{"file_name": "cboth.png", "text": "both a"}
{"file_name": "notext.jpg"}
EOF
cat > b/metadata.jsonl <<'EOF'
{"file_name": "same.jpg", "text": "same"}
{"file_name": "ctext.jpg", "text": "caption from b"}
{"file_name": "cimg.png", "text": "same caption"}
{"file_name": "cboth.png", "text": "both b", "source": "laion-face"}
{"file_name": "red-again.jpg", "text": "a red face, again"}
{"file_name": "other.jpg", "text": "other"}
{"file_name": "missing.jpg", "text": "nowhere"}
{"file_name": "broken.jpg", "text": "half an image"}
this is not json
{"file_name": "x.jpg", "error": "HTTP 404"}
{"text": "no file name"}
EOF
printf '{"file_name": "c/c1.jpg", "text": "from stdin"}\n' > stdin.jsonl

# 1. Default policy (first), shards and stdin, name dedupe only.
"$M" -q a/metadata.jsonl b/metadata.jsonl - <stdin.jsonl >o1 2>e1
check "default: exit 0" [ $? -eq 0 ]
check "default: in 20" [ "$(summ e1 'in')" = 20 ]
check "default: duplicates 1 (same.jpg)" [ "$(summ e1 duplicates)" = 1 ]
check "default: conflicts 3" [ "$(summ e1 conflicts)" = 3 ]
check "default: each conflict reported" [ "$(count e1 'conflict: ')" = 3 ]
check "default: text conflict named" grep -q '"ctext.jpg": a/metadata.jsonl:5 and b/metadata.jsonl:2 have different text' e1
check "default: image conflict named" grep -q '"cimg.png".*different image' e1
check "default: both conflict named" grep -q '"cboth.png".*different text and image' e1
check "default: errors 3 (bad line, upstream, no file_name)" [ "$(summ e1 errors)" = 3 ]
check "default: without text 1" [ "$(summ e1 'without text')" = 1 ]
check "default: out 16" [ "$(summ e1 out)" = 16 ] && check "default: 16 lines" [ "$(wc -l <o1)" = 16 ]
check "default: keeps first text" [ "$(field o1 a/ctext.jpg text)" = "caption from a" ]
check "default: extra fields kept" [ "$(field o1 a/red.jpg width)" = 16 ]
check "default: malformed line kept with error naming its file" grep -q '"error": *"b/metadata.jsonl: line 9' o1
check "default: names resolve from the output" $PY -c '
import json, os, sys
recs = [json.loads(l) for l in open("o1")]
sys.exit(0 if all(os.path.isfile(r["file_name"]) for r in recs if "error" not in r and r["file_name"] != "missing.jpg" and not r["file_name"].endswith("missing.jpg")) else 1)'
# Saved in another directory: names are relative to it.
mkdir -p sub
"$M" -q a/metadata.jsonl >sub/o1s 2>/dev/null
check "stdout in sub/: relative to it" [ "$(field sub/o1s ../a/sub/blue.jpg text)" = "a blue face" ]
check "stdout in sub/: all resolve" $PY -c '
import json, os, sys
recs = [json.loads(l) for l in open("sub/o1s")]
sys.exit(0 if recs and all(os.path.isfile(os.path.join("sub", r["file_name"])) for r in recs) else 1)'
# A line that is not UTF-8 keeps its bytes (base64), its error names the file.
printf '{"file_name": "red.jpg", "text": "caf\xe9"}\n' > c/latin1.jsonl
"$M" -q c/latin1.jsonl >o1u 2>/dev/null
check "non-UTF-8 line: error names file and line" grep -q '"error":"c/latin1.jsonl: line 1: ' o1u
check "non-UTF-8 line: bytes kept" [ "$($PY -c 'import json,base64,sys; print(base64.b64decode(json.loads(open(sys.argv[1]).readline())["raw_base64"]) == open(sys.argv[2], "rb").read().rstrip(b"\n"))' o1u c/latin1.jsonl)" = True ]
check "default: upstream error kept" [ "$(field o1 x.jpg error)" = "HTTP 404" ]
check "default: no file_name gets error" grep -q '"text":"no file name","error":"no file_name"' o1
check "default: stdin record" [ "$(field o1 c/c1.jpg text)" = "from stdin" ]

# 2. keep last: the later record takes the earlier one's place.
"$M" -q --on-conflict last a/metadata.jsonl b/metadata.jsonl >o2 2>e2
check "last: text" [ "$(field o2 b/ctext.jpg text)" = "caption from b" ]
check "last: both" [ "$(field o2 b/cboth.png text)" = "both b" ]
check "last: position kept" [ "$($PY -c 'import json,sys; print([json.loads(l).get("file_name") for l in open(sys.argv[1])].index("b/ctext.jpg"))' o2)" = 4 ]

# 3. rename: prefix with source, else with the input number.
#    (Names are those of --out: on stdout file_name is the image's path.)
"$M" -q -c rename --out d3 a/metadata.jsonl b/metadata.jsonl >/dev/null 2>e3
o3=d3/metadata.jsonl
check "rename: source prefix" [ "$(field $o3 laion-face/cboth.png renamed_from)" = cboth.png ]
check "rename: input prefix" [ "$(field $o3 input2/ctext.jpg text)" = "caption from b" ]
check "rename: original kept" [ "$(field $o3 ctext.jpg text)" = "caption from a" ]
check "rename: reported" grep -q 'renaming the second to "input2/cimg.png"' e3
"$M" -q -c rename --out d3b a/metadata.jsonl b/metadata.jsonl b/metadata.jsonl >/dev/null 2>/dev/null
check "rename: taken prefix gets -2" [ "$(field d3b/metadata.jsonl laion-face-2/cboth.png text)" = "both b" ]
check "rename: input number" [ "$(field d3b/metadata.jsonl input3/ctext.jpg text)" = "caption from b" ]

# 4. --source fills source for the inputs that follow, keeps existing ones.
"$M" -q --source ffhq a/metadata.jsonl --source easyportrait b/metadata.jsonl >o4 2>/dev/null
check "source: first input" [ "$(field o4 a/red.jpg source)" = ffhq ]
check "source: second input" [ "$(field o4 b/other.jpg source)" = easyportrait ]
"$M" -q --on-conflict last --source ffhq a/metadata.jsonl --source easyportrait b/metadata.jsonl >o4b 2>/dev/null
check "source: existing kept" [ "$(field o4b b/cboth.png source)" = laion-face ]

"$M" -q --source-dirs --source ffhq a/metadata.jsonl --source '' b/metadata.jsonl --out dsd >o4c 2>e4c
check "source-dirs: prefixed" [ "$(field dsd/metadata.jsonl ffhq/sub/blue.jpg text)" = "a blue face" ]
check "source-dirs: input number" [ "$(field dsd/metadata.jsonl input2/ctext.jpg text)" = "caption from b" ]
check "source-dirs: existing source" [ "$(field dsd/metadata.jsonl laion-face/cboth.png text)" = "both b" ]
check "source-dirs: placed" cmp -s b/cimg.png dsd/input2/cimg.png
check "source-dirs: no conflicts" [ "$(summ e4c conflicts)" = 0 ]

# 5. --dedupe content: same bytes and caption under another name are a
#    duplicate; same bytes with another caption a conflict (policy decides);
#    unreadable images are errors counted as missing.
printf '{"file_name": "../b/red-again.jpg", "text": "a red face"}\n' > c/cdup.jsonl
"$M" -q --dedupe content a/metadata.jsonl b/metadata.jsonl c/cdup.jsonl >o5 2>e5
check "content: red-again dropped" [ "$(field o5 b/red-again.jpg text)" = "<no record>" ]
check "content: counted" grep -q 'duplicates 2 (1 by content)' e5
check "content: other caption is a conflict" grep -q 'conflict: "red.jpg" and "red-again.jpg": a/metadata.jsonl:1 and b/metadata.jsonl:5 have the same image and different text; keeping the first' e5
check "content: conflicts 4" [ "$(summ e5 conflicts)" = 4 ]
"$M" -q --dedupe content -c last a/metadata.jsonl b/metadata.jsonl >o5l 2>/dev/null
check "content, last: later caption" [ "$(field o5l b/red-again.jpg text)" = "a red face, again" ] && check "content, last: earlier gone" [ "$(field o5l a/red.jpg text)" = "<no record>" ]
check "content, last: in its place" [ "$(head -1 o5l | grep -c red-again)" = 1 ]
"$M" -q --dedupe content -c rename a/metadata.jsonl b/metadata.jsonl >o5r 2>/dev/null
check "content, rename: both captions" [ "$(field o5r b/red-again.jpg text)" = "a red face, again" ] && check "content, rename: first too" [ "$(field o5r a/red.jpg text)" = "a red face" ]
"$M" -q --dedupe content -c fail a/metadata.jsonl b/metadata.jsonl >o5f 2>e5f
check "content, fail: exit 1" [ $? -eq 1 ] && check "content, fail: nothing written" [ ! -s o5f ]
check "content: missing 1" [ "$(summ e5 missing)" = 1 ]
check "content: missing has error" grep -q '"file_name":"missing.jpg".*"error":"cannot read image' o5
check "content: truncated file still hashes (not verified)" [ "$(field o5 b/broken.jpg error)" = "<absent>" ]

# 6. --verify: missing and corrupt images become errors; --strict exits 1.
"$M" -q --verify a/metadata.jsonl b/metadata.jsonl >o6 2>e6
check "verify: exit 0" [ $? -eq 0 ]
check "verify: missing" [ "$(summ e6 missing)" = 1 ]
check "verify: missing error" grep -q '"file_name":"missing.jpg".*"error":"image not found' o6
check "verify: corrupt error" grep -q '"file_name":"broken.jpg".*"error":"image does not decode' o6
check "verify: errors 5" [ "$(summ e6 errors)" = 5 ]
"$M" -q --verify --strict a/metadata.jsonl b/metadata.jsonl >/dev/null 2>e6s
check "strict: exit 1" [ $? -eq 1 ]
check "strict: says why" grep -q 'strict: 5 failed' e6s
"$M" -q --verify --strict a/metadata.jsonl >/dev/null 2>&1
check "strict: clean input exits 0" [ $? -eq 0 ]

# 7. --require-text and --drop-errors drop, and count.
"$M" -q --require-text --drop-errors --verify a/metadata.jsonl b/metadata.jsonl >o7 2>e7
check "require-text: dropped" [ "$(field o7 notext.jpg text)" = "<no record>" ]
check "require-text: counted" grep -q 'without text 1 (1 dropped)' e7
check "drop-errors: none out" [ "$(grep -c '"error"' o7)" = 0 ]
check "drop-errors: counted" grep -q 'errors 5 (5 dropped)' e7
check "drop: in = out + dups + conflicts(first) + dropped" [ "$(summ e7 out)" = $((19 - 1 - 3 - 5 - 1)) ]

# 8. --out: hard links, directories created, metadata.jsonl, failures on stdout.
links0=$(stat -c %h a/red.jpg)
"$M" -q -c rename --out ds a/metadata.jsonl b/metadata.jsonl >o8 2>e8
check "out: exit 0" [ $? -eq 0 ]
check "out: metadata" [ -f ds/metadata.jsonl ]
check "out: records" [ "$(wc -l <ds/metadata.jsonl)" = "$(summ e8 out)" ]
check "out: no error records inside" [ "$(grep -c '"error"' ds/metadata.jsonl)" = 0 ]
check "out: failures on stdout" [ "$(grep -c '"error"' o8)" = 4 ]
check "out: missing counted" [ "$(summ e8 missing)" = 1 ]
check "out: hard link" [ "$(stat -c %h a/red.jpg)" = $((links0 + 1)) ] && check "out: same inode" [ "$(stat -c %i a/red.jpg)" = "$(stat -c %i ds/red.jpg)" ]
check "out: subdir created" [ "$(stat -c %i a/sub/blue.jpg)" = "$(stat -c %i ds/sub/blue.jpg)" ]
check "out: renamed file placed" cmp -s b/cimg.png ds/input2/cimg.png
check "out: renamed from source" cmp -s b/cboth.png ds/laion-face/cboth.png
check "out: first kept at the name" cmp -s a/cimg.png ds/cimg.png
check "out: linked count" grep -q 'linked 14, copied 0' e8
# Every record in the dataset points at a file in it.
check "out: self-contained" $PY -c '
import json, os, sys
recs = [json.loads(l) for l in open("ds/metadata.jsonl")]
sys.exit(0 if all(os.path.isfile(os.path.join("ds", r["file_name"])) for r in recs) else 1)'
# Rerunning over the same directory is fine (same files: nothing to do).
"$M" -q -c rename --out ds a/metadata.jsonl b/metadata.jsonl >/dev/null 2>e8b
check "out: rerun" [ $? -eq 0 ] && check "out: rerun keeps links" [ "$(stat -c %h a/red.jpg)" = $((links0 + 1)) ]

# 9. --copy: independent copies with the same bytes.
links0=$(stat -c %h a/sub/blue.jpg)
"$M" -q --copy --out dc a/metadata.jsonl >/dev/null 2>e9
check "copy: exit 0" [ $? -eq 0 ]
check "copy: bytes" cmp -s a/sub/blue.jpg dc/sub/blue.jpg
check "copy: not a link" [ "$(stat -c %h a/sub/blue.jpg)" = "$links0" ] && check "copy: own inode" [ "$(stat -c %h dc/sub/blue.jpg)" = 1 ]
check "copy: counted" grep -q 'linked 0, copied 8' e9

# 10. --out refuses names that leave the dataset.
printf '{"file_name": "../a/red.jpg", "text": "escape"}\n' > c/esc.jsonl
"$M" -q --out de c/esc.jsonl >o10 2>/dev/null
check "escape: error" grep -q 'would leave the dataset directory' o10
check "escape: dataset empty" [ ! -s de/metadata.jsonl ]
# A name that only seems to leave is normalised and kept.
printf '{"file_name": "sub/../sub/blue.jpg", "text": "inside"}\n' > a/norm.jsonl
"$M" -q --out dn a/norm.jsonl >o10n 2>/dev/null
check "normalised: not refused" [ ! -s o10n ] && check "normalised: placed" cmp -s a/sub/blue.jpg dn/sub/blue.jpg
check "normalised: name" [ "$(field dn/metadata.jsonl sub/blue.jpg text)" = inside ]

# 11. Usage, help, and run failures.
"$M" --help >h 2>&1
check "help: exit 0" [ $? -eq 0 ] && check "help: usage" grep -q '^Usage: df-merge \[OPTIONS\]' h
"$M" --bogus >/dev/null 2>eu; check "bad option: exit 2" [ $? -eq 2 ]
"$M" --on-conflict maybe a/metadata.jsonl >/dev/null 2>eu; check "bad policy: exit 2" [ $? -eq 2 ]
check "bad policy: message" grep -q "^df-merge: --on-conflict: expected first, last, rename or fail" eu
"$M" --dedupe pixels a/metadata.jsonl >/dev/null 2>eu; check "bad dedupe: exit 2" [ $? -eq 2 ]
"$M" - - </dev/null >/dev/null 2>eu; check "stdin twice: exit 2" [ $? -eq 2 ]
"$M" a/metadata.jsonl nope/metadata.jsonl >o11 2>eu; check "missing input: exit 1" [ $? -eq 1 ]
check "missing input: named" grep -q '^df-merge: nope/metadata.jsonl: No such file' eu
check "missing input: nothing written" [ ! -s o11 ]
if [ -w /dev/full ]; then
    "$M" a/metadata.jsonl >/dev/full 2>eu; check "full disk: exit 1" [ $? -eq 1 ]
fi

# 12. The man page's EXAMPLES (run in a dataset layout like theirs).
mkdir -p ex/alice ex/bob && cp a/red.jpg a/green.png ex/alice/ && cp b/other.jpg a/red.jpg ex/bob/
printf '{"file_name":"red.jpg","text":"r"}\n{"file_name":"green.png","text":"g"}\n' > ex/alice/metadata.jsonl
printf '{"file_name":"other.jpg","text":"o"}\n{"file_name":"red.jpg","text":"R"}\n' > ex/bob/metadata.jsonl
(cd ex && "$M" alice/metadata.jsonl bob/metadata.jsonl > merged.jsonl 2>/dev/null) ; check "ex1" [ "$(wc -l <ex/merged.jsonl)" = 3 ]
(cd ex && "$M" --dedupe content --on-conflict rename --verify --out dataset alice/metadata.jsonl bob/metadata.jsonl 2>/dev/null)
check "ex2" [ "$(wc -l <ex/dataset/metadata.jsonl)" = 4 ] && check "ex2 renamed" [ -f ex/dataset/input2/red.jpg ]
(cd ex && "$M" --root bob --verify --drop-errors - < bob/metadata.jsonl > bob.jsonl 2>/dev/null)
check "ex3" [ $? -eq 0 ] && check "ex3 out" [ "$(wc -l <ex/bob.jsonl)" = 2 ]
(cd ex && "$M" --source ffhq alice/metadata.jsonl \
    --source laion-face bob/metadata.jsonl > all.jsonl 2>/dev/null)
check "ex4" [ "$(field ex/all.jsonl alice/green.png source)" = ffhq ] && check "ex4 b" [ "$(field ex/all.jsonl bob/other.jpg source)" = laion-face ]
# diffyface(7)'s example.
(cd ex && "$M" --verify --out dataset7 alice/metadata.jsonl bob/metadata.jsonl 2>/dev/null)
check "diffyface.7 example" [ $? -eq 0 ] && check "diffyface.7 example out" [ "$(wc -l <ex/dataset7/metadata.jsonl)" = 3 ]

echo "test-df-merge: $fails failed"
[ "$fails" -eq 0 ]
