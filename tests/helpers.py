"""Small helpers shared by the tests (imported, not fixtures)."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from lambda_src.jobs import contract as jobs_contract

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# moto's settings for the tests, in-process (conftest.py) and in moto_server. By default moto
# fills every EC2 backend it makes (one per region and `mock_aws()`) with ~1,300 public AMIs:
# 0.25 s of CPU each, several per test. Nothing here reads them; run_instances takes any id.
MOTO_ENVIRONMENT = {"MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}


# PyYAML's libyaml (C) classes, for the documents the tests read and write in bulk (CRD
# schemas, every variant's Kubernetes objects for checkov, a configuration per CLI test): the
# same data as yaml.safe_load/safe_dump for a tenth of the CPU or less (a CRD: 4 ms instead
# of 50). Snapshot texts keep the pure-Python dumper, whose output they were written with.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (CSafeLoader or SafeLoader: both safe)


def dump_yaml(data: Any, **kwargs: Any) -> str:
    return yaml.dump(data, Dumper=_YAML_DUMPER, **kwargs)


def dump_yaml_all(documents: list[Any], **kwargs: Any) -> str:
    return yaml.dump_all(documents, Dumper=_YAML_DUMPER, **kwargs)


@functools.cache
def _default_config() -> dict[str, Any]:
    from core.config import DEFAULT_CONFIG

    return load_yaml(DEFAULT_CONFIG.read_text())


def default_config_data(**sections: Any) -> dict[str, Any]:
    """config/default.yaml as data, a fresh copy per call (the file is parsed once per process:
    hundreds of tests start from it), with `sections` on top: a mapping is merged into the
    section one level deep, any other value replaces it."""
    data = copy.deepcopy(_default_config())
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


@functools.cache
def shared_boto3_session() -> boto3.Session:
    """One boto3 session per test process, for boto3's default session where moto runs
    in-process: every new session parses botocore's service models again (EC2's is 4 MB of
    JSON). The tests that use it all run with the same fake credentials and region. Clients of
    any session reach moto (its hook is on every botocore client)."""
    return boto3.Session()


def use_shared_boto3_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared session as boto3's default session, for this test."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", shared_boto3_session())


def mock_aws_keeping_session() -> mock_aws:
    """mock_aws() that keeps boto3's default session: by default it gives every test a new one
    (moto's core.reset_boto3_session option)."""
    return mock_aws(config={"core": {"reset_boto3_session": False}})


def require(condition: bool, why: str) -> None:
    """Skip locally when a prerequisite is missing; under CI=true the same gap fails the run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def tool(name: str) -> str:
    """Path of a command-line tool installed into the test environment: the one beside this
    interpreter first (the Pipfile's pin, even when its directory is not on PATH), else PATH's."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    require(found is not None, f"{name} is not installed (scripts/test.sh installs it)")
    return str(found)


def moto_client(service: str, endpoint: str, *, region: str = "us-west-2") -> Any:
    """A boto3 client of the session's moto server (the `moto_server` fixture's URL)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def lambda_event_from_sqs(messages: list[dict], queue_arn: str, *, region: str = "us-west-2") -> dict:
    """The event Lambda's SQS event source mapping builds from received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def create_jobs_table(ddb: Any, name: str) -> None:
    """The table as the infrastructure defines it: key job_id, STATUS_INDEX (status,
    created_at) projecting all attributes, a stream with both images."""
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": jobs_contract.JOB_ID, "AttributeType": "S"},
            {"AttributeName": jobs_contract.STATUS, "AttributeType": "S"},
            {"AttributeName": jobs_contract.CREATED_AT, "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": jobs_contract.JOB_ID, "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": jobs_contract.STATUS_INDEX,
                "KeySchema": [
                    {"AttributeName": jobs_contract.STATUS, "KeyType": "HASH"},
                    {"AttributeName": jobs_contract.CREATED_AT, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# moto's server, as the tests and benchmarks start it (see that file for why not `moto_server`).
MOTO_SERVER = REPO / "tests" / "moto_server.py"


def start_moto_server(*, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """moto's server (MOTO_SERVER, under this interpreter: the Pipfile's moto) on 127.0.0.1,
    answering: (its process, its endpoint URL).

    The port is free when chosen but bound later: if another process takes it in between,
    moto exits at once and a fresh port is tried. Raises RuntimeError after `attempts`."""
    # Straight to 127.0.0.1, whatever proxy the caller's environment sets.
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _attempt in range(attempts):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**MOTO_ENVIRONMENT, **os.environ},
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                no_proxy.open(url + "/moto-api/", timeout=1).read()
                return proc, url
            except OSError:
                time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=10)
    raise RuntimeError(f"moto_server did not start ({attempts} attempts)")


def new_job_item(**values: Any) -> dict[str, Any]:
    """A job item as POST /jobs writes it (queued, a fresh id), with `values` on top: any state."""
    now = jobs_contract.now()
    return {
        jobs_contract.JOB_ID: uuid.uuid4().hex,
        jobs_contract.STATUS: jobs_contract.QUEUED,
        jobs_contract.CREATED_AT: now,
        jobs_contract.UPDATED_AT: now,
        jobs_contract.EXPIRES_AT: now + 86400,
        jobs_contract.ATTEMPTS: 0,
        jobs_contract.INPUTS: {},
        **values,
    }


def go_duration_seconds(duration: str) -> int:
    """Seconds of a Go/Kubernetes/Terraform duration made of h, m and s parts ("1h", "1500s")."""
    assert re.fullmatch(r"(\d+[hms])+", duration), f"not an h/m/s duration: {duration!r}"
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([hms])", duration))
