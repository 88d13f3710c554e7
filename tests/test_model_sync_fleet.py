"""A simulated fleet: the model-sync Lambda decides, the REAL node sync script converges.

Everything talks to one moto server (the `moto_server` fixture): the models bucket with its
S3 -> SQS notification, the SQS queue, the EC2 instances that stand for GPU nodes (tagged
like Karpenter tags them) and SSM. Each node is a temporary directory.

- An S3 operation produces S3 event notifications in the queue (moto delivers them).
- "The batching window closes": the test receives every queued message, builds the Lambda
  SQS event from them and calls the handler (in-process, its boto3 clients pointed at the
  moto server). The handler decides whether to send a command; moto resolves the command's
  tag targets into instance ids, exactly the nodes this cluster has at that moment.
- The command's effect on a targeted node is what the SSM document does there: touch the
  node's request flag, and start the sync service unless it is already running (then the
  running sync sees the flag and converges again). The service is the real
  `modules/scripts/model-cache-sync.sh`, run with bash and the node's CLI, AWS CLI v2 (see
  tests/test_gpu_node_scripts.py: classic transfer client; skipped locally without v2,
  required under CI=true).

Converged = the node's models directory holds exactly the bucket's objects under the model
prefixes (paths and bytes) that a node can store, the cache marker exists, and the objects
it cannot store are listed in its skipped-objects report. The keys include a file and a
folder of the same name ("loras/deep" and "loras/deep/..."): the folder wins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core import names, rules
from lambda_src.model_sync import handler
from modules.model_sync import ssm_document_content
from tests.helpers import REPO, lambda_event_from_sqs, moto_client, require
from tests.test_gpu_node_scripts import node_cli_env

SCRIPT = REPO / "modules" / "scripts" / "model-cache-sync.sh"
REGION = "us-west-2"
PREFIXES = ("checkpoints/", "loras/")
SCRIPT_TIMEOUT = 90

# Keys the operations draw from: model keys (spaces, '+', '%', unicode, nesting) and keys
# outside the model prefixes, which must never reach a node nor trigger a command.
MODEL_KEYS = (
    "checkpoints/sd15.safetensors",
    "checkpoints/sdxl base+refiner.safetensors",
    "checkpoints/sub dir/v2 100%.ckpt",
    "loras/a.bin",
    "loras/deep/ünï-cøde.bin",
    "loras/deep",  # a file named like a folder: unstorable while loras/deep/... exists
)
OTHER_KEYS = ("notes/readme.txt", "build/x.tar", "checkpoints-old/stale.bin")
ALL_KEYS = MODEL_KEYS + OTHER_KEYS


def is_model_key(key: str) -> bool:
    return key.startswith(PREFIXES)


def storable(models: dict[str, bytes]) -> tuple[dict[str, bytes], set[str]]:
    """(what a node caches, the keys it skips): a file whose name is also a folder of
    another key is skipped (the folder wins)."""
    folders = {key.rsplit("/", i)[0] for key in models for i in range(1, key.count("/") + 1)}
    return {k: v for k, v in models.items() if k not in folders}, {k for k in models if k in folders}


@pytest.fixture(autouse=True)
def _script_present():
    require(SCRIPT.exists(), f"{SCRIPT} is absent (the node sync script)")


@pytest.fixture
def node_cli(aws_cli_env, tmp_path) -> dict[str, str]:
    """The nodes' CLI: AWS CLI v2 (classic transfer client), against the moto server."""
    return node_cli_env("v2", aws_cli_env, tmp_path)


@pytest.fixture
def lambda_on_server(moto_server, monkeypatch, tmp_path):
    """The handler's boto3 clients talk to the moto server (never the runner's ~/.aws)."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    handler.reset_clients()
    yield monkeypatch
    handler.reset_clients()


@dataclass
class Node:
    instance_id: str
    root: Path
    cli_env: dict[str, str]
    bucket: str
    proc: subprocess.Popen | None = None
    runs: int = 0
    logs: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def marker(self) -> Path:
        return self.root / ".models-cache-complete"

    @property
    def flag(self) -> Path:
        return self.root / "requested"

    @property
    def skipped(self) -> set[str]:
        report = self.root / ".models-cache-skipped"
        return {json.loads(line)["key"] for line in report.read_text().splitlines()} if report.exists() else set()

    def env(self) -> dict[str, str]:
        return {
            **self.cli_env,
            "MODELS_BUCKET": self.bucket,
            "MODELS_PATH": str(self.models),
            "CACHE_MARKER_PATH": str(self.marker),
            "CACHE_SKIPPED_PATH": str(self.root / ".models-cache-skipped"),
            "SYNC_REQUEST_FLAG": str(self.flag),
            "MODEL_PREFIXES": " ".join(PREFIXES),  # space-separated for the script
            "MODEL_PREFIX_PATTERN": rules.MODEL_PREFIX_ERE,  # as the user-data renders it
            **self.extra_env,
        }

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start_service(self) -> None:
        """`systemctl start` of the sync service: a no-op while it runs."""
        if self.running():
            return
        self.finish()
        self.runs += 1
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT)], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def receive_command(self) -> bool:
        """The SSM document's effect. Returns whether the service was already running."""
        self.flag.parent.mkdir(parents=True, exist_ok=True)
        self.flag.touch()
        was_running = self.running()
        self.start_service()
        return was_running

    def finish(self) -> None:
        if self.proc is None:
            return
        try:
            out, err = self.proc.communicate(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            self.proc = None
            pytest.fail(f"sync script on {self.instance_id} still running after {SCRIPT_TIMEOUT} s:\n{out}\n{err}")
        self.logs.append(err)
        rc, self.proc = self.proc.returncode, None
        assert rc == 0, f"sync script failed on {self.instance_id} (rc={rc}):\n{out}\n{err}"

    def tree(self) -> dict[str, bytes]:
        """The node's models (call it only while no sync writes: the CLI's temporary files
        come and go)."""
        if not self.models.exists():
            return {}
        return {p.relative_to(self.models).as_posix(): p.read_bytes() for p in self.models.rglob("*") if p.is_file()}


# The real aws CLI, except that after this node's first `s3 sync` (one per converge, all
# prefixes) it signals GATE.passed and holds until the test creates GATE: the test then acts
# while that sync run is provably still in progress (it has not yet looked at the request
# flag), instead of racing it.
GATED_AWS = r"""#!/usr/bin/env bash
"$REAL_AWS" "$@"
rc=$?
if [[ " $* " == *" s3 sync "* && ! -e "$GATE.passed" ]]; then
  touch "$GATE.passed"
  for _ in $(seq 1 1200); do [[ -e "$GATE" ]] && break; sleep 0.05; done
fi
exit "$rc"
"""


class Fleet:
    """One cluster's models bucket, queue, Lambda configuration and GPU nodes."""

    def __init__(self, endpoint: str, cli_env: dict[str, str], root: Path, lambda_env: pytest.MonkeyPatch):
        suffix = uuid.uuid4().hex[:10]
        self.cluster = f"fleet-{suffix}"
        self.bucket = f"models-{suffix}"
        self.document = f"{self.cluster}-model-sync"
        self.root = root / suffix
        self.cli_env = cli_env
        # Through boto3's default session: one parse of each service model per test process
        # (EC2's is 4 MB of JSON), not one per fleet.
        self.s3 = moto_client("s3", endpoint, region=REGION)
        self.sqs = moto_client("sqs", endpoint, region=REGION)
        self.ec2 = moto_client("ec2", endpoint, region=REGION)
        self.ssm = moto_client("ssm", endpoint, region=REGION)
        self.nodes: dict[str, Node] = {}
        self.commands: list[str] = []

        self.queue_url = self.sqs.create_queue(QueueName=f"{self.cluster}-model-events")["QueueUrl"]
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
        # The document the platform stack deploys (the test acts out its effect on a node).
        self.ssm.create_document(
            Name=self.document, DocumentType="Command", DocumentFormat="JSON", Content=ssm_document_content()
        )
        for key, value in {
            names.ENV_CLUSTER_NAME: self.cluster,
            names.ENV_MODELS_BUCKET: self.bucket,
            names.ENV_SSM_DOCUMENT: self.document,
            names.ENV_MODEL_PREFIXES: ",".join(PREFIXES),  # comma-separated for the Lambda
            names.ENV_NODE_CLUSTER_TAG_KEY: names.NODE_CLUSTER_TAG_KEY,
            names.ENV_NODE_ROLE_TAG_KEY: names.NODE_ROLE_TAG_KEY,
            names.ENV_NODE_ROLE_VALUE: names.NODE_ROLE_GPU,
        }.items():
            lambda_env.setenv(key, value)

    # --- EC2 / nodes ---
    def launch(self, *, cluster: str | None = None, boot: bool = True, gate: Path | None = None) -> Node:
        """A GPU node joins (Karpenter tags); at boot its sync service starts once. With
        `gate`, its aws CLI pauses after the first prefix's sync (see GATED_AWS)."""
        tags = [
            {"Key": names.NODE_CLUSTER_TAG_KEY, "Value": cluster or self.cluster},
            {"Key": names.NODE_ROLE_TAG_KEY, "Value": names.NODE_ROLE_GPU},
        ]
        instance = self.ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            InstanceType="g6e.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"]
        node = Node(instance, self.root / instance, self.cli_env, self.bucket)
        node.root.mkdir(parents=True)
        if gate is not None:
            bin_dir = node.root / "bin"
            bin_dir.mkdir()
            (bin_dir / "aws").write_text(GATED_AWS)
            (bin_dir / "aws").chmod(0o755)
            real_aws = shutil.which("aws", path=self.cli_env["PATH"])
            assert real_aws, "aws CLI not on PATH"
            node.extra_env = {
                "PATH": f"{bin_dir}{os.pathsep}{self.cli_env['PATH']}",
                "REAL_AWS": real_aws,
                "GATE": str(gate),
            }
        if cluster is None:
            self.nodes[instance] = node
        if boot:
            node.start_service()
        return node

    def settle(self) -> None:
        for node in self.nodes.values():
            node.finish()

    # --- S3 ---
    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def bucket_models(self) -> dict[str, bytes]:
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                if is_model_key(obj["Key"]):
                    out[obj["Key"]] = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
        return out

    # --- the batching window closes: SQS -> Lambda -> SSM -> nodes ---
    def invoke_lambda(self) -> tuple[dict, list[str]]:
        """Deliver every queued message as one Lambda batch; return the handler's summary
        and the instance ids the command (if any) reached, as resolved from its tags."""
        messages = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            messages.extend(batch)
        event = lambda_event_from_sqs(messages, self.queue_arn, region=REGION)
        summary = handler.handler(event, None)
        for i in range(0, len(messages), 10):  # the event source mapping deletes a successful batch
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(messages[i : i + 10])
                ],
            )
        targets: list[str] = []
        if summary["command_id"]:
            self.commands.append(summary["command_id"])
            [command] = self.ssm.list_commands(CommandId=summary["command_id"])["Commands"]
            assert command["Parameters"] == {} and command["DocumentName"] == self.document
            targets = command["InstanceIds"]
        return summary, targets

    def deliver(self, targets: list[str], *, missed: frozenset[str] = frozenset()) -> None:
        for instance in targets:
            if instance in self.nodes and instance not in missed:
                self.nodes[instance].receive_command()

    def assert_converged(self, nodes=None) -> None:
        expected, skipped = storable(self.bucket_models())
        for node in nodes or self.nodes.values():
            assert not node.running()
            assert node.tree() == expected, f"{node.instance_id} did not converge"
            assert node.marker.is_file()
            assert node.skipped == skipped


@pytest.fixture
def fleet_factory(moto_server, node_cli, tmp_path, lambda_on_server):
    fleets: list[Fleet] = []

    def make() -> Fleet:
        fleet = Fleet(moto_server, node_cli, tmp_path, lambda_on_server)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:  # never leave a sync script running
        for node in fleet.nodes.values():
            if node.running():
                node.proc.kill()
                node.proc.communicate()


def wait_for(condition, node: Node, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert node.running(), "the sync finished before the condition was seen"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def blob(key: str, size: int, fill: int) -> bytes:
    """Deterministic content; same size with another `fill` = same size, different bytes."""
    seed = f"{key}|{fill}|".encode()
    return (seed * (size // len(seed) + 1))[:size]


# --- randomized sequences ------------------------------------------------------------

operations = st.tuples(
    st.sampled_from(["put", "replace-same-size", "delete"]),
    st.sampled_from(ALL_KEYS),
    st.integers(min_value=0, max_value=3000),
)
initial_states = st.dictionaries(st.sampled_from(ALL_KEYS), st.integers(min_value=1, max_value=3000), max_size=5)


# Each example costs two or three converge rounds of two nodes (2 aws CLI v2 calls per node
# and round: 4-8 s per example on 2 busy cores); the file's budget allows 4 generated
# examples plus the explicit one. When changing the sync script, run more:
# MODEL_SYNC_FLEET_EXAMPLES=50 pytest tests/test_model_sync_fleet.py
@settings(
    max_examples=int(os.environ.get("MODEL_SYNC_FLEET_EXAMPLES", "4")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(
    initial={"checkpoints/sd15.safetensors": 1000, "loras/a.bin": 10, "notes/readme.txt": 5, "loras/deep": 20},
    batches=[
        [
            ("replace-same-size", "checkpoints/sd15.safetensors", 0),
            ("delete", "loras/a.bin", 0),
            ("put", "notes/readme.txt", 7),
        ],
        # loras/deep becomes a folder too: the file is skipped; then the folder goes again.
        [
            ("put", "loras/deep/ünï-cøde.bin", 0),
            ("put", "checkpoints/sub dir/v2 100%.ckpt", 10),
            ("replace-same-size", "checkpoints/sd15.safetensors", 0),
        ],
        [("delete", "loras/deep/ünï-cøde.bin", 0)],
    ],
)
@given(initial=initial_states, batches=st.lists(st.lists(operations, min_size=1, max_size=5), min_size=1, max_size=2))
def test_random_updates_converge_on_every_node(fleet_factory, initial, batches):
    fleet = fleet_factory()
    state: dict[str, bytes] = {}
    for key, size in initial.items():
        state[key] = blob(key, size, 0)
        fleet.put(key, state[key])
    fleet.invoke_lambda()  # no node yet: nothing to target
    assert fleet.commands == []
    for _ in range(2):
        fleet.launch()  # boot sync
    fleet.settle()
    fleet.assert_converged()

    generation = 0
    for ops in batches:
        model_changed = False
        for kind, key, size in ops:
            generation += 1
            if kind == "delete":
                if key not in state:
                    continue
                del state[key]
                fleet.delete(key)
            else:
                if kind == "replace-same-size" and key in state:
                    size = len(state[key])
                state[key] = blob(key, size, generation)
                fleet.put(key, state[key])
            model_changed |= is_model_key(key)
        summary, targets = fleet.invoke_lambda()
        # The Lambda decides: a command iff a model prefix changed, to exactly this fleet.
        assert bool(summary["command_id"]) is model_changed
        assert sorted(targets) == (sorted(fleet.nodes) if model_changed else [])
        fleet.deliver(targets)
        fleet.settle()
        fleet.assert_converged()
        assert fleet.bucket_models() == {k: v for k, v in state.items() if is_model_key(k)}


# --- targeted scenarios --------------------------------------------------------------


def test_node_booting_during_an_update_converges(fleet_factory):
    fleet = fleet_factory()
    fleet.put("checkpoints/base.safetensors", blob("base", 2000, 0))
    fleet.put("loras/old.bin", blob("old", 500, 0))
    first = fleet.launch()
    fleet.settle()
    summary, targets = fleet.invoke_lambda()  # the uploads above, queued before the node ran
    assert targets == [first.instance_id]  # (delivering it would be one more identical converge)
    fleet.assert_converged()

    # An update starts; a node boots in the middle of it. Its boot sync has listed and
    # synced the bucket as it was when the rest of the update lands (held there by the
    # gate, before it checks the request flag), so only the request flag (touched by the
    # command while that sync runs) can bring the rest.
    fleet.put("checkpoints/new.safetensors", blob("new", 1500, 1))
    gate = fleet.root / "gate"
    joiner = fleet.launch(gate=gate)
    wait_for(lambda: Path(f"{gate}.passed").exists(), joiner)
    assert joiner.tree() == fleet.bucket_models(), "held after its sync of the bucket before the update"
    fleet.put("checkpoints/base.safetensors", blob("base", 2000, 1))  # same size, new bytes
    fleet.delete("loras/old.bin")
    fleet.put("loras/new.bin", blob("lora", 700, 1))
    summary, targets = fleet.invoke_lambda()
    assert summary["relevant"] == 4
    assert sorted(targets) == sorted([first.instance_id, joiner.instance_id])  # tags, resolved now
    was_running = {n.instance_id: n.receive_command() for n in (first, joiner)}
    assert was_running[joiner.instance_id], "the joiner's boot sync was still running: the flag must be honoured"
    gate.touch()
    fleet.settle()
    fleet.assert_converged()
    assert not joiner.flag.exists() and not first.flag.exists()


def test_node_that_missed_a_command_converges_on_reconcile(fleet_factory):
    fleet = fleet_factory()
    fleet.put("checkpoints/a.safetensors", blob("a", 1000, 0))
    fleet.put("loras/b.bin", blob("b", 800, 0))
    _online = fleet.launch()
    offline = fleet.launch()
    fleet.settle()
    fleet.invoke_lambda()
    fleet.assert_converged()

    fleet.put("checkpoints/a.safetensors", blob("a", 1000, 1))  # same size, different bytes
    fleet.delete("loras/b.bin")
    fleet.put("loras/c.bin", blob("c", 300, 1))
    summary, targets = fleet.invoke_lambda()
    assert sorted(targets) == sorted(fleet.nodes)
    fleet.deliver(targets, missed=frozenset({offline.instance_id}))
    stale = offline.tree()  # the missed command changed nothing there
    assert "loras/b.bin" in stale and "loras/c.bin" not in stale
    assert stale["checkpoints/a.safetensors"] == blob("a", 1000, 0)

    offline.start_service()  # its reconcile timer fires: no flag, no command
    fleet.settle()
    fleet.assert_converged()


def test_lambda_decides_who_gets_a_command(fleet_factory):
    fleet = fleet_factory()
    fleet.put("checkpoints/a.safetensors", blob("a", 100, 0))
    mine = fleet.launch()
    other = fleet.launch(cluster=f"{fleet.cluster}-other", boot=False)  # same tag key, another cluster
    fleet.settle()
    fleet.invoke_lambda()

    # Only keys outside the model prefixes change: no command at all, nodes untouched.
    runs = mine.runs
    fleet.put("notes/readme.txt", b"hello")
    fleet.put("build/x.tar", b"tar")
    fleet.put("checkpoints-old/stale.bin", b"old")
    fleet.delete("notes/readme.txt")
    summary, targets = fleet.invoke_lambda()
    assert summary["command_id"] is None and summary["relevant"] == 0 and targets == []
    assert mine.runs == runs
    fleet.assert_converged()

    # A model change: one command, to this cluster's node only.
    fleet.put("loras/new.bin", blob("n", 64, 1))
    summary, targets = fleet.invoke_lambda()
    assert summary["command_id"] and targets == [mine.instance_id]
    assert other.instance_id not in targets
    fleet.deliver(targets)
    fleet.settle()
    fleet.assert_converged()
    assert not any(k.startswith(("notes/", "build/", "checkpoints-old/")) for k in mine.tree())

    # Every node gone: the Lambda sends nothing; the next node syncs at boot.
    fleet.ec2.terminate_instances(InstanceIds=[mine.instance_id])
    del fleet.nodes[mine.instance_id]
    fleet.delete("checkpoints/a.safetensors")
    summary, targets = fleet.invoke_lambda()
    assert summary["nodes"] == 0 and summary["command_id"] is None
    fresh = fleet.launch()
    fleet.settle()
    fleet.assert_converged([fresh])
    assert fresh.tree() == {"loras/new.bin": blob("n", 64, 1)}
