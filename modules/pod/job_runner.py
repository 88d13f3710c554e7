"""Job runner: the container next to ComfyUI in every ComfyUI pod that runs the job API's jobs.

The job API (lambda_src/jobs/) writes one DynamoDB item and one SQS message per job; this
program takes a message only while its own ComfyUI is idle (an artist's prompts in the browser
come first), claims the job with the contract's conditional write, runs the workflow through
the local ComfyUI API (comfy_client), copies every output file to the outputs bucket and
records the one result. `contract.py` and `comfy_client.py` are shipped next to this file (the
pod's /opt/comfyui-programs), so they are imported as sibling modules: Python puts a script's
own directory first on sys.path.

Why it is shaped like this:

- At-least-once delivery, exactly one result. SQS may deliver a message twice and a pod may
  die at any moment, so nothing here trusts the message: the claim (`claim_update`) decides who
  runs a job, the lease is renewed every third of its length while the job runs (the message
  is hidden again at the claim and at every renewal for as long, plus a small slack because
  leases count whole seconds), and `finish_update` records a result only for the runner that
  still owns the job. A runner that dies stops renewing: its message reappears after the lease
  has expired and another runner's claim succeeds (the attempt is counted). After
  `jobs.max_attempts` receives SQS moves the message to the dead-letter queue, whose Lambda
  fails the job.
- A refused claim says why in the item as it was (ReturnValuesOnConditionCheckFailure, so no
  GetItem): a finished or cancelled job -> the message is deleted; a job a live runner holds
  -> the message is hidden until that runner's lease could have expired (or, when its owner
  clearly is alive, until the longest run could have ended, so repeated deliveries do not use
  up a long job's receives); an unknown job (TTL expired, deleted) -> deleted. See
  `decide_refused`.
- Failures of the workflow are final, failures of the infrastructure are retried: a workflow
  ComfyUI rejects (400 node errors) or that raises (execution_error), a missing workflow or
  input object, or the job timeout fail the job and delete the message; ComfyUI restarting,
  S3 or DynamoDB being unreachable, or someone else's interrupt give the job back
  (`release_update`, message visible at once) so it runs again, here or elsewhere.
- SIGTERM (Spot notice, drain, scale-down): no new job; a running job gets --grace seconds to
  finish, then ComfyUI is interrupted, the job released and its message made visible at once,
  and the program exits 0.
- Pod annotations: while a job runs, or ComfyUI runs anyone's prompt (an artist's generation
  is as costly to lose as a job), the pod carries `karpenter.sh/do-not-disrupt` and a high
  `controller.kubernetes.io/pod-deletion-cost`, so Karpenter does not disrupt its node and a
  scale-down removes idle pods first; they are removed --annotation-linger seconds after the
  pod became idle (back-to-back jobs and an artist's next prompt do not flap them).
- Logs: one JSON object per line and per event, never workflow contents (ComfyUI's error texts
  go to the job's `error` attribute, logs name only nodes and error types). Every failed AWS
  call is one line, and is retried with backoff.

    python job_runner.py [--lease-seconds 120] [--grace 30] ...   (see --help; env vars too)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import mimetypes
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import boto3  # type: ignore[import-untyped]
import comfy_client as comfy
import contract as jobs
import requests
import websocket
from boto3.dynamodb.types import TypeDeserializer  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError  # type: ignore[import-untyped]

T = TypeVar("T")
Item = dict[str, Any]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# LoadImage-style nodes whose `image` input names a file in ComfyUI's input folder.
LOAD_IMAGE_NODES = frozenset({"LoadImage", "LoadImageMask"})
MAX_VISIBILITY_SECONDS = 43200  # SQS's limit
# AWS error codes worth another try (throttling, server side, KMS throttling behind S3/SQS/DynamoDB).
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TransactionInProgressException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMS.ThrottlingException",
        "KMSThrottlingException",
        "KmsThrottled",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


# --------------------------------------------------------------------------------------------
# Logging


class Log:
    """One JSON object per line: the event, the runner, the job; thread-safe (the lease thread logs too)."""

    def __init__(self, runner: str, stream: IO[str] | None = None):
        self.runner = runner
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {"time": stamp, "event": event, "runner": self.runner}
        record.update((key, value) for key, value in fields.items() if value is not None)
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def describe(exc: BaseException) -> str:
    """One line for a log: the exception type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Config:
    """Everything the runner reads from its environment and command line."""

    table: str
    queue_url: str
    inputs_bucket: str
    outputs_bucket: str
    pod_name: str
    pod_namespace: str | None = None
    comfyui_url: str = "http://127.0.0.1:8188"
    job_timeout: float = 3600.0
    lease_seconds: int = jobs.LEASE_SECONDS
    visibility_slack: int = 2
    poll_wait: int = 20
    idle_interval: float = 2.0
    grace: float = 30.0
    progress_step: int = 25
    deletion_cost: int = 1_000_000
    annotation_linger: float = 30.0
    scratch_dir: str = field(default_factory=tempfile.gettempdir)
    kubernetes_api_url: str | None = None
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    aws_attempts: int = 6
    heartbeat_file: str | None = None

    @property
    def renew_interval(self) -> float:
        """The contract renews at a third of the lease: two renewals may fail before it expires."""
        return self.lease_seconds / 3

    @property
    def visibility(self) -> int:
        """How long a message stays hidden from a receive, a claim or a renewal: the lease plus
        slack, so it reappears only after the lease (whole seconds in DynamoDB) has certainly
        expired."""
        return self.lease_seconds + self.visibility_slack


# (flag, env var, type, default, help); contract env names for the job resources.
_SETTINGS: tuple[tuple[str, str, type, Any, str], ...] = (
    ("--table", jobs.TABLE_ENV, str, None, "DynamoDB table of the jobs (required)"),
    ("--queue-url", jobs.QUEUE_ENV, str, None, "SQS queue URL of the jobs (required)"),
    ("--inputs-bucket", jobs.INPUTS_BUCKET_ENV, str, None, "bucket with workflows and input images (required)"),
    ("--outputs-bucket", jobs.OUTPUTS_BUCKET_ENV, str, None, "bucket the outputs go to (required)"),
    ("--pod-name", "POD_NAME", str, None, "this pod's name (default: the host name)"),
    ("--pod-namespace", "POD_NAMESPACE", str, None, "this pod's namespace (default: the service account's)"),
    ("--comfyui-url", "COMFYUI_URL", str, "http://127.0.0.1:8188", "the ComfyUI of this pod"),
    ("--job-timeout", jobs.TIMEOUT_SECONDS_ENV, float, 3600.0, "seconds a job may run before it is failed"),
    ("--lease-seconds", "JOB_RUNNER_LEASE_SECONDS", int, jobs.LEASE_SECONDS, "claim length; renewed every third"),
    ("--visibility-slack", "JOB_RUNNER_VISIBILITY_SLACK_SECONDS", int, 2, "message hidden this much past the lease"),
    ("--poll-wait", "JOB_RUNNER_POLL_WAIT_SECONDS", int, 20, "SQS long-poll seconds (0-20; 0 = short polls)"),
    ("--idle-interval", "JOB_RUNNER_IDLE_INTERVAL_SECONDS", float, 2.0, "seconds between looks at a busy ComfyUI"),
    ("--grace", "JOB_RUNNER_GRACE_SECONDS", float, 30.0, "on SIGTERM, seconds a running job may still finish"),
    ("--progress-step", "JOB_RUNNER_PROGRESS_STEP_PERCENT", int, 25, "log progress every N percent (0: never)"),
    ("--deletion-cost", "JOB_RUNNER_DELETION_COST", int, 1_000_000, "pod-deletion-cost while busy"),
    ("--annotation-linger", "JOB_RUNNER_ANNOTATION_LINGER_SECONDS", float, 30.0, "keep annotations after idle"),
    ("--scratch-dir", "JOB_RUNNER_SCRATCH_DIR", str, None, "where outputs are staged (default: the temp dir)"),
    ("--kubernetes-api-url", "KUBERNETES_API_URL", str, None, "API server (default: from KUBERNETES_SERVICE_*)"),
    ("--service-account-dir", "JOB_RUNNER_SERVICE_ACCOUNT_DIR", str, SERVICE_ACCOUNT_DIR, "token, ca.crt, namespace"),
    ("--aws-attempts", "JOB_RUNNER_AWS_ATTEMPTS", int, 6, "tries per AWS call before giving up on it"),
    (
        "--heartbeat-file",
        "JOB_RUNNER_HEARTBEAT_FILE",
        str,
        None,
        "touched by the main loop and, during a job, by its lease keeper (a liveness probe reads its age)",
    ),
)
_REQUIRED = ("table", "queue_url", "inputs_bucket", "outputs_bucket")


def parse_config(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over the defaults; exits 2 on bad input."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="job_runner.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Every flag also reads the environment variable named in its help. The AWS region and "
        "credentials come from the standard AWS variables (AWS_REGION, EKS Pod Identity or IRSA).",
    )
    envs: dict[str, str] = {}
    for flag, env, kind, default, text in _SETTINGS:
        dest = flag[2:].replace("-", "_")
        envs[dest] = env
        raw = environ.get(env)
        try:
            value = kind(raw) if raw not in (None, "") else default
        except ValueError:
            parser.error(f"{env}={raw!r} is not a valid {kind.__name__}")
        parser.add_argument(flag, dest=dest, type=kind, default=value, help=f"{text} [env {env}; default {default}]")
    args = parser.parse_args(argv)
    missing = [f"{envs[dest]} (--{dest.replace('_', '-')})" for dest in _REQUIRED if not getattr(args, dest)]
    if missing:
        parser.error("missing settings: " + ", ".join(missing))
    if not 0 <= args.poll_wait <= 20:
        parser.error("--poll-wait must be within 0-20 (SQS's long-poll limit)")
    if args.lease_seconds < 1 or args.grace < 0 or args.job_timeout <= 0:
        parser.error("--lease-seconds must be >= 1, --grace >= 0 and --job-timeout > 0")
    values = vars(args)
    values["pod_name"] = args.pod_name or socket.gethostname()
    values["scratch_dir"] = args.scratch_dir or tempfile.gettempdir()
    return Config(**values)


# --------------------------------------------------------------------------------------------
# AWS: one wrapper that retries and logs, the table's transitions, the queue


class AwsError(Exception):
    """An AWS call still failing after its retries (each failure was logged)."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def retryable(exc: Exception) -> bool:
    """Throttling, server-side errors and transport failures; never a refused condition or a 4xx."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_code(exc) in RETRYABLE_CODES or status >= 500
    return isinstance(exc, BotoCoreError) and not isinstance(exc, ParamValidationError)


class Aws:
    """The three clients, with botocore's own retries off so that every failed try is logged here."""

    def __init__(
        self,
        log: Log,
        *,
        attempts: int,
        read_timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        session: boto3.session.Session | None = None,
    ):
        """`session`: a new one unless given (the tests share one: each parses the service models)."""
        self.log = log
        self.attempts = max(1, attempts)
        self.sleep = sleep
        session = session or boto3.session.Session()
        config = BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=read_timeout,
            max_pool_connections=8,
        )
        self.sqs = session.client("sqs", config=config)
        self.dynamodb = session.client("dynamodb", config=config)
        self.s3 = session.client("s3", config=config)

    def call(self, what: str, fn: Callable[[], T], **context: Any) -> T:
        """fn(), retried with jittered exponential backoff while the failure is transient."""
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (ClientError, BotoCoreError) as exc:
                if not retryable(exc):
                    raise
                last = attempt == self.attempts
                wait = None if last else round(random.uniform(delay / 2, delay), 3)
                self.log("aws_error", call=what, error=describe(exc), attempt=attempt, retry_in=wait, **context)
                if last:
                    raise AwsError(f"{what} failed {attempt} times: {describe(exc)}") from exc
                self.sleep(wait or 0.0)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


_DESERIALIZER = TypeDeserializer()


def decode_item(raw: Mapping[str, Any] | None) -> Item | None:
    """A DynamoDB item in plain Python (numbers are Decimal)."""
    if not raw:
        return None
    return {key: _DESERIALIZER.deserialize(value) for key, value in raw.items()}


def with_lease(update: dict[str, Any], *, at: int, lease_seconds: int) -> dict[str, Any]:
    """The contract's claim/renew write with this runner's lease length (contract.LEASE_SECONDS
    is fixed in the contract; tests and benchmarks scale it down)."""
    values = dict(update["ExpressionAttributeValues"])
    values[":lease"] = {"N": str(at + lease_seconds)}
    return {**update, "ExpressionAttributeValues": values}


@dataclass(frozen=True)
class Write:
    """A conditional write: done, and the item after it (done) or as it was (refused)."""

    ok: bool
    item: Item | None


class JobTable:
    """The contract's conditional writes on one job, as this runner."""

    def __init__(self, aws: Aws, table: str, *, runner: str, lease_seconds: int):
        self.aws = aws
        self.table = table
        self.runner = runner
        self.lease_seconds = lease_seconds

    def claim(self, job_id: str) -> Write:
        at = jobs.now()
        update = with_lease(jobs.claim_update(runner=self.runner, at=at), at=at, lease_seconds=self.lease_seconds)
        result = self._update("claim", job_id, update)
        if not result.ok and self._mine(result.item, jobs.RUNNING):
            return Write(True, result.item)  # a retried claim whose first try went through
        return result

    def renew(self, job_id: str, prompt_id: str | None = None) -> Write:
        at = jobs.now()
        update = jobs.renew_update(runner=self.runner, at=at, prompt_id=prompt_id)
        return self._update("renew", job_id, with_lease(update, at=at, lease_seconds=self.lease_seconds))

    def finish(self, job_id: str, status: str, *, outputs: list[str] | None = None, error: str | None = None) -> Write:
        update = jobs.finish_update(runner=self.runner, at=jobs.now(), status=status, outputs=outputs, error=error)
        result = self._update("finish", job_id, update)
        if not result.ok and self._mine(result.item, status):
            return Write(True, result.item)  # a retried finish whose first try went through
        return result

    def release(self, job_id: str) -> Write:
        result = self._update("release", job_id, jobs.release_update(runner=self.runner, at=jobs.now()))
        if not result.ok and result.item is not None and result.item.get(jobs.STATUS) == jobs.QUEUED:
            return Write(True, result.item)  # queued already: a retried release
        return result

    def cancel_abandoned(self, job_id: str) -> Write:
        return self._update("cancel_abandoned", job_id, jobs.cancel_abandoned_update(at=jobs.now()))

    def _mine(self, item: Item | None, status: str) -> bool:
        return item is not None and item.get(jobs.RUNNER) == self.runner and item.get(jobs.STATUS) == status

    def _update(self, what: str, job_id: str, update: dict[str, Any]) -> Write:
        def send() -> Any:
            return self.aws.dynamodb.update_item(
                TableName=self.table,
                Key={jobs.JOB_ID: {"S": job_id}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **update,
            )

        try:
            response = self.aws.call(f"dynamodb.update_item:{what}", send, job_id=job_id)
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return Write(False, decode_item(exc.response.get("Item")))
        return Write(True, decode_item(response.get("Attributes")))


@dataclass(frozen=True)
class Message:
    """One received SQS message."""

    body: str
    handle: str
    message_id: str
    receive_count: int


class JobQueue:
    """The job queue, one message at a time."""

    def __init__(self, aws: Aws, url: str, log: Log):
        self.aws = aws
        self.url = url
        self.log = log

    def receive(self, *, wait: int, visibility: int) -> Message | None:
        def send() -> Any:
            return self.aws.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )

        messages = self.aws.call("sqs.receive_message", send).get("Messages") or []
        if not messages:
            return None
        raw = messages[0]
        count = int((raw.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        return Message(str(raw.get("Body", "")), raw["ReceiptHandle"], str(raw.get("MessageId", "")), count)

    def delete(self, message: Message, **context: Any) -> None:
        try:
            self.aws.call(
                "sqs.delete_message",
                lambda: self.aws.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message.handle),
                **context,
            )
        except (ClientError, AwsError) as exc:
            # The handle expired (another receive since): the message comes back and is dropped then.
            self.log("message_not_deleted", message_id=message.message_id, error=describe(exc), **context)

    def set_visibility(self, message: Message, seconds: int, **context: Any) -> bool:
        seconds = max(0, min(int(seconds), MAX_VISIBILITY_SECONDS))
        try:
            self.aws.call(
                "sqs.change_message_visibility",
                lambda: self.aws.sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=message.handle, VisibilityTimeout=seconds
                ),
                **context,
            )
        except (ClientError, AwsError) as exc:
            self.log("visibility_not_changed", message_id=message.message_id, error=describe(exc), **context)
            return False
        return True


# --------------------------------------------------------------------------------------------
# What to do with a message whose claim was refused


@dataclass(frozen=True)
class Decision:
    """delete | hide (for `seconds`; 0 = visible at once) | leave | cancel_abandoned."""

    action: str
    why: str
    seconds: int = 0


def decide_refused(item: Item | None, *, now: int, lease_seconds: int, job_timeout: float) -> Decision:
    """The message of a job whose claim was refused, from the item as it was when refused.

    - no item: the API writes the item before the message, so the job expired (TTL) or was
      deleted: nothing can ever run it -> delete.
    - succeeded/failed/cancelled: a late or repeated delivery -> delete.
    - cancel requested and no live runner holds it (its runner died or released it before
      recording the cancel; `claim_update` never takes it again) -> the contract's
      `cancel_abandoned_update`, then delete.
    - running under a lease that ends soon (its runner stopped renewing, or renewed within the
      last whole second) -> hidden until a claim can succeed, so the job runs again promptly.
    - running under a lease renewed recently (over half of it left: the owner is alive, and a
      cancel request, if any, is its to record): SQS delivered the message again while its
      owner works. Hidden until the longest run could have ended (job timeout + lease): every
      receive counts towards the dead-letter queue, and a long job must not use its receives
      up on duplicates. If the owner dies meanwhile, the job runs again once this copy shows.
    - anything else (an unknown status): no runner can claim it; left as received, so after max
      receives the dead-letter Lambda gives it up with a reason.
    """
    if item is None:
        return Decision("delete", "unknown_job")
    status = item.get(jobs.STATUS)
    if status in jobs.TERMINAL:
        return Decision("delete", str(status))
    lease_until = item.get(jobs.LEASE_UNTIL)
    remaining = int(lease_until) - now if lease_until is not None else -1
    if item.get(jobs.CANCEL_REQUESTED) and (status == jobs.QUEUED or (status == jobs.RUNNING and remaining < 0)):
        return Decision("cancel_abandoned", "cancel_requested_owner_gone")
    if status != jobs.RUNNING:
        return Decision("leave", f"unclaimable_{status}")
    if remaining > lease_seconds / 2:
        horizon = min(MAX_VISIBILITY_SECONDS, int(job_timeout) + lease_seconds)
        return Decision("hide", "delivered_again_while_running", horizon)
    return Decision("hide", "lease_not_expired", max(remaining, 0) + 2)


# --------------------------------------------------------------------------------------------
# Kubernetes: this pod's annotations


class KubeError(Exception):
    """The API server refused or could not be reached."""


class KubeApi:
    """JSON merge patches of this pod's metadata, with the mounted service account token.

    The token is read on every call: projected tokens are rotated by the kubelet.
    """

    def __init__(self, base_url: str, *, token_path: Path, ca_path: Path, namespace: str, pod: str):
        self.url = f"{base_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        self.token_path = token_path
        self.ca_path = ca_path
        self.session = requests.Session()
        self.session.trust_env = False  # the API server is in the cluster, never behind an egress proxy

    def patch_annotations(self, annotations: Mapping[str, str | None]) -> None:
        """None removes an annotation (merge patch semantics)."""
        body = json.dumps({"metadata": {"annotations": dict(annotations)}})
        headers = {
            "Authorization": f"Bearer {self.token_path.read_text(encoding='utf-8').strip()}",
            "Content-Type": "application/merge-patch+json",
            "Accept": "application/json",
        }
        verify: bool | str = str(self.ca_path) if self.ca_path.is_file() else True
        try:
            response = self.session.patch(self.url, data=body, headers=headers, timeout=10, verify=verify)
        except requests.RequestException as exc:
            raise KubeError(describe(exc)) from exc
        if response.status_code >= 300:
            raise KubeError(f"PATCH pod answered {response.status_code}: {' '.join(response.text.split())[:200]}")


def kube_api(config: Config, environ: Mapping[str, str], log: Log) -> KubeApi | None:
    """The pod's API access, or None (logged) outside Kubernetes or without a token."""
    account = Path(config.service_account_dir)
    token = account / "token"
    if not token.is_file():
        log("annotations_disabled", reason=f"no service account token at {token}")
        return None
    base = config.kubernetes_api_url
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not base and host:
        base = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    namespace = config.pod_namespace
    if not namespace and (account / "namespace").is_file():
        namespace = (account / "namespace").read_text(encoding="utf-8").strip()
    if not base or not namespace:
        log("annotations_disabled", reason="no API server address or namespace")
        return None
    return KubeApi(base, token_path=token, ca_path=account / "ca.crt", namespace=namespace, pod=config.pod_name)


class PodAnnotator:
    """Keeps the pod's protective annotations in line with what the pod is doing.

    Busy reasons ("job", "comfyui") are set by the job and by the idle loop; the annotations
    stay `linger` seconds after the last reason cleared. A failed patch is logged and tried
    again on the next sync, a few seconds later at the earliest: annotations are a
    best effort and never hold up a job.
    """

    def __init__(self, api: KubeApi | None, log: Log, *, cost: int, linger: float):
        self.api = api
        self.log = log
        self.cost = cost
        self.linger = linger
        self._reasons: set[str] = set()
        self._idle_since = time.monotonic() - linger
        self._applied: bool | None = None  # unknown at start: the first sync writes the state
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def set_busy(self, reason: str, busy: bool) -> None:
        with self._lock:
            if busy:
                self._reasons.add(reason)
            elif reason in self._reasons:
                self._reasons.discard(reason)
                if not self._reasons:
                    self._idle_since = time.monotonic()
        self.sync()

    def sync(self, *, force: bool = False) -> None:
        with self._lock:
            if self.api is None:
                return
            wanted = bool(self._reasons) or time.monotonic() - self._idle_since < self.linger
            if wanted == self._applied or (not force and time.monotonic() < self._retry_at):
                return
            annotations: dict[str, str | None] = (
                {DO_NOT_DISRUPT: "true", DELETION_COST: str(self.cost)}
                if wanted
                else {DO_NOT_DISRUPT: None, DELETION_COST: None}
            )
            try:
                self.api.patch_annotations(annotations)
            except (KubeError, OSError) as exc:
                self._retry_at = time.monotonic() + 5.0
                self.log("annotation_error", protect=wanted, error=describe(exc))
                return
            self._applied = wanted
            self.log("annotated" if wanted else "annotations_removed", reasons=sorted(self._reasons) or None)

    def clear(self) -> None:
        """On exit: drop the reasons and the linger, remove the annotations (best effort)."""
        with self._lock:
            self._reasons.clear()
            self._idle_since = time.monotonic() - self.linger
        self.sync(force=True)


# --------------------------------------------------------------------------------------------
# ComfyUI helpers


def comfy_session() -> requests.Session:
    """ComfyUI is in the same pod: never through an egress proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def comfy_state(client: comfy.ComfyClient) -> str:
    """idle | busy (anyone's prompt running or pending) | unreachable (starting, restarting)."""
    try:
        queue = client.queue()
    except comfy.ComfyError:
        return "unreachable"
    return "busy" if queue.get("queue_running") or queue.get("queue_pending") else "idle"


def rewrite_load_images(workflow: dict[str, Any], references: Mapping[str, str]) -> int:
    """Point LoadImage `image` inputs that name an uploaded input at its ComfyUI reference
    (`jobs/<id>/<name>`, or ComfyUI's "name (1).png" rename); how many were rewritten."""
    count = 0
    for node in workflow.values():
        if not isinstance(node, dict) or node.get("class_type") not in LOAD_IMAGE_NODES:
            continue
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("image"), str) and inputs["image"] in references:
            inputs["image"] = references[inputs["image"]]
            count += 1
    return count


def output_key(job_id: str, output: comfy.OutputFile) -> str:
    """outputs bucket key of an output file: the job prefix, ComfyUI's subfolder and name;
    files that are not "output" (temp previews) go under their type."""
    parts = [p for p in PurePosixPath(output.subfolder.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if output.type != "output":
        parts.insert(0, output.type)
    parts.append(PurePosixPath(output.filename.replace("\\", "/")).name)
    return jobs.output_prefix(job_id) + "/".join(parts)


def close_quietly(socket_: websocket.WebSocket) -> None:
    """Close a websocket that may already be dead (the pod's ComfyUI restarted): nothing to do then."""
    with contextlib.suppress(websocket.WebSocketException, OSError):
        socket_.close(timeout=1)


class ProgressLog(comfy.Listener):
    """Logs the start and every `step` percent of each long node (samplers)."""

    def __init__(self, log: Log, job_id: str, step: int):
        self.log = log
        self.job_id = job_id
        self.step = step
        self.reported: dict[str, int] = {}

    def started(self) -> None:
        self.log("started", job_id=self.job_id)

    def progress(self, value: int, maximum: int, node_id: str | None) -> None:
        if maximum <= 0 or self.step <= 0:
            return
        percent = min(100, value * 100 // maximum) // self.step * self.step
        node = str(node_id)
        if percent > self.reported.get(node, 0):
            self.reported[node] = percent
            self.log("progress", job_id=self.job_id, node=node, percent=percent)


# --------------------------------------------------------------------------------------------
# One job


class JobFailure(Exception):
    """The job itself is at fault (missing or invalid workflow or input): fail it, never retry."""


class Stopped(Exception):
    """The job was stopped (cancel, lost claim, shutdown) before it was submitted."""


@dataclass(frozen=True)
class Outcome:
    """How a job run ended: succeeded | failed | cancelled (recorded), release | lost (not)."""

    kind: str
    detail: str = ""
    outputs: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)


class JobRun:
    """One claimed job, from its claim to its one recorded result or its release."""

    def __init__(self, runner: Runner, message: Message, item: Item, inline: dict[str, Any] | None):
        self.runner = runner
        self.config = runner.config
        self.log = runner.log
        self.message = message
        self.item = item
        self.inline = inline
        self.job_id = str(item[jobs.JOB_ID])
        self.attempt = int(item.get(jobs.ATTEMPTS) or 1)
        self.prompt_id = f"{self.job_id}-{self.attempt}"
        self.claimed_at = time.monotonic()
        self.deadline = self.claimed_at + self.config.job_timeout
        self.client = comfy.ComfyClient(
            self.config.comfyui_url,
            client_id=f"{runner.id}-{self.attempt}",
            timeout=30.0,
            poll_interval=min(1.0, max(0.05, self.config.idle_interval)),
            silence_check=max(0.5, min(10.0, self.config.renew_interval)),
            notice=lambda text: self.log("comfyui_notice", job_id=self.job_id, notice=text[:300]),
            session=comfy_session(),
        )
        self._lock = threading.Lock()
        self.reason: str | None = None  # cancelled | lost | shutdown: why the run was stopped
        self.submitted = False
        self.generating = False
        self.last_seen: Item | None = None  # the item as a refused renewal found it

    # -- lifecycle -------------------------------------------------------------------------

    def execute(self) -> None:
        self.log("claimed", job_id=self.job_id, attempt=self.attempt, receive_count=self.message.receive_count)
        self.runner.annotator.set_busy("job", True)
        keeper = LeaseKeeper(self)
        keeper.start()
        try:
            outcome = self.produce()
        finally:
            keeper.stop()
            self.client.close()
        try:
            self.conclude(outcome)
        finally:
            self.runner.annotator.set_busy("job", False)

    def produce(self) -> Outcome:
        """Run the workflow and upload its outputs; never raises: every ending is an Outcome."""
        try:
            workflow = self.load_workflow()
            self.upload_inputs(workflow)
            result = self.generate(workflow)
            if self.reason in ("cancelled", "lost"):
                return self.stopped_outcome()
            keys = self.upload_outputs(result)
            if self.reason in ("cancelled", "lost"):
                return self.stopped_outcome()
            return Outcome("succeeded", outputs=tuple(keys), fields={"outputs": len(keys)})
        except JobFailure as exc:
            return Outcome("failed", str(exc), fields={"reason": "invalid_job"})
        except comfy.PromptRejected as exc:
            return Outcome(
                "failed", "\n".join(exc.lines), fields={"reason": "rejected", "nodes": sorted(exc.node_errors)}
            )
        except comfy.ExecutionFailed as exc:
            return self.stopped_outcome() if self.reason else self.execution_failed(exc)
        except comfy.WaitTimeout:
            self.cancel_prompt()
            return self.stopped_outcome() if self.reason else self.timed_out()
        except (Stopped, comfy.ExecutionInterrupted, comfy.PromptLost) as exc:
            return self.stopped_outcome() if self.reason else Outcome("release", type(exc).__name__)
        except (comfy.ComfyError, AwsError, ClientError, BotoCoreError, OSError) as exc:
            self.cancel_prompt()
            self.log("job_error", job_id=self.job_id, error=describe(exc))
            return self.stopped_outcome() if self.reason else Outcome("release", type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the pod's runner: give the job back
            self.cancel_prompt()
            self.log("job_error", job_id=self.job_id, error=describe(exc), level="error")
            return Outcome("release", "runner_error")

    def stopped_outcome(self) -> Outcome:
        if self.reason == "cancelled":
            return Outcome("cancelled")
        if self.reason == "lost":
            return Outcome("lost")
        return Outcome("release", self.reason or "stopped")

    def execution_failed(self, exc: comfy.ExecutionFailed) -> Outcome:
        data = exc.data
        fields = {"reason": "execution_error", "node": data.get("node_id"), "node_type": data.get("node_type")}
        fields["exception_type"] = data.get("exception_type")
        return Outcome("failed", "\n".join(exc.lines), fields=fields)

    def timed_out(self) -> Outcome:
        text = f"the job did not finish within {self.config.job_timeout:g} s ({jobs.TIMEOUT_SECONDS_ENV})"
        return Outcome("failed", text, fields={"reason": "timeout"})

    # -- steps -----------------------------------------------------------------------------

    def load_workflow(self) -> dict[str, Any]:
        """The inline workflow, or the one the API stored in S3 (a copy: it is rewritten)."""
        if self.inline is not None:
            return copy.deepcopy(self.inline)
        key = str(self.item.get(jobs.WORKFLOW_KEY_ATTR) or jobs.workflow_key(self.job_id))
        try:
            data = json.loads(self.runner.get_object(self.config.inputs_bucket, key, job_id=self.job_id))
        except ValueError as exc:
            raise JobFailure(f"the workflow at s3://{self.config.inputs_bucket}/{key} is not JSON") from exc
        if not isinstance(data, dict):
            raise JobFailure(f"the workflow at s3://{self.config.inputs_bucket}/{key} is not a JSON object")
        return data

    def upload_inputs(self, workflow: dict[str, Any]) -> None:
        """Each input image from the inputs bucket into ComfyUI's `jobs/<id>` input folder;
        LoadImage inputs that name it are pointed at it. Without overwrite: a second attempt
        on the same pod finds identical bytes, and the inputs folder may be an S3 mount that
        refuses to replace objects."""
        inputs = self.item.get(jobs.INPUTS) or {}
        if not isinstance(inputs, dict):
            raise JobFailure("the job's inputs are not a map of names to S3 keys")
        references: dict[str, str] = {}
        for name, key in sorted(inputs.items()):
            if not isinstance(name, str) or not jobs.INPUT_NAME_PATTERN.fullmatch(name) or not isinstance(key, str):
                raise JobFailure(f"invalid input name or key: {str(name)[:80]!r}")
            data = self.runner.get_object(self.config.inputs_bucket, key, job_id=self.job_id)
            uploaded = self.client.upload_image(data, name, subfolder=jobs.comfyui_subfolder(self.job_id))
            references[name] = uploaded.reference
        if references:
            rewritten = rewrite_load_images(workflow, references)
            self.log("inputs_uploaded", job_id=self.job_id, inputs=len(references), nodes=rewritten)

    def generate(self, workflow: dict[str, Any]) -> comfy.PromptResult:
        """Submit with our prompt id (recorded in the item first) and follow it to its result."""
        self.check_stop()
        self.renew(prompt_id=self.prompt_id)
        self.check_stop()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise comfy.WaitTimeout("the job timed out before it was submitted")
        socket_ = self.client.connect_websocket()
        try:
            # From here a prompt with this id may exist (SubmitUncertain too): cancels target it.
            self.submitted = True
            self.client.submit(workflow, prompt_id=self.prompt_id)
            with self._lock:
                self.generating = True
                stop = self.reason is not None
            self.log("submitted", job_id=self.job_id, prompt_id=self.prompt_id)
            if stop:  # stopped while the submission was on its way: the abort found nothing to cancel
                self.cancel_prompt()
            listener = ProgressLog(self.log, self.job_id, self.config.progress_step)
            result = self.client.follow(
                self.prompt_id, timeout=self.deadline - time.monotonic(), listener=listener, socket=socket_
            )
        finally:
            self.generating = False
            if socket_ is not None:
                close_quietly(socket_)
        self.log("generated", job_id=self.job_id, seconds=round(time.monotonic() - self.claimed_at, 3))
        return result

    def upload_outputs(self, result: comfy.PromptResult) -> list[str]:
        """Every output file, as /view serves it, under the job's prefix; staged on disk one
        file at a time, so a large video never sits in memory nor several on the scratch disk."""
        keys: list[str] = []
        with tempfile.TemporaryDirectory(prefix=f"job-{self.job_id}-", dir=self.config.scratch_dir) as staging:
            for index, output in enumerate(result.outputs):
                key = output_key(self.job_id, output)
                if key in keys:
                    continue  # the same file reported twice (cached node)
                path = self.client.download(output, Path(staging) / str(index))
                self.runner.put_file(self.config.outputs_bucket, key, path, job_id=self.job_id)
                path.unlink()
                keys.append(key)
        self.log("outputs_uploaded", job_id=self.job_id, outputs=len(keys))
        return keys

    def conclude(self, outcome: Outcome) -> None:
        """Record the result once (or give the job back) and settle the message accordingly."""
        try:
            if outcome.kind in jobs.TERMINAL:
                self.record(outcome)
            elif outcome.kind == "release":
                self.give_back(outcome.detail)
            else:
                self.log("claim_lost", job_id=self.job_id, status=(self.last_seen or {}).get(jobs.STATUS))
                if self.last_seen is None or self.last_seen.get(jobs.STATUS) in jobs.TERMINAL:
                    self.runner.queue.delete(self.message, job_id=self.job_id)
        except (AwsError, ClientError, BotoCoreError) as exc:
            # Not recorded: the lease runs out and the message reappears, so the job runs again.
            self.log("job_error", job_id=self.job_id, error=describe(exc), outcome=outcome.kind)

    def record(self, outcome: Outcome) -> None:
        outputs = list(outcome.outputs) if outcome.kind == jobs.SUCCEEDED else None
        error = outcome.detail if outcome.kind == jobs.FAILED else None
        written = self.runner.table.finish(self.job_id, outcome.kind, outputs=outputs, error=error)
        seconds = round(time.monotonic() - self.claimed_at, 3)
        if written.ok:
            self.log(
                "finished",
                job_id=self.job_id,
                status=outcome.kind,
                attempt=self.attempt,
                seconds=seconds,
                **outcome.fields,
            )
            self.runner.queue.delete(self.message, job_id=self.job_id)
            return
        # Another runner owns it now (this one stalled past its lease) or it was given up.
        status = (written.item or {}).get(jobs.STATUS)
        self.log("not_recorded", job_id=self.job_id, status=outcome.kind, status_now=status)
        if written.item is None or status in jobs.TERMINAL:
            self.runner.queue.delete(self.message, job_id=self.job_id)

    def give_back(self, why: str) -> None:
        written = self.runner.table.release(self.job_id)
        if written.ok:
            self.runner.queue.set_visibility(self.message, 0, job_id=self.job_id)
            self.log("released", job_id=self.job_id, attempt=self.attempt, reason=why)
            return
        status = (written.item or {}).get(jobs.STATUS)
        self.log("not_released", job_id=self.job_id, reason=why, status_now=status)
        if written.item is None or status in jobs.TERMINAL:
            self.runner.queue.delete(self.message, job_id=self.job_id)

    # -- stopping (called from the lease thread too) ------------------------------------------

    def renew(self, prompt_id: str | None = None) -> None:
        """Extend the claim and the message; a cancel request or a lost claim stops the run.
        Once submitted, every renewal records the prompt id (in case the first one failed)."""
        if prompt_id is None and self.submitted:
            prompt_id = self.prompt_id
        try:
            written = self.runner.table.renew(self.job_id, prompt_id)
        except (AwsError, ClientError, BotoCoreError) as exc:
            self.log("renew_failed", job_id=self.job_id, error=describe(exc))
            return
        if not written.ok:
            self.last_seen = written.item
            self.abort("lost")
            return
        if written.item and written.item.get(jobs.CANCEL_REQUESTED):
            self.abort("cancelled")
        self.runner.queue.set_visibility(self.message, self.config.visibility, job_id=self.job_id)

    def check_grace(self) -> None:
        """After SIGTERM, a generation gets the grace period; then it is interrupted."""
        stop_at = self.runner.stop_requested_at
        if stop_at is not None and self.generating and time.monotonic() >= stop_at + self.config.grace:
            self.abort("shutdown")

    def check_stop(self) -> None:
        """Before submitting: no new generation once stopping or stopped."""
        if self.runner.stopping:
            self.abort("shutdown")
        if self.reason is not None:
            raise Stopped(self.reason)

    def abort(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            submitted = self.submitted
        self.log("stopping_job", job_id=self.job_id, reason=reason)
        if submitted:
            self.cancel_prompt()

    def cancel_prompt(self) -> None:
        """Delete the prompt if pending, interrupt it if running (another session: thread-safe)."""
        with self._lock:
            if not self.submitted:
                return
        try:
            with self.client.fork() as other:
                other.cancel(self.prompt_id)
        except comfy.ComfyError as exc:
            self.log("interrupt_failed", job_id=self.job_id, error=describe(exc))


class LeaseKeeper(threading.Thread):
    """Renews the claim (every third of the lease) while the job runs and enforces the
    shutdown grace; wakes often so a SIGTERM's grace ends on time."""

    def __init__(self, run: JobRun):
        super().__init__(name=f"lease-{run.job_id[:8]}", daemon=True)
        self.run_ = run
        self._done = threading.Event()

    def run(self) -> None:
        interval = self.run_.config.renew_interval
        tick = min(0.25, interval / 4)
        next_renew = time.monotonic() + interval
        while not self._done.wait(tick):
            try:
                self.run_.runner.beat()
                self.run_.check_grace()
                if time.monotonic() >= next_renew:
                    self.run_.renew()
                    next_renew = time.monotonic() + interval
                self.run_.runner.annotator.sync()
            except Exception as exc:  # noqa: BLE001 - the keeper must outlive any surprise
                self.run_.log("lease_error", job_id=self.run_.job_id, error=describe(exc), level="error")

    def stop(self) -> None:
        self._done.set()
        self.join()


# --------------------------------------------------------------------------------------------
# The runner


class Runner:
    """The loop: wait for an idle ComfyUI, take one message, run its job, repeat until SIGTERM."""

    def __init__(
        self,
        config: Config,
        *,
        stream: IO[str] | None = None,
        environ: Mapping[str, str] | None = None,
        aws_session: boto3.session.Session | None = None,
    ):
        """`stream`: where the JSON lines go (stdout); `environ`: for the Kubernetes service address;
        `aws_session`: the boto3 session of the AWS clients (a new one unless given)."""
        self.config = config
        # The pod, plus a per-process suffix: a restarted container never mistakes the claims of
        # its previous life (which it cannot follow any more) for its own.
        self.id = f"{config.pod_name}/{secrets.token_hex(4)}"
        self.log = Log(self.id, stream)
        self.aws = Aws(self.log, attempts=config.aws_attempts, read_timeout=config.poll_wait + 15, session=aws_session)
        self.table = JobTable(self.aws, config.table, runner=self.id, lease_seconds=config.lease_seconds)
        self.queue = JobQueue(self.aws, config.queue_url, self.log)
        api = kube_api(config, os.environ if environ is None else environ, self.log)
        self.annotator = PodAnnotator(api, self.log, cost=config.deletion_cost, linger=config.annotation_linger)
        self.probe = comfy.ComfyClient(
            config.comfyui_url, timeout=5.0, retry=comfy.RetryPolicy(attempts=1), session=comfy_session()
        )
        self._stop = threading.Event()
        self.stop_requested_at: float | None = None
        self._comfy_state = ""
        self._errors = 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:
        """SIGTERM/SIGINT: no new job; a running one gets the grace period."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
            self.log("stopping", signal=signal.Signals(signum).name if signum else None, grace=self.config.grace)
        self._stop.set()

    def run(self) -> int:
        config = self.config
        self.log(
            "runner_started",
            queue=config.queue_url,
            table=config.table,
            comfyui=config.comfyui_url,
            lease_seconds=config.lease_seconds,
            grace=config.grace,
            job_timeout=config.job_timeout,
        )
        while not self.stopping:
            try:
                self.beat()
                self.step()
                self._errors = 0
            except Exception as exc:  # noqa: BLE001 - never crash the container: log, back off, go on
                self._errors += 1
                self.log("runner_error", error=describe(exc), level="error")
                self._stop.wait(min(30.0, 0.5 * 2 ** min(self._errors, 6)))
        self.annotator.clear()
        self.probe.close()
        self.log("runner_stopped")
        return 0

    def beat(self) -> None:
        """Show liveness: the file's age tells a probe how long ago this loop last ran."""
        if self.config.heartbeat_file:
            with open(self.config.heartbeat_file, "a"):
                pass
            os.utime(self.config.heartbeat_file)

    def step(self) -> None:
        """One look at ComfyUI and, when it is idle, one long poll of the queue."""
        state = self.comfy_state()
        self.annotator.set_busy("comfyui", state == "busy")
        if state != "idle":
            self._stop.wait(self.config.idle_interval)
            return
        message = self.queue.receive(wait=self.config.poll_wait, visibility=self.config.visibility)
        if message is None:
            if self.config.poll_wait == 0:
                self._stop.wait(self.config.idle_interval)
            return
        self.handle(message)

    def comfy_state(self) -> str:
        state = comfy_state(self.probe)
        if state != self._comfy_state:
            self.log("comfyui_state", state=state)
            self._comfy_state = state
        return state

    def handle(self, message: Message) -> None:
        try:
            job_id, inline = jobs.parse_message(message.body)
        except (ValueError, TypeError) as exc:
            self.log("malformed_message", message_id=message.message_id, error=describe(exc)[:120], level="warning")
            self.queue.delete(message)
            return
        if self.stopping or self.comfy_state() != "idle":
            # Taken during the long poll, but this pod is stopping or an artist started a prompt.
            self.queue.set_visibility(message, 0, job_id=job_id)
            self.log("returned", job_id=job_id, reason="stopping" if self.stopping else "comfyui_busy")
            return
        claim = self.table.claim(job_id)
        if not claim.ok or claim.item is None:
            self.refused(job_id, message, claim.item)
            return
        # The message has been hidden since its receive, the lease runs from the claim, which may
        # come seconds later (a retried write, a slow ComfyUI probe). Hidden again from the claim,
        # the message cannot show while the lease runs: were this runner to die before its first
        # renewal, the next receive would find a fresh lease and hide the job for a job timeout.
        self.queue.set_visibility(message, self.config.visibility, job_id=job_id)
        JobRun(self, message, claim.item, inline).execute()

    def refused(self, job_id: str, message: Message, item: Item | None) -> None:
        decision = decide_refused(
            item, now=jobs.now(), lease_seconds=self.config.lease_seconds, job_timeout=self.config.job_timeout
        )
        self.log(
            "claim_refused",
            job_id=job_id,
            status=(item or {}).get(jobs.STATUS),
            why=decision.why,
            action=decision.action,
            seconds=decision.seconds if decision.action == "hide" else None,
        )
        if decision.action == "delete":
            self.queue.delete(message, job_id=job_id)
        elif decision.action == "hide":
            self.queue.set_visibility(message, decision.seconds, job_id=job_id)
        elif decision.action == "cancel_abandoned":
            written = self.table.cancel_abandoned(job_id)
            if written.ok:
                self.log("finished", job_id=job_id, status=jobs.CANCELLED, reason="cancel_requested_owner_gone")
            if written.ok or (written.item or {}).get(jobs.STATUS) in jobs.TERMINAL:
                self.queue.delete(message, job_id=job_id)

    # -- S3 ---------------------------------------------------------------------------------

    def get_object(self, bucket: str, key: str, **context: Any) -> bytes:
        """An object's bytes; a missing one is the job's fault (JobFailure)."""

        def send() -> bytes:
            return bytes(self.aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

        try:
            return self.aws.call("s3.get_object", send, **context)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                raise JobFailure(f"s3://{bucket}/{key} does not exist") from exc
            raise

    def put_file(self, bucket: str, key: str, path: Path, **context: Any) -> None:
        """One PUT per file (single request, up to 5 GB: no multipart, no kms:Decrypt needed)."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        def send() -> Any:
            with open(path, "rb") as body:
                return self.aws.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

        self.aws.call("s3.put_object", send, **context)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        runner = Runner(config)
    except BotoCoreError as exc:  # no region, unusable AWS configuration: say so in one line
        print(f"job_runner.py: error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    return runner.run()


if __name__ == "__main__":
    raise SystemExit(main())
