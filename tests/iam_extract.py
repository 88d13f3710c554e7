"""Collect every IAM policy document from synthesized cdktf JSON, as IAM JSON for parliament.

Sources, in every stack:

* ``data.aws_iam_policy_document.*`` — converted the way the aws provider renders them
  (Version 2012-10-17; single-element lists collapse to a scalar; ``principals`` become
  ``{"AWS": …, "Service": …}`` or ``"*"``; ``condition`` blocks become ``{test: {variable: values}}``;
  ``source_policy_documents`` / ``override_policy_documents`` are merged).
* Policy attributes of resources (``aws_iam_policy.policy``, ``aws_iam_role_policy.policy``,
  ``aws_iam_role.assume_role_policy``, ``aws_iam_role.inline_policy[].policy``,
  ``aws_s3_bucket_policy.policy``, ``aws_sqs_queue_policy.policy``, ``aws_kms_key.policy``, and any
  other ``policy``/``*_policy``/``policy_document`` attribute holding a document): either a plain JSON
  string (Terraform interpolations inside it are fine) or a ``${data.aws_iam_policy_document.X.json}``
  reference, which is mapped to the converted document.
* Module inputs named ``*policy_statements`` (e.g. the karpenter module's ``iam_policy_statements``
  and ``queue_policy_statements``, node groups' ``iam_role_policy_statements``): statements in the
  policy-document schema that the module appends to the policies it builds.

Terraform interpolations are replaced by syntactically valid placeholders derived from what they
reference, so parliament judges the action/resource pairing: ``${aws_s3_bucket.x.arn}/*`` →
``arn:aws:s3:::placeholder-bucket/*``, ``${aws_sqs_queue.q.arn}`` → an SQS queue ARN, and so on
(``ARN_BY_RESOURCE_TYPE``, ``MODULE_OUTPUT_ARNS``). Cross-stack references
(``data.terraform_remote_state.X.outputs.Y``) are followed to the producing stack's output.
Anything that cannot be mapped is recorded in ``Policy.problems`` (the tests fail on it, naming the
table to extend) instead of being guessed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from tests.module_types import interpolations, is_single_interpolation

ACCOUNT = "111122223333"
REGION = "us-west-2"
UUID = "00000000-0000-0000-0000-000000000000"
OIDC_HOST = f"oidc.eks.{REGION}.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"

# Resource type (without the data. prefix) → a valid ARN of that type.
ARN_BY_RESOURCE_TYPE = {
    "aws_s3_bucket": "arn:aws:s3:::placeholder-bucket",
    "aws_sqs_queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:placeholder",
    "aws_sns_topic": f"arn:aws:sns:{REGION}:{ACCOUNT}:placeholder",
    "aws_kms_key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000",
    "aws_kms_replica_key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000",
    "aws_kms_alias": f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/placeholder",
    "aws_lambda_function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:placeholder",
    "aws_lambda_alias": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:placeholder:live",
    "aws_iam_role": f"arn:aws:iam::{ACCOUNT}:role/placeholder",
    "aws_iam_policy": f"arn:aws:iam::{ACCOUNT}:policy/placeholder",
    "aws_iam_user": f"arn:aws:iam::{ACCOUNT}:user/placeholder",
    "aws_iam_instance_profile": f"arn:aws:iam::{ACCOUNT}:instance-profile/placeholder",
    "aws_iam_openid_connect_provider": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{OIDC_HOST}",
    "aws_ssm_document": f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/placeholder",
    "aws_ssm_parameter": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/placeholder",
    "aws_cloudwatch_log_group": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:placeholder",
    "aws_cloudwatch_event_rule": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/placeholder",
    "aws_cloudwatch_event_bus": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/placeholder",
    "aws_ecr_repository": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/placeholder",
    "aws_eks_cluster": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/placeholder",
    "aws_eks_node_group": f"arn:aws:eks:{REGION}:{ACCOUNT}:nodegroup/placeholder/placeholder/{UUID}",
    "aws_dynamodb_table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/placeholder",
    # execution_arn of an HTTP API: what execute-api:Invoke resources are built from.
    "aws_apigatewayv2_api": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:a1b2c3d4e5",
    "aws_secretsmanager_secret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:placeholder-AbCdEf",
    "aws_efs_file_system": f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/fs-0123456789abcdef0",
    "aws_efs_access_point": f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:access-point/fsap-0123456789abcdef0",
    "aws_cloudfront_distribution": f"arn:aws:cloudfront::{ACCOUNT}:distribution/EDFDVBD6EXAMPLE",
    "aws_cloudfront_origin_access_identity": (
        "arn:aws:iam::cloudfront:user/CloudFront Origin Access Identity E2QWRUHEXAMPLE"
    ),
    "aws_lb": f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/placeholder/50dc6c495c0c9188",
    "aws_lb_target_group": f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/placeholder/73e2d6bc24d8a067",
    "aws_acm_certificate": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/00000000-0000-0000-0000-000000000000",
    "aws_cognito_user_pool": f"arn:aws:cognito-idp:{REGION}:{ACCOUNT}:userpool/{REGION}_EXAMPLE",
    "aws_wafv2_web_acl": f"arn:aws:wafv2:us-east-1:{ACCOUNT}:global/webacl/placeholder/{UUID}",
    "aws_sfn_state_machine": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:placeholder",
    "aws_instance": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0",
    "aws_launch_template": f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0123456789abcdef0",
    "aws_security_group": f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0123456789abcdef0",
    "aws_subnet": f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-0123456789abcdef0",
    "aws_vpc": f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0123456789abcdef0",
    "aws_vpc_endpoint": f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc-endpoint/vpce-0123456789abcdef0",
    "aws_caller_identity": f"arn:aws:iam::{ACCOUNT}:root",  # data.aws_caller_identity.x.arn
}

# (resource type, attribute) → ARN, where an attribute other than `arn` names another resource.
ARN_BY_ATTRIBUTE = {
    # Real stream labels are timestamps with colons (…/stream/2026-01-01T00:00:00.000), which
    # parliament 1.6.4 splits as ARN fields; the placeholder keeps the shape without them.
    (
        "aws_dynamodb_table",
        "stream_arn",
    ): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/placeholder/stream/2026-01-01T000000",
}

# Module output names (substring, first match wins) → ARN. For terraform-aws-modules outputs.
MODULE_OUTPUT_ARNS = [
    ("oidc_provider_arn", ARN_BY_RESOURCE_TYPE["aws_iam_openid_connect_provider"]),
    ("kms_key_arn", ARN_BY_RESOURCE_TYPE["aws_kms_key"]),
    ("queue_arn", ARN_BY_RESOURCE_TYPE["aws_sqs_queue"]),
    ("instance_profile_arn", ARN_BY_RESOURCE_TYPE["aws_iam_instance_profile"]),
    ("policy_arn", ARN_BY_RESOURCE_TYPE["aws_iam_policy"]),
    ("role_arn", ARN_BY_RESOURCE_TYPE["aws_iam_role"]),
    ("log_group_arn", ARN_BY_RESOURCE_TYPE["aws_cloudwatch_log_group"]),
    ("cluster_arn", ARN_BY_RESOURCE_TYPE["aws_eks_cluster"]),
    ("node_group_arn", ARN_BY_RESOURCE_TYPE["aws_eks_node_group"]),
    ("launch_template_arn", ARN_BY_RESOURCE_TYPE["aws_launch_template"]),
    ("vpc_arn", ARN_BY_RESOURCE_TYPE["aws_vpc"]),
    ("security_group_arn", ARN_BY_RESOURCE_TYPE["aws_security_group"]),
    ("subnet_arns", ARN_BY_RESOURCE_TYPE["aws_subnet"]),
]

# Attributes that yield a component of an ARN (or of a condition value) rather than a whole ARN.
COMPONENT_BY_ATTRIBUTE = {
    "account_id": ACCOUNT,
    "partition": "aws",
    "dns_suffix": "amazonaws.com",
    "region": REGION,
}

# (resource type, attribute) → policy kind. Anything else named policy / *_policy / policy_document
# that holds a policy is collected too, as kind "resource" (with a Principal) or "identity".
POLICY_ATTRIBUTES = {
    ("aws_iam_policy", "policy"): "identity",
    ("aws_iam_role_policy", "policy"): "identity",
    ("aws_iam_user_policy", "policy"): "identity",
    ("aws_iam_group_policy", "policy"): "identity",
    ("aws_iam_role", "assume_role_policy"): "trust",
    ("aws_iam_role", "inline_policy"): "identity",
    ("aws_s3_bucket_policy", "policy"): "bucket",
    ("aws_s3_bucket", "policy"): "bucket",
    ("aws_sqs_queue_policy", "policy"): "queue",
    ("aws_sqs_queue", "policy"): "queue",
    ("aws_sns_topic_policy", "policy"): "topic",
    ("aws_sns_topic", "policy"): "topic",
    ("aws_kms_key", "policy"): "key",
    ("aws_kms_replica_key", "policy"): "key",
    ("aws_ecr_repository_policy", "policy"): "repository",
    ("aws_vpc_endpoint", "policy"): "endpoint",
    ("aws_vpc_endpoint_policy", "policy"): "endpoint",
    ("aws_cloudwatch_log_resource_policy", "policy_document"): "resource",
    ("aws_secretsmanager_secret_policy", "policy"): "resource",
}
# Kinds that are identity policies (attached to a principal): no Principal element.
IDENTITY_KINDS = {"identity"}

DOC_REF = re.compile(r"^\$\{data\.aws_iam_policy_document\.([\w-]+)\.(json|minified_json)\}$")


@dataclass
class Policy:
    stack: str
    origin: str  # e.g. "data.aws_iam_policy_document.key_policy" or "aws_iam_role.x.assume_role_policy"
    kind: str  # identity | trust | bucket | queue | key | topic | repository | endpoint | resource
    raw: dict  # IAM JSON, Terraform interpolations intact
    document: dict = field(default_factory=dict)  # IAM JSON with placeholders
    used_by: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        used = f" (used by {', '.join(self.used_by)})" if self.used_by else ""
        return f"{self.stack}: {self.origin} [{self.kind}]{used}"

    @property
    def json(self) -> str:
        return json.dumps(self.document, indent=1, sort_keys=False)


class Unresolved(Exception):
    pass


# --- conversion of aws_iam_policy_document ---------------------------------------------------


def _scalar_or_list(values: list) -> object:
    """The aws provider renders a one-element list as a scalar."""
    return values[0] if len(values) == 1 else values


def _as_list(value: object, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str) and is_single_interpolation(value):
        raise Unresolved(f"{what} is a Terraform expression ({value}); cannot analyze it offline")
    return [value]


def _principals(blocks: list, what: str) -> object:
    out: dict[str, list] = {}
    for block in blocks:
        ptype = block.get("type")
        identifiers = _as_list(block.get("identifiers"), f"{what}.identifiers")
        if ptype == "*" and identifiers == ["*"]:
            return "*"
        out.setdefault(ptype, []).extend(identifiers)
    return {k: _scalar_or_list(v) for k, v in out.items()}


def statement_to_iam(stmt: dict, where: str) -> dict:
    """One `statement` block of aws_iam_policy_document (or a module's *policy_statements item)."""
    known = {
        "sid",
        "effect",
        "actions",
        "not_actions",
        "resources",
        "not_resources",
        "principals",
        "not_principals",
        "condition",
        "//",
    }
    unknown = set(stmt) - known
    if unknown:
        raise Unresolved(f"{where}: unknown statement attributes {sorted(unknown)}")
    out: dict = {}
    if stmt.get("sid"):
        out["Sid"] = stmt["sid"]
    out["Effect"] = stmt.get("effect") or "Allow"
    for src, dst in (("principals", "Principal"), ("not_principals", "NotPrincipal")):
        blocks = _as_list(stmt.get(src), f"{where}.{src}")
        if blocks:
            out[dst] = _principals(blocks, f"{where}.{src}")
    for src, dst in (
        ("actions", "Action"),
        ("not_actions", "NotAction"),
        ("resources", "Resource"),
        ("not_resources", "NotResource"),
    ):
        values = _as_list(stmt.get(src), f"{where}.{src}")
        if values:
            out[dst] = _scalar_or_list(values)
    conditions = _as_list(stmt.get("condition"), f"{where}.condition")
    if conditions:
        cond: dict[str, dict] = {}
        for c in conditions:
            values = _as_list(c.get("values"), f"{where}.condition.values")
            cond.setdefault(c["test"], {}).setdefault(c["variable"], []).extend(values)
        out["Condition"] = {
            test: {var: _scalar_or_list(vals) for var, vals in block.items()} for test, block in cond.items()
        }
    return out


def _merge_by_sid(base: list[dict], extra: list[dict], *, override: bool) -> list[dict]:
    """source_policy_documents/override_policy_documents semantics: statements with the same Sid
    replace earlier ones (override) or are replaced by later ones; others are appended."""
    out = list(base)
    for stmt in extra:
        sid = stmt.get("Sid")
        index = next((i for i, s in enumerate(out) if sid and s.get("Sid") == sid), None)
        if index is None:
            out.append(stmt)
        elif override:
            out[index] = stmt
    return out


def convert_policy_documents(stack: dict, stack_name: str) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """name → IAM JSON (interpolations intact) for every data.aws_iam_policy_document, and
    name → problems."""
    blocks = stack.get("data", {}).get("aws_iam_policy_document", {})
    done: dict[str, dict] = {}
    problems: dict[str, list[str]] = {name: [] for name in blocks}

    def referenced_doc(value: object, where: str, seen: tuple[str, ...]) -> list[dict]:
        if isinstance(value, str):
            m = DOC_REF.match(value)
            if m:
                return convert(m.group(1), seen)["Statement"]
            if value.lstrip().startswith("{"):
                return _statements_of(json.loads(value))
        raise Unresolved(f"{where}: cannot resolve {value!r:.80}")

    def convert(name: str, seen: tuple[str, ...] = ()) -> dict:
        if name in done:
            return done[name]
        if name in seen:
            raise Unresolved(f"circular source_policy_documents through {name}")
        if name not in blocks:
            raise Unresolved(f"data.aws_iam_policy_document.{name} is not in stack {stack_name}")
        block = blocks[name]
        where = f"data.aws_iam_policy_document.{name}"
        statements: list[dict] = []
        for src in _as_list(block.get("source_policy_documents"), f"{where}.source_policy_documents"):
            statements = _merge_by_sid(statements, referenced_doc(src, where, seen + (name,)), override=True)
        own = [
            statement_to_iam(s, f"{where}.statement[{i}]")
            for i, s in enumerate(_as_list(block.get("statement"), f"{where}.statement"))
        ]
        statements = _merge_by_sid(statements, own, override=True)
        for src in _as_list(block.get("override_policy_documents"), f"{where}.override_policy_documents"):
            statements = _merge_by_sid(statements, referenced_doc(src, where, seen + (name,)), override=True)
        doc: dict = {"Version": block.get("version") or "2012-10-17"}
        if block.get("policy_id"):
            doc["Id"] = block["policy_id"]
        doc["Statement"] = statements
        done[name] = doc
        return doc

    for name in blocks:
        try:
            convert(name)
        except Unresolved as exc:
            problems[name].append(str(exc))
            done[name] = {"Version": "2012-10-17", "Statement": []}
    return done, problems


def _statements_of(doc: dict) -> list[dict]:
    stmts = doc.get("Statement", [])
    return stmts if isinstance(stmts, list) else [stmts]


# --- placeholders ----------------------------------------------------------------------------


def _tail_attribute(expr: str) -> str:
    names = re.findall(r"\.([A-Za-z_][\w-]*)", re.sub(r"\[[^\]]*\]", "", expr))
    return names[-1] if names else ""


class Resolver:
    """Maps a Terraform expression to a placeholder, following cross-stack references."""

    def __init__(self, stacks: dict[str, dict]):
        self.stacks = stacks
        self.outputs = {
            name: (stack_name, out.get("value"))
            for stack_name, stack in stacks.items()
            for name, out in stack.get("output", {}).items()
        }

    def follow(self, expr: str, depth: int = 0) -> str:
        """data.terraform_remote_state.X.outputs.Y[...] → the producing stack's output expression."""
        m = re.match(r"^data\.terraform_remote_state\.[\w-]+\.outputs\.([\w-]+)(.*)$", expr.strip(), re.S)
        if not m or depth > 5:
            return expr
        found = self.outputs.get(m.group(1))
        if not found or not isinstance(found[1], str):
            return expr
        inner = interpolations(found[1])
        if len(inner) != 1 or not is_single_interpolation(found[1]):
            return expr
        return self.follow(inner[0] + m.group(2), depth + 1)

    def arn(self, expr: str) -> str:
        """A whole ARN for an expression that yields one."""
        expr = self.follow(expr).strip()
        attr = _tail_attribute(expr)
        m = re.match(r"^(?:data\.)?(aws_[\w]+)\.[\w-]+", expr)
        if m and (attr == "arn" or attr.endswith("_arn")):
            rtype = m.group(1)
            if (rtype, attr) in ARN_BY_ATTRIBUTE:
                return ARN_BY_ATTRIBUTE[(rtype, attr)]
            if rtype in ARN_BY_RESOURCE_TYPE:
                return ARN_BY_RESOURCE_TYPE[rtype]
            raise Unresolved(
                f"no placeholder ARN for resource type {rtype} (${{{expr}}}); add it to "
                "ARN_BY_RESOURCE_TYPE in tests/iam_extract.py"
            )
        if expr.startswith("module."):
            for needle, arn in MODULE_OUTPUT_ARNS:
                if needle in attr:
                    return arn
            raise Unresolved(
                f"no placeholder ARN for module output {attr!r} (${{{expr}}}); add it to "
                "MODULE_OUTPUT_ARNS in tests/iam_extract.py"
            )
        raise Unresolved(
            f"cannot tell which ARN ${{{expr}}} yields; reference a resource's .arn or extend tests/iam_extract.py"
        )

    def component(self, expr: str) -> str:
        """A placeholder for an expression used inside a larger string (ARN component, condition)."""
        expr = self.follow(expr).strip()
        attr = _tail_attribute(expr)
        if attr in COMPONENT_BY_ATTRIBUTE:
            return COMPONENT_BY_ATTRIBUTE[attr]
        if re.match(r"^data\.aws_region\.", expr) and attr in ("name", "id"):
            return REGION
        if "oidc" in expr and not attr.endswith("_arn"):
            return OIDC_HOST  # issuer URL / provider host, usually with "https://" stripped
        if attr == "arn" or attr.endswith("_arn"):
            return self.arn(expr)
        if re.match(r"^(?:data\.)?aws_s3_bucket\.", expr) and attr in ("id", "bucket"):
            return "placeholder-bucket"
        return "placeholder"

    def substitute(self, text: str, *, whole_arn: bool) -> str:
        """Replace every interpolation in `text`. With whole_arn, an interpolation at the start of
        the string must yield an ARN (Resource, Principal)."""
        out = []
        i = 0
        for expr in interpolations(text):
            token = "${" + expr + "}"
            j = text.index(token, i)
            out.append(text[i:j])
            if whole_arn and j == 0:
                out.append(self.arn(expr))
            else:
                out.append(self.component(expr))
            i = j + len(token)
        out.append(text[i:])
        return "".join(out).replace("$${", "${")


def _map_strings(value: object, fn) -> object:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def with_placeholders(raw: dict, resolver: Resolver) -> tuple[dict, list[str]]:
    problems: list[str] = []

    def sub(whole_arn: bool):
        def fn(text: str) -> str:
            try:
                return resolver.substitute(text, whole_arn=whole_arn)
            except Unresolved as exc:
                problems.append(str(exc))
                return text

        return fn

    doc = copy.deepcopy(raw)
    for stmt in _statements_of(doc):
        for key in ("Resource", "NotResource"):
            if key in stmt:
                stmt[key] = _map_strings(stmt[key], sub(True))
        for key in ("Principal", "NotPrincipal"):
            if isinstance(stmt.get(key), dict):
                stmt[key] = {ptype: _map_strings(ids, sub(ptype == "AWS")) for ptype, ids in stmt[key].items()}
        if "Condition" in stmt:
            stmt["Condition"] = {
                test: {sub(False)(var): _map_strings(vals, sub(False)) for var, vals in block.items()}
                for test, block in stmt["Condition"].items()
            }
        for key in ("Action", "NotAction", "Sid"):
            if key in stmt:
                stmt[key] = _map_strings(stmt[key], sub(False))
    return doc, problems


# --- collection ------------------------------------------------------------------------------


def _kind_from_content(doc: dict) -> str:
    stmts = _statements_of(doc)
    if any("Principal" in s or "NotPrincipal" in s for s in stmts):
        if all("Resource" not in s and "NotResource" not in s for s in stmts):
            return "trust"
        return "resource"
    return "identity"


def _policy_values(rtype: str, attrs: dict):
    """(attribute path, value, kind or None) of every policy-holding attribute of a resource."""
    for key, value in attrs.items():
        if key == "//":
            continue
        if rtype == "aws_iam_role" and key == "inline_policy":
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(item, dict) and "policy" in item:
                    yield f"inline_policy[{i}].policy", item["policy"], "identity"
            continue
        if (rtype, key) in POLICY_ATTRIBUTES:
            yield key, value, POLICY_ATTRIBUTES[(rtype, key)]
            continue
        named_like_a_policy = key in ("policy", "policy_document", "access_policies") or key.endswith("_policy")
        if named_like_a_policy and isinstance(value, str) and (DOC_REF.match(value) or '"Statement"' in value):
            yield key, value, None


def collect_policies(stacks: dict[str, dict]) -> list[Policy]:
    """Every IAM policy in every stack (see the module docstring)."""
    resolver = Resolver(stacks)
    policies: list[Policy] = []
    for stack_name, stack in stacks.items():
        docs, doc_problems = convert_policy_documents(stack, stack_name)
        doc_policies: dict[str, Policy] = {}
        for name, raw in docs.items():
            pol = Policy(stack_name, f"data.aws_iam_policy_document.{name}", "", raw, problems=list(doc_problems[name]))
            doc_policies[name] = pol

        for rtype, resources in stack.get("resource", {}).items():
            for rname, attrs in resources.items():
                for attr_path, value, kind in _policy_values(rtype, attrs):
                    origin = f"{rtype}.{rname}.{attr_path}"
                    if isinstance(value, str) and DOC_REF.match(value):
                        doc_name = DOC_REF.match(value).group(1)
                        pol = doc_policies.get(doc_name)
                        if pol is None:
                            policies.append(
                                Policy(
                                    stack_name,
                                    origin,
                                    kind or "identity",
                                    {},
                                    problems=[f"references missing policy document {doc_name}"],
                                )
                            )
                            continue
                        pol.used_by.append(origin)
                        if kind:
                            if pol.kind and pol.kind != kind:
                                pol.problems.append(f"used as both a {pol.kind} and a {kind} policy")
                            pol.kind = kind
                        continue
                    if isinstance(value, str) and value.lstrip().startswith("{"):
                        try:
                            raw = json.loads(value)
                        except json.JSONDecodeError as exc:
                            policies.append(
                                Policy(
                                    stack_name,
                                    origin,
                                    kind or "identity",
                                    {},
                                    problems=[f"policy is not valid JSON: {exc}"],
                                )
                            )
                            continue
                        policies.append(Policy(stack_name, origin, kind or _kind_from_content(raw), raw))
                        continue
                    if kind:  # a known policy attribute we cannot read
                        policies.append(
                            Policy(
                                stack_name,
                                origin,
                                kind,
                                {},
                                problems=[
                                    "policy is neither plain JSON nor ${data.aws_iam_policy_document.X.json}: "
                                    f"{value!r:.120}"
                                ],
                            )
                        )

        for pol in doc_policies.values():
            if not pol.kind:
                pol.kind = _kind_from_content(pol.raw)
            policies.append(pol)

        for mname, block in stack.get("module", {}).items():
            policies.extend(_module_statement_policies(stack_name, mname, block))

    for pol in policies:
        if pol.raw:
            pol.document, problems = with_placeholders(pol.raw, resolver)
            pol.problems.extend(problems)
    return policies


def _module_statement_policies(stack_name: str, module_name: str, block: dict) -> list[Policy]:
    found = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}.{key}" if path else key
                if key.endswith("policy_statements") and value is not None:
                    found.append((sub, key, value))
                else:
                    walk(value, sub)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk({k: v for k, v in block.items() if k not in ("//", "source", "version")}, "")
    out = []
    for path, key, value in found:
        origin = f"module.{module_name}.{path}"
        kind = "queue" if "queue" in key else "identity"
        try:
            items = list(value.values()) if isinstance(value, dict) else _as_list(value, origin)
            statements = [statement_to_iam(s, f"{origin}[{i}]") for i, s in enumerate(items)]
            out.append(Policy(stack_name, origin, kind, {"Version": "2012-10-17", "Statement": statements}))
        except (Unresolved, AttributeError, KeyError) as exc:
            out.append(Policy(stack_name, origin, kind, {}, problems=[f"cannot read statements: {exc}"]))
    return out
