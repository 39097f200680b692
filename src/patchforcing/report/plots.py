"""Line plots for the reports: PNG through matplotlib when it is installed (an optional extra,
imported here only), otherwise a small hand-written SVG with the same lines.

A series is ``(label, xs, ys, yerr or None, style)`` with ``style`` a dict of optional
``color``, ``linestyle`` (``"-"``, ``"--"``, ``":"`` or ``"-."``) and ``marker``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Series = tuple[str, Sequence[float], Sequence[float], "Sequence[float] | None", dict]

_SVG_DASH = {"--": ' stroke-dasharray="6,3"', ":": ' stroke-dasharray="2,3"', "-.": ' stroke-dasharray="6,3,2,3"'}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def line_plot(path: Path, series: list[Series], *, title: str, xlabel: str, ylabel: str,
              logy: bool = False, xticks: Sequence[float] | None = None) -> Path:
    """One panel of lines: ``path`` (``.png``), or ``path.with_suffix('.svg')`` without matplotlib.

    Returns:
        The path actually written.
    """
    return panel_plot(path, [(title, series)], xlabel=xlabel, ylabel=ylabel, logy=logy, xticks=xticks)


def panel_plot(path: Path, panels: list[tuple[str, list[Series]]], *, xlabel: str, ylabel: str, logy: bool = False,
               xticks: Sequence[float] | None = None, suptitle: str | None = None) -> Path:
    """Side-by-side panels sharing the y axis, each ``(title, series)`` with its own legend below it.

    Without matplotlib, one SVG with every series (labels prefixed by their panel's title).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        merged = [(f"{t}: {s[0]}" if len(panels) > 1 else s[0], *s[1:]) for t, ss in panels for s in ss]
        return _svg_plot(path.with_suffix(".svg"), merged, title=suptitle or panels[0][0], xlabel=xlabel, ylabel=ylabel, logy=logy)
    n = len(panels)
    legend_rows = max(len(ss) for _, ss in panels) if n > 1 else 0
    fig = Figure(figsize=(7.5 if n == 1 else 3.4 * n, 4.6 + 0.17 * legend_rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels, strict=False):
        for label, xs, ys, yerr, style in series:
            pts = [(x, y, e) for x, y, e in zip(xs, ys, yerr or [None] * len(xs), strict=False) if y is not None]
            if not pts:
                continue
            px, py, pe = zip(*pts, strict=False)
            kw: dict[str, Any] = dict(label=label, color=style.get("color"), marker=style.get("marker", "o"),
                                      linestyle=style.get("linestyle", "-"), linewidth=1.6, markersize=4)
            if yerr is not None and any(e for e in pe):
                ax.errorbar(px, py, yerr=[e or 0.0 for e in pe], capsize=2, elinewidth=0.8, alpha=0.9, **kw)
            else:
                ax.plot(px, py, **kw)
        if logy:
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
        if xticks:
            ax.set_xticks(list(xticks))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(True, alpha=0.3)
        if n == 1:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    axes[0].set_ylabel(ylabel)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _svg_plot(path: Path, series: list[Series], *, title: str, xlabel: str, ylabel: str, logy: bool) -> Path:
    """The same lines as a plain SVG (no error bars, no dependencies)."""
    width, height, left, right, top, bottom = 760, 420, 60, 230, 30, 45
    tf = (lambda v: math.log10(v)) if logy else (lambda v: v)
    pts = [(x, tf(y)) for _, xs, ys, _, _ in series for x, y in zip(xs, ys, strict=False) if y is not None and (not logy or y > 0)]
    if not pts:
        pts = [(0.0, 0.0), (1.0, 1.0)]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2 - right / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
           f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
           f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
           f'text-anchor="middle">{html.escape(ylabel)}{" (log)" if logy else ""}</text>']
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        ylab = 10 ** yv if logy else yv
        out.append(f'<text x="{sx(xv):.1f}" y="{height - bottom + 15}" text-anchor="middle">{xv:.4g}</text>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{ylab:.3g}</text>')
    for i, (label, xs, ys, _, style) in enumerate(series):
        color = style.get("color") or PALETTE[i % len(PALETTE)]
        line = " ".join(f"{sx(x):.1f},{sy(tf(y)):.1f}" for x, y in zip(xs, ys, strict=False) if y is not None and (not logy or y > 0))
        dash = _SVG_DASH.get(style.get("linestyle", "-"), "")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{line}"/>')
        ly = top + 14 * i
        out.append(f'<line x1="{width - right + 10}" y1="{ly}" x2="{width - right + 30}" y2="{ly}" stroke="{color}"{dash}/>')
        out.append(f'<text x="{width - right + 34}" y="{ly + 4}">{html.escape(label)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    return path


def training_curve(path: Path, train_rows: list[dict], val_rows: list[dict], title: str = "training") -> Path:
    """Training loss (and its flow part) and the validation loss against the step."""
    series: list[Series] = []
    if train_rows:
        steps = [r["step"] for r in train_rows]
        series.append(("loss (flow + 0.01 nll)", steps, [r.get("loss") for r in train_rows], None, {"color": PALETTE[0], "marker": ""}))
        if any(r.get("flow_loss") is not None for r in train_rows):
            series.append(("flow loss", steps, [r.get("flow_loss") for r in train_rows], None, {"color": PALETTE[2], "marker": "", "linestyle": "--"}))
    if val_rows:
        series.append(("validation loss (EMA, 8 segments)", [r["step"] for r in val_rows], [r["val_loss"] for r in val_rows],
                       None, {"color": PALETTE[1], "marker": "o"}))
    positive = all(y is None or y > 0 for _, _, ys, _, _ in series for y in ys)
    return line_plot(path, series, title=title, xlabel="step", ylabel="loss", logy=positive)
