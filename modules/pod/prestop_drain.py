"""preStop hook of the ComfyUI container: let a running generation finish before SIGTERM.

Kubernetes runs this before it sends SIGTERM to ComfyUI (node drain, Spot interruption,
scale-down, rollout). It polls ComfyUI's /queue until nothing runs or waits, or until the
budget is spent (the budget stays below the pod's terminationGracePeriodSeconds, so the
uploader sidecar still has time to copy the last outputs). ComfyUI unreachable = nothing to
wait for.

    python prestop_drain.py --port 8188 --budget 840 [--interval 5]
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request


def queue_busy(port: int) -> bool | None:
    """True when ComfyUI runs or queues a prompt, False when idle, None when unreachable."""
    # No proxy: the hook talks to the container next door, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/queue", timeout=5) as response:
            queue = json.load(response)
    except (OSError, ValueError):
        return None
    return bool(queue.get("queue_running") or queue.get("queue_pending"))


def drain(*, port: int, budget: float, interval: float) -> bool:
    """Wait until the queue is empty; False when the budget ran out first."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if not queue_busy(port):
            return True
        time.sleep(interval)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="ComfyUI's port in the pod")
    parser.add_argument("--budget", type=float, required=True, help="seconds to wait at most")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between looks at the queue")
    args = parser.parse_args(argv)
    if not drain(port=args.port, budget=args.budget, interval=args.interval):
        print(f"preStop: ComfyUI still busy after {args.budget:.0f}s; stopping anyway", flush=True)
    # Always 0: a failing preStop hook only produces an event; SIGTERM follows either way.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
