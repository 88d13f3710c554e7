"""The job API Lambda (`api.handler`) behind an API Gateway HTTP API (payload format 2.0, IAM
authorization on every route). One function, routed by `routeKey`:

    POST   /jobs        create a job (201), or return the one a client_token already made (200)
    GET    /jobs        recent jobs newest first (?status=&limit=&next=)
    GET    /jobs/{id}   one job: status, times, error, outputs as presigned links
    DELETE /jobs/{id}   cancel: queued -> cancelled (200), running -> cancel requested (202)

Every answer is JSON. Errors are `{"error": {"message", "field", ...}}` and never carry a
stack trace; an unexpected error is a 500 with the request id, which is also in the log.
One JSON log line per request: route, status, job id, caller ARN, top-level field of a
refusal, duration; never the workflow, the images, input names or the webhook URL.

Creating a job writes, in this order: the input images and (if too large for a message) the
workflow to S3, the job item (+ idempotency item, atomically), then the one SQS message. A
failure before the item leaves only unreferenced S3 objects under jobs/<unused id>/ (the
inputs bucket's lifecycle rule removes them); a failed send marks the job failed (and frees
its client_token) and answers 503, so no job is ever left queued without a message. The
only gap left is the Lambda being killed between the item and the message: the handler
starts those steps only with enough of its time left for them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

try:  # imported as the package lambda_src.jobs (tests)
    from . import aws, contract, listing, store, validation, views
    from .settings import ApiSettings
    from .validation import RequestError
except ImportError:  # packaged flat: every module at the root of the zip
    import aws  # type: ignore[no-redef]
    import contract  # type: ignore[no-redef]
    import listing  # type: ignore[no-redef]
    import store  # type: ignore[no-redef]
    import validation  # type: ignore[no-redef]
    import views  # type: ignore[no-redef]
    from settings import ApiSettings  # type: ignore[no-redef]
    from validation import RequestError  # type: ignore[no-redef]

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

# Milliseconds of the invocation that must be left before starting to create a job (uploads,
# item, message), and before writing the item (message, and marking the job failed if the
# message fails): a timeout must not fall between the item and its message.
CREATE_RESERVE_MS = 15_000
SEND_RESERVE_MS = 8_000
DAY_SECONDS = 86_400
_ASSUMED_ROLE = re.compile(r"arn:(aws[a-z-]*):sts::([0-9]{12}):assumed-role/([^/]+)/.+", re.ASCII)


class Unavailable(Exception):
    """A transient failure the caller should retry (503)."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id


@dataclass(frozen=True)
class Caller:
    """Who signed the request, as API Gateway's IAM authorizer saw it."""

    arn: str  # e.g. arn:aws:sts::123456789012:assumed-role/Pipeline/run-42
    principal: str  # the same without the session: the scope of client_tokens


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    job_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_body(message: str, field_name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "field": field_name, **extra}}


def principal_of(arn: str) -> str:
    """An assumed-role session -> its role (sessions change on every credential refresh, and a
    pipeline retrying after one is still the same caller); any other ARN as it is."""
    match = _ASSUMED_ROLE.fullmatch(arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:sts::{account}:assumed-role/{role}"
    return arn


def caller_of(event: Any) -> Caller | None:
    """The SigV4 caller, or None if the request did not come through the IAM authorizer (a
    misconfigured route): the API then refuses to act rather than act for nobody."""
    try:
        arn = event["requestContext"]["authorizer"]["iam"]["userArn"]
    except (KeyError, TypeError):
        return None
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        return None
    return Caller(arn=arn, principal=principal_of(arn))


def _settings() -> ApiSettings:
    return ApiSettings.from_env(os.environ)


def _remaining_ms(context: Any) -> float:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return float(getter()) if callable(getter) else float("inf")


def _require_time(context: Any, needed_ms: int) -> None:
    if _remaining_ms(context) < needed_ms:
        raise Unavailable("the API ran short of time for this request; retry it (the same client_token is fine)")


# --- POST /jobs -----------------------------------------------------------------------------


def _replay(settings: ApiSettings, token: store.Token, now: int) -> Reply | None:
    """The answer for a client_token already used by this caller, or None if it is new."""
    existing = store.live_token(settings, token.key, now)
    if existing is None:
        return None
    job_id = str(existing.get(contract.TOKEN_JOB_ID, ""))
    if existing.get(contract.REQUEST_SHA256) != token.fingerprint:
        raise RequestError(
            422,
            f"client_token was already used for a different request (job {job_id}); fix: use a new client_token "
            "for a new job, or send exactly the same request to get that job",
            "client_token",
        )
    job = store.get_job(settings, job_id)
    if job is None:
        raise RequestError(
            409,
            f"client_token belongs to job {job_id}, which no longer exists; fix: a new client_token",
            "client_token",
        )
    return Reply(200, views.created_view(job), job_id)


def _check_s3_inputs(settings: ApiSettings, request: validation.JobRequest) -> None:
    for name, key in request.s3_inputs.items():
        size = store.input_size(settings, key)
        where = f"inputs.{name}.s3_key"
        if size is None:
            raise RequestError(
                400,
                f"no object {json.dumps(key)} in the inputs bucket; fix: upload it first, or correct the key",
                where,
            )
        if size > store.MAX_S3_INPUT_BYTES:
            raise RequestError(400, f"object {json.dumps(key)} is larger than {store.MAX_S3_INPUT_BYTES} bytes", where)


def _copy_s3_inputs(settings: ApiSettings, job_id: str, request: validation.JobRequest) -> dict[str, str]:
    copied: dict[str, str] = {}
    for name, key in request.s3_inputs.items():
        try:
            copied[name] = store.copy_input(settings, job_id, name, key)
        except ClientError as exc:
            if aws.error_code(exc) not in store.MISSING_CODES:
                raise
            raise RequestError(
                400, f"object {json.dumps(key)} left the inputs bucket; fix: upload it again", f"inputs.{name}.s3_key"
            ) from None
    return copied


def _new_item(
    settings: ApiSettings,
    job_id: str,
    request: validation.JobRequest,
    inputs: dict[str, str],
    workflow_key: str | None,
    caller: Caller,
    now: int,
) -> dict[str, Any]:
    return {
        contract.JOB_ID: job_id,
        contract.STATUS: contract.QUEUED,
        contract.CREATED_AT: now,
        contract.UPDATED_AT: now,
        contract.EXPIRES_AT: now + settings.retention_days * DAY_SECONDS,
        contract.ATTEMPTS: 0,
        contract.INPUTS: inputs,
        contract.WEBHOOK_URL: request.webhook_url,
        contract.WORKFLOW_KEY_ATTR: workflow_key,
        contract.SUBMITTED_BY: caller.arn,
    }


def _describe(exc: BaseException) -> str:
    """A short, safe description of an AWS failure (its code, never request data)."""
    if isinstance(exc, ClientError):
        return aws.error_code(exc) or "ClientError"
    return type(exc).__name__


def _stage(settings: ApiSettings, job_id: str, request: validation.JobRequest) -> tuple[dict[str, str], str | None]:
    """S3 before the item: the inputs under the job's prefix, and the workflow when it is too
    large for the message. Returns (inputs by name, workflow key or None: inline)."""
    inputs = {name: store.put_input(settings, job_id, name, data) for name, data in request.inline_inputs.items()}
    inputs |= _copy_s3_inputs(settings, job_id, request)
    # Measured as sent: the message escapes non-ASCII text (up to 6 bytes a character).
    if len(contract.message_body(job_id, request.workflow)) <= contract.MAX_INLINE_WORKFLOW_BYTES:
        return inputs, None
    return inputs, store.put_workflow(settings, job_id, request.workflow_json)


def _enqueue(
    settings: ApiSettings, job_id: str, workflow: dict[str, Any] | None, token: store.Token | None, now: int
) -> None:
    """Send the job's one message; if that fails, the job is failed (nothing would ever run it)
    and its client_token freed, and the caller gets a 503 to retry."""
    try:
        store.send(settings, job_id, workflow)
    except Exception as exc:  # any failure to queue means the same: fail the job, tell the caller
        reason = _describe(exc)
        LOG.error(json.dumps({"event": "send_failed", "job_id": job_id, "error": reason}))
        error = f"the job could not be queued ({reason}) and never ran; submit it again"
        store.fail_unsent(settings, job_id, error, token, now)
        raise Unavailable(
            "the job could not be queued and was not run; retry (the same client_token is fine)", job_id
        ) from exc


def create_job(event: dict[str, Any], caller: Caller, context: Any) -> Reply:
    request = validation.parse_request(event.get("body"), bool(event.get("isBase64Encoded")))
    settings = _settings()
    now = contract.now()
    token = None
    if request.client_token is not None:
        token = store.Token(contract.client_token_key(caller.principal, request.client_token), request.fingerprint)
        replay = _replay(settings, token, now)
        if replay is not None:
            return replay
    _check_s3_inputs(settings, request)
    _require_time(context, CREATE_RESERVE_MS)
    job_id = uuid.uuid4().hex
    inputs, workflow_key = _stage(settings, job_id, request)
    item = _new_item(settings, job_id, request, inputs, workflow_key, caller, now)
    _require_time(context, SEND_RESERVE_MS)
    try:
        store.put_job(settings, item, token, now)
    except store.TokenTaken as taken:  # a concurrent request with the same token won
        replay = _replay(settings, taken.token, now)
        if replay is None:
            raise Unavailable("a concurrent request with this client_token is being processed; retry") from None
        return replay
    _enqueue(settings, job_id, request.workflow if workflow_key is None else None, token, now)
    return Reply(201, views.created_view(item), job_id)


# --- GET/DELETE /jobs/{id}, GET /jobs ------------------------------------------------------


def _path_job_id(event: dict[str, Any]) -> str | None:
    params = event.get("pathParameters") or {}
    return validation.job_id_or_none(params.get("id") if isinstance(params, dict) else None)


def _not_found(job_id: str | None) -> Reply:
    return Reply(404, error_body("no such job; fix: use the job_id POST /jobs returned", "id"), job_id)


def get_job(event: dict[str, Any], caller: Caller, context: Any) -> Reply:
    job_id = _path_job_id(event)
    if job_id is None:
        return _not_found(None)
    settings = _settings()
    item = store.get_job(settings, job_id)
    if item is None:
        return _not_found(job_id)
    presign = aws.presigner(settings.outputs_bucket, views.PRESIGN_SECONDS)
    return Reply(200, views.public_view(item, presign, contract.now()), job_id)


def cancel_job(event: dict[str, Any], caller: Caller, context: Any) -> Reply:
    job_id = _path_job_id(event)
    if job_id is None:
        return _not_found(None)
    settings = _settings()
    now = contract.now()
    result = store.cancel(settings, job_id, now)
    if result.outcome == "missing" or result.item is None:
        return _not_found(job_id)
    if result.outcome == "busy":
        raise Unavailable("the job's status kept changing; retry", job_id)
    status = result.item[contract.STATUS]
    if result.outcome == "ended":
        message = f"the job has already {'been ' if status == contract.CANCELLED else ''}{status}; nothing to cancel"
        return Reply(409, error_body(message, None, status=status), job_id)
    presign = aws.presigner(settings.outputs_bucket, views.PRESIGN_SECONDS)
    view = views.public_view(result.item, presign, now)
    return Reply(200 if result.outcome == "cancelled" else 202, view, job_id)


def list_jobs(event: dict[str, Any], caller: Caller, context: Any) -> Reply:
    query = listing.parse_query(event.get("queryStringParameters"))
    settings = _settings()
    items, token = listing.list_jobs(query, lambda s, n, c: store.query_status(settings, s, n, c))
    next_link = None
    if token:
        params = {"limit": str(query.limit), "next": token}
        if query.scope != listing.ALL:
            params["status"] = query.scope
        next_link = "/jobs?" + urlencode(sorted(params.items()))
    body = {"jobs": [views.summary_view(item) for item in items], "next": token, "links": {"next": next_link}}
    return Reply(200, body)


Route = Callable[[dict[str, Any], Caller, Any], Reply]
ROUTES: dict[str, Route] = {
    "POST /jobs": create_job,
    "GET /jobs": list_jobs,
    "GET /jobs/{id}": get_job,
    "DELETE /jobs/{id}": cancel_job,
}


# --- the handler ----------------------------------------------------------------------------


def _log_failure(exc: BaseException, request_id: str, route: Any) -> None:
    """The traceback for the 500 (stack frames and exception type; the message only when it
    is AWS's or short, since other messages could quote request data)."""
    message = str(exc) if isinstance(exc, ClientError) else str(exc)[:200]
    frames = "".join(traceback.format_tb(exc.__traceback__))
    LOG.error(
        "%s\n%s",
        json.dumps(
            {
                "event": "unexpected_error",
                "request_id": request_id,
                "route": route,
                "error": type(exc).__name__,
                "message": message,
            }
        ),
        frames,
    )


def _top_field(reply: Reply) -> str | None:
    """The top-level field of a refusal ("inputs", "workflow"...): enough to count errors by,
    and unlike "inputs.<name>" it never quotes what the caller sent."""
    field_name = reply.body.get("error", {}).get("field") if reply.status >= 400 else None
    return field_name.split(".", 1)[0] if isinstance(field_name, str) else None


def dispatch(event: Any, context: Any, request_id: str) -> tuple[Reply, str | None]:
    """(reply, caller ARN) for one API Gateway event; never raises."""
    route = event.get("routeKey") if isinstance(event, dict) else None
    caller = caller_of(event)
    if caller is None:
        return Reply(403, error_body("this API needs SigV4 (IAM) authorization")), None
    action = ROUTES.get(route) if isinstance(route, str) else None
    if action is None:
        return Reply(404, error_body(f"no route {json.dumps(str(route)[:60])}; fix: see the API's routes")), caller.arn
    try:
        return action(event, caller, context), caller.arn
    except RequestError as exc:
        return Reply(exc.status, error_body(exc.message, exc.field)), caller.arn
    except Unavailable as exc:
        body = error_body(exc.message, None, request_id=request_id, job_id=exc.job_id)
        return Reply(503, body, exc.job_id, {"Retry-After": "1"}), caller.arn
    except Exception as exc:  # noqa: BLE001 - the API's last line: log it, answer 500/503 without details
        _log_failure(exc, request_id, route)
        if aws.is_retryable(exc):
            body = error_body("a service the API depends on is unavailable; retry", None, request_id=request_id)
            return Reply(503, body, None, {"Retry-After": "1"}), caller.arn
        return Reply(500, error_body("internal error", None, request_id=request_id)), caller.arn


def handler(event: Any, context: Any) -> dict[str, Any]:
    started = time.monotonic()
    request_id = str(getattr(context, "aws_request_id", "") or uuid.uuid4())
    reply, caller_arn = dispatch(event, context, request_id)
    context_ = event.get("requestContext") if isinstance(event, dict) else None
    LOG.info(
        json.dumps(
            {
                "event": "request",
                "request_id": request_id,
                "api_request_id": context_.get("requestId") if isinstance(context_, dict) else None,
                "route": event.get("routeKey") if isinstance(event, dict) else None,
                "status": reply.status,
                "job_id": reply.job_id,
                "caller": caller_arn,
                "error_field": _top_field(reply),
                "ms": round((time.monotonic() - started) * 1000),
            }
        )
    )
    return {
        "statusCode": reply.status,
        "headers": {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            "X-Request-Id": request_id,
            **reply.headers,
        },
        "body": json.dumps(reply.body, separators=(",", ":")),
        "isBase64Encoded": False,
    }
