"""Charts for the console, drawn on the server as inline SVG: no script, no CDN, nothing to
load, and a test can read what was drawn.

Two shapes cover the pages: `line_chart` (series over time or over ordered categories such
as model versions; one colour per series, a point with a tooltip for each value) and
`bar_chart` (horizontal bars: a turn's stages by duration, a session's requests by
latency). Every chart is a ``<figure class="chart">`` holding one ``<svg>``; an empty one
says so in words instead of drawing axes around nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape

from markupsafe import Markup

#: Colour-blind-safe palette (Okabe-Ito, then two greys): series keep their colour across a page.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")
STATUS_COLOURS = {"done": "#009E73", "finished": "#009E73", "running": "#0072B2", "skipped": "#bbbbbb",
                  "failed": "#D55E00", "stopped": "#E69F00", "ok": "#0072B2", "error": "#D55E00"}


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float | None]]  # (x, y); y None: a gap
    colour: str | None = None
    dashed: bool = False


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    kind: str = "ok"  # a key of STATUS_COLOURS
    title: str = ""  # the tooltip
    note: str = ""  # written after the bar (e.g. "12.3s")


@dataclass
class Colours:
    """A colour per name, the same name the same colour on one page."""

    given: dict[str, str] = field(default_factory=dict)

    def __call__(self, name: str) -> str:
        if name not in self.given:
            self.given[name] = PALETTE[len(self.given) % len(PALETTE)]
        return self.given[name]


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About `n` round values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


_TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)


def time_ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], Callable[[float], str]]:
    """Round instants (epoch seconds, UTC) between lo and hi, and how to write them."""
    span = max(hi - lo, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= n), _TIME_STEPS[-1])
    first = math.ceil(lo / step) * step
    ticks = [float(t) for t in range(int(first), int(hi) + 1, step)] or [lo]
    fmt = "%H:%M" if span <= 2 * 86400 and step < 86400 else "%m-%d"
    return ticks, lambda t: datetime.fromtimestamp(t, tz=timezone.utc).strftime(fmt)


def _empty(title: str, message: str, chart_id: str | None) -> Markup:
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return Markup(f'<figure class="chart empty"{ident}><figcaption>{escape(title)}</figcaption>'
                  f'<p class="muted">{escape(message)}</p></figure>')


def line_chart(series: Sequence[Series], *, title: str, x_kind: str = "time", categories: Sequence[str] = (),
               y_format: Callable[[float], str] = lambda v: f"{v:g}", y_min: float | None = 0.0,
               y_max: float | None = None, width: int = 520, height: int = 190, chart_id: str | None = None,
               empty: str = "no data in this range") -> Markup:
    """Lines over time (``x_kind="time"``: x is epoch seconds) or over ``categories`` (x is
    the index of one). Each value is a point with a tooltip; a single value is a dot."""
    drawn = [s for s in series if any(y is not None for _, y in s.points)]
    if not drawn:
        return _empty(title, empty, chart_id)
    colour = Colours()
    xs = [x for s in drawn for x, y in s.points if y is not None]
    ys = [y for s in drawn for _, y in s.points if y is not None]
    if x_kind == "category":
        x_lo, x_hi = -0.5, max(len(categories) - 0.5, 0.5)
    else:
        x_lo, x_hi = min(xs), max(xs)
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 60, x_hi + 60
    lo = min(ys) if y_min is None else min(y_min, min(ys))
    hi = max(ys) if y_max is None else y_max
    y_ticks = nice_ticks(lo, hi if hi > lo else lo + 1)
    lo, hi = min(y_ticks[0], lo), max(y_ticks[-1], hi)
    legend_rows = math.ceil(len(drawn) / 3)
    left, right, top, bottom = 48, 12, 10 + 16 * legend_rows, 26
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + ph - (y - lo) / ((hi - lo) or 1.0) * ph

    out = [f'<svg class="chart-svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">']
    for t in y_ticks:  # grid and y labels
        y = py(t)
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(t))}</text>')
    if x_kind == "category":
        step = max(1, math.ceil(len(categories) / 8))
        for i, name in enumerate(categories):
            if i % step == 0:
                out.append(f'<text class="tick" x="{px(i):.1f}" y="{top + ph + 16}" text-anchor="middle">'
                           f'{escape(_clip(name, 14))}<title>{escape(name)}</title></text>')
    else:
        ticks, fmt = time_ticks(x_lo, x_hi)
        for t in ticks:
            if x_lo <= t <= x_hi:
                out.append(f'<text class="tick" x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>')
    for i, s in enumerate(drawn):
        c = s.colour or colour(s.name)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        run: list[str] = []
        runs = [run]
        for x, y in sorted(s.points, key=lambda p: p[0]):
            if y is None:
                run = []
                runs.append(run)
                continue
            run.append(f"{px(x):.1f},{py(y):.1f}")
        for r in runs:
            if len(r) > 1:
                out.append(f'<polyline class="line" fill="none" stroke="{c}" stroke-width="2"{dash} points="{" ".join(r)}"/>')
        for x, y in s.points:
            if y is None:
                continue
            where = categories[int(x)] if x_kind == "category" and 0 <= int(x) < len(categories) else (
                datetime.fromtimestamp(x, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if x_kind == "time" else f"{x:g}")
            out.append(f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{c}">'
                       f'<title>{escape(s.name)} · {escape(where)}: {escape(y_format(y))}</title></circle>')
        lx, ly = left + (i % 3) * (pw / 3), 12 + 16 * (i // 3)
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 14:.1f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{c}" stroke-width="3"{dash}/>'
                   f'<text class="legend" x="{lx + 18:.1f}" y="{ly}">{escape(_clip(s.name, 26))}</text>')
    out.append("</svg>")
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return Markup(f'<figure class="chart"{ident}><figcaption>{escape(title)}</figcaption>{"".join(out)}</figure>')


def bar_chart(bars: Sequence[Bar], *, title: str, width: int = 520, chart_id: str | None = None,
              empty: str = "nothing to draw") -> Markup:
    """Horizontal bars, longest value the full width; a tooltip and a note per bar."""
    if not bars:
        return _empty(title, empty, chart_id)
    row, left, right = 22, 120, 90
    height = row * len(bars) + 8
    top_value = max((b.value for b in bars), default=0.0) or 1.0
    out = [f'<svg class="chart-svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">']
    for i, b in enumerate(bars):
        y = 4 + i * row
        w = max(2.0, b.value / top_value * (width - left - right))
        c = STATUS_COLOURS.get(b.kind, PALETTE[0])
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(_clip(b.label, 18))}</text>'
                   f'<rect class="bar {escape(b.kind)}" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" rx="2" '
                   f'fill="{c}"><title>{escape(b.title or b.label)}</title></rect>'
                   f'<text class="note" x="{left + w + 6:.1f}" y="{y + 14}">{escape(b.note)}</text>')
    out.append("</svg>")
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    return Markup(f'<figure class="chart"{ident}><figcaption>{escape(title)}</figcaption>{"".join(out)}</figure>')


def _clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"
