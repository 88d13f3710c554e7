"""The ComfyUI image (docker/): lint, pins, and the behaviour of its scripts.

No Docker engine is needed: the Dockerfile is linted and parsed, and the scripts run
against stub `docker`, `aws`, `git` and `python3` commands that log their argv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from core import names
from tests.helpers import REPO, tool

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
BUILD_AND_PUSH = DOCKER / "build_and_push.sh"
INSTALL_NODES = DOCKER / "install_custom_nodes.sh"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SCRIPTS = sorted(DOCKER.glob("*.sh"))

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO_URL = "123456789012.dkr.ecr.us-east-1.amazonaws.com/comfyui"
STUB_DIGEST = "sha256:" + "ab" * 32


# --- Dockerfile parsing -------------------------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return result


def arg_defaults() -> dict[str, str]:
    """ARG name=default pairs (the first default wins, as for the global ARGs)."""
    found: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            found.setdefault(key, value)
    return found


def stages() -> list[tuple[str, str | None]]:
    """(image, alias) of each FROM."""
    result = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"unparsed FROM {rest!r}"
            result.append((m.group(1), m.group(2)))
    return result


def external_base_images() -> list[str]:
    aliases = {alias for _, alias in stages() if alias}
    return [image for image, _ in stages() if image not in aliases]


def runs() -> list[str]:
    return [rest for keyword, rest in instructions() if keyword == "RUN"]


def test_hadolint_clean():
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"line {i + 1}: a hadolint ignore needs a justification comment above it"
            )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    result = subprocess.run([tool("shellcheck"), "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_scripts_exist_and_are_executable():
    for script in (BUILD_AND_PUSH, INSTALL_NODES, ENTRYPOINT):
        assert script in SCRIPTS
        assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
        assert "set -euo pipefail" in script.read_text()


def test_base_image_is_one_pinned_cuda_runtime():
    bases = external_base_images()
    assert len(bases) == 1, f"expected one external base image, got {bases}"
    image = bases[0]
    m = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?runtime-ubuntu(22\.04|24\.04)@sha256:[0-9a-f]{64}",
        image,
    )
    assert m, f"base image {image!r} is not a version-tagged, digest-pinned nvidia/cuda runtime image"
    assert "latest" not in image


def test_every_stage_uses_bash_with_pipefail():
    shell = '["/bin/bash", "-o", "pipefail", "-c"]'
    stage_shells: list[list[str]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            stage_shells.append([])
        elif keyword == "SHELL":
            stage_shells[-1].append(rest)
    assert stage_shells and all(s == [shell] for s in stage_shells), stage_shells


def test_torch_pinned_to_the_base_image_cuda():
    args = arg_defaults()
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION", "TORCHAUDIO_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", args.get(name, "")), f"{name} is not an exact version"
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.", external_base_images()[0])
    assert args["TORCH_CUDA_TAG"] == f"cu{cuda.group(1)}{cuda.group(2)}", (
        "the torch wheel CUDA version must match the base image's CUDA version"
    )
    assert args["TORCH_INDEX_URL"].endswith("/" + args["TORCH_CUDA_TAG"])
    torch_runs = [r for r in runs() if "--index-url" in r]
    assert len(torch_runs) == 1
    for pin in (
        '"torch==${TORCH_VERSION}"',
        '"torchvision==${TORCHVISION_VERSION}"',
        '"torchaudio==${TORCHAUDIO_VERSION}"',
        '"${TORCH_INDEX_URL}"',
    ):
        assert pin in torch_runs[0]
    # The same pins constrain every later pip install.
    assert any(k == "ENV" and "PIP_CONSTRAINT=" in r for k, r in instructions()), (
        "PIP_CONSTRAINT is not set for the build"
    )


def test_comfyui_commit_default_is_full_sha_and_verified():
    args = arg_defaults()
    assert re.fullmatch(r"[0-9a-f]{40}", args["COMFYUI_COMMIT"]), args["COMFYUI_COMMIT"]
    fetch = [r for r in runs() if '"${COMFYUI_COMMIT}"' in r and "git" in r]
    assert len(fetch) == 1
    assert "rev-parse HEAD" in fetch[0] and "requirements.txt" in fetch[0]


def test_runtime_user_is_numeric_non_root_matching_names():
    users = [rest for keyword, rest in instructions() if keyword == "USER"]
    assert users, "no USER instruction"
    assert names.COMFYUI_UID != 0
    assert users[-1] == f"{names.COMFYUI_UID}:{names.COMFYUI_GID}"
    useradd = [r for r in runs() if "useradd" in r]
    assert useradd and f"--uid {names.COMFYUI_UID}" in useradd[0]
    assert f"--gid {names.COMFYUI_GID}" in useradd[0]


def test_port_is_configurable_and_matches_names():
    args = arg_defaults()
    assert args["COMFYUI_PORT"] == str(names.COMFYUI_PORT)
    envs = " ".join(r for k, r in instructions() if k == "ENV")
    assert "COMFYUI_PORT=${COMFYUI_PORT}" in envs
    assert ("EXPOSE", "${COMFYUI_PORT}") in instructions()


def test_entrypoint_and_cmd_are_exec_form():
    found = {k: r for k, r in instructions() if k in ("ENTRYPOINT", "CMD")}
    assert found["ENTRYPOINT"] == '["/usr/bin/tini", "--", "/usr/local/bin/comfyui-entrypoint"]'
    assert found["CMD"] == "[]"


def test_package_installs_are_lean():
    for run in runs():
        for m in re.finditer(r"pip install\b[^&|;]*", run):
            assert "--no-cache-dir" in m.group(0), m.group(0)
        for m in re.finditer(r"apt-get install\b[^&|;]*", run):
            assert "--no-install-recommends" in m.group(0), m.group(0)
        if "apt-get install" in run:
            assert "rm -rf /var/lib/apt/lists/*" in run


def test_copy_sources_exist_in_build_context():
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (DOCKER / source).is_file(), f"COPY source {source} is not in docker/"


def test_extra_model_paths_cover_the_model_prefixes():
    from core.config import ModelSyncConfig
    from modules.comfyui import MODELS_MOUNT

    config = yaml.safe_load((DOCKER / "extra_model_paths.yaml").read_text())
    assert list(config) == ["comfyui_eks"]
    section = dict(config["comfyui_eks"])
    assert section.pop("base_path") == MODELS_MOUNT == "/models", "where the pod mounts the node's model cache"
    assert section.pop("is_default") is True
    required = {
        "checkpoints",
        "loras",
        "vae",
        "clip",
        "unet",
        "controlnet",
        "upscale_models",
        "embeddings",
        "clip_vision",
        "diffusion_models",
        "text_encoders",
    }
    assert set(section) == required
    assert all(section[k] == k for k in section), "each type maps to the same-named folder"
    prefixes = {p.rstrip("/") for p in ModelSyncConfig().prefixes}
    assert set(section) == prefixes, "model types and the model-sync prefixes have drifted apart"


# --- Stub commands ------------------------------------------------------------------------

STUB_DOCKER = r"""#!/usr/bin/env bash
# One write() per line: the two ends of a pipeline log concurrently, and O_APPEND
# only keeps a line whole when it is written in one call.
line=$(printf 'docker'; printf '\t%s' "$@"); printf '%s\n' "$line" >> "$STUB_LOG"
case "$1" in
  info)
    if [[ "${STUB_DOCKER_INFO_RC:-0}" != 0 ]]; then
      echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
      exit "$STUB_DOCKER_INFO_RC"
    fi ;;
  login)
    password=$(cat)
    printf 'docker-login-stdin\t%s\n' "$password" >> "$STUB_LOG"
    echo "Login Succeeded" ;;
  build) exit "${STUB_DOCKER_BUILD_RC:-0}" ;;
  push) touch "$STUB_STATE/pushed"; echo "pushed" ;;
esac
"""

STUB_AWS = r"""#!/usr/bin/env bash
# One write() per line: the two ends of a pipeline log concurrently, and O_APPEND
# only keeps a line whole when it is written in one call.
line=$(printf 'aws'; printf '\t%s' "$@"); printf '%s\n' "$line" >> "$STUB_LOG"
case "$1 $2" in
  "sts get-caller-identity")
    if [[ -n "${STUB_AWS_NO_CREDENTIALS:-}" ]]; then
      echo 'Unable to locate credentials. You can configure credentials by running "aws configure".' >&2
      exit 253
    fi
    echo "arn:aws:iam::123456789012:user/builder" ;;
  "ecr describe-images")
    if [[ -n "${STUB_ECR_REPOSITORY_MISSING:-}" ]]; then
      echo "An error occurred (RepositoryNotFoundException) when calling the DescribeImages operation:" \
        "The repository with name 'comfyui' does not exist" >&2
      exit 254
    fi
    if [[ -n "${STUB_ECR_TAG_EXISTS:-}" || -e "$STUB_STATE/pushed" ]]; then
      if [[ " $* " == *" --query "* ]]; then echo "$STUB_DIGEST"; else echo '{"imageDetails": [{}]}'; fi
      exit 0
    fi
    echo "An error occurred (ImageNotFoundException) when calling the DescribeImages operation:" \
      "The image does not exist" >&2
    exit 254 ;;
  "ecr get-login-password") echo "stub-password" ;;
  *) echo "unexpected aws call: $*" >&2; exit 99 ;;
esac
"""

STUB_GIT = r"""#!/usr/bin/env bash
# One write() per line: the two ends of a pipeline log concurrently, and O_APPEND
# only keeps a line whole when it is written in one call.
line=$(printf 'git'; printf '\t%s' "$@"); printf '%s\n' "$line" >> "$STUB_LOG"
if [[ "$1" == "-C" ]]; then dir=$2; shift 2; fi
case "$1" in
  clone)
    dest="${@: -1}"
    mkdir -p "$dest"
    if [[ -n "${STUB_GIT_REQUIREMENTS:-}" ]]; then echo "example-package==1.0" > "$dest/requirements.txt"; fi ;;
  checkout) printf '%s\n' "${@: -1}" > "$dir/.stub-head" ;;
  rev-parse) if [[ -n "${STUB_GIT_HEAD:-}" ]]; then echo "$STUB_GIT_HEAD"; else cat "$dir/.stub-head"; fi ;;
  *) echo "unexpected git call: $*" >&2; exit 99 ;;
esac
"""

STUB_PYTHON = r"""#!/usr/bin/env bash
# One write() per line: the two ends of a pipeline log concurrently, and O_APPEND
# only keeps a line whole when it is written in one call.
line=$(printf 'python3'; printf '\t%s' "$@"); printf '%s\n' "$line" >> "$STUB_LOG"
"""

EXCLUDED_FROM_SYSTEM = {"docker", "aws", "git", "python", "python3"}


@pytest.fixture(scope="session")
def system_bin(tmp_path_factory) -> Path:
    """The system's commands minus the ones the tests stub (so 'missing' really is missing)."""
    target = tmp_path_factory.mktemp("system-bin")
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        d = Path(directory)
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            name = entry.name
            if name in EXCLUDED_FROM_SYSTEM or name.startswith("python") or (target / name).exists():
                continue
            if entry.is_file() and os.access(entry, os.X_OK):
                (target / name).symlink_to(entry)
    return target


class Stubs:
    def __init__(self, tmp_path: Path, system_bin: Path):
        self.bin = tmp_path / "stub-bin"
        self.bin.mkdir()
        self.state = tmp_path / "stub-state"
        self.state.mkdir()
        self.log = tmp_path / "stub.log"
        self.log.touch()
        self.system_bin = system_bin
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{system_bin}",
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "STUB_LOG": str(self.log),
            "STUB_STATE": str(self.state),
            "STUB_DIGEST": STUB_DIGEST,
        }

    def add(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        return [line.split("\t") for line in self.log.read_text().splitlines()]

    def run(self, script: Path, *args: str, stdin: str | None = None, **env: str):
        return subprocess.run(
            ["bash", str(script), *args],
            env={**self.env, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def stubs(tmp_path, system_bin) -> Stubs:
    return Stubs(tmp_path, system_bin)


@pytest.fixture
def cloud(stubs) -> Stubs:
    stubs.add("docker", STUB_DOCKER)
    stubs.add("aws", STUB_AWS)
    return stubs


def commands(calls: list[list[str]]) -> list[str]:
    """A compact view of the calls: the program and its first one or two words."""
    out = []
    for call in calls:
        if call[0] == "aws":
            out.append(" ".join(call[:3]))
        elif call[0] == "docker-login-stdin":
            continue
        else:
            out.append(" ".join(call[:2]))
    return out


# --- build_and_push.sh --------------------------------------------------------------------


def test_build_and_push_help():
    result = subprocess.run(["bash", str(BUILD_AND_PUSH), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--repository-url" in result.stdout and "--comfyui-commit" in result.stdout


def test_build_and_push_fails_without_docker(stubs):
    stubs.add("aws", STUB_AWS)
    result = stubs.run(BUILD_AND_PUSH, "--repository-url", REPO_URL)
    assert result.returncode != 0
    assert "'docker' is not on PATH" in result.stderr
    assert stubs.calls() == []


def test_build_and_push_fails_without_aws(stubs):
    stubs.add("docker", STUB_DOCKER)
    result = stubs.run(BUILD_AND_PUSH, "--repository-url", REPO_URL)
    assert result.returncode != 0
    assert "'aws' is not on PATH" in result.stderr
    assert stubs.calls() == []


def test_build_and_push_fails_when_daemon_is_down(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, STUB_DOCKER_INFO_RC="1")
    assert result.returncode != 0
    assert "cannot reach the Docker daemon" in result.stderr
    assert "Is the docker daemon running?" in result.stderr  # docker's own words are passed on
    assert commands(cloud.calls()) == ["docker info"]


def test_build_and_push_fails_without_credentials(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, STUB_AWS_NO_CREDENTIALS="1")
    assert result.returncode != 0
    assert "no usable AWS credentials" in result.stderr
    assert "Unable to locate credentials" in result.stderr
    assert commands(cloud.calls()) == ["docker info", "aws sts get-caller-identity"]


@pytest.mark.parametrize(
    "url",
    [
        "comfyui",
        "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/comfyui",
        "12345678901.dkr.ecr.us-east-1.amazonaws.com/comfyui",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/comfyui:v1",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ComfyUI",
        "123456789012.dkr.ecr.useast.amazonaws.com/comfyui",
        "123456789012.dkr.ecr.us-east-1.example.com/comfyui",
        "docker.io/library/comfyui",
    ],
)
def test_build_and_push_rejects_malformed_repository_url(cloud, url):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", url)
    assert result.returncode == 2
    assert "malformed repository URL" in result.stderr
    assert "<12-digit account>.dkr.ecr.<region>.amazonaws.com/<name>" in result.stderr
    assert cloud.calls() == [], "nothing may run before the inputs are valid"


def test_build_and_push_requires_repository_url(cloud):
    result = cloud.run(BUILD_AND_PUSH)
    assert result.returncode == 2
    assert "repository URL is missing" in result.stderr
    assert "--repository-url" in result.stderr and "ECR_REPOSITORY_URL" in result.stderr
    assert cloud.calls() == []


@pytest.mark.parametrize("tag", ["-leading-dash", ".dot", "has space", "a:b", "x" * 129, "latest"])
def test_build_and_push_rejects_malformed_tag(cloud, tag):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--tag", tag)
    assert result.returncode == 2
    assert "tag" in result.stderr and tag.split()[0][:20] in result.stderr
    assert cloud.calls() == []


@pytest.mark.parametrize("commit", ["master", "0123456", SHA.upper(), SHA + "0"])
def test_build_and_push_rejects_unpinned_comfyui_commit(cloud, commit):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--comfyui-commit", commit)
    assert result.returncode == 2
    assert "not a full 40-hex" in result.stderr
    assert cloud.calls() == []


def test_build_and_push_rejects_unknown_argument(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--push-anyway")
    assert result.returncode == 2
    assert "unknown argument: --push-anyway" in result.stderr


def test_build_and_push_refuses_an_existing_tag(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--tag", "v1", STUB_ECR_TAG_EXISTS="1")
    assert result.returncode != 0
    assert "tag 'v1' already exists" in result.stderr
    assert commands(cloud.calls()) == [
        "docker info",
        "aws sts get-caller-identity",
        "aws ecr describe-images",
    ], "nothing may be built or pushed when the tag exists"
    describe = cloud.calls()[-1]
    assert "imageTag=v1" in describe and "comfyui" in describe and "us-east-1" in describe


def test_build_and_push_reports_a_missing_repository(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, STUB_ECR_REPOSITORY_MISSING="1")
    assert result.returncode != 0
    assert "ECR repository 'comfyui' does not exist in us-east-1" in result.stderr
    assert "docker build" not in commands(cloud.calls())


def test_build_and_push_happy_path(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--tag", "v1")
    assert result.returncode == 0, result.stderr
    image = f"{REPO_URL}:v1"
    assert result.stdout == f"{image}@{STUB_DIGEST}\n", "stdout is exactly the pushed image"

    calls = cloud.calls()
    order = commands(calls)
    # get-login-password | docker login is one pipeline: the two start together.
    order[3:5] = sorted(order[3:5])
    assert order == [
        "docker info",
        "aws sts get-caller-identity",
        "aws ecr describe-images",
        "aws ecr get-login-password",
        "docker login",
        "docker build",
        "docker push",
        "aws ecr describe-images",
    ]
    by_name = {" ".join(c[:2]): c for c in calls if c[0] == "docker"}
    login = by_name["docker login"]
    assert login[1:] == [
        "login",
        "--username",
        "AWS",
        "--password-stdin",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    ]
    assert ["docker-login-stdin", "stub-password"] in calls, "the password goes through stdin"
    assert ["aws", "ecr", "get-login-password", "--region", "us-east-1"] in calls

    build = by_name["docker build"]
    default_commit = arg_defaults()["COMFYUI_COMMIT"]
    assert f"COMFYUI_COMMIT={default_commit}" == build[build.index("--build-arg") + 1]
    assert build[build.index("--platform") + 1] == "linux/amd64"
    assert build[build.index("--tag") + 1] == image
    assert build[build.index("--file") + 1] == str(DOCKERFILE)
    assert build[-1] == str(DOCKER)
    assert by_name["docker push"] == ["docker", "push", image]


def test_build_and_push_default_tag_tracks_the_inputs(cloud):
    def pushed_image(*extra: str) -> str:
        for f in cloud.state.iterdir():
            f.unlink()
        result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    default_commit = arg_defaults()["COMFYUI_COMMIT"]
    first = pushed_image()
    m = re.fullmatch(re.escape(REPO_URL) + r":([0-9a-f]{12})-([0-9a-f]{12})@" + STUB_DIGEST, first)
    assert m, first
    assert m.group(1) == default_commit[:12]
    assert pushed_image() == first, "the default tag is deterministic"

    arm = pushed_image("--platform", "linux/arm64")
    assert arm != first and arm.split(":")[1].startswith(default_commit[:12])

    other = pushed_image("--comfyui-commit", SHA)
    assert other.split(":")[1].startswith(SHA[:12] + "-")
    build = [c for c in cloud.calls() if c[:2] == ["docker", "build"]][-1]
    assert f"COMFYUI_COMMIT={SHA}" in build


def test_build_and_push_reads_environment_variables(cloud):
    result = cloud.run(
        BUILD_AND_PUSH,
        ECR_REPOSITORY_URL=REPO_URL,
        IMAGE_TAG="from-env",
        COMFYUI_COMMIT=SHA,
        IMAGE_PLATFORM="linux/arm64",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{REPO_URL}:from-env@{STUB_DIGEST}\n"
    build = [c for c in cloud.calls() if c[:2] == ["docker", "build"]][0]
    assert f"COMFYUI_COMMIT={SHA}" in build and "linux/arm64" in build


def test_build_and_push_stops_when_the_build_fails(cloud):
    result = cloud.run(BUILD_AND_PUSH, "--repository-url", REPO_URL, "--tag", "v1", STUB_DOCKER_BUILD_RC="1")
    assert result.returncode != 0
    assert "docker build failed" in result.stderr
    assert "docker push" not in commands(cloud.calls())


def test_build_and_push_against_moto_with_the_real_aws_cli(stubs, aws_cli_env, tmp_path):
    """The ECR calls and error parsing, checked against the real AWS CLI (moto behind it)."""
    aws = shutil.which("aws", path=aws_cli_env["PATH"]) or tool("aws")  # AWS CLI v1, through its fork server
    env = {k: v for k, v in aws_cli_env.items() if k != "PATH"}
    (stubs.bin / "aws").symlink_to(aws)
    # The docker stub's push registers an image in (moto's) ECR, as a real push would.
    stubs.add(
        "docker",
        STUB_DOCKER.replace(
            'push) touch "$STUB_STATE/pushed"; echo "pushed" ;;',
            'push) aws ecr put-image --region us-west-2 --repository-name "$MOTO_REPO" '
            '--image-tag "${2##*:}" --image-manifest "$MANIFEST" > /dev/null ;;',
        ),
    )
    repo = f"comfyui-{uuid.uuid4().hex[:12]}"  # the moto server is shared by the session
    subprocess.run(
        [
            aws,
            "ecr",
            "create-repository",
            "--region",
            "us-west-2",
            "--repository-name",
            repo,
            "--image-tag-mutability",
            "IMMUTABLE",
        ],
        env=aws_cli_env,
        check=True,
        capture_output=True,
    )
    url = f"123456789012.dkr.ecr.us-west-2.amazonaws.com/{repo}"
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,'
        '"digest":"sha256:' + "a" * 64 + '"},"layers":[]}'
    )
    env.update(MOTO_REPO=repo, MANIFEST=manifest)

    first = stubs.run(BUILD_AND_PUSH, "--repository-url", url, "--tag", "v1", **env)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(re.escape(f"{url}:v1@") + r"sha256:[0-9a-f]{64}\n", first.stdout)

    again = stubs.run(BUILD_AND_PUSH, "--repository-url", url, "--tag", "v1", **env)
    assert again.returncode != 0
    assert "tag 'v1' already exists" in again.stderr

    missing = stubs.run(BUILD_AND_PUSH, "--repository-url", url + "-absent", "--tag", "v1", **env)
    assert missing.returncode != 0
    assert f"ECR repository '{repo}-absent' does not exist" in missing.stderr


# --- install_custom_nodes.sh --------------------------------------------------------------


@pytest.fixture
def nodes(stubs, tmp_path) -> Stubs:
    stubs.add("git", STUB_GIT)
    stubs.add("python3", STUB_PYTHON)
    stubs.nodes_dir = tmp_path / "custom_nodes"
    stubs.nodes_dir.mkdir()
    return stubs


def write_list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom_nodes.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "bad_line",
    [
        f"http://github.com/example/Node {SHA}",
        f"git@github.com:example/Node.git {SHA}",
        f"https://user:token@github.com/example/Node {SHA}",
        "https://github.com/example/Node main",
        "https://github.com/example/Node 0123456",
        f"https://github.com/example/Node {SHA.upper()}",
        "https://github.com/example/Node",
        f"https://github.com/example/Node {SHA} extra",
        f"https://github.com/example/Node?x=1 {SHA}",
    ],
)
def test_install_nodes_rejects_a_malformed_line(nodes, tmp_path, bad_line):
    good = f"https://github.com/example/Good.git {SHA}"
    listing = write_list(tmp_path, f"# pinned nodes\n{good}\n\n{bad_line}\n")
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode != 0
    assert f"{listing}:4:" in result.stderr, result.stderr
    assert "nothing was installed" in result.stderr
    assert nodes.calls() == [], "no line is installed unless every line is valid"


def test_install_nodes_rejects_duplicate_names(nodes, tmp_path):
    listing = write_list(
        tmp_path,
        f"https://github.com/a/Node.git {SHA}\nhttps://gitlab.com/b/Node {SHA}\n",
    )
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode != 0
    assert f"{listing}:2:" in result.stderr and "already listed" in result.stderr


def test_install_nodes_clones_and_checks_out_the_pinned_commit(nodes, tmp_path):
    other = "f" * 40
    listing = write_list(
        tmp_path,
        f"https://github.com/example/ComfyUI-First.git {SHA}  # why it is pinned\n"
        f"  https://github.com/example/Second {other}\n",
    )
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode == 0, result.stderr
    first = str(nodes.nodes_dir / "ComfyUI-First")
    second = str(nodes.nodes_dir / "Second")
    assert nodes.calls() == [
        [
            "git",
            "clone",
            "--quiet",
            "--filter=blob:none",
            "--no-checkout",
            "--",
            "https://github.com/example/ComfyUI-First.git",
            first,
        ],
        ["git", "-C", first, "checkout", "--quiet", "--detach", SHA],
        ["git", "-C", first, "rev-parse", "HEAD"],
        [
            "git",
            "clone",
            "--quiet",
            "--filter=blob:none",
            "--no-checkout",
            "--",
            "https://github.com/example/Second",
            second,
        ],
        ["git", "-C", second, "checkout", "--quiet", "--detach", other],
        ["git", "-C", second, "rev-parse", "HEAD"],
    ]


def test_install_nodes_installs_requirements(nodes, tmp_path):
    listing = write_list(tmp_path, f"https://github.com/example/Node {SHA}\n")
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir), STUB_GIT_REQUIREMENTS="1")
    assert result.returncode == 0, result.stderr
    requirements = str(nodes.nodes_dir / "Node" / "requirements.txt")
    assert nodes.calls()[-1] == [
        "python3",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "-r",
        requirements,
    ]


def test_install_nodes_fails_when_head_is_not_the_pinned_commit(nodes, tmp_path):
    listing = write_list(tmp_path, f"https://github.com/example/Node {SHA}\n")
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir), STUB_GIT_HEAD="e" * 40)
    assert result.returncode != 0
    assert f"expected {SHA}" in result.stderr


def test_install_nodes_refuses_to_overwrite_a_directory(nodes, tmp_path):
    (nodes.nodes_dir / "Node").mkdir()
    listing = write_list(tmp_path, f"https://github.com/example/Node {SHA}\n")
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert nodes.calls() == []


@pytest.mark.parametrize("text", ["", "# only comments\n\n   \n  # indented comment\n"])
def test_install_nodes_empty_list_is_a_no_op(nodes, tmp_path, text):
    listing = write_list(tmp_path, text)
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert nodes.calls() == []


def test_shipped_node_list_is_empty_and_its_example_is_valid(nodes, tmp_path):
    shipped = DOCKER / "custom_nodes.txt"
    result = nodes.run(INSTALL_NODES, str(shipped), str(nodes.nodes_dir))
    assert result.returncode == 0, result.stderr
    assert nodes.calls() == [], "no third-party code is installed by default"

    examples = [line[1:].strip() for line in shipped.read_text().splitlines() if re.match(r"#\s*https://", line)]
    assert len(examples) == 1
    listing = write_list(tmp_path, examples[0] + "\n")
    result = nodes.run(INSTALL_NODES, str(listing), str(nodes.nodes_dir))
    assert result.returncode == 0, result.stderr
    assert [c[1] for c in nodes.calls()] == ["clone", "-C", "-C"]


def test_install_nodes_usage(nodes):
    result = nodes.run(INSTALL_NODES)
    assert result.returncode == 2 and "usage:" in result.stderr


# --- entrypoint.sh ------------------------------------------------------------------------


@pytest.fixture
def comfy_home(stubs, tmp_path) -> Path:
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("")
    stubs.add("python", STUB_PYTHON.replace("'python3'", "'python'"))
    return home


def entrypoint_env(tmp_path: Path, home: Path) -> dict[str, str]:
    return {
        "COMFYUI_HOME": str(home),
        "COMFYUI_EXTRA_MODEL_PATHS": str(DOCKER / "extra_model_paths.yaml"),
        "COMFYUI_OUTPUT_DIR": str(tmp_path / "outputs"),
        "COMFYUI_INPUT_DIR": str(tmp_path / "inputs"),
        "COMFYUI_SCRATCH_DIR": str(tmp_path / "scratch"),
        "XDG_CACHE_HOME": str(tmp_path / "scratch" / "cache"),
    }


def test_entrypoint_starts_comfyui_on_the_configured_port(stubs, comfy_home, tmp_path):
    env = entrypoint_env(tmp_path, comfy_home)
    result = stubs.run(ENTRYPOINT, "--preview-method", "auto", **env, COMFYUI_PORT="9000")
    assert result.returncode == 0, result.stderr
    (call,) = stubs.calls()
    scratch = tmp_path / "scratch"
    assert call == [
        "python",
        "main.py",
        "--listen",
        "0.0.0.0",
        "--port",
        "9000",
        "--extra-model-paths-config",
        str(DOCKER / "extra_model_paths.yaml"),
        "--output-directory",
        str(tmp_path / "outputs"),
        "--input-directory",
        str(tmp_path / "inputs"),
        "--temp-directory",
        str(scratch),
        "--user-directory",
        str(scratch / "user"),
        "--database-url",
        f"sqlite:///{scratch}/user/comfyui.db",
        "--disable-auto-launch",
        "--preview-method",
        "auto",
    ]
    for d in (tmp_path / "outputs", tmp_path / "inputs", scratch / "temp", scratch / "user"):
        assert d.is_dir()


def test_entrypoint_defaults_to_the_names_port(stubs, comfy_home, tmp_path):
    result = stubs.run(ENTRYPOINT, **entrypoint_env(tmp_path, comfy_home))
    assert result.returncode == 0, result.stderr
    call = stubs.calls()[0]
    assert call[call.index("--port") + 1] == str(names.COMFYUI_PORT)


@pytest.mark.parametrize("port", ["0", "65536", "80a", "08188", "-1"])
def test_entrypoint_rejects_a_bad_port(stubs, comfy_home, tmp_path, port):
    result = stubs.run(ENTRYPOINT, **entrypoint_env(tmp_path, comfy_home), COMFYUI_PORT=port)
    assert result.returncode != 0
    assert "COMFYUI_PORT must be a TCP port" in result.stderr
    assert stubs.calls() == []


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can write anywhere")
def test_entrypoint_reports_an_unwritable_output_dir(stubs, comfy_home, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    env = entrypoint_env(tmp_path, comfy_home) | {"COMFYUI_OUTPUT_DIR": str(locked / "out")}
    result = stubs.run(ENTRYPOINT, **env)
    assert result.returncode != 0
    assert "mount a writable volume" in result.stderr
    assert stubs.calls() == []


def test_runner_libraries_match_the_lock_file():
    """The job runner runs on the image's Python with the same library versions the tests use."""
    lock = json.loads((REPO / "Pipfile.lock").read_text())["default"]
    pins = dict(re.findall(r'"([a-z0-9-]+)==([0-9][^"]*)"', next(r for r in runs() if "boto3==" in r)))
    assert set(pins) == {"boto3", "requests", "websocket-client"}
    for package, version in pins.items():
        assert lock[package]["version"] == f"=={version}", package
