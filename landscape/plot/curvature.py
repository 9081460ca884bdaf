"""Figures of curvature: |λmin/λmax| maps (Li et al. 2018, Fig. 7), their 1-D version, side-by-side
comparisons, and the Hessian's spectral density.

Works on `Surface` objects holding `max_eig` and `min_eig` (the reference code's keys) and on
`SpectralDensity` results; matplotlib's object API only, no backend chosen here. Points that
are not done are masked; a ratio that is not finite (λmax = 0, or a NaN eigenvalue) is drawn as
the top of the colour range.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.errors import LandscapeError
from landscape.hessian.operator import SpectralDensity, Spectrum, eig_ratio
from landscape.storage import Surface

# The reference code's plot_2d_eig_ratio: viridis from 0 (blue: convex) to 0.5 (yellow: strongly non-convex).
RATIO_CMAP = "viridis"
RATIO_VMIN, RATIO_VMAX = 0.0, 0.5
RATIO_LABEL = r"$|\lambda_{min} / \lambda_{max}|$"


def ratio(surf: Surface) -> np.ma.MaskedArray:
    """|λmin/λmax| per grid point, masked where not done; shape (ny, nx) or (nx,)."""
    missing = [m for m in ("max_eig", "min_eig") if m not in surf.metrics]
    if missing:
        raise LandscapeError(f"the surface has no {' or '.join(missing)}; compute a curvature map with "
                             "scripts/plot_hessian_eig.py (available: "
                             f"{', '.join(sorted(surf.metrics)) or 'none'})")
    if not surf.done.any():
        raise LandscapeError("the curvature map has no computed point yet; run scripts/plot_hessian_eig.py")
    r = eig_ratio(surf.metrics["min_eig"], surf.metrics["max_eig"])
    return np.ma.masked_array(r, mask=~surf.done)


def _axes(ax: Axes | None) -> Axes:
    return Figure().add_subplot() if ax is None else ax


def _check_range(vmin: float, vmax: float) -> None:
    if not vmin < vmax:
        raise LandscapeError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")


def ratio_heatmap(surf: Surface, vmin: float = RATIO_VMIN, vmax: float = RATIO_VMAX, ax: Axes | None = None,
                  colorbar: bool = True) -> QuadMesh:
    """|λmin/λmax| as a heat map, one cell per grid point centred on it, y upwards (the paper's colour scale)."""
    if surf.ndim != 2 or min(surf.shape) < 2:
        raise LandscapeError("a ratio heat map needs a 2-D map with at least 2 points per axis; "
                             "a 1-D map is drawn with ratio_line")
    _check_range(vmin, vmax)
    r = ratio(surf)  # (ny, nx)
    r = np.ma.masked_array(np.where(np.isfinite(r.data), r.data, vmax), mask=r.mask)
    ax = _axes(ax)
    mesh = ax.pcolormesh(surf.x, surf.y, r, shading="nearest", cmap=RATIO_CMAP, vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=RATIO_LABEL, extend="max")
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")
    ax.set_aspect("equal")
    ax.set_title(RATIO_LABEL)
    return mesh


def loss_contours(ax: Axes, loss: Surface, levels: Sequence[float], metric: str = "train_loss",
                  color: str = "red") -> None:
    """Overlay contour lines of a loss surface (computed along the same directions) on `ax`."""
    if metric not in loss.metrics:
        raise LandscapeError(f"the loss surface has no {metric!r}; available: {', '.join(sorted(loss.metrics))}")
    z = np.ma.masked_array(loss.metrics[metric], mask=~loss.done)
    cs = ax.contour(loss.x, loss.y, z, levels=list(levels), colors=color, linewidths=0.8)
    ax.clabel(cs, inline=True, fontsize=7, fmt="%g")


def ratio_line(surf: Surface, ymax: float = 1.0, ax: Axes | None = None) -> Line2D:
    """1-D map: |λmin/λmax| along x (the reference's plot_1d_eig_ratio), y from 0 to `ymax`."""
    if surf.ndim != 1:
        raise LandscapeError("ratio_line needs a 1-D map; a 2-D map is drawn with ratio_heatmap")
    r = ratio(surf)  # (nx,)
    ax = _axes(ax)
    (line,) = ax.plot(surf.x, r.filled(np.nan), "o-", color="C0", ms=3)
    ax.set_xlim(surf.x.min(), surf.x.max())
    ax.set_ylim(0, ymax)
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel(RATIO_LABEL)
    return line


def eig_lines(surf: Surface, ax: Axes | None = None) -> tuple[Line2D, Line2D]:
    """1-D map: λmax and λmin along x on a symmetric-log scale."""
    if surf.ndim != 1:
        raise LandscapeError("eig_lines needs a 1-D map")
    ratio(surf)  # checks the keys and that something is done
    ax = _axes(ax)
    mask = ~surf.done
    hi = np.where(mask, np.nan, surf.metrics["max_eig"])
    lo = np.where(mask, np.nan, surf.metrics["min_eig"])
    (a,) = ax.plot(surf.x, hi, "o-", color="C3", ms=3, label=r"$\lambda_{max}$")
    (b,) = ax.plot(surf.x, lo, "o-", color="C0", ms=3, label=r"$\lambda_{min}$")
    finite = np.abs(np.concatenate([hi[np.isfinite(hi)], lo[np.isfinite(lo)]]))
    finite = finite[finite > 0]
    ax.set_yscale("symlog", linthresh=float(finite.min()) if finite.size else 1.0)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("Hessian eigenvalue")
    ax.legend(loc="best", fontsize=8)
    return a, b


def map_figure(surf: Surface, vmin: float = RATIO_VMIN, vmax: float = RATIO_VMAX, ymax: float = 1.0) -> Figure:
    """The standard figure of one map: the ratio heat map (2-D), or ratio and eigenvalues over x (1-D)."""
    if surf.ndim == 2:
        fig = Figure(figsize=(5.2, 4.4), layout="constrained")
        ratio_heatmap(surf, vmin, vmax, ax=fig.add_subplot())
        return fig
    fig = Figure(figsize=(5.2, 6.0), layout="constrained")
    ratio_line(surf, ymax, ax=fig.add_subplot(2, 1, 1))
    eig_lines(surf, ax=fig.add_subplot(2, 1, 2))
    return fig


def ratio_comparison(surfaces: Sequence[Surface], titles: Sequence[str], vmin: float = RATIO_VMIN,
                     vmax: float = RATIO_VMAX, losses: Sequence[Surface | None] | None = None,
                     levels: Sequence[float] = (1.0, 10.0)) -> Figure:
    """Ratio heat maps side by side on one colour scale (one shared colour bar).

    `losses`, one per map or None, adds contour lines of the loss along the same directions.
    """
    if len(surfaces) == 0:
        raise LandscapeError("ratio_comparison needs at least one map")
    if len(titles) != len(surfaces):
        raise ValueError(f"titles must have one entry per map ({len(surfaces)}), got {len(titles)}")
    if losses is not None and len(losses) != len(surfaces):
        raise ValueError(f"losses must have one entry per map ({len(surfaces)}), got {len(losses)}")
    _check_range(vmin, vmax)
    for s in surfaces:
        ratio(s)  # fail early
    n = len(surfaces)
    fig = Figure(figsize=(4.2 * n + 1.0, 4.2), layout="constrained")
    axes, mesh = [], None
    for k, (surf, title) in enumerate(zip(surfaces, titles)):
        ax = fig.add_subplot(1, n, k + 1)
        mesh = ratio_heatmap(surf, vmin, vmax, ax=ax, colorbar=False)
        if losses is not None and losses[k] is not None:
            loss_contours(ax, losses[k], levels)
            ax.set_xlim(surf.x.min() - _half_step(surf.x), surf.x.max() + _half_step(surf.x))
            ax.set_ylim(surf.y.min() - _half_step(surf.y), surf.y.max() + _half_step(surf.y))
        ax.set_title(title)
        axes.append(ax)
    fig.colorbar(mesh, ax=axes, label=RATIO_LABEL, extend="max", shrink=0.9)
    return fig


def _half_step(c: np.ndarray) -> float:
    return float(c[1] - c[0]) / 2 if len(c) > 1 else 0.5


def spectrum_plot(density: SpectralDensity, top: Sequence[float] = (), bottom: Sequence[float] = (),
                  sigma: float | None = None, ax: Axes | None = None, label: str | None = None) -> Line2D:
    """The eigenvalue density (log scale, as Ghorbani et al. 2019), with the extreme eigenvalues marked."""
    ax = _axes(ax)
    lam = density.grid(2000, sigma)
    rho = density.density(lam, sigma)
    floor = float(rho.max()) * 1e-8
    (line,) = ax.semilogy(lam, np.maximum(rho, floor), lw=1.2, label=label)
    for i, v in enumerate(top):
        ax.axvline(v, color="C3", lw=0.7, ls="--", label=r"top eigenvalues" if i == 0 else None)
    for i, v in enumerate(bottom):
        ax.axvline(v, color="C0", lw=0.7, ls="--", label=r"$\lambda_{min}$" if i == 0 else None)
    ax.set_ylim(floor, float(rho.max()) * 3)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    if len(top) or len(bottom) or label:
        ax.legend(loc="upper right", fontsize=8)
    return line


def spectrum_figure(spectra: Sequence[Spectrum], titles: Sequence[str], sigma: float | None = None) -> Figure:
    """One panel per spectrum (each on its own eigenvalue scale), titled with its trace and extremes."""
    if len(spectra) == 0:
        raise LandscapeError("spectrum_figure needs at least one spectrum")
    if len(titles) != len(spectra):
        raise ValueError(f"titles must have one entry per spectrum ({len(spectra)}), got {len(titles)}")
    n = len(spectra)
    fig = Figure(figsize=(4.6 * n, 3.8), layout="constrained")
    for k, (sp, title) in enumerate(zip(spectra, titles)):
        ax = fig.add_subplot(1, n, k + 1)
        spectrum_plot(sp.density, sp.top, sp.bottom, sigma, ax=ax)
        ratio_txt = abs(sp.bottom[0] / sp.top[0]) if len(sp.bottom) and len(sp.top) and sp.top[0] != 0 else np.nan
        ax.set_title(f"{title}\n" + rf"$\lambda_{{max}}$={sp.top[0]:.3g}, $\lambda_{{min}}$={sp.bottom[0]:.3g}, "
                     f"tr={sp.trace.mean:.3g}, ratio={ratio_txt:.3f}", fontsize=9)
    return fig
