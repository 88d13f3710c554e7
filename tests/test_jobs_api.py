"""The job API Lambdas (lambda_src/jobs): api.handler, dead_letters.handler, webhooks.handler,
called as plain functions with realistic API Gateway v2 / SQS / DynamoDB Streams events and
Lambda contexts, against moto in-process (Lambda `invoke` would need Docker).

Moto behaviours relied on (moto 5.2.5): TransactWriteItems cancels atomically and reports
CancellationReasons per item; ConsistentRead and GSI queries with ExclusiveStartKey work;
HeadObject of a missing key is a 404 ClientError; presigned URLs are computed locally.

One mocked account serves the whole module (moto calls cost ~10 ms each on a small machine);
tests that count or list jobs use a fresh table or fresh job ids of their own.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from lambda_src.jobs import api, aws, contract, dead_letters, listing, signature, store, validation, views, webhooks
from tests.helpers import REPO, create_jobs_table, new_job_item

REGION = "us-west-2"
ACCOUNT = "123456789012"
TABLE = "comfy-jobs"
INPUTS = f"comfy-inputs-{ACCOUNT}-{REGION}"
OUTPUTS = f"comfy-outputs-{ACCOUNT}-{REGION}"
QUEUE = "comfy-jobs"
SECRET = "9f3c1b7e5a2d4c6e8b0a1f3d5c7e9b2a4d6f8e0c2b4a6d8f"  # 48 characters
RETENTION_DAYS = 30
PIPELINE_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/Pipeline/run-1"
OTHER_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/OtherTeam/run-1"
JOBS_DIR = REPO / "lambda_src" / "jobs"
WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 20, "cfg": 7.5, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}, "_meta": {"title": "Load Image"}},
}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PNG_B64 = base64.b64encode(PNG).decode()
# A marker that must never appear in a log line (it is in the workflow and the image).
MARKER = "never-log-this-7f3a"


# --- the mocked account -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cloud:
    ddb: Any
    s3: Any
    sqs: Any
    queue_url: str
    secret_arn: str


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    none = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(key, raising=False)
        for key, value in {
            "AWS_CONFIG_FILE": none,
            "AWS_SHARED_CREDENTIALS_FILE": none,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }.items():
            patch.setenv(key, value)
        aws.reset_clients()
        with mock_aws():
            ddb = boto3.client("dynamodb", region_name=REGION)
            create_jobs_table(ddb, TABLE)
            s3 = boto3.client("s3", region_name=REGION)
            for bucket in (INPUTS, OUTPUTS):
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
            sqs = boto3.client("sqs", region_name=REGION)
            queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
            secrets = boto3.client("secretsmanager", region_name=REGION)
            secret_arn = secrets.create_secret(Name=f"{QUEUE}-webhook-signing", SecretString=SECRET)["ARN"]
            for key, value in {
                contract.TABLE_ENV: TABLE,
                contract.QUEUE_ENV: queue_url,
                contract.INPUTS_BUCKET_ENV: INPUTS,
                contract.OUTPUTS_BUCKET_ENV: OUTPUTS,
                contract.WEBHOOK_SECRET_ENV: secret_arn,
                contract.RETENTION_DAYS_ENV: str(RETENTION_DAYS),
                contract.MAX_ATTEMPTS_ENV: "3",
                contract.TIMEOUT_SECONDS_ENV: "3600",
            }.items():
                patch.setenv(key, value)
            yield Cloud(ddb, s3, sqs, queue_url, secret_arn)
        aws.reset_clients()


@pytest.fixture
def fresh_table(cloud, monkeypatch):
    """A table of its own (listing tests count every job in it)."""
    name = f"jobs-{uuid.uuid4().hex[:12]}"
    create_jobs_table(cloud.ddb, name)
    monkeypatch.setenv(contract.TABLE_ENV, name)
    return name


def drain(cloud: Cloud) -> list[str]:
    """Every message now in the jobs queue (deleted as read)."""
    bodies: list[str] = []
    while True:
        batch = cloud.sqs.receive_message(QueueUrl=cloud.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return bodies
        for message in batch:
            bodies.append(message["Body"])
            cloud.sqs.delete_message(QueueUrl=cloud.queue_url, ReceiptHandle=message["ReceiptHandle"])


def item_of(cloud: Cloud, job_id: str, table: str = TABLE) -> dict[str, Any] | None:
    raw = cloud.ddb.get_item(TableName=table, Key={contract.JOB_ID: {"S": job_id}}, ConsistentRead=True).get("Item")
    return aws.from_item(raw) if raw else None


def put_job(cloud: Cloud, table: str = TABLE, **values: Any) -> str:
    """A job item in any state, written directly."""
    item = new_job_item(**values)
    cloud.ddb.put_item(TableName=table, Item=aws.to_item(item))
    return item[contract.JOB_ID]


def update(cloud: Cloud, job_id: str, change: dict[str, Any]) -> None:
    cloud.ddb.update_item(TableName=TABLE, Key={contract.JOB_ID: {"S": job_id}}, **change)


# --- Lambda contexts and API Gateway events -------------------------------------------------


class LambdaContext:
    """What the Lambda runtime passes as `context` (the attributes handlers may read)."""

    def __init__(self, remaining_ms: int = 29_000, function_name: str = "comfy-jobs-api") -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.memory_limit_in_mb = 512
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2025/01/31/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def api_event(
    route: str,
    *,
    body: Any = None,
    job_id: str | None = None,
    query: dict[str, str] | None = None,
    user_arn: str | None = PIPELINE_ARN,
    is_base64: bool = False,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event for an IAM-authorized route."""
    method, template = route.split(" ", 1)
    path = template.replace("{id}", job_id or "")
    now = datetime.now(UTC)
    session = (user_arn or "").rsplit("/", 1)[-1]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": {
            "accept": "application/json",
            "content-type": "application/json",
            "host": f"abc123.execute-api.{REGION}.amazonaws.com",
            "user-agent": "pipeline/1.0",
            "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
            "x-amz-security-token": "IQoJb3JpZ2luX2VjE...",
        },
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "authorizer": {
                "iam": {
                    "accessKey": "ASIAEXAMPLEEXAMPLE00",
                    "accountId": ACCOUNT,
                    "callerId": f"AROAEXAMPLEEXAMPLE00:{session}",
                    "cognitoIdentity": None,
                    "principalOrgId": None,
                    "userArn": user_arn,
                    "userId": f"AROAEXAMPLEEXAMPLE00:{session}",
                }
            },
            "domainName": f"abc123.execute-api.{REGION}.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pipeline/1.0",
            },
            "requestId": base64.b64encode(uuid.uuid4().bytes).decode()[:16],
            "routeKey": route,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if user_arn is None:
        del event["requestContext"]["authorizer"]
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    if job_id is not None:
        event["pathParameters"] = {"id": job_id}
    if query:
        event["queryStringParameters"] = query
    return event


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def call(event: dict[str, Any], context: LambdaContext | None = None) -> Response:
    out = api.handler(event, context or LambdaContext())
    assert out["headers"]["Content-Type"] == "application/json"
    assert out["isBase64Encoded"] is False
    body = json.loads(out["body"])
    assert isinstance(body, dict)
    if out["statusCode"] >= 400:
        assert isinstance(body["error"]["message"], str)
        assert "Traceback" not in out["body"]
    return Response(out["statusCode"], body, out["headers"])


def post(doc: Any, **kwargs: Any) -> Response:
    context = kwargs.pop("context", None)
    return call(api_event("POST /jobs", body=doc, **kwargs), context)


def job_doc(**extra: Any) -> dict[str, Any]:
    return {"workflow": WORKFLOW, "inputs": {"cat.png": {"base64": PNG_B64}}, **extra}


# --- packaging ------------------------------------------------------------------------------


def test_handlers_import_alone_flat_without_clients(tmp_path):
    """The zip is lambda_src/jobs/*.py at its root: each handler imports without the repository,
    without credentials or a region, and creates no AWS client at import."""
    for source in JOBS_DIR.glob("*.py"):
        (tmp_path / source.name).write_text(source.read_text())
    code = (
        "import sys, importlib; sys.path.insert(0, sys.argv[1]);"
        "mods = [importlib.import_module(m) for m in ('api', 'dead_letters', 'webhooks')];"
        "assert all(callable(m.handler) for m in mods);"
        "import aws; assert aws._CLIENTS == {};"
        "assert not any(k.startswith(('lambda_src', 'core')) for k in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("path", sorted(JOBS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_runtime_code_imports_only_the_standard_library_and_boto(path: Path):
    local = {p.stem for p in JOBS_DIR.glob("*.py")}
    allowed = set(sys.stdlib_module_names) | {"boto3", "botocore"} | local
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed
    if path.name == "contract.py":  # the runner ships it into the pod alone
        assert imported <= set(sys.stdlib_module_names), imported


# --- POST /jobs -----------------------------------------------------------------------------


def test_create_job(cloud):
    drain(cloud)
    before = contract.now()
    response = post(job_doc(webhook_url="https://hooks.example.com/comfy?token=abc"))
    assert response.status == 201, response.body
    job_id = response.body["job_id"]
    assert contract.JOB_ID_PATTERN.fullmatch(job_id)
    assert response.body == {"job_id": job_id, "status": "queued", "links": {"self": f"/jobs/{job_id}"}}
    item = item_of(cloud, job_id)
    assert item[contract.STATUS] == contract.QUEUED
    assert before <= item[contract.CREATED_AT] <= contract.now()
    assert item[contract.EXPIRES_AT] == item[contract.CREATED_AT] + RETENTION_DAYS * 86400
    assert item[contract.ATTEMPTS] == 0
    assert item[contract.INPUTS] == {"cat.png": contract.input_key(job_id, "cat.png")}
    assert item[contract.WEBHOOK_URL] == "https://hooks.example.com/comfy?token=abc"
    assert item[contract.SUBMITTED_BY] == PIPELINE_ARN
    assert contract.WORKFLOW_KEY_ATTR not in item
    stored = cloud.s3.get_object(Bucket=INPUTS, Key=contract.input_key(job_id, "cat.png"))
    assert stored["Body"].read() == PNG
    assert stored["ContentType"] == "image/png"
    (message,) = drain(cloud)
    assert contract.parse_message(message) == (job_id, WORKFLOW)


def test_create_job_with_an_s3_input_copies_a_snapshot(cloud):
    drain(cloud)
    cloud.s3.put_object(Bucket=INPUTS, Key="uploads/dog.png", Body=PNG)
    response = post({"workflow": WORKFLOW, "inputs": {"dog.png": {"s3_key": "uploads/dog.png"}}})
    assert response.status == 201, response.body
    job_id = response.body["job_id"]
    key = contract.input_key(job_id, "dog.png")
    assert item_of(cloud, job_id)[contract.INPUTS] == {"dog.png": key}
    cloud.s3.put_object(Bucket=INPUTS, Key="uploads/dog.png", Body=b"overwritten later")
    assert cloud.s3.get_object(Bucket=INPUTS, Key=key)["Body"].read() == PNG
    assert len(drain(cloud)) == 1


def test_missing_s3_input_is_refused_and_nothing_is_created(cloud, fresh_table):
    drain(cloud)
    response = post({"workflow": WORKFLOW, "inputs": {"dog.png": {"s3_key": "uploads/nope.png"}}})
    assert response.status == 400
    assert response.body["error"]["field"] == "inputs.dog.png.s3_key"
    assert "uploads/nope.png" in response.body["error"]["message"]
    assert cloud.ddb.scan(TableName=fresh_table)["Count"] == 0
    assert drain(cloud) == []


def test_large_workflow_travels_through_s3(cloud):
    drain(cloud)
    big = dict(WORKFLOW)
    big["99"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * (contract.MAX_INLINE_WORKFLOW_BYTES + 1)}}
    response = post({"workflow": big})
    assert response.status == 201, response.body
    job_id = response.body["job_id"]
    assert item_of(cloud, job_id)[contract.WORKFLOW_KEY_ATTR] == contract.workflow_key(job_id)
    stored = cloud.s3.get_object(Bucket=INPUTS, Key=contract.workflow_key(job_id))["Body"].read()
    assert json.loads(stored) == big
    (message,) = drain(cloud)
    assert contract.parse_message(message) == (job_id, None)
    assert len(message) < 100


def test_a_non_ascii_workflow_is_measured_as_its_message(cloud):
    """40k CJK characters: 120 KB as UTF-8 but 240 KB escaped in the message: through S3."""
    drain(cloud)
    workflow = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "猫" * 40_000}}}
    job_id = post({"workflow": workflow}).body["job_id"]
    stored = cloud.s3.get_object(Bucket=INPUTS, Key=contract.workflow_key(job_id))["Body"].read()
    assert json.loads(stored.decode("utf-8")) == workflow
    assert len(stored) < contract.MAX_INLINE_WORKFLOW_BYTES < len(contract.message_body(job_id, workflow))
    assert contract.parse_message(drain(cloud)[0]) == (job_id, None)


def test_an_s3_input_deleted_before_the_copy_is_400(cloud, monkeypatch):
    monkeypatch.setattr(store, "input_size", lambda *_args: 10)  # HEAD saw it; then it was deleted
    response = post({"workflow": WORKFLOW, "inputs": {"a.png": {"s3_key": "uploads/gone.png"}}})
    assert (response.status, response.body["error"]["field"]) == (400, "inputs.a.png.s3_key")


def test_oversized_body_is_413(cloud):
    body = json.dumps({"workflow": WORKFLOW, "pad": "x" * contract.MAX_REQUEST_BYTES})
    response = post(body)
    assert response.status == 413
    assert response.body["error"]["field"] == "body"
    assert "s3_key" in response.body["error"]["message"]  # the fix
    encoded = base64.b64encode(body.encode()).decode()
    assert post(encoded, is_base64=True).status == 413


def test_base64_encoded_body_is_accepted(cloud):
    drain(cloud)
    encoded = base64.b64encode(json.dumps(job_doc()).encode()).decode()
    assert post(encoded, is_base64=True).status == 201
    assert len(drain(cloud)) == 1


UI_EXPORT = {
    "last_node_id": 9,
    "last_link_id": 9,
    "nodes": [{"id": 3, "type": "KSampler"}],
    "links": [],
    "version": 0.4,
}
BAD_BODIES = {
    "not-json": ("{workflow: 1}", "body", "not valid JSON"),
    "empty": ("", "body", "no body"),
    "array": ("[1, 2]", "body", "JSON object"),
    "string": ('"hello"', "body", "JSON object"),
    "nan": ('{"workflow": {"1": {"class_type": "A", "inputs": {"x": NaN}}}}', "body", "NaN"),
    "lone-surrogate": ('{"workflow": {"1": {"class_type": "A", "inputs": {"t": "\\ud800"}}}}', "workflow", "Unicode"),
    "missing-workflow": ({"inputs": {}}, "workflow", "missing"),
    "comfy-prompt-field": ({"prompt": WORKFLOW}, "prompt", '"workflow"'),
    "unknown-field": ({"workflow": WORKFLOW, "callback": "x"}, "callback", "unknown field"),
    "ui-format": ({"workflow": UI_EXPORT}, "workflow", "Export (API)"),
    "workflow-list": ({"workflow": [1]}, "workflow", "API format"),
    "workflow-empty": ({"workflow": {}}, "workflow", "no nodes"),
    "node-not-object": ({"workflow": {"1": 5}}, "workflow.1", "not an object"),
    "no-class-type": ({"workflow": {"1": {"inputs": {}}}}, "workflow.1.class_type", "class_type"),
    "no-inputs": ({"workflow": {"1": {"class_type": "A"}}}, "workflow.1.inputs", "inputs"),
    "inputs-list": ({"workflow": WORKFLOW, "inputs": ["a.png"]}, "inputs", "object"),
    "input-name-folder": (
        {"workflow": WORKFLOW, "inputs": {"../etc/passwd": {"base64": PNG_B64}}},
        "inputs.../etc/passwd",
        "not allowed",
    ),
    "input-name-hidden": (
        {"workflow": WORKFLOW, "inputs": {".env": {"base64": PNG_B64}}},
        "inputs..env",
        "not allowed",
    ),
    "input-both": (
        {"workflow": WORKFLOW, "inputs": {"a.png": {"base64": PNG_B64, "s3_key": "k"}}},
        "inputs.a.png",
        "exactly one",
    ),
    "bad-base64": (
        {"workflow": WORKFLOW, "inputs": {"a.png": {"base64": "@@not base64@@"}}},
        "inputs.a.png.base64",
        "does not decode",
    ),
    "data-url": (
        {"workflow": WORKFLOW, "inputs": {"a.png": {"base64": "data:image/png;base64,AAAA"}}},
        "inputs.a.png.base64",
        "data: URL",
    ),
    "empty-base64": ({"workflow": WORKFLOW, "inputs": {"a.png": {"base64": ""}}}, "inputs.a.png.base64", "empty"),
    "s3-uri": (
        {"workflow": WORKFLOW, "inputs": {"a.png": {"s3_key": "s3://other/a.png"}}},
        "inputs.a.png.s3_key",
        "URL",
    ),
    "webhook-http": (job_doc(webhook_url="http://hooks.example.com/x"), "webhook_url", "https"),
    "webhook-loopback": (job_doc(webhook_url="https://127.0.0.1/x"), "webhook_url", "private"),
    "webhook-metadata": (job_doc(webhook_url="https://169.254.169.254/latest"), "webhook_url", "link-local"),
    "webhook-private-v6": (job_doc(webhook_url="https://[fd00::1]/x"), "webhook_url", "private"),
    "webhook-mapped-v6": (job_doc(webhook_url="https://[::ffff:10.0.0.1]/x"), "webhook_url", "private"),
    "webhook-credentials": (job_doc(webhook_url="https://user:pw@hooks.example.com/x"), "webhook_url", "credentials"),
    "webhook-localhost": (job_doc(webhook_url="https://localhost/x"), "webhook_url", "fully qualified"),
    "webhook-decimal-ip": (job_doc(webhook_url="https://2130706433/x"), "webhook_url", "fully qualified"),
    "webhook-internal": (job_doc(webhook_url="https://jenkins.corp/x"), "webhook_url", "public DNS"),
    "webhook-long": (job_doc(webhook_url="https://hooks.example.com/" + "a" * 2048), "webhook_url", "2048"),
    "webhook-space": (job_doc(webhook_url="https://hooks.example.com/a b"), "webhook_url", "spaces"),
    "token-spaces": (job_doc(client_token="a b"), "client_token", "printable"),
    "token-long": (job_doc(client_token="t" * 129), "client_token", "128"),
}


@pytest.mark.parametrize(("body", "field", "words"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_bodies_are_400_naming_the_field(cloud, body, field, words):
    response = post(body)
    assert response.status == 400, response.body
    assert response.body["error"]["field"] == field
    assert words in response.body["error"]["message"]


def test_client_token_makes_post_idempotent_per_caller(cloud):
    drain(cloud)
    token = f"build-{uuid.uuid4()}"
    first = post(job_doc(client_token=token))
    assert first.status == 201
    again = post(job_doc(client_token=token))
    assert (again.status, again.body) == (200, first.body)
    # The same role after a credential refresh (a new session name) is the same caller.
    refreshed = post(job_doc(client_token=token), user_arn=PIPELINE_ARN.replace("run-1", "run-1-retry"))
    assert (refreshed.status, refreshed.body["job_id"]) == (200, first.body["job_id"])
    assert len(drain(cloud)) == 1  # one job, one message
    other = post(job_doc(client_token=token), user_arn=OTHER_ARN)
    assert other.status == 201
    assert other.body["job_id"] != first.body["job_id"]
    changed = post({**job_doc(client_token=token), "webhook_url": "https://hooks.example.com/other"})
    assert changed.status == 422
    assert changed.body["error"]["field"] == "client_token"
    assert first.body["job_id"] in changed.body["error"]["message"]
    # A replay reports the job's current status.
    update(cloud, first.body["job_id"], contract.cancel_queued_update(at=contract.now()))
    assert post(job_doc(client_token=token)).body["status"] == "cancelled"


def test_an_expired_client_token_makes_a_new_job(cloud):
    token = f"build-{uuid.uuid4()}"
    first = post(job_doc(client_token=token)).body["job_id"]
    key = contract.client_token_key(api.principal_of(PIPELINE_ARN), token)
    cloud.ddb.update_item(
        TableName=TABLE,
        Key={contract.JOB_ID: {"S": key}},
        UpdateExpression="SET #x = :past",
        ExpressionAttributeNames={"#x": contract.EXPIRES_AT},
        ExpressionAttributeValues={":past": {"N": str(contract.now() - 1)}},
    )
    second = post(job_doc(client_token=token))
    assert second.status == 201
    assert second.body["job_id"] != first
    assert item_of(cloud, key)[contract.TOKEN_JOB_ID] == second.body["job_id"]


def test_a_concurrent_request_with_the_same_token_gets_the_winners_job(cloud, monkeypatch):
    """Both requests pass the first look-up; the transaction lets one win, the other answers
    with the winner's job (and its own S3 uploads stay unreferenced)."""
    token = f"build-{uuid.uuid4()}"
    winner = post(job_doc(client_token=token)).body["job_id"]
    real = store.live_token
    calls = []

    def first_look_finds_nothing(settings, key, now):
        calls.append(key)
        return None if len(calls) == 1 else real(settings, key, now)

    monkeypatch.setattr(store, "live_token", first_look_finds_nothing)
    loser = post(job_doc(client_token=token))
    assert (loser.status, loser.body["job_id"]) == (200, winner)
    assert len(calls) == 2


def test_a_failed_send_fails_the_job_and_frees_the_token(cloud, monkeypatch):
    token = f"build-{uuid.uuid4()}"
    monkeypatch.setenv(contract.QUEUE_ENV, cloud.queue_url.replace(QUEUE, "no-such-queue"))
    response = post(job_doc(client_token=token))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    job_id = response.body["error"]["job_id"]
    item = item_of(cloud, job_id)
    assert item[contract.STATUS] == contract.FAILED
    assert "could not be queued" in item[contract.ERROR]
    assert item[contract.FINISHED_AT]
    monkeypatch.setenv(contract.QUEUE_ENV, cloud.queue_url)
    drain(cloud)
    retried = post(job_doc(client_token=token))
    assert retried.status == 201
    assert retried.body["job_id"] != job_id
    assert len(drain(cloud)) == 1


def test_too_little_time_left_creates_nothing(cloud, fresh_table):
    drain(cloud)
    response = post(job_doc(), context=LambdaContext(remaining_ms=api.CREATE_RESERVE_MS - 1000))
    assert response.status == 503
    assert cloud.ddb.scan(TableName=fresh_table)["Count"] == 0
    assert drain(cloud) == []


# --- GET /jobs/{id} -------------------------------------------------------------------------


def test_get_job_public_view(cloud):
    job_id = post(job_doc(webhook_url="https://hooks.example.com/x?token=secret")).body["job_id"]
    now = contract.now()
    update(cloud, job_id, contract.claim_update(runner="comfyui-7d9f-abcde", at=now))
    update(cloud, job_id, contract.renew_update(runner="comfyui-7d9f-abcde", at=now, prompt_id="p-1"))
    outputs = [f"jobs/{job_id}/ComfyUI_00001_.png", f"jobs/{job_id}/sub/ComfyUI_00002_.png"]
    update(
        cloud,
        job_id,
        contract.finish_update(runner="comfyui-7d9f-abcde", at=now + 2, status="succeeded", outputs=outputs),
    )
    response = call(api_event("GET /jobs/{id}", job_id=job_id))
    assert response.status == 200
    view = response.body
    assert view["job_id"] == job_id
    assert view["status"] == "succeeded"
    assert view["attempts"] == 1
    assert view["error"] is None
    assert view["cancel_requested"] is False
    assert view["inputs"] == ["cat.png"]
    assert view["has_webhook"] is True
    for key in ("created_at", "started_at", "finished_at", "expires_at", "output_urls_expire_at"):
        assert datetime.strptime(view[key], "%Y-%m-%dT%H:%M:%SZ")
    assert view["finished_at"] == datetime.fromtimestamp(now + 2, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [o["key"] for o in view["outputs"]] == outputs
    assert [o["name"] for o in view["outputs"]] == ["ComfyUI_00001_.png", "sub/ComfyUI_00002_.png"]
    url = urlsplit(view["outputs"][0]["url"])
    assert url.scheme == "https"
    assert url.hostname == f"{OUTPUTS}.s3.{REGION}.amazonaws.com"
    assert url.path == "/" + outputs[0]
    assert parse_qs(url.query)["X-Amz-Expires"] == ["3600"]
    assert view["links"] == {"self": f"/jobs/{job_id}"}
    text = json.dumps(view)
    for internal in ("comfyui-7d9f", "lease", "p-1", "token=secret", "assumed-role", "runner", "workflow"):
        assert internal not in text, internal


NOT_IDS = {
    "unknown": uuid.uuid4().hex,
    "upper": uuid.uuid4().hex.upper(),
    "short": "abc",
    "dashed-uuid": str(uuid.uuid4()),
    "traversal": "../../etc",
    "token-item": contract.client_token_key(PIPELINE_ARN, "t"),
    "empty": "",
}


@pytest.mark.parametrize("job_id", NOT_IDS.values(), ids=NOT_IDS.keys())
@pytest.mark.parametrize("route", ["GET /jobs/{id}", "DELETE /jobs/{id}"])
def test_unknown_and_malformed_ids_are_404(cloud, route, job_id):
    response = call(api_event(route, job_id=job_id))
    assert response.status == 404
    assert response.body["error"]["field"] == "id"


# --- DELETE /jobs/{id} ----------------------------------------------------------------------


def test_cancel_a_queued_job(cloud):
    job_id = post(job_doc()).body["job_id"]
    response = call(api_event("DELETE /jobs/{id}", job_id=job_id))
    assert response.status == 200
    assert (response.body["status"], response.body["cancel_requested"]) == ("cancelled", True)
    assert response.body["finished_at"]
    assert item_of(cloud, job_id)[contract.STATUS] == contract.CANCELLED


def test_cancel_a_running_job_requests_it(cloud):
    job_id = put_job(cloud)
    update(cloud, job_id, contract.claim_update(runner="pod-a", at=contract.now()))
    for _ in range(2):  # repeatable
        response = call(api_event("DELETE /jobs/{id}", job_id=job_id))
        assert response.status == 202
        assert (response.body["status"], response.body["cancel_requested"]) == ("running", True)
    assert item_of(cloud, job_id)[contract.CANCEL_REQUESTED] is True


@pytest.mark.parametrize("terminal", contract.TERMINAL)
def test_cancel_a_finished_job_is_409(cloud, terminal):
    job_id = put_job(cloud, status=terminal, finished_at=contract.now())
    response = call(api_event("DELETE /jobs/{id}", job_id=job_id))
    assert response.status == 409
    assert response.body["error"]["status"] == terminal
    assert terminal in response.body["error"]["message"]
    assert item_of(cloud, job_id)[contract.STATUS] == terminal


# --- GET /jobs ------------------------------------------------------------------------------


def _page_through(query: dict[str, str]) -> list[list[str]]:
    pages = []
    while True:
        response = call(api_event("GET /jobs", query=query))
        assert response.status == 200, response.body
        pages.append([job["job_id"] for job in response.body["jobs"]])
        token = response.body["next"]
        if token is None:
            assert response.body["links"]["next"] is None
            return pages
        assert response.body["links"]["next"].startswith("/jobs?")
        query = {**query, "next": token}


def test_listing_pages_through_every_status_newest_first(cloud, fresh_table):
    base = contract.now() - 1000
    spec = [
        ("queued", 9),
        ("running", 8),
        ("succeeded", 8),
        ("failed", 5),
        ("succeeded", 5),
        ("cancelled", 3),
        ("queued", 1),
    ]
    ids = [put_job(cloud, fresh_table, status=status, created_at=base + t) for status, t in spec]
    order = sorted(range(len(ids)), key=lambda i: (-spec[i][1], ids[i]))
    expected = [ids[i] for i in order]
    for limit in ("1", "3", "100"):
        pages = _page_through({"limit": limit})
        flat = [job for page in pages for job in page]
        assert sorted(flat) == sorted(expected), limit  # each job exactly once
        # Newest first; jobs created in the same second may come in either order.
        created = {ids[i]: spec[i][1] for i in range(len(ids))}
        assert [created[j] for j in flat] == sorted((created[j] for j in flat), reverse=True)
        assert all(len(page) <= int(limit) for page in pages)
    summary = call(api_event("GET /jobs", query={"limit": "1"})).body["jobs"][0]
    assert set(summary) == {
        "job_id",
        "status",
        "cancel_requested",
        "created_at",
        "started_at",
        "finished_at",
        "attempts",
        "error",
        "links",
    }


def test_listing_one_status(cloud, fresh_table):
    base = contract.now() - 100
    done = [put_job(cloud, fresh_table, status="succeeded", created_at=base + i) for i in range(5)]
    put_job(cloud, fresh_table, status="queued", created_at=base + 50)
    pages = _page_through({"status": "succeeded", "limit": "2"})
    assert [job for page in pages for job in page] == list(reversed(done))
    assert call(api_event("GET /jobs", query={"status": "failed"})).body == {
        "jobs": [],
        "next": None,
        "links": {"next": None},
    }


BAD_QUERIES = {
    "limit-0": ({"limit": "0"}, "limit"),
    "limit-101": ({"limit": "101"}, "limit"),
    "limit-text": ({"limit": "ten"}, "limit"),
    "limit-negative": ({"limit": "-1"}, "limit"),
    "limit-unicode-digit": ({"limit": "²"}, "limit"),
    "status": ({"status": "done"}, "status"),
    "unknown": ({"sort": "asc"}, "sort"),
    "next-garbage": ({"next": "!!!"}, "next"),
    "next-json-list": ({"next": base64.urlsafe_b64encode(b"[1]").decode()}, "next"),
    "next-forged-id": (
        {"next": listing.encode_token("*", {"queued": {"created_at": 1, "job_id": "X", "status": "queued"}})},
        "next",
    ),
}


@pytest.mark.parametrize(("query", "field"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_listing_bad_parameters_are_400(cloud, query, field):
    response = call(api_event("GET /jobs", query=query))
    assert response.status == 400
    assert response.body["error"]["field"] == field


def test_listing_token_is_bound_to_its_query(cloud, fresh_table):
    for i in range(3):
        put_job(cloud, fresh_table, status="queued", created_at=contract.now() - i)
    token = call(api_event("GET /jobs", query={"limit": "1"})).body["next"]
    assert token
    assert call(api_event("GET /jobs", query={"status": "queued", "next": token})).status == 400
    assert call(api_event("GET /jobs", query={"next": token})).status == 200


def test_merge_takes_each_status_in_its_own_order():
    """Pure: ties in created_at keep each status's order (a k-way merge of sorted streams)."""

    def job(status: str, created: int, tag: str) -> dict[str, Any]:
        return {"job_id": tag * 32, "status": status, "created_at": created}

    pages = {
        "queued": listing.Page([job("queued", 5, "b"), job("queued", 5, "a")], more=True),
        "failed": listing.Page([job("failed", 6, "c")], more=False),
    }
    items, cursors = listing.merge(pages, {"queued": None, "failed": None}, limit=2)
    assert [i["job_id"][0] for i in items] == ["c", "b"]
    assert cursors == {"queued": {"job_id": "b" * 32, "status": "queued", "created_at": 5}}  # failed is exhausted


# --- errors, identity, logging --------------------------------------------------------------


def test_an_unexpected_error_is_500_with_a_logged_request_id(cloud, monkeypatch, caplog):
    def boom(*_args: Any) -> None:
        raise RuntimeError("boom in the store")

    monkeypatch.setattr(store, "get_job", boom)
    context = LambdaContext()
    with caplog.at_level(logging.INFO):
        response = call(api_event("GET /jobs/{id}", job_id=uuid.uuid4().hex), context)
    assert response.status == 500
    assert response.body["error"]["request_id"] == context.aws_request_id
    assert response.headers["X-Request-Id"] == context.aws_request_id
    assert "boom" not in json.dumps(response.body)
    failure = [r.getMessage() for r in caplog.records if "unexpected_error" in r.getMessage()]
    assert len(failure) == 1
    assert context.aws_request_id in failure[0]
    assert "RuntimeError" in failure[0]


def test_throttling_is_503(cloud, monkeypatch):
    def throttled(*_args: Any) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetItem")

    monkeypatch.setattr(store, "get_job", throttled)
    response = call(api_event("GET /jobs/{id}", job_id=uuid.uuid4().hex))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


def test_requests_without_an_iam_identity_are_refused(cloud):
    assert call(api_event("POST /jobs", body=job_doc(), user_arn=None)).status == 403
    assert call(api_event("GET /jobs", user_arn="not-an-arn")).status == 403


def test_an_unknown_route_is_404(cloud):
    assert call(api_event("PUT /jobs/{id}", job_id=uuid.uuid4().hex)).status == 404


def test_principal_of_drops_only_the_session():
    assert api.principal_of(PIPELINE_ARN) == f"arn:aws:sts::{ACCOUNT}:assumed-role/Pipeline"
    assert (
        api.principal_of(f"arn:aws-us-gov:sts::{ACCOUNT}:assumed-role/R/s")
        == f"arn:aws-us-gov:sts::{ACCOUNT}:assumed-role/R"
    )
    user = f"arn:aws:iam::{ACCOUNT}:user/ci"
    assert api.principal_of(user) == user


def test_one_log_line_per_request_and_never_the_payload(cloud, caplog):
    doc = job_doc(webhook_url="https://hooks.example.com/x?token=" + MARKER)
    doc["workflow"] = {**WORKFLOW, "7": {"class_type": "CLIPTextEncode", "inputs": {"text": MARKER}}}
    doc["inputs"] = {"m.png": {"base64": base64.b64encode(MARKER.encode()).decode()}}
    with caplog.at_level(logging.INFO):
        job_id = post(doc).body["job_id"]
        call(api_event("GET /jobs/{id}", job_id=job_id))
        post({"workflow": WORKFLOW, "inputs": {MARKER + "/x": {"base64": PNG_B64}}})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("api")]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("POST /jobs", 201),
        ("GET /jobs/{id}", 200),
        ("POST /jobs", 400),
    ]
    assert lines[0]["job_id"] == lines[1]["job_id"] == job_id
    assert {line["caller"] for line in lines} == {PIPELINE_ARN}
    assert lines[2]["error_field"] == "inputs"
    everything = caplog.text + json.dumps(lines)
    assert MARKER not in everything
    assert base64.b64encode(MARKER.encode()).decode() not in everything


# --- property: no request body makes the API fail ---------------------------------------------

LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
NODES = st.dictionaries(
    st.text(max_size=6),
    st.fixed_dictionaries(
        {
            "class_type": st.text(max_size=10) | JSON,
            "inputs": st.dictionaries(st.text(max_size=6), JSON, max_size=3) | JSON,
        }
    ),
    max_size=3,
)
INPUT_SPECS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "base64": st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
            | st.text(max_size=12)
        }
    ),
    st.fixed_dictionaries({"s3_key": st.text(max_size=20)}),
)
URLS = st.sampled_from(
    [
        "https://hooks.example.com/x",
        "http://a.example.com",
        "https://10.1.2.3/",
        "https://[::1]/",
        "https://a.b:99999/",
        "https://x_y.example.com/",
    ]
)
DOCS = st.fixed_dictionaries(
    {},
    optional={
        "workflow": NODES | JSON,
        "inputs": st.dictionaries(
            st.text(max_size=10) | st.sampled_from(["a.png", "../a", ".a"]), INPUT_SPECS, max_size=3
        )
        | JSON,
        "webhook_url": URLS | st.text(max_size=30) | JSON,
        "client_token": st.text(max_size=10) | JSON,
        "extra": JSON,
    },
)
BODIES = st.one_of(
    DOCS.map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


def test_random_request_bodies_never_fail_the_api(cloud):
    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=BODIES, as_base64=st.booleans())
    def run(body, as_base64):
        raw = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode() if as_base64 else body
        response = post(raw, is_base64=as_base64)  # `call` checks JSON, Content-Type, no traceback
        assert response.status in (200, 201, 400, 413, 422), response.body

    run()
    drain(cloud)


# --- the dead-letter Lambda -----------------------------------------------------------------


def dlq_event(*bodies: str) -> dict[str, Any]:
    now_ms = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms,
                    "SenderId": "AROAEXAMPLEEXAMPLE00:comfy-jobs-api",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE}-dlq",
                "awsRegion": REGION,
            }
            for body in bodies
        ]
    }


def dead_letter(*job_ids: str) -> dict[str, int]:
    event = dlq_event(*(contract.message_body(job_id, None) for job_id in job_ids))
    return dead_letters.handler(event, LambdaContext(function_name="comfy-jobs-dead-letters"))


def test_dead_letter_fails_a_lost_job_once(cloud):
    job_id = put_job(cloud, status=contract.RUNNING, runner="pod-c", lease_until=contract.now() - 5, attempts=3)
    assert dead_letter(job_id) == {"failed": 1}
    item = item_of(cloud, job_id)
    assert item[contract.STATUS] == contract.FAILED
    assert item[contract.ERROR] == "gave up after 3 attempts: the pod or node running it was lost each time"
    assert contract.RUNNER not in item and contract.LEASE_UNTIL not in item
    assert dead_letter(job_id) == {"ended": 1}  # a second delivery changes nothing
    assert item_of(cloud, job_id) == item


def test_dead_letter_of_a_released_or_never_started_job(cloud):
    released = put_job(cloud, attempts=1)
    never = put_job(cloud)
    assert dead_letter(released, never) == {"failed": 2}
    assert (
        item_of(cloud, released)[contract.ERROR]
        == "gave up after 1 attempt: the pod or node running it was lost each time"
    )
    assert item_of(cloud, never)[contract.ERROR].startswith("gave up: no runner could start it")


def test_dead_letter_leaves_a_finished_job_alone(cloud):
    job_id = put_job(cloud, status=contract.SUCCEEDED, finished_at=contract.now() - 60, outputs=["jobs/x/a.png"])
    before = item_of(cloud, job_id)
    assert dead_letter(job_id) == {"ended": 1}
    assert item_of(cloud, job_id) == before


def test_dead_letter_cancels_a_cancel_requested_job(cloud):
    job_id = put_job(
        cloud, status=contract.RUNNING, runner="pod-a", lease_until=contract.now() - 1, cancel_requested=True
    )
    assert dead_letter(job_id) == {"cancelled": 1}
    item = item_of(cloud, job_id)
    assert item[contract.STATUS] == contract.CANCELLED
    assert contract.ERROR not in item


def test_dead_letter_retries_a_job_a_live_runner_holds(cloud):
    held = put_job(cloud, status=contract.RUNNING, runner="pod-a", lease_until=contract.now() + 100, attempts=3)
    lost = put_job(cloud, status=contract.RUNNING, runner="pod-b", lease_until=contract.now() - 100, attempts=3)
    with pytest.raises(dead_letters.JobsStillHeld, match=held):
        dead_letter(held, lost)
    assert item_of(cloud, held)[contract.STATUS] == contract.RUNNING  # untouched
    assert item_of(cloud, lost)[contract.STATUS] == contract.FAILED  # settled anyway
    update(cloud, held, contract.finish_update(runner="pod-a", at=contract.now(), status="succeeded"))
    assert dead_letter(held, lost) == {"ended": 2}  # the retry: nothing more to do


def test_dead_letter_skips_malformed_and_unknown_messages(cloud, caplog):
    event = dlq_event("not json", json.dumps({"job_id": "nope", "workflow": {"secret": MARKER}}))
    with caplog.at_level(logging.INFO):
        assert dead_letters.handler(event, LambdaContext()) == {"malformed": 2}
        assert dead_letter(uuid.uuid4().hex) == {"missing": 1}
    assert MARKER not in caplog.text


# --- webhooks: signatures -------------------------------------------------------------------


def _recipe() -> dict[str, Any]:
    doc = signature.__doc__ or ""
    start = doc.index("\n", doc.index("# --- recipe start ---")) + 1
    code = doc[start : doc.index("# --- recipe end ---")]
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(code), namespace)  # noqa: S102 - the documented recipe, run as receivers would
    return namespace


def test_signature_is_an_hmac_of_timestamp_and_body_and_the_recipe_verifies_it():
    body = b'{"job_id":"x","status":"succeeded"}'
    t = int(time.time())
    header = signature.header_value(SECRET.encode(), body, t)
    expected = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    verify = _recipe()["verify"]
    assert verify(SECRET, body, header) is True
    assert verify(SECRET, body + b" ", header) is False
    assert verify("another-secret", body, header) is False
    assert verify(SECRET, body, signature.header_value(SECRET.encode(), body, t - 301)) is False  # stale
    assert verify(SECRET, body, "v1=" + expected) is False
    assert verify(SECRET, body, "garbage") is False
    assert signature.verify(SECRET.encode(), body, header, now=t)
    assert not signature.verify(SECRET.encode(), body, header, now=t + 301)


# --- webhooks: delivery ---------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: answers the scripted statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any, bytes]] = []
        self.script: list[int] = []
        self.port = 0


def _receiver_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append((self.path, self.headers, body))
            status = receiver.script.pop(0) if receiver.script else 200
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


def _serve(receiver: Receiver, tls: ssl.SSLContext | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _receiver_handler(receiver))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server


@pytest.fixture
def receiver():
    receiver = Receiver()
    server = _serve(receiver)
    yield receiver
    server.shutdown()
    server.server_close()


def to_receiver(receiver: Receiver) -> webhooks.Transport:
    """The test transport: what the handler would send to an https URL goes, in plain http, to
    the local receiver (production code never speaks plain http)."""

    def send(url: str, body: bytes, headers: Any, timeout: float) -> int:
        parts = urlsplit(url)
        assert parts.scheme == "https"
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=timeout)
        try:
            connection.request(
                "POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=dict(headers)
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    return send


def finished(status: str = "succeeded", **values: Any) -> dict[str, Any]:
    now = contract.now()
    job_id = uuid.uuid4().hex
    return {
        contract.JOB_ID: job_id,
        contract.STATUS: status,
        contract.CREATED_AT: now - 60,
        contract.STARTED_AT: now - 50,
        contract.FINISHED_AT: now,
        contract.UPDATED_AT: now,
        contract.EXPIRES_AT: now + 86400,
        contract.ATTEMPTS: 1,
        contract.INPUTS: {"cat.png": contract.input_key(job_id, "cat.png")},
        contract.OUTPUTS: [f"jobs/{job_id}/ComfyUI_00001_.png"] if status == "succeeded" else [],
        contract.WEBHOOK_URL: "https://hooks.example.com/comfy?token=abc",
        **values,
    }


def stream_record(new: dict[str, Any], old: dict[str, Any] | None = None, event_name: str = "MODIFY") -> dict[str, Any]:
    serializer = TypeSerializer()

    def image(values: dict[str, Any]) -> dict[str, Any]:
        return {k: serializer.serialize(v) for k, v in values.items() if v is not None}

    change: dict[str, Any] = {
        "ApproximateCreationDateTime": time.time(),
        "Keys": {contract.JOB_ID: {"S": new[contract.JOB_ID]}},
        "NewImage": image(new),
        "SequenceNumber": str(uuid.uuid4().int)[:21],
        "SizeBytes": 512,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        change["OldImage"] = image(old)
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": change,
        "eventSourceARN": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}/stream/2025-01-31T00:00:00.000",
    }


def transition(job: dict[str, Any]) -> dict[str, Any]:
    """The stream record of `job` entering its (terminal) status from running."""
    return stream_record(job, {**job, contract.STATUS: contract.RUNNING, contract.FINISHED_AT: None})


def send_webhooks(
    records: list[dict[str, Any]],
    transport: webhooks.Transport | None,
    remaining_ms: int = 60_000,
    sleeps: list | None = None,
):
    pauses = sleeps if sleeps is not None else []
    context = LambdaContext(remaining_ms=remaining_ms, function_name="comfy-jobs-webhooks")
    return webhooks.handler({"Records": records}, context, transport=transport, sleep=pauses.append)


@pytest.fixture
def secret_reads(cloud):
    """Counts GetSecretValue calls; the secret cache starts empty."""
    webhooks.reset_secret_cache()
    reads: list[str] = []
    aws.client("secretsmanager").meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **_kw: reads.append("read"), unique_id="count-reads"
    )
    yield reads
    aws.client("secretsmanager").meta.events.unregister(
        "before-call.secrets-manager.GetSecretValue", unique_id="count-reads"
    )
    webhooks.reset_secret_cache()


def test_webhook_posts_the_signed_public_view(cloud, receiver, secret_reads):
    job = finished()
    record = transition(job)
    assert send_webhooks([record], to_receiver(receiver)) == {"delivered": 1, "rejected": 0, "refused": 0, "skipped": 0}
    ((path, headers, body),) = receiver.requests
    assert path == "/comfy?token=abc"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-ComfyUI-EKS-Event"] == "job.succeeded"
    assert headers["X-ComfyUI-EKS-Delivery"] == str(uuid.uuid5(webhooks.DELIVERY_NAMESPACE, record["eventID"]))
    t, v1 = (part.split("=", 1)[1] for part in headers["X-ComfyUI-EKS-Signature"].split(","))
    assert v1 == hmac.new(SECRET.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert abs(int(t) - time.time()) < 5
    assert _recipe()["verify"](SECRET, body, headers["X-ComfyUI-EKS-Signature"])
    view = json.loads(body)
    assert view["job_id"] == job[contract.JOB_ID]
    assert view["status"] == "succeeded"
    assert view["outputs"][0]["key"] == job[contract.OUTPUTS][0]
    assert view["outputs"][0]["url"].startswith(f"https://{OUTPUTS}.s3.{REGION}.amazonaws.com/")
    assert set(view) == set(views.public_view(job, lambda key: key, contract.now()))
    assert "token=abc" not in body.decode()
    # The secret is read once per container.
    send_webhooks([transition(finished("failed", error="boom"))], to_receiver(receiver))
    assert receiver.requests[1][1]["X-ComfyUI-EKS-Event"] == "job.failed"
    assert json.loads(receiver.requests[1][2])["error"] == "boom"
    assert secret_reads == ["read"]


def test_webhook_retries_until_delivered(cloud, receiver, secret_reads):
    receiver.script = [503, 429]
    sleeps: list[float] = []
    result = send_webhooks([transition(finished("cancelled"))], to_receiver(receiver), sleeps=sleeps)
    assert result["delivered"] == 1
    assert len(receiver.requests) == 3
    assert sleeps == list(webhooks.BACKOFF_SECONDS)
    assert sum(sleeps) + webhooks.TRIES * webhooks.TRY_TIMEOUT_SECONDS <= webhooks.BUDGET_SECONDS
    assert len({headers["X-ComfyUI-EKS-Delivery"] for _, headers, _ in receiver.requests}) == 1
    assert all(
        _recipe()["verify"](SECRET, body, headers["X-ComfyUI-EKS-Signature"]) for _, headers, body in receiver.requests
    )


def test_webhook_hands_over_to_the_event_source_after_three_failures(cloud, receiver, secret_reads, caplog):
    receiver.script = [500, 502, 503, 200]
    with caplog.at_level(logging.INFO), pytest.raises(webhooks.DeliveryFailed, match="HTTP 503"):
        send_webhooks([transition(finished())], to_receiver(receiver))
    assert len(receiver.requests) == 3
    assert "token=abc" not in caplog.text  # the log names the host only
    assert "hooks.example.com" in caplog.text


def test_webhook_network_errors_are_retried(cloud, secret_reads):
    closed = Receiver()
    closed.port = 9  # nothing listens on the discard port here: connection refused
    sleeps: list[float] = []
    with pytest.raises(webhooks.DeliveryFailed, match="ConnectionRefusedError"):
        send_webhooks([transition(finished())], to_receiver(closed), sleeps=sleeps)
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [301, 302, 307, 400, 401, 404, 410])
def test_a_redirect_or_client_error_is_the_receivers_final_answer(cloud, receiver, secret_reads, status):
    receiver.script = [status]
    result = send_webhooks([transition(finished())], to_receiver(receiver))
    assert result["rejected"] == 1
    assert len(receiver.requests) == 1  # no retry, redirect not followed


def test_only_transitions_into_a_terminal_status_with_a_webhook_are_sent(cloud, receiver, secret_reads):
    done = finished()
    records = [
        stream_record(done, None, event_name="INSERT"),
        stream_record({**done, contract.STATUS: contract.RUNNING}, {**done, contract.STATUS: contract.QUEUED}),
        stream_record(done, done),  # already terminal before: not a transition
        transition({**done, contract.WEBHOOK_URL: None}),
        stream_record(done, None, event_name="REMOVE"),
        transition({**done, contract.JOB_ID: contract.client_token_key("a", "b")}),
        {"eventName": "MODIFY", "dynamodb": {"NewImage": {"status": {"Q": "?"}}}},
        "not a record",
    ]
    assert send_webhooks(records, to_receiver(receiver))["skipped"] == len(records)
    assert receiver.requests == []
    assert secret_reads == []  # nothing to sign: the secret is not even read
    # NEW_IMAGE only (no old image) is enough: the contract makes every terminal write a transition.
    assert send_webhooks([stream_record(done)], to_receiver(receiver))["delivered"] == 1


def test_the_handler_refuses_urls_that_break_the_rules(cloud, receiver, secret_reads):
    records = [
        transition(finished(webhook_url=f"http://127.0.0.1:{receiver.port}/hook")),
        transition(finished(webhook_url=f"https://127.0.0.1:{receiver.port}/hook")),
        transition(finished(webhook_url="https://user:pw@hooks.example.com/")),
    ]
    assert send_webhooks(records, to_receiver(receiver))["refused"] == 3
    assert receiver.requests == []


def test_too_little_time_left_hands_the_batch_back(cloud, receiver, secret_reads):
    with pytest.raises(webhooks.DeliveryFailed, match="out of time"):
        send_webhooks([transition(finished())], to_receiver(receiver), remaining_ms=8_000)
    assert receiver.requests == []


def test_deliver_keeps_within_its_budget():
    clock = [0.0]

    def slow_failure(url: str, body: bytes, headers: Any, timeout: float) -> int:
        clock[0] += timeout
        raise TimeoutError

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    result = webhooks.deliver(
        "https://h.example.com/", b"{}", {}, b"k" * 32, slow_failure, budget=12, sleep=sleep, clock=lambda: clock[0]
    )
    assert result.outcome == webhooks.FAILED
    assert clock[0] <= 12


def test_a_short_signing_secret_is_a_configuration_error(cloud, secret_reads, monkeypatch):
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(Name=f"short-{uuid.uuid4().hex[:8]}", SecretString="too-short")["ARN"]
    monkeypatch.setenv(contract.WEBHOOK_SECRET_ENV, arn)
    with pytest.raises(webhooks.ConfigError, match="at least 32"):
        send_webhooks([transition(finished())], lambda *_a: 200)


# --- webhooks: the production transport -----------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for hooks.example.com (key and certificate files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.com")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / "key.pem", folder / "cert.pem"


@pytest.fixture
def tls_receiver(tls_files):
    key, cert = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    receiver = Receiver()
    server = _serve(receiver, server_context)
    yield receiver, ssl.create_default_context(cafile=str(cert))
    server.shutdown()
    server.server_close()


def test_https_transport_pins_a_checked_address_verifies_tls_and_never_redirects(tls_receiver):
    receiver, client_context = tls_receiver
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["10.0.0.5", "127.0.0.1"]  # only the second passes this test's policy

    transport = webhooks.HttpsTransport(
        resolve=resolve, context=client_context, address_allowed=lambda a: a == "127.0.0.1"
    )
    url = f"https://hooks.example.com:{receiver.port}/hook?x=1"
    assert transport(url, b'{"a":1}', {"X-Test": "1"}, 5) == 200
    receiver.script = [302]
    assert transport(url, b"{}", {}, 5) == 302
    assert len(receiver.requests) == 2  # the redirect was not followed
    path, headers, body = receiver.requests[0]
    assert (path, body, headers["X-Test"]) == ("/hook?x=1", b'{"a":1}', "1")
    assert headers["Host"] == f"hooks.example.com:{receiver.port}"
    assert resolved == ["hooks.example.com", "hooks.example.com"]
    # A certificate for another name fails verification (a transient error: retried, never sent).
    other = webhooks.HttpsTransport(
        resolve=lambda h, p: ["127.0.0.1"], context=client_context, address_allowed=lambda a: True
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        other(f"https://other.example.com:{receiver.port}/", b"{}", {}, 5)


def test_https_transport_refuses_plain_http_and_private_addresses():
    transport = webhooks.HttpsTransport(
        resolve=lambda h, p: ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fd00::1"]
    )
    for url in ("http://hooks.example.com/", "https://u:p@hooks.example.com/"):
        with pytest.raises(webhooks.Refused, match="https"):
            transport(url, b"{}", {}, 1)
    with pytest.raises(webhooks.Refused, match="no public address"):
        transport("https://rebinding.example.com/", b"{}", {}, 1)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:93.184.216.34", True),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_is_public_address(address, public):
    assert validation.is_public_address(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "https://hooks.example.com:8443/x?token=abc",
        "https://93.184.216.34/hook",
        "https://xn--bcher-kva.example/x",
    ],
)
def test_accepted_webhook_urls(url):
    assert validation.webhook_url_problem(url) is None


def test_iso_times():
    assert views.iso(0) == "1970-01-01T00:00:00Z"
    assert views.iso(None) is None
    assert views.iso(True) is None
