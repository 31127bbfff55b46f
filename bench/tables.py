"""Turns the raw results the bench/*.sh scripts collect (JSON lines under bench/.out/) into the
one markdown table each benchmark prints, with ratios and the target verdicts.

Usage: tables.py overhead|generation|cold_start|load RESULTS HEADER COMMAND
"""

import json
import sys


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, digits=2):
    if x is None:
        return "–"
    if x != 0 and abs(x) < 10 ** -digits * 5:
        return f"{x:.2g}"
    return f"{x:.{digits}f}"


def _verdict(ok):
    return "met" if ok else "MISSED"


def overhead(rows):
    """Router overhead: rows are {"target", "concurrency", "wrk": {...}}."""
    by = {(r["target"], r["concurrency"]): r["wrk"] for r in rows}
    targets = [t for t in ("direct", "sdplane", "nginx", "ray_serve") if any(k[0] == t for k in by)]
    levels = sorted({r["concurrency"] for r in rows})
    out = [
        "| path | conc | req/s | p50 ms | p99 ms | req/s ÷ direct | p50 ÷ direct | p99 ÷ direct "
        "| p50 added µs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for c in levels:
        base = by.get(("direct", c))
        for t in targets:
            w = by.get((t, c))
            if w is None:
                continue
            rps = w["requests"] / (w["duration_us"] / 1e6)
            base_rps = base["requests"] / (base["duration_us"] / 1e6) if base else None
            errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
            out.append(
                f"| {t} | {c} | {rps:,.0f} | {w['p50_us'] / 1000:.3f} | {w['p99_us'] / 1000:.3f} | "
                f"{_fmt(_ratio(rps, base_rps))} | {_fmt(_ratio(w['p50_us'], base and base['p50_us']))} | "
                f"{_fmt(_ratio(w['p99_us'], base and base['p99_us']))} | "
                f"{w['p50_us'] - base['p50_us'] if base else '–'} | {errors} |"
            )
        sd, ray = by.get(("sdplane", c)), by.get(("ray_serve", c))
        if sd and base:
            p50 = sd["p50_us"] / base["p50_us"]
            p99 = sd["p99_us"] / base["p99_us"]
            verdicts.append(
                f"- c={c}: sdplane p50 {p50:.2f}× / p99 {p99:.2f}× direct (target ≤ 1.05×): "
                f"{_verdict(p50 <= 1.05 and p99 <= 1.05)}"
            )
        if sd and ray:
            x = (sd["requests"] / sd["duration_us"]) / (ray["requests"] / ray["duration_us"])
            verdicts.append(f"- c={c}: sdplane {x:.1f}× Ray Serve's throughput (target ≥ 10×): {_verdict(x >= 10)}")
    return out + [""] + verdicts


def generation(rows):
    """Generation: rows are {"impl": "sdplane"|"diffusers", "phases": {...}, "peak_rss_mb", ...}."""
    by = {r["impl"]: r for r in rows}
    sd, df = by.get("sdplane"), by.get("diffusers")
    fields = [
        ("load (s)", "load_s"),
        ("text encode (s)", "text_encode_s"),
        ("UNet step (s, mean)", "unet_step_s"),
        ("VAE decode (s)", "vae_decode_s"),
        ("generation total (s)", "generate_s"),
        ("process wall (s)", "wall_s"),
        ("peak RSS (MiB)", "peak_rss_mb"),
    ]
    out = ["| measure | sdplane | diffusers | sdplane ÷ diffusers |", "|---|---:|---:|---:|"]
    for label, key in fields:
        a = sd.get(key) if sd else None
        b = df.get(key) if df else None
        out.append(f"| {label} | {_fmt(a)} | {_fmt(b)} | {_fmt(_ratio(a, b))} |")
    verdicts = []
    if sd and df and sd.get("generate_s") and df.get("generate_s"):
        r = sd["generate_s"] / df["generate_s"]
        verdicts.append(f"- generation total {r:.2f}× diffusers (target ≤ 1.0×): {_verdict(r <= 1.0)}")
    for impl in (sd, df):
        if impl and impl.get("note"):
            verdicts.append(f"- {impl['impl']}: {impl['note']}")
    return out + [""] + verdicts


def cold_start(rows):
    """Cold start: one row with the phase breakdown and the page-cache read time."""
    r = rows[-1]
    out = ["| phase | seconds |", "|---|---:|"]
    for label, key in [
        ("process start (activation → replica listening)", "process_start_s"),
        ("weight load (listening → `weights loaded`)", "weight_load_s"),
        ("warm-up generation (→ replica `ready`)", "warm_up_s"),
        ("readiness propagation (replica ready → router forwards)", "propagation_s"),
        ("first generation (replica's query_duration_seconds)", "first_generation_s"),
        ("rest (client ↔ router, activation call, response transfer)", "unaccounted_s"),
        ("**total: request → first 200**", "total_s"),
        ("warm generation of the same request (2nd request, client-side)", "warm_generation_s"),
        ("model file read from page cache (`cat > /dev/null`)", "page_cache_read_s"),
    ]:
        out.append(f"| {label} | {_fmt(r.get(key), 3)} |")
    budget = r["page_cache_read_s"] + r["warm_generation_s"]
    ratio = r["total_s"] / budget
    out += [
        "",
        f"- model: {r['model']} ({r['model_bytes'] / 2**30:.2f} GiB), request: {r['request']}",
        f"- cold total ÷ (page-cache read + one warm generation) = {r['total_s']:.2f} ÷ {budget:.2f} = "
        f"{ratio:.2f}× (target ≤ 1.2×): {_verdict(ratio <= 1.2)}",
    ]
    if r.get("health_trace"):
        out.append(f"- app health transitions (s since request): {r['health_trace']}")
    return out


def load(rows):
    """Load test: one row of counters and latencies."""
    r = rows[-1]
    out = [
        "| clients | duration s | sent | 200 | 429/503 (with Retry-After) | other | admitted req/s | "
        "rejected % | p50 200 ms | p99 200 ms | p99 reject ms | 200 without valid image |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['clients']} | {r['duration_s']:.1f} | {r['sent']} | {r['ok']} | {r['rejected']} "
        f"({r['rejected_with_retry_after']}) | {r['other']} | {r['admitted_rps']:.2f} | "
        f"{100 * r['rejected'] / max(r['sent'], 1):.1f} | {_fmt(r['p50_ok_ms'], 1)} | {_fmt(r['p99_ok_ms'], 1)} | "
        f"{_fmt(r['p99_reject_ms'], 1)} | {r['ok_without_image']} |",
        "",
        f"- model: {r['model']}; request: {r['request']}",
        f"- other statuses: {r['other_statuses'] or 'none'}; transport errors: {r['transport_errors'] or 'none'}",
        f"- nothing accepted lost (every 200 carries a decodable PNG of the requested size): "
        f"{_verdict(r['ok_without_image'] == 0 and r['ok'] > 0)}",
        f"- every rejection carries Retry-After: {_verdict(r['rejected'] == r['rejected_with_retry_after'])}",
    ]
    counts = r.get("server_counts") or {}
    routed_2xx = sum(v for k, v in counts.items() if k.startswith("sdplane_router_requests_total") and '"2xx"' in k)
    if counts:
        out.append(
            f"- router's own count of 2xx answers for the app: {routed_2xx:.0f} vs {r['ok']} 200s received: "
            f"{_verdict(round(routed_2xx) == r['ok'])}"
        )
        out.append(f"- server-side counter deltas (router /metrics): {counts}")
    return out


def main():
    kind, path, header, command = sys.argv[1:5]
    rows = _lines(path)
    if not rows:
        sys.exit(f"tables.py: no results in {path}")
    body = {"overhead": overhead, "generation": generation, "cold_start": cold_start, "load": load}[kind](rows)
    print(f"### {kind.replace('_', ' ')}\n")
    print(header)
    print(f"- command: `{command}`\n")
    print("\n".join(body))


if __name__ == "__main__":
    main()
