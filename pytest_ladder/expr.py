"""A tiny, safe expression language for locked decision rules and trap expectations (never `eval`).

Grammar (a whitelist over Python's own parser, `ast.parse(text, mode="eval")`): int and float literals, names,
`+ - * / **`, unary `-`/`+`, comparisons including chains (`< <= > >= == !=`), `and`/`or`/`not`, parentheses and the
calls `abs(x)`, `min(a, b, ...)`, `max(a, b, ...)`. Anything else (attribute access, subscripts, other calls,
strings, lambdas, comprehensions...) is refused with an `ExprError` saying what was found.

Evaluation is float arithmetic: division by zero gives ±inf (nan for 0/0), an overflowing or complex power gives
inf or nan. NaN propagates through arithmetic, `min`, `max`, and every comparison with a NaN operand is False
(`!=` included), so a NaN measurement never satisfies a rule.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field

FUNCTIONS: dict[str, Callable[[list[float]], float]] = {"abs": lambda a: abs(a[0]), "min": min, "max": max}

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_COMPARE: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}
_SYNTAX_NAMES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.IfExp: "conditional expressions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.JoinedStr: "strings",
    ast.NamedExpr: "assignments (:=)",
    ast.Starred: "star arguments",
    ast.Await: "await",
    ast.Yield: "yield",
}


class ExprError(ValueError):
    """An expression that does not parse, uses syntax outside the whitelist, or misses a name at evaluation."""


@dataclass(frozen=True)
class Expr:
    """A parsed, checked expression; equal when the text is equal."""

    text: str
    names: frozenset[str]
    tree: ast.Expression = field(compare=False, repr=False)

    @property
    def is_comparison(self) -> bool:
        """True when the expression is a rule: a comparison, or and/or/not of comparisons."""
        return _is_comparison(self.tree.body)

    def evaluate(self, env: dict[str, float]) -> float | bool:
        """Value of the expression with `env` supplying every name (float arithmetic, NaN-safe comparisons)."""
        missing = sorted(self.names - set(env))
        if missing:
            raise ExprError(
                f"{self.text!r}: no value for {', '.join(repr(m) for m in missing)} "
                f"(given: {', '.join(sorted(env)) or 'nothing'})"
            )
        values = {}
        for name in self.names:
            value = env[name]
            if isinstance(value, (str, bytes)):
                raise ExprError(f"{self.text!r}: {name!r} must be a number, got {value!r}")
            try:
                values[name] = float(value)  # int, float, bool, numpy and 0-d torch scalars
            except (TypeError, ValueError):
                raise ExprError(f"{self.text!r}: {name!r} must be a number, got {value!r}") from None
        return _evaluate(self.tree.body, values)

    def __str__(self) -> str:
        return self.text


def parse_expr(text: str, *, allowed_names: set[str] | None = None) -> Expr:
    """Parse `text` into an `Expr`, refusing anything outside the grammar (module docstring) or unknown names."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, got {type(text).__name__} {text!r}")
    if not text.strip():
        raise ExprError("the expression is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ExprError(f"{text!r} does not parse: {error.msg} (column {error.offset})") from None
    names: set[str] = set()
    _check(tree.body, text, names)
    if allowed_names is not None:
        unknown = sorted(names - set(allowed_names))
        if unknown:
            raise ExprError(
                f"{text!r} uses unknown name{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
                f"(allowed: {', '.join(sorted(allowed_names))})"
            )
    return Expr(text=text.strip(), names=frozenset(names), tree=tree)


def _refuse(node: ast.AST, text: str, what: str) -> ExprError:
    return ExprError(
        f"{text!r}: {what} at column {getattr(node, 'col_offset', 0) + 1} is not allowed; rules use numbers, names, "
        "+ - * / **, comparisons, and/or/not and abs/min/max only"
    )


def _check(node: ast.AST, text: str, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _refuse(node, text, f"the constant {node.value!r} ({type(node.value).__name__})")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise _refuse(node, text, f"the function name {node.id!r} used as a value")
        names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise _refuse(node, text, f"the operator {type(node.op).__name__}")
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            raise _refuse(node, text, f"the unary operator {type(node.op).__name__}")
        _check(node.operand, text, names)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text, names)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise _refuse(node, text, f"the comparison {type(op).__name__}")
        for operand in (node.left, *node.comparators):
            _check(operand, text, names)
    elif isinstance(node, ast.Call):
        function = node.func.id if isinstance(node.func, ast.Name) else None
        if function not in FUNCTIONS:
            shown = function or ast.unparse(node.func)
            raise _refuse(node, text, f"a call of {shown!r} (only abs, min, max may be called)")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _refuse(node, text, f"keyword or star arguments to {function}()")
        if function == "abs" and len(node.args) != 1:
            raise _refuse(node, text, "abs() with other than one argument")
        if not node.args:
            raise _refuse(node, text, f"{function}() without arguments")
        for argument in node.args:
            _check(argument, text, names)
    else:
        raise _refuse(node, text, _SYNTAX_NAMES.get(type(node), f"syntax {type(node).__name__}"))


def _is_comparison(node: ast.AST) -> bool:
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_is_comparison(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_comparison(node.operand)
    return False


def _divide(a: float, b: float) -> float:
    if b != 0:  # NaN != 0 too: a / NaN is NaN
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _power(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf if a > 0 or b == math.floor(b) and b % 2 == 0 else -math.inf
    except (ValueError, ZeroDivisionError):  # negative base with a fractional exponent; 0 ** negative
        return math.inf if a == 0 else math.nan


def _evaluate(node: ast.AST, env: dict[str, float]) -> float | bool:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.BinOp):
        a, b = float(_evaluate(node.left, env)), float(_evaluate(node.right, env))
        op = type(node.op)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if op is ast.Div:
            return _divide(a, b)
        return _power(a, b)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not operand
        return -float(operand) if isinstance(node.op, ast.USub) else float(operand)
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(bool(_evaluate(v, env)) for v in node.values)
        return any(bool(_evaluate(v, env)) for v in node.values)
    if isinstance(node, ast.Compare):
        left = float(_evaluate(node.left, env))
        for op, comparator in zip(node.ops, node.comparators):
            right = float(_evaluate(comparator, env))
            if math.isnan(left) or math.isnan(right) or not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        args = [float(_evaluate(a, env)) for a in node.args]
        if any(math.isnan(a) for a in args):
            return math.nan
        return float(FUNCTIONS[node.func.id](args))  # type: ignore[union-attr]
    raise ExprError(f"cannot evaluate {ast.dump(node)}")  # unreachable: _check refused it
