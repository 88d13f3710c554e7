"""GPU capacity: NodePool/EC2NodeClass against the Karpenter v1.8.8 CRD schemas (unknown
fields are errors), the rendered chart values, and the ordering in the workload stack."""

from __future__ import annotations

import re

import pytest
import yaml

from core import names
from modules import comfyui
from modules.karpenter import KARPENTER_CHART_VERSION, NODE_TERMINATION_GRACE_SECONDS, gpu_node_class, gpu_node_pool
from tests.crd_schema import errors, load_validator
from tests.helpers import DATA, go_duration_seconds


@pytest.fixture(scope="module")
def nodepool_validator():
    return load_validator(DATA / "crds" / "karpenter-v1.8.8" / "karpenter.sh_nodepools.yaml")


@pytest.fixture(scope="module")
def nodeclass_validator():
    return load_validator(DATA / "crds" / "karpenter-v1.8.8" / "karpenter.k8s.aws_ec2nodeclasses.yaml")


def _pool(config):
    g = config.gpu
    return gpu_node_pool(
        instance_types=g.instance_types,
        capacity_types=g.capacity_types,
        max_gpus=g.max_gpus,
        consolidate_after=g.consolidate_after,
        expire_after=g.expire_after,
    )


def _class(config):
    return gpu_node_class(
        cluster_name=config.cluster_name,
        node_role_name="comfyui-gpu-node",
        models_bucket=config.models_bucket,
        region=config.region,
        model_prefixes=config.model_sync.prefixes,
        root_volume_gib=config.gpu.root_volume_gib,
        tags=config.tags,
        ami_alias=config.gpu.ami_alias,
        cache_deadline_seconds=config.gpu.model_cache_deadline_seconds,
    )


def test_chart_version_matches_schemas():
    assert KARPENTER_CHART_VERSION == "1.8.8"


def test_nodepool_valid(synth, nodepool_validator):
    assert errors(nodepool_validator, _pool(synth.config)) == []


def test_nodeclass_valid(synth, nodeclass_validator):
    assert errors(nodeclass_validator, _class(synth.config)) == []


def test_unknown_and_misplaced_fields_are_errors(synth, nodepool_validator, nodeclass_validator):
    pool = _pool(synth.config)
    pool["spec"]["disruption"]["consolidateAfterr"] = "1m"
    assert any("consolidateAfterr" in e for e in errors(nodepool_validator, pool))
    node_class = _class(synth.config)
    node_class["spec"]["metadataOptions"]["httpTokens"] = "optional-ish"
    assert errors(nodeclass_validator, node_class)


def test_nodepool_policy(synth):
    pool = _pool(synth.config)
    spec = pool["spec"]
    template = spec["template"]["spec"]
    reqs = {r["key"]: r["values"] for r in template["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"] == list(synth.config.gpu.instance_types)
    assert reqs["karpenter.sh/capacity-type"] == list(synth.config.gpu.capacity_types)
    assert template["taints"] == [{"key": names.GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert spec["limits"] == {names.GPU_RESOURCE: str(synth.config.gpu.max_gpus)}
    # Never interrupt a running generation: only empty nodes are consolidated.
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert template["expireAfter"] == synth.config.gpu.expire_after


def test_nodeclass_security(synth):
    spec = _class(synth.config)["spec"]
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert spec["amiSelectorTerms"] == [{"alias": synth.config.gpu.ami_alias}]
    for term in spec["subnetSelectorTerms"] + spec["securityGroupSelectorTerms"]:
        assert set(term) == {"tags"}, "select by discovery tags only (no names, no globs)"
        assert "*" not in str(term)
    assert all(d["ebs"]["encrypted"] is True for d in spec["blockDeviceMappings"])
    assert spec["tags"][names.NODE_CLUSTER_TAG_KEY] == synth.config.cluster_name
    assert spec["tags"][names.NODE_ROLE_TAG_KEY] == names.NODE_ROLE_GPU


def test_gpu_instances_carry_the_project_tags(synth, nodeclass_validator):
    """Terraform's default tags never reach what Karpenter launches: the project's tags (cost
    allocation) go into the EC2NodeClass, and the targeting tags cannot be overridden."""
    assert synth.config.tags, "the default config has tags to propagate"
    tags = _class(synth.config)["spec"]["tags"]
    assert synth.config.tags.items() <= tags.items()
    hostile = gpu_node_class(
        cluster_name="c",
        node_role_name="r",
        models_bucket="models-bucket",
        region="us-west-2",
        model_prefixes=("loras/",),
        root_volume_gib=100,
        tags={names.NODE_CLUSTER_TAG_KEY: "someone-else", "team": "art"},
        ami_alias="al2023@v20260714",
        cache_deadline_seconds=3600,
    )
    assert hostile["spec"]["tags"][names.NODE_CLUSTER_TAG_KEY] == "c" and hostile["spec"]["tags"]["team"] == "art"
    assert errors(nodeclass_validator, hostile) == []


def _release(synth, name: str) -> dict:
    releases = synth.resources("workload", "helm_release")
    found = [r for r in releases.values() if r["name"] == name]
    assert len(found) == 1, sorted(r["name"] for r in releases.values())
    return found[0]


def test_synthesized_pool_release_validates_and_keeps_shell_variables(synth, nodepool_validator, nodeclass_validator):
    release = _release(synth, "gpu-nodepool")
    karpenter_key = next(k for k, r in synth.resources("workload", "helm_release").items() if r["name"] == "karpenter")
    assert release["depends_on"] == [f"helm_release.{karpenter_key}"], "pools must be applied after the chart (CRDs)"
    text = release["values"][0]
    # Terraform interpolates every `${`: the only unescaped ones are our cross-stack tokens.
    unescaped = re.findall(r"(?<!\$)\$\{([^}]*)\}", text)
    assert unescaped and all(u.startswith("data.terraform_remote_state.") for u in unescaped), unescaped
    # What Terraform will hand to Helm: `$${` -> `${`, token -> its value.
    rendered = re.sub(r"(?<!\$)\$\{data\.[^}]*\}", "comfyui-gpu-node", text).replace("$${", "${").replace("%%{", "%{")
    manifests = yaml.safe_load(rendered)["manifests"]
    kinds = {m["kind"]: m for m in manifests}
    assert errors(nodeclass_validator, kinds["EC2NodeClass"]) == []
    assert errors(nodepool_validator, kinds["NodePool"]) == []
    user_data = kinds["EC2NodeClass"]["spec"]["userData"]
    assert user_data == _class(synth.config)["spec"]["userData"], "user-data must reach the node byte for byte"
    assert "${" in user_data


def test_gpu_node_drain_outlasts_a_comfyui_pod_shutdown(synth):
    """A GPU node being drained (expiry, pool deletion) waits longer than a ComfyUI pod needs
    to finish its running generation."""
    grace = go_duration_seconds(_pool(synth.config)["spec"]["template"]["spec"]["terminationGracePeriod"])
    assert grace == NODE_TERMINATION_GRACE_SECONDS
    assert grace > comfyui.TERMINATION_GRACE_SECONDS


def test_destroy_drains_gpu_nodes_before_karpenter_goes(synth):
    """terraform destroy runs dependencies in reverse: ComfyUI, then the pool release (whose
    uninstall waits for Karpenter to terminate every GPU node), then the Karpenter chart. A
    pool release that did not wait, or a timeout shorter than a node drain, would remove the
    controller while NodeClaims still hold finalizers and leave GPU instances running."""
    pool = _release(synth, "gpu-nodepool")
    releases = synth.resources("workload", "helm_release")
    key = {r["name"]: k for k, r in releases.items()}
    assert pool["wait"] is True
    assert pool["timeout"] > NODE_TERMINATION_GRACE_SECONDS
    assert pool["depends_on"] == [f"helm_release.{key['karpenter']}"]
    manifests = synth.resources("workload", "kubernetes_manifest")
    comfyui_objects = {k: m for k, m in manifests.items() if k.startswith("comfyui_")}
    assert {m["manifest"]["kind"] for m in comfyui_objects.values()} >= {"Deployment", "Ingress", "PodDisruptionBudget"}
    for name, manifest in comfyui_objects.items():
        assert f"helm_release.{key['gpu-nodepool']}" in manifest["depends_on"], name
        # The Ingress finalizer is lifted by the controller: it must outlive the Ingress.
        assert f"helm_release.{key['aws-load-balancer-controller']}" in manifest["depends_on"], name


def test_karpenter_chart_values(synth):
    release = _release(synth, "karpenter")
    assert release["repository"] == "oci://public.ecr.aws/karpenter" and release["version"] == KARPENTER_CHART_VERSION
    values = yaml.safe_load(release["values"][0])
    assert values["nodeSelector"] == {"comfyui.io/node-role": "system"}
    assert values["settings"]["interruptionQueue"].startswith("${data.terraform_remote_state.")
    assert values["settings"]["clusterName"].startswith("${data.terraform_remote_state.")


def test_device_plugin_schedules_on_karpenter_gpu_nodes(synth):
    values = yaml.safe_load(_release(synth, "nvidia-device-plugin")["values"][0])
    assert {"key": names.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "karpenter.k8s.aws/instance-gpu-manufacturer", "operator": "In", "values": ["nvidia"]}
            ]
        }
    ]


def test_karpenter_submodule_node_role(synth):
    modules = synth.stack("platform")["module"]
    karpenter = next(m for m in modules.values() if m["source"].endswith("//modules/karpenter"))
    policies = karpenter["node_iam_role_additional_policies"]
    # Not the managed SSM policy (it reads every parameter of the account): our own, for Run Command.
    assert set(policies) == {"GpuNode", "ModelsRead"}
    assert all(arn.startswith("${aws_iam_policy.") for arn in policies.values())
    assert karpenter["create_pod_identity_association"] is True and karpenter["enable_spot_termination"] is True
