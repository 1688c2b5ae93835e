"""Calculations: Agilebase-style formulas such as ``{last modified [auto]} > {last pushed}``, parsed,
type-checked and compiled to parameterised SQL for SQLite and PostgreSQL.

The language is documented in ``docs/formulas.md``; ``FUNCTIONS`` below is the list of functions (a test
fails when one is missing from the docs).

How a formula becomes SQL
-------------------------
1. A small lexer reads the text: ``{field name}`` references, numbers, ``'text'`` (``''`` for a quote),
   words, operators. Anything else is a syntax error with its character position.
2. A recursive-descent parser builds a tree with a position on every node.
3. The compiler walks the tree, checks types (numbers for arithmetic, text for text functions, matching
   types for comparisons, booleans for and/or/not) and turns each node into a SQLAlchemy element.

Why not sqlglot for step 2: sqlglot parses *all* of SQL (subqueries, casts, aliases, ``;`` blocks) and
normalises function names (``nvl`` and ``ifnull`` both become ``Coalesce``, ``now`` becomes
``CurrentTimestamp``), and its nodes carry no source positions. Whitelisting its tree would mean refusing,
after the fact and with vague messages, most of what it accepted. The formula grammar is a dozen rules; a
parser for exactly that grammar gives exact positions, suggestions, and nothing to refuse later.

What reaches the database
-------------------------
Every user value (numbers, text, dates, intervals) becomes a bound parameter (``sa.literal`` /
``sa.bindparam``); field names only select a ``FieldRef`` the caller built. The SQL around them comes from
fixed templates in this module (``_Macro``), one per operation and engine, so each engine gets SQL whose
answers match the other's:

* ``/`` always gives a number; division by zero gives null. Integer ``+ - *`` are exact 64-bit and give
  null on overflow (instead of PostgreSQL's error / SQLite's silent switch to floating point; on SQLite a
  whole chain is checked once, see ``_Compiler.settle``). Number arithmetic is IEEE double; a result beyond the largest double is null (on
  PostgreSQL the edges are decided exactly inside a ``(SELECT ... FROM (SELECT x, y OFFSET 0))``
  "let", so no overflow or underflow error can reach the client; ``OFFSET 0`` stops the planner from
  flattening the let, which would copy x into every place that reads it, exponentially when nested).
* Text order and ``lower``/``upper`` follow SQLite's rules (code point order, ASCII letters only), using
  ``COLLATE "C"`` on PostgreSQL.
* Datetimes are UTC instants (SQLite: integer microseconds; PostgreSQL: timestamptz, computed without the
  session time zone); dates are calendar days; results outside 0001-01-01 .. 9999-12-31 are null.
* ``now()``/``today()`` are bound parameters computed when the statement runs.

A formula (with the calculations it uses) may not nest more than ``MAX_DEPTH`` operations deep nor
contain more than ``MAX_SIZE`` operations, and on SQLite its SQL must parse with room to spare
(``_sqlite_parses``): SQLAlchemy compiles expressions recursively and SQLite's parser stack is small, so a
deeper formula is a 4xx here rather than a 5xx later.
"""
from __future__ import annotations

import datetime as dt
import difflib
import re
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..columns import COLUMN_TYPES, validate_column_name, validator_for
from ..errors import Invalid
from ..storage.codecs import encoder, sql_type

__all__ = [
    "FieldRef",
    "Formula",
    "FormulaError",
    "FunctionSpec",
    "FUNCTIONS",
    "compile_formula",
    "compile_calculations",
    "referenced_fields",
    "closest_name",
    "MAX_FORMULA_LENGTH",
    "MAX_DEPTH",
    "MAX_SIZE",
]

MAX_FORMULA_LENGTH = 5000
MAX_DEPTH = 60  # nested operations in the compiled SQL (calculations used inline count too)
MAX_SIZE = 2000  # operations in the compiled SQL
_MAX_PARSE_DEPTH = 40  # nested parentheses / operators while parsing
_MAX_INT = 2**63 - 1

DIALECTS = ("sqlite", "postgresql")


# ---------------------------------------------------------------------------------------------
# Public values


@dataclass(frozen=True)
class FieldRef:
    """A field a formula or filter may use: its user-visible name, its column type and how to read it."""

    name: str  # user-visible name, e.g. "last pushed" or "created [auto]"
    type: str  # one of string, integer, number, boolean, date, datetime, json
    expr: Any  # SQLAlchemy column element: a table column or a compiled calculation


@dataclass(frozen=True)
class Formula:
    """A compiled formula: the SQL expression, its column type and the fields it reads."""

    formula: str
    type: str
    expr: Any
    references: frozenset[str] = field(default_factory=frozenset)


class FormulaError(Invalid):
    """A formula that cannot be used: syntax, unknown field or function, type error, cycle, too complex.

    ``details`` always holds ``formula``; ``position`` (0-based character offset), ``field``,
    ``function``, ``suggestion``, ``calculation`` and ``cycle`` are added when known."""

    code = "invalid_formula"

    def __init__(self, message: str, *, formula: str, position: int | None = None, **details: Any) -> None:
        body: dict[str, Any] = {"formula": formula}
        if position is not None:
            body["position"] = position
        body.update({key: value for key, value in details.items() if value is not None})
        super().__init__(message, details=body)
        self.position = position


def closest_name(name: str, names: Sequence[str] | Mapping[str, Any]) -> str | None:
    """The known name closest to ``name`` (case-insensitive match first, then difflib), or None."""
    candidates = list(names)
    folded = {candidate.casefold(): candidate for candidate in candidates}
    if name.casefold() in folded:
        return folded[name.casefold()]
    if name.strip().casefold() in folded:
        return folded[name.strip().casefold()]
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not matches:
        by_fold = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.6)
        return folded[by_fold[0]] if by_fold else None
    return matches[0]


# ---------------------------------------------------------------------------------------------
# SQL templates ("macros"): fixed SQL text around SQLAlchemy-compiled arguments.


class _Macro(FunctionElement):
    """One operation: ``template`` with ``{0}``, ``{1}``... replaced by the compiled arguments.

    Templates are constants of this module, never user text. One subclass per template keeps
    SQLAlchemy's statement cache correct (the class is part of the cache key)."""

    inherit_cache = True
    name = "calc"
    template: ClassVar[str] = ""

    def __init__(self, *args: Any, type_: Any) -> None:
        super().__init__(*args)
        self.type = type_


_MACRO_CLASSES: dict[str, type[_Macro]] = {}  # by kind + template


@compiles(_Macro)
def _compile_macro(element: _Macro, compiler: Any, **kw: Any) -> str:
    return element.template.format(*[compiler.process(arg, **kw) for arg in element.clauses])


def _depth(expr: Any) -> int:
    return getattr(expr, "_pb_depth", 0)


def _size(expr: Any) -> int:
    return getattr(expr, "_pb_size", 1)


def macro(template: str, *args: Any, type_: Any, kind: str = "") -> _Macro:
    """The SQL ``template`` applied to ``args`` (SQLAlchemy elements), typed ``type_`` (a SQLAlchemy type).

    ``kind`` separates macros whose SQL is alike but whose cache keys must differ (``now()``: SQLAlchemy
    would otherwise reuse a statement compiled for a plain literal and never call the bind's callable)."""
    cls = _MACRO_CLASSES.get(kind + template)
    if cls is None:
        cls = type(f"_Macro{len(_MACRO_CLASSES)}", (_Macro,), {"template": template, "inherit_cache": True})
        _MACRO_CLASSES[kind + template] = cls
    element = cls(*args, type_=type_)
    element._pb_depth = 1 + max((_depth(arg) for arg in args), default=0)  # type: ignore[attr-defined]
    uses = [max(1, template.count("{%d}" % i)) for i in range(len(args))]
    element._pb_size = 1 + sum(n * _size(arg) for n, arg in zip(uses, args))  # type: ignore[attr-defined]
    return element


def _placeholders(n: int, start: int = 0, sep: str = ", ") -> str:
    return sep.join("{%d}" % i for i in range(start, start + n))


def sqltype(dialect: str, type_name: str) -> Any:
    if type_name in COLUMN_TYPES:
        return sql_type(dialect, type_name)
    return sa.types.NullType()


def bind(dialect: str, type_name: str, value: Any) -> Any:
    """A bound parameter holding the canonical ``value`` of ``type_name``, encoded for ``dialect``."""
    return sa.literal(encoder(dialect, type_name)(value), sql_type(dialect, type_name))


# ---------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, field, word, op, end
    text: str
    pos: int
    value: Any = None


_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ("==", "!=", "<>", "<=", ">=", "||", "(", ")", ",", "+", "-", "*", "/", "=", "<", ">")


def _tokenize(formula: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "{":
            end = formula.find("}", i + 1)
            inner_open = formula.find("{", i + 1)
            if end == -1 or (inner_open != -1 and inner_open < end):
                raise FormulaError(
                    f"'{{' at position {i} is not closed: fields are written as {{field name}}", formula=formula, position=i
                )
            name = formula[i + 1 : end]
            if not name.strip():
                raise FormulaError(f"empty field name '{{}}' at position {i}", formula=formula, position=i)
            tokens.append(_Token("field", formula[i : end + 1], i, name))
            i = end + 1
            continue
        if ch == "}":
            raise FormulaError(f"'}}' at position {i} has no matching '{{'", formula=formula, position=i)
        if ch == "'":
            j, parts = i + 1, []
            while True:
                k = formula.find("'", j)
                if k == -1:
                    raise FormulaError(f"text started at position {i} is not closed with '", formula=formula, position=i)
                parts.append(formula[j:k])
                if formula.startswith("''", k):
                    parts.append("'")
                    j = k + 2
                    continue
                break
            value = "".join(parts)
            if "\x00" in value:
                raise FormulaError(f"text at position {i} contains a NUL character", formula=formula, position=i)
            tokens.append(_Token("string", formula[i : k + 1], i, value))
            i = k + 1
            continue
        if ch == '"':
            raise FormulaError(
                f'unexpected " at position {i}: write text in single quotes (\'text\') and fields in braces ({{field}})',
                formula=formula,
                position=i,
            )
        match = _NUMBER.match(formula, i)
        if match and (ch.isdigit() or ch == "."):
            text = match.group(0)
            if len(text) > 40:
                raise FormulaError(f"number at position {i} is too long", formula=formula, position=i)
            if match.group(2) is None and match.group(3) is None and "." not in text:
                value: Any = int(text)
                if value > _MAX_INT:
                    raise FormulaError(
                        f"integer {text} at position {i} is outside the 64-bit range", formula=formula, position=i
                    )
            else:
                value = float(text)
                if value in (float("inf"), float("-inf")):
                    raise FormulaError(f"number {text} at position {i} is too large", formula=formula, position=i)
            tokens.append(_Token("number", text, i, value))
            i = match.end()
            continue
        match = _WORD.match(formula, i)
        if match:
            tokens.append(_Token("word", match.group(0), i, match.group(0).lower()))
            i = match.end()
            continue
        for op in _OPERATORS:
            if formula.startswith(op, i):
                tokens.append(_Token("op", op, i, op))
                i += len(op)
                break
        else:
            hint = ""
            if ch == ";":
                hint = ": a formula is one expression"
            elif ch == "%":
                hint = ": the % operator is not supported"
            raise FormulaError(f"unexpected character {ch!r} at position {i}{hint}", formula=formula, position=i)
    tokens.append(_Token("end", "", n))
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser: tokens -> tree


@dataclass(frozen=True)
class _Node:
    kind: str  # literal, typed, field, unary, binary, is, in, between, call, case
    pos: int
    value: Any = None  # literal value; typed literal kind; operator; function name; field name
    args: tuple[Any, ...] = ()
    extra: Any = None


_KEYWORDS = frozenset(
    "and or not is null empty in between case when then else end true false".split()
)
_COMPARISONS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class _Parser:
    def __init__(self, formula: str) -> None:
        self.formula = formula
        self.tokens = _tokenize(formula)
        self.i = 0
        self.depth = 0

    # -- helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def error(self, message: str, token: _Token | None = None) -> FormulaError:
        token = token or self.tok
        if token.kind != "end":
            message += f" at position {token.pos}"
        elif "end of the formula" not in message:
            message += " at the end of the formula"
        return FormulaError(message, formula=self.formula, position=token.pos)

    def describe(self, token: _Token) -> str:
        if token.kind == "end":
            return "the end of the formula"
        return repr(token.text)

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.value in words

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def advance(self) -> _Token:
        token = self.tok
        self.i += 1
        return token

    def expect_op(self, op: str) -> _Token:
        if not self.is_op(op):
            raise self.error(f"expected {op!r} but found {self.describe(self.tok)}")
        return self.advance()

    def expect_word(self, word: str) -> _Token:
        if not self.is_word(word):
            raise self.error(f"expected {word.upper()} but found {self.describe(self.tok)}")
        return self.advance()

    # -- grammar
    def parse(self) -> _Node:
        if self.tok.kind == "end":
            raise FormulaError("the formula is empty", formula=self.formula, position=0)
        node = self.expr()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.describe(self.tok)}")
        return node

    def expr(self) -> _Node:
        self.depth += 1
        if self.depth > _MAX_PARSE_DEPTH:
            raise self.error("the formula nests too deeply")
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> _Node:
        node = self.and_()
        while self.is_word("or"):
            token = self.advance()
            node = _Node("binary", token.pos, "or", (node, self.and_()))
        return node

    def and_(self) -> _Node:
        node = self.not_()
        while self.is_word("and"):
            token = self.advance()
            node = _Node("binary", token.pos, "and", (node, self.not_()))
        return node

    def not_(self) -> _Node:
        if self.is_word("not"):
            token = self.advance()
            self.depth += 1
            if self.depth > _MAX_PARSE_DEPTH:
                raise self.error("the formula nests too deeply")
            try:
                return _Node("unary", token.pos, "not", (self.not_(),))
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> _Node:
        node = self.concat()
        if self.tok.kind == "op" and self.tok.value in _COMPARISONS:
            token = self.advance()
            node = _Node("binary", token.pos, _COMPARISONS[token.value], (node, self.concat()))
        elif self.is_word("is"):
            token = self.advance()
            negated = False
            if self.is_word("not"):
                self.advance()
                negated = True
            if self.is_word("null", "empty"):
                what = self.advance().value
            else:
                raise self.error(f"expected NULL or EMPTY after IS but found {self.describe(self.tok)}")
            node = _Node("is", token.pos, what, (node,), negated)
        elif self.is_word("in") or (self.is_word("not") and self.tokens[self.i + 1].kind == "word" and self.tokens[self.i + 1].value in ("in", "between")):
            negated = False
            token = self.tok
            if self.is_word("not"):
                self.advance()
                negated = True
            if self.is_word("in"):
                self.advance()
                self.expect_op("(")
                items = [self.expr()]
                while self.is_op(","):
                    self.advance()
                    items.append(self.expr())
                self.expect_op(")")
                node = _Node("in", token.pos, None, (node, *items), negated)
            else:
                self.expect_word("between")
                low = self.concat()
                self.expect_word("and")
                high = self.concat()
                node = _Node("between", token.pos, None, (node, low, high), negated)
        elif self.is_word("between"):
            token = self.advance()
            low = self.concat()
            self.expect_word("and")
            high = self.concat()
            node = _Node("between", token.pos, None, (node, low, high), False)
        if (self.tok.kind == "op" and self.tok.value in _COMPARISONS) or self.is_word("is", "in", "between"):
            raise self.error("comparisons cannot be chained (use AND)")
        return node

    def concat(self) -> _Node:
        node = self.additive()
        while self.is_op("||"):
            token = self.advance()
            node = _Node("binary", token.pos, "||", (node, self.additive()))
        return node

    def additive(self) -> _Node:
        node = self.multiplicative()
        while self.is_op("+", "-"):
            token = self.advance()
            node = _Node("binary", token.pos, token.value, (node, self.multiplicative()))
        return node

    def multiplicative(self) -> _Node:
        node = self.unary()
        while self.is_op("*", "/"):
            token = self.advance()
            node = _Node("binary", token.pos, token.value, (node, self.unary()))
        return node

    def unary(self) -> _Node:
        if self.is_op("-", "+"):
            token = self.advance()
            self.depth += 1
            if self.depth > _MAX_PARSE_DEPTH:
                raise self.error("the formula nests too deeply")
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            if token.value == "-" and operand.kind == "literal" and isinstance(operand.value, (int, float)) and not isinstance(operand.value, bool):
                return _Node("literal", token.pos, -operand.value)
            return _Node("unary", token.pos, token.value, (operand,))
        return self.primary()

    def primary(self) -> _Node:
        token = self.tok
        if token.kind == "number":
            self.advance()
            return _Node("literal", token.pos, token.value)
        if token.kind == "string":
            self.advance()
            return _Node("literal", token.pos, token.value)
        if token.kind == "field":
            self.advance()
            return _Node("field", token.pos, token.value)
        if token.kind == "op" and token.value == "(":
            self.advance()
            node = self.expr()
            self.expect_op(")")
            return node
        if token.kind == "word":
            word = token.value
            if word in ("true", "false"):
                self.advance()
                return _Node("literal", token.pos, word == "true")
            if word == "null":
                self.advance()
                return _Node("literal", token.pos, None)
            if word == "case":
                return self.case()
            nxt = self.tokens[self.i + 1]
            if word in ("date", "datetime", "timestamp", "interval") and nxt.kind == "string":
                self.advance()
                self.advance()
                kind = "datetime" if word == "timestamp" else word
                return _Node("typed", token.pos, kind, (), (nxt.value, nxt.pos))
            if nxt.kind == "op" and nxt.value == "(" and word not in _KEYWORDS:
                self.advance()
                self.advance()
                args: list[_Node] = []
                if not self.is_op(")"):
                    args.append(self.expr())
                    while self.is_op(","):
                        self.advance()
                        args.append(self.expr())
                self.expect_op(")")
                return _Node("call", token.pos, word, tuple(args), token.text)
            if word in _KEYWORDS:
                raise self.error(f"unexpected {word.upper()}")
            raise FormulaError(
                f"unknown name {token.text!r} at position {token.pos}: fields are written in braces, like {{{token.text}}}, "
                "and functions are followed by parentheses",
                formula=self.formula,
                position=token.pos,
                field=token.text,
            )
        if token.kind == "end":
            raise self.error("a value is missing")
        raise self.error(f"unexpected {self.describe(token)}")

    def case(self) -> _Node:
        token = self.advance()  # CASE
        subject = None
        if not self.is_word("when"):
            subject = self.expr()
        whens: list[_Node] = []
        if not self.is_word("when"):
            raise self.error(f"expected WHEN but found {self.describe(self.tok)}")
        while self.is_word("when"):
            self.advance()
            condition = self.expr()
            self.expect_word("then")
            whens.extend((condition, self.expr()))
        default = None
        if self.is_word("else"):
            self.advance()
            default = self.expr()
        self.expect_word("end")
        return _Node("case", token.pos, None, tuple(whens), (subject, default))


def _parse(formula: str) -> _Node:
    if not isinstance(formula, str):
        raise FormulaError("a formula must be a string", formula=str(formula)[:200])
    if len(formula) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_LENGTH} characters", formula=formula[:200])
    return _Parser(formula).parse()


def _field_names(node: _Node, out: set[str]) -> set[str]:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.kind == "field":
            out.add(current.value)
        stack.extend(arg for arg in current.args if arg is not None)
        if current.kind == "case":
            stack.extend(arg for arg in current.extra if arg is not None)
    return out


def referenced_fields(formula: str) -> set[str]:
    """The ``{field}`` names a formula reads (raises FormulaError on a syntax error)."""
    return _field_names(_parse(formula), set())


# ---------------------------------------------------------------------------------------------
# Functions


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    signature: str
    summary: str
    example: str
    min_args: int
    max_args: int | None


FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in (
        FunctionSpec("if", "if(condition, a, b)", "a when the condition is true, otherwise b (also when it is null)", "if({total} > 100, 'big', 'small')", 3, 3),
        FunctionSpec("coalesce", "coalesce(a, b, ...)", "the first value that is not empty (null)", "coalesce({nickname}, {name})", 1, None),
        FunctionSpec("is_empty", "is_empty(x)", "true when x is null, or '' for text (same as x IS EMPTY)", "is_empty({last pushed})", 1, 1),
        FunctionSpec("is_not_empty", "is_not_empty(x)", "the opposite of is_empty", "is_not_empty({email})", 1, 1),
        FunctionSpec("lower", "lower(text)", "text with ASCII letters A-Z in lower case", "lower({email})", 1, 1),
        FunctionSpec("upper", "upper(text)", "text with ASCII letters a-z in upper case", "upper({country})", 1, 1),
        FunctionSpec("length", "length(text)", "the number of characters", "length({comment})", 1, 1),
        FunctionSpec("trim", "trim(text)", "text without leading and trailing spaces", "trim({name})", 1, 1),
        FunctionSpec("concat", "concat(a, b, ...)", "joins text, integers, dates and booleans; empty values count as ''", "concat({first name}, ' ', {last name})", 1, None),
        FunctionSpec("round", "round(x) or round(x, digits)", "x rounded half away from zero to 0-15 decimal digits; integers stay as they are", "round({price} * 1.2, 2)", 1, 2),
        FunctionSpec("abs", "abs(x)", "the absolute value", "abs({balance})", 1, 1),
        FunctionSpec("now", "now()", "the current date and time (UTC) when the query runs", "now() > add_days({created [auto]}, 7)", 0, 0),
        FunctionSpec("today", "today()", "the current date (UTC) when the query runs", "{due date} < today()", 0, 0),
        FunctionSpec("date", "date(x)", "a date: from 'YYYY-MM-DD' text, or the UTC day of a datetime", "date({created [auto]}) = today()", 1, 1),
        FunctionSpec("datetime", "datetime(x)", "a datetime: from ISO 8601 text, or midnight UTC of a date", "{last pushed} < datetime('2024-05-01T12:00:00Z')", 1, 1),
        FunctionSpec("add_days", "add_days(date or datetime, n)", "n whole days later (earlier when n < 0)", "add_days({due date}, 30)", 2, 2),
        FunctionSpec("add_hours", "add_hours(datetime, n)", "n whole hours later", "add_hours({created [auto]}, 2)", 2, 2),
        FunctionSpec("add_minutes", "add_minutes(datetime, n)", "n whole minutes later", "add_minutes({last pushed}, 15)", 2, 2),
        FunctionSpec("add_seconds", "add_seconds(datetime, n)", "n whole seconds later", "add_seconds({created [auto]}, 90)", 2, 2),
        FunctionSpec("days_between", "days_between(start, end)", "end - start in days: an integer for two dates, a number for datetimes", "days_between({ordered}, {shipped})", 2, 2),
        FunctionSpec("hours_between", "hours_between(start, end)", "end - start in hours (a number)", "hours_between({created [auto]}, now())", 2, 2),
        FunctionSpec("minutes_between", "minutes_between(start, end)", "end - start in minutes (a number)", "minutes_between({last pushed}, {last modified [auto]})", 2, 2),
        FunctionSpec("seconds_between", "seconds_between(start, end)", "end - start in seconds (a number)", "seconds_between({started}, {finished})", 2, 2),
    )
}

_UNIT_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_MAX_INTERVAL_SECONDS = 10000 * 366 * 86400  # an interval literal spans less than 10,000 years
_INTERVAL_UNITS = {
    "second": 1, "seconds": 1, "sec": 1, "secs": 1,
    "minute": 60, "minutes": 60, "min": 60, "mins": 60,
    "hour": 3600, "hours": 3600,
    "day": 86400, "days": 86400,
    "week": 604800, "weeks": 604800,
}
_NUMERIC = ("integer", "number")
_TEXTUAL = ("string", "integer", "date", "boolean")  # what || and concat() accept
_ORDERED = ("integer", "number", "string", "date", "datetime", "boolean")

# Bounds, as SQL text constants of this module. Integer results must lie strictly between the smallest
# and the largest 64-bit integer; datetimes and dates between 0001-01-01 and 9999-12-31 (UTC).
_I64_ABOVE = "9223372036854775808"  # PostgreSQL NUMERIC bounds just outside the 64-bit range
_I64_BELOW = "-9223372036854775809"
_MICROS_LO = "-62135596800000001"  # SQLite: one microsecond before 0001-01-01T00:00:00Z
_MICROS_HI = "253402300800000000"  # SQLite: one microsecond after 9999-12-31T23:59:59.999999Z
_SPAN_DAYS = "3652059"  # days from 0001-01-01 to 10000-01-01
_SPAN_MICROS = "315537897600000000"  # the same in microseconds
_PG_TS_ORIGIN = "TIMESTAMPTZ '0001-01-01 00:00:00+00'"


def _f8(value: float) -> str:
    """A double as PostgreSQL SQL text that reads back exactly (repr round-trips; strtod rounds correctly)."""
    return f"CAST('{value!r}' AS DOUBLE PRECISION)"


# PostgreSQL raises an error when double precision arithmetic overflows or underflows to zero; SQLite
# gives +-Inf or 0. To give SQLite's IEEE answers without errors, PostgreSQL decides the edge cases on
# copies scaled by powers of two (exact), bucketing each operand as small (< 2^-511), normal or big
# (> 2^511). See _pg_float_template.
_P2 = {k: _f8(2.0**k) for k in (-600, -511, -475, -176, 125, 424, 511, 600, 1023)}


def _clamp_null(dialect: str, inner: str, lo: str, hi: str) -> str:
    """SQL giving ``inner`` when lo < inner < hi, else NULL; ``inner`` appears once."""
    if dialect == "sqlite":
        return f"NULLIF(NULLIF(MAX(MIN({inner}, {hi}), {lo}), {hi}), {lo})"
    # GREATEST/LEAST skip NULLs on PostgreSQL: NULL becomes hi, then NULLIF makes it NULL again.
    return f"NULLIF(NULLIF(GREATEST(LEAST({inner}, {hi}), {lo}), {hi}), {lo})"


# ---------------------------------------------------------------------------------------------
# Compiler: tree -> SQL


@dataclass(frozen=True)
class _Value:
    expr: Any
    type: str  # a column type, "null" or "interval"
    pos: int
    literal: Any = None  # the Python value of a literal (text, number, interval seconds), else None
    is_literal: bool = False
    # SQLite only: "int" or "num" when ``expr`` is unchecked arithmetic (see _Compiler.settle)
    raw: str = ""


class _Compiler:
    def __init__(self, formula: str, fields: Mapping[str, FieldRef], dialect: str, calculation: str | None = None) -> None:
        dialect = _dialect(dialect)
        self.formula = formula
        self.fields = fields
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self.calculation = calculation
        self.references: set[str] = set()

    # -- helpers
    def error(self, message: str, pos: int | None, **details: Any) -> FormulaError:
        where = f" (at position {pos})" if pos is not None else ""
        return FormulaError(f"{message}{where}", formula=self.formula, position=pos, calculation=self.calculation, **details)

    def m(self, template: str, *args: Any, type_name: str) -> Any:
        return macro(template, *args, type_=sqltype(self.dialect, type_name))

    def value(self, template: str, args: Sequence[_Value], type_name: str, pos: int) -> _Value:
        return _Value(self.m(template, *[a.expr for a in args], type_name=type_name), type_name, pos)

    def lit(self, type_name: str, python_value: Any, pos: int) -> _Value:
        return _Value(bind(self.dialect, type_name, python_value), type_name, pos, python_value, True)

    def to_float(self, v: _Value) -> _Value:
        if v.type == "number":
            return v
        if v.is_literal and isinstance(v.literal, int):
            return self.lit("number", float(v.literal), v.pos)
        template = "CAST({0} AS DOUBLE PRECISION)" if self.pg else "CAST({0} AS REAL)"
        return self.value(template, [v], "number", v.pos)

    def to_datetime(self, v: _Value) -> _Value:
        if v.type == "datetime":
            return v
        if self.pg:
            return self.value("timezone('UTC', CAST({0} AS TIMESTAMP))", [v], "datetime", v.pos)
        return self.value("(CAST(julianday({0}) - 2440587.5 AS INTEGER) * 86400000000)", [v], "datetime", v.pos)

    def to_date(self, v: _Value) -> _Value:
        if v.type == "date":
            return v
        if self.pg:
            return self.value("CAST(timezone('UTC', {0}) AS DATE)", [v], "date", v.pos)
        return self.value("date(1721425.5 + (({0} + 62135596800000000) / 86400000000))", [v], "date", v.pos)

    def to_text(self, v: _Value) -> _Value:
        if v.type == "string":
            return v
        if v.type == "integer":
            return self.value("CAST({0} AS TEXT)", [v], "string", v.pos)
        if v.type == "date":
            return self.value("to_char({0}, 'YYYY-MM-DD')", [v], "string", v.pos) if self.pg else _Value(v.expr, "string", v.pos)
        if v.type == "boolean":
            template = (
                "(CASE {0} WHEN TRUE THEN 'true' WHEN FALSE THEN 'false' END)"
                if self.pg
                else "(CASE {0} WHEN 1 THEN 'true' WHEN 0 THEN 'false' END)"
            )
            return self.value(template, [v], "string", v.pos)
        raise self.error(f"cannot turn {_type_words(v.type)} into text", v.pos)

    def coerce_literal(self, v: _Value, target: str) -> _Value:
        """A text literal compared with a date or datetime becomes that type (checked now)."""
        if v.is_literal and v.type == "string" and target in ("date", "datetime"):
            return self.typed_literal(target, v.literal, v.pos)
        return v

    def typed_literal(self, kind: str, text: str, pos: int) -> _Value:
        if kind == "date":
            try:
                return self.lit("date", validator_for("date")(text), pos)
            except (ValueError, OverflowError, TypeError) as exc:
                raise self.error(f"{text!r} is not a date ({exc})", pos) from None
        if kind == "datetime":
            try:
                return self.lit("datetime", validator_for("datetime")(text), pos)
            except (ValueError, OverflowError, TypeError):
                try:
                    day = validator_for("date")(text)
                except (ValueError, OverflowError, TypeError):
                    raise self.error(f"{text!r} is not a datetime (expected ISO 8601, e.g. 2024-05-01T12:30:00Z)", pos) from None
                return self.lit("datetime", dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc), pos)
        # interval: '3 days', '1 day 2 hours', '-90 minutes'
        parts = text.strip().lower().split()
        if not parts or len(parts) % 2:
            raise self.error(f"interval {text!r} should be like '3 days' or '1 hour 30 minutes'", pos)
        seconds = 0
        for count, unit in zip(parts[::2], parts[1::2]):
            if not re.fullmatch(r"[+-]?\d{1,15}", count) or unit not in _INTERVAL_UNITS:
                raise self.error(
                    f"interval {text!r} should be whole numbers of seconds, minutes, hours, days or weeks", pos
                )
            seconds += int(count) * _INTERVAL_UNITS[unit]
        if abs(seconds) > _MAX_INTERVAL_SECONDS:
            raise self.error(f"interval {text!r} is longer than 10,000 years", pos)
        return _Value(None, "interval", pos, seconds, True)

    def unify(self, values: Sequence[_Value], what: str, pos: int) -> tuple[str, list[_Value]]:
        """One result type for the branches of if/case/coalesce (integers widen to numbers, dates to
        datetimes next to datetimes, text literals next to dates become dates)."""
        values = list(values)
        types = {v.type for v in values if v.type != "null"}
        if len(types) > 1 and types <= {"string", "date", "datetime"}:
            target = "datetime" if "datetime" in types else "date"
            values = [self.coerce_literal(v, target) for v in values]
            types = {v.type for v in values if v.type != "null"}
        if not types:
            raise self.error(f"{what} is always empty (null)", pos)
        if types == {"integer", "number"}:
            return "number", [self.to_float(v) if v.type == "integer" else v for v in values]
        if types == {"date", "datetime"}:
            return "datetime", [self.to_datetime(v) if v.type == "date" else v for v in values]
        if len(types) > 1:
            listed = " and ".join(sorted(_type_words(t) for t in types))
            raise self.error(f"{what} mixes {listed}", pos)
        (only,) = types
        if only == "interval":
            raise self.error(f"{what} cannot give an interval", pos)
        return only, values

    def require(self, v: _Value, allowed: Sequence[str], what: str) -> None:
        if v.type not in allowed:
            wanted = " or ".join(_type_words(t) for t in allowed)
            if v.type == "null":
                raise self.error(f"{what} needs {wanted}, not null (use IS EMPTY to test for empty values)", v.pos)
            raise self.error(f"{what} needs {wanted}, got {_type_words(v.type)}", v.pos)

    # -- entry point
    def compile(self, node: _Node) -> _Value:
        result = self.node(node)
        if result.type == "null":
            raise self.error("the formula is always empty (null)", 0)
        if result.type == "interval":
            raise self.error(
                "an interval can only be added to or subtracted from a date or datetime", result.pos
            )
        expr = result.expr
        if _depth(expr) > MAX_DEPTH or _size(expr) > MAX_SIZE or (self.dialect == "sqlite" and not _sqlite_parses(expr)):
            raise self.error(
                "the formula is too complex: it nests too deeply or has too many operations "
                "(counting the calculations it uses); split it or simplify it",
                None,
            )
        return result

    def node(self, node: _Node, raw_ok: bool = False) -> _Value:
        method: Callable[[_Node], _Value] = getattr(self, "node_" + node.kind)
        value = method(node)
        if value.raw and not raw_ok:
            value = self.settle(value)
        if value.expr is not None and _depth(value.expr) > MAX_DEPTH:
            raise self.error(f"the formula is too complex (more than {MAX_DEPTH} nested operations)", node.pos)
        return value

    def settle(self, v: _Value) -> _Value:
        """Check unchecked SQLite arithmetic once, where its value leaves a chain of operations.

        SQLite's integer ``+ - *`` switch to floating point on overflow and stay there through the rest
        of the chain, so one ``typeof`` test at the end finds any overflow. Floating point ``+ - *``
        carry +-Inf (or NaN, which SQLite makes NULL) to the end, where Inf becomes NULL. PostgreSQL
        checks every operation instead (it has no parser limit to save)."""
        if v.raw == "int":
            return self.value("(CASE typeof({0}) WHEN 'integer' THEN {0} END)", [v], "integer", v.pos)
        if v.raw == "num":
            return self.value("NULLIF(NULLIF({0}, 9e999), -9e999)", [v], "number", v.pos)
        return v

    # -- leaves
    def node_literal(self, node: _Node) -> _Value:
        value = node.value
        if value is None:
            return _Value(sa.null(), "null", node.pos, None, True)
        if isinstance(value, bool):
            return self.lit("boolean", value, node.pos)
        if isinstance(value, int):
            if not -_MAX_INT <= value <= _MAX_INT:
                raise self.error("integer outside the 64-bit range", node.pos)
            return self.lit("integer", value, node.pos)
        if isinstance(value, float):
            return self.lit("number", value, node.pos)
        return self.lit("string", value, node.pos)

    def node_typed(self, node: _Node) -> _Value:
        text, _ = node.extra
        return self.typed_literal(node.value, text, node.pos)

    def node_field(self, node: _Node) -> _Value:
        name = node.value
        ref = self.fields.get(name)
        if ref is None and name.strip() != name:
            ref = self.fields.get(name.strip())
            name = name.strip()
        if ref is None:
            suggestion = closest_name(name, self.fields)
            hint = f"; did you mean {{{suggestion}}}?" if suggestion else ""
            raise FormulaError(
                f"unknown field {{{name}}} at position {node.pos}{hint}",
                formula=self.formula,
                position=node.pos,
                field=name,
                suggestion=suggestion,
                calculation=self.calculation,
            )
        if ref.type not in COLUMN_TYPES:
            raise self.error(f"field {{{name}}} has an unknown type {ref.type!r}", node.pos)
        self.references.add(name)
        return _Value(ref.expr, ref.type, node.pos)

    # -- operators
    def node_unary(self, node: _Node) -> _Value:
        (operand_node,) = node.args
        v = self.node(operand_node, raw_ok=True)
        if node.value == "not":
            v = self.settle(v)
            self.require(v, ("boolean",), "NOT")
            return self.value("(NOT {0})", [v], "boolean", node.pos)
        self.require(v, _NUMERIC, f"unary {node.value!r}")
        if node.value == "+":
            return v
        if v.type == "number":
            return replace(self.value("(- {0})", [v], "number", node.pos), raw=v.raw)
        return self.int_arith("-", self.lit("integer", 0, node.pos), v, node.pos)

    def node_binary(self, node: _Node) -> _Value:
        op = node.value
        left, right = (self.node(arg, raw_ok=True) for arg in node.args)
        if op in ("+", "-", "*") and left.type == right.type == "integer":
            return self.int_arith(op, left, right, node.pos)
        if op in ("+", "-", "*", "/") and left.type in _NUMERIC and right.type in _NUMERIC:
            return self.float_arith(op, left, right, node.pos)
        left, right = self.settle(left), self.settle(right)
        if op in ("and", "or"):
            self.require(left, ("boolean",), op.upper())
            self.require(right, ("boolean",), op.upper())
            return self.value("({0} %s {1})" % op.upper(), [left, right], "boolean", node.pos)
        if op in ("=", "<>", "<", "<=", ">", ">="):
            return self.compare(op, left, right, node.pos)
        if op == "||":
            return self.concat([left, right], node.pos, "'||'")
        if op in ("+", "-"):
            return self.add(op, left, right, node.pos)
        # * and / on something that is not a number
        self.require(left, _NUMERIC, f"{op!r}")
        self.require(right, _NUMERIC, f"{op!r}")
        raise AssertionError("unreachable")

    def int_arith(self, op: str, left: _Value, right: _Value, pos: int) -> _Value:
        """Exact 64-bit integer arithmetic; null on overflow."""
        if self.pg:
            inner = "(CAST({0} AS NUMERIC) %s CAST({1} AS NUMERIC))" % op
            template = "CAST(%s AS BIGINT)" % _clamp_null("postgresql", inner, _I64_BELOW, _I64_ABOVE)
            return self.value(template, [left, right], "integer", pos)
        return replace(self.value("({0} %s {1})" % op, [left, right], "integer", pos), raw="int")

    def float_arith(self, op: str, left: _Value, right: _Value, pos: int) -> _Value:
        """IEEE double arithmetic; null on overflow and division by zero (the same on both engines)."""
        if left.raw == "int":
            left = self.settle(left)
        if right.raw == "int":
            right = self.settle(right)
        if op == "/":
            # x / Inf would hide an overflow: division takes checked operands.
            left, right = self.settle(left), self.settle(right)
            if left.type == right.type == "integer":
                left = self.to_float(left)
        if self.pg:
            # (the template takes ABS() of its operands: never of a bigint, whose smallest value has none)
            left, right = self.to_float(left), self.to_float(right)
            return self.value(_pg_float_template(op), [left, right], "number", pos)
        # SQLite gives +-Inf on overflow (checked by settle) and NULL for x / 0.
        return replace(self.value("({0} %s {1})" % op, [left, right], "number", pos), raw="num")

    def add(self, op: str, left: _Value, right: _Value, pos: int) -> _Value:
        lt, rt = left.type, right.type
        # (numbers were handled by node_binary) date +/- whole days, date - date, date/datetime +/- interval
        if lt == "date" and rt == "integer":
            return self.shift(left, right, "days", pos, negate=op == "-")
        if op == "+" and lt == "integer" and rt == "date":
            return self.shift(right, left, "days", pos)
        if lt in ("date", "datetime") and rt == "interval":
            return self.shift_interval(left, right.literal * (-1 if op == "-" else 1), pos)
        if op == "+" and lt == "interval" and rt in ("date", "datetime"):
            return self.shift_interval(right, left.literal, pos)
        if op == "-" and lt in ("date", "datetime") and rt in ("date", "datetime", "string"):
            right = self.coerce_literal(right, lt)
            if lt == right.type == "date":
                return self.between("days", right, left, pos)
            raise self.error(
                "subtracting datetimes needs a unit: use days_between(a, b), hours_between, minutes_between or seconds_between",
                pos,
            )
        if op == "+" and "string" in (lt, rt):
            raise self.error("'+' adds numbers; join text with || or concat()", pos)
        if lt == "interval" or rt == "interval":
            raise self.error("an interval can only be added to or subtracted from a date or datetime", pos)
        raise self.error(f"{op!r} cannot combine {_type_words(lt)} and {_type_words(rt)}", pos)

    def shift_interval(self, target: _Value, seconds: int, pos: int) -> _Value:
        if target.type == "date":
            if seconds % 86400:
                raise self.error("a date can only move by whole days (use datetime({...}) first)", pos)
            return self.shift(target, self.lit("integer", seconds // 86400, pos), "days", pos)
        return self.shift(target, self.lit("integer", seconds, pos), "seconds", pos)

    def shift(self, target: _Value, amount: _Value, unit: str, pos: int, negate: bool = False) -> _Value:
        """``target`` moved by ``amount`` whole units; null outside 0001-01-01 .. 9999-12-31."""
        self.require(amount, ("integer",), f"the number of {unit}")
        sign = "-" if negate else "+"
        if target.type == "date":
            if unit != "days":
                raise self.error(f"a date can only move by whole days; use datetime() to add {unit}", pos)
            if self.pg:
                days = "(CAST(({0} - DATE '0001-01-01') AS NUMERIC) %s CAST({1} AS NUMERIC))" % sign
                template = "(DATE '0001-01-01' + CAST(%s AS INTEGER))" % _clamp_null("postgresql", days, "-1", _SPAN_DAYS)
            else:
                # date() is null past 9999-12-31; years before 0001 sort below '0000-99'.
                template = "NULLIF(MAX(date(julianday({0}) %s {1}), '0000-99'), '0000-99')" % sign
            return self.value(template, [target, amount], "date", pos)
        if target.type != "datetime":
            raise self.error(f"add_{unit} needs a date or datetime, got {_type_words(target.type)}", target.pos)
        unit_micros = _UNIT_SECONDS[unit] * 1_000_000
        if self.pg:
            # Microseconds since 0001-01-01 as NUMERIC (exact, cannot overflow), range-checked, then
            # added back as whole days and microseconds (no time zone or DST involved).
            micros = (
                f"(CAST(EXTRACT(EPOCH FROM ({{0}} - {_PG_TS_ORIGIN})) * 1000000 AS NUMERIC) "
                f"{sign} CAST({{1}} AS NUMERIC) * {unit_micros})"
            )
            template = (
                f"(SELECT {_PG_TS_ORIGIN} + CAST(TRUNC(pb__let.x / 86400000000) AS DOUBLE PRECISION) * INTERVAL '24 hours' "
                "+ CAST(MOD(pb__let.x, 86400000000) AS DOUBLE PRECISION) * INTERVAL '1 microsecond' "
                f"FROM (SELECT {_clamp_null('postgresql', micros, '-1', _SPAN_MICROS)} AS x OFFSET 0) AS pb__let)"
            )
        else:
            # An overflowing product turns into floating point, which the bounds turn into NULL.
            inner = "({0} %s {1} * %d)" % (sign, unit_micros)
            template = _clamp_null("sqlite", inner, _MICROS_LO, _MICROS_HI)
        return self.value(template, [target, amount], "datetime", pos)

    def between(self, unit: str, start: _Value, end: _Value, pos: int) -> _Value:
        """end - start in ``unit``: integer days for two dates, else a number."""
        for v in (start, end):
            self.require(v, ("date", "datetime"), f"{unit}_between")
        if unit == "days" and start.type == end.type == "date":
            template = "({1} - {0})" if self.pg else "CAST(julianday({1}) - julianday({0}) AS INTEGER)"
            return self.value(template, [start, end], "integer", pos)
        a, b = self.to_datetime(start), self.to_datetime(end)
        divisor = "%d.0" % (_UNIT_SECONDS[unit] * 1_000_000)
        if self.pg:
            template = "(CAST(EXTRACT(EPOCH FROM ({1} - {0})) * 1000000 AS DOUBLE PRECISION) / %s)" % divisor
        else:
            template = "(({1} - {0}) / %s)" % divisor
        return self.value(template, [a, b], "number", pos)

    def compatible(self, left: _Value, right: _Value, what: str, pos: int, ordered: bool) -> tuple[_Value, _Value, str]:
        left = self.coerce_literal(left, right.type)
        right = self.coerce_literal(right, left.type)
        lt, rt = left.type, right.type
        if "null" in (lt, rt):
            raise self.error(f"{what} with null is never true; use IS EMPTY or IS NOT EMPTY", pos)
        if "json" in (lt, rt):
            raise self.error("json fields cannot be compared; use IS EMPTY or IS NOT EMPTY", pos)
        if "interval" in (lt, rt):
            raise self.error("an interval can only be added to or subtracted from a date or datetime", pos)
        if lt in _NUMERIC and rt in _NUMERIC:
            if lt != rt:  # compare as doubles on both engines (PostgreSQL would, SQLite would not)
                left, right = self.to_float(left), self.to_float(right)
            return left, right, "number"
        if {lt, rt} == {"date", "datetime"}:
            return self.to_datetime(left), self.to_datetime(right), "datetime"
        if lt != rt:
            raise self.error(f"{what} cannot compare {_type_words(lt)} with {_type_words(rt)}", pos)
        if ordered and lt not in _ORDERED:
            raise self.error(f"{what} cannot order {_type_words(lt)}", pos)
        return left, right, lt

    def collated(self, v: _Value) -> str:
        return "({%d} COLLATE \"C\")" if self.pg and v.type == "string" else "{%d}"

    def compare(self, op: str, left: _Value, right: _Value, pos: int) -> _Value:
        left, right, common = self.compatible(left, right, f"{op!r}", pos, ordered=op not in ("=", "<>"))
        if op in ("=", "<>"):
            template = "({0} %s {1})" % op
        else:
            template = "(%s %s %s)" % (self.collated(left) % 0, op, self.collated(right) % 1)
        return self.value(template, [left, right], "boolean", pos)

    def concat(self, values: Sequence[_Value], pos: int, what: str, null_as_empty: bool = False) -> _Value:
        texts = []
        for v in values:
            if v.type == "null":
                if null_as_empty:
                    continue
                raise self.error(f"{what} with null is always null", v.pos)
            if v.type not in _TEXTUAL:
                raise self.error(
                    f"{what} joins text, integers, dates and booleans, not {_type_words(v.type)}"
                    + (" (numbers cannot be joined: their text form differs between databases)" if v.type == "number" else ""),
                    v.pos,
                )
            texts.append(self.to_text(v))
        if not texts:
            return self.lit("string", "", pos)
        part = "COALESCE({%d}, '')" if null_as_empty else "{%d}"
        template = "(" + " || ".join(part % i for i in range(len(texts))) + ")"
        return self.value(template, texts, "string", pos)

    def node_is(self, node: _Node) -> _Value:
        (operand_node,) = node.args
        v = self.node(operand_node)
        return self.emptiness(v, node.value == "empty", node.extra, node.pos)

    def emptiness(self, v: _Value, empty_text_too: bool, negated: bool, pos: int) -> _Value:
        if v.type == "interval":
            raise self.error("an interval is never empty", pos)
        if empty_text_too and v.type == "string":
            template = "(COALESCE({0}, '') <> '')" if negated else "(COALESCE({0}, '') = '')"
        else:
            template = "({0} IS NOT NULL)" if negated else "({0} IS NULL)"
        return self.value(template, [v], "boolean", pos)

    def common_list(self, subject: _Value, items: Sequence[_Value], what: str, ordered: bool) -> tuple[_Value, list[_Value]]:
        """``subject`` and ``items`` brought to one comparable type (for IN, BETWEEN, CASE x WHEN)."""
        if {subject.type, *(item.type for item in items)} == {"integer", "number"}:
            subject, items = self.to_float(subject), [self.to_float(item) for item in items]
        pairs = [self.compatible(subject, item, what, item.pos, ordered=ordered) for item in items]
        if len({left.type for left, _, _ in pairs}) > 1:
            raise self.error(f"{what} compares values of different types", subject.pos)
        subject = pairs[0][0]
        out = [right for _, right, _ in pairs]
        if any(common == "datetime" for _, _, common in pairs):
            subject = self.to_datetime(subject)
            out = [self.to_datetime(item) for item in out]
        return subject, out

    def node_in(self, node: _Node) -> _Value:
        subject, *items = (self.node(arg) for arg in node.args)
        subject, items = self.common_list(subject, items, "IN", ordered=False)
        template = "({0} %sIN (%s))" % ("NOT " if node.extra else "", _placeholders(len(items), 1))
        return self.value(template, [subject, *items], "boolean", node.pos)

    def node_between(self, node: _Node) -> _Value:
        subject, low, high = (self.node(arg) for arg in node.args)
        subject, (low, high) = self.common_list(subject, [low, high], "BETWEEN", ordered=True)
        template = "(%s %sBETWEEN %s AND %s)" % (
            self.collated(subject) % 0,
            "NOT " if node.extra else "",
            self.collated(low) % 1,
            self.collated(high) % 2,
        )
        return self.value(template, [subject, low, high], "boolean", node.pos)

    def node_case(self, node: _Node) -> _Value:
        subject_node, default_node = node.extra
        subject = self.node(subject_node) if subject_node is not None else None
        conditions = [self.node(condition) for condition in node.args[::2]]
        results = [self.node(result) for result in node.args[1::2]]
        if subject is not None:
            subject, conditions = self.common_list(subject, conditions, "CASE ... WHEN", ordered=False)
        else:
            for condition in conditions:
                self.require(condition, ("boolean",), "WHEN")
        default = self.node(default_node) if default_node is not None else _Value(sa.null(), "null", node.pos)
        result_type, branches = self.unify([*results, default], "CASE", node.pos)
        args: list[_Value] = []
        parts = ["(CASE"]
        if subject is not None:
            args.append(subject)
            parts.append("{0}")
        for condition, result in zip(conditions, branches[:-1]):
            parts.append("WHEN {%d} THEN {%d}" % (len(args), len(args) + 1))
            args.extend((condition, result))
        parts.append("ELSE {%d} END)" % len(args))
        args.append(branches[-1])
        return self.value(" ".join(parts), args, result_type, node.pos)

    # -- functions
    def node_call(self, node: _Node) -> _Value:
        name = node.value
        spec = FUNCTIONS.get(name)
        if spec is None:
            suggestion = closest_name(name, FUNCTIONS)
            hint = f" (did you mean {suggestion}()?)" if suggestion else ""
            raise FormulaError(
                f"unknown function {node.extra}() at position {node.pos}{hint}. Available functions: {', '.join(FUNCTIONS)}",
                formula=self.formula,
                position=node.pos,
                function=node.extra,
                suggestion=suggestion,
                calculation=self.calculation,
            )
        count = len(node.args)
        if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
            raise self.error(f"{spec.signature} takes {_arity(spec)}, got {count}", node.pos)
        if name in ("date", "datetime") and node.args[0].kind == "literal" and isinstance(node.args[0].value, str):
            return self.typed_literal(name, node.args[0].value, node.args[0].pos)
        args = [self.node(arg) for arg in node.args]
        return getattr(self, "fn_" + name)(args, node.pos)

    def fn_if(self, args: list[_Value], pos: int) -> _Value:
        condition, a, b = args
        self.require(condition, ("boolean",), "the condition of if()")
        result_type, (a, b) = self.unify([a, b], "if()", pos)
        return self.value("(CASE WHEN {0} THEN {1} ELSE {2} END)", [condition, a, b], result_type, pos)

    def fn_coalesce(self, args: list[_Value], pos: int) -> _Value:
        result_type, values = self.unify(args, "coalesce()", pos)
        if len(values) == 1:
            return values[0]
        return self.value("COALESCE(%s)" % _placeholders(len(values)), values, result_type, pos)

    def fn_is_empty(self, args: list[_Value], pos: int) -> _Value:
        return self.emptiness(args[0], True, False, pos)

    def fn_is_not_empty(self, args: list[_Value], pos: int) -> _Value:
        return self.emptiness(args[0], True, True, pos)

    def fn_lower(self, args: list[_Value], pos: int) -> _Value:
        self.require(args[0], ("string",), "lower()")
        return self.value("LOWER({0} COLLATE \"C\")" if self.pg else "LOWER({0})", args, "string", pos)

    def fn_upper(self, args: list[_Value], pos: int) -> _Value:
        self.require(args[0], ("string",), "upper()")
        return self.value("UPPER({0} COLLATE \"C\")" if self.pg else "UPPER({0})", args, "string", pos)

    def fn_length(self, args: list[_Value], pos: int) -> _Value:
        self.require(args[0], ("string",), "length()")
        return self.value("LENGTH({0})", args, "integer", pos)

    def fn_trim(self, args: list[_Value], pos: int) -> _Value:
        self.require(args[0], ("string",), "trim()")
        return self.value("TRIM({0})", args, "string", pos)

    def fn_concat(self, args: list[_Value], pos: int) -> _Value:
        return self.concat(args, pos, "concat()", null_as_empty=True)

    def fn_round(self, args: list[_Value], pos: int) -> _Value:
        """Half away from zero, computed with the same IEEE operations on both engines: x * 10^digits,
        nudged up by 4 units in the last place (so 0.285 -> 0.29 as on paper, although 0.285 is stored
        as 0.28499999999999998), rounded, divided back. From 2^40 on, 4 units in the last place are a
        visible amount (3.0 * 10^15 nudged is 3000000000000002.5): no nudge there, where the product's
        own rounding already lands on the decimal meant. Numbers of 2^52 and more have no fraction."""
        x = args[0]
        self.require(x, _NUMERIC, "round()")
        digits = 0
        if len(args) == 2:
            d = args[1]
            if not (d.is_literal and d.type == "integer" and 0 <= d.literal <= 15):
                raise self.error("the digits of round(x, digits) must be a whole number from 0 to 15", d.pos)
            digits = d.literal
        if x.type == "integer":
            return x
        scale = self.lit("number", float(10**digits), pos)
        nudge = self.lit("number", 1.0 + 4 * 2.0**-52, pos)
        if self.pg:
            r = "pb__let.x * pb__let.p * pb__let.k"
            plain = "pb__let.x * pb__let.p"
            template = (
                "(SELECT CASE WHEN ABS(pb__let.x) >= 4503599627370496 THEN pb__let.x "
                f"WHEN ABS({plain}) >= 4503599627370496 THEN pb__let.x "
                f"WHEN ABS({plain}) >= 1099511627776 THEN SIGN({plain}) * TRUNC(ABS({plain}) + 0.5) / pb__let.p "
                f"ELSE SIGN({r}) * TRUNC(ABS({r}) + 0.5) / pb__let.p END "
                "FROM (SELECT {0} AS x, {1} AS p, {2} AS k OFFSET 0) AS pb__let)"
            )
        else:
            # SQLite's ROUND(r, 0) is (r >= 0 ? 1 : -1) * (int)(|r| + 0.5): the same operations.
            template = (
                "(CASE WHEN ABS({0} * {1}) >= 4503599627370496 THEN {0} "
                "WHEN ABS({0} * {1}) >= 1099511627776 THEN ROUND({0} * {1}, 0) / {1} "
                "ELSE ROUND({0} * {1} * {2}, 0) / {1} END)"
            )
        return self.value(template, [x, scale, nudge], "number", pos)

    def fn_abs(self, args: list[_Value], pos: int) -> _Value:
        x = args[0]
        self.require(x, _NUMERIC, "abs()")
        if x.type == "number":
            return self.value("ABS({0})", [x], "number", pos)
        smallest = "CAST(-9223372036854775808 AS BIGINT)" if self.pg else "-9223372036854775808"
        return self.value("ABS(NULLIF({0}, %s))" % smallest, [x], "integer", pos)

    def fn_now(self, args: list[_Value], pos: int) -> _Value:
        callable_ = _utc_now if self.pg else _utc_now_micros
        param = sa.bindparam("pb_now", callable_=callable_, type_=sql_type(self.dialect, "datetime"), unique=True)
        return _Value(macro("{0}", param, type_=param.type, kind="now"), "datetime", pos)

    def fn_today(self, args: list[_Value], pos: int) -> _Value:
        callable_ = _utc_today if self.pg else _utc_today_text
        param = sa.bindparam("pb_today", callable_=callable_, type_=sql_type(self.dialect, "date"), unique=True)
        return _Value(macro("{0}", param, type_=param.type, kind="today"), "date", pos)

    def fn_date(self, args: list[_Value], pos: int) -> _Value:
        x = args[0]
        self.require(x, ("date", "datetime"), "date() (or a 'YYYY-MM-DD' text)")
        return self.to_date(x)

    def fn_datetime(self, args: list[_Value], pos: int) -> _Value:
        x = args[0]
        self.require(x, ("date", "datetime"), "datetime() (or an ISO 8601 text)")
        return self.to_datetime(x)

    def _add(self, unit: str, args: list[_Value], pos: int) -> _Value:
        target, amount = args
        self.require(target, ("date", "datetime") if unit == "days" else ("datetime",), f"add_{unit}()")
        return self.shift(target, amount, unit, pos)

    def fn_add_days(self, args: list[_Value], pos: int) -> _Value:
        return self._add("days", args, pos)

    def fn_add_hours(self, args: list[_Value], pos: int) -> _Value:
        return self._add("hours", args, pos)

    def fn_add_minutes(self, args: list[_Value], pos: int) -> _Value:
        return self._add("minutes", args, pos)

    def fn_add_seconds(self, args: list[_Value], pos: int) -> _Value:
        return self._add("seconds", args, pos)

    def _between(self, unit: str, args: list[_Value], pos: int) -> _Value:
        start, end = args
        if start.type == "string" and end.type in ("date", "datetime"):
            start = self.coerce_literal(start, end.type)
        if end.type == "string" and start.type in ("date", "datetime"):
            end = self.coerce_literal(end, start.type)
        return self.between(unit, start, end, pos)

    def fn_days_between(self, args: list[_Value], pos: int) -> _Value:
        return self._between("days", args, pos)

    def fn_hours_between(self, args: list[_Value], pos: int) -> _Value:
        return self._between("hours", args, pos)

    def fn_minutes_between(self, args: list[_Value], pos: int) -> _Value:
        return self._between("minutes", args, pos)

    def fn_seconds_between(self, args: list[_Value], pos: int) -> _Value:
        return self._between("seconds", args, pos)


def _pg_float_template(op: str) -> str:
    """PostgreSQL SQL for ``{0} op {1}`` on doubles with SQLite's IEEE answers and never an error.

    Scaling by 2^k is exact while results stay normal, and rounding commutes with it, so comparing a
    scaled result with a scaled threshold decides exactly whether the real result overflows (is at least
    2^1024 - 2^970) or underflows to zero (is at most 2^-1075)."""
    P = _P2
    if op in ("+", "-"):
        # Two operands below 2^1023 cannot overflow; one below 1e290 (< half an ulp of the largest
        # double) cannot push the other over; otherwise halves are exact and decide.
        x, y = "pb__let.x", "pb__let.y"
        body = (
            f"CASE WHEN ABS({x}) < {P[1023]} AND ABS({y}) < {P[1023]} THEN {x} {op} {y} "
            f"WHEN ABS({x}) < 1e290 OR ABS({y}) < 1e290 THEN {x} {op} {y} "
            f"WHEN ABS({x} * 0.5 {op} {y} * 0.5) >= {P[1023]} THEN NULL ELSE {x} {op} {y} END"
        )
        return "(SELECT %s FROM (SELECT {0} AS x, {1} AS y OFFSET 0) AS pb__let)" % body
    x, y, k, xh, yh = "pb__s.x", "pb__s.y", "pb__s.k", "pb__s.xh", "pb__s.yh"
    scaled = f"ABS({xh} {op} {yh})"
    zero = f"{x} * 0.0 {op} {y}"
    if op == "*":
        first = f"WHEN {x} = 0 OR {y} = 0 THEN {x} * {y} "
        k_sql = "pb__b.kx + pb__b.ky"
    else:
        first = f"WHEN {y} = 0 THEN NULL WHEN {x} = 0 THEN {x} / {y} "
        k_sql = "pb__b.kx - pb__b.ky"
    body = (
        f"CASE {first}WHEN {k} = 0 THEN {x} {op} {y} "
        f"WHEN {k} = 1 THEN CASE WHEN {scaled} >= {P[424]} THEN NULL ELSE {x} {op} {y} END "
        f"WHEN {k} = 2 THEN CASE WHEN {scaled} >= {P[-176]} THEN NULL ELSE {x} {op} {y} END "
        f"WHEN {k} = -1 THEN CASE WHEN {scaled} <= {P[-475]} THEN {zero} ELSE {x} {op} {y} END "
        f"ELSE CASE WHEN {scaled} <= {P[125]} THEN {zero} ELSE {x} {op} {y} END END"
    )

    def bucket(v: str) -> str:
        return f"CASE WHEN ABS({v}) < {P[-511]} THEN -1 WHEN ABS({v}) > {P[511]} THEN 1 ELSE 0 END"

    def factor(v: str) -> str:
        return f"CASE WHEN ABS({v}) < {P[-511]} THEN {P[600]} WHEN ABS({v}) > {P[511]} THEN {P[-600]} ELSE 1.0 END"

    buckets = (
        f"SELECT pb__v.x, pb__v.y, {bucket('pb__v.x')} AS kx, {bucket('pb__v.y')} AS ky, "
        f"{factor('pb__v.x')} AS fx, {factor('pb__v.y')} AS fy FROM (SELECT {{0}} AS x, {{1}} AS y OFFSET 0) AS pb__v OFFSET 0"
    )
    scaled_sql = (
        f"SELECT pb__b.x, pb__b.y, {k_sql} AS k, pb__b.x * pb__b.fx AS xh, pb__b.y * pb__b.fy AS yh "
        f"FROM ({buckets}) AS pb__b OFFSET 0"
    )
    return f"(SELECT {body} FROM ({scaled_sql}) AS pb__s)"


_SQLITE_MARGIN = 4  # function calls a caller may still wrap around a formula (filters, the view's query)


def _sqlite_parses(expr: Any) -> bool:
    """Whether this SQLite library parses the formula's SQL with room to spare.

    SQLite's parser has a fixed stack (about 30 nested function calls in 3.40) and limits expression
    depth; asking the library itself is the exact test. Only the parse matters: the statement is prepared
    on an empty in-memory database, so names are unknown and parameters unbound."""
    sql = str(expr.compile(dialect=sqlite_dialect.dialect()))
    statement = "EXPLAIN SELECT " + "abs(" * _SQLITE_MARGIN + sql + ")" * _SQLITE_MARGIN
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute(statement)
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "stack overflow" in text or "too large" in text or "too many" in text or "too deep" in text:
            return False
    except sqlite3.Error:
        pass  # unbound parameters: parsed fine
    finally:
        connection.close()
    return True


def _dialect(name: str) -> str:
    """"sqlite" or "postgresql" (SQLAlchemy's dialect names; "postgres" is accepted too)."""
    if name == "sqlite":
        return name
    if name in ("postgresql", "postgres"):
        return "postgresql"
    raise ValueError(f"unknown dialect {name!r}: expected one of {', '.join(DIALECTS)}")


def _arity(spec: FunctionSpec) -> str:
    if spec.max_args is None:
        return f"at least {spec.min_args} argument{'s' if spec.min_args != 1 else ''}"
    if spec.min_args == spec.max_args:
        return f"{spec.min_args} argument{'s' if spec.min_args != 1 else ''}" if spec.min_args else "no arguments"
    return f"{spec.min_args} to {spec.max_args} arguments"


def _type_words(type_name: str) -> str:
    return {
        "string": "text",
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean",
        "date": "a date",
        "datetime": "a datetime",
        "json": "json",
        "null": "null",
        "interval": "an interval",
    }.get(type_name, type_name)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc_now_micros() -> int:
    return encoder("sqlite", "datetime")(_utc_now())


def _utc_today() -> dt.date:
    return _utc_now().date()


def _utc_today_text() -> str:
    return _utc_today().isoformat()


# ---------------------------------------------------------------------------------------------
# Public entry points


def compile_formula(formula: str, fields: Mapping[str, FieldRef], dialect: str) -> Formula:
    """Parse, check and compile one formula against ``fields`` for ``dialect`` ("sqlite"/"postgresql")."""
    compiler = _Compiler(formula, fields, dialect)
    result = compiler.compile(_parse(formula))
    return Formula(formula=formula, type=result.type, expr=result.expr, references=frozenset(compiler.references))


def compile_calculations(
    calcs: Sequence[tuple[str, str]], fields: Mapping[str, FieldRef], dialect: str
) -> dict[str, FieldRef]:
    """Compile named calculations that may use each other (in any order) and the ``fields``.

    Returns one FieldRef per calculation, in the given order. Raises FormulaError for a bad name, a
    name used twice or clashing with a field, a bad formula, calculations that refer to each other in a
    cycle (``details["cycle"]`` lists it), or a formula too long to compile at all."""
    try:
        return _compile_calculations(calcs, fields, dialect)
    except RecursionError:
        # A long flat chain (``1+1+1...`` hundreds of terms) is parsed and compiled recursively.
        raise FormulaError(
            "a formula is too complex to compile: it has too many operations; split it into calculations", formula=""
        ) from None


def _compile_calculations(calcs: Sequence[tuple[str, str]], fields: Mapping[str, FieldRef], dialect: str) -> dict[str, FieldRef]:
    parsed: dict[str, tuple[str, _Node]] = {}
    for index, item in enumerate(calcs):
        try:
            name, formula = item
        except (TypeError, ValueError):
            raise FormulaError(f"calculations[{index}] must be a (name, formula) pair", formula="") from None
        if not isinstance(formula, str):
            raise FormulaError(f"calculation {name!r}: the formula must be text", formula=str(formula)[:200], calculation=str(name))
        try:
            validate_column_name(name)
        except Invalid as exc:
            raise FormulaError(f"calculation name {name!r}: {exc.message}", formula=formula, calculation=str(name)) from None
        if name in fields:
            raise FormulaError(
                f"calculation {name!r} has the same name as a field of the dataset", formula=formula, calculation=name
            )
        if name in parsed:
            raise FormulaError(f"calculation {name!r} is defined twice", formula=formula, calculation=name)
        try:
            parsed[name] = (formula, _parse(formula))
        except FormulaError as exc:
            raise _in_calculation(exc, name) from None

    depends = {name: sorted(_field_names(tree, set()) & parsed.keys(), key=list(parsed).index) for name, (_, tree) in parsed.items()}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    for start in parsed:
        if state.get(start) == 2:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        state[start] = 1
        while stack:
            name, child_index = stack[-1]
            children = depends[name]
            if child_index < len(children):
                stack[-1] = (name, child_index + 1)
                child = children[child_index]
                if state.get(child) == 1:
                    cycle = path[path.index(child) :] + [child]
                    formula = parsed[cycle[0]][0]
                    raise FormulaError(
                        "calculations refer to each other in a cycle: " + " -> ".join(cycle),
                        formula=formula,
                        calculation=cycle[0],
                        cycle=cycle,
                    )
                if state.get(child) != 2:
                    state[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                state[name] = 2
                order.append(name)
                stack.pop()
                path.pop()

    known: dict[str, FieldRef] = dict(fields)
    compiled: dict[str, FieldRef] = {}
    for name in order:
        formula, tree = parsed[name]
        try:
            result = _Compiler(formula, known, dialect, calculation=name).compile(tree)
        except FormulaError as exc:
            raise _in_calculation(exc, name) from None
        ref = FieldRef(name=name, type=result.type, expr=result.expr)
        known[name] = ref
        compiled[name] = ref
    return {name: compiled[name] for name in parsed}


def _in_calculation(exc: FormulaError, name: str) -> FormulaError:
    details = dict(exc.details or {})
    details["calculation"] = name
    prefix = f"calculation {name!r}: "
    message = exc.message if exc.message.startswith(prefix) else prefix + exc.message
    error = FormulaError(message, formula=details.pop("formula", ""), position=details.pop("position", None), **details)
    return error
