"""The one validated, frozen configuration object, loaded at the edge (main.py).

Constructs receive this object (or parts of it); none of them reads files or environment
variables. Every validation error names the key and the fix; `load_config` collects them
all, so a user fixes a file in one pass.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
CONFIG_ENV_VAR = "COMFYUI_EKS_CONFIG"

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# One top-level folder of the models bucket (the node maps it to <models path>/<folder>).
_PREFIX = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*/$")
# 1.29+: the uploader is a native sidecar (restartPolicy Always init container, on by default
# from 1.29). <= 1.34: the newest Kubernetes Karpenter 1.8.8 supports (MaxK8sVersion).
_K8S_VERSION = re.compile(r"^1\.(29|3[0-4])$")
# AWS reserves these name prefixes: SSM documents (aws, amazon, amzn), S3 buckets (sthree-,
# amzn-s3-demo-); the project prefixes both.
_RESERVED_PROJECT_PREFIXES = ("aws", "amazon", "amzn", "sthree")
_CONTROLLER_TAG_PREFIXES = (
    "comfyui.io/", "karpenter.sh/", "karpenter.k8s.aws/", "kubernetes.io/cluster", "elbv2.k8s.aws/", "ingress.k8s.aws/",
)
# GPU instance families this product's AMI (AL2023 NVIDIA) and device plugin support.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en")
# (x86_64 only: the ComfyUI image is built for linux/amd64, so Graviton g5g is excluded.)
# Longest suffix appended to the project name in derived bucket names:
# "<project>-outputs-<12-digit account>-<region>" and S3's 63-character limit.
_LONGEST_REGION = 14  # e.g. ap-southeast-4


class ConfigError(Exception):
    """Bad configuration: `errors` holds one line per problem, each naming key and fix."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NetworkConfig(_Model):
    vpc_cidr: str = "10.42.0.0/16"
    az_count: Annotated[int, Field(ge=2, le=6)] = 3
    nat_mode: Literal["single", "per_az"] = "single"
    # Who may reach the EKS API endpoint from the internet (it is IAM-authenticated either
    # way); narrow it to your CI runners' and admins' ranges.
    api_public_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    # Who may reach an internal ALB besides the VPC itself (auth.mode internal, or the API
    # endpoint of auth.internal_api_endpoint): the ranges of peered VPCs or of your VPN
    # (their clients keep their own source addresses).
    internal_alb_cidrs: tuple[str, ...] = ()

    @field_validator("api_public_cidrs", "internal_alb_cidrs", mode="before")
    @classmethod
    def _cidrs_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("api_public_cidrs")
    @classmethod
    def _public_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("empty; fix: list at least one CIDR that may reach the EKS API, e.g. 203.0.113.0/24")
        return cls._cidr_list(v)

    @field_validator("internal_alb_cidrs")
    @classmethod
    def _internal_cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return cls._cidr_list(v)

    @staticmethod
    def _cidr_list(v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            try:
                ipaddress.IPv4Network(c, strict=True)
            except ValueError as exc:
                raise ValueError(f"invalid IPv4 CIDR {c!r} ({exc}); fix: use a network address such as 203.0.113.0/24") from None
        return v

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"invalid IPv4 CIDR {v!r} ({exc}); fix: use a network address such as 10.42.0.0/16") from None
        if not 16 <= net.prefixlen <= 20:
            raise ValueError(f"prefix /{net.prefixlen} is outside /16../20; fix: use a /16 to /20 so every AZ gets room for GPU nodes")
        if not net.is_private:
            raise ValueError(f"{v} is not a private (RFC 1918) range; fix: use e.g. 10.42.0.0/16")
        return v


class SystemNodesConfig(_Model):
    instance_type: str = "m6i.large"
    min_size: Annotated[int, Field(ge=1, le=20)] = 2
    max_size: Annotated[int, Field(ge=1, le=20)] = 3
    desired_size: Annotated[int, Field(ge=1, le=20)] = 2

    @field_validator("instance_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not _INSTANCE_TYPE.match(v):
            raise ValueError(f"{v!r} is not an EC2 instance type; fix: use e.g. m6i.large")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "SystemNodesConfig":
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError("need min_size <= desired_size <= max_size; fix: adjust the three sizes")
        return self


_ROLE_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


class ClusterAccessConfig(_Model):
    # IAM roles given access to the cluster through EKS access entries, besides the identity
    # that creates it (which gets cluster-admin). Role ARNs, not assumed-role session ARNs.
    # viewer_role_arns: read everything, Secrets included (AmazonEKSAdminViewPolicy), which
    #   is what `terraform plan` of the workload stack needs (helm reads its release Secrets):
    #   list your CI plan role here.
    # admin_role_arns: cluster-admin (AmazonEKSClusterAdminPolicy), e.g. a deploy role.
    viewer_role_arns: tuple[str, ...] = ()
    admin_role_arns: tuple[str, ...] = ()

    @field_validator("viewer_role_arns", "admin_role_arns", mode="before")
    @classmethod
    def _arns_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("viewer_role_arns", "admin_role_arns")
    @classmethod
    def _arns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for arn in v:
            if not _ROLE_ARN.match(arn):
                raise ValueError(
                    f"{arn!r} is not an IAM role ARN; fix: use arn:aws:iam::<account>:role/<name> (for an "
                    "assumed-role session, the role it assumed)"
                )
        if len(set(v)) != len(v):
            raise ValueError("a role is listed twice; fix: list each role once")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> "ClusterAccessConfig":
        both = sorted(set(self.viewer_role_arns) & set(self.admin_role_arns))
        if both:
            # EKS allows one access entry per principal.
            raise ValueError(f"{', '.join(both)} is both viewer and admin; fix: list it once (admin can read too)")
        return self


class GpuConfig(_Model):
    instance_types: tuple[str, ...] = ("g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge")
    capacity_types: tuple[Literal["spot", "on-demand"], ...] = ("spot", "on-demand")
    max_gpus: Annotated[int, Field(ge=1, le=1000)] = 8
    root_volume_gib: Annotated[int, Field(ge=50, le=2000)] = 100
    # Karpenter: how long an empty node lingers before it is removed.
    consolidate_after: str = "10m"
    # Karpenter: maximum node lifetime (fresh AMIs, no long-lived nodes).
    expire_after: str = "720h"

    @field_validator("instance_types", mode="before")
    @classmethod
    def _list_to_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("capacity_types", mode="before")
    @classmethod
    def _caps_to_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("instance_types")
    @classmethod
    def _gpu_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("empty; fix: list at least one GPU instance type, e.g. g6.xlarge")
        for t in v:
            family = t.split(".", 1)[0]
            if not _INSTANCE_TYPE.match(t) or family not in GPU_FAMILIES:
                raise ValueError(
                    f"{t!r} is not a GPU instance type; fix: use types of the families {', '.join(GPU_FAMILIES)}"
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

    @field_validator("consolidate_after", "expire_after")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", v) or not v or (v == "Never"):
            raise ValueError(f"{v!r} is not a duration; fix: use Go duration syntax such as 10m or 720h")
        return v


class BucketsConfig(_Model):
    models: str | None = None
    inputs: str | None = None
    outputs: str | None = None
    access_logs: str | None = None
    outputs_expiration_days: Annotated[int, Field(ge=1, le=3650)] = 30

    @field_validator("models", "inputs", "outputs", "access_logs")
    @classmethod
    def _s3_safe(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _BUCKET.match(v) or ".." in v or v.startswith("xn--") or re.fullmatch(r"[\d.]+", v):
            raise ValueError(
                f"{v!r} is not an S3-safe bucket name; fix: 3-63 characters of a-z, 0-9, '-' and '.', "
                "starting and ending with a letter or digit (or remove the key to derive the name)"
            )
        return v


class ModelSyncConfig(_Model):
    # Only keys under these prefixes are models; other objects (notes, build artefacts)
    # neither trigger a sync nor reach a node. An empty list means the whole bucket. ComfyUI
    # itself only looks in the folders mapped in docker/extra_model_paths.yaml.
    prefixes: tuple[str, ...] = (
        "checkpoints/", "clip/", "clip_vision/", "controlnet/", "diffusion_models/", "embeddings/",
        "loras/", "text_encoders/", "unet/", "upscale_models/", "vae/",
    )
    # SQS -> Lambda batching window: a burst of uploads within it becomes one sync.
    batching_window_seconds: Annotated[int, Field(ge=0, le=300)] = 60

    @field_validator("prefixes", mode="before")
    @classmethod
    def _to_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not _PREFIX.match(p) or ".." in p.split("/"):
                raise ValueError(f"{p!r} is not a top-level folder prefix; fix: use letters, digits, '_', '.', '-' and end with '/', e.g. checkpoints/")
        duplicates = sorted({p for p in v if v.count(p) > 1})
        if duplicates:
            # S3 refuses two notification rules for the same prefix: the apply would fail.
            raise ValueError(f"{', '.join(duplicates)} listed more than once; fix: list each prefix once")
        return v


class ComfyUIConfig(_Model):
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    image_tag: str = "v0.3.0"
    ecr_image_tag_mutability: Literal["IMMUTABLE", "MUTABLE"] = "IMMUTABLE"
    ecr_keep_images: Annotated[int, Field(ge=1, le=1000)] = 20

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", v) or v == "latest":
            raise ValueError(f"{v!r} is not a pinned image tag; fix: use the tag docker/build_and_push.sh printed (not 'latest')")
        return v


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
    def _rules(self) -> "AuthConfig":
        if self.internal_api_endpoint and self.mode != "cognito":
            raise ValueError(
                f"internal_api_endpoint applies only to mode 'cognito' (with mode {self.mode!r} the one ALB already "
                "takes API calls without a login); fix: remove internal_api_endpoint, or use mode: cognito"
            )
        if self.domain is not None and not re.fullmatch(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", self.domain):
            raise ValueError(f"domain {self.domain!r} is not a DNS name; fix: e.g. comfy.example.com (lower case)")
        if self.mode == "cognito" and (not self.domain or not self.certificate_arn):
            raise ValueError("mode 'cognito' needs domain and certificate_arn; fix: set both, or use mode: internal")
        if self.certificate_arn and not re.fullmatch(r"arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+", self.certificate_arn):
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
    def _edge(self) -> "EdgeConfig":
        if self.cloudfront:
            arn = self.certificate_arn or ""
            if not re.fullmatch(r"arn:aws[a-z-]*:acm:us-east-1:\d{12}:certificate/[0-9a-f-]+", arn):
                raise ValueError(
                    "cloudfront needs certificate_arn, an ACM certificate in us-east-1 for auth.domain; "
                    "fix: request one in us-east-1 and set edge.certificate_arn"
                )
        return self


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
    tags: dict[str, str] = {}

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT.match(v) or "--" in v:
            raise ValueError(
                f"{v!r} is not a valid project name; fix: 3-20 characters of a-z, 0-9 and '-', starting with a "
                "letter (it prefixes stack, cluster and bucket names)"
            )
        if v.startswith(_RESERVED_PROJECT_PREFIXES):
            raise ValueError(
                f"{v!r} starts with a prefix AWS reserves ({', '.join(_RESERVED_PROJECT_PREFIXES)}) for SSM documents "
                "and S3 buckets, which the project prefixes; fix: choose another project name, e.g. studio-comfyui"
            )
        return v

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str) -> str:
        if not re.fullmatch(r"\d{12}", v):
            raise ValueError(f"{v!r} is not an AWS account ID; fix: the 12 digits of `aws sts get-caller-identity`, quoted as a string")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION.match(v) or len(v) > _LONGEST_REGION:
            raise ValueError(f"{v!r} is not an AWS region; fix: use a region code such as us-west-2")
        return v

    @field_validator("kubernetes_version")
    @classmethod
    def _k8s(cls, v: str) -> str:
        if not _K8S_VERSION.match(v):
            raise ValueError(
                f"{v!r} is not a supported Kubernetes version; fix: use \"1.29\" to \"1.34\" (quoted): native sidecars "
                "need 1.29, and Karpenter 1.8 supports up to 1.34"
            )
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            if k.lower().startswith("aws:") or not 1 <= len(k) <= 128:
                raise ValueError(f"tag key {k!r} is reserved or too long; fix: use 1-128 characters not starting with 'aws:'")
            # The tags also reach what Karpenter and the load balancer controller create (GPU
            # instances, ALBs), so their own keys and ours stay theirs: Karpenter's CRD refuses
            # them, and a user value could steer the SSM targeting tag.
            if k.startswith(_CONTROLLER_TAG_PREFIXES) or k == "eks:eks-cluster-name":
                raise ValueError(
                    f"tag key {k!r} is set by this product or its controllers; fix: use a key outside "
                    f"{', '.join(_CONTROLLER_TAG_PREFIXES)} and eks:eks-cluster-name"
                )
            if not 1 <= len(value) <= 256:
                raise ValueError(f"tag {k!r} has an empty or too long value; fix: give it 1-256 characters (Karpenter refuses empty values)")
            # AWS's tag alphabet (letters, digits, spaces and _ . : / = + - @); it also keeps
            # Terraform's ${ and %{ out of every tag.
            for text in (k, value):
                if not re.fullmatch(r"[\w .:/=+\-@]+", text):
                    raise ValueError(f"tag {k!r}: {text!r} has characters AWS does not allow in tags; fix: use letters, digits, spaces and _ . : / = + - @")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "Config":
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
                    f"{key} is in region {arn.split(':')[3]!r}, account {arn.split(':')[4]!r}; it must be an ACM certificate "
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
                errors.append(f"cluster_access: {arn!r} is not in partition {self.partition!r} of {self.region}; fix: use a role of that partition")
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

    @property
    def state_bucket(self) -> str:
        return f"{self.project}-tfstate-{self.account_id}-{self.region}"

    def stack_name(self, cycle: str) -> str:
        return f"{self.project}-{cycle}"

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


def _format(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key; fix: remove it or check its spelling against config/default.yaml"
    if kind == "missing":
        return f"{loc}: required key is missing; fix: add it (see config/default.yaml)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif "fix:" not in msg:
        msg = f"{msg}; fix: give a value of the right type (see config/default.yaml)"
    # A validator that found several problems reports them one per line.
    return "\n".join(f"{loc}: {line}" for line in msg.split("\n"))


def parse_config(data: Any, *, source: str = "config") -> Config:
    """Validate a mapping into the frozen Config, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must be a YAML mapping; fix: start from config/default.yaml"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([line for e in exc.errors() for line in _format(e).split("\n")]) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config file (default: config/default.yaml)."""
    file = Path(path) if path else DEFAULT_CONFIG
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror}); fix: pass an existing file with --config"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file.name}: not valid YAML ({exc}); fix: correct the syntax"]) from None
    return parse_config(data, source=file.name)
