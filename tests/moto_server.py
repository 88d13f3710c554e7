"""moto's server (what its `moto_server` command runs), with moto's list of backend packages
read once instead of once per request.

    python tests/moto_server.py [moto_server's arguments]

Why: the server finds each request's backend with `host in backends.list_of_moto_modules()`
(moto/moto_server/werkzeug_app.py), and that function lists moto's package folder and stats
every one of its ~160 entries on each call. The folder does not change while the server runs.
Over the tests that use the server the list costs ~16% of its CPU (5.3 vs 4.5 CPU-s for
test_gpu_node_scripts, test_model_sync_fleet, test_aws_cli_forkserver and test_docker, two
runs each). Everything else is moto's own server, unchanged.
"""

from __future__ import annotations

import os
import sys

# As the `moto_server` script runs it: this file's folder (tests/, whose modules have names
# such as helpers and k8s) is not a place to import from.
if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from moto import backends
from moto.server import main

MODULES = tuple(backends.list_of_moto_modules())


def list_of_moto_modules() -> tuple[str, ...]:
    return MODULES


backends.list_of_moto_modules = list_of_moto_modules

if __name__ == "__main__":
    sys.exit(main())
