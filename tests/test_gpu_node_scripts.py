"""The GPU node scripts, run for real.

* gpu-node-setup.sh runs against a simulated host (tests/stubs/fakehost.py): stub lsblk,
  blkid, mdadm, mkfs.xfs, mount, mountpoint and systemctl on PATH keep the host's disks in
  a JSON file and log every call, so the tests see exactly which devices were touched.
* model-cache-sync.sh runs the real `aws` CLI against a moto S3 server and is checked
  by comparing the local tree with the bucket, byte for byte.
* model-cache-deadline.sh runs with a stub systemctl and the real `aws` CLI against moto
  CloudWatch.

The node's CLI is AWS CLI v2 (AL2023's awscli-2): every node-script test runs it (the
`cli` fixture, "v2"), through a wrapper that adds --endpoint-url (v2.9, what Debian
ships, predates AWS_ENDPOINT_URL) and with the node's aws-config except for the transfer
client: the classic one ("default" in v2.9) instead of the node's "crt", because the CRT
client of v2.9 ignores the endpoint's port and connects to port 80;
test_sync_with_the_nodes_crt_transfer_client runs the node's exact configuration where this
machine lets a test listen on 127.0.0.1:80, and shows that claim elsewhere. Where v2 is
missing, these tests skip locally and fail under CI=true. The two main convergence tests also
run with AWS CLI v1 (the project venv's `aws`, "v1"): a few seconds. Both CLIs are called
through a fork server that imports them once per test process (tests/aws_cli.py,
tests/README.md).
"""

from __future__ import annotations

import email
import fcntl
import functools
import json
import os
import select
import shutil
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import names, rules
from modules.gpu_user_data import DEFAULT_CACHE_DEADLINE_SECONDS, render_gpu_user_data
from tests import aws_cli
from tests.aws_cli import AWS_V2
from tests.helpers import REPO, moto_client, require, tool

SETUP = REPO / "modules" / "scripts" / "gpu-node-setup.sh"
SYNC = REPO / "modules" / "scripts" / "model-cache-sync.sh"
DEADLINE = REPO / "modules" / "scripts" / "model-cache-deadline.sh"
FAKEHOST = REPO / "tests" / "stubs" / "fakehost.py"
STUBBED = ("lsblk", "blkid", "mdadm", "mkfs.xfs", "mount", "mountpoint", "systemctl", "udevadm", "nvme")

INSTANCE_STORE = "Amazon EC2 NVMe Instance Storage"
EBS = "Amazon Elastic Block Store"
# The root volume, and a blank EBS data volume sitting between the instance-store disks:
# the most tempting wrong target.
EBS_ROOT = "/dev/nvme0n1"
EBS_DATA = "/dev/nvme2n1"
ROOT_FSTAB = "UUID=0d7f5a0c-root /     xfs    defaults,noatime  1   1\n"
INSTANCE_STORE_DISKS = ["/dev/nvme1n1", "/dev/nvme3n1", "/dev/nvme4n1", "/dev/nvme5n1"]


# --- shellcheck -----------------------------------------------------------------------


def _shellcheck(path: Path) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--shell=bash", "--severity=style", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [SETUP, SYNC, DEADLINE], ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script):
    _shellcheck(script)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


def test_rendered_user_data_script_is_shellcheck_clean(tmp_path):
    user_data = render_gpu_user_data(
        models_bucket="comfyui-models",
        region="us-west-2",
        model_prefixes=("checkpoints/", "loras/"),
        cluster_name="comfyui",
    )
    (part,) = email.message_from_string(user_data).get_payload()
    script = tmp_path / "user-data.sh"
    script.write_text(part.get_payload())
    _shellcheck(script)


# --- gpu-node-setup.sh on a simulated host --------------------------------------------


class FakeHost:
    """A GPU host whose block devices live in a JSON file read and changed by the stubs."""

    def __init__(self, root: Path, instance_store_disks: int) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for name in STUBBED:
            wrapper = self.bin / name
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{FAKEHOST}" "$0" "$@"\n')
            wrapper.chmod(0o755)
        self.state_file = root / "host-state.json"
        self.log_file = root / "host-calls.jsonl"
        self.cache_root = root / "mnt" / "comfyui-cache"
        self.sync_script = root / "usr" / "local" / "sbin" / "comfyui-model-sync"
        self.deadline_script = root / "usr" / "local" / "sbin" / "comfyui-model-cache-deadline"
        self.systemd_dir = root / "etc" / "systemd" / "system"
        self.config_dir = root / "etc" / "comfyui"
        self.fstab = root / "etc" / "fstab"
        self.fstab.parent.mkdir(parents=True)
        self.fstab.write_text(ROOT_FSTAB)
        self.disks = INSTANCE_STORE_DISKS[:instance_store_disks]
        devices = {
            EBS_ROOT: {"type": "disk", "model": EBS, "fstype": "", "label": "", "uuid": ""},
            EBS_DATA: {"type": "disk", "model": EBS, "fstype": "", "label": "", "uuid": ""},
        }
        for disk in self.disks:
            devices[disk] = {"type": "disk", "model": INSTANCE_STORE, "fstype": "", "label": "", "uuid": ""}
        self.write_state({"devices": devices, "mounts": {"/": EBS_ROOT + "p1"}, "fail": {}})

    def read_state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def write_state(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.root),
            "LC_ALL": "C.UTF-8",
            "FAKEHOST_STATE": str(self.state_file),
            "FAKEHOST_LOG": str(self.log_file),
            "SYSTEMD_DIR": str(self.systemd_dir),
            "SYNC_CONFIG_DIR": str(self.config_dir),
            "FSTAB": str(self.fstab),
            "MODEL_PREFIXES": "checkpoints/ loras/",
            "CLUSTER_NAME": "comfyui",
            "CACHE_DEADLINE_SECONDS": str(DEFAULT_CACHE_DEADLINE_SECONDS),
        }
        env.update(names.script_variables(models_bucket="comfyui-models", region="us-west-2"))
        env.update(
            NODE_CACHE_ROOT=str(self.cache_root),
            MODELS_PATH=str(self.cache_root / "models"),
            CACHE_MARKER_PATH=str(self.cache_root / ".models-cache-complete"),
            CACHE_SKIPPED_PATH=str(self.cache_root / ".models-cache-skipped"),
            SYNC_REQUEST_FLAG=str(self.root / "run" / "comfyui" / "model-sync.requested"),
            SYNC_SCRIPT_PATH=str(self.sync_script),
            CACHE_DEADLINE_SCRIPT_PATH=str(self.deadline_script),
        )
        env.update(overrides)
        return env

    def run_setup(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        self.log_file.write_text("")
        return subprocess.run(
            ["bash", str(SETUP)], env=self.env(**overrides), capture_output=True, text=True, timeout=60
        )

    def calls(self, cmd: str | None = None) -> list[list[str]]:
        lines = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        return [[c["cmd"], *c["args"]] for c in lines if cmd is None or c["cmd"] == cmd]

    def reboot(self, *, udev_assembles_as: str | None = None, keep_mount: bool = False) -> None:
        """Instance-store contents survive a reboot; mounts and assembled arrays do not.

        udev_assembles_as: the name udev gives the array while booting (None: nobody
        assembles it, the script has to).
        """
        state = self.read_state()
        if not keep_mount:
            state["mounts"] = {"/": EBS_ROOT + "p1"}
        for name, dev in list(state["devices"].items()):
            if dev["type"].startswith("raid") and not keep_mount:
                dev["active"] = udev_assembles_as is not None
                if udev_assembles_as:
                    state["devices"][udev_assembles_as] = state["devices"].pop(name)
        self.write_state(state)


def _assert_ebs_untouched(host: FakeHost) -> None:
    for call in host.calls():
        assert EBS_ROOT not in call and EBS_DATA not in call, f"an EBS volume was touched: {call}"


def _cache_fstab_lines(host: FakeHost) -> list[str]:
    text = host.fstab.read_text()
    assert text.startswith(ROOT_FSTAB), "the existing fstab entries were changed"
    return text[len(ROOT_FSTAB) :].splitlines()


def _expected_target(disks: list[str]) -> str:
    return disks[0] if len(disks) == 1 else "/dev/md0"


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_setup_uses_all_instance_store_disks_and_never_ebs(tmp_path, count):
    host = FakeHost(tmp_path, count)
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    _assert_ebs_untouched(host)
    state = host.read_state()

    if count == 0:
        assert f"no NVMe instance store found; falling back to the root volume at {host.cache_root}" in result.stderr
        assert host.calls("mdadm") == host.calls("mkfs.xfs") == host.calls("mount") == []
        assert host.fstab.read_text() == ROOT_FSTAB
    else:
        target = _expected_target(host.disks)
        if count == 1:
            assert host.calls("mdadm") == []
        else:
            (create,) = host.calls("mdadm")
            assert create[1:3] == ["--create", "/dev/md0"]
            assert "--level=0" in create
            assert f"--raid-devices={count}" in create
            assert sorted(a for a in create if a.startswith("/dev/nvme")) == sorted(host.disks)
            assert state["devices"]["/dev/md0"]["members"] == sorted(host.disks)
        (mkfs,) = host.calls("mkfs.xfs")
        assert mkfs[-1] == target
        assert "-K" in mkfs, "no TRIM pass over the instance store (it can outlast node registration)"
        (mount,) = host.calls("mount")
        assert mount[-2:] == [target, str(host.cache_root)]
        assert "xfs" in mount
        assert state["mounts"][str(host.cache_root)] == target
        assert state["devices"][target]["fstype"] == "xfs"
        # Mounted again after a reboot, by filesystem UUID, without blocking the boot.
        (line,) = _cache_fstab_lines(host)
        uuid_ = state["devices"][target]["uuid"]
        assert line.split()[:3] == [f"UUID={uuid_}", str(host.cache_root), "xfs"]
        assert "nofail" in line.split()[3]
    assert (host.cache_root / "models").is_dir()


def test_setup_installs_and_starts_the_sync_service_without_blocking(tmp_path):
    host = FakeHost(tmp_path, 1)
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    env = host.env()

    # The sync and deadline scripts, installed executable, byte for byte.
    assert host.sync_script.read_bytes() == SYNC.read_bytes()
    assert host.sync_script.stat().st_mode & stat.S_IXUSR
    assert host.deadline_script.read_bytes() == DEADLINE.read_bytes()
    assert host.deadline_script.stat().st_mode & stat.S_IXUSR

    service = (host.systemd_dir / names.SYNC_SERVICE_NAME).read_text()
    assert "Type=oneshot" in service.splitlines()
    assert f"ExecStart={host.sync_script}" in service.splitlines()
    assert f"RequiresMountsFor={host.cache_root}" in service.splitlines()
    env_file = host.config_dir / "model-sync.env"
    assert f"EnvironmentFile={env_file}" in service.splitlines()

    timer = (host.systemd_dir / names.SYNC_TIMER_NAME).read_text().splitlines()
    assert f"OnBootSec={names.SYNC_RECONCILE_INTERVAL}" in timer
    assert f"OnUnitActiveSec={names.SYNC_RECONCILE_INTERVAL}" in timer
    assert f"Unit={names.SYNC_SERVICE_NAME}" in timer
    assert "WantedBy=timers.target" in timer

    # The path unit starts the service while the request flag exists; systemd re-checks it
    # when the service stops, so a request landing after the sync's last check still runs.
    path_unit = (host.systemd_dir / names.SYNC_PATH_UNIT_NAME).read_text().splitlines()
    assert f"PathExists={host.env()['SYNC_REQUEST_FLAG']}" in path_unit
    assert f"Unit={names.SYNC_SERVICE_NAME}" in path_unit
    assert "WantedBy=multi-user.target" in path_unit

    # The deadline: once, CACHE_DEADLINE_SECONDS after boot, the deadline script.
    deadline_timer = (host.systemd_dir / names.CACHE_DEADLINE_TIMER_NAME).read_text().splitlines()
    assert f"OnBootSec={DEFAULT_CACHE_DEADLINE_SECONDS}s" in deadline_timer
    assert not any(line.startswith(("OnUnitActiveSec", "OnCalendar")) for line in deadline_timer), "fires once"
    assert f"Unit={names.CACHE_DEADLINE_SERVICE_NAME}" in deadline_timer
    assert "WantedBy=timers.target" in deadline_timer
    deadline_service = (host.systemd_dir / names.CACHE_DEADLINE_SERVICE_NAME).read_text().splitlines()
    assert "Type=oneshot" in deadline_service
    assert f"ExecStart={host.deadline_script}" in deadline_service
    assert f"EnvironmentFile={env_file}" in deadline_service
    assert not any(line.startswith("Restart=") for line in deadline_service), "powers off once, never retried"

    assert host.calls("systemctl") == [
        ["systemctl", "daemon-reload"],
        [
            "systemctl",
            "enable",
            "--now",
            names.SYNC_TIMER_NAME,
            names.SYNC_PATH_UNIT_NAME,
            names.CACHE_DEADLINE_TIMER_NAME,
        ],
        ["systemctl", "start", "--no-block", names.SYNC_SERVICE_NAME],
    ]

    # The environment file gives the services exactly the variables their scripts read
    # (single-quoted values mean the same to systemd and to bash).
    keys = [
        "MODELS_BUCKET",
        "AWS_REGION",
        "MODELS_PATH",
        "CACHE_MARKER_PATH",
        "CACHE_SKIPPED_PATH",
        "SYNC_REQUEST_FLAG",
        "MODEL_PREFIXES",
        "SYNC_SERVICE_NAME",
        "CLUSTER_NAME",
        "CACHE_DEADLINE_SECONDS",
        "METRICS_NAMESPACE",
        "CACHE_DEADLINE_METRIC",
        "METRIC_CLUSTER_DIMENSION",
        "MODEL_PREFIX_PATTERN",
    ]
    printed = " ".join(f'"${{{k}}}"' for k in [*keys, "AWS_CONFIG_FILE"])
    read_back = subprocess.run(
        ["bash", "-c", f'set -a; . "$0"; printf "%s\\0" {printed}', str(env_file)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")[:-1]
    assert read_back[:-1] == [env[k] for k in keys]
    # The AWS CLI of the service uses the CRT transfer client.
    aws_config = Path(read_back[-1]).read_text()
    assert "preferred_transfer_client = crt" in aws_config


def test_setup_single_disk_reboot_mounts_without_formatting(tmp_path):
    host = FakeHost(tmp_path, 1)
    assert host.run_setup().returncode == 0
    host.reboot()
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    assert host.calls("mkfs.xfs") == []
    assert host.calls("mdadm") == []
    (mount,) = host.calls("mount")
    assert mount[-2:] == [host.disks[0], str(host.cache_root)]
    assert len(_cache_fstab_lines(host)) == 1
    _assert_ebs_untouched(host)


def test_setup_raid_reboot_with_array_assembled_by_udev(tmp_path):
    host = FakeHost(tmp_path, 4)
    assert host.run_setup().returncode == 0
    host.reboot(udev_assembles_as="/dev/md127")
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    assert host.calls("mkfs.xfs") == []
    assert host.calls("mdadm") == []
    (mount,) = host.calls("mount")
    assert mount[-2:] == ["/dev/md127", str(host.cache_root)]
    _assert_ebs_untouched(host)


def test_setup_raid_reboot_with_array_not_assembled(tmp_path):
    host = FakeHost(tmp_path, 2)
    assert host.run_setup().returncode == 0
    host.reboot(udev_assembles_as=None)
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    assert host.calls("mkfs.xfs") == []
    (assemble,) = host.calls("mdadm")
    assert assemble[1:3] == ["--assemble", "/dev/md0"]
    assert sorted(assemble[3:]) == sorted(host.disks)
    (mount,) = host.calls("mount")
    assert mount[-2:] == ["/dev/md0", str(host.cache_root)]
    assert len(_cache_fstab_lines(host)) == 1


def test_setup_rerun_while_mounted_changes_nothing_on_disk(tmp_path):
    host = FakeHost(tmp_path, 2)
    assert host.run_setup().returncode == 0
    host.reboot(keep_mount=True)
    result = host.run_setup()
    assert result.returncode == 0, result.stderr
    assert host.calls("mkfs.xfs") == host.calls("mdadm") == host.calls("mount") == []


@pytest.mark.parametrize("count", [1, 4])
def test_setup_fails_clearly_when_mkfs_fails(tmp_path, count):
    host = FakeHost(tmp_path, count)
    state = host.read_state()
    state["fail"]["mkfs.xfs"] = "mkfs.xfs: pwrite failed: Input/output error"
    host.write_state(state)
    result = host.run_setup()
    assert result.returncode != 0
    target = _expected_target(host.disks)
    assert f"mkfs.xfs failed on {target}" in result.stderr
    assert "Input/output error" in result.stderr
    assert host.calls("mount") == []
    assert host.calls("systemctl") == []


def test_setup_refuses_to_format_a_disk_that_holds_something_else(tmp_path):
    host = FakeHost(tmp_path, 1)
    state = host.read_state()
    state["devices"][host.disks[0]].update(fstype="ext4")
    host.write_state(state)
    result = host.run_setup()
    assert result.returncode != 0
    assert f"{host.disks[0]} already holds 'ext4'; refusing to format it" in result.stderr
    assert host.calls("mkfs.xfs") == []


def test_setup_refuses_an_xfs_it_did_not_create(tmp_path):
    host = FakeHost(tmp_path, 1)
    state = host.read_state()
    state["devices"][host.disks[0]].update(fstype="xfs", label="other")
    host.write_state(state)
    result = host.run_setup()
    assert result.returncode != 0
    assert "labelled 'other'" in result.stderr
    assert host.calls("mount") == []


@pytest.mark.parametrize(
    "variable",
    sorted([*names.script_variables(models_bucket="b", region="r"), "CLUSTER_NAME", "CACHE_DEADLINE_SECONDS"]),
)
def test_setup_requires_every_variable(tmp_path, variable):
    host = FakeHost(tmp_path, 1)
    result = host.run_setup(**{variable: ""})
    assert result.returncode != 0
    assert f"required environment variable {variable} is not set" in result.stderr
    assert host.calls("mkfs.xfs") == []


@pytest.mark.parametrize("seconds", ["1h", "0", "-5", "36 00", "3600s"])
def test_setup_refuses_a_deadline_that_is_not_whole_seconds(tmp_path, seconds):
    host = FakeHost(tmp_path, 1)
    result = host.run_setup(CACHE_DEADLINE_SECONDS=seconds)
    assert result.returncode != 0
    assert "CACHE_DEADLINE_SECONDS must be a whole number of seconds" in result.stderr
    assert host.calls("mkfs.xfs") == []


# --- the node's AWS CLI -----------------------------------------------------------------

CLIS = ("v2", "v1")
# The node's aws-config (written by gpu-node-setup.sh) with the transfer client as a parameter.
NODE_AWS_CONFIG = "[default]\ns3 =\n    preferred_transfer_client = {client}\n"


@functools.cache
def _cli_version(path: str) -> str:
    result = subprocess.run([path, "--version"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    return (result.stdout + result.stderr).strip()


# The classic (non-CRT) transfer client is "default" in AWS CLI 2.9; later releases call it
# "classic" and still accept "default".
CLASSIC_TRANSFER_CLIENT = "default"


def node_cli_env(
    kind: str, env: dict[str, str], root: Path, *, transfer_client: str = CLASSIC_TRANSFER_CLIENT
) -> dict[str, str]:
    """`env` (the aws_cli_env fixture: credentials, AWS_ENDPOINT_URL=moto, the venv first on
    PATH) for node scripts that run AWS CLI `kind`:

    - "v2": /usr/bin/aws through an `aws` wrapper first on PATH that adds --endpoint-url
      (2.9 ignores AWS_ENDPOINT_URL) and calls it through the fork server (tests/aws_cli.py),
      and the node's aws-config with `transfer_client`;
    - "v1": the project venv's `aws` (already first on PATH).
    """
    env = dict(env)
    if kind == "v2":
        require(
            AWS_V2.is_file() and _cli_version(str(AWS_V2)).startswith("aws-cli/2."),
            f"AWS CLI v2 (the GPU node's CLI) is not installed at {AWS_V2} (CI installs it with apt: awscli)",
        )
        bin_dir = aws_cli.install_wrapper(root / "aws-cli-v2", AWS_V2, endpoint_from="AWS_ENDPOINT_URL")
        config = root / f"aws-config-{transfer_client}"
        config.write_text(NODE_AWS_CONFIG.format(client=transfer_client))
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", AWS_CONFIG_FILE=str(config))
    else:
        assert kind == "v1", kind
        v1 = shutil.which("aws", path=str(Path(sys.executable).parent))
        require(
            v1 is not None and _cli_version(v1).startswith("aws-cli/1."),
            "AWS CLI v1 is not installed in the project venv (scripts/test.sh installs it)",
        )
    return env


@pytest.fixture
def cli(request, aws_cli_env, tmp_path) -> dict[str, str]:
    """The environment of a node script: AWS CLI v2 unless parametrized (`both_clis`)."""
    return node_cli_env(getattr(request, "param", "v2"), aws_cli_env, tmp_path)


both_clis = pytest.mark.parametrize("cli", CLIS, indirect=True)


# --- model-cache-sync.sh against moto ---------------------------------------------------

SPECIAL_KEYS = {
    "checkpoints/sd_xl_base.safetensors": b"\x00weights" * 4096,
    "checkpoints/nested/deeper/model.ckpt": b"deep model",
    "loras/a b/c$(touch pwned).safetensors": b"space and command substitution",
    "loras/unicod\u00e9/\u6a21\u578b \u2713.safetensors": "unicode \u2713".encode(),
    "-rf": b"leading dash",
    "--help/-x.bin": b"double dash folder",
    "vae/x+y 100%41.bin": b"plus and percent",
    "vae/back\\slash 'quote\".bin": b"backslash and quotes",
    "folder-marker/": b"",
}


@pytest.fixture
def s3(moto_server):
    return moto_client("s3", moto_server)


@pytest.fixture
def bucket(s3):
    name = f"models-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return name


class Cache:
    """A node's cache directories in tmp_path, and how to run the sync script on them."""

    def __init__(self, tmp_path: Path, env: dict[str, str], bucket: str) -> None:
        self.root = tmp_path / "cache"
        self.models = self.root / "models"
        self.marker = self.root / ".models-cache-complete"
        self.skipped = self.root / ".models-cache-skipped"
        self.flag = tmp_path / "run" / "model-sync.requested"
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir()
        self.env = dict(env)
        self.env.update(
            MODELS_BUCKET=bucket,
            MODELS_PATH=str(self.models),
            CACHE_MARKER_PATH=str(self.marker),
            CACHE_SKIPPED_PATH=str(self.skipped),
            SYNC_REQUEST_FLAG=str(self.flag),
            MODEL_PREFIXES="",
            MODEL_PREFIX_PATTERN=rules.MODEL_PREFIX_ERE,  # as the user-data renders it
        )

    def command(self) -> list[str]:
        return ["bash", str(SYNC)]

    def sync(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(),
            env={**self.env, **overrides},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def skipped_report(self) -> dict[str, str]:
        """{key: reason} from CACHE_SKIPPED_PATH (one JSON object per line)."""
        lines = self.skipped.read_text().splitlines()
        report = {}
        for line in lines:
            entry = json.loads(line)
            assert set(entry) == {"key", "reason"}, line
            report[entry["key"]] = entry["reason"]
        assert len(report) == len(lines), "a key is reported twice"
        return report


@pytest.fixture
def cache(tmp_path, cli, bucket):
    return Cache(tmp_path, cli, bucket)


def _put(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def _bucket_files(s3, bucket: str, prefixes: tuple[str, ...] = ("",)) -> dict[str, bytes]:
    files = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/") or not key.startswith(prefixes):
                continue
            files[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return files


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if not p.is_dir()}


def _local_dirs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def _assert_tree(cache: Cache, expected: dict[str, bytes]) -> None:
    assert _local_files(cache.models) == expected
    # Exactly the directories the files need: nothing left over from deleted objects.
    parents = {Path(key).parents[i].as_posix() for key in expected for i in range(len(Path(key).parents) - 1)}
    assert _local_dirs(cache.models) == parents


def _assert_mirror(s3, bucket: str, cache: Cache, prefixes: tuple[str, ...] = ("",)) -> None:
    _assert_tree(cache, _bucket_files(s3, bucket, prefixes))


def _inodes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_ino for p in root.rglob("*") if p.is_file()}


@both_clis
def test_sync_converges_additions_replacements_and_deletions(s3, bucket, cache, tmp_path):
    _put(s3, bucket, SPECIAL_KEYS)
    result = cache.sync()
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache)
    assert cache.marker.is_file()
    assert not cache.skipped.exists(), "nothing is skipped: no report"
    assert not list(tmp_path.rglob("pwned")), "a key was executed as a command"

    # Nothing changed: nothing is downloaded again.
    before = _inodes(cache.models)
    first_marker = cache.marker.read_text()
    assert cache.sync().returncode == 0
    assert _inodes(cache.models) == before

    # Add, replace with the same size but other bytes, delete (emptying two folders).
    replaced = {
        "loras/a b/c$(touch pwned).safetensors": b"SPACE AND COMMAND SUBSTITUTION",
        "loras/unicod\u00e9/\u6a21\u578b \u2713.safetensors": "UNICODE \u2713".encode(),
        "checkpoints/sd_xl_base.safetensors": b"\x00WEIGHTS" * 4096,
    }
    for key, body in replaced.items():
        assert len(body) == len(SPECIAL_KEYS[key])
    _put(s3, bucket, replaced)
    _put(s3, bucket, {"upscale_models/new 4x.pth": b"new", "-rf": b"LEADING DASH"})
    s3.delete_object(Bucket=bucket, Key="checkpoints/nested/deeper/model.ckpt")
    s3.delete_object(Bucket=bucket, Key="--help/-x.bin")
    # Local damage is repaired: a file that is not in the bucket goes, a file changed in
    # place (same size, older mtime, which plain `aws s3 sync` takes as up to date) is
    # downloaded again.
    (cache.models / "stray.txt").write_text("not in the bucket")
    damaged = cache.models / "vae" / "x+y 100%41.bin"
    mtime = damaged.stat().st_mtime - 3600
    damaged.write_bytes(b"PLUS AND PERCENT")
    os.utime(damaged, (mtime, mtime))

    result = cache.sync()
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache)
    assert (
        _local_files(cache.models)["loras/a b/c$(touch pwned).safetensors"]
        == replaced["loras/a b/c$(touch pwned).safetensors"]
    )
    assert cache.marker.is_file()
    assert not list(cache.root.glob(".models-cache-complete.??????")), "temporary marker left behind"
    assert not list(tmp_path.rglob("pwned"))
    assert "bucket=s3://" + cache.env["MODELS_BUCKET"] in first_marker


def test_sync_redownloads_a_same_size_replacement_with_the_same_timestamp(s3, bucket, cache):
    """S3 LastModified has one-second resolution: a replacement can carry the timestamp of
    the previous version. `aws s3 sync` (even with --exact-timestamps) then keeps the stale
    file; the script's ETag manifest must not."""
    key = "checkpoints/model.safetensors"
    _put(s3, bucket, {key: b"A" * 1000})
    assert cache.sync().returncode == 0

    _put(s3, bucket, {key: b"B" * 1000})
    new_mtime = s3.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()
    local = cache.models / key
    os.utime(local, (new_mtime, new_mtime))

    # Control: the plain CLI really misses this replacement.
    control = cache.root / "control"
    shutil.copytree(cache.models, control)
    os.utime(control / key, (new_mtime, new_mtime))
    subprocess.run(
        ["aws", "s3", "sync", f"s3://{bucket}/", f"{control}/", "--exact-timestamps", "--only-show-errors"],
        env=cache.env,
        check=True,
    )
    assert (control / key).read_bytes() == b"A" * 1000
    shutil.rmtree(control)

    result = cache.sync()
    assert result.returncode == 0, result.stderr
    assert local.read_bytes() == b"B" * 1000
    _assert_mirror(s3, bucket, cache)


def test_a_replaced_model_stays_readable_until_its_new_version_is_complete(s3, bucket, cache, tmp_path):
    """The stale copy is not deleted ahead of the download: a workflow that loads it during
    the sync (or after a failed one) still finds the old version, never a missing file."""
    key = "checkpoints/model.safetensors"
    _put(s3, bucket, {key: b"A" * 1000})
    assert cache.sync().returncode == 0
    marker = cache.marker.read_text()
    _put(s3, bucket, {key: b"B" * 1000})

    bin_dir = _aws_wrapper(tmp_path, cache.env)
    result = cache.sync(
        PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}", AWS_CALLS=str(tmp_path / "calls"), FAIL_S3_SYNC="1"
    )
    assert result.returncode != 0 and "exit 1" in result.stderr
    assert (cache.models / key).read_bytes() == b"A" * 1000, "the old model is still there"
    assert cache.marker.read_text() == marker, "the marker is left as it was"

    result = cache.sync()  # the next run (service restart, timer) converges
    assert result.returncode == 0, result.stderr
    assert (cache.models / key).read_bytes() == b"B" * 1000
    _assert_mirror(s3, bucket, cache)


def test_skipped_objects_are_a_warning_not_a_failure(s3, bucket, cache, tmp_path):
    """`aws s3 sync` exits 2 when it skipped objects with a warning of its own and synced
    the rest: the node still converges and writes the marker, instead of never becoming
    ready because of one unusable object."""
    _put(s3, bucket, {"loras/a.safetensors": b"a"})
    bin_dir = _aws_wrapper(tmp_path, cache.env)
    result = cache.sync(
        PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}", AWS_CALLS=str(tmp_path / "calls"), WARN_S3_SYNC="1"
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "skipped some objects" in result.stderr
    assert cache.marker.is_file()
    assert (cache.models / "loras" / "a.safetensors").read_bytes() == b"a"


def test_sync_of_a_missing_bucket_fails_without_writing_the_marker(cache):
    result = cache.sync(MODELS_BUCKET=f"missing-{uuid.uuid4().hex[:16]}")
    assert result.returncode != 0
    assert "missing-" in result.stderr and "failed" in result.stderr
    assert not cache.marker.exists()


def test_sync_with_model_prefixes_mirrors_only_those_folders(s3, bucket, cache, tmp_path):
    _put(
        s3,
        bucket,
        {
            "checkpoints/a.safetensors": b"a",
            "checkpoints/sub dir/b.safetensors": b"b",
            "loras/c.safetensors": b"c",
            "checkpoints-old/d.safetensors": b"not a prefix match",
            "other/e.bin": b"e",
            "other/../climbs": b"unsafe, but out of scope: neither synced nor reported",
            "top-level.txt": b"f",
        },
    )
    (cache.models / "junk").mkdir(parents=True)
    (cache.models / "junk" / "x.bin").write_bytes(b"x")
    (cache.models / "stray.txt").write_bytes(b"y")
    (cache.models / "checkpoints").mkdir()
    (cache.models / "checkpoints" / "old.bin").write_bytes(b"z")

    bin_dir = _aws_wrapper(tmp_path, cache.env)
    calls = tmp_path / "calls"
    Path(f"{calls}.raised").touch()  # no request flag from the wrapper: one run
    result = cache.sync(
        MODEL_PREFIXES="checkpoints/ loras/", PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}", AWS_CALLS=str(calls)
    )
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache, prefixes=("checkpoints/", "loras/"))
    assert sorted(_local_files(cache.models)) == [
        "checkpoints/a.safetensors",
        "checkpoints/sub dir/b.safetensors",
        "loras/c.safetensors",
    ]
    assert cache.marker.is_file()
    assert not cache.skipped.exists()
    # One listing and one sync, however many prefixes.
    assert len(calls.read_text().splitlines()) == 2, calls.read_text()


@pytest.mark.parametrize("prefixes", ["../etc/", "checkpoints/nested/", ".", "loras", "/loras/", "checkpoints/ vae"])
def test_sync_rejects_prefixes_outside_the_cache(cache, prefixes):
    """Only the canonical form ("folder/", core.rules.MODEL_PREFIX) is accepted, nothing is
    normalised (tests/test_rules.py: the same rule as the configuration's)."""
    result = cache.sync(MODEL_PREFIXES=prefixes)
    assert result.returncode != 0
    assert "is not a single top-level folder" in result.stderr
    assert not cache.marker.exists()


@pytest.mark.parametrize(
    "variable",
    [
        "MODELS_BUCKET",
        "MODELS_PATH",
        "CACHE_MARKER_PATH",
        "CACHE_SKIPPED_PATH",
        "SYNC_REQUEST_FLAG",
        "MODEL_PREFIX_PATTERN",
    ],
)
def test_sync_requires_its_variables(cache, variable):
    result = cache.sync(**{variable: ""})
    assert result.returncode != 0
    assert f"required environment variable {variable} is not set" in result.stderr


@pytest.mark.parametrize("variable", ["CACHE_MARKER_PATH", "CACHE_SKIPPED_PATH"])
def test_sync_refuses_its_outputs_inside_the_models_path(cache, variable):
    result = cache.sync(**{variable: str(cache.models / "marker")})
    assert result.returncode != 0
    assert "must be outside MODELS_PATH" in result.stderr


def test_sync_refuses_a_models_path_that_is_a_pattern(cache, tmp_path):
    """The sync's --exclude/--include filters are fnmatch patterns anchored at MODELS_PATH."""
    result = cache.sync(MODELS_PATH=str(tmp_path / "models[1]"))
    assert result.returncode != 0
    assert "MODELS_PATH must not contain" in result.stderr


def _aws_wrapper(tmp_path: Path, env: dict[str, str]) -> Path:
    """An `aws` on PATH that records calls, raises the sync request flag during the first
    `s3 sync` (a request arriving mid-sync), fails `s3 sync` when FAIL_S3_SYNC=1, or, when
    WARN_S3_SYNC=1, syncs and then exits 2 like the CLI after skipping objects with a
    warning. BLOCK_PATH=<path>: just before the sync, a non-empty folder appears at <path>
    (a local fault no listing predicts: the download of the key there fails)."""
    real_aws = shutil.which("aws", path=env["PATH"])
    assert real_aws
    bin_dir = tmp_path / "aws-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "aws"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$*" >>"$AWS_CALLS"\n'
        'if [[ " $* " == *" s3 sync "* ]]; then\n'
        '  if [[ "${FAIL_S3_SYNC:-0}" == 1 ]]; then echo "simulated network failure" >&2; exit 1; fi\n'
        '  if [[ -n "${BLOCK_PATH:-}" ]]; then mkdir -p -- "$BLOCK_PATH/in-the-way"; fi\n'
        '  if [[ "${WARN_S3_SYNC:-0}" == 1 ]]; then\n'
        f'    "{real_aws}" "$@" || exit $?\n'
        '    echo "warning: Skipping file s3://x/y. Object is of storage class GLACIER." >&2; exit 2\n'
        "  fi\n"
        '  if [[ ! -e "$AWS_CALLS.raised" ]]; then : >"$AWS_CALLS.raised"; : >"$SYNC_REQUEST_FLAG"; fi\n'
        "fi\n"
        f'exec "{real_aws}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return bin_dir


def test_sync_loops_while_requests_arrive_during_a_sync(s3, bucket, cache, tmp_path):
    _put(s3, bucket, {"checkpoints/a.bin": b"a"})
    bin_dir = _aws_wrapper(tmp_path, cache.env)
    calls = tmp_path / "aws-calls.log"
    cache.flag.parent.mkdir(parents=True)
    cache.flag.touch()  # a pending request from before the run
    result = cache.sync(PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}", AWS_CALLS=str(calls))
    assert result.returncode == 0, result.stderr
    syncs = [line for line in calls.read_text().splitlines() if " s3 sync " in f" {line} "]
    assert len(syncs) == 2, calls.read_text()
    assert "requested while syncing" in result.stderr
    assert not cache.flag.exists()
    assert cache.marker.is_file()
    _assert_mirror(s3, bucket, cache)


def test_sync_failure_of_the_transfer_keeps_the_marker(s3, bucket, cache, tmp_path):
    _put(s3, bucket, {"checkpoints/a.bin": b"a"})
    cache.root.mkdir(parents=True)
    cache.marker.write_text("previous convergence\n")
    bin_dir = _aws_wrapper(tmp_path, cache.env)
    result = cache.sync(
        PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}", AWS_CALLS=str(tmp_path / "calls"), FAIL_S3_SYNC="1"
    )
    assert result.returncode != 0
    assert "aws s3 sync" in result.stderr and "failed" in result.stderr
    assert cache.marker.read_text() == "previous convergence\n"


def test_sync_runs_never_overlap(s3, bucket, cache):
    _put(s3, bucket, {"checkpoints/a.bin": b"a"})
    cache.root.mkdir(parents=True)
    with open(f"{cache.marker}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            cache.command(), env=cache.env, cwd=cache.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(0.7)
        assert proc.poll() is None, "the script ran while another run held the lock"
        assert not cache.models.joinpath("checkpoints/a.bin").exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    _assert_mirror(s3, bucket, cache)


# --- objects a node cannot store ----------------------------------------------------------
#
# Measured with AWS CLI 1.46 and 2.9 against moto (both behave the same): each object below
# made `aws s3 sync` exit 1 on every run ("[Errno 21] Is a directory", "[Errno 16] Device or
# resource busy", "[Errno 36] File name too long", "[Errno 20] Not a directory", "embedded
# null byte"), or write the object to ANOTHER key's path ("a/../b" -> "b", "a//b" -> "a/b",
# "/x" -> "x"), or, for "../x" and GLACIER objects, skip it with a warning (exit 2).

PAD = "n" * 240
# Unstorable key -> the start of its reason in CACHE_SKIPPED_PATH.
UNSTORABLE = {
    "loras/a/..": "empty, '.' or '..' path segment",
    "loras/a/.": "empty, '.' or '..' path segment",
    "loras/a/../clash.bin": "empty, '.' or '..' path segment",
    "loras//clash.bin": "empty, '.' or '..' path segment",
    "loras/./clash.bin": "empty, '.' or '..' path segment",
    "/top.bin": "empty, '.' or '..' path segment",
    "../climbs.bin": "empty, '.' or '..' path segment",
    "loras/" + "n" * 256: "file name too long for the filesystem (256 bytes)",
    # 247 bytes, not ASCII in its first 246: the CLI's temporary name would be 256 bytes.
    "loras/\u00e9" + "n" * 245: "file name too long for the filesystem (247 bytes)",
    "loras/" + "d" * 256 + "/x.bin": "folder name longer than 255 bytes",
    "loras/marker with content/": "folder marker with content (7 bytes)",
    "loras/nul\x00.bin": "NUL byte in the key",
    # A file and a folder of the same name: the folder wins.
    "loras/both": "a folder of the same name is in the bucket (the folder wins)",
    # Excluded with '*', '?', '[' and a leading '-' in their names (see the decoys).
    "loras/-g*l?o[ab]al.bin": "storage class GLACIER",
    "loras/deep archive.bin": "storage class DEEP_ARCHIVE",
}
STORAGE_CLASSES = {"loras/-g*l?o[ab]al.bin": "GLACIER", "loras/deep archive.bin": "DEEP_ARCHIVE"}
# Storable keys: they sync, byte for byte. Among them, keys the exclusions of the skipped
# objects would catch if '*', '?', '[' or NUL were not escaped, the keys the unsafe ones
# would overwrite, and the longest names that fit.
STORABLE = {
    "loras/both/x.bin": b"the folder that wins",
    "loras/clash.bin": b"the real loras/clash.bin",
    "top.bin": b"the real top.bin",
    "loras/-gXlYoaal.bin": b"decoy for '*', '?' and '['",
    "loras/-g*l?o[ab]al.bin.2": b"decoy: a longer name",
    "loras/nulX.bin": b"decoy for the NUL bracket expression",
    "loras/nul\x01.bin": b"decoy: U+0001, the start of the excluded range",
    "loras/nul\U0001f600.bin": b"decoy: a 4-byte character",
    "loras/" + "n" * 255: b"longest ASCII name",
    "loras/" + "n" * 246 + "\u00e9\u00e9": b"250 bytes, ASCII in its first 246: fits",
    "loras/ctl\x01\x1f\x7f tab\there cr\rhere.bin": b"control characters",
    "loras/sub/-rf": b"a name that is an option",
    "loras/$(touch pwned)`touch pwned2`": b"command substitution",
    "loras/empty marker/": b"",
}


def _put_odd(s3, bucket: str) -> None:
    for key in UNSTORABLE:
        body = b"content" if key.endswith("/") else key.encode()[-40:]
        extra = {"StorageClass": STORAGE_CLASSES[key]} if key in STORAGE_CLASSES else {}
        s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    _put(s3, bucket, STORABLE)


def _post_object(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    """Upload through a browser-style POST form: moto's server cannot route a newline in
    a URL path, but takes it in the form's `key` field (and lists it: it cannot serve it)."""
    import requests

    response = requests.post(
        f"{endpoint}/{bucket}",
        data={"key": key},
        files={"file": ("f", body)},
        proxies={"http": "", "https": ""},
        timeout=30,
    )
    assert response.status_code in (200, 204), response.text


NEWLINE_KEY = "loras/new\nline " + "n" * 250


@both_clis
def test_odd_objects_are_skipped_and_reported_the_rest_converges(s3, bucket, cache, tmp_path, moto_server):
    """Every unstorable object is skipped (logged, reported, excluded from the sync), every
    other object converges, the marker is written; local entries in the way are removed,
    symbolic links never followed."""
    _put_odd(s3, bucket)
    _post_object(moto_server, bucket, NEWLINE_KEY, b"a newline in an unstorable key")
    # In the way: a stale folder where the bucket has the file top.bin, a file where it has
    # the folder loras/both/, and a link where it has loras/sub/ (pointing outside the cache).
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "-rf").write_bytes(b"outside the cache: never touched")
    (cache.models / "top.bin").mkdir(parents=True)
    (cache.models / "top.bin" / "old.bin").write_bytes(b"stale folder")
    (cache.models / "loras").mkdir()
    (cache.models / "loras" / "both").write_bytes(b"stale file")
    (cache.models / "loras" / "sub").symlink_to(outside)

    result = cache.sync()
    assert result.returncode == 0, result.stderr
    assert cache.marker.is_file()
    expected = {k: v for k, v in STORABLE.items() if not k.endswith("/")}
    _assert_tree(cache, expected)
    assert (outside / "-rf").read_bytes() == b"outside the cache: never touched"
    assert not (cache.models / "loras" / "sub").is_symlink()
    assert not list(tmp_path.rglob("pwned*")), "a key was executed as a command"

    report = cache.skipped_report()
    assert sorted(report) == sorted([*UNSTORABLE, NEWLINE_KEY])
    for key, reason in UNSTORABLE.items():
        assert report[key].startswith(reason), (key, report[key])
    assert report[NEWLINE_KEY].startswith("file name too long")
    # Journal: every skipped key named (JSON-escaped, one line each), and the summary.
    assert '"loras/nul\\u0000.bin": NUL byte in the key' in result.stderr
    assert '"loras/new\\u000aline ' in result.stderr
    assert f"{len(report)} object(s) cannot be stored on this node" in result.stderr

    # The next run changes nothing and reports the same.
    inodes = _inodes(cache.models)
    report_text = cache.skipped.read_text()
    result = cache.sync()
    assert result.returncode == 0, result.stderr
    assert _inodes(cache.models) == inodes
    assert cache.skipped.read_text() == report_text


def test_a_file_replaces_a_stale_folder_and_a_folder_a_stale_file(s3, bucket, cache):
    """Every model under loras/foo/ is deleted and loras/foo is uploaded as a file: the
    stale local folder goes and the file lands; then the reverse."""
    _put(s3, bucket, {"loras/foo/x.safetensors": b"x", "loras/foo/sub/y.safetensors": b"y"})
    assert cache.sync().returncode == 0

    s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "loras/foo/x.safetensors"}, {"Key": "loras/foo/sub/y.safetensors"}]}
    )
    _put(s3, bucket, {"loras/foo": b"now a file"})
    cache.marker.unlink()
    result = cache.sync()
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache)
    assert cache.marker.is_file()

    s3.delete_object(Bucket=bucket, Key="loras/foo")
    _put(s3, bucket, {"loras/foo/z.safetensors": b"a folder again"})
    cache.marker.unlink()
    result = cache.sync()
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache)
    assert cache.marker.is_file()
    assert not cache.skipped.exists()


def test_a_path_over_path_max_is_skipped_and_the_longest_that_fits_syncs(s3, bucket, cache, tmp_path):
    """PATH_MAX (4096 bytes with its NUL) counts the CLI's temporary file, 9 bytes longer."""
    # A models path of exactly 3,085 bytes, whatever the length of tmp_path: the longest key
    # that fits is then 1,000 bytes, under S3's 1,024.
    target = 3085
    models = tmp_path / "deep"
    while len(str(models)) + 1 + 200 < target:
        models /= "p" * 200
    models /= "p" * (target - len(str(models)) - 1)
    assert len(str(models)) == target
    models.mkdir(parents=True)
    room = 4095 - len(str(models)) - 1 - 9  # the longest key that fits
    folders = "loras/"
    while room - len(folders) > 201:
        folders += "q" * 200 + "/"
    fits = folders + "f" * (room - len(folders))
    too_long = folders + "g" * (room + 1 - len(folders))
    assert len(fits) == room <= 1024 and len(too_long) == room + 1 and len(too_long.rsplit("/", 1)[1]) <= 200
    _put(s3, bucket, {fits: b"fits", too_long: b"too long"})

    result = cache.sync(MODELS_PATH=str(models))
    assert result.returncode == 0, result.stderr
    assert _local_files(models) == {fits: b"fits"}
    assert cache.skipped_report() == {too_long: "local path longer than PATH_MAX (4096 bytes)"}


def test_a_failing_object_fails_the_run_but_not_the_other_prefixes(s3, bucket, cache, tmp_path):
    """A transfer that fails for a reason no listing predicts (here a folder appears where
    a model is written) is a real error: the run exits non-zero and the marker stays as it
    was, but every other object, in every prefix, converged; the next run repairs it."""
    _put(
        s3,
        bucket,
        {
            "checkpoints/a.safetensors": b"a",
            "checkpoints/b.safetensors": b"b",
            "loras/c.safetensors": b"c",
            "loras/" + "n" * 256: b"skipped, not an error",
        },
    )
    bin_dir = _aws_wrapper(tmp_path, cache.env)
    result = cache.sync(
        MODEL_PREFIXES="checkpoints/ loras/",
        PATH=f"{bin_dir}{os.pathsep}{cache.env['PATH']}",
        AWS_CALLS=str(tmp_path / "calls"),
        BLOCK_PATH=str(cache.models / "checkpoints" / "a.safetensors"),
    )
    assert result.returncode != 0
    assert "failed (exit 1)" in result.stderr
    assert not cache.marker.exists()
    assert (cache.models / "checkpoints" / "b.safetensors").read_bytes() == b"b"
    assert (cache.models / "loras" / "c.safetensors").read_bytes() == b"c", "the other prefix converged"
    assert list(cache.skipped_report()) == ["loras/" + "n" * 256]

    # The next run repairs it; the unstorable object is gone from the bucket meanwhile: no
    # object is skipped any more and the report goes.
    s3.delete_object(Bucket=bucket, Key="loras/" + "n" * 256)
    result = cache.sync(MODEL_PREFIXES="checkpoints/ loras/")
    assert result.returncode == 0, result.stderr
    assert cache.marker.is_file()
    assert not cache.skipped.exists()
    _assert_tree(
        cache, {"checkpoints/a.safetensors": b"a", "checkpoints/b.safetensors": b"b", "loras/c.safetensors": b"c"}
    )


# --- the node's transfer client: CRT -----------------------------------------------------


class _PortForwarder(socketserver.ThreadingTCPServer):
    """127.0.0.1:80 -> the moto server's port, counting connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.connections = 0
        super().__init__(("127.0.0.1", 80), _Relay)


class _Relay(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1
        with socket.create_connection(self.server.target) as upstream:
            peers = {self.request: upstream, upstream: self.request}
            while True:
                readable, _, _ = select.select(list(peers), [], [], 60)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    peers[sock].sendall(data)


def _port_80_refuses() -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", 80)) != 0


def test_sync_with_the_nodes_crt_transfer_client(s3, bucket, aws_cli_env, tmp_path, moto_server):
    """The node's exact CLI configuration: the aws-config gpu-node-setup.sh writes, with
    `preferred_transfer_client = crt`.

    AWS CLI 2.9's CRT client connects to port 80 for an http endpoint, whatever port the
    endpoint names (strace: its connect() calls go to 127.0.0.1:80, the listing's to moto's
    port), so it cannot reach the session's moto server; the other node tests therefore use
    the classic client. Where this machine lets the test listen on 127.0.0.1:80 (root or
    CAP_NET_BIND_SERVICE), a forwarder to moto there makes the CRT path run for real, with
    the odd objects and a multi-part (> 8 MiB) model, and shows the CRT client's
    connections arrive on port 80. Elsewhere, with nothing on port 80, the test shows the
    claim instead: the CRT client's downloads fail with AWS_IO_SOCKET_CONNECTION_REFUSED.
    If that part fails, the CLI has learnt the port: switch the node tests to the crt config.
    """
    env = node_cli_env("v2", aws_cli_env, tmp_path)
    (tmp_path / "host").mkdir()
    host = FakeHost(tmp_path / "host", 0)
    assert host.run_setup().returncode == 0
    env["AWS_CONFIG_FILE"] = str(host.config_dir / "aws-config")
    assert "preferred_transfer_client = crt" in Path(env["AWS_CONFIG_FILE"]).read_text()
    node_cache = Cache(tmp_path, env, bucket)
    try:
        forwarder = _PortForwarder(("127.0.0.1", int(moto_server.rsplit(":", 1)[1])))
    except OSError as error:
        if not _port_80_refuses():
            pytest.skip(f"cannot listen on 127.0.0.1:80 ({error}), and something else does")
        _put(s3, bucket, {"loras/a.bin": b"a"})
        result = node_cache.sync()
        assert result.returncode != 0
        assert "AWS_IO_SOCKET_CONNECTION_REFUSED" in result.stderr
        assert not (node_cache.models / "loras" / "a.bin").exists()
        return
    thread = threading.Thread(target=forwarder.serve_forever, daemon=True)
    thread.start()
    try:
        large = bytes(range(256)) * (9 * 4096 + 7)  # > 8 MiB: the CRT client's ranged parts
        _put(s3, bucket, {**SPECIAL_KEYS, "checkpoints/large.safetensors": large})
        _put_odd(s3, bucket)
        result = node_cache.sync()
        assert result.returncode == 0, result.stderr
        assert forwarder.connections > 0, "the downloads did not go through port 80"
        expected = {k: v for k, v in {**SPECIAL_KEYS, **STORABLE}.items() if not k.endswith("/")}
        _assert_tree(node_cache, {**expected, "checkpoints/large.safetensors": large})
        assert sorted(node_cache.skipped_report()) == sorted(UNSTORABLE)
    finally:
        forwarder.shutdown()
        forwarder.server_close()


# --- model-cache-deadline.sh --------------------------------------------------------------


class Deadline:
    """The deadline script with a stub systemctl (calls logged) and the node's CLI."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.marker = tmp_path / "cache" / ".models-cache-complete"
        self.bin = tmp_path / "deadline-bin"
        self.bin.mkdir()
        self.systemctl_log = tmp_path / "systemctl.log"
        systemctl = self.bin / "systemctl"
        systemctl.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$*" >>{self.systemctl_log}\n'
            'if [ "$1" = show ]; then printf "ActiveState=activating\\nNRestarts=7\\n"; fi\n'
        )
        systemctl.chmod(0o755)
        self.cluster = f"deadline-{uuid.uuid4().hex[:10]}"
        self.env = {
            **env,
            "PATH": f"{self.bin}{os.pathsep}{env['PATH']}",
            "CACHE_MARKER_PATH": str(self.marker),
            "CLUSTER_NAME": self.cluster,
            "CACHE_DEADLINE_SECONDS": "3600",
            "SYNC_SERVICE_NAME": names.SYNC_SERVICE_NAME,
            "METRICS_NAMESPACE": names.METRICS_NAMESPACE,
            "CACHE_DEADLINE_METRIC": names.CACHE_DEADLINE_METRIC,
            "METRIC_CLUSTER_DIMENSION": names.METRIC_CLUSTER_DIMENSION,
        }

    def run(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(DEADLINE)],
            env={**self.env, **overrides},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def systemctl_calls(self) -> list[str]:
        return self.systemctl_log.read_text().splitlines() if self.systemctl_log.exists() else []


def _deadline_metrics(moto_server: str, cluster: str) -> tuple[list[dict], float]:
    """The deadline metrics of `cluster` in moto, and the sum of their values."""
    cloudwatch = moto_client("cloudwatch", moto_server)
    dimensions = [{"Name": names.METRIC_CLUSTER_DIMENSION, "Value": cluster}]
    metrics = cloudwatch.list_metrics(
        Namespace=names.METRICS_NAMESPACE, MetricName=names.CACHE_DEADLINE_METRIC, Dimensions=dimensions
    )["Metrics"]
    now = datetime.now(UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace=names.METRICS_NAMESPACE,
        MetricName=names.CACHE_DEADLINE_METRIC,
        Dimensions=dimensions,
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    return metrics, sum(p["Sum"] for p in points)


def test_deadline_missed_reports_the_metric_and_powers_off(cli, tmp_path, moto_server):
    deadline = Deadline(tmp_path, cli)
    result = deadline.run()
    assert result.returncode == 0, result.stderr
    metrics, total = _deadline_metrics(moto_server, deadline.cluster)
    assert metrics == [
        {
            "Namespace": names.METRICS_NAMESPACE,
            "MetricName": names.CACHE_DEADLINE_METRIC,
            "Dimensions": [{"Name": names.METRIC_CLUSTER_DIMENSION, "Value": deadline.cluster}],
        }
    ]
    assert total == 1
    assert deadline.systemctl_calls()[-1] == "poweroff"
    # Why, in the journal: the deadline, the missing marker, the sync service's state.
    assert "not complete 3600 s after boot" in result.stderr
    assert str(deadline.marker) in result.stderr
    assert "ActiveState=activating NRestarts=7" in result.stderr


def test_deadline_met_does_nothing(cli, tmp_path, moto_server):
    deadline = Deadline(tmp_path, cli)
    deadline.marker.parent.mkdir(parents=True)
    deadline.marker.write_text("converged\n")
    result = deadline.run()
    assert result.returncode == 0, result.stderr
    assert deadline.systemctl_calls() == []
    assert _deadline_metrics(moto_server, deadline.cluster) == ([], 0)


def test_deadline_powers_off_even_when_the_metric_fails(cli, tmp_path, moto_server):
    deadline = Deadline(tmp_path, cli)
    # Nothing listens there: the call fails at once (one attempt).
    result = deadline.run(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    assert result.returncode == 0, result.stderr
    assert "could not report the metric; powering off anyway" in result.stderr
    assert deadline.systemctl_calls()[-1] == "poweroff"


def test_deadline_powers_off_even_when_the_metric_hangs(tmp_path, aws_cli_env):
    deadline = Deadline(tmp_path, aws_cli_env)
    (deadline.bin / "aws").write_text("#!/bin/sh\nexec sleep 60\n")
    (deadline.bin / "aws").chmod(0o755)
    started = time.monotonic()
    result = deadline.run(DEADLINE_METRIC_TIMEOUT="1")
    assert time.monotonic() - started < 30
    assert "could not report the metric; powering off anyway" in result.stderr
    assert deadline.systemctl_calls()[-1] == "poweroff"


@pytest.mark.parametrize(
    "variable",
    ["CACHE_MARKER_PATH", "CLUSTER_NAME", "METRICS_NAMESPACE", "CACHE_DEADLINE_METRIC", "METRIC_CLUSTER_DIMENSION"],
)
def test_deadline_requires_its_variables(tmp_path, aws_cli_env, variable):
    deadline = Deadline(tmp_path, aws_cli_env)
    result = deadline.run(**{variable: ""})
    assert result.returncode != 0
    assert f"required environment variable {variable} is not set" in result.stderr
    assert deadline.systemctl_calls() == []
