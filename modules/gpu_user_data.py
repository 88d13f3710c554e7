"""User-data for the GPU nodes: the instance-store model cache.

Karpenter launches the GPU nodes from an EC2NodeClass whose `userData` is rendered here.
On Amazon Linux 2023 Karpenter merges its own NodeConfig part into the user-data, which
it can only do when the user-data is a MIME multi-part document; so the result is MIME
with a single `text/x-shellscript` part that cloud-init runs once, as root, at first boot.

That part exports the variables the node scripts read (names from
`core.names.script_variables`, so Terraform, the Lambda and the pods agree on every path),
writes the model sync script to its installed location, then runs the body of
`scripts/gpu-node-setup.sh` (instance store -> XFS at the cache root, systemd service and
timer for the sync, first sync started without blocking the node's registration).

The output is deterministic (fixed MIME boundary, no timestamps, no local paths), so
synthesis produces identical Terraform every time and a change to a script shows up as a
diff in the plan.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from core import names

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
SETUP_SCRIPT = SCRIPTS_DIR / "gpu-node-setup.sh"
SYNC_SCRIPT = SCRIPTS_DIR / "model-cache-sync.sh"

# Fixed, so that the rendered user-data (and therefore the plan) is stable.
MIME_BOUNDARY = "==COMFYUI-GPU-NODE-USER-DATA=="
# Terminates the quoted heredoc that carries the sync script inside the user-data.
HEREDOC_DELIMITER = "COMFYUI_MODEL_SYNC_SCRIPT_EOF"

# S3 bucket naming rules (lower case, digits, dots, hyphens; 3-63 characters). Also
# rejects unresolved Terraform/cdktf tokens: the name is needed as a literal here.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
# One top-level folder of the bucket; the sync script maps it to MODELS_PATH/<folder>.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*/?")


def escape_terraform(text: str) -> str:
    """Escape Terraform template sequences so `text` reaches the instance byte for byte.

    Terraform treats `${` and `%{` inside any string as interpolation/directive starts;
    the scripts are full of `${VAR}`, which would fail at plan time ("Extra characters
    after interpolation expression") or, worse, be interpolated. Doubling the first
    character (`$${`, `%%{`) is Terraform's literal escape. Apply this to the rendered
    user-data when it is placed in a Terraform string (for example the EC2NodeClass
    manifest); do not apply it twice.
    """
    return text.replace("${", "$${").replace("%{", "%%{")


def _normalise_prefixes(model_prefixes: tuple[str, ...]) -> str:
    """Validate the folder prefixes and join them the way the scripts read them."""
    normalised = []
    for prefix in model_prefixes:
        candidate = prefix.strip("/")
        if not _PREFIX_RE.fullmatch(prefix.lstrip("/")) or candidate in ("", ".", ".."):
            raise ValueError(
                f"model prefix {prefix!r} must be one top-level folder of the bucket, "
                "such as 'checkpoints/' (letters, digits, '.', '_', '-')"
            )
        normalised.append(candidate + "/")
    return " ".join(normalised)


def _script_body(path: Path) -> str:
    """A script's text without its shebang line (the user-data part has its own)."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("#!"):
        text = text.split("\n", 1)[1]
    return text


def render_gpu_user_data(*, models_bucket: str, region: str, model_prefixes: tuple[str, ...]) -> str:
    """Render the GPU nodes' MIME multi-part user-data (see the module docstring).

    `model_prefixes` limits the cache to those top-level folders of the bucket; an empty
    tuple caches the whole bucket. Raises ValueError for values the node scripts could not
    use safely (an unresolved token instead of a bucket name, a nested or odd prefix).
    """
    if not _BUCKET_RE.fullmatch(models_bucket):
        raise ValueError(
            f"models_bucket {models_bucket!r} is not a literal S3 bucket name "
            "(the user-data needs the concrete name, not a Terraform reference)"
        )
    if not _REGION_RE.fullmatch(region):
        raise ValueError(f"region {region!r} is not an AWS region name such as 'us-west-2'")

    variables = names.script_variables(models_bucket=models_bucket, region=region)
    variables["MODEL_PREFIXES"] = _normalise_prefixes(model_prefixes)
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in variables.items())

    sync_script = SYNC_SCRIPT.read_text(encoding="utf-8")
    if HEREDOC_DELIMITER in sync_script.splitlines():
        raise ValueError(f"{SYNC_SCRIPT.name} contains the heredoc delimiter {HEREDOC_DELIMITER}")
    if not sync_script.endswith("\n"):
        sync_script += "\n"

    script = (
        "#!/usr/bin/env bash\n"
        "# ComfyUI GPU node: NVMe instance-store model cache and its sync service.\n"
        "# Rendered by modules/gpu_user_data.py from modules/scripts/*.sh; do not edit.\n"
        "set -euo pipefail\n"
        "\n"
        f"{exports}"
        "\n"
        "# The model sync script (modules/scripts/model-cache-sync.sh).\n"
        'mkdir -p -- "$(dirname -- "${SYNC_SCRIPT_PATH}")"\n'
        f"cat >\"${{SYNC_SCRIPT_PATH}}\" <<'{HEREDOC_DELIMITER}'\n"
        f"{sync_script}"
        f"{HEREDOC_DELIMITER}\n"
        'chmod 0755 -- "${SYNC_SCRIPT_PATH}"\n'
        "\n"
        "# The node set-up (modules/scripts/gpu-node-setup.sh).\n"
        f"{_script_body(SETUP_SCRIPT)}"
    )
    if not script.isascii():
        raise ValueError("the GPU node scripts must be ASCII (the MIME part is declared us-ascii)")
    if MIME_BOUNDARY in script:
        raise ValueError(f"the script contains the MIME boundary {MIME_BOUNDARY}")

    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n'
        "\n"
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        "\n"
        f"--{MIME_BOUNDARY}--\n"
    )
