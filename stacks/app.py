"""Build the cdktf App from a Config; synthesize it atomically; summarize the result."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cdktf import App

from core import names
from core.config import Config, ConfigError
from stacks.edge import EdgeStack
from stacks.platform import PlatformStack
from stacks.state import StateStack
from stacks.workload import WorkloadStack


def build_app(config: Config, *, outdir: str | os.PathLike[str]) -> App:
    """Every stack, in deployment order: state → platform → workload (→ edge)."""
    app = App(outdir=str(outdir))
    state = StateStack(app, config=config)
    platform = PlatformStack(app, config=config, state=state)
    workload = WorkloadStack(app, config=config, platform=platform)
    if config.edge.cloudfront:
        EdgeStack(app, config=config, workload=workload)
    return app


def check_renderable(config: Config) -> None:
    """Render, before any stack is built, what the configuration alone decides and what can
    still be refused after validation (the GPU nodes' user-data must fit EC2's limit with this
    bucket name and these prefixes). Raises ConfigError naming the keys and the fix."""
    from modules.gpu_user_data import render_gpu_user_data

    try:
        render_gpu_user_data(
            models_bucket=config.models_bucket,
            region=config.region,
            model_prefixes=config.model_sync.prefixes,
            cluster_name=config.cluster_name,
            cache_deadline_seconds=config.gpu.model_cache_deadline_seconds,
        )
    except ValueError as exc:
        raise ConfigError(
            [
                f"buckets.models / model_sync.prefixes: {' '.join(str(exc).split())[:300]}; "
                "fix: use fewer or shorter prefixes"
            ]
        ) from None


def warnings_for(config: Config) -> list[str]:
    warnings = []
    if config.unauthenticated_public:
        warnings.append(
            "auth.mode is 'none': ComfyUI will be reachable from the internet WITHOUT authentication "
            "(acknowledged by auth.acknowledge_public_unauthenticated)."
        )
    if config.network.api_is_open_to_everyone:
        warnings.append(
            "network.api_public_cidrs opens the EKS API endpoint to the whole internet (IAM still authenticates; "
            "acknowledged by network.acknowledge_public_api)."
        )
    return warnings


def synth_atomically(config: Config, *, outdir: Path) -> None:
    """Synthesize into a sibling temporary directory and swap it in only when complete, so a
    failure never leaves a half-written cdktf.out/ (and never deletes the previous one)."""
    outdir = outdir.resolve()
    tmp = outdir.with_name(f".{outdir.name}.tmp")
    old = outdir.with_name(f".{outdir.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        build_app(config, outdir=tmp).synth()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if outdir.exists():
        outdir.rename(old)
    tmp.rename(outdir)
    if old.exists():
        shutil.rmtree(old)


def count_resources(stack_json: dict[str, Any]) -> int:
    resources = stack_json.get("resource", {})
    modules = stack_json.get("module", {})
    return sum(len(v) for v in resources.values()) + len(modules)


def summarize(outdir: Path) -> str:
    manifest = json.loads((outdir / "manifest.json").read_text())
    order = tuple(f"-{cycle}" for cycle in names.CYCLES)
    stacks = sorted(
        manifest["stacks"].items(), key=lambda kv: next((i for i, o in enumerate(order) if kv[0].endswith(o)), 99)
    )
    lines = [f"{'stack':<28} {'resources':>9}  terraform json"]
    for name, stack in stacks:
        path = outdir / stack["synthesizedStackPath"]
        data = json.loads(path.read_text())
        lines.append(f"{name:<28} {count_resources(data):>9}  {path}")
    lines.append("(resources = resources + module calls; deploy in this order)")
    return "\n".join(lines)
