"""VPC: private subnets for nodes and pods, small subnets of their own for internal load
balancers, public subnets for NAT and internet-facing load balancers, an S3 gateway endpoint,
discovery tags."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cdktf import Fn, TerraformHclModule, Token
from cdktf_cdktf_provider_aws.data_aws_availability_zones import (
    DataAwsAvailabilityZones,
    DataAwsAvailabilityZonesFilter,
)
from cdktf_cdktf_provider_aws.route_table_association import RouteTableAssociation
from cdktf_cdktf_provider_aws.subnet import Subnet
from cdktf_cdktf_provider_aws.vpc_endpoint import VpcEndpoint
from constructs import Construct

from core import names

VPC_MODULE_SOURCE = "terraform-aws-modules/vpc/aws"
# Pinned exactly: `terraform init` installs the newest version matching a range and only
# then resolves providers, so a range could pull in a version that needs a newer aws
# provider than the 6.25.0 the prebuilt bindings pin.
VPC_MODULE_VERSION = "6.5.1"


# The load balancer controller places internal ALBs in subnets tagged with the first key and
# internet-facing ones in subnets tagged with the second (subnet auto-discovery).
INTERNAL_ELB_TAG = "kubernetes.io/role/internal-elb"
PUBLIC_ELB_TAG = "kubernetes.io/role/elb"


@dataclass(frozen=True)
class SubnetPlan:
    """The VPC's address plan, one list per subnet role, one entry per AZ.

    - private: large (pods get VPC IPs with the VPC CNI): GPU and system nodes and pods;
    - internal_alb: small, nothing but internal ALBs, so a NetworkPolicy can admit exactly
      the load balancers and no pod or node;
    - public: small: NAT gateways and internet-facing ALBs.
    """

    private: list[str]
    internal_alb: list[str]
    public: list[str]


def subnet_plan(vpc_cidr: str, az_count: int) -> SubnetPlan:
    """Split the VPC into eight /(n+3) blocks: private subnets are the first `az_count`; the
    last two blocks are split again into eight /(n+6) blocks each, for internal ALBs (the
    second to last) and public subnets (the last). A /20 VPC still leaves /26 ALB subnets
    (an ALB needs a /27 with at least 8 free addresses)."""
    net = ipaddress.IPv4Network(vpc_cidr)
    blocks = list(net.subnets(prefixlen_diff=3))
    return SubnetPlan(
        private=[str(b) for b in blocks[:az_count]],
        internal_alb=[str(b) for b in list(blocks[-2].subnets(prefixlen_diff=3))[:az_count]],
        public=[str(b) for b in list(blocks[-1].subnets(prefixlen_diff=3))[:az_count]],
    )


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
        plan = subnet_plan(vpc_cidr, az_count)
        azs = Fn.slice(zones.names, 0, az_count)
        self.vpc = TerraformHclModule(
            self,
            "vpc",
            source=VPC_MODULE_SOURCE,
            version=VPC_MODULE_VERSION,
            variables={
                "name": name,
                "cidr": vpc_cidr,
                "azs": azs,
                "private_subnets": plan.private,
                "public_subnets": plan.public,
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
                "public_subnet_tags": {PUBLIC_ELB_TAG: "1"},
                # No internal-elb tag here: internal ALBs get subnets of their own (below).
                "private_subnet_tags": {
                    # Karpenter's EC2NodeClass selects GPU node subnets by this tag.
                    names.KARPENTER_DISCOVERY_TAG_KEY: cluster_name,
                },
            },
        )
        self.vpc_id = self.vpc.get_string("vpc_id")
        self.private_subnet_ids = self.vpc.get_list("private_subnets")
        self.public_subnet_ids = self.vpc.get_list("public_subnets")
        self.plan = plan
        private_route_tables = self.vpc.get_list("private_route_table_ids")
        self.internal_alb_subnets = []
        for index, cidr in enumerate(plan.internal_alb):
            subnet = Subnet(
                self,
                f"internal_alb_{index}",
                vpc_id=self.vpc_id,
                cidr_block=cidr,
                availability_zone=Fn.element(azs, index),
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-internal-alb-{index}", INTERNAL_ELB_TAG: "1"},
            )
            # The private route tables (NAT): an internal ALB with Cognito login must reach the
            # IdP's token endpoint (ALB authentication docs). One table per AZ with per_az NAT,
            # a single one otherwise (element() wraps around).
            RouteTableAssociation(
                self,
                f"internal_alb_{index}_routes",
                subnet_id=subnet.id,
                route_table_id=Fn.element(private_route_tables, index),
            )
            self.internal_alb_subnets.append(subnet)
        self.internal_alb_subnet_ids = [subnet.id for subnet in self.internal_alb_subnets]
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
