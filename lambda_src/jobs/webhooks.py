"""The webhook Lambda (`webhooks.handler`): DynamoDB Streams of the jobs table, filtered to
transitions into a terminal status of jobs that have a webhook_url. For each, it POSTs the
job's public view (the JSON of GET /jobs/{id}) to that URL, signed (see `signature`).

Why each job is POSTed once per outcome: every write into a terminal status is conditional
on a non-terminal one and nothing writes a terminal item again (`contract`), so each job
makes exactly one such stream record. With NEW_AND_OLD_IMAGES a record whose old image is
already terminal is skipped too (defence in depth; it cannot happen today).

Delivery: up to TRIES tries within BUDGET_SECONDS, each with a short timeout and a fresh
signature; 2xx is delivered; 3xx (never followed), and 4xx other than 408/425/429, are the
receiver's final answer (logged, dropped: retrying cannot help and would block the stream);
5xx/408/425/429 and network errors are retried, and after the last try the handler raises so
that the event source retries the batch (its retry policy bounds that). Records of the batch
before the failing one may then be POSTed again: receivers deduplicate on the delivery id,
which is derived from the stream record and so the same on every retry.

Only public https receivers: the API refuses other URLs, this Lambda checks the URL again,
and its transport connects only to the public addresses the name resolves to (pinned, so a
DNS answer cannot change between the check and the connection), with TLS verification and
SNI. Tests inject another transport (`handler(..., transport=...)`) instead of opening a
plain-http door in production code: no flag, no environment variable can turn these rules
off in a deployed function.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

try:  # imported as the package lambda_src.jobs (tests)
    from . import aws, contract, signature, views
    from .settings import ConfigError, WebhookSettings
    from .validation import is_public_address, webhook_url_problem
except ImportError:  # packaged flat: every module at the root of the zip
    import aws  # type: ignore[no-redef]
    import contract  # type: ignore[no-redef]
    import signature  # type: ignore[no-redef]
    import views  # type: ignore[no-redef]
    from settings import ConfigError, WebhookSettings  # type: ignore[no-redef]
    from validation import is_public_address, webhook_url_problem  # type: ignore[no-redef]

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

TRIES = 3
BUDGET_SECONDS = 30.0
TRY_TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = (1.0, 3.0)  # before the 2nd and the 3rd try
# Stop starting deliveries when less than this is left of the invocation (then raise: the
# event source retries the rest).
MARGIN_SECONDS = 5.0
MIN_BUDGET_SECONDS = 5.0
SECRET_CACHE_SECONDS = 3600.0  # a rotated secret is picked up within this
MIN_SECRET_CHARS = 32
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "comfyui-eks-webhooks/1"
# Delivery ids are UUIDv5 of the stream record's eventID in this namespace.
DELIVERY_NAMESPACE = uuid.UUID("6f1c3f0e-2b7a-4a58-9a7e-3c1d0b9e5a11")

DELIVERED = "delivered"
REJECTED = "rejected"  # the receiver's final answer (3xx, most 4xx)
REFUSED = "refused"  # never sent: the URL or its addresses break the rules
FAILED = "failed"  # retryable failures, tries used up

# (url, body, headers, timeout seconds) -> HTTP status; raises Refused or OSError/HTTPException.
Transport = Callable[[str, bytes, Mapping[str, str], float], int]


class Refused(Exception):
    """Policy: this request must not be sent at all."""


class DeliveryFailed(RuntimeError):
    """A webhook could not be delivered yet: the event source retries (raised on purpose)."""


# --- transport ------------------------------------------------------------------------------


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `host` (SNI, certificate and Host header) over a TCP connection to `address`,
    an address already checked; http.client does not follow redirects."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class HttpsTransport:
    """The production transport. `resolve`, `context` and `address_allowed` exist for tests
    (a local TLS server); the defaults are the rules."""

    def __init__(
        self,
        resolve: Callable[[str, int], list[str]] = _resolve,
        context: ssl.SSLContext | None = None,
        address_allowed: Callable[[str], bool] = is_public_address,
    ) -> None:
        self._resolve = resolve
        self._context = context or ssl.create_default_context()
        self._address_allowed = address_allowed

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
            raise Refused("not an https URL without credentials")
        port = parts.port or 443
        addresses = self._resolve(parts.hostname, port)
        allowed = [a for a in addresses if self._address_allowed(a)]
        if not allowed:
            raise Refused("the host resolves to no public address")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = _PinnedHTTPSConnection(parts.hostname, port, allowed[0], timeout, self._context)
        try:
            connection.request("POST", path, body=body, headers=dict(headers))
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return int(response.status)
        finally:
            connection.close()


# --- delivery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    outcome: str
    tries: int
    http_status: int | None
    reason: str | None


def classify(status: int) -> str:
    """An HTTP status -> DELIVERED, REJECTED (final) or FAILED (worth another try)."""
    if 200 <= status < 300:
        return DELIVERED
    if status in (408, 425, 429) or status >= 500:
        return FAILED
    return REJECTED


def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    secret: bytes,
    transport: Transport,
    *,
    budget: float = BUDGET_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Delivery:
    """POST `body` with `headers` plus a fresh signature per try; retry transient failures."""
    deadline = clock() + budget
    status: int | None = None
    reason: str | None = None
    for attempt in range(1, TRIES + 1):
        remaining = deadline - clock()
        if remaining <= 0.5:
            return Delivery(FAILED, attempt - 1, status, reason or "out of time")
        signed = {**headers, signature.SIGNATURE_HEADER: signature.header_value(secret, body, int(wall()))}
        try:
            status = transport(url, body, signed, min(TRY_TIMEOUT_SECONDS, remaining))
        except Refused as exc:
            return Delivery(REFUSED, attempt, None, str(exc))
        except (OSError, http.client.HTTPException) as exc:
            status, reason = None, type(exc).__name__
        else:
            outcome = classify(status)
            reason = f"HTTP {status}"
            if outcome != FAILED:
                return Delivery(outcome, attempt, status, None if outcome == DELIVERED else reason)
        if attempt < TRIES:
            pause = BACKOFF_SECONDS[attempt - 1]
            if deadline - clock() - pause <= 0.5:
                return Delivery(FAILED, attempt, status, reason)
            sleep(pause)
    return Delivery(FAILED, TRIES, status, reason)


# --- the signing secret ---------------------------------------------------------------------

_SECRET_CACHE: dict[str, tuple[float, bytes]] = {}


def signing_secret(arn: str, clock: Callable[[], float] = time.monotonic) -> bytes:
    """The webhook signing key, read from Secrets Manager once per container (and again after
    SECRET_CACHE_SECONDS, to pick up a rotation)."""
    cached = _SECRET_CACHE.get(arn)
    if cached and clock() - cached[0] < SECRET_CACHE_SECONDS:
        return cached[1]
    value = aws.client("secretsmanager").get_secret_value(SecretId=arn).get("SecretString") or ""
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"the webhook signing secret must be a string of at least {MIN_SECRET_CHARS} characters")
    _SECRET_CACHE[arn] = (clock(), value.encode())
    return _SECRET_CACHE[arn][1]


def reset_secret_cache() -> None:
    _SECRET_CACHE.clear()


# --- stream records -------------------------------------------------------------------------


def finished_job(record: Any) -> dict[str, Any] | None:
    """The job of a stream record that moves it into a terminal status and has a webhook URL;
    None for anything else (the event filter should have dropped it already)."""
    if not isinstance(record, dict) or record.get("eventName") != "MODIFY":
        return None
    change = record.get("dynamodb")
    if not isinstance(change, dict) or not isinstance(change.get("NewImage"), dict):
        return None
    try:
        job = aws.from_item(change["NewImage"])
        old = aws.from_item(change["OldImage"]) if isinstance(change.get("OldImage"), dict) else {}
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if job.get(contract.STATUS) not in contract.TERMINAL or old.get(contract.STATUS) in contract.TERMINAL:
        return None
    job_id = job.get(contract.JOB_ID)
    if not isinstance(job_id, str) or not contract.JOB_ID_PATTERN.fullmatch(job_id):
        return None
    return job if isinstance(job.get(contract.WEBHOOK_URL), str) else None


def delivery_id(record: dict[str, Any]) -> str:
    event_id = record.get("eventID")
    return str(uuid.uuid5(DELIVERY_NAMESPACE, event_id) if isinstance(event_id, str) and event_id else uuid.uuid4())


def _remaining_seconds(context: Any) -> float:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return float(getter()) / 1000 if callable(getter) else float("inf")


def _log(job: dict[str, Any], delivery: Delivery, delivery_uuid: str) -> None:
    """One line per webhook: the host only (a URL's path or query may hold the receiver's token)."""
    line = {
        "event": "webhook",
        "job_id": job[contract.JOB_ID],
        "status": job[contract.STATUS],
        "delivery_id": delivery_uuid,
        "host": urlsplit(str(job[contract.WEBHOOK_URL])).hostname,
        "outcome": delivery.outcome,
        "tries": delivery.tries,
        "http_status": delivery.http_status,
        "reason": delivery.reason,
    }
    (LOG.info if delivery.outcome == DELIVERED else LOG.warning)(json.dumps(line))


def handler(
    event: Any,
    context: Any,
    *,
    transport: Transport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    settings = WebhookSettings.from_env(os.environ)
    send = transport or HttpsTransport()
    counts = {DELIVERED: 0, REJECTED: 0, REFUSED: 0, "skipped": 0}
    records = event.get("Records") if isinstance(event, dict) else None
    for record in records if isinstance(records, list) else []:
        job = finished_job(record)
        if job is None:
            counts["skipped"] += 1
            continue
        event_uuid = delivery_id(record)
        url = str(job[contract.WEBHOOK_URL])
        problem = webhook_url_problem(url)
        if problem:
            delivery = Delivery(REFUSED, 0, None, problem)
        else:
            budget = min(BUDGET_SECONDS, _remaining_seconds(context) - MARGIN_SECONDS)
            if budget < MIN_BUDGET_SECONDS:
                raise DeliveryFailed(
                    "out of time for the remaining webhooks of this batch; the event source retries it"
                )
            presign = aws.presigner(settings.outputs_bucket, views.PRESIGN_SECONDS)
            body = json.dumps(
                views.public_view(job, presign, contract.now()), separators=(",", ":"), sort_keys=True
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                signature.EVENT_HEADER: f"job.{job[contract.STATUS]}",
                signature.DELIVERY_HEADER: event_uuid,
            }
            secret = signing_secret(settings.secret_arn)
            delivery = deliver(url, body, headers, secret, send, budget=budget, sleep=sleep)
        _log(job, delivery, event_uuid)
        if delivery.outcome == FAILED:
            raise DeliveryFailed(
                f"webhook of job {job[contract.JOB_ID]} not delivered ({delivery.reason}); the event source retries"
            )
        counts[delivery.outcome] += 1
    return counts
