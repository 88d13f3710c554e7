"""<project>-workload: the Kubernetes side (Helm charts, Karpenter pools, ComfyUI).

Its helm and kubernetes providers are configured from the platform stack's outputs through
cdktf cross-stack references (rendered as terraform_remote_state on the platform's S3 state)
and authenticate with short-lived `aws eks get-token` credentials, never a stored kubeconfig.
"""

from __future__ import annotations

from typing import Any

from cdktf import Fn, TerraformOutput
from cdktf_cdktf_provider_aws.data_aws_ecr_image import DataAwsEcrImage
from cdktf_cdktf_provider_helm.provider import HelmProvider, HelmProviderKubernetes, HelmProviderKubernetesExec
from cdktf_cdktf_provider_kubernetes.manifest import Manifest, ManifestTimeouts, ManifestWait
from cdktf_cdktf_provider_kubernetes.provider import KubernetesProvider, KubernetesProviderExec
from constructs import Construct

from core import names
from core.config import Config
from modules.comfyui import TERMINATION_GRACE_SECONDS, JobRunnerSettings, comfyui_manifests
from modules.karpenter import KarpenterCluster, gpu_node_class, gpu_node_pool
from modules.literal import escape_literals
from modules.load_balancer import LoadBalancerController
from modules.s3_volumes import S3Volumes
from modules.scaling import Scaling
from stacks.base import ProjectStack
from stacks.ingress import ExposureSubnets, api_ingress_settings, ingress_settings
from stacks.platform import PlatformStack

INGRESS_READY_FIELD = "status.loadBalancer.ingress[0].hostname"
INGRESS_READY_TIMEOUT = "15m"  # an ALB takes 2-5 minutes to provision
# The pod's init container waits this much longer than the node's own model-cache deadline:
# a node that misses its deadline replaces itself first, and the pod moves with it.
MODEL_CACHE_WAIT_MARGIN_SECONDS = 600


def eks_token_exec(*, cluster_name: str, region: str) -> dict[str, Any]:
    return {
        "api_version": "client.authentication.k8s.io/v1beta1",
        "command": "aws",
        "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
    }


class WorkloadStack(ProjectStack):
    cycle = names.WORKLOAD_CYCLE

    def __init__(self, scope: Construct, *, config: Config, platform: PlatformStack) -> None:
        super().__init__(scope, config=config)
        self.add_dependency(platform)
        cluster = platform.cluster
        ca = Fn.base64decode(cluster.cluster_certificate_authority_data)
        auth = eks_token_exec(cluster_name=cluster.cluster_name, region=config.region)
        self.kubernetes = KubernetesProvider(
            self,
            "kubernetes",
            host=cluster.cluster_endpoint,
            cluster_ca_certificate=ca,
            exec=[KubernetesProviderExec(**auth)],
        )
        self.helm = HelmProvider(
            self,
            "helm",
            kubernetes=HelmProviderKubernetes(
                host=cluster.cluster_endpoint, cluster_ca_certificate=ca, exec=HelmProviderKubernetesExec(**auth)
            ),
        )
        self.karpenter = KarpenterCluster(
            self,
            "karpenter",
            cluster_name=cluster.cluster_name,
            cluster_endpoint=cluster.cluster_endpoint,
            queue_name=platform.karpenter.queue_name,
            node_class=gpu_node_class(
                cluster_name=config.cluster_name,
                node_role_name=platform.karpenter.node_role_name,
                models_bucket=config.models_bucket,
                region=config.region,
                model_prefixes=config.model_sync.prefixes,
                root_volume_gib=config.gpu.root_volume_gib,
                tags=config.tags,
                ami_alias=config.gpu.ami_alias,
                cache_deadline_seconds=config.gpu.model_cache_deadline_seconds,
            ),
            node_pool=gpu_node_pool(
                instance_types=config.gpu.instance_types,
                capacity_types=config.gpu.capacity_types,
                max_gpus=config.gpu.max_gpus,
                consolidate_after=config.gpu.consolidate_after,
                expire_after=config.gpu.expire_after,
            ),
        )
        self.s3_volumes = S3Volumes(
            self,
            "s3_volumes",
            inputs_bucket=platform.buckets.inputs.bucket_id,
            outputs_bucket=platform.buckets.outputs.bucket_id,
            region=config.region,
            pod_stop_seconds=TERMINATION_GRACE_SECONDS,
        )
        self.load_balancer = LoadBalancerController(
            self,
            "load_balancer",
            cluster_name=cluster.cluster_name,
            region=config.region,
            vpc_id=platform.network.vpc_id,
            tags=config.tags,
        )
        cognito = None
        if platform.auth is not None:
            cognito = {
                "userPoolARN": platform.auth.cognito_user_pool_arn,
                "userPoolClientID": platform.auth.cognito_client_id,
                "userPoolDomain": platform.auth.cognito_domain,
            }
        # The tag resolved to its digest at plan time: pods run exactly the image that was
        # planned, and a tag that was never pushed fails the plan, not the rollout.
        pushed = DataAwsEcrImage(
            self, "comfyui_image", repository_name=platform.images.repository_name, image_tag=config.comfyui.image_tag
        )
        image = f"{platform.images.repository_url}:{config.comfyui.image_tag}@{pushed.image_digest}"
        subnets = ExposureSubnets(
            internal=Fn.join(",", platform.network.internal_alb_subnet_ids),
            public=Fn.join(",", platform.network.public_subnet_ids),
        )
        objects = comfyui_manifests(
            image=image,
            model_cache_wait_seconds=config.gpu.model_cache_deadline_seconds + MODEL_CACHE_WAIT_MARGIN_SECONDS,
            runner=JobRunnerSettings(
                table=platform.job_store.table.name,
                queue_url=platform.job_store.queue.url,
                inputs_bucket=platform.buckets.inputs.bucket_id,
                outputs_bucket=platform.buckets.outputs.bucket_id,
                region=config.region,
                timeout_seconds=config.jobs.timeout_minutes * 60,
            ),
            settings=ingress_settings(config, cognito=cognito, subnet_ids=subnets),
            api_settings=api_ingress_settings(config, subnet_ids=subnets),
        )
        self.manifests: dict[str, Manifest] = {}
        for resource_id, manifest in objects.items():
            is_ingress = manifest["kind"] == "Ingress"
            self.manifests[resource_id] = Manifest(
                self,
                resource_id,
                # Literal text (the pod's programs in the ConfigMap) must reach the cluster
                # byte for byte, not as Terraform templates (modules/literal.py).
                manifest=escape_literals(manifest),
                # Namespace and volumes first; the Ingress needs the controller's webhook (and,
                # on destroy, the controller to delete the ALB and lift its finalizer). The GPU
                # pool too, so destroy removes ComfyUI before Karpenter drains the GPU nodes:
                # the drain then never races a Deployment that recreates its pods.
                depends_on=[
                    self.s3_volumes.namespace,
                    *self.s3_volumes.volumes,
                    self.load_balancer.release,
                    self.karpenter.gpu_pool,
                ],
                # The apply of an Ingress ends when its ALB exists (the controller publishes the
                # DNS name), not when the API server accepted it: the edge stack looks the ALB up
                # right after, and a controller error (certificate, annotation) fails here, at
                # its cause, instead of as "no matching load balancer" there.
                wait=ManifestWait(fields={INGRESS_READY_FIELD: ".+"}) if is_ingress else None,
                timeouts=ManifestTimeouts(create=INGRESS_READY_TIMEOUT, update=INGRESS_READY_TIMEOUT)
                if is_ingress
                else None,
            )
        # KEDA scales the Deployment (it has no replicas of its own) on the job queue and the
        # working hours; it goes after the Deployment and before it on destroy.
        self.scaling = Scaling(
            self,
            "scaling",
            scaling=config.scaling,
            queue_url=platform.job_store.queue.url,
            region=config.region,
            deployment=objects["comfyui_deployment"]["metadata"]["name"],
            depends_on=[self.manifests["comfyui_deployment"]],
        )
        self._outputs(config)

    def _outputs(self, config: Config) -> None:
        """Where users reach ComfyUI (the CLI's `outputs` and `status` read these)."""
        scheme = "https" if config.auth.certificate_arn else "http"
        host = self.manifests["comfyui_ingress"].get_string_attribute(f"object.{INGRESS_READY_FIELD}")
        TerraformOutput(self, "comfyui_url", value=f"{scheme}://{config.auth.domain or host}")
        TerraformOutput(self, "comfyui_alb_dns_name", value=host)
        if "comfyui_ingress_comfyui_api" in self.manifests:
            api_host = self.manifests["comfyui_ingress_comfyui_api"].get_string_attribute(
                f"object.{INGRESS_READY_FIELD}"
            )
            TerraformOutput(self, "comfyui_api_url", value=f"http://{api_host}")
