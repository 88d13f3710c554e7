"""Fast loading of the prebuilt provider bindings; import this before any provider module.

`import cdktf_cdktf_provider_aws` costs ~10 s and ~1.2 GB because the package `__init__`
imports all ~2,200 resource modules, and importing one resource module still runs that
`__init__` first. Registering a bare package object in `sys.modules` instead means a
resource module's `from .._jsii import *` loads only the package's jsii assembly, and we
pay only for the resource modules we use. The synthesized output is byte-identical
(see docs/benchmarks.md).

`modules/__init__.py` and `stacks/__init__.py` import this module first, so ordinary
typed imports (`from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket`) stay fast.
"""

from __future__ import annotations

import importlib.util
import sys
import types

PROVIDER_PACKAGES = (
    "cdktf_cdktf_provider_aws",
    "cdktf_cdktf_provider_helm",
    "cdktf_cdktf_provider_kubernetes",
)


def register_bare_packages() -> None:
    """Put an empty package object for each provider in sys.modules (idempotent)."""
    for name in PROVIDER_PACKAGES:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"{name} is not installed; fix: run scripts/synth.sh, which installs the Pipfile")
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        package.__package__ = name
        sys.modules[name] = package


register_bare_packages()
