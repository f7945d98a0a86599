"""Validation of user filter expressions against the declared fields.

A user filter is a Milvus boolean expression (`Smiling == true and Eyeglasses == false`,
`identity in ["2880", "4262"]`, `not Wearing_Hat`). It is parsed here into a small AST; only
declared fields may appear, each compared with values of its type. The AST is then emitted as a
template whose values are placeholders (`identity in {p0}`) plus a parameter dict: a Milvus server
gets both (expression templating); Milvus Lite, which has no templating, gets the template with
each parameter encoded by `encode_literal`, one value at a time. User text never reaches Milvus
as-is, so a value like `") or (1 == 1` stays a string value.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lookalike.schemas import ATTRIBUTES, FACE_FIELDS, VECTOR_FIELD
from lookalike.schemas.errors import UsageError


class FilterError(UsageError):
    """A user filter that cannot be used; the message is one line naming the problem (exit 2, HTTP 422).

    `field` is the field the problem is about, when there is one, so a caller can point at it
    (the web page marks that control); `unknown` says the name is no filterable field, and each
    door adds where its users find the list (the command, the API route)."""

    http_status = 422
    api_code = "invalid_filter"

    def __init__(self, message: str, *, field: Optional[str] = None, unknown: bool = False):
        super().__init__(message)
        self.field = field
        self.unknown = unknown


FILTERABLE: Dict[str, str] = {f.name: f.kind for f in FACE_FIELDS if f.kind != "FLOAT_VECTOR"}
_NUMERIC = {"INT32", "INT64", "FLOAT"}
# What a literal may hold for a field of each kind. Milvus Lite reads `inf` (what 1e999 renders
# as) as a field name, cannot convert an integer past 64 bits, and refuses an integer a FLOAT
# field cannot hold exactly (past 2**24); a value outside an integer field's own range can never
# match, so it is a mistake worth naming rather than an empty result.
_INT_RANGE = {"INT32": (-2 ** 31, 2 ** 31 - 1), "INT64": (-2 ** 63, 2 ** 63 - 1), "FLOAT": (-2 ** 24, 2 ** 24)}
_INT_WORDS = {"INT32": "a 32-bit integer", "INT64": "a 64-bit integer",
              "FLOAT": "the whole numbers a 32-bit float holds exactly (write it with a decimal point)"}

# Bounds on what a user may send. The parser recurses once per parenthesis or `not`, and so do
# the Milvus parsers that read the rendered expression (Milvus Lite's fails at ~200 levels). The
# depth counted is the filter's own (`not` and each change between `and` and `or`), which is also
# the parenthesis depth of the rendered expression: far above any hand-written filter, far below
# both recursion limits. Redundant parentheses are bounded while parsing, at twice that. The length
# bounds the work of tokenising and of Milvus' own parse (a 3,000-term `or` chain is ~60 KB).
MAX_FILTER_DEPTH = 32
MAX_FILTER_CHARS = 65536

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>|&&|\|\||!|\(|\)|\[|\]|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "in": "in", "like": "like",
             "true": "true", "false": "false"}


def _tokenize(text: str) -> List[Tuple[str, str, int]]:
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter too long ({len(text)} characters, at most {MAX_FILTER_CHARS})")
    tokens: List[Tuple[str, str, int]] = []
    pos, text = 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"filter syntax error at column {pos + 1}: unexpected '{_show(text[pos:pos + 12])}'")
        kind = m.lastgroup or ""
        value, col = m.group(kind), m.start(kind) + 1
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        elif kind == "op" and value in ("&&", "||", "!"):
            kind, value = "kw", {"&&": "and", "||": "or", "!": "not"}[value]
        tokens.append((kind, value, col))
        pos = m.end()
    return tokens


_ENCODE = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}


def _unquote(s: str) -> str:
    """The value of a quoted literal: JSON's escapes (what encode_literal writes), and any other
    escaped character stands for itself (\\' inside single quotes)."""

    def one(m: "re.Match[str]") -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        return _ESCAPES.get(m.group(2), m.group(2))

    return re.sub(r"\\(?:u([0-9a-fA-F]{4})|(.))", one, s[1:-1], flags=re.S)


# AST -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cmp:
    field: str
    op: str  # == != < <= > >= in like
    value: Any


@dataclass(frozen=True)
class BoolField:
    field: str


@dataclass(frozen=True)
class Not:
    arg: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    args: Tuple["Node", ...]


Node = Union[Cmp, BoolField, Not, BoolOp]


def _unknown_field(name: str) -> FilterError:
    close: List[str] = []
    if len(name) <= 64:  # no field name is longer; difflib's cost grows with the name's length
        close = difflib.get_close_matches(name, list(FILTERABLE), n=4, cutoff=0.5)
        if not close:
            lowered = {f.lower(): f for f in FILTERABLE}
            close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = _show(str(name))  # one line whatever the name holds (a `where` value)
    return FilterError(f"unknown field '{shown}' in filter{hint} (fields: identity, source_path, confidence, box_w, ..., "
                       f"the 40 CelebA attributes)", field=shown, unknown=True)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def nest(self, col: int) -> None:
        self.depth += 1
        if self.depth > 2 * MAX_FILTER_DEPTH:
            raise FilterError(f"filter nested too deeply at column {col} (more than {2 * MAX_FILTER_DEPTH} "
                              f"levels of parentheses and 'not')")

    def peek(self) -> Optional[Tuple[str, str, int]]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def peek_is(self, kind: str, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[:2] == (kind, value)

    def peek_value(self) -> Optional[str]:
        tok = self.peek()
        return None if tok is None else tok[1]

    def take(self, kind: Optional[str] = None, value: Optional[str] = None) -> Tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            want = value or kind or "more input"
            raise FilterError(f"filter syntax error: expression ends early, expected {want}")
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            wanted = repr(value) if value else kind
            raise FilterError(f"filter syntax error at column {tok[2]}: expected {wanted}, found '{_show(tok[1])}'")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.toks:
            raise FilterError("empty filter expression")
        node = self.or_expr()
        tok = self.peek()
        if tok is not None:
            raise FilterError(f"filter syntax error at column {tok[2]}: unexpected '{_show(tok[1])}'")
        return node

    def or_expr(self) -> Node:
        args = [self.and_expr()]
        while self.peek_is("kw", "or"):
            self.i += 1
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_expr(self) -> Node:
        args = [self.unary()]
        while self.peek_is("kw", "and"):
            self.i += 1
            args.append(self.unary())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def unary(self) -> Node:
        tok = self.peek()
        if tok and tok[:2] == ("kw", "not"):
            self.i += 1
            self.nest(tok[2])
            node: Node = Not(self.unary())
            self.depth -= 1
            return node
        if tok and tok[:2] == ("op", "("):
            self.i += 1
            after_not = self.i >= 2 and self.toks[self.i - 2][:2] == ("kw", "not")  # `not (x)`: one level
            if not after_not:
                self.nest(tok[2])
            node = self.or_expr()
            self.take("op", ")")
            self.depth -= 0 if after_not else 1
            return node
        return self.comparison()

    def literal(self, field: str) -> Any:
        kind, value, col = self.take()
        if kind == "num":
            if len(value) > 64:  # int() of thousands of digits is slow, then refused anyway
                raise FilterError(f"filter value out of range at column {col}: {_show(value)} is too long a number")
            v: Any = float(value) if any(c in value for c in ".eE") else int(value)
        elif kind == "str":
            v = _unquote(value)
        elif kind == "kw" and value in ("true", "false"):
            v = value == "true"
        else:
            raise FilterError(f"filter syntax error at column {col}: expected a value for '{field}', found '{_show(value)}'",
                              field=field)
        v = self.check_type(field, v, col)
        check_literal(field, v, col, value)
        return v

    def check_type(self, field: str, v: Any, col: int) -> Any:
        ftype = FILTERABLE[field]
        ok = (
            (ftype == "BOOL" and isinstance(v, bool))
            or (ftype == "VARCHAR" and isinstance(v, str))
            or (ftype in _NUMERIC and isinstance(v, (int, float)) and not isinstance(v, bool))
        )
        if not ok:
            want = {"BOOL": "true or false", "VARCHAR": "a quoted string"}.get(ftype, "a number")
            raise FilterError(f"filter type error at column {col}: '{field}' takes {want}, got {_show(repr(v))}",
                              field=field)
        return v

    def comparison(self) -> Node:
        kind, name, col = self.take()
        if kind != "name":
            raise FilterError(f"filter syntax error at column {col}: expected a field name, found '{_show(name)}'")
        if name == VECTOR_FIELD or name not in FILTERABLE:
            raise _unknown_field(name)
        ftype = FILTERABLE[name]
        tok = self.peek()
        if tok is None or tok[0] not in ("op", "kw") or tok[1] in (")", "and", "or", ","):
            if ftype != "BOOL":
                raise FilterError(f"filter error at column {col}: '{name}' is not a boolean field; "
                                  f"compare it, e.g. {name} == ...", field=name)
            return BoolField(name)
        op = tok[1]
        if op in ("==", "!=", "<", "<=", ">", ">="):
            self.i += 1
            if op not in ("==", "!=") and ftype not in _NUMERIC:
                raise FilterError(f"filter type error at column {tok[2]}: '{op}' needs a numeric field, '{name}' is {ftype}",
                                  field=name)
            return Cmp(name, op, self.literal(name))
        if op == "in":
            return self.comparison_in(name)
        if op == "like":
            self.i += 1
            if ftype != "VARCHAR":
                raise FilterError(f"filter type error at column {tok[2]}: 'like' needs a string field, '{name}' is {ftype}",
                                  field=name)
            return Cmp(name, "like", self.literal(name))
        if op == "not":  # `field not in [...]`
            self.i += 1
            return Not(self.comparison_in(name))
        raise FilterError(f"filter syntax error at column {tok[2]}: unexpected '{_show(op)}' after '{name}'", field=name)

    def comparison_in(self, name: str) -> Node:
        self.take("kw", "in")
        self.take("op", "[")
        values = []
        if self.peek_value() not in (None, "]"):
            values.append(self.literal(name))
            while self.peek_value() == ",":
                self.i += 1
                values.append(self.literal(name))
        self.take("op", "]")
        return Cmp(name, "in", tuple(values))


def _show(text: str, n: int = 40) -> str:
    """`text` for an error line: cut, and what is not printable (newlines, NUL, lone surrogates)
    written as escapes."""
    text = text if len(text) <= n else text[:n - 3] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def literal_problem(value: Any, kind: Optional[str] = None) -> Optional[str]:
    """Why `value` cannot travel to Milvus as a literal (for a field of `kind`), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return "is not a finite number"
        return None
    if isinstance(value, int):
        lo, hi = _INT_RANGE.get(kind or "INT64", _INT_RANGE["INT64"])
        if not lo <= value <= hi:
            return f"does not fit {_INT_WORDS.get(kind or 'INT64', 'a 64-bit integer')}"
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"holds {value[e.start]!r}, which is not a character (a lone surrogate)"
        if "\0" in value:
            return "holds a NUL character"
        return None
    return None


def check_literal(field: str, value: Any, col: int, text: str) -> None:
    """Raise FilterError when a literal written as `text` at `col` is out of its field's range or
    not encodable text."""
    why = literal_problem(value, FILTERABLE.get(field))
    if why:
        what = "filter value out of range" if isinstance(value, (int, float)) else "invalid filter value"
        raise FilterError(f"{what} at column {col}: {_show(text)} for '{field}' {why}", field=field)


def encode_literal(value: Any) -> str:
    """One parameter value as a Milvus literal (for Milvus Lite, which has no templating)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(encode_literal(v) for v in value) + "]"
    why = literal_problem(value)
    if why:  # the parser refuses these with their column; this guards every other caller
        raise FilterError(f"invalid filter value {_show(repr(value))}: {why}")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # One double-quoted token whatever the value holds: the escapes every Milvus parser knows
        # (Milvus Lite knows only these), other characters as they are.
        return '"' + value.translate(_ENCODE) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(encode_literal(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as a filter literal")


@dataclass(frozen=True)
class CompiledFilter:
    """A validated filter: `template` with `{pN}` placeholders and its `params`."""

    source: str
    node: Node
    template: str
    params: Dict[str, Any]

    def render(self) -> str:
        """The expression with literals encoded in place (for engines without templating)."""
        return _emit(self.node, lambda v: encode_literal(v))

    def fields(self) -> List[str]:
        return sorted(_fields(self.node))

    def evaluate(self, row: Dict[str, Any]) -> bool:
        """Evaluate on one row dict (used for exact fallback search and tests)."""
        return _eval(self.node, row)


def _fields(node: Node) -> set:
    if isinstance(node, (Cmp, BoolField)):
        return {node.field}
    if isinstance(node, Not):
        return _fields(node.arg)
    return set().union(*(_fields(a) for a in node.args))


def _depth(node: Node) -> int:
    """Nesting of `node`, as rendered: one level per `not` and per and/or group."""
    if isinstance(node, Not):
        return 1 + _depth(node.arg)
    if isinstance(node, BoolOp):
        return 1 + max(_depth(a) for a in node.args)
    return 0


def _emit(node: Node, value: Callable[[Any], str]) -> str:
    if isinstance(node, BoolField):
        return f"{node.field} == true"
    if isinstance(node, Cmp):
        v = list(node.value) if node.op == "in" else node.value
        return f"{node.field} {node.op} {value(v)}"
    if isinstance(node, Not):
        return f"not ({_emit(node.arg, value)})"
    return "(" + f" {node.op} ".join(_emit(a, value) for a in node.args) + ")"


def _like(pattern: str, s: str) -> bool:
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, s, flags=re.S) is not None


def _eval(node: Node, row: Dict[str, Any]) -> bool:
    if isinstance(node, BoolField):
        return bool(row[node.field])
    if isinstance(node, Not):
        return not _eval(node.arg, row)
    if isinstance(node, BoolOp):
        vals = (_eval(a, row) for a in node.args)
        return all(vals) if node.op == "and" else any(vals)
    x, v = row[node.field], node.value
    return {
        "==": lambda: x == v, "!=": lambda: x != v, "<": lambda: x < v, "<=": lambda: x <= v,
        ">": lambda: x > v, ">=": lambda: x >= v, "in": lambda: x in v,
        "like": lambda: _like(v, x),
    }[node.op]()


def compile_filter(expr: Optional[str] = None, where: Iterable[str] = (),
                   where_not: Iterable[str] = ()) -> Optional[CompiledFilter]:
    """Validate a user expression (plus the `where=[A]` / `where_not=[B]` shorthands) into a filter.

    Returns None when there is nothing to filter on. Raises FilterError with a one-line message.
    """
    nodes: List[Node] = []
    if expr is not None and expr.strip():
        nodes.append(_Parser(expr).parse())
    for name, negate in [(w, False) for w in where] + [(w, True) for w in where_not]:
        if name not in FILTERABLE:
            raise _unknown_field(name)
        if FILTERABLE[name] != "BOOL":
            raise FilterError(f"where/where_not take boolean fields; '{name}' is {FILTERABLE[name]}", field=name)
        nodes.append(Cmp(name, "==", not negate))
    if not nodes:
        return None
    node = nodes[0] if len(nodes) == 1 else BoolOp("and", tuple(nodes))
    if _depth(node) > MAX_FILTER_DEPTH:
        raise FilterError(f"filter nested too deeply (more than {MAX_FILTER_DEPTH} levels of 'not', "
                          f"parentheses and alternating 'and'/'or')")
    node = known_only(node)
    params: Dict[str, Any] = {}

    def placeholder(v: Any) -> str:
        key = f"p{len(params)}"
        params[key] = v
        return "{" + key + "}"

    template = _emit(node, placeholder)
    source = " and ".join(
        ([f"({expr})"] if expr and expr.strip() else [])
        + [f"{w} == true" for w in where] + [f"{w} == false" for w in where_not]
    )
    return CompiledFilter(source, node, template, params)


_ATTRIBUTE_FIELDS = frozenset(ATTRIBUTES)


def known_only(node: Node, negate: bool = False, guarded: bool = False) -> Node:
    """`node` where no comparison on a CelebA attribute can match a face whose attributes are
    unknown: negations pushed down to the comparisons, and each attribute comparison joined with
    `has_attributes == true` (unless a conjunction above already requires it, so the rendered
    filter compiles to itself). SQL's null semantics (`not Smiling` is not true of an unknown
    face), the same on deployments that store null and on those that store false (Milvus 2.3)."""
    guard = Cmp("has_attributes", "==", True)
    if isinstance(node, Not):
        return known_only(node.arg, not negate, guarded)
    if isinstance(node, BoolOp):
        op = {"and": "or", "or": "and"}[node.op] if negate else node.op
        if op == "and" and not negate and guard in node.args:
            guarded = True
        return BoolOp(op, tuple(known_only(a, negate, guarded) for a in node.args))
    atom = Not(node) if negate else node
    if node.field in _ATTRIBUTE_FIELDS and not guarded:
        return BoolOp("and", (guard, atom))
    return atom


def combine(filters: Sequence[Optional[str]]) -> str:
    """Join already-rendered expressions with `and` (system filters, never user text)."""
    parts = [f"({f})" for f in filters if f]
    return " and ".join(parts)
