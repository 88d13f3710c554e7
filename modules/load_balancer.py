"""AWS Load Balancer Controller: IAM (EKS Pod Identity) in the platform stack, the chart in
the workload stack. It turns the ComfyUI Ingress into an ALB.

The policy is the controller's own `docs/install/iam_policy.json` at v2.17.0
(kubernetes-sigs/aws-load-balancer-controller), rebuilt from typed statements with the
partition taken from the config instead of a hard-coded `arn:aws`, and one deliberate
tightening: every write action that upstream grants on `Resource: "*"` is scoped to the ARN
types it acts on (security groups, load balancers, listeners, rules, target groups), and the
WAF/Shield *write* actions (waf(v2) Associate/Disassociate, elasticloadbalancing:SetWebAcl,
shield Create/DeleteProtection) are left out: this product does not attach WAF or Shield to
the ALB (its WAF is on CloudFront), and the controller's WAF/Shield features are switched off
in helm_values/aws-load-balancer-controller.yaml. Reads stay (the controller still inspects).
"""

from __future__ import annotations

from typing import Any, Mapping

from constructs import Construct
from cdktf_cdktf_provider_aws.eks_pod_identity_association import EksPodIdentityAssociation
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from cdktf_cdktf_provider_helm.release import Release

from modules.cluster import SYSTEM_NODE_LABEL
from modules.helm import chart_values, to_yaml
from modules.iam import Condition, Statement, assume_role_policy, policy_document

LBC_CHART_REPOSITORY = "https://aws.github.io/eks-charts"
LBC_CHART_VERSION = "1.17.0"  # controller v2.17.0
LBC_NAMESPACE = "kube-system"
LBC_SERVICE_ACCOUNT = "aws-load-balancer-controller"
_CLUSTER_TAG = "elbv2.k8s.aws/cluster"


def _tag_present(kind: str) -> Condition:
    """`aws:<kind>Tag/elbv2.k8s.aws/cluster` is set (Null=false) or absent (Null=true)."""
    return Condition(test="Null", variable=f"aws:{kind}Tag/{_CLUSTER_TAG}", values=["false"])


def _tag_absent(kind: str) -> Condition:
    return Condition(test="Null", variable=f"aws:{kind}Tag/{_CLUSTER_TAG}", values=["true"])


def controller_statements(partition: str) -> list[Statement]:
    elb = f"arn:{partition}:elasticloadbalancing:*:*"
    tg_and_lb = [f"{elb}:targetgroup/*/*", f"{elb}:loadbalancer/net/*/*", f"{elb}:loadbalancer/app/*/*"]
    load_balancers = [f"{elb}:loadbalancer/net/*/*", f"{elb}:loadbalancer/app/*/*"]
    listeners = [f"{elb}:listener/net/*/*/*", f"{elb}:listener/app/*/*/*"]
    rules = [f"{elb}:listener-rule/net/*/*/*", f"{elb}:listener-rule/app/*/*/*"]
    security_groups = [f"arn:{partition}:ec2:*:*:security-group/*"]
    return [
        Statement(
            sid="CreateServiceLinkedRole",
            actions=["iam:CreateServiceLinkedRole"],
            resources=[
                f"arn:{partition}:iam::*:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
                "AWSServiceRoleForElasticLoadBalancing"
            ],
            conditions=(Condition(test="StringEquals", variable="iam:AWSServiceName", values=["elasticloadbalancing.amazonaws.com"]),),
        ),
        Statement(
            sid="Describe",
            actions=[
                "ec2:DescribeAccountAttributes", "ec2:DescribeAddresses", "ec2:DescribeAvailabilityZones",
                "ec2:DescribeInternetGateways", "ec2:DescribeVpcs", "ec2:DescribeVpcPeeringConnections",
                "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstances",
                "ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "ec2:DescribeCoipPools",
                "ec2:DescribeIpamPools", "ec2:DescribeRouteTables",
                "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeListenerCertificates",
                "elasticloadbalancing:DescribeSSLPolicies", "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTags",
                "elasticloadbalancing:DescribeTrustStores", "elasticloadbalancing:DescribeListenerAttributes",
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
                "cognito-idp:DescribeUserPoolClient", "acm:DescribeCertificate", "iam:GetServerCertificate",
                "waf-regional:GetWebACL", "waf-regional:GetWebACLForResource", "wafv2:GetWebACL",
                "wafv2:GetWebACLForResource", "shield:DescribeProtection", "ec2:GetCoipPoolUsage",
                "ec2:GetSecurityGroupsForVpc",
            ],
            resources=[
                f"arn:{partition}:cognito-idp:*:*:userpool/*",
                f"arn:{partition}:acm:*:*:certificate/*",
                f"arn:{partition}:iam::*:server-certificate/*",
                f"{elb}:loadbalancer/app/*/*",
                f"arn:{partition}:waf-regional:*:*:webacl/*",
                f"arn:{partition}:wafv2:*:*:regional/webacl/*/*",
                f"arn:{partition}:shield::*:protection/*",
                f"arn:{partition}:ec2:*:*:coip-pool/*",
                f"arn:{partition}:ec2:*:*:vpc/*",
                *security_groups,
            ],
        ),
        Statement(
            sid="SecurityGroupRules",
            actions=["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
            resources=[*security_groups, f"arn:{partition}:ec2:*:*:security-group-rule/*"],
        ),
        Statement(
            sid="CreateSecurityGroup",
            actions=["ec2:CreateSecurityGroup"],
            resources=[*security_groups, f"arn:{partition}:ec2:*:*:vpc/*"],
        ),
        Statement(
            sid="TagNewSecurityGroup",
            actions=["ec2:CreateTags"],
            resources=[f"arn:{partition}:ec2:*:*:security-group/*"],
            conditions=(
                Condition(test="StringEquals", variable="ec2:CreateAction", values=["CreateSecurityGroup"]),
                _tag_present("Request"),
            ),
        ),
        Statement(
            sid="TagOwnSecurityGroup",
            actions=["ec2:CreateTags", "ec2:DeleteTags"],
            resources=[f"arn:{partition}:ec2:*:*:security-group/*"],
            conditions=(_tag_absent("Request"), _tag_present("Resource")),
        ),
        Statement(
            sid="ManageOwnSecurityGroup",
            actions=["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            resources=security_groups,
            conditions=(_tag_present("Resource"),),
        ),
        Statement(
            sid="CreateTaggedLoadBalancer",
            actions=["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
            resources=tg_and_lb,
            conditions=(_tag_present("Request"),),
        ),
        Statement(
            sid="Listeners",
            actions=[
                "elasticloadbalancing:CreateListener", "elasticloadbalancing:DeleteListener",
                "elasticloadbalancing:CreateRule", "elasticloadbalancing:DeleteRule",
            ],
            resources=[*load_balancers, *listeners, *rules, f"{elb}:targetgroup/*/*"],
        ),
        Statement(
            sid="TagOwnLoadBalancer",
            actions=["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            resources=tg_and_lb,
            conditions=(_tag_absent("Request"), _tag_present("Resource")),
        ),
        Statement(
            sid="TagListeners",
            actions=["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            resources=[
                f"{elb}:listener/net/*/*/*", f"{elb}:listener/app/*/*/*",
                f"{elb}:listener-rule/net/*/*/*", f"{elb}:listener-rule/app/*/*/*",
            ],
        ),
        Statement(
            sid="ModifyOwnLoadBalancer",
            actions=[
                "elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType",
                "elasticloadbalancing:SetSecurityGroups", "elasticloadbalancing:SetSubnets",
                "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes", "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:ModifyListenerAttributes", "elasticloadbalancing:ModifyCapacityReservation",
                "elasticloadbalancing:ModifyIpPools",
            ],
            resources=[*tg_and_lb, *listeners],
            conditions=(_tag_present("Resource"),),
        ),
        Statement(
            sid="TagOnCreate",
            actions=["elasticloadbalancing:AddTags"],
            resources=tg_and_lb,
            conditions=(
                Condition(
                    test="StringEquals",
                    variable="elasticloadbalancing:CreateAction",
                    values=["CreateTargetGroup", "CreateLoadBalancer"],
                ),
                _tag_present("Request"),
            ),
        ),
        Statement(
            sid="RegisterTargets",
            actions=["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
            resources=[f"{elb}:targetgroup/*/*"],
        ),
        Statement(
            sid="ModifyListenersAndRules",
            actions=[
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:AddListenerCertificates", "elasticloadbalancing:RemoveListenerCertificates",
                "elasticloadbalancing:ModifyRule", "elasticloadbalancing:SetRulePriorities",
            ],
            resources=[*load_balancers, *listeners, *rules],
        ),
    ]


class LoadBalancerControllerIam(Construct):
    def __init__(self, scope: Construct, id_: str, *, project: str, cluster_name: str, partition: str) -> None:
        super().__init__(scope, id_)
        document = policy_document(self, "document", *controller_statements(partition))
        trust = assume_role_policy(self, "trust", service="pods.eks.amazonaws.com", pod_identity=True)
        role = IamRole(self, "role", name=f"{project}-aws-load-balancer-controller", assume_role_policy=trust.json)
        policy = IamPolicy(self, "policy", name=f"{project}-aws-load-balancer-controller", policy=document.json)
        IamRolePolicyAttachment(self, "attach", role=role.name, policy_arn=policy.arn)
        EksPodIdentityAssociation(
            self,
            "pod_identity",
            cluster_name=cluster_name,
            namespace=LBC_NAMESPACE,
            service_account=LBC_SERVICE_ACCOUNT,
            role_arn=role.arn,
        )
        self.load_balancer_controller_role_arn = role.arn


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
