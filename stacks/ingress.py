"""How ComfyUI is exposed, derived once from the configuration (used by the workload and
edge stacks and by the tests)."""

from __future__ import annotations

from core.config import Config
from modules.comfyui import IngressSettings
from modules.network import subnet_plan


def ingress_settings(config: Config, *, cognito: dict[str, str] | None) -> IngressSettings:
    private, public = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    internal = config.alb_scheme == "internal"
    return IngressSettings(
        scheme=config.alb_scheme,
        alb_tag_value=config.alb_tag_value,
        # The controller places internal ALBs in the private subnets (internal-elb tag) and
        # internet-facing ones in the public subnets (elb tag).
        source_cidrs=private if internal else public,
        # Internal: the VPC only (a VPN or peering into it; CloudFront VPC origins also come
        # from inside the VPC). Internet-facing: anyone, because authentication is required.
        inbound_cidrs=(list(config.network.internal_alb_cidrs) or [config.network.vpc_cidr]) if internal else ["0.0.0.0/0"],
        domain=config.auth.domain,
        certificate_arn=config.auth.certificate_arn,
        cognito=cognito if config.auth.mode == "cognito" else None,
    )
