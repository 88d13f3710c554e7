"""checkov scans every synthesized stack of every configuration variant (framework
terraform_json) and every Kubernetes object the workload stack applies (framework kubernetes):
zero failed checks.

checkov lives in its own virtualenv (.venv-checkov, installed by scripts/test.sh) because its
pins conflict with boto3 and pytest; CHECKOV_BIN points at it. Each framework runs once over
all files (a checkov start costs ~2 s). Skipped checks are listed, with reasons, only in
.checkov.yaml and .checkov-kubernetes.yaml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, require
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


def scan(paths: list[Path], framework: str) -> dict:
    args = [checkov_bin(), "--framework", framework, "--config-file", str(CHECKOV_CONFIGS[framework])]
    for path in paths:
        args += ["-f", str(path)]
    result = subprocess.run(
        [*args, "-o", "json", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},  # no network
    )
    # exit 1 = failed checks; anything else non-zero is a crash of checkov itself
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (found,) = [r for r in reports if r.get("check_type") == framework] or reports
    return found


def failures(report: dict) -> list[str]:
    return [
        f"{Path(f['file_path']).name}: {f['check_id']} {f['check_name']} @ {f['resource']}"
        for f in report.get("results", {}).get("failed_checks", [])
    ]


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


def test_terraform_zero_failed(synth_variants, tmp_path):
    # One run over every stack of every variant; copies get distinct names for the report.
    paths = []
    for variant, synth in synth_variants.items():
        for name, path in synth.paths.items():
            copy = tmp_path / f"{variant}--{name}.tf.json"
            copy.write_bytes(path.read_bytes())
            paths.append(copy)
    report = scan(paths, "terraform_json")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, "checkov could not parse a stack"
    assert not failures(report), "\n".join(failures(report))
    assert summary["passed"] > 50 * len(synth_variants), "checkov scanned suspiciously little"


def rendered_manifests(synth) -> list[dict]:
    """The workload's Kubernetes objects as the cluster receives them: Terraform's escapes
    undone and plan-time references replaced by representative values."""
    out = []
    for resource in synth.resources("workload", "kubernetes_manifest").values():
        text = json.dumps(terraform_literal(resource["manifest"]))
        text = _DIGEST_REF.sub("sha256:" + "0" * 64, text)
        out.append(json.loads(_ANY_REF.sub("placeholder", text)))
    return out


def test_kubernetes_zero_failed(synth_variants, tmp_path):
    paths = []
    for variant, synth in synth_variants.items():
        path = tmp_path / f"{variant}.yaml"
        path.write_text(yaml.safe_dump_all(rendered_manifests(synth), sort_keys=True))
        paths.append(path)
    report = scan(paths, "kubernetes")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert not failures(report), "\n".join(failures(report))
    assert summary["passed"] > 60 * len(synth_variants), "checkov scanned suspiciously little"


def test_kubernetes_scan_catches_a_weakened_pod(synth, tmp_path):
    """The scan is real: a privileged container with a root user fails it."""
    objects = rendered_manifests(synth)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True, "runAsUser": 0}
    path = tmp_path / "weak.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    failed = {line.split()[1] for line in failures(scan([path], "kubernetes"))}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= failed, failed
