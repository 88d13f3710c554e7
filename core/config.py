"""The one validated, frozen configuration object, loaded at the edge (main.py, the CLI).

Constructs receive this object (or parts of it); none of them reads files or environment
variables. Every validation error names the key and the fix, on one line, echoing at most a
short excerpt of the offending value; `load_config` collects them all, so a user fixes a file
in one pass. Anything that goes wrong while reading the file (not UTF-8, broken or hostile
YAML, duplicate keys, absurd nesting or numbers) is a ConfigError too, never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from core import names, rules

try:  # libyaml's parser, which PyYAML's wheels include: ~10x faster than the pure-Python one
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
CONFIG_ENV_VAR = "COMFYUI_EKS_CONFIG"

_PROJECT = re.compile(r"[a-z][a-z0-9-]{1,18}[a-z0-9]", re.ASCII)
# 1.29+: the uploader is a native sidecar (restartPolicy Always init container, on by default
# from 1.29). <= 1.34: the newest Kubernetes Karpenter 1.8.8 supports (MaxK8sVersion).
_K8S_VERSION = re.compile(r"1\.(29|3[0-4])", re.ASCII)
# AWS reserves these name prefixes: SSM documents (aws, amazon, amzn), S3 buckets (sthree-,
# amzn-s3-demo-); the project prefixes both.
_RESERVED_PROJECT_PREFIXES = ("aws", "amazon", "amzn", "sthree")
_CONTROLLER_TAG_PREFIXES = (
    names.KEY_PREFIX,
    "karpenter.sh/",
    "karpenter.k8s.aws/",
    "kubernetes.io/cluster",
    "elbv2.k8s.aws/",
    "ingress.k8s.aws/",
)
# GPU instance families this product's AMI (AL2023 NVIDIA) and device plugin support.
# (x86_64 only: the ComfyUI image is built for linux/amd64, so Graviton g5g is excluded.)
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en")
# The EKS-optimized AL2023 AMI release the GPU nodes boot, pinned: `@latest` would roll every
# GPU node onto a new AMI whenever AWS publishes one (Karpenter drifts them). Move it
# deliberately: pick a release from https://github.com/awslabs/amazon-eks-ami/releases, set
# gpu.ami_alias, deploy the workload stack; Karpenter replaces the nodes as drift, within the
# disruption budget (README, "Upgrading the GPU AMI").
DEFAULT_GPU_AMI_ALIAS = "al2023@v20260714"
_AMI_ALIAS = re.compile(r"al2023@v(20[2-9][0-9])(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])", re.ASCII)
_ROLE_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov):iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}", re.ASCII)
_ACM_ARN = re.compile(r"arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]{1,64}", re.ASCII)
_SNS_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov):sns:([a-z0-9-]+):([0-9]{12}):[A-Za-z0-9_-]{1,256}", re.ASCII)
_DNS_NAME = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.ASCII)
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
# How much of an offending value an error line repeats.
_ECHO_LIMIT = 60
# YAML documents nested deeper than this are refused before they are parsed.
_MAX_DEPTH = 20


def show(value: Any) -> str:
    """A bounded, single-line repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= _ECHO_LIMIT else f"{text[:_ECHO_LIMIT]}...(truncated)"


class ConfigError(Exception):
    """Bad configuration: `errors` holds one line per problem, each naming key and fix."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# A YAML list, frozen into a tuple (the config is immutable all the way down).
Strings = Annotated[tuple[str, ...], BeforeValidator(_tuple)]


def _duration(*, minimum: int, maximum: int) -> BeforeValidator:
    """A Go duration string ("10m", "1h30m") between `minimum` and `maximum` seconds."""

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # strict mode reports the type
        seconds = rules.duration_seconds(value)
        if seconds is None:
            raise ValueError(f"{show(value)} is not a duration; fix: use h/m/s parts such as 10m, 1h30m or 720h")
        if not minimum <= seconds <= maximum:
            raise ValueError(f"{show(value)} is outside {minimum}s..{maximum}s; fix: choose a duration in that range")
        return value

    return BeforeValidator(check)


def _cidrs(values: tuple[str, ...], *, allow_everyone: bool = True) -> tuple[str, ...]:
    for cidr in values:
        if not re.fullmatch(r"[0-9./]{9,18}", cidr, re.ASCII):
            raise ValueError(f"invalid IPv4 CIDR {show(cidr)}; fix: use a network address such as 203.0.113.0/24")
        try:
            net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(
                f"invalid IPv4 CIDR {show(cidr)} ({exc}); fix: use a network address such as 203.0.113.0/24"
            ) from None
        if not allow_everyone and net.prefixlen < 8:
            raise ValueError(
                f"{cidr} opens this to (almost) everyone; fix: list the ranges of your VPN, offices or peered VPCs"
            )
    if len(set(values)) != len(values):
        raise ValueError("a range is listed twice; fix: list each range once")
    return values


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NetworkConfig(_Model):
    vpc_cidr: str = "10.42.0.0/16"
    az_count: Annotated[int, Field(ge=2, le=6)] = 3
    nat_mode: Literal["single", "per_az"] = "single"
    # The EKS API endpoint (IAM-authenticated either way). Empty: no public endpoint at all;
    # the API is reached privately from the VPC and api_private_cidrs (deploy the workload
    # stack from there, e.g. over your VPN or from a CI runner in the VPC). Otherwise: the
    # ranges (offices, VPN exits, CI runners) that may reach the public endpoint.
    api_public_cidrs: Strings = ()
    # Required to list 0.0.0.0/0 (or any range wider than /8) in api_public_cidrs.
    acknowledge_public_api: bool = False
    # Ranges besides the VPC that may reach the private endpoint (peered VPCs, VPN clients
    # that keep their own addresses): added to the cluster security group on port 443.
    api_private_cidrs: Strings = ()
    # Who may reach an internal ALB besides the VPC itself (auth.mode internal, or the API
    # endpoint of auth.internal_api_endpoint): the ranges of peered VPCs or of your VPN
    # (their clients keep their own source addresses).
    internal_alb_cidrs: Strings = ()

    @field_validator("api_public_cidrs")
    @classmethod
    def _public(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _cidrs(v)

    @field_validator("api_private_cidrs", "internal_alb_cidrs")
    @classmethod
    def _private(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _cidrs(v, allow_everyone=False)

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        _cidrs((v,))
        net = ipaddress.IPv4Network(v)
        if not 16 <= net.prefixlen <= 20:
            raise ValueError(
                f"prefix /{net.prefixlen} is outside /16../20; "
                "fix: use a /16 to /20 so every AZ gets room for GPU nodes"
            )
        if not net.is_private:
            raise ValueError(f"{v} is not a private (RFC 1918) range; fix: use e.g. 10.42.0.0/16")
        return v

    @model_validator(mode="after")
    def _exposure(self) -> NetworkConfig:
        if self.api_is_open_to_everyone and not self.acknowledge_public_api:
            raise ValueError(
                "api_public_cidrs opens the EKS API endpoint to (almost) the whole internet; fix: list only your "
                "offices', VPN's and CI's ranges, leave it empty for a private endpoint, or set "
                "acknowledge_public_api: true if you really mean it"
            )
        return self

    @property
    def api_is_open_to_everyone(self) -> bool:
        return any(ipaddress.IPv4Network(c).prefixlen < 8 for c in self.api_public_cidrs)


class SystemNodesConfig(_Model):
    instance_type: str = "m6i.large"
    min_size: Annotated[int, Field(ge=1, le=20)] = 2
    max_size: Annotated[int, Field(ge=1, le=20)] = 3
    desired_size: Annotated[int, Field(ge=1, le=20)] = 2

    @field_validator("instance_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not rules.INSTANCE_TYPE.fullmatch(v):
            raise ValueError(f"{show(v)} is not an EC2 instance type; fix: use e.g. m6i.large")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> SystemNodesConfig:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError("need min_size <= desired_size <= max_size; fix: adjust the three sizes")
        return self


class ClusterAccessConfig(_Model):
    # IAM roles given access to the cluster through EKS access entries, besides the identity
    # that creates it (which gets cluster-admin). Role ARNs, not assumed-role session ARNs.
    # viewer_role_arns: read everything, Secrets included (AmazonEKSAdminViewPolicy), which
    #   is what `terraform plan` of the workload stack needs (helm reads its release Secrets):
    #   list your CI plan role here.
    # admin_role_arns: cluster-admin (AmazonEKSClusterAdminPolicy), e.g. a deploy role.
    viewer_role_arns: Strings = ()
    admin_role_arns: Strings = ()

    @field_validator("viewer_role_arns", "admin_role_arns")
    @classmethod
    def _arns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for arn in v:
            if not _ROLE_ARN.fullmatch(arn):
                raise ValueError(
                    f"{show(arn)} is not an IAM role ARN; fix: use arn:aws:iam::<account>:role/<name> (for an "
                    "assumed-role session, the role it assumed)"
                )
        if len(set(v)) != len(v):
            raise ValueError("a role is listed twice; fix: list each role once")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> ClusterAccessConfig:
        both = sorted(set(self.viewer_role_arns) & set(self.admin_role_arns))
        if both:
            # EKS allows one access entry per principal.
            raise ValueError(f"{show(both[0])} is both viewer and admin; fix: list it once (admin can read too)")
        return self


class GpuConfig(_Model):
    instance_types: Strings = ("g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge")
    capacity_types: Annotated[tuple[Literal["spot", "on-demand"], ...], BeforeValidator(_tuple)] = ("spot", "on-demand")
    max_gpus: Annotated[int, Field(ge=1, le=1000)] = 8
    root_volume_gib: Annotated[int, Field(ge=50, le=2000)] = 100
    # Karpenter: how long an empty node lingers before it is removed.
    consolidate_after: Annotated[str, _duration(minimum=30, maximum=24 * 3600)] = "10m"
    # Karpenter: maximum node lifetime (fresh AMIs, no long-lived nodes).
    expire_after: Annotated[str, _duration(minimum=3600, maximum=90 * 24 * 3600)] = "720h"
    # A node whose model cache has not completed this long after boot powers itself off
    # (Karpenter replaces it) and reports a metric that raises the cache alarm.
    model_cache_deadline: Annotated[str, _duration(minimum=600, maximum=6 * 3600)] = "1h"
    # The EKS-optimized AL2023 AMI release, pinned (see DEFAULT_GPU_AMI_ALIAS).
    ami_alias: str = DEFAULT_GPU_AMI_ALIAS

    @field_validator("instance_types")
    @classmethod
    def _gpu_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("empty; fix: list at least one GPU instance type, e.g. g6.xlarge")
        for t in v:
            family = t.split(".", 1)[0]
            if not rules.INSTANCE_TYPE.fullmatch(t) or family not in GPU_FAMILIES:
                raise ValueError(
                    f"{show(t)} is not a GPU instance type; fix: use types of the families {', '.join(GPU_FAMILIES)}"
                )
        if len(set(v)) != len(v):
            raise ValueError("duplicate instance types; fix: list each type once")
        return v

    @field_validator("capacity_types")
    @classmethod
    def _caps(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list 'spot' and/or 'on-demand' once each; fix: e.g. [spot, on-demand]")
        return v

    @field_validator("ami_alias")
    @classmethod
    def _ami(cls, v: str) -> str:
        if not _AMI_ALIAS.fullmatch(v):
            raise ValueError(
                f"{show(v)} is not a pinned AL2023 AMI release; fix: use al2023@vYYYYMMDD with a release of "
                f"https://github.com/awslabs/amazon-eks-ami/releases (default {DEFAULT_GPU_AMI_ALIAS}), never @latest"
            )
        return v

    @property
    def model_cache_deadline_seconds(self) -> int:
        seconds = rules.duration_seconds(self.model_cache_deadline)
        assert seconds is not None  # validated
        return seconds


class BucketsConfig(_Model):
    models: str | None = None
    inputs: str | None = None
    outputs: str | None = None
    access_logs: str | None = None
    outputs_expiration_days: Annotated[int, Field(ge=1, le=3650)] = 30

    @field_validator("models", "inputs", "outputs", "access_logs")
    @classmethod
    def _s3_safe(cls, v: str | None) -> str | None:
        if v is not None and not rules.is_bucket_name(v):
            raise ValueError(
                f"{show(v)} is not an S3-safe bucket name; fix: 3-63 characters of a-z, 0-9, '-' and '.', "
                "starting and ending with a letter or digit (or remove the key to derive the name)"
            )
        return v


class ModelSyncConfig(_Model):
    # Only keys under these prefixes are models; other objects (notes, build artefacts)
    # neither trigger a sync nor reach a node. An empty list means the whole bucket. ComfyUI
    # itself only looks in the folders mapped in docker/extra_model_paths.yaml.
    prefixes: Strings = (
        "checkpoints/",
        "clip/",
        "clip_vision/",
        "controlnet/",
        "diffusion_models/",
        "embeddings/",
        "loras/",
        "text_encoders/",
        "unet/",
        "upscale_models/",
        "vae/",
    )
    # SQS -> Lambda batching window: a burst of uploads within it becomes one sync.
    batching_window_seconds: Annotated[int, Field(ge=0, le=300)] = 60

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not rules.is_model_prefix(p):
                raise ValueError(
                    f"{show(p)} is not a top-level folder prefix; fix: use letters, digits, '_', '.', '-' (not "
                    "starting with '.' or '-') and end with '/', e.g. checkpoints/"
                )
        duplicates = sorted({p for p in v if v.count(p) > 1})
        if duplicates:
            # S3 refuses two notification rules for the same prefix: the apply would fail.
            raise ValueError(f"{', '.join(duplicates)} listed more than once; fix: list each prefix once")
        return v


class ComfyUIConfig(_Model):
    image_tag: str = "v0.3.0"
    ecr_image_tag_mutability: Literal["IMMUTABLE", "MUTABLE"] = "IMMUTABLE"
    # The repository keeps this many images; the one image_tag names is never expired.
    ecr_keep_images: Annotated[int, Field(ge=1, le=1000)] = 20

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _IMAGE_TAG.fullmatch(v) or v == "latest":
            raise ValueError(
                f"{show(v)} is not a pinned image tag; fix: use the tag docker/build_and_push.sh printed (not 'latest')"
            )
        return v


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])", re.ASCII)


class ScheduleConfig(_Model):
    """Working hours: warm replicas for artists in the browser (KEDA cron trigger)."""

    # An IANA time zone such as Europe/Berlin or America/Los_Angeles.
    timezone: str = "UTC"
    days: Annotated[tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...], BeforeValidator(_tuple)] = (
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
    )
    start: str = "09:00"
    end: str = "17:00"
    warm_replicas: Annotated[int, Field(ge=1, le=100)] = 1

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}", v, re.ASCII):
                raise ZoneInfoNotFoundError(v)
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{show(v)} is not an IANA time zone; fix: e.g. Europe/Berlin, America/Los_Angeles or UTC"
            ) from None
        return v

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _CLOCK.fullmatch(v):
            raise ValueError(f"{show(v)} is not a time of day; fix: HH:MM in 24-hour form, e.g. 09:00")
        return v

    @model_validator(mode="after")
    def _window(self) -> ScheduleConfig:
        if not self.days or len(set(self.days)) != len(self.days):
            raise ValueError("days must list each day once; fix: e.g. [mon, tue, wed, thu, fri]")
        if self.start >= self.end:
            raise ValueError(
                f"start {self.start} is not before end {self.end}; fix: a window within one day (use two days' hours "
                "for a night shift is not supported: end after start)"
            )
        return self

    @property
    def hours_per_day(self) -> float:
        (h1, m1), (h2, m2) = (map(int, t.split(":")) for t in (self.start, self.end))
        return (h2 * 60 + m2 - h1 * 60 - m1) / 60


class ScalingConfig(_Model):
    # ComfyUI replicas (one GPU each) follow demand: the job queue's depth and, during the
    # schedule, warm replicas for artists. 0 = no GPU node at all outside the schedule with no jobs.
    min_replicas: Annotated[int, Field(ge=0, le=100)] = 0
    max_replicas: Annotated[int, Field(ge=1, le=100)] = 4
    # Jobs waiting or running per replica before KEDA adds one.
    jobs_per_replica: Annotated[int, Field(ge=1, le=100)] = 1
    # Seconds without jobs (and outside the schedule) before replicas scale back to min_replicas.
    cooldown_seconds: Annotated[int, Field(ge=60, le=86400)] = 900
    # Working hours with warm replicas; null: replicas only for jobs (and min_replicas).
    schedule: ScheduleConfig | None = ScheduleConfig()

    @model_validator(mode="after")
    def _bounds(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas is above max_replicas; fix: lower min_replicas or raise max_replicas")
        if self.schedule and self.schedule.warm_replicas > self.max_replicas:
            raise ValueError("schedule.warm_replicas is above max_replicas; fix: lower it or raise max_replicas")
        return self


class JobsConfig(_Model):
    # A job whose run fails this many times (lost pod or node, transient error) lands in the
    # dead-letter queue and is marked failed. A workflow ComfyUI rejects is never retried.
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # Job records (and their presigned output links' metadata) are kept this long.
    retention_days: Annotated[int, Field(ge=1, le=365)] = 30
    # A running job is given up (interrupted, failed) after this long.
    timeout_minutes: Annotated[int, Field(ge=1, le=720)] = 60


class AuthConfig(_Model):
    # internal: the ALB is internal (reachable from the VPC / VPN only), no auth on it.
    # cognito: internet-facing HTTPS ALB with a Cognito user pool login.
    # none: internet-facing without authentication; needs the acknowledgement below.
    mode: Literal["internal", "cognito", "none"] = "internal"
    domain: str | None = None
    certificate_arn: str | None = None
    acknowledge_public_unauthenticated: bool = False
    # With cognito: also an internal ALB without the login, for scripts and pipelines inside
    # the VPC (or network.internal_alb_cidrs). The Cognito ALB answers every request without
    # a session cookie with a redirect to the login page, so machine callers need this.
    internal_api_endpoint: bool = False

    @model_validator(mode="after")
    def _rules(self) -> AuthConfig:
        if self.internal_api_endpoint and self.mode != "cognito":
            raise ValueError(
                f"internal_api_endpoint applies only to mode 'cognito' (with mode {self.mode!r} the one ALB already "
                "takes API calls without a login); fix: remove internal_api_endpoint, or use mode: cognito"
            )
        if self.domain is not None and not _DNS_NAME.fullmatch(self.domain):
            raise ValueError(f"domain {show(self.domain)} is not a DNS name; fix: e.g. comfy.example.com (lower case)")
        if self.mode == "cognito" and (not self.domain or not self.certificate_arn):
            raise ValueError("mode 'cognito' needs domain and certificate_arn; fix: set both, or use mode: internal")
        if self.certificate_arn and not _ACM_ARN.fullmatch(self.certificate_arn):
            raise ValueError("certificate_arn is not an ACM certificate ARN; fix: copy it from the ACM console")
        if self.mode == "none" and not self.acknowledge_public_unauthenticated:
            raise ValueError(
                "mode 'none' exposes ComfyUI to the internet without authentication; fix: use mode: internal or "
                "cognito, or set acknowledge_public_unauthenticated: true if you really mean it"
            )
        return self


class EdgeConfig(_Model):
    # CloudFront in front of the (then internal) ALB, through a CloudFront VPC origin.
    cloudfront: bool = False
    # ACM certificate for auth.domain in us-east-1 (CloudFront only takes certificates there).
    certificate_arn: str | None = None
    price_class: Literal["PriceClass_100", "PriceClass_200", "PriceClass_All"] = "PriceClass_100"
    # CloudFront's default maximum without a quota increase is 60 s. ComfyUI's API answers
    # POST /prompt at once and streams progress over the websocket, so generations do not
    # hold an HTTP request open; raise it (up to 180) only after raising the quota.
    origin_read_timeout_seconds: Annotated[int, Field(ge=1, le=180)] = 60
    # WAF: requests per client IP per 5 minutes before it is blocked for a while. Every page
    # load of the ComfyUI web UI makes dozens, and a studio behind one NAT or VPN exit shares
    # one IP: raise it for large teams.
    rate_limit_per_5_min: Annotated[int, Field(ge=10, le=2_000_000_000)] = 2000

    @model_validator(mode="after")
    def _edge(self) -> EdgeConfig:
        if self.cloudfront:
            arn = self.certificate_arn or ""
            if not _ACM_ARN.fullmatch(arn) or arn.split(":")[3] != "us-east-1":
                raise ValueError(
                    "cloudfront needs certificate_arn, an ACM certificate in us-east-1 for auth.domain; "
                    "fix: request one in us-east-1 and set edge.certificate_arn"
                )
        return self


class AlarmsConfig(_Model):
    # SNS topic (same region and account) the alarms notify: a message in the model-sync
    # dead-letter queue, a GPU node whose model cache missed its deadline. None: the alarms
    # exist (visible in the CloudWatch console) but notify no one.
    sns_topic_arn: str | None = None


class DataProtectionConfig(_Model):
    # Terraform refuses any plan that would destroy the state bucket, the KMS keys of the
    # state and of the data, or the models, inputs and outputs buckets (prevent_destroy).
    # To destroy data deliberately: set false, re-synthesize, empty the buckets, destroy
    # (README, "Tear down").
    prevent_destroy: bool = True


class Config(_Model):
    project: str
    account_id: str
    region: str
    kubernetes_version: str = "1.34"
    network: NetworkConfig = NetworkConfig()
    system_nodes: SystemNodesConfig = SystemNodesConfig()
    cluster_access: ClusterAccessConfig = ClusterAccessConfig()
    gpu: GpuConfig = GpuConfig()
    buckets: BucketsConfig = BucketsConfig()
    model_sync: ModelSyncConfig = ModelSyncConfig()
    comfyui: ComfyUIConfig = ComfyUIConfig()
    auth: AuthConfig = AuthConfig()
    edge: EdgeConfig = EdgeConfig()
    scaling: ScalingConfig = ScalingConfig()
    jobs: JobsConfig = JobsConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    data_protection: DataProtectionConfig = DataProtectionConfig()
    tags: dict[str, str] = {}

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT.fullmatch(v) or "--" in v:
            raise ValueError(
                f"{show(v)} is not a valid project name; fix: 3-20 characters of a-z, 0-9 and '-', starting with a "
                "letter (it prefixes stack, cluster and bucket names)"
            )
        if v.startswith(_RESERVED_PROJECT_PREFIXES):
            raise ValueError(
                f"{show(v)} starts with a prefix AWS reserves ({', '.join(_RESERVED_PROJECT_PREFIXES)}) "
                "for SSM documents "
                "and S3 buckets, which the project prefixes; fix: choose another project name, e.g. studio-comfyui"
            )
        return v

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str) -> str:
        if not rules.ACCOUNT_ID.fullmatch(v):
            raise ValueError(
                f"{show(v)} is not an AWS account ID; "
                "fix: the 12 digits of `aws sts get-caller-identity`, quoted as a string"
            )
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not rules.is_region(v):
            raise ValueError(f"{show(v)} is not an AWS region; fix: use a region code such as us-west-2")
        return v

    @field_validator("kubernetes_version")
    @classmethod
    def _k8s(cls, v: str) -> str:
        if not _K8S_VERSION.fullmatch(v):
            raise ValueError(
                f'{show(v)} is not a supported Kubernetes version; fix: use "1.29" to "1.34" (quoted): native sidecars '
                "need 1.29, and Karpenter 1.8 supports up to 1.34"
            )
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > rules.MAX_USER_TAGS:
            raise ValueError(
                f"{len(v)} tags, but AWS allows 50 per resource and this product and its controllers add up to "
                f"{50 - rules.MAX_USER_TAGS}; fix: keep at most {rules.MAX_USER_TAGS} tags"
            )
        for k, value in v.items():
            if k.lower().startswith("aws:") or not 1 <= len(k) <= 128:
                raise ValueError(
                    f"tag key {show(k)} is reserved or too long; fix: use 1-128 characters not starting with 'aws:'"
                )
            # The tags also reach what Karpenter and the load balancer controller create (GPU
            # instances, ALBs), so their own keys and ours stay theirs: Karpenter's CRD refuses
            # them, and a user value could steer the SSM targeting tag.
            if k.startswith(_CONTROLLER_TAG_PREFIXES) or k == "eks:eks-cluster-name":
                raise ValueError(
                    f"tag key {show(k)} is set by this product or its controllers; fix: use a key outside "
                    f"{', '.join(_CONTROLLER_TAG_PREFIXES)} and eks:eks-cluster-name"
                )
            if not 1 <= len(value) <= 256:
                raise ValueError(
                    f"tag {show(k)} has an empty or too long value; "
                    "fix: give it 1-256 characters (Karpenter refuses empty values)"
                )
            for text in (k, value):
                if not rules.TAG_TEXT.fullmatch(text):
                    raise ValueError(
                        f"tag {show(k)}: {show(text)} has characters AWS does not allow in tags; fix: use letters, "
                        "digits, spaces and _ . : / = + - @"
                    )
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.edge.cloudfront and self.auth.mode == "internal":
            raise ValueError(
                "edge.cloudfront makes ComfyUI reachable from the internet, which auth.mode 'internal' forbids; "
                "fix: use auth.mode: cognito (with domain and certificate_arn), or turn cloudfront off"
            )
        if self.edge.cloudfront and not self.auth.domain:
            raise ValueError("edge.cloudfront needs auth.domain (the CloudFront alias); fix: set auth.domain")
        errors = []
        for key, arn, region in (
            ("auth.certificate_arn", self.auth.certificate_arn, self.region),
            ("edge.certificate_arn", self.edge.certificate_arn if self.edge.cloudfront else None, "us-east-1"),
        ):
            # An ALB only takes certificates from ACM in its own region and account; CloudFront
            # only from us-east-1 of its account. Anything else fails after apply, in the
            # controller's events (no ALB) or at CloudFront's creation.
            if arn and arn.split(":")[3:5] != [region, self.account_id]:
                errors.append(
                    f"{key} is in region {arn.split(':')[3]!r}, account {arn.split(':')[4]!r}; "
                    "it must be an ACM certificate "
                    f"in {region} of account {self.account_id}; fix: request or import the certificate there"
                )
        if self.auth.mode == "cognito" and re.search(r"aws|amazon|cognito", self.project):
            # The Cognito hosted domain prefix is <project>-<account>; Cognito refuses these words in it.
            errors.append(
                f"project {self.project!r} contains aws, amazon or cognito, which Cognito refuses in its domain prefix "
                "(<project>-<account_id>); fix: choose another project name for auth.mode cognito"
            )
        bucket_names = {
            "buckets.models": self.models_bucket,
            "buckets.inputs": self.inputs_bucket,
            "buckets.outputs": self.outputs_bucket,
            "buckets.access_logs": self.access_logs_bucket,
            "the state bucket": self.state_bucket,
        }
        seen: dict[str, str] = {}
        for key, bucket in bucket_names.items():
            if bucket in seen:
                errors.append(f"{key} and {seen[bucket]} are both {bucket!r}; fix: give every bucket its own name")
            seen.setdefault(bucket, key)
        for arn in (*self.cluster_access.viewer_role_arns, *self.cluster_access.admin_role_arns):
            if arn.split(":")[1] != self.partition:
                errors.append(
                    f"cluster_access: {show(arn)} is not in partition {self.partition!r} of {self.region}; "
                    "fix: use a role of that partition"
                )
        if self.scaling.max_replicas > self.gpu.max_gpus:
            # One GPU per replica: Karpenter would never launch the extra nodes.
            errors.append(
                f"scaling.max_replicas ({self.scaling.max_replicas}) is above gpu.max_gpus ({self.gpu.max_gpus}); "
                "fix: raise gpu.max_gpus or lower scaling.max_replicas"
            )
        topic = self.alarms.sns_topic_arn
        if topic is not None:
            match = _SNS_ARN.fullmatch(topic)
            if match is None:
                errors.append(
                    f"alarms.sns_topic_arn: {show(topic)} is not an SNS topic ARN; "
                    "fix: arn:aws:sns:<region>:<account>:<topic>"
                )
            elif (match.group(1), match.group(2), match.group(3)) != (self.partition, self.region, self.account_id):
                # CloudWatch alarms notify SNS topics of their own region (and this account, without extra policy).
                errors.append(
                    f"alarms.sns_topic_arn is in {match.group(2)}, account {match.group(3)}; fix: use a topic in "
                    f"{self.region} of account {self.account_id}"
                )
        if errors:
            raise ValueError("\n".join(errors))  # one output line each (see _format)
        return self

    # --- derived names (one place) -----------------------------------------------------
    def _bucket(self, kind: str, explicit: str | None) -> str:
        return explicit or f"{self.project}-{kind}-{self.account_id}-{self.region}"

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def cluster_name(self) -> str:
        return self.project

    @property
    def models_bucket(self) -> str:
        return self._bucket("models", self.buckets.models)

    @property
    def inputs_bucket(self) -> str:
        return self._bucket("inputs", self.buckets.inputs)

    @property
    def outputs_bucket(self) -> str:
        return self._bucket("outputs", self.buckets.outputs)

    @property
    def access_logs_bucket(self) -> str:
        return self._bucket("s3logs", self.buckets.access_logs)

    def stack_name(self, cycle: str) -> str:
        return f"{self.project}-{cycle}"

    # Terraform state: the state stack creates the bucket and its key; every other stack's S3
    # backend names them as literals (a backend cannot reference resources).
    @property
    def state_bucket(self) -> str:
        return f"{self.project}-tfstate-{self.account_id}-{self.region}"

    @property
    def state_log_bucket(self) -> str:
        return f"{self.project}-tfstate-logs-{self.account_id}-{self.region}"

    @property
    def state_kms_alias(self) -> str:
        """Alias (without `alias/`) of the KMS key that encrypts the state bucket."""
        return f"{self.project}-tfstate"

    def state_key(self, cycle: str) -> str:
        """The object key of a stack's state in the state bucket."""
        return f"{self.stack_name(cycle)}/terraform.tfstate"

    @property
    def local_state_file(self) -> str:
        """The state stack's own state, which cannot live in the bucket it creates: a local
        file of this name next to the output directory (cdktf.out/), i.e. the repository root."""
        return f"{self.stack_name(names.STATE_CYCLE)}.tfstate"

    @property
    def alb_scheme(self) -> str:
        """internal unless the ALB itself must face the internet (CloudFront reaches an
        internal ALB through a VPC origin)."""
        if self.auth.mode == "internal" or self.edge.cloudfront:
            return "internal"
        return "internet-facing"

    @property
    def alb_tag_value(self) -> str:
        return f"{self.project}-comfyui"

    @property
    def api_alb_tag_value(self) -> str:
        """The internal API ALB's value of the same tag key: distinct, so the edge stack's
        lookup of the main ALB never matches it."""
        return f"{self.project}-comfyui-api"

    @property
    def unauthenticated_public(self) -> bool:
        return self.auth.mode == "none"


def _format(err: ErrorDetails) -> str:
    # A key is echoed like a value: bounded (a hostile file may hold kilobyte-long keys).
    loc = ".".join(str(p) if len(str(p)) <= _ECHO_LIMIT else show(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key; fix: remove it or check its spelling against config/default.yaml"
    if kind == "missing":
        return f"{loc}: required key is missing; fix: add it (see config/default.yaml)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif "fix:" not in msg:
        msg = f"{msg}; fix: give a value of the right type (see config/default.yaml)"
    # A validator that found several problems reports them one per line. Cross-key errors of
    # the whole file name their keys themselves.
    if not err["loc"]:
        return msg
    return "\n".join(f"{loc}: {line}" for line in msg.split("\n"))


def parse_config(data: Any, *, source: str = "config") -> Config:
    """Validate a mapping into the frozen Config, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must be a YAML mapping; fix: start from config/default.yaml"])
    if any(not isinstance(key, str) for key in data):
        raise ConfigError([f"{source}: every top-level key must be a name; fix: start from config/default.yaml"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([line for e in exc.errors() for line in _format(e).split("\n")]) from None
    except (ValueError, TypeError, RecursionError) as exc:  # a validator met a value no rule foresaw
        raise ConfigError(
            [f"{source}: invalid value ({type(exc).__name__}); fix: start from config/default.yaml"]
        ) from None


class _StrictLoader(_SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (the second one would silently win, which
    can turn a setting such as the login off) and documents nested deeper than _MAX_DEPTH."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a name", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"key {show(key)} first defined on line {seen[key] + 1}",
                    None,
                    f"duplicate key {show(key)}",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# libyaml's error for a document nested deeper than it allows (yaml_maximum_level_reached).
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"


def _too_deep(text: str) -> bool:
    """Whether collections nest deeper than _MAX_DEPTH, from the YAML's own event stream (no
    recursion; it stops at the first event past the limit)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > _MAX_DEPTH:
                    return True
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml refuses nesting past its own limit (1,000 levels) while it reads ahead, before
        # it hands over the events that would have shown it: too deep, too.
        if exc.problem == _LIBYAML_TOO_DEEP:
            return True
        raise
    return False


def _yaml_problem(exc: BaseException) -> str:
    """One bounded line describing a YAML error (PyYAML's messages span several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        return where + problem[:160]
    return " ".join(str(exc).split())[:160]


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config file (default: config/default.yaml)."""
    file = Path(path) if path else DEFAULT_CONFIG
    name = show(str(file))
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read ({exc.strerror}); fix: pass an existing file with --config"]) from None
    if len(raw) > 1_000_000:
        raise ConfigError(
            [f"{name}: {len(raw)} bytes is far too large for a configuration; fix: start from config/default.yaml"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 (byte {exc.start}); fix: save the file as UTF-8"]) from None
    try:
        if _too_deep(text):
            raise ConfigError(
                [f"{name}: nested more than {_MAX_DEPTH} levels deep; fix: start from config/default.yaml"]
            )
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: not valid YAML ({_yaml_problem(exc)}); fix: correct the syntax"]) from None
    except (ValueError, RecursionError, OverflowError, MemoryError) as exc:
        # e.g. an integer of thousands of digits (Python's int() refuses it)
        raise ConfigError(
            [f"{name}: a value cannot be read ({' '.join(str(exc).split())[:120]}); fix: correct it"]
        ) from None
    return parse_config(data, source=name)
