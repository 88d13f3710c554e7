"""The GPU node scripts, run for real.

* gpu-node-setup.sh runs against a simulated host (tests/stubs/fakehost.py): stub lsblk,
  blkid, mdadm, mkfs.xfs, mount, mountpoint and systemctl on PATH keep the host's disks in
  a JSON file and log every call, so the tests see exactly which devices were touched.
* model-cache-sync.sh runs the real `aws` CLI against a moto S3 server and is checked
  by comparing the local tree with the bucket, byte for byte.
"""

from __future__ import annotations

import email
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from core import names
from modules.gpu_user_data import render_gpu_user_data
from tests.helpers import REPO, tool

SETUP = REPO / "modules" / "scripts" / "gpu-node-setup.sh"
SYNC = REPO / "modules" / "scripts" / "model-cache-sync.sh"
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


@pytest.mark.parametrize("script", [SETUP, SYNC], ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script):
    _shellcheck(script)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


def test_rendered_user_data_script_is_shellcheck_clean(tmp_path):
    user_data = render_gpu_user_data(
        models_bucket="comfyui-models", region="us-west-2", model_prefixes=("checkpoints/", "loras/")
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
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKEHOST}" "$0" "$@"\n')
            wrapper.chmod(0o755)
        self.state_file = root / "host-state.json"
        self.log_file = root / "host-calls.jsonl"
        self.cache_root = root / "mnt" / "comfyui-cache"
        self.sync_script = root / "usr" / "local" / "sbin" / "comfyui-model-sync"
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
        }
        env.update(names.script_variables(models_bucket="comfyui-models", region="us-west-2"))
        env.update(
            NODE_CACHE_ROOT=str(self.cache_root),
            MODELS_PATH=str(self.cache_root / "models"),
            CACHE_MARKER_PATH=str(self.cache_root / ".models-cache-complete"),
            SYNC_REQUEST_FLAG=str(self.root / "run" / "comfyui" / "model-sync.requested"),
            SYNC_SCRIPT_PATH=str(self.sync_script),
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
        assert (
            f"no NVMe instance store found; falling back to the root volume at {host.cache_root}" in result.stderr
        )
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

    # The sync script, installed executable, byte for byte.
    assert host.sync_script.read_bytes() == SYNC.read_bytes()
    assert host.sync_script.stat().st_mode & stat.S_IXUSR

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

    assert host.calls("systemctl") == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", names.SYNC_TIMER_NAME, names.SYNC_PATH_UNIT_NAME],
        ["systemctl", "start", "--no-block", names.SYNC_SERVICE_NAME],
    ]

    # The environment file gives the service exactly the variables the sync script reads
    # (single-quoted values mean the same to systemd and to bash).
    keys = ["MODELS_BUCKET", "AWS_REGION", "MODELS_PATH", "CACHE_MARKER_PATH", "SYNC_REQUEST_FLAG", "MODEL_PREFIXES"]
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


@pytest.mark.parametrize("variable", sorted(names.script_variables(models_bucket="b", region="r")))
def test_setup_requires_every_variable(tmp_path, variable):
    host = FakeHost(tmp_path, 1)
    result = host.run_setup(**{variable: ""})
    assert result.returncode != 0
    assert f"required environment variable {variable} is not set" in result.stderr
    assert host.calls("mkfs.xfs") == []


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
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


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
        self.flag = tmp_path / "run" / "model-sync.requested"
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir()
        self.env = dict(env)
        self.env.update(
            MODELS_BUCKET=bucket,
            MODELS_PATH=str(self.models),
            CACHE_MARKER_PATH=str(self.marker),
            SYNC_REQUEST_FLAG=str(self.flag),
            MODEL_PREFIXES="",
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


@pytest.fixture
def cache(tmp_path, aws_cli_env, bucket):
    tool("aws")  # the real AWS CLI (skips locally, fails in CI when it is missing)
    return Cache(tmp_path, aws_cli_env, bucket)


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


def _assert_mirror(s3, bucket: str, cache: Cache, prefixes: tuple[str, ...] = ("",)) -> None:
    expected = _bucket_files(s3, bucket, prefixes)
    assert _local_files(cache.models) == expected
    # Exactly the directories the files need: nothing left over from deleted objects.
    parents = {Path(key).parents[i].as_posix() for key in expected for i in range(len(Path(key).parents) - 1)}
    assert _local_dirs(cache.models) == parents


def _inodes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_ino for p in root.rglob("*") if p.is_file()}


def test_sync_converges_additions_replacements_and_deletions(s3, bucket, cache, tmp_path):
    _put(s3, bucket, SPECIAL_KEYS)
    result = cache.sync()
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache)
    assert cache.marker.is_file()
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
    assert _local_files(cache.models)["loras/a b/c$(touch pwned).safetensors"] == replaced[
        "loras/a b/c$(touch pwned).safetensors"
    ]
    assert cache.marker.is_file()
    assert not list(cache.root.glob(".models-cache-complete.??????")), "temporary marker left behind"
    assert not list(tmp_path.rglob("pwned"))
    assert "bucket=s3://" + cache.env["MODELS_BUCKET"] in first_marker


def test_sync_redownloads_a_same_size_replacement_with_the_same_timestamp(s3, bucket, cache, aws_cli_env):
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
        env=aws_cli_env,
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
    """`aws s3 sync` exits 2 when it skipped objects with a warning (GLACIER-class objects,
    keys climbing out of their folder) and synced the rest: the node still converges and
    writes the marker, instead of never becoming ready because of one unusable object."""
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


def test_sync_with_model_prefixes_mirrors_only_those_folders(s3, bucket, cache):
    _put(
        s3,
        bucket,
        {
            "checkpoints/a.safetensors": b"a",
            "checkpoints/sub dir/b.safetensors": b"b",
            "loras/c.safetensors": b"c",
            "checkpoints-old/d.safetensors": b"not a prefix match",
            "other/e.bin": b"e",
            "top-level.txt": b"f",
        },
    )
    (cache.models / "junk").mkdir(parents=True)
    (cache.models / "junk" / "x.bin").write_bytes(b"x")
    (cache.models / "stray.txt").write_bytes(b"y")
    (cache.models / "checkpoints").mkdir()
    (cache.models / "checkpoints" / "old.bin").write_bytes(b"z")

    result = cache.sync(MODEL_PREFIXES="checkpoints/ loras")
    assert result.returncode == 0, result.stderr
    _assert_mirror(s3, bucket, cache, prefixes=("checkpoints/", "loras/"))
    assert sorted(_local_files(cache.models)) == [
        "checkpoints/a.safetensors",
        "checkpoints/sub dir/b.safetensors",
        "loras/c.safetensors",
    ]
    assert cache.marker.is_file()


@pytest.mark.parametrize("prefixes", ["../etc/", "checkpoints/nested/", "."])
def test_sync_rejects_prefixes_outside_the_cache(cache, prefixes):
    result = cache.sync(MODEL_PREFIXES=prefixes)
    assert result.returncode != 0
    assert "is not a single top-level folder" in result.stderr
    assert not cache.marker.exists()


@pytest.mark.parametrize("variable", ["MODELS_BUCKET", "MODELS_PATH", "CACHE_MARKER_PATH", "SYNC_REQUEST_FLAG"])
def test_sync_requires_its_variables(cache, variable):
    result = cache.sync(**{variable: ""})
    assert result.returncode != 0
    assert f"required environment variable {variable} is not set" in result.stderr


def test_sync_refuses_a_marker_inside_the_models_path(cache):
    result = cache.sync(CACHE_MARKER_PATH=str(cache.models / "marker"))
    assert result.returncode != 0
    assert "must be outside MODELS_PATH" in result.stderr


def _aws_wrapper(tmp_path: Path, env: dict[str, str]) -> Path:
    """An `aws` on PATH that records calls, raises the sync request flag during the first
    `s3 sync` (a request arriving mid-sync), fails `s3 sync` when FAIL_S3_SYNC=1, or, when
    WARN_S3_SYNC=1, syncs and then exits 2 like the CLI after skipping objects with a warning."""
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
        '  if [[ "${WARN_S3_SYNC:-0}" == 1 ]]; then\n'
        f'    "{real_aws}" "$@" || exit $?\n'
        '    echo "warning: Skipping file s3://x/y. Object is of storage class GLACIER." >&2; exit 2\n'
        '  fi\n'
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
