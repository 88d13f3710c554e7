"""Every IAM policy in the synthesized JSON, through parliament and structural least-privilege checks.

What is analyzed (tests/iam_extract.py collects it): every `aws_iam_policy_document`, every policy
JSON string on a resource, and every `*policy_statements` module input, in every stack of every
configuration variant; Terraform references are replaced by valid placeholder ARNs of the
referenced resource type so that parliament can judge each action/resource pairing.

How each kind goes through parliament 1.6.4 (`analyze_policy_string`, default auditors):

* identity policies (role/user/group policies, module statements): as they are.
* resource policies (S3 bucket, SQS queue, KMS key, SNS topic, ECR, VPC endpoint…): as they are.
  Parliament checks the Principal element's shape (AWS account/ARN, Service, Federated), the
  actions, the action/resource pairing of Allow statements, and the condition operators/keys.
  It cannot tell whether a principal should have the access; the structural tests below cover
  the project's rules instead.
* trust policies (`assume_role_policy`) have no Resource element, which parliament rejects as
  MALFORMED; they are analyzed with `"Resource": <placeholder role ARN>` added to each statement
  (the role the policy is attached to), so the sts actions, principals and conditions are checked.

A finding fails the test unless an entry of tests/data/parliament_known_false_positives.yaml
matches it (each entry says why the finding is wrong). Parliament writes /tmp/parliament.log.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import re
import sys
import types
from dataclasses import dataclass, field

import pytest
import yaml

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.helpers import REPO
from tests.iam_extract import (
    ACCOUNT,
    ARN_BY_RESOURCE_TYPE,
    IDENTITY_KINDS,
    Policy,
    _statements_of,
    collect_policies,
)

KNOWN_FALSE_POSITIVES = REPO / "tests" / "data" / "parliament_known_false_positives.yaml"
VARIANT_NAMES = (DEFAULT_VARIANT, *VARIANTS)
TRUST_RESOURCE = ARN_BY_RESOURCE_TYPE["aws_iam_role"]
RESOURCE_POLICY_KINDS = {"bucket", "queue", "key", "topic", "repository", "endpoint", "resource"}


def _parliament():
    """parliament 1.6.4 imports pkg_resources only for resource_filename(), and recent setuptools
    (84.2.1 in this venv) no longer ships pkg_resources; lend it a minimal stand-in for the import
    when it is missing."""
    if "parliament" in sys.modules:
        return sys.modules["parliament"]
    try:
        import pkg_resources  # noqa: F401

        shimmed = False
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(importlib.resources.files(package).joinpath(name))
        sys.modules["pkg_resources"] = shim
        shimmed = True
    try:
        import parliament
    finally:
        if shimmed:
            del sys.modules["pkg_resources"]
    return parliament


# --- running parliament ----------------------------------------------------------------------


@dataclass
class Finding:
    issue: str
    severity: str
    detail: object
    where: str
    kind: str
    sid: str | None = None
    actions: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    # RESOURCE_MISMATCH only: another Allow statement of the same policy grants the action on a
    # resource of the required format (parliament judges each statement on its own).
    granted_elsewhere: bool = False

    def __str__(self) -> str:
        sid = f" statement {self.sid!r}" if self.sid else ""
        return f"{self.issue} ({self.severity}) in {self.where}{sid}: {json.dumps(self.detail, default=str)[:400]}"


def _list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def analyzable_document(policy: Policy) -> dict:
    """The document as parliament gets it: trust policies get the role as Resource, and
    one-element condition value lists become scalars (the same meaning in IAM; parliament 1.6.4
    crashes on `"Bool": {"aws:SecureTransport": ["false"]}`)."""
    doc = json.loads(json.dumps(policy.document))
    for stmt in _statements_of(doc):
        if policy.kind == "trust" and "Resource" not in stmt and "NotResource" not in stmt:
            stmt["Resource"] = TRUST_RESOURCE
        for block in (stmt.get("Condition") or {}).values():
            if isinstance(block, dict):
                for key, values in block.items():
                    if isinstance(values, list) and len(values) == 1:
                        block[key] = values[0]
    return doc


def run_parliament(policy: Policy) -> list[Finding]:
    parliament = _parliament()
    doc = analyzable_document(policy)
    statements = _statements_of(doc)
    all_actions = [a for s in statements for a in _list(s.get("Action", s.get("NotAction")))]
    all_resources = [r for s in statements for r in _list(s.get("Resource", s.get("NotResource")))]
    try:
        analyzed = parliament.analyze_policy_string(json.dumps(doc))
    except Exception as exc:  # noqa: BLE001 - parliament crashes on some shapes; that needs a look too
        return [
            Finding(
                "PARLIAMENT_EXCEPTION",
                "CRITICAL",
                repr(exc),
                policy.where,
                policy.kind,
                actions=all_actions,
                resources=all_resources,
            )
        ]
    findings = []

    def add(raw, stmt: dict | None):
        raw = parliament.enhance_finding(raw)
        actions = _list(stmt.get("Action", stmt.get("NotAction"))) if stmt else all_actions
        resources = _list(stmt.get("Resource", stmt.get("NotResource"))) if stmt else all_resources
        sid = stmt.get("Sid") if stmt else None
        if raw.issue == "RESOURCE_MISMATCH" and isinstance(raw.detail, list):
            for item in raw.detail:  # one finding per mismatched action, each must be accounted for
                action, required = item.get("action", ""), item.get("required_format", "")
                elsewhere = _granted_elsewhere(parliament, statements, stmt, action, required)
                findings.append(
                    Finding(
                        raw.issue, raw.severity, item, policy.where, policy.kind, sid, [action], resources, elsewhere
                    )
                )
            return
        if raw.issue == "RESOURCE_STAR" and isinstance(raw.detail, list):
            actions = list(raw.detail)
        findings.append(
            Finding(raw.issue, raw.severity, raw.detail, policy.where, policy.kind, sid, actions, resources)
        )

    for raw in analyzed._findings:
        add(raw, None)
    for index, stmt in enumerate(analyzed.statements):
        for raw in stmt.findings:
            add(raw, statements[index] if index < len(statements) else None)
    return findings


def _granted_elsewhere(parliament, statements: list[dict], stmt: dict | None, action: str, required: str) -> bool:
    """Does another Allow statement grant `action` on a resource of the `required` ARN format?"""
    resource_type = "bucket" if required == "arn:*:s3:::*" else ""
    for other in statements:
        if other is stmt or other.get("Effect") != "Allow" or "Action" not in other:
            continue
        if not any(fnmatch.fnmatchcase(action.lower(), str(a).lower()) for a in _list(other["Action"])):
            continue
        for resource in _list(other.get("Resource")):
            try:
                if resource != "*" and parliament.is_arn_strictly_valid(resource_type, required, resource):
                    return True
            except Exception:  # noqa: BLE001 - parliament raises on resources that are not ARNs
                continue
    return False


# --- the known false positives ---------------------------------------------------------------

ENTRY_KEYS = {"issue", "reason", "kind", "action", "resource", "origin", "granted_elsewhere"}


def load_known_false_positives() -> list[dict]:
    entries = yaml.safe_load(KNOWN_FALSE_POSITIVES.read_text()) or []
    return entries


def _fullmatch(pattern: str, values: list[str]) -> bool:
    return any(re.fullmatch(pattern, str(v), re.IGNORECASE) for v in values)


def is_known_false_positive(finding: Finding, entries: list[dict]) -> bool:
    for entry in entries:
        if entry["issue"] != finding.issue:
            continue
        if "kind" in entry and not _fullmatch(entry["kind"], [finding.kind]):
            continue
        if "origin" in entry and not re.search(entry["origin"], finding.where, re.IGNORECASE):
            continue
        if "action" in entry and not _fullmatch(entry["action"], finding.actions):
            continue
        if "resource" in entry and not _fullmatch(entry["resource"], finding.resources):
            continue
        if entry.get("granted_elsewhere") and not finding.granted_elsewhere:
            continue
        return True
    return False


def test_known_false_positives_file_is_well_formed():
    parliament = _parliament()
    entries = load_known_false_positives()
    assert isinstance(entries, list)
    for entry in entries:
        assert set(entry) <= ENTRY_KEYS, f"unknown keys {set(entry) - ENTRY_KEYS} in {entry}"
        assert entry.get("issue") in parliament.config or entry.get("issue") == "PARLIAMENT_EXCEPTION", entry
        assert len(str(entry.get("reason", ""))) >= 40, f"say why the finding is wrong: {entry}"
        assert set(entry) - {"issue", "reason"}, f"an entry must be narrowed by kind/action/resource/origin: {entry}"
        for key in ("kind", "action", "resource", "origin"):
            if key in entry:
                re.compile(entry[key])
        assert entry.get("granted_elsewhere", True) is True, "granted_elsewhere: true, or leave it out"


# --- negative tests: the harness can fail ----------------------------------------------------


def _policy(statements: list[dict], kind: str = "identity") -> Policy:
    doc = {"Version": "2012-10-17", "Statement": statements}
    return Policy("test-stack", "hand-made", kind, doc, document=doc)


def test_parliament_reports_object_action_on_bucket_arn():
    bad = _policy([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::placeholder-bucket"}])
    findings = run_parliament(bad)
    assert [f.issue for f in findings] == ["RESOURCE_MISMATCH"]
    assert findings[0].actions == ["s3:GetObject"]
    assert not is_known_false_positive(findings[0], load_known_false_positives())
    good = _policy([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::placeholder-bucket/*"}])
    assert run_parliament(good) == []


def test_parliament_reports_unknown_actions_and_bad_arns():
    findings = run_parliament(
        _policy(
            [
                {"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "arn:aws:s3:::b/*"},
                {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-west-2:1234:q"},
            ]
        )
    )
    assert {f.issue for f in findings} == {"UNKNOWN_ACTION", "INVALID_ARN"}


def test_known_false_positive_matching_is_narrow():
    entries = load_known_false_positives()
    ssm = _policy(
        [
            {
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": [
                    "arn:aws:ssm:us-west-2::document/AWS-RunShellScript",
                    "arn:aws:ec2:us-west-2:111122223333:instance/*",
                ],
            }
        ]
    )
    findings = run_parliament(ssm)
    assert [f.issue for f in findings] == ["RESOURCE_MISMATCH"]
    assert is_known_false_positive(findings[0], entries)
    # the same action against a customer-owned document name that is not an ARN is still reported
    wrong = _policy(
        [
            {
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": [
                    "arn:aws:ssm:us-west-2:111122223333:parameter/AWS-RunShellScript",
                    "arn:aws:ec2:us-west-2:111122223333:instance/*",
                ],
            }
        ]
    )
    assert [f for f in run_parliament(wrong) if not is_known_false_positive(f, entries)]
    # RESOURCE_STAR is tolerated in key policies only
    star = [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}
    ]
    assert all(is_known_false_positive(f, entries) for f in run_parliament(_policy(star, "key")))
    identity = [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]
    assert not any(is_known_false_positive(f, entries) for f in run_parliament(_policy(identity)))


def test_trust_policies_get_a_resource_for_parliament():
    trust = _policy(
        [
            {
                "Effect": "Allow",
                "Principal": {"Service": "pods.eks.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ],
        "trust",
    )
    assert run_parliament(trust) == []
    typo = _policy(
        [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRol"]}], "trust"
    )
    assert [f.issue for f in run_parliament(typo)] == ["UNKNOWN_ACTION"]


# --- structural least-privilege rules --------------------------------------------------------

ROOT_PRINCIPAL = re.compile(r"^(arn:aws[\w-]*:iam::\d{12}:root|\d{12})$")


def _is_service_star(action: str) -> bool:
    return action in ("*", "*:*") or bool(re.fullmatch(r"[a-z0-9-]+:\*", action))


def _principal_is_account_root(stmt: dict) -> bool:
    principal = stmt.get("Principal")
    if not isinstance(principal, dict) or set(principal) != {"AWS"}:
        return False
    return all(ROOT_PRINCIPAL.match(p) for p in _list(principal["AWS"]))


def wildcard_errors(policy: Policy) -> list[str]:
    """No Allow of "*" / "<service>:*" on Resource "*", no Allow with NotAction or NotResource.
    Exception: a KMS key policy's statement letting the account root administer the key (kms:*)."""
    errors = []
    for i, stmt in enumerate(_statements_of(policy.document)):
        if stmt.get("Effect") != "Allow":
            continue
        label = f"{policy.where} statement {stmt.get('Sid') or i}"
        if "NotAction" in stmt:
            errors.append(f"{label}: Allow with NotAction grants everything else")
            continue
        if "NotResource" in stmt:
            errors.append(f"{label}: Allow with NotResource grants every other resource")
        resources = _list(stmt.get("Resource"))
        for action in _list(stmt.get("Action")):
            if not _is_service_star(action) or "*" not in resources:
                continue
            if policy.kind == "key" and action == "kms:*" and _principal_is_account_root(stmt):
                continue
            errors.append(f'{label}: Allow {action} on Resource "*"')
    return errors


def secure_transport_errors(policy: Policy) -> list[str]:
    """Every statement conditioned on aws:SecureTransport is a Deny for everyone when it is false;
    in a bucket policy it denies s3:*; and wherever it names an S3 bucket it covers both the bucket
    and its objects (raw Terraform references compared: `${aws_s3_bucket.x.arn}` and `…arn}/*`)."""
    errors = []
    for i, stmt in enumerate(_statements_of(policy.raw)):
        condition = stmt.get("Condition", {})
        tests = {test for test, block in condition.items() if "aws:SecureTransport" in block}
        if not tests:
            continue
        label = f"{policy.where} statement {stmt.get('Sid') or i}"
        if stmt.get("Effect") != "Deny":
            errors.append(f"{label}: aws:SecureTransport condition on an {stmt.get('Effect')} (expected Deny)")
            continue
        for test in tests:
            values = [str(v).lower() for v in _list(condition[test]["aws:SecureTransport"])]
            if test not in ("Bool", "BoolIfExists") or values != ["false"]:
                errors.append(f"{label}: expected Bool aws:SecureTransport = false, got {test} {values}")
        if stmt.get("Principal") not in ("*", {"AWS": "*"}):
            errors.append(f"{label}: the insecure-transport Deny must apply to every principal")
        if policy.kind == "bucket" and "s3:*" not in _list(stmt.get("Action")):
            errors.append(f"{label}: the insecure-transport Deny must cover s3:*")
        raw_resources = _list(stmt.get("Resource"))
        if not raw_resources:
            errors.append(f"{label}: no Resource")
        # which of them are S3 (judged on the placeholder document, same order)
        placeholders = _list(_statements_of(policy.document)[i].get("Resource")) if policy.document else []
        s3 = {raw for raw, ph in zip(raw_resources, placeholders, strict=False) if str(ph).startswith("arn:aws:s3:::")}
        resources = set(raw_resources)
        for resource in sorted(s3):
            bucket = resource[:-2] if resource.endswith("/*") else resource
            missing = {bucket, f"{bucket}/*"} - resources
            if missing:
                errors.append(f"{label}: covers {resource} but not {sorted(missing)} (bucket and bucket/* both)")
    return errors


def principal_errors(policy: Policy) -> list[str]:
    errors = []
    for i, stmt in enumerate(_statements_of(policy.document)):
        label = f"{policy.where} statement {stmt.get('Sid') or i}"
        has_principal = "Principal" in stmt or "NotPrincipal" in stmt
        if policy.kind in IDENTITY_KINDS and has_principal:
            errors.append(f"{label}: an identity policy must not name a Principal (IAM rejects it)")
        if policy.kind in RESOURCE_POLICY_KINDS | {"trust"} and not has_principal:
            errors.append(f"{label}: a {policy.kind} policy statement needs a Principal")
        if policy.kind == "trust":
            if "Resource" in stmt or "NotResource" in stmt:
                errors.append(f"{label}: a trust policy must not have a Resource")
            if not all(str(a).startswith("sts:") for a in _list(stmt.get("Action"))):
                errors.append(f"{label}: a trust policy grants only sts: actions")
    return errors


def test_structural_checks_catch_bad_policies():
    star = _policy([{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}])
    assert wildcard_errors(star) == ['test-stack: hand-made [identity] statement 0: Allow s3:* on Resource "*"']
    assert wildcard_errors(_policy([{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]))
    root_admin = [
        {
            "Sid": "Root",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    assert wildcard_errors(_policy(root_admin, "key")) == []
    assert wildcard_errors(_policy(root_admin, "bucket"))
    others = [{**root_admin[0], "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/x"}}]
    assert wildcard_errors(_policy(others, "key"))
    tls = {
        "Sid": "TLS",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": "${aws_s3_bucket.b.arn}",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    half = _policy([tls], "bucket")
    half.document = {"Version": "2012-10-17", "Statement": [{**tls, "Resource": "arn:aws:s3:::placeholder-bucket"}]}
    assert secure_transport_errors(half) == [
        "test-stack: hand-made [bucket] statement TLS: covers ${aws_s3_bucket.b.arn} but not "
        "['${aws_s3_bucket.b.arn}/*'] (bucket and bucket/* both)"
    ]
    queue_tls = {**tls, "Action": "sqs:*", "Resource": "${aws_sqs_queue.q.arn}"}
    queue = _policy([queue_tls], "queue")
    queue.document = {
        "Version": "2012-10-17",
        "Statement": [{**queue_tls, "Resource": ARN_BY_RESOURCE_TYPE["aws_sqs_queue"]}],
    }
    assert secure_transport_errors(queue) == []
    assert secure_transport_errors(_policy([{**queue_tls, "Effect": "Allow"}], "queue"))
    assert principal_errors(
        _policy([{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}])
    )
    assert principal_errors(
        _policy([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}], "bucket")
    )


# --- the synthesized stacks ------------------------------------------------------------------

_CACHE: dict[str, list[Policy]] = {}


def _policies(synth_variants, variant: str) -> list[Policy]:
    if variant not in _CACHE:
        _CACHE[variant] = collect_policies(synth_variants[variant].stacks)
    return _CACHE[variant]


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_policy_could_be_extracted(synth_variants, variant):
    policies = _policies(synth_variants, variant)
    assert policies, "no IAM policy found at all: the extractor is broken"
    problems = [f"{p.where}: {problem}" for p in policies for problem in p.problems]
    assert not problems, "policies the test cannot analyze:\n" + "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_parliament_finds_nothing_unexpected(synth_variants, variant):
    entries = load_known_false_positives()
    unexpected = []
    for policy in _policies(synth_variants, variant):
        if not policy.document:
            continue  # reported by test_every_policy_could_be_extracted
        for finding in run_parliament(policy):
            if not is_known_false_positive(finding, entries):
                unexpected.append(f"{finding}\n    policy: {json.dumps(analyzable_document(policy))}")
    assert not unexpected, (
        "parliament findings (fix the policy, or add a narrow entry with a reason to "
        "tests/data/parliament_known_false_positives.yaml):\n" + "\n".join(unexpected)
    )


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_no_wildcard_allows(synth_variants, variant):
    errors = [e for p in _policies(synth_variants, variant) for e in wildcard_errors(p)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_secure_transport_denies_cover_bucket_and_objects(synth_variants, variant):
    errors = [e for p in _policies(synth_variants, variant) for e in secure_transport_errors(p)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_principal_elements_fit_the_policy_kind(synth_variants, variant):
    errors = [e for p in _policies(synth_variants, variant) for e in principal_errors(p)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_bucket_denies_insecure_transport(synth_variants, variant):
    """Each aws_s3_bucket has a bucket policy whose TLS-only Deny names that bucket and its objects."""
    synth = synth_variants[variant]
    policies = _policies(synth_variants, variant)
    missing = []
    for stack_name, stack in synth.stacks.items():
        for bucket in stack.get("resource", {}).get("aws_s3_bucket", {}):
            arn = f"${{aws_s3_bucket.{bucket}.arn}}"
            covered = False
            for policy in policies:
                if policy.stack != stack_name or policy.kind != "bucket":
                    continue
                for stmt in _statements_of(policy.raw):
                    resources = set(_list(stmt.get("Resource")))
                    if (
                        stmt.get("Effect") == "Deny"
                        and "aws:SecureTransport" in json.dumps(stmt.get("Condition", {}))
                        and {arn, f"{arn}/*"} <= resources
                    ):
                        covered = True
            if not covered:
                missing.append(f"{stack_name}: aws_s3_bucket.{bucket}")
    assert not missing, "buckets without a TLS-only bucket policy covering bucket and bucket/*:\n" + "\n".join(missing)


# --- the extractor, on a hand-made stack -----------------------------------------------------


def _fake_stacks() -> dict[str, dict]:
    doc = "${data.aws_iam_policy_document.%s.json}"
    return {
        "producer": {
            "output": {"cross-stack-output-aws_sqs_queuejobsarn": {"value": "${aws_sqs_queue.jobs.arn}"}},
        },
        "consumer": {
            "data": {
                "aws_iam_policy_document": {
                    "base": {
                        "statement": [
                            {
                                "sid": "Logs",
                                "actions": ["logs:PutLogEvents"],
                                "resources": ["${aws_cloudwatch_log_group.lg.arn}:*"],
                            }
                        ]
                    },
                    "worker": {
                        "source_policy_documents": [doc % "base"],
                        "statement": [
                            {
                                "sid": "Queue",
                                "effect": "Allow",
                                "actions": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
                                "resources": [
                                    "${data.terraform_remote_state.producer.outputs."
                                    "cross-stack-output-aws_sqs_queuejobsarn}"
                                ],
                            },
                            {
                                "sid": "Models",
                                "actions": ["s3:GetObject"],
                                "resources": ["${aws_s3_bucket.models.arn}/models/*"],
                                "condition": [
                                    {
                                        "test": "StringEquals",
                                        "variable": "aws:ResourceAccount",
                                        "values": ["${data.aws_caller_identity.current.account_id}"],
                                    }
                                ],
                            },
                        ],
                    },
                    "trust": {
                        "statement": [
                            {
                                "actions": ["sts:AssumeRole", "sts:TagSession"],
                                "principals": [{"type": "Service", "identifiers": ["pods.eks.amazonaws.com"]}],
                            }
                        ]
                    },
                },
            },
            "resource": {
                "aws_iam_role": {
                    "worker": {
                        "assume_role_policy": doc % "trust",
                        "inline_policy": [
                            {
                                "name": "x",
                                "policy": json.dumps(
                                    {
                                        "Version": "2012-10-17",
                                        "Statement": [
                                            {
                                                "Effect": "Allow",
                                                "Action": "ssm:GetParameter",
                                                "Resource": "arn:aws:ssm:${data.aws_region.current.name}:"
                                                "${data.aws_caller_identity.current.account_id}:parameter/comfyui/*",
                                            }
                                        ],
                                    }
                                ),
                            }
                        ],
                    }
                },
                "aws_iam_role_policy": {"worker": {"role": "${aws_iam_role.worker.name}", "policy": doc % "worker"}},
                "aws_iam_policy": {"odd": {"policy": '${jsonencode({Version = "2012-10-17"})}'}},
                "aws_sqs_queue_policy": {
                    "q": {
                        "policy": json.dumps(
                            {
                                "Statement": [
                                    {
                                        "Effect": "Allow",
                                        "Principal": {"Service": "events.amazonaws.com"},
                                        "Action": "sqs:SendMessage",
                                        "Resource": "${aws_mq_broker.b.arn}",
                                    }
                                ]
                            }
                        )
                    }
                },
            },
            "module": {
                "karpenter": {
                    "source": "x",
                    "iam_policy_statements": [{"sid": "Extra", "actions": ["ec2:DescribeImages"], "resources": ["*"]}],
                }
            },
        },
    }


def test_extractor_converts_resolves_and_reports():
    policies = {p.origin: p for p in collect_policies(_fake_stacks())}
    worker = policies["data.aws_iam_policy_document.worker"]
    assert worker.kind == "identity" and worker.used_by == ["aws_iam_role_policy.worker.policy"]
    assert worker.raw["Statement"][0]["Sid"] == "Logs"  # merged from source_policy_documents
    assert worker.document["Statement"] == [
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": "logs:PutLogEvents",
            "Resource": ARN_BY_RESOURCE_TYPE["aws_cloudwatch_log_group"] + ":*",
        },
        {
            "Sid": "Queue",
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
            "Resource": ARN_BY_RESOURCE_TYPE["aws_sqs_queue"],
        },
        {
            "Sid": "Models",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::placeholder-bucket/models/*",
            "Condition": {"StringEquals": {"aws:ResourceAccount": ACCOUNT}},
        },
    ]
    assert worker.problems == [] and run_parliament(worker) == []
    trust = policies["data.aws_iam_policy_document.trust"]
    assert trust.kind == "trust"
    assert trust.document["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert run_parliament(trust) == []
    inline = policies["aws_iam_role.worker.inline_policy[0].policy"]
    assert inline.document["Statement"][0]["Resource"] == f"arn:aws:ssm:us-west-2:{ACCOUNT}:parameter/comfyui/*"
    assert policies["module.karpenter.iam_policy_statements"].document["Statement"][0]["Action"] == "ec2:DescribeImages"
    # what cannot be analyzed is reported, never guessed
    assert "neither plain JSON" in policies["aws_iam_policy.odd.policy"].problems[0]
    queue = policies["aws_sqs_queue_policy.q.policy"]
    assert queue.kind == "queue" and "aws_mq_broker" in queue.problems[0]


def test_split_send_command_statements_are_tolerated_only_when_the_document_is_granted():
    entries = load_known_false_positives()
    instances = {
        "Sid": "Nodes",
        "Effect": "Allow",
        "Action": "ssm:SendCommand",
        "Resource": "arn:aws:ec2:us-west-2:111122223333:instance/*",
        "Condition": {"StringEquals": {"ssm:resourceTag/comfyui.io/cluster": "comfyui"}},
    }
    document = {
        "Sid": "Doc",
        "Effect": "Allow",
        "Action": "ssm:SendCommand",
        "Resource": "arn:aws:ssm:us-west-2:111122223333:document/comfyui-model-sync",
    }
    split = run_parliament(_policy([document, instances]))
    assert [f.issue for f in split] == ["RESOURCE_MISMATCH"] and split[0].granted_elsewhere
    assert is_known_false_positive(split[0], entries)
    alone = run_parliament(_policy([instances]))
    assert [f.issue for f in alone] == ["RESOURCE_MISMATCH"] and not alone[0].granted_elsewhere
    assert not is_known_false_positive(alone[0], entries)
