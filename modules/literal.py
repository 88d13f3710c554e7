"""Literal text inside Terraform JSON.

In Terraform's JSON syntax every string is a template: `${...}` is an interpolation and
`%{...}` a directive, wherever they appear. A shell script, a Python program or a YAML file
placed verbatim into a resource argument (a ConfigMap's data, a helm_release's values, an
EC2NodeClass's userData) would be read as references and refused ("Invalid reference") or,
worse, interpolated. Doubling the first character (`$${`, `%%{`) is Terraform's literal
escape.

cdktf tokens (`${TfToken[TOKEN.n]}`, the placeholders of values known only at plan time,
such as another stack's output) are left alone: cdktf replaces them with real references
when it synthesizes. Apply the escape exactly once, where literal text meets Terraform.
"""

from __future__ import annotations

import re
from typing import Any

# `${` that does not open a cdktf token placeholder.
_INTERPOLATION = re.compile(r"\$\{(?!TfToken\[)")


def escape_text(text: str) -> str:
    """`text` as a Terraform string that evaluates to exactly `text` (tokens kept)."""
    return _INTERPOLATION.sub("$${", text).replace("%{", "%%{")


def escape_literals(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, scalars) with every string escaped."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {key: escape_literals(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_literals(item) for item in value]
    return value
