"""Loss surfaces as VTK XML PolyData (.vtp) files, for ParaView: the export Li et al.'s 3-D figures were
rendered from (the reference code's h52vtp.py), written with numpy alone (no vtk needed).

    grid = height_grid(surf, "train_loss", zmax=10, log=True, interp=200)
    write_vtp("results/s_train_loss_zmax10_log_interp200.vtp", grid)

The file holds one piece:
    Points      (n, 3) Float64      x, y and the height z (the metric after zmax and log)
    Polys       quads over the grid cells whose 4 corners have a height, counter-clockwise seen
                from +z (x and y increasing): (j, i), (j, i+1), (j+1, i+1), (j+1, i)
    PointData   one Float64 array, the height again, named after the metric (`train_loss`, or
                `log(train_loss + 0.1)` with log)

Points are in meshgrid order (x fastest, then y) over the points that have a height; a point that is
not computed (the surface's `done` is False), or whose value is not finite (a diverged point, NaN or
-inf; +inf becomes zmax when zmax is given), has none: it is left out, and so are the cells it
touches, so that no height in the file is made up. With `interp`, the heights are resampled to an
N x N grid by a cubic spline through every computed point, which needs them all.
"""

from __future__ import annotations

import base64
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import RectBivariateSpline

from landscape.errors import LandscapeError

if TYPE_CHECKING:  # a Surface's arrays are all this needs: no import of the store (h5py)
    from landscape.storage import Surface

LOG_OFFSET = 0.1  # log(z + 0.1), the reference code's offset
_BLOCK = 1 << 20  # bytes of raw data per zlib block
_VTK_TYPES = {np.dtype("<f8"): "Float64", np.dtype("<i8"): "Int64"}


@dataclass(frozen=True, eq=False)
class HeightGrid:
    """Heights over a grid, as the .vtp file draws them."""

    x: np.ndarray  # (nx,)
    y: np.ndarray  # (ny,)
    z: np.ndarray  # (ny, nx); NaN where there is no height
    name: str  # the point-data array's name
    notes: tuple[str, ...] = ()  # what was left out, and why

    @property
    def valid(self) -> np.ndarray:
        """(ny, nx) bool: the points that have a height."""
        return np.isfinite(self.z)


@dataclass(frozen=True)
class VtpInfo:
    """What `write_vtp` wrote."""

    path: Path
    points: int
    polygons: int
    notes: tuple[str, ...] = ()


def vtp_filename(stem: str, metric: str, *, zmax: float | None = None, log: bool = False,
                 interp: int | None = None) -> str:
    """`<stem>_<metric>[_zmax<Z>][_log][_interp<N>].vtp`, e.g. `s_train_loss_zmax10_log_interp200.vtp`."""
    name = f"{stem}_{metric}"
    if zmax is not None:
        name += f"_zmax{zmax:g}"
    if log:
        name += "_log"
    if interp is not None:
        name += f"_interp{interp}"
    return name + ".vtp"


def height_grid(surf: Surface, metric: str = "train_loss", *, zmax: float | None = None, log: bool = False,
                interp: int | None = None) -> HeightGrid:
    """The heights of a 2-D surface's `metric`: clipped above at `zmax`, then log(z + 0.1) if `log`, then
    (if `interp`) resampled to an interp x interp grid over the same ranges by a cubic spline through
    every point, with any overshoot above zmax clipped again."""
    if surf.ndim != 2:
        raise LandscapeError("the surface is 1-D; a .vtp surface needs a 2-D one (x and y): plot a 1-D "
                             "surface with scripts/plot_1d.py")
    ny, nx = surf.shape
    if min(ny, nx) < 2:
        raise LandscapeError(f"a .vtp surface needs at least 2 points along x and y, the grid has nx={nx}, ny={ny}")
    if metric not in surf.metrics:
        raise LandscapeError(f"metric {metric!r} is not in the surface; available: "
                             f"{', '.join(sorted(surf.metrics)) or 'none'}", argument="metric")
    if interp is not None:
        _check_interp(interp, nx, ny)
    done = np.asarray(surf.done, dtype=bool)
    if not done.any():
        raise LandscapeError("the surface has no computed point yet; compute some with scripts/plot_surface.py")
    z = np.array(surf.metrics[metric], dtype=np.float64)  # (ny, nx); a copy, the surface is not changed
    z[~done] = np.nan  # no height where nothing was computed
    notes: list[str] = []
    if zmax is not None:
        zmax = float(zmax)
        finite = z[np.isfinite(z)]
        if not np.isfinite(zmax):
            raise LandscapeError(f"zmax must be a finite number, got {zmax}", argument="zmax")
        if finite.size and not zmax > finite.min():
            raise LandscapeError(f"zmax {zmax:g} is not above the lowest computed {metric} ({finite.min():g}), so "
                                 "every point would be clipped to it; give a larger value, or none to clip nothing",
                                 argument="zmax")
        z = np.minimum(z, zmax)  # +inf -> zmax; NaN stays NaN
    name = metric
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(z + LOG_OFFSET)  # below -0.1: NaN, at -0.1: -inf; both have no height
        name = f"log({metric} + {LOG_OFFSET:g})"
    lost = done & ~np.isfinite(z)  # computed, but no height
    if lost.any():
        why = "not finite" + (" (give zmax to draw +inf at zmax)" if zmax is None else "")
        if log:
            why += f" or not above -{LOG_OFFSET:g} (no log)"
        notes.append(f"{int(lost.sum())} computed point(s) of {metric} are {why}: left out")
    if not np.isfinite(z).any():
        raise LandscapeError(f"no computed point of {metric} has a finite height; {notes[0]}")
    x, y = surf.x.copy(), surf.y.copy()
    if interp is not None:
        missing = ~np.isfinite(z)
        if missing.any():
            raise LandscapeError(
                f"interp needs a height at every grid point, but {int(missing.sum())} of {z.size} have none "
                f"({int((~done).sum())} not computed yet, {int(lost.sum())} not finite): finish the surface with "
                "scripts/plot_surface.py (it resumes the file), or leave it out", argument="interp")
        x, y, z = _resample(x, y, z, interp)
        if zmax is not None:
            top = np.log(zmax + LOG_OFFSET) if log else zmax
            z = np.minimum(z, top)  # the spline's overshoot above zmax
    return HeightGrid(x=x, y=y, z=z, name=name, notes=tuple(notes))


def _check_interp(interp: int, nx: int, ny: int) -> None:
    if isinstance(interp, bool) or not isinstance(interp, (int, np.integer)) or interp < 2:
        raise LandscapeError(f"interp must be a whole number of at least 2 (the resampled grid's points along x "
                             f"and y), got {interp!r}", argument="interp")
    if min(nx, ny) < 4:
        raise LandscapeError(f"interp (cubic) needs at least 4 points along x and y, the grid has nx={nx}, "
                             f"ny={ny}; leave it out", argument="interp")


def _resample(x: np.ndarray, y: np.ndarray, z: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z (ny, nx) on x, y resampled to (n, n) on linspace(min, max, n) of each, by an interpolating
    bicubic spline (it passes through every point, and reproduces a cubic polynomial exactly)."""
    ix, iy = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    xs, ys = x[ix], y[iy]
    for axis, c in (("x", xs), ("y", ys)):
        if not np.all(np.diff(c) > 0):
            raise LandscapeError(f"the surface's {axis} coordinates repeat a value, so it cannot be interpolated; "
                                 "leave out interp", argument="interp")
    spline = RectBivariateSpline(ys, xs, z[np.ix_(iy, ix)], kx=3, ky=3, s=0)  # first argument: rows (y)
    xi, yi = np.linspace(xs[0], xs[-1], n), np.linspace(ys[0], ys[-1], n)
    return xi, yi, spline(yi, xi)  # (n, n), row = y


def write_vtp(path: str | os.PathLike, grid: HeightGrid, *, ascii: bool = False) -> VtpInfo:
    """Write `grid` as a VTK XML PolyData file, atomically (a temporary file in the same folder, then a
    rename). Binary (base64 of zlib blocks) by default; `ascii` writes the numbers as text."""
    z = np.asarray(grid.z, dtype=np.float64)  # (ny, nx)
    ny, nx = z.shape
    valid = np.isfinite(z)
    index = np.full((ny, nx), -1, dtype=np.int64)  # grid point -> point number; -1: no point
    index[valid] = np.arange(int(valid.sum()))
    xx, yy = np.meshgrid(grid.x, grid.y)  # (ny, nx) each
    points = np.stack([xx[valid], yy[valid], z[valid]], axis=-1)  # (n, 3)
    cells = valid[:-1, :-1] & valid[:-1, 1:] & valid[1:, 1:] & valid[1:, :-1]  # (ny-1, nx-1): all 4 corners
    quads = np.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]], axis=-1)[cells]  # (m, 4)
    if not len(quads):
        raise LandscapeError(f"no grid cell has a height at all 4 corners ({len(points)} of {z.size} points have "
                             "one), so there is no surface to draw; compute more points with scripts/plot_surface.py")
    offsets = 4 * np.arange(1, len(quads) + 1, dtype=np.int64)

    enc = _ascii if ascii else _binary
    compressor = "" if ascii else ' compressor="vtkZLibDataCompressor"'
    fmt = "ascii" if ascii else "binary"

    def array(a: np.ndarray, name: str, components: int = 1) -> str:
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        return (f'        <DataArray type="{_VTK_TYPES[a.dtype]}" Name="{_xml_attr(name)}" '
                f'NumberOfComponents="{components}" format="{fmt}">\n{enc(a)}\n        </DataArray>\n')

    text = "".join([
        '<?xml version="1.0"?>\n',
        f'<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64"{compressor}>\n',
        "  <PolyData>\n",
        (f'    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" '
         f'NumberOfPolys="{len(quads)}">\n'),
        f'      <PointData Scalars="{_xml_attr(grid.name)}">\n',
        array(points[:, 2].copy(), grid.name),
        "      </PointData>\n",
        "      <Points>\n", array(points, "Points", 3), "      </Points>\n",
        "      <Polys>\n", array(quads.ravel(), "connectivity"), array(offsets, "offsets"), "      </Polys>\n",
        "    </Piece>\n",
        "  </PolyData>\n",
        "</VTKFile>\n",
    ])
    path = Path(path)
    _atomic_write(path, text)
    return VtpInfo(path=path, points=len(points), polygons=len(quads), notes=grid.notes)


def surface_to_vtp(surf: Surface, path: str | os.PathLike, metric: str = "train_loss", *,
                   zmax: float | None = None, log: bool = False, interp: int | None = None,
                   ascii: bool = False) -> VtpInfo:
    """`height_grid` then `write_vtp`: the surface's `metric` as a .vtp file at `path`."""
    return write_vtp(path, height_grid(surf, metric, zmax=zmax, log=log, interp=interp), ascii=ascii)


def _ascii(a: np.ndarray) -> str:
    """Numbers as text, six to a line; floats in their shortest form that reads back exactly."""
    words = list(map(repr if a.dtype.kind == "f" else str, a.ravel().tolist()))
    return "\n".join("          " + " ".join(words[i:i + 6]) for i in range(0, len(words), 6))


def _binary(a: np.ndarray) -> str:
    """VTK's inline compressed binary: base64 of the header [blocks, block size, last block's size, each
    block's compressed size] (UInt64), then base64 of the zlib-compressed blocks."""
    raw = a.tobytes()
    blocks = [zlib.compress(raw[i:i + _BLOCK]) for i in range(0, len(raw), _BLOCK)]
    header = np.array([len(blocks), _BLOCK, len(raw) % _BLOCK, *map(len, blocks)], dtype="<u8")
    return "          " + base64.b64encode(header.tobytes()).decode() + base64.b64encode(b"".join(blocks)).decode()


def _xml_attr(s: str) -> str:
    return s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder: a reader sees the old file or
    the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="ascii") as fh:  # "x": a new file, with the umask's permissions
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
