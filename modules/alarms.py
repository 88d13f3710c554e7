"""CloudWatch alarms this product raises, notifying `alarms.sns_topic_arn` when configured
(with no topic they still exist and show in the console)."""

from __future__ import annotations

from collections.abc import Sequence

from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import CloudwatchMetricAlarm
from constructs import Construct


def dead_letter_alarm(
    scope: Construct, id_: str, *, alarm_name: str, description: str, queue_name: str, alarm_actions: Sequence[str]
) -> CloudwatchMetricAlarm:
    """Raised while a dead-letter queue holds any message (and cleared when it is empty):
    work that failed every retry and needs a look."""
    return CloudwatchMetricAlarm(
        scope,
        id_,
        alarm_name=alarm_name,
        alarm_description=description,
        namespace="AWS/SQS",
        metric_name="ApproximateNumberOfMessagesVisible",
        dimensions={"QueueName": queue_name},
        statistic="Maximum",
        period=300,
        evaluation_periods=1,
        threshold=0,
        comparison_operator="GreaterThanThreshold",
        treat_missing_data="notBreaching",
        alarm_actions=list(alarm_actions),
        ok_actions=list(alarm_actions),
    )
