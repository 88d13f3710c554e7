"""kubectl against this configuration's cluster, never the user's current context.

A private kubeconfig (in a temporary directory that lives as long as the command) is written
with `aws eks update-kubeconfig`, so it authenticates the way the workload stack does (`aws
eks get-token`) and a command never reads or changes ~/.kube/config or lands on another
cluster by accident.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self

from core import names

Json = dict[str, Any]
KUBECTL = "kubectl"
AWS = "aws"
DEFAULT_TIMEOUT = 30.0


class KubeError(Exception):
    """kubectl or aws failed; `lines` says what and why, one problem per line."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Kube:
    def __init__(self, *, cluster: str, region: str) -> None:
        self.cluster = cluster
        self.region = region
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._kubeconfig: Path | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kubeconfig(self) -> Path:
        """Written once per command, on first use."""
        if self._kubeconfig is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfyui-eks-")
            path = Path(self._tmp.name) / "kubeconfig"
            command = [
                AWS, "eks", "update-kubeconfig", "--name", self.cluster, "--region", self.region,
                "--kubeconfig", str(path), "--alias", f"comfyui-eks-{self.cluster}",
            ]  # fmt: skip
            done = _run(command, DEFAULT_TIMEOUT)
            if done.returncode != 0:
                raise KubeError(
                    f"cannot reach cluster {self.cluster}: aws eks update-kubeconfig failed: "
                    f"{_first_line(done.stderr or done.stdout)}"
                )
            self._kubeconfig = path
        return self._kubeconfig

    def run(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run([KUBECTL, "--kubeconfig", str(self.kubeconfig()), *args], timeout)

    def get_json(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Json:
        """`kubectl get ... -o json`, parsed; KubeError with kubectl's message on failure."""
        done = self.run("get", *args, "-o", "json", timeout=timeout)
        if done.returncode != 0:
            raise KubeError(f"kubectl get {' '.join(args)}: {_first_line(done.stderr or done.stdout)}")
        try:
            data: Json = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise KubeError(f"kubectl get {' '.join(args)}: not JSON") from None
        return data

    def raw(self, path: str, *, timeout: float = 10.0) -> str:
        """GET an API server path (`kubectl get --raw`), e.g. a pod's proxy."""
        done = self.run("get", "--raw", path, f"--request-timeout={int(timeout)}s", timeout=timeout + 5)
        if done.returncode != 0:
            raise KubeError(f"GET {path}: {_first_line(done.stderr or done.stdout)}")
        return done.stdout

    def exec_get(self, pod: str, container: str, port: int, path: str, *, timeout: float = 10.0) -> str:
        """GET http://127.0.0.1:<port><path> from inside a container (kubectl exec): reaches the
        pod where its NetworkPolicy stops the API server's proxy."""
        program = (
            "import sys,urllib.request;"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}{path}',timeout={timeout:g}).read().decode())"
        )
        done = self.run(
            "exec", "-n", names.COMFYUI_NAMESPACE, pod, "-c", container, "--", "python", "-c", program,
            timeout=timeout + 10,
        )  # fmt: skip
        if done.returncode != 0:
            raise KubeError(f"{pod}: GET {path} inside the pod: {_first_line(done.stderr or done.stdout)}")
        return done.stdout


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise KubeError(f"{command[0]} is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise KubeError(f"{command[0]} {' '.join(command[1:3])}: no answer within {timeout:g} s") from None
