"""AWS resources no Terraform state holds, removed by `destroy`.

Controllers create resources from inside the cluster: Karpenter launches the GPU instances
(and their launch templates), the AWS Load Balancer Controller creates the ALBs, their
listeners, target groups and security groups. The workload stack's destroy normally makes
the controllers delete them (Ingress finalizers, NodePool drain), but anything left behind
(an uninstalled controller, a timed-out drain) keeps the VPC's subnets and security groups
busy, and the platform stack's destroy fails after an hour of retries on the VPC. So destroy
removes them, by the tags the controllers set, between the workload and platform stacks.

Also here: emptying buckets (every object version and delete marker) and ECR repositories for
destroy --delete-data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from comfyui_eks._aws import AWS_ERRORS, error_code, error_message
from comfyui_eks.cli import CommandFailed

T = TypeVar("T")
Note = Callable[[str], None]
KARPENTER_NODEPOOL_TAG = "karpenter.sh/nodepool"
KARPENTER_CLUSTER_TAG = "karpenter.k8s.aws/cluster"  # on its launch templates
LBC_CLUSTER_TAG = "elbv2.k8s.aws/cluster"
_LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
S3_BATCH = 1000  # DeleteObjects takes at most 1000 keys
ECR_BATCH = 100  # BatchDeleteImage takes at most 100 image IDs
ELB_TAG_BATCH = 20  # DescribeTags takes at most 20 ARNs


@dataclass
class Pace:
    """How long to wait for AWS and how often to look (tests make it instant)."""

    interval: float = 10.0
    timeout: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class Removed:
    """What the clean-up removed, by kind (the report lists it)."""

    instances: list[str] = field(default_factory=list)
    load_balancers: list[str] = field(default_factory=list)
    target_groups: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    launch_templates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "instances": self.instances,
            "load_balancers": self.load_balancers,
            "target_groups": self.target_groups,
            "security_groups": self.security_groups,
            "launch_templates": self.launch_templates,
        }

    def lines(self) -> list[str]:
        return [f"removed {len(items)} {_KINDS[kind]}" for kind, items in self.as_dict().items() if items]


_KINDS = {
    "instances": "GPU instance(s)",
    "load_balancers": "load balancer(s)",
    "target_groups": "target group(s)",
    "security_groups": "security group(s)",
    "launch_templates": "launch template(s)",
}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _until(pace: Pace, what: str, done: Callable[[], bool], fix: str) -> None:
    """Poll `done` every pace.interval until it holds; CommandFailed after pace.timeout."""
    deadline = pace.clock() + pace.timeout
    while not done():
        if pace.clock() >= deadline:
            raise CommandFailed(f"{what} after {pace.timeout / 60:g} min", f"fix: {fix}")
        pace.sleep(pace.interval)


# --- Karpenter ---------------------------------------------------------------------------


def gpu_instances(ec2: Any, cluster: str, cluster_tag_key: str) -> list[str]:
    """Instances Karpenter launched for this cluster's GPU pool, not yet terminated."""
    filters = [
        {"Name": "tag-key", "Values": [KARPENTER_NODEPOOL_TAG]},
        {"Name": f"tag:{cluster_tag_key}", "Values": [cluster]},
        {"Name": "instance-state-name", "Values": list(_LIVE_STATES)},
    ]
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            found += [i["InstanceId"] for i in reservation.get("Instances", [])]
    return sorted(found)


def terminate_gpu_instances(ec2: Any, cluster: str, cluster_tag_key: str, pace: Pace, note: Note) -> list[str]:
    """Terminate the pool's leftover instances and wait until they are gone (their ENIs and
    security group attachments keep the VPC from being destroyed until then)."""
    leftovers = gpu_instances(ec2, cluster, cluster_tag_key)
    if not leftovers:
        return []
    note(f"terminating {len(leftovers)} GPU instance(s) Karpenter left running: {', '.join(leftovers)}")
    for batch in chunks(leftovers, 500):
        ec2.terminate_instances(InstanceIds=list(batch))
    _until(
        pace,
        f"GPU instances of {cluster} still not terminated",
        lambda: not gpu_instances(ec2, cluster, cluster_tag_key),
        "check them in the EC2 console (termination protection?), then run comfyui-eks destroy again",
    )
    return leftovers


def delete_launch_templates(ec2: Any, cluster: str) -> list[str]:
    """Karpenter's launch templates for this cluster (harmless, but left behind otherwise)."""
    filters = [{"Name": f"tag:{KARPENTER_CLUSTER_TAG}", "Values": [cluster]}]
    removed = []
    for page in ec2.get_paginator("describe_launch_templates").paginate(Filters=filters):
        for template in page.get("LaunchTemplates", []):
            ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
            removed.append(template["LaunchTemplateName"])
    return removed


# --- AWS Load Balancer Controller --------------------------------------------------------


def _tagged(elbv2: Any, arns: Sequence[str], cluster: str) -> list[str]:
    matching = []
    for batch in chunks(list(arns), ELB_TAG_BATCH):
        for description in elbv2.describe_tags(ResourceArns=list(batch)).get("TagDescriptions", []):
            tags = {t["Key"]: t.get("Value") for t in description.get("Tags", [])}
            if tags.get(LBC_CLUSTER_TAG) == cluster:
                matching.append(description["ResourceArn"])
    return sorted(matching)


def controller_load_balancers(elbv2: Any, cluster: str) -> list[str]:
    arns = [
        lb["LoadBalancerArn"]
        for page in elbv2.get_paginator("describe_load_balancers").paginate()
        for lb in page.get("LoadBalancers", [])
    ]
    return _tagged(elbv2, arns, cluster)


def controller_target_groups(elbv2: Any, cluster: str) -> list[str]:
    arns = [
        tg["TargetGroupArn"]
        for page in elbv2.get_paginator("describe_target_groups").paginate()
        for tg in page.get("TargetGroups", [])
    ]
    return _tagged(elbv2, arns, cluster)


def _load_balancer_gone(elbv2: Any, arn: str) -> bool:
    try:
        elbv2.describe_load_balancers(LoadBalancerArns=[arn])
    except AWS_ERRORS as exc:
        if error_code(exc) == "LoadBalancerNotFound":
            return True
        raise
    return False


def delete_load_balancers(elbv2: Any, arns: Sequence[str], pace: Pace) -> None:
    """Listeners first (they reference the target groups), then the load balancers; wait
    until AWS no longer lists them."""
    for arn in arns:
        for page in elbv2.get_paginator("describe_listeners").paginate(LoadBalancerArn=arn):
            for listener in page.get("Listeners", []):
                elbv2.delete_listener(ListenerArn=listener["ListenerArn"])
        elbv2.delete_load_balancer(LoadBalancerArn=arn)
    _until(
        pace,
        "load balancers still listed",
        lambda: all(_load_balancer_gone(elbv2, arn) for arn in arns),
        "check the EC2 console (deletion protection?), then run comfyui-eks destroy again",
    )


def _retry_in_use(pace: Pace, what: str, codes: Iterable[str], action: Callable[[], None], fix: str) -> None:
    """Run `action`, retrying while AWS says the resource is still in use."""
    deadline = pace.clock() + pace.timeout
    codes = tuple(codes)
    while True:
        try:
            action()
            return
        except AWS_ERRORS as exc:
            if error_code(exc) not in codes:
                raise
            if pace.clock() >= deadline:
                raise CommandFailed(
                    f"{what}: still in use after {pace.timeout / 60:g} min ({error_message(exc)})", f"fix: {fix}"
                ) from None
        pace.sleep(pace.interval)


def delete_target_groups(elbv2: Any, arns: Sequence[str], pace: Pace) -> None:
    for arn in arns:
        _retry_in_use(
            pace,
            f"target group {arn}",
            ("ResourceInUse",),
            partial(elbv2.delete_target_group, TargetGroupArn=arn),
            "run comfyui-eks destroy again in a few minutes",
        )


def controller_security_groups(ec2: Any, cluster: str) -> list[str]:
    filters = [{"Name": f"tag:{LBC_CLUSTER_TAG}", "Values": [cluster]}]
    return sorted(
        group["GroupId"]
        for page in ec2.get_paginator("describe_security_groups").paginate(Filters=filters)
        for group in page.get("SecurityGroups", [])
    )


def revoke_references(ec2: Any, group_id: str) -> int:
    """Remove rules of other security groups that admit traffic from `group_id` (the controller
    adds one to the node security group for its backend group): a referenced group cannot be
    deleted."""
    revoked = 0
    for direction, prefix in (("ingress", "ip-permission"), ("egress", "egress.ip-permission")):
        filters = [{"Name": f"{prefix}.group-id", "Values": [group_id]}]
        referencing = [g["GroupId"] for g in ec2.describe_security_groups(Filters=filters).get("SecurityGroups", [])]
        for other in referencing:
            if other == group_id:
                continue
            rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [other]}])
            ids = [
                rule["SecurityGroupRuleId"]
                for rule in rules.get("SecurityGroupRules", [])
                if rule.get("ReferencedGroupInfo", {}).get("GroupId") == group_id
                and rule.get("IsEgress", False) == (direction == "egress")
            ]
            if ids:
                revoke = (
                    ec2.revoke_security_group_egress if direction == "egress" else ec2.revoke_security_group_ingress
                )
                revoke(GroupId=other, SecurityGroupRuleIds=ids)
                revoked += len(ids)
    return revoked


def delete_security_groups(ec2: Any, group_ids: Sequence[str], pace: Pace) -> None:
    """Delete, retrying while the network interfaces of deleted load balancers linger (AWS
    releases them minutes after the load balancer is gone)."""
    for group_id in group_ids:
        revoke_references(ec2, group_id)
    for group_id in group_ids:
        _retry_in_use(
            pace,
            f"security group {group_id}",
            ("DependencyViolation", "InvalidGroup.InUse"),
            partial(ec2.delete_security_group, GroupId=group_id),
            "its network interfaces are still attached; run comfyui-eks destroy again in a few minutes",
        )


def remove_controller_leftovers(
    *, ec2: Any, elbv2: Any, cluster: str, cluster_tag_key: str, pace: Pace, note: Note
) -> Removed:
    """Everything Karpenter and the load balancer controller left for this cluster: GPU
    instances (waited for), then load balancers, target groups, security groups, launch
    templates. Resources of other clusters, or without the controllers' tags, are never touched."""
    removed = Removed()
    removed.instances = terminate_gpu_instances(ec2, cluster, cluster_tag_key, pace, note)
    removed.load_balancers = controller_load_balancers(elbv2, cluster)
    if removed.load_balancers:
        note(f"deleting {len(removed.load_balancers)} load balancer(s) the controller left")
        delete_load_balancers(elbv2, removed.load_balancers, pace)
    removed.target_groups = controller_target_groups(elbv2, cluster)
    delete_target_groups(elbv2, removed.target_groups, pace)
    removed.security_groups = controller_security_groups(ec2, cluster)
    if removed.security_groups:
        note(f"deleting {len(removed.security_groups)} security group(s) of the load balancer controller")
        delete_security_groups(ec2, removed.security_groups, pace)
    removed.launch_templates = delete_launch_templates(ec2, cluster)
    return removed


# --- data ----------------------------------------------------------------------------------


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker (a versioned bucket is only empty then),
    in batches of 1000; 0 when the bucket does not exist."""
    deleted = 0
    batch: list[dict[str, str]] = []

    def flush() -> None:
        nonlocal deleted, batch
        if not batch:
            return
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = answer.get("Errors", [])
        if errors:
            first = errors[0]
            raise CommandFailed(
                f"s3://{bucket}: {len(errors)} object version(s) not deleted, e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
                "fix: check the bucket policy and Object Lock settings, then run the command again",
            )
        deleted += len(batch)
        batch = []

    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
                if len(batch) == S3_BATCH:
                    flush()
        flush()
    except AWS_ERRORS as exc:
        if error_code(exc) == "NoSuchBucket":
            return deleted
        raise
    return deleted


def delete_images(ecr: Any, repository: str) -> int:
    """Delete every image of an ECR repository (destroy --delete-data); 0 when it is missing."""
    deleted = 0
    try:
        ids = [
            image
            for page in ecr.get_paginator("list_images").paginate(repositoryName=repository)
            for image in page.get("imageIds", [])
        ]
        for batch in chunks(ids, ECR_BATCH):
            ecr.batch_delete_image(repositoryName=repository, imageIds=list(batch))
            deleted += len(batch)
    except AWS_ERRORS as exc:
        if error_code(exc) == "RepositoryNotFoundException":
            return deleted
        raise
    return deleted


# --- what an earlier destroy kept --------------------------------------------------------
# Deleted in this order: buckets (their objects need the key), repositories and tables, then
# key aliases and keys. Their sub-resources (bucket policy, versioning, ...) go with them.
_KEPT_ORDER = ("aws_s3_bucket", "aws_ecr_repository", "aws_dynamodb_table", "aws_kms_alias", "aws_kms_key")
KMS_PENDING_DAYS = 30  # as the stacks' keys (deletion_window_in_days)


def _ignore(codes: tuple[str, ...], action: Callable[[], object]) -> bool:
    """Run `action`; False when AWS answers one of `codes` (already gone)."""
    try:
        action()
    except AWS_ERRORS as exc:
        if error_code(exc) in codes:
            return False
        raise
    return True


def delete_kept(items: Sequence[dict[str, Any]], client: Callable[[str], Any], note: Note) -> list[str]:
    """Delete what an earlier destroy kept (the record's entries), for destroy --delete-data.
    Cognito user pools stay (their deletion protection is lifted deliberately, by a person)."""
    deleted = []
    by_type = {rtype: [i for i in items if i.get("type") == rtype] for rtype in _KEPT_ORDER}
    for item in by_type["aws_s3_bucket"]:
        bucket = item["id"]
        count = empty_bucket(client("s3"), bucket)
        if _ignore(("NoSuchBucket",), partial(client("s3").delete_bucket, Bucket=bucket)):
            deleted.append(f"s3://{bucket} ({count} object versions)")
    for item in by_type["aws_ecr_repository"]:
        name = item["id"]
        if _ignore(
            ("RepositoryNotFoundException",), partial(client("ecr").delete_repository, repositoryName=name, force=True)
        ):
            deleted.append(f"ECR repository {name}")
    for item in by_type["aws_dynamodb_table"]:
        name = item["id"]
        dynamodb = client("dynamodb")
        _ignore(
            ("ResourceNotFoundException",),
            partial(dynamodb.update_table, TableName=name, DeletionProtectionEnabled=False),
        )
        if _ignore(("ResourceNotFoundException",), partial(dynamodb.delete_table, TableName=name)):
            deleted.append(f"DynamoDB table {name}")
    for item in by_type["aws_kms_alias"]:
        alias = item["id"]
        if _ignore(("NotFoundException",), partial(client("kms").delete_alias, AliasName=alias)):
            deleted.append(f"KMS alias {alias}")
    for item in by_type["aws_kms_key"]:
        key = item["id"]
        scheduled = _ignore(
            ("NotFoundException", "KMSInvalidStateException"),
            partial(client("kms").schedule_key_deletion, KeyId=key, PendingWindowInDays=KMS_PENDING_DAYS),
        )
        if scheduled:
            deleted.append(f"KMS key {key} (deletion scheduled in {KMS_PENDING_DAYS} days)")
    for item in items:
        if item.get("type") == "aws_cognito_user_pool":
            note(
                f"Cognito user pool {item['id']} stays: turn its deletion protection off and delete it in the Cognito "
                "console (or aws cognito-idp) when you mean to"
            )
    return deleted
