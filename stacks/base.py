"""What every stack shares: the AWS provider (pinned account, default tags) and its backend."""

from __future__ import annotations

from cdktf import S3Backend, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags
from constructs import Construct

from core.config import Config


def default_tags(config: Config, cycle: str) -> dict[str, str]:
    return {**config.tags, "Project": config.project, "Stack": config.stack_name(cycle), "ManagedBy": "cdktf"}


class ProjectStack(TerraformStack):
    """A stack of one deployment cycle. All but the state stack keep their state in the
    state stack's bucket, locked with S3-native lock files."""

    cycle: str = ""

    def __init__(self, scope: Construct, *, config: Config, remote_state: bool = True) -> None:
        super().__init__(scope, config.stack_name(self.cycle))
        self.config = config
        self.aws = AwsProvider(
            self,
            "aws",
            region=config.region,
            # Refuse to touch any account but the configured one (wrong credentials fail at plan).
            allowed_account_ids=[config.account_id],
            default_tags=[AwsProviderDefaultTags(tags=default_tags(config, self.cycle))],
        )
        if remote_state:
            S3Backend(
                self,
                bucket=config.state_bucket,
                key=config.state_key(self.cycle),
                region=config.region,
                encrypt=True,
                kms_key_id=f"arn:{config.partition}:kms:{config.region}:{config.account_id}:alias/{config.state_kms_alias}",
            )
            # S3-native locking (Terraform >= 1.10); cdktf's S3Backend lacks the field.
            self.add_override("terraform.backend.s3.use_lockfile", True)
