# Sourced by scripts/*.sh: the environment every entry point shares.
# The package index is never named in the repository: use the caller's PIP_INDEX_URL (a
# corporate mirror, say) or pip's own default.
if [ -z "${PIP_INDEX_URL:-}" ]; then
  PIP_INDEX_URL="$(python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')"
  export PIP_INDEX_URL
fi
# Keep the virtualenv in the project (.venv/), so CI and humans find it in the same place.
export PIPENV_VENV_IN_PROJECT=1
export PIPENV_VERBOSITY=-1
export PIPENV_NOSPIN=1
# jsii prints a Node.js end-of-life banner on every run (Node 20 is past its upstream EOL but
# is what cdktf 0.21 supports); it is noise, not a problem of this project.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
PIPENV_VERSION="2026.10.3"
CHECKOV_VERSION="3.3.30"

ensure_pipenv() {
  if [ ! -x .venv-pipenv/bin/pipenv ]; then
    python3 -m venv .venv-pipenv
    .venv-pipenv/bin/pip install --quiet "pipenv==${PIPENV_VERSION}"
  fi
  PIPENV=".venv-pipenv/bin/pipenv"
}

ensure_node() {
  command -v node >/dev/null 2>&1 || { echo "error: Node.js 20 is required by cdktf (jsii); install it (e.g. apt-get install nodejs)" >&2; exit 1; }
}
