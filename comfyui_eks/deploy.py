"""`comfyui-eks deploy` and `comfyui-eks destroy`: the stacks, in order, with the checks and the
clean-up that plain `terraform apply`/`destroy` per stack leave to the user.

    comfyui-eks deploy  [--config FILE] [--stacks a,b] [--yes] [--skip-preflight CHECK ...]
                        [--wait SECONDS] [--outdir DIR] [--format text|json]
    comfyui-eks destroy [--config FILE] [--delete-data] [--yes] [--outdir DIR] [--format text|json]

deploy: validate the configuration (exit 2), synthesize in-process, run the preflight checks
(any problem: exit 1, nothing applied), then init + apply each stack in deployment order,
stopping at the first failure (its name and Terraform's errors; later stacks untouched), then
wait for ComfyUI's health endpoint. Without --yes it plans each stack and asks before applying
(terminal only; off a terminal --yes is required).

destroy: edge, workload, then what the controllers left outside Terraform (GPU instances,
load balancers, target groups, security groups), platform, state. Data is kept unless
--delete-data is given and confirmed: protected resources are removed from the state first
(the deliberate way past prevent_destroy) and recorded, so they can be imported again or
deleted later with --delete-data.

Exit codes: 0 done, 1 a check or a stack failed (or a question was declined), 2 bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyui_eks import _aws, _cleanup, _cluster, _keep, _stacks, preflight
from comfyui_eks._aws import AWS_ERRORS
from comfyui_eks._display import Display
from comfyui_eks._kube import Kube, KubeError
from comfyui_eks._stacks import Stack
from comfyui_eks._terraform import Outcome, Terraform, clean
from comfyui_eks.cli import CommandFailed, UsageError
from core import names

if TYPE_CHECKING:
    from core.config import Config

Json = dict[str, Any]
PLAN_FILE = "tfplan"
HEALTH_TIMEOUT = 1200.0  # a GPU node boots and fills its model cache: minutes, not seconds
HEALTH_INTERVAL = 15.0
# After the pods are ready, how long the URL may stay unreachable before deploy concludes that
# this machine cannot reach it (an internal ALB from outside the VPC) rather than "not yet".
UNREACHABLE_GRACE = 120.0
PROBE_TIMEOUT = 5.0
PLAN_LINES = 40
GUARD_RETRIES = 3  # destroy --delete-data: empty again when late access logs refill a bucket
GUARD_MESSAGE = "still holds objects"
# Destroy's waits for AWS (instances terminating, ENIs released); tests shorten them.
CLEANUP_PACE = _cleanup.Pace()


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    if name == "deploy":
        return _register_deploy(subparsers, name)
    return _register_destroy(subparsers, name)


def _common(parser: argparse.ArgumentParser) -> None:
    _stacks.add_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask (required when stdin is not a terminal)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="result format on stdout (text)")


def _register_deploy(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="synthesize, check and apply the stacks in order, then wait for ComfyUI",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument(
        "--stacks", metavar="a,b", help="only these stacks (state, platform, workload, edge), in deployment order"
    )
    parser.add_argument(
        "--skip-preflight",
        action="extend",
        nargs="+",
        default=[],
        choices=sorted(preflight.CHECKS),
        metavar="CHECK",
        help=f"skip these checks: {', '.join(preflight.CHECKS)}",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=HEALTH_TIMEOUT,
        metavar="SECONDS",
        help=(
            f"how long to wait for ComfyUI's health endpoint after the workload stack ({HEALTH_TIMEOUT:g}; "
            "0: do not wait)"
        ),
    )
    parser.set_defaults(func=run_deploy)
    return parser


def _register_destroy(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="destroy the stacks in reverse order and what the controllers created (data is kept)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete the buckets' contents, the images, the keys (asks for the project name, or --yes)",
    )
    parser.set_defaults(func=run_destroy)
    return parser


# --------------------------------------------------------------------------------------------
# Talking to the user


def interactive() -> bool:
    """Questions need a person: stdin and stderr on a terminal."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def ask(question: str) -> str:
    print(question, end="", file=sys.stderr, flush=True)
    try:
        return input()
    except EOFError:
        return ""


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("y", "yes")


@dataclass
class StackResult:
    stack: str
    status: str  # applied | unchanged | destroyed | kept | skipped | failed | declined | not run
    summary: str = ""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> Json:
        return asdict(self)


def _emit(document: Json, json_format: bool, text_lines: list[str]) -> None:
    if json_format:
        print(json.dumps(document, indent=2, default=str))
    elif text_lines:
        print("\n".join(text_lines))


# --------------------------------------------------------------------------------------------
# deploy


def run_deploy(args: argparse.Namespace) -> int:
    config = _stacks.load(args.config)
    cycles = _stacks.select(config, args.stacks)
    if args.wait < 0:
        raise UsageError(f"--wait {args.wait:g}: give the seconds to wait for ComfyUI, 0 or more")
    if not args.yes and not interactive():
        raise UsageError(
            "stdin is not a terminal, so nothing can be confirmed: pass --yes to apply (nothing was changed)"
        )
    outdir: Path = args.outdir
    json_format = args.format == "json"
    document: Json = {"ok": False, "stacks": [], "preflight": [], "health": None, "outputs": {}}
    with Display() as display:
        _synthesize(config, outdir, display)
        findings = _preflight(config, cycles, args.skip_preflight, display)
        document["preflight"] = [f.as_dict() for f in findings]
        problems = [f.line() for f in findings if not f.ok]
        if problems:
            _emit(document, json_format, [])
            raise CommandFailed(*(f"preflight: {line}" for line in problems), "nothing was applied")
        terraform = Terraform(logs=outdir / "logs", display=display)
        selected = _stacks.stacks(config, outdir, cycles)
        check_image = "ecr-image" not in args.skip_preflight
        results = _apply_all(config, outdir, selected, terraform, display, yes=args.yes, check_image=check_image)
        document["stacks"] = [r.as_dict() for r in results]
        failed = next((r for r in results if r.status in ("failed", "declined")), None)
        if failed is not None:
            _emit(document, json_format, [])
            raise CommandFailed(*_failure_lines(failed, results))
        from comfyui_eks.status import collect_outputs

        outputs = collect_outputs(terraform, selected)
        document["outputs"] = outputs.values
        health = None
        if "workload" in cycles and args.wait > 0:
            health = _wait_for_health(config, outputs.values, args.wait, display)
            document["health"] = health.as_dict()
    document["ok"] = health is None or health.state != "timeout"
    from comfyui_eks.status import output_lines

    text = output_lines(outputs)
    if health is not None:
        text.append(f"ComfyUI: {health.message}")
    _emit(document, json_format, text)
    if health is not None and health.state == "timeout":
        raise CommandFailed(*health.lines)
    return 0


def _synthesize(config: Config, outdir: Path, display: Display) -> None:
    display.start("synth", "synthesizing the stacks")
    try:
        _stacks.synthesize(config, outdir)
    except UsageError:
        display.finish("synth", "the configuration cannot be rendered", ok=False)
        raise
    except Exception as exc:  # noqa: BLE001 - jsii/cdktf errors have no common base; one line here, the trace is main.py's
        display.finish("synth", "synthesis failed", ok=False)
        raise CommandFailed(
            f"synthesis failed: {' '.join(str(exc).split())[:300]}",
            "run python main.py --config FILE for the full trace",
        ) from None
    display.finish("synth", f"synthesized into {outdir}")


def _preflight(config: Config, cycles: tuple[str, ...], skip: list[str], display: Display) -> list[preflight.Finding]:
    display.start("preflight", "preflight checks")
    findings = preflight.run_checks(config, cycles, skip)
    problems = sum(1 for f in findings if not f.ok)
    for finding in findings:
        if finding.ok:
            display.note(finding.line())
    display.finish("preflight", f"preflight: {len(findings)} checks, {problems} problem(s)", ok=problems == 0)
    return findings


def _failure_lines(failed: StackResult, results: list[StackResult]) -> list[str]:
    untouched = [r.stack for r in results if r.status == "not run"]
    verb = "was declined" if failed.status == "declined" else "failed"
    lines = [f"{failed.stack} {verb}", *failed.errors]
    if untouched:
        lines.append(f"not applied: {', '.join(untouched)}")
    return lines


def _apply_all(
    config: Config,
    outdir: Path,
    selected: list[Stack],
    terraform: Terraform,
    display: Display,
    *,
    yes: bool,
    check_image: bool,
) -> list[StackResult]:
    """Apply stack after stack; after a failure the rest are marked `not run`. What an earlier
    destroy kept is imported by the apply of its stack (import blocks, see _keep)."""
    record = _keep.record_path(config.project, outdir)
    results: list[StackResult] = []
    stopped = False
    for stack in selected:
        if stopped:
            results.append(StackResult(stack.name, "not run"))
            continue
        if stack.cycle == "workload" and check_image:
            missing = preflight.image_missing(config)
            if missing is not None:
                display.start(stack.name, f"{stack.name}: image check")
                display.finish(stack.name, f"{stack.name}: not applied", ok=False)
                results.append(StackResult(stack.name, "failed", errors=[missing.line()]))
                stopped = True
                continue
        kept = _keep.recorded(record, stack.name, stack.document())
        imports = _keep.write_imports(stack.directory, kept)
        if imports:
            display.note(f"{stack.name}: importing {imports} resources an earlier destroy kept (listed in {record})")
        result = apply_stack(stack, terraform, display, yes=yes)
        if result.status == "applied" and kept:
            _keep.drop_from_record(record, kept)
        elif result.status == "failed" and imports:
            result.errors.append(
                f"this apply also imported what an earlier destroy kept ({record}); if you deleted some of it, "
                "remove those entries from that file"
            )
        results.append(result)
        stopped = result.status in ("failed", "declined")
    return results


def apply_stack(stack: Stack, terraform: Terraform, display: Display, *, yes: bool) -> StackResult:
    """init, then apply (--yes) or plan, show, ask and apply the saved plan."""
    started = time.monotonic()
    display.start(stack.name, f"{stack.name}: init")
    outcome = terraform.init(stack)
    if outcome.ok:
        display.update(stack.name, f"{stack.name}: {'apply' if yes else 'plan'}")
        if yes:
            outcome = terraform.apply(stack)
        else:
            outcome = terraform.plan(stack, PLAN_FILE)
            if outcome.code == 0:
                display.finish(stack.name, f"{stack.name}: no changes")
                return StackResult(stack.name, "unchanged", "No changes.", time.monotonic() - started)
            if outcome.code == 2:
                if not _confirm_plan(stack, outcome, display):
                    display.finish(stack.name, f"{stack.name}: not applied (declined)", ok=False)
                    return StackResult(stack.name, "declined", errors=["you answered no: nothing of it was applied"])
                display.update(stack.name, f"{stack.name}: apply")
                outcome = terraform.apply(stack, PLAN_FILE)
    seconds = time.monotonic() - started
    if not outcome.ok:
        display.finish(stack.name, f"{stack.name}: terraform {outcome.action} failed", ok=False)
        return StackResult(
            stack.name, "failed", seconds=seconds, errors=[f"terraform {outcome.action}:", *outcome.errors()]
        )
    display.finish(stack.name, f"{stack.name}: {outcome.summary or 'applied'} ({seconds:.0f} s)")
    return StackResult(stack.name, "applied", outcome.summary, seconds)


def plan_lines(outcome: Outcome, limit: int = PLAN_LINES) -> list[str]:
    """The plan's resource actions ("# x will be created") and its Plan: line."""
    picked = [clean(line).strip() for line in outcome.lines]
    actions = [line for line in picked if line.startswith("# ") and (" will be " in line or " must be " in line)]
    total = next((line for line in reversed(picked) if line.startswith("Plan: ")), "")
    shown = actions[:limit]
    if len(actions) > limit:
        shown.append(f"... and {len(actions) - limit} more (full plan: {outcome.log})")
    return [*shown, total] if total else shown


def _confirm_plan(stack: Stack, outcome: Outcome, display: Display) -> bool:
    with display.paused():
        for line in plan_lines(outcome):
            display.console.print(f"  {line}", markup=False, highlight=False)
        return _yes(ask(f"Apply these changes to {stack.name}? [y/N] "))


# --------------------------------------------------------------------------------------------
# Health


@dataclass(frozen=True)
class Probe:
    kind: str  # healthy | login | unavailable | unreachable | unexpected
    detail: str


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """GET <url>/system_stats once, without following redirects (a redirect is a login page)."""
    import requests

    target = url.rstrip("/") + "/system_stats"
    try:
        response = requests.get(target, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return Probe("unreachable", f"not reachable from this machine ({type(exc).__name__})")
    if response.is_redirect:
        return Probe("login", f"answers with a redirect to a login ({response.status_code}), not ComfyUI's page")
    if response.status_code in (502, 503, 504):
        return Probe(
            "unavailable", f"{response.status_code} from the load balancer: no healthy ComfyUI pod behind it yet"
        )
    try:
        healthy = response.status_code == 200 and "system" in response.json()
    except ValueError:
        healthy = False
    if healthy:
        return Probe("healthy", "answers")
    return Probe("unexpected", f"answers {response.status_code}, not ComfyUI's system stats")


@dataclass
class Health:
    state: str  # healthy | ready | idle | timeout
    message: str
    url: str | None = None
    lines: list[str] = field(default_factory=list)

    def as_dict(self) -> Json:
        return {"state": self.state, "message": self.message, "url": self.url, "details": self.lines}


def health_url(outputs: dict[str, Any]) -> str | None:
    """The address to probe: the login-free internal API endpoint when there is one (a Cognito
    ALB answers every request with a login redirect), else ComfyUI's URL (through CloudFront
    when the edge stack has run)."""
    for name in ("comfyui_api_url", "comfyui_url"):
        value = outputs.get(name)
        if isinstance(value, str) and value.startswith("http"):
            return value
    return None


def wait_for_comfyui(
    config: Config,
    url: str | None,
    kube: Kube,
    *,
    timeout: float,
    interval: float = HEALTH_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    probe_url: Callable[[str], Probe] = probe,
) -> Health:
    """Until ComfyUI answers GET <url>/system_stats, bounded by `timeout`.

    Scale to zero: with scaling.min_replicas 0, outside the schedule and without jobs, KEDA
    keeps the Deployment at 0 replicas; that is success, said as such (the Deployment's
    spec.replicas, which KEDA sets, is 0). When the URL cannot answer from here (a Cognito
    login, an internal ALB outside this machine's network) but the pods are ready (their
    readiness probe is the same GET /system_stats), that is success too, with the reason.
    """
    deadline = clock() + timeout
    ready_since: float | None = None
    last = "no answer yet"
    kube_problem = ""
    ready = 0
    while True:
        try:
            deployment = kube.get_json("deployment", _cluster.DEPLOYMENT, "-n", names.COMFYUI_NAMESPACE)
        except KubeError as exc:
            deployment, kube_problem = None, exc.lines[0]
        if deployment is not None:
            if _cluster.expected_idle(config, deployment):
                return Health("idle", _cluster.scaled_to_zero_message(config), url)
            ready = _cluster.replicas(deployment).ready
            if ready and ready_since is None:
                ready_since = clock()
        if url is not None:
            result = probe_url(url)
            if result.kind == "healthy":
                return Health("healthy", f"answers at {url}", url)
            last = f"{url} {result.detail}"
            grace_over = ready_since is not None and clock() - ready_since >= UNREACHABLE_GRACE
            if ready_since is not None and (result.kind == "login" or (result.kind == "unreachable" and grace_over)):
                return Health("ready", f"{ready} replica(s) ready (readiness probe GET /system_stats); {last}", url)
        elif ready_since is not None:
            return Health("ready", f"{ready} replica(s) ready (readiness probe GET /system_stats)", url)
        if clock() >= deadline:
            return Health(
                "timeout",
                f"no answer within {timeout / 60:g} min",
                url,
                _timeout_lines(kube, timeout, last, kube_problem),
            )
        sleep(interval)


def _timeout_lines(kube: Kube, timeout: float, last: str, kube_problem: str) -> list[str]:
    lines = [f"ComfyUI did not answer within {timeout / 60:g} min: {last}"]
    if kube_problem:
        lines.append(kube_problem)
    try:
        pods = _cluster.pod_rows(kube.get_json("pods", "-n", names.COMFYUI_NAMESPACE, "-l", _cluster.POD_SELECTOR))
    except KubeError as exc:
        pods = []
        lines.append(exc.lines[0])
    lines += [f"pod {p.name}: {p.state}" for p in pods]
    lines.append("the stacks are deployed; follow it with comfyui-eks status")
    return lines


def _wait_for_health(config: Config, outputs: dict[str, Any], timeout: float, display: Display) -> Health:
    url = health_url(outputs)
    display.start("health", f"waiting for ComfyUI ({url or 'in the cluster'})")
    with Kube(cluster=config.cluster_name, region=config.region) as kube:
        health = wait_for_comfyui(config, url, kube, timeout=timeout, interval=HEALTH_INTERVAL)
    display.finish("health", f"ComfyUI: {health.message}", ok=health.state != "timeout")
    return health


# --------------------------------------------------------------------------------------------
# destroy


@dataclass
class DestroyRun:
    """Everything one destroy needs and what it did (the report)."""

    config: Config
    outdir: Path
    delete_data: bool
    terraform: Terraform
    display: Display
    results: list[StackResult] = field(default_factory=list)
    kept: list[Json] = field(default_factory=list)
    removed: _cleanup.Removed = field(default_factory=_cleanup.Removed)
    emptied: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def client(self, service: str) -> Any:
        return _aws.client(service, self.config.region)

    def document(self, ok: bool) -> Json:
        return {
            "ok": ok,
            "delete_data": self.delete_data,
            "stacks": [r.as_dict() for r in self.results],
            "removed": self.removed.as_dict(),
            "emptied": self.emptied,
            "deleted": self.deleted,
            "kept": self.kept,
            "kept_record": str(_keep.record_path(self.config.project, self.outdir)) if self.kept else None,
        }


def run_destroy(args: argparse.Namespace) -> int:
    config = _stacks.load(args.config)
    if not args.yes and not interactive():
        raise UsageError("stdin is not a terminal, so nothing can be confirmed: pass --yes (nothing was changed)")
    _confirm_destroy(config, delete_data=args.delete_data, yes=args.yes)
    outdir: Path = args.outdir
    target = _stacks.unprotected(config) if args.delete_data else config
    with Display() as display:
        _synthesize(target, outdir, display)
        run = DestroyRun(config, outdir, args.delete_data, Terraform(logs=outdir / "logs", display=display), display)
        try:
            destroy_all(run)
        except CommandFailed:
            _emit(run.document(False), args.format == "json", [])
            raise
    _emit(run.document(True), args.format == "json", _destroy_lines(run))
    return 0


def _confirm_destroy(config: Config, *, delete_data: bool, yes: bool) -> None:
    """Data deletion needs the project name typed on a terminal (or --yes with --delete-data)."""
    stacks = ", ".join(config.stack_name(c) for c in reversed(_stacks.cycles_of(config)))
    if delete_data and not yes:
        buckets = ", ".join(f"s3://{b}" for b in _stacks.data_buckets(config).values())
        print(
            f"This destroys {stacks} and DELETES YOUR DATA: every object version in {buckets}, the images in "
            f"{_stacks.repository_name(config)}, the job table, and schedules the KMS keys for deletion.",
            file=sys.stderr,
        )
        if ask(f"Type the project name ({config.project}) to confirm: ").strip() != config.project:
            raise CommandFailed("not confirmed: nothing was destroyed or deleted")
    elif not yes and not _yes(ask(f"Destroy {stacks}? Data (buckets, keys, images, job table) is kept. [y/N] ")):
        raise CommandFailed("not confirmed: nothing was destroyed")


def destroy_all(run: DestroyRun) -> None:
    """Reverse order; controllers' leftovers after the workload stack; data last."""
    config = run.config
    ordered = list(reversed(_stacks.stacks(config, run.outdir)))
    if not _has_state(run, ordered[-1]):
        run.display.note("the state stack holds nothing: no stack is deployed")
        run.results += [StackResult(s.name, "skipped", "not deployed") for s in ordered]
    else:
        for stack in ordered:
            _destroy_stack(run, stack)
            if stack.cycle == "workload":
                _remove_leftovers(run)
    record = _keep.record_path(config.project, run.outdir)
    if run.delete_data:
        earlier = [item for item in _keep.load_record(record) if item not in run.kept]
        if earlier:
            run.display.start("kept", "deleting what an earlier destroy kept")
            run.deleted += _cleanup.delete_kept(earlier, run.client, run.display.note)
            run.display.finish("kept", "deleted what an earlier destroy kept")
        record.unlink(missing_ok=True)
    if run.kept:
        _keep.save_record(record, run.kept)


def _has_state(run: DestroyRun, stack: Stack) -> bool:
    init = run.terraform.init(stack)
    if not init.ok:
        raise CommandFailed(
            f"{stack.name}: terraform init failed", *init.errors(), *_not_destroyed(run, stack, including=True)
        )
    return bool(run.terraform.state_list(stack))


def _not_destroyed(run: DestroyRun, stack: Stack, *, including: bool = False) -> list[str]:
    """The line naming the stacks a failure at `stack` leaves standing."""
    order = [s.name for s in reversed(_stacks.stacks(run.config, run.outdir))]
    index = order.index(stack.name)
    left = order[index:] if including else order[index + 1 :]
    return [f"not destroyed: {', '.join(left)}; run comfyui-eks destroy again once the cause is fixed"] if left else []


def _destroy_stack(run: DestroyRun, stack: Stack) -> None:
    """One stack: skipped without state; platform and state keep their data first (or, with
    --delete-data, have their buckets emptied)."""
    run.display.start(stack.name, f"{stack.name}: destroy")
    started = time.monotonic()
    if not _has_state(run, stack):
        run.display.finish(stack.name, f"{stack.name}: nothing deployed")
        run.results.append(StackResult(stack.name, "skipped", "not deployed"))
        return
    if stack.cycle in ("platform", "state") and not _prepare_data_stack(run, stack):
        return
    outcome = _run_destroy(run, stack)
    seconds = time.monotonic() - started
    if not outcome.ok:
        run.display.finish(stack.name, f"{stack.name}: terraform destroy failed", ok=False)
        run.results.append(StackResult(stack.name, "failed", seconds=seconds, errors=outcome.errors()))
        raise CommandFailed(f"{stack.name}: terraform destroy failed", *outcome.errors(), *_not_destroyed(run, stack))
    run.display.finish(stack.name, f"{stack.name}: {outcome.summary or 'destroyed'} ({seconds:.0f} s)")
    run.results.append(StackResult(stack.name, "destroyed", outcome.summary, seconds))


def _run_destroy(run: DestroyRun, stack: Stack) -> Outcome:
    """terraform destroy; with --delete-data, a bucket's guard that found objects (access logs
    delivered after it was emptied) gets the buckets emptied again and another attempt."""
    outcome = run.terraform.destroy(stack)
    attempts = 1
    while (
        not outcome.ok
        and run.delete_data
        and attempts < GUARD_RETRIES
        and any(GUARD_MESSAGE in line for line in outcome.lines)
    ):
        _empty_buckets(run, stack)
        outcome = run.terraform.destroy(stack)
        attempts += 1
    return outcome


def _remove_leftovers(run: DestroyRun) -> None:
    """After the workload stack had its chance to drain the GPU nodes and delete the ALBs."""
    run.display.start("leftovers", "removing what Karpenter and the load balancer controller left")
    workload = _stacks.stacks(run.config, run.outdir, ("workload",))[0]
    try:
        run.removed = _cleanup.remove_controller_leftovers(
            ec2=run.client("ec2"),
            elbv2=run.client("elbv2"),
            cluster=run.config.cluster_name,
            cluster_tag_key=names.NODE_CLUSTER_TAG_KEY,
            pace=CLEANUP_PACE,
            note=run.display.note,
        )
    except CommandFailed as exc:
        run.display.finish("leftovers", "controllers' leftovers not removed", ok=False)
        raise CommandFailed(*exc.lines, *_not_destroyed(run, workload)) from None
    except AWS_ERRORS as exc:  # permissions, throttling beyond retries
        run.display.finish("leftovers", "controllers' leftovers not removed", ok=False)
        raise CommandFailed(
            f"removing the controllers' leftovers failed: {_aws.error_message(exc)[:200]}",
            *_not_destroyed(run, workload),
        ) from None
    summary = "; ".join(run.removed.lines()) or "nothing left behind"
    run.display.finish("leftovers", f"controllers' leftovers: {summary}")


def _empty_buckets(run: DestroyRun, stack: Stack) -> None:
    """destroy --delete-data: every bucket the stack holds, and the platform's images."""
    buckets = _stacks.data_buckets(run.config)
    kinds = (
        ("Terraform state", "state access logs")
        if stack.cycle == "state"
        else ("models", "inputs", "outputs", "access logs")
    )
    for kind in kinds:
        bucket = buckets[kind]
        run.display.update(stack.name, f"{stack.name}: emptying s3://{bucket}")
        run.emptied[bucket] = run.emptied.get(bucket, 0) + _cleanup.empty_bucket(run.client("s3"), bucket)
    if stack.cycle == "platform":
        repository = _stacks.repository_name(run.config)
        count = _cleanup.delete_images(run.client("ecr"), repository)
        if count:
            run.deleted.append(f"{count} image(s) of {repository}")


def _prepare_data_stack(run: DestroyRun, stack: Stack) -> bool:
    """Platform and state before their destroy. With --delete-data: empty the buckets. Without:
    remove the kept resources from the state (recorded first); a stack that would keep
    everything (the state stack) is left whole and still managed. False: nothing to destroy."""
    document = stack.document()
    kept = _keep.keep_set(document, seeds_only_protected=run.delete_data)
    if not run.delete_data and set(kept) >= set(_keep.resources(document)):
        run.display.finish(stack.name, f"{stack.name}: kept whole (it holds only data)")
        labels = sorted({k.label for k in kept.values() if k.type in _keep.DATA_HOLDERS and k.label})
        run.results.append(StackResult(stack.name, "kept", f"still managed by Terraform: {', '.join(labels)}"))
        return False
    if run.delete_data:
        _empty_buckets(run, stack)
    if kept:
        _forget(run, stack, kept)
    return True


def _forget(run: DestroyRun, stack: Stack, kept: dict[str, _keep.Kept]) -> None:
    """`terraform state rm` of the kept resources that are in the state, recorded first."""
    values = run.terraform.state_values(stack)
    entries = _keep.entries(stack.name, stack.directory, kept, values)
    if not entries:
        return
    run.kept += entries
    _keep.save_record(_keep.record_path(run.config.project, run.outdir), entries)
    run.display.update(stack.name, f"{stack.name}: keeping {len(entries)} resources (terraform state rm)")
    outcome = run.terraform.state_rm(stack, [e["address"] for e in entries])
    if not outcome.ok:
        run.display.finish(stack.name, f"{stack.name}: terraform state rm failed", ok=False)
        raise CommandFailed(
            f"{stack.name}: terraform state rm failed", *outcome.errors(), *_not_destroyed(run, stack, including=True)
        )


def _destroy_lines(run: DestroyRun) -> list[str]:
    lines = [f"{r.stack}: {r.status}{f' ({r.summary})' if r.summary else ''}" for r in run.results]
    lines += run.removed.lines()
    lines += [f"emptied s3://{bucket}: {count} object versions deleted" for bucket, count in run.emptied.items()]
    lines += [f"deleted {item}" for item in run.deleted]
    if run.kept:
        shown = ("aws_s3_bucket", "aws_kms_alias", "aws_ecr_repository", "aws_dynamodb_table", "aws_cognito_user_pool")
        record = _keep.record_path(run.config.project, run.outdir)
        lines.append(f"kept in AWS, removed from Terraform's state ({len(run.kept)} resources, listed in {record}):")
        lines += [f"  {k['type']} {k['label'] or k['id']}" for k in run.kept if k["type"] in shown]
        lines.append("the next comfyui-eks deploy imports them back; comfyui-eks destroy --delete-data deletes them")
    return lines
