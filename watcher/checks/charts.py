"""Inline SVG charts for the HTML report: no script, no network, text that scales."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

#: One bar: its label and a value per series (stacked in the order of ``colors``).
Bar = tuple[str, Mapping[str, float]]

PALETTE = ("#2563eb", "#0d9488", "#9333ea", "#ea580c", "#0891b2", "#65a30d", "#db2777", "#4b5563")


def _fit(label: str, width: int) -> str:
    """``label`` cut (with an ellipsis) to about ``width`` pixels of 12 px text."""
    room = max(4, width // 7)
    return label if len(label) <= room else label[: room - 1] + "…"


def _legend(colors: Mapping[str, str], y: int) -> str:
    items, x = [], 0
    for series, color in colors.items():
        items.append(
            f'<rect x="{x}" y="{y}" width="12" height="12" rx="2" fill="{color}"/>'
            f'<text x="{x + 16}" y="{y + 10}" class="legend">{escape(series)}</text>'
        )
        x += 28 + 7 * len(series)
    return "".join(items)


def stacked_bars(
    bars: Sequence[Bar], colors: Mapping[str, str], *, title: str, width: int = 640, label_width: int = 200
) -> str:
    """Horizontal stacked bars, one row per label, with the total at the end of each."""
    row, top = 22, 22 if len(colors) > 1 else 0
    height = top + row * len(bars) + 4
    scale_max = max((sum(v.values()) for _, v in bars), default=0) or 1
    span = width - label_width - 60
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    if len(colors) > 1:
        parts.append(_legend(colors, 0))
    for i, (label, values) in enumerate(bars):
        y = top + i * row
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 13}" text-anchor="end" class="label">'
            f"<title>{escape(label)}</title>{escape(_fit(label, label_width - 12))}</text>"
        )
        x = float(label_width)
        for series, color in colors.items():
            w = span * values.get(series, 0) / scale_max
            if w > 0:
                tip = f"{label} / {series}: {values[series]:g}"
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{color}">'
                    f"<title>{escape(tip)}</title></rect>"
                )
                x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 13}" class="value">{sum(values.values()):g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def donut(passed: int, failed: int, *, title: str, size: int = 120) -> str:
    """A ring of passed (green) against failed (red), the pass rate in the middle."""
    total = passed + failed
    radius = size / 2 - 10
    circumference = 2 * 3.14159265 * radius
    share = passed / total if total else 1.0
    c = size / 2
    return (
        f'<svg class="donut" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<circle cx="{c}" cy="{c}" r="{radius:.1f}" fill="none" stroke="#dc2626" stroke-width="14"/>'
        f'<circle cx="{c}" cy="{c}" r="{radius:.1f}" fill="none" stroke="#16a34a" stroke-width="14" '
        f'stroke-dasharray="{circumference * share:.1f} {circumference:.1f}" transform="rotate(-90 {c} {c})"/>'
        f'<text x="{c}" y="{c + 6}" text-anchor="middle" class="donut-value">{round(share * 100)}%</text></svg>'
    )
