"""Run filter expressions: ``LOSS.W >= 0.2 and core/val_partial_chain_acc > 0.7 and tag:baseline``.

One small language, read by a hand-written tokenizer and recursive-descent parser (user text is never
given to ``eval``, ``exec`` or ``ast``), used by the Runs page and ``python -m workbench runs --filter``.
Pure: pandas and numpy only; the table it filters is :func:`workbench.tracker.run_table`'s.

Grammar (keywords and ``tag:`` are case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | "tag:" NAME | comparison
    comparison := KEY OP VALUE
    OP         := "==" | "=" | "!=" | "<" | "<=" | ">" | ">=" | "~"
    KEY        := a bare word (``LOSS.W``, ``core/val_partial_chain_acc``, ``status``) or a quoted string
    VALUE      := a number | 'text' | "text" | true | false | null | a bare word (text: ``status == running``)
    NAME       := a quoted string (``tag:"name with spaces"``), or anything up to the next whitespace or
                  parenthesis (``tag:<b>``)

A bare word is a run of characters other than whitespace, parentheses, quotes and ``= ! < > ~``.
An empty (or all-blank) expression keeps every run.

Meaning, per run (one row of the table):

- a number compares with numbers (a column of numbers held as Python objects counts; a bool is not a
  number); text with text (``==`` exact, ``<`` ... in code-point order); ``true`` / ``false`` with
  booleans (``==`` / ``!=`` only). A column that holds no value of the compared kind is an error that
  says what it holds (``LOSS.W == abc``), never a silent empty result.
- ``~`` is a case-insensitive substring test on text; its value is always read as text
  (``name ~ 0.3`` looks for ``"0.3"``). A list cell (``tags``, ``DATA.RANKS``) reads as its items joined
  by ``", "``.
- a missing value (None, NaN) never matches a comparison, ``!=`` included; ``KEY == null`` matches
  exactly the missing ones and ``KEY != null`` the others.
- ``tag:NAME`` matches runs whose ``tags`` list holds NAME exactly; an unknown tag matches no run.
- a KEY that is not a column of the table is an error naming the closest known keys (difflib).

Errors are :class:`FilterError`: ``position`` is the 0-based column of the bad token, and the message
quotes the expression with a caret under it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

TAGS_COLUMN = "tags"  # the run table's column of tag lists (workbench.tracker.run_table)
TAG_PREFIX = "tag:"
OPERATORS = ("==", "=", "!=", "<", "<=", ">", ">=", "~")
ORDERING = ("<", "<=", ">", ">=")
KEYWORDS = ("and", "or", "not")
LITERALS = {"true": True, "false": False, "null": None}
SUGGESTIONS = 3  # closest known keys named for an unknown one
MAX_DEPTH = 100  # nested parentheses / `not`s: deeper is an error, never a RecursionError

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = "()=!<>~'\""  # never part of a bare word


class FilterError(ValueError):
    """A filter expression that cannot be read or applied to the run table.

    ``position``: the 0-based column of the bad token in ``expression`` (``len(expression)`` at its end);
    ``reason``: the one-line cause; ``str(error)``: the reason, then the expression with a caret under
    the bad token.
    """

    def __init__(self, reason: str, expression: str, position: int):
        self.reason, self.expression = reason, expression
        self.position = max(0, min(int(position), len(expression)))
        super().__init__(f"{reason}\n{caret_lines(expression, self.position)}")


def caret_lines(expression: str, position: int, indent: str = "  ") -> str:
    """``expression`` on one line and a caret under column ``position`` (wide characters count as two
    columns, whitespace such as tabs and newlines is shown as one space, so the caret lines up)."""
    shown = "".join(" " if c.isspace() else c for c in expression)
    pad = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in shown[:position])
    return f"{indent}{shown}\n{indent}{' ' * pad}^"


# ---------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Token:
    """``kind``: ``word``, ``string``, ``op``, ``(``, ``)``, ``tag`` or ``end``; ``text``: the word, the
    string's content, the operator or the tag name; ``raw``: the source text; ``pos``: its column."""

    kind: str
    text: str
    raw: str
    pos: int


def tokenize(expression: str) -> list[Token]:
    """The tokens of ``expression``, ending with an ``end`` token at ``len(expression)``."""
    tokens, i, n = [], 0, len(expression)
    while i < n:
        c = expression[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token(c, c, c, i))
            i += 1
        elif c in "=!<>~":
            op = expression[i:i + 2] if expression[i:i + 2] in OPERATORS else c
            if op not in OPERATORS:  # a lone "!"
                raise FilterError("unexpected `!`: did you mean `!=`?", expression, i)
            tokens.append(Token("op", op, op, i))
            i += len(op)
        elif c in "'\"":
            text, end = _string(expression, i)
            tokens.append(Token("string", text, expression[i:end], i))
            i = end
        else:
            end = i
            while end < n and not expression[end].isspace() and expression[end] not in _SPECIAL:
                end += 1
            word = expression[i:end]
            if word[:len(TAG_PREFIX)].lower() == TAG_PREFIX:
                start = i + len(TAG_PREFIX)
                if start < n and expression[start] in "'\"":  # tag:"name with spaces"
                    name, raw_end = _string(expression, start)
                else:  # a bare tag name may hold anything but whitespace and parentheses: tag:<b>, tag:it's
                    raw_end = start
                    while raw_end < n and not expression[raw_end].isspace() and expression[raw_end] not in "()":
                        raw_end += 1
                    name = expression[start:raw_end]
                if not name:
                    raise FilterError(f"expected a tag name after `{expression[i:start]}` (tag:NAME or "
                                      'tag:"a name")', expression, raw_end)
                tokens.append(Token("tag", name, expression[i:raw_end], i))
                i = raw_end
            else:
                tokens.append(Token("word", word, word, i))
                i = end
    tokens.append(Token("end", "", "", n))
    return tokens


def _string(expression: str, start: int) -> tuple[str, int]:
    """The quoted string at ``start`` (``'..'`` or ``".."``; a backslash escapes the next character):
    (its content, the index after its closing quote)."""
    quote, out, i = expression[start], [], start + 1
    while i < len(expression):
        c = expression[i]
        if c == "\\" and i + 1 < len(expression):
            out.append(expression[i + 1])
            i += 2
        elif c == quote:
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise FilterError(f"unterminated string: no closing {quote} for the one opened here", expression, start)


# ---------------------------------------------------------------------- syntax tree
@dataclass(frozen=True)
class Compare:
    """``KEY OP VALUE``; ``kind`` of the value: ``number``, ``text``, ``bool`` or ``null``."""

    key: str
    key_pos: int
    op: str
    value: object
    kind: str
    raw: str
    value_pos: int


@dataclass(frozen=True)
class Tag:
    name: str
    pos: int


@dataclass(frozen=True)
class Not:
    child: object


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` over two or more children."""

    op: str
    children: tuple


class _Parser:
    """Recursive descent over :func:`tokenize`'s tokens (one method per grammar rule)."""

    def __init__(self, expression: str):
        self.expression = expression
        self.tokens = tokenize(expression)
        self.i = 0
        self.depth = 0

    def error(self, reason: str, token: Token) -> FilterError:
        return FilterError(reason, self.expression, token.pos)

    def expected(self, what: str, token: Token) -> FilterError:
        """"expected WHAT, got `token`", or at the end "unexpected end of expression: expected WHAT"."""
        if token.kind == "end":
            return self.error(f"unexpected end of expression: expected {what}", token)
        return self.error(f"expected {what}, got `{token.raw}`", token)

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def keyword(self, word: str) -> bool:
        """Consume the keyword ``word`` if it comes next."""
        t = self.token
        if t.kind == "word" and t.text.lower() == word:
            self.i += 1
            return True
        return False

    def parse(self):
        tree = self.or_expr()
        t = self.token
        if t.kind == ")":
            raise self.error("unmatched `)`", t)
        if t.kind != "end":
            raise self.expected("`and`, `or` or the end after a condition", t)
        return tree

    def or_expr(self):
        children = [self.and_expr()]
        while self.keyword("or"):
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else BoolOp("or", tuple(children))

    def and_expr(self):
        children = [self.not_expr()]
        while self.keyword("and"):
            children.append(self.not_expr())
        return children[0] if len(children) == 1 else BoolOp("and", tuple(children))

    def not_expr(self):
        t = self.token
        if t.kind == "(" or (t.kind == "word" and t.text.lower() == "not"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"nested more than {MAX_DEPTH} deep (parentheses and `not`)", t)
            tree = self._nested()
            self.depth -= 1
            return tree
        if t.kind == "tag":
            self.i += 1
            return Tag(t.text, t.pos)
        return self.comparison()

    def _nested(self):
        """``not X`` or ``( X )`` (the caller counts the depth)."""
        if self.keyword("not"):
            return Not(self.not_expr())
        t = self.token
        if t.kind == "(":
            self.i += 1
            tree = self.or_expr()
            if self.token.kind != ")":
                raise self.expected(f"`)` to close the `(` at column {t.pos + 1}", self.token)
            self.i += 1
            return tree
        raise AssertionError(f"_nested called at {t}")  # not_expr calls it only before `not` or `(`

    def comparison(self) -> Compare:
        key = self.token
        if key.kind not in ("word", "string") or (key.kind == "word" and key.text.lower() in KEYWORDS):
            raise self.expected("a condition (KEY OP VALUE, e.g. LOSS.W >= 0.2, or tag:NAME)", key)
        self.i += 1
        op = self.token
        if op.kind != "op":
            raise self.expected(f"an operator ({', '.join(OPERATORS)}) after `{key.raw}`", op)
        self.i += 1
        value = self.token
        if value.kind not in ("word", "string", "tag") or (value.kind == "word" and value.text.lower() in KEYWORDS):
            raise self.expected(f"a value after `{op.text}`", value)
        self.i += 1
        return _compare(self, key, op.text, value)


def _compare(parser: _Parser, key: Token, op: str, value: Token) -> Compare:
    """The comparison node, with the value typed and the operator checked against its kind."""
    if value.kind == "string":
        kind, typed = "text", value.text
    elif value.kind == "tag":  # `name == tag:x`: a bare word that happens to start with "tag:"
        kind, typed = "text", value.raw
    elif value.text.lower() in LITERALS:
        typed = LITERALS[value.text.lower()]
        kind = "null" if typed is None else "bool"
    elif _NUMBER.fullmatch(value.text):
        kind, typed = "number", float(value.text)
    else:
        kind, typed = "text", value.text
    if op == "~":
        if kind == "null":
            raise parser.error("`~` looks for text inside text; use `== null` / `!= null` for missing values", value)
        if value.kind == "word":  # a bare word after ~ is the text as written: name ~ 0.3 looks for "0.3"
            kind, typed = "text", value.text
    elif op in ORDERING and kind in ("null", "bool"):
        raise parser.error(f"`{value.raw}` compares with `==` or `!=` only, got `{op}`", value)
    return Compare(key.text, key.pos, "==" if op == "=" else op, typed, kind, value.raw, value.pos)


# ---------------------------------------------------------------------- the filter
@dataclass(frozen=True)
class RunFilter:
    """A parsed filter expression (:func:`parse_filter`); :meth:`mask` applies it to a run table."""

    expression: str
    tree: object  # None: the empty expression, which keeps every run

    @property
    def keys(self) -> set[str]:
        """The table columns the expression reads (``tags`` when it has a ``tag:`` condition)."""
        out: set[str] = set()
        _walk(self.tree, out)
        return out

    def mask(self, table: pd.DataFrame) -> pd.Series:
        """A bool Series over ``table``'s index: True for the runs (rows) the expression keeps.

        Raises :class:`FilterError` for a key that is not a column of ``table`` (naming the closest
        ones) and for a value of a kind the column does not hold (a number against text, ...).
        """
        if self.tree is None:
            return pd.Series(True, index=table.index, dtype=bool)
        return pd.Series(_evaluate(self, self.tree, table), index=table.index, dtype=bool)


def parse_filter(text: str) -> RunFilter:
    """Parse a filter expression (see the module docstring); an empty one keeps every run.

    Raises :class:`FilterError` (with the column of the bad token) for anything it cannot read.
    """
    if not isinstance(text, str):
        raise FilterError(f"a filter expression is text, got {type(text).__name__}", "", 0)
    if not text.strip():
        return RunFilter(text, None)
    return RunFilter(text, _Parser(text).parse())


def _walk(tree, out: set[str]) -> None:
    if isinstance(tree, Compare):
        out.add(tree.key)
    elif isinstance(tree, Tag):
        out.add(TAGS_COLUMN)
    elif isinstance(tree, Not):
        _walk(tree.child, out)
    elif isinstance(tree, BoolOp):
        for child in tree.children:
            _walk(child, out)


def _evaluate(f: RunFilter, tree, table: pd.DataFrame) -> np.ndarray:
    """The expression's bool array over the table's rows."""
    if isinstance(tree, BoolOp):
        parts = [_evaluate(f, child, table) for child in tree.children]
        return np.logical_and.reduce(parts) if tree.op == "and" else np.logical_or.reduce(parts)
    if isinstance(tree, Not):
        return ~_evaluate(f, tree.child, table)
    if isinstance(tree, Tag):
        if TAGS_COLUMN not in table.columns:
            return np.zeros(len(table), dtype=bool)
        return np.fromiter((_has_tag(cell, tree.name) for cell in table[TAGS_COLUMN]), dtype=bool, count=len(table))
    return _compare_column(f, tree, table)


def _has_tag(cell, name: str) -> bool:
    return isinstance(cell, (list, tuple, set, frozenset, np.ndarray)) and name in list(cell)


def _compare_column(f: RunFilter, c: Compare, table: pd.DataFrame) -> np.ndarray:
    if c.key not in table.columns:
        known = [str(k) for k in table.columns]
        close = difflib.get_close_matches(c.key, known, n=SUGGESTIONS, cutoff=0.6)
        names = ", ".join(close[:-1]) + " or " + close[-1] if len(close) > 1 else "".join(close)
        hint = f"; did you mean {names}?" if close else "; see `runs --json` for the keys runs have"
        raise FilterError(f"no run has the key `{c.key}`{hint}", f.expression, c.key_pos)
    column = table[c.key]
    if isinstance(column, pd.DataFrame):  # a duplicated column name: a bug in the table, not in the expression
        raise FilterError(f"the run table has the column `{c.key}` twice; cannot tell which one to read",
                          f.expression, c.key_pos)
    missing, kinds, numbers, texts = _cells(column)
    if c.kind == "null":
        return missing if c.op == "==" else ~missing
    wanted = {"number": "number", "text": "text", "bool": "bool"}[c.kind]
    present = kinds == wanted
    if not present.any() and (~missing).any():
        raise FilterError(_mismatch(c, column, kinds, missing), f.expression, c.value_pos)
    out = np.zeros(len(column), dtype=bool)
    if not present.any():
        return out
    if c.kind == "number":
        values, target = numbers[present], float(c.value)
    elif c.kind == "bool":
        values, target = np.array([bool(v) for v in column.to_numpy()[present]]), bool(c.value)
    else:
        values, target = texts[present], str(c.value)
        if c.op == "~":
            needle = target.casefold()
            out[present] = [needle in v.casefold() for v in values]
            return out
    out[present] = _apply(c.op, values, target)
    return out


def _apply(op: str, values: np.ndarray, target) -> np.ndarray:
    if values.dtype == object:  # text: elementwise Python comparison
        compare = {"==": lambda v: v == target, "!=": lambda v: v != target, "<": lambda v: v < target,
                   "<=": lambda v: v <= target, ">": lambda v: v > target, ">=": lambda v: v >= target}[op]
        return np.fromiter((compare(v) for v in values), dtype=bool, count=len(values))
    return {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
            ">=": np.greater_equal}[op](values, target)


def _cells(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: missing (bool), kind (``number`` / ``text`` / ``bool`` / ``missing``), the value as a
    float (NaN where not a number) and as text (None where not text)."""
    n = len(column)
    dtype = column.dtype
    missing = column.isna().to_numpy(dtype=bool) if not dtype == object else None
    if dtype != object and pd.api.types.is_bool_dtype(dtype):
        kinds = np.where(missing, "missing", "bool").astype(object)
        return missing, kinds, np.full(n, np.nan), np.full(n, None, dtype=object)
    if dtype != object and pd.api.types.is_numeric_dtype(dtype):
        numbers = column.to_numpy(dtype=float, na_value=np.nan)
        kinds = np.where(missing, "missing", "number").astype(object)
        return missing, kinds, numbers, np.full(n, None, dtype=object)
    if isinstance(dtype, pd.StringDtype):
        texts = np.array([None if m else str(v) for v, m in zip(column.to_numpy(), missing)], dtype=object)
        kinds = np.where(missing, "missing", "text").astype(object)
        return missing, kinds, np.full(n, np.nan), texts
    kinds = np.empty(n, dtype=object)
    numbers = np.full(n, np.nan)
    texts = np.full(n, None, dtype=object)
    for i, v in enumerate(column.to_numpy(dtype=object)):
        kind, number, text = _cell(v)
        kinds[i], texts[i] = kind, text
        if number is not None:
            numbers[i] = number
    return kinds == "missing", kinds, numbers, texts


def _cell(v) -> tuple[str, float | None, str | None]:
    """One object cell: (kind, number, text)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "missing", None, None
    if isinstance(v, (bool, np.bool_)):
        return "bool", None, None
    if isinstance(v, (int, float, np.integer, np.floating)):
        value = float(v)
        return ("missing", None, None) if math.isnan(value) else ("number", value, None)
    if isinstance(v, str):
        return "text", None, v
    if isinstance(v, (list, tuple, np.ndarray)):
        return "text", None, ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return "text", None, json.dumps(v, sort_keys=True, default=str)
    return "text", None, str(v)


_KIND_WORDS = {"number": "numbers", "text": "text", "bool": "true/false"}


def _mismatch(c: Compare, column: pd.Series, kinds: np.ndarray, missing: np.ndarray) -> str:
    """Why a value of ``c.kind`` cannot be compared with this column (which holds none of that kind)."""
    held = [k for k in ("number", "text", "bool") if (kinds == k).any()]
    example = column.to_numpy(dtype=object)[~missing][0]
    holds = " and ".join(_KIND_WORDS[k] for k in held)
    shown = f"{example!r}" if isinstance(example, str) else json.dumps(example, default=str)
    where = f"`{c.key}` holds {holds} (e.g. {shown})"
    if c.op == "~":
        return f"`~` looks for text inside text, but {where}; compare it with ==, !=, <, <=, > or >="
    if c.kind == "number":
        quote = f"; quote the value to compare it as text: {c.key} {c.op} \"{c.raw}\"" if "text" in held else ""
        return f"{where}, not numbers: it cannot be compared with the number {c.raw}{quote}"
    if c.kind == "bool":
        return f"{where}, not true/false: it cannot be compared with {c.raw}"
    return f"{where}, not text: it cannot be compared with the text {c.raw}"
