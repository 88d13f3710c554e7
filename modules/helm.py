"""Helm values: static YAML from helm_values/, computed values merged in Python."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

HELM_VALUES_DIR = Path(__file__).resolve().parent.parent / "helm_values"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` wins; nested mappings merge, everything else (lists too) is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(name: str, computed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = yaml.safe_load((HELM_VALUES_DIR / f"{name}.yaml").read_text()) or {}
    return deep_merge(data, computed or {})


def to_yaml(values: Mapping[str, Any]) -> str:
    """Deterministic YAML for a helm_release `values` entry."""
    return yaml.safe_dump(dict(values), sort_keys=True, default_flow_style=False, width=10_000)
