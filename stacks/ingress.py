"""How ComfyUI is exposed, derived once from the configuration (used by the workload and
edge stacks and by the tests)."""

from __future__ import annotations

from core.config import Config
from modules.comfyui import IngressSettings
from modules.network import subnet_plan


def _internal_inbound(config: Config) -> list[str]:
    """The VPC (clients inside it; CloudFront VPC origins also come from inside it) plus the
    configured VPN and peering ranges."""
    cidrs = [config.network.vpc_cidr]
    cidrs += [c for c in config.network.internal_alb_cidrs if c not in cidrs]
    return cidrs


def ingress_settings(config: Config, *, cognito: dict[str, str] | None) -> IngressSettings:
    private, public = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    internal = config.alb_scheme == "internal"
    return IngressSettings(
        name="comfyui",
        scheme=config.alb_scheme,
        alb_tag_value=config.alb_tag_value,
        # The controller places internal ALBs in the private subnets (internal-elb tag) and
        # internet-facing ones in the public subnets (elb tag).
        source_cidrs=private if internal else public,
        # Internet-facing: anyone, because authentication is required (or was acknowledged).
        inbound_cidrs=_internal_inbound(config) if internal else ["0.0.0.0/0"],
        domain=config.auth.domain,
        certificate_arn=config.auth.certificate_arn,
        cognito=cognito if config.auth.mode == "cognito" else None,
    )


def api_ingress_settings(config: Config) -> IngressSettings | None:
    """The internal, login-free API endpoint beside a Cognito-protected one (None unless
    auth.internal_api_endpoint): plain HTTP inside the VPC, like auth.mode internal."""
    if not config.auth.internal_api_endpoint:
        return None
    private, _ = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    return IngressSettings(
        name="comfyui-api",
        scheme="internal",
        alb_tag_value=config.api_alb_tag_value,
        source_cidrs=private,
        inbound_cidrs=_internal_inbound(config),
    )
