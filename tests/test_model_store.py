"""Model store and sync infrastructure: buckets, CSI volumes, the event pipeline, least privilege."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from core import names
from modules import comfyui
from modules.model_sync import MAX_RECEIVE_COUNT, node_sync_commands, ssm_document_content
from modules.s3_volumes import s3_volume, volume_manifests
from tests.helpers import go_duration_seconds
from tests.k8s import k8s_version, resolve_tokens, validate_strict


def _model_sync(synth, rtype: str) -> dict:
    """The one `rtype` resource of the model-sync construct (the job API has its own)."""
    (found,) = [r for k, r in synth.resources("platform", rtype).items() if k.startswith("model_sync_")]
    return found


def _one(synth, cycle, rtype, **match):
    found = [r for r in synth.resources(cycle, rtype).values() if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (rtype, match, len(found))
    return found[0]


def _doc(synth, cycle, ref: str) -> dict:
    key = ref.split(".")[2]
    return synth.stack(cycle)["data"]["aws_iam_policy_document"][key]


def test_buckets_named_from_project_account_region(synth):
    names_ = {b["bucket"] for b in synth.resources("platform", "aws_s3_bucket").values()}
    c = synth.config
    assert {c.models_bucket, c.inputs_bucket, c.outputs_bucket, c.access_logs_bucket} == names_
    assert all(n.endswith(f"-{c.account_id}-{c.region}") for n in names_)


def test_models_versioned_outputs_expire(synth):
    models = next(
        k for k, b in synth.resources("platform", "aws_s3_bucket").items() if b["bucket"] == synth.config.models_bucket
    )
    versioning = [
        v
        for v in synth.resources("platform", "aws_s3_bucket_versioning").values()
        if v["bucket"] == f"${{aws_s3_bucket.{models}.id}}"
    ]
    assert versioning and versioning[0]["versioning_configuration"]["status"] == "Enabled"
    outputs = next(
        k for k, b in synth.resources("platform", "aws_s3_bucket").items() if b["bucket"] == synth.config.outputs_bucket
    )
    lifecycle = next(
        v
        for v in synth.resources("platform", "aws_s3_bucket_lifecycle_configuration").values()
        if v["bucket"] == f"${{aws_s3_bucket.{outputs}.id}}"
    )
    expire = [r for r in lifecycle["rule"] if r["id"] == "expire-objects"]
    assert expire[0]["expiration"] == [{"days": synth.config.buckets.outputs_expiration_days}]


def test_notifications_only_for_model_prefixes(synth):
    notification = next(iter(synth.resources("platform", "aws_s3_bucket_notification").values()))
    prefixes = sorted(q["filter_prefix"] for q in notification["queue"])
    assert prefixes == sorted(synth.config.model_sync.prefixes)
    for q in notification["queue"]:
        assert q["events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]


def test_queue_batching_dlq_and_encryption(synth):
    queues = synth.resources("platform", "aws_sqs_queue")
    main = next(q for q in queues.values() if q["name"] == f"{synth.config.project}-model-sync")
    dlq = next(q for q in queues.values() if q["name"].endswith("-dlq"))
    redrive = json.loads(main["redrive_policy"])
    assert redrive["maxReceiveCount"] == MAX_RECEIVE_COUNT and redrive["deadLetterTargetArn"].startswith(
        "${aws_sqs_queue."
    )
    for q in (main, dlq):
        assert q["kms_master_key_id"].startswith("${aws_kms_key.")
    mapping = _model_sync(synth, "aws_lambda_event_source_mapping")
    assert mapping["maximum_batching_window_in_seconds"] == synth.config.model_sync.batching_window_seconds
    assert mapping["batch_size"] >= 50, "a burst of 50 uploads must fit one batch"
    assert mapping["scaling_config"]["maximum_concurrency"] == 2


def test_lambda_environment_uses_shared_names(synth):
    fn = _model_sync(synth, "aws_lambda_function")
    env = fn["environment"]["variables"]
    assert env[names.ENV_CLUSTER_NAME] == synth.config.cluster_name
    assert env[names.ENV_NODE_CLUSTER_TAG_KEY] == names.NODE_CLUSTER_TAG_KEY
    assert env[names.ENV_NODE_ROLE_TAG_KEY] == names.NODE_ROLE_TAG_KEY
    assert env[names.ENV_MODEL_PREFIXES].split(",") == list(synth.config.model_sync.prefixes)
    assert fn["runtime"] == "python3.12" and fn["handler"] == "handler.handler"
    assert fn["filename"].startswith("assets/") and fn["kms_key_arn"].startswith("${aws_kms_key.")


def test_lambda_package_contains_the_handler(synth):
    import zipfile

    fn = _model_sync(synth, "aws_lambda_function")
    path = synth.paths[synth.config.stack_name("platform")].parent / fn["filename"]
    with zipfile.ZipFile(path) as z:
        assert {"handler.py", "logic.py"} <= set(z.namelist())
        assert not [n for n in z.namelist() if "__pycache__" in n]


def test_ssm_document_runs_no_key_and_no_parameter():
    doc = json.loads(ssm_document_content())
    assert "parameters" not in doc
    commands = doc["mainSteps"][0]["inputs"]["runCommand"]
    assert commands == node_sync_commands()
    assert f"touch {shlex.quote(names.SYNC_REQUEST_FLAG)}" in commands
    assert any(names.SYNC_SERVICE_NAME in c and "--no-block" in c for c in commands)
    assert not any("s3://" in c or "{{" in c for c in commands)


def test_lambda_least_privilege(synth):
    role_policy = _model_sync(synth, "aws_iam_role_policy")
    doc = _doc(synth, "platform", role_policy["policy"])
    by_sid = {s["sid"]: s for s in doc["statement"]}
    actions = sorted(a for s in doc["statement"] for a in s["actions"])
    assert actions == sorted(
        [
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "kms:Decrypt",  # the environment, through Lambda
            "kms:Decrypt",  # the queue's messages, through SQS
            "ec2:DescribeInstances",
            "ssm:SendCommand",
            "ssm:SendCommand",
        ]
    )
    c = synth.config
    assert by_sid["SendSyncDocument"]["resources"] == [
        f"arn:aws:ssm:{c.region}:{c.account_id}:document/{c.project}-model-sync"
    ]
    instances = by_sid["SendToThisClustersNodes"]
    assert instances["resources"] == [f"arn:aws:ec2:{c.region}:{c.account_id}:instance/*"]
    assert instances["condition"] == [
        {
            "test": "StringEquals",
            "variable": f"ssm:resourceTag/{names.NODE_CLUSTER_TAG_KEY}",
            "values": [c.cluster_name],
        }
    ]
    assert by_sid["FindGpuNodes"]["resources"] == ["*"]  # DescribeInstances supports no resource ARNs


def test_queue_accepts_only_the_models_bucket(synth):
    policy = _model_sync(synth, "aws_sqs_queue_policy")
    doc = _doc(synth, "platform", policy["policy"])
    allow = next(s for s in doc["statement"] if s["effect"] == "Allow")
    conditions = {c["variable"]: c["values"] for c in allow["condition"]}
    assert conditions["aws:SourceArn"][0].startswith("${aws_s3_bucket.")
    assert conditions["aws:SourceAccount"] == [synth.config.account_id]


def test_node_and_csi_access_is_scoped(synth):
    docs = synth.stack("platform")["data"]["aws_iam_policy_document"]
    read = next(d for k, d in docs.items() if k.startswith("models_read_document"))
    assert sorted(a for s in read["statement"] for a in s["actions"]) == [
        "kms:Decrypt",
        "s3:GetObject",
        "s3:ListBucket",
    ]
    csi = next(d for k, d in docs.items() if k.startswith("s3_csi_driver_document"))
    assert "s3:*" not in [a for s in csi["statement"] for a in s["actions"]]
    assocs = {
        (a["namespace"], a["service_account"])
        for a in synth.resources("platform", "aws_eks_pod_identity_association").values()
    }
    assert ("kube-system", "s3-csi-driver-sa") in assocs


def test_csi_volumes_valid_and_mounted_for_comfyui(synth):
    c = synth.config
    manifests = volume_manifests(inputs_bucket=c.inputs_bucket, outputs_bucket=c.outputs_bucket, region=c.region)
    handles = set()
    for m in manifests:
        validate_strict(m, k8s_version(c))
        if m["kind"] == "PersistentVolume":
            opts = m["spec"]["mountOptions"]
            assert (
                f"region {c.region}" in opts
                and f"uid={names.COMFYUI_UID}" in opts
                and f"gid={names.COMFYUI_GID}" in opts
            )
            assert "allow-delete" in opts
            # Both are written: a read-only mount would make every upload fail (EROFS).
            assert "read-only" not in opts and m["spec"]["accessModes"] == ["ReadWriteMany"]
            # inputs may be replaced (ComfyUI's upload overwrite=true); outputs never are
            assert ("allow-overwrite" in opts) is (m["metadata"]["name"].endswith("-inputs"))
            handles.add(m["spec"]["csi"]["volumeHandle"])
    assert len(handles) == 2, "volume handles must be unique"
    # and those very objects are what the workload stack applies (the bucket names as references
    # to the platform stack's buckets)
    applied = [resolve_tokens(r["manifest"]) for r in synth.resources("workload", "kubernetes_manifest").values()]
    for m in resolve_tokens(volume_manifests(inputs_bucket="${x}", outputs_bucket="${y}", region=c.region)):
        assert m in applied


@pytest.mark.parametrize(
    ("read_only", "allow_overwrite", "expected", "absent", "mode"),
    [
        (True, False, {"read-only"}, {"allow-delete", "allow-overwrite"}, "ReadOnlyMany"),
        (False, False, {"allow-delete"}, {"read-only", "allow-overwrite"}, "ReadWriteMany"),
        (False, True, {"allow-delete", "allow-overwrite"}, {"read-only"}, "ReadWriteMany"),
    ],
)
def test_mount_options_follow_the_volume_access(read_only, allow_overwrite, expected, absent, mode):
    pv, pvc = s3_volume(name="v", bucket="b", region="us-west-2", read_only=read_only, allow_overwrite=allow_overwrite)
    opts = set(pv["spec"]["mountOptions"])
    assert expected <= opts and not (absent & opts), opts
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == [mode]


def test_volume_and_namespace_deletion_outlasts_comfyui_pods(synth):
    """On destroy the PVCs and the namespace exist until ComfyUI's pods have stopped (up to
    their grace period); the provider's default 10-minute wait would fail the destroy."""
    manifests = synth.resources("workload", "kubernetes_manifest")
    waiting = {
        k: m
        for k, m in manifests.items()
        if m["manifest"]["kind"] in {"Namespace", "PersistentVolumeClaim", "PersistentVolume"}
    }
    assert {m["manifest"]["kind"] for m in waiting.values()} == {
        "Namespace",
        "PersistentVolumeClaim",
        "PersistentVolume",
    }
    for key, m in waiting.items():
        assert go_duration_seconds(m["timeouts"]["delete"]) > comfyui.TERMINATION_GRACE_SECONDS, key


def test_csi_chart_tolerates_gpu_taint(synth):
    release = next(
        r for r in synth.resources("workload", "helm_release").values() if r["name"] == "aws-mountpoint-s3-csi-driver"
    )
    values = yaml.safe_load(release["values"][0])
    assert values["node"]["tolerateAllTaints"] is True
    assert values["node"]["serviceAccount"]["name"] == "s3-csi-driver-sa"
    assert release["version"] == "2.2.2"


def test_bad_volume_manifest_fails_validation(synth):
    import kubernetes_validate

    m = volume_manifests(inputs_bucket="a-bucket", outputs_bucket="b-bucket", region="us-west-2")[0]
    m["spec"]["mountOptionz"] = m["spec"].pop("mountOptions")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(m, k8s_version(synth.config))


def test_no_prefixes_means_every_change_notifies(synth_variants):
    """prefixes: [] caches the whole bucket on the nodes, so every change must notify too."""
    synth = synth_variants["public-unauthenticated"]
    assert synth.config.model_sync.prefixes == ()
    notification = next(iter(synth.resources("platform", "aws_s3_bucket_notification").values()))
    assert len(notification["queue"]) == 1
    assert "filter_prefix" not in notification["queue"][0]
    fn = _model_sync(synth, "aws_lambda_function")
    assert fn["environment"]["variables"][names.ENV_MODEL_PREFIXES] == ""
