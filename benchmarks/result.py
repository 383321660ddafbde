"""What each benchmark returns: top-level metrics for the JSON, details, and rows for the printed table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Row:
    """One line of the table: a measured value against its target (`None`: reported, no target)."""

    name: str
    measured: float
    target: Optional[str] = None
    ok: Optional[bool] = None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "measured": self.measured, "target": self.target, "ok": self.ok, "unit": self.unit}


@dataclass
class BenchmarkResult:
    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
