"""Numbers that summarise a loss surface: centre values, curvature sign, local minima, basin size.

Pure numpy on `Surface` objects (storage.py); nothing here knows about models. The
quantities follow the reading of Li et al. (2018), Sec. 6: a "nice" landscape (ResNet with
skip connections) has a wide, nearly convex basin around the minimizer; a chaotic one
(deep ResNet without them) shows negative curvature and many local minima close by.

Rules shared by every statistic:
- Points that are not done are unknown: they are excluded (never a minimum, never part of a
  Hessian stencil, skipped along a basin half-line).
- A done point whose value is not finite (NaN, +inf or -inf: a diverged point) counts as
  higher than every level and every finite neighbour.
- Grid spacings come from the coordinates themselves, so non-square grids, different x and y
  steps and even unevenly spaced axes give the right derivatives.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from landscape.errors import LandscapeError
from landscape.storage import Surface

THRESHOLD = 10.0  # curvature is counted only where the loss is below this (the basin, not the plateau)
BASIN_LEVELS = (1.0, 10.0)
# An eigenvalue is negative when below -RTOL * max(largest |eigenvalue|, max|f| over the stencil / h_min^2):
# the second term is the size of rounding errors in a second difference, so a plane or a flat valley
# sampled in floating point is not "negative". It is a rounding tolerance, not a noise model: losses
# evaluated in float32/bf16 carry larger errors; pass a larger rtol to look past them.
RTOL = 1e-6


def surface_stats(
    surf: Surface,
    metric: str = "train_loss",
    threshold: float = THRESHOLD,
    levels: Sequence[float] = BASIN_LEVELS,
    rtol: float = RTOL,
) -> dict[str, Any]:
    """Summary statistics of one metric of a surface, as plain Python values (json.dumps-able).

    Returns a dict with:
      center_loss, center_acc: the metric, and the matching `*_acc` metric (None if absent),
        at the grid point nearest (0, 0), whose coordinates are `center`; None if that point
        is not done. Accuracy is a fraction. A diverged centre keeps its value (inf or NaN,
        which json.dumps writes as Infinity/NaN).
      neg_curvature_fraction: among interior points whose value is below `threshold` and whose
        3x3 neighbourhood (3 points in 1-D) is done and finite, the fraction where the discrete
        Hessian [[f_xx, f_xy], [f_xy, f_yy]] has a negative eigenvalue. f_xx and f_yy are
        three-point central second differences with the actual spacings; f_xy uses the four
        diagonal neighbours, (f(+,+) - f(+,-) - f(-,+) + f(-,-)) / ((x+ - x-)(y+ - y-)). All three
        are exact for quadratics. "Negative" means below -rtol * max(max|eigenvalue|,
        max|f| in the stencil / h_min^2), so a convex bowl sampled in floating point gives
        exactly 0 and a plane or a flat valley is not negative (see RTOL).
        In 1-D: the fraction whose second difference f_xx is negative, same tolerance. None
        when no point qualifies; `n_curvature_points` is the denominator.
      n_local_minima: done points with a finite value strictly below every done neighbour (up
        to 8 in 2-D, 2 in 1-D; non-finite neighbours count as higher) and at least one done
        neighbour. Points on the grid's edge are included: a minimum there may be the grid
        cutting off a descent.
      basin_width: {f"{level:g}": {"+x", "-x", "+y", "-y": radius, "mean": float, "open": [...]}}.
        For each level and each axis half-line from the centre point, the distance (in direction
        units, |coordinate - centre coordinate|) to the first done point whose value is at or
        above the level (non-finite counts as above). A grid point, not an interpolated
        crossing: it overestimates the true radius by less than one spacing. When the level is
        never reached before the grid ends, the distance to the last done point is given as a
        lower bound and the half-line is listed in `open`. 0 when the centre itself is at or
        above the level; None everywhere when the centre is not done. `mean` is the mean of the
        half-lines (2 in 1-D, 4 in 2-D).
      also: metric, threshold, shape, n_done, n_points, center, n_curvature_points.
    """
    if metric not in surf.metrics:
        raise LandscapeError(
            f"metric {metric!r} is not in the surface; available: {', '.join(sorted(surf.metrics)) or 'none'}"
        )
    if math.isnan(threshold):
        raise ValueError(f"threshold must be a number (inf counts every finite point), got {threshold!r}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol!r}")
    done = np.asarray(surf.done, dtype=bool)
    v = _values(surf, metric)  # +inf where not finite, NaN where not done
    axes = [surf.x] if surf.ndim == 1 else [surf.y, surf.x]  # one per array dimension
    for name, a in zip(["y", "x"][-len(axes):], axes):
        if np.any(np.diff(a) <= 0):
            raise LandscapeError(f"the surface's {name} coordinates must increase strictly, got {a.tolist()[:6]}")
    center = tuple(int(np.argmin(np.abs(a))) for a in axes)  # (i_y, i_x) or (i_x,)

    acc_name = metric[: -len("loss")] + "acc" if metric.endswith("loss") else None
    acc = surf.metrics.get(acc_name) if acc_name is not None else None
    center_done = bool(done[center])
    curv, n_curv = _neg_curvature(v, axes, threshold, rtol)
    return {
        "metric": metric,
        "threshold": float(threshold),
        "shape": list(surf.shape),
        "n_points": int(done.size),
        "n_done": int(done.sum()),
        "center": [float(surf.x[center[-1]])] + ([] if surf.ndim == 1 else [float(surf.y[center[0]])]),
        "center_loss": float(surf.metrics[metric][center]) if center_done else None,
        "center_acc": float(acc[center]) if center_done and acc is not None else None,
        "neg_curvature_fraction": curv,
        "n_curvature_points": n_curv,
        "n_local_minima": _local_minima(v),
        "basin_width": {f"{lv:g}": _basin(v, axes, center, lv) for lv in levels},
    }


def _values(surf: Surface, metric: str) -> np.ndarray:
    """The metric as float64: NaN where not done, +inf where done but not finite."""
    z = np.array(surf.metrics[metric], dtype=np.float64)  # a copy
    done = np.asarray(surf.done, dtype=bool)
    z[done & ~np.isfinite(z)] = np.inf
    z[~done] = np.nan
    return z


def _second_difference(f: np.ndarray, c: np.ndarray, axis: int) -> np.ndarray:
    """Three-point second derivative along `axis` at interior points, exact for quadratics on any spacing."""
    n = f.shape[axis]
    fm, f0, fp = (np.take(f, range(k, k + n - 2), axis=axis) for k in range(3))
    hm = np.diff(c)[:-1]  # c[i] - c[i-1], (n-2,)
    hp = np.diff(c)[1:]  # c[i+1] - c[i], (n-2,)
    shape = [1] * f.ndim
    shape[axis] = n - 2
    hm, hp = hm.reshape(shape), hp.reshape(shape)
    return 2.0 * (hm * fp - (hm + hp) * f0 + hp * fm) / (hm * hp * (hm + hp))


def _neg_curvature(v: np.ndarray, axes: list[np.ndarray], threshold: float, rtol: float) -> tuple[float | None, int]:
    if any(len(a) < 3 for a in axes):
        return None, 0
    if v.ndim == 1:
        inner = v[1:-1]  # (nx-2,)
        ok = np.isfinite(v[:-2]) & np.isfinite(inner) & np.isfinite(v[2:]) & (inner < threshold)
        f = np.where(np.isfinite(v), v, 0.0)  # values outside `ok` do not matter
        fxx = _second_difference(f, axes[0], 0)  # (nx-2,)
        h = np.minimum(np.diff(axes[0])[:-1], np.diff(axes[0])[1:])  # (nx-2,)
        fscale = np.max(np.abs(np.stack([f[:-2], f[1:-1], f[2:]])), axis=0)  # (nx-2,)
        neg = fxx < -rtol * np.maximum(np.abs(fxx), fscale / h**2)
    else:
        y, x = axes
        inner = v[1:-1, 1:-1]  # (ny-2, nx-2)
        finite = np.isfinite(v)  # False where not done or non-finite
        ok = inner < threshold
        for dy in range(3):
            for dx in range(3):
                ok &= finite[dy : dy + v.shape[0] - 2, dx : dx + v.shape[1] - 2]
        f = np.where(finite, v, 0.0)  # values outside `ok` do not matter; zeros keep the arithmetic quiet
        fxx = _second_difference(f, x, 1)[1:-1, :]  # (ny-2, nx-2)
        fyy = _second_difference(f, y, 0)[:, 1:-1]  # (ny-2, nx-2)
        dx2 = (x[2:] - x[:-2])[None, :]  # (1, nx-2)
        dy2 = (y[2:] - y[:-2])[:, None]  # (ny-2, 1)
        fxy = (f[2:, 2:] - f[:-2, 2:] - f[2:, :-2] + f[:-2, :-2]) / (dx2 * dy2)  # (ny-2, nx-2)
        mean, radius = (fxx + fyy) / 2, np.hypot((fxx - fyy) / 2, fxy)
        lam_min, lam_abs = mean - radius, np.abs(mean) + radius  # lam_abs = largest |eigenvalue|
        hx, hy = np.diff(x), np.diff(y)
        h = np.minimum(np.minimum(hx[:-1], hx[1:])[None, :], np.minimum(hy[:-1], hy[1:])[:, None])  # (ny-2, nx-2)
        fscale = np.zeros_like(h)
        for dy in range(3):
            for dx in range(3):
                fscale = np.maximum(fscale, np.abs(f[dy : dy + v.shape[0] - 2, dx : dx + v.shape[1] - 2]))
        neg = lam_min < -rtol * np.maximum(lam_abs, fscale / h**2)
    n = int(ok.sum())
    return (float((neg & ok).sum() / n) if n else None), n


def _local_minima(v: np.ndarray) -> int:
    """Done, finite points strictly below every done neighbour (and having one)."""
    pad = np.pad(v, 1, constant_values=np.nan)  # NaN = no neighbour / not done
    is_min = np.isfinite(v)
    has_nb = np.zeros(v.shape, dtype=bool)
    offsets = [(d,) for d in (-1, 1)] if v.ndim == 1 else [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]
    for off in offsets:
        nb = pad[tuple(slice(1 + o, 1 + o + s) for o, s in zip(off, v.shape))]
        known = ~np.isnan(nb)  # +inf (diverged) neighbours are known and higher
        is_min &= ~known | (v < nb)
        has_nb |= known
    return int((is_min & has_nb).sum())


def _basin(v: np.ndarray, axes: list[np.ndarray], center: tuple[int, ...], level: float) -> dict[str, Any]:
    names = ["x"] if v.ndim == 1 else ["y", "x"]  # per array dimension
    keys = [f"{s}{n}" for n in reversed(names) for s in "+-"]  # +x, -x, +y, -y
    if np.isnan(v[center]):
        return {**{k: None for k in keys}, "mean": None, "open": []}
    out: dict[str, Any] = {}
    open_: list[str] = []
    for dim, name in enumerate(names):
        c = axes[dim]
        for sign in "+-":
            step = 1 if sign == "+" else -1
            idx = list(center)
            dist, reached = 0.0, False
            i = center[dim]
            while 0 <= i < len(c):
                idx[dim] = i
                val = v[tuple(idx)]
                if not np.isnan(val):  # not-done points are skipped
                    dist = abs(float(c[i] - c[center[dim]]))
                    if val >= level:
                        reached = True
                        break
                i += step
            out[f"{sign}{name}"] = dist
            if not reached:
                open_.append(f"{sign}{name}")
    res = {k: out[k] for k in keys}
    res["mean"] = float(np.mean([out[k] for k in keys]))
    res["open"] = [k for k in keys if k in open_]
    return res


# ---------------------------------------------------------------------------- tables


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _fmt_basin(b: dict[str, Any] | None) -> str:
    if b is None or b.get("mean") is None:
        return "n/a"
    return ("≥" if b["open"] else "") + f"{b['mean']:.2f}"


def stats_table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of `surface_stats` rows, each with a `model` key naming its row.

    Columns: model, centre loss, centre accuracy (%), negative-curvature fraction, local minima,
    and the mean basin radius for each level of the first row ("≥" marks a lower bound: the
    level was not reached before the grid's edge on some half-line).
    """
    if not rows:
        raise ValueError("stats_table_markdown needs at least one row")
    levels = list(rows[0]["basin_width"])
    head = ["model", "center loss", "center acc", "neg. curvature fraction", "local minima"]
    head += [f"basin radius (loss < {lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        acc = r.get("center_acc")
        cells = [
            str(r.get("model", "?")),
            _fmt(r.get("center_loss"), ".4g"),
            "n/a" if acc is None else f"{100 * acc:.1f} %",
            _fmt(r.get("neg_curvature_fraction"), ".3f"),
            str(r.get("n_local_minima", "n/a")),
        ]
        cells += [_fmt_basin(r.get("basin_width", {}).get(lv)) for lv in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
