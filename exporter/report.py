"""Backtest report: one self-contained HTML page with inline SVG charts (no scripts, no external files).

Per series: the value against its expected band with alert and labelled-window spans, and the anomaly
score against the threshold of 1 — what someone tuning `threshold` and `contamination` wants to see.
Long series are decimated to the min and max of each bucket, so a single-point spike stays visible.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from exporter.backtest import BacktestResult
from exporter.reader import SeriesKey

W, LEFT, RIGHT, TOP, BOTTOM = 1000, 58, 34, 8, 22  # SVG units; the page scales them to its width
H1, H2 = 210, 110  # panel heights: value, score
DAY = 86400
TIME_STEPS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, DAY, 2 * DAY, 7 * DAY, 14 * DAY)
LEGEND = (
    "<i style='background:#1d5fbf'></i>observed<i style='background:#333'></i>expected"
    "<i style='background:#6f9fdc55'></i>expected band<i style='background:#d01c1c'></i>score ≥ 1"
    "<i style='background:#e0302a44'></i>alert firing<i style='background:#e8b40055'></i>labelled window"
    "<i style='background:#7b3fb3'></i>anomaly score"
)
SVG_LEGEND = (
    ("observed", "#1d5fbf"),
    ("expected band", "#6f9fdc88"),
    ("alert firing", "#e0302a55"),
    ("labelled window", "#e8b40066"),
    ("anomaly score", "#7b3fb3"),
    ("score ≥ 1", "#d01c1c"),
)
CSS = """body{font:14px system-ui,sans-serif;margin:16px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:20px;margin:0 0 4px}
h2{font:600 14px ui-monospace,monospace;margin:22px 0 2px;word-break:break-all}
.meta,.sum{color:#555;margin:2px 0}.sum{font-size:12px}svg{display:block;width:100%;height:auto}
.key i{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
svg text{font:11px sans-serif;fill:#555}.ax{stroke:#999;fill:none}.grid{stroke:#eee}
.obs{fill:none;stroke:#1d5fbf;stroke-width:1.2;stroke-linejoin:round;stroke-linecap:round}
.exp{fill:none;stroke:#333;stroke-width:.6}.band{fill:#6f9fdc;fill-opacity:.22}
.alert{fill:#e0302a;fill-opacity:.2}.window{fill:#e8b400;fill-opacity:.22}
.hit{fill:none;stroke:#d01c1c;stroke-width:3.5;stroke-linecap:round}.clip{fill:#d01c1c}
.score{fill:none;stroke:#7b3fb3;stroke-width:1;stroke-linejoin:round;stroke-linecap:round}
.thr{stroke:#d01c1c;stroke-width:1;stroke-dasharray:5 4}"""


def write_report(
    path: str | Path,
    result: BacktestResult,
    *,
    windows: Sequence[tuple[int, int]] = (),
    title: str = "Backtest",
    max_series: int = 20,
    max_points: int = 2000,
) -> None:
    """Write `result` as one offline HTML page: the `max_series` series with the highest max score first.

    `windows` are labelled anomaly windows as (start, end) epoch seconds (numpy datetime64 works too).
    """
    t = np.asarray(result.timestamps, dtype=np.int64)
    n = len(result.keys)
    peak = np.fmax.reduce(result.score, axis=1, initial=-np.inf) if n and len(t) else np.zeros(n)
    order = np.argsort(-peak, kind="stable")[: max(0, max_series)]
    spans = np.array(windows, dtype="datetime64[s]").astype(np.int64).reshape(-1, 2)
    head = f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    parts = [head, f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if len(t) == 0 or n == 0:
        parts.append("<p class='meta'>No data: the backtest has no series or no timestamps.</p>")
    else:
        step = int(np.median(np.diff(t))) if len(t) > 1 else 0
        more = f"; {n - len(order)} more not shown" if n > len(order) else ""
        parts.append(
            f"<p class='meta'>{_utc(t[0])} – {_utc(t[-1])} UTC, step {step} s · {n} series, "
            f"{len(order)} shown (highest max score first){more}</p><p class='meta key'>{LEGEND}</p>"
        )
        axis = _Axis(float(t[0]), float(max(t[-1], t[0] + 1)))
        parts += [_series(result, int(i), axis, spans, title, max(2, max_points)) for i in order]
    parts.append("</body></html>\n")
    Path(path).write_text("".join(parts), encoding="utf-8")


@dataclass(frozen=True)
class _Axis:
    """Maps epoch seconds to x in SVG units."""

    t0: float
    t1: float

    def x(self, t: np.ndarray | float) -> np.ndarray:
        return LEFT + (np.asarray(t, dtype=np.float64) - self.t0) / (self.t1 - self.t0) * (W - LEFT - RIGHT)


@dataclass(frozen=True)
class _Scale:
    """Maps data values to y in SVG units for a panel of height `h` (plot area from TOP to h - BOTTOM)."""

    lo: float
    hi: float
    h: int

    def px(self, v: np.ndarray | float, clip: bool = False) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            frac = (self.hi - np.asarray(v, dtype=np.float64)) / (self.hi - self.lo)
        y = TOP + frac * (self.h - TOP - BOTTOM)
        return np.clip(y, TOP, self.h - BOTTOM) if clip else y


def _panels(
    r: BacktestResult, i: int, axis: _Axis, windows: np.ndarray, max_points: int
) -> tuple[str, str, str]:
    """Summary line and the two panels (value and band; score) of series `i`, as SVG fragments."""
    t, values, score, alert = r.timestamps, r.values[i], r.score[i], np.asarray(r.alert[i], dtype=bool)
    b = math.ceil(len(t) / max_points)  # points per bucket; 1 = no decimation
    starts, ends = _runs(alert)  # from the full-resolution alert, never the decimated one
    hits = np.nan_to_num(score, nan=0.0) >= 1
    s_fin = _finite(score)
    caught = [bool(alert[(t >= s) & (t <= e)].any()) for s, e in windows if e >= t[0] and s <= t[-1]]
    summary = (
        f"{len(t)} points · {np.isfinite(values).sum()} with a value · {len(s_fin)} scored · "
        f"{hits.sum()} scored ≥ 1 · alert episodes: {len(starts)} · "
        f"max score: {_num(s_fin.max()) if len(s_fin) else '–'}"
        + (f" · labelled windows with an alert: {sum(caught)} of {len(caught)}" if caught else "")
    )
    # an alert span runs from its first firing point to the first point after the episode
    span_to = np.append(t, t[-1])[ends]

    def shade(h: int) -> str:
        labelled = _rects(axis, windows[:, 0], windows[:, 1], "window", h)
        return labelled + _rects(axis, t[starts], span_to, "alert", h)

    # panel 1; its y range ignores the band's extreme 1 % (the band can be very wide right after warm-up)
    lower, upper = _finite(r.lower[i]), _finite(r.upper[i])
    edges = [np.percentile(a, [q]) for a, q in ((lower, 1), (upper, 99)) if len(a)]
    seen = np.concatenate([_finite(values), _finite(r.expected[i]), *edges])
    lo, hi = (float(seen.min()), float(seen.max())) if len(seen) else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.1 or 1.0
    y1 = _Scale(lo - pad, hi + pad, H1)
    xc = axis.x(_bucket_mean(t.astype(np.float64), b))
    band_lo = y1.px(np.fmin.reduce(_buckets(r.lower[i], b), axis=1), clip=True)
    band_hi = y1.px(np.fmax.reduce(_buckets(r.upper[i], b), axis=1), clip=True)
    idx, v = _minmax(values, b)
    dots = np.column_stack([axis.x(t[hits]), y1.px(values[hits])])
    dots = np.unique(np.round(dots[np.isfinite(dots[:, 1])]), axis=0)  # one marker per pixel is enough
    panel1 = (
        _frame(axis, y1, labels=False)
        + shade(H1)
        + _el("band", _area(xc, band_lo, band_hi))
        + _el("exp", _path(xc, y1.px(_bucket_mean(r.expected[i], b))))
        + _el("obs", _path(axis.x(t[idx]), y1.px(v)))
        + _el("hit", "".join(f"M{x:g},{y:g}h0" for x, y in dots))
    )

    # panel 2: scores above `top` are drawn at `top` and marked, so one huge score doesn't flatten the rest
    top = max(3.0, float(np.percentile(s_fin, 99))) if len(s_fin) else 3.0
    y2 = _Scale(min(0.0, float(s_fin.min())) if len(s_fin) else 0.0, top * 1.04, H2)
    idx, s = _minmax(np.minimum(score, top), b)
    over = np.unique(np.round(axis.x(t[np.nan_to_num(score, nan=0.0) > top])))
    y_thr = float(y2.px(1.0))
    panel2 = (
        _frame(axis, y2, labels=True)
        + shade(H2)
        + f"<line class='thr' x1='{LEFT}' x2='{W - RIGHT}' y1='{y_thr:.1f}' y2='{y_thr:.1f}'/>"
        + _el("score", _path(axis.x(t[idx]), y2.px(s)))
        + _el("clip", "".join(f"M{x:g},{TOP - 2}l3,6h-6z" for x in over), f"score above {_num(top)}, clipped")
    )
    return summary, panel1, panel2


def _series(r: BacktestResult, i: int, axis: _Axis, windows: np.ndarray, title: str, max_points: int) -> str:
    summary, panel1, panel2 = _panels(r, i, axis, windows, max_points)
    return (
        f"<section><h2>{html.escape(_labels(r.keys[i], title))}</h2><p class='sum'>{html.escape(summary)}</p>"
        f"<svg viewBox='0 0 {W} {H1}' role='img'>{panel1}</svg>"
        f"<svg viewBox='0 0 {W} {H2}' role='img'>{panel2}</svg></section>"
    )


def write_svg(
    path: str | Path,
    result: BacktestResult,
    *,
    windows: Sequence[tuple[int, int]] = (),
    title: str = "Backtest",
    max_points: int = 2000,
) -> None:
    """One standalone SVG picture (styles inside) of the series with the highest max score: value, expected
    band, alert and labelled-window spans, and the score against its threshold line. For READMEs and chats."""
    t = np.asarray(result.timestamps, dtype=np.int64)
    if len(t) == 0 or not len(result.keys):
        raise ValueError("nothing to draw: the backtest has no series or no timestamps")
    peak = np.fmax.reduce(result.score, axis=1, initial=-np.inf)
    i = int(np.argmax(peak))
    spans = np.array(windows, dtype="datetime64[s]").astype(np.int64).reshape(-1, 2)
    axis = _Axis(float(t[0]), float(max(t[-1], t[0] + 1)))
    summary, panel1, panel2 = _panels(result, i, axis, spans, max(2, max_points))
    head = 44  # title, summary and legend lines above the panels
    legend = "".join(
        f"<rect x='{LEFT + k * 150}' y='32' width='14' height='9' style='fill:{color}'/>"
        f"<text x='{LEFT + k * 150 + 18}' y='40'>{html.escape(name)}</text>"
        for k, (name, color) in enumerate(SVG_LEGEND)
    )
    svg_css = CSS[CSS.index("svg text") :]
    text = (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {W} {head + H1 + H2}' role='img'>"
        f"<style>{svg_css}.title{{font:600 14px sans-serif;fill:#222}}</style>"
        f"<rect width='100%' height='100%' fill='#fff'/>"
        f"<text class='title' x='{LEFT}' y='14'>{html.escape(_labels(result.keys[i], title))}</text>"
        f"<text x='{LEFT}' y='28'>{html.escape(summary)}</text>{legend}"
        f"<g transform='translate(0,{head})'>{panel1}</g><g transform='translate(0,{head + H1})'>{panel2}</g>"
        "</svg>\n"
    )
    Path(path).write_text(text, encoding="utf-8")


def _frame(axis: _Axis, ys: _Scale, labels: bool) -> str:
    """Grid lines, y tick labels and (when `labels`) UTC time tick labels."""
    out, base = [], ys.h - BOTTOM
    for v in _nice(ys.lo, ys.hi):
        y = float(ys.px(v))
        out.append(f"<line class='grid' x1='{LEFT}' x2='{W - RIGHT}' y1='{y:.1f}' y2='{y:.1f}'/>")
        out.append(f"<text x='{LEFT - 4}' y='{y + 4:.1f}' text-anchor='end'>{_num(v)}</text>")
    span = axis.t1 - axis.t0
    step = next((s for s in TIME_STEPS if span / s <= 10), math.ceil(span / 10 / (7 * DAY)) * 7 * DAY)
    fmt = "%Y-%m-%d" if step >= DAY else "%m-%d %H:%M:%S" if step < 60 else "%m-%d %H:%M"
    monday = 4 * DAY if step >= 7 * DAY else 0  # weekly ticks on Mondays (the epoch was a Thursday)
    for tick in np.arange(math.ceil((axis.t0 - monday) / step) * step + monday, axis.t1 + 1, step):
        x = float(axis.x(tick))
        out.append(f"<line class='grid' x1='{x:.1f}' x2='{x:.1f}' y1='{TOP}' y2='{base}'/>")
        if labels:
            text = datetime.fromtimestamp(float(tick), UTC).strftime(fmt)
            out.append(f"<text x='{x:.1f}' y='{base + 15}' text-anchor='middle'>{text}</text>")
    if labels:
        out.append(f"<text x='{LEFT - 4}' y='{base + 15}' text-anchor='end'>UTC</text>")
    return "".join(out) + f"<path class='ax' d='M{LEFT},{TOP}V{base}H{W - RIGHT}'/>"


def _rects(axis: _Axis, t_from: np.ndarray, t_to: np.ndarray, cls: str, h: int) -> str:
    """Shaded vertical spans over the plot, clipped to it, at least 1 unit wide, with a UTC tooltip."""
    x0, x1 = (np.clip(axis.x(a), LEFT, W - RIGHT) for a in (t_from, t_to))
    inside = (t_to >= axis.t0) & (t_from <= axis.t1)
    what = "alert firing" if cls == "alert" else "labelled window"
    return "".join(
        f"<rect class='{cls}' x='{a:.1f}' y='{TOP}' width='{max(b - a, 1):.1f}' height='{h - TOP - BOTTOM}'>"
        f"<title>{what} {_utc(s)} – {_utc(e)} UTC</title></rect>"
        for a, b, s, e in zip(x0[inside], x1[inside], t_from[inside], t_to[inside], strict=True)
    )


def _el(cls: str, d: str, tooltip: str = "") -> str:
    """A path element, or nothing when there is nothing to draw."""
    tip = f"<title>{html.escape(tooltip)}</title>" if tooltip else ""
    return f"<path class='{cls}' d='{d}'>{tip}</path>" if d else ""


def _buckets(a: np.ndarray, b: int) -> np.ndarray:
    """`a` as (buckets, b), padded with NaN; non-finite values become NaN."""
    a = np.where(np.isfinite(a), a, np.nan)
    return np.concatenate([a, np.full(-len(a) % b, np.nan)]).reshape(-1, b)


def _bucket_mean(a: np.ndarray, b: int) -> np.ndarray:
    m = _buckets(a, b)
    count = np.isfinite(m).sum(axis=1)
    return np.where(count > 0, np.nansum(m, axis=1) / np.maximum(count, 1), np.nan)


def _minmax(a: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each bucket's min and max, in time order: spikes survive decimation."""
    m = _buckets(a, b)
    bad = np.isnan(m)
    i_lo = np.argmin(np.where(bad, np.inf, m), axis=1)
    i_hi = np.argmax(np.where(bad, -np.inf, m), axis=1)
    pair = np.column_stack([np.minimum(i_lo, i_hi), np.maximum(i_lo, i_hi)])
    rows = np.arange(len(m))[:, None]
    keep = np.ones(pair.shape, dtype=bool)
    keep[:, 1] = pair[:, 1] != pair[:, 0]
    return np.minimum(pair + rows * b, len(a) - 1)[keep], m[rows, pair][keep]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) index of every run of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _path(x: np.ndarray, y: np.ndarray) -> str:
    """SVG path through the points, broken at NaN (a gap, never a 0); a lone point becomes a dot."""
    xs, ys = np.round(x, 1), np.round(y, 1)
    runs = np.column_stack(_runs(np.isfinite(x) & np.isfinite(y)))
    pts = [" ".join(f"{a:g},{b:g}" for a, b in zip(xs[s:e], ys[s:e], strict=True)) for s, e in runs]
    return "".join(f"M{p}" + ("" if " " in p else "h0") for p in pts)


def _area(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    """Filled area between `lo` and `hi`, one polygon per stretch where both are known."""
    runs = np.column_stack(_runs(np.isfinite(lo) & np.isfinite(hi)))
    return "".join(_path(np.r_[x[s:e], x[s:e][::-1]], np.r_[hi[s:e], lo[s:e][::-1]]) + "Z" for s, e in runs)


def _nice(lo: float, hi: float, n: int = 4) -> np.ndarray:
    """About `n` round tick values (1, 2, 2.5 or 5 × 10^k apart) within [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return np.arange(math.ceil(lo / step), math.floor(hi / step) + 1) * step  # k × step: 0 is exactly 0


def _num(v: float) -> str:
    """About 4 significant digits, with k/M/G/T for large values."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= 10 * div:
            return f"{v / div:.4g}{suffix}"
    return f"{v:.4g}"


def _labels(key: SeriesKey, title: str) -> str:
    """`name{a="x", b="y"}` as Prometheus writes a series (before HTML escaping); no labels → `title`."""
    if not key:
        return title
    quoted = {k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in key}
    pairs = ", ".join(f'{k}="{v}"' for k, v in quoted.items() if k != "__name__")
    name = dict(key).get("__name__", "")
    return name + ("{" + pairs + "}" if pairs or not name else "")


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M")
