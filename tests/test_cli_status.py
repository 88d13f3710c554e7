"""`comfyui-eks outputs` and `comfyui-eks status` (comfyui_eks/status.py, _cluster.py).

The same world as tests/test_cli_deploy.py (tests/stubs/cli_fakes.py): stub terraform,
kubectl and aws alone on PATH answering from rules, moto in-process for CloudWatch Logs, SQS
and SSM, a fake synthesis. kubectl's answers are fixture JSON built by cli_fakes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from comfyui_eks import _cluster
from tests.stubs.cli_fakes import (
    CLOUDFRONT,
    CLUSTER,
    EDGE,
    PLATFORM,
    REGION,
    STATE,
    WORKLOAD,
    Env,
    cli_world,
    deployment,
    fake_synthesize,
    items,
    node,
    pod,
)

Json = dict[str, Any]
NOW = datetime.now(UTC)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    with cli_world(tmp_path, monkeypatch, capsys) as world:
        yield world


def _output(value: Any, sensitive: bool = False) -> Json:
    return {"value": value, "type": "string", "sensitive": sensitive}


def deployed(env: Env, outputs: dict[str, dict[str, Any]], *, synthesize: bool = True) -> None:
    """Stacks with these outputs (stack -> {name: value}); the state stack's local state file."""
    if synthesize:
        from core.config import load_config

        fake_synthesize(load_config(env.config_path), env.outdir)
    (env.root / f"{STATE}.tfstate").write_text("{}")
    for stack, values in outputs.items():
        document = {name: _output(value, sensitive=name.endswith("_secret_arn")) for name, value in values.items()}
        env.stubs.answer("terraform", f"*{stack} output -json*", stdout=json.dumps(document))


PLATFORM_OUTPUTS = {
    "cluster_name": CLUSTER,
    "model_sync_dead_letter_queue_arn": "arn:aws:sqs:us-west-2:123456789012:comfyui-model-sync-dlq",
    "models_bucket_name": "comfyui-models",
    "ecr_repository_url": "123456789012.dkr.ecr.us-west-2.amazonaws.com/comfyui/comfyui",
    "jobs_webhook_secret_arn": "arn:aws:secretsmanager:us-west-2:123456789012:secret:x",
}
WORKLOAD_OUTPUTS = {
    "comfyui_url": "http://internal-k8s-comfyui.elb.amazonaws.com",
    "comfyui_alb_dns_name": "internal-k8s",
}


# --------------------------------------------------------------------------------------------
# outputs


def test_outputs_merge_later_stacks_win_and_json_is_flat(env: Env) -> None:
    env.config(**CLOUDFRONT)
    deployed(
        env,
        {
            STATE: {"state_bucket_name": "comfyui-tfstate"},
            PLATFORM: PLATFORM_OUTPUTS,
            WORKLOAD: WORKLOAD_OUTPUTS,
            EDGE: {"comfyui_url": "https://comfy.example.com", "distribution_domain_name": "d1.cloudfront.net"},
        },
    )
    result = env.run("outputs", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["comfyui_url"] == "https://comfy.example.com"  # the edge stack's, through CloudFront
    assert document["comfyui_alb_dns_name"] == "internal-k8s"
    assert document["state_bucket_name"] == "comfyui-tfstate"
    assert document["jobs_webhook_secret_arn"].startswith("arn:aws:secretsmanager")
    assert env.synthesized == []  # cdktf.out/ was there: no synthesis needed


def test_outputs_table_skips_stacks_without_state(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "comfyui-tfstate"}, PLATFORM: PLATFORM_OUTPUTS})
    result = env.run("outputs")
    assert result.code == 0, result.err
    assert f"note: {WORKLOAD}: not deployed (no state)" in result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["OUTPUT", "VALUE", "STACK"]
    assert any(line.split() == ["cluster_name", CLUSTER, PLATFORM] for line in lines)
    assert any(line.split() == ["jobs_webhook_secret_arn", "(sensitive)", PLATFORM] for line in lines)
    assert not any("comfyui_url" in line for line in lines)


def test_outputs_with_nothing_deployed_needs_no_terraform_for_the_other_stacks(env: Env) -> None:
    result = env.run("outputs")
    assert result.code == 0, result.err
    assert result.out.strip() == "no outputs: nothing is deployed"
    assert f"note: {STATE}: not deployed (no {STATE}.tfstate)" in result.err
    assert f"note: {PLATFORM}: not deployed (the state stack is not deployed)" in result.err
    assert env.stubs.calls("terraform") == []
    assert len(env.synthesized) == 1  # cdktf.out/ was missing: synthesized once


def test_outputs_reuse_an_initialized_directory(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    for stack in (STATE, PLATFORM):
        marker = env.outdir / "stacks" / stack / ".terraform" / "terraform.tfstate"
        marker.parent.mkdir()
        marker.write_text("{}")
    assert env.run("outputs").code == 0
    assert [s for s, c in env.stubs.terraform() if c == "init"] == [WORKLOAD]


def test_outputs_init_failure_is_exit_1(env: Env) -> None:
    deployed(env, {})
    env.stubs.answer(
        "terraform", f"*{PLATFORM} init *", code=1, stdout="Error: Failed to get existing workspaces: AccessDenied"
    )
    result = env.run("outputs")
    assert result.code == 1
    assert f"{PLATFORM}: terraform init failed" in result.err and "AccessDenied" in result.err


# --------------------------------------------------------------------------------------------
# status


def _cluster_fixture(env: Env, *, replicas: int = 2, ready: int = 1) -> None:
    nodes = items(
        node("ip-10-42-1-10", "g6.xlarge", "spot", "2026-01-01T00:00:00Z"),
        node("ip-10-42-2-20", "g5.xlarge", "on-demand", NOW.strftime("%Y-%m-%dT%H:%M:%SZ")),
    )
    pods = items(
        pod("comfyui-a", "ip-10-42-1-10", cache="done", ready=True, restarts=1),
        pod("comfyui-b", "ip-10-42-2-20", cache="running", ready=False, phase="Pending"),
        pod("comfyui-c", None, cache="none", ready=False, phase="Pending"),
    )
    env.stubs.answer("kubectl", "* get nodes -l comfyui.io/node-role=gpu -o json", stdout=nodes)
    env.stubs.answer("kubectl", "* get pods -n comfyui -l *", stdout=pods)
    env.stubs.answer(
        "kubectl", "* get deployment comfyui -n comfyui -o json", stdout=json.dumps(deployment(replicas, ready))
    )
    queue = {"queue_running": [[0, "p1"]], "queue_pending": [[1, "p2"], [2, "p3"]]}
    env.stubs.answer(
        "kubectl", "* get --raw /api/v1/namespaces/comfyui/pods/comfyui-a:8188/proxy/queue *", stdout=json.dumps(queue)
    )


def _model_sync_fixture() -> str:
    """A model-sync log with an older "no command" and a newer "sent" line, the SSM command it
    names, and two dead letters."""
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.create_document(
        Name="comfyui-model-sync",
        DocumentType="Command",
        DocumentFormat="JSON",
        Content=json.dumps(
            {
                "schemaVersion": "2.2",
                "description": "sync",
                "mainSteps": [{"action": "aws:runShellScript", "name": "s", "inputs": {"runCommand": ["true"]}}],
            }
        ),
    )
    command = ssm.send_command(
        DocumentName="comfyui-model-sync", Targets=[{"Key": "tag:comfyui.io/cluster", "Values": [CLUSTER]}]
    )
    command_id = command["Command"]["CommandId"]
    logs = boto3.client("logs", region_name=REGION)
    group = "/aws/lambda/comfyui-model-sync"
    logs.create_log_group(logGroupName=group)
    now = int(time.time() * 1000)
    summary = {"records": 2, "changes": 2, "relevant": 1, "nodes": 2, "command_id": command_id}
    for number, lines in enumerate(
        [
            ['[INFO]\t2026-01-01T00:00:00Z\tr1\tno model change under ["checkpoints/"]: no command'],
            [
                "[INFO]\t2026-01-02T00:00:00Z\tr2\tmodel change: put checkpoints/x.safetensors",
                f"[INFO]\tr2\tsent {json.dumps(summary)}",
            ],
        ]
    ):
        stream = f"2026/01/0{number + 1}/[$LATEST]{number}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        events = [{"timestamp": now - 60_000 * (2 - number) + i, "message": line} for i, line in enumerate(lines)]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="comfyui-model-sync-dlq")["QueueUrl"]
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    return str(command_id)


def test_status_text(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    _cluster_fixture(env)
    command_id = _model_sync_fixture()
    result = env.run("status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "GPU nodes (2)"
    assert lines[1].split() == ["NAME", "TYPE", "CAPACITY", "AGE", "READY", "MODEL", "CACHE"]
    first = lines[2].split()
    assert first[:3] == ["ip-10-42-1-10", "g6.xlarge", "spot"] and first[4:] == ["yes", "complete"]
    assert first[3].endswith(("d", "h"))  # days old
    second = lines[3].split()
    assert second[:3] == ["ip-10-42-2-20", "g5.xlarge", "on-demand"] and second[4:] == ["yes", "filling"]
    assert lines[4] == "ComfyUI pods (1 of 3 ready, 2 wanted)"
    pods = {line.split()[0]: line for line in lines[6:9]}
    assert pods["comfyui-a"].split()[:6] == ["comfyui-a", "Running", "yes", "ip-10-42-1-10", "1", "1"]
    assert "1 running, 2 pending" in pods["comfyui-a"]
    assert "waiting for the node's model cache" in pods["comfyui-b"]
    assert "waiting for a GPU node: 0/2 nodes are available" in pods["comfyui-c"]
    assert "Model sync" in lines
    assert f"sync command {command_id} sent (Success, 0 of 0 nodes done, 0 failed)" in result.out
    assert "  dead-letter queue: 2 message(s) (batches that failed every retry: see the Lambda's log)" in lines
    assert any(line.split() == ["cluster_name", CLUSTER, PLATFORM] for line in lines)
    # the queue came through the API server's proxy: no exec was needed
    assert not [c for c in env.stubs.calls("kubectl") if "exec" in c]


def test_status_json(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    _cluster_fixture(env)
    command_id = _model_sync_fixture()
    result = env.run("status", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert [
        (n["name"], n["instance_type"], n["capacity_type"], n["cache"], n["pods"]) for n in document["gpu_nodes"]
    ] == [
        ("ip-10-42-1-10", "g6.xlarge", "spot", "complete", ["comfyui-a"]),
        ("ip-10-42-2-20", "g5.xlarge", "on-demand", "filling", ["comfyui-b"]),
    ]
    pods = {p["name"]: p for p in document["pods"]}
    assert (pods["comfyui-a"]["queue_running"], pods["comfyui-a"]["queue_pending"], pods["comfyui-a"]["queue_via"]) == (
        1,
        2,
        "proxy",
    )
    assert pods["comfyui-b"]["queue_running"] is None and pods["comfyui-c"]["node"] == "-"
    assert document["deployment"] == {"desired": 2, "ready": 1}
    assert document["idle"] is None
    sync = document["model_sync"]
    assert sync["last"]["result"] == "sent" and sync["last"]["command_id"] == command_id
    assert sync["last"]["command"]["Status"] == "Success"
    assert sync["dead_letters"] == 2
    assert document["outputs"]["comfyui_url"] == WORKLOAD_OUTPUTS["comfyui_url"]
    assert document["stacks"] == {STATE: "deployed", PLATFORM: "deployed", WORKLOAD: "deployed"}
    assert document["problems"] == []
    kubeconfig = next(c for c in env.stubs.calls("aws") if c[1:3] == ["eks", "update-kubeconfig"])
    assert kubeconfig[3:7] == ["--name", CLUSTER, "--region", REGION]
    assert all(c[1] == "--kubeconfig" and c[2] == kubeconfig[8] for c in env.stubs.calls("kubectl"))


def test_status_queue_falls_back_to_exec_when_the_proxy_is_blocked(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    env.stubs.answer(
        "kubectl",
        "* get --raw *",
        code=1,
        stderr="Error from server (ServiceUnavailable): the server is currently unable to handle the request",
    )
    env.stubs.answer(
        "kubectl",
        "* exec -n comfyui comfyui-a -c comfyui -- python -c *",
        stdout='{"queue_running": [], "queue_pending": [[1]]}',
    )
    _cluster_fixture(env)
    result = env.run("status", "--format", "json")
    assert result.code == 0, result.err
    pod_a = next(p for p in result.json()["pods"] if p["name"] == "comfyui-a")
    assert (pod_a["queue_running"], pod_a["queue_pending"], pod_a["queue_via"]) == (0, 1, "exec")
    program = next(c for c in env.stubs.calls("kubectl") if "exec" in c)[-1]
    assert "http://127.0.0.1:8188/queue" in program


def test_status_when_scaled_to_zero(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cluster, "in_schedule", lambda config, now=None: False)
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    env.stubs.answer("kubectl", "* get deployment comfyui *", stdout=json.dumps(deployment(0, 0)))
    env.stubs.answer("kubectl", "* get *", stdout=items())
    result = env.run("status")
    assert result.code == 0, result.err
    assert "GPU nodes (0)" in result.out
    assert (
        "  no ComfyUI replica running (scaling.min_replicas 0, outside the schedule); "
        "the first job or working hours start one" in result.out.splitlines()
    )
    assert "  last: no model sync has run yet (no result in /aws/lambda/comfyui-model-sync)" in result.out


def test_status_without_the_workload_stack_reads_no_cluster(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS})
    result = env.run("status")
    assert result.code == 0, result.err
    assert "the workload stack is not deployed" in result.err
    assert env.stubs.calls("kubectl") == [] and not [c for c in env.stubs.calls("aws") if "eks" in c]


def test_status_reports_an_unreachable_cluster_and_still_shows_the_rest(env: Env) -> None:
    deployed(env, {STATE: {"state_bucket_name": "b"}, PLATFORM: PLATFORM_OUTPUTS, WORKLOAD: WORKLOAD_OUTPUTS})
    env.stubs.answer(
        "aws",
        "eks update-kubeconfig *",
        code=255,
        stderr="An error occurred (AccessDeniedException) when calling the DescribeCluster operation",
    )
    result = env.run("status")
    assert result.code == 1
    assert (
        "comfyui-eks status: cannot reach cluster comfyui: aws eks update-kubeconfig failed: "
        "An error occurred (AccessDeniedException)" in result.err
    )
    assert "Outputs" in result.out and "Model sync" in result.out


def test_status_with_nothing_deployed(env: Env) -> None:
    result = env.run("status", "--format", "json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["gpu_nodes"] == [] and document["outputs"] == {}
    assert document["stacks"][STATE].startswith("not deployed")


def test_cache_states_from_the_init_container() -> None:
    assert _cluster.cache_state(pod("p", "n", cache="done", ready=True)) == "complete"
    assert _cluster.cache_state(pod("p", "n", cache="running", ready=False)) == "filling"
    assert _cluster.cache_state(pod("p", "n", cache="failed", ready=False)) == "failed: exit 1 (Error)"
    assert _cluster.cache_state(pod("p", "n", cache="none", ready=False)) == "not started"
    rows = _cluster.node_rows(json.loads(items(node("n1", "g6.xlarge", "spot", "2026-01-01T00:00:00Z"))), [])
    assert rows[0].cache == "unknown (no ComfyUI pod on this node)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (125, "2m"), (3600, "1h"), (3660 * 3, "3h3m"), (86400 * 2, "2d"), (86400 + 7200, "1d2h")],
)
def test_age(seconds: int, text: str) -> None:
    from datetime import timedelta

    assert _cluster.age(NOW - timedelta(seconds=seconds), NOW) == text
    assert _cluster.age(None, NOW) == "?"


def test_model_sync_names_prefer_the_platform_outputs(env: Env) -> None:
    from comfyui_eks.status import model_sync_names
    from core.config import load_config

    config = load_config(env.config_path)
    assert model_sync_names(config, {}) == ("/aws/lambda/comfyui-model-sync", "comfyui-model-sync-dlq")
    outputs = {
        "model_sync_dead_letter_queue_arn": "arn:aws:sqs:us-west-2:1:renamed-dlq",
        "model_sync_log_group_name": "/x",
    }
    assert model_sync_names(config, outputs) == ("/x", "renamed-dlq")
