"""The model-sync Lambda: pure logic, and the handler against moto (called as a function).

Moto behaviours these tests rely on (measured with moto 5.2.5):
- `ssm.send_command` with tag `Targets` resolves them through EC2 filters (tags ANDed) into
  `InstanceIds`; it ignores the instance state (a stopped instance with the tags is a target)
  and does not check that the document exists. `get_command_invocation` raises
  InvocationDoesNotExist for an instance that was not targeted.
- S3 -> SQS notifications are delivered by `mock_aws`: an `s3:TestEvent` message when the
  configuration is put, then one message per object event, keys URL-encoded with
  `quote_plus` ('/' as %2F; real S3 keeps '/').
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import types
import uuid
from urllib.parse import quote, quote_plus

import boto3
import botocore.endpoint
import botocore.retries.bucket
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import names, rules
from lambda_src.model_sync import handler, logic
from tests.helpers import REPO, lambda_event_from_sqs, mock_aws_keeping_session, use_shared_boto3_session

REGION = "us-west-2"
CLUSTER = "comfy-a"
OTHER_CLUSTER = "comfy-b"
DOCUMENT = "comfy-a-model-sync"
PREFIXES = "checkpoints/,loras/"
MODELS_BUCKET = "models"
LAMBDA_DIR = REPO / "lambda_src" / "model_sync"


# --- fixtures & builders ---------------------------------------------------------------


def lambda_env(**overrides: str) -> dict[str, str]:
    env = {
        names.ENV_CLUSTER_NAME: CLUSTER,
        names.ENV_MODELS_BUCKET: MODELS_BUCKET,
        names.ENV_SSM_DOCUMENT: DOCUMENT,
        names.ENV_MODEL_PREFIXES: PREFIXES,
        names.ENV_NODE_CLUSTER_TAG_KEY: names.NODE_CLUSTER_TAG_KEY,
        names.ENV_NODE_ROLE_TAG_KEY: names.NODE_ROLE_TAG_KEY,
        names.ENV_NODE_ROLE_VALUE: names.NODE_ROLE_GPU,
    }
    env.update(overrides)
    return env


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Fake credentials, no endpoint override, the Lambda's variables; fresh clients of the
    shared boto3 session (tests/helpers.py), which moto keeps. Config and credential files
    point at nothing, so the runner's ~/.aws never leaks in."""
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    for key, value in lambda_env().items():
        monkeypatch.setenv(key, value)
    use_shared_boto3_session(monkeypatch)
    handler.reset_clients()
    yield
    handler.reset_clients()


@pytest.fixture
def aws(env):
    with mock_aws_keeping_session():
        yield


def run_node(cluster: str | None = CLUSTER, role: str | None = names.NODE_ROLE_GPU) -> str:
    ec2 = boto3.client("ec2", region_name=REGION)
    tags = []
    if cluster is not None:
        tags.append({"Key": names.NODE_CLUSTER_TAG_KEY, "Value": cluster})
    if role is not None:
        tags.append({"Key": names.NODE_ROLE_TAG_KEY, "Value": role})
    kwargs = {}
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
    # A fixed AMI id: moto does not check it, and describe_images costs seconds per call.
    out = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g6e.xlarge", **kwargs)
    return out["Instances"][0]["InstanceId"]


def s3_record(key: str, event: str = "ObjectCreated:Put", *, encode: bool = True, bucket: str = MODELS_BUCKET) -> dict:
    """One S3 notification record as S3 writes it (key URL-encoded, '+' for spaces)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/") if encode else key, "size": 1},
        },
    }


def sqs_record(body: str, message_id: str | None = None) -> dict:
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "rh",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "0",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:models",
        "awsRegion": REGION,
    }


def sqs_event(*bodies: str) -> dict:
    return {"Records": [sqs_record(b) for b in bodies]}


def body(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


def list_commands() -> list[dict]:
    return boto3.client("ssm", region_name=REGION).list_commands()["Commands"]


def cfg() -> logic.Config:
    return logic.Config.from_env(lambda_env())


def expected_targets(cluster: str = CLUSTER) -> list[dict]:
    return [
        {"Key": f"tag:{names.NODE_CLUSTER_TAG_KEY}", "Values": [cluster]},
        {"Key": f"tag:{names.NODE_ROLE_TAG_KEY}", "Values": [names.NODE_ROLE_GPU]},
    ]


def record_send_command(calls: list[dict]) -> None:
    """Record the parameters of every SendCommand the handler's client makes."""

    def recorder(params, **_):
        calls.append(dict(params))

    handler.client("ssm").meta.events.register("provide-client-params.ssm.SendCommand", recorder)


# --- AWS faked at the HTTP layer ------------------------------------------------------
#
# Used where no AWS call may happen at all, and for throttling/failures. moto executes an
# operation inside botocore's `before-send` event and every handler of that event runs, so
# a throttle simulated beside moto would still create the command. These tests therefore
# answer `before-send` themselves (botocore's public event API): each attempt of an
# operation gets the next scripted response, and botocore's real retry machinery (adaptive
# mode) decides what to do with it.


class _Body:
    def __init__(self, data: bytes):
        self._data = data

    def stream(self, **_):
        yield self._data

    def read(self):
        return self._data


DESCRIBE_ONE_NODE = (
    200,
    b'<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    b"<requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId>"
    b"<instancesSet><item><instanceId>i-0123456789abcdef0</instanceId></item></instancesSet>"
    b"</item></reservationSet></DescribeInstancesResponse>",
)
SEND_OK = (200, json.dumps({"Command": {"CommandId": "cmd-fake-1"}}).encode())


def json_error(code: str, status: int = 400) -> tuple[int, bytes]:
    return status, json.dumps({"__type": code, "message": "simulated"}).encode()


def ec2_error(code: str, status: int = 403) -> tuple[int, bytes]:
    return status, (
        f"<Response><Errors><Error><Code>{code}</Code><Message>simulated</Message>"
        "</Error></Errors><RequestID>r</RequestID></Response>"
    ).encode()


class FakeAws:
    """Scripted HTTP responses per operation; the last one repeats. Records every attempt."""

    def __init__(self, scripts: dict[str, list[tuple[int, bytes]]]):
        self.scripts = scripts
        self.attempts: dict[str, int] = {}

    def __call__(self, request, event_name, **_):
        operation = event_name.rsplit(".", 1)[-1]
        n = self.attempts.get(operation, 0)
        self.attempts[operation] = n + 1
        script = self.scripts[operation]
        status, payload = script[min(n, len(script) - 1)]
        content_type = "text/xml" if payload.startswith(b"<") else "application/x-amz-json-1.1"
        return AWSResponse(request.url, status, {"x-amzn-RequestId": "r", "Content-Type": content_type}, _Body(payload))


@pytest.fixture
def fake_aws(env, monkeypatch):
    """Install a FakeAws on the handler's (real, adaptive) clients; no moto, no network:
    the endpoint is a closed local port that the fake always answers for."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")

    def install(**scripts):
        fake = FakeAws(scripts)
        handler.client("ec2").meta.events.register("before-send.ec2", fake)
        handler.client("ssm").meta.events.register("before-send.ssm", fake)
        return fake

    return install


# --- the Lambda package stands alone --------------------------------------------------


def test_env_names_equal_core_names():
    assert logic.ENV_CLUSTER_NAME == names.ENV_CLUSTER_NAME
    assert logic.ENV_MODELS_BUCKET == names.ENV_MODELS_BUCKET
    assert logic.ENV_SSM_DOCUMENT == names.ENV_SSM_DOCUMENT
    assert logic.ENV_MODEL_PREFIXES == names.ENV_MODEL_PREFIXES
    assert logic.ENV_NODE_CLUSTER_TAG_KEY == names.ENV_NODE_CLUSTER_TAG_KEY
    assert logic.ENV_NODE_ROLE_TAG_KEY == names.ENV_NODE_ROLE_TAG_KEY
    assert logic.ENV_NODE_ROLE_VALUE == names.ENV_NODE_ROLE_VALUE
    env_names = {v for k, v in vars(names).items() if k.startswith("ENV_")}
    assert env_names == {v for k, v in vars(logic).items() if k.startswith("ENV_")}


def test_model_prefix_rule_equals_the_configurations():
    """The Lambda's copy of the model-prefix rule is core.rules.MODEL_PREFIX, flags included
    (tests/test_rules.py holds the node script to the same rule)."""
    assert logic.MODEL_PREFIX.pattern == rules.MODEL_PREFIX.pattern
    assert logic.MODEL_PREFIX.flags == rules.MODEL_PREFIX.flags


def test_config_reads_the_core_env_names():
    c = logic.Config.from_env(lambda_env(**{names.ENV_MODEL_PREFIXES: "checkpoints/,loras/"}))
    assert c == logic.Config(
        cluster_name=CLUSTER,
        models_bucket=MODELS_BUCKET,
        document_name=DOCUMENT,
        model_prefixes=("checkpoints/", "loras/"),
        cluster_tag_key=names.NODE_CLUSTER_TAG_KEY,
        role_tag_key=names.NODE_ROLE_TAG_KEY,
        role_value=names.NODE_ROLE_GPU,
    )


@pytest.mark.parametrize("missing", logic.REQUIRED_ENV)
def test_missing_env_fails_loudly(missing):
    env = lambda_env()
    del env[missing]
    with pytest.raises(logic.ConfigError, match=missing):
        logic.Config.from_env(env)
    with pytest.raises(logic.ConfigError):
        logic.Config.from_env(lambda_env(**{missing: "  "}))


def test_the_models_bucket_is_required():
    assert names.ENV_MODELS_BUCKET in logic.REQUIRED_ENV
    env = lambda_env()
    del env[names.ENV_MODELS_BUCKET]
    with pytest.raises(logic.ConfigError, match=names.ENV_MODELS_BUCKET):
        logic.Config.from_env(env)


def test_model_prefixes_are_optional():
    env = lambda_env()
    del env[names.ENV_MODEL_PREFIXES]
    assert logic.Config.from_env(env).model_prefixes == ()


@pytest.mark.parametrize("path", sorted(LAMBDA_DIR.glob("*.py")), ids=lambda p: p.name)
def test_runtime_code_does_not_import_core(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "json",
        "logging",
        "os",
        "re",
        "typing",
        "urllib",
        "collections",
        "dataclasses",
        "boto3",
        "botocore",
        "logic",
    }, imported


@pytest.mark.parametrize("layout", ["flat", "package"])
def test_imports_alone_without_clients(tmp_path, layout):
    """Packaged alone (flat zip root or as a package), with the repository not importable;
    importing creates no AWS client (no region/credentials needed at import)."""
    root = tmp_path / "zip"
    target = root if layout == "flat" else root / "model_sync"
    target.mkdir(parents=True)
    for src in LAMBDA_DIR.glob("*.py"):
        (target / src.name).write_text(src.read_text())
    module = "handler" if layout == "flat" else "model_sync.handler"
    code = (
        "import sys, importlib; sys.path.insert(0, sys.argv[1]);"
        f"m = importlib.import_module({module!r});"
        "assert callable(m.handler); assert m._CLIENTS == {};"
        "assert not any(k == 'core' or k.startswith(('core.', 'lambda_src')) for k in sys.modules), sorted(sys.modules)"
    )
    clean_env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, cwd=tmp_path, env=clean_env)


# --- pure logic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("checkpoints/,loras/", ("checkpoints/", "loras/")),
        (" checkpoints/,loras/\n", ("checkpoints/", "loras/")),
        ("a/,a/", ("a/",)),
        ("", ()),
        ("  ", ()),
        (None, ()),
    ],
)
def test_parse_prefixes(raw, expected):
    assert logic.parse_prefixes(raw) == expected


@pytest.mark.parametrize(
    "raw", [" checkpoints/ , loras ,", "/vae", "a/,a/,a", "loras", " , ", "checkpoints/,", "../etc/", "a/b/", "é/"]
)
def test_prefixes_not_in_the_canonical_form_fail_loudly(raw):
    """Terraform writes the configuration's prefixes as they are (core.rules.MODEL_PREFIX):
    anything else is a deployment bug, never normalised into a guess."""
    with pytest.raises(logic.ConfigError, match=names.ENV_MODEL_PREFIXES):
        logic.parse_prefixes(raw)
    with pytest.raises(logic.ConfigError):
        logic.Config.from_env(lambda_env(**{names.ENV_MODEL_PREFIXES: raw}))


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("checkpoints/sd+xl.safetensors", "checkpoints/sd xl.safetensors"),
        ("checkpoints%2Fa+b%2Bc%25.safetensors", "checkpoints/a b+c%.safetensors"),
        ("loras/%C3%A9t%C3%A9.bin", "loras/été.bin"),
        ("loras/%ZZ", "loras/%ZZ"),  # invalid escapes stay as they are
    ],
)
def test_decode_key(raw, decoded):
    assert logic.decode_key(raw) == decoded


P = ("checkpoints/", "loras/")


@pytest.mark.parametrize(
    ("event", "key", "prefixes", "relevant"),
    [
        ("ObjectCreated:Put", "checkpoints/sd.safetensors", P, True),
        ("ObjectCreated:CompleteMultipartUpload", "loras/a/b.bin", P, True),
        ("ObjectCreated:Copy", "loras/x", P, True),
        ("ObjectRemoved:Delete", "checkpoints/old.ckpt", P, True),
        ("ObjectRemoved:DeleteMarkerCreated", "checkpoints/old.ckpt", P, True),
        ("s3:ObjectCreated:Put", "checkpoints/x", P, True),
        ("ObjectCreated:Put", "notes/readme.txt", P, False),
        ("ObjectCreated:Put", "build/x.tar", P, False),
        ("ObjectCreated:Put", "checkpointsX/a", P, False),
        ("ObjectCreated:Put", "loras", P, False),
        ("ObjectCreated:Put", "/checkpoints/a", P, False),
        ("ObjectRestore:Completed", "checkpoints/a", P, False),
        ("ObjectTagging:Put", "checkpoints/a", P, False),
        ("LifecycleExpiration:Delete", "checkpoints/a", P, False),
        ("ObjectCreated:Put", "notes/readme.txt", (), True),
        ("ObjectRemoved:Delete", "anything", (), True),
    ],
)
def test_is_relevant(event, key, prefixes, relevant):
    change = logic.S3Change(event_name=event.removeprefix("s3:"), bucket="b", key=key)
    assert logic.is_relevant(change, prefixes) is relevant


def test_split_by_bucket():
    changes = [
        logic.S3Change("ObjectCreated:Put", b, f"checkpoints/{i}")
        for i, b in enumerate(["models", "other", "models", "Models", "models-old", ""])
    ]
    mine, others = logic.split_by_bucket(changes, "models")
    assert [c.key for c in mine] == ["checkpoints/0", "checkpoints/2"]
    assert [c.bucket for c in others] == ["other", "Models", "models-old", ""]
    assert logic.bucket_names(others) == ["", "Models", "models-old", "other"]
    assert logic.bucket_names(others, limit=2) == ["", "Models"]


def test_parse_event_reads_sqs_s3_and_test_events():
    event = sqs_event(
        body(s3_record("checkpoints/sd xl.safetensors"), s3_record("notes/readme.txt")),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "models"}),
        body(s3_record("loras/a.bin", "ObjectRemoved:Delete")),
    )
    event["Records"].append(s3_record("checkpoints/direct"))  # direct S3 invocation record
    parsed = logic.parse_event(event)
    assert parsed.records == 4
    assert parsed.test_events == 1
    assert parsed.skipped == []
    assert [(c.event_name, c.key) for c in parsed.changes] == [
        ("ObjectCreated:Put", "checkpoints/sd xl.safetensors"),
        ("ObjectCreated:Put", "notes/readme.txt"),
        ("ObjectRemoved:Delete", "loras/a.bin"),
        ("ObjectCreated:Put", "checkpoints/direct"),
    ]
    assert [c.key for c in logic.relevant_changes(parsed.changes, P)] == [
        "checkpoints/sd xl.safetensors",
        "loras/a.bin",
        "checkpoints/direct",
    ]


MALFORMED_EVENTS = {
    "none": None,
    "list": [1, 2],
    "no-records": {"foo": 1},
    "records-not-list": {"Records": "x"},
    "record-not-object": {"Records": [42]},
    "neither-sqs-nor-s3": {"Records": [{"eventSource": "aws:sns"}]},
    "body-not-string": {"Records": [sqs_record(None)]},
    "body-not-json": sqs_event("{not json"),
    "body-empty": sqs_event(""),
    "body-json-list": sqs_event("[1]"),
    "body-no-records": sqs_event('{"Message": "hi"}'),
    "body-records-not-list": sqs_event('{"Records": {}}'),
    "s3-record-not-object": sqs_event('{"Records": ["x"]}'),
    "s3-record-no-s3": sqs_event(body({"eventName": "ObjectCreated:Put"})),
    "s3-record-no-object": sqs_event(body({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}})),
    "key-not-string": sqs_event(
        body({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": 7}}})
    ),
    "event-name-not-string": sqs_event(body({"eventName": None, "s3": {}})),
    "deep-nesting": sqs_event("[" * 100_000 + "]" * 100_000),
    "direct-s3-broken": {"Records": [{"s3": {"object": {}}}]},
}


@pytest.mark.parametrize("event", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
def test_parse_event_skips_malformed_input(event):
    parsed = logic.parse_event(event)
    assert parsed.changes == []
    assert parsed.skipped, "a malformed input must be reported"
    assert all(isinstance(reason, str) and len(reason) < 1000 for reason in parsed.skipped)


def test_one_bad_message_does_not_hide_good_ones():
    event = sqs_event("garbage", body(s3_record("checkpoints/a"), "bad-record"), body(s3_record("loras/b")))
    parsed = logic.parse_event(event)
    assert [c.key for c in parsed.changes] == ["checkpoints/a", "loras/b"]
    assert len(parsed.skipped) == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
s3ish_records = st.fixed_dictionaries(
    {
        "eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete", "x"]) | json_values,
        "s3": st.fixed_dictionaries(
            {
                "bucket": st.fixed_dictionaries({"name": st.text() | json_values}),
                "object": st.fixed_dictionaries({"key": st.text() | json_values}),
            }
        )
        | json_values,
    },
)
bodies = st.one_of(
    st.text(),
    json_values.map(json.dumps),
    st.lists(s3ish_records | json_values, max_size=4).map(lambda rs: json.dumps({"Records": rs})),
    json_values,
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.one_of(
        json_values,
        st.lists(bodies, max_size=5).map(lambda bs: {"Records": [sqs_record(b) for b in bs]}),
    )
)
def test_parse_event_never_raises(events):
    parsed = logic.parse_event(events)
    for change in parsed.changes:
        assert isinstance(change.key, str)
        json.loads(change.log_line())


def test_send_command_carries_no_key_and_no_parameters():
    kwargs = logic.send_command_kwargs(cfg(), 3)
    assert kwargs == {
        "DocumentName": DOCUMENT,
        "Targets": expected_targets(),
        "MaxConcurrency": "100%",
        "MaxErrors": "100%",
        "Comment": "model-sync: converge cache (3 S3 change(s))",
    }
    assert "Parameters" not in kwargs and "InstanceIds" not in kwargs
    assert logic.running_node_filters(cfg()) == [
        {"Name": f"tag:{names.NODE_CLUSTER_TAG_KEY}", "Values": [CLUSTER]},
        {"Name": f"tag:{names.NODE_ROLE_TAG_KEY}", "Values": [names.NODE_ROLE_GPU]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]


def test_key_log_lines_are_bounded():
    changes = [logic.S3Change("ObjectCreated:Put", "b", f"checkpoints/{i}") for i in range(150)]
    lines = logic.key_log_lines(changes)
    assert len(lines) == logic.MAX_LOGGED_KEYS + 1
    assert json.loads(lines[-1]) == {"more_changes_not_logged": 50}


# --- handler against moto -------------------------------------------------------------


def test_handler_targets_only_this_clusters_gpu_nodes(aws):
    mine = {run_node(), run_node()}
    other_cluster = run_node(cluster=OTHER_CLUSTER)
    system_node = run_node(role="system")
    untagged = run_node(cluster=None, role=None)

    out = handler.handler(sqs_event(body(s3_record("checkpoints/sd.safetensors"))), None)

    assert out["relevant"] == 1 and out["nodes"] == 2 and out["command_id"]
    [command] = list_commands()
    assert command["CommandId"] == out["command_id"]
    assert command["DocumentName"] == DOCUMENT
    assert command["Targets"] == expected_targets()
    assert command["Parameters"] == {}
    # moto resolves the tag targets like SSM does when the command runs:
    assert set(command["InstanceIds"]) == mine
    ssm = boto3.client("ssm", region_name=REGION)
    for node in mine:
        ssm.get_command_invocation(CommandId=out["command_id"], InstanceId=node)
    for node in (other_cluster, system_node, untagged):
        with pytest.raises(ClientError, match="InvocationDoesNotExist"):
            ssm.get_command_invocation(CommandId=out["command_id"], InstanceId=node)


def test_a_node_that_joins_later_is_targeted_by_tag(aws):
    """Targets are tags, not instance ids: the next command reaches a new node."""
    first = run_node()
    handler.handler(sqs_event(body(s3_record("loras/a"))), None)
    second = run_node()
    handler.handler(sqs_event(body(s3_record("loras/b"))), None)
    commands = sorted(list_commands(), key=lambda c: c["RequestedDateTime"])
    assert [set(c["InstanceIds"]) for c in commands] == [{first}, {first, second}]
    assert all(c["Targets"] == expected_targets() for c in commands)


@pytest.mark.parametrize("fleet", ["empty", "other-cluster-only", "system-only", "stopped-only"])
def test_no_running_gpu_node_no_command(aws, fleet, caplog):
    if fleet == "other-cluster-only":
        run_node(cluster=OTHER_CLUSTER)
    elif fleet == "system-only":
        run_node(role="system")
    elif fleet == "stopped-only":
        node = run_node()
        boto3.client("ec2", region_name=REGION).stop_instances(InstanceIds=[node])
    caplog.set_level(logging.INFO)
    out = handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert out == {
        "records": 1,
        "changes": 1,
        "other_bucket": 0,
        "relevant": 1,
        "skipped": 0,
        "nodes": 0,
        "command_id": None,
    }
    assert list_commands() == []
    assert "no running GPU node" in caplog.text


def test_irrelevant_changes_send_nothing(fake_aws):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[SEND_OK])
    event = sqs_event(
        body(s3_record("notes/readme.txt"), s3_record("build/x.tar", "ObjectRemoved:Delete")),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}),
        body(s3_record("checkpoints/a", "ObjectRestore:Completed")),
    )
    out = handler.handler(event, None)
    assert out["relevant"] == 0 and out["command_id"] is None and out["nodes"] is None
    assert fake.attempts == {}


def test_empty_prefixes_make_every_key_count(aws, monkeypatch):
    monkeypatch.setenv(names.ENV_MODEL_PREFIXES, "")
    run_node()
    out = handler.handler(sqs_event(body(s3_record("notes/readme.txt"))), None)
    assert out["relevant"] == 1 and out["command_id"]


@pytest.mark.parametrize("event", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
def test_handler_survives_malformed_events(fake_aws, event, caplog):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[SEND_OK])
    out = handler.handler(event, None)
    assert out["relevant"] == 0 and out["command_id"] is None
    assert out["skipped"] >= 1
    assert fake.attempts == {}  # no AWS call at all
    assert "skipped malformed input" in caplog.text


def test_malformed_messages_beside_a_good_one_still_sync(aws):
    run_node()
    event = sqs_event("garbage", "[]", body({"eventName": 1}), body(s3_record("checkpoints/ok")))
    out = handler.handler(event, None)
    assert out["skipped"] == 3 and out["relevant"] == 1 and out["command_id"]
    assert len(list_commands()) == 1


def test_many_messages_one_command(aws):
    run_node()
    keys = [f"checkpoints/m{i}.safetensors" for i in range(30)] + [f"loras/l{i}" for i in range(30)]
    event = sqs_event(*(body(s3_record(k)) for k in keys))
    out = handler.handler(event, None)
    assert out["relevant"] == 60
    assert len(list_commands()) == 1


def test_missing_config_raises(fake_aws, monkeypatch):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[SEND_OK])
    monkeypatch.delenv(names.ENV_SSM_DOCUMENT)
    with pytest.raises(logic.ConfigError):
        handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert fake.attempts == {}


HOSTILE = [
    "checkpoints/$(reboot).safetensors",
    "checkpoints/`id`;rm -rf /",
    "checkpoints/../../../etc/passwd",
    "checkpoints/-rf --delete",
    "checkpoints/a b\nc\r\"d'e|f&g>h",
    "checkpoints/\u202eexe.txt",
    "checkpoints/%2F..%2F",
    "loras/+plus+",
    "checkpoints/{{ssm:param}}",
]


def _assert_safe(calls, caplog, relevant):
    """At most one command, whose every argument is the key-independent constant; every
    log line a single line (keys are JSON-escaped)."""
    assert len(calls) == (1 if relevant else 0)
    if calls:
        assert calls[0] == logic.send_command_kwargs(cfg(), relevant)
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message


def test_hostile_keys_only_reach_the_log(aws, caplog):
    run_node()
    calls: list[dict] = []
    record_send_command(calls)
    caplog.set_level(logging.INFO)
    out = handler.handler(sqs_event(*(body(s3_record(k)) for k in HOSTILE)), None)
    assert out["relevant"] == len(HOSTILE)
    _assert_safe(calls, caplog, len(HOSTILE))
    logged = [
        json.loads(r.getMessage().removeprefix("model change: "))["key"]
        for r in caplog.records
        if r.getMessage().startswith("model change: ")
    ]
    assert logged == HOSTILE


def test_hostile_keys_property(env, caplog):
    """Arbitrary unicode keys, encoded the ways S3/moto encode them or not at all."""
    caplog.set_level(logging.INFO)
    encoders = st.sampled_from(
        [
            lambda k: quote_plus(k, safe="/"),  # real S3
            lambda k: quote_plus(k),  # moto: '/' as %2F
            lambda k: quote(k),
            lambda k: k,  # not encoded at all
        ]
    )
    with mock_aws_keeping_session():
        run_node()
        calls: list[dict] = []
        record_send_command(calls)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(
            keys=st.lists(
                st.tuples(st.sampled_from(["", "checkpoints/", "loras/", "notes/", "-", "../"]), st.text()),
                min_size=1,
                max_size=6,
            ),
            encode=encoders,
            events=st.lists(
                st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete", "ObjectTagging:Put"]),
                min_size=6,
                max_size=6,
            ),
        )
        def check(keys, encode, events):
            calls.clear()
            caplog.clear()
            full = [p + k for p, k in keys]
            records = [s3_record(encode(k), e, encode=False) for k, e in zip(full, events, strict=False)]
            out = handler.handler(sqs_event(*(body(r) for r in records)), None)
            decoded = [logic.decode_key(r["s3"]["object"]["key"]) for r in records]
            relevant = sum(
                1 for k, e in zip(decoded, events, strict=False) if e != "ObjectTagging:Put" and k.startswith(P)
            )
            assert out["relevant"] == relevant
            _assert_safe(calls, caplog, relevant)

        check()


# --- a real burst: moto S3 -> SQS -> handler ------------------------------------------


def receive_all(sqs, queue_url: str) -> list[dict]:
    messages = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
            "Messages", []
        )
        if not batch:
            return messages
        messages.extend(batch)


def models_bucket_with_queue(bucket: str) -> tuple[str, str]:
    s3 = boto3.client("s3", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    return queue_url, queue_arn


def test_records_of_other_buckets_are_ignored_and_counted(aws, monkeypatch, caplog):
    """A notification configured by hand on another bucket, into the models bucket's queue:
    its records never trigger a command (real notifications from moto S3 -> SQS)."""
    run_node()
    monkeypatch.setenv(names.ENV_MODELS_BUCKET, "models-mine")
    queue_url, queue_arn = models_bucket_with_queue("models-mine")
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="someone-elses", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_notification_configuration(
        Bucket="someone-elses",
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    for key in ("checkpoints/evil.safetensors", "loras/x.bin"):
        s3.put_object(Bucket="someone-elses", Key=key, Body=b"x")
    s3.delete_object(Bucket="someone-elses", Key="loras/x.bin")
    caplog.set_level(logging.INFO)

    messages = receive_all(boto3.client("sqs", region_name=REGION), queue_url)
    out = handler.handler(lambda_event_from_sqs(messages, queue_arn, region=REGION), None)
    assert out["changes"] == 3 and out["other_bucket"] == 3
    assert out["relevant"] == 0 and out["command_id"] is None and out["nodes"] is None
    assert list_commands() == []
    assert 'ignored 3 change(s) of buckets other than "models-mine": ["someone-elses"]' in caplog.text

    # The same batch with one change of the models bucket: one command, counted apart.
    s3.put_object(Bucket="someone-elses", Key="checkpoints/evil2.safetensors", Body=b"x")
    s3.put_object(Bucket="models-mine", Key="checkpoints/real.safetensors", Body=b"x")
    messages = receive_all(boto3.client("sqs", region_name=REGION), queue_url)
    out = handler.handler(lambda_event_from_sqs(messages, queue_arn, region=REGION), None)
    assert out["other_bucket"] == 1 and out["relevant"] == 1 and out["command_id"]
    assert len(list_commands()) == 1


def test_other_buckets_never_reach_aws_and_log_safely(fake_aws, caplog):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[SEND_OK])
    caplog.set_level(logging.INFO)
    hostile = ["models\nFAKE LOG LINE", "models ", "", "x" * 500] + [f"b{i}" for i in range(20)]
    out = handler.handler(sqs_event(*(body(s3_record("checkpoints/a", bucket=b)) for b in hostile)), None)
    assert out["other_bucket"] == len(hostile) and out["relevant"] == 0 and out["command_id"] is None
    assert fake.attempts == {}
    for record in caplog.records:
        assert "\n" not in record.getMessage()
    [line] = [r.getMessage() for r in caplog.records if "other than" in r.getMessage()]
    assert len(json.loads(line.split(": ", 1)[1])) == 10, "at most 10 bucket names are logged"


def test_real_burst_of_uploads_is_one_command(aws, monkeypatch):
    nodes = {run_node(), run_node(), run_node()}
    run_node(cluster=OTHER_CLUSTER)
    monkeypatch.setenv(names.ENV_MODELS_BUCKET, "models-burst")
    queue_url, queue_arn = models_bucket_with_queue("models-burst")
    s3 = boto3.client("s3", region_name=REGION)
    keys = [f"checkpoints/model {i:02d}+v1.safetensors" for i in range(40)] + [f"loras/l{i}.bin" for i in range(10)]
    for key in keys:
        s3.put_object(Bucket="models-burst", Key=key, Body=key.encode())
    s3.put_object(Bucket="models-burst", Key="notes/readme.txt", Body=b"not a model")
    s3.delete_object(Bucket="models-burst", Key="loras/l0.bin")

    messages = receive_all(boto3.client("sqs", region_name=REGION), queue_url)
    bodies = [json.loads(m["Body"]) for m in messages]
    assert sum(b.get("Event") == "s3:TestEvent" for b in bodies) == 1  # moto sends one on configuration
    assert len(messages) == 1 + 50 + 1 + 1

    out = handler.handler(lambda_event_from_sqs(messages, queue_arn, region=REGION), None)
    assert out["records"] == 53 and out["changes"] == 52 and out["skipped"] == 0
    assert out["relevant"] == 51  # 50 puts + 1 delete; notes/ ignored
    [command] = list_commands()
    assert command["CommandId"] == out["command_id"]
    assert set(command["InstanceIds"]) == nodes
    assert command["Parameters"] == {}


# --- retries, throttling, failures ----------------------------------------------------


@pytest.fixture
def no_backoff_sleep(monkeypatch):
    """Record botocore's retry backoff and adaptive rate-limit waits instead of sleeping."""
    waits: dict[str, list[float]] = {"backoff": [], "rate_limit": []}
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=waits["backoff"].append))
    original = botocore.retries.bucket.TokenBucket._sleep_amount

    def no_wait(self, amount):
        wanted = original(self, amount)
        if wanted > 0:
            waits["rate_limit"].append(wanted)
        return 0

    monkeypatch.setattr(botocore.retries.bucket.TokenBucket, "_sleep_amount", no_wait)
    return waits


def test_clients_are_lazy_and_adaptive(env):
    handler.reset_clients()
    assert handler._CLIENTS == {}
    ssm = handler.client("ssm")
    assert handler.client("ssm") is ssm  # cached
    # botocore stores max_attempts (retries after the first call) as total attempts = 1 + 10
    assert ssm.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert handler.client("ec2").meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert set(handler._CLIENTS) == {"ssm", "ec2"}


def test_fake_aws_happy_path(fake_aws, no_backoff_sleep):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[SEND_OK])
    out = handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert out["nodes"] == 1 and out["command_id"] == "cmd-fake-1"
    assert fake.attempts == {"DescribeInstances": 1, "SendCommand": 1}
    assert no_backoff_sleep == {"backoff": [], "rate_limit": []}


def test_throttled_send_command_is_retried(fake_aws, no_backoff_sleep):
    throttled = json_error("ThrottlingException")
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[throttled] * 4 + [SEND_OK])
    out = handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert out["command_id"] == "cmd-fake-1"
    assert fake.attempts["SendCommand"] == 5  # 4 throttled, then the one command
    assert len(no_backoff_sleep["backoff"]) == 4  # exponential backoff between attempts
    assert no_backoff_sleep["rate_limit"], "adaptive mode slows the client down after throttling"


def test_throttled_describe_instances_is_retried(fake_aws, no_backoff_sleep):
    fake = fake_aws(
        DescribeInstances=[ec2_error("RequestLimitExceeded", 503)] * 2 + [DESCRIBE_ONE_NODE], SendCommand=[SEND_OK]
    )
    out = handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert out["command_id"] == "cmd-fake-1"
    assert fake.attempts == {"DescribeInstances": 3, "SendCommand": 1}


def test_throttling_that_never_ends_raises_for_redelivery(fake_aws, no_backoff_sleep):
    fake = fake_aws(DescribeInstances=[DESCRIBE_ONE_NODE], SendCommand=[json_error("ThrottlingException")])
    with pytest.raises(ClientError, match="ThrottlingException"):
        handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert fake.attempts["SendCommand"] == 11  # max_attempts=10 retries, then SQS redelivers


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ("SendCommand", json_error("AccessDeniedException")),
        ("SendCommand", json_error("InvalidDocument")),
        ("SendCommand", json_error("InvalidTarget")),
        ("DescribeInstances", ec2_error("UnauthorizedOperation")),
    ],
)
def test_non_retryable_failure_raises_at_once(fake_aws, no_backoff_sleep, operation, error):
    scripts = {"DescribeInstances": [DESCRIBE_ONE_NODE], "SendCommand": [SEND_OK]}
    scripts[operation] = [error]
    fake = fake_aws(**scripts)
    with pytest.raises(ClientError):
        handler.handler(sqs_event(body(s3_record("checkpoints/a"))), None)
    assert fake.attempts[operation] == 1
    assert no_backoff_sleep["backoff"] == []
