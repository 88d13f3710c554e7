"""S3 buckets with the security baseline every bucket of this product gets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdktf import (
    AssetType,
    DataResource,
    ITerraformDependable,
    LocalExecProvisioner,
    TerraformAsset,
    TerraformResourceLifecycle,
    TerraformStack,
)
from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import (
    S3BucketLifecycleConfiguration,
    S3BucketLifecycleConfigurationRule,
    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload,
    S3BucketLifecycleConfigurationRuleExpiration,
    S3BucketLifecycleConfigurationRuleFilter,
    S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration,
)
from cdktf_cdktf_provider_aws.s3_bucket_logging import S3BucketLoggingA
from cdktf_cdktf_provider_aws.s3_bucket_ownership_controls import (
    S3BucketOwnershipControls,
    S3BucketOwnershipControlsRule,
)
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_public_access_block import S3BucketPublicAccessBlock
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
    S3BucketServerSideEncryptionConfigurationRuleA,
    S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA,
)
from cdktf_cdktf_provider_aws.s3_bucket_versioning import (
    S3BucketVersioningA,
    S3BucketVersioningVersioningConfiguration,
)
from constructs import Construct

from modules.iam import Condition, Principal, Statement, deny_insecure_transport, policy_document
from modules.kms import EncryptionKey

EMPTY_BUCKET_GUARD = Path(__file__).resolve().parent / "hooks" / "require-empty-bucket.sh"
_GUARD_ASSET_ID = "empty_bucket_guard_script"


def _guard_script(scope: Construct) -> TerraformAsset:
    """The guard program, copied into the stack's assets once however many buckets use it."""
    stack = TerraformStack.of(scope)
    existing = stack.node.try_find_child(_GUARD_ASSET_ID)
    if isinstance(existing, TerraformAsset):
        return existing
    return TerraformAsset(stack, _GUARD_ASSET_ID, path=str(EMPTY_BUCKET_GUARD), type=AssetType.FILE)


def _rule(rule_id: str, **kwargs: Any) -> S3BucketLifecycleConfigurationRule:
    # An empty filter applies the rule to every object (the provider requires a filter).
    return S3BucketLifecycleConfigurationRule(
        id=rule_id, status="Enabled", filter=[S3BucketLifecycleConfigurationRuleFilter()], **kwargs
    )


class SecureBucket(Construct):
    """A bucket with: owner-enforced ACLs, public access blocked, default encryption,
    a TLS-only policy, aborted multipart uploads cleaned up, optional versioning,
    expiration and server access logging.

    `key=None` means SSE-S3: required for the access-log bucket, because S3 server access
    logging cannot deliver into an SSE-KMS bucket.

    Destroy safety:
    - the bucket depends on its KMS key, so the key is never destroyed while the bucket (and
      the data encrypted with it) survives;
    - `prevent_destroy`: Terraform refuses any plan that would destroy the bucket;
    - a guard runs first on destroy and stops it while the bucket still holds data, so a
      failed destroy never leaves a surviving bucket without its policy, public access block,
      encryption or versioning (Terraform removes those dependents before the bucket itself).
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        bucket_name: str,
        key: EncryptionKey | None,
        region: str,
        versioned: bool,
        log_bucket: str | None,
        prevent_destroy: bool = False,
        expiration_days: int | None = None,
        noncurrent_expiration_days: int = 90,
        prefix_expiration_days: Mapping[str, int] | None = None,
        extra_statements: Sequence[Statement] = (),
    ) -> None:
        """`prefix_expiration_days`: objects under these prefixes expire after so many days."""
        super().__init__(scope, id_)
        bucket = S3Bucket(
            self,
            "bucket",
            bucket=bucket_name,
            depends_on=[key.resource] if key else None,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=True) if prevent_destroy else None,
        )
        protections: list[ITerraformDependable] = [
            S3BucketOwnershipControls(
                self,
                "ownership",
                bucket=bucket.id,
                rule=S3BucketOwnershipControlsRule(object_ownership="BucketOwnerEnforced"),
            ),
            S3BucketPublicAccessBlock(
                self,
                "public_access_block",
                bucket=bucket.id,
                block_public_acls=True,
                block_public_policy=True,
                ignore_public_acls=True,
                restrict_public_buckets=True,
            ),
        ]
        if key:
            default = S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA(
                sse_algorithm="aws:kms", kms_master_key_id=key.key_arn
            )
        else:
            default = S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA(
                sse_algorithm="AES256"
            )
        protections.append(
            S3BucketServerSideEncryptionConfigurationA(
                self,
                "encryption",
                bucket=bucket.id,
                # Bucket keys cut KMS request costs by orders of magnitude for model reads.
                rule=[
                    S3BucketServerSideEncryptionConfigurationRuleA(
                        apply_server_side_encryption_by_default=default, bucket_key_enabled=key is not None
                    )
                ],
            )
        )
        if versioned:
            protections.append(
                S3BucketVersioningA(
                    self,
                    "versioning",
                    bucket=bucket.id,
                    versioning_configuration=S3BucketVersioningVersioningConfiguration(status="Enabled"),
                )
            )
        rules = [
            _rule(
                "abort-incomplete-multipart-uploads",
                abort_incomplete_multipart_upload=[
                    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(days_after_initiation=7)
                ],
            )
        ]
        if versioned:
            rules.append(
                _rule(
                    "expire-noncurrent-versions",
                    noncurrent_version_expiration=[
                        S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(
                            noncurrent_days=noncurrent_expiration_days
                        )
                    ],
                )
            )
        if expiration_days is not None:
            rules.append(
                _rule("expire-objects", expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=expiration_days)])
            )
        for prefix, days in sorted((prefix_expiration_days or {}).items()):
            rules.append(
                S3BucketLifecycleConfigurationRule(
                    id=f"expire-{prefix.strip('/').replace('/', '-')}",
                    status="Enabled",
                    filter=[S3BucketLifecycleConfigurationRuleFilter(prefix=prefix)],
                    expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=days)],
                )
            )
        protections.append(S3BucketLifecycleConfiguration(self, "lifecycle", bucket=bucket.id, rule=rules))
        if log_bucket:
            protections.append(
                S3BucketLoggingA(
                    self, "logging", bucket=bucket.id, target_bucket=log_bucket, target_prefix=f"{bucket_name}/"
                )
            )
        document = policy_document(
            self,
            "policy_document",
            deny_insecure_transport("s3", [bucket.arn, f"{bucket.arn}/*"]),
            *extra_statements,
        )
        protections.append(S3BucketPolicy(self, "policy", bucket=bucket.id, policy=document.json))
        guard_script = _guard_script(self)
        # Depends on every protection, so on destroy it goes first; its provisioner fails while
        # the bucket holds data, and Terraform then destroys none of what it depends on.
        DataResource(
            self,
            "destroy_guard",
            input={"bucket": bucket_name, "region": region},
            depends_on=protections,
            provisioners=[
                LocalExecProvisioner(
                    type="local-exec",
                    when="destroy",
                    interpreter=["bash"],
                    command=f"${{path.module}}/{guard_script.path}",
                    environment={"BUCKET": "${self.input.bucket}", "AWS_REGION": "${self.input.region}"},
                )
            ],
        )
        self.bucket_id = bucket.id
        self.bucket_arn = bucket.arn
        self.bucket_name = bucket_name


class AccessLogBucket(SecureBucket):
    """Target of S3 server access logging: SSE-S3 (log delivery cannot write SSE-KMS buckets),
    versioned, logs kept a year, and only S3 log delivery for this account may write."""

    def __init__(
        self, scope: Construct, id_: str, *, bucket_name: str, account_id: str, partition: str, region: str
    ) -> None:
        super().__init__(
            scope,
            id_,
            bucket_name=bucket_name,
            key=None,
            region=region,
            versioned=True,
            log_bucket=None,
            expiration_days=365,
            extra_statements=(
                Statement(
                    sid="S3ServerAccessLogs",
                    actions=["s3:PutObject"],
                    resources=[f"arn:{partition}:s3:::{bucket_name}/*"],
                    principals=(Principal(type="Service", identifiers=["logging.s3.amazonaws.com"]),),
                    conditions=(Condition(test="StringEquals", variable="aws:SourceAccount", values=[account_id]),),
                ),
            ),
        )
