#!/usr/bin/env bash
# test-df-encode-latents.sh - df-encode-latents on the fixture model and a
# small dataset this test makes with Pillow: one output record per input in
# order, every kind of failed record, the index lines and shard metadata
# (vae_hash = sha256sum of the VAE's config and weights), a rerun that
# encodes nothing and leaves the index as it was, --flip against an encode
# of the pre-mirrored image, --text-embeddings against the fixture's text
# encoder reference, SIGKILL at random moments then a rerun (every record
# exactly once, every shard readable, no .tmp, nothing on stdout that is not
# in the cache), --shard 1/2 and 2/2 at once into one dir, the reader's
# refusal of caches of another resolution or VAE (and the writer's),
# the index lock, usage errors, and the man page's EXAMPLES.
# The reader side goes through the unit test binary's --dump mode
# (tests/unit/test_latent_cache.c), i.e. through df_latent_cache_open.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$ROOT/bin}"
: "${DF_BUILD:=$ROOT/build}"
: "${DF_FIXTURES:=$(cd "$ROOT/.." && pwd)/shared/fixtures}"
E="$DF_BIN/df-encode-latents"
DUMP="$DF_BUILD/tests/test_latent_cache"
MAN=$ROOT/man/df-encode-latents.1
MODEL=$DF_FIXTURES/pipeline
PY=/usr/bin/python3
if [ ! -d "$MODEL" ]; then
    echo "SKIP: no fixture model at $MODEL (set DF_FIXTURES)"
    exit 0
fi
[ -x "$DUMP" ] || { echo "FAIL: $DUMP not built"; exit 1; }
T=$(mktemp -d /tmp/df-test-encode-latents-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; "$@" || fail "$what"; }
summ() { grep -o "[0-9]* $2" "$1" | tail -1 | awk '{print $1}'; }
cd "$T"

$PY - <<'EOF'
import os
import numpy as np
from PIL import Image
os.makedirs("ds/sub")
def smooth(w, h, seed):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.full((h, w, 3), 128, np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy = r.uniform(0.01, 0.08, 2)
            a[..., c] += r.uniform(10, 40) * np.sin(6.28 * (x * fx + y * fy) + r.uniform(0, 6.28))
    return Image.fromarray(np.clip(a + r.normal(0, 4, a.shape), 0, 255).astype(np.uint8))
a = smooth(100, 80, 1); a.save("ds/a.png")
a.transpose(Image.FLIP_LEFT_RIGHT).save("ds/a_mirror.png")
smooth(90, 120, 2).save("ds/b.jpg", quality=92)
c = smooth(64, 64, 3); c.save("ds/c.png")
c.transpose(Image.FLIP_LEFT_RIGHT).save("ds/c_mirror.png")
smooth(200, 150, 4).save("ds/sub/d.jpg", quality=90)
smooth(70, 70, 5).save("ds/e.png")
open("ds/corrupt.jpg", "wb").write(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
for i in range(40):
    os.link(f"ds/{'ace'[i % 3]}.png", f"ds/k{i:02d}.png")
EOF
cat >in.jsonl <<'EOF'
{"file_name":"a.png","text":"portrait of a woman with long red hair and green eyes","source":"ffhq","id":7}
{"file_name":"b.jpg","text":"b face"}
{"file_name":"c.png","text":"c face","shard":"stale","cached":"stale"}
{"file_name":"sub/d.jpg","text":"d face"}
{"file_name":"e.png"}
{"file_name":"corrupt.jpg","text":"x"}
{"file_name":"missing.png","text":"x"}
{"file_name":"../ds/a.png","text":"x"}
{"file_name":"/etc/passwd","text":"x"}
{"file_name":5,"text":"x"}
this line is not JSON
{"text":"no file name"}
{"file_name":"b.jpg","text":"b","error":"failed upstream"}
EOF
for i in $(seq 0 39); do printf '{"file_name":"k%02d.png","text":"k %d"}\n' "$i" "$i"; done >k.jsonl

# Field of record number $2 (1-based) of JSONL $1, "<absent>" if missing.
field() { $PY -c '
import json, sys
r = json.loads(open(sys.argv[1]).readlines()[int(sys.argv[2]) - 1])
v = r.get(sys.argv[3], "<absent>")
print(json.dumps(v) if not isinstance(v, str) else v)' "$@"; }

# --- a run over every kind of record ---
"$E" --model "$MODEL" --root ds --out A --batch-size 2 <in.jsonl >a.jsonl 2>a.err
check "exit 0 with failed records" [ $? -eq 0 ]
check "one output record per input (13)" [ "$(wc -l <a.jsonl)" -eq 13 ]
check "summary: 13 records" [ "$(summ a.err records)" = 13 ]
check "summary: 4 encoded" [ "$(summ a.err encoded)" = 4 ]
check "summary: 0 cached" [ "$(summ a.err cached)" = 0 ]
check "summary: 9 failed" [ "$(summ a.err failed)" = 9 ]
check "output in input order" [ "$(field a.jsonl 4 file_name)" = sub/d.jpg ]
check "output in input order" [ "$(field a.jsonl 6 file_name)" = corrupt.jpg ]
for n in 1 2 3 4; do
    check "record $n has no error" [ "$(field a.jsonl $n error)" = "<absent>" ]
    check "record $n not cached" [ "$(field a.jsonl $n cached)" = false ]
done
for n in 5 6 7 8 9 10 11 12 13; do
    check "record $n has an error" [ "$(field a.jsonl $n error)" != "<absent>" ]
    check "record $n has no shard" [ "$(field a.jsonl $n shard)" = "<absent>" ]
done
check "no caption" grep -q 'no caption' <(sed -n 5p a.jsonl)
check "missing file named" grep -q 'missing.png' <(sed -n 7p a.jsonl)
check "../ refused" grep -q 'inside --root' <(sed -n 8p a.jsonl)
check "absolute refused" grep -q 'inside --root' <(sed -n 9p a.jsonl)
check "non-string file_name" grep -q 'file_name is not a string' <(sed -n 10p a.jsonl)
check "malformed line passed on" grep -q '"raw":"this line is not JSON"' <(sed -n 11p a.jsonl)
check "upstream error kept" grep -q '"error":"failed upstream"' <(sed -n 13p a.jsonl)
check "fields passed through" [ "$(field a.jsonl 1 source)" = ffhq ]
check "fields passed through" [ "$(field a.jsonl 1 id)" = 7 ]
check "stale cache fields replaced" [ "$(field a.jsonl 3 cached)" = false ]
check "stale cache fields replaced" [ "$(field a.jsonl 3 shard)" != stale ]
check "size field" [ "$(field a.jsonl 1 size)" = "[4, 8, 8]" ]
check "size field" [ "$(field a.jsonl 1 entries)" = 1 ]

$PY - "$MODEL" <<'EOF' || fail "index lines and shard metadata"
import hashlib, json, os, struct, sys
model = sys.argv[1]
idx = [json.loads(l) for l in open("A/index.jsonl")]
out = [json.loads(l) for l in open("a.jsonl")][:4]
assert [r["file_name"] for r in idx] == ["a.png", "b.jpg", "c.png", "sub/d.jpg"], idx
for r, o in zip(idx, out):
    assert r["size"] == [4, 8, 8] and r["flip"] is False and r["resolution"] == 64, r
    assert r["has_text_embedding"] is False and r["text"] == o["text"], r
    assert (r["shard"], r["index"]) == (o["shard"], o["index"]), (r, o)
    assert os.path.exists("A/" + r["shard"]), r
    assert "cached" not in r and "error" not in r, r
assert idx[0]["source"] == "ffhq" and idx[0]["id"] == 7
assert len({r["shard"] for r in idx}) == 2, "--batch-size 2: two shards"
h = hashlib.sha256(open(model + "/vae/config.json", "rb").read() +
                   open(model + "/vae/diffusion_pytorch_model.safetensors", "rb").read()).hexdigest()
for s in sorted({r["shard"] for r in idx}):
    b = open("A/" + s, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    m = json.loads(b[8:8 + n])["__metadata__"]
    assert m["format"] == "diffyface-latents-1" and m["vae_hash"] == h, m
    assert m["resolution"] == "64" and m["latent_channels"] == "4", m
    assert abs(float(m["scaling_factor"]) - 0.18215) < 1e-7, m
EOF
"$DUMP" --dump A >A.dump 2>dump.err
check "the reader opens the cache" [ $? -eq 0 ]
check "the reader has 4 entries" [ "$(grep -c file_name A.dump)" -eq 4 ]

# --- rerun: nothing encoded, index unchanged; --strict turns failures into exit 1 ---
cp A/index.jsonl index.before
"$E" --model "$MODEL" --root ds --out A --batch-size 2 --strict <in.jsonl >a2.jsonl 2>a2.err
check "--strict with failed records exits 1" [ $? -eq 1 ]
check "rerun: 0 encoded" [ "$(summ a2.err encoded)" = 0 ]
check "rerun: 4 cached" [ "$(summ a2.err cached)" = 4 ]
check "rerun: index unchanged" cmp -s index.before A/index.jsonl
check "rerun: records say cached" [ "$(field a2.jsonl 2 cached)" = true ]
check "rerun: records say cached" [ "$(field a2.jsonl 2 shard)" = "$(field a.jsonl 2 shard)" ]
check "rerun: same records otherwise" diff <(sed 's/"cached":true/"cached":false/' a2.jsonl) a.jsonl
head -4 in.jsonl | "$E" --model "$MODEL" --root ds --out A --strict -q >/dev/null 2>a3.err
check "--strict without failures exits 0" [ $? -eq 0 ]
# a changed caption is encoded again (the cache's text must be the dataset's)
sed '2s/b face/b face, edited/' in.jsonl | head -4 | "$E" --model "$MODEL" --root ds --out A -q >/dev/null 2>a4.err
check "changed caption re-encoded" [ "$(summ a4.err encoded)" = 1 ]
check "changed caption re-encoded" [ "$(summ a4.err cached)" = 3 ]
"$DUMP" --dump A >A2.dump 2>dump.err
check "re-encoded entry replaces the old one" [ "$(grep -c file_name A2.dump)" -eq 4 ] && grep -q 'b face, edited' A2.dump

# --- --flip and --text-embeddings ---
printf '%s\n' '{"file_name":"a.png","text":"portrait of a woman with long red hair and green eyes"}' \
    '{"file_name":"a_mirror.png","text":"m"}' '{"file_name":"c.png","text":"c face"}' \
    '{"file_name":"c_mirror.png","text":"m"}' >flip.jsonl
"$E" --model "$MODEL" --root ds --out F --flip --text-embeddings <flip.jsonl >f.jsonl 2>f.err
check "--flip exit 0" [ $? -eq 0 ]
check "--flip: 4 records encoded" [ "$(summ f.err encoded)" = 4 ]
check "--flip: entries 2" [ "$(field f.jsonl 1 entries)" = 2 ]
check "--flip: entries 2" [ "$(field f.jsonl 1 flip_index)" = 1 ]
check "--flip: has_text_embedding" [ "$(field f.jsonl 1 has_text_embedding)" = true ]
check "--flip: 8 index lines" [ "$(wc -l <F/index.jsonl)" -eq 8 ]
"$DUMP" --dump F >F.dump 2>dump.err
check "the reader opens the flip cache" [ $? -eq 0 ]
"$DUMP" --dump A F >/dev/null 2>dump.err
check "two caches of one VAE merge" [ $? -eq 0 ]
$PY - "$DF_FIXTURES" <<'EOF' || fail "--flip and --text-embeddings values"
import json, re, struct, sys
import numpy as np
fx = sys.argv[1]
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             np.float32).reshape(v["shape"])
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
def entries(path):
    lines = [json.loads(l) for l in open(path)]
    return lines[0], {(e["file_name"], e["flip"]): e for e in lines[1:]}
head, F = entries("F.dump")
_, A = entries("A.dump")
assert head["count"] == 8 and head["latent_size"] == [4, 8, 8], head
assert list(F) == sorted(F), "entries sorted by file_name, then flip"
def arr(e, k): return np.array(e[k], np.float32)
def close(x, y, tol, what):
    d = np.abs(x - y).max(); scale = max(1.0, np.abs(y).max())
    print(f"{what}: max |diff| {d:.3g} (scale {scale:.3g})")
    assert d <= tol * scale, what
# a 64x64 image needs no resampling: its mirror's encode is the flip entry
for k in ("mean", "logvar"):
    close(arr(F["c.png", True], k), arr(F["c_mirror.png", False], k), 1e-5, "c flip " + k)
    close(arr(F["c.png", False], k), arr(A["c.png", False], k), 1e-6, "c same in both caches " + k)
    # resampled: Lanczos of the mirror is the mirror of Lanczos up to float rounding
    close(arr(F["a.png", True], k), arr(F["a_mirror.png", False], k), 1e-2, "a flip " + k)
assert np.abs(arr(F["c.png", True], "mean") - arr(F["c.png", False], "mean")).max() > 1e-3
# the caption of a.png is prompt 2 of the text encoder reference
m = json.load(open(fx + "/refs/MANIFEST.json"))
files = m.get("files", m)
desc = [f for f in files if f["file"] == "refs/text_encoder.safetensors"][0]["description"]
mm = re.search(r"prompts (\[.*?\]) \(row order\)", desc)
prompts = json.loads(mm.group(1)) if mm else []
cap = "portrait of a woman with long red hair and green eyes"
if cap in prompts:
    ref = load(fx + "/refs/text_encoder.safetensors")["last_hidden_state"][prompts.index(cap)]
    for f in (False, True):
        got = arr(F["a.png", f], "text_embedding").reshape(ref.shape)
        close(got, ref, 1e-4, f"text embedding (flip {f})")
else:
    print("SKIP text embedding reference: caption not among the fixture's prompts")
assert head["text_shape"][0] == 77 and head["text_encoder_hash"], head
EOF

# --- SIGKILL at random moments, then a rerun ---
for s in 0.2 0.35 0.5 0.65 0.8 1.0; do
    "$E" --model "$MODEL" --root ds --out K --resolution 32 --batch-size 2 -t 1 -q <k.jsonl >>killed.jsonl 2>/dev/null &
    pid=$!
    sleep "$s"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "after kill at ${s}s: $(cat K/index.jsonl 2>/dev/null | wc -l) index lines"
done
"$E" --model "$MODEL" --root ds --out K --resolution 32 --batch-size 2 <k.jsonl >k.out 2>k.err
check "rerun after kills exit 0" [ $? -eq 0 ]
check "rerun: 0 failed" [ "$(summ k.err failed)" = 0 ]
check "rerun: encoded + cached = 40" [ $(( $(summ k.err encoded) + $(summ k.err cached) )) -eq 40 ]
check "no .tmp left" [ -z "$(find K -name '*.tmp')" ]
"$DUMP" --dump K >K.dump 2>dump.err
check "every shard opens (reader)" [ $? -eq 0 ]
check "40 entries" [ "$(grep -c file_name K.dump)" -eq 40 ]
$PY <<'EOF' || fail "after kills: every record exactly once, stdout only what is on disk"
import json, os
idx = [json.loads(l) for l in open("K/index.jsonl")]
names = [r["file_name"] for r in idx]
assert len(names) == 40 and len(set(names)) == 40, f"{len(names)} lines, {len(set(names))} names"
where = {r["file_name"]: (r["shard"], r["index"]) for r in idx}
named = {r["shard"] for r in idx}
onfs = {f for f in os.listdir("K") if f.startswith("shard-")}
assert onfs == named, f"shards not named by the index: {onfs - named}"
killed = [json.loads(l) for l in open("killed.jsonl") if l.endswith("\n")]
for r in killed:
    assert where.get(r["file_name"]) == (r["shard"], r["index"]), r
print(f"{len(killed)} records printed by killed runs, all in the cache")
EOF

# --- SIGTERM: the shard being filled is written, exit 1 ---
# (stdin stays open after the records, so the run is still waiting for more
# when the signal comes, however fast the machine encodes)
mkfifo term.fifo
"$E" --model "$MODEL" --root ds --out K2 --resolution 32 --batch-size 100 -t 1 <term.fifo >term.jsonl 2>term.err &
pid=$!
exec 8>term.fifo
cat k.jsonl >&8
sleep 2
kill -TERM "$pid"
wait "$pid"
rc=$?
exec 8>&-
check "SIGTERM: exit 1 (got $rc)" [ $rc -eq 1 ]
check "SIGTERM: says interrupted" grep -q '^df-encode-latents: interrupted' term.err
check "SIGTERM: records written = index lines" [ "$(wc -l <term.jsonl)" -eq "$(cat K2/index.jsonl | wc -l)" ]

# --- --shard 1/2 and 2/2 at once into one dir ---
"$E" --model "$MODEL" --root ds --out S --resolution 32 --shard 1/2 -t 1 -q <k.jsonl >s1.jsonl 2>s1.err &
p1=$!
"$E" --model "$MODEL" --root ds --out S --resolution 32 --shard 2/2 -t 1 -q <k.jsonl >s2.jsonl 2>s2.err &
p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
check "both shards exit 0" [ $r1 -eq 0 ]
check "both shards exit 0" [ $r2 -eq 0 ]
check "shard 1/2: 20 records" [ "$(wc -l <s1.jsonl)" -eq 20 ]
check "shard 1/2: 20 records" [ "$(wc -l <S/index.1-of-2.jsonl)" -eq 20 ]
check "shard 2/2: 20 records" [ "$(wc -l <s2.jsonl)" -eq 20 ]
check "shard 2/2: 20 records" [ "$(wc -l <S/index.2-of-2.jsonl)" -eq 20 ]
check "shard 1/2 takes lines 0, 2, ..." [ "$(field s1.jsonl 2 file_name)" = k02.png ]
check "shard file names carry K-of-N" [ -f S/shard-1-of-2-00000.safetensors ]
check "shard file names carry K-of-N" [ -f S/shard-2-of-2-00000.safetensors ]
"$DUMP" --dump S >S.dump 2>dump.err
check "the reader opens the sharded cache" [ $? -eq 0 ]
check "sharded cache: all 40 once" [ "$(grep -o '"file_name":"k[0-9]*.png"' S.dump | sort -u | wc -l)" -eq 40 ]
check "sharded cache: all 40 once" [ "$(grep -c file_name S.dump)" -eq 40 ]
$PY <<'EOF' || fail "sharded cache equals the single-process one"
import json
def ents(p):
    return {json.loads(l)["file_name"]: json.loads(l)["mean"] for l in list(open(p))[1:]}
a, b = ents("K.dump"), ents("S.dump")
assert a.keys() == b.keys()
assert max(abs(x - y) for k in a for x, y in zip(a[k], b[k])) < 1e-6
EOF
"$E" --model "$MODEL" --root ds --out S --resolution 32 --shard 1/2 <k.jsonl >/dev/null 2>s3.err
check "shard rerun: 0 encoded" [ "$(summ s3.err encoded)" = 0 ]
check "shard rerun: 0 encoded" [ "$(summ s3.err cached)" = 20 ]

# --- the index lock: a second writer of the same index is refused ---
flock A/index.jsonl sleep 3 &
lp=$!
sleep 0.3
"$E" --model "$MODEL" --root ds --out A <in.jsonl >/dev/null 2>lock.err
check "locked index: exit 1" [ $? -eq 1 ]
check "locked index: says so" grep -q '^df-encode-latents: .*another process' lock.err
kill "$lp" 2>/dev/null; wait "$lp" 2>/dev/null

# --- caches of another resolution or another VAE ---
sed -n 3p in.jsonl | "$E" --model "$MODEL" --root ds --out R32 --resolution 32 -q >/dev/null 2>&1
"$DUMP" --dump A R32 >/dev/null 2>mix.err
check "another resolution refused" [ $? -eq 1 ]
check "resolution error names dir and values" grep -q 'R32/shard-00000.safetensors: resolution 32 differs from A/' mix.err
mkdir -p other/vae
for d in "$MODEL"/*; do [ "$(basename "$d")" = vae ] || ln -s "$d" other/; done
ln -s "$MODEL/vae/diffusion_pytorch_model.safetensors" other/vae/
$PY -c 'import json,sys; c=json.load(open(sys.argv[1])); c["_note"]="another"; json.dump(c, open("other/vae/config.json","w"))' "$MODEL/vae/config.json"
sed -n 3p in.jsonl | "$E" --model other --root ds --out V -q >/dev/null 2>v.err
check "the other model encodes" [ $? -eq 0 ]
"$DUMP" --dump A V >/dev/null 2>mix.err
check "another VAE refused" [ $? -eq 1 ] && grep -q 'another VAE' mix.err
sed -n 3p in.jsonl | "$E" --model other --root ds --out A -q >/dev/null 2>v2.err
check "writer refuses another VAE's cache" [ $? -eq 1 ] && grep -q '^df-encode-latents: .*another VAE' v2.err
sed -n 3p in.jsonl | "$E" --model "$MODEL" --root ds --out A --resolution 32 -q >/dev/null 2>v3.err
check "writer refuses another resolution" [ $? -eq 1 ] && grep -q 'resolution' v3.err

# --- usage and setup errors ---
"$E" -h >help.out 2>&1
check "-h exits 0" [ $? -eq 0 ] && grep -q '^Usage: df-encode-latents' help.out
"$E" </dev/null >/dev/null 2>u.err
check "no arguments: exit 2" [ $? -eq 2 ]
for bad in "--resolution 30" "--resolution 0" "--resolution x" "--shard 0/2" "--shard 3/2" "--shard 1" \
           "--batch-size 0" "--bogus"; do
    "$E" --model "$MODEL" --root ds --out U $bad </dev/null >/dev/null 2>u.err
    check "$bad: exit 2" [ $? -eq 2 ]
    check "$bad: message names the tool" grep -q '^df-encode-latents: ' u.err
done
"$E" --model nonexistent --root ds --out U </dev/null >/dev/null 2>u.err
check "bad --model: exit 1" [ $? -eq 1 ] && grep -q '^df-encode-latents: .*nonexistent' u.err
touch afile
"$E" --model "$MODEL" --root ds --out afile/sub </dev/null >/dev/null 2>u.err
check "cannot create --out: exit 1" [ $? -eq 1 ] && grep -q '^df-encode-latents: --out' u.err
"$E" --model "$MODEL" --root nodir --out U </dev/null >/dev/null 2>u.err
check "bad --root: exit 1" [ $? -eq 1 ]
if [ -w /dev/full ]; then
    sed -n 3p in.jsonl | "$E" --model "$MODEL" --root ds --out A >/dev/full 2>/dev/null
    check "write error on stdout exits 1" [ $? -eq 1 ]
fi

# --- the man page's EXAMPLES, run as written ---
mkdir -p ex/models ex/data && ln -s "$MODEL" ex/models/sd21
cp ds/a.png ds/b.jpg ds/c.png ex/data/
head -3 in.jsonl | cut -c1- >ex/data/metadata.jsonl
cd ex
export PATH="$DF_BIN:$PATH"
sed -n '/^\.SH EXAMPLES/,/^\.SH/p' "$MAN" | grep -E '^(df-encode-latents|parallel) ' >examples.sh
check "four examples in the man page" [ "$(wc -l <examples.sh)" -eq 4 ]
ex=0
while IFS= read -r line; do
    ex=$((ex + 1))
    bash -c "$line" 2>"ex$ex.err"
    check "example $ex exit 0 ($(tail -1 ex$ex.err))" [ $? -eq 0 ]
done <examples.sh
check "example 1: 3 encoded" [ "$(summ ex1.err encoded)" = 3 ]
check "example 1: 3 encoded" [ "$(wc -l <latents/index.jsonl)" -eq 3 ]
check "example 2: flip + text embeddings" [ "$(wc -l <latents-flip/index.jsonl)" -eq 6 ] && grep -q '"has_text_embedding":true' latents-flip/index.jsonl
check "example 3: two shard processes" [ "$(cat latents-par/index.*-of-2.jsonl | wc -l)" -eq 3 ]
check "example 4: a rerun encodes nothing" [ "$(summ ex4.err encoded)" = 0 ]
check "example 4: a rerun encodes nothing" [ "$(summ ex4.err cached)" = 3 ]
"$DUMP" --dump latents latents-par >/dev/null 2>dump.err
check "examples' caches merge in the reader" [ $? -eq 0 ]
cd ..

echo "$fails failures"
[ "$fails" -eq 0 ]
