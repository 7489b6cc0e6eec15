#!/usr/bin/env bash
# test-df-sample-errors.sh - df-sample on every kind of broken input a user
# meets: copies of the fixture pipeline with missing, truncated or edited
# files (configs, weight headers, weight values, tokenizer), bad LoRAs, bad
# prompt records, bad --latents, NaN/Inf appearing while sampling, bad sizes,
# unwritable outputs. Each case asserts the exit status (1: the model or an
# input file cannot be used; 2: bad usage; 0 with an "error" record for a
# failed prompt, 1 with --strict), exactly one "df-sample: ..." error line
# that names the cause (file, tensor or key), no PNG for a failed prompt, no
# crash and no sanitizer report. Runs with --steps 2 on the tiny fixture.
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
: "${DF_FIXTURES:=$(cd "$(dirname "$0")/../../.." && pwd)/shared/fixtures}"
S="$DF_BIN/df-sample"
FX=$DF_FIXTURES
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-sample-errors-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
cd "$T"

# model NAME: the fixture pipeline as a tree of symlinks; own NAME/FILE makes
# one file a writable copy to break.
model() { rm -rf "$1"; cp -rs "$FX/pipeline" "$1"; }
own() { cp --remove-destination "$(readlink -f "$1")" "$1"; chmod u+w "$1"; }

# Safetensors surgery (stdlib only): rewrite a file's header or tensor bytes.
cat > st.py <<'EOF'
import json, struct, sys
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), bytearray(b[8 + n:])
def write(path, hdr, data):
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + bytes(data))
def tensor(name, dtype, shape, data):
    return {name: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}, data
path, op = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
if op == "shape":            # NAME DIMS (comma list): same bytes, other shape
    hdr, data = read(path)
    hdr[args[0]]["shape"] = [int(x) for x in args[1].split(",")]
    write(path, hdr, data)
elif op == "dtype":          # NAME DTYPE
    hdr, data = read(path)
    hdr[args[0]]["dtype"] = args[1]
    write(path, hdr, data)
elif op == "fill":           # NAME VALUE: every F32 element of NAME
    hdr, data = read(path)
    b, e = hdr[args[0]]["data_offsets"]
    assert hdr[args[0]]["dtype"] == "F32"
    data[b:e] = struct.pack("<f", float(args[1])) * ((e - b) // 4)
    write(path, hdr, data)
elif op == "latents":        # DTYPE DIMS [NAME...]: one or more zero tensors
    dtype, shape = args[0], [int(x) for x in args[1].split(",")]
    n = 1
    for d in shape:
        n *= d
    size = {"F32": 4, "F16": 2}[dtype]
    hdr, data, off = {}, b"", 0
    for name in args[2:] or ["latents"]:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n * size]}
        data += b"\0" * (n * size)
        off += n * size
    write(path, hdr, data)
elif op == "alpha":          # NAME VALUE: add a scalar F32 tensor
    hdr, data = read(path)
    end = max(v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__")
    hdr[args[0]] = {"dtype": "F32", "shape": [], "data_offsets": [end, end + 4]}
    write(path, hdr, data + struct.pack("<f", float(args[1])))
elif op == "lora":           # KEY-PREFIX RANK IN OUT: a diffusers-style pair
    key, r, i, o = args[0], int(args[1]), int(args[2]), int(args[3])
    down = struct.pack("<f", 0.01) * (r * i)
    up = struct.pack("<f", 0.01) * (o * r)
    hdr = {key + ".lora.down.weight": {"dtype": "F32", "shape": [r, i], "data_offsets": [0, len(down)]},
           key + ".lora.up.weight": {"dtype": "F32", "shape": [o, r],
                                     "data_offsets": [len(down), len(down) + len(up)]}}
    write(path, hdr, down + up)
EOF
st() { $PY st.py "$@" || fail "st.py $*"; }
# json FILE EXPR: edit a JSON file in place, d is the object.
json() { $PY -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); exec(sys.argv[2]); open(p,"w").write(json.dumps(d))' "$1" "$2" || fail "json $*"; }

# run NAME ARGS...: df-sample with --steps 2, stdin from $IN (default
# /dev/null); out in NAME.out/NAME.err. Checks no crash, no sanitizer report.
run() {
    local name=$1; shift
    "$S" --steps 2 --quiet --out "o-$name" "$@" < "${IN:-/dev/null}" > "$name.out" 2> "$name.err"
    rc=$?
    [ $rc -lt 128 ] || fail "$name: killed by signal $((rc - 128)): $(tail -3 "$name.err")"
    if grep -qE 'Sanitizer|runtime error:' "$name.err"; then
        fail "$name: sanitizer report: $(grep -m3 -E 'ERROR|runtime error' "$name.err")"
    fi
}
# one_error NAME PATTERN: exactly one df-sample error line (not a warning or
# the failure count), and it matches PATTERN (extended regex).
one_error() {
    local errs n
    errs=$(grep '^df-sample: ' "$1.err" | grep -v '^df-sample: warning: ' |
           grep -vE '^df-sample: [0-9]+ prompts failed, [0-9]+ images written$')
    n=$(printf '%s' "$errs" | grep -c '^df-sample: ')
    [ "$n" = 1 ] || fail "$1: want one error line, got $n: $(head -c 600 "$1.err")"
    printf '%s\n' "$errs" | grep -qE -- "$2" || fail "$1: message does not name /$2/: $errs"
}
no_png() { [ -z "$(find "o-$1" -name '*.png' 2> /dev/null)" ] || fail "$1: a PNG was written"; }
# expect_fail NAME RC PATTERN ARGS...: the run fails as a whole.
expect_fail() {
    local name=$1 want=$2 pat=$3; shift 3
    run "$name" "$@"
    [ "$rc" = "$want" ] || fail "$name: exit $rc, want $want: $(head -c 600 "$name.err")"
    one_error "$name" "$pat"
    no_png "$name"
    [ ! -s "$name.out" ] || [ "$want" != 2 ] || fail "$name: records on stdout"
}
# expect_record NAME PATTERN ARGS...: exit 0, one record with an "error"
# matching PATTERN and no file_name, no PNG; the same with --strict exits 1.
expect_record() {
    local name=$1 pat=$2; shift 2
    run "$name" "$@"
    [ "$rc" = 0 ] || fail "$name: exit $rc, want 0: $(head -c 600 "$name.err")"
    one_error "$name" "$pat"
    no_png "$name"
    $PY - "$name.out" "$pat" <<'EOF' || fail "$name: want one error record matching /$pat/: $(head -c 600 "$name.out")"
import json, re, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == 1, recs
r = recs[0]
assert isinstance(r, dict) and "error" in r and "file_name" not in r, r
assert re.search(sys.argv[2], r["error"]), r["error"]
EOF
    grep -qE '^df-sample: 1 prompts failed, 0 images written$' "$name.err" ||
        fail "$name: failure not counted on stderr"
    run "$name-strict" --strict "$@"
    [ "$rc" = 1 ] || fail "$name --strict: exit $rc, want 1"
}
M=(-p "a face" --seed 1)

# 0. The unbroken copy works (so each failure below is the edit's doing).
model good
run good --model good "${M[@]}"
[ "$rc" = 0 ] && [ -n "$(find o-good -name '*.png')" ] || fail "unbroken copy: exit $rc: $(cat good.err)"

# 1. Missing and truncated files.
model m; rm m/model_index.json
expect_fail no-index 1 'model_index\.json' --model m "${M[@]}"
expect_fail not-a-dir 1 'nowhere' --model "$T/nowhere" "${M[@]}"
for c in text_encoder:model unet:diffusion_pytorch_model vae:diffusion_pytorch_model; do
    comp=${c%%:*} file=${c#*:}.safetensors
    model m; rm "m/$comp/$file"
    expect_fail "missing-$comp" 1 "$comp.*safetensors" --model m "${M[@]}"
    model m; head -c 100000 "$FX/pipeline/$comp/$file" > "m/$comp/$file.tmp"; rm "m/$comp/$file"
    mv "m/$comp/$file.tmp" "m/$comp/$file"
    expect_fail "truncated-$comp" 1 "$comp/$file" --model m "${M[@]}"
    model m; rm "m/$comp/config.json"
    expect_fail "no-config-$comp" 1 "$comp/config\.json" --model m "${M[@]}"
done
F=m/unet/diffusion_pytorch_model.safetensors
model m; own $F
n=$($PY -c 'import struct,sys; print(struct.unpack("<Q", open(sys.argv[1],"rb").read(8))[0])' $F)
head -c $((8 + n / 2)) "$FX/pipeline/unet/diffusion_pytorch_model.safetensors" > $F
expect_fail truncated-header 1 "unet/diffusion_pytorch_model\.safetensors.*header" --model m "${M[@]}"
model m; own $F
$PY -c 'import struct,sys,os; f=open(sys.argv[1],"r+b"); f.write(struct.pack("<Q", os.path.getsize(sys.argv[1])))' $F
expect_fail header-beyond-file 1 "unet/diffusion_pytorch_model\.safetensors.*header length" --model m "${M[@]}"
model m; own $F
$PY -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.write(struct.pack("<Q", 1 << 62))' $F
expect_fail header-huge 1 "unet/diffusion_pytorch_model\.safetensors.*header length" --model m "${M[@]}"
model m; own $F
$PY -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(8); f.write(b"{{{{")' $F
expect_fail header-not-json 1 "unet/diffusion_pytorch_model\.safetensors.*JSON" --model m "${M[@]}"
model m; rm $F; : > $F
expect_fail empty-weights 1 "unet/diffusion_pytorch_model\.safetensors" --model m "${M[@]}"

# 2. Malformed configs: each names the file and the key. (A missing key that
# diffusers has a default for, like layers_per_block, takes that default.)
cfg_case() {   # NAME COMPONENT PATTERN PYTHON-EDIT
    model m; own "m/$2/config.json"; json "m/$2/config.json" "$4"
    expect_fail "cfg-$1" 1 "$2/config\.json.*$3|$3.*$2/config\.json" --model m "${M[@]}"
}
model m; own m/unet/config.json; echo '{"act_fn": "silu",' > m/unet/config.json
expect_fail cfg-unet-not-json 1 'unet/config\.json' --model m "${M[@]}"
model m; own m/unet/config.json; echo '[1, 2]' > m/unet/config.json
expect_fail cfg-unet-not-object 1 'unet/config\.json' --model m "${M[@]}"
cfg_case unet-no-channels unet block_out_channels 'del d["block_out_channels"]'
cfg_case unet-layers-str unet layers_per_block 'd["layers_per_block"] = "two"'
cfg_case unet-channels-0 unet block_out_channels 'd["block_out_channels"][0] = 0'
cfg_case unet-channels-neg unet block_out_channels 'd["block_out_channels"] = [-32, 32, 32, 64]'
cfg_case unet-channels-huge unet block_out_channels 'd["block_out_channels"][3] = 1 << 40'
cfg_case unet-groups-0 unet norm_num_groups 'd["norm_num_groups"] = 0'
cfg_case unet-heads-0 unet attention_head_dim 'd["attention_head_dim"] = [0, 2, 2, 4]'
cfg_case unet-in-0 unet in_channels 'd["in_channels"] = 0'
cfg_case unet-sample-0 unet sample_size 'd["sample_size"] = 0'
cfg_case unet-sample-huge unet sample_size 'd["sample_size"] = 1 << 30'
cfg_case unet-sample-wrap unet sample_size 'd["sample_size"] = (1 << 32) + 8'
cfg_case unet-in-wrap unet in_channels 'd["in_channels"] = (1 << 32) + 4'
cfg_case unet-cross-str unet cross_attention_dim 'd["cross_attention_dim"] = "32"'
cfg_case unet-block-type unet FooBlock2D 'd["down_block_types"][0] = "FooBlock2D"'
cfg_case unet-up-type unet BarBlock2D 'd["up_block_types"][1] = "BarBlock2D"'
cfg_case unet-act unet 'act_fn|relu6' 'd["act_fn"] = "relu6"'
cfg_case unet-blocks-len unet 'down_block_types|block_out_channels' 'd["down_block_types"] = d["down_block_types"][:2]'
cfg_case vae-not-list vae block_out_channels 'd["block_out_channels"] = 64'
cfg_case vae-latent-neg vae latent_channels 'd["latent_channels"] = -4'
cfg_case vae-act vae 'act_fn|gelu_new' 'd["act_fn"] = "gelu_new"'
cfg_case vae-block-type vae BazBlock2D 'd["up_block_types"][0] = "BazBlock2D"'
cfg_case vae-groups-odd vae norm_num_groups 'd["norm_num_groups"] = 7'
cfg_case vae-scaling vae scaling_factor 'd["scaling_factor"] = 0'
cfg_case te-act text_encoder 'hidden_act|swish' 'd["hidden_act"] = "swish"'
cfg_case te-heads-0 text_encoder num_attention_heads 'd["num_attention_heads"] = 0'
cfg_case te-heads-div text_encoder 'num_attention_heads|hidden_size' 'd["num_attention_heads"] = 5'
cfg_case te-layers-neg text_encoder num_hidden_layers 'd["num_hidden_layers"] = -1'
cfg_case te-vocab-str text_encoder vocab_size 'd["vocab_size"] = "big"'
model m; own m/text_encoder/config.json; json m/text_encoder/config.json 'd["max_position_embeddings"] = 10'
expect_fail cfg-te-pos-small 1 'position_embedding\.weight.*\[10, 32\]' --model m "${M[@]}"

# 3. Schedulers: unknown on the command line (usage), in a record, bad config.
expect_fail sched-cli 2 'nosuch' --model good --scheduler nosuch "${M[@]}"
echo '{"prompt": "a face", "seed": 1, "scheduler": "nosuch"}' > sched.jsonl
IN=sched.jsonl expect_record sched-record 'nosuch' --model good
model m; own m/scheduler/scheduler_config.json
json m/scheduler/scheduler_config.json 'd["beta_schedule"] = "cubic"'
expect_fail sched-beta 1 'scheduler_config\.json.*(beta_schedule|cubic)|cubic' --model m "${M[@]}"
model m; own m/scheduler/scheduler_config.json
json m/scheduler/scheduler_config.json 'd["prediction_type"] = "x0"'
expect_fail sched-pred 1 'prediction_type|x0' --model m "${M[@]}"
model m; own m/scheduler/scheduler_config.json
json m/scheduler/scheduler_config.json 'd["num_train_timesteps"] = 0'
expect_fail sched-train-0 1 'num_train_timesteps' --model m "${M[@]}"
model m; rm m/scheduler/scheduler_config.json
expect_fail sched-missing 1 'scheduler_config\.json' --model m "${M[@]}"

# 4. Weights: wrong shape, unknown dtype, missing tensor, extra tensor.
for c in text_encoder:model:text_model.final_layer_norm.weight:8,4 \
         unet:diffusion_pytorch_model:conv_in.weight:32,4,9,1 \
         vae:diffusion_pytorch_model:decoder.conv_out.bias:1,3; do
    IFS=: read -r comp file tensor dims <<< "$c"
    model m; own "m/$comp/$file.safetensors"
    st "m/$comp/$file.safetensors" shape "$tensor" "$dims"
    expect_fail "shape-$comp" 1 "$tensor" --model m "${M[@]}"
done
model m; own $F; st $F dtype conv_out.bias F8_E4M3
expect_fail dtype-f8 1 'conv_out\.bias.*F8_E4M3' --model m "${M[@]}"
model m; own $F; st $F dtype time_embedding.linear_1.weight Q4
expect_fail dtype-q4 1 'time_embedding\.linear_1\.weight.*Q4' --model m "${M[@]}"
model m; own $F; st $F dtype conv_out.bias I32
expect_fail dtype-int 1 'conv_out\.bias' --model m "${M[@]}"
model m; own $F
$PY -c 'import sys; sys.argv=[0,sys.argv[1],""]; exec(open("st.py").read().split("path, op")[0]); h,d=read(sys.argv[1]); h["conv_out.biaz"]=h.pop("conv_out.bias"); write(sys.argv[1],h,d)' $F
expect_fail tensor-renamed 1 'conv_out\.bias' --model m "${M[@]}"

# 5. Tokenizer files.
model m; rm m/tokenizer/vocab.json
expect_fail tok-no-vocab 1 'vocab\.json' --model m "${M[@]}"
model m; rm m/tokenizer/merges.txt
expect_fail tok-no-merges 1 'merges\.txt' --model m "${M[@]}"
model m; own m/tokenizer/vocab.json; echo '{"a": 1, ' > m/tokenizer/vocab.json
expect_fail tok-vocab-json 1 'vocab\.json' --model m "${M[@]}"
model m; own m/tokenizer/vocab.json; echo '{"a": "one"}' > m/tokenizer/vocab.json
expect_fail tok-vocab-type 1 'vocab\.json' --model m "${M[@]}"
model m; own m/tokenizer/merges.txt; printf '#version: 0.2\nnot-a-pair\n' > m/tokenizer/merges.txt
expect_fail tok-merges-bad 1 'merges\.txt' --model m "${M[@]}"
model m; own m/tokenizer/vocab.json; echo '{}' > m/tokenizer/vocab.json
expect_fail tok-vocab-empty 1 'vocab\.json' --model m "${M[@]}"
model m; own m/tokenizer/tokenizer_config.json; json m/tokenizer/tokenizer_config.json 'd["model_max_length"] = 100'
expect_fail tok-longer-than-te 1 'model_max_length 100.*max_position_embeddings 77' --model m "${M[@]}"
model m; own m/tokenizer/vocab.json; json m/tokenizer/vocab.json 'd["zzzzqqq</w>"] = 60000'
expect_fail tok-vocab-beyond-te 1 'ids up to 60000.*vocab_size 49408' --model m "${M[@]}"

# 6. LoRAs.
st lora-arch.safetensors lora unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q 4 320 320
expect_fail lora-arch 1 'lora-arch\.safetensors.*to_q.*does not fit' --model good --lora lora-arch.safetensors "${M[@]}"
st lora-none.safetensors lora unet.middle.block.attn.to_q 4 32 32
expect_fail lora-none 1 'lora-none\.safetensors.*none of its 2 tensors.*unet\.middle\.block\.attn\.to_q\.lora\.(down|up)\.weight' --model good --lora lora-none.safetensors "${M[@]}"
: > lora-empty.safetensors
expect_fail lora-empty 1 'lora-empty\.safetensors' --model good --lora lora-empty.safetensors "${M[@]}"
echo 'this is not a safetensors file at all' > lora-text.safetensors
expect_fail lora-text 1 'lora-text\.safetensors' --model good --lora lora-text.safetensors "${M[@]}"
expect_fail lora-missing 1 'lora-missing\.safetensors' --model good --lora lora-missing.safetensors "${M[@]}"
st lora-nan.safetensors lora unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q 4 32 32
st lora-nan.safetensors fill unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight nan
expect_fail lora-nan 1 'lora-nan\.safetensors.*non-finite' --model good --lora lora-nan.safetensors "${M[@]}"
st lora-alpha.safetensors lora unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q 4 32 32
st lora-alpha.safetensors alpha unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.alpha inf
expect_fail lora-alpha 1 'lora-alpha\.safetensors.*alpha.*not finite' --model good --lora lora-alpha.safetensors "${M[@]}"
expect_fail lora-colon 1 'lora-nan\.safetensors:' --model good --lora "lora-nan.safetensors:" "${M[@]}"
# FILE:abc with FILE there: a bad scale (usage), not "No such file".
expect_fail lora-scale 2 "bad scale 'abc'" --model good --lora "lora-nan.safetensors:abc" "${M[@]}"

# 7. Prompts: too long (warning, truncated, image written), bad records.
long=$(printf 'face %.0s' $(seq 1 100))
run long --model good -p "$long" --seed 1
[ "$rc" = 0 ] && [ -n "$(find o-long -name '*.png')" ] || fail "long prompt: exit $rc: $(cat long.err)"
grep -q '^df-sample: warning: prompt is 102 tokens; truncated to 77' long.err || fail "long prompt: no truncation warning: $(cat long.err)"
for l in '[1, 2]' '"a face"' '42' 'null' '{"prompt": 3}' '{"prompt": "a", "steps": "many"}' \
         '{"prompt": "a", "width": 60}' '{"prompt": "a", "height": -8}' '{"prompt": "a", "guidance": "high"}' \
         '{"prompt": "a", "seed": -1}' '{"prompt": "a", "batch": 1000}' '{"prompt": "a", "steps": 100000}'; do
    echo "$l" > rec.jsonl
    IN=rec.jsonl expect_record "record-$(echo "$l" | tr -c 'a-z0-9' _)" '.' --model good
done
$PY -c 'import json; print(json.dumps({"prompt": "face " * 400000}))' > huge.jsonl
IN=huge.jsonl expect_record huge-prompt 'prompt|MiB|long' --model good
printf '{"prompt": "a face", "seed": 1}\n[1]\n{"prompt": "a face", "seed": 2}\n' > mixed.jsonl
IN=mixed.jsonl run mixed --model good
[ "$rc" = 0 ] && [ "$(grep -c file_name mixed.out)" = 2 ] && [ "$(grep -c '"error"' mixed.out)" = 1 ] ||
    fail "a bad line among good ones: exit $rc: $(cat mixed.out mixed.err)"

# 8. --latents: wrong shape, dtype, several tensors, NaN, not a file; sizes.
st lat-ok.st latents F32 1,4,8,8
st lat-3ch.st latents F32 1,3,8,8
st lat-3d.st latents F32 4,8,8
st lat-f16.st latents F16 1,4,8,8
st lat-two.st latents F32 1,4,8,8 a b
st lat-empty.st latents F32 1,4,0,8
st lat-nan.st latents F32 1,4,8,8; st lat-nan.st fill latents inf
for f in lat-3ch lat-3d lat-f16 lat-two lat-empty lat-nan; do
    expect_fail "$f" 1 "$f\.st" --model good --latents "$f.st" "${M[@]}"
done
expect_fail lat-missing 1 'lat-missing\.st' --model good --latents lat-missing.st "${M[@]}"
run lat-ok --model good --latents lat-ok.st "${M[@]}"
[ "$rc" = 0 ] || fail "good --latents: exit $rc: $(cat lat-ok.err)"
expect_fail lat-size 2 'latents' --model good --latents lat-ok.st --width 128 "${M[@]}"
expect_fail width-60 2 'width.*multiple of 8|multiple of 8.*width' --model good --width 60 "${M[@]}"
expect_fail height-12 2 'height.*multiple of 8|multiple of 8.*height' --model good --height 12 "${M[@]}"
expect_fail width-0 2 'width' --model good --width 0 "${M[@]}"

# 9. NaN/Inf while sampling: a clear error record, never a NaN PNG.
model m; own $F; st $F fill conv_out.bias nan
expect_record nan-unet "non-finite|NaN or Inf" --model m "${M[@]}"
model m; own m/vae/diffusion_pytorch_model.safetensors
st m/vae/diffusion_pytorch_model.safetensors fill decoder.conv_out.bias inf
expect_record inf-vae "non-finite|NaN or Inf" --model m "${M[@]}"
model m; own m/text_encoder/model.safetensors
st m/text_encoder/model.safetensors fill text_model.final_layer_norm.bias nan
expect_record nan-text "non-finite|NaN or Inf" --model m "${M[@]}"
model m; own $F; st $F fill time_embedding.linear_1.weight 1e38
expect_record inf-unet "non-finite|NaN or Inf" --model m "${M[@]}"

# 10. Outputs: unwritable --out, --save-latents, closed or full stdout.
echo x > afile
expect_fail out-under-file 1 'afile/sub' --model good --out afile/sub "${M[@]}"
"$S" --steps 2 --quiet --model good --out afile "${M[@]}" > out-file.out 2> out-file.err; rc=$?
[ "$rc" = 1 ] || fail "--out is a file: exit $rc, want 1: $(cat out-file.err)"
grep -q '^df-sample: .*afile' out-file.err || fail "--out is a file: message: $(cat out-file.err)"
expect_record save-latents 'afile/lat\.st' --model good --save-latents afile/lat.st "${M[@]}"
"$S" --steps 2 --quiet --model good --out closed "${M[@]}" >&- 2> closed.err; rc=$?
[ "$rc" = 1 ] || fail "stdout closed: exit $rc, want 1: $(cat closed.err)"
grep -q '^df-sample: .*stdout' closed.err || fail "stdout closed: message: $(cat closed.err)"
[ "$(grep -c '^df-sample: ' closed.err)" = 1 ] || fail "stdout closed: want one line: $(cat closed.err)"
[ -z "$(find closed -name '*.png' -size -100c 2> /dev/null)" ] || fail "stdout closed: record written into a PNG"
"$S" --steps 2 --quiet --model good --out full "${M[@]}" > /dev/full 2> full.err; rc=$?
[ "$rc" = 1 ] || fail "/dev/full: exit $rc, want 1: $(cat full.err)"
grep -q '^df-sample: stdout: .*No space' full.err || fail "/dev/full: message: $(cat full.err)"
[ "$(grep -c '^df-sample: ' full.err)" = 1 ] || fail "/dev/full: want one line: $(cat full.err)"
printf '{"prompt": "a face", "seed": 1}\n%.0s' 1 2 3 > three.jsonl
"$S" --steps 2 --quiet --model good --out full3 < three.jsonl > /dev/full 2> full3.err; rc=$?
[ "$rc" = 1 ] && [ "$(find full3 -name '*.png' | wc -l)" = 1 ] ||
    fail "/dev/full: must stop at the first record: exit $rc, $(find full3 -name '*.png' | wc -l) PNGs"

echo "test-df-sample-errors: $fails failures"
[ $fails = 0 ]
