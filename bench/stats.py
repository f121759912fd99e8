"""Percentiles, one result row, and the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (as wrk reports); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass(frozen=True)
class Figure:
    """One line of the table: a measured value beside its baseline from the same run."""

    bench: str
    name: str
    value: float
    baseline: float
    unit: str
    baseline_name: str
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _number(value: float, unit: str) -> str:
    if unit in ("", "count") and float(value).is_integer():
        text = f"{int(value)}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}" if unit not in ("", "count") else text


def render(figures: Sequence[Figure]) -> str:
    """A fixed-width table: figure, value, baseline, ratio, target, met."""
    header = ("figure", "value", "baseline", "ratio", "target", "met?")
    rows = [header]
    for f in figures:
        ratio = f.ratio
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append(
            (
                f.name,
                _number(f.value, f.unit),
                f"{_number(f.baseline, f.unit)} ({f.baseline_name})",
                "-" if ratio is None else f"{ratio:.3g}x",
                f.target or "-",
                met,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
