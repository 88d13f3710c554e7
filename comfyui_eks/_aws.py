"""boto3 clients for the commands, made in one place: the region comes from the configuration
(never the caller's default profile region), retries are bounded, and tests replace `client`
at this boundary (Service Quotas, which moto does not model for EC2)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

# What a boto3 call raises: an AWS error answer, or no answer (credentials, endpoint, timeout).
AWS_ERRORS = (BotoCoreError, ClientError)
_CACHE: dict[tuple[str, str], Any] = {}


def client(service: str, region: str) -> Any:
    """A boto3 client for `service` in `region` (standard retries, bounded timeouts)."""
    key = (service, region)
    if key not in _CACHE:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        settings = Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5})
        _CACHE[key] = boto3.client(service, region_name=region, config=settings)
    return _CACHE[key]


def reset() -> None:
    """Forget cached clients (tests switch between mocked backends)."""
    _CACHE.clear()


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return " ".join(str(exc).split())
