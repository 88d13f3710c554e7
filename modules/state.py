"""Terraform state: the bucket every other stack's S3 backend writes to."""

from __future__ import annotations

from constructs import Construct

from modules.kms import EncryptionKey
from modules.storage import AccessLogBucket, SecureBucket


class TerraformState(Construct):
    """Versioned, KMS-encrypted, TLS-only state bucket with access logging.

    Locking uses S3-native lock files (Terraform >= 1.10, `use_lockfile`), so no DynamoDB table.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        bucket_name: str,
        log_bucket_name: str,
        key_alias: str,
        project: str,
        account_id: str,
        partition: str,
        region: str,
        prevent_destroy: bool,
    ) -> None:
        """`key_alias`: the alias of the bucket's KMS key, which the other stacks' S3 backends
        name (Config.state_kms_alias). `prevent_destroy`: Terraform refuses any plan that would
        destroy the state bucket or its key (losing them loses every other stack's state)."""
        super().__init__(scope, id_)
        key = EncryptionKey(
            self,
            "key",
            alias=key_alias,
            description=f"{project}: Terraform state encryption",
            account_id=account_id,
            partition=partition,
            prevent_destroy=prevent_destroy,
        )
        logs = AccessLogBucket(
            self, "access_logs", bucket_name=log_bucket_name, account_id=account_id, partition=partition, region=region
        )
        state = SecureBucket(
            self,
            "bucket",
            bucket_name=bucket_name,
            key=key,
            region=region,
            versioned=True,
            log_bucket=logs.bucket_id,
            noncurrent_expiration_days=365,
            prevent_destroy=prevent_destroy,
        )
        self.bucket_name = bucket_name
        self.bucket_arn = state.bucket_arn
        self.kms_key_arn = key.key_arn
