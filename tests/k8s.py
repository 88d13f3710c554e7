"""Strict Kubernetes validation of the objects the stacks create (kubernetes-validate)."""

from __future__ import annotations

import re

import kubernetes_validate


def k8s_version(config) -> str:
    return f"{config.kubernetes_version}.0"


def validate_strict(manifest: dict, version: str) -> None:
    """Raises kubernetes_validate.ValidationError on any schema violation or unknown field."""
    kubernetes_validate.validate(manifest, version, strict=True)


def resolve_tokens(obj, placeholder: str = "placeholder"):
    """Replace Terraform interpolations (cross-stack references) by a plain string."""
    if isinstance(obj, dict):
        return {k: resolve_tokens(v, placeholder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_tokens(v, placeholder) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"(?<!\$)\$\{[^}]*\}", placeholder, obj)
    return obj


def terraform_literal(obj):
    """What Terraform makes of escaped literal text (`$${` -> `${`, `%%{` -> `%{`)."""
    if isinstance(obj, dict):
        return {k: terraform_literal(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [terraform_literal(v) for v in obj]
    if isinstance(obj, str):
        return obj.replace("$${", "${").replace("%%{", "%{")
    return obj
