"""User-data for the GPU nodes: the instance-store model cache.

Karpenter launches the GPU nodes from an EC2NodeClass whose `userData` is rendered here.
On Amazon Linux 2023 Karpenter merges its own NodeConfig part into the user-data, which
it can only do when the user-data is a MIME multi-part document; so the result is MIME
with a single `text/x-shellscript` part that cloud-init runs once, as root, at first boot.

That part exports the variables the node scripts read (names from
`core.names.script_variables`, so Terraform, the Lambda and the pods agree on every path),
writes the model sync script and the cache deadline script to their installed locations,
then runs the body of `scripts/gpu-node-setup.sh` (instance store -> XFS at the cache root,
systemd service, timer and path unit for the sync, first sync started without blocking the
node's registration, and the deadline timer that replaces a node whose cache is not
complete in time).

The output is deterministic (fixed MIME boundary, no timestamps, no local paths), so
synthesis produces identical Terraform every time and a change to a script shows up as a
diff in the plan.
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from pathlib import Path

from core import names, rules

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
SETUP_SCRIPT = SCRIPTS_DIR / "gpu-node-setup.sh"
SYNC_SCRIPT = SCRIPTS_DIR / "model-cache-sync.sh"
DEADLINE_SCRIPT = SCRIPTS_DIR / "model-cache-deadline.sh"

# Fixed, so that the rendered user-data (and therefore the plan) is stable.
MIME_BOUNDARY = "==COMFYUI-GPU-NODE-USER-DATA=="
# Terminates the quoted heredocs that carry the scripts inside the user-data.
HEREDOC_DELIMITER = "COMFYUI_NODE_SCRIPT_EOF"
# Where the set-up script is unpacked on the node before it runs.
SETUP_INSTALL_PATH = Path("/usr/local/lib/comfyui/gpu-node-setup.sh")
# The decompressed scripts, one after the other, until they are split (then removed).
BUNDLE_PATH = SETUP_INSTALL_PATH.parent / "node-scripts"
# EC2 rejects user-data above 16,384 bytes; Karpenter appends its NodeConfig part (~2 KB).
USER_DATA_BUDGET_BYTES = 12_000

# A node whose model cache is not complete this long after boot powers itself off.
DEFAULT_CACHE_DEADLINE_SECONDS = 3600
CACHE_DEADLINE_RANGE = range(60, 7 * 24 * 3600 + 1)

# The bucket name and the region are checked with core.rules, which also rejects unresolved
# Terraform/cdktf tokens: the values are needed as literals here.
# EKS cluster names (1-100 characters). The name is a metric dimension value in the
# deadline script's `put-metric-data --dimensions ClusterName=<name>`: no ',', '=' or spaces.
_CLUSTER_RE = re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}")


def _prefix_words(model_prefixes: tuple[str, ...]) -> str:
    """The model prefixes, in their canonical form (core.rules.MODEL_PREFIX), space-separated
    the way the sync script reads them (it checks each one against the same rule)."""
    for prefix in model_prefixes:
        if not rules.is_model_prefix(prefix):
            raise ValueError(
                f"model prefix {prefix!r} must be one top-level folder of the bucket with its trailing '/', "
                "such as 'checkpoints/' (letters, digits, '.', '_', '-')"
            )
    return " ".join(model_prefixes)


# The start of a heredoc (`<<WORD`, `<<'WORD'`, `<<"WORD"`; not a `<<<` here-string).
_HEREDOC_RE = re.compile(r"<<-?[ \t]*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def shipped_script(path: Path) -> bytes:
    """What travels to the node: the script without its comment lines and its indentation,
    which are a third of its compressed size under EC2's 16 KiB user-data limit. Heredoc
    bodies travel as they are. The repository copy stays the documented one;
    tests/test_gpu_user_data.py proves with bash's own parser (`declare -f` of both) that
    they are the same program, so a `#` line or indentation inside a multi-line string (or a
    heredoc this function failed to see) could never be changed unnoticed."""
    data = path.read_bytes()
    if not data.isascii():
        raise ValueError(f"{path.name} must be ASCII")
    lines = data.decode("ascii").splitlines(keepends=True)
    kept = lines[:1]
    heredoc_end = None
    for line in lines[1:]:
        if heredoc_end is not None:
            kept.append(line)
            if line.rstrip("\n") == heredoc_end:
                heredoc_end = None
            continue
        code = line.lstrip(" \t")
        if code.startswith("#"):
            continue
        kept.append(code)
        if match := _HEREDOC_RE.search(code):
            heredoc_end = match.group(2)
    return "".join(kept).encode("ascii")


def _embed(scripts: list[tuple[Path, str]]) -> str:
    """Shell lines that write each script's shipped bytes to its target (a shell word,
    quoted). The scripts travel as ONE gzip stream (they share most of their vocabulary:
    about 900 bytes less than one stream each), base64-encoded in a heredoc, are
    decompressed into BUNDLE_PATH and split by their byte counts: `head -c N` reading a
    regular file leaves the offset just past the N bytes it copied (POSIX requires it of
    every utility that stops before the end of a seekable input), so each `head` starts
    where the previous one stopped. gzip with mtime=0 keeps the output deterministic."""
    parts = [shipped_script(path) for path, _ in scripts]
    encoded = base64.encodebytes(gzip.compress(b"".join(parts), compresslevel=9, mtime=0)).decode("ascii")
    bundle = shlex.quote(str(BUNDLE_PATH))
    split = "".join(f"  head -c {len(data)} >{target}\n" for data, (_, target) in zip(parts, scripts, strict=True))
    return (
        f"base64 -d <<'{HEREDOC_DELIMITER}' | gunzip -c >{bundle}\n{encoded}{HEREDOC_DELIMITER}\n"
        f"{{\n{split}}} <{bundle}\n"
        f"rm -f -- {bundle}\n"
    )


def render_gpu_user_data(
    *,
    models_bucket: str,
    region: str,
    model_prefixes: tuple[str, ...],
    cluster_name: str,
    cache_deadline_seconds: int = DEFAULT_CACHE_DEADLINE_SECONDS,
) -> str:
    """Render the GPU nodes' MIME multi-part user-data (see the module docstring).

    `model_prefixes` limits the cache to those top-level folders of the bucket, each in its
    canonical form ("checkpoints/", core.rules.MODEL_PREFIX); an empty tuple caches the whole
    bucket. `cluster_name` is the dimension of the deadline metric;
    `cache_deadline_seconds` is how long after boot a node may take to complete its cache
    before it powers itself off. Raises ValueError for values the node scripts could not
    use safely (an unresolved token instead of a bucket name, a nested or odd prefix).
    """
    if not rules.is_bucket_name(models_bucket):
        raise ValueError(
            f"models_bucket {models_bucket!r} is not a literal S3 bucket name "
            "(the user-data needs the concrete name, not a Terraform reference)"
        )
    if not rules.is_region(region):
        raise ValueError(f"region {region!r} is not an AWS region name such as 'us-west-2'")

    if not _CLUSTER_RE.fullmatch(cluster_name):
        raise ValueError(f"cluster_name {cluster_name!r} is not a literal EKS cluster name")
    if type(cache_deadline_seconds) is not int or cache_deadline_seconds not in CACHE_DEADLINE_RANGE:
        raise ValueError(
            f"cache_deadline_seconds {cache_deadline_seconds!r} must be whole seconds from "
            f"{CACHE_DEADLINE_RANGE.start} to {CACHE_DEADLINE_RANGE.stop - 1}"
        )

    variables = names.script_variables(models_bucket=models_bucket, region=region)
    variables["MODEL_PREFIXES"] = _prefix_words(model_prefixes)
    variables["CLUSTER_NAME"] = cluster_name
    variables["CACHE_DEADLINE_SECONDS"] = str(cache_deadline_seconds)
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in variables.items())

    script = (
        "#!/usr/bin/env bash\n"
        "# ComfyUI GPU node: NVMe instance-store model cache and its sync service.\n"
        "# Rendered by modules/gpu_user_data.py from modules/scripts/*.sh; do not edit.\n"
        "set -euo pipefail\n"
        "\n"
        f"{exports}"
        "\n"
        "# EC2 caps user-data at 16 KiB (and Karpenter adds its NodeConfig part), so the\n"
        "# scripts travel gzip-compressed and base64-encoded, and are unpacked here.\n"
        'mkdir -p -- "$(dirname -- "${SYNC_SCRIPT_PATH}")" "$(dirname -- "${CACHE_DEADLINE_SCRIPT_PATH}")" '
        + shlex.quote(str(SETUP_INSTALL_PATH.parent))
        + "\n"
        + _embed(
            [
                (SYNC_SCRIPT, '"${SYNC_SCRIPT_PATH}"'),
                (DEADLINE_SCRIPT, '"${CACHE_DEADLINE_SCRIPT_PATH}"'),
                (SETUP_SCRIPT, shlex.quote(str(SETUP_INSTALL_PATH))),
            ]
        )
        + 'chmod 0755 -- "${SYNC_SCRIPT_PATH}" "${CACHE_DEADLINE_SCRIPT_PATH}"\n'
        # A node whose cache cannot be set up would join the cluster anyway (nodeadm only
        # orders itself after cloud-init, it does not require it) and sit idle, a GPU billed
        # for nothing: power it off, so its pods are evicted and Karpenter removes the empty node.
        + f"if ! bash {shlex.quote(str(SETUP_INSTALL_PATH))}; then\n"
        + '  echo "gpu-node-setup failed; powering off so that Karpenter replaces this node" >&2\n'
        + "  systemctl poweroff\n"
        + "  exit 1\n"
        + "fi\n"
    )
    if not script.isascii():
        raise ValueError("the GPU node scripts must be ASCII (the MIME part is declared us-ascii)")
    if MIME_BOUNDARY in script:
        raise ValueError(f"the script contains the MIME boundary {MIME_BOUNDARY}")

    user_data = (
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
    if len(user_data.encode("ascii")) > USER_DATA_BUDGET_BYTES:
        raise ValueError(
            f"GPU user-data is {len(user_data)} bytes, over the {USER_DATA_BUDGET_BYTES}-byte budget "
            "(EC2 allows 16,384 including Karpenter's NodeConfig part); shrink modules/scripts/*.sh"
        )
    return user_data
