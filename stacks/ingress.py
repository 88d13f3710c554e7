"""How ComfyUI is exposed, derived once from the configuration (used by the workload and
edge stacks and by the tests)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Config
from modules.comfyui import IngressSettings
from modules.network import subnet_plan


@dataclass(frozen=True)
class ExposureSubnets:
    """Comma-separated subnet IDs (Terraform references) for each kind of ALB."""

    internal: str
    public: str


def _internal_inbound(config: Config) -> list[str]:
    """The VPC (clients inside it; CloudFront VPC origins also come from inside it) plus the
    configured VPN and peering ranges."""
    cidrs = [config.network.vpc_cidr]
    cidrs += [c for c in config.network.internal_alb_cidrs if c not in cidrs]
    return cidrs


def ingress_settings(
    config: Config, *, cognito: dict[str, str] | None, subnet_ids: ExposureSubnets | None = None
) -> IngressSettings:
    """`subnet_ids`: the ALB subnets' IDs (references into the platform stack), pinned on the
    Ingress so the ALB lands exactly where the NetworkPolicy admits it from."""
    plan = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    internal = config.alb_scheme == "internal"
    return IngressSettings(
        name="comfyui",
        scheme=config.alb_scheme,
        alb_tag_value=config.alb_tag_value,
        # Internal ALBs live in subnets of their own, internet-facing ones in the public
        # subnets; neither holds a node or a pod.
        source_cidrs=plan.internal_alb if internal else plan.public,
        subnet_ids=(subnet_ids.internal if internal else subnet_ids.public) if subnet_ids else None,
        # Internet-facing: anyone, because authentication is required (or was acknowledged).
        inbound_cidrs=_internal_inbound(config) if internal else ["0.0.0.0/0"],
        domain=config.auth.domain,
        certificate_arn=config.auth.certificate_arn,
        cognito=cognito if config.auth.mode == "cognito" else None,
    )


def api_ingress_settings(config: Config, *, subnet_ids: ExposureSubnets | None = None) -> IngressSettings | None:
    """The internal, login-free API endpoint beside a Cognito-protected one (None unless
    auth.internal_api_endpoint): plain HTTP inside the VPC, like auth.mode internal."""
    if not config.auth.internal_api_endpoint:
        return None
    plan = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    return IngressSettings(
        name="comfyui-api",
        scheme="internal",
        alb_tag_value=config.api_alb_tag_value,
        source_cidrs=plan.internal_alb,
        subnet_ids=subnet_ids.internal if subnet_ids else None,
        inbound_cidrs=_internal_inbound(config),
    )
