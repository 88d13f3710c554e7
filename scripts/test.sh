#!/usr/bin/env bash
# Install everything the test suite needs (once) and run it.
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
source scripts/_env.sh
ensure_node
ensure_pipenv
"$PIPENV" sync --dev >/dev/null
# checkov pins boto3 1.35 and packaging<24, which conflict with this project's pins: it
# lives in its own virtualenv and the tests call its binary.
if [ ! -x .venv-checkov/bin/checkov ]; then
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install --quiet "checkov==${CHECKOV_VERSION}"
fi
export CHECKOV_BIN="$PWD/.venv-checkov/bin/checkov"
# Tests run in PYTEST_WORKERS processes (default: one more than the machine's cores; 0 runs
# them in this process, which --snapshot-update needs). Each test file runs in one worker
# (--dist loadfile): its module fixtures are built once. The job-runner, fleet and node-script
# files spend much of their time waiting (leases, timeouts, the moto server, the CLI), and the
# worker beyond the cores keeps them busy meanwhile. On 2 cores, 3 workers against 2, paired,
# 3 runs: 0.92 of the wall time for 1.06 of the CPU; with a busy loop beside them, 0.915 for
# 1.08. --dist loadfile against xdist's default (--dist load): 0.94 (docs/benchmarks.md).
# --no-loadscope-reorder: files go out in tests/conftest.py's order (the job runner's, the
# longest and mostly waiting, first; then xdist's own, most tests first), not xdist's alone.
# pipenv sets PYTHONDONTWRITEBYTECODE=1 for everything it runs (pipenv/environments.py, "avoid
# resolver.py uses the wrong byte code files"): every worker and every Python program a test
# starts would compile the project's modules and the tests from source again. Python's own
# default writes them to __pycache__/ (ignored by git, left out of the Lambda packages):
# paired on fresh clones, 3 runs, 0.92 of the wall time (docs/benchmarks.md).
exec "$PIPENV" run env -u PYTHONDONTWRITEBYTECODE pytest -n "${PYTEST_WORKERS:-$(($(nproc) + 1))}" --dist loadfile --no-loadscope-reorder "$@"
