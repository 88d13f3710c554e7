"""scripts/plan_summary.py, run as the program the plan workflow runs, on plan documents shaped
like `terraform show -json` output (and, where terraform is installed, on real ones)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "plan_summary.py"

_REASONS = {
    ("delete", "create"): "replace_because_cannot_update",
    ("create", "delete"): "replace_because_cannot_update",
}


def resource_change(address: str, actions: list[str], **extra) -> dict:
    """One resource_changes[] entry as Terraform 1.10 writes it (format_version 1.2)."""
    mode = "data" if address.startswith("data.") else "managed"
    rtype, name = address.removeprefix("data.").split("[")[0].rsplit(".", 2)[-2:]
    before = None if actions in (["create"], ["read"]) else {"id": "old"}
    after = None if actions == ["delete"] else {"id": "new"}
    rc = {
        "address": address,
        "mode": mode,
        "type": rtype,
        "name": name,
        "provider_name": "hashicorp/aws",
        "change": {
            "actions": actions,
            "before": before,
            "after": after,
            "after_unknown": {"id": True} if "create" in actions else {},
            "before_sensitive": {} if before else False,
            "after_sensitive": {} if after else False,
        },
    }
    if tuple(actions) in _REASONS:
        rc["action_reason"] = _REASONS[tuple(actions)]
    if actions == ["read"]:
        rc["action_reason"] = "read_because_config_unknown"
    return rc | extra


def plan_doc(*changes: tuple[str, list[str]]) -> dict:
    return {
        "format_version": "1.2",
        "terraform_version": "1.10.5",
        "planned_values": {"root_module": {}},
        "resource_changes": [resource_change(address, actions) for address, actions in changes],
        "configuration": {"root_module": {}},
        "timestamp": "2026-01-01T00:00:00Z",
        "applyable": True,
        "complete": True,
        "errored": False,
    }


EVERY_ACTION = plan_doc(
    ("aws_sqs_queue.new", ["create"]),
    ("aws_iam_role.changed", ["update"]),
    ("aws_s3_bucket.gone", ["delete"]),
    ("aws_eks_cluster.this", ["delete", "create"]),
    ("aws_launch_template.lt", ["create", "delete"]),
    ("aws_vpc.kept", ["no-op"]),
    ("data.aws_eks_cluster_auth.this", ["read"]),
)


def run(tmp_path: Path, *args: str, plans: dict[str, object] | None = None) -> subprocess.CompletedProcess:
    """Write each plan (a dict as JSON, or str/bytes as is) to tmp_path, then run the program
    with STACK=PATH for each and the extra args."""
    pairs = []
    for stack, doc in (plans or {}).items():
        path = tmp_path / f"{stack}.json"
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        else:
            path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        pairs.append(f"{stack}={path}")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *pairs, *args], capture_output=True, text=True, timeout=60, check=False
    )


def summary_json(tmp_path: Path, plans: dict[str, object], *args: str) -> list[dict]:
    result = run(tmp_path, "--format", "json", *args, plans=plans)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["stacks"]


def table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| `")]


# --- counting --------------------------------------------------------------------------------


def test_replacements_count_once_and_no_op_and_read_not_at_all(tmp_path: Path):
    [s] = summary_json(tmp_path, {"comfyui-platform": EVERY_ACTION})
    assert (s["add"], s["change"], s["replace"], s["destroy"], s["forget"]) == (1, 1, 2, 1, 0)
    assert s["replaced"] == ["aws_eks_cluster.this", "aws_launch_template.lt"]
    assert s["destroyed"] == ["aws_s3_bucket.gone"]
    assert s["failed"] is False


def test_counts_agree_with_terraforms_own_totals(tmp_path: Path):
    """Terraform's "Plan: X to add, Y to change, Z to destroy." counts a replacement in both X and Z."""
    [s] = summary_json(tmp_path, {"x": EVERY_ACTION})
    to_add, to_change, to_destroy = 3, 1, 3  # what terraform prints for EVERY_ACTION
    assert (s["add"] + s["replace"], s["change"], s["destroy"] + s["replace"]) == (to_add, to_change, to_destroy)


def test_a_plan_without_changes_or_resources(tmp_path: Path):
    empty = plan_doc()
    del empty["resource_changes"]  # terraform leaves it out when there are no resources
    result = run(tmp_path, plans={"comfyui-state": plan_doc(("aws_s3_bucket.state", ["no-op"])), "comfyui-edge": empty})
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout) == [
        ["`comfyui-state`", "0", "0", "0", "0", "no changes"],
        ["`comfyui-edge`", "0", "0", "0", "0", "no changes"],
    ]
    assert "**" not in result.stdout


def test_forget_and_deposed_objects(tmp_path: Path):
    doc = plan_doc(("aws_iam_role.kept_outside", ["forget"]))
    doc["resource_changes"].append(resource_change("aws_instance.old", ["delete"], deposed="00000001"))
    [s] = summary_json(tmp_path, {"x": doc})
    assert (s["forget"], s["destroy"], s["add"]) == (1, 1, 0)
    assert s["destroyed"] == ["aws_instance.old (deposed object 00000001)"]
    result = run(tmp_path, plans={"x": plan_doc(("aws_iam_role.kept_outside", ["forget"]))})
    assert "1 to forget (removed from state, not destroyed)" in result.stdout


# --- output ----------------------------------------------------------------------------------


def test_stacks_come_out_in_deployment_order(tmp_path: Path):
    plans = {name: plan_doc() for name in ("p-edge", "other", "p-workload", "p-state", "p-platform")}
    result = run(tmp_path, "--failed", "a-extra", plans=plans)
    assert [row[0] for row in table_rows(result.stdout)] == [
        "`p-state`",
        "`p-platform`",
        "`p-workload`",
        "`p-edge`",
        "`a-extra`",
        "`other`",
    ]
    assert [s["stack"] for s in summary_json(tmp_path, plans)] == [
        "p-state",
        "p-platform",
        "p-workload",
        "p-edge",
        "other",
    ]


def test_markdown_makes_destruction_stand_out(tmp_path: Path):
    result = run(tmp_path, plans={"comfyui-platform": EVERY_ACTION, "comfyui-state": plan_doc(("a.b", ["create"]))})
    assert result.returncode == 0
    out = result.stdout
    assert table_rows(out) == [
        ["`comfyui-state`", "1", "0", "0", "0", "changes"],
        ["`comfyui-platform`", "1", "1", "**2**", "**1**", "**destroys or replaces resources**"],
    ]
    assert "**`comfyui-platform` would destroy or replace:**" in out
    listed = [line for line in out.splitlines() if line.startswith("- ")]
    assert listed == [
        "- replace `aws_eks_cluster.this`",
        "- replace `aws_launch_template.lt`",
        "- **destroy** `aws_s3_bucket.gone`",
    ]
    assert "comfyui-state` would" not in out


def test_the_address_list_is_bounded(tmp_path: Path):
    doc = plan_doc(*[(f"aws_s3_bucket.b[{i}]", ["delete"]) for i in range(25)])
    out = run(tmp_path, plans={"x-platform": doc}).stdout
    listed = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(listed) == 21
    assert listed[0] == "- **destroy** `aws_s3_bucket.b[0]`" and listed[19].endswith("`aws_s3_bucket.b[19]`")
    assert listed[20] == "- … and 5 more (see the job log)"
    [s] = summary_json(tmp_path, {"x-platform": doc})
    assert len(s["destroyed"]) == 25  # JSON lists them all


def test_addresses_with_backticks_stay_code(tmp_path: Path):
    doc = plan_doc(('aws_s3_bucket.b["a`b"]', ["delete"]), ('aws_s3_bucket.b["<!-- x -->"]', ["delete"]))
    out = run(tmp_path, plans={"x": doc}).stdout
    assert '- **destroy** ``aws_s3_bucket.b["a`b"]``' in out
    assert '- **destroy** `aws_s3_bucket.b["<!-- x -->"]`' in out  # a code span, not an HTML comment


def test_a_failed_stack_is_reported_and_the_exit_code_stays_0(tmp_path: Path):
    result = run(tmp_path, "--failed", "comfyui-workload", plans={"comfyui-platform": plan_doc()})
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)[1] == [
        "`comfyui-workload`",
        "–",
        "–",
        "–",
        "–",
        "**plan failed**: see the job log",
    ]
    stacks = summary_json(tmp_path, {"comfyui-platform": plan_doc()}, "--failed", "comfyui-workload")
    assert [(s["stack"], s["failed"]) for s in stacks] == [("comfyui-platform", False), ("comfyui-workload", True)]


# --- bad input: exit 2, one clear line -----------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xc4\x9a", "not JSON"),  # the binary plan file itself
        ("{not json", "not JSON"),
        ("[]", "not a Terraform JSON plan"),
        ({"format_version": "2.0", "resource_changes": []}, "format_version '2.0' is not 1.x"),
        ({"resource_changes": []}, "format_version None is not 1.x"),
        ({"format_version": "1.2", "resource_changes": {}}, "resource_changes is not a list"),
        ({"format_version": "1.2", "resource_changes": [{"address": "a.b"}]}, "resource_changes[0] has no address"),
        ({"format_version": "1.2", "resource_changes": [{"address": "a.b", "change": {"actions": [1]}}]}, "not a list"),
        ({"format_version": "1.2", "resource_changes": [resource_change("a.b", ["explode"])]}, "unknown action"),
    ],
    ids=["binary", "not-json", "array", "format-2", "no-format", "changes-object", "no-actions", "int", "unknown"],
)
def test_unreadable_plans_exit_2(tmp_path: Path, content, message: str):
    result = run(tmp_path, plans={"comfyui-platform": content})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("plan_summary: error: ")
    assert message in result.stderr
    assert "comfyui-platform.json (stack comfyui-platform)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give at least one STACK=PLAN.json"),
        (["just-a-path.json"], "is not STACK=PLAN.json"),
        (["s=/nonexistent/plan.json"], "cannot read"),
        (["s=/nonexistent/plan.json", "--failed", "s"], "more than once: s"),
        (["s=p.json", "--format", "yaml"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str):
    result = run(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr


# --- the program itself ------------------------------------------------------------------------


def test_standard_library_only():
    tree = ast.parse(SCRIPT.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_real_terraform_plans(tmp_path: Path):
    """A real plan (the built-in terraform_data resource: no provider to download) agrees with
    Terraform's own totals and with the shapes the hand-made documents above assume."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed")
    (tmp_path / "main.tf").write_text(
        """
        variable "gen" {
          type    = number
          default = 1
        }
        resource "terraform_data" "kept" {}
        resource "terraform_data" "updated" { input = "v${var.gen}" }
        resource "terraform_data" "replaced" { triggers_replace = [var.gen] }
        resource "terraform_data" "cbd" {
          triggers_replace = [var.gen]
          lifecycle { create_before_destroy = true }
        }
        resource "terraform_data" "gone" { count = var.gen == 1 ? 1 : 0 }
        resource "terraform_data" "new" { count = var.gen == 2 ? 1 : 0 }
        """
    )
    env = {
        "TF_CLI_CONFIG_FILE": "/dev/null",
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
        "PATH": "/usr/bin:/bin",
    }

    def tf(*args: str) -> str:
        result = subprocess.run(
            [terraform, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    tf("init", "-input=false", "-no-color")
    tf("apply", "-auto-approve", "-input=false", "-no-color")
    printed = tf("plan", "-input=false", "-no-color", "-var", "gen=2", "-out=tfplan")
    (tmp_path / "plan.json").write_text(tf("show", "-json", "tfplan"))
    totals = re.search(r"Plan: (\d+) to add, (\d+) to change, (\d+) to destroy", printed)
    assert totals, printed
    [s] = summary_json(tmp_path, {"real": (tmp_path / "plan.json").read_text()})
    assert (s["add"], s["change"], s["replace"], s["destroy"]) == (1, 1, 2, 1)
    assert (s["add"] + s["replace"], s["change"], s["destroy"] + s["replace"]) == tuple(map(int, totals.groups()))
    actions = {
        rc["address"]: rc["change"]["actions"]
        for rc in json.loads((tmp_path / "plan.json").read_text())["resource_changes"]
    }
    assert actions["terraform_data.replaced"] == ["delete", "create"]
    assert actions["terraform_data.cbd"] == ["create", "delete"]
    assert actions["terraform_data.kept"] == ["no-op"]
