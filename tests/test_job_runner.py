"""The job runner (modules/pod/job_runner.py): the sidecar that runs API jobs on its pod's ComfyUI.

Offline: ComfyUI is the in-process fake (tests/fake_comfyui.py), SQS, DynamoDB and S3 are the
session's moto server, jobs are enqueued the way the API does (item `queued`, then the
contract's message body). The runner runs in a thread of this process where that is enough,
and as the real program in a subprocess for SIGTERM and SIGKILL. Its files are copied into a
directory like the pod's /opt/comfyui-programs, so the sibling imports are tested as shipped.
Timings are scaled down (lease 3 s, message hidden lease + 2 s) so the whole file stays fast.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
import requests
from boto3.dynamodb.types import TypeDeserializer

from tests.fake_comfyui import FakeComfyUI, png_bytes
from tests.helpers import REPO, create_jobs_table

REGION = "us-west-2"
LEASE = 3  # seconds: renewed every second in the tests
# The message reappears LEASE + SLACK seconds after its receive or last renewal. The runner's
# own default (2): a lease counts whole seconds from the claim, which may come a second after
# the receive under load, and a message back before the lease has expired is hidden again at
# the cost of a receive (with 1, the poison test's third runner once found its message already
# dead-lettered).
SLACK = 2
MAX_RECEIVES = 3
PROGRAM_SOURCES = {
    "job_runner.py": REPO / "modules" / "pod" / "job_runner.py",
    "contract.py": REPO / "lambda_src" / "jobs" / "contract.py",
    "comfy_client.py": REPO / "comfyui_eks" / "comfy_client.py",
}


# --------------------------------------------------------------------------------------------
# Fixtures: the programs directory, AWS resources, runners


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pod's /opt/comfyui-programs: the runner next to the two modules it imports."""
    directory = tmp_path_factory.mktemp("comfyui-programs")
    for name, source in PROGRAM_SOURCES.items():
        shutil.copy(source, directory / name)
    return directory


@pytest.fixture(scope="session")
def jr(programs: Path) -> ModuleType:
    """job_runner imported as the pod imports it (its directory first on the path)."""
    sys.path.insert(0, str(programs))
    return importlib.import_module("job_runner")


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Standard AWS variables pointing boto3 (here and in subprocesses) at moto."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


class Jobs:
    """The job API's side, as the contract describes it: table, queue + DLQ, buckets."""

    def __init__(self, contract: ModuleType):
        self.c = contract
        suffix = uuid.uuid4().hex[:12]
        self.ddb = boto3.client("dynamodb")
        self.sqs = boto3.client("sqs")
        self.s3 = boto3.client("s3")
        self.table = f"jobs-{suffix}"
        create_jobs_table(self.ddb, self.table)
        self.dlq_url = self.sqs.create_queue(QueueName=f"jobs-dlq-{suffix}")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}
        self.queue_url = self.sqs.create_queue(
            QueueName=f"jobs-{suffix}",
            Attributes={"VisibilityTimeout": str(LEASE + SLACK), "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        self.inputs_bucket = f"inputs-{suffix}"
        self.outputs_bucket = f"outputs-{suffix}"
        for bucket in (self.inputs_bucket, self.outputs_bucket):
            self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})

    def enqueue(self, workflow: dict[str, Any], *, inputs: dict[str, bytes] | None = None, inline: bool = True) -> str:
        """POST /jobs: the item first (status queued), then the message."""
        c = self.c
        job_id = uuid.uuid4().hex
        at = c.now()
        item: dict[str, Any] = {
            c.JOB_ID: {"S": job_id},
            c.STATUS: {"S": c.QUEUED},
            c.CREATED_AT: {"N": str(at)},
            c.UPDATED_AT: {"N": str(at)},
            c.EXPIRES_AT: {"N": str(at + 86400)},
        }
        if inputs:
            keys = {}
            for name, data in inputs.items():
                keys[name] = c.input_key(job_id, name)
                self.s3.put_object(Bucket=self.inputs_bucket, Key=keys[name], Body=data)
            item[c.INPUTS] = {"M": {name: {"S": key} for name, key in keys.items()}}
        if not inline:
            key = c.workflow_key(job_id)
            self.s3.put_object(Bucket=self.inputs_bucket, Key=key, Body=json.dumps(workflow).encode())
            item[c.WORKFLOW_KEY_ATTR] = {"S": key}
        self.ddb.put_item(TableName=self.table, Item=item)
        self.send(c.message_body(job_id, workflow if inline else None))
        return job_id

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def item(self, job_id: str) -> dict[str, Any]:
        raw = self.ddb.get_item(TableName=self.table, Key={self.c.JOB_ID: {"S": job_id}}, ConsistentRead=True)
        return {k: TypeDeserializer().deserialize(v) for k, v in raw.get("Item", {}).items()}

    def status(self, job_id: str) -> str | None:
        return self.item(job_id).get(self.c.STATUS)

    def update(self, job_id: str, update: dict[str, Any]) -> None:
        self.ddb.update_item(TableName=self.table, Key={self.c.JOB_ID: {"S": job_id}}, **update)

    def messages(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages of the queue (default: the job queue)."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=url or self.queue_url, AttributeNames=names)["Attributes"]
        return int(attrs[names[0]]), int(attrs[names[1]])

    def outputs(self, job_id: str) -> dict[str, bytes]:
        listing = self.s3.list_objects_v2(Bucket=self.outputs_bucket, Prefix=self.c.output_prefix(job_id))
        keys = [entry["Key"] for entry in listing.get("Contents", [])]
        return {key: self.s3.get_object(Bucket=self.outputs_bucket, Key=key)["Body"].read() for key in keys}


@pytest.fixture
def jobs(aws_env: dict[str, str], jr: ModuleType) -> Jobs:
    return Jobs(jr.jobs)


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeComfyUI]]:
    """Fake ComfyUIs, started on demand and all stopped at the end."""
    started: list[FakeComfyUI] = []

    def start(**options: Any) -> FakeComfyUI:
        fake = FakeComfyUI(**{"step_delay": 0.01, **options})
        fake.__enter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.__exit__(None, None, None)


def settings(jobs: Jobs, fake_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The runner's settings for a test, scaled down (Config field names)."""
    values: dict[str, Any] = {
        "table": jobs.table,
        "queue_url": jobs.queue_url,
        "inputs_bucket": jobs.inputs_bucket,
        "outputs_bucket": jobs.outputs_bucket,
        "pod_name": f"comfyui-{uuid.uuid4().hex[:6]}",
        "comfyui_url": fake_url,
        "job_timeout": 30.0,
        "lease_seconds": LEASE,
        "visibility_slack": SLACK,
        "poll_wait": 0,
        "idle_interval": 0.05,
        "grace": 30.0,
        "progress_step": 50,
        "annotation_linger": 0.0,
        "scratch_dir": str(tmp_path),
        "service_account_dir": str(tmp_path / "no-service-account"),
    }
    values.update(overrides)
    return values


class Lines:
    """A stream that keeps the runner's JSON lines."""

    def __init__(self) -> None:
        self.raw: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.raw.extend(line for line in text.splitlines() if line.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def add(self, line: str) -> None:
        self.write(line)

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            raw = list(self.raw)
        out = []
        for line in raw:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if (name is None or record.get("event") == name) and all(record.get(k) == v for k, v in match.items()):
                out.append(record)
        return out

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.raw)


@functools.cache
def runner_session() -> boto3.session.Session:
    """One boto3 session for every in-process runner of this test process (a new session parses
    the service models again); made under `aws_env`, whose fake credentials every test shares."""
    return boto3.session.Session()


class ThreadRunner:
    """The runner in a thread of the test process (stopped like SIGTERM does)."""

    def __init__(self, jr: ModuleType, values: dict[str, Any]):
        self.lines = Lines()
        self.runner = jr.Runner(jr.Config(**values), stream=self.lines, environ={}, aws_session=runner_session())
        self.thread = threading.Thread(target=self.runner.run, name="job-runner", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.runner.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the runner did not stop"


@pytest.fixture
def runners(jr: ModuleType) -> Iterator[Callable[[dict[str, Any]], ThreadRunner]]:
    started: list[ThreadRunner] = []

    def start(values: dict[str, Any]) -> ThreadRunner:
        runner = ThreadRunner(jr, values)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


FLAGS = {
    "job_timeout": "--job-timeout",
    "lease_seconds": "--lease-seconds",
    "visibility_slack": "--visibility-slack",
    "poll_wait": "--poll-wait",
    "idle_interval": "--idle-interval",
    "grace": "--grace",
    "progress_step": "--progress-step",
    "annotation_linger": "--annotation-linger",
    "scratch_dir": "--scratch-dir",
    "service_account_dir": "--service-account-dir",
}


class ProcessRunner:
    """The real program, configured like the pod does: env vars for the resources, flags for timings."""

    def __init__(self, programs: Path, values: dict[str, Any]):
        env = dict(os.environ)
        env.update(
            JOBS_TABLE=values["table"],
            JOBS_QUEUE_URL=values["queue_url"],
            INPUTS_BUCKET=values["inputs_bucket"],
            OUTPUTS_BUCKET=values["outputs_bucket"],
            POD_NAME=values["pod_name"],
            COMFYUI_URL=values["comfyui_url"],
        )
        args = [f"{flag}={values[name]}" for name, flag in FLAGS.items() if name in values]
        self.lines = Lines()
        self.proc = subprocess.Popen(
            [sys.executable, str(programs / "job_runner.py"), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.add(line)

    def wait_for(self, name: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        try:
            wait_until(lambda: self.lines.events(name, **match) or self.proc.poll() is not None, timeout, name)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the runner's output:\n{self.lines.text()}") from None
        events = self.lines.events(name, **match)
        assert events, f"the runner exited ({self.proc.returncode}) without {name}:\n{self.lines.text()}"
        return events[0]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(5)


@pytest.fixture
def processes(programs: Path) -> Iterator[Callable[[dict[str, Any]], ProcessRunner]]:
    started: list[ProcessRunner] = []

    def start(values: dict[str, Any]) -> ProcessRunner:
        runner = ProcessRunner(programs, values)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def history(fake: FakeComfyUI, prompt_id: str) -> dict[str, Any]:
    """ComfyUI's history entry of a prompt (GET /history/<id>)."""
    return dict(requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()[prompt_id])


def runs_of(fake: FakeComfyUI, job_id: str) -> list[dict[str, Any]]:
    """The fake's executions of a job's prompts (the runner's prompt ids are `<job_id>-<attempt>`)."""
    return [history(fake, pid) for pid in fake.history_ids() if pid.startswith(job_id)]


def run_status(entry: dict[str, Any]) -> str:
    events = [event for event, _ in entry["status"]["messages"]]
    return "interrupted" if "execution_interrupted" in events else entry["status"]["status_str"]


def prompt_posts(fake: FakeComfyUI) -> int:
    return sum(1 for record in fake.request_log if record.method == "POST" and record.path.endswith("/prompt"))


# --------------------------------------------------------------------------------------------
# A fake Kubernetes API server: the one call the runner makes


class FakeKubeApi:
    """PATCH /api/v1/namespaces/<ns>/pods/<pod> with a JSON merge patch of two annotations."""

    ALLOWED = frozenset({"karpenter.sh/do-not-disrupt", "controller.kubernetes.io/pod-deletion-cost"})

    def __init__(self, account_dir: Path, *, namespace: str, pod: str):
        account_dir.mkdir(parents=True, exist_ok=True)
        (account_dir / "token").write_text("token-1\n")
        (account_dir / "namespace").write_text(namespace)
        self.account_dir = account_dir
        self.path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
        self.annotations: dict[str, str] = {"unrelated": "kept"}
        self.patches: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.fail_next = 0
        self.history: list[tuple[float, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = fake.handle(self.path, dict(self.headers), body)
                payload = json.dumps({"metadata": {"annotations": fake.annotations}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        token = (self.account_dir / "token").read_text().strip()
        problems = []
        if path != self.path:
            problems.append(f"path {path}")
        if headers.get("Authorization") != f"Bearer {token}":
            problems.append("token")
        if headers.get("Content-Type") != "application/merge-patch+json":
            problems.append(f"content type {headers.get('Content-Type')}")
        patch = json.loads(body)
        annotations = patch.get("metadata", {}).get("annotations", {})
        if set(patch) != {"metadata"} or set(patch["metadata"]) != {"annotations"} or set(annotations) - self.ALLOWED:
            problems.append(f"patch {patch}")
        if any(value is not None and not isinstance(value, str) for value in annotations.values()):
            problems.append(f"values {annotations}")
        if problems:
            self.problems.extend(problems)
            return 422
        if self.fail_next:
            self.fail_next -= 1
            return 503
        self.patches.append(patch)
        for key, value in annotations.items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value
        self.history.append((time.monotonic(), dict(self.annotations)))
        return 200

    def protected(self) -> bool:
        return self.annotations.get("karpenter.sh/do-not-disrupt") == "true"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Callable[[str], FakeKubeApi]]:
    servers: list[FakeKubeApi] = []

    def start(pod: str) -> FakeKubeApi:
        server = FakeKubeApi(tmp_path / f"sa-{pod}", namespace="comfyui", pod=pod)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def with_kube(values: dict[str, Any], api: FakeKubeApi) -> dict[str, Any]:
    return {**values, "kubernetes_api_url": api.url, "service_account_dir": str(api.account_dir)}


# --------------------------------------------------------------------------------------------
# Units: decisions, rewriting, configuration, retries, the Kubernetes patch


def test_refused_claim_decisions(jr: ModuleType) -> None:
    c = jr.jobs
    now = 1_000_000

    def decide(item: dict[str, Any] | None) -> tuple[str, str, int]:
        d = jr.decide_refused(item, now=now, lease_seconds=120, job_timeout=3600)
        return d.action, d.why, d.seconds

    running = {c.STATUS: c.RUNNING, c.RUNNER: "pod-a/1"}
    assert decide(None) == ("delete", "unknown_job", 0)
    for status in c.TERMINAL:
        assert decide({c.STATUS: status})[0] == "delete"
    # The owner renewed a moment ago: delivered again, hidden until the longest run could end.
    assert decide({**running, c.LEASE_UNTIL: now + 100}) == ("hide", "delivered_again_while_running", 3720)
    # The owner stopped renewing (or whole seconds): visible once a claim can succeed.
    assert decide({**running, c.LEASE_UNTIL: now + 10}) == ("hide", "lease_not_expired", 12)
    assert decide({**running, c.LEASE_UNTIL: now}) == ("hide", "lease_not_expired", 2)
    # A cancel its dead (or releasing) owner never recorded; a live owner records it itself.
    assert decide({**running, c.LEASE_UNTIL: now - 1, c.CANCEL_REQUESTED: True})[0] == "cancel_abandoned"
    assert decide({c.STATUS: c.QUEUED, c.CANCEL_REQUESTED: True})[0] == "cancel_abandoned"
    assert decide({**running, c.LEASE_UNTIL: now + 100, c.CANCEL_REQUESTED: True})[0] == "hide"
    # Nobody could ever claim it: left for the dead-letter queue and its Lambda.
    assert decide({c.STATUS: "paused"})[0] == "leave"


def test_load_image_inputs_are_rewritten_and_output_keys_stay_under_the_job_prefix(jr: ModuleType) -> None:
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "other.png"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "cat.png"}},
    }
    refs = {"cat.png": "jobs/j/cat.png", "mask.png": "jobs/j/mask (1).png"}
    assert jr.rewrite_load_images(workflow, refs) == 2
    assert [workflow[n]["inputs"].get("image") for n in "123"] == ["jobs/j/cat.png", "jobs/j/mask (1).png", "other.png"]
    assert workflow["4"]["inputs"]["text"] == "cat.png"

    job = "a" * 32
    out = jr.comfy.OutputFile("9", "images", "x_00001_.png", "", "output")
    assert jr.output_key(job, out) == f"jobs/{job}/x_00001_.png"
    nested = jr.comfy.OutputFile("9", "images", "../../y.png", "../sub/./dir", "temp")
    assert jr.output_key(job, nested) == f"jobs/{job}/temp/sub/dir/y.png"


def test_configuration_from_env_and_flags(jr: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"JOBS_TABLE": "t", "JOBS_QUEUE_URL": "q", "INPUTS_BUCKET": "i", "OUTPUTS_BUCKET": "o"}
    config = jr.parse_config([], {**env, "POD_NAME": "comfyui-abc", "JOB_RUNNER_GRACE_SECONDS": "12"})
    assert (config.pod_name, config.grace, config.lease_seconds) == ("comfyui-abc", 12.0, jr.jobs.LEASE_SECONDS)
    assert (config.comfyui_url, config.poll_wait, config.job_timeout) == ("http://127.0.0.1:8188", 20, 3600.0)
    assert config.visibility == jr.jobs.LEASE_SECONDS + 2 and config.renew_interval == jr.jobs.LEASE_SECONDS / 3
    flagged = jr.parse_config(["--grace=3", "--lease-seconds=9"], {**env, "JOBS_TIMEOUT_SECONDS": "60"})
    assert (flagged.grace, flagged.lease_seconds, flagged.job_timeout) == (3.0, 9, 60.0)
    with pytest.raises(SystemExit) as exc:
        jr.parse_config([], {"JOBS_TABLE": "t"})
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        jr.parse_config(["--help"], {})
    help_text = capsys.readouterr().out
    assert exc.value.code == 0 and "JOBS_QUEUE_URL" in help_text and "--grace" in help_text


def test_aws_errors_are_retried_and_logged_one_line_each(jr: ModuleType, aws_env: dict[str, str]) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    lines = Lines()
    aws = jr.Aws(jr.Log("pod/x", lines), attempts=3, read_timeout=5, sleep=lambda s: None)
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem")
    failures: list[Exception] = [throttled, EndpointConnectionError(endpoint_url="https://sqs")]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert aws.call("dynamodb.update_item", flaky, job_id="j") == "ok"
    logged = lines.events("aws_error")
    assert [e["attempt"] for e in logged] == [1, 2] and all(e["job_id"] == "j" for e in logged)
    assert "ThrottlingException" in logged[0]["error"] and "EndpointConnectionError" in logged[1]["error"]

    def raises(exc: Exception) -> Callable[[], None]:
        def call() -> None:
            raise exc

        return call

    refused = ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}, "UpdateItem")
    with pytest.raises(ClientError):
        aws.call("dynamodb.update_item", raises(refused))
    assert len(lines.events("aws_error")) == 2, "a refused condition is an answer, not an error"
    with pytest.raises(jr.AwsError):
        aws.call("sqs.receive_message", raises(throttled))
    assert len(lines.events("aws_error")) == 5


def test_pod_annotator_patches_its_pod_with_a_merge_patch(jr: ModuleType, kube: Callable[[str], FakeKubeApi]) -> None:
    api = kube("comfyui-7d9f-abcde")
    lines = Lines()
    config = jr.Config(
        table="t", queue_url="q", inputs_bucket="i", outputs_bucket="o", pod_name="comfyui-7d9f-abcde",
        kubernetes_api_url=api.url, service_account_dir=str(api.account_dir),
    )  # fmt: skip
    annotator = jr.PodAnnotator(jr.kube_api(config, {}, jr.Log("x", lines)), jr.Log("x", lines), cost=7, linger=0)
    annotator.sync()  # the first look writes the state: stale annotations of a crashed runner go
    assert api.annotations == {"unrelated": "kept"}
    annotator.set_busy("job", True)
    assert api.annotations == {
        "unrelated": "kept",
        "karpenter.sh/do-not-disrupt": "true",
        "controller.kubernetes.io/pod-deletion-cost": "7",
    }
    (api.account_dir / "token").write_text("token-2\n")  # the kubelet rotated the projected token
    api.fail_next = 1
    annotator.set_busy("job", False)
    assert api.protected() and lines.events("annotation_error"), "a failed patch is logged, not raised"
    annotator.clear()  # forced: retried at once on exit
    assert api.annotations == {"unrelated": "kept"}
    assert not api.problems
    assert api.patches[-1] == {
        "metadata": {
            "annotations": {"karpenter.sh/do-not-disrupt": None, "controller.kubernetes.io/pod-deletion-cost": None}
        }
    }
    # Outside Kubernetes (no token) the runner works without annotations.
    bare = jr.Config(table="t", queue_url="q", inputs_bucket="i", outputs_bucket="o", pod_name="p",
                     service_account_dir=str(api.account_dir / "missing"))  # fmt: skip
    assert jr.kube_api(bare, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, jr.Log("x", lines)) is None


# --------------------------------------------------------------------------------------------
# The runner in a thread


def test_job_completes_and_its_outputs_land_under_the_job_prefix(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes()
    c = jr.jobs
    workflow = fake.sample_prompt(steps=20, seed=1, prefix="job/render")
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "cat.png"}}
    workflow["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "job/input"}}
    with_input = jobs.enqueue(workflow, inputs={"cat.png": png_bytes(16, 8, (200, 10, 10))})
    from_s3 = jobs.enqueue(fake.sample_prompt(steps=10, seed=2), inline=False)
    runner = runners(settings(jobs, fake.url, tmp_path))

    wait_until(lambda: {jobs.status(with_input), jobs.status(from_s3)} == {c.SUCCEEDED}, 15, "both jobs done")
    for job_id, files in ((with_input, 2), (from_s3, 1)):
        item = jobs.item(job_id)
        assert item[c.ATTEMPTS] == 1 and item[c.PROMPT_ID] == f"{job_id}-1"
        assert len(item[c.OUTPUTS]) == files
        stored = jobs.outputs(job_id)
        assert sorted(stored) == sorted(item[c.OUTPUTS])
        entry = history(fake, f"{job_id}-1")
        for image in (i for node in entry["outputs"].values() for i in node["images"]):
            served = requests.get(f"{fake.url}/view", params=image, timeout=5).content
            key = c.output_prefix(job_id) + "/".join(p for p in (image["subfolder"], image["filename"]) if p)
            assert stored[key] == served, "the object is exactly what ComfyUI's /view served"
    executed = history(fake, f"{with_input}-1")["prompt"][2]
    assert executed["10"]["inputs"]["image"] == f"{c.comfyui_subfolder(with_input)}/cat.png"
    wait_until(lambda: jobs.messages() == (0, 0), 5, "messages deleted")

    events = [e["event"] for e in runner.lines.events() if e.get("job_id") == with_input]
    for expected in ("claimed", "inputs_uploaded", "submitted", "started", "progress", "generated", "finished"):
        assert expected in events
    assert "a photo of a cat" not in runner.lines.text(), "workflow contents never reach the logs"


def test_pod_is_annotated_while_a_job_runs_and_not_after(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, kube: Any, tmp_path: Path
) -> None:
    fake = fakes(step_delay=0.02)
    values = settings(jobs, fake.url, tmp_path)
    api = kube(values["pod_name"])
    job_id = jobs.enqueue(fake.sample_prompt(steps=40, seed=3))
    runner = runners(with_kube(values, api))
    wait_until(lambda: runner.lines.events("started", job_id=job_id), 10, "generation started")
    assert api.protected()
    assert api.annotations["controller.kubernetes.io/pod-deletion-cost"] == "1000000"
    wait_until(lambda: jobs.status(job_id) == jr.jobs.SUCCEEDED, 10, "job done")
    wait_until(lambda: not api.protected(), 5, "annotations removed")
    assert api.annotations == {"unrelated": "kept"} and not api.problems
    assert [state.get("karpenter.sh/do-not-disrupt") for _, state in api.history] == [None, "true", None]


def test_cancelled_while_queued_is_dropped_without_reaching_comfyui(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes()
    job_id = jobs.enqueue(fake.sample_prompt(seed=4))
    jobs.update(job_id, jr.jobs.cancel_queued_update(at=jr.jobs.now()))
    runner = runners(settings(jobs, fake.url, tmp_path))
    wait_until(lambda: runner.lines.events("claim_refused", job_id=job_id), 5, "refusal")
    wait_until(lambda: jobs.messages() == (0, 0), 5, "message deleted")
    assert runner.lines.events("claim_refused")[0]["action"] == "delete"
    assert prompt_posts(fake) == 0 and jobs.status(job_id) == jr.jobs.CANCELLED


def test_cancelled_while_running_is_interrupted_and_recorded(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes(step_delay=0.02)
    job_id = jobs.enqueue(fake.sample_prompt(steps=400, seed=5))  # 8 s of sampling
    runner = runners(settings(jobs, fake.url, tmp_path))
    wait_until(lambda: runner.lines.events("started", job_id=job_id), 10, "generation started")
    asked = time.monotonic()
    jobs.update(job_id, jr.jobs.request_cancel_update(at=jr.jobs.now()))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.CANCELLED, 5, "cancelled")
    assert time.monotonic() - asked < LEASE / 3 + 2, "seen at the next renewal"
    assert [run_status(entry) for entry in runs_of(fake, job_id)] == ["interrupted"]
    wait_until(lambda: jobs.messages() == (0, 0), 5, "message deleted")
    assert not jobs.outputs(job_id)


@pytest.mark.parametrize("fault", ["rejected", "execution_error"])
def test_a_failing_workflow_fails_once_and_is_not_retried(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path, fault: str
) -> None:
    fake = fakes()
    workflow = fake.sample_prompt(steps=5, seed=6)
    if fault == "rejected":
        workflow["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
        expected = "Value not in list"
    else:
        fake.fail_node(class_type="VAEDecode")
        expected = "out of memory"
    job_id = jobs.enqueue(workflow)
    runner = runners(settings(jobs, fake.url, tmp_path))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.FAILED, 10, "failed")
    item = jobs.item(job_id)
    assert expected in item[jr.jobs.ERROR] and item[jr.jobs.ATTEMPTS] == 1
    wait_until(lambda: jobs.messages() == (0, 0), 5, "message deleted: never run again")
    assert jobs.messages(jobs.dlq_url) == (0, 0) and not runner.lines.events("released")
    assert runner.lines.events("finished", job_id=job_id)[0]["reason"] == fault
    assert expected not in runner.lines.text(), "ComfyUI's text goes to the item, not the logs"


def test_job_timeout_interrupts_and_fails(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes(step_delay=0.02)
    job_id = jobs.enqueue(fake.sample_prompt(steps=500, seed=7))
    runners(settings(jobs, fake.url, tmp_path, job_timeout=1))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.FAILED, 10, "failed")
    assert "did not finish within 1 s" in jobs.item(job_id)[jr.jobs.ERROR]
    wait_until(lambda: [run_status(e) for e in runs_of(fake, job_id)] == ["interrupted"], 5, "interrupted")
    assert jobs.messages() == (0, 0)


def test_comfyui_busy_with_browser_prompts_takes_no_job_until_idle(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, kube: Any, tmp_path: Path
) -> None:
    fake = fakes(step_delay=0.02)
    browser = fake.add_foreign_prompts(2, steps=20)  # ~0.8 s of an artist's work
    job_id = jobs.enqueue(fake.sample_prompt(steps=5, seed=8))
    values = settings(jobs, fake.url, tmp_path)
    api = kube(values["pod_name"])
    runner = runners(with_kube(values, api))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.SUCCEEDED, 10, "job done")

    events = [(e["event"], e.get("state") or e.get("reasons")) for e in runner.lines.events()]
    assert events.index(("comfyui_state", "busy")) < events.index(("comfyui_state", "idle"))
    assert events.index(("comfyui_state", "idle")) < events.index(("claimed", None)), "no message taken while busy"
    assert ("annotated", ["comfyui"]) in events, "an artist's generation protects the pod too"

    def stamp(prompt_id: str, event: str) -> int:
        messages = history(fake, prompt_id)["status"]["messages"]
        return int(next(data["timestamp"] for name, data in messages if name == event))

    assert stamp(f"{job_id}-1", "execution_start") >= max(stamp(pid, "execution_success") for pid in browser)
    wait_until(lambda: not api.protected(), 5, "annotations removed when idle")


def test_duplicate_delivery_gives_one_result_and_one_comfyui_run(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake_a, fake_b = fakes(step_delay=0.02), fakes(step_delay=0.02)
    workflow = fake_a.sample_prompt(steps=10, seed=9)
    job_id = jobs.enqueue(workflow)
    jobs.send(jr.jobs.message_body(job_id, workflow))  # SQS delivers it twice
    # A short job timeout: the second copy, hidden while its job may still run (timeout + lease),
    # comes back soon and is dropped then. Both runners claim at the same moment: only the
    # moto server's atomic conditional writes (tests/moto_server.py) keep the second claim from
    # succeeding too, as DynamoDB's do.
    fast = {"job_timeout": 2}
    a = runners(settings(jobs, fake_a.url, tmp_path, **fast))
    b = runners(settings(jobs, fake_b.url, tmp_path, **fast))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.SUCCEEDED, 10, "job done")
    wait_until(lambda: jobs.messages() == (0, 0), 15, "both copies deleted")
    assert len(runs_of(fake_a, job_id)) + len(runs_of(fake_b, job_id)) == 1
    assert len(a.lines.events("finished") + b.lines.events("finished")) == 1
    assert len(a.lines.events("claim_refused") + b.lines.events("claim_refused")) >= 1
    assert jobs.item(job_id)[jr.jobs.ATTEMPTS] == 1 and jobs.messages(jobs.dlq_url) == (0, 0)


def test_malformed_messages_are_deleted_and_the_runner_carries_on(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes()
    for body in ("not json", '{"job_id": "../etc"}', '{"job_id": "' + "a" * 32 + '", "workflow": []}', "[]"):
        jobs.send(body)
    unknown = uuid.uuid4().hex
    jobs.send(jr.jobs.message_body(unknown, {}))  # no item: expired or deleted
    job_id = jobs.enqueue(fake.sample_prompt(steps=5, seed=10))
    runner = runners(settings(jobs, fake.url, tmp_path))
    wait_until(lambda: jobs.status(job_id) == jr.jobs.SUCCEEDED, 10, "good job done")
    wait_until(lambda: jobs.messages() == (0, 0), 5, "all deleted")
    assert len(runner.lines.events("malformed_message")) == 4
    assert runner.lines.events("claim_refused", job_id=unknown)[0]["why"] == "unknown_job"
    assert not runner.lines.events("runner_error")


def test_comfyui_unreachable_means_waiting(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes()
    url = fake.url
    fake.__exit__(None, None, None)  # the port is closed: ComfyUI is starting
    job_id = jobs.enqueue({"1": {"class_type": "SaveImage", "inputs": {}}})
    runner = runners(settings(jobs, url, tmp_path))
    wait_until(lambda: runner.lines.events("comfyui_state", state="unreachable"), 5, "noticed")
    time.sleep(0.5)
    assert jobs.messages() == (1, 0) and jobs.status(job_id) == jr.jobs.QUEUED


def test_cancel_requested_of_a_dead_runner_is_recorded(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    fake = fakes()
    c = jr.jobs
    job_id = jobs.enqueue(fake.sample_prompt(seed=11))
    past = c.now() - 2 * LEASE
    jobs.update(job_id, jr.with_lease(c.claim_update(runner="gone/0", at=past), at=past, lease_seconds=LEASE))
    jobs.update(job_id, c.request_cancel_update(at=past))
    runners(settings(jobs, fake.url, tmp_path))
    wait_until(lambda: jobs.status(job_id) == c.CANCELLED, 5, "cancelled")
    wait_until(lambda: jobs.messages() == (0, 0), 5, "message deleted")
    assert prompt_posts(fake) == 0


# --------------------------------------------------------------------------------------------
# The real program: SIGKILL, SIGTERM, poison


def test_killed_runner_job_runs_again_elsewhere_and_completes_once(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, processes: Any, tmp_path: Path
) -> None:
    c = jr.jobs
    doomed, healthy = fakes(step_delay=0.05), fakes(step_delay=0.002)
    job_id = jobs.enqueue(doomed.sample_prompt(steps=200, seed=12))
    lease = 1
    first = processes(settings(jobs, doomed.url, tmp_path, lease_seconds=lease))
    first.wait_for("started", job_id=job_id)
    first.kill()  # the node is gone, and the ComfyUI with it
    doomed.__exit__(None, None, None)
    killed_at = time.monotonic()
    second = runners(settings(jobs, healthy.url, tmp_path, lease_seconds=lease))
    wait_until(lambda: jobs.status(job_id) == c.SUCCEEDED, 15, "done elsewhere")
    assert time.monotonic() - killed_at < lease + SLACK + 3, "picked up once the lease expired"
    item = jobs.item(job_id)
    assert item[c.ATTEMPTS] == 2 and item[c.RUNNER] == second.runner.id
    assert [run_status(entry) for entry in runs_of(healthy, job_id)] == ["success"]
    assert len(second.lines.events("finished")) == 1 and not first.lines.events("finished")
    assert sorted(jobs.outputs(job_id)) == sorted(item[c.OUTPUTS])
    wait_until(lambda: jobs.messages() == (0, 0), 5, "message deleted")


def test_a_late_claim_keeps_its_message_hidden_until_the_lease_has_expired(
    jr: ModuleType,
    jobs: Jobs,
    fakes: Callable[..., FakeComfyUI],
    monkeypatch: pytest.MonkeyPatch,
    runners: Any,
    tmp_path: Path,
) -> None:
    """A message is hidden from its receive on, a lease runs from its claim: a claim that comes
    late (a retried conditional write, a slow ComfyUI probe) must not let the message show
    while the lease still runs: were the runner to die right after the claim, the next claim
    would be refused as a duplicate delivery and the message hidden for job timeout + lease, at
    the cost of a receive. Here the first claim comes 2 s after its receive, the slack is 1 s, and its
    runner dies right after claiming (no renewal, no release): the next runner's receive must
    claim the job."""
    lease, slack, late = 1, 1, 2.0
    claim = jr.JobTable.claim
    attempts: list[int] = []

    def late_first_claim(table: Any, job_id: str) -> Any:
        if not attempts:
            time.sleep(late)
        return claim(table, job_id)

    def dies(run: Any) -> None:
        attempts.append(run.attempt)
        run.runner.request_stop()  # its loop ends: no renewal, no release, no other receive

    monkeypatch.setattr(jr.JobTable, "claim", late_first_claim)
    monkeypatch.setattr(jr.JobRun, "execute", dies)
    fake = fakes()
    job_id = jobs.enqueue(fake.sample_prompt(steps=1, seed=16))
    values = settings(jobs, fake.url, tmp_path, lease_seconds=lease, visibility_slack=slack)
    first = runners(values)
    first.thread.join(10)
    assert attempts == [1] and not first.thread.is_alive()
    second = runners(values)
    wait_until(lambda: len(attempts) == 2 or second.lines.events("claim_refused"), 15, "received again")
    assert not second.lines.events("claim_refused"), second.lines.text()
    assert attempts == [1, 2] and jobs.item(job_id)[jr.jobs.ATTEMPTS] == 2


def test_sigterm_releases_a_long_job_within_the_grace_and_another_runner_finishes_it(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, processes: Any, tmp_path: Path
) -> None:
    """The 30 s bound, scaled: grace 1 s; the job would need 20 s more. Long polls (1 s) too."""
    c = jr.jobs
    fake, other = fakes(step_delay=0.05), fakes(step_delay=0.001)
    job_id = jobs.enqueue(fake.sample_prompt(steps=400, seed=13))
    grace = 1.0
    first = processes(settings(jobs, fake.url, tmp_path, grace=grace, poll_wait=1))
    first.wait_for("started", job_id=job_id)
    sent = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(grace + 5) == 0
    took = time.monotonic() - sent
    assert grace <= took < grace + 2.5, f"exited {took:.2f} s after SIGTERM"
    first.close()
    assert first.lines.events("released", job_id=job_id)[0]["reason"] == "shutdown"
    assert [run_status(entry) for entry in runs_of(fake, job_id)] == ["interrupted"]
    assert jobs.status(job_id) == c.QUEUED and jobs.messages() == (1, 0), "visible again at once"
    runners(settings(jobs, other.url, tmp_path))
    wait_until(lambda: jobs.status(job_id) == c.SUCCEEDED, 10, "finished by another runner")
    assert jobs.item(job_id)[c.ATTEMPTS] == 2


def test_stop_lets_a_job_finish_within_the_grace(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], runners: Any, tmp_path: Path
) -> None:
    """What SIGTERM calls (request_stop; the program's signal handler is tested above)."""
    fake = fakes(step_delay=0.02)
    job_id = jobs.enqueue(fake.sample_prompt(steps=40, seed=14))
    runner = runners(settings(jobs, fake.url, tmp_path, grace=10))
    wait_until(lambda: runner.lines.events("started", job_id=job_id), 10, "generation started")
    runner.stop()
    assert jobs.status(job_id) == jr.jobs.SUCCEEDED and not runner.lines.events("released")
    assert jobs.messages() == (0, 0) and runner.lines.events()[-1]["event"] == "runner_stopped"


def test_poison_job_reaches_the_dead_letter_queue(
    jr: ModuleType, jobs: Jobs, fakes: Callable[..., FakeComfyUI], processes: Any, tmp_path: Path
) -> None:
    """A job whose runner dies every time (say it takes the node down): after max receives
    SQS moves it to the DLQ (the dead-letter Lambda then fails it: not tested here).

    Each runner has a ComfyUI of its own (a pod: the runner dies with its ComfyUI), whose
    generation (5 steps of 2 s) cannot end before the runner is killed: a job that finished
    first would be deleted from the queue, not dead-lettered."""
    job_id = jobs.enqueue(fakes().sample_prompt(steps=5, seed=15))
    for attempt in range(1, MAX_RECEIVES + 1):
        runner = processes(settings(jobs, fakes(step_delay=2).url, tmp_path, lease_seconds=1))
        runner.wait_for("claimed", job_id=job_id, timeout=10)
        runner.kill()
        assert jobs.item(job_id)[jr.jobs.ATTEMPTS] == attempt
        assert jobs.status(job_id) == jr.jobs.RUNNING
    # Its receive moves the message: SQS counted MAX_RECEIVES receives.
    last = processes(settings(jobs, fakes().url, tmp_path, lease_seconds=1))
    wait_until(lambda: jobs.messages(jobs.dlq_url)[0] == 1, 10, "message in the DLQ")
    body = jobs.sqs.receive_message(QueueUrl=jobs.dlq_url)["Messages"][0]["Body"]
    assert jr.jobs.parse_message(body)[0] == job_id
    assert jobs.messages() == (0, 0) and not last.lines.events("claimed")
