"""Stable Terraform addresses: every Kubernetes object of the workload has an explicit resource
id, so adding an object (or reordering them) never renames one, which would make Terraform
destroy and recreate a live object."""

from __future__ import annotations

import pytest
from cdktf import TerraformResource


def _addresses_with(extra: dict, config, monkeypatch, tmp_path) -> set[str]:
    """The Terraform address of every kubernetes_manifest of `config`'s workload stack when the
    workload gains `extra`'s objects, FIRST in its manifests, built without synthesizing (the
    construct tree already has the final ids)."""
    import stacks.workload
    from modules.comfyui import comfyui_manifests
    from stacks.app import build_app

    def with_extra(**kwargs):
        return {**extra, **comfyui_manifests(**kwargs)}

    monkeypatch.setattr(stacks.workload, "comfyui_manifests", with_extra)
    app = build_app(config, outdir=tmp_path)
    workload = next(s for s in app.node.children if s.node.id == config.stack_name("workload"))
    return {
        f"kubernetes_manifest.{node.friendly_unique_id}"
        for node in workload.node.find_all()
        if isinstance(node, TerraformResource) and node.terraform_resource_type == "kubernetes_manifest"
    }


def test_adding_a_manifest_renames_nothing(synth_variants, monkeypatch, tmp_path):
    """The addresses as synthesized, then with one object more: the new one is all that changes."""
    synth = synth_variants["edge-cognito"]
    before = {f"kubernetes_manifest.{i}" for i in synth.resources("workload", "kubernetes_manifest")}
    extra = {
        "comfyui_extra_configmap": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "comfyui"},
        }
    }
    after = _addresses_with(extra, synth.config, monkeypatch, tmp_path)
    assert before < after
    assert after - before == {"kubernetes_manifest.comfyui_extra_configmap"}


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
