"""A tiny, safe expression language for locked decision rules and trap expectations (never `eval`).

Grammar (a whitelist over Python's own parser, `ast.parse(text, mode="eval")`): int and float literals, names,
`+ - * / **`, unary `-`/`+`, comparisons including chains (`< <= > >= == !=`), `and`/`or`/`not`, parentheses and the
calls `abs(x)`, `min(a, b, ...)`, `max(a, b, ...)`. Anything else (attribute access, subscripts, other calls,
strings, lambdas, comprehensions...) is refused with an `ExprError` saying what was found.

Bounded: an expression longer than MAX_LENGTH characters or nested deeper than MAX_DEPTH is refused before it can
exhaust the parser, the stack or memory. A literal that is not a finite number (`1e400`), and a part without names
that does not evaluate to one (`9 ** 9 ** 9`), are refused when parsed.

Evaluation is float arithmetic that stays finite or fails: a non-finite value given for a name, or a step that
produces one (division by zero, an overflowing or complex power), raises `NonFiniteError` naming the expression and
the step, so a rule never decides on a silent inf or NaN.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_LENGTH = 500  # characters; the longest locked rule in the repository is under 80
MAX_DEPTH = 32  # nesting of the syntax tree; `value < tau * (1 - margin)` is 5 deep

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


class NonFiniteError(ExprError):
    """Evaluation met a value that is not a finite number (inf or NaN), given or produced by a step."""


def _quoted(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut to about `limit` characters so a huge expression gives a short error."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


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
                f"{_quoted(self.text)}: no value for {', '.join(repr(m) for m in missing)} "
                f"(given: {', '.join(sorted(env)) or 'nothing'})"
            )
        values = {}
        for name in sorted(self.names):
            value = env[name]
            if isinstance(value, (str, bytes)):
                raise ExprError(f"{_quoted(self.text)}: {name!r} must be a number, got {value!r}")
            try:
                values[name] = float(value)  # int, float, bool, numpy and 0-d torch scalars
            except (TypeError, ValueError):
                raise ExprError(f"{_quoted(self.text)}: {name!r} must be a number, got {value!r}") from None
            except OverflowError:  # an int too large for a float
                values[name] = math.inf
            if not math.isfinite(values[name]):
                raise NonFiniteError(f"{_quoted(self.text)}: {name!r} is {value!r}, not a finite number")
        try:
            return _evaluate(self.tree.body, values)
        except _Overflow as step:
            raise NonFiniteError(f"{_quoted(self.text)}: {step} is not a finite number") from None

    def __str__(self) -> str:
        return self.text


def parse_expr(text: str, *, allowed_names: set[str] | None = None) -> Expr:
    """Parse `text` into an `Expr`, refusing anything outside the grammar (module docstring) or unknown names."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, got {type(text).__name__} {text!r}")
    if not text.strip():
        raise ExprError("the expression is empty")
    if len(text.strip()) > MAX_LENGTH:
        raise ExprError(
            f"{_quoted(text.strip())} is longer than {MAX_LENGTH} characters; a locked rule should read at a glance"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ExprError(f"{_quoted(text)} does not parse: {error.msg} (column {error.offset})") from None
    except (RecursionError, MemoryError):  # the parser's own limits, before MAX_DEPTH can be checked
        raise ExprError(f"{_quoted(text)} is nested too deeply to parse (at most {MAX_DEPTH} levels)") from None
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ExprError(f"{_quoted(text)} is nested {depth} levels deep, more than the {MAX_DEPTH} allowed")
    names: set[str] = set()
    _check(tree.body, text, names)
    _check_constants(tree.body, text)
    if allowed_names is not None:
        unknown = sorted(names - set(allowed_names))
        if unknown:
            raise ExprError(
                f"{_quoted(text)} uses unknown name{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(u) for u in unknown)} "
                f"(allowed: {', '.join(sorted(allowed_names))})"
            )
    return Expr(text=text.strip(), names=frozenset(names), tree=tree)


def _depth(root: ast.AST) -> int:
    """Nesting depth of the syntax tree (iterative: a deep tree must not exhaust the stack while being measured)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                     if not isinstance(child, (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)))
    return deepest


def _check_constants(node: ast.AST, text: str) -> bool:
    """Refuse a non-finite literal or a part without names that evaluates to a non-finite number; True if name-free."""
    if isinstance(node, ast.Constant):
        try:
            finite = math.isfinite(float(node.value))
        except OverflowError:  # an integer literal too large for a float
            finite = False
        if not finite:
            raise ExprError(f"{_quoted(text)}: the number at column {node.col_offset + 1} is not finite (it "
                            "overflows a float); write a finite value")
        return True
    if isinstance(node, ast.Name):
        return False
    children = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)]
    if isinstance(node, ast.Call):
        children = list(node.args)
    name_free = [_check_constants(child, text) for child in children]
    if all(name_free) and not _is_comparison(node):
        try:
            _evaluate(node, {})
        except _Overflow as step:
            raise ExprError(f"{_quoted(text)}: {step} is not a finite number") from None
    return all(name_free)


def _refuse(node: ast.AST, text: str, what: str) -> ExprError:
    return ExprError(
        f"{_quoted(text)}: {what} at column {getattr(node, 'col_offset', 0) + 1} is not allowed; rules use numbers, "
        "names, + - * / **, comparisons, and/or/not and abs/min/max only"
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


class _Overflow(Exception):
    """Internal: a step produced a non-finite number; the message names the step with its operands."""


def _arithmetic(a: float, op: type, b: float) -> float:
    """`a op b` in floats, raising _Overflow("a op b") when the result is not a finite number."""
    try:
        if op is ast.Add:
            result = a + b
        elif op is ast.Sub:
            result = a - b
        elif op is ast.Mult:
            result = a * b
        elif op is ast.Div:
            result = a / b
        else:
            result = math.pow(a, b)
    except (OverflowError, ZeroDivisionError, ValueError):  # overflow; x / 0; 0 ** -1 or (-8) ** 0.5
        result = math.nan
    if not math.isfinite(result):
        raise _Overflow(f"{a:g} {_BINARY[op]} {b:g}")
    return result


def _evaluate(node: ast.AST, env: dict[str, float]) -> float | bool:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.BinOp):
        a, b = float(_evaluate(node.left, env)), float(_evaluate(node.right, env))
        return _arithmetic(a, type(node.op), b)
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
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        args = [float(_evaluate(a, env)) for a in node.args]
        return float(FUNCTIONS[node.func.id](args))  # type: ignore[union-attr]
    raise ExprError(f"cannot evaluate {ast.dump(node)}")  # unreachable: _check refused it
