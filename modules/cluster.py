"""EKS: API authentication mode with access entries, an AL2023 system node group, add-ons,
control-plane logging and envelope encryption of Secrets."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from cdktf import TerraformHclModule
from constructs import Construct

from core import names

EKS_MODULE_SOURCE = "terraform-aws-modules/eks/aws"
# v21.12+ needs aws >= 6.28, but the prebuilt bindings pin aws 6.25.0 exactly; v21.11.0
# accepts >= 6.23. Pinned exactly (a range would let `init` pick an incompatible version).
EKS_MODULE_VERSION = "21.11.0"

CONTROL_PLANE_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
# The system node group's nodes, where the controllers run (GPU nodes carry the same key).
SYSTEM_NODE_LABEL = {names.NODE_ROLE_TAG_KEY: names.NODE_ROLE_SYSTEM}
# IMDSv2 only, and a hop limit of 1 so pods cannot reach the node's instance credentials
# (every controller here gets its own credentials through EKS Pod Identity instead).
NODE_METADATA_OPTIONS = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": 1,
    "instance_metadata_tags": "disabled",
}


def access_entries(
    *, viewer_role_arns: Sequence[str], admin_role_arns: Sequence[str], partition: str
) -> dict[str, dict[str, Any]]:
    """EKS module `access_entries`: one per role, keyed by account and role name (stable when
    the lists are reordered), with one cluster-wide access policy each."""
    out: dict[str, dict[str, Any]] = {}
    for kind, policy, arns in (
        ("viewer", "AmazonEKSAdminViewPolicy", viewer_role_arns),
        ("admin", "AmazonEKSClusterAdminPolicy", admin_role_arns),
    ):
        for arn in arns:
            account, role = arn.split(":")[4], arn.split(":role/")[1]
            key = re.sub(r"[^A-Za-z0-9_-]", "-", f"{kind}-{account}-{role}")
            out[key] = {
                # The full role ARN, path included: access entries match the principal ID, unlike
                # the aws-auth ConfigMap (https://github.com/aws/containers-roadmap/issues/185).
                "principal_arn": arn,
                "policy_associations": {
                    kind: {
                        "policy_arn": f"arn:{partition}:eks::aws:cluster-access-policy/{policy}",
                        "access_scope": {"type": "cluster"},
                    }
                },
            }
    return out


class Cluster(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        kubernetes_version: str,
        vpc_id: str,
        subnet_ids: Sequence[str],
        system_instance_type: str,
        system_min_size: int,
        system_max_size: int,
        system_desired_size: int,
        public_access_cidrs: Sequence[str],
        private_access_cidrs: Sequence[str],
        viewer_role_arns: Sequence[str],
        admin_role_arns: Sequence[str],
        partition: str,
    ) -> None:
        super().__init__(scope, id_)
        self.eks = TerraformHclModule(
            self,
            "eks",
            source=EKS_MODULE_SOURCE,
            version=EKS_MODULE_VERSION,
            variables={
                "name": name,
                "kubernetes_version": kubernetes_version,
                "vpc_id": vpc_id,
                "subnet_ids": subnet_ids,
                # Nodes, pods and controllers always reach the API privately. A public endpoint
                # exists only when the configuration lists who may reach it (offices, VPN, CI);
                # otherwise deployers reach the private one from the VPC or api_private_cidrs.
                "endpoint_public_access": bool(public_access_cidrs),
                "endpoint_private_access": True,
                **({"endpoint_public_access_cidrs": list(public_access_cidrs)} if public_access_cidrs else {}),
                **(
                    {
                        "security_group_additional_rules": {
                            "api_from_private_cidrs": {
                                "description": "Kubernetes API from peered networks and VPN clients",
                                "protocol": "tcp",
                                "from_port": 443,
                                "to_port": 443,
                                "type": "ingress",
                                "cidr_blocks": list(private_access_cidrs),
                            }
                        }
                    }
                    if private_access_cidrs
                    else {}
                ),
                # Access entries only (no aws-auth ConfigMap).
                "authentication_mode": "API",
                "enable_cluster_creator_admin_permissions": True,
                "access_entries": access_entries(
                    viewer_role_arns=viewer_role_arns, admin_role_arns=admin_role_arns, partition=partition
                ),
                "enabled_log_types": list(CONTROL_PLANE_LOG_TYPES),
                "cloudwatch_log_group_retention_in_days": 90,
                # Envelope encryption of Kubernetes Secrets with a module-managed, rotated key.
                "create_kms_key": True,
                "enable_kms_key_rotation": True,
                "encryption_config": {"resources": ["secrets"]},
                "addons": {
                    # before_compute: the CNI and Pod Identity agent exist before nodes join.
                    "vpc-cni": {
                        "before_compute": True,
                        # Network policies are only enforced when the CNI's policy agent is on.
                        "configuration_values": json.dumps({"enableNetworkPolicy": "true"}, sort_keys=True),
                    },
                    "eks-pod-identity-agent": {"before_compute": True},
                    "kube-proxy": {},
                    "coredns": {},
                },
                "eks_managed_node_groups": {
                    "system": {
                        "ami_type": "AL2023_x86_64_STANDARD",
                        "instance_types": [system_instance_type],
                        "min_size": system_min_size,
                        "max_size": system_max_size,
                        "desired_size": system_desired_size,
                        "labels": dict(SYSTEM_NODE_LABEL),
                        "metadata_options": dict(NODE_METADATA_OPTIONS),
                        "block_device_mappings": {
                            "xvda": {
                                "device_name": "/dev/xvda",
                                "ebs": {
                                    "volume_size": 50,
                                    "volume_type": "gp3",
                                    "encrypted": True,
                                    "delete_on_termination": True,
                                },
                            }
                        },
                    }
                },
                # Karpenter's EC2NodeClass selects the node security group by this tag.
                "node_security_group_tags": {names.KARPENTER_DISCOVERY_TAG_KEY: name},
            },
        )
        self.cluster_name = self.eks.get_string("cluster_name")
        self.cluster_endpoint = self.eks.get_string("cluster_endpoint")
        self.cluster_certificate_authority_data = self.eks.get_string("cluster_certificate_authority_data")
        self.cluster_arn = self.eks.get_string("cluster_arn")
        self.node_security_group_id = self.eks.get_string("node_security_group_id")
        self.cluster_primary_security_group_id = self.eks.get_string("cluster_primary_security_group_id")
