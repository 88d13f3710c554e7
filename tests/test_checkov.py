"""checkov scans every synthesized stack (every configuration variant): zero failed checks.

checkov lives in its own virtualenv (.venv-checkov, installed by scripts/test.sh) because
its pins conflict with boto3 and pytest; CHECKOV_BIN points at it. Skipped checks are
listed, with reasons, only in .checkov.yaml.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, require

CHECKOV_CONFIG = REPO / ".checkov.yaml"


def checkov_bin() -> str:
    candidate = os.environ.get("CHECKOV_BIN") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    require(Path(candidate).exists(), f"checkov not found at {candidate} (scripts/test.sh installs it)")
    return candidate


def scan(path: Path) -> dict:
    result = subprocess.run(
        [checkov_bin(), "-f", str(path), "--config-file", str(CHECKOV_CONFIG), "-o", "json", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},  # no network
    )
    # exit 1 = failed checks; anything else non-zero is a crash of checkov itself
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_every_skip_has_a_reason():
    text = CHECKOV_CONFIG.read_text()
    skips = yaml.safe_load(text)["skip-check"]
    lines = text.splitlines()
    for check in skips:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        # a reason comment directly above the item, or above the group of items it belongs to
        above = index - 1
        while lines[above].strip().startswith("- CKV"):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{check} has no reason comment above it"


def test_checkov_zero_failed(synth_variants):
    failures = []
    passed = 0
    for variant, synth in synth_variants.items():
        for name, path in synth.paths.items():
            report = scan(path)
            summary = report["summary"]
            assert summary["parsing_errors"] == 0, f"checkov could not parse {variant}/{name}"
            passed += summary["passed"]
            for failed in report.get("results", {}).get("failed_checks", []):
                failures.append(f"{variant}/{name}: {failed['check_id']} {failed['check_name']} @ {failed['resource']}")
    assert not failures, "\n".join(failures)
    assert passed > 50, "checkov scanned suspiciously little"
