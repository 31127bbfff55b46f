"""Client side of bench/cold_start.sh: one generate request to a scaled-to-zero app with
`Prefer: wait=N` (retrying on 202 until a 200, bounded), while a second thread polls the app's
health (a GET never wakes an app) to time the state transitions; then the same request again
on the now-warm app. Prints one JSON line for tables.py.

The phases come from the timestamps of `sdplane up`'s JSON log (see MARKERS) and the response's
compute_metrics; the health trace is kept as a cross-check.

Usage: cold_start.py ROUTER_URL APP REQUEST_JSON PREFER_WAIT_S LIMIT_S UP_LOG MODEL_FILE PAGE_CACHE_READ_S
"""

import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request

# Health poll period: fine enough for phases that take seconds, light on the router.
POLL_S = 0.05


def post(url, body, prefer_wait, timeout):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Prefer": f"wait={prefer_wait}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def poll_health(url, t0, trace, stop):
    last = None
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                h = json.loads(r.read())
        except Exception as e:  # noqa: BLE001 — a poll failure is a data point, not an error
            h = {"state": f"poll error {type(e).__name__}"}
        key = (h.get("state") or h.get("status"), h.get("phase"))
        if key != last:
            trace.append((round(time.monotonic() - t0, 3), key[0], key[1], h.get("progress")))
            last = key
        stop.wait(POLL_S)


# Markers in `sdplane up`'s JSON log (replica lines are forwarded inside `fields.message`), in
# the order a cold start passes them; the first line containing each marker is taken.
MARKERS = {
    "activation": "activation requested",  # router asked the controller to start the app
    "listening": "replica listening",  # controller saw the child's SDPLANE_LISTENING line
    "weights": "weights loaded; warming up",  # replica finished reading/placing weights
    "ready": "ready load_seconds=",  # replica finished the warm-up generation
    "forwarded": "app ready; forwarding held request",  # router saw the route and forwarded
}


def timeline(path):
    """{marker: seconds since the epoch} from the JSON log's outer timestamps."""
    from datetime import datetime

    found = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            message = str(event.get("fields", {}).get("message", ""))
            for key, marker in MARKERS.items():
                if key not in found and marker in message:
                    stamp = event["timestamp"].replace("Z", "+00:00")
                    found[key] = datetime.fromisoformat(stamp).timestamp()
    return found


def main():
    router, app, request, prefer_wait, limit, up_log, model, read_s = sys.argv[1:9]
    prefer_wait, limit, read_s = int(prefer_wait), float(limit), float(read_s)
    body = request.encode()
    gen_url = f"{router}/{app}/v1/generate"
    trace, stop = [], threading.Event()
    t0 = time.monotonic()
    poller = threading.Thread(target=poll_health, args=(f"{router}/{app}/v1/health", t0, trace, stop), daemon=True)
    poller.start()

    attempts = 0
    while True:
        attempts += 1
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            sys.exit(f"cold_start.py: no 200 within {limit} s; health trace {trace}")
        status, headers, payload = post(gen_url, body, min(prefer_wait, int(left)), timeout=left + 30)
        if status == 200:
            break
        if status != 202:
            sys.exit(f"cold_start.py: {status} {payload[:300]!r}; health trace {trace}")
        retry = float(headers.get("Retry-After") or headers.get("retry-after") or 1)
        time.sleep(min(retry, max(limit - (time.monotonic() - t0), 0)))
    total = time.monotonic() - t0
    stop.set()
    poller.join()
    cold = json.loads(payload)
    if not cold.get("image", "").startswith("data:image/png;base64,"):
        sys.exit("cold_start.py: the 200 carries no PNG")

    t1 = time.monotonic()
    status, _, payload = post(gen_url, body, prefer_wait, timeout=limit)
    warm_s = time.monotonic() - t1
    if status != 200:
        sys.exit(f"cold_start.py: warm request answered {status}")

    t = timeline(up_log)
    missing = [k for k in MARKERS if k not in t]
    if missing:
        sys.exit(f"cold_start.py: log markers not found in {up_log}: {missing}")
    metrics = cold.get("compute_metrics", {})
    first_gen = metrics.get("query_duration_seconds")
    process_start = t["listening"] - t["activation"]
    weight_load = t["weights"] - t["listening"]
    warm_up = t["ready"] - t["weights"]
    propagation = t["forwarded"] - t["ready"]
    accounted = process_start + weight_load + warm_up + propagation + first_gen
    print(json.dumps({
        "model": os.path.basename(model), "model_bytes": os.path.getsize(model), "request": request,
        "attempts": attempts, "total_s": total, "process_start_s": process_start,
        "weight_load_s": weight_load, "warm_up_s": warm_up, "propagation_s": propagation,
        "first_generation_s": first_gen, "unaccounted_s": total - accounted,
        "router_cold_start_seconds": metrics.get("cold_start_seconds"),
        "warm_generation_s": warm_s, "page_cache_read_s": read_s,
        "health_trace": trace,
    }))


if __name__ == "__main__":
    main()
