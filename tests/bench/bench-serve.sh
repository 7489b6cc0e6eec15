#!/usr/bin/env bash
# bench-serve.sh - df-serve's own cost per request next to the compute:
# two consecutive OpenAI b64_json requests (20 steps, 512 x 512, seeds 1 and
# 2) on the full-size random SD 2.1 model that bench-sd.sh writes
# ($DF_BENCH_MODEL, default $DF_BUILD/bench-sd21). From the server's own
# records: seconds (the request, from its first byte to its answer) and
# pipeline_seconds (inside df_pipeline_generate, the work df-sample does);
# the difference is queueing, PNG encoding, base64 and HTTP. The second
# request must cost what the first did: nothing is loaded again (the model
# loads once, at start, in the warm-up the server reports; the records'
# stage_seconds would show a component loaded again in its stage). Prints figures,
# asserts nothing. DF_BENCH_SERVE_THREADS (default: all cores),
# DF_BENCH_SERVE_STEPS (20), DF_BENCH_SERVE_SIZE (512).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$root/bin}" "${DF_BUILD:=$root/build}"
: "${DF_FIXTURES:=$(cd "$root/.." && pwd)/shared/fixtures}"
model=${DF_BENCH_MODEL:-$DF_BUILD/bench-sd21}
steps=${DF_BENCH_SERVE_STEPS:-20}
size=${DF_BENCH_SERVE_SIZE:-512}
threads=${DF_BENCH_SERVE_THREADS:-$(nproc)}
if [ ! -s "$model/unet/diffusion_pytorch_model.safetensors" ]; then
    mkdir -p "$model" && "$DF_BUILD/tools/mkmodel" "$DF_FIXTURES/pipeline" "$model" || exit 1
fi
T=$(mktemp -d /tmp/df-bench-serve-XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
echo "model $model; $(nproc) CPUs, $threads threads; load: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
"$DF_BIN/df-serve" --model "$model" --listen 127.0.0.1:0 --out "$T/out" -t "$threads" \
    > "$T/rec.jsonl" 2> "$T/err" &
pid=$!
port=
for _ in $(seq 3000); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$T/err")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$T/err"; exit 1; }
    sleep 0.1
done
[ -n "$port" ] || { echo "df-serve did not start"; cat "$T/err"; exit 1; }
awk -v a="$t0" -v b="$(date +%s.%N)" -v l="$(grep 'loaded in' "$T/err" | sed 's/^df-serve: //')" \
    'BEGIN { printf "start (open, load every component, warm-up): %.1f s; %s\n", b - a, l }'
for seed in 1 2; do
    curl -s -o "$T/resp$seed.json" -w '%{http_code} %{size_download} bytes\n' \
        "http://127.0.0.1:$port/v1/images/generations" -H 'Content-Type: application/json' \
        -d "{\"prompt\": \"portrait of a smiling old man\", \"size\": \"${size}x${size}\", \"steps\": $steps, \"seed\": $seed, \"response_format\": \"b64_json\"}" \
        | sed "s/^/request $seed: HTTP /"
done
kill -TERM "$pid"; wait "$pid"; pid=
/usr/bin/python3 - "$T/rec.jsonl" "$steps" "$size" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
gen = [r for r in recs if r.get("endpoint") == "POST /v1/images/generations"]
for k, r in enumerate(gen, 1):
    over = r["seconds"] - r.get("pipeline_seconds", 0)
    print("request %d (%s steps, %s px, b64_json): %.3f s total, %.3f s in the pipeline, "
          "overhead %.3f s = %.3f%% of the compute" % (k, sys.argv[2], sys.argv[3], r["seconds"],
          r.get("pipeline_seconds", 0), over, 100 * over / max(r.get("pipeline_seconds", 0), 1e-9)))
    st = r.get("stage_seconds")
    if st:
        print("    stages: text encoder %.3f s, UNet %.3f s, VAE %.3f s" % (st["text_encoder"], st["unet"], st["vae"]))
if len(gen) == 2:
    print("second / first request pipeline time: %.3f (1 when nothing is loaded again)"
          % (gen[1]["pipeline_seconds"] / gen[0]["pipeline_seconds"]))
EOF
