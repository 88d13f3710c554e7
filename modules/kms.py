"""Customer-managed KMS keys with rotation and an explicit key policy."""

from __future__ import annotations

from collections.abc import Sequence

from cdktf import TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from constructs import Construct

from modules.iam import Condition, Principal, Statement, policy_json


class EncryptionKey(Construct):
    """A symmetric key. The account root administers it (so IAM policies can grant use).
    AWS services may use it on this account's behalf only, each scoped by a condition
    (confused-deputy protection):

    - `logs_regions`: CloudWatch Logs in those regions, for this account's log groups
      (encryption-context condition from the CloudWatch Logs KMS documentation);
    - `s3_notifications`: S3 delivering event notifications into a queue encrypted with this
      key. As in the S3 documentation's key policy for encrypted destinations, without a
      condition: whether S3 sends aws:SourceAccount on these KMS calls is undocumented, and a
      condition it does not meet fails the bucket's notification configuration at apply.
      The scoping lives in the queue policy, which admits only this account's models bucket
      (aws:SourceArn + aws:SourceAccount).
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        alias: str,
        description: str,
        account_id: str,
        partition: str,
        logs_regions: Sequence[str] = (),
        s3_notifications: bool = False,
        region: str | None = None,
        prevent_destroy: bool = False,
    ) -> None:
        """`prevent_destroy`: Terraform refuses any plan that would destroy the key (for keys
        that hold state or user data: once deleted, every object encrypted with it is lost)."""
        super().__init__(scope, id_)
        statements = [
            Statement(
                sid="AccountAdministers",
                actions=["kms:*"],
                principals=(Principal(type="AWS", identifiers=[f"arn:{partition}:iam::{account_id}:root"]),),
            )
        ]
        for logs_region in logs_regions:
            suffix = "".join(part.title() for part in logs_region.split("-"))
            logs = (Principal(type="Service", identifiers=[f"logs.{logs_region}.amazonaws.com"]),)
            statements.append(
                Statement(
                    sid=f"CloudWatchLogs{suffix}",
                    # Explicit actions: the encryption-context condition exists only on these
                    # (with Describe* in the same statement, DescribeKey could never match).
                    actions=[
                        "kms:Encrypt",
                        "kms:Decrypt",
                        "kms:ReEncryptFrom",
                        "kms:ReEncryptTo",
                        "kms:GenerateDataKey",
                        "kms:GenerateDataKeyWithoutPlaintext",
                    ],
                    principals=logs,
                    conditions=(
                        Condition(
                            test="StringLike",
                            variable="kms:EncryptionContext:aws:logs:arn",
                            values=[f"arn:{partition}:logs:{logs_region}:{account_id}:log-group:*"],
                        ),
                    ),
                )
            )
            statements.append(
                Statement(sid=f"CloudWatchLogsDescribe{suffix}", actions=["kms:DescribeKey"], principals=logs)
            )
        if s3_notifications:
            statements.append(
                Statement(
                    sid="S3EventNotifications",
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    principals=(Principal(type="Service", identifiers=["s3.amazonaws.com"]),),
                )
            )
        key = KmsKey(
            self,
            "key",
            description=description,
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=policy_json(*statements),
            region=region,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True) if prevent_destroy else None,
        )
        KmsAlias(self, "alias", name=f"alias/{alias}", target_key_id=key.key_id, region=region)
        self.resource = key
        self.key_arn = key.arn
        self.key_id = key.key_id
