"""The sample GitHub Actions workflow users copy to review plans (.github/workflows/plan.yml) and
the IAM policies that go with it (docs/ci/).

* Valid: actionlint, with shellcheck on its run blocks.
* Safe to run with credentials: every action pinned to a commit SHA; `pull_request`, never
  `pull_request_target`; least permissions per job; the job with the OIDC token runs in the
  protected environment that the role's trust policy names (one name, checked here), and never
  holds a write token; no `${{ }}` inside a run block.
* Its run blocks do what they say, run for real with stub `terraform` and `gh` commands:
  every stack planned even when one fails, one summary, one comment found by its marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO, load_yaml, tool
from tests.test_iam_policies import _parliament

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PLAN_WORKFLOW = REPO / ".github" / "workflows" / "plan.yml"
CI_DOCS = REPO / "docs" / "ci"
TRUST_POLICY = CI_DOCS / "plan-role-trust-policy.json"
STATE_POLICY = CI_DOCS / "plan-role-state-access-policy.json"
OIDC_HOST = "token.actions.githubusercontent.com"
MARKER = "<!-- comfyui-eks-plan-summary -->"

# Example values for the placeholders of docs/ci/*.json (docs/ci/README.md explains each).
PLACEHOLDERS = {
    "<ACCOUNT_ID>": "111122223333",
    "<OWNER>/<REPO>": "example-org/comfyui-eks",
    "<PROJECT>": "comfyui",
    "<REGION>": "us-west-2",
    "<STATE_KEY_ID>": "1234abcd-12ab-34cd-56ef-1234567890ab",
}
# Parliament 1.6.4 findings that are wrong about these files: (file, issue, detail as a regular
# expression) → why. Its database knows SAML providers and four named web identity providers
# (Cognito, Amazon, Facebook, Google) only, not IAM OIDC providers such as GitHub's, whose
# principal and `<provider>:aud` / `<provider>:sub` condition keys are the ones AWS documents.
PARLIAMENT_EXPLAINED = {
    (
        "plan-role-trust-policy.json",
        "UNKNOWN_FEDERATION_SOURCE",
        rf"arn:aws:iam::\d{{12}}:oidc-provider/{re.escape(OIDC_HOST)}",
    ): "an IAM OIDC provider is a valid Federated principal",
    (
        "plan-role-trust-policy.json",
        "UNKNOWN_CONDITION_FOR_ACTION",
        rf"Unknown condition {re.escape(OIDC_HOST)}:(aud|sub) for action sts:AssumeRoleWithWebIdentity",
    ): "an IAM OIDC provider's aud and sub claims are condition keys of AssumeRoleWithWebIdentity",
}
FULL_SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^v\d+\.\d+\.\d+$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)\s*(?:#\s*(?P<comment>.*?))?\s*$")


def load_workflow(path: Path) -> dict:
    doc = load_yaml(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def trust_policy_environment() -> str:
    sub = json.loads(TRUST_POLICY.read_text())["Statement"][0]["Condition"]["StringEquals"][f"{OIDC_HOST}:sub"]
    match = re.fullmatch(r"repo:[^:*?]+/[^:*?]+:environment:(?P<env>[^:*?]+)", sub)
    assert match, f"trust policy sub {sub!r} is not repo:<OWNER>/<REPO>:environment:<name>"
    return match["env"]


def step(job: dict, name: str) -> dict:
    found = [s for s in job["steps"] if s.get("name") == name or s.get("id") == name]
    assert len(found) == 1, f"no single step {name!r}"
    return found[0]


# --- lint ------------------------------------------------------------------------------------


def test_workflows_pass_actionlint():
    assert WORKFLOWS
    shellcheck = tool("shellcheck")
    result = subprocess.run(
        [tool("actionlint"), "-shellcheck", shellcheck, *map(str, WORKFLOWS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    result = subprocess.run([tool("actionlint"), str(bad)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


# --- supply chain and privileges -------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_sha_with_its_version(path: Path):
    """`uses: owner/repo@<40 hex> # vX.Y.Z`: a tag can be moved to other code, a commit cannot.
    The comment says which release the SHA is (and lets Dependabot/Renovate update both)."""
    lines = [m for m in map(USES_LINE.match, path.read_text().splitlines()) if m]
    doc = load_workflow(path)
    parsed = [s["uses"] for job in doc["jobs"].values() for s in job.get("steps", []) if "uses" in s]
    parsed += [job["uses"] for job in doc["jobs"].values() if "uses" in job]  # reusable workflows
    assert sorted(m["ref"] for m in lines) == sorted(parsed), "a `uses:` the line check did not see"
    pins: dict[str, tuple[str, str]] = {}
    for m in lines:
        ref, comment = m["ref"], m["comment"] or ""
        if ref.startswith("./"):
            continue  # an action of this repository: the same commit as the workflow
        assert FULL_SHA_PIN.match(ref), f"{path.name}: {ref} is not pinned to a full commit SHA"
        assert VERSION_COMMENT.match(comment), f"{path.name}: {ref} needs its version as `# vX.Y.Z`, got {comment!r}"
        action, sha = ref.split("@")
        assert pins.setdefault(action, (sha, comment)) == (sha, comment), f"{action} is pinned twice, differently"


def test_the_pin_check_rejects_a_tag_and_a_bare_sha():
    assert not FULL_SHA_PIN.match("actions/checkout@v5")
    assert not FULL_SHA_PIN.match("actions/checkout@08c6903")  # short SHA
    assert FULL_SHA_PIN.match("actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8")
    assert USES_LINE.match("      - uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8")["comment"] is None


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_trigger_runs_untrusted_code_with_the_base_repository_privileges(path: Path):
    triggers = load_workflow(path)["on"]
    triggers = [triggers] if isinstance(triggers, str) else list(triggers)
    assert not {"pull_request_target", "workflow_run"} & set(triggers), (
        f"{path.name}: these triggers hand a fork's code the base repository's token and secrets"
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_granted_per_job(path: Path):
    doc = load_workflow(path)
    assert doc.get("permissions") == {}, f"{path.name}: set `permissions: {{}}` and grant per job"
    for name, job in doc["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {name} has no `permissions`"
        perms = job["permissions"]
        writes = {scope for scope, level in perms.items() if level == "write"}
        if "id-token" in writes:
            # The job that holds the OIDC token runs the pull request's code: nothing else to write.
            assert writes == {"id-token"}, f"{path.name}: job {name} has an OIDC token and also writes {writes}"
            assert job.get("environment") == trust_policy_environment(), (
                f"{path.name}: job {name} gets an OIDC token outside the protected environment"
            )


def test_plan_workflow_permissions_are_the_least_each_job_needs():
    jobs = load_workflow(PLAN_WORKFLOW)["jobs"]
    assert jobs["plan"]["permissions"] == {"actions": "read", "contents": "read", "id-token": "write"}
    assert jobs["comment"]["permissions"] == {"pull-requests": "write"}
    assert "checkout" not in json.dumps(jobs["comment"]), "the job with the write token must not run PR code"
    # Forks get no OIDC token: the plan job skips them instead of failing on them.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in jobs["plan"]["if"]


def test_the_environment_is_checked_for_reviewers_before_any_code_runs():
    plan = load_workflow(PLAN_WORKFLOW)["jobs"]["plan"]
    first = plan["steps"][0]
    assert "uses" not in first
    assert f"environments/{plan['environment']}" in first["run"]
    assert "required_reviewers" in first["run"]


def test_one_environment_name_in_the_workflow_and_the_trust_policy():
    name = trust_policy_environment()
    jobs = load_workflow(PLAN_WORKFLOW)["jobs"]
    assert jobs["plan"]["environment"] == name
    named = {job["environment"] for job in jobs.values() if "environment" in job}
    named |= set(re.findall(r"environments/([\w.-]+)", PLAN_WORKFLOW.read_text()))  # the reviewers check
    assert named == {name}, f"the workflow names environment(s) {named}, the trust policy {name!r}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_blocks_take_expressions_through_env(path: Path):
    """`${{ }}` in a run block is pasted into the script before bash reads it (script injection
    from branch names, titles, outputs): pass values in `env:` instead."""
    for name, job in load_workflow(path)["jobs"].items():
        for s in job.get("steps", []):
            assert "${{" not in s.get("run", ""), f"{path.name}: job {name}, step {s.get('name')}: use env"


# --- the IAM policies ------------------------------------------------------------------------


def test_trust_policy_admits_only_the_environment_of_one_repository():
    doc = json.loads(TRUST_POLICY.read_text())
    [stmt] = doc["Statement"]
    assert stmt["Effect"] == "Allow"
    assert stmt["Principal"] == {"Federated": f"arn:aws:iam::<ACCOUNT_ID>:oidc-provider/{OIDC_HOST}"}
    assert stmt["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert list(stmt["Condition"]) == ["StringEquals"], "exact matches only (no StringLike, no ForAnyValue)"
    assert stmt["Condition"]["StringEquals"] == {
        f"{OIDC_HOST}:aud": "sts.amazonaws.com",
        f"{OIDC_HOST}:sub": f"repo:<OWNER>/<REPO>:environment:{trust_policy_environment()}",
    }
    assert "*" not in TRUST_POLICY.read_text() and "?" not in TRUST_POLICY.read_text()


def test_state_access_policy_reads_the_state_and_writes_nothing():
    doc = json.loads(STATE_POLICY.read_text())
    grants = {(s["Action"], s["Resource"]) for s in doc["Statement"] if s["Effect"] == "Allow"}
    bucket = "arn:aws:s3:::<PROJECT>-tfstate-<ACCOUNT_ID>-<REGION>"
    assert grants == {
        ("s3:ListBucket", bucket),
        ("s3:GetObject", f"{bucket}/*"),
        ("kms:Decrypt", "arn:aws:kms:<REGION>:<ACCOUNT_ID>:key/<STATE_KEY_ID>"),
    }


@pytest.mark.parametrize("path", [TRUST_POLICY, STATE_POLICY], ids=lambda p: p.name)
def test_ci_policies_pass_parliament(path: Path):
    text = path.read_text()
    used = set(re.findall(r"<[A-Z_]+>(?:/<[A-Z_]+>)?", text))
    assert used <= set(PLACEHOLDERS), f"unexplained placeholders {used - set(PLACEHOLDERS)}"
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    doc = json.loads(text)
    if path == TRUST_POLICY:
        # A trust policy has no Resource (parliament calls that MALFORMED): the role it is attached to.
        for stmt in doc["Statement"]:
            stmt["Resource"] = f"arn:aws:iam::{PLACEHOLDERS['<ACCOUNT_ID>']}:role/comfyui-plan"
    findings = _parliament().analyze_policy_string(json.dumps(doc)).findings
    unexplained = [
        (f.issue, f.detail)
        for f in findings
        if not any(
            (name, issue) == (path.name, f.issue) and re.fullmatch(detail, str(f.detail))
            for name, issue, detail in PARLIAMENT_EXPLAINED
        )
    ]
    assert not unexplained


def test_ci_docs_explain_every_placeholder_and_the_environment():
    readme = (CI_DOCS / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert f"`{placeholder}`" in readme, f"docs/ci/README.md does not explain {placeholder}"
    assert f"`{trust_policy_environment()}` environment" in readme
    assert "required reviewers" in readme
    assert MARKER in readme and MARKER in PLAN_WORKFLOW.read_text()


# --- the run blocks, run -----------------------------------------------------------------------


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """As GitHub runs a `run:` block on Linux: bash --noprofile --norc -eo pipefail."""
    path = cwd / ".step.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def github_outputs(path: Path) -> dict[str, str]:
    """Parse a $GITHUB_OUTPUT file (name=value and name<<DELIMITER blocks)."""
    outputs, lines = {}, iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            value = []
            for inner in lines:
                if inner == delimiter:
                    break
                value.append(inner)
            outputs[name] = "\n".join(value)
        else:
            name, _, value = line.partition("=")
            outputs[name] = value
    return outputs


def stub_bin(tmp_path: Path, name: str, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(textwrap.dedent(body).lstrip())
    exe.chmod(0o755)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to(sys.executable)  # the runner's python3 is 3.11 too
    return bin_dir


def test_plan_step_plans_every_stack_summarizes_and_reports_the_failed_one(tmp_path: Path):
    from tests.test_plan_summary import plan_doc

    work = tmp_path / "work"
    (work / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "plan_summary.py", work / "scripts")
    plans = tmp_path / "fixtures"
    plans.mkdir()
    stacks = {
        "comfyui-state": plan_doc(("aws_s3_bucket.state", ["no-op"])),
        "comfyui-platform": plan_doc(("aws_eks_cluster.this", ["delete", "create"]), ("aws_sqs_queue.q", ["create"])),
        "comfyui-workload": None,  # its plan fails
        "comfyui-edge": plan_doc(("aws_cloudfront_distribution.cdn", ["update"])),
    }
    for stack, doc in stacks.items():
        (work / "cdktf.out" / "stacks" / stack).mkdir(parents=True)
        if doc is not None:
            (plans / f"{stack}.json").write_text(json.dumps(doc))
    # terraform -chdir=DIR init|plan|show ...: plan fails where there is no fixture.
    bin_dir = stub_bin(
        tmp_path,
        "terraform",
        f"""
        #!/usr/bin/env bash
        dir="${{1#-chdir=}}"; stack="$(basename "$dir")"
        echo "$stack $2 ${{*:3}}" >>"{tmp_path}/terraform.log"
        fixture="{plans}/$stack.json"
        case "$2" in
          init) ;;
          plan) [ -e "$fixture" ] || {{ echo "Error: boom" >&2; exit 1; }}; touch "$dir/tfplan" ;;
          show) cat "$fixture" ;;
        esac
        """,
    )
    job = load_workflow(PLAN_WORKFLOW)["jobs"]["plan"]
    output, summary_file = tmp_path / "output", tmp_path / "step-summary"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary_file),
    }
    (tmp_path / "runner-temp").mkdir()
    result = run_step(step(job, "plan")["run"], work, env)
    assert result.returncode == 0, result.stdout + result.stderr  # the next step fails the job
    log = (tmp_path / "terraform.log").read_text()
    for stack in stacks:
        assert f"{stack} plan -input=false -lock=false -no-color -out=tfplan" in log
    assert "::error::terraform plan of comfyui-workload failed" in result.stdout

    outputs = github_outputs(output)
    assert outputs["failed"] == "comfyui-workload"
    summary = outputs["summary"]
    assert summary.strip() == summary_file.read_text().strip()
    rows = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| `")]
    assert rows == ["`comfyui-state`", "`comfyui-platform`", "`comfyui-workload`", "`comfyui-edge`"]
    assert "| `comfyui-platform` | 1 | 0 | **1** | 0 |" in summary
    assert "| `comfyui-workload` | – | – | – | – | **plan failed**" in summary
    assert "- replace `aws_eks_cluster.this`" in summary

    fail = step(job, "Fail if a plan failed")
    assert fail["if"] == "steps.plan.outputs.failed != ''"
    result = run_step(fail["run"], work, {"FAILED": outputs["failed"]})
    assert result.returncode == 1 and "comfyui-workload" in result.stdout
    assert load_workflow(PLAN_WORKFLOW)["jobs"]["plan"]["outputs"]["summary"] == "${{ steps.plan.outputs.summary }}"


FAKE_GH = """
#!/usr/bin/env python3
# gh api [--paginate] [--method M] PATH [--jq EXPR] [-f key=value]: answers from and records to $FAKE_GH_STATE.
import json, os, subprocess, sys
state_file = os.environ["FAKE_GH_STATE"]
state = json.load(open(state_file))
args, call = sys.argv[2:], {"method": "GET", "fields": {}}
while args:
    arg = args.pop(0)
    if arg == "--paginate":
        pass
    elif arg == "--method":
        call["method"] = args.pop(0)
    elif arg == "--jq":
        call["jq"] = args.pop(0)
    elif arg == "-f":
        key, _, value = args.pop(0).partition("=")
        call["fields"][key] = value
    else:
        call["path"] = arg
state["calls"].append(call)
json.dump(state, open(state_file, "w"))
if call["method"] == "GET":
    answer = json.dumps(state["responses"][call["path"]])
    if "jq" in call:
        jq = subprocess.run(["jq", "-r", call["jq"]], input=answer, capture_output=True, text=True, check=True)
        answer = jq.stdout
    sys.stdout.write(answer)
"""


def fake_gh(tmp_path: Path, responses: dict) -> tuple[dict[str, str], Path]:
    if not shutil.which("jq"):
        pytest.skip("jq is not installed (the stub gh evaluates --jq with it)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "gh-state.json"
    state.write_text(json.dumps({"responses": responses, "calls": []}))
    bin_dir = stub_bin(tmp_path, "gh", FAKE_GH)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GH_STATE": str(state)}
    env |= {"GITHUB_REPOSITORY": "example-org/comfyui-eks", "GH_TOKEN": "unused"}
    return env, state


@pytest.mark.parametrize(
    "rules, passes",
    [
        ([{"type": "required_reviewers", "reviewers": [{"type": "User"}]}], True),
        ([{"type": "wait_timer", "wait_timer": 5}], False),
        ([], False),
    ],
)
def test_environment_check(tmp_path: Path, rules: list, passes: bool):
    job = load_workflow(PLAN_WORKFLOW)["jobs"]["plan"]
    path = f"repos/example-org/comfyui-eks/environments/{job['environment']}"
    env, _ = fake_gh(tmp_path, {path: {"name": job["environment"], "protection_rules": rules}})
    result = run_step(job["steps"][0]["run"], tmp_path, env)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr
    if not passes:
        assert "no required reviewers" in result.stdout


def run_comment_step(tmp_path: Path, comments: list, summary: str) -> list[dict]:
    job = load_workflow(PLAN_WORKFLOW)["jobs"]["comment"]
    env, state = fake_gh(tmp_path, {"repos/example-org/comfyui-eks/issues/7/comments": comments})
    env |= {"PR": "7", "HEAD_SHA": "abc123", "SUMMARY": summary, "RUN_URL": "https://example.test/run/1"}
    env["MARKER"] = job["env"]["MARKER"]
    result = run_step(step(job, "Post or update the plan summary comment")["run"], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(state.read_text())["calls"]


def test_comment_is_created_once_then_updated(tmp_path: Path):
    assert load_workflow(PLAN_WORKFLOW)["jobs"]["comment"]["env"]["MARKER"] == MARKER
    summary = "### Terraform plan\n\n| Stack | Add |"
    others = [
        {"id": 1, "user": {"login": "someone"}, "body": f"{MARKER}\nnot ours: a user quoting the marker"},
        {"id": 2, "user": {"login": "github-actions[bot]"}, "body": "another bot comment"},
    ]
    calls = run_comment_step(tmp_path / "first", others, summary)
    assert [c["method"] for c in calls] == ["GET", "POST"]
    assert calls[1]["path"] == "repos/example-org/comfyui-eks/issues/7/comments"
    body = calls[1]["fields"]["body"]
    assert body.startswith(MARKER + "\n" + summary) and "https://example.test/run/1" in body

    ours = {"id": 3, "user": {"login": "github-actions[bot]"}, "body": body}
    calls = run_comment_step(tmp_path / "second", [*others, ours], summary.replace("Add", "Change"))
    assert [c["method"] for c in calls] == ["GET", "PATCH"]
    assert calls[1]["path"] == "repos/example-org/comfyui-eks/issues/comments/3"
    assert "Change" in calls[1]["fields"]["body"]


def test_comment_says_so_when_the_plan_job_left_no_summary(tmp_path: Path):
    calls = run_comment_step(tmp_path, [], "")
    body = calls[-1]["fields"]["body"]
    assert body.startswith(MARKER) and "No summary" in body
