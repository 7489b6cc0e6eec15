#!/usr/bin/env bash
# test-df-resize.sh - df-resize on an image tree this test builds with
# Pillow (python3-pil): pixel values of solid images after each crop mode,
# resampling quality against Pillow's LANCZOS (PSNR printed and floored),
# EXIF-rotated input against Pillow's exif_transpose, name collisions,
# every kind of broken input (missing, zero-byte, truncated, CRC error,
# not an image, oversized header, too small / too large, a scanned name
# that is not UTF-8, an output that cannot be written), malformed lines,
# field pass-through, -j2 == -j1, exit codes, and the man page's EXAMPLES.
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
R="$DF_BIN/df-resize"
MAN=$(cd "$(dirname "$0")/../.." && pwd)/man/df-resize.1
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-resize-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; "$@" || fail "$what"; }
# Field $3 of the record whose source_file (or file_name) is $2, in JSONL file $1.
field() { $PY -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("source_file", r.get("file_name")) == sys.argv[2]:
        print(r.get(sys.argv[3], "<absent>")); break
else:
    print("<no record>")' "$1" "$2" "$3"; }
matches() { [[ $1 =~ $2 ]]; }
summ() { grep -o "[0-9]* $2" "$1" | tail -1 | awk '{print $1}'; }

cd "$T"
mkdir -p tree/a tree/b tree/deep/er
$PY - <<'EOF'
import io, struct, zlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

def natural(w, h, seed):
    """Smooth waves, hard-edged ellipses, mild blur and noise: photo-like
    spectra, so that the resampling filters differ where it matters."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.full((h, w, 3), 128, np.float32)
    for c in range(3):
        for _ in range(5):
            fx, fy = r.uniform(0.003, 0.06, 2)
            a[..., c] += r.uniform(10, 35) * np.sin(6.28 * (x * fx + y * fy) + r.uniform(0, 6.28))
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(25):
        x0, y0 = int(r.integers(0, w)), int(r.integers(0, h))
        d.ellipse([x0, y0, x0 + int(r.integers(5, w // 3)), y0 + int(r.integers(5, h // 3))],
                  fill=tuple(int(v) for v in r.integers(0, 255, 3)))
    im = im.filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(im).astype(np.float32) + r.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

natural(400, 300, 1).save("tree/natural.png")
natural(320, 480, 2).save("tree/a/photo.jpg", quality=95)
Image.new("RGB", (50, 80), (10, 200, 30)).save("tree/solid.png")
# RGBA with alpha 0 over a red color: must come out white
Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save("tree/clear.png")
# EXIF orientation 6 (stored 60 x 40, displayed 40 x 60)
ex = Image.Exif(); ex[0x0112] = 6
natural(60, 40, 3).save("tree/rot6.jpg", quality=95, exif=ex)
# collisions: the same base name in two directories and two formats
Image.new("RGB", (20, 20), (255, 0, 0)).save("tree/a/x.jpg", quality=95)
Image.new("RGB", (20, 20), (0, 0, 255)).save("tree/a/x.png")
Image.new("RGB", (20, 20), (0, 255, 0)).save("tree/b/x.jpg", quality=95)
natural(64, 48, 4).save("tree/deep/er/UPPER.JPEG", quality=90)
# broken inputs
open("tree/zero.jpg", "wb").close()
open("tree/notimage.png", "wb").write(b"this is not an image\n" * 20)
data = open("tree/a/photo.jpg", "rb").read()
open("tree/trunc.jpg", "wb").write(data[: len(data) // 2])
png = bytearray(open("tree/solid.png", "rb").read())
i = png.index(b"IDAT"); png[i + 10] ^= 0xFF          # CRC now wrong
open("tree/crc.png", "wb").write(png)
# IHDR claiming 100000 x 100000 with a valid CRC, followed by a tiny IDAT
ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open("tree/bomb.png", "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                                   chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
open("tree/readme.txt", "w").write("not scanned\n")
EOF

# --- scan mode, PNG output (lossless, so pixels compare exactly) ---
"$R" --root tree --scan --out out --format png --crop none --size 160 --quiet >scan.jsonl 2>scan.err
check "scan exit 0 with failed records" [ $? -eq 0 ]
check "records = image files (14)" [ "$(wc -l <scan.jsonl)" -eq 14 ]
check "summary counts records" [ "$(summ scan.err records)" = 14 ]
check "summary counts failures (5)" [ "$(summ scan.err failed)" = 5 ]
check "summary counts resized (9)" [ "$(summ scan.err resized)" = 9 ]
check "readme.txt not scanned" [ "$(grep -c readme scan.jsonl)" -eq 0 ]
for f in zero.jpg notimage.png trunc.jpg crc.png bomb.png; do
    e=$(field scan.jsonl $f error)
    check "$f has an error ($e)" [ "$e" != "<absent>" ] && [ "$e" != "<no record>" ]
done
check "zero-byte says empty" grep -q 'empty file' <(grep zero.jpg scan.jsonl)
check "truncated says premature end" grep -qi 'premature end' <(grep trunc.jpg scan.jsonl)
check "CRC error named" grep -qi 'CRC' <(grep crc.png scan.jsonl)
check "bomb refused as too large" grep -qi 'too large' <(grep bomb.png scan.jsonl)
check "bomb failed before decoding (source size known)" [ "$(field scan.jsonl bomb.png source_width)" = 100000 ]
check "upper-case .JPEG scanned" [ "$(field scan.jsonl deep/er/UPPER.JPEG file_name)" = deep/er/UPPER.png ]

# collisions: three inputs, three different outputs that all exist
n1=$(field scan.jsonl a/x.jpg file_name); n2=$(field scan.jsonl a/x.png file_name); n3=$(field scan.jsonl b/x.jpg file_name)
check "collision names distinct ($n1 $n2 $n3)" [ "$n1" != "$n2" ] && [ "$n1" != "$n3" ] && [ "$n2" != "$n3" ]
for n in "$n1" "$n2" "$n3"; do check "output $n exists" [ -f "out/$n" ]; done
check "first of a/x.* keeps the plain name" [ "$n1" = a/x.png ]
check "second gets a hash suffix" matches "$n2" '^a/x-[0-9a-f]{8}\.png$'

# pixels and sizes against Pillow
$PY - "$T" <<'EOF' || fail "pixel checks against Pillow"
import json, math, sys
import numpy as np
from PIL import Image, ImageOps
T = sys.argv[1]
recs = {r.get("source_file"): r for r in map(json.loads, open(f"{T}/scan.jsonl"))}
bad = 0
def psnr(a, b):
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = (d * d).mean()
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)
def expect(cond, what):
    global bad
    if not cond:
        print("FAIL:", what, file=sys.stderr); bad += 1
# every record's width/height is the file's
for src, r in recs.items():
    if "error" in r: continue
    im = Image.open(f"{T}/out/{r['file_name']}")
    expect(im.size == (r["width"], r["height"]), f"{src}: record size {r['width']}x{r['height']} vs file {im.size}")
# resampling: natural.png 400x300 -> 160x120, lossless in and out
r = recs["natural.png"]
expect((r["width"], r["height"]) == (160, 120), "natural.png size")
ours = Image.open(f"{T}/out/{r['file_name']}").convert("RGB")
ref = Image.open(f"{T}/tree/natural.png").convert("RGB").resize((160, 120), Image.LANCZOS)
p = psnr(ours, ref)
print(f"PSNR df-resize vs Pillow LANCZOS, 400x300 -> 160x120: {p:.1f} dB")
expect(p > 40, f"resampling PSNR {p:.1f} dB below 40")
bic = Image.open(f"{T}/tree/natural.png").convert("RGB").resize((160, 120), Image.BILINEAR)
expect(psnr(ours, ref) > psnr(ours, bic) + 3, "closer to Pillow's LANCZOS than to its BILINEAR")
# JPEG input: photo.jpg 320x480 -> 107x160 (libjpeg-turbo on both sides)
r = recs["a/photo.jpg"]
expect((r["width"], r["height"]) == (107, 160), f"photo size {r['width']}x{r['height']}")
ref = Image.open(f"{T}/tree/a/photo.jpg").convert("RGB").resize((107, 160), Image.LANCZOS)
p = psnr(Image.open(f"{T}/out/{r['file_name']}").convert("RGB"), ref)
print(f"PSNR df-resize vs Pillow LANCZOS, JPEG 320x480 -> 107x160: {p:.1f} dB")
expect(p > 40, f"JPEG-input PSNR {p:.1f}")
# EXIF orientation 6: 60x40 stored -> 40x60 upright -> 107x160
r = recs["rot6.jpg"]
expect((r["source_width"], r["source_height"]) == (40, 60), "rot6 upright source size")
expect((r["width"], r["height"]) == (107, 160), f"rot6 size {r['width']}x{r['height']}")
ref = ImageOps.exif_transpose(Image.open(f"{T}/tree/rot6.jpg")).convert("RGB").resize((107, 160), Image.LANCZOS)
p = psnr(Image.open(f"{T}/out/{r['file_name']}").convert("RGB"), ref)
print(f"PSNR EXIF-6 rotated vs Pillow exif_transpose + LANCZOS: {p:.1f} dB")
expect(p > 35, f"rot6 PSNR {p:.1f}")
# solid and transparent images stay exactly their color (white for alpha 0)
a = np.asarray(Image.open(f"{T}/out/{recs['solid.png']['file_name']}"))
expect(a.shape == (160, 100, 3) and (a == [10, 200, 30]).all(), f"solid.png {a.shape} {np.unique(a.reshape(-1, 3), axis=0)[:3]}")
a = np.asarray(Image.open(f"{T}/out/{recs['clear.png']['file_name']}"))
expect((a == 255).all(), "transparent png composited on white")
sys.exit(1 if bad else 0)
EOF

# --- crop modes, center crop against Pillow's ImageOps.fit ---
echo '{"file_name":"natural.png","text":"a face","source":"ffhq","n":3}' |
    "$R" --root tree --out crops --format png --size 100 >center.jsonl 2>/dev/null
check "fields passed through" grep -q '"text":"a face","source":"ffhq","n":3' center.jsonl
echo '{"file_name":"solid.png"}' | "$R" --root tree --out pad --format png --size 40 --crop pad >pad.jsonl 2>/dev/null
echo '{"file_name":"solid.png"}' | "$R" --root tree --out padb --format png --size 40 --crop pad-black >/dev/null 2>&1
$PY - "$T" <<'EOF' || fail "crop modes"
import math, sys
import numpy as np
from PIL import Image, ImageOps
T = sys.argv[1]
bad = 0
ours = np.asarray(Image.open(f"{T}/crops/natural.png"), np.float64)
ref = np.asarray(ImageOps.fit(Image.open(f"{T}/tree/natural.png").convert("RGB"), (100, 100), Image.LANCZOS), np.float64)
p = 10 * math.log10(255 ** 2 / max(((ours - ref) ** 2).mean(), 1e-12))
print(f"PSNR center crop vs Pillow ImageOps.fit LANCZOS, 400x300 -> 100x100: {p:.1f} dB")
if p <= 40: print("FAIL: center crop PSNR", p, file=sys.stderr); bad += 1
# solid 50x80 padded to 40: content 25x40 centered, columns 0-6 and 32-39 background
for d, bg in (("pad", 255), ("padb", 0)):
    a = np.asarray(Image.open(f"{T}/{d}/solid.png"))
    ok = a.shape == (40, 40, 3) and (a[:, :7] == bg).all() and (a[:, 33:] == bg).all() \
        and (a[:, 8:31] == [10, 200, 30]).all()
    if not ok: print("FAIL: pad", d, a[20, :10].tolist(), file=sys.stderr); bad += 1
sys.exit(bad)
EOF

# --- stdin records: missing file, malformed line, upstream error, no file_name, filters ---
printf '%s\n' '{"file_name":"a/photo.jpg"}' '{"file_name":"missing.jpg","k":1}' 'not json' \
    '{"file_name":"solid.png","error":"upstream"}' '{"text":"no name"}' '{"file_name":"natural.png"}' \
    '{"file_name":"../tree/solid.png"}' >in.jsonl
"$R" --root tree --out rec --min-side 250 --max-side 450 --quiet <in.jsonl >rec.jsonl 2>rec.err
check "stdin run exit 0" [ $? -eq 0 ]
check "one record per line" [ "$(wc -l <rec.jsonl)" -eq 7 ]
check "order kept" [ "$(head -1 rec.jsonl | grep -c photo)" -eq 1 ]
check "missing file error" grep -q '"file_name":"missing.jpg","k":1.*No such file' rec.jsonl
check "malformed line passed on" grep -q '"input_line":3' rec.jsonl
check "upstream error kept" grep -q '"error":"upstream"' rec.jsonl
check "no file_name error" grep -q 'no file_name' rec.jsonl
check "too large (480 > 450)" grep -q 'photo.jpg.*too large' rec.jsonl
check "too small (solid 50 < 250)" grep -q 'solid.png.*too small' rec.jsonl
check "natural.png within limits" [ "$(field rec.jsonl natural.png width)" = 768 ]
check "outside root read too" matches "$(field rec.jsonl ../tree/solid.png error)" 'too small'
check "6 failed counted" [ "$(summ rec.err failed)" = 6 ]
"$R" --root tree --out rec2 --quiet --strict <in.jsonl >/dev/null 2>&1
check "--strict exits 1 on failed records" [ $? -eq 1 ]
printf '%s\n' '{"file_name":"../tree/solid.png"}' | "$R" --root tree --out rec3 --quiet >rec3.jsonl 2>/dev/null
check "outside-root name flattened ($(field rec3.jsonl ../tree/solid.png file_name))" \
    matches "$(field rec3.jsonl ../tree/solid.png file_name)" '^solid-[0-9a-f]{8}\.jpg$'

# --- an output that cannot be written (its directory is a file): error record ---
mkdir -p blk && : >blk/a
echo '{"file_name":"a/x.jpg"}' | "$R" --root tree --out blk --quiet >blk.jsonl 2>blk.err
check "unwritable output: run goes on" [ $? -eq 0 ]
check "unwritable output: error names the path" grep -q '"error":"blk/a/x.jpg: ' blk.jsonl
check "unwritable output: no temporary left" [ -z "$(find blk -name '*.tmp')" ]

# --- a scanned name that is not UTF-8 cannot be a JSON string: error record ---
mkdir -p utf
$PY -c '
from PIL import Image
Image.new("RGB", (8, 8), (1, 2, 3)).save("utf/ok.png")
Image.new("RGB", (8, 8), (1, 2, 3)).save(open(b"utf/bad\xff.png", "wb"), "PNG")'
"$R" --root utf --scan --out utfo --quiet >utf.jsonl 2>utf.err
check "non-UTF-8 name: run goes on" [ $? -eq 0 ] && [ "$(wc -l <utf.jsonl)" -eq 2 ]
check "non-UTF-8 name: error record" grep -q 'not valid UTF-8' utf.jsonl
check "non-UTF-8 name: named, escaped" grep -qF 'not valid UTF-8: bad\\xff.png' utf.jsonl
check "non-UTF-8 name: counted" [ "$(summ utf.err failed)" = 1 ]

# --- images smaller than --size are upscaled and say so; --min-side refuses them ---
mkdir -p up
$PY -c '
from PIL import Image
Image.new("RGB", (200, 100), (1, 2, 3)).save("up/big.png")
Image.new("RGB", (50, 40), (1, 2, 3)).save("up/small.png")
Image.new("RGB", (80, 60), (1, 2, 3)).save("up/wide.png")'
"$R" --root up --scan --out upo --size 64 --quiet >up.jsonl 2>/dev/null
check "upscaled: small marked" [ "$(field up.jsonl small.png upscaled)" = True ]
check "upscaled: big not marked" [ "$(field up.jsonl big.png upscaled)" = "<absent>" ]
check "upscaled: center crop judges the shorter side (60 < 64)" [ "$(field up.jsonl wide.png upscaled)" = True ]
"$R" --root up --scan --out upn --size 64 --crop none --quiet >upn.jsonl 2>/dev/null
check "upscaled: --crop none judges the longer side (80)" [ "$(field upn.jsonl wide.png upscaled)" = "<absent>" ]
"$R" --root up --scan --out upm --size 64 --min-side 64 --quiet >upm.jsonl 2>/dev/null
check "--min-side: smaller is an error" grep -q '"file_name":"small.png".*"error":"too small: 50x40, smaller than --min-side 64"' upm.jsonl
check "--min-side: larger resized" [ "$(field upm.jsonl big.png width)" = 64 ]

# --- -j2 gives the same records and the same bytes as -j1 ---
"$R" --root tree --scan --out j1 --size 64 --quiet >j1.jsonl 2>/dev/null
"$R" --root tree --scan --out j2 --size 64 --quiet -j 2 >j2.jsonl 2>/dev/null
check "-j2 records identical to -j1" cmp -s j1.jsonl j2.jsonl
check "-j2 images identical to -j1" diff -r j1 j2
check "no temporary files left" [ -z "$(find j1 j2 -name '*.tmp')" ]

# --- usage and exit codes ---
"$R" --help >help.out 2>&1
check "--help exits 0" [ $? -eq 0 ]
check "--help prints Usage on stdout" grep -q '^Usage: df-resize' help.out
for bad in "--size abc" "--size 0" "--quality 101" "--crop diagonal" "--format gif" "-j 0" "--bogus" \
           "--min-side 600 --max-side 500"; do
    "$R" --out o $bad </dev/null >/dev/null 2>u.err
    check "'$bad' exits 2" [ $? -eq 2 ]
done
"$R" </dev/null >/dev/null 2>u.err
check "missing --out exits 2" [ $? -eq 2 ]
"$R" --root tree --out tree </dev/null >/dev/null 2>u.err
check "--out = --root exits 2" [ $? -eq 2 ]
"$R" --root nonexistent --scan --out o2 >/dev/null 2>u.err
check "unscannable root exits 1" [ $? -eq 1 ]
check "error message names the tool" grep -q '^df-resize: ' u.err
if [ -w /dev/full ]; then
    echo '{"file_name":"solid.png"}' | "$R" --root tree --out full >/dev/full 2>/dev/null
    check "write error on stdout exits 1" [ $? -eq 1 ]
fi

# --- the man page's EXAMPLES, run as written (PATH has df-resize) ---
mkdir -p ex && cd ex
mkdir -p raw/ffhq/00000 raw/laion
$PY - <<'EOF'
from PIL import Image
Image.new("RGB", (100, 100), (1, 2, 3)).save("raw/ffhq/00000/00001.png")
Image.new("RGB", (120, 90), (4, 5, 6)).save("raw/ffhq/00000/00002.jpg")
Image.new("RGB", (600, 800), (7, 8, 9)).save("raw/laion/ok.jpg")
Image.new("RGB", (400, 600), (7, 8, 9)).save("raw/laion/small.jpg")
Image.new("RGB", (2100, 600), (7, 8, 9)).save("raw/laion/wide.png")
EOF
echo '{"file_name":"ffhq/00000/00001.png","text":"a face"}' >records.jsonl
export PATH="$DF_BIN:$PATH"
sed -n '/^\.SH EXAMPLES/,/^\.SH/p' "$MAN" | grep '^mkdir -p' >examples.sh
check "three examples in the man page" [ "$(wc -l <examples.sh)" -eq 3 ]
ex=0
while IFS= read -r line; do
    ex=$((ex + 1))
    bash -c "$line" 2>"ex$ex.err"
    echo $? >"ex$ex.rc"
done <examples.sh
check "example 1 exit 0" [ "$(cat ex1.rc)" = 0 ]
check "example 1 dataset" [ "$(wc -l <data/ffhq/metadata.jsonl)" -eq 2 ] && [ -f data/ffhq/00000/00002.jpg ]
check "example 1 768x768" grep -q '"width":768,"height":768' data/ffhq/metadata.jsonl
check "example 2 --strict exits 1 (two refused)" [ "$(cat ex2.rc)" = 1 ]
check "example 2 counts" [ "$(summ ex2.err failed)" = 2 ] && [ -f data/laion/ok.jpg ]
check "example 3 exit 0" [ "$(cat ex3.rc)" = 0 ]
check "example 3 png, text kept" grep -q '"file_name":"ffhq/00000/00001.png","text":"a face"' small/metadata.jsonl
cd ..

echo "$fails failures"
[ "$fails" -eq 0 ]
