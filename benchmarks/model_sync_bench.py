#!/usr/bin/env python3
"""Benchmark: how a burst of model uploads reaches the GPU nodes.

    python benchmarks/model_sync_bench.py --uploads 50 --nodes 4

Starts its own moto server on 127.0.0.1 (a free port) and compares, for one burst of K
uploads to the models bucket and N GPU nodes that had converged before the burst:

- batched (what the stack does): S3 -> SQS -> ONE Lambda invocation per batching window
  (the real handler, `lambda_src/model_sync/handler.py`) -> ONE SSM command, targeted by tag
  -> each node touches its request flag and runs the REAL sync script
  (`modules/scripts/model-cache-sync.sh`), which converges the whole cache once;
- per-object: one SSM command per S3 object event, sent to every node, and each node
  copies that one object (`aws s3 cp`).

Bytes per node are measured, not assumed: a file counts as transferred when it is new or
was rewritten (another inode or mtime) after the strategy ran. Prints a markdown table.
Needs moto[server] and awscli installed (the project's dev environment). `--aws /usr/bin/aws`
runs the nodes' side with AWS CLI v2, the GPU nodes' CLI (the endpoint is passed with
--endpoint-url, which every CLI version takes; the classic transfer client: see
tests/test_gpu_node_scripts.py for why not CRT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The SSM document comes from the construct module, which loads the jsii runtime (as main.py does).
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from core import names, rules  # noqa: E402
from lambda_src.model_sync import handler  # noqa: E402
from modules.model_sync import ssm_document_content  # noqa: E402
from tests.helpers import lambda_event_from_sqs, start_moto_server  # noqa: E402

SCRIPT = REPO / "modules" / "scripts" / "model-cache-sync.sh"
REGION = "us-west-2"
PREFIXES = ("checkpoints/", "loras/")


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        sys.exit(f"{name} not found (install the dev dependencies: moto[server], awscli)")
    return found


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    try:
        return start_moto_server()
    except RuntimeError as exc:
        sys.exit(str(exc))


@dataclass
class Node:
    instance_id: str
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def calls_log(self) -> Path:
        return self.root / "aws-calls.log"

    def aws_calls(self) -> int:
        return len(self.calls_log.read_text().splitlines()) if self.calls_log.exists() else 0

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        if self.models.exists():
            for p in self.models.rglob("*"):
                if p.is_file():
                    st = p.stat()
                    out[p.relative_to(self.models).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out


def transferred(before: dict, after: dict) -> tuple[int, int]:
    """(files, bytes) written between two snapshots."""
    files = [k for k, v in after.items() if before.get(k) is None or before[k][:2] != v[:2]]
    return len(files), sum(after[k][2] for k in files)


class Bench:
    def __init__(self, endpoint: str, workdir: Path, nodes: int, aws: str):
        import boto3

        self.endpoint = endpoint
        self.workdir = workdir
        suffix = uuid.uuid4().hex[:8]
        self.cluster = f"bench-{suffix}"
        self.bucket = f"bench-models-{suffix}"
        self.document = f"{self.cluster}-model-sync"
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.ec2 = session.client("ec2", endpoint_url=endpoint)
        self.ssm = session.client("ssm", endpoint_url=endpoint)
        # An `aws` shim first on PATH counts the CLI processes each node starts.
        shim_dir = workdir / "bin"
        shim_dir.mkdir()
        shim = shim_dir / "aws"
        shim.write_text(f'#!/bin/sh\necho x >> "$AWS_CALL_LOG"\nexec {aws} --endpoint-url "$AWS_ENDPOINT_URL" "$@"\n')
        shim.chmod(0o755)
        self.cli_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.cli_env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint,
            AWS_CONFIG_FILE=str(workdir / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(workdir / "aws-creds"),
            PATH=f"{shim_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        # The Lambda runs in this process, against the moto server.
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint,
            **{
                names.ENV_CLUSTER_NAME: self.cluster,
                names.ENV_MODELS_BUCKET: self.bucket,
                names.ENV_SSM_DOCUMENT: self.document,
                names.ENV_MODEL_PREFIXES: ",".join(PREFIXES),
                names.ENV_NODE_CLUSTER_TAG_KEY: names.NODE_CLUSTER_TAG_KEY,
                names.ENV_NODE_ROLE_TAG_KEY: names.NODE_ROLE_TAG_KEY,
                names.ENV_NODE_ROLE_VALUE: names.NODE_ROLE_GPU,
            },
        )
        handler.reset_clients()

        self.queue_url = self.sqs.create_queue(QueueName=f"{self.cluster}-events")["QueueUrl"]
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.s3.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": self.queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
                ]
            },
        )
        # The document the platform stack deploys (its effect on a node is acted out here).
        self.ssm.create_document(
            Name=self.document, DocumentType="Command", DocumentFormat="JSON", Content=ssm_document_content()
        )
        tags = [
            {"Key": names.NODE_CLUSTER_TAG_KEY, "Value": self.cluster},
            {"Key": names.NODE_ROLE_TAG_KEY, "Value": names.NODE_ROLE_GPU},
        ]
        out = self.ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=nodes,
            MaxCount=nodes,
            InstanceType="g6e.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        self.instance_ids = sorted(i["InstanceId"] for i in out["Instances"])

    def drain_queue(self) -> list[dict]:
        messages = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            messages.extend(batch)
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )
        return messages

    def lambda_event(self, messages: list[dict]) -> dict:
        return lambda_event_from_sqs(messages, self.queue_arn, region=REGION)

    def node_env(self, node: Node) -> dict[str, str]:
        return {
            **self.cli_env,
            "AWS_CALL_LOG": str(node.calls_log),
            "MODELS_BUCKET": self.bucket,
            "MODELS_PATH": str(node.models),
            "CACHE_MARKER_PATH": str(node.root / ".models-cache-complete"),
            "CACHE_SKIPPED_PATH": str(node.root / ".models-cache-skipped"),
            "SYNC_REQUEST_FLAG": str(node.root / "requested"),
            "MODEL_PREFIXES": " ".join(PREFIXES),
            "MODEL_PREFIX_PATTERN": rules.MODEL_PREFIX_ERE,
        }

    def run_sync(self, node: Node, *, flag: bool) -> None:
        if flag:
            (node.root / "requested").touch()
        subprocess.run(
            ["bash", str(SCRIPT)],
            env=self.node_env(node),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def copy_object(self, node: Node, key: str) -> None:
        dest = node.models / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["aws", "s3", "cp", f"s3://{self.bucket}/{key}", str(dest), "--only-show-errors"],
            env={**self.cli_env, "AWS_CALL_LOG": str(node.calls_log)},
            check=True,
        )

    def nodes(self, label: str) -> list[Node]:
        out = []
        for instance in self.instance_ids:
            root = self.workdir / label / instance
            root.mkdir(parents=True)
            out.append(Node(instance, root))
        return out


def upload(bench: Bench, keys: list[str], size: int, tag: str) -> None:
    for i, key in enumerate(keys):
        seed = f"{tag}|{i}|{key}|".encode()
        bench.s3.put_object(Bucket=bench.bucket, Key=key, Body=(seed * (size // len(seed) + 1))[:size])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=50, help="K: objects uploaded in the burst")
    parser.add_argument("--nodes", type=int, default=4, help="N: GPU nodes")
    parser.add_argument("--size-kib", type=int, default=256, help="size of each uploaded object (KiB)")
    parser.add_argument("--existing", type=int, default=10, help="models already cached before the burst")
    parser.add_argument(
        "--aws", default=None, help="the aws CLI the nodes run (default: the venv's, v1; /usr/bin/aws for v2)"
    )
    parser.add_argument(
        "--rewrites",
        type=int,
        default=0,
        help="of the K uploads, how many overwrite a key uploaded earlier in the burst",
    )
    args = parser.parse_args(argv)
    if not SCRIPT.exists():
        sys.exit(f"{SCRIPT} is missing")
    k, n, size = args.uploads, args.nodes, args.size_kib * 1024
    rewrites = min(args.rewrites, max(k - 1, 0))

    proc, endpoint = start_moto()
    workdir = Path(tempfile.mkdtemp(prefix="model-sync-bench-"))
    try:
        bench = Bench(endpoint, workdir, n, args.aws or tool("aws"))
        existing = [f"{PREFIXES[i % 2]}existing-{i:03d}.safetensors" for i in range(args.existing)]
        upload(bench, existing, size, "old")
        distinct = k - rewrites
        burst = [f"{PREFIXES[i % 2]}burst-{i:03d}.safetensors" for i in range(distinct)]
        burst += [burst[i % distinct] for i in range(rewrites)]

        # Both fleets start converged on the pre-burst bucket (real script, not measured).
        batched_nodes, per_object_nodes = bench.nodes("batched"), bench.nodes("per-object")
        with ThreadPoolExecutor(max_workers=2 * n) as pool:
            list(pool.map(lambda nd: bench.run_sync(nd, flag=False), batched_nodes + per_object_nodes))
        bench.drain_queue()
        base_commands = len(bench.ssm.list_commands()["Commands"])

        upload(bench, burst, size, "new")
        messages = bench.drain_queue()

        # --- batched: one invocation for the batching window, one converge per node ---
        before = {nd.instance_id: nd.snapshot() for nd in batched_nodes}
        calls_before = {nd.instance_id: nd.aws_calls() for nd in batched_nodes + per_object_nodes}
        t0 = time.monotonic()
        summary = handler.handler(bench.lambda_event(messages), None)
        targets = []
        if summary["command_id"]:
            targets = bench.ssm.list_commands(CommandId=summary["command_id"])["Commands"][0]["InstanceIds"]
        by_id = {nd.instance_id: nd for nd in batched_nodes}
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(lambda i: bench.run_sync(by_id[i], flag=True), targets))
        batched_time = time.monotonic() - t0
        batched_commands = len(bench.ssm.list_commands()["Commands"]) - base_commands
        batched = [transferred(before[nd.instance_id], nd.snapshot()) for nd in batched_nodes]
        batched_calls = [nd.aws_calls() - calls_before[nd.instance_id] for nd in batched_nodes]

        # --- per-object: one command per object event, every node copies that object ---
        # (measured per copy: a key uploaded twice in the burst is copied twice)
        per_object = {nd.instance_id: (0, 0) for nd in per_object_nodes}

        def copy_measured(nd: Node, key: str) -> None:
            snap = nd.snapshot()
            bench.copy_object(nd, key)
            files, size_ = transferred(snap, nd.snapshot())
            old_files, old_size = per_object[nd.instance_id]
            per_object[nd.instance_id] = (old_files + files, old_size + size_)

        records = [r for m in messages for r in json.loads(m["Body"]).get("Records", [])]
        t0 = time.monotonic()
        per_object_commands = 0
        for record in records:
            key = handler.logic.decode_key(record["s3"]["object"]["key"])
            bench.ssm.send_command(  # what a per-object design would send (the key as a parameter)
                DocumentName=bench.document,
                Comment=f"copy {key}"[:100],
                Targets=handler.logic.node_targets(handler.logic.Config.from_env(os.environ)),
            )
            per_object_commands += 1
            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(lambda nd, key=key: copy_measured(nd, key), per_object_nodes))
        per_object_time = time.monotonic() - t0
        per_object = list(per_object.values())
        per_object_calls = [nd.aws_calls() - calls_before[nd.instance_id] for nd in per_object_nodes]

        # Both fleets end identical to the bucket.
        for a, b in zip(batched_nodes, per_object_nodes, strict=True):
            files_a = {p.relative_to(a.models): p.read_bytes() for p in a.models.rglob("*") if p.is_file()}
            files_b = {p.relative_to(b.models): p.read_bytes() for p in b.models.rglob("*") if p.is_file()}
            assert files_a == files_b, "the strategies ended in different caches"

        def fmt_bytes(values: list[tuple[int, int]]) -> str:
            lo, hi = min(v[1] for v in values), max(v[1] for v in values)
            mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
            return mib(lo) if lo == hi else f"{mib(lo)}-{mib(hi)}"

        def span(values: list[int]) -> str:
            lo, hi = min(values), max(values)
            return str(lo) if lo == hi else f"{lo}-{hi}"

        def fmt_files(values: list[tuple[int, int]]) -> str:
            return span([v[0] for v in values])

        print(
            f"Burst of {k} uploads ({rewrites} rewrites of keys uploaded earlier in the burst), "
            f"{args.size_kib} KiB each, {args.existing} models already cached, {n} GPU nodes; "
            f"{len(messages)} S3 event messages in the batching window.\n"
        )
        print(
            "| strategy | SSM commands | command invocations (commands x nodes) | node runs per node "
            "| aws CLI processes per node | files written per node | bytes transferred per node | wall time |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        print(
            f"| batched (one command per batching window, one converge per node) | {batched_commands} "
            f"| {batched_commands * len(targets)} | 1 | {span(batched_calls)} | {fmt_files(batched)} "
            f"| {fmt_bytes(batched)} | {batched_time:.1f} s |"
        )
        print(
            f"| per-object (one command per object, every node copies it) | {per_object_commands} "
            f"| {per_object_commands * n} | {per_object_commands} | {span(per_object_calls)} "
            f"| {fmt_files(per_object)} | {fmt_bytes(per_object)} | {per_object_time:.1f} s |"
        )
        print(f"\nLambda summary (batched): {json.dumps(summary)}")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
