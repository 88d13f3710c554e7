"""Model-sync Lambda entry point (`handler.handler`): thin glue around `logic`.

One invocation = one SQS batch (the event source mapping's batching window groups a burst
of uploads) = at most ONE `ssm:SendCommand`, targeted by tag at this cluster's GPU nodes.

Errors: malformed records are logged and skipped. A failed AWS call is retried by botocore
(adaptive mode, 10 attempts); if it still fails the exception propagates, SQS redelivers
the batch, and after maxReceiveCount the messages land in the dead-letter queue.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

try:  # packaged as the package `model_sync`
    from . import logic
except ImportError:  # packaged flat: handler.py and logic.py at the root of the zip
    import logic  # type: ignore[no-redef]

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

RETRY_CONFIG = {"mode": "adaptive", "max_attempts": 10}

# Created on first use, never at import: importing must not need credentials or a region,
# and tests create them inside their AWS mock.
_CLIENTS: dict[str, Any] = {}


def client(service: str) -> Any:
    if service not in _CLIENTS:
        _CLIENTS[service] = boto3.client(service, config=BotoConfig(retries=dict(RETRY_CONFIG)))
    return _CLIENTS[service]


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints between cases)."""
    _CLIENTS.clear()


def count_running_nodes(cfg: logic.Config) -> int:
    paginator = client("ec2").get_paginator("describe_instances")
    count = 0
    for page in paginator.paginate(Filters=logic.running_node_filters(cfg)):
        for reservation in page.get("Reservations", []):
            count += len(reservation.get("Instances", []))
    return count


def handler(event: Any, context: Any) -> dict[str, Any]:
    cfg = logic.Config.from_env(os.environ)  # misconfiguration raises: nothing is dropped silently
    parsed = logic.parse_event(event)
    for reason in parsed.skipped:
        LOG.warning("skipped malformed input: %s", reason)
    if parsed.test_events:
        LOG.info("ignored %d s3:TestEvent message(s)", parsed.test_events)

    # Only the models bucket counts: a notification configured on another bucket (by hand,
    # into the same queue) must not make the fleet re-converge.
    mine, other_bucket = logic.split_by_bucket(parsed.changes, cfg.models_bucket)
    if other_bucket:
        LOG.warning(
            "ignored %d change(s) of buckets other than %s: %s",
            len(other_bucket),
            json.dumps(cfg.models_bucket),
            json.dumps(logic.bucket_names(other_bucket)),
        )
    relevant = logic.relevant_changes(mine, cfg.model_prefixes)
    for line in logic.key_log_lines(relevant):
        LOG.info("model change: %s", line)
    summary: dict[str, Any] = {
        "records": parsed.records,
        "changes": len(parsed.changes),
        "other_bucket": len(other_bucket),
        "relevant": len(relevant),
        "skipped": len(parsed.skipped),
        "nodes": None,
        "command_id": None,
    }
    if not relevant:
        LOG.info("no model change under %s: no command", json.dumps(list(cfg.model_prefixes)))
        return summary

    nodes = count_running_nodes(cfg)
    summary["nodes"] = nodes
    if nodes == 0:
        LOG.info(
            "no running GPU node of cluster %s: no command (nodes sync at boot)",
            json.dumps(cfg.cluster_name),
        )
        return summary

    response = client("ssm").send_command(**logic.send_command_kwargs(cfg, len(relevant)))
    summary["command_id"] = response["Command"]["CommandId"]
    LOG.info("sent %s", json.dumps(summary))
    return summary
