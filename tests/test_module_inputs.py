"""Every module input in the synthesized JSON exists in the pinned module version, down to the
attributes inside object-typed inputs, and has the right shape.

Terraform converts a module input to the variable's type and silently drops object attributes the
type does not declare, so a misspelt attribute such as
`metadata_options.http_tokenz` would disappear without an error at plan time. The interfaces of the
pinned module versions are committed under tests/data/modules/ (see its README); the tests compare
every module block of every stack of every configuration variant with them.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.helpers import REPO
from tests.module_types import (
    Attribute,
    Collection,
    Object,
    Primitive,
    Tuple,
    TypeSyntaxError,
    check,
    interpolations,
    is_single_interpolation,
    is_template,
    parse_literal,
    parse_type,
)

INTERFACE_DIR = REPO / "tests" / "data" / "modules"
AWS_PROVIDER_VERSION = "6.25.0"  # what cdktf-cdktf-provider-aws 21.22.1 binds (FACTS.md)
META_ARGUMENTS = {"source", "version", "providers", "depends_on", "count", "for_each", "//"}
VARIANT_NAMES = (DEFAULT_VARIANT, *VARIANTS)


def _interface_files() -> list[Path]:
    return sorted(INTERFACE_DIR.glob("*.json"))


def load_interfaces() -> dict[tuple[str, str], dict]:
    """(source, version) → interface, with every variable type parsed."""
    out = {}
    for path in _interface_files():
        data = json.loads(path.read_text())
        data["file"] = path.name
        data["parsed"] = {name: parse_type(var["type"]) for name, var in data["variables"].items()}
        out[(data["source"], data["version"])] = data
    return out


INTERFACES = load_interfaces()


def _interface(source: str, version: str) -> dict:
    return INTERFACES[(source, version)]


# --- version constraints ---------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+){0,2}", text):
        raise ValueError(f"unsupported version {text!r}")
    return tuple(int(p) for p in text.split("."))


def _padded(v: tuple[int, ...]) -> tuple[int, ...]:
    return v + (0,) * (3 - len(v))


def constraint_allows(constraint: str, version: str) -> bool:
    """Does a Terraform version constraint (`>= 6.23`, `~> 6.0`, `>= 6.0, < 7.0`, `6.25.0`, …)
    accept `version`? Pre-release versions are not supported."""
    v = _padded(_version(version))
    for part in constraint.split(","):
        m = re.fullmatch(r"\s*(=|!=|>=|<=|>|<|~>)?\s*v?([0-9.]+)\s*", part)
        if not m:
            raise ValueError(f"unsupported constraint {part!r} in {constraint!r}")
        op, raw = m.group(1) or "=", m.group(2)
        bound = _version(raw)
        c = _padded(bound)
        if op == "~>":
            # ~> 6.23 allows >= 6.23, < 7.0; ~> 6.23.1 allows >= 6.23.1, < 6.24.0
            upper = (bound[0] + 1, 0, 0) if len(bound) == 1 else _padded(bound[:-2] + (bound[-2] + 1,))
            ok = c <= v < upper
        else:
            ok = {
                "=": v == c,
                "!=": v != c,
                ">=": v >= c,
                "<=": v <= c,
                ">": v > c,
                "<": v < c,
            }[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize(
    ("constraint", "version", "expected"),
    [
        (">= 6.23", "6.25.0", True),
        (">= 6.0", "6.25.0", True),
        (">= 6.26", "6.25.0", False),
        (">= 6.0, < 7.0", "6.25.0", True),
        (">= 6.0, < 6.25", "6.25.0", False),
        ("~> 6.0", "6.25.0", True),
        ("~> 6.0", "7.0.0", False),
        ("~> 6.25.0", "6.25.3", True),
        ("~> 6.24.0", "6.25.0", False),
        ("6.25.0", "6.25.0", True),
        ("= 6.25.1", "6.25.0", False),
        ("!= 6.25.0", "6.25.0", False),
        ("> 5.99", "6.25.0", True),
        ("<= 6.25", "6.25.0", True),
    ],
)
def test_constraint_allows(constraint, version, expected):
    assert constraint_allows(constraint, version) is expected


def test_exact_pin_pattern():
    assert _is_exact_pin("21.11.0")
    for loose in ("~> 21.11", ">= 21.11.0", "21.11", "21.x", "= 21.11.0", ""):
        assert not _is_exact_pin(loose), loose


def _is_exact_pin(version: str) -> bool:
    return bool(re.fullmatch(r"\d+\.\d+\.\d+", version or ""))


# --- the committed interfaces ----------------------------------------------------------------


def test_interfaces_are_committed():
    names = {p.name for p in _interface_files()}
    assert {"eks-v21.11.0.json", "eks-karpenter-v21.11.0.json", "vpc-v6.5.1.json"} <= names
    assert (INTERFACE_DIR / "LICENSE").is_file(), "the modules' Apache-2.0 licence must accompany the copies"
    assert (INTERFACE_DIR / "README.md").is_file()
    for (_source, version), data in INTERFACES.items():
        assert set(data) >= {"source", "version", "required_aws", "variables", "outputs"}, data["file"]
        assert _is_exact_pin(version), data["file"]
        for name, var in data["variables"].items():
            assert set(var) == {"required", "type"}, f"{data['file']}: {name}"
            assert isinstance(var["required"], bool)


# --- the parser, on tricky real strings ------------------------------------------------------


def _var_type(module_file: str, variable: str) -> str:
    return json.loads((INTERFACE_DIR / module_file).read_text())["variables"][variable]["type"]


def test_every_committed_type_parses():
    count = sum(len(data["parsed"]) for data in INTERFACES.values())
    assert count > 300  # eks 103 + karpenter 47 + vpc 236 at the time of writing


def test_parse_primitives_and_collections():
    assert parse_type("string") == Primitive("string")
    assert parse_type("list(string)") == Collection("list", Primitive("string"))
    assert parse_type("map(map(any))") == Collection("map", Collection("map", Primitive("any")))
    assert parse_type(" set( number ) ") == Collection("set", Primitive("number"))
    assert parse_type("tuple([string, number, list(bool)])") == Tuple(
        (Primitive("string"), Primitive("number"), Collection("list", Primitive("bool")))
    )
    assert parse_type("tuple([])") == Tuple(())


def test_parse_eks_access_entries():
    t = parse_type(_var_type("eks-v21.11.0.json", "access_entries"))
    assert isinstance(t, Collection) and t.kind == "map"
    entry = t.element
    assert isinstance(entry, Object)
    assert entry.attributes["principal_arn"] == Attribute(Primitive("string"))
    assert entry.attributes["type"].optional and entry.attributes["type"].default == "STANDARD"
    assert entry.attributes["tags"].default == {}
    assoc = entry.attributes["policy_associations"].type.element
    scope = assoc.attributes["access_scope"]
    assert not scope.optional
    assert set(scope.type.attributes) == {"namespaces", "type"}
    assert not scope.type.attributes["type"].optional


def test_parse_eks_addons_defaults():
    t = parse_type(_var_type("eks-v21.11.0.json", "addons")).element
    assert t.attributes["before_compute"].default is False
    assert t.attributes["most_recent"].default is True
    assert t.attributes["resolve_conflicts_on_update"].default == "OVERWRITE"
    assert t.attributes["timeouts"].default == {}
    assert set(t.attributes["timeouts"].type.attributes) == {"create", "update", "delete"}
    pod_identity = t.attributes["pod_identity_association"].type
    assert isinstance(pod_identity, Collection) and pod_identity.kind == "list"
    assert set(pod_identity.element.attributes) == {"role_arn", "service_account"}


def test_parse_eks_managed_node_groups():
    t = parse_type(_var_type("eks-v21.11.0.json", "eks_managed_node_groups")).element
    assert len(t.attributes) == 85  # counted independently (top-level `name =` at depth 0)
    metadata = t.attributes["metadata_options"].type
    assert "http_tokens" in metadata.attributes and "http_tokenz" not in metadata.attributes
    ebs = t.attributes["block_device_mappings"].type.element.attributes["ebs"].type
    assert ebs.attributes["volume_size"].type == Primitive("number")
    interfaces = t.attributes["network_interfaces"].type.element
    assert interfaces.attributes["security_groups"].default == []
    statements = t.attributes["iam_role_policy_statements"].type.element
    principals = statements.attributes["principals"].type.element
    assert principals.attributes["identifiers"] == Attribute(Collection("list", Primitive("string")))
    taints = t.attributes["taints"].type.element
    assert not taints.attributes["key"].optional and taints.attributes["value"].optional


def test_parse_eks_encryption_config_list_default():
    t = parse_type(_var_type("eks-v21.11.0.json", "encryption_config"))
    assert t.attributes["resources"].default == ["secrets"]


def test_parse_vpc_variables():
    conditions = parse_type(_var_type("vpc-v6.5.1.json", "flow_log_cloudwatch_iam_role_conditions"))
    assert set(conditions.element.attributes) == {"test", "variable", "values"}
    assert parse_type(_var_type("vpc-v6.5.1.json", "customer_gateways")) == Collection(
        "map", Collection("map", Primitive("any"))
    )
    assert parse_type(_var_type("vpc-v6.5.1.json", "default_security_group_egress")) == Collection(
        "list", Collection("map", Primitive("string"))
    )


def test_parse_karpenter_queue_policy_statements():
    t = parse_type(_var_type("eks-karpenter-v21.11.0.json", "queue_policy_statements"))
    assert t.kind == "map"
    condition = t.element.attributes["condition"].type.element
    assert all(not a.optional for a in condition.attributes.values())


def test_parse_hcl_literals_in_defaults():
    t = parse_type(
        'object({a = optional(string, "x\\"y\\\\z ${var.q} } \\u00e9"), b = optional(number, -1.5e3), '
        "c = optional(bool, true), d = optional(string, null), e = optional(list(number), [1, 2, 3]), "
        'f = optional(map(any), {k = "v", "q r" = [true, null], n: {}})\n'
        'g = optional(list(string), ["a,b", "]"]), "h" = string})'
    )
    a = t.attributes
    assert a["a"].default == 'x"y\\z ${var.q} } é'
    assert a["b"].default == -1500.0
    assert a["c"].default is True
    assert a["d"].has_default and a["d"].default is None
    assert a["e"].default == [1, 2, 3]
    assert a["f"].default == {"k": "v", "q r": [True, None], "n": {}}
    assert a["g"].default == ["a,b", "]"]
    assert not a["h"].optional
    assert parse_literal('"$${literal}"') == "${literal}"


@pytest.mark.parametrize(
    "bad",
    [
        "strin",
        "list(string",
        "object({a = string",
        "object({a string})",
        "map(string) x",
        "optional(string)",
        'object({a = optional(string, "unterminated)})',
        "object({a = string, a = number})",
        "tuple(string)",
    ],
)
def test_parse_rejects_malformed(bad):
    with pytest.raises(TypeSyntaxError):
        parse_type(bad)


def test_interpolation_helpers():
    assert is_single_interpolation("${module.vpc.private_subnets}")
    assert is_single_interpolation('${jsonencode({"a" = "}"})}')
    assert not is_single_interpolation("${a}-${b}")
    assert not is_single_interpolation("x${a}")
    assert is_template("arn:${a}:x") and is_template("%{ if x }y%{ endif }")
    assert not is_template("$${not.an.interpolation}") and not is_template("plain")
    assert interpolations('a${module.m.o}b$${x}${f("}")}') == ["module.m.o", 'f("}")']


# --- the checker -----------------------------------------------------------------------------

NODE_GROUPS = parse_type(_var_type("eks-v21.11.0.json", "eks_managed_node_groups"))
ACCESS_ENTRIES = parse_type(_var_type("eks-v21.11.0.json", "access_entries"))


def test_checker_reports_misspelt_nested_attribute_and_missing_required_one():
    """The negative test: the harness can fail."""
    node_groups = {
        "system": {
            "instance_types": ["m6i.large"],
            "metadata_options": {"http_tokenz": "required", "http_endpoint": "enabled"},
            "taints": {"gpu": {"key": "nvidia.com/gpu", "effect": "NO_SCHEDULE"}},
        }
    }
    assert check(node_groups, NODE_GROUPS, "eks_managed_node_groups") == [
        "eks_managed_node_groups.system.metadata_options.http_tokenz: not an attribute of the object type — "
        "Terraform would silently drop it (did you mean 'http_tokens'?)"
    ]
    entries = {"admin": {"policy_associations": {"a": {"policy_arn": "arn:x", "access_scope": {"namespaces": []}}}}}
    errors = check(entries, ACCESS_ENTRIES, "access_entries")
    assert errors == [
        "access_entries.admin.policy_associations.a.access_scope.type: required attribute (string) is missing",
        "access_entries.admin.principal_arn: required attribute (string) is missing",
    ]


def test_checker_shapes_and_primitives():
    t = NODE_GROUPS
    assert check({"g": {"instance_types": "m6i.large"}}, t, "ng") == [
        "ng.g.instance_types: a string where list(string) is expected"
    ]
    assert check({"g": {"min_size": "two"}}, t, "ng") == ["ng.g.min_size: a string ('two') where number is expected"]
    assert check({"g": {"min_size": True}}, t, "ng") == ["ng.g.min_size: a bool (True) where number is expected"]
    assert check({"g": {"ebs_optimized": 1}}, t, "ng") == ["ng.g.ebs_optimized: a number (1) where bool is expected"]
    assert check({"g": {"ami_type": {"x": 1}}}, t, "ng") == [
        "ng.g.ami_type: an object ({'x': 1}) where string is expected"
    ]
    assert check({"g": {"labels": {"comfyui.io/role": {"bad": 1}}}}, t, "ng") == [
        "ng.g.labels[\"comfyui.io/role\"]: an object ({'bad': 1}) where string is expected"
    ]
    assert check({"g": {"labels": ["a"]}}, t, "ng") == ["ng.g.labels: a list where map(string) is expected"]
    assert check(["x"], parse_type("tuple([string, number])"), "t") == [
        "t: 1 elements where tuple([string, number]) has 2"
    ]
    assert check([{"x": 1}], parse_type("list(object({y = optional(string)}))"), "l") == [
        "l[0].x: not an attribute of the object type — Terraform would silently drop it"
    ]
    # conversions Terraform performs are fine
    assert check({"g": {"min_size": "2", "ebs_optimized": "true", "ami_type": 5, "name": False}}, t, "ng") == []
    assert check({"g": {"desired_size": None, "taints": None}}, t, "ng") == []
    # interpolations: a single one matches any type, a template is a string
    assert check("${module.vpc.private_subnets}", parse_type("list(string)"), "s") == []
    assert check({"g": "${local.group}"}, t, "ng") == []
    assert check({"g": {"subnet_ids": "subnet-${var.x}"}}, t, "ng") == [
        "ng.g.subnet_ids: a string template where list(string) is expected"
    ]
    assert check({"g": {"min_size": "${var.n}"}}, t, "ng") == []
    assert check({"anything": [1, {"a": None}]}, parse_type("map(any)")) == []


# --- the synthesized stacks ------------------------------------------------------------------


def _modules(synth):
    for stack_name, stack in synth.stacks.items():
        for module_name, block in stack.get("module", {}).items():
            yield stack_name, module_name, block


def _walk_strings(node, path=""):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")


def module_input_errors(block: dict) -> list[str]:
    """Every problem with one module block (inputs against the pinned interface)."""
    source, version = block.get("source"), block.get("version")
    known = sorted(f"{s} {v}" for s, v in INTERFACES)
    if (source, version) not in INTERFACES:
        return [
            f"module source {source!r} version {version!r} has no committed interface; add its variables/outputs "
            f"as tests/data/modules/<name>-v<version>.json (known: {known})"
        ]
    interface = _interface(source, version)
    errors = []
    for key, value in block.items():
        if key in META_ARGUMENTS:
            continue
        if key not in interface["parsed"]:
            hint = difflib.get_close_matches(key, list(interface["parsed"]), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            errors.append(f"{key}: not a variable of {source} {version}{suffix}")
            continue
        errors += check(value, interface["parsed"][key], key)
    for name, var in interface["variables"].items():
        if var["required"] and block.get(name) is None:
            errors.append(f"{name}: required variable of {source} {version} is not set")
    return errors


def test_module_input_errors_on_a_bad_block():
    block = {
        "source": "terraform-aws-modules/eks/aws",
        "version": "21.11.0",
        "//": {"metadata": {}},
        "kubernetes_versoin": "1.34",
        "eks_managed_node_groups": {"system": {"metadata_options": {"http_tokenz": "required"}}},
        "depends_on": ["x"],
    }
    errors = module_input_errors(block)
    assert errors[0] == (
        "kubernetes_versoin: not a variable of terraform-aws-modules/eks/aws 21.11.0 "
        "(did you mean 'kubernetes_version'?)"
    )
    assert errors[1].startswith("eks_managed_node_groups.system.metadata_options.http_tokenz: not an attribute")
    assert len(errors) == 2
    loose = {"source": "terraform-aws-modules/eks/aws", "version": "~> 21.0"}
    assert "has no committed interface" in module_input_errors(loose)[0]


def test_required_variables_are_enforced(monkeypatch):
    source, version = "terraform-aws-modules/vpc/aws", "6.5.1"
    interface = _interface(source, version)
    monkeypatch.setitem(interface["variables"], "cidr", {**interface["variables"]["cidr"], "required": True})
    assert module_input_errors({"source": source, "version": version}) == [
        "cidr: required variable of terraform-aws-modules/vpc/aws 6.5.1 is not set"
    ]
    assert module_input_errors({"source": source, "version": version, "cidr": "10.0.0.0/16"}) == []


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_module_input_exists_in_the_pinned_module(synth_variants, variant):
    synth = synth_variants[variant]
    problems = []
    for stack_name, module_name, block in _modules(synth):
        for error in module_input_errors(block):
            problems.append(f"{stack_name}: module.{module_name}.{error}")
    assert not problems, "module inputs that Terraform would reject or silently drop:\n" + "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_module_versions_are_exact_pins_compatible_with_the_aws_provider(synth_variants, variant):
    synth = synth_variants[variant]
    problems = []
    for stack_name, module_name, block in _modules(synth):
        version = block.get("version")
        where = f"{stack_name}: module.{module_name}"
        if not _is_exact_pin(version):
            problems.append(f"{where}: version {version!r} is not an exact pin (terraform init would pick the newest)")
            continue
        if (block.get("source"), version) in INTERFACES:
            required = _interface(block["source"], version)["required_aws"]
            if not constraint_allows(required, AWS_PROVIDER_VERSION):
                problems.append(
                    f"{where}: {block['source']} {version} requires aws {required!r}, not {AWS_PROVIDER_VERSION}"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_stacks_pin_the_aws_provider_exactly(synth_variants, variant):
    synth = synth_variants[variant]
    problems = []
    for stack_name, stack in synth.stacks.items():
        providers = stack.get("terraform", {}).get("required_providers", {})
        if "aws" not in providers:
            if stack.get("module"):
                problems.append(f"{stack_name}: calls modules but declares no aws provider requirement")
            continue
        version = providers["aws"].get("version")
        if version != AWS_PROVIDER_VERSION:
            problems.append(
                f"{stack_name}: required_providers.aws.version is {version!r}, expected {AWS_PROVIDER_VERSION!r}"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_module_output_references_exist(synth_variants, variant):
    """`${module.X.Y}` anywhere in a stack names a module of that stack and an output it declares
    (terraform validate would catch this; there is no terraform binary here)."""
    synth = synth_variants[variant]
    problems = []
    for stack_name, stack in synth.stacks.items():
        modules = stack.get("module", {})
        for path, text in _walk_strings(stack):
            for expr in interpolations(text):
                for m in re.finditer(r"(?<![\w.])module\.([A-Za-z_][\w-]*)(?:\.([A-Za-z_][\w-]*))?", expr):
                    name, output = m.group(1), m.group(2)
                    where = f"{stack_name}: {path}: module.{name}" + (f".{output}" if output else "")
                    if name not in modules:
                        problems.append(f"{where}: no module {name!r} in this stack")
                        continue
                    key = (modules[name].get("source"), modules[name].get("version"))
                    if output and key in INTERFACES and output not in INTERFACES[key]["outputs"]:
                        problems.append(f"{where}: {key[0]} {key[1]} has no output {output!r}")
    assert not problems, "\n".join(problems)
