"""Every synthesized stack of every configuration variant passes the real `terraform validate`.

The harness (tests/terraform_validate.py) validates a transformed copy of each stack offline:
aws from the local provider mirror, registry modules replaced by stubs of their vendored
interfaces, helm/kubernetes blocks stood in by terraform_data, aws 6.x-only arguments stripped
after a check. The first half of this file tests those transformations on small hand-made
stacks (no terraform needed); the second half runs terraform: on the real stacks, and on
copies with a planted error each, which the harness must report (the control tests).

Without a terraform binary or a provider mirror the terraform tests skip (with the reason);
tests/test_tf_references.py checks references everywhere.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.module_types import Collection, Object, Primitive, parse_type
from tests.terraform_validate import (
    NEWER_AWS_ARGUMENTS,
    ROOT_FILE,
    STACK_FILE,
    Diagnostic,
    Interface,
    Mirror,
    PreparedStack,
    Report,
    Toolchain,
    Validator,
    cli_config_text,
    find_toolchain,
    load_interfaces,
    parse_diagnostics,
    platform_tag,
    prepare_stack,
    prepare_synth,
    read_mirror,
    rename_edits,
    render_json,
    rewrite_expression,
    rewrite_template,
    share_providers,
)
from tests.terraform_validate import Rename as R

VARIANT_NAMES = (DEFAULT_VARIANT, *VARIANTS)
INTERFACES = load_interfaces()
MIRROR_5 = Mirror(root=Path("/mirror"), versions={"hashicorp/aws": "5.100.0"})
MIRROR_6 = Mirror(root=MIRROR_5.root, versions={"hashicorp/aws": "6.25.0"})
VPC = ("terraform-aws-modules/vpc/aws", "6.5.1")


def _prepare(stack: dict, mirror: Mirror = MIRROR_5) -> PreparedStack:
    return prepare_stack("test/stack", stack, mirror=mirror, interfaces=INTERFACES)


def _stack(**sections) -> dict:
    base = {
        "terraform": {
            "backend": {"s3": {"bucket": "b", "key": "k", "region": "us-west-2"}},
            "required_providers": {"aws": {"source": "aws", "version": "6.25.0"}},
        },
        "provider": {"aws": [{"region": "us-west-2"}]},
    }
    return {**base, **sections}


# --- the transformations (no terraform needed) ------------------------------------------------


def _workload_like() -> dict:
    stack = _stack(
        data={
            "terraform_remote_state": {"platform": {"backend": "s3", "config": {"bucket": "b"}}},
            "kubernetes_secret": {"token": {"metadata": {"name": "t"}}},
        },
        resource={
            "terraform_data": {"helm_release__chart": {"input": "already taken"}},
            "helm_release": {
                "chart": {
                    "//": {"metadata": {"path": "x"}},
                    "name": "chart",
                    "values": ["bucket: ${aws_s3_bucket.models.arn}\n"],
                    "provider": "helm",
                    "lifecycle": {"ignore_changes": ["values"]},
                }
            },
            "kubernetes_manifest": {
                "cm": {
                    "count": 2,
                    "manifest": {"data": {"status": "${helm_release.chart.status}", "n": "${count.index}"}},
                    "depends_on": ["helm_release.chart", "aws_s3_bucket.models"],
                }
            },
            "aws_s3_bucket": {
                "models": {"bucket": "models", "region": "us-east-1"},
                "copy": {
                    "bucket": "${kubernetes_manifest.cm[0].object.metadata.name}-${data.kubernetes_secret.token.data}",
                    "region": "${data.terraform_remote_state.platform.outputs.region}",
                },
            },
        },
        output={"token": {"value": "${data.kubernetes_secret.token}"}},
    )
    stack["terraform"]["required_providers"].update(
        helm={"source": "helm", "version": "3.1.1"},
        kubernetes={"source": "example.com/hashicorp/kubernetes", "version": "2.38.0"},
    )
    stack["provider"]["helm"] = [{"kubernetes": {"host": "${data.terraform_remote_state.platform.outputs.host}"}}]
    stack["provider"]["kubernetes"] = [{"host": "${data.terraform_remote_state.platform.outputs.host}"}]
    return stack


def test_providers_are_pinned_to_the_mirror_and_stand_ins_keep_their_expressions():
    prepared = _prepare(_workload_like())
    config = prepared.config
    assert config["terraform"]["required_providers"] == {"aws": {"source": "aws", "version": "5.100.0"}}
    assert config["terraform"]["backend"] == {"s3": {"bucket": "b", "key": "k", "region": "us-west-2"}}
    assert set(config["provider"]) == {"aws"}
    assert config["locals"] == {
        "harness_provider_helm": [{"kubernetes": {"host": "${data.terraform_remote_state.platform.outputs.host}"}}],
        "harness_provider_kubernetes": [{"host": "${data.terraform_remote_state.platform.outputs.host}"}],
    }
    assert "terraform_remote_state" in config["data"]
    assert prepared.problems == []


def test_helm_and_kubernetes_blocks_become_terraform_data_with_references_renamed():
    config = _prepare(_workload_like()).config
    resources = config["resource"]
    assert "helm_release" not in resources and "kubernetes_manifest" not in resources
    assert "kubernetes_secret" not in config["data"]
    stand_ins = resources["terraform_data"]
    assert set(stand_ins) == {
        "helm_release__chart",  # the existing one, untouched
        "helm_release__chart_2",
        "kubernetes_manifest__cm",
        "data__kubernetes_secret__token",
    }
    assert stand_ins["helm_release__chart"] == {"input": "already taken"}
    chart = stand_ins["helm_release__chart_2"]
    assert chart == {
        "input": {"name": "chart", "values": ["bucket: ${aws_s3_bucket.models.arn}\n"]},
        "//": {"metadata": {"path": "x"}},
        "lifecycle": {"ignore_changes": ["input"]},
    }
    manifest = stand_ins["kubernetes_manifest__cm"]
    assert manifest["count"] == 2
    assert manifest["input"]["manifest"]["data"] == {
        "status": "${terraform_data.helm_release__chart_2.output}",
        "n": "${count.index}",
    }
    assert manifest["depends_on"] == ["terraform_data.helm_release__chart_2", "aws_s3_bucket.models"]
    assert resources["aws_s3_bucket"]["copy"]["bucket"] == (
        "${terraform_data.kubernetes_manifest__cm[0].output.metadata.name}-"
        "${terraform_data.data__kubernetes_secret__token.output}"
    )
    assert config["output"]["token"]["value"] == "${terraform_data.data__kubernetes_secret__token}"


def test_newer_region_argument_is_checked_then_stripped_or_kept_where_terraform_validates_it():
    prepared = _prepare(_workload_like())
    buckets = prepared.config["resource"]["aws_s3_bucket"]
    assert buckets["models"] == {"bucket": "models"}
    assert "region" not in buckets["copy"]
    assert buckets["copy"]["lifecycle"] == {
        "precondition": [
            {
                "condition": '${terraform.workspace != ""}',
                "error_message": "${data.terraform_remote_state.platform.outputs.region}",
            }
        ]
    }
    assert any("resource.aws_s3_bucket.models.region: removed" in note for note in prepared.notes)
    # a provider with the argument keeps it
    assert _prepare(_workload_like(), MIRROR_6).config["resource"]["aws_s3_bucket"]["models"]["region"] == "us-east-1"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("us-east-1", None),
        ("us-gov-west-1", None),
        ("US-EAST-1", "resource.aws_s3_bucket.b.region: 'US-EAST-1' is not an AWS region name"),
        ("us-east-1 ", "resource.aws_s3_bucket.b.region: 'us-east-1 ' is not an AWS region name"),
        (["us-east-1"], "resource.aws_s3_bucket.b.region: ['us-east-1'] is not a string"),
    ],
)
def test_a_stripped_literal_region_must_be_a_region(value, problem):
    prepared = _prepare(_stack(resource={"aws_s3_bucket": {"b": {"bucket": "b", "region": value}}}))
    assert prepared.problems == ([problem] if problem else [])


def test_newer_arguments_table_explains_every_entry():
    for arg in NEWER_AWS_ARGUMENTS:
        assert arg.reason and arg.types and arg.sections and arg.since >= (6, 0, 0), arg


def test_a_provider_neither_mirrored_nor_stood_in_is_a_problem():
    stack = _stack(resource={"random_id": {"suffix": {"byte_length": 4}}})
    stack["terraform"]["required_providers"]["random"] = {"source": "hashicorp/random", "version": "3.6.0"}
    prepared = _prepare(stack)
    assert len(prepared.problems) == 1
    assert prepared.problems[0].startswith("terraform.required_providers.random: hashicorp/random is neither")
    # the rest of the stack is still validated: its blocks are stood in like helm's
    assert set(prepared.config["terraform"]["required_providers"]) == {"aws"}
    assert prepared.config["resource"] == {"terraform_data": {"random_id__suffix": {"input": {"byte_length": 4}}}}


def test_legacy_string_requirement_is_understood():
    stack = _stack()
    stack["terraform"]["required_providers"]["aws"] = "~> 6.0"
    assert _prepare(stack).config["terraform"]["required_providers"] == {"aws": {"version": "5.100.0"}}


def test_modules_point_at_stubs_of_their_interface():
    block = {"source": VPC[0], "version": VPC[1], "cidr": "10.0.0.0/16", "depends_on": ["aws_s3_bucket.b"]}
    prepared = _prepare(_stack(module={"net": block}))
    assert prepared.config["module"]["net"] == {
        "source": "./harness_modules/vpc-v6.5.1",
        "cidr": "10.0.0.0/16",
        "depends_on": ["aws_s3_bucket.b"],
    }
    stub = prepared.stubs["vpc-v6.5.1"]
    interface = INTERFACES[VPC]
    assert set(stub["variable"]) == set(interface.variables)
    assert stub["variable"]["cidr"] == {"type": interface.variables["cidr"]["type"], "default": None}
    assert stub["output"] == {name: {"value": None} for name in interface.outputs}
    assert prepared.problems == []


def test_stub_required_variables_have_no_default():
    interface = Interface(
        "x-v1.json",
        "x",
        "1",
        {"a": {"required": True, "type": "string"}, "b": {"required": False, "type": "number"}},
        ("o",),
    )
    assert interface.stub()["variable"] == {"a": {"type": "string"}, "b": {"type": "number", "default": None}}


def test_module_without_vendored_interface_is_a_problem():
    prepared = _prepare(_stack(module={"net": {"source": VPC[0], "version": "6.6.0"}}))
    assert len(prepared.problems) == 1
    assert prepared.problems[0].startswith("module.net: terraform-aws-modules/vpc/aws 6.6.0 has no vendored interface")


def _object_in(value: object, typ) -> dict | None:
    """The first JSON object in a module input whose type is an object type (to plant an
    attribute that type does not declare)."""
    if isinstance(typ, Object) and isinstance(value, dict):
        for key, item in value.items():
            if key in typ.attributes and (found := _object_in(item, typ.attributes[key].type)) is not None:
                return found
        return value
    if isinstance(typ, Collection) and isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return next((f for item in items if (f := _object_in(item, typ.element)) is not None), None)
    return None


def _module_stack(synth) -> tuple[str, dict]:
    """A deep copy of the first stack of a synthesis that calls a module."""
    found = next((name for name, s in synth.stacks.items() if s.get("module")), None)
    assert found is not None, "no stack calls a module: the module control tests need updating"
    return found, copy.deepcopy(synth.stacks[found])


def _plant_undeclared_attribute(stack: dict, attribute: str) -> str | None:
    """Add `attribute` to the first object inside an object-typed module input; returns the
    input's path."""
    for module_name, block in stack["module"].items():
        interface = INTERFACES[(block["source"], block["version"])]
        for key, value in block.items():
            if key in interface.variables:
                target = _object_in(value, parse_type(interface.variables[key]["type"]))
                if target is not None:
                    target[attribute] = "required"
                    return f"module.{module_name}.{key}"
    return None


def test_control_an_attribute_terraform_would_drop_is_reported(synth):
    """Terraform 1.11 drops object attributes a module variable's type does not declare without
    a diagnostic (so `terraform validate` passes); the harness reports them."""
    name, stack = _module_stack(synth)
    planted = _plant_undeclared_attribute(stack, "http_tokenz")
    assert planted, "no object-typed module input with an object value to plant an attribute in"
    prepared = prepare_stack(name, stack, mirror=MIRROR_5, interfaces=INTERFACES)
    dropped = [p for p in prepared.problems if "http_tokenz" in p]
    assert len(dropped) == 1 and dropped[0].startswith(planted), prepared.problems
    assert "silently drop" in dropped[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${helm_release.x.status}", "${terraform_data.hr_x.output}"),
        ("${helm_release.x}", "${terraform_data.hr_x}"),
        ("${helm_release.x[0].metadata[0].name}", "${terraform_data.hr_x[0].output[0].name}"),
        ("${helm_release.x[*].name}", "${terraform_data.hr_x[*].output}"),
        ("${helm_release.xy.status} ${foo.helm_release.x}", "${helm_release.xy.status} ${foo.helm_release.x}"),
        (
            'a ${upper("${helm_release.x.name}")} $${helm_release.x.name}',
            'a ${upper("${terraform_data.hr_x.output}")} $${helm_release.x.name}',
        ),
        ("${[for r in [helm_release.x] : r.id]}", "${[for r in [terraform_data.hr_x] : r.id]}"),
        ('${data.kubernetes_secret.s.data["k"]}', '${terraform_data.ds_s.output["k"]}'),
        ("${helm_release.x.status", "${helm_release.x.status"),  # unparsable: left for Terraform
    ],
)
def test_rewrite_template(text, expected):
    renames = [R("resource", "helm_release", "x", "hr_x"), R("data", "kubernetes_secret", "s", "ds_s")]
    assert rewrite_template(text, rename_edits(renames)) == expected


def test_rewrite_expression():
    edits = rename_edits([R("resource", "kubernetes_manifest", "m-1", "km")])
    assert rewrite_expression("kubernetes_manifest.m-1", edits) == "terraform_data.km"
    assert rewrite_expression("kubernetes_manifest.m-10", edits) == "kubernetes_manifest.m-10"


def test_self_in_a_stood_in_block_addresses_the_output():
    stack = _workload_like()
    release = stack["resource"]["helm_release"]["chart"]
    release["lifecycle"]["postcondition"] = [{"condition": '${self.status == "deployed"}', "error_message": "x"}]
    release["provisioner"] = [{"local-exec": {"command": "echo ${self.metadata[0].revision} ${var.x}"}}]
    chart = _prepare(stack).config["resource"]["terraform_data"]["helm_release__chart_2"]
    assert chart["lifecycle"]["postcondition"] == [{"condition": '${self.output == "deployed"}', "error_message": "x"}]
    assert chart["provisioner"] == [{"local-exec": {"command": "echo ${self.output[0].revision} ${var.x}"}}]


def test_render_json_maps_every_line_to_its_json_path():
    value = {"a": {"b": [1, {"c": "x\ny"}], "e": {}}, "f": []}
    text, paths = render_json(value)
    assert json.loads(text) == value
    lines = text.splitlines()
    assert len(lines) == len(paths)
    assert paths[lines.index('    "c": "x\\ny"')] == ("a", "b", 1, "c")
    assert paths[lines.index('  "e": {}')] == ("a", "e")


def test_diagnostics_point_at_the_synthesized_json_path():
    prepared = _prepare(_workload_like())
    _, paths = render_json(prepared.config)
    line = next(i for i, p in enumerate(paths, 1) if p[-2:] == ("data", "status"))
    raw = {
        "diagnostics": [
            {
                "severity": "error",
                "summary": "Invalid reference",
                "detail": "d",
                "range": {"filename": STACK_FILE, "start": {"line": line}},
                "snippet": {"context": "resource.terraform_data.kubernetes_manifest__cm.input", "code": "x"},
            },
            {"severity": "warning", "summary": "w", "detail": "no range"},
        ]
    }
    error, warning = parse_diagnostics(raw, prepared, paths)
    assert error.path == "resource.kubernetes_manifest.cm.manifest.data.status"
    assert error.location == f"{STACK_FILE}:{line}"
    assert "resource.kubernetes_manifest.cm.manifest.data.status: Invalid reference: d" in str(error)
    assert warning.path == "" and str(warning).startswith("warning: (no location): w")


def test_diagnostic_excerpt_marks_what_terraform_highlights():
    code = '"command": "echo — ${TIMEOUT}s"'
    start = len(code[: code.index("${") + 2].encode())  # Terraform counts bytes
    raw = {
        "diagnostics": [
            {
                "severity": "error",
                "summary": "Invalid reference",
                "detail": "d",
                "snippet": {"code": code, "highlight_start_offset": start, "highlight_end_offset": start + 7},
            }
        ]
    }
    (diagnostic,) = parse_diagnostics(raw, _prepare(_stack()), [])
    assert diagnostic.code == '"command": "echo — ${>>TIMEOUT<<}s"'


def test_failure_message_lists_errors_and_warnings_only_with_errors():
    error = Diagnostic("error", "Invalid reference", "detail", "resource.x.y", "cdk.tf.json:3", "resource.x.y.a", "")
    warning = Diagnostic("warning", "Deprecated", "old", "", "", "", "")
    assert Report("v/s", [warning], [], 1.0).ok
    failed = Report("v/s", [error, warning], [], 1.0)
    assert not failed.ok
    message = failed.failure_message()
    assert "resource.x.y.a: Invalid reference: detail" in message and "Deprecated" in message
    assert not Report("v/s", [warning], ["harness: x"], 1.0).ok


def _tagged(stack_tag: str, **provider) -> PreparedStack:
    stack = _stack()
    stack["provider"]["aws"][0].update(default_tags=[{"tags": {"Stack": stack_tag}}], **provider)
    return _prepare(stack, MIRROR_6)


def test_identical_provider_configurations_are_declared_once_in_the_root():
    members = {
        "m000": _tagged("a"),
        "m001": _tagged("b"),
        "m002": _tagged("a"),
        "m003": _tagged("a", region="${var.region}"),  # a reference: it stays in its module
        "m004": _tagged("a", alias="east"),  # an aliased block: it stays too
    }
    before = copy.deepcopy({name: stack.config for name, stack in members.items()})
    root, out = share_providers(members)
    assert root["terraform"]["required_providers"] == {
        "aws": members["m000"].config["terraform"]["required_providers"]["aws"]
    }
    assert [block["alias"] for block in root["provider"]["aws"]] == ["shared0", "shared1"]
    assert [block["default_tags"] for block in root["provider"]["aws"]] == [
        [{"tags": {"Stack": "a"}}],
        [{"tags": {"Stack": "b"}}],
    ]
    providers = {name: call.get("providers") for name, call in root["module"].items()}
    assert providers == {
        "m000": {"aws": "aws.shared0"},
        "m001": {"aws": "aws.shared1"},
        "m002": {"aws": "aws.shared0"},
        "m003": None,
        "m004": None,
    }
    assert all(root["module"][name]["source"] == f"./{name}" for name in members)
    assert [("provider" in out[name].config) for name in members] == [False, False, False, True, True]
    assert out["m003"] is members["m003"] and out["m004"] is members["m004"]
    # the members' own copies are left as they were (validating apart writes them again)
    assert {name: stack.config for name, stack in members.items()} == before


def test_a_diagnostic_in_a_shared_provider_configuration_makes_every_stack_validate_apart(tmp_path):
    """Terraform reports a shared configuration's problem in the root's file, which does not say
    whose it is: the together reports are not exact, and `validate` validates each stack apart."""

    runs: list[str] = []

    class Scripted(Validator):
        def installed_providers(self) -> Path:
            installed = tmp_path / "installed"
            (installed / ".terraform" / "providers").mkdir(parents=True, exist_ok=True)
            (installed / ".terraform.lock.hcl").write_text("")
            return installed

        def terraform(self, args, cwd):
            runs.append(f"{args[0]} {cwd.name}")
            diagnostics = []
            if args[0] == "validate" and cwd.name.endswith("-together"):
                where = {"filename": ROOT_FILE, "start": {"line": 9}, "end": {"line": 9}}
                diagnostics = [{"severity": "warning", "summary": "Deprecated attribute", "range": where}]
            out = json.dumps({"valid": True, "diagnostics": diagnostics})
            return subprocess.CompletedProcess(args, 0, out, "")

    validator = Scripted(Toolchain("terraform", MIRROR_6), tmp_path / "work")
    stacks = [_tagged("a"), replace(_tagged("b"), name="test/other")]
    together = validator.validate_together(stacks)
    assert [r.exact for r in together] == [False, False]
    assert all(r.warnings for r in together)
    reports = validator.validate(stacks)
    assert [r.exact for r in reports.values()] == [True, True]
    assert not any(r.diagnostics for r in reports.values())
    assert sorted(reports) == ["test/other", "test/stack"]
    validations = [run for run in runs if run.startswith("validate")]
    assert len(validations) == 4 and validations[1].endswith("-together"), runs  # then each apart
    assert not any(run.endswith("-together") for run in validations[2:]), runs


def test_mirror_discovery_picks_the_newest_aws_for_this_platform(tmp_path):

    for version, plat in (("5.99.0", platform_tag()), ("5.100.0", platform_tag()), ("6.0.0", "plan9_mips")):
        d = tmp_path / "providers.example.com" / "hashicorp" / "aws" / version / plat
        d.mkdir(parents=True)
        (d / f"terraform-provider-aws_v{version}_x5").write_text("")
    mirror = read_mirror(tmp_path)
    assert mirror is not None and mirror.aws_version == "5.100.0"
    assert read_mirror(tmp_path / "nothing") is None
    config = cli_config_text(mirror)
    assert f'path    = "{tmp_path}"' in config
    assert mirror.host == "providers.example.com"
    assert 'include = ["providers.example.com/hashicorp/aws"]' in config
    assert "direct" not in config  # never a registry


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_stack_prepares_without_harness_problems(synth_variants, variant):
    """What the harness checks itself (no terraform needed): module interfaces exist, no module
    input attribute that Terraform would drop, stripped aws 6.x arguments have valid values."""
    found = [
        f"{prepared.name}: {problem}"
        for prepared in prepare_synth(variant, synth_variants[variant], mirror=MIRROR_5, interfaces=INTERFACES)
        for problem in prepared.problems
    ]
    assert not found, "\n".join(found)


# --- terraform validate ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    found = find_toolchain()
    if isinstance(found, str):
        print(f"\nterraform validate tests skipped: {found}", file=sys.stderr)
        pytest.skip(f"terraform validate: {found}")
    return found


@pytest.fixture(scope="session")
def validator(toolchain, tmp_path_factory) -> Validator:
    return Validator(toolchain, tmp_path_factory.mktemp("terraform-validate"))


@dataclass(frozen=True)
class Control:
    """A copy of a real stack with one planted error, and the JSON path where it was planted."""

    letter: str
    stack_name: str
    stack: dict
    path: str

    @property
    def label(self) -> str:
        return f"control-{self.letter}/{self.stack_name}"


@dataclass(frozen=True)
class Validated:
    stacks: dict[str, Report]  # "variant/stack" -> report
    controls: dict[str, tuple[Report, str]]  # control letter -> (report, path of its planted error)
    fallback: dict[str, Report]  # `validate` of a clean stack beside control b (label -> report)
    clean: str  # that clean stack's label


def _prepare_control(c: Control, synth, mirror: Mirror) -> PreparedStack:
    stack_dir = synth.paths[c.stack_name].parent
    return prepare_stack(c.label, c.stack, mirror=mirror, interfaces=INTERFACES, stack_dir=stack_dir)


@pytest.fixture(scope="session")
def validated(synth, synth_variants, validator) -> Validated:
    """Every stack of every variant and, in the same terraform run, the control copies whose
    error Terraform finds while walking the configuration (which shows such errors are
    reported from their module of the common root, and leave the other modules' reports
    alone). The one whose error it finds while decoding (b) goes through `validate` beside the
    smallest clean stack: that together run fails, so each is validated again on its own, and
    that is b's report."""
    mirror = validator.toolchain.mirror
    stacks = [
        prepared
        for variant, variant_synth in synth_variants.items()
        for prepared in prepare_synth(variant, variant_synth, mirror=mirror, interfaces=INTERFACES)
    ]
    controls = _controls(synth)
    walked = [c for c in controls if c.letter != DECODING_CONTROL]
    (decoded,) = (c for c in controls if c.letter == DECODING_CONTROL)
    clean = min(
        prepare_synth("fallback", synth, mirror=mirror, interfaces=INTERFACES), key=lambda p: len(json.dumps(p.config))
    )
    start = time.monotonic()
    walked_copies = [_prepare_control(c, synth, mirror) for c in walked]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two terraform runs, independent
        stacks_run = pool.submit(validator.validate, stacks, beside=walked_copies)
        fallback_run = pool.submit(validator.validate, [clean, _prepare_control(decoded, synth, mirror)])
        reports, fallback = stacks_run.result(), fallback_run.result()
    walked_reports = [reports.pop(copy_.name) for copy_ in walked_copies]
    print(f"\nterraform validate: {len(reports)} copies in {time.monotonic() - start:.1f} s", file=sys.stderr)
    for label, report in reports.items():
        where = f"same as {report.same_as}" if report.same_as else report.directory
        print(f"  {label}: {where}", file=sys.stderr)
    controls_reports = {c.letter: (report, c.path) for c, report in zip(walked, walked_reports, strict=True)}
    controls_reports[decoded.letter] = (fallback[decoded.label], decoded.path)
    return Validated(stacks=reports, controls=controls_reports, fallback=fallback, clean=clean.name)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_stack_passes_terraform_validate(synth_variants, validated, variant):
    labels = [f"{variant}/{name}" for name in synth_variants[variant].stacks]
    failures = [validated.stacks[label].failure_message() for label in labels if not validated.stacks[label].ok]
    assert not failures, "\n\n".join(failures)


# Control tests: copies of real stacks with a planted error each, which must be reported. One
# error per copy: Terraform does not validate blocks that depend on a block with an error, so
# one planted error could hide another.

CONTROL_ANNOTATION = "harness.test/control"


def _first(blocks: dict) -> tuple[str, dict]:
    name = min(blocks)
    return name, blocks[name]


def _stack_with(synth, resource_type: str) -> tuple[str, dict]:
    """A deep copy of the first stack with a resource of this type."""
    found = next((n for n, s in synth.stacks.items() if s.get("resource", {}).get(resource_type)), None)
    assert found is not None, f"no stack has a {resource_type}: the control tests need updating"
    return found, copy.deepcopy(synth.stacks[found])


def _control_a(synth) -> Control:
    """A shell variable written ${TIMEOUT} in a kubernetes_manifest (the bug this harness was
    built for)."""
    name, stack = _stack_with(synth, "kubernetes_manifest")
    manifest_name, manifest = _first(stack["resource"]["kubernetes_manifest"])
    annotations = manifest["manifest"].setdefault("metadata", {}).setdefault("annotations", {})
    annotations[CONTROL_ANNOTATION] = "deadline=$(( $(date +%s) + TIMEOUT )); echo ${TIMEOUT}s"
    path = f'resource.kubernetes_manifest.{manifest_name}.manifest.metadata.annotations["{CONTROL_ANNOTATION}"]'
    return Control("a", name, stack, path)


def _control_b(synth) -> Control:
    """A misspelt module input."""
    name, stack = _module_stack(synth)
    module_name, block = _first(stack["module"])
    misspelt = f"{next(k for k in block if k not in ('//', 'source', 'version'))}_typo"
    block[misspelt] = "x"
    return Control("b", name, stack, f"module.{module_name}.{misspelt}")


def _control_c(synth) -> Control:
    """A reference to an undeclared resource in a helm_release values document."""
    name, stack = _stack_with(synth, "helm_release")
    release_name, release = _first(stack["resource"]["helm_release"])
    release["values"] = [*release.get("values", []), "control: ${aws_iam_role.harness_control_undeclared.arn}\n"]
    return Control("c", name, stack, f"resource.helm_release.{release_name}.values[{len(release['values']) - 1}]")


def _control_d(synth) -> Control:
    """A string where a module wants list(string)."""
    name, stack = _module_stack(synth)
    module_name, block = _first(stack["module"])
    interface = INTERFACES[(block["source"], block["version"])]
    lists = [k for k in block if k in interface.variables and _is_list_of_strings(interface.variables[k]["type"])]
    assert lists, f"module.{module_name} has no list(string) input: control (d) needs updating"
    block[lists[0]] = "subnet-0123456789abcdef0"
    return Control("d", name, stack, f"module.{module_name}.{lists[0]}")


def _control_e(synth) -> Control:
    """An expression in the aws 6.x `region` argument the harness strips is still validated."""
    candidates = [(len(json.dumps(s)), n) for n, s in synth.stacks.items() if _aws_resource_types(s)]
    assert candidates, "no stack has an aws_* resource: control (e) needs updating"
    name = min(candidates)[1]
    stack = copy.deepcopy(synth.stacks[name])
    rtype = _aws_resource_types(stack)[0]
    block_name, block = _first(stack["resource"][rtype])
    block["region"] = "${var.harness_control_undeclared}"
    return Control("e", name, stack, f"resource.{rtype}.{block_name}.region")


def _is_list_of_strings(type_text: str) -> bool:
    return parse_type(type_text) == Collection("list", Primitive("string"))


def _aws_resource_types(stack: dict) -> list[str]:
    return sorted(t for t, blocks in stack.get("resource", {}).items() if t.startswith("aws_") and blocks)


def _controls(synth) -> list[Control]:
    return [_control_a(synth), _control_b(synth), _control_c(synth), _control_d(synth), _control_e(synth)]


# The control whose error Terraform reports while decoding the configuration (an argument the
# module does not have), before it walks any block: in a common root it would hide the others.
DECODING_CONTROL = "b"


def test_every_stack_was_validated_in_one_run(validated):
    """The stacks pass, so the together run stood: all of them in one directory, with the
    controls whose errors Terraform finds while walking (their errors left the stacks' reports
    alone)."""
    roots = {Path(r.directory).parent for r in validated.stacks.values()}
    assert len(roots) == 1 and next(iter(roots)).name.endswith("-together"), roots
    controls = validated.controls.items()
    walked = {Path(report.directory).parent for letter, (report, _) in controls if letter != DECODING_CONTROL}
    assert walked == roots, (walked, roots)
    # with one aws configuration per stack kind, not per stack: every module was given one
    root = json.loads((roots.pop() / ROOT_FILE).read_text())
    shared = {f"aws.{block['alias']}" for block in root["provider"]["aws"]}
    assert {call["providers"]["aws"] for call in root["module"].values()} == shared
    assert len(shared) < len(root["module"]), root


def test_a_decoding_error_makes_every_stack_validate_on_its_own(validated):
    """A clean stack and control b validated together: b's decoding error stops that run before
    any block is walked, so `validate` validates each again on its own; b's error is reported
    against b only, and the clean stack passes."""
    bad, path = validated.controls[DECODING_CONTROL]
    assert any(d.path == path and d.summary == "Extraneous JSON object property" for d in bad.errors), (
        bad.failure_message()
    )
    assert validated.fallback[validated.clean].ok, validated.fallback[validated.clean].failure_message()
    assert not any(Path(r.directory).parent.name.endswith("-together") for r in validated.fallback.values())


def _reported(validated: Validated, letter: str, summary: str) -> Diagnostic:
    """The error Terraform reported at the planted path, or a failure showing what it did report."""
    report, path = validated.controls[letter]
    found = [d for d in report.errors if d.path == path and d.summary == summary]
    assert found, f"control ({letter}): no {summary!r} error at {path}:\n{report.failure_message()}"
    return found[0]


def test_control_a_shell_variable_in_a_kubernetes_manifest_is_an_invalid_reference(validated):
    found = _reported(validated, "a", "Invalid reference")
    assert "resource type must be followed by at least one attribute access" in found.detail


def test_control_b_a_misspelt_module_input_is_reported(validated):
    found = _reported(validated, "b", "Extraneous JSON object property")
    assert validated.controls["b"][1].rsplit(".", 1)[1] in found.detail


def test_control_c_an_undeclared_resource_in_helm_values_is_reported(validated):
    found = _reported(validated, "c", "Reference to undeclared resource")
    assert '"aws_iam_role" "harness_control_undeclared"' in found.detail


def test_control_d_a_string_for_a_list_module_input_is_reported(validated):
    found = _reported(validated, "d", "Invalid value for input variable")
    assert "list of string required" in found.detail


def test_control_e_an_expression_in_a_stripped_region_is_still_validated(validated):
    found = _reported(validated, "e", "Reference to undeclared input variable")
    assert '"harness_control_undeclared"' in found.detail
