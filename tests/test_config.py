"""Configuration: validation errors name the key and the fix; bad input writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from core.config import DEFAULT_CONFIG, Config, ConfigError, load_config, parse_config
from tests.helpers import REPO


def base() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def errors_for(**changes) -> list[str]:
    data = base()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.errors


def test_default_config_is_valid_and_frozen():
    config = load_config()
    assert isinstance(config, Config)
    with pytest.raises(Exception):
        config.project = "other"  # type: ignore[misc]
    with pytest.raises(Exception):
        config.network.az_count = 5  # type: ignore[misc]


def test_derived_names():
    config = load_config()
    assert config.models_bucket == "comfyui-models-111122223333-us-west-2"
    assert config.state_bucket == "comfyui-tfstate-111122223333-us-west-2"
    assert config.stack_name("platform") == "comfyui-platform"
    data = base()
    data["buckets"] = {"models": "my-own-models"}
    assert parse_config(data).models_bucket == "my-own-models"


def test_longest_derived_bucket_name_is_s3_safe():
    data = base()
    data["project"] = "a" * 20
    data["region"] = "ap-southeast-4"
    config = parse_config(data)
    for name in (config.models_bucket, config.outputs_bucket, config.access_logs_bucket, config.state_bucket):
        assert len(name) <= 63, name


@pytest.mark.parametrize(
    ("changes", "key", "hint"),
    [
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"network__bogus": 1}, "network.bogus", "unknown key"),
        ({"network__vpc_cidr": "10.0.0.1/16"}, "network.vpc_cidr", "network address"),
        ({"network__vpc_cidr": "not-a-cidr"}, "network.vpc_cidr", "fix:"),
        ({"network__vpc_cidr": "8.8.0.0/16"}, "network.vpc_cidr", "private"),
        ({"network__az_count": "3"}, "network.az_count", "fix:"),
        ({"network__nat_mode": "some"}, "network.nat_mode", "fix:"),
        ({"region": "us-west"}, "region", "region code"),
        ({"region": "US-WEST-2"}, "region", "region code"),
        ({"account_id": 111122223333}, "account_id", "fix:"),
        ({"account_id": "1234"}, "account_id", "12 digits"),
        ({"gpu__instance_types": ["m5.large"]}, "gpu.instance_types", "not a GPU instance type"),
        ({"gpu__instance_types": ["g5g.xlarge"]}, "gpu.instance_types", "not a GPU instance type"),
        ({"gpu__instance_types": []}, "gpu.instance_types", "at least one"),
        ({"gpu__capacity_types": ["spot", "reserved"]}, "gpu.capacity_types", "fix:"),
        ({"gpu__max_gpus": 0}, "gpu.max_gpus", "fix:"),
        ({"buckets__models": "Bad_Bucket"}, "buckets.models", "S3-safe"),
        ({"buckets__outputs": "a..b"}, "buckets.outputs", "S3-safe"),
        ({"project": "Comfy UI"}, "project", "project name"),
        ({"project": "x" * 30}, "project", "project name"),
        ({"kubernetes_version": 1.34}, "kubernetes_version", "fix:"),
        ({"kubernetes_version": "1.28"}, "kubernetes_version", "native sidecars need 1.29"),
        ({"kubernetes_version": "1.35"}, "kubernetes_version", "Karpenter 1.8 supports up to 1.34"),
        ({"project": "aws-comfy"}, "project", "prefix AWS reserves"),
        ({"project": "sthree-comfy"}, "project", "prefix AWS reserves"),
        ({"model_sync__prefixes": ["loras/", "vae/", "loras/"]}, "model_sync.prefixes", "loras/ listed more than once"),
        ({"system_nodes__min_size": 5}, "system_nodes", "min_size <= desired_size"),
        ({"model_sync__prefixes": ["../etc/"]}, "model_sync.prefixes", "folder prefix"),
        ({"model_sync__prefixes": ["checkpoints"]}, "model_sync.prefixes", "end with '/'"),
        ({"auth__mode": "none"}, "auth", "acknowledge_public_unauthenticated"),
        ({"auth__mode": "cognito"}, "auth", "domain and certificate_arn"),
        ({"auth__internal_api_endpoint": True}, "auth", "remove internal_api_endpoint, or use mode: cognito"),
        ({"comfyui__image_tag": "latest"}, "comfyui.image_tag", "pinned"),
        ({"tags": {"aws:owner": "x"}}, "tags", "reserved"),
        ({"cluster_access__viewer_role_arns": ["arn:aws:sts::111122223333:assumed-role/ci/session"]},
         "cluster_access.viewer_role_arns", "not an IAM role ARN"),
        ({"cluster_access__admin_role_arns": ["arn:aws:iam::111122223333:role/a", "arn:aws:iam::111122223333:role/a"]},
         "cluster_access.admin_role_arns", "listed twice"),
        ({"cluster_access": {"viewer_role_arns": ["arn:aws:iam::111122223333:role/a"],
                             "admin_role_arns": ["arn:aws:iam::111122223333:role/a"]}},
         "cluster_access", "both viewer and admin"),
        ({"tags": {"comfyui.io/cluster": "other"}}, "tags", "set by this product or its controllers"),
        ({"tags": {"karpenter.sh/nodepool": "x"}}, "tags", "set by this product or its controllers"),
        ({"tags": {"kubernetes.io/cluster/x": "owned"}}, "tags", "set by this product or its controllers"),
        ({"tags": {"team": ""}}, "tags", "empty or too long value"),
        ({"tags": {"team": "${var.x}"}}, "tags", "characters AWS does not allow"),
        ({"tags": {"team": "art\nmore"}}, "tags", "characters AWS does not allow"),
        ({"edge__cloudfront": True}, "edge", "certificate_arn"),
    ],
)
def test_bad_input_names_key_and_fix(changes, key, hint):
    errors = errors_for(**changes)
    matching = [e for e in errors if e.startswith(f"{key}:") or e.startswith(f"{key}.")]
    assert matching, errors
    assert any(hint in e for e in matching), matching
    assert all("fix:" in e for e in errors), errors


COGNITO = {"mode": "cognito", "domain": "a.example.com",
           "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1"}


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        # An ALB takes certificates only from its own region and account, CloudFront only from us-east-1.
        ({"auth": {**COGNITO, "certificate_arn": "arn:aws:acm:eu-west-1:111122223333:certificate/abc-1"}},
         "auth.certificate_arn is in region 'eu-west-1'"),
        ({"auth": {**COGNITO, "certificate_arn": "arn:aws:acm:us-west-2:999999999999:certificate/abc-1"}},
         "auth.certificate_arn is in region 'us-west-2', account '999999999999'"),
        ({"auth": COGNITO, "edge": {"cloudfront": True,
                                    "certificate_arn": "arn:aws:acm:us-east-1:999999999999:certificate/abc-2"}},
         "edge.certificate_arn is in region 'us-east-1', account '999999999999'"),
        ({"auth": COGNITO, "project": "my-cognito"}, "Cognito refuses in its domain prefix"),
        ({"buckets": {"inputs": "shared-bucket-1", "outputs": "shared-bucket-1"}},
         "buckets.outputs and buckets.inputs are both 'shared-bucket-1'"),
        ({"buckets": {"models": "comfyui-tfstate-111122223333-us-west-2"}}, "the state bucket and buckets.models"),
        ({"cluster_access": {"viewer_role_arns": ["arn:aws-cn:iam::111122223333:role/ci"]}}, "not in partition 'aws'"),
    ],
)
def test_cross_key_errors_name_the_keys_and_fix(changes, hint):
    data = base()
    data.update(changes)
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any(hint in e and "fix:" in e for e in exc.value.errors), exc.value.errors


def test_several_cross_key_errors_one_line_each():
    data = base()
    data.update(project="my-cognito", auth={**COGNITO, "certificate_arn": "arn:aws:acm:eu-west-1:111122223333:certificate/a"},
                buckets={"inputs": "shared-bucket-1", "outputs": "shared-bucket-1"})
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert len(exc.value.errors) == 3 and all("\n" not in e and "fix:" in e for e in exc.value.errors)


def test_all_errors_reported_at_once():
    errors = errors_for(region="nowhere", bogus=True, network__vpc_cidr="x")
    assert len(errors) == 3


def test_unacknowledged_public_endpoint_is_rejected_but_acknowledged_one_warns():
    from stacks.app import warnings_for

    data = base()
    data["auth"] = {"mode": "none", "acknowledge_public_unauthenticated": True}
    config = parse_config(data)
    assert config.unauthenticated_public
    assert any("WITHOUT authentication" in w for w in warnings_for(config))
    assert warnings_for(load_config()) == []


def _run_main(tmp_path, *args, env_extra=None):
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", **(env_extra or {})}
    env.pop("CDKTF_OUTDIR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--outdir", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.mark.parametrize("via", ["flag", "env"])
def test_main_rejects_bad_config_with_exit_2_and_writes_nothing(tmp_path, via):
    bad = base()
    bad["network"]["vpc_cidr"] = "10.0.0.1/16"
    bad["gpu"]["instance_types"] = ["t3.large"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    if via == "flag":
        result = _run_main(tmp_path, "--config", str(path))
    else:
        result = _run_main(tmp_path, env_extra={"COMFYUI_EKS_CONFIG": str(path)})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 2, result.stderr
    assert any("network.vpc_cidr" in line for line in lines)
    assert any("gpu.instance_types" in line and "t3.large" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_main_rejects_unreadable_and_non_mapping_files(tmp_path):
    result = _run_main(tmp_path, "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    result = _run_main(tmp_path, "--config", str(tmp_path / "list.yaml"))
    assert result.returncode == 2 and "mapping" in result.stderr
    (tmp_path / "broken.yaml").write_text("project: [unclosed\n")
    result = _run_main(tmp_path, "--config", str(tmp_path / "broken.yaml"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert not (tmp_path / "out").exists()
