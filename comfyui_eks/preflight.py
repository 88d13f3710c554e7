"""Checks `comfyui-eks deploy` runs before it applies anything, one small function each.

Each check returns Findings: a problem (ok False) names what is wrong and the fix, on one
line; an ok finding is a note (what was found, or why the check had nothing to look at). A
deploy with any problem applies nothing (exit 1). Skip a check with --skip-preflight NAME.

Why these: each is a way a deploy fails late and expensively. Wrong credentials fail the first
plan (the provider pins the account) but only after synthesis and init; Terraform < 1.10 lacks
the S3-native state locking every backend uses; the workload stack's providers run `aws eks
get-token` (AWS CLI v2) and the health wait uses kubectl; a GPU quota below gpu.max_gpus leaves
Karpenter's NodeClaims failing with InsufficientInstanceCapacity-like errors only visible in
its logs; an image tag that was never pushed fails the workload plan (the digest lookup).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from comfyui_eks import _aws, _stacks
from comfyui_eks._aws import AWS_ERRORS

if TYPE_CHECKING:
    from core.config import Config

Json = dict[str, Any]
# name -> what it checks (--skip-preflight takes the names)
CHECKS: dict[str, str] = {
    "credentials": "AWS credentials of config.account_id",
    "terraform": "Terraform >= 1.10 on PATH",
    "kubectl": "kubectl on PATH",
    "aws-cli": "AWS CLI v2 on PATH",
    "gpu-quota": "EC2 GPU vCPU quotas for gpu.capacity_types cover gpu.max_gpus",
    "ecr-image": "comfyui.image_tag is in the ECR repository",
}
# Only a deploy of the workload stack needs these (GPU nodes, the image, its providers, the health wait).
WORKLOAD_CHECKS = frozenset({"kubectl", "aws-cli", "gpu-quota", "ecr-image"})
MIN_TERRAFORM = (1, 10, 0)
# EC2 vCPU quotas (Service Quotas, service code ec2), per instance family group and capacity type.
QUOTAS: dict[tuple[str, str], tuple[str, str]] = {
    ("G", "on-demand"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("G", "spot"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("P", "on-demand"): ("L-417A185B", "Running On-Demand P instances"),
    ("P", "spot"): ("L-7212CCBC", "All P Spot Instance Requests"),
}
AWS_CLI_INSTALL = "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
TERRAFORM_INSTALL = "https://developer.hashicorp.com/terraform/install"
KUBECTL_INSTALL = "https://kubernetes.io/docs/tasks/tools/"

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str] | None"]


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.check}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")

    def as_dict(self) -> Json:
        return asdict(self)


def run_tool(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a tool's version command; None when it is not installed."""
    try:
        return subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=60, check=False
        )
    except (FileNotFoundError, PermissionError):
        return None


# --- tools -------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def check_terraform(run: Runner = run_tool) -> Finding:
    """Terraform >= 1.10: the S3 backends lock with `use_lockfile` (S3-native locking)."""
    done = run(["terraform", "version", "-json"])
    if done is None:
        return Finding(
            "terraform", False, "terraform is not on PATH", f"install Terraform >= 1.10 ({TERRAFORM_INSTALL})"
        )
    try:
        text = str(json.loads(done.stdout).get("terraform_version", ""))
    except (json.JSONDecodeError, AttributeError):
        text = done.stdout  # before 0.13 there was no -json: "Terraform v0.12.31"
    version = parse_version(text)
    if version is None:
        return Finding(
            "terraform",
            False,
            "cannot tell the Terraform version from `terraform version -json`",
            f"install Terraform >= 1.10 ({TERRAFORM_INSTALL})",
        )
    shown = ".".join(map(str, version))
    if version < MIN_TERRAFORM:
        return Finding(
            "terraform",
            False,
            f"Terraform {shown} is older than 1.10 (the S3 backends use S3-native state locking)",
            f"install Terraform >= 1.10 ({TERRAFORM_INSTALL})",
        )
    return Finding("terraform", True, f"Terraform {shown}")


def check_kubectl(which: Callable[[str], str | None] = shutil.which) -> Finding:
    """kubectl: the health wait and `status` read the cluster with it."""
    path = which("kubectl")
    if path is None:
        return Finding(
            "kubectl",
            False,
            "kubectl is not on PATH (deploy waits for ComfyUI with it)",
            f"install kubectl ({KUBECTL_INSTALL})",
        )
    return Finding("kubectl", True, f"kubectl at {path}")


def check_aws_cli(run: Runner = run_tool) -> Finding:
    """AWS CLI v2: the workload stack's helm and kubernetes providers run `aws eks get-token`."""
    done = run(["aws", "--version"])
    fix = f"install AWS CLI v2 ({AWS_CLI_INSTALL}) and put it first on PATH"
    if done is None:
        return Finding(
            "aws-cli", False, "the aws CLI is not on PATH (the workload stack's providers run `aws eks get-token`)", fix
        )
    text = f"{done.stdout} {done.stderr}"  # v1 printed its version on stderr
    match = re.search(r"aws-cli/(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        return Finding("aws-cli", False, f"cannot tell the aws CLI version from {text.strip()[:80]!r}", fix)
    version = ".".join(match.groups())
    if int(match.group(1)) < 2:
        return Finding(
            "aws-cli",
            False,
            f"aws CLI {version} is v1; the workload stack's providers need v2 for `aws eks get-token`",
            fix,
        )
    return Finding("aws-cli", True, f"aws CLI {version}")


# --- AWS -----------------------------------------------------------------------------------


def check_credentials(config: Config, sts: Any) -> Finding:
    """Credentials exist and belong to config.account_id (the AWS provider refuses any other)."""
    try:
        identity = sts.get_caller_identity()
    except AWS_ERRORS as exc:  # NoCredentialsError, an expired token, no endpoint
        kind = type(exc).__name__
        if kind in ("NoCredentialsError", "PartialCredentialsError"):
            message = "no AWS credentials found"
        else:
            message = f"AWS credentials do not work ({_aws.error_message(exc)[:160]})"
        return Finding(
            "credentials",
            False,
            message,
            f"sign in to account {config.account_id} (aws sso login, AWS_PROFILE, or environment credentials)",
        )
    account = str(identity.get("Account", ""))
    if account != config.account_id:
        return Finding(
            "credentials",
            False,
            f"the credentials are for account {account} ({identity.get('Arn', '?')}), "
            f"config.account_id is {config.account_id}",
            f"use credentials of account {config.account_id} (AWS_PROFILE), or correct account_id in the configuration",
        )
    return Finding("credentials", True, f"account {account} as {identity.get('Arn', '?')}")


@dataclass(frozen=True)
class GpuType:
    name: str
    vcpus: int
    gpus: int

    @property
    def group(self) -> str:
        """The quota group: P families (p4d, p5, ...) have their own quotas; g* are 'G and VT'."""
        return "P" if self.name.startswith("p") else "G"

    @property
    def vcpus_per_gpu(self) -> float:
        return self.vcpus / self.gpus


def describe_gpu_types(ec2: Any, names: Iterable[str]) -> tuple[list[GpuType], list[str]]:
    """vCPUs and GPUs of each type from EC2 (never a table that ages), and the names EC2 does not
    know in this region. EC2 refuses a whole request naming one unknown type, so on that error
    each type is asked for alone."""
    wanted = list(names)
    try:
        answers = [ec2.describe_instance_types(InstanceTypes=wanted)]
        missing: list[str] = []
    except AWS_ERRORS as exc:
        if _aws.error_code(exc) != "InvalidInstanceType":
            raise
        answers, missing = [], []
        for name in wanted:
            try:
                answers.append(ec2.describe_instance_types(InstanceTypes=[name]))
            except AWS_ERRORS as single:
                if _aws.error_code(single) != "InvalidInstanceType":
                    raise
                missing.append(name)
    found = []
    for answer in answers:
        for item in answer.get("InstanceTypes", []):
            gpus = sum(int(g.get("Count", 0)) for g in item.get("GpuInfo", {}).get("Gpus", []))
            vcpus = int(item.get("VCpuInfo", {}).get("DefaultVCpus", 0))
            found.append(GpuType(item["InstanceType"], vcpus, gpus))
    known = {t.name for t in found}
    missing += [name for name in wanted if name not in known and name not in missing]
    return sorted(found, key=lambda t: t.name), missing


def quota_value(quotas: Any, code: str) -> float:
    """The account's applied quota, or AWS's default when none was ever applied (Service
    Quotas answers NoSuchResourceException for those)."""
    try:
        answer = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)
    except AWS_ERRORS as exc:
        if _aws.error_code(exc) != "NoSuchResourceException":
            raise
        answer = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)
    return float(answer["Quota"]["Value"])


def check_gpu_quota(config: Config, ec2: Any, quotas: Any) -> list[Finding]:
    """Each configured capacity type's vCPU quotas must let Karpenter reach gpu.max_gpus with
    the listed type that needs the fewest vCPUs per GPU (the smallest): Karpenter may pick
    larger ones, so this is the floor below which max_gpus is unreachable, not a guarantee."""
    region = config.region
    try:
        types, missing = describe_gpu_types(ec2, config.gpu.instance_types)
    except AWS_ERRORS as exc:
        return [
            Finding(
                "gpu-quota",
                False,
                f"cannot describe the GPU instance types ({_aws.error_message(exc)[:160]})",
                "allow ec2:DescribeInstanceTypes, or --skip-preflight gpu-quota",
            )
        ]
    findings = [
        Finding(
            "gpu-quota",
            False,
            f"gpu.instance_types: {name} does not exist in {region}",
            f"remove it, or list types EC2 offers there (aws ec2 describe-instance-type-offerings --region {region})",
        )
        for name in missing
    ]
    types = [t for t in types if t.gpus > 0]
    if not types:
        return findings
    smallest = {
        group: min((t for t in types if t.group == group), key=lambda t: t.vcpus_per_gpu)
        for group in sorted({t.group for t in types})
    }
    max_gpus = config.gpu.max_gpus
    for capacity in config.gpu.capacity_types:
        reachable = 0
        parts = []
        for group, gpu_type in smallest.items():
            code, name = QUOTAS[(group, capacity)]
            try:
                value = quota_value(quotas, code)
            except AWS_ERRORS as exc:
                findings.append(
                    Finding(
                        "gpu-quota",
                        False,
                        f"{capacity}: cannot read quota {code} ({_aws.error_message(exc)[:120]})",
                        "allow servicequotas:GetServiceQuota, or --skip-preflight gpu-quota",
                    )
                )
                break
            reachable += math.floor(value / gpu_type.vcpus_per_gpu)
            parts.append((code, name, value, gpu_type))
        else:
            findings.append(_quota_finding(capacity, parts, reachable, max_gpus, region))
    return findings


def _quota_finding(
    capacity: str, parts: list[tuple[str, str, float, GpuType]], reachable: int, max_gpus: int, region: str
) -> Finding:
    described = "; ".join(
        f'{code} "{name}" is {value:g} vCPUs, {t.name} needs {t.vcpus_per_gpu:g} per GPU'
        for code, name, value, t in parts
    )
    if reachable >= max_gpus:
        return Finding(
            "gpu-quota", True, f"{capacity}: {described}: room for {reachable} GPUs (gpu.max_gpus {max_gpus})"
        )
    needed = ", ".join(f"{code} to {math.ceil(max_gpus * t.vcpus_per_gpu)} vCPUs" for code, _, _, t in parts)
    return Finding(
        "gpu-quota",
        False,
        f"{capacity}: {described}: room for {reachable} of gpu.max_gpus {max_gpus} GPUs",
        f"request an increase in Service Quotas (EC2, {region}): {needed}; or lower gpu.max_gpus to {reachable}"
        + (f", or drop {capacity} from gpu.capacity_types" if reachable == 0 else ""),
    )


def check_image(config: Config, ecr: Any) -> Finding:
    """comfyui.image_tag exists in the repository: the workload stack resolves it to a digest
    at plan time and fails there otherwise. No repository yet means the platform stack (which
    creates it) has not been deployed: nothing to check now."""
    repository = _stacks.repository_name(config)
    tag = config.comfyui.image_tag
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except AWS_ERRORS as exc:
        code = _aws.error_code(exc)
        if code == "RepositoryNotFoundException":
            return Finding(
                "ecr-image",
                True,
                f"repository {repository} does not exist yet (the platform stack creates it); "
                "the tag is checked again before the workload stack",
            )
        if code == "ImageNotFoundException":
            return Finding(
                "ecr-image",
                False,
                f"comfyui.image_tag {tag} is not in the ECR repository {repository}",
                f"push it: docker/build_and_push.sh --repository-url {_stacks.repository_url(config)}, "
                "and set comfyui.image_tag to the tag it prints",
            )
        return Finding(
            "ecr-image",
            False,
            f"cannot look up {repository}:{tag} ({_aws.error_message(exc)[:160]})",
            "allow ecr:DescribeImages, or --skip-preflight ecr-image",
        )
    return Finding("ecr-image", True, f"{repository}:{tag} is pushed")


def image_missing(config: Config) -> Finding | None:
    """The gate before the workload stack: a problem when the tag is not pushed (or the
    repository is still missing), else None."""
    finding = check_image(config, _aws.client("ecr", config.region))
    if finding.ok and "does not exist" in finding.message:
        return Finding(
            "ecr-image",
            False,
            f"the ECR repository {_stacks.repository_name(config)} does not exist, "
            f"so comfyui.image_tag {config.comfyui.image_tag} cannot be in it",
            "deploy the platform stack first (comfyui-eks deploy --stacks state,platform), "
            "push the image, then deploy again",
        )
    return None if finding.ok else finding


# --- all of them ---------------------------------------------------------------------------


def run_checks(config: Config, cycles: Iterable[str], skip: Iterable[str] = ()) -> list[Finding]:
    """The checks that matter for the stacks being deployed, minus the skipped ones. AWS API
    checks need working credentials of the right account: after a credentials problem they
    are reported as not run rather than failing confusingly."""
    skipped = set(skip)
    deploying_workload = "workload" in set(cycles)
    wanted = [name for name in CHECKS if name not in skipped and (deploying_workload or name not in WORKLOAD_CHECKS)]
    findings: list[Finding] = []
    credentials_ok = True
    for name in wanted:
        if name == "credentials":
            finding = check_credentials(config, _aws.client("sts", config.region))
            credentials_ok = finding.ok
            findings.append(finding)
        elif name == "terraform":
            findings.append(check_terraform())
        elif name == "kubectl":
            findings.append(check_kubectl())
        elif name == "aws-cli":
            findings.append(check_aws_cli())
        elif not credentials_ok:
            findings.append(Finding(name, True, "not checked: needs working credentials of config.account_id"))
        elif name == "gpu-quota":
            findings += check_gpu_quota(
                config, _aws.client("ec2", config.region), _aws.client("service-quotas", config.region)
            )
        elif name == "ecr-image":
            findings.append(check_image(config, _aws.client("ecr", config.region)))
    return findings
