#!/usr/bin/env bash
# test-pipeline-dataset.sh - pipelines/dataset.mk end to end on a tiny
# generated sample of each source: FFHQ-like PNGs, EasyPortrait-like JPEGs in
# nested folders (one a copy of an FFHQ image: a cross-source duplicate),
# LAION-Face-like JPEGs of which one is too small and one too large for the
# 512..2048 filter, an FFHQ image below SIZE (refused by --min-side, not
# upscaled), and a corrupt file. Checks the dataset records, sources, sizes,
# links, the failed records, that a second make does nothing, that an image
# added deep in a source is picked up, and that an image deleted from a raw
# folder leaves neither a record nor a file in the dataset.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$REPO/bin}"
PY=/usr/bin/python3
# Under "make test" the parent's flags (-j, jobserver, variables) would leak
# into the pipeline's make; this test runs it as a user would.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
T=$(mktemp -d /tmp/df-test-pipeline-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; "$@" || fail "$what"; }

cd "$T"
mkdir -p raw/ffhq raw/ep/train raw/ep/test raw/laion
$PY - <<'PYEOF'
from PIL import Image
import random
random.seed(1)
def noise(w, h):   # distinct, decodable content per image
    im = Image.new("RGB", (w, h))
    im.putdata([(random.randrange(256), random.randrange(256), random.randrange(256))
                for _ in range(w * h)])
    return im
for i in range(3):
    noise(96, 96).save(f"raw/ffhq/{i:05d}.png")
noise(40, 40).save("raw/ffhq/tiny.png")                 # below SIZE=64: --min-side
noise(120, 90).save("raw/ep/train/a.jpg", quality=90)
noise(90, 120).save("raw/ep/test/a.jpg", quality=90)    # same base name as train/a.jpg
open("raw/ep/train/dup.png", "wb").write(open("raw/ffhq/00001.png", "rb").read())
noise(600, 700).save("raw/laion/ok.jpg", quality=80)
noise(300, 400).save("raw/laion/small.jpg", quality=80)   # shorter side < 512
noise(2100, 600).save("raw/laion/wide.jpg", quality=80)   # longer side > 2048
open("raw/laion/corrupt.jpg", "wb").write(b"\xff\xd8\xff\xe0 not really a jpeg")
PYEOF
# Raw folders older than anything make writes, so that only a change counts.
touch -d '1 hour ago' raw/ffhq raw/ep raw/laion

run_make() {
    make -s -f "$REPO/pipelines/dataset.mk" BIN="$DF_BIN/" FFHQ=raw/ffhq EASYPORTRAIT=raw/ep \
        LAION_FACE=raw/laion SIZE=64 JOBS=2 WORK=work OUT=dataset "$@"
}
run_make >make.out 2>make.err
check "make: exit 0" [ $? -eq 0 ]
cat make.err >&2

$PY - <<'PYEOF' || fail "dataset contents"
import json, os, sys
from PIL import Image
recs = [json.loads(l) for l in open("dataset/metadata.jsonl")]
names = sorted(r["file_name"] for r in recs)
want = sorted(["ffhq/00000.jpg", "ffhq/00001.jpg", "ffhq/00002.jpg",
               "easyportrait/train/a.jpg", "easyportrait/test/a.jpg", "laion-face/ok.jpg"])
ok = True
def bad(msg):
    global ok
    print("dataset:", msg, file=sys.stderr); ok = False
if names != want:
    bad(f"file names {names}, expected {want}")
for r in recs:
    src = r["file_name"].split("/")[0]
    if r.get("source") != src:
        bad(f"{r['file_name']}: source {r.get('source')}")
    p = os.path.join("dataset", r["file_name"])
    im = Image.open(p); im.load()
    if im.size != (64, 64) or (r.get("width"), r.get("height")) != (64, 64):
        bad(f"{p}: size {im.size}, record {r.get('width')}x{r.get('height')}")
    if os.stat(p).st_nlink < 2:
        bad(f"{p}: not hard-linked from work/")
    if "error" in r:
        bad(f"{p}: error in dataset: {r['error']}")
failed = [json.loads(l) for l in open("work/failed.jsonl")]
errs = sorted(os.path.basename(r["file_name"]) + ": " + r["error"].split(":")[0] for r in failed)
srcs = sorted(r.get("source") for r in failed)
if len(failed) != 4 or not all("error" in r for r in failed) or srcs != ["ffhq"] + ["laion-face"] * 3:
    bad(f"failed records: {failed}")
print("failed:", errs, file=sys.stderr)
sys.exit(0 if ok else 1)
PYEOF
check "merge summary: 1 content duplicate" grep -q 'duplicates 1 (1 by content)' make.err
check "merge summary: errors 4" grep -q 'errors 4 (0 dropped)' make.err
check "ffhq filter: smaller than --min-side" grep -q '"file_name":"tiny.png".*"error":"too small: 40x40, smaller than --min-side 64"' work/failed.jsonl
check "laion filter: too small" grep -q '"small\.jpg".*too small\|small\.jpg.*"error":"[^"]*small' work/failed.jsonl
check "laion filter: too large" grep -q 'wide\.jpg.*"error":"[^"]*large' work/failed.jsonl

# Nothing changed: a second make runs nothing.
run_make >make2.out 2>make2.err
check "rerun: exit 0" [ $? -eq 0 ]
check "rerun: nothing done" [ ! -s make2.err ] || cat make2.err >&2
# A new image in a source: only that source is resized again, then merged.
$PY -c 'from PIL import Image; Image.new("RGB", (80, 80), (1, 2, 3)).save("raw/ffhq/00003.png")'
run_make >make3.out 2>make3.err
check "update: exit 0" [ $? -eq 0 ]
check "update: new record" grep -q '"file_name":"ffhq/00003.jpg"' dataset/metadata.jsonl
check "update: one source resized" [ "$(grep -c '^df-resize: ' make3.err)" = 1 ]
# A new image in a subfolder (the source's top folder keeps its time).
touch -r raw/ep raw/ep.time
$PY -c 'from PIL import Image; Image.new("RGB", (70, 90), (4, 5, 6)).save("raw/ep/train/new.png")'
touch -r raw/ep.time raw/ep
run_make >make4.out 2>make4.err
check "deep add: exit 0" [ $? -eq 0 ]
check "deep add: new record" grep -q '"file_name":"easyportrait/train/new.jpg"' dataset/metadata.jsonl
check "deep add: image in dataset" [ -f dataset/easyportrait/train/new.jpg ]
check "deep add: one source resized" [ "$(grep -c '^df-resize: ' make4.err)" = 1 ]
# An image deleted from a raw folder: no record, no file left behind.
rm raw/ffhq/00002.png
run_make >make5.out 2>make5.err
check "delete: exit 0" [ $? -eq 0 ]
check "delete: record gone" [ "$(grep -c '"file_name":"ffhq/00002.jpg"' dataset/metadata.jsonl)" = 0 ]
check "delete: file gone from the dataset" [ ! -e dataset/ffhq/00002.jpg ]
check "delete: resized copy gone from work" [ ! -e work/ffhq/00002.jpg ]
check "delete: dataset holds exactly what metadata.jsonl names" $PY -c '
import json, os, sys
named = {json.loads(l)["file_name"] for l in open("dataset/metadata.jsonl")}
present = {os.path.relpath(os.path.join(d, f), "dataset") for d, _, fs in os.walk("dataset") for f in fs}
present.discard("metadata.jsonl")
sys.exit(0 if named == present else print(sorted(named ^ present), file=sys.stderr) or 1)'
run_make >make6.out 2>make6.err
check "after delete: rerun does nothing" [ ! -s make6.err ] || cat make6.err >&2
# clean works without any source set.
make -s -f "$REPO/pipelines/dataset.mk" WORK=work OUT=dataset clean
check "clean" [ ! -e work ] && check "clean dataset" [ ! -e dataset ]

echo "test-pipeline-dataset: $fails failed"
[ "$fails" -eq 0 ]
