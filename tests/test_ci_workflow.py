"""The sample GitHub Actions workflow users copy to review plans is valid (actionlint, with
shellcheck on its run blocks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import REPO, tool


def test_workflows_pass_actionlint():
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows
    shellcheck = tool("shellcheck")
    result = subprocess.run(
        [tool("actionlint"), "-shellcheck", shellcheck, *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n")
    result = subprocess.run([tool("actionlint"), str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
