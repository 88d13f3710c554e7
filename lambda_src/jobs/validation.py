"""POST /jobs: from the raw API Gateway body to a checked `JobRequest`. Pure: no AWS call, no
logging, no clock, so every rule is unit-testable and the handler stays thin.

Every refusal is a `RequestError` whose message names what is wrong and how to fix it, and
whose `field` names where (`workflow`, `inputs.<name>.base64`, `webhook_url`, ...), because
the callers are pipelines whose authors read these errors in CI logs.

Whether an `s3_key` input exists is checked by the API with S3 (not here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

try:  # imported as the package lambda_src.jobs (tests)
    from . import contract
except ImportError:  # packaged flat: every module at the root of the zip
    import contract  # type: ignore[no-redef]

FIELDS = ("workflow", "inputs", "webhook_url", "client_token")
# Each input is an S3 object the runner downloads before the run: bound the fan-out.
MAX_INPUTS = 64
MAX_NODE_ID_CHARS = 128
MAX_WEBHOOK_URL_CHARS = 2048
MAX_S3_KEY_BYTES = 1024
# Printable ASCII without spaces: safe in logs, headers and keys, and enough for UUIDs,
# "<pipeline>/<run>/<step>" and the like.
CLIENT_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_URL_CHARS = re.compile(r"[\x21-\x7e]+", re.ASCII)
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.ASCII)
# Names that never reach a public receiver: special-use and common private top-level domains.
_PRIVATE_TLDS = frozenset(
    {"localhost", "local", "localdomain", "internal", "intranet", "lan", "home", "corp", "arpa", "test", "invalid"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RequestError(Exception):
    """A request the API refuses: HTTP `status`, a message with the fix, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True)
class JobRequest:
    workflow: dict[str, Any]
    workflow_json: bytes  # compact, keys sorted, UTF-8: what goes to S3 when too large for a message
    inline_inputs: dict[str, bytes]  # name -> decoded bytes
    s3_inputs: dict[str, str]  # name -> key in the inputs bucket
    webhook_url: str | None
    client_token: str | None
    # SHA-256 of the normalized request: a retried request with the same client_token must be
    # the same request (compared without the token itself and without base64 line breaks).
    fingerprint: str


def _bad(message: str, field: str | None) -> NoReturn:
    raise RequestError(400, message, field)


def _show(value: str, limit: int = 80) -> str:
    """A caller's string, quoted and cut short, for an error message."""
    return json.dumps(value if len(value) <= limit else value[:limit] + "...")


# --- body ------------------------------------------------------------------------------------


def decode_body(body: Any, is_base64: bool) -> bytes:
    """The request body as bytes, within MAX_REQUEST_BYTES (413 beyond)."""
    if body is None or body == "":
        _bad("the request has no body; fix: send the job as a JSON object", "body")
    if not isinstance(body, str):
        _bad("the request body is not text; fix: send the job as a JSON object", "body")
    too_large = RequestError(
        413,
        f"the body is larger than {contract.MAX_REQUEST_BYTES} bytes; fix: upload large images to the inputs "
        "bucket and name them with inputs.<name>.s3_key instead of base64",
        "body",
    )
    if is_base64:
        if len(body) > (contract.MAX_REQUEST_BYTES + 2) // 3 * 4:
            raise too_large
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            _bad("the body is marked base64 but does not decode; fix: send it as JSON text", "body")
    else:
        if len(body) > contract.MAX_REQUEST_BYTES:  # characters <= bytes: cheap early refusal
            raise too_large
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            _bad("the body is not valid UTF-8 text; fix: send UTF-8 encoded JSON", "body")
    if len(raw) > contract.MAX_REQUEST_BYTES:
        raise too_large
    return raw


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity (other JSON parsers, the runner's included, would
    reject or mangle them)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _bad("the body is not valid UTF-8; fix: send UTF-8 encoded JSON", "body")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        _bad(
            f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix: send a JSON object",
            "body",
        )
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        _bad(f"the body is not valid JSON ({reason}); fix: send a JSON object", "body")


# --- workflow --------------------------------------------------------------------------------


def check_workflow(value: Any) -> dict[str, Any]:
    """An API-format workflow: {node id: {"class_type": str, "inputs": {...}}, ...}."""
    if isinstance(value, dict) and (isinstance(value.get("nodes"), list) or "links" in value):
        _bad(
            'workflow is in ComfyUI\'s UI format (it has "nodes"/"links"); fix: in ComfyUI use '
            "Workflow > Export (API) and send that file's content as workflow",
            "workflow",
        )
    if not isinstance(value, dict):
        _bad(
            'workflow must be a JSON object in API format, {"<node id>": {"class_type": ..., "inputs": {...}}}; '
            "fix: in ComfyUI use Workflow > Export (API)",
            "workflow",
        )
    if not value:
        _bad("workflow has no nodes; fix: send an API-format workflow with at least one node", "workflow")
    for node_id, node in value.items():
        if not node_id or len(node_id) > MAX_NODE_ID_CHARS or _CONTROL.search(node_id):
            _bad(
                f"workflow has a node id that is empty, longer than {MAX_NODE_ID_CHARS} characters or has control "
                "characters; fix: export the workflow again with Workflow > Export (API)",
                "workflow",
            )
        where = f"workflow.{node_id}"
        if not isinstance(node, dict):
            _bad(
                f'node {_show(node_id)} is not an object; fix: each node is {{"class_type": ..., "inputs": {{...}}}}',
                where,
            )
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type.strip():
            _bad(
                f"node {_show(node_id)} has no class_type; fix: export the workflow with Workflow > Export (API)",
                f"{where}.class_type",
            )
        if not isinstance(node.get("inputs"), dict):
            _bad(
                f'node {_show(node_id)} has no "inputs" object; fix: export the workflow with Workflow > Export (API)',
                f"{where}.inputs",
            )
    return value


def encode_workflow(workflow: dict[str, Any]) -> bytes:
    """The workflow as compact UTF-8 JSON; refused if it holds text that is not valid Unicode
    (lone surrogates from \\ud800-style escapes, which ComfyUI could not read)."""
    text = json.dumps(workflow, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        _bad("workflow has text that is not valid Unicode (a lone surrogate escape); fix: export it again", "workflow")


# --- inputs ----------------------------------------------------------------------------------


def _decode_base64(text: Any, field: str) -> bytes:
    """Standard base64; line breaks and spaces (as `base64` and many encoders wrap) are ignored."""
    if not isinstance(text, str):
        _bad("base64 must be a string; fix: the file's bytes, base64-encoded", field)
    if text.startswith("data:"):
        _bad('base64 is a data: URL; fix: send only what follows "base64," in it', field)
    compact = re.sub(r"\s+", "", text)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        _bad("base64 does not decode; fix: standard base64 (RFC 4648, alphabet A-Z a-z 0-9 + /, with = padding)", field)
    if not data:
        _bad("base64 decodes to an empty file; fix: send the image's bytes", field)
    return data


def check_s3_key(key: Any, field: str) -> str:
    """A key in the inputs bucket (the bucket is implied: callers name keys, never buckets)."""
    if not isinstance(key, str) or not key:
        _bad("s3_key must be a non-empty string: an object key in the inputs bucket", field)
    if key.lower().startswith(("s3://", "https://", "http://")):
        _bad(
            f"s3_key {_show(key)} is a URL; fix: give only the object key in the inputs bucket (no s3://bucket/)", field
        )
    if key.startswith("/") or key.endswith("/"):
        _bad(
            f"s3_key {_show(key)} starts or ends with '/'; fix: the full key of one object, e.g. uploads/cat.png", field
        )
    if _CONTROL.search(key) or len(key.encode("utf-8", "surrogatepass")) > MAX_S3_KEY_BYTES:
        _bad(f"s3_key has control characters or is longer than {MAX_S3_KEY_BYTES} bytes; fix: a valid S3 key", field)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        _bad("s3_key is not valid Unicode text; fix: a valid S3 key", field)
    return key


def check_inputs(value: Any) -> tuple[dict[str, bytes], dict[str, str]]:
    """(inline inputs: name -> bytes, S3 inputs: name -> key)."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        _bad('inputs must be an object, {"<name.png>": {"base64": ...} or {"s3_key": ...}}', "inputs")
    if len(value) > MAX_INPUTS:
        _bad(f"inputs has {len(value)} entries, more than {MAX_INPUTS}; fix: send fewer images per job", "inputs")
    inline: dict[str, bytes] = {}
    by_key: dict[str, str] = {}
    for name, spec in value.items():
        field = f"inputs.{name}" if len(name) <= 128 else "inputs"
        if not contract.INPUT_NAME_PATTERN.fullmatch(name):
            _bad(
                f"input name {_show(name)} is not allowed; fix: 1 to 128 letters, digits, '_', '.', '-', starting with "
                "a letter, digit or '_' (no folders), as the workflow's LoadImage node names it",
                field,
            )
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"base64", "s3_key"} & spec.keys()):
            _bad(f'input {_show(name)} must be {{"base64": "..."}} or {{"s3_key": "..."}}, exactly one of them', field)
        if "base64" in spec:
            inline[name] = _decode_base64(spec["base64"], f"{field}.base64")
        else:
            by_key[name] = check_s3_key(spec["s3_key"], f"{field}.s3_key")
    return inline, by_key


# --- webhook URL -----------------------------------------------------------------------------


def is_public_address(text: str) -> bool:
    """An address on the public internet: not private, loopback, link-local, shared (CGNAT),
    reserved, documentation, multicast or unspecified (also behind an IPv4-mapped IPv6)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _host_problem(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if is_public_address(host):
            return None
        return f"host {host} is a private, loopback, link-local or reserved address; fix: a public https receiver"
    labels = host.removesuffix(".").split(".")
    if len(labels) < 2 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return "host is not a fully qualified DNS name; fix: e.g. https://hooks.example.com/comfyui"
    tld = labels[-1]
    if not tld[0].isalpha() or tld in _PRIVATE_TLDS:
        return f"host {_show(host)} is not a public DNS name; fix: a receiver reachable on the internet"
    return None


def webhook_url_problem(url: Any) -> str | None:
    """Why `url` may not receive webhooks, or None. The API refuses such URLs up front and the
    webhook sender checks again (and checks the addresses the name resolves to) before it
    connects: job results and their signatures must only go to public https receivers."""
    if not isinstance(url, str):
        return "webhook_url must be a string"
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return f"webhook_url is longer than {MAX_WEBHOOK_URL_CHARS} characters"
    if not _URL_CHARS.fullmatch(url):
        return (
            "webhook_url has spaces, control or non-ASCII characters; fix: percent-encode them (and punycode the host)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "webhook_url is not a valid URL"
    if parts.scheme.lower() != "https":
        return "webhook_url must use https (a webhook carries the job's result and its signature)"
    if "@" in parts.netloc:
        return (
            "webhook_url must not contain credentials; fix: verify the signature header instead (or use a path token)"
        )
    if not parts.hostname:
        return "webhook_url has no host"
    return _host_problem(parts.hostname)


# --- the request -----------------------------------------------------------------------------


def _fingerprint(
    workflow: dict[str, Any], inline: dict[str, bytes], by_key: dict[str, str], webhook_url: str | None
) -> str:
    normalized = {
        "workflow": workflow,
        "inputs": {
            **{name: {"sha256": hashlib.sha256(data).hexdigest()} for name, data in inline.items()},
            **{name: {"s3_key": key} for name, key in by_key.items()},
        },
        "webhook_url": webhook_url,
    }
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_document(doc: Any) -> JobRequest:
    """A parsed body -> JobRequest."""
    if not isinstance(doc, dict):
        _bad('the body must be a JSON object, {"workflow": {...}, ...}', "body")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        hint = ' (ComfyUI\'s /prompt calls the workflow "prompt"; here it is "workflow")' if "prompt" in unknown else ""
        _bad(f"unknown field {_show(unknown[0])}{hint}; fix: remove it (fields: {', '.join(FIELDS)})", unknown[0])
    if "workflow" not in doc:
        _bad('workflow is missing; fix: {"workflow": <the API-format workflow>}', "workflow")
    workflow = check_workflow(doc["workflow"])
    workflow_json = encode_workflow(workflow)
    inline, by_key = check_inputs(doc.get("inputs"))
    webhook_url = doc.get("webhook_url")
    if webhook_url is not None:
        problem = webhook_url_problem(webhook_url)
        if problem:
            _bad(problem, "webhook_url")
    token = doc.get("client_token")
    if token is not None and (not isinstance(token, str) or not CLIENT_TOKEN_PATTERN.fullmatch(token)):
        _bad("client_token must be 1 to 128 printable ASCII characters without spaces (e.g. a UUID)", "client_token")
    return JobRequest(
        workflow=workflow,
        workflow_json=workflow_json,
        inline_inputs=inline,
        s3_inputs=by_key,
        webhook_url=webhook_url,
        client_token=token,
        fingerprint=_fingerprint(workflow, inline, by_key, webhook_url),
    )


def parse_request(body: Any, is_base64: bool) -> JobRequest:
    """The body of POST /jobs as API Gateway hands it over -> JobRequest (or RequestError)."""
    return check_document(parse_json(decode_body(body, is_base64)))


def job_id_or_none(value: Any) -> str | None:
    """A well-formed job id, or None (the API answers 404 for malformed and unknown ids alike:
    a malformed id names no job)."""
    if isinstance(value, str) and contract.JOB_ID_PATTERN.fullmatch(value):
        return value
    return None
