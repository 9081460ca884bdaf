"""The surface file (HDF5): layout, atomic writes, reading ours and the reference code's.

Layout (DESIGN.md):
    xcoordinates (nx,), ycoordinates (ny,)          ycoordinates absent for 1-D
    <metric> (ny, nx) or (nx,) float64              train_loss, train_acc, test_loss, ...
    done     same shape, uint8                      1 where the point is computed
    dir_file                                        the direction file's path (string)
    attrs: format_version, settings (JSON), and readable copies of the settings

Values at points that are not done are NaN in the file, but `done` alone decides what is
computed: a metric may be 0, negative, inf or NaN at a computed point.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.errors import LandscapeError

FORMAT_VERSION = 1
_COORDS = ("xcoordinates", "ycoordinates")
_RESERVED = {*_COORDS, "done", "dir_file"}


@dataclass
class Surface:
    """A loss surface in memory: coordinates, metric arrays, the done mask and attributes."""

    x: np.ndarray  # (nx,)
    y: np.ndarray | None  # (ny,) or None for a 1-D surface
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # name -> shape; NaN = not computed
    done: np.ndarray | None = None  # bool, shape
    attrs: dict[str, Any] = field(default_factory=dict)
    dir_file: str | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64)
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.float64)
        if self.done is None:
            self.done = np.zeros(self.shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, ...]:
        """(ny, nx) for 2-D surfaces (row = y, column = x), (nx,) for 1-D."""
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def settings(self) -> dict[str, Any] | None:
        """The settings that produced the values (parsed from the `settings` attribute)."""
        s = self.attrs.get("settings")
        return None if s is None else json.loads(s)

    def add_metric(self, name: str) -> np.ndarray:
        """Return the array for `name`, creating it (all NaN) if absent."""
        if name not in self.metrics:
            self.metrics[name] = np.full(self.shape, np.nan)  # NaN = not computed yet
        return self.metrics[name]

    def masked(self, name: str) -> np.ma.MaskedArray:
        """The metric with points that are not done masked out."""
        return np.ma.masked_array(self.metrics[name], mask=~self.done)


def write_surface(path: str | os.PathLike, surf: Surface) -> None:
    """Write the whole surface atomically: a temporary file in the same folder, fsync, rename.

    A kill at any moment leaves either the previous file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            f["xcoordinates"] = surf.x
            if surf.y is not None:
                f["ycoordinates"] = surf.y
            for name, arr in surf.metrics.items():
                if name in _RESERVED:
                    raise ValueError(f"metric name {name!r} is reserved")
                f[name] = np.asarray(arr, dtype=np.float64)
            f["done"] = surf.done.astype(np.uint8)
            if surf.dir_file is not None:
                f["dir_file"] = surf.dir_file
            f.attrs["format_version"] = FORMAT_VERSION
            for k, v in surf.attrs.items():
                f.attrs[k] = _attr_value(v)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_surface(path: str | os.PathLike) -> Surface:
    """Read a surface file written by this package or by the reference loss-landscape code.

    Reference files have no `done` mask: there a point is done when its loss is not -1,
    the reference code's fill value; their accuracies, stored in %, are read as fractions. They store 2-D values with shape (nx, ny) but fill
    them in meshgrid order, which is (ny, nx); non-square grids are reshaped accordingly.
    """
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"surface file {str(path)!r} does not exist; compute it with scripts/plot_surface.py")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise LandscapeError(f"{str(path)!r} is not a readable HDF5 surface file ({e})") from None
    with f:
        if "xcoordinates" not in f:
            raise LandscapeError(f"{str(path)!r} has no 'xcoordinates': not a loss-surface file")
        x = f["xcoordinates"][:]
        y = f["ycoordinates"][:] if "ycoordinates" in f else None
        attrs = {k: _read_attr(v) for k, v in f.attrs.items()}
        surf = Surface(x=x, y=y, attrs=attrs)
        dir_file = f["dir_file"][()] if "dir_file" in f else None
        surf.dir_file = dir_file.decode() if isinstance(dir_file, bytes) else dir_file
        names = [k for k in f.keys() if k not in _RESERVED and isinstance(f[k], h5py.Dataset)]
        ours = "done" in f
        for name in names:
            if f[name].size != int(np.prod(surf.shape)) or f[name].ndim == 0:
                continue  # not a per-point array (a scalar dataset cannot be sliced with [:])
            arr = np.asarray(f[name][:], dtype=np.float64)
            surf.metrics[name] = arr.reshape(surf.shape)  # reference (nx, ny) holds (ny, nx) order
        if ours:
            surf.done = f["done"][:].astype(bool).reshape(surf.shape)
        else:
            loss_keys = [k for k in surf.metrics if k.endswith("loss")]
            key = loss_keys[0] if loss_keys else next(iter(surf.metrics), None)
            if key is not None:
                surf.done = surf.metrics[key] != -1
            for name, arr in surf.metrics.items():
                arr[~surf.done] = np.nan
                if name.endswith("acc"):
                    arr /= 100.0  # the reference code stores accuracy in %, we store a fraction
    return surf


def _attr_value(v: Any) -> Any:
    if v is None or isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


def _read_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
