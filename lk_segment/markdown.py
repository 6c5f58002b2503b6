"""Markdown tables and the numbers in them: one way for every report the project writes (the study,
``make compare``'s report, the bench, ``make gpu-check``, the README's variants table)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def number(value: float | int | None, spec: str = ",.0f") -> str:
    """``value`` formatted by ``spec`` (``",.4f"``, ``"+.4f"``, ...), or "n/a" where there is none (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def mean_sd(stat: tuple[float, float] | None, spec: str) -> str:
    """A (mean, standard deviation) pair as "mean ± sd", both by ``spec``; "n/a" where there is none."""
    if stat is None or math.isnan(stat[0]):
        return "n/a"
    return f"{format(stat[0], spec)} ± {format(stat[1], spec)}"


def row(*cells: object) -> str:
    """One table row; a ``|`` inside a cell is escaped, so it stays one cell."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def header(*names: str, right: Sequence[int] = ()) -> list[str]:
    """A table's first two lines: the column names, then the separator (the columns numbered in ``right``
    aligned right)."""
    return [row(*names), "| " + " | ".join("---:" if i in right else "---" for i in range(len(names))) + " |"]


def table(names: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    """A Markdown table's lines: the header, then the rows."""
    return [*header(*names, right=right), *(row(*cells) for cells in rows)]


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )
