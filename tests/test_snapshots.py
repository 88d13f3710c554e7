"""Snapshots a reviewer can read: the Terraform JSON of every stack of every configuration
variant, with the programs it carries taken out and snapshotted as the text they are (the GPU
nodes' user-data decoded from its gzip+base64 bundle, each Lambda package's file listing).

A script change then shows as a readable diff of the script, and the stack JSON only says that
its hash changed. A variant's stack that is byte-identical to the default's is not stored
twice: the test asserts the equality instead.

Update deliberately with `PYTEST_WORKERS=0 scripts/test.sh tests/test_snapshots.py --snapshot-update` and
review the diff: it is the Terraform your users will plan and the code their nodes run.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import re
import tempfile
import zipfile

import pytest
import yaml
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.helpers import REPO

STACK_CYCLES = ("state", "platform", "workload", "edge")
_BUNDLE = re.compile(
    r"base64 -d <<'(?P<end>\w+)' \| gunzip -c >(?P<bundle>\S+)\n(?P<data>.*?)(?P=end)\n"
    r"\{\n(?P<split>(?:  head -c \d+ >.*\n)+)\} <(?P=bundle)\n",
    re.S,
)


class TextSnapshot(SingleFileSnapshotExtension):
    _write_mode = WriteMode.TEXT
    file_extension = "txt"


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.fixture
def snapshot_text(snapshot):
    return snapshot.use_extension(TextSnapshot)


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def readable_user_data(user_data: str) -> str:
    """The user-data with its script bundle decoded: each script as text under a header."""

    def decode(match: re.Match) -> str:
        data = gzip.decompress(base64.b64decode(match.group("data")))
        out, offset = [], 0
        for size, target in re.findall(r"head -c (\d+) >(.*)", match.group("split")):
            part = data[offset : offset + int(size)].decode("ascii")
            offset += int(size)
            out.append(f"# ===== bundled script -> {target} ({size} bytes) =====\n{part}")
        assert offset == len(data), "the bundle holds exactly the scripts it splits"
        return "".join(out) + "# ===== end of bundle =====\n"

    text, count = _BUNDLE.subn(decode, user_data)
    assert count == 1, "the user-data carries one script bundle"
    return text


def _gpu_pool_values(stack: dict) -> tuple[str, dict] | None:
    for name, release in stack.get("resource", {}).get("helm_release", {}).items():
        if release.get("name") == "gpu-nodepool":
            return name, yaml.safe_load(release["values"][0].replace("$${", "${").replace("%%{", "%{"))
    return None


def user_data_of(stack: dict) -> str | None:
    found = _gpu_pool_values(stack)
    if found is None:
        return None
    node_class = next(m for m in found[1]["manifests"] if m["kind"] == "EC2NodeClass")
    return node_class["spec"]["userData"]


def reviewable(stack: dict) -> dict:
    """The stack JSON with carried programs replaced by a pointer and a hash."""
    stack = copy.deepcopy(stack)
    found = _gpu_pool_values(stack)
    if found is not None:
        name, values = found
        node_class = next(m for m in values["manifests"] if m["kind"] == "EC2NodeClass")
        node_class["spec"]["userData"] = (
            f"<GPU user-data: see the user-data snapshot; sha256 {_sha(node_class['spec']['userData'])}>"
        )
        stack["resource"]["helm_release"][name]["values"] = [yaml.safe_dump(values, sort_keys=True, width=10_000)]
    for resource in stack.get("resource", {}).get("kubernetes_manifest", {}).values():
        manifest = resource["manifest"]
        if manifest.get("kind") == "ConfigMap" and "data" in manifest:
            manifest["data"] = {k: f"<program {k}; sha256 {_sha(v)}>" for k, v in manifest["data"].items()}
    return stack


def _cases():
    from tests.conftest import variant_config

    for variant in (DEFAULT_VARIANT, *VARIANTS):
        config = variant_config(variant)
        for cycle in STACK_CYCLES:
            if cycle == "edge" and not config.edge.cloudfront:
                continue  # the edge stack exists only with CloudFront on
            yield pytest.param(variant, cycle, id=f"{variant}-{cycle}")


@pytest.mark.parametrize(("variant", "cycle"), list(_cases()))
def test_stack_snapshot(synth_variants, variant, cycle, snapshot_json):
    synth = synth_variants[variant]
    name = synth.config.stack_name(cycle)
    assert name in synth.stacks, f"{name} was not synthesized"
    default = synth_variants[DEFAULT_VARIANT]
    if variant != DEFAULT_VARIANT and cycle in ("state", "platform", "workload"):
        same = default.stacks[default.config.stack_name(cycle)]
        if same == synth.stacks[name]:
            return  # byte-identical to the default's snapshot: not stored twice
    assert reviewable(synth.stacks[name]) == snapshot_json


@pytest.mark.parametrize("variant", [DEFAULT_VARIANT, *VARIANTS])
def test_user_data_snapshot(synth_variants, variant, snapshot_text):
    synth = synth_variants[variant]
    text = readable_user_data(user_data_of(synth.stack("workload")))
    if variant != DEFAULT_VARIANT:
        default = synth_variants[DEFAULT_VARIANT]
        if text == readable_user_data(user_data_of(default.stack("workload"))):
            return
    assert text == snapshot_text


def test_lambda_packages_snapshot(synth, snapshot_text):
    """Each Lambda package's files with their sizes and hashes (the sources are in lambda_src/)."""
    lines = []
    stack_dir = synth.paths[synth.config.stack_name("platform")].parent
    handlers: dict[str, list[str]] = {}
    for function in synth.resources("platform", "aws_lambda_function").values():
        handlers.setdefault(function["filename"], []).append(function["handler"])
    for filename, used_by in sorted(handlers.items(), key=lambda item: sorted(item[1])):
        path = stack_dir / filename
        lines.append(f"{path.name}: {', '.join(sorted(used_by))}")
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            for info in archive.infolist():
                lines.append(f"  {info.filename:<28} {info.file_size:>7} bytes  sha256 {_sha(archive.read(info))}")
    assert "\n".join(lines) + "\n" == snapshot_text


def test_readable_user_data_is_the_shipped_scripts(synth):
    """The decoder is faithful: every bundled script is exactly what gpu_user_data ships."""
    from modules.gpu_user_data import shipped_script

    text = readable_user_data(user_data_of(synth.stack("workload")))
    for script in (REPO / "modules" / "scripts").glob("*.sh"):
        assert shipped_script(script).decode() in text, script.name


def test_synthesized_json_has_no_machine_paths(synth_variants):
    # The Lambda zips are staged in the temporary directory; the repository and the outdir are
    # this machine's. (Container paths such as /tmp in a Pod spec are not machine paths.)
    markers = (str(REPO), tempfile.gettempdir().rstrip("/") + "/lambda-", "/tmp/pytest-", "/home/", "/root/")
    for synth in synth_variants.values():
        for name, data in synth.stacks.items():
            text = json.dumps(data)
            for marker in (*markers, str(synth.outdir)):
                assert marker not in text, f"{name} embeds a machine path ({marker})"
