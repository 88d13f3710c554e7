"""`comfyui-eks outputs` and `comfyui-eks status`: what is deployed and how it is doing.

    comfyui-eks outputs [--config FILE] [--outdir DIR] [--format text|json]
    comfyui-eks status  [--config FILE] [--outdir DIR] [--format text|json]

outputs: `terraform output -json` of each deployed stack, merged (a later stack wins: the edge
stack's comfyui_url is the CloudFront one); stacks without state are skipped and named on
stderr. JSON is a flat {name: value} object, for `jq -r .comfyui_url`.

status: the GPU nodes (instance type, Spot or on-demand, age, model cache), the ComfyUI pods
(phase, readiness, node, restarts, queue), the last model sync and the outputs. Read-only.
Where each fact comes from, and why:

- model cache: the ComfyUI pod's wait-for-model-cache init container on that node (see
  comfyui_eks/_cluster.py); there is no node condition or label for it.
- queue: ComfyUI's GET /queue through the API server's pod proxy, which needs no exec rights;
  the ComfyUI NetworkPolicy admits only the ALB subnets, which can stop the proxy (it
  connects from the control plane's network interfaces), so on failure status asks from
  inside the pod instead (kubectl exec) and says which it used.
- model sync: the model-sync Lambda's last result line in CloudWatch Logs ("sent {...}" with
  the SSM command ID, whose status says whether the nodes ran it; or "... no command" and why)
  AND the dead-letter queue's depth. The log line says what the last run did; only the
  dead-letter queue shows batches that failed every retry, which write no result line at all.

Exit codes: 0 ok (also when nothing is deployed yet), 1 a source could not be read (what could
be read is still shown), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyui_eks import _aws, _cluster, _stacks
from comfyui_eks._aws import AWS_ERRORS
from comfyui_eks._display import Display
from comfyui_eks._kube import Kube, KubeError
from comfyui_eks._stacks import Stack
from comfyui_eks._terraform import Terraform
from comfyui_eks.cli import CommandFailed
from core import names

if TYPE_CHECKING:
    from core.config import Config

Json = dict[str, Any]
LOG_STREAMS = 5  # newest Lambda log streams searched for the last result
LOG_EVENTS = 200  # newest events read per stream
_SENT = re.compile(r"\bsent (\{.*\})")
_NO_COMMAND = re.compile(r"(no model change.*|no running GPU node.*): no command")


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    help_text = (
        "the merged Terraform outputs of the deployed stacks"
        if name == "outputs"
        else "GPU nodes, ComfyUI pods and queues, the last model sync, the outputs"
    )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _stacks.add_arguments(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (text)")
    parser.set_defaults(func=run_outputs if name == "outputs" else run_status)
    return parser


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class Outputs:
    """The merged outputs of the deployed stacks."""

    values: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # output -> stack
    sensitive: set[str] = field(default_factory=set)
    stacks: dict[str, str] = field(default_factory=dict)  # stack -> deployed | not deployed (why)

    def deployed(self, stack_name: str) -> bool:
        return self.stacks.get(stack_name) == "deployed"


def collect_outputs(terraform: Terraform, stacks: list[Stack], *, reuse_init: bool = False) -> Outputs:
    """`terraform output -json` per stack, in deployment order. A stack without state is
    skipped: the state stack by its local state file, the others by empty outputs (every stack
    declares outputs); without a state stack there is no bucket for the others' state either."""
    found = Outputs()
    state_missing = False
    for stack in stacks:
        state_file = stack.local_state_file
        if state_file is not None and not state_file.is_file():
            found.stacks[stack.name] = f"not deployed (no {state_file.name})"
            state_missing = True
            continue
        if state_missing:
            found.stacks[stack.name] = "not deployed (the state stack is not deployed)"
            continue
        init = terraform.init(stack, reuse=reuse_init)
        if not init.ok:
            raise CommandFailed(f"{stack.name}: terraform init failed", *init.errors())
        values = terraform.outputs(stack)
        if not values:
            found.stacks[stack.name] = "not deployed (no state)"
            continue
        found.stacks[stack.name] = "deployed"
        for name, output in values.items():
            found.values[name] = output.get("value")
            found.source[name] = stack.name
            if output.get("sensitive"):
                found.sensitive.add(name)
            else:
                found.sensitive.discard(name)
    return found


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def output_lines(outputs: Outputs) -> list[str]:
    """An aligned table: name, value, stack (sensitive values masked)."""
    if not outputs.values:
        return []
    rows = [
        (name, "(sensitive)" if name in outputs.sensitive else _show(value), outputs.source[name])
        for name, value in sorted(outputs.values.items())
    ]
    return _table(("OUTPUT", "VALUE", "STACK"), rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _outputs_for(config: Config, outdir: Path, display: Display) -> Outputs:
    """Outputs of every stack; synthesizes only when cdktf.out/ lacks a stack (the backends
    come from project, account and region, so an older synthesis reads the same state)."""
    if not _stacks.is_synthesized(config, outdir):
        display.start("synth", "synthesizing the stacks (needed once to read their state)")
        _stacks.synthesize(config, outdir)
        display.finish("synth", f"synthesized into {outdir}")
    terraform = Terraform(logs=outdir / "logs")
    display.start("outputs", "reading the stacks' outputs")
    outputs = collect_outputs(terraform, _stacks.stacks(config, outdir), reuse_init=True)
    display.finish("outputs", f"{sum(1 for s in outputs.stacks.values() if s == 'deployed')} stack(s) deployed")
    return outputs


def run_outputs(args: argparse.Namespace) -> int:
    config = _stacks.load(args.config)
    with Display() as display:
        outputs = _outputs_for(config, args.outdir, display)
        for stack, state in outputs.stacks.items():
            if state != "deployed":
                display.note(f"{stack}: {state}")
    if args.format == "json":
        print(json.dumps(outputs.values, indent=2, sort_keys=True))
    else:
        print("\n".join(output_lines(outputs) or ["no outputs: nothing is deployed"]))
    return 0


# --------------------------------------------------------------------------------------------
# Cluster


@dataclass
class ClusterView:
    nodes: list[_cluster.NodeRow] = field(default_factory=list)
    pods: list[_cluster.PodRow] = field(default_factory=list)
    desired: int | None = None
    ready: int | None = None
    idle_message: str = ""
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> Json:
        return {
            "gpu_nodes": [n.as_dict() for n in self.nodes],
            "pods": [p.as_dict() for p in self.pods],
            "deployment": {"desired": self.desired, "ready": self.ready},
            "idle": self.idle_message or None,
        }


def read_queue(kube: Kube, pod: _cluster.PodRow, use_exec: bool) -> tuple[Json, str]:
    """ComfyUI's /queue of one pod: through the API server's pod proxy, or from inside the pod."""
    if use_exec:
        return json.loads(kube.exec_get(pod.name, _cluster.COMFYUI_CONTAINER, names.COMFYUI_PORT, "/queue")), "exec"
    path = f"/api/v1/namespaces/{names.COMFYUI_NAMESPACE}/pods/{pod.name}:{names.COMFYUI_PORT}/proxy/queue"
    return json.loads(kube.raw(path)), "proxy"


def fill_queues(kube: Kube, pods: list[_cluster.PodRow]) -> None:
    """Queue lengths of the ready pods; after the proxy fails once, the rest go through exec."""
    use_exec = False
    for pod in pods:
        if not pod.ready:
            continue
        try:
            try:
                queue, via = read_queue(kube, pod, use_exec)
            except KubeError:
                if use_exec:
                    raise
                use_exec = True
                queue, via = read_queue(kube, pod, use_exec)
        except (KubeError, json.JSONDecodeError) as exc:
            pod.queue_error = exc.lines[0] if isinstance(exc, KubeError) else "not JSON"
            continue
        pod.queue_running = len(queue.get("queue_running", []))
        pod.queue_pending = len(queue.get("queue_pending", []))
        pod.queue_via = via


def read_cluster(config: Config, kube: Kube, now: datetime | None = None) -> ClusterView:
    view = ClusterView()
    namespace = names.COMFYUI_NAMESPACE
    try:
        pods_json = kube.get_json("pods", "-n", namespace, "-l", _cluster.POD_SELECTOR)
        nodes_json = kube.get_json("nodes", "-l", _cluster.GPU_NODE_SELECTOR)
    except KubeError as exc:
        view.problems += exc.lines
        return view
    view.pods = _cluster.pod_rows(pods_json)
    view.nodes = _cluster.node_rows(nodes_json, view.pods, now)
    try:
        deployment = kube.get_json("deployment", _cluster.DEPLOYMENT, "-n", namespace)
    except KubeError as exc:
        view.problems += exc.lines
    else:
        replicas = _cluster.replicas(deployment)
        view.desired, view.ready = replicas.desired, replicas.ready
        if _cluster.expected_idle(config, deployment, now):
            view.idle_message = _cluster.scaled_to_zero_message(config)
    fill_queues(kube, view.pods)
    return view


# --------------------------------------------------------------------------------------------
# Model sync


def last_sync_result(logs: Any, group: str) -> Json | None:
    """The newest "sent {...}" or "...: no command" line of the model-sync Lambda (the newest
    few log streams, read backwards), or None when there is none."""
    try:
        streams = logs.describe_log_streams(
            logGroupName=group, orderBy="LastEventTime", descending=True, limit=LOG_STREAMS
        )
    except AWS_ERRORS as exc:
        if _aws.error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    for stream in streams.get("logStreams", []):
        events = logs.get_log_events(
            logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=False, limit=LOG_EVENTS
        ).get("events", [])
        for event in reversed(events):
            message = event.get("message", "")
            when = datetime.fromtimestamp(event.get("timestamp", 0) / 1000, UTC).isoformat(timespec="seconds")
            sent = _SENT.search(message)
            if sent:
                try:
                    summary = json.loads(sent.group(1))
                except json.JSONDecodeError:
                    summary = {}
                return {"time": when, "result": "sent", "command_id": summary.get("command_id"), "summary": summary}
            none = _NO_COMMAND.search(message)
            if none:
                return {"time": when, "result": "no command", "reason": none.group(1)}
    return None


def command_status(ssm: Any, command_id: str) -> Json | None:
    commands = ssm.list_commands(CommandId=command_id).get("Commands", [])
    if not commands:
        return None  # SSM keeps command history for 30 days
    command = commands[0]
    return {key: command.get(key) for key in ("Status", "TargetCount", "CompletedCount", "ErrorCount")}


def dead_letters(sqs: Any, queue_name: str) -> int | None:
    try:
        url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    except AWS_ERRORS as exc:
        if _aws.error_code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return None
        raise
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def model_sync_names(config: Config, outputs: dict[str, Any]) -> tuple[str, str]:
    """The model-sync Lambda's log group and dead-letter queue: from the platform's outputs
    where it exports them, else by the names modules/model_sync.py gives them."""
    function = f"{config.project}-model-sync"
    group = outputs.get("model_sync_log_group_name") or f"/aws/lambda/{function}"
    dlq_arn = outputs.get("model_sync_dead_letter_queue_arn")
    queue = dlq_arn.rsplit(":", 1)[-1] if isinstance(dlq_arn, str) and dlq_arn else f"{function}-dlq"
    return str(group), queue


def model_sync_status(config: Config, outputs: dict[str, Any]) -> Json:
    """The last model-sync result and the dead-letter queue's depth (see the module docstring)."""
    group, queue = model_sync_names(config, outputs)
    status: Json = {"log_group": group, "dead_letter_queue": queue, "last": None, "dead_letters": None, "problems": []}
    try:
        status["last"] = last_sync_result(_aws.client("logs", config.region), group)
        command_id = (status["last"] or {}).get("command_id")
        if command_id:
            status["last"]["command"] = command_status(_aws.client("ssm", config.region), command_id)
    except AWS_ERRORS as exc:  # permissions, throttling: say so, keep the rest of the report
        status["problems"].append(f"model sync log {group}: {_aws.error_message(exc)[:160]}")
    try:
        status["dead_letters"] = dead_letters(_aws.client("sqs", config.region), queue)
    except AWS_ERRORS as exc:
        status["problems"].append(f"model sync dead-letter queue: {_aws.error_message(exc)[:160]}")
    return status


def sync_lines(status: Json) -> list[str]:
    last = status.get("last")
    if not status.get("log_group"):
        return ["  the platform stack is not deployed"]
    if last is None:
        text = f"no model sync has run yet (no result in {status['log_group']})"
    elif last["result"] == "sent":
        command = last.get("command")
        detail = (
            f"{command['Status']}, {command['CompletedCount']} of {command['TargetCount']} nodes done, "
            f"{command['ErrorCount']} failed"
            if command
            else "command no longer in SSM's history"
        )
        text = f"{last['time']}: sync command {last.get('command_id')} sent ({detail})"
    else:
        text = f"{last['time']}: {last['reason']}: no command"
    lines = [f"  last: {text}"]
    depth = status.get("dead_letters")
    if depth is not None:
        hint = " (batches that failed every retry: see the Lambda's log)" if depth else ""
        lines.append(f"  dead-letter queue: {depth} message(s){hint}")
    return lines


# --------------------------------------------------------------------------------------------
# status


def status_lines(view: ClusterView, sync: Json, outputs: Outputs) -> list[str]:
    lines = [f"GPU nodes ({len(view.nodes)})"]
    if view.nodes:
        rows = [
            (n.name, n.instance_type, n.capacity_type, n.age, "yes" if n.ready else "no", n.cache) for n in view.nodes
        ]
        lines += _table(("NAME", "TYPE", "CAPACITY", "AGE", "READY", "MODEL CACHE"), rows, "  ")
    ready = sum(1 for p in view.pods if p.ready)
    wanted = f", {view.desired} wanted" if view.desired is not None else ""
    lines.append(f"ComfyUI pods ({ready} of {len(view.pods)} ready{wanted})")
    if view.idle_message:
        lines.append(f"  {view.idle_message}")
    if view.pods:
        pod_rows = [
            (p.name, p.phase, "yes" if p.ready else "no", p.node, str(p.restarts), _queue_text(p), p.state)
            for p in view.pods
        ]
        lines += _table(("NAME", "PHASE", "READY", "NODE", "RESTARTS", "QUEUE", "STATE"), pod_rows, "  ")
    lines += ["Model sync", *sync_lines(sync)]
    lines.append("Outputs")
    lines += [f"  {line}" for line in output_lines(outputs)] or ["  none"]
    return lines


def _queue_text(pod: _cluster.PodRow) -> str:
    if pod.queue_running is None:
        return "?" if pod.ready else "-"
    return f"{pod.queue_running} running, {pod.queue_pending} pending"


def run_status(args: argparse.Namespace) -> int:
    config = _stacks.load(args.config)
    with Display() as display:
        outputs = _outputs_for(config, args.outdir, display)
        view = ClusterView()
        if outputs.deployed(config.stack_name("workload")):
            display.start("cluster", f"reading cluster {config.cluster_name}")
            with Kube(cluster=config.cluster_name, region=config.region) as kube:
                try:
                    view = read_cluster(config, kube)
                except KubeError as exc:  # the kubeconfig could not be written
                    view.problems += exc.lines
            display.finish("cluster", f"cluster {config.cluster_name}", ok=not view.problems)
        else:
            display.note("the workload stack is not deployed: no GPU nodes or ComfyUI pods to show")
        sync: Json = {"log_group": "", "last": None, "dead_letters": None, "problems": []}
        if outputs.deployed(config.stack_name("platform")):
            sync = model_sync_status(config, outputs.values)
    problems = [*view.problems, *sync["problems"]]
    document = {
        **view.as_dict(),
        "model_sync": {k: v for k, v in sync.items() if k != "problems"},
        "outputs": outputs.values,
        "stacks": outputs.stacks,
        "problems": problems,
    }
    if args.format == "json":
        print(json.dumps(document, indent=2, default=str))
    else:
        print("\n".join(status_lines(view, sync, outputs)))
    if problems:
        raise CommandFailed(*problems)
    return 0
