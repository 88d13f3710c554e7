"""The job API's AWS calls: DynamoDB (job and idempotency items), S3 (inputs, workflows),
SQS (the job's one message). Every state change is a conditional write
from `contract`, so concurrent requests and runners can never overwrite each other.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

try:  # imported as the package lambda_src.jobs (tests)
    from . import aws, contract, listing
    from .settings import ApiSettings
except ImportError:  # packaged flat: every module at the root of the zip
    import aws  # type: ignore[no-redef]
    import contract  # type: ignore[no-redef]
    import listing  # type: ignore[no-redef]
    from settings import ApiSettings  # type: ignore[no-redef]

# Inputs named by s3_key are copied into the job's own prefix with one CopyObject, which must
# finish well within the API's 29 s.
MAX_S3_INPUT_BYTES = 256 * 1024 * 1024
# What S3 answers for a key that is not there (403 without s3:ListBucket on the bucket).
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"})


@dataclass(frozen=True)
class Token:
    """The idempotency item of one (caller, client_token)."""

    key: str
    fingerprint: str


class TokenTaken(Exception):
    """Another request created a job with this client_token first (a concurrent retry)."""

    def __init__(self, token: Token) -> None:
        super().__init__(token.key)
        self.token = token


def _key(job_id: str) -> dict[str, Any]:
    return {contract.JOB_ID: {"S": job_id}}


def _ddb() -> Any:
    return aws.client("dynamodb")


# --- reads ----------------------------------------------------------------------------------


def get_item(settings: ApiSettings, key: str) -> dict[str, Any] | None:
    """A job (or idempotency) item, strongly consistent: a caller reads its own writes."""
    response = _ddb().get_item(TableName=settings.table, Key=_key(key), ConsistentRead=True)
    item = response.get("Item")
    return aws.from_item(item) if item else None


def get_job(settings: ApiSettings, job_id: str) -> dict[str, Any] | None:
    item = get_item(settings, job_id)
    # An idempotency item is never a job (its key never matches JOB_ID_PATTERN; belt and braces).
    return item if item and contract.STATUS in item else None


def live_token(settings: ApiSettings, token_key: str, now: int) -> dict[str, Any] | None:
    """The idempotency item of a client_token, unless it has expired (DynamoDB's TTL deletes
    expired items only eventually, so expiry is checked here too)."""
    item = get_item(settings, token_key)
    if item and int(item.get(contract.EXPIRES_AT, 0)) > now:
        return item
    return None


def query_status(settings: ApiSettings, status: str, limit: int, start: listing.Cursor) -> listing.Page:
    kwargs: dict[str, Any] = {
        "TableName": settings.table,
        "IndexName": contract.STATUS_INDEX,
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": contract.STATUS},
        "ExpressionAttributeValues": {":s": {"S": status}},
        "ScanIndexForward": False,
        "Limit": limit,
    }
    if start is not None:
        kwargs["ExclusiveStartKey"] = aws.to_item(start)
    response = _ddb().query(**kwargs)
    items = [aws.from_item(item) for item in response.get("Items", [])]
    return listing.Page(items=items, more="LastEvaluatedKey" in response)


# --- inputs ---------------------------------------------------------------------------------


def input_size(settings: ApiSettings, key: str) -> int | None:
    """Size of an object in the inputs bucket, or None if there is none (or the API may not read
    it: without s3:ListBucket S3 answers 403 for a missing key)."""
    try:
        response = aws.client("s3").head_object(Bucket=settings.inputs_bucket, Key=key)
    except ClientError as exc:
        if aws.error_code(exc) in MISSING_CODES:
            return None
        raise
    return int(response.get("ContentLength", 0))


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def put_input(settings: ApiSettings, job_id: str, name: str, data: bytes) -> str:
    key = contract.input_key(job_id, name)
    aws.client("s3").put_object(Bucket=settings.inputs_bucket, Key=key, Body=data, ContentType=_content_type(name))
    return key


def copy_input(settings: ApiSettings, job_id: str, name: str, source_key: str) -> str:
    """A snapshot of a caller's object under the job's prefix: the runner reads only jobs/<id>/,
    and a later overwrite of the source cannot change a queued job. Tags are not copied (that
    would need s3:GetObjectTagging on the caller's object, and a job's copy needs none)."""
    key = contract.input_key(job_id, name)
    aws.client("s3").copy_object(
        Bucket=settings.inputs_bucket,
        Key=key,
        CopySource={"Bucket": settings.inputs_bucket, "Key": source_key},
        TaggingDirective="REPLACE",
    )
    return key


def put_workflow(settings: ApiSettings, job_id: str, workflow_json: bytes) -> str:
    key = contract.workflow_key(job_id)
    aws.client("s3").put_object(
        Bucket=settings.inputs_bucket, Key=key, Body=workflow_json, ContentType="application/json"
    )
    return key


# --- writes ---------------------------------------------------------------------------------


def put_job(settings: ApiSettings, item: dict[str, Any], token: Token | None, now: int) -> None:
    """Write a new job item; with a token, atomically with its idempotency item, which must not
    exist yet (or have expired). Raises TokenTaken if a concurrent request won the token."""
    job_put = {
        "TableName": settings.table,
        "Item": aws.to_item(item),
        "ConditionExpression": "attribute_not_exists(#id)",
        "ExpressionAttributeNames": {"#id": contract.JOB_ID},
    }
    if token is None:
        _ddb().put_item(**job_put)
        return
    token_item = {
        contract.JOB_ID: token.key,
        contract.TOKEN_JOB_ID: item[contract.JOB_ID],
        contract.REQUEST_SHA256: token.fingerprint,
        contract.EXPIRES_AT: item[contract.EXPIRES_AT],
    }
    token_put = {
        "TableName": settings.table,
        "Item": aws.to_item(token_item),
        "ConditionExpression": "attribute_not_exists(#id) OR #x < :now",
        "ExpressionAttributeNames": {"#id": contract.JOB_ID, "#x": contract.EXPIRES_AT},
        "ExpressionAttributeValues": {":now": {"N": str(now)}},
    }
    try:
        _ddb().transact_write_items(TransactItems=[{"Put": job_put}, {"Put": token_put}])
    except ClientError as exc:
        reasons = exc.response.get("CancellationReasons") or []
        codes = [str(r.get("Code")) for r in reasons]
        if aws.error_code(exc) == "TransactionCanceledException" and codes[1:2] == ["ConditionalCheckFailed"]:
            raise TokenTaken(token) from exc
        raise


def fail_unsent(settings: ApiSettings, job_id: str, error: str, token: Token | None, now: int) -> None:
    """The job's message could not be sent: fail the job (nothing will ever run it) and expire
    its idempotency item, so that a retry with the same client_token creates a new job instead
    of returning this failed one."""
    _ddb().update_item(TableName=settings.table, Key=_key(job_id), **contract.fail_unsent_update(at=now, error=error))
    if token is not None:
        _ddb().update_item(
            TableName=settings.table,
            Key=_key(token.key),
            UpdateExpression="SET #x = :past",
            ConditionExpression="#j = :job",
            ExpressionAttributeNames={"#x": contract.EXPIRES_AT, "#j": contract.TOKEN_JOB_ID},
            ExpressionAttributeValues={":past": {"N": str(now - 1)}, ":job": {"S": job_id}},
        )


def send(settings: ApiSettings, job_id: str, workflow: dict[str, Any] | None) -> None:
    aws.client("sqs").send_message(QueueUrl=settings.queue_url, MessageBody=contract.message_body(job_id, workflow))


@dataclass(frozen=True)
class CancelResult:
    """`item` after the attempt; `outcome`: cancelled (was queued), requested (running),
    ended (already terminal: nothing changed), missing, or busy (its status kept changing
    under us: the caller may retry)."""

    outcome: str
    item: dict[str, Any] | None


def _try_update(settings: ApiSettings, job_id: str, update: dict[str, Any]) -> dict[str, Any] | None:
    """Apply a conditional update; the new item, or None if the condition did not hold."""
    try:
        response = _ddb().update_item(TableName=settings.table, Key=_key(job_id), **update)
    except ClientError as exc:
        if aws.is_condition_failure(exc):
            return None
        raise
    return aws.from_item(response["Attributes"])


def cancel(settings: ApiSettings, job_id: str, now: int, attempts: int = 3) -> CancelResult:
    """DELETE /jobs/{id}: queued -> cancelled; running -> cancel requested. The status can change
    between the two conditional writes (a runner claims the job), hence the short loop."""
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("cancelled", lambda: contract.cancel_queued_update(at=now)),
        ("requested", lambda: contract.request_cancel_update(at=now)),
    ]
    item: dict[str, Any] | None = None
    for _ in range(attempts):
        for outcome, update in steps:
            new = _try_update(settings, job_id, update())
            if new is not None:
                return CancelResult(outcome, new)
        item = get_job(settings, job_id)
        if item is None:
            return CancelResult("missing", None)
        if item[contract.STATUS] in contract.TERMINAL:
            return CancelResult("ended", item)
    return CancelResult("busy", item)
