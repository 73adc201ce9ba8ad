"""Per-pass and whole-run reports: a readable text table and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PassReport:
    """What one pass did and how it validated.

    status: "applied" (modified and kept), "unchanged" (modified=False), "rolled-back" (lossless pass
    changed answers, or raised), "failed" (lossy pass missed its budget; run stopped unless keep-going),
    "skipped-validation" (modified, not validated because validation is end/off).
    """

    name: str
    kind: str
    status: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    weight_bytes_before: int
    weight_bytes_after: int
    validation_seconds: float = 0.0
    vs_previous: dict[str, Any] = field(default_factory=dict)
    vs_original: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class RunReport:
    """The whole run: input/output, which data validated it, each pass, and the final comparison."""

    input: str = ""
    output: str = ""
    validation_mode: str = "each"
    validation_data: str = ""
    validation_synthetic: bool = True
    validation_shapes: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    passes: list[PassReport] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    file_bytes_after: int | None = None
    final: dict[str, Any] = field(default_factory=dict)
    final_outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    ok: bool = True
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_text(self) -> str:
        lines = []
        if self.input:
            lines.append(f"onnxopt: {self.input} -> {self.output or '(not saved)'}")
        rows = [("pass", "kind", "status", "nodes", "weights", "time", "vs previous")]
        for p in self.passes:
            rows.append((
                p.name,
                p.kind,
                p.status,
                f"{p.nodes_before}->{p.nodes_after}",
                f"{_bytes(p.weight_bytes_before)}->{_bytes(p.weight_bytes_after)}",
                f"{p.seconds:.2f}s",
                _metrics_line(p.vs_previous),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for p in self.passes:
            if p.message:
                lines.append(f"  {p.name}: {p.message}")
        lines.append(
            f"nodes {self.nodes_before} -> {self.nodes_after}; weights {_bytes(self.weight_bytes_before)} -> "
            f"{_bytes(self.weight_bytes_after)}" + (f"; file {_bytes(self.file_bytes_after)}"
                                                    if self.file_bytes_after is not None else "")
            + f"; {self.seconds:.1f}s"
        )
        pack = self.extra.get("pack")
        if pack:
            lines.append(
                f"packed: weights {_bytes(pack['raw_bytes'])} -> {_bytes(pack['packed_bytes'])} "
                f"(order-0 entropy bound {_bytes(int(pack['entropy_bound_bytes']))}); file {_bytes(pack['file_bytes'])}"
            )
        if self.validation_mode == "off":
            lines.append("validation: OFF (outputs were not compared)")
        else:
            lines.append(f"validation ({self.validation_mode}): {self.validation_data}")
            if self.final:
                lines.append(f"final vs original: {_metrics_line(self.final)}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.validation_synthetic and self.validation_mode != "off" and any(
            p.kind == "lossy" and p.modified for p in self.passes
        ):
            lines.append(
                "WARNING: a lossy pass was validated on SYNTHETIC data only; give --validation-data or "
                "--calibration with real samples to measure real fidelity"
            )
        if not self.ok:
            lines.append(f"FAILED: {self.error}")
        return "\n".join(lines)


def _metrics_line(m: dict[str, Any]) -> str:
    if not m:
        return "-"
    if m.get("exact"):
        return "bit-exact"
    parts = []
    if m.get("max_abs") is not None:
        parts.append(f"max|d|={m['max_abs']:.2g}")
    if m.get("min_cosine") is not None:
        parts.append(f"cos={m['min_cosine']:.5f}")
    if m.get("min_sqnr_db") is not None:
        s = m["min_sqnr_db"]
        parts.append("SQNR=inf" if s is None or (isinstance(s, float) and math.isinf(s)) else f"SQNR={s:.1f}dB")
    if m.get("min_top1") is not None:
        parts.append(f"top1={m['min_top1']:.3f}")
    return " ".join(parts) or "changed"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


def _clean(obj: Any) -> Any:
    """Make a structure JSON-safe: inf/nan floats become strings, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _clean(obj.item())
        except (ValueError, TypeError):
            return str(obj)
    return obj
