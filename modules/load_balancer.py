"""AWS Load Balancer Controller: IAM (EKS Pod Identity) in the platform stack, the chart in
the workload stack. It turns the ComfyUI Ingress into an ALB.

The policy is the controller's own `docs/install/iam_policy.json` at v2.17.0
(kubernetes-sigs/aws-load-balancer-controller), rebuilt from typed statements, and tightened
on purpose:
- every ARN names this partition, region and account (upstream: `*`);
- every write to a security group, load balancer, target group, listener or rule requires
  this cluster's tag value (`elbv2.k8s.aws/cluster` = the cluster name), where upstream only
  requires that *some* cluster's tag is present, or nothing at all (listeners, rules,
  targets): another cluster's controller in the account can't touch ours, nor ours theirs;
- security group rules it adds to groups it did not create are limited to this VPC;
- the WAF/Shield *write* actions (waf(v2) Associate/Disassociate, SetWebAcl, shield
  Create/DeleteProtection) are left out: this product attaches no WAF or Shield to the ALB
  (its WAF is on CloudFront), and those controller features are off in
  helm_values/aws-load-balancer-controller.yaml. Reads stay (the controller still inspects).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdktf_cdktf_provider_helm.release import Release
from constructs import Construct

from core import names
from modules.cluster import SYSTEM_NODE_LABEL
from modules.helm import chart_values, to_yaml
from modules.iam import Condition, Statement, pod_identity_role, policy_document

LBC_CHART_REPOSITORY = "https://aws.github.io/eks-charts"
LBC_CHART_VERSION = "1.17.0"  # controller v2.17.0
LBC_NAMESPACE = names.SYSTEM_NAMESPACE
LBC_SERVICE_ACCOUNT = "aws-load-balancer-controller"
CLUSTER_TAG = "elbv2.k8s.aws/cluster"


def _own(kind: str, cluster_name: str) -> Condition:
    """`aws:<kind>Tag/elbv2.k8s.aws/cluster` equals this cluster: the controller tags every
    security group, load balancer, target group, listener and rule it creates with it
    (pkg/deploy/tracking/provider.go; listeners and rules since v2.2.0, feature gate
    ListenerRulesTagging, on by default and set in helm_values)."""
    return Condition(test="StringEquals", variable=f"aws:{kind}Tag/{CLUSTER_TAG}", values=[cluster_name])


def _cluster_tag_unchanged() -> Condition:
    """The request does not set the cluster tag (it cannot re-tag a resource as ours)."""
    return Condition(test="Null", variable=f"aws:RequestTag/{CLUSTER_TAG}", values=["true"])


def controller_statements(
    *, partition: str, region: str, account_id: str, cluster_name: str, vpc_id: str
) -> list[Statement]:
    """The controller's policy, scoped to this region and account, to what this cluster's
    controller created (its cluster tag) and, for security group rules, to this VPC."""
    elb = f"arn:{partition}:elasticloadbalancing:{region}:{account_id}"
    load_balancers = [f"{elb}:loadbalancer/net/*/*", f"{elb}:loadbalancer/app/*/*"]
    target_groups = [f"{elb}:targetgroup/*/*"]
    listeners = [f"{elb}:listener/net/*/*/*", f"{elb}:listener/app/*/*/*"]
    rules = [f"{elb}:listener-rule/net/*/*/*", f"{elb}:listener-rule/app/*/*/*"]
    elb_resources = [*load_balancers, *target_groups, *listeners, *rules]
    security_groups = [f"arn:{partition}:ec2:{region}:{account_id}:security-group/*"]
    vpc_arn = f"arn:{partition}:ec2:{region}:{account_id}:vpc/{vpc_id}"
    return [
        Statement(
            sid="CreateServiceLinkedRole",
            actions=["iam:CreateServiceLinkedRole"],
            resources=[
                f"arn:{partition}:iam::*:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
                "AWSServiceRoleForElasticLoadBalancing"
            ],
            conditions=(
                Condition(
                    test="StringEquals", variable="iam:AWSServiceName", values=["elasticloadbalancing.amazonaws.com"]
                ),
            ),
        ),
        Statement(
            sid="Describe",
            actions=[
                "ec2:DescribeAccountAttributes",
                "ec2:DescribeAddresses",
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeInternetGateways",
                "ec2:DescribeVpcs",
                "ec2:DescribeVpcPeeringConnections",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeInstances",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeTags",
                "ec2:DescribeCoipPools",
                "ec2:DescribeIpamPools",
                "ec2:DescribeRouteTables",
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeListenerCertificates",
                "elasticloadbalancing:DescribeSSLPolicies",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeTags",
                "elasticloadbalancing:DescribeTrustStores",
                "elasticloadbalancing:DescribeListenerAttributes",
                "elasticloadbalancing:DescribeCapacityReservation",
            ],
        ),
        Statement(
            sid="IntegrationsList",
            actions=["acm:ListCertificates", "iam:ListServerCertificates", "shield:GetSubscriptionState"],
        ),
        Statement(
            sid="IntegrationsRead",
            actions=[
                "cognito-idp:DescribeUserPoolClient",
                "acm:DescribeCertificate",
                "iam:GetServerCertificate",
                "waf-regional:GetWebACL",
                "waf-regional:GetWebACLForResource",
                "wafv2:GetWebACL",
                "wafv2:GetWebACLForResource",
                "shield:DescribeProtection",
                "ec2:GetCoipPoolUsage",
                "ec2:GetSecurityGroupsForVpc",
            ],
            resources=[
                f"arn:{partition}:cognito-idp:{region}:{account_id}:userpool/*",
                f"arn:{partition}:acm:{region}:{account_id}:certificate/*",
                f"arn:{partition}:iam::{account_id}:server-certificate/*",
                f"{elb}:loadbalancer/app/*/*",
                f"arn:{partition}:waf-regional:{region}:{account_id}:webacl/*",
                f"arn:{partition}:wafv2:{region}:{account_id}:regional/webacl/*/*",
                f"arn:{partition}:shield::{account_id}:protection/*",
                f"arn:{partition}:ec2:{region}:{account_id}:coip-pool/*",
                vpc_arn,
                *security_groups,
            ],
        ),
        # The controller opens node and pod security groups it did not create (and cannot tag) to
        # its ALBs: scoped to this VPC (ec2:Vpc, Service Authorization Reference, EC2).
        Statement(
            sid="SecurityGroupRulesInThisVpc",
            actions=["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
            resources=security_groups,
            conditions=(Condition(test="ArnEquals", variable="ec2:Vpc", values=[vpc_arn]),),
        ),
        Statement(
            sid="SecurityGroupRuleObjects",
            actions=["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
            resources=[f"arn:{partition}:ec2:{region}:{account_id}:security-group-rule/*"],
        ),
        Statement(sid="CreateSecurityGroupInThisVpc", actions=["ec2:CreateSecurityGroup"], resources=[vpc_arn]),
        Statement(
            sid="CreateOwnSecurityGroup",
            actions=["ec2:CreateSecurityGroup"],
            resources=security_groups,
            conditions=(_own("Request", cluster_name),),
        ),
        Statement(
            sid="TagNewSecurityGroup",
            actions=["ec2:CreateTags"],
            resources=security_groups,
            conditions=(
                Condition(test="StringEquals", variable="ec2:CreateAction", values=["CreateSecurityGroup"]),
                _own("Request", cluster_name),
            ),
        ),
        Statement(
            sid="TagOwnSecurityGroup",
            actions=["ec2:CreateTags", "ec2:DeleteTags"],
            resources=security_groups,
            conditions=(_own("Resource", cluster_name), _cluster_tag_unchanged()),
        ),
        Statement(
            sid="DeleteOwnSecurityGroup",
            actions=["ec2:DeleteSecurityGroup"],
            resources=security_groups,
            conditions=(_own("Resource", cluster_name),),
        ),
        Statement(
            sid="CreateOwnLoadBalancer",
            actions=["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
            resources=[*load_balancers, *target_groups],
            conditions=(_own("Request", cluster_name),),
        ),
        Statement(
            sid="TagOnCreate",
            actions=["elasticloadbalancing:AddTags"],
            resources=elb_resources,
            conditions=(
                Condition(
                    test="StringEquals",
                    variable="elasticloadbalancing:CreateAction",
                    values=["CreateLoadBalancer", "CreateTargetGroup", "CreateListener", "CreateRule"],
                ),
                _own("Request", cluster_name),
            ),
        ),
        Statement(
            sid="TagOwn",
            actions=["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            resources=elb_resources,
            conditions=(_own("Resource", cluster_name), _cluster_tag_unchanged()),
        ),
        Statement(
            sid="ManageOwn",
            actions=[
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                "elasticloadbalancing:SetIpAddressType",
                "elasticloadbalancing:SetSecurityGroups",
                "elasticloadbalancing:SetSubnets",
                "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets",
                "elasticloadbalancing:CreateListener",
                "elasticloadbalancing:DeleteListener",
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:ModifyListenerAttributes",
                "elasticloadbalancing:AddListenerCertificates",
                "elasticloadbalancing:RemoveListenerCertificates",
                "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:DeleteRule",
                "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:ModifyCapacityReservation",
                "elasticloadbalancing:ModifyIpPools",
            ],
            resources=elb_resources,
            conditions=(_own("Resource", cluster_name),),
        ),
        # SetRulePriorities takes no condition keys (Service Authorization Reference, ELBv2):
        # scoped to rules of this region and account.
        Statement(sid="RulePriorities", actions=["elasticloadbalancing:SetRulePriorities"], resources=rules),
    ]


class LoadBalancerControllerIam(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        cluster_name: str,
        cluster_arn: str,
        cluster_tag_value: str,
        vpc_id: str,
        partition: str,
        region: str,
        account_id: str,
    ) -> None:
        """`cluster_name`, `cluster_arn`: references to the cluster (the association waits for
        it); `cluster_tag_value`: the literal cluster name the controller tags its resources
        with (the controller's clusterName)."""
        super().__init__(scope, id_)
        document = policy_document(
            self,
            "document",
            *controller_statements(
                partition=partition, region=region, account_id=account_id, cluster_name=cluster_tag_value, vpc_id=vpc_id
            ),
        )
        role = pod_identity_role(
            self,
            name=f"{project}-aws-load-balancer-controller",
            document=document,
            account_id=account_id,
            cluster_name=cluster_name,
            cluster_arn=cluster_arn,
            namespace=LBC_NAMESPACE,
            service_account=LBC_SERVICE_ACCOUNT,
        )
        self.role_arn = role.arn


def controller_values(*, cluster_name: str, region: str, vpc_id: str, tags: Mapping[str, str]) -> dict[str, Any]:
    # region and vpcId explicitly: IMDS hop limit 1 keeps pods off the instance metadata.
    return chart_values(
        "aws-load-balancer-controller",
        {
            "clusterName": cluster_name,
            "region": region,
            "vpcId": vpc_id,
            "serviceAccount": {"name": LBC_SERVICE_ACCOUNT},
            "nodeSelector": dict(SYSTEM_NODE_LABEL),
            # The project's tags on every ALB, target group and security group it creates
            # (Terraform's default tags never reach them).
            "defaultTags": dict(tags),
        },
    )


class LoadBalancerController(Construct):
    def __init__(
        self, scope: Construct, id_: str, *, cluster_name: str, region: str, vpc_id: str, tags: Mapping[str, str]
    ) -> None:
        super().__init__(scope, id_)
        self.release = Release(
            self,
            "release",
            name="aws-load-balancer-controller",
            namespace=LBC_NAMESPACE,
            repository=LBC_CHART_REPOSITORY,
            chart="aws-load-balancer-controller",
            version=LBC_CHART_VERSION,
            values=[to_yaml(controller_values(cluster_name=cluster_name, region=region, vpc_id=vpc_id, tags=tags))],
            wait=True,
        )
