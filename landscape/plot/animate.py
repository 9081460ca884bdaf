"""Optimizer paths animated over a loss surface: every path moves one point per frame, together.

Frame k shows each path up to its k-th point (a shorter path holds at its end), a moving head
on the current point (a star once the path has ended), a legend with one entry per path and,
in the title, each path's loss at its current point. `path_frames` computes what each frame
shows (pure data, tested on its own); `PathAnimation` draws it; `write_animation` writes a GIF
with matplotlib's PillowWriter and an MP4 where ffmpeg exists.

The plane's data (`Path2D`, the path colours, the log-spaced contour levels) live here because
this module imports no torch: the toy problems and any stored projection can be drawn without
it; `landscape.trajectory` re-exports them. Figures are `matplotlib.figure.Figure` objects (no
pyplot state, no backend chosen here).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import animation
from matplotlib.axes import Axes
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.errors import LandscapeError

PATH_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "black")
GIF_DPI = 80  # 7.2 x 6.6 in -> 576 x 528 pixels: a few hundred kB for ~100 frames
LOSSES_PER_TITLE_LINE = 4
MAX_DOTS = 150  # longer paths are drawn as lines only
HOLD_LAST_S = 2.0  # the GIF's last frame shows this long before it loops


@dataclass
class Path2D:
    """One optimizer path in the plane: coordinates (n, 2), its legend label, and optionally the
    epoch of each point, a colour, the loss at each point (n,) (NaN: unknown) and a short name for
    the animation's title (default: the label)."""

    coords: np.ndarray
    label: str
    epochs: np.ndarray | None = None
    color: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    losses: np.ndarray | None = None
    name: str | None = None


def loss_levels(z: np.ndarray, n: int = 20, vmax: float | None = None) -> np.ndarray:
    """Log-spaced contour levels from the lowest finite value to `vmax` (default: the highest)."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise LandscapeError("the surface has no finite value to draw")
    lo = max(float(finite.min()), 1e-6)
    hi = float(finite.max()) if vmax is None else vmax
    if not hi > lo:
        hi = lo * 10
    return np.geomspace(lo * 1.05, hi, n)


def draw_loss_contours(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: Sequence[float] | None = None,
                       vmax: float | None = None, n_levels: int = 20, label: str = "train loss") -> QuadContourSet:
    """Log-spaced (or the given) contour lines of z (ny, nx) with labels and a colour bar; NaN and masked
    values are not drawn."""
    zz = np.ma.masked_invalid(np.ma.filled(np.ma.asarray(z, dtype=np.float64), np.nan))  # (ny, nx)
    lv = loss_levels(zz.compressed(), n_levels, vmax) if levels is None else np.asarray(levels, dtype=np.float64)
    cs = ax.contour(x, y, zz, levels=lv, cmap="viridis", linewidths=0.8, norm="log")
    ax.clabel(cs, cs.levels[::3], fontsize=7, fmt="%.3g")
    ax.figure.colorbar(cs, ax=ax, label=label, shrink=0.85, ticks=lv[::3], format="%.3g")
    return cs


def interpolate_surface(x: np.ndarray, y: np.ndarray, z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The surface z (ny, nx) on the grid (x, y), bilinear at `points` (n, 2): (n,) values, NaN outside
    the grid or next to a point not computed (masked or NaN)."""
    from scipy.interpolate import RegularGridInterpolator

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    zz = np.ma.filled(np.ma.asarray(z, dtype=np.float64), np.nan)  # (ny, nx)
    if zz.shape != (len(y), len(x)):
        raise LandscapeError(f"the surface has shape {zz.shape} but the grid has ny={len(y)}, nx={len(x)}")
    if len(x) < 2 or len(y) < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        raise LandscapeError("interpolating a surface needs at least 2 increasing coordinates along x and y")
    f = RegularGridInterpolator((y, x), zz, method="linear", bounds_error=False, fill_value=np.nan)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return f(pts[:, ::-1])  # (n,); the interpolator takes (y, x)


# ---------------------------------------------------------------------------- frame data


def check_animation_options(fps: float, frames: int | None) -> None:
    """One-line errors for a bad frame rate or frame cap (before any expensive work)."""
    if not (np.isfinite(fps) and fps > 0):
        raise LandscapeError(f"fps must be a positive number of frames per second, got {fps}", argument="fps")
    if frames is not None and frames < 2:
        raise LandscapeError(f"frames must be >= 2 (the first and the last point), got {frames}", argument="frames")


def frame_indices(lengths: Sequence[int], frames: int | None = None) -> np.ndarray:
    """(n_frames, n_paths): the index of the last point each path shows in each frame.

    Frame k shows points 0..k of every path; a path shorter than the longest holds at its end.
    With `frames` below the longest path's length, the frames take that many steps evenly spaced
    along it, the first and the last included.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0 or lengths.min() < 1:
        raise LandscapeError(f"every path needs at least one point, got lengths {lengths.tolist()}")
    check_animation_options(1.0, frames)
    n = int(lengths.max())
    steps = np.arange(n)
    if frames is not None and frames < n:
        steps = np.floor(np.linspace(0, n - 1, frames) + 0.5).astype(np.int64)  # distinct: spacing > 1
    return np.minimum(steps[:, None], lengths[None, :] - 1)


@dataclass(frozen=True)
class Frame:
    """What one frame shows."""

    step: int  # position along the longest path (the frame's clock)
    index: np.ndarray  # (n_paths,) index of each path's current point
    points: tuple[np.ndarray, ...]  # per path: (index + 1, 2) the points drawn so far
    heads: np.ndarray  # (n_paths, 2) each path's current point
    losses: np.ndarray  # (n_paths,) the loss at the current point; NaN: unknown
    ended: np.ndarray  # (n_paths,) bool: the path has reached its last point


def path_frames(paths: Sequence[Path2D], frames: int | None = None) -> list[Frame]:
    """The frames of an animation of `paths` (see `frame_indices`)."""
    if not paths:
        raise LandscapeError("nothing to animate: no path given")
    coords = [np.asarray(p.coords, dtype=np.float64).reshape(-1, 2) for p in paths]
    losses = []
    for p, c in zip(paths, coords):
        if p.losses is None:
            losses.append(np.full(len(c), np.nan))
        elif len(p.losses) != len(c):
            raise LandscapeError(f"path {p.label!r} has {len(c)} points but {len(p.losses)} losses")
        else:
            losses.append(np.asarray(p.losses, dtype=np.float64))
    lengths = [len(c) for c in coords]
    out = []
    for row in frame_indices(lengths, frames):
        out.append(Frame(step=int(row.max()), index=row, points=tuple(c[: i + 1] for c, i in zip(coords, row)),
                         heads=np.array([c[i] for c, i in zip(coords, row)]),
                         losses=np.array([v[i] for v, i in zip(losses, row)]),
                         ended=np.array([i == n - 1 for i, n in zip(row, lengths)])))
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}" if np.isfinite(v) else "n/a"


def frame_title(frame: Frame, paths: Sequence[Path2D], title: str = "", loss_name: str | None = "loss",
                step_name: str = "step") -> str:
    """`title`, the clock ("epoch 3 of 8"), and each path's loss at its current point (`loss_name` says
    which loss; None: no losses)."""
    longest = max(paths, key=lambda p: len(p.coords))
    if longest.epochs is not None:
        clock = f"{step_name} {int(longest.epochs[frame.step])} of {int(longest.epochs[-1])}"
    else:
        clock = f"{step_name} {frame.step} of {len(longest.coords) - 1}"
    lines = [title] if title else []
    if loss_name is None:
        lines.append(clock)
        return "\n".join(lines)
    lines.append(f"{clock}; {loss_name}:")
    items = [f"{p.name or p.label} {_fmt(v)}" for p, v in zip(paths, frame.losses)]
    for a in range(0, len(items), LOSSES_PER_TITLE_LINE):
        lines.append("   ".join(items[a:a + LOSSES_PER_TITLE_LINE]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- drawing


class PathAnimation:
    """A figure of paths over a surface and its frames; `draw(k)` sets the figure to frame k."""

    def __init__(self, paths: Sequence[Path2D], x: np.ndarray | None = None, y: np.ndarray | None = None,
                 z: np.ndarray | None = None, *, frames: int | None = None, title: str = "",
                 loss_name: str | None = "loss", step_name: str = "step", xlabel: str = "x", ylabel: str = "y",
                 levels: Sequence[float] | None = None, vmax: float | None = None, surface_label: str = "train loss",
                 xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
                 marks: Sequence[tuple[float, float]] = (), equal_aspect: bool = False,
                 figsize: tuple[float, float] = (7.2, 6.6)):
        self.paths = list(paths)
        self.frames = path_frames(self.paths, frames)
        self.title, self.loss_name, self.step_name = title, loss_name, step_name
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
        if z is not None:
            if x is None or y is None:
                raise LandscapeError("a surface z needs its grid x and y")
            draw_loss_contours(ax, x, y, z, levels, vmax, label=surface_label)
        for mx, my in marks:
            ax.plot([mx], [my], "+", color="k", ms=10, zorder=5)
        self.lines: list[Line2D] = []
        self.heads: list[Line2D] = []
        n = len(self.paths)
        for k, p in enumerate(self.paths):
            c = p.color or PATH_COLORS[k % len(PATH_COLORS)]
            lw = 1.1 + 0.35 * (n - 1 - k)  # earlier paths wider: a path drawn over another leaves it visible
            dots = "." if len(p.coords) <= MAX_DOTS else None  # a dot per point, unless they would merge
            line, = ax.plot([], [], "-", marker=dots, ms=4, color=c, lw=lw, label=p.label, zorder=3)
            ax.plot(*np.asarray(p.coords)[0], "o", mfc="white", mec=c, ms=7, mew=1.5, zorder=4)
            head, = ax.plot([], [], "o", color=c, mec="k", ms=7, mew=0.5, zorder=5)
            self.lines.append(line)
            self.heads.append(head)
        xlo, xhi, ylo, yhi = self._limits(x, y, xlim, ylim)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(ylo, yhi)
        if equal_aspect:
            ax.set_aspect("equal")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ncols = min(3 if max(len(p.label) for p in self.paths) <= 32 else 2, n)
        self.legend = fig.legend(handles=self.lines, loc="outside lower center", ncols=ncols, fontsize=8)
        self.title_artist = fig.suptitle("", fontsize=9)
        self.fig, self.ax = fig, ax
        self.draw(0)
        fig.draw_without_rendering()  # lay out once, with the first frame's title, then keep it:
        fig.set_layout_engine("none")  # the axes do not move between frames

    def _limits(self, x, y, xlim, ylim) -> tuple[float, float, float, float]:
        pts = np.concatenate([np.asarray(p.coords, dtype=np.float64).reshape(-1, 2) for p in self.paths])
        out = []
        for lim, grid, c in ((xlim, x, pts[:, 0]), (ylim, y, pts[:, 1])):
            if lim is not None:
                out += [float(lim[0]), float(lim[1])]
            elif grid is not None:
                out += [float(np.min(grid)), float(np.max(grid))]
            else:
                lo, hi = float(c.min()), float(c.max())
                pad = 0.08 * (hi - lo) if hi > lo else 1.0
                out += [lo - pad, hi + pad]
        return out[0], out[1], out[2], out[3]

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def draw(self, k: int) -> None:
        """Set the lines, heads and title to frame k."""
        f = self.frames[k]
        for line, head, pts, (hx, hy), ended in zip(self.lines, self.heads, f.points, f.heads, f.ended):
            line.set_data(pts[:, 0], pts[:, 1])
            head.set_data([hx], [hy])
            head.set_marker("*" if ended else "o")
            head.set_markersize(12 if ended else 7)
        self.title_artist.set_text(frame_title(f, self.paths, self.title, self.loss_name, self.step_name))


class _SharedPaletteGif(animation.PillowWriter):
    """PillowWriter whose frames share one palette (taken from the last frame, where every path is drawn),
    undithered, and store only the pixels that changed (the others transparent over the previous frame):
    a frame then costs about what moved in it."""

    def finish(self) -> None:
        from PIL import Image

        palette = self._frames[-1].convert("RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT,
                                                           dither=Image.Dither.NONE)  # indices 0..254
        frames, prev = [], None
        for f in self._frames:
            idx = np.asarray(f.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE))  # (h, w) uint8
            keep = idx if prev is None else np.where(idx == prev, np.uint8(255), idx)  # 255: unchanged
            im = Image.fromarray(keep, mode="P")
            im.putpalette(palette.getpalette()[:765] + [0, 0, 0])
            frames.append(im)
            prev = idx
        ms = int(1000 / self.fps)
        durations = [ms] * (len(frames) - 1) + [max(ms, int(1000 * HOLD_LAST_S))]  # the end stays before the loop
        frames[0].save(self.outfile, save_all=True, append_images=frames[1:], duration=durations, loop=0,
                       transparency=255, disposal=1, optimize=False)


@dataclass
class AnimationFiles:
    """What `write_animation` wrote: the GIF, the MP4 (None when skipped) and why it was skipped."""

    gif: Path
    mp4: Path | None
    note: str | None


def ffmpeg_available() -> bool:
    return animation.writers.is_available("ffmpeg")


def write_animation(anim: PathAnimation, stem: str | os.PathLike, fps: float, mp4: bool = True,
                    dpi: int = GIF_DPI) -> AnimationFiles:
    """`<stem>.gif` (PillowWriter) and, with `mp4` and where ffmpeg exists, `<stem>.mp4`; each written to a
    temporary name first and then moved into place, so a failed write leaves no partial file."""
    check_animation_options(fps, None)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)

    def write(path: Path, writer: animation.AbstractMovieWriter) -> Path:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the writer keys on the suffix
        try:
            with writer.saving(anim.fig, str(tmp), dpi):
                for k in range(anim.n_frames):
                    anim.draw(k)
                    writer.grab_frame()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    gif = write(stem.with_name(stem.name + ".gif"), _SharedPaletteGif(fps=fps))
    anim.draw(0)
    if not mp4:
        return AnimationFiles(gif, None, None)
    if not ffmpeg_available():
        return AnimationFiles(gif, None, "ffmpeg not found: MP4 skipped (install ffmpeg, or set matplotlib's "
                                         "animation.ffmpeg_path, for an MP4 next to the GIF)")
    try:
        out = write(stem.with_name(stem.name + ".mp4"),
                    animation.FFMpegWriter(fps=fps, codec="h264", extra_args=["-pix_fmt", "yuv420p"]))
    except (subprocess.CalledProcessError, OSError) as e:  # e.g. an ffmpeg built without an H.264 encoder
        return AnimationFiles(gif, None, f"ffmpeg could not write the MP4 ({type(e).__name__}): skipped; the GIF is "
                                         "complete")
    finally:
        anim.draw(0)
    return AnimationFiles(gif, out, None)
