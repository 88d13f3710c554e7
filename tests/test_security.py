"""Targeted assertions for the security-relevant properties of the synthesized Terraform."""

from __future__ import annotations

import json

import pytest

from modules.cluster import CONTROL_PLANE_LOG_TYPES


def _module(synth, cycle: str, source: str) -> dict:
    modules = synth.stack(cycle).get("module", {})
    found = [m for m in modules.values() if m["source"] == source]
    assert len(found) == 1, f"expected one {source} module in {cycle}"
    return found[0]


def _by_bucket(synth, cycle: str, rtype: str) -> dict[str, dict]:
    """Map bucket resource reference → the `rtype` resource attached to it."""
    out = {}
    for res in synth.resources(cycle, rtype).values():
        out[res["bucket"]] = res
    return out


def _buckets(synth):
    for cycle in ("state", "platform"):
        for key, bucket in synth.resources(cycle, "aws_s3_bucket").items():
            yield cycle, key, bucket


def test_every_bucket_has_the_baseline(synth_variants):
    for synth in synth_variants.values():
        for cycle, key, bucket in _buckets(synth):
            ref = f"${{aws_s3_bucket.{key}.id}}"
            pab = _by_bucket(synth, cycle, "aws_s3_bucket_public_access_block")[ref]
            assert all(
                pab[k] is True
                for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
            )
            own = _by_bucket(synth, cycle, "aws_s3_bucket_ownership_controls")[ref]
            assert own["rule"]["object_ownership"] == "BucketOwnerEnforced"
            enc = _by_bucket(synth, cycle, "aws_s3_bucket_server_side_encryption_configuration")[ref]
            default = enc["rule"][0]["apply_server_side_encryption_by_default"]
            is_log_bucket = "logs" in bucket["bucket"] or "s3logs" in bucket["bucket"]
            if is_log_bucket:
                # S3 server access logging cannot deliver into SSE-KMS buckets.
                assert default["sse_algorithm"] == "AES256"
            else:
                assert default["sse_algorithm"] == "aws:kms", bucket["bucket"]
                assert default["kms_master_key_id"].startswith("${aws_kms_key."), bucket["bucket"]
                assert ref in _by_bucket(synth, cycle, "aws_s3_bucket_logging"), (
                    f"{bucket['bucket']} has no access logging"
                )
            policy_ref = _by_bucket(synth, cycle, "aws_s3_bucket_policy")[ref]["policy"]
            doc_key = policy_ref.split(".")[2]
            doc = synth.stack(cycle)["data"]["aws_iam_policy_document"][doc_key]
            deny = [s for s in doc["statement"] if s["effect"] == "Deny"]
            assert any(
                s["condition"][0]["variable"] == "aws:SecureTransport"
                and s["condition"][0]["values"] == ["false"]
                and len(s["resources"]) == 2
                for s in deny
            ), f"{bucket['bucket']} lacks a TLS-only policy"


def test_state_bucket_versioned_and_kms(synth):
    buckets = synth.resources("state", "aws_s3_bucket")
    state_key = next(k for k, b in buckets.items() if b["bucket"] == synth.config.state_bucket)
    ref = f"${{aws_s3_bucket.{state_key}.id}}"
    versioning = _by_bucket(synth, "state", "aws_s3_bucket_versioning")[ref]
    assert versioning["versioning_configuration"]["status"] == "Enabled"
    keys = synth.resources("state", "aws_kms_key")
    assert keys and all(k["enable_key_rotation"] is True for k in keys.values())


def test_kms_keys_rotate_and_have_policies(synth_variants):
    for synth in synth_variants.values():
        for cycle in ("state", "platform"):
            for key in synth.resources(cycle, "aws_kms_key").values():
                assert key["enable_key_rotation"] is True
                policy = json.loads(key["policy"])
                admins = [s for s in policy["Statement"] if s["Sid"] == "AccountAdministers"]
                assert admins[0]["Principal"]["AWS"] == [
                    f"arn:{synth.config.partition}:iam::{synth.config.account_id}:root"
                ]


def test_backends_remote_encrypted_and_locked(synth_variants):
    for synth in synth_variants.values():
        for name, data in synth.stacks.items():
            backend = data["terraform"]["backend"]
            if name == synth.config.stack_name("state"):
                assert backend == {"local": {"path": f"../../../{name}.tfstate"}}
                continue
            s3 = backend["s3"]
            assert s3["bucket"] == synth.config.state_bucket
            assert s3["key"] == f"{name}/terraform.tfstate"
            assert s3["encrypt"] is True and s3["use_lockfile"] is True
            assert s3["kms_key_id"].endswith(f":alias/{synth.config.project}-tfstate")


def test_aws_provider_pinned_and_account_locked(synth_variants):
    for synth in synth_variants.values():
        for name, data in synth.stacks.items():
            assert data["terraform"]["required_providers"]["aws"]["version"] == "6.25.0"
            for provider in data["provider"]["aws"]:
                assert provider["allowed_account_ids"] == [synth.config.account_id], name


def test_eks_logging_encryption_auth_and_imds(synth_variants):
    for synth in synth_variants.values():
        eks = _module(synth, "platform", "terraform-aws-modules/eks/aws")
        assert eks["version"] == "21.11.0"
        assert set(eks["enabled_log_types"]) == set(CONTROL_PLANE_LOG_TYPES)
        assert eks["encryption_config"] == {"resources": ["secrets"]}
        assert eks["create_kms_key"] is True and eks["enable_kms_key_rotation"] is True
        assert eks["authentication_mode"] == "API"
        assert eks["endpoint_private_access"] is True
        public = list(synth.config.network.api_public_cidrs)
        # A public endpoint only for the listed ranges; none at all when the list is empty.
        assert eks["endpoint_public_access"] is bool(public)
        assert eks.get("endpoint_public_access_cidrs", []) == public
        for group in eks["eks_managed_node_groups"].values():
            meta = group["metadata_options"]
            assert meta["http_tokens"] == "required"
            assert meta["http_put_response_hop_limit"] == 1
            for device in group["block_device_mappings"].values():
                assert device["ebs"]["encrypted"] is True
        cni = json.loads(eks["addons"]["vpc-cni"]["configuration_values"])
        assert cni["enableNetworkPolicy"] == "true"


def test_cluster_access_only_for_the_configured_roles(synth_variants):
    """Nobody but the creator by default; listed viewers get read-only access (what a CI plan
    needs), listed admins cluster-admin, each cluster-wide and with this partition's policies."""
    assert _module(synth_variants["default"], "platform", "terraform-aws-modules/eks/aws")["access_entries"] == {}
    synth = synth_variants["edge-cognito"]
    entries = _module(synth, "platform", "terraform-aws-modules/eks/aws")["access_entries"]
    access = synth.config.cluster_access
    assert access.viewer_role_arns and access.admin_role_arns
    by_principal = {e["principal_arn"]: e for e in entries.values()}
    assert set(by_principal) == {*access.viewer_role_arns, *access.admin_role_arns}
    for arns, policy in (
        (access.viewer_role_arns, "AmazonEKSAdminViewPolicy"),
        (access.admin_role_arns, "AmazonEKSClusterAdminPolicy"),
    ):
        for arn in arns:
            (association,) = by_principal[arn]["policy_associations"].values()
            assert association == {
                "policy_arn": f"arn:{synth.config.partition}:eks::aws:cluster-access-policy/{policy}",
                "access_scope": {"type": "cluster"},
            }
    assert all(k.replace("-", "").replace("_", "").isalnum() for k in entries), sorted(entries)


def test_vpc_private_by_default(synth_variants):
    for synth in synth_variants.values():
        vpc = _module(synth, "platform", "terraform-aws-modules/vpc/aws")
        assert vpc["map_public_ip_on_launch"] is False
        assert vpc["manage_default_security_group"] is True
        assert vpc["default_security_group_ingress"] == [] and vpc["default_security_group_egress"] == []
        assert vpc["enable_flow_log"] is True
        assert vpc["single_nat_gateway"] is (synth.config.network.nat_mode == "single")
        assert vpc["one_nat_gateway_per_az"] is (synth.config.network.nat_mode == "per_az")
        assert vpc["private_subnet_tags"]["karpenter.sh/discovery"] == synth.config.cluster_name
        endpoints = synth.resources("platform", "aws_vpc_endpoint")
        assert any(
            e["service_name"] == f"com.amazonaws.{synth.config.region}.s3" and e["vpc_endpoint_type"] == "Gateway"
            for e in endpoints.values()
        )


@pytest.mark.parametrize(("cidr", "azs"), [("10.42.0.0/16", 3), ("10.0.0.0/20", 6), ("172.16.0.0/18", 2)])
def test_subnet_plan_is_disjoint_and_inside_the_vpc(cidr, azs):
    import ipaddress

    from modules.network import subnet_plan

    plan = subnet_plan(cidr, azs)
    nets = [ipaddress.IPv4Network(n) for n in plan.private + plan.internal_alb + plan.public]
    assert len(plan.private) == len(plan.internal_alb) == len(plan.public) == azs
    vpc = ipaddress.IPv4Network(cidr)
    assert all(n.subnet_of(vpc) for n in nets)
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    for private, small in zip(plan.private, plan.internal_alb + plan.public, strict=False):
        assert ipaddress.IPv4Network(private).num_addresses >= 8 * ipaddress.IPv4Network(small).num_addresses
    # An ALB needs a /27 at least (8 free addresses).
    assert all(ipaddress.IPv4Network(n).prefixlen <= 27 for n in plan.internal_alb + plan.public)
