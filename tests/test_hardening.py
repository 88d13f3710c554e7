"""Hardening (issue 8): destroy safety, who can reach the EKS API and the ComfyUI pods,
least-privilege IAM, redacted WAF logs, pinned images and AMIs, alarms.

Each test states the property it proves; where the property is about what AWS or Terraform
would do, the test runs the real thing (the guard program with the real `aws` CLI against a
local S3) or checks the synthesized JSON the real thing would receive.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest
import yaml

from core import names
from core.config import ConfigError, parse_config
from modules.network import INTERNAL_ELB_TAG, PUBLIC_ELB_TAG, subnet_plan
from stacks.app import warnings_for
from tests.conftest import variant_config
from tests.helpers import REPO, default_config_data, moto_client, tool
from tests.k8s import terraform_literal

GUARD = REPO / "modules" / "hooks" / "require-empty-bucket.sh"


def _config(**sections):
    return parse_config(default_config_data(**sections))


def _ref_key(ref: str) -> str:
    """`${aws_s3_bucket.NAME.id}` -> `aws_s3_bucket.NAME`."""
    return ".".join(ref.strip("${}").split(".")[:2])


# --- 3. destroy safety ---------------------------------------------------------------------


PROTECTIONS = {
    "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_policy",
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_versioning",
    "aws_s3_bucket_lifecycle_configuration",
    "aws_s3_bucket_logging",
}


def _bucket_resources(stack: dict) -> dict[str, set[str]]:
    """bucket address -> addresses of the resources that protect it (`bucket = <its id>`)."""
    out: dict[str, set[str]] = {}
    for rtype, resources in stack["resource"].items():
        for name, body in resources.items():
            ref = body.get("bucket")
            if rtype in PROTECTIONS and isinstance(ref, str) and ref.startswith("${aws_s3_bucket."):
                out.setdefault(_ref_key(ref), set()).add(f"{rtype}.{name}")
    return out


@pytest.mark.parametrize("variant", ["default", "public-unauthenticated"])
def test_buckets_depend_on_their_keys_and_protect_data_as_configured(synth_variants, variant):
    synth = synth_variants[variant]
    protect = synth.config.data_protection.prevent_destroy
    data_buckets = {
        synth.config.state_bucket,
        synth.config.models_bucket,
        synth.config.inputs_bucket,
        synth.config.outputs_bucket,
    }
    protected_keys = {f"{synth.config.project}-tfstate", f"{synth.config.project}-data"}
    for cycle in ("state", "platform"):
        stack = synth.stack(cycle)
        aliases = {
            a["target_key_id"].split(".")[1]: a["name"].removeprefix("alias/")
            for a in stack["resource"]["aws_kms_alias"].values()
        }
        for name, key in stack["resource"]["aws_kms_key"].items():
            wanted = protect and aliases[name] in protected_keys
            assert key.get("lifecycle", {}).get("prevent_destroy", False) is wanted, (cycle, aliases[name])
        encryption = {
            _ref_key(e["bucket"]): e["rule"][0]["apply_server_side_encryption_by_default"]
            for e in stack["resource"]["aws_s3_bucket_server_side_encryption_configuration"].values()
        }
        for name, bucket in stack["resource"]["aws_s3_bucket"].items():
            default = encryption[f"aws_s3_bucket.{name}"]
            if default["sse_algorithm"] == "aws:kms":
                # The key outlives the bucket: a failed bucket destroy never deletes the key.
                assert bucket["depends_on"] == [_ref_key(default["kms_master_key_id"])], bucket["bucket"]
            wanted = protect and bucket["bucket"] in data_buckets
            assert bucket.get("lifecycle", {}).get("prevent_destroy", False) is wanted, bucket["bucket"]


def test_every_bucket_is_guarded_before_its_protections_go(synth_variants):
    """Terraform destroys dependents first. The guard depends on every resource that protects
    its bucket, so it runs before any of them is destroyed and stops the destroy while the
    bucket holds data; the bucket keeps its policy, public access block and encryption."""
    for variant, synth in synth_variants.items():
        for cycle in ("state", "platform"):
            stack = synth.stack(cycle)
            attached = _bucket_resources(stack)
            guards = {
                g["input"]["bucket"]: g for g in stack["resource"]["terraform_data"].values() if "provisioner" in g
            }
            for name, bucket in stack["resource"]["aws_s3_bucket"].items():
                guard = guards[bucket["bucket"]]
                assert set(guard["depends_on"]) == attached[f"aws_s3_bucket.{name}"], (variant, bucket["bucket"])
                assert {
                    "aws_s3_bucket_policy",
                    "aws_s3_bucket_public_access_block",
                    "aws_s3_bucket_server_side_encryption_configuration",
                } <= {a.split(".")[0] for a in guard["depends_on"]}
                (provisioner,) = guard["provisioner"]
                local = provisioner["local-exec"]
                assert local["when"] == "destroy" and local["interpreter"] == ["bash"]
                assert local["environment"] == {"BUCKET": "${self.input.bucket}", "AWS_REGION": "${self.input.region}"}
                script = synth.paths[synth.config.stack_name(cycle)].parent / local["command"].removeprefix(
                    "${path.module}/"
                )
                assert script.read_bytes() == GUARD.read_bytes()


def test_platform_depends_on_the_state_stack(synth):
    manifest = json.loads((synth.outdir / "manifest.json").read_text())
    platform = manifest["stacks"][synth.config.stack_name("platform")]
    assert synth.config.stack_name("state") in platform["dependencies"]


@pytest.fixture
def s3(aws_cli_env):
    return moto_client("s3", aws_cli_env["AWS_ENDPOINT_URL"])


def _guard(env: dict, bucket: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(GUARD)], env={**env, "BUCKET": bucket}, capture_output=True, text=True, timeout=60
    )


def test_guard_passes_empty_and_missing_buckets_and_stops_on_any_data(aws_cli_env, s3, tmp_path):
    """The real `aws` CLI against a local S3: an empty or already deleted bucket passes; any
    object, older version or delete marker stops the destroy with the fix."""
    tool("aws")
    bucket = f"guard-{tmp_path.name.lower().replace('_', '-')[-30:]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert _guard(aws_cli_env, bucket).returncode == 0
    assert _guard(aws_cli_env, bucket + "-gone").returncode == 0
    s3.put_object(Bucket=bucket, Key="checkpoints/model.safetensors", Body=b"x")
    full = _guard(aws_cli_env, bucket)
    assert full.returncode == 1 and "still holds objects" in full.stderr and "fix:" in full.stderr
    s3.delete_object(Bucket=bucket, Key="checkpoints/model.safetensors")  # a delete marker; the version stays
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")
    assert _guard(aws_cli_env, bucket).returncode == 1, "older versions are data too"


def test_guard_fails_closed_when_it_cannot_look(aws_cli_env):
    # Nothing listens there; one attempt (the CLI would otherwise back off through 5 retries).
    env = {
        **aws_cli_env,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }
    result = _guard(env, "any-bucket")
    assert result.returncode == 1 and "cannot check" in result.stderr


# --- 6. the EKS API endpoint -------------------------------------------------------------


def _eks(synth) -> dict:
    return next(m for m in synth.stack("platform")["module"].values() if m["source"] == "terraform-aws-modules/eks/aws")


def test_api_endpoint_is_private_by_default(synth):
    eks = _eks(synth)
    assert eks["endpoint_public_access"] is False and eks["endpoint_private_access"] is True
    assert "endpoint_public_access_cidrs" not in eks and "security_group_additional_rules" not in eks
    assert warnings_for(synth.config) == []


def test_api_endpoint_lists_who_may_reach_it(synth_variants):
    synth = synth_variants["edge-cognito"]
    eks = _eks(synth)
    network = synth.config.network
    assert eks["endpoint_public_access"] is True
    assert eks["endpoint_public_access_cidrs"] == list(network.api_public_cidrs)
    (rule,) = eks["security_group_additional_rules"].values()
    assert rule == {
        "description": "Kubernetes API from peered networks and VPN clients",
        "protocol": "tcp",
        "from_port": 443,
        "to_port": 443,
        "type": "ingress",
        "cidr_blocks": list(network.api_private_cidrs),
    }


def test_api_open_to_everyone_only_acknowledged_and_with_a_warning(synth_variants):
    synth = synth_variants["public-unauthenticated"]
    assert _eks(synth)["endpoint_public_access_cidrs"] == ["0.0.0.0/0"]
    assert any("EKS API endpoint to the whole internet" in w for w in warnings_for(synth.config))
    for wide in ("0.0.0.0/0", "0.0.0.0/1", "64.0.0.0/7"):
        with pytest.raises(ConfigError) as exc:
            _config(network={"api_public_cidrs": [wide]})
        assert any(e.startswith("network:") and "acknowledge_public_api" in e for e in exc.value.errors), (
            exc.value.errors
        )


# --- 5. only the load balancers reach ComfyUI --------------------------------------------

MODES = {
    "internal": {"auth": {"mode": "internal"}},
    "cognito": {
        "auth": {
            "mode": "cognito",
            "domain": "a.example.com",
            "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
        }
    },
    "cognito+api": {
        "auth": {
            "mode": "cognito",
            "domain": "a.example.com",
            "internal_api_endpoint": True,
            "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
        }
    },
    "none": {"auth": {"mode": "none", "acknowledge_public_unauthenticated": True}},
    "cognito+cloudfront": {
        "auth": {
            "mode": "cognito",
            "domain": "a.example.com",
            "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
        },
        "edge": {"cloudfront": True, "certificate_arn": "arn:aws:acm:us-east-1:111122223333:certificate/abc-2"},
    },
    "none+cloudfront": {
        "auth": {"mode": "none", "acknowledge_public_unauthenticated": True, "domain": "a.example.com"},
        "edge": {"cloudfront": True, "certificate_arn": "arn:aws:acm:us-east-1:111122223333:certificate/abc-2"},
    },
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(
    "network", [{"vpc_cidr": "10.42.0.0/16", "az_count": 3}, {"vpc_cidr": "172.16.0.0/20", "az_count": 6}]
)
def test_network_policy_admits_only_load_balancer_subnets(mode, network):
    """For every auth/edge mode: the NetworkPolicy admits exactly the subnets the mode's ALBs
    are pinned to, and none of them overlaps a subnet that holds nodes or pods."""
    from modules import comfyui
    from stacks.ingress import ExposureSubnets, api_ingress_settings, ingress_settings

    config = _config(network=network, **MODES[mode])
    plan = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    subnets = ExposureSubnets(internal="subnet-internal-alb", public="subnet-public")
    cognito = {"userPoolARN": "x", "userPoolClientID": "y", "userPoolDomain": "z"}
    main = ingress_settings(config, cognito=cognito, subnet_ids=subnets)
    api = api_ingress_settings(config, subnet_ids=subnets)
    objects = comfyui.comfyui_manifests(
        image="r:t",
        model_cache_wait_seconds=60,
        runner=comfyui.JobRunnerSettings(
            table="t", queue_url="q", inputs_bucket="i", outputs_bucket="o", region="us-west-2", timeout_seconds=60
        ),
        settings=main,
        api_settings=api,
    )
    policy = objects["comfyui_networkpolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"] and len(policy["ingress"]) == 1
    admitted = {b["ipBlock"]["cidr"] for b in policy["ingress"][0]["from"]}
    expected: set[str] = set()
    for ingress in (o for o in objects.values() if o["kind"] == "Ingress"):
        a = ingress["metadata"]["annotations"]
        internal = a["alb.ingress.kubernetes.io/scheme"] == "internal"
        assert a["alb.ingress.kubernetes.io/subnets"] == (subnets.internal if internal else subnets.public)
        expected |= set(plan.internal_alb if internal else plan.public)
    assert admitted == expected
    nodes_and_pods = [ipaddress.IPv4Network(c) for c in plan.private]
    assert not any(ipaddress.IPv4Network(c).overlaps(n) for c in admitted for n in nodes_and_pods)


def test_alb_subnets_exist_as_planned_and_nothing_else_is_tagged_for_internal_albs(synth_variants):
    for variant, synth in synth_variants.items():
        plan = subnet_plan(synth.config.network.vpc_cidr, synth.config.network.az_count)
        stack = synth.stack("platform")
        subnets = stack["resource"]["aws_subnet"].values()
        assert sorted(s["cidr_block"] for s in subnets) == sorted(plan.internal_alb), variant
        assert all(s["tags"][INTERNAL_ELB_TAG] == "1" and s["map_public_ip_on_launch"] is False for s in subnets)
        vpc = next(m for m in stack["module"].values() if m["source"] == "terraform-aws-modules/vpc/aws")
        assert INTERNAL_ELB_TAG not in vpc["private_subnet_tags"], "node subnets must not take internal ALBs"
        assert vpc["public_subnet_tags"] == {PUBLIC_ELB_TAG: "1"}
        associations = stack["resource"]["aws_route_table_association"].values()
        assert len(associations) == len(plan.internal_alb)
        assert all("private_route_table_ids" in a["route_table_id"] for a in associations), "ALBs with Cognito need NAT"
        # The workload stack pins each Ingress to those subnets (platform outputs).
        for res in synth.resources("workload", "kubernetes_manifest").values():
            if res["manifest"]["kind"] == "Ingress":
                assert res["manifest"]["metadata"]["annotations"]["alb.ingress.kubernetes.io/subnets"].startswith(
                    "${join("
                )


# --- 7. least privilege -----------------------------------------------------------------


def _documents(synth, cycle="platform") -> dict[str, dict]:
    return synth.stack(cycle)["data"]["aws_iam_policy_document"]


def _conditions(statement) -> dict[str, list[str]]:
    return {f"{c['test']}:{c['variable']}": c["values"] for c in statement.get("condition", [])}


def test_load_balancer_controller_changes_only_this_clusters_resources(synth_variants):
    """Every write the controller may make to a security group, load balancer, target group,
    listener or rule requires this cluster's tag value; rules added to groups it did not create
    are limited to this VPC; the only exception is SetRulePriorities (no condition keys)."""
    for variant, synth in synth_variants.items():
        document = next(d for k, d in _documents(synth).items() if k.startswith("load_balancer_document"))
        cluster = synth.config.cluster_name
        for statement in document["statement"]:
            actions = statement["actions"]
            writes = [a for a in actions if not a.split(":")[1].startswith(("Describe", "Get", "List"))]
            if not writes or statement["sid"] == "CreateServiceLinkedRole":
                continue
            conditions = _conditions(statement)
            tagged = [
                conditions.get("StringEquals:aws:ResourceTag/elbv2.k8s.aws/cluster"),
                conditions.get("StringEquals:aws:RequestTag/elbv2.k8s.aws/cluster"),
            ]
            in_vpc = "ArnEquals:ec2:Vpc" in conditions
            exempt = statement["sid"] in ("RulePriorities", "SecurityGroupRuleObjects", "CreateSecurityGroupInThisVpc")
            assert [cluster] in tagged or in_vpc or exempt, (variant, statement["sid"])
            for resource in statement["resources"]:
                assert f":{synth.config.region}:{synth.config.account_id}:" in resource, (statement["sid"], resource)
        sids = {s["sid"]: s for s in document["statement"]}
        (vpc,) = sids["CreateSecurityGroupInThisVpc"]["resources"]
        assert vpc.startswith(
            f"arn:aws:ec2:{synth.config.region}:{synth.config.account_id}:vpc/${{module."
        ) and vpc.endswith(".vpc_id}")
        assert sids["SecurityGroupRulesInThisVpc"]["condition"][0]["values"] == [vpc]


def test_gpu_nodes_get_run_command_not_the_managed_ssm_policy(synth):
    karpenter = next(
        m for m in synth.stack("platform")["module"].values() if m["source"].endswith("//modules/karpenter")
    )
    assert not any(
        "AmazonSSMManagedInstanceCore" in arn for arn in karpenter["node_iam_role_additional_policies"].values()
    )
    document = next(d for k, d in _documents(synth).items() if k.startswith("gpu_node_document"))
    actions = {a for s in document["statement"] for a in s["actions"]}
    assert not any(a.startswith("ssm:Get") or a in ("ssm:*", "ssmmessages:*", "ec2messages:*") for a in actions)
    assert "ssm:GetParameter" not in actions and "ssm:GetParameters" not in actions
    assert {"ssm:UpdateInstanceInformation", "ec2messages:GetMessages", "ssmmessages:CreateControlChannel"} <= actions
    metric = next(s for s in document["statement"] if s["actions"] == ["cloudwatch:PutMetricData"])
    assert _conditions(metric) == {"StringEquals:cloudwatch:namespace": [names.METRICS_NAMESPACE]}


def test_pod_identity_roles_trust_one_service_account_of_this_cluster(synth_variants):
    for synth in synth_variants.values():
        trusts = [
            d
            for d in _documents(synth).values()
            if any(
                p["identifiers"] == ["pods.eks.amazonaws.com"] for s in d["statement"] for p in s.get("principals", [])
            )
        ]
        # the load balancer controller, the S3 CSI driver, the job runner, KEDA and Karpenter
        assert len(trusts) == 5
        for trust in trusts:
            (statement,) = trust["statement"]
            assert sorted(statement["actions"]) == ["sts:AssumeRole", "sts:TagSession"]
            conditions = _conditions(statement)
            assert conditions["StringEquals:aws:SourceAccount"] == [synth.config.account_id]
            assert conditions["StringEquals:aws:RequestTag/eks-cluster-arn"][0].startswith("${module.")
            assert set(conditions) >= {
                "StringEquals:aws:RequestTag/kubernetes-namespace",
                "StringEquals:aws:RequestTag/kubernetes-service-account",
            }
        associations = {
            (a["namespace"], a["service_account"])
            for a in synth.resources("platform", "aws_eks_pod_identity_association").values()
        }
        trusted = {
            (
                _conditions(t["statement"][0])["StringEquals:aws:RequestTag/kubernetes-namespace"][0],
                _conditions(t["statement"][0])["StringEquals:aws:RequestTag/kubernetes-service-account"][0],
            )
            for t in trusts
        }
        assert trusted <= associations | {(names.KARPENTER_NAMESPACE, names.KARPENTER_SERVICE_ACCOUNT)}
        # Karpenter's association is the submodule's: its trust is replaced by ours (same sid).
        karpenter = next(
            m for m in synth.stack("platform")["module"].values() if m["source"].endswith("//modules/karpenter")
        )
        (override,) = karpenter["iam_role_override_assume_policy_documents"]
        assert override.startswith("${data.aws_iam_policy_document.karpenter_controller_trust")
        document = _documents(synth)[override.split(".")[2]]
        assert document["statement"][0]["sid"] == "PodIdentity", "the submodule's statement sid, or it is appended"


# --- 8. WAF logs --------------------------------------------------------------------------


def test_waf_log_redacts_session_cookies_and_tokens(synth_variants):
    logging = next(
        iter(synth_variants["edge-cognito"].resources("edge", "aws_wafv2_web_acl_logging_configuration").values())
    )
    assert {f["single_header"]["name"] for f in logging["redacted_fields"]} == {"cookie", "authorization"}


# --- 9. pinned image and AMI --------------------------------------------------------------


def test_pods_run_the_image_digest_resolved_at_plan(synth):
    deployment = next(
        r["manifest"]
        for r in synth.resources("workload", "kubernetes_manifest").values()
        if r["manifest"]["kind"] == "Deployment"
    )
    spec = deployment["spec"]["template"]["spec"]
    ((lookup_name, lookup),) = synth.stack("workload")["data"]["aws_ecr_image"].items()
    assert lookup["image_tag"] == synth.config.comfyui.image_tag
    for container in spec["containers"] + spec["initContainers"]:
        assert container["image"].endswith(
            f":{synth.config.comfyui.image_tag}@${{data.aws_ecr_image.{lookup_name}.image_digest}}"
        )
        assert container["imagePullPolicy"] == "Always"


def test_gpu_ami_is_pinned_to_a_dated_release(synth_variants):
    from tests.test_karpenter import _release  # the GPU pool's chart values

    for synth in synth_variants.values():
        values = yaml.safe_load(terraform_literal(_release(synth, "gpu-nodepool")["values"][0]))
        node_class = next(m for m in values["manifests"] if m["kind"] == "EC2NodeClass")
        assert node_class["spec"]["amiSelectorTerms"] == [{"alias": synth.config.gpu.ami_alias}]
        assert "latest" not in synth.config.gpu.ami_alias
    for bad in ("al2023@latest", "al2023@v2026071", "bottlerocket@v20260714", "al2023@v20261399"):
        with pytest.raises(ConfigError):
            _config(gpu={"ami_alias": bad})


# --- 4. alarms and the Lambda's bucket filter --------------------------------------------


def test_alarms_notify_the_configured_topic(synth_variants):
    for variant, synth in synth_variants.items():
        alarms = {a["metric_name"]: a for a in synth.resources("platform", "aws_cloudwatch_metric_alarm").values()}
        topic = synth.config.alarms.sns_topic_arn
        actions = [topic] if topic else []
        dlq = alarms["ApproximateNumberOfMessagesVisible"]
        assert dlq["namespace"] == "AWS/SQS" and dlq["dimensions"]["QueueName"].startswith("${aws_sqs_queue.")
        assert "dlq" in dlq["dimensions"]["QueueName"]
        cache = alarms[names.CACHE_DEADLINE_METRIC]
        assert cache["namespace"] == names.METRICS_NAMESPACE
        assert cache["dimensions"] == {names.METRIC_CLUSTER_DIMENSION: synth.config.cluster_name}
        for alarm in alarms.values():
            assert alarm["alarm_actions"] == actions and alarm["ok_actions"] == actions, variant
    assert variant_config("edge-cognito").alarms.sns_topic_arn, "one variant exercises the topic"


def test_alarm_topic_must_be_an_sns_topic_of_this_region_and_account():
    for topic, hint in (
        ("arn:aws:sns:eu-west-1:111122223333:t", "eu-west-1"),
        ("arn:aws:sns:us-west-2:999999999999:t", "999999999999"),
        ("arn:aws:sqs:us-west-2:111122223333:t", "not an SNS topic ARN"),
    ):
        with pytest.raises(ConfigError) as exc:
            _config(alarms={"sns_topic_arn": topic})
        assert any("alarms.sns_topic_arn" in e and hint in e and "fix:" in e for e in exc.value.errors)


def test_sync_lambda_knows_its_bucket(synth):
    function = next(
        f
        for f in synth.resources("platform", "aws_lambda_function").values()
        if f["function_name"].endswith("-model-sync")
    )
    assert function["environment"]["variables"][names.ENV_MODELS_BUCKET] == synth.config.models_bucket
