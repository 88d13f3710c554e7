"""An SQS work queue the way this product builds every one: encrypted with the data key, with
a dead-letter queue that keeps failed messages 14 days after `max_receive_count` receives."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
from constructs import Construct


def queue_with_dead_letters(
    scope: Construct,
    *,
    name: str,
    kms_key_arn: str,
    max_receive_count: int,
    visibility_timeout_seconds: int,
    receive_wait_time_seconds: int | None = None,
    dead_letter_visibility_timeout_seconds: int | None = None,
) -> tuple[SqsQueue, SqsQueue]:
    """(queue, dead-letter queue), as children `queue` and `dlq` of `scope`."""
    dlq = SqsQueue(
        scope,
        "dlq",
        name=f"{name}-dlq",
        kms_master_key_id=kms_key_arn,
        kms_data_key_reuse_period_seconds=3600,
        message_retention_seconds=14 * 24 * 3600,
        visibility_timeout_seconds=dead_letter_visibility_timeout_seconds,
    )
    queue = SqsQueue(
        scope,
        "queue",
        name=name,
        kms_master_key_id=kms_key_arn,
        kms_data_key_reuse_period_seconds=3600,
        visibility_timeout_seconds=visibility_timeout_seconds,
        message_retention_seconds=4 * 24 * 3600,
        receive_wait_time_seconds=receive_wait_time_seconds,
        redrive_policy=json.dumps({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": max_receive_count}),
    )
    return queue, dlq
