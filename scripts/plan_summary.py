#!/usr/bin/env python3
"""Summarize `terraform show -json <planfile>` of every stack: resources to add, change,
replace and destroy, as a Markdown table (for a pull-request comment) or JSON.

    scripts/plan_summary.py [--format markdown|json] [--failed STACK]... STACK=PLAN.json...

Stacks come out in deployment order (by name suffix: -state, -platform, -workload, -edge;
any other name after them, alphabetically). A replacement (["delete", "create"] or
["create", "delete"]) counts as one replace, not an add and a destroy; "no-op" and "read"
(data sources) are not counted. `--failed STACK` lists a stack whose plan failed, so the
summary says so. Markdown lists the addresses a plan would destroy or replace (the first 20
per stack); JSON lists all of them.

Standard library only (Python 3.11). Exit codes: 0 summarized (also when a stack is listed
with --failed: the caller decides whether that fails its job), 2 bad arguments or an
unreadable plan (missing file, not JSON, not a plan of JSON format 1.x).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEPLOYMENT_ORDER = ("-state", "-platform", "-workload", "-edge")
ADDRESSES_SHOWN = 20
# Every action `terraform show -json` writes in resource_changes[].change.actions (format 1.x).
KNOWN_ACTIONS = {"no-op", "create", "read", "update", "delete", "forget"}
CATEGORY_OF = {"create": "add", "update": "change", "delete": "destroy", "forget": "forget"}


class PlanError(Exception):
    """An argument or plan file this program cannot use (exit code 2)."""


@dataclass
class StackSummary:
    stack: str
    failed: bool = False
    add: int = 0
    change: int = 0
    replace: int = 0
    destroy: int = 0
    forget: int = 0
    # Addresses, in the plan's order; deposed objects are marked as such.
    replaced: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)

    @property
    def destructive(self) -> bool:
        return bool(self.replace or self.destroy)


def categories(actions: list[str]) -> list[str]:
    """What one resource change counts as: [] for no-op and read, ["replace"] for a
    replacement, else some of add, change, destroy and forget."""
    acts = set(actions)
    unknown = acts - KNOWN_ACTIONS
    if unknown:
        raise PlanError(f"unknown action(s) {sorted(unknown)} (a newer Terraform?); update {Path(__file__).name}")
    if {"delete", "create"} <= acts:
        return ["replace"]
    # "forget": removed from state, not destroyed (a `removed` block with destroy = false).
    return [category for action, category in CATEGORY_OF.items() if action in acts]


def summarize(stack: str, plan: object, source: str) -> StackSummary:
    """The counts of one plan document (the parsed output of `terraform show -json`)."""
    if not isinstance(plan, dict):
        raise PlanError(f"{source}: not a Terraform JSON plan (expected an object)")
    version = plan.get("format_version")
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise PlanError(f"{source}: format_version {version!r} is not 1.x; is this `terraform show -json` of a plan?")
    changes = plan.get("resource_changes", [])  # absent when the configuration has no resources
    if not isinstance(changes, list):
        raise PlanError(f"{source}: resource_changes is not a list")
    summary = StackSummary(stack)
    for i, rc in enumerate(changes):
        rc = rc if isinstance(rc, dict) else {}
        change = rc.get("change") if isinstance(rc.get("change"), dict) else {}
        address, actions = rc.get("address"), change.get("actions")
        if not isinstance(address, str) or not isinstance(actions, list) or not actions:
            raise PlanError(f"{source}: resource_changes[{i}] has no address or no change.actions")
        if not all(isinstance(action, str) for action in actions):
            raise PlanError(f"{source}: resource_changes[{i}].change.actions is not a list of strings")
        if rc.get("deposed"):
            address = f"{address} (deposed object {rc['deposed']})"
        try:
            counted = categories(actions)
        except PlanError as exc:
            raise PlanError(f"{source}: {address}: {exc}") from None
        for category in counted:
            setattr(summary, category, getattr(summary, category) + 1)
            if category == "replace":
                summary.replaced.append(address)
            elif category == "destroy":
                summary.destroyed.append(address)
    return summary


def load(stack: str, path: str) -> StackSummary:
    source = f"{path} (stack {stack})"
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"{source}: cannot read: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{source}: not JSON ({exc}); give the output of `terraform show -json PLANFILE`") from exc
    return summarize(stack, plan, source)


def deployment_order(stack: str) -> tuple[int, str]:
    for i, suffix in enumerate(DEPLOYMENT_ORDER):
        if stack.endswith(suffix):
            return i, stack
    return len(DEPLOYMENT_ORDER), stack


# --- output ----------------------------------------------------------------------------------


def code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds (addresses carry for_each keys)."""
    text = " ".join(text.splitlines())
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def to_markdown(summaries: list[StackSummary]) -> str:
    lines = [
        "### Terraform plan",
        "",
        "| Stack | Add | Change | Replace | Destroy | Result |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for s in summaries:
        name = code(s.stack).replace("|", "\\|")
        if s.failed:
            lines.append(f"| {name} | – | – | – | – | **plan failed**: see the job log |")
            continue
        replace = f"**{s.replace}**" if s.replace else "0"
        destroy = f"**{s.destroy}**" if s.destroy else "0"
        if s.destructive:
            result = "**destroys or replaces resources**"
        elif s.add or s.change or s.forget:
            result = "changes"
        else:
            result = "no changes"
        if s.forget:
            result += f"; {s.forget} to forget (removed from state, not destroyed)"
        lines.append(f"| {name} | {s.add} | {s.change} | {replace} | {destroy} | {result} |")
    for s in summaries:
        if not s.destructive:
            continue
        entries = [f"- replace {code(a)}" for a in s.replaced] + [f"- **destroy** {code(a)}" for a in s.destroyed]
        lines += ["", f"**{code(s.stack)} would destroy or replace:**", "", *entries[:ADDRESSES_SHOWN]]
        if len(entries) > ADDRESSES_SHOWN:
            lines.append(f"- … and {len(entries) - ADDRESSES_SHOWN} more (see the job log)")
    return "\n".join(lines) + "\n"


def to_json(summaries: list[StackSummary]) -> str:
    return json.dumps({"stacks": [asdict(s) for s in summaries]}, indent=2) + "\n"


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plans", nargs="*", metavar="STACK=PLAN.json", help="a stack and its `terraform show -json`")
    parser.add_argument("--failed", action="append", default=[], metavar="STACK", help="a stack whose plan failed")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    if not args.plans and not args.failed:
        parser.error("give at least one STACK=PLAN.json (or --failed STACK)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pairs = []
        for arg in args.plans:
            stack, sep, path = arg.partition("=")
            if not sep or not stack or not path:
                raise PlanError(f"{arg!r} is not STACK=PLAN.json")
            pairs.append((stack, path))
        names = [stack for stack, _ in pairs] + args.failed
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PlanError(f"stack(s) given more than once: {', '.join(twice)}")
        summaries = [load(stack, path) for stack, path in pairs]
        summaries += [StackSummary(stack, failed=True) for stack in args.failed]
    except PlanError as exc:
        print(f"plan_summary: error: {exc}", file=sys.stderr)
        return 2
    summaries.sort(key=lambda s: deployment_order(s.stack))
    sys.stdout.write(to_json(summaries) if args.format == "json" else to_markdown(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
