"""The S3 side of models, inputs and outputs: buckets, their KMS key, and the IAM that
GPU nodes (model cache) and the Mountpoint S3 CSI driver (inputs/outputs) get."""

from __future__ import annotations

from constructs import Construct
from cdktf_cdktf_provider_aws.eks_pod_identity_association import EksPodIdentityAssociation
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment

from modules.iam import Condition, Statement, assume_role_policy, policy_document
from modules.kms import EncryptionKey
from modules.storage import AccessLogBucket, SecureBucket

# Mountpoint S3 CSI driver v2: driver-level credentials come from EKS Pod Identity on the
# node DaemonSet's service account (docs/CONFIGURATION.md of awslabs/mountpoint-s3-csi-driver).
CSI_NAMESPACE = "kube-system"
CSI_NODE_SERVICE_ACCOUNT = "s3-csi-driver-sa"


class ModelStore(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        # A reference to the cluster (module output), so the association waits for it.
        cluster_name: str,
        account_id: str,
        region: str,
        partition: str,
        models_bucket: str,
        inputs_bucket: str,
        outputs_bucket: str,
        access_logs_bucket: str,
        outputs_expiration_days: int,
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
        )
        logs = AccessLogBucket(
            self, "access_logs", bucket_name=access_logs_bucket, account_id=account_id, partition=partition
        )
        # Models: versioned, so a bad upload or an accidental delete can be rolled back.
        self.models = SecureBucket(
            self, "models", bucket_name=models_bucket, kms_key_arn=self.key.key_arn, versioned=True, log_bucket=logs.bucket_id
        )
        self.inputs = SecureBucket(
            self, "inputs", bucket_name=inputs_bucket, kms_key_arn=self.key.key_arn, versioned=True, log_bucket=logs.bucket_id
        )
        # Outputs expire after a configurable time: generations pile up fast and are re-creatable.
        self.outputs = SecureBucket(
            self,
            "outputs",
            bucket_name=outputs_bucket,
            kms_key_arn=self.key.key_arn,
            versioned=True,
            log_bucket=logs.bucket_id,
            expiration_days=outputs_expiration_days,
            noncurrent_expiration_days=7,
        )
        kms_via_s3 = Condition(test="StringEquals", variable="kms:ViaService", values=[f"s3.{region}.amazonaws.com"])

        # GPU nodes read the models bucket (and nothing else) to fill their local cache.
        models_read = policy_document(
            self,
            "models_read_document",
            Statement(sid="ListModels", actions=["s3:ListBucket"], resources=[self.models.bucket_arn]),
            Statement(sid="ReadModels", actions=["s3:GetObject"], resources=[f"{self.models.bucket_arn}/*"]),
            Statement(sid="DecryptModels", actions=["kms:Decrypt"], resources=[self.key.key_arn], conditions=(kms_via_s3,)),
        )
        self.models_read_policy = IamPolicy(
            self,
            "models_read",
            name=f"{project}-models-read",
            description="Read-only access to the ComfyUI models bucket (GPU node model cache)",
            policy=models_read.json,
        )

        # The CSI driver mounts inputs (read/write: uploads) and outputs (write new files).
        csi_document = policy_document(
            self,
            "csi_document",
            Statement(sid="ListBuckets", actions=["s3:ListBucket"], resources=[self.inputs.bucket_arn, self.outputs.bucket_arn]),
            Statement(
                sid="ReadWriteObjects",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"],
                resources=[f"{self.inputs.bucket_arn}/*", f"{self.outputs.bucket_arn}/*"],
            ),
            Statement(
                sid="UseDataKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[self.key.key_arn],
                conditions=(kms_via_s3,),
            ),
        )
        trust = assume_role_policy(self, "csi_trust", service="pods.eks.amazonaws.com", pod_identity=True)
        self.csi_role = IamRole(
            self, "csi_role", name=f"{project}-s3-csi-driver", assume_role_policy=trust.json
        )
        csi_policy = IamPolicy(self, "csi_policy", name=f"{project}-s3-csi-driver", policy=csi_document.json)
        IamRolePolicyAttachment(self, "csi_attach", role=self.csi_role.name, policy_arn=csi_policy.arn)
        EksPodIdentityAssociation(
            self,
            "csi_pod_identity",
            cluster_name=cluster_name,
            namespace=CSI_NAMESPACE,
            service_account=CSI_NODE_SERVICE_ACCOUNT,
            role_arn=self.csi_role.arn,
        )
        self.models_bucket_arn = self.models.bucket_arn
        self.models_bucket_name = models_bucket
        self.inputs_bucket_name = inputs_bucket
        self.outputs_bucket_name = outputs_bucket
        self.data_key_arn = self.key.key_arn
