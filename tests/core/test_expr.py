"""The safe expression language: exact values, finite-or-fail evaluation, bounds, and every refused construct."""

from __future__ import annotations

import math

import pytest

from pytest_ladder.expr import MAX_DEPTH, MAX_LENGTH, ExprError, NonFiniteError, parse_expr

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
        ("x ** 0.5", {"x": 4}, 2.0),
        ("1e308 * x", {"x": 1.5}, 1.5e308),
        ("1e-3 * 1000", {}, 1.0),
    ],
)
def test_exact_values(text, env, expected):
    result = parse_expr(text).evaluate(env)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("x < 1", {"x": NAN}, "'x < 1': 'x' is nan, not a finite number"),
        ("x >= 1", {"x": math.inf}, "'x >= 1': 'x' is inf, not a finite number"),
        ("min(x, 1) < 2", {"x": -math.inf}, "'min(x, 1) < 2': 'x' is -inf, not a finite number"),
        ("x < 1", {"x": 10**400}, f"'x < 1': 'x' is {10**400!r}, not a finite number"),
        ("1 / x < 1", {"x": 0.0}, "'1 / x < 1': 1 / 0 is not a finite number"),
        ("0 / x < 1", {"x": 0}, "'0 / x < 1': 0 / 0 is not a finite number"),
        ("x ** 0.5 < 1", {"x": -8}, "'x ** 0.5 < 1': -8 ** 0.5 is not a finite number"),
        ("x ** -1 < 1", {"x": 0}, "'x ** -1 < 1': 0 ** -1 is not a finite number"),
        ("x * 1e300 * 1e300 > 0", {"x": 1}, "'x * 1e300 * 1e300 > 0': 1e+300 * 1e+300 is not a finite number"),
        ("value < tau + 0 * x ** 9 ** 9", {"value": 1, "tau": 2, "x": 9},
         "'value < tau + 0 * x ** 9 ** 9': 9 ** 3.8742e+08 is not a finite number"),
    ],
)
def test_non_finite_evaluation_raises_naming_the_step(text, env, message):
    with pytest.raises(NonFiniteError) as error:
        parse_expr(text).evaluate(env)
    assert str(error.value) == message
    assert isinstance(error.value, ExprError) and isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("value < tau * (1 - margin) + 0 * 9**9**9", "'value < tau * (1 - margin) + 0 * 9**9**9': 9 ** 3.8742e+08 is "
                                                     "not a finite number"),
        ("x < 1e400", "'x < 1e400': the number at column 5 is not finite (it overflows a float); write a finite value"),
        ("x < 1 / 0", "'x < 1 / 0': 1 / 0 is not a finite number"),
        ("x < (-8) ** 0.5", "'x < (-8) ** 0.5': -8 ** 0.5 is not a finite number"),
    ],
)
def test_non_finite_constant_parts_are_refused_when_parsed(text, message):
    with pytest.raises(ExprError) as error:
        parse_expr(text)
    assert str(error.value) == message


def test_length_limit_refuses_a_1000_term_chain_and_20000_minus_signs():
    chain = " + ".join(["x"] * 1000) + " < 1"
    with pytest.raises(ExprError) as error:
        parse_expr(chain)
    assert str(error.value) == (
        f"{chain[:60]!r}... (4001 characters) is longer than {MAX_LENGTH} characters; a locked rule should read at a "
        "glance"
    )
    minus = "-" * 20_000 + "x < 1"
    with pytest.raises(ExprError) as error:
        parse_expr(minus)
    assert str(error.value) == (
        f"{'-' * 60!r}... (20005 characters) is longer than {MAX_LENGTH} characters; a locked rule should read at a "
        "glance"
    )


def test_depth_limit_within_the_length_limit():
    assert MAX_DEPTH == 32 and MAX_LENGTH == 500
    parse_expr("-" * 29 + "x < 1")  # Expression body: Compare, 29 UnaryOps, Name = 31 levels
    deep = "-" * 40 + "x < 1"
    with pytest.raises(ExprError) as error:
        parse_expr(deep)
    assert str(error.value) == f"{deep!r} is nested 42 levels deep, more than the 32 allowed"
    chain = " + ".join(["x"] * 120) + " < 1"  # 479 characters, a left-deep tree of 119 additions
    assert len(chain) <= MAX_LENGTH
    with pytest.raises(ExprError, match=r"is nested 121 levels deep, more than the 32 allowed$"):
        parse_expr(chain)
    with pytest.raises(ExprError, match=r"does not parse: too many nested parentheses"):
        parse_expr("(" * 220 + "x" + ")" * 220)


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
