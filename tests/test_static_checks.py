"""Static checks, enforced by the README's test command like every other test: `ruff check` and
`ruff format --check` over the code and the tests, and mypy (strict) over the code, all with
the configuration in pyproject.toml and the versions pinned in Pipfile.lock.

Each test fails with the tool's own output. To fix: `ruff check --fix PATH`, `ruff format PATH`,
and for mypy the message names the line. mypy keeps its cache in .mypy_cache/ (a second run
takes about a second).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

CODE = ("core", "modules", "stacks", "lambda_src", "comfyui_eks")
# The pod's programs import the modules shipped next to them by file name (contract,
# comfy_client): mypy checks them in a run of their own that finds those modules there.
POD = "modules/pod"
POD_SIBLINGS = ("comfyui_eks", "lambda_src/jobs")
# Programs outside the packages, linted too.
SCRIPTS = ("main.py", "benchmarks", "scripts")


def python_files(*roots: str) -> list[str]:
    """The *.py files under `roots` (directories or files), relative to the repository."""
    found = []
    for root in roots:
        paths = [REPO / root] if (REPO / root).is_file() else sorted((REPO / root).rglob("*.py"))
        for path in paths:
            if "__pycache__" not in path.parts:
                found.append(path.relative_to(REPO).as_posix())
    assert found, roots
    return found


def run(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(args[:3])} ...` failed:\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff_check():
    run("ruff", "check", "--no-fix", *python_files(*CODE, *SCRIPTS, "tests"))


def test_ruff_format():
    run("ruff", "format", "--check", "--diff", *python_files(*CODE, *SCRIPTS, "tests"))


def test_mypy():
    code = [f for f in python_files(*CODE) if not f.startswith(f"{POD}/")]
    run("mypy", "--config-file", "pyproject.toml", *code)


def test_mypy_pod_programs():
    """Same cache as the code's run: the modules differ by name (`contract` here,
    `lambda_src.jobs.contract` there), and what both import (the standard library, boto3's
    stubs) is analysed once: 0.3 instead of 1.4 CPU-s on a fresh clone. A type error in a pod
    program, or in a sibling it imports, still fails either run whichever ran first."""
    run("mypy", "--config-file", "pyproject.toml", *python_files(POD), env={"MYPYPATH": os.pathsep.join(POD_SIBLINGS)})
