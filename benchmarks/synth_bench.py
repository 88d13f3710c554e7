#!/usr/bin/env python3
"""Benchmark the full synthesis against its floor (loading the provider assemblies alone).

    python benchmarks/synth_bench.py [--runs 5] [--naive]

Each measurement is a fresh process, like a user's `python main.py`. Peak memory is the
max RSS of the largest process of a run (Python or its jsii Node.js child). `--naive` also times
`import cdktf_cdktf_provider_aws` (the package __init__ that imports all ~2,200 modules).
Target (issue #2): median full synth <= 1.5 x the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


FULL = "import sys, atexit; sys.argv=['main.py','--outdir',sys.argv[1]];import main; sys.exit(main.main(sys.argv[1:]))"
# The floor: the jsii runtime and the three provider assemblies, nothing synthesized.
FLOOR = (
    "import core.providers, importlib, cdktf;"
    "[importlib.import_module(p + '._jsii') for p in core.providers.PROVIDER_PACKAGES]"
)
NAIVE = "import cdktf_cdktf_provider_aws"


def measure(code: str, *args: str) -> tuple[float, int]:
    """Wall time and peak RSS (MB) of the largest process of the run (python or its jsii
    node child: wait4 reports the child's max RSS including its reaped descendants)."""
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"benchmark run failed:\n{err.read().decode()[-3000:]}")
    return elapsed, usage.ru_maxrss // 1024


def series(label: str, code: str, runs: int, *args: str) -> dict:
    times, peaks = [], []
    for _ in range(runs):
        t, m = measure(code, *args)
        times.append(t)
        peaks.append(m)
    return {
        "label": label,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_mb": max(peaks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive", action="store_true", help="also time the naive full-package import")
    args = parser.parse_args()
    measure(FLOOR)  # warm the jsii cache (~/.cache/aws/jsii) so run 1 is not an outlier
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            series("floor: load provider assemblies", FLOOR, args.runs),
            series("full synth (python main.py)", FULL, args.runs, str(Path(tmp) / "out")),
        ]
    if args.naive:
        rows.append(series("naive: import cdktf_cdktf_provider_aws", NAIVE, max(1, args.runs // 2)))
    print(f"runs per row: {args.runs}, cores: {os.cpu_count()}, python {sys.version.split()[0]}\n")
    print("| measurement | median s | min s | max s | peak MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | {r['peak_mb']} |")
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    print(f"\nfull synth / floor = {ratio:.2f} (target <= 1.5)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
