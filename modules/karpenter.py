"""Karpenter: AWS side (controller/node IAM, interruption queue) in the platform stack;
the chart, the GPU NodePool/EC2NodeClass and the NVIDIA device plugin in the workload stack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cdktf import TerraformHclModule
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import CloudwatchMetricAlarm
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_helm.release import Release
from constructs import Construct

from core import names
from modules.cluster import NODE_METADATA_OPTIONS, SYSTEM_NODE_LABEL
from modules.gpu_user_data import render_gpu_user_data
from modules.helm import chart_values, manifests_chart, to_yaml
from modules.iam import Condition, Statement, pod_identity_trust, policy_document

KARPENTER_MODULE_SOURCE = "terraform-aws-modules/eks/aws//modules/karpenter"
KARPENTER_MODULE_VERSION = "21.11.0"
# The submodule v21.11.0 grants every IAM action Karpenter's own v1.8.8 CloudFormation
# policy lists (1.8 added iam:ListInstanceProfiles, which it has); v1.12+ needs
# ec2:DescribePlacementGroups, which it lacks. The CRD schemas in tests are v1.8.8 too.
KARPENTER_CHART_REPOSITORY = "oci://public.ecr.aws/karpenter"
KARPENTER_CHART_VERSION = "1.8.8"
NVIDIA_DEVICE_PLUGIN_REPOSITORY = "https://nvidia.github.io/k8s-device-plugin"
NVIDIA_DEVICE_PLUGIN_VERSION = "0.18.1"
GPU_NODE_LABEL = {names.NODE_ROLE_TAG_KEY: names.NODE_ROLE_GPU}
# Upper bound for draining an expiring or deleted GPU node, so a running generation may
# finish (the ComfyUI pod's own grace period is shorter).
NODE_TERMINATION_GRACE_SECONDS = 3600
# On destroy, helm provider 3.x passes `wait` to `helm uninstall`, which then waits until the
# NodePool and EC2NodeClass are gone, i.e. until their finalizers have let Karpenter drain
# and terminate every GPU node. Only then does Terraform uninstall the Karpenter chart
# (`depends_on`). Without the wait the controller would go first, the NodeClaim finalizers
# would never be released and the instances would outlive the cluster, blocking the VPC's
# destroy. The timeout covers one full node drain plus Karpenter's own pace.
# https://github.com/hashicorp/terraform-provider-helm/issues/593 (uninstall returning early)
GPU_POOL_RELEASE_TIMEOUT_SECONDS = NODE_TERMINATION_GRACE_SECONDS + 600
# SSM Agent on the GPU nodes, Run Command only (no State Manager, Inventory, Patch Manager,
# Distributor, parameters): registration, then the channels that deliver commands. Agents
# >= 3.3.40.0 receive Run Command through ssmmessages (Message Gateway Service) and fall back
# to ec2messages (SSM Agent RELEASENOTES 3.1.821.0 and 3.3.40.0; SSM user guide, "Create VPC
# endpoints"). ssmmessages also carries Session Manager; no document here starts a session.
SSM_AGENT_REGISTER_ACTIONS = ("ssm:UpdateInstanceInformation",)
SSM_AGENT_RUN_COMMAND_ACTIONS = (
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)


def gpu_node_statements(*, partition: str, region: str, account_id: str) -> list[Statement]:
    """What a GPU node does besides being a node: receive the model-sync command through SSM
    Run Command, and report a missed model-cache deadline. Instead of the managed policy
    AmazonSSMManagedInstanceCore, which also lets the node read every SSM parameter of the
    account and use Session Manager, State Manager, Inventory and Patch Manager."""
    return [
        # Registration only for instances of this account and region, and only with instance
        # profile credentials (ec2:SourceInstanceARN is set on those; Service Authorization
        # Reference, Systems Manager).
        Statement(
            sid="RegisterWithSsm",
            actions=list(SSM_AGENT_REGISTER_ACTIONS),
            resources=[f"arn:{partition}:ec2:{region}:{account_id}:instance/*"],
            conditions=(Condition(test="Null", variable="ec2:SourceInstanceARN", values=["false"]),),
        ),
        # These actions have no resource types: "*" is the only resource they take.
        Statement(sid="ReceiveRunCommand", actions=list(SSM_AGENT_RUN_COMMAND_ACTIONS)),
        Statement(
            sid="ReportModelCacheDeadline",
            actions=["cloudwatch:PutMetricData"],
            conditions=(
                Condition(test="StringEquals", variable="cloudwatch:namespace", values=[names.METRICS_NAMESPACE]),
            ),
        ),
    ]


class GpuNodePolicy(Construct):
    """The GPU node role's own policy (see gpu_node_statements)."""

    def __init__(
        self, scope: Construct, id_: str, *, project: str, partition: str, region: str, account_id: str
    ) -> None:
        super().__init__(scope, id_)
        document = policy_document(
            self, "document", *gpu_node_statements(partition=partition, region=region, account_id=account_id)
        )
        self.policy = IamPolicy(
            self,
            "policy",
            name=f"{project}-gpu-node",
            description="ComfyUI GPU nodes: SSM Run Command (model sync) and the model-cache metric",
            policy=document.json,
        )
        self.arn = self.policy.arn


class ModelCacheAlarm(Construct):
    """Raised when a GPU node reports that its model cache missed the deadline (the node then
    powers itself off and Karpenter replaces it): a bucket, permission or object problem that
    would otherwise show only as GPU nodes coming and going."""

    def __init__(self, scope: Construct, id_: str, *, cluster_name: str, alarm_actions: Sequence[str]) -> None:
        super().__init__(scope, id_)
        CloudwatchMetricAlarm(
            self,
            "alarm",
            alarm_name=f"{cluster_name}-gpu-model-cache-deadline",
            alarm_description=(
                "A GPU node's model cache did not complete in time; the node powered off and is replaced. "
                f"See journalctl -u {names.SYNC_SERVICE_NAME} (collected in the node's console output) and "
                f"{names.CACHE_SKIPPED_PATH} on the next node."
            ),
            namespace=names.METRICS_NAMESPACE,
            metric_name=names.CACHE_DEADLINE_METRIC,
            dimensions={names.METRIC_CLUSTER_DIMENSION: cluster_name},
            statistic="Sum",
            period=300,
            evaluation_periods=1,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=list(alarm_actions),
            ok_actions=list(alarm_actions),
        )


class KarpenterAws(Construct):
    """Controller role (EKS Pod Identity), interruption queue + EventBridge rules, node role
    with the GPU node policy (SSM Run Command for the model sync, the cache metric) and
    read-only access to the models bucket, and the node access entry."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        cluster_name: str,
        cluster_arn: str,
        account_id: str,
        node_role_name: str,
        node_policy_arns: Mapping[str, str],
    ) -> None:
        """`node_policy_arns`: extra policies of the node role, by a name known at synth time
        (the module's for_each key)."""
        super().__init__(scope, id_)
        # The submodule's controller trust admits any Pod Identity association of the account;
        # a document passed here replaces its statement of the same sid ("PodIdentity") with
        # one conditioned on this cluster, namespace and service account.
        trust = pod_identity_trust(
            self,
            "controller_trust",
            account_id=account_id,
            cluster_arn=cluster_arn,
            namespace=names.KARPENTER_NAMESPACE,
            service_account=names.KARPENTER_SERVICE_ACCOUNT,
        )
        self.module = TerraformHclModule(
            self,
            "karpenter",
            source=KARPENTER_MODULE_SOURCE,
            version=KARPENTER_MODULE_VERSION,
            variables={
                "cluster_name": cluster_name,
                "namespace": names.KARPENTER_NAMESPACE,
                "service_account": names.KARPENTER_SERVICE_ACCOUNT,
                "create_pod_identity_association": True,
                "iam_role_override_assume_policy_documents": [trust.json],
                "enable_spot_termination": True,
                "node_iam_role_use_name_prefix": False,
                "node_iam_role_name": node_role_name,
                "node_iam_role_additional_policies": dict(node_policy_arns),
            },
        )
        self.node_role_name = self.module.get_string("node_iam_role_name")
        self.queue_name = self.module.get_string("queue_name")
        self.controller_role_arn = self.module.get_string("iam_role_arn")


def karpenter_values(*, cluster_name: str, cluster_endpoint: str, queue_name: str) -> dict[str, Any]:
    return chart_values(
        "karpenter",
        {
            "settings": {
                "clusterName": cluster_name,
                "clusterEndpoint": cluster_endpoint,
                "interruptionQueue": queue_name,
            },
            "serviceAccount": {"name": names.KARPENTER_SERVICE_ACCOUNT},
            "nodeSelector": dict(SYSTEM_NODE_LABEL),
        },
    )


def gpu_node_class(
    *,
    cluster_name: str,
    node_role_name: str,
    models_bucket: str,
    region: str,
    model_prefixes: Sequence[str],
    root_volume_gib: int,
    tags: Mapping[str, str],
    ami_alias: str,
    cache_deadline_seconds: int,
) -> dict[str, Any]:
    """EC2NodeClass for the GPU pool. `userData` is returned plain (not Terraform-escaped).
    `tags`: the project's tags, for the GPU instances and volumes (Terraform's default tags
    never reach what Karpenter launches); ours win on a clash."""
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {"name": names.GPU_NODECLASS_NAME},
        "spec": {
            # The AL2023 alias resolves to the NVIDIA variant of the EKS AMI for GPU types.
            "amiSelectorTerms": [{"alias": ami_alias}],
            "role": node_role_name,
            # Discovery tags set by the network and cluster constructs (never name globs).
            "subnetSelectorTerms": [{"tags": {names.KARPENTER_DISCOVERY_TAG_KEY: cluster_name}}],
            "securityGroupSelectorTerms": [{"tags": {names.KARPENTER_DISCOVERY_TAG_KEY: cluster_name}}],
            "metadataOptions": {
                "httpEndpoint": NODE_METADATA_OPTIONS["http_endpoint"],
                "httpProtocolIPv6": "disabled",
                "httpPutResponseHopLimit": NODE_METADATA_OPTIONS["http_put_response_hop_limit"],
                "httpTokens": NODE_METADATA_OPTIONS["http_tokens"],
            },
            "blockDeviceMappings": [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": f"{root_volume_gib}Gi",
                        "volumeType": "gp3",
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ],
            # The instance store is ours (model cache RAID0), so no instanceStorePolicy.
            "userData": render_gpu_user_data(
                models_bucket=models_bucket,
                region=region,
                model_prefixes=tuple(model_prefixes),
                cluster_name=cluster_name,
                cache_deadline_seconds=cache_deadline_seconds,
            ),
            "tags": {
                **tags,
                names.NODE_CLUSTER_TAG_KEY: cluster_name,
                names.NODE_ROLE_TAG_KEY: names.NODE_ROLE_GPU,
                "Name": f"{cluster_name}-gpu",
            },
        },
    }


def gpu_node_pool(
    *,
    instance_types: Sequence[str],
    capacity_types: Sequence[str],
    max_gpus: int,
    consolidate_after: str,
    expire_after: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": names.GPU_NODEPOOL_NAME},
        "spec": {
            "template": {
                "metadata": {"labels": dict(GPU_NODE_LABEL)},
                "spec": {
                    "nodeClassRef": {
                        "group": "karpenter.k8s.aws",
                        "kind": "EC2NodeClass",
                        "name": names.GPU_NODECLASS_NAME,
                    },
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(instance_types)},
                        # Spot first when allowed: Karpenter prefers the cheapest offering.
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(capacity_types)},
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                    ],
                    # Only pods that tolerate the GPU taint (ComfyUI, GPU daemonsets) land here.
                    "taints": [{"key": names.GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
                    "expireAfter": expire_after,
                    "terminationGracePeriod": f"{NODE_TERMINATION_GRACE_SECONDS}s",
                },
            },
            "limits": {names.GPU_RESOURCE: str(max_gpus)},
            "disruption": {
                # WhenEmpty: consolidation removes only nodes without workload pods, so it never
                # interrupts a running generation (ComfyUI pods also carry
                # karpenter.sh/do-not-disrupt). An empty node lingers `consolidateAfter`.
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": consolidate_after,
                "budgets": [{"nodes": "10%"}],
            },
        },
    }


class KarpenterCluster(Construct):
    """The chart, then (explicit ordering, same stack) the GPU NodePool/EC2NodeClass, then
    the NVIDIA device plugin.

    Why a helm_release of a local chart for the NodePool/EC2NodeClass rather than
    kubernetes_manifest: kubernetes_manifest needs the CRDs on the API server at *plan*
    time, so a first deploy (chart and pools in one plan) fails. A helm_release is only
    rendered at apply, after `depends_on` has installed the Karpenter chart and its CRDs.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        cluster_name: str,
        cluster_endpoint: str,
        queue_name: str,
        node_class: dict[str, Any],
        node_pool: dict[str, Any],
    ) -> None:
        super().__init__(scope, id_)
        self.karpenter = Release(
            self,
            "karpenter",
            name="karpenter",
            namespace=names.KARPENTER_NAMESPACE,
            repository=KARPENTER_CHART_REPOSITORY,
            chart="karpenter",
            version=KARPENTER_CHART_VERSION,
            values=[
                to_yaml(
                    karpenter_values(
                        cluster_name=cluster_name, cluster_endpoint=cluster_endpoint, queue_name=queue_name
                    )
                )
            ],
            wait=True,
            atomic=True,
            cleanup_on_fail=True,
        )
        self.gpu_pool = Release(
            self,
            "gpu_pool",
            name="gpu-nodepool",
            namespace=names.KARPENTER_NAMESPACE,
            chart=manifests_chart(self),
            values=[to_yaml({"manifests": [node_class, node_pool]})],
            depends_on=[self.karpenter],
            wait=True,
            timeout=GPU_POOL_RELEASE_TIMEOUT_SECONDS,
        )
        self.device_plugin = Release(
            self,
            "nvidia_device_plugin",
            name="nvidia-device-plugin",
            namespace=names.KARPENTER_NAMESPACE,
            repository=NVIDIA_DEVICE_PLUGIN_REPOSITORY,
            chart="nvidia-device-plugin",
            version=NVIDIA_DEVICE_PLUGIN_VERSION,
            values=[to_yaml(chart_values("nvidia-device-plugin"))],
        )
