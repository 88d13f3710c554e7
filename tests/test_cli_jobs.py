"""`comfyui-eks jobs` against the real job API handler behind a stand-in for API Gateway.

`Gateway` (an HTTP server on 127.0.0.1, port 0) does for each request what the HTTP API's IAM
authorization does: it recomputes the SigV4 signature with botocore from the test
credentials and the method, path, query, signed headers and body it received, answers 403
on any mismatch, puts the verified caller ARN into requestContext.authorizer.iam and hands
the payload 2.0 event to lambda_src.jobs.api.handler, which runs against moto (mock_aws,
in-process). So every test that gets past the gateway proves the CLI signed correctly, and
the control tests prove that an unsigned or tampered request does not get past it.

Presigned output links name S3's real hosts; moto's mock answers `requests` calls to them
(and passes calls to 127.0.0.1 through), so downloads exercise the CLI's plain GET. The
runner is simulated by applying contract.claim_update / finish_update to the table from a
thread while the CLI waits. The CLI runs in-process (cli.main); jobs.POLL / jobs.RETRY are
shortened.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import boto3  # type: ignore[import-untyped]
import pytest
import requests
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from moto import mock_aws

from comfyui_eks import cli, jobs
from comfyui_eks._sigv4 import NO_CREDENTIALS, Signer
from core.config import DEFAULT_CONFIG
from lambda_src.jobs import api, aws, contract, listing, validation
from tests.helpers import create_jobs_table, new_job_item
from tests.test_jobs_api import LambdaContext

Json = dict[str, Any]
REGION = "us-west-2"
ACCOUNT = "123456789012"
TABLE = "cli-jobs"
INPUTS = f"cli-inputs-{ACCOUNT}-{REGION}"
OUTPUTS = f"cli-outputs-{ACCOUNT}-{REGION}"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
OUTPUT_PNG = b"\x89PNG\r\n\x1a\n" + b"generated" * 100
ROUTES = (("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{id}"), ("DELETE", "/jobs/{id}"))
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."


@dataclass(frozen=True)
class Identity:
    """Credentials the gateway knows, and the ARN API Gateway would report for them."""

    access_key: str
    secret_key: str
    token: str | None
    arn: str


PIPELINE = Identity(
    "ASIAJOBSCLITEST00001",
    "pipeline/secret+key/0123456789abcdefghijklmnopqrst",
    "IQoJb3JpZ2luX2VjEJobsCliTestSessionToken==",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/Pipeline/cli-test",
)
ALICE = Identity(
    "AKIAJOBSCLITEST00002", "alice/secret+key/0123456789abcdefghijk", None, f"arn:aws:iam::{ACCOUNT}:user/alice"
)
IDENTITIES = {identity.access_key: identity for identity in (PIPELINE, ALICE)}


# --------------------------------------------------------------------------------------------
# SigV4 verification, as API Gateway does it


_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def verify_sigv4(
    method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, now: datetime
) -> tuple[Identity | None, str]:
    """(the caller, "") for a valid signature, else (None, API Gateway's refusal message).

    The signature is recomputed by botocore from the caller's known secret over what was
    received: the query from its decoded parameters (as AWS does), every signed header's
    value, the body's SHA-256, the date of X-Amz-Date."""
    lowered = {name.lower(): value for name, value in headers.items()}
    match = _AUTHORIZATION.fullmatch(lowered.get("authorization", ""))
    if match is None:
        return None, "Forbidden"
    identity = IDENTITIES.get(match["key"])
    signed = match["signed"].split(";")
    amz_date = lowered.get("x-amz-date", "")
    if identity is None or (identity.token and lowered.get("x-amz-security-token") != identity.token):
        return None, INVALID_TOKEN
    if identity.token and "x-amz-security-token" not in signed:
        return None, INVALID_TOKEN
    if match["region"] != REGION or match["service"] != "execute-api":
        return None, "Credential should be scoped to a valid region."
    if "host" not in signed or "x-amz-date" not in signed or not amz_date.startswith(match["date"]):
        return None, SIGNATURE_MISMATCH
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs((now - signed_at).total_seconds()) > 300:
        return None, "Signature expired"
    if any(name not in lowered for name in signed):
        return None, SIGNATURE_MISMATCH
    request = AWSRequest(
        method=method,
        url=f"https://{lowered['host']}{path}",
        data=body,
        headers={name: lowered[name] for name in signed},
        params=parse_qsl(query, keep_blank_values=True),
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(identity.access_key, identity.secret_key, identity.token), "execute-api", REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        return None, SIGNATURE_MISMATCH
    return identity, ""


# --------------------------------------------------------------------------------------------
# The gateway


@dataclass
class Exchange:
    """One request the handler answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    route: str
    status: int
    body: Json
    request: Json | None


@dataclass
class Gateway:
    """API Gateway for the job API on 127.0.0.1: SigV4 check, IAM decision, routing, events."""

    server: ThreadingHTTPServer
    denied: bool = False
    # (method, route) -> what to do to the next such requests: "unavailable" (503 without calling
    # the handler) or "lost" (the handler runs, the answer is lost: the connection closes).
    faults: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one handler call at a time
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def reset(self) -> None:
        self.denied = False
        self.faults.clear()
        self.exchanges.clear()
        self.refusals.clear()

    def fault(self, method: str, route: str, *kinds: str) -> None:
        self.faults[(method, route)] = list(kinds)

    def take_fault(self, method: str, route: str) -> str | None:
        pending = self.faults.get((method, route))
        return pending.pop(0) if pending else None

    def record(self, exchange: Exchange) -> None:
        with self.changed:
            self.exchanges.append(exchange)
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[Exchange], bool], timeout: float = 10.0) -> Exchange:
        """The first exchange matching `predicate`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((e for e in self.exchanges if predicate(e)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the gateway never saw the expected request")
                self.changed.wait(remaining)

    def calls(self, method: str, route: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.route == f"{method} {route}"]


def match_route(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    for route_method, template in ROUTES:
        if route_method != method:
            continue
        if template == path:
            return f"{method} {template}", {}
        if template.endswith("{id}") and path.startswith("/jobs/") and path.count("/") == 2 and path[6:]:
            return f"{method} {template}", {"id": path[6:]}
    return None, {}


def gateway_event(
    method: str,
    route: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    identity: Identity,
    ids: dict[str, str],
) -> Json:
    """The payload 2.0 event API Gateway sends for an IAM-authorized route."""
    now = datetime.now(UTC)
    event: Json = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": query,
        "headers": {name.lower(): value for name, value in headers.items()},
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "authorizer": {
                "iam": {
                    "accessKey": identity.access_key,
                    "accountId": ACCOUNT,
                    "callerId": identity.arn.rsplit("/", 1)[-1],
                    "cognitoIdentity": None,
                    "principalOrgId": None,
                    "userArn": identity.arn,
                    "userId": identity.arn.rsplit("/", 1)[-1],
                }
            },
            "domainName": headers.get("Host", ""),
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": ""},
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parse_qs(query, keep_blank_values=True).items()}
    if ids:
        event["pathParameters"] = ids
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    return event


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def do_DELETE(self) -> None:
        self.serve()

    def reply(self, status: int, body: str, headers: Mapping[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def serve(self) -> None:
        gateway: Gateway = self.server.gateway
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        split = urlsplit(self.path)
        headers = dict(self.headers.items())
        identity, refusal = verify_sigv4(self.command, split.path, split.query, headers, body, datetime.now(UTC))
        if identity is None:
            gateway.refusals.append(refusal)
            return self.reply(403, json.dumps({"message": refusal}))
        if gateway.denied:  # the caller's IAM policies do not allow execute-api:Invoke
            return self.reply(403, json.dumps({"message": "Forbidden"}))
        route, ids = match_route(self.command, split.path)
        if route is None:
            return self.reply(404, json.dumps({"message": "Not Found"}))
        fault = gateway.take_fault(self.command, route.split(" ", 1)[1])
        if fault == "unavailable":
            return self.reply(503, json.dumps({"message": "Service Unavailable"}))
        event = gateway_event(self.command, route, split.path, split.query, headers, body, identity, ids)
        with gateway.lock:
            result = api.handler(event, LambdaContext())
        request = json.loads(body) if body else None
        query = parse_qs(split.query)
        answer = json.loads(result["body"])
        gateway.record(Exchange(self.command, split.path, query, route, result["statusCode"], answer, request))
        if fault == "lost":
            self.close_connection = True
            return None
        return self.reply(result["statusCode"], result["body"], result["headers"])


# --------------------------------------------------------------------------------------------
# Fixtures


@dataclass(frozen=True)
class Cloud:
    ddb: Any
    s3: Any
    sqs: Any
    queue_url: str


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    none = str(tmp_path_factory.mktemp("aws") / "none")
    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            patch.delenv(key, raising=False)
        patch.setenv("AWS_CONFIG_FILE", none)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", none)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_REGION", REGION)
        aws.reset_clients()
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_jobs_table(ddb, TABLE)
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (INPUTS, OUTPUTS):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="cli-jobs")["QueueUrl"]
        for key, value in {
            contract.TABLE_ENV: TABLE,
            contract.QUEUE_ENV: queue_url,
            contract.INPUTS_BUCKET_ENV: INPUTS,
            contract.OUTPUTS_BUCKET_ENV: OUTPUTS,
            contract.RETENTION_DAYS_ENV: "30",
        }.items():
            patch.setenv(key, value)
        # The API's clients, made now in the Lambda's environment: a Lambda never sees the
        # caller's environment, and a test that gives the CLI a profile (AWS_PROFILE) must
        # not give it to a client the API happens to make during that test.
        for service in ("dynamodb", "sqs", "s3", "secretsmanager"):
            aws.client(service)
        yield Cloud(ddb, s3, sqs, queue_url)
        aws.reset_clients()


@pytest.fixture(scope="module")
def gateway(cloud: Cloud) -> Iterator[Gateway]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatewayHandler)
    server.daemon_threads = True
    state = Gateway(server)
    server.gateway = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def use_credentials(monkeypatch: pytest.MonkeyPatch, identity: Identity | None) -> None:
    """The caller's credentials in the environment (botocore's first provider), or none at all."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    if identity is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identity.secret_key)
        if identity.token:
            monkeypatch.setenv("AWS_SESSION_TOKEN", identity.token)


@pytest.fixture(autouse=True)
def _cli_world(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI calls the gateway as PIPELINE, waits briefly, and works in the test's directory."""
    gateway.reset()
    monkeypatch.setenv(jobs.API_ENV, gateway.url)
    use_credentials(monkeypatch, PIPELINE)
    for key in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "CDKTF_OUTDIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe when credentials are missing
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(jobs, "POLL", jobs.Backoff(first=0.01, factor=1.0, most=0.01))
    monkeypatch.setattr(jobs, "RETRY", jobs.Backoff(first=0.01, factor=1.0, most=0.01))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fresh_table(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> str:
    """A table of its own (listing tests count every job in it)."""
    name = f"jobs-{uuid.uuid4().hex[:12]}"
    create_jobs_table(cloud.ddb, name)
    monkeypatch.setenv(contract.TABLE_ENV, name)
    return name


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    code = cli.main(["jobs", *map(str, args)])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def img2img(tmp_path: Path, image: str = "cat.png", *, beside: bool = True) -> Path:
    """An image-to-image workflow whose LoadImage (node 10) names `image`; the image next to it."""
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "model": ["4", 0], "latent_image": ["11", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "cli"}},
    }  # fmt: skip
    folder = tmp_path / "wf"
    folder.mkdir(exist_ok=True)
    path = folder / "img2img.json"
    path.write_text(json.dumps(workflow))
    if beside:
        (folder / "cat.png").write_bytes(PNG)
    return path


def item_of(cloud: Cloud, job_id: str, table: str = TABLE) -> Json:
    raw = cloud.ddb.get_item(TableName=table, Key={contract.JOB_ID: {"S": job_id}}, ConsistentRead=True)["Item"]
    return aws.from_item(raw)


def drain(cloud: Cloud) -> list[Json]:
    """The job messages now in the queue (deleted as read)."""
    bodies: list[Json] = []
    while batch := cloud.sqs.receive_message(QueueUrl=cloud.queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            bodies.append(json.loads(message["Body"]))
            cloud.sqs.delete_message(QueueUrl=cloud.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def update(cloud: Cloud, job_id: str, change: Json, table: str = TABLE) -> None:
    cloud.ddb.update_item(TableName=table, Key={contract.JOB_ID: {"S": job_id}}, **change)


def put_job(cloud: Cloud, values: Json | None = None, table: str = TABLE) -> str:
    """A job item in any state, written directly (as POST /jobs or a runner left it)."""
    item = new_job_item(**(values or {}))
    cloud.ddb.put_item(TableName=table, Item=aws.to_item(item))
    return str(item[contract.JOB_ID])


RUNNER = "comfyui-7d9f-abcde"  # the pod a runner sidecar would be


def claim(cloud: Cloud, job_id: str) -> None:
    """What a runner does when it takes the job's message: queued -> running, attempt counted."""
    update(cloud, job_id, contract.claim_update(runner=RUNNER, at=contract.now()))


def finish(
    cloud: Cloud, job_id: str, status: str, *, outputs: Mapping[str, bytes] | None = None, error: str | None = None
) -> None:
    """What a runner does at the end: upload the outputs under the job's prefix, record the result."""
    keys = [contract.output_prefix(job_id) + name for name in outputs or {}]
    for key, data in zip(keys, (outputs or {}).values(), strict=True):
        cloud.s3.put_object(Bucket=OUTPUTS, Key=key, Body=data)
    update(
        cloud,
        job_id,
        contract.finish_update(runner=RUNNER, at=contract.now(), status=status, outputs=keys or None, error=error),
    )


class FakeRunner(threading.Thread):
    """Runs the job the CLI submits (or `job_id`): claims it once the CLI has seen it queued and
    finishes it once the CLI has seen it running, so the CLI observes every status in turn."""

    def __init__(self, cloud: Cloud, gateway: Gateway, status: str, *, job_id: str | None = None, **result: Any):
        super().__init__(daemon=True)
        self.cloud, self.gateway, self.status, self.job_id, self.result = cloud, gateway, status, job_id, result
        self.error: BaseException | None = None

    def seen(self, job_id: str, status: str) -> None:
        path = f"/jobs/{job_id}"
        self.gateway.wait_for(lambda e: (e.method, e.path, e.body.get("status")) == ("GET", path, status))

    def submitted(self) -> str:
        return str(self.gateway.wait_for(lambda e: e.route == "POST /jobs" and e.status < 300).body["job_id"])

    def run(self) -> None:
        try:
            job_id = self.job_id or self.submitted()
            self.seen(job_id, contract.QUEUED)
            with self.gateway.lock:
                claim(self.cloud, job_id)
            self.seen(job_id, contract.RUNNING)
            with self.gateway.lock:
                finish(self.cloud, job_id, self.status, **self.result)
        except BaseException as exc:  # noqa: BLE001 - reported by join_cleanly()
            self.error = exc

    def join_cleanly(self) -> None:
        self.join(timeout=10)
        assert not self.is_alive() and self.error is None, self.error


# --------------------------------------------------------------------------------------------
# The gateway's SigV4 check (controls: without them, the other tests would prove nothing)


def signed_request(method: str, url: str, body: bytes = b"") -> dict[str, str]:
    headers = {"Content-Type": "application/json"} if body else {}
    signer = Signer(Credentials(PIPELINE.access_key, PIPELINE.secret_key, PIPELINE.token), REGION)
    return signer.sign(method, url, body, headers)


def test_gateway_refuses_unsigned_and_tampered_requests(gateway: Gateway, tmp_path: Path) -> None:
    url = gateway.url + "jobs"
    assert requests.get(url + "?limit=1", timeout=5).status_code == 403  # unsigned
    assert gateway.refusals == ["Forbidden"]
    body = json.dumps(
        {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}, "client_token": "control"}
    ).encode()
    headers = signed_request("POST", url, body)
    tampered = body.replace(b"SaveImage", b"LoadImage")
    refused = requests.post(url, data=tampered, headers=headers, timeout=5)
    assert (refused.status_code, refused.json()) == (403, {"message": SIGNATURE_MISMATCH})
    moved = requests.post(url + "?limit=2", data=body, headers=headers, timeout=5)  # a query that was not signed
    assert moved.status_code == 403
    other_secret = Signer(Credentials(PIPELINE.access_key, "wrong", PIPELINE.token), REGION).sign("GET", url, b"", {})
    assert requests.get(url, headers=other_secret, timeout=5).status_code == 403
    assert gateway.exchanges == []  # the handler never ran
    accepted = requests.post(url, data=body, headers=headers, timeout=5)  # the same request, untouched
    assert accepted.status_code == 201, accepted.text
    assert gateway.calls("POST", "/jobs")[0].status == 201


def test_the_signature_covers_the_query_as_aws_canonicalises_it(gateway: Gateway) -> None:
    """A value that needs percent-encoding: signed and sent as one string, it gets past the
    gateway (which canonicalises the decoded parameters) and the handler judges it."""
    url = gateway.url + "jobs" + jobs._query({"status": "done / ok?", "limit": "5", "next": None})
    assert url.endswith("/jobs?limit=5&status=done%20%2F%20ok%3F")
    response = requests.get(url, headers=signed_request("GET", url), timeout=5)
    assert (response.status_code, response.json()["error"]["field"]) == (400, "status")
    assert gateway.refusals == []


# --------------------------------------------------------------------------------------------
# submit


def test_submit_sends_the_image_inline_as_the_signed_caller(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    drain(cloud)
    result = run(capsys, "submit", img2img(tmp_path))
    assert result.code == 0, result.err
    job_id = result.out.strip()
    assert contract.JOB_ID_PATTERN.fullmatch(job_id)
    assert f"submitted job {job_id} (queued)" in result.err and f"comfyui-eks jobs wait {job_id}" in result.err
    item = item_of(cloud, job_id)
    assert item[contract.SUBMITTED_BY] == PIPELINE.arn  # the caller the gateway verified
    assert item[contract.INPUTS] == {"cat.png": contract.input_key(job_id, "cat.png")}
    assert cloud.s3.get_object(Bucket=INPUTS, Key=contract.input_key(job_id, "cat.png"))["Body"].read() == PNG
    (message,) = drain(cloud)
    assert message["workflow"]["10"]["inputs"]["image"] == "cat.png"
    (post,) = gateway.calls("POST", "/jobs")
    assert post.request is not None
    assert str(uuid.UUID(post.request["client_token"])) == post.request["client_token"]  # generated per submit
    assert post.request["inputs"] == {"cat.png": {"base64": base64.b64encode(PNG).decode()}}


def test_submit_input_given_by_node_id_and_an_annotated_name(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    drain(cloud)
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG[::-1])
    workflow = img2img(tmp_path, "uploads/cat.png [input]", beside=False)
    result = run(capsys, "submit", workflow, "--input", f"10={photo}", "--seed", "7", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["status"] == "queued" and document["seed"] == 7 and document["replayed"] is False
    (message,) = drain(cloud)
    assert message["workflow"]["10"]["inputs"]["image"] == "cat.png"  # a plain input name the runner can match
    assert message["workflow"]["3"]["inputs"]["seed"] == 7
    key = contract.input_key(document["job_id"], "cat.png")
    assert cloud.s3.get_object(Bucket=INPUTS, Key=key)["Body"].read() == PNG[::-1]


def test_submit_input_key_webhook_and_client_token(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    drain(cloud)
    cloud.s3.put_object(Bucket=INPUTS, Key="uploads/cat-2.png", Body=PNG)
    workflow = img2img(tmp_path, beside=False)
    token = f"nightly-{uuid.uuid4().hex[:8]}/step-1"
    args: list[str | Path] = ["submit", workflow, "--input-key", "cat.png=uploads/cat-2.png", "--client-token", token]
    args += ["--webhook", "https://hooks.example.com/comfy?token=abc", "--format", "json"]
    first = run(capsys, *args)
    assert first.code == 0, first.err
    job_id = first.json()["job_id"]
    assert first.json() == {
        "job_id": job_id,
        "status": "queued",
        "links": {"self": f"/jobs/{job_id}"},
        "client_token": token,
        "replayed": False,
    }
    item = item_of(cloud, job_id)
    assert item[contract.WEBHOOK_URL] == "https://hooks.example.com/comfy?token=abc"
    assert item[contract.INPUTS] == {"cat.png": contract.input_key(job_id, "cat.png")}
    again = run(capsys, *args)
    assert again.code == 0 and again.json()["job_id"] == job_id and again.json()["replayed"] is True
    assert "already submitted with this client token" in again.err
    assert len(drain(cloud)) == 1
    assert [e.status for e in gateway.calls("POST", "/jobs")] == [201, 200]


def test_submit_wait_follows_the_job_and_downloads_its_outputs(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "ComfyUI_00001_.png").write_bytes(b"an earlier, different file")
    outputs = {"ComfyUI_00001_.png": OUTPUT_PNG, "sub/mask_00001_.png": PNG}
    runner = FakeRunner(cloud, gateway, contract.SUCCEEDED, outputs=outputs)
    runner.start()
    result = run(capsys, "submit", img2img(tmp_path), "--wait", "--out", out, "--timeout", "10")
    runner.join_cleanly()
    assert result.code == 0, result.err
    assert result.out.splitlines() == [str(out / "ComfyUI_00001_-1.png"), str(out / "sub" / "mask_00001_.png")]
    assert (out / "ComfyUI_00001_-1.png").read_bytes() == OUTPUT_PNG
    assert (out / "ComfyUI_00001_.png").read_bytes() == b"an earlier, different file"  # never overwritten
    assert (out / "sub" / "mask_00001_.png").read_bytes() == PNG
    job_id = gateway.calls("POST", "/jobs")[0].body["job_id"]
    assert f"job {job_id}: queued\n" in result.err
    assert f"job {job_id}: running (attempt 1)\n" in result.err
    assert f"job {job_id}: succeeded after 1 attempt\n" in result.err
    assert f"job {job_id} succeeded: 2 outputs in {out}" in result.err
    again = run(capsys, "wait", job_id, "--out", out, "--format", "json")  # identical files are not written twice
    assert again.code == 0, again.err
    document = again.json()
    assert document["status"] == "succeeded" and len(document["outputs"]) == 2
    assert document["files"] == [
        {"name": "ComfyUI_00001_.png", "path": str(out / "ComfyUI_00001_-1.png")},
        {"name": "sub/mask_00001_.png", "path": str(out / "sub" / "mask_00001_.png")},
    ]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "ComfyUI_00001_-1.png",
        "ComfyUI_00001_.png",
        "mask_00001_.png",
    ]


def test_wait_for_a_failed_job_exits_1_with_its_error(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = put_job(cloud)
    error = "KSampler (node 3): CUDA out of memory\nTried to allocate 2.00 GiB"
    runner = FakeRunner(cloud, gateway, contract.FAILED, job_id=job_id, error=error)
    runner.start()
    result = run(capsys, "wait", job_id, "--format", "json", "--timeout", "10")
    runner.join_cleanly()
    assert result.code == 1
    assert result.json()["status"] == "failed" and result.json()["error"] == error
    assert f"comfyui-eks jobs: job {job_id} failed: KSampler (node 3): CUDA out of memory\n" in result.err
    assert "comfyui-eks jobs: Tried to allocate 2.00 GiB\n" in result.err
    assert f"job {job_id}: running (attempt 1)" in result.err


def test_wait_gives_up_after_its_timeout_and_the_job_carries_on(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = put_job(cloud)
    result = run(capsys, "wait", job_id, "--timeout", "0.2")
    assert result.code == 1
    assert f"job {job_id} is still queued after 0.2 s; it carries on: comfyui-eks jobs wait {job_id}" in result.err
    assert item_of(cloud, job_id)[contract.STATUS] == contract.QUEUED


def test_wait_for_a_cancelled_job_exits_1(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = put_job(cloud, {contract.STATUS: contract.CANCELLED, contract.CANCEL_REQUESTED: True})
    result = run(capsys, "wait", job_id)
    assert (result.code, result.out) == (1, "")
    assert f"comfyui-eks jobs: job {job_id} was cancelled" in result.err


# --------------------------------------------------------------------------------------------
# get, cancel, ls


def test_get_shows_a_job_and_its_output_links(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = put_job(cloud)
    claim(cloud, job_id)
    finish(cloud, job_id, contract.SUCCEEDED, outputs={"ComfyUI_00001_.png": OUTPUT_PNG})
    text = run(capsys, "get", job_id)
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[:2] == [f"job       {job_id}", "status    succeeded"]
    assert "attempts  1" in lines
    (output,) = [line for line in lines if line.startswith("output")]
    assert output.startswith("output    ComfyUI_00001_.png  https://") and "X-Amz-Signature=" in output
    view = run(capsys, "get", job_id, "--format", "json").json()
    assert view["job_id"] == job_id and view["outputs"][0]["name"] == "ComfyUI_00001_.png"
    assert requests.get(view["outputs"][0]["url"], timeout=5).content == OUTPUT_PNG  # a working presigned link


def test_get_unknown_and_malformed_job_ids(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = uuid.uuid4().hex
    result = run(capsys, "get", unknown)
    assert (result.code, result.err) == (1, f"comfyui-eks jobs: no such job: {unknown}\n")
    malformed = run(capsys, "get", "../jobs")
    assert malformed.code == 2 and "is not a job id" in malformed.err
    assert len(gateway.exchanges) == 1


def test_cancel_a_queued_a_running_and_a_finished_job(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    queued = put_job(cloud)
    result = run(capsys, "cancel", queued)
    assert (result.code, result.out) == (0, f"job {queued} cancelled\n")
    assert item_of(cloud, queued)[contract.STATUS] == contract.CANCELLED

    running = put_job(cloud)
    claim(cloud, running)
    result = run(capsys, "cancel", running, "--format", "json")
    assert result.code == 0, result.err
    assert result.json()["status"] == "running" and result.json()["cancel_requested"] is True
    text = run(capsys, "cancel", running)  # a second request is accepted the same way
    assert text.code == 0 and "cancel requested; its runner stops it within about a minute" in text.out

    finished = put_job(cloud)
    claim(cloud, finished)
    finish(cloud, finished, contract.SUCCEEDED)
    result = run(capsys, "cancel", finished)
    assert result.code == 1
    assert result.err == (
        f"comfyui-eks jobs: job {finished} (succeeded): the job has already succeeded; nothing to cancel\n"
    )


def test_ls_follows_pages_newest_first(
    cloud: Cloud,
    gateway: Gateway,
    fresh_table: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "PAGE_SIZE", 2)
    now = contract.now()
    statuses = [contract.QUEUED, contract.RUNNING, contract.SUCCEEDED, contract.FAILED, contract.SUCCEEDED]
    ids = [
        put_job(cloud, {contract.STATUS: status, contract.CREATED_AT: now - 60 * age}, fresh_table)
        for age, status in enumerate(statuses)
    ]  # newest first
    error = {"UpdateExpression": "SET #e = :e", "ExpressionAttributeNames": {"#e": contract.ERROR}}
    update(cloud, ids[3], {**error, "ExpressionAttributeValues": {":e": {"S": "boom\nsecond line"}}}, fresh_table)
    everything = run(capsys, "ls", "--limit", "10", "--format", "json")
    assert everything.code == 0, everything.err
    assert [job["job_id"] for job in everything.json()["jobs"]] == ids
    assert everything.json()["more"] is False
    pages = gateway.calls("GET", "/jobs")
    assert len(pages) == 3 and "next" not in pages[0].query and all("next" in page.query for page in pages[1:])

    first = run(capsys, "ls", "--limit", "3")
    lines = first.out.splitlines()
    assert lines[0].split() == ["JOB", "ID", "STATUS", "CREATED", "FINISHED", "ATTEMPTS", "ERROR"]
    assert [line.split()[0] for line in lines[1:]] == ids[:3]
    assert "more jobs than these 3: --limit N shows more" in first.err
    failed = run(capsys, "ls", "--status", "failed")
    assert failed.out.splitlines()[1].split()[:2] == [ids[3], "failed"] and failed.out.rstrip().endswith("boom")
    none = run(capsys, "ls", "--status", "cancelled")
    assert (none.code, none.out, none.err) == (0, "", "no cancelled jobs\n")


# --------------------------------------------------------------------------------------------
# Errors, retries, credentials


def test_a_400_exits_2_naming_the_field(gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "submit", img2img(tmp_path), "--webhook", "http://hooks.example.com/x")
    assert result.code == 2
    assert result.err.startswith("comfyui-eks jobs: webhook_url: webhook_url must use https")
    assert len(result.err.splitlines()) == 1


def test_a_403_from_iam_names_the_caller_policy(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.denied = True
    result = run(capsys, "ls")
    assert (result.code, result.err) == (1, f"comfyui-eks jobs: {jobs.NOT_ALLOWED}\n")
    assert "jobs_caller_policy_arn" in jobs.NOT_ALLOWED


def test_a_signature_for_another_region_is_refused(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "ls", "--region", "eu-west-1")
    assert result.code == 1
    assert result.err == (
        "comfyui-eks jobs: the job API refused the signature (Credential should be scoped to a valid region.): "
        "pass --region with the API's region\n"
    )
    assert gateway.exchanges == []


def test_get_is_retried_on_503(cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = put_job(cloud)
    gateway.fault("GET", "/jobs/{id}", "unavailable", "unavailable")
    result = run(capsys, "get", job_id)
    assert result.code == 0, result.err
    assert result.err.count("HTTP 503 (Service Unavailable); retrying in") == 2
    gateway.fault("GET", "/jobs/{id}", *["unavailable"] * (jobs.RETRIES + 1))
    exhausted = run(capsys, "get", job_id)
    assert exhausted.code == 1
    assert exhausted.err.splitlines()[-1] == (
        f"comfyui-eks jobs: GET /jobs/{job_id}: the job API answered HTTP 503: Service Unavailable"
    )


def test_cancel_is_not_retried(cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = put_job(cloud)
    gateway.fault("DELETE", "/jobs/{id}", "unavailable")
    result = run(capsys, "cancel", job_id)
    assert result.code == 1 and "HTTP 503" in result.err and "retrying" not in result.err
    assert item_of(cloud, job_id)[contract.STATUS] == contract.QUEUED


def test_a_post_whose_answer_was_lost_is_retried_into_the_same_job(
    cloud: Cloud, gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    drain(cloud)
    gateway.fault("POST", "/jobs", "lost", "unavailable")
    result = run(capsys, "submit", img2img(tmp_path), "--format", "json")
    assert result.code == 0, result.err
    first, second = gateway.calls("POST", "/jobs")
    assert first.request == second.request  # the same body, client token included
    assert (first.status, second.status) == (201, 200)
    assert result.json()["job_id"] == first.body["job_id"] == second.body["job_id"]
    assert result.json()["replayed"] is True
    assert len(drain(cloud)) == 1  # one job, one message
    assert "cannot reach the job API" in result.err and "retrying" in result.err


def test_no_credentials(gateway: Gateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    use_credentials(monkeypatch, None)
    result = run(capsys, "ls")
    assert (result.code, result.err) == (1, f"comfyui-eks jobs: {NO_CREDENTIALS}\n")
    assert NO_CREDENTIALS == "no AWS credentials: run `aws sso login` or set AWS_PROFILE"
    assert gateway.exchanges == [] and gateway.refusals == []


def test_credentials_from_a_profile(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_credentials(monkeypatch, None)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[alice]\naws_access_key_id = {ALICE.access_key}\naws_secret_access_key = {ALICE.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "alice")
    result = run(capsys, "submit", img2img(tmp_path))
    assert result.code == 0, result.err
    assert item_of(cloud, result.out.strip())[contract.SUBMITTED_BY] == ALICE.arn


def test_usage_errors_send_nothing(gateway: Gateway, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 9, "nodes": [{"id": 1, "type": "KSampler"}], "links": []}))
    result = run(capsys, "submit", ui)
    assert result.code == 2 and "UI format" in result.err and "Export (API)" in result.err
    workflow = img2img(tmp_path)
    unknown = run(capsys, "submit", workflow, "--input", f"dog.png={workflow.parent / 'cat.png'}")
    assert unknown.code == 2
    assert "--input dog.png=...: no LoadImage node uses 'dog.png'; the workflow's input images: cat.png (node 10)" in (
        unknown.err
    )
    both = run(capsys, "submit", workflow, "--input", f"cat.png={workflow.parent / 'cat.png'}", "--input-key", "10=k")
    assert both.code == 2 and "given both --input and --input-key" in both.err
    bad = run(capsys, "submit", workflow, "--seed", "x", "--timeout", "0", "--out", "o")
    assert bad.code == 2 and len(bad.err.splitlines()) == 3
    assert gateway.exchanges == [] and gateway.refusals == []


def test_a_request_over_the_api_limit_is_refused_before_sending(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(jobs, "MAX_REQUEST_BYTES", 1000)
    result = run(capsys, "submit", img2img(tmp_path))
    assert result.code == 2 and "--input-key NAME=S3_KEY" in result.err
    assert gateway.exchanges == []


# --------------------------------------------------------------------------------------------
# Where the API is, and other small parts


TERRAFORM_STUB = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUB_DIR/calls"
[ -f "$STUB_DIR/stderr" ] && cat "$STUB_DIR/stderr" >&2
cat "$STUB_DIR/stdout"
exit "$(cat "$STUB_DIR/code")"
"""


@pytest.fixture
def terraform_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `terraform` first on PATH that logs its arguments and answers from files."""
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    script = stub_dir / "terraform"
    script.write_text(TERRAFORM_STUB)
    script.chmod(0o755)
    (stub_dir / "code").write_text("0")
    monkeypatch.setenv("STUB_DIR", str(stub_dir))
    monkeypatch.setenv("PATH", f"{stub_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(jobs.API_ENV)
    (tmp_path / "my.yaml").write_text(DEFAULT_CONFIG.read_text().replace("project: comfyui", "project: jobstest", 1))
    return stub_dir


def test_the_api_url_comes_from_the_platform_stack_outputs(
    cloud: Cloud, gateway: Gateway, terraform_stub: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    job_id = put_job(cloud)
    stack = Path("cdktf.out", "stacks", "jobstest-platform")
    missing = run(capsys, "get", job_id, "--config", "my.yaml")
    assert missing.code == 2
    assert f"{stack} is not initialized" in missing.err and "--api URL" in missing.err
    (stack / ".terraform").mkdir(parents=True)
    (stack / ".terraform" / "terraform.tfstate").write_text("{}")  # what `terraform init` leaves
    outputs = {"jobs_api_url": {"sensitive": False, "type": "string", "value": gateway.url}}
    (terraform_stub / "stdout").write_text(json.dumps(outputs))
    found = run(capsys, "get", job_id, "--config", "my.yaml")
    assert found.code == 0, found.err
    assert found.out.startswith(f"job       {job_id}\n")
    assert (terraform_stub / "calls").read_text().splitlines() == [f"-chdir={stack} output -json -no-color"]

    (terraform_stub / "stdout").write_text("{}")
    no_output = run(capsys, "get", job_id, "--config", "my.yaml")
    assert no_output.code == 2 and "jobstest-platform has no output jobs_api_url" in no_output.err
    (terraform_stub / "code").write_text("1")
    (terraform_stub / "stderr").write_text(
        '╷\n│ Error: Backend initialization required, please run "terraform init"\n╵'
    )
    failed = run(capsys, "get", job_id, "--config", "my.yaml")
    assert failed.code == 1
    assert f"terraform output failed in {stack}: Error: Backend initialization required" in failed.err


def test_the_cli_knows_the_api_contract() -> None:
    """jobs.py restates what it needs of lambda_src/jobs (which it may not import)."""
    assert (jobs.STATUSES, jobs.TERMINAL) == (contract.STATUSES, contract.TERMINAL)
    assert jobs.JOB_ID_PATTERN.pattern == contract.JOB_ID_PATTERN.pattern
    assert jobs.INPUT_NAME_PATTERN.pattern == contract.INPUT_NAME_PATTERN.pattern
    assert jobs.CLIENT_TOKEN_PATTERN.pattern == validation.CLIENT_TOKEN_PATTERN.pattern
    assert jobs.MAX_REQUEST_BYTES == contract.MAX_REQUEST_BYTES
    assert jobs.PAGE_SIZE == listing.MAX_LIMIT


def test_region_and_url_rules() -> None:
    assert jobs.region_of("https://abc123.execute-api.us-west-2.amazonaws.com/") == "us-west-2"
    assert jobs.region_of("https://abc123.execute-api.cn-northwest-1.amazonaws.com.cn") == "cn-northwest-1"
    assert jobs.region_of("https://jobs.example.com/") is None
    assert jobs.region_of("http://127.0.0.1:8080/") is None
    url = jobs.check_api_url("https://abc123.execute-api.us-west-2.amazonaws.com/", "--api")
    assert url == "https://abc123.execute-api.us-west-2.amazonaws.com"
    with pytest.raises(cli.UsageError, match="use https"):
        jobs.check_api_url("http://abc123.execute-api.us-west-2.amazonaws.com/", "--api")
    with pytest.raises(cli.UsageError, match="not a URL"):
        jobs.check_api_url("abc123", "--api")


def test_no_credentials_from_netrc_replace_the_signature(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `default` entry in ~/.netrc matches every host: requests would send it as Authorization,
    replacing SigV4 on API calls and adding a second signature to presigned downloads."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = "https://bucket.s3.amazonaws.com/jobs/x/a.png?X-Amz-Signature=abc"
    session = requests.Session()
    assert "Authorization" in session.prepare_request(requests.Request("GET", url)).headers  # what it prevents
    assert "Authorization" not in session.prepare_request(requests.Request("GET", url, auth=jobs._no_netrc)).headers
    job_id = put_job(cloud)
    claim(cloud, job_id)
    finish(cloud, job_id, contract.SUCCEEDED, outputs={"a.png": OUTPUT_PNG})
    result = run(capsys, "wait", job_id, "--out", "out")  # signed API calls, plain downloads
    assert result.code == 0, result.err
    assert Path("out/a.png").read_bytes() == OUTPUT_PNG


def test_the_status_display_on_a_terminal() -> None:
    stream = io.StringIO()
    with jobs.StatusDisplay("0" * 32, stream, force_terminal=True) as display:
        assert display.show({"status": "running", "attempts": 2, "cancel_requested": True})
        assert not display.show({"status": "running", "attempts": 2, "cancel_requested": True})
    assert "running (attempt 2), cancel requested" in stream.getvalue()
    assert jobs.state_words({"status": "queued", "attempts": 1}) == "queued again (attempt 1 was interrupted)"
