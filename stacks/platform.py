"""<project>-platform: the AWS side (network, cluster, GPU capacity IAM, buckets, model sync)."""

from __future__ import annotations

from cdktf import TerraformOutput
from constructs import Construct

from core import names
from core.config import Config
from modules.auth import CognitoAuth
from modules.cluster import Cluster
from modules.ecr import ImageRepository
from modules.jobs import JobRunnerIdentity, JobsApi, JobStore, KedaIdentity
from modules.karpenter import GpuNodePolicy, KarpenterAws, ModelCacheAlarm
from modules.load_balancer import LoadBalancerControllerIam
from modules.model_store import DataBuckets, ModelsReadPolicy, S3CsiDriverIdentity
from modules.model_sync import ModelSync
from modules.network import Network
from stacks.base import ProjectStack
from stacks.state import StateStack


class PlatformStack(ProjectStack):
    cycle = names.PLATFORM_CYCLE

    def __init__(self, scope: Construct, *, config: Config, state: StateStack) -> None:
        super().__init__(scope, config=config)
        # Its state lives in the state stack's bucket: deployed after it, destroyed before it.
        self.add_dependency(state)
        alarm_actions = [config.alarms.sns_topic_arn] if config.alarms.sns_topic_arn else []
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
            private_access_cidrs=config.network.api_private_cidrs,
            viewer_role_arns=config.cluster_access.viewer_role_arns,
            admin_role_arns=config.cluster_access.admin_role_arns,
            partition=config.partition,
        )
        self.buckets = DataBuckets(
            self,
            "data",
            project=config.project,
            account_id=config.account_id,
            region=config.region,
            partition=config.partition,
            models_bucket=config.models_bucket,
            inputs_bucket=config.inputs_bucket,
            outputs_bucket=config.outputs_bucket,
            access_logs_bucket=config.access_logs_bucket,
            outputs_expiration_days=config.buckets.outputs_expiration_days,
            jobs_retention_days=config.jobs.retention_days,
            prevent_destroy=config.data_protection.prevent_destroy,
        )
        models_read = ModelsReadPolicy(
            self, "models_read", project=config.project, region=config.region, buckets=self.buckets
        )
        S3CsiDriverIdentity(
            self,
            "s3_csi_driver",
            project=config.project,
            region=config.region,
            account_id=config.account_id,
            cluster_name=self.cluster.cluster_name,
            cluster_arn=self.cluster.cluster_arn,
            buckets=self.buckets,
        )
        gpu_node_policy = GpuNodePolicy(
            self,
            "gpu_node",
            project=config.project,
            partition=config.partition,
            region=config.region,
            account_id=config.account_id,
        )
        self.karpenter = KarpenterAws(
            self,
            "karpenter",
            cluster_name=self.cluster.cluster_name,
            cluster_arn=self.cluster.cluster_arn,
            account_id=config.account_id,
            node_role_name=f"{config.project}-gpu-node",
            node_policy_arns={"GpuNode": gpu_node_policy.arn, "ModelsRead": models_read.arn},
        )
        ModelCacheAlarm(self, "model_cache_alarm", cluster_name=config.cluster_name, alarm_actions=alarm_actions)
        self.model_sync = ModelSync(
            self,
            "model_sync",
            project=config.project,
            cluster_name=config.cluster_name,
            account_id=config.account_id,
            region=config.region,
            partition=config.partition,
            models_bucket=config.models_bucket,
            models_bucket_id=self.buckets.models.bucket_id,
            models_bucket_arn=self.buckets.models.bucket_arn,
            kms_key_arn=self.buckets.key_arn,
            model_prefixes=config.model_sync.prefixes,
            batching_window_seconds=config.model_sync.batching_window_seconds,
            alarm_actions=alarm_actions,
        )
        self.images = ImageRepository(
            self,
            "images",
            name=f"{config.project}/comfyui",
            kms_key_arn=self.buckets.key_arn,
            tag_mutability=config.comfyui.ecr_image_tag_mutability,
            keep_images=config.comfyui.ecr_keep_images,
            deployed_tag=config.comfyui.image_tag,
        )
        self.load_balancer_iam = LoadBalancerControllerIam(
            self,
            "load_balancer",
            project=config.project,
            cluster_name=self.cluster.cluster_name,
            cluster_arn=self.cluster.cluster_arn,
            cluster_tag_value=config.cluster_name,
            vpc_id=self.network.vpc_id,
            partition=config.partition,
            region=config.region,
            account_id=config.account_id,
        )
        self.auth = (
            CognitoAuth(
                self, "auth", project=config.project, account_id=config.account_id, domain=config.auth.domain or ""
            )
            if config.auth.mode == "cognito"
            else None
        )
        self._jobs(config, alarm_actions)
        TerraformOutput(self, "vpc_id", value=self.network.vpc_id)
        TerraformOutput(self, "models_bucket_name", value=self.buckets.models.bucket_id)
        TerraformOutput(self, "inputs_bucket_name", value=self.buckets.inputs.bucket_id)
        TerraformOutput(self, "outputs_bucket_name", value=self.buckets.outputs.bucket_id)
        TerraformOutput(self, "ecr_repository_url", value=self.images.repository_url)
        TerraformOutput(self, "cluster_name", value=self.cluster.cluster_name)
        TerraformOutput(self, "cluster_endpoint", value=self.cluster.cluster_endpoint)
        TerraformOutput(self, "model_sync_dead_letter_queue_arn", value=self.model_sync.dlq_arn)

    def _jobs(self, config: Config, alarm_actions: list[str]) -> None:
        """The durable job API, its runner's identity, and KEDA's (it scales on the queue)."""
        name = f"{config.project}-jobs"
        self.job_store = JobStore(
            self,
            "job_store",
            name=name,
            kms_key_arn=self.buckets.key_arn,
            max_attempts=config.jobs.max_attempts,
            prevent_destroy=config.data_protection.prevent_destroy,
        )
        self.jobs_api = JobsApi(
            self,
            "jobs_api",
            name=name,
            region=config.region,
            account_id=config.account_id,
            partition=config.partition,
            store=self.job_store,
            inputs_bucket=self.buckets.inputs.bucket_id,
            inputs_bucket_arn=self.buckets.inputs.bucket_arn,
            outputs_bucket=self.buckets.outputs.bucket_id,
            outputs_bucket_arn=self.buckets.outputs.bucket_arn,
            kms_key_arn=self.buckets.key_arn,
            retention_days=config.jobs.retention_days,
            max_attempts=config.jobs.max_attempts,
            timeout_seconds=config.jobs.timeout_minutes * 60,
            alarm_actions=alarm_actions,
        )
        JobRunnerIdentity(
            self,
            "job_runner",
            name=name,
            region=config.region,
            account_id=config.account_id,
            cluster_name=self.cluster.cluster_name,
            cluster_arn=self.cluster.cluster_arn,
            store=self.job_store,
            inputs_bucket_arn=self.buckets.inputs.bucket_arn,
            outputs_bucket_arn=self.buckets.outputs.bucket_arn,
            kms_key_arn=self.buckets.key_arn,
        )
        KedaIdentity(
            self,
            "keda",
            name=config.project,
            account_id=config.account_id,
            cluster_name=self.cluster.cluster_name,
            cluster_arn=self.cluster.cluster_arn,
            queue_arn=self.job_store.queue.arn,
        )
        TerraformOutput(self, "jobs_api_url", value=self.jobs_api.url)
        TerraformOutput(self, "jobs_caller_policy_arn", value=self.jobs_api.caller_policy.arn)
        TerraformOutput(self, "jobs_table_name", value=self.job_store.table.name)
        TerraformOutput(self, "jobs_queue_url", value=self.job_store.queue.url)
        TerraformOutput(self, "jobs_webhook_secret_arn", value=self.job_store.secret.arn)
