"""The S3 side of models, inputs and outputs, in named parts: the data key and buckets
(DataBuckets), the read-only policy GPU nodes get for the model cache (ModelsReadPolicy), and
the identity of the Mountpoint S3 CSI driver that mounts inputs and outputs
(S3CsiDriverIdentity)."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from constructs import Construct

from core import names
from modules.iam import Condition, Statement, pod_identity_role, policy_document
from modules.jobs import contract
from modules.kms import EncryptionKey
from modules.storage import AccessLogBucket, SecureBucket

# Mountpoint S3 CSI driver v2: driver-level credentials come from EKS Pod Identity on the
# node DaemonSet's service account (docs/CONFIGURATION.md of awslabs/mountpoint-s3-csi-driver).
CSI_NAMESPACE = names.SYSTEM_NAMESPACE
CSI_NODE_SERVICE_ACCOUNT = "s3-csi-driver-sa"


def kms_via_s3(region: str) -> Condition:
    """Use of a key only through S3 in this region (never a direct KMS call)."""
    return Condition(test="StringEquals", variable="kms:ViaService", values=[f"s3.{region}.amazonaws.com"])


class DataBuckets(Construct):
    """The data key and the models, inputs and outputs buckets (plus their access-log bucket).

    Models and inputs are versioned (a bad upload or an accidental delete can be rolled back);
    outputs expire after a configurable time (generations pile up fast and are re-creatable).
    With `prevent_destroy` Terraform refuses any plan that would destroy the key or a data
    bucket (README, "Tear down")."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        account_id: str,
        region: str,
        partition: str,
        models_bucket: str,
        inputs_bucket: str,
        outputs_bucket: str,
        access_logs_bucket: str,
        outputs_expiration_days: int,
        jobs_retention_days: int,
        prevent_destroy: bool,
    ) -> None:
        super().__init__(scope, id_)
        self.key = EncryptionKey(
            self,
            "key",
            alias=f"{project}-data",
            description=f"{project}: models, inputs, outputs, model-sync queue and logs",
            account_id=account_id,
            partition=partition,
            logs_regions=[region],
            s3_notifications=True,
            prevent_destroy=prevent_destroy,
        )
        logs = AccessLogBucket(
            self,
            "access_logs",
            bucket_name=access_logs_bucket,
            account_id=account_id,
            partition=partition,
            region=region,
        )
        common = {"key": self.key, "region": region, "log_bucket": logs.bucket_id, "prevent_destroy": prevent_destroy}
        self.models = SecureBucket(self, "models", bucket_name=models_bucket, versioned=True, **common)
        # The job API's copies of job inputs and large workflows (jobs/<id>/...) outlive their
        # job records by a day, then go.
        self.inputs = SecureBucket(
            self,
            "inputs",
            bucket_name=inputs_bucket,
            versioned=True,
            prefix_expiration_days={contract.JOBS_PREFIX: jobs_retention_days + 1},
            **common,
        )
        self.outputs = SecureBucket(
            self,
            "outputs",
            bucket_name=outputs_bucket,
            versioned=True,
            expiration_days=outputs_expiration_days,
            noncurrent_expiration_days=7,
            **common,
        )
        self.key_arn = self.key.key_arn


class ModelsReadPolicy(Construct):
    """GPU nodes read the models bucket (and nothing else) to fill their local cache."""

    def __init__(self, scope: Construct, id_: str, *, project: str, region: str, buckets: DataBuckets) -> None:
        super().__init__(scope, id_)
        document = policy_document(
            self,
            "document",
            Statement(sid="ListModels", actions=["s3:ListBucket"], resources=[buckets.models.bucket_arn]),
            Statement(sid="ReadModels", actions=["s3:GetObject"], resources=[f"{buckets.models.bucket_arn}/*"]),
            Statement(
                sid="DecryptModels",
                actions=["kms:Decrypt"],
                resources=[buckets.key_arn],
                conditions=(kms_via_s3(region),),
            ),
        )
        self.policy = IamPolicy(
            self,
            "policy",
            name=f"{project}-models-read",
            description="Read-only access to the ComfyUI models bucket (GPU node model cache)",
            policy=document.json,
        )
        self.arn = self.policy.arn


class S3CsiDriverIdentity(Construct):
    """The CSI driver mounts inputs (read/write: uploads) and outputs (write new files)."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        region: str,
        account_id: str,
        cluster_name: str,
        cluster_arn: str,
        buckets: DataBuckets,
    ) -> None:
        super().__init__(scope, id_)
        document = policy_document(
            self,
            "document",
            Statement(
                sid="ListBuckets",
                actions=["s3:ListBucket"],
                resources=[buckets.inputs.bucket_arn, buckets.outputs.bucket_arn],
            ),
            Statement(
                sid="ReadWriteObjects",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"],
                resources=[f"{buckets.inputs.bucket_arn}/*", f"{buckets.outputs.bucket_arn}/*"],
            ),
            Statement(
                sid="UseDataKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[buckets.key_arn],
                conditions=(kms_via_s3(region),),
            ),
        )
        self.role = pod_identity_role(
            self,
            name=f"{project}-s3-csi-driver",
            document=document,
            account_id=account_id,
            cluster_name=cluster_name,
            cluster_arn=cluster_arn,
            namespace=CSI_NAMESPACE,
            service_account=CSI_NODE_SERVICE_ACCOUNT,
        )
