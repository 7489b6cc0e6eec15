"""serve_client.py - what the df-serve tool tests share (Debian's python3
with python3-pil, nothing else): start a server on a free port of
127.0.0.1 (--listen 127.0.0.1:0, the port read from its stderr), requests,
df-sample reference images, pixel comparison, and the failure count."""
import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

from PIL import Image

BIN = os.environ.get("DF_BIN", "")
FX = os.environ.get("DF_FIXTURES", "")
MODEL = os.path.join(FX, "pipeline")
fails = 0


def fail(msg):
    global fails
    fails += 1
    print("FAIL: " + msg, file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


class Server:
    count = 0

    def __init__(self, *args, out="out", env=None, model=MODEL):
        Server.count += 1
        self.name = "srv%d" % Server.count
        self.rec_path = self.name + ".jsonl"
        self.err_path = self.name + ".err"
        self.rec = open(self.rec_path, "w")
        self.err = open(self.err_path, "w")
        cmd = [os.path.join(BIN, "df-serve"), "--model", model, "--listen", "127.0.0.1:0",
               "--out", out, "-t", "1"] + list(args)
        self.p = subprocess.Popen(cmd, stdout=self.rec, stderr=self.err,
                                  env=dict(os.environ, **(env or {})))
        self.port = None
        end = time.time() + 120
        while time.time() < end and self.p.poll() is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", open(self.err_path).read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if not self.port:
            raise RuntimeError("df-serve did not start: " + open(self.err_path).read())

    def req(self, method, path, body=None, headers=None, timeout=300):
        """(status, headers dict with lower-case names, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        h = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, h, data

    def json(self, method, path, body=None, headers=None, timeout=300):
        s, h, d = self.req(method, path, body, headers, timeout)
        try:
            return s, h, json.loads(d)
        except ValueError:
            return s, h, {"_raw": d[:200]}

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = "timeout"
        self.rec.close()
        self.err.close()
        err = open(self.err_path).read()
        if "Sanitizer" in err or "runtime error:" in err:
            fail("%s: sanitizer report:\n%s" % (self.name, err[-3000:]))
        return rc

    def records(self):
        out = []
        for line in open(self.rec_path):
            try:
                out.append(json.loads(line))
            except ValueError:
                fail("%s: a record line is not JSON: %r" % (self.rec_path, line[:100]))
        return out

    def wait_job(self, jid, states=("done", "failed", "cancelled"), timeout=300):
        end = time.time() + timeout
        while time.time() < end:
            s, _, j = self.json("GET", "/api/jobs/" + jid)
            if s != 200 or j.get("state") in states:
                return j
            time.sleep(0.05)
        return j

    def wait_running(self, timeout=60):
        """Until the worker is in a job's steps (the UNet stage)."""
        end = time.time() + timeout
        while time.time() < end:
            _, _, p = self.json("GET", "/sdapi/v1/progress")
            if p.get("state", {}).get("sampling_step", 0) >= 1:
                return True
            time.sleep(0.05)
        return False


def pixels(png_bytes):
    im = Image.open(io.BytesIO(png_bytes))
    return im.mode, im.size, im.convert("RGB").tobytes(), dict(im.text)


def df_sample(tag, *args, records=None):
    """PNG paths df-sample writes for the arguments (or JSONL records)."""
    out = "ref-" + tag
    cmd = [os.path.join(BIN, "df-sample"), "--model", MODEL, "--out", out, "-t", "1",
           "--quiet"] + list(args)
    inp = "".join(json.dumps(r) + "\n" for r in records) if records else None
    p = subprocess.run(cmd, input=inp, capture_output=True, text=True)
    if p.returncode != 0:
        fail("df-sample %s: %s" % (args, p.stderr))
        return []
    return [json.loads(l)["file_name"] for l in p.stdout.splitlines() if l.strip()]


def same_pixels(what, got_png, ref_path):
    a = pixels(got_png)
    b = pixels(open(ref_path, "rb").read())
    ok = a[:3] == b[:3]
    check(ok, "%s: pixels differ from df-sample's %s (%s %s vs %s %s)"
          % (what, ref_path, a[0], a[1], b[0], b[1]))
    return ok


def b64png(data):
    return base64.b64decode(data, validate=True)


def done():
    print("%s: %d failures" % (os.environ.get("DF_TEST_NAME", "test-df-serve"), fails), file=sys.stderr)
    sys.exit(1 if fails else 0)
