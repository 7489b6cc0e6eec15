#!/usr/bin/python3
"""openai_server.py - a local OpenAI-compatible chat-completions server for
testing df-caption (Debian python3 stdlib + python3-pil only).

It binds 127.0.0.1 on a free port and prints the port on stdout. For each
POST .../chat/completions it checks what a vision chat request must carry:
the Authorization header, the model name, one user message whose content is
a text part and an image_url part holding a base64 data URL, and that the
image decodes. It then identifies which file under --root was sent, by its
mean colour and aspect ratio (so the client needs no side channel), and
answers with a deterministic caption derived from that file:

    "<file_name>: mean color R,G,B size WxH"

(R,G,B: the file's mean colour on disk; WxH: the size of the picture that
was received, which shows a --max-side downscale). Tests therefore check
that the right caption reached the right record. Test images must have
distinct mean colours.

Faults are injected per file: --faults FILE is a JSON object mapping a
file_name to a list of actions for its successive requests (attempt 1 uses
the first action, and so on; past the end of the list: "ok"). The same
object can be merged in at run time with POST /_control/faults. Actions:

    ok              normal answer
    429[:S]         429 with Retry-After: S (default 1)
    500, 503, 400   that status with an OpenAI-style error body
    slow:S          sleep S seconds, then answer normally (past a timeout)
    delay:S         same as slow; named for tests that expect an answer
    drop            close the connection without answering
    truncate        Content-Length of the full body, half the body, close
    short_length    Content-Length shorter than the body (cut JSON), close
    malformed       200 with a body that is not JSON
    empty_choices   200 with "choices": []
    null_content    200 with message content null

Every request is logged as one JSON line to --log: arrival time "t", the
path, "file" (or null), "attempt", the "status" returned (or "drop"),
"t_done" when the answer was written,
"fault", "auth" (ok/missing/bad: never the key itself), the model,
max_tokens, temperature, the received image size and an "error" when
the request was rejected.

Tested by tests/tools/test-df-caption.sh, which drives df-caption against it.
"""
import argparse
import base64
import hashlib
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageStat

IMAGE_EXT = (".jpg", ".jpeg", ".png")


def image_signature(img):
    """(width, height, mean RGB) of a PIL image."""
    rgb = img.convert("RGB")
    mean = ImageStat.Stat(rgb).mean
    return rgb.size[0], rgb.size[1], tuple(mean)


def index_root(root):
    """file_name (relative to root) -> signature, for every image under root."""
    index = {}
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            if not n.lower().endswith(IMAGE_EXT):
                continue
            path = os.path.join(dirpath, n)
            try:
                with Image.open(path) as im:
                    index[os.path.relpath(path, root)] = image_signature(im)
            except Exception:
                pass  # broken test images are sent as-is; they never decode here either
    return index


class State:
    def __init__(self, args):
        self.args = args
        self.index = index_root(args.root) if args.root else {}
        self.faults = {}
        if args.faults:
            with open(args.faults) as f:
                self.faults = json.load(f)
        self.attempts = {}
        self.lock = threading.Lock()
        self.log = open(args.log, "a") if args.log else None

    def write_log(self, entry):
        if not self.log:
            return
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self.lock:
            self.log.write(line)
            self.log.flush()

    def next_action(self, file_name):
        with self.lock:
            n = self.attempts.get(file_name, 0) + 1
            self.attempts[file_name] = n
            plan = self.faults.get(file_name, [])
            return n, (plan[n - 1] if n <= len(plan) else "ok")

    def identify(self, sig):
        """The file whose aspect ratio and mean colour match sig, or None."""
        w, h, mean = sig
        # A downscale rounds each side to a whole pixel: allow that much.
        tol = 0.02 + (w / h) * 1.0 / min(w, h)
        best, best_d = None, None
        for name, (fw, fh, fmean) in self.index.items():
            if abs(w / h - fw / fh) > tol:
                continue
            d = max(abs(a - b) for a, b in zip(mean, fmean))
            if best_d is None or d < best_d:
                best, best_d = name, d
        # JPEG re-encoding and resampling move the mean a little, not more.
        return best if best_d is not None and best_d <= 6.0 else None


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def decode_image_part(messages):
    """Validate the message structure; return (prompt, PIL image, mime)."""
    if not isinstance(messages, list) or len(messages) != 1:
        raise BadRequest(400, "messages must be a list of one user message")
    m = messages[0]
    if not isinstance(m, dict) or m.get("role") != "user":
        raise BadRequest(400, "message role must be 'user'")
    content = m.get("content")
    if not isinstance(content, list):
        raise BadRequest(400, "content must be a list of parts")
    texts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
    images = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
    if len(texts) != 1 or len(images) != 1 or len(content) != 2:
        raise BadRequest(400, "content must be one text part and one image_url part")
    prompt = texts[0].get("text")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest(400, "text part is empty")
    url = (images[0].get("image_url") or {}).get("url")
    if not isinstance(url, str) or not url.startswith("data:image/"):
        raise BadRequest(400, "image_url.url must be a data:image/... URL")
    head, sep, b64 = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise BadRequest(400, "image data URL is not base64")
    mime = head[len("data:"):-len(";base64")]
    try:
        raw = base64.b64decode(b64, validate=True)
    except Exception:
        raise BadRequest(400, "image base64 does not decode")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception:
        raise BadRequest(400, "image does not decode")
    fmt = {"JPEG": "image/jpeg", "PNG": "image/png"}.get(img.format)
    if fmt != mime:
        raise BadRequest(400, "data URL says %s but the image is %s" % (mime, img.format))
    return prompt, img, mime


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-test/1"

    def log_message(self, fmt, *args):
        pass  # the JSONL log is the record; keep stderr quiet

    def send_json(self, status, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status, message, headers=()):
        self.send_json(status, {"error": {"message": message, "type": "test_error",
                                          "code": status}}, headers)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_POST(self):
        st = self.server.state
        entry = {"t": time.time(), "path": self.path, "file": None, "attempt": None,
                 "fault": None}
        try:
            body = self.read_body()
            if self.path == "/_control/faults":
                with st.lock:
                    st.faults.update(json.loads(body))
                return self.send_json(200, {"ok": True})
            self.handle_chat(st, body, entry)
        except (BrokenPipeError, ConnectionResetError):
            entry["status"] = entry.get("status") or "client closed"
        finally:
            if self.path != "/_control/faults" and not entry.get("logged"):
                entry["t_done"] = time.time()
                st.write_log(entry)

    def check_auth(self, st, entry):
        got = self.headers.get("Authorization")
        if st.args.api_key is None:
            entry["auth"] = "missing" if got is None else "present"
            if got is not None:
                raise BadRequest(400, "unexpected Authorization header")
            return
        if got is None:
            entry["auth"] = "missing"
            raise BadRequest(401, "missing Authorization header")
        if got != "Bearer " + st.args.api_key:
            entry["auth"] = "bad"
            raise BadRequest(401, "invalid API key")
        entry["auth"] = "ok"

    def handle_chat(self, st, body, entry):
        try:
            if not self.path.endswith("/chat/completions"):
                raise BadRequest(404, "no such endpoint")
            self.check_auth(st, entry)
            if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                raise BadRequest(400, "Content-Type must be application/json")
            try:
                req = json.loads(body)
            except Exception:
                raise BadRequest(400, "request body is not JSON")
            entry.update(model=req.get("model"), max_tokens=req.get("max_tokens"),
                         temperature=req.get("temperature"))
            if st.args.model and req.get("model") != st.args.model:
                raise BadRequest(404, "model %r not found" % req.get("model"))
            prompt, img, mime = decode_image_part(req.get("messages"))
            entry.update(w=img.size[0], h=img.size[1], mime=mime, prompt_len=len(prompt))
            sig = image_signature(img)
            name = st.identify(sig)
            if name is None:
                raise BadRequest(400, "image matches no file under the root")
            entry["file"] = name
            entry["prompt_sha"] = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        except BadRequest as e:
            entry.update(status=e.status, error=str(e))
            self.send_error_json(e.status, str(e))
            return
        n, action = st.next_action(name)
        entry.update(attempt=n, fault=action)
        fw, fh, fmean = st.index[name]
        caption = "%s: mean color %d,%d,%d size %dx%d" % (
            name, round(fmean[0]), round(fmean[1]), round(fmean[2]), img.size[0], img.size[1])
        self.act(action, caption, req.get("model"), entry)

    def act(self, action, caption, model, entry):
        kind, _, arg = action.partition(":")
        ok = {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
              "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": caption}}],
              "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
        entry["status"] = 200
        if kind in ("slow", "delay"):
            # Logged now: the client may give up, and the test may stop the
            # server, before the sleep ends.
            entry["t_done"] = None
            self.server.state.write_log(entry)
            entry["logged"] = True
            time.sleep(float(arg or 5))
            self.send_json(200, ok)
        elif kind == "ok":
            if self.server.state.args.delay > 0:
                time.sleep(self.server.state.args.delay)
            self.send_json(200, ok)
        elif kind == "429":
            entry["status"] = 429
            self.send_error_json(429, "rate limit reached", [("Retry-After", arg or "1")])
        elif kind in ("400", "500", "503"):
            entry["status"] = int(kind)
            self.send_error_json(int(kind), "injected %s" % kind)
        elif kind == "drop":
            entry["status"] = "drop"
            self.close_connection = True
        elif kind in ("truncate", "short_length"):
            body = json.dumps(ok).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) + 100 if kind == "truncate"
                                                   else len(body) // 2))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if kind == "truncate" else body)
            self.wfile.flush()
            self.close_connection = True
        elif kind == "malformed":
            body = b'{"choices": [{"message": {"content": "unterminated'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "empty_choices":
            ok["choices"] = []
            self.send_json(200, ok)
        elif kind == "null_content":
            ok["choices"][0]["message"]["content"] = None
            self.send_json(200, ok)
        else:
            entry["status"] = 500
            self.send_error_json(500, "unknown fault action %r" % action)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", help="directory the test images live in")
    ap.add_argument("--log", help="append one JSON line per request here")
    ap.add_argument("--model", help="the only model name accepted (default: any)")
    ap.add_argument("--api-key", help="expected Bearer key; without it, no "
                    "Authorization header is accepted")
    ap.add_argument("--faults", help="JSON file: file_name -> list of actions")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="sleep this long before every normal answer")
    args = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    srv.state = State(args)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
