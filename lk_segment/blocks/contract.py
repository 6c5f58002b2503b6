"""What every block provides, written down once and checked when the block is registered.

A block is an ``nn.Module`` built as ``Block(in_chs, out_chs, *, kernel_size, norm_layer,
act_layer, **options)`` that keeps the spatial size. Beside that it says what it is, what it
costs and how far it sees, for ``lk-segment variants``, the README's table and the U-Net's
receptive-field arithmetic. ``register_block`` refuses a class that lacks one of these, and
``create_block`` a built block without ``rf_extent``, each with a message naming what to add.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from typing import ClassVar, Protocol

import torch

# A trailing "(...)" after a space is a note for the reader, not part of the arithmetic.
_NOTE = re.compile(r"\s+\([^()]*\)\s*$")
_NUMBER_TIMES = re.compile(r"\b(\d+)(?=[A-Za-z(])")  # a number written against a symbol multiplies it
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow}
CHANNEL_SYMBOLS = ("C_in", "C_out")


class Block(Protocol):
    """The attributes every registered block has (see the module docstring for the signature)."""

    #: One line for the README's "what it is" column: the design and where it comes from.
    description: ClassVar[str]
    #: The parameter count for C_in -> C_out as the README shows it: numbers and symbols joined by
    #: "·" (or side by side: "2k"), "²", "+", "−", "/" and parentheses, optionally ending in a
    #: "(note)". tests/model/test_blocks.py checks it against the built block, so the README's formula
    #: cannot drift from the code.
    params_formula: ClassVar[str]
    #: What each symbol of ``params_formula`` other than C_in and C_out stands for: the name of an
    #: int attribute of the built block, e.g. {"k": "kernel_size"}.
    formula_symbols: ClassVar[dict[str, str]]
    #: Set in ``__init__``: the side, in pixels, of the square one output pixel depends on.
    rf_extent: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def params_from_formula(formula: str, values: Mapping[str, float]) -> float:
    """Evaluate a block's ``params_formula`` with ``values`` for its symbols (C_in, C_out, ...)."""
    expression = _NOTE.sub("", formula).replace("·", "*").replace("²", "**2").replace("−", "-")
    expression = _NUMBER_TIMES.sub(r"\1*", expression)  # "2k" -> "2*k"
    try:
        return _evaluate(ast.parse(expression, mode="eval").body, values)
    except SyntaxError as exc:
        raise ValueError(f"cannot read params_formula {formula!r} as arithmetic: write products with '·' "
                         "and squares with '²', e.g. 'k²·C_in·C_out + 2·C_out'") from exc


def _evaluate(node: ast.AST, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, values)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in values:
            raise ValueError(f"params_formula uses the symbol {node.id!r}: name the block attribute it stands for "
                             f"in formula_symbols, e.g. formula_symbols = {{{node.id!r}: 'kernel_size'}}")
        return values[node.id]
    raise ValueError(f"params_formula may hold only numbers, symbols, + − · / ² and parentheses, not {ast.dump(node)}")


def check_block_class(name: str, cls: type) -> None:
    """Refuse, at registration, a block class that does not say what it is or what it costs."""
    description = getattr(cls, "description", None)
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise TypeError(f"block {name!r} ({cls.__name__}) needs a one-line class attribute description = '...': "
                        "what it is and where it comes from, for the README's variants table")
    formula = getattr(cls, "params_formula", None)
    if not isinstance(formula, str) or not formula.strip():
        raise TypeError(f"block {name!r} ({cls.__name__}) needs a class attribute params_formula = '...', its "
                        "parameter count for C_in -> C_out, e.g. 'k²·C_in·C_out + 2·C_out'")
    symbols = getattr(cls, "formula_symbols", {})
    try:
        params_from_formula(formula, dict.fromkeys([*CHANNEL_SYMBOLS, *symbols], 1))
    except ValueError as exc:
        raise TypeError(f"block {name!r} ({cls.__name__}): {exc}") from None


def formula_values(block: torch.nn.Module, in_chs: int, out_chs: int) -> dict[str, int]:
    """The value of every symbol of the block's ``params_formula``, read from the built block."""
    values = {"C_in": in_chs, "C_out": out_chs}
    values.update({symbol: getattr(block, attr) for symbol, attr in getattr(block, "formula_symbols", {}).items()})
    return values


def check_block(name: str, block: torch.nn.Module) -> None:
    """Refuse a built block that does not say how far it sees, or lacks a formula symbol's attribute."""
    extent = getattr(block, "rf_extent", None)
    if not isinstance(extent, int) or extent < 1:
        raise TypeError(f"block {name!r} ({type(block).__name__}) must set self.rf_extent in __init__: the side, in "
                        f"pixels, of the square one output pixel sees (a k x k conv: k), got {extent!r}")
    for symbol, attr in getattr(block, "formula_symbols", {}).items():
        if not isinstance(getattr(block, attr, None), int):
            raise TypeError(f"block {name!r} ({type(block).__name__}) must set self.{attr} (an int) in __init__: "
                            f"formula_symbols says params_formula's {symbol!r} stands for it")
