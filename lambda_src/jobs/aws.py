"""AWS clients and DynamoDB item conversion shared by the three Lambdas.

Clients are created on first use, never at import: importing needs no region or
credentials, and tests create them inside their AWS mock (`reset_clients` between tests).
Timeouts are short and retries few because the API answers within API Gateway's 30 s; a
call that still fails surfaces as an error the handler maps to 503 or to a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import boto3  # type: ignore[import-untyped]
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

CLIENT_CONFIG = BotoConfig(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
# Presigned S3 URLs: SigV4 and virtual-hosted style (the only forms S3 accepts everywhere).
PRESIGN_CONFIG = CLIENT_CONFIG.merge(BotoConfig(signature_version="s3v4", s3={"addressing_style": "virtual"}))

_CLIENTS: dict[str, Any] = {}
_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()

# Errors worth a retry by the caller (503) rather than a 500: throttling and AWS-side faults.
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalError",
        "KMSThrottlingException",
        "KMS.ThrottlingException",
        "TransactionConflictException",
    }
)


def client(service: str) -> Any:
    """The one client of `service` for this container."""
    if service not in _CLIENTS:
        config = PRESIGN_CONFIG if service == "s3" else CLIENT_CONFIG
        _CLIENTS[service] = boto3.client(service, config=config)
    return _CLIENTS[service]


def reset_clients() -> None:
    """Forget cached clients (tests switch mocks between cases)."""
    _CLIENTS.clear()


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_condition_failure(exc: ClientError) -> bool:
    """The conditional write did not apply: the item is not in the state the write expects."""
    return error_code(exc) == "ConditionalCheckFailedException"


def is_retryable(exc: BaseException) -> bool:
    """A transient AWS failure: network, timeout, throttling or a 5xx."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or error_code(exc) in _RETRYABLE_CODES
    return isinstance(exc, BotoCoreError)


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the job items only hold integers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(v) for v in value]
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (typed attribute values) -> plain Python values."""
    return {key: _plain(_DESERIALIZER.deserialize(value)) for key, value in item.items()}


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    """Plain Python values -> a DynamoDB item (None values are left out)."""
    return {key: _SERIALIZER.serialize(value) for key, value in values.items() if value is not None}


def presigner(bucket: str, expires_in: int) -> Callable[[str], str]:
    """Presigned GETs of `bucket`, signed locally with this function's role: the links work
    only if that role may s3:GetObject (and kms:Decrypt) them, and only while its session
    lasts, whichever ends first."""
    s3 = client("s3")

    def presign(key: str) -> str:
        return str(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in))

    return presign
