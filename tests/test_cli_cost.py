"""`comfyui-eks cost` (comfyui_eks/cost.py) and its price table (comfyui_eks/prices.py).

The CLI runs in-process through comfyui_eks.cli.main. Money is compared as Decimal where the
arithmetic matters (the published estimate), as JSON floats where the output shape does.

--refresh-prices runs against botocore's Stubber at the client boundary: moto (5.2.5 here) has
no Pricing API backend, so the stub answers get_products with price-list documents shaped like
the real ones and checks the filters the command sends.
"""

from __future__ import annotations

import datetime
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]

from comfyui_eks import cli, cost, prices
from tests.helpers import default_config_data, dump_yaml

Json = dict[str, Any]
D = Decimal
REQUIRED_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
)
ITEM_KEYS = {"service", "description", "quantity", "unit", "unit_price_usd", "monthly_usd"}
CERT_REGIONAL = "arn:aws:acm:us-west-2:111122223333:certificate/0123abcd-0000-0000-0000-000000000000"
CERT_EDGE = "arn:aws:acm:us-east-1:111122223333:certificate/0123abcd-0000-0000-0000-000000000000"
COGNITO = {"mode": "cognito", "domain": "comfy.example.com", "certificate_arn": CERT_REGIONAL}


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self) -> Json:
        return dict(json.loads(self.out))


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYUI_EKS_CONFIG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    code = cli.main(["cost", *map(str, args)])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def _merge(base: Json, changes: Json) -> Json:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def config_file(tmp_path: Path, **changes: Any) -> Path:
    """config/default.yaml with `changes` merged in (nested dicts merge, other values replace)."""
    data = default_config_data()
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(_merge(data, changes)))
    return path


def items_by(document: Json, word: str) -> list[Json]:
    return [i for i in document["items"] if word in i["service"] + " " + i["description"]]


def gpu_items(document: Json) -> list[Json]:
    return [i for i in document["items"] if i["description"].startswith("GPU ")]


def total_of(document: Json, service: str) -> Decimal:
    return sum((D(str(i["monthly_usd"])) for i in document["items"] if i["service"] == service), D(0))


# --------------------------------------------------------------------------------------------
# The published reference estimate


def test_reference_reproduces_the_published_line_items_and_totals_exactly() -> None:
    table = prices.load_table()
    alb, cloudfront = cost.reference_estimates(table, {})
    lines = {(i.service, i.description.split(",")[0].split(":")[0]): i.monthly for i in alb.items}
    assert lines[("Amazon EKS", "control plane (fixed price)")] == D("73")
    assert lines[("Amazon EC2", "GPU node 1 x g5.2xlarge")] == D("1.212") * 8 * 20 == D("193.92")
    assert lines[("Amazon EC2", "system nodes 2 x t3a.xlarge")] == 2 * D("68.84") == D("137.68")
    assert lines[("Amazon S3", "models")] == 100 * D("0.023") == D("2.30")
    # 64,000 images x 1.5 MB = 96,000 MB = 96 GB (decimal, the published "/ 1000"); x $0.023.
    assert 64000 * D("1.5") / 1000 == 96
    assert lines[("Amazon S3", "images")] == 96 * D("0.023") == D("2.208")
    assert lines[("Amazon ECR", "ComfyUI images")] == 20 * D("0.1") == D("2.00")
    # ALB: $16.43 fixed + $0.008 x 730 h x 1 LCU = 16.43 + 5.84 = 22.27 (two lines, one service).
    assert alb.service_total("Elastic Load Balancing") == D("16.43") + D("0.008") * 730 == D("22.27")
    assert alb.service_total("Data transfer") == 100 * D("0.09") == D("9.00")
    assert cloudfront.service_total("Amazon CloudFront") == 100 * D("0.085") == D("8.50")
    common = D("73") + D("193.92") + D("137.68") + D("2.30") + D("2.208") + D("2.00") + D("22.27")
    assert alb.total == common + D("9.00") == D("442.378") == table.reference["published_total_usd"]["alb"]
    assert (
        cloudfront.total == common + D("8.50") == D("441.878") == table.reference["published_total_usd"]["cloudfront"]
    )


def test_reference_json_has_both_variants_with_items_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--scenario", "reference", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["scenario"] == "reference" and document["region"] == "us-west-2"
    assert [v["name"] for v in document["variants"]] == ["alb", "cloudfront"]
    for variant, total in zip(document["variants"], (442.378, 441.878), strict=True):
        assert variant["total_usd"] == variant["published_total_usd"] == total
        assert all(set(item) == ITEM_KEYS for item in variant["items"])
        assert sum(D(str(i["monthly_usd"])) for i in variant["items"]) == D(str(total))
    gpu = next(i for i in document["variants"][0]["items"] if "g5.2xlarge" in i["description"])
    assert (gpu["quantity"], gpu["unit"], gpu["unit_price_usd"], gpu["monthly_usd"]) == (160.0, "h", 1.212, 193.92)


def test_reference_text_shows_both_totals_and_what_the_estimate_omits(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--scenario", "reference")
    assert result.code == 0, result.err
    out = result.out
    assert "users through the ALB (published total $442.378):" in out
    assert "users through CloudFront (published total $441.878):" in out
    assert out.count("$442.378") == 2 and out.count("$441.878") == 2  # heading and computed total
    assert "96 GB-month x $0.023 =  $2.208" in out
    omits = out.split("What this estimate omits:")[1]
    assert "NAT gateways" in omits and "1 x 730 h x $0.045 = $32.85" in omits
    assert "2 x m6i.large On-Demand: 2 x 730 h x $0.096 = $140.16" in omits  # the real system node type
    assert "730 h x $1.212 = $884.76 ($690.84 more)" in omits  # a fixed replica runs all month
    assert "this configuration keeps 173.33 h a month" in omits


def test_reference_takes_usage_overrides_and_refuses_configuration_options(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--scenario", "reference", "--format", "json", "--gpu-hours-per-day", "10")
    assert result.code == 0, result.err
    alb = result.json()["variants"][0]
    assert result.json()["overrides"] == {"gpu_hours_per_day": 10.0}
    assert alb["total_usd"] == pytest.approx(442.378 + 1.212 * 2 * 20)
    refused = run(capsys, "--scenario", "reference", "--nat-gb", "5", "--spot-discount", "50")
    assert refused.code == 2
    assert "--nat-gb applies to this configuration's estimate" in refused.err
    assert "--spot-discount applies" in refused.err


# --------------------------------------------------------------------------------------------
# This configuration


def test_default_configuration_gpu_hours_come_from_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    # 1 warm replica x 8 h (09:00-17:00) x 5 days a week x 52/12 weeks a month = 173.33 h.
    assert D(8) * 5 * D(52) / 12 == D("173.3333333333333333333333333")
    assert document["gpu_hours"]["configuration"] == document["gpu_hours"]["total"] == 173.33
    spot, on_demand = items_by(document, "GPU g6.xlarge")  # the cheapest listed type in us-west-2
    # capacity_types [spot, on-demand]: 80% of hours on Spot at 45% of $0.8048, 20% On-Demand.
    assert spot["quantity"] == 138.6667 and spot["unit_price_usd"] == 0.36216  # 0.8048 x 0.45
    assert spot["monthly_usd"] == 50.22  # 173.333 x 0.8 x 0.36216 = 50.219...
    assert on_demand["quantity"] == 34.6667 and on_demand["monthly_usd"] == 27.9  # 34.667 x 0.8048
    assert "ASSUMED 45% of On-Demand" in spot["description"]
    assert any("GPU hours: this configuration keeps GPU nodes running 173.33 h a month" in n for n in document["notes"])


def test_default_configuration_lists_every_line_item(capsys: pytest.CaptureFixture[str]) -> None:
    document = run(capsys, "--format", "json").json()
    assert all(set(item) == ITEM_KEYS for item in document["items"])
    expected = {
        "control plane": 73.0,  # 730 h x $0.10
        "system nodes 2 x m6i.large": 140.16,  # 2 x 730 h x $0.096
        "NAT gateways, single": 32.85,  # 730 h x $0.045
        "NAT data processed": 4.5,  # 100 GB x $0.045
        "public IPv4 addresses (1 NAT)": 3.65,  # 730 h x $0.005
        "models, S3 Standard": 2.3,
        "ComfyUI images": 2.0,
        "internal ALB, hours": 16.425,  # 730 h x $0.0225
        "1 ALB x 1 LCU": 5.84,
        "out to the internet": 9.0,
    }
    for word, monthly in expected.items():
        (item,) = items_by(document, word)
        assert item["monthly_usd"] == monthly, word
    # Images kept outputs_expiration_days (30) of 365/12 days: 96 GB x 30 / 30.4167 = 94.68 GB-month.
    (images,) = items_by(document, "images, S3 Standard")
    assert images["quantity"] == pytest.approx(96 * 30 / (365 / 12), abs=1e-4)
    assert sum(D(str(i["monthly_usd"])) for i in document["items"]) == D(str(document["total_usd"]))


def test_text_output_is_a_table_with_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "Monthly estimate: project comfyui in us-west-2 (config/default.yaml)"
    total = next(line for line in lines if line.strip().startswith("Total a month"))
    assert total.endswith(f"${D(str(run(capsys, '--format', 'json').json()['total_usd'])):,}")
    assert any(line.startswith("GPU hours: this configuration keeps GPU nodes running 173.33 h") for line in lines)


def test_no_schedule_and_no_min_replicas_gpu_hours_come_only_from_jobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = config_file(tmp_path, scaling={"schedule": None, "min_replicas": 0})
    document = run(capsys, "--config", config, "--format", "json").json()
    assert document["gpu_hours"]["configuration"] == 0.0
    assert "GPU hours come only from jobs" in document["gpu_hours"]["explanation"]
    assert all(i["monthly_usd"] == 0.0 for i in gpu_items(document))
    with_jobs = run(capsys, "--config", config, "--format", "json", "--job-gpu-hours-per-month", "50").json()
    assert with_jobs["gpu_hours"]["total"] == 50.0
    assert sum(i["quantity"] for i in gpu_items(with_jobs)) == 50.0


def test_min_replicas_run_all_month_and_overlap_the_schedule(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = config_file(tmp_path, scaling={"min_replicas": 1})
    hours = run(capsys, "--config", config, "--format", "json").json()["gpu_hours"]
    # KEDA runs max(min_replicas, warm_replicas) in the window: 1 replica all month, no extra.
    assert (hours["min_replicas"], hours["scheduled"], hours["total"]) == (730.0, 0.0, 730.0)


def test_per_az_nat_gateways(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = config_file(tmp_path, network={"nat_mode": "per_az", "az_count": 3})
    document = run(capsys, "--config", config, "--format", "json").json()
    (nat,) = items_by(document, "NAT gateways")
    assert (nat["description"], nat["quantity"], nat["monthly_usd"]) == ("NAT gateways, one per AZ (3)", 2190.0, 98.55)
    (addresses,) = items_by(document, "public IPv4")
    assert addresses["quantity"] == 3 * 730.0


def test_cloudfront_adds_cloudfront_and_waf_and_moves_transfer_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = config_file(tmp_path, auth=COGNITO, edge={"cloudfront": True, "certificate_arn": CERT_EDGE})
    document = run(capsys, "--config", config, "--format", "json").json()
    assert not items_by(document, "Data transfer")  # origin fetches by CloudFront are free
    transfer, requests = items_by(document, "Amazon CloudFront")
    assert (transfer["quantity"], transfer["unit_price_usd"], transfer["monthly_usd"]) == (100.0, 0.085, 8.5)
    assert (requests["quantity"], requests["monthly_usd"]) == (100.0, 1.0)  # 1,000,000 / 10,000 x $0.01
    assert total_of(document, "AWS WAF") == D("9.00") + D("0.60")  # $5 web ACL + 4 rules x $1 + 1M x $0.60
    assert items_by(document, "internal ALB, hours")  # CloudFront reaches an internal ALB
    (addresses,) = items_by(document, "public IPv4")
    assert addresses["description"] == "public IPv4 addresses (1 NAT)"


def test_internal_api_endpoint_means_two_albs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = config_file(tmp_path, auth={**COGNITO, "internal_api_endpoint": True})
    document = run(capsys, "--config", config, "--format", "json").json()
    (hours,) = items_by(document, "ALB, hours")
    assert hours["description"] == "internet-facing ALB + internal API ALB, hours" and hours["quantity"] == 1460.0
    (lcu,) = items_by(document, "LCU")
    assert lcu["quantity"] == 1460.0
    (addresses,) = items_by(document, "public IPv4")
    assert addresses["quantity"] == (1 + 3) * 730.0  # the NAT and the internet-facing ALB in 3 AZs


@pytest.mark.parametrize(
    ("capacity", "lines"),
    [(["on-demand"], [("On-Demand (all GPU hours)", 0.8048)]), (["spot"], [("Spot (all GPU hours", 0.36216)])],
)
def test_capacity_types_decide_the_spot_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, capacity: list[str], lines: list[tuple[str, float]]
) -> None:
    config = config_file(tmp_path, gpu={"capacity_types": capacity})
    gpu = gpu_items(run(capsys, "--config", config, "--format", "json").json())
    assert [(next(w for w, _ in lines if w in i["description"]), i["unit_price_usd"]) for i in gpu] == lines
    assert gpu[0]["quantity"] == pytest.approx(173.3333, abs=1e-4)


def test_spot_discount_and_share_are_overridable(capsys: pytest.CaptureFixture[str]) -> None:
    document = run(capsys, "--format", "json", "--spot-discount", "70", "--spot-share", "50").json()
    spot, on_demand = gpu_items(document)
    assert spot["unit_price_usd"] == pytest.approx(0.8048 * 0.3)
    assert spot["quantity"] == on_demand["quantity"] == pytest.approx(86.6667, abs=1e-4)
    assert document["assumptions"]["spot_discount"] == 70.0


def test_unpriced_gpu_types_are_named_and_the_cheapest_priced_one_is_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = config_file(tmp_path, gpu={"instance_types": ["g6e.xlarge", "g5.xlarge"]})
    document = run(capsys, "--config", config, "--format", "json").json()
    assert items_by(document, "GPU g5.xlarge")
    assert any("not in the price table for us-west-2: g6e.xlarge" in n for n in document["notes"])
    none = config_file(tmp_path, gpu={"instance_types": ["p5e.48xlarge"]})
    result = run(capsys, "--config", none)
    assert result.code == 2
    assert "none of gpu.instance_types (p5e.48xlarge) is in the price table for us-west-2, which lists" in result.err
    assert "g5.2xlarge" in result.err and "--refresh-prices" in result.err


def test_region_missing_from_the_table_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "--config", config_file(tmp_path, region="eu-north-1"))
    assert result.code == 2 and result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("comfyui-eks cost: region eu-north-1 is not in the price table of 2026-07-20")
    assert "fix: add --refresh-prices" in line


def test_json_output_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    first = run(capsys, "--format", "json").out
    assert first == run(capsys, "--format", "json").out
    document = json.loads(first)
    assert list(document) == [
        "scenario", "project", "region", "config", "prices", "assumptions", "items", "total_usd", "gpu_hours", "notes",
    ]  # fmt: skip
    money = [i[k] for i in document["items"] for k in ("quantity", "unit_price_usd", "monthly_usd")]
    assert all(type(value) is float for value in [*money, document["total_usd"]])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu-hours-per-day", "8"], "--gpu-hours-per-day applies to --scenario reference"),
        (["--days-per-month", "20"], "--days-per-month applies to --scenario reference"),
        (["--model-gb", "-1"], "give a number of 0 or more"),
        (["--spot-share", "120"], "give a percentage from 0 to 100"),
        (["--images-per-month", "many"], "is not a number"),
    ],
)
def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    result = run(capsys, *args)
    assert result.code == 2 and message in result.err


def test_bad_configuration_exits_2_with_its_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, "--config", config_file(tmp_path, network={"nat_mode": "sometimes"}))
    assert result.code == 2 and "comfyui-eks cost: network.nat_mode:" in result.err


# --------------------------------------------------------------------------------------------
# The price table


def test_price_table_is_dated_sourced_and_covers_the_required_regions() -> None:
    table = prices.load_table()
    assert datetime.date.fromisoformat(table.as_of) == datetime.date(2026, 7, 20)
    assert set(table.sources) == {"karpenter", "skypilot", "services"}
    for region in REQUIRED_REGIONS:
        values = table.region(region)
        assert (
            values.instance_hour("m6i.large")
            and values.instance_hour("t3a.xlarge")
            and values.instance_hour("g4dn.xlarge")
        )
        assert all(v > 0 for v in values.ec2_on_demand_hour.values())
    assert table.spot_discount_percent == 55 and "33-54%" in table.spot_why


def test_published_unit_prices_agree_with_the_table() -> None:
    table = prices.load_table()
    ref, oregon = table.reference, table.region("us-west-2")
    assert oregon.instance_hour(ref["gpu_instance_type"]) == ref["gpu_on_demand_hour"] == D("1.212")
    assert oregon.eks_cluster_hour * 730 == ref["eks_month"]
    assert oregon.s3_standard_gb_month == ref["s3_standard_gb_month"]
    assert oregon.ecr_gb_month == ref["ecr_gb_month"]
    assert oregon.transfer_out_gb == ref["transfer_out_alb_gb"]
    assert oregon.alb_lcu_hour == ref["alb_lcu_hour"]
    assert (oregon.alb_hour * 730).quantize(D("0.01"), rounding=ROUND_HALF_UP) == ref["alb_month_fixed"]  # 16.425
    assert table.cloudfront["north_america_europe"]["transfer_out_gb"] == ref["transfer_out_cloudfront_gb"]


# --------------------------------------------------------------------------------------------
# --refresh-prices against a stubbed Pricing API client


def _price_list(usagetype: str, *tiers: tuple[str, str]) -> str:
    """One product of a get_products answer, with (beginRange, USD) price dimensions."""
    dimensions = {
        f"dim{n}": {"beginRange": begin, "endRange": "Inf", "unit": "Hrs", "pricePerUnit": {"USD": usd}}
        for n, (begin, usd) in enumerate(tiers)
    }
    return json.dumps(
        {
            "product": {"attributes": {"usagetype": usagetype}},
            "terms": {"OnDemand": {"term": {"priceDimensions": dimensions}}},
        }
    )


REFRESHED = {  # query name -> (usagetype, tiers) the stub answers with
    "eks_cluster_hour": ("EUN1-AmazonEKS-Hours:perCluster", [("0", "0.1000000000")]),
    "nat_gateway_hour": ("EUN1-NatGateway-Hours", [("0", "0.0460000000")]),
    "nat_gateway_gb": ("EUN1-NatGateway-Bytes", [("0", "0.0460000000")]),
    "alb_hour": ("EUN1-LoadBalancerUsage", [("0", "0.0240000000")]),
    "alb_lcu_hour": ("EUN1-LCUUsage", [("0", "0.0080000000")]),
    "s3_standard_gb_month": ("EUN1-TimedStorage-ByteHrs", [("0", "0.0230000000"), ("51200", "0.0220000000")]),
    "ecr_gb_month": ("EUN1-TimedStorage-ByteHrs", [("0", "0.1000000000")]),
    "ebs_gp3_gb_month": ("EUN1-EBS:VolumeUsage.gp3", [("0", "0.0836000000")]),
    "transfer_out_gb": ("EUN1-DataTransfer-Out-Bytes", [("0", "0.0000000000"), ("100", "0.0900000000")]),
}
INSTANCE_PRICES = {
    "g6.xlarge": "0.8536000000",
    "g6.2xlarge": "1.0368800000",
    "g5.xlarge": "1.0670000000",
    "m6i.large": "0.1020000000",
}


def _service_filters(region: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The get_products filters each service price is asked with, in the order they are asked."""
    at = [("regionCode", region)]
    nat = [*at, ("productFamily", "NAT Gateway")]
    alb = [*at, ("productFamily", "Load Balancer-Application")]
    return {
        "eks_cluster_hour": ("AmazonEKS", at),
        "nat_gateway_hour": ("AmazonEC2", nat),
        "nat_gateway_gb": ("AmazonEC2", nat),
        "alb_hour": ("AWSELB", alb),
        "alb_lcu_hour": ("AWSELB", alb),
        "s3_standard_gb_month": ("AmazonS3", [*at, ("productFamily", "Storage"), ("volumeType", "Standard")]),
        "ecr_gb_month": ("AmazonECR", at),
        "ebs_gp3_gb_month": ("AmazonEC2", [*at, ("volumeApiName", "gp3")]),
        "transfer_out_gb": (
            "AWSDataTransfer",
            [("fromRegionCode", region), ("transferType", "AWS Outbound"), ("toLocation", "External")],
        ),
    }


def _stubbed_pricing(region: str, *, fail: bool = False) -> tuple[Any, Stubber]:
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    if fail:
        stub.add_client_error(
            "get_products", service_error_code="AccessDeniedException", service_message="no pricing:GetProducts"
        )
        return client, stub
    for name, (service_code, filters) in _service_filters(region).items():
        usagetype, tiers = REFRESHED[name]
        terms = [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in filters]
        expected = {"ServiceCode": service_code, "FormatVersion": "aws_v1", "Filters": terms, "MaxResults": 100}
        stub.add_response("get_products", {"PriceList": [_price_list(usagetype, *tiers)]}, expected)
    for instance_type in ("g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge", "m6i.large"):
        instance_terms = [
            {"Type": "TERM_MATCH", "Field": field, "Value": value}
            for field, value in (
                ("regionCode", region),
                ("instanceType", instance_type),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
                ("licenseModel", "No License required"),
            )
        ]
        answer = (
            [_price_list("EUN1-BoxUsage", ("0", INSTANCE_PRICES[instance_type]))]
            if instance_type in INSTANCE_PRICES
            else []
        )
        expected = {"ServiceCode": "AmazonEC2", "FormatVersion": "aws_v1", "Filters": instance_terms, "MaxResults": 100}
        stub.add_response("get_products", {"PriceList": answer}, expected)
    return client, stub


def test_refresh_prices_fetches_a_region_the_table_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, stub = _stubbed_pricing("eu-north-1")
    monkeypatch.setattr(cost, "PRICING_CLIENT", lambda: client)
    config = config_file(tmp_path, region="eu-north-1")
    with stub:
        result = run(capsys, "--config", config, "--format", "json", "--refresh-prices")
        stub.assert_no_pending_responses()
    assert result.code == 0, result.err
    document = result.json()
    assert document["prices"]["source"].startswith("prices: AWS Pricing API on ")
    assert "asking the AWS Pricing API for eu-north-1 prices" in result.err
    (nat,) = items_by(document, "NAT gateways")
    assert nat["unit_price_usd"] == 0.046
    (transfer,) = items_by(document, "out to the internet")
    assert transfer["unit_price_usd"] == 0.09  # the first paid tier, not the free one
    (models,) = items_by(document, "models, S3")
    assert models["unit_price_usd"] == 0.023  # the first tier, not the one above 50 TB
    assert [i["unit_price_usd"] for i in items_by(document, "GPU g6.xlarge, On-Demand")] == [0.8536]
    assert any("not in the price table for eu-north-1: g5.2xlarge" in n for n in document["notes"])


def test_refresh_prices_failure_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, stub = _stubbed_pricing("us-west-2", fail=True)
    monkeypatch.setattr(cost, "PRICING_CLIENT", lambda: client)
    with stub:
        result = run(capsys, "--refresh-prices")
    assert result.code == 1
    assert "the AWS Pricing API failed" in result.err and "pricing:GetProducts" in result.err


def test_refresh_keeps_the_rest_of_the_table_and_dates_it() -> None:
    client, stub = _stubbed_pricing("eu-north-1")
    table = prices.load_table()
    with stub:
        fresh = prices.refresh(
            table, "eu-north-1", ["g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge", "m6i.large"], client,
            today=lambda: datetime.date(2026, 8, 1),
        )  # fmt: skip
    assert fresh.as_of == "2026-08-01" and fresh.refreshed == ("eu-north-1",)
    assert fresh.region("us-west-2") == table.region("us-west-2")
    assert fresh.region("eu-north-1").ec2_on_demand_hour == {k: D(v) for k, v in INSTANCE_PRICES.items()}
