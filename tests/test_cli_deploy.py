"""`comfyui-eks deploy` and `comfyui-eks destroy` (comfyui_eks/deploy.py, preflight.py and helpers).

terraform, kubectl and aws are shell stubs (tests/stubs/cli_stub.sh), alone on PATH, that log
every call and answer from rules each test sets; AWS APIs are moto, in-process, except Service
Quotas: moto models quotas only for the vpc service, so the client is replaced at its one
boundary (comfyui_eks._aws.client) by FakeQuotas. Synthesis is faked (tests/stubs/cli_fakes.py:
the stacks' shape in milliseconds); the keep rules are also checked on the real synthesis.
The CLI runs in-process through comfyui_eks.cli.main.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from comfyui_eks import _cleanup, _cluster, _keep, _stacks, cli, deploy, preflight
from comfyui_eks._terraform import error_lines
from core.config import load_config
from tests.stubs.cli_fakes import (
    ACCOUNT,
    APPLIED,
    CLOUDFRONT,
    CLUSTER,
    EDGE,
    PLATFORM,
    REGION,
    STATE,
    WORKLOAD,
    Env,
    Stubs,
    cli_world,
    deployment,
    stack_documents,
    state_show,
)

Json = dict[str, Any]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    with cli_world(tmp_path, monkeypatch, capsys) as world:
        yield world


def answering(questions: list[str], answer: str) -> Callable[[str], str]:
    """A stand-in for deploy.ask: records each question, gives the same answer."""

    def ask(question: str) -> str:
        questions.append(question)
        return answer

    return ask


def applied(stubs: Stubs) -> list[str]:
    return [stack for stack, command in stubs.terraform() if command == "apply"]


def touched(stubs: Stubs) -> list[tuple[str, str]]:
    """terraform calls that change something or prepare to (init, plan, apply, destroy, state rm)."""
    return [c for c in stubs.terraform() if c[1] in ("init", "plan", "apply", "destroy", "state rm")]


# --------------------------------------------------------------------------------------------
# deploy


def test_deploy_applies_each_stack_in_order_with_init_first(env: Env) -> None:
    result = env.run("deploy", "--yes", "--wait", "0")
    assert result.code == 0, result.err
    assert touched(env.stubs) == [
        (STATE, "init"), (STATE, "apply"),
        (PLATFORM, "init"), (PLATFORM, "apply"),
        (WORKLOAD, "init"), (WORKLOAD, "apply"),
    ]  # fmt: skip
    apply = next(c for c in env.stubs.calls("terraform") if "apply" in c)
    assert apply[2:] == ["apply", "-input=false", "-no-color", "-auto-approve"]
    init = next(c for c in env.stubs.calls("terraform") if "init" in c)
    assert init[1] == f"-chdir={env.outdir / 'stacks' / STATE}" and init[2:] == ["init", "-input=false", "-no-color"]
    assert env.synthesized and env.synthesized[0].data_protection.prevent_destroy
    assert f"done: {STATE}: {APPLIED}" in result.err


def test_deploy_stacks_option_selects_in_deployment_order(env: Env) -> None:
    result = env.run("deploy", "--yes", "--stacks", "workload,comfyui-platform", "--wait", "0")
    assert result.code == 0, result.err
    assert applied(env.stubs) == [PLATFORM, WORKLOAD]


@pytest.mark.parametrize(
    ("stacks", "message"),
    [
        ("nope", "--stacks nope: not a stack of this configuration"),
        ("edge", "no edge stack (edge.cloudfront is false)"),
    ],
)
def test_deploy_unknown_stack_is_usage_error(env: Env, stacks: str, message: str) -> None:
    result = env.run("deploy", "--yes", "--stacks", stacks)
    assert result.code == 2
    assert message in result.err
    assert env.stubs.calls() == [] and env.synthesized == []


def test_deploy_with_edge_goes_last(env: Env) -> None:
    env.config(**CLOUDFRONT)
    result = env.run("deploy", "--yes", "--wait", "0")
    assert result.code == 0, result.err
    assert applied(env.stubs) == [STATE, PLATFORM, WORKLOAD, EDGE]


def test_bad_config_is_exit_2_with_its_lines_and_touches_nothing(env: Env) -> None:
    assert env.config_path is not None
    env.config_path.write_text(
        env.config_path.read_text().replace("region: us-west-2", "region: mars-1") + "\nbogus: 1\n"
    )
    result = env.run("deploy", "--yes")
    assert result.code == 2
    lines = result.err.splitlines()
    assert any("config error: region:" in line and "fix:" in line for line in lines)
    assert any("config error: bogus: unknown key" in line for line in lines)
    assert env.stubs.calls() == [] and env.synthesized == []


def test_a_failed_stack_stops_the_run_with_terraforms_errors(env: Env) -> None:
    error = """aws_eks_cluster.cluster: Creating...
╷
│ Error: creating EKS Cluster (comfyui): operation error EKS: CreateCluster, ResourceLimitExceeded
│
│   with aws_eks_cluster.cluster,
│   on cdk.tf.json line 120, in resource.aws_eks_cluster.cluster:
╵"""
    env.stubs.answer("terraform", f"*{PLATFORM} apply *", code=1, stdout=error, first=True)
    result = env.run("deploy", "--yes", "--wait", "0")
    assert result.code == 1
    assert applied(env.stubs) == [STATE, PLATFORM]
    assert all(stack != WORKLOAD for stack, _ in env.stubs.terraform())
    err = result.err
    assert f"comfyui-eks deploy: {PLATFORM} failed" in err
    assert (
        "comfyui-eks deploy: Error: creating EKS Cluster (comfyui): "
        "operation error EKS: CreateCluster, ResourceLimitExceeded" in err
    )
    assert "with aws_eks_cluster.cluster," in err
    assert f"comfyui-eks deploy: not applied: {WORKLOAD}" in err
    log = env.outdir / "logs" / f"{PLATFORM}.apply.log"
    assert f"full log: {log}" in err and "ResourceLimitExceeded" in log.read_text()


def test_failed_stack_in_json_format(env: Env) -> None:
    env.stubs.answer(
        "terraform", f"*{STATE} init *", code=1, stdout="Error: Failed to get existing workspaces", first=True
    )
    result = env.run("deploy", "--yes", "--format", "json")
    assert result.code == 1
    document = result.json()
    assert document["ok"] is False
    assert [(s["stack"], s["status"]) for s in document["stacks"]] == [
        (STATE, "failed"),
        (PLATFORM, "not run"),
        (WORKLOAD, "not run"),
    ]
    assert applied(env.stubs) == []


def test_non_tty_without_yes_refuses_before_anything(env: Env) -> None:
    result = env.run("deploy")
    assert result.code == 2
    assert "pass --yes" in result.err
    assert env.stubs.calls() == [] and env.synthesized == []


def test_tty_without_yes_plans_asks_and_applies_the_saved_plan(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "interactive", lambda: True)
    questions: list[str] = []
    monkeypatch.setattr(deploy, "ask", answering(questions, "y"))
    plan = "  # aws_s3_bucket.state will be created\n  + resource {}\n\nPlan: 1 to add, 0 to change, 0 to destroy."
    env.stubs.answer("terraform", f"*{STATE} plan *", code=2, stdout=plan)
    env.stubs.answer(
        "terraform", "* plan *", code=0, stdout="No changes. Your infrastructure matches the configuration."
    )
    result = env.run("deploy", "--wait", "0")
    assert result.code == 0, result.err
    assert questions == [f"Apply these changes to {STATE}? [y/N] "]
    assert touched(env.stubs) == [
        (STATE, "init"), (STATE, "plan"), (STATE, "apply"),
        (PLATFORM, "init"), (PLATFORM, "plan"),
        (WORKLOAD, "init"), (WORKLOAD, "plan"),
    ]  # fmt: skip
    calls = env.stubs.calls("terraform")
    assert next(c for c in calls if "plan" in c)[2:] == [
        "plan",
        "-input=false",
        "-no-color",
        "-detailed-exitcode",
        "-out=tfplan",
    ]
    assert next(c for c in calls if "apply" in c)[2:] == ["apply", "-input=false", "-no-color", "tfplan"]
    assert "# aws_s3_bucket.state will be created" in result.err and "Plan: 1 to add" in result.err


def test_tty_answer_no_applies_nothing_more(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "interactive", lambda: True)
    monkeypatch.setattr(deploy, "ask", lambda q: "n")
    env.stubs.answer("terraform", "* plan *", code=2, stdout="Plan: 1 to add, 0 to change, 0 to destroy.")
    result = env.run("deploy")
    assert result.code == 1
    assert applied(env.stubs) == []
    assert [s for s, c in touched(env.stubs)] == [STATE, STATE]
    assert f"{STATE} was declined" in result.err and f"not applied: {PLATFORM}, {WORKLOAD}" in result.err


# --- preflight ------------------------------------------------------------------------------


def _wrong_account(env: Env) -> None:
    env.config(account_id="111122223333")


def _old_terraform(env: Env) -> None:
    env.stubs.answer("terraform", "version -json", stdout=json.dumps({"terraform_version": "1.9.8"}), first=True)


def _no_kubectl(env: Env) -> None:
    env.stubs.remove("kubectl")


def _aws_v1(env: Env) -> None:
    env.stubs.clear("aws")
    env.stubs.answer("aws", "--version", stderr="aws-cli/1.32.0 Python/3.11.7 Linux/6.1 botocore/1.34.0")


def _spot_quota(env: Env) -> None:
    env.quotas.values["L-3819A6DF"] = 8.0


def _on_demand_quota(env: Env) -> None:
    env.quotas.values["L-DB2E81BA"] = 16.0


def _unknown_type(env: Env) -> None:
    env.config(gpu={"instance_types": ["g6.xlarge", "g6.96xlarge"]})


def _image_missing(env: Env) -> None:
    env.config(comfyui={"image_tag": "v9.9.9"})


PREFLIGHT_FAILURES: dict[str, tuple[Callable[[Env], None], str]] = {
    "wrong account": (
        _wrong_account,
        (
            f"credentials: the credentials are for account {ACCOUNT} (arn:aws:sts::{ACCOUNT}:user/moto), "
            "config.account_id is 111122223333; fix: use credentials of account 111122223333"
        ),
    ),
    "old terraform": (_old_terraform, "terraform: Terraform 1.9.8 is older than 1.10"),
    "no kubectl": (
        _no_kubectl,
        "kubectl: kubectl is not on PATH (deploy waits for ComfyUI with it); fix: install kubectl",
    ),
    "aws v1": (
        _aws_v1,
        "aws-cli: aws CLI 1.32.0 is v1; the workload stack's providers need v2 for `aws eks get-token`",
    ),
    "spot quota": (
        _spot_quota,
        (
            'gpu-quota: spot: L-3819A6DF "All G and VT Spot Instance Requests" is 8 vCPUs, g5.xlarge needs 4 per GPU: '
            "room for 2 of gpu.max_gpus 8 GPUs; fix: request an increase in Service Quotas (EC2, us-west-2): "
            "L-3819A6DF to 32 vCPUs; or lower gpu.max_gpus to 2"
        ),
    ),
    "on-demand quota": (
        _on_demand_quota,
        'gpu-quota: on-demand: L-DB2E81BA "Running On-Demand G and VT instances" is 16 vCPUs',
    ),
    "unknown type": (
        _unknown_type,
        "gpu-quota: gpu.instance_types: g6.96xlarge does not exist in us-west-2; fix: remove it",
    ),
    "image missing": (
        _image_missing,
        (
            "ecr-image: comfyui.image_tag v9.9.9 is not in the ECR repository comfyui/comfyui; fix: push it: "
            f"docker/build_and_push.sh --repository-url {ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com/comfyui/comfyui"
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(PREFLIGHT_FAILURES))
def test_each_preflight_problem_stops_before_anything_is_applied(env: Env, case: str) -> None:
    setup, expected = PREFLIGHT_FAILURES[case]
    setup(env)
    result = env.run("deploy", "--yes")
    assert result.code == 1
    problems = [line for line in result.err.splitlines() if line.startswith("comfyui-eks deploy: preflight: ")]
    assert len(problems) == 1, result.err
    assert expected in problems[0]
    assert "comfyui-eks deploy: nothing was applied" in result.err
    assert touched(env.stubs) == []


def test_skip_preflight_skips_the_named_checks(env: Env) -> None:
    _spot_quota(env)
    _no_kubectl(env)
    result = env.run("deploy", "--yes", "--wait", "0", "--skip-preflight", "gpu-quota", "kubectl")
    assert result.code == 0, result.err
    assert applied(env.stubs) == [STATE, PLATFORM, WORKLOAD]


def test_skip_preflight_rejects_unknown_names(env: Env) -> None:
    assert env.run("deploy", "--yes", "--skip-preflight", "everything").code == 2


def test_workload_checks_only_when_the_workload_stack_deploys(env: Env) -> None:
    _no_kubectl(env)
    _spot_quota(env)
    _image_missing(env)
    result = env.run("deploy", "--yes", "--stacks", "state,platform")
    assert result.code == 0, result.err
    assert applied(env.stubs) == [STATE, PLATFORM]


def test_image_gate_before_the_workload_when_the_repository_was_missing(env: Env) -> None:
    boto3.client("ecr", region_name=REGION).delete_repository(repositoryName="comfyui/comfyui", force=True)
    result = env.run("deploy", "--yes")
    assert result.code == 1
    assert applied(env.stubs) == [STATE, PLATFORM]
    assert "ecr-image: the ECR repository comfyui/comfyui does not exist" in result.err
    assert "deploy the platform stack first (comfyui-eks deploy --stacks state,platform), push the image" in result.err


def test_credentials_missing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoCredentials:
        def get_caller_identity(self) -> Json:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError

    config = load_config(env.config_path)
    finding = preflight.check_credentials(config, NoCredentials())
    assert not finding.ok
    assert finding.line() == (
        "credentials: no AWS credentials found; fix: sign in to account 123456789012 (aws sso login, AWS_PROFILE, or "
        "environment credentials)"
    )
    findings = preflight.run_checks(config, ("workload",))
    assert list(dict.fromkeys(f.check for f in findings)) == list(preflight.CHECKS)
    assert all(f.ok for f in findings), [f.line() for f in findings if not f.ok]
    assert [f.check for f in preflight.run_checks(config, ("state", "platform"))] == ["credentials", "terraform"]


def test_gpu_quota_p_families_use_their_own_quotas(env: Env) -> None:
    config = load_config(env.config(gpu={"instance_types": ["p5.48xlarge", "g6.xlarge"], "max_gpus": 8}))
    env.quotas.values.update({"L-DB2E81BA": 16.0, "L-3819A6DF": 0.0, "L-417A185B": 96.0, "L-7212CCBC": 0.0})
    ec2 = boto3.client("ec2", region_name=REGION)
    findings = {f.message.split(":")[0]: f for f in preflight.check_gpu_quota(config, ec2, env.quotas)}
    # on-demand: 16 vCPUs = 4 x g6.xlarge, 96 vCPUs = 4 of p5.48xlarge's 8 GPUs (24 vCPUs each): 8 GPUs
    assert findings["on-demand"].ok, findings["on-demand"].line()
    assert "L-417A185B" in findings["on-demand"].message and "L-DB2E81BA" in findings["on-demand"].message
    assert not findings["spot"].ok
    assert "room for 0 of gpu.max_gpus 8" in findings["spot"].message
    assert "L-3819A6DF to 32 vCPUs, L-7212CCBC to 192 vCPUs" in findings["spot"].fix
    assert "or drop spot from gpu.capacity_types" in findings["spot"].fix


def test_gpu_quota_never_applied_uses_the_aws_default(env: Env) -> None:
    config = load_config(env.config(gpu={"capacity_types": ["on-demand"]}))
    env.quotas.never_applied.add("L-DB2E81BA")
    env.quotas.defaults["L-DB2E81BA"] = 64.0
    findings = preflight.check_gpu_quota(config, boto3.client("ec2", region_name=REGION), env.quotas)
    assert [f.ok for f in findings] == [True]
    assert "64 vCPUs" in findings[0].message


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"terraform_version": "1.10.0"}', True),
        ('{"terraform_version": "1.12.2-beta1"}', True),
        ('{"terraform_version": "1.9.8"}', False),
        ("Terraform v0.12.31", False),
        ("garbage", False),
    ],
)
def test_terraform_version_parsing(text: str, ok: bool) -> None:
    import subprocess

    finding = preflight.check_terraform(lambda cmd: subprocess.CompletedProcess(cmd, 0, text, ""))
    assert finding.ok is ok, finding.line()


def test_terraform_missing() -> None:
    finding = preflight.check_terraform(lambda cmd: None)
    assert finding.line().startswith("terraform: terraform is not on PATH; fix: install Terraform >= 1.10")


# --- health --------------------------------------------------------------------------------


class _StatsHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps({"system": {"os": "posix"}, "devices": []}).encode()
        self.send_response(self.status)
        if self.status in (302,):
            self.send_header("Location", "https://login.example.com/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def comfyui_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], str]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_StatsHandler,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _workload_outputs(env: Env, url: str) -> None:
    outputs = {"comfyui_url": {"value": url, "type": "string", "sensitive": False}}
    env.stubs.answer("terraform", f"*{WORKLOAD} output -json*", stdout=json.dumps(outputs))
    (env.root / f"{STATE}.tfstate").write_text("{}")


def test_deploy_waits_until_comfyui_answers(env: Env, comfyui_url: Callable[[int], str]) -> None:
    url = comfyui_url(200)
    _workload_outputs(env, url)
    env.stubs.answer("kubectl", "* get deployment comfyui *", stdout=json.dumps(deployment(1, 1)))
    result = env.run("deploy", "--yes", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["ok"] is True
    assert document["health"]["state"] == "healthy" and document["health"]["url"] == url
    assert document["outputs"] == {"comfyui_url": url}
    kubeconfig = next(c for c in env.stubs.calls("aws") if c[1:3] == ["eks", "update-kubeconfig"])
    assert kubeconfig[3:7] == ["--name", CLUSTER, "--region", REGION]


def test_deploy_says_when_scaled_to_zero_outside_the_schedule(
    env: Env, monkeypatch: pytest.MonkeyPatch, comfyui_url: Callable[[int], str]
) -> None:
    monkeypatch.setattr(_cluster, "in_schedule", lambda config, now=None: False)
    _workload_outputs(env, comfyui_url(503))
    env.stubs.answer("kubectl", "* get deployment comfyui *", stdout=json.dumps(deployment(0, 0)))
    result = env.run("deploy", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == (
        "ComfyUI: no ComfyUI replica running (scaling.min_replicas 0, outside the schedule); the first job or working "
        "hours start one"
    )


def test_deploy_health_timeout_is_a_failure_with_the_pods_state(env: Env, comfyui_url: Callable[[int], str]) -> None:
    from tests.stubs.cli_fakes import items, pod

    _workload_outputs(env, comfyui_url(503))
    env.stubs.answer("kubectl", "* get deployment comfyui *", stdout=json.dumps(deployment(1, 0)))
    env.stubs.answer(
        "kubectl",
        "* get pods *",
        stdout=items(pod("comfyui-abc", "ip-1", cache="running", ready=False, phase="Pending")),
    )
    result = env.run("deploy", "--yes", "--wait", "0.01")
    assert result.code == 1
    assert "ComfyUI did not answer within" in result.err
    assert "503 from the load balancer" in result.err
    assert "pod comfyui-abc: waiting for the node's model cache" in result.err


def test_login_redirect_with_ready_pods_is_healthy_enough(env: Env, comfyui_url: Callable[[int], str]) -> None:
    config = load_config(env.config_path)
    url = comfyui_url(302)

    class Kube:
        def get_json(self, *args: str) -> Json:
            return deployment(1, 1)

    health = deploy.wait_for_comfyui(config, url, Kube(), timeout=1.0, interval=0.0)  # type: ignore[arg-type]
    assert health.state == "ready"
    assert "1 replica(s) ready" in health.message and "redirect to a login (302)" in health.message


def test_unreachable_url_waits_for_the_grace_then_trusts_the_pods(env: Env) -> None:
    config = load_config(env.config_path)
    clock = iter(float(t) for t in range(0, 10_000, 30))

    class Kube:
        def get_json(self, *args: str) -> Json:
            return deployment(1, 1)

    probes: list[str] = []

    def unreachable(url: str) -> deploy.Probe:
        probes.append(url)
        return deploy.Probe("unreachable", "not reachable from this machine (ConnectTimeout)")

    health = deploy.wait_for_comfyui(
        config,
        "http://internal",
        Kube(),  # type: ignore[arg-type]
        timeout=3600,
        interval=0.0,
        clock=lambda: next(clock),
        probe_url=unreachable,
    )
    assert health.state == "ready"
    assert len(probes) > 1  # not concluded at the first failure: the ALB's DNS may be new


def test_in_schedule(env: Env) -> None:
    from datetime import datetime

    config = load_config(
        env.config(
            scaling={"schedule": {"timezone": "Europe/Berlin", "days": ["mon"], "start": "09:00", "end": "17:00"}}
        )
    )
    monday_10_berlin = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # 10:00 CET
    assert _cluster.in_schedule(config, monday_10_berlin)
    assert not _cluster.in_schedule(config, monday_10_berlin.replace(hour=16, minute=0))  # 17:00 CET: end
    assert not _cluster.in_schedule(config, monday_10_berlin.replace(day=1, month=12))  # a Tuesday
    assert _cluster.expected_idle(config, deployment(0, 0), monday_10_berlin.replace(hour=20))
    assert not _cluster.expected_idle(config, deployment(0, 0), monday_10_berlin)


# --------------------------------------------------------------------------------------------
# destroy


def _deployed(env: Env, *stacks: str) -> dict[str, Json]:
    """Rules for a world where `stacks` hold state (state list, show -json)."""
    documents = env.documents()
    for name in stacks:
        document = documents[name]
        listing = "\n".join(sorted(f"{t}.{n}" for t, items in document["resource"].items() for n in items))
        env.stubs.answer("terraform", f"*{name} state list*", stdout=listing)
        env.stubs.answer("terraform", f"*{name} show -json*", stdout=state_show(document))
    return documents


@dataclass
class Leftovers:
    instances: list[str]
    other_instances: list[str]
    load_balancer: str
    other_load_balancer: str
    target_group: str
    other_target_group: str
    security_group: str
    other_security_group: str
    node_security_group: str


def make_leftovers(cluster: str = CLUSTER) -> Leftovers:
    """What Karpenter and the load balancer controller would leave for `cluster`, next to the
    same things of another cluster and untagged ones."""
    ec2 = boto3.client("ec2", region_name=REGION)
    elbv2 = boto3.client("elbv2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab")
    ]

    def tags(kind: str, **pairs: str) -> list[Json]:
        return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in pairs.items()]}]

    def instances(count: int, **pairs: str) -> list[str]:
        reservation = ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=count,
            MaxCount=count,
            InstanceType="g6.xlarge",
            TagSpecifications=tags("instance", **pairs),
        )
        return [i["InstanceId"] for i in reservation["Instances"]]

    def group(name: str, **pairs: str) -> str:
        spec = tags("security-group", **pairs) if pairs else []
        return str(
            ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc, TagSpecifications=spec)["GroupId"]
        )

    lbc_tag = {"elbv2.k8s.aws/cluster": cluster}
    other_tag = {"elbv2.k8s.aws/cluster": "other"}
    ours = instances(2, **{"karpenter.sh/nodepool": "gpu", "comfyui.io/cluster": cluster})
    others = instances(1, **{"karpenter.sh/nodepool": "gpu", "comfyui.io/cluster": "other"})
    others += instances(1, **{"comfyui.io/cluster": cluster})  # not Karpenter's
    backend = group("k8s-traffic-comfyui", **lbc_tag)
    other_group = group("k8s-traffic-other", **other_tag)
    node = group("node")
    ec2.authorize_security_group_ingress(
        GroupId=node,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8188, "ToPort": 8188, "UserIdGroupPairs": [{"GroupId": backend}]}
        ],
    )

    def balancer(name: str, sg: str, tagging: dict[str, str]) -> tuple[str, str]:
        pairs = [{"Key": k, "Value": v} for k, v in tagging.items()]
        arn = elbv2.create_load_balancer(
            Name=name, Subnets=subnets, SecurityGroups=[sg], Scheme="internal", Tags=pairs
        )["LoadBalancers"][0]["LoadBalancerArn"]
        tg = elbv2.create_target_group(
            Name=f"{name}-tg", Protocol="HTTP", Port=8188, VpcId=vpc, TargetType="ip", Tags=pairs
        )["TargetGroups"][0]["TargetGroupArn"]
        elbv2.create_listener(
            LoadBalancerArn=arn, Protocol="HTTP", Port=80, DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}]
        )
        return arn, tg

    lb, tg = balancer("k8s-comfyui", backend, lbc_tag)
    other_lb, other_tg = balancer("k8s-other", other_group, other_tag)
    ec2.create_launch_template(
        LaunchTemplateName="karpenter.k8s.aws/123",
        LaunchTemplateData={},
        TagSpecifications=tags("launch-template", **{"karpenter.k8s.aws/cluster": cluster}),
    )
    return Leftovers(ours, others, lb, other_lb, tg, other_tg, backend, other_group, node)


def _instance_states(ids: list[str]) -> set[str]:
    ec2 = boto3.client("ec2", region_name=REGION)
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["State"]["Name"] for r in reservations for i in r["Instances"]}


def _load_balancers() -> set[str]:
    return {
        lb["LoadBalancerArn"]
        for lb in boto3.client("elbv2", region_name=REGION).describe_load_balancers()["LoadBalancers"]
    }


def _target_groups() -> set[str]:
    return {
        tg["TargetGroupArn"]
        for tg in boto3.client("elbv2", region_name=REGION).describe_target_groups()["TargetGroups"]
    }


def _security_groups() -> set[str]:
    return {g["GroupId"] for g in boto3.client("ec2", region_name=REGION).describe_security_groups()["SecurityGroups"]}


def _mark_cleanup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _cleanup.remove_controller_leftovers

    def marked(**kwargs: Any) -> _cleanup.Removed:
        env.stubs.mark("cleanup")
        return real(**kwargs)

    monkeypatch.setattr(_cleanup, "remove_controller_leftovers", marked)


def _order(env: Env) -> list[str]:
    """terraform destroy / state rm calls and the clean-up, in the order they happened."""
    found = []
    for call in env.stubs.calls():
        if call[0] == "MARK":
            found.append(call[1])
        elif call[0] == "terraform" and any(a in ("destroy", "rm") for a in call):
            stack = Path(call[1].removeprefix("-chdir=")).name
            found.append(f"{stack} {'state rm' if 'rm' in call else 'destroy'}")
    return found


def test_destroy_keeps_data_removes_controller_leftovers_in_order(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _mark_cleanup(env, monkeypatch)
    documents = _deployed(env, STATE, PLATFORM, WORKLOAD)
    leftovers = make_leftovers()
    result = env.run("destroy", "--yes")
    assert result.code == 0, result.err
    assert _order(env) == [f"{WORKLOAD} destroy", "cleanup", f"{PLATFORM} state rm", f"{PLATFORM} destroy"]
    # Karpenter's instances of this cluster are terminated, nothing else
    assert _instance_states(leftovers.instances) == {"terminated"}
    assert _instance_states(leftovers.other_instances) == {"running"}
    assert _load_balancers() == {leftovers.other_load_balancer}
    assert _target_groups() == {leftovers.other_target_group}
    groups = _security_groups()
    assert (
        leftovers.security_group not in groups
        and {leftovers.other_security_group, leftovers.node_security_group} <= groups
    )
    rules = boto3.client("ec2", region_name=REGION).describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [leftovers.node_security_group]}]
    )["SecurityGroupRules"]
    assert not [r for r in rules if r.get("ReferencedGroupInfo")]  # the reference was revoked first
    assert boto3.client("ec2", region_name=REGION).describe_launch_templates()["LaunchTemplates"] == []
    # what was removed from the state: the protected resources and what belongs with them
    removed = next(c for c in env.stubs.calls("terraform") if "rm" in c)
    expected = sorted(_keep.keep_set(documents[PLATFORM]))
    assert removed[2:] == ["state", "rm", "-no-color", *expected]
    assert [a.split(".")[0] for a in expected if "models" in a] == [
        "aws_s3_bucket", "aws_s3_bucket_logging", "aws_s3_bucket_policy",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_versioning", "terraform_data",
    ]  # fmt: skip
    assert not [a for a in expected if "notification" in a or "aws_sqs_queue" in a or "aws_vpc" in a]
    # the report and the record
    record = env.root / "comfyui-kept.json"
    kept = json.loads(record.read_text())["kept"]
    assert {k["address"] for k in kept} == set(expected)
    models = next(k for k in kept if k["type"] == "aws_s3_bucket" and "models" in k["label"])
    assert (
        models["import"] == f"terraform -chdir={env.outdir / 'stacks' / PLATFORM} import {models['address']} "
        f"comfyui-models-{ACCOUNT}-us-west-2"
    )
    assert f"{STATE}: kept (still managed by Terraform: comfyui-tfstate-{ACCOUNT}-us-west-2" in result.out
    assert f"aws_s3_bucket comfyui-models-{ACCOUNT}-us-west-2" in result.out
    assert "aws_ecr_repository comfyui/comfyui" in result.out
    assert "the next comfyui-eks deploy imports them back; comfyui-eks destroy --delete-data deletes them" in result.out
    assert "removed 2 GPU instance(s)" in result.out and "removed 1 load balancer(s)" in result.out
    assert "aws_kms_alias alias/comfyui-data" in result.out


def test_deploy_after_destroy_imports_what_was_kept(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    assert env.run("destroy", "--yes").code == 0
    record = env.root / "comfyui-kept.json"
    kept = json.loads(record.read_text())["kept"]
    imports_file = env.outdir / "stacks" / PLATFORM / _keep.IMPORTS_FILE
    seen: list[Json] = []
    real_apply = deploy.apply_stack

    def apply_stack(stack: Any, *args: Any, **kwargs: Any) -> deploy.StackResult:
        if stack.name == PLATFORM:
            seen.extend(json.loads(imports_file.read_text())["import"])
        else:
            assert not (stack.directory / _keep.IMPORTS_FILE).exists()
        return real_apply(stack, *args, **kwargs)

    monkeypatch.setattr(deploy, "apply_stack", apply_stack)
    result = env.run("deploy", "--yes", "--wait", "0")
    assert result.code == 0, result.err
    importable = [k for k in kept if k["type"] != "terraform_data"]
    assert seen == [{"to": k["address"], "id": k["import_id"]} for k in importable]
    assert {"to": "aws_s3_bucket.data_models_bucket_0ABC", "id": f"comfyui-models-{ACCOUNT}-us-west-2"} in seen
    assert f"{PLATFORM}: importing {len(importable)} resources an earlier destroy kept" in result.err
    assert not record.exists()  # managed again: nothing left to record


def test_a_failed_import_keeps_the_record_and_says_why(env: Env) -> None:
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    assert env.run("destroy", "--yes").code == 0
    record = env.root / "comfyui-kept.json"
    before = record.read_text()
    error = "Error: Cannot import non-existent remote object"
    env.stubs.answer("terraform", f"*{PLATFORM} apply *", code=1, stdout=error, first=True)
    result = env.run("deploy", "--yes", "--wait", "0")
    assert result.code == 1
    assert error in result.err and "if you deleted some of it, remove those entries from that file" in result.err
    assert record.read_text() == before


def test_destroy_order_with_edge(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.config(**CLOUDFRONT)
    _mark_cleanup(env, monkeypatch)
    _deployed(env, STATE, PLATFORM, WORKLOAD, EDGE)
    result = env.run("destroy", "--yes", "--format", "json")
    assert result.code == 0, result.err
    assert _order(env) == [
        f"{EDGE} destroy",
        f"{WORKLOAD} destroy",
        "cleanup",
        f"{PLATFORM} state rm",
        f"{PLATFORM} destroy",
    ]
    document = result.json()
    assert [(s["stack"], s["status"]) for s in document["stacks"]] == [
        (EDGE, "destroyed"), (WORKLOAD, "destroyed"), (PLATFORM, "destroyed"), (STATE, "kept"),
    ]  # fmt: skip
    assert any(k["type"] == "aws_cognito_user_pool" for k in document["kept"])


def test_destroy_stops_at_a_failed_stack(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _mark_cleanup(env, monkeypatch)
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    drain = "Error: uninstallation completed with 1 error(s): context deadline exceeded"
    env.stubs.answer("terraform", f"*{WORKLOAD} destroy *", code=1, stdout=drain, first=True)
    leftovers = make_leftovers()
    result = env.run("destroy", "--yes")
    assert result.code == 1
    assert _order(env) == [f"{WORKLOAD} destroy"]
    assert f"{WORKLOAD}: terraform destroy failed" in result.err and "context deadline exceeded" in result.err
    assert f"not destroyed: {PLATFORM}, {STATE}" in result.err
    assert _instance_states(leftovers.instances) == {"running"}  # the drain gets another chance


def test_destroy_with_nothing_deployed(env: Env) -> None:
    result = env.run("destroy", "--yes")
    assert result.code == 0, result.err
    assert [c for s, c in env.stubs.terraform()] == ["init", "state list"]
    assert "no stack is deployed" in result.err


def test_destroy_needs_yes_off_a_terminal(env: Env) -> None:
    for args in (("destroy",), ("destroy", "--delete-data")):
        result = env.run(*args)
        assert result.code == 2 and "pass --yes" in result.err
    assert env.stubs.calls() == [] and env.synthesized == []


def _versioned_bucket(name: str, objects: int = 3) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for index in range(objects):
        s3.put_object(Bucket=name, Key=f"checkpoints/m{index}.safetensors", Body=b"v1")
        s3.put_object(Bucket=name, Key=f"checkpoints/m{index}.safetensors", Body=b"v2")
    s3.delete_object(Bucket=name, Key="checkpoints/m0.safetensors")  # a delete marker


def _versions(name: str) -> int:
    page = boto3.client("s3", region_name=REGION).list_object_versions(Bucket=name)
    return len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))


def test_delete_data_with_yes_empties_every_bucket_and_destroys_all(env: Env) -> None:
    config = load_config(env.config_path)
    buckets = list(_stacks.data_buckets(config).values())
    for bucket in buckets:
        _versioned_bucket(bucket)
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    result = env.run("destroy", "--delete-data", "--yes")
    assert result.code == 0, result.err
    assert env.synthesized[-1].data_protection.prevent_destroy is False
    assert [bucket for bucket in buckets if _versions(bucket)] == []
    assert _order(env) == [f"{WORKLOAD} destroy", f"{PLATFORM} destroy", f"{STATE} destroy"]
    assert f"emptied s3://comfyui-models-{ACCOUNT}-us-west-2: 7 object versions deleted" in result.out
    assert boto3.client("ecr", region_name=REGION).list_images(repositoryName="comfyui/comfyui")["imageIds"] == []
    assert not (env.root / "comfyui-kept.json").exists()


def test_delete_data_on_a_terminal_needs_the_project_name(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "interactive", lambda: True)
    monkeypatch.setattr(deploy, "ask", lambda q: "yes")
    _versioned_bucket(load_config(env.config_path).models_bucket)
    result = env.run("destroy", "--delete-data")
    assert result.code == 1
    assert "not confirmed: nothing was destroyed or deleted" in result.err
    assert "DELETES YOUR DATA" in result.err
    assert env.stubs.calls() == [] and env.synthesized == []
    assert _versions(load_config(env.config_path).models_bucket) == 7

    monkeypatch.setattr(deploy, "ask", lambda q: "comfyui")
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    assert env.run("destroy", "--delete-data").code == 0
    assert _versions(load_config(env.config_path).models_bucket) == 0


def test_plain_destroy_on_a_terminal_asks(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "interactive", lambda: True)
    questions: list[str] = []
    monkeypatch.setattr(deploy, "ask", answering(questions, "n"))
    result = env.run("destroy")
    assert result.code == 1 and "not confirmed: nothing was destroyed" in result.err
    assert questions == [
        f"Destroy {WORKLOAD}, {PLATFORM}, {STATE}? Data (buckets, keys, images, job table) is kept. [y/N] "
    ]
    assert env.stubs.calls() == []


def test_delete_data_retries_when_late_access_logs_refill_a_bucket(env: Env) -> None:
    config = load_config(env.config_path)
    _versioned_bucket(config.access_logs_bucket)
    _deployed(env, STATE, PLATFORM, WORKLOAD)
    guard = (
        f"s3://{config.access_logs_bucket} still holds objects (or older versions of them); "
        "nothing of it was destroyed."
    )
    error = f"Error: local-exec provisioner error\n{guard}"
    env.stubs.answer("terraform", f"*{PLATFORM} destroy *", code=1, stdout=error, once=True, first=True)
    result = env.run("destroy", "--delete-data", "--yes")
    assert result.code == 0, result.err
    assert _order(env) == [f"{WORKLOAD} destroy", f"{PLATFORM} destroy", f"{PLATFORM} destroy", f"{STATE} destroy"]


def test_delete_data_removes_what_an_earlier_destroy_kept(env: Env) -> None:
    config = load_config(env.config_path)
    _versioned_bucket(config.models_bucket)
    kms = boto3.client("kms", region_name=REGION)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/comfyui-data", TargetKeyId=key)
    record = [
        {"stack": PLATFORM, "address": "aws_s3_bucket.models", "type": "aws_s3_bucket", "id": config.models_bucket},
        {
            "stack": PLATFORM,
            "address": "aws_s3_bucket_versioning.models",
            "type": "aws_s3_bucket_versioning",
            "id": config.models_bucket,
        },
        {"stack": PLATFORM, "address": "aws_kms_key.data", "type": "aws_kms_key", "id": key},
        {"stack": PLATFORM, "address": "aws_kms_alias.data", "type": "aws_kms_alias", "id": "alias/comfyui-data"},
        {
            "stack": PLATFORM,
            "address": "aws_ecr_repository.images",
            "type": "aws_ecr_repository",
            "id": "comfyui/comfyui",
        },
    ]
    _keep.save_record(env.root / "comfyui-kept.json", record)
    _deployed(env, STATE)  # only the state stack is left
    result = env.run("destroy", "--delete-data", "--yes")
    assert result.code == 0, result.err
    buckets = [b["Name"] for b in boto3.client("s3", region_name=REGION).list_buckets()["Buckets"]]
    assert config.models_bucket not in buckets
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert "alias/comfyui-data" not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    assert boto3.client("ecr", region_name=REGION).describe_repositories()["repositories"] == []
    assert not (env.root / "comfyui-kept.json").exists()
    assert f"deleted s3://{config.models_bucket} (7 object versions)" in result.out


# --------------------------------------------------------------------------------------------
# building blocks


def test_keep_set_on_the_real_synthesized_stacks(synth: Any) -> None:
    """The rules against what cdktf really writes (construct paths, references)."""
    platform = _keep.keep_set(synth.stack("platform"))
    types = {k.type for k in platform.values()}
    assert {
        "aws_s3_bucket",
        "aws_kms_key",
        "aws_kms_alias",
        "terraform_data",
        "aws_s3_bucket_policy",
        "aws_ecr_repository",
    } <= types
    buckets = {k.label for k in platform.values() if k.type == "aws_s3_bucket"}
    config = synth.config
    assert buckets == {config.models_bucket, config.inputs_bucket, config.outputs_bucket, config.access_logs_bucket}
    # every protection and the destroy guard of every kept bucket stays with it
    for address, body in _keep.resources(synth.stack("platform")).items():
        path = _keep.construct_path(body)
        if path.rsplit("/", 1)[0].endswith(
            ("/data/models", "/data/inputs", "/data/outputs", "/data/access_logs", "/data/key")
        ):
            assert address in platform, address
    assert not [
        a
        for a in platform
        if a.startswith(("aws_s3_bucket_notification.", "aws_lambda_function.", "aws_sqs_queue.", "aws_vpc"))
    ]
    state = _keep.keep_set(synth.stack("state"))
    assert set(state) == set(_keep.resources(synth.stack("state")))  # the state stack holds only data
    assert _keep.keep_set(synth.stack("workload")) == {}


def test_stack_conventions_match_the_real_synthesis(synth: Any) -> None:
    """Where the CLI looks for each stack's JSON and the state stack's local state file."""
    config = synth.config
    assert _stacks.is_synthesized(config, synth.outdir)
    stacks = _stacks.stacks(config, synth.outdir)
    assert [s.json_path for s in stacks] == [
        synth.paths[config.stack_name(c)] for c in ("state", "platform", "workload")
    ]
    state = stacks[0]
    backend_path = synth.stack("state")["terraform"]["backend"]["local"]["path"]
    assert state.local_state_file == (state.directory / backend_path).resolve()
    assert all(s.local_state_file is None for s in stacks[1:])
    repository = _keep.resources(synth.stack("platform"))
    assert any(body.get("name") == _stacks.repository_name(config) for body in repository.values())


def test_keep_set_without_protection_keeps_only_what_aws_refuses(env: Env) -> None:
    documents = stack_documents(_stacks.unprotected(load_config(env.config(**CLOUDFRONT))))
    assert {k.type for k in _keep.keep_set(documents[PLATFORM], seeds_only_protected=True).values()} == {
        "aws_cognito_user_pool", "aws_cognito_user_pool_client",
    }  # fmt: skip


def test_empty_bucket_deletes_in_batches(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cleanup, "S3_BATCH", 3)
    _versioned_bucket("batch-test", objects=4)  # 8 versions + 1 delete marker
    s3 = boto3.client("s3", region_name=REGION)
    sizes: list[int] = []
    real = s3.delete_objects

    def counting(**kwargs: Any) -> Json:
        sizes.append(len(kwargs["Delete"]["Objects"]))
        return dict(real(**kwargs))

    monkeypatch.setattr(s3, "delete_objects", counting)
    assert _cleanup.empty_bucket(s3, "batch-test") == 9
    assert sizes == [3, 3, 3]
    assert _versions("batch-test") == 0
    assert _cleanup.empty_bucket(s3, "no-such-bucket-here") == 0


def test_security_groups_retry_while_enis_linger_then_give_up(env: Env) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="g", Description="g", VpcId=vpc)["GroupId"]
    busy = {"left": 2}

    class Lingering:
        def __getattr__(self, name: str) -> Any:
            return getattr(ec2, name)

        def delete_security_group(self, **kwargs: Any) -> Json:
            if busy["left"]:
                busy["left"] -= 1
                raise ClientError(
                    {"Error": {"Code": "DependencyViolation", "Message": "has a dependent object"}},
                    "DeleteSecurityGroup",
                )
            return dict(ec2.delete_security_group(**kwargs))

    sleeps: list[float] = []
    pace = _cleanup.Pace(interval=5.0, timeout=60.0, sleep=sleeps.append, clock=lambda: len(sleeps) * 5.0)
    _cleanup.delete_security_groups(Lingering(), [group], pace)
    assert sleeps == [5.0, 5.0] and group not in _security_groups()

    group = ec2.create_security_group(GroupName="h", Description="h", VpcId=vpc)["GroupId"]
    busy["left"] = 100
    with pytest.raises(cli.CommandFailed) as failed:
        _cleanup.delete_security_groups(Lingering(), [group], pace)
    assert (
        f"security group {group}: still in use after 1 min (DependencyViolation: has a dependent object)"
        in failed.value.lines[0]
    )


def test_terraform_error_lines_keep_summary_location_and_detail() -> None:
    output = [
        "module.x.aws_iam_role.r: Creating...",
        "╷",
        "│ Error: creating IAM Role (r): AccessDenied",
        "│",
        "│   with module.x.aws_iam_role.r,",
        "│   on .terraform/modules/x/main.tf line 3:",
        '│    3: resource "aws_iam_role" "r" {',
        "│",
        "│ User is not authorized to perform iam:CreateRole",
        "╵",
        "╷",
        "│ Error: second problem",
        "╵",
    ]
    assert error_lines(output) == [
        "Error: creating IAM Role (r): AccessDenied",
        "with module.x.aws_iam_role.r,",
        "on .terraform/modules/x/main.tf line 3:",
        '3: resource "aws_iam_role" "r" {',
        "User is not authorized to perform iam:CreateRole",
        "Error: second problem",
    ]
    assert error_lines(["panic: boom", "", "goroutine 1"]) == ["panic: boom", "goroutine 1"]


def test_stub_logs_one_line_per_call_even_when_concurrent(env: Env) -> None:
    import subprocess

    processes = [
        subprocess.Popen([str(env.stubs.bin / "kubectl"), "get", "pods", f"n{i}", "x" * 2000]) for i in range(20)
    ]
    for process in processes:
        assert process.wait() == 0
    calls = env.stubs.calls("kubectl")
    assert sorted(c[3] for c in calls) == sorted(f"n{i}" for i in range(20))
    assert all(len(c) == 5 and c[4] == "x" * 2000 for c in calls)


def test_pod_selector_matches_the_deployment() -> None:
    """status finds the pods by the labels the Deployment gives them (one definition)."""
    from modules import comfyui

    labels = comfyui.APP_LABELS
    assert _cluster.APP_LABELS is labels
    assert ",".join(f"{k}={v}" for k, v in sorted(labels.items())) == _cluster.POD_SELECTOR


def test_display_plain_lines_are_throttled_and_rich_rows_finish() -> None:
    import io

    from comfyui_eks._display import PLAIN_INTERVAL, Display

    now = [0.0]
    plain = io.StringIO()
    with Display(plain, clock=lambda: now[0]) as display:
        display.start("s", "comfyui-state: init")
        display.update("s", "comfyui-state: apply: a: Creating...")  # too soon after the start
        now[0] += PLAIN_INTERVAL
        display.update("s", "comfyui-state: apply: b: Still creating... [1m0s elapsed]")
        display.update("s", "comfyui-state: apply: c: Still creating...")
        display.finish("s", "comfyui-state: Apply complete!")
        display.finish("p", "comfyui-platform: terraform apply failed", ok=False)
    assert plain.getvalue().splitlines() == [
        "comfyui-state: init",
        "comfyui-state: apply: b: Still creating... [1m0s elapsed]",
        "done: comfyui-state: Apply complete!",
        "FAILED: comfyui-platform: terraform apply failed",
    ]
    terminal = io.StringIO()
    with Display(terminal, force_terminal=True) as display:
        display.start("s", "comfyui-state: init")
        with display.paused():
            display.console.print("  # aws_s3_bucket.x will be created")
        display.finish("s", "comfyui-state: Apply complete!")
    assert "✓ comfyui-state: Apply complete!" in terminal.getvalue()
    assert "# aws_s3_bucket.x will be created" in terminal.getvalue()
