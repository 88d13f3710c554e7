"""AWS list prices for `comfyui-eks cost`: the embedded, dated table and its refresh.

The table (comfyui_eks/data/prices.json) says where every figure comes from and when; it is
read with Decimal so that published estimates reproduce to the tenth of a cent. A region or an
instance type it lacks is an error that names --refresh-prices: `refresh` asks the AWS Pricing
API (the `pricing` client, endpoint us-east-1) for one region's figures and returns a new table.
Spot has no list price: the table carries a documented discount assumption instead.

boto3 is imported only by `pricing_client`, so estimates from the table never load it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

# Pricing API endpoint (the API is served from us-east-1 and a few others; us-east-1 has all).
PRICING_REGION = "us-east-1"
# One month of hours, as AWS's calculator and the published estimates count it.
HOURS_PER_MONTH = Decimal(730)

# Where CloudFront users are served from, by region prefix, for regions not in the table.
_CLOUDFRONT_GEOGRAPHY_BY_PREFIX = (
    ("ap-northeast-1", "japan"),
    ("ap-northeast-3", "japan"),
    ("ap-", "asia_pacific"),
)


class PriceError(Exception):
    """A price the table does not have: `lines` say which and how to get it."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class RegionPrices:
    """List prices (USD) of one region."""

    region: str
    location: str
    eks_cluster_hour: Decimal
    nat_gateway_hour: Decimal
    nat_gateway_gb: Decimal
    alb_hour: Decimal
    alb_lcu_hour: Decimal
    s3_standard_gb_month: Decimal
    ecr_gb_month: Decimal
    ebs_gp3_gb_month: Decimal
    transfer_out_gb: Decimal
    cloudfront_geography: str
    ec2_source: str
    ec2_on_demand_hour: Mapping[str, Decimal]

    def instance_hour(self, instance_type: str) -> Decimal | None:
        """The On-Demand Linux hourly price, or None when the table does not list the type."""
        return self.ec2_on_demand_hour.get(instance_type)


@dataclass(frozen=True)
class PriceTable:
    """The whole table: dated, with its sources, per-region prices and global prices."""

    as_of: str
    sources: Mapping[str, str]
    notes: tuple[str, ...]
    spot_discount_percent: Decimal
    spot_why: str
    public_ipv4_hour: Decimal
    cloudfront: Mapping[str, Mapping[str, Decimal]]
    waf_web_acl_month: Decimal
    waf_rule_month: Decimal
    waf_million_requests: Decimal
    regions: Mapping[str, RegionPrices]
    reference: Mapping[str, Any]
    refreshed: tuple[str, ...] = field(default=())  # regions whose figures came from the API

    def region(self, name: str) -> RegionPrices:
        """The prices of `name`; PriceError (naming --refresh-prices) when the table lacks it."""
        try:
            return self.regions[name]
        except KeyError:
            raise PriceError(
                f"region {name} is not in the price table of {self.as_of} (it has {', '.join(sorted(self.regions))}); "
                "fix: add --refresh-prices to fetch its prices from the AWS Pricing API (needs AWS credentials "
                "allowed pricing:GetProducts)"
            ) from None

    def cloudfront_prices(self, region: str, price_class: str) -> tuple[str, Mapping[str, Decimal]]:
        """CloudFront's transfer and request prices for users near `region`.

        PriceClass_100 serves only from edges in North America and Europe, so users elsewhere
        are served (and billed) there too.
        """
        geography = self.regions[region].cloudfront_geography if region in self.regions else geography_of(region)
        if price_class == "PriceClass_100":
            geography = "north_america_europe"
        return geography, self.cloudfront[geography]

    def source_line(self) -> str:
        """One line saying where the prices come from."""
        if self.refreshed:
            return (
                f"prices: AWS Pricing API on {self.as_of} ({', '.join(self.refreshed)}), "
                "CloudFront and WAF from the embedded table"
            )
        return f"prices: embedded table of {self.as_of} (comfyui_eks/data/prices.json; refresh with --refresh-prices)"


def geography_of(region: str) -> str:
    """The CloudFront price geography of users near `region` (North America/Europe by default)."""
    for prefix, geography in _CLOUDFRONT_GEOGRAPHY_BY_PREFIX:
        if region.startswith(prefix):
            return geography
    return "north_america_europe"


# --------------------------------------------------------------------------------------------
# The embedded table


def load_table() -> PriceTable:
    """The embedded table, numbers as Decimal (binary floats would lose the published cents)."""
    text = resources.files("comfyui_eks").joinpath("data/prices.json").read_text(encoding="utf-8")
    return parse_table(json.loads(text, parse_float=Decimal, parse_int=Decimal))


def parse_table(data: Mapping[str, Any]) -> PriceTable:
    glob = data["global"]
    return PriceTable(
        as_of=str(data["as_of"]),
        sources=dict(data["sources"]),
        notes=tuple(data["notes"]),
        spot_discount_percent=data["spot_assumption"]["discount_percent"],
        spot_why=data["spot_assumption"]["why"],
        public_ipv4_hour=glob["public_ipv4_hour"],
        cloudfront={name: dict(prices) for name, prices in glob["cloudfront"].items()},
        waf_web_acl_month=glob["waf_web_acl_month"],
        waf_rule_month=glob["waf_rule_month"],
        waf_million_requests=glob["waf_million_requests"],
        regions={name: _region(name, values) for name, values in data["regions"].items()},
        reference=dict(data["reference_scenario"]),
    )


def _region(name: str, values: Mapping[str, Any]) -> RegionPrices:
    fields = {f.name for f in dataclasses.fields(RegionPrices)} - {"region", "ec2_on_demand_hour"}
    return RegionPrices(
        region=name,
        ec2_on_demand_hour=dict(values["ec2_on_demand_hour"]),
        **{key: values[key] for key in fields},
    )


# --------------------------------------------------------------------------------------------
# Refresh from the AWS Pricing API


@dataclass(frozen=True)
class _Query:
    """One get_products query and how to pick the price out of its answer."""

    name: str  # the RegionPrices field it fills
    service_code: str
    filters: tuple[tuple[str, str], ...]
    usage_suffix: str | None = None  # keep only products whose usagetype ends with this


def _service_queries(region: str) -> list[_Query]:
    """The queries for every non-EC2-instance price of a region (the brief's filters)."""
    return [
        _Query("eks_cluster_hour", "AmazonEKS", (("regionCode", region),), "AmazonEKS-Hours:perCluster"),
        _Query(
            "nat_gateway_hour",
            "AmazonEC2",
            (("regionCode", region), ("productFamily", "NAT Gateway")),
            "NatGateway-Hours",
        ),
        _Query(
            "nat_gateway_gb",
            "AmazonEC2",
            (("regionCode", region), ("productFamily", "NAT Gateway")),
            "NatGateway-Bytes",
        ),
        _Query(
            "alb_hour",
            "AWSELB",
            (("regionCode", region), ("productFamily", "Load Balancer-Application")),
            "LoadBalancerUsage",
        ),
        _Query(
            "alb_lcu_hour",
            "AWSELB",
            (("regionCode", region), ("productFamily", "Load Balancer-Application")),
            "LCUUsage",
        ),
        _Query(
            "s3_standard_gb_month",
            "AmazonS3",
            (("regionCode", region), ("productFamily", "Storage"), ("volumeType", "Standard")),
            "TimedStorage-ByteHrs",
        ),
        _Query("ecr_gb_month", "AmazonECR", (("regionCode", region),), "TimedStorage-ByteHrs"),
        _Query("ebs_gp3_gb_month", "AmazonEC2", (("regionCode", region), ("volumeApiName", "gp3")), "VolumeUsage.gp3"),
        _Query(
            "transfer_out_gb",
            "AWSDataTransfer",
            (("fromRegionCode", region), ("transferType", "AWS Outbound"), ("toLocation", "External")),
        ),
    ]


def _instance_query(region: str, instance_type: str) -> _Query:
    """On-Demand Linux, shared tenancy, no pre-installed software, a used (not reserved) capacity."""
    return _Query(
        instance_type,
        "AmazonEC2",
        (
            ("regionCode", region),
            ("instanceType", instance_type),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
            ("licenseModel", "No License required"),
        ),
    )


def pricing_client() -> Any:
    """A boto3 Pricing API client (imported here: only --refresh-prices needs boto3)."""
    import boto3  # type: ignore[import-untyped]

    return boto3.client("pricing", region_name=PRICING_REGION)


def refresh(
    table: PriceTable,
    region: str,
    instance_types: Iterable[str],
    client: Any,
    *,
    today: Callable[[], datetime.date] = datetime.date.today,
) -> PriceTable:
    """A copy of `table` whose `region` holds the Pricing API's current prices.

    Every service price must come back; instance types the API does not sell in the region
    are left out (the estimate then says so). Raises PriceError for prices the API lacks.
    """
    base = table.regions.get(region)
    missing: list[str] = []
    values: dict[str, Decimal] = {}
    for query in _service_queries(region):
        price = _first_paid_price(_products(client, query), query.usage_suffix)
        if price is None:
            missing.append(f"{query.name} ({query.service_code})")
        else:
            values[query.name] = price
    if missing:
        raise PriceError(
            f"the AWS Pricing API has no {', '.join(missing)} for region {region}; fix: check the region "
            "name, or estimate in a region of the embedded table"
        )
    ec2: dict[str, Decimal] = {}
    for instance_type in dict.fromkeys(instance_types):
        price = _first_paid_price(_products(client, _instance_query(region, instance_type)), None)
        if price is not None:
            ec2[instance_type] = price
    refreshed = RegionPrices(
        region=region,
        location=base.location if base else region,
        eks_cluster_hour=values["eks_cluster_hour"],
        nat_gateway_hour=values["nat_gateway_hour"],
        nat_gateway_gb=values["nat_gateway_gb"],
        alb_hour=values["alb_hour"],
        alb_lcu_hour=values["alb_lcu_hour"],
        s3_standard_gb_month=values["s3_standard_gb_month"],
        ecr_gb_month=values["ecr_gb_month"],
        ebs_gp3_gb_month=values["ebs_gp3_gb_month"],
        transfer_out_gb=values["transfer_out_gb"],
        cloudfront_geography=base.cloudfront_geography if base else geography_of(region),
        ec2_source="pricing_api",
        ec2_on_demand_hour=ec2,
    )
    return dataclasses.replace(
        table,
        as_of=today().isoformat(),
        regions={**table.regions, region: refreshed},
        refreshed=(*table.refreshed, region),
    )


def _products(client: Any, query: _Query) -> list[dict[str, Any]]:
    """Every product of a query, following NextToken."""
    request: dict[str, Any] = {
        "ServiceCode": query.service_code,
        "FormatVersion": "aws_v1",
        "Filters": [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in query.filters],
        "MaxResults": 100,
    }
    products: list[dict[str, Any]] = []
    for _page in range(50):  # a bounded walk: these queries answer in one or two pages
        answer = client.get_products(**request)
        products += [json.loads(item) if isinstance(item, str) else item for item in answer.get("PriceList", [])]
        token = answer.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    return products


def _first_paid_price(products: list[dict[str, Any]], usage_suffix: str | None) -> Decimal | None:
    """The On-Demand price of the lowest paid tier (tiers that cost 0 are free tiers)."""
    tiers: list[tuple[Decimal, Decimal]] = []
    for product in products:
        usage = str(product.get("product", {}).get("attributes", {}).get("usagetype", ""))
        if usage_suffix is not None and not usage.endswith(usage_suffix):
            continue
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                price = Decimal(str(dimension.get("pricePerUnit", {}).get("USD", "0")))
                if price > 0:
                    tiers.append((Decimal(str(dimension.get("beginRange", "0"))), price))
    if not tiers:
        return None
    return min(tiers)[1]
