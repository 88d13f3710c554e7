"""Terraform type constraints: a parser, and a checker for values from synthesized JSON.

Parses the type strings of module variables (``tests/data/modules/*.json``)::

    string | number | bool | any
    list(T) | set(T) | map(T) | tuple([T, ...])
    object({name = T, name = optional(T), name = optional(T, <default>)})

Defaults may be any HCL literal (strings with escapes, numbers, bools, null, ``[...]``,
``{...}``); they are parsed into Python values but only used for display.

:func:`check` compares a JSON-decoded module input with a parsed type and returns every error
with its path, e.g. ``eks_managed_node_groups.system.metadata_options.http_tokenz: not an
attribute of the object type``. Terraform converts an input to the variable's type and silently
drops object attributes the type does not declare, so an unknown attribute is an error here.
A value that is a single Terraform interpolation (``"${module.vpc.private_subnets}"``) matches
any type; it is only known at plan time.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

PRIMITIVES = ("string", "number", "bool", "any")
COLLECTIONS = ("list", "set", "map")


# --- the type model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    name: str  # string | number | bool | any

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Collection:
    kind: str  # list | set | map
    element: Type

    def __str__(self) -> str:
        return f"{self.kind}({self.element})"


@dataclass(frozen=True)
class Tuple:
    elements: tuple[Type, ...]

    def __str__(self) -> str:
        return "tuple([" + ", ".join(map(str, self.elements)) + "])"


_NO_DEFAULT = object()


@dataclass(frozen=True)
class Attribute:
    type: Type
    optional: bool = False
    default: object = field(default=_NO_DEFAULT, compare=False)

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def __str__(self) -> str:
        if not self.optional:
            return str(self.type)
        if self.has_default:
            return f"optional({self.type}, {self.default!r})"
        return f"optional({self.type})"


@dataclass(frozen=True)
class Object:
    attributes: dict[str, Attribute]

    def __hash__(self) -> int:  # dicts are unhashable; identity is enough here
        return id(self)

    def __str__(self) -> str:
        return "object({" + ", ".join(f"{k} = {v}" for k, v in self.attributes.items()) + "})"


Type = Primitive | Collection | Tuple | Object


class TypeSyntaxError(ValueError):
    pass


# --- the parser -----------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    # low level
    def error(self, message: str) -> TypeSyntaxError:
        snippet = self.text[max(0, self.pos - 30) : self.pos + 30]
        return TypeSyntaxError(f"{message} at offset {self.pos}: …{snippet}…")

    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated comment")
                self.pos = end + 2
            else:
                break

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, token: str) -> None:
        self.skip_space()
        if not self.text.startswith(token, self.pos):
            raise self.error(f"expected {token!r}")
        self.pos += len(token)

    def accept(self, token: str) -> bool:
        self.skip_space()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def ident(self) -> str:
        self.skip_space()
        m = _IDENT.match(self.text, self.pos)
        if not m:
            raise self.error("expected a name")
        self.pos = m.end()
        return m.group()

    def end(self) -> None:
        self.skip_space()
        if self.pos != len(self.text):
            raise self.error("unexpected trailing text")

    # types
    def type(self) -> Type:
        name = self.ident()
        if name in PRIMITIVES:
            return Primitive(name)
        if name in COLLECTIONS:
            self.expect("(")
            element = self.type()
            self.expect(")")
            return Collection(name, element)
        if name == "tuple":
            self.expect("(")
            self.expect("[")
            elements = []
            while self.peek() != "]":
                elements.append(self.type())
                if not self.accept(","):
                    break
            self.expect("]")
            self.expect(")")
            return Tuple(tuple(elements))
        if name == "object":
            self.expect("(")
            self.expect("{")
            attributes: dict[str, Attribute] = {}
            while self.peek() != "}":
                attr_name = self.string() if self.peek() == '"' else self.ident()
                if attr_name in attributes:
                    raise self.error(f"duplicate attribute {attr_name!r}")
                if not (self.accept("=") or self.accept(":")):
                    raise self.error("expected '=' after attribute name")
                attributes[attr_name] = self.attribute()
                self.accept(",")  # commas or newlines separate attributes
            self.expect("}")
            self.expect(")")
            return Object(attributes)
        raise self.error(f"unknown type {name!r}")

    def attribute(self) -> Attribute:
        self.skip_space()
        m = _IDENT.match(self.text, self.pos)
        if m and m.group() == "optional":
            self.pos = m.end()
            self.expect("(")
            attr_type = self.type()
            default = _NO_DEFAULT
            if self.accept(","):
                default = self.literal()
            self.expect(")")
            return Attribute(attr_type, optional=True, default=default)
        return Attribute(self.type())

    # HCL literals (defaults of optional attributes)
    def literal(self) -> object:
        ch = self.peek()
        if ch == '"':
            return self.string()
        if ch == "[":
            self.pos += 1
            items = []
            while self.peek() != "]":
                items.append(self.literal())
                if not self.accept(","):
                    break
            self.expect("]")
            return items
        if ch == "{":
            self.pos += 1
            obj = {}
            while self.peek() != "}":
                key = self.string() if self.peek() == '"' else self.ident()
                if not (self.accept("=") or self.accept(":")):
                    raise self.error("expected '=' or ':' in object literal")
                obj[key] = self.literal()
                self.accept(",")
            self.expect("}")
            return obj
        m = _NUMBER.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            text = m.group()
            return float(text) if any(c in text for c in ".eE") else int(text)
        name = self.ident()
        if name in ("true", "false"):
            return name == "true"
        if name == "null":
            return None
        raise self.error(f"unsupported default value {name!r} (only literals are supported)")

    def string(self) -> str:
        self.expect('"')
        out = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated string")
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                nxt = text[self.pos + 1 : self.pos + 2]
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                    self.pos += 2
                elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[self.pos + 2 : self.pos + 6]):
                    out.append(chr(int(text[self.pos + 2 : self.pos + 6], 16)))
                    self.pos += 6
                elif nxt == "U" and re.fullmatch(r"[0-9A-Fa-f]{8}", text[self.pos + 2 : self.pos + 10]):
                    out.append(chr(int(text[self.pos + 2 : self.pos + 10], 16)))
                    self.pos += 10
                else:
                    raise self.error("invalid escape in string")
                continue
            if text.startswith("${", self.pos) or text.startswith("%{", self.pos):
                # A template sequence: keep it verbatim, skipping nested braces and strings.
                start = self.pos
                self.pos += 2
                depth = 1
                while depth:
                    if self.pos >= len(text):
                        raise self.error("unterminated template sequence")
                    c = text[self.pos]
                    if c == '"':
                        self.string()
                        continue
                    depth += c == "{"
                    depth -= c == "}"
                    self.pos += 1
                out.append(text[start : self.pos])
                continue
            if text.startswith("$${", self.pos) or text.startswith("%%{", self.pos):
                out.append(text[self.pos + 1 : self.pos + 3])
                self.pos += 3
                continue
            out.append(ch)
            self.pos += 1


def parse_type(text: str) -> Type:
    """Parse a Terraform type constraint string."""
    parser = _Parser(text)
    result = parser.type()
    parser.end()
    return result


def parse_literal(text: str) -> object:
    """Parse one HCL literal (exposed for tests)."""
    parser = _Parser(text)
    result = parser.literal()
    parser.end()
    return result


# --- the checker ----------------------------------------------------------------------------


def _interpolation_end(value: str, start: int) -> int | None:
    """For the ``${`` at `start`, the index just past its matching ``}`` (braces inside
    quoted strings do not count), or None when it is unterminated."""
    depth, j, in_string = 1, start + 2, False
    while j < len(value):
        c = value[j]
        if in_string:
            if c == "\\":
                j += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def is_single_interpolation(value: str) -> bool:
    """True when the whole string is one ``${ ... }`` sequence (its value may have any type)."""
    return value.startswith("${") and _interpolation_end(value, 0) == len(value)


def is_template(value: str) -> bool:
    """True when the string contains an unescaped ``${`` interpolation or ``%{`` directive
    (``$${`` and ``%%{`` are escapes for the literal text)."""
    i = 0
    while i < len(value) - 1:
        if value[i] in "$%" and value[i + 1] == value[i] and value[i + 2 : i + 3] == "{":
            i += 3
            continue
        if value[i] in "$%" and value[i + 1] == "{":
            return True
        i += 1
    return False


def interpolations(value: str) -> list[str]:
    """The expressions of every unescaped ``${ ... }`` sequence in a string, outermost only."""
    found = []
    i = 0
    while i < len(value) - 1:
        if value.startswith("$${", i):
            i += 3
            continue
        if not value.startswith("${", i):
            i += 1
            continue
        end = _interpolation_end(value, i)
        if end is None:
            break  # unterminated: not an interpolation Terraform would accept either
        found.append(value[i + 2 : end - 1])
        i = end
    return found


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def _kind(value: object) -> str:
    """'a string', 'an object', … (the JSON kind of a value, with its article)."""
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _is_number_string(value: str) -> bool:
    return bool(re.fullmatch(r"\s*-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*", value))


def check(value: object, typ: Type, path: str = "") -> list[str]:
    """Every way `value` (JSON-decoded) fails to conform to `typ`; [] when it conforms.

    Conversions Terraform performs (number/bool → string, "5" → number, "true" → bool,
    tuple → list/set) are accepted; only clear errors are reported.
    """
    where = path or "<value>"
    if value is None:
        return []  # null is a valid value of every type (the attribute/variable is unset)
    if isinstance(value, str) and is_single_interpolation(value):
        return []  # known only at plan time
    if isinstance(value, str) and is_template(value):
        # A template always yields a string; strings convert to every primitive type.
        if isinstance(typ, Primitive):
            return []
        return [f"{where}: a string template where {typ} is expected"]

    if isinstance(typ, Primitive):
        if typ.name == "any":
            return []
        if typ.name == "string":
            if isinstance(value, (str, bool, int, float)):
                return []
        elif typ.name == "number":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return []
            if isinstance(value, str) and _is_number_string(value):
                return []
        elif typ.name == "bool":
            if isinstance(value, bool):
                return []
            if isinstance(value, str) and value in ("true", "false"):
                return []
        return [f"{where}: {_kind(value)} ({value!r:.60}) where {typ.name} is expected"]

    if isinstance(typ, Collection):
        if typ.kind in ("list", "set"):
            if not isinstance(value, list):
                return [f"{where}: {_kind(value)} where {typ} is expected"]
            errors = []
            for i, item in enumerate(value):
                errors += check(item, typ.element, _join(path, i))
            return errors
        if not isinstance(value, dict):
            return [f"{where}: {_kind(value)} where {typ} is expected"]
        errors = []
        for key, item in value.items():
            errors += check(item, typ.element, _join(path, key))
        return errors

    if isinstance(typ, Tuple):
        if not isinstance(value, list):
            return [f"{where}: {_kind(value)} where {typ} is expected"]
        if len(value) != len(typ.elements):
            return [f"{where}: {len(value)} elements where {typ} has {len(typ.elements)}"]
        errors = []
        for i, (item, element) in enumerate(zip(value, typ.elements, strict=True)):
            errors += check(item, element, _join(path, i))
        return errors

    if isinstance(typ, Object):
        if not isinstance(value, dict):
            return [f"{where}: {_kind(value)} where an object is expected"]
        errors = []
        for key, item in value.items():
            if key not in typ.attributes:
                hint = difflib.get_close_matches(key, list(typ.attributes), n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                errors.append(
                    f"{_join(path, key)}: not an attribute of the object type — Terraform would "
                    f"silently drop it{suffix}"
                )
                continue
            errors += check(item, typ.attributes[key].type, _join(path, key))
        for key, attr in typ.attributes.items():
            if not attr.optional and key not in value:
                errors.append(f"{_join(path, key)}: required attribute ({attr.type}) is missing")
        return errors

    raise TypeError(f"not a type: {typ!r}")
