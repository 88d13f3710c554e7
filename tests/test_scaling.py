"""Scaling (issue 10): KEDA's ScaledObject on the ComfyUI Deployment, triggered by the job
queue's depth and the working-hours schedule, validated against KEDA's own CRD (unknown fields
are errors); KEDA reads the queue with its own Pod Identity, scoped to that queue."""

from __future__ import annotations

import pytest
import yaml

from core import names
from modules import scaling
from tests.crd_schema import errors, load_validator
from tests.helpers import DATA
from tests.k8s import terraform_literal
from tests.test_hardening import _config


@pytest.fixture(scope="module")
def validator():
    return load_validator(DATA / "crds" / "keda-v2.20.2" / "keda.sh_scaledobjects.yaml", version="v1alpha1")


def _objects(synth) -> dict[str, dict]:
    release = next(r for r in synth.resources("workload", "helm_release").values() if r["name"] == "comfyui-scaling")
    manifests = yaml.safe_load(terraform_literal(release["values"][0]))["manifests"]
    return {m["kind"]: m for m in manifests}


def test_chart_version_matches_the_vendored_crd():
    assert scaling.KEDA_CHART_VERSION == "2.20.2"
    assert (DATA / "crds" / f"keda-v{scaling.KEDA_CHART_VERSION}").is_dir()


def test_scaled_object_is_valid_for_every_variant(synth_variants, validator):
    for variant, synth in synth_variants.items():
        objects = _objects(synth)
        scaled = objects["ScaledObject"]
        assert errors(validator, scaled) == [], variant
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] == "comfyui"
        assert spec["minReplicaCount"] == synth.config.scaling.min_replicas
        assert spec["maxReplicaCount"] == synth.config.scaling.max_replicas
        sqs = next(t for t in spec["triggers"] if t["type"] == "aws-sqs-queue")
        assert sqs["metadata"]["queueURL"].startswith("${data.terraform_remote_state."), "the platform's queue"
        assert sqs["authenticationRef"]["name"] == objects["TriggerAuthentication"]["metadata"]["name"]
        assert objects["TriggerAuthentication"]["spec"] == {"podIdentity": {"provider": "aws"}}
        has_cron = any(t["type"] == "cron" for t in spec["triggers"])
        assert has_cron is (synth.config.scaling.schedule is not None), variant


def test_the_deployment_leaves_its_replica_count_to_keda(synth):
    deployment = next(
        r for r in synth.resources("workload", "kubernetes_manifest").values() if r["manifest"]["kind"] == "Deployment"
    )
    assert "replicas" not in deployment["manifest"]["spec"]


def test_unknown_fields_are_errors(validator):
    config = _config()
    bad = scaling.scaled_object(scaling=config.scaling, queue_url="https://q", region="us-west-2", deployment="comfyui")
    bad["spec"]["minReplicas"] = 1
    assert errors(validator, bad)


@pytest.mark.parametrize(
    ("schedule", "start", "end"),
    [
        (
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"},
            "0 9 * * 1,2,3,4,5",
            "0 17 * * 1,2,3,4,5",
        ),
        (
            {"days": ["sat", "sun"], "start": "07:30", "end": "23:45", "timezone": "Europe/Berlin"},
            "30 7 * * 6,0",
            "45 23 * * 6,0",
        ),
    ],
)
def test_working_hours_become_cron_triggers(schedule, start, end, validator):
    config = _config(scaling={"schedule": {**schedule, "warm_replicas": 2}})
    scaled = scaling.scaled_object(
        scaling=config.scaling, queue_url="https://q", region="us-west-2", deployment="comfyui"
    )
    (cron,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "cron"]
    assert cron["metadata"] == {
        "timezone": config.scaling.schedule.timezone,
        "start": start,
        "end": end,
        "desiredReplicas": "2",
    }
    assert errors(validator, scaled) == []


def test_keda_reads_only_the_job_queue(synth):
    documents = synth.stack("platform")["data"]["aws_iam_policy_document"]
    keda = next(d for k, d in documents.items() if k.startswith("keda_document"))
    (statement,) = keda["statement"]
    assert statement["actions"] == ["sqs:GetQueueAttributes"]
    (queue,) = statement["resources"]
    assert queue.startswith("${aws_sqs_queue.job_store_queue_") and queue.endswith(".arn}")
    associations = {
        (a["namespace"], a["service_account"])
        for a in synth.resources("platform", "aws_eks_pod_identity_association").values()
    }
    assert (names.KEDA_NAMESPACE, names.KEDA_OPERATOR_SERVICE_ACCOUNT) in associations
    release = next(r for r in synth.resources("workload", "helm_release").values() if r["name"] == "keda")
    assert release["namespace"] == names.KEDA_NAMESPACE and release["version"] == scaling.KEDA_CHART_VERSION


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas is above max_replicas"),
        ({"scaling": {"max_replicas": 20}}, "above gpu.max_gpus"),
        ({"scaling": {"schedule": {"timezone": "Mars/Olympus"}}}, "IANA time zone"),
        ({"scaling": {"schedule": {"start": "18:00", "end": "09:00"}}}, "not before end"),
        ({"scaling": {"schedule": {"start": "9:00"}}}, "HH:MM"),
        ({"scaling": {"schedule": {"days": ["mon", "mon"]}}}, "each day once"),
        ({"scaling": {"schedule": {"warm_replicas": 9}}}, "warm_replicas is above max_replicas"),
    ],
)
def test_bad_scaling_configuration_names_the_fix(changes, hint):
    from core.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        _config(**changes)
    assert any(hint in e and "fix:" in e for e in exc.value.errors), exc.value.errors
