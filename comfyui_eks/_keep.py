"""What `destroy` keeps, read from a stack's synthesized Terraform JSON.

Terraform refuses to destroy a resource with `lifecycle.prevent_destroy`, and refuses the
whole plan with it. The deliberate way to destroy everything else is to remove the protected
resources from the state first (`terraform state rm`): Terraform forgets them and they stay in
AWS. Three things must go with them so that what stays is whole:

1. Seeds: resources Terraform cannot or must not destroy: every `prevent_destroy` resource
   (data buckets, KMS keys, the job table, ...), ECR repositories (deleting one that holds
   images fails, and the images are yours), and Cognito user pools with deletion protection
   (its users; the deletion fails otherwise).
2. Their construct: resources of the same construct (same construct path prefix, e.g.
   comfyui-platform/data/models/*) that refer to something kept, directly or through another
   such resource. For a bucket: its policy, public access block, encryption, versioning,
   lifecycle, logging configuration and destroy guard. Destroying those would strip a kept
   bucket of its protection, or run its guard, which stops the destroy while the bucket holds
   data. For a key: its alias.
3. Data holders they point at: a bucket or key referenced by something kept (the access-log
   bucket a kept bucket logs into; it holds logs, and its guard would fail the destroy), with
   its construct, and so on until nothing changes.

Resources of other constructs that merely refer to a kept one (the model-sync S3 notification
on the models bucket, queues encrypted with the data key) are destroyed: they belong to
what goes away.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]
# Resource types that hold data, followed from a kept resource (rule 3).
DATA_HOLDERS = ("aws_s3_bucket", "aws_kms_key")
_REFERENCE = re.compile(r"(?<![A-Za-z0-9_.])([a-z][a-z0-9_]*)\.([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Kept:
    """A resource `destroy` leaves in AWS (and removes from the state)."""

    address: str
    type: str
    construct_path: str
    reason: str
    # What identifies it to a person (bucket name, repository, ...) when the JSON says it literally.
    label: str = ""


def resources(document: Json) -> dict[str, Json]:
    """Managed resources by address (`type.name`)."""
    found: dict[str, Json] = {}
    for rtype, items in document.get("resource", {}).items():
        for name, body in items.items():
            found[f"{rtype}.{name}"] = body
    return found


def construct_path(body: Json) -> str:
    path = body.get("//", {}).get("metadata", {}).get("path", "")
    return str(path)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "//":
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def references(body: Json, addresses: set[str]) -> set[str]:
    """Managed resources this body refers to (interpolations and depends_on)."""
    found = set()
    for text in _strings(body):
        for match in _REFERENCE.finditer(text):
            address = f"{match.group(1)}.{match.group(2)}"
            if address in addresses:
                found.add(address)
    return found


def _seed_reason(rtype: str, body: Json) -> str | None:
    if body.get("lifecycle", {}).get("prevent_destroy") is True:
        return "prevent_destroy"
    if rtype == "aws_ecr_repository":
        return "image repository (your images; ECR refuses to delete a repository that holds any)"
    if rtype == "aws_cognito_user_pool" and body.get("deletion_protection") == "ACTIVE":
        return "Cognito user pool with deletion protection (your users)"
    return None


def _label(rtype: str, body: Json) -> str:
    for key in ("bucket", "name", "function_name"):
        value = body.get(key)
        if isinstance(value, str) and "${" not in value:
            return value
    return ""


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def keep_set(document: Json, *, seeds_only_protected: bool = False) -> dict[str, Kept]:
    """Every resource `destroy` keeps, by address (see the module docstring for the rules).
    `seeds_only_protected`: only resources whose destroy AWS itself refuses and no setting
    lifts (Cognito deletion protection): what destroy --delete-data still keeps."""
    bodies = resources(document)
    addresses = set(bodies)
    refs = {address: references(body, addresses) for address, body in bodies.items()}
    kept: dict[str, Kept] = {}

    def add(address: str, reason: str) -> None:
        if address not in kept:
            body = bodies[address]
            rtype = address.split(".", 1)[0]
            kept[address] = Kept(address, rtype, construct_path(body), reason, _label(rtype, body))

    for address, body in bodies.items():
        rtype = address.split(".", 1)[0]
        reason = _seed_reason(rtype, body)
        if reason is None or (seeds_only_protected and rtype != "aws_cognito_user_pool"):
            continue
        add(address, reason)
    changed = True
    while changed:
        changed = False
        for address in sorted(addresses - set(kept)):
            body = bodies[address]
            group = _parent(construct_path(body))
            linked = [k for k in refs[address] if k in kept and _parent(kept[k].construct_path) == group]
            if group and linked:
                add(address, f"belongs with {linked[0]}")
                changed = True
        for holder in sorted({r for k in kept for r in refs[k]} - set(kept)):
            if holder.split(".", 1)[0] in DATA_HOLDERS:
                user = next(k for k in sorted(kept) if holder in refs[k])
                add(holder, f"holds data {user} needs")
                changed = True
    return kept


# --- the record of what was kept -----------------------------------------------------------
# Written next to the state stack's local state file (the repository root), because cdktf.out/
# is rewritten by every synthesis. `destroy --delete-data` deletes what it lists; `deploy`
# imports it back (below).


def record_path(project: str, outdir: Path) -> Path:
    return outdir.resolve().parent / f"{project}-kept.json"


def import_id(rtype: str, values: Json) -> str | None:
    """The ID `terraform import` takes for a kept resource (its state `id` but for a few types);
    None for what cannot be imported (terraform_data: created afresh)."""
    if rtype == "terraform_data":
        return None
    if rtype == "aws_cognito_user_pool_client" and values.get("user_pool_id"):
        return f"{values['user_pool_id']}/{values.get('id', '')}"
    identifier = values.get("id")
    return str(identifier) if identifier else None


def entries(stack_name: str, directory: Path, kept: dict[str, Kept], values: dict[str, Json]) -> list[Json]:
    """Record entries for the kept resources that are in the state (with their IDs)."""
    found = []
    for address, item in sorted(kept.items()):
        if address not in values:
            continue
        state = values[address]
        identifier = import_id(item.type, state)
        found.append(
            {
                "stack": stack_name,
                "address": address,
                "type": item.type,
                "id": str(state.get("id", "")),
                "label": item.label or str(state.get("bucket") or state.get("name") or state.get("id") or ""),
                "reason": item.reason,
                "import_id": identifier,
                "import": f"terraform -chdir={directory} import {address} {identifier}" if identifier else "",
            }
        )
    return found


# `deploy` re-adopts what `destroy` kept: Terraform (>= 1.5) `import` blocks in a file of their
# own next to cdk.tf.json (Terraform reads every *.tf.json of the directory), so the next apply
# imports them instead of failing to create buckets that exist. Resources without an import ID
# (the buckets' destroy guards, terraform_data) are simply created again.
IMPORTS_FILE = "comfyui-eks-imports.tf.json"


def recorded(path: Path, stack_name: str, document: Json) -> list[Json]:
    """Record entries of this stack that its configuration still declares: after its next
    successful apply they are all managed again (imported, or created anew)."""
    declared = set(resources(document))
    return [item for item in load_record(path) if item.get("stack") == stack_name and item.get("address") in declared]


def write_imports(directory: Path, items: list[Json]) -> int:
    """Import blocks for the importable `items`; their number (0: no file, an old one removed)."""
    target = directory / IMPORTS_FILE
    blocks = [{"to": item["address"], "id": item["import_id"]} for item in items if item.get("import_id")]
    if not blocks:
        target.unlink(missing_ok=True)
        return 0
    target.write_text(json.dumps({"import": blocks}, indent=2) + "\n", encoding="utf-8")
    return len(blocks)


def drop_from_record(path: Path, items: list[Json]) -> None:
    """Forget entries that are managed by Terraform again."""
    done = {(i.get("stack"), i.get("address")) for i in items}
    left = [i for i in load_record(path) if (i.get("stack"), i.get("address")) not in done]
    path.unlink(missing_ok=True)
    save_record(path, left)


def load_record(path: Path) -> list[Json]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    items = data.get("kept", []) if isinstance(data, dict) else []
    return [item for item in items if isinstance(item, dict)]


def save_record(path: Path, items: list[Json]) -> None:
    """Merge `items` into the record (one entry per stack and address); delete it when empty."""
    merged = {(i.get("stack"), i.get("address")): i for i in load_record(path)}
    merged.update({(i["stack"], i["address"]): i for i in items})
    if not merged:
        path.unlink(missing_ok=True)
        return
    document = {
        "about": "Resources `comfyui-eks destroy` kept (removed from Terraform's state, still in AWS). "
        "`comfyui-eks deploy` imports them back; `comfyui-eks destroy --delete-data` deletes them.",
        "kept": sorted(merged.values(), key=lambda i: (str(i.get("stack")), str(i.get("address")))),
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
