"""Model sync: S3 events on the models bucket -> SQS (batched) -> Lambda -> one SSM Run
Command to this cluster's GPU nodes, selected by tag when the command runs.

The command a node runs is fixed in an SSM document owned by this stack: it carries no S3
key and takes no parameters. It only asks the node's sync service to converge the local
cache to the bucket (additions, replacements, deletions); the service loops while requests
keep arriving, so an update during a running sync is never lost.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from cdktf_cdktf_provider_aws.lambda_event_source_mapping import (
    LambdaEventSourceMapping,
    LambdaEventSourceMappingScalingConfig,
)
from cdktf_cdktf_provider_aws.s3_bucket_notification import S3BucketNotification, S3BucketNotificationQueue
from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue
from cdktf_cdktf_provider_aws.sqs_queue_policy import SqsQueuePolicy
from cdktf_cdktf_provider_aws.ssm_document import SsmDocument
from constructs import Construct

from core import names
from modules.alarms import dead_letter_alarm
from modules.function import PythonFunction
from modules.iam import Condition, Principal, Statement, deny_insecure_transport, policy_document
from modules.queues import queue_with_dead_letters

LAMBDA_SOURCE = Path(__file__).resolve().parent.parent / "lambda_src" / "model_sync"
LAMBDA_TIMEOUT_SECONDS = 60
# A failing batch is retried this many times before it lands in the dead-letter queue.
MAX_RECEIVE_COUNT = 5


def node_sync_commands() -> list[str]:
    """What a node runs on a sync request: no S3 key, no parameter, quoted paths."""
    flag = names.SYNC_REQUEST_FLAG
    return [
        "set -eu",
        f"install -d -m 0755 {shlex.quote(str(Path(flag).parent))}",
        f"touch {shlex.quote(flag)}",
        f"systemctl start --no-block {shlex.quote(names.SYNC_SERVICE_NAME)}",
    ]


def ssm_document_content() -> str:
    return json.dumps(
        {
            "schemaVersion": "2.2",
            "description": "Converge the ComfyUI model cache on this node to the models bucket",
            "mainSteps": [
                {
                    "action": "aws:runShellScript",
                    "name": "requestModelSync",
                    "inputs": {"runCommand": node_sync_commands(), "timeoutSeconds": "60"},
                }
            ],
        },
        sort_keys=True,
    )


class ModelEventQueue(Construct):
    """S3 model events -> an encrypted SQS queue (and its dead-letter queue) that only this
    account's models bucket may send to; notifications only for the model folders."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        account_id: str,
        models_bucket_id: str,
        models_bucket_arn: str,
        kms_key_arn: str,
        model_prefixes: Sequence[str],
        visibility_timeout_seconds: int,
    ) -> None:
        super().__init__(scope, id_)
        self.queue, self.dlq = queue_with_dead_letters(
            self,
            name=name,
            kms_key_arn=kms_key_arn,
            max_receive_count=MAX_RECEIVE_COUNT,
            visibility_timeout_seconds=visibility_timeout_seconds,
        )
        document = policy_document(
            self,
            "policy_document",
            Statement(
                sid="S3ModelEvents",
                actions=["sqs:SendMessage"],
                resources=[self.queue.arn],
                principals=(Principal(type="Service", identifiers=["s3.amazonaws.com"]),),
                conditions=(
                    Condition(test="ArnEquals", variable="aws:SourceArn", values=[models_bucket_arn]),
                    Condition(test="StringEquals", variable="aws:SourceAccount", values=[account_id]),
                ),
            ),
            deny_insecure_transport("sqs", [self.queue.arn]),
        )
        policy = SqsQueuePolicy(self, "policy", queue_url=self.queue.url, policy=document.json)
        # Only model folders notify (non-overlapping prefixes may share one queue); the
        # Lambda filters again, so a notification configured by hand cannot widen it.
        S3BucketNotification(
            self,
            "notification",
            bucket=models_bucket_id,
            # No prefixes configured = the whole bucket is models: one unfiltered rule.
            queue=[
                S3BucketNotificationQueue(
                    id=f"models-{prefix.rstrip('/')}" if prefix else "models-all",
                    queue_arn=self.queue.arn,
                    events=["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    filter_prefix=prefix or None,
                )
                for prefix in (model_prefixes or [""])
            ],
            depends_on=[policy],
        )


class SyncFunction(PythonFunction):
    """The Lambda that turns a batch of model events into one SSM command (a PythonFunction:
    its log group and least-privilege role), and the event source mapping that batches the
    queue."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        cluster_name: str,
        account_id: str,
        region: str,
        partition: str,
        models_bucket: str,
        kms_key_arn: str,
        model_prefixes: Sequence[str],
        batching_window_seconds: int,
        queue: SqsQueue,
        document: SsmDocument,
    ) -> None:
        super().__init__(
            scope,
            id_,
            name=name,
            source=LAMBDA_SOURCE,
            handler="handler.handler",
            timeout_seconds=LAMBDA_TIMEOUT_SECONDS,
            kms_key_arn=kms_key_arn,
            region=region,
            environment={
                names.ENV_CLUSTER_NAME: cluster_name,
                names.ENV_MODELS_BUCKET: models_bucket,
                names.ENV_SSM_DOCUMENT: name,
                names.ENV_MODEL_PREFIXES: ",".join(model_prefixes),
                names.ENV_NODE_CLUSTER_TAG_KEY: names.NODE_CLUSTER_TAG_KEY,
                names.ENV_NODE_ROLE_TAG_KEY: names.NODE_ROLE_TAG_KEY,
                names.ENV_NODE_ROLE_VALUE: names.NODE_ROLE_GPU,
            },
            statements=[
                Statement(
                    sid="ConsumeQueue",
                    actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                    resources=[queue.arn],
                ),
                Statement(
                    sid="DecryptQueue",
                    actions=["kms:Decrypt"],
                    resources=[kms_key_arn],
                    conditions=(
                        Condition(
                            test="StringEquals", variable="kms:ViaService", values=[f"sqs.{region}.amazonaws.com"]
                        ),
                    ),
                ),
                # DescribeInstances has no resource-level permissions: it only counts GPU nodes.
                Statement(sid="FindGpuNodes", actions=["ec2:DescribeInstances"], resources=["*"]),
                Statement(
                    sid="SendSyncDocument",
                    actions=["ssm:SendCommand"],
                    resources=[f"arn:{partition}:ssm:{region}:{account_id}:document/{name}"],
                ),
                # AWS's documented pattern ("Restricting Run Command access based on tags", SSM user
                # guide): the document in one statement, the instances in another with the tag
                # condition; SSM evaluates it per target instance (others show AccessDenied).
                Statement(
                    sid="SendToThisClustersNodes",
                    actions=["ssm:SendCommand"],
                    resources=[f"arn:{partition}:ec2:{region}:{account_id}:instance/*"],
                    conditions=(
                        Condition(
                            test="StringEquals",
                            variable=f"ssm:resourceTag/{names.NODE_CLUSTER_TAG_KEY}",
                            values=[cluster_name],
                        ),
                    ),
                ),
            ],
            # The command must exist before the function may send it.
            depends_on=[document],
        )
        # A burst of uploads within the window becomes one invocation -> one SSM command.
        # (SQS allows batches above 10 only with a batching window of at least 1 s.) No
        # reserved concurrency: in accounts with the default quota of 10 a reservation fails
        # at apply; the mapping's maximum_concurrency (2) bounds the function.
        LambdaEventSourceMapping(
            self,
            "events",
            event_source_arn=queue.arn,
            function_name=self.arn,
            batch_size=1000 if batching_window_seconds > 0 else 10,
            maximum_batching_window_in_seconds=batching_window_seconds,
            scaling_config=LambdaEventSourceMappingScalingConfig(maximum_concurrency=2),
        )


class ModelSync(Construct):
    """S3 model events -> queue -> function -> one SSM command per batch to the GPU nodes
    (see the module docstring), and an alarm on the dead-letter queue."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        cluster_name: str,
        account_id: str,
        region: str,
        partition: str,
        models_bucket: str,
        models_bucket_id: str,
        models_bucket_arn: str,
        kms_key_arn: str,
        model_prefixes: Sequence[str],
        batching_window_seconds: int,
        alarm_actions: Sequence[str],
    ) -> None:
        super().__init__(scope, id_)
        name = f"{project}-model-sync"
        self.document = SsmDocument(
            self, "document", name=name, document_type="Command", document_format="JSON", content=ssm_document_content()
        )
        events = ModelEventQueue(
            self,
            "events",
            name=name,
            account_id=account_id,
            models_bucket_id=models_bucket_id,
            models_bucket_arn=models_bucket_arn,
            kms_key_arn=kms_key_arn,
            model_prefixes=model_prefixes,
            # AWS guidance: at least 6x the function timeout, so in-flight batches are not redelivered.
            visibility_timeout_seconds=6 * LAMBDA_TIMEOUT_SECONDS,
        )
        SyncFunction(
            self,
            "function",
            name=name,
            cluster_name=cluster_name,
            account_id=account_id,
            region=region,
            partition=partition,
            models_bucket=models_bucket,
            kms_key_arn=kms_key_arn,
            model_prefixes=model_prefixes,
            batching_window_seconds=batching_window_seconds,
            queue=events.queue,
            document=self.document,
        )
        # A batch that failed MAX_RECEIVE_COUNT times: nodes were not asked to converge (they
        # still do within the reconcile interval), and the cause needs a look.
        dead_letter_alarm(
            self,
            "dlq_alarm",
            alarm_name=f"{name}-dead-letters",
            description=(
                f"Model-sync events failed {MAX_RECEIVE_COUNT} times and reached the dead-letter queue "
                f"{name}-dlq: see the Lambda's log group /aws/lambda/{name}"
            ),
            queue_name=events.dlq.name,
            alarm_actions=list(alarm_actions),
        )
        self.queue_arn = events.queue.arn
        self.dlq_arn = events.dlq.arn
        self.function_name = name
        self.document_name = self.document.name
