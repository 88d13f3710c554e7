"""The GPU nodes' user-data: valid MIME, the right variables, the scripts intact."""

from __future__ import annotations

import email
import email.policy
import re
import shlex
import subprocess
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import names
from modules.gpu_user_data import (
    BUNDLE_PATH,
    DEFAULT_CACHE_DEADLINE_SECONDS,
    MIME_BOUNDARY,
    SETUP_INSTALL_PATH,
    USER_DATA_BUDGET_BYTES,
    render_gpu_user_data,
    shipped_script,
)
from modules.literal import escape_text
from tests.helpers import REPO

SETUP = REPO / "modules" / "scripts" / "gpu-node-setup.sh"
SYNC = REPO / "modules" / "scripts" / "model-cache-sync.sh"
DEADLINE = REPO / "modules" / "scripts" / "model-cache-deadline.sh"
ARGS = {
    "models_bucket": "comfyui-models-123456789012",
    "region": "eu-west-1",
    "model_prefixes": ("checkpoints/", "loras/"),
    "cluster_name": "comfyui-prod",
    "cache_deadline_seconds": 5400,
}


def _script(user_data: str) -> str:
    message = email.message_from_string(user_data)
    (part,) = message.get_payload()
    return part.get_payload()


def test_user_data_is_a_mime_multipart_with_one_shell_script_part():
    user_data = render_gpu_user_data(**ARGS)
    message = email.message_from_string(user_data, policy=email.policy.strict)
    assert message.defects == []
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_boundary() == MIME_BOUNDARY
    parts = message.get_payload()
    assert len(parts) == 1
    (part,) = parts
    assert part.defects == []
    assert part.get_content_type() == "text/x-shellscript"
    assert part.get_content_charset() == "us-ascii"
    script = part.get_payload()
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in script[: script.index("export ")]
    assert user_data.rstrip("\n").endswith(f"--{MIME_BOUNDARY}--")


def test_karpenter_can_merge_its_nodeconfig_part():
    """Karpenter appends its NodeConfig as another part of the same multipart document."""
    message = email.message_from_string(render_gpu_user_data(**ARGS))
    node_config = MIMEText("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n", "x-nodeadm")
    message.attach(node_config)
    merged = email.message_from_string(message.as_string())
    types = [part.get_content_type() for part in merged.get_payload()]
    assert types == ["text/x-shellscript", "text/x-nodeadm"]
    assert merged.get_payload()[0].get_payload() == _script(render_gpu_user_data(**ARGS))


def test_every_script_variable_is_exported_shell_quoted():
    script = _script(render_gpu_user_data(**ARGS))
    expected = names.script_variables(models_bucket=ARGS["models_bucket"], region=ARGS["region"])
    expected["MODEL_PREFIXES"] = "checkpoints/ loras/"
    expected["CLUSTER_NAME"] = "comfyui-prod"
    expected["CACHE_DEADLINE_SECONDS"] = "5400"
    exports = [line for line in script.splitlines() if line.startswith("export ")]
    assert exports == [f"export {key}={shlex.quote(value)}" for key, value in expected.items()]

    # And bash reads back exactly these values.
    shown = " ".join(f'"${{{key}}}"' for key in expected)
    values = subprocess.run(
        ["bash", "-c", "\n".join(exports) + f'\nprintf "%s\\0" {shown}'],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")[:-1]
    assert values == list(expected.values())


def test_whole_bucket_when_no_prefixes():
    script = _script(render_gpu_user_data(**{**ARGS, "model_prefixes": ()}))
    assert "export MODEL_PREFIXES=''\n" in script


def test_the_deadline_defaults_to_an_hour():
    args = {k: v for k, v in ARGS.items() if k != "cache_deadline_seconds"}
    assert DEFAULT_CACHE_DEADLINE_SECONDS == 3600
    assert f"export CACHE_DEADLINE_SECONDS={DEFAULT_CACHE_DEADLINE_SECONDS}\n" in _script(render_gpu_user_data(**args))


def _unpack_all(script: str, tmp_path) -> dict[str, bytes]:
    """Run the user-data's unpacking (the one `base64 -d <<...` heredoc and the split that
    follows) with the bundle and every target redirected into tmp_path; returns
    {target as written in the script: bytes}."""
    start = script.index("base64 -d <<")
    end = script.index(f"rm -f -- {shlex.quote(str(BUNDLE_PATH))}\n", start)
    block = script[start:end].replace(shlex.quote(str(BUNDLE_PATH)), shlex.quote(str(tmp_path / "bundle")))
    targets = [line.split(">", 1)[1] for line in block.splitlines() if line.startswith("  head -c ")]
    local = {target: tmp_path / f"unpacked-{i}" for i, target in enumerate(targets)}
    for target, path in local.items():
        block = block.replace(f">{target}\n", f">{shlex.quote(str(path))}\n", 1)
    assert block.count("head -c") == len(targets) == 3
    subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], env={"PATH": "/usr/bin:/bin"}, check=True)
    return {target: path.read_bytes() for target, path in local.items()}


def test_the_scripts_travel_byte_for_byte(tmp_path):
    script = _script(render_gpu_user_data(**ARGS))
    assert script.count("base64 -d <<") == 1, "one gzip stream for all the scripts"
    unpacked = _unpack_all(script, tmp_path)
    assert unpacked == {
        '"${SYNC_SCRIPT_PATH}"': shipped_script(SYNC),
        '"${CACHE_DEADLINE_SCRIPT_PATH}"': shipped_script(DEADLINE),
        shlex.quote(str(SETUP_INSTALL_PATH)): shipped_script(SETUP),
    }


def test_the_bootstrap_installs_the_scripts(tmp_path):
    """The user-data's own lines up to the set-up, run for real with the node's paths moved
    into tmp_path: every script lands byte for byte, the two services' scripts executable,
    and the decompressed bundle is removed."""
    script = _script(render_gpu_user_data(**ARGS))
    root = str(tmp_path / "node")
    moved = re.sub(r"(?<=[ =<>])/usr/local/", f"{root}/usr/local/", script[: script.index("if ! bash ")])
    assert "/usr/local/" not in moved.replace(f"{root}/usr/local/", ""), "a path was left unmoved"
    subprocess.run(["bash", "-c", moved], env={"PATH": "/usr/bin:/bin"}, check=True)
    for path, source in (
        (names.SYNC_SCRIPT_PATH, SYNC),
        (names.CACHE_DEADLINE_SCRIPT_PATH, DEADLINE),
        (str(SETUP_INSTALL_PATH), SETUP),
    ):
        assert Path(f"{root}{path}").read_bytes() == shipped_script(source), path
    for path in (names.SYNC_SCRIPT_PATH, names.CACHE_DEADLINE_SCRIPT_PATH):
        assert Path(f"{root}{path}").stat().st_mode & 0o111 == 0o111
    assert not Path(f"{root}{BUNDLE_PATH}").exists()


def _parsed(text: str) -> str:
    """bash's own canonical form of a script (comments gone, heredocs and strings kept):
    the script wrapped in a function, printed back by `declare -f`."""
    result = subprocess.run(
        ["bash", "-c", 'eval "__script() {\n$1\n}" && declare -f __script', "_", text],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.parametrize("path", [SETUP, SYNC, DEADLINE], ids=lambda p: p.name)
def test_shipped_script_is_the_same_program(path):
    """The node runs the script without its comment lines and indentation; bash parses
    both to the same program, so the behavioural tests of the repository copy hold for the
    shipped one."""
    shipped = shipped_script(path).decode()
    original = path.read_text()
    assert len(shipped) < 0.8 * len(original), "comments are dropped"
    assert shipped.startswith("#!/usr/bin/env bash\n")
    assert _parsed(shipped) == _parsed(original)


def test_heredoc_bodies_travel_as_they_are():
    """Indentation inside a heredoc is data (the aws-config's INI continuation line)."""
    assert "\ns3 =\n    preferred_transfer_client = crt\nEOF\n" in shipped_script(SETUP).decode()
    assert "\n    local " not in shipped_script(SYNC).decode(), "code indentation is dropped"


HEREDOC = "#!/usr/bin/env bash\ncat <<'EOF'\n# kept: part of the text\n  indented\nEOF\n"


@pytest.mark.parametrize(
    "changed",
    [
        HEREDOC.replace("# kept: part of the text\n", ""),  # a dropped `#` line
        HEREDOC.replace("  indented", "indented"),  # dropped indentation
    ],
    ids=["comment-line", "indentation"],
)
def test_the_program_check_catches_a_changed_heredoc(changed):
    """Control: a heredoc's lines are data; changing them changes the program, and the
    check above sees it."""
    assert _parsed(HEREDOC) != _parsed(changed)
    assert _parsed(HEREDOC) == _parsed(HEREDOC.replace("cat <<", "  cat <<"))  # code indentation is not


def test_longest_names_fit_the_budget():
    user_data = render_gpu_user_data(
        models_bucket="b" * 63,
        region="ap-southeast-4",
        model_prefixes=tuple(f"{'p' * 40}{i}/" for i in range(20)),
        cluster_name="c" * 100,
        cache_deadline_seconds=604_800,
    )
    assert len(user_data.encode()) <= USER_DATA_BUDGET_BYTES


def test_bootstrap_order():
    script = _script(render_gpu_user_data(**ARGS))
    # Exported before anything reads them; the scripts are installed before set-up runs.
    assert script.index("export CACHE_DEADLINE_SCRIPT_PATH=") < script.index("base64 -d")
    assert script.index('>"${SYNC_SCRIPT_PATH}"') < script.index(f">{shlex.quote(str(SETUP_INSTALL_PATH))}")
    assert script.index('>"${CACHE_DEADLINE_SCRIPT_PATH}"') < script.index(
        f"if ! bash {shlex.quote(str(SETUP_INSTALL_PATH))}"
    )
    assert f"if ! bash {shlex.quote(str(SETUP_INSTALL_PATH))}; then" in script


@pytest.mark.parametrize(("setup_exit", "powered_off"), [(0, False), (1, True)])
def test_failed_setup_powers_the_node_off(tmp_path, setup_exit, powered_off):
    """The bootstrap's tail, with the set-up script replaced by one that exits `setup_exit`
    and systemctl stubbed: a failed set-up powers the node off, a good one does not."""
    script = _script(render_gpu_user_data(**ARGS))
    tail = script[script.index(f"if ! bash {shlex.quote(str(SETUP_INSTALL_PATH))}") :]
    fake_setup = tmp_path / "setup.sh"
    fake_setup.write_text(f"exit {setup_exit}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n')
    (bin_dir / "systemctl").chmod(0o755)
    tail = tail.replace(shlex.quote(str(SETUP_INSTALL_PATH)), shlex.quote(str(fake_setup)))
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + tail],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert (result.returncode != 0) is powered_off
    assert (log.exists() and log.read_text().strip() == "poweroff") is powered_off


def test_user_data_fits_ec2_limit_with_karpenter_part():
    """EC2 rejects user-data over 16,384 bytes; Karpenter appends its NodeConfig (CA bundle,
    endpoint, kubelet settings: a few KB). The default configuration must leave room."""
    from core.config import load_config
    from modules.gpu_user_data import USER_DATA_BUDGET_BYTES

    config = load_config()
    user_data = render_gpu_user_data(
        models_bucket=config.models_bucket,
        region=config.region,
        model_prefixes=config.model_sync.prefixes,
        cluster_name=config.cluster_name,
        cache_deadline_seconds=config.gpu.model_cache_deadline_seconds,
    )
    assert len(user_data.encode()) <= USER_DATA_BUDGET_BYTES <= 16_384 - 4_000


def test_the_rendered_script_parses(tmp_path):
    path = tmp_path / "user-data.sh"
    path.write_text(_script(render_gpu_user_data(**ARGS)))
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_rendering_is_deterministic_and_machine_independent():
    first = render_gpu_user_data(**ARGS)
    assert render_gpu_user_data(**ARGS) == first
    assert str(REPO) not in first
    assert "/home/" not in first and "/tmp/" not in first and "/work/" not in first
    assert first.isascii()
    assert render_gpu_user_data(**{**ARGS, "model_prefixes": ("vae/",)}) != first
    assert render_gpu_user_data(**{**ARGS, "cluster_name": "other"}) != first
    assert render_gpu_user_data(**{**ARGS, "cache_deadline_seconds": 600}) != first


@pytest.mark.parametrize(
    "bucket",
    ["${TfToken[TOKEN.12]}", "Comfy_Models", "ab", "bucket'; rm -rf /; '", ""],
)
def test_rejects_bucket_names_that_are_not_literal(bucket):
    with pytest.raises(ValueError, match="bucket"):
        render_gpu_user_data(**{**ARGS, "models_bucket": bucket})


@pytest.mark.parametrize(
    "cluster", ["${TfToken[TOKEN.3]}", "", "-leading-dash", "with space", "a,b", "a=b", "c" * 101, "comfy\n"]
)
def test_rejects_cluster_names_that_are_not_literal(cluster):
    with pytest.raises(ValueError, match="cluster_name"):
        render_gpu_user_data(**{**ARGS, "cluster_name": cluster})


@pytest.mark.parametrize("seconds", [0, 59, 604_801, True, 3600.0, "3600"])
def test_rejects_deadlines_out_of_range(seconds):
    with pytest.raises(ValueError, match="cache_deadline_seconds"):
        render_gpu_user_data(**{**ARGS, "cache_deadline_seconds": seconds})


@pytest.mark.parametrize("region", ["${var.region}", "us west 2", ""])
def test_rejects_odd_regions(region):
    with pytest.raises(ValueError, match="region"):
        render_gpu_user_data(**{**ARGS, "region": region})


@pytest.mark.parametrize(
    "prefix", ["../etc/", "a/b/", ".", "..", "", "loras; reboot", "it's/", "loras", "/loras/", "loras//", " loras/"]
)
def test_rejects_prefixes_that_are_not_one_folder(prefix):
    """Only the canonical form the configuration produces (core.rules.MODEL_PREFIX): nothing is
    normalised on the way to the node."""
    with pytest.raises(ValueError, match="prefix"):
        render_gpu_user_data(**{**ARGS, "model_prefixes": (prefix,)})


# --- Terraform escaping ------------------------------------------------------------------


def _terraform_literal(template: str) -> str:
    """What Terraform makes of a quoted string: `$${`/`%%{` are literal `${`/`%{`; a bare
    `${` or `%{` starts an interpolation/directive, which escaped text must never contain."""
    out, i = [], 0
    while i < len(template):
        if template.startswith(("$${", "%%{"), i):
            out.append(template[i + 1 : i + 3])
            i += 3
        elif template.startswith(("${", "%{"), i):
            raise AssertionError(f"unescaped template sequence at {i}: {template[i : i + 20]!r}")
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def test_escape_text_examples():
    assert escape_text("${VAR} %{ if } $x 100%") == "$${VAR} %%{ if } $x 100%"
    assert escape_text("no templates") == "no templates"
    assert escape_text("$${already}") == "$$${already}"


def test_escaped_user_data_reaches_the_node_unchanged():
    user_data = render_gpu_user_data(**ARGS)
    assert "${" in user_data  # the scripts do use ${...}: escaping matters
    escaped = escape_text(user_data)
    assert _terraform_literal(escaped) == user_data


# No deadline: microseconds of work, but a loaded CI machine can stall any one example.
@settings(deadline=None)
@given(st.text(alphabet="${}%ab\n", max_size=40))
def test_escape_text_round_trips(text):
    assert _terraform_literal(escape_text(text)) == text
