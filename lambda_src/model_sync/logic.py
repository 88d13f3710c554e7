"""Pure logic of the model-sync Lambda: no AWS calls, no logging, no environment access.

Packaged alone with `handler.py` (Python 3.12 runtime): it must not import `core`. The
environment variable NAMES below mirror `core.names.ENV_*`; a test keeps them equal.

Flow: S3 ObjectCreated/ObjectRemoved on the models bucket -> SQS (batched by the event
source mapping) -> one Lambda invocation -> ONE `ssm:SendCommand` to this cluster's GPU
nodes, selected by tags when the command runs. The command carries no S3 key and no
parameter: on a node it only requests a full converge of the local cache to the bucket.
S3 keys are decoded, filtered and logged, nothing else. Records of any other bucket (a
notification someone configured by hand on another bucket, pointed at the same queue) are
ignored and counted: they can never trigger a command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

# --- Environment variable names (== core.names.ENV_*) ----------------------------------
ENV_CLUSTER_NAME = "CLUSTER_NAME"
ENV_MODELS_BUCKET = "MODELS_BUCKET"
ENV_SSM_DOCUMENT = "SSM_DOCUMENT_NAME"
ENV_MODEL_PREFIXES = "MODEL_PREFIXES"
ENV_NODE_CLUSTER_TAG_KEY = "NODE_CLUSTER_TAG_KEY"
ENV_NODE_ROLE_TAG_KEY = "NODE_ROLE_TAG_KEY"
ENV_NODE_ROLE_VALUE = "NODE_ROLE_VALUE"

REQUIRED_ENV = (
    ENV_CLUSTER_NAME,
    ENV_MODELS_BUCKET,
    ENV_SSM_DOCUMENT,
    ENV_NODE_CLUSTER_TAG_KEY,
    ENV_NODE_ROLE_TAG_KEY,
    ENV_NODE_ROLE_VALUE,
)

# A model prefix: one top-level folder of the models bucket with its trailing slash
# ("checkpoints/"). == core.rules.MODEL_PREFIX, the configuration's rule: Terraform passes the
# configured prefixes in this canonical form. A test keeps the two patterns equal.
MODEL_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}/", re.ASCII)

# S3 event names arrive without the "s3:" prefix in notifications ("ObjectCreated:Put");
# accept both spellings.
RELEVANT_EVENT_FAMILIES = ("ObjectCreated:", "ObjectRemoved:")
TEST_EVENT = "s3:TestEvent"

# At most this many keys are logged one by one per invocation; the rest are counted.
MAX_LOGGED_KEYS = 100


class ConfigError(ValueError):
    """The Lambda's environment is incomplete (a deployment bug: fail loudly)."""


@dataclass(frozen=True)
class Config:
    cluster_name: str
    models_bucket: str
    document_name: str
    model_prefixes: tuple[str, ...]
    cluster_tag_key: str
    role_tag_key: str
    role_value: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        missing = [name for name in REQUIRED_ENV if not (env.get(name) or "").strip()]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        return cls(
            cluster_name=env[ENV_CLUSTER_NAME].strip(),
            models_bucket=env[ENV_MODELS_BUCKET].strip(),
            document_name=env[ENV_SSM_DOCUMENT].strip(),
            model_prefixes=parse_prefixes(env.get(ENV_MODEL_PREFIXES, "")),
            cluster_tag_key=env[ENV_NODE_CLUSTER_TAG_KEY].strip(),
            role_tag_key=env[ENV_NODE_ROLE_TAG_KEY].strip(),
            role_value=env[ENV_NODE_ROLE_VALUE].strip(),
        )


def parse_prefixes(raw: str | None) -> tuple[str, ...]:
    """`"checkpoints/,loras/"` -> `("checkpoints/", "loras/")`; empty -> `()` (every key counts).

    Each prefix must be in the canonical form (MODEL_PREFIX: the trailing slash makes `loras/`
    never match `loras-old/x`); anything else is a deployment bug and raises ConfigError.
    Duplicates are dropped, order kept.
    """
    text = (raw or "").strip()
    if not text:
        return ()
    out: list[str] = []
    for prefix in text.split(","):
        if not MODEL_PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"{ENV_MODEL_PREFIXES}: {_short(prefix, 60)} is not a model prefix (one top-level folder "
                "with its trailing '/', e.g. checkpoints/)"
            )
        if prefix not in out:
            out.append(prefix)
    return tuple(out)


@dataclass(frozen=True)
class S3Change:
    """One well-formed S3 object notification record (key already URL-decoded)."""

    event_name: str
    bucket: str
    key: str

    def log_line(self) -> str:
        # JSON with ensure_ascii: control characters, quotes, newlines and non-ASCII are
        # escaped, so a hostile key can never forge or split a log line.
        return json.dumps({"event": self.event_name, "bucket": self.bucket, "key": self.key})


@dataclass
class ParsedEvent:
    """Everything read from one Lambda event."""

    records: int = 0  # SQS (or direct S3) records in the event
    changes: list[S3Change] = field(default_factory=list)
    test_events: int = 0
    skipped: list[str] = field(default_factory=list)  # safe (repr/JSON) reasons


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        return f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def decode_key(raw: str) -> str:
    """S3 notification keys are URL-encoded with `+` for spaces."""
    return unquote_plus(raw)


def _s3_change(record: Any) -> S3Change | str:
    """An S3 notification record -> S3Change, or a reason to skip it."""
    if not isinstance(record, dict):
        return f"S3 record is not an object: {_short(record)}"
    event_name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(event_name, str) or not isinstance(s3, dict):
        return f"S3 record without eventName/s3: {_short(record)}"
    bucket = s3.get("bucket")
    obj = s3.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        return f"S3 record without bucket/object: {_short(record)}"
    name = bucket.get("name")
    key = obj.get("key")
    if not isinstance(name, str) or not isinstance(key, str):
        return f"S3 record without bucket name/object key: {_short(record)}"
    event_name = event_name.removeprefix("s3:")
    return S3Change(event_name=event_name, bucket=name, key=decode_key(key))


def _iter_body_records(body: Any, where: str, parsed: ParsedEvent) -> Iterator[S3Change]:
    """The S3 records of one SQS message body (an S3 event notification, JSON)."""
    if not isinstance(body, str):
        parsed.skipped.append(f"{where}: body is not a string: {_short(body)}")
        return
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError; absurdly deep nesting
        parsed.skipped.append(f"{where}: body is not JSON: {_short(body)}")
        return
    if not isinstance(doc, dict):
        parsed.skipped.append(f"{where}: body is not a JSON object: {_short(doc)}")
        return
    if doc.get("Event") == TEST_EVENT:
        parsed.test_events += 1
        return
    records = doc.get("Records")
    if not isinstance(records, list):
        parsed.skipped.append(f"{where}: body has no Records list: {_short(doc)}")
        return
    for index, record in enumerate(records):
        change = _s3_change(record)
        if isinstance(change, str):
            parsed.skipped.append(f"{where} record {index}: {change}")
        else:
            yield change


def parse_event(event: Any) -> ParsedEvent:
    """Read a Lambda event: SQS messages whose bodies are S3 notifications.

    Direct S3 records (eventSource aws:s3, e.g. a console test) are accepted too. Never
    raises: anything malformed is described in `skipped`.
    """
    parsed = ParsedEvent()
    if not isinstance(event, dict):
        parsed.skipped.append(f"event is not an object: {_short(event)}")
        return parsed
    records = event.get("Records")
    if not isinstance(records, list):
        parsed.skipped.append(f"event has no Records list: {_short(event)}")
        return parsed
    for index, record in enumerate(records):
        parsed.records += 1
        where = f"record {index}"
        if not isinstance(record, dict):
            parsed.skipped.append(f"{where}: not an object: {_short(record)}")
            continue
        if "body" in record:  # SQS message
            msg_id = record.get("messageId")
            if isinstance(msg_id, str):
                where = f"message {json.dumps(msg_id)}"
            parsed.changes.extend(_iter_body_records(record["body"], where, parsed))
        elif isinstance(record.get("s3"), dict):  # direct S3 notification
            change = _s3_change(record)
            if isinstance(change, str):
                parsed.skipped.append(f"{where}: {change}")
            else:
                parsed.changes.append(change)
        else:
            parsed.skipped.append(f"{where}: neither an SQS message nor an S3 record: {_short(record)}")
    return parsed


def split_by_bucket(changes: Iterable[S3Change], bucket: str) -> tuple[list[S3Change], list[S3Change]]:
    """(changes of the models bucket, changes of any other bucket). Exact name comparison:
    S3 bucket names are lower case and notifications carry them as created."""
    mine: list[S3Change] = []
    others: list[S3Change] = []
    for change in changes:
        (mine if change.bucket == bucket else others).append(change)
    return mine, others


def bucket_names(changes: Iterable[S3Change], limit: int = 10) -> list[str]:
    """The distinct bucket names of `changes`, sorted, at most `limit` (for the log)."""
    return sorted({c.bucket for c in changes})[:limit]


def is_relevant(change: S3Change, prefixes: Iterable[str]) -> bool:
    """An object creation/removal under one of the model prefixes (no prefixes: any key)."""
    if not change.event_name.startswith(RELEVANT_EVENT_FAMILIES):
        return False
    prefixes = tuple(prefixes)
    return not prefixes or change.key.startswith(prefixes)


def relevant_changes(changes: Iterable[S3Change], prefixes: Iterable[str]) -> list[S3Change]:
    prefixes = tuple(prefixes)
    return [c for c in changes if is_relevant(c, prefixes)]


def node_targets(cfg: Config) -> list[dict[str, Any]]:
    """SSM targets: this cluster's GPU nodes, resolved by tag when the command runs."""
    return [
        {"Key": f"tag:{cfg.cluster_tag_key}", "Values": [cfg.cluster_name]},
        {"Key": f"tag:{cfg.role_tag_key}", "Values": [cfg.role_value]},
    ]


def running_node_filters(cfg: Config) -> list[dict[str, Any]]:
    """EC2 filters for the same nodes, running only."""
    return [
        {"Name": f"tag:{cfg.cluster_tag_key}", "Values": [cfg.cluster_name]},
        {"Name": f"tag:{cfg.role_tag_key}", "Values": [cfg.role_value]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]


def send_command_kwargs(cfg: Config, relevant_count: int) -> dict[str, Any]:
    """The one SendCommand call of an invocation. Independent of every S3 key by design.

    MaxConcurrency/MaxErrors 100%: every node gets the request even if one node fails
    (the default MaxErrors 0 would stop sending after the first failure).
    """
    return {
        "DocumentName": cfg.document_name,
        "Targets": node_targets(cfg),
        "MaxConcurrency": "100%",
        "MaxErrors": "100%",
        "Comment": f"model-sync: converge cache ({int(relevant_count)} S3 change(s))"[:100],
    }


def key_log_lines(changes: list[S3Change], limit: int = MAX_LOGGED_KEYS) -> list[str]:
    lines = [c.log_line() for c in changes[:limit]]
    if len(changes) > limit:
        lines.append(json.dumps({"more_changes_not_logged": len(changes) - limit}))
    return lines
