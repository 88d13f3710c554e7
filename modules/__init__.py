"""One construct per concern. The provider fast path must be in place before any construct
module imports a provider resource module."""

import core.providers  # noqa: F401  (side effect: bare provider packages, see its docstring)
