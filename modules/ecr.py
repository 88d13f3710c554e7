"""The ComfyUI image repository: scan on push, KMS encryption, bounded history."""

from __future__ import annotations

import json

from constructs import Construct
from cdktf_cdktf_provider_aws.ecr_lifecycle_policy import EcrLifecyclePolicy
from cdktf_cdktf_provider_aws.ecr_repository import (
    EcrRepository,
    EcrRepositoryEncryptionConfiguration,
    EcrRepositoryImageScanningConfiguration,
)


def lifecycle_policy(keep_images: int) -> str:
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the last {keep_images} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                    "action": {"type": "expire"},
                }
            ]
        },
        sort_keys=True,
    )


class ImageRepository(Construct):
    def __init__(self, scope: Construct, id_: str, *, name: str, kms_key_arn: str, tag_mutability: str, keep_images: int) -> None:
        super().__init__(scope, id_)
        repo = EcrRepository(
            self,
            "repository",
            name=name,
            image_tag_mutability=tag_mutability,
            image_scanning_configuration=EcrRepositoryImageScanningConfiguration(scan_on_push=True),
            encryption_configuration=[EcrRepositoryEncryptionConfiguration(encryption_type="KMS", kms_key=kms_key_arn)],
        )
        EcrLifecyclePolicy(self, "lifecycle", repository=repo.name, policy=lifecycle_policy(keep_images))
        self.repository_url = repo.repository_url
        self.repository_arn = repo.arn
