#!/usr/bin/python3
"""file_server.py - static file server for the df-fetch tests, with faults.

Serves --root DIR on 127.0.0.1 (port 0 by default: the chosen port is
printed on stdout as the first line), HTTP/1.1 with keep-alive, GET and
HEAD, single byte ranges (Range: bytes=S- / S-E -> 206 + Content-Range, or
416). Debian's /usr/bin/python3, standard library only.

Faults are asked for in the URL's query string, so that every test names
its own: the fault applies to the first `times` requests (default 1) of
that exact path+query, then the file is served normally.
    status=CODE          answer CODE (e.g. 429, 500, 503, 404)
    retry_after=S        with status: Retry-After: S seconds; "date:S" sends
                         it as an HTTP-date S seconds ahead
    slow=SEC             sleep SEC before answering
    stall=BYTES:SEC      send headers and BYTES of the body, then sleep SEC
    drop=1               close the connection without an answer
    truncate=BYTES       full Content-Length, only BYTES of the body, close
    badlen=+K / -K       Content-Length K too large (then close) / too small
    redirect=N           a chain of N redirects (302) ending at the file
    norange=1            ignore Range (always 200 with the whole file)
    badrange=1           answer a Range with a 206 whose Content-Range starts
                         7 bytes later than the body it sends
    times=N              how many requests get the fault (0: all)
Every request is logged to --log FILE as one JSON line: t (epoch seconds),
method, path, query, range, auth ("absent", "present", or with --token
"ok"/"wrong"; the value itself is never logged), status, sent (body
bytes), fault.
"""
import argparse
import email.utils
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTS = {}
ARGS = None
LOG = None


def log(rec):
    line = json.dumps(rec, separators=(",", ":")) + "\n"
    with LOCK:
        LOG.write(line)
        LOG.flush()


def take_fault(key, times):
    """True while this path+query has had fewer than `times` requests."""
    with LOCK:
        n = COUNTS.get(key, 0)
        COUNTS[key] = n + 1
    return times == 0 or n < times


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "file_server"

    def log_message(self, *a):  # stderr stays quiet; the JSONL log has it all
        pass

    def auth_state(self):
        v = self.headers.get("Authorization")
        if v is None:
            return "absent"
        if ARGS.token is None:
            return "present"
        return "ok" if v == "Bearer " + ARGS.token else "wrong"

    def do_HEAD(self):
        self.handle_get(head=True)

    def do_GET(self):
        self.handle_get(head=False)

    def handle_get(self, head):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        rec = {"t": time.time(), "method": self.command, "path": u.path,
               "query": u.query, "range": self.headers.get("Range"),
               "auth": self.auth_state(), "status": 0, "sent": 0, "fault": None}
        fault = None
        fault_keys = ("status", "slow", "stall", "drop", "truncate", "badlen", "redirect",
                      "badrange")
        if any(k in q for k in fault_keys) and take_fault(self.path, int(q.get("times", "1"))):
            fault = next(k for k in fault_keys if k in q)
        rec["fault"] = fault
        try:
            self.answer(u, q, fault, head, rec)
        except (BrokenPipeError, ConnectionResetError):
            rec["client_gone"] = True
            self.close_connection = True
        finally:
            log(rec)

    def wait_or_gone(self, sec, rec):
        """Sleep sec seconds, or less if the client hangs up meanwhile, so
        that the log line of an abandoned request is written when the
        client gives up, not later."""
        end = time.time() + sec
        while True:
            left = end - time.time()
            if left <= 0:
                return False
            r, _, _ = select.select([self.connection], [], [], left)
            if not r:
                continue
            try:
                gone = not self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                gone = True
            if gone:
                rec["client_gone"] = True
                self.close_connection = True
                return True
            time.sleep(max(end - time.time(), 0))   # pipelined bytes: just wait
            return False

    def answer(self, u, q, fault, head, rec):
        if fault == "slow" and self.wait_or_gone(float(q["slow"]), rec):
            return
        if fault == "drop":
            self.close_connection = True
            return
        if fault == "status":
            return self.send_status(int(q["status"]), q.get("retry_after"), rec)
        if fault == "redirect":
            n = int(q["redirect"]) - 1
            q2 = dict(q)
            if n > 0:
                q2["redirect"] = str(n)
                q2["times"] = "0"
            else:
                q2.pop("redirect")
            loc = u.path + ("?" + urllib.parse.urlencode(q2) if q2 else "")
            rec["status"] = 302
            self.send_response(302)
            self.send_header("Location", loc)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = os.path.join(ARGS.root, urllib.parse.unquote(u.path).lstrip("/"))
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(ARGS.root) + os.sep) or not os.path.isfile(real):
            return self.send_status(404, None, rec)
        self.send_file(real, q, fault, head, rec)

    def send_status(self, code, retry_after, rec):
        body = b'{"error":"status %d"}' % code
        rec["status"] = code
        self.send_response(code)
        if retry_after is not None:
            if retry_after.startswith("date:"):
                when = time.time() + float(retry_after[5:])
                retry_after = email.utils.formatdate(when, usegmt=True)
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def parse_range(self, size, q):
        """(start, end) inclusive for a satisfiable single range, None for no
        Range, or "bad" for an unsatisfiable one."""
        r = self.headers.get("Range")
        if r is None or q.get("norange") or not r.startswith("bytes="):
            return None
        s, _, e = r[6:].partition("-")
        start = int(s)
        end = int(e) if e else size - 1
        if start >= size:
            return "bad"
        return start, min(end, size - 1)

    def send_file(self, real, q, fault, head, rec):
        with open(real, "rb") as f:
            data = f.read()
        size = len(data)
        rng = self.parse_range(size, q)
        if rng == "bad":
            rec["status"] = 416
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % size)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng is None:
            code, body = 200, data
        else:
            code, body = 206, data[rng[0]:rng[1] + 1]
        length = len(body)
        if fault == "badlen":
            length += int(q["badlen"])
        rec["status"] = code
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if q.get("norange") else "bytes")
        if code == 206:
            shift = 7 if fault == "badrange" else 0
            self.send_header("Content-Range", "bytes %d-%d/%d" % (rng[0] + shift, rng[1], size))
        self.end_headers()
        if head:
            return
        if fault == "truncate":
            body = body[:int(q["truncate"])]
            self.close_connection = True
        elif fault == "badlen":
            body = body[:max(length, 0)] if length < len(body) else body
            self.close_connection = True
        elif fault == "stall":
            n, sec = q["stall"].split(":")
            self.wfile.write(body[:int(n)])
            self.wfile.flush()
            rec["sent"] = int(n)
            self.wait_or_gone(float(sec), rec)
            self.close_connection = True
            return
        self.wfile.write(body)
        rec["sent"] = len(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that hangs up (a timeout, an aborted download) is
        # expected here; anything else is still reported.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main():
    global ARGS, LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", help="expected bearer token (logged as ok/wrong only)")
    ARGS = ap.parse_args()
    LOG = open(ARGS.log, "a")
    srv = Server(("127.0.0.1", ARGS.port), Handler)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
