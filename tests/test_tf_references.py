"""Every `${...}`/`%{...}` in every synthesized stack parses as a Terraform template, and every
reference and function in it exists (tests/tf_references.py; pure Python, runs everywhere).

The first part tests the checker on small hand-made cases, valid and invalid; the last test
runs it on every stack of every configuration variant.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import DEFAULT_VARIANT, VARIANTS
from tests.terraform_validate import load_interfaces
from tests.tf_references import (
    BUILTIN_FUNCTIONS,
    Attr,
    Call,
    Context,
    Declarations,
    ForExpr,
    Index,
    Reference,
    Splat,
    TemplateSyntaxError,
    check_stack,
    check_template_text,
    parse_expression,
    parse_template,
    uses,
)

VARIANT_NAMES = (DEFAULT_VARIANT, *VARIANTS)
INTERFACES = load_interfaces()
EKS = ("terraform-aws-modules/eks/aws", "21.11.0")

STACK = {
    "terraform": {"required_providers": {"aws": {"source": "aws", "version": "6.25.0"}}},
    "provider": {"aws": [{"region": "us-west-2"}, {"alias": "us_east_1", "region": "us-east-1"}]},
    "variable": {"env": {"type": "string"}},
    "locals": {"names": ["a", "b"]},
    "data": {"aws_iam_policy_document": {"doc": {}}},
    "module": {"eks": {"source": EKS[0], "version": EKS[1]}},
    "resource": {
        "aws_s3_bucket": {"models": {"bucket": "m"}},
        "aws_sqs_queue": {"q": {"count": 2, "name": "q"}},
        "aws_iam_role": {"r": {"for_each": "${toset(local.names)}", "name": "r"}},
    },
}


NO_CONTEXT = Context()


def problems(text: str, ctx: Context = NO_CONTEXT) -> list[str]:
    return check_template_text(text, Declarations.of(STACK, INTERFACES), ctx)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "plain text, no sequences",
        "$${TIMEOUT} and %%{literal} and $$${x}",
        "${aws_s3_bucket.models.arn}",
        "arn:aws:s3:::${aws_s3_bucket.models.id}/*",
        '${jsonencode({"a" = "}", b = [1, 2.5e3, true, null], "c": {d = "${var.env}"}})}',
        '${replace(upper(lower("x")), "/[}{]/", "")}',
        '${var.env == "prod" ? 3 : -1}',
        "${!(1 < 2) && 3 >= 2 || 4 % 2 != 0}",
        "${[for i, n in local.names : upper(n) if i > 0]}",
        "${{for n in local.names : n => length(n)...}}",
        '${module.eks.eks_managed_node_groups["system"].iam_role_name}',
        "${aws_sqs_queue.q[*].arn}",
        "${aws_sqs_queue.q.*.arn}",
        "${data.aws_iam_policy_document.doc.json}",
        '%{ if var.env != "" }env=${var.env}%{ else }none%{ endif }',
        "%{~ for n in local.names ~}${n},%{ endfor ~}",
        "${ /* comment */ var.env # trailing\n}",
        "${core::max(1, 2)} ${provider::terraform::encode_expr(1)} ${concat(local.names...)}",
        "${path.module}/${terraform.workspace}",
        '${"nested ${"deeper ${var.env}"}"}',
    ],
)
def test_valid_templates(text):
    parse_template(text)
    assert problems(text) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${var.env", "unterminated template sequence"),
        ("${}", "empty template sequence"),
        ("${var.env +}", "expected an expression"),
        ("${upper(var.env}", "expected ')', found '}'"),
        ("${var.env]}", "unbalanced ']'"),
        ("%{ if var.env }x", "is never closed"),
        ("x%{ endif }", "without a matching opening directive"),
        ("%{ else }", "without a matching opening directive"),
        ("%{ endif var.env }", "without a matching opening directive"),
        ("%{ http_code }", "unknown template directive"),
        ("${<<EOF\nx\nEOF\n}", "heredoc templates are not supported"),
        ('${"unterminated}', "unterminated string"),
        ('${"bad \\q escape"}', "invalid escape sequence"),
        ("${a @ b}", "unexpected character '@'"),
        ("${provider::aws}", "is not followed by a function call"),
    ],
)
def test_invalid_templates(text, message):
    with pytest.raises(TemplateSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_template(text)
    assert problems(text)[0].startswith("not a valid Terraform template:")


def test_parse_tree_of_a_reference_with_index_and_splat():
    (interp,) = parse_template("${aws_sqs_queue.q[0].tags[*].x}").parts
    ref = interp.expr
    assert isinstance(ref, Reference) and ref.root == "aws_sqs_queue"
    assert [type(s) for s in ref.steps] == [Attr, Index, Attr, Splat, Attr]
    assert ref.text() == "aws_sqs_queue.q[…].tags[*].x"
    assert (ref.start, ref.end) == (2, len("${aws_sqs_queue.q[0].tags[*].x"))


def test_escapes_are_literal_text():
    assert parse_template("a $${b} %%{c} d").parts == ("a ${b} %{c} d",)
    assert parse_template('${"q\\"uote \\u00e9 $${x}"}').parts[0].expr.parts == ('q"uote é ${x}',)


def test_identifiers_may_contain_dashes_like_hcl():
    # HCL reads `count.index-1` as the attribute "index-1", as Terraform does
    assert problems("${aws_sqs_queue.q[count.index-1].arn}", Context(has_count=True)) == [
        "count.index-1: count has only count.index"
    ]


def test_for_expression_scope():
    expr = parse_expression("{for k, v in local.m : k => v if v != null}")
    assert isinstance(expr, ForExpr) and expr.names == ("k", "v")
    roots = [(u.node.root, sorted(u.scope)) for u in uses(expr) if isinstance(u.node, Reference)]
    assert roots == [("local", []), ("k", ["k", "v"]), ("v", ["k", "v"]), ("v", ["k", "v"])]
    # the names are not in scope outside the expression
    assert problems("${[for n in local.names : n]} ${n}") == [
        (
            "n is not a valid reference: Terraform reads a bare name as a resource type and needs "
            "TYPE.NAME (if a shell or environment variable is meant, write $${n})"
        )
    ]
    assert problems("%{ for n in local.names }${n}%{ endfor }${n.x}") == [
        "n.x: no resource n.x is declared in this stack"
    ]


def test_nested_function_calls_are_all_checked():
    text = '${jsonencode(merge(tomap({a = base64decode(var.env)}), frobnicate(unknownfn("x"))))}'
    calls = [u.node.full_name for u in uses(parse_template(text)) if isinstance(u.node, Call)]
    assert calls == ["jsonencode", "merge", "tomap", "base64decode", "frobnicate", "unknownfn"]
    assert problems(text) == [
        "frobnicate(): Terraform has no built-in function 'frobnicate'",
        "unknownfn(): Terraform has no built-in function 'unknownfn'",
    ]


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ctx", "expected"),
    [
        (
            "echo ${TIMEOUT}s",
            Context(),
            (
                "TIMEOUT is not a valid reference: Terraform reads a bare name as a resource type and needs "
                "TYPE.NAME (if a shell or environment variable is meant, write $${TIMEOUT})"
            ),
        ),
        (
            "${aws_s3_bucket.modelz.arn}",
            Context(),
            "aws_s3_bucket.modelz.arn: no resource aws_s3_bucket.modelz is declared in this stack",
        ),
        ("${var.nope}", Context(), "var.nope: no input variable var.nope is declared in this stack"),
        ("${local.nope}", Context(), "local.nope: no local value local.nope is declared in this stack"),
        (
            "${data.aws_iam_policy_document.nope.json}",
            Context(),
            "data.aws_iam_policy_document.nope.json: "
            + "no data source data.aws_iam_policy_document.nope is declared in this stack",
        ),
        (
            "${data.aws_iam_policy_document}",
            Context(),
            "data.aws_iam_policy_document: a data reference needs data.TYPE.NAME",
        ),
        ("${module.vpc.vpc_id}", Context(), "module.vpc.vpc_id: no module module.vpc is declared in this stack"),
        (
            "${module.eks.cluster_endpoint_url}",
            Context(),
            "module.eks.cluster_endpoint_url: "
            + "terraform-aws-modules/eks/aws 21.11.0 has no output 'cluster_endpoint_url'",
        ),
        (
            "${module.eks[0].cluster_name_typo}",
            Context(),
            "module.eks[…].cluster_name_typo: "
            + "terraform-aws-modules/eks/aws 21.11.0 has no output 'cluster_name_typo'",
        ),
        ("${path.home}", Context(), "path.home: path.* has only cwd, module, root"),
        ("${terraform.env}", Context(), "terraform.env: terraform.* has only applying, workspace"),
        ("${count.index}", Context(), "count.index: used in a block without count"),
        ("${each.value}", Context(has_count=True), "each.value: used in a block without for_each"),
        ("${each.item}", Context(has_each=True), "each.item: each has only each.key and each.value"),
        ("${self.id}", Context(), "self: only valid in provisioner, connection and postcondition blocks"),
        (
            "${provider::kubernetes::manifest_decode(var.env)}",
            Context(),
            "provider::kubernetes::manifest_decode(): provider 'kubernetes' is not in this stack's required_providers",
        ),
        (
            "${provider::terraform::nope(1)}",
            Context(),
            "provider::terraform::nope(): provider 'terraform' is not in this stack's required_providers",
        ),
        ("${core::frob(1)}", Context(), "core::frob(): Terraform has no built-in function 'frob'"),
        ("${lookup(local.names, upper(TIMEOUT))}", Context(), None),
    ],
)
def test_invalid_references(text, ctx, expected):
    found = problems(text, ctx)
    if expected is None:  # just one problem, whatever its wording: a bare name inside calls
        assert len(found) == 1 and found[0].startswith("TIMEOUT is not a valid reference")
    else:
        assert found == [expected]


@pytest.mark.parametrize(
    ("text", "ctx"),
    [
        ("${aws_sqs_queue.q[count.index].arn}", Context(has_count=True)),
        ("${each.key}=${each.value}", Context(has_each=True)),
        ("${self.arn}", Context(self_allowed=True)),
        ("${module.eks.cluster_name}", Context()),
        ("${provider::aws::arn_parse(aws_s3_bucket.models.arn)}", Context()),
        ("${terraform.applying}", Context()),
    ],
)
def test_valid_references(text, ctx):
    assert problems(text, ctx) == []


def test_a_module_without_vendored_interface_cannot_have_its_outputs_checked():
    stack = {**STACK, "module": {"x": {"source": "example/x/aws", "version": "1.0.0"}}}
    assert check_template_text("${module.x.out}", Declarations.of(stack, INTERFACES), Context()) == [
        "module.x.out: module x (example/x/aws 1.0.0) has no vendored interface to check output 'out'"
    ]


# --- whole stacks -----------------------------------------------------------------------------


def test_check_stack_walks_every_section_with_its_context():
    stack = json.loads(json.dumps(STACK))
    stack["resource"]["aws_sqs_queue"]["q"].update(
        policy="${count.index} ${each.key}",
        depends_on=["aws_s3_bucket.models", "aws_s3_bucket.gone"],
        provider="aws.eu",
        lifecycle={
            "ignore_changes": ["${not.checked}"],
            "replace_triggered_by": ["aws_s3_bucket.models.id", "aws_iam_role.nope"],
            "precondition": [{"condition": '${self.arn != ""}', "error_message": "x"}],
            "postcondition": [{"condition": '${self.arn != ""}', "error_message": "x"}],
        },
        dynamic={"tag": {"for_each": "${local.names}", "content": {"key": "${tag.value}", "k2": "${tags.value}"}}},
    )
    stack["resource"]["aws_s3_bucket"]["models"]["tags"] = {"${var.nope}": "key", "//": "${ignored}"}
    stack["output"] = {"o": {"value": "${aws_s3_bucket.models.arn}", "depends_on": ["module.nope"]}}
    stack["provider"]["aws"][0]["default_tags"] = [{"tags": {"Env": "${var.env}-${TIMEOUT}"}}]
    stack["variable"]["env"]["validation"] = [{"condition": "${length(var.env) > 0}", "error_message": "x"}]
    stack["variable"]["env"]["default"] = "${not.checked.either}"
    stack["locals"]["bad"] = "${nofn()}"
    found = [str(p) for p in check_stack("s", stack, INTERFACES)]
    bare_name = (
        "TIMEOUT is not a valid reference: Terraform reads a bare name as a resource type and needs TYPE.NAME "
        "(if a shell or environment variable is meant, write $${TIMEOUT})"
    )
    assert found == [
        f"s: provider.aws[0].default_tags[0].tags.Env: {bare_name}",
        "s: locals.bad: nofn(): Terraform has no built-in function 'nofn'",
        's: resource.aws_s3_bucket.models.tags["${var.nope}"]: in the key: '
        + "var.nope: no input variable var.nope is declared in this stack",
        "s: resource.aws_sqs_queue.q.depends_on[1]: "
        + "aws_s3_bucket.gone: no resource aws_s3_bucket.gone is declared in this stack",
        "s: resource.aws_sqs_queue.q.provider: "
        + "provider 'aws.eu' is not configured in this stack (configured: aws, aws.us_east_1)",
        "s: resource.aws_sqs_queue.q.lifecycle.replace_triggered_by[1]: "
        + "aws_iam_role.nope: no resource aws_iam_role.nope is declared in this stack",
        "s: resource.aws_sqs_queue.q.lifecycle.precondition[0].condition: "
        + "self: only valid in provisioner, connection and postcondition blocks",
        "s: resource.aws_sqs_queue.q.policy: each.key: used in a block without for_each",
        "s: resource.aws_sqs_queue.q.dynamic.tag.content.k2: "
        + "tags.value: no resource tags.value is declared in this stack",
        "s: output.o.depends_on[0]: module.nope: no module module.nope is declared in this stack",
    ]


def test_builtin_function_list_matches_the_local_terraform():
    """The checker's list is Terraform 1.11's; a newer local terraform may add functions (they
    would be reported as unknown here until added), never remove one."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH to compare the built-in function list with")
    result = subprocess.run([terraform, "metadata", "functions", "-json"], capture_output=True, text=True, check=True)
    names = {n for n in json.loads(result.stdout)["function_signatures"] if not n.startswith("core::")}
    assert names >= BUILTIN_FUNCTIONS, f"not functions of this terraform: {sorted(BUILTIN_FUNCTIONS - names)}"
    version = subprocess.run([terraform, "version", "-json"], capture_output=True, text=True, check=True)
    if json.loads(version.stdout)["terraform_version"].startswith("1.11."):
        assert names == BUILTIN_FUNCTIONS


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_template_and_reference_in_every_stack_is_valid(synth_variants, variant):
    synth = synth_variants[variant]
    found = [str(p) for name, stack in synth.stacks.items() for p in check_stack(name, stack, INTERFACES)]
    assert not found, "templates Terraform would reject:\n" + "\n".join(found)


_TEMPLATE_PIECES = st.sampled_from(
    [
        "${",
        "%{",
        "}",
        "$${",
        "%%{",
        '"',
        "\\",
        "var.env",
        "local.names",
        "[",
        "]",
        "(",
        ")",
        "for",
        " in ",
        ":",
        "=>",
        "if",
        "else",
        "endif",
        "endfor",
        "~",
        "*",
        ".",
        ",",
        "?",
        "x",
        "1",
        "\n",
        "<<",
        "upper(",
        "::",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_TEMPLATE_PIECES, max_size=14).map("".join))
def test_any_string_parses_or_raises_a_syntax_error(text):
    """The checker never crashes on a string: it either parses or says why not."""
    try:
        tree = parse_template(text)
    except TemplateSyntaxError:
        return
    list(uses(tree))
    problems(text)
