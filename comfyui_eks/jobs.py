"""`comfyui-eks jobs`: run workflows through the job API and collect what they produced.

    comfyui-eks jobs submit WORKFLOW.json [--input NAME=PATH ...] [--input-key NAME=S3_KEY ...]
                            [--webhook URL] [--client-token T] [--seed random|N]
                            [--wait] [--out DIR] [--timeout S]
    comfyui-eks jobs get JOB_ID
    comfyui-eks jobs wait JOB_ID [--out DIR] [--timeout S]
    comfyui-eks jobs cancel JOB_ID
    comfyui-eks jobs ls [--status S] [--limit N]
    every action: [--api URL] [--region R] [--config FILE] [--format text|json]

The job API (lambda_src/jobs/api.py) is an API Gateway HTTP API with IAM authorization: every
request is SigV4-signed with the caller's AWS credentials (comfyui_eks/_sigv4.py). Its URL is
--api, else $COMFYUI_EKS_JOBS_API, else the platform stack's output `jobs_api_url`
(`terraform output` in cdktf.out/stacks/<project>-platform).

Requests that change nothing (GET) are retried on 429, 5xx and network errors. POST /jobs is
retried too, because it always carries a client token (--client-token, or a new random one
per submit): the API answers a repeated token with the job it already made, so a retry after
a lost answer can never start a second job. DELETE is not retried (its second answer would
describe the first one's effect).

Exit codes: 0 ok (a waited-for job succeeded), 1 failed (a job failed, was cancelled or did
not finish in time; the API refused or could not be reached), 2 bad usage, a workflow that is
not API format, or a request the API rejected as invalid (400).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Self, TextIO
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests

from comfyui_eks import _stacks
from comfyui_eks._sigv4 import Signer, configured_region
from comfyui_eks.cli import CommandFailed, UsageError
from comfyui_eks.comfy_client import _free_name
from comfyui_eks.workflows import (
    SEED_MAX,
    ImageInput,
    WorkflowError,
    apply_seed,
    find_input_images,
    load_workflow,
    random_seed,
    seed_inputs,
    set_input,
)

Json = dict[str, Any]
API_ENV = "COMFYUI_EKS_JOBS_API"
TERRAFORM = "terraform"
API_OUTPUT = "jobs_api_url"
POLICY_OUTPUT = "jobs_caller_policy_arn"
# A job waits for a GPU node (Karpenter, minutes from zero) and its model cache before it runs.
DEFAULT_TIMEOUT = 3600.0
DEFAULT_LIMIT = 20
PAGE_SIZE = 100  # the API's maximum page (listing.MAX_LIMIT)
HTTP_TIMEOUT = (10.0, 60.0)  # connect, read: API Gateway answers within 30 s
TERRAFORM_TIMEOUT = 120.0
_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z]{2}(?:-[a-z]+)+-[0-9]+)\.", re.ASCII)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The job API's contract as callers see it: lambda_src/jobs/contract.py and validation.py, which
# the CLI does not import (the Lambda packages stand alone; tests/test_layers.py). The tests
# check that these agree with them.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}", re.ASCII)
INPUT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
CLIENT_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
MAX_REQUEST_BYTES = 6 * 1024 * 1024
NOT_ALLOWED = f"not allowed to call the job API: attach the jobs caller policy (output {POLICY_OUTPUT}) to your role"


@dataclass(frozen=True)
class Backoff:
    """Growing pauses: `first`, then times `factor`, at most `most` seconds."""

    first: float
    factor: float
    most: float

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.most)


# Polling a job: quick at first (a warm pod claims a job within seconds), then every 15 s. A
# status change starts over, so a job that just started running is looked at again soon.
POLL = Backoff(first=2.0, factor=1.5, most=15.0)
# Retries of one request: RETRIES more attempts, pauses from RETRY (or Retry-After, if longer).
RETRY = Backoff(first=0.5, factor=2.0, most=8.0)
RETRIES = 4


# --------------------------------------------------------------------------------------------
# Arguments


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="submit workflows to the job API, follow them, collect their outputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    common = _common_options()
    submit = actions.add_parser(
        "submit",
        parents=[common],
        help="submit an API-format workflow as a job",
        description=(
            "Submit a workflow in API format as a job. Images its LoadImage nodes name are sent inline (found next "
            "to the workflow or given with --input) or as keys in the inputs bucket (--input-key). Prints the job "
            "id; with --wait follows the job to its end and prints its outputs (downloaded with --out)."
        ),
    )
    submit.add_argument("workflow", metavar="WORKFLOW.json", type=Path, help="workflow in API format (Export (API))")
    submit.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="image file for a LoadImage node (NAME: its image name or node id), sent inline; repeatable",
    )
    submit.add_argument(
        "--input-key",
        action="append",
        default=[],
        metavar="NAME=S3_KEY",
        help="image already in the inputs bucket for a LoadImage node (NAME as for --input); repeatable",
    )
    submit.add_argument("--webhook", metavar="URL", help="public https URL the API POSTs the job's result to")
    submit.add_argument(
        "--client-token",
        metavar="T",
        help=(
            "idempotency token (1-128 printable characters): the same token and request give back the same job, so "
            "a re-run pipeline step (e.g. T = its run id) never submits twice. Default: a new random token per "
            "submit, which still makes this command's own retries (after a network error or a 5xx) safe: they "
            "can never create two jobs"
        ),
    )
    submit.add_argument("--seed", metavar="random|N", help="set every seed/noise_seed input (random: a new one)")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end (exit 1 unless it succeeds)")
    _wait_options(submit)
    submit.set_defaults(func=run_submit)

    get = actions.add_parser("get", parents=[common], help="show one job", description="Show one job.")
    get.add_argument("job_id", metavar="JOB_ID")
    get.set_defaults(func=run_get)

    wait = actions.add_parser(
        "wait",
        parents=[common],
        help="follow a job to its end and collect its outputs",
        description="Follow a job to its end; exit 0 if it succeeded, 1 if it failed, was cancelled or timed out.",
    )
    wait.add_argument("job_id", metavar="JOB_ID")
    _wait_options(wait)
    wait.set_defaults(func=run_wait)

    cancel = actions.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job",
        description="Cancel a job: a queued job at once, a running one by its runner within about a minute.",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(func=run_cancel)

    ls = actions.add_parser("ls", parents=[common], help="list recent jobs, newest first", description="List jobs.")
    ls.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    ls.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N", help=f"jobs to show ({DEFAULT_LIMIT})")
    ls.set_defaults(func=run_ls)
    return parser


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        metavar="URL",
        help=f"the job API's URL (default: ${API_ENV}, else the platform stack's output {API_OUTPUT})",
    )
    common.add_argument("--region", help="the API's region (default: from the URL's host, else the AWS config)")
    common.add_argument(
        "--config",
        metavar="FILE",
        help=f"configuration naming the platform stack, to read {API_OUTPUT} (default: $COMFYUI_EKS_CONFIG or "
        "config/default.yaml)",
    )
    common.add_argument("--format", choices=("text", "json"), default="text", help="output format (text)")
    return common


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="download every output into DIR (never overwrites: name-N)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the job's end ({DEFAULT_TIMEOUT:.0f}); the job itself carries on",
    )


def _check_wait_options(args: argparse.Namespace, problems: list[str]) -> None:
    if not args.timeout > 0:
        problems.append(f"--timeout {args.timeout:g}: give the seconds to wait for the job, more than 0")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out}: this is a file; give a directory (it is created if missing)")


def job_id_of(text: str) -> str:
    """A job id as the API makes them (also keeps anything else out of the request path)."""
    if not JOB_ID_PATTERN.fullmatch(text):
        raise UsageError(f"{text[:80]!r} is not a job id: 32 hex characters, as `comfyui-eks jobs submit` printed")
    return text


# --------------------------------------------------------------------------------------------
# Where the API is


def region_of(url: str) -> str | None:
    """The region in an execute-api host name (https://<id>.execute-api.<region>.amazonaws.com/)."""
    match = _EXECUTE_API_HOST.search("." + (urlsplit(url).hostname or "") + ".")
    return match.group(1) if match else None


def check_api_url(url: str, source: str) -> str:
    """http(s)://host[:port][/base] without the trailing slash. Plain http only to this machine:
    a signed request seen on the network could be replayed for the signature's 5 minutes."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} {url!r}: not a URL; give the platform stack's output {API_OUTPUT}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise UsageError(f"{source} {url}: use https (the job API's URL is https://...)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def api_url(args: argparse.Namespace) -> str:
    if args.api:
        return check_api_url(args.api, "--api")
    if os.environ.get(API_ENV):
        return check_api_url(os.environ[API_ENV], API_ENV)
    return check_api_url(api_url_from_terraform(args.config), f"output {API_OUTPUT}")


def api_url_from_terraform(config_path: str | None) -> str:
    """`jobs_api_url` of the deployed platform stack: `terraform output -json` in its directory
    (read-only and quick; never `init`, which can download providers for minutes)."""
    (platform,) = _stacks.stacks(_stacks.load(config_path), _stacks.default_outdir(), ("platform",))
    directory = platform.directory
    hint = f"or pass --api URL (or set {API_ENV}): the output {API_OUTPUT} of `comfyui-eks outputs`"
    if not platform.initialized:
        raise UsageError(
            f"no job API URL: {directory} is not initialized (deploy the platform stack, or run "
            f"`comfyui-eks outputs` once after a new synthesis); {hint}"
        )
    done = _terraform_output(directory, hint)
    try:
        value = json.loads(done or "{}").get(API_OUTPUT, {}).get("value")
    except (ValueError, AttributeError):
        raise CommandFailed(f"terraform output in {directory} is not the JSON expected; {hint}") from None
    if not isinstance(value, str) or not value:
        raise UsageError(f"no job API URL: {platform.name} has no output {API_OUTPUT} (deploy it first); {hint}")
    return value


def _terraform_output(directory: Path, hint: str) -> str:
    """stdout of `terraform output -json` in `directory`; its first error line on failure."""
    try:
        done = subprocess.run(
            [TERRAFORM, f"-chdir={directory}", "output", "-json", "-no-color"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TERRAFORM_TIMEOUT,
            env={**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"},
            check=False,
        )
    except OSError as exc:
        raise UsageError(f"no job API URL: cannot run {TERRAFORM} ({exc.strerror or exc}); {hint}") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"terraform output in {directory} took over {TERRAFORM_TIMEOUT:g} s; {hint}") from None
    if done.returncode != 0:
        error = next((line.strip(" │╷╵") for line in done.stderr.splitlines() if "Error" in line), "")
        raise CommandFailed(f"terraform output failed in {directory}: {error or f'exit {done.returncode}'}; {hint}")
    return done.stdout


# --------------------------------------------------------------------------------------------
# The API client


class ApiError(Exception):
    """An answer other than 2xx (status), or no answer at all (status None)."""

    def __init__(
        self,
        status: int | None,
        message: str,
        field_name: str | None = None,
        details: Json | None = None,
        retry_after: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field_name
        self.details = details or {}
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth another attempt: no answer, throttled, or a server-side failure."""
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class Answer:
    status: int
    body: Json


class JobsApi:
    """The job API's four routes over one HTTP session, every request signed."""

    def __init__(
        self,
        url: str,
        signer: Signer,
        *,
        notice: Callable[[str], None] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.signer = signer
        self.notice = notice or _stderr_note
        self.session = session or requests.Session()
        self.sleep = sleep

    def create(self, document: Json) -> Answer:
        """POST /jobs; retried like a GET because `document` always holds a client_token."""
        if not document.get("client_token"):
            raise ValueError("a job is only ever submitted with a client_token (retries must not duplicate it)")
        return self.call("POST", "/jobs", body=document, retry=True)

    def get(self, job_id: str) -> Json:
        return self.call("GET", f"/jobs/{job_id}", retry=True, job_id=job_id).body

    def cancel(self, job_id: str) -> Answer:
        return self.call("DELETE", f"/jobs/{job_id}", retry=False, job_id=job_id)

    def page(self, status: str | None, limit: int, token: str | None) -> Json:
        params = {"limit": str(limit), "status": status, "next": token}
        return self.call("GET", "/jobs", params=params, retry=True).body

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | None] | None = None,
        body: Json | None = None,
        retry: bool,
        job_id: str | None = None,
    ) -> Answer:
        """One request, retried on transient failures when `retry`; any failure left is
        raised as the CLI's error for it (UsageError or CommandFailed)."""
        url = self.url + path + _query(params or {})
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        delays = RETRY.delays()
        for attempt in range(1, RETRIES + 2):
            try:
                return self._send(method, url, data)
            except ApiError as error:
                if not (retry and error.transient and attempt <= RETRIES):
                    raise cli_error(error, method, path, job_id) from None
                pause = max(next(delays), min(error.retry_after, RETRY.most))
                self.notice(f"{method} {path}: {_reason(error)}; retrying in {pause:g} s ({attempt}/{RETRIES})")
                self.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, url: str, data: bytes) -> Answer:
        """Sign (a fresh date and credentials each attempt) and send exactly what was signed."""
        headers = {"Accept": "application/json"}
        if data:
            headers["Content-Type"] = "application/json"
        signed = self.signer.sign(method, url, data, headers)
        try:
            response = self.session.request(
                method, url, data=data or None, headers=signed, timeout=HTTP_TIMEOUT, auth=_no_netrc
            )
        except requests.RequestException as exc:
            raise ApiError(None, f"cannot reach the job API at {urlsplit(url).netloc}: {_root_cause(exc)}") from None
        return _answer(response)


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit auth that changes nothing, so requests never adds credentials from ~/.netrc
    (a `default` entry matches every host): its Authorization header would replace the SigV4
    one, and S3 refuses a presigned link that comes with a second signature."""
    return request


def _query(params: Mapping[str, str | None]) -> str:
    """?a=b&c=d with RFC 3986 encoding, which is also how SigV4 canonicalises a query, so the
    URL signed and the URL sent are the same string."""
    present = sorted((key, value) for key, value in params.items() if value is not None)
    return "?" + urlencode(present, quote_via=quote) if present else ""


def _answer(response: requests.Response) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    if 200 <= response.status_code < 300 and isinstance(body, dict):
        return Answer(response.status_code, body)
    raise _error_of(response, body)


def _error_of(response: requests.Response, body: Any) -> ApiError:
    """The API's {"error": {"message", "field", ...}} or API Gateway's own {"message": ...}."""
    status = response.status_code
    retry_after = _seconds(response.headers.get("Retry-After"))
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = str(error.get("message") or f"HTTP {status}")
        field_name = error.get("field") if isinstance(error.get("field"), str) else None
        return ApiError(status, message, field_name, error, retry_after)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return ApiError(status, body["message"], None, {"gateway": True}, retry_after)
    if 200 <= status < 300:
        return ApiError(None, f"the job API answered HTTP {status} without a JSON object", None, {}, retry_after)
    excerpt = " ".join(response.text.split())[:120]
    return ApiError(status, f"HTTP {status}{': ' + excerpt if excerpt else ''}", None, {}, retry_after)


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests failure (urllib3 wraps the socket error)."""
    current: BaseException = exc
    for _ in range(8):
        nested = getattr(current, "reason", None) or current.__cause__ or current.__context__
        if nested is None and current.args and isinstance(current.args[0], BaseException):
            nested = current.args[0]
        if not isinstance(nested, BaseException) or nested is current:
            break
        current = nested
    return " ".join(str(current).split())[:200] or type(current).__name__


def _reason(error: ApiError) -> str:
    return error.message if error.status is None else f"HTTP {error.status} ({error.message[:120]})"


def cli_error(error: ApiError, method: str, path: str, job_id: str | None) -> UsageError | CommandFailed:
    """One clean line for an API failure; exit 2 for a request the API found invalid."""
    status = error.status
    if status in (400, 413, 422):
        return UsageError(f"{error.field}: {error.message}" if error.field else error.message)
    if status == 403:
        lowered = error.message.lower()
        if "should be scoped" in lowered:
            return CommandFailed(
                f"the job API refused the signature ({error.message}): pass --region with the API's region"
            )
        if "signature" in lowered or "security token" in lowered or "expired" in lowered:
            return CommandFailed(f"the job API refused the credentials ({error.message}): run `aws sso login`")
        return CommandFailed(NOT_ALLOWED)
    if status == 404:
        if error.details.get("gateway") or job_id is None:
            return CommandFailed(f"the job API has no route {method} {path}: is --api the output {API_OUTPUT}?")
        return CommandFailed(f"no such job: {job_id}")
    if status == 409:
        current = error.details.get("status")
        return CommandFailed(f"job {job_id} ({current}): {error.message}" if current else error.message)
    where = f"{method} {path}"
    if status is None:
        return CommandFailed(f"{where}: {error.message}")
    request_id = error.details.get("request_id")
    suffix = f" (request id {request_id})" if request_id else ""
    return CommandFailed(f"{where}: the job API answered HTTP {status}: {error.message}{suffix}")


def _stderr_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def connect(args: argparse.Namespace) -> JobsApi:
    """The API client for these arguments: URL, region, the caller's credentials."""
    url = api_url(args)
    region = args.region or region_of(url) or configured_region()
    if not region:
        raise UsageError(f"--region is required: {url} does not name its region and the AWS config sets none")
    return JobsApi(url, Signer.from_environment(region))


# --------------------------------------------------------------------------------------------
# submit


@dataclass(frozen=True)
class Submission:
    """The POST /jobs body, built once: every retry sends the same bytes and token."""

    document: Json
    seed: int | None
    notes: list[str]

    @property
    def client_token(self) -> str:
        return str(self.document["client_token"])


def parse_pairs(values: Sequence[str], option: str, example: str, problems: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            problems.append(f"{option} {value}: expected NAME=..., e.g. {option} {example}")
        else:
            pairs[name] = target
    return pairs


def _check_seed(seed: str | None, problems: list[str]) -> int | str | None:
    if seed is None or seed == "random":
        return seed
    if seed.isdigit() and int(seed) <= SEED_MAX:
        return int(seed)
    problems.append(f"--seed {seed}: give 'random' or a whole number from 0 to {SEED_MAX}")
    return None


def input_name(image: ImageInput) -> str:
    """The job input's name for a LoadImage value: the runner points LoadImage inputs whose
    value equals an input's name at the uploaded image, and names are plain file names, so
    "sub/cat.png" or "cat.png [input]" become "cat.png" (the workflow is rewritten to match)."""
    for candidate in (image.value, PurePosixPath(image.filename.replace("\\", "/")).name):
        if INPUT_NAME_PATTERN.fullmatch(candidate):
            return candidate
    raise UsageError(
        f"LoadImage node {image.node_id}: the image name {image.value!r} cannot be a job input; fix: rename the file "
        "to letters, digits, '_', '.', '-' and set that name in the workflow"
    )


@dataclass
class InputPlan:
    """The job's `inputs` and the workflow with LoadImage values set to their input names."""

    workflow: Json
    inputs: dict[str, Json] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # input name -> file or key, to spot clashes
    notes: list[str] = field(default_factory=list)


def plan_inputs(workflow: Json, workflow_path: Path, files: dict[str, str], keys: dict[str, str]) -> InputPlan:
    """Match --input/--input-key NAMEs (image name or node id) and files next to the workflow
    to the workflow's LoadImage nodes."""
    images = find_input_images(workflow)
    unknown = [
        f"{option} {name}=...: no LoadImage node uses {name!r}"
        for option, given in (("--input", files), ("--input-key", keys))
        for name in given
        if not any(name in (image.node_id, image.value, image.filename) for image in images)
    ]
    if unknown:
        uses = ", ".join(f"{image.filename} (node {image.node_id})" for image in images) or "none"
        raise UsageError(*(f"{line}; the workflow's input images: {uses}" for line in unknown))
    plan = InputPlan(workflow)
    for image in images:
        _plan_image(plan, image, workflow_path, files, keys)
    return plan


def _given(image: ImageInput, given: dict[str, str]) -> str | None:
    return given.get(image.node_id) or given.get(image.value) or given.get(image.filename)


def _plan_image(
    plan: InputPlan, image: ImageInput, workflow_path: Path, files: dict[str, str], keys: dict[str, str]
) -> None:
    path, key = _given(image, files), _given(image, keys)
    if path and key:
        raise UsageError(f"LoadImage node {image.node_id} ({image.filename}): given both --input and --input-key")
    beside = workflow_path.parent / image.filename
    if path is None and key is None and beside.is_file():
        path = str(beside)
    if path is None and key is None:
        plan.notes.append(
            f"input image {image.filename!r} (node {image.node_id}) is not next to the workflow nor given with "
            "--input/--input-key: ComfyUI must find it in its input folder (the inputs bucket)"
        )
        return
    name = input_name(image)
    source = f"file {path}" if path else f"key {key}"
    if plan.sources.get(name, source) != source:
        raise UsageError(f"two LoadImage nodes need different images named {name!r} ({plan.sources[name]}, {source})")
    if name not in plan.inputs:
        plan.inputs[name] = {"base64": _read_base64(Path(path))} if path else {"s3_key": key}
        plan.sources[name] = source
    if name != image.value:
        plan.workflow = set_input(plan.workflow, image.node_id, image.input_name, name)


def _read_base64(path: Path) -> str:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise UsageError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None


def build_submission(args: argparse.Namespace) -> Submission:
    """Check the arguments and build the request body; every problem is one UsageError line."""
    problems: list[str] = []
    files = parse_pairs(args.input, "--input", "photo.png=./photo.png", problems)
    keys = parse_pairs(args.input_key, "--input-key", "photo.png=uploads/photo.png", problems)
    problems += [f"--input {name}={path}: no such file" for name, path in files.items() if not Path(path).is_file()]
    seed = _check_seed(args.seed, problems)
    _check_wait_options(args, problems)
    if args.out is not None and not args.wait:
        problems.append("--out needs --wait (outputs exist once the job succeeded); or use `jobs wait ID --out DIR`")
    token = args.client_token if args.client_token is not None else str(uuid.uuid4())
    if not CLIENT_TOKEN_PATTERN.fullmatch(token):
        problems.append("--client-token: 1 to 128 printable ASCII characters without spaces (e.g. a UUID)")
    if problems:
        raise UsageError(*problems)
    try:
        workflow = load_workflow(args.workflow)
    except WorkflowError as exc:
        raise UsageError(*exc.lines) from None
    notes: list[str] = []
    chosen = random_seed() if seed == "random" else seed if isinstance(seed, int) else None
    if chosen is not None:
        if not seed_inputs(workflow):
            notes.append("--seed: the workflow has no seed or noise_seed input; nothing to set")
        workflow = apply_seed(workflow, chosen)
    plan = plan_inputs(workflow, args.workflow, files, keys)
    document: Json = {"workflow": plan.workflow, "client_token": token}
    if plan.inputs:
        document["inputs"] = plan.inputs
    if args.webhook is not None:
        document["webhook_url"] = args.webhook
    _check_size(document)
    return Submission(document, chosen, notes + plan.notes)


def _check_size(document: Json) -> None:
    size = len(json.dumps(document, separators=(",", ":")).encode())
    if size > MAX_REQUEST_BYTES:
        raise UsageError(
            f"the request is {size / 2**20:.1f} MiB, over the job API's {MAX_REQUEST_BYTES / 2**20:.0f} MiB; "
            "fix: upload large images to the inputs bucket and pass them with --input-key NAME=S3_KEY"
        )


def run_submit(args: argparse.Namespace) -> int:
    submission = build_submission(args)
    api = connect(args)
    for note in submission.notes:
        _stderr_note(note)
    answer = api.create(submission.document)
    job_id = str(answer.body.get("job_id", ""))
    extra: Json = {"client_token": submission.client_token, "replayed": answer.status == 200}
    if submission.seed is not None:
        extra["seed"] = submission.seed
    if answer.status == 200:
        _stderr_note(f"job {job_id} was already submitted with this client token: this is that job")
    if args.wait:
        return follow(api, job_id, timeout=args.timeout, out=args.out, as_json=args.format == "json", extra=extra)
    if args.format == "json":
        print(json.dumps({**answer.body, **extra}, indent=2))
    else:
        print(job_id)
        seed = f", seed {submission.seed}" if submission.seed is not None else ""
        status = answer.body.get("status")
        print(
            f"submitted job {job_id} ({status}{seed}); follow it with: comfyui-eks jobs wait {job_id}", file=sys.stderr
        )
    return 0


# --------------------------------------------------------------------------------------------
# get, cancel, ls


def run_get(args: argparse.Namespace) -> int:
    job_id = job_id_of(args.job_id)
    view = connect(args).get(job_id)
    if args.format == "json":
        print(json.dumps(view, indent=2))
    else:
        print("\n".join(describe(view)))
    return 0


def describe(view: Json) -> list[str]:
    """A job as aligned "key  value" lines."""
    rows = [
        ("job", view.get("job_id")),
        ("status", _status_words(view)),
        ("created", view.get("created_at")),
        ("started", view.get("started_at")),
        ("finished", view.get("finished_at")),
        ("attempts", view.get("attempts")),
        ("inputs", ", ".join(view.get("inputs") or []) or None),
    ]
    lines = [f"{key:<9} {'-' if value is None else value}" for key, value in rows]
    lines += [f"{'error':<9} {line}" for line in str(view.get("error") or "").splitlines()[:20]]
    lines += [f"{'output':<9} {o.get('name')}  {o.get('url')}" for o in view.get("outputs") or []]
    return lines


def _status_words(view: Json) -> str:
    status = str(view.get("status"))
    return f"{status} (cancel requested)" if view.get("cancel_requested") and status == RUNNING else status


def run_cancel(args: argparse.Namespace) -> int:
    job_id = job_id_of(args.job_id)
    answer = connect(args).cancel(job_id)
    if args.format == "json":
        print(json.dumps(answer.body, indent=2))
    elif answer.status == 202:
        print(
            f"job {job_id}: cancel requested; its runner stops it within about a minute "
            f"(comfyui-eks jobs wait {job_id} shows it end)"
        )
    else:
        print(f"job {job_id} {answer.body.get('status', 'cancelled')}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give the number of jobs to show, 1 or more")
    api = connect(args)
    jobs, more = list_jobs(api, args.status, args.limit)
    if args.format == "json":
        print(json.dumps({"jobs": jobs, "more": more}, indent=2))
        return 0
    if not jobs:
        print(f"no {args.status + ' ' if args.status else ''}jobs", file=sys.stderr)
        return 0
    print("\n".join(table(jobs)))
    if more:
        print(f"more jobs than these {len(jobs)}: --limit N shows more", file=sys.stderr)
    return 0


def list_jobs(api: JobsApi, status: str | None, limit: int) -> tuple[list[Json], bool]:
    """Up to `limit` jobs newest first, following the API's pages; and whether more exist."""
    jobs: list[Json] = []
    token: str | None = None
    while len(jobs) < limit:
        page = api.page(status, min(PAGE_SIZE, limit - len(jobs)), token)
        jobs += [job for job in page.get("jobs") or [] if isinstance(job, dict)]
        token = page.get("next") if isinstance(page.get("next"), str) else None
        if not token:
            return jobs, False
    return jobs, True


def table(jobs: Sequence[Json]) -> list[str]:
    header = ("JOB ID", "STATUS", "CREATED", "FINISHED", "ATTEMPTS", "ERROR")
    rows = [
        (
            str(job.get("job_id")),
            _status_words(job),
            str(job.get("created_at") or "-"),
            str(job.get("finished_at") or "-"),
            str(job.get("attempts", 0)),
            _first_line(job.get("error"), 60),
        )
        for job in jobs
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in (header, *rows)
    ]


def _first_line(text: Any, limit: int) -> str:
    line = str(text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# wait


def run_wait(args: argparse.Namespace) -> int:
    job_id = job_id_of(args.job_id)
    problems: list[str] = []
    _check_wait_options(args, problems)
    if problems:
        raise UsageError(*problems)
    api = connect(args)
    return follow(api, job_id, timeout=args.timeout, out=args.out, as_json=args.format == "json")


class StatusDisplay:
    """The job's progress on stderr: one rich spinner line on a terminal (status, attempt,
    time), one plain line per change elsewhere (CI logs stay short over a long wait)."""

    def __init__(self, job_id: str, stream: TextIO | None = None, *, force_terminal: bool | None = None) -> None:
        from rich.console import Console

        self.job_id = job_id
        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal, highlight=False)
        self._progress: Any = None
        self._task: Any = None
        self._last: tuple[Any, ...] | None = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(f"job {self.job_id}: asking", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        self.console.print(f"note: {message}", markup=False, soft_wrap=True)

    def show(self, view: Json) -> bool:
        """Show the job's state; whether it changed since the last call."""
        state = (view.get("status"), view.get("attempts"), bool(view.get("cancel_requested")))
        changed = state != self._last
        self._last = state
        text = f"job {self.job_id}: {state_words(view)}"
        if self._progress is not None:
            self._progress.update(self._task, description=text)
        elif changed:
            self.console.print(text, markup=False, soft_wrap=True)
        return changed


def state_words(view: Json) -> str:
    """queued / queued again / running (attempt N) / cancel requested / the end."""
    status = str(view.get("status"))
    attempts = int(view.get("attempts") or 0)
    if status == QUEUED:
        return f"queued again (attempt {attempts} was interrupted)" if attempts else "queued"
    if status == RUNNING:
        cancel = ", cancel requested" if view.get("cancel_requested") else ""
        return f"running (attempt {attempts}){cancel}"
    return f"{status} after {attempts} attempt{'s' if attempts != 1 else ''}"


def poll(api: JobsApi, job_id: str, timeout: float, display: StatusDisplay) -> Json:
    """GET the job until it ends or `timeout` passes; the last view either way."""
    deadline = time.monotonic() + timeout
    delays = POLL.delays()
    view = api.get(job_id)
    while True:
        if display.show(view):
            delays = POLL.delays()
        remaining = deadline - time.monotonic()
        if view.get("status") in TERMINAL or remaining <= 0:
            return view
        api.sleep(min(next(delays), remaining))
        view = api.get(job_id)


def follow(
    api: JobsApi, job_id: str, *, timeout: float, out: Path | None, as_json: bool, extra: Json | None = None
) -> int:
    """Wait for the job's end, download its outputs into `out`, print the result; exit 1
    (CommandFailed) unless it succeeded."""
    with StatusDisplay(job_id) as display:
        api.notice = display.note
        try:
            view = poll(api, job_id, timeout, display)
        except KeyboardInterrupt:
            display.note(f"job {job_id} carries on: comfyui-eks jobs wait {job_id}, or cancel it")
            raise
        except CommandFailed as exc:  # the API stopped answering; the job does not depend on us
            raise CommandFailed(*exc.lines, f"job {job_id} carries on: comfyui-eks jobs wait {job_id}") from None
        finally:
            api.notice = _stderr_note
    status = view.get("status")
    files = download_all(view, out) if status == SUCCEEDED and out is not None else []
    report(view, files, out, as_json, extra or {})
    if status == SUCCEEDED:
        return 0
    if status not in TERMINAL:
        raise CommandFailed(
            f"job {job_id} is still {status} after {timeout:g} s; it carries on: comfyui-eks jobs wait {job_id} "
            f"(or cancel it)"
        )
    error = str(view.get("error") or "").strip().splitlines()
    if status == CANCELLED:
        raise CommandFailed(f"job {job_id} was cancelled", *error)
    raise CommandFailed(f"job {job_id} failed: {error[0] if error else 'no error recorded'}", *error[1:20])


def report(view: Json, files: list[tuple[Json, Path]], out: Path | None, as_json: bool, extra: Json) -> None:
    """stdout: the downloaded paths, or the output links (or the whole job as JSON)."""
    if as_json:
        document = {**view, **extra}
        if out is not None:
            document["files"] = [{"name": output.get("name"), "path": str(path)} for output, path in files]
        print(json.dumps(document, indent=2))
        return
    if view.get("status") != SUCCEEDED:
        return
    if out is not None:
        for _, path in files:
            print(path)
    else:
        for output in view.get("outputs") or []:
            print(output.get("url"))
    count = len(view.get("outputs") or [])
    where = f" in {out}" if out is not None else f" (links valid until {view.get('output_urls_expire_at')})"
    print(
        f"job {view.get('job_id')} succeeded: {count} output{'s' if count != 1 else ''}{where if count else ''}",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------------------
# Downloads


def download_all(view: Json, out: Path) -> list[tuple[Json, Path]]:
    """Every output of the job into `out` (its subfolders kept), from the presigned links."""
    session = requests.Session()
    return [(output, download(session, output, out)) for output in view.get("outputs") or []]


def target_path(out: Path, name: str) -> Path:
    """out/name for an output's name (its path under the job's prefix), refusing to leave `out`."""
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".", "/")]
    if not parts or ".." in parts:
        raise CommandFailed(f"the job API named an output {name!r} that is not a path inside the output directory")
    return out.joinpath(*parts)


def download(session: requests.Session, output: Json, out: Path) -> Path:
    """One output, retried on network errors and 5xx; never overwrites (a different file of
    the same name gets a -N suffix; identical content is not written twice)."""
    name = str(output.get("name") or output.get("key") or "")
    target = target_path(out, name)
    delays = RETRY.delays()
    for attempt in range(1, RETRIES + 2):
        try:
            return _download_once(session, str(output.get("url")), target)
        except ApiError as error:
            if not error.transient or attempt > RETRIES:
                raise CommandFailed(f"downloading {name} failed: {error.message}") from None
            time.sleep(next(delays))
    raise AssertionError("unreachable")  # pragma: no cover


def _download_once(session: requests.Session, url: str, target: Path) -> Path:
    try:
        response = session.get(url, stream=True, timeout=HTTP_TIMEOUT, auth=_no_netrc)
    except requests.RequestException as exc:
        raise ApiError(None, f"cannot reach {urlsplit(url).netloc}: {_root_cause(exc)}") from None
    with response:
        if response.status_code != 200:
            hint = (
                " (the link expired? run `comfyui-eks jobs wait ID --out DIR` again)"
                if response.status_code == 403
                else ""
            )
            raise ApiError(response.status_code, f"HTTP {response.status_code}{hint}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        digest = hashlib.sha256()
        try:
            with open(partial, "xb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
            final = _free_name(target, digest.hexdigest())
            if not final.exists():
                os.replace(partial, final)
        except requests.RequestException as exc:
            raise ApiError(None, f"the download was cut short: {_root_cause(exc)}") from None
        finally:
            partial.unlink(missing_ok=True)
    return final
