"""Fakes for the comfyui-eks deploy/destroy/status/outputs tests.

- `install_stubs`: a PATH directory holding only terraform, kubectl and aws (links to
  cli_stub.sh), the rules they answer from, and the log of their calls.
- `fake_synthesize`: writes Terraform JSON shaped like the real stacks (construct paths,
  references, lifecycle.prevent_destroy as data_protection says) in a few milliseconds,
  instead of a cdktf synthesis of 10-15 s. The keep rules are also checked against the real
  synthesized stacks (test_cli_deploy.py, the session `synth` fixture).
- kubectl JSON builders for nodes, pods and the Deployment.
- `cli_world`: all of it together, with moto, for one test (the tests' `env` fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.helpers import default_config_data, dump_yaml, mock_aws_keeping_session, use_shared_boto3_session

STUB = Path(__file__).resolve().parent / "cli_stub.sh"
TOOLS = ("terraform", "kubectl", "aws")
Json = dict[str, Any]
ACCOUNT = "123456789012"  # moto's account
REGION = "us-west-2"
CLUSTER = "comfyui"
STATE, PLATFORM, WORKLOAD, EDGE = "comfyui-state", "comfyui-platform", "comfyui-workload", "comfyui-edge"
APPLIED = "Apply complete! Resources: 3 added, 0 changed, 0 destroyed."
DESTROYED = "Destroy complete! Resources: 7 destroyed."
CLOUDFRONT = {
    "auth": {
        "mode": "cognito",
        "domain": "comfy.example.com",
        "certificate_arn": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0123abcd-0000-4000-8000-000000000000",
    },
    "edge": {
        "cloudfront": True,
        "certificate_arn": f"arn:aws:acm:us-east-1:{ACCOUNT}:certificate/0123abcd-0000-4000-8000-000000000001",
    },
}


@dataclass
class Stubs:
    """The stub tools of one test: their rules and the calls they logged."""

    bin: Path
    dir: Path
    log: Path
    rules: dict[str, list[str]] = field(default_factory=dict)

    def answer(
        self,
        tool: str,
        pattern: str,
        *,
        code: int = 0,
        stdout: str | None = None,
        stderr: str | None = None,
        once: bool = False,
        first: bool = False,
    ) -> None:
        """Add a rule answering calls whose arguments match `pattern`: after the earlier rules
        (the first match wins), or before them with `first`; `once`: for one call only."""
        files = []
        for kind, text in (("out", stdout), ("err", stderr)):
            if text is None:
                files.append("-")
                continue
            name = f"{tool}.{len(self.rules.get(tool, []))}.{kind}"
            (self.dir / name).write_text(text, encoding="utf-8")
            files.append(name)
        rule = "\t".join([pattern, str(code), *files, "1" if once else ""])
        rules = self.rules.setdefault(tool, [])
        rules.insert(0, rule) if first else rules.append(rule)
        (self.dir / f"{tool}.rules").write_text("\n".join(rules) + "\n", encoding="utf-8")

    def clear(self, tool: str) -> None:
        self.rules[tool] = []
        (self.dir / f"{tool}.rules").write_text("", encoding="utf-8")

    def calls(self, tool: str | None = None) -> list[list[str]]:
        """Every logged call as [tool, arg, ...], oldest first."""
        if not self.log.exists():
            return []
        calls = [line.split("\t") for line in self.log.read_text(encoding="utf-8").splitlines() if line]
        return [c for c in calls if tool is None or c[0] == tool]

    def terraform(self) -> list[tuple[str, str]]:
        """(stack, subcommand) of each terraform call with -chdir, in order."""
        found = []
        for call in self.calls("terraform"):
            chdir = next((a for a in call if a.startswith("-chdir=")), None)
            if chdir is None:
                continue
            rest = call[call.index(chdir) + 1 :]
            found.append(
                (Path(chdir.removeprefix("-chdir=")).name, " ".join(rest[:2]) if rest[:1] == ["state"] else rest[0])
            )
        return found

    def remove(self, tool: str) -> None:
        (self.bin / tool).unlink()

    def mark(self, text: str) -> None:
        """A line in the call log from the test's own process (orders in-process steps)."""
        with self.log.open("a", encoding="utf-8") as log:
            log.write(f"MARK\t{text}\n")


def install_stubs(root: Path) -> Stubs:
    bin_dir, data = root / "stub-bin", root / "stub-data"
    bin_dir.mkdir()
    data.mkdir()
    for tool in TOOLS:
        os.symlink(STUB, bin_dir / tool)
    stubs = Stubs(bin_dir, data, root / "stub-calls.log")
    stubs.answer("terraform", "version -json", stdout=json.dumps({"terraform_version": "1.11.4"}))
    stubs.answer("aws", "--version", stdout="aws-cli/2.27.50 Python/3.13.4 Linux/6.1 exe/x86_64")
    return stubs


# --- synthesized stacks ----------------------------------------------------------------------


def _meta(path: str) -> Json:
    return {"//": {"metadata": {"path": path, "uniqueId": path.rsplit("/", 1)[-1]}}}


class _Doc:
    def __init__(self, stack: str) -> None:
        self.stack = stack
        self.resource: dict[str, dict[str, Json]] = {}

    def add(self, rtype: str, path: str, **body: Any) -> str:
        name = path.replace("/", "_") + "_0ABC"
        self.resource.setdefault(rtype, {})[name] = {**_meta(f"{self.stack}/{path}"), **body}
        return f"{rtype}.{name}"

    def key(self, path: str, alias: str, protected: bool) -> str:
        key = self.add("aws_kms_key", f"{path}/key", description=alias, **_protect(protected))
        self.add("aws_kms_alias", f"{path}/alias", name=f"alias/{alias}", target_key_id=f"${{{key}.key_id}}")
        return key

    def bucket(self, path: str, name: str, *, key: str | None, logs: str | None, protected: bool) -> str:
        bucket = self.add(
            "aws_s3_bucket", f"{path}/bucket", bucket=name, depends_on=[key] if key else None, **_protect(protected)
        )
        parts = [self.add("aws_s3_bucket_versioning", f"{path}/versioning", bucket=f"${{{bucket}.id}}")]
        parts.append(
            self.add(
                "aws_s3_bucket_policy",
                f"{path}/policy",
                bucket=f"${{{bucket}.id}}",
                policy="${data.aws_iam_policy_document.x.json}",
            )
        )
        if key:
            parts.append(
                self.add(
                    "aws_s3_bucket_server_side_encryption_configuration",
                    f"{path}/encryption",
                    bucket=f"${{{bucket}.id}}",
                    rule=[{"kms_master_key_id": f"${{{key}.arn}}"}],
                )
            )
        if logs:
            parts.append(
                self.add(
                    "aws_s3_bucket_logging",
                    f"{path}/logging",
                    bucket=f"${{{bucket}.id}}",
                    target_bucket=f"${{{logs}.id}}",
                )
            )
        self.add("terraform_data", f"{path}/destroy_guard", input={"bucket": name}, depends_on=parts)
        return bucket

    def json(self) -> Json:
        return {"terraform": {"backend": {}}, "resource": self.resource}


def _protect(protected: bool) -> Json:
    return {"lifecycle": {"prevent_destroy": True}} if protected else {}


def stack_documents(config: Any) -> dict[str, Json]:
    """Terraform JSON per stack name, shaped like the real synthesis of `config`."""
    protected = config.data_protection.prevent_destroy
    documents = {}
    state = _Doc(config.stack_name("state"))
    key = state.key("state/key", f"{config.project}-tfstate", protected)
    logs = state.bucket("state/access_logs", config.state_log_bucket, key=None, logs=None, protected=False)
    state.bucket("state/bucket", config.state_bucket, key=key, logs=logs, protected=protected)
    documents[state.stack] = state.json()

    platform = _Doc(config.stack_name("platform"))
    platform.add("aws_vpc", "network/vpc", cidr_block=config.network.vpc_cidr)
    key = platform.key("data/key", f"{config.project}-data", protected)
    logs = platform.bucket("data/access_logs", config.access_logs_bucket, key=None, logs=None, protected=False)
    models = platform.bucket("data/models", config.models_bucket, key=key, logs=logs, protected=protected)
    platform.bucket("data/inputs", config.inputs_bucket, key=key, logs=logs, protected=protected)
    platform.bucket("data/outputs", config.outputs_bucket, key=key, logs=logs, protected=protected)
    queue = platform.add("aws_sqs_queue", "model_sync/events/queue", kms_master_key_id=f"${{{key}.arn}}")
    platform.add(
        "aws_s3_bucket_notification",
        "model_sync/events/notification",
        bucket=f"${{{models}.id}}",
        queue=[{"queue_arn": f"${{{queue}.arn}}"}],
    )
    repo = platform.add(
        "aws_ecr_repository",
        "images/repository",
        name=f"{config.project}/comfyui",
        encryption_configuration=[{"kms_key": f"${{{key}.arn}}"}],
    )
    platform.add("aws_ecr_lifecycle_policy", "images/lifecycle", repository=f"${{{repo}.name}}")
    platform.add("aws_dynamodb_table", "job_store/table", name=f"{config.project}-jobs", **_protect(protected))
    platform.add("aws_sqs_queue", "job_store/queue", name=f"{config.project}-jobs")
    if config.auth.mode == "cognito":
        pool = platform.add(
            "aws_cognito_user_pool", "auth/pool", name=f"{config.project}-comfyui", deletion_protection="ACTIVE"
        )
        platform.add("aws_cognito_user_pool_client", "auth/client", user_pool_id=f"${{{pool}.id}}")
    documents[platform.stack] = platform.json()

    workload = _Doc(config.stack_name("workload"))
    workload.add("helm_release", "karpenter/karpenter", name="karpenter")
    workload.add("kubernetes_manifest", "comfyui_deployment", manifest={"kind": "Deployment"})
    documents[workload.stack] = workload.json()
    if config.edge.cloudfront:
        edge = _Doc(config.stack_name("edge"))
        edge.add("aws_cloudfront_distribution", "edge/distribution", enabled=True)
        documents[edge.stack] = edge.json()
    return documents


def fake_synthesize(config: Any, outdir: Path) -> None:
    """What _stacks.synthesize writes, for `config` (replacing the directory like synth_atomically)."""
    import shutil

    if outdir.exists():
        shutil.rmtree(outdir)
    manifest: Json = {"stacks": {}, "version": "0.21.0"}
    for name, document in stack_documents(config).items():
        directory = outdir / "stacks" / name
        directory.mkdir(parents=True)
        (directory / "cdk.tf.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
        manifest["stacks"][name] = {
            "name": name,
            "synthesizedStackPath": f"stacks/{name}/cdk.tf.json",
            "workingDirectory": f"stacks/{name}",
        }
    (outdir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def addresses(document: Json) -> list[str]:
    return sorted(f"{rtype}.{name}" for rtype, items in document["resource"].items() for name in items)


def state_show(document: Json, ids: dict[str, str] | None = None) -> str:
    """`terraform show -json` of a state holding every resource of `document` (IDs: the
    bucket/name attribute where the JSON has one)."""
    ids = ids or {}
    resources = []
    for address in addresses(document):
        rtype, name = address.split(".", 1)
        body = document["resource"][rtype][name]
        identifier = ids.get(address) or body.get("bucket") or body.get("name") or f"id-{name.lower()}"
        resources.append(
            {"address": address, "mode": "managed", "type": rtype, "name": name, "values": {"id": identifier}}
        )
    return json.dumps({"format_version": "1.0", "values": {"root_module": {"resources": resources}}})


# --- kubectl JSON ----------------------------------------------------------------------------


def node(name: str, instance_type: str, capacity: str, created: str) -> Json:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {
                "node.kubernetes.io/instance-type": instance_type,
                "karpenter.sh/capacity-type": capacity,
                "comfyui.io/node-role": "gpu",
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(
    name: str, node_name: str | None, *, cache: str, ready: bool, restarts: int = 0, phase: str = "Running"
) -> Json:
    """cache: running | done | failed | none (the wait-for-model-cache init container's state)."""
    states = {
        "running": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        "done": {"terminated": {"exitCode": 0, "reason": "Completed"}},
        "failed": {"terminated": {"exitCode": 1, "reason": "Error"}},
        "none": {"waiting": {"reason": "PodInitializing"}},
    }
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if node_name is None:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available"}
        )
    return {
        "metadata": {"name": name, "namespace": "comfyui"},
        "spec": {"nodeName": node_name} if node_name else {},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "initContainerStatuses": [{"name": "wait-for-model-cache", "state": states[cache]}],
            "containerStatuses": [
                {
                    "name": "comfyui",
                    "restartCount": restarts,
                    "state": {"running": {}} if ready else {"waiting": {"reason": "PodInitializing"}},
                }
            ],
        },
    }


def deployment(replicas: int, ready: int) -> Json:
    return {"metadata": {"name": "comfyui"}, "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def items(*objects: Json) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


# --- the world of one test ------------------------------------------------------------------


class FakeQuotas:
    """Service Quotas for EC2 (moto only knows vpc's): values by quota code; codes in
    `never_applied` answer NoSuchResourceException, as for accounts that never changed them."""

    def __init__(self) -> None:
        self.values = {"L-DB2E81BA": 64.0, "L-3819A6DF": 64.0, "L-417A185B": 0.0, "L-7212CCBC": 0.0}
        self.never_applied: set[str] = set()
        self.defaults: dict[str, float] = {}

    def get_service_quota(self, ServiceCode: str, QuotaCode: str) -> Json:
        assert ServiceCode == "ec2"
        if QuotaCode in self.never_applied:
            raise ClientError({"Error": {"Code": "NoSuchResourceException", "Message": "none"}}, "GetServiceQuota")
        return {"Quota": {"QuotaCode": QuotaCode, "Value": self.values[QuotaCode]}}

    def get_aws_default_service_quota(self, ServiceCode: str, QuotaCode: str) -> Json:
        return {"Quota": {"QuotaCode": QuotaCode, "Value": self.defaults[QuotaCode]}}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Json:
        return dict(json.loads(self.out))


@dataclass
class Env:
    """One test's world: stubs on PATH, moto, a config file, a fake synthesis."""

    root: Path
    stubs: Stubs
    quotas: FakeQuotas
    capsys: pytest.CaptureFixture[str]
    synthesized: list[Any] = field(default_factory=list)
    config_path: Path | None = None

    @property
    def outdir(self) -> Path:
        return self.root / "cdktf.out"

    def config(self, **overrides: Any) -> Path:
        """Write the configuration: config/default.yaml with moto's account and `overrides`
        (one level deep merge)."""
        data = default_config_data(**{"account_id": ACCOUNT, **overrides})
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(dump_yaml(data))
        return self.config_path

    def run(self, *args: str) -> Result:
        command, rest = args[0], list(args[1:])
        from comfyui_eks import cli

        code = cli.main([command, "--config", str(self.config_path), "--outdir", str(self.outdir), *rest])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def documents(self) -> dict[str, Json]:
        from core.config import load_config

        assert self.config_path is not None
        return stack_documents(load_config(self.config_path))


def push_image(tag: str, repository: str = "comfyui/comfyui") -> None:
    ecr = boto3.client("ecr", region_name=REGION)
    with contextlib.suppress(ClientError):  # already there
        ecr.create_repository(repositoryName=repository)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "digest": "sha256:" + "a" * 64,
            "size": 1,
            "mediaType": "application/vnd.docker.container.image.v1+json",
        },
        "layers": [],
    }
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)


@contextmanager
def cli_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    """The world of one CLI test: stub tools alone on PATH, moto (in-process), FakeQuotas at the
    client boundary, a fake synthesis, no terminal, instant waits, the default configuration
    with moto's account, and the configured image pushed."""
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "COMFYUI_EKS_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    stubs = install_stubs(tmp_path)
    monkeypatch.setenv("PATH", str(stubs.bin))
    monkeypatch.setenv("CLI_STUB_LOG", str(stubs.log))
    monkeypatch.setenv("CLI_STUB_DIR", str(stubs.dir))
    monkeypatch.setenv("TF_PLUGIN_CACHE_DIR", str(tmp_path / "plugins"))
    monkeypatch.chdir(tmp_path)
    quotas = FakeQuotas()
    world = Env(tmp_path, stubs, quotas, capsys)

    from comfyui_eks import _aws, _cleanup, _stacks, deploy

    real_client = _aws.client
    monkeypatch.setattr(
        _aws, "client", lambda service, region: quotas if service == "service-quotas" else real_client(service, region)
    )

    def synthesize(config: Any, outdir: Path) -> None:
        world.synthesized.append(config)
        fake_synthesize(config, outdir)

    monkeypatch.setattr(_stacks, "synthesize", synthesize)
    monkeypatch.setattr(deploy, "interactive", lambda: False)
    monkeypatch.setattr(deploy, "HEALTH_INTERVAL", 0.0)
    monkeypatch.setattr(deploy, "CLEANUP_PACE", _cleanup.Pace(interval=0.0, timeout=2.0, sleep=lambda _: None))
    stubs.answer("terraform", "* apply *", stdout=APPLIED)
    stubs.answer("terraform", "* destroy *", stdout=DESTROYED)
    use_shared_boto3_session(monkeypatch)
    with mock_aws_keeping_session():
        _aws.reset()
        push_image("v0.3.0")
        world.config()
        yield world
    _aws.reset()
