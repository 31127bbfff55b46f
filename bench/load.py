"""Client side of bench/load.sh: CLIENTS threads each send the same generate request in a loop
for DURATION seconds against one app through the router. A rejected request (429/503) must carry
Retry-After; the client honours it (capped by the time left), as a well-behaved client would.
Every 200 must carry a decodable PNG of the requested size: a 200 without one counts as lost.
Prints one JSON line for tables.py.

Usage: load.py ROUTER_URL APP REQUEST_JSON CLIENTS DURATION_S MODEL_NAME
"""

import base64
import json
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR chunk (PNG spec §11.2.2), or None if not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def image_ok(payload, width, height):
    try:
        body = json.loads(payload)
        uri = body["image"]
        prefix = "data:image/png;base64,"
        if not uri.startswith(prefix):
            return False
        return png_size(base64.b64decode(uri[len(prefix):], validate=True)) == (width, height)
    except (ValueError, KeyError, TypeError):
        return False


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def scrape(url):
    """`sdplane_*requests_total` series from a /metrics page, summed per series line."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("sdplane_") and "requests_total" in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def main():
    router, app, request, clients, duration, model = sys.argv[1:7]
    clients, duration = int(clients), float(duration)
    req = json.loads(request)
    width, height = req["width"], req["height"]
    url = f"{router}/{app}/v1/generate"
    body = request.encode()
    lock = threading.Lock()
    stats = {"sent": 0, "ok": 0, "rejected": 0, "rejected_with_retry_after": 0, "other": 0,
             "ok_without_image": 0}
    other_statuses, transport = Counter(), Counter()
    ok_ms, reject_ms = [], []
    before = scrape(f"{router}/metrics")
    start = time.monotonic()
    deadline = start + duration

    def client():
        while time.monotonic() < deadline:
            r = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            t = time.monotonic()
            status, headers, payload = None, {}, b""
            try:
                with urllib.request.urlopen(r, timeout=120) as resp:
                    status, headers, payload = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                status, headers, payload = e.code, e.headers, e.read()
            except (urllib.error.URLError, OSError) as e:
                with lock:
                    stats["sent"] += 1
                    transport[type(e).__name__] += 1
                continue
            ms = (time.monotonic() - t) * 1000
            retry = headers.get("Retry-After")
            with lock:
                stats["sent"] += 1
                if status == 200:
                    stats["ok"] += 1
                    ok_ms.append(ms)
                    if not image_ok(payload, width, height):
                        stats["ok_without_image"] += 1
                elif status in (429, 503):
                    stats["rejected"] += 1
                    reject_ms.append(ms)
                    if retry is not None:
                        stats["rejected_with_retry_after"] += 1
                else:
                    stats["other"] += 1
                    other_statuses[status] += 1
            if status in (429, 503):
                try:
                    wait = float(retry) if retry is not None else 1.0
                except ValueError:
                    wait = 1.0
                time.sleep(max(0.0, min(wait, deadline - time.monotonic())))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - start
    after = scrape(f"{router}/metrics")
    server_counts = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    print(json.dumps({
        **stats, "clients": clients, "duration_s": elapsed, "model": model, "request": request,
        "admitted_rps": stats["ok"] / elapsed,
        "p50_ok_ms": percentile(ok_ms, 50), "p99_ok_ms": percentile(ok_ms, 99),
        "p99_reject_ms": percentile(reject_ms, 99),
        "other_statuses": dict(other_statuses), "transport_errors": dict(transport),
        "server_counts": server_counts,
    }))


if __name__ == "__main__":
    main()
