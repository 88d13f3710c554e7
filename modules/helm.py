"""Helm values: static YAML from helm_values/, computed values merged in Python."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cdktf import AssetType, TerraformAsset, TerraformStack
from constructs import Construct

from modules.literal import escape_text

HELM_VALUES_DIR = Path(__file__).resolve().parent.parent / "helm_values"
# A local chart that applies the objects given in .Values.manifests verbatim: for custom
# resources whose CRDs another release installs (a helm_release needs no CRD at plan time,
# unlike kubernetes_manifest).
MANIFESTS_CHART = Path(__file__).resolve().parent.parent / "charts" / "manifests"


def manifests_chart(scope: Construct) -> str:
    """The manifests chart's path in the stack's assets (copied once per stack)."""
    stack = TerraformStack.of(scope)
    existing = stack.node.try_find_child("manifests_chart")
    asset = (
        existing
        if isinstance(existing, TerraformAsset)
        else TerraformAsset(stack, "manifests_chart", path=str(MANIFESTS_CHART), type=AssetType.DIRECTORY)
    )
    return asset.path


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
    """Deterministic YAML for a helm_release `values` entry, Terraform-escaped: the values
    carry literal programs (the GPU nodes' user-data) whose `${VAR}` Terraform would otherwise
    read as references (modules/literal.py)."""
    return escape_text(yaml.safe_dump(dict(values), sort_keys=True, default_flow_style=False, width=10_000))
