#!/usr/bin/env python3
"""df_serve_browser.py - df-serve's web page driven in headless chromium.

Run by test-df-serve-browser.sh against a running df-serve (the tiny
fixture model); uses only Debian's python3-selenium, chromium and
chromium-driver. Each check prints "ok" or "FAIL"; the exit status is 1 if
any failed. Screenshots go to --shots.

    df_serve_browser.py --url http://127.0.0.1:PORT --shots DIR --work DIR
    df_serve_browser.py --url ... --key KEY      (a server run with an API key)
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

fails = 0


def check(cond, what):
    global fails
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        fails += 1
    return cond


def note(what):
    print("note " + what, flush=True)


class Page:
    def __init__(self, args):
        self.args = args
        o = webdriver.ChromeOptions()
        o.binary_location = args.chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                  "--user-data-dir=" + os.path.join(args.work, "chromium-profile")):
            o.add_argument(a)
        o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service(args.chromedriver), options=o)
        self.d.set_script_timeout(60)
        self.console = []

    def quit(self):
        self.d.quit()

    def js(self, script, *a):
        return self.d.execute_script(script, *a)

    def ajs(self, script, *a):
        return self.d.execute_async_script(script, *a)

    def el(self, id_):
        return self.d.find_element(By.ID, id_)

    def wait(self, cond, what, timeout=60):
        def once(_):
            try:
                return cond()
            except WebDriverException:      # e.g. a page without the element
                return None
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(once)
        except TimeoutException:
            check(False, f"{what} (waited {timeout} s)")
            return None

    def set(self, id_, value):
        """A field's value as a user leaves it (input and change events)."""
        self.js("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event('input', {bubbles: true}));"
                "e.dispatchEvent(new Event('change', {bubbles: true}));", id_, str(value))

    def type(self, id_, text):
        e = self.el(id_)
        e.clear()
        e.send_keys(text)

    def load(self):
        self.d.get(self.args.url + "/")
        return self.wait(lambda: self.js("return document.body.dataset.ready === '1'"), "page loaded /api/info")

    def status(self):
        return self.el("status").text

    def error(self):
        e = self.el("error")
        return e.text if e.is_displayed() else ""

    def generate(self, timeout=120):
        """Click Generate; wait for the job's end or an error. Returns the status line."""
        self.js("window.__dfPolls = 0;")
        self.el("generate").click()
        self.wait(lambda: re.match(r"(done|failed|cancelled|not started)", self.status()),
                  "the job ended", timeout)
        return self.status()

    def results(self):
        """The current job's images once loaded: [{w, h, seed, src, download}]."""
        return self.js("""return [...document.querySelectorAll('#results figure')].map(f => {
            const i = f.querySelector('img'), a = f.querySelector('a.download');
            return {w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, src: i.src,
                    seed: f.querySelector('.seed').textContent, href: a.href, download: a.download};
        });""")

    def wait_images(self, n):
        return self.wait(lambda: (lambda r: r if len(r) == n and all(x["complete"] and x["w"] for x in r)
                                  else None)(self.results()), f"{n} image(s) shown")

    def fetch_bytes(self, url):
        """A URL fetched by the page (same origin, blob URLs too), as bytes."""
        b64 = self.ajs("""const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
                let s = ''; const u = new Uint8Array(b);
                for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
                done(btoa(s)); }).catch(e => done('ERR ' + e));""", url)
        import base64
        return base64.b64decode(b64) if not b64.startswith("ERR") else b""

    def pixels(self, src):
        """An image's RGBA pixels as the page decodes it (list of ints)."""
        return self.ajs("""const done = arguments[arguments.length - 1];
            const im = new Image();
            im.onload = () => { const c = document.createElement('canvas');
                c.width = im.naturalWidth; c.height = im.naturalHeight;
                const x = c.getContext('2d'); x.drawImage(im, 0, 0);
                done({w: c.width, h: c.height, px: Array.from(x.getImageData(0, 0, c.width, c.height).data)}); };
            im.onerror = () => done(null);
            im.src = arguments[0];""", src)

    def screenshot(self, name):
        """The whole page, beyond the viewport."""
        import base64
        m = self.js("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": m[0], "height": min(m[1], 6000), "scale": 1}})
        path = os.path.join(self.args.shots, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        note(f"screenshot {path}")

    def js_errors(self):
        """Console errors other than failed HTTP statuses (those are expected: 400s, 401s)."""
        try:
            log = self.d.get_log("browser")
        except WebDriverException:
            return []
        return [e["message"] for e in log if e["level"] == "SEVERE"
                and "Failed to load resource" not in e["message"]]


def http(args, method, path, body=None):
    """A direct request to the server: (status, parsed JSON or bytes)."""
    req = urllib.request.Request(args.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if args.key:
        req.add_header("Authorization", "Bearer " + args.key)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            code, data = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, data = e.code, e.read()
    try:
        return code, json.loads(data)
    except ValueError:
        return code, data


def labels_ok(p):
    """Every visible form control has a label (a <label> or aria-label)."""
    missing = p.js("""return [...document.querySelectorAll('input, select, textarea, canvas[role]')]
        .filter(e => e.type !== 'hidden' && e.offsetParent !== null)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
        .map(e => e.id || e.outerHTML.slice(0, 60));""")
    return check(not missing, f"every visible control has an accessible label (unlabelled: {missing})")


def fill_basic(p, prompt, seed, steps, w, h, batch=1):
    p.type("prompt", prompt)
    if seed is None:
        p.el("seed-random").click()
    else:
        p.el("seed-fixed").click()
        p.type("seed", str(seed))
    p.set("steps", steps)
    p.set("width", w)
    p.set("height", h)
    p.set("batch", batch)


def gallery_cards(p):
    return p.js("""return [...document.querySelectorAll('#gallery li')].map(li => {
        const i = li.querySelector('img'), pr = li.querySelector('.prompt');
        return {prompt: pr ? pr.textContent : null, seed: li.querySelector('.seed').textContent,
                w: i.naturalWidth, h: i.naturalHeight, complete: i.complete,
                markup: pr ? pr.children.length : -1,
                bold: li.querySelectorAll('b, script').length};
    });""")


def draw_mask_mouse(p):
    c = p.el("mask-canvas")
    p.js("arguments[0].scrollIntoView({block: 'center'})", c)
    r = c.rect
    a = ActionChains(p.d)
    # a stroke across the middle third of the canvas, from the left quarter
    a.move_to_element_with_offset(c, int(-r["width"] / 4), 0).click_and_hold()
    for _ in range(5):
        a.move_by_offset(int(r["width"] / 10), 0)
    a.release().perform()


def mask_stats(p, data_url):
    """Counts of the mask's pixels: white, black, grey, non-grey; its size."""
    px = p.pixels(data_url)
    if not px:
        return None
    v = px["px"]
    white = black = grey = colour = opaque = 0
    for i in range(0, len(v), 4):
        r, g, b, a = v[i:i + 4]
        opaque += a == 255
        if r != g or g != b:
            colour += 1
        elif r == 255:
            white += 1
        elif r == 0:
            black += 1
        else:
            grey += 1
    return {"w": px["w"], "h": px["h"], "white": white, "black": black, "grey": grey,
            "colour": colour, "opaque": opaque}


def hook_requests(p):
    """Keep the page's last POST /api/jobs body in window.__dfLastBody."""
    p.js("""if (!window.__dfHooked) { window.__dfHooked = 1; const f = window.fetch;
        window.fetch = (u, o) => { if (o && o.method === 'POST' && String(u) === '/api/jobs')
            window.__dfLastBody = o.body; return f(u, o); }; }""")


def main_checks(p, args, info):
    W, H = 64, 64
    check(p.el("model").text.strip() not in ("", "not connected"), f"model shown: {p.el('model').text!r}")
    opts = [o.get_attribute("value") for o in Select(p.el("scheduler")).options]
    check(opts == info.get("schedulers"), f"scheduler choices are the server's: {opts}")
    check(p.el("steps").get_attribute("value") == str(info.get("steps")), "steps default from /api/info")
    labels_ok(p)

    # 1. fixed seed
    prompt1 = "a smiling face, browser test"
    fill_basic(p, prompt1, 1234, 3, W, H)
    st = p.generate()
    check(st.startswith("done"), f"fixed-seed job done: {st!r} (error: {p.error()!r})")
    check("step 3 of 3" in st, "the status line says step 3 of 3")
    prog = p.js("const b = document.getElementById('progress'); return [b.value, b.max]")
    check(prog == [3, 3], f"progress bar full at the end: value/max {prog}")
    imgs = p.wait_images(1) or []
    if imgs:
        check((imgs[0]["w"], imgs[0]["h"]) == (W, H), f"image natural size {imgs[0]['w']}x{imgs[0]['h']}")
        check(imgs[0]["seed"] == "1234", f"image card seed {imgs[0]['seed']!r}")
        check(imgs[0]["download"].endswith(".png"), f"download link names a PNG: {imgs[0]['download']!r}")
        png = p.fetch_bytes(imgs[0]["href"])
        check(png[:8] == b"\x89PNG\r\n\x1a\n", f"the download link gives a PNG ({len(png)} bytes)")
        check(b"Seed: 1234" in png, "the PNG carries df-sample's parameters text (Seed: 1234)")
        with open(os.path.join(args.work, "first.png"), "wb") as f:
            f.write(png)
    check(p.el("seed-used").text == "1234", f"seed used shown: {p.el('seed-used').text!r}")
    first = imgs[0] if imgs else None

    # 2. random seed, batch 2, a prompt that would run script if the page used innerHTML
    evil = '<img src=x onerror="window.__dfXss=1"><b>bold</b> & "quotes" \u00e9\u4e2d'
    fill_basic(p, evil, None, 2, W, H, batch=2)
    st = p.generate()
    check(st.startswith("done"), f"random-seed batch-2 job done: {st!r} (error: {p.error()!r})")
    shown = p.el("seed-used").text
    check(re.fullmatch(r"\d+", shown) is not None, f"random seed shown as a number: {shown!r}")
    imgs2 = p.wait_images(2) or []
    check(all((x["w"], x["h"]) == (W, H) for x in imgs2) and len(imgs2) == 2,
          f"batch of 2 shown, 64x64 each: {[(x['w'], x['h']) for x in imgs2]}")
    note(f"batch seeds shown: job {shown}, images {[x['seed'] for x in imgs2]}")
    check(all(re.fullmatch(r"\d+", x["seed"]) for x in imgs2), "each batch image shows a numeric seed")

    # 3. the gallery lists both jobs, newest first, the prompt as text
    def gallery_has():
        g = gallery_cards(p)
        ok = [c for c in g if c["seed"] == "1234" and c["prompt"] == prompt1 and c["complete"] and c["w"]]
        ev = [c for c in g if c["prompt"] == evil and c["complete"] and c["w"]]
        return (g, ok, ev) if ok and len(ev) == 2 else None
    got = p.wait(gallery_has, "the gallery lists the fixed-seed image and the batch", 30)
    if got:
        g, ok, ev = got
        check((ok[0]["w"], ok[0]["h"]) == (W, H), f"gallery image natural size {ok[0]['w']}x{ok[0]['h']}")
        check(g[0]["prompt"] == evil, "the gallery is newest first")
        check(ev[0]["bold"] == 0 and ev[0]["markup"] == 0, "a prompt's markup stays text in the gallery (no <b>, <img> from it)")
    check(p.js("return window.__dfXss === undefined"), "no script ran from a prompt (XSS)")

    # 4. "use these settings again" fills the form with the first image's settings
    fill_basic(p, "something else", None, 7, 128, 64, batch=2)
    p.js("""const li = [...document.querySelectorAll('#gallery li')].find(li =>
        li.querySelector('.seed').textContent === '1234');
        li.querySelector('button.reuse').click();""")
    form = p.js("""const v = id => document.getElementById(id).value;
        return {prompt: v('prompt'), seed: v('seed'), fixed: document.getElementById('seed-fixed').checked,
                steps: v('steps'), width: v('width'), height: v('height'), batch: v('batch'),
                scheduler: v('scheduler'), guidance: v('guidance')};""")
    check(form["prompt"] == prompt1 and form["fixed"] and form["seed"] == "1234" and form["steps"] == "3"
          and form["width"] == str(W) and form["height"] == str(H) and form["batch"] == "1",
          f"'use these settings again' filled the form: {form}")
    st = p.generate()
    again = p.wait_images(1) or []
    if first and again:
        a, b = p.pixels(first["src"]), p.pixels(again[0]["src"])
        check(a and b and a["px"] == b["px"], "the same settings again give the same pixels")

    # 4b. a LoRA switched off (the server runs with one --lora)
    if first and again and info.get("loras"):
        lora_checks(p, args, info, first)

    # 5. the server's error line is shown: a prompt over max_prompt_chars (set by
    # script: maxlength stops typing, not the server's check)
    long = "x" * (int(info.get("max_prompt_chars", 1000)) + 1)
    fill_basic(p, "", 5, 2, W, H)
    p.set("prompt", long)
    st = p.generate()
    code, body = http(args, "POST", "/api/jobs", {"prompt": long, "steps": 2, "seed": 5, "width": W, "height": H})
    want = body.get("error") if isinstance(body, dict) else None
    check(code == 400 and bool(want), f"the server refuses a long prompt: {code} {want!r}")
    check(st.startswith("not started") and p.error() == want, f"the page shows the server's error: {p.error()!r}")

    # 6. live progress and Cancel on a long job
    steps = min(int(info.get("max_steps", 50)), 50)
    side = 256 if 256 * 256 <= int(info.get("max_pixels", 1 << 30)) else 128
    fill_basic(p, "a long job to cancel", 7, steps, side, side)
    p.el("generate").click()
    m = p.wait(lambda: re.match(r"running: step (\d+) of (\d+)", p.status()) if
               re.match(r"running: step [1-9]", p.status()) else None, "a running job shows its step", 120)
    if m:
        # a reload goes on following the job (its id is kept in sessionStorage)
        p.load()
        p.wait(lambda: re.match(r"running: step [1-9]", p.status()), "after a reload the job is followed", 60)
        prog = p.js("const b = document.getElementById('progress'); return [b.value, b.max]")
        check(0 < prog[0] < prog[1] == steps, f"progress bar part way: {prog} ({p.status()!r})")
        check(p.el("cancel").is_enabled(), "Cancel is enabled while the job runs")
        p.el("cancel").click()
        p.wait(lambda: re.match(r"(done|failed|cancelled)", p.status()), "the job ended after Cancel", 60)
        check(p.status().startswith("cancelled"), f"cancelled: {p.status()!r}")
        check(not p.results(), "no image from the cancelled job")
        check(not p.el("cancel").is_enabled() and p.el("generate").is_enabled(), "buttons back after Cancel")

    # 7. a queue of one (the server runs with --queue 1)
    queue_checks(p, args, info, W, H)

    # 8. img2img and inpainting through the panel
    edit_checks(p, args, W, H)
    p.js("window.scrollTo(0, 0)")
    p.screenshot("desktop.png")


def lora_checks(p, args, info, first):
    name = info["loras"][0]["name"]
    label = p.js("return document.querySelector('label[for=lora-on-0]').textContent")
    check(name in label and p.el("lora-on-0").is_selected()
          and float(p.el("lora-scale-0").get_attribute("value")) == float(info["loras"][0]["scale"]),
          f"the LoRA is listed, on, at its scale: {label.strip()!r}")
    hook_requests(p)
    p.el("lora-on-0").click()
    p.generate()
    body = json.loads(p.js("return window.__dfLastBody"))
    check(body.get("lora_scales") == [0], f"LoRA off sends lora_scales [0]: {body.get('lora_scales')}")
    off = p.wait_images(1) or []
    if off:
        a, b = p.pixels(first["src"]), p.pixels(off[0]["src"])
        diff = sum(x != y for x, y in zip(a["px"], b["px"])) if a and b else 0
        check(diff > 0, f"without the LoRA the image differs ({diff} channel values)")
    # the oldest image of seed 1234 is the first one, made with the LoRA on
    p.js("""[...document.querySelectorAll('#gallery li')].filter(li =>
        li.querySelector('.seed').textContent === '1234').pop().querySelector('button.reuse').click();""")
    p.wait(lambda: p.el("lora-on-0").is_selected(), "reuse turns the LoRA on", 10)
    check(p.el("lora-on-0").is_selected()
          and float(p.el("lora-scale-0").get_attribute("value")) == float(info["loras"][0]["scale"]),
          "reusing the first image's settings turns the LoRA on again at its scale")


def job_state(args, jid):
    code, j = http(args, "GET", "/api/jobs/" + jid)
    return j.get("state") if code == 200 and isinstance(j, dict) else f"HTTP {code}"


def queue_checks(p, args, info, W, H):
    """With --queue 1: a job straight to the API runs, a second one waits; the
    page's Generate then gets 503 and says so; with room, its job is shown
    queued until the running one ends."""
    side = 256 if 256 * 256 <= int(info.get("max_pixels", 1 << 30)) else 128
    long = {"prompt": "blocker", "steps": min(int(info.get("max_steps", 50)), 50), "seed": 1,
            "width": side, "height": side}
    code, a = http(args, "POST", "/api/jobs", long)
    if not check(code == 202, f"a long job through the API: {code} {a}"):
        return
    deadline = time.time() + 60
    while job_state(args, a["id"]) == "queued" and time.time() < deadline:
        time.sleep(0.05)
    code, b = http(args, "POST", "/api/jobs", long)
    check(code == 202, f"a second one waits: {code} {b}")
    fill_basic(p, "queued behind another job", 8, 2, W, H)
    st = p.generate()
    check(st.startswith("not started") and "retry in" in p.error(),
          f"queue full: the page shows the 503 and its Retry-After: {p.error()!r}")
    if isinstance(b, dict) and "id" in b:
        http(args, "POST", f"/api/jobs/{b['id']}/cancel")
    p.el("generate").click()
    q = p.wait(lambda: p.status() if p.status().startswith("queued") else None, "the page's job shows queued", 30)
    if q:
        check(q == "queued, next in line", f"queued text: {q!r}")
        check(p.js("return !document.getElementById('progress').hasAttribute('value')"),
              "the progress bar is indeterminate while queued")
    http(args, "POST", f"/api/jobs/{a['id']}/cancel")
    p.wait(lambda: re.match(r"(done|failed|cancelled)", p.status()), "the queued job ran after the other", 120)
    check(p.status().startswith("done"), f"then it ran: {p.status()!r}")
    check(len(p.wait_images(1) or []) == 1, "and its image is shown")


def edit_checks(p, args, W, H):
    init = os.path.join(args.work, "first.png")
    if not os.path.exists(init):
        check(False, "img2img: no image from the first job to start from")
        return
    p.el("edit-panel").find_element(By.TAG_NAME, "summary").click()
    p.el("init-file").send_keys(init)
    p.wait(lambda: p.el("edit-area").is_displayed(), "the start image is shown")
    check(p.el("width").get_attribute("value") == str(W) and p.el("height").get_attribute("value") == str(H),
          "width and height follow the start image")
    check("image to image" in p.el("edit-mode").text.lower(), f"mode img2img: {p.el('edit-mode').text!r}")
    check(p.el("strength").get_attribute("value") == "0.8", "img2img strength defaults to 0.8 (df-sample's)")
    labels_ok(p)
    hook_requests(p)
    fill_basic(p, "img2img from the page", 42, 4, W, H)
    p.set("strength", "0.5")
    st = p.generate()
    body = json.loads(p.js("return window.__dfLastBody"))
    check(body.get("init_image", "").startswith("data:image/png;base64,") and "mask" not in body
          and body.get("strength") == 0.5, "img2img request: init_image as a PNG data URL, strength, no mask")
    if st.startswith("done"):
        imgs = p.wait_images(1) or []
        check(imgs and (imgs[0]["w"], imgs[0]["h"]) == (W, H), "img2img image shown at 64x64")
        note("img2img: the server made the image")
    else:
        _, direct = http(args, "POST", "/api/jobs", body)
        check(bool(p.error()), f"img2img error shown in the page: {p.error()!r}")
        note(f"img2img: the server answered an error: {p.error()!r} (direct request: {direct})")

    draw_mask_mouse(p)
    check("inpainting" in p.el("edit-mode").text.lower(), f"painting switches to inpainting: {p.el('edit-mode').text!r}")
    check(p.el("strength").get_attribute("value") == "0.5", "a strength the user set stays for inpainting")
    st = p.generate()
    body = json.loads(p.js("return window.__dfLastBody"))
    ms = mask_stats(p, body.get("mask", "")) if body.get("mask") else None
    check(ms is not None, "inpainting request carries a mask")
    if ms:
        check((ms["w"], ms["h"]) == (W, H), f"mask is the image's size: {ms['w']}x{ms['h']}")
        check(ms["colour"] == 0 and ms["opaque"] == W * H, "mask is grey levels, opaque")
        check(ms["white"] > 0 and ms["black"] > ms["white"],
              f"mask is white (painted) on black: white {ms['white']}, black {ms['black']}, edge {ms['grey']}")
    if st.startswith("done"):
        imgs = p.wait_images(1) or []
        check(imgs and (imgs[0]["w"], imgs[0]["h"]) == (W, H), "inpainting image shown at 64x64")
        note("inpainting: the server made the image")
    else:
        check(bool(p.error()), f"inpainting error shown in the page: {p.error()!r}")
        note(f"inpainting: the server answered an error: {p.error()!r}")
    p.el("mask-clear").click()
    check("image to image" in p.el("edit-mode").text.lower(), "Clear mask goes back to img2img")


def phone_checks(p, args):
    """390 px wide, a touch screen: layout fits, the mask paints by touch."""
    p.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    p.d.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    if not p.load():
        return
    p.wait(lambda: p.js("return document.querySelectorAll('#gallery li img').length > 0"), "gallery on the phone")
    over = p.js("""const vw = document.documentElement.clientWidth;
        return [document.documentElement.scrollWidth, vw,
                [...document.querySelectorAll('input, select, textarea, button, figure')]
                  .filter(e => e.offsetParent !== null)
                  .filter(e => { const r = e.getBoundingClientRect(); return r.left < -1 || r.right > vw + 1; })
                  .map(e => e.id || e.tagName)];""")
    check(over[1] == 390 and over[0] <= 390 and not over[2],
          f"nothing wider than 390 px: scrollWidth {over[0]}, viewport {over[1]}, outside: {over[2]}")
    cols = p.js("return getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length")
    check(cols == 1, f"one column at 390 px ({cols})")
    p.screenshot("phone.png")

    p.el("edit-panel").find_element(By.TAG_NAME, "summary").click()
    p.el("init-file").send_keys(os.path.join(args.work, "first.png"))
    p.wait(lambda: p.el("edit-area").is_displayed(), "the start image is shown on the phone")
    p.js("document.getElementById('mask-canvas').scrollIntoView({block: 'center'})")
    r = p.js("const r = document.getElementById('mask-canvas').getBoundingClientRect();"
             "return [r.left, r.top, r.width, r.height]")
    y = r[1] + r[3] / 2
    pts = [r[0] + r[2] * f for f in (0.2, 0.35, 0.5, 0.65)]
    p.d.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": pts[0], "y": y}]})
    for x in pts[1:]:
        p.d.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    p.d.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    painted = p.js("""const c = document.getElementById('mask-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return [n, c.width * c.height];""")
    check(0 < painted[0] < painted[1], f"a touch stroke paints the mask: {painted[0]} of {painted[1]} pixels")
    check("inpainting" in p.el("edit-mode").text.lower(), "touch painting switches to inpainting")
    check(p.el("strength").get_attribute("value") == "1", "inpainting strength defaults to 1 (df-sample's)")
    after = p.js("return document.documentElement.scrollWidth")
    check(after <= 390, f"the mask editor fits 390 px ({after})")
    p.screenshot("phone-mask.png")
    p.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def key_checks(p, args):
    """A server with --api-key-env: the page asks once, keeps the key in sessionStorage."""
    # The page holds no data and must load without the key, or nothing can
    # ask for it: its /api/... requests are what answer 401.
    req = urllib.request.Request(args.url + "/")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            code, ctype = r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        code, ctype = e.code, e.headers.get("Content-Type", "")
    if not check(code == 200 and ctype.startswith("text/html"),
                 f"GET / without the key serves the page ({code} {ctype}), so it can ask for the key"):
        return
    code, _ = http(argparse.Namespace(url=args.url, key=None), "GET", "/api/info")
    check(code == 401, f"GET /api/info without the key: {code}")
    p.d.get(args.url + "/")
    dialog_open = lambda: p.js("return document.getElementById('key-dialog').open")
    if not p.wait(dialog_open, "the page asks for the API key after a 401", 30):
        return
    p.screenshot("key-dialog.png")
    p.type("key", "wrong-" + args.key)
    p.js("document.getElementById('key-form').requestSubmit()")
    p.wait(lambda: dialog_open() and p.el("key-error").text, "a refused key asks again with a reason", 30)
    check("refused" in p.el("key-error").text, f"the reason: {p.el('key-error').text!r}")
    p.type("key", args.key)
    p.js("document.getElementById('key-form').requestSubmit()")
    if not p.wait(lambda: p.js("return document.body.dataset.ready === '1'"), "the page works with the key"):
        return
    check(p.js("return sessionStorage.getItem('df-serve-api-key')") == args.key, "the key is in sessionStorage")
    fill_basic(p, "with a key", 99, 2, 64, 64)
    st = p.generate()
    check(st.startswith("done"), f"job with the key done: {st!r} ({p.error()!r})")
    imgs = p.wait_images(1) or []
    check(imgs and (imgs[0]["w"], imgs[0]["h"]) == (64, 64) and imgs[0]["src"].startswith("blob:"),
          "the image is fetched with the key and shown (blob URL)")
    p.load()
    check(not dialog_open(), "after a reload the key is not asked again")
    p.wait(lambda: any(c["complete"] and c["w"] for c in gallery_cards(p)), "the gallery loads with the key", 30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--shots", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--key")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    p = Page(args)
    try:
        if args.key:
            key_checks(p, args)
        else:
            code, info = http(args, "GET", "/api/info")
            check(code == 200 and isinstance(info, dict), f"GET /api/info: {code}")
            if p.load():
                main_checks(p, args, info)
                phone_checks(p, args)
        errs = p.js_errors()
        check(not errs, f"no script errors in the console: {errs}")
    finally:
        p.quit()
    print(f"{'FAIL' if fails else 'ok'}: {fails} check(s) failed", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
