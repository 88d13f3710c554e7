"""The AWS CLIs the tests run, each called through a fork server (tests/aws_cli_forkserver.py)
that imports the CLI once per test process instead of once per call (about 0.6 s of each call):

- v2, the node scripts' CLI: Debian's /usr/bin/aws (AL2023's awscli-2 on the nodes);
- v1, the project venv's `aws` (awscli from the Pipfile), what the `aws_cli_env` fixture puts
  first on PATH for the other scripts (image push, destroy guard).

AWS_CLI_FORKSERVER=0 in the environment makes every call start /usr/bin/aws itself instead.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.aws_cli_forkserver import DATA_PATH, startup_environment

# Where Debian's (and CI's, apt-installed) AWS CLI v2 lives.
AWS_V2 = Path("/usr/bin/aws")
FORKSERVER = Path(__file__).with_name("aws_cli_forkserver.py")
# The caller's interpreter, isolated and without site-packages: the caller imports only built-in
# modules (tests/aws_cli_forkserver.py), so a call starts about as fast as a bare interpreter.
CALLER = f"{shlex.quote(sys.executable)} -I -S {shlex.quote(str(FORKSERVER))} call"


def use_forkserver() -> bool:
    return os.environ.get("AWS_CLI_FORKSERVER", "1") != "0"


def interpreter(script: Path) -> str:
    """The interpreter a script's `#!` line names (the fork server must import the CLI with it)."""
    first = script.read_bytes().split(b"\n", 1)[0].decode()
    if not first.startswith("#!"):
        raise RuntimeError(f"{script} has no #! line")
    words = first[2:].split()
    if not words or len(words) > 1:
        raise RuntimeError(f"{script}: expected '#!/path/to/python', found {first!r}")
    return words[0]


@functools.cache
def forkserver(script: str) -> str:
    """Start (once per process) a fork server for the CLI at `script`; the socket's path.

    Its environment is the minimum plus what an interpreter reads at start-up (the locale,
    PYTHON* variables) as this process has it: callers' environments derive from this one.
    """
    directory = tempfile.mkdtemp(prefix="aws-cli-forkserver-")
    socket_path = os.path.join(directory, "socket")
    env = {"PATH": "/usr/bin:/bin", "HOME": directory, **startup_environment(dict(os.environ))}
    env.pop(DATA_PATH, None)
    server = subprocess.Popen(
        [interpreter(Path(script)), str(FORKSERVER), "serve", socket_path, script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a test that signals its process group leaves it alone
    )
    assert server.stdout is not None
    ready = server.stdout.readline()
    if ready.strip() != b"ready":
        server.kill()
        _, err = server.communicate(timeout=10)
        raise RuntimeError(f"the AWS CLI fork server did not start: {ready!r} {err.decode(errors='replace')}")

    def stop() -> None:
        server.kill()
        server.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    return socket_path


def wrapper_text(script: Path, *, endpoint_from: str | None = None) -> str:
    """An `aws` for PATH: the CLI at `script`, through its fork server unless
    AWS_CLI_FORKSERVER=0, with --endpoint-url from the variable `endpoint_from` if given
    (AWS CLI v2.9 predates AWS_ENDPOINT_URL)."""
    command = f"{CALLER} {shlex.quote(forkserver(str(script)))}" if use_forkserver() else shlex.quote(str(script))
    endpoint = f' --endpoint-url "${endpoint_from}"' if endpoint_from else ""
    return f'#!/bin/sh\nexec {command}{endpoint} "$@"\n'


def install_wrapper(directory: Path, script: Path, *, endpoint_from: str | None = None) -> Path:
    """`directory`/aws (see wrapper_text); the directory, to put first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "aws"
    wrapper.write_text(wrapper_text(script, endpoint_from=endpoint_from))
    wrapper.chmod(0o755)
    return directory
