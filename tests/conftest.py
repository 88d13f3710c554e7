"""Session-wide fixtures: a local S3-compatible server (moto) and one synthesis per session."""

from __future__ import annotations

import collections
import gc
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tests import aws_cli
from tests.helpers import MOTO_ENVIRONMENT, default_config_data, require, start_moto_server
from tests.jsii_loads import defer_assembly_loads

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
defer_assembly_loads()  # a worker that builds no construct never starts Node.js
for key, value in MOTO_ENVIRONMENT.items():  # in-process moto (mock_aws) reads them when used
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def moto_server():
    """A moto server on 127.0.0.1 for the real `aws` CLI. Yields its endpoint URL.

    The server is shared by the whole session: tests must use unique bucket names.
    """
    has_server = importlib.util.find_spec("flask") is not None
    require(has_server, "moto's server needs moto[server] (scripts/test.sh installs it)")
    proc, url = start_moto_server()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws_cli_env(moto_server, tmp_path):
    """Environment for running the real `aws` CLI (and scripts using it) against moto: the
    project venv's AWS CLI v1 first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-west-2",
        AWS_REGION="us-west-2",
        AWS_ENDPOINT_URL=moto_server,
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    # The venv's `aws` (AWS CLI v1) through its fork server (tests/aws_cli.py), ahead of the venv.
    v1 = Path(sys.executable).parent / "aws"
    if v1.exists():
        wrappers = aws_cli.install_wrapper(tmp_path / "aws-cli-v1", v1)
        env["PATH"] = f"{wrappers}{os.pathsep}{env['PATH']}"
    return env


# --- synthesis, once per session --------------------------------------------------------

DEFAULT_VARIANT = "default"
# Extra configurations synthesized once per session, for code paths the default leaves off.
VARIANTS: dict[str, dict] = {
    "edge-cognito": {
        "auth": {
            "mode": "cognito",
            "domain": "comfy.example.com",
            "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/0123abcd-0000-4000-8000-000000000000",
            "internal_api_endpoint": True,
        },
        "edge": {
            "cloudfront": True,
            "certificate_arn": "arn:aws:acm:us-east-1:111122223333:certificate/0123abcd-0000-4000-8000-000000000001",
            "rate_limit_per_5_min": 5000,
        },
        "network": {
            "nat_mode": "per_az",
            "az_count": 2,
            "api_public_cidrs": ["203.0.113.0/24", "198.51.100.16/28"],
            "api_private_cidrs": ["10.99.0.0/16"],
        },
        "alarms": {"sns_topic_arn": "arn:aws:sns:us-west-2:111122223333:comfyui-alarms"},
        "cluster_access": {
            "viewer_role_arns": ["arn:aws:iam::111122223333:role/github-plan"],
            "admin_role_arns": ["arn:aws:iam::111122223333:role/platform/deployer"],
        },
        "model_sync": {"prefixes": ["checkpoints/", "loras/"], "batching_window_seconds": 0},
        "gpu": {"instance_types": ["g6e.xlarge", "g4dn.xlarge"], "capacity_types": ["on-demand"], "max_gpus": 2},
        "scaling": {
            "max_replicas": 2,
            "schedule": {"timezone": "Europe/Berlin", "days": ["mon", "wed", "fri"], "start": "07:30", "end": "19:00"},
        },
    },
    "public-unauthenticated": {
        "auth": {"mode": "none", "acknowledge_public_unauthenticated": True},
        "scaling": {"min_replicas": 1, "max_replicas": 3, "schedule": None},
        "network": {"api_public_cidrs": ["0.0.0.0/0"], "acknowledge_public_api": True},
        "data_protection": {"prevent_destroy": False},
        "model_sync": {"prefixes": []},  # the whole bucket is cached: every change notifies
    },
}


def variant_config(name: str):
    from core.config import parse_config

    return parse_config(default_config_data(**VARIANTS.get(name, {})))


class Synth:
    """The synthesized Terraform JSON of every stack of one configuration (synthesized into
    `outdir` unless `build` is False, which loads what is already there)."""

    def __init__(self, config, outdir: Path, *, build: bool = True):
        self.config = config
        self.outdir = outdir
        if build:
            from stacks.app import build_app

            build_app(config, outdir=outdir).synth()
        manifest = json.loads((outdir / "manifest.json").read_text())
        self.paths = {name: outdir / s["synthesizedStackPath"] for name, s in manifest["stacks"].items()}
        self.stacks = {name: json.loads(p.read_text()) for name, p in self.paths.items()}

    def stack(self, cycle: str) -> dict:
        return self.stacks[self.config.stack_name(cycle)]

    def resources(self, cycle: str, rtype: str) -> dict:
        return self.stack(cycle).get("resource", {}).get(rtype, {})


def shared_synth(tmp_path_factory, name: str, config, *, extra_manifests: dict | None = None) -> Synth:
    """One synthesis per variant per test run, shared by pytest-xdist's workers: the first
    worker to ask synthesizes (under a lock), the others load its output. `extra_manifests`
    are Kubernetes objects the workload stack gets before its own (by resource id)."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, common to its workers
    outdir = root / f"synth-{name}"
    with open(root / f"synth-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (outdir / "manifest.json").exists():
            return Synth(config, outdir, build=False)
        if not extra_manifests:
            return Synth(config, outdir)
        import stacks.workload

        own = stacks.workload.comfyui_manifests
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(stacks.workload, "comfyui_manifests", lambda **kwargs: {**extra_manifests, **own(**kwargs)})
            return Synth(config, outdir)


# The default configuration synthesized a second time, with one Kubernetes object more, first
# among the workload's: test_addresses.py shows it differs from the first synthesis by that
# object only (synthesis is deterministic; adding an object renames none). It is built right
# after the default by the same worker, whose jsii kernel is running: a worker that started
# one only for this test paid ~4 s of CPU.
ONE_MORE_OBJECT = "default-one-object-more"
EXTRA_OBJECT = {
    "comfyui_extra_configmap": {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "comfyui"},
    }
}


def _synth_one_object_more(tmp_path_factory, config) -> Synth:
    return shared_synth(tmp_path_factory, ONE_MORE_OBJECT, config, extra_manifests=EXTRA_OBJECT)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Synth:
    from core.config import load_config

    config = load_config()
    default = shared_synth(tmp_path_factory, DEFAULT_VARIANT, config)
    _synth_one_object_more(tmp_path_factory, config)  # by this worker, now (see above)
    return default


@pytest.fixture(scope="session")
def synth_one_object_more(tmp_path_factory, synth) -> Synth:
    return _synth_one_object_more(tmp_path_factory, synth.config)


@pytest.fixture(scope="session")
def synth_variants(tmp_path_factory, synth) -> dict[str, Synth]:
    out = {DEFAULT_VARIANT: synth}
    for name in VARIANTS:
        out[name] = shared_synth(tmp_path_factory, name, variant_config(name))
    return out


def pytest_sessionstart(session: pytest.Session) -> None:
    """No garbage collection while collecting (see below)."""
    gc.disable()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Garbage collection in a worker, made cheaper. A full collection walks every object alive
    (~0.2 s each); with CPython's thresholds a worker ran ~30, 7.5 s of its CPU (measured
    with gc.callbacks). Collection itself (imports, assertion rewriting: ~190,000 objects,
    alive until the end) makes almost no garbage, but its allocations alone set off ~15 full
    collections: it runs with the collector off. What it loaded is then frozen out of every
    later collection, and a full collection waits for 1,000 younger ones, which the ~400 of a
    worker's run never reach: the young generations, where cycles are freed, are collected as
    before, and reference counting frees everything else at once. GC per worker: ~1 s."""
    gc.freeze()
    gc.set_threshold(700, 10, 1000)  # CPython's defaults but the last (10)
    gc.enable()


# The file handed to a worker first. pytest-xdist (--dist loadfile) hands out files by their
# number of tests, most first, unless told not to (scripts/test.sh passes
# --no-loadscope-reorder): the job runner's 22 tests came late, and their ~40 s, mostly
# waiting on leases, visibility timeouts and runner processes, were the run's last seconds.
# Started first, its waiting overlaps the other workers' work. The others keep xdist's order.
FIRST_FILES = ("tests/test_job_runner.py",)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """FIRST_FILES first, then files by their number of tests, most first (xdist's own order)."""

    def path(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]  # the file: xdist's scope under --dist loadfile

    counts = collections.Counter(map(path, items))

    def rank(item: pytest.Item) -> tuple[bool, int]:
        return path(item) not in FIRST_FILES, -counts[path(item)]

    items.sort(key=rank)  # stable: each file's tests, and files of equal counts, keep their order
