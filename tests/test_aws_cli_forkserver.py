"""The AWS CLI fork server (tests/aws_cli_forkserver.py) runs the CLI as the CLI runs itself:
same output, exit status, signals, environment, working directory and standard streams as
calling the CLI's own script, for both CLIs the tests use (tests/aws_cli.py)."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from unittest import mock

import pytest

from tests import aws_cli
from tests.helpers import moto_client, require

V1 = Path(sys.executable).parent / "aws"
CLIS = {"v2": aws_cli.AWS_V2, "v1": V1}


@pytest.fixture(params=sorted(CLIS))
def clis(request, aws_cli_env, tmp_path, monkeypatch) -> tuple[dict[str, str], Path, Path]:
    """(environment, the CLI called directly, the CLI through its fork server), each as an `aws`
    wrapper that adds --endpoint-url (v2.9 ignores AWS_ENDPOINT_URL; v1 takes it either way)."""
    script = CLIS[request.param]
    require(script.is_file(), f"{script} is not installed (CI installs AWS CLI v2 with apt: awscli)")
    forked = aws_cli.install_wrapper(tmp_path / "forked", script, endpoint_from="AWS_ENDPOINT_URL") / "aws"
    monkeypatch.setenv("AWS_CLI_FORKSERVER", "0")
    direct = aws_cli.install_wrapper(tmp_path / "direct", script, endpoint_from="AWS_ENDPOINT_URL") / "aws"
    assert "aws_cli_forkserver" in forked.read_text() and "aws_cli_forkserver" not in direct.read_text()
    return aws_cli_env, direct, forked


@pytest.fixture
def bucket(moto_server) -> str:
    name = f"forkserver-{uuid.uuid4().hex[:16]}"
    s3 = moto_client("s3", moto_server)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3.put_object(Bucket=name, Key="models/sd 1.5+x.safetensors", Body=b"weights")
    return name


def run(aws: Path, args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(aws), *args], env=env, capture_output=True, timeout=60, check=False, **kwargs)


def test_same_output_and_status_as_the_cli_itself(clis, bucket, tmp_path):
    env, direct, forked = clis
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "relative.txt").write_bytes("ünï 1\n".encode())
    calls = [
        ["s3api", "list-objects-v2", "--bucket", bucket, "--query", "Contents[].[Key, Size]"],
        ["s3", "cp", f"s3://{bucket}/models/sd 1.5+x.safetensors", "-"],  # bytes to the caller's stdout
        ["s3", "cp", "--no-progress", "relative.txt", f"s3://{bucket}/from-cwd.txt"],  # the caller's directory
        ["s3", "cp", "--no-progress", "-", f"s3://{bucket}/from-stdin.txt"],  # the caller's stdin
        ["s3", "ls", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/"],  # an error: status and stderr
    ]
    for args in calls:
        expected = run(direct, args, env, cwd=work, input=b"from stdin\n")
        actual = run(forked, args, env, cwd=work, input=b"from stdin\n")
        assert (actual.returncode, actual.stdout, actual.stderr) == (
            expected.returncode,
            expected.stdout,
            expected.stderr,
        ), args
    assert run(forked, ["s3", "cp", f"s3://{bucket}/from-stdin.txt", "-"], env).stdout == b"from stdin\n"


@pytest.mark.parametrize("clis", ["v2"], indirect=True)  # v1 names no distribution
def test_the_user_agent_is_the_clis_though_the_distribution_is_found_once(clis, bucket, tmp_path):
    """AWS CLI v2 runs `lsb_release -a` for its user agent on every start; the server asked once
    (tests/aws_cli_forkserver.py, `_find_distribution`): a call sends the CLI's own user
    agent without starting `lsb_release` again."""
    env, direct, forked = clis
    real = shutil.which("lsb_release", path=env["PATH"])
    require(real is not None, "no lsb_release on PATH (Debian's lsb-release package)")
    started = tmp_path / "lsb_release.log"
    spy = tmp_path / "spy" / "lsb_release"
    spy.parent.mkdir()
    spy.write_text(f'#!/bin/sh\necho started >> {shlex.quote(str(started))}\nexec {shlex.quote(str(real))} "$@"\n')
    spy.chmod(0o755)
    env = {**env, "PATH": f"{spy.parent}{os.pathsep}{env['PATH']}"}
    agents = {}
    for aws in (direct, forked):
        result = run(aws, ["--debug", "s3api", "list-objects-v2", "--bucket", bucket], env)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        agents[aws] = set(re.findall(rb"'User-Agent': '([^']+)'", result.stderr))
        runs = len(started.read_text().split()) if started.exists() else 0
        assert runs == 1, f"lsb_release started {runs} times after the {aws.parent.name} call"
    (agent,) = agents[direct]
    assert re.search(rb" source/" + platform.machine().encode() + rb"\.\w", agent), agent  # ".debian.12"
    assert agents[forked] == agents[direct]


def test_the_callers_data_path_comes_first_as_in_the_cli(clis, tmp_path):
    """awscli/__init__.py puts the caller's AWS_DATA_PATH before its own data on import: a
    model there overrides the CLI's (here: an `sts` without operations has no
    get-caller-identity)."""
    env, direct, forked = clis
    data = tmp_path / "data"
    folder = data / "sts" / "2011-06-15"
    folder.mkdir(parents=True)
    (folder / "service-2.json").write_text(
        '{"version":"2.0","metadata":{"apiVersion":"2011-06-15","endpointPrefix":"sts",'
        '"protocol":"query","serviceFullName":"Overridden STS","serviceId":"STS",'
        '"signatureVersion":"v4","uid":"sts-2011-06-15"},"operations":{},"shapes":{}}'
    )
    env = {**env, "AWS_DATA_PATH": str(data)}
    expected = run(direct, ["sts", "get-caller-identity"], env)
    actual = run(forked, ["sts", "get-caller-identity"], env)
    assert expected.returncode != 0 and b"Invalid choice" in expected.stderr  # the override took effect
    assert (actual.returncode, actual.stdout, actual.stderr) == (expected.returncode, expected.stdout, expected.stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("clis", ["v2"], indirect=True)  # the server's own code: one CLI is enough
def test_a_signal_to_the_caller_ends_the_cli(clis, sig):
    """A CLI call stuck on an endpoint that never answers: SIGTERM to the caller reaches the CLI
    (the caller then dies of it, as the CLI itself would); SIGKILL of the caller kills the CLI.
    Either way the CLI's connection to the endpoint closes."""
    env, direct, forked = clis
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        env = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        for aws in (direct, forked):
            proc = subprocess.Popen(
                [str(aws), "s3", "ls", "--cli-read-timeout", "0", "--cli-connect-timeout", "5"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            silent.settimeout(30)
            conn, _ = silent.accept()  # the CLI is connected and waiting for an answer
            conn.settimeout(30)
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == -sig, aws
            deadline = time.monotonic() + 30
            while conn.recv(65536):  # the request, then the end: the CLI's process is gone
                assert time.monotonic() < deadline
            conn.close()


def test_a_caller_with_another_locale_is_refused(clis):
    """The interpreter reads the locale at start-up, which a fork cannot redo: refused, loudly."""
    env, _direct, forked = clis
    other = {**env, "LC_ALL": "C" if os.environ.get("LC_ALL") != "C" else "C.UTF-8"}
    refused = run(forked, ["--version"], other)
    assert refused.returncode == 125 and b"locale" in refused.stderr


EXIT_PROBE = """
import atexit, sys, threading, time
from tests.aws_cli_forkserver import _exit
done = sys.argv[1]
def late():
    time.sleep(0.2)
    open(done, "w").write("joined")
threading.Thread(target=late).start()  # not a daemon: exit waits for it
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("buffered, not flushed")
_exit(eval(sys.argv[2]))
"""


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [("None", 0, ""), ("3", 3, ""), ("256 + 7", 7, ""), ("'boom'", 1, "boom\n")]
)
def test_a_served_program_ends_as_the_interpreter_would_end_it(tmp_path, code, status, stderr):
    """The fork ends with os._exit, after what the interpreter would do that a program sees."""
    done = tmp_path / "thread-done"
    result = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(done), code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=aws_cli.FORKSERVER.parent.parent,
    )
    assert (result.returncode, result.stdout, result.stderr) == (status, "buffered, not flushedatexit ran\n", stderr)
    assert done.read_text() == "joined"


# What importing the fork server's file adds to a bare `python -I -S` with `os`: the caller runs
# once per CLI call, so it must not bring in the standard library's socket, signal or json.
IMPORTS_PROBE = """
import os, sys
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
import aws_cli_forkserver
print(" ".join(sorted(set(sys.modules) - before)))
"""
CALLER_IMPORTS = {"__future__", "_signal", "_socket", "_struct", "aws_cli_forkserver", "marshal", "struct"}


def test_the_caller_imports_only_built_in_modules():
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORTS_PROBE, str(aws_cli.FORKSERVER.parent)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert set(result.stdout.split()) <= CALLER_IMPORTS, result.stdout


def test_sessions_share_one_loaded_data_loader_per_data_path(monkeypatch, tmp_path):
    """What the server does before serving (with this process's botocore, the v1 CLI's): every
    session with the CLI's data path gets one loader, whose caches already hold the warmed
    services' models and the list of services; both are those a fresh loader reads; another
    data path gets a loader of its own."""
    import botocore.loaders
    import botocore.session

    from tests.aws_cli_forkserver import WARM_SERVICES, _share_data_loader

    data_path = str(tmp_path / "no-models-here")
    monkeypatch.setattr(botocore.session, "create_loader", botocore.session.create_loader)  # restored after
    _share_data_loader(data_path)
    monkeypatch.setenv("AWS_DATA_PATH", data_path)
    first, second = (botocore.session.Session().get_component("data_loader") for _ in range(2))
    assert first is second
    with mock.patch.object(botocore.loaders.os, "listdir", wraps=os.listdir) as listdir:
        services = botocore.session.Session().get_available_services()  # as the CLI's driver asks
    assert not listdir.called, "the services were listed again"
    assert services == botocore.loaders.create_loader(data_path).list_available_services("service-2")
    cached = {key[1:] for key in first._cache if key[0] == "load_service_model"}  # botocore's instance_cache
    assert {(service, "service-2") for service in WARM_SERVICES} <= cached
    fresh = botocore.loaders.create_loader(data_path)
    for service in WARM_SERVICES:
        assert first.load_service_model(service, "service-2") == fresh.load_service_model(service, "service-2")
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    assert botocore.session.Session().get_component("data_loader") is not first
