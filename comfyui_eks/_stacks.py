"""The configuration, the stacks it defines and their synthesis, for the commands that drive
Terraform (deploy, destroy, outputs, status).

Everything here maps the project's own errors onto the CLI's: a bad configuration is a
UsageError (exit 2) with the configuration's own lines, so no command ever touches AWS or
Terraform with a configuration that `python main.py` would refuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyui_eks.cli import UsageError
from core import names

if TYPE_CHECKING:
    from core.config import Config

Json = dict[str, Any]
# Deployment order; destroy goes the other way.
CYCLES = names.CYCLES
OUTDIR_ENV = "CDKTF_OUTDIR"
DEFAULT_OUTDIR = "cdktf.out"


@dataclass(frozen=True)
class Stack:
    """One synthesized stack: its deployment cycle, its name and the directory Terraform runs in."""

    cycle: str
    name: str
    directory: Path

    @property
    def json_path(self) -> Path:
        return self.directory / "cdk.tf.json"

    def document(self) -> Json:
        """The synthesized Terraform JSON (what Terraform will apply)."""
        data: Json = json.loads(self.json_path.read_text(encoding="utf-8"))
        return data

    @property
    def local_state_file(self) -> Path | None:
        """Only the state stack keeps its state in a local file (it creates the bucket the
        others use): `../../../<stack>.tfstate` from its directory (stacks/state.py), i.e. next
        to the output directory."""
        if self.cycle != names.STATE_CYCLE:
            return None
        return self.directory.resolve().parent.parent.parent / f"{self.name}.tfstate"

    @property
    def initialized(self) -> bool:
        """`terraform init` has run here since the last synthesis (it records the backend)."""
        return (self.directory / ".terraform" / "terraform.tfstate").is_file()


def default_outdir() -> Path:
    """Where main.py writes too, so `python main.py` and the CLI share one cdktf.out/ (and the
    state stack's local state file next to it)."""
    return Path(os.environ.get(OUTDIR_ENV, DEFAULT_OUTDIR))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --outdir, for the commands that work on the synthesized stacks."""
    parser.add_argument(
        "--config", metavar="FILE", help="YAML configuration (default: $COMFYUI_EKS_CONFIG or config/default.yaml)"
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=default_outdir(),
        metavar="DIR",
        help="synthesis output (default: cdktf.out)",
    )


def load(path: str | None) -> Config:
    """Load and validate the configuration; every problem is one UsageError line (exit 2).
    What only rendering can refuse (main.py's check_renderable) is checked by `synthesize`,
    still before anything touches AWS: importing it loads cdktf and its Node.js runtime (over
    ten seconds), which reading commands (outputs, status) never need."""
    from core.config import CONFIG_ENV_VAR, ConfigError, load_config

    try:
        return load_config(path or os.environ.get(CONFIG_ENV_VAR))
    except ConfigError as exc:
        raise UsageError(*(f"config error: {line}" for line in exc.errors)) from None


def cycles_of(config: Config) -> tuple[str, ...]:
    """The cycles this configuration deploys, in deployment order."""
    return tuple(c for c in CYCLES if c != "edge" or config.edge.cloudfront)


def select(config: Config, spec: str | None) -> tuple[str, ...]:
    """The cycles named by --stacks (cycle or full stack names, comma-separated), in deployment
    order whatever order they were given in; all of them without --stacks."""
    available = cycles_of(config)
    if not spec:
        return available
    chosen: set[str] = set()
    problems = []
    for item in (part.strip() for part in spec.split(",")):
        cycle = item.removeprefix(f"{config.project}-")
        if cycle in available:
            chosen.add(cycle)
        elif cycle == "edge":
            problems.append("--stacks edge: this configuration has no edge stack (edge.cloudfront is false)")
        else:
            names = ", ".join(available)
            problems.append(f"--stacks {item or '(empty)'}: not a stack of this configuration; choose from {names}")
    if problems:
        raise UsageError(*problems)
    return tuple(c for c in available if c in chosen)


def stacks(config: Config, outdir: Path, cycles: tuple[str, ...] | None = None) -> list[Stack]:
    """The stacks of `cycles` (default: all), in deployment order."""
    return [
        Stack(cycle, config.stack_name(cycle), outdir / "stacks" / config.stack_name(cycle))
        for cycle in (cycles if cycles is not None else cycles_of(config))
    ]


def is_synthesized(config: Config, outdir: Path) -> bool:
    """Whether `outdir` holds every stack of this configuration (outputs and status reuse it
    rather than pay for a synthesis: they only need the backends, which come from project,
    account and region)."""
    return all(stack.json_path.is_file() for stack in stacks(config, outdir))


def synthesize(config: Config, outdir: Path) -> None:
    """Synthesize every stack in-process, atomically (main.py's path without its summary);
    a configuration that cannot be rendered is a UsageError (exit 2), nothing written."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from core.config import ConfigError
    from stacks.app import check_renderable, synth_atomically, warnings_for

    try:
        check_renderable(config)
    except ConfigError as exc:
        raise UsageError(*(f"config error: {line}" for line in exc.errors)) from None
    for warning in warnings_for(config):
        print(f"WARNING: {warning}", file=sys.stderr)
    synth_atomically(config, outdir=outdir)


def unprotected(config: Config) -> Config:
    """A copy of the configuration with data_protection.prevent_destroy off, validated like a
    file would be (destroy --delete-data synthesizes from it)."""
    from core.config import ConfigError, parse_config

    data = config.model_dump(mode="json")
    data["data_protection"] = {**data.get("data_protection", {}), "prevent_destroy": False}
    try:
        return parse_config(data)
    except ConfigError as exc:  # cannot happen for a valid config; say so rather than crash
        raise UsageError(*(f"config error: {line}" for line in exc.errors)) from None


def repository_name(config: Config) -> str:
    """The ComfyUI image repository the platform stack creates (stacks/platform.py)."""
    return f"{config.project}/comfyui"


def repository_url(config: Config) -> str:
    suffix = ".amazonaws.com.cn" if config.partition == "aws-cn" else ".amazonaws.com"
    return f"{config.account_id}.dkr.ecr.{config.region}{suffix}/{repository_name(config)}"


def data_buckets(config: Config) -> dict[str, str]:
    """Every bucket the stacks create, by what it holds; destroy --delete-data empties these."""
    return {
        "models": config.models_bucket,
        "inputs": config.inputs_bucket,
        "outputs": config.outputs_bucket,
        "access logs": config.access_logs_bucket,
        "Terraform state": config.state_bucket,
        "state access logs": config.state_log_bucket,
    }
