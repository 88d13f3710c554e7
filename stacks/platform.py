"""<project>-platform: the AWS side (network, cluster, GPU capacity IAM, buckets, model sync)."""

from __future__ import annotations

from cdktf import TerraformOutput
from constructs import Construct

from core.config import Config
from modules.cluster import Cluster
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
        )
        TerraformOutput(self, "vpc_id", value=self.network.vpc_id)
        TerraformOutput(self, "cluster_name", value=self.cluster.cluster_name)
        TerraformOutput(self, "cluster_endpoint", value=self.cluster.cluster_endpoint)
