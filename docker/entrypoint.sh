#!/usr/bin/env bash
# Container entrypoint: start ComfyUI on $COMFYUI_LISTEN:$COMFYUI_PORT with the models from
# the read-only /models mount (through the extra model paths config), outputs in /outputs,
# inputs in /inputs, and every other writable path under $COMFYUI_SCRATCH_DIR.
# Arguments given to the container (Kubernetes `args`) are appended as extra ComfyUI flags.
set -euo pipefail

COMFYUI_HOME="${COMFYUI_HOME:-/opt/ComfyUI}"
COMFYUI_LISTEN="${COMFYUI_LISTEN:-0.0.0.0}"
COMFYUI_PORT="${COMFYUI_PORT:-8188}"
COMFYUI_EXTRA_MODEL_PATHS="${COMFYUI_EXTRA_MODEL_PATHS:-/opt/comfyui-config/extra_model_paths.yaml}"
COMFYUI_OUTPUT_DIR="${COMFYUI_OUTPUT_DIR:-/outputs}"
COMFYUI_INPUT_DIR="${COMFYUI_INPUT_DIR:-/inputs}"
COMFYUI_SCRATCH_DIR="${COMFYUI_SCRATCH_DIR:-/scratch}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-python}"

die() {
    printf 'comfyui-entrypoint: %s\n' "$*" >&2
    exit 1
}

if ! [[ "${COMFYUI_PORT}" =~ ^[1-9][0-9]{0,4}$ ]] || ((COMFYUI_PORT > 65535)); then
    die "COMFYUI_PORT must be a TCP port number (1-65535), got '${COMFYUI_PORT}'"
fi
[[ -f "${COMFYUI_HOME}/main.py" ]] || die "no ComfyUI at COMFYUI_HOME=${COMFYUI_HOME} (main.py missing)"
[[ -r "${COMFYUI_EXTRA_MODEL_PATHS}" ]] || die "model paths config ${COMFYUI_EXTRA_MODEL_PATHS} is not readable"

# ComfyUI appends "temp" to --temp-directory and empties that directory at start and exit.
temp_dir="${COMFYUI_SCRATCH_DIR}/temp"
user_dir="${COMFYUI_SCRATCH_DIR}/user"
# A volume mounted over these paths hides anything the image created there, so the
# sub-directories are created at start and every writable path is checked up front.
for dir in "${COMFYUI_OUTPUT_DIR}" "${COMFYUI_INPUT_DIR}" "${temp_dir}" "${user_dir}" \
    "${XDG_CACHE_HOME:-${COMFYUI_SCRATCH_DIR}/cache}"; do
    mkdir -p -- "${dir}" 2> /dev/null || die "cannot create ${dir} (running as uid $(id -u)); mount a writable volume there"
    [[ -w "${dir}" ]] || die "${dir} is not writable by uid $(id -u); mount a writable volume there (pod fsGroup 10001)"
done

cd -- "${COMFYUI_HOME}"
exec "${COMFYUI_PYTHON}" main.py \
    --listen "${COMFYUI_LISTEN}" \
    --port "${COMFYUI_PORT}" \
    --extra-model-paths-config "${COMFYUI_EXTRA_MODEL_PATHS}" \
    --output-directory "${COMFYUI_OUTPUT_DIR}" \
    --input-directory "${COMFYUI_INPUT_DIR}" \
    --temp-directory "${COMFYUI_SCRATCH_DIR}" \
    --user-directory "${user_dir}" \
    --database-url "sqlite:///${user_dir}/comfyui.db" \
    --disable-auto-launch \
    "$@"
