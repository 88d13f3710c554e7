#!/usr/bin/env python3
"""The test suite's time as CI takes it, paired: this repository's HEAD against another commit.

    python benchmarks/suite_bench.py [--base REF] [--pairs 3] [--workdir DIR] [--warm] [-- PYTEST_ARGS]

Each side is a clone of its commit under --workdir, kept between calls, running its own
`scripts/test.sh` (the README's test command: it installs its environments on first use,
outside the timing, and picks its own workers and options). Before every run a clone loses
its `__pycache__/` and `.mypy_cache/` directories, as a fresh clone has none (`--warm` keeps
them). The runs alternate because the machine's speed drifts within an hour by more than a
change gains: read each pair's ratio (head / base) and quote their median. Which side runs
first alternates too (base first in odd pairs, head first in even ones): a run that follows
another is not always as fast as the first (a steady drift, what the previous run left to the
system), and a fixed order gave head a penalty of its own in every pair (2026-12-01: 1.04,
three pairs, then 0.97 and 1.10 with the order reversed). The figures: pytest's own duration,
and the whole process's wall and CPU time (every process of the run that was waited for, the
test command's installs check included; not the AWS CLI fork server's calls, which the kernel
reaps).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENVIRONMENTS = (".venv", ".venv-checkov", ".venv-pipenv")  # kept between runs: installed once
SUMMARY = re.compile(r"^=* ?\d+ passed.* in (?P<seconds>[\d.]+)s", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    pytest_s: float
    wall_s: float
    cpu_s: float


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def clone(sha: str, workdir: Path) -> Path:
    """A clone of `sha`, made once: its environments are installed on its first run."""
    directory = workdir / sha[:12]
    if not (directory / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(directory)], check=True)
        git("checkout", "--quiet", "--detach", sha, cwd=directory)
        print(f"{sha[:12]}: installing its test environments (not timed)", flush=True)
        run_test_script(directory, ["--collect-only", "-q"])
    return directory


def forget_caches(directory: Path) -> None:
    """What a fresh clone lacks: bytecode caches and mypy's cache (environments aside)."""
    shutil.rmtree(directory / ".mypy_cache", ignore_errors=True)
    for root, dirs, _ in os.walk(directory):
        if Path(root) == directory:
            dirs[:] = [d for d in dirs if d not in ENVIRONMENTS and d != ".git"]
        if "__pycache__" in dirs:
            shutil.rmtree(Path(root) / "__pycache__")
            dirs.remove("__pycache__")


def run_test_script(directory: Path, pytest_args: list[str]) -> tuple[str, float, float]:
    """`scripts/test.sh` in `directory`: its output, wall time and CPU time (every process of
    the run that was waited for). Stops the benchmark if it fails."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(["bash", "scripts/test.sh", *pytest_args], cwd=directory, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{directory.name}: scripts/test.sh failed:\n{text[-4000:]}")
    return text, wall, usage.ru_utime + usage.ru_stime


def measure(directory: Path, pytest_args: list[str]) -> Run:
    text, wall, cpu = run_test_script(directory, pytest_args)
    found = SUMMARY.findall(text)
    if not found:
        raise SystemExit(f"{directory.name}: no pytest summary line in the output:\n{text[-2000:]}")
    return Run(pytest_s=float(found[-1]), wall_s=wall, cpu_s=cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD~1", help="the commit to compare HEAD with (default HEAD~1)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "suite-bench")
    parser.add_argument("--warm", action="store_true", help="keep bytecode and mypy caches between runs")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to scripts/test.sh")
    args = parser.parse_args()
    sides = {"base": git("rev-parse", args.base), "head": git("rev-parse", "HEAD")}
    args.workdir.mkdir(parents=True, exist_ok=True)
    directories = {side: clone(sha, args.workdir) for side, sha in sides.items()}
    pytest_args = ["-q", "-p", "no:cacheprovider", *args.pytest_args]
    print(f"base {sides['base'][:12]}, head {sides['head'][:12]}; {args.pairs} pairs", flush=True)
    print("pair first  pytest s base / head   wall s base / head   cpu s base / head   head/base wall  cpu", flush=True)
    ratios: list[tuple[float, float]] = []
    runs: dict[str, list[Run]] = {"base": [], "head": []}
    for pair in range(1, args.pairs + 1):
        order = ("base", "head") if pair % 2 else ("head", "base")
        for side in order:
            if not args.warm:
                forget_caches(directories[side])
            runs[side].append(measure(directories[side], pytest_args))
        b, h = runs["base"][-1], runs["head"][-1]
        ratios.append((h.wall_s / b.wall_s, h.cpu_s / b.cpu_s))
        print(
            f"{pair:4d} {order[0]:>5}  {b.pytest_s:8.1f} / {h.pytest_s:5.1f}   {b.wall_s:8.1f} / {h.wall_s:5.1f}"
            f"   {b.cpu_s:7.1f} / {h.cpu_s:5.1f}   {ratios[-1][0]:14.3f}  {ratios[-1][1]:.3f}",
            flush=True,
        )

    def median(side: str, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs[side]))

    print(
        f"median  pytest s {median('base', 'pytest_s'):.1f} / {median('head', 'pytest_s'):.1f}, "
        f"wall s {median('base', 'wall_s'):.1f} / {median('head', 'wall_s'):.1f}; "
        f"head/base wall {statistics.median(r[0] for r in ratios):.3f} "
        f"({min(r[0] for r in ratios):.3f} to {max(r[0] for r in ratios):.3f}), "
        f"cpu {statistics.median(r[1] for r in ratios):.3f}"
    )


if __name__ == "__main__":
    main()
