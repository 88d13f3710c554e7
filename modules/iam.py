"""Structured IAM policy documents (no hand-written JSON strings)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_iam_policy_document import (
    DataAwsIamPolicyDocument,
    DataAwsIamPolicyDocumentStatement,
    DataAwsIamPolicyDocumentStatementCondition,
    DataAwsIamPolicyDocumentStatementPrincipals,
)
from cdktf_cdktf_provider_aws.eks_pod_identity_association import EksPodIdentityAssociation
from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct


@dataclass(frozen=True)
class Condition:
    test: str
    variable: str
    values: Sequence[str]


@dataclass(frozen=True)
class Principal:
    type: str
    identifiers: Sequence[str]


@dataclass(frozen=True)
class Statement:
    sid: str
    actions: Sequence[str]
    resources: Sequence[str] = ("*",)
    effect: str = "Allow"
    conditions: Sequence[Condition] = field(default_factory=tuple)
    principals: Sequence[Principal] = field(default_factory=tuple)


def policy_document(scope: Construct, id_: str, *statements: Statement) -> DataAwsIamPolicyDocument:
    """A `aws_iam_policy_document` data source built from typed statements."""
    rendered = [
        DataAwsIamPolicyDocumentStatement(
            sid=s.sid,
            effect=s.effect,
            actions=list(s.actions),
            resources=list(s.resources) or None,
            condition=[
                DataAwsIamPolicyDocumentStatementCondition(test=c.test, variable=c.variable, values=list(c.values))
                for c in s.conditions
            ]
            or None,
            principals=[
                DataAwsIamPolicyDocumentStatementPrincipals(type=p.type, identifiers=list(p.identifiers))
                for p in s.principals
            ]
            or None,
        )
        for s in statements
    ]
    return DataAwsIamPolicyDocument(scope, id_, statement=rendered)


def policy_json(*statements: Statement) -> str:
    """The same typed statements rendered as a literal policy JSON string, for documents
    whose ARNs are all known at synth time. Used for KMS key policies: there `Resource: "*"`
    means "this key", which generic IAM scanners misread when the document is an
    aws_iam_policy_document data source."""
    rendered = []
    for s in statements:
        block: dict[str, Any] = {"Sid": s.sid, "Effect": s.effect, "Action": list(s.actions)}
        if s.resources:
            block["Resource"] = list(s.resources)
        if s.principals:
            principals: dict[str, list[str]] = {}
            for p in s.principals:
                principals.setdefault(p.type, []).extend(p.identifiers)
            block["Principal"] = principals
        if s.conditions:
            conditions: dict[str, dict[str, list[str]]] = {}
            for c in s.conditions:
                conditions.setdefault(c.test, {})[c.variable] = list(c.values)
            block["Condition"] = conditions
        rendered.append(block)
    return json.dumps({"Version": "2012-10-17", "Statement": rendered}, sort_keys=True)


def assume_role_policy(
    scope: Construct, id_: str, *, service: str, pod_identity: bool = False
) -> DataAwsIamPolicyDocument:
    """Trust policy for an AWS service principal (EKS Pod Identity needs sts:TagSession too)."""
    actions = ["sts:AssumeRole", "sts:TagSession"] if pod_identity else ["sts:AssumeRole"]
    return policy_document(
        scope,
        id_,
        Statement(
            sid="Trust", actions=actions, resources=(), principals=(Principal(type="Service", identifiers=[service]),)
        ),
    )


def pod_identity_trust(
    scope: Construct, id_: str, *, account_id: str, cluster_arn: str, namespace: str, service_account: str
) -> DataAwsIamPolicyDocument:
    """Trust policy of a role for EKS Pod Identity, usable only by one service account of one
    namespace of one cluster of this account. EKS Pod Identity passes session tags with the
    request (EKS user guide, "Create an IAM role for EKS Pod Identity" and "Grant pods access
    to AWS resources based on tags"): eks-cluster-arn, kubernetes-namespace,
    kubernetes-service-account; both sts:AssumeRole and sts:TagSession carry aws:RequestTag
    (Service Authorization Reference, STS), so one statement holds them all, as in the
    guide's example. aws:SourceArn is left out: EKS does not document it for this principal,
    and users report it failing (awslabs/mountpoint-s3-csi-driver#781). Without these
    conditions any pod association in the account could assume the role."""
    return policy_document(
        scope,
        id_,
        Statement(
            sid="PodIdentity",
            actions=["sts:AssumeRole", "sts:TagSession"],
            resources=(),
            principals=(Principal(type="Service", identifiers=["pods.eks.amazonaws.com"]),),
            conditions=(
                Condition(test="StringEquals", variable="aws:SourceAccount", values=[account_id]),
                Condition(test="StringEquals", variable="aws:RequestTag/eks-cluster-arn", values=[cluster_arn]),
                Condition(test="StringEquals", variable="aws:RequestTag/kubernetes-namespace", values=[namespace]),
                Condition(
                    test="StringEquals", variable="aws:RequestTag/kubernetes-service-account", values=[service_account]
                ),
            ),
        ),
    )


def deny_insecure_transport(service: str, resources: Sequence[str]) -> Statement:
    """The resource-policy statement every bucket and queue here carries: no plain HTTP."""
    return Statement(
        sid="DenyInsecureTransport",
        effect="Deny",
        actions=[f"{service}:*"],
        resources=list(resources),
        principals=(Principal(type="*", identifiers=["*"]),),
        conditions=(Condition(test="Bool", variable="aws:SecureTransport", values=["false"]),),
    )


def pod_identity_role(
    scope: Construct,
    *,
    name: str,
    document: DataAwsIamPolicyDocument,
    account_id: str,
    cluster_name: str,
    cluster_arn: str,
    namespace: str,
    service_account: str,
) -> IamRole:
    """A role for one service account through EKS Pod Identity, in `scope`: its trust policy
    (pod_identity_trust), the role, a managed policy from `document`, the attachment and the
    association (children trust, role, policy, attach, pod_identity). `cluster_name` and
    `cluster_arn` are references to the cluster, so the association waits for it."""
    trust = pod_identity_trust(
        scope,
        "trust",
        account_id=account_id,
        cluster_arn=cluster_arn,
        namespace=namespace,
        service_account=service_account,
    )
    role = IamRole(scope, "role", name=name, assume_role_policy=trust.json)
    policy = IamPolicy(scope, "policy", name=name, policy=document.json)
    IamRolePolicyAttachment(scope, "attach", role=role.name, policy_arn=policy.arn)
    EksPodIdentityAssociation(
        scope,
        "pod_identity",
        cluster_name=cluster_name,
        namespace=namespace,
        service_account=service_account,
        role_arn=role.arn,
    )
    return role
