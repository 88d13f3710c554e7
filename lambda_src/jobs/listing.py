"""GET /jobs: newest jobs first, from STATUS_INDEX (partition status, sort created_at).

Without a status filter, every status is queried (at most `limit` items each) and the
results merged newest first; the page token remembers, per status, the last job taken from
it, so the next page resumes every status where this one stopped. Each status is consumed in
the order DynamoDB returned it (a k-way merge of sorted streams), so no job is skipped or
repeated while statuses do not change; a job that changes status between two pages may show
up twice or not at all (listing mutable data; GET /jobs/{id} is the authority).

Pure: `Fetch` does the DynamoDB query. The token is opaque to callers (base64url of JSON),
validated strictly when it comes back, and bound to the query it was made for.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

try:  # imported as the package lambda_src.jobs (tests)
    from . import contract
    from .validation import RequestError
except ImportError:  # packaged flat: every module at the root of the zip
    import contract  # type: ignore[no-redef]
    from validation import RequestError  # type: ignore[no-redef]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_TOKEN_CHARS = 4096
PARAMS = ("status", "limit", "next")
ALL = "*"

# A position inside one status: the index key of the last job taken from it (None: start).
Cursor = dict[str, Any] | None


@dataclass(frozen=True)
class Page:
    """What one status's query returned: items newest first, and whether more follow."""

    items: list[dict[str, Any]]
    more: bool


# (status, limit, exclusive start key or None) -> Page
Fetch = Callable[[str, int, Cursor], Page]


@dataclass(frozen=True)
class Query:
    statuses: tuple[str, ...]
    limit: int
    cursors: dict[str, Cursor]  # only statuses not yet exhausted

    @property
    def scope(self) -> str:
        return self.statuses[0] if len(self.statuses) == 1 else ALL


def _bad(message: str, field: str) -> RequestError:
    return RequestError(400, message, field)


def cursor_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """The index key of `item` (table key + index keys): a valid ExclusiveStartKey."""
    return {
        contract.JOB_ID: item[contract.JOB_ID],
        contract.STATUS: item[contract.STATUS],
        contract.CREATED_AT: int(item[contract.CREATED_AT]),
    }


def encode_token(scope: str, cursors: Mapping[str, Cursor]) -> str:
    """Opaque to callers, but plain data (no secret, nothing signed): a forged token can only
    name a position in the index, and `decode_token` checks its shape and its query."""
    doc = {
        "v": 1,
        "q": scope,
        "c": {s: (None if c is None else [c[contract.CREATED_AT], c[contract.JOB_ID]]) for s, c in cursors.items()},
    }
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, scope: str, statuses: Sequence[str]) -> dict[str, Cursor]:
    """The per-status cursors of a token made for the same query (else 400)."""
    invalid = _bad("next is not a token this API returned for this query; fix: pass links.next back unchanged", "next")
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise invalid from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("q") != scope or not isinstance(doc.get("c"), dict):
        raise invalid
    cursors: dict[str, Cursor] = {}
    for status, position in doc["c"].items():
        if status not in statuses:
            raise invalid
        if position is None:
            cursors[status] = None
            continue
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not isinstance(position[0], int)
            or isinstance(position[0], bool)
            or position[0] < 0
            or not isinstance(position[1], str)
            or not contract.JOB_ID_PATTERN.fullmatch(position[1])
        ):
            raise invalid
        cursors[status] = {contract.JOB_ID: position[1], contract.STATUS: status, contract.CREATED_AT: position[0]}
    return cursors


def parse_query(params: Mapping[str, str] | None) -> Query:
    """?status=&limit=&next= -> Query (400 for anything else)."""
    params = params or {}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise _bad(f"unknown parameter {json.dumps(unknown[0][:40])}; fix: use only {', '.join(PARAMS)}", unknown[0])
    status = params.get("status")
    if status is not None and status not in contract.STATUSES:
        raise _bad(f"status must be one of {', '.join(contract.STATUSES)}", "status")
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise _bad(f"limit must be a whole number from 1 to {MAX_LIMIT}", "limit")
    statuses = (status,) if status else contract.STATUSES
    scope = status or ALL
    token = params.get("next")
    cursors: dict[str, Cursor] = decode_token(token, scope, statuses) if token else dict.fromkeys(statuses)
    return Query(statuses=statuses, limit=int(raw_limit), cursors=cursors)


def _newest_first(item: Mapping[str, Any]) -> tuple[int, str]:
    return int(item[contract.CREATED_AT]), str(item[contract.JOB_ID])


def merge(
    pages: Mapping[str, Page], starts: Mapping[str, Cursor], limit: int
) -> tuple[list[dict[str, Any]], dict[str, Cursor]]:
    """Take up to `limit` jobs, newest first, from per-status pages; return them and the
    cursors of the statuses that still have jobs (exhausted ones are left out)."""
    taken = dict.fromkeys(pages, 0)
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        # A status whose fetched items are used up but has more cannot say what comes next.
        if any(taken[s] == len(p.items) and p.more for s, p in pages.items()):
            break
        heads = [s for s, p in pages.items() if taken[s] < len(p.items)]
        if not heads:
            break
        best = max(heads, key=lambda s: _newest_first(pages[s].items[taken[s]]))
        out.append(pages[best].items[taken[best]])
        taken[best] += 1
    cursors: dict[str, Cursor] = {}
    for status, page in pages.items():
        if taken[status] == len(page.items) and not page.more:
            continue  # exhausted
        cursors[status] = cursor_of(page.items[taken[status] - 1]) if taken[status] else starts.get(status)
    return out, cursors


def list_jobs(query: Query, fetch: Fetch) -> tuple[list[dict[str, Any]], str | None]:
    """One page: (items newest first, token of the next page or None). At most one query per
    status, each for at most `limit` items."""
    pages = {status: fetch(status, query.limit, cursor) for status, cursor in query.cursors.items()}
    items, cursors = merge(pages, query.cursors, query.limit)
    return items, (encode_token(query.scope, cursors) if cursors else None)
