"""<project>-platform: the AWS side (network, cluster, GPU capacity IAM, buckets, model sync)."""

from __future__ import annotations

from cdktf import TerraformOutput
from constructs import Construct

from core.config import Config
from modules.auth import CognitoAuth
from modules.cluster import Cluster
from modules.ecr import ImageRepository
from modules.karpenter import KarpenterAws
from modules.load_balancer import LoadBalancerControllerIam
from modules.model_store import ModelStore
from modules.model_sync import ModelSync
from modules.network import Network
from stacks.base import ProjectStack


class PlatformStack(ProjectStack):
    cycle = "platform"

    def __init__(self, scope: Construct, *, config: Config) -> None:
        super().__init__(scope, config=config)
        self.network = Network(
            self,
            "network",
            name=config.project,
            cluster_name=config.cluster_name,
            vpc_cidr=config.network.vpc_cidr,
            az_count=config.network.az_count,
            nat_mode=config.network.nat_mode,
            region=config.region,
        )
        self.cluster = Cluster(
            self,
            "cluster",
            name=config.cluster_name,
            kubernetes_version=config.kubernetes_version,
            vpc_id=self.network.vpc_id,
            subnet_ids=self.network.private_subnet_ids,
            system_instance_type=config.system_nodes.instance_type,
            system_min_size=config.system_nodes.min_size,
            system_max_size=config.system_nodes.max_size,
            system_desired_size=config.system_nodes.desired_size,
            public_access_cidrs=config.network.api_public_cidrs,
            viewer_role_arns=config.cluster_access.viewer_role_arns,
            admin_role_arns=config.cluster_access.admin_role_arns,
            partition=config.partition,
        )
        self.store = ModelStore(
            self,
            "model_store",
            project=config.project,
            cluster_name=self.cluster.cluster_name,
            account_id=config.account_id,
            region=config.region,
            partition=config.partition,
            models_bucket=config.models_bucket,
            inputs_bucket=config.inputs_bucket,
            outputs_bucket=config.outputs_bucket,
            access_logs_bucket=config.access_logs_bucket,
            outputs_expiration_days=config.buckets.outputs_expiration_days,
        )
        self.karpenter = KarpenterAws(
            self,
            "karpenter",
            cluster_name=self.cluster.cluster_name,
            node_role_name=f"{config.project}-gpu-node",
            models_read_policy_arn=self.store.models_read_policy.arn,
            partition=config.partition,
        )
        self.model_sync = ModelSync(
            self,
            "model_sync",
            project=config.project,
            cluster_name=config.cluster_name,
            account_id=config.account_id,
            region=config.region,
            partition=config.partition,
            models_bucket_id=self.store.models.bucket_id,
            models_bucket_arn=self.store.models_bucket_arn,
            kms_key_arn=self.store.data_key_arn,
            model_prefixes=config.model_sync.prefixes,
            batching_window_seconds=config.model_sync.batching_window_seconds,
        )
        self.images = ImageRepository(
            self,
            "images",
            name=f"{config.project}/comfyui",
            kms_key_arn=self.store.data_key_arn,
            tag_mutability=config.comfyui.ecr_image_tag_mutability,
            keep_images=config.comfyui.ecr_keep_images,
        )
        self.load_balancer_iam = LoadBalancerControllerIam(
            self, "load_balancer", project=config.project, cluster_name=self.cluster.cluster_name, partition=config.partition
        )
        self.auth = (
            CognitoAuth(self, "auth", project=config.project, account_id=config.account_id, domain=config.auth.domain or "")
            if config.auth.mode == "cognito"
            else None
        )
        TerraformOutput(self, "vpc_id", value=self.network.vpc_id)
        TerraformOutput(self, "models_bucket_name", value=config.models_bucket)
        TerraformOutput(self, "ecr_repository_url", value=self.images.repository_url)
        TerraformOutput(self, "cluster_name", value=self.cluster.cluster_name)
        TerraformOutput(self, "cluster_endpoint", value=self.cluster.cluster_endpoint)
