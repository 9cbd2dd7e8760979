"""The safe expression language: exact values, NaN behaviour, and every refused construct."""

from __future__ import annotations

import math

import pytest

from pytest_ladder.expr import ExprError, parse_expr

NAN = math.nan


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("value < tau * (1 - margin)", {"value": 0.3, "tau": 0.35, "margin": 0.1}, True),  # 0.3 < 0.315
        ("value < tau * (1 - margin)", {"value": 0.32, "tau": 0.35, "margin": 0.1}, False),
        ("0 <= x < 1", {"x": 0.0}, True),
        ("0 <= x < 1", {"x": 1.0}, False),
        ("abs(x - 1) <= 0.5", {"x": 0.5}, True),
        ("min(a, b, 3) + max(a, b)", {"a": 2, "b": 5}, 7.0),
        ("min(a)", {"a": 4}, 4.0),
        ("2 ** 10 - x / 4", {"x": 2}, 1023.5),
        ("-x + +y", {"x": 1.5, "y": 4}, 2.5),
        ("not (x > 1)", {"x": 0.5}, True),
        ("x > 1 or y > 1", {"x": 0.5, "y": 2}, True),
        ("x > 1 and y > 1", {"x": 0.5, "y": 2}, False),
        ("x == 0", {"x": 0.0}, True),
        ("x != 0", {"x": 0.0}, False),
        ("1 / x", {"x": 0.0}, math.inf),
        ("-1 / x", {"x": 0.0}, -math.inf),
        ("10 ** 400", {}, math.inf),
        ("1e-3 * 1000", {}, 1.0),
    ],
)
def test_exact_values(text, env, expected):
    result = parse_expr(text).evaluate(env)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "env"),
    [("x < 1", {"x": NAN}), ("x >= 1", {"x": NAN}), ("x != 1", {"x": NAN}), ("x == x", {"x": NAN}),
     ("0 <= x < 1", {"x": NAN}), ("min(x, 1) < 2", {"x": NAN}), ("max(1, x) > 0", {"x": NAN}),
     ("abs(x) >= 0", {"x": NAN}), ("0 / x < 1", {"x": 0.0}), ("(-8) ** 0.5 < 1", {})],
)
def test_nan_never_satisfies_a_comparison(text, env):
    assert parse_expr(text).evaluate(env) is False


def test_nan_propagates_through_arithmetic_and_min_max():
    assert math.isnan(parse_expr("min(x, 1) + max(2, x)").evaluate({"x": NAN}))
    assert math.isnan(parse_expr("0 / x").evaluate({"x": 0.0}))


def test_names_text_and_is_comparison():
    rule = parse_expr("  error < tau * (1 - margin) ")
    assert rule.text == "error < tau * (1 - margin)"
    assert rule.names == frozenset({"error", "tau", "margin"})
    assert rule.is_comparison
    assert parse_expr("not (a < b) and c >= 1").is_comparison
    assert not parse_expr("a * b").is_comparison
    assert not parse_expr("a < b or c").is_comparison
    assert parse_expr("abs(x)").names == frozenset({"x"})
    assert parse_expr("a < b") == parse_expr("a < b")


def test_missing_name_at_evaluation_is_named():
    with pytest.raises(ExprError, match=r"no value for 'method'"):
        parse_expr("observed > method").evaluate({"observed": 1.0})


def test_non_number_value_is_refused():
    with pytest.raises(ExprError, match=r"'x' must be a number"):
        parse_expr("x < 1").evaluate({"x": "0.5"})


def test_unknown_name_against_allowed_names():
    with pytest.raises(ExprError, match=r"unknown name 'loss' \(allowed: error, margin, tau, value\)"):
        parse_expr("loss < tau", allowed_names={"value", "error", "tau", "margin"})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('true')", "a call of \"__import__('os').system\""),
        ("__import__('os')", "a call of '__import__'"),
        ("eval('1')", "a call of 'eval'"),
        ("x.real < 1", "attribute access"),
        ("x[0] < 1", "subscripts"),
        ("(lambda: 1)() < 2", "a call of 'lambda: 1'"),
        ("lambda: 1", "lambdas"),
        ("'a' < 'b'", "the constant 'a' (str)"),
        ("True", "the constant True (bool)"),
        ("None", "the constant None"),
        ("[x for x in y]", "comprehensions"),
        ("x if y else z", "conditional expressions"),
        ("(x := 1)", "assignments"),
        ("x // 2 < 1", "the operator FloorDiv"),
        ("x % 2 < 1", "the operator Mod"),
        ("~x", "the unary operator Invert"),
        ("x in y", "the comparison In"),
        ("x is y", "the comparison Is"),
        ("abs(x, y)", "abs() with other than one argument"),
        ("max()", "max() without arguments"),
        ("min(*x)", "keyword or star arguments"),
        ("abs", "the function name 'abs' used as a value"),
        ("(1, 2)", "tuples"),
        ("x <", "does not parse"),
        ("", "empty"),
        ("x = 1", "does not parse"),
    ],
)
def test_refused_syntax(text, fragment):
    with pytest.raises(ExprError) as error:
        parse_expr(text)
    assert fragment in str(error.value)


def test_non_string_is_refused():
    with pytest.raises(ExprError, match="must be a string"):
        parse_expr(0.1)  # type: ignore[arg-type]
