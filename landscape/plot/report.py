"""An interactive report of a stored surface file: one self-contained HTML page (Plotly), no model.

    from landscape.plot.report import write_report
    write_report("results/digits_resnet20_x-1_1_25_y-1_1_25.h5", "results/report.html", vmax=10)

The page holds, for each split whose loss the file has (`train_loss`, `test_loss`):
- 2-D files: a rotatable 3-D surface of the loss (values above `vmax` left out, not flattened into
  a slab), the contour plot with the values of every point on hover (x, y, loss, accuracy in %,
  ±2 SE where the file has standard errors `<metric>_se`, samples `<split>_n`), and 1-D slices
  through the grid point nearest the origin (the checkpoint) along both axes, with ±2 SE bands;
- 1-D files: loss and accuracy along the line, with ±2 SE bands;
and where given or present: the training trajectory (`*_proj.h5`) over the contour plots, the
curvature maps (`max_eig`, `min_eig`, |λmin/λmax|), and the run's provenance from the file's
attributes (checkpoint and its sha256, model, directions, data, precision and engine, points done,
the runs' time). Accuracies are fractions in memory (`read_surface`) and shown in percent.

plotly.js is embedded once in the page (about 4.7 MB), so it opens offline: no CDN, no request.
Plotly is imported when a report is made, not with the package.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from landscape.errors import LandscapeError
from landscape.storage import Surface, read_surface

__all__ = ["report_html", "write_report", "report_path", "provenance_rows", "REPORT_SUFFIX"]

REPORT_SUFFIX = "_report.html"
COLORSCALE = "Viridis"  # loss, as the matplotlib figures (landscape.plot.surface.CMAP)
RATIO_MAX = 0.5  # |λmin/λmax| colour range 0..0.5, the reference code's plot_2d_eig_ratio
SPLIT_COLORS = {"train": "#1f77b4", "test": "#d62728"}
ACC_COLOR = "#2ca02c"
ACC_AXIS = dict(range=[-3, 103], tickmode="auto", showgrid=False, title_text="accuracy (%)")  # right axis, in %
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}

Projection = Any  # a *_proj.h5 path, or ((n, 2) coordinates, epochs or None)


def report_path(surf_file: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                name: str | None = None) -> Path:
    """`<out_dir>/<name>_report.html`: out_dir defaults to the surface file's folder, name to its stem."""
    surf_file = Path(surf_file)
    if name is None:
        name = surf_file.stem if surf_file.suffix == ".h5" else surf_file.name
    elif not name or Path(name).name != name or name in (".", ".."):
        raise LandscapeError(f"name {name!r} is a file name stem, not a path; give the folder with out_dir",
                             ("name", "out_dir"))
    folder = surf_file.parent if out_dir is None else Path(out_dir)
    if folder.is_file() or folder.suffix.lower() in (".html", ".htm"):
        raise LandscapeError(f"out_dir {str(folder)!r} names a file, but it is the report's folder; pass "
                             f"{str(folder.parent)!r} there and name {folder.stem!r}", ("out_dir", "name"))
    return folder / f"{name}{REPORT_SUFFIX}"


def write_report(
    surf: Surface | str | os.PathLike,
    path: str | os.PathLike,
    projection: Projection | None = None,
    curvature: Surface | str | os.PathLike | None = None,
    vmax: float | None = None,
    log: bool = False,
    title: str | None = None,
) -> Path:
    """Write the report of `surf` (a Surface or a surface file) to the HTML file `path`, atomically.

    Args:
        projection: a trajectory (`*_proj.h5` of scripts/plot_trajectory.py, or (coords (n, 2),
            epochs)) drawn over the contour plots; 2-D surfaces only.
        curvature: a curvature map (a Surface or file with `max_eig` and `min_eig`, e.g. from
            scripts/plot_hessian_eig.py) shown beside the surface's own, if it has one.
        vmax: the loss above which the 3-D surface is left out and the colours stop (None: no clip).
        log: loss on a log10 scale (3-D height, colours, slices).
    Returns:
        the path written.
    """
    path = Path(path)
    if path.is_dir():
        raise LandscapeError(f"path {str(path)!r} is a folder; give the report's file name, e.g. "
                             f"{str(path / 'report.html')!r}", "path")
    page = report_html(surf, projection=projection, curvature=curvature, vmax=vmax, log=log, title=title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise LandscapeError(f"cannot write the report in {str(path.parent)!r} ({e.strerror}); choose a writable "
                             "folder", "path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_html(
    surf: Surface | str | os.PathLike,
    projection: Projection | None = None,
    curvature: Surface | str | os.PathLike | None = None,
    vmax: float | None = None,
    log: bool = False,
    title: str | None = None,
) -> str:
    """The report's HTML page as a string (see `write_report`)."""
    source = None
    if not isinstance(surf, Surface):
        source = str(surf)
        surf = read_surface(surf)
    if vmax is not None:
        if not np.isfinite(vmax):
            raise LandscapeError(f"vmax must be a finite number, got {vmax!r}", "vmax")
        if log and vmax <= 0:
            raise LandscapeError(f"vmax must be positive with a log scale, got {vmax!r}", "vmax")
    curv: list[tuple[str, Surface]] = []
    if _has_eigs(surf):
        curv.append(("this file", surf))
    if curvature is not None:
        label = str(curvature) if not isinstance(curvature, Surface) else "curvature map"
        other = curvature if isinstance(curvature, Surface) else read_surface(curvature)
        if not _has_eigs(other):
            raise LandscapeError(f"curvature {label!r} is not a curvature map: it has no max_eig and min_eig (it has "
                                 f"{', '.join(sorted(other.metrics)) or 'no metric'}); pass a file of "
                                 "scripts/plot_hessian_eig.py", "curvature")
        curv.append((label, other))
    path_xy = None
    if projection is not None:
        if surf.ndim != 2:
            raise LandscapeError("a trajectory is drawn over a 2-D surface, this one is 1-D; drop projection",
                                 "projection")
        path_xy = _projection(projection)
    splits = _splits(surf)
    if not splits and not curv:
        raise LandscapeError(f"the surface has no <split>_loss and no max_eig/min_eig to report (it has "
                             f"{', '.join(sorted(surf.metrics)) or 'no metric'})")

    go = _plotly()
    sections: list[str] = []
    for split in splits:
        if surf.ndim == 2:
            figs = [("3d", _surface3d(go, surf, split, vmax, log)),
                    ("contour", _contour(go, surf, split, vmax, log, path_xy))]
            body = _row(figs, f"{split}-", 2) + _row([("slices", _slices(go, surf, split, vmax, log))], f"{split}-")
            note = (f"Hover over the contour plot for each point's values. Slices through the grid point nearest "
                    f"the origin (x = {_fmt(surf.x[_center(surf.x)])}, y = {_fmt(surf.y[_center(surf.y)])}).")
        else:
            body = _row([("line", _line1d(go, surf, split, vmax, log))], f"{split}-")
            note = "Loss on the left axis, accuracy (%) on the right."
        if _has(surf, f"{split}_loss_se"):
            note += " Bands and ± values: 2 standard errors of the sampled estimate."
        sections.append(_section(f"{split}", f"{split} loss", note, body))
    for i, (label, c) in enumerate(curv):
        sid = f"curvature-{i}"
        if c.ndim == 2:
            figs = [("max", _eig_map(go, c, "max_eig")), ("min", _eig_map(go, c, "min_eig")),
                    ("ratio", _ratio_map(go, c))]
            body = _row(figs, f"{sid}-", 3)
        else:
            body = _row([("line", _eig_line(go, c))], f"{sid}-")
        note = (f"Extreme Hessian eigenvalues at each point and |λmin/λmax| (0: locally convex; colours stop at "
                f"{RATIO_MAX}, as in Li et al. 2018, Fig. 7). From {label}.")
        heading = "curvature" if len(curv) == 1 else f"curvature: {Path(label).name}"
        sections.append(_section(sid, heading, note, body))
    sections.append(_section("provenance", "provenance", "From the surface file's attributes.",
                              _provenance_html(surf, source)))

    name = Path(source).name if source else None
    title = title or ("loss landscape" + (f": {name}" if name else ""))
    return _page(title, _summary(surf, vmax, log), sections)


# ---------------------------------------------------------------------------- data


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise LandscapeError("the report needs plotly; pip install plotly (or pip install -e .[report])") from None
    return go


def _has(surf: Surface, name: str) -> bool:
    return name in surf.metrics


def _has_eigs(surf: Surface) -> bool:
    return _has(surf, "max_eig") and _has(surf, "min_eig")


def _splits(surf: Surface) -> list[str]:
    """The splits with a loss, in the file's order (`splits` attribute), train before test otherwise."""
    found = [m[:-len("_loss")] for m in surf.metrics if m.endswith("_loss") and m != "_loss"]
    order = [s for s in str(surf.attrs.get("splits", "")).split(",") if s] + ["train", "test"]
    return sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s))


def _extra_metrics(surf: Surface, split: str) -> list[str]:
    """`<split>_<name>` besides the loss: accuracy first, then others; not their `_se`, nor `_n`."""
    pre = f"{split}_"
    names = [m for m in surf.metrics if m.startswith(pre) and m != f"{split}_loss" and not m.endswith("_se")
             and m != f"{split}_n"]
    return sorted(names, key=lambda m: (m != f"{split}_acc", m))


def _values(surf: Surface, name: str) -> np.ndarray:
    """The metric as float64, NaN where not done (a copy)."""
    return np.where(surf.done, np.asarray(surf.metrics[name], dtype=np.float64), np.nan)


def _is_acc(name: str) -> bool:
    return name.endswith("_acc")


def _shown(name: str, v: np.ndarray) -> np.ndarray:
    """Accuracy (a fraction in memory) in percent; others as they are."""
    return 100.0 * v if _is_acc(name) else v


def _for_plot(v: np.ndarray, log: bool) -> np.ndarray:
    """Finite values (NaN otherwise), log10 of the positive ones with `log`."""
    v = np.where(np.isfinite(v), v, np.nan)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(v > 0, np.log10(v), np.nan)
    return v


def _center(c: np.ndarray) -> int:
    """The index of the coordinate nearest 0 (the checkpoint)."""
    return int(np.argmin(np.abs(c)))


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}"


def _value_text(name: str, v: float, se: float | None) -> str:
    if np.isnan(v):
        return f"{name}: NaN"
    if not np.isfinite(v):
        return f"{name}: {'+' if v > 0 else '-'}inf"
    if _is_acc(name):
        text = f"{name}: {100 * v:.2f} %"
        return text + (f" ± {200 * se:.2f} %" if se is not None and np.isfinite(se) else "")
    return f"{name}: {v:.5g}" + (f" ± {2 * se:.2g}" if se is not None and np.isfinite(se) else "")


def _hover(surf: Surface, split: str) -> np.ndarray:
    """Per point: x, y, the split's loss and metrics (±2 SE where stored), samples; (ny, nx) strings."""
    names = [f"{split}_loss"] + _extra_metrics(surf, split)
    flat_done = surf.done.reshape(-1)
    arrays = {m: np.asarray(surf.metrics[m], dtype=np.float64).reshape(-1) for m in names}
    ses = {m: np.asarray(surf.metrics[f"{m}_se"], dtype=np.float64).reshape(-1)
           for m in names if _has(surf, f"{m}_se")}
    n = np.asarray(surf.metrics[f"{split}_n"]).reshape(-1) if _has(surf, f"{split}_n") else None
    xs, ys = np.meshgrid(surf.x, surf.y)  # (ny, nx) each
    out = []
    for k, (x, y) in enumerate(zip(xs.reshape(-1), ys.reshape(-1))):
        lines = [f"x: {_fmt(x)}", f"y: {_fmt(y)}"]
        if not flat_done[k]:
            lines.append("not computed")
        else:
            lines += [_value_text(m, arrays[m][k], ses[m][k] if m in ses else None) for m in names]
            if n is not None and np.isfinite(n[k]):
                lines.append(f"samples: {int(n[k])}")
        out.append("<br>".join(lines))
    return np.array(out, dtype=object).reshape(surf.shape)


def _projection(projection: Projection) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(projection, (str, os.PathLike)):
        from landscape.trajectory import read_projection  # torch: only when a trajectory is drawn

        return read_projection(projection)
    try:
        coords, epochs = projection
        coords = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandscapeError("projection must be a *_proj.h5 file or (coords (n, 2), epochs)", "projection") from None
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise LandscapeError(f"projection coordinates must have shape (n, 2), got {coords.shape}", "projection")
    return coords, None if epochs is None else np.asarray(epochs)


# ---------------------------------------------------------------------------- figures


def _layout(**kw: Any) -> dict[str, Any]:
    base = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=480,
                font=dict(family="system-ui, sans-serif", size=12))
    base.update(kw)
    return base


def _loss_label(split: str, log: bool) -> str:
    return f"log10 {split} loss" if log else f"{split} loss"


def _color_range(surf: Surface, split: str, vmax: float | None, log: bool) -> tuple[float, float]:
    """The loss colours' range, shared by the 3-D surface and the contours: lowest value to highest or vmax."""
    z = _for_plot(_values(surf, f"{split}_loss"), log)
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if vmax is not None:
        hi = float(np.log10(vmax)) if log else float(vmax)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _surface3d(go: Any, surf: Surface, split: str, vmax: float | None, log: bool) -> Any:
    """The loss as a rotatable surface; points above vmax (and not computed or not finite) left out."""
    v = _values(surf, f"{split}_loss")  # (ny, nx)
    if vmax is not None:
        v = np.where(v <= vmax, v, np.nan)  # left out: no flat slab at vmax
    z = _for_plot(v, log)
    lo, hi = _color_range(surf, split, vmax, log)
    fig = go.Figure(go.Surface(x=surf.x, y=surf.y, z=z, colorscale=COLORSCALE, cmin=lo, cmax=hi,
                               text=_hover(surf, split), hovertemplate="%{text}<extra></extra>", name=f"{split} loss",
                               colorbar=dict(title=dict(text="log10 loss" if log else "loss"), len=0.8),
                               contours=dict(z=dict(show=True, usecolormap=True, project=dict(z=True),
                                                    highlightcolor="#444"))))
    ix, iy = _center(surf.x), _center(surf.y)
    if np.isfinite(z[iy, ix]):
        fig.add_trace(go.Scatter3d(x=[surf.x[ix]], y=[surf.y[iy]], z=[z[iy, ix]], mode="markers",
                                   marker=dict(size=4, color="red"), name="center", showlegend=False,
                                   hovertemplate="center<extra></extra>"))
    zaxis: dict[str, Any] = dict(title=dict(text=_loss_label(split, log)))
    if vmax is not None:
        zaxis["range"] = [lo, hi]
    clip = f", above {vmax:g} left out" if vmax is not None else ""
    fig.update_layout(**_layout(title=dict(text=f"{split} loss, 3-D{clip}"), margin=dict(l=0, r=0, t=50, b=0),
                                scene=dict(xaxis=dict(title=dict(text="x"), range=[surf.x[0], surf.x[-1]]),
                                           yaxis=dict(title=dict(text="y"), range=[surf.y[0], surf.y[-1]]), zaxis=zaxis,
                                           aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.7),
                                           camera=dict(eye=dict(x=1.5, y=-1.5, z=1.1)))))
    return fig


def _contour(go: Any, surf: Surface, split: str, vmax: float | None, log: bool,
             path_xy: tuple[np.ndarray, np.ndarray | None] | None) -> Any:
    """Filled contours of the loss (colours stop at vmax), each point's values on hover; the trajectory over it."""
    z = _for_plot(_values(surf, f"{split}_loss"), log)  # (ny, nx)
    lo, hi = _color_range(surf, split, vmax, log)
    fig = go.Figure(go.Contour(x=surf.x, y=surf.y, z=z, colorscale=COLORSCALE, zmin=lo, zmax=hi, zauto=False,
                               autocontour=False, contours=dict(start=lo, end=hi, size=(hi - lo) / 20),
                               line=dict(width=0.5), text=_hover(surf, split), hovertemplate="%{text}<extra></extra>",
                               name=f"{split} loss", colorbar=dict(title=dict(text="log10 loss" if log else "loss"),
                                                                    tickformat=".3~g")))
    ix, iy = _center(surf.x), _center(surf.y)
    shapes = [dict(type="line", x0=surf.x[0], x1=surf.x[-1], y0=surf.y[iy], y1=surf.y[iy]),
              dict(type="line", x0=surf.x[ix], x1=surf.x[ix], y0=surf.y[0], y1=surf.y[-1])]
    for s in shapes:
        s.update(line=dict(color="white", width=1, dash="dot"), layer="above")
    if path_xy is not None:
        coords, epochs = path_xy
        text = [f"epoch {int(e)}" for e in epochs] if epochs is not None else [f"snapshot {i}" for i in
                                                                               range(len(coords))]
        fig.add_trace(go.Scatter(x=coords[:, 0], y=coords[:, 1], mode="lines+markers", name="trajectory",
                                 line=dict(color="red", width=2), marker=dict(size=5, color="red"), text=text,
                                 hovertemplate="%{text}<br>x: %{x:.4g}<br>y: %{y:.4g}<extra>trajectory</extra>"))
    fig.add_trace(go.Scatter(x=[surf.x[ix]], y=[surf.y[iy]], mode="markers", name="center",
                             marker=dict(symbol="x", size=9, color="white", line=dict(width=1, color="black")),
                             hovertemplate="center (x %{x:.4g}, y %{y:.4g})<extra></extra>", showlegend=False))
    fig.update_layout(**_layout(title=dict(text=f"{split} loss, contours" + (" and trajectory" if path_xy else "")),
                                xaxis_title="x (direction 1)", yaxis_title="y (direction 2)", shapes=shapes,
                                legend=dict(x=0, y=1, bgcolor="rgba(255,255,255,0.7)")))
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def _band_traces(go: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, name: str, group: str,
                 legend: bool) -> list[Any]:
    """A shaded band between lo and hi (two traces: the upper edge, then the lower filled up to it)."""
    fill = _rgba(color, 0.2)
    common = dict(x=x, mode="lines", line=dict(width=0, color=fill), hoverinfo="skip", legendgroup=group)
    return [go.Scatter(y=hi, showlegend=False, name=name, **common),
            go.Scatter(y=lo, fill="tonexty", fillcolor=fill, name=name, showlegend=legend, **common)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _line_traces(go: Any, x: np.ndarray, surf: Surface, name: str, sel: Any, color: str, log: bool, dash: str,
                 legend: bool) -> list[Any]:
    """The metric along a line (`sel` indexes the surface's arrays) with a ±2 SE band where stored."""
    v = _shown(name, _values(surf, name)[sel])
    traces = []
    if _has(surf, f"{name}_se"):
        se = _shown(name, np.asarray(surf.metrics[f"{name}_se"], dtype=np.float64)[sel])
        lo, hi = v - 2 * se, v + 2 * se
        if log and not _is_acc(name):
            floor = np.nanmin(np.where(v > 0, v, np.nan)) if np.any(v > 0) else np.nan
            lo = np.where(np.isnan(lo) | (lo > 0), lo, floor)  # a log axis: the band stops at the lowest value
        traces += _band_traces(go, x, lo, hi, color, f"{name} ±2 SE", name, legend)
    unit = " %" if _is_acc(name) else ""
    traces.append(go.Scatter(x=x, y=np.where(np.isfinite(v), v, np.nan), mode="lines+markers", name=name,
                             legendgroup=name, showlegend=legend, line=dict(color=color, width=2, dash=dash),
                             marker=dict(size=4), hovertemplate=f"{name}: %{{y:.5g}}{unit}<extra></extra>"))
    return traces


def _loss_axis(values: Sequence[np.ndarray], log: bool, vmax: float | None) -> dict[str, Any]:
    """The loss axis: linear or log, from the lowest value (band included) to the highest or vmax."""
    v = np.concatenate([np.ravel(a) for a in values])
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if not v.size:
        return dict(type="log" if log else "linear")
    lo, hi = float(v.min()), float(v.max())
    if vmax is not None:
        hi = min(hi, vmax) if hi > lo else vmax
    if log:
        lo, hi = np.log10(lo), np.log10(hi) if hi > 0 else np.log10(lo) + 1
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)
    return dict(type="log" if log else "linear", range=[lo - pad, hi + pad])


def _plotted(traces: Sequence[Any]) -> list[np.ndarray]:
    """The y values of traces (lines and band edges), for the axis range."""
    return [np.asarray(t.y, dtype=np.float64) for t in traces if t.y is not None]


def _slices(go: Any, surf: Surface, split: str, vmax: float | None, log: bool) -> Any:
    """Loss (and accuracy, right axis) along x at the center's y, and along y at the center's x."""
    from plotly.subplots import make_subplots

    ix, iy = _center(surf.x), _center(surf.y)
    fig = make_subplots(rows=1, cols=2, specs=[[{"secondary_y": True}, {"secondary_y": True}]],
                        subplot_titles=(f"along x, at y = {_fmt(surf.y[iy])}", f"along y, at x = {_fmt(surf.x[ix])}"),
                        horizontal_spacing=0.12)
    acc = f"{split}_acc" if _has(surf, f"{split}_acc") else None
    for col, (coords, sel) in enumerate([(surf.x, (iy, slice(None))), (surf.y, (slice(None), ix))], start=1):
        losses = _line_traces(go, coords, surf, f"{split}_loss", sel, SPLIT_COLORS.get(split, "#1f77b4"), log,
                              "solid", col == 1)
        for t in losses:
            fig.add_trace(t, row=1, col=col, secondary_y=False)
        if acc is not None:
            for t in _line_traces(go, coords, surf, acc, sel, ACC_COLOR, False, "dash", col == 1):
                fig.add_trace(t, row=1, col=col, secondary_y=True)
            fig.update_yaxes(row=1, col=col, secondary_y=True, **ACC_AXIS)
        fig.update_xaxes(title_text="x" if col == 1 else "y", row=1, col=col)
        fig.update_yaxes(title_text=f"{split} loss", row=1, col=col, secondary_y=False,
                         **_loss_axis(_plotted(losses), log, vmax))
    fig.update_layout(**_layout(title=dict(text=f"{split}: 1-D slices through the center"), height=440,
                                margin=dict(l=60, r=20, t=80, b=50),
                                hovermode="x unified", legend=dict(orientation="h", y=-0.2)))
    return fig


def _line1d(go: Any, surf: Surface, split: str, vmax: float | None, log: bool) -> Any:
    """A 1-D surface: loss (left axis) and accuracy in % (right axis) with ±2 SE bands."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    sel = slice(None)
    losses = _line_traces(go, surf.x, surf, f"{split}_loss", sel, SPLIT_COLORS.get(split, "#1f77b4"), log, "solid",
                          True)
    for t in losses:
        fig.add_trace(t, secondary_y=False)
    if _has(surf, f"{split}_acc"):
        for t in _line_traces(go, surf.x, surf, f"{split}_acc", sel, ACC_COLOR, False, "dash", True):
            fig.add_trace(t, secondary_y=True)
        fig.update_yaxes(secondary_y=True, **ACC_AXIS)
    fig.update_yaxes(title_text=f"{split} loss", secondary_y=False, **_loss_axis(_plotted(losses), log, vmax))
    fig.update_layout(**_layout(title=dict(text=f"{split} loss and accuracy along the direction"),
                                xaxis_title="x (direction)", hovermode="x unified",
                                legend=dict(orientation="h", y=-0.2)))
    return fig


def _ratio(c: Surface) -> np.ndarray:
    from landscape.hessian.operator import eig_ratio  # torch: only for curvature maps

    return np.where(c.done, eig_ratio(c.metrics["min_eig"], c.metrics["max_eig"]), np.nan)


def _eig_hover(c: Surface) -> np.ndarray:
    mx, mn, r = _values(c, "max_eig"), _values(c, "min_eig"), _ratio(c)
    xs, ys = np.meshgrid(c.x, c.y)
    text = [f"x: {_fmt(x)}<br>y: {_fmt(y)}" + (f"<br>λmax: {a:.4g}<br>λmin: {b:.4g}<br>|λmin/λmax|: {q:.3g}"
                                                 if d else "<br>not computed")
            for x, y, a, b, q, d in zip(xs.reshape(-1), ys.reshape(-1), mx.reshape(-1), mn.reshape(-1),
                                        r.reshape(-1), c.done.reshape(-1))]
    return np.array(text, dtype=object).reshape(c.shape)


def _heatmap(go: Any, c: Surface, z: np.ndarray, title: str, **kw: Any) -> Any:
    fig = go.Figure(go.Heatmap(x=c.x, y=c.y, z=np.where(np.isfinite(z), z, np.nan), text=_eig_hover(c),
                               hovertemplate="%{text}<extra></extra>", **kw))
    fig.update_layout(**_layout(title=dict(text=title), height=400, xaxis_title="x", yaxis_title="y"))
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def _eig_map(go: Any, c: Surface, name: str) -> Any:
    z = _values(c, name)
    if name == "min_eig":  # usually near 0 and of either sign: a diverging scale centred on 0
        return _heatmap(go, c, z, "λmin", colorscale="RdBu", reversescale=True, zmid=0.0)
    return _heatmap(go, c, z, "λmax", colorscale=COLORSCALE)


def _ratio_map(go: Any, c: Surface) -> Any:
    return _heatmap(go, c, _ratio(c), "|λmin / λmax|", colorscale=COLORSCALE, zmin=0.0, zmax=RATIO_MAX)


def _eig_line(go: Any, c: Surface) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, color in (("max_eig", "#1f77b4"), ("min_eig", "#d62728")):
        fig.add_trace(go.Scatter(x=c.x, y=_for_plot(_values(c, name), False), name=name.replace("_eig", " λ"),
                                 mode="lines+markers", line=dict(color=color)), secondary_y=False)
    fig.add_trace(go.Scatter(x=c.x, y=_for_plot(_ratio(c), False), name="|λmin/λmax|", mode="lines",
                             line=dict(color="black", dash="dash")), secondary_y=True)
    fig.update_yaxes(title_text="eigenvalue", secondary_y=False)
    fig.update_yaxes(title_text="|λmin/λmax|", secondary_y=True, showgrid=False, range=[0, 1], tickmode="auto")
    fig.update_layout(**_layout(title=dict(text="extreme Hessian eigenvalues"), xaxis_title="x",
                                hovermode="x unified"))
    return fig


# ---------------------------------------------------------------------------- provenance


def _json_attr(v: Any) -> Any:
    """An attribute that holds JSON text (`runs`, `settings`) parsed; other values as they are."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_short(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_short(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _runs_text(runs: Any) -> str | None:
    if not isinstance(runs, list) or not runs:
        return None
    try:
        points = sum(int(r["points"]) for r in runs)
        seconds = sum(float(r["seconds"]) for r in runs)
    except (KeyError, TypeError, ValueError):
        return _short(runs)
    per = f", {seconds / points:.3g} s a point" if points else ""
    last = runs[-1].get("finished")
    return (f"{len(runs)} run{'s' if len(runs) > 1 else ''}: {points} points in {seconds:.1f} s{per} "
            "(start-up not included)" + (f"; last finished {last}" if last else ""))


def provenance_rows(surf: Surface, source: str | None = None) -> list[tuple[str, str]]:
    """(label, value) for the report's provenance table: what the file's attributes hold, in a fixed order."""
    a = {k: _json_attr(v) for k, v in surf.attrs.items()}
    settings = a.get("settings") if isinstance(a.get("settings"), dict) else {}
    engine = a.get("engine") if isinstance(a.get("engine"), dict) else {}
    dirs = a.get("directions") if isinstance(a.get("directions"), dict) else {}
    rows: list[tuple[str, Any]] = []
    if source is not None:
        rows.append(("surface file", source))
    grid = f"x: {_fmt(surf.x[0])} to {_fmt(surf.x[-1])}, {len(surf.x)} points"
    if surf.y is not None:
        grid += f"; y: {_fmt(surf.y[0])} to {_fmt(surf.y[-1])}, {len(surf.y)} points"
    rows.append(("grid", grid))
    done, total = int(surf.done.sum()), int(surf.done.size)
    rows.append(("points done", f"{done} / {total} ({100.0 * done / max(total, 1):.0f} %)"))
    rows += [("checkpoint", a.get("checkpoint")), ("checkpoint sha256", a.get("checkpoint_sha256")),
             ("model", a.get("model")), ("model definition", a.get("model_def")),
             ("model kwargs", a.get("model_kwargs") or None)]
    if dirs:
        d = {k: v for k, v in dirs.items() if k != "dir_type"}
        rows.append(("directions", _short(d)))
    rows += [("dir_type", a.get("dir_type", dirs.get("dir_type"))), ("direction seed", a.get("seed")),
             ("direction file", surf.dir_file),
             ("data set", a.get("dataset")), ("data definition", a.get("data_def")),
             ("normalization", a.get("normalization")), ("splits", a.get("splits")),
             ("samples", a.get("n_samples")), ("sample seed", a.get("sample_seed")),
             ("evaluation", a.get("evaluation")), ("loss", a.get("loss_name", settings.get("loss"))),
             ("precision", engine.get("precision", settings.get("precision")))]
    if engine:
        shown = {k: v for k, v in engine.items() if k not in ("precision", "hardware")}
        rows.append(("engine", _short(shown)))
        hw = engine.get("hardware")
        if isinstance(hw, dict):
            rows.append(("hardware", " ".join(str(hw[k]) for k in ("kind", "name", "isa") if hw.get(k))))
    if settings.get("sampling") is not None:
        rows.append(("sampling", settings["sampling"]))
    rows += [("device", a.get("device")), ("batch size", a.get("batch_size")), ("ranks", a.get("ranks")),
             ("runs", _runs_text(a.get("runs"))), ("merged from", a.get("merged_from")),
             ("created", a.get("created")), ("landscape version", a.get("landscape_version"))]
    return [(k, _short(v)) for k, v in rows if v is not None and v != ""]


def _provenance_html(surf: Surface, source: str | None) -> str:
    rows = provenance_rows(surf, source)
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    out = f'<table class="prov">{table}</table>'
    attrs = {k: _json_attr(v) for k, v in surf.attrs.items()}
    if attrs:
        text = json.dumps(attrs, indent=2, sort_keys=True, default=str)
        out += f"<details><summary>all attributes</summary><pre>{html.escape(text)}</pre></details>"
    else:
        out += ("<p class=\"note\">The file records no provenance (a file of the reference code, or written "
                "without attributes): grid and points only.</p>")
    return out


def _summary(surf: Surface, vmax: float | None, log: bool) -> str:
    """One line under the title: model, checkpoint, data, grid, points done, clip and scale."""
    a = surf.attrs
    parts = [f"{a['model']}" if a.get("model") else None,
             f"checkpoint {Path(str(a['checkpoint'])).name}" if a.get("checkpoint") else None,
             f"data {a.get('dataset') or a.get('data_def')}" if a.get("dataset") or a.get("data_def") else None,
             f"{surf.ndim}-D, " + " × ".join(str(n) for n in surf.shape[::-1]) + " points",
             f"{int(surf.done.sum())}/{surf.done.size} done",
             f"loss clipped at {vmax:g}" if vmax is not None else None, "log scale" if log else None]
    return " · ".join(html.escape(p) for p in parts if p)


# ---------------------------------------------------------------------------- page


def _figure_html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config=PLOT_CONFIG, div_id=div_id,
                       default_height=f"{fig.layout.height or 480}px", default_width="100%")


def _row(figs: Sequence[tuple[str, Any]], prefix: str, columns: int = 1) -> str:
    cells = "".join(f'<div class="cell">{_figure_html(f, f"{prefix}{k}")}</div>' for k, f in figs)
    return f'<div class="row cols{columns}">{cells}</div>'


def _section(sid: str, heading: str, note: str, body: str) -> str:
    return (f'<section id="{html.escape(sid)}"><h2>{html.escape(heading)}</h2>'
            f'<p class="note">{html.escape(note)}</p>{body}</section>')


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 12px 20px; color: #222; }
h1 { font-size: 1.4em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1em 0 0.2em; }
.summary, .note { color: #555; margin: 0.2em 0 0.6em; }
/* auto-fill, not auto-fit: a cell has its final width when its plot is drawn, before the next cell exists */
.row { display: grid; gap: 8px; } .cols1 { grid-template-columns: 1fr; }
.cols2 { grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); }
.cols3 { grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); }
.cell { min-width: 0; border: 1px solid #eee; border-radius: 4px; }
table.prov { border-collapse: collapse; font-size: 0.9em; }
table.prov th { text-align: left; padding: 2px 12px 2px 0; color: #555; font-weight: normal; vertical-align: top; }
table.prov td { padding: 2px 0; font-family: ui-monospace, monospace; word-break: break-all; }
details pre { font-size: 0.8em; background: #f7f7f7; padding: 8px; overflow-x: auto; }
footer { color: #888; font-size: 0.8em; margin-top: 2em; }
"""


# every plot fitted to its cell once the page is laid out (the cells' widths settle as the page loads)
_RESIZE = ("window.addEventListener('load', function () { document.querySelectorAll('.js-plotly-plot')"
           ".forEach(function (d) { Plotly.Plots.resize(d); }); });")


def _page(title: str, summary: str, sections: Sequence[str]) -> str:
    from plotly.offline import get_plotlyjs
    import plotly

    import landscape

    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<style>{_CSS}</style>\n"
        # plotly.js inline, once for every figure: the page works offline
        f"<script type=\"text/javascript\">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n"
        f"<script type=\"text/javascript\" id=\"plotlyjs\">{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"summary\">{summary}</p>\n"
        + "\n".join(sections)
        + f"\n<script>{_RESIZE}</script>"
        + f"\n<footer>made by landscape {html.escape(str(getattr(landscape, '__version__', '?')))} "
        f"(landscape.plot.report) with plotly {html.escape(plotly.__version__)}, {made}</footer>\n"
        "</body>\n</html>\n"
    )
