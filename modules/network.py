"""VPC: public and private subnets across AZs, NAT, an S3 gateway endpoint, discovery tags."""

from __future__ import annotations

import ipaddress

from cdktf import Fn, TerraformHclModule, Token
from constructs import Construct
from cdktf_cdktf_provider_aws.data_aws_availability_zones import (
    DataAwsAvailabilityZones,
    DataAwsAvailabilityZonesFilter,
)
from cdktf_cdktf_provider_aws.vpc_endpoint import VpcEndpoint

VPC_MODULE_SOURCE = "terraform-aws-modules/vpc/aws"
# Pinned exactly: `terraform init` installs the newest version matching a range and only
# then resolves providers, so a range could pull in a version that needs a newer aws
# provider than the 6.25.0 the prebuilt bindings pin.
VPC_MODULE_VERSION = "6.5.1"


def subnet_plan(vpc_cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """Split the VPC: large private subnets (pods get VPC IPs with the VPC CNI) and small
    public ones (only NAT gateways and load balancers live there).

    Private: the first `az_count` of the eight /(n+3) blocks. Public: the last /(n+3) block,
    split again into eight /(n+6) blocks.
    """
    net = ipaddress.IPv4Network(vpc_cidr)
    blocks = list(net.subnets(prefixlen_diff=3))
    private = [str(b) for b in blocks[:az_count]]
    public = [str(b) for b in list(blocks[-1].subnets(prefixlen_diff=3))[:az_count]]
    return private, public


class Network(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        name: str,
        cluster_name: str,
        vpc_cidr: str,
        az_count: int,
        nat_mode: str,
        region: str,
    ) -> None:
        super().__init__(scope, id_)
        zones = DataAwsAvailabilityZones(
            self,
            "azs",
            state="available",
            filter=[
                # A closed allowlist of zone names (never Local/Wavelength Zones, and a zone
                # AWS adds later cannot silently change the subnet plan), then the first N.
                DataAwsAvailabilityZonesFilter(name="zone-name", values=[f"{region}{letter}" for letter in "abcdef"]),
                DataAwsAvailabilityZonesFilter(name="opt-in-status", values=["opt-in-not-required"]),
            ],
        )
        private, public = subnet_plan(vpc_cidr, az_count)
        self.vpc = TerraformHclModule(
            self,
            "vpc",
            source=VPC_MODULE_SOURCE,
            version=VPC_MODULE_VERSION,
            variables={
                "name": name,
                "cidr": vpc_cidr,
                "azs": Fn.slice(zones.names, 0, az_count),
                "private_subnets": private,
                "public_subnets": public,
                "enable_nat_gateway": True,
                "single_nat_gateway": nat_mode == "single",
                "one_nat_gateway_per_az": nat_mode == "per_az",
                "enable_dns_hostnames": True,
                "enable_dns_support": True,
                # The default security group is emptied (no rules): nothing may use it by accident.
                "manage_default_security_group": True,
                "default_security_group_ingress": [],
                "default_security_group_egress": [],
                "map_public_ip_on_launch": False,
                "enable_flow_log": True,
                "create_flow_log_cloudwatch_log_group": True,
                "create_flow_log_cloudwatch_iam_role": True,
                "flow_log_cloudwatch_log_group_retention_in_days": 90,
                "flow_log_max_aggregation_interval": 60,
                "public_subnet_tags": {"kubernetes.io/role/elb": "1"},
                "private_subnet_tags": {
                    "kubernetes.io/role/internal-elb": "1",
                    # Karpenter's EC2NodeClass selects GPU node subnets by this tag.
                    "karpenter.sh/discovery": cluster_name,
                },
            },
        )
        self.vpc_id = self.vpc.get_string("vpc_id")
        self.private_subnet_ids = self.vpc.get_list("private_subnets")
        self.public_subnet_ids = self.vpc.get_list("public_subnets")
        self.private_subnet_cidrs = private
        self.public_subnet_cidrs = public
        # Model downloads from S3 stay on the AWS network and skip NAT data-processing charges.
        VpcEndpoint(
            self,
            "s3_endpoint",
            vpc_id=self.vpc_id,
            service_name=f"com.amazonaws.{region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=Token.as_list(
                Fn.concat([self.vpc.get_list("private_route_table_ids"), self.vpc.get_list("public_route_table_ids")])
            ),
            tags={"Name": f"{name}-s3"},
        )
