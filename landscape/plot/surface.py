"""Figures from surfaces: contour, filled contour, heat map, 3-D surface, 1-D loss/accuracy, side-by-side comparisons.

Works on `Surface` objects only (storage.py) and uses matplotlib's object API: every
figure is a `matplotlib.figure.Figure`, never pyplot's global state, and no backend is
chosen here. Each drawing function takes an optional `ax` and returns the artist (or
axes) that a caller needs; `.axes` and `.axes.figure` lead from an artist to the rest.

Points that are not done are masked (not drawn). Values at done points are drawn as
they are, except the non-finite ones (a diverged point): NaN and +inf are drawn as the
top of the range, -inf as the bottom. The 3-D surface leaves out what lies above its top
(diverged points included), as the paper's figures do, instead of drawing a flat slab there.

Contour levels and colour ranges not given are chosen from the data (`choose_levels`):
evenly spaced round values, or log-spaced ones (1-2-5 and finer series) where the computed
values span more than `LOG_SPAN`; given ones keep the reference's `np.arange(vmin, vmax, vlevel)`.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm, Normalize
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from landscape.errors import LandscapeError

if TYPE_CHECKING:  # figures need a Surface's arrays only: no import of the store (it imports this lazily)
    from landscape.storage import Surface

DPI = 150
CMAP = "viridis"  # contour, filled contour, heat map
CMAP_3D = "coolwarm"  # the reference code's 3-D colour map
LINE_METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
AUTO_LEVELS = 12  # about this many contour levels when they are chosen from the data
LOG_SPAN = 20.0  # chosen levels are log-spaced when the values' max / min exceeds this (min > 0)
MAX_LEVELS = 1000  # a vlevel that makes more levels than this is refused (far too small for the range)
_LOG_SERIES = ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,))  # per decade, finest first


# ---------------------------------------------------------------------------- levels


@dataclass(frozen=True)
class Levels:
    """What a figure's values are drawn against: contour `levels`, the colour range vmin..vmax
    (also the top of the 3-D surface), and whether colours are on a log scale."""

    levels: np.ndarray  # increasing
    vmin: float
    vmax: float
    log: bool = False

    @property
    def norm(self) -> Normalize:
        return LogNorm(self.vmin, self.vmax) if self.log else Normalize(self.vmin, self.vmax)


def _finite(name: str, v: float | None) -> None:
    if v is not None and not np.isfinite(v):
        raise LandscapeError(f"{name} must be a finite number, got {v}", name)


def _linear_levels(lo: float, hi: float) -> np.ndarray:
    """Round, evenly spaced values from the last at or below `lo` to the first at or above `hi`."""
    ticks = MaxNLocator(AUTO_LEVELS, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    i0 = max(int(np.searchsorted(ticks, lo, side="right")) - 1, 0)
    i1 = min(int(np.searchsorted(ticks, hi, side="left")), len(ticks) - 1)
    return np.array([float(f"{t:.12g}") for t in ticks[i0:i1 + 1]])  # 0.6, not 0.6000000000000001


def _log_levels(lo: float, hi: float) -> np.ndarray:
    """Values of the finest 1-1.5-2-3-5-7, 1-2-5, 1-3 or 1 series per decade that gives at most
    2 * AUTO_LEVELS of them (else every k-th power of 10), from the last at or below `lo` (> 0) to
    the first at or above `hi`."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for series in _LOG_SERIES:
        cand = np.array([float(f"{m}e{e}") for e in range(e0, e1 + 1) for m in series])  # the decimal values
        i0 = max(int(np.searchsorted(cand, lo, side="right")) - 1, 0)
        i1 = min(int(np.searchsorted(cand, hi, side="left")), len(cand) - 1)
        levels = cand[i0:i1 + 1]
        if len(levels) <= 2 * AUTO_LEVELS:
            return levels
    k = math.ceil((e1 - e0) / (2 * AUTO_LEVELS))  # many decades: every k-th power of 10
    return np.array([float(f"1e{e}") for e in range(k * (e0 // k), -(-e1 // k) * k + 1, k)])


def choose_levels(
    values: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    log: bool = False,
) -> Levels:
    """Contour levels and colour range for `values` (the computed ones; non-finite ones are ignored).

    Given `vmin`, `vmax` and `vlevel`: the reference's `np.arange(vmin, vmax, vlevel)`, colours
    vmin..vmax. Each one not given comes from the data: the range from the smallest and largest
    value, the levels as about `AUTO_LEVELS` round values bracketing it, log-spaced (with log
    colours) where the smallest value is positive and the largest is more than `LOG_SPAN` times
    it, or always with `log` (which then needs positive values: smaller ones are drawn at vmin).
    """
    for name, v in (("vmin", vmin), ("vmax", vmax), ("vlevel", vlevel)):
        _finite(name, v)
    if vlevel is not None and not vlevel > 0:
        raise LandscapeError(f"vlevel must be positive, got {vlevel}", "vlevel")
    if vmin is not None and vmax is not None:
        _check_range(vmin, vmax)
    if log and vmin is not None and not vmin > 0:
        raise LandscapeError(f"a log scale needs vmin > 0, got vmin={vmin}; pass a positive vmin or drop log", "vmin")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)] if log else v[np.isfinite(v)]
    if not v.size:
        if log and vmin is None:
            raise LandscapeError("a log scale needs positive values, and no computed value is positive; drop log",
                                 "log")
        v = np.array([vmin if vmin is not None else 0.0, vmax if vmax is not None else 1.0])
    lo = float(vmin) if vmin is not None else float(v.min())
    hi = float(vmax) if vmax is not None else float(v.max())
    if not lo < hi:
        if vmin is not None:
            raise LandscapeError(f"vmin={vmin} is not below the largest value computed ({hi:g}); lower vmin "
                                 "or give vmax too", "vmin")
        if vmax is not None:
            raise LandscapeError(f"vmax={vmax} is not above the smallest value computed ({lo:g}); raise vmax "
                                 "or give vmin too", "vmax")
        lo, hi = (lo / 2, hi * 2) if log else (lo - (abs(lo) / 10 or 1.0), hi + (abs(hi) / 10 or 1.0))  # flat
    if vlevel is not None:
        start = lo if vmin is not None else math.floor(lo / vlevel) * vlevel
        if log and not start > 0:
            start = lo
        count = math.ceil((hi - start) / vlevel) + (vmax is None)
        if count > MAX_LEVELS:
            raise LandscapeError(f"vlevel={vlevel} makes {count} contour levels between {start:g} and {hi:g}; pass "
                                 "a larger vlevel, or none to choose the levels from the data", "vlevel")
        # the reference's arange(vmin, vmax, vlevel), stopping below vmax; with vmax from the data, reaching it
        levels = np.arange(start, hi, vlevel) if vmax is not None else start + vlevel * np.arange(count)
        return Levels(levels, start, hi if vmax is not None else float(max(hi, levels[-1])), log)
    spaced_log = log or (lo > 0 and hi / lo > LOG_SPAN)
    levels = _log_levels(lo, hi) if spaced_log else _linear_levels(lo, hi)
    if vmin is not None:
        levels = levels[levels >= vmin]
    if vmax is not None:
        levels = levels[levels <= vmax]
    if not levels.size:
        levels = np.array([lo])
    low = lo if vmin is not None else float(min(lo, levels[0]))
    high = hi if vmax is not None else float(max(hi, levels[-1]))
    return Levels(levels, low, high, spaced_log)


# ---------------------------------------------------------------------------- helpers


def _values(surf: Surface, metric: str, low: float, high: float) -> np.ma.MaskedArray:
    """The metric with not-done points masked, NaN/+inf at done points set to `high`, -inf to `low`."""
    if metric not in surf.metrics:
        raise LandscapeError(
            f"metric {metric!r} is not in the surface; available: {', '.join(sorted(surf.metrics)) or 'none'}"
        )
    if not surf.done.any():
        raise LandscapeError("the surface has no computed point yet; compute some with scripts/plot_surface.py")
    z = np.array(surf.metrics[metric], dtype=np.float64)  # a copy: the surface is not changed
    done = surf.done
    z[done & (np.isnan(z) | np.isposinf(z))] = high
    z[done & np.isneginf(z)] = low
    return np.ma.masked_array(z, mask=~done)


def _computed(surf: Surface, metric: str) -> np.ndarray:
    """The metric's values at done points, after the checks of `_values`."""
    _values(surf, metric, 0.0, 0.0)
    return np.asarray(surf.metrics[metric], dtype=np.float64)[surf.done]


def _levels(surf: Surface, metric: str, vmin: float | None, vmax: float | None, vlevel: float | None,
            log: bool) -> Levels:
    return choose_levels(_computed(surf, metric), vmin, vmax, vlevel, log)


def _shown(surf: Surface, metric: str, lv: Levels) -> np.ma.MaskedArray:
    """`_values` against `lv`; on a log scale, values at or below 0 are drawn at its bottom."""
    z = _values(surf, metric, lv.vmin, lv.vmax)
    if lv.log:
        z = np.ma.masked_array(np.maximum(z.data, lv.vmin), mask=z.mask)
    return z


def _check_range(vmin: float, vmax: float, vlevel: float | None = None) -> None:
    if not vmin < vmax:
        raise LandscapeError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
    if vlevel is not None and not vlevel > 0:
        raise LandscapeError(f"vlevel must be positive, got {vlevel}")


def _need_2d(surf: Surface, what: str) -> None:
    if surf.ndim != 2:
        raise LandscapeError(f"a {what} needs a 2-D surface, this one is 1-D; use scripts/plot_1d.py")
    if min(surf.shape) < 2:
        ny, nx = surf.shape
        raise LandscapeError(f"a {what} needs at least 2 points along x and y, the grid has nx={nx}, ny={ny}")


def _axes(ax: Axes | None, projection: str | None = None) -> Axes:
    if ax is None:
        return Figure().add_subplot(projection=projection)
    if projection is not None and ax.name != projection:
        raise ValueError(f"ax must be a {projection!r} axes, got a {ax.name!r} axes")
    return ax


def _title(metric: str) -> str:
    return metric.replace("_", " ")


def _label_xy(ax: Axes) -> None:
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")


def _band(surf: Surface, metric: str, values: np.ma.MaskedArray) -> tuple[np.ndarray, np.ndarray]:
    """values -+ 2 standard errors (`<metric>_se`), NaN where not done."""
    se = np.where(surf.done, surf.metrics[f"{metric}_se"], np.nan)
    v = np.ma.filled(values.astype(np.float64), np.nan)
    return v - 2 * se, v + 2 * se


# ---------------------------------------------------------------------------- 2-D


def contour(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    ax: Axes | None = None,
    log: bool = False,
) -> QuadContourSet:
    """Contour lines with inline labels (the reference's plot): at `np.arange(vmin, vmax, vlevel)`
    when all three are given, else at levels chosen from the data (`choose_levels`)."""
    _need_2d(surf, "contour plot")
    lv = _levels(surf, metric, vmin, vmax, vlevel, log)
    z = _shown(surf, metric, lv)  # (ny, nx)
    ax = _axes(ax)
    cs = ax.contour(surf.x, surf.y, z, levels=lv.levels, cmap=CMAP, **({"norm": lv.norm} if lv.log else {}))
    chosen = vlevel is None or lv.log  # levels of a few significant digits: labelled as such (0.005, not 0)
    ax.clabel(cs, inline=True, fontsize=8, **({"fmt": lambda v: f"{v:.3g}"} if chosen else {}))
    _label_xy(ax)
    ax.set_title(_title(metric))
    return cs


def contourf(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    ax: Axes | None = None,
    log: bool = False,
) -> QuadContourSet:
    """Filled contours between the levels of `contour`, values outside drawn in the end colours."""
    _need_2d(surf, "filled contour plot")
    lv = _levels(surf, metric, vmin, vmax, vlevel, log)
    z = _shown(surf, metric, lv)  # (ny, nx)
    ax = _axes(ax)
    cs = ax.contourf(surf.x, surf.y, z, levels=lv.levels, cmap=CMAP, extend="both",
                     **({"norm": lv.norm} if lv.log else {}))
    ax.figure.colorbar(cs, ax=ax)
    _label_xy(ax)
    ax.set_title(_title(metric))
    return cs


def heatmap(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    ax: Axes | None = None,
    log: bool = False,
) -> QuadMesh:
    """Heat map with one cell per grid point, centred on its (x, y); row = y, column = x, y upwards.

    Cells extend half a step beyond the first and last coordinates; uneven grids are drawn
    correctly. Colours span vmin..vmax (each chosen from the data when not given, `choose_levels`;
    log colours with `log` or where the data span decades); values outside take the end colours.
    """
    _need_2d(surf, "heat map")
    lv = _levels(surf, metric, vmin, vmax, None, log)
    z = _shown(surf, metric, lv)  # (ny, nx)
    ax = _axes(ax)
    mesh = ax.pcolormesh(surf.x, surf.y, z, shading="nearest", cmap=CMAP, norm=lv.norm)
    ax.figure.colorbar(mesh, ax=ax)
    _label_xy(ax)
    ax.set_title(_title(metric))
    return mesh


def surface3d(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    zlim: float | None = None,
    ax: Axes | None = None,
    log: bool = False,
) -> Poly3DCollection:
    """3-D surface of the values up to `zlim`: higher ones (diverged points included) and points not
    done are left out, as holes (the paper's figures), lower than `vmin` are drawn at `vmin`.

    `zlim` not given: the top of the colour range chosen from the data (`choose_levels`); `vmin`
    not given: the smallest value. `log`: z and colours on a log scale (z is drawn as log10 of the
    value, its ticks labelled with the values), for positive values (smaller ones drawn at vmin).
    """
    _need_2d(surf, "3-D surface plot")
    _finite("zlim", zlim)
    _finite("vmin", vmin)
    if vmin is not None and zlim is not None and not vmin < zlim:
        raise LandscapeError(f"vmin must be below zlim, got vmin={vmin} and zlim={zlim}", "vmin")
    if log and ((vmin is not None and not vmin > 0) or (zlim is not None and not zlim > 0)):
        raise LandscapeError(f"a log scale needs vmin and zlim > 0, got vmin={vmin}, zlim={zlim}; pass positive "
                             "ones or drop log", "log")
    computed = _computed(surf, metric)
    shown = computed[np.isfinite(computed) & ((computed > 0) if log else True)]
    if log and not shown.size and (vmin is None or zlim is None):
        raise LandscapeError(f"a log scale needs positive values, and no computed value of {metric} is positive; "
                             "drop log", "log")
    top = zlim if zlim is not None else choose_levels(shown, log=log).vmax
    bottom = vmin if vmin is not None else (float(min(shown.min(), top)) if shown.size else top)
    if not bottom < top:  # every value at or above the top
        bottom = top / 10 if log else top - 1.0
    z = _values(surf, metric, -np.inf, np.inf).filled(np.nan)  # (ny, nx); NaN = not done
    zz = np.where(z > top, np.nan, np.maximum(z, bottom))  # (ny, nx); NaN: left out, a hole
    z_lo, z_hi = (math.log10(bottom), math.log10(top)) if log else (bottom, top)
    if log:
        zz = np.log10(zz)
    ax = _axes(ax, projection="3d")
    X, Y = np.meshgrid(surf.x, surf.y)  # (ny, nx) each
    poly = ax.plot_surface(X, Y, zz, cmap=CMAP_3D, vmin=z_lo, vmax=z_hi, linewidth=0, antialiased=False)
    bar = ax.figure.colorbar(poly, ax=ax, shrink=0.5, aspect=10, pad=0.12)  # pad: room for the z label
    _label_xy(ax)
    if log:
        values = FuncFormatter(lambda v, _: f"{10.0 ** v:.3g}")
        for axis in (ax.zaxis, bar.ax.yaxis):
            if z_hi - z_lo >= 2:  # spans decades: ticks at powers of 10
                axis.set_major_locator(MaxNLocator(nbins=6, integer=True))
            axis.set_major_formatter(values)
    ax.set_zlabel(_title(metric) + (" (log scale)" if log else ""))
    ax.set_title(_title(metric))
    return poly


# ---------------------------------------------------------------------------- 1-D


def line1d(
    surf: Surface,
    log: bool = False,
    loss_max: float | None = None,
    acc_min: float | None = None,
    ax: Axes | None = None,
    xlim: tuple[float | None, float | None] | None = None,
) -> tuple[Axes, Axes | None]:
    """Loss on the left axis (log scale if `log`), accuracy in % on the right; train solid, test dashed.

    Accuracy is stored as a fraction and shown as a percentage. Returns (loss axes, accuracy
    axes), the latter None when the surface has no accuracy.
    """
    if surf.ndim != 1:
        raise LandscapeError("a 1-D plot needs a 1-D surface, this one is 2-D; use scripts/plot_2d.py")
    losses = [m for m in ("train_loss", "test_loss") if m in surf.metrics]
    accs = [m for m in ("train_acc", "test_acc") if m in surf.metrics]
    if not losses and not accs:
        raise LandscapeError(
            f"a 1-D plot needs one of {', '.join(LINE_METRICS)}; "
            f"the surface has {', '.join(sorted(surf.metrics)) or 'no metric'}"
        )
    ax = _axes(ax)
    style = {"train": "-", "test": "--"}
    for m in losses:
        y = _values(surf, m, -np.inf, np.inf)  # (nx,); infinities resolved below, from the data
        finite = y.compressed()[np.isfinite(y.compressed())]
        top = loss_max if loss_max is not None else (finite.max() if finite.size else 1.0)
        low = finite.min() if finite.size else top
        y = np.ma.masked_array(np.nan_to_num(y.data, nan=top, posinf=top, neginf=low), mask=y.mask)
        split = m.split("_")[0]
        (ax.semilogy if log else ax.plot)(surf.x, y, "b" + style[split], lw=1, label=f"{split} loss")
        if f"{m}_se" in surf.metrics:  # sampled: a band of +-2 standard errors
            lo, hi = _band(surf, m, y)
            if log:
                lo = np.maximum(lo, low if low > 0 else np.nan)
            ax.fill_between(surf.x, lo, hi, color="b", alpha=0.2, lw=0, label=f"{split} loss ±2 SE")
        bad = surf.done & ~np.isfinite(surf.metrics[m])  # diverged points: drawn at the top, marked
        if bad.any():
            ax.plot(surf.x[bad], np.full(int(bad.sum()), top), "kx", ms=5, label=f"{split} loss not finite")
    ax.set_xlabel("x (direction)")
    ax.set_ylabel("loss", color="b")
    ax.tick_params(axis="y", labelcolor="b")
    if loss_max is not None and log:
        ax.set_ylim(top=loss_max)
    elif loss_max is not None:
        ax.set_ylim(0, loss_max)
    ax_acc = None
    if accs:
        ax_acc = ax.twinx()
        for m in accs:
            a = _values(surf, m, 0.0, 1.0)  # (nx,); a NaN accuracy is not expected, drawn as the top
            split = m.split("_")[0]
            ax_acc.plot(surf.x, 100.0 * a, "r" + style[split], lw=1, label=f"{split} accuracy")
            if f"{m}_se" in surf.metrics:
                lo, hi = _band(surf, m, a)
                ax_acc.fill_between(surf.x, 100.0 * np.clip(lo, 0, 1), 100.0 * np.clip(hi, 0, 1), color="r",
                                    alpha=0.15, lw=0)
        ax_acc.set_ylabel("accuracy (%)", color="r")
        ax_acc.tick_params(axis="y", labelcolor="r")
        ax_acc.set_ylim(acc_min if acc_min is not None else 0.0, 100.0)
    if xlim is not None:
        ax.set_xlim(*xlim)
    handles = [h for a in (ax, ax_acc) if a is not None for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="best", fontsize=8)
    return ax, ax_acc


# ---------------------------------------------------------------------------- error bars (sampled surfaces)


def sampling_summary(surf: Surface, metric: str = "train_loss") -> str:
    """One line for a title: the tolerance and the forwards used against a full evaluation."""
    from landscape.sampling.adaptive import forwards_used  # no model code: counts from the surface only

    split = metric.split("_")[0]
    used, full = forwards_used(surf, split)
    plan = (surf.settings or {}).get("sampling") or {}
    tol = plan.get("tolerance")
    head = (f"{plan.get('z', 2):g} SE ≤ {tol:g} below vmax" if tol is not None
            else f"fixed subset of {used // max(1, int(surf.done.sum())):,}")
    return f"{head}; {used:,} forwards vs {full:,} full ({full / max(used, 1):.0f}× fewer)"


def error_panels(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    fig: Figure | None = None,
    log: bool = False,
) -> Figure:
    """A sampled surface: its contour plot (left) beside a heat map of 2 SE where the value is below
    vmax (right), titled with the tolerance and the forwards used versus a full evaluation. Levels
    not given are chosen from the data (`choose_levels`)."""
    se_name = f"{metric}_se"
    if se_name not in surf.metrics:
        raise LandscapeError(f"{metric!r} has no standard errors ({se_name}); compute the surface with "
                             "--tolerance or --n-samples")
    fig = fig if fig is not None else Figure(figsize=(11, 4.6), layout="constrained")
    if fig.get_size_inches()[0] < 9:
        fig.set_size_inches(11, 4.6)
    contour(surf, metric, vmin, vmax, vlevel, ax=fig.add_subplot(1, 2, 1), log=log)
    lv = _levels(surf, metric, vmin, vmax, vlevel, log)
    vmax = lv.vmax
    ax = fig.add_subplot(1, 2, 2)
    two_se = np.ma.masked_array(2 * np.nan_to_num(surf.metrics[se_name], nan=0.0), mask=~surf.done)  # (ny, nx)
    shown = np.ma.masked_where(np.ma.filled(_values(surf, metric, lv.vmin, vmax), vmax) >= vmax, two_se)
    mesh = ax.pcolormesh(surf.x, surf.y, shown, shading="nearest", cmap=CMAP)
    fig.colorbar(mesh, ax=ax, label="2 SE")
    _label_xy(ax)
    ax.set_title(f"2 SE of {_title(metric)} (where below vmax={vmax:g})")
    fig.suptitle(sampling_summary(surf, metric), fontsize=10)
    return fig


# ---------------------------------------------------------------------------- comparisons

LAYOUTS = ("columns", "rows")


def comparison_figure(
    surfaces: Sequence[Surface],
    titles: Sequence[str],
    metric: str = "train_loss",
    vmin: float = 0.1,
    vmax: float = 10.0,
    vlevel: float = 0.5,
    zlim: float | None = None,
    layout: str = "columns",
) -> Figure:
    """Several surfaces side by side on identical scales (Li et al. 2018, Fig. 5).

    `layout="columns"`: one column per surface, contour lines on top (levels
    `np.arange(vmin, vmax, vlevel)` for all) and the 3-D surface below; `"rows"`: one row per
    surface, contour left and 3-D right. Every 3-D panel has the same z-range and colour
    scale: from the lowest finite value over all surfaces (at most `zlim`) up to `zlim`
    (default `vmax`), values above left out, with one shared colour bar. Each panel is titled
    with its entry of `titles`.
    """
    if len(surfaces) == 0:
        raise LandscapeError("comparison_figure needs at least one surface")
    if len(titles) != len(surfaces):
        raise ValueError(f"titles must have one entry per surface ({len(surfaces)}), got {len(titles)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _check_range(vmin, vmax, vlevel)
    top = vmax if zlim is None else zlim
    lows = []
    for s in surfaces:  # fail early, before any figure exists
        _need_2d(s, "comparison figure")
        z = _values(s, metric, np.inf, np.inf).compressed()  # non-finite -> inf: ignored by min
        lows.append(z.min() if z.size else np.inf)
    bottom = min(min(lows), top)
    if not bottom < top:
        bottom = top - 1.0  # every value is at or above the top: a flat clipped surface
    n = len(surfaces)
    nrows, ncols = (2, n) if layout == "columns" else (n, 2)
    fig = Figure(figsize=(4.6 * ncols, 4.2 * nrows), layout="constrained")
    axes3d, polys = [], []
    for k, (surf, title) in enumerate(zip(surfaces, titles)):
        at_contour, at_3d = (k + 1, ncols + k + 1) if layout == "columns" else (2 * k + 1, 2 * k + 2)
        ax = fig.add_subplot(nrows, ncols, at_contour)
        contour(surf, metric, vmin, vmax, vlevel, ax=ax)
        ax.set_title(title)
        ax3 = fig.add_subplot(nrows, ncols, at_3d, projection="3d")
        poly = surface3d(surf, metric, vmin=bottom, zlim=top, ax=ax3)
        poly.colorbar.remove()  # every panel has the same scale: one shared colour bar below
        ax3.set_zlim(bottom, top)
        ax3.set_title(title)
        axes3d.append(ax3)
        polys.append(poly)
    fig.colorbar(polys[-1], ax=axes3d, shrink=0.6, aspect=30, pad=0.08, label=_title(metric))
    return fig


# ---------------------------------------------------------------------------- files


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write `stem.png` (150 dpi) and `stem.pdf`, creating folders; return both paths."""
    paths = [Path(f"{stem}.png"), Path(f"{stem}.pdf")]  # not with_suffix: stems may hold dots
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        fig.savefig(p, dpi=DPI, bbox_inches="tight")
    return paths


def surface_figures(
    surf: Surface,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    zlim: float | None = None,
    log: bool = False,
    loss_max: float | None = None,
    acc_min: float | None = None,
    xlim: tuple[float | None, float | None] | None = None,
    new_figure: Callable[[], Figure] = Figure,
) -> dict[str, Figure]:
    """The standard figures, keyed by file-name suffix; `new_figure` makes each (pass `pyplot.figure` to show).

    2-D: `<metric>_2dcontour`, `_2dcontourf`, `_2dheat`, `_3dsurface` (values above `zlim`, default
    the colour range's top, left out), and `_2derror` (contour beside 2 SE) for a sampled surface.
    vmin, vmax, vlevel not given are chosen from the data (`choose_levels`), one choice for every
    figure: where it is log-spaced (with `log`, or values spanning decades) the colours and the 3-D
    z axis are on a log scale too. 1-D: `1d`, and `1d_log` when `log`; `loss_max`, `acc_min` and
    `xlim` apply to 1-D only.
    """
    figs: dict[str, Figure] = {}
    if surf.ndim == 2:
        lv = _levels(surf, metric, vmin, vmax, vlevel, log)  # fails early, before any figure exists
        for name, draw in (
            ("2dcontour", lambda a: contour(surf, metric, vmin, vmax, vlevel, ax=a, log=log)),
            ("2dcontourf", lambda a: contourf(surf, metric, vmin, vmax, vlevel, ax=a, log=log)),
            ("2dheat", lambda a: heatmap(surf, metric, lv.vmin, lv.vmax, ax=a, log=lv.log)),
        ):
            fig = new_figure()
            draw(fig.add_subplot())
            figs[f"{metric}_{name}"] = fig
        fig = new_figure()
        surface3d(surf, metric, zlim=lv.vmax if zlim is None else zlim, ax=fig.add_subplot(projection="3d"),
                  log=lv.log)
        figs[f"{metric}_3dsurface"] = fig
        if f"{metric}_se" in surf.metrics:  # sampled: contour beside its error bars
            figs[f"{metric}_2derror"] = error_panels(surf, metric, vmin, vmax, vlevel, fig=new_figure(), log=log)
    else:
        for name, is_log in (("1d", False), ("1d_log", True)):
            if is_log and not log:
                continue
            fig = new_figure()
            line1d(surf, log=is_log, loss_max=loss_max, acc_min=acc_min, ax=fig.add_subplot(), xlim=xlim)
            figs[name] = fig
    return figs


def plot_surface_figures(
    surf: Surface,
    out_stem: str | Path,
    metric: str = "train_loss",
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    zlim: float | None = None,
    log: bool = False,
    loss_max: float | None = None,
    acc_min: float | None = None,
    xlim: tuple[float | None, float | None] | None = None,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Draw the standard figures (see `surface_figures`) and write each as `<out_stem>_<suffix>.png/.pdf`.

    `only`: write just the figures whose suffix ends with one of these (e.g. `("2derror",)`).
    Returns every path written.
    """
    figs = surface_figures(surf, metric, vmin, vmax, vlevel, zlim, log, loss_max, acc_min, xlim)
    if only is not None:
        figs = {k: f for k, f in figs.items() if any(k.endswith(o) for o in only)}
        if not figs:
            raise LandscapeError(f"no figure matches {', '.join(only)}; this surface has "
                                 f"{', '.join(surface_figures(surf, metric, vmin, vmax, vlevel, zlim, log))}")
    return [p for suffix, fig in figs.items() for p in save_figure(fig, f"{out_stem}_{suffix}")]


def losses(surf: Surface) -> list[str]:
    """The surface's losses, in file order: `loss` and every `<split>_loss`."""
    return [m for m in surf.metrics if m == "loss" or m.endswith("_loss")]


def save_figures(
    surf: Surface,
    folder: str | os.PathLike,
    name: str | None = None,
    metric: str | Sequence[str] | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    vlevel: float | None = None,
    zlim: float | None = None,
    log: bool = False,
    loss_max: float | None = None,
    acc_min: float | None = None,
    xlim: tuple[float | None, float | None] | None = None,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Write the standard figures of `surf` as PNG (150 dpi) and PDF files in `folder`; return their paths.

    A 2-D surface gives, for each metric, `<name>_<metric>_2dcontour`, `_2dcontourf`, `_2dheat`
    and `_3dsurface` (and `_2derror` beside the contour for a sampled surface); a 1-D surface
    gives `<name>_1d` (every split's loss and accuracy in one plot) and `<name>_1d_log` with `log`.

        surf = ll.read_surface("results/run.h5")
        paths = ll.plot.save_figures(surf, "figures", name="run")   # or surf.save_figures("figures")

    Args:
        folder: created if missing.
        name: the files' name stem (default "surface").
        metric: one metric or several (default: every loss in the surface, `train_loss`,
            `test_loss`, ...); for 2-D surfaces.
        vmin, vmax, vlevel: contour levels `np.arange(vmin, vmax, vlevel)` and colour range vmin..vmax
            (the reference's); each one not given is chosen from the metric's computed values
            (`choose_levels`: round values, log-spaced where the values span decades).
        zlim: the 3-D surface leaves out the values above it (default: the colour range's top).
        log: 2-D: log-spaced levels, log colours and a log z axis (chosen without it where the values
            span decades); 1-D: also the `_1d_log` plot.
        loss_max, acc_min, xlim: the 1-D plot's loss axis top, accuracy axis bottom (%) and x range.
        only: write just the figures whose suffix ends with one of these (e.g. `["3dsurface"]`).
    """
    folder = Path(folder)
    if folder.is_file():
        raise LandscapeError(f"folder {str(folder)!r} is a file; give the folder the figures go to", "folder")
    name = "surface" if name is None else name
    if not name or Path(name).name != name or name in (".", ".."):
        raise LandscapeError(f"name {name!r} must be a file name stem, not a path; give the folder as folder", "name")
    kw = dict(vmin=vmin, vmax=vmax, vlevel=vlevel, zlim=zlim, log=log, loss_max=loss_max, acc_min=acc_min,
              xlim=xlim, only=only)
    if surf.ndim == 1:
        return plot_surface_figures(surf, folder / name, **kw)
    metrics = [metric] if isinstance(metric, str) else list(metric) if metric is not None else losses(surf)
    if not metrics:
        held = ", ".join(sorted(surf.metrics)) or "nothing"
        raise LandscapeError(f"the surface has no loss to plot (it holds {held}); pass metric", "metric")
    for m in metrics:  # every metric checked before any figure is written
        _computed(surf, m)
    return [p for m in metrics for p in plot_surface_figures(surf, folder / name, metric=m, **kw)]


def has_display() -> bool:
    """Whether a window can open: always on macOS and Windows; on Linux, with DISPLAY or WAYLAND_DISPLAY set."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
