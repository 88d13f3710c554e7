"""Terraform, run per stack directory (`terraform -chdir=<dir> ...`), never interactively.

Every run's combined output goes to a log file (cdktf.out/logs/<stack>.<action>.log) and,
line by line, to the progress display; on failure the caller gets the error blocks
Terraform printed, ready to show as a few lines. Runs get TF_IN_AUTOMATION (no "run
terraform apply next" hints), -input=false and -no-color, and a shared provider cache
(TF_PLUGIN_CACHE_DIR, unless the user set one): every deploy re-synthesizes cdktf.out/, which
drops each stack's .terraform/, and the AWS provider alone is hundreds of megabytes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyui_eks._display import Display
from comfyui_eks._stacks import Stack
from comfyui_eks.cli import CommandFailed

Json = dict[str, Any]
BINARY = "terraform"
PLUGIN_CACHE = Path.home() / ".terraform.d" / "plugin-cache"
# How many lines of Terraform's errors a failure shows (the log has everything).
ERROR_LINES = 20
_ERROR_BLOCK_LINES = 8
_BOX = re.compile(r"^[\s│╷╵]+")
_ACTIVITY = re.compile(r"^(module\.|data\.)?[A-Za-z0-9_]+\.[^\s:]+: ")
_SUMMARY = re.compile(r"^(Apply complete!|Destroy complete!|No changes\.|Plan: )")


def clean(line: str) -> str:
    """A line without the box drawing Terraform puts around diagnostics."""
    return _BOX.sub("", line).rstrip()


def error_lines(lines: Sequence[str], limit: int = ERROR_LINES) -> list[str]:
    """The error blocks of Terraform's output ("Error: ..." and the lines after it), each cut
    to its summary, location and detail; the last non-empty lines when there is none (a crash)."""
    cleaned = [clean(line) for line in lines]
    starts = [i for i, line in enumerate(cleaned) if line.startswith("Error:")]
    if not starts:
        return [line for line in cleaned if line.strip()][-limit:]
    picked: list[str] = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(cleaned)
        block = [line for line in cleaned[start:end] if line.strip()]
        picked += block[:_ERROR_BLOCK_LINES]
    return picked[:limit]


def summary(lines: Sequence[str]) -> str:
    """Terraform's own one-line result ("Apply complete! Resources: 3 added, ..."), or ""."""
    for line in reversed(lines):
        text = clean(line)
        if _SUMMARY.match(text):
            return text
    return ""


@dataclass
class Outcome:
    """One Terraform run: its exit code, everything it printed, and where that is logged."""

    action: str
    code: int
    lines: list[str] = field(default_factory=list)
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def summary(self) -> str:
        return summary(self.lines)

    def errors(self) -> list[str]:
        found = error_lines(self.lines)
        if self.log is not None:
            found.append(f"full log: {self.log}")
        return found


class Terraform:
    """Runs Terraform in stack directories; `display` shows what each run is doing."""

    def __init__(self, *, logs: Path, display: Display | None = None, binary: str = BINARY) -> None:
        self.logs = logs
        self.display = display
        self.binary = binary
        self._initialized: set[Path] = set()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
        if "TF_PLUGIN_CACHE_DIR" not in env:
            try:
                PLUGIN_CACHE.mkdir(parents=True, exist_ok=True)
                env["TF_PLUGIN_CACHE_DIR"] = str(PLUGIN_CACHE)
            except OSError:
                pass  # no cache: slower, not wrong
        return env

    def run(self, stack: Stack, action: str, *args: str) -> Outcome:
        """Run `terraform -chdir=<stack> args`, streaming its output to the log and the display."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{stack.name}.{action}.log"
        command = [self.binary, f"-chdir={stack.directory}", *args]
        lines: list[str] = []
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=self.env(),
            )
        except OSError as exc:
            return Outcome(action, 127, [f"Error: cannot run {self.binary}: {exc.strerror or exc}"], None)
        with log.open("w", encoding="utf-8") as sink, process:
            assert process.stdout is not None
            try:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    sink.write(raw)
                    lines.append(line)
                    self._show(stack, action, line)
            except KeyboardInterrupt:
                # Terraform got the same SIGINT and stops gracefully (releasing its state
                # lock): wait for it rather than leave it running.
                process.wait()
                raise
            code = process.wait()
        return Outcome(action, code, lines, log)

    def _show(self, stack: Stack, action: str, line: str) -> None:
        text = clean(line)
        if self.display is not None and _ACTIVITY.match(text):
            self.display.update(stack.name, f"{stack.name}: {action}: {text[:110]}")

    def capture(self, stack: Stack, *args: str) -> str:
        """A quiet run whose stdout is the result (output -json, state list, show -json)."""
        try:
            done = subprocess.run(
                [self.binary, f"-chdir={stack.directory}", *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env=self.env(),
                check=False,
            )
        except OSError as exc:
            raise CommandFailed(f"{stack.name}: cannot run {self.binary}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            detail = error_lines((done.stderr + "\n" + done.stdout).splitlines(), limit=8)
            raise CommandFailed(f"{stack.name}: terraform {args[0]} failed", *detail)
        return done.stdout

    def init(self, stack: Stack, *, reuse: bool = False) -> Outcome:
        """`init` once per stack directory and run (it is idempotent, just not free). `reuse`:
        also skip it when an earlier command initialized the directory (reading commands)."""
        if stack.directory in self._initialized or (reuse and stack.initialized):
            return Outcome("init", 0)
        outcome = self.run(stack, "init", "init", "-input=false", "-no-color")
        if outcome.ok:
            self._initialized.add(stack.directory)
        return outcome

    def apply(self, stack: Stack, plan_file: str | None = None) -> Outcome:
        approve = [plan_file] if plan_file else ["-auto-approve"]
        return self.run(stack, "apply", "apply", "-input=false", "-no-color", *approve)

    def plan(self, stack: Stack, plan_file: str) -> Outcome:
        """Exit code 0: no changes, 2: changes (-detailed-exitcode), 1: error."""
        return self.run(stack, "plan", "plan", "-input=false", "-no-color", "-detailed-exitcode", f"-out={plan_file}")

    def destroy(self, stack: Stack) -> Outcome:
        return self.run(stack, "destroy", "destroy", "-input=false", "-no-color", "-auto-approve")

    def outputs(self, stack: Stack) -> Json:
        """`terraform output -json`: {name: {"value": ..., "sensitive": ..., "type": ...}}."""
        data: Json = json.loads(self.capture(stack, "output", "-json", "-no-color") or "{}")
        return data

    def state_list(self, stack: Stack) -> list[str]:
        return [line for line in self.capture(stack, "state", "list", "-no-color").splitlines() if line.strip()]

    def state_values(self, stack: Stack) -> dict[str, Json]:
        """Attributes of every root-module resource in the state, by address (`terraform show -json`)."""
        data = json.loads(self.capture(stack, "show", "-json", "-no-color") or "{}")
        resources = data.get("values", {}).get("root_module", {}).get("resources", [])
        return {r["address"]: r.get("values", {}) for r in resources if "address" in r}

    def state_rm(self, stack: Stack, addresses: Sequence[str]) -> Outcome:
        return self.run(stack, "state-rm", "state", "rm", "-no-color", *addresses)
