"""The job contract: what the job API (Lambdas) and the job runner (the sidecar in every
ComfyUI pod) agree on, written once. Standard library only: this file is packaged into the
API's Lambda zip and shipped into the pod next to the runner.

Storage
- DynamoDB table (TABLE_ENV): one item per job, key JOB_ID. Status transitions are
  conditional writes (below), so a job runs to one recorded result however often SQS
  delivers its message.
- SQS queue (QUEUE_ENV): one message per job attempt, body `{"job_id": ...}` (plus the
  workflow inline when it fits, see `message_body`). Its dead-letter queue receives a job
  whose runs kept dying (max receive count = jobs.max_attempts); a Lambda then marks it failed.
- S3: workflows too large for a message at WORKFLOW_KEY; input images at INPUT_KEY (inputs
  bucket: inline ones decoded there, ones named by `s3_key` copied there when the job is
  created, so a job reads only its own snapshot under jobs/<id>/); outputs at OUTPUT_PREFIX
  (outputs bucket).
- The API sends exactly one message per job (never a second one for the same job); SQS
  redelivers it for every further attempt.
- The table also holds one idempotency item per (caller, client_token) of POST /jobs, keyed
  `client_token_key(...)`: never a job id (JOB_ID_PATTERN never matches it), no status (so
  never in STATUS_INDEX, and no update below can ever match it), never in a message.

Status machine
    queued --claim--> running --finish--> succeeded | failed
    queued --cancel--> cancelled            running --cancel request--> cancelled (runner)
    running --release (SIGTERM, lease expired)--> queued (attempt counted)
    queued --message never sent (POST /jobs)--> failed           any live state --dead letter--> failed | cancelled
A runner owns a running job while `lease_until` (epoch seconds) is in the future and
`runner` names it; it renews the lease while it works. Only the owner may finish or release.
Every write into a terminal status is conditional on a non-terminal one, and no write
touches a terminal item: a terminal status is final, and each job enters one exactly once
(the webhook Lambda relies on that to POST once per job).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

# --- environment variable names (Terraform sets them; the code reads them) ----------------
TABLE_ENV = "JOBS_TABLE"
QUEUE_ENV = "JOBS_QUEUE_URL"
INPUTS_BUCKET_ENV = "INPUTS_BUCKET"
OUTPUTS_BUCKET_ENV = "OUTPUTS_BUCKET"
WEBHOOK_SECRET_ENV = "WEBHOOK_SECRET_ARN"
RETENTION_DAYS_ENV = "JOBS_RETENTION_DAYS"
MAX_ATTEMPTS_ENV = "JOBS_MAX_ATTEMPTS"
TIMEOUT_SECONDS_ENV = "JOBS_TIMEOUT_SECONDS"

# --- statuses -------------------------------------------------------------------------------
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

# --- item attributes ------------------------------------------------------------------------
JOB_ID = "job_id"
STATUS = "status"
CREATED_AT = "created_at"  # epoch seconds (number); also the sort key of STATUS_INDEX
UPDATED_AT = "updated_at"
STARTED_AT = "started_at"
FINISHED_AT = "finished_at"
ATTEMPTS = "attempts"  # runs started (claims)
RUNNER = "runner"  # the pod running it
LEASE_UNTIL = "lease_until"
CANCEL_REQUESTED = "cancel_requested"
ERROR = "error"  # text: ComfyUI's node errors or exception message, or why it was given up
WORKFLOW_KEY_ATTR = "workflow_key"  # S3 key of the workflow when it is not in the message
INPUTS = "inputs"  # {name: S3 key in the inputs bucket}
OUTPUTS = "outputs"  # [S3 keys in the outputs bucket]
WEBHOOK_URL = "webhook_url"
PROMPT_ID = "prompt_id"  # ComfyUI's id of the current run
EXPIRES_AT = "expires_at"  # DynamoDB TTL attribute (epoch seconds)
SUBMITTED_BY = "submitted_by"  # IAM ARN of the caller that created the job (audit only)
# Idempotency items (see `client_token_key`): the job the token created, and a hash of the
# request, so the same token with a different request is refused instead of answered wrongly.
TOKEN_JOB_ID = "token_job_id"
REQUEST_SHA256 = "request_sha256"
CLIENT_TOKEN_KEY_PREFIX = "client-token#"
# Global secondary index: recent jobs by status (GET /jobs?status=).
STATUS_INDEX = "status-created_at"

# --- limits -----------------------------------------------------------------------------------
# SQS takes 256 KiB per message; a workflow larger than this travels through S3.
MAX_INLINE_WORKFLOW_BYTES = 200 * 1024
# The API refuses bodies above this (API Gateway's own limit is 10 MB).
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# How long a claim lasts without renewal; the runner renews at a third of it, and keeps the
# message invisible as long (so SQS redelivers a job only after its runner stopped renewing).
LEASE_SECONDS = 120
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}", re.ASCII)
# Input image names as LoadImage nodes reference them (no folders, no hidden files).
INPUT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)


# --- S3 keys ------------------------------------------------------------------------------
# Every object of a job, in the inputs and the outputs bucket, is under JOBS_PREFIX<id>/: the
# IAM policies (modules/jobs.py) and the inputs bucket's expiry rule (modules/model_store.py)
# name this prefix.
JOBS_PREFIX = "jobs/"


def workflow_key(job_id: str) -> str:
    """Inputs bucket: the workflow of a job too large for its SQS message."""
    return f"{JOBS_PREFIX}{job_id}/workflow.json"


def input_key(job_id: str, name: str) -> str:
    """Inputs bucket: an input image sent inline (base64) with the job."""
    return f"{JOBS_PREFIX}{job_id}/inputs/{name}"


def output_prefix(job_id: str) -> str:
    """Outputs bucket: every file the job produced, under its job id."""
    return f"{JOBS_PREFIX}{job_id}/"


def comfyui_subfolder(job_id: str) -> str:
    """The input subfolder in ComfyUI that holds one job's uploaded images (never shared).
    ComfyUI's input folder is the inputs bucket (Mountpoint), so this must not be a prefix the
    API writes to itself (jobs/<id>/inputs/, jobs/<id>/workflow.json)."""
    return f"{JOBS_PREFIX}{job_id}/comfyui"


def client_token_key(principal: str, token: str) -> str:
    """The table key of the idempotency item of `token` sent by `principal`: tokens of
    different callers never collide, and neither the token nor the ARN is stored in clear."""
    digest = hashlib.sha256(f"{principal}\n{token}".encode()).hexdigest()
    return CLIENT_TOKEN_KEY_PREFIX + digest


def message_body(job_id: str, workflow: dict[str, Any] | None) -> str:
    """The SQS message of a job: the workflow inline when it fits, else only the id (the
    runner reads `workflow_key` from S3)."""
    body: dict[str, Any] = {"job_id": job_id}
    if workflow is not None:
        body["workflow"] = workflow
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_message(body: str) -> tuple[str, dict[str, Any] | None]:
    """(job_id, inline workflow or None); ValueError on anything else."""
    data = json.loads(body)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("job_id"), str)
        or not JOB_ID_PATTERN.fullmatch(data["job_id"])
    ):
        raise ValueError("not a job message")
    workflow = data.get("workflow")
    if workflow is not None and not isinstance(workflow, dict):
        raise ValueError("workflow is not an object")
    return data["job_id"], workflow


def now() -> int:
    return int(time.time())


# --- conditional writes (DynamoDB UpdateItem arguments, without TableName and Key) ------------


def claim_update(*, runner: str, at: int) -> dict[str, Any]:
    """queued, or running under an expired lease (its runner died) -> running, owned by
    `runner`; counts the attempt. Fails (ConditionalCheckFailed) for anything else, including
    a job another live runner holds and every terminal job."""
    return {
        "UpdateExpression": (
            "SET #s = :running, #r = :runner, #l = :lease, #u = :at, #st = if_not_exists(#st, :at) "
            "ADD #a :one REMOVE #p"
        ),
        "ConditionExpression": (
            "attribute_exists(#id) AND (#s = :queued OR (#s = :running AND #l < :at)) AND NOT #c = :true"
        ),
        "ExpressionAttributeNames": {
            "#id": JOB_ID,
            "#s": STATUS,
            "#r": RUNNER,
            "#l": LEASE_UNTIL,
            "#u": UPDATED_AT,
            "#st": STARTED_AT,
            "#a": ATTEMPTS,
            "#p": PROMPT_ID,
            "#c": CANCEL_REQUESTED,
        },
        "ExpressionAttributeValues": {
            ":running": {"S": RUNNING},
            ":queued": {"S": QUEUED},
            ":runner": {"S": runner},
            ":lease": {"N": str(at + LEASE_SECONDS)},
            ":at": {"N": str(at)},
            ":one": {"N": "1"},
            ":true": {"BOOL": True},
        },
        "ReturnValues": "ALL_NEW",
    }


def _owned(runner: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    return (
        "#s = :running AND #r = :runner",
        {"#s": STATUS, "#r": RUNNER},
        {":running": {"S": RUNNING}, ":runner": {"S": runner}},
    )


def renew_update(*, runner: str, at: int, prompt_id: str | None = None) -> dict[str, Any]:
    """Extend the lease of a job this runner owns (and record ComfyUI's prompt id). Returns the
    item, so the runner sees a cancel request."""
    condition, names, values = _owned(runner)
    expression = "SET #l = :lease, #u = :at"
    if prompt_id is not None:
        expression += ", #p = :prompt"
        names = {**names, "#p": PROMPT_ID}
        values = {**values, ":prompt": {"S": prompt_id}}
    return {
        "UpdateExpression": expression,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {**names, "#l": LEASE_UNTIL, "#u": UPDATED_AT},
        "ExpressionAttributeValues": {**values, ":lease": {"N": str(at + LEASE_SECONDS)}, ":at": {"N": str(at)}},
        "ReturnValues": "ALL_NEW",
    }


def finish_update(
    *, runner: str, at: int, status: str, outputs: list[str] | None = None, error: str | None = None
) -> dict[str, Any]:
    """Record the one result of a job this runner owns: succeeded (with outputs), failed (with
    the error) or cancelled. A second delivery of the same job can never record another."""
    if status not in TERMINAL:
        raise ValueError(f"not a terminal status: {status}")
    condition, names, values = _owned(runner)
    expression = "SET #s = :status, #f = :at, #u = :at REMOVE #l"
    names = {**names, "#f": FINISHED_AT, "#u": UPDATED_AT, "#l": LEASE_UNTIL}
    values = {**values, ":status": {"S": status}, ":at": {"N": str(at)}}
    if outputs is not None:
        expression = expression.replace(" REMOVE", ", #o = :outputs REMOVE")
        names["#o"] = OUTPUTS
        values[":outputs"] = {"L": [{"S": key} for key in outputs]}
    if error is not None:
        expression = expression.replace(" REMOVE", ", #e = :error REMOVE")
        names["#e"] = ERROR
        values[":error"] = {"S": error[:4000]}
    return {
        "UpdateExpression": expression,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_NEW",
    }


def release_update(*, runner: str, at: int) -> dict[str, Any]:
    """Give a job this runner owns back to the queue (SIGTERM: Spot notice, drain, scale-down)."""
    condition, names, values = _owned(runner)
    return {
        "UpdateExpression": "SET #s = :queued, #u = :at REMOVE #r, #l, #p",
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {**names, "#u": UPDATED_AT, "#l": LEASE_UNTIL, "#p": PROMPT_ID},
        "ExpressionAttributeValues": {**values, ":queued": {"S": QUEUED}, ":at": {"N": str(at)}},
    }


def cancel_queued_update(*, at: int) -> dict[str, Any]:
    """DELETE /jobs/{id} of a queued job: cancelled at once (its message is dropped when a
    runner receives it)."""
    return {
        "UpdateExpression": "SET #s = :cancelled, #c = :true, #f = :at, #u = :at",
        "ConditionExpression": "#s = :queued",
        "ExpressionAttributeNames": {"#s": STATUS, "#c": CANCEL_REQUESTED, "#f": FINISHED_AT, "#u": UPDATED_AT},
        "ExpressionAttributeValues": {
            ":cancelled": {"S": CANCELLED},
            ":queued": {"S": QUEUED},
            ":true": {"BOOL": True},
            ":at": {"N": str(at)},
        },
        "ReturnValues": "ALL_NEW",
    }


def request_cancel_update(*, at: int) -> dict[str, Any]:
    """DELETE /jobs/{id} of a running job: its runner sees the request within a lease renewal,
    interrupts ComfyUI and records `cancelled`."""
    return {
        "UpdateExpression": "SET #c = :true, #u = :at",
        "ConditionExpression": "#s = :running",
        "ExpressionAttributeNames": {"#s": STATUS, "#c": CANCEL_REQUESTED, "#u": UPDATED_AT},
        "ExpressionAttributeValues": {":running": {"S": RUNNING}, ":true": {"BOOL": True}, ":at": {"N": str(at)}},
        "ReturnValues": "ALL_NEW",
    }


def give_up_update(*, at: int, error: str, spare_live_lease: bool = False) -> dict[str, Any]:
    """The dead-letter Lambda: a job whose runs kept dying is failed, unless it already ended.

    `spare_live_lease`: also unless a runner still holds it under a live lease (the message
    went to the dead-letter queue while that runner works; failing the job would throw its
    result away). The Lambda then retries later: once the lease lapses, the runner is gone."""
    condition = "attribute_exists(#id) AND attribute_exists(#s) AND NOT #s IN (:succeeded, :failed, :cancelled)"
    values: dict[str, Any] = {}
    if spare_live_lease:
        condition += " AND NOT (#s = :running AND #l >= :at)"
        values[":running"] = {"S": RUNNING}
    return {
        "UpdateExpression": "SET #s = :failed, #e = :error, #f = :at, #u = :at REMOVE #r, #l",
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {
            "#id": JOB_ID,
            "#s": STATUS,
            "#e": ERROR,
            "#f": FINISHED_AT,
            "#u": UPDATED_AT,
            "#r": RUNNER,
            "#l": LEASE_UNTIL,
        },
        "ExpressionAttributeValues": {
            ":failed": {"S": FAILED},
            ":error": {"S": error[:4000]},
            ":at": {"N": str(at)},
            ":succeeded": {"S": SUCCEEDED},
            ":cancelled": {"S": CANCELLED},
            **values,
        },
        "ReturnValues": "ALL_NEW",
    }


def cancel_abandoned_update(*, at: int) -> dict[str, Any]:
    """A job whose cancel was requested but that no live runner holds any more (its runner
    died, or released it, before recording `cancelled`; `claim_update` never takes such a job
    again): cancelled. The dead-letter Lambda uses it; a runner may too, when it receives the
    message of such a job."""
    return {
        "UpdateExpression": "SET #s = :cancelled, #f = :at, #u = :at REMOVE #r, #l",
        "ConditionExpression": (
            "attribute_exists(#id) AND #c = :true "
            "AND (#s = :queued OR (#s = :running AND (attribute_not_exists(#l) OR #l < :at)))"
        ),
        "ExpressionAttributeNames": {
            "#id": JOB_ID,
            "#s": STATUS,
            "#c": CANCEL_REQUESTED,
            "#f": FINISHED_AT,
            "#u": UPDATED_AT,
            "#r": RUNNER,
            "#l": LEASE_UNTIL,
        },
        "ExpressionAttributeValues": {
            ":cancelled": {"S": CANCELLED},
            ":queued": {"S": QUEUED},
            ":running": {"S": RUNNING},
            ":true": {"BOOL": True},
            ":at": {"N": str(at)},
        },
        "ReturnValues": "ALL_NEW",
    }


def fail_unsent_update(*, at: int, error: str) -> dict[str, Any]:
    """POST /jobs wrote the job but could not send its message: no runner will ever see it,
    so it is failed at once (with why) rather than left queued forever."""
    return {
        "UpdateExpression": "SET #s = :failed, #e = :error, #f = :at, #u = :at",
        "ConditionExpression": "#s = :queued",
        "ExpressionAttributeNames": {"#s": STATUS, "#e": ERROR, "#f": FINISHED_AT, "#u": UPDATED_AT},
        "ExpressionAttributeValues": {
            ":failed": {"S": FAILED},
            ":queued": {"S": QUEUED},
            ":error": {"S": error[:4000]},
            ":at": {"N": str(at)},
        },
        "ReturnValues": "ALL_NEW",
    }
