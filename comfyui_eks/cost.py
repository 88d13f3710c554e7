"""`comfyui-eks cost`: what this deployment costs a month, one line per service.

    comfyui-eks cost [--config FILE] [--scenario reference] [--format text|json] [--refresh-prices]
                     [usage assumptions: --images-per-month N --image-mb MB --model-gb GB ...]

Without --scenario the estimate is this project's configuration: every resource the stacks
create that has a price, GPU hours derived from `scaling` (the schedule's warm replicas,
min_replicas around the clock, plus the job hours you assume), Spot split per
`gpu.capacity_types`. `--scenario reference` reproduces the estimate published with
aws-samples/comfyui-on-eks exactly (users through the ALB, and through CloudFront) and says
what it leaves out.

Money is Decimal throughout; each line is rounded half-up to a tenth of a cent (the published
estimate's precision) and the total is the sum of the lines, so every table adds up. Sizes are
decimal: 1 GB = 1000 MB, as the published estimate computes 64,000 x 1.5 MB = 96 GB.

Exit codes: 0 ok, 1 the Pricing API failed (--refresh-prices), 2 bad arguments, configuration,
or a region or instance type the price table lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from comfyui_eks import prices
from comfyui_eks.cli import CommandFailed, UsageError
from comfyui_eks.prices import HOURS_PER_MONTH, PriceError, PriceTable, RegionPrices

Json = dict[str, Any]

CENT_TENTH = Decimal("0.001")
WEEKS_PER_MONTH = Decimal(52) / Decimal(12)
DAYS_PER_MONTH = Decimal(365) / Decimal(12)
MB_PER_GB = Decimal(1000)
# The system node group's root volume (modules/cluster.py, block_device_mappings: 50 GiB gp3).
SYSTEM_NODE_VOLUME_GB = Decimal(50)
# The edge WAF's rules (modules/edge.py waf_rules: three managed groups and a rate limit).
WAF_RULES = 4
# Pricing API client factory; tests replace it with a stubbed client.
PRICING_CLIENT: Callable[[], Any] = prices.pricing_client


@dataclass(frozen=True)
class Option:
    """A usage assumption: its flag, its default for the configuration, and what it means."""

    dest: str
    flag: str
    default: Decimal
    metavar: str
    help: str
    reference_key: str | None = None  # the published input it overrides in --scenario reference


OPTIONS = (
    Option(
        "gpu_hours_per_day",
        "--gpu-hours-per-day",
        Decimal(8),
        "H",
        "reference: GPU hours a day (8)",
        "gpu_hours_per_day",
    ),
    Option(
        "days_per_month",
        "--days-per-month",
        Decimal(20),
        "D",
        "reference: days of use a month (20)",
        "gpu_days_per_month",
    ),
    Option(
        "job_gpu_hours",
        "--job-gpu-hours-per-month",
        Decimal(0),
        "H",
        "GPU hours of API jobs a month, on top of the schedule (0)",
    ),
    Option(
        "images_per_month",
        "--images-per-month",
        Decimal(64000),
        "N",
        "images generated a month (64000)",
        "images_per_month",
    ),
    Option("image_mb", "--image-mb", Decimal("1.5"), "MB", "average image size (1.5)", "image_mb"),
    Option("model_gb", "--model-gb", Decimal(100), "GB", "models in the models bucket (100)", "model_gb"),
    Option("ecr_gb", "--ecr-gb", Decimal(20), "GB", "ComfyUI images kept in ECR (20)", "ecr_gb"),
    Option(
        "transfer_out_gb", "--transfer-out-gb", Decimal(100), "GB", "data to users a month (100)", "transfer_out_gb"
    ),
    Option("alb_lcu", "--alb-lcu", Decimal(1), "LCU", "average load balancer capacity units per ALB (1)", "alb_lcu"),
    Option(
        "nat_gb", "--nat-gb", Decimal(100), "GB", "data through the NAT gateways a month: image pulls, pip, APIs (100)"
    ),
    Option(
        "requests_per_month",
        "--requests-per-month",
        Decimal(1_000_000),
        "N",
        "CloudFront/WAF requests a month (1000000)",
    ),
    Option(
        "spot_share",
        "--spot-share",
        Decimal(80),
        "PCT",
        "percent of GPU hours on Spot when both capacity types are allowed (80)",
    ),
)


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="estimate the monthly AWS cost",
        description=(
            "Estimate the monthly AWS cost of this deployment from the configuration and usage assumptions, "
            "one line per service, from an embedded dated price table (or the AWS Pricing API with "
            "--refresh-prices). --scenario reference reproduces the estimate published with "
            "aws-samples/comfyui-on-eks. Sizes are decimal (1 GB = 1000 MB)."
        ),
        epilog="Exit codes: 0 ok, 1 the Pricing API failed, 2 bad arguments, configuration or missing prices.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("COMFYUI_EKS_CONFIG"),
        metavar="FILE",
        help="configuration (config/default.yaml)",
    )
    parser.add_argument(
        "--scenario", choices=("reference",), help="reference: the published aws-samples/comfyui-on-eks estimate"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (text)")
    parser.add_argument("--refresh-prices", action="store_true", help="fetch current prices from the AWS Pricing API")
    parser.add_argument(
        "--spot-discount",
        type=_percent,
        metavar="PCT",
        help=(
            "ASSUMPTION: Spot's discount from On-Demand in percent "
            "(default from the price table: 55, i.e. Spot = 45%% of On-Demand)"
        ),
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=_percent if option.dest == "spot_share" else _amount,
            metavar=option.metavar,
            help=option.help,
        )
    parser.set_defaults(func=run)
    return parser


def _amount(text: str) -> Decimal:
    """A non-negative finite number (argparse reports the problem with exit code 2)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of 0 or more")
    return value


def _percent(text: str) -> Decimal:
    value = _amount(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage from 0 to 100")
    return value


# --------------------------------------------------------------------------------------------
# Line items and estimates


def money(value: Decimal) -> Decimal:
    """Round to a tenth of a cent, half up: the published estimate's precision ($2.208)."""
    return value.quantize(CENT_TENTH, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class LineItem:
    service: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal

    @property
    def monthly(self) -> Decimal:
        return money(self.quantity * self.unit_price)

    def to_json(self) -> Json:
        return {
            "service": self.service,
            "description": self.description,
            "quantity": _number(self.quantity.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)),
            "unit": self.unit,
            "unit_price_usd": _number(self.unit_price),
            "monthly_usd": _number(self.monthly),
        }


@dataclass(frozen=True)
class Estimate:
    title: str
    items: tuple[LineItem, ...]
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> Decimal:
        return sum((item.monthly for item in self.items), Decimal(0))

    def service_total(self, service: str) -> Decimal:
        return sum((item.monthly for item in self.items if item.service == service), Decimal(0))


@dataclass(frozen=True)
class GpuHours:
    """GPU node hours a month and where they come from."""

    scheduled: Decimal  # warm replicas above min_replicas during the schedule
    always_on: Decimal  # min_replicas around the clock
    jobs: Decimal  # assumed job hours
    explanation: str

    @property
    def configuration(self) -> Decimal:
        return self.scheduled + self.always_on

    @property
    def total(self) -> Decimal:
        return self.configuration + self.jobs


def _number(value: Decimal) -> float:
    """A JSON number for a Decimal: always a float, so every field keeps one type."""
    return float(value)


# --------------------------------------------------------------------------------------------
# The published reference estimate


def reference_estimates(table: PriceTable, usage: dict[str, Decimal]) -> list[Estimate]:
    """The published estimate, once for users through the ALB and once through CloudFront.

    Inputs are the published ones (comfyui_eks/data/prices.json "reference_scenario"), each
    overridable with its usage option; the arithmetic is the published one.
    """
    ref = table.reference

    def value(key: str) -> Decimal:
        return Decimal(usage.get(key, ref[key]))

    gpu_hours = value("gpu_hours_per_day") * value("gpu_days_per_month")
    image_gb = value("images_per_month") * value("image_mb") / MB_PER_GB
    common = (
        LineItem("Amazon EKS", "control plane (fixed price)", Decimal(1), "cluster-month", ref["eks_month"]),
        LineItem(
            "Amazon EC2",
            f"GPU node 1 x {ref['gpu_instance_type']}, On-Demand, {_num(value('gpu_hours_per_day'))} h x "
            f"{_num(value('gpu_days_per_month'))} days",
            gpu_hours,
            "h",
            ref["gpu_on_demand_hour"],
        ),
        LineItem(
            "Amazon EC2",
            f"system nodes {ref['system_nodes']} x {ref['system_instance_type']}, 1-year reserved, no upfront",
            ref["system_nodes"],
            "instance-month",
            ref["system_node_month_reserved"],
        ),
        LineItem("Amazon S3", "models, S3 Standard", value("model_gb"), "GB-month", ref["s3_standard_gb_month"]),
        LineItem(
            "Amazon S3",
            f"images, S3 Standard: {_num(value('images_per_month'))} x {_num(value('image_mb'))} MB, rotated monthly",
            image_gb,
            "GB-month",
            ref["s3_standard_gb_month"],
        ),
        LineItem("Amazon ECR", "ComfyUI images", value("ecr_gb"), "GB-month", ref["ecr_gb_month"]),
        LineItem(
            "Elastic Load Balancing", "1 ALB, fixed hourly charges", Decimal(1), "ALB-month", ref["alb_month_fixed"]
        ),
        LineItem(
            "Elastic Load Balancing",
            f"1 ALB, {_num(value('alb_lcu'))} LCU x {_num(ref['alb_hours'])} h",
            value("alb_lcu") * ref["alb_hours"],
            "LCU-h",
            ref["alb_lcu_hour"],
        ),
    )
    transfer = value("transfer_out_gb")
    return [
        Estimate(
            "users through the ALB",
            (
                *common,
                LineItem(
                    "Data transfer", "out to the internet from the ALB", transfer, "GB", ref["transfer_out_alb_gb"]
                ),
            ),
        ),
        Estimate(
            "users through CloudFront",
            (
                *common,
                LineItem(
                    "Amazon CloudFront", "data transfer out to users", transfer, "GB", ref["transfer_out_cloudfront_gb"]
                ),
            ),
        ),
    ]


def reference_omissions(config: Any, table: PriceTable, region_prices: RegionPrices) -> list[str]:
    """What the published estimate leaves out, priced in its region with this configuration."""
    ref = table.reference
    nat = _nat_gateways(config)
    nat_line = (
        f"NAT gateways: not in the estimate. This configuration ({config.network.nat_mode}) runs {nat} x "
        f"{_num(HOURS_PER_MONTH)} h x ${_num(region_prices.nat_gateway_hour)} = "
        f"{_usd(money(nat * HOURS_PER_MONTH * region_prices.nat_gateway_hour))} a month, plus "
        f"${_num(region_prices.nat_gateway_gb)} per GB they process."
    )
    lines = [nat_line]
    nodes = config.system_nodes
    node_price = region_prices.instance_hour(nodes.instance_type)
    real = (
        f"{nodes.desired_size} x {_num(HOURS_PER_MONTH)} h x ${_num(node_price)} = "
        f"{_usd(money(nodes.desired_size * HOURS_PER_MONTH * node_price))} a month"
        if node_price is not None
        else f"not in the price table for {region_prices.region} (--refresh-prices)"
    )
    lines.append(
        f"System nodes: priced as {ref['system_nodes']} x {ref['system_instance_type']} with a 1-year reservation "
        f"(${_num(ref['system_node_month_reserved'])} a month each); this configuration runs {nodes.desired_size} x "
        f"{nodes.instance_type} On-Demand: {real}."
    )
    fixed = money(HOURS_PER_MONTH * ref["gpu_on_demand_hour"])
    counted = money(ref["gpu_hours_per_day"] * ref["gpu_days_per_month"] * ref["gpu_on_demand_hour"])
    lines.append(
        f"GPU hours: the estimate counts {_num(ref['gpu_hours_per_day'] * ref['gpu_days_per_month'])} h of one "
        f"{ref['gpu_instance_type']}, but a Deployment with one fixed replica keeps its GPU node running "
        f"{_num(HOURS_PER_MONTH)} h a month: {_num(HOURS_PER_MONTH)} h x ${_num(ref['gpu_on_demand_hour'])} = "
        f"{_usd(fixed)} ({_usd(fixed - counted)} more). Only scaling to zero outside working hours gives the "
        f"estimated hours; this configuration keeps {_hours(gpu_hours(config.scaling, Decimal(0)).configuration)} h "
        "a month (scaling: schedule and min_replicas; `comfyui-eks cost` prices them)."
    )
    return lines


# --------------------------------------------------------------------------------------------
# This configuration


def gpu_hours(scaling: Any, job_hours: Decimal) -> GpuHours:
    """GPU node hours a month from `scaling`: min_replicas always, the schedule's warm replicas
    above them for hours_per_day on the listed days (days a week x 52/12), plus job hours.

    KEDA runs max(min_replicas, warm_replicas) during the schedule, so only warm replicas above
    min_replicas add hours.
    """
    always_on = Decimal(scaling.min_replicas) * HOURS_PER_MONTH
    schedule = scaling.schedule
    if schedule is None:
        if scaling.min_replicas:
            why = (
                f"{_replicas(scaling.min_replicas, 'replica')} x {_num(HOURS_PER_MONTH)} h (min_replicas); no schedule"
            )
        else:
            why = "no schedule and min_replicas 0: GPU hours come only from jobs"
        return GpuHours(Decimal(0), always_on, job_hours, why)
    extra = max(0, schedule.warm_replicas - scaling.min_replicas)
    hours_per_day = _clock_hours(schedule.start, schedule.end)
    days = len(schedule.days) * WEEKS_PER_MONTH
    scheduled = extra * hours_per_day * days
    why = (
        f"schedule: {_replicas(extra, 'warm replica')} x {_num(hours_per_day)} h x {len(schedule.days)} days/week "
        "x 52/12 "
        f"= {_hours(scheduled)} h"
    )
    if scaling.min_replicas:
        why += f"; min_replicas: {scaling.min_replicas} x {_num(HOURS_PER_MONTH)} h = {_hours(always_on)} h"
    return GpuHours(scheduled, always_on, job_hours, why)


def _clock_hours(start: str, end: str) -> Decimal:
    """Hours from HH:MM to HH:MM, exactly (ScheduleConfig.hours_per_day is a float)."""
    (h1, m1), (h2, m2) = (map(int, clock.split(":")) for clock in (start, end))
    return Decimal((h2 - h1) * 60 + m2 - m1) / 60


def _replicas(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class _Builder:
    """Collects line items and notes of the configuration's estimate."""

    items: list[LineItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, service: str, description: str, quantity: Decimal, unit: str, unit_price: Decimal) -> None:
        self.items.append(LineItem(service, description, quantity, unit, unit_price))


def config_estimate(
    config: Any, table: PriceTable, usage: dict[str, Decimal], spot_discount: Decimal
) -> tuple[Estimate, GpuHours]:
    """Every priced resource of this configuration, a month."""
    region = table.region(config.region)
    hours = gpu_hours(config.scaling, usage["job_gpu_hours"])
    out = _Builder()
    out.add("Amazon EKS", "control plane, standard support", HOURS_PER_MONTH, "h", region.eks_cluster_hour)
    _system_nodes(out, config, region)
    _gpu_nodes(out, config, region, hours, usage, spot_discount)
    _volumes(out, config, region, hours)
    _network(out, config, table, region, usage)
    _storage(out, config, region, usage)
    _load_balancers(out, config, region, usage)
    _delivery(out, config, table, region, usage)
    out.notes.append(
        "not included: KMS keys ($1 per key-month), CloudWatch Logs and alarms, the request-priced Lambda, SQS, "
        "DynamoDB and API Gateway of model sync and the job API, cross-AZ traffic, free tiers"
    )
    title = f"project {config.project} in {config.region}"
    return Estimate(title, tuple(out.items), tuple(out.notes)), hours


def _system_nodes(out: _Builder, config: Any, region: RegionPrices) -> None:
    nodes = config.system_nodes
    price = region.instance_hour(nodes.instance_type)
    if price is None:
        raise PriceError(
            f"system_nodes.instance_type {nodes.instance_type} is not in the price table for {region.region}; fix: add "
            "--refresh-prices to fetch it from the AWS Pricing API"
        )
    out.add(
        "Amazon EC2",
        f"system nodes {nodes.desired_size} x {nodes.instance_type}, On-Demand",
        nodes.desired_size * HOURS_PER_MONTH,
        "h",
        price,
    )


def _gpu_nodes(
    out: _Builder, config: Any, region: RegionPrices, hours: GpuHours, usage: dict[str, Decimal], spot_discount: Decimal
) -> None:
    """GPU hours at the cheapest listed type (Karpenter launches the cheapest that fits)."""
    priced = {t: region.instance_hour(t) for t in config.gpu.instance_types}
    known = {t: p for t, p in priced.items() if p is not None}
    if not known:
        raise PriceError(
            f"none of gpu.instance_types ({', '.join(config.gpu.instance_types)}) is in the price table for "
            f"{region.region}, which lists {_gpu_types_listed(region)} there (a type may not be offered in a region); "
            "fix: list types offered there in gpu.instance_types, or add --refresh-prices to ask the AWS Pricing API"
        )
    unpriced = [t for t, p in priced.items() if p is None]
    if unpriced:
        out.notes.append(
            f"not in the price table for {region.region}: {', '.join(unpriced)} (not offered there, or not listed: "
            "--refresh-prices asks the AWS Pricing API); the cheapest of the others is used"
        )
    instance_type, on_demand = min(known.items(), key=lambda item: (item[1], item[0]))
    capacity = config.gpu.capacity_types
    spot_fraction = Decimal(0)
    if "spot" in capacity:
        spot_fraction = usage["spot_share"] / 100 if "on-demand" in capacity else Decimal(1)
    spot_price = on_demand * (100 - spot_discount) / 100
    if "spot" in capacity:
        share = f"{_num(spot_fraction * 100)}% of GPU hours" if "on-demand" in capacity else "all GPU hours"
        out.add(
            "Amazon EC2",
            f"GPU {instance_type}, Spot ({share}; ASSUMED {_num(100 - spot_discount)}% of On-Demand)",
            hours.total * spot_fraction,
            "h",
            spot_price,
        )
        out.notes.append(
            f"Spot is an assumption: {_num(100 - spot_discount)}% of On-Demand (--spot-discount {_num(spot_discount)})"
            + (f", {_num(spot_fraction * 100)}% of GPU hours on Spot (--spot-share)" if "on-demand" in capacity else "")
            + ". AWS publishes no fixed Spot price."
        )
    if "on-demand" in capacity:
        share = f"{_num((1 - spot_fraction) * 100)}% of GPU hours" if "spot" in capacity else "all GPU hours"
        out.add(
            "Amazon EC2", f"GPU {instance_type}, On-Demand ({share})", hours.total * (1 - spot_fraction), "h", on_demand
        )


def _gpu_types_listed(region: RegionPrices) -> str:
    from core.config import GPU_FAMILIES

    listed = sorted(t for t in region.ec2_on_demand_hour if t.split(".", 1)[0] in GPU_FAMILIES)
    return ", ".join(listed) or "no GPU type"


def _volumes(out: _Builder, config: Any, region: RegionPrices, hours: GpuHours) -> None:
    system = config.system_nodes.desired_size * SYSTEM_NODE_VOLUME_GB
    gpu = Decimal(config.gpu.root_volume_gib) * hours.total / HOURS_PER_MONTH
    out.add(
        "Amazon EBS",
        f"gp3: system nodes {config.system_nodes.desired_size} x {_num(SYSTEM_NODE_VOLUME_GB)} GB, GPU root "
        f"{config.gpu.root_volume_gib} GB while running",
        system + gpu,
        "GB-month",
        region.ebs_gp3_gb_month,
    )


def _nat_gateways(config: Any) -> int:
    return int(config.network.az_count) if config.network.nat_mode == "per_az" else 1


def _network(out: _Builder, config: Any, table: PriceTable, region: RegionPrices, usage: dict[str, Decimal]) -> None:
    nat = _nat_gateways(config)
    where = f"one per AZ ({nat})" if config.network.nat_mode == "per_az" else "single"
    out.add("Amazon VPC", f"NAT gateways, {where}", nat * HOURS_PER_MONTH, "h", region.nat_gateway_hour)
    out.add(
        "Amazon VPC",
        "NAT data processed (ASSUMED; S3 goes through the free gateway endpoint)",
        usage["nat_gb"],
        "GB",
        region.nat_gateway_gb,
    )
    addresses = nat
    what = f"{nat} NAT"
    if config.alb_scheme == "internet-facing":
        addresses += int(config.network.az_count)
        what += f" + {config.network.az_count} internet-facing ALB"
    out.add("Amazon VPC", f"public IPv4 addresses ({what})", addresses * HOURS_PER_MONTH, "h", table.public_ipv4_hour)


def _storage(out: _Builder, config: Any, region: RegionPrices, usage: dict[str, Decimal]) -> None:
    out.add("Amazon S3", "models, S3 Standard", usage["model_gb"], "GB-month", region.s3_standard_gb_month)
    monthly_gb = usage["images_per_month"] * usage["image_mb"] / MB_PER_GB
    days = config.buckets.outputs_expiration_days
    out.add(
        "Amazon S3",
        f"images, S3 Standard: {_num(usage['images_per_month'])} x {_num(usage['image_mb'])} MB a month, "
        f"kept {days} days",
        monthly_gb * days / DAYS_PER_MONTH,
        "GB-month",
        region.s3_standard_gb_month,
    )
    out.add("Amazon ECR", "ComfyUI images", usage["ecr_gb"], "GB-month", region.ecr_gb_month)


def _load_balancers(out: _Builder, config: Any, region: RegionPrices, usage: dict[str, Decimal]) -> None:
    count = 2 if config.auth.internal_api_endpoint else 1
    what = f"{config.alb_scheme} ALB" + (" + internal API ALB" if count == 2 else "")
    out.add("Elastic Load Balancing", f"{what}, hours", count * HOURS_PER_MONTH, "h", region.alb_hour)
    out.add(
        "Elastic Load Balancing",
        f"{count} ALB x {_num(usage['alb_lcu'])} LCU (ASSUMED) x {_num(HOURS_PER_MONTH)} h",
        count * usage["alb_lcu"] * HOURS_PER_MONTH,
        "LCU-h",
        region.alb_lcu_hour,
    )


def _delivery(out: _Builder, config: Any, table: PriceTable, region: RegionPrices, usage: dict[str, Decimal]) -> None:
    """Data to users: from the ALB, or from CloudFront (origin fetches are free) with its WAF."""
    if not config.edge.cloudfront:
        out.add("Data transfer", "out to the internet", usage["transfer_out_gb"], "GB", region.transfer_out_gb)
        return
    geography, cloudfront = table.cloudfront_prices(config.region, config.edge.price_class)
    where = geography.replace("_", " ")
    out.add(
        "Amazon CloudFront",
        f"data transfer out ({where}, {config.edge.price_class})",
        usage["transfer_out_gb"],
        "GB",
        cloudfront["transfer_out_gb"],
    )
    out.add(
        "Amazon CloudFront",
        f"HTTPS requests (ASSUMED {_num(usage['requests_per_month'])})",
        usage["requests_per_month"] / 10_000,
        "10k requests",
        cloudfront["https_requests_per_10k"],
    )
    out.add(
        "AWS WAF",
        f"web ACL + {WAF_RULES} rules",
        Decimal(1),
        "month",
        table.waf_web_acl_month + WAF_RULES * table.waf_rule_month,
    )
    out.add(
        "AWS WAF", "requests", usage["requests_per_month"] / 1_000_000, "million requests", table.waf_million_requests
    )


# --------------------------------------------------------------------------------------------
# Formatting


def _num(value: Decimal | int) -> str:
    """A number as written by hand: 1.212, 73, 64,000 (no exponent, no trailing zeros)."""
    value = Decimal(value)
    if value == value.to_integral_value():
        return f"{value:,.0f}"
    return f"{value.normalize():,f}"


def _price(value: Decimal) -> str:
    """A unit price with at least cents: $0.10, $73.00, $1.212, $0.0225."""
    text = _num(value)
    decimals = len(text.partition(".")[2])
    return f"${value.quantize(Decimal(1).scaleb(-max(decimals, 2))):,}"


def _hours(value: Decimal) -> str:
    """Hours to the hundredth, whole hours without decimals: 173.33, 730, 0."""
    return _num(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _usd(value: Decimal) -> str:
    """$2.208, $73.00: cents, or tenths of a cent when they are not zero."""
    places = Decimal("0.01") if value == value.quantize(Decimal("0.01")) else CENT_TENTH
    return f"${value.quantize(places):,}"


def _quantity(item: LineItem) -> str:
    q = item.quantity
    text = _num(q) if q == q.to_integral_value() else f"{q.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return f"{text} {item.unit}"


def render_estimate(estimate: Estimate, heading: str) -> list[str]:
    """A plain aligned table: service, what, quantity x unit price = monthly; then the total."""
    rows = [
        (item.service, item.description, _quantity(item), _price(item.unit_price), _usd(item.monthly))
        for item in estimate.items
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [heading]
    for service, description, quantity, price, monthly in rows:
        lines.append(
            f"  {service:<{widths[0]}}  {description:<{widths[1]}}  {quantity:>{widths[2]}} x {price:<{widths[3]}}"
            f" = {monthly:>{widths[4]}}"
        )
    label_width = sum(widths[:4]) + 10
    lines.append(f"  {'Total a month':<{label_width}}{_usd(estimate.total):>{widths[4]}}")
    return lines


# --------------------------------------------------------------------------------------------
# The command


def run(args: argparse.Namespace) -> int:
    usage = {o.dest: getattr(args, o.dest) for o in OPTIONS if getattr(args, o.dest) is not None}
    config = _load_config(args.config)
    table = prices.load_table()
    spot_discount = args.spot_discount if args.spot_discount is not None else table.spot_discount_percent
    if args.scenario == "reference":
        _check_reference_options(args)
        region = table.reference["region"]
    else:
        _check_configuration_options(args)
        region = config.region
    if args.refresh_prices:
        table = _refresh(table, region, (*config.gpu.instance_types, config.system_nodes.instance_type))
    try:
        if args.scenario == "reference":
            document, lines = _reference_output(config, table, usage)
        else:
            document, lines = _configuration_output(config, table, usage, spot_discount, args.config)
    except PriceError as exc:
        raise UsageError(*exc.lines) from None
    if args.format == "json":
        print(json.dumps(document, indent=2))
    else:
        print("\n".join(lines))
    return 0


def _load_config(path: str | None) -> Any:
    from core.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(*exc.errors) from None


def _check_reference_options(args: argparse.Namespace) -> None:
    not_for_reference = [o.flag for o in OPTIONS if o.reference_key is None and getattr(args, o.dest) is not None]
    if args.spot_discount is not None:
        not_for_reference.append("--spot-discount")
    if not_for_reference:
        raise UsageError(
            *(
                f"{flag} applies to this configuration's estimate, not to --scenario reference; fix: drop it"
                for flag in not_for_reference
            )
        )


def _check_configuration_options(args: argparse.Namespace) -> None:
    reference_only = [
        o.flag
        for o in OPTIONS
        if o.dest in ("gpu_hours_per_day", "days_per_month") and getattr(args, o.dest) is not None
    ]
    if reference_only:
        raise UsageError(
            *(
                f"{flag} applies to --scenario reference: this configuration's GPU hours come from "
                "scaling.schedule and "
                "min_replicas; fix: change those, or add job hours with --job-gpu-hours-per-month"
                for flag in reference_only
            )
        )


def _refresh(table: PriceTable, region: str, instance_types: Sequence[str]) -> PriceTable:
    """The table with `region` from the AWS Pricing API, with progress on stderr."""
    from rich.console import Console

    console = Console(file=sys.stderr, highlight=False)
    try:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - boto3 is a dependency of the CLI
        raise CommandFailed("--refresh-prices needs boto3; fix: install the project (pipenv sync)") from None
    try:
        with console.status(f"asking the AWS Pricing API for {region} prices"):
            if not console.is_terminal:
                console.print(f"asking the AWS Pricing API for {region} prices", markup=False)
            return prices.refresh(table, region, instance_types, PRICING_CLIENT())
    except PriceError as exc:
        raise CommandFailed(*exc.lines) from None
    except (BotoCoreError, ClientError) as exc:
        raise CommandFailed(
            f"the AWS Pricing API failed: {' '.join(str(exc).split())[:200]}; fix: set AWS credentials allowed "
            "pricing:GetProducts, or drop --refresh-prices to use the embedded table"
        ) from None


def _reference_output(config: Any, table: PriceTable, usage: dict[str, Decimal]) -> tuple[Json, list[str]]:
    ref = table.reference
    overridden = {o.reference_key: usage[o.dest] for o in OPTIONS if o.reference_key and o.dest in usage}
    estimates = reference_estimates(table, overridden)
    omissions = reference_omissions(config, table, table.region(ref["region"]))
    published = {
        "users through the ALB": ref["published_total_usd"]["alb"],
        "users through CloudFront": ref["published_total_usd"]["cloudfront"],
    }
    lines = [
        f"Published estimate: {ref['source']}",
        f"region {ref['region']}; sizes in decimal units (1 GB = 1000 MB), as published; {table.source_line()}",
    ]
    variants = []
    for name, estimate in zip(("alb", "cloudfront"), estimates, strict=True):
        heading = f"{estimate.title}:"
        if not overridden:
            heading = f"{estimate.title} (published total {_usd(published[estimate.title])}):"
        lines += ["", *render_estimate(estimate, heading)]
        variant: Json = {"name": name, "title": estimate.title, "items": [i.to_json() for i in estimate.items]}
        variant["total_usd"] = _number(estimate.total)
        variant["published_total_usd"] = _number(published[estimate.title])
        variants.append(variant)
    if overridden:
        lines += [
            "",
            "with your usage assumptions: " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(overridden.items())),
        ]
    lines += ["", "What this estimate omits:", *(f"  - {line}" for line in omissions)]
    document: Json = {
        "scenario": "reference",
        "source": ref["source"],
        "region": ref["region"],
        "prices": {"as_of": table.as_of, "source": table.source_line()},
        "overrides": {k: _number(v) for k, v in sorted(overridden.items())},
        "variants": variants,
        "omissions": omissions,
    }
    return document, lines


def _configuration_output(
    config: Any, table: PriceTable, usage: dict[str, Decimal], spot_discount: Decimal, config_path: str | None
) -> tuple[Json, list[str]]:
    assumptions = {
        o.dest: usage.get(o.dest, o.default)
        for o in OPTIONS
        if o.reference_key not in ("gpu_hours_per_day", "gpu_days_per_month")
    }
    estimate, hours = config_estimate(config, table, assumptions, spot_discount)
    gpu_line = (
        f"GPU hours: this configuration keeps GPU nodes running {_hours(hours.configuration)} h a month "
        f"({hours.explanation}); with {_hours(hours.jobs)} job hours (--job-gpu-hours-per-month): "
        f"{_hours(hours.total)} h."
    )
    tail = _scale_down_tail(config)
    notes = [gpu_line, *estimate.notes, *([tail] if tail else [])]
    source = config_path or "config/default.yaml"
    lines = [f"Monthly estimate: {estimate.title} ({source})", f"{table.source_line()}", ""]
    lines += render_estimate(estimate, "")[1:]
    lines += ["", *notes]
    document: Json = {
        "scenario": "configuration",
        "project": config.project,
        "region": config.region,
        "config": source,
        "prices": {"as_of": table.as_of, "source": table.source_line()},
        "assumptions": {**{k: _number(v) for k, v in assumptions.items()}, "spot_discount": _number(spot_discount)},
        "items": [item.to_json() for item in estimate.items],
        "total_usd": _number(estimate.total),
        "gpu_hours": {
            "scheduled": _number(hours.scheduled.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)),
            "min_replicas": _number(hours.always_on),
            "configuration": _number(hours.configuration.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)),
            "jobs": _number(hours.jobs),
            "total": _number(hours.total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)),
            "explanation": hours.explanation,
        },
        "notes": notes,
    }
    return document, lines


def _scale_down_tail(config: Any) -> str | None:
    """The node time after each working day that the hours above leave out."""
    schedule = config.scaling.schedule
    if schedule is None or schedule.warm_replicas <= config.scaling.min_replicas:
        return None
    from core import rules

    linger = Decimal(config.scaling.cooldown_seconds + (rules.duration_seconds(config.gpu.consolidate_after) or 0))
    hours = (
        linger / 3600 * len(schedule.days) * WEEKS_PER_MONTH * (schedule.warm_replicas - config.scaling.min_replicas)
    )
    return (
        f"not counted: after each working day a GPU node lingers scaling.cooldown_seconds + gpu.consolidate_after "
        f"({_num(linger / 60)} min) before it is removed, about {_hours(hours)} h a month more."
    )
