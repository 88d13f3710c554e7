"""The tests' deferred jsii assembly loads (tests/jsii_loads.py): importing starts no Node.js;
the first other request sends every load first, in import order, then itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: this process's kernel may have started already.
PROBE = """
import json, sys
from jsii._kernel.providers import process
sent, started = [], []
send, start = process._NodeProcess.send, process._NodeProcess.start
def recording_send(self, request, response_type):
    sent.append(f"{type(request).__name__} {getattr(request, 'name', '')}".strip())
    return send(self, request, response_type)
def recording_start(self):
    started.append(len(sent))
    return start(self)
process._NodeProcess.send, process._NodeProcess.start = recording_send, recording_start
from tests.jsii_loads import defer_assembly_loads
defer_assembly_loads()
defer_assembly_loads()  # idempotent: loads are not deferred twice
import cdktf
after_import = (list(started), list(sent))
token = cdktf.Fn.join("-", ["a", "b"])  # a static call: the kernel's first other request
print(json.dumps({"after_import": after_import, "started": started, "sent": sent, "token": token}))
"""


def test_imports_start_no_kernel_and_the_first_request_sends_the_loads_first():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["after_import"] == [[], []]
    assert out["started"] == [0]  # one Node.js process, started by the first request
    assert out["sent"] == ["LoadRequest constructs", "LoadRequest cdktf", "StaticInvokeRequest"]
    assert out["token"].startswith("${TfToken[")
