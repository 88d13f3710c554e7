"""jsii assemblies load when a test first needs them, not when a test module imports them.

Importing `cdktf` or a provider resource module loads its jsii assembly into the Node.js kernel
at once: the kernel starts and `require`s the assembly's JavaScript (the aws provider's ~2,200
modules: ~5 s of CPU). Test modules import `modules.*` for constants and pure functions, so
every pytest-xdist worker paid that while collecting, though only the tests that build
constructs (the session's synthesis, the determinism and stable-address tests) send the kernel
anything else, and they tend to run in one worker.

:func:`defer_assembly_loads` keeps each load request, in order, and sends them all just before
the kernel's first other request; a worker that never builds a construct never starts Node.js.
What the kernel receives, and in what order, is unchanged; only when it starts. The product
loads eagerly as before (this is the tests' process only).
"""

from __future__ import annotations


def defer_assembly_loads() -> None:
    """Patch jsii's process provider (idempotent; call before the first assembly load)."""
    from jsii._kernel.providers import process
    from jsii._kernel.types import LoadResponse

    if getattr(process.ProcessProvider.load, "deferred", False):
        return
    pending: list = []
    send = process._NodeProcess.send

    def load(self, request):  # ProcessProvider.load; jsii's Kernel.load ignores the response
        pending.append(request)

    def send_after_loads(self, request, response_type):  # _NodeProcess.send
        if pending:
            queued = list(pending)
            pending.clear()
            for load_request in queued:
                send(self, load_request, LoadResponse)
        return send(self, request, response_type)

    load.deferred = True  # type: ignore[attr-defined]
    process.ProcessProvider.load = load
    process._NodeProcess.send = send_after_loads
