"""A Python Lambda function the way this product builds every one: a deterministic zip of its
source folder, an encrypted log group it alone writes to, a role with exactly the given
statements (plus its logs), environment encrypted with the data key, arm64."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cdktf import AssetType, ITerraformDependable, TerraformAsset, TerraformStack
from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.lambda_function import (
    LambdaFunction,
    LambdaFunctionEnvironment,
    LambdaFunctionTracingConfig,
)
from constructs import Construct

from modules.iam import Condition, Statement, assume_role_policy, policy_document
from modules.lambda_package import build_zip

RUNTIME = "python3.12"


def package(scope: Construct, *, source: Path, name: str) -> TerraformAsset:
    """The zip of `source`, built and copied into the stack once however many functions use it."""
    stack = TerraformStack.of(scope)
    asset_id = f"package_{name}"
    existing = stack.node.try_find_child(asset_id)
    if isinstance(existing, TerraformAsset):
        return existing
    return TerraformAsset(stack, asset_id, path=str(build_zip(source, name=name)), type=AssetType.FILE)


class PythonFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        source: Path,
        handler: str,
        statements: Sequence[Statement],
        environment: Mapping[str, str],
        kms_key_arn: str,
        region: str,
        timeout_seconds: int = 30,
        memory_mb: int = 256,
        depends_on: Sequence[ITerraformDependable] = (),
    ) -> None:
        """`statements`: what the function may do besides writing its logs and decrypting its
        environment (KMS through Lambda only)."""
        super().__init__(scope, id_)
        log_group = CloudwatchLogGroup(
            self, "logs", name=f"/aws/lambda/{name}", retention_in_days=365, kms_key_id=kms_key_arn
        )
        permissions = policy_document(
            self,
            "policy_document",
            Statement(
                sid="WriteLogs", actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[f"{log_group.arn}:*"]
            ),
            Statement(
                sid="DecryptEnvironment",
                actions=["kms:Decrypt"],
                resources=[kms_key_arn],
                conditions=(
                    Condition(
                        test="StringEquals", variable="kms:ViaService", values=[f"lambda.{region}.amazonaws.com"]
                    ),
                ),
            ),
            *statements,
        )
        trust = assume_role_policy(self, "trust", service="lambda.amazonaws.com")
        self.role = IamRole(self, "role", name=name, assume_role_policy=trust.json)
        IamRolePolicy(self, "role_policy", name=name, role=self.role.id, policy=permissions.json)
        zip_file = package(self, source=source, name=source.name)
        self.function = LambdaFunction(
            self,
            "function",
            function_name=name,
            role=self.role.arn,
            runtime=RUNTIME,
            architectures=["arm64"],
            handler=handler,
            filename=zip_file.path,
            source_code_hash=zip_file.asset_hash,
            timeout=timeout_seconds,
            memory_size=memory_mb,
            kms_key_arn=kms_key_arn,
            tracing_config=LambdaFunctionTracingConfig(mode="PassThrough"),
            environment=LambdaFunctionEnvironment(variables=dict(environment)),
            depends_on=[log_group, *depends_on],
        )
        self.name = name
        self.arn = self.function.arn
        self.invoke_arn = self.function.invoke_arn
