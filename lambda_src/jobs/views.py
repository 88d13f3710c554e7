"""What callers see of a job: the public view (GET /jobs/{id}, DELETE, webhooks) and the
summary (GET /jobs). Pure: the presigner is passed in.

Runner internals stay out: `runner` (a pod name), `lease_until`, `prompt_id`, the workflow
and its S3 key, the caller ARN and the webhook URL (it may carry a receiver's secret token in
its query). They say nothing a pipeline can act on, and pod names only map the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

try:  # imported as the package lambda_src.jobs (tests)
    from . import contract
except ImportError:  # packaged flat: every module at the root of the zip
    import contract  # type: ignore[no-redef]

# Presigned output links live this long (bounded also by the signing role's session).
PRESIGN_SECONDS = 3600

Presigner = Callable[[str], str]


def iso(epoch: Any) -> str | None:
    """Epoch seconds -> ISO 8601 UTC ("2025-01-31T12:00:00Z"); None stays None."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def links(job_id: str) -> dict[str, str]:
    return {"self": f"/jobs/{job_id}"}


def created_view(item: Mapping[str, Any]) -> dict[str, Any]:
    """POST /jobs answer (201 for a new job, 200 for a client_token replay)."""
    return {"job_id": item[contract.JOB_ID], "status": item[contract.STATUS], "links": links(item[contract.JOB_ID])}


def summary_view(item: Mapping[str, Any]) -> dict[str, Any]:
    """One job of GET /jobs: what a dashboard lists (outputs: GET the job itself)."""
    job_id = item[contract.JOB_ID]
    return {
        "job_id": job_id,
        "status": item.get(contract.STATUS),
        "cancel_requested": bool(item.get(contract.CANCEL_REQUESTED, False)),
        "created_at": iso(item.get(contract.CREATED_AT)),
        "started_at": iso(item.get(contract.STARTED_AT)),
        "finished_at": iso(item.get(contract.FINISHED_AT)),
        "attempts": int(item.get(contract.ATTEMPTS, 0) or 0),
        "error": item.get(contract.ERROR),
        "links": links(job_id),
    }


def _outputs(item: Mapping[str, Any], presign: Presigner) -> list[dict[str, str]]:
    prefix = contract.output_prefix(item[contract.JOB_ID])
    keys = item.get(contract.OUTPUTS) or []
    return [{"key": key, "name": key.removeprefix(prefix), "url": presign(key)} for key in keys if isinstance(key, str)]


def public_view(item: Mapping[str, Any], presign: Presigner, now: int) -> dict[str, Any]:
    """The whole public state of one job, outputs as presigned GET links (PRESIGN_SECONDS)."""
    view = summary_view(item)
    outputs = _outputs(item, presign)
    inputs = item.get(contract.INPUTS) or {}
    view.update(
        {
            "expires_at": iso(item.get(contract.EXPIRES_AT)),
            "inputs": sorted(inputs) if isinstance(inputs, dict) else [],
            "outputs": outputs,
            "output_urls_expire_at": iso(now + PRESIGN_SECONDS) if outputs else None,
            "has_webhook": bool(item.get(contract.WEBHOOK_URL)),
        }
    )
    return view
