"""A reference checker for synthesized Terraform JSON that needs no terraform binary.

Every string in Terraform JSON is a template: ``${ expr }`` interpolates an expression and
``%{ if }``/``%{ for }`` are directives (``$${`` and ``%%{`` are literal). A template bug is only
found by Terraform at validate/plan time, e.g. a shell script that says ``${TIMEOUT}`` when it
meant a shell variable: Terraform reads ``TIMEOUT`` as a resource type and rejects the whole
stack. This module parses every template with a small HCL expression parser (tokens, operators,
conditionals, function calls, for-expressions with their own scope, index, splat, nested
strings) and checks, per stack:

* every reference names something the same stack declares: ``TYPE.NAME`` (resource),
  ``data.TYPE.NAME``, ``ephemeral.TYPE.NAME``, ``module.NAME`` and its output (against the
  vendored module interface), ``var.NAME``, ``local.NAME``, plus ``path.*``, ``terraform.*``,
  ``count.index``/``each.*`` where the block has count/for_each, ``self`` where Terraform allows
  it, and iteration variables of for-expressions, ``%{ for }`` and ``dynamic`` blocks;
* every function called is one of Terraform 1.x's built-in functions (``core::`` prefix allowed);
  a provider function ``provider::P::F`` is an error unless P is in the stack's
  ``required_providers`` (or P is Terraform's built-in ``terraform`` provider);
* the bare references in ``depends_on``, ``replace_triggered_by``, ``provider`` and module
  ``providers`` exist too.

It is deliberately not Terraform: it knows no provider schema (attribute names after
``TYPE.NAME`` are not checked) and evaluates nothing. ``tests/terraform_validate.py`` runs the
real ``terraform validate`` where a binary is available; this check runs everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# --- Terraform's built-in functions -----------------------------------------------------------

# `terraform metadata functions -json` of Terraform 1.11 (without the `core::` aliases, which
# are accepted for every name here). tests/test_tf_references.py compares this list with the
# local terraform binary when there is one.
BUILTIN_FUNCTIONS = frozenset(
    {
        "abs",
        "abspath",
        "alltrue",
        "anytrue",
        "base64decode",
        "base64encode",
        "base64gzip",
        "base64sha256",
        "base64sha512",
        "basename",
        "bcrypt",
        "can",
        "ceil",
        "chomp",
        "chunklist",
        "cidrhost",
        "cidrnetmask",
        "cidrsubnet",
        "cidrsubnets",
        "coalesce",
        "coalescelist",
        "compact",
        "concat",
        "contains",
        "csvdecode",
        "dirname",
        "distinct",
        "element",
        "endswith",
        "ephemeralasnull",
        "file",
        "filebase64",
        "filebase64sha256",
        "filebase64sha512",
        "fileexists",
        "filemd5",
        "fileset",
        "filesha1",
        "filesha256",
        "filesha512",
        "flatten",
        "floor",
        "format",
        "formatdate",
        "formatlist",
        "indent",
        "index",
        "issensitive",
        "join",
        "jsondecode",
        "jsonencode",
        "keys",
        "length",
        "log",
        "lookup",
        "lower",
        "matchkeys",
        "max",
        "md5",
        "merge",
        "min",
        "nonsensitive",
        "one",
        "parseint",
        "pathexpand",
        "plantimestamp",
        "pow",
        "range",
        "regex",
        "regexall",
        "replace",
        "reverse",
        "rsadecrypt",
        "sensitive",
        "setintersection",
        "setproduct",
        "setsubtract",
        "setunion",
        "sha1",
        "sha256",
        "sha512",
        "signum",
        "slice",
        "sort",
        "split",
        "startswith",
        "strcontains",
        "strrev",
        "substr",
        "sum",
        "templatefile",
        "templatestring",
        "textdecodebase64",
        "textencodebase64",
        "timeadd",
        "timecmp",
        "timestamp",
        "title",
        "tobool",
        "tolist",
        "tomap",
        "tonumber",
        "toset",
        "tostring",
        "transpose",
        "trim",
        "trimprefix",
        "trimspace",
        "trimsuffix",
        "try",
        "upper",
        "urlencode",
        "uuid",
        "uuidv5",
        "values",
        "yamldecode",
        "yamlencode",
        "zipmap",
    }
)

# Functions of the built-in `terraform.io/builtin/terraform` provider: callable without declaring it.
BUILTIN_PROVIDER_FUNCTIONS = {"terraform": frozenset({"encode_tfvars", "decode_tfvars", "encode_expr"})}

PATH_ATTRIBUTES = frozenset({"module", "root", "cwd"})
TERRAFORM_ATTRIBUTES = frozenset({"workspace", "applying"})


class TemplateSyntaxError(ValueError):
    """A string that Terraform could not parse as a template (message says where)."""


# --- the syntax tree --------------------------------------------------------------------------
#
# Offsets (start, end) are positions in the string that was parsed, so a caller can rewrite a
# reference in place (tests/terraform_validate.py renames converted resources this way).


@dataclass(frozen=True)
class Attr:
    """`.name` (a legacy `.0` index is an Attr whose name is the digits)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class Index:
    """`[key]`."""

    key: Expr
    start: int
    end: int


@dataclass(frozen=True)
class Splat:
    """`[*]` or `.*`: the steps after it apply to every element."""

    start: int
    end: int


Step = Attr | Index | Splat


@dataclass(frozen=True)
class Reference:
    """A traversal from a root name: `aws_s3_bucket.models.arn`, `var.x`, `each.value[0]`."""

    root: str
    steps: tuple[Step, ...]
    start: int
    end: int

    def attr(self, position: int) -> str | None:
        """The name of step `position` if it is an attribute access, else None."""
        step = self.steps[position] if position < len(self.steps) else None
        return step.name if isinstance(step, Attr) else None

    def text(self) -> str:
        out = self.root
        for step in self.steps:
            if isinstance(step, Attr):
                out += f".{step.name}"
            elif isinstance(step, Splat):
                out += "[*]"
            else:
                out += "[…]"
        return out


@dataclass(frozen=True)
class Literal:
    value: object


@dataclass(frozen=True)
class Template:
    """A quoted string in an expression (or a whole JSON string): literal text and sequences."""

    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Call:
    """`name(args)`; `namespace` is () for `name(...)`, ("core",) or ("provider", "aws")."""

    namespace: tuple[str, ...]
    name: str
    args: tuple[Expr, ...]
    start: int
    end: int

    @property
    def full_name(self) -> str:
        return "::".join((*self.namespace, self.name))


@dataclass(frozen=True)
class Postfix:
    """Steps applied to something that is not a name: `f(x)[0]`, `(a).b`, `[1, 2][*]`."""

    base: Expr
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Operation:
    """A unary or binary operator, or the conditional `c ? a : b` (operator "?")."""

    operator: str
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Collection:
    """A tuple `[a, b]` (keys empty) or an object `{k = v}` (keys aligned with values; a bare
    name as key is a literal string, so it is stored as a Literal)."""

    kind: str  # "tuple" | "object"
    keys: tuple[Expr, ...]
    values: tuple[Expr, ...]


@dataclass(frozen=True)
class ForExpr:
    """`[for k, v in coll : value if cond]` or `{for k, v in coll : key => value... if cond}`."""

    names: tuple[str, ...]
    collection: Expr
    key: Expr | None
    value: Expr
    condition: Expr | None


Expr = Reference | Literal | Template | Call | Postfix | Operation | Collection | ForExpr


@dataclass(frozen=True)
class Interpolation:
    expr: Expr
    source: str  # the whole `${...}` as written
    start: int
    end: int


@dataclass(frozen=True)
class IfDirective:
    condition: Expr
    then: tuple[Part, ...]
    otherwise: tuple[Part, ...]
    source: str


@dataclass(frozen=True)
class ForDirective:
    names: tuple[str, ...]
    collection: Expr
    body: tuple[Part, ...]
    source: str


Part = str | Interpolation | IfDirective | ForDirective


# --- the scanner: templates and expression tokens ---------------------------------------------

_IDENT = re.compile(r"[^\W\d][\w-]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_OPERATORS = ("...", "==", "!=", "<=", ">=", "&&", "||", "=>", "::", *"+-*/%<>!?:.,()[]{}=~")
_STRING_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_OPENERS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class Token:
    kind: str  # "ident" | "number" | "string" | "op"
    text: str
    start: int
    end: int
    template: Template | None = None  # for "string"


@dataclass
class _Marker:
    """A directive keyword found while scanning a template, before nesting (`%{ else }`…)."""

    keyword: str  # if | else | endif | for | endfor
    tokens: list[Token]
    source: str
    start: int


class _Scanner:
    """Scans one string: its literal text, `${...}`/`%{...}` sequences and expression tokens."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> TemplateSyntaxError:
        at = self.pos if at is None else at
        snippet = self.text[max(0, at - 25) : at + 25]
        return TemplateSyntaxError(f"{message} at offset {at}: …{snippet}…")

    # templates
    def template(self, quoted: bool) -> Template:
        """Scan a template up to the end of the text or, when `quoted`, the closing quote."""
        flat: list[str | Interpolation | _Marker] = []
        literal: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                if quoted:
                    raise self.error("unterminated string in an expression")
                break
            ch = text[self.pos]
            if quoted and ch == '"':
                self.pos += 1
                break
            if quoted and ch == "\\":
                literal.append(self._escape())
                continue
            if text.startswith(("$${", "%%{"), self.pos):
                literal.append(text[self.pos + 1 : self.pos + 3])
                self.pos += 3
                continue
            if text.startswith(("${", "%{"), self.pos):
                if literal:
                    flat.append("".join(literal))
                    literal = []
                flat.append(self._sequence())
                continue
            if quoted and ch == "\n":
                raise self.error("newline in a quoted string inside an expression")
            literal.append(ch)
            self.pos += 1
        if literal:
            flat.append("".join(literal))
        return Template(_nest(flat, self))

    def _escape(self) -> str:
        text, pos = self.text, self.pos
        nxt = text[pos + 1 : pos + 2]
        if nxt in _STRING_ESCAPES:
            self.pos += 2
            return _STRING_ESCAPES[nxt]
        for letter, width in (("u", 4), ("U", 8)):
            digits = text[pos + 2 : pos + 2 + width]
            if nxt == letter and re.fullmatch(f"[0-9A-Fa-f]{{{width}}}", digits):
                self.pos += 2 + width
                return chr(int(digits, 16))
        raise self.error("invalid escape sequence in a quoted string")

    def _sequence(self) -> Interpolation | _Marker:
        """`${ expr }` or `%{ directive }`, starting at its `$`/`%`."""
        start = self.pos
        is_directive = self.text[start] == "%"
        self.pos += 2
        tokens = self._tokens_until_close(start)
        if tokens and tokens[0].text == "~":  # strip marker after the opening brace
            tokens = tokens[1:]
        if tokens and tokens[-1].text == "~":  # … and before the closing one
            tokens = tokens[:-1]
        source = self.text[start : self.pos]
        if not tokens:
            raise self.error(f"empty template sequence {source!r}", start)
        if not is_directive:
            return Interpolation(_Parser(tokens, self, source).whole(), source, start, self.pos)
        keyword = tokens[0]
        if keyword.kind != "ident" or keyword.text not in ("if", "else", "endif", "for", "endfor"):
            raise self.error(f"unknown template directive {source!r} (a literal %{{ is written %%{{)", start)
        return _Marker(keyword.text, tokens[1:], source, start)

    def _tokens_until_close(self, start: int) -> list[Token]:
        """Lex an expression up to the `}` that closes the sequence opened at `start`."""
        tokens: list[Token] = []
        closers: list[str] = []
        while True:
            token = self._token()
            if token is None:
                raise self.error("unterminated template sequence (no closing '}')", start)
            if token.kind == "op" and token.text in _OPENERS:
                closers.append(_OPENERS[token.text])
            elif token.kind == "op" and token.text in (")", "]", "}"):
                if not closers:
                    if token.text == "}":
                        return tokens
                    raise self.error(f"unbalanced {token.text!r}", token.start)
                expected = closers.pop()
                if token.text != expected:
                    raise self.error(f"expected {expected!r}, found {token.text!r}", token.start)
            tokens.append(token)

    def _token(self) -> Token | None:
        self._skip_space()
        text, start = self.text, self.pos
        if start >= len(text):
            return None
        ch = text[start]
        if ch == '"':
            self.pos += 1
            template = self.template(quoted=True)
            return Token("string", text[start : self.pos], start, self.pos, template)
        if text.startswith("<<", start):
            raise self.error("heredoc templates are not supported in JSON strings")
        for kind, pattern in (("number", _NUMBER), ("ident", _IDENT)):
            m = pattern.match(text, start)
            if m:
                self.pos = m.end()
                return Token(kind, m.group(), start, self.pos)
        for op in _OPERATORS:
            if text.startswith(op, start):
                self.pos += len(op)
                return Token("op", op, start, self.pos)
        raise self.error(f"unexpected character {ch!r} in an expression")

    def _skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            if text[self.pos] in " \t\r\n":
                self.pos += 1
            elif text[self.pos] == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated comment")
                self.pos = end + 2
            else:
                return


def _nest(flat: list[str | Interpolation | _Marker], scanner: _Scanner) -> tuple[Part, ...]:
    """Turn the flat sequence of literals, interpolations and directive markers into a tree,
    checking that every `%{ if }`/`%{ for }` is closed by its own `%{ endif }`/`%{ endfor }`."""
    items = iter(flat)

    def block(closers: tuple[str, ...], opener: _Marker | None) -> tuple[list[Part], _Marker | None]:
        parts: list[Part] = []
        for item in items:
            if not isinstance(item, _Marker):
                parts.append(item)
            elif item.keyword in closers:
                return parts, item
            elif item.keyword == "if":
                parts.append(_if(item))
            elif item.keyword == "for":
                parts.append(_for(item))
            else:
                raise scanner.error(f"{item.source!r} without a matching opening directive", item.start)
        if opener is not None:
            raise scanner.error(f"{opener.source!r} is never closed", opener.start)
        return parts, None

    def _if(marker: _Marker) -> IfDirective:
        condition = _Parser(marker.tokens, scanner, marker.source).whole()
        then, closer = block(("else", "endif"), marker)
        otherwise: list[Part] = []
        if closer is not None and closer.keyword == "else":
            _no_arguments(closer, scanner)
            otherwise, closer = block(("endif",), marker)
        _no_arguments(closer, scanner)
        return IfDirective(condition, tuple(then), tuple(otherwise), marker.source)

    def _for(marker: _Marker) -> ForDirective:
        parser = _Parser(marker.tokens, scanner, marker.source)
        names, collection = parser.for_header()
        parser.end()
        body, closer = block(("endfor",), marker)
        _no_arguments(closer, scanner)
        return ForDirective(names, collection, tuple(body), marker.source)

    parts, _ = block((), None)
    return tuple(parts)


def _no_arguments(marker: _Marker | None, scanner: _Scanner) -> None:
    if marker is not None and marker.tokens:
        raise scanner.error(f"{marker.source!r} takes no expression", marker.start)


# --- the expression parser --------------------------------------------------------------------

_BINARY_LEVELS = (("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/", "%"))
_KEYWORD_LITERALS = {"true": True, "false": False, "null": None}


class _Parser:
    """Recursive descent over the tokens of one sequence (HCL native expression syntax)."""

    def __init__(self, tokens: list[Token], scanner: _Scanner, source: str):
        self.tokens = tokens
        self.i = 0
        self.scanner = scanner
        self.source = source

    def error(self, message: str) -> TemplateSyntaxError:
        at = self.tokens[self.i].start if self.i < len(self.tokens) else None
        if at is None:
            return TemplateSyntaxError(f"{message} at the end of {self.source!r}")
        return self.scanner.error(f"{message} in {self.source!r}", at)

    # token helpers
    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, text: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token is not None and token.kind in ("op", "ident") and token.text == text

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        token = self.peek()
        if token is None or (text is not None and token.text != text) or (kind is not None and token.kind != kind):
            raise self.error(f"expected {text or kind}")
        self.i += 1
        return token

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise self.error(f"unexpected {token.text!r}")

    def whole(self) -> Expr:
        expr = self.expression()
        self.end()
        return expr

    # expressions
    def expression(self) -> Expr:
        condition = self.binary(0)
        if not self.accept("?"):
            return condition
        then = self.expression()
        self.take(":")
        otherwise = self.expression()
        return Operation("?", (condition, then, otherwise))

    def binary(self, level: int) -> Expr:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (token := self.peek()) is not None and token.kind == "op" and token.text in _BINARY_LEVELS[level]:
            self.i += 1
            left = Operation(token.text, (left, self.binary(level + 1)))
        return left

    def unary(self) -> Expr:
        if self.at("!") or self.at("-"):
            operator = self.take().text
            return Operation(operator, (self.unary(),))
        return self.postfix(self.primary())

    def postfix(self, base: Expr) -> Expr:
        steps: list[Step] = []
        while True:
            token = self.peek()
            if token is None or token.kind != "op" or token.text not in (".", "["):
                break
            self.i += 1
            if token.text == ".":
                if self.at("*"):
                    steps.append(Splat(token.start, self.take().end))
                    continue
                name = self.peek()
                if name is None or name.kind not in ("ident", "number"):
                    raise self.error("expected an attribute name after '.'")
                self.i += 1
                steps.append(Attr(name.text, token.start, name.end))
            elif self.at("*") and self.at("]", 1):
                self.i += 1
                steps.append(Splat(token.start, self.take("]").end))
            else:
                key = self.expression()
                steps.append(Index(key, token.start, self.take("]").end))
        if not steps:
            return base
        if isinstance(base, Reference) and not base.steps:
            return Reference(base.root, tuple(steps), base.start, steps[-1].end)
        return Postfix(base, tuple(steps))

    def primary(self) -> Expr:
        token = self.peek()
        if token is None:
            raise self.error("expected an expression")
        if token.kind == "number":
            self.i += 1
            return Literal(float(token.text) if any(c in token.text for c in ".eE") else int(token.text))
        if token.kind == "string" and token.template is not None:
            self.i += 1
            return token.template
        if token.kind == "ident":
            return self.name()
        if token.text == "(":
            self.i += 1
            inner = self.expression()
            self.take(")")
            return inner
        if token.text == "[":
            return self.tuple_cons()
        if token.text == "{":
            return self.object_cons()
        raise self.error(f"unexpected {token.text!r}")

    def name(self) -> Expr:
        first = self.take(kind="ident")
        if first.text in _KEYWORD_LITERALS and not self.at("::") and not self.at("("):
            return Literal(_KEYWORD_LITERALS[first.text])
        namespace = [first.text]
        while self.at("::"):
            self.i += 1
            namespace.append(self.take(kind="ident").text)
        if self.at("("):
            return self.call(tuple(namespace[:-1]), namespace[-1], first.start)
        if len(namespace) > 1:
            raise self.error(f"{'::'.join(namespace)!r} is not followed by a function call")
        return Reference(first.text, (), first.start, first.end)

    def call(self, namespace: tuple[str, ...], name: str, start: int) -> Call:
        self.take("(")
        args: list[Expr] = []
        while not self.at(")"):
            args.append(self.expression())
            if self.accept("..."):
                break
            if not self.accept(","):
                break
        end = self.take(")").end
        return Call(namespace, name, tuple(args), start, end)

    def starts_for(self) -> bool:
        """`[for x in …` / `{for k, v in …`: the keyword `for` followed by a name."""
        following = self.peek(1)
        return self.at("for") and following is not None and following.kind == "ident"

    def tuple_cons(self) -> Expr:
        self.take("[")
        if self.starts_for():
            return self.for_expr("]")
        values: list[Expr] = []
        while not self.at("]"):
            values.append(self.expression())
            if not self.accept(","):
                break
        self.take("]")
        return Collection("tuple", (), tuple(values))

    def object_cons(self) -> Expr:
        self.take("{")
        if self.starts_for():
            return self.for_expr("}")
        keys: list[Expr] = []
        values: list[Expr] = []
        while not self.at("}"):
            key = self.expression()
            if isinstance(key, Reference) and not key.steps:
                key = Literal(key.root)  # `{ name = 1 }`: a bare name is the literal key "name"
            if not (self.accept("=") or self.accept(":")):
                raise self.error("expected '=' or ':' after an object key")
            keys.append(key)
            values.append(self.expression())
            self.accept(",")  # commas or newlines separate items
        self.take("}")
        return Collection("object", tuple(keys), tuple(values))

    def for_header(self) -> tuple[tuple[str, ...], Expr]:
        """`for k, v in coll` (after the `for` keyword has been consumed by the caller)."""
        names = [self.take(kind="ident").text]
        if self.accept(","):
            names.append(self.take(kind="ident").text)
        self.take("in")
        return tuple(names), self.expression()

    def for_expr(self, closer: str) -> ForExpr:
        self.take("for")
        names, collection = self.for_header()
        self.take(":")
        key = None
        value = self.expression()
        if closer == "}":
            self.take("=>")
            key, value = value, self.expression()
            self.accept("...")
        condition = self.expression() if self.accept("if") else None
        self.take(closer)
        return ForExpr(names, collection, key, value, condition)


# --- public parsing API -----------------------------------------------------------------------


def parse_template(text: str) -> Template:
    """Parse a JSON string value as Terraform does (a template). Raises TemplateSyntaxError."""
    scanner = _Scanner(text)
    return scanner.template(quoted=False)


def parse_expression(text: str) -> Expr:
    """Parse a bare expression (a `depends_on` entry, a `provider` value)."""
    scanner = _Scanner(text + "}")  # the scanner stops at the closing brace of a sequence
    tokens = scanner._tokens_until_close(0)
    if scanner.pos != len(scanner.text):
        raise scanner.error("unexpected '}'")
    if not tokens:
        raise TemplateSyntaxError(f"empty expression {text!r}")
    return _Parser(tokens, scanner, text).whole()


def has_sequences(text: str) -> bool:
    """May this string hold a template sequence? (Plain text needs no parsing.)"""
    return "${" in text or "%{" in text


# --- walking the tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One reference or function call, with the iteration names in scope where it occurs."""

    node: Reference | Call
    scope: frozenset[str]


def uses(node: Expr | Template | Part, scope: frozenset[str] = frozenset()) -> Iterator[Use]:
    """Every reference and function call in a tree, depth first, with its scope."""
    if isinstance(node, str | Literal):
        return
    if isinstance(node, Template):
        for part in node.parts:
            yield from uses(part, scope)
    elif isinstance(node, Interpolation):
        yield from uses(node.expr, scope)
    elif isinstance(node, IfDirective):
        yield from uses(node.condition, scope)
        for part in (*node.then, *node.otherwise):
            yield from uses(part, scope)
    elif isinstance(node, ForDirective):
        yield from uses(node.collection, scope)
        inner = scope | set(node.names)
        for part in node.body:
            yield from uses(part, inner)
    elif isinstance(node, Reference):
        yield Use(node, scope)
        yield from _step_uses(node.steps, scope)
    elif isinstance(node, Call):
        yield Use(node, scope)
        for arg in node.args:
            yield from uses(arg, scope)
    elif isinstance(node, Postfix):
        yield from uses(node.base, scope)
        yield from _step_uses(node.steps, scope)
    elif isinstance(node, Operation):
        for operand in node.operands:
            yield from uses(operand, scope)
    elif isinstance(node, Collection):
        for item in (*node.keys, *node.values):
            yield from uses(item, scope)
    elif isinstance(node, ForExpr):
        yield from uses(node.collection, scope)
        inner = scope | set(node.names)
        for child in (node.key, node.value, node.condition):
            if child is not None:
                yield from uses(child, inner)
    else:  # pragma: no cover - the tree has no other node types
        raise TypeError(f"not a syntax tree node: {node!r}")


def _step_uses(steps: tuple[Step, ...], scope: frozenset[str]) -> Iterator[Use]:
    for step in steps:
        if isinstance(step, Index):
            yield from uses(step.key, scope)


# --- what a stack declares --------------------------------------------------------------------


class ModuleInterface(Protocol):
    """What the checker needs of a vendored module interface (tests/terraform_validate.py
    loads them): the names of its outputs."""

    @property
    def outputs(self) -> Container[str]: ...


@dataclass
class Declarations:
    """The names one stack's JSON declares, and the interfaces of the modules it may call."""

    resources: set[tuple[str, str]] = field(default_factory=set)
    data: set[tuple[str, str]] = field(default_factory=set)
    ephemeral: set[tuple[str, str]] = field(default_factory=set)
    modules: dict[str, dict] = field(default_factory=dict)
    variables: set[str] = field(default_factory=set)
    locals: set[str] = field(default_factory=set)
    required_providers: set[str] = field(default_factory=set)
    provider_configs: set[str] = field(default_factory=set)  # "aws", "aws.us_east_1"
    interfaces: Mapping[tuple[str, str], ModuleInterface] = field(default_factory=dict)

    @classmethod
    def of(cls, stack: dict, interfaces: Mapping[tuple[str, str], ModuleInterface]) -> Declarations:
        decl = cls(interfaces=interfaces)
        for section, target in (("resource", decl.resources), ("data", decl.data), ("ephemeral", decl.ephemeral)):
            for rtype, blocks in stack.get(section, {}).items():
                target.update((rtype, name) for name in blocks)
        decl.modules = dict(stack.get("module", {}))
        decl.variables = set(stack.get("variable", {}))
        for block in _as_list(stack.get("locals", {})):
            decl.locals.update(block)
        decl.required_providers = set(stack.get("terraform", {}).get("required_providers", {}))
        for name, configs in stack.get("provider", {}).items():
            for config in _as_list(configs):
                alias = config.get("alias")
                decl.provider_configs.add(f"{name}.{alias}" if alias else name)
        return decl


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


# --- checking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the block around a string allows: count/each/self and iteration names in scope."""

    has_count: bool = False
    has_each: bool = False
    self_allowed: bool = False
    scope: frozenset[str] = frozenset()

    def with_names(self, *names: str) -> Context:
        return Context(self.has_count, self.has_each, self.self_allowed, self.scope | set(names))


@dataclass(frozen=True)
class Problem:
    stack: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.stack}: {self.path}: {self.message}"


def check_reference(ref: Reference, decl: Declarations, ctx: Context, scope: frozenset[str]) -> str | None:
    """Why a reference is invalid, or None when it names something declared."""
    root, attr = ref.root, ref.attr
    if root in ctx.scope or root in scope:
        return None
    if root == "var":
        return None if attr(0) in decl.variables else _undeclared("input variable", f"var.{attr(0)}", ref)
    if root == "local":
        return None if attr(0) in decl.locals else _undeclared("local value", f"local.{attr(0)}", ref)
    if root == "module":
        return _check_module(ref, decl)
    if root in ("data", "ephemeral"):
        declared = decl.data if root == "data" else decl.ephemeral
        if attr(0) is None or attr(1) is None:
            return f"{ref.text()}: a {root} reference needs {root}.TYPE.NAME"
        if (attr(0), attr(1)) not in declared:
            return _undeclared(f"{root} source", f"{root}.{attr(0)}.{attr(1)}", ref)
        return None
    if root in ("path", "terraform"):
        allowed = PATH_ATTRIBUTES if root == "path" else TERRAFORM_ATTRIBUTES
        if attr(0) not in allowed:
            return f"{ref.text()}: {root}.* has only {', '.join(sorted(allowed))}"
        return None
    if root == "count":
        if attr(0) != "index":
            return f"{ref.text()}: count has only count.index"
        return None if ctx.has_count else f"{ref.text()}: used in a block without count"
    if root == "each":
        if attr(0) not in ("key", "value"):
            return f"{ref.text()}: each has only each.key and each.value"
        return None if ctx.has_each else f"{ref.text()}: used in a block without for_each"
    if root == "self":
        if ctx.self_allowed:
            return None
        return "self: only valid in provisioner, connection and postcondition blocks"
    # Any other root is a managed resource type, as Terraform reads it.
    if attr(0) is None:
        return (
            f"{ref.text()} is not a valid reference: Terraform reads a bare name as a resource type "
            f"and needs TYPE.NAME (if a shell or environment variable is meant, write $${{{root}}})"
        )
    if (root, attr(0)) not in decl.resources:
        return _undeclared("resource", f"{root}.{attr(0)}", ref)
    return None


def _undeclared(kind: str, name: str, ref: Reference) -> str:
    return f"{ref.text()}: no {kind} {name} is declared in this stack"


def _check_module(ref: Reference, decl: Declarations) -> str | None:
    name = ref.attr(0)
    if name is None:
        return f"{ref.text()}: a module reference needs module.NAME"
    if name not in decl.modules:
        return _undeclared("module", f"module.{name}", ref)
    # module.NAME[KEY].OUTPUT for modules with count/for_each: skip index and splat steps
    output = next((s.name for s in ref.steps[1:] if isinstance(s, Attr)), None)
    if output is None:
        return None
    block = decl.modules[name]
    key = (str(block.get("source")), str(block.get("version")))
    interface = decl.interfaces.get(key)
    if interface is None:
        return f"{ref.text()}: module {name} ({key[0]} {key[1]}) has no vendored interface to check output {output!r}"
    if output not in interface.outputs:
        return f"{ref.text()}: {key[0]} {key[1]} has no output {output!r}"
    return None


def check_call(call: Call, decl: Declarations) -> str | None:
    """Why a function call is invalid, or None when the function exists."""
    namespace, name = call.namespace, call.name
    if namespace in ((), ("core",)):
        return None if name in BUILTIN_FUNCTIONS else f"{call.full_name}(): Terraform has no built-in function {name!r}"
    if len(namespace) == 2 and namespace[0] == "provider":
        provider = namespace[1]
        if name in BUILTIN_PROVIDER_FUNCTIONS.get(provider, ()):
            return None
        if provider in decl.required_providers:
            return None  # the provider's schema (not available here) lists its functions
        return f"{call.full_name}(): provider {provider!r} is not in this stack's required_providers"
    return f"{call.full_name}(): not a valid function name"


def check_template_text(text: str, decl: Declarations, ctx: Context) -> list[str]:
    """Every problem in one JSON string read as a template."""
    if not has_sequences(text):
        return []
    try:
        tree = parse_template(text)
    except TemplateSyntaxError as e:
        return [f"not a valid Terraform template: {e}"]
    return _check_tree(tree, decl, ctx)


def check_expression_text(text: str, decl: Declarations, ctx: Context) -> list[str]:
    """Every problem in a string that Terraform reads as a bare expression (`depends_on`)."""
    try:
        tree = parse_expression(text)
    except TemplateSyntaxError as e:
        return [f"not a valid Terraform expression: {e}"]
    return _check_tree(tree, decl, ctx)


def _check_tree(tree: Expr | Template, decl: Declarations, ctx: Context) -> list[str]:
    problems = []
    for use in uses(tree):
        if isinstance(use.node, Reference):
            problem = check_reference(use.node, decl, ctx, use.scope)
        else:
            problem = check_call(use.node, decl)
        if problem:
            problems.append(problem)
    return problems


# --- walking a stack --------------------------------------------------------------------------

_BLOCK_SECTIONS = ("resource", "data", "ephemeral")


def json_path(segments: tuple) -> str:
    """`resource.kubernetes_manifest.x.manifest.spec.containers[0].command[2]`."""
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", seg):
            out += f".{seg}" if out else seg
        else:
            out += f"[{json.dumps(seg)}]"
    return out


class StackChecker:
    """Walks one stack's JSON and checks every template and bare reference in it.

    Which strings are templates follows Terraform's JSON syntax: argument values (and object
    keys inside them) are templates; `depends_on`, `replace_triggered_by`, `provider` and module
    `providers` hold bare references; `ignore_changes`, variable types and defaults, module
    `source`/`version`, the `terraform` block and `//` comments are not expressions at all.
    """

    def __init__(self, stack_name: str, stack: dict, interfaces: Mapping[tuple[str, str], ModuleInterface]):
        self.stack_name = stack_name
        self.stack = stack
        self.decl = Declarations.of(stack, interfaces)
        self.problems: list[Problem] = []

    def run(self) -> list[Problem]:
        for section, body in self.stack.items():
            if section in ("//", "terraform"):
                continue
            if section == "variable":
                self._variables(body)
            elif section in _BLOCK_SECTIONS:
                for rtype, blocks in body.items():
                    for name, block in blocks.items():
                        self._block(block, (section, rtype, name), "resource")
            elif section == "module":
                for name, block in body.items():
                    self._block(block, (section, name), "module")
            elif section == "provider":
                for name, configs in body.items():
                    for i, config in enumerate(_as_list(configs)):
                        where = (section, name, i) if isinstance(configs, list) else (section, name)
                        self._arguments({k: v for k, v in config.items() if k != "alias"}, where, Context())
            elif section == "output":
                for name, block in body.items():
                    self._block(block, (section, name), "output")
            else:  # locals, check, import, …: templates with no block context
                self._value(body, (section,), Context())
        return self.problems

    def _variables(self, body: dict) -> None:
        """A variable's type and default are not expressions; its validation rules are."""
        for name, block in body.items():
            if "validation" in block:
                self._value(block["validation"], ("variable", name, "validation"), Context())

    def _block(self, block: dict, path: tuple, kind: str) -> None:
        """A resource or data source (kind "resource"), module call or output: meta-arguments,
        then arguments."""
        ctx = Context(has_count="count" in block, has_each="for_each" in block)
        arguments = {}
        for key, value in block.items():
            where = (*path, key)
            if key == "//" or (kind == "module" and key in ("source", "version")):
                continue
            if key == "depends_on":
                self._references(value, where, ctx)
            elif key == "provider":
                self._provider_ref(value, where)
            elif key == "providers" and kind == "module":
                for child, ref in value.items():
                    self._provider_ref(ref, (*where, child))
            elif key == "lifecycle":
                self._lifecycle(value, where, ctx)
            elif key in ("provisioner", "connection"):
                self._value(value, where, Context(ctx.has_count, ctx.has_each, self_allowed=True), in_block=True)
            else:
                arguments[key] = value
        # Only resources and data sources have nested (and so `dynamic`) blocks.
        self._arguments(arguments, path, ctx, in_block=kind == "resource")

    def _arguments(self, arguments: dict, path: tuple, ctx: Context, in_block: bool = True) -> None:
        for key, value in arguments.items():
            if key == "dynamic" and in_block and _is_dynamic(value):
                self._dynamic(value, (*path, key), ctx)
            elif key != "//":
                self._value(value, (*path, key), ctx, in_block)

    def _lifecycle(self, value: object, path: tuple, ctx: Context) -> None:
        for i, lifecycle in enumerate(_as_list(value)):
            where = path if isinstance(value, dict) else (*path, i)
            for key, item in lifecycle.items():
                if key == "ignore_changes":
                    continue  # attribute names, not expressions
                if key == "replace_triggered_by":
                    self._references(item, (*where, key), ctx)
                elif key == "postcondition":
                    self._value(item, (*where, key), Context(ctx.has_count, ctx.has_each, True, ctx.scope))
                else:
                    self._value(item, (*where, key), ctx)

    def _references(self, value: object, path: tuple, ctx: Context) -> None:
        for i, item in enumerate(_as_list(value)):
            where = (*path, i) if isinstance(value, list) else path
            if not isinstance(item, str):
                self._add(where, f"a reference must be a string, not {item!r}")
                continue
            for problem in check_expression_text(item, self.decl, ctx):
                self._add(where, problem)

    def _provider_ref(self, value: object, path: tuple) -> None:
        if not isinstance(value, str):
            self._add(path, f"a provider reference must be a string, not {value!r}")
        elif value not in self.decl.provider_configs:
            known = ", ".join(sorted(self.decl.provider_configs)) or "none"
            self._add(path, f"provider {value!r} is not configured in this stack (configured: {known})")

    def _value(self, value: object, path: tuple, ctx: Context, in_block: bool = False) -> None:
        """Check every string under `value` as a template; `in_block` says nested blocks (and so
        `dynamic` blocks) may occur under it."""
        if isinstance(value, str):
            for problem in check_template_text(value, self.decl, ctx):
                self._add(path, problem)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._value(item, (*path, i), ctx, in_block)
        elif isinstance(value, dict):
            for key in value:
                for problem in check_template_text(key, self.decl, ctx):
                    self._add((*path, key), f"in the key: {problem}")
            if in_block:
                self._arguments(value, path, ctx)
            else:
                for key, item in value.items():
                    self._value(item, (*path, key), ctx)

    def _dynamic(self, blocks: dict, path: tuple, ctx: Context) -> None:
        """`dynamic "LABEL" { for_each, iterator, content }`: the iterator is in scope in content."""
        for label, spec in blocks.items():
            for i, block in enumerate(_as_list(spec)):
                where = (*path, label) if isinstance(spec, dict) else (*path, label, i)
                iterator = block.get("iterator", label)
                for key, item in block.items():
                    if key == "content":
                        self._value(item, (*where, key), ctx.with_names(iterator), in_block=True)
                    elif key != "iterator":
                        self._value(item, (*where, key), ctx)

    def _add(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.stack_name, json_path(path), message))


def _is_dynamic(value: object) -> bool:
    """Is this the value of a `dynamic` key of a block (labels to bodies with `content`)?"""
    return isinstance(value, dict) and all(
        all(isinstance(b, dict) and "content" in b for b in _as_list(spec)) for spec in value.values()
    )


def check_stack(stack_name: str, stack: dict, interfaces: Mapping[tuple[str, str], ModuleInterface]) -> list[Problem]:
    """Every template or reference problem in one synthesized stack."""
    return StackChecker(stack_name, stack, interfaces).run()
