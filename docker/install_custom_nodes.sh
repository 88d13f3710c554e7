#!/usr/bin/env bash
# Install ComfyUI custom nodes from a pinned list (docker/custom_nodes.txt).
#
# Usage: install_custom_nodes.sh <list-file> <custom-nodes-dir>
#
# Each non-comment line is "<https git URL> <full 40-hex commit SHA>". Every line is
# validated before anything is cloned; a malformed line fails with its line number. Each
# node is cloned into <custom-nodes-dir>/<repository name>, checked out at the commit (and
# verified), and its requirements.txt, if present, is installed with
# "$COMFYUI_PYTHON -m pip" (default python3; pip honours PIP_CONSTRAINT).
set -euo pipefail

PROG="${0##*/}"
PYTHON_BIN="${COMFYUI_PYTHON:-python3}"
export GIT_TERMINAL_PROMPT=0 # a missing or private repository fails instead of prompting

die() {
    printf '%s: %s\n' "${PROG}" "$*" >&2
    exit 1
}

if (($# != 2)); then
    printf 'usage: %s <list-file> <custom-nodes-dir>\n' "${PROG}" >&2
    exit 2
fi
list_file=$1
nodes_dir=$2
[[ -f "${list_file}" && -r "${list_file}" ]] || die "list file ${list_file} does not exist or is not readable"

url_re='^https://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?(/[A-Za-z0-9._~-]+)+/?$'
sha_re='^[0-9a-f]{40}$'
name_re='^[A-Za-z0-9_][A-Za-z0-9._-]*$'

urls=()
shas=()
names=()
errors=0
lineno=0
while IFS= read -r line || [[ -n "${line}" ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    line=${line%%[[:space:]]#*} # drop a trailing " # comment"
    read -r -a fields <<< "${line}" || true
    if ((${#fields[@]} == 0)) || [[ "${fields[0]}" == \#* ]]; then
        continue
    fi
    where="${list_file}:${lineno}"
    if ((${#fields[@]} != 2)); then
        printf '%s: %s: expected "<https git URL> <40-hex commit SHA>", got %d field(s): %s\n' \
            "${PROG}" "${where}" "${#fields[@]}" "${line}" >&2
        errors=$((errors + 1))
        continue
    fi
    url=${fields[0]}
    sha=${fields[1]}
    if ! [[ "${url}" =~ ${url_re} ]]; then
        printf '%s: %s: %s is not an https git URL without credentials, query or fragment\n' \
            "${PROG}" "${where}" "${url}" >&2
        errors=$((errors + 1))
        continue
    fi
    if ! [[ "${sha}" =~ ${sha_re} ]]; then
        printf '%s: %s: %s is not a full 40-hex lowercase commit SHA (branches, tags and short SHAs are not pinned)\n' \
            "${PROG}" "${where}" "${sha}" >&2
        errors=$((errors + 1))
        continue
    fi
    name=${url%/}
    name=${name##*/}
    name=${name%.git}
    if ! [[ "${name}" =~ ${name_re} ]]; then
        printf '%s: %s: cannot derive a directory name from %s\n' "${PROG}" "${where}" "${url}" >&2
        errors=$((errors + 1))
        continue
    fi
    duplicate=0
    for existing in "${names[@]+"${names[@]}"}"; do
        [[ "${existing}" == "${name}" ]] && duplicate=1
    done
    if ((duplicate)); then
        printf '%s: %s: a node named %s is already listed\n' "${PROG}" "${where}" "${name}" >&2
        errors=$((errors + 1))
        continue
    fi
    urls+=("${url}")
    shas+=("${sha}")
    names+=("${name}")
done < "${list_file}"

if ((errors)); then
    die "${errors} malformed line(s) in ${list_file}; nothing was installed"
fi
if ((${#urls[@]} == 0)); then
    printf '%s: no custom nodes listed in %s; nothing to do\n' "${PROG}" "${list_file}"
    exit 0
fi

[[ -d "${nodes_dir}" ]] || die "custom nodes directory ${nodes_dir} does not exist"

for i in "${!urls[@]}"; do
    url=${urls[i]}
    sha=${shas[i]}
    dest="${nodes_dir}/${names[i]}"
    [[ ! -e "${dest}" ]] || die "${dest} already exists (listed node ${url})"
    printf '%s: %s at %s -> %s\n' "${PROG}" "${url}" "${sha}" "${dest}"
    # A blob-less partial clone fetches file contents only for the checked-out commit.
    git clone --quiet --filter=blob:none --no-checkout -- "${url}" "${dest}" \
        || die "git clone of ${url} failed"
    git -C "${dest}" checkout --quiet --detach "${sha}" \
        || die "commit ${sha} not found in ${url}"
    head=$(git -C "${dest}" rev-parse HEAD) || die "cannot read HEAD of ${dest}"
    [[ "${head}" == "${sha}" ]] || die "${dest} is at ${head}, expected ${sha}"
    if [[ -f "${dest}/requirements.txt" ]]; then
        "${PYTHON_BIN}" -m pip install --no-cache-dir -r "${dest}/requirements.txt" \
            || die "installing ${dest}/requirements.txt failed"
    fi
done
printf '%s: installed %d custom node(s)\n' "${PROG}" "${#urls[@]}"
