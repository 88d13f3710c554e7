"""The durable job API for pipelines, in named parts:

- JobStore: the DynamoDB table of job records (TTL, status index, stream for webhooks), the
  SQS queue of job attempts and its dead-letter queue, the webhook signing secret;
- JobsApi: an API Gateway HTTP API with IAM (SigV4) authorization on every route, in front of
  one Lambda (lambda_src/jobs/api.py), plus the dead-letter and webhook Lambdas;
- JobRunnerIdentity: what the runner sidecar in every ComfyUI pod may do (EKS Pod Identity);
- the caller policy a pipeline's role attaches to call the API.

The contract between the API and the runner (statuses, conditional writes, keys) lives in
lambda_src/jobs/contract.py; the names of its environment variables come from there.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.apigatewayv2_api import Apigatewayv2Api
from cdktf_cdktf_provider_aws.apigatewayv2_integration import Apigatewayv2Integration
from cdktf_cdktf_provider_aws.apigatewayv2_route import Apigatewayv2Route
from cdktf_cdktf_provider_aws.apigatewayv2_stage import (
    Apigatewayv2Stage,
    Apigatewayv2StageAccessLogSettings,
    Apigatewayv2StageDefaultRouteSettings,
)
from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.data_aws_secretsmanager_random_password import DataAwsSecretsmanagerRandomPassword
from cdktf_cdktf_provider_aws.dynamodb_table import (
    DynamodbTable,
    DynamodbTableAttribute,
    DynamodbTableGlobalSecondaryIndex,
    DynamodbTablePointInTimeRecovery,
    DynamodbTableServerSideEncryption,
    DynamodbTableTtl,
)
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.lambda_event_source_mapping import (
    LambdaEventSourceMapping,
    LambdaEventSourceMappingFilterCriteria,
    LambdaEventSourceMappingFilterCriteriaFilter,
)
from cdktf_cdktf_provider_aws.lambda_permission import LambdaPermission
from cdktf_cdktf_provider_aws.secretsmanager_secret import SecretsmanagerSecret
from cdktf_cdktf_provider_aws.secretsmanager_secret_version import SecretsmanagerSecretVersion
from cdktf_cdktf_provider_aws.sqs_queue_policy import SqsQueuePolicy
from constructs import Construct

from core import names
from modules.alarms import dead_letter_alarm
from modules.function import PythonFunction
from modules.iam import Condition, Statement, deny_insecure_transport, pod_identity_role, policy_document
from modules.queues import queue_with_dead_letters

JOBS_SOURCE = Path(__file__).resolve().parent.parent / "lambda_src" / "jobs"
# API Gateway's HTTP API integration timeout is 30 s at most.
API_TIMEOUT_SECONDS = 29


def load_contract() -> ModuleType:
    """lambda_src/jobs/contract.py, imported from its file (the Lambda package and the pod ship
    it as a top-level module; here it names the environment variables and limits)."""
    spec = importlib.util.spec_from_file_location("jobs_contract", JOBS_SOURCE / "contract.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


contract = load_contract()


class JobStore(Construct):
    def __init__(
        self, scope: Construct, id_: str, *, name: str, kms_key_arn: str, max_attempts: int, prevent_destroy: bool
    ) -> None:
        super().__init__(scope, id_)
        self.table = DynamodbTable(
            self,
            "table",
            name=name,
            billing_mode="PAY_PER_REQUEST",
            hash_key=contract.JOB_ID,
            attribute=[
                DynamodbTableAttribute(name=contract.JOB_ID, type="S"),
                DynamodbTableAttribute(name=contract.STATUS, type="S"),
                DynamodbTableAttribute(name=contract.CREATED_AT, type="N"),
            ],
            global_secondary_index=[
                DynamodbTableGlobalSecondaryIndex(
                    name=contract.STATUS_INDEX,
                    hash_key=contract.STATUS,
                    range_key=contract.CREATED_AT,
                    projection_type="ALL",
                )
            ],
            ttl=DynamodbTableTtl(attribute_name=contract.EXPIRES_AT, enabled=True),
            # Webhooks react to status changes.
            stream_enabled=True,
            stream_view_type="NEW_AND_OLD_IMAGES",
            point_in_time_recovery=DynamodbTablePointInTimeRecovery(enabled=True),
            server_side_encryption=DynamodbTableServerSideEncryption(enabled=True, kms_key_arn=kms_key_arn),
            deletion_protection_enabled=prevent_destroy,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True) if prevent_destroy else None,
        )
        # The dead-letter Lambda leaves a job a live runner still holds and retries it after
        # the dead-letter queue's visibility timeout. The runner holds a message as long as it
        # renews its lease; a lost runner's job reappears after the queue's visibility timeout
        # and another pod claims it (the lease has expired by then).
        self.queue, self.dlq = queue_with_dead_letters(
            self,
            name=name,
            kms_key_arn=kms_key_arn,
            max_receive_count=max_attempts,
            visibility_timeout_seconds=contract.LEASE_SECONDS,
            receive_wait_time_seconds=20,
            dead_letter_visibility_timeout_seconds=300,
        )
        for queue_id, queue in (("queue", self.queue), ("dlq", self.dlq)):
            document = policy_document(self, f"{queue_id}_policy_document", deny_insecure_transport("sqs", [queue.arn]))
            SqsQueuePolicy(self, f"{queue_id}_policy", queue_url=queue.url, policy=document.json)
        self.secret = SecretsmanagerSecret(
            self,
            "webhook_secret",
            name=f"{name}-webhook-signing",
            description="HMAC-SHA256 key the job API signs webhooks with (receivers verify with it)",
            kms_key_id=kms_key_arn,
        )
        # Generated once: the data source returns a new value on every plan, which the
        # version ignores after creation. Rotate with `aws secretsmanager put-secret-value`.
        password = DataAwsSecretsmanagerRandomPassword(
            self, "webhook_secret_value", password_length=64, exclude_punctuation=True
        )
        SecretsmanagerSecretVersion(
            self,
            "webhook_secret_version",
            secret_id=self.secret.id,
            secret_string=password.random_password,
            lifecycle=TerraformResourceLifecycle(ignore_changes=["secret_string"]),
        )


class JobsApi(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        region: str,
        account_id: str,
        partition: str,
        store: JobStore,
        inputs_bucket: str,
        inputs_bucket_arn: str,
        outputs_bucket: str,
        outputs_bucket_arn: str,
        kms_key_arn: str,
        retention_days: int,
        max_attempts: int,
        timeout_seconds: int,
        alarm_actions: list[str],
    ) -> None:
        super().__init__(scope, id_)
        table_arn = store.table.arn

        def via(*services: str) -> Condition:
            """Use of the data key only through these services in this region."""
            return Condition(
                test="StringEquals", variable="kms:ViaService", values=[f"{s}.{region}.amazonaws.com" for s in services]
            )

        environment = {
            contract.TABLE_ENV: store.table.name,
            contract.QUEUE_ENV: store.queue.url,
            contract.INPUTS_BUCKET_ENV: inputs_bucket,
            contract.OUTPUTS_BUCKET_ENV: outputs_bucket,
            contract.WEBHOOK_SECRET_ENV: store.secret.arn,
            contract.RETENTION_DAYS_ENV: str(retention_days),
            contract.MAX_ATTEMPTS_ENV: str(max_attempts),
            contract.TIMEOUT_SECONDS_ENV: str(timeout_seconds),
        }
        self.api_function = PythonFunction(
            self,
            "api_function",
            name=f"{name}-api",
            source=JOBS_SOURCE,
            handler="api.handler",
            timeout_seconds=API_TIMEOUT_SECONDS,
            memory_mb=512,
            kms_key_arn=kms_key_arn,
            region=region,
            environment=environment,
            statements=[
                Statement(
                    sid="JobRecords",
                    actions=["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                    resources=[table_arn, f"{table_arn}/index/{contract.STATUS_INDEX}"],
                ),
                Statement(sid="EnqueueJobs", actions=["sqs:SendMessage"], resources=[store.queue.arn]),
                # Inline images, large workflows and copies of the caller's input keys.
                Statement(
                    sid="JobInputs",
                    actions=["s3:PutObject"],
                    resources=[f"{inputs_bucket_arn}/{contract.JOBS_PREFIX}*"],
                ),
                # HEAD and copy of an input image a caller names by key (it must exist).
                Statement(sid="ReadCallerInputs", actions=["s3:GetObject"], resources=[f"{inputs_bucket_arn}/*"]),
                # Without it a missing key is a 403 instead of a 404 (treated alike).
                Statement(sid="ListInputs", actions=["s3:ListBucket"], resources=[inputs_bucket_arn]),
                # Presigned output URLs are signed with this role: it must read them itself.
                Statement(
                    sid="PresignOutputs",
                    actions=["s3:GetObject"],
                    resources=[f"{outputs_bucket_arn}/{contract.JOBS_PREFIX}*"],
                ),
                Statement(
                    sid="DataKey",
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[kms_key_arn],
                    conditions=(via("s3", "sqs", "dynamodb"),),
                ),
            ],
        )
        self.dead_letter_function = PythonFunction(
            self,
            "dead_letter_function",
            name=f"{name}-dead-letters",
            source=JOBS_SOURCE,
            handler="dead_letters.handler",
            kms_key_arn=kms_key_arn,
            region=region,
            environment=environment,
            statements=[
                Statement(sid="FailJobs", actions=["dynamodb:GetItem", "dynamodb:UpdateItem"], resources=[table_arn]),
                Statement(
                    sid="ConsumeDeadLetters",
                    actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                    resources=[store.dlq.arn],
                ),
                Statement(
                    sid="DataKey",
                    actions=["kms:Decrypt"],
                    resources=[kms_key_arn],
                    conditions=(via("sqs", "dynamodb"),),
                ),
            ],
        )
        LambdaEventSourceMapping(
            self,
            "dead_letter_events",
            event_source_arn=store.dlq.arn,
            function_name=self.dead_letter_function.arn,
            batch_size=10,
        )
        self.webhook_function = PythonFunction(
            self,
            "webhook_function",
            name=f"{name}-webhooks",
            source=JOBS_SOURCE,
            handler="webhooks.handler",
            timeout_seconds=60,
            kms_key_arn=kms_key_arn,
            region=region,
            environment=environment,
            statements=[
                Statement(
                    sid="ReadStream",
                    actions=["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
                    resources=[store.table.stream_arn],
                ),
                # ListStreams has no resource type ("*" only; Service Authorization Reference).
                Statement(sid="ListStreams", actions=["dynamodb:ListStreams"]),
                Statement(
                    sid="PresignOutputs",
                    actions=["s3:GetObject"],
                    resources=[f"{outputs_bucket_arn}/{contract.JOBS_PREFIX}*"],
                ),
                Statement(sid="SigningKey", actions=["secretsmanager:GetSecretValue"], resources=[store.secret.arn]),
                Statement(
                    sid="DataKey",
                    actions=["kms:Decrypt"],
                    resources=[kms_key_arn],
                    conditions=(via("dynamodb", "secretsmanager", "s3"),),
                ),
            ],
        )
        LambdaEventSourceMapping(
            self,
            "webhook_events",
            event_source_arn=store.table.stream_arn,
            function_name=self.webhook_function.arn,
            starting_position="LATEST",
            # One record per invocation: a failed delivery is retried alone, and no webhook
            # that already went out is sent again with it.
            batch_size=1,
            maximum_retry_attempts=5,
            bisect_batch_on_function_error=True,
            maximum_record_age_in_seconds=3600,
            # Only transitions into a terminal status reach the function.
            filter_criteria=LambdaEventSourceMappingFilterCriteria(
                filter=[
                    LambdaEventSourceMappingFilterCriteriaFilter(
                        pattern=json.dumps(
                            {
                                "eventName": ["MODIFY"],
                                "dynamodb": {
                                    "NewImage": {
                                        contract.STATUS: {"S": list(contract.TERMINAL)},
                                        contract.WEBHOOK_URL: {"S": [{"prefix": "https://"}]},
                                    },
                                    "OldImage": {contract.STATUS: {"S": [{"anything-but": list(contract.TERMINAL)}]}},
                                },
                            },
                            sort_keys=True,
                        )
                    )
                ]
            ),
        )
        access_logs = CloudwatchLogGroup(
            self, "access_logs", name=f"/aws/apigateway/{name}", retention_in_days=365, kms_key_id=kms_key_arn
        )
        self.api = Apigatewayv2Api(self, "api", name=name, protocol_type="HTTP", description="ComfyUI job API (SigV4)")
        integration = Apigatewayv2Integration(
            self,
            "integration",
            api_id=self.api.id,
            integration_type="AWS_PROXY",
            integration_uri=self.api_function.invoke_arn,
            payload_format_version="2.0",
            timeout_milliseconds=API_TIMEOUT_SECONDS * 1000,
        )
        self.routes = [
            Apigatewayv2Route(
                self,
                f"route_{method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
                api_id=self.api.id,
                route_key=f"{method} {path}",
                authorization_type="AWS_IAM",
                target=f"integrations/{integration.id}",
            )
            for method, path in (("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{id}"), ("DELETE", "/jobs/{id}"))
        ]
        stage = Apigatewayv2Stage(
            self,
            "stage",
            api_id=self.api.id,
            name="$default",
            auto_deploy=True,
            default_route_settings=Apigatewayv2StageDefaultRouteSettings(
                throttling_burst_limit=50, throttling_rate_limit=20
            ),
            access_log_settings=Apigatewayv2StageAccessLogSettings(
                destination_arn=access_logs.arn,
                format=json.dumps(
                    {
                        "requestId": "$context.requestId",
                        "caller": "$context.identity.caller",
                        "userArn": "$context.identity.userArn",
                        "route": "$context.routeKey",
                        "status": "$context.status",
                        "latency": "$context.integrationLatency",
                        "time": "$context.requestTime",
                    },
                    sort_keys=True,
                ),
            ),
        )
        LambdaPermission(
            self,
            "invoke_permission",
            action="lambda:InvokeFunction",
            function_name=self.api_function.name,
            principal="apigateway.amazonaws.com",
            source_arn=f"{self.api.execution_arn}/*/*",
            depends_on=[self.api_function.function],
        )
        self.url = stage.invoke_url
        self.execution_arn = self.api.execution_arn
        # Pipelines attach this to their role: SigV4 calls to these routes, nothing else.
        caller = policy_document(
            self,
            "caller_document",
            Statement(
                sid="CallJobApi",
                actions=["execute-api:Invoke"],
                resources=[f"{self.api.execution_arn}/$default/{m}/jobs" for m in ("POST", "GET")]
                + [f"{self.api.execution_arn}/$default/{m}/jobs/*" for m in ("GET", "DELETE")],
            ),
        )
        self.caller_policy = IamPolicy(
            self, "caller_policy", name=f"{name}-caller", description="Call the ComfyUI job API", policy=caller.json
        )
        dead_letter_alarm(
            self,
            "dlq_alarm",
            alarm_name=f"{name}-dead-letters",
            description=f"Jobs whose runs kept dying reached {name}-dlq and were failed: look at the runner logs",
            queue_name=store.dlq.name,
            alarm_actions=alarm_actions,
        )


class JobRunnerIdentity(Construct):
    """The runner sidecar's AWS permissions, bound to the ComfyUI pods' service account through
    EKS Pod Identity. (Pod Identity gives every container of the pod these credentials; the
    ComfyUI container itself makes no AWS call.)"""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        region: str,
        account_id: str,
        cluster_name: str,
        cluster_arn: str,
        store: JobStore,
        inputs_bucket_arn: str,
        outputs_bucket_arn: str,
        kms_key_arn: str,
    ) -> None:
        super().__init__(scope, id_)
        document = policy_document(
            self,
            "document",
            Statement(
                sid="TakeJobs",
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
                resources=[store.queue.arn],
            ),
            # Every read and write of a job record is a conditional UpdateItem (the contract).
            Statement(sid="JobRecords", actions=["dynamodb:UpdateItem"], resources=[store.table.arn]),
            Statement(
                sid="JobInputs", actions=["s3:GetObject"], resources=[f"{inputs_bucket_arn}/{contract.JOBS_PREFIX}*"]
            ),
            Statement(
                sid="JobOutputs", actions=["s3:PutObject"], resources=[f"{outputs_bucket_arn}/{contract.JOBS_PREFIX}*"]
            ),
            Statement(
                sid="DataKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[kms_key_arn],
                conditions=(
                    Condition(
                        test="StringEquals",
                        variable="kms:ViaService",
                        values=[f"{s}.{region}.amazonaws.com" for s in ("s3", "sqs", "dynamodb")],
                    ),
                ),
            ),
        )
        pod_identity_role(
            self,
            name=f"{name}-runner",
            document=document,
            account_id=account_id,
            cluster_name=cluster_name,
            cluster_arn=cluster_arn,
            namespace=names.COMFYUI_NAMESPACE,
            service_account=names.COMFYUI_SERVICE_ACCOUNT,
        )


class KedaIdentity(Construct):
    """KEDA's operator reads the job queue's depth (aws-sqs-queue trigger, TriggerAuthentication
    with podIdentity provider aws: the operator's own EKS Pod Identity credentials)."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        account_id: str,
        cluster_name: str,
        cluster_arn: str,
        queue_arn: str,
    ) -> None:
        super().__init__(scope, id_)
        document = policy_document(
            self, "document", Statement(sid="QueueDepth", actions=["sqs:GetQueueAttributes"], resources=[queue_arn])
        )
        pod_identity_role(
            self,
            name=f"{name}-keda",
            document=document,
            account_id=account_id,
            cluster_name=cluster_name,
            cluster_arn=cluster_arn,
            namespace=names.KEDA_NAMESPACE,
            service_account=names.KEDA_OPERATOR_SERVICE_ACCOUNT,
        )
