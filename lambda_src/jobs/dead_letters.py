"""The dead-letter Lambda (`dead_letters.handler`): SQS event source on the jobs dead-letter
queue. A message lands there when its job was received `max_attempts` times without ever
finishing: each run's pod or node was lost (Spot reclaim, OOM kill, node failure).

For each message the job is settled with a conditional write, exactly once:
- already ended (succeeded/failed/cancelled), or gone: nothing to do;
- cancel requested: cancelled (`cancel_abandoned_update`), the caller asked for that;
- otherwise: failed, "gave up after N attempts..." (`give_up_update`).
A job some runner still holds under a live lease is left alone (it may yet finish; failing
it would throw its result away): the handler raises, the batch returns to the dead-letter
queue, and is retried after the queue's visibility timeout; once that runner finishes, the
retry finds the job ended, and if it died, its lease lapses and the retry settles the job.
Retries are harmless for the other messages of the batch: a settled job stays settled.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

try:  # imported as the package lambda_src.jobs (tests)
    from . import aws, contract
    from .settings import DeadLetterSettings
except ImportError:  # packaged flat: every module at the root of the zip
    import aws  # type: ignore[no-redef]
    import contract  # type: ignore[no-redef]
    from settings import DeadLetterSettings  # type: ignore[no-redef]

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

FAILED = "failed"
CANCELLED = "cancelled"
ENDED = "ended"
MISSING = "missing"
HELD = "held"
MALFORMED = "malformed"


class JobsStillHeld(RuntimeError):
    """Some jobs are held by a live runner: retry the batch later (raised on purpose)."""


def give_up_message(attempts: int) -> str:
    if attempts <= 0:
        return "gave up: no runner could start it before its queue message went to the dead-letter queue"
    plural = "attempt" if attempts == 1 else "attempts"
    return f"gave up after {attempts} {plural}: the pod or node running it was lost each time"


def decide(item: dict[str, Any] | None, now: int) -> tuple[str, dict[str, Any] | None]:
    """(outcome, the conditional update that makes it so, or None when nothing is written)."""
    if item is None:
        return MISSING, None
    status = item.get(contract.STATUS)
    if status in contract.TERMINAL:
        return ENDED, None
    if status == contract.RUNNING and int(item.get(contract.LEASE_UNTIL, 0) or 0) >= now:
        return HELD, None
    if item.get(contract.CANCEL_REQUESTED) is True:
        return CANCELLED, contract.cancel_abandoned_update(at=now)
    attempts = int(item.get(contract.ATTEMPTS, 0) or 0)
    return FAILED, contract.give_up_update(at=now, error=give_up_message(attempts), spare_live_lease=True)


def settle(settings: DeadLetterSettings, job_id: str, now: int, tries: int = 3) -> str:
    """Settle one job; its outcome. Read, decide, write conditionally; if the job changed in
    between (the condition failed), read again."""
    ddb = aws.client("dynamodb")
    key = {contract.JOB_ID: {"S": job_id}}
    for _ in range(tries):
        raw = ddb.get_item(TableName=settings.table, Key=key, ConsistentRead=True).get("Item")
        outcome, update = decide(aws.from_item(raw) if raw else None, now)
        if update is None:
            return outcome
        try:
            ddb.update_item(TableName=settings.table, Key=key, **update)
        except ClientError as exc:
            if aws.is_condition_failure(exc):
                continue
            raise
        return outcome
    return HELD  # kept changing under us: try again with the next delivery


def _job_id(record: Any) -> str | None:
    try:
        job_id, _ = contract.parse_message(record["body"])
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    return job_id


def handler(event: Any, context: Any) -> dict[str, int]:
    settings = DeadLetterSettings.from_env(os.environ)
    now = contract.now()
    counts: Counter[str] = Counter()
    held: list[str] = []
    records = event.get("Records") if isinstance(event, dict) else None
    for record in records if isinstance(records, list) else []:
        message_id = record.get("messageId") if isinstance(record, dict) else None
        job_id = _job_id(record)
        if job_id is None:
            # Nothing to settle; the message body is never logged (it may hold a workflow).
            counts[MALFORMED] += 1
            LOG.warning(json.dumps({"event": "dead_letter", "message_id": message_id, "outcome": MALFORMED}))
            continue
        outcome = settle(settings, job_id, now)
        counts[outcome] += 1
        LOG.info(json.dumps({"event": "dead_letter", "message_id": message_id, "job_id": job_id, "outcome": outcome}))
        if outcome == HELD:
            held.append(job_id)
    if held:
        raise JobsStillHeld(f"{len(held)} job(s) still held by a live runner, retried later: {', '.join(held[:10])}")
    return dict(counts)
