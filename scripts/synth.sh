#!/usr/bin/env bash
# Install what synthesis needs (once) and synthesize every stack.
#   scripts/synth.sh [--config FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
source scripts/_env.sh
ensure_node
ensure_pipenv
"$PIPENV" sync >/dev/null
exec "$PIPENV" run python main.py "$@"
