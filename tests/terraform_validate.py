"""Run the real `terraform validate` on every synthesized stack, offline.

The synthesized JSON cannot be validated as it is on a machine without registry access: it
calls registry modules, needs the helm and kubernetes providers, and pins aws 6.25.0 while the
only provider available offline is the one in a local filesystem mirror (5.100.0 here). So the
harness validates a transformed *copy* of each stack:

* `required_providers.aws.version` becomes the mirrored version; providers that cannot be
  installed offline but are listed in :data:`STAND_IN_PROVIDERS` are removed, their `provider`
  blocks move into a `locals` entry (so every expression in them is still validated) and their
  resources and data sources become `terraform_data` resources whose `input` holds the whole
  body (meta-arguments stay meta-arguments). References to them are renamed, and an attribute
  access (`helm_release.x.status`) becomes `.output`, which terraform_data has.
* Every `module` block points at a local stub generated from the vendored interface
  (tests/data/modules/): each variable with its type constraint (so Terraform type-checks every
  input, attributes inside object types included) and its requiredness, every output (null).
  Terraform *drops* object attributes the type does not declare without a word, so the harness
  reports those itself (with tests/module_types.py).
* Arguments that only exist in the pinned aws 6.x (:data:`NEWER_AWS_ARGUMENTS`) are removed from
  the copy after their value was checked: a literal must look like what it is (a region), an
  expression moves into a `precondition` of the same block, where Terraform still validates it.

The copies are validated together as the modules of one root, and each as the root module of
its own directory when that run finds an error (:meth:`Validator.validate` says why), with a
CLI configuration that installs providers only from the mirror (TF_CLI_CONFIG_FILE) and no
network access; see :class:`Validator` for what makes that fast enough. Diagnostics are reported with the JSON path
of the synthesized stack they point at.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.module_types import check as check_module_type
from tests.module_types import parse_type
from tests.tf_references import (
    Attr,
    Expr,
    Reference,
    Template,
    TemplateSyntaxError,
    has_sequences,
    json_path,
    parse_expression,
    parse_template,
    uses,
)

REPO = Path(__file__).resolve().parent.parent
INTERFACE_DIR = REPO / "tests" / "data" / "modules"

# Where a provider mirror may be: an explicit directory, then Terraform's implied local mirror
# directories (https://developer.hashicorp.com/terraform/cli/config/config-file#implied-local-mirror-directories).
MIRROR_ENV = "TF_VALIDATE_PROVIDER_MIRROR"
MIRROR_CANDIDATES = (
    Path("/opt/tf-plugins"),
    Path.home() / ".terraform.d" / "plugins",
    Path.home() / ".local" / "share" / "terraform" / "plugins",
    Path("/usr/local/share/terraform/plugins"),
    Path("/usr/share/terraform/plugins"),
)
AWS = "hashicorp/aws"

# Providers that cannot be installed offline and that the harness stands in for (reason).
STAND_IN_PROVIDERS: dict[str, str] = {
    "hashicorp/helm": "not in the offline mirror: each helm_release becomes a terraform_data with its body",
    "hashicorp/kubernetes": "not in the offline mirror: each kubernetes_* block becomes a terraform_data with its body",
}

# Meta-arguments a stood-in block keeps as meta-arguments of its terraform_data.
KEPT_META_ARGUMENTS = ("//", "count", "for_each", "depends_on", "lifecycle", "provisioner", "connection")
MODULE_META_ARGUMENTS = frozenset({"//", "source", "version", "providers", "depends_on", "count", "for_each"})
STUB_DIR = "harness_modules"
STACK_FILE = "cdk.tf.json"
ROOT_FILE = "main.tf.json"  # the root module of a run together
HARNESS_PREFIX = "harness_"  # names the harness adds to a copy (locals)

# How module_types.check words an attribute that Terraform would silently drop.
_DROPPED_ATTRIBUTE = "not an attribute of the object type"


# --- arguments newer than the mirrored aws provider -------------------------------------------

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


def _literal_region_problem(value: str) -> str | None:
    return None if _REGION.fullmatch(value) else f"{value!r} is not an AWS region name"


@dataclass(frozen=True)
class NewerArgument:
    """An argument the pinned aws provider has but the mirrored (older) one rejects."""

    argument: str
    types: str  # fnmatch pattern of the resource / data source types that have it
    sections: tuple[str, ...]  # "resource", "data"
    since: tuple[int, int, int]  # first aws provider version with the argument
    reason: str
    literal_problem: Callable[[str], str | None]  # what is wrong with a literal value


NEWER_AWS_ARGUMENTS: tuple[NewerArgument, ...] = (
    NewerArgument(
        argument="region",
        types="aws_*",
        sections=("resource", "data"),
        since=(6, 0, 0),
        reason="aws provider 6.0 added a per-resource `region` (enhanced region support); 5.x schemas reject it",
        literal_problem=_literal_region_problem,
    ),
)


# --- finding terraform and the mirror ---------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    """A filesystem mirror (unpacked layout) and the newest version of each provider in it."""

    root: Path
    versions: Mapping[str, str]  # "hashicorp/aws" -> "5.100.0"
    # The mirror's top-level directory: the providers' origin host, as Terraform lays out
    # unpacked mirrors (<host>/<namespace>/<type>/<version>/<os>_<arch>/). Read from the disk.
    host: str = ""

    @property
    def aws_version(self) -> str:
        return self.versions[AWS]


def platform_tag() -> str:
    """`linux_amd64`: the directory name Terraform uses for this machine's provider builds."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def read_mirror(root: Path) -> Mirror | None:
    """The providers (with an executable for this platform) under `root`, or None if no aws."""
    for host in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        versions: dict[str, str] = {}
        for binary in sorted(host.glob(f"*/*/*/{platform_tag()}/terraform-provider-*")):
            version_dir = binary.parent.parent
            name = f"{version_dir.parent.parent.name}/{version_dir.parent.name}"
            if name not in versions or _version_key(version_dir.name) > _version_key(versions[name]):
                versions[name] = version_dir.name
        if AWS in versions:
            return Mirror(root, versions, host.name)
    return None


def find_mirror() -> Mirror | None:
    """The first mirror holding hashicorp/aws: $TF_VALIDATE_PROVIDER_MIRROR, then the usual places."""
    explicit = os.environ.get(MIRROR_ENV)
    for root in [Path(explicit)] if explicit else MIRROR_CANDIDATES:
        if root.is_dir() and (mirror := read_mirror(root)) is not None:
            return mirror
    return None


@dataclass(frozen=True)
class Toolchain:
    terraform: str
    mirror: Mirror


def find_toolchain() -> Toolchain | str:
    """A terraform binary and a provider mirror, or why they cannot be used."""
    terraform = shutil.which("terraform")
    if terraform is None:
        return "no terraform binary on PATH"
    mirror = find_mirror()
    if mirror is None:
        where = os.environ.get(MIRROR_ENV) or ", ".join(str(p) for p in MIRROR_CANDIDATES)
        return f"no filesystem mirror with {AWS} for {platform_tag()} (looked in {where}; set {MIRROR_ENV})"
    return Toolchain(terraform, mirror)


# --- module interfaces and stubs --------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    """A vendored module interface (tests/data/modules/<file>.json)."""

    file: str
    source: str
    version: str
    variables: Mapping[str, Mapping]
    outputs: tuple[str, ...]

    @property
    def stub_name(self) -> str:
        return Path(self.file).stem

    def stub(self) -> dict:
        """A module with the same variables (types, requiredness) and outputs, and no resources."""
        variables = {}
        for name, var in self.variables.items():
            variables[name] = {"type": var["type"]} if var["required"] else {"type": var["type"], "default": None}
        return {
            "terraform": {"required_providers": {"aws": {"source": AWS}}},
            "variable": variables,
            "output": {name: {"value": None} for name in self.outputs},
        }


def load_interfaces(directory: Path = INTERFACE_DIR) -> dict[tuple[str, str], Interface]:
    out = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        interface = Interface(path.name, data["source"], data["version"], data["variables"], tuple(data["outputs"]))
        out[(interface.source, interface.version)] = interface
    return out


# --- the transformed copy ---------------------------------------------------------------------


@dataclass
class PreparedStack:
    """A stack's copy, ready for offline validation, and what preparing it found and changed."""

    name: str
    config: dict
    stubs: dict[str, dict] = field(default_factory=dict)  # stub directory name -> main.tf.json
    assets: Path | None = None  # the synthesized stack's directory (its assets are linked)
    problems: list[str] = field(default_factory=list)  # errors the harness itself found
    notes: list[str] = field(default_factory=list)  # what was stood in or stripped
    origins: dict[tuple, tuple] = field(default_factory=dict)  # copy path prefix -> original path

    def digest(self) -> str:
        """Identical copies (a stack no variant changes) are validated once."""
        blob = json.dumps([self.config, self.stubs, _listing(self.assets), self.problems], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def original_path(self, path: tuple) -> str:
        """The JSON path in the synthesized stack of a path in the copy."""
        for prefix in sorted(self.origins, key=len, reverse=True):
            if path[: len(prefix)] == prefix:
                return json_path(self.origins[prefix] + path[len(prefix) :])
        return json_path(path)


def _listing(stack_dir: Path | None) -> list[tuple[str, int]]:
    """The asset files (relative path, size) a copy links to: what identifies them."""
    assets = stack_dir / "assets" if stack_dir is not None else None
    if assets is None or not assets.is_dir():
        return []
    return sorted((str(p.relative_to(assets)), p.stat().st_size) for p in assets.rglob("*") if p.is_file())


def _normalize_source(source: str) -> str:
    """`aws` and `<host>/hashicorp/aws` are both `hashicorp/aws`."""
    parts = source.lower().split("/")
    if len(parts) == 1:
        return f"hashicorp/{parts[0]}"
    return "/".join(parts[-2:])


def prepare_stack(
    name: str,
    stack: dict,
    *,
    mirror: Mirror,
    interfaces: Mapping[tuple[str, str], Interface],
    stack_dir: Path | None = None,
) -> PreparedStack:
    """Transform a copy of one synthesized stack so that terraform can validate it offline."""
    prepared = PreparedStack(name, copy.deepcopy(stack), assets=stack_dir)
    stood_in = _replace_providers(prepared, mirror)
    renames = _stand_in_blocks(prepared, stood_in)
    _rewrite_all_references(prepared.config, renames)
    _stub_modules(prepared, interfaces)
    _strip_newer_arguments(prepared, mirror.aws_version)
    return prepared


def _replace_providers(prepared: PreparedStack, mirror: Mirror) -> set[str]:
    """Pin mirrored providers to the mirror's version; remove stood-in ones (their provider
    blocks become locals). Returns the local names of the stood-in providers."""
    config = prepared.config
    required = config.setdefault("terraform", {}).setdefault("required_providers", {})
    stood_in = set()
    for local_name, requirement in list(required.items()):
        if not isinstance(requirement, dict):  # the legacy form `aws = "~> 5.0"`
            requirement = required[local_name] = {"version": requirement}
        source = _normalize_source(requirement.get("source", local_name))
        if source in mirror.versions:
            requirement["version"] = mirror.versions[source]
            continue
        del required[local_name]  # validate the rest of the stack all the same
        stood_in.add(local_name)
        if source in STAND_IN_PROVIDERS:
            prepared.notes.append(f"provider {source}: {STAND_IN_PROVIDERS[source]}")
        else:
            prepared.problems.append(
                f"terraform.required_providers.{local_name}: {source} is neither in the mirror "
                f"({mirror.root}) nor in STAND_IN_PROVIDERS of tests/terraform_validate.py"
            )
    providers = config.get("provider", {})
    for local_name in sorted(stood_in & set(providers)):
        local = _add_local(config, f"{HARNESS_PREFIX}provider_{local_name}", providers.pop(local_name))
        prepared.origins[("locals", local)] = ("provider", local_name)
    if "provider" in config and not config["provider"]:
        del config["provider"]
    return stood_in


def _add_local(config: dict, wanted: str, value: object) -> str:
    """Add a local value under a name nobody uses; returns the name."""
    locals_ = config.setdefault("locals", {})
    name = _unique(wanted, set(locals_))
    locals_[name] = value
    return name


def _unique(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted}_{n}", n + 1
    return name


def _block_provider(rtype: str, block: dict) -> str:
    """The local provider name a resource uses: its `provider` meta-argument or its type prefix."""
    provider = block.get("provider")
    return provider.split(".")[0] if isinstance(provider, str) else rtype.split("_")[0]


@dataclass(frozen=True)
class Rename:
    """A stood-in block: how it was addressed, and its terraform_data name in the copy."""

    section: str  # "resource" | "data"
    rtype: str
    name: str
    new_name: str


def _stand_in_blocks(prepared: PreparedStack, stood_in: set[str]) -> list[Rename]:
    """Every resource and data source of a stood-in provider becomes a terraform_data resource
    whose `input` holds its arguments; names never collide with existing terraform_data."""
    config = prepared.config
    renames: list[Rename] = []
    data_resources = config.setdefault("resource", {}).setdefault("terraform_data", {})
    taken = set(data_resources)
    for section in ("resource", "data"):
        blocks_by_type = config.get(section, {})
        for rtype in list(blocks_by_type):
            if rtype == "terraform_data" or not blocks_by_type[rtype]:
                continue
            first = next(iter(blocks_by_type[rtype].values()))
            if _block_provider(rtype, first) not in stood_in:
                continue
            for name, block in blocks_by_type.pop(rtype).items():
                prefix = f"{rtype}__" if section == "resource" else f"data__{rtype}__"
                new_name = _unique(prefix + name, taken)
                taken.add(new_name)
                data_resources[new_name] = _as_terraform_data(block)
                renames.append(Rename(section, rtype, name, new_name))
                prepared.origins[("resource", "terraform_data", new_name, "input")] = (section, rtype, name)
                prepared.origins[("resource", "terraform_data", new_name)] = (section, rtype, name)
        if section == "data" and not blocks_by_type:
            config.pop("data", None)
    if not data_resources:
        del config["resource"]["terraform_data"]
    if not config["resource"]:
        del config["resource"]
    return renames


def _as_terraform_data(block: dict) -> dict:
    """`input` = every argument; count, for_each, depends_on, lifecycle, … stay meta-arguments.
    What named the original type's attributes now names `input`/`output`: `ignore_changes`,
    and `self.ATTR` in provisioners, connections and postconditions."""
    converted: dict = {"input": {k: v for k, v in block.items() if k not in KEPT_META_ARGUMENTS and k != "provider"}}
    for key in KEPT_META_ARGUMENTS:
        if key in block:
            converted[key] = copy.deepcopy(block[key])
    for key in ("provisioner", "connection"):
        if key in converted:
            converted[key] = _rewrite(converted[key], _self_edits, key)
    lifecycle = converted.get("lifecycle")
    if isinstance(lifecycle, dict):
        if isinstance(lifecycle.get("ignore_changes"), list):
            lifecycle["ignore_changes"] = ["input"] if lifecycle["ignore_changes"] else []
        if "postcondition" in lifecycle:
            lifecycle["postcondition"] = _rewrite(lifecycle["postcondition"], _self_edits, "postcondition")
    return converted


# --- renaming references ----------------------------------------------------------------------


Edit = tuple[int, int, str]  # replace text[start:end] by this
EditsFor = Callable[[Reference], list[Edit]]


def rename_edits(renames: Iterable[Rename]) -> EditsFor:
    """Edits that make a reference to a stood-in block address its terraform_data."""

    def edits_for(ref: Reference) -> list[Edit]:
        for rename in renames:
            if rename.section == "resource" and ref.root == rename.rtype and ref.attr(0) == rename.name:
                address_end, rest = ref.steps[0].end, ref.steps[1:]
            elif (
                rename.section == "data"
                and ref.root == "data"
                and (ref.attr(0), ref.attr(1))
                == (
                    rename.rtype,
                    rename.name,
                )
            ):
                address_end, rest = ref.steps[1].end, ref.steps[2:]
            else:
                continue
            return [(ref.start, address_end, f"terraform_data.{rename.new_name}"), *_output_edit(rest)]
        return []

    return edits_for


def _self_edits(ref: Reference) -> list[Edit]:
    """`self.status` of a stood-in block is `self.output`."""
    return _output_edit(ref.steps) if ref.root == "self" else []


def _output_edit(steps: tuple) -> list[Edit]:
    """The first attribute access (after any index or splat) becomes `.output`."""
    attribute = next((step for step in steps if isinstance(step, Attr)), None)
    return [] if attribute is None else [(attribute.start, attribute.end, ".output")]


def _apply(text: str, tree: Expr | Template, edits_for: EditsFor) -> str:
    edits = [e for use in uses(tree) if isinstance(use.node, Reference) for e in edits_for(use.node)]
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def rewrite_template(text: str, edits_for: EditsFor) -> str:
    """Apply reference edits inside a template string (unparsable text is left alone: Terraform
    will report it)."""
    if not has_sequences(text):
        return text
    try:
        return _apply(text, parse_template(text), edits_for)
    except TemplateSyntaxError:
        return text


def rewrite_expression(text: str, edits_for: EditsFor) -> str:
    """The same for a bare expression (a `depends_on` entry)."""
    try:
        return _apply(text, parse_expression(text), edits_for)
    except TemplateSyntaxError:
        return text


def _rewrite_all_references(config: dict, renames: list[Rename]) -> None:
    if renames:
        edits_for = rename_edits(renames)
        for section in ("resource", "data", "module", "output", "locals", "provider", "check", "import"):
            if section in config:
                config[section] = _rewrite(config[section], edits_for, key="")


def _rewrite(value: object, edits_for: EditsFor, key: str) -> object:
    """Every string under `value` (keys too), as Terraform reads it: `depends_on` and
    `replace_triggered_by` hold bare references, everything else templates."""
    if isinstance(value, str):
        bare = key in ("depends_on", "replace_triggered_by")
        return rewrite_expression(value, edits_for) if bare else rewrite_template(value, edits_for)
    if isinstance(value, list):
        return [_rewrite(item, edits_for, key) for item in value]
    if isinstance(value, dict):
        return {
            (k if k == "//" else rewrite_template(k, edits_for)): (v if k == "//" else _rewrite(v, edits_for, k))
            for k, v in value.items()
        }
    return value


# --- module stubs -----------------------------------------------------------------------------


def _stub_modules(prepared: PreparedStack, interfaces: Mapping[tuple[str, str], Interface]) -> None:
    """Point each module block at a stub of its vendored interface and check what Terraform
    cannot: object attributes it would silently drop."""
    for name, block in prepared.config.get("module", {}).items():
        key = (block.get("source"), block.get("version"))
        interface = interfaces.get(key)
        if interface is None:
            known = ", ".join(f"{s} {v}" for s, v in sorted(interfaces))
            prepared.problems.append(
                f"module.{name}: {key[0]} {key[1]} has no vendored interface in tests/data/modules/ "
                f"(known: {known}); add it (see tests/data/modules/README.md)"
            )
            continue
        prepared.stubs[interface.stub_name] = interface.stub()
        block["source"] = f"./{STUB_DIR}/{interface.stub_name}"
        block.pop("version", None)
        prepared.problems.extend(f"module.{name}.{e}" for e in _dropped_attributes(block, interface))


def _dropped_attributes(block: dict, interface: Interface) -> list[str]:
    """Attributes inside object-typed inputs that the variable's type does not declare."""
    errors = []
    for key, value in block.items():
        if key in MODULE_META_ARGUMENTS or key not in interface.variables:
            continue  # an unknown variable is Terraform's to report
        for error in check_module_type(value, parse_type(interface.variables[key]["type"]), key):
            if _DROPPED_ATTRIBUTE in error:
                errors.append(error)
    return errors


# --- arguments newer than the mirror ----------------------------------------------------------


def _strip_newer_arguments(prepared: PreparedStack, aws_version: str) -> None:
    """Remove the NEWER_AWS_ARGUMENTS the mirrored provider lacks, once their value is checked."""
    newer = [a for a in NEWER_AWS_ARGUMENTS if _version_key(aws_version) < a.since]
    for arg in newer:
        for section in arg.sections:
            for rtype, blocks in prepared.config.get(section, {}).items():
                if not fnmatch.fnmatchcase(rtype, arg.types):
                    continue
                for name, block in blocks.items():
                    if arg.argument in block:
                        _strip(prepared, arg, (section, rtype, name), block)


_ALWAYS_TRUE = '${terraform.workspace != ""}'


def _strip(prepared: PreparedStack, arg: NewerArgument, path: tuple, block: dict) -> None:
    value = block.pop(arg.argument)
    where = json_path((*path, arg.argument))
    if not isinstance(value, str):
        prepared.problems.append(f"{where}: {value!r} is not a string")
    elif not has_sequences(value):
        if (problem := arg.literal_problem(value)) is not None:
            prepared.problems.append(f"{where}: {problem}")
    else:
        # Keep the expression where Terraform validates it, in the same block's scope (count,
        # each): the error message of an always-true precondition (whose condition must
        # reference something, says Terraform).
        lifecycle = block.setdefault("lifecycle", {})
        if isinstance(lifecycle, list):  # JSON allows a block to be a list of one object
            lifecycle = lifecycle[0]
        conditions = lifecycle.get("precondition", [])
        conditions = conditions if isinstance(conditions, list) else [conditions]
        lifecycle["precondition"] = [*conditions, {"condition": _ALWAYS_TRUE, "error_message": value}]
        kept = (*path, "lifecycle", "precondition", len(conditions), "error_message")
        prepared.origins[kept] = (*path, arg.argument)
    prepared.notes.append(f"{where}: removed ({arg.reason})")


# --- writing a workspace ----------------------------------------------------------------------


def render_json(value: object) -> tuple[str, list[tuple]]:
    """Pretty JSON and, for every line, the JSON path it belongs to (Terraform reports lines)."""
    lines: list[str] = []
    paths: list[tuple] = []

    def emit(text: str, path: tuple) -> None:
        lines.append(text)
        paths.append(path)

    def render(item: object, path: tuple, indent: str, prefix: str, suffix: str) -> None:
        if isinstance(item, dict) and item:
            emit(f"{indent}{prefix}{{", path)
            for i, (key, child) in enumerate(item.items()):
                comma = "," if i < len(item) - 1 else ""
                render(child, (*path, key), indent + " ", f"{json.dumps(key)}: ", comma)
            emit(f"{indent}}}{suffix}", path)
        elif isinstance(item, list) and item:
            emit(f"{indent}{prefix}[", path)
            for i, child in enumerate(item):
                render(child, (*path, i), indent + " ", "", "," if i < len(item) - 1 else "")
            emit(f"{indent}]{suffix}", path)
        else:
            emit(f"{indent}{prefix}{json.dumps(item)}{suffix}", path)

    render(value, (), "", "", "")
    return "\n".join(lines) + "\n", paths


def write_stack(prepared: PreparedStack, directory: Path) -> list[tuple]:
    """Write the copy, its module stubs and a link to its assets; returns the line paths."""
    directory.mkdir(parents=True, exist_ok=True)
    text, paths = render_json(prepared.config)
    (directory / STACK_FILE).write_text(text)
    for stub_name, stub in prepared.stubs.items():
        stub_dir = directory / STUB_DIR / stub_name
        stub_dir.mkdir(parents=True, exist_ok=True)
        (stub_dir / "main.tf.json").write_text(json.dumps(stub, indent=1))
    if prepared.assets is not None and (prepared.assets / "assets").is_dir():
        (directory / "assets").symlink_to(prepared.assets / "assets", target_is_directory=True)
    return paths


# --- diagnostics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    summary: str
    detail: str
    address: str  # Terraform's snippet context in the copy, e.g. resource.terraform_data.x.input
    location: str  # file:line in the copy
    path: str  # the JSON path in the synthesized stack, when the line maps to one
    code: str  # the highlighted source, with some context

    def __str__(self) -> str:
        where = self.path or self.address or "(no location)"
        copy_at = ", ".join(x for x in (self.address, self.location) if x)
        text = f"{self.severity}: {where}: {self.summary}: {self.detail}"
        if copy_at:
            text += f"\n      (in the copy: {copy_at})"
        if self.code:
            text += f"\n      {self.code}"
        return text


def _excerpt(snippet: Mapping) -> str:
    """The part of the line Terraform highlights, marked >>like this<<, with 60 characters
    around it (a line of synthesized JSON can be thousands of characters long). Terraform's
    offsets count bytes of UTF-8."""
    code = (snippet.get("code") or "").encode()
    start, end = snippet.get("highlight_start_offset"), snippet.get("highlight_end_offset")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start <= end <= len(code):
        return code.decode().strip()[:200]
    before, marked, after = (part.decode(errors="replace") for part in (code[:start], code[start:end], code[end:]))
    head = ("…" + before[-60:] if len(before) > 60 else before).lstrip()
    tail = (after[:60] + "…" if len(after) > 60 else after).rstrip()
    return f"{head}>>{marked}<<{tail}"


def parse_diagnostics(raw: dict, prepared: PreparedStack, line_paths: list[tuple]) -> list[Diagnostic]:
    """Terraform's `validate -json` diagnostics, each with the JSON path (in the synthesized
    stack) of the line it points at."""
    out = []
    for diag in raw.get("diagnostics", []):
        rng = diag.get("range") or {}
        snippet = diag.get("snippet") or {}
        filename = rng.get("filename", "")
        line = rng.get("start", {}).get("line", 0)
        path = ""
        if filename == STACK_FILE and 0 < line <= len(line_paths):
            path = prepared.original_path(line_paths[line - 1])
        out.append(
            Diagnostic(
                severity=diag.get("severity", "error"),
                summary=diag.get("summary", ""),
                detail=diag.get("detail", ""),
                address=snippet.get("context") or "",
                location=f"{filename}:{line}" if filename else "",
                path=path,
                code=_excerpt(snippet),
            )
        )
    return out


# --- running terraform ------------------------------------------------------------------------


@dataclass
class Report:
    """What validating one stack found."""

    stack: str
    diagnostics: list[Diagnostic]
    problems: list[str]  # found by the harness while preparing the copy
    seconds: float  # preparing the directory and validating
    same_as: str = ""  # the identical copy whose validation this reuses
    directory: str = ""  # the validated copy, to look at
    # False when a diagnostic of a run together may belong to another stack (it is in the
    # root's file: a shared provider configuration)
    exact: bool = True

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems

    def failure_message(self) -> str:
        """Every error (JSON path, summary, detail, code); warnings only listed alongside errors."""
        same = f" (identical to {self.same_as})" if self.same_as else ""
        out = [
            (
                f"{self.stack}{same}: terraform validate: {len(self.errors)} error(s); "
                f"harness checks: {len(self.problems)} problem(s) (copy: {self.directory or 'none'})"
            )
        ]
        out += [f"  harness: {p}" for p in self.problems]
        out += [f"  {d}" for d in self.errors]
        if self.warnings and (self.errors or self.problems):
            out.append(f"  and {len(self.warnings)} warning(s):")
            out += [f"  {d}" for d in self.warnings]
        return "\n".join(out)


class TerraformError(RuntimeError):
    """Terraform could not be run at all (init or get failed, validate printed no JSON): a
    problem of the harness or the machine, not a finding about a stack."""


class Validator:
    """Validates prepared stacks, each as the root module of its own working directory.

    `terraform init` costs about 2 s per directory, nearly all of it hashing the 700 MB aws
    provider against the lock file; the harness runs it once, in a directory that requires
    every mirrored provider, and gives every stack directory a link to those installed
    providers and a copy of that lock file; `terraform get` (0.2 s) installs the module stubs.
    What remains is `terraform validate` itself: loading the aws provider schema is most of it
    (about 3 s of CPU per run), so all stacks are validated as modules of one root, in one run,
    and only when that run finds an error are they validated again each on its own (see
    :meth:`validate` for why both). Identical copies (a stack no variant changes) are validated
    once.
    """

    def __init__(self, toolchain: Toolchain, workdir: Path, workers: int | None = None):
        self.toolchain = toolchain
        self.workdir = workdir
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.cli_config = workdir / "terraform.tfrc"
        self.cli_config.parent.mkdir(parents=True, exist_ok=True)
        self.cli_config.write_text(cli_config_text(toolchain.mirror))
        self._installed: Path | None = None  # the directory whose init installed the providers
        self._install_lock = threading.Lock()
        self._counter = itertools.count(1)

    def env(self) -> dict[str, str]:
        """No user configuration, no network checkpoint, providers only from the mirror."""
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            HOME=str(self.workdir),
            TF_CLI_CONFIG_FILE=str(self.cli_config),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            # Go's collector runs when the heap has grown by GOGC% since the last one (default
            # 100). Terraform and the aws provider plugins it starts (they inherit this
            # environment) build the provider schema, ~1,500 resource types, over and over:
            # at 400 they spend about a quarter less CPU (paired runs, docs/benchmarks.md) for
            # ~7% more peak memory. What is validated does not change.
            GOGC="400",
        )
        return env

    def terraform(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.toolchain.terraform, *args, "-no-color"],
            check=False,  # callers read the exit status and the JSON
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def _checked(self, args: list[str], cwd: Path) -> None:
        result = self.terraform(args, cwd)
        if result.returncode != 0:
            raise TerraformError(f"terraform {' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")

    def installed_providers(self) -> Path:
        """A directory where `terraform init` installed every mirrored provider (once)."""
        with self._install_lock:
            if self._installed is None:
                directory = self.workdir / "providers"
                directory.mkdir(parents=True, exist_ok=True)
                required = {
                    name.replace("/", "-"): {"source": f"{self.toolchain.mirror.host}/{name}", "version": version}
                    for name, version in self.toolchain.mirror.versions.items()
                }
                config = {"terraform": {"required_providers": required}}
                (directory / "main.tf.json").write_text(json.dumps(config, indent=1))
                self._checked(["init", "-backend=false", "-input=false"], directory)
                self._installed = directory
            return self._installed

    def workspace(self, prepared: PreparedStack) -> tuple[Path, list[tuple]]:
        """A working directory holding the copy, initialized without a second provider install."""
        installed = self.installed_providers()
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", prepared.name)
        directory = self.workdir / "runs" / f"{next(self._counter):03d}-{label}"
        paths = write_stack(prepared, directory)
        (directory / ".terraform").mkdir()
        (directory / ".terraform" / "providers").symlink_to(installed / ".terraform" / "providers")
        shutil.copy(installed / ".terraform.lock.hcl", directory / ".terraform.lock.hcl")
        if prepared.stubs:
            self._checked(["get"], directory)
        return directory, paths

    def validate_one(self, prepared: PreparedStack) -> Report:
        """Validate one stack as the root module of its own directory."""
        start = time.monotonic()
        directory, paths = self.workspace(prepared)
        result = self.terraform(["validate", "-json"], directory)
        raw = _validate_json(result, directory)
        diagnostics = parse_diagnostics(raw, prepared, paths)
        return Report(
            prepared.name, diagnostics, list(prepared.problems), time.monotonic() - start, directory=str(directory)
        )

    def validate_together(self, stacks: list[PreparedStack]) -> list[Report]:
        """Validate stacks as the child modules of one root (one terraform, one schema load).

        Each stack's directory is a module of the root (`module "mNNN" { source = "./mNNN" }`):
        Terraform validates every module of the configuration, and an error in one module does
        not hide the others. A child's backend block is ignored with a warning. Identical
        provider configurations are declared once, in the root (:func:`share_providers`).
        Diagnostics are told apart by their file (`mNNN/cdk.tf.json`); one without a file, or
        in the root's file (a shared provider configuration), goes to every stack: reports
        with such a diagnostic are not exact (:meth:`validate` validates again apart).
        """
        start = time.monotonic()
        installed = self.installed_providers()
        root = self.workdir / "runs" / f"{next(self._counter):03d}-together"
        root_config, members = share_providers({f"m{i:03d}": stack for i, stack in enumerate(stacks)})
        paths = {name: write_stack(stack, root / name) for name, stack in members.items()}
        (root / ROOT_FILE).write_text(json.dumps(root_config, indent=1))
        (root / ".terraform").mkdir()
        (root / ".terraform" / "providers").symlink_to(installed / ".terraform" / "providers")
        shutil.copy(installed / ".terraform.lock.hcl", root / ".terraform.lock.hcl")
        self._checked(["get"], root)
        raw = _validate_json(self.terraform(["validate", "-json"], root), root)
        mine: dict[str, list[dict]] = {name: [] for name in members}
        exact = True
        for diag in raw.get("diagnostics", []):
            filename = (diag.get("range") or {}).get("filename", "")
            owner, _, rest = filename.partition("/")
            if owner in mine and rest:
                mine[owner].append({**diag, "range": {**diag["range"], "filename": rest}})
            else:
                exact = exact and filename != ROOT_FILE
                for found in mine.values():
                    found.append(diag)
        seconds = time.monotonic() - start
        return [
            Report(
                stack.name,
                parse_diagnostics({"diagnostics": mine[name]}, stack, paths[name]),
                list(stack.problems),
                seconds,
                directory=str(root / name),
                exact=exact,
            )
            for name, stack in members.items()
        ]

    def validate_apart(self, stacks: list[PreparedStack]) -> list[Report]:
        """Validate each stack as the root module of its own directory, in a small thread pool."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.validate_one, stacks))

    def validate(self, stacks: Iterable[PreparedStack], *, beside: Iterable[PreparedStack] = ()) -> dict[str, Report]:
        """Reports keyed by stack label; identical copies are validated once.

        All stacks are validated together first (one terraform). If that run reports no error,
        its reports stand: no error means Terraform decoded every module and walked every block
        (it skips only blocks downstream of an error). If it reports any error, every stack is
        validated again on its own and those reports stand: an error Terraform finds while
        decoding one module (a misspelt argument) stops the whole run before any module is
        walked, so it would hide the other stacks' errors, and an error in one stack must not
        be reported against another.

        `beside` are copies validated in the same run whose report is that run's, errors and
        all (the harness's controls: an error Terraform finds while walking one module is
        reported from that module's file and hides nothing in the others). Their own errors
        do not send the stacks apart; a diagnostic that cannot be told apart does. Their
        reports come back under their labels too.
        """
        stacks, beside = list(stacks), list(beside)
        unique: dict[str, PreparedStack] = {}
        for prepared in stacks:
            unique.setdefault(prepared.digest(), prepared)
        together = self.validate_together([*unique.values(), *beside])
        together, beside_reports = together[: len(unique)], together[len(unique) :]
        if any(report.errors or not report.exact for report in together):
            together = self.validate_apart(list(unique.values()))
        reports = dict(zip(unique, together, strict=True))
        return {
            **{p.name: _relabel(reports[p.digest()], p) for p in stacks},
            **{report.stack: report for report in beside_reports},
        }


def share_providers(members: Mapping[str, PreparedStack]) -> tuple[dict, dict[str, PreparedStack]]:
    """The root module of a run together, and the members with their shareable provider
    configurations moved into it.

    Terraform starts one provider process per provider configuration of every module it
    validates (~0.6 s of CPU each for aws). The stacks' configurations are literal and differ
    only by their default tags, so configurations with the same JSON are declared once in the
    root (aliased) and passed to each module that had one (`providers = {aws = aws.shared0}`):
    every configuration is still validated, once. Only a provider's single default block
    without a reference (`${`) moves, and only where the module requires the provider as the
    others do; anything else stays in its module, as written.
    """
    required: dict[str, dict] = {}
    shared: dict[tuple[str, str], str] = {}  # (provider, JSON of its block) -> alias
    blocks: dict[str, list[dict]] = {}
    modules: dict[str, dict] = {}
    out: dict[str, PreparedStack] = {}
    for name, stack in members.items():
        modules[name] = {"source": f"./{name}"}
        declared = stack.config.get("provider", {})
        wanted = stack.config.get("terraform", {}).get("required_providers", {})
        moved = {}
        for provider, provider_blocks in declared.items():
            text = json.dumps(provider_blocks[0], sort_keys=True) if len(provider_blocks) == 1 else ""
            if not text or "alias" in provider_blocks[0] or "${" in text or provider not in wanted:
                continue
            if required.setdefault(provider, wanted[provider]) != wanted[provider]:
                continue
            if (provider, text) not in shared:
                shared[provider, text] = f"shared{len(shared)}"
                blocks.setdefault(provider, []).append({**provider_blocks[0], "alias": shared[provider, text]})
            moved[provider] = f"{provider}.{shared[provider, text]}"
        if moved:
            modules[name]["providers"] = moved
            kept = {k: v for k, v in declared.items() if k not in moved}
            config = {k: v for k, v in stack.config.items() if k != "provider"}
            stack = replace(stack, config={**config, "provider": kept} if kept else config)
        out[name] = stack
    root: dict = {"module": modules}
    if blocks:
        root = {"terraform": {"required_providers": {p: required[p] for p in blocks}}, "provider": blocks, **root}
    return root, out


def _validate_json(result: subprocess.CompletedProcess, directory: Path) -> dict:
    try:
        raw = json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise TerraformError(f"terraform validate printed no JSON in {directory}:\n{result.stderr}") from e
    if not isinstance(raw, dict):
        raise TerraformError(f"terraform validate printed {type(raw).__name__}, not an object, in {directory}")
    return raw


def _relabel(report: Report, prepared: PreparedStack) -> Report:
    """The report of an identical copy, under this stack's name."""
    if report.stack == prepared.name:
        return report
    return replace(report, stack=prepared.name, problems=list(prepared.problems), seconds=0.0, same_as=report.stack)


def cli_config_text(mirror: Mirror) -> str:
    """Providers come from the mirror and from nowhere else: without a `direct` block Terraform
    never asks a registry, so a provider missing from the mirror fails at once, offline."""
    mirrored = json.dumps([f"{mirror.host}/{name}" for name in sorted(mirror.versions)])
    return (
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path    = {json.dumps(str(mirror.root))}\n    include = {mirrored}\n  }}\n"
        "}\n"
    )


def prepare_synth(
    variant: str, synth, *, mirror: Mirror, interfaces: Mapping[tuple[str, str], Interface]
) -> Iterator[PreparedStack]:
    """Prepared copies of every stack of one configuration variant, labelled `variant/stack`."""
    for stack_name, stack in synth.stacks.items():
        yield prepare_stack(
            f"{variant}/{stack_name}",
            stack,
            mirror=mirror,
            interfaces=interfaces,
            stack_dir=synth.paths[stack_name].parent,
        )
