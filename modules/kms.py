"""Customer-managed KMS keys with rotation and an explicit key policy."""

from __future__ import annotations

from typing import Sequence

from constructs import Construct
from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey

from modules.iam import Principal, Statement, policy_json


class EncryptionKey(Construct):
    """A symmetric key. The account root administers it (so IAM policies can grant use),
    and `service_principals` may use it for encryption on the account's behalf."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        alias: str,
        description: str,
        account_id: str,
        partition: str,
        service_principals: Sequence[str] = (),
        region: str | None = None,
    ) -> None:
        super().__init__(scope, id_)
        statements = [
            Statement(
                sid="AccountAdministers",
                actions=["kms:*"],
                principals=(Principal(type="AWS", identifiers=[f"arn:{partition}:iam::{account_id}:root"]),),
            )
        ]
        if service_principals:
            statements.append(
                Statement(
                    sid="ServicesUseKey",
                    actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
                    principals=(Principal(type="Service", identifiers=list(service_principals)),),
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
        )
        KmsAlias(self, "alias", name=f"alias/{alias}", target_key_id=key.key_id, region=region)
        self.key_arn = key.arn
        self.key_id = key.key_id

