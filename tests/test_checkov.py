"""checkov scans every synthesized stack of every configuration variant (framework
terraform_json) and every Kubernetes object the workload stack applies (framework kubernetes):
zero failed checks.

checkov lives in its own virtualenv (.venv-checkov, installed by scripts/test.sh) because its
pins conflict with boto3 and pytest; CHECKOV_BIN points at it. checkov runs once, over every
file of both frameworks (a checkov start costs ~3 s). Skipped checks are listed, with reasons,
only in .checkov.yaml and .checkov-kubernetes.yaml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, dump_yaml_all, require
from tests.k8s import terraform_literal

CHECKOV_CONFIGS = {"terraform_json": REPO / ".checkov.yaml", "kubernetes": REPO / ".checkov-kubernetes.yaml"}
# A representative value for each kind of plan-time reference in a manifest, so checkov sees
# what the cluster will see (an image pinned by digest, a bucket name).
_DIGEST_REF = re.compile(r"\$\{data\.aws_ecr_image\.[^}]+\.image_digest\}")
_ANY_REF = re.compile(r"(?<!\$)\$\{[^}]*\}")


def checkov_bin() -> str:
    candidate = os.environ.get("CHECKOV_BIN") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    require(Path(candidate).exists(), f"checkov not found at {candidate} (scripts/test.sh installs it)")
    return candidate


def merged_config(directory: Path) -> Path:
    """Both frameworks' configurations as one file, for one checkov run: frameworks and skipped
    checks are joined (check ids name their framework), every other setting must agree."""
    merged: dict = {}
    for path in CHECKOV_CONFIGS.values():
        for key, value in yaml.safe_load(path.read_text()).items():
            if isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
            else:
                assert merged.setdefault(key, value) == value, f"{path.name}: {key} differs from the other config"
    out = directory / "checkov.yaml"
    out.write_text(yaml.safe_dump(merged))
    return out


def scan(paths: list[Path], config: Path) -> dict[str, dict]:
    """One checkov run over `paths`; its report per framework (check_type)."""
    args = [checkov_bin(), "--config-file", str(config)]
    for path in paths:
        args += ["-f", str(path)]
    result = subprocess.run(
        [*args, "-o", "json", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},  # no network
    )
    # exit 1 = failed checks; anything else non-zero is a crash of checkov itself
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return {r["check_type"]: r for r in (report if isinstance(report, list) else [report])}


def checks(report: dict, outcome: str, files: list[Path]) -> list[dict]:
    """The report's `outcome` ("passed" / "failed") checks on these files."""
    names = {path.name for path in files}
    return [c for c in report.get("results", {}).get(f"{outcome}_checks", []) if Path(c["file_path"]).name in names]


def failures(report: dict, files: list[Path]) -> list[str]:
    return [
        f"{Path(f['file_path']).name}: {f['check_id']} {f['check_name']} @ {f['resource']}"
        for f in checks(report, "failed", files)
    ]


@dataclass(frozen=True)
class Scan:
    """The one checkov run of the session, and which of its files are which."""

    reports: dict[str, dict]  # framework -> report
    stacks: list[Path]  # every stack of every variant (terraform_json)
    manifests: list[Path]  # every variant's Kubernetes objects (kubernetes)
    weakened: Path  # the default's objects with a privileged root container (kubernetes)


@pytest.fixture(scope="session")
def checkov_scan(synth, synth_variants, tmp_path_factory) -> Scan:
    """Every file the tests below check, in ONE checkov run: a checkov start costs ~3 s of CPU,
    more than scanning a file. Stack copies get distinct names for the report."""
    directory = tmp_path_factory.mktemp("checkov")
    stacks, manifests = [], []
    for variant, variant_synth in synth_variants.items():
        for name, path in variant_synth.paths.items():
            stacks.append(directory / f"{variant}--{name}.tf.json")
            stacks[-1].write_bytes(path.read_bytes())
        manifests.append(directory / f"{variant}.yaml")
        manifests[-1].write_text(dump_yaml_all(rendered_manifests(variant_synth), sort_keys=True))
    objects = rendered_manifests(synth)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "runAsUser": 0}
    weakened = directory / "weakened.yaml"
    weakened.write_text(dump_yaml_all(objects))
    reports = scan([*stacks, *manifests, weakened], merged_config(directory))
    assert set(reports) == set(CHECKOV_CONFIGS), f"checkov reported {sorted(reports)}"
    return Scan(reports, stacks, manifests, weakened)


@pytest.mark.parametrize("framework", sorted(CHECKOV_CONFIGS))
def test_every_skip_has_a_reason(framework):
    text = CHECKOV_CONFIGS[framework].read_text()
    config = yaml.safe_load(text)
    assert config["framework"] == [framework]
    lines = text.splitlines()
    for check in config["skip-check"]:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        # a reason comment directly above the item, or above the group of items it belongs to
        above = index - 1
        while lines[above].strip().startswith("- CKV"):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{check} has no reason comment above it"


def test_terraform_zero_failed(checkov_scan, synth_variants):
    report = checkov_scan.reports["terraform_json"]
    assert report["summary"]["parsing_errors"] == 0, "checkov could not parse a stack"
    assert not failures(report, checkov_scan.stacks), "\n".join(failures(report, checkov_scan.stacks))
    passed = checks(report, "passed", checkov_scan.stacks)
    assert len(passed) > 50 * len(synth_variants), "checkov scanned suspiciously little"


def rendered_manifests(synth) -> list[dict]:
    """The workload's Kubernetes objects as the cluster receives them: Terraform's escapes
    undone and plan-time references replaced by representative values."""
    out = []
    for resource in synth.resources("workload", "kubernetes_manifest").values():
        text = json.dumps(terraform_literal(resource["manifest"]))
        text = _DIGEST_REF.sub("sha256:" + "0" * 64, text)
        out.append(json.loads(_ANY_REF.sub("placeholder", text)))
    return out


def test_kubernetes_zero_failed(checkov_scan, synth_variants):
    report = checkov_scan.reports["kubernetes"]
    assert report["summary"]["parsing_errors"] == 0
    assert not failures(report, checkov_scan.manifests), "\n".join(failures(report, checkov_scan.manifests))
    passed = checks(report, "passed", checkov_scan.manifests)
    assert len(passed) > 60 * len(synth_variants), "checkov scanned suspiciously little"


def test_kubernetes_scan_catches_a_weakened_pod(checkov_scan):
    """The scan is real: a privileged container with a root user fails it."""
    failed = {line.split()[1] for line in failures(checkov_scan.reports["kubernetes"], [checkov_scan.weakened])}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= failed, failed
