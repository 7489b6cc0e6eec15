#!/usr/bin/env bash
# test-df-serve.sh - df-serve on the fixture pipeline, on 127.0.0.1 (a free
# port): an image through each API (OpenAI b64_json and url, A1111 txt2img,
# the page API) is pixel for pixel df-sample's for the same parameters and
# seed, with the same PNG text; 8 concurrent clients each get their own
# image; a full queue answers 503 with Retry-After; cancel (page API) and
# /sdapi/v1/interrupt; a client that disconnects mid-job costs only its job;
# the gallery after a restart; A1111 img2img (or, until the pipeline has it,
# a clean error); SIGTERM mid-job exits 0 within the grace; one record per
# request. Limits, 400/401/413: test-df-serve-limits.sh.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$ROOT/bin}"
: "${DF_BUILD:=$ROOT/build}"
: "${DF_FIXTURES:=$(cd "$ROOT/.." && pwd)/shared/fixtures}"
export DF_BIN DF_BUILD DF_FIXTURES
T=$(mktemp -d /tmp/df-test-serve-XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
PYTHONPATH="$ROOT/tests/tools" exec /usr/bin/python3 - <<'EOF'
import base64, json, os, signal, socket, subprocess, threading, time
from serve_client import *

s = Server("--queue", "8")

# --- OpenAI, b64_json: df-sample's pixels and PNG text
body = {"prompt": "a face", "negative_prompt": "blurry", "size": "64x64", "steps": 4,
        "guidance": 6, "seed": 3, "scheduler": "ddim", "response_format": "b64_json"}
st, h, r = s.json("POST", "/v1/images/generations", body)
ref = df_sample("oa", "-p", "a face", "-n", "blurry", "--steps", "4", "--guidance", "6",
                "--seed", "3", "--scheduler", "ddim", "--width", "64", "--height", "64")
if check(st == 200 and len(r.get("data", [])) == 1, "openai: %s %s" % (st, r)) and ref:
    png = b64png(r["data"][0]["b64_json"])
    same_pixels("openai b64_json", png, ref[0])
    got, want = pixels(png)[3], pixels(open(ref[0], "rb").read())[3]
    check(got.get("parameters") == want.get("parameters"),
          "openai: parameters text %r, df-sample %r" % (got.get("parameters"), want.get("parameters")))
    gr, wr = json.loads(got["diffyface"]), json.loads(want["diffyface"])
    for k in ("file_name", "seconds"):
        gr.pop(k, None), wr.pop(k, None)
    check(gr == wr, "openai: diffyface record %s, df-sample %s" % (gr, wr))
    check(got.get("Software") == "diffyface df-serve", "openai: Software %r" % got.get("Software"))

# url response format; n = 2 is df-sample's --batch 2
body.update(response_format="url", n=2, seed=11)
st, h, r = s.json("POST", "/v1/images/generations", body)
ref = df_sample("oa2", "-p", "a face", "-n", "blurry", "--steps", "4", "--guidance", "6",
                "--seed", "11", "--scheduler", "ddim", "--width", "64", "--height", "64",
                "--batch", "2")
if check(st == 200 and len(r.get("data", [])) == 2, "openai url n=2: %s %s" % (st, r)) and len(ref) == 2:
    for k, d in enumerate(r["data"]):
        u = d.get("url", "")
        check(u.startswith("http://127.0.0.1:%d/images/" % s.port), "openai url: %s" % u)
        st2, h2, png = s.req("GET", u[u.index("/images/"):])
        check(st2 == 200 and h2.get("content-type") == "image/png", "GET %s: %s" % (u, st2))
        same_pixels("openai url batch %d" % k, png, ref[k])

# --- A1111 txt2img: image k has seed + k, as df-sample --seed S+k
body = {"prompt": "a face", "negative_prompt": "", "steps": 4, "cfg_scale": 7, "seed": 5,
        "width": 64, "height": 64, "sampler_name": "Euler a", "batch_size": 2,
        "restore_faces": False, "styles": [], "enable_hr": False, "hr_scale": 2,
        "override_settings": {}, "send_images": True, "save_images": False}
st, h, r = s.json("POST", "/sdapi/v1/txt2img", body)
refs = df_sample("a1", "--steps", "4", "--guidance", "7", "--scheduler", "euler_ancestral",
                 "--width", "64", "--height", "64",
                 records=[{"prompt": "a face", "seed": 5}, {"prompt": "a face", "seed": 6}])
if check(st == 200 and len(r.get("images", [])) == 2, "a1111 txt2img: %s %s" % (st, str(r)[:300])):
    info = json.loads(r["info"])
    check(info.get("all_seeds") == [5, 6] and info.get("seed") == 5, "a1111 info: %s" % info)
    check(r["parameters"].get("sampler_name") == "Euler a", "a1111 parameters: %s" % r["parameters"])
    check(len(info.get("infotexts", [])) == 2 and "Seed: 6" in info["infotexts"][1],
          "a1111 infotexts: %s" % info.get("infotexts"))
    for k in range(2):
        if k < len(refs):
            same_pixels("a1111 txt2img image %d" % k, b64png(r["images"][k]), refs[k])
# A1111's defaults: steps 50, cfg_scale 7, sampler Euler, 512 x 512 (here 64 x 64 given)
st, h, r = s.json("POST", "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 2})
p = r.get("parameters", {})
check(st == 200 and p.get("cfg_scale") == 7 and p.get("sampler_name") == "Euler"
      and p.get("batch_size") == 1 and p.get("n_iter") == 1, "a1111 defaults: %s %s" % (st, p))
st, h, r = s.json("POST", "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64,
                                                "steps": 2, "send_images": False})
check(st == 200 and r.get("images") == [], "send_images false: %s %s" % (st, str(r)[:200]))
for path in ("/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/progress", "/health",
             "/api/info", "/api/gallery", "/sdapi/v1/options", "/v1/models"):
    st, h, r = s.json("GET", path)
    check(st == 200, "GET %s: %s" % (path, st))
st, h, r = s.json("GET", "/sdapi/v1/samplers")
names = [x["name"] for x in r]
check("Euler a" in names and "DPM++ 2M Karras" in names and "DDIM" in names, "samplers: %s" % names)
st, h, r = s.json("GET", "/sdapi/v1/sd-models")
check(r and r[0].get("model_name") == "pipeline", "sd-models: %s" % r)

# --- page API: batch 2 with seed 9 is df-sample --seed 9 --batch 2
st, h, r = s.json("POST", "/api/jobs", {"prompt": "a face", "steps": 4, "seed": 9, "width": 64,
                                        "height": 64, "batch": 2, "scheduler": "dpmpp_2m",
                                        "guidance": 5.5})
ref = df_sample("pg", "-p", "a face", "--steps", "4", "--seed", "9", "--width", "64",
                "--height", "64", "--batch", "2", "--scheduler", "dpmpp_2m", "--guidance", "5.5")
if check(st == 202 and "id" in r and "position" in r, "page submit: %s %s" % (st, r)):
    j = s.wait_job(r["id"])
    check(j.get("state") == "done" and len(j.get("images", [])) == 2, "page job: %s" % j)
    check(j.get("params", {}).get("seed") == 9 and j["params"].get("scheduler") == "dpmpp_2m"
          and j["params"].get("batch") == 2, "page params: %s" % j.get("params"))
    for k, im in enumerate(j.get("images", [])):
        check(im.get("seed") == 9 and im.get("width") == 64 and im.get("height") == 64,
              "page image %d: %s" % (k, im))
        st2, h2, png = s.req("GET", im["url"])
        if k < len(ref):
            same_pixels("page image %d" % k, png, ref[k])
    st, h, g = s.json("GET", "/api/gallery")
    urls = [x["url"] for x in g.get("images", [])]
    check(urls[:2] == [j["images"][1]["url"], j["images"][0]["url"]] and
          all("time" in x and "params" in x for x in g["images"]),
          "gallery newest first: %s" % urls[:4])
check(s.json("GET", "/api/jobs/nosuchjob")[0] == 404, "unknown job id is not 404")

# --- 8 concurrent clients, each its own seed
res = {}
def client(k):
    res[k] = s.json("POST", "/v1/images/generations",
                    {"prompt": "client %d" % k, "size": "64x64", "steps": 3, "seed": 100 + k,
                     "response_format": "b64_json"})
ths = [threading.Thread(target=client, args=(k,)) for k in range(8)]
[t.start() for t in ths]
[t.join() for t in ths]
refs = df_sample("cc", "--steps", "3", "--width", "64", "--height", "64", "--guidance", "7.5",
                 records=[{"prompt": "client %d" % k, "seed": 100 + k} for k in range(8)])
for k in range(8):
    st, h, r = res[k]
    if check(st == 200 and len(r.get("data", [])) == 1, "client %d: %s" % (k, st)) and k < len(refs):
        same_pixels("concurrent client %d" % k, b64png(r["data"][0]["b64_json"]), refs[k])

# --- a client that disconnects mid-job costs only its job
long_job = json.dumps({"prompt": "long", "size": "256x256", "steps": 150, "seed": 1}).encode()
sock = socket.create_connection(("127.0.0.1", s.port))
sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(long_job) + long_job)
check(s.wait_running(), "disconnect: the long job never ran")
t0 = time.time()
sock.close()
idle = False
while time.time() - t0 < 10 and not idle:
    idle = not s.json("GET", "/health")[2].get("busy")
    time.sleep(0.05)
check(idle, "disconnect: the job went on after its client left")
st, h, r = s.json("POST", "/v1/images/generations", {"prompt": "after", "size": "64x64", "steps": 2})
check(st == 200, "a request after a disconnect: %s" % st)
check(s.stop() == 0, "exit after the first part")
recs = s.records()
gone = [x for x in recs if x.get("endpoint") == "POST /v1/images/generations" and "error" in x]
check(len(gone) == 1 and gone[0]["seconds"] < 60, "disconnect record: %s" % gone)
# one record per request with the vocabulary
for x in recs:
    if not all(k in x for k in ("time", "endpoint", "status", "seconds")):
        fail("record without time/endpoint/status/seconds: %s" % x)
        break
gen = [x for x in recs if x.get("endpoint") == "POST /v1/images/generations" and x["status"] == 200]
check(len(gen) >= 10 and all("seed" in x and "pipeline_seconds" in x and
                             set(x.get("stage_seconds", {})) == {"text_encoder", "unet", "vae"}
                             for x in gen),
      "generation records: %s" % gen[:2])

# --- queue full, cancel (page API), interrupt (A1111)
s = Server("--queue", "1")
long_page = {"prompt": "long", "width": 256, "height": 256, "steps": 150, "seed": 1}
st, h, a = s.json("POST", "/api/jobs", long_page)
check(st == 202 and s.wait_running(), "queue: job A: %s" % st)
st, h, b = s.json("POST", "/api/jobs", long_page)
check(st == 202 and b.get("position") == 0, "queue: job B: %s %s" % (st, b))
st, h, c = s.json("POST", "/api/jobs", long_page)
check(st == 503 and h.get("retry-after", "").isdigit() and "error" in c,
      "queue full: %s %s %s" % (st, h.get("retry-after"), c))
st, h, c = s.json("POST", "/v1/images/generations", {"prompt": "x", "size": "64x64"})
check(st == 503 and "retry-after" in h, "queue full (OpenAI): %s" % st)
st, h, r = s.json("POST", "/api/jobs/%s/cancel" % b.get("id"))
check(st == 200 and r.get("state") == "cancelled", "cancel queued: %s %s" % (st, r))
st, h, r = s.json("POST", "/api/jobs/%s/cancel" % a.get("id"))
check(st == 200 and r.get("id") == a.get("id"), "cancel running: %s %s" % (st, r))
j = s.wait_job(a["id"], timeout=20)
check(j.get("state") == "cancelled", "cancelled running job: %s" % j.get("state"))
# interrupt: the running A1111 request answers 200 with what it made (nothing)
out = {}
th = threading.Thread(target=lambda: out.update(r=s.json("POST", "/sdapi/v1/txt2img",
        {"prompt": "long", "width": 256, "height": 256, "steps": 150})))
th.start()
check(s.wait_running(), "interrupt: the job never ran")
t0 = time.time()
st, h, r = s.json("POST", "/sdapi/v1/interrupt")
th.join(30)
st2, _, r2 = out.get("r", (0, {}, {}))
check(st == 200 and st2 == 200 and r2.get("images") == [] and time.time() - t0 < 20,
      "interrupt: %s %s %s" % (st, st2, str(r2)[:200]))
st, h, r = s.json("POST", "/api/jobs", {"prompt": "after", "width": 64, "height": 64, "steps": 2})
check(st == 202 and s.wait_job(r["id"]).get("state") == "done", "a job after cancels")

# --- img2img (A1111) and inpainting (page API) equal df-sample's; a clean
# 501 error while the pipeline lacks them
def gradient(w, h):
    im = Image.new("RGB", (w, h))
    im.putdata([(x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)) for y in range(h) for x in range(w)])
    return im
gradient(84, 70).save("init.png")
mask = Image.new("RGB", (84, 70), (0, 0, 0))
mask.paste((255, 255, 255), (20, 10, 60, 50))
mask.save("mask.png")
enc = lambda f: base64.b64encode(open(f, "rb").read()).decode()
st, h, r = s.json("POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": [enc("init.png")],
                                                "width": 64, "height": 64, "steps": 4, "seed": 2,
                                                "denoising_strength": 0.5, "sampler_name": "DDIM"})
if st == 501:
    check("not implemented" in r.get("error", ""), "img2img error: %s" % r)
    print("test-df-serve: img2img: the pipeline answers 'not implemented' (501)", flush=True)
elif check(st == 200 and len(r.get("images", [])) == 1, "img2img: %s %s" % (st, str(r)[:300])):
    ref = df_sample("i2i", "-p", "x", "--init-image", "init.png", "--strength", "0.5", "--steps", "4",
                    "--seed", "2", "--scheduler", "ddim", "--guidance", "7", "--width", "64",
                    "--height", "64")
    if ref:
        same_pixels("a1111 img2img", b64png(r["images"][0]), ref[0])
    check("Denoising strength: 0.5" in pixels(b64png(r["images"][0]))[3].get("parameters", ""),
          "img2img: no Denoising strength in the PNG text")
    # page API: img2img at the image's own size (84x70 -> 80x64), and inpainting
    st, h, r = s.json("POST", "/api/jobs", {"prompt": "y", "init_image": "data:image/png;base64," + enc("init.png"),
                                            "steps": 5, "seed": 4})
    j = s.wait_job(r.get("id", "none"))
    ref = df_sample("i2i-page", "-p", "y", "--init-image", "init.png", "--steps", "5", "--seed", "4",
                    "--guidance", "7.5")
    if check(j.get("state") == "done" and j["images"][0]["width"] == 80 and j["images"][0]["height"] == 64,
             "page img2img: %s" % j) and ref:
        same_pixels("page img2img", s.req("GET", j["images"][0]["url"])[2], ref[0])
    st, h, r = s.json("POST", "/api/jobs", {"prompt": "z", "init_image": enc("init.png"), "mask": enc("mask.png"),
                                            "steps": 4, "seed": 6, "width": 64, "height": 64})
    j = s.wait_job(r.get("id", "none"))
    ref = df_sample("inpaint", "-p", "z", "--init-image", "init.png", "--mask", "mask.png", "--steps", "4",
                    "--seed", "6", "--width", "64", "--height", "64", "--guidance", "7.5")
    if check(j.get("state") == "done" and j.get("params", {}).get("inpaint") is True,
             "page inpainting: %s" % j) and ref:
        same_pixels("page inpainting", s.req("GET", j["images"][0]["url"])[2], ref[0])

# --- LoRAs: as loaded, switched off per job, named in an A1111 prompt
rc = s.stop()
check(rc == 0, "SIGTERM idle: exit %s" % rc)
LORA = os.path.join(FX, "lora", "peft_lora.safetensors")
s = Server("--lora", LORA + ":0.5")
st, h, info = s.json("GET", "/api/info")
check(info.get("loras") == [{"name": "peft_lora", "scale": 0.5}], "info loras: %s" % info.get("loras"))
for scales, args, tag in (([0.5], ["--lora", LORA + ":0.5"], "lora-half"), ([0], [], "lora-off")):
    st, h, r = s.json("POST", "/api/jobs", {"prompt": "a face", "steps": 3, "seed": 21, "width": 64,
                                            "height": 64, "lora_scales": scales})
    j = s.wait_job(r.get("id", "none"))
    ref = df_sample(tag, "-p", "a face", "--steps", "3", "--seed", "21", "--width", "64", "--height",
                    "64", *args)
    if check(j.get("state") == "done", "lora job %s: %s" % (scales, j)) and ref:
        png = s.req("GET", j["images"][0]["url"])[2]
        same_pixels("page lora_scales %s" % scales, png, ref[0])
        got, want = pixels(png)[3], pixels(open(ref[0], "rb").read())[3]
        check(got.get("parameters") == want.get("parameters"),
              "lora parameters text %r, df-sample %r" % (got.get("parameters"), want.get("parameters")))
st, h, r = s.json("POST", "/sdapi/v1/txt2img", {"prompt": "a face <lora:peft_lora:1>", "steps": 3,
                                                "seed": 22, "width": 64, "height": 64,
                                                "sampler_name": "DDIM", "cfg_scale": 7.5})
ref = df_sample("lora-a1111", "-p", "a face ", "--steps", "3", "--seed", "22", "--width", "64",
                "--height", "64", "--scheduler", "ddim", "--lora", LORA + ":1")
if check(st == 200 and len(r.get("images", [])) == 1, "a1111 lora tag: %s %s" % (st, str(r)[:200])) and ref:
    same_pixels("a1111 <lora:peft_lora:1>", b64png(r["images"][0]), ref[0])
    check("<lora:peft_lora:1>" in json.loads(r["info"])["infotexts"][0], "a1111 lora infotext")
st, h, r = s.json("POST", "/sdapi/v1/txt2img", {"prompt": "<lora:other:1> x", "steps": 1, "width": 64, "height": 64})
check(st == 400 and "no such LoRA" in r.get("error", ""), "unknown lora tag: %s %s" % (st, r))

# --- SIGTERM mid-job: the job is cancelled after --grace, exit 0
rc = s.stop()
check(rc == 0, "SIGTERM idle (with a LoRA): exit %s" % rc)
s = Server("--grace", "1")
st, h, r = s.json("POST", "/api/jobs", long_page)
check(s.wait_running(), "SIGTERM: the job never ran")
t0 = time.time()
rc = s.stop(timeout=30)
check(rc == 0 and time.time() - t0 < 10, "SIGTERM mid-job: exit %s after %.1f s" % (rc, time.time() - t0))
check("stopped" in open(s.err_path).read(), "SIGTERM: no 'stopped' line")

# --- a single-file checkpoint (--config, --prediction) serves df-sample's image
mk = os.path.join(os.environ["DF_BUILD"], "tools", "mk-single-file")
if not os.access(mk, os.X_OK):
    print("test-df-serve: single file: %s not built, case skipped" % mk, flush=True)
elif check(subprocess.run([mk, MODEL, "sd.safetensors"], capture_output=True).returncode == 0,
           "mk-single-file"):
    s = Server("--config", MODEL, "--prediction", "v", model="sd.safetensors", out="out-single")
    st, h, info = s.json("GET", "/api/info")
    check(info.get("model") == "sd.safetensors" and info.get("scheduler") == "ddim",
          "single-file info: %s" % info)
    st, h, r = s.json("POST", "/v1/images/generations", {"prompt": "a face", "size": "64x64", "steps": 4,
                                                         "seed": 31, "response_format": "b64_json"})
    ref = df_sample("single", "-p", "a face", "--steps", "4", "--seed", "31", "--width", "64",
                    "--height", "64")
    if check(st == 200, "single-file request: %s %s" % (st, str(r)[:200])) and ref:
        same_pixels("single-file model", b64png(r["data"][0]["b64_json"]), ref[0])
    check(s.stop() == 0, "single-file server exit")

# --- the gallery survives a restart
s = Server()
st, h, g = s.json("GET", "/api/gallery")
check(st == 200 and len(g.get("images", [])) >= 21, "gallery after restart: %d images"
      % len(g.get("images", [])))
if g.get("images"):
    st, h, png = s.req("GET", g["images"][0]["url"])
    check(st == 200 and png[:4] == b"\x89PNG", "gallery image after restart: %s" % st)
check(s.req("GET", "/images/..%2Fdf-serve.jsonl")[0] == 404 and
      s.req("GET", "/images/df-serve.jsonl")[0] == 404, "a file not in the gallery is served")
check(s.stop(signal.SIGINT) == 0, "SIGINT: exit not 0")
done()
EOF
