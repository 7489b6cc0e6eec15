#!/usr/bin/env bash
# test-df-serve-browser.sh - df-serve's web page (tools/df-serve/page.html)
# in a real browser: headless chromium driven by Debian's python3-selenium
# (tests/tools/df_serve_browser.py) against the real df-serve on the tiny
# fixture model. Checks: a fixed-seed image (progress bar, natural size,
# seed, PNG download), a random-seed batch, the gallery and "use these
# settings again" (same pixels), the server's error line, live progress and
# Cancel, img2img and a painted mask (inpainting) through the panel, the
# layout and touch painting at 390 px, no script from a prompt (XSS), and
# the API key form against a second server run with --api-key-env.
# Screenshots (desktop.png, phone.png, phone-mask.png, key-dialog.png) and
# the servers' logs go to $DF_BUILD/test-output/browser/.
# Exit 77 with "skipped: no chromium" only when chromium, chromedriver or
# selenium is not installed (make deps installs them).
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
: "${DF_BUILD:=$(cd "$(dirname "$0")/../.." && pwd)/build}"
: "${DF_FIXTURES:=$(cd "$(dirname "$0")/../../.." && pwd)/shared/fixtures}"
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)

chromium=$(command -v chromium || command -v chromium-browser || true)
driver=$(command -v chromedriver || true)
if [ -z "$chromium" ] || [ -z "$driver" ] || ! "$PY" -c 'import selenium' 2>/dev/null; then
    echo "skipped: no chromium (chromium, chromium-driver and python3-selenium; make deps installs them)"
    exit 77
fi
[ -x "$DF_BIN/df-serve" ] || { echo "FAIL: $DF_BIN/df-serve is not built" >&2; exit 1; }

OUT=$DF_BUILD/test-output/browser
rm -rf "$OUT" && mkdir -p "$OUT" || exit 1
T=$(mktemp -d /tmp/df-test-serve-browser-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fails=0

# serve NAME [flags...]: df-serve on a free port; sets URL. A port taken
# between the probe and the bind is retried on another.
serve() {
    local name=$1 port pid code i; shift
    for _ in 1 2 3; do
        port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$DF_BIN/df-serve" --model "$DF_FIXTURES/pipeline" --listen "127.0.0.1:$port" \
            --out "$T/$name-images" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.err" &
        pid=$!
        for i in $(seq 150); do   # up to 15 s to load the model
            code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
            case $code in 200|401) pids+=("$pid"); URL=http://127.0.0.1:$port; return 0 ;; esac
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    done
    echo "FAIL: df-serve ($name) did not start:" >&2
    tail -n 20 "$OUT/$name.err" >&2
    return 1
}

browse() {   # NAME [args...]: the browser checks, output kept in $OUT/NAME.log
    local name=$1; shift
    mkdir -p "$T/$name"
    timeout 400 "$PY" "$HERE/df_serve_browser.py" --chromium "$chromium" --chromedriver "$driver" \
        --shots "$OUT" --work "$T/$name" "$@" 2>&1 | tee "$OUT/$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "FAIL: browser checks ($name), see $OUT/$name.log" >&2; fails=$((fails + 1)); }
}

if serve page --queue 1 --lora "$DF_FIXTURES/lora/peft_lora.safetensors:0.7"; then
    browse page --url "$URL"
else
    fails=$((fails + 1))
fi

export DF_TEST_SERVE_KEY="browser-test-key-$$"
if serve key --api-key-env DF_TEST_SERVE_KEY; then
    browse key --url "$URL" --key "$DF_TEST_SERVE_KEY"
    grep -q "$DF_TEST_SERVE_KEY" "$OUT/key.jsonl" "$OUT/key.err" &&
        { echo "FAIL: the API key appears in df-serve's output" >&2; fails=$((fails + 1)); }
else
    fails=$((fails + 1))
fi

for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
for p in "${pids[@]}"; do
    wait "$p"; rc=$?
    [ "$rc" -eq 0 ] || { echo "FAIL: df-serve exited $rc after SIGTERM" >&2; fails=$((fails + 1)); }
done
pids=()
if grep -l -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$OUT"/*.err 2>/dev/null; then
    echo "FAIL: sanitizer report in df-serve's stderr" >&2; fails=$((fails + 1))
fi
echo "screenshots and logs: $OUT"
[ "$fails" -eq 0 ] && echo "PASS test-df-serve-browser" || echo "FAIL test-df-serve-browser: $fails"
[ "$fails" -eq 0 ]
