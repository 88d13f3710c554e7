"""Configuration: validation errors name the key and the fix; bad input writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from core.config import DEFAULT_CONFIG, Config, ConfigError, load_config, parse_config
from tests.helpers import REPO, default_config_data


def base() -> dict:
    return default_config_data()


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
    with pytest.raises(ValidationError, match="frozen"):
        config.project = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
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
        (
            {"cluster_access__viewer_role_arns": ["arn:aws:sts::111122223333:assumed-role/ci/session"]},
            "cluster_access.viewer_role_arns",
            "not an IAM role ARN",
        ),
        (
            {
                "cluster_access__admin_role_arns": [
                    "arn:aws:iam::111122223333:role/a",
                    "arn:aws:iam::111122223333:role/a",
                ]
            },
            "cluster_access.admin_role_arns",
            "listed twice",
        ),
        (
            {
                "cluster_access": {
                    "viewer_role_arns": ["arn:aws:iam::111122223333:role/a"],
                    "admin_role_arns": ["arn:aws:iam::111122223333:role/a"],
                }
            },
            "cluster_access",
            "both viewer and admin",
        ),
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
    matching = [e for e in errors if e.startswith((f"{key}:", f"{key}."))]
    assert matching, errors
    assert any(hint in e for e in matching), matching
    assert all("fix:" in e for e in errors), errors


COGNITO = {
    "mode": "cognito",
    "domain": "a.example.com",
    "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
}


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        # An ALB takes certificates only from its own region and account, CloudFront only from us-east-1.
        (
            {"auth": {**COGNITO, "certificate_arn": "arn:aws:acm:eu-west-1:111122223333:certificate/abc-1"}},
            "auth.certificate_arn is in region 'eu-west-1'",
        ),
        (
            {"auth": {**COGNITO, "certificate_arn": "arn:aws:acm:us-west-2:999999999999:certificate/abc-1"}},
            "auth.certificate_arn is in region 'us-west-2', account '999999999999'",
        ),
        (
            {
                "auth": COGNITO,
                "edge": {"cloudfront": True, "certificate_arn": "arn:aws:acm:us-east-1:999999999999:certificate/abc-2"},
            },
            "edge.certificate_arn is in region 'us-east-1', account '999999999999'",
        ),
        ({"auth": COGNITO, "project": "my-cognito"}, "Cognito refuses in its domain prefix"),
        (
            {"buckets": {"inputs": "shared-bucket-1", "outputs": "shared-bucket-1"}},
            "buckets.outputs and buckets.inputs are both 'shared-bucket-1'",
        ),
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
    data.update(
        project="my-cognito",
        auth={**COGNITO, "certificate_arn": "arn:aws:acm:eu-west-1:111122223333:certificate/a"},
        buckets={"inputs": "shared-bucket-1", "outputs": "shared-bucket-1"},
    )
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


# --- strictness: what used to slip through or crash --------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "hint"),
    [
        # A trailing newline, digits of other scripts: `$`/`\d` would have accepted them.
        ({"account_id": "111122223333\n"}, "account_id", "12 digits"),
        ({"account_id": "١١١١٢٢٢٢٣٣٣٣"}, "account_id", "12 digits"),
        ({"region": "us-west-2\n"}, "region", "region code"),
        ({"region": "us-west-٢"}, "region", "region code"),
        ({"project": "comfyui\n"}, "project", "project name"),
        ({"kubernetes_version": "1.34\n"}, "kubernetes_version", "supported Kubernetes version"),
        ({"gpu__instance_types": ["g6.xlarge\n"]}, "gpu.instance_types", "not a GPU instance type"),
        ({"model_sync__prefixes": ["loras/\n"]}, "model_sync.prefixes", "folder prefix"),
        ({"model_sync__prefixes": ["-rf/"]}, "model_sync.prefixes", "folder prefix"),
        ({"buckets__models": "my-bucket\n"}, "buckets.models", "S3-safe"),
        ({"buckets__models": "my-bucket-s3alias"}, "buckets.models", "S3-safe"),
        ({"comfyui__image_tag": "v1\n"}, "comfyui.image_tag", "pinned image tag"),
        ({"network__internal_alb_cidrs": ["10.0.0.0/16\n"]}, "network.internal_alb_cidrs", "CIDR"),
        # Zero and absurd durations.
        ({"gpu__consolidate_after": "0s"}, "gpu.consolidate_after", "outside"),
        ({"gpu__expire_after": "0h"}, "gpu.expire_after", "outside"),
        ({"gpu__expire_after": ""}, "gpu.expire_after", "not a duration"),
        ({"gpu__model_cache_deadline": "5m"}, "gpu.model_cache_deadline", "outside"),
        ({"gpu__consolidate_after": "10m\n"}, "gpu.consolidate_after", "not a duration"),
        # Open to everyone.
        ({"network__internal_alb_cidrs": ["0.0.0.0/0"]}, "network.internal_alb_cidrs", "everyone"),
        ({"network__api_private_cidrs": ["0.0.0.0/1"]}, "network.api_private_cidrs", "everyone"),
        ({"network__api_public_cidrs": ["0.0.0.0/0"]}, "network", "acknowledge_public_api"),
        ({"network__api_public_cidrs": ["203.0.113.0/24", "203.0.113.0/24"]}, "network.api_public_cidrs", "twice"),
        # More tags than AWS allows on what this product and its controllers tag.
        ({"tags": {f"t{i}": "x" for i in range(36)}}, "tags", "at most 35"),
        # A huge integer where a small one belongs.
        ({"gpu__max_gpus": 10**400}, "gpu.max_gpus", "fix:"),
        ({"gpu__ami_alias": "al2023@latest"}, "gpu.ami_alias", "never @latest"),
    ],
)
def test_strict_values_name_key_and_fix(changes, key, hint):
    test_bad_input_names_key_and_fix(changes, key, hint)


def test_error_lines_echo_a_bounded_excerpt():
    errors = errors_for(region="x" * 10_000, tags={"k" * 5000: "v"}, gpu__instance_types=["g" * 10_000])
    assert errors and all(len(e) < 400 and "\n" not in e for e in errors), [len(e) for e in errors]


def _load(tmp_path, content: bytes):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value.errors


def test_duplicate_keys_are_refused(tmp_path):
    text = DEFAULT_CONFIG.read_text() + "\nauth:\n  mode: none\n"  # the second `auth` would silently win
    (error,) = _load(tmp_path, text.encode())
    assert "duplicate key 'auth'" in error and "line" in error and "fix:" in error
    nested = b"project: a-b-c\naccount_id: '111122223333'\nregion: us-west-2\nauth:\n  mode: internal\n  mode: none\n"
    assert "duplicate key 'mode'" in _load(tmp_path, nested)[0]


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"project: \xff\xfe\n", "not UTF-8"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested"),
        (b"a: " + b"{b: " * 30 + b"1" + b"}" * 30 + b"\n", "nested"),
        (b"gpu:\n  max_gpus: " + b"9" * 5000 + b"\n", "cannot be read"),
        (b"? [a, b]\n: c\n", "fix:"),
        (b"project: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
        (b"&a [*a]\n", "fix:"),
        (b"x" * 1_000_001, "too large"),
    ],
)
def test_hostile_files_are_config_errors(tmp_path, content, hint):
    errors = _load(tmp_path, content)
    assert any(hint in e for e in errors) and all("fix:" in e and len(e) < 400 for e in errors), errors


def test_render_failures_are_config_errors():
    """A configuration that validates but cannot be rendered (here: user-data over EC2's limit
    with 100 long prefixes) is refused as a configuration error, before anything is written."""
    from stacks.app import check_renderable

    data = base()
    data["model_sync"] = {"prefixes": [f"folder_{i:03d}_{'x' * 80}/" for i in range(100)]}
    with pytest.raises(ConfigError) as exc:
        check_renderable(parse_config(data))
    (line,) = exc.value.errors
    assert line.startswith("buckets.models / model_sync.prefixes:") and "fix:" in line


# --- property: random mutations of the default configuration never crash ------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.text(alphabet="0123456789٠١٢३\n\t ./-:@${}", max_size=20),
    st.sampled_from(["0.0.0.0/0", "10.0.0.0/8", "1h", "0s", "al2023@latest", "g6.xlarge", "loras/", "Never", ""]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_never_crash(data):
    from stacks.app import check_renderable

    config = base()
    config["network"]["api_public_cidrs"] = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(config)) + [("new_key",), ("gpu", "new_key")]
        path = data.draw(st.sampled_from(paths))
        node = config
        for part in path[:-1]:
            node = node[part] if isinstance(node.get(part), dict) else node.setdefault(part, {})
        if not isinstance(node, dict):
            continue
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(_VALUES)
        else:
            node.pop(path[-1], None)
    try:
        check_renderable(parse_config(config))
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and "\n" not in e and len(e) < 600 for e in exc.errors), exc.errors


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=3000))
def test_random_bytes_in_the_file_never_crash(tmp_path_factory, noise, position):
    text = DEFAULT_CONFIG.read_bytes()
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(text[:position] + noise + text[position:])
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.errors and all("\n" not in e for e in exc.errors)


def test_default_yaml_documents_every_option():
    """config/default.yaml lists every option the model accepts, with the model's own default
    (the required ones aside): a field added to core/config.py without documentation fails."""
    from pydantic import BaseModel

    def fields(model: type[BaseModel]) -> dict:
        out = {}
        import typing

        for name, info in model.model_fields.items():
            candidates = [info.annotation, *typing.get_args(info.annotation)]  # X, or X | None
            nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
            out[name] = fields(nested[0]) if nested else None
        return out

    def keys(node) -> dict:
        return {k: keys(v) if isinstance(v, dict) and k != "tags" else None for k, v in node.items()}

    documented = default_config_data()
    assert keys(documented) == fields(Config)
    config = load_config()
    defaults = Config.model_validate(
        {"project": config.project, "account_id": config.account_id, "region": config.region}
    )
    assert config.model_dump(exclude={"tags"}) == defaults.model_dump(exclude={"tags"}), (
        "default.yaml must show the defaults"
    )
    text = DEFAULT_CONFIG.read_text()
    for name in fields(Config):
        line = next(i for i, line in enumerate(text.splitlines()) if line.startswith(f"{name}:"))
        above = text.splitlines()[line - 1]
        assert above.startswith("#") or above == "" or name in {"region"}, f"{name} needs a comment"
