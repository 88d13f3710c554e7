"""What the cluster says about ComfyUI, from kubectl's JSON: GPU nodes, ComfyUI pods, the
Deployment's replicas and whether the schedule wants warm replicas now.

Model cache state of a node: the node has no condition or label for it (the cache marker is a
file on the node's instance store). The ComfyUI pod's first init container,
`wait-for-model-cache`, runs exactly until that marker exists, so its state on the node is the
cheapest real signal: running = the cache is still filling, terminated with 0 = complete,
terminated otherwise = the wait gave up. A node without a ComfyUI pod says nothing: unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core import names

if TYPE_CHECKING:
    from core.config import Config

Json = dict[str, Any]
CACHE_INIT_CONTAINER = "wait-for-model-cache"
COMFYUI_CONTAINER = "comfyui"
DEPLOYMENT = "comfyui"
GPU_NODE_SELECTOR = f"{names.NODE_ROLE_TAG_KEY}={names.NODE_ROLE_GPU}"
APP_LABELS = names.APP_LABELS
POD_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted(APP_LABELS.items()))
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def age(since: datetime | None, now: datetime) -> str:
    """kubectl-style age: 45s, 12m, 3h10m, 2d4h."""
    if since is None:
        return "?"
    seconds = max(0, int((now - since).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{seconds}s"


@dataclass
class PodRow:
    name: str
    phase: str
    ready: bool
    node: str
    restarts: int
    state: str  # a short human explanation (waiting for model cache, Pending: reason, ...)
    cache: str  # complete | filling | failed: ... | not started
    queue_running: int | None = None
    queue_pending: int | None = None
    queue_error: str = ""
    queue_via: str = ""

    def as_dict(self) -> Json:
        return asdict(self)


@dataclass
class NodeRow:
    name: str
    instance_type: str
    capacity_type: str
    age: str
    ready: bool
    cache: str
    pods: list[str] = field(default_factory=list)

    def as_dict(self) -> Json:
        return asdict(self)


def _status_of(statuses: list[Json], name: str) -> Json:
    return next((s for s in statuses if s.get("name") == name), {})


def cache_state(pod: Json) -> str:
    """The model cache of the pod's node, as its wait-for-model-cache init container shows it."""
    status = _status_of(pod.get("status", {}).get("initContainerStatuses", []) or [], CACHE_INIT_CONTAINER)
    state = status.get("state", {})
    if "running" in state:
        return "filling"
    if "terminated" in state:
        terminated = state["terminated"]
        if terminated.get("exitCode") == 0:
            return "complete"
        return f"failed: exit {terminated.get('exitCode')} ({terminated.get('reason', '?')})"
    return "not started"


def _pod_state(pod: Json, cache: str, ready: bool) -> str:
    status = pod.get("status", {})
    phase = str(status.get("phase", "?"))
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "terminating (finishing its work within the grace period)"
    if phase == "Pending":
        unscheduled = next(
            (c for c in status.get("conditions", []) if c.get("type") == "PodScheduled" and c.get("status") == "False"),
            None,
        )
        if unscheduled:
            return f"waiting for a GPU node: {unscheduled.get('message', unscheduled.get('reason', ''))[:160]}"
        if cache == "filling":
            return "waiting for the node's model cache"
        return "starting"
    comfyui = _status_of(status.get("containerStatuses", []) or [], COMFYUI_CONTAINER)
    waiting = comfyui.get("state", {}).get("waiting")
    if waiting:
        return f"{waiting.get('reason', 'waiting')}: {waiting.get('message', '')}".rstrip(": ")[:160]
    if phase == "Running" and not ready:
        return "running, not ready yet (loading)"
    return phase.lower()


def pod_row(pod: Json) -> PodRow:
    status = pod.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    restarts = sum(int(s.get("restartCount", 0)) for s in status.get("containerStatuses", []) or [])
    cache = cache_state(pod)
    return PodRow(
        name=pod.get("metadata", {}).get("name", "?"),
        phase=status.get("phase", "?"),
        ready=ready,
        node=pod.get("spec", {}).get("nodeName") or "-",
        restarts=restarts,
        state=_pod_state(pod, cache, ready),
        cache=cache,
    )


def node_rows(nodes: Json, pods: list[PodRow], now: datetime | None = None) -> list[NodeRow]:
    now = now or datetime.now(UTC)
    rows = []
    for node in nodes.get("items", []):
        meta = node.get("metadata", {})
        labels = meta.get("labels", {})
        name = meta.get("name", "?")
        on_node = [p for p in pods if p.node == name]
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
        )
        if on_node:
            cache = on_node[0].cache if on_node[0].cache != "not started" else "unknown (ComfyUI pod not started)"
        else:
            cache = "unknown (no ComfyUI pod on this node)"
        rows.append(
            NodeRow(
                name=name,
                instance_type=labels.get(INSTANCE_TYPE_LABEL, "?"),
                capacity_type=labels.get(CAPACITY_TYPE_LABEL, "?"),
                age=age(parse_time(meta.get("creationTimestamp")), now),
                ready=ready,
                cache=cache,
                pods=[p.name for p in on_node],
            )
        )
    return sorted(rows, key=lambda r: r.name)


def pod_rows(pods: Json) -> list[PodRow]:
    return sorted((pod_row(p) for p in pods.get("items", [])), key=lambda r: r.name)


@dataclass(frozen=True)
class Replicas:
    desired: int
    ready: int


def replicas(deployment: Json) -> Replicas:
    """The Deployment's desired replicas (KEDA sets them) and how many are ready."""
    spec = deployment.get("spec", {})
    status = deployment.get("status", {})
    desired = spec.get("replicas")
    return Replicas(int(desired if desired is not None else 1), int(status.get("readyReplicas") or 0))


def in_schedule(config: Config, now: datetime | None = None) -> bool:
    """Whether scaling.schedule asks for warm replicas now (its days, start <= time < end, in its time zone)."""
    schedule = config.scaling.schedule
    if schedule is None:
        return False
    from zoneinfo import ZoneInfo

    local = (now or datetime.now(UTC)).astimezone(ZoneInfo(schedule.timezone))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    return day in schedule.days and schedule.start <= local.strftime("%H:%M") < schedule.end


def scaled_to_zero_message(config: Config) -> str:
    """Why no replica runs, when that is the configuration working as intended."""
    if config.scaling.schedule is None:
        return "no ComfyUI replica running (scaling.min_replicas 0, no schedule); the first job starts one"
    return (
        "no ComfyUI replica running (scaling.min_replicas 0, outside the schedule); "
        "the first job or working hours start one"
    )


def expected_idle(config: Config, deployment: Json, now: datetime | None = None) -> bool:
    """No replica wanted, and none should be: min_replicas 0 and outside the schedule."""
    return replicas(deployment).desired == 0 and config.scaling.min_replicas == 0 and not in_schedule(config, now)
