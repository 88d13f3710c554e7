"""Stacks split by deployment cycle: state bootstrap, platform, workload, edge."""

import core.providers  # noqa: F401  (side effect: bare provider packages, see its docstring)
