"""Run filter expressions (workbench/filters.py): a hand-written parser, checked against a reference
evaluator over the rows (hypothesis), with errors that point at the bad token."""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.filters import FilterError, caret_lines, parse_filter, tokenize


@pytest.fixture
def table() -> pd.DataFrame:
    """A run table as workbench.tracker.run_table builds it: run columns, config keys, metric keys, tag lists."""
    return pd.DataFrame({
        "id": ["r1", "r2", "r3", "r4"],
        "name": ["w0.3-s1", "Baseline run", "w0.5", None],
        "status": ["running", "finished", "failed", "finished"],
        "epochs_done": [3, 10, 0, 10],
        "LOSS.W": [0.1, 0.3, float("nan"), 0.5],
        "TRAIN.AMP": [True, False, None, False],
        "DATA.RANKS": [["taxa", "genus"], ["taxa", "species"], None, ["region"]],
        "TRAIN.INIT_FROM": [None, "r1", None, 7],  # mixed: text, a number, missing
        "core/val_partial_chain_acc": [0.8, 0.65, float("nan"), 0.9],
        "val/acc/sub species": [0.5, 0.6, 0.7, 0.8],
        "tags": [["baseline"], [], ["x y", "<b>"], ["baseline", "🎉"]],
    }, index=[10, 11, 12, 13])  # not 0..n: the mask keeps the table's index


def ids(table, expression) -> list[str]:
    return table.loc[parse_filter(expression).mask(table), "id"].tolist()


def test_the_issue_example_and_each_kind_of_condition(table):
    assert ids(table, "LOSS.W >= 0.2 and core/val_partial_chain_acc > 0.7 and tag:baseline") == ["r4"]
    assert ids(table, "status == running") == ["r1"] == ids(table, "status = 'running'") == ids(table, 'status="running"')
    assert ids(table, "name ~ BASE") == ["r2"]  # ~: case-insensitive substring
    assert ids(table, "name ~ 0.3") == ["r1"]  # ~ reads a bare number as the text written
    assert ids(table, "epochs_done >= 10") == ["r2", "r4"]
    assert ids(table, "TRAIN.AMP == true") == ["r1"] and ids(table, "TRAIN.AMP != TRUE") == ["r2", "r4"]
    assert ids(table, "DATA.RANKS ~ species") == ["r2"]  # a list cell reads as its items joined
    assert ids(table, 'tag:"x y"') == ["r3"] and ids(table, "tag:<b>") == ["r3"] and ids(table, "TAG:🎉") == ["r4"]
    assert ids(table, "tag:nobody-has-it") == []  # an unknown tag is no error: it matches no run
    assert ids(table, "'val/acc/sub species' > 0.65") == ["r3", "r4"]  # a quoted key (a rank name with a space)
    assert ids(table, "TRAIN.INIT_FROM == r1") == ["r2"] and ids(table, "TRAIN.INIT_FROM > 5") == ["r4"]
    assert ids(table, "") == ["r1", "r2", "r3", "r4"] == ids(table, "   ")  # empty: every run


def test_missing_values_never_match_a_comparison_and_null_finds_them(table):
    assert ids(table, "LOSS.W != 0.3") == ["r1", "r4"]  # r3 (NaN) is not "not 0.3"
    assert ids(table, "LOSS.W == null") == ["r3"] and ids(table, "LOSS.W != NULL") == ["r1", "r2", "r4"]
    assert ids(table, "name == null") == ["r4"] and ids(table, "not name ~ w") == ["r2", "r4"]
    assert ids(table, "TRAIN.AMP != false") == ["r1"]  # None is missing, not false


def test_precedence_not_binds_tighter_than_and_which_binds_tighter_than_or(table):
    assert ids(table, "status == failed or status == running and LOSS.W > 0.2") == ["r3"]
    assert ids(table, "(status == failed or status == running) and LOSS.W > 0.05") == ["r1"]
    assert ids(table, "not status == finished and tag:baseline") == ["r1"]
    assert ids(table, "not (status == finished and tag:baseline)") == ["r1", "r2", "r3"]


def test_deep_nesting_is_a_filter_error_not_a_recursion_error(table):
    assert ids(table, "(" * 50 + "not " * 40 + "tag:baseline" + ")" * 50) == ["r1", "r4"]  # 40 nots: even
    for text in ("(" * 5000 + "a == 1", "not " * 5000 + "a == 1"):
        with pytest.raises(FilterError) as e:
            parse_filter(text)
        assert "nested more than 100 deep" in e.value.reason and e.value.position <= 400


def test_keys_are_the_columns_read():
    f = parse_filter("(LOSS.W > 0 or not tag:a) and core/val_loss < 1 and status ~ run")
    assert f.keys == {"LOSS.W", "tags", "core/val_loss", "status"}
    assert parse_filter("").keys == set()


@pytest.mark.parametrize("expression, position, words", [
    ("LOSS.W >=", 9, "unexpected end of expression: expected a value after `>=`"),
    ("LOSS.W 0.2", 7, "expected an operator"),
    ("(LOSS.W > 0.2", 13, "expected `)` to close the `(` at column 1"),
    ("LOSS.W > 0.2)", 12, "unmatched `)`"),
    ("LOSS.W ! 0.2", 7, "did you mean `!=`"),
    ("name == 'abc", 8, "unterminated string"),
    ("tag:", 4, "expected a tag name"),
    ("LOSS.W > 0.2 tag:a", 13, "expected `and`, `or` or the end"),
    ("and LOSS.W > 1", 0, "expected a condition"),
    ("LOSS.W > null", 9, "`null` compares with `==` or `!=` only"),
    ("TRAIN.AMP < true", 12, "`true` compares with `==` or `!=` only"),
    ("name ~ null", 7, "use `== null`"),
])
def test_syntax_errors_point_at_the_bad_token_with_a_caret(expression, position, words):
    with pytest.raises(FilterError) as e:
        parse_filter(expression)
    assert e.value.position == position and words in e.value.reason, str(e.value)
    reason, line, caret = str(e.value).split("\n")
    assert reason == e.value.reason and line == "  " + expression and caret == "  " + " " * position + "^"


@pytest.mark.parametrize("expression, position, words", [
    ("LOSS.WW > 0.2", 0, "no run has the key `LOSS.WW`; did you mean LOSS.W?"),
    ("core/val_partial_chain > 0.7", 0, "did you mean core/val_partial_chain_acc?"),
    ("status > 3", 9, "`status` holds text (e.g. 'running'), not numbers: it cannot be compared with the number 3; "
                      'quote the value to compare it as text: status > "3"'),
    ("LOSS.W == abc", 10, "`LOSS.W` holds numbers (e.g. 0.1), not text: it cannot be compared with the text abc"),
    ("TRAIN.AMP == 1", 13, "`TRAIN.AMP` holds true/false (e.g. true), not numbers"),
    ("LOSS.W == false", 10, "`LOSS.W` holds numbers (e.g. 0.1), not true/false"),
    ("LOSS.W ~ 3", 9, "`~` looks for text inside text, but `LOSS.W` holds numbers"),
])
def test_unknown_keys_and_kind_mismatches_are_clear_errors(table, expression, position, words):
    f = parse_filter(expression)  # these parse: the table decides
    with pytest.raises(FilterError) as e:
        f.mask(table)
    assert e.value.position == position and words in e.value.reason, str(e.value)


def test_the_caret_lines_up_under_wide_characters_and_tabs():
    assert caret_lines("a\tb", 2) == "  a b\n    ^"
    assert caret_lines("🎉 x", 2) == "  🎉 x\n     ^"  # the emoji takes two columns


# ---------------------------------------------------------------------- property tests
NUMS = (-1.0, 0.0, 0.25, 0.5, 1.0, 2.5)
WORDS = ("alpha", "Beta", "gamma-1", "w0.3", "x_y")
TAGS = ("baseline", "x y", "<b>", "'q'", "🎉")
MISSING = (None, float("nan"))


def rows_strategy():
    row = st.fixed_dictionaries({
        "num": st.sampled_from(NUMS + MISSING),
        "text": st.sampled_from(WORDS + (None,)),
        "flag": st.sampled_from((True, False, None)),
        "mixed": st.sampled_from(NUMS[:3] + WORDS[:3] + (True, None)),
        "tags": st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
    })
    return st.lists(row, min_size=1, max_size=8)


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def kind(v) -> str:
    if missing(v):
        return "missing"
    if isinstance(v, bool):
        return "bool"
    return "number" if isinstance(v, (int, float)) else "text"


OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
       ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class Mismatch(Exception):
    """The reference's "no cell of this kind in the column" (the parser's FilterError)."""


def reference_compare(rows, column, op, value, value_kind):
    """The reference meaning of ``column op value`` over the rows (a list of bools), or Mismatch."""
    cells = [r[column] for r in rows]
    if value_kind == "null":
        return [missing(c) == (op == "==") for c in cells]
    wanted = "text" if op == "~" else value_kind
    if not any(kind(c) == wanted for c in cells) and any(not missing(c) for c in cells):
        raise Mismatch
    if op == "~":
        return [kind(c) == "text" and str(value).casefold() in c.casefold() for c in cells]
    return [kind(c) == wanted and OPS[op](c, value) for c in cells]


def comparison_strategy():
    """(expression text, reference function of the rows) for one comparison of a kind the column may hold."""
    number = st.sampled_from(NUMS).map(lambda v: (repr(v), v, "number"))
    text = st.sampled_from(WORDS).flatmap(lambda w: st.sampled_from([(w, w, "text"), (f"'{w}'", w, "text"),
                                                                    (f'"{w}"', w, "text")]))
    boolean = st.sampled_from([("true", True, "bool"), ("FALSE", False, "bool")])
    null = st.just(("null", None, "null"))
    needle = st.sampled_from(("A", "ta", "w0", "1", "x_")).map(lambda w: (w, w, "text"))
    cases = st.one_of(
        st.tuples(st.sampled_from(["num", "mixed"]), st.sampled_from(list(OPS)), number),
        st.tuples(st.sampled_from(["text", "mixed"]), st.sampled_from(list(OPS)), text),
        st.tuples(st.sampled_from(["flag", "mixed"]), st.sampled_from(["==", "!="]), boolean),
        st.tuples(st.sampled_from(["num", "text", "flag", "mixed"]), st.sampled_from(["==", "!="]), null),
        st.tuples(st.sampled_from(["text", "mixed"]), st.just("~"), needle),
    )
    spacing = st.sampled_from([" ", "", "  "])

    def build(case, gap):
        column, op, (raw, value, value_kind) = case
        text = f"{column}{gap}{op}{gap}{raw}"  # operators end a word: `num<-1.0` reads as num < -1.0
        return text, lambda rows: reference_compare(rows, column, op, value, value_kind)

    return st.builds(build, cases, spacing)


def tag_strategy():
    def build(name, case):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        text = f'{case}"{quoted}"' if not name.isalnum() else f"{case}{name}"
        return text, lambda rows: [name in r["tags"] for r in rows]

    return st.builds(build, st.sampled_from(TAGS + ("nobody",)), st.sampled_from(["tag:", "TAG:", "Tag:"]))


def combine(children):
    """Each child: (text, reference, atomic). and/or chains with the reference's own precedence."""
    def build(parts, ops):
        texts = [t if atomic else f"({t})" for t, _, atomic in parts]
        text = texts[0]
        for op, t in zip(ops, texts[1:]):
            text += f" {op} {t}"

        def reference(rows):
            values = [f(rows) for _, f, _ in parts]  # evaluated first: a Mismatch anywhere is an error
            groups, current = [], values[0]
            for op, v in zip(ops, values[1:]):
                if op.lower() == "and":
                    current = [a and b for a, b in zip(current, v)]
                else:
                    groups.append(current)
                    current = v
            groups.append(current)
            return [any(g[i] for g in groups) for i in range(len(rows))]

        return text, reference, len(parts) == 1

    negated = children.map(lambda c: (f"not {c[0] if c[2] else '(' + c[0] + ')'}",
                                      lambda rows, f=c[1]: [not v for v in f(rows)], True))
    grouped = children.map(lambda c: (f"({c[0]})", c[1], True))
    chain = st.lists(children, min_size=2, max_size=4).flatmap(
        lambda parts: st.lists(st.sampled_from(["and", "or", "AND", "Or"]), min_size=len(parts) - 1,
                               max_size=len(parts) - 1).map(lambda ops: build(parts, ops)))
    return st.one_of(negated, grouped, chain)


def expression_strategy():
    base = st.one_of(comparison_strategy(), tag_strategy()).map(lambda c: (c[0], c[1], True))
    return st.recursive(base, combine, max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy(), expression=expression_strategy())
def test_random_expressions_equal_a_reference_evaluator_over_the_rows(rows, expression):
    text, reference, _ = expression
    frame = pd.DataFrame(rows, index=np.arange(len(rows)) * 3 + 5)
    frame["flag"] = frame["flag"].astype(object)  # a config key of booleans with missing runs: object, as run_table's
    frame["mixed"] = pd.Series([r["mixed"] for r in rows], index=frame.index, dtype=object)
    f = parse_filter(text)
    try:
        expected = reference(rows)
    except Mismatch:
        with pytest.raises(FilterError) as e:
            f.mask(frame)
        assert 0 <= e.value.position <= len(text)
        return
    got = f.mask(frame)
    assert got.index.equals(frame.index) and got.dtype == bool
    assert got.tolist() == expected, text


GARBAGE = string.ascii_letters[:6] + string.digits[:3] + " ()=!<>~'\"\\:./-_\t" + "é🎉"


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(alphabet=GARBAGE, max_size=30),
                      st.lists(st.sampled_from(["a", "b", "==", "<", "~", "(", ")", "and", "or", "not", "tag:", "'x",
                                                '"y"', "1", "-2.5e1", "null", "TRUE", " "]), max_size=12).map("".join)))
def test_random_garbage_parses_or_raises_a_filter_error_inside_the_text(text):
    frame = pd.DataFrame({"a": [1.0, None], "b": ["x", None], "tags": [["x"], []]})
    try:
        f = parse_filter(text)
        assert isinstance(tokenize(text), list)
        f.mask(frame)
    except FilterError as e:
        assert 0 <= e.position <= len(text)
        assert str(e).startswith(e.reason) and "^" in str(e).splitlines()[-1]
