#!/usr/bin/env bash
# test-df-serve-examples.sh - the EXAMPLES of man/df-serve.1 run as written
# on the fixture pipeline, with a free port for 7860, 64 x 64 images of 2
# steps instead of 512 x 512 of 20, and 127.0.0.1 for 0.0.0.0; each server
# is waited for before the next line. The results are checked: a PNG, two
# A1111 images, exit 0 on SIGTERM, records on stdout.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$ROOT/bin}"
: "${DF_FIXTURES:=$(cd "$ROOT/.." && pwd)/shared/fixtures}"
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-serve-ex-XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
wait_up='for i in $(seq 300); do curl -s -o /dev/null http://127.0.0.1:'$port'/ && break; sleep 0.1; done'
sed -n '/^\.SH EXAMPLES/,/^\.SH /p' "$ROOT/man/df-serve.1" | sed -n '/^\.EX/,/^\.EE/p' | grep -v '^\.E[XE]' |
    sed -e 's/\\-/-/g' -e 's/\\e/\\/g' -e "s/7860/$port/g" -e 's/512x512/64x64/g' \
        -e 's/"steps": 20/"steps": 2/g' -e 's/"width": 512, "height": 512/"width": 64, "height": 64/' \
        -e 's/0\.0\.0\.0/127.0.0.1/g' |
    awk -v w="$wait_up" '{ print } /&$/ { print w }' > examples.sh
[ -s examples.sh ] || fail "no EXAMPLES in the man page"
MODEL="$DF_FIXTURES/pipeline" LORA="$DF_FIXTURES/lora/peft_lora.safetensors" PATH="$DF_BIN:$PATH" \
    timeout 300 bash -e examples.sh > ex.out 2> ex.err || { fail "the EXAMPLES failed:"; cat examples.sh ex.err >&2; }
$PY - <<'EOF2' || fail "EXAMPLES' results"
import json, base64, sys
ok = open("man.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
a = json.load(open("a1111.json"))
ok &= len(a["images"]) == 2 and json.loads(a["info"])["all_seeds"] == [7, 8]
recs = [json.loads(l) for l in open("requests.jsonl")]
ok &= all(r["status"] == 200 for r in recs) and len(recs) >= 1
sys.exit(0 if ok else 1)
EOF2
grep -q '"status":"ok"' ex.out || fail "the keyed /health answer: $(cat ex.out)"
echo "test-df-serve-examples: $fails failures" >&2
[ "$fails" -eq 0 ]
