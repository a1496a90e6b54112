"""A small arithmetic evaluator for config expressions such as `alpha: 2*r` (never `eval`)."""

from __future__ import annotations

import ast
import math
import operator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"min": min, "max": max, "sqrt": math.sqrt, "int": int, "round": round, "log2": math.log2}
_MAX_POWER = 64
_MAX_BITS = 1024  # results beyond float range are never a sensible config value


class ExprError(ValueError):
    """The expression is not plain arithmetic over known names."""


def evaluate(text: str, names: dict[str, float] | None = None) -> float | int:
    """Evaluate arithmetic `text` with `names` as variables.

    Allows numbers, + - * / // % **, parentheses, and min/max/sqrt/int/round/log2.

    Raises:
        ExprError: on any other syntax, an unknown name, or a result that is not finite.
    """
    names = names or {}
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"`{text}` is not an arithmetic expression ({exc.msg})") from None
    try:
        value = _eval(tree.body, names, text)
    except ExprError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:  # e.g. sqrt(-1), int(inf), max()
        raise ExprError(f"`{text}` cannot be evaluated: {exc}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"`{text}` evaluates to {value}")
    return value


def _eval(node: ast.AST, names: dict[str, float], text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ExprError(f"unknown name `{node.id}` in `{text}` (known: {known})")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, names, text), _eval(node.right, names, text)
        if isinstance(node.op, ast.Pow) and (
            abs(right) > _MAX_POWER or (abs(left) > 1 and abs(right) * math.log2(abs(left)) > _MAX_BITS)
        ):  # (2**64)**64)**64... would otherwise build integers of gigabytes
            raise ExprError(f"exponent {right} too large in `{text}`")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ExprError(f"division by zero in `{text}`") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, names, text))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
    ):
        return _FUNCS[node.func.id](*[_eval(a, names, text) for a in node.args])
    raise ExprError(f"`{text}` may only use numbers, names, + - * / // % ** and {', '.join(_FUNCS)}")
