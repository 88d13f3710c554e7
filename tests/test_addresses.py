"""Stable Terraform addresses: every Kubernetes object of the workload has an explicit resource
id, so adding an object (or reordering them) never renames one, which would make Terraform
destroy and recreate a live object."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import EXTRA_OBJECT


def test_a_second_synthesis_with_one_object_more_differs_by_that_object_only(synth, synth_one_object_more):
    """The default configuration synthesized twice, the second time with one Kubernetes object
    more, first among the workload's (conftest.py): every other stack is identical (synthesis is
    deterministic: no timestamp, counter or random name), and so is the workload stack without
    that object (adding an object renames none, nor changes anything else)."""
    workload = synth.config.stack_name("workload")
    assert synth_one_object_more.stacks.keys() == synth.stacks.keys()
    for name, stack in synth.stacks.items():
        if name != workload:
            assert synth_one_object_more.stacks[name] == stack, f"{name} differs between two syntheses"
    again = copy.deepcopy(synth_one_object_more.stacks[workload])
    manifests = again["resource"]["kubernetes_manifest"]
    assert manifests.keys() - synth.resources("workload", "kubernetes_manifest").keys() == EXTRA_OBJECT.keys()
    for resource_id, obj in EXTRA_OBJECT.items():
        assert manifests.pop(resource_id)["manifest"] == obj
    assert again == synth.stacks[workload], "the workload stack changed beyond the added object"


@pytest.mark.parametrize("variant", ["default", "edge-cognito"])
def test_object_ids_are_explicit_not_positional(synth_variants, variant):
    from modules.comfyui import JobRunnerSettings, comfyui_manifests
    from stacks.ingress import api_ingress_settings, ingress_settings

    synth = synth_variants[variant]
    config = synth.config
    cognito = {"userPoolARN": "a", "userPoolClientID": "b", "userPoolDomain": "c"}
    ids = set(
        comfyui_manifests(
            image="r:t",
            model_cache_wait_seconds=60,
            runner=JobRunnerSettings(
                table="t", queue_url="q", inputs_bucket="i", outputs_bucket="o", region="us-west-2", timeout_seconds=60
            ),
            settings=ingress_settings(config, cognito=cognito),
            api_settings=api_ingress_settings(config),
        )
    )
    synthesized = set(synth.resources("workload", "kubernetes_manifest"))
    assert ids <= synthesized, "the workload stack uses the ids as they are"
    assert all(i.startswith("comfyui_") for i in ids)
