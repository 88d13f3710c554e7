"""Validate custom resources against their CRD's openAPIV3Schema, strictly.

The API server silently prunes unknown fields, so a typo in a NodePool would vanish without
a trace: here every object schema that lists `properties` and does not declare
`additionalProperties` / `x-kubernetes-preserve-unknown-fields` rejects unknown fields.
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema

from tests.helpers import load_yaml


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        # int-or-string fields carry no JSON type; allow either.
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def load_validator(crd_path: Path, version: str = "v1") -> jsonschema.Validator:
    crd = load_yaml(crd_path.read_text())
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = _strict(copy.deepcopy(spec["schema"]["openAPIV3Schema"]))
    # metadata is validated by the API server, not by the CRD schema.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def errors(validator: jsonschema.Validator, obj: dict) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)
    )
