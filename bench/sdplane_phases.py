"""sdplane side of bench/generation.sh: reads what `sdplane generate` prints on stdout
(replica/src/pipeline/generate_cli.rs: `load X s`, `text-encode X s`,
`unet steps N x mean X s: [...]`, `vae-decode X s`, `total X s`) and prints one JSON line for
tables.py, with peak RSS and wall time from /usr/bin/time. A line that is missing is an error:
the table must not show a phase that was not measured.

Usage: sdplane_phases.py STDOUT_FILE PEAK_RSS_MB WALL_S
"""

import json
import re
import sys

LINES = {
    "load_s": r"^load ([0-9.]+) s$",
    "text_encode_s": r"^text-encode ([0-9.]+) s$",
    "unet_step_s": r"^unet steps [0-9]+ x mean ([0-9.]+) s",
    "unet_calls": r"^unet steps ([0-9]+) x",
    "vae_decode_s": r"^vae-decode ([0-9.]+) s$",
    "generate_s": r"^total ([0-9.]+) s$",
}


def main():
    path, rss, wall = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    found = {}
    for key, pattern in LINES.items():
        for line in lines:
            m = re.match(pattern, line)
            if m:
                found[key] = float(m.group(1))
                break
        else:
            sys.exit(f"sdplane_phases.py: no line like {pattern!r} in {path}")
    print(json.dumps({"impl": "sdplane", **found, "peak_rss_mb": rss, "wall_s": wall}))


if __name__ == "__main__":
    main()
