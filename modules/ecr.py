"""The ComfyUI image repository: scan on push, KMS encryption, bounded history."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.ecr_lifecycle_policy import EcrLifecyclePolicy
from cdktf_cdktf_provider_aws.ecr_repository import (
    EcrRepository,
    EcrRepositoryEncryptionConfiguration,
    EcrRepositoryImageScanningConfiguration,
)
from constructs import Construct


def lifecycle_policy(*, keep_images: int, deployed_tag: str) -> str:
    """Keep the last `keep_images` images, and never the image the configuration deploys:
    ECR evaluates rules by priority, and an image a higher-priority rule selects is never
    expired by a lower-priority one (ECR user guide, "Lifecycle policy evaluation rules").
    Rule 1 selects the deployed tag and expires only images beyond the first one carrying it,
    and a tag names one image at a time, so it expires nothing; rule 2 still counts the
    deployed image towards its total but can never mark it, however many images follow."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"never expire the deployed image {deployed_tag}",
                    "selection": {
                        "tagStatus": "tagged",
                        "tagPatternList": [deployed_tag],
                        "countType": "imageCountMoreThan",
                        "countNumber": 1,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 2,
                    "description": f"keep the last {keep_images} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                    "action": {"type": "expire"},
                },
            ]
        },
        sort_keys=True,
    )


class ImageRepository(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        kms_key_arn: str,
        tag_mutability: str,
        keep_images: int,
        deployed_tag: str,
    ) -> None:
        super().__init__(scope, id_)
        repo = EcrRepository(
            self,
            "repository",
            name=name,
            image_tag_mutability=tag_mutability,
            image_scanning_configuration=EcrRepositoryImageScanningConfiguration(scan_on_push=True),
            encryption_configuration=[EcrRepositoryEncryptionConfiguration(encryption_type="KMS", kms_key=kms_key_arn)],
        )
        EcrLifecyclePolicy(
            self,
            "lifecycle",
            repository=repo.name,
            policy=lifecycle_policy(keep_images=keep_images, deployed_tag=deployed_tag),
        )
        self.repository_name = repo.name
        self.repository_url = repo.repository_url
        self.repository_arn = repo.arn
