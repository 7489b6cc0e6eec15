#!/usr/bin/env bash
# test-df-serve-limits.sh - what df-serve refuses, and that it lives on
# after each: malformed JSON, a body that is not an object, duplicate keys,
# unknown fields (each API), wrong types, sizes that are not multiples of 8
# or over --max-pixels, steps/batch/prompt over their limits, malformed
# base64, an upload whose header claims a huge image (refused before
# decoding), A1111 fields at values this server does not do (400 naming the
# field); 401 without or with a wrong API key (the key never in the logs);
# 413 for a body over --max-body, declared or chunked; 404/405; usage errors.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$ROOT/bin}"
: "${DF_FIXTURES:=$(cd "$ROOT/.." && pwd)/shared/fixtures}"
export DF_BIN DF_FIXTURES DF_TEST_NAME=test-df-serve-limits
T=$(mktemp -d /tmp/df-test-serve-limits-XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
PYTHONPATH="$ROOT/tests/tools" exec /usr/bin/python3 - <<'EOF'
import base64, http.client, json, os, socket, struct, subprocess, zlib
from serve_client import *

# usage errors exit 2, a model that cannot be opened exits 1
serve = os.path.join(BIN, "df-serve")
for args, want in ((["--help"], 0), ([], 2), (["--model", MODEL, "--api-key-env", "DF_NO_SUCH_VAR"], 2),
                   (["--model", MODEL, "--queue", "x"], 2), (["--model", "/nonexistent"], 1),
                   (["--model", MODEL, "--listen", "nohost:1", "--out", "o0"], 1)):
    p = subprocess.run([serve] + args, capture_output=True, text=True, timeout=60)
    check(p.returncode == want, "df-serve %s: exit %d, want %d (%s)" % (args, p.returncode, want,
                                                                       p.stderr.strip()[-200:]))
    check(p.stdout == "" or args == ["--help"], "df-serve %s wrote to stdout" % args)
    check(p.returncode == 0 or not os.path.exists("df-serve-images"),
          "df-serve %s: a failed start left the default --out folder behind" % args)

s = Server("--max-body", "65536", "--max-pixels", "16384", "--max-steps", "10",
           "--max-batch", "2", "--max-prompt-chars", "50")

def bad(method, path, body, status, needle, raw=False):
    st, h, r = s.req(method, path, body if raw else json.dumps(body),
                     {"Content-Type": "application/json"})
    try:
        msg = json.loads(r)["error"]
        msg = msg["message"] if isinstance(msg, dict) else msg
    except (ValueError, KeyError, TypeError):
        msg = repr(r[:100])
    check(st == status and needle in msg and "\n" not in msg,
          "%s %s %s: %s %r, want %d with %r" % (method, path, str(body)[:60], st, msg, status, needle))
    check(s.json("GET", "/health")[0] == 200, "the server died after %s" % str(body)[:60])

OA, A1, PG = "/v1/images/generations", "/sdapi/v1/txt2img", "/api/jobs"
bad("POST", PG, b"{\"prompt\": ", 400, "malformed JSON", raw=True)
bad("POST", OA, b"[1, 2]", 400, "JSON object", raw=True)
bad("POST", A1, b"{\"prompt\": \"a\", \"prompt\": \"b\"}", 400, "duplicate", raw=True)
bad("POST", A1, b"\xff\xfe", 400, "malformed JSON", raw=True)
bad("POST", PG, {"prompt": "x", "colour": 1}, 400, "'colour'")
bad("POST", OA, {"prompt": "x", "colour": 1}, 400, "'colour'")
bad("POST", A1, {"prompt": "x", "colour": 1}, 400, "'colour'")
bad("POST", A1, {"prompt": "x", "mask": "abc"}, 400, "'mask'")   # img2img's field on txt2img
bad("POST", PG, {"prompt": "x", "width": 60, "height": 64}, 400, "multiples of 8")
bad("POST", PG, {"prompt": "x", "width": 256, "height": 256}, 400, "--max-pixels")
bad("POST", OA, {"prompt": "x", "size": "64by64"}, 400, "WIDTHxHEIGHT")
bad("POST", OA, {"prompt": "x", "size": "63x64"}, 400, "multiples of 8")
bad("POST", PG, {"prompt": "x", "steps": "20"}, 400, "steps must be a whole number")
bad("POST", PG, {"prompt": "x", "steps": 11}, 400, "steps must be from 1 to 10")
bad("POST", PG, {"prompt": "x", "batch": 3}, 400, "batch")
bad("POST", A1, {"prompt": "x", "batch_size": 2, "n_iter": 2}, 400, "--max-batch")
bad("POST", OA, {"prompt": "x", "n": 3}, 400, "n must be from 1 to 2")
bad("POST", PG, {"prompt": "x" * 51}, 400, "50 characters")
bad("POST", PG, {"prompt": "\u00e9" * 50, "width": 64, "height": 64, "steps": 1, "seed": 1}, 202, "")
bad("POST", PG, {"prompt": "a\u0000b"}, 400, "NUL")
bad("POST", PG, {"steps": 2}, 400, "prompt is required")
bad("POST", PG, {"prompt": "x", "guidance": "high"}, 400, "guidance must be a number")
bad("POST", PG, {"prompt": "x", "seed": -2}, 400, "seed")
bad("POST", PG, {"prompt": "x", "scheduler": "warp"}, 400, "unknown scheduler")
bad("POST", PG, {"prompt": "x", "lora_scales": [1]}, 400, "lora_scales")
bad("POST", A1, {"prompt": "x", "sampler_name": "Heun"}, 400, "unknown sampler")
bad("POST", A1, {"prompt": "x", "restore_faces": True}, 400, "'restore_faces'")
bad("POST", A1, {"prompt": "x", "enable_hr": True}, 400, "'enable_hr'")
bad("POST", A1, {"prompt": "x", "eta": 0.5, "sampler_name": "DDIM"}, 400, "eta")
bad("POST", A1, {"prompt": "x", "scheduler": "Exponential"}, 400, "scheduler")
bad("POST", OA, {"prompt": "x", "model": "dall-e-3"}, 400, "serves only 'pipeline'")
bad("POST", OA, {"prompt": "x", "response_format": "jpeg"}, 400, "response_format")
# uploads: malformed base64, not an image, a header that claims 30000 x 30000
bad("POST", PG, {"prompt": "x", "width": 64, "height": 64, "init_image": "a$b="}, 400, "malformed base64")
bad("POST", PG, {"prompt": "x", "width": 64, "height": 64,
                 "init_image": "data:image/png;base64," + base64.b64encode(b"hello").decode()}, 400, "not a PNG or JPEG")
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
bad("POST", A1.replace("txt2img", "img2img"), {"prompt": "x", "width": 64, "height": 64,
    "init_images": [base64.b64encode(bomb).decode()]}, 400, "over the upload limit")
bad("POST", PG, {"prompt": "x", "width": 64, "height": 64, "mask": base64.b64encode(bomb).decode()}, 400,
    "mask needs an init_image")
bad("POST", A1.replace("txt2img", "img2img"), {"prompt": "x", "width": 64, "height": 64, "init_images": []}, 400, "init_images")
# 413: declared too big (the body is not read), and a chunked body that grows too big
bad("POST", PG, {"prompt": "x" * 70000}, 413, "--max-body")
c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
c.putrequest("POST", PG)
c.putheader("Transfer-Encoding", "chunked")
c.endheaders()
for _ in range(20):
    piece = b"x" * 8192
    c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
c.send(b"0\r\n\r\n")
r = c.getresponse()
check(r.status == 413, "chunked body over --max-body: %d" % r.status)
c.close()
check(s.json("GET", "/health")[0] == 200, "the server died after a chunked body")
# 404, 405
check(s.req("GET", "/nope")[0] == 404, "unknown path is not 404")
check(s.req("GET", OA)[0] == 405, "GET on a POST endpoint is not 405")
check(s.req("GET", "/api/jobs/x/cancel")[0] == 405, "GET cancel is not 405")
check(s.req("GET", A1)[0] == 405 and s.req("POST", "/sdapi/v1/progress")[0] == 405,
      "A1111 endpoints with the wrong method are not 405")
check(s.req("GET", "/sdapi/v1/nope")[0] == 404, "an unknown A1111 endpoint is not 404")
check(s.req("GET", "/images/../../etc/passwd")[0] == 404, "path traversal is not 404")
# garbage on the socket
sk = socket.create_connection(("127.0.0.1", s.port))
sk.sendall(b"\x00\x01garbage\r\n\r\n")
sk.settimeout(10)
try:
    sk.recv(100)
except OSError:
    pass
sk.close()
check(s.json("GET", "/health")[0] == 200, "the server died after garbage on a socket")
check(s.stop() == 0, "exit after the bad requests")
recs = s.records()
check(len([x for x in recs if x.get("status") == 400 and x.get("error")]) >= 30,
      "400 records with an error: %d" % len([x for x in recs if x.get("status") == 400]))

# --- the API key
KEY = "k3y-s3cret-%d" % os.getpid()
s = Server("--api-key-env", "DF_TEST_KEY", env={"DF_TEST_KEY": KEY})
for h in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + KEY + "x"},
          {"Authorization": "Basic " + KEY}):
    st, hd, r = s.req("GET", "/", headers=h)
    check(st == 200 and b"<html" in r.lower(), "GET / (the page, which asks for the key) with %s: %d" % (h, st))
    for path in ("/api/info", "/health", "/sdapi/v1/progress", "/api/gallery", "/images/00000-1.png"):
        st, hd, r = s.req("GET", path, headers=h)
        check(st == 401 and "bearer" in hd.get("www-authenticate", "").lower(),
              "GET %s with %s: %d" % (path, h, st))
st, hd, r = s.req("POST", OA, json.dumps({"prompt": "x" * 100000}))
check(st == 401, "a big body without the key: %d (401 comes first)" % st)
good = {"Authorization": "Bearer " + KEY}
check(s.req("GET", "/api/info", headers=good)[0] == 200, "the right key is refused")
st, hd, r = s.req("GET", "/", headers=good)
check(st == 200 and b"<html" in r.lower() and hd.get("content-type", "").startswith("text/html"),
      "GET / with the key: %d" % st)
st, hd, r = s.json("POST", OA, {"prompt": "x", "size": "64x64", "steps": 2,
                                "response_format": "b64_json"}, headers=good)
check(st == 200, "a generation with the key: %d" % st)
check(s.stop() == 0, "exit with a key")
logs = open(s.rec_path).read() + open(s.err_path).read()
check(KEY not in logs, "the API key appears in the logs")
done()
EOF
