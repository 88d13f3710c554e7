"""<project>-workload: the Kubernetes side (Helm charts, Karpenter pools, ComfyUI).

Its helm and kubernetes providers are configured from the platform stack's outputs through
cdktf cross-stack references (rendered as terraform_remote_state on the platform's S3 state)
and authenticate with short-lived `aws eks get-token` credentials, never a stored kubeconfig.
"""

from __future__ import annotations

from cdktf import Fn
from constructs import Construct
from cdktf_cdktf_provider_helm.provider import HelmProvider, HelmProviderKubernetes, HelmProviderKubernetesExec
from cdktf_cdktf_provider_kubernetes.manifest import Manifest, ManifestTimeouts, ManifestWait
from cdktf_cdktf_provider_kubernetes.provider import KubernetesProvider, KubernetesProviderExec

from core.config import Config
from modules.karpenter import KarpenterCluster, gpu_node_class, gpu_node_pool
from modules.comfyui import TERMINATION_GRACE_SECONDS, comfyui_manifests
from modules.load_balancer import LoadBalancerController
from modules.s3_volumes import S3Volumes
from stacks.ingress import api_ingress_settings, ingress_settings
from stacks.base import ProjectStack
from stacks.platform import PlatformStack


INGRESS_READY_FIELD = "status.loadBalancer.ingress[0].hostname"
INGRESS_READY_TIMEOUT = "15m"  # an ALB takes 2-5 minutes to provision


def eks_token_exec(*, cluster_name: str, region: str) -> dict:
    return {
        "api_version": "client.authentication.k8s.io/v1beta1",
        "command": "aws",
        "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
    }


class WorkloadStack(ProjectStack):
    cycle = "workload"

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
            queue_name=platform.karpenter.karpenter_queue_name,
            node_class=gpu_node_class(
                cluster_name=config.cluster_name,
                node_role_name=platform.karpenter.karpenter_node_role_name,
                models_bucket=config.models_bucket,
                region=config.region,
                model_prefixes=config.model_sync.prefixes,
                root_volume_gib=config.gpu.root_volume_gib,
                tags=config.tags,
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
            inputs_bucket=platform.store.inputs_bucket_name,
            outputs_bucket=platform.store.outputs_bucket_name,
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
        image = f"{platform.images.repository_url}:{config.comfyui.image_tag}"
        kinds_seen: set[str] = set()
        for manifest in comfyui_manifests(
            image=image,
            replicas=config.comfyui.replicas,
            settings=ingress_settings(config, cognito=cognito),
            api_settings=api_ingress_settings(config),
        ):
            kind = manifest["kind"].lower()
            is_ingress = kind == "ingress"
            # The first object of a kind keeps its plain id (stable Terraform addresses); a
            # second one (the API Ingress) adds its name.
            suffix = f"_{manifest['metadata']['name'].replace('-', '_')}" if kind in kinds_seen else ""
            kinds_seen.add(kind)
            Manifest(
                self,
                f"comfyui_{kind}{suffix}",
                manifest=manifest,
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
                timeouts=ManifestTimeouts(create=INGRESS_READY_TIMEOUT, update=INGRESS_READY_TIMEOUT) if is_ingress else None,
            )
