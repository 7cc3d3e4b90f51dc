"""A cohort's evidence: requested against measured volumes over its measured subjects, as numbers
(``qc_report.json``: Pearson r, mean absolute error and percentage error per volume, the acceptance rate)
and as a picture (``qc_scatter.png``: measured against requested, one panel per volume, the identity line and
the tolerance band). Both sit at the dataset's root, named in ``.bidsignore``, covered by ``SHA256SUMS``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from models.dataset.bids import QC_PASS, QC_REPORT, QC_SCATTER, SubjectRecord, dumps

#: (record field, label) of the two measured volumes.
VOLUMES = (("ventricular_volume_mm3", "ventricular volume (mm3)"), ("brain_volume_mm3", "brain volume (mm3)"))


def pearson_r(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient (``None`` for fewer than two values or a constant side)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return None if denominator == 0 else float((x * y).sum() / denominator)


def agreement(requested: Sequence[float], measured: Sequence[float]) -> dict[str, float | None]:
    """Pearson r, mean absolute error and mean absolute percentage error of measured against requested."""
    wanted, got = np.asarray(requested, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    r = pearson_r(wanted, got)
    return {
        "pearson_r": None if r is None else round(r, 4),
        "mae_mm3": round(float(np.abs(wanted - got).mean()), 1),
        "mape_percent": round(float((np.abs(wanted - got) / np.abs(wanted)).mean() * 100), 2),
    }


def _pairs(records: Sequence[SubjectRecord], field: str) -> tuple[list[float], list[float]]:
    measured = [r for r in records if r.measurement is not None]
    return (
        [getattr(r.covariates, field) for r in measured],
        [getattr(r.measurement, field) for r in measured],  # type: ignore[arg-type]
    )


def qc_report(records: Sequence[SubjectRecord]) -> dict[str, Any] | None:
    """The cohort's requested-against-measured report, or ``None`` when no subject was measured."""
    measured = [r for r in records if r.measurement is not None]
    if not measured:
        return None
    passed = sum(r.qc == QC_PASS for r in measured)
    return {
        "subjects": len(records),
        "measured": len(measured),
        "measures": sorted({r.measurement.measure for r in measured}),  # type: ignore[union-attr]
        "tolerance": sorted({r.measurement.tolerance for r in measured}),  # type: ignore[union-attr]
        "passed": passed,
        "acceptance_rate": round(passed / len(measured), 4),
        **{field: _agreement(measured, field) for field, _ in VOLUMES},
    }


def _agreement(measured: Sequence[SubjectRecord], field: str) -> dict[str, float | None]:
    """:func:`agreement` of one volume; Pearson r only from three subjects on (two points always lie on a line)."""
    result = agreement(*_pairs(measured, field))
    return {**result, "pearson_r": None} if len(measured) < 3 else result


def qc_scatter_png(records: Sequence[SubjectRecord], panel: int = 320) -> bytes:
    """Measured against requested volume, one panel per volume: points, the identity line, the tolerance band."""
    image = Image.new("RGB", (panel * len(VOLUMES), panel), "white")
    draw = ImageDraw.Draw(image)
    margin, span = 40, panel - 80
    tolerance = max((r.measurement.tolerance for r in records if r.measurement is not None), default=0.0)
    for index, (field, label) in enumerate(VOLUMES):
        requested, measured = _pairs(records, field)
        values = requested + measured or [0.0, 1.0]
        lo, hi = min(values), max(values)
        lo, hi = (lo - 1, hi + 1) if hi == lo else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))

        def at(x: float, y: float, lo: float = lo, hi: float = hi) -> tuple[float, float]:
            return (x - lo) / (hi - lo) * span, span - (y - lo) / (hi - lo) * span

        axes = Image.new("RGB", (span, span), "white")  # drawn apart, so the band is cut at the frame
        plot = ImageDraw.Draw(axes)
        plot.polygon([at(lo, lo * (1 + tolerance)), at(hi, hi * (1 + tolerance)), at(hi, hi * (1 - tolerance)),
                      at(lo, lo * (1 - tolerance))], fill=(225, 240, 225))  # fmt: skip
        plot.line([at(lo, lo), at(hi, hi)], fill=(120, 120, 120))
        for x, y in zip(requested, measured, strict=True):
            cx, cy = at(x, y)
            plot.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(30, 80, 200))
        left = index * panel
        image.paste(axes, (left + margin, margin))
        draw.rectangle([left + margin, margin, left + margin + span, margin + span], outline="black")
        draw.text((left + margin, 8), f"{label}: measured (y) vs requested (x)", fill="black")
        draw.text((left + margin, 22), f"band: within {tolerance:.0%}", fill=(60, 120, 60))
        draw.text((left + margin, panel - margin + 8), f"{lo:,.0f} .. {hi:,.0f} (both axes)", fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def qc_files(records: Sequence[SubjectRecord]) -> dict[str, bytes]:
    """The report and the scatter plot (relative path -> bytes); none when no subject was measured."""
    report = qc_report(records)
    if report is None:
        return {}
    return {QC_REPORT: dumps(report).encode(), QC_SCATTER: qc_scatter_png(records)}
