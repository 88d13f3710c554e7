"""One snapshot per synthesized stack (default configuration and the edge/cognito variant).

Update deliberately with `scripts/test.sh tests/test_snapshots.py --snapshot-update` and
review the diff: it is the Terraform your users will plan.
"""

from __future__ import annotations

import json

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.helpers import REPO

STACK_CYCLES = ("state", "platform", "workload", "edge")


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


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
    assert synth.stacks[name] == snapshot_json


def test_synthesized_json_has_no_machine_paths(synth_variants):
    for synth in synth_variants.values():
        for name, data in synth.stacks.items():
            text = json.dumps(data)
            for marker in (str(REPO), str(synth.outdir), "/tmp/", "/home/", "/root/"):
                assert marker not in text, f"{name} embeds a machine path ({marker})"


def test_synthesis_is_deterministic(synth, tmp_path):
    from tests.conftest import Synth

    again = Synth(synth.config, tmp_path / "again")
    assert again.stacks == synth.stacks
