"""`comfyui-eks models` (comfyui_eks/models.py) against moto's in-process S3 (mock_aws).

The CLI runs in-process through comfyui_eks.cli.main with the default configuration, whose
models bucket is comfyui-models-111122223333-us-west-2. Multipart uploads use a small
threshold (8 MiB) and 5 MiB parts, the smallest S3 accepts: 10 MiB and 123 bytes are 3 parts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
import yaml
from moto import mock_aws

from comfyui_eks import cli, models
from comfyui_eks.workflows import BUCKET_FOLDERS
from tests.helpers import REPO, default_config_data, dump_yaml

Json = dict[str, Any]
BUCKET = "comfyui-models-111122223333-us-west-2"
MiB = 1024 * 1024
WORKFLOWS = REPO / "workflows"


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self) -> Json:
        return dict(json.loads(self.out))

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("comfyui-eks models: ")]


@pytest.fixture(scope="module")
def _moto_s3() -> Iterator[Any]:
    """One moto S3 for the module (starting moto resets boto3's session, which costs ~0.3 s a
    test), with the default configuration's models bucket."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-west-2",
        }.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "COMFYUI_EKS_CONFIG"):
            patch.delenv(name, raising=False)
        with mock_aws():
            client = boto3.client("s3", region_name="us-west-2")
            client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
            yield client


@pytest.fixture
def s3(_moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The models bucket, empty, and small multipart settings."""
    monkeypatch.setattr(models, "MULTIPART_THRESHOLD", 8 * MiB)
    monkeypatch.setattr(models, "PART_SIZE", 5 * MiB)
    monkeypatch.delenv("COMFYUI_EKS_CONFIG", raising=False)
    listed = _moto_s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    if listed:
        _moto_s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})
    return _moto_s3


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    code = cli.main(["models", *map(str, args)])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def model_file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def keys(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def put(s3: Any, *names: str, size: int = 10) -> None:
    for name in names:
        s3.put_object(Bucket=BUCKET, Key=name, Body=b"x" * size)


def config_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(default_config_data(**changes)))
    return path


# --------------------------------------------------------------------------------------------
# upload


def test_upload_small_file_with_a_verified_sha256(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = model_file(tmp_path, "sd_xl_base_1.0.safetensors", 4096)
    result = run(capsys, "upload", path, "checkpoints/")
    assert result.code == 0, result.err
    key = "checkpoints/sd_xl_base_1.0.safetensors"
    digest = sha256_b64(path.read_bytes())
    assert result.out.strip() == f"uploaded s3://{BUCKET}/{key} (4.00 KiB, 1 part); SHA-256 verified: {digest}"
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == digest and "-" not in head["ETag"]


def test_upload_above_the_threshold_is_multipart_and_verified_as_a_composite(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = model_file(tmp_path, "flux1-dev.safetensors", 10 * MiB + 123)
    result = run(capsys, "upload", path, "diffusion_models")
    assert result.code == 0, result.err
    data = path.read_bytes()
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    composite = sha256_b64(b"".join(hashlib.sha256(p).digest() for p in parts))  # S3's checksum of checksums
    assert "(10.00 MiB, 3 parts)" in result.out and result.out.strip().endswith(composite)
    head = s3.head_object(Bucket=BUCKET, Key="diffusion_models/flux1-dev.safetensors")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)


def test_upload_with_key_into_a_subfolder(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = model_file(tmp_path, "local-name.bin", 100)
    result = run(capsys, "upload", path, "--key", "loras/style/anime.safetensors")
    assert result.code == 0, result.err
    assert keys(s3) == ["loras/style/anime.safetensors"]


def test_upload_refuses_a_folder_comfyui_does_not_read_unless_forced(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = model_file(tmp_path, "model.safetensors", 100)
    refused = run(capsys, "upload", path, "notes/")
    assert refused.code == 2 and keys(s3) == []
    (line,) = refused.errors
    assert "notes/ is not a folder ComfyUI reads from the models bucket (checkpoints/, clip/," in line
    assert line.endswith("fix: use one of them, or --force")
    forced = run(capsys, "upload", path, "notes/", "--force")
    assert forced.code == 0, forced.err
    assert "uploaded anyway: --force" in forced.err and keys(s3) == ["notes/model.safetensors"]


def test_with_empty_prefixes_the_folders_are_extra_model_paths(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapped = yaml.safe_load((REPO / "docker" / "extra_model_paths.yaml").read_text())["comfyui_eks"]
    assert set(BUCKET_FOLDERS) == set(mapped) - {"base_path", "is_default"}  # the rule's source
    config = config_file(tmp_path, model_sync={"prefixes": []})
    path = model_file(tmp_path, "model.safetensors", 100)
    assert run(capsys, "upload", path, "style_models/", "--config", config).code == 2
    assert run(capsys, "upload", path, "unet/", "--config", config).code == 0
    assert keys(s3) == ["unet/model.safetensors"]


def test_upload_refuses_to_overwrite_unless_asked(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = model_file(tmp_path, "vae.safetensors", 100)
    assert run(capsys, "upload", path, "vae/").code == 0
    path.write_bytes(b"new content")
    again = run(capsys, "upload", path, "vae/")
    assert again.code == 1
    assert again.errors == [
        f"comfyui-eks models: s3://{BUCKET}/vae/vae.safetensors already exists (100 B); "
        "fix: add --overwrite to replace it"
    ]
    assert run(capsys, "upload", path, "vae/", "--overwrite").code == 0
    assert s3.get_object(Bucket=BUCKET, Key="vae/vae.safetensors")["Body"].read() == b"new content"


@pytest.mark.parametrize("size", [1000, 9 * MiB], ids=["single-part", "multipart"])
def test_upload_detects_an_object_changed_before_the_check(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    original = models.Bucket.upload

    def upload_then_tamper(self: models.Bucket, path: Path, key: str, callback: Any) -> None:
        original(self, path, key, callback)
        # Someone replaces the object between the upload and the check.
        self.client.put_object(Bucket=self.name, Key=key, Body=b"tampered", ChecksumAlgorithm="SHA256")

    monkeypatch.setattr(models.Bucket, "upload", upload_then_tamper)
    path = model_file(tmp_path, "model.safetensors", size)
    result = run(capsys, "upload", path, "checkpoints/")
    assert result.code == 1 and result.out == ""
    (line,) = result.errors
    assert line.startswith(f"comfyui-eks models: checksum mismatch for s3://{BUCKET}/checkpoints/model.safetensors")
    assert f"bucket {sha256_b64(b'tampered')} (8 bytes, 1 part(s))" in line
    assert line.endswith("fix: upload again with --overwrite")


def test_upload_reports_an_object_without_sha256(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def upload_without_checksum(self: models.Bucket, path: Path, key: str, callback: Any) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=path.read_bytes())

    monkeypatch.setattr(models.Bucket, "upload", upload_without_checksum)
    result = run(capsys, "upload", model_file(tmp_path, "m.safetensors", 10), "vae/")
    assert result.code == 1 and "has no SHA-256 checksum" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["checkpoints/", "--key", "checkpoints/x"], "give FOLDER/ or --key, not both"),
        ([], "give the destination"),
        (["--key", "checkpoints/"], "is not a file key"),
        (["--key", "checkpoints/../x"], "is not a file key"),
        (["--key", "model.safetensors"], "is not in a folder"),
    ],
)
def test_upload_bad_destinations_exit_2(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    result = run(capsys, "upload", model_file(tmp_path, "m.safetensors", 10), *args)
    assert result.code == 2 and message in result.err and keys(s3) == []


def test_upload_missing_file_and_missing_bucket(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = run(capsys, "upload", tmp_path / "nope.safetensors", "vae/")
    assert missing.code == 2 and "nope.safetensors: no such file" in missing.err
    no_bucket = run(capsys, "upload", model_file(tmp_path, "m.safetensors", 10), "vae/", "--bucket", "no-such-bucket-x")
    assert no_bucket.code == 1
    assert no_bucket.errors == [
        "comfyui-eks models: bucket no-such-bucket-x does not exist; fix: deploy the platform stack, or pass --bucket"
    ]


# --------------------------------------------------------------------------------------------
# ls


def test_ls_lists_keys_with_human_sizes_and_a_total(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    put(s3, "checkpoints/a.safetensors", size=3 * MiB)
    put(s3, "loras/b.safetensors", size=1536)
    put(s3, "README.txt", size=5)
    result = run(capsys, "ls")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [line.split()[-1] for line in lines[:3]] == ["folder)", "checkpoints/a.safetensors", "loras/b.safetensors"]
    assert lines[0].startswith("     5 B  ") and lines[0].endswith("README.txt  (not a model folder)")
    assert lines[1].startswith("3.00 MiB  ") and lines[2].startswith("1.50 KiB  ")
    assert lines[3] == f"3 objects, 3.00 MiB in s3://{BUCKET}/"
    only = run(capsys, "ls", "checkpoints")
    assert only.out.splitlines()[-1] == f"1 object, 3.00 MiB in s3://{BUCKET}/checkpoints/"


def test_ls_json(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    put(s3, "vae/ae.safetensors", "vae/other.safetensors", size=100)
    document = run(capsys, "ls", "vae/", "--format", "json").json()
    assert (document["bucket"], document["prefix"], document["count"], document["total_bytes"]) == (
        BUCKET,
        "vae/",
        2,
        200,
    )
    assert [o["key"] for o in document["objects"]] == ["vae/ae.safetensors", "vae/other.safetensors"]
    assert set(document["objects"][0]) == {"key", "size", "last_modified", "model_folder"}


# --------------------------------------------------------------------------------------------
# rm


def test_rm_with_yes(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    put(s3, "loras/a.safetensors", "loras/b.safetensors", "loras/keep.safetensors")
    result = run(capsys, "rm", "loras/a.safetensors", "loras/b.safetensors", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"deleted s3://{BUCKET}/loras/a.safetensors",
        f"deleted s3://{BUCKET}/loras/b.safetensors",
    ]
    assert keys(s3) == ["loras/keep.safetensors"]


def test_rm_asks_on_a_terminal(s3: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3, "vae/ae.safetensors", size=2048)
    answers = iter(["n", "y"])
    monkeypatch.setattr(models, "STDIN_IS_TTY", lambda: True)
    monkeypatch.setattr(models, "ASK", lambda prompt: next(answers))
    declined = run(capsys, "rm", "vae/ae.safetensors")
    assert declined.code == 1 and f"delete 1 object (2.00 KiB) from s3://{BUCKET}? [y/N]" in declined.err
    assert keys(s3) == ["vae/ae.safetensors"]
    assert run(capsys, "rm", "vae/ae.safetensors").code == 0 and keys(s3) == []


def test_rm_without_a_terminal_needs_yes(
    s3: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    put(s3, "vae/ae.safetensors")
    monkeypatch.setattr(models, "STDIN_IS_TTY", lambda: False)
    result = run(capsys, "rm", "vae/ae.safetensors")
    assert result.code == 2 and "fix: add --yes" in result.err and keys(s3) == ["vae/ae.safetensors"]


def test_rm_refuses_keys_outside_model_folders_and_missing_keys(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    put(s3, "notes/readme.txt", "vae/ae.safetensors")
    outside = run(capsys, "rm", "notes/readme.txt", "--yes")
    assert outside.code == 2 and "notes/ is not a folder ComfyUI reads" in outside.err
    assert run(capsys, "rm", "notes/readme.txt", "--yes", "--force").code == 0
    missing = run(capsys, "rm", "vae/ae.safetensors", "vae/gone.safetensors", "--yes")
    assert missing.code == 1
    assert missing.errors == [
        f"comfyui-eks models: s3://{BUCKET}/vae/gone.safetensors: no such object (nothing was deleted)"
    ]
    assert keys(s3) == ["vae/ae.safetensors"]


# --------------------------------------------------------------------------------------------
# verify


def test_verify_lists_every_missing_model_with_where_it_goes(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "verify", WORKFLOWS / "flux-dev.json", WORKFLOWS / "sdxl.json")
    assert result.code == 1
    assert result.out.splitlines()[0] == f"{WORKFLOWS / 'flux-dev.json'}: 0 of 4 models present in s3://{BUCKET}"
    errors = result.errors
    assert len(errors) == 5  # four for flux-dev, one for sdxl: one line per missing model
    flux = WORKFLOWS / "flux-dev.json"
    assert (
        f"comfyui-eks models: {flux}: missing diffusion_models/flux1-dev.safetensors (needed by node 12: UNETLoader); "
        "fix: comfyui-eks models upload flux1-dev.safetensors diffusion_models/ (ComfyUI also finds it under unet/)"
    ) in errors
    assert any("missing text_encoders/t5xxl_fp16.safetensors" in e and "also finds it under clip/" in e for e in errors)
    assert any(e.endswith("models upload sd_xl_base_1.0.safetensors checkpoints/") for e in errors)


def test_verify_passes_when_present_including_the_alternative_folders(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, "unet/flux1-dev.safetensors", "clip/clip_l.safetensors", "text_encoders/t5xxl_fp16.safetensors")
    put(s3, "vae/ae.safetensors", "checkpoints/sd_xl_base_1.0.safetensors")
    result = run(capsys, "verify", WORKFLOWS / "flux-dev.json", WORKFLOWS / "sdxl.json")
    assert result.code == 0, result.err
    assert f"{WORKFLOWS / 'flux-dev.json'}: 4 of 4 models present" in result.out
    assert "  ok       unet/flux1-dev.safetensors  (node 12: UNETLoader)" in result.out


def test_verify_json(s3: Any, capsys: pytest.CaptureFixture[str]) -> None:
    put(s3, "checkpoints/sd3.5_large.safetensors")
    result = run(capsys, "verify", WORKFLOWS / "sd35.json", "--format", "json")
    assert result.code == 1
    document = result.json()
    (workflow,) = document["workflows"]
    present = {m["key"]: m["present"] for m in workflow["models"]}
    assert present == {
        "checkpoints/sd3.5_large.safetensors": True,
        "text_encoders/clip_g.safetensors": False,
        "text_encoders/clip_l.safetensors": False,
        "text_encoders/t5xxl_fp16.safetensors": False,
    }
    assert document["missing"] == 3 and len(result.errors) == 3


def test_verify_flags_a_present_model_that_never_syncs(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefixes = ["checkpoints/", "text_encoders/", "vae/", "diffusion_models/"]  # no unet/
    config = config_file(tmp_path, model_sync={"prefixes": prefixes})
    put(s3, "unet/flux1-dev.safetensors", "text_encoders/clip_l.safetensors", "text_encoders/t5xxl_fp16.safetensors")
    put(s3, "vae/ae.safetensors")
    result = run(capsys, "verify", WORKFLOWS / "flux-dev.json", "--config", config)
    assert result.code == 1
    (line,) = result.errors
    assert (
        "unet/flux1-dev.safetensors (needed by node 12: UNETLoader) is in the bucket, but model_sync.prefixes" in line
    )


def test_verify_refuses_a_workflow_that_is_not_api_format(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    result = run(capsys, "verify", ui)
    assert result.code == 2 and "UI format" in result.err
