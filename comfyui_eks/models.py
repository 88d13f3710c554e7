"""`comfyui-eks models`: the models bucket in ComfyUI's folder layout.

    comfyui-eks models upload LOCAL_FILE FOLDER/ | --key KEY [--overwrite] [--force]
    comfyui-eks models ls [FOLDER/] [--format text|json]
    comfyui-eks models rm KEY... [--yes] [--force]
    comfyui-eks models verify WORKFLOW.json... [--format text|json]

The bucket is the configuration's models bucket (or --bucket). Only top-level folders ComfyUI
reads are model folders: `model_sync.prefixes`, or when that is [] (the whole bucket syncs) the
folders docker/extra_model_paths.yaml maps (comfyui_eks.workflows.BUCKET_FOLDERS). A file
elsewhere would sync to every GPU node and never be seen, so upload and rm refuse other keys
unless --force.

Uploads are multipart above MULTIPART_THRESHOLD, with SHA-256 checksums that S3 verifies per
part; afterwards the local file is hashed the same way (whole, or per part and then the part
digests: S3's composite checksum) and compared with the object's checksum, which catches an
object that changed between the upload and the check.

Exit codes: 0 ok, 1 failed (missing models, an existing key without --overwrite, a checksum
mismatch, S3 errors), 2 bad arguments, configuration or workflow.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Self

from comfyui_eks.cli import CommandFailed, UsageError
from comfyui_eks.workflows import BUCKET_FOLDERS, ModelRef, WorkflowError, load_workflow, required_models

Json = dict[str, Any]
MiB = 1024 * 1024
# Multipart above this size, in parts of PART_SIZE (s3transfer grows parts to stay <= 10,000).
# Tests lower both (S3 and moto accept parts down to 5 MiB).
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 64 * MiB
READ_SIZE = 1 * MiB
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


# Interaction, replaced by tests: whether stdin is a terminal, and how to ask.
STDIN_IS_TTY: Callable[[], bool] = _stdin_is_tty
ASK: Callable[[str], str] = input


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=os.environ.get("COMFYUI_EKS_CONFIG"),
        metavar="FILE",
        help="configuration (config/default.yaml)",
    )
    common.add_argument("--bucket", help="models bucket (default: the configuration's)")
    common.add_argument("--region", help="the bucket's region (default: the configuration's)")
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="upload, list, remove and check models in the models bucket",
        description="Manage the models bucket in ComfyUI's folder layout (checkpoints/, loras/, vae/, ...).",
        epilog="Exit codes: 0 ok, 1 failed (missing models, existing key, checksum mismatch, S3), 2 bad arguments.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    upload = actions.add_parser("upload", parents=[common], help="upload a model file into a model folder")
    upload.add_argument("file", type=Path, metavar="LOCAL_FILE")
    upload.add_argument("folder", nargs="?", metavar="FOLDER/", help="model folder, e.g. checkpoints/ or loras/style/")
    upload.add_argument("--key", help="the full object key instead of FOLDER/ (e.g. checkpoints/sdxl.safetensors)")
    upload.add_argument("--overwrite", action="store_true", help="replace an existing object")
    upload.add_argument("--force", action="store_true", help="allow a folder ComfyUI does not read")
    upload.set_defaults(func=run_upload)
    listing = actions.add_parser("ls", parents=[common], help="list models with sizes and totals")
    listing.add_argument("folder", nargs="?", metavar="FOLDER/")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(func=run_ls)
    remove = actions.add_parser("rm", parents=[common], help="remove models (asks first on a terminal)")
    remove.add_argument("keys", nargs="+", metavar="KEY")
    remove.add_argument("--yes", action="store_true", help="do not ask")
    remove.add_argument("--force", action="store_true", help="allow keys outside the model folders")
    remove.set_defaults(func=run_rm)
    verify = actions.add_parser("verify", parents=[common], help="check the bucket holds every model workflows need")
    verify.add_argument("workflows", nargs="+", type=Path, metavar="WORKFLOW.json")
    verify.add_argument("--format", choices=("text", "json"), default="text")
    verify.set_defaults(func=run_verify)
    return parser


# --------------------------------------------------------------------------------------------
# Folders and keys


def model_folders(prefixes: Sequence[str]) -> tuple[str, ...]:
    """The top-level folders that hold models: model_sync.prefixes, or ComfyUI's mapped folders
    when prefixes is [] (the whole bucket syncs, but ComfyUI still reads only those)."""
    if prefixes:
        return tuple(p.rstrip("/") for p in prefixes)
    return BUCKET_FOLDERS


def key_problem(key: str) -> str | None:
    """Why `key` is not a usable object key for a model file (None when it is)."""
    parts = key.split("/")
    if key.startswith("/") or key.endswith("/") or "" in parts or any(p in (".", "..") for p in parts):
        return f"{key!r} is not a file key; fix: use FOLDER/NAME such as checkpoints/model.safetensors"
    if len(parts) < 2:
        return f"{key!r} is not in a folder; fix: put it in a model folder such as checkpoints/{key}"
    return None


def folder_problem(key: str, folders: Sequence[str]) -> str | None:
    folder = key.split("/", 1)[0]
    if folder in folders:
        return None
    alternatives = ", ".join(f"{f}/" for f in folders)
    return (
        f"{folder}/ is not a folder ComfyUI reads from the models bucket ({alternatives}); "
        "fix: use one of them, or --force"
    )


def upload_key(file: Path, folder: str | None, key: str | None) -> str:
    """The object key: --key, or FOLDER/ plus the file's name."""
    if key and folder:
        raise UsageError("give FOLDER/ or --key, not both")
    if key:
        return key
    if not folder:
        raise UsageError("give the destination: a model folder such as checkpoints/, or --key FOLDER/NAME")
    return f"{folder.strip('/')}/{file.name}"


# --------------------------------------------------------------------------------------------
# The bucket


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: str


@dataclass(frozen=True)
class RemoteChecksum:
    sha256: str | None  # base64, without S3's "-N" part-count suffix
    parts: int
    size: int


class Bucket:
    """The few S3 calls the command makes, in one place (tests patch them to tamper)."""

    def __init__(self, client: Any, name: str):
        self.client = client
        self.name = name

    def head(self, key: str) -> Json | None:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        try:
            return dict(self.client.head_object(Bucket=self.name, Key=key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def upload(self, path: Path, key: str, callback: Callable[[int], None]) -> None:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE)
        self.client.upload_file(
            str(path), self.name, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config, Callback=callback
        )

    def checksum(self, key: str) -> RemoteChecksum:
        head = self.client.head_object(Bucket=self.name, Key=key, ChecksumMode="ENABLED")
        etag = str(head.get("ETag", "")).strip('"')
        parts = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
        sha256 = head.get("ChecksumSHA256")
        return RemoteChecksum(sha256.split("-", 1)[0] if sha256 else None, parts, int(head["ContentLength"]))

    def objects(self, prefix: str) -> list[ObjectInfo]:
        objects = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            for item in page.get("Contents", []):
                modified = item["LastModified"].strftime("%Y-%m-%d %H:%M")
                objects.append(ObjectInfo(item["Key"], int(item["Size"]), modified))
        return objects

    def delete(self, keys: Sequence[str]) -> list[str]:
        """Delete `keys`; the problems S3 reports, one line per key."""
        problems = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            answer = self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
            problems += [
                f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".strip() for e in answer.get("Errors", [])
            ]
        return problems


@dataclass(frozen=True)
class Target:
    bucket: Bucket
    folders: tuple[str, ...]
    synced: tuple[str, ...]  # model_sync.prefixes without "/" ([] = everything syncs)


def target(args: argparse.Namespace) -> Target:
    """The bucket and folder rules from --bucket/--region and the configuration."""
    from core.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(*exc.errors) from None
    import boto3  # type: ignore[import-untyped]

    client = boto3.client("s3", region_name=args.region or config.region)
    prefixes = tuple(config.model_sync.prefixes)
    return Target(
        Bucket(client, args.bucket or config.models_bucket),
        model_folders(prefixes),
        tuple(p.rstrip("/") for p in prefixes),
    )


@contextmanager
def aws_errors(bucket: str) -> Iterator[None]:
    """S3 and credential errors as one CommandFailed line naming the fix."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise CommandFailed("no AWS credentials; fix: configure them (aws configure, AWS_PROFILE or a role)") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        if code in ("NoSuchBucket", "404"):
            raise CommandFailed(
                f"bucket {bucket} does not exist; fix: deploy the platform stack, or pass --bucket"
            ) from None
        if code in ("AccessDenied", "403"):
            raise CommandFailed(
                f"access to bucket {bucket} denied ({error.get('Message', '')}); "
                "fix: use an identity allowed to read and write it"
            ) from None
        raise CommandFailed(f"S3 error on bucket {bucket}: {code} {error.get('Message', '')}".strip()) from None
    except BotoCoreError as exc:
        raise CommandFailed(f"S3 error on bucket {bucket}: {' '.join(str(exc).split())[:200]}") from None


# --------------------------------------------------------------------------------------------
# Checksums


def part_layout(size: int) -> tuple[int, int]:
    """(parts, part size) of an upload of `size` bytes with this module's transfer settings."""
    if size < MULTIPART_THRESHOLD:
        return 1, size
    from s3transfer.utils import ChunksizeAdjuster  # type: ignore[import-untyped]

    part_size = int(ChunksizeAdjuster().adjust_chunksize(PART_SIZE, size))
    return math.ceil(size / part_size), part_size


def local_checksum(stream: BinaryIO, parts: int, part_size: int, advance: Callable[[int], None]) -> str:
    """Base64 SHA-256 as S3 reports it: of the whole file, or of the parts' digests (composite)."""
    if parts == 1:
        digest = hashlib.sha256()
        while chunk := stream.read(READ_SIZE):
            digest.update(chunk)
            advance(len(chunk))
        return base64.b64encode(digest.digest()).decode()
    part_digests = hashlib.sha256()
    for _ in range(parts):
        part = hashlib.sha256()
        remaining = part_size
        while remaining and (chunk := stream.read(min(READ_SIZE, remaining))):
            part.update(chunk)
            remaining -= len(chunk)
            advance(len(chunk))
        part_digests.update(part.digest())
    return base64.b64encode(part_digests.digest()).decode()


# --------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A rich transfer bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(file=sys.stderr, highlight=False)
        self._progress: Any = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
            from rich.progress import Progress as Bar

            self._progress = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A callback advancing a new bar by a number of bytes (thread-safe: rich locks)."""
        if self._progress is None:
            return lambda n: None
        task_id = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task_id, n)


def human(size: int) -> str:
    """Binary units with their IEC names, so 1 GiB is never mistaken for 1 GB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# upload


def run_upload(args: argparse.Namespace) -> int:
    key = upload_key(args.file, args.folder, args.key)
    problems = [p for p in (key_problem(key),) if p]
    if not args.file.is_file():
        problems.append(f"{args.file}: no such file")
    where = target(args)
    folder_issue = None if problems else folder_problem(key, where.folders)
    if folder_issue and not args.force:
        problems.append(folder_issue)
    if problems:
        raise UsageError(*problems)
    bucket = where.bucket
    url = f"s3://{bucket.name}/{key}"
    with aws_errors(bucket.name):
        existing = bucket.head(key)
        if existing is not None and not args.overwrite:
            raise CommandFailed(
                f"{url} already exists ({human(int(existing['ContentLength']))}); fix: add --overwrite to replace it"
            )
        size = args.file.stat().st_size
        with Progress() as progress:
            bucket.upload(args.file, key, progress.task(f"uploading {args.file.name}", size))
            remote = bucket.checksum(key)
            parts, part_size = part_layout(size)
            with args.file.open("rb") as stream:
                local = local_checksum(stream, parts, part_size, progress.task("verifying", size))
    _check_match(url, local, remote, size, parts)
    notes = [f"note: {folder_issue} (uploaded anyway: --force)"] if folder_issue else []
    if where.synced and key.split("/", 1)[0] not in where.synced:
        notes.append("note: model_sync.prefixes leaves this folder out: GPU nodes will not get it")
    notes.append("note: GPU nodes get it at their next model sync (within about a minute)")
    for note in notes:
        print(note, file=sys.stderr)
    layout = f"{remote.parts} parts" if remote.parts > 1 else "1 part"
    print(f"uploaded {url} ({human(size)}, {layout}); SHA-256 verified: {local}")
    return 0


def _check_match(url: str, local: str, remote: RemoteChecksum, size: int, parts: int) -> None:
    """CommandFailed unless the object's checksum and size are the local file's."""
    problems = []
    if remote.sha256 is None:
        problems.append(
            f"{url} has no SHA-256 checksum, so the upload cannot be verified; fix: upload again with --overwrite"
        )
    elif remote.sha256 != local or remote.size != size:
        problems.append(
            f"checksum mismatch for {url}: local SHA-256 {local} ({size} bytes, {parts} part(s)), bucket "
            f"{remote.sha256} ({remote.size} bytes, {remote.parts} part(s)); the object (or the local file) changed "
            "during or after the upload; fix: upload again with --overwrite"
        )
    if problems:
        raise CommandFailed(*problems)


# --------------------------------------------------------------------------------------------
# ls


def run_ls(args: argparse.Namespace) -> int:
    prefix = f"{args.folder.strip('/')}/" if args.folder else ""
    where = target(args)
    bucket = where.bucket
    with aws_errors(bucket.name):
        objects = bucket.objects(prefix)
    total = sum(o.size for o in objects)
    if args.format == "json":
        document = {
            "bucket": bucket.name,
            "prefix": prefix,
            "objects": [
                {
                    "key": o.key,
                    "size": o.size,
                    "last_modified": o.last_modified,
                    "model_folder": o.key.split("/", 1)[0] in where.folders,
                }
                for o in objects
            ],
            "count": len(objects),
            "total_bytes": total,
        }
        print(json.dumps(document, indent=2))
        return 0
    width = max((len(human(o.size)) for o in objects), default=0)
    for o in objects:
        outside = "" if o.key.split("/", 1)[0] in where.folders else "  (not a model folder)"
        print(f"{human(o.size):>{width}}  {o.last_modified}  {o.key}{outside}")
    noun = "object" if len(objects) == 1 else "objects"
    print(f"{len(objects)} {noun}, {human(total)} in s3://{bucket.name}/{prefix}")
    return 0


# --------------------------------------------------------------------------------------------
# rm


def run_rm(args: argparse.Namespace) -> int:
    keys = list(dict.fromkeys(args.keys))
    where = target(args)
    problems = [p for key in keys for p in (key_problem(key),) if p]
    if not args.force:
        problems += [p for key in keys if not key_problem(key) for p in (folder_problem(key, where.folders),) if p]
    if problems:
        raise UsageError(*problems)
    bucket = where.bucket
    with aws_errors(bucket.name):
        heads = {key: bucket.head(key) for key in keys}
        missing = [
            f"s3://{bucket.name}/{key}: no such object (nothing was deleted)"
            for key, head in heads.items()
            if head is None
        ]
        if missing:
            raise CommandFailed(*missing)
        size = sum(int(head["ContentLength"]) for head in heads.values() if head)
        _confirm(
            args.yes,
            f"delete {len(keys)} object{'s' if len(keys) != 1 else ''} ({human(size)}) from s3://{bucket.name}?",
        )
        failed = bucket.delete(keys)
    if failed:
        raise CommandFailed(*(f"not deleted: {line}" for line in failed))
    for key in keys:
        print(f"deleted s3://{bucket.name}/{key}")
    print("GPU nodes drop deleted models at their next sync", file=sys.stderr)
    return 0


def _confirm(yes: bool, question: str) -> None:
    """Ask on a terminal; refuse without --yes elsewhere (a script must say so)."""
    if yes:
        return
    if not STDIN_IS_TTY():
        raise UsageError("refusing to delete without confirmation (stdin is not a terminal); fix: add --yes")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = ASK("").strip().lower()
    if answer not in ("y", "yes"):
        raise CommandFailed("nothing deleted")


# --------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True)
class Check:
    """One model a workflow needs, and what the bucket says about it."""

    workflow: str
    ref: ModelRef
    loaders: str  # "node 4: CheckpointLoaderSimple"
    found: str | None  # the key that holds it
    problem: str | None  # why the workflow would not find it (None: present)

    def to_json(self) -> Json:
        return {
            "folder": self.ref.folder,
            "filename": self.ref.filename,
            "key": self.ref.key,
            "candidate_keys": list(self.ref.candidate_keys),
            "nodes": list(self.ref.nodes),
            "present": self.problem is None,
            "found_key": self.found,
            "problem": self.problem,
        }


def run_verify(args: argparse.Namespace) -> int:
    workflows = []
    problems = []
    for path in args.workflows:
        try:
            workflows.append((path, load_workflow(path)))
        except WorkflowError as exc:
            problems += exc.lines
    if problems:
        raise UsageError(*problems)
    where = target(args)
    needed = [(str(path), workflow, ref) for path, workflow in workflows for ref in required_models(workflow)]
    folders = sorted(
        {key.split("/", 1)[0] for _, _, ref in needed if ref.in_bucket_layout for key in ref.candidate_keys}
    )
    with aws_errors(where.bucket.name):
        keys = {o.key for folder in folders for o in where.bucket.objects(f"{folder}/")}
    checks = [check_model(path, workflow, ref, keys, where.synced) for path, workflow, ref in needed]
    missing = [c for c in checks if c.problem]
    if args.format == "json":
        document = {
            "bucket": where.bucket.name,
            "workflows": [
                {"path": str(path), "models": [c.to_json() for c in checks if c.workflow == str(path)]}
                for path, _ in workflows
            ],
            "missing": len(missing),
        }
        print(json.dumps(document, indent=2))
    else:
        for path, _ in workflows:
            mine = [c for c in checks if c.workflow == str(path)]
            present = sum(1 for c in mine if not c.problem)
            print(
                f"{path}: {present} of {len(mine)} model{'s' if len(mine) != 1 else ''} present in s3://{where.bucket.name}"
            )
            for c in mine:
                print(f"  {'ok' if not c.problem else 'MISSING':<7}  {c.found or c.ref.key}  ({c.loaders})")
    if missing:
        raise CommandFailed(*(f"{c.workflow}: {c.problem}" for c in missing))
    return 0


def check_model(workflow_path: str, workflow: Json, ref: ModelRef, keys: set[str], synced: Sequence[str]) -> Check:
    """Whether ComfyUI on a GPU node would find `ref`: in a folder it reads, in the bucket, synced."""
    loaders = ", ".join(f"node {n}: {workflow.get(n, {}).get('class_type', '?')}" for n in ref.nodes)
    if not ref.in_bucket_layout:
        problem = (
            f"{ref.key} (needed by {loaders}): ComfyUI on EKS reads no {ref.folder}/ folder from the models bucket; "
            f"fix: map it in docker/extra_model_paths.yaml and add {ref.folder}/ to model_sync.prefixes"
        )
        return Check(workflow_path, ref, loaders, None, problem)
    found = next((key for key in ref.candidate_keys if key in keys), None)
    if found is None:
        also = ", ".join(f"{key.split('/', 1)[0]}/" for key in ref.candidate_keys[1:])
        problem = (
            f"missing {ref.key} (needed by {loaders}); fix: comfyui-eks models upload "
            f"{PurePosixPath(ref.key).name} {PurePosixPath(ref.key).parent}/"
            + (f" (ComfyUI also finds it under {also})" if also else "")
        )
        return Check(workflow_path, ref, loaders, None, problem)
    folder = found.split("/", 1)[0]
    if synced and folder not in synced:
        problem = (
            f"{found} (needed by {loaders}) is in the bucket, but model_sync.prefixes leaves {folder}/ out, so GPU "
            f"nodes never get it; fix: add {folder}/ to model_sync.prefixes"
        )
        return Check(workflow_path, ref, loaders, found, problem)
    return Check(workflow_path, ref, loaders, found, None)
