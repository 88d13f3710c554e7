"""moto's server (what its `moto_server` command runs), with DynamoDB's conditional writes
atomic, as they are in DynamoDB, and moto's list of backend packages read once.

    python tests/moto_server.py [moto_server's arguments]

- **Atomic conditional writes.** The server answers each request in a thread of its own, and
  moto's DynamoDB reads an item, checks the condition and writes it back without a lock: two
  job runners claiming one job at the same moment both passed `status = queued` and both
  wrote (attempts 2, two "claimed" 3 ms apart; seen in test_job_runner's duplicate-delivery
  test, about 1 run in 10 beside three busy loops). DynamoDB applies a conditional write to an
  item atomically. Here every DynamoDB action runs under one lock: atomic per item, as in
  DynamoDB, and across items too, which no test relies on. DynamoDB actions never wait (SQS's
  long polls do, and are not serialized).
- **The backend list once.** The server finds each request's backend with
  `host in backends.list_of_moto_modules()` (moto/moto_server/werkzeug_app.py), which lists
  moto's package folder and stats every one of its ~160 entries on each call. The folder does
  not change while the server runs. Over the tests that use the server the list costs ~16% of
  its CPU (5.3 vs 4.5 CPU-s for test_gpu_node_scripts, test_model_sync_fleet,
  test_aws_cli_forkserver and test_docker, two runs each).

Everything else is moto's own server, unchanged. tests/test_moto_server.py checks the first
(concurrent claims of one job); every test that uses the server relies on both.
"""

from __future__ import annotations

import os
import sys
import threading

# As the `moto_server` script runs it: this file's folder (tests/, whose modules have names
# such as helpers and k8s) is not a place to import from.
if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from moto import backends
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

MODULES = tuple(backends.list_of_moto_modules())


def list_of_moto_modules() -> tuple[str, ...]:
    return MODULES


DYNAMODB_LOCK = threading.Lock()
_dynamodb_action = DynamoHandler.call_action


def dynamodb_action(self: DynamoHandler) -> object:
    with DYNAMODB_LOCK:
        return _dynamodb_action(self)


def install() -> None:
    backends.list_of_moto_modules = list_of_moto_modules
    DynamoHandler.call_action = dynamodb_action  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(main())
